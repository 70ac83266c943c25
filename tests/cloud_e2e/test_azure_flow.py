"""The Azure path, whole, on the local cloud: gateway → Storage Queue (Azurite) → the app's queue
trigger (given an ``azure.functions.QueueMessage`` built from the Azurite message) → Slack webhook →
the app's HTTP trigger (a signed Slack interaction) → Table storage (Azurite) → the gateway runs the
held statement → sealed audit, signed by the fake Key Vault key, in Blob storage (Azurite; no
immutability there, hence ``?worm=off``) → the timer's export → ``wardgate audit verify azblob://…``
passes. The Functions host needs Core Tools: the registered functions are called directly.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from cloud_flow import CloudSide, run_flow
from functions_helpers import azure_function, azure_http_request, azure_queue_message, slack_signed

from wardgate.devtools.harness import wait_for
from wardgate.devtools.localcloud.azure import VAULT, AzureLocalCloud

pytestmark = pytest.mark.timeout(240)

SECRET = "e2e-azure-slack-signing-secret"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory) -> Iterator[AzureLocalCloud]:
    local = AzureLocalCloud(tmp_path_factory.mktemp("azure-e2e"))
    env = local.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            yield local
    finally:
        local.stop()


def test_the_azure_path_whole(cloud, receiver, postgres, monkeypatch, capsys):
    from functions import azure_app
    from functions.evidence_export import handler as evidence

    stem = "e2e" + uuid.uuid4().hex[:8]
    urls = cloud.provision(stem)
    cloud.secret_client().set_secret(f"{stem}-signing", SECRET)
    cloud.secret_client().set_secret(f"{stem}-webhook-url", receiver.url)
    evidence_url = urls["audit_bucket"].replace("/audit?", "/evidence?")
    queue_name = f"{stem}-approvals"

    def settings(gw):
        issuer = gw.gateway.dev_issuer.issuer_url
        for name, value in {
            "WARDGATE_APPROVALS_QUEUE_NAME": queue_name, "WARDGATE_APPROVALS_QUEUE": urls["queue"],
            "WARDGATE_DECISION_STORE": urls["decision_store"], "WARDGATE_APPROVAL_CHANNEL": "slack",
            "WARDGATE_APPROVER_GROUPS": "dba", "WARDGATE_SIGNING_SECRET": f"azure-kv://{VAULT}/{stem}-signing",
            "WARDGATE_WEBHOOK_URL_SECRET": f"azure-kv://{VAULT}/{stem}-webhook-url",
            "WEBSITE_HOSTNAME": "wardgate-fn.azurewebsites.net",
            "WARDGATE_APPROVER_IDENTITIES": json.dumps({"slack:U0DANA": {"issuer": issuer, "subject": "dana",
                                                                         "groups": ["dba"]}}),
            "WARDGATE_AUDIT_STORE": urls["audit_bucket"], "WARDGATE_EVIDENCE_STORE": evidence_url,
            "WARDGATE_SIGNER": urls["signer"],
        }.items():
            monkeypatch.setenv(name, value)

    def notify():
        queue = cloud.queue_client(queue_name)
        raw = wait_for(lambda: list(queue.receive_messages(max_messages=1, visibility_timeout=30)),
                       "the approval message", timeout=20)[0]
        azure_function(azure_app.app, "approval_notifier")(azure_queue_message(raw))
        queue.delete_message(raw.id, raw.pop_receipt)  # the host deletes a message its function handled

    def decide(gw, request):
        body, headers = slack_signed(SECRET.encode(), "U0DANA", f"approve:{request}")
        answer = azure_function(azure_app.app, "approval_webhook")(
            azure_http_request("POST", "/approvals/slack", body=body, headers=headers))
        assert answer.status_code == 200, answer.get_body()
        return json.loads(answer.get_body())

    def export(day):
        # The timer exports the day before "now": the timer fires "tomorrow" to export today's trail.
        from azure.functions.timer import TimerRequest

        tomorrow = datetime.now(timezone.utc) + timedelta(days=1)
        monkeypatch.setattr(azure_app, "datetime", type("Later", (), {"now": staticmethod(lambda tz=None: tomorrow)}))
        azure_function(azure_app.app, "evidence_export")(TimerRequest(past_due=False))
        assert evidence.period_for(None, tomorrow).label == day
        return day

    side = CloudSide(urls, evidence_url, notify=notify, decide=decide, export=export, on_gateway=settings)
    result = run_flow(postgres, receiver, side, capsys)
    assert result["answer"]["outcome"]["verdict"] == "approved"
    assert "dana" in result["answer"]["text"]
