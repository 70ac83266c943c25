"""The approvals HTTP handler, free of any web framework.

The gateway's control port mounts it in the embedded default; the cloud approval function wraps the
same :class:`ApprovalWebhook` (Lambda, Cloud Functions, Azure Functions only translate the request).

Routes (every refusal is a 4xx with ``{"error": …}`` naming why):

- ``POST /approvals/slack``: Slack interactive payloads, ``X-Slack-Signature`` v0 checked.
- ``POST /approvals/teams``, ``POST /approvals/generic``: ``{request_id, verdict, approver, reason}``
  signed like the notifier's bodies (``X-Wardgate-Timestamp``, ``X-Wardgate-Signature``).
- ``GET /approvals/link/<token>``: a confirmation page (link scanners prefetch GETs: a GET never acts);
  ``POST /approvals/link/<token>``: uses the one-time link.
- REST for the CLI, ``Authorization: Bearer <OIDC token>``: ``GET /approvals[?state=pending|decided|all]``,
  ``GET /approvals/<id>``, ``POST /approvals/<id>/approve|deny``, ``POST /access/requests``,
  ``GET /access/grants``.

Signed calls are accepted once: a replay of the same signature within the timestamp window is refused
(the signature's digest is recorded create-once in the decision store).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs

from wardgate.config import parse_duration
from wardgate.core.identity import AuthenticationError, TokenVerifier
from wardgate.core.model import Principal
from wardgate.core.ports import StoreUnavailable

from wardgate.approvals.links import LINK_PATH, LinkSigner
from wardgate.approvals.notify import PostFunction, post_with_urllib, sign_body, slack_escape, summary
from wardgate.approvals.records import ApprovalRefused, ApprovalRequest, Outcome, rfc3339
from wardgate.approvals.service import ApprovalService

log = logging.getLogger(__name__)

# Slack's own recommendation; also bounds how long replay digests matter.
SIGNATURE_WINDOW = 300.0
MAX_BODY = 256 * 1024

_STATUS = {
    "bad_input": 400, "unauthenticated": 401, "forged": 401, "forbidden": 403, "self_approval": 403,
    "not_approver": 403, "unknown": 404, "decided": 409, "already_voted": 409, "replayed": 409,
    "expired": 410, "link_expired": 410,
}


@dataclass(frozen=True)
class WebhookRequest:
    """An HTTP request as any framework or function runtime can hand it over."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    query: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None


@dataclass(frozen=True)
class WebhookResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _json(status: int, payload: Mapping[str, Any]) -> WebhookResponse:
    return WebhookResponse(status, {"Content-Type": "application/json"}, json.dumps(payload).encode())


def _html(status: int, title: str, content: str) -> WebhookResponse:
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1>{content}</body></html>")
    # no-store: the page embeds a one-time link; no-referrer: do not leak it to anything it links to.
    return WebhookResponse(status, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
                                    "Referrer-Policy": "no-referrer"}, page.encode())


def _refused(code: str, message: str) -> WebhookResponse:
    return _json(_STATUS.get(code, 403), {"error": message, "code": code})


# Where a Slack interaction's answer may be posted (its response_url), and how long to wait: the click
# is answered after the post, and Slack gives an interaction 3 seconds.
SLACK_RESPONSE_URLS = ("https://hooks.slack.com/",)
SLACK_RESPONSE_TIMEOUT = 2.0


def _decision_payload(request_id: str, verdict: str, outcome: Outcome | None) -> dict[str, Any]:
    if outcome is None:
        message = f"{verdict} recorded for {request_id}; waiting for more approvers"
    else:
        message = f"request {request_id} {outcome.message()}"
    return {"request_id": request_id, "vote": verdict, "message": message,
            "outcome": None if outcome is None else outcome.to_record()}


