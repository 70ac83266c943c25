"""Fixtures for the end-to-end cloud flows (the flow itself is ``cloud_flow``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import cloud_flow  # noqa: F401  (puts the repository root and tests/functions on sys.path)
from functions_helpers import Receiver, start_receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """The chat platform's incoming webhook, on a free loopback port."""
    with start_receiver() as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_function_instances() -> Iterator[None]:
    from functions.approval import handler

    handler._instances.clear()
    yield
    handler._instances.clear()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("filterwarnings", "ignore:You are using a Python version:FutureWarning")
