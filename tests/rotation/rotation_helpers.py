"""Helpers shared by the key-rotation tests (imported as ``rotation_helpers``, like the other test
directories' helpers)."""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `functions` lives at the repository root, outside the package
    sys.path.insert(0, str(REPO_ROOT))

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


@dataclass
class LambdaContext:
    """What the Lambda runtime passes as ``context`` (the fields powertools' logger reads)."""

    function_name: str = "wardgate-key-rotation"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:wardgate-key-rotation"
    aws_request_id: str = ""

    def __post_init__(self) -> None:
        self.aws_request_id = self.aws_request_id or str(uuid.uuid4())
