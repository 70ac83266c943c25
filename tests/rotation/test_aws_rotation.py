"""The Secrets Manager rotation protocol against moto_server and the session's real PostgreSQL.

Secrets Manager would invoke the Lambda for each step; moto can only do that through Docker (and,
without a Lambda, its ``rotate_secret`` just relabels a version). So the tests play Secrets Manager:
``enable_rotation`` turns rotation on (moto's ``rotate_secret`` with ``RotateImmediately=False`` keeps
the value), and each rotation calls ``functions.key_rotation.aws.handler`` with the real event shape
for the four steps, under a fresh ``ClientRequestToken`` (createSecret stages it ``AWSPENDING``).
"""

from __future__ import annotations

import json
import secrets
import uuid

import psycopg
import pytest

from functions.key_rotation import aws as rotation_aws
from functions.key_rotation.handler import RotationError, SETUP_SCHEMA
from rotation_helpers import STEPS, can_login, enable_rotation, rotation_context, set_targets, target_spec

pytestmark = pytest.mark.timeout(120)

def _secret(aws_cloud, name: str, username: str, password: str) -> str:
    aws_cloud.client("secretsmanager").create_secret(
        Name=name, SecretString=json.dumps({"username": username, "password": password}))
    enable_rotation(aws_cloud, name)
    return f"aws-sm://{name}?region=us-east-1"


def _value(aws_cloud, name: str, stage: str = "AWSCURRENT") -> dict:
    return json.loads(aws_cloud.client("secretsmanager").get_secret_value(SecretId=name, VersionStage=stage)
                      ["SecretString"])


def _rotate(aws_cloud, name: str, *, repeat: int = 1) -> str:
    token = str(uuid.uuid4())
    for step in STEPS:
        for _ in range(repeat):
            rotation_aws.handler({"SecretId": name, "ClientRequestToken": token, "Step": step}, rotation_context())
    return token


def _retire(name: str) -> None:
    rotation_aws.handler({"SecretId": name, "Step": "retirePrevious"}, rotation_context())


@pytest.fixture
def rotated_secret(aws_env, aws_cloud, postgres, make_role_pair, monkeypatch):
    pair = make_role_pair()
    name = f"rot/{pair.username}"
    url = _secret(aws_cloud, name, pair.username, pair.password)
    set_targets(monkeypatch, {url: target_spec(postgres, pair, grace_seconds=3600)})
    return pair, name, url


def test_a_rotation_moves_the_secret_to_the_other_role_and_keeps_the_old_one_working(rotated_secret, aws_cloud,
                                                                                     postgres):
    pair, name, _url = rotated_secret
    token = _rotate(aws_cloud, name)

    current = _value(aws_cloud, name)
    assert current["username"] == pair.alternate
    assert current["wardgate_rotation"]["previous_version"] != token
    assert can_login(postgres, pair.database, pair.alternate, current["password"])
    # Within the grace period the previous credential still logs in: gateways that have not
    # refreshed yet keep connecting.
    previous = _value(aws_cloud, name, "AWSPREVIOUS")
    assert previous == {"username": pair.username, "password": pair.password}
    assert can_login(postgres, pair.database, pair.username, pair.password)
    stages = aws_cloud.client("secretsmanager").describe_secret(SecretId=name)["VersionIdsToStages"]
    assert stages[token] == ["AWSCURRENT"]  # no pending label left behind


def test_the_previous_password_stops_working_once_the_grace_is_over(rotated_secret, aws_cloud, postgres,
                                                                   monkeypatch):
    pair, name, url = rotated_secret
    _rotate(aws_cloud, name)
    _retire(name)  # grace (1 h) not over: nothing changes
    assert can_login(postgres, pair.database, pair.username, pair.password)

    set_targets(monkeypatch, {url: target_spec(postgres, pair, grace_seconds=0)})
    _retire(name)
    assert not can_login(postgres, pair.database, pair.username, pair.password)
    assert can_login(postgres, pair.database, pair.alternate, _value(aws_cloud, name)["password"])
    _retire(name)  # again: idempotent, the current role is untouched
    assert can_login(postgres, pair.database, pair.alternate, _value(aws_cloud, name)["password"])


def test_the_next_rotation_alternates_back_and_retires_the_other_role(rotated_secret, aws_cloud, postgres,
                                                                     monkeypatch):
    pair, name, url = rotated_secret
    set_targets(monkeypatch, {url: target_spec(postgres, pair, grace_seconds=0)})
    _rotate(aws_cloud, name)
    first = _value(aws_cloud, name)
    _rotate(aws_cloud, name)  # createSecret retires the alternate's predecessor first (grace 0)
    second = _value(aws_cloud, name)
    assert second["username"] == pair.username and second["password"] not in (pair.password, first["password"])
    assert can_login(postgres, pair.database, pair.username, second["password"])
    assert not can_login(postgres, pair.database, pair.username, pair.password)
    # The alternate (AWSPREVIOUS now) works until the grace is over, then not.
    assert can_login(postgres, pair.database, pair.alternate, first["password"])
    _retire(name)
    assert not can_login(postgres, pair.database, pair.alternate, first["password"])


def test_every_step_is_idempotent(rotated_secret, aws_cloud, postgres):
    pair, name, _url = rotated_secret
    token = _rotate(aws_cloud, name, repeat=2)
    current = _value(aws_cloud, name)
    assert current["username"] == pair.alternate
    assert can_login(postgres, pair.database, pair.alternate, current["password"])
    # A late retry of any step after the rotation finished changes nothing.
    for step in STEPS:
        rotation_aws.handler({"SecretId": name, "ClientRequestToken": token, "Step": step}, rotation_context())
    assert _value(aws_cloud, name) == current


