"""Evidence export: for a period of an audit trail, evidence per NIST SP 800-53 control.

Cloud-agnostic (the serverless function only wraps :func:`export_evidence`): reads the trail's events in
the window, verifies the trail for that window (:func:`wardgate.audittool.verify_trail`) and computes, per
control, what evidences it — counts, up to :data:`MAX_EXAMPLES` example event ids with their session ids,
and a ``status`` (``satisfied`` / ``not-satisfied`` / ``no-data``) with a reason. Writes into ``out``:

- ``evidence.json``: the whole package;
- ``report.html``: a self-contained readable report (verification result first, a table per control,
  the sessions the examples link to);
- ``oscal-assessment-results.json``: OSCAL 1.x assessment-results (one observation per control, a
  finding per control, ``not-satisfied`` ones marked so);
- ``manifest.json``: every file above with its SHA-256, signed by the :class:`Signer` (Ed25519; the key id
  names ``keys/<key_id>.pem`` in the trail, which :func:`verify_manifest` uses).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wardgate.audittool import _normalize_time, verify_trail
from wardgate.core.integrity import (DIGEST_SUFFIX, KEYS_DIRECTORY, Signer, canonical, load_public_key,
                                     verify_signature)
from wardgate.replaytool import read_trail

FORMAT_VERSION = 1
MAX_EXAMPLES = 5
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
_NS = uuid.UUID("5b0c4f39-6a53-4b55-9d7e-3f6c2b1f4a10")  # namespace for stable per-control ids


class EvidenceError(ValueError):
    """Bad input (a malformed time, a missing trail): exit 2."""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _example(event: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"event": event.get("id"), "session": event.get("session"), "time": event.get("time"), **extra}


def _add_example(bucket: list, event: dict[str, Any], **extra: Any) -> None:
    if len(bucket) < MAX_EXAMPLES:
        bucket.append(_example(event, **extra))


def _control(status: str, reason: str, **data: Any) -> dict[str, Any]:
    return {"status": status, "reason": reason, **data}


def _identity(event: dict[str, Any]) -> str:
    identity = event.get("identity") or {}
    if not identity:
        return "(unauthenticated)"
    return f"{identity.get('subject')} @ {identity.get('issuer')}"


def _parse(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


# --- reading the window ---------------------------------------------------------------------------------

def _window_events(trail: Path, since_n: str | None, until_n: str | None):
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
    return sessions, events, all_policies


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


# --- per control ---------------------------------------------------------------------------------------

def _controls(events: list[dict[str, Any]], report, digests: list[dict[str, Any]],
              all_policies: set[str]) -> dict[str, dict[str, Any]]:
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_type[str(event.get("type"))].append(event)
        by_session[str(event.get("session"))].append(event)
    client_sessions = {s for s in by_session if not s.startswith("gateway-")}
    decided = by_type["command.decided"]
    results_by_command = {e.get("command"): e for e in by_type["command.result"]}
    out: dict[str, dict[str, Any]] = {}

    # AC-2: distinct principals and their roles.
    principals: dict[str, dict[str, Any]] = {}
    for event in by_type["session.authenticated"]:
        p = event.get("principal") or {}
        key = f"{p.get('subject')} @ {p.get('issuer')}"
        entry = principals.setdefault(key, {"issuer": p.get("issuer"), "subject": p.get("subject"),
                                            "groups": set(), "roles": set(), "sessions": 0, "examples": []})
        entry["groups"].update(p.get("groups") or [])
        entry["sessions"] += 1
        _add_example(entry["examples"], event)
    for event in decided:
        key = _identity(event)
        if key in principals:
            principals[key]["roles"].update(event.get("roles") or [])
    principal_rows = [{**v, "groups": sorted(v["groups"]), "roles": sorted(v["roles"])}
                      for _, v in sorted(principals.items())]
    out["AC-2"] = _control(SATISFIED if principal_rows else NO_DATA,
                           f"{len(principal_rows)} distinct principals authenticated, each mapped to policy roles"
                           if principal_rows else "no authenticated principals in period",
                           principals=principal_rows)

    # AC-3 / AC-6: decisions by verdict and rule; denials must have been refused.
    verdicts = Counter(str(e.get("decision")) for e in decided)
    rules: dict[str, dict[str, Any]] = {}
    by_role: dict[str, Counter] = defaultdict(Counter)
    unenforced = []
    for event in decided:
        key = f"{event.get('decision')}:{event.get('rule')}"
        rule = rules.setdefault(key, {"decision": event.get("decision"), "rule": event.get("rule"), "count": 0,
                                      "examples": []})
        rule["count"] += 1
        _add_example(rule["examples"], event)
        for role in event.get("roles") or ["(none)"]:
            by_role[role][str(event.get("decision"))] += 1
        if event.get("decision") == "deny":
            result = results_by_command.get(event.get("id"))
            if result is not None and result.get("status") != "refused":
                unenforced.append(_example(event))
    rule_rows = sorted(rules.values(), key=lambda r: (-r["count"], str(r["decision"]), str(r["rule"])))
    if not decided:
        status, reason = NO_DATA, "no statements decided in period"
    elif unenforced:
        status, reason = NOT_SATISFIED, f"{len(unenforced)} denied statements were not refused"
    else:
        status, reason = SATISFIED, (f"{len(decided)} statements decided by policy rules; "
                                     f"every denial ({verdicts.get('deny', 0)}) was refused")
    out["AC-3"] = _control(status, reason, decisions=len(decided), by_verdict=dict(verdicts), by_rule=rule_rows,
                           unenforced=unenforced)
    out["AC-6"] = _control(
        SATISFIED if decided else NO_DATA,
        (f"{len(decided)} statements each authorized per statement against the roles of the principal "
         f"({len(by_role)} roles); default deny" if decided else "no statements decided in period"),
        decisions=len(decided), by_role={r: dict(c) for r, c in sorted(by_role.items())}, by_rule=rule_rows)

    # AC-5: review decisions and approver separation.
    reviews = [e for e in decided if e.get("decision") == "review"]
    review_examples: list = []
    for event in reviews:
        _add_example(review_examples, event, rule=event.get("rule"))
    out["AC-5"] = _control(SATISFIED if reviews else NO_DATA,
                           f"{len(reviews)} statements held for review" if reviews
                           else "no review decisions in period",
                           reviews=len(reviews), examples=review_examples)

    # AU-2 / AU-3 / AU-12: what is logged, with which fields, for every session.
    type_counts = dict(sorted(Counter(str(e.get("type")) for e in events).items()))
    missing: Counter = Counter()
    missing_examples: list = []
    without_controls: Counter = Counter()
    for event in events:
        required = BASE_FIELDS + (() if str(event.get("session", "")).startswith("gateway-") else SESSION_FIELDS)
        absent = [f for f in required if f not in event]
        if event.get("type") not in ("session.started", "session.refused", "session.authentication_failed") \
                and not str(event.get("session", "")).startswith("gateway-") and not event.get("identity"):
            absent.append("identity")
        for name in absent:
            missing[name] += 1
        if not event.get("controls"):  # not AU-3 content, but the architecture promises it on every event
            without_controls[str(event.get("type"))] += 1
        if absent:
            _add_example(missing_examples, event, missing=absent)
    out["AU-2"] = _control(SATISFIED if events else NO_DATA,
                           f"{len(events)} events of {len(type_counts)} types logged for {len(client_sessions)} "
                           "sessions" if events else "no events in period",
                           events=len(events), sessions=len(client_sessions), by_type=type_counts)
    out["AU-3"] = _control(
        NO_DATA if not events else (NOT_SATISFIED if missing else SATISFIED),
        ("no events in period" if not events else
         f"{sum(missing.values())} required fields missing" if missing else
         f"every event carries the required fields ({', '.join(BASE_FIELDS + SESSION_FIELDS)}, identity)"),
        required_fields=list(BASE_FIELDS + SESSION_FIELDS) + ["identity"], events_checked=len(events),
        missing_fields=dict(missing), examples=missing_examples,
        events_without_controls_by_type=dict(sorted(without_controls.items())))
    unrecorded = [_example(e) for e in decided if e.get("id") not in results_by_command
                  and any(x.get("type") == "session.ended" for x in by_session[str(e.get("session"))])]
    started = sum(1 for s in client_sessions if any(e.get("type") == "session.started" for e in by_session[s]))
    ended = sum(1 for s in client_sessions if any(e.get("type") == "session.ended" for e in by_session[s]))
    out["AU-12"] = _control(
        NO_DATA if not events else (NOT_SATISFIED if unrecorded else SATISFIED),
        ("no events in period" if not events else
         f"{len(unrecorded)} decided statements of ended sessions have no result" if unrecorded else
         f"every decided statement has a recorded result; {started} sessions started, {ended} ended"),
        by_type=type_counts, sessions_started=started, sessions_ended=ended,
        commands_decided=len(decided), command_results=len(by_type["command.result"]), unrecorded=unrecorded[:MAX_EXAMPLES])

    # AU-6: top denied identities and rules.
    denials = [e for e in decided if e.get("decision") == "deny"]
    top_identities = Counter(_identity(e) for e in denials).most_common(10)
    top_rules = Counter(str(e.get("rule")) for e in denials).most_common(10)
    deny_examples: list = []
    for event in denials:
        _add_example(deny_examples, event, identity=_identity(event), rule=event.get("rule"))
    out["AU-6"] = _control(
        SATISFIED if events else NO_DATA,
        f"{len(denials)} denials reviewed by identity and rule" if events else "no events in period",
        denials=len(denials), top_denied_identities=[{"identity": i, "count": c} for i, c in top_identities],
        top_denied_rules=[{"rule": r, "count": c} for r, c in top_rules], examples=deny_examples)

    # AU-9: verification of the trail for the period.
    signed = [d for d in digests if d["key_id"] in report.keys]
    if report.segments == 0:
        status, reason = NO_DATA, "no audit segments in period"
    elif not report.ok:
        status, reason = NOT_SATISFIED, f"audit trail verification failed: {report.summary()}"
    else:
        status, reason = SATISFIED, f"audit trail verified: {report.summary()}"
    out["AU-9"] = _control(status, reason, verification=report.as_dict(), signed_segments=len(signed),
                           segments=[d["segment"] for d in digests])

    # SC-13: signature algorithm and key ids.
    algorithms = Counter(str(d["algorithm"]) for d in digests)
    key_ids = sorted({str(d["key_id"]) for d in digests})
    bad_signatures = [f.as_dict() for f in report.findings if f.kind in ("forged_digest", "unknown_key", "bad_key")]
    if not digests:
        status, reason = NO_DATA, "no signed digests in period"
    elif bad_signatures or set(algorithms) != {"Ed25519"}:
        status, reason = NOT_SATISFIED, f"{len(bad_signatures)} digests with invalid signatures or unknown keys"
    else:
        status, reason = SATISFIED, f"{len(digests)} segment digests signed with Ed25519 by keys {', '.join(key_ids)}"
    out["SC-13"] = _control(status, reason, algorithms=dict(algorithms), key_ids=key_ids, digests=len(digests),
                            signature_problems=bad_signatures)

    # IA-2: authentications by issuer and outcome/reason.
    by_issuer: dict[str, Counter] = defaultdict(Counter)
    auth_examples: list = []
    for event in by_type["session.authenticated"]:
        by_issuer[str((event.get("principal") or {}).get("issuer"))]["authenticated"] += 1
        _add_example(auth_examples, event, outcome="authenticated")
    failures = Counter()
    for event in by_type["session.authentication_failed"]:
        failures[str(event.get("reason"))] += 1
        issuer = str((event.get("identity") or {}).get("issuer") or "(unknown)")
        by_issuer[issuer][f"failed:{event.get('reason')}"] += 1
        _add_example(auth_examples, event, outcome="failed", reason=event.get("reason"))
    unauthenticated = sorted(s for s in client_sessions
                             if any(e.get("type") == "command.decided" for e in by_session[s])
                             and not any(e.get("type") == "session.authenticated" for e in by_session[s]))
    attempts = len(by_type["session.authenticated"]) + len(by_type["session.authentication_failed"])
    out["IA-2"] = _control(
        NO_DATA if not attempts else (NOT_SATISFIED if unauthenticated else SATISFIED),
        ("no authentication attempts in period" if not attempts else
         f"{len(unauthenticated)} sessions ran statements without authentication" if unauthenticated else
         f"{len(by_type['session.authenticated'])} successful and {sum(failures.values())} failed authentications; "
         "every session that ran statements was authenticated"),
        authenticated=len(by_type["session.authenticated"]), failed=sum(failures.values()),
        failures_by_reason=dict(failures), by_issuer={i: dict(c) for i, c in sorted(by_issuer.items())},
        unauthenticated_sessions=unauthenticated, examples=auth_examples)

    # IA-5: token lifetimes (remaining at authentication: expires_at - time).
    lifetimes, unbounded, ia5_examples = [], [], []
    for event in by_type["session.authenticated"]:
        moment = _parse(event.get("time"))
        expires = event.get("expires_at")
        if expires is None or moment is None:
            unbounded.append(_example(event))
            continue
        lifetime = float(expires) - moment.timestamp()
        lifetimes.append(lifetime)
        _add_example(ia5_examples, event, remaining_lifetime_s=round(lifetime, 3))
    too_long = [x for x in lifetimes if x > MAX_TOKEN_LIFETIME_S]
    out["IA-5"] = _control(
        NO_DATA if not (lifetimes or unbounded) else (NOT_SATISFIED if unbounded or too_long else SATISFIED),
        ("no authentications in period" if not (lifetimes or unbounded) else
         f"{len(unbounded)} tokens without expiry, {len(too_long)} longer than {MAX_TOKEN_LIFETIME_S}s"
         if unbounded or too_long else
         f"{len(lifetimes)} short-lived tokens (max {max(lifetimes):.0f}s remaining at authentication)"),
        tokens=len(lifetimes) + len(unbounded), max_lifetime_s=round(max(lifetimes), 3) if lifetimes else None,
        avg_lifetime_s=round(sum(lifetimes) / len(lifetimes), 3) if lifetimes else None,
        expired_refused=failures.get("expired", 0), without_expiry=unbounded, examples=ia5_examples)

    # SC-8: sessions with TLS vs not.
    tls = Counter()
    plaintext: list = []
    for event in by_type["session.started"]:
        tls["tls" if event.get("tls") else "plaintext"] += 1
        if not event.get("tls"):
            _add_example(plaintext, event)
    refused_tls = [e for e in by_type["session.refused"] if "tls" in str(e.get("reason", "")).lower()]
    out["SC-8"] = _control(
        NO_DATA if not tls else (NOT_SATISFIED if tls["plaintext"] else SATISFIED),
        ("no sessions started in period" if not tls else
         f"{tls['plaintext']} sessions without TLS" if tls["plaintext"] else f"all {tls['tls']} sessions used TLS"),
        sessions_tls=tls["tls"], sessions_plaintext=tls["plaintext"], refused_for_tls=len(refused_tls),
        examples=plaintext)

    # SC-28: masking counts by column and detector.
    masking: dict[str, dict[str, Any]] = {}
    for event in by_type["command.masked"]:
        for item in event.get("maskings") or []:
            key = f"{item.get('column')}|{item.get('detector')}"
            row = masking.setdefault(key, {"column": item.get("column"), "detector": item.get("detector"),
                                           "count": 0, "results": 0, "examples": []})
            row["count"] += int(item.get("count") or 0)
            row["results"] += 1
            _add_example(row["examples"], event)
    masked_values = sum(r["count"] for r in masking.values())
    out["SC-28"] = _control(
        SATISFIED if masking else NO_DATA,
        f"{masked_values} values masked in {len(by_type['command.masked'])} results; audit segments sealed "
        "read-only and signed" if masking else "no masked results in period",
        masked_results=len(by_type["command.masked"]), masked_values=masked_values,
        by_column=sorted(masking.values(), key=lambda r: (str(r["column"]), str(r["detector"]))))

    # IR-4: aborted / truncated / recovered sessions and refusals.
    aborted = by_type["session.aborted"] + by_type["session.backend_lost"]
    recovered = [e for e in by_type["session.ended"] if e.get("recovered")]
    truncated = [f.message for f in report.findings if f.kind == "truncated_session"]
    ir_examples: list = []
    for event in aborted + recovered + by_type["session.refused"]:
        _add_example(ir_examples, event, type=event.get("type"))
    out["IR-4"] = _control(
        SATISFIED if events else NO_DATA,
        (f"{len(aborted)} aborted, {len(truncated)} truncated, {len(recovered)} recovered sessions; "
         f"{len(by_type['session.refused'])} refused sessions and {len(denials)} refused statements recorded"
         if events else "no events in period"),
        aborted=len(aborted), truncated=truncated, recovered=len(recovered),
        refused_sessions=len(by_type["session.refused"]), refused_statements=len(denials),
        backend_failed=len(by_type["session.backend_failed"]), examples=ir_examples)

    # CM-3: policy changes with hashes; every decision names a loaded bundle.
    loads = [{"time": e.get("time"), "event": e.get("id"), "gateway": e.get("gateway"), "policy": e.get("policy"),
              "source": e.get("source")} for e in by_type["policy.loaded"]]
    load_failures = [{"time": e.get("time"), "event": e.get("id"), "gateway": e.get("gateway"),
                      "source": e.get("source"), "error": e.get("error")} for e in by_type["policy.load_failed"]]
    used = Counter(str(e.get("policy")) for e in decided)
    unknown = sorted(p for p in used if p not in all_policies)
    out["CM-3"] = _control(
        NO_DATA if not (loads or load_failures or decided) else (NOT_SATISFIED if unknown else SATISFIED),
        ("no policy changes or decisions in period" if not (loads or load_failures or decided) else
         f"decisions by {len(unknown)} policy bundles never recorded as loaded" if unknown else
         f"{len(loads)} policy loads and {len(load_failures)} failed loads; every decision names a loaded bundle"),
        loaded=loads, load_failed=load_failures, decisions_by_policy=dict(used), unknown_policies=unknown)
    return {control: out[control] for control in CONTROLS}


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
    verification = package["verification"]
    return {"assessment-results": {
        "uuid": str(uuid.uuid4()),
        "metadata": {"title": "wardgate evidence export", "last-modified": now, "version": str(FORMAT_VERSION),
                     "oscal-version": OSCAL_VERSION,
                     "remarks": f"audit trail verification: {verification['summary']}"},
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


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;
vertical-align:top;font-size:.9em}th{background:#f3f3f3}.satisfied{color:#176b1c}.not-satisfied{color:#b00020}
.no-data{color:#777}.banner{padding:1em;border-radius:6px;font-size:1.2em;margin-bottom:1.5em}
.ok{background:#e6f4ea;border:2px solid #176b1c}.bad{background:#fde7e9;border:2px solid #b00020}code{font-size:.85em}"""


