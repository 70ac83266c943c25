"""Fixtures of the infra tests (the mocks harness itself is ``infra_harness``: a uniquely named module,
because several test directories here have a ``conftest``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra_harness import FAKE_SOURCES, ensure_event_loop


@pytest.fixture(autouse=True)
def _main_thread_event_loop():
    """For tests that use Pulumi outside ``run_program`` (module fixtures call it through run_program)."""
    ensure_event_loop()
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
