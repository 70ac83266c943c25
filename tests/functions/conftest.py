"""Fixtures for the function entry-point tests (``functions_helpers`` holds the plain helpers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from functions_helpers import Receiver, start_receiver  # also puts the repository root on sys.path


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver (Slack/Teams/generic stand-in) on a free loopback port."""
    with start_receiver() as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_function_instances() -> Iterator[None]:
    """Each test builds its functions from its own settings (warm-instance cache cleared)."""
    from functions.approval import handler

    handler._instances.clear()
    yield
    handler._instances.clear()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("filterwarnings", "ignore:You are using a Python version:FutureWarning")
