"""ApprovalWebhook: Slack, signed JSON, one-time links and the token-authenticated REST API.

Slack and generic requests are signed here with known secrets exactly as Slack and the notifier sign
them; tokens come from the dev issuer, verified by the real TokenVerifier over its loopback JWKS.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import urlencode

import pytest

from approvals_helpers import ALICE, BOB, CAROL, DAVE, hold, principal_of
from wardgate_testkit import start_receiver
from wardgate.approvals.links import LinkSigner
from wardgate.approvals.notify import sign_body
from wardgate.approvals.webhook import ApprovalWebhook, WebhookRequest

SLACK_SECRET = b"8f742231b10e8888abcd99yyyzzz85a5"
HMAC_SECRET = b"generic-webhook-secret-0123456789"
LINK_KEY = b"k" * 32


@pytest.fixture
def hook(service, clock, verifier, dev_issuer) -> ApprovalWebhook:
    identities = {"slack:UBOB": BOB, "slack:UALICE": ALICE, "slack:UDAVE": DAVE, "generic:carol": CAROL,
                  "teams:oid-bob": BOB, "teams:bob": BOB, "teams:dave": DAVE}
    return ApprovalWebhook(service, verifier=verifier, slack_signing_secret=SLACK_SECRET, hmac_secret=HMAC_SECRET,
                           link_key=LINK_KEY, identities=identities, clock=clock,
                           grant_approvers={"admin": (["dba"], 1)}, link_base_url="https://gw.example.test")


def slack_request(request_id: str, user: str, verdict: str, timestamp: float, *, secret: bytes = SLACK_SECRET,
                  response_url: str | None = None):
    payload = {"type": "block_actions", "user": {"id": user, "username": user.lower()},
               "actions": [{"action_id": f"wardgate_{verdict}", "value": f"{verdict}:{request_id}"}]}
    if response_url is not None:
        payload["response_url"] = response_url
    body = urlencode({"payload": json.dumps(payload)}).encode()
    ts = str(int(timestamp))
    signature = "v0=" + hmac.new(secret, f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return WebhookRequest("POST", "/approvals/slack", {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature,
                                                       "Content-Type": "application/x-www-form-urlencoded"}, body)


def generic_request(body: dict, timestamp: float, channel: str = "generic", secret: bytes = HMAC_SECRET):
    raw = json.dumps(body).encode()
    ts = str(int(timestamp))
    return WebhookRequest("POST", f"/approvals/{channel}",
                          {"X-Wardgate-Timestamp": ts, "X-Wardgate-Signature": sign_body(secret, ts, raw)}, raw)


# -- Slack ----------------------------------------------------------------------------------------


def test_slack_signed_payload_decides(hook, service, clock):
    request = hold(service)
    response = hook.handle(slack_request(request.id, "UBOB", "approve", clock()))
    assert response.status == 200, response.body
    assert "approved by bob" in response.json()["text"]
    request_, votes, outcome = service.get(request.id)
    assert outcome.approved and votes[0].via == "slack"


def test_slack_wrong_signature_is_refused(hook, service, clock):
    request = hold(service)
    response = hook.handle(slack_request(request.id, "UBOB", "approve", clock(), secret=b"not-the-secret"))
    assert response.status == 401 and "signature does not verify" in response.json()["error"]
    assert service.get(request.id)[1] == []  # no vote recorded


def test_slack_stale_timestamp_is_refused(hook, service, clock):
    request = hold(service)
    response = hook.handle(slack_request(request.id, "UBOB", "approve", clock() - 301))
    assert response.status == 401 and "window" in response.json()["error"]
    assert service.outcome(request.id) is None


def test_slack_replay_is_refused(hook, service, clock):
    request = hold(service, quorum=2)
    call = slack_request(request.id, "UBOB", "approve", clock())
    assert hook.handle(call).status == 200
    replay = hook.handle(call)
    assert replay.status == 409 and "already received" in replay.json()["error"]


def test_slack_self_approval_and_unmapped_user(hook, service, clock):
    request = hold(service, approvers=("developers",))
    refused = hook.handle(slack_request(request.id, "UALICE", "approve", clock()))
    assert refused.status == 403 and "self-approval is not allowed (AC-5)" in refused.json()["error"]
    unknown = hook.handle(slack_request(request.id, "UEVE", "approve", clock()))
    assert unknown.status == 403 and "slack:UEVE is not mapped" in unknown.json()["error"]


def test_slack_non_approver_is_refused(hook, service, clock):
    request = hold(service)
    refused = hook.handle(slack_request(request.id, "UDAVE", "approve", clock()))
    assert refused.status == 403 and "must hold one of dba" in refused.json()["error"]


@pytest.fixture
def slack_hooks():
    """A loopback stand-in for Slack's response_url endpoint, and a webhook allowed to answer there."""
    with start_receiver() as receiver:
        yield receiver


