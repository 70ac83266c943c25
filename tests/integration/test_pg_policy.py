"""Policy enforcement through a real gateway in front of a real PostgreSQL.

GIVEN the shipped ``ai-agent-default`` bundle (``orders-prod`` is production, ``*-dev`` development) and
two resources, ``orders-prod`` and ``orders-dev``, both fronting the same database, WHEN agents and DBAs
connect with tokens, THEN refused statements never reach the backend (checked in its own statement
log and in its tables), a refusal behaves like a real error for the client's transaction and pipeline,
every decision is recorded with the policy's hash, and the policy can be replaced while sessions run.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import errors

from wardgate.devtools.harness import GatewayThread, default_test_config, wait_for

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "policies" / "ai-agent-default" / "policy.yaml"
PROD, DEV = "orders-prod", "orders-dev"


# --- helpers -----------------------------------------------------------------------------------------


def resources(postgres) -> dict[str, Any]:
    base = default_test_config(postgres, Path(tempfile.gettempdir()))["resources"][PROD]
    return {PROD: dict(base), DEV: dict(base)}


@pytest.fixture
def policy_file() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="wardgate-policy-test-"))
    path = directory / "policy.yaml"
    shutil.copyfile(BUNDLE, path)
    return path


@pytest.fixture
def gw(make_gateway, postgres, policy_file) -> GatewayThread:
    # Approvals disabled: a `review` decision is then refused at once, naming who must approve. Holding
    # it for an approver (the default) is tested in test_pg_approvals.py.
    return make_gateway(policy={"file": str(policy_file), "watch_interval": 0.2}, resources=resources(postgres),
                        approvals={"enabled": False})


def agent(gw: GatewayThread) -> str:
    return gw.token("agent-1", groups=("ai-agents",))


def dba(gw: GatewayThread) -> str:
    return gw.token("dana", groups=("dba",))


def connect(gw: GatewayThread, token: str, resource: str, *, autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(gw.dsn(token, resource), autocommit=autocommit)


def make_table(postgres, rows=(1, 2, 3), prefix: str = "t") -> str:
    """A table owned by the gateway's backend role, so that only the policy stands between a client
    and a DROP or DELETE."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    values = ", ".join(f"({r})" for r in rows)
    postgres.run_sql(f"CREATE TABLE {name} (id int PRIMARY KEY);\n"
                     + (f"INSERT INTO {name} VALUES {values};\n" if rows else "")
                     + f"ALTER TABLE {name} OWNER TO wardgate_svc;\n", dbname="orders")
    return name


def ids(postgres, table: str) -> set[int]:
    out = postgres.run_sql(f"SELECT id FROM {table};", dbname="orders")
    return {int(line) for line in out.split()}


def exists(postgres, table: str) -> bool:
    return postgres.run_sql(f"SELECT to_regclass('public.{table}') IS NOT NULL;", dbname="orders").strip() == "t"


def assert_refused(error: psycopg.Error, rule: str, *fragments: str) -> None:
    assert isinstance(error, errors.InsufficientPrivilege), repr(error)
    assert error.sqlstate == "42501"
    primary = error.diag.message_primary or ""
    detail = error.diag.message_detail or ""
    assert primary.startswith("wardgate: "), primary
    assert f"rule: {rule}" in detail, (primary, detail)
    for fragment in fragments:
        assert fragment in primary, (fragment, primary)


_LOG_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.MULTILINE)


def backend_log_after(postgres, gw: GatewayThread, offset: int) -> str:
    """What the gateway's backend sessions logged since ``offset`` (statements, errors; the tests' own
    superuser checks left out), once a marker statement sent through the gateway after the statements
    under test has been logged, so that the log is known to cover them."""
    marker = f"wardgate_log_marker_{secrets.token_hex(6)}"
    with connect(gw, dba(gw), PROD) as conn:
        conn.execute(f"SELECT '{marker}'")
    text = wait_for(lambda: (lambda t: t if marker in t else None)(postgres.log_text(since=offset)),
                    "the marker statement in the backend log")
    starts = [m.start() for m in _LOG_ENTRY.finditer(text)] + [len(text)]
    entries = [text[a:b] for a, b in zip(starts, starts[1:])]  # an entry keeps its continuation lines
    return "".join(e for e in entries if " wardgate_svc@orders " in e)


def events(gw: GatewayThread, type_: str) -> list[dict[str, Any]]:
    return [e for e in gw.audit_events() if e["type"] == type_]


