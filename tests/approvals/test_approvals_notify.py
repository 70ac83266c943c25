"""The notifier against a real HTTP receiver on loopback and the in-process queue."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time

import pytest

from approvals_helpers import BOB, hold
from wardgate.approvals.links import LinkSigner
from wardgate.approvals.notify import Notifier, WebhookTarget
from wardgate.approvals.webhook import ApprovalWebhook, WebhookRequest

SECRET = b"generic-webhook-secret-0123456789"
LINK_KEY = b"L" * 32


class Sleeps(list):
    """Records backoff delays instead of sleeping through them."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def notifier(queue, store, target, **kwargs) -> Notifier:
    return Notifier(queue, target, store=store, sleep=kwargs.pop("sleep", Sleeps()), **kwargs)


def test_slack_blocks_with_buttons(service, queue, store, receiver):
    request = hold(service, statement="ALTER TABLE orders DROP COLUMN note")
    stats = notifier(queue, store, WebhookTarget("slack", receiver.url)).run_once()
    assert (stats.delivered, stats.failed) == (1, 0)
    [sent] = receiver.received
    assert sent.headers["Content-Type"] == "application/json"
    message = sent.json()
    actions = next(b for b in message["blocks"] if b["type"] == "actions")
    assert [e["value"] for e in actions["elements"]] == [f"approve:{request.id}", f"deny:{request.id}"]
    text = json.dumps(message["blocks"])
    assert "```ALTER TABLE orders DROP COLUMN note```" in text
    assert "alice" in text and "orders" in text and "ddl-needs-review" in text
    assert request.to_record()["deadline"] in text
    time.sleep(0.3)  # past the visibility timeout: an acknowledged message does not come back
    assert queue.receive(10) == []


