"""The gateway's own side: backend authentication methods, brokered credentials, backend TLS.

GIVEN a real PostgreSQL with roles for each authentication method, WHEN a client connects through
the gateway with only a token, THEN the gateway authenticates with its own credentials and the client
never learns them.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

import psycopg
import pytest

from wardgate.devtools.harness import GatewayThread, default_test_config
from wardgate.devtools.pgserver import ThrowawayPostgres
from wardgate.tlsdev import ensure_dev_certificate


def _resource(postgres, username: str, password_url: str | None, **extra) -> dict:
    resource = {"protocol": "postgres", "host": postgres.host, "port": postgres.port, "database": "orders",
                "username": username, **extra}
    if password_url is not None:
        resource["password"] = password_url
    return resource


def _current_user(gateway: GatewayThread, resource: str) -> str:
    with psycopg.connect(gateway.dsn(gateway.token(), resource)) as conn:
        return conn.execute("select current_user").fetchone()[0]


@pytest.mark.parametrize("method", ["scram-sha-256", "md5", "password", "trust"])
def test_backend_authentication_methods(postgres, make_gateway, method):
    role = f"svc_{method.replace('-', '_')}_{secrets.token_hex(3)}"
    password = None if method == "trust" else secrets.token_urlsafe(12)
    postgres.add_role(role, password, method)
    postgres.run_sql(f'GRANT CONNECT ON DATABASE orders TO "{role}";')
    variable = f"WARDGATE_TEST_{role.upper()}"
    if password is not None:
        os.environ[variable] = password
    gateway = make_gateway(resources={
        "via-method": _resource(postgres, role, f"env://{variable}" if password else None),
    })
    assert _current_user(gateway, "via-method") == role
    # The backend log shows which method the gateway authenticated with.
    if method != "trust":
        assert f'identity="{role}" method={method}' in postgres.log_text()


def test_client_never_sees_backend_credentials(postgres, gateway):
    with psycopg.connect(gateway.dsn(gateway.token(), "orders-prod", user="someone-else")) as conn:
        assert conn.execute("select current_user").fetchone()[0] == "wardgate_svc"
        settings = " ".join(str(row) for row in conn.execute("select name, setting from pg_settings"))
    assert postgres.service_password not in settings


def test_refused_credentials_are_a_clear_error_without_secrets(postgres, make_gateway, tmp_path):
    secret = tempfile.NamedTemporaryFile("w", delete=False, suffix=".secret")
    secret.write("not-the-password")
    secret.close()
    gateway = make_gateway(resources={"wrong": _resource(postgres, "wardgate_svc", f"file://{secret.name}")})
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(gateway.dsn(gateway.token(), "wrong"))
    message = str(refused.value)
    assert "refused the gateway's credentials" in message
    assert "not-the-password" not in message and "wardgate_svc" not in message
    os.unlink(secret.name)


def test_unreachable_backend_names_the_resource(postgres, make_gateway):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    gateway = make_gateway(resources={"gone": {**_resource(postgres, "wardgate_svc", None), "port": dead_port,
                                               "connect_timeout": 3}})
    with pytest.raises(psycopg.OperationalError, match="cannot connect to resource 'gone'"):
        psycopg.connect(gateway.dsn(gateway.token(), "gone"))


def test_rotated_password_is_picked_up_without_failed_connections_or_dropped_sessions(postgres, make_gateway):
    """The secret file changes and the role's password changes: the open session keeps working, and
    the next connection succeeds (the refused cached credential is fetched afresh and retried)."""
    role = f"svc_rotate_{secrets.token_hex(3)}"
    old_password, new_password = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    postgres.add_role(role, old_password, "scram-sha-256")
    secret = Path(tempfile.mkdtemp()) / "orders.json"
    secret.write_text(f'{{"username": "{role}", "password": "{old_password}"}}')
    gateway = make_gateway(resources={"rotating": _resource(postgres, role, f"file://{secret}",
                                                            credential_refresh="1h")})
    long_lived = psycopg.connect(gateway.dsn(gateway.token(), "rotating"), autocommit=True)
    assert long_lived.execute("select current_user").fetchone()[0] == role

    postgres.run_sql(f"SET log_statement = 'none'; ALTER ROLE \"{role}\" PASSWORD '{new_password}';")
    secret.write_text(f'{{"username": "{role}", "password": "{new_password}"}}')

    for _ in range(3):
        assert _current_user(gateway, "rotating") == role
    assert long_lived.execute("select 42").fetchone() == (42,)
    long_lived.close()
    refreshed = [e for e in gateway.audit_events() if e["type"] == "session.credential_refreshed"]
    assert len(refreshed) == 1  # only the first connection after the change needed a fresh fetch


def test_backend_tls_verify_full(tmp_path):
    """The gateway reaches the backend over TLS, verifying its certificate against a CA; a CA that
    did not sign the backend's certificate is refused."""
    certs = Path(tempfile.mkdtemp(prefix="wardgate-backend-tls-"))
    backend_cert = ensure_dev_certificate(certs / "backend")
    other_ca = ensure_dev_certificate(certs / "other")
    with ThrowawayPostgres(log_statement="none") as pg:
        pg.enable_ssl(backend_cert.cert_file, backend_cert.key_file)
        directory = Path(tempfile.mkdtemp(prefix="wardgate-test-"))
        base = default_test_config(pg, directory)
        resource = base["resources"]["orders-prod"]
        config = {**base, "resources": {
            "tls-good": {**resource, "tls": {"mode": "verify-full", "ca_file": str(backend_cert.ca_file)}},
            "tls-bad-ca": {**resource, "tls": {"mode": "verify-full", "ca_file": str(other_ca.ca_file)}},
        }}
        with GatewayThread(config, directory) as gateway:
            with psycopg.connect(gateway.dsn(gateway.token(), "tls-good")) as conn:
                assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone() == (True,)
            with pytest.raises(psycopg.OperationalError, match="TLS to the backend failed"):
                psycopg.connect(gateway.dsn(gateway.token(), "tls-bad-ca"))
