"""A session reuses an allow decision for the next statement of the same shape (a per-session memo
in ``Session.decide``). These tests pin down when it must not: a new policy, the audit trail or the
archive down, a time-dependent rule, roles that changed through a just-in-time grant. And where it
does, the recorded decision is the one the policy gives."""

from __future__ import annotations

import json
import time
import types

import pytest

from wardgate.core.audit import FileSpool, Recorder, read_segment
from wardgate.core.model import Command, Principal, Verdict
from wardgate.core.policy import parse_policy
from wardgate.core.session import DecisionCore

def _policy(name: str, rules: str, extra_roles: str = "") -> bytes:
    return (f"version: 1\nname: {name}\nroles:\n  agent: {{match: [{{groups: [ai-agents]}}]}}\n{extra_roles}"
            f"rules:\n{rules}").encode()


_AGENTS_READ = "  - {name: agents-read, effect: allow, roles: [agent], when: {classes: [read]}}\n"
READS_ALLOWED = _policy(
    "memo-reads-allowed",
    "  - {name: quarantine, effect: deny, roles: [quarantined], when: {classes: [read]}, message: quarantined}\n"
    + _AGENTS_READ,
    extra_roles="  quarantined: {match: [{groups: [nobody]}]}\n")
READS_DENIED = _policy(
    "memo-reads-denied",
    "  - {name: no-reads, effect: deny, roles: [agent], when: {classes: [read]}, message: reads are off}\n")
# Reads are allowed, except in sessions older than an hour.
READS_IN_YOUNG_SESSIONS = _policy(
    "memo-young-sessions",
    "  - {name: old-sessions, effect: deny, roles: [agent], when: {classes: [read], session_older_than: 1h},"
    " message: session too old}\n" + _AGENTS_READ)


def _session(policy: bytes, recorder: Recorder | None = None, approvals=None):
    core = DecisionCore(verifier=None, policy=parse_policy(policy), recorder=recorder or Recorder(None),
                        gateway_id="g", approvals=approvals)
    session = core.open_session(protocol="postgres", resource="orders", peer="127.0.0.1:1", tls=True, client={})
    session.principal = Principal("https://issuer.example", "agent-7", ("ai-agents",), {})
    return core, session


def _query(session, key: int):
    decision, _ = session.decide(Command("postgres", "query", f"SELECT balance FROM accounts WHERE id = {key}"))
    return decision


def test_a_new_policy_decides_the_next_statement_of_a_remembered_shape() -> None:
    core, session = _session(READS_ALLOWED)
    assert _query(session, 1).verdict is Verdict.ALLOW
    assert _query(session, 2).verdict is Verdict.ALLOW
    core.set_policy(parse_policy(READS_DENIED), source="test")
    decision = _query(session, 3)
    assert decision.verdict is Verdict.DENY and decision.rule == "no-reads"


@pytest.mark.parametrize("outage", ["trail", "archive"])
def test_an_audit_outage_refuses_a_remembered_shape(outage: str) -> None:
    core, session = _session(READS_ALLOWED)
    assert _query(session, 1).verdict is Verdict.ALLOW
    if outage == "trail":
        core.recorder.last_error = "No space left on device"
    else:
        core.refusing = "the audit archive is unreachable"
    decision = _query(session, 2)
    assert decision.verdict is Verdict.DENY and decision.rule == "builtin:audit-unavailable", decision
    if outage == "trail":
        core.recorder.last_error = None
    else:
        core.refusing = None
    assert _query(session, 3).verdict is Verdict.ALLOW


def test_a_time_dependent_allow_is_decided_again() -> None:
    _, session = _session(READS_IN_YOUNG_SESSIONS)
    assert _query(session, 1).verdict is Verdict.ALLOW
    assert _query(session, 2).verdict is Verdict.ALLOW
    session.started_at -= 2 * 3600  # the session is now two hours old
    decision = _query(session, 3)
    assert decision.verdict is Verdict.DENY and decision.rule == "old-sessions"


class _GrantStore:
    """An approval service whose just-in-time grants the test sets."""

    def __init__(self) -> None:
        self.grants: list = []

    def active_grants(self, principal, resource):
        return list(self.grants)


def test_a_grant_that_changes_the_roles_changes_the_decision_of_a_remembered_shape() -> None:
    store = _GrantStore()
    _, session = _session(READS_ALLOWED, approvals=store)
    session._grants_due = float("inf")  # grants are set by hand below (a refresh needs a running loop)
    assert _query(session, 1).verdict is Verdict.ALLOW
    assert _query(session, 2).verdict is Verdict.ALLOW
    session._grants = [types.SimpleNamespace(id="grant-1", role="quarantined", expires_at=time.time() + 60,
                                             approved_by=())]
    decision = _query(session, 3)
    assert decision.verdict is Verdict.DENY and decision.rule == "quarantine", decision


READS_ONLY_ELEVATED = _policy(
    "memo-reads-elevated",
    "  - {name: elevated-read, effect: allow, roles: [elevated], when: {classes: [read]}}\n",
    extra_roles="  elevated: {match: [{groups: [nobody]}]}\n")


def test_an_expired_grant_changes_the_decision_of_a_remembered_shape() -> None:
    store = _GrantStore()
    _, session = _session(READS_ONLY_ELEVATED, approvals=store)
    session._grants_due = float("inf")
    assert _query(session, 1).verdict is Verdict.DENY  # no rule allows reads without the grant
    grant = types.SimpleNamespace(id="grant-1", role="elevated", expires_at=time.time() + 60, approved_by=())
    session._grants = [grant]
    assert _query(session, 2).verdict is Verdict.ALLOW
    assert _query(session, 3).verdict is Verdict.ALLOW
    grant.expires_at = time.time() - 1  # the grant ran out
    assert _query(session, 4).verdict is Verdict.DENY


def test_every_statement_of_a_remembered_shape_is_recorded_with_the_policys_decision(tmp_path) -> None:
    spool = FileSpool(tmp_path / "audit", "g")
    recorder = Recorder(spool)
    core, session = _session(READS_ALLOWED, recorder=recorder)
    for key in range(1, 4):
        assert _query(session, key).verdict is Verdict.ALLOW
    recorder.commit()
    spool.close()
    events = [json.loads(line) for path in sorted((tmp_path / "audit").glob("*.jsonl"))
              for line in read_segment(path)]
    decided = [e for e in events if e["type"] == "command.decided"]
    assert [e["statement"] for e in decided] == [f"SELECT balance FROM accounts WHERE id = {k}" for k in (1, 2, 3)]
    own = {"id", "time", "seq", "statement", "prev_hash"}
    first = {k: v for k, v in decided[0].items() if k not in own}
    assert first["decision"] == "allow" and first["rule"] == "agents-read"
    assert first["policy"] == core.policy.bundle_hash
    for event in decided[1:]:
        assert {k: v for k, v in event.items() if k not in own} == first
    assert [e["seq"] for e in decided] == sorted(e["seq"] for e in decided)
    assert session.commands == 3
