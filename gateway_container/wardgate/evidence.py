"""Evidence export: for a period of an audit trail, evidence per NIST SP 800-53 control.

Cloud-agnostic (the serverless function only wraps :func:`export_evidence`): reads the trail's events in
the window, verifies the trail for that window (:func:`wardgate.audittool.verify_trail`) and computes, per
control, what evidences it — counts, up to :data:`MAX_EXAMPLES` examples (each with its event, session,
and for commands the statement, decision and rule), a ``status`` (``satisfied`` / ``not-satisfied`` /
``no-data``), the ``reason`` for it and the ``method``: how the status is decided from the trail.
Writes into ``out``:

- ``evidence.json``: the whole package;
- ``report.html``: a self-contained readable report (verification result first, a section per control
  with nested evidence as tables, the client sessions the examples link to, the gateway's own events);
- ``oscal-assessment-results.json``: OSCAL 1.x assessment-results (one observation per control, a
  finding per control with data, ``not-satisfied`` ones marked so);
- ``manifest.json``: every file above with its SHA-256, signed by the :class:`Signer` (the key id
  names ``keys/<key_id>.pem`` in the trail, which :func:`verify_manifest` uses).

Where evidence lives: result masking is data minimisation enforced by the access decision (the policy
rule names the masking profile), so it is reported under AC-3 (the events also tag SI-19). SC-28
(information at rest) reports what the trail itself shows — sealed, read-only segments with signed
digests — and names where the deployment evidence for the archive bucket (WORM, encryption) lives.
"""

from __future__ import annotations

import base64
import hashlib
import html
import ipaddress
import json
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wardgate.audittool import _normalize_time, verify_trail
from wardgate.core.integrity import (ALGORITHMS, DIGEST_SUFFIX, KEYS_DIRECTORY, Signer, canonical,
                                     load_public_key, verify_signature)
from wardgate.replaytool import RecordedSession, read_trail

FORMAT_VERSION = 1
MAX_EXAMPLES = 5
STATEMENT_WIDTH = 120  # characters of a statement shown with an example
OSCAL_VERSION = "1.2.1"  # the OSCAL release the tests validate against (compliance-trestle)
CONTROLS = ("AC-2", "AC-3", "AC-5", "AC-6", "AU-2", "AU-3", "AU-6", "AU-9", "AU-12", "IA-2", "IA-5", "SC-8",
            "SC-13", "SC-28", "IR-4", "CM-3")
TITLES = {
    "AC-2": "Account Management", "AC-3": "Access Enforcement", "AC-5": "Separation of Duties",
    "AC-6": "Least Privilege", "AU-2": "Event Logging", "AU-3": "Content of Audit Records",
    "AU-6": "Audit Record Review, Analysis, and Reporting", "AU-9": "Protection of Audit Information",
    "AU-12": "Audit Record Generation", "IA-2": "Identification and Authentication (Organizational Users)",
    "IA-5": "Authenticator Management", "SC-8": "Transmission Confidentiality and Integrity",
    "SC-13": "Cryptographic Protection", "SC-28": "Protection of Information at Rest",
    "IR-4": "Incident Handling", "CM-3": "Configuration Change Control",
}
SATISFIED, NOT_SATISFIED, NO_DATA = "satisfied", "not-satisfied", "no-data"
EVIDENCE_FILE, REPORT_FILE, OSCAL_FILE, MANIFEST_FILE = (
    "evidence.json", "report.html", "oscal-assessment-results.json", "manifest.json")
BASE_FIELDS = ("v", "id", "time", "type", "session", "seq", "gateway", "prev_hash")  # AU-3 content
SESSION_FIELDS = ("protocol", "resource")
MAX_TOKEN_LIFETIME_S = 24 * 3600  # a remaining token lifetime above this is not short-lived
GATEWAY_CHAIN_PREFIX = "gateway-"
# Where the archive's protection at rest is evidenced: it is configuration of the deployment, not a fact
# the gateway records in the trail.
ARCHIVE_AT_REST_EVIDENCE = [
    {"what": "write-once (WORM) retention of the archive bucket",
     "where": "checked by the gateway at start: the s3://, gs:// and azblob:// archive adapters refuse a bucket "
              "without S3 Object Lock default retention / a GCS retention policy / an Azure immutability policy; "
              "declared in infra/aws/data.py, infra/gcp/wardgate_gcp.py, infra/azure/wardgate_azure.py"},
    {"what": "encryption at rest with a customer-managed KMS key",
     "where": "enforced at deployment by the Pulumi policy pack infra/policy-pack/wardgate_policies.py "
              "(e.g. aws-sse-kms); for the assessment, export the bucket's live settings "
              "(aws s3api get-bucket-encryption / get-object-lock-configuration, gcloud storage buckets describe, "
              "az storage container immutability-policy show)"},
]


class EvidenceError(ValueError):
    """Bad input (a malformed time, a missing trail): exit 2."""


# --- small helpers ---------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _n(count: int, singular: str, plural: str | None = None) -> str:
    """``1 statement``, ``2 statements``: counts in prose read as an auditor expects."""
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


