"""``wardgate sessions`` and ``wardgate replay``: read recorded sessions back from an audit trail.

``sessions`` lists the client sessions of a trail (one line each, or ``--json``), filtered by subject,
resource, time window and decision. ``replay`` shows one session as it happened: a timeline relative
to its first event, with each statement, its decision and rule, its result and what was masked, each
approval (requested → decided: who, when, verdict, reason) and each access grant (applied, expired);
or, with ``--json``, the session's events exactly as recorded, in ``seq`` order. ``sessions --json``
gives each session's approvals and grants paired (:func:`approvals_of`, :func:`grants_of`).

The trail is read as ``audit verify`` reads it (same segment order, same handling of a torn last line);
a session whose hash chain does not hold is still shown, under a warning naming ``wardgate audit verify``.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from wardgate.audittool import _normalize_time, _read_lines, verify_events
from wardgate.core.integrity import DIGEST_SUFFIX, gateway_of_segment, segment_number
from wardgate.core.model import duration_text

STATEMENT_WIDTH = 100  # characters of a statement shown on one line (without --full)
MESSAGE_WIDTH = 160


class ReplayError(Exception):
    """A user error (unknown or ambiguous session, malformed time): exit 2."""


# --- reading the trail --------------------------------------------------------------------------------

@dataclass
class RecordedSession:
    id: str
    gateway: str
    lines: list[bytes] = field(default_factory=list)  # as written (for the hash chain)
    events: list[dict[str, Any]] = field(default_factory=list)  # as written
    live: bool = False  # its gateway still has an unsealed segment

    @property
    def ordered(self) -> list[dict[str, Any]]:
        return sorted(self.events, key=lambda e: e.get("seq", 0))

    @property
    def is_gateway_chain(self) -> bool:
        return self.id.startswith("gateway-")


def read_trail(directory: Path) -> dict[str, RecordedSession]:
    """Every session of the trail in ``directory``: its events in the order their gateway wrote them."""
    directory = Path(directory)
    segments = []
    live_gateways: set[str] = set()
    for path in directory.glob("*.jsonl"):
        gateway = gateway_of_segment(path.name)
        segments.append((gateway, segment_number(path.name), path.name, path))
        writable = bool(os.stat(path).st_mode & 0o200)
        if writable and not (directory / (path.name + DIGEST_SUFFIX)).exists():
            live_gateways.add(gateway)
    sessions: dict[str, RecordedSession] = {}
    for gateway, _, _, path in sorted(segments):
        for line in _read_lines(path):
            if not line.strip():
                continue
            try:
                event = orjson.loads(line)
                session_id = str(event["session"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line, or garbage: `audit verify` reports it
            session = sessions.get(session_id)
            if session is None:
                session = sessions[session_id] = RecordedSession(session_id, gateway)
            session.lines.append(line)
            session.events.append(event)
    for session in sessions.values():
        session.live = session.gateway in live_gateways
    return sessions


def resolve_session(sessions: dict[str, RecordedSession], wanted: str) -> RecordedSession:
    """The session named ``wanted``, or the only one whose id starts with it."""
    if wanted in sessions:
        return sessions[wanted]
    matches = sorted(s for s in sessions if s.startswith(wanted)) if wanted else []
    if not matches:
        raise ReplayError(f"no session {wanted!r} in this trail (list them with `wardgate sessions DIR`)")
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (f", … ({len(matches)} in all)" if len(matches) > 5 else "")
        raise ReplayError(f"session prefix {wanted!r} is ambiguous: {shown}")
    return sessions[matches[0]]


def chain_findings(session: RecordedSession) -> list[str]:
    """What is wrong with the session's hash chain (empty when it holds)."""
    return [finding.message for finding in verify_events(session.lines, require_start=True)]


# --- sessions -----------------------------------------------------------------------------------------

