"""``wardgate audit verify``: prove that an audit trail is complete and unaltered.

What is checked (see ``core/integrity.py`` for the format):

- every digest's signature, with the public keys in ``keys/`` (or only ``--trusted-key``);
- every sealed segment's SHA-256 against its digest; segments without a digest; digests without
  their segment; the chain of digests (each names the previous one and its SHA-256);
- inside each session, across segments in the order their gateway wrote them: ``seq`` continuity,
  the ``prev_hash`` chain, order, and that a session whose gateway has finished writing ended.

A segment that is still writable and has no digest is the one a running gateway is appending to: a
warning, not a failure. Its events are still checked against the session chains.

``--since`` / ``--until`` restrict the check to segments whose time range overlaps the window; sessions
that continue into excluded segments are anchored by those segments' (signed) digests.

Truncation rule: a session without ``session.ended`` is reported truncated when its gateway has
finished writing (no unsealed segment of that gateway) — also when later segments of that gateway exist
(a gateway that stops normally ends every session first) — unless the window excludes later segments of
that gateway.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import orjson

from wardgate.core.integrity import (DIGEST_SUFFIX, GENESIS_HASH, KEYS_DIRECTORY, public_key_id, gateway_of_segment,
                                     load_public_key, segment_name_of_digest, segment_number, verify_signature)

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    level: str  # "error" (verification fails) or "warning"
    kind: str  # modified_event, deleted_event, reordered_events, deleted_segment, missing_digest, ...
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level, "kind": self.kind, "message": self.message}


@dataclass
class Report:
    segments: int = 0
    events: int = 0
    sessions: int = 0
    keys: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    _seen: set = field(default_factory=set, repr=False)

    def add(self, level: str, kind: str, message: str) -> None:
        if message not in self._seen:  # one problem found by two checks is reported once
            self._seen.add(message)
            self.findings.append(Finding(level, kind, message))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        head = (f"verified {_count(self.segments, 'segment')}, {_count(self.events, 'event')}, "
                f"{_count(self.sessions, 'chain')} (sessions and gateway chains)")
        return f"{head}: OK" if self.ok else f"{head}: FAILED: {_count(len(self.errors), 'problem')}"

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "segments": self.segments, "events": self.events, "sessions": self.sessions,
                "keys": self.keys, "findings": [f.as_dict() for f in self.findings], "summary": self.summary()}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --- session chains -------------------------------------------------------------------------------

@dataclass
class _Event:
    session: str
    seq: int
    prev_hash: str
    hash: str
    type: str


@dataclass
class _Known:
    """Events of a session known only from a trusted digest (segment deleted or outside the window)."""
    session: str
    first_seq: int
    last_seq: int
    last_hash: str
    ended: bool


def _parse_line(line: bytes) -> _Event | None:
    try:
        event = orjson.loads(line)
        return _Event(str(event["session"]), int(event["seq"]), str(event.get("prev_hash", "")),
                      hashlib.sha256(line).hexdigest(), str(event.get("type", "")))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _check_session(session: str, items: list[_Event | _Known], report: Report, *, require_start: bool) -> bool:
    """Check one session's items (in the order written); return whether it ended."""
    seqs = [item.seq for item in items if isinstance(item, _Event)]
    if any(b < a for a, b in zip(seqs, seqs[1:])):
        report.add(ERROR, "reordered_events", f"events reordered in session {session}")
    ordered = sorted(items, key=lambda item: item.seq if isinstance(item, _Event) else item.first_seq)
    last_seq, last_hash = (0, GENESIS_HASH) if require_start else (None, None)
    ended = False
    for item in ordered:
        first = item.seq if isinstance(item, _Event) else item.first_seq
        if last_seq is not None:
            if first <= last_seq:
                if isinstance(item, _Event) and item.seq == last_seq and item.hash == last_hash:
                    report.add(ERROR, "duplicated_event", f"event {session}#{item.seq} duplicated")
                else:
                    report.add(ERROR, "duplicated_event", f"event {session}#{first} appears twice")
                continue
            if first > last_seq + 1:
                report.add(ERROR, "deleted_event",
                           f"deleted event(s) seq {last_seq + 1}..{first - 1} in session {session}")
            elif isinstance(item, _Event) and item.prev_hash != last_hash:
                which = last_seq if last_seq > 0 else 1
                report.add(ERROR, "modified_event", f"event {session}#{which} modified")
        if isinstance(item, _Event):
            last_seq, last_hash = item.seq, item.hash
            ended = ended or item.type == "session.ended"
        else:
            last_seq, last_hash = item.last_seq, item.last_hash
            ended = ended or item.ended
    return ended