def _clip(value: Any, width: int = STATEMENT_WIDTH) -> str:
    text = " ".join(str(value if value is not None else "").split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _principal_key(identity: Any) -> tuple[str, str] | None:
    if not isinstance(identity, dict) or not identity.get("subject"):
        return None
    return str(identity.get("issuer")), str(identity.get("subject"))


def _who(identity: Any) -> str:
    """An identity as ``subject (issuer)``, the form the approval service records grant approvers in."""
    key = _principal_key(identity)
    return f"{key[1]} ({key[0]})" if key else "(unauthenticated)"


def _identity(event: dict[str, Any]) -> str:
    key = _principal_key(event.get("identity"))
    return f"{key[1]} @ {key[0]}" if key else "(unauthenticated)"


def _parse(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _seconds_between(first: Any, last: Any) -> float | None:
    a, b = _parse(first), _parse(last)
    return round((b - a).total_seconds(), 3) if a is not None and b is not None else None


def _epoch_time(value: Any) -> str | None:
    try:
        return datetime.fromtimestamp(float(value), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _is_loopback_peer(peer: Any) -> bool:
    host = str(peer or "").rpartition(":")[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_gateway_chain(session_id: Any) -> bool:
    return str(session_id).startswith(GATEWAY_CHAIN_PREFIX)


def _control(status: str, reason: str, method: str, **data: Any) -> dict[str, Any]:
    return {"status": status, "reason": reason, "method": method, **data}


# --- reading the window ---------------------------------------------------------------------------------

@dataclass
class _Window:
    """The events of the period, indexed the ways the controls need, plus each session's whole chain
    (a session may start before the window: its start-up and authentication still decide)."""

    events: list[dict[str, Any]]
    sessions: dict[str, RecordedSession]
    all_policies: set[str]
    by_type: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    by_session: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    decided_by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    results_by_command: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for event in self.events:
            self.by_type[str(event.get("type"))].append(event)
            self.by_session[str(event.get("session"))].append(event)
        self.decided_by_id = {str(e.get("id")): e for e in self.by_type["command.decided"]}
        self.results_by_command = {str(e.get("command")): e for e in self.by_type["command.result"]}

    @property
    def client_sessions(self) -> list[str]:
        return [s for s in self.by_session if not _is_gateway_chain(s)]

    def whole(self, session_id: Any) -> list[dict[str, Any]]:
        session = self.sessions.get(str(session_id))
        return session.ordered if session is not None else self.by_session.get(str(session_id), [])

    def first(self, session_id: Any, event_type: str) -> dict[str, Any] | None:
        return next((e for e in self.whole(session_id) if e.get("type") == event_type), None)

    def example(self, event: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """An example: the event, its session and time, and for anything about a command the statement
        (clipped), decision and rule, so a reader sees what happened without opening the trail."""
        entry: dict[str, Any] = {"time": event.get("time"), "event": event.get("id"), "type": event.get("type"),
                                 "session": event.get("session")}
        decided = event if event.get("type") == "command.decided" else \
            self.decided_by_id.get(str(event.get("command")))
        if decided is not None:
            entry.update(statement=_clip(decided.get("statement")), decision=decided.get("decision"),
                         rule=decided.get("rule"))
        return {**entry, **extra}

    def add_example(self, bucket: list, event: dict[str, Any], **extra: Any) -> None:
        if len(bucket) < MAX_EXAMPLES:
            bucket.append(self.example(event, **extra))


def _window_events(trail: Path, since_n: str | None, until_n: str | None) -> _Window:
    sessions = read_trail(trail)
    events: list[dict[str, Any]] = []
    all_policies: set[str] = set()
    for session in sessions.values():
        for event in session.ordered:
            if event.get("type") == "policy.loaded" and event.get("policy"):
                all_policies.add(str(event["policy"]))
            time = str(event.get("time", ""))
            if (since_n and time < since_n) or (until_n and time > until_n):
                continue
            events.append(event)
    events.sort(key=lambda e: (str(e.get("time", "")), str(e.get("session")), e.get("seq", 0)))
    return _Window(events, sessions, all_policies)


def _window_digests(trail: Path, since_n: str | None, until_n: str | None) -> list[dict[str, Any]]:
    digests = []
    for path in sorted(trail.glob("*" + DIGEST_SUFFIX)):
        try:
            record = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict):
            continue
        first, last = record.get("first_time"), record.get("last_time")
        if first and last and ((since_n and last < since_n) or (until_n and first > until_n)):
            continue
        digests.append({"digest": path.name, "segment": record.get("segment"), "key_id": record.get("key_id"),
                        "algorithm": record.get("algorithm"), "signed_at": record.get("signed_at"),
                        "recovered": bool(record.get("recovered"))})
    return digests


# --- AC: accounts, enforcement, separation of duties, least privilege ----------------------------------

def _ac2(w: _Window) -> dict[str, Any]:
    principals: dict[str, dict[str, Any]] = {}
    for event in w.by_type["session.authenticated"]:
        p = event.get("principal") or {}
        key = f"{p.get('subject')} @ {p.get('issuer')}"
        entry = principals.setdefault(key, {"subject": p.get("subject"), "issuer": p.get("issuer"),
                                            "groups": set(), "roles": set(), "sessions": 0, "examples": []})
        entry["groups"].update(p.get("groups") or [])
        entry["sessions"] += 1
        w.add_example(entry["examples"], event)
    for event in w.by_type["command.decided"]:
        key = _identity(event)
        if key in principals:
            principals[key]["roles"].update(event.get("roles") or [])
    rows = [{**v, "groups": sorted(v["groups"]), "roles": sorted(v["roles"])} for _, v in sorted(principals.items())]
    return _control(
        SATISFIED if rows else NO_DATA,
        f"{_n(len(rows), 'distinct principal')} authenticated, each mapped to policy roles" if rows
        else "no authenticated principals in period",
        "Every principal that authenticated in the period, with the groups its token carried and the policy "
        "roles its statements were decided under (including roles from just-in-time grants).",
        principals=rows)


def _approvals(w: _Window) -> list[dict[str, Any]]:
    """Each approval request in the window, paired with its outcome (from the session's whole chain)."""
    outcomes: dict[str, dict[str, Any]] = {}
    for session_id in {str(e.get("session")) for e in w.by_type["approval.requested"]}:
        for event in w.whole(session_id):
            if event.get("type") == "approval.decided":
                outcomes[str(event.get("request"))] = event
    rows = []
    for event in w.by_type["approval.requested"]:
        outcome = outcomes.get(str(event.get("request"))) or {}
        decided = w.decided_by_id.get(str(event.get("command"))) or {}
        requested_at, decided_at = _parse(event.get("time")), _epoch_time(outcome.get("at"))
        waited = None
        if requested_at is not None and outcome.get("at") is not None:
            waited = round(float(outcome["at"]) - requested_at.timestamp(), 3)
        by = [b for b in outcome.get("by") or [] if isinstance(b, dict)]
        rows.append({
            "request": event.get("request"), "session": event.get("session"), "event": event.get("id"),
            "command": event.get("command"), "statement": _clip(decided.get("statement")), "rule": event.get("rule"),
            "requester": _who(event.get("identity")), "requester_key": _principal_key(event.get("identity")),
            "approvers_allowed": list(event.get("approvers") or []), "quorum": event.get("quorum") or 1,
            "needs": f"{event.get('quorum') or 1} of {', '.join(map(str, event.get('approvers') or [])) or '?'}",
            "verdict": outcome.get("verdict") or "undecided", "decided_by": [_who(b) for b in by],
            "decided_by_keys": [_principal_key(b) for b in by], "reason": outcome.get("reason"),
            "requested_at": event.get("time"), "decided_at": decided_at, "seconds_to_decision": waited,
        })
    return rows


def _grants(w: _Window) -> list[dict[str, Any]]:
    grants: dict[str, dict[str, Any]] = {}
    for event in w.by_type["access.grant_applied"]:
        row = grants.setdefault(str(event.get("grant")), {
            "grant": event.get("grant"), "role": event.get("role"), "requester": _who(event.get("identity")),
            "approved_by": list(event.get("approved_by") or []), "applied_at": event.get("time"),
            "expires_at": _epoch_time(event.get("expires_at")), "session": event.get("session"),
            "event": event.get("id"), "sessions": 0})
        row["sessions"] += 1
    return list(grants.values())


def _ac5(w: _Window, approvals: list[dict[str, Any]]) -> dict[str, Any]:
    reviews = [e for e in w.by_type["command.decided"] if e.get("decision") == "review"]
    grants = _grants(w)
    violations = []
    for row in approvals:
        if row["requester_key"] is not None and row["requester_key"] in row["decided_by_keys"]:
            violations.append({"request": row["request"], "session": row["session"], "event": row["event"],
                               "problem": f"{row['verdict']} by its requester {row['requester']}"})
        distinct = {k for k in row["decided_by_keys"] if k is not None}
        if row["verdict"] == "approved" and len(distinct) < int(row["quorum"]):
            violations.append({"request": row["request"], "session": row["session"], "event": row["event"],
                               "problem": f"approved by {_n(len(distinct), 'distinct approver')}, "
                                          f"quorum {row['quorum']}"})
    for grant in grants:
        if not grant["approved_by"] or grant["requester"] in grant["approved_by"]:
            violations.append({"request": grant["grant"], "session": grant["session"], "event": grant["event"],
                               "problem": f"grant of role {grant['role']} approved by "
                                          f"{', '.join(grant['approved_by']) or 'nobody'}; requested by "
                                          f"{grant['requester']}"})
    verdicts = Counter(row["verdict"] for row in approvals)
    public = [{k: v for k, v in row.items() if not k.endswith("_key") and not k.endswith("_keys")}
              for row in approvals]
    not_decided = [{"request": r["request"], "session": r["session"], "event": r["event"], "verdict": r["verdict"],
                    "reason": r["reason"], "statement": r["statement"]}
                   for r in public if r["verdict"] not in ("approved", "denied")]
    if not (reviews or approvals or grants):
        status, reason = NO_DATA, "no review decisions or access grants in period"
    elif violations:
        status, reason = NOT_SATISFIED, (f"{_n(len(violations), 'approval')} without separation of duties: "
                                         + "; ".join(v["problem"] for v in violations[:3]))
    else:
        counts = ", ".join(f"{c} {v}" for v, c in sorted(verdicts.items())) or "none decided"
        status, reason = SATISFIED, (
            f"{_n(len(approvals), 'held statement')} ({counts}) and {_n(len(grants), 'access grant')}: "
            "every one decided by someone other than its requester")
    return _control(
        status, reason,
        "Each approval request is paired with its recorded outcome and compared with the identity that "
        "requested it (same issuer and subject). The approval service refuses self-approval, so an approval "
        "or grant decided by its requester must never happen: one is a failure of this control, as is an "
        "approval with fewer distinct approvers than its quorum. Expired and withdrawn requests ran nothing "
        "and are listed.",
        reviews=len(reviews), failed_to_request=len(w.by_type["approval.failed"]), by_verdict=dict(verdicts),
        approvals=public, access_grants=grants, expired_or_withdrawn=not_decided, violations=violations)


def _ac3(w: _Window, approvals: list[dict[str, Any]]) -> dict[str, Any]:
    decided = w.by_type["command.decided"]
    verdicts = Counter(str(e.get("decision")) for e in decided)
    rules: dict[str, dict[str, Any]] = {}
    unenforced = []
    for event in decided:
        rule = rules.setdefault(f"{event.get('decision')}:{event.get('rule')}", {
            "decision": event.get("decision"), "rule": event.get("rule"), "count": 0, "examples": []})
        rule["count"] += 1
        w.add_example(rule["examples"], event)
        result = w.results_by_command.get(str(event.get("id")))
        if event.get("decision") == "deny" and result is not None and result.get("status") != "refused":
            unenforced.append(w.example(event, result=result.get("status")))
    # A held statement that was not approved must not have run either.
    for row in approvals:
        held, result = w.decided_by_id.get(str(row["command"])), w.results_by_command.get(str(row["command"]))
        if held is not None and row["verdict"] != "approved" and result is not None \
                and result.get("status") != "refused":
            unenforced.append(w.example(held, result=result.get("status"), verdict=row["verdict"]))
    masking = _masking(w)
    rule_rows = sorted(rules.values(), key=lambda r: (-r["count"], str(r["decision"]), str(r["rule"])))
    if not decided:
        status, reason = NO_DATA, "no statements decided in period"
    elif unenforced:
        status, reason = NOT_SATISFIED, f"{_n(len(unenforced), 'refused statement')} ran anyway"
    else:
        refused = verdicts.get("deny", 0) + sum(1 for r in approvals if r["verdict"] != "approved")
        status, reason = SATISFIED, (
            f"{_n(len(decided), 'statement')} decided by policy rules; every denial and every held statement "
            f"not approved ({refused}) was refused; {_n(masking['masked_values'], 'value')} masked in "
            f"{_n(masking['masked_results'], 'result')}")
    return _control(
        status, reason,
        "Every statement is decided by a policy rule before it reaches the database. Holds when every statement "
        "denied, or held and not approved, has a 'refused' result. Result masking (data minimisation, also "
        "tagged SI-19) is the masking profile the deciding rule names, applied to the result; it is listed "
        "here by column and detector (counts only, never values).",
        decisions=len(decided), by_verdict=dict(verdicts), by_rule=rule_rows, unenforced=unenforced,
        masked_results=masking["masked_results"], masked_values=masking["masked_values"],
        masked_by_column=masking["by_column"])


def _masking(w: _Window) -> dict[str, Any]:
    by_column: dict[str, dict[str, Any]] = {}
    for event in w.by_type["command.masked"]:
        for item in event.get("maskings") or []:
            row = by_column.setdefault(f"{item.get('column')}|{item.get('detector')}", {
                "column": item.get("column"), "detector": item.get("detector"), "count": 0, "results": 0,
                "examples": []})
            row["count"] += int(item.get("count") or 0)
            row["results"] += 1
            w.add_example(row["examples"], event)
    return {"masked_results": len(w.by_type["command.masked"]),
            "masked_values": sum(r["count"] for r in by_column.values()),
            "by_column": sorted(by_column.values(), key=lambda r: (str(r["column"]), str(r["detector"])))}


def _ac6(w: _Window, ac3: dict[str, Any]) -> dict[str, Any]:
    decided = w.by_type["command.decided"]
    by_role: dict[str, Counter] = defaultdict(Counter)
    for event in decided:
        for role in event.get("roles") or ["(none)"]:
            by_role[role][str(event.get("decision"))] += 1
    return _control(
        SATISFIED if decided else NO_DATA,
        (f"{_n(len(decided), 'statement')} each authorized against the roles of the principal "
         f"({_n(len(by_role), 'role')}); default deny" if decided else "no statements decided in period"),
        "Statements are authorized one by one against the caller's policy roles; anything no rule allows is "
        "denied (builtin:no-matching-rule). Shown per role and verdict, and per rule.",
        decisions=len(decided), by_role={r: dict(c) for r, c in sorted(by_role.items())},
        by_rule=[{k: v for k, v in r.items() if k != "examples"} for r in ac3["by_rule"]])


# --- AU: logging, content, review, protection, generation ----------------------------------------------

def _au2(w: _Window, type_counts: dict[str, int]) -> dict[str, Any]:
    gateway_events = sum(len(w.by_session[s]) for s in w.by_session if _is_gateway_chain(s))
    return _control(
        SATISFIED if w.events else NO_DATA,
        (f"{_n(len(w.events), 'event')} of {_n(len(type_counts), 'type')} logged: "
         f"{len(w.events) - gateway_events} from {_n(len(w.client_sessions), 'client session')}, "
         f"{gateway_events} from the gateway's own chain"
         if w.events else "no events in period"),
        "Counts every event of the period by type: start-up, authentication, each decided command and its "
        "result, approvals, grants, masking, session ends, and the gateway's own policy loads.",
        events=len(w.events), sessions=len(w.client_sessions), gateway_events=gateway_events, by_type=type_counts)


def _au3(w: _Window) -> dict[str, Any]:
    authenticated: dict[str, tuple[int, tuple[str, str] | None]] = {}
    for session_id in w.client_sessions:
        event = w.first(session_id, "session.authenticated")
        if event is not None:
            authenticated[session_id] = (int(event.get("seq") or 0), _principal_key(event.get("principal")))
    missing: Counter = Counter()
    examples: list = []
    mismatched: list = []
    without_controls: Counter = Counter()
    needing_identity = 0
    for event in w.events:
        session_id = str(event.get("session"))
        gateway_chain = _is_gateway_chain(session_id)
        absent = [f for f in BASE_FIELDS + (() if gateway_chain else SESSION_FIELDS) if f not in event]
        auth = authenticated.get(session_id)
        # From session.authenticated on, every event names who; before it (start-up, a refusal, a failed
        # token, the end of a session never authenticated) there is nobody to name.
        if auth is not None and int(event.get("seq") or 0) >= auth[0]:
            needing_identity += 1
            key = _principal_key(event.get("identity"))
            if key is None:
                absent.append("identity")
            elif auth[1] is not None and key != auth[1]:
                mismatched.append(w.example(event, identity=_identity(event)))
        for name in absent:
            missing[name] += 1
        if absent:
            w.add_example(examples, event, missing=absent)
        if not event.get("controls"):  # not AU-3 content, but the architecture promises it on every event
            without_controls[str(event.get("type"))] += 1
    problems = sum(missing.values()) + len(mismatched)
    if not w.events:
        status, reason = NO_DATA, "no events in period"
    elif problems:
        status, reason = NOT_SATISFIED, (f"{_n(sum(missing.values()), 'required field')} missing, "
                                         f"{_n(len(mismatched), 'event')} naming another identity")
    else:
        status, reason = SATISFIED, (
            f"all {_n(len(w.events), 'event')} carry {', '.join(BASE_FIELDS + SESSION_FIELDS)}; the "
            f"{needing_identity} after authentication also carry the authenticated identity")
    return _control(
        status, reason,
        "Every event must carry the envelope fields (client sessions also protocol and resource). Every event "
        "from a session's session.authenticated on must carry that principal's identity (issuer, subject); "
        "events before it — start-up, refusals, failed authentication, the end of a session never "
        "authenticated — carry none, by design.",
        required_fields=list(BASE_FIELDS + SESSION_FIELDS) + ["identity (after authentication)"],
        events_checked=len(w.events), events_after_authentication=needing_identity,
        missing_fields=dict(missing), identity_mismatches=mismatched[:MAX_EXAMPLES], examples=examples,
        events_without_controls_by_type=dict(sorted(without_controls.items())))


def _au6(w: _Window) -> dict[str, Any]:
    denials = [e for e in w.by_type["command.decided"] if e.get("decision") == "deny"]
    examples: list = []
    for event in denials:
        w.add_example(examples, event, identity=_identity(event))
    return _control(
        SATISFIED if w.events else NO_DATA,
        f"{_n(len(denials), 'denial')} reviewed by identity and rule" if w.events else "no events in period",
        "Denied statements grouped by who sent them and which rule refused them, for review.",
        denials=len(denials),
        top_denied_identities=[{"identity": i, "count": c}
                               for i, c in Counter(_identity(e) for e in denials).most_common(10)],
        top_denied_rules=[{"rule": r, "count": c}
                          for r, c in Counter(str(e.get("rule")) for e in denials).most_common(10)],
        examples=examples)


def _verification_text(report) -> str:
    head = (f"{_n(report.segments, 'segment')}, {_n(report.events, 'event')}, "
            f"{_n(report.sessions, 'hash chain')} (client sessions and the gateway's own) checked")
    return f"{head}: OK" if report.ok else f"{head}: FAILED: {_n(len(report.errors), 'problem')}"


def _verification(report) -> dict[str, Any]:
    """The verifier's report, its summary in the report's own words (counts with singular/plural)."""
    return {**report.as_dict(), "summary": _verification_text(report)}


def _au9(report, digests: list[dict[str, Any]]) -> dict[str, Any]:
    signed = [d for d in digests if d["key_id"] in report.keys]
    if report.segments == 0:
        status, reason = NO_DATA, "no audit segments in period"
    elif not report.ok:
        status, reason = NOT_SATISFIED, f"audit trail verification failed: {_verification_text(report)}"
    else:
        status, reason = SATISFIED, f"audit trail verified: {_verification_text(report)}"
    return _control(
        status, reason,
        "wardgate audit verify over the period: digest signatures, segments against their digests, the digest "
        "chain, and inside every session seq continuity, the hash chain and completeness.",
        verification=_verification(report), signed_segments=len(signed), segments=[d["segment"] for d in digests])


def _au12(w: _Window, type_counts: dict[str, int]) -> dict[str, Any]:
    decided = w.by_type["command.decided"]
    ended_sessions = {s for s in w.client_sessions if any(e.get("type") == "session.ended" for e in w.by_session[s])}
    unrecorded = [w.example(e) for e in decided
                  if str(e.get("id")) not in w.results_by_command and str(e.get("session")) in ended_sessions]
    started = sum(1 for s in w.client_sessions if any(e.get("type") == "session.started" for e in w.by_session[s]))
    if not w.events:
        status, reason = NO_DATA, "no events in period"
    elif unrecorded:
        status, reason = NOT_SATISFIED, f"{_n(len(unrecorded), 'decided statement')} of ended sessions have no result"
    else:
        status, reason = SATISFIED, (f"every decided statement has a recorded result; {_n(started, 'session')} "
                                     f"started, {len(ended_sessions)} ended")
    return _control(
        status, reason,
        "Every decided statement of a session that ended must have a command.result event.",
        by_type=type_counts, sessions_started=started, sessions_ended=len(ended_sessions),
        commands_decided=len(decided), command_results=len(w.by_type["command.result"]),
        unrecorded=unrecorded[:MAX_EXAMPLES])


# --- IA: identification, authenticators ----------------------------------------------------------------

def _ia2(w: _Window) -> dict[str, Any]:
    by_issuer: dict[str, Counter] = defaultdict(Counter)
    examples: list = []
    for event in w.by_type["session.authenticated"]:
        by_issuer[str((event.get("principal") or {}).get("issuer"))]["authenticated"] += 1
        w.add_example(examples, event, outcome="authenticated")
    failures: Counter = Counter()
    for event in w.by_type["session.authentication_failed"]:
        failures[str(event.get("reason"))] += 1
        by_issuer["(token not verified)"][f"failed:{event.get('reason')}"] += 1
        w.add_example(examples, event, outcome="failed", reason=event.get("reason"))
    unauthenticated = sorted(s for s in w.client_sessions
                             if any(e.get("type") == "command.decided" for e in w.by_session[s])
                             and w.first(s, "session.authenticated") is None)
    authenticated, failed = len(w.by_type["session.authenticated"]), sum(failures.values())
    if not authenticated + failed:
        status, reason = NO_DATA, "no authentication attempts in period"
    elif unauthenticated:
        status, reason = NOT_SATISFIED, f"{_n(len(unauthenticated), 'session')} ran statements without authentication"
    else:
        status, reason = SATISFIED, (f"authentications: {authenticated} successful, {failed} failed; "
                                     "every session that ran statements was authenticated")
    return _control(
        status, reason,
        "Each client presents an OIDC token verified against its issuer; a session that ran statements without "
        "a session.authenticated event fails this control.",
        authenticated=authenticated, failed=failed, failures_by_reason=dict(failures),
        by_issuer={i: dict(c) for i, c in sorted(by_issuer.items())}, unauthenticated_sessions=unauthenticated,
        examples=examples)


def _ia5(w: _Window) -> dict[str, Any]:
    lifetimes, unbounded, examples = [], [], []
    for event in w.by_type["session.authenticated"]:
        moment, expires = _parse(event.get("time")), event.get("expires_at")
        if expires is None or moment is None:
            unbounded.append(w.example(event))
            continue
        lifetime = float(expires) - moment.timestamp()
        lifetimes.append(lifetime)
        w.add_example(examples, event, remaining_lifetime_s=round(lifetime, 3))
    too_long = [x for x in lifetimes if x > MAX_TOKEN_LIFETIME_S]
    if not (lifetimes or unbounded):
        status, reason = NO_DATA, "no authentications in period"
    elif unbounded or too_long:
        status, reason = NOT_SATISFIED, (f"{_n(len(unbounded), 'token')} without expiry, {len(too_long)} "
                                         f"longer than {MAX_TOKEN_LIFETIME_S}s")
    else:
        status, reason = SATISFIED, (f"{_n(len(lifetimes), 'short-lived token')} "
                                     f"(at most {max(lifetimes):.0f}s remaining at authentication)")
    return _control(
        status, reason,
        f"Tokens must expire, within {MAX_TOKEN_LIFETIME_S}s of authentication; the gateway holds no "
        "long-lived client password (its own backend credential comes from the credential broker).",
        tokens=len(lifetimes) + len(unbounded), max_lifetime_s=round(max(lifetimes), 3) if lifetimes else None,
        avg_lifetime_s=round(sum(lifetimes) / len(lifetimes), 3) if lifetimes else None,
        expired_refused=len([e for e in w.by_type["session.authentication_failed"] if e.get("reason") == "expired"]),
        without_expiry=unbounded, examples=examples)


# --- SC: transmission, cryptography, at rest -----------------------------------------------------------

_CARRIED = ("session.authenticated", "session.authentication_failed", "command.decided")


def _sc8(w: _Window) -> dict[str, Any]:
    started = w.by_type["session.started"]
    tls = sum(1 for e in started if e.get("tls"))
    refused, on_loopback, exposed = [], [], []
    for event in started:
        if event.get("tls"):
            continue
        chain = w.whole(event.get("session"))
        refusal = next((e for e in chain if e.get("type") == "session.refused"
                        and "tls" in str(e.get("reason", "")).lower()), None)
        carried = any(e.get("type") in _CARRIED for e in chain)
        if refusal is not None:
            refused.append(w.example(refusal, reason=refusal.get("reason"), peer=event.get("peer")))
        elif carried and _is_loopback_peer(event.get("peer")):
            on_loopback.append(w.example(event, peer=event.get("peer")))
        elif carried:
            exposed.append(w.example(event, peer=event.get("peer")))
    plaintext = len(started) - tls
    if not started:
        status, reason = NO_DATA, "no sessions started in period"
    elif exposed:
        status, reason = NOT_SATISFIED, (f"{_n(len(exposed), 'session')} from a non-loopback peer carried a "
                                         "token or statements without TLS")
    else:
        carried = tls + len(on_loopback)
        reason = f"every session that carried a token or statements ({carried}) was encrypted with TLS"
        if on_loopback:
            reason = (f"{tls} of {carried} sessions that carried a token or statements used TLS; "
                      f"{_n(len(on_loopback), 'plaintext session')} on loopback, as configured")
        if refused:
            reason += f"; {_n(len(refused), 'plaintext session')} refused for lacking TLS"
        status = SATISFIED
    return _control(
        status, reason,
        "A session 'carries' data once a token was sent (authenticated or failed) or a statement was decided. "
        "Holds when every such session used TLS, or was plaintext from a loopback peer: the gateway admits a "
        "plaintext token only from loopback and only when the listener sets allow_plaintext_token_on_loopback, "
        "so such a session shows that setting was on. Plaintext sessions refused before any token (reason "
        "tls_required) are evidence of enforcement, not failures.",
        sessions_tls=tls, sessions_plaintext=plaintext, refused_for_tls=len(refused),
        plaintext_on_loopback=len(on_loopback), plaintext_exposed=exposed, refused_examples=refused[:MAX_EXAMPLES],
        loopback_examples=on_loopback[:MAX_EXAMPLES])


def _sc13(report, digests: list[dict[str, Any]]) -> dict[str, Any]:
    algorithms = Counter(str(d["algorithm"]) for d in digests)
    key_ids = sorted({str(d["key_id"]) for d in digests})
    bad = [f.as_dict() for f in report.findings if f.kind in ("forged_digest", "unknown_key", "bad_key")]
    unapproved = sorted(set(algorithms) - set(ALGORITHMS))
    if not digests:
        status, reason = NO_DATA, "no signed digests in period"
    elif bad or unapproved:
        status, reason = NOT_SATISFIED, (f"{_n(len(bad), 'digest')} with invalid signatures or unknown keys; "
                                         f"algorithms outside {', '.join(ALGORITHMS)}: "
                                         f"{', '.join(unapproved) or 'none'}")
    else:
        status, reason = SATISFIED, (f"{_n(len(digests), 'segment digest')} signed with "
                                     f"{', '.join(sorted(algorithms))} by {_n(len(key_ids), 'key')} "
                                     f"({', '.join(key_ids)}); hash chains use SHA-256")
    return _control(
        status, reason,
        f"Every digest must be signed with an approved algorithm ({', '.join(ALGORITHMS)}: the local key or a "
        "cloud KMS key) and verify with a known key.",
        algorithms=dict(algorithms), key_ids=key_ids, digests=len(digests), signature_problems=bad)


def _sc28(trail: Path, report, digests: list[dict[str, Any]], copied_from: str | None) -> dict[str, Any]:
    read_only, writable = [], []
    for digest in digests:
        path = trail / str(digest["segment"])
        if path.exists():
            (writable if path.stat().st_mode & 0o222 else read_only).append(digest["segment"])
    unsealed = [f.message for f in report.findings if f.kind == "missing_digest"]
    live = [f.message for f in report.findings if f.kind == "unsealed_segment"]
    if not digests and not unsealed:
        status, reason = NO_DATA, "no audit segments in period"
    elif writable or unsealed:
        status, reason = NOT_SATISFIED, (f"{_n(len(writable), 'sealed segment')} still writable, "
                                         f"{_n(len(unsealed), 'segment')} never sealed")
    else:
        status, reason = SATISFIED, (f"{_n(len(read_only), 'audit segment')} at rest sealed read-only with a signed "
                                     "SHA-256 digest; the archive's WORM retention and encryption are deployment "
                                     "evidence (see where)")
    note = ("file modes are those of the local copy this package was built from"
            f" ({copied_from}); the bucket's own protection is the deployment evidence below"
            if copied_from else "file modes are those of the trail directory")
    return _control(
        status, reason,
        "Information at rest here is the audit trail. From the trail: every segment of the period must be "
        "sealed — a signed digest binds its SHA-256 — and made read-only (a segment still being written by a "
        "running gateway is listed, not failed). Protection of the archive bucket (write-once retention, "
        "KMS encryption) is configuration, evidenced where 'deployment_evidence' says. Result masking "
        "protects data in transit to the client and is reported under AC-3.",
        sealed_segments=len(digests), read_only=len(read_only), writable=writable, never_sealed=unsealed,
        still_open=live, file_modes=note, deployment_evidence=ARCHIVE_AT_REST_EVIDENCE)


# --- IR, CM ------------------------------------------------------------------------------------------------

def _ir4(w: _Window, report) -> dict[str, Any]:
    aborted = w.by_type["session.aborted"] + w.by_type["session.backend_lost"]
    recovered = [e for e in w.by_type["session.ended"] if e.get("recovered")]
    truncated = [f.message for f in report.findings if f.kind == "truncated_session"]
    denials = [e for e in w.by_type["command.decided"] if e.get("decision") == "deny"]
    refused_sessions = w.by_type["session.refused"]
    examples: list = []
    for event in aborted + recovered + refused_sessions:
        w.add_example(examples, event, reason=event.get("reason") or event.get("message"))
    return _control(
        SATISFIED if w.events else NO_DATA,
        (f"{_n(len(aborted), 'aborted session')}, {len(truncated)} truncated, {len(recovered)} recovered; "
         f"{_n(len(refused_sessions), 'refused session')} and {_n(len(denials), 'refused statement')} recorded"
         if w.events else "no events in period"),
        "Incidents the trail records for handling: sessions aborted or cut off from their backend, sessions "
        "truncated or recovered after a gateway crash, refused sessions and statements.",
        aborted=len(aborted), truncated=truncated, recovered=len(recovered),
        refused_sessions=len(refused_sessions), refused_statements=len(denials),
        backend_failed=len(w.by_type["session.backend_failed"]), examples=examples)


def _cm3(w: _Window) -> dict[str, Any]:
    loads = [{"time": e.get("time"), "event": e.get("id"), "gateway": e.get("gateway"),
              "policy": e.get("policy"), "source": e.get("source")} for e in w.by_type["policy.loaded"]]
    failures = [{"time": e.get("time"), "event": e.get("id"), "gateway": e.get("gateway"),
                 "source": e.get("source"), "error": e.get("error"), "running_policy": e.get("running_policy")}
                for e in w.by_type["policy.load_failed"]]
    decided = w.by_type["command.decided"]
    used = Counter(str(e.get("policy")) for e in decided)
    unknown = sorted(p for p in used if p not in w.all_policies)
    if not (loads or failures or decided):
        status, reason = NO_DATA, "no policy changes or decisions in period"
    elif unknown:
        status, reason = NOT_SATISFIED, f"decisions by {_n(len(unknown), 'policy bundle')} never recorded as loaded"
    else:
        status, reason = SATISFIED, (f"{_n(len(loads), 'policy load')} and {_n(len(failures), 'refused load')}; "
                                     "every decision names a loaded bundle")
    return _control(
        status, reason,
        "Each policy change is recorded with the bundle's SHA-256 on the gateway's own chain, and every decision "
        "names the bundle that made it: a decision by a bundle never recorded as loaded fails this control.",
        loaded=loads, load_failed=failures, decisions_by_policy=dict(used), unknown_policies=unknown)


def _controls(w: _Window, report, digests: list[dict[str, Any]], trail: Path,
              copied_from: str | None) -> dict[str, dict[str, Any]]:
    type_counts = dict(sorted(Counter(str(e.get("type")) for e in w.events).items()))
    approvals = _approvals(w)
    ac3 = _ac3(w, approvals)
    out = {
        "AC-2": _ac2(w), "AC-3": ac3, "AC-5": _ac5(w, approvals), "AC-6": _ac6(w, ac3),
        "AU-2": _au2(w, type_counts), "AU-3": _au3(w), "AU-6": _au6(w), "AU-9": _au9(report, digests),
        "AU-12": _au12(w, type_counts), "IA-2": _ia2(w), "IA-5": _ia5(w), "SC-8": _sc8(w),
        "SC-13": _sc13(report, digests), "SC-28": _sc28(trail, report, digests, copied_from),
        "IR-4": _ir4(w, report), "CM-3": _cm3(w),
    }
    return {control: out[control] for control in CONTROLS}


# --- sessions --------------------------------------------------------------------------------------------

def _session_rows(w: _Window) -> dict[str, dict[str, Any]]:
    """One row per client session of the period: who, where from, what ran, how it ended."""
    rows: dict[str, dict[str, Any]] = {}
    for session_id in w.client_sessions:
        events = w.by_session[session_id]
        started = w.first(session_id, "session.started") or {}
        principal = (w.first(session_id, "session.authenticated") or {}).get("principal")
        decided = [e for e in events if e.get("type") == "command.decided"]
        verdicts = Counter(str(e.get("decision")) for e in decided)
        approvals = Counter(str(e.get("verdict")) for e in events if e.get("type") == "approval.decided")
        rows[session_id] = {
            "identity": _who(principal) if principal else "(unauthenticated)",
            "resource": started.get("resource") or events[0].get("resource"), "peer": started.get("peer"),
            "tls": started.get("tls"), "start": events[0].get("time"), "end": events[-1].get("time"),
            "duration_s": _seconds_between(events[0].get("time"), events[-1].get("time")),
            "commands": len(decided), "allowed": verdicts.get("allow", 0), "denied": verdicts.get("deny", 0),
            "held": verdicts.get("review", 0), "approved": approvals.get("approved", 0),
            "outcome": _outcome(w, session_id), "events": len(events),
        }
    return rows


def _outcome(w: _Window, session_id: str) -> str:
    for event in w.whole(session_id):
        if event.get("type") == "session.refused":
            return f"refused: {event.get('reason')}"
        if event.get("type") == "session.authentication_failed":
            return f"authentication failed: {event.get('reason')}"
        if event.get("type") == "session.backend_failed":
            return "backend failed"
    ended = w.first(session_id, "session.ended")
    if ended is None:
        return "not ended in period"
    return f"{ended.get('reason')}" + (" (recovered after a crash)" if ended.get("recovered") else "")


def _gateway_events(w: _Window) -> list[dict[str, Any]]:
    return [{"time": e.get("time"), "event": e.get("id"), "gateway": e.get("gateway"), "type": e.get("type"),
             "policy": e.get("policy") or e.get("running_policy"), "source": e.get("source"),
             "error": e.get("error")}
            for s in w.by_session if _is_gateway_chain(s) for e in w.by_session[s]]


# --- outputs -------------------------------------------------------------------------------------------

def _oscal(package: dict[str, Any]) -> dict[str, Any]:
    now = package["generated_at"]
    start = package["period"]["since"] or package["period"]["first_event"] or now
    end = package["period"]["until"] or package["period"]["last_event"] or now
    observations, findings = [], []
    for control, data in package["controls"].items():
        obs_uuid = str(uuid.uuid4())
        observations.append({
            "uuid": obs_uuid,
            "title": f"{control} {TITLES[control]}: evidence from the wardgate audit trail",
            "description": data["reason"],
            "props": [{"name": "evidence-status", "ns": "https://wardgate.dev/ns/oscal", "value": data["status"]}],
            "methods": ["TEST"],
            "types": ["control-objective"],
            "relevant_evidence": [{"href": f"./{EVIDENCE_FILE}#/controls/{control}",
                                   "description": f"wardgate evidence for {control}"}],
            "collected": now,
            "remarks": data["method"],
        })
        state = {SATISFIED: "satisfied", NOT_SATISFIED: "not-satisfied"}.get(data["status"])
        finding: dict[str, Any] = {
            "uuid": str(uuid.uuid4()),
            "title": f"{control} {TITLES[control]}",
            "description": data["reason"],
            "target": {"type": "objective-id", "target_id": f"{control.lower()}_obj",
                       **({"status": {"state": state}} if state else {}),
                       "remarks": f"wardgate evidence status: {data['status']}"},
            "related_observations": [{"observation_uuid": obs_uuid}],
        }
        if data["status"] != NO_DATA:
            findings.append(finding)
    return {"assessment-results": {
        "uuid": str(uuid.uuid4()),
        "metadata": {"title": "wardgate evidence export", "last-modified": now, "version": str(FORMAT_VERSION),
                     "oscal-version": OSCAL_VERSION,
                     "remarks": f"audit trail verification: {package['verification']['summary']}"},
        "import-ap": {"href": "urn:wardgate:assessment-plan:placeholder"},
        "results": [{
            "uuid": str(uuid.uuid4()),
            "title": "wardgate audit trail evidence",
            "description": f"Evidence from the wardgate audit trail for {start} to {end}.",
            "start": start, "end": end,
            "reviewed-controls": {"control-selections": [{"include-controls": [
                {"control-id": c.lower()} for c in CONTROLS]}]},
            "observations": observations,
            **({"findings": findings} if findings else {}),
        }],
    }}


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;color:#222;line-height:1.35}
table{border-collapse:collapse;margin:.4em 0 1.2em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;
vertical-align:top;font-size:.9em}th{background:#f3f3f3;font-weight:600}table table{margin:0}
table table td,table table th{font-size:.95em}table.top{width:100%}.top>tbody>tr>th,.top>tr>th{width:9em}
code.sid{overflow-wrap:anywhere}table.sessions td,table.sessions th{font-size:.8em}
small.iss{color:#666;overflow-wrap:anywhere}ul.ex{margin:0;padding-left:1.1em}ul.ex li{margin:.1em 0}
td code.stmt{display:inline-block;min-width:12em}
.satisfied{color:#176b1c;font-weight:600}.not-satisfied{color:#b00020;font-weight:600}.no-data{color:#777}
.banner{padding:1em;border-radius:6px;font-size:1.15em;margin-bottom:1.5em}.ok{background:#e6f4ea;
border:2px solid #176b1c}.bad{background:#fde7e9;border:2px solid #b00020}code{font-size:.85em;
overflow-wrap:anywhere}.t{white-space:nowrap}.method{color:#555;font-style:italic;margin-top:-.3em}
.none{color:#777}h2{margin-top:1.6em;border-bottom:1px solid #ddd}"""

# Kept in evidence.json, left out of the HTML tables: ids a request or grant id already identifies, and the
# parts of "needs" (quorum of approvers).
_HTML_HIDDEN = {"event", "command", "approvers_allowed", "quorum", "decided_at"}
_TIME_KEYS = {"time", "start", "end", "requested_at", "decided_at", "applied_at", "expires_at", "signed_at"}


def _label(key: str) -> str:
    """A field name as words; event types (``access.grant_applied``) stay as recorded."""
    return key if "." in key else key.replace("_", " ")


_IDENTITY_KEYS = {"requester", "decided_by", "approved_by", "identity"}


def _identity_html(text: str) -> str:
    """``subject (issuer)`` or ``subject @ issuer``: the subject, the issuer small underneath (it may wrap)."""
    if text.endswith(")") and " (" in text:
        subject, _, issuer = text[:-1].partition(" (")
    else:
        subject, _, issuer = text.partition(" @ ")
    if not issuer:
        return html.escape(text)
    return f"{html.escape(subject)}<br><small class=iss>{html.escape(issuer)}</small>"


def _time(value: Any) -> str:
    """A recorded time on one line, to the millisecond: ``2026-11-23 18:43:05.486Z``."""
    text = str(value)
    moment = _parse(text)
    if moment is None or "T" not in text:
        return html.escape(text)
    shown = moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return f"<span class=t title='{html.escape(text)}'>{shown}</span>"


def _session_link(session_id: Any, *, short: bool = False) -> str:
    """A link to the session's row (or to the gateway events); ``short`` shows the id's random tail only,
    the full id stays in the tooltip and in evidence.json."""
    sid = html.escape(str(session_id))
    shown = f"…{sid[-8:]}" if short and not _is_gateway_chain(session_id) and len(sid) > 12 else sid
    target = "gateway-events" if _is_gateway_chain(session_id) else f"session-{sid}"
    return f"<a href='#{target}' title='{sid}'><code>{shown}</code></a>"


def _event_ref(event_id: Any) -> str:
    """An event as ``#seq`` of its session (the full id in the tooltip)."""
    text = str(event_id)
    session, _, seq = text.rpartition("-")
    shown = f"#{int(seq)}" if session and seq.isdigit() else text
    return f"<code title='{html.escape(text)}'>{html.escape(shown)}</code>"


def _scalar(key: str, value: Any, *, nested: bool = False) -> str:
    if value is None:
        return "<span class=none>—</span>"
    if key == "session":
        return _session_link(value, short=nested)
    if key in ("event", "command") and nested:
        return _event_ref(value)
    if key in _IDENTITY_KEYS:
        return _identity_html(str(value))
    if key == "statement":
        return f"<code class=stmt>{html.escape(str(value))}</code>"
    if key in ("request", "grant"):
        return f"<code>{html.escape(str(value))}</code>"
    if key in ("event", "command", "policy", "source", "segment"):
        return f"<code>{html.escape(str(value))}</code>"
    if key in _TIME_KEYS:
        return _time(value)
    if str(value) in (SATISFIED, NOT_SATISFIED, NO_DATA):
        return f"<span class='{value}'>{html.escape(str(value))}</span>"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return html.escape(str(value))


def _render(value: Any, key: str = "", parent: dict[str, Any] | None = None) -> str:
    """Evidence as HTML: lists of records become tables, mappings key/value tables, lists of names are
    joined with commas, so nested evidence (rules with their examples, principals with roles) stays legible.
    A nested table leaves out columns that only repeat its parent row (an example's rule under that rule)."""
    if isinstance(value, dict):
        if not value:
            return "<span class=none>none</span>"
        rows = "".join(f"<tr><th>{html.escape(_label(str(k)))}</th><td>{_render(v, str(k))}</td></tr>"
                       for k, v in value.items())
        return f"<table class=kv>{rows}</table>"
    if isinstance(value, list):
        if not value:
            return "<span class=none>none</span>"
        if all(isinstance(v, dict) and {"time", "event", "session"} <= set(v) for v in value):
            return _examples(value, parent or {})
        if all(isinstance(v, dict) for v in value):
            columns: list[str] = []
            for item in value:
                columns.extend(k for k in item if k not in columns and k not in _HTML_HIDDEN)
            head = "".join(f"<th>{html.escape(_label(c))}</th>" for c in columns)
            body = "".join("<tr>" + "".join(f"<td>{_cell(item, c)}</td>" for c in columns) + "</tr>"
                           for item in value)
            return f"<table><tr>{head}</tr>{body}</table>"
        if all(not isinstance(v, (dict, list)) for v in value):
            return (", " if key not in _IDENTITY_KEYS else "<br>").join(_scalar(key, v) for v in value)
        return "<ul>" + "".join(f"<li>{_render(v, key)}</li>" for v in value) + "</ul>"
    return _scalar(key, value)


def _examples(items: list[dict[str, Any]], parent: dict[str, Any]) -> str:
    """Examples as one line each — when, which session and event, what ran and how it was decided —
    leaving out what the row they belong to already says (its rule, its decision)."""
    lines = []
    for item in items:
        text = f"{_time(item['time'])} {_session_link(item['session'], short=True)} {_event_ref(item['event'])} "
        if "statement" in item:
            verdict = [] if parent.get("decision") == item.get("decision") else [html.escape(str(item.get("decision")))]
            if parent.get("rule") != item.get("rule"):
                verdict.append(f"by rule {html.escape(str(item.get('rule')))}")
            shown = f"{item['type']}, " if item.get("type") != "command.decided" else ""
            text += (html.escape(shown) + (" ".join(verdict) + ": " if verdict else "")
                     + _scalar("statement", item["statement"]))
        else:
            text += html.escape(str(item.get("type")))
        extra = [f"{html.escape(_label(k))}: {_render(v, k)}" for k, v in item.items()
                 if k not in ("time", "session", "event", "type", "statement", "decision", "rule")]
        lines.append(f"<li>{text}{' — ' + '; '.join(extra) if extra else ''}</li>")
    return f"<ul class=ex>{''.join(lines)}</ul>"


def _cell(item: dict[str, Any], column: str) -> str:
    """One cell of a table of records: sessions and events shown short (full ids in the tooltip)."""
    value = item.get(column)
    if isinstance(value, (dict, list)):
        return _render(value, column, parent=item) if value else _render(value, column)
    return _scalar(column, value, nested=True)


def _html(package: dict[str, Any]) -> str:
    verification, period = package["verification"], package["period"]
    ok = verification["ok"]
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>wardgate evidence "
             f"{esc(str(period['since']))} – {esc(str(period['until']))}</title><style>{_CSS}</style></head><body>",
             "<h1>wardgate evidence report</h1>",
             f"<div class='banner {'ok' if ok else 'bad'}' id=verification><strong>Audit trail verification: "
             f"{'PASSED' if ok else 'FAILED'}</strong><br>{esc(verification['summary'])}"]
    for finding in verification["findings"]:
        parts.append(f"<br><code>{esc(finding['level'])} {esc(finding['kind'])}: {esc(finding['message'])}</code>")
    parts.append("</div>")
    window = (f"period {_time(period['since'])} to {_time(period['until'])}" if period["since"] or period["until"]
              else "the whole trail")
    events = (f"events from {_time(period['first_event'])} to {_time(period['last_event'])}"
              if period["first_event"] else "no events")
    parts.append(f"<p>Trail <code>{esc(package['trail'])}</code>; {window} ({events}); generated "
                 f"{_time(package['generated_at'])}.</p>")
    counts = ", ".join(f"{c} {s}" for s, c in sorted(package["summary"].items()))
    parts.append(f"<h2>Summary</h2><p>{_n(len(package['controls']), 'control')}: {esc(counts)}.</p>"
                 "<table><tr><th>Control</th><th>Title</th><th>Status</th><th>Reason</th></tr>")
    for control, data in package["controls"].items():
        parts.append(f"<tr><td><a href='#{control}'>{control}</a></td><td>{esc(TITLES[control])}</td>"
                     f"<td class='{data['status']} t'>{data['status']}</td><td>{esc(data['reason'])}</td></tr>")
    parts.append("</table>")
    for control, data in package["controls"].items():
        parts.append(f"<h2 id='{control}'>{control} {esc(TITLES[control])} — "
                     f"<span class='{data['status']}'>{data['status']}</span></h2><p>{esc(data['reason'])}</p>"
                     f"<p class=method>How: {esc(data['method'])}</p><table class='kv top'>")
        for key, value in data.items():
            if key not in ("status", "reason", "method"):
                parts.append(f"<tr><th>{esc(_label(key))}</th><td>{_render(value, key)}</td></tr>")
        parts.append("</table>")
    parts.append(f"<h2 id=sessions>Client sessions</h2><p>{_n(len(package['sessions']), 'client session')} in "
                 "the period; examples above link here. Commands: decided statements, of which allowed, denied, "
                 "held for approval and, of those, approved.</p><table class=sessions><tr><th>Session</th>"
                 "<th>Identity</th>"
                 "<th>Resource</th><th>Peer</th><th>Start</th><th>Duration</th><th>Commands</th><th>Allowed</th>"
                 "<th>Denied</th><th>Held</th><th>Approved</th><th>Outcome</th><th>Events</th></tr>")
    for session_id, row in sorted(package["sessions"].items(), key=lambda kv: str(kv[1]["start"])):
        transport = "TLS" if row["tls"] else ("plaintext" if row["tls"] is False else "")
        duration = "—" if row["duration_s"] is None else f"{row['duration_s']:.3f} s"
        parts.append(
            f"<tr id='session-{esc(session_id)}'><td><code class=sid>{esc(session_id)}</code></td>"
            f"<td>{_identity_html(str(row['identity']))}</td><td class=t>{_scalar('resource', row['resource'])}</td>"
            f"<td class=t>{_scalar('peer', row['peer'])}<br><small>{transport}</small></td>"
            f"<td>{_time(row['start'])}</td><td class=t>{duration}</td><td>{row['commands']}</td>"
            f"<td>{row['allowed']}</td><td>{row['denied']}</td><td>{row['held']}</td><td>{row['approved']}</td>"
            f"<td>{esc(str(row['outcome']))}</td><td>{row['events']}</td></tr>")
    parts.append("</table>")
    gateway_events = package["gateway_events"]
    parts.append(f"<h2 id=gateway-events>Gateway events</h2><p>The gateway's own chain "
                 f"(<code>{GATEWAY_CHAIN_PREFIX}&lt;id&gt;</code>): {_n(len(gateway_events), 'event')} in the "
                 f"period — policy loads and refused reloads.</p>{_render(gateway_events)}")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def sign_manifest(manifest: dict[str, Any], signer: Signer | None) -> dict[str, Any]:
    if signer is None:
        return {**manifest, "key_id": None, "algorithm": None, "signature": None}
    record = {**manifest, "key_id": signer.key_id, "algorithm": signer.algorithm}
    record["signature"] = base64.b64encode(signer.sign(canonical(record))).decode()
    return record


def verify_manifest(out: Path, *, trail: Path | None = None, public_key_pem: bytes | None = None) -> list[str]:
    """Problems with ``out/manifest.json``: its signature (with ``public_key_pem``, else the trail's
    ``keys/<key_id>.pem``) and every listed file's SHA-256. Empty when all holds."""
    out = Path(out)
    manifest = json.loads((out / MANIFEST_FILE).read_bytes())
    problems = []
    if public_key_pem is None and trail is not None and manifest.get("key_id"):
        path = Path(trail) / KEYS_DIRECTORY / f"{manifest['key_id']}.pem"
        public_key_pem = path.read_bytes() if path.exists() else None
    if not manifest.get("signature"):
        problems.append("manifest is not signed")
    elif public_key_pem is None:
        problems.append(f"no public key for key id {manifest.get('key_id')}")
    elif not verify_signature(manifest, load_public_key(public_key_pem)):
        problems.append("manifest signature does not verify")
    for item in manifest.get("files", []):
        path = out / item["name"]
        if not path.exists():
            problems.append(f"{item['name']}: missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != item["sha256"]:
            problems.append(f"{item['name']}: sha256 mismatch")
    return problems


def export_evidence(trail: Path, out: Path, *, since: str | None = None, until: str | None = None,
                    signer: Signer | None = None, trail_label: str | None = None) -> dict[str, Any]:
    """Build the evidence package for ``since``..``until`` of ``trail`` into ``out``; return it.
    ``trail_label`` names the trail in the package (e.g. the archive's bucket URL when ``trail`` is a
    local copy of it); default: the directory."""
    trail, out = Path(trail), Path(out)
    if not trail.is_dir():
        raise EvidenceError(f"{trail}: not a directory")
    try:
        since_n, until_n = _normalize_time(since), _normalize_time(until, end=True)
    except ValueError as exc:
        raise EvidenceError(f"bad --since/--until: {exc}") from exc
    if since_n and until_n and since_n > until_n:
        raise EvidenceError("--since is after --until")
    report = verify_trail(trail, since=since, until=until)
    window = _window_events(trail, since_n, until_n)
    digests = _window_digests(trail, since_n, until_n)
    controls = _controls(window, report, digests, trail, trail_label)
    package = {
        "format": "wardgate-evidence", "v": FORMAT_VERSION, "generated_at": _now(),
        "trail": trail_label or str(trail),
        "period": {"since": since_n, "until": until_n,
                   "first_event": window.events[0].get("time") if window.events else None,
                   "last_event": window.events[-1].get("time") if window.events else None},
        "verification": _verification(report),
        "summary": dict(Counter(c["status"] for c in controls.values())),
        "controls": controls,
        "sessions": _session_rows(window),
        "gateway_events": _gateway_events(window),
    }
    out.mkdir(parents=True, exist_ok=True)
    files = {
        EVIDENCE_FILE: json.dumps(package, indent=2, ensure_ascii=False, default=str).encode(),
        REPORT_FILE: _html(package).encode(),
        OSCAL_FILE: json.dumps(_oscal(package), indent=2, ensure_ascii=False).encode(),
    }
    for name, data in files.items():
        _write(out / name, data)
    manifest = {"format": "wardgate-evidence-manifest", "v": FORMAT_VERSION, "generated_at": package["generated_at"],
                "trail": package["trail"], "period": package["period"],
                "files": [{"name": n, "sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)}
                          for n, d in files.items()]}
    _write(out / MANIFEST_FILE, json.dumps(sign_manifest(manifest, signer), indent=2).encode())
    return package