def file_hash(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def replace_file(path: Path, text: str) -> None:
    """Replace the policy file as deployment tools do (write a new file, rename it over the old)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


# --- refused statements never reach the backend ---------------------------------------------------


def test_denied_drop_table_never_reaches_the_backend(postgres, gw):
    table = make_table(postgres)
    offset = postgres.log_size()
    with connect(gw, agent(gw), DEV) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(f"DROP TABLE {table}")
        assert_refused(refused.value, "deny-destructive", "destructive statements are not allowed")
        # the session goes on
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert exists(postgres, table)
    assert ids(postgres, table) == {1, 2, 3}
    log = backend_log_after(postgres, gw, offset)
    assert f"drop table {table}" not in log.lower()
    assert table not in log


def test_dbas_cannot_drop_tables_either(postgres, gw):
    table = make_table(postgres)
    with connect(gw, dba(gw), PROD) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(f"DROP TABLE {table}")
        assert_refused(refused.value, "deny-destructive")
    assert exists(postgres, table)


def test_unfiltered_deletes_are_refused_filtered_ones_run(postgres, gw):
    table = make_table(postgres)
    offset = postgres.log_size()
    with connect(gw, agent(gw), DEV) as conn:
        for sql in (f"DELETE FROM {table}", f"DELETE FROM {table} WHERE 1=1"):
            with pytest.raises(psycopg.Error) as refused:
                conn.execute(sql)
            assert_refused(refused.value, "deny-unfiltered-writes")
        assert ids(postgres, table) == {1, 2, 3}
        assert conn.execute(f"DELETE FROM {table} WHERE id = 1").rowcount == 1
    assert ids(postgres, table) == {2, 3}
    log = backend_log_after(postgres, gw, offset)
    assert f"DELETE FROM {table} WHERE id = 1" in log  # what was allowed ran
    assert f"DELETE FROM {table}\n" not in log and "WHERE 1=1" not in log


@pytest.mark.parametrize("refused_sql, params", [
    ("DELETE FROM {t}", None),
    ("DELETE FROM {t} WHERE %s = %s", (1, 1)),
], ids=["simple-protocol", "extended-protocol"])
def test_refusal_aborts_the_transaction_like_a_real_error(postgres, gw, refused_sql, params):
    table = make_table(postgres)
    with connect(gw, agent(gw), DEV, autocommit=False) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (100)")
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(refused_sql.format(t=table), params)
        assert_refused(refused.value, "deny-unfiltered-writes")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute(f"INSERT INTO {table} VALUES (101)")
        conn.commit()  # the backend answers COMMIT in a failed transaction with ROLLBACK
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        # the connection is usable again
        conn.execute(f"INSERT INTO {table} VALUES (102)")
        conn.commit()
    assert ids(postgres, table) == {1, 2, 3, 102}


def test_refusal_in_an_explicit_transaction_block_rolls_it_back(postgres, gw):
    table = make_table(postgres)
    with connect(gw, agent(gw), DEV) as conn:
        with pytest.raises(psycopg.Error) as refused:
            with conn.transaction():
                conn.execute(f"INSERT INTO {table} VALUES (200)")
                conn.execute(f"DROP TABLE {table}")
        assert_refused(refused.value, "deny-destructive")
    assert ids(postgres, table) == {1, 2, 3} and exists(postgres, table)


def test_extended_protocol_is_refused_the_same_way(postgres, gw):
    table = make_table(postgres)
    offset = postgres.log_size()
    with connect(gw, agent(gw), DEV) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(f"DELETE FROM {table} WHERE %s = %s", (1, 1))
        assert_refused(refused.value, "deny-unfiltered-writes")
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(f"DROP TABLE {table}", prepare=True)  # a named prepared statement
        assert_refused(refused.value, "deny-destructive")
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(f"UPDATE {table} SET id = id + %s WHERE true", (1000,))
        assert_refused(refused.value, "deny-unfiltered-writes")
        # allowed statements with parameters still run on the same connection
        assert conn.execute(f"DELETE FROM {table} WHERE id = %s", (2,)).rowcount == 1
        assert conn.execute(f"SELECT count(*) FROM {table} WHERE id > %s", (0,)).fetchone() == (2,)
    assert ids(postgres, table) == {1, 3} and exists(postgres, table)
    log = backend_log_after(postgres, gw, offset)
    assert f"DROP TABLE {table}" not in log
    assert "WHERE $1 = $2" not in log and "WHERE true" not in log


def _pipeline(conn: psycopg.Connection, table: str, middle: str) -> BaseException | None:
    try:
        with conn.pipeline() as pipeline:
            conn.execute(f"INSERT INTO {table} VALUES (%s)", (1,))
            pipeline.sync()
            conn.execute(f"INSERT INTO {table} VALUES (%s)", (2,))
            conn.execute(middle)
            conn.execute(f"INSERT INTO {table} VALUES (%s)", (3,))
            conn.execute(f"DELETE FROM {table} WHERE id = %s", (1,))
    except psycopg.Error as exc:
        return exc
    return None


def test_pipeline_stops_at_a_refused_statement_like_at_a_real_error(postgres, gw):
    # The reference: a real error in the middle of a pipeline.
    reference = make_table(postgres, rows=())
    with connect(gw, agent(gw), DEV) as conn:
        error = _pipeline(conn, reference, "SELECT 1/0")
        assert isinstance(error, errors.DivisionByZero), repr(error)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    expected = ids(postgres, reference)
    assert 3 not in expected and 1 in expected  # later statements did not run; the synced one did

    table = make_table(postgres, rows=())
    offset = postgres.log_size()
    with connect(gw, agent(gw), DEV) as conn:
        error = _pipeline(conn, table, f"DELETE FROM {table}")
        assert error is not None
        assert_refused(error, "deny-unfiltered-writes")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert ids(postgres, table) == expected
    log = backend_log_after(postgres, gw, offset)
    assert f"DELETE FROM {table} WHERE id = $1" not in log  # nothing after the refusal was executed


EVASIONS = [
    pytest.param("DROP /* just a comment */ TABLE {t}", "deny-destructive", id="comment-inside"),
    pytest.param("-- harmless\nDROP TABLE {t}", "deny-destructive", id="leading-line-comment"),
    pytest.param("dRoP tAbLe {T}", "deny-destructive", id="odd-case"),
    pytest.param("DROP TABLE IF EXISTS public.{t} CASCADE", "deny-destructive", id="qualified-if-exists"),
    pytest.param('DROP TABLE "{t}"', "deny-destructive", id="quoted-identifier"),
    pytest.param("TRUNCATE {t}", "deny-destructive", id="truncate"),
    pytest.param("DELETE FROM {t} -- WHERE id = 1", "deny-unfiltered-writes", id="commented-out-where"),
    pytest.param("DELETE/**/FROM/**/{t}", "deny-unfiltered-writes", id="comments-as-spaces"),
    pytest.param("delete from {T} where 'a' = 'a'", "deny-unfiltered-writes", id="constant-where"),
    pytest.param("DELETE FROM {t} WHERE id = id", "deny-unfiltered-writes", id="tautology"),
    pytest.param("WITH d AS (DELETE FROM {t} RETURNING *) SELECT count(*) FROM d", "deny-unfiltered-writes",
                 id="cte-wrapped-delete"),
    pytest.param("EXPLAIN ANALYZE DELETE FROM {t}", "deny-unfiltered-writes", id="explain-analyze"),
    pytest.param("EXPLAIN (ANALYZE, COSTS OFF) DELETE FROM {t}", "deny-unfiltered-writes",
                 id="explain-analyze-options"),
    pytest.param("INSERT INTO {t} VALUES (9); DROP TABLE {t}", "deny-destructive", id="multi-statement-insert"),
    pytest.param("SELECT 1; DROP TABLE {t}", "deny-destructive", id="multi-statement-select"),
    pytest.param("DELETE FROM {t} WHERE id = 1; DELETE FROM {t}", "deny-unfiltered-writes",
                 id="multi-statement-filtered-then-unfiltered"),
    pytest.param("BEGIN; DELETE FROM {t}; COMMIT", "deny-unfiltered-writes", id="wrapped-in-a-transaction"),
]


@pytest.mark.parametrize("template, rule", EVASIONS)
def test_evasion_forms_are_refused_and_nothing_of_them_runs(postgres, gw, template, rule):
    table = make_table(postgres)
    sql = template.format(t=table, T=table.upper())
    offset = postgres.log_size()
    with connect(gw, agent(gw), DEV) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(sql)
        assert_refused(refused.value, rule)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert exists(postgres, table)
    assert ids(postgres, table) == {1, 2, 3}  # no row deleted, no row 9 inserted
    log = backend_log_after(postgres, gw, offset)
    assert table not in log.lower(), log


def test_multi_statement_side_effect_of_the_first_part_does_not_happen(postgres, gw):
    table = make_table(postgres, rows=())
    with connect(gw, agent(gw), DEV) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(f"INSERT INTO {table} VALUES (9); DROP TABLE {table}")
        assert_refused(refused.value, "deny-destructive")
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    assert ids(postgres, table) == set() and exists(postgres, table)


# --- production: agents' writes need approval -------------------------------------------------------


def test_agents_writes_to_production_need_a_dbas_approval(postgres, gw):
    table = make_table(postgres)
    offset = postgres.log_size()
    with connect(gw, agent(gw), PROD) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (3,)  # reads run
        for sql, params in ((f"INSERT INTO {table} VALUES (50)", None),
                            (f"UPDATE {table} SET id = 51 WHERE id = %s", (1,)),
                            (f"CREATE INDEX ON {table} (id)", None)):
            with pytest.raises(psycopg.Error) as held:
                conn.execute(sql, params)
            assert_refused(held.value, "review-prod-changes")
            message = held.value.diag.message_primary
            assert "approval" in message and "dba" in message, message
    assert ids(postgres, table) == {1, 2, 3}
    log = backend_log_after(postgres, gw, offset)
    assert f"INSERT INTO {table}" not in log and f"UPDATE {table}" not in log and "CREATE INDEX" not in log

    # the same statement on development runs
    with connect(gw, agent(gw), DEV) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (50)")
    # and a DBA may write to production
    with connect(gw, dba(gw), PROD) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (60)")
        assert conn.execute(f"UPDATE {table} SET id = 61 WHERE id = %s", (60,)).rowcount == 1
    assert ids(postgres, table) == {1, 2, 3, 50, 61}


def test_unknown_identities_get_nothing(postgres, gw):
    with connect(gw, gw.token("mallory", groups=("marketing",)), PROD) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("SELECT 1")
        assert_refused(refused.value, "builtin:no-matching-rule")


def test_set_config_role_is_refused_even_after_a_harmless_set_config(postgres, gw):
    """``set_config('role', …)`` is admin; ``set_config('search_path', …)`` is not. Both normalize to
    ``SELECT set_config($1, $2, $3)``: the decision for one must not be reused for the other."""
    offset = postgres.log_size()
    with connect(gw, agent(gw), PROD) as conn:
        conn.execute("SELECT set_config('search_path', 'public', false)")
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("SELECT set_config('role', 'wardgate_svc', false)")
        assert_refused(refused.value, "deny-admin")
    log = backend_log_after(postgres, gw, offset)
    assert "set_config('role'" not in log


# --- audit --------------------------------------------------------------------------------------------


def test_denied_statement_is_recorded_with_rule_and_policy_hash(postgres, gw, policy_file):
    table = make_table(postgres)
    with connect(gw, agent(gw), DEV) as conn:
        with pytest.raises(psycopg.Error):
            conn.execute(f"DROP TABLE {table}")
        with pytest.raises(psycopg.Error):
            conn.execute(f"DELETE FROM {table}")
    with connect(gw, agent(gw), PROD) as conn:
        with pytest.raises(psycopg.Error):
            conn.execute(f"INSERT INTO {table} VALUES (7)")
    expected_hash = file_hash(policy_file)
    decided = [e for e in events(gw, "command.decided") if table in (e.get("statement") or "")]
    by_statement = {e["statement"]: e for e in decided}

    drop = by_statement[f"DROP TABLE {table}"]
    assert drop["decision"] == "deny"
    assert drop["rule"] == "deny-destructive"
    assert drop["classes"] == ["ddl"]
    assert drop["tables"] == [table]
    assert drop["roles"] == ["agent"]
    assert drop["policy"] == expected_hash and drop["policy"].startswith("sha256:")
    assert drop["message"] == "destructive statements are not allowed through wardgate"
    assert "CM-5" in drop["controls"]
    assert drop["resource"] == DEV

    delete = by_statement[f"DELETE FROM {table}"]
    assert (delete["decision"], delete["rule"], delete["classes"]) == ("deny", "deny-unfiltered-writes", ["write"])

    review = by_statement[f"INSERT INTO {table} VALUES (7)"]
    assert (review["decision"], review["rule"], review["resource"]) == ("review", "review-prod-changes", PROD)

    # each refusal has its result record
    results = {e["command"]: e for e in events(gw, "command.result")}
    for event in (drop, delete, review):
        assert results[event["id"]]["status"] == "refused"
        assert results[event["id"]]["error"]["code"] == "42501"

    loaded = events(gw, "policy.loaded")
    assert any(e["policy"] == expected_hash and e["source"] == str(policy_file) for e in loaded), loaded


# --- reloading the policy -----------------------------------------------------------------------------


def with_secret_rule(original: str) -> str:
    data = yaml.safe_load(original)
    data["rules"].insert(0, {"name": "deny-secrets", "effect": "deny", "when": {"tables": ["secret_*"]},
                             "message": "secret tables are off limits"})
    return "# reloaded version\n" + yaml.safe_dump(data, sort_keys=False)


def invalid_version(text: str) -> str:
    """The same policy with a typo: the rule ``deny-admin`` gets an unknown key ``efect``."""
    data = yaml.safe_load(text)
    next(rule for rule in data["rules"] if rule["name"] == "deny-admin")["efect"] = "deny"
    return "# a typo\n" + yaml.safe_dump(data, sort_keys=False)


def test_policy_change_applies_to_open_sessions_and_bad_versions_are_refused(postgres, gw, policy_file):
    secret = make_table(postgres, prefix="secret")
    original = policy_file.read_text()
    first_hash = file_hash(policy_file)
    token = agent(gw)
    with connect(gw, token, PROD) as conn:
        assert conn.execute(f"SELECT count(*) FROM {secret}").fetchone() == (3,)

        replace_file(policy_file, with_secret_rule(original))
        second_hash = file_hash(policy_file)
        assert second_hash != first_hash

        def refused_now() -> psycopg.Error | None:
            try:
                conn.execute(f"SELECT * FROM {secret}")
            except psycopg.Error as exc:
                return exc
            return None

        error = wait_for(refused_now, "the open session to be refused under the new policy")
        assert_refused(error, "deny-secrets", "secret tables are off limits")
        wait_for(lambda: any(e["policy"] == second_hash for e in events(gw, "policy.loaded")),
                 "a policy.loaded event with the new hash")
        decided = [e for e in events(gw, "command.decided") if e.get("rule") == "deny-secrets"]
        assert decided and all(e["policy"] == second_hash for e in decided)

        # an invalid version: refused loudly, the running policy stays
        replace_file(policy_file, invalid_version(with_secret_rule(original)))
        failed = wait_for(lambda: events(gw, "policy.load_failed"), "a policy.load_failed event")
        assert "efect" in failed[-1]["error"] and "unknown key" in failed[-1]["error"], failed[-1]
        assert failed[-1]["running_policy"] == second_hash
        assert failed[-1]["source"] == str(policy_file)
        assert gw.gateway.core.policy.bundle_hash == second_hash

        with pytest.raises(psycopg.Error) as still:
            conn.execute(f"SELECT * FROM {secret}")
        assert_refused(still.value, "deny-secrets")
        assert conn.execute("SELECT 1").fetchone() == (1,)
        plain = make_table(postgres)
        with pytest.raises(psycopg.Error) as still:
            conn.execute(f"DROP TABLE {plain}")
        assert_refused(still.value, "deny-destructive")
        assert exists(postgres, plain)
    # new sessions too
    with connect(gw, agent(gw), PROD) as conn:
        with pytest.raises(psycopg.Error) as still:
            conn.execute(f"SELECT * FROM {secret}")
        assert_refused(still.value, "deny-secrets")
        decided = [e for e in events(gw, "command.decided") if secret in (e.get("statement") or "")]
        assert decided[-1]["policy"] == second_hash

    # a good version again is picked up
    replace_file(policy_file, original)
    with connect(gw, agent(gw), PROD) as conn:
        def allowed_again() -> bool:
            try:
                return conn.execute(f"SELECT count(*) FROM {secret}").fetchone() == (3,)
            except psycopg.Error:
                return False
        wait_for(allowed_again, "the original policy to be in force again")


def test_statements_prepared_before_a_reload_are_decided_by_the_new_policy(postgres, gw, policy_file):
    """psycopg prepares a statement it runs often (``prepare_threshold``, 5 by default) and then only
    binds and executes it. A policy that now forbids the statement must stop those executions too."""
    secret = make_table(postgres, prefix="secret")
    with connect(gw, agent(gw), PROD) as conn:
        query = f"SELECT id FROM {secret} WHERE id = %s"
        assert conn.execute(query, (1,), prepare=True).fetchone() == (1,)  # Parse once, named statement
        replace_file(policy_file, with_secret_rule(policy_file.read_text()))
        new_hash = file_hash(policy_file)
        wait_for(lambda: gw.gateway.core.policy.bundle_hash == new_hash, "the new policy to be loaded")
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(f"SELECT id FROM {secret} WHERE id = %s", (2,), prepare=False)  # a fresh Parse
        assert_refused(refused.value, "deny-secrets")
        # the statement prepared under the old policy, executed again (Bind/Execute, no Parse)
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(query, (3,), prepare=True).fetchall()
        assert_refused(refused.value, "deny-secrets")


def test_deleted_policy_file_keeps_the_running_policy(postgres, gw, policy_file):
    running = file_hash(policy_file)
    original = policy_file.read_text()
    table = make_table(postgres)
    policy_file.unlink()
    failed = wait_for(lambda: events(gw, "policy.load_failed"), "a policy.load_failed event")
    assert "cannot read policy" in failed[-1]["error"] and failed[-1]["running_policy"] == running
    with connect(gw, agent(gw), DEV) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(f"DROP TABLE {table}")
        assert_refused(refused.value, "deny-destructive")
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (3,)
    policy_file.write_text(with_secret_rule(original))
    wait_for(lambda: gw.gateway.core.policy.bundle_hash == file_hash(policy_file), "the restored file to load")


def test_policy_file_edited_in_place_is_reloaded(postgres, gw, policy_file):
    secret = make_table(postgres, prefix="secret")
    with connect(gw, agent(gw), PROD) as conn:
        assert conn.execute(f"SELECT count(*) FROM {secret}").fetchone() == (3,)
        policy_file.write_text(with_secret_rule(policy_file.read_text()))  # same inode, new content

        def refused_now() -> bool:
            try:
                conn.execute(f"SELECT * FROM {secret}")
            except errors.InsufficientPrivilege:
                return True
            return False

        wait_for(refused_now, "the edited policy to be in force")


def test_sighup_path_reloads_without_the_watcher(postgres, make_gateway, policy_file):
    gw = make_gateway(policy={"file": str(policy_file), "watch": False}, resources=resources(postgres))
    secret = make_table(postgres, prefix="secret")
    with connect(gw, agent(gw), PROD) as conn:
        replace_file(policy_file, with_secret_rule(policy_file.read_text()))
        time.sleep(0.5)
        assert conn.execute(f"SELECT count(*) FROM {secret}").fetchone() == (3,)  # not watched: unchanged
        gw.loop.call_soon_threadsafe(gw.gateway.reload_policy)  # what the SIGHUP handler calls

        def refused_now() -> bool:
            try:
                conn.execute(f"SELECT * FROM {secret}")
            except errors.InsufficientPrivilege:
                return True
            return False

        wait_for(refused_now, "the reloaded policy to be in force")
    assert any(e["policy"] == file_hash(policy_file) for e in events(gw, "policy.loaded"))


# --- an invalid policy at start -------------------------------------------------------------------


def test_gateway_refuses_to_start_with_an_invalid_policy(postgres, make_gateway, policy_file):
    policy_file.write_text(invalid_version(policy_file.read_text()))
    with pytest.raises(RuntimeError) as failed:
        make_gateway(policy={"file": str(policy_file)}, resources=resources(postgres))
    message = str(failed.value) + " " + str(failed.value.__cause__)
    assert "rules.2.efect" in message and "unknown key" in message, message
    assert str(policy_file) in message


def test_wardgate_serve_refuses_to_start_with_an_invalid_policy(postgres, policy_file):
    policy_file.write_text(invalid_version(policy_file.read_text()))
    config = {
        "listeners": [{"protocol": "postgres", "address": "127.0.0.1:0"}],
        "control": {"address": "127.0.0.1:0"},
        "state_dir": "./state",
        "dev_issuer": {"enabled": True},
        "resources": resources(postgres),
        "audit": {"sink": "file://./audit"},
        "policy": {"file": policy_file.name},
    }
    config_path = policy_file.parent / "wardgate.yaml"
    config_path.write_text(yaml.safe_dump(config))
    script = Path(sys.executable).parent / "wardgate"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "wardgate.cli"]
    result = subprocess.run([*command, "serve", "--config", str(config_path)], capture_output=True, text=True,
                            timeout=60, cwd=policy_file.parent)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "rules.2.efect: unknown key" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "postgres listener on" not in result.stdout
