"""Malformed, truncated, oversized and hostile input on the PostgreSQL listener, over raw sockets.

Every case must end with a PostgreSQL ErrorResponse that says what was wrong and/or a closed
connection: never a hang, never a Python traceback sent to the client. A psycopg session opened
before the bad input must keep working after it.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
import struct
import time
from collections.abc import Iterator

import psycopg
import pytest

from wardgate.core.session import Session
from wardgate.devtools.harness import GatewayThread
from wardgate.protocols.postgres import wire

RESOURCE = "orders-prod"
IO_TIMEOUT = 10.0
PLAINTEXT_LISTENER = [{"protocol": "postgres", "address": "127.0.0.1:0", "allow_plaintext_token_on_loopback": True}]

pytestmark = pytest.mark.timeout(60)


# --- a tiny raw PostgreSQL client --------------------------------------------------------------------


class Raw:
    """A raw socket to the gateway that reads PostgreSQL backend messages with timeouts."""

    def __init__(self, host: str, port: int):
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection((host, port), timeout=IO_TIMEOUT)
        self.sock.settimeout(IO_TIMEOUT)
        self.buffer = b""
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def starttls(self, ca_file, server_hostname: str) -> None:
        context = ssl.create_default_context(cafile=str(ca_file))
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.sock.settimeout(IO_TIMEOUT)

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            pytest.fail(f"the gateway neither answered nor closed within {IO_TIMEOUT}s "
                        f"(received so far: {self.buffer!r})")
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def read_exact(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not self._fill():
                pytest.fail(f"connection closed while waiting for {count} bytes (got {self.buffer!r})")
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def read_message(self) -> tuple[bytes, bytes] | None:
        """One backend message (type, payload), or None at a clean end of stream."""
        while len(self.buffer) < 5:
            if not self._fill():
                assert not self.buffer, f"connection closed inside a message header: {self.buffer!r}"
                return None
        kind = self.buffer[:1]
        (length,) = struct.unpack("!I", self.buffer[1:5])
        assert 4 <= length < 1 << 20, f"implausible backend message {kind!r} of length {length}: {self.buffer[:64]!r}"
        while len(self.buffer) < 1 + length:
            if not self._fill():
                pytest.fail(f"connection closed inside a {kind!r} message: {self.buffer!r}")
        payload = self.buffer[5:1 + length]
        self.buffer = self.buffer[1 + length:]
        return kind, payload

    def read_until(self, kind: bytes) -> list[tuple[bytes, bytes]]:
        messages = []
        while True:
            message = self.read_message()
            assert message is not None, f"connection closed before {kind!r}; got {messages!r}"
            messages.append(message)
            if message[0] == kind:
                return messages
            if message[0] == b"E" and kind != b"E":
                pytest.fail(f"error while waiting for {kind!r}: {wire.parse_error_fields(message[1])}")

    def read_until_close(self) -> bytes:
        """Everything the gateway still sends, asserting that it closes the connection."""
        deadline = time.monotonic() + IO_TIMEOUT
        while self._fill():
            if time.monotonic() > deadline:
                pytest.fail(f"the gateway kept sending and did not close: {self.buffer[:200]!r}")
        data, self.buffer = self.buffer, b""
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def split_messages(data: bytes) -> list[tuple[bytes, bytes]]:
    messages = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 5, f"trailing garbage after messages: {data[pos:]!r}"
        kind = data[pos:pos + 1]
        (length,) = struct.unpack("!I", data[pos + 1:pos + 5])
        assert 4 <= length <= len(data) - pos - 1, f"not a complete backend message at {pos}: {data!r}"
        messages.append((kind, data[pos + 5:pos + 1 + length]))
        pos += 1 + length
    return messages


def assert_no_traceback(data: bytes) -> None:
    for marker in (b"Traceback", b'File "', b"Error:", b"wardgate/"):
        assert marker not in data, f"the client was sent internals ({marker!r}): {data!r}"


def refusal(data: bytes, *, sqlstate: str | set[str] | None = None, mentions: tuple[str, ...] = ()) -> dict[str, str]:
    """Assert ``data`` (everything up to close) is exactly one FATAL ErrorResponse; return its fields."""
    assert_no_traceback(data)
    messages = split_messages(data)
    errors = [wire.parse_error_fields(payload) for kind, payload in messages if kind == b"E"]
    assert errors, f"expected an ErrorResponse before the close, got {messages!r}"
    assert messages[-1][0] == b"E", f"the ErrorResponse must be the last message: {messages!r}"
    fields = errors[-1]
    assert fields.get("S") == "FATAL" and fields.get("V") == "FATAL", fields
    assert len(fields.get("C", "")) == 5, fields
    if sqlstate is not None:
        allowed = {sqlstate} if isinstance(sqlstate, str) else sqlstate
        assert fields["C"] in allowed, f"SQLSTATE {fields['C']} not in {allowed}: {fields}"
    message = fields.get("M", "")
    assert message, fields
    for word in mentions:
        assert word.lower() in message.lower(), f"{word!r} not named in the error message {message!r}"
    assert "R" not in [kind.decode() for kind, _ in messages], f"authentication was requested: {messages!r}"
    return fields


def authenticate(raw: Raw, token: str, database: str = RESOURCE) -> list[tuple[bytes, bytes]]:
    """Full plaintext start-up: StartupMessage, cleartext password (the token), until ReadyForQuery."""
    raw.send(wire.startup_message({"user": "agent", "database": database, "application_name": "bad-input"}))
    kind, payload = raw.read_message()
    assert kind == b"R" and wire.parse_auth_code(payload) == wire.AUTH_CLEARTEXT, (kind, payload)
    raw.send(wire.password_message(token.encode() + b"\x00"))
    return raw.read_until(b"Z")


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture
def plain_gateway(make_gateway) -> GatewayThread:
    """Tokens accepted over plain TCP from loopback, so raw sockets can authenticate."""
    return make_gateway(listeners=PLAINTEXT_LISTENER)


@contextlib.contextmanager
def bystander(gateway: GatewayThread) -> Iterator[psycopg.Connection]:
    """A healthy TLS session opened before the bad input; it must still work afterwards."""
    with psycopg.connect(gateway.dsn(gateway.token("bystander"), RESOURCE, sslmode="verify-full"),
                         autocommit=True) as conn:
        conn.execute("SET application_name = 'bystander'")
        assert conn.execute("SELECT 1").fetchone() == (1,)
        yield conn
        assert conn.execute("SELECT 40 + 2, current_setting('application_name')").fetchone() == (42, "bystander")
    # and the gateway still accepts new sessions
    with psycopg.connect(gateway.dsn(gateway.token("after"), RESOURCE, sslmode="verify-full")) as conn:
        assert conn.execute("SELECT 'still serving'").fetchone() == ("still serving",)


def raw(gateway: GatewayThread) -> Raw:
    return Raw(gateway.host, gateway.port)


def refused_after_auth(gateway: GatewayThread, subject: str, packet: bytes, **expected) -> dict[str, str]:
    """Authenticate as ``subject``, send ``packet``: the answer must be one FATAL ErrorResponse and
    a close (``expected``: as for :func:`refusal`); return its fields."""
    client = raw(gateway)
    try:
        authenticate(client, gateway.token(subject))
        client.send(packet)
        return refusal(client.read_until_close(), **expected)
    finally:
        client.close()


def sessions_ended(gateway: GatewayThread, subject: str) -> list[dict]:
    """The ``session.ended`` events of ``subject``'s sessions in the gateway's trail."""
    return [e for e in gateway.audit_events() if e["type"] == "session.ended"
            and (e.get("identity") or {}).get("subject") == subject]


# --- start-up phase ----------------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [
    pytest.param(random.Random(20240601).randbytes(512), id="random-bytes"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id="http-request"),
    pytest.param(b"\x00\x00\x00\x04", id="length-below-minimum"),
    pytest.param(struct.pack("!ii", 8, 1234), id="unknown-request-code"),
    pytest.param(struct.pack("!ii", 8, 2 << 16), id="protocol-2.0"),
])
def test_garbage_first_packet_is_refused(plain_gateway: GatewayThread, garbage: bytes) -> None:
    with bystander(plain_gateway):
        client = raw(plain_gateway)
        try:
            client.send(garbage)
            data = client.read_until_close()
        finally:
            client.close()
        if data:  # PostgreSQL itself just closes on a bad length; an explanation is better
            fields = refusal(data, sqlstate={"08P01", "0A000"})
            assert "startup" in fields["M"].lower() or "protocol" in fields["M"].lower(), fields


def test_random_bytes_get_an_explanation(plain_gateway: GatewayThread) -> None:
    client = raw(plain_gateway)
    try:
        client.send(b"\x47\x45\x54\x20" + random.Random(7).randbytes(100))  # length 0x47455420: far too large
        fields = refusal(client.read_until_close(), sqlstate="08P01", mentions=("startup packet length",))
    finally:
        client.close()
    assert str(0x47455420) in fields["M"], fields


def test_truncated_startup_packet_then_close(plain_gateway: GatewayThread) -> None:
    with bystander(plain_gateway):
        packet = wire.startup_message({"user": "agent", "database": RESOURCE})
        client = raw(plain_gateway)
        try:
            client.send(packet[: len(packet) // 2])
            client.sock.shutdown(socket.SHUT_WR)
            data = client.read_until_close()  # the gateway must notice the half-close, not wait 60 s
        finally:
            client.close()
        assert_no_traceback(data)
        if data:
            refusal(data)
        # the same, but an abrupt close (RST) mid-packet
        client = raw(plain_gateway)
        client.send(packet[:6])
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()


def test_truncated_header_then_close(plain_gateway: GatewayThread) -> None:
    with bystander(plain_gateway):
        client = raw(plain_gateway)
        try:
            client.send(b"\x00\x00")
            client.sock.shutdown(socket.SHUT_WR)
            data = client.read_until_close()
        finally:
            client.close()
        assert_no_traceback(data)


@pytest.mark.parametrize("length", [10_001, 65_536, 2**31 - 1])
def test_startup_length_over_limit(plain_gateway: GatewayThread, length: int) -> None:
    with bystander(plain_gateway):
        client = raw(plain_gateway)
        try:
            # the declared length is never sent in full: the gateway must not wait for it
            client.send(struct.pack("!ii", length, wire.PROTOCOL_3_0) + b"user\x00agent\x00")
            fields = refusal(client.read_until_close(), sqlstate="08P01", mentions=("startup packet length",))
        finally:
            client.close()
        assert str(length) in fields["M"], fields


def test_startup_without_database(plain_gateway: GatewayThread) -> None:
    with bystander(plain_gateway):
        client = raw(plain_gateway)
        try:
            client.send(wire.startup_message({"user": "agent"}))
            refusal(client.read_until_close(), sqlstate="3D000", mentions=("database",))
        finally:
            client.close()


def test_unknown_resource(plain_gateway: GatewayThread) -> None:
    with bystander(plain_gateway):
        client = raw(plain_gateway)
        try:
            client.send(wire.startup_message({"user": "agent", "database": "no-such-resource-42"}))
            refusal(client.read_until_close(), sqlstate="3D000", mentions=("no-such-resource-42",))
        finally:
            client.close()


def test_unknown_resource_through_psycopg(gateway: GatewayThread) -> None:
    with pytest.raises(psycopg.OperationalError, match="no-such-db"):
        psycopg.connect(gateway.dsn(gateway.token(), "no-such-db"))


def test_startup_packet_not_terminated(plain_gateway: GatewayThread) -> None:
    body = struct.pack("!i", wire.PROTOCOL_3_0) + b"user\x00agent\x00database\x00orders-prod"
    client = raw(plain_gateway)
    try:
        client.send(struct.pack("!i", len(body) + 4) + body)
        refusal(client.read_until_close(), sqlstate="08P01")
    finally:
        client.close()


def test_startup_packet_invalid_utf8(plain_gateway: GatewayThread) -> None:
    body = struct.pack("!i", wire.PROTOCOL_3_0) + b"user\x00\xff\xfe\x00database\x00orders-prod\x00\x00"
    client = raw(plain_gateway)
    try:
        client.send(struct.pack("!i", len(body) + 4) + body)
        refusal(client.read_until_close(), sqlstate="08P01", mentions=("utf-8",))
    finally:
        client.close()


# --- TLS ---------------------------------------------------------------------------------------------


def test_plaintext_password_refused_before_it_is_requested(gateway: GatewayThread) -> None:
    """Default listener: a token must come over TLS. The gateway must not ask for the password in
    plaintext (AuthenticationCleartextPassword) and then refuse: the client would already have sent it."""
    with bystander(gateway):
        client = raw(gateway)
        try:
            client.send(wire.startup_message({"user": "agent", "database": RESOURCE}))
            data = client.read_until_close()
        finally:
            client.close()
        assert not data.startswith(b"R"), f"the gateway asked for the password over plain TCP: {data!r}"
        refusal(data, sqlstate="28000", mentions=("TLS",))
    refused = [e for e in gateway.audit_events() if e["type"] == "session.refused"]
    assert [e["reason"] for e in refused] == ["tls_required"], refused


def test_plaintext_refused_through_psycopg(gateway: GatewayThread) -> None:
    with pytest.raises(psycopg.OperationalError, match="TLS is required"):
        psycopg.connect(gateway.dsn(gateway.token(), RESOURCE, sslmode="disable"))


def test_tls_startup_asks_for_the_password(gateway: GatewayThread) -> None:
    """Contrast with the case above: over TLS the same start-up gets AuthenticationCleartextPassword."""
    client = raw(gateway)
    try:
        client.send(wire.ssl_request())
        assert client.read_exact(1) == b"S"
        client.starttls(gateway.ca_file, gateway.host)
        for message in authenticate(client, gateway.token("tls-raw")):
            assert message[0] != b"E", wire.parse_error_fields(message[1])
        client.send(wire.query("SELECT 1"))
        kinds = [kind for kind, _ in client.read_until(b"Z")]
        assert kinds == [b"T", b"D", b"C", b"Z"], kinds
        client.send(wire.TERMINATE)
        assert client.read_until_close() == b""
    finally:
        client.close()


def test_bytes_after_sslrequest_before_handshake(gateway: GatewayThread) -> None:
    """CVE-2021-23214: data pipelined behind SSLRequest must not be read as if it came over TLS."""
    with bystander(gateway):
        client = raw(gateway)
        try:
            client.send(wire.ssl_request() + wire.startup_message({"user": "agent", "database": RESOURCE}))
            data = client.read_until_close()
        finally:
            client.close()
        assert not data.startswith(b"S"), f"the gateway agreed to TLS despite pipelined plaintext: {data!r}"
        fields = refusal(data, sqlstate="08P01")
        assert "ssl" in fields["M"].lower() and "unencrypted" in fields["M"].lower(), fields


def test_sslrequest_twice(gateway: GatewayThread) -> None:
    client = raw(gateway)
    try:
        client.send(wire.ssl_request())
        assert client.read_exact(1) == b"S"
        client.starttls(gateway.ca_file, gateway.host)
        client.send(wire.ssl_request())
        refusal(client.read_until_close(), sqlstate="08P01", mentions=("SSLRequest",))
    finally:
        client.close()


def test_garbage_instead_of_tls_handshake(gateway: GatewayThread) -> None:
    with bystander(gateway):
        client = raw(gateway)
        try:
            client.send(wire.ssl_request())
            assert client.read_exact(1) == b"S"
            client.send(random.Random(3).randbytes(300))
            data = client.read_until_close()
        finally:
            client.close()
        assert_no_traceback(data)


def test_gssencrequest_answered_n_then_startup_continues(plain_gateway: GatewayThread) -> None:
    client = raw(plain_gateway)
    try:
        client.send(struct.pack("!ii", 8, wire.GSSENC_REQUEST))
        assert client.read_exact(1) == b"N"
        messages = authenticate(client, plain_gateway.token("gss-fallback"))
        kinds = [kind for kind, _ in messages]
        assert kinds[0] == b"R" and b"K" in kinds and kinds[-1] == b"Z", kinds
        client.send(wire.query("SELECT 'after gssenc'"))
        reply = client.read_until(b"Z")
        assert [kind for kind, _ in reply] == [b"T", b"D", b"C", b"Z"]
        assert b"after gssenc" in reply[1][1]
        client.send(wire.TERMINATE)
        assert client.read_until_close() == b""
    finally:
        client.close()


def test_gssencrequest_then_sslrequest(gateway: GatewayThread) -> None:
    """libpq's order when GSS is unavailable: GSSENCRequest → 'N', then SSLRequest → 'S'."""
    client = raw(gateway)
    try:
        client.send(struct.pack("!ii", 8, wire.GSSENC_REQUEST))
        assert client.read_exact(1) == b"N"
        client.send(wire.ssl_request())
        assert client.read_exact(1) == b"S"
        client.starttls(gateway.ca_file, gateway.host)
        assert authenticate(client, gateway.token("gss-then-ssl"))[-1][0] == b"Z"
    finally:
        client.close()


