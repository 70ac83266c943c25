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
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from functions_helpers import azure_function, azure_http_request, azure_queue_message, ship_small_trail, slack_signed

from wardgate import adapters
from wardgate.approvals.records import command_hash, outcome_key
from wardgate.approvals.service import ApprovalService
from wardgate.core.model import Principal
from wardgate.devtools.localcloud.azure import VAULT, AzureLocalCloud

pytestmark = pytest.mark.timeout(180)

ISSUER = "https://idp.example.test"
SECRET = "azure-slack-signing-secret-0123456789"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory) -> Iterator[AzureLocalCloud]:
    local = AzureLocalCloud(tmp_path_factory.mktemp("azure"))
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def deployed(cloud, monkeypatch, receiver) -> dict[str, str]:
    for name, value in cloud.env().items():
        monkeypatch.setenv(name, value)
    stem = "fn" + uuid.uuid4().hex[:8]
    urls = cloud.provision(stem)
    cloud.secret_client().set_secret(f"{stem}-signing", SECRET)
    cloud.secret_client().set_secret(f"{stem}-webhook-url", receiver.url)
    settings = {
        "WARDGATE_APPROVALS_QUEUE_NAME": f"{stem}-approvals", "WARDGATE_APPROVALS_QUEUE": urls["queue"],
        "WARDGATE_DECISION_STORE": urls["decision_store"], "WARDGATE_APPROVAL_CHANNEL": "slack",
        "WARDGATE_APPROVER_GROUPS": "dba", "WARDGATE_SIGNING_SECRET": f"azure-kv://{VAULT}/{stem}-signing",
        "WARDGATE_WEBHOOK_URL_SECRET": f"azure-kv://{VAULT}/{stem}-webhook-url",
        "WEBSITE_HOSTNAME": "wardgate-fn.azurewebsites.net",
        "WARDGATE_APPROVER_IDENTITIES": json.dumps({"slack:U0DANA": {"issuer": ISSUER, "subject": "dana",
                                                                     "groups": ["dba"]}}),
        "WARDGATE_AUDIT_STORE": urls["audit_bucket"],
        "WARDGATE_EVIDENCE_STORE": urls["audit_bucket"].replace("/audit?", "/evidence?"),
        "WARDGATE_SIGNER": urls["signer"],
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return {**urls, "stem": stem}


def hold(urls: dict[str, str]):
    service = ApprovalService(adapters.open_decision_store(urls["decision_store"]),
                              adapters.open_queue(urls["queue"]), roles_of=lambda p: set(p.groups))
    statement = "TRUNCATE orders"
    return service.request_statement(
        Principal(ISSUER, "agent-7", ("ai-agents",)), session_id="s-1", resource="orders-prod",
        statement=statement, parameters=[], command_hash=command_hash(statement, []), rule="review-prod-changes",
        controls=["AC-3"], approvers=["dba"], quorum=1, scope="statement", scope_seconds=None, timeout_seconds=600)


def receive_raw(cloud: AzureLocalCloud, queue_name: str):
    [raw] = list(cloud.queue_client(queue_name).receive_messages(max_messages=1, visibility_timeout=30))
    return raw


def test_the_queue_trigger_posts_a_request_and_a_poison_message_ends_in_the_poison_queue(cloud, deployed, receiver):
    from functions import azure_app

    notifier = azure_function(azure_app.app, "approval_notifier")
    request = hold(deployed)
    queue_name = f"{deployed['stem']}-approvals"
    raw = receive_raw(cloud, queue_name)
    notifier(azure_queue_message(raw))  # returns: the host deletes the message
    cloud.queue_client(queue_name).delete_message(raw.id, raw.pop_receipt)
    [posted] = receiver.received
    assert posted.json()["blocks"][-1]["elements"][0]["value"] == f"approve:{request.id}"

    cloud.queue_client(queue_name).send_message("bm90IGFuIGFwcHJvdmFsIHJlcXVlc3Q=")  # base64 of junk
    for delivery in range(1, 6):
        raw = receive_raw(cloud, queue_name)
        assert raw.dequeue_count == delivery
        with pytest.raises(Exception, match="not an approval request"):
            notifier(azure_queue_message(raw))  # raises: the host retries it
        cloud.queue_client(queue_name).update_message(raw.id, raw.pop_receipt, visibility_timeout=0)
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
