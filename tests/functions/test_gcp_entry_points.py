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
from datetime import datetime, timezone

import pytest

from functions_helpers import ISSUER, hold_statement, pubsub_push_body, ship_small_trail
from wardgate_testkit import framework_client, generic_signed

from wardgate import adapters
from wardgate.approvals.records import outcome_key
from wardgate.devtools.harness import wait_for
from wardgate.devtools.localcloud.gcp import GcpLocalCloud

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("gcp_env")]

SECRET = "gcp-signing-secret-0123456789abcdef"


@pytest.fixture
def deployed(gcp_cloud, monkeypatch, receiver) -> dict[str, str]:
    stem = "t" + uuid.uuid4().hex[:8]
    urls = {"queue": gcp_cloud.create_queue(f"{stem}-approvals", max_delivery_attempts=5),
            "decision_store": f"firestore://{gcp_cloud.project}/{stem}-decisions",
            "audit_bucket": gcp_cloud.create_bucket(f"{stem}-audit"),
            "signer": gcp_cloud.create_signing_key(f"{stem}-ring", "audit-signing"),
            "signing": gcp_cloud.create_secret(f"{stem}-signing", SECRET),
            "hook": gcp_cloud.create_secret(f"{stem}-webhook-url", receiver.url)}
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


def hold(urls: dict[str, str]):
    return hold_statement(urls, "UPDATE orders SET state = 'void' WHERE id = 9")


def pull(gcp_cloud: GcpLocalCloud, subscription: str, count: int = 1) -> list:
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


def test_a_pushed_request_is_posted_and_a_poison_push_fails_until_it_is_dead_lettered(gcp_cloud, deployed, receiver):
    request = hold(deployed)
    subscription = f"projects/{gcp_cloud.project}/subscriptions/{deployed['stem']}-approvals-sub"
    [received] = pull(gcp_cloud, subscription)
    client = framework_client("approval", "notifier", "cloudevent")
    answer = client.post("/", json=pubsub_push_body(received, subscription))
    assert answer.status_code == 200, answer.data
    [posted] = receiver.received
    assert posted.json()["request"]["id"] == request.id

    adapters.open_queue(deployed["queue"]).send(b"not an approval request")
    for attempt in range(1, 6):
        [poison] = pull(gcp_cloud, subscription)
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


def test_the_scheduler_cloud_event_exports_the_day_into_gcs(gcp_cloud, deployed, tmp_path):
    ship_small_trail(deployed["WARDGATE_AUDIT_STORE"], deployed["signer"], tmp_path)
    day = datetime.now(timezone.utc).date().isoformat()
    client = framework_client("evidence_export", "export", "cloudevent")
    push = {"message": {"data": base64.b64encode(json.dumps({"period": day}).encode()).decode(),
                        "messageId": "4242", "publishTime": f"{day}T03:00:00Z", "attributes": {}},
            "subscription": f"projects/{gcp_cloud.project}/subscriptions/evidence-export"}
    assert client.post("/", json=push).status_code == 200
    store = adapters.open_object_store(deployed["WARDGATE_EVIDENCE_STORE"])
    assert store.list(f"{day}/") == [f"{day}/{n}" for n in ("evidence.json", "manifest.json",
                                                             "oscal-assessment-results.json", "report.html")]
    manifest = json.loads(store.get(f"{day}/manifest.json"))
    assert manifest["algorithm"] == "ECDSA_P256_SHA256" and manifest["signature"]
    bad = {**push, "message": {**push["message"], "data": base64.b64encode(b'{"period": "someday"}').decode()}}
    assert client.post("/", json=bad).status_code == 500  # Pub/Sub retries, then dead-letters it
