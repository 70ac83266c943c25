"""Helpers for the function tests: platform events built from what the emulators return (a uniquely
named module: several test directories have a ``conftest``; the receiver, signed decisions and
Lambda's context are in ``wardgate_testkit``).

Lambda *invoke*, Cloud Functions and the Azure Functions host need Docker or the cloud, so the tests
call the entry points directly, with the event each platform would build from the emulator's message.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlencode

from wardgate_testkit import REPO_ROOT  # noqa: F401  (also puts the repository root on sys.path)


# --- AWS Lambda ---------------------------------------------------------------------------------------

def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str = "us-east-1") -> dict[str, Any]:
    """The Lambda SQS event the event source mapping builds from messages SQS returned
    (``receive_message(..., MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"])``)."""
    records = []
    for message in messages:
        attributes = {name: {"stringValue": value["StringValue"], "stringListValues": [], "binaryListValues": [],
                             "dataType": value["DataType"]}
                      for name, value in (message.get("MessageAttributes") or {}).items()}
        records.append({
            "messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"], "body": message["Body"],
            "attributes": dict(message.get("Attributes") or {}), "messageAttributes": attributes,
            "md5OfBody": message["MD5OfBody"], "eventSource": "aws:sqs", "eventSourceARN": queue_arn,
            "awsRegion": region,
        })
    return {"Records": records}


def function_url_event(method: str, path: str, *, body: bytes = b"", headers: Mapping[str, str] | None = None,
                       query: Mapping[str, str] | None = None, base64_body: bool = False) -> dict[str, Any]:
    """A Lambda Function URL event (payload format 2.0): lower-cased headers, raw path and query."""
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    now = time.time()
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": urlencode(query or {}),
        "headers": {"host": "abc123.lambda-url.us-east-1.on.aws", **lowered},
        **({"queryStringParameters": dict(query)} if query else {}),
        "requestContext": {
            "accountId": "123456789012", "apiId": "abc123", "domainName": "abc123.lambda-url.us-east-1.on.aws",
            "domainPrefix": "abc123", "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                                               "sourceIp": "198.51.100.7", "userAgent": "test"},
            "requestId": str(uuid.uuid4()), "routeKey": "$default", "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)), "timeEpoch": int(now * 1000),
        },
        "body": base64.b64encode(body).decode() if base64_body else body.decode(),
        "isBase64Encoded": base64_body,
    }