def summarize(session: RecordedSession) -> dict[str, Any]:
    events = session.ordered
    first = events[0] if events else {}
    by_type: dict[str, dict[str, Any]] = {}
    for event in events:
        by_type.setdefault(str(event.get("type")), event)
    started = by_type.get("session.started", {})
    principal = (by_type.get("session.authenticated") or {}).get("principal") or {}
    identity = next((e["identity"] for e in events if isinstance(e.get("identity"), dict)), None) or {}
    ended = by_type.get("session.ended")
    decided = [e for e in events if e.get("type") == "command.decided"]
    decisions = sorted({str(e.get("decision")) for e in decided})
    if session.is_gateway_chain:  # a gateway's own chain has no end: it spans the gateway's runs
        end = "gateway chain"
        commands = denied = duration = None
    elif ended is not None:
        end = str(ended.get("reason") or "ended")
        commands, denied, duration = ended.get("commands"), ended.get("denied"), ended.get("duration_s")
    else:
        end = "open" if session.live else "truncated"
        commands = len(decided)
        denied = sum(1 for e in decided if e.get("decision") != "allow")
        duration = _seconds_between(first.get("time"), events[-1].get("time")) if events else None
    return {
        "session": session.id,
        "start": first.get("time"),
        "last": events[-1].get("time") if events else None,
        "subject": principal.get("subject", identity.get("subject")),
        "issuer": principal.get("issuer", identity.get("issuer")),
        "resource": first.get("resource"),
        "protocol": first.get("protocol"),
        "gateway": first.get("gateway", session.gateway),
        "peer": started.get("peer"),
        "commands": commands,
        "denied": denied,
        "decisions": decisions,
        "duration_s": duration,
        "end": end,
        "events": len(events),
        "approvals": approvals_of(session),
        "grants": grants_of(session),
    }


def approvals_of(session: RecordedSession) -> list[dict[str, Any]]:
    """Each approval request of the session, paired with its outcome (``verdict`` None: undecided —
    still held, or the session was cut short). ``by`` are the approvers as ``subject (issuer)``."""
    statements: dict[str, str] = {}
    approvals: dict[str, dict[str, Any]] = {}

    def entry(event: dict[str, Any]) -> dict[str, Any]:
        return approvals.setdefault(str(event.get("request")), {
            "request": event.get("request"), "command": event.get("command"),
            "statement": statements.get(str(event.get("command"))), "rule": None, "approvers": None,
            "quorum": None, "scope": None, "requested_at": None, "verdict": None, "by": [], "reason": None,
            "decided_at": None, "recorded_at": None})

    for event in session.ordered:
        kind = event.get("type")
        if kind == "command.decided":
            statements[str(event.get("id"))] = str(event.get("statement") or "")
        elif kind == "approval.requested":
            entry(event).update(rule=event.get("rule"), approvers=event.get("approvers"),
                                quorum=event.get("quorum"), scope=event.get("scope"), requested_at=event.get("time"))
        elif kind == "approval.decided":
            # decided_at: when the store recorded the outcome; recorded_at: when the gateway saw it.
            entry(event).update(verdict=event.get("verdict"), by=[_who(b) for b in event.get("by") or []],
                                reason=event.get("reason"), decided_at=_epoch_or_none(event.get("at")),
                                recorded_at=event.get("time"))
    return list(approvals.values())


def grants_of(session: RecordedSession) -> list[dict[str, Any]]:
    """Each just-in-time access grant the session used: applied, and expired (None while live)."""
    grants: dict[str, dict[str, Any]] = {}
    for event in session.ordered:
        kind = event.get("type")
        if kind == "access.grant_applied":
            grants[str(event.get("grant"))] = {
                "grant": event.get("grant"), "role": event.get("role"), "applied_at": event.get("time"),
                "expires_at": _epoch_or_none(event.get("expires_at")),
                "approved_by": list(event.get("approved_by") or []), "expired_at": None}
        elif kind == "access.grant_expired":
            entry = grants.setdefault(str(event.get("grant")), {
                "grant": event.get("grant"), "role": event.get("role"), "applied_at": None, "expires_at": None,
                "approved_by": []})
            entry["expired_at"] = event.get("time")
    return list(grants.values())


def list_sessions(directory: Path, *, subject: str | None = None, resource: str | None = None,
                  since: str | None = None, until: str | None = None,
                  decision: str | None = None) -> list[dict[str, Any]]:
    """Client sessions (gateway-level chains skipped) matching every filter, by start time.

    ``since``/``until`` keep sessions active during the window (started at or before ``until``, last
    event at or after ``since``); ``subject``/``resource`` are shell globs (case-sensitive);
    ``decision`` keeps sessions with at least one statement so decided."""
    try:
        since_n, until_n = _normalize_time(since), _normalize_time(until, end=True)
    except ValueError as exc:
        raise ReplayError(f"malformed time: {exc}") from None
    rows = []
    for session in read_trail(directory).values():
        if session.is_gateway_chain or not session.events:
            continue
        row = summarize(session)
        if subject is not None and not fnmatch.fnmatchcase(str(row["subject"] or ""), subject):
            continue
        if resource is not None and not fnmatch.fnmatchcase(str(row["resource"] or ""), resource):
            continue
        if since_n is not None and (row["last"] or "") < since_n:
            continue
        if until_n is not None and (row["start"] or "") > until_n:
            continue
        if decision is not None and decision not in row["decisions"]:
            continue
        rows.append(row)
    rows.sort(key=lambda r: (r["start"] or "", r["session"]))
    return rows


