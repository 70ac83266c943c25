"""ApprovalService against the embedded backends (SQLite decision store, in-process queue)."""

from __future__ import annotations

import json
import threading

import pytest

from approvals_helpers import ALICE, BOB, CAROL, DAVE, hold, person, roles_of
from wardgate.adapters.local import SqliteDecisionStore
from wardgate.approvals import ApprovalRefused, ApprovalService, command_hash
from wardgate.approvals.records import ApprovalRequest, Outcome, Vote, instant
from wardgate.core.ports import StoreUnavailable


# -- command hash ---------------------------------------------------------------------------------


def test_command_hash_separates_every_boundary():
    base = command_hash("SELECT $1, $2", ["ab", "c"])
    assert base != command_hash("SELECT $1, $2", ["a", "bc"])      # parameter boundary
    assert base != command_hash("SELECT $1, $2ab", ["c"])          # text / parameter boundary
    assert command_hash("x", [None]) != command_hash("x", [""])    # NULL is not empty
    assert command_hash("x", []) != command_hash("x", [None])
    assert command_hash("x", ["é"]) == command_hash("x", ["é".encode()])  # str = its UTF-8 bytes
    assert base == command_hash("SELECT $1, $2", [b"ab", b"c"])
    assert len(base) == 64 and int(base, 16) >= 0


def test_records_round_trip(service, clock):
    request = hold(service)
    assert ApprovalRequest.from_record(json.loads(json.dumps(request.to_record()))) == request
    vote = Vote(request.id, BOB.audit_view(), "approve", instant(clock()), "cli", "ok")
    assert Vote.from_record(vote.to_record()) == vote
    outcome = Outcome(request.id, "approved", instant(clock()), (BOB.audit_view(),), "ok")
    assert Outcome.from_record(outcome.to_record()) == outcome


# -- requests -------------------------------------------------------------------------------------


def test_request_is_stored_then_announced(service, store, queue, clock):
    request = hold(service, timeout=300)
    record = store.get(f"approval/{request.id}/request")
    assert record["requester"]["subject"] == "alice"
    assert record["statement"] == "ALTER TABLE orders ADD c int"
    assert record["command_hash"] == command_hash("ALTER TABLE orders ADD c int", [])
    assert record["session_id"] == "s-1" and record["rule"] == "ddl-needs-review"
    # The rule's controls plus the approval's own evidence.
    assert {"AC-3", "CM-3", "AC-5", "AC-6"} <= set(record["controls"])
    assert request.deadline == pytest.approx(clock() + 300, abs=1e-3)
    [message] = queue.receive(10)
    body = json.loads(message.body)
    assert body["type"] == "approval.requested" and body["id"] == request.id
    assert body["request"]["id"] == request.id
    assert service.pending() == [request]
    assert request.id in service.notice_text(request) and "wardgate approvals approve" in service.notice_text(request)


def test_bad_request_arguments_are_named(service):
    with pytest.raises(ValueError, match="scope"):
        service.request_statement(ALICE, session_id="s", resource="r", statement="x", parameters=[],
                                  command_hash=command_hash("x", []), rule="r", controls=[], approvers=["dba"],
                                  quorum=1, scope="forever", scope_seconds=None, timeout_seconds=60)
    with pytest.raises(ValueError, match="approver"):
        hold(service, approvers=())
    with pytest.raises(ValueError, match="reason"):
        service.request_grant(ALICE, resource="orders", role="admin", duration_seconds=60, reason=" ",
                              approvers=["dba"], timeout_seconds=60)


class _BrokenQueue:
    url = "memory://broken"

    def send(self, body, attributes=None):
        raise ConnectionError("queue is down")


def test_queue_failure_keeps_the_request_and_reannounces(store, clock, queue):
    broken = ApprovalService(store, _BrokenQueue(), roles_of=roles_of, clock=clock)
    request = hold(broken)
    assert store.get(f"approval/{request.id}/request") is not None
    assert "queue is down" in store.get(f"approval/{request.id}/announce-failed")["error"]
    healed = ApprovalService(store, queue, roles_of=roles_of, clock=clock)
    assert healed.reannounce_pending() == 1
    [message] = queue.receive(10)
    assert json.loads(message.body)["id"] == request.id


def test_store_failure_refuses_fail_closed(tmp_path, clock, queue):
    store = SqliteDecisionStore(f"sqlite:///{tmp_path}/d.db")
    service = ApprovalService(store, queue, roles_of=roles_of, clock=clock)
    # Break the real store: its file is replaced by a directory, so SQLite cannot open it again.
    store._local.db.close()
    store._local.db = None
    for path in tmp_path.glob("d.db*"):
        path.unlink()
    (tmp_path / "d.db").mkdir()
    with pytest.raises(StoreUnavailable):
        hold(service)
    assert queue.receive(10) == []  # nothing announced that is not stored


# -- decisions ------------------------------------------------------------------------------------


def test_approval_by_another_identity_decides(service):
    request = hold(service)
    outcome = service.decide(request.id, BOB, "approve", "looks fine")
    assert outcome.approved and [b["subject"] for b in outcome.by] == ["bob"]
    assert service.outcome(request.id) == outcome
    assert service.pending() == []
    _, votes, _ = service.get(request.id)
    assert [(v.approver["subject"], v.verdict, v.via) for v in votes] == [("bob", "approve", "cli")]