# --- refused start-up parameters ---------------------------------------------------------------------


@pytest.mark.parametrize("params, named", [
    ({"options": "-c session_authorization=postgres"}, "session_authorization"),
    ({"options": "--role=postgres"}, "role"),
    ({"options": "-c search_path=public -c log_statement=none"}, "log_statement"),
    ({"session_authorization": "postgres"}, "session_authorization"),
    ({"options": "-d 5"}, "-d"),
])
def test_disallowed_startup_option(plain_gateway: GatewayThread, params: dict[str, str], named: str) -> None:
    with bystander(plain_gateway):
        client = raw(plain_gateway)
        try:
            client.send(wire.startup_message({"user": "agent", "database": RESOURCE, **params}))
            refusal(client.read_until_close(), sqlstate="42501", mentions=(named,))
        finally:
            client.close()


def test_disallowed_option_through_psycopg(gateway: GatewayThread) -> None:
    dsn = gateway.dsn(gateway.token(), RESOURCE) + " options='-c session_authorization=postgres'"
    with pytest.raises(psycopg.OperationalError, match="session_authorization"):
        psycopg.connect(dsn)


@pytest.mark.parametrize("value", ["database", "true", "1"])
def test_replication_refused(plain_gateway: GatewayThread, value: str) -> None:
    with bystander(plain_gateway):
        client = raw(plain_gateway)
        try:
            client.send(wire.startup_message({"user": "agent", "database": RESOURCE, "replication": value}))
            refusal(client.read_until_close(), mentions=("replication",))
        finally:
            client.close()