def test_teams_card_links_lead_to_a_decision(service, queue, store, receiver, clock):
    request = hold(service)
    links = LinkSigner(LINK_KEY, store, base_url="https://gw.example.test", clock=clock)
    target = WebhookTarget("teams", receiver.url, links=links, link_approvers=("teams:bob",))
    assert notifier(queue, store, target).run_once().delivered == 1
    [attachment] = receiver.received[0].json()["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert any(f.get("value") == request.id for b in card["body"] if b["type"] == "FactSet" for f in b["facts"])
    approve = next(a for a in card["actions"] if a["title"] == "Approve as teams:bob")
    assert approve["type"] == "Action.OpenUrl"
    # The link the card carries is one the approvals handler accepts, once.
    hook = ApprovalWebhook(service, verifier=None, slack_signing_secret=None, hmac_secret=None, link_key=LINK_KEY,
                           identities={"teams:bob": BOB}, clock=clock)
    path = approve["url"].removeprefix("https://gw.example.test")
    assert hook.handle(WebhookRequest("POST", path)).status == 200
    assert service.outcome(request.id).approved


def test_generic_body_is_signed_with_hmac(service, queue, store, receiver, clock):
    request = hold(service)
    target = WebhookTarget("generic", receiver.url, secret=SECRET)
    assert notifier(queue, store, target, clock=clock).run_once().delivered == 1
    [sent] = receiver.received
    timestamp, signature = sent.headers["X-Wardgate-Timestamp"], sent.headers["X-Wardgate-Signature"]
    expected = hmac.new(SECRET, timestamp.encode() + b"." + sent.body, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    assert abs(int(timestamp) - clock()) <= 1
    body = sent.json()
    assert body["type"] == "approval.requested" and body["request"]["id"] == request.id
    assert body["request"]["command_hash"] == request.command_hash
    wrong = hmac.new(b"other", timestamp.encode() + b"." + sent.body, hashlib.sha256).hexdigest()
    assert signature != f"sha256={wrong}"


def test_retries_after_500_then_succeeds(service, queue, store, receiver):
    hold(service)
    receiver.statuses = [500, 503]
    sleeps = Sleeps()
    stats = notifier(queue, store, WebhookTarget("slack", receiver.url), sleep=sleeps, base_delay=0.5,
                     max_delay=8).run_once()
    assert (stats.delivered, stats.failed) == (1, 0)
    assert len(receiver.received) == 3
    # Exponential with jitter, bounded: first retry within [0.25, 0.5], second within [0.5, 1.0].
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


def test_failure_is_visible_and_the_message_ends_in_the_dead_letter_queue(service, queue, store, receiver, caplog):
    request = hold(service)
    receiver.statuses = [500] * 100
    notify = notifier(queue, store, WebhookTarget("slack", receiver.url), max_attempts=2)
    with caplog.at_level(logging.ERROR, logger="wardgate.approvals.notify"):
        stats = notify.run_once()
    assert (stats.delivered, stats.failed) == (0, 1) and "HTTP 500" in stats.errors[0]
    assert len(receiver.received) == 2
    failure = store.get(f"notification/{request.id}/failed/1")
    assert failure["error"] == "webhook answered HTTP 500" and failure["target"] == "slack"
    assert any(request.id in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    # Not acknowledged: redelivered after the visibility timeout, then dead-lettered (max_receives=3).
    for delivery in (2, 3):
        stats = notify.run_once(wait_seconds=2)
        assert stats.failed == 1
        assert store.get(f"notification/{request.id}/failed/{delivery}") is not None
    assert notify.run_once(wait_seconds=0.5).received == 0
    [dead] = queue.dead_letters()
    assert json.loads(dead.body)["id"] == request.id and dead.receive_count == 3


def test_client_errors_are_not_retried(service, queue, store, receiver):
    hold(service)
    receiver.statuses = [404]
    stats = notifier(queue, store, WebhookTarget("slack", receiver.url), max_attempts=4).run_once()
    assert stats.failed == 1 and len(receiver.received) == 1


def test_unreachable_webhook_is_a_visible_failure(service, queue, store):
    from wardgate.devtools.pgserver import free_port

    request = hold(service)
    stats = notifier(queue, store, WebhookTarget("slack", f"http://127.0.0.1:{free_port()}/x", timeout=2),
                     max_attempts=2).run_once()
    assert stats.failed == 1 and "cannot reach" in stats.errors[0]
    assert "cannot reach" in store.get(f"notification/{request.id}/failed/1")["error"]


def test_decided_requests_are_not_notified(service, queue, store, receiver):
    request = hold(service)
    service.decide(request.id, BOB, "approve")
    stats = notifier(queue, store, WebhookTarget("slack", receiver.url)).run_once()
    assert stats.skipped == 1 and receiver.received == []


def test_malformed_message_is_left_for_the_dead_letter_queue(queue, store, receiver, caplog):
    queue.send(b"not json")
    with caplog.at_level(logging.ERROR, logger="wardgate.approvals.notify"):
        stats = notifier(queue, store, WebhookTarget("slack", receiver.url)).run_once()
    assert stats.failed == 1 and "not an approval request" in caplog.text
    assert receiver.received == []


def test_bad_targets_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="needs a secret"):
        WebhookTarget("generic", "https://hooks.example.test/x")
    with pytest.raises(ValueError, match="not one of"):
        WebhookTarget("email", "https://hooks.example.test/x")
    with pytest.raises(ValueError, match="not an http"):
        WebhookTarget("slack", "ftp://hooks.example.test/x")
    with pytest.raises(ValueError, match="links"):
        WebhookTarget("teams", "https://hooks.example.test/x")


def test_run_forever_delivers_until_stopped(service, queue, store, receiver):
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=notifier(queue, store, WebhookTarget("slack", receiver.url)).run_forever,
                              args=(stop, 0.1))
    thread.start()
    try:
        request = hold(service)
        deadline = time.monotonic() + 5
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.02)
        assert request.id in receiver.received[0].body.decode()
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
