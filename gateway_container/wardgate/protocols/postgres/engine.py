"""PostgreSQL protocol adapter: client start-up, token authentication, backend hand-off, relay.

The relay splits both byte streams into protocol messages but forwards received buffers whole unless
a message must change (a refused statement, the gateway's own cancel key). Every statement (``Q``,
``P``, fast-path ``F``) becomes a :class:`~wardgate.core.model.Command` for the decision core, and a
queue of expected responses ties each result (``CommandComplete``, ``ErrorResponse``…) back to the
command it answers, so every result is recorded against its decision.

A refused statement is not simply dropped: the gateway sends the backend a statement that fails to
parse in its place and rewrites that error into the refusal. The backend thus sees the same error a
real refusal implies (an open transaction is aborted, pipelined messages are skipped until Sync) and
responses keep their order.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import logging
import secrets
import socket
import ssl
import struct
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from wardgate.config import is_loopback
from wardgate.core.audit import AuditUnavailable
from wardgate.core.compiled import load_compiled, warn_fallback
from wardgate.core.credentials import CredentialBroker, CredentialError
from wardgate.core.identity import AuthenticationError
from wardgate.core.model import Command, Decision, Verdict
from wardgate.core.session import DecisionCore, Session
from wardgate.protocols.postgres import wire
from wardgate.protocols.postgres.backend import (
    BackendError, BackendHello, BackendLink, BackendTarget, connect_backend, send_cancel,
)
from wardgate.protocols.postgres.catalog import CatalogResolver, copy_target
from wardgate.protocols.postgres.rowmask import Field, ResultMasker, parse_row_description, with_formats
from wardgate.protocols.postgres.startup import StartupRefused, filter_startup
from wardgate.core.masking import MaskReport, MaskStrategy, mask_text

log = logging.getLogger("wardgate.postgres")

PROTOCOL = "postgres"
STARTUP_TIMEOUT = 60.0  # PostgreSQL's authentication_timeout default
MAX_TOKEN_MESSAGE = 64 * 1024
# Sent to the backend in place of a refused statement: it cannot parse, so it can never run.
REFUSED_STATEMENT = "WARDGATE REFUSED"
_REFUSED_STATEMENT_NAME = "wardgate refused: no such statement"
_REFUSED_PORTAL_NAME = "wardgate refused: no such portal"

_Q, _P, _B, _D, _E, _C, _S, _F, _H, _X = b"QPBDECSFHX"
_COPY_DATA, _COPY_DONE, _COPY_FAIL = b"dcf"
_PASSTHROUGH_FROM_CLIENT = frozenset({_H, _COPY_DATA, _COPY_DONE, _COPY_FAIL})
# The transaction status of a ReadyForQuery outside any transaction. When a backend chunk leaves
# nothing pending and ends with this byte, it ended with that ReadyForQuery: every other message that
# can come then (notices, notifications, parameter status, errors) ends in a NUL. See _ready.
_IDLE = b"I"[0]
_EXTENDED = frozenset({_P, _B, _D, _E, _C})
_ALLOW = Verdict.ALLOW  # enum member lookups go through a descriptor in 3.11: look up once
# A Describe the gateway sends itself (to learn a masked portal's columns); its answer is not relayed.
_INJECTED_DESCRIBE = -1
_KEPT_PER_EVENT_MIN = 64  # masked tables / row limits kept before unreferenced ones are looked for
_COPY_CSV = re.compile(r"\bcsv\b", re.IGNORECASE)
# A message's length field, read in place: ~4x cheaper than int.from_bytes of a slice, per message.
_length_at = struct.Struct("!I").unpack_from


def _load_fast():
    """The compiled head of the backend loop (``_relay_fast.pyx``), or None (see core.compiled)."""
    return load_compiled("wardgate.protocols.postgres._relay_fast", Path(__file__).with_name("_relay_fast.pyx"),
                         what="backend relay loop", disable_env="WARDGATE_RELAY_PYTHON")


_RELAY_FAST, _RELAY_PROBLEM = _load_fast()
warn_fallback(_RELAY_PROBLEM, "the backend relay loop runs in Python (slower)", log)
# (data, pos, pending, session.result, rows) -> (pos, rows): unmasked results' messages handled
# in one C pass; the Python loop below goes on from where it stops. None: the Python loop does all.
_scan_backend = _RELAY_FAST.scan_backend if _RELAY_FAST is not None else None


class _LimitExceeded(Exception):
    def __init__(self, limit: tuple[int, str]):
        self.limit = limit


def _drop(data: bytes) -> None:
    pass


class _NeedCatalog(Exception):
    """Raised mid-stream: these table OIDs (or this relation) must be looked up before going on."""

    def __init__(self, oids: set, relation: str | None = None):
        self.oids = oids
        self.relation = relation


@dataclass(frozen=True, slots=True)
class PgResource:
    name: str
    target: BackendTarget
    broker: CredentialBroker


@dataclass(slots=True)
class CancelKey:
    secret: bytes
    host: str
    port: int
    backend_pid: int
    backend_secret: bytes
    connection: "ClientConnection | None" = None


# With worker processes, a cancel key's process id carries the worker's slot in its top bits: a
# CancelRequest is a new connection, which may reach any worker, and the slot says which worker holds
# the key (pgbouncer's peer id, in the same place). 24 random bits stay, and the 32-bit secret.
SLOT_SHIFT = 24
MAX_SLOTS = (2**31 - 1) >> SLOT_SHIFT  # 127


class CancelRegistry:
    """The gateway hands each client its own cancel key and maps it to the backend's.

    ``slot`` (1…127) is this worker's number when the gateway runs worker processes, and ``forward``
    a coroutine function ``(slot, pid, secret)`` that delivers a CancelRequest for another worker's
    key to that worker. ``observe(outcome)`` is told what became of each request, once, by the
    process that settled it: ``backend``, ``withdrawn``, ``unknown`` or ``failed``."""

    def __init__(self, slot: int = 0, forward=None, observe=None) -> None:
        if not 0 <= slot <= MAX_SLOTS:
            raise ValueError(f"worker slot {slot} out of range 0..{MAX_SLOTS}")
        self.slot = slot
        self.forward = forward
        self.observe = observe if observe is not None else (lambda outcome: None)
        self._keys: dict[int, CancelKey] = {}

    def issue(self, host: str, port: int, backend_pid: int, backend_secret: bytes,
              connection: "ClientConnection | None" = None) -> tuple[int, bytes]:
        while True:
            if self.slot:
                pid = (self.slot << SLOT_SHIFT) | secrets.randbelow(1 << SLOT_SHIFT)
            else:
                pid = secrets.randbelow(2**31 - 1) + 1
            if pid and pid not in self._keys:
                break
        secret = secrets.token_bytes(4)
        self._keys[pid] = CancelKey(secret, host, port, backend_pid, backend_secret, connection)
        return pid, secret

    def find(self, pid: int, secret: bytes) -> CancelKey | None:
        key = self._keys.get(pid)
        if key is None or not hmac.compare_digest(key.secret, secret):
            return None
        return key

    def owner(self, pid: int) -> int:
        """The worker slot a key was issued by (0 without workers)."""
        return pid >> SLOT_SHIFT if self.slot else 0

    def release(self, pid: int) -> None:
        self._keys.pop(pid, None)

    async def cancel(self, pid: int, secret: bytes, *, forwarded: bool = False) -> None:
        """Act on a CancelRequest: withdraw a held statement's approval request, or cancel what runs
        on the backend; a key of another worker goes to that worker (once: ``forwarded``)."""
        key = self.find(pid, secret)
        if key is None:
            owner = self.owner(pid)
            if not forwarded and self.forward is not None and owner and owner != self.slot:
                try:
                    await self.forward(owner, pid, secret)  # that worker observes the outcome
                except (OSError, TimeoutError) as exc:
                    log.warning("cancel forwarding to worker %d failed: %s", owner, exc)
                    self.observe("failed")
                return
            # PostgreSQL also answers nothing to an unknown key. Counted: behind a load balancer
            # without client affinity, cancels reaching the wrong replica show up here.
            self.observe("unknown")
            return
        connection = key.connection
        if connection is not None and connection._cancel_pid == pid and connection._holding:
            # Nothing runs on the backend yet: the cancel withdraws the approval request.
            connection.session.withdraw("cancelled by the client")
            self.observe("withdrawn")
            return
        try:
            await send_cancel(key.host, key.port, key.backend_pid, key.backend_secret)
        except (OSError, TimeoutError) as exc:
            log.warning("cancel forwarding to %s:%s failed: %s", key.host, key.port, exc)
            self.observe("failed")
            return
        self.observe("backend")


class PostgresFrontend:
    """One listener's shared state; builds a :class:`ClientConnection` per accepted socket."""

    def __init__(self, core: DecisionCore, resources: dict[str, PgResource], *,
                 ssl_context: ssl.SSLContext | None, allow_plaintext_token_on_loopback: bool,
                 cancel_registry: CancelRegistry | None = None, masking_key: bytes = b""):
        self.core = core
        self.resources = resources
        self.ssl_context = ssl_context
        self.allow_plaintext_token_on_loopback = allow_plaintext_token_on_loopback
        self.cancels = cancel_registry or CancelRegistry()
        self.connections: set[ClientConnection] = set()
        self.masking_key = masking_key
        self._catalogs: dict[str, CatalogResolver] = {}

    def catalog(self, resource: str) -> CatalogResolver:
        resolver = self._catalogs.get(resource)
        if resolver is None:
            resolver = self._catalogs[resource] = CatalogResolver(self.resources[resource])
        return resolver

    def __call__(self) -> "ClientConnection":
        return ClientConnection(self)

    def drain(self) -> None:
        """Ask every session to close at its next idle point (see ``ClientConnection.drain``)."""
        for connection in list(self.connections):
            connection.drain()

    def close_all(self) -> None:
        for resolver in self._catalogs.values():
            resolver.close()
        for connection in list(self.connections):
            connection.fatal("57P01", "wardgate is shutting down")
            # Record the end now: connection_lost comes later, after the recorder may be closed.
            if connection.session is not None:
                connection.session.end("gateway shutting down")


