"""The gateway's own connection to a PostgreSQL backend: TLS, authentication with the gateway's
credentials (SCRAM-SHA-256, md5, cleartext, trust), then raw relay.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from dataclasses import dataclass
from typing import Callable

from scramp import ScramClient

from wardgate.protocols.postgres import wire


class BackendError(Exception):
    """The backend could not be reached or refused the gateway. ``message`` is safe to show clients:
    it never contains credentials."""

    def __init__(self, message: str, *, credentials_refused: bool = False):
        super().__init__(message)
        self.credentials_refused = credentials_refused


@dataclass(frozen=True, slots=True)
class BackendTarget:
    host: str
    port: int
    database: str
    tls_mode: str = "disable"
    ssl_context: ssl.SSLContext | None = None
    connect_timeout: float = 10.0


@dataclass(slots=True)
class BackendHello:
    """What the backend said after authentication, for the client."""

    parameter_status: list[bytes]
    notices: list[bytes]
    process_id: int
    secret_key: bytes
    ready_status: bytes


class BackendLink(asyncio.Protocol):
    """Buffered reads during start-up; afterwards every received chunk goes to ``on_data``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future | None = None
        self._closed = False
        self.on_data: Callable[[bytes], None] | None = None
        self.on_lost: Callable[[Exception | None], None] | None = None
        self.on_pause_writing: Callable[[], None] | None = None
        self.on_resume_writing: Callable[[], None] | None = None

    # asyncio.Protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.on_data is not None:
            self.on_data(data)
            return
        self._buffer += data
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._wake()
        if self.on_lost is not None:
            self.on_lost(exc)

    def pause_writing(self) -> None:
        if self.on_pause_writing is not None:
            self.on_pause_writing()

    def resume_writing(self) -> None:
        if self.on_resume_writing is not None:
            self.on_resume_writing()

    def eof_received(self) -> bool:
        return False

    # start-up reads ---------------------------------------------------------------------------
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            if self._closed:
                raise BackendError("the backend closed the connection during start-up")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    async def read_message(self) -> tuple[bytes, bytes]:
        header = await self._read(5)
        length = int.from_bytes(header[1:5], "big")
        if length < 4 or length > wire.MAX_MESSAGE:
            raise BackendError(f"the backend sent an invalid message length {length}")
        return header[:1], await self._read(length - 4)

    def take_buffered(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


async def connect_backend(target: BackendTarget, username: str, password: str | None,
                          parameters: dict[str, str]) -> tuple[BackendLink, BackendHello]:
    """Open, (TLS,) authenticate and wait for the first ReadyForQuery."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(target.connect_timeout):
            transport, link = await loop.create_connection(BackendLink, target.host, target.port)
            try:
                if target.tls_mode != "disable":
                    transport.write(wire.ssl_request())
                    answer = await link._read(1)
                    if answer != b"S":
                        raise BackendError("the backend does not accept TLS, but the resource requires it")
                    server_hostname = target.host if target.ssl_context.check_hostname else None
                    transport = await loop.start_tls(transport, link, target.ssl_context,
                                                     server_hostname=server_hostname)
                    link.transport = transport
                transport.write(wire.startup_message({"user": username, "database": target.database,
                                                      **parameters}))
                await _authenticate(link, username, password)
                hello = await _read_until_ready(link)
            except BaseException:
                transport.close()
                raise
    except TimeoutError:
        raise BackendError(f"timed out after {target.connect_timeout:g}s connecting to the backend") from None
    except ssl.SSLError as exc:
        raise BackendError(f"TLS to the backend failed: {exc.reason or exc}") from None
    except OSError as exc:
        raise BackendError(f"cannot reach the backend: {exc.strerror or exc}") from None
    return link, hello


def _backend_refusal(payload: bytes) -> BackendError:
    fields = wire.parse_error_fields(payload)
    code = fields.get("C", "")
    # 28P01/28000: our credentials were refused; do not echo the backend's text (it names our role).
    if code.startswith("28"):
        return BackendError("the backend refused the gateway's credentials for this resource",
                            credentials_refused=True)
    return BackendError(f"the backend refused the connection: {fields.get('M', 'unknown error')} ({code})")


async def _authenticate(link: BackendLink, username: str, password: str | None) -> None:
    scram: ScramClient | None = None
    while True:
        kind, payload = await link.read_message()
        if kind == b"E":
            raise _backend_refusal(payload)
        if kind == b"v":
            continue  # NegotiateProtocolVersion: we asked for plain 3.0, nothing to adapt
        if kind != b"R":
            raise BackendError(f"unexpected message {kind!r} from the backend during authentication")
        code = wire.parse_auth_code(payload)
        if code == wire.AUTH_OK:
            return
        if code != wire.AUTH_OK and password is None and code in (wire.AUTH_CLEARTEXT, wire.AUTH_MD5, wire.AUTH_SASL):
            raise BackendError("the backend asks for a password but the resource has no credential configured",
                               credentials_refused=True)
        if code == wire.AUTH_CLEARTEXT:
            link.transport.write(wire.password_message(password.encode() + b"\x00"))
        elif code == wire.AUTH_MD5:
            salt = payload[4:8]
            inner = hashlib.md5(password.encode() + username.encode()).hexdigest().encode()
            digest = b"md5" + hashlib.md5(inner + salt).hexdigest().encode()
            link.transport.write(wire.password_message(digest + b"\x00"))
        elif code == wire.AUTH_SASL:
            # Channel binding (-PLUS) is not used: the gateway terminates client TLS itself.
            mechanisms = [m for m in wire.parse_sasl_mechanisms(payload) if not m.endswith("-PLUS")]
            if "SCRAM-SHA-256" not in mechanisms:
                raise BackendError(f"the backend offers no SASL mechanism the gateway supports: {mechanisms}")
            scram = ScramClient(["SCRAM-SHA-256"], username, password)
            link.transport.write(wire.sasl_initial_response("SCRAM-SHA-256", scram.get_client_first().encode()))
        elif code == wire.AUTH_SASL_CONTINUE and scram is not None:
            scram.set_server_first(payload[4:].decode())
            link.transport.write(wire.password_message(scram.get_client_final().encode()))
        elif code == wire.AUTH_SASL_FINAL and scram is not None:
            try:
                scram.set_server_final(payload[4:].decode())
            except Exception:  # scramp raises ScramException; a wrong server signature is an impostor
                raise BackendError("the backend's SCRAM server signature does not verify") from None
        else:
            raise BackendError(f"the backend asks for an authentication method the gateway does not support ({code})")


async def _read_until_ready(link: BackendLink) -> BackendHello:
    parameter_status: list[bytes] = []
    notices: list[bytes] = []
    process_id, secret = 0, b""
    while True:
        kind, payload = await link.read_message()
        if kind == b"S":
            parameter_status.append(wire.message(kind, payload))
        elif kind == b"K":
            process_id = int.from_bytes(payload[:4], "big", signed=True)
            secret = payload[4:]
        elif kind == b"N":
            notices.append(wire.message(kind, payload))
        elif kind == b"E":
            raise _backend_refusal(payload)
        elif kind == b"Z":
            return BackendHello(parameter_status, notices, process_id, secret, payload[:1])
        else:
            raise BackendError(f"unexpected message {kind!r} from the backend during start-up")


async def send_cancel(host: str, port: int, process_id: int, secret_key: bytes, timeout: float = 5.0) -> None:
    """CancelRequest on a fresh connection, as PostgreSQL expects; the backend answers by closing."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(wire.cancel_request(process_id, secret_key))
            await writer.drain()
            await reader.read()
        finally:
            writer.close()
