"""The evidence report reads right for an auditor, on the trail of a real gateway session.

GIVEN a gateway in front of a real PostgreSQL with the shipped ``ai-agent-default`` bundle, and clients
doing what users do — a bad token, a connection without TLS (refused), masked reads, a refused DROP, a
production write held and approved by another identity (a DBA) with a reason, a second one denied by
another DBA, a third withdrawn by the client's cancel, and a just-in-time grant approved by a DBA —
WHEN evidence is exported, THEN:

- AU-3 holds (sessions refused before authentication carry no identity, correctly) and SC-8 holds
  (the only plaintext session was the one refused for it);
- AC-5 shows each approval: requester, approver, verdict, reason, request id, time to decision, and
  lists the withdrawn one; a trail in which a requester approved their own statement fails AC-5;
- masking is evidenced under AC-3 (data minimisation), SC-28 reports sealed, read-only segments;
- the HTML speaks in proper singular/plural, renders nested evidence as tables, keeps the gateway's
  own chain out of the sessions table, and each example shows its statement, decision, rule and session.

A second gateway that allows plaintext tokens on loopback shows how SC-8 treats such sessions.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import errors
from wardgate_testkit import cli_as, inserted

from wardgate.devtools.harness import GatewayThread, wait_for
from wardgate.evidence import CONTROLS, export_evidence

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "policies" / "ai-agent-default" / "policy.yaml"
PROD, DEV = "orders-prod", "orders-dev"
HELD = re.compile(r"held for approval \(request (\S+), rule ([^)]+)\)")


class HeldStatement:
    """A statement run in a thread, because the gateway holds it until someone decides."""

    def __init__(self, conn: psycopg.Connection, notices: list[str], sql: str):
        self.outcome: dict[str, Any] = {}
        self.known = {m.group(1) for m in map(HELD.search, notices) if m}
        self.notices = notices
        self.thread = threading.Thread(target=self._run, args=(conn, sql), daemon=True)
        self.thread.start()

    def _run(self, conn: psycopg.Connection, sql: str) -> None:
        try:
            self.outcome["rows"] = conn.execute(sql).rowcount
        except psycopg.Error as exc:
            self.outcome["error"] = exc

    def request_id(self) -> str:
        def new() -> str | None:
            return next((m.group(1) for m in map(HELD.search, self.notices)
                         if m and m.group(1) not in self.known), None)
        return wait_for(new, "the held-for-approval notice", timeout=20)

    def result(self) -> dict[str, Any]:
        self.thread.join(30)
        assert not self.thread.is_alive(), "the held statement never finished"
        return self.outcome


class Recorded:
    """What the recorded session left: the trail, the gateway, and the ids the tests look for."""

    def __init__(self, gw: GatewayThread, trail: Path, table: str, requests: dict[str, str],
                 sessions: dict[str, str]):
        self.gw, self.trail, self.table, self.requests, self.sessions = gw, trail, table, requests, sessions


def _events(gw: GatewayThread, event_type: str, **fields: Any) -> list[dict[str, Any]]:
    return [e for e in gw.audit_events() if e["type"] == event_type
            and all(e.get(k) == v for k, v in fields.items())]


def record(gw: GatewayThread, postgres: Any) -> Recorded:
    """Drive the session described in the module docstring through ``gw``, then stop it (sealing)."""
    table = f"evidence_{secrets.token_hex(4)}"
    postgres.run_sql(f"""
        CREATE TABLE {table} (id int PRIMARY KEY, email text, ssn text);
        INSERT INTO {table} VALUES (1, 'jane.doe@example.com', '123-45-6789'), (2, 'bob@example.org', NULL);
        ALTER TABLE {table} OWNER TO wardgate_svc;
    """, dbname="orders")
    agent = gw.token("agent-7", groups=("ai-agents",), repository="acme/app")
    dba = lambda name: gw.token(name, groups=("dba",))  # noqa: E731

    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        psycopg.connect(gw.dsn("not-a-token", DEV)).close()
    with pytest.raises(psycopg.OperationalError, match="TLS is required"):
        psycopg.connect(gw.dsn(agent, DEV, sslmode="disable")).close()

    with psycopg.connect(gw.dsn(agent, DEV), autocommit=True) as conn:
        rows = conn.execute(f"SELECT id, email, ssn FROM {table} ORDER BY id").fetchall()
        assert "jane.doe@example.com" not in str(rows) and "123-45-6789" not in str(rows)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"DROP TABLE {table}")

    requests: dict[str, str] = {}
    with psycopg.connect(gw.dsn(agent, PROD), autocommit=True) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        held = HeldStatement(conn, notices, f"INSERT INTO {table} VALUES (3, 'x@example.com', NULL)")
        requests["approved"] = held.request_id()
        assert cli_as(gw, dba("dana"), "approvals", "approve", requests["approved"],
                     "--reason", "planned backfill")[0] == 0
        assert held.result().get("rows") == 1
        held = HeldStatement(conn, notices, f"INSERT INTO {table} VALUES (4, NULL, NULL)")
        requests["denied"] = held.request_id()
        assert cli_as(gw, dba("olga"), "approvals", "deny", requests["denied"],
                     "--reason", "not during the freeze")[0] == 0
        assert "denied by olga" in str(held.result().get("error"))
        held = HeldStatement(conn, notices, f"INSERT INTO {table} VALUES (5, NULL, NULL)")
        requests["withdrawn"] = held.request_id()
        conn.cancel_safe()  # withdraws the request: nothing ran yet
        assert "withdrawn" in str(held.result().get("error"))

    # A contractor's just-in-time grant of the writer role, approved by a DBA.
    contractor = gw.token("devon", groups=("contractors",))
    code, out = cli_as(gw, contractor, "access", "request", "--resource", PROD, "--role", "writer",
                      "--duration", "10m", "--reason", "hotfix INC-42")
    assert code == 0, out
    requests["grant"] = re.search(r"\bapr-[0-9a-f]{20}\b", out).group(0)
    assert cli_as(gw, dba("dana"), "approvals", "approve", requests["grant"])[0] == 0
    with psycopg.connect(gw.dsn(contractor, PROD), autocommit=True) as conn:
        ids = iter(range(100, 1000))
        wait_for(lambda: inserted(conn, table, next(ids)), "the grant to take effect", timeout=10)

    sessions = {
        "bad_token": _events(gw, "session.authentication_failed")[0]["session"],
        "no_tls": _events(gw, "session.refused", reason="tls_required")[0]["session"],
        "masked": _events(gw, "command.masked")[0]["session"],
        "held": _events(gw, "approval.requested", request=requests["approved"])[0]["session"],
        "grant": _events(gw, "access.grant_applied", grant=requests["grant"])[0]["session"],
        "gateway": _events(gw, "policy.loaded")[0]["session"],
    }
    trail = Path(gw.gateway.recorder.spool.directory)
    gw.stop()  # every session ends, the last segment is sealed
    return Recorded(gw, trail, table, requests, sessions)


def _bundle_with_writer_role(directory: Path) -> Path:
    """The shipped bundle plus a ``writer`` role only an approved grant gives (as in the audit schema test)."""
    bundle = yaml.safe_load(BUNDLE.read_text())
    bundle["roles"]["writer"] = {"match": [{"groups": ["nobody-has-this-group"]}]}
    bundle["roles"]["contractor"] = {"match": [{"groups": ["contractors"]}]}
    bundle["rules"].insert(0, {"name": "jit-writers", "effect": "allow", "roles": ["writer"],
                               "environments": ["production"], "when": {"classes": ["read", "write"]}})
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(bundle, sort_keys=False))
    return path


def _resources(postgres: Any) -> dict[str, Any]:
    prod = {"protocol": "postgres", "host": postgres.host, "port": postgres.port, "database": "orders",
            "username": "wardgate_svc", "password": "env://WARDGATE_TEST_ORDERS_PASSWORD"}
    return {PROD: prod, DEV: dict(prod)}


@pytest.fixture
def recorded(postgres, make_gateway) -> Recorded:
    directory = Path(tempfile.mkdtemp(prefix="wardgate-evidence-report-"))
    try:
        gw = make_gateway(resources=_resources(postgres),
                          policy={"file": str(_bundle_with_writer_role(directory))},
                          approvals={"grants": {"writer": {"approvers": ["dba"], "max_duration": "1h"}},
                                     "grant_refresh": 0.2})
        result = record(gw, postgres)
        if os.environ.get("WARDGATE_KEEP_EVIDENCE_TRAIL"):  # to look at a report by hand
            shutil.copytree(result.trail, os.environ["WARDGATE_KEEP_EVIDENCE_TRAIL"], dirs_exist_ok=True)
        yield result
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def exported(recorded) -> tuple[Recorded, Path, dict[str, Any]]:
    out = Path(tempfile.mkdtemp(prefix="wardgate-evidence-report-out-"))
    try:
        yield recorded, out, export_evidence(recorded.trail, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _section(text: str, anchor: str) -> str:
    """The HTML of one report section: from its heading to the next one."""
    start = text.index(f"<h2 id={anchor}")
    end = text.find("<h2 ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _oscal_states(out: Path) -> dict[str, str]:
    document = json.loads((out / "oscal-assessment-results.json").read_text())
    return {f["title"].split()[0]: f["target"]["status"]["state"]
            for f in document["assessment-results"]["results"][0]["findings"]}


def test_sessions_refused_before_authentication_satisfy_au3_and_sc8(exported):
    rec, out, package = exported
    c = package["controls"]
    assert c["AU-3"]["status"] == "satisfied", c["AU-3"]["reason"]
    assert c["AU-3"]["missing_fields"] == {} and c["AU-3"]["identity_mismatches"] == []
    # Only events from session.authenticated on need an identity; the refused sessions' events have none.
    events = [json.loads(line) for p in rec.trail.glob("*.jsonl") for line in p.read_text().splitlines()]
    assert c["AU-3"]["events_after_authentication"] == sum(1 for e in events if e["identity"])
    refused = [e for e in events if e["session"] in (rec.sessions["bad_token"], rec.sessions["no_tls"])]
    assert refused and all(e["identity"] is None for e in refused)

    sc8 = c["SC-8"]
    assert sc8["status"] == "satisfied", sc8["reason"]
    assert (sc8["sessions_tls"], sc8["sessions_plaintext"], sc8["refused_for_tls"]) == (4, 1, 1)
    assert sc8["plaintext_exposed"] == [] and sc8["plaintext_on_loopback"] == 0
    (refusal,) = sc8["refused_examples"]
    assert refusal["session"] == rec.sessions["no_tls"] and refusal["reason"] == "tls_required"
    assert sc8["reason"] == ("every session that carried a token or statements (4) was encrypted with TLS; "
                             "1 plaintext session refused for lacking TLS")
    # The JSON, the OSCAL findings and the HTML say the same.
    assert package["summary"] == {"satisfied": 16}
    assert _oscal_states(out) == {control: "satisfied" for control in CONTROLS}
    html_text = (out / "report.html").read_text()
    for control in ("AU-3", "SC-8"):
        assert f"{control} " in _section(html_text, f"'{control}'") and \
            "<span class='satisfied'>satisfied</span></h2>" in _section(html_text, f"'{control}'")


def test_ac5_shows_who_requested_and_who_decided_each_approval(exported):
    rec, out, package = exported
    ac5 = package["controls"]["AC-5"]
    issuer = rec.gw.gateway.dev_issuer.issuer_url
    assert ac5["status"] == "satisfied" and ac5["violations"] == []
    assert ac5["by_verdict"] == {"approved": 1, "denied": 1, "withdrawn": 1} and ac5["reviews"] == 3
    rows = {row["request"]: row for row in ac5["approvals"]}
    approved, denied = rows[rec.requests["approved"]], rows[rec.requests["denied"]]
    assert approved["requester"] == f"agent-7 ({issuer})" and approved["decided_by"] == [f"dana ({issuer})"]
    assert approved["verdict"] == "approved" and approved["reason"] == "planned backfill"
    assert approved["statement"] == f"INSERT INTO {rec.table} VALUES (3, 'x@example.com', NULL)"
    assert approved["session"] == rec.sessions["held"] and approved["rule"] == "review-prod-changes"
    assert approved["needs"] == "1 of dba" and 0 < approved["seconds_to_decision"] < 30
    assert approved["decided_at"] > approved["requested_at"]
    assert denied["decided_by"] == [f"olga ({issuer})"] and denied["reason"] == "not during the freeze"
    (withdrawn,) = ac5["expired_or_withdrawn"]
    assert withdrawn["request"] == rec.requests["withdrawn"] and withdrawn["verdict"] == "withdrawn"
    assert withdrawn["reason"] == "cancelled by the client" and rows[withdrawn["request"]]["decided_by"] == []
    (grant,) = ac5["access_grants"]
    assert grant["grant"] == rec.requests["grant"] and grant["role"] == "writer"
    assert grant["requester"] == f"devon ({issuer})" and grant["approved_by"] == [f"dana ({issuer})"]
    # AC-3 counts the denied and the withdrawn holds among the refusals it checked.
    assert package["controls"]["AC-3"]["unenforced"] == []

    section = _section((out / "report.html").read_text(), "'AC-5'")
    for text in ("planned backfill", "not during the freeze", "cancelled by the client", rec.requests["approved"],
                 "dana<br>", "olga<br>", "agent-7<br>", "<th>requester</th>", "<th>decided by</th>",
                 "<th>seconds to decision</th>"):
        assert text in section, text


def test_an_approval_by_its_requester_fails_ac5(exported):
    """The approval service refuses self-approval, so the trail is edited to show one: AC-5 must catch it
    (and AU-9 catches the edit)."""
    rec, _, _ = exported
    copy = Path(tempfile.mkdtemp(prefix="wardgate-evidence-self-")) / "audit"
    try:
        shutil.copytree(rec.trail, copy)
        for path in copy.glob("*.jsonl"):
            path.chmod(0o644)
            lines = path.read_text().splitlines(keepends=True)
            path.write_text("".join(
                line.replace('"subject":"dana"', '"subject":"agent-7"')
                if '"type":"approval.decided"' in line and rec.requests["approved"] in line else line
                for line in lines))
        out = copy.parent / "pkg"
        package = export_evidence(copy, out)
        ac5 = package["controls"]["AC-5"]
        assert ac5["status"] == "not-satisfied"
        (violation,) = ac5["violations"]
        assert violation["request"] == rec.requests["approved"]
        assert violation["problem"].startswith("approved by its requester agent-7 (")
        assert package["controls"]["AU-9"]["status"] == "not-satisfied"
        assert _oscal_states(out)["AC-5"] == "not-satisfied"
        assert "approved by its requester agent-7" in _section((out / "report.html").read_text(), "'AC-5'")
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


PLURAL_AFTER_ONE = re.compile(r"\b1 (statements|sessions|segments|segment digests|denials|events|principals|"
                              r"results|values|keys|tokens|loads|refused loads|types|roles|chains|hash chains)\b")


def test_html_reads_right_for_an_auditor(exported):
    rec, out, package = exported
    text = (out / "report.html").read_text()
    c = package["controls"]
    # Singular and plural.
    assert PLURAL_AFTER_ONE.findall(text) == []
    for phrase in ("1 segment digest signed with Ed25519 by 1 key", "1 denial reviewed", "1 refused session",
                   "1 plaintext session refused for lacking TLS", "1 policy load and 0 refused loads",
                   "3 held statements (1 approved, 1 denied, 1 withdrawn) and 1 access grant"):
        assert phrase in text, phrase

    # The sessions table lists the 5 client sessions with their outcomes; the gateway chain is apart.
    sessions = _section(text, "sessions")
    assert sessions.count("<tr id='session-") == 5 == len(package["sessions"])
    assert "session-gateway-" not in text and rec.sessions["gateway"] not in package["sessions"]
    assert package["gateway_events"][0]["type"] == "policy.loaded"
    assert rec.sessions["gateway"].removeprefix("gateway-") in _section(text, "gateway-events")
    held = package["sessions"][rec.sessions["held"]]
    assert (held["commands"], held["allowed"], held["denied"], held["held"], held["approved"]) == (3, 0, 0, 3, 1)
    assert package["sessions"][rec.sessions["no_tls"]]["outcome"] == "refused: tls_required"
    assert package["sessions"][rec.sessions["bad_token"]]["outcome"] == "authentication failed: malformed"
    for header in ("<th>Commands</th>", "<th>Denied</th>", "<th>Held</th>", "<th>Approved</th>", "<th>Outcome</th>"):
        assert header in sessions
    assert "(unauthenticated)" in sessions and "None" not in sessions

    # Nested evidence renders as nested tables; roles are joined with commas.
    ac3 = _section(text, "'AC-3'")
    assert re.search(r"<th>by rule</th><td><table><tr><th>decision</th><th>rule</th><th>count</th>", ac3)
    assert "<th>masked by column</th><td><table>" in ac3
    (devon,) = [p for p in c["AC-2"]["principals"] if p["subject"] == "devon"]
    assert devon["roles"] == ["contractor", "writer"] and "<td>contractor, writer</td>" in _section(text, "'AC-2'")

    # Examples carry the statement, decision, rule and session, and link to the session's row.
    rules = {(r["decision"], r["rule"]): r for r in c["AC-3"]["by_rule"]}
    (drop,) = rules[("deny", "deny-destructive")]["examples"]
    assert drop["statement"] == f"DROP TABLE {rec.table}" and drop["session"] == rec.sessions["masked"]
    assert (drop["decision"], drop["rule"], drop["type"]) == ("deny", "deny-destructive", "command.decided")
    (masked,) = [m for m in c["AC-3"]["masked_by_column"] if m["column"].endswith(".email")]
    assert masked["examples"][0]["statement"].startswith("SELECT id, email, ssn FROM")
    assert masked["examples"][0]["rule"] == "agents-read"
    example_line = re.search(rf"<li>[^\n]*?DROP TABLE {rec.table}</code>", ac3).group(0)
    assert f"href='#session-{rec.sessions['masked']}'" in example_line
    assert f"id='session-{rec.sessions['masked']}'" in sessions
    # Masking is evidence of data minimisation (AC-3); SC-28 speaks of the trail at rest.
    assert c["AC-3"]["masked_values"] == 3 and "masked_by_column" not in c["SC-28"]
    assert c["SC-28"]["status"] == "satisfied" and c["SC-28"]["read_only"] == c["SC-28"]["sealed_segments"] >= 1
    assert "infra/policy-pack/wardgate_policies.py" in _section(text, "'SC-28'")


def test_plaintext_on_loopback_where_the_listener_allows_it_satisfies_sc8(postgres, make_gateway):
    gw = make_gateway(listeners=[{"protocol": "postgres", "address": "127.0.0.1:0",
                                  "allow_plaintext_token_on_loopback": True}])
    with psycopg.connect(gw.dsn(gw.token("ci"), PROD, sslmode="disable"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    wait_for(lambda: _events(gw, "session.ended"), "the session to end")
    trail = Path(gw.gateway.recorder.spool.directory)
    gw.stop()
    out = Path(tempfile.mkdtemp(prefix="wardgate-evidence-loopback-"))
    try:
        sc8 = export_evidence(trail, out)["controls"]["SC-8"]
        assert sc8["status"] == "satisfied" and sc8["plaintext_on_loopback"] == 1
        assert (sc8["sessions_tls"], sc8["sessions_plaintext"], sc8["refused_for_tls"]) == (0, 1, 0)
        assert sc8["loopback_examples"][0]["peer"].startswith("127.0.0.1:")
        assert "1 plaintext session on loopback, as configured" in sc8["reason"]
    finally:
        shutil.rmtree(out, ignore_errors=True)
