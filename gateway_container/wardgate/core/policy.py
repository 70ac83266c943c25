"""Policy interface used by the decision core.

The full policy-as-code engine (roles from claims, rules per resource, review, masking profiles)
implements this same interface; until a policy is configured the gateway allows every parsed
statement (and still records each one).
"""

from __future__ import annotations

from typing import Protocol

from wardgate.core.model import Command, Decision, Principal, Verdict


class Policy(Protocol):
    bundle_hash: str

    def decide(self, principal: Principal, resource: str, command: Command) -> Decision: ...


class AllowAll:
    """Allows every command that parsed. Used by ``make demo`` and the overhead benchmark."""

    bundle_hash = "builtin:allow-all"
    _ALLOW = Decision(Verdict.ALLOW, rule="builtin:allow-all", controls=("AC-3",))

    def decide(self, principal: Principal, resource: str, command: Command) -> Decision:
        return self._ALLOW
