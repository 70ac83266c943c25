"""The Azure Functions app (``functions/azure_app.py``) against Azurite (queue, table, blob) and the
fake Key Vault (real SDK clients). The Functions host needs the Azure Functions Core Tools, so the
registered functions are called directly with what the host would hand them: an
``azure.functions.QueueMessage`` built from a message received from Azurite, an ``HttpRequest`` on
the ``{*path}`` route, a ``TimerRequest``.

GIVEN a held request on the Storage Queue, WHEN the queue trigger gets it, THEN it is posted; a poison
message raises on every delivery and, past ``max_receives``, sits in ``<queue>-poison``. The HTTP
trigger records a Slack decision in Table storage; the timer exports yesterday's package into Blob.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from functions_helpers import (azure_function, azure_function_settings, azure_http_request, azure_queue_message,
                               hold_statement, set_env, ship_small_trail)
from wardgate_testkit import slack_signed

from wardgate import adapters
from wardgate.approvals.records import outcome_key
from wardgate.devtools.localcloud.azure import VAULT, AzureLocalCloud

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("azure_env")]

SECRET = "azure-slack-signing-secret-0123456789"


@pytest.fixture
def deployed(azure_cloud, monkeypatch, receiver) -> dict[str, str]:
    stem = "fn" + uuid.uuid4().hex[:8]
    urls = azure_cloud.provision(stem)
    azure_cloud.secret_client().set_secret(f"{stem}-signing", SECRET)
    azure_cloud.secret_client().set_secret(f"{stem}-webhook-url", receiver.url)
    set_env(monkeypatch, azure_function_settings(urls, stem, VAULT))
    return {**urls, "stem": stem}


def hold(urls: dict[str, str]):
    return hold_statement(urls, "TRUNCATE orders")


def receive_raw(azure_cloud: AzureLocalCloud, queue_name: str):
    [raw] = list(azure_cloud.queue_client(queue_name).receive_messages(max_messages=1, visibility_timeout=30))
    return raw


def test_the_queue_trigger_posts_a_request_and_a_poison_message_ends_in_the_poison_queue(
        azure_cloud, deployed, receiver):
    from functions import azure_app

    notifier = azure_function(azure_app.app, "approval_notifier")
    request = hold(deployed)
    queue_name = f"{deployed['stem']}-approvals"
    raw = receive_raw(azure_cloud, queue_name)
    notifier(azure_queue_message(raw))  # returns: the host deletes the message
    azure_cloud.queue_client(queue_name).delete_message(raw.id, raw.pop_receipt)
    [posted] = receiver.received
    assert posted.json()["blocks"][-1]["elements"][0]["value"] == f"approve:{request.id}"

    azure_cloud.queue_client(queue_name).send_message("bm90IGFuIGFwcHJvdmFsIHJlcXVlc3Q=")  # base64 of junk
    for delivery in range(1, 6):
        raw = receive_raw(azure_cloud, queue_name)
        assert raw.dequeue_count == delivery
        with pytest.raises(Exception, match="not an approval request"):
            notifier(azure_queue_message(raw))  # raises: the host retries it
        azure_cloud.queue_client(queue_name).update_message(raw.id, raw.pop_receipt, visibility_timeout=0)
    queue = adapters.open_queue(deployed["queue"])
    assert queue.receive() == []  # past max_receives (5): moved to -poison, the host's convention
    assert [m.body for m in queue.dead_letters()] == [b"not an approval request"]
    assert len(receiver.received) == 1


def test_the_http_trigger_records_a_slack_decision_in_table_storage(deployed):
    from functions import azure_app

    webhook = azure_function(azure_app.app, "approval_webhook")
    request = hold(deployed)
    body, headers = slack_signed(SECRET.encode(), "U0DANA", f"approve:{request.id}")
    answer = webhook(azure_http_request("POST", "/approvals/slack", body=body, headers=headers))
    assert answer.status_code == 200, answer.get_body()
    assert json.loads(answer.get_body())["outcome"]["verdict"] == "approved"
    assert adapters.open_decision_store(deployed["decision_store"]).get(outcome_key(request.id))["verdict"] == "approved"
    stranger, headers = slack_signed(SECRET.encode(), "U0NOBODY", f"deny:{request.id}")
    refused = webhook(azure_http_request("POST", "/approvals/slack", body=stranger, headers=headers))
    assert refused.status_code == 403 and "not mapped" in json.loads(refused.get_body())["error"]


def test_the_timer_exports_the_previous_day_into_blob_storage(deployed, tmp_path, monkeypatch):
    from azure.functions.timer import TimerRequest  # the host's concrete class

    from functions import azure_app
    from functions.evidence_export import handler

    ship_small_trail(deployed["audit_bucket"], deployed["signer"], tmp_path)
    # The timer exports yesterday; the trail was written today: move "now" one day on for the export.
    tomorrow = datetime.now(timezone.utc) + timedelta(days=1)
    monkeypatch.setattr(azure_app, "datetime", type("Later", (), {"now": staticmethod(lambda tz=None: tomorrow)}))
    azure_function(azure_app.app, "evidence_export")(TimerRequest(past_due=True))
    day = datetime.now(timezone.utc).date().isoformat()
    store = adapters.open_object_store(deployed["audit_bucket"].replace("/audit?", "/evidence?"))
    assert store.list(f"{day}/") == [f"{day}/{n}" for n in ("evidence.json", "manifest.json",
                                                             "oscal-assessment-results.json", "report.html")]
    assert json.loads(store.get(f"{day}/evidence.json"))["verification"]["ok"] is True
    assert handler.period_for(None, tomorrow).label == day
