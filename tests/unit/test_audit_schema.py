"""The published audit format (``docs/audit-event.schema.json``, ``docs/audit-digest.schema.json``,
``docs/audit-format.md``) is exact and keeps up with the code.

GIVEN the schemas, WHEN they are checked against the JSON Schema 2020-12 meta-schema and against
hand-broken events, THEN they are valid and refuse a missing field, a wrong type, an unknown field
and an unknown event type; AND every event type the code emits (found by scanning the source, so a
new one without a schema entry fails here) has a schema entry and a section in the reference, with
every field the code writes for it, and the code lists the schema repeats (authentication failure
reasons, statement classes, request ids) match the code's own.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import json
import re
import types
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from wardgate.approvals.records import new_request_id
from wardgate.core.audit import (EVENT_FORMAT_VERSION, FileSpool, Recorder, SessionLog, end_crashed_sessions,
                                 read_segment)
from wardgate.core.identity import AuthenticationError
from wardgate.core.integrity import DIGEST_FORMAT_VERSION, LocalEd25519Signer, build_digest
from wardgate.core.model import Approval, Command, Decision, Principal, Verdict
from wardgate.core.policy import AllowAll
from wardgate.core.session import DecisionCore
from wardgate.core.sqlclass import CLASSES

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "gateway_container" / "wardgate"
EVENT_SCHEMA = json.loads((REPO / "docs" / "audit-event.schema.json").read_text())
DIGEST_SCHEMA = json.loads((REPO / "docs" / "audit-digest.schema.json").read_text())
REFERENCE = (REPO / "docs" / "audit-format.md").read_text()
ENVELOPES = ("sessionEnvelope", "gatewayEnvelope")
EMITTERS = ("emit", "append_event", "note")  # SessionLog.emit, EventChain.append_event (decided/result), Session.note, DecisionCore.note

SESSION = "001a209b8087d6c2489fea7a0"
IDENTITY = {"issuer": "https://token.actions.githubusercontent.com", "subject": "repo:acme/app:ref:refs/heads/main"}


def _envelope(event_type: str, seq: int = 2, identity: Any = IDENTITY) -> dict[str, Any]:
    return {"id": f"{SESSION}-{seq:06d}", "time": "2026-11-23T18:43:05.496711Z", "type": event_type, "seq": seq,
            "v": 1, "session": SESSION, "gateway": "46081b88f5a7", "protocol": "postgres",
            "resource": "orders-prod", "identity": identity, "prev_hash": "5" * 64}


# One valid example of each event type the live test cannot cause (and a few it can), as the code
# writes them; each is broken by hand below.
EXAMPLES: dict[str, dict[str, Any]] = {
    "command.decided": {**_envelope("command.decided"), "kind": "query", "statement": "DELETE FROM orders WHERE id = 7",
                        "statement_name": None, "fingerprint": "7141a8e85079f833", "classes": ["write"],
                        "tables": ["orders"], "roles": ["agent"], "decision": "review", "rule": "review-prod-changes",
                        "message": "DELETE needs approval", "mask": None, "policy": "sha256:" + "a" * 64,
                        "controls": ["AC-3", "AC-5", "AC-6"]},
    "approval.failed": {**_envelope("approval.failed"), "command": f"{SESSION}-000004",
                        "error": "decision store unavailable: table not found", "controls": ["AC-3", "AU-5"]},
    "approval.store_unavailable": {**_envelope("approval.store_unavailable"), "request": "apr-" + "0" * 20,
                                   "error": "throttled", "controls": ["AC-3", "AU-5"]},
    "access.grants_unavailable": {**_envelope("access.grants_unavailable"), "error": "timed out",
                                  "controls": ["AC-2"]},
    "session.refused": {**_envelope("session.refused", identity=None), "reason": "tls_handshake_failed",
                        "controls": ["SC-8"]},
    "session.ended": {**_envelope("session.ended"), "reason": "the gateway stopped without ending this session",
                      "recovered": True, "last_event": f"{SESSION}-000001", "controls": ["AU-5", "IR-4"]},
    "approval.decided": {**_envelope("approval.decided"), "command": f"{SESSION}-000004",
                         "request": "apr-" + "1" * 20, "verdict": "expired", "by": [], "reason": None, "at": None,
                         "controls": ["AC-5", "AU-10"]},
    "policy.loaded": {"id": "gateway-46081b88f5a7-000001", "time": "2026-11-23T18:43:05.341453Z",
                      "type": "policy.loaded", "seq": 1, "policy": "builtin:allow-all", "source": "builtin",
                      "controls": ["CM-2", "CM-3", "CM-6"], "v": 1, "session": "gateway-46081b88f5a7",
                      "gateway": "46081b88f5a7", "identity": None, "prev_hash": "0" * 64},
}


@pytest.fixture(scope="module")
def events() -> Draft202012Validator:
    return Draft202012Validator(EVENT_SCHEMA)


def _errors(validator: Draft202012Validator, instance: Any) -> list[str]:
    """Every error message, with those of the branches of a failed oneOf/anyOf (which say what is missing)."""
    def flatten(errors):
        for error in errors:
            yield error.message
            yield from flatten(error.context or ())
    return list(flatten(validator.iter_errors(instance)))


# --- the schemas themselves ------------------------------------------------------------------------


def test_both_schemas_are_valid_draft_2020_12():
    Draft202012Validator.check_schema(EVENT_SCHEMA)
    Draft202012Validator.check_schema(DIGEST_SCHEMA)
    assert EVENT_SCHEMA["$schema"] == DIGEST_SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_versions_match_the_code():
    for envelope in ENVELOPES:
        assert EVENT_SCHEMA["$defs"][envelope]["properties"]["v"]["const"] == EVENT_FORMAT_VERSION
    assert DIGEST_SCHEMA["properties"]["v"]["const"] == DIGEST_FORMAT_VERSION


@pytest.mark.parametrize("event_type", sorted(EXAMPLES))
def test_the_examples_are_valid(events, event_type):
    assert _errors(events, EXAMPLES[event_type]) == []


# --- hand-broken events fail, saying what is wrong --------------------------------------------------


def test_an_unknown_event_type_fails(events):
    event = {**copy.deepcopy(EXAMPLES["approval.failed"]), "type": "approval.maybe"}
    assert any("approval.maybe" in message and "is not one of" in message for message in _errors(events, event))
    assert _errors(events, {"id": "x"}) == ["'type' is a required property"]  # nothing else: no noise


@pytest.mark.parametrize("event_type,field", [
    ("command.decided", "rule"), ("command.decided", "policy"), ("command.decided", "prev_hash"),
    ("approval.decided", "by"), ("approval.failed", "controls"), ("policy.loaded", "identity"),
    ("session.ended", "last_event"),
])
def test_a_missing_field_fails(events, event_type, field):
    event = copy.deepcopy(EXAMPLES[event_type])
    del event[field]
    assert any(repr(field) in message for message in _errors(events, event)), _errors(events, event)


@pytest.mark.parametrize("event_type,field,value", [
    ("command.decided", "decision", "maybe"),            # not a verdict
    ("command.decided", "classes", "write"),             # a string, not a list
    ("command.decided", "classes", ["writes"]),          # not a statement class
    ("command.decided", "seq", "2"),                     # a string, not an integer
    ("command.decided", "prev_hash", "0" * 63),          # not a SHA-256
    ("command.decided", "identity", None),               # decided before authentication: impossible
    ("command.decided", "policy", "v2"),                 # not a bundle hash
    ("command.decided", "controls", ["AC3"]),            # not a control id
    ("command.decided", "time", "2026-11-23 18:43:05"),  # not RFC 3339 UTC
    ("approval.decided", "verdict", "ok"),
    ("approval.decided", "at", "yesterday"),
    ("approval.store_unavailable", "request", "12345"),
    ("session.refused", "identity", IDENTITY),           # refused before authentication
    ("session.refused", "controls", ["AU-2"]),           # not what the code records for it
    ("policy.loaded", "session", SESSION),                # a gateway fact in a client session
])
def test_a_wrong_value_fails(events, event_type, field, value):
    event = {**copy.deepcopy(EXAMPLES[event_type]), field: value}
    assert _errors(events, event), f"{event_type} with {field}={value!r} was accepted"


def test_unknown_fields_fail_but_client_chosen_maps_are_open(events):
    assert any("'surprise' was unexpected" in m
               for m in _errors(events, {**EXAMPLES["access.grants_unavailable"], "surprise": 1}))
    assert _errors(events, {**EXAMPLES["policy.loaded"], "resource": "orders-prod"})  # gateway chain: none
    started = {**_envelope("session.started", seq=1, identity=None), "peer": "127.0.0.1:5", "tls": True,
               "client": {"claimed_user": "a", "application_name": None, "agent": {"run_id": "9", "model": "m"}},
               "controls": ["AU-2", "AU-3", "AU-12"]}
    assert _errors(events, started) == []
    started["client"]["agent"]["prompt_sha"] = 5  # agent context values are strings on the wire
    assert _errors(events, started)


def test_session_ended_is_one_of_its_two_shapes(events):
    normal = {**_envelope("session.ended"), "reason": "client disconnected", "commands": 3, "denied": 1,
              "duration_s": 0.5, "controls": ["AU-2", "AU-12"]}
    assert _errors(events, normal) == []
    assert _errors(events, {**normal, "recovered": True})  # both shapes at once
    assert _errors(events, {**normal, "controls": ["AU-5", "IR-4"]})  # the recovered shape's controls


# --- the code and the schema agree ------------------------------------------------------------------


def _emit_sites() -> list[tuple[str, str, set[str] | None, ast.AST | None, str]]:
    """Every ``.emit("type", {...})`` / ``.append_event("type", …)`` / ``.note("type", k=v)`` in the package:
    (type, file:line, literal field names or None when not literal, controls node, call kind)."""
    sites = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in EMITTERS and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            fields: set[str] | None = None
            controls = None
            if node.func.attr == "note":
                fields = {k.arg for k in node.keywords if k.arg}
                controls = next((k.value for k in node.keywords if k.arg == "controls"), None)
            elif node.func.attr == "emit" and len(node.args) > 1 and isinstance(node.args[1], ast.Dict) \
                    and all(isinstance(k, ast.Constant) for k in node.args[1].keys):
                fields = {k.value for k in node.args[1].keys}
                controls = next((v for k, v in zip(node.args[1].keys, node.args[1].values)
                                 if k.value == "controls"), None)
            sites.append((node.args[0].value, where, fields, controls, node.func.attr))
    return sites


SITES = _emit_sites()
SCHEMA_TYPES = set(EVENT_SCHEMA["properties"]["type"]["enum"])
OWN_DEFS = {name for name in EVENT_SCHEMA["$defs"] if "." in name}


def test_the_source_scan_finds_the_emit_calls():
    # Guards the scan itself: if these are not found, the checks below would pass vacuously.
    found = {event_type for event_type, *_ in SITES}
    assert {"session.started", "command.decided", "command.result", "approval.decided", "policy.load_failed",
            "session.backend_lost"} <= found
    assert any(kind == "append_event" for *_, kind in SITES) and any(kind == "note" for *_, kind in SITES)


def test_every_emitted_event_type_has_a_schema_entry_and_a_section():
    emitted = {event_type for event_type, *_ in SITES}
    assert emitted - SCHEMA_TYPES == set(), "emitted but not in docs/audit-event.schema.json"
    assert emitted - OWN_DEFS == set(), "emitted but without a $defs entry"
    assert SCHEMA_TYPES == OWN_DEFS, "the type enum and the $defs entries differ"
    assert SCHEMA_TYPES - emitted == set(), "in the schema but no longer emitted: remove or mark it"
    for event_type in sorted(SCHEMA_TYPES):
        assert re.search(rf"^### `{re.escape(event_type)}`", REFERENCE, re.M), \
            f"docs/audit-format.md has no section for {event_type}"


def _own_properties(event_type: str) -> set[str]:
    entry = EVENT_SCHEMA["$defs"][event_type]
    envelope = entry["allOf"][0]["$ref"].rsplit("/", 1)[1]
    return set(entry["properties"]) - set(EVENT_SCHEMA["$defs"][envelope]["properties"])


@pytest.mark.parametrize("site", [s for s in SITES if s[2] is not None], ids=lambda s: f"{s[0]}@{s[1]}")
def test_every_field_the_code_writes_is_in_the_schema(site):
    event_type, where, fields, controls, _ = site
    entry = EVENT_SCHEMA["$defs"][event_type]
    assert fields - _own_properties(event_type) == set(), f"{where} writes fields the schema lacks"
    assert set(entry["required"]) - fields == set(), f"{where} omits fields the schema requires"
    if isinstance(controls, (ast.List, ast.Tuple)) and all(isinstance(c, ast.Constant) for c in controls.elts):
        written = [c.value for c in controls.elts]
        accepted = _accepted_controls(event_type)
        assert accepted is None or written in accepted, \
            f"{where} records controls {written}; the schema accepts {accepted} for {event_type}"


def _accepted_controls(event_type: str) -> list[list[str]] | None:
    """The controls lists the schema accepts for an event type (None: any list of control ids)."""
    entry = EVENT_SCHEMA["$defs"][event_type]
    schemas = [entry["properties"].get("controls")] + [branch.get("properties", {}).get("controls")
                                                      for branch in entry.get("oneOf", [])]
    accepted = []
    for schema in schemas:
        if isinstance(schema, dict) and "const" in schema:
            accepted.append(schema["const"])
        elif isinstance(schema, dict) and "enum" in schema:
            accepted.extend(schema["enum"])
        elif isinstance(schema, dict):
            return None
    return accepted


def test_code_lists_repeated_in_the_schema_match_the_code():
    own = EVENT_SCHEMA["$defs"]
    assert set(own["session.authentication_failed"]["properties"]["reason"]["enum"]) == AuthenticationError.REASONS
    assert tuple(own["command.decided"]["properties"]["classes"]["items"]["enum"]) == CLASSES
    pattern = own["requestId"]["pattern"]
    assert all(re.fullmatch(pattern.strip("^$"), new_request_id()) for _ in range(20))


# --- digests --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digests() -> Draft202012Validator:
    return Draft202012Validator(DIGEST_SCHEMA)


def test_a_digest_the_code_builds_validates_and_broken_ones_fail(digests, tmp_path):
    signer = LocalEd25519Signer(tmp_path / "key.pem")
    segment = tmp_path / "20261123T184305Z-46081b88f5a7-000002.jsonl"
    line = json.dumps({**EXAMPLES["approval.failed"]}, separators=(",", ":")).encode() + b"\n"
    record = build_digest(segment, line, gateway="46081b88f5a7", signer=signer,
                          previous_name="20261123T184305Z-46081b88f5a7-000001.jsonl.digest.json",
                          previous_sha256="c" * 64, signed_at="2026-11-23T18:45:00.000001Z",
                          recovered=True, sealed_by="0123456789ab")
    assert _errors(digests, record) == []
    empty = build_digest(segment, b"", gateway="46081b88f5a7", signer=signer, previous_name=None,
                         previous_sha256=None, signed_at="2026-11-23T18:45:00.000001Z")
    assert _errors(digests, empty) == []

    assert _errors(digests, {k: v for k, v in record.items() if k != "signature"})
    assert _errors(digests, {**record, "algorithm": "RSA"})
    assert _errors(digests, {**record, "events": "1"})
    assert _errors(digests, {**record, "comment": "unsigned?"})  # closed: every field is signed
    assert _errors(digests, {**record, "previous_digest_sha256": None})  # names a previous, no hash
    assert _errors(digests, {k: v for k, v in record.items() if k != "sealed_by"})  # recovered by whom?
    broken_sessions = copy.deepcopy(record)
    next(iter(broken_sessions["sessions"].values()))["ended"] = "yes"
    assert _errors(digests, broken_sessions)
    assert _errors(digests, {**record, "sessions": {"not-a-session": next(iter(record["sessions"].values()))}})


# --- events as the core writes them ---------------------------------------------------------------


def _written_events(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(directory.glob("*.jsonl")) for line in read_segment(path)]


def test_events_the_decision_core_writes_validate(events, tmp_path):
    """The per-statement events are serialized by hand-tuned code (``EventChain.decided`` / ``result``): the real core,
    on a real file sink, without a gateway around it."""
    recorder = Recorder(FileSpool(tmp_path / "audit", "46081b88f5a7"))
    core = DecisionCore(verifier=None, policy=AllowAll(), recorder=recorder, gateway_id="46081b88f5a7")
    core.set_policy(AllowAll(), source="builtin")
    session = core.open_session(protocol="postgres", resource="orders-dev", peer="127.0.0.1:5000", tls=True,
                                client={"claimed_user": "ci", "application_name": None, "agent": {"run_id": "7"}})
    principal = Principal("https://issuer.example", "repo:acme/app", ("ci",), {"repository": "acme/app"})
    session.principal = principal
    session.log.set_identity(principal)
    for command in (Command("postgres", "query", "SELECT 1"),
                    Command("postgres", "parse", "SELEC 1", statement_name="s1"),
                    Command("postgres", "function_call", "fast-path function call oid=1", language="opaque")):
        decision, event_id = session.decide(command)
        session.result(event_id, "ok" if decision.verdict == "allow" else "refused", rows=1, tag="SELECT 1",
                       error=None if decision.verdict == "allow" else {"code": "42501", "message": decision.message},
                       seconds=0.001)
    session.end("client disconnected")
    written = _written_events(tmp_path / "audit")
    assert [e["type"] for e in written if e["session"] == session.id] == [
        "session.started", "command.decided", "command.result", "command.decided", "command.result",
        "command.decided", "command.result", "session.ended"]
    for event in written:
        assert _errors(events, event) == [], event


def test_the_session_end_written_after_a_crash_validates(events, tmp_path):
    directory = tmp_path / "audit"
    dead = Recorder(FileSpool(directory, "aaaaaaaaaaaa"))
    log = SessionLog(dead, "001a209b8087d6c2489fea7a0", {"gateway": "aaaaaaaaaaaa", "protocol": "postgres",
                                                         "resource": "orders-prod"})
    log.emit("session.started", {"peer": "10.0.0.5:41000", "tls": True,
                                 "client": {"claimed_user": "x", "application_name": None, "agent": None},
                                 "controls": ["AU-2", "AU-3", "AU-12"]})
    dead.commit()
    dead.spool.reset_after_error()  # the process dies: its file lock goes, the segment stays unsealed
    spool = FileSpool(directory, "bbbbbbbbbbbb")  # the next gateway start
    recorder = Recorder(spool)
    assert end_crashed_sessions(recorder, spool.recover(), "bbbbbbbbbbbb") == ["001a209b8087d6c2489fea7a0"]
    recorder.commit()
    recovered = [e for e in _written_events(directory) if e.get("recovered")]
    assert recovered and recovered[0]["last_event"] == "001a209b8087d6c2489fea7a0-000001"
    for event in _written_events(directory):
        assert _errors(events, event) == [], event


class _UnreachableStore:
    """An approval broker whose store stores the request, then cannot be read or written."""

    def request_statement(self, requester, **fields):
        return types.SimpleNamespace(id="apr-" + "1" * 20)

    def outcome(self, request_id):
        raise OSError("store throttled")

    def expire(self, request_id):
        raise OSError("store throttled")

    def withdraw(self, request_id, reason):
        raise OSError("store throttled")

    def active_grants(self, principal, resource):
        return ()


def test_a_held_command_whose_store_fails_is_refused_with_events_that_validate(events, tmp_path):
    recorder = Recorder(FileSpool(tmp_path / "audit", "46081b88f5a7"))
    core = DecisionCore(verifier=None, policy=AllowAll(), recorder=recorder, gateway_id="46081b88f5a7",
                        approvals=_UnreachableStore())
    session = core.open_session(protocol="postgres", resource="orders-prod", peer="127.0.0.1:5000", tls=True,
                                client={"claimed_user": "ci", "application_name": None, "agent": None})
    principal = Principal("https://issuer.example", "repo:acme/app", ("ci",), {})
    session.principal = principal
    session.log.set_identity(principal)
    review = Decision(Verdict.REVIEW, "review-prod-changes", "DELETE needs approval",
                      approval=Approval(("dba",), timeout=0.05))
    outcome = asyncio.run(session.await_approval(review, f"{session.id}-000002", "DELETE FROM orders"))
    assert outcome.verdict == Verdict.DENY  # never run without a recorded outcome
    recorder.commit()
    written = [e for e in _written_events(tmp_path / "audit") if e["session"] == session.id]
    failures = [e for e in written if e["type"] == "approval.store_unavailable"]
    assert failures and all(e["controls"] == ["AC-3", "AU-5"] and "store throttled" in e["error"]
                            for e in failures)
    for event in written:
        assert _errors(events, event) == [], event
    older = {k: v for k, v in failures[0].items() if k != "controls"}  # written by gateways before controls
    assert _errors(events, older) == []
