"""Just-in-time approval through a real gateway, real clients and the embedded approval backends.

GIVEN the shipped ``ai-agent-default`` bundle (writes and DDL by agents on production are held for a
``dba``), WHEN an agent's statement is held, THEN the client is told where to approve and waits;
another identity in the approver group approves with ``wardgate approvals approve`` and the exact
held statement runs; self-approval, non-approvers, denial, the deadline and a client cancel all end
in a refusal that says why; an approval of one statement never lets another run; a JIT grant ends
mid-session; and every step is in a trail that ``wardgate audit verify`` accepts.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import errors

from wardgate.cli import main as wardgate_main
from wardgate.devtools.harness import GatewayThread, wait_for
from wardgate.devtools.pgserver import env_without_libpq, find_pg_binary

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "policies" / "ai-agent-default" / "policy.yaml"
PROD = "orders-prod"
HELD = re.compile(r"held for approval \(request (\S+), rule ([^)]+)\)")


def _policy(timeout: str = "15m", scope: str = "statement", quorum: int = 1, extra_rules: list | None = None,
            extra_roles: dict | None = None) -> Path:
    bundle = yaml.safe_load(BUNDLE.read_text())
    bundle["roles"].update(extra_roles or {})
    for rule in bundle["rules"]:
        if rule["name"] == "review-prod-changes":
            rule["approval"] = {"scope": scope, "timeout": timeout, "quorum": quorum}
    if extra_rules:
        bundle["rules"] = extra_rules + bundle["rules"]
    directory = Path(tempfile.mkdtemp(prefix="wardgate-approvals-policy-"))
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(bundle, sort_keys=False))
    return path


@pytest.fixture
def make_gw(make_gateway):
    def make(**policy_args: Any) -> GatewayThread:
        approvals = policy_args.pop("approvals", {})
        return make_gateway(policy={"file": str(_policy(**policy_args)), "watch": False}, approvals=approvals)
    return make


def make_table(postgres) -> str:
    name = f"held_{secrets.token_hex(4)}"
    postgres.run_sql(f"CREATE TABLE {name} (id int PRIMARY KEY); ALTER TABLE {name} OWNER TO wardgate_svc;",
                     dbname="orders")
    return name


def columns(postgres, table: str) -> list[str]:
    out = postgres.run_sql(f"SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM "
                           f"information_schema.columns WHERE table_name = '{table}'", dbname="orders")
    return out.strip().split(",")


def cli(gw: GatewayThread, token: str, *args: str, capsys=None) -> int:
    """``wardgate approvals …`` as the approver runs it (token from the environment)."""
    old = os.environ.get("WARDGATE_TOKEN")
    os.environ["WARDGATE_TOKEN"] = token
    try:
        return wardgate_main([*args[:2], *args[2:], "--url", gw.control_url])
    finally:
        if old is None:
            os.environ.pop("WARDGATE_TOKEN", None)
        else:
            os.environ["WARDGATE_TOKEN"] = old


class HeldClient:
    """Runs one statement in a thread through psycopg and collects the notices it gets."""

    def __init__(self, conn: psycopg.Connection, sql: str, params: tuple | None = None):
        self.notices: list[str] = []
        self.error: Exception | None = None
        self.done = threading.Event()
        self.finished_at: float | None = None
        conn.add_notice_handler(lambda d: self.notices.append(f"{d.message_primary} | {d.message_hint}"))
        self.thread = threading.Thread(target=self._run, args=(conn, sql, params), daemon=True)
        self.thread.start()

    def _run(self, conn, sql, params) -> None:
        try:
            conn.execute(sql, params)
        except Exception as exc:  # the assertion is on what the client got
            self.error = exc
        self.finished_at = time.monotonic()
        self.done.set()

    def request_id(self, timeout: float = 15.0) -> str:
        wait_for(lambda: any(HELD.search(n) for n in self.notices), "the held-for-approval notice", timeout=timeout)
        return next(HELD.search(n).group(1) for n in self.notices if HELD.search(n))

    def result(self, timeout: float = 30.0) -> Exception | None:
        assert self.done.wait(timeout), "the held statement never finished"
        return self.error


def agent(gw):
    return gw.token("agent-7", groups=("ai-agents",))


def dba(gw, name: str = "dana"):
    return gw.token(name, groups=("dba",))


def test_held_alter_table_from_psql_runs_after_another_identity_approves(make_gw, postgres):
    gw = make_gw()
    table = make_table(postgres)
    env = {**env_without_libpq(), **gw.libpq_env(agent(gw), PROD)}
    psql = find_pg_binary("psql")
    process = subprocess.Popen([str(psql), "-v", "ON_ERROR_STOP=1", "-c", f"ALTER TABLE {table} ADD COLUMN approved_col int"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # psql prints the NOTICE while it waits; read it from its stderr as a user would see it.
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    wait_for(lambda: any(HELD.search(line) for line in lines), "psql to show the held notice", timeout=20)
    request = next(HELD.search(line).group(1) for line in lines if HELD.search(line))
    assert "approved_col" not in columns(postgres, table)  # held: not run yet
    assert any("wardgate approvals approve" in line for line in lines)  # where to approve
    assert cli(gw, dba(gw), "approvals", "approve", request, "--reason", "planned migration") == 0
    out, _ = process.communicate(timeout=30)
    reader.join(5)
    assert process.returncode == 0, lines
    assert "ALTER TABLE" in out
    assert "approved_col" in columns(postgres, table)
    events = gw.audit_events()
    decided = [e for e in events if e["type"] == "approval.decided" and e["request"] == request]
    assert decided and decided[0]["verdict"] == "approved"
    assert "dana" in str(decided[0]["by"]) and decided[0]["reason"] == "planned migration"
    assert any(e["type"] == "approval.requested" and e["request"] == request for e in events)


def test_self_approval_and_non_approver_are_refused_then_deny_ends_in_42501(make_gw, postgres, capsys):
    gw = make_gw()
    table = make_table(postgres)
    requester = agent(gw)
    with psycopg.connect(gw.dsn(requester, PROD), autocommit=True) as conn:
        held = HeldClient(conn, f"INSERT INTO {table} VALUES (1)")
        request = held.request_id()
        capsys.readouterr()
        # the requester, even if it were in the approver group, may not approve its own request
        assert cli(gw, requester, "approvals", "approve", request) != 0
        assert "self-approval" in capsys.readouterr().err.lower()
        # a developer is not a dba
        assert cli(gw, gw.token("dev-1", groups=("dev",)), "approvals", "approve", request) != 0
        assert "approver" in capsys.readouterr().err.lower()
        assert not held.done.is_set()
        assert cli(gw, dba(gw, "olga"), "approvals", "deny", request, "--reason", "not during the freeze") == 0
        error = held.result()
    assert isinstance(error, errors.InsufficientPrivilege)
    assert "denied by olga" in str(error) and "not during the freeze" in str(error)
    assert postgres.run_sql(f"SELECT count(*) FROM {table}", dbname="orders").strip() == "0"
    # a second decision on a decided request is refused
    assert cli(gw, dba(gw, "dana"), "approvals", "approve", request) != 0
    assert "already" in capsys.readouterr().err.lower()


def test_no_decision_before_the_deadline_is_refused(make_gw, postgres):
    gw = make_gw(timeout="1s")
    table = make_table(postgres)
    with psycopg.connect(gw.dsn(agent(gw), PROD), autocommit=True) as conn:
        held = HeldClient(conn, f"INSERT INTO {table} VALUES (2)")
        request = held.request_id()
        error = held.result()
        assert isinstance(error, errors.InsufficientPrivilege)
        assert "no approval decision" in str(error) and request in str(error)
        # the session goes on after the refusal
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert postgres.run_sql(f"SELECT count(*) FROM {table}", dbname="orders").strip() == "0"


def test_approval_of_one_statement_never_lets_another_run(make_gw, postgres):
    gw = make_gw()
    table = make_table(postgres)
    with psycopg.connect(gw.dsn(agent(gw), PROD), autocommit=True) as conn:
        held = HeldClient(conn, f"INSERT INTO {table} VALUES (%s)", (10,))
        first = held.request_id()
        assert cli(gw, dba(gw), "approvals", "approve", first) == 0
        assert held.result() is None
        # The same text with another parameter is another command: held again, new request.
        second = HeldClient(conn, f"INSERT INTO {table} VALUES (%s)", (11,))
        again = second.request_id()
        assert again != first
        assert not second.done.wait(0.5)
        assert cli(gw, dba(gw), "approvals", "deny", again) == 0
        assert isinstance(second.result(), errors.InsufficientPrivilege)
    assert postgres.run_sql(f"SELECT string_agg(id::text, ',') FROM {table}", dbname="orders").strip() == "10"
    requests = {e["request"]: e for e in gw.audit_events() if e["type"] == "approval.requested"}
    assert requests[first]["command_hash"] != requests[again]["command_hash"]


def test_client_cancel_withdraws_the_request(make_gw, postgres):
    gw = make_gw()
    table = make_table(postgres)
    with psycopg.connect(gw.dsn(agent(gw), PROD), autocommit=True) as conn:
        held = HeldClient(conn, f"INSERT INTO {table} VALUES (3)")
        request = held.request_id()
        conn.cancel_safe()  # cancel() would hold the GIL in libpq while the in-process gateway answers
        error = held.result()
        assert error is not None and "withdrawn" in str(error)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert gw.gateway.metrics.registry.get_sample_value("wardgate_cancel_requests_total", {"outcome": "withdrawn"}) == 1
    # withdrawn is final: a later approval cannot revive it
    assert cli(gw, dba(gw), "approvals", "approve", request) != 0
    assert postgres.run_sql(f"SELECT count(*) FROM {table}", dbname="orders").strip() == "0"


def test_session_scope_approval_lets_the_same_statement_run_again_and_holds_any_other(make_gw, postgres):
    """scope: session binds to the exact statement and parameters (as a statement approval does) and
    only spares asking again for that: other parameters, another statement of the same rule, or
    another session are held again. psycopg sends these as Parse/Bind/Execute, so the parameters are
    checked at Execute."""
    gw = make_gw(scope="session")
    table = make_table(postgres)
    postgres.run_sql(f"INSERT INTO {table} VALUES (1), (2), (3)", dbname="orders")
    delete = f"DELETE FROM {table} WHERE id = %s"
    with psycopg.connect(gw.dsn(agent(gw), PROD), autocommit=True) as conn:
        held = HeldClient(conn, delete, (1,))
        assert cli(gw, dba(gw), "approvals", "approve", held.request_id()) == 0
        assert held.result() is None
        again = HeldClient(conn, delete, (1,))  # the same statement, the same parameter: covered
        assert again.result(timeout=10) is None and not any(HELD.search(n) for n in again.notices)
        other_value = HeldClient(conn, delete, (2,))  # other parameters: a new request
        assert cli(gw, dba(gw), "approvals", "deny", other_value.request_id()) == 0
        assert other_value.result() is not None
        other_statement = HeldClient(conn, f"INSERT INTO {table} VALUES (21)")  # same rule, other text
        assert cli(gw, dba(gw), "approvals", "deny", other_statement.request_id()) == 0
        assert other_statement.result() is not None
    with psycopg.connect(gw.dsn(agent(gw), PROD), autocommit=True) as other:
        later = HeldClient(other, delete, (1,))  # another session: held again
        assert cli(gw, dba(gw), "approvals", "deny", later.request_id()) == 0
        assert later.result() is not None
    assert postgres.run_sql(f"SELECT string_agg(id::text, ',' ORDER BY id) FROM {table}", dbname="orders").strip() == "2,3"
    decided = [e for e in gw.audit_events() if e["type"] == "command.decided" and e.get("kind") == "execute"]
    # at Execute: the covered run, then the other parameter held again (the other session had no approval:
    # it was held on its Parse decision, as before)
    assert [e["decision"] for e in decided] == ["allow", "review"]
    assert decided[0]["message"].startswith("covered by approval ")
    # psycopg sends a statement without parameters as a simple query: decided (and not covered) as one
    inserts = [e for e in gw.audit_events() if e["type"] == "command.decided" and "VALUES (21)" in e["statement"]]
    assert [(e["kind"], e["decision"]) for e in inserts] == [("query", "review")]


def test_quorum_of_two_needs_two_distinct_approvers(make_gw, postgres, capsys):
    gw = make_gw(quorum=2)
    table = make_table(postgres)
    with psycopg.connect(gw.dsn(agent(gw), PROD), autocommit=True) as conn:
        held = HeldClient(conn, f"INSERT INTO {table} VALUES (30)")
        request = held.request_id()
        assert cli(gw, dba(gw, "dana"), "approvals", "approve", request) == 0
        assert not held.done.wait(0.5)  # one vote of two
        assert cli(gw, dba(gw, "dana"), "approvals", "approve", request) != 0  # same approver twice
        assert cli(gw, dba(gw, "olga"), "approvals", "approve", request) == 0
        assert held.result() is None
    assert postgres.run_sql(f"SELECT count(*) FROM {table}", dbname="orders").strip() == "1"


def test_jit_grant_elevates_then_expires_mid_session(make_gw, postgres, capsys):
    # a contractor has no rule that lets it write production (no rule: deny); the "writer" role,
    # granted just in time, may write.
    writer_rule = {"name": "jit-writers", "effect": "allow", "roles": ["writer"], "environments": ["production"],
                   "when": {"classes": ["read", "write"]}}
    # Nobody's token makes them a writer: only a grant does.
    gw = make_gw(extra_rules=[writer_rule],
                 extra_roles={"writer": {"match": [{"groups": ["nobody-has-this-group"]}]},
                              "contractor": {"match": [{"groups": ["contractors"]}]}},
                 approvals={"grants": {"writer": {"approvers": ["dba"], "max_duration": "1h"}},
                            "grant_refresh": 0.2})
    table = make_table(postgres)
    dev = gw.token("devon", groups=("contractors",))
    capsys.readouterr()
    assert cli(gw, dev, "access", "request", "--resource", PROD, "--role", "writer", "--duration", "3s",
               "--reason", "hotfix INC-42") == 0
    out = capsys.readouterr().out
    request = re.search(r"\b([0-9a-f]{8,}|[A-Za-z0-9_-]{16,})\b", out).group(1)
    with psycopg.connect(gw.dsn(dev, PROD), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"INSERT INTO {table} VALUES (40)")  # not granted yet
        assert cli(gw, dba(gw), "approvals", "approve", request) == 0
        # The session re-reads its grants every 0.2 s (in the background of a command): a refused
        # attempt or two may precede the one that runs.
        wait_for(lambda: _try_insert(conn, table, 41), "the grant to take effect", timeout=5)
        time.sleep(3.5)  # the grant (3 s from approval) ends
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"INSERT INTO {table} VALUES (42)")
    types = [e["type"] for e in gw.audit_events()]
    assert "access.grant_applied" in types and "access.grant_expired" in types


def _try_insert(conn, table: str, value: int) -> bool:
    try:
        conn.execute(f"INSERT INTO {table} VALUES ({value})")
        return True
    except errors.InsufficientPrivilege:
        return False


def test_every_step_is_in_a_trail_that_verifies(make_gw, postgres, capsys):
    gw = make_gw()
    table = make_table(postgres)
    with psycopg.connect(gw.dsn(agent(gw), PROD), autocommit=True) as conn:
        held = HeldClient(conn, f"INSERT INTO {table} VALUES (50)")
        assert cli(gw, dba(gw), "approvals", "approve", held.request_id()) == 0
        assert held.result() is None
    directory = gw.gateway.recorder.spool.directory
    gw.stop()
    capsys.readouterr()
    assert wardgate_main(["audit", "verify", str(directory)]) == 0
    types = [e["type"] for e in _events(directory)]
    assert types.index("approval.requested") < types.index("approval.decided")


def _events(directory: Path) -> list[dict]:
    import orjson
    from wardgate.core.audit import read_segment
    out = []
    for path in sorted(directory.glob("*.jsonl")):
        out.extend(orjson.loads(line) for line in read_segment(path))
    return out
