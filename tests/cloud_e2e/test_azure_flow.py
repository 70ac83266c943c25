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
from datetime import datetime, timedelta, timezone

import pytest

from cloud_flow import CloudSide, run_flow
from functions_helpers import (azure_function, azure_function_settings, azure_http_request, azure_queue_message,
                               set_env)
from wardgate_testkit import slack_signed

from wardgate.devtools.harness import wait_for
from wardgate.devtools.localcloud.azure import VAULT

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("azure_env")]

SECRET = "e2e-azure-slack-signing-secret"


def test_the_azure_path_whole(azure_cloud, receiver, postgres, monkeypatch, capsys):
    from functions import azure_app
    from functions.evidence_export import handler as evidence

    stem = "e2e" + uuid.uuid4().hex[:8]
    urls = azure_cloud.provision(stem)
    azure_cloud.secret_client().set_secret(f"{stem}-signing", SECRET)
    azure_cloud.secret_client().set_secret(f"{stem}-webhook-url", receiver.url)
    evidence_url = urls["audit_bucket"].replace("/audit?", "/evidence?")
    queue_name = f"{stem}-approvals"

    def settings(gw):
        set_env(monkeypatch, azure_function_settings(urls, stem, VAULT, gw.gateway.dev_issuer.issuer_url))

    def notify():
        queue = azure_cloud.queue_client(queue_name)
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