# --- after authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize("length", [(1 << 30) + 1, 0xFFFFFFFF, 2])
def test_message_length_out_of_range_after_auth(plain_gateway: GatewayThread, length: int) -> None:
    with bystander(plain_gateway):
        fields = refused_after_auth(plain_gateway, "huge", b"Q" + struct.pack("!I", length) + b"SELECT 1",
                                    sqlstate="08P01", mentions=("length",))
        assert str(length) in fields["M"], fields
    aborted = [e for e in plain_gateway.audit_events() if e["type"] == "session.aborted"]
    assert len(aborted) == 1 and aborted[0]["code"] == "08P01", aborted


@pytest.mark.parametrize("kind", [b"!", b"p", b"\x00", b"z"])
def test_unknown_message_type_after_auth(plain_gateway: GatewayThread, kind: bytes) -> None:
    with bystander(plain_gateway):
        fields = refused_after_auth(plain_gateway, "odd", wire.message(kind, b"xyz\x00"),
                                    sqlstate="08P01", mentions=("message type",))
        assert repr(kind.decode("latin-1")) in fields["M"], fields


def test_unknown_message_after_valid_query_in_same_packet(plain_gateway: GatewayThread) -> None:
    """A valid statement pipelined before the bad message: nothing of the chunk may hang."""
    client = raw(plain_gateway)
    try:
        authenticate(client, plain_gateway.token("mixed"))
        client.send(wire.query("SELECT 1") + wire.message(b"!", b""))
        data = client.read_until_close()
    finally:
        client.close()
    assert_no_traceback(data)
    errors = [wire.parse_error_fields(p) for k, p in split_messages(data) if k == b"E"]
    assert errors and errors[-1]["C"] == "08P01" and errors[-1]["S"] == "FATAL", errors


