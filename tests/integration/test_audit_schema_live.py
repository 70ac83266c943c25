"""The audit trail of a real gateway session matches the published format (``docs/audit-format.md``).

GIVEN a gateway in front of a real PostgreSQL with the shipped ``ai-agent-default`` bundle (plus a
just-in-time ``writer`` role), resources ``orders-prod`` (production), ``orders-dev`` (development) and
``broken-dev`` (whose credential the backend refuses), WHEN clients do what users do — a bad token, a
plaintext connection, masked reads, refused and unparseable statements, a held write approved by a DBA
with ``wardgate approvals approve``, a JIT grant that expires mid-session, a backend killed under a
session, a broken then a valid policy reload — THEN every event in the trail validates against
``docs/audit-event.schema.json``, every digest against ``docs/audit-digest.schema.json``, the trail
verifies, and ``wardgate replay`` shows who approved the held statement and the grant's life.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml
from jsonschema import Draft202012Validator
from psycopg import errors
from wardgate_testkit import cli_as, inserted

from wardgate.cli import main as wardgate_main
from wardgate.core.audit import read_segment
from wardgate.core.integrity import DIGEST_SUFFIX
from wardgate.devtools.harness import GatewayThread, default_test_config, wait_for

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "policies" / "ai-agent-default" / "policy.yaml"
EVENT_SCHEMA = REPO / "docs" / "audit-event.schema.json"
DIGEST_SCHEMA = REPO / "docs" / "audit-digest.schema.json"
PROD, DEV, BROKEN = "orders-prod", "orders-dev", "broken-dev"
HELD = re.compile(r"held for approval \(request (\S+), rule ([^)]+)\)")

# What the session below must produce: the types a user can cause through a running gateway. The
# remaining ones (approval.failed, approval.store_unavailable, access.grants_unavailable, the
# tls_handshake_failed refusal, a crash-recovered session.ended) need a broken store or a killed
# gateway; tests/unit/test_audit_schema.py checks their schema entries.
EXPECTED_TYPES = {
    "session.started", "session.refused", "session.authentication_failed", "session.authenticated",
    "session.connected", "session.credential_refreshed", "session.backend_failed", "session.backend_lost",
    "session.aborted", "session.ended", "command.decided", "command.result", "command.masked",
    "approval.requested", "approval.decided", "access.grant_applied", "access.grant_expired",
    "policy.loaded", "policy.load_failed",
}


def _policy_bundle() -> dict[str, Any]:
    """The shipped bundle, plus a ``writer`` role nobody's token has: only an approved grant gives it."""
    bundle = yaml.safe_load(BUNDLE.read_text())
    bundle["roles"]["writer"] = {"match": [{"groups": ["nobody-has-this-group"]}]}
    bundle["roles"]["contractor"] = {"match": [{"groups": ["contractors"]}]}
    bundle["rules"].insert(0, {"name": "jit-writers", "effect": "allow", "roles": ["writer"],
                               "environments": ["production"], "when": {"classes": ["read", "write"]}})
    return bundle


class Recording:
    """What the driven session left behind, for the tests to check."""

    def __init__(self, directory: Path, table: str, approved_request: str, denied_request: str,
                 grant_request: str):
        self.directory = directory
        self.table = table
        self.approved_request = approved_request
        self.denied_request = denied_request
        self.grant_request = grant_request

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for path in sorted(self.directory.glob("*.jsonl"))
                for line in read_segment(path)]

    def session_of(self, event_type: str, **fields: Any) -> str:
        return next(e["session"] for e in self.events()
                    if e["type"] == event_type and all(e.get(k) == v for k, v in fields.items()))


