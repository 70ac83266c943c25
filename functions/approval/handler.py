"""The approval function, cloud-agnostic: the notifier and the webhook of ``wardgate.approvals``.

The cloud entry points (``aws.py``, ``gcp.py``, ``azure_app.py``) only translate their platform's
event into :class:`~wardgate.core.ports.QueueMessage`\\ s or a
:class:`~wardgate.approvals.webhook.WebhookRequest` and call :meth:`ApprovalFunction.notify` or
:meth:`ApprovalFunction.webhook`: the same classes the gateway runs in-process in its embedded default.

Settings (environment; references only, see ``functions/README.md``):

| variable | used by | meaning |
|---|---|---|
| ``WARDGATE_DECISION_STORE`` | both | the create-once store the gateway writes requests to |
| ``WARDGATE_APPROVAL_CHANNEL`` | both | ``slack``, ``teams`` or ``generic`` |
| ``WARDGATE_WEBHOOK_URL_SECRET`` | notifier | secret URL holding the Slack/Teams/generic webhook URL |
| ``WARDGATE_SIGNING_SECRET`` | both | secret URL: Slack's signing secret, or the HMAC key of teams/generic bodies; one-time links use a key derived from it |
| ``WARDGATE_WEBHOOK_ENDPOINT`` | notifier | the webhook function's public URL (links); on Azure ``https://$WEBSITE_HOSTNAME/api`` |
| ``WARDGATE_APPROVER_GROUPS`` | webhook | comma-separated: the only groups this function accepts as approver roles |
| ``WARDGATE_ISSUERS`` | webhook | JSON list of trusted OIDC issuers (``{issuer, audience, jwks_uri?, algorithms?}``) for the REST API; unset: the REST API refuses every call |
| ``WARDGATE_APPROVER_IDENTITIES`` | webhook | JSON ``{"slack:U123": {issuer, subject, groups, display?}}``: who a chat user is |
| ``WARDGATE_LINK_APPROVERS`` | notifier | comma-separated identity keys to mint one-time links for (Teams needs them) |
| ``WARDGATE_GRANTS`` | webhook | JSON ``{role: {approvers, quorum?, max_duration?}}``: roles requestable just in time |

Idempotency: a notification that reached its receiver is recorded create-once in the decision store
(``notification/<request>/delivered/<hash of the message id>``), keyed on the queue's message id; a redelivery of
that message (a crashed or timed-out batch, SQS/Pub/Sub at-least-once) is acknowledged without a
second post. The store's first-write-wins is the same guarantee the approval records rely on, on every
cloud, so no separate idempotency table is deployed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlparse

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import TypeAdapter, ValidationError

from wardgate import adapters
from wardgate.approvals.notify import Notifier, PostFunction, WebhookTarget, post_with_urllib
from wardgate.approvals.records import ApprovalRefused, check_id, rfc3339
from wardgate.approvals.service import ApprovalService
from wardgate.approvals.webhook import ApprovalWebhook, WebhookRequest, WebhookResponse
from wardgate.config import ApproverIdentity, GrantRoleConfig, IssuerConfig
from wardgate.core.credentials import open_source
from wardgate.core.identity import TokenVerifier
from wardgate.core.model import Principal
from wardgate.core.ports import DecisionStore, QueueMessage, StoreUnavailable

log = logging.getLogger("wardgate.functions.approval")

CHANNELS = ("slack", "teams", "generic")
_CORE_SECRET_SCHEMES = ("env", "file")  # local runs; every other scheme is a cloud secret manager
_LINK_KEY_INFO = b"wardgate approval links v1"


class SettingsError(ValueError):
    """A function setting is missing or malformed; the message names the variable."""


class NotificationFailed(RuntimeError):
    """Raised by entry points for a message that was not delivered: the platform must redeliver it
    (and, after the queue's max receives, dead-letter it)."""


# --- settings ------------------------------------------------------------------------------------

def _setting(environ: Mapping[str, str], name: str, *, required: bool = True) -> str | None:
    value = (environ.get(name) or "").strip()
    if not value and required:
        raise SettingsError(f"{name} is not set: the approval function cannot run without it (functions/README.md)")
    return value or None


def _setting_list(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in (environ.get(name) or "").split(",") if part.strip())


def _setting_json(environ: Mapping[str, str], name: str, shape: Any, default: Any) -> Any:
    text = (environ.get(name) or "").strip()
    if not text:
        return default
    try:
        return TypeAdapter(shape).validate_python(json.loads(text))
    except ValidationError as exc:
        raise SettingsError(f"{name} is not valid: {exc.errors(include_url=False)}") from None
    except ValueError as exc:
        raise SettingsError(f"{name} is not JSON: {exc}") from None


def read_secret(url: str, what: str) -> str:
    """The value behind a secret URL (a JSON ``{"username", "password"}`` secret gives its password)."""
    if urlparse(url).scheme in _CORE_SECRET_SCHEMES:
        source = open_source(url, what)
    else:
        source = adapters.open_secret_source(url, what)
    value = source.fetch().password
    if not value:
        raise SettingsError(f"the secret behind {url} ({what}) is empty")
    return value


@dataclass(frozen=True)
class ApprovalSettings:
    """The approval function's settings, as read from the environment (no secret values)."""

    decision_store: str
    channel: str
    signing_secret: str | None = None
    webhook_url_secret: str | None = None
    webhook_endpoint: str | None = None
    approver_groups: tuple[str, ...] = ()
    issuers: tuple[IssuerConfig, ...] = ()
    identities: Mapping[str, ApproverIdentity] | None = None
    link_approvers: tuple[str, ...] = ()
    grants: Mapping[str, GrantRoleConfig] | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "ApprovalSettings":
        env = os.environ if environ is None else environ
        channel = _setting(env, "WARDGATE_APPROVAL_CHANNEL")
        if channel not in CHANNELS:
            raise SettingsError(f"WARDGATE_APPROVAL_CHANNEL is {channel!r}, not one of {', '.join(CHANNELS)}")
        endpoint = _setting(env, "WARDGATE_WEBHOOK_ENDPOINT", required=False)
        if endpoint is None and env.get("WEBSITE_HOSTNAME"):
            # Azure Functions: the platform names the host; HTTP triggers live under /api.
            endpoint = f"https://{env['WEBSITE_HOSTNAME']}/api"
        return cls(
            decision_store=_setting(env, "WARDGATE_DECISION_STORE"),
            channel=channel,
            signing_secret=_setting(env, "WARDGATE_SIGNING_SECRET", required=False),
            webhook_url_secret=_setting(env, "WARDGATE_WEBHOOK_URL_SECRET", required=False),
            webhook_endpoint=endpoint.rstrip("/") if endpoint else None,
            approver_groups=_setting_list(env, "WARDGATE_APPROVER_GROUPS"),
            issuers=tuple(_setting_json(env, "WARDGATE_ISSUERS", list[IssuerConfig], [])),
            identities=_setting_json(env, "WARDGATE_APPROVER_IDENTITIES", dict[str, ApproverIdentity], {}),
            link_approvers=_setting_list(env, "WARDGATE_LINK_APPROVERS"),
            grants=_setting_json(env, "WARDGATE_GRANTS", dict[str, GrantRoleConfig], {}),
        )


def link_key_from(signing_secret: bytes) -> bytes:
    """The one-time-link key, derived (HKDF-SHA256) from the signing secret: the notifier that mints
    links and the webhook that redeems them share it without a third secret, and a link key never
    equals the key that signs webhook bodies."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_LINK_KEY_INFO).derive(signing_secret)


# --- the queue the platform already received from -------------------------------------------------

class _DeliveredMessages:
    """A :class:`MessageQueue` over messages the platform handed in (a Lambda batch, a push request,
    a queue trigger). ``ack`` only notes success: the platform deletes the message when the entry point
    reports it handled, and redelivers it otherwise."""

    def __init__(self, messages: Sequence[QueueMessage], url: str):
        self.url = url
        self._pending = list(messages)
        self.acked: set[str] = set()

    def send(self, body: bytes, attributes: Mapping[str, str] | None = None) -> str:
        raise NotImplementedError("the notifier never sends")

    def receive(self, max_messages: int = 10, wait_seconds: float = 0.0) -> list[QueueMessage]:
        taken, self._pending = self._pending[:max_messages], self._pending[max_messages:]
        return taken

    def ack(self, message: QueueMessage) -> None:
        self.acked.add(message.id)

    def dead_letters(self, max_messages: int = 10) -> list[QueueMessage]:
        return []


@dataclass(frozen=True)
class NotifyResult:
    """What became of one message: ``ok`` means the platform may delete it."""

    message_id: str
    ok: bool
    outcome: str  # delivered, duplicate, already-decided, failed
    error: str | None = None


def _delivered_key(request_id: str, message_id: str) -> str:
    # Message ids are SQS UUIDs, Pub/Sub numbers, Azure GUIDs: hashed into one safe key part.
    return f"notification/{check_id(request_id)}/delivered/{hashlib.sha256(message_id.encode()).hexdigest()[:40]}"


def _request_id_of(message: QueueMessage) -> str | None:
    try:
        request_id = json.loads(message.body).get("id")
    except (ValueError, AttributeError):
        return None
    try:
        return check_id(request_id)
    except ApprovalRefused:
        return None


# --- the function ---------------------------------------------------------------------------------

class ApprovalFunction:
    """Builds the notifier and the webhook from :class:`ApprovalSettings`, once per warm instance.

    ``store`` and ``post`` can be handed in (tests, other runtimes); otherwise they come from the
    settings' URLs. Secrets are read on first use, so a webhook-only deployment never needs the
    notifier's webhook URL secret, and vice versa.
    """

    def __init__(self, settings: ApprovalSettings, *, store: DecisionStore | None = None,
                 post: PostFunction = post_with_urllib, max_attempts: int = 4, base_delay: float = 0.5,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.settings = settings
        self.store = store if store is not None else adapters.open_decision_store(settings.decision_store)
        self._post = post
        self._max_attempts = max_attempts
        self._base_delay = base_delay
        self._sleep = sleep
        self._lock = threading.Lock()
        self._signing_secret: bytes | None = None
        self._target: WebhookTarget | None = None
        self._webhook: ApprovalWebhook | None = None

    # -- secrets, read once --------------------------------------------------------------------------

    def _signing(self) -> bytes:
        if self._signing_secret is None:
            if self.settings.signing_secret is None:
                raise SettingsError(f"WARDGATE_SIGNING_SECRET is not set: {self.settings.channel} decisions and "
                                    "one-time links cannot be verified without it")
            self._signing_secret = read_secret(self.settings.signing_secret, "signing secret").encode()
        return self._signing_secret

    def _notify_target(self) -> WebhookTarget:
        with self._lock:
            if self._target is None:
                settings = self.settings
                if settings.webhook_url_secret is None:
                    raise SettingsError("WARDGATE_WEBHOOK_URL_SECRET is not set: the notifier has nowhere to post")
                url = read_secret(settings.webhook_url_secret, "webhook URL")
                links = None
                if settings.link_approvers:
                    if settings.webhook_endpoint is None:
                        raise SettingsError("WARDGATE_LINK_APPROVERS needs WARDGATE_WEBHOOK_ENDPOINT: links point there")
                    from wardgate.approvals.links import LinkSigner

                    links = LinkSigner(link_key_from(self._signing()), self.store,
                                       base_url=settings.webhook_endpoint)
                # Slack verifies nothing we sign (its webhook URL is the credential); teams/generic bodies are signed.
                secret = self._signing() if settings.channel != "slack" else None
                try:
                    self._target = WebhookTarget(settings.channel, url, secret=secret, links=links,
                                                 link_approvers=settings.link_approvers)
                except ValueError as exc:
                    raise SettingsError(f"approval notifications ({settings.channel}): {exc}") from None
            return self._target

    def _approval_webhook(self) -> ApprovalWebhook:
        with self._lock:
            if self._webhook is None:
                settings = self.settings
                if not settings.approver_groups:
                    # Without a policy here, groups are the only roles: an empty list would let nobody,
                    # or (worse, if read as "any") everybody, decide. Refuse to start instead.
                    raise SettingsError("WARDGATE_APPROVER_GROUPS is not set: the webhook would not know who may "
                                        "approve")
                accepted = frozenset(settings.approver_groups)
                service = ApprovalService(self.store, None, roles_of=lambda p: accepted.intersection(p.groups))
                secret = self._signing() if settings.signing_secret else None
                identities = {name: Principal(i.issuer, i.subject, tuple(i.groups),
                                              {"display": i.display} if i.display else {})
                              for name, i in (settings.identities or {}).items()}
                grants = settings.grants or {}
                self._webhook = ApprovalWebhook(
                    service, verifier=TokenVerifier(list(settings.issuers)) if settings.issuers else None,
                    slack_signing_secret=secret if settings.channel == "slack" else None,
                    hmac_secret=secret if settings.channel != "slack" else None,
                    link_key=link_key_from(secret) if secret else None, identities=identities,
                    grant_approvers={role: (tuple(g.approvers), g.quorum, g.max_duration) for role, g in grants.items()},
                    max_grant_seconds=max((g.max_duration for g in grants.values()), default=8 * 3600.0),
                    link_base_url=settings.webhook_endpoint or "")
            return self._webhook

    # -- entry points ----------------------------------------------------------------------------------

    def notify(self, messages: Sequence[QueueMessage], queue_url: str = "") -> list[NotifyResult]:
        """Post each message's approval request to the webhook; one result per message, in order."""
        target = self._notify_target()
        return [self._notify_one(message, target, queue_url) for message in messages]

    def _notify_one(self, message: QueueMessage, target: WebhookTarget, queue_url: str) -> NotifyResult:
        request_id = _request_id_of(message)
        if request_id is not None:
            try:
                if self.store.get(_delivered_key(request_id, message.id)) is not None:
                    log.info("approval notifier: message %s (request %s) was already delivered; not posting again",
                             message.id, request_id)
                    return NotifyResult(message.id, True, "duplicate")
            except StoreUnavailable as exc:
                log.warning("approval notifier: cannot check whether %s was delivered: %s", message.id, exc)
        batch = _DeliveredMessages([message], queue_url or "platform-delivered")
        kwargs = {"sleep": self._sleep} if self._sleep is not None else {}
        notifier = Notifier(batch, target, store=self.store, post=self._post, max_attempts=self._max_attempts,
                            base_delay=self._base_delay, **kwargs)
        stats = notifier.run_once(max_messages=1)
        if message.id not in batch.acked:
            return NotifyResult(message.id, False, "failed", "; ".join(stats.errors) or "not delivered")
        if stats.skipped:
            return NotifyResult(message.id, True, "already-decided")
        if request_id is None:
            return NotifyResult(message.id, True, "delivered")
        try:
            self.store.create(_delivered_key(request_id, message.id),
                              {"request_id": request_id, "message_id": message.id, "channel": target.kind,
                               "at": rfc3339(time.time())})
        except StoreUnavailable as exc:
            # The post went out; failing to note it costs at most a duplicate notification later.
            log.warning("approval notifier: delivered %s but could not record it: %s", message.id, exc)
        return NotifyResult(message.id, True, "delivered")

    def webhook(self, request: WebhookRequest) -> WebhookResponse:
        return self._approval_webhook().handle(request)


# One instance per warm function container, rebuilt if the settings change (tests, redeploys).
_instances: dict[str, ApprovalFunction] = {}
_instances_lock = threading.Lock()


def approval_function(environ: Mapping[str, str] | None = None) -> ApprovalFunction:
    settings = ApprovalSettings.from_environment(environ)
    key = _freeze(settings)
    with _instances_lock:
        instance = _instances.get(key)
        if instance is None:
            instance = _instances[key] = ApprovalFunction(settings)
        return instance


def _freeze(settings: ApprovalSettings) -> str:
    # Settings hold dicts and pydantic models (unhashable): key the cache by their JSON form.
    return json.dumps({k: [i.model_dump() for i in v] if k == "issuers" else
                       ({n: m.model_dump() for n, m in v.items()} if isinstance(v, Mapping) else v)
                       for k, v in settings.__dict__.items()}, sort_keys=True, default=str)
