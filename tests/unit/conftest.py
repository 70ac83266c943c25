"""Fixtures shared by the unit tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PG_OVERHEAD = Path(__file__).resolve().parents[2] / "bench" / "pg_overhead.py"


@pytest.fixture(scope="session")
def bench():
    """``bench/pg_overhead.py`` (what ``make bench`` runs), imported as a module."""
    spec = importlib.util.spec_from_file_location("pg_overhead_under_test", _PG_OVERHEAD)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