def _cell(value: Any) -> str:
    if isinstance(value, dict) and "session" in value and "event" in value:
        return (f'<a href="#session-{html.escape(str(value["session"]))}">{html.escape(str(value["event"]))}</a>'
                + "".join(f" {html.escape(k)}={html.escape(str(v))}" for k, v in value.items()
                          if k not in ("session", "event", "time")))
    if isinstance(value, list):
        return "<br>".join(_cell(v) for v in value) if value else "—"
    if isinstance(value, dict):
        return "<br>".join(f"{html.escape(str(k))}: {_cell(v)}" for k, v in value.items()) if value else "—"
    return html.escape("—" if value is None else str(value))


def _html(package: dict[str, Any], sessions: dict[str, dict[str, Any]]) -> str:
    verification = package["verification"]
    ok = verification["ok"]
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>wardgate evidence "
             f"{html.escape(str(package['period']['since']))} – {html.escape(str(package['period']['until']))}"
             f"</title><style>{_CSS}</style></head><body>",
             "<h1>wardgate evidence report</h1>",
             f"<div class='banner {'ok' if ok else 'bad'}' id=verification><strong>Audit trail verification: "
             f"{'PASSED' if ok else 'FAILED'}</strong><br>{html.escape(verification['summary'])}"]
    for finding in verification["findings"]:
        parts.append(f"<br><code>{html.escape(finding['level'])} {html.escape(finding['kind'])}: "
                     f"{html.escape(finding['message'])}</code>")
    parts.append("</div>")
    period = package["period"]
    parts.append(f"<p>Trail <code>{html.escape(package['trail'])}</code>; period {html.escape(str(period['since']))}"
                 f" to {html.escape(str(period['until']))}; generated {html.escape(package['generated_at'])}.</p>")
    parts.append("<h2>Summary</h2><table><tr><th>Control</th><th>Title</th><th>Status</th><th>Reason</th></tr>")
    for control, data in package["controls"].items():
        parts.append(f"<tr><td><a href='#{control}'>{control}</a></td><td>{html.escape(TITLES[control])}</td>"
                     f"<td class='{data['status']}'>{data['status']}</td><td>{html.escape(data['reason'])}</td></tr>")
    parts.append("</table>")
    for control, data in package["controls"].items():
        parts.append(f"<h2 id='{control}'>{control} {html.escape(TITLES[control])} — "
                     f"<span class='{data['status']}'>{data['status']}</span></h2><p>{html.escape(data['reason'])}</p>"
                     "<table><tr><th>Evidence</th><th>Value</th></tr>")
        for key, value in data.items():
            if key in ("status", "reason"):
                continue
            parts.append(f"<tr><th>{html.escape(key)}</th><td>{_cell(value)}</td></tr>")
        parts.append("</table>")
    parts.append("<h2 id=sessions>Sessions</h2><table><tr><th>Session</th><th>Identity</th><th>Resource</th>"
                 "<th>Start</th><th>End</th><th>Events</th></tr>")
    for session_id, row in sorted(sessions.items(), key=lambda kv: str(kv[1]["start"])):
        parts.append(f"<tr id='session-{html.escape(session_id)}'><td><code>{html.escape(session_id)}</code></td>"
                     f"<td>{html.escape(str(row['identity']))}</td><td>{html.escape(str(row['resource']))}</td>"
                     f"<td>{html.escape(str(row['start']))}</td><td>{html.escape(str(row['end']))}</td>"
                     f"<td>{row['events']}</td></tr>")
    parts.append("</table></body></html>\n")
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
    _, events, all_policies = _window_events(trail, since_n, until_n)
    digests = _window_digests(trail, since_n, until_n)
    controls = _controls(events, report, digests, all_policies)
    sessions: dict[str, dict[str, Any]] = {}
    for event in events:
        row = sessions.setdefault(str(event.get("session")), {"identity": "(unauthenticated)", "resource": None,
                                                               "start": event.get("time"), "end": None, "events": 0})
        row["events"] += 1
        row["end"] = event.get("time")
        row["resource"] = row["resource"] or event.get("resource")
        if event.get("identity"):
            row["identity"] = _identity(event)
    package = {
        "format": "wardgate-evidence", "v": FORMAT_VERSION, "generated_at": _now(),
        "trail": trail_label or str(trail),
        "period": {"since": since_n, "until": until_n,
                   "first_event": events[0].get("time") if events else None,
                   "last_event": events[-1].get("time") if events else None},
        "verification": report.as_dict(),
        "summary": dict(Counter(c["status"] for c in controls.values())),
        "controls": controls,
        "sessions": sessions,
    }
    out.mkdir(parents=True, exist_ok=True)
    files = {
        EVIDENCE_FILE: json.dumps(package, indent=2, ensure_ascii=False, default=str).encode(),
        REPORT_FILE: _html(package, sessions).encode(),
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