def test_truncated_message_after_auth_then_close(plain_gateway: GatewayThread) -> None:
    with bystander(plain_gateway):
        client = raw(plain_gateway)
        try:
            authenticate(client, plain_gateway.token("trunc"))
            client.send(wire.query("SELECT 1")[:7])
            client.sock.shutdown(socket.SHUT_WR)
            data = client.read_until_close()
        finally:
            client.close()
        assert_no_traceback(data)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ended = sessions_ended(plain_gateway, "trunc")
        if ended:
            break
        time.sleep(0.05)
    assert ended, "the half-closed session was never ended"


def test_password_message_too_long(plain_gateway: GatewayThread) -> None:
    client = raw(plain_gateway)
    try:
        client.send(wire.startup_message({"user": "agent", "database": RESOURCE}))
        kind, _ = client.read_message()
        assert kind == b"R"
        client.send(b"p" + struct.pack("!I", 10 << 20) + b"x" * 100)
        refusal(client.read_until_close(), sqlstate={"08P01", "28000"}, mentions=("length",))
    finally:
        client.close()


def test_wrong_message_instead_of_password(plain_gateway: GatewayThread) -> None:
    client = raw(plain_gateway)
    try:
        client.send(wire.startup_message({"user": "agent", "database": RESOURCE}))
        kind, _ = client.read_message()
        assert kind == b"R"
        client.send(wire.query("SELECT 1"))
        refusal(client.read_until_close(), sqlstate="08P01", mentions=("password",))
    finally:
        client.close()