def test_self_approval_is_refused(service):
    request = hold(service, approvers=("developers",))
    with pytest.raises(ApprovalRefused, match=r"self-approval is not allowed \(AC-5\)") as refused:
        service.decide(request.id, ALICE, "approve")
    assert refused.value.code == "self_approval"
    assert service.outcome(request.id) is None


def test_non_approver_is_refused_naming_the_groups(service):
    request = hold(service)
    with pytest.raises(ApprovalRefused, match="must hold one of dba") as refused:
        service.decide(request.id, DAVE, "approve")
    assert refused.value.code == "not_approver"


def test_quorum_of_two_needs_two_distinct_approvers(service):
    request = hold(service, quorum=2)
    assert service.decide(request.id, BOB, "approve") is None
    with pytest.raises(ApprovalRefused, match="already voted") as refused:
        service.decide(request.id, BOB, "approve")
    assert refused.value.code == "already_voted"
    assert service.outcome(request.id) is None
    outcome = service.decide(request.id, CAROL, "approve")
    assert outcome.approved and {b["subject"] for b in outcome.by} == {"bob", "carol"}


def test_deny_wins_immediately_and_later_votes_are_refused(service):
    request = hold(service, quorum=2)
    service.decide(request.id, BOB, "approve")
    outcome = service.decide(request.id, CAROL, "deny", "not during business hours")
    assert outcome.verdict == "denied" and outcome.reason == "not during business hours"
    assert "denied by carol" in outcome.message()
    with pytest.raises(ApprovalRefused, match="already denied by carol") as refused:
        service.decide(request.id, person("erin", "dba"), "approve")
    assert refused.value.code == "decided"


def test_decision_after_deadline_is_refused_and_expires(service, clock):
    request = hold(service, timeout=60)
    clock.advance(61)
    with pytest.raises(ApprovalRefused, match="expired") as refused:
        service.decide(request.id, BOB, "approve")
    assert refused.value.code == "expired"
    assert service.outcome(request.id).verdict == "expired"


def test_unknown_and_malformed_ids(service):
    with pytest.raises(ApprovalRefused, match="no approval request apr-0") as refused:
        service.decide("apr-0", BOB, "approve")
    assert refused.value.code == "unknown"
    with pytest.raises(ApprovalRefused, match="not an approval request id"):
        service.decide("../../etc", BOB, "approve")
    with pytest.raises(ApprovalRefused, match="verdict"):
        service.decide(hold(service).id, BOB, "maybe")


def test_withdraw_and_expire_return_the_single_outcome(service):
    request = hold(service)
    withdrawn = service.withdraw(request.id, "client cancelled")
    assert withdrawn.verdict == "withdrawn"
    assert service.expire(request.id) == withdrawn  # the loser gets the winner back
    with pytest.raises(ApprovalRefused, match="already withdrawn"):
        service.decide(request.id, BOB, "approve")


def test_approve_racing_expire_yields_exactly_one_outcome(tmp_path, queue, clock):
    """Two processes' worth of writers (separate SQLite connections) race; one outcome survives."""
    for round_ in range(15):
        store = SqliteDecisionStore(f"sqlite:///{tmp_path}/race{round_}.db")
        service = ApprovalService(store, queue, roles_of=roles_of, clock=clock)
        request = hold(service)
        results: dict[str, object] = {}
        barrier = threading.Barrier(2)

        def approve():
            barrier.wait()
            try:
                results["approve"] = service.decide(request.id, BOB, "approve")
            except ApprovalRefused as exc:
                results["approve"] = exc

        def expire():
            barrier.wait()
            results["expire"] = service.expire(request.id)

        threads = [threading.Thread(target=approve), threading.Thread(target=expire)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        outcomes = [key for key, _ in store.list(f"approval/{request.id}/") if key.endswith("/outcome")]
        assert len(outcomes) == 1
        final = service.outcome(request.id)
        assert results["expire"] == final  # the gateway sees the same outcome the store holds
        if final.approved:
            assert results["approve"] == final
        else:
            assert isinstance(results["approve"], ApprovalRefused) or results["approve"] == final


# -- JIT grants -----------------------------------------------------------------------------------


def test_grant_is_active_after_approval_until_it_expires(service, clock):
    request = service.request_grant(ALICE, resource="orders", role="admin", duration_seconds=1800,
                                    reason="incident 42", approvers=["dba"], timeout_seconds=600)
    assert service.active_grants(ALICE, "orders") == []  # not before approval
    clock.advance(10)
    service.decide(request.id, BOB, "approve")
    [grant] = service.active_grants(ALICE, "orders")
    assert grant.role == "admin" and grant.expires_at == pytest.approx(clock() + 1800, abs=1e-3)
    assert grant.approved_by == (f"bob ({BOB.issuer})",)
    assert service.active_grants(ALICE, "billing") == []  # only for the resource asked for
    assert service.active_grants(DAVE, "orders") == []     # only for the requester
    clock.advance(1799)
    assert len(service.active_grants(ALICE, "orders")) == 1
    clock.advance(2)
    assert service.active_grants(ALICE, "orders") == []


def test_denied_grant_never_becomes_active(service):
    request = service.request_grant(ALICE, resource="orders", role="admin", duration_seconds=60,
                                    reason="curious", approvers=["dba"], timeout_seconds=600)
    service.decide(request.id, BOB, "deny", "no")
    assert service.active_grants(ALICE, None) == []


