"""A bare TCP pass-through proxy on uvloop: the reference ``bench/pg_overhead.py`` measures next to
the gateway.

Issue 2 frames the gateway's throughput target against what a bare asyncio pass-through proxy
reaches on the same machine (each chunk read from one socket is written to the other; no parsing,
no policy, no recording). That floor moves with the machine (0.54× direct in session 1, 0.61× in
session 6 on a faster host), so the bench measures it in the same run instead of quoting it.

usage: passthrough_proxy.py LISTEN_PORT BACKEND_HOST BACKEND_PORT
Listens on 127.0.0.1 only; prints ``ready`` once listening; runs until killed.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class _BackendSide(asyncio.Protocol):
    def __init__(self, client: "_ClientSide") -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class _ClientSide(asyncio.Protocol):
    backend_host = "127.0.0.1"
    backend_port = 0

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.backend: _BackendSide | None = None
        self.early: list[bytes] | None = []  # what the client sends before the backend is connected
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, self.backend = await loop.create_connection(
                lambda: _BackendSide(self), self.backend_host, self.backend_port)
        except OSError:
            self.transport.close()
            return
        for data in self.early:
            self.backend.transport.write(data)
        self.early = None

    def data_received(self, data: bytes) -> None:
        if self.early is not None:
            self.early.append(data)
        else:
            self.backend.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.backend is not None:
            self.backend.transport.close()


async def _serve(listen_port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_ClientSide, "127.0.0.1", listen_port)
    print("ready", flush=True)
    await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: passthrough_proxy.py LISTEN_PORT BACKEND_HOST BACKEND_PORT", file=sys.stderr)
        return 2
    _ClientSide.backend_host, _ClientSide.backend_port = argv[1], int(argv[2])
    uvloop.run(_serve(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
