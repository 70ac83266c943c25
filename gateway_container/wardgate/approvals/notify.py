"""The notifier: takes approval requests off the approvals queue and posts them to a webhook.

Three formats: Slack (Block Kit with approve/deny buttons that come back to ``/approvals/slack``),
Microsoft Teams (an Adaptive Card whose buttons open one-time signed links), and generic JSON signed
with HMAC-SHA256 (``X-Wardgate-Signature: sha256=<hex of HMAC over "<timestamp>.<body>">``).

Delivery is at-least-once: a message is acknowledged only after a 2xx. Each delivery is retried with
bounded exponential backoff and jitter; when every attempt fails the failure is recorded
(``notification/<id>/failed/<n>`` and an ERROR log line) and the message is left on the queue, which
redelivers it and, after its ``max_receives``, moves it to the dead-letter queue. Never silent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

from wardgate.core.model import duration_text
from wardgate.core.ports import DecisionStore, MessageQueue, QueueMessage, StoreUnavailable

from wardgate.approvals.links import LinkSigner
from wardgate.approvals.records import (
    GRANT, ApprovalRequest, describe, notification_failed_key, outcome_key, rfc3339,
)

log = logging.getLogger(__name__)

TARGET_KINDS = ("slack", "teams", "generic")
# A status worth retrying: the receiver is overloaded or briefly broken. Other 4xx mean our request
# is wrong (bad URL, revoked webhook): retrying cannot help, so fail fast and make it visible.
_RETRYABLE_4XX = frozenset({408, 425, 429})
# Slack refuses section text over 3000 characters; Teams cards have similar limits.
_MAX_STATEMENT = 2800

PostFunction = Callable[[str, bytes, Mapping[str, str], float], int]


def sign_body(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` over ``"<timestamp>.<body>"`` (what receivers of generic webhooks verify)."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def post_with_urllib(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    """POST and return the HTTP status; raises ``OSError`` when the receiver cannot be reached."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(65536)
            return response.status
    except urllib.error.HTTPError as exc:
        exc.read(65536)
        return exc.code


@dataclass(frozen=True)
class WebhookTarget:
    """Where notifications go. ``links`` and ``link_approvers`` (keys of the webhook's identity map,
    e.g. ``teams:<object id>``) produce one-time approve/deny links per approver; Teams needs them,
    generic targets include them when set. ``secret`` signs generic bodies (required there)."""

    kind: str
    url: str
    secret: bytes | None = None
    links: LinkSigner | None = None
    link_approvers: tuple[str, ...] = ()
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"webhook kind {self.kind!r} is not one of {', '.join(TARGET_KINDS)}")
        if urlparse(self.url).scheme not in ("http", "https") or not urlparse(self.url).netloc:
            raise ValueError(f"webhook url {self.url!r} is not an http(s) URL")
        if self.kind == "generic" and not self.secret:
            raise ValueError("a generic webhook needs a secret: receivers must be able to verify the HMAC")
        if self.kind == "teams" and (self.links is None or not self.link_approvers):
            raise ValueError("a teams webhook needs links and link_approvers: its buttons are signed links")