def drive(gw: GatewayThread, postgres: Any, policy_file: Path) -> Recording:
    """Run the user-visible session described in the module docstring through ``gw``."""
    table = f"audit_{secrets.token_hex(4)}"
    postgres.run_sql(f"""
        CREATE TABLE {table} (id int PRIMARY KEY, email text, ssn text, note text);
        INSERT INTO {table} VALUES (1, 'jane.doe@example.com', '123-45-6789', 'call 555'),
                                   (2, 'bob@example.org', '987-65-4321', NULL);
        ALTER TABLE {table} OWNER TO wardgate_svc;
    """, dbname="orders")
    agent = gw.token("agent-7", groups=("ai-agents",), repository="acme/app", run_id="4242")

    # A token that is not a JWT, and a token sent without TLS: both refused before any backend work.
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        psycopg.connect(gw.dsn("not-a-token", DEV)).close()
    with pytest.raises(psycopg.OperationalError, match="TLS is required"):
        psycopg.connect(gw.dsn(agent, DEV, sslmode="disable")).close()

    # Development: reads are masked, destructive and unparseable statements refused, errors recorded.
    with psycopg.connect(gw.dsn(agent, DEV) + " application_name=schema-audit options='-c wardgate.model=gpt-x'",
                         autocommit=True) as conn:
        rows = conn.execute(f"SELECT id, email, ssn, note FROM {table} ORDER BY id").fetchall()
        assert "jane.doe@example.com" not in str(rows) and "123-45-6789" not in str(rows)
        assert conn.execute(f"SELECT count(*) FROM {table} WHERE id = %s", (1,)).fetchone() == (1,)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"DROP TABLE {table}")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELEC 1")
        with pytest.raises(errors.DivisionByZero):
            conn.execute("SELECT 1/0")

    # Production: a write is held until another identity, a DBA, approves it.
    with psycopg.connect(gw.dsn(agent, PROD), autocommit=True) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        outcome: dict[str, Any] = {}
        runner = threading.Thread(target=lambda: outcome.update(
            result=conn.execute(f"INSERT INTO {table} VALUES (3, 'x@example.com', NULL, NULL)").rowcount),
            daemon=True)
        runner.start()
        wait_for(lambda: any(HELD.search(n) for n in notices), "the held-for-approval notice", timeout=20)
        approved = next(HELD.search(n).group(1) for n in notices if HELD.search(n))
        assert cli_as(gw, gw.token("dana", groups=("dba",)), "approvals", "approve", approved,
                     "--reason", "planned backfill")[0] == 0
        runner.join(30)
        assert outcome.get("result") == 1
        # The next write is held too, and denied by another DBA.
        refused = threading.Thread(target=lambda: outcome.update(
            denied=_refusal(conn, f"INSERT INTO {table} VALUES (4, NULL, NULL, NULL)")), daemon=True)
        refused.start()
        wait_for(lambda: len({m.group(1) for m in map(HELD.search, notices) if m}) == 2, "the second hold")
        denied = next(m.group(1) for m in map(HELD.search, notices) if m and m.group(1) != approved)
        assert cli_as(gw, gw.token("olga", groups=("dba",)), "approvals", "deny", denied,
                     "--reason", "not during the freeze")[0] == 0
        refused.join(30)
        assert "denied by olga" in outcome.get("denied", "")

    # A contractor gets the writer role just in time; it lapses mid-session.
    contractor = gw.token("devon", groups=("contractors",))
    code, out = cli_as(gw, contractor, "access", "request", "--resource", PROD, "--role", "writer",
                      "--duration", "2s", "--reason", "hotfix INC-42")
    assert code == 0, out
    grant = re.search(r"\bapr-[0-9a-f]{20}\b", out).group(0)
    with psycopg.connect(gw.dsn(contractor, PROD), autocommit=True) as conn:
        assert cli_as(gw, gw.token("dana", groups=("dba",)), "approvals", "approve", grant)[0] == 0
        ids = itertools.count(100)
        wait_for(lambda: inserted(conn, table, next(ids)), "the grant to take effect", timeout=10)
        wait_for(lambda: not inserted(conn, table, next(ids)), "the grant to expire", timeout=10, interval=0.5)

    # A backend credential the server refuses: fetched again once, then the connection is refused.
    with pytest.raises(psycopg.OperationalError, match="cannot connect to resource"):
        psycopg.connect(gw.dsn(agent, BROKEN)).close()

    # The backend is killed under a live session.
    with psycopg.connect(gw.dsn(agent, DEV), autocommit=True) as conn:
        conn.execute("SELECT 1")
        # The client sees a gateway-issued backend pid; the real one is in session.connected.
        connected = [e for e in gw.audit_events() if e["type"] == "session.connected" and e["resource"] == DEV]
        postgres.run_sql(f"SELECT pg_terminate_backend({connected[-1]['backend_pid']})")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")

    # A broken policy is refused and recorded; the next valid one is loaded and recorded.
    policy_file.write_text("version: 1\nrules: [ {name: oops, effect: maybe} ]\n")
    wait_for(lambda: any(e["type"] == "policy.load_failed" for e in gw.audit_events()), "the refused reload")
    bundle = _policy_bundle()
    bundle["description"] = "reloaded while sessions run"
    policy_file.write_text(yaml.safe_dump(bundle, sort_keys=False))
    wait_for(lambda: sum(e["type"] == "policy.loaded" for e in gw.audit_events()) >= 2, "the reload")

    directory = gw.gateway.recorder.spool.directory
    gw.stop()  # every session ends, the last segment is sealed with a digest
    return Recording(directory, table, approved, denied, grant)


