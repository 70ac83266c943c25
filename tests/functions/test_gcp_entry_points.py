"""The Cloud Functions entry points, served by functions-framework's own app (``create_app``) and
fed what Pub/Sub push and HTTP clients send. Backends: Google's Pub/Sub and Firestore emulators,
gcp-storage-emulator, and wardgate's Cloud KMS / Secret Manager fakes (real SDK clients; see
``localstack/README-gcp.md``). Cloud Functions itself needs the cloud, so the push body is built from a
message pulled from the emulator's subscription, exactly as the push subscription would POST it.

GIVEN a held request on the Pub/Sub topic, WHEN its push reaches ``notifier``, THEN it is posted and
the framework answers 2xx (Pub/Sub acks); a poison message makes it answer 500 (Pub/Sub redelivers,
then dead-letters) and, nacked until the subscription's max delivery attempts, it reaches the
dead-letter topic. The webhook records a decision in Firestore; the export writes a package to GCS.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from functions_helpers import REPO_ROOT, generic_signed, pubsub_push_body, ship_small_trail

from wardgate import adapters
from wardgate.approvals.records import command_hash, outcome_key
from wardgate.approvals.service import ApprovalService
from wardgate.core.model import Principal
from wardgate.devtools.harness import wait_for
from wardgate.devtools.localcloud.gcp import GcpLocalCloud

pytestmark = pytest.mark.timeout(240)

ISSUER = "https://idp.example.test"
SECRET = "gcp-signing-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory) -> Iterator[GcpLocalCloud]:
    local = GcpLocalCloud(tmp_path_factory.mktemp("gcp"))
    env = local.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            yield local
    finally:
        local.stop()


@pytest.fixture
def deployed(cloud, monkeypatch, receiver) -> dict[str, str]:
    stem = "t" + uuid.uuid4().hex[:8]
    urls = {"queue": cloud.create_queue(f"{stem}-approvals", max_delivery_attempts=5),
            "decision_store": f"firestore://{cloud.project}/{stem}-decisions",
            "audit_bucket": cloud.create_bucket(f"{stem}-audit"),
            "signer": cloud.create_signing_key(f"{stem}-ring", "audit-signing"),
            "signing": cloud.create_secret(f"{stem}-signing", SECRET),
            "hook": cloud.create_secret(f"{stem}-webhook-url", receiver.url)}
    settings = {
        "WARDGATE_DECISION_STORE": urls["decision_store"], "WARDGATE_APPROVAL_CHANNEL": "generic",
        "WARDGATE_APPROVER_GROUPS": "dba", "WARDGATE_SIGNING_SECRET": urls["signing"],
        "WARDGATE_WEBHOOK_URL_SECRET": urls["hook"], "WARDGATE_WEBHOOK_ENDPOINT": "https://webhook-abc.a.run.app",
        "WARDGATE_APPROVER_IDENTITIES": json.dumps({"generic:dana": {"issuer": ISSUER, "subject": "dana",
                                                                     "groups": ["dba"]}}),
        "WARDGATE_AUDIT_STORE": urls["audit_bucket"] + "?worm=off",
        "WARDGATE_EVIDENCE_STORE": urls["audit_bucket"].replace("/audit", "/evidence") + "?worm=off",
        "WARDGATE_SIGNER": urls["signer"],
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return {**urls, **settings, "stem": stem}


def framework_client(unit: str, target: str, signature: str):
    import functions_framework

    app = functions_framework.create_app(target=target, source=str(REPO_ROOT / "functions" / unit / "gcp.py"),
                                         signature_type=signature)
    return app.test_client()


def hold(urls: dict[str, str]):
    service = ApprovalService(adapters.open_decision_store(urls["decision_store"]),
                              adapters.open_queue(urls["queue"]), roles_of=lambda p: set(p.groups))
    statement = "UPDATE orders SET state = 'void' WHERE id = 9"
    return service.request_statement(
        Principal(ISSUER, "agent-7", ("ai-agents",)), session_id="s-1", resource="orders-prod",
        statement=statement, parameters=[], command_hash=command_hash(statement, []), rule="review-prod-changes",
        controls=["AC-3"], approvers=["dba"], quorum=1, scope="statement", scope_seconds=None, timeout_seconds=600)


def pull(cloud: GcpLocalCloud, subscription: str, count: int = 1) -> list:
    from google import pubsub_v1
    from google.auth.credentials import AnonymousCredentials

    subscriber = pubsub_v1.SubscriberClient(credentials=AnonymousCredentials())
    received: list = []
    for _ in range(20):
        received += subscriber.pull(subscription=subscription, max_messages=10, timeout=5).received_messages
        if len(received) >= count:
            return received
    raise AssertionError(f"no message on {subscription}")


def nack(subscription: str, ack_id: str) -> None:
    from google import pubsub_v1
    from google.auth.credentials import AnonymousCredentials

    pubsub_v1.SubscriberClient(credentials=AnonymousCredentials()).modify_ack_deadline(
        subscription=subscription, ack_ids=[ack_id], ack_deadline_seconds=0)


def test_a_pushed_request_is_posted_and_a_poison_push_fails_until_it_is_dead_lettered(cloud, deployed, receiver):
    request = hold(deployed)
    subscription = f"projects/{cloud.project}/subscriptions/{deployed['stem']}-approvals-sub"
    [received] = pull(cloud, subscription)
    client = framework_client("approval", "notifier", "cloudevent")
    answer = client.post("/", json=pubsub_push_body(received, subscription))
    assert answer.status_code == 200, answer.data
    [posted] = receiver.received
    assert posted.json()["request"]["id"] == request.id

    adapters.open_queue(deployed["queue"]).send(b"not an approval request")
    for attempt in range(1, 6):
        [poison] = pull(cloud, subscription)
        assert poison.delivery_attempt == attempt
        assert client.post("/", json=pubsub_push_body(poison, subscription)).status_code == 500
        nack(subscription, poison.ack_id)  # what a non-2xx push answer means to Pub/Sub
    # The sixth delivery goes to the dead-letter topic instead (the emulator forwards on the next pull).
    queue = adapters.open_queue(deployed["queue"])
    assert queue.receive(wait_seconds=3) == []
    dead = wait_for(queue.dead_letters, "the poison message in the dead-letter subscription", timeout=20)
    assert [(m.body, m.receive_count) for m in dead] == [(b"not an approval request", 5)]
    assert len(receiver.received) == 1


def test_the_http_webhook_records_a_decision_in_firestore(deployed):
    request = hold(deployed)
    client = framework_client("approval", "webhook", "http")
    body, headers = generic_signed(SECRET.encode(), {"request_id": request.id, "verdict": "approve",
                                                     "approver": "dana"})
    answer = client.post("/approvals/generic", data=body, headers=headers)
    assert answer.status_code == 200, answer.data
    assert answer.get_json()["outcome"]["verdict"] == "approved"
    assert adapters.open_decision_store(deployed["decision_store"]).get(outcome_key(request.id))["verdict"] == "approved"
    unsigned = client.post("/approvals/generic", data=body, headers={"Content-Type": "application/json"})
    assert unsigned.status_code == 401 and "not signed" in unsigned.get_json()["error"]


def test_the_scheduler_cloud_event_exports_the_day_into_gcs(cloud, deployed, tmp_path):
    ship_small_trail(deployed["WARDGATE_AUDIT_STORE"], deployed["signer"], tmp_path)
    day = datetime.now(timezone.utc).date().isoformat()
    client = framework_client("evidence_export", "export", "cloudevent")
    push = {"message": {"data": base64.b64encode(json.dumps({"period": day}).encode()).decode(),
                        "messageId": "4242", "publishTime": f"{day}T03:00:00Z", "attributes": {}},
            "subscription": f"projects/{cloud.project}/subscriptions/evidence-export"}
    assert client.post("/", json=push).status_code == 200
    store = adapters.open_object_store(deployed["WARDGATE_EVIDENCE_STORE"])
    assert store.list(f"{day}/") == [f"{day}/{n}" for n in ("evidence.json", "manifest.json",
                                                             "oscal-assessment-results.json", "report.html")]
    manifest = json.loads(store.get(f"{day}/manifest.json"))
    assert manifest["algorithm"] == "ECDSA_P256_SHA256" and manifest["signature"]
    bad = {**push, "message": {**push["message"], "data": base64.b64encode(b'{"period": "someday"}').decode()}}
    assert client.post("/", json=bad).status_code == 500  # Pub/Sub retries, then dead-letters it
