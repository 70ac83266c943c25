"""Pulumi entry point: ``pulumi up`` in infra/gcp deploys the stack's environment."""

import sys
from pathlib import Path

# Pulumi runs this file with the working directory infra/gcp: put the repository root on sys.path
# so `infra.*` and `functions.*` import the code of this checkout (see infra/common/paths.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pulumi  # noqa: E402

from infra.gcp.wardgate_gcp import deploy  # noqa: E402
from infra.common.config import load_from_pulumi  # noqa: E402

deployment = deploy(load_from_pulumi())
for key, value in deployment.outputs.items():
    pulumi.export(key, value)