def _refusal(conn: psycopg.Connection, sql: str) -> str:
    try:
        conn.execute(sql)
    except errors.InsufficientPrivilege as exc:
        return str(exc)
    return "not refused"


def start_gateway(postgres: Any, directory: Path) -> tuple[GatewayThread, Path]:
    """The gateway ``make_gateway`` would start, with the resources and policy this test needs."""
    policy_file = directory / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(_policy_bundle(), sort_keys=False))
    base = default_test_config(postgres, directory)
    prod = base["resources"][PROD]
    os.environ["WARDGATE_TEST_WRONG_PASSWORD"] = "not-the-password"
    config = {**base,
              "resources": {PROD: dict(prod), DEV: dict(prod),
                            BROKEN: {**prod, "password": "env://WARDGATE_TEST_WRONG_PASSWORD"}},
              "policy": {"file": str(policy_file), "watch_interval": 0.2},
              "approvals": {"grants": {"writer": {"approvers": ["dba"], "max_duration": "1h"}},
                            "grant_refresh": 0.2}}
    return GatewayThread(config, directory).start(), policy_file


@pytest.fixture(scope="module")
def recording(postgres) -> Iterator[Recording]:
    """One recorded session for every test here (module scope: it takes ~10 s to drive).

    Built like ``make_gateway`` in conftest.py, which is function-scoped and so unusable at module
    scope: a gateway thread on free ports fronting the session's PostgreSQL, state in a temporary
    directory removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="wardgate-audit-schema-"))
    gw, policy_file = start_gateway(postgres, directory)
    try:
        yield drive(gw, postgres, policy_file)
    finally:
        gw.stop()
        if not os.environ.get("WARDGATE_KEEP_TRAIL"):  # kept to regenerate docs/audit-format.md examples
            shutil.rmtree(directory, ignore_errors=True)


# --- the trail against the published format ------------------------------------------------------


def _errors(validator: Draft202012Validator, instance: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<event>'}: {e.message}" for e in validator.iter_errors(instance)]


def test_the_session_caused_every_user_visible_event_type(recording):
    assert EXPECTED_TYPES - {e["type"] for e in recording.events()} == set()


def test_every_event_validates_against_the_event_schema(recording):
    validator = Draft202012Validator(json.loads(EVENT_SCHEMA.read_text()))
    events = recording.events()
    assert len(events) > 50
    problems = {e["id"]: _errors(validator, e) for e in events}
    assert {event_id: found for event_id, found in problems.items() if found} == {}


def test_every_digest_validates_and_the_trail_verifies(recording, capsys):
    validator = Draft202012Validator(json.loads(DIGEST_SCHEMA.read_text()))
    digests = sorted(recording.directory.glob("*" + DIGEST_SUFFIX))
    assert digests and len(digests) == len(list(recording.directory.glob("*.jsonl")))  # all sealed
    for path in digests:
        assert _errors(validator, json.loads(path.read_bytes())) == [], path.name
    capsys.readouterr()
    assert wardgate_main(["audit", "verify", str(recording.directory)]) == 0, capsys.readouterr().out


def _replay(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert wardgate_main(list(argv)) == 0
    return capsys.readouterr().out


def test_replay_shows_who_approved_the_held_statement(recording, capsys):
    session = recording.session_of("approval.requested", request=recording.approved_request)
    out = _replay(capsys, "replay", str(recording.directory), session)
    lines = out.splitlines()
    held = next(i for i, line in enumerate(lines) if "] held" in line)
    assert f"request {recording.approved_request}, rule review-prod-changes; needs dba" in lines[held]
    assert "deadline 15m" in lines[held]
    decided = lines[held + 1]
    assert "] approved" in decided and "by dana (" in decided and "reason: planned backfill" in decided
    number = lines[held].split("]")[0].split("[")[1]
    assert any(f"[{number}] query" in line and f"INSERT INTO {recording.table}" in line for line in lines[:held])
    assert any(f"[{number}] result" in line and "INSERT 0 1" in line for line in lines[held + 2:])
    # The second hold: denied by another approver, with the reason; the statement was refused.
    second = next(i for i, line in enumerate(lines) if f"request {recording.denied_request}" in line)
    assert "] denied" in lines[second + 1] and "by olga (" in lines[second + 1]
    assert "reason: not during the freeze" in lines[second + 1]
    assert "refused" in lines[second + 2] and "42501" in lines[second + 2]
    assert (f"approvals: {recording.approved_request} approved by dana (" in out
            and f"{recording.denied_request} denied by olga (" in out)

    # --json: the session's events as recorded, the approval's who/when/verdict/reason among them.
    events = json.loads(_replay(capsys, "replay", str(recording.directory), session, "--json"))
    outcome = next(e for e in events if e["type"] == "approval.decided")
    assert outcome["verdict"] == "approved" and outcome["reason"] == "planned backfill"
    assert [b["subject"] for b in outcome["by"]] == ["dana"] and outcome["at"] > 0
    # sessions --json pairs request and outcome.
    rows = json.loads(_replay(capsys, "sessions", str(recording.directory), "--json"))
    approval, refusal = next(r for r in rows if r["session"] == session)["approvals"]
    assert refusal["verdict"] == "denied" and refusal["reason"] == "not during the freeze"
    assert approval["request"] == recording.approved_request and approval["verdict"] == "approved"
    assert approval["by"][0].startswith("dana (") and approval["statement"].startswith(f"INSERT INTO {recording.table}")
    assert approval["requested_at"] < approval["recorded_at"]


def test_replay_shows_the_grant_applied_then_expired(recording, capsys):
    session = recording.session_of("access.grant_applied", grant=recording.grant_request)
    lines = _replay(capsys, "replay", str(recording.directory), session).splitlines()
    applied = next(i for i, line in enumerate(lines) if "grant applied" in line)
    expired = next(i for i, line in enumerate(lines) if "grant expired" in line)
    assert applied < expired
    assert "role writer until" in lines[applied] and "approved by dana (" in lines[applied]
    assert recording.grant_request in lines[applied] and recording.grant_request in lines[expired]
    # Between them the grant's role decides; after expiry the same write is refused again.
    assert any("allow by rule jit-writers" in line for line in lines[applied:expired])
    assert any("DENY by rule" in line for line in lines[expired:])
    rows = json.loads(_replay(capsys, "sessions", str(recording.directory), "--json"))
    (grant,) = next(r for r in rows if r["session"] == session)["grants"]
    assert grant["role"] == "writer" and grant["expired_at"] is not None and grant["applied_at"] < grant["expired_at"]


def test_replay_of_the_gateway_chain_shows_policy_loads(recording, capsys):
    gateway = recording.session_of("policy.load_failed")
    out = _replay(capsys, "replay", str(recording.directory), gateway)
    assert "gateway's own chain" in out and "truncated" not in out
    kinds = [line.split()[1] + " " + line.split()[2] for line in out.splitlines() if line.startswith("  +")]
    assert kinds == ["policy loaded", "policy refused", "policy loaded"]
    assert "rules.0.effect" in out  # what was wrong with the refused file