class ApprovalWebhook:
    """Routes approval HTTP calls to an :class:`ApprovalService` after checking who is calling.

    ``identities`` maps ``slack:<user id>``, ``teams:<Entra object id>`` and ``generic:<name>`` (and
    the names one-time links are minted for) to approver identities. ``grant_approvers`` maps each
    requestable role to ``(approver roles/groups, quorum)``; other roles cannot be requested.
    Any secret left None disables its route (fail closed: 401, never unauthenticated access).
    """

    def __init__(self, service: ApprovalService, *, verifier: TokenVerifier | None,
                 slack_signing_secret: bytes | None, hmac_secret: bytes | None, link_key: bytes | None,
                 identities: Mapping[str, Principal], clock: Callable[[], float] = time.time,
                 grant_approvers: Mapping[str, tuple] | None = None,
                 grant_timeout: float = 900.0, max_grant_seconds: float = 8 * 3600.0,
                 link_base_url: str = "", post: PostFunction = post_with_urllib,
                 slack_response_urls: tuple[str, ...] = SLACK_RESPONSE_URLS) -> None:
        self.service = service
        self._post = post
        self.slack_response_urls = tuple(slack_response_urls)
        self.verifier = verifier
        self._slack_secret = slack_signing_secret
        self._hmac_secret = hmac_secret
        self.links = None if link_key is None else LinkSigner(link_key, service.store, base_url=link_base_url,
                                                               clock=clock)
        self.identities = dict(identities)
        self._clock = clock
        self.grant_approvers = dict(grant_approvers or {})
        self.grant_timeout = grant_timeout
        self.max_grant_seconds = max_grant_seconds

    def handle(self, request: WebhookRequest) -> WebhookResponse:
        if len(request.body) > MAX_BODY:
            return _json(413, {"error": f"request body over {MAX_BODY} bytes"})
        path, _, query_text = request.path.partition("?")
        query = {**{k: v[-1] for k, v in parse_qs(query_text).items()}, **request.query}
        try:
            return self._route(request, path.rstrip("/") or "/", query)
        except ApprovalRefused as exc:
            return _refused(exc.code, str(exc))
        except StoreUnavailable as exc:
            log.error("approvals webhook: %s", exc)
            return _json(503, {"error": f"the decision store is unavailable, nothing was recorded: {exc}"})

    def _route(self, request: WebhookRequest, path: str, query: Mapping[str, str]) -> WebhookResponse:
        method = request.method.upper()
        parts = path.strip("/").split("/")
        if path == "/approvals/slack" and method == "POST":
            return self._slack(request)
        if path in ("/approvals/teams", "/approvals/generic") and method == "POST":
            return self._signed_json(request, parts[1])
        if path.startswith(LINK_PATH) and len(parts) == 3:
            if method == "GET":
                return self._link_page(parts[2])
            if method == "POST":
                return self._link_use(parts[2], request.body)
        if path == "/approvals" and method == "GET":
            return self._list(self._caller(request), query.get("state", "pending"))
        if len(parts) == 2 and parts[0] == "approvals" and method == "GET":
            return self._show(self._caller(request), parts[1])
        if len(parts) == 3 and parts[0] == "approvals" and parts[2] in ("approve", "deny") and method == "POST":
            caller = self._caller(request)
            reason = str(self._json_body(request, optional=True).get("reason") or "")
            outcome = self.service.decide(parts[1], caller, parts[2], reason, via="cli")
            return _json(200, _decision_payload(parts[1], parts[2], outcome))
        if path == "/access/requests" and method == "POST":
            return self._grant_request(self._caller(request), self._json_body(request))
        if path == "/access/grants" and method == "GET":
            return self._grants(self._caller(request), query.get("resource"))
        return _json(404, {"error": f"no route {method} {path}"})

    # -- authentication --------------------------------------------------------------------------

    def _caller(self, request: WebhookRequest) -> Principal:
        if self.verifier is None:
            raise ApprovalRefused("unauthenticated", "this endpoint has no token verifier configured")
        authorization = request.header("Authorization") or ""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApprovalRefused("unauthenticated", "send 'Authorization: Bearer <OIDC token>'")
        try:
            return self.verifier.verify(token.strip())
        except AuthenticationError as exc:
            raise ApprovalRefused("unauthenticated", f"token refused ({exc.reason}): {exc}") from None

    def _check_signature(self, secret: bytes | None, what: str, timestamp: str | None, signature: str | None,
                         expected: Callable[[bytes, str], str]) -> None:
        if secret is None:
            raise ApprovalRefused("unauthenticated", f"{what} decisions are not configured (no signing secret)")
        if not timestamp or not signature:
            raise ApprovalRefused("unauthenticated",
                                  f"{what} request is not signed (timestamp/signature header missing)")
        try:
            sent_at = float(timestamp)
        except ValueError:
            raise ApprovalRefused("unauthenticated", f"{what} timestamp {timestamp[:40]!r} is not a number") from None
        if abs(self._clock() - sent_at) > SIGNATURE_WINDOW:
            raise ApprovalRefused("unauthenticated", f"{what} request timestamp is outside the "
                                  f"{SIGNATURE_WINDOW:g}s window (stale or replayed request)")
        if not hmac.compare_digest(signature.encode(), expected(secret, timestamp).encode()):
            raise ApprovalRefused("unauthenticated", f"{what} signature does not verify")
        # Within the window a captured request would verify again: accept each signature once.
        digest = hashlib.sha256(signature.encode()).hexdigest()
        if not self.service.store.create(f"webhook-replay/{digest}", {"at": rfc3339(self._clock()), "via": what}):
            raise ApprovalRefused("replayed", f"this {what} request was already received (replay refused)")

    def _identity(self, key: str) -> Principal:
        principal = self.identities.get(key)
        if principal is None:
            raise ApprovalRefused("forbidden", f"{key} is not mapped to an approver identity; "
                                  "ask an administrator to add it to the approvals identities")
        return principal

    # -- signed channels -------------------------------------------------------------------------

    def _slack(self, request: WebhookRequest) -> WebhookResponse:
        body = request.body
        self._check_signature(
            self._slack_secret, "Slack", request.header("X-Slack-Request-Timestamp"),
            request.header("X-Slack-Signature"),
            lambda secret, ts: "v0=" + hmac.new(secret, b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest())
        try:
            payload = json.loads(parse_qs(body.decode())["payload"][-1])
            user = payload["user"]["id"]
            value = payload["actions"][0]["value"]
        except (KeyError, IndexError, TypeError, ValueError, UnicodeDecodeError):
            raise ApprovalRefused("bad_input", "not a Slack block_actions payload with a wardgate button") from None
        # Slack shows nothing of the answer to a button click: what the clicker and the channel see
        # goes to the interaction's response_url.
        response_url = payload.get("response_url") if isinstance(payload, dict) else None
        verdict, _, request_id = str(value).partition(":")
        try:
            approver = self._identity(f"slack:{user}")
            outcome = self.service.decide(request_id, approver, verdict, via="slack")
        except ApprovalRefused as exc:
            told = {"response_type": "ephemeral", "replace_original": False, "text": f":no_entry: {exc}"}
            self._slack_respond(response_url, told)
            response = _refused(exc.code, str(exc))
            return _json(response.status, {**response.json(), **told})
        result = _decision_payload(request_id, verdict, outcome)
        text = f"{approver.subject}: {result['message']}"
        if outcome is None:  # a quorum vote: the buttons stay for the other approvers
            self._slack_respond(response_url, {"response_type": "ephemeral", "replace_original": False,
                                               "text": f":ballot_box_with_check: {result['message']}"})
        else:  # decided: the request's message loses its buttons and says who decided
            mark = ":white_check_mark:" if outcome.approved else ":no_entry_sign:"
            self._slack_respond(response_url, {
                "replace_original": True, "text": f"{mark} {result['message']}",
                "blocks": [{"type": "section", "text": {"type": "mrkdwn",
                                                        "text": slack_escape(f"{mark} {result['message']}")}}]})
        return _json(200, {**result, "response_type": "in_channel", "replace_original": False, "text": text})

    def _slack_respond(self, url: Any, message: dict[str, Any]) -> None:
        """POST ``message`` to a Slack interaction's ``response_url``. Only to Slack's own hooks
        (``slack_response_urls``): the URL comes in the request, and the gateway must not be made to
        POST anywhere else. The decision is already recorded: a failure here is logged, not raised."""
        if not isinstance(url, str) or not url:
            return
        if not any(url.startswith(prefix) for prefix in self.slack_response_urls):
            log.warning("approvals webhook: Slack response_url %.80r is not under %s: not answered", url,
                        ", ".join(self.slack_response_urls))
            return
        try:
            status = self._post(url, json.dumps(message).encode(), {"Content-Type": "application/json"},
                                SLACK_RESPONSE_TIMEOUT)
        except OSError as exc:
            log.warning("approvals webhook: cannot answer at Slack's response_url: %s", exc)
            return
        if not 200 <= status < 300:
            log.warning("approvals webhook: Slack's response_url answered %d", status)

    def _signed_json(self, request: WebhookRequest, channel: str) -> WebhookResponse:
        self._check_signature(self._hmac_secret, channel.capitalize(), request.header("X-Wardgate-Timestamp"),
                              request.header("X-Wardgate-Signature"),
                              lambda secret, ts: sign_body(secret, ts, request.body))
        payload = self._json_body(request)
        request_id, verdict, approver = (payload.get(k) for k in ("request_id", "verdict", "approver"))
        if not all(isinstance(v, str) and v for v in (request_id, verdict, approver)):
            raise ApprovalRefused("bad_input", "body needs string fields request_id, verdict and approver")
        principal = self._identity(f"{channel}:{approver}")
        outcome = self.service.decide(request_id, principal, verdict, str(payload.get("reason") or ""), via=channel)
        return _json(200, _decision_payload(request_id, verdict, outcome))

    # -- one-time links --------------------------------------------------------------------------

    def _link_signer(self) -> LinkSigner:
        if self.links is None:
            raise ApprovalRefused("unauthenticated", "approval links are not configured (no link key)")
        return self.links

    def _link_page(self, token: str) -> WebhookResponse:
        claim = self._link_signer().verify(token)  # verify only: prefetching a link must not vote
        request, _votes, outcome = self.service.get(claim.request_id)
        if outcome is not None:
            raise ApprovalRefused("decided", f"approval request {request.id} is already {outcome.message()}")
        details = f"<p>{html.escape(summary(request))}</p>"
        if request.statement:
            details += f"<pre>{html.escape(request.statement)}</pre>"
        form = ("<form method='post' action=''><label>Reason (optional) <input name='reason' size='60'></label> "
                f"<button type='submit'>{html.escape(claim.verdict.capitalize())} as {html.escape(claim.approver)}"
                "</button></form>")
        return _html(200, f"{claim.verdict.capitalize()} request {request.id}?",
                     details + f"<p>Deadline: {rfc3339(request.deadline)}</p>" + form)

    def _link_use(self, token: str, body: bytes) -> WebhookResponse:
        claim = self._link_signer().redeem(token)
        principal = self._identity(claim.approver)
        reason = parse_qs(body.decode(errors="replace")).get("reason", [""])[-1]
        outcome = self.service.decide(claim.request_id, principal, claim.verdict, reason, via="link")
        result = _decision_payload(claim.request_id, claim.verdict, outcome)
        return _html(200, "Decision recorded", f"<p>{html.escape(result['message'])}</p>")

    # -- REST for the CLI ------------------------------------------------------------------------

    @staticmethod
    def _json_body(request: WebhookRequest, optional: bool = False) -> dict[str, Any]:
        if optional and not request.body.strip():
            return {}
        try:
            payload = json.loads(request.body)
        except ValueError:
            raise ApprovalRefused("bad_input", "the body is not JSON") from None
        if not isinstance(payload, dict):
            raise ApprovalRefused("bad_input", "the body must be a JSON object")
        return payload

    def _list(self, caller: Principal, state: str) -> WebhookResponse:
        if state not in ("pending", "decided", "all"):
            raise ApprovalRefused("bad_input", f"state must be pending, decided or all, not {state[:40]!r}")
        rows = [{**request.to_record(), "outcome": None if outcome is None else outcome.to_record()}
                for request, outcome in self.service.requests(state) if self.service.may_see(caller, request)]
        return _json(200, {"requests": rows})

    def _show(self, caller: Principal, request_id: str) -> WebhookResponse:
        request, votes, outcome = self.service.get(request_id)
        if not self.service.may_see(caller, request):
            raise ApprovalRefused("forbidden",
                                  f"{caller.subject} is neither the requester nor an approver of {request_id}")
        return _json(200, {"request": request.to_record(), "votes": [v.to_record() for v in votes],
                           "outcome": None if outcome is None else outcome.to_record()})

    def _grant_request(self, caller: Principal, payload: Mapping[str, Any]) -> WebhookResponse:
        role, resource, reason = (payload.get(k) for k in ("role", "resource", "reason"))
        if not all(isinstance(v, str) and v.strip() for v in (role, resource, reason)):
            raise ApprovalRefused("bad_input", "an access request needs resource, role, duration and reason")
        if role not in self.grant_approvers:
            requestable = ", ".join(sorted(self.grant_approvers)) or "none"
            raise ApprovalRefused("forbidden", f"role {role!r} cannot be requested (requestable roles: {requestable})")
        try:
            duration = parse_duration(payload.get("duration"))
        except ValueError as exc:
            raise ApprovalRefused("bad_input", f"duration: {exc}") from None
        # (approvers, quorum) or (approvers, quorum, longest grant of this role in seconds)
        entry = self.grant_approvers[role]
        approvers, quorum = entry[0], entry[1]
        limit = min(entry[2], self.max_grant_seconds) if len(entry) > 2 else self.max_grant_seconds
        if not 0 < duration <= limit:
            raise ApprovalRefused("bad_input", f"duration of role {role!r} must be between 1s and {limit:g}s")
        request = self.service.request_grant(caller, resource=resource, role=role, duration_seconds=duration,
                                             reason=reason, approvers=list(approvers), quorum=quorum,
                                             timeout_seconds=self.grant_timeout)
        return _json(201, {"request": request.to_record(), "message": self.service.notice_text(request)})

    def _grants(self, caller: Principal, resource: str | None) -> WebhookResponse:
        grants = self.service.active_grants(caller, resource)
        now = self._clock()
        requests = [_grant_row(request, outcome, now) for request, outcome in self.service.grant_requests(caller)
                    if resource is None or request.resource == resource]
        return _json(200, {"grants": [{"id": g.id, "role": g.role, "resource": g.resource,
                                       "expires_at": rfc3339(g.expires_at), "approved_by": list(g.approved_by)}
                                      for g in grants],
                           "requests": requests})


def _grant_row(request: ApprovalRequest, outcome: Outcome | None, now: float) -> dict[str, Any]:
    state = outcome.verdict if outcome is not None else "pending" if now < request.deadline else "expired"
    return {"id": request.id, "role": request.role, "resource": request.resource,
            "duration_seconds": request.duration_seconds, "reason": request.reason,
            "created": rfc3339(request.created), "state": state}
