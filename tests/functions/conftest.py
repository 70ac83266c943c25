"""Fixtures for the function entry-point tests (``functions_helpers`` holds the platform events; the
local clouds and ``receiver`` come from ``cloud_fixtures``)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _fresh_functions(fresh_function_instances: None) -> None:
    """Each test builds its functions from its own settings."""
