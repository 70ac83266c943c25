"""`make demo` as a new user runs it: the whole scripted tour succeeds and says what it showed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wardgate.devtools.pgserver import env_without_libpq

pytestmark = pytest.mark.timeout(180)


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "wardgate.devtools.demo", "--dir", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=170, env=env_without_libpq())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "jane.doe@example.com" not in out.split("SELECT id, name, email, orders FROM demo_customers ORDER BY id")[-1]
    assert "held for approval" in out and "approved by dana" in out and "ALTER TABLE" in out
    assert "no trace of the refused statements" in out
