"""The throwaway PostgreSQL cluster the other integration tests stand on."""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from wardgate.devtools import pgserver
from wardgate.devtools.pgserver import ThrowawayPostgres


def _unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def _stored_password(pg: ThrowawayPostgres, role: str) -> str:
    return pg.run_sql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'", dbname="postgres").strip()


def test_service_role_connects_with_scram(postgres: ThrowawayPostgres) -> None:
    offset = postgres.log_size()
    with psycopg.connect(postgres.dsn(user="wardgate_svc", password=postgres.service_password)) as conn:
        user, db, owner = conn.execute(
            "SELECT current_user, current_database(), pg_get_userbyid(datdba) "
            "FROM pg_database WHERE datname = current_database()"
        ).fetchone()
    assert (user, db, owner) == ("wardgate_svc", "orders", "wardgate_svc")
    assert _stored_password(postgres, "wardgate_svc").startswith("SCRAM-SHA-256$")
    log = postgres.log_text(since=offset)
    assert 'identity="wardgate_svc" method=scram-sha-256' in log


def test_service_role_can_create_tables_in_orders(postgres: ThrowawayPostgres) -> None:
    table = _unique("t")
    with psycopg.connect(postgres.dsn(user="wardgate_svc")) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, note text)")
        conn.execute(f"INSERT INTO {table} VALUES (1, 'x')")
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
        conn.execute(f"DROP TABLE {table}")


@pytest.mark.parametrize("method", ["md5", "password", "trust", "scram-sha-256"])
def test_add_role_each_auth_method(postgres: ThrowawayPostgres, method: str) -> None:
    role = _unique("r_" + method.replace("-", "_"))
    password = None if method == "trust" else "s3cret'with quote"
    postgres.add_role(role, password, method)

    stored = _stored_password(postgres, role)
    if method == "md5":
        assert stored.startswith("md5")
    elif method == "trust":
        assert stored == ""
    else:
        assert stored.startswith("SCRAM-SHA-256$")

    offset = postgres.log_size()
    with psycopg.connect(postgres.dsn(user=role, password=password)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    log = postgres.log_text(since=offset)
    if method == "trust":
        # trust: no "connection authenticated" line, just authorized
        assert f"connection authorized: user={role} " in log
        assert f'identity="{role}"' not in log
    else:
        assert f'identity="{role}" method={method}' in log


def test_log_contains_statements_run_and_only_those(postgres: ThrowawayPostgres) -> None:
    ran = _unique("marker_ran")
    never = _unique("marker_never")
    offset = postgres.log_size()
    with psycopg.connect(postgres.dsn(user="wardgate_svc")) as conn:
        conn.execute(f"SELECT '{ran}'")
    log = postgres.log_text(since=offset)
    assert f"statement: SELECT '{ran}'" in log
    assert never not in postgres.log_text()
    assert postgres.log_path is not None and postgres.log_path.parent == postgres.data_dir


def test_bad_password_refused(postgres: ThrowawayPostgres) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.dsn(user="wardgate_svc", password="not-the-password"))
    md5_role = _unique("r_md5_bad")
    postgres.add_role(md5_role, "right", "md5")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.dsn(user=md5_role, password="wrong"))


def test_env_for_drives_psql(postgres: ThrowawayPostgres) -> None:
    env = {**os.environ, **postgres.env_for("wardgate_svc", postgres.service_password)}
    out = subprocess.run(
        [str(postgres.binary("psql")), "-X", "-At", "-c", "SELECT current_user || '@' || current_database()"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()
    assert out == "wardgate_svc@orders"


def test_add_role_rejects_unknown_method(postgres: ThrowawayPostgres) -> None:
    with pytest.raises(ValueError, match="unsupported auth method"):
        postgres.add_role(_unique("r_bad"), "pw", "ident")


def test_own_cluster_stops_cleanly() -> None:
    # pytest's tmp_path is 0700 root-owned: as root the server (run as
    # postgres) could not reach it, so use a world-traversable base dir.
    with tempfile.TemporaryDirectory(prefix="wardgate-test-base-") as base:
        os.chmod(base, 0o755)
        _own_cluster_stops_cleanly(Path(base))


def _own_cluster_stops_cleanly(base: Path) -> None:
    pg = ThrowawayPostgres(base_dir=base)
    with pg:
        assert pg.running
        root, sock = pg.root_dir, pg.socket_dir
        assert root is not None and root.parent == base and sock is not None
        pid = pg._proc.pid  # noqa: SLF001 - checking that the postmaster really exits
        with psycopg.connect(pg.dsn()) as conn:
            assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (True,)
    assert not pg.running
    assert not root.exists() and not sock.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    pg.stop()  # idempotent


@pytest.mark.skipif(os.geteuid() != 0, reason="only as root does the server run as another user")
def test_base_dir_unreachable_by_postgres_user_is_a_clear_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    with pytest.raises(RuntimeError, match="not accessible to the 'postgres' user"):
        ThrowawayPostgres(base_dir=tmp_path).start()
    assert list(tmp_path.iterdir()) == []


def test_missing_initdb_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgserver, "find_pg_binary", lambda name, bin_dir=None: None)
    with pytest.raises(RuntimeError, match=r"initdb not found: install PostgreSQL 15 server binaries \(apt-get install"):
        ThrowawayPostgres().start()