# A response the backend still owes the client, in order: (message kind it answers, decision event
# id, time sent, refusal decision or None). Tuples: one is made per protocol message.
_Pending = tuple
_KIND, _EVENT, _STARTED, _REFUSAL = range(4)


class ClientConnection(asyncio.Protocol):
    def __init__(self, frontend: PostgresFrontend):
        self.frontend = frontend
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.tls = False
        self.session: Session | None = None
        self.recorder = frontend.core.recorder
        self.backend: BackendLink | None = None
        self._startup_buffer = bytearray()
        self._waiter: asyncio.Future | None = None
        self._startup_task: asyncio.Task | None = None
        self._relaying = False
        self._closed = False
        self._cancel_pid: int | None = None
        self._closing_by_client = False  # the client sent Terminate: the backend's close is expected
        # relay state
        # An incomplete message is kept as a list of chunks and joined once it is whole: re-joining
        # on every read would make a large message cost quadratic time.
        self._client_tail: list[bytes] = []
        self._client_tail_size = 0
        self._client_need = 0
        self._client_skip = 0
        self._backend_tail: list[bytes] = []
        self._backend_tail_size = 0
        self._backend_need = 0
        self._backend_skip = 0
        self._rows = 0  # DataRows since the last result: a portal read in batches reports each batch
        self._pending: deque[tuple] = deque()
        self._discard_until_sync = False
        self._skipped: set[str] = set()
        # prepared statement name → (decision event id, masking profile); portal → (event, profile,
        # result layout); statement name → layout from a Describe (formats come with each Bind)
        self._statements: dict[str, tuple] = {}
        self._portals: dict[str, tuple] = {}
        self._statement_layouts: dict[str, list] = {}
        self._described: set[str] = set()  # portals the client asked to describe
        # masking state of the result being relayed
        self._masker: ResultMasker | None = None
        self._masker_head: tuple | None = None
        # (fields, profile, tables, catalog, its generation, fresh until) of the last result that had
        # nothing to mask: see _start_masker
        self._unmasked_shape: tuple | None = None
        self._catalog: CatalogResolver | None = None  # see the catalog property
        self._mask_report = MaskReport()
        self._copy_csv = False
        self._tables: dict[str, tuple] = {}  # decision event → tables it touches (masked commands)
        self._limits: dict[str, tuple[int, str]] = {}  # decision event → (max rows, rule)
        self._kept_per_event_limit = _KEPT_PER_EVENT_MIN  # see _forget_unreferenced_events
        self._read_holds: set[str] = set()
        self._backend_read_holds: set[str] = set()
        # approval holds: the client's input from the held message on waits here until the outcome
        self._holding = False
        self._held_input: list[bytes] = []
        self._preapproved: tuple | None = None  # (decision, event) the held message resumes with
        self._review_statements: dict[str, tuple] = {}  # statement → (review decision, event, text)
        self._review_portals: dict[str, tuple] = {}     # portal → (review decision, event, text, params)
        # The last byte of the last backend chunk that left nothing pending: with nothing pending now
        # (every client message that asks for an answer adds an entry), _IDLE exactly when the session
        # is idle outside any transaction, the only time a draining gateway closes it.
        self._ready = 0
        self._draining = False

    # --- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.frontend.connections.add(self)
        self._startup_task = self.loop.create_task(self._startup())

    def data_received(self, data: bytes) -> None:
        if self._relaying:
            self._from_client(data)
        else:
            self._startup_buffer += data
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.frontend.connections.discard(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._startup_task is not None and not self._startup_task.done():
            self._startup_task.cancel()
        if self._cancel_pid is not None:
            self.frontend.cancels.release(self._cancel_pid)
        if self.backend is not None and self.backend.transport is not None:
            self.backend.on_lost = None
            if not self.backend.transport.is_closing():
                self.backend.transport.write(wire.TERMINATE)
            self.backend.transport.close()
        if self.session is not None:
            self.session.end("client disconnected" if exc is None else f"client connection lost: {exc}")

    def pause_writing(self) -> None:
        self._hold_backend_reads("client-buffer-full")

    def resume_writing(self) -> None:
        self._release_backend_reads("client-buffer-full")

    # --- start-up ---------------------------------------------------------------------------------
    async def _read(self, count: int) -> bytes:
        while len(self._startup_buffer) < count:
            if self._closed:
                raise ConnectionResetError("client went away")
            self._waiter = self.loop.create_future()
            await self._waiter
        data = bytes(self._startup_buffer[:count])
        del self._startup_buffer[:count]
        return data

    async def _startup(self) -> None:
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                startup = await self._negotiate()
                if startup is None:
                    return
                await self._accept(startup)
        except wire.ProtocolViolation as exc:
            self._refuse_startup(exc.sqlstate, f"wardgate: {exc}")
        except StartupRefused as exc:
            self._refuse_startup(exc.sqlstate, f"wardgate: {exc}")
        except TimeoutError:
            self._refuse_startup("08006", "wardgate: start-up did not complete in time")
        except (ConnectionError, asyncio.CancelledError):
            self._close()
        except ssl.SSLError as exc:  # no ErrorResponse possible: the channel itself failed
            log.info("TLS handshake with %s failed: %s", self.peer, exc.reason or exc)
            if self.session is not None:
                self.session.note("session.refused", reason="tls_handshake_failed", controls=["SC-8"])
            self._close()
        except Exception:  # never leak a stack trace to the client; log it for operators
            log.exception("unexpected error during start-up from %s", self.peer)
            self._refuse_startup("XX000", "wardgate: internal error during start-up")

    async def _negotiate(self) -> wire.StartupMessage | None:
        """SSLRequest / GSSENCRequest / CancelRequest handling, until a StartupMessage arrives."""
        while True:
            header = await self._read(4)
            length = wire.startup_packet_length(header)
            packet = wire.parse_startup_packet(header + await self._read(length - 4))
            if isinstance(packet, wire.SSLRequest):
                if self.tls:
                    raise wire.ProtocolViolation("SSLRequest received twice")
                if self._startup_buffer:
                    # Bytes sent before the TLS handshake would be read as if they came over TLS
                    # (CVE-2021-23214): refuse.
                    raise wire.ProtocolViolation("unencrypted data received after SSLRequest")
                if self.frontend.ssl_context is None:
                    self.transport.write(b"N")
                    continue
                self.transport.write(b"S")
                self.transport = await self.loop.start_tls(self.transport, self, self.frontend.ssl_context,
                                                           server_side=True)
                self.tls = True
            elif isinstance(packet, wire.GSSENCRequest):
                self.transport.write(b"N")
            elif isinstance(packet, wire.CancelRequest):
                await self.frontend.cancels.cancel(packet.process_id, packet.secret_key)
                self._close()
                return None
            else:
                return packet

    async def _accept(self, startup: wire.StartupMessage) -> None:
        params = startup.parameters
        database = params.get("database")
        if not database:
            raise StartupRefused("no database in the start-up packet: name the wardgate resource as "
                                 "the database (e.g. psql -d orders-prod)", "3D000")
        resource = self.frontend.resources.get(database)
        if resource is None:
            raise StartupRefused(f"resource {database!r} is not configured on this gateway", "3D000")
        forwarded, agent, unrecognized = filter_startup(params)
        if startup.minor > 0 or unrecognized:
            self.transport.write(wire.negotiate_protocol_version(0, unrecognized))

        self.session = self.frontend.core.open_session(
            protocol=PROTOCOL, resource=database, peer=self.peer, tls=self.tls,
            client={"claimed_user": params.get("user"), "application_name": params.get("application_name"),
                    "agent": agent or None},
        )
        if not self.tls and not (self.frontend.allow_plaintext_token_on_loopback
                                 and is_loopback(self.peer.rpartition(":")[0].strip("[]"))):
            self.session.note("session.refused", reason="tls_required", controls=["SC-8", "IA-2"])
            raise StartupRefused("TLS is required to send a token: connect with sslmode=require "
                                 "(or verify-full with the gateway's CA)", "28000")

        # The token travels as the password; PostgreSQL clients send it in a PasswordMessage.
        self.transport.write(wire.auth_request(wire.AUTH_CLEARTEXT))
        header = await self._read(5)
        length = int.from_bytes(header[1:5], "big")
        if header[:1] != b"p":
            raise wire.ProtocolViolation(f"expected a password message, got {header[:1]!r}")
        if length < 5 or length > MAX_TOKEN_MESSAGE:
            raise wire.ProtocolViolation(f"password message length {length} is out of range", "28000")
        token = (await self._read(length - 4)).rstrip(b"\x00").decode("utf-8", "replace").strip()
        try:  # an empty token is refused (and recorded) by the verifier like any malformed one
            await self.session.authenticate(token)
        except AuthenticationError as exc:
            self._commit_or_fail()
            hint = " (send your OIDC token as the password, e.g. in PGPASSWORD)" if exc.reason == "malformed" else ""
            raise StartupRefused(f"authentication failed: {exc}{hint}", "28000") from None

        self._commit_or_fail()  # who connected is on record before any backend connection is made
        link, hello = await self._connect_backend(resource, forwarded)
        if self._closed:
            link.transport.close()
            return
        try:
            self._start_relay(resource, link, hello)
        except StartupRefused:
            link.transport.close()
            raise

    async def _connect_backend(self, resource: PgResource, forwarded: dict[str, str]) -> tuple[BackendLink, BackendHello]:
        """Connect with the brokered credential. A refused credential was probably rotated: fetch it
        afresh and try once more, so a rotation costs no client a failed connection."""
        for attempt in (1, 2):
            try:
                credential = await resource.broker.get()
                return await connect_backend(resource.target, credential.username, credential.password, forwarded)
            except CredentialError as exc:
                self.session.note("session.backend_failed", reason=str(exc), controls=["IA-5", "AU-2"])
                raise StartupRefused(f"cannot obtain credentials for resource {resource.name!r}: {exc}",
                                     "08001") from None
            except BackendError as exc:
                if exc.credentials_refused and attempt == 1:
                    resource.broker.invalidate()
                    self.session.note("session.credential_refreshed", reason=str(exc), controls=["IA-5"])
                    continue
                self.session.note("session.backend_failed", reason=str(exc), controls=["AU-2"])
                raise StartupRefused(f"cannot connect to resource {resource.name!r}: {exc}", "08001") from None
        raise AssertionError("unreachable")

    def _start_relay(self, resource: PgResource, link: BackendLink, hello: BackendHello) -> None:
        self.backend = link
        self._cancel_pid, secret = self.frontend.cancels.issue(
            resource.target.host, resource.target.port, hello.process_id, hello.secret_key, self)
        self.session.note("session.connected", backend_pid=hello.process_id, controls=["AC-3", "IA-5"])
        self._commit_or_fail()
        greeting = [wire.auth_request(wire.AUTH_OK), *hello.parameter_status, *hello.notices,
                    wire.backend_key_data(self._cancel_pid, secret), wire.ready_for_query(hello.ready_status)]
        self.transport.write(b"".join(greeting))
        link.on_data = self._from_backend
        link.on_lost = self._backend_lost
        link.on_pause_writing = lambda: self._hold_client_reads("backend-buffer-full")
        link.on_resume_writing = lambda: self._release_client_reads("backend-buffer-full")
        self._relaying = True
        self._ready = _IDLE if hello.ready_status == b"I" else 0
        leftover_client = bytes(self._startup_buffer)
        self._startup_buffer.clear()
        leftover_backend = link.take_buffered()
        if leftover_backend:
            self._from_backend(leftover_backend)
        if leftover_client:
            self._from_client(leftover_client)
        if self._draining:  # the gateway began to stop while this session was starting
            self._close_if_idle()

    def _commit_or_fail(self) -> None:
        """Start-up events must be written too; without the sink, refuse the session."""
        try:
            future = self.session.commit()
        except AuditUnavailable as exc:
            raise StartupRefused(f"{exc}; no session can start until it is back", "58030") from None
        if future is not None:
            # `always` mode at start-up: the session cannot act before its next commit, which waits
            # for this one, so no need to block the hand-shake here.
            future.add_done_callback(_consume_exception)

    def _refuse_startup(self, sqlstate: str, text: str) -> None:
        if self._closed or self.transport.is_closing():
            self._close()
            return
        self.transport.write(wire.error_response(sqlstate, text, severity="FATAL"))
        if self.session is not None:
            try:
                self.session.commit()
            except AuditUnavailable:
                pass
        self._close()

    # --- relay: client → backend ----------------------------------------------------------------
    def _from_client(self, data: bytes) -> None:
        if (len(data) >= 5 and data[0] == _Q and len(data) == 1 + _length_at(data, 1)[0] and not self._holding
                and not self._client_tail and not self._client_skip):
            # The common case up front: the chunk is exactly one whole simple query.
            try:
                replacement = self._client_message(_Q, data, 5, len(data))
            except _HoldCommand as hold:
                self._start_hold(hold, data)
                return
            except Exception as exc:
                self._client_failed(exc)
                return
            # Statements reach the backend only after their decision events are written.
            self.recorder.forward(self.backend.transport, data if replacement is None else replacement, self)
            return
        if self._holding:
            self._held_input.append(data)
            return
        if self._client_tail:
            self._client_tail.append(data)
            self._client_tail_size += len(data)
            if self._client_tail_size < self._client_need:
                return
            data = b"".join(self._client_tail)
            self._client_tail = []
        size = len(data)
        pos = 0
        if self._client_skip:
            pos = min(self._client_skip, size)
            self._client_skip -= pos
        pieces: list[bytes] | None = None
        flushed = 0
        try:
            while size - pos >= 5:
                kind = data[pos]
                length = _length_at(data, pos + 1)[0]
                if length < 4 or length > wire.MAX_MESSAGE:
                    raise wire.ProtocolViolation(f"invalid message length {length} for message {chr(kind)!r}")
                end = pos + 1 + length
                if end > size:
                    if kind == _COPY_DATA:
                        # Stream large COPY data through instead of buffering whole messages.
                        self._client_skip = end - size
                        pos = size
                    break
                if kind in _PASSTHROUGH_FROM_CLIENT:
                    pass
                else:
                    try:
                        replacement = self._client_message(kind, data, pos + 5, end)
                    except _HoldCommand as hold:
                        # Everything before the held message goes on; it and what follows wait.
                        self._start_hold(hold, data[pos:])
                        size = pos
                        break
                    if replacement is not None:
                        if pieces is None:
                            pieces = []
                        pieces.append(data[flushed:pos])
                        pieces.append(replacement)
                        flushed = end
                pos = end
        except Exception as exc:
            self._client_failed(exc)
            return
        if pos < size and not self._holding:
            tail = data[pos:]
            self._client_tail = [tail]
            self._client_tail_size = len(tail)
            self._client_need = 1 + int.from_bytes(tail[1:5], "big") if len(tail) >= 5 else 5
        if pieces is None:
            outgoing = data[:pos] if pos < len(data) else data
        else:
            pieces.append(data[flushed:pos])
            outgoing = b"".join(pieces)
        if outgoing:
            # Statements reach the backend only after their decision events are written.
            self.recorder.forward(self.backend.transport, outgoing, self)

    def _client_failed(self, exc: Exception) -> None:
        """End the session over a protocol violation, or a bug (called in its ``except`` block): a
        bug must not leak a traceback nor let the message through."""
        if isinstance(exc, wire.ProtocolViolation):
            self.fatal(exc.sqlstate, f"wardgate: protocol violation: {exc}")
        else:
            log.exception("unexpected error relaying from client %s", self.peer)
            self.fatal("XX000", "wardgate: internal error; the session is closed")

    def _client_message(self, kind: int, data: bytes, start: int, end: int) -> bytes | None:
        """Handle one complete client message; return replacement bytes, or None to forward it.

        Pending entries are (kind, decision event, time sent, refusal, masking profile, reference):
        the reference is the statement text of a masked query, the (target, name) of a Describe, or
        the portal of an Execute."""
        now = time.perf_counter()
        pending = self._pending
        if kind == _Q:
            if end == start or data[end - 1] != 0:
                raise wire.ProtocolViolation("query string is not NUL-terminated")
            text = data[start:end - 1].decode("utf-8", "replace")
            if self._preapproved is not None:
                (decision, event), self._preapproved = self._preapproved, None
            else:
                decision, event = self.session.decide(Command(PROTOCOL, "query", text))
                if decision.verdict is not _ALLOW and self.session.needs_approval(decision):
                    raise _HoldCommand(decision, event, text, ())
            if decision.verdict is _ALLOW:
                if decision.mask_profile is None and decision.max_rows is None:  # the common case
                    pending.append((_Q, event, now, None, None, None))
                    return None
                profile = self._profile(decision)
                if profile is not None:
                    self._tables[event] = decision.tables
                if decision.max_rows is not None:
                    self._limits[event] = (decision.max_rows, decision.rule)
                pending.append((_Q, event, now, None, profile, text if profile is not None else None))
                return None
            pending.append((_Q, event, now, decision, None, None))
            return wire.query(REFUSED_STATEMENT)
        if kind == _S:
            self._discard_until_sync = False
            self._skipped.clear()
            pending.append((_S, None, now, None, None, None))
            return None
        if kind == _X:
            self._closing_by_client = True
            return None
        if kind == _F:
            oid = int.from_bytes(data[start:start + 4], "big")
            decision, event = self.session.decide(
                Command(PROTOCOL, "function_call", f"fast-path function call oid={oid}", language="opaque"))
            if decision.verdict is _ALLOW:
                pending.append((_Q, event, now, None, None, None))  # answered like a query: result/error, then Z
                return None
            pending.append((_Q, event, now, decision, None, None))
            return wire.query(REFUSED_STATEMENT)
        if kind not in _EXTENDED:
            raise wire.ProtocolViolation(f"unknown message type {chr(kind)!r}")
        replacement = None
        ref = None
        profile = None
        if kind == _P:
            name, text = wire.parse_parse(data[start:end])
            decision, event = self.session.decide(Command(PROTOCOL, "parse", text, statement_name=name))
            if decision.verdict is not _ALLOW and self.session.needs_approval(decision):
                # Parsing runs nothing: the statement is held at Execute, when its parameters are known.
                self._review_statements[name] = (decision, event, text)
                decision = _PARSE_ONLY
            elif self._review_statements:
                self._review_statements.pop(name, None)
            refusal = None if decision.verdict is _ALLOW else decision
            profile = self._profile(decision) if refusal is None and decision.mask_profile is not None else None
            if profile is not None:
                self._tables[event] = decision.tables
            if refusal is None and decision.max_rows is not None:
                self._limits[event] = (decision.max_rows, decision.rule)
            self._statements[name] = (event, profile, text, self.frontend.core.policy, decision.volatile)
            if len(self._tables) + len(self._limits) > self._kept_per_event_limit:
                self._forget_unreferenced_events()
            self._statement_layouts.pop(name, None)
            if self._discard_until_sync:
                # The backend skips to Sync after an error: this statement will not run.
                self._skip(event)
            else:
                pending.append((_P, event, now, refusal, None, None))
            if refusal is None:
                return None
            # Same statement name, text that cannot parse: the backend answers with an error and
            # skips to Sync, exactly as for a real failure.
            return wire.message(b"P", wire.cstr(name) + wire.cstr(REFUSED_STATEMENT) + b"\x00\x00")
        if kind == _B:
            if data[start] == 0 and data[start + 1] == 0:  # unnamed portal and statement: most clients
                portal = statement = ""
            else:
                portal, statement = wire.parse_bind_names(data[start:end])
            review = self._review_statements.get(statement)
            if review is not None:
                self._review_portals[portal] = review + (wire.parse_bind_parameters(data[start:end]),)
            elif self._review_portals:
                self._review_portals.pop(portal, None)
            entry = self._statements.get(statement)
            event, profile = (entry[0], entry[1]) if entry is not None else (None, None)
            core = self.frontend.core
            if entry is not None and (entry[3] is not core.policy or entry[4] or core.refusing is not None):
                # The policy changed since this statement was prepared, its decision depends on the
                # time, or the gateway is refusing commands (audit archive down): decide again before
                # it runs.
                decision, event = self.session.decide(Command(PROTOCOL, "bind", entry[2], statement_name=statement))
                if decision.verdict is not _ALLOW:
                    self._statements[statement] = (event, None, entry[2], self.frontend.core.policy, decision.volatile)
                    self._portals[portal] = (event, None, None)
                    if self._discard_until_sync:
                        self._skip(event)
                    else:
                        pending.append((_B, event, now, decision, None, None))
                    # A statement name that cannot exist: the backend fails the Bind and skips to Sync.
                    return wire.message(b"B", wire.cstr(portal) + wire.cstr(_REFUSED_STATEMENT_NAME)
                                        + b"\x00\x00\x00\x00\x00\x00")
                profile = self._profile(decision)
                if profile is not None:
                    self._tables[event] = decision.tables
                if decision.max_rows is not None:
                    self._limits[event] = (decision.max_rows, decision.rule)
                self._statements[statement] = (event, profile, entry[2], self.frontend.core.policy, decision.volatile)
                if len(self._tables) + len(self._limits) > self._kept_per_event_limit:
                    self._forget_unreferenced_events()
            layout = None
            if profile is not None:
                described = self._statement_layouts.get(statement)
                if described is not None:
                    layout = with_formats(described, wire.parse_bind_result_formats(data[start:end]))
            self._portals[portal] = (event, profile, layout)
            self._described.discard(portal)
            profile = None  # BindComplete carries no rows
        elif kind == _E:
            portal = "" if data[start] == 0 else wire.read_cstr(data[start:end], 0)[0]
            event, profile, layout = self._portals.get(portal, (None, None, None))
            ref = portal
            if self._review_portals and portal in self._review_portals and not self._discard_until_sync:
                review_decision, review_event, review_text, params = self._review_portals[portal]
                if self._preapproved is not None:
                    (decision, event), self._preapproved = self._preapproved, None
                elif not self.session.has_approvals(review_decision.rule):
                    raise _HoldCommand(review_decision, review_event, review_text, tuple(params))
                else:
                    # An earlier approval in this session (scope session/duration) may cover exactly this
                    # statement with these parameters: decide again, now that they are known.
                    decision, event = self.session.decide(Command(PROTOCOL, "execute", review_text),
                                                          _hashed_parameters(params))
                    if decision.verdict is not _ALLOW and self.session.needs_approval(decision):
                        raise _HoldCommand(decision, event, review_text, tuple(params))
                del self._review_portals[portal]  # later Executes continue this same, approved run
                if decision.verdict is not _ALLOW:
                    self._portals.pop(portal, None)
                    pending.append((_E, event, now, decision, None, None))
                    # A portal that cannot exist: the backend fails the Execute and skips to Sync.
                    return wire.message(b"E", wire.cstr(_REFUSED_PORTAL_NAME) + b"\x00\x00\x00\x00")
            if (profile is not None and layout is None and portal not in self._described
                    and not self._discard_until_sync):
                # The client never described this portal: ask the backend ourselves, so the rows
                # can be masked by column; the answer is not passed on.
                pending.append((_INJECTED_DESCRIBE, event, now, None, profile, portal))
                replacement = wire.message(b"D", b"P" + wire.cstr(portal)) + data[start - 5:end]
        elif kind == _C:
            target, name = data[start:start + 1], wire.read_cstr(data[start:end], 1)[0]
            if target == b"S":
                self._statements.pop(name, None)
                self._statement_layouts.pop(name, None)
                self._review_statements.pop(name, None)
            else:
                self._portals.pop(name, None)
                self._described.discard(name)
                self._review_portals.pop(name, None)
            event = None
        else:  # Describe
            target, name = data[start:start + 1], wire.read_cstr(data[start:end], 1)[0]
            if target == b"P":
                self._described.add(name)  # its RowDescription will precede the rows: no need to ask
            source = self._statements if target == b"S" else self._portals
            entry = source.get(name)
            event = entry[0] if entry is not None else None
            profile = entry[1] if entry is not None else None
            ref = (target, name)
        if not self._discard_until_sync:
            pending.append((kind, event, now, None, profile, ref))
        elif kind == _E and event is not None:
            self._skip(event)
        return replacement

    def _forget_unreferenced_events(self) -> None:
        """Drop the masked tables and row limits kept for statements nothing refers to any more.

        A simple query's are dropped at its ReadyForQuery; an extended-protocol statement's live as
        long as a prepared statement, a portal, a pending message or an approval review refers to its
        decision: until then a later Execute needs them. Called as the maps grow past twice what was
        live at the last call, so the cost per statement stays constant."""
        live = {entry[0] for entry in self._statements.values()}
        live.update(entry[0] for entry in self._portals.values())
        live.update(entry[1] for entry in self._pending)
        live.update(entry[1] for entry in self._review_statements.values())
        live.update(entry[1] for entry in self._review_portals.values())
        for kept in (self._tables, self._limits):
            for event in [event for event in kept if event not in live]:
                del kept[event]
        self._kept_per_event_limit = max(_KEPT_PER_EVENT_MIN, 2 * (len(self._tables) + len(self._limits)))

    # --- approval holds ---------------------------------------------------------------------------
    def _start_hold(self, hold: "_HoldCommand", held: bytes) -> None:
        """Stop relaying this client's input at the held message until its approval outcome."""
        self._holding = True
        self._held_input = [held]
        self._client_tail = []
        self._client_tail_size = 0
        self._hold_client_reads("approval")
        task = self.loop.create_task(self._await_approval(hold))
        task.add_done_callback(_consume_exception)

    async def _await_approval(self, hold: "_HoldCommand") -> None:
        def tell_client(held) -> None:
            wait = max(0, int(held.deadline - time.time()))
            text = (f"wardgate: statement held for approval (request {held.request_id}, rule {held.rule}); "
                    f"waiting up to {wait}s")
            hint = f"approve with: {held.hint}" if held.hint else None
            # After the approval.requested event is written, like every byte that depends on it.
            self.recorder.forward(self.transport, wire.notice_response(text, hint=hint), self)
        try:
            # Hashed with their wire format (text and binary bytes never collide); shown as text, or
            # as \\x-hex for binary values.
            hashed = _hashed_parameters(hold.params)
            shown = tuple(None if v is None else v.decode("utf-8", "replace") if code == 0 else "\\x" + v.hex()
                          for code, v in hold.params)
            final = await self.session.await_approval(hold.decision, hold.event, hold.text, hashed,
                                                      shown_parameters=shown, on_held=tell_client)
        except Exception:
            log.exception("approval hold failed for %s", self.peer)
            final = Decision(Verdict.DENY, hold.decision.rule, "approval could not be completed (internal error)")
        if self._closed:
            return
        self._preapproved = (final, hold.event)
        self._holding = False
        held, self._held_input = b"".join(self._held_input), []
        self._release_client_reads("approval")
        self._from_client(held)

    def _profile(self, decision: Decision):
        """The masking profile object a decision names (None: results pass through untouched)."""
        if decision.mask_profile is None:
            return None
        bundle = getattr(self.frontend.core.policy, "bundle", None)
        profile = bundle.masking.get(decision.mask_profile) if bundle is not None else None
        if profile is None:  # the policy changed under us: fail closed
            raise wire.ProtocolViolation(f"masking profile {decision.mask_profile!r} is not loaded", "XX000")
        return profile

    def _skip(self, event: str) -> None:
        """Record once that a decided statement did not run (skipped after an error, until Sync)."""
        if event not in self._skipped:
            self._skipped.add(event)
            self.session.result(event, status="skipped")

    # --- relay: backend → client ----------------------------------------------------------------
    def _from_backend(self, data: bytes) -> None:
        if _scan_backend is not None and not self._backend_tail and not self._backend_skip:
            # The common case up front: the compiled scan takes every message of the chunk (whole
            # results with nothing to mask), so the chunk goes on as it came. Otherwise the loop
            # below goes on from where the scan stopped, as when the scan runs there.
            try:
                if self._tables or self._limits:  # masked or limited results pending
                    pos = self._scan(data, 0)
                else:
                    pos, self._rows = _scan_backend(data, 0, self._pending, self.session.result, self._rows)
            except Exception:
                self._backend_failed()
                return
            if pos == len(data):
                if pos:
                    self.recorder.forward(self.transport, data, self)
                    if not self._pending:
                        self._ready = data[-1]
                        if self._draining:
                            self._close_if_idle()
                return
        else:
            pos = 0
        self._continue_from_backend(data, pos)

    def _scan(self, data: bytes, pos: int) -> int:
        """The compiled scan from ``pos``, with what masked and limited results need; where it stopped."""
        pos, self._rows = _scan_backend(data, pos, self._pending, self.session.result, self._rows,
                                        self._masker_head if self._masker is None else None,
                                        self._tables, self._finish_masking, self._scan_result_start, self._limits)
        return pos

    def _backend_failed(self) -> None:
        """A bug while relaying to the client (called in its ``except`` block): logged, the session
        closed with XX000; no traceback leaks and nothing more is forwarded."""
        log.exception("unexpected error relaying to client %s", self.peer)
        self.fatal("XX000", "wardgate: internal error; the session is closed")

    def _continue_from_backend(self, data: bytes, pos: int) -> None:
        if self._backend_tail:
            self._backend_tail.append(data)
            self._backend_tail_size += len(data)
            if self._backend_tail_size < self._backend_need:
                return
            data = b"".join(self._backend_tail)
            self._backend_tail = []
        size = len(data)
        if self._backend_skip:
            pos = min(self._backend_skip, size)
            self._backend_skip -= pos
        pieces: list[bytes] | None = None
        flushed = 0
        pending = self._pending
        held = False
        kind = 0
        try:
            # (Where the scan above stopped, it stops again at once: the message there is not its.)
            if _scan_backend is not None:
                pos = self._scan(data, pos)
            rescan = False
            while size - pos >= 5:
                kind = data[pos]
                length = _length_at(data, pos + 1)[0]
                end = pos + 1 + length
                if end > size:
                    if (kind == 68 or kind == 100) and not (pending and pending[0][4] is not None) and not self._limits:
                        # DataRow / CopyData of a result that is not masked: stream it through.
                        self._backend_skip = end - size
                        pos = size
                        if kind == 68:
                            self._rows += 1
                    break
                if kind == 68:  # DataRow: counted; decoded only when its result is masked
                    self._rows += 1
                    if self._limits and pending:
                        limit = self._limits.get(pending[0][1])
                        if limit is not None and self._rows > limit[0]:
                            raise _LimitExceeded(limit)
                    if pending and pending[0][4] is not None:
                        masker = self._masker
                        if self._masker_head is pending[0]:
                            if masker is None:
                                replacement = None  # a profile applies, but to no column of this result
                            else:
                                payload = data[pos + 5:end]  # the common case, inlined: one call per row
                                masked = masker.mask_row(payload)
                                replacement = None if masked is payload else (
                                    b"D" + (len(masked) + 4).to_bytes(4, "big") + masked)
                        else:
                            replacement = self._mask_datarow(pending[0], data, pos + 5, end)
                            rescan = self._masker is None  # nothing to mask in this result
                    else:
                        replacement = None
                elif kind == 90 and pending and pending[0][0] == _Q and pending[0][4] is None:
                    # ReadyForQuery ending an unmasked simple query: _backend_message's work, inlined.
                    head = pending.popleft()
                    if self._tables:
                        self._tables.pop(head[1], None)
                    if self._limits:
                        self._limits.pop(head[1], None)
                    replacement = None
                elif kind == 84 and pending and pending[0][0] == _Q and pending[0][4] is None:
                    replacement = None  # RowDescription of an unmasked simple query: nothing to do
                elif kind == 67 and pending and pending[0][0] == _Q and pending[0][4] is None:
                    # CommandComplete of an unmasked simple query: _backend_message's work, inlined.
                    head = pending[0]
                    tag = data[pos + 5:end - 1].decode("ascii", "replace")
                    rows = tag.rpartition(" ")[2]
                    self._rows = 0
                    self.session.result(head[1], "ok", int(rows) if rows.isdigit() else None, tag, None,
                                        time.perf_counter() - head[2])
                    replacement = None
                elif (kind == 49 or kind == 50) and pending and pending[0][0] in _EXTENDED:
                    pending.popleft()  # ParseComplete, BindComplete
                    replacement = None
                else:
                    replacement = self._backend_message(kind, data, pos + 5, end)
                    # A RowDescription starts a masked result: if it has nothing to mask, the scan
                    # takes its rows and end.
                    rescan = kind == 84
                if replacement is not None:
                    if pieces is None:
                        pieces = []
                    pieces.append(data[flushed:pos])
                    pieces.append(replacement)
                    flushed = end
                pos = end
                if rescan and _scan_backend is not None:
                    rescan = False
                    pos = self._scan(data, pos)
        except _NeedCatalog as need:
            # Columns must be resolved before this message can be masked: hold the rest of the
            # stream (from this message on), look them up, then carry on where we stopped.
            if kind == 68:
                self._rows -= 1
            held = True
            self._hold_backend_reads("catalog")
            self.loop.create_task(self._resolve_then_resume(need))
        except _LimitExceeded as exceeded:
            # The rows before this one go out, then the refusal; the rest is never forwarded and both
            # connections close (the backend rolls back and stops the query).
            rows, rule = exceeded.limit
            self._rows -= 1
            self.session.result(pending[0][1], "limit_exceeded", rows)
            before = data[flushed:pos] if pieces is None else b"".join(pieces) + data[flushed:pos]
            if before:
                self.recorder.forward(self.transport, before, self)
            self._close_after_forwarding("54000", f"wardgate: the result exceeds the {rows} rows rule {rule} "
                                                  "allows; the rest is withheld and the session is closed")
            return
        except wire.ProtocolViolation as exc:
            self.fatal(exc.sqlstate, f"wardgate: {exc}; the session is closed")
            return
        except Exception:
            self._backend_failed()
            return
        if pos < size:
            tail = data[pos:]
            self._backend_tail = [tail]
            self._backend_tail_size = len(tail)
            if held:
                self._backend_need = 0
            else:
                self._backend_need = 1 + int.from_bytes(tail[1:5], "big") if len(tail) >= 5 else 5
        if pieces is None:
            outgoing = data[:pos] if pos < size else data
        else:
            pieces.append(data[flushed:pos])
            outgoing = b"".join(pieces)
        if outgoing:
            # Results reach the client only after the events describing them are written.
            self.recorder.forward(self.transport, outgoing, self)
        if pos == size and not held and not pending and size:
            self._ready = data[-1]
            if self._draining:
                self._close_if_idle()

    # --- draining (the gateway is stopping) -----------------------------------------------------
    def drain(self) -> None:
        """Close this session as soon as nothing runs and no transaction is open (at once if that is
        now), so that stopping the gateway cuts no statement and rolls back no transaction."""
        self._draining = True
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self._closed or (self.transport is not None and self.transport.is_closing()):
            return
        if self.session is None or self.backend is None:
            # Not relaying yet: nothing runs and no transaction can be open.
            self.fatal("57P01", "wardgate is shutting down: connect again")
        elif self._ready == _IDLE and not self._pending and not self._holding and not self._client_tail:
            self._close_after_forwarding("57P01", "wardgate is shutting down: connect again (no statement was "
                                                  "running and no transaction was open)")

    async def _resolve_then_resume(self, need: "_NeedCatalog") -> None:
        try:
            if need.relation is not None:
                await self.catalog.load_relation(need.relation)
            await self.catalog.load(need.oids)
        except Exception as exc:  # fail closed: rows we cannot classify are not shown
            log.warning("catalog lookup for masking failed: %s", exc)
            self.fatal("XX000", "wardgate: cannot resolve result columns for masking; the session is closed")
            return
        if self._closed:
            return
        self._release_backend_reads("catalog")
        self._from_backend(b"")

    # --- masking ----------------------------------------------------------------------------------
    @property
    def catalog(self) -> CatalogResolver:
        # One resolver per resource for the gateway's life: looked up once per session.
        resolver = self._catalog
        if resolver is None:
            resolver = self._catalog = self.frontend.catalog(self.session.resource)
        return resolver

    def _start_masker(self, head: tuple, fields: list) -> None:
        """Build the masker for the result that starts now (raises _NeedCatalog first if needed)."""
        catalog = self._catalog or self.catalog
        profile = head[4]
        tables = self._tables.get(head[1], ())
        unmasked = self._unmasked_shape
        if (unmasked is not None and unmasked[0] is fields and unmasked[1] is profile and unmasked[2] is tables
                and unmasked[3] is catalog and unmasked[4] == catalog.generation and time.monotonic() < unmasked[5]):
            # The result shape of the last result that had nothing to mask, under the same profile,
            # tables and catalog names, none of them due for reloading yet: nothing to mask again.
            self._masker = None
            self._masker_head = head
            return
        missing = catalog.missing(f.table_oid for f in fields)
        if missing:
            raise _NeedCatalog(missing)
        self._masker = ResultMasker.build(fields, profile, catalog.column, tables, self.frontend.masking_key,
                                          self._mask_report, catalog.generation)
        self._masker_head = head
        if self._masker is None:
            self._unmasked_shape = (fields, profile, tables, catalog, catalog.generation,
                                    catalog.fresh_until(f.table_oid for f in fields))

    def _scan_result_start(self, head: tuple, data: bytes, start: int, end: int) -> bool | None:
        """For the compiled scan, where a masked result begins (see ``_relay_fast``): the RowDescription
        of a masked simple query or answering a masked Describe, or the first row of a masked Execute.
        Does what the Python loop does there; None (nothing changed) leaves the message to the loop:
        columns to look up first, rows without a known layout."""
        try:
            if data[start - 5] == 84:  # RowDescription
                fields = parse_row_description(data[start:end])
                if head[0] == _Q:
                    self._start_masker(head, fields)
                    return self._masker is None
                if head[0] == _D:
                    self._remember_layout(head, fields)
                    return True
                return None
            if head[0] != _E:
                return None
            if self._masker_head is head:
                return False  # its masker is built: it takes the rows
            entry = self._portals.get(head[5])
            if entry is None or entry[2] is None:
                return None  # the Python loop refuses rows it cannot mask by column
            self._start_masker(head, entry[2])
            return self._masker is None
        except _NeedCatalog:
            return None

    def _mask_datarow(self, head: tuple, data: bytes, start: int, end: int) -> bytes | None:
        if self._masker_head is not head:
            layout = None
            if head[0] == _E:
                entry = self._portals.get(head[5])
                layout = entry[2] if entry is not None else None
            if layout is None:
                # Rows whose columns we do not know cannot be shown masked: fail closed.
                raise wire.ProtocolViolation("rows of a masked result arrived without a known layout", "XX000")
            self._start_masker(head, layout)
        masker = self._masker
        if masker is None:
            return None
        payload = data[start:end]
        masked = masker.mask_row(payload)
        return None if masked is payload else wire.message(b"D", masked)

    def _mask_copy(self, head: tuple, data: bytes, start: int, end: int) -> bytes | None:
        masker = self._masker if self._masker_head is head else None
        if masker is None:
            return None
        line = data[start:end]
        masked = masker.mask_copy_line(line, self._copy_csv)
        return None if masked is line else wire.message(b"d", masked)

    def _finish_masking(self, event: str | None) -> None:
        if self._masker is not None:
            self._masker.finish()
        if self._mask_report:
            self.session.note("command.masked", command=event, maskings=self._mask_report.entries(),
                              controls=["SC-28", "AC-3", "SI-19"])
            self._mask_report = MaskReport()
        self._masker = None
        self._masker_head = None

    def _copy_out_started(self, head: tuple, payload: bytes) -> None:
        if payload[0] != 0:
            raise wire.ProtocolViolation("binary COPY of a masked result cannot be masked; use text or CSV",
                                         "0A000")
        columns = int.from_bytes(payload[1:3], "big")
        text = head[5] if head[0] == _Q else None
        target = copy_target(text) if text else None
        if target is not None:
            relation, attnames = target
            oid = self.catalog.oid_of(relation)
            if oid is None:
                raise _NeedCatalog(set(), relation)
            names = self.catalog.attribute_names(oid)
            order = attnames or [name for _, name in sorted(names.items())]
            by_name = {name: num for num, name in names.items()}
            fields = [Field(name, oid, by_name.get(name, 0), 25, 0) for name in order]
        else:
            fields = [Field("?column?", 0, 0, 25, 0) for _ in range(columns)]
        self._copy_csv = bool(text and _COPY_CSV.search(text))
        self._start_masker(head, fields)

    def _backend_message(self, kind: int, data: bytes, start: int, end: int) -> bytes | None:
        pending = self._pending
        head = pending[0] if pending else None
        if kind == 67:  # CommandComplete
            if head is not None and (head[0] == _Q or head[0] == _E):
                tag = data[start:end - 1].decode("ascii", "replace")
                rows = tag.rpartition(" ")[2]  # wire.command_tag_rows, inlined
                rows = int(rows) if rows.isdigit() else None
                if head[0] == _E and self._rows and (rows is None or rows < self._rows):
                    rows = self._rows  # defensive: never report fewer rows than were sent
                self._rows = 0
                if head[4] is not None:
                    self._finish_masking(head[1])
                self.session.result(head[1], "ok", rows, tag, None, time.perf_counter() - head[2])
                if head[0] == _E:
                    pending.popleft()
            return None
        if kind == 90:  # ReadyForQuery
            if head is not None and (head[0] == _S or head[0] == _Q):
                pending.popleft()
                if head[0] == _Q:
                    self._tables.pop(head[1], None)
                    self._limits.pop(head[1], None)
            return None
        if kind == 84:  # RowDescription
            if head is None:
                return None
            if head[0] == _Q:
                if head[4] is not None:
                    self._start_masker(head, parse_row_description(data[start:end]))
                return None
            if head[0] == _D or head[0] == _INJECTED_DESCRIBE:
                if head[4] is not None:
                    self._remember_layout(head, parse_row_description(data[start:end]))
                pending.popleft()
                return b"" if head[0] == _INJECTED_DESCRIBE else None
            return None
        if kind == 69:  # ErrorResponse
            return self._backend_error(head, data[start:end])
        if kind == 100:  # CopyData
            if head is not None and head[4] is not None:
                return self._mask_copy(head, data, start, end)
            return None
        if kind == 49 or kind == 50 or kind == 51:  # ParseComplete, BindComplete, CloseComplete
            if head is not None and head[0] in _EXTENDED:
                pending.popleft()
            return None
        if kind == 110:  # NoData
            if head is not None and (head[0] == _D or head[0] == _INJECTED_DESCRIBE):
                pending.popleft()
                if head[0] == _INJECTED_DESCRIBE:
                    self._remember_layout(head, [])
                    return b""
            return None
        if kind == 72:  # CopyOutResponse
            if head is not None and head[4] is not None:
                self._copy_out_started(head, data[start:end])
            return None
        if kind == 78:  # NoticeResponse
            if head is not None and head[4] is not None:
                return self._mask_notice(b"N", head, data[start:end])
            return None
        if kind == 115 or kind == 73:  # PortalSuspended, EmptyQueryResponse
            if head is not None and (head[0] == _E or (kind == 73 and head[0] == _Q)):
                if head[0] == _E:
                    pending.popleft()
                if head[4] is not None:
                    self._finish_masking(head[1])
                self.session.result(head[1], status="suspended" if kind == 115 else "empty",
                                    rows=self._rows if kind == 115 else 0,
                                    seconds=time.perf_counter() - head[2])
                self._rows = 0
            return None
        return None

    def _remember_layout(self, head: tuple, fields: list) -> None:
        if head[0] == _INJECTED_DESCRIBE:
            entry = self._portals.get(head[5])
            if entry is not None:
                self._portals[head[5]] = (entry[0], entry[1], fields)
            return
        target, name = head[5]
        if target == b"S":
            self._statement_layouts[name] = fields  # formats come with each Bind
        else:
            entry = self._portals.get(name)
            if entry is not None:
                self._portals[name] = (entry[0], entry[1], fields)

    def _mask_notice(self, kind: bytes, head: tuple, payload: bytes) -> bytes | None:
        """Detail and hint of notices and errors can quote values: the same detectors apply."""
        profile = head[4]
        if not profile.detectors:
            return None
        fields = wire.parse_error_fields(payload)
        changed = False
        for code in ("D", "H", "M"):
            value = fields.get(code)
            if value:
                masked = mask_text(value, MaskStrategy.redact(), detectors=profile.detectors,
                                   report=self._mask_report,
                                   column=f"{'notice' if kind == b'N' else 'error'}.{code}")
                if masked is not value:
                    fields[code] = masked if masked is not None else "[REDACTED]"
                    changed = True
        if not changed:
            return None
        body = b"".join(code.encode() + wire.cstr(value) for code, value in fields.items()) + b"\x00"
        return wire.message(kind, body)

    def _backend_error(self, head: tuple | None, payload: bytes) -> bytes | None:
        pending = self._pending
        if head is None:
            return None  # e.g. an administrator terminated the backend: pass it on as it is
        kind, event, started, refusal, profile, _ = head
        replacement = None
        self._rows = 0
        if profile is not None:
            replacement = self._mask_notice(b"E", head, payload)
            self._finish_masking(event)
        if refusal is not None:
            self.session.result(event, status="refused", error={"code": "42501", "message": refusal.message},
                                seconds=time.perf_counter() - started)
            replacement = wire.error_response("42501", _refusal_text(refusal), detail=f"rule: {refusal.rule}",
                                              hint=f"wardgate session {self.session.id}")
        else:
            fields = wire.parse_error_fields(payload)
            self.session.result(event, status="error",
                                error={"code": fields.get("C", ""), "message": fields.get("M", "")},
                                seconds=time.perf_counter() - started)
        if kind in _EXTENDED:
            # The backend now skips everything up to Sync: so do our expectations.
            while pending and pending[0][0] != _S:
                skipped = pending.popleft()
                if skipped is not head and skipped[0] in (_P, _E) and skipped[1] is not None:
                    self._skip(skipped[1])
            if not pending:
                self._discard_until_sync = True
        return replacement

    # --- the recorder's callbacks (see Recorder.forward) ------------------------------------------
    def audit_failed(self, message: str) -> None:
        # Nothing runs or is shown unrecorded: what waited for these events is dropped.
        self.fatal("58030", f"wardgate: {message}; the session is closed and nothing more was forwarded")

    def audit_hold(self) -> None:
        self._hold_client_reads("audit-fsync")
        self._hold_backend_reads("audit-fsync")

    def audit_release(self) -> None:
        self._release_client_reads("audit-fsync")
        self._release_backend_reads("audit-fsync")

    # --- flow control, holds, shutdown ----------------------------------------------------------

    def _hold_client_reads(self, reason: str) -> None:
        if not self._read_holds and self.transport is not None:
            self.transport.pause_reading()
        self._read_holds.add(reason)

    def _release_client_reads(self, reason: str) -> None:
        self._read_holds.discard(reason)
        if not self._read_holds and self.transport is not None and not self._closed:
            self.transport.resume_reading()

    def _hold_backend_reads(self, reason: str) -> None:
        if self.backend is None or self.backend.transport is None:
            return
        if not self._backend_read_holds:
            self.backend.transport.pause_reading()
        self._backend_read_holds.add(reason)

    def _release_backend_reads(self, reason: str) -> None:
        if self.backend is None or self.backend.transport is None:
            return
        self._backend_read_holds.discard(reason)
        if not self._backend_read_holds and not self.backend.transport.is_closing():
            self.backend.transport.resume_reading()

    def _backend_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        if self._closing_by_client:
            self._close()
            return
        if self.session is not None:
            self.session.note("session.backend_lost", error=str(exc) if exc else None, controls=["AU-2", "IR-4"])
        self.fatal("08006", "wardgate: the backend closed the connection")

    def _close_after_forwarding(self, sqlstate: str, text: str) -> None:
        """Like :meth:`fatal`, but the error queues behind what is already being forwarded."""
        self.session.note("session.aborted", code=sqlstate, message=text, controls=["AU-2", "IR-4"])
        if self.backend is not None:
            self.backend.on_data = _drop
            self.backend.on_lost = None
            if self.backend.transport is not None:
                self.backend.transport.close()
        self.recorder.forward(self.transport, wire.error_response(sqlstate, text, severity="FATAL"), self)
        self.loop.call_soon(self._close_when_forwarded)  # after the recorder's flush, scheduled earlier

    def _close_when_forwarded(self) -> None:
        # With fsync "always", the flush may still wait for its fsync: close only once the error is out.
        if self.recorder.forwarding_for(self) and not self._closed:
            self.loop.call_later(0.005, self._close_when_forwarded)
            return
        self._close()

    def fatal(self, sqlstate: str, text: str) -> None:
        """Tell the client why, in its own protocol, and close both sides. A connection already being
        closed is left alone: whoever closed it recorded why (a drained session's TLS close, for one,
        waits for the client's close_notify)."""
        if self._closed or (self.transport is not None and self.transport.is_closing()):
            return
        if self.session is not None:
            self.session.note("session.aborted", code=sqlstate, message=text, controls=["AU-2", "IR-4"])
        if self.transport is not None:
            self.transport.write(wire.error_response(sqlstate, text, severity="FATAL"))
        self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _HoldCommand(Exception):
    """Raised by message handling when a command must wait for an approval."""

    def __init__(self, decision: Decision, event: str, text: str, params: tuple):
        self.decision, self.event, self.text, self.params = decision, event, text, params


# A held prepared statement is parsed (which runs nothing) and decided again at Execute.
_PARSE_ONLY = Decision(Verdict.ALLOW, "builtin:parse-before-approval")


def _hashed_parameters(params) -> tuple:
    """Bind parameters as approvals hash them: each value prefixed by its wire format code (text and
    binary bytes never collide); NULL stays None."""
    return tuple(None if v is None else bytes([48 + code]) + v for code, v in params)


def _refusal_text(decision: Decision) -> str:
    return f"wardgate: {decision.message or 'statement refused by policy'}"


def _consume_exception(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


async def serve_postgres(frontend: PostgresFrontend, host: str, port: int) -> asyncio.base_events.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(frontend, host, port, reuse_address=True)


async def adopt_connection(frontend: PostgresFrontend, client: socket.socket) -> None:
    """Serve a client socket accepted elsewhere (a supervised gateway's supervisor accepts, a worker
    serves)."""
    try:
        await asyncio.get_running_loop().connect_accepted_socket(frontend, client)
    except OSError as exc:  # the client left between accept and hand-over
        log.info("connection handed over by the supervisor is gone: %s", exc)
        client.close()