def scheduled_event(when: str, detail: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An EventBridge scheduled event (what a ``cron(...)`` rule delivers)."""
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "123456789012", "time": when, "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/wardgate-evidence-export"],
            "detail": dict(detail or {})}


# --- GCP --------------------------------------------------------------------------------------------

def pubsub_push_body(received: Any, subscription: str) -> dict[str, Any]:
    """The JSON a Pub/Sub push subscription POSTs for a message pulled from the emulator
    (``google.pubsub_v1.ReceivedMessage``)."""
    message = received.message
    return {"message": {"data": base64.b64encode(bytes(message.data)).decode(),
                        "attributes": dict(message.attributes), "messageId": message.message_id,
                        "publishTime": message.publish_time.isoformat().replace("+00:00", "Z")},
            "subscription": subscription, "deliveryAttempt": max(received.delivery_attempt, 1)}


# --- Azure --------------------------------------------------------------------------------------------

def azure_queue_message(raw: Any) -> Any:
    """The ``azure.functions.QueueMessage`` the Functions host hands a queue trigger for a message
    received from Azurite (the host base64-decodes the content)."""
    from azure.functions.queue import QueueMessage  # the host's concrete class (with dequeue_count)

    return QueueMessage(id=raw.id, body=base64.b64decode(raw.content), dequeue_count=raw.dequeue_count,
                             pop_receipt=raw.pop_receipt, insertion_time=raw.inserted_on,
                             expiration_time=raw.expires_on, time_next_visible=raw.next_visible_on)


def azure_http_request(method: str, path: str, *, body: bytes = b"", headers: Mapping[str, str] | None = None,
                       query: Mapping[str, str] | None = None) -> Any:
    """The ``azure.functions.HttpRequest`` for ``/api/<path>`` on the ``{*path}`` route."""
    import azure.functions as func

    return func.HttpRequest(method, f"https://wardgate-fn.azurewebsites.net/api{path}", headers=dict(headers or {}),
                            params=dict(query or {}), route_params={"path": path.lstrip("/")}, body=body)


_indexed_apps: dict[int, list[Any]] = {}


def azure_function(app: Any, name: str) -> Any:
    """A registered function's Python callable, after checking its trigger binding names one of its
    parameters (the host passes the trigger by that name)."""
    import inspect

    # The host indexes an app once; get_functions() refuses a second call (it sees "duplicates").
    if id(app) not in _indexed_apps:
        _indexed_apps[id(app)] = app.get_functions()
    for function in _indexed_apps[id(app)]:
        if function.get_function_name() == name:
            user = function.get_user_function()
            trigger = function.get_bindings()[0]
            assert trigger.name in inspect.signature(user).parameters, (name, trigger.name)
            return user
    raise AssertionError(f"{name} is not registered on the Azure app")


# --- a trail in an archive ------------------------------------------------------------------------------

def ship_small_trail(audit_url: str, signer_url: str, workdir: Path) -> None:
    """One complete session written by the core's spool, sealed with ``signer_url``'s key, and shipped
    to ``audit_url`` by the core's archive (what a gateway does, without the protocol around it)."""
    from wardgate import adapters
    from wardgate.core.archive import AuditArchive
    from wardgate.core.audit import Recorder, SessionLog, open_sink

    spool = open_sink(f"file://{workdir / 'spool'}", workdir, "gwfn", signer=adapters.open_signer(signer_url))
    recorder = Recorder(spool)
    session = SessionLog(recorder, f"s{uuid.uuid4().hex[:12]}", {"gateway": "gwfn", "protocol": "postgres",
                                                                  "resource": "orders-prod"})
    session.emit("session.started", {"peer": "127.0.0.1", "tls": True, "client": {"user": "agent"}})
    session.emit("session.ended", {"reason": "client closed", "commands": 0, "denied": 0, "duration_s": 0.1})
    recorder.commit()
    spool.close()  # seals the segment: digest signed with the key, public key exported into keys/
    report = AuditArchive(spool.directory, adapters.open_object_store(audit_url)).ship_once()
    assert report.error is None and any(name.endswith(".digest.json") for name in report.shipped), report


# --- the approval functions' settings, as each cloud's Pulumi program sets them ------------------------

ISSUER = "https://idp.example.test"


def _dana_the_dba(channel_user: str, issuer: str) -> str:
    return json.dumps({channel_user: {"issuer": issuer, "subject": "dana", "groups": ["dba"]}})


def aws_function_settings(urls: Mapping[str, str], prefix: str, issuer: str = ISSUER) -> dict[str, str]:
    """The Lambda environment (generic channel; signing secret and webhook URL in Secrets Manager under
    ``<prefix>/signing`` and ``<prefix>/webhook-url``); the approver ``generic:dana`` is a dba."""
    return {
        "WARDGATE_APPROVALS_QUEUE": urls["queue"], "WARDGATE_DECISION_STORE": urls["decision_store"],
        "WARDGATE_APPROVAL_CHANNEL": "generic", "WARDGATE_APPROVER_GROUPS": "dba",
        "WARDGATE_SIGNING_SECRET": f"aws-sm://{prefix}/signing?region=us-east-1",
        "WARDGATE_WEBHOOK_URL_SECRET": f"aws-sm://{prefix}/webhook-url?region=us-east-1",
        "WARDGATE_WEBHOOK_ENDPOINT": "https://abc123.lambda-url.us-east-1.on.aws",
        "WARDGATE_APPROVER_IDENTITIES": _dana_the_dba("generic:dana", issuer),
        "WARDGATE_AUDIT_STORE": urls["audit_bucket"],
        "WARDGATE_EVIDENCE_STORE": urls["audit_bucket"].replace("/audit?", "/evidence?"),
        "WARDGATE_SIGNER": urls["signer"],
    }


def azure_function_settings(urls: Mapping[str, str], stem: str, vault: str, issuer: str = ISSUER) -> dict[str, str]:
    """The Function App's settings (Slack channel; signing secret and webhook URL in ``vault`` as
    ``<stem>-signing`` and ``<stem>-webhook-url``); the approver ``slack:U0DANA`` is a dba."""
    return {
        "WARDGATE_APPROVALS_QUEUE_NAME": f"{stem}-approvals", "WARDGATE_APPROVALS_QUEUE": urls["queue"],
        "WARDGATE_DECISION_STORE": urls["decision_store"], "WARDGATE_APPROVAL_CHANNEL": "slack",
        "WARDGATE_APPROVER_GROUPS": "dba", "WARDGATE_SIGNING_SECRET": f"azure-kv://{vault}/{stem}-signing",
        "WARDGATE_WEBHOOK_URL_SECRET": f"azure-kv://{vault}/{stem}-webhook-url",
        "WEBSITE_HOSTNAME": "wardgate-fn.azurewebsites.net",
        "WARDGATE_APPROVER_IDENTITIES": _dana_the_dba("slack:U0DANA", issuer),
        "WARDGATE_AUDIT_STORE": urls["audit_bucket"],
        "WARDGATE_EVIDENCE_STORE": urls["audit_bucket"].replace("/audit?", "/evidence?"),
        "WARDGATE_SIGNER": urls["signer"],
    }


def set_env(monkeypatch: Any, settings: Mapping[str, str]) -> None:
    for name, value in settings.items():
        monkeypatch.setenv(name, value)


# --- a held request, as a gateway puts it on the cloud's queue ----------------------------------------


def hold_statement(urls: Mapping[str, str], statement: str) -> Any:
    """An agent's ``statement`` held for a dba through the cloud's decision store and queue (what the
    gateway does when its policy holds a write); returns the approval request."""
    from wardgate import adapters
    from wardgate.approvals.records import command_hash
    from wardgate.approvals.service import ApprovalService
    from wardgate.core.model import Principal

    service = ApprovalService(adapters.open_decision_store(urls["decision_store"]),
                              adapters.open_queue(urls["queue"]), roles_of=lambda p: set(p.groups))
    return service.request_statement(
        Principal(ISSUER, "agent-7", ("ai-agents",)), session_id="s-1", resource="orders-prod",
        statement=statement, parameters=[], command_hash=command_hash(statement, []), rule="review-prod-changes",
        controls=["AC-3"], approvers=["dba"], quorum=1, scope="statement", scope_seconds=None, timeout_seconds=600)