def slack_hook(service, clock, receiver) -> ApprovalWebhook:
    return ApprovalWebhook(service, verifier=None, slack_signing_secret=SLACK_SECRET, hmac_secret=None,
                           link_key=None, identities={"slack:UBOB": BOB, "slack:UALICE": ALICE, "slack:UCAROL": CAROL},
                           clock=clock, slack_response_urls=(receiver.url.rsplit("/", 1)[0] + "/",))


def test_slack_decision_replaces_the_request_message_at_its_response_url(service, clock, slack_hooks):
    hook = slack_hook(service, clock, slack_hooks)
    request = hold(service)
    response = hook.handle(slack_request(request.id, "UBOB", "approve", clock(), response_url=slack_hooks.url))
    assert response.status == 200
    [answer] = slack_hooks.received
    message = answer.json()
    assert answer.headers["Content-Type"] == "application/json"
    assert message["replace_original"] is True and "actions" not in json.dumps(message["blocks"])
    assert f"request {request.id} approved by bob" in message["text"] and ":white_check_mark:" in message["text"]


def test_slack_refusal_is_told_to_the_clicker_only(service, clock, slack_hooks):
    hook = slack_hook(service, clock, slack_hooks)
    request = hold(service, approvers=("developers",))
    refused = hook.handle(slack_request(request.id, "UALICE", "approve", clock(), response_url=slack_hooks.url))
    assert refused.status == 403
    unmapped = hook.handle(slack_request(request.id, "UEVE", "approve", clock(), response_url=slack_hooks.url))
    assert unmapped.status == 403
    first, second = (r.json() for r in slack_hooks.received)
    assert first["response_type"] == "ephemeral" and first["replace_original"] is False
    assert "self-approval is not allowed (AC-5)" in first["text"]
    assert second["response_type"] == "ephemeral" and "slack:UEVE is not mapped" in second["text"]
    assert service.outcome(request.id) is None


def test_slack_quorum_vote_keeps_the_buttons_for_the_other_approvers(service, clock, slack_hooks):
    hook = slack_hook(service, clock, slack_hooks)
    request = hold(service, quorum=2)
    assert hook.handle(slack_request(request.id, "UBOB", "approve", clock(), response_url=slack_hooks.url)).status == 200
    [vote] = slack_hooks.received
    assert vote.json()["replace_original"] is False and vote.json()["response_type"] == "ephemeral"
    assert "waiting for more approvers" in vote.json()["text"]


def test_slack_response_url_elsewhere_than_slack_is_never_posted_to(service, clock, slack_hooks):
    hook = ApprovalWebhook(service, verifier=None, slack_signing_secret=SLACK_SECRET, hmac_secret=None,
                           link_key=None, identities={"slack:UBOB": BOB}, clock=clock)  # default: Slack's hooks only
    request = hold(service)
    response = hook.handle(slack_request(request.id, "UBOB", "approve", clock(), response_url=slack_hooks.url))
    assert response.status == 200 and service.outcome(request.id).approved
    assert slack_hooks.received == []


def test_slack_response_url_unreachable_does_not_undo_the_decision(service, clock, slack_hooks):
    hook = slack_hook(service, clock, slack_hooks)
    request = hold(service)
    slack_hooks.statuses.append(500)
    assert hook.handle(slack_request(request.id, "UBOB", "approve", clock(), response_url=slack_hooks.url)).status == 200
    assert service.outcome(request.id).approved and len(slack_hooks.received) == 1


# -- generic / Teams signed JSON ------------------------------------------------------------------


def test_generic_signed_decision_and_forgery(hook, service, clock):
    request = hold(service)
    body = {"request_id": request.id, "verdict": "deny", "approver": "carol", "reason": "no DDL on Fridays"}
    forged = hook.handle(generic_request(body, clock(), secret=b"guessed-secret"))
    assert forged.status == 401 and service.outcome(request.id) is None
    response = hook.handle(generic_request(body, clock()))
    assert response.status == 200 and response.json()["outcome"]["verdict"] == "denied"
    assert service.outcome(request.id).reason == "no DDL on Fridays"
    again = hook.handle(generic_request({**body, "verdict": "approve"}, clock() + 1))
    assert again.status == 409 and "already denied by carol" in again.json()["error"]


