"""The evidence-export function, cloud-agnostic: one period of the audit archive as a signed package.

For a period (by default the previous UTC day; an event may name another), the handler copies the
audit archive (``WARDGATE_AUDIT_STORE``) into a scratch directory, runs
:func:`wardgate.evidence.export_evidence` over it, signs the manifest with ``WARDGATE_SIGNER`` (a KMS
key URL) and puts the package into the write-once ``WARDGATE_EVIDENCE_STORE`` under
``<period>/`` (the programs point that store at the bucket's ``evidence/`` prefix).

Write-once, and safe to re-run (schedulers retry): a package is never replaced. Its files are put in
order with the signed ``manifest.json`` last, so a manifest means the package is complete.

- re-run, same evidence: nothing is written ("unchanged"); an earlier run that died part-way is
  completed, with a manifest over the files already stored;
- re-run, different evidence (the trail for that period changed since: events arrived late, or the
  archive was tampered with): :class:`EvidenceConflict`, loudly; the stored package stays.

"Same evidence" compares ``evidence.json`` without the two fields that differ on every run
(``generated_at`` and the scratch ``trail`` path); OSCAL uuids and ECDSA signatures are random too,
so bytes are never compared.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Mapping

from wardgate import adapters
from wardgate.core.archive import download_trail
from wardgate.core.integrity import Signer
from wardgate.core.ports import ObjectExists, ObjectStore
from wardgate.evidence import (EVIDENCE_FILE, MANIFEST_FILE, OSCAL_FILE, REPORT_FILE, export_evidence,
                               sign_manifest)

log = logging.getLogger("wardgate.functions.evidence_export")

PACKAGE_FILES = (EVIDENCE_FILE, REPORT_FILE, OSCAL_FILE)  # then MANIFEST_FILE, last
_CONTENT_TYPES = {".json": "application/json", ".html": "text/html; charset=utf-8"}
_VOLATILE = ("generated_at", "trail")
_LABEL = re.compile(r"[^0-9A-Za-z.-]+")


class SettingsError(ValueError):
    """A setting is missing; the message names the variable."""


class EvidenceConflict(RuntimeError):
    """A package for this period exists with different evidence: it is never replaced."""


@dataclass(frozen=True)
class Period:
    """A reporting window: ``label`` names its folder in the evidence store."""

    label: str
    since: str
    until: str

    @classmethod
    def day(cls, day: date) -> "Period":
        text = day.isoformat()
        return cls(text, text, text)  # a date means the whole UTC day to the exporter


@dataclass
class ExportResult:
    period: Period
    status: str  # written, unchanged, completed
    keys: list[str] = field(default_factory=list)
    verification: str = ""
    controls: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"period": self.period.label, "since": self.period.since, "until": self.period.until,
                "status": self.status, "keys": self.keys, "verification": self.verification,
                "controls": self.controls}


def period_for(request: Mapping[str, Any] | None, now: datetime) -> Period:
    """The period a run covers: ``{"period": "YYYY-MM-DD"}``, or ``{"since", "until"}`` (ISO 8601), or
    by default the UTC day before ``now`` (the schedule's time, so a late retry still exports the day
    it was scheduled for)."""
    request = request or {}
    if request.get("period"):
        try:
            return Period.day(date.fromisoformat(str(request["period"])))
        except ValueError:
            raise ValueError(f"period {str(request['period'])[:40]!r} is not a date (YYYY-MM-DD)") from None
    if request.get("since") or request.get("until"):
        since, until = str(request.get("since") or ""), str(request.get("until") or "")
        if not since or not until:
            raise ValueError("a custom period needs both since and until (ISO 8601)")
        for name, value in (("since", since), ("until", until)):
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"{name} {value[:40]!r} is not an ISO 8601 time") from None
        return Period(_LABEL.sub("_", f"{since}--{until}").strip("_"), since, until)
    return Period.day((now.astimezone(timezone.utc) - timedelta(days=1)).date())


def _substance(evidence_json: bytes) -> dict[str, Any]:
    package = json.loads(evidence_json)
    return {k: v for k, v in package.items() if k not in _VOLATILE}


def _get(store: ObjectStore, key: str) -> bytes | None:
    try:
        return store.get(key)
    except KeyError:
        return None


def _put_once(store: ObjectStore, key: str, data: bytes) -> bytes:
    """Put ``data`` unless ``key`` exists; returns the bytes stored under ``key`` afterwards."""
    existing = _get(store, key)
    if existing is not None:
        return existing
    try:
        store.put(key, data, _CONTENT_TYPES.get(Path(key).suffix, "application/octet-stream"))
        return data
    except ObjectExists:  # another run won the race: its bytes are the package's
        return store.get(key)


def export_period(audit_store: ObjectStore, evidence_store: ObjectStore, signer: Signer | None,
                  period: Period, scratch: Path | None = None) -> ExportResult:
    """Export ``period`` of ``audit_store`` into ``evidence_store`` (see the module docstring)."""
    prefix = f"{period.label}/"
    work = Path(tempfile.mkdtemp(prefix="wardgate-evidence-", dir=scratch))
    try:
        trail, out = work / "trail", work / "package"
        trail.mkdir()
        objects = download_trail(audit_store, trail)
        if objects == 0:
            raise FileNotFoundError(f"the audit archive {audit_store.url} is empty: nothing to export")
        package = export_evidence(trail, out, since=period.since, until=period.until, signer=signer,
                                  trail_label=audit_store.url)
        fresh = {name: (out / name).read_bytes() for name in (*PACKAGE_FILES, MANIFEST_FILE)}
        result = ExportResult(period, "written", [prefix + n for n in (*PACKAGE_FILES, MANIFEST_FILE)],
                              package["verification"]["summary"],
                              {c: v["status"] for c, v in package["controls"].items()})

        stored_evidence = _get(evidence_store, prefix + EVIDENCE_FILE)
        if stored_evidence is not None and _substance(stored_evidence) != _substance(fresh[EVIDENCE_FILE]):
            raise EvidenceConflict(
                f"evidence for {period.label} already exists in {evidence_store.url} with different content "
                f"(the audit trail for that period changed since it was exported: events archived late, or "
                f"tampering); the stored package is kept. Compare it with a fresh `wardgate evidence export`.")
        if stored_evidence is not None and _get(evidence_store, prefix + MANIFEST_FILE) is not None:
            result.status = "unchanged"
            log.info("evidence for %s is already exported and unchanged", period.label)
            return result

        stored = {name: _put_once(evidence_store, prefix + name, fresh[name]) for name in PACKAGE_FILES}
        if stored == {name: fresh[name] for name in PACKAGE_FILES}:
            manifest = fresh[MANIFEST_FILE]
        else:
            # An earlier run stored some files: the manifest must vouch for the bytes in the store.
            result.status = "completed"
            manifest = _manifest_for(stored, json.loads(stored[EVIDENCE_FILE]), signer)
        _put_once(evidence_store, prefix + MANIFEST_FILE, manifest)
        log.info("evidence for %s %s in %s: %s", period.label, result.status, evidence_store.url,
                 result.verification)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _manifest_for(files: Mapping[str, bytes], package: Mapping[str, Any], signer: Signer | None) -> bytes:
    manifest = {"format": "wardgate-evidence-manifest", "v": package.get("v"),
                "generated_at": package.get("generated_at"), "trail": package.get("trail"),
                "period": package.get("period"),
                "files": [{"name": n, "sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)}
                          for n, d in files.items()]}
    return json.dumps(sign_manifest(manifest, signer), indent=2).encode()


def _setting(environ: Mapping[str, str], name: str) -> str:
    value = (environ.get(name) or "").strip()
    if not value:
        raise SettingsError(f"{name} is not set: the evidence export cannot run without it (functions/README.md)")
    return value


def run(request: Mapping[str, Any] | None, now: datetime, environ: Mapping[str, str] | None = None) -> ExportResult:
    """The function body every entry point calls: settings from the environment, then the export."""
    env = os.environ if environ is None else environ
    audit_url, evidence_url = _setting(env, "WARDGATE_AUDIT_STORE"), _setting(env, "WARDGATE_EVIDENCE_STORE")
    if audit_url == evidence_url:
        # Evidence files in the trail's own prefix would be read back as (unknown) trail objects.
        raise SettingsError("WARDGATE_EVIDENCE_STORE must differ from WARDGATE_AUDIT_STORE (use another prefix)")
    period = period_for(request, now)
    signer = adapters.open_signer(_setting(env, "WARDGATE_SIGNER"))
    return export_period(adapters.open_object_store(audit_url), adapters.open_object_store(evidence_url),
                         signer, period)