def test_cancel_request_with_unknown_key(plain_gateway: GatewayThread) -> None:
    """Like PostgreSQL: an unknown cancel key gets no answer, just a close, and cancels nothing; the
    operator sees it counted (cancels reaching the wrong replica show up there)."""
    registry = plain_gateway.gateway.metrics.registry
    counted = lambda outcome: registry.get_sample_value("wardgate_cancel_requests_total", {"outcome": outcome}) or 0  # noqa: E731
    unknown, backend = counted("unknown"), counted("backend")
    with bystander(plain_gateway) as conn:
        client = raw(plain_gateway)
        try:
            client.send(wire.cancel_request(12345, b"\x01\x02\x03\x04"))
            assert client.read_until_close() == b""
        finally:
            client.close()
        assert conn.execute("SELECT pg_sleep(0.2), 'not cancelled'").fetchone()[1] == "not cancelled"
    assert (counted("unknown"), counted("backend")) == (unknown + 1, backend)


@pytest.mark.parametrize("message", [
    pytest.param(wire.message(b"P", b"abc"), id="parse-unterminated-name"),
    pytest.param(wire.message(b"P", b"s1\x00SELECT 1"), id="parse-unterminated-query"),
    pytest.param(wire.message(b"B", b"portal"), id="bind-unterminated"),
    pytest.param(wire.message(b"E", b"portal"), id="execute-unterminated"),
    pytest.param(wire.message(b"C", b"Sname"), id="close-unterminated"),
    pytest.param(wire.message(b"C", b""), id="close-empty"),
])
def test_malformed_extended_query_message(plain_gateway: GatewayThread, message: bytes) -> None:
    """A Parse/Bind/Execute/Close whose strings are not NUL-terminated is a protocol violation: the
    client must be told so (FATAL 08P01), not dropped by an exception inside the relay."""
    with bystander(plain_gateway):
        refused_after_auth(plain_gateway, "malformed", message + wire.message(b"S"), sqlstate="08P01")
    assert len(sessions_ended(plain_gateway, "malformed")) == 1, "the session's end must be recorded"


