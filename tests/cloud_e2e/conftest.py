"""Fixtures for the end-to-end cloud flows (the flow itself is ``cloud_flow``; the local clouds and
``receiver`` come from ``cloud_fixtures``)."""

from __future__ import annotations

import pytest

import cloud_flow  # noqa: F401  (puts tests/functions on sys.path)


@pytest.fixture(autouse=True)
def _fresh_functions(fresh_function_instances: None) -> None:
    """Each flow builds its functions from its own settings."""
