"""The approval function's cloud-agnostic handler, on the embedded backends (SQLite decision store,
in-process queue), with a real HTTP receiver and the real approvals service and webhook.

GIVEN settings as the Pulumi programs set them, WHEN the gateway's request reaches the handler, THEN
it is posted once (a redelivered message is not posted again), a receiver that keeps failing leaves
the message unacknowledged and recorded, decisions made through the webhook are recorded create-once,
and a missing or malformed setting is refused naming the variable.
"""

from __future__ import annotations

import json
import uuid

import pytest

from wardgate_testkit import generic_signed

from functions.approval.handler import ApprovalFunction, ApprovalSettings, SettingsError, approval_function
from wardgate.adapters.local import MemoryQueue, SqliteDecisionStore
from wardgate.approvals.notify import sign_body
from wardgate.approvals.records import command_hash, outcome_key
from wardgate.approvals.service import ApprovalService
from wardgate.approvals.webhook import WebhookRequest
from wardgate.core.model import Principal

ISSUER = "https://idp.example.test"
AGENT = Principal(ISSUER, "agent-7", ("ai-agents",))
SECRET = "s3cr3t-signing-key-for-tests-0123456789"


@pytest.fixture
def env(tmp_path, monkeypatch, receiver) -> dict[str, str]:
    """The environment a deployed approval function gets, secrets behind env:// references."""
    monkeypatch.setenv("WG_TEST_SIGNING", SECRET)
    monkeypatch.setenv("WG_TEST_HOOK", receiver.url)
    values = {
        "WARDGATE_DECISION_STORE": f"sqlite://{tmp_path / 'decisions.db'}",
        "WARDGATE_APPROVAL_CHANNEL": "generic",
        "WARDGATE_SIGNING_SECRET": "env://WG_TEST_SIGNING",
        "WARDGATE_WEBHOOK_URL_SECRET": "env://WG_TEST_HOOK",
        "WARDGATE_WEBHOOK_ENDPOINT": "https://approvals.example.test",
        "WARDGATE_APPROVER_GROUPS": "dba",
        "WARDGATE_APPROVER_IDENTITIES": json.dumps({"generic:dana": {"issuer": ISSUER, "subject": "dana",
                                                                     "groups": ["dba"]},
                                                    "generic:devon": {"issuer": ISSUER, "subject": "devon",
                                                                      "groups": ["dev"]}}),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def held_request(store_url: str, queue: MemoryQueue):
    """What the gateway does when a statement is held: a stored request, announced on the queue."""
    service = ApprovalService(SqliteDecisionStore(store_url), queue, roles_of=lambda p: set(p.groups))
    statement = "ALTER TABLE orders ADD COLUMN note text"
    return service.request_statement(
        AGENT, session_id="s-1", resource="orders-prod", statement=statement, parameters=[],
        command_hash=command_hash(statement, []), rule="review-prod-changes", controls=["CM-3"],
        approvers=["dba"], quorum=1, scope="statement", scope_seconds=None, timeout_seconds=600)


def test_a_held_request_is_posted_signed_and_a_redelivery_is_not_posted_again(env, receiver):
    queue = MemoryQueue(f"memory://fn-{uuid.uuid4().hex}")
    request = held_request(env["WARDGATE_DECISION_STORE"], queue)
    [message] = queue.receive(1)
    function = approval_function()

    [result] = function.notify([message])
    assert (result.ok, result.outcome) == (True, "delivered")
    [posted] = receiver.received
    assert posted.json()["request"]["id"] == request.id
    assert "ALTER TABLE orders" in posted.json()["request"]["statement"]
    assert posted.headers["X-Wardgate-Signature"] == sign_body(SECRET.encode(), posted.headers["X-Wardgate-Timestamp"],
                                                              posted.body)

    # The same message again (the platform lost our answer): acknowledged, not posted a second time.
    [again] = function.notify([message])
    assert (again.ok, again.outcome) == (True, "duplicate")
    assert len(receiver.received) == 1


def test_a_receiver_that_keeps_failing_leaves_the_message_for_redelivery_and_records_it(env, receiver):
    queue = MemoryQueue(f"memory://fn-{uuid.uuid4().hex}")
    request = held_request(env["WARDGATE_DECISION_STORE"], queue)
    [message] = queue.receive(1)
    receiver.statuses = [503, 503, 503]
    function = ApprovalFunction(ApprovalSettings.from_environment(), max_attempts=3, sleep=lambda s: None)
    [result] = function.notify([message])
    assert not result.ok and "HTTP 503" in result.error
    assert len(receiver.received) == 3  # retried, then given up on for this delivery
    recorded = function.store.list(f"notification/{request.id}/failed/")
    assert recorded and "HTTP 503" in recorded[0][1]["error"]


def test_a_message_that_is_not_an_approval_request_fails_so_the_queue_can_dead_letter_it(env, receiver):
    from wardgate.core.ports import QueueMessage

    [result] = approval_function().notify([QueueMessage("m-1", b"\x00not json", "r", 1)])
    assert not result.ok and "not an approval request" in result.error
    assert receiver.received == []


def test_a_signed_generic_decision_is_recorded_once_and_other_identities_are_refused(env):
    queue = MemoryQueue(f"memory://fn-{uuid.uuid4().hex}")
    request = held_request(env["WARDGATE_DECISION_STORE"], queue)
    function = approval_function()

    body, headers = generic_signed(SECRET.encode(), {"request_id": request.id, "verdict": "approve",
                                                     "approver": "devon"})
    refused = function.webhook(WebhookRequest("POST", "/approvals/generic", headers, body))
    assert refused.status == 403 and "devon" in refused.json()["error"]

    body, headers = generic_signed(SECRET.encode(), {"request_id": request.id, "verdict": "approve",
                                                     "approver": "dana", "reason": "planned"})
    answer = function.webhook(WebhookRequest("POST", "/approvals/generic", headers, body))
    assert answer.status == 200 and answer.json()["outcome"]["verdict"] == "approved"
    assert SqliteDecisionStore(env["WARDGATE_DECISION_STORE"]).get(outcome_key(request.id))["verdict"] == "approved"

    forged = function.webhook(WebhookRequest("POST", "/approvals/generic", {**headers, "X-Wardgate-Signature":
                                                                            "sha256=" + "0" * 64}, body))
    assert forged.status == 401


def test_the_rest_api_refuses_every_call_without_trusted_issuers(env):
    answer = approval_function().webhook(WebhookRequest("GET", "/approvals", {"Authorization": "Bearer x.y.z"}))
    assert answer.status == 401 and "no token verifier" in answer.json()["error"]


@pytest.mark.parametrize("name, value, expected", [
    ("WARDGATE_APPROVAL_CHANNEL", "email", "WARDGATE_APPROVAL_CHANNEL is 'email'"),
    ("WARDGATE_DECISION_STORE", "", "WARDGATE_DECISION_STORE is not set"),
    ("WARDGATE_ISSUERS", "[{\"issuer\": \"https://x\"}]", "WARDGATE_ISSUERS is not valid"),
    ("WARDGATE_APPROVER_IDENTITIES", "{not json", "WARDGATE_APPROVER_IDENTITIES is not JSON"),
])
def test_bad_settings_are_refused_naming_the_variable(env, monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=expected.replace("[", r"\[")):
        approval_function()


def test_a_webhook_without_approver_groups_refuses_to_run(env, monkeypatch):
    monkeypatch.delenv("WARDGATE_APPROVER_GROUPS")
    with pytest.raises(SettingsError, match="WARDGATE_APPROVER_GROUPS"):
        approval_function().webhook(WebhookRequest("GET", "/approvals"))


def test_teams_links_minted_by_the_notifier_are_redeemed_by_the_webhook(env, monkeypatch, receiver):
    monkeypatch.setenv("WARDGATE_APPROVAL_CHANNEL", "teams")
    monkeypatch.setenv("WARDGATE_LINK_APPROVERS", "generic:dana")
    queue = MemoryQueue(f"memory://fn-{uuid.uuid4().hex}")
    request = held_request(env["WARDGATE_DECISION_STORE"], queue)
    [message] = queue.receive(1)
    function = approval_function()
    assert function.notify([message])[0].ok
    card = receiver.received[0].json()["attachments"][0]["content"]
    approve = next(a["url"] for a in card["actions"] if a["title"] == "Approve as generic:dana")
    assert approve.startswith("https://approvals.example.test/approvals/link/")
    path = approve.removeprefix("https://approvals.example.test")
    assert function.webhook(WebhookRequest("GET", path)).status == 200  # a confirmation page, no vote
    answer = function.webhook(WebhookRequest("POST", path, body=b"reason=ok"))
    assert answer.status == 200 and b"approved" in answer.body
    assert function.webhook(WebhookRequest("POST", path)).status in (409, 410)  # one use only
    assert function.store.get(outcome_key(request.id))["verdict"] == "approved"
