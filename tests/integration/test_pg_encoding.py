"""A session must not change how the backend reads its text: the gateway decides on UTF-8."""

import psycopg
import pytest


@pytest.mark.parametrize("statement", [
    "SET client_encoding = 'SJIS'",
    "SET NAMES 'GBK'",
    "SELECT set_config('client_encoding', 'BIG5', false)",
])
def test_changing_client_encoding_is_refused_whatever_the_policy(gateway, statement):
    with psycopg.connect(gateway.dsn(gateway.token(), "orders-prod"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="client_encoding is not supported"):
            conn.execute(statement)
        assert conn.execute("SHOW client_encoding").fetchone() == ("UTF8",)
    decided = [e for e in gateway.audit_events() if e["type"] == "command.decided" and e["statement"] == statement]
    assert decided and decided[0]["rule"] == "builtin:client-encoding"


def test_startup_with_another_encoding_is_refused(gateway):
    with pytest.raises(psycopg.OperationalError, match="client_encoding 'SJIS' is not supported"):
        psycopg.connect(gateway.dsn(gateway.token(), "orders-prod") + " client_encoding=SJIS")


@pytest.mark.parametrize("statement", [
    "SET client_encoding = 'UTF8'",
    "SET NAMES 'utf-8'",
    "SET client_encoding TO DEFAULT",
    "SELECT set_config('client_encoding', 'unicode', false)",
])
def test_setting_client_encoding_to_utf8_changes_nothing_and_runs(gateway, statement):
    # Drivers and ORMs send these at connect time; the session stays UTF-8, which is what the
    # gateway decides on, so they are no reason to refuse.
    with psycopg.connect(gateway.dsn(gateway.token(), "orders-prod"), autocommit=True) as conn:
        conn.execute(statement)
        assert conn.execute("SHOW client_encoding").fetchone() == ("UTF8",)
