"""PostgreSQL frontend/backend protocol v3: message codes, parsers and builders. No I/O.

Reference: PostgreSQL documentation, chapter "Frontend/Backend Protocol" (message formats).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# Startup-phase request codes (the packet has no type byte: Int32 length, Int32 code).
PROTOCOL_3_0 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

# PostgreSQL itself refuses startup packets over 10000 bytes.
MAX_STARTUP_PACKET = 10_000
# The largest message the gateway accepts in either direction; PostgreSQL's own limit is 1 GiB.
MAX_MESSAGE = 1 << 30

# Authentication request codes (backend 'R').
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_I32 = struct.Struct("!i")
_I16 = struct.Struct("!h")
_HEADER = struct.Struct("!ci")


class ProtocolViolation(Exception):
    """The peer sent bytes that are not the PostgreSQL protocol (or exceed our limits)."""

    def __init__(self, message: str, sqlstate: str = "08P01"):
        super().__init__(message)
        self.sqlstate = sqlstate


# --- startup phase -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    process_id: int
    secret_key: bytes


@dataclass(frozen=True, slots=True)
class StartupMessage:
    major: int
    minor: int
    parameters: dict[str, str] = field(default_factory=dict)


def startup_packet_length(header: bytes) -> int:
    """Length of a startup-phase packet from its first four bytes, validated."""
    (length,) = _I32.unpack_from(header, 0)
    if length < 8 or length > MAX_STARTUP_PACKET:
        raise ProtocolViolation(f"invalid startup packet length {length}")
    return length


def parse_startup_packet(packet: bytes) -> SSLRequest | GSSENCRequest | CancelRequest | StartupMessage:
    """Parse a whole startup-phase packet (length included)."""
    (code,) = _I32.unpack_from(packet, 4)
    if code == SSL_REQUEST and len(packet) == 8:
        return SSLRequest()
    if code == GSSENC_REQUEST and len(packet) == 8:
        return GSSENCRequest()
    if code == CANCEL_REQUEST and len(packet) >= 12:
        # Protocol 3.2 allows longer secret keys; 3.0 uses 4 bytes.
        (pid,) = _I32.unpack_from(packet, 8)
        return CancelRequest(pid, bytes(packet[12:]))
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise ProtocolViolation(f"unsupported frontend protocol {major}.{minor}: only 3.x is served", "0A000")
    body = bytes(packet[8:])
    if not body.endswith(b"\x00"):
        raise ProtocolViolation("startup packet is not terminated")
    parts = body[:-1].split(b"\x00")
    if parts and parts[-1] == b"":
        parts.pop()
    if len(parts) % 2:
        raise ProtocolViolation("startup packet has a parameter without a value")
    try:
        params = {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts), 2)}
    except UnicodeDecodeError:
        raise ProtocolViolation("startup packet parameters are not valid UTF-8") from None
    return StartupMessage(major, minor, params)


# --- builders ------------------------------------------------------------------------------------


def message(type_byte: bytes, payload: bytes = b"") -> bytes:
    return _HEADER.pack(type_byte, len(payload) + 4) + payload


def cstr(value: str) -> bytes:
    return value.encode() + b"\x00"


def startup_message(parameters: dict[str, str]) -> bytes:
    body = _I32.pack(PROTOCOL_3_0) + b"".join(cstr(k) + cstr(v) for k, v in parameters.items()) + b"\x00"
    return _I32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return _I32.pack(8) + _I32.pack(SSL_REQUEST)


def cancel_request(process_id: int, secret_key: bytes) -> bytes:
    return _I32.pack(8 + 4 + len(secret_key)) + _I32.pack(CANCEL_REQUEST) + _I32.pack(process_id) + secret_key


def error_fields(severity: str, sqlstate: str, text: str, detail: str | None = None,
                 hint: str | None = None) -> bytes:
    body = b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(sqlstate) + b"M" + cstr(text)
    if detail:
        body += b"D" + cstr(detail)
    if hint:
        body += b"H" + cstr(hint)
    return body + b"\x00"


def error_response(sqlstate: str, text: str, *, severity: str = "ERROR", detail: str | None = None,
                   hint: str | None = None) -> bytes:
    return message(b"E", error_fields(severity, sqlstate, text, detail, hint))


def notice_response(text: str, *, sqlstate: str = "00000", severity: str = "NOTICE",
                    detail: str | None = None, hint: str | None = None) -> bytes:
    return message(b"N", error_fields(severity, sqlstate, text, detail, hint))


def auth_request(code: int, payload: bytes = b"") -> bytes:
    return message(b"R", _I32.pack(code) + payload)


def backend_key_data(process_id: int, secret_key: bytes) -> bytes:
    return message(b"K", _I32.pack(process_id) + secret_key)


def ready_for_query(status: bytes) -> bytes:
    return message(b"Z", status)


def negotiate_protocol_version(minor: int, unrecognized: list[str]) -> bytes:
    return message(b"v", _I32.pack(minor) + _I32.pack(len(unrecognized)) + b"".join(cstr(o) for o in unrecognized))


def password_message(secret: bytes) -> bytes:
    return message(b"p", secret)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(b"p", cstr(mechanism) + _I32.pack(len(data)) + data)


def query(sql: str) -> bytes:
    return message(b"Q", cstr(sql))


TERMINATE = message(b"X")


# --- parsers of message payloads -----------------------------------------------------------------


def read_cstr(payload: bytes, offset: int) -> tuple[str, int]:
    """Decode a NUL-terminated string at ``offset``; return it and the offset after the NUL."""
    end = payload.find(b"\x00", offset)
    if end < 0:
        raise ProtocolViolation("a string field is not NUL-terminated")
    return payload[offset:end].decode("utf-8", "replace"), end + 1


def parse_error_fields(payload: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse payload → {field code: value}."""
    fields: dict[str, str] = {}
    offset = 0
    while offset < len(payload) and payload[offset] != 0:
        code = chr(payload[offset])
        value, offset = read_cstr(payload, offset + 1)
        fields[code] = value
    return fields