def test_teams_decision_uses_teams_identities(hook, service, clock):
    request = hold(service)
    response = hook.handle(generic_request({"request_id": request.id, "verdict": "approve", "approver": "oid-bob"},
                                           clock(), channel="teams"))
    assert response.status == 200 and service.outcome(request.id).approved
    assert service.get(request.id)[1][0].via == "teams"


def test_unsigned_and_unconfigured_channels_fail_closed(service, clock):
    request = hold(service)
    bare = ApprovalWebhook(service, verifier=None, slack_signing_secret=None, hmac_secret=None, link_key=None,
                           identities={"slack:UBOB": BOB}, clock=clock)
    assert bare.handle(slack_request(request.id, "UBOB", "approve", clock())).status == 401
    assert bare.handle(WebhookRequest("GET", "/approvals")).status == 401
    assert bare.handle(WebhookRequest("GET", "/approvals/link/abc.def")).status == 401
    assert service.outcome(request.id) is None


# -- one-time links -------------------------------------------------------------------------------


def _token(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_link_get_shows_a_form_and_does_not_act(hook, service):
    request = hold(service)
    url = hook.links.mint(request.id, "approve", "teams:bob", 600)
    assert url.startswith("https://gw.example.test/approvals/link/")
    page = hook.handle(WebhookRequest("GET", "/approvals/link/" + _token(url)))
    assert page.status == 200 and b"<form method='post'" in page.body and b"ALTER TABLE" in page.body
    hook.handle(WebhookRequest("GET", "/approvals/link/" + _token(url)))  # a scanner prefetching again
    assert service.get(request.id)[1] == [] and service.outcome(request.id) is None


def test_link_post_acts_once_then_replay_is_refused(hook, service):
    request = hold(service)
    path = "/approvals/link/" + _token(hook.links.mint(request.id, "approve", "teams:bob", 600))
    done = hook.handle(WebhookRequest("POST", path, {"Content-Type": "application/x-www-form-urlencoded"},
                                      b"reason=checked+the+migration"))
    assert done.status == 200 and b"approved by bob" in done.body
    assert service.get(request.id)[1][0].reason == "checked the migration"
    replay = hook.handle(WebhookRequest("POST", path))
    assert replay.status == 409 and "already used" in replay.json()["error"]
    assert hook.handle(WebhookRequest("GET", path)).status == 409


def test_forged_and_expired_links_are_refused(hook, service, clock):
    request = hold(service)
    token = _token(hook.links.mint(request.id, "approve", "teams:bob", 60))
    payload, signature = token.split(".")
    # Re-sign the claims with a key the attacker chose, or swap the claims under the real signature.
    other = _token(LinkSigner(b"x" * 32, service.store, base_url="").mint(request.id, "approve", "teams:dave", 60))
    for forged in (other, other.split(".")[0] + "." + signature, payload + "." + signature[:-2] + "AA"):
        response = hook.handle(WebhookRequest("POST", "/approvals/link/" + forged))
        assert response.status == 401 and "does not verify" in response.json()["error"]
    clock.advance(61)
    expired = hook.handle(WebhookRequest("POST", "/approvals/link/" + token))
    assert expired.status == 410 and "expired" in expired.json()["error"]
    assert service.outcome(request.id) is None


def test_link_for_a_non_approver_is_refused(hook, service):
    request = hold(service)
    path = "/approvals/link/" + _token(hook.links.mint(request.id, "approve", "teams:dave", 600))
    response = hook.handle(WebhookRequest("POST", path))
    assert response.status == 403 and "must hold one of dba" in response.json()["error"]


# -- REST with OIDC tokens ------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_rest_requires_a_valid_token(hook, service, dev_issuer):
    hold(service)
    assert hook.handle(WebhookRequest("GET", "/approvals")).status == 401
    garbage = hook.handle(WebhookRequest("GET", "/approvals", bearer("not.a.jwt")))
    assert garbage.status == 401 and "malformed" in garbage.json()["error"]


def test_rest_list_show_and_decide(hook, service, dev_issuer):
    request = hold(service)
    bob = bearer(dev_issuer.mint("bob", groups=["dba"]))
    dave = bearer(dev_issuer.mint("dave", groups=["developers"]))
    listed = hook.handle(WebhookRequest("GET", "/approvals?state=pending", bob)).json()["requests"]
    assert [row["id"] for row in listed] == [request.id]
    # Least privilege: someone who can neither approve nor asked sees nothing.
    assert hook.handle(WebhookRequest("GET", "/approvals", dave)).json()["requests"] == []
    assert hook.handle(WebhookRequest("GET", f"/approvals/{request.id}", dave)).status == 403
    refused = hook.handle(WebhookRequest("POST", f"/approvals/{request.id}/approve", dave, b"{}"))
    assert refused.status == 403
    decided = hook.handle(WebhookRequest("POST", f"/approvals/{request.id}/approve", bob, b'{"reason": "ok"}'))
    assert decided.status == 200 and decided.json()["outcome"]["verdict"] == "approved"
    shown = hook.handle(WebhookRequest("GET", f"/approvals/{request.id}", bob)).json()
    assert shown["votes"][0]["approver"]["subject"] == "bob" and shown["votes"][0]["approver"]["issuer"] == \
        dev_issuer.issuer_url
    assert hook.handle(WebhookRequest("POST", f"/approvals/{request.id}/deny", bob)).status == 409
    assert hook.handle(WebhookRequest("GET", "/approvals/apr-nope", bob)).status == 404


def test_rest_decision_after_deadline_is_410(hook, service, dev_issuer, clock):
    request = hold(service, timeout=30)
    clock.advance(31)
    response = hook.handle(WebhookRequest("POST", f"/approvals/{request.id}/approve",
                                          bearer(dev_issuer.mint("bob", groups=["dba"]))))
    assert response.status == 410 and "expired" in response.json()["error"]


def test_rest_access_request_and_grants(hook, service, dev_issuer, clock):
    alice = bearer(dev_issuer.mint("alice", groups=["developers"]))
    bob = bearer(dev_issuer.mint("bob", groups=["dba"]))
    body = {"resource": "orders", "role": "superuser", "duration": "30m", "reason": "incident 7"}
    not_requestable = hook.handle(WebhookRequest("POST", "/access/requests", alice, json.dumps(body).encode()))
    assert not_requestable.status == 403 and "requestable roles: admin" in not_requestable.json()["error"]
    bad = hook.handle(WebhookRequest("POST", "/access/requests", alice,
                                     json.dumps({**body, "role": "admin", "duration": "soon"}).encode()))
    assert bad.status == 400 and "duration" in bad.json()["error"]
    created = hook.handle(WebhookRequest("POST", "/access/requests", alice,
                                         json.dumps({**body, "role": "admin"}).encode()))
    assert created.status == 201
    request_id = created.json()["request"]["id"]
    assert hook.handle(WebhookRequest("GET", "/access/grants", alice)).json()["requests"][0]["state"] == "pending"
    assert hook.handle(WebhookRequest("POST", f"/approvals/{request_id}/approve", alice)).status == 403  # self
    assert hook.handle(WebhookRequest("POST", f"/approvals/{request_id}/approve", bob)).status == 200
    [grant] = hook.handle(WebhookRequest("GET", "/access/grants", alice)).json()["grants"]
    assert grant["role"] == "admin" and grant["resource"] == "orders"
    principal = principal_of(dev_issuer, "alice", "developers")
    assert [g.role for g in service.active_grants(principal, "orders")] == ["admin"]
    clock.advance(1801)
    assert hook.handle(WebhookRequest("GET", "/access/grants", alice)).json()["grants"] == []


def test_each_role_has_its_own_longest_grant(service, clock, verifier, dev_issuer):
    hook = ApprovalWebhook(service, verifier=verifier, slack_signing_secret=None, hmac_secret=None, link_key=None,
                           identities={}, clock=clock, max_grant_seconds=8 * 3600,
                           grant_approvers={"reader": (["dba"], 1, 8 * 3600), "admin": (["dba"], 1, 3600)})
    alice = bearer(dev_issuer.mint("alice", groups=["developers"]))

    def ask(role: str, duration: str):
        body = {"resource": "orders", "role": role, "duration": duration, "reason": "incident 9"}
        return hook.handle(WebhookRequest("POST", "/access/requests", alice, json.dumps(body).encode()))

    too_long = ask("admin", "2h")  # 2h is fine for another role, not for this one
    assert too_long.status == 400 and "'admin'" in too_long.json()["error"] and "3600s" in too_long.json()["error"]
    assert ask("admin", "1h").status == 201
    assert ask("reader", "2h").status == 201
