"""The rotation on GCP (Secret Manager notification → CloudEvent) and Azure (timer), through the real
SDK clients against the local fakes of Secret Manager (gRPC) and Key Vault (REST), with the session's
real PostgreSQL. Google and Microsoft ship no emulator for these two services."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timedelta, timezone

import google_crc32c
import pytest
from azure.core.exceptions import HttpResponseError
from cloudevents.http import CloudEvent
from google.api_core import exceptions as api_exceptions

from functions.key_rotation import azure as rotation_azure
from functions.key_rotation import gcp as rotation_gcp
from functions.key_rotation.handler import RotationError
from rotation_helpers import can_login, set_targets, target_spec
from rotation_fakes import FakeKeyVaultWithVersionState
from wardgate.devtools.localcloud.gcp_fakes import FakeSecretManager, serve
from wardgate.devtools.pgserver import free_port

pytestmark = pytest.mark.timeout(120)

PROJECT = "wardgate-local"
GRACE = timedelta(seconds=600)


# --- GCP -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secret_manager_host():
    port = free_port()
    server = serve(FakeSecretManager().handler(), port)
    yield f"127.0.0.1:{port}"
    server.stop(grace=0).wait()


@pytest.fixture
def gcp_secret(secret_manager_host, monkeypatch, postgres, make_role_pair):
    monkeypatch.setenv("WARDGATE_SECRETMANAGER_EMULATOR_HOST", secret_manager_host)
    pair = make_role_pair()
    client = rotation_gcp.secret_manager_client()
    secret = client.create_secret(parent=f"projects/{PROJECT}", secret_id=f"db-{pair.username.replace('_', '-')}",
                                  secret={"replication": {"automatic": {}}}).name
    data = json.dumps({"username": pair.username, "password": pair.password}).encode()
    client.add_secret_version(parent=secret, payload={"data": data, "data_crc32c": google_crc32c.value(data)})
    set_targets(monkeypatch, {f"gcp-sm://{secret}": target_spec(postgres, pair,
                                                                grace_seconds=int(GRACE.total_seconds()))})
    return pair, secret, client


def _notification(secret: str, event_type: str, published: datetime) -> CloudEvent:
    """What a Pub/Sub push subscription turns a Secret Manager notification into."""
    return CloudEvent({"type": "google.cloud.pubsub.topic.v1.messagePublished",
                       "source": f"//pubsub.googleapis.com/projects/{PROJECT}/topics/secret-rotation",
                       "id": str(uuid.uuid4())},
                      {"subscription": f"projects/{PROJECT}/subscriptions/rotation",
                       "message": {"attributes": {"eventType": event_type, "secretId": secret,
                                                  "dataFormat": "JSON"},
                                   "data": base64.b64encode(json.dumps({"name": secret}).encode()).decode(),
                                   "messageId": str(uuid.uuid4()),
                                   "publishTime": published.isoformat().replace("+00:00", "Z")}})


def _latest(client, secret: str) -> dict:
    return json.loads(client.access_secret_version(name=f"{secret}/versions/latest").payload.data)


def test_gcp_rotate_notification_adds_a_version_for_the_other_role(gcp_secret, postgres):
    pair, secret, client = gcp_secret
    rotation_gcp.rotate(_notification(secret, "SECRET_ROTATE", datetime.now(timezone.utc)))
    latest = _latest(client, secret)
    assert latest["username"] == pair.alternate
    assert latest["wardgate_rotation"]["previous_version"] == f"{secret}/versions/1"
    assert can_login(postgres, pair.database, pair.alternate, latest["password"])
    assert can_login(postgres, pair.database, pair.username, pair.password)  # grace
    assert client.access_secret_version(name=f"{secret}/versions/1").payload.data  # still enabled


def test_gcp_a_redelivered_notification_does_not_rotate_again(gcp_secret):
    _pair, secret, client = gcp_secret
    event = _notification(secret, "SECRET_ROTATE", datetime.now(timezone.utc) - timedelta(seconds=5))
    rotation_gcp.rotate(event)
    first = _latest(client, secret)
    rotation_gcp.rotate(event)
    assert _latest(client, secret) == first
    with pytest.raises(api_exceptions.NotFound):
        client.access_secret_version(name=f"{secret}/versions/3")


def test_gcp_after_the_grace_any_event_retires_the_previous_role(gcp_secret, postgres):
    pair, secret, client = gcp_secret
    start = datetime.now(timezone.utc)
    rotation_gcp.rotate(_notification(secret, "SECRET_ROTATE", start))
    alt = _latest(client, secret)
    early = rotation_gcp.handle_notification(
        _notification(secret, "SECRET_VERSION_ADD", start).data, now=start + GRACE / 2)
    assert early == "nothing due" and can_login(postgres, pair.database, pair.username, pair.password)

    late = rotation_gcp.handle_notification(
        _notification(secret, "SECRET_VERSION_ADD", start).data, now=start + GRACE + timedelta(seconds=1))
    assert late == f"retired {pair.username}"
    assert not can_login(postgres, pair.database, pair.username, pair.password)
    with pytest.raises(api_exceptions.FailedPrecondition, match="DISABLED"):
        client.access_secret_version(name=f"{secret}/versions/1")
    assert can_login(postgres, pair.database, pair.alternate, alt["password"])

    # The next period's rotation goes back to the base role with a new password.
    later = start + timedelta(days=30)
    rotation_gcp.handle_notification(_notification(secret, "SECRET_ROTATE", later).data, now=later)
    back = _latest(client, secret)
    assert back["username"] == pair.username and back["password"] != pair.password
    assert can_login(postgres, pair.database, pair.username, back["password"])


def test_gcp_refuses_unknown_secrets_and_malformed_events(gcp_secret):
    _pair, secret, _client = gcp_secret
    with pytest.raises(RotationError, match="has no entry for this secret"):
        rotation_gcp.handle_notification(
            _notification(f"projects/{PROJECT}/secrets/somebody-else", "SECRET_ROTATE",
                          datetime.now(timezone.utc)).data)
    with pytest.raises(RotationError, match="needs eventType and secretId"):
        rotation_gcp.handle_notification({"message": {"data": ""}})


# --- Azure ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key_vault(tmp_path_factory):
    vault = FakeKeyVaultWithVersionState(tmp_path_factory.mktemp("keyvault"), token=uuid.uuid4().hex).start()
    yield vault
    vault.stop()


@pytest.fixture
def azure_secret(key_vault, monkeypatch, postgres, make_role_pair):
    monkeypatch.setenv("WARDGATE_AZURE_KEYVAULT_URL_TEMPLATE", key_vault.url)
    monkeypatch.setenv("WARDGATE_AZURE_KEYVAULT_CA_FILE", str(key_vault.ca_file))
    monkeypatch.setenv("WARDGATE_AZURE_KEYVAULT_TOKEN", key_vault.token)
    pair = make_role_pair()
    client = rotation_azure.secret_client("wardgate-local")
    name = f"db-{pair.username.replace('_', '-')}"
    client.set_secret(name, json.dumps({"username": pair.username, "password": pair.password}))
    url = f"azure-kv://wardgate-local/{name}"
    set_targets(monkeypatch, {url: target_spec(postgres, pair, grace_seconds=int(GRACE.total_seconds()),
                                               rotate_days=30)})
    return pair, name, url, client


def test_azure_timer_rotates_retires_after_grace_and_rotates_again_when_due(azure_secret, postgres):
    pair, name, url, client = azure_secret
    first_version = client.get_secret(name).properties.version
    start = datetime.now(timezone.utc)
    assert rotation_azure.run_scheduled(now=start) == {url: f"rotated to {pair.alternate}"}
    alt = json.loads(client.get_secret(name).value)
    assert alt["username"] == pair.alternate
    assert can_login(postgres, pair.database, pair.alternate, alt["password"])
    assert can_login(postgres, pair.database, pair.username, pair.password)

    assert rotation_azure.run_scheduled(now=start + GRACE / 2) == {url: "nothing due"}
    assert rotation_azure.run_scheduled(now=start + GRACE + timedelta(seconds=1)) == {url: f"retired {pair.username}"}
    assert not can_login(postgres, pair.database, pair.username, pair.password)
    with pytest.raises(HttpResponseError, match="disabled secret"):
        client.get_secret(name, first_version)
    assert rotation_azure.run_scheduled(now=start + timedelta(days=2)) == {url: "nothing due"}

    due = start + timedelta(days=30, seconds=1)
    assert rotation_azure.run_scheduled(now=due) == {url: f"rotated to {pair.username}"}
    back = json.loads(client.get_secret(name).value)
    assert can_login(postgres, pair.database, pair.username, back["password"])
    assert can_login(postgres, pair.database, pair.alternate, alt["password"])  # its grace has just begun


def test_azure_one_failing_secret_does_not_stop_the_others(azure_secret, postgres, monkeypatch):
    pair, name, url, client = azure_secret
    # Sorted first, so the good secret is rotated after a failure.
    # Named to sort first: the good secret is rotated after the failure.
    client.set_secret("db-a-stranger", json.dumps({"username": "postgres", "password": "x"}))
    stranger = "azure-kv://wardgate-local/db-a-stranger"
    set_targets(monkeypatch, {url: target_spec(postgres, pair), stranger: target_spec(postgres, pair)})
    with pytest.raises(RotationError, match=r"db-a-stranger: resource 'orders-rot': the secret names role 'postgres'"):
        rotation_azure.run_scheduled()
    assert json.loads(client.get_secret(name).value)["username"] == pair.alternate


def test_azure_register_adds_the_timer_trigger_to_the_app():
    import azure.functions as func

    app = func.FunctionApp()
    rotation_azure.register(app)
    functions = {f.get_function_name(): f for f in app.get_functions()}
    trigger = functions["key_rotation"].get_trigger()
    assert trigger.get_binding_name() == "timerTrigger"
    assert trigger.schedule == "%WARDGATE_ROTATION_SCHEDULE%"
