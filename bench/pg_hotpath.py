"""Per-statement CPU cost of the PostgreSQL relay, without sockets.

Feeds a ClientConnection the bytes of a pgbench select-only transaction (a client ``Q``, or
``P/B/D/E/S`` for the extended protocol) and the backend's answer, through fake transports, and
prints microseconds per transaction for: relay only (recording off), recording with ``write``.
It isolates the gateway's own Python work from the kernel and the other processes, so a change to
the hot path can be judged in a second. The end-to-end figure is ``bench/pg_overhead.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from wardgate.core.audit import FileSpool, Recorder
from wardgate.core.model import Principal
from wardgate.core.policy import AllowAll
from wardgate.core.session import DecisionCore
from wardgate.metrics import GatewayMetrics
from wardgate.protocols.postgres import wire
from wardgate.protocols.postgres.engine import ClientConnection, PostgresFrontend


class _NullTransport:
    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class _Backend:
    def __init__(self) -> None:
        self.transport = _NullTransport()


def _simple_round(aid: int) -> tuple[bytes, bytes]:
    request = wire.query(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};")
    answer = (wire.message(b"T", b"\x00\x01abalance\x00" + bytes(18))
              + wire.message(b"D", b"\x00\x01\x00\x00\x00\x04" + b"1234")
              + wire.message(b"C", b"SELECT 1\x00") + wire.ready_for_query(b"I"))
    return request, answer


def _extended_round(aid: int) -> tuple[bytes, bytes]:
    text = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
    request = (wire.message(b"P", b"\x00" + text.encode() + b"\x00\x00\x00")
               + wire.message(b"B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x05" + str(aid % 99999).zfill(5).encode()
                              + b"\x00\x00")
               + wire.message(b"D", b"P\x00") + wire.message(b"E", b"\x00\x00\x00\x00\x00")
               + wire.message(b"S"))
    answer = (wire.message(b"1") + wire.message(b"2")
              + wire.message(b"T", b"\x00\x01abalance\x00" + bytes(18))
              + wire.message(b"D", b"\x00\x01\x00\x00\x00\x04" + b"1234")
              + wire.message(b"C", b"SELECT 1\x00") + wire.ready_for_query(b"I"))
    return request, answer


async def _measure(recording: bool, protocol: str, rounds: int, directory: Path) -> float:
    spool = FileSpool(directory / f"audit-{protocol}-{recording}", "bench") if recording else None
    recorder = Recorder(spool)
    recorder.start(asyncio.get_running_loop())
    core = DecisionCore(verifier=None, policy=AllowAll(), recorder=recorder, gateway_id="bench",
                        observer=GatewayMetrics())
    frontend = PostgresFrontend(core, {}, ssl_context=None, allow_plaintext_token_on_loopback=True)
    connection = ClientConnection(frontend)
    connection.transport = _NullTransport()
    connection.backend = _Backend()
    connection.session = core.open_session(protocol="postgres", resource="bench", peer="bench", tls=False,
                                           client={})
    connection.session.principal = Principal("https://issuer.example", "bench")
    connection._relaying = True
    build = _simple_round if protocol == "simple" else _extended_round
    traffic = [build(i) for i in range(rounds)]
    started = time.perf_counter()
    for request, answer in traffic:
        connection.data_received(request)
        recorder._flush()  # what the end of an event-loop iteration does
        connection._from_backend(answer)
        recorder._flush()
    elapsed = time.perf_counter() - started
    recorder.close()
    return elapsed / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5, help="report the fastest of N runs (noise only adds)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for protocol in ("simple", "extended"):
            for recording in (False, True):
                cost = min(asyncio.run(_measure(recording, protocol, args.rounds, Path(tmp)))
                           for _ in range(args.repeat))
                label = "recording (write)" if recording else "recording off"
                print(f"{protocol:9s} {label:18s} {cost:7.2f} µs/transaction")


if __name__ == "__main__":
    main()
