"""SqsQueue against moto_server's SQS: the real boto3 client, a real redrive policy."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from wardgate.adapters import open_queue
from wardgate.adapters.aws import SqsQueue
from wardgate.core.ports import MessageQueue, StoreUnavailable


def _with(url: str, **params: object) -> str:
    return url + "".join(f"&{name}={value}" for name, value in params.items())


def test_send_receive_ack_round_trip(aws_urls):
    queue = open_queue(aws_urls["queue"])
    assert isinstance(queue, SqsQueue) and isinstance(queue, MessageQueue)
    body = json.dumps({"request": "approvals/r1/request"}).encode()
    message_id = queue.send(body, {"kind": "approval.requested"})

    [message] = queue.receive(wait_seconds=2)
    assert (message.id, message.body, message.receive_count) == (message_id, body, 1)
    assert message.attributes == {"kind": "approval.requested"}

    queue.ack(message)
    assert queue.receive(wait_seconds=1) == []


def test_bytes_that_sqs_cannot_carry_as_text_arrive_unchanged(aws_urls):
    queue = SqsQueue(aws_urls["queue"])
    payloads = [b"\x00\x01binary\xff", "snowman \u2603".encode(), b"ctl \x07 char"]
    for body in payloads:
        queue.send(body)
    received = []
    while len(received) < len(payloads):
        batch = queue.receive(wait_seconds=2)
        assert batch, "a message was lost"
        received += batch
    assert sorted(m.body for m in received) == sorted(payloads)
    assert all(m.attributes == {} for m in received)  # the encoding marker is not the caller's


def test_unacknowledged_message_is_invisible_then_redelivered(aws_urls):
    queue = SqsQueue(_with(aws_urls["queue"], visibility=1, wait=1))
    queue.send(b"approve me")
    [first] = queue.receive()
    assert queue.receive() == [], "another consumer saw a message inside its visibility timeout"
    time.sleep(1.2)
    [again] = queue.receive(wait_seconds=2)
    assert (again.id, again.body, again.receive_count) == (first.id, b"approve me", 2)
    assert again.receipt != first.receipt


def test_poison_message_lands_in_the_dead_letter_queue(aws_urls):
    """The provisioned queue's RedrivePolicy has maxReceiveCount 3: SQS moves the message itself."""
    queue = SqsQueue(_with(aws_urls["queue"], visibility=0))
    queue.send(b"poison", {"kind": "approval.requested"})
    counts = []
    for _ in range(3):
        [message] = queue.receive(wait_seconds=1)
        counts.append(message.receive_count)  # never acknowledged: the handler "crashed"
    assert counts == [1, 2, 3]
    assert queue.receive(wait_seconds=1) == []

    dead = queue.dead_letters()
    assert [(m.body, m.attributes) for m in dead] == [(b"poison", {"kind": "approval.requested"})]
    # dead_letters() shows without consuming: the operator still finds it there.
    assert [m.body for m in queue.dead_letters()] == [b"poison"]


def test_queue_without_dead_letter_queue_is_refused(aws_cloud):
    name = f"plain-{uuid.uuid4().hex[:8]}"
    aws_cloud.client("sqs").create_queue(QueueName=name)
    with pytest.raises(StoreUnavailable, match="no dead-letter queue"):
        SqsQueue(f"sqs://{name}?region=us-east-1").send(b"x")


def test_missing_queue_is_store_unavailable_naming_the_url():
    url = "sqs://does-not-exist?region=us-east-1"
    with pytest.raises(StoreUnavailable, match=r"queue sqs://does-not-exist\?region=us-east-1: .*NonExistentQueue"):
        SqsQueue(url).receive()


@pytest.mark.parametrize(("url", "message"), [
    ("sqs://", "sqs://: missing queue name"),
    ("sqs://bad name", "not an SQS queue name"),
    ("sqs://q?visibility=soon", "visibility='soon' is not a whole number"),
    ("sqs://q?wait=30", "wait=30 is outside 1..20"),
    ("sqs://q?colour=red", "unknown parameter 'colour'"),
    ("sqs://q?region=Mars", "region 'Mars' is not an AWS region name"),
])
def test_bad_queue_urls_name_what_is_wrong(url, message):
    with pytest.raises(ValueError, match=message):
        SqsQueue(url)


def test_bad_attributes_are_refused_before_sending(aws_urls):
    queue = SqsQueue(aws_urls["queue"])
    with pytest.raises(ValueError, match="attribute name 'AWS.trace'"):
        queue.send(b"x", {"AWS.trace": "1"})
    with pytest.raises(ValueError, match="non-empty string"):
        queue.send(b"x", {"kind": ""})
    with pytest.raises(ValueError, match="empty message body"):
        queue.send(b"")
