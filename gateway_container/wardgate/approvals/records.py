"""The approval flow's create-once records, their keys in the decision store, and the command hash.

Nothing here is ever updated: a request, each approver's vote and the outcome are separate records,
so "first write wins" is the decision store's own guarantee and every step is evidence on its own.

| key                                   | record                                                   |
|---------------------------------------|----------------------------------------------------------|
| ``approval/<id>/request``             | :class:`ApprovalRequest`                                 |
| ``approval/<id>/vote/<approver-key>`` | :class:`Vote` (one per approver)                         |
| ``approval/<id>/outcome``             | :class:`Outcome` (exactly one, whoever writes it first)  |
| ``approval/<id>/announce-failed``     | the queue refused the announcement (re-announced later)  |
| ``open/<day of the deadline>/<id>``   | a copy of the request: where ``pending()`` finds it      |
| ``meta/pending-index-v1``             | a scan gave the pending requests their ``open/`` copy    |
| ``grant-index/<requester-key>/<id>``  | index of a principal's grant requests (fast lookups)     |
| ``link/<nonce>``                      | a one-time approve/deny link that was used               |
| ``webhook-replay/<digest>``           | a signed webhook call that was accepted (replays refused)|
| ``notification/<id>/failed/<n>``      | delivery ``n`` of the notification failed                |
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from wardgate.core import approval as _approval
from wardgate.core.model import Principal

STATEMENT = "statement"
GRANT = "grant"
SCOPES = ("statement", "session", "duration")
VERDICTS = ("approve", "deny")
OUTCOMES = ("approved", "denied", "expired", "withdrawn")
CHANNELS = ("cli", "slack", "teams", "generic", "link")

# NIST SP 800-53 controls each record evidences (separation of duties, least privilege, non-repudiation).
REQUEST_CONTROLS = ("AC-5", "AC-6")
VOTE_CONTROLS = ("AC-5", "AU-10")
OUTCOME_CONTROLS = ("AC-5", "AU-10")

# The statement hash that approvals bind to: the gateway's own encoding, one definition (re-exported).
command_hash = _approval.command_hash

_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


class ApprovalRefused(Exception):
    """A decision, link or webhook call was refused. ``str(exc)`` is for the human who tried;
    ``code`` is stable (``unknown``, ``decided``, ``expired``, ``self_approval``, ``not_approver``,
    ``already_voted``, ``forged``, ``replayed``, ``link_expired``, ``bad_input``, ``unauthenticated``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def new_request_id() -> str:
    # 80 random bits: unguessable, short enough to type into ``wardgate approvals approve``.
    return "apr-" + secrets.token_hex(10)


def check_id(request_id: str) -> str:
    if not isinstance(request_id, str) or not _ID.match(request_id):
        raise ApprovalRefused("bad_input", f"{str(request_id)[:80]!r} is not an approval request id")
    return request_id


def approval_prefix(request_id: str) -> str:
    return f"approval/{check_id(request_id)}/"


def request_key(request_id: str) -> str:
    return approval_prefix(request_id) + "request"


def outcome_key(request_id: str) -> str:
    return approval_prefix(request_id) + "outcome"


def vote_key(request_id: str, approver: str) -> str:
    return approval_prefix(request_id) + "vote/" + approver


def identity_key(issuer: str, subject: str) -> str:
    """A store-safe key for one identity (issuers are URLs, subjects may hold any character)."""
    return hashlib.sha256(f"{issuer}\0{subject}".encode()).hexdigest()[:32]


def principal_key(principal: Principal) -> str:
    return identity_key(principal.issuer, principal.subject)


def link_key(nonce: str) -> str:
    return f"link/{check_id(nonce)}"


# A request waits at most MAX_APPROVAL_TIMEOUT for a decision. That bounds where pending requests are
# found: the ``open/<day of the deadline>/`` index holds each request under the UTC day its deadline
# falls on, so the pending ones are in the buckets of today and the next day or two, whatever the
# store's history.
MAX_APPROVAL_TIMEOUT = _approval.MAX_APPROVAL_TIMEOUT


def open_index_key(deadline: float, request_id: str) -> str:
    return f"open/{open_index_day(deadline)}/{check_id(request_id)}"


def open_index_day(instant_: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(instant_))


# Written (create-once) after a scan gave every pending request of the store its ``open/`` copy:
# requests stored by a gateway older than the index had none. Its presence lets a starting gateway
# skip that scan (ApprovalService.index_once); ``wardgate approvals reindex`` scans whatever it says.
PENDING_INDEX_MARKER = "meta/pending-index-v1"


def grant_index_key(requester_key: str, request_id: str) -> str:
    return f"grant-index/{requester_key}/{check_id(request_id)}"


def notification_failed_key(request_id: str, delivery: int) -> str:
    return f"notification/{check_id(request_id)}/failed/{int(delivery)}"


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def instant(seconds: float) -> float:
    """``seconds`` at the microsecond precision records keep, so a record read back compares equal."""
    return parse_rfc3339(rfc3339(seconds))


def describe(identity: Mapping[str, Any]) -> str:
    """``alice (https://issuer)`` for messages; a record's identity is an audit view dict."""
    return f"{identity.get('subject')} ({identity.get('issuer')})"


@dataclass(frozen=True)
class ApprovalRequest:
    """A held statement or a JIT access request, waiting for approvers (``approval/<id>/request``)."""

    id: str
    kind: str
    requester: Mapping[str, Any]
    resource: str
    approvers: tuple[str, ...]
    quorum: int
    created: float
    deadline: float
    session_id: str | None = None
    statement: str = ""
    parameters: tuple[str | None, ...] = ()
    command_hash: str = ""
    rule: str = ""
    controls: tuple[str, ...] = REQUEST_CONTROLS
    scope: str = "statement"
    scope_seconds: float | None = None
    role: str | None = None
    duration_seconds: float | None = None
    reason: str = ""

    @property
    def requester_key(self) -> str:
        return identity_key(self.requester["issuer"], self.requester["subject"])

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "session_id": self.session_id,
            "requester": dict(self.requester), "resource": self.resource, "statement": self.statement,
            "parameters": list(self.parameters), "command_hash": self.command_hash, "rule": self.rule,
            "controls": list(self.controls), "approvers": list(self.approvers), "quorum": self.quorum,
            "scope": self.scope, "scope_seconds": self.scope_seconds, "created": rfc3339(self.created),
            "deadline": rfc3339(self.deadline), "role": self.role, "duration_seconds": self.duration_seconds,
            "reason": self.reason,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "ApprovalRequest":
        return cls(
            id=record["id"], kind=record["kind"], requester=dict(record["requester"]),
            resource=record["resource"], approvers=tuple(record["approvers"]), quorum=int(record["quorum"]),
            created=parse_rfc3339(record["created"]), deadline=parse_rfc3339(record["deadline"]),
            session_id=record.get("session_id"), statement=record.get("statement", ""),
            parameters=tuple(record.get("parameters") or ()), command_hash=record.get("command_hash", ""),
            rule=record.get("rule", ""), controls=tuple(record.get("controls") or REQUEST_CONTROLS),
            scope=record.get("scope", "statement"), scope_seconds=record.get("scope_seconds"),
            role=record.get("role"), duration_seconds=record.get("duration_seconds"),
            reason=record.get("reason", ""),
        )


@dataclass(frozen=True)
class Vote:
    """One approver's decision on one request (``approval/<id>/vote/<approver-key>``)."""

    request_id: str
    approver: Mapping[str, Any]
    verdict: str
    at: float
    via: str
    reason: str = ""
    controls: tuple[str, ...] = VOTE_CONTROLS

    def to_record(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "approver": dict(self.approver), "verdict": self.verdict,
                "reason": self.reason, "at": rfc3339(self.at), "via": self.via, "controls": list(self.controls)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Vote":
        return cls(record["request_id"], dict(record["approver"]), record["verdict"], parse_rfc3339(record["at"]),
                   record["via"], record.get("reason", ""), tuple(record.get("controls") or VOTE_CONTROLS))


@dataclass(frozen=True)
class Outcome:
    """How a request ended (``approval/<id>/outcome``): approved, denied, expired or withdrawn."""

    request_id: str
    verdict: str
    at: float
    by: tuple[Mapping[str, Any], ...] = ()
    reason: str = ""
    controls: tuple[str, ...] = OUTCOME_CONTROLS

    @property
    def approved(self) -> bool:
        return self.verdict == "approved"

    def by_text(self) -> str:
        return ", ".join(describe(identity) for identity in self.by) or "nobody"

    def message(self) -> str:
        """What the waiting client is told, e.g. ``denied by bob (https://idp) at 2026-…Z: too risky``."""
        if self.verdict in ("approved", "denied"):
            text = f"{self.verdict} by {self.by_text()} at {rfc3339(self.at)}"
        elif self.verdict == "expired":
            text = f"expired: no decision by the deadline ({rfc3339(self.at)})"
        else:
            text = f"withdrawn at {rfc3339(self.at)}"
        return f"{text}: {self.reason}" if self.reason else text

    def to_record(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "verdict": self.verdict, "by": [dict(b) for b in self.by],
                "reason": self.reason, "at": rfc3339(self.at), "controls": list(self.controls)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Outcome":
        return cls(record["request_id"], record["verdict"], parse_rfc3339(record["at"]),
                   tuple(dict(b) for b in record.get("by") or ()), record.get("reason", ""),
                   tuple(record.get("controls") or OUTCOME_CONTROLS))