@pytest.mark.parametrize("message", [
    pytest.param(wire.message(b"Q", b"SELECT 1"), id="query-unterminated"),
    pytest.param(wire.message(b"Q", b""), id="query-empty-body"),
])
def test_malformed_simple_query_alone(plain_gateway: GatewayThread, message: bytes) -> None:
    """A Query whose text is not NUL-terminated, sent as the only message of its packet (the relay's
    one-whole-query path): FATAL 08P01 that says so, and the session's end is recorded."""
    with bystander(plain_gateway):
        refused_after_auth(plain_gateway, "malformed-query", message, sqlstate="08P01", mentions=("NUL-terminated",))
    assert len(sessions_ended(plain_gateway, "malformed-query")) == 1, "the session's end must be recorded"


@pytest.mark.parametrize("packet", [
    pytest.param(wire.query("SELECT 1"), id="query-alone"),
    pytest.param(wire.query("SELECT 1") + wire.query("SELECT 2"), id="two-queries"),
])
def test_a_bug_while_deciding_ends_only_that_session(plain_gateway: GatewayThread, packet: bytes,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception while relaying a statement: FATAL XX000 "internal error" for that
    session (no traceback, the statement not forwarded), and the other sessions carry on."""
    decide = Session.decide

    def broken(self, command, parameters=None):
        if self.principal is not None and self.principal.subject == "buggy":
            raise RuntimeError("a bug")
        return decide(self, command, parameters)

    monkeypatch.setattr(Session, "decide", broken)
    with bystander(plain_gateway):
        refused_after_auth(plain_gateway, "buggy", packet, sqlstate="XX000", mentions=("internal error",))


def test_newer_protocol_minor_and_unknown_options_are_negotiated(plain_gateway: GatewayThread) -> None:
    """Protocol 3.5 with a ``_pq_`` option: NegotiateProtocolVersion (3.0, option unrecognized), then
    the start-up continues as 3.0."""
    body = struct.pack("!i", (3 << 16) | 5) + b"".join(
        wire.cstr(k) + wire.cstr(v) for k, v in
        {"user": "agent", "database": RESOURCE, "_pq_.made_up": "on"}.items()) + b"\x00"
    client = raw(plain_gateway)
    try:
        client.send(struct.pack("!i", len(body) + 4) + body)
        kind, payload = client.read_message()
        assert kind == b"v", (kind, payload)
        minor, count = struct.unpack("!ii", payload[:8])
        assert (minor, count) == (0, 1) and payload[8:] == b"_pq_.made_up\x00", payload
        kind, payload = client.read_message()
        assert kind == b"R" and wire.parse_auth_code(payload) == wire.AUTH_CLEARTEXT
        client.send(wire.password_message(plain_gateway.token("negotiated").encode() + b"\x00"))
        assert client.read_until(b"Z")[-1] == (b"Z", b"I")
    finally:
        client.close()
