"""Helpers shared by the key-rotation tests (imported as ``rotation_helpers``, like the other test
directories' helpers)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import psycopg
import pytest

from wardgate_testkit import LambdaContext  # also puts the repository root (`functions`) on sys.path

from functions.key_rotation.handler import ROTATION_RESOURCES_ENV  # noqa: E402

STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")


@dataclass(frozen=True)
class RolePair:
    """A base role owning its own database, its ``_alt`` partner, and the setup SQL applied."""

    username: str
    password: str  # the base role's first password
    database: str

    @property
    def alternate(self) -> str:
        return self.username + "_alt"


def can_login(postgres, database: str, username: str, password: str | None) -> bool:
    """A direct login to PostgreSQL (not through the gateway)."""
    if password is None:
        return False
    try:
        with psycopg.connect(host=postgres.host, port=postgres.port, dbname=database, user=username,
                             password=password, sslmode="disable", connect_timeout=10) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def target_spec(postgres, pair: RolePair, resource: str = "orders-rot", **extra) -> dict:
    """One entry of WARDGATE_ROTATION_RESOURCES for ``pair`` (the local server has no TLS)."""
    return {"resource": resource, "host": postgres.host, "port": postgres.port, "database": pair.database,
            "username": pair.username, "sslmode": "disable", **extra}


def set_targets(monkeypatch: pytest.MonkeyPatch, targets: dict[str, dict]) -> None:
    monkeypatch.setenv(ROTATION_RESOURCES_ENV, json.dumps(targets))


def enable_rotation(aws_cloud, name: str) -> None:
    """Turn rotation on in moto without changing the value (``RotateImmediately=False``, no Lambda)."""
    aws_cloud.client("secretsmanager").rotate_secret(SecretId=name, RotationRules={"AutomaticallyAfterDays": 30},
                                                     RotateImmediately=False)


def rotation_context() -> LambdaContext:
    """What the Lambda runtime passes the rotation function as ``context``."""
    return LambdaContext(function_name="wardgate-key-rotation")
