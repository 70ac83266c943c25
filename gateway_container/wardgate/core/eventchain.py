"""The per-session hash chain of audit events and the buffer of events not yet written.

This is the Python reference (and fallback) of the compiled ``wardgate.core._eventchain_fast``: both
must produce the same bytes, or every chain the verifier recomputes breaks
(``tests/unit/test_eventchain_fast.py`` compares them). :mod:`wardgate.core.audit` picks one.

An event line is ``{"id":"<session>-<seq, 6 digits>","time":"<UTC, µs>Z","type":"<type>","seq":<seq>,
<the event's own members>,<the session's fixed members>,"prev_hash":"<hex SHA-256 of the previous
line>"}`` and a newline; the first event of a session has 64 zeros as ``prev_hash``.

Why two methods for single event types: ``command.decided`` and ``command.result`` are written for
every statement, and building their members here (rather than a dict for ``orjson`` in the caller)
is most of what the compiled version saves.
"""

from __future__ import annotations

import hashlib
import time

import orjson

from wardgate.core.integrity import GENESIS_HASH

_dumps = orjson.dumps
_sha256 = hashlib.sha256
_strftime = time.strftime
_gmtime = time.gmtime
# id, session and type are our own ASCII tokens: formatted directly, only members need JSON.
_LINE = b'{"id":"%b-%06d","time":"%b.%06dZ","type":"%b","seq":%d%b%b%b,"prev_hash":"%b"}\n'
# command.result members, in the order they always had (controls: AU-3, AU-12).
_RESULT = b'"command":%b,"status":%b,"rows":%b,"tag":%b,"error":%b,"duration_us":%b,"controls":["AU-3","AU-12"]'
_second_cache: list = [-1, b""]  # (second, its date and time as ASCII bytes)
_clock = time.time


def set_test_clock(now: float | None) -> None:
    """Make every event read ``now`` as its time (None: the system clock again). Tests only: the
    differential test needs both implementations to see the same times."""
    global _clock
    _clock = time.time if now is None else (lambda: now)


class PendingEvents:
    """Event lines appended and not yet written (in order), the chains they belong to (each once),
    and whether an event's time is earlier than the one appended before it (``unordered``: the
    segment summary must then scan the written bytes for its time range)."""

    __slots__ = ("lines", "chains", "last_time", "unordered")

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.chains: list = []
        self.last_time = 0.0
        self.unordered = False

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def count(self) -> int:
        return len(self.lines)

    def data(self) -> bytes:
        """Every unwritten line, in order."""
        lines = self.lines
        return lines[0] if len(lines) == 1 else b"".join(lines)

    def account(self, sessions: dict[str, list]) -> None:
        """Fold the chains of the unwritten lines (just written) into a segment's ``sessions``
        (session id → [first seq, last seq, hash of the last line, ended]) and reset their
        ``unwritten``. Called once per write, so sealing never has to parse the segment."""
        for chain in self.chains:
            seq = chain.seq
            entry = sessions.get(chain.session_id)
            if entry is None:
                sessions[chain.session_id] = entry = [seq - chain.unwritten + 1, seq, chain.prev_hash, False]
            else:
                entry[1] = seq
                entry[2] = chain.prev_hash
            if chain.ended_seq is not None and chain.ended_seq >= entry[0]:
                entry[3] = True
            chain.unwritten = 0

    def clear(self) -> None:
        """Forget the unwritten lines (they were written); ``last_time`` stays."""
        self.lines.clear()
        self.chains.clear()
        self.unordered = False


class EventChain:
    """One session's events. ``unwritten`` counts its events in ``pending`` (the segment summary
    resets it when they are written); ``ended_seq`` is the ``seq`` of its ``session.ended``."""

    __slots__ = ("pending", "session_id", "_sid", "seq", "_prev_hash", "fixed", "unwritten", "ended_seq")

    def __init__(self, pending: PendingEvents, session_id: str):
        self.pending = pending
        self.session_id = session_id
        self._sid = session_id.encode()
        self.seq = 0
        self._prev_hash = GENESIS_HASH.encode()
        self.fixed = b""  # ``,"member":value...`` repeated by every event of the session
        self.unwritten = 0
        self.ended_seq: int | None = None

    @property
    def prev_hash(self) -> bytes:
        """Hex SHA-256 (ASCII bytes) of the last line: the next event's ``prev_hash``."""
        return self._prev_hash

    @prev_hash.setter
    def prev_hash(self, value: bytes) -> None:
        if len(value) != 64:
            raise ValueError("prev_hash must be 64 hex characters")
        self._prev_hash = bytes(value)

    def append_event(self, event_type: str, members: bytes) -> str:
        """Append one event whose own members are given serialized (JSON object members without the
        braces, or ``b""``); return its id."""
        pending = self.pending
        self.seq = seq = self.seq + 1
        now = _clock()
        if now < pending.last_time:
            pending.unordered = True
        pending.last_time = now
        second = int(now)
        cache = _second_cache
        if cache[0] != second:  # the date and time text is formatted once per second
            cache[0], cache[1] = second, _strftime("%Y-%m-%dT%H:%M:%S", _gmtime(second)).encode()
        line = _LINE % (self._sid, seq, cache[1], int((now - second) * 1_000_000), event_type.encode(), seq,
                        b"," if members else b"", members, self.fixed, self._prev_hash)
        self._prev_hash = _sha256(line).hexdigest().encode()
        pending.lines.append(line)
        if not self.unwritten:
            pending.chains.append(self)
        self.unwritten += 1
        if event_type == "session.ended":
            self.ended_seq = seq
        return f"{self.session_id}-{seq:06d}"

    def decided(self, kind: str, statement: str, statement_name: str | None, fingerprint: str | None,
                decision_members: bytes) -> str:
        """Append a ``command.decided`` event: the command's own members, then ``decision_members``
        (what the decision says, serialized once per decision by the caller). Returns its id."""
        return self.append_event("command.decided", b"%b,%b" % (_dumps({
            "kind": kind, "statement": statement, "statement_name": statement_name, "fingerprint": fingerprint,
        })[1:-1], decision_members))

    def result(self, command: str | None, status: str, rows: int | None, tag: str | None,
               error_json: bytes | None, seconds: float | None) -> None:
        """Append a ``command.result`` event for the command event ``command``."""
        self.append_event("command.result", _RESULT % (
            _dumps(command), _dumps(status), b"null" if rows is None else b"%d" % rows, _dumps(tag),
            b"null" if error_json is None else error_json,
            b"null" if seconds is None else b"%d" % int(seconds * 1_000_000)))