def format_sessions(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no sessions"
    header = ("START", "SESSION", "SUBJECT", "RESOURCE", "PEER", "CMDS", "DENIED", "DURATION", "END", "ISSUER")
    table = [header]
    for r in rows:
        table.append((str(r["start"] or "-"), r["session"], str(r["subject"] or "-"), str(r["resource"] or "-"),
                      str(r["peer"] or "-"), str(r["commands"] if r["commands"] is not None else "-"),
                      str(r["denied"] if r["denied"] is not None else "-"), _duration(r["duration_s"]),
                      r["end"], str(r["issuer"] or "-")))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    right = {5, 6, 7}
    lines = []
    for row in table:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# --- replay -------------------------------------------------------------------------------------------

_LABEL = 16  # width of the event-kind column


def format_replay(session: RecordedSession, *, full: bool = False, warnings: list[str] | None = None,
                  location: str = "DIR") -> str:
    events = session.ordered
    summary = summarize(session)
    out: list[str] = []
    for message in warnings or []:
        out.append(f"WARNING: {message}")
    if warnings:
        out.append(f"         the trail may have been altered: run `wardgate audit verify {location}` for the whole trail")
    if session.is_gateway_chain:
        out.append(f"session {session.id}  the gateway's own chain (policy loads)  gateway {summary['gateway'] or '-'}")
    else:
        out.append(f"session {session.id}  resource {summary['resource'] or '-'} ({summary['protocol'] or '-'})  "
                   f"gateway {summary['gateway'] or '-'}")
    if summary["subject"] is not None:
        out.append(f"subject {summary['subject']} via {summary['issuer'] or '-'}")
    if session.is_gateway_chain:
        out.append(f"first event {summary['start']}, {len(events)} events")
    else:
        out.append(f"started {summary['start']}, {len(events)} events, {summary['commands']} commands, "
                   f"{summary['denied']} denied, {_duration(summary['duration_s'])}, end: {summary['end']}")
    if summary["approvals"]:
        outcomes = []
        for approval in summary["approvals"]:
            by = f" by {', '.join(approval['by'])}" if approval["by"] else ""
            outcomes.append(f"{approval['request']} {approval['verdict'] or 'undecided'}{by}")
        out.append(f"approvals: {'; '.join(outcomes)}")
    if summary["grants"]:
        out.append("access grants: " + ", ".join(f"{g['role']} ({g['grant']})" for g in summary["grants"]))
    out.append("")

    t0 = _parse_time(events[0].get("time")) if events else None
    numbers: dict[str, int] = {}  # decided event id → command number
    messages: dict[str, Any] = {}  # decided event id → its refusal message (not repeated in the result)
    requested: dict[str, dict[str, Any]] = {}  # approval request id → its approval.requested event
    pad = " " * (10 + _LABEL)

    def emit(event: dict[str, Any], label: str, text: str, more: list[str] = ()) -> None:
        when = _parse_time(event.get("time"))
        rel = f"+{(when - t0).total_seconds():.3f}s" if when is not None and t0 is not None else "?"
        out.append(f"{rel:>9} {label:<{_LABEL - 1}} {text}".rstrip())
        out.extend(pad + line for line in more)

    for event in events:
        kind = str(event.get("type"))
        if kind == "session.started":
            client = event.get("client") or {}
            text = (f"from {event.get('peer') or '-'}, TLS {'on' if event.get('tls') else 'off'}, "
                    f"user {client.get('claimed_user')!r}")
            if client.get("application_name"):
                text += f", application {client['application_name']!r}"
            more = [f"agent {_compact(client['agent'])}"] if client.get("agent") else []
            emit(event, "started", text, more)
        elif kind == "session.authenticated":
            p = event.get("principal") or {}
            more = [f"groups: {', '.join(p.get('groups') or []) or '-'}"]
            if p.get("claims"):
                more.append("claims: " + ", ".join(f"{k}={_scalar(v)}" for k, v in sorted(p["claims"].items())))
            tail = []
            if p.get("token_id"):
                tail.append(f"token {p['token_id']}")
            if event.get("expires_at") is not None:
                tail.append(f"expires {_epoch(event['expires_at'])}")
            if tail:
                more.append(", ".join(tail))
            emit(event, "authenticated", f"{p.get('subject')} via {p.get('issuer')}", more)
        elif kind == "session.authentication_failed":
            emit(event, "auth failed", f"{event.get('reason')}: {_clip(event.get('message'), MESSAGE_WIDTH)}")
        elif kind == "session.refused":
            emit(event, "refused", str(event.get("reason")))
        elif kind == "session.connected":
            emit(event, "connected", f"backend pid {event.get('backend_pid')}")
        elif kind == "session.backend_failed":
            emit(event, "backend failed", _clip(event.get("reason"), MESSAGE_WIDTH))
        elif kind == "session.credential_refreshed":
            emit(event, "credential", f"refreshed: {_clip(event.get('reason'), MESSAGE_WIDTH)}")
        elif kind == "command.decided":
            number = numbers[str(event.get("id"))] = len(numbers) + 1
            messages[str(event.get("id"))] = event.get("message")
            emit(event, f"[{number}] {event.get('kind') or 'command'}", *_statement(event, full))
        elif kind == "command.result":
            label = f"[{numbers.get(str(event.get('command')), '?')}] result"
            emit(event, label, _result(event, messages.get(str(event.get("command")))))
        elif kind == "command.masked":
            label = f"[{numbers.get(str(event.get('command')), '?')}] masked"
            items = event.get("maskings") or []
            text = ", ".join(f"{m.get('column')} ({m.get('detector') or 'column'}) x{m.get('count')}"
                             for m in items) or "nothing"
            emit(event, label, text)
        elif kind in ("session.aborted", "session.backend_lost"):
            detail = " ".join(str(x) for x in (event.get("code"), event.get("message") or event.get("error")) if x)
            emit(event, kind.split(".", 1)[1].replace("_", " "), _clip(detail or "-", MESSAGE_WIDTH))
        elif kind == "session.ended":
            if event.get("recovered"):
                emit(event, "ended", f"recovered after a crash: {_clip(event.get('reason'), MESSAGE_WIDTH)}")
            else:
                emit(event, "ended", f"{event.get('reason')}; {event.get('commands')} commands, "
                                     f"{event.get('denied')} denied, {_duration(event.get('duration_s'))}")
        elif kind == "approval.requested":
            requested[str(event.get("request"))] = event
            label = f"[{numbers.get(str(event.get('command')), '?')}] held"
            emit(event, label, _approval_requested(event))
        elif kind == "approval.decided":
            label = f"[{numbers.get(str(event.get('command')), '?')}] {event.get('verdict')}"
            emit(event, label, _approval_decided(event, requested.get(str(event.get("request")))))
        elif kind == "approval.failed":
            label = f"[{numbers.get(str(event.get('command')), '?')}] not held"
            emit(event, label, f"the approval request could not be stored, refused: "
                               f"{_clip(event.get('error'), MESSAGE_WIDTH)}")
        elif kind == "approval.store_unavailable":
            emit(event, "approval store", f"request {event.get('request')}: unavailable: "
                                          f"{_clip(event.get('error'), MESSAGE_WIDTH)}")
        elif kind == "access.grant_applied":
            approvers = ", ".join(map(str, event.get("approved_by") or [])) or "-"
            emit(event, "grant applied", f"role {event.get('role')} until {_epoch(event.get('expires_at'))} "
                                         f"(grant {event.get('grant')}), approved by {approvers}")
        elif kind == "access.grant_expired":
            emit(event, "grant expired", f"role {event.get('role')} no longer applies (grant {event.get('grant')})")
        elif kind == "access.grants_unavailable":
            emit(event, "grants error", f"granted roles lapse: {_clip(event.get('error'), MESSAGE_WIDTH)}")
        elif kind == "policy.loaded":
            emit(event, "policy loaded", f"{event.get('policy')} from {event.get('source')}")
        elif kind == "policy.load_failed":
            problems = str(event.get("error") or "").splitlines()
            emit(event, "policy refused", f"{event.get('source')}: still running {event.get('running_policy')}",
                 [line.strip() for line in problems[1:] or problems])
        else:  # anything newer than this reader: its own fields, compactly
            emit(event, kind, _clip(_compact(_own_fields(event)), MESSAGE_WIDTH))
    if summary["end"] in ("open", "truncated"):
        out.append("")
        out.append("(no session.ended: " + ("the session is still open)" if summary["end"] == "open" else
                                             "the session was cut short: truncated)"))
    return "\n".join(out)


def _statement(event: dict[str, Any], full: bool) -> tuple[str, list[str]]:
    statement = str(event.get("statement") or "")
    if full:
        lines = statement.splitlines() or [""]
        text, more = lines[0], list(lines[1:])
    else:
        text, more = _clip(" ".join(statement.split()), STATEMENT_WIDTH), []
    if event.get("statement_name"):
        text += f"   (prepared {event['statement_name']!r})"
    decision = str(event.get("decision"))
    verdict = decision if decision == "allow" else decision.upper()
    line = f"{verdict} by rule {event.get('rule')}"
    if event.get("message") and (decision != "allow" or full):
        line += f": {_clip(event['message'], MESSAGE_WIDTH) if not full else event['message']}"
    more.append(line)
    facts = []
    if event.get("classes"):
        facts.append("classes " + ", ".join(map(str, event["classes"])))
    if event.get("tables"):
        facts.append("tables " + ", ".join(map(str, event["tables"])))
    if event.get("roles"):
        facts.append("roles " + ", ".join(map(str, event["roles"])))
    if event.get("mask"):
        facts.append(f"mask {event['mask']}")
    if facts:
        more.append("; ".join(facts))
    return text, more


def _result(event: dict[str, Any], decision_message: Any = None) -> str:
    parts = [str(event.get("status"))]
    if event.get("tag"):
        parts.append(str(event["tag"]))
    rows = event.get("rows")
    if rows is not None:
        parts.append(f"{rows} row" + ("" if rows == 1 else "s"))
    if event.get("duration_us") is not None:
        parts.append(f"{event['duration_us'] / 1000:.3f} ms")
    error = event.get("error")
    if isinstance(error, dict) and decision_message and error.get("message") == decision_message:
        parts.append(f"error {error.get('code')} (the refusal above)")
    elif isinstance(error, dict):
        parts.append(f"error {error.get('code')}: {_clip(error.get('message'), MESSAGE_WIDTH)}")
    elif error:
        parts.append(f"error: {_clip(error, MESSAGE_WIDTH)}")
    return "  ".join(parts)


def _approval_requested(event: dict[str, Any]) -> str:
    approvers = ", ".join(map(str, event.get("approvers") or [])) or "-"
    quorum = event.get("quorum") or 1
    who = f"{approvers}" if quorum == 1 else f"{quorum} of {approvers}"
    return (f"for approval: request {event.get('request')}, rule {event.get('rule')}; needs {who}, "
            f"scope {event.get('scope')}, deadline {_whole_duration(event.get('deadline_s'))}")


def _approval_decided(event: dict[str, Any], requested: dict[str, Any] | None) -> str:
    verdict = event.get("verdict")
    decided_at = _epoch_or_none(event.get("at"))
    waited = ""
    if requested is not None:
        seconds = _seconds_between(requested.get("time"), decided_at or event.get("time"))
        if seconds is not None:
            waited = f", {_duration(max(0.0, seconds))} after the request"
    if verdict in ("approved", "denied"):
        who = ", ".join(_who(b) for b in event.get("by") or []) or "unknown"
        text = f"by {who} at {decided_at or '-'}{waited}"
    elif verdict == "expired":
        text = f"no decision by the deadline ({decided_at or '-'}): refused"
    else:  # withdrawn, or anything newer
        text = f"at {decided_at or '-'}{waited}"
    reason = event.get("reason")
    return f"{text}; reason: {_clip(reason, MESSAGE_WIDTH)}" if reason else text


def _whole_duration(seconds: Any) -> str:
    """A policy duration as written in policies (``15m``, ``2h``, ``90s``)."""
    try:
        return duration_text(float(seconds))
    except (TypeError, ValueError):
        return "-"


def _who(identity: Any) -> str:
    """An approver as ``subject (issuer)`` (or its display name); strings are shown as recorded."""
    if isinstance(identity, dict):
        name = identity.get("display") or identity.get("subject") or "?"
        return f"{name} ({identity['issuer']})" if identity.get("issuer") else str(name)
    return str(identity)


_COMMON = {"v", "id", "time", "type", "session", "seq", "gateway", "protocol", "resource", "identity",
           "prev_hash", "controls"}


def _own_fields(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in _COMMON}


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else _compact(value)


def _clip(value: Any, width: int) -> str:
    text = " ".join(str(value if value is not None else "-").split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.3f}s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)}m{rest:04.1f}s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)}h{int(minutes):02d}m{int(rest):02d}s"


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _seconds_between(first: Any, last: Any) -> float | None:
    a, b = _parse_time(first), _parse_time(last)
    return round((b - a).total_seconds(), 3) if a is not None and b is not None else None


def _epoch_or_none(value: Any) -> str | None:
    """Epoch seconds as RFC 3339 UTC with milliseconds (None stays None)."""
    if value is None:
        return None
    try:
        moment = datetime.fromtimestamp(float(value), timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return str(value)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _epoch(value: Any) -> str:
    try:
        return datetime.fromtimestamp(float(value), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(value)
