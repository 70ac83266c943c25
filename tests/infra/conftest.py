"""Fixtures of the infra tests (the mocks harness itself is ``infra_harness``: a uniquely named module,
because several test directories here have a ``conftest``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from infra_harness import FAKE_SOURCES


@pytest.fixture(autouse=True)
def _main_thread_event_loop():
    """Pulumi's mocks run on ``asyncio.get_event_loop()``. Earlier tests in the same run (``asyncio.run``,
    in-process gateways) can leave the main thread with no current loop, or a closed one."""
    try:
        loop = asyncio.get_event_loop()
        usable = not loop.is_closed()
    except RuntimeError:
        usable = False
    if not usable:
        asyncio.set_event_loop(asyncio.new_event_loop())
    yield


@pytest.fixture(scope="module")
def fake_functions(tmp_path_factory) -> Path:
    """A complete ``functions/`` tree in the documented layout (the real sources come later)."""
    root = tmp_path_factory.mktemp("functions-src") / "functions"
    for relative, text in FAKE_SOURCES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# fake source for packaging tests: {relative}\n{text}")
    return root


def pytest_configure(config):
    # pulumi_aws warns about its own deprecated classes at import time; none of them is used here.
    config.addinivalue_line("filterwarnings", "ignore:.*deprecated.*:DeprecationWarning")