def verify_events(events: Iterable[bytes | dict[str, Any]], *, require_start: bool = True) -> list[Finding]:
    """Check the session chains of events in the order written (lines as written, newline included;
    a dict is re-serialized with orjson, which reproduces the gateway's line). No completeness check:
    a session need not end. Returns the findings (empty when every chain holds)."""
    report = Report()
    sessions: dict[str, list[_Event | _Known]] = {}
    for number, item in enumerate(events, 1):
        line = item if isinstance(item, bytes) else orjson.dumps(item) + b"\n"
        event = _parse_line(line)
        if event is None:
            report.add(ERROR, "invalid_event", f"event {number} is not a valid event")
            continue
        sessions.setdefault(event.session, []).append(event)
    for session, items in sessions.items():
        _check_session(session, items, report, require_start=require_start)
    return report.findings


# --- the trail ------------------------------------------------------------------------------------

@dataclass
class _Segment:
    name: str
    gateway: str
    number: int
    path: Path | None  # None: deleted
    digest: dict[str, Any] | None = None  # trusted (signature verified) digest
    has_digest_file: bool = False
    digest_times: tuple[str | None, str | None] = (None, None)
    writable: bool = False
    lines: list[bytes] | None = None

    @property
    def unsealed(self) -> bool:
        return self.path is not None and self.writable and not self.has_digest_file


def _normalize_time(value: str | None, *, end: bool = False) -> str | None:
    """An ISO 8601 time (or date) as the events' format, for string comparison."""
    if value is None:
        return None
    text = value.strip()
    if len(text) == 10:  # a date: the whole day
        text += "T23:59:59.999999+00:00" if end else "T00:00:00+00:00"
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _load_keys(directory: Path, trusted_keys: list[bytes] | None, report: Report) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    if trusted_keys is not None:
        for pem in trusted_keys:
            key = load_public_key(pem)
            keys[public_key_id(key)] = key
        return keys
    for path in sorted((directory / KEYS_DIRECTORY).glob("*.pem")):
        try:
            key = load_public_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            report.add(ERROR, "bad_key", f"key file {KEYS_DIRECTORY}/{path.name} is not an Ed25519 or ECDSA P-256 public key: {exc}")
            continue
        if public_key_id(key) != path.stem:
            report.add(ERROR, "bad_key", f"key file {KEYS_DIRECTORY}/{path.name} does not match its id (replaced?)")
            continue
        keys[path.stem] = key
    return keys


