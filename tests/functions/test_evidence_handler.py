"""The evidence-export handler over a real gateway's archived trail (``file://`` write-once stores,
the gateway's own Ed25519 key as signer).

GIVEN an archive holding today's sessions, WHEN the export runs for today, THEN the package lands
under ``<day>/`` with a manifest that verifies against the trail's key; a re-run writes nothing; a
run that died part-way is completed with a manifest over what is stored; and once the trail for the
day has changed, a re-run is refused loudly and the stored package is kept.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest

from functions.evidence_export.handler import (EvidenceConflict, ExportResult, Period, SettingsError, period_for,
                                               run)
from wardgate.adapters.local import DirectoryObjectStore
from wardgate.devtools.harness import GatewayThread, default_test_config
from wardgate.evidence import MANIFEST_FILE, verify_manifest

pytestmark = pytest.mark.timeout(180)


def one_session(postgres, directory: Path, archive: Path, key: Path) -> None:
    """A gateway archiving to ``archive`` runs one session, then stops (every segment sealed, shipped)."""
    config = default_test_config(postgres, directory, audit={
        "sink": f"file://{directory / 'audit'}", "archive": f"file://{archive}", "signer": f"file://{key}"})
    gateway = GatewayThread(config, directory).start()
    try:
        with psycopg.connect(gateway.dsn(gateway.token("auditor", groups=("dev",)), "orders-prod"),
                             autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        gateway.stop()


@pytest.fixture
def archived(postgres, tmp_path) -> dict[str, Path]:
    archive, key = tmp_path / "archive", tmp_path / "audit-signing-key.pem"
    one_session(postgres, tmp_path / "gw1", archive, key)
    assert any(archive.glob("*.digest.json"))
    return {"archive": archive, "evidence": tmp_path / "evidence", "key": key, "tmp": tmp_path}


def settings(paths: dict[str, Path]) -> dict[str, str]:
    return {"WARDGATE_AUDIT_STORE": f"file://{paths['archive']}",
            "WARDGATE_EVIDENCE_STORE": f"file://{paths['evidence']}",
            "WARDGATE_SIGNER": f"file://{paths['key']}"}


def today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


def test_the_package_is_written_under_the_day_and_its_manifest_verifies(archived):
    result = run({"period": today()}, datetime.now(timezone.utc), settings(archived))
    assert isinstance(result, ExportResult) and result.status == "written"
    package = archived["evidence"] / today()
    assert sorted(p.name for p in package.iterdir()) == ["evidence.json", "manifest.json",
                                                        "oscal-assessment-results.json", "report.html"]
    assert verify_manifest(package, trail=archived["archive"]) == []
    evidence = json.loads((package / "evidence.json").read_text())
    assert evidence["verification"]["ok"] is True and evidence["sessions"]
    assert result.controls["AU-12"] == evidence["controls"]["AU-12"]["status"]

    again = run({"period": today()}, datetime.now(timezone.utc), settings(archived))
    assert again.status == "unchanged"


def test_a_run_that_died_part_way_is_completed_with_a_manifest_over_the_stored_files(archived):
    run({"period": today()}, datetime.now(timezone.utc), settings(archived))
    partial = archived["tmp"] / "partial"
    (partial / today()).mkdir(parents=True)
    for name in ("evidence.json", "report.html"):  # the earlier run stopped after two files
        shutil.copy(archived["evidence"] / today() / name, partial / today() / name)
    result = run({"period": today()}, datetime.now(timezone.utc),
                 {**settings(archived), "WARDGATE_EVIDENCE_STORE": f"file://{partial}"})
    assert result.status == "completed"
    assert (partial / today() / "evidence.json").read_bytes() == (archived["evidence"] / today() / "evidence.json").read_bytes()
    assert verify_manifest(partial / today(), trail=archived["archive"]) == []


def test_once_the_days_trail_changed_a_rerun_is_refused_and_the_package_kept(archived, postgres):
    run({"period": today()}, datetime.now(timezone.utc), settings(archived))
    manifest = (archived["evidence"] / today() / MANIFEST_FILE).read_bytes()
    one_session(postgres, archived["tmp"] / "gw2", archived["archive"], archived["key"])  # archived late
    with pytest.raises(EvidenceConflict, match=f"evidence for {today()} already exists"):
        run({"period": today()}, datetime.now(timezone.utc), settings(archived))
    assert (archived["evidence"] / today() / MANIFEST_FILE).read_bytes() == manifest


def test_the_default_period_is_the_utc_day_before_the_schedule_and_bad_periods_are_named():
    scheduled = datetime(2024, 3, 1, 0, 30, tzinfo=timezone.utc)
    assert period_for(None, scheduled) == Period("2024-02-29", "2024-02-29", "2024-02-29")
    custom = period_for({"since": "2024-03-01T00:00:00Z", "until": "2024-03-01T06:00:00Z"}, scheduled)
    assert custom.since == "2024-03-01T00:00:00Z" and "/" not in custom.label and custom.label
    with pytest.raises(ValueError, match="'yesterday' is not a date"):
        period_for({"period": "yesterday"}, scheduled)
    with pytest.raises(ValueError, match="needs both since and until"):
        period_for({"since": "2024-03-01"}, scheduled)


def test_missing_settings_and_an_evidence_store_inside_the_trail_are_refused(tmp_path):
    with pytest.raises(SettingsError, match="WARDGATE_AUDIT_STORE is not set"):
        run(None, datetime.now(timezone.utc), {})
    same = f"file://{tmp_path}"
    with pytest.raises(SettingsError, match="must differ"):
        run(None, datetime.now(timezone.utc), {"WARDGATE_AUDIT_STORE": same, "WARDGATE_EVIDENCE_STORE": same,
                                               "WARDGATE_SIGNER": f"file://{tmp_path / 'k.pem'}"})


def test_an_empty_archive_is_an_error_not_an_empty_package(tmp_path):
    (tmp_path / "archive").mkdir()
    with pytest.raises(FileNotFoundError, match="is empty"):
        run({"period": today()}, datetime.now(timezone.utc),
            {"WARDGATE_AUDIT_STORE": f"file://{tmp_path / 'archive'}",
             "WARDGATE_EVIDENCE_STORE": f"file://{tmp_path / 'evidence'}",
             "WARDGATE_SIGNER": f"file://{tmp_path / 'k.pem'}"})
    assert not (tmp_path / "evidence").exists() or not any((tmp_path / "evidence").iterdir())
    assert DirectoryObjectStore(f"file://{tmp_path / 'archive'}").list("") == []
