"""``wardgate evidence export`` against the trail of a real gateway session.

GIVEN a gateway with a small policy (reads allowed with a masking profile, ``DROP TABLE`` denied by
``no-drops``) and one psycopg session over TLS (3 allowed statements, one of them masked, one denied by
``no-drops``, one unparseable), WHEN evidence is exported for the session's window, THEN each control's
numbers match the session, the HTML report names every control and the verification result, the OSCAL
assessment-results validate against NIST's OSCAL models (compliance-trestle), the manifest's signature
verifies with the trail's public key and a tampered file is caught; a tampered trail fails AU-9.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from small_trail import record_small_session
from wardgate.cli import main
from wardgate.core.integrity import LocalEd25519Signer
from wardgate.evidence import CONTROLS, export_evidence, verify_manifest

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def recorded(postgres, make_gateway):
    """The small session of ``small_trail`` by ``auditor``; then the gateway is stopped so every
    segment is sealed. Returns (gateway, trail dir, session id, table)."""
    gateway, session, table = record_small_session(postgres, make_gateway, "auditor", ttl=120)
    trail = Path(gateway.gateway.recorder.spool.directory)
    gateway.stop()  # seals the last segment
    return gateway, trail, session, table



def _window(trail: Path) -> tuple[str, str]:
    times = [json.loads(line)["time"] for p in trail.glob("*.jsonl") for line in p.read_text().splitlines() if line]
    pad = timedelta(seconds=1)
    parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
    return (parse(min(times)) - pad).isoformat(), (parse(max(times)) + pad).isoformat()


def _signer(gateway) -> LocalEd25519Signer:
    return LocalEd25519Signer(gateway.config.state_dir / "audit-signing-key.pem")


@pytest.fixture
def exported(recorded, capsys):
    gateway, trail, session, table = recorded
    since, until = _window(trail)
    out = Path(tempfile.mkdtemp(prefix="wardgate-evidence-out-")) / "pkg"
    key = gateway.config.state_dir / "audit-signing-key.pem"
    assert key.is_file()
    code = main(["evidence", "export", str(trail), "--since", since, "--until", until, "--out", str(out),
                 "--signing-key", str(key)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "OK" in printed.out
    return gateway, trail, session, table, out, json.loads((out / "evidence.json").read_text())


def test_evidence_numbers_match_the_session(exported):
    gateway, trail, session, table, out, evidence = exported
    assert sorted(p.name for p in out.iterdir()) == ["evidence.json", "manifest.json",
                                                     "oscal-assessment-results.json", "report.html"]
    assert list(evidence["controls"]) == list(CONTROLS)
    c = evidence["controls"]
    assert evidence["verification"]["ok"] is True
    issuer = f"{gateway.gateway.dev_issuer.issuer_url}"

    # AC-3: 5 decisions: 3 allowed by dev-reads, 1 deny by no-drops, 1 by builtin:unparseable.
    assert c["AC-3"]["status"] == "satisfied" and c["AC-3"]["decisions"] == 5
    assert c["AC-3"]["by_verdict"] == {"allow": 3, "deny": 2}
    rules = {(r["decision"], r["rule"]): r for r in c["AC-3"]["by_rule"]}
    assert {k: r["count"] for k, r in rules.items()} == {("allow", "dev-reads"): 3, ("deny", "no-drops"): 1,
                                                        ("deny", "builtin:unparseable"): 1}
    (drop,) = rules[("deny", "no-drops")]["examples"]
    assert drop["session"] == session and drop["event"].startswith(session)
    assert len(rules[("allow", "dev-reads")]["examples"]) == 3
    assert c["AC-3"]["unenforced"] == []
    assert c["AC-6"]["status"] == "satisfied" and c["AC-6"]["by_role"]["dev"] == {"allow": 3, "deny": 1}

    # AC-2 / IA-2 / IA-5: one principal, one successful authentication by the dev issuer, a 120 s token.
    (principal,) = c["AC-2"]["principals"]
    assert principal["subject"] == "auditor" and principal["issuer"] == issuer
    assert principal["groups"] == ["dev"] and principal["roles"] == ["dev"] and principal["sessions"] == 1
    assert c["IA-2"]["status"] == "satisfied"
    assert c["IA-2"]["authenticated"] == 1 and c["IA-2"]["failed"] == 0
    assert c["IA-2"]["by_issuer"] == {issuer: {"authenticated": 1}}
    assert c["IA-2"]["examples"][0]["session"] == session
    assert c["IA-5"]["status"] == "satisfied" and c["IA-5"]["tokens"] == 1
    assert 100 < c["IA-5"]["max_lifetime_s"] <= 121 and c["IA-5"]["avg_lifetime_s"] == c["IA-5"]["max_lifetime_s"]

    # AC-5: no review rules in this policy, no grants.
    assert c["AC-5"]["status"] == "no-data" and c["AC-5"]["reviews"] == 0
    assert c["AC-5"]["approvals"] == [] and c["AC-5"]["access_grants"] == [] and c["AC-5"]["violations"] == []

    # AU-2 / AU-3 / AU-12: 16 events (15 of the session, 1 policy.loaded).
    assert c["AU-2"]["events"] == 16 and c["AU-2"]["sessions"] == 1
    assert c["AU-2"]["by_type"] == {"command.decided": 5, "command.masked": 1, "command.result": 5,
                                    "policy.loaded": 1, "session.authenticated": 1, "session.connected": 1,
                                    "session.ended": 1, "session.started": 1}
    assert c["AU-3"]["status"] == "satisfied" and c["AU-3"]["missing_fields"] == {}
    assert c["AU-3"]["events_checked"] == 16
    # Informational: the gateway writes session.connected without `controls` (docs say every event has it).
    assert c["AU-3"]["events_without_controls_by_type"] == {}
    assert c["AU-12"]["status"] == "satisfied"
    assert (c["AU-12"]["sessions_started"], c["AU-12"]["sessions_ended"]) == (1, 1)
    assert (c["AU-12"]["commands_decided"], c["AU-12"]["command_results"]) == (5, 5)

    # AU-6: the denials by identity and rule.
    assert c["AU-6"]["denials"] == 2
    assert c["AU-6"]["top_denied_identities"] == [{"identity": f"auditor @ {issuer}", "count": 2}]
    assert {r["rule"]: r["count"] for r in c["AU-6"]["top_denied_rules"]} == {"no-drops": 1,
                                                                            "builtin:unparseable": 1}

    # AU-9 / SC-13: verified, one signed segment, Ed25519 with the gateway's key.
    key_id = _signer(gateway).key_id
    assert c["AU-9"]["status"] == "satisfied" and c["AU-9"]["signed_segments"] == 1
    assert c["AU-9"]["verification"]["ok"] and c["AU-9"]["verification"]["sessions"] == 2
    assert c["SC-13"]["status"] == "satisfied"
    assert c["SC-13"]["algorithms"] == {"Ed25519": 1} and c["SC-13"]["key_ids"] == [key_id]

    # SC-8: the one session used TLS.
    assert c["SC-8"]["status"] == "satisfied"
    assert (c["SC-8"]["sessions_tls"], c["SC-8"]["sessions_plaintext"]) == (1, 0)

    # AC-3 (data minimisation): the email column, masked in 2 rows.
    (masked,) = c["AC-3"]["masked_by_column"]
    assert masked["column"] == f"public.{table}.email" and masked["detector"] == "column"
    assert masked["count"] == 2 and masked["results"] == 1 and masked["examples"][0]["session"] == session
    assert c["AC-3"]["masked_values"] == 2 and c["AC-3"]["masked_results"] == 1
    # SC-28: the trail at rest: its one segment sealed, read-only, with a signed digest.
    assert c["SC-28"]["status"] == "satisfied"
    assert (c["SC-28"]["sealed_segments"], c["SC-28"]["read_only"], c["SC-28"]["writable"]) == (1, 1, [])
    assert "by_column" not in c["SC-28"] and c["SC-28"]["deployment_evidence"]

    # IR-4: nothing aborted, truncated or recovered; 2 refused statements.
    assert c["IR-4"]["status"] == "satisfied"
    assert (c["IR-4"]["aborted"], c["IR-4"]["truncated"], c["IR-4"]["recovered"]) == (0, [], 0)
    assert c["IR-4"]["refused_statements"] == 2

    # CM-3: the policy load and the decisions that used it.
    (load,) = c["CM-3"]["loaded"]
    assert load["policy"].startswith("sha256:") and load["source"].endswith("policy.yaml")
    assert c["CM-3"]["decisions_by_policy"] == {load["policy"]: 5} and c["CM-3"]["unknown_policies"] == []
    assert c["CM-3"]["status"] == "satisfied"
    assert evidence["summary"] == {"satisfied": 15, "no-data": 1}

    # A window before the session holds no data.
    empty = Path(tempfile.mkdtemp(prefix="wardgate-evidence-empty-"))
    package = export_evidence(trail, empty, since="2000-01-01", until="2000-01-02", signer=None)
    assert package["controls"]["AC-3"]["status"] == "no-data" and package["controls"]["AU-9"]["status"] == "no-data"


def test_html_report(exported):
    _, _, session, _, out, evidence = exported
    text = (out / "report.html").read_text()
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text and "http" not in text.split("<body>")[0]
    for control in CONTROLS:
        assert f"id='{control}'" in text and f"<a href='#{control}'>{control}</a>" in text
    assert "Audit trail verification: PASSED" in text
    assert "1 segment, 16 events, 2 hash chains (client sessions and the gateway&#x27;s own) checked: OK" in text
    assert f"href='#session-{session}'" in text and f"id='session-{session}'" in text


def test_oscal_validates(exported):
    from trestle.oscal import OSCAL_VERSION
    from trestle.oscal.assessment_results import AssessmentResults

    _, _, _, _, out, evidence = exported
    document = json.loads((out / "oscal-assessment-results.json").read_text())
    model = AssessmentResults.model_validate(document["assessment-results"])  # NIST OSCAL models
    assert document["assessment-results"]["metadata"]["oscal-version"] == OSCAL_VERSION
    (result,) = model.results
    assert len(result.observations) == len(CONTROLS)
    ids = [s.control_id for s in result.reviewed_controls.control_selections[0].include_controls]
    assert ids == [c.lower() for c in CONTROLS]
    assert len(result.findings) == 15  # one per control with data
    assert all(f.target.status.state.value == "satisfied" for f in result.findings)
    for value in [model.uuid, result.uuid] + [o.uuid for o in result.observations]:
        assert uuid.UUID(str(value)).version == 4
    # The validator does reject a broken document.
    del document["assessment-results"]["results"][0]["reviewed-controls"]
    with pytest.raises(Exception):
        AssessmentResults.model_validate(document["assessment-results"])


def test_manifest_is_signed(exported):
    gateway, trail, _, _, out, _ = exported
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["algorithm"] == "Ed25519" and manifest["key_id"] == _signer(gateway).key_id
    assert (trail / "keys" / f"{manifest['key_id']}.pem").is_file()
    assert sorted(f["name"] for f in manifest["files"]) == ["evidence.json", "oscal-assessment-results.json",
                                                          "report.html"]
    assert verify_manifest(out, trail=trail) == []

    (out / "report.html").write_text((out / "report.html").read_text().replace("PASSED", "PASSED!"))
    assert verify_manifest(out, trail=trail) == ["report.html: sha256 mismatch"]

    manifest["period"]["since"] = "2000-01-01T00:00:00.000000Z"
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert "manifest signature does not verify" in verify_manifest(out, trail=trail)


def test_tampered_trail_fails_au9(exported, capsys):
    _, trail, _, _, _, _ = exported
    copy = Path(tempfile.mkdtemp(prefix="wardgate-evidence-copy-")) / "audit"
    shutil.copytree(trail, copy)
    for path in copy.glob("*.jsonl"):
        path.chmod(0o644)
        path.write_text(path.read_text().replace("generate_series(1, 5)", "generate_series(1, 6)"))
    out = copy.parent / "pkg"
    since, until = _window(trail)
    package = export_evidence(copy, out, since=since, until=until, signer=None)
    assert package["verification"]["ok"] is False
    assert package["controls"]["AU-9"]["status"] == "not-satisfied"
    assert "verification failed" in package["controls"]["AU-9"]["reason"]
    assert "Audit trail verification: FAILED" in (out / "report.html").read_text()
    oscal = json.loads((out / "oscal-assessment-results.json").read_text())
    (au9,) = [f for f in oscal["assessment-results"]["results"][0]["findings"] if f["title"].startswith("AU-9 ")]
    assert au9["target"]["status"]["state"] == "not-satisfied"
    assert json.loads((out / "manifest.json").read_text())["signature"] is None


def test_cli_bad_input(exported, capsys):
    _, trail, _, _, out, _ = exported
    assert main(["evidence", "export", str(trail) + "/nope", "--out", str(out)]) == 2
    assert main(["evidence", "export", str(trail), "--since", "yesterday", "--out", str(out)]) == 2
    assert main(["evidence", "export", str(trail), "--since", "2026-02-01", "--until", "2026-01-01",
                 "--out", str(out)]) == 2
    assert main(["evidence", "export", str(trail), "--out", str(out), "--signing-key", str(out / "none.pem")]) == 2
    assert "--signing-key" in capsys.readouterr().err
