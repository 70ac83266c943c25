"""Protocol-neutral values that flow through the decision core.

A protocol adapter turns bytes into these; the core never sees a wire format.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as proven by a verified token."""

    issuer: str
    subject: str
    groups: tuple[str, ...] = ()
    # The claims that matter for policy and audit (CI context such as ``repository``, ``ref``).
    claims: Mapping[str, Any] = field(default_factory=dict)
    token_id: str | None = None
    expires_at: float | None = None
    # Every claim of the verified token, for policy role matching; not recorded as a whole (the
    # audit records ``claims`` and whichever claims a role matched on).
    all_claims: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def audit_view(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "subject": self.subject,
            "groups": list(self.groups),
            "claims": dict(self.claims),
            "token_id": self.token_id,
        }


class Verdict(str, enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    REVIEW = "review"


@dataclass(frozen=True, slots=True)
class Approval:
    """How a ``review`` decision is approved (used by the approval flow)."""

    approvers: tuple[str, ...]
    # How often the approved command (exact text and parameters) may run: "statement" once, "session"
    # for the rest of the session, "duration" for ``seconds``.
    scope: str = "statement"
    seconds: float | None = None
    quorum: int = 1
    timeout: float = 900.0


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    rule: str
    message: str = ""
    # NIST SP 800-53 controls the decision enforces, carried into the audit record.
    controls: tuple[str, ...] = ("AC-3",)
    # What the decision saw, for the audit record and for `policy explain`.
    classes: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    # Masking profile to apply to this command's results (None: pass results through untouched).
    mask_profile: str | None = None
    approval: Approval | None = None
    # True when the answer depends on the time or the session's age (time-window rules): a prepared
    # statement is then decided again at each execution.
    volatile: bool = False
    # The most rows a result of this command may return to the client (None: no limit).
    max_rows: int | None = None


class Command:
    """One thing a client asked a resource to do: an SQL statement, an HTTP request, a git push…

    ``text`` is what the client sent and ``kind`` the protocol's own name for the request
    (``query``, ``parse``…). ``language`` says how ``text`` is analysed: "sql" (PostgreSQL grammar),
    or "opaque" for requests with no statement text to parse (a fast-path function call).
    A plain slotted class: one is made per statement, and a frozen dataclass costs twice as much.
    """

    __slots__ = ("protocol", "kind", "text", "statement_name", "language")

    def __init__(self, protocol: str, kind: str, text: str, statement_name: str | None = None,
                 language: str = "sql"):
        self.protocol = protocol
        self.kind = kind
        self.text = text
        self.statement_name = statement_name
        self.language = language

    def __repr__(self) -> str:
        return f"Command({self.protocol!r}, {self.kind!r}, {self.text[:60]!r})"


def duration_text(seconds: float) -> str:
    """A duration as policies write it: ``2h``, ``15m`` when whole, else seconds (``90s``, ``0.5s``)."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
