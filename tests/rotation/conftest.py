"""Fixtures for the key-rotation tests: role pairs in the session's real PostgreSQL, moto_server for
Secrets Manager, and a scratch directory clients can read."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from rotation_helpers import RolePair

from functions.key_rotation.handler import setup_sql
from wardgate.devtools.localcloud.aws import AwsLocalCloud


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@pytest.fixture
def make_role_pair(postgres) -> Iterator[Callable[[], RolePair]]:
    """Unique roles per test: the session's cluster is shared and ``wardgate_svc`` belongs to others."""
    made: list[RolePair] = []

    def make() -> RolePair:
        suffix = secrets.token_hex(3)
        pair = RolePair(f"rot_{suffix}", secrets.token_urlsafe(18), f"rotdb_{suffix}")
        with psycopg.connect(postgres.dsn(dbname="postgres"), autocommit=True) as admin:
            admin.execute("SET log_statement = 'none'")
            admin.execute(f'CREATE ROLE "{pair.username}" LOGIN PASSWORD {_literal(pair.password)}')
            admin.execute(f'CREATE DATABASE "{pair.database}" OWNER "{pair.username}"')
        with psycopg.connect(postgres.dsn(dbname=pair.database), autocommit=True) as admin:
            admin.execute(setup_sql(pair.username))  # what the DBA runs once
        made.append(pair)
        return pair

    yield make
    with psycopg.connect(postgres.dsn(dbname="postgres"), autocommit=True) as admin:
        for pair in made:
            admin.execute(f'DROP DATABASE IF EXISTS "{pair.database}" WITH (FORCE)')
            for role in (pair.alternate, pair.username):
                admin.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.fixture(scope="module")
def aws_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AwsLocalCloud]:
    cloud = AwsLocalCloud(tmp_path_factory.mktemp("aws-rotation"))
    cloud.start()
    try:
        yield cloud
    finally:
        cloud.stop()


@pytest.fixture
def aws_env(aws_cloud: AwsLocalCloud, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """boto3 (the function's and the gateway's) pointed at moto_server for this test only."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    env = aws_cloud.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """Not pytest's tmp_path: the gateway's dev CA must be readable by the pgbench client."""
    directory = Path(tempfile.mkdtemp(prefix="wardgate-rotation-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