def test_objects_created_through_either_role_stay_usable_after_switching(rotated_secret, aws_cloud, postgres):
    pair, name, _url = rotated_secret
    _rotate(aws_cloud, name)
    alt = _value(aws_cloud, name)
    table = f"t_{secrets.token_hex(3)}"
    with psycopg.connect(host=postgres.host, port=postgres.port, dbname=pair.database, user=alt["username"],
                         password=alt["password"], sslmode="disable", autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int)")
        conn.execute(f"INSERT INTO {table} VALUES (1)")
    with psycopg.connect(host=postgres.host, port=postgres.port, dbname=pair.database, user=pair.username,
                         password=pair.password, sslmode="disable", autocommit=True) as conn:
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = %s", (table,)).fetchone()[0]
        assert owner == pair.username
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 1


def test_a_secret_not_in_the_settings_is_refused(aws_env, aws_cloud, monkeypatch, postgres, make_role_pair):
    pair = make_role_pair()
    _secret(aws_cloud, f"rot/other-{pair.username}", pair.username, pair.password)
    set_targets(monkeypatch, {"aws-sm://rot/configured?region=us-east-1": target_spec(postgres, pair)})
    token = str(uuid.uuid4())
    with pytest.raises(RotationError, match="WARDGATE_ROTATION_RESOURCES has no entry for this secret"):
        rotation_aws.handler({"SecretId": f"rot/other-{pair.username}", "ClientRequestToken": token,
                              "Step": "createSecret"}, rotation_context())


def test_a_secret_without_rotation_enabled_is_refused(aws_env, aws_cloud, postgres, make_role_pair, monkeypatch):
    pair = make_role_pair()
    name = f"rot/off-{pair.username}"
    aws_cloud.client("secretsmanager").create_secret(
        Name=name, SecretString=json.dumps({"username": pair.username, "password": pair.password}))
    set_targets(monkeypatch, {f"aws-sm://{name}": target_spec(postgres, pair)})
    with pytest.raises(RotationError, match="does not have rotation enabled"):
        rotation_aws.handler({"SecretId": name, "ClientRequestToken": "a" * 32, "Step": "createSecret"},
                             rotation_context())


def test_a_role_outside_the_pair_is_never_rotated(aws_env, aws_cloud, postgres, make_role_pair, monkeypatch):
    pair = make_role_pair()
    name = f"rot/stranger-{pair.username}"
    url = _secret(aws_cloud, name, "postgres", "whatever")
    set_targets(monkeypatch, {url: target_spec(postgres, pair)})
    token = str(uuid.uuid4())
    with pytest.raises(RotationError, match=r"names role 'postgres', which is neither"):
        rotation_aws.handler({"SecretId": name, "ClientRequestToken": token, "Step": "createSecret"},
                             rotation_context())


def test_unknown_step_and_missing_token_are_named(rotated_secret):
    _pair, name, _url = rotated_secret
    with pytest.raises(RotationError, match="unknown Step 'rotateEverything'"):
        rotation_aws.handler({"SecretId": name, "Step": "rotateEverything"}, rotation_context())


def test_without_the_setup_the_error_says_what_to_run(aws_env, aws_cloud, postgres, make_role_pair, monkeypatch):
    pair = make_role_pair()
    with psycopg.connect(postgres.dsn(dbname=pair.database), autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {SETUP_SCHEMA} CASCADE")
    name = f"rot/nosetup-{pair.username}"
    url = _secret(aws_cloud, name, pair.username, pair.password)
    set_targets(monkeypatch, {url: target_spec(postgres, pair)})
    token = str(uuid.uuid4())
    rotation_aws.handler({"SecretId": name, "ClientRequestToken": token, "Step": "createSecret"}, rotation_context())
    with pytest.raises(RotationError, match="run the one-time setup"):
        rotation_aws.handler({"SecretId": name, "ClientRequestToken": token, "Step": "setSecret"}, rotation_context())
    # Nothing was promoted: the gateway's credential is the one it had.
    assert _value(aws_cloud, name) == {"username": pair.username, "password": pair.password}


def test_the_pair_may_not_touch_other_roles(postgres, make_role_pair):
    pair = make_role_pair()
    with psycopg.connect(host=postgres.host, port=postgres.port, dbname=pair.database, user=pair.username,
                         password=pair.password, sslmode="disable", autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not change the password of postgres"):
            conn.execute(f"SELECT {SETUP_SCHEMA}.set_password('postgres', NULL)")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="only SCRAM-SHA-256 verifiers"):
            conn.execute(f"SELECT {SETUP_SCHEMA}.set_password(%s, 'plaintext')", (pair.alternate,))


def test_bad_settings_name_the_problem(monkeypatch):
    from functions.key_rotation.handler import load_targets

    monkeypatch.setenv("WARDGATE_ROTATION_RESOURCES", "{not json")
    with pytest.raises(RotationError, match="is not JSON"):
        load_targets()
    monkeypatch.setenv("WARDGATE_ROTATION_RESOURCES", json.dumps({"aws-sm://x": {"resource": "r", "host": "h"}}))
    with pytest.raises(RotationError, match=r"\['aws-sm://x'\]: database: Field required; username: Field required"):
        load_targets()
    monkeypatch.delenv("WARDGATE_ROTATION_RESOURCES")
    with pytest.raises(RotationError, match="is not set"):
        load_targets()
