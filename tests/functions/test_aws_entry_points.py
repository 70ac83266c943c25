"""The AWS Lambda entry points against moto_server (SQS + DLQ, DynamoDB, S3 Object Lock, KMS, Secrets
Manager), called directly with the events Lambda would build: Lambda *invoke* needs Docker, so the SQS
event is built from messages received from the emulator, the webhook gets a Function URL event
(payload 2.0) and the export an EventBridge scheduled event; the context is a LambdaContext-like object.

GIVEN a batch of two messages, one a real approval request and one poison, WHEN the notifier runs,
THEN only the poison one is in ``batchItemFailures`` (the other is posted); redelivered as SQS does,
it ends in the dead-letter queue. The webhook records a signed decision in DynamoDB and answers a
bad call with the handler's error; the export writes a signed package into the Object Lock bucket.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest

from functions_helpers import (aws_function_settings, function_url_event, hold_statement, scheduled_event, set_env,
                              ship_small_trail, sqs_event)
from wardgate_testkit import LambdaContext, generic_signed

from wardgate import adapters
from wardgate.approvals.records import outcome_key
from wardgate.devtools.localcloud.aws import AwsLocalCloud

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("aws_env")]

SECRET = "aws-signing-secret-0123456789abcdef"


@pytest.fixture
def deployed(aws_cloud, monkeypatch, receiver) -> dict[str, str]:
    """Fresh resources and the function settings the AWS program would set."""
    prefix = f"fn{uuid.uuid4().hex[:8]}"
    urls = aws_cloud.provision(prefix)
    secrets = aws_cloud.client("secretsmanager")
    secrets.create_secret(Name=f"{prefix}/signing", SecretString=SECRET)
    secrets.create_secret(Name=f"{prefix}/webhook-url", SecretString=receiver.url)
    set_env(monkeypatch, aws_function_settings(urls, prefix))
    return {**urls, "prefix": prefix}


def hold(urls: dict[str, str]):
    return hold_statement(urls, "DELETE FROM orders WHERE id = 7")


def receive_raw(aws_cloud: AwsLocalCloud, queue_name: str, count: int) -> tuple[str, list[dict]]:
    sqs = aws_cloud.client("sqs")
    queue_url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    messages: list[dict] = []
    for _ in range(10):
        messages += sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                        MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"]
                                        ).get("Messages", [])
        if len(messages) >= count:
            break
    return queue_url, messages


def test_a_poison_record_is_a_batch_item_failure_and_ends_in_the_dead_letter_queue(aws_cloud, deployed, receiver):
    from functions.approval import aws

    request = hold(deployed)
    sqs = aws_cloud.client("sqs")
    name = f"{deployed['prefix']}-approvals"
    queue_url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sqs.send_message(QueueUrl=queue_url, MessageBody="this is not an approval request")
    _, messages = receive_raw(aws_cloud, name, 2)
    assert len(messages) == 2
    poison_id = next(m["MessageId"] for m in messages if m["Body"].startswith("this is not"))

    answer = aws.notifier(sqs_event(messages, arn), LambdaContext())
    assert answer == {"batchItemFailures": [{"itemIdentifier": poison_id}]}
    [posted] = receiver.received
    assert posted.json()["request"]["id"] == request.id

    # What the event source mapping does: delete the handled record, leave the failed one, which SQS
    # delivers again until maxReceiveCount (3), then moves to the dead-letter queue.
    for message in messages:
        if message["MessageId"] != poison_id:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        else:
            sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"],
                                          VisibilityTimeout=0)
    for delivery in (2, 3):
        _, [again] = receive_raw(aws_cloud, name, 1)
        assert again["Attributes"]["ApproximateReceiveCount"] == str(delivery)
        assert aws.notifier(sqs_event([again], arn), LambdaContext())["batchItemFailures"] == [
            {"itemIdentifier": poison_id}]
        sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=again["ReceiptHandle"], VisibilityTimeout=0)
    assert sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1).get("Messages", []) == []
    dead = adapters.open_queue(deployed["queue"]).dead_letters()
    assert [m.id for m in dead] == [poison_id]
    assert len(receiver.received) == 1  # the good request was posted once


def test_the_function_url_webhook_records_a_signed_decision_in_dynamodb(deployed):
    from functions.approval import aws

    request = hold(deployed)
    body, headers = generic_signed(SECRET.encode(), {"request_id": request.id, "verdict": "deny",
                                                     "approver": "dana", "reason": "not now"})
    event = function_url_event("POST", "/approvals/generic", body=body, headers=headers, base64_body=True)
    answer = aws.webhook(event, LambdaContext())
    assert answer["statusCode"] == 200, answer
    assert json.loads(answer["body"])["outcome"]["verdict"] == "denied"
    store = adapters.open_decision_store(deployed["decision_store"])
    assert store.get(outcome_key(request.id))["by"][0]["subject"] == "dana"

    replay = aws.webhook(function_url_event("POST", "/approvals/generic", body=body, headers=headers), LambdaContext())
    assert replay["statusCode"] == 409 and "already" in json.loads(replay["body"])["error"]
    missing = aws.webhook(function_url_event("GET", "/nowhere"), LambdaContext())
    assert missing["statusCode"] == 404


def test_the_scheduled_export_writes_a_signed_package_into_the_object_lock_bucket(aws_cloud, deployed, tmp_path):
    """A small trail sealed by the real spool with the KMS key and shipped by the real archive."""
    from functions.evidence_export import aws

    ship_small_trail(deployed["audit_bucket"], deployed["signer"], tmp_path)
    day = datetime.now(timezone.utc).date().isoformat()
    result = aws.handler(scheduled_event(f"{day}T03:00:00Z", {"period": day}), LambdaContext())
    assert result["status"] == "written" and result["period"] == day
    bucket = f"{deployed['prefix']}-audit"
    s3 = aws_cloud.client("s3")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="evidence/")["Contents"])
    assert keys == [f"evidence/{day}/{n}" for n in ("evidence.json", "manifest.json",
                                                     "oscal-assessment-results.json", "report.html")]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"evidence/{day}/manifest.json")["Body"].read())
    assert manifest["algorithm"] == "ECDSA_P256_SHA256" and manifest["signature"]
    assert aws.handler(scheduled_event(f"{day}T03:00:00Z", {"period": day}), LambdaContext())["status"] == "unchanged"
