"""Rotation while clients work: pgbench through a real gateway whose backend password is a Secrets
Manager secret (moto_server), the real PostgreSQL behind it, and the rotation function run as Secrets
Manager would run it (each step's entry point with the real event shape; see test_aws_rotation).

``pgbench -C`` opens a new connection per transaction, so every transaction needs a backend login
with whatever credential the gateway's broker holds at that moment.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid

import pytest

from functions.key_rotation import aws as rotation_aws
from rotation_helpers import STEPS, can_login, enable_rotation, rotation_context, set_targets, target_spec
from wardgate.devtools.harness import GatewayThread, default_test_config
from wardgate.devtools.pgserver import env_without_libpq, find_pg_binary

pytestmark = pytest.mark.timeout(180)

RESOURCE = "orders-rot"
GRACE_SECONDS = 2
REFRESH_SECONDS = 1


def _step(name: str, step: str, token: str | None = None) -> None:
    event = {"SecretId": name, "Step": step, **({"ClientRequestToken": token} if token else {})}
    rotation_aws.handler(event, rotation_context())


def _rotate(name: str) -> None:
    token = str(uuid.uuid4())
    for step in STEPS:
        _step(name, step, token)


def _current(aws_cloud, name: str) -> dict:
    # The stage explicitly (as the gateway asks): moto's default ignores moved AWSCURRENT labels.
    return json.loads(aws_cloud.client("secretsmanager").get_secret_value(
        SecretId=name, VersionStage="AWSCURRENT")["SecretString"])


def test_rotations_during_pgbench_fail_no_transaction_and_retire_the_old_password(
        aws_env, aws_cloud, postgres, make_role_pair, monkeypatch, scratch_dir):
    pgbench = find_pg_binary("pgbench")
    if pgbench is None:
        pytest.skip("pgbench is not installed")
    pair = make_role_pair()
    name = f"rot/load-{pair.username}"
    aws_cloud.client("secretsmanager").create_secret(
        Name=name, SecretString=json.dumps({"username": pair.username, "password": pair.password}))
    enable_rotation(aws_cloud, name)
    url = f"aws-sm://{name}?region=us-east-1"
    set_targets(monkeypatch, {url: target_spec(postgres, pair, resource=RESOURCE, grace_seconds=GRACE_SECONDS)})

    init = subprocess.run([str(pgbench), "-i", "-s", "1", "-I", "dtg", "-q"], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL,
                          env=env_without_libpq(**postgres.env_for(pair.username, pair.password, pair.database)))
    assert init.returncode == 0, init.stderr

    config = default_test_config(postgres, scratch_dir, resources={RESOURCE: {
        "protocol": "postgres", "host": postgres.host, "port": postgres.port, "database": pair.database,
        "username": pair.username, "password": url, "credential_refresh": REFRESH_SECONDS}})
    log_offset = postgres.log_size()
    with GatewayThread(config, scratch_dir) as gateway:
        env = {**env_without_libpq(LC_ALL="C"), **gateway.libpq_env(gateway.token(ttl=600), RESOURCE)}
        bench = subprocess.Popen([str(pgbench), "-C", "-S", "-n", "-c", "4", "-j", "2", "-T", "12"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 stdin=subprocess.DEVNULL)
        try:
            time.sleep(2)
            _rotate(name)                                   # wardgate_svc -> _alt
            first = _current(aws_cloud, name)
            time.sleep(GRACE_SECONDS + REFRESH_SECONDS + 0.5)
            _step(name, rotation_aws.RETIRE_STEP)           # the original password stops working
            assert not can_login(postgres, pair.database, pair.username, pair.password)
            time.sleep(1)
            _rotate(name)                                   # _alt -> wardgate_svc, new password
            second = _current(aws_cloud, name)
            time.sleep(GRACE_SECONDS + REFRESH_SECONDS + 0.5)
            _step(name, rotation_aws.RETIRE_STEP)           # the first rotation's password stops working
            out, err = bench.communicate(timeout=60)
        finally:
            if bench.poll() is None:
                bench.kill()
                bench.wait()

    assert bench.returncode == 0, err
    assert re.search(r"number of failed transactions: 0 \(", out), out
    processed = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    assert processed > 20, out
    # The gateway's backend logins really moved between the two roles while pgbench ran.
    log = postgres.log_text(since=log_offset)
    for role in (pair.username, pair.alternate):
        assert re.search(rf"connection authorized: user={role} database={pair.database}", log), role

    assert (first["username"], second["username"]) == (pair.alternate, pair.username)
    assert not can_login(postgres, pair.database, pair.username, pair.password)
    assert not can_login(postgres, pair.database, pair.alternate, first["password"])
    assert can_login(postgres, pair.database, pair.username, second["password"])
