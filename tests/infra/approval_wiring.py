"""The approval functions, run on the settings a Pulumi program produced (a uniquely named module:
several test directories here have a ``conftest``).

:func:`check_approval_wiring` parses each function's environment with the function's own parser
(``ApprovalSettings.from_environment``), compares it with the stack and the gateway's rendered
``approvals:`` block, then runs the real notifier and webhook on those settings: a held statement is
announced, an approver decides through the stack's channel (Slack button, Teams link, generic signed
decision), and the decision is recorded. Only two things are local: the decision store (SQLite, the
embedded default, instead of DynamoDB/Firestore/Table) and the cloud secret manager
(:class:`FakeSecretManager`). Every secret a function reads must be one its identity was granted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlencode

from functions.approval import handler
from functions.approval.handler import ApprovalFunction, ApprovalSettings, SettingsError
from infra.common.config import StackConfig
from wardgate.adapters.local import MemoryQueue, SqliteDecisionStore
from wardgate.approvals.notify import sign_body
from wardgate.approvals.records import command_hash, outcome_key
from wardgate.approvals.service import ApprovalService
from wardgate.approvals.webhook import WebhookRequest
from wardgate.config import ApprovalsConfig
from wardgate.core.model import Principal

CHAT_URL = "https://hooks.chat.example.test/wardgate"
SIGNING_SECRET = "signing-secret-for-the-wiring-test-0123456789"
REQUESTER = Principal("https://token.actions.githubusercontent.com", "repo:acme/app:ref:refs/heads/main",
                      ("ai-agents",))


@dataclass
class FakeSecretManager:
    """Stands in for the cloud secret manager behind ``handler.read_secret``: answers the secret URLs
    it was given values for, and remembers which URLs were read (an unknown URL is an error, as a
    missing secret is in the cloud)."""

    values: dict[str, str]
    read: list[str] = field(default_factory=list)

    def __call__(self, url: str, what: str) -> str:
        self.read.append(url)
        if url not in self.values:
            raise SettingsError(f"no secret at {url} ({what})")
        return self.values[url]


@dataclass
class Posted:
    url: str
    body: bytes
    headers: Mapping[str, str]


def _slack_click(secret: bytes, user: str, value: str) -> tuple[bytes, dict[str, str]]:
    """A Slack block_actions interaction, signed as Slack signs it."""
    payload = {"type": "block_actions", "user": {"id": user}, "actions": [{"action_id": "wardgate", "value": value}]}
    body = urlencode({"payload": json.dumps(payload)}).encode()
    timestamp = str(int(time.time()))
    signature = "v0=" + hmac.new(secret, b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": timestamp,
                  "X-Slack-Signature": signature}


def _generic_decision(secret: bytes, payload: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    timestamp = str(int(time.time()))
    return body, {"Content-Type": "application/json", "X-Wardgate-Timestamp": timestamp,
                  "X-Wardgate-Signature": sign_body(secret, timestamp, body)}


def check_settings(stack: StackConfig, notifier: ApprovalSettings, webhook: ApprovalSettings,
                   gateway: ApprovalsConfig) -> None:
    """The functions' parsed settings and the gateway's block say what the stack says."""
    approvals = stack.approvals
    assert notifier.channel == webhook.channel == approvals.channel
    assert notifier.decision_store == webhook.decision_store == gateway.store
    assert webhook.approver_groups == tuple(approvals.approver_groups)
    assert dict(webhook.identities) == approvals.identities == gateway.identities
    assert dict(webhook.grants) == approvals.grants == gateway.grants
    assert notifier.link_approvers == tuple(approvals.link_approvers)
    assert set(notifier.link_approvers) <= set(webhook.identities)  # a link names an identity the webhook knows
    signs = approvals.channel != "slack" or bool(approvals.link_approvers)
    # Links and teams/generic bodies verify only if both functions read the same secret.
    assert notifier.signing_secret == (webhook.signing_secret if signs else None)
    assert notifier.webhook_endpoint and notifier.webhook_endpoint.startswith("https://")


def check_approval_wiring(stack: StackConfig, notifier_env: Mapping[str, str], webhook_env: Mapping[str, str],
                          gateway: ApprovalsConfig, *, notifier_secrets: set[str], webhook_secrets: set[str],
                          store_path, monkeypatch) -> None:
    """Settings agree (:func:`check_settings`), then a held statement is announced and approved
    through the stack's channel by its first usable identity."""
    notifier = ApprovalSettings.from_environment(notifier_env)
    webhook = ApprovalSettings.from_environment(webhook_env)
    check_settings(stack, notifier, webhook, gateway)

    secrets = FakeSecretManager({notifier.webhook_url_secret: CHAT_URL, webhook.signing_secret: SIGNING_SECRET})
    monkeypatch.setattr(handler, "read_secret", secrets)
    store = SqliteDecisionStore(f"sqlite://{store_path}")
    posted: list[Posted] = []

    def post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
        posted.append(Posted(url, body, headers))
        return 200

    channel = stack.approvals.channel
    usable = stack.approvals.link_approvers if channel == "teams" else \
        [k for k in stack.approvals.identities if k.startswith(f"{channel}:")]
    assert usable, f"the {channel} example stack names no identity that can approve through it"
    key = usable[0]
    identity = stack.approvals.identities[key]
    role = next(g for g in identity.groups if g in stack.approvals.approver_groups)

    queue = MemoryQueue(f"memory://wiring-{uuid.uuid4().hex}")
    statement = "ALTER TABLE orders ADD COLUMN note text"
    request = ApprovalService(store, queue, roles_of=lambda p: set(p.groups)).request_statement(
        REQUESTER, session_id="s-1", resource="orders", statement=statement, parameters=[],
        command_hash=command_hash(statement, []), rule="review-prod-changes", controls=["CM-3"], approvers=[role],
        quorum=1, scope="statement", scope_seconds=None, timeout_seconds=600)
    [message] = queue.receive(1)

    [result] = ApprovalFunction(notifier, store=store, post=post).notify([message])
    assert (result.ok, result.outcome) == (True, "delivered"), result.error
    [sent] = posted
    assert sent.url == CHAT_URL
    assert set(secrets.read) <= notifier_secrets, "the notifier read a secret its identity may not read"
    secrets.read.clear()

    function = ApprovalFunction(webhook, store=store)
    if channel == "slack":
        body, headers = _slack_click(SIGNING_SECRET.encode(), key.split(":", 1)[1], f"approve:{request.id}")
        answer = function.webhook(WebhookRequest("POST", "/approvals/slack", headers, body))
    elif channel == "teams":
        approve = _link_for(sent.body, key, "approve")
        assert approve.startswith(notifier.webhook_endpoint + "/approvals/link/"), approve
        path = approve[len(notifier.webhook_endpoint):]
        assert function.webhook(WebhookRequest("GET", path, {}, b"")).status == 200
        answer = function.webhook(WebhookRequest("POST", path, {"Content-Type": "application/x-www-form-urlencoded"},
                                                 b"reason=planned"))
    else:
        assert sent.headers["X-Wardgate-Signature"] == sign_body(
            SIGNING_SECRET.encode(), sent.headers["X-Wardgate-Timestamp"], sent.body)
        body, headers = _generic_decision(SIGNING_SECRET.encode(), {
            "request_id": request.id, "verdict": "approve", "approver": key.split(":", 1)[1]})
        answer = function.webhook(WebhookRequest("POST", f"/approvals/{key.split(':', 1)[0]}", headers, body))
    assert answer.status == 200, answer.body
    outcome = store.get(outcome_key(request.id))
    assert outcome is not None and outcome["verdict"] == "approved"
    assert identity.subject in json.dumps(outcome)
    assert set(secrets.read) <= webhook_secrets, "the webhook read a secret its identity may not read"
    if stack.approvals.grants:
        built = function._approval_webhook()
        assert built.grant_approvers == {r: (tuple(g.approvers), g.quorum, g.max_duration)
                                         for r, g in stack.approvals.grants.items()}
        assert built.max_grant_seconds == max(g.max_duration for g in stack.approvals.grants.values())


def _link_for(body: bytes, key: str, verdict: str) -> str:
    """The link the Teams card offers ``key`` for ``verdict``."""
    card = json.loads(body)["attachments"][0]["content"]
    [url] = [a["url"] for a in card["actions"] if a["title"] == f"{verdict.capitalize()} as {key}"]
    return url
