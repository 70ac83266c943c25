"""SQL-level PREPARE / EXECUTE through the gateway: an EXECUTE is decided as the statement its
session prepared (classes, tables, masking), never as an opaque command that could smuggle one past
the policy; an EXECUTE of a name the session did not prepare (or deallocated) stays unknown: refused."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "policies" / "ai-agent-default" / "policy.yaml"
DEV = "orders-dev"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def gw(make_gateway, postgres):
    from wardgate.devtools.harness import default_test_config
    base = default_test_config(postgres, Path(tempfile.gettempdir()))["resources"]["orders-prod"]
    policy = Path(tempfile.mkdtemp(prefix="wardgate-prepare-")) / "policy.yaml"
    shutil.copyfile(BUNDLE, policy)
    return make_gateway(policy={"file": str(policy), "watch": False}, resources={DEV: dict(base)})


def _table(postgres) -> str:
    name = f"prep_{secrets.token_hex(4)}"
    postgres.run_sql(f"CREATE TABLE {name} (id int, email text); ALTER TABLE {name} OWNER TO wardgate_svc; "
                     f"INSERT INTO {name} VALUES (1, 'jane.doe@example.com');", dbname="orders")
    return name


def test_execute_is_decided_as_what_the_session_prepared(gw, postgres):
    table = _table(postgres)
    with psycopg.connect(gw.dsn(gw.token("agent-1", groups=("ai-agents",)), DEV), autocommit=True) as conn:
        conn.execute(f"PREPARE ins(int) AS INSERT INTO {table} (id) VALUES ($1)")
        conn.execute("EXECUTE ins(2)")                       # a write on development: allowed
        conn.execute(f"PREPARE sel AS SELECT email FROM {table} WHERE id = 1")
        (email,) = conn.execute("EXECUTE sel").fetchone()   # a read: allowed, and masked
        assert email != "jane.doe@example.com"
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("EXECUTE never_prepared(1)")        # nothing known: unknown, refused
        conn.execute("DEALLOCATE ins")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("EXECUTE ins(3)")                   # forgotten with the DEALLOCATE
    assert postgres.run_sql(f"SELECT string_agg(id::text, ',' ORDER BY id) FROM {table}", dbname="orders").strip() == "1,2"
    decided = {e["statement"]: e for e in gw.audit_events() if e["type"] == "command.decided"}
    assert decided["EXECUTE ins(2)"]["classes"] == ["write"] and decided["EXECUTE ins(2)"]["tables"] == [table]
    assert decided["EXECUTE sel"]["classes"] == ["read"]
    assert decided["EXECUTE never_prepared(1)"]["classes"] == ["unknown"]


def test_execute_of_an_unfiltered_delete_is_refused_like_the_delete(gw, postgres):
    table = _table(postgres)
    with psycopg.connect(gw.dsn(gw.token("agent-1", groups=("ai-agents",)), DEV), autocommit=True) as conn:
        # The PREPARE itself is refused (it prepares an unfiltered DELETE), so EXECUTE knows nothing.
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"PREPARE wipe AS DELETE FROM {table}")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("EXECUTE wipe")
    assert postgres.run_sql(f"SELECT count(*) FROM {table}", dbname="orders").strip() == "1"
