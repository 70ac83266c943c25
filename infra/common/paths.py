"""Where the programs find the rest of the repository.

Pulumi runs ``infra/<cloud>/__main__.py`` with the working directory ``infra/<cloud>``, so neither the
repository root (``infra``, ``functions``) nor ``gateway_container`` (the ``wardgate`` package, whose
configuration schema the programs reuse) is importable by default. :func:`make_importable` puts both
on ``sys.path`` explicitly instead of relying on the user's working directory or an installed copy,
so a program always deploys the code of the checkout it lives in.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
GATEWAY_SOURCE = REPO_ROOT / "gateway_container"
FUNCTIONS_SOURCE = REPO_ROOT / "functions"


def make_importable() -> None:
    for path in (str(REPO_ROOT), str(GATEWAY_SOURCE)):
        if path not in sys.path:
            sys.path.insert(0, path)
