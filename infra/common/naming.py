"""One naming scheme for every cloud: ``wardgate-<environment>-<purpose>``.

Names say what a resource is for and which environment owns it, so an auditor reading a console or a
bill sees the deployment's shape. Globally unique names (buckets, storage accounts, key vaults) take the
stack's ``name_suffix`` when the plain name is taken. A name that would be too long is an error, never
silently truncated: two truncated names could collide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PRODUCT = "wardgate"


class NameTooLong(ValueError):
    """A generated name exceeds what the cloud accepts for that resource type."""


@dataclass(frozen=True)
class Naming:
    """Names and tags for one stack."""

    environment: str
    suffix: str = ""

    def name(self, purpose: str, max_length: int = 63) -> str:
        """``wardgate-prod-approvals``: lowercase letters, digits and hyphens."""
        return self._checked(f"{PRODUCT}-{self.environment}-{purpose}", max_length)

    def global_name(self, purpose: str, max_length: int = 63) -> str:
        """A globally unique name (bucket…): :meth:`name` plus the stack's suffix."""
        base = f"{PRODUCT}-{self.environment}-{purpose}"
        return self._checked(f"{base}-{self.suffix}" if self.suffix else base, max_length)

    def compact(self, purpose: str, max_length: int = 24) -> str:
        """``wgprodaudit``: letters and digits only (Azure storage accounts, short ids)."""
        compact_purpose = re.sub(r"[^a-z0-9]", "", purpose.lower())
        return self._checked(f"wg{self.environment}{compact_purpose}{self.suffix}", max_length)

    def tags(self) -> dict[str, str]:
        """Tags/labels on every resource that takes them."""
        return {"app": PRODUCT, "environment": self.environment, "managed-by": "pulumi"}

    @staticmethod
    def _checked(name: str, max_length: int) -> str:
        if len(name) > max_length:
            raise NameTooLong(f"name {name!r} is {len(name)} characters; this resource type allows "
                              f"{max_length}: use a shorter environment or purpose")
        return name
