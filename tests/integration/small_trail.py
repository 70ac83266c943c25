"""One small recorded session, shared by the evidence and replay tests (a uniquely named module:
several test directories have helpers on ``sys.path``)."""

from __future__ import annotations

import tempfile
import textwrap
import uuid
from pathlib import Path

import psycopg
import pytest

from wardgate.devtools.harness import GatewayThread, wait_for

# Reads allowed with a masking profile (the table's ``email``), ``DROP TABLE`` denied by ``no-drops``.
POLICY = textwrap.dedent("""
    version: 1
    name: small-trail-test
    roles:
      dev: {match: [{groups: [dev]}]}
    rules:
      - name: no-drops
        effect: deny
        when: {verbs: ["DROP TABLE"]}
        message: dropping tables is not allowed here
      - name: dev-reads
        effect: allow
        roles: [dev]
        when: {classes: [read, transaction, session]}
        mask: pii
    masking:
      pii:
        columns:
          - {match: "*.PEOPLE.email", strategy: redact}
""")


def record_small_session(postgres, make_gateway, subject: str, **token_args) -> tuple[GatewayThread, str, str]:
    """Run one finished psycopg session by ``subject`` through a gateway enforcing :data:`POLICY`:
    3 allowed statements (one returning 5 rows, one masked: 2 emails), a DROP denied by ``no-drops``
    and an unparseable one. Returns (gateway, session id, table); the gateway is still running."""
    table = f"people_{uuid.uuid4().hex[:8]}"
    postgres.run_sql(f"""
        CREATE TABLE {table} (id int PRIMARY KEY, email text);
        INSERT INTO {table} VALUES (1, 'a@example.com'), (2, 'b@example.com');
        GRANT ALL ON {table} TO wardgate_svc;
    """, dbname="orders")
    directory = Path(tempfile.mkdtemp(prefix="wardgate-small-trail-policy-"))
    (directory / "policy.yaml").write_text(POLICY.replace("PEOPLE", table))
    gateway = make_gateway(policy={"file": str(directory / "policy.yaml")})
    token = gateway.token(subject, groups=("dev",), repository="acme/app", **token_args)
    with psycopg.connect(gateway.dsn(token, "orders-prod"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchall() == [(1,)]
        assert len(conn.execute("SELECT generate_series(1, 5)").fetchall()) == 5
        assert conn.execute(f"SELECT id, email FROM {table} ORDER BY id").fetchall()[0][1] != "a@example.com"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"DROP TABLE {table}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELEC 1")

    def ended() -> str | None:
        for event in gateway.audit_events():
            if event["type"] == "session.ended" and (event.get("identity") or {}).get("subject") == subject:
                return event["session"]
        return None

    return gateway, wait_for(ended), table
