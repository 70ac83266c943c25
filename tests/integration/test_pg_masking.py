"""Inline masking through a real gateway, with real clients, in text and binary formats.

GIVEN a customers table holding emails, SSNs and secrets, and a policy whose allow rule masks them,
WHEN an agent reads it through the gateway with psql, psycopg (text and binary), asyncpg or COPY,
THEN the raw values never reach the client, and each masking is recorded (never the value).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import textwrap
import uuid
from pathlib import Path

import asyncpg
import psycopg
import pytest

EMAIL = "jane.doe@example.com"
SSN = "123-45-6789"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
CARD = "4111 1111 1111 1111"

POLICY = textwrap.dedent("""
    version: 1
    name: masking-test
    roles:
      agent: {match: [{groups: [ai-agents]}]}
    rules:
      - name: agents-read
        effect: allow
        roles: [agent]
        when: {classes: [read, write, ddl, transaction, session, copy_out]}
        mask: pii
    masking:
      pii:
        columns:
          - {match: "*.TABLE.email", strategy: partial, keep: 4}
          - {match: "TABLE.ssn", strategy: redact}
          - {match: "api_token", strategy: hash}
        detectors: [email, aws_access_key_id, credit_card]
""")


@pytest.fixture
def masked(postgres, make_gateway, tmp_path_factory):
    table = f"customers_{uuid.uuid4().hex[:8]}"
    postgres.run_sql(f"""
        CREATE TABLE {table} (id int PRIMARY KEY, email text UNIQUE, ssn text, notes text, api_token text,
                              age int);
        INSERT INTO {table} VALUES
          (1, '{EMAIL}', '{SSN}', 'key {AWS_KEY} and card {CARD}', 'tok-secret-1', 41),
          (2, 'bob@example.org', '987-65-4321', 'nothing here', 'tok-secret-2', 37);
        GRANT ALL ON {table} TO wardgate_svc;
    """, dbname="orders")
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"wardgate-mask-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    policy = directory / "policy.yaml"
    policy.write_text(POLICY.replace("TABLE", table))
    gateway = make_gateway(policy={"file": str(policy)})
    token = gateway.token("agent-1", groups=("ai-agents",))
    return gateway, token, table


def _assert_clean(text: str) -> None:
    for secret in (EMAIL, SSN, AWS_KEY, CARD, "987-65-4321", "bob@example.org", "tok-secret-1"):
        assert secret not in text, f"{secret!r} leaked: {text[:500]}"


def test_psql_text_results_are_masked(masked):
    gateway, token, table = masked
    env = {**os.environ, **gateway.libpq_env(token, "orders-prod")}
    out = subprocess.run(["psql", "-X", "-A", "-t", "-c", f"SELECT id, email, ssn, notes, api_token, age FROM {table} ORDER BY id"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    _assert_clean(out.stdout)
    first, second = out.stdout.strip().splitlines()
    ident, email, ssn, notes, token_value, age = first.split("|")
    assert email.endswith(".com") and email.startswith("*")  # partial keeps the last 4
    assert ssn == "[REDACTED]"
    assert "[REDACTED:aws_access_key_id]" in notes and "[REDACTED:credit_card]" in notes
    assert token_value.startswith("tok_") and age == "41"  # hash is a token; non-masked columns untouched
    assert second.split("|")[0] == "2"


def test_alias_and_computed_columns_do_not_bypass(masked):
    gateway, token, table = masked
    with psycopg.connect(gateway.dsn(token, "orders-prod")) as conn:
        rows = conn.execute(f"SELECT email AS e, lower(ssn) AS s, upper(email) AS u FROM {table} ORDER BY id").fetchall()
    _assert_clean(repr(rows))
    assert rows[0][1] == "[REDACTED]"  # computed from a column a rule names: redacted whole


def test_binary_format_results_are_masked(masked):
    gateway, token, table = masked
    with psycopg.connect(gateway.dsn(token, "orders-prod")) as conn:
        with conn.cursor(binary=True) as cursor:
            rows = cursor.execute(f"SELECT email, ssn, notes, age FROM {table} WHERE id = %s", (1,)).fetchall()
    _assert_clean(repr(rows))
    assert rows[0][3] == 41


def test_asyncpg_prepared_statements_are_masked(masked):
    gateway, token, table = masked
    context = ssl.create_default_context(cafile=str(gateway.ca_file))

    async def run():
        conn = await asyncpg.connect(host=gateway.host, port=gateway.port, user="agent", password=token,
                                     database="orders-prod", ssl=context)
        try:
            statement = await conn.prepare(f"SELECT id, email, ssn, notes FROM {table} WHERE id = $1")
            first = await statement.fetch(1)
            again = await statement.fetch(2)
            return [tuple(r) for r in first + again]
        finally:
            await conn.close()

    rows = asyncio.run(run())
    _assert_clean(repr(rows))
    assert [r[0] for r in rows] == [1, 2]


def test_copy_out_is_masked_in_text_and_csv(masked):
    gateway, token, table = masked
    def copy_out(cursor, statement: str) -> str:
        with cursor.copy(statement) as copy:
            return b"".join(bytes(chunk) for chunk in copy).decode()

    with psycopg.connect(gateway.dsn(token, "orders-prod")) as conn:
        with conn.cursor() as cursor:
            text = copy_out(cursor, f"COPY {table} TO STDOUT")
            csv = copy_out(cursor, f"COPY {table} (id, email, notes) TO STDOUT WITH (FORMAT csv)")
            query = copy_out(cursor, f"COPY (SELECT notes FROM {table}) TO STDOUT")
    for output in (text, csv, query):
        _assert_clean(output)
    assert "[REDACTED]" in text and "41" in text
    assert csv.splitlines()[0].startswith("1,")


def test_error_detail_is_masked_and_maskings_are_recorded_without_values(masked):
    gateway, token, table = masked
    with psycopg.connect(gateway.dsn(token, "orders-prod")) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation) as error:
            conn.execute(f"INSERT INTO {table} (id, email) VALUES (3, %s)", (EMAIL,))
        conn.rollback()
        conn.execute(f"SELECT email, notes FROM {table}").fetchall()
    _assert_clean(str(error.value.diag.message_detail))
    events = gateway.audit_events()
    masked_events = [e for e in events if e["type"] == "command.masked"]
    assert masked_events, "no masking recorded"
    counts = {(m["column"], m["detector"]): m["count"] for e in masked_events for m in e["maskings"]}
    assert counts.get((f"public.{table}.email", "column")) == 2
    assert counts.get((f"public.{table}.notes", "aws_access_key_id")) == 1
    audit_text = "\n".join(str(e) for e in events if e["type"] != "command.decided")
    _assert_clean(audit_text)


def test_results_without_a_profile_pass_untouched(postgres, gateway):
    """No policy configured: nothing is masked (and nothing is decoded)."""
    table = f"plain_{uuid.uuid4().hex[:8]}"
    postgres.run_sql(f"CREATE TABLE {table} (email text); INSERT INTO {table} VALUES ('{EMAIL}');"
                     f"GRANT ALL ON {table} TO wardgate_svc;", dbname="orders")
    with psycopg.connect(gateway.dsn(gateway.token(), "orders-prod")) as conn:
        assert conn.execute(f"SELECT email FROM {table}").fetchone() == (EMAIL,)


LIMITED = textwrap.dedent("""
    version: 1
    name: row-limit-test
    roles:
      agent: {match: [{groups: [ai-agents]}]}
    rules:
      - name: agents-read-a-little
        effect: allow
        roles: [agent]
        when: {classes: [read, transaction]}
        max_rows: 5
""")


@pytest.mark.parametrize("prepare", [False, True])
def test_max_rows_withholds_the_rest_and_closes_the_session(make_gateway, prepare):
    """A result over the rule's max_rows: the client gets at most that many rows, then a clear
    error, and the session closes (nothing half-read keeps running)."""
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"wardgate-limit-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    (directory / "policy.yaml").write_text(LIMITED)
    gateway = make_gateway(policy={"file": str(directory / "policy.yaml")})
    token = gateway.token("agent-2", groups=("ai-agents",))
    with psycopg.connect(gateway.dsn(token, "orders-prod")) as conn:
        assert conn.execute("SELECT g FROM generate_series(1, 5) g", prepare=prepare).fetchall() == [(g,) for g in range(1, 6)]
        received = []
        with pytest.raises(psycopg.OperationalError, match="exceeds the 5 rows rule agents-read-a-little"):
            with conn.cursor() as cursor:
                for row in cursor.stream("SELECT g FROM generate_series(1, 100000) g"):
                    received.append(row)
        assert len(received) <= 5
        assert conn.closed or conn.broken
    events = gateway.audit_events()
    assert any(e["type"] == "command.result" and e["status"] == "limit_exceeded" and e["rows"] == 5 for e in events)