@dataclass
class NotifyStats:
    """What one :meth:`Notifier.run_once` did."""

    received: int = 0
    delivered: int = 0
    skipped: int = 0  # already decided: nobody needs to be asked any more
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class Notifier:
    """Consumes the approvals queue and posts each request to one webhook target."""

    def __init__(self, queue: MessageQueue, target: WebhookTarget, *, store: DecisionStore,
                 post: PostFunction = post_with_urllib, max_attempts: int = 4, base_delay: float = 0.5,
                 max_delay: float = 8.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.queue = queue
        self.target = target
        self.store = store
        self._post = post
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._clock = clock

    def run_once(self, max_messages: int = 10, wait_seconds: float = 0.0) -> NotifyStats:
        stats = NotifyStats()
        for message in self.queue.receive(max_messages, wait_seconds):
            stats.received += 1
            self._handle(message, stats)
        return stats

    def run_forever(self, stop_event: threading.Event, wait_seconds: float = 1.0) -> None:
        while not stop_event.is_set():
            try:
                self.run_once(wait_seconds=wait_seconds)
            except Exception:  # the queue is down: keep the thread alive and say so
                log.exception("approval notifier: cannot read %s", getattr(self.queue, "url", "the queue"))
                stop_event.wait(self.max_delay)

    # -- one message -----------------------------------------------------------------------------

    def _handle(self, message: QueueMessage, stats: NotifyStats) -> None:
        try:
            envelope = json.loads(message.body)
            request = ApprovalRequest.from_record(envelope["request"])
        except (ValueError, KeyError, TypeError) as exc:
            # Left unacknowledged: it ends in the dead-letter queue, where an operator sees it.
            error = f"message {message.id} is not an approval request: {exc}"
            log.error("approval notifier: %s", error)
            stats.failed += 1
            stats.errors.append(error)
            return
        if self._already_decided(request.id):
            self.queue.ack(message)
            stats.skipped += 1
            return
        body, headers = self.render(request)
        error = self._deliver(body, headers)
        if error is None:
            self.queue.ack(message)
            stats.delivered += 1
            return
        stats.failed += 1
        stats.errors.append(error)
        log.error("approval notifier: request %s not delivered to %s webhook %s after %d attempts (delivery %d): %s",
                  request.id, self.target.kind, self.target.url, self.max_attempts, message.receive_count, error)
        try:
            self.store.create(notification_failed_key(request.id, message.receive_count), {
                "request_id": request.id, "target": self.target.kind, "url": self.target.url,
                "delivery": message.receive_count, "error": error[:1000], "at": rfc3339(self._clock())})
        except StoreUnavailable as exc:
            log.error("approval notifier: cannot record the failure of %s: %s", request.id, exc)

    def _already_decided(self, request_id: str) -> bool:
        try:
            return self.store.get(outcome_key(request_id)) is not None
        except StoreUnavailable:
            return False  # notifying once too often is harmless; not notifying is not

    def _deliver(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        """None when the receiver took it (2xx), else the last error."""
        error = "no attempt made"
        for attempt in range(self.max_attempts):
            if attempt:
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
                self._sleep(random.uniform(delay / 2, delay))  # jitter: replicas do not retry in lockstep
            try:
                status = self._post(self.target.url, body, headers, self.target.timeout)
            except OSError as exc:
                error = f"cannot reach the webhook: {exc}"
                continue
            if 200 <= status < 300:
                return None
            error = f"webhook answered HTTP {status}"
            if 400 <= status < 500 and status not in _RETRYABLE_4XX:
                break
        return error

    # -- formats ---------------------------------------------------------------------------------

    def render(self, request: ApprovalRequest) -> tuple[bytes, dict[str, str]]:
        """The body and headers posted for ``request`` (public for the functions and tests)."""
        headers = {"Content-Type": "application/json", "User-Agent": "wardgate-notifier"}
        if self.target.kind == "slack":
            payload = slack_message(request)
        elif self.target.kind == "teams":
            payload = teams_message(request, self._links(request))
        else:
            payload = {"type": "approval.requested", "request": request.to_record(),
                       "summary": summary(request), "links": self._links(request)}
        body = json.dumps(payload).encode()
        if self.target.secret:
            timestamp = str(int(self._clock()))
            headers["X-Wardgate-Timestamp"] = timestamp
            headers["X-Wardgate-Signature"] = sign_body(self.target.secret, timestamp, body)
        return body, headers

    def _links(self, request: ApprovalRequest) -> dict[str, dict[str, str]]:
        signer = self.target.links
        if signer is None:
            return {}
        ttl = max(1.0, request.deadline - self._clock())  # a link is no use after the request's deadline
        return {approver: {verdict: signer.mint(request.id, verdict, approver, ttl) for verdict in ("approve", "deny")}
                for approver in self.target.link_approvers}


def summary(request: ApprovalRequest) -> str:
    who = describe(request.requester)
    if request.kind == GRANT:
        return (f"{who} asks for role {request.role} on {request.resource} for "
                f"{duration_text(request.duration_seconds or 0)}: {request.reason}")
    return f"{who} wants to run a statement on {request.resource} (rule {request.rule})"


def _statement_text(request: ApprovalRequest) -> str:
    text = request.statement if len(request.statement) <= _MAX_STATEMENT else request.statement[:_MAX_STATEMENT] + "…"
    if request.parameters:
        text += "\n-- parameters: " + json.dumps(list(request.parameters))[:400]
    return text


def slack_escape(text: str) -> str:
    # Slack mrkdwn control characters; ``` would end the code block early.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("```", "`\u200b``")


def slack_message(request: ApprovalRequest) -> dict[str, Any]:
    fields = [("Requester", describe(request.requester)), ("Resource", request.resource),
              ("Rule", request.rule), ("Deadline", rfc3339(request.deadline)),
              ("Approvers", f"{', '.join(request.approvers)} (quorum {request.quorum})"),
              ("Request", request.id)]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Approval needed" if request.kind != GRANT
                                    else "Access request"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": slack_escape(summary(request))}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{name}*\n{slack_escape(value)}"}
                                       for name, value in fields]},
    ]
    if request.kind != GRANT:
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": f"```{slack_escape(_statement_text(request))}```"}})
    blocks.append({"type": "actions", "block_id": f"wardgate:{request.id}", "elements": [
        {"type": "button", "action_id": "wardgate_approve", "style": "primary", "value": f"approve:{request.id}",
         "text": {"type": "plain_text", "text": "Approve"}},
        {"type": "button", "action_id": "wardgate_deny", "style": "danger", "value": f"deny:{request.id}",
         "text": {"type": "plain_text", "text": "Deny"},
         "confirm": {"title": {"type": "plain_text", "text": "Deny this request?"},
                     "text": {"type": "plain_text", "text": "The requester is told who denied it."},
                     "confirm": {"type": "plain_text", "text": "Deny"},
                     "deny": {"type": "plain_text", "text": "Cancel"}}},
    ]})
    return {"text": f"Approval needed: {summary(request)}", "blocks": blocks}


def teams_message(request: ApprovalRequest, links: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    facts = [{"title": "Requester", "value": describe(request.requester)},
             {"title": "Resource", "value": request.resource}, {"title": "Rule", "value": request.rule},
             {"title": "Approvers", "value": f"{', '.join(request.approvers)} (quorum {request.quorum})"},
             {"title": "Deadline", "value": rfc3339(request.deadline)}, {"title": "Request", "value": request.id}]
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": True,
         "text": "Approval needed" if request.kind != GRANT else "Access request"},
        {"type": "TextBlock", "wrap": True, "text": summary(request)},
        {"type": "FactSet", "facts": facts},
    ]
    if request.kind != GRANT:
        body.append({"type": "TextBlock", "wrap": True, "fontType": "Monospace", "text": _statement_text(request)})
    actions = []
    for approver, urls in links.items():
        # One pair of buttons per approver: each link is bound to the identity it was minted for.
        actions.append({"type": "Action.OpenUrl", "title": f"Approve as {approver}", "url": urls["approve"]})
        actions.append({"type": "Action.OpenUrl", "title": f"Deny as {approver}", "url": urls["deny"]})
    card = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
            "version": "1.4", "body": body, "actions": actions}
    return {"type": "message", "attachments": [
        {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}]}
