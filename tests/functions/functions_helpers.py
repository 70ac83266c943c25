"""Helpers for the function tests: a webhook receiver, and platform events built from what the
emulators return (a uniquely named module: several test directories have a ``conftest``).

Lambda *invoke*, Cloud Functions and the Azure Functions host need Docker or the cloud, so the tests
call the entry points directly, with the event each platform would build from the emulator's message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlencode

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `functions` lives at the repository root
    sys.path.insert(0, str(REPO_ROOT))

from wardgate.approvals.notify import sign_body  # noqa: E402


# --- the chat platform's side -----------------------------------------------------------------------

@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers each POST with the next scripted status (then 200) and keeps what it got."""

    url: str
    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)


@contextmanager
def start_receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            state.received.append(Received(self.path, dict(self.headers), body))
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def generic_signed(secret: bytes, payload: Mapping[str, Any], now: float | None = None) -> tuple[bytes, dict[str, str]]:
    """A generic-webhook decision as an approver's tool sends it (HMAC over "<timestamp>.<body>")."""
    body = json.dumps(payload).encode()
    timestamp = str(int(now if now is not None else time.time()))
    return body, {"Content-Type": "application/json", "X-Wardgate-Timestamp": timestamp,
                  "X-Wardgate-Signature": sign_body(secret, timestamp, body)}


def slack_signed(secret: bytes, user: str, value: str) -> tuple[bytes, dict[str, str]]:
    """A Slack block_actions interaction (form-encoded ``payload``), signed as Slack signs it."""
    payload = {"type": "block_actions", "user": {"id": user, "username": user},
               "actions": [{"action_id": "wardgate_approve", "value": value}]}
    body = urlencode({"payload": json.dumps(payload)}).encode()
    timestamp = str(int(time.time()))
    signature = "v0=" + hmac.new(secret, b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": timestamp,
                  "X-Slack-Signature": signature}


# --- AWS Lambda ---------------------------------------------------------------------------------------

@dataclass
class LambdaContext:
    """The attributes of Lambda's context object that powertools reads."""

    function_name: str = "wardgate-test"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:wardgate-test"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


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
