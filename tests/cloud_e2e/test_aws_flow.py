"""The AWS path, whole, on moto_server: gateway → SQS → notifier Lambda (SQS event) → chat webhook →
webhook Lambda (Function URL event, signed generic decision) → DynamoDB → the gateway runs the held
statement → sealed audit in the S3 Object Lock bucket → evidence-export Lambda (EventBridge event) →
``wardgate audit verify s3://…`` passes. Lambda *invoke* needs Docker: the handlers are called
directly with the events Lambda builds from what the emulator returns.

Failures: the approvals queue missing when a statement is held (the request stays in DynamoDB, the
failure is logged, ``reannounce_pending()`` sends it once the queue exists); a bucket the gateway
cannot write (the archive reports it).
"""

from __future__ import annotations

import json
import logging
import uuid

import psycopg
import pytest

from cloud_flow import PROD, CloudSide, HeldClient, make_table, run_flow, start_gateway
from functions_helpers import aws_function_settings, function_url_event, scheduled_event, set_env, sqs_event
from wardgate_testkit import LambdaContext, generic_signed

from wardgate.devtools.harness import wait_for
from wardgate.devtools.localcloud.aws import AwsLocalCloud

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("aws_env")]

SECRET = "e2e-aws-signing-secret-0123456789"


@pytest.fixture
def urls(aws_cloud, receiver) -> dict[str, str]:
    prefix = f"e2e{uuid.uuid4().hex[:8]}"
    provisioned = aws_cloud.provision(prefix)
    secrets = aws_cloud.client("secretsmanager")
    secrets.create_secret(Name=f"{prefix}/signing", SecretString=SECRET)
    secrets.create_secret(Name=f"{prefix}/webhook-url", SecretString=receiver.url)
    return {**provisioned, "prefix": prefix}


def receive(aws_cloud: AwsLocalCloud, queue_name: str) -> tuple[str, str, list[dict]]:
    sqs = aws_cloud.client("sqs")
    queue_url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    messages = wait_for(lambda: sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageSystemAttributeNames=["All"],
        MessageAttributeNames=["All"]).get("Messages"), f"a message on {queue_name}", timeout=20)
    return queue_url, arn, messages


def test_the_aws_path_whole(aws_cloud, urls, receiver, postgres, monkeypatch, capsys):
    from functions.approval import aws as approval
    from functions.evidence_export import aws as evidence

    def notify():
        queue_url, arn, messages = receive(aws_cloud, f"{urls['prefix']}-approvals")
        answer = approval.notifier(sqs_event(messages, arn), LambdaContext())
        assert answer == {"batchItemFailures": []}
        for message in messages:  # the event source mapping deletes what the function handled
            aws_cloud.client("sqs").delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        return answer

    def decide(gw, request):
        body, headers = generic_signed(SECRET.encode(), {"request_id": request, "verdict": "approve",
                                                         "approver": "dana", "reason": "planned change"})
        answer = approval.webhook(function_url_event("POST", "/approvals/generic", body=body, headers=headers,
                                                     base64_body=True), LambdaContext())
        assert answer["statusCode"] == 200, answer
        return json.loads(answer["body"])

    def export(day):
        return evidence.handler(scheduled_event(f"{day}T01:00:00Z", {"period": day}), LambdaContext())

    evidence_url = urls["audit_bucket"].replace("/audit?", "/evidence?")
    side = CloudSide(urls, evidence_url, notify=notify, decide=decide, export=export,
                     on_gateway=lambda gw: set_env(monkeypatch, aws_function_settings(
                         urls, urls["prefix"], gw.gateway.dev_issuer.issuer_url)))
    result = run_flow(postgres, receiver, side, capsys)

    posted = result["posted"]
    assert posted.json()["request"]["statement"].startswith("INSERT INTO e2e_")
    assert posted.headers["X-Wardgate-Signature"].startswith("sha256=")
    assert result["answer"]["outcome"]["verdict"] == "approved"
    assert result["exported"]["status"] == "written"
    decided = [e for e in result["events"] if e["type"] == "approval.decided"]
    assert decided and "dana" in json.dumps(decided[0]["by"])
    bucket = f"{urls['prefix']}-audit"
    keys = [o["Key"] for o in aws_cloud.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.startswith("audit/") and k.endswith(".digest.json") for k in keys)
    assert any(k.startswith("evidence/") and k.endswith("/manifest.json") for k in keys)


def test_a_request_held_while_the_queue_is_missing_is_not_lost(aws_cloud, urls, postgres, caplog, monkeypatch):
    late = f"{urls['prefix']}-late"
    gw = start_gateway(postgres, urls, queue=f"sqs://{late}?region=us-east-1")
    try:
        table = make_table(postgres)
        with caplog.at_level(logging.ERROR):
            held = HeldClient(gw, f"INSERT INTO {table} VALUES (2)")
            request = held.request_id()
        assert any("stored but not announced" in r.getMessage() and request in r.getMessage() for r in caplog.records)
        assert gw.gateway.approvals.store.get(f"approval/{request}/request") is not None  # not lost

        # The queue comes (back): what the operator or the next start does.
        sqs = aws_cloud.client("sqs")
        dlq = sqs.create_queue(QueueName=f"{late}-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sqs.create_queue(QueueName=late, Attributes={"RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"})})
        assert gw.gateway.approvals.reannounce_pending() == 1
        _, _, messages = receive(aws_cloud, late)
        assert [json.loads(m["Body"])["id"] for m in messages] == [request]
        gw.gateway.approvals.withdraw(request, "test over")
        assert "withdrawn" in str(held.result())
    finally:
        gw.stop()


def test_an_archive_bucket_that_cannot_be_written_is_reported(aws_cloud, urls, postgres):
    missing = f"s3://{urls['prefix']}-no-such-bucket/audit?region=us-east-1"
    gw = start_gateway(postgres, urls, archive=missing)
    try:
        token = gw.token("agent-7", groups=("ai-agents",))
        with psycopg.connect(gw.dsn(token, PROD), autocommit=True) as conn:  # its events are sealed within 1 s
            assert conn.execute("SELECT 1").fetchone() == (1,)
        error = wait_for(lambda: gw.gateway.archive.last_error, "the archive to report the bucket", timeout=20)
        assert f"{urls['prefix']}-no-such-bucket" in error
    finally:
        gw.stop()
