"""A gateway shipping its trail to a write-once archive: events reach the archive while sessions run,
the archive verifies offline, and an archive that cannot be written makes the gateway refuse
commands (fail closed) until it can be written again — by itself, no restart."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from wardgate.cli import main as wardgate_main
from wardgate.devtools.harness import wait_for

pytestmark = pytest.mark.timeout(120)


def _audit(tmp_path: Path, bucket: Path, grace: float = 60.0) -> dict:
    return {"sink": f"file://{tmp_path / 'spool'}", "archive": f"file://{bucket}", "seal_interval": 0.5,
            "archive_interval": 0.2, "archive_grace": grace}


def test_sealed_segments_reach_the_archive_and_verify(make_gateway, tmp_path: Path, capsys):
    bucket = tmp_path / "bucket"
    gw = make_gateway(audit=_audit(tmp_path, bucket))
    with psycopg.connect(gw.dsn(gw.token(), "orders-prod"), autocommit=True) as conn:
        conn.execute("SELECT 1")
        wait_for(lambda: any(bucket.glob("*.jsonl")), "a sealed segment in the archive", timeout=15)
    gw.stop()
    names = sorted(p.name for p in bucket.glob("*"))
    assert any(n.endswith(".digest.json") for n in names) and (bucket / "keys").is_dir()
    capsys.readouterr()
    assert wardgate_main(["audit", "verify", f"file://{bucket}"]) == 0


def test_unwritable_archive_refuses_commands_then_recovers(make_gateway, tmp_path: Path):
    bucket = tmp_path / "bucket"
    bucket.write_text("not a directory: every upload fails")
    gw = make_gateway(audit=_audit(tmp_path, bucket, grace=1.0))
    with psycopg.connect(gw.dsn(gw.token(), "orders-prod"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)  # within the grace
        # Sealed segments cannot be shipped; past the grace every command is refused, loudly —
        # including statements prepared before (psycopg prepares a query run 5 times).
        def refused() -> bool:
            try:
                conn.execute("SELECT 1")
                return False
            except errors.InsufficientPrivilege as exc:
                assert "audit archive" in str(exc) and "cannot ship" in str(exc)
                return True
        wait_for(refused, "commands to be refused", timeout=20)
        bucket.unlink()  # the bucket is back
        wait_for(lambda: not refused(), "commands to be accepted again", timeout=20)
    gw.stop()
    assert any(bucket.glob("*.jsonl"))
