"""Holding a command for a human decision: the core's side of the approval flow.

When policy answers ``review``, the protocol adapter stops relaying that client's input and calls
:meth:`wardgate.core.session.Session.await_approval`. The session writes an approval request through
an :class:`ApprovalBroker` (``wardgate.approvals.ApprovalService``: the decision store, then the
approvals queue), records it in the session's hash chain, and waits until the store holds an
outcome: approved (the statement then runs exactly as it was held), denied, expired at the deadline
(the gateway itself writes the ``expired`` outcome — create-once, so an approval that won the race
still counts) or withdrawn (the client cancelled). The adapter then resumes with the resulting
decision. Only the held client waits: other sessions are untouched.

An approval binds to the command: the request carries :func:`command_hash` of the exact text and
parameters, and the adapter forwards only the bytes it held. ``session`` and ``duration`` scopes
(policy ``approval.scope``) let that same command (same text, same parameters) run again in the same
session without another request; any other command of the rule is held again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Protocol, Sequence

from wardgate.core.model import Principal

APPROVAL_CONTROLS = ("AC-3", "AC-5", "AC-6")
DECISION_CONTROLS = ("AC-5", "AU-10")

# The longest a held command (or an access request) waits for a decision: a held statement keeps its
# client connection open meanwhile. It also bounds where the approval service finds pending requests.
MAX_APPROVAL_TIMEOUT = 24 * 3600.0

# How often a held command looks for its outcome. The store is local (SQLite) or a cloud table read
# with a single get; 100 ms keeps the approval-to-result time well under the 500 ms target.
POLL_SECONDS = 0.1


def command_hash(text: str, parameters: Sequence[bytes | str | None] = ()) -> str:
    """SHA-256 over an unambiguous encoding of a statement and its parameters (length-prefixed, NULL
    distinct from empty), so an approval can never be stretched to cover another command."""
    digest = hashlib.sha256()
    encoded = text.encode("utf-8")
    digest.update(b"T%d:" % len(encoded) + encoded)
    for value in parameters:
        if value is None:
            digest.update(b"N;")
        else:
            raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            digest.update(b"P%d:" % len(raw) + raw)
    return digest.hexdigest()


class ApprovalBroker(Protocol):
    """What the core needs from the approval service (``wardgate.approvals.ApprovalService``)."""

    def request_statement(self, requester: Principal, **fields: Any) -> Any:
        """Store the request and announce it; returns an object with ``id``."""
        ...

    def outcome(self, request_id: str) -> Any | None:
        """The outcome (``verdict``, ``by``, ``reason``, ``at``) or None while undecided."""
        ...

    def expire(self, request_id: str) -> Any: ...

    def withdraw(self, request_id: str, reason: str) -> Any: ...

    def active_grants(self, principal: Principal, resource: str) -> Iterable[Any]:
        """Approved, unexpired access grants (``id``, ``role``, ``expires_at``, ``approved_by``)."""
        ...


@dataclass(frozen=True, slots=True)
class Held:
    """A command the adapter holds: what it is and what it is waiting for."""

    request_id: str
    rule: str
    deadline: float  # time.time() at which the gateway writes ``expired``
    hint: str         # where to approve, for the client's notice


def approver_names(by: Any) -> str:
    """Human-readable list of who decided (outcome ``by``: identities as dicts or strings)."""
    names = []
    for who in by or ():
        if isinstance(who, dict):
            names.append(str(who.get("display") or who.get("subject") or who))
        else:
            names.append(str(who))
    return ", ".join(names) or "unknown"