def parse_parse(payload: bytes) -> tuple[str, str]:
    """Parse ('P') payload → (statement name, query text)."""
    name, offset = read_cstr(payload, 0)
    text, _ = read_cstr(payload, offset)
    return name, text


def parse_bind_names(payload: bytes) -> tuple[str, str]:
    """Bind ('B') payload → (portal name, statement name)."""
    portal, offset = read_cstr(payload, 0)
    statement, _ = read_cstr(payload, offset)
    return portal, statement


def parse_bind_parameters(payload: bytes) -> list[tuple[int, bytes | None]]:
    """Bind ('B') payload → (format code, value as sent) per parameter (value None for SQL NULL)."""
    _, offset = read_cstr(payload, 0)
    _, offset = read_cstr(payload, offset)
    count = int.from_bytes(payload[offset:offset + 2], "big")
    codes = [int.from_bytes(payload[offset + 2 + 2 * i:offset + 4 + 2 * i], "big") for i in range(count)]
    offset += 2 + 2 * count
    params = int.from_bytes(payload[offset:offset + 2], "big")
    offset += 2
    values: list[tuple[int, bytes | None]] = []
    for i in range(params):
        # No codes: all text; one code: it applies to every parameter; else one code each.
        code = 0 if not codes else codes[0] if len(codes) == 1 else codes[i] if i < len(codes) else 0
        length = int.from_bytes(payload[offset:offset + 4], "big", signed=True)
        offset += 4
        if length < 0:
            values.append((code, None))
        else:
            values.append((code, bytes(payload[offset:offset + length])))
            offset += length
    return values


def parse_bind_result_formats(payload: bytes) -> list[int]:
    """Bind ('B') payload → the result-column format codes (empty: all text)."""
    _, offset = read_cstr(payload, 0)
    _, offset = read_cstr(payload, offset)
    count = int.from_bytes(payload[offset:offset + 2], "big")
    offset += 2 + 2 * count
    params = int.from_bytes(payload[offset:offset + 2], "big")
    offset += 2
    for _ in range(params):
        length = int.from_bytes(payload[offset:offset + 4], "big", signed=True)
        offset += 4 + max(length, 0)
    results = int.from_bytes(payload[offset:offset + 2], "big")
    offset += 2
    return [int.from_bytes(payload[offset + 2 * i:offset + 2 * i + 2], "big") for i in range(results)]


def parse_auth_code(payload: bytes) -> int:
    return _I32.unpack_from(payload, 0)[0]


def parse_sasl_mechanisms(payload: bytes) -> list[str]:
    return [m.decode() for m in payload[4:].split(b"\x00") if m]


def command_tag_rows(tag: str) -> int | None:
    """Rows affected/returned from a CommandComplete tag: 'SELECT 5' → 5, 'INSERT 0 3' → 3."""
    last = tag.rpartition(" ")[2]
    return int(last) if last.isdigit() else None