def verify_trail(directory: Path, *, since: str | None = None, until: str | None = None,
                 trusted_keys: list[bytes] | None = None) -> Report:
    """Verify the audit trail in ``directory`` (a sink directory, or a copy of it)."""
    directory = Path(directory)
    report = Report()
    since_n, until_n = _normalize_time(since), _normalize_time(until, end=True)
    windowed = since_n is not None or until_n is not None

    def in_window(first: str | None, last: str | None) -> bool:
        if first is None or last is None:
            return True
        return not ((since_n is not None and last < since_n) or (until_n is not None and first > until_n))

    keys = _load_keys(directory, trusted_keys, report)
    report.keys = sorted(keys)

    # Digests: signatures first; only signed content is trusted below.
    segments: dict[str, _Segment] = {}

    def segment(name: str) -> _Segment:
        if name not in segments:
            segments[name] = _Segment(name, gateway_of_segment(name), segment_number(name), None)
        return segments[name]

    digest_files: dict[str, bytes] = {}
    digests: dict[str, dict[str, Any]] = {}  # trusted, by digest name
    forged: set[str] = set()
    for path in sorted(directory.glob("*" + DIGEST_SUFFIX)):
        name = path.name
        data = path.read_bytes()
        digest_files[name] = data
        seg = segment(segment_name_of_digest(name))
        seg.has_digest_file = True
        try:
            record = json.loads(data)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            forged.add(name)
            report.add(ERROR, "forged_digest", f"forged or altered digest {name} (not valid JSON)")
            continue
        seg.digest_times = (record.get("first_time"), record.get("last_time"))
        key_id = str(record.get("key_id"))
        key = keys.get(key_id)
        if key is None:
            forged.add(name)
            if in_window(*seg.digest_times):
                report.add(ERROR, "unknown_key", f"unknown key {key_id} for digest {name}")
            continue
        if not verify_signature(record, key):
            forged.add(name)
            if in_window(*seg.digest_times):
                report.add(ERROR, "forged_digest", f"forged or altered digest {name}")
            continue
        if record.get("segment") != seg.name:
            forged.add(name)
            report.add(ERROR, "forged_digest", f"digest {name} was renamed: it is the digest of {record.get('segment')}")
            continue
        digests[name] = record
        seg.digest = record

    for path in directory.glob("*.jsonl"):
        seg = segment(path.name)
        seg.path = path
        seg.writable = bool(os.stat(path).st_mode & 0o200)

    # Window membership.
    def segment_in_window(seg: _Segment) -> bool:
        if not windowed:
            return True
        if seg.digest is not None or (seg.path is None and seg.has_digest_file):
            return in_window(*seg.digest_times)
        if seg.path is None:
            return False
        lines = seg.lines = _read_lines(seg.path)
        times = [t for t in (_time_of(line) for line in lines) if t is not None]
        return in_window(min(times), max(times)) if times else True

    selected = {name: seg for name, seg in segments.items() if segment_in_window(seg)}

    # Digest chain.
    named_previous: set[str] = set()
    for name, record in digests.items():
        if segment_name_of_digest(name) not in selected:
            continue
        previous = record.get("previous_digest")
        if previous is None:
            continue  # a chain start (see core/integrity.py)
        named_previous.add(previous)
        if previous not in digest_files:
            prev_segment = segment_name_of_digest(previous)
            if prev_segment in segments and segments[prev_segment].path is not None:
                continue  # reported below as "digest missing for segment"
            report.add(ERROR, "broken_chain", f"digest chain broken: {name} names previous {previous} which is "
                                              f"missing (segment {prev_segment} and its digest deleted)")
        elif previous not in forged and hashlib.sha256(digest_files[previous]).hexdigest() != \
                record.get("previous_digest_sha256"):
            report.add(ERROR, "broken_chain", f"digest chain broken: {name} names previous {previous} whose "
                                              f"content differs")

    # Segments.
    for seg in selected.values():
        if seg.path is None:
            if seg.has_digest_file:
                lost = sorted((seg.digest or {}).get("sessions", {}))
                detail = f": events of session(s) {', '.join(lost)} lost" if lost else ""
                report.add(ERROR, "deleted_segment", f"segment {seg.name} deleted (its digest remains){detail}")
            continue
        report.segments += 1
        data = seg.path.read_bytes()
        if seg.digest is not None:
            if hashlib.sha256(data).hexdigest() != seg.digest.get("segment_sha256"):
                report.add(ERROR, "modified_segment", f"segment {seg.name} was modified after it was written")
        elif not seg.has_digest_file:
            if seg.writable and seg.name + DIGEST_SUFFIX not in named_previous:
                report.add(WARNING, "unsealed_segment", f"segment {seg.name} is not sealed yet (gateway running?)")
            else:
                report.add(ERROR, "missing_digest", f"digest missing for segment {seg.name}")
        if seg.lines is None:
            seg.lines = _read_lines(seg.path)

    # Session chains, per gateway in the order it wrote its segments.
    by_gateway: dict[str, list[_Segment]] = {}
    for seg in segments.values():
        by_gateway.setdefault(seg.gateway, []).append(seg)
    session_items: dict[str, list[_Event | _Known]] = {}
    session_gateway: dict[str, str] = {}
    session_last_number: dict[str, int] = {}
    uncertain_gateways: set[str] = set()
    live_gateways: set[str] = set()
    later_outside: dict[str, int] = {}  # gateway → lowest segment number after the window
    for gateway, segs in by_gateway.items():
        segs.sort(key=lambda s: (s.number, s.name))
        for seg in segs:
            if seg.unsealed:
                live_gateways.add(gateway)
            inside = seg.name in selected
            if inside and seg.path is not None:
                _collect(seg, session_items, session_gateway, session_last_number, report)
            elif seg.digest is not None:  # deleted, or outside the window: known from its signed digest
                for session, summary in seg.digest.get("sessions", {}).items():
                    session_items.setdefault(session, []).append(
                        _Known(session, int(summary["first_seq"]), int(summary["last_seq"]),
                               str(summary["last_hash"]), bool(summary["ended"])))
                if not inside:
                    later_outside[gateway] = seg.number
                else:
                    for session in seg.digest.get("sessions", {}):
                        session_gateway[session] = gateway
                        session_last_number[session] = max(session_last_number.get(session, 0), seg.number)
            elif not inside:
                uncertain_gateways.add(gateway)  # outside the window, unknown content
                later_outside[gateway] = seg.number
            if inside and seg.path is not None and seg.digest is not None:
                _compare_with_digest(seg, report)

    for session, items in session_items.items():
        if session not in session_gateway:
            continue  # seen only in digests outside the window
        if not any(isinstance(item, _Event) for item in items):
            continue  # all its events are in deleted segments: reported as such
        report.sessions += 1
        gateway = session_gateway[session]
        ended = _check_session(session, items, report,
                               require_start=not (windowed and gateway in uncertain_gateways))
        if ended or session.startswith("gateway-") or gateway in live_gateways:
            continue
        if later_outside.get(gateway, -1) > session_last_number.get(session, 0):
            continue  # continues after the window, maybe
        report.add(ERROR, "truncated_session", f"session {session} truncated: no session.ended")
    return report


