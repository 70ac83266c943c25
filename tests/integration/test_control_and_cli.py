"""The control port (health, readiness, metrics, dev-issuer discovery) and the ``wardgate`` CLI:
``check-config`` errors, ``token`` and ``serve`` end to end with psql, and a clean SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from wardgate.core.audit import read_segment
from wardgate.devtools.harness import GatewayThread
from wardgate.devtools.pgserver import free_port

RESOURCE = "orders-prod"
HTTP_TIMEOUT = 10.0

pytestmark = pytest.mark.timeout(90)


# --- helpers -----------------------------------------------------------------------------------------


def http_get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def metric_samples(gateway: GatewayThread) -> dict[tuple[str, frozenset], float]:
    status, content_type, body = http_get(gateway.control_url + "/metrics")
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wardgate_command() -> list[str]:
    script = Path(sys.executable).parent / "wardgate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "wardgate.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*wardgate_command(), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def base_config(postgres, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listeners": [{"protocol": "postgres", "address": "127.0.0.1:6432"}],
        "control": {"address": "127.0.0.1:9480"},
        "state_dir": "./state",
        "dev_issuer": {"enabled": True},
        "resources": {RESOURCE: {"protocol": "postgres", "host": postgres.host, "port": postgres.port,
                                 "database": "orders", "username": "wardgate_svc",
                                 "password": "env://WARDGATE_CLI_TEST_PASSWORD"}},
        "audit": {"sink": "file://./audit"},
    }
    config.update(overrides)
    return config


@pytest.fixture
def workdir() -> Path:
    # Not pytest's tmp_path: psql must be able to read the CA in the state dir.
    return Path(tempfile.mkdtemp(prefix="wardgate-cli-test-"))


def write_config(directory: Path, config: dict[str, Any] | str) -> Path:
    path = directory / "wardgate.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    return path


def assert_clean_failure(result: subprocess.CompletedProcess, *named: str, code: int = 2) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for word in named:
        assert word in result.stderr, f"{word!r} not named in stderr: {result.stderr!r}"


# --- control port ------------------------------------------------------------------------------------


def test_healthz_and_readyz(gateway: GatewayThread) -> None:
    status, _, body = http_get(gateway.control_url + "/healthz")
    assert status == 200 and body.strip() == "ok"
    status, _, body = http_get(gateway.control_url + "/readyz")
    assert status == 200 and body.strip() == "ready"
    status, _, _ = http_get(gateway.control_url + "/no-such-endpoint")
    assert status == 404


def test_metrics_count_sessions_decisions_and_latency(gateway: GatewayThread) -> None:
    before = metric_samples(gateway)
    for name in ("wardgate_sessions_total", "wardgate_decisions_total", "wardgate_command_seconds"):
        assert f"# TYPE {name}" in http_get(gateway.control_url + "/metrics")[2], name

    with psycopg.connect(gateway.dsn(gateway.token("metrics"), RESOURCE), autocommit=True) as conn:
        for i in range(5):
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        conn.execute("CREATE TEMP TABLE metrics_probe (x int)")
        conn.execute("INSERT INTO metrics_probe VALUES (1), (2)")
        opened = metric_samples(gateway)
        assert value(opened, "wardgate_sessions_open", protocol="postgres", resource=RESOURCE) == 1
    after = metric_samples(gateway)

    sessions = value(after, "wardgate_sessions_total", protocol="postgres", resource=RESOURCE) \
        - value(before, "wardgate_sessions_total", protocol="postgres", resource=RESOURCE)
    assert sessions == 1, sessions
    allowed = value(after, "wardgate_decisions_total", protocol="postgres", verdict="allow") \
        - value(before, "wardgate_decisions_total", protocol="postgres", verdict="allow")
    assert allowed >= 7, allowed
    count = value(after, "wardgate_command_seconds_count", protocol="postgres") \
        - value(before, "wardgate_command_seconds_count", protocol="postgres")
    assert count >= 7, count
    assert value(after, "wardgate_command_seconds_sum", protocol="postgres") > 0
    assert value(after, "wardgate_command_seconds_bucket", protocol="postgres", le="+Inf") == \
        value(after, "wardgate_command_seconds_count", protocol="postgres")
    oks = value(after, "wardgate_authentications_total", protocol="postgres", outcome="ok", reason="ok")
    assert oks >= 1
    assert value(after, "wardgate_audit_events_written") > value(before, "wardgate_audit_events_written")
    assert value(after, "wardgate_audit_sink_up") == 1

    # a refused token is counted by reason
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gateway.dsn("not.a.jwt", RESOURCE))
    refused = metric_samples(gateway)
    assert value(refused, "wardgate_authentications_total", protocol="postgres", outcome="refused",
                 reason="malformed") == 1
    # and the counters only grow
    assert value(refused, "wardgate_sessions_total", protocol="postgres", resource=RESOURCE) >= \
        value(after, "wardgate_sessions_total", protocol="postgres", resource=RESOURCE) + 1


def test_dev_issuer_discovery_and_jwks(gateway: GatewayThread) -> None:
    status, content_type, body = http_get(gateway.control_url + "/dev-issuer/.well-known/openid-configuration")
    assert status == 200 and content_type.startswith("application/json")
    discovery = json.loads(body)
    issuer = gateway.control_url + "/dev-issuer"
    assert discovery["issuer"] == issuer
    assert discovery["jwks_uri"] == issuer + "/jwks"
    assert "ES256" in discovery["id_token_signing_alg_values_supported"]

    status, content_type, body = http_get(discovery["jwks_uri"])
    assert status == 200 and content_type.startswith("application/json")
    keys = json.loads(body)["keys"]
    assert len(keys) == 1
    key = keys[0]
    assert key["kty"] == "EC" and key["crv"] == "P-256" and key["alg"] == "ES256" and key["use"] == "sig"
    assert key["kid"] and "d" not in key, "the JWKS must not publish the private key"

    # a dev token verifies against the published key, as any OIDC relying party would check it
    token = gateway.token("discovery-check", groups=("dev", "ops"))
    signing_key = jwt.PyJWKClient(discovery["jwks_uri"], timeout=HTTP_TIMEOUT).get_signing_key_from_jwt(token)
    assert signing_key.key_id == key["kid"]
    claims = jwt.decode(token, signing_key.key, algorithms=["ES256"], audience="wardgate", issuer=issuer)
    assert claims["sub"] == "discovery-check" and claims["groups"] == ["dev", "ops"]


def test_dev_issuer_endpoints_absent_when_disabled(make_gateway) -> None:
    gateway = make_gateway(dev_issuer={"enabled": False},
                           issuers=[{"issuer": "https://token.actions.githubusercontent.com",
                                     "audience": "wardgate"}])
    assert http_get(gateway.control_url + "/dev-issuer/jwks")[0] == 404
    assert http_get(gateway.control_url + "/dev-issuer/.well-known/openid-configuration")[0] == 404
    assert http_get(gateway.control_url + "/healthz")[0] == 200


# --- wardgate check-config ---------------------------------------------------------------------------


def test_check_config_accepts_a_valid_config(postgres, workdir: Path) -> None:
    result = run_cli("check-config", "--config", str(write_config(workdir, base_config(postgres))))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary == {"listeners": 1, "resources": [RESOURCE], "issuers": [], "dev_issuer": True}


def test_check_config_unknown_key(postgres, workdir: Path) -> None:
    config = base_config(postgres)
    config["listners"] = config.pop("listeners")
    result = run_cli("check-config", "--config", str(write_config(workdir, config)))
    assert_clean_failure(result, "listners", "unknown key", str(workdir / "wardgate.yaml"))


def test_check_config_unknown_nested_key(postgres, workdir: Path) -> None:
    config = base_config(postgres)
    config["resources"][RESOURCE]["pasword"] = config["resources"][RESOURCE].pop("password")
    result = run_cli("check-config", "--config", str(write_config(workdir, config)))
    assert_clean_failure(result, f"resources.{RESOURCE}.pasword", "unknown key")


@pytest.mark.parametrize("section, key, bad", [
    ("audit", "fsync_interval", "5 fortnights"),
    ("dev_issuer", "max_token_lifetime", "forever"),
])
def test_check_config_bad_duration(postgres, workdir: Path, section: str, key: str, bad: str) -> None:
    config = base_config(postgres)
    config.setdefault(section, {})[key] = bad
    result = run_cli("check-config", "--config", str(write_config(workdir, config)))
    assert_clean_failure(result, f"{section}.{key}", bad, "duration")


def test_check_config_bad_duration_in_resource(postgres, workdir: Path) -> None:
    config = base_config(postgres)
    config["resources"][RESOURCE]["connect_timeout"] = "10 parsecs"
    result = run_cli("check-config", "--config", str(write_config(workdir, config)))
    assert_clean_failure(result, f"resources.{RESOURCE}.connect_timeout", "10 parsecs")


@pytest.mark.parametrize("algorithm", ["HS256", "none"])
def test_check_config_refuses_symmetric_or_none_algorithm(postgres, workdir: Path, algorithm: str) -> None:
    config = base_config(postgres, issuers=[{"issuer": "https://token.actions.githubusercontent.com",
                                             "audience": "wardgate", "algorithms": ["RS256", algorithm]}])
    result = run_cli("check-config", "--config", str(write_config(workdir, config)))
    assert_clean_failure(result, "issuers.0.algorithms", algorithm)


def test_check_config_unreadable_and_invalid_yaml(workdir: Path) -> None:
    assert_clean_failure(run_cli("check-config", "--config", str(workdir / "missing.yaml")), "missing.yaml")
    path = write_config(workdir, "listeners: [\n  - protocol: postgres\n  address: :::\n")
    assert_clean_failure(run_cli("check-config", "--config", str(path)), "YAML")


def test_token_needs_a_fixed_control_port(postgres, workdir: Path) -> None:
    config = write_config(workdir, base_config(postgres, control={"address": "127.0.0.1:0"}))
    assert_clean_failure(run_cli("token", "--config", str(config), "--sub", "x"), "control.address")


def test_token_lifetime_over_the_maximum(postgres, workdir: Path) -> None:
    config = write_config(workdir, base_config(postgres))
    result = run_cli("token", "--config", str(config), "--sub", "x", "--ttl", "2h")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result
    assert "lifetime" in result.stderr, result.stderr


# --- wardgate serve + token + psql, end to end -------------------------------------------------------


def test_serve_token_psql_and_sigterm(postgres, workdir: Path) -> None:
    pg_port, control_port = free_port(), free_port()
    config = base_config(postgres, listeners=[{"protocol": "postgres", "address": f"127.0.0.1:{pg_port}"}],
                         control={"address": f"127.0.0.1:{control_port}"})
    config_path = write_config(workdir, config)
    env = {"WARDGATE_CLI_TEST_PASSWORD": postgres.service_password}
    log_path = workdir / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([*wardgate_command(), "serve", "--config", str(config_path)],
                                   stdout=log, stderr=subprocess.STDOUT, cwd="/", env={**os.environ, **env})
    try:
        control = f"http://127.0.0.1:{control_port}"
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, f"wardgate serve exited early: {log_path.read_text()}"
            try:
                if http_get(control + "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"wardgate serve not ready: {log_path.read_text()}"
            time.sleep(0.1)
        output = log_path.read_text()
        assert f"postgres listener on 127.0.0.1:{pg_port}" in output, output
        assert f"dev issuer http://127.0.0.1:{control_port}/dev-issuer" in output, output

        minted = run_cli("token", "--config", str(config_path), "--sub", "cli-user", "--groups", "dev,ops",
                         "--claim", "repository=acme/orders")
        assert minted.returncode == 0, minted.stderr
        token = minted.stdout.strip()
        assert token.count(".") == 2

        ca_file = workdir / "state" / "dev-ca.pem"
        assert ca_file.exists(), sorted(p.name for p in (workdir / "state").iterdir())
        psql_env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(pg_port), "PGUSER": "agent",
                    "PGDATABASE": RESOURCE, "PGPASSWORD": token, "PGSSLMODE": "verify-full",
                    "PGSSLROOTCERT": str(ca_file), "PGCONNECT_TIMEOUT": "10"}
        result = subprocess.run(["psql", "-X", "-A", "-t", "-c", "select 1"], env=psql_env, capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "1"

        metrics = http_get(control + "/metrics")[2]
        assert f'wardgate_sessions_total{{protocol="postgres",resource="{RESOURCE}"}} 1.0' in metrics, metrics

        # a session still open at SIGTERM is told why and closed, and its end is recorded
        held = psycopg.connect(f"host=127.0.0.1 port={pg_port} user=agent dbname={RESOURCE} password={token} "
                               f"sslmode=verify-full sslrootcert={ca_file} connect_timeout=10", autocommit=True)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
            pytest.fail(f"wardgate serve did not exit on SIGTERM: {log_path.read_text()}")
    assert code == 0, f"exit code {code}: {log_path.read_text()}"
    with pytest.raises(psycopg.OperationalError, match="shutting down|terminat|closed"):
        held.execute("SELECT 1")
    held.close()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()

    events = []
    for path in sorted((workdir / "audit").glob("*.jsonl")):
        events.extend(json.loads(line) for line in read_segment(path) if line.strip())
    types = [e["type"] for e in events]
    assert "session.authenticated" in types and "command.decided" in types, types
    authenticated = next(e for e in events if e["type"] == "session.authenticated")
    assert authenticated["principal"]["subject"] == "cli-user"
    assert authenticated["principal"]["groups"] == ["dev", "ops"]
    assert authenticated["principal"]["claims"].get("repository") == "acme/orders"
    sessions = [e["session"] for e in events if e["type"] == "session.authenticated"]
    assert len(sessions) == 2, events
    ended = {e["session"]: e for e in events if e["type"] == "session.ended"}
    assert set(ended) == set(sessions), f"every session must have a session.ended event: {types}"
    assert ended[authenticated["session"]]["commands"] >= 1


def test_serve_on_an_address_in_use_says_so_without_a_traceback(postgres, workdir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = base_config(postgres, listeners=[{"protocol": "postgres", "address": f"127.0.0.1:{port}"}],
                             control={"address": f"127.0.0.1:{free_port()}"})
        result = run_cli("serve", "--config", str(write_config(workdir, config)),
                         env={"WARDGATE_CLI_TEST_PASSWORD": postgres.service_password})
    assert_clean_failure(result, "cannot start", f"{port}", "address already in use", code=1)
