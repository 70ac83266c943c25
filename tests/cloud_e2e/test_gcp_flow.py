"""The GCP path, whole, on the local cloud: gateway → Pub/Sub (Google's emulator) → notifier
(functions-framework's app, given the push request built from the pulled message) → chat webhook →
webhook function (the REST API, called with a dba's OIDC token from the gateway's issuer) → Firestore
(Google's emulator) → the gateway runs the held statement → sealed audit, signed by the Cloud KMS fake,
in the GCS bucket (gcp-storage-emulator) → evidence export (the Cloud Scheduler CloudEvent) →
``wardgate audit verify gs://…`` passes. Cloud Functions itself needs the cloud: the entry points run
in functions-framework's own Flask app.
"""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from cloud_flow import CloudSide, run_flow
from functions_helpers import pubsub_push_body
from wardgate_testkit import framework_client

from wardgate.devtools.harness import wait_for

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("gcp_env")]


def pull_one(subscription: str):
    from google import pubsub_v1
    from google.auth.credentials import AnonymousCredentials

    subscriber = pubsub_v1.SubscriberClient(credentials=AnonymousCredentials())
    return wait_for(lambda: list(subscriber.pull(subscription=subscription, max_messages=1, timeout=5)
                                 .received_messages), f"a message on {subscription}", timeout=30)[0], subscriber


def test_the_gcp_path_whole(gcp_cloud, receiver, postgres, monkeypatch, capsys):
    stem = "e" + uuid.uuid4().hex[:8]
    urls = gcp_cloud.provision(stem)
    hook_secret = gcp_cloud.create_secret(f"{stem}-webhook-url", receiver.url)
    evidence_url = urls["audit_bucket"].replace("/audit", "/evidence")
    subscription = f"projects/{gcp_cloud.project}/subscriptions/{stem}-approvals-sub"

    def settings(gw):
        issuer = gw.gateway.dev_issuer.issuer_url
        for name, value in {
            "WARDGATE_DECISION_STORE": urls["decision_store"], "WARDGATE_APPROVAL_CHANNEL": "slack",
            "WARDGATE_APPROVER_GROUPS": "dba", "WARDGATE_WEBHOOK_URL_SECRET": hook_secret,
            "WARDGATE_WEBHOOK_ENDPOINT": "https://webhook-abc.a.run.app",
            "WARDGATE_ISSUERS": json.dumps([{"issuer": issuer, "audience": "wardgate", "algorithms": ["ES256"]}]),
            "WARDGATE_AUDIT_STORE": urls["audit_bucket"], "WARDGATE_EVIDENCE_STORE": evidence_url,
            "WARDGATE_SIGNER": urls["signer"],
        }.items():
            monkeypatch.setenv(name, value)

    def notify():
        received, subscriber = pull_one(subscription)
        answer = framework_client("approval", "notifier", "cloudevent").post(
            "/", json=pubsub_push_body(received, subscription))
        assert answer.status_code == 200, answer.data
        subscriber.acknowledge(subscription=subscription, ack_ids=[received.ack_id])  # a 2xx push is an ack
        return answer

    def decide(gw, request):
        client = framework_client("approval", "webhook", "http")
        dana = {"Authorization": f"Bearer {gw.token('dana', groups=('dba',))}"}
        pending = client.get("/approvals", headers=dana)
        assert request in [r["id"] for r in pending.get_json()["requests"]]
        agent = {"Authorization": f"Bearer {gw.token('agent-7', groups=('ai-agents',))}"}
        refused = client.post(f"/approvals/{request}/approve", headers=agent, json={})
        assert refused.status_code == 403, refused.get_json()
        answer = client.post(f"/approvals/{request}/approve", headers=dana, json={"reason": "ok by dana"})
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()

    def export(day):
        push = {"message": {"data": base64.b64encode(json.dumps({"period": day}).encode()).decode(),
                            "messageId": "7001", "publishTime": f"{day}T02:00:00Z", "attributes": {}},
                "subscription": f"projects/{gcp_cloud.project}/subscriptions/{stem}-evidence-export"}
        assert framework_client("evidence_export", "export", "cloudevent").post("/", json=push).status_code == 200
        return day

    side = CloudSide(urls, evidence_url, notify=notify, decide=decide, export=export, on_gateway=settings)
    result = run_flow(postgres, receiver, side, capsys)
    blocks = result["posted"].json()["blocks"]
    assert blocks[-1]["elements"][0]["value"] == f"approve:{result['request']}"
    assert result["answer"]["outcome"]["verdict"] == "approved"
    assert result["answer"]["outcome"]["by"][0]["subject"] == "dana"
