"""Fixtures for the key-rotation tests: role pairs in the session's real PostgreSQL and a scratch
directory clients can read (Secrets Manager is the session's moto_server: ``aws_cloud``/``aws_env``
from ``cloud_fixtures``)."""

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


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """Not pytest's tmp_path: the gateway's dev CA must be readable by the pgbench client."""
    directory = Path(tempfile.mkdtemp(prefix="wardgate-rotation-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