def _read_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    end = data.find(b"\x00")
    return (data if end < 0 else data[:end]).splitlines(keepends=True)


def _time_of(line: bytes) -> str | None:
    try:
        return orjson.loads(line).get("time")
    except (orjson.JSONDecodeError, AttributeError):
        return None


def _collect(seg: _Segment, session_items: dict, session_gateway: dict, session_last_number: dict,
             report: Report) -> None:
    lines = seg.lines if seg.lines is not None else _read_lines(seg.path)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        event = _parse_line(line)
        if event is None:
            if seg.unsealed and number == len(lines) and not line.endswith(b"\n"):
                continue  # being written
            report.add(ERROR, "invalid_event", f"segment {seg.name} line {number} is not a valid event")
            continue
        report.events += 1
        session_items.setdefault(event.session, []).append(event)
        session_gateway[event.session] = seg.gateway
        session_last_number[event.session] = seg.number


def _compare_with_digest(seg: _Segment, report: Report) -> None:
    """For a modified segment: what its digest says each session held, against what is there now."""
    if hashlib.sha256(seg.path.read_bytes()).hexdigest() == seg.digest.get("segment_sha256"):
        return
    observed: dict[str, tuple[int, int, str]] = {}  # session → (min seq, max seq, hash of max seq line)
    for line in seg.lines or []:
        event = _parse_line(line)
        if event is None:
            continue
        low, high, high_hash = observed.get(event.session, (event.seq, event.seq - 1, ""))
        if event.seq > high:
            high, high_hash = event.seq, event.hash
        observed[event.session] = (min(low, event.seq), high, high_hash)
    for session, summary in seg.digest.get("sessions", {}).items():
        first, last, last_hash = int(summary["first_seq"]), int(summary["last_seq"]), summary["last_hash"]
        if session not in observed:
            report.add(ERROR, "deleted_event", f"deleted event(s) seq {first}..{last} in session {session}")
            continue
        low, high, high_hash = observed[session]
        if high < last:
            report.add(ERROR, "deleted_event", f"deleted event(s) seq {high + 1}..{last} in session {session}")
        elif high == last and high_hash != last_hash:
            report.add(ERROR, "modified_event", f"event {session}#{last} modified")
        if low > first:
            report.add(ERROR, "deleted_event", f"deleted event(s) seq {first}..{low - 1} in session {session}")


def format_report(report: Report) -> str:
    lines = [f"{f.level}: {f.message}" for f in report.findings]
    if report.keys:
        lines.append(f"signing keys: {', '.join(report.keys)}")
    lines.append(report.summary())
    return "\n".join(lines)
