"""CrossGuard entry point: ``pulumi preview --policy-pack infra/policy-pack`` checks every resource of a
stack against wardgate's invariants (mandatory: a violation stops the update)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pulumi_policy import EnforcementLevel, PolicyPack  # noqa: E402

from wardgate_policies import crossguard_policies  # noqa: E402

# Serves the engine until it is done (PolicyPack blocks): keep this file free of anything else.
PolicyPack(name="wardgate-invariants", enforcement_level=EnforcementLevel.MANDATORY, policies=crossguard_policies())
