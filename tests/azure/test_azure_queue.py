"""StorageQueue against Azurite's queue service: delivery, redelivery, poison queue, encoding."""

from __future__ import annotations

import base64
import threading
import time

import pytest

from wardgate.adapters import open_queue
from wardgate.adapters.azure import StorageQueue, decode_queue_payload
from wardgate.core.ports import MessageQueue

pytestmark = pytest.mark.usefixtures("azure_env")


def _new_queue(azure_cloud, unique: str, **query: int) -> StorageQueue:
    name = f"q-{unique}"
    for queue_name in (name, name + "-poison"):
        azure_cloud.queue_client(queue_name).create_queue()
    params = "&".join(f"{k}={v}" for k, v in query.items())
    return open_queue(f"azqueue://devstoreaccount1/{name}" + (f"?{params}" if params else ""))


def test_send_receive_ack_removes_the_message(azure_cloud, unique):
    queue = _new_queue(azure_cloud, unique, visibility=1)
    assert isinstance(queue, MessageQueue)
    sent_id = queue.send(b"approval request 1", {"kind": "approval"})

    [message] = queue.receive(max_messages=5)
    assert (message.id, message.body, message.receive_count) == (sent_id, b"approval request 1", 1)
    assert message.attributes == {"kind": "approval"}
    queue.ack(message)

    time.sleep(1.3)  # past the visibility timeout: an acknowledged message never comes back
    assert queue.receive() == []


def test_unacknowledged_message_is_redelivered_with_a_higher_count(azure_cloud, unique):
    queue = _new_queue(azure_cloud, unique, visibility=1)
    queue.send(b"retry me")
    [first] = queue.receive()
    assert queue.receive() == []  # invisible to other consumers while held
    time.sleep(1.3)
    [second] = queue.receive()
    assert (second.id, second.body, second.receive_count) == (first.id, b"retry me", 2)
    queue.ack(second)


def test_late_ack_after_redelivery_does_not_delete_the_new_delivery(azure_cloud, unique, caplog):
    queue = _new_queue(azure_cloud, unique, visibility=1)
    queue.send(b"slow consumer")
    [stale] = queue.receive()
    time.sleep(1.3)
    [fresh] = queue.receive()
    queue.ack(stale)  # the stale pop receipt: logged, not an outage, and the message stays held
    assert "came too late" in caplog.text
    time.sleep(1.3)
    [again] = queue.receive()
    assert again.id == fresh.id and again.receive_count == 3


def test_poison_message_moves_to_the_poison_queue_after_max_receives(azure_cloud, unique):
    queue = _new_queue(azure_cloud, unique, visibility=1, max_receives=2)
    queue.send(b"handler crashes on this", {"request": "r-1"})
    queue.send(b"healthy")
    deliveries = []
    for _ in range(3):
        for message in queue.receive(max_messages=10):
            if message.body == b"healthy":
                queue.ack(message)
            else:
                deliveries.append(message.receive_count)
        time.sleep(1.3)

    assert deliveries == [1, 2]  # delivered max_receives times, then dead-lettered, not dropped
    assert queue.receive() == []
    [dead] = queue.dead_letters()
    assert dead.body == b"handler crashes on this" and dead.attributes == {"request": "r-1"}
    # The poison queue is a plain Storage Queue that operators and Functions can read as well.
    assert len(list(azure_cloud.queue_client(f"q-{unique}-poison").peek_messages(max_messages=32))) == 1


def test_undecodable_message_goes_to_poison_at_once(azure_cloud, unique):
    queue = _new_queue(azure_cloud, unique, visibility=1)
    azure_cloud.queue_client(f"q-{unique}").send_message("not base64 at all!")
    assert queue.receive() == []
    [dead] = queue.dead_letters()
    assert dead.body == b"not base64 at all!"


def test_body_is_plain_base64_for_an_azure_functions_trigger(azure_cloud, unique):
    queue = _new_queue(azure_cloud, unique)
    queue.send(b'{"request_id": "abc"}')
    queue.send(b"with attributes", {"k": "v"})
    raw = [m.content for m in azure_cloud.queue_client(f"q-{unique}").peek_messages(max_messages=2)]
    # The Functions runtime base64-decodes queue messages: without attributes it sees the body itself.
    assert base64.b64decode(raw[0]) == b'{"request_id": "abc"}'
    assert decode_queue_payload(base64.b64decode(raw[1])) == (b"with attributes", {"k": "v"})


def test_body_that_looks_like_an_envelope_round_trips(azure_cloud, unique):
    queue = _new_queue(azure_cloud, unique)
    tricky = b'{"wardgate.envelope":1,"body":"eA==","attributes":{}}'
    queue.send(tricky)
    [message] = queue.receive()
    assert message.body == tricky and message.attributes == {}


def test_receive_waits_for_a_message_sent_meanwhile(azure_cloud, unique):
    queue = _new_queue(azure_cloud, unique)
    threading.Timer(0.7, queue.send, args=(b"late",)).start()
    started = time.monotonic()
    [message] = queue.receive(wait_seconds=5)
    assert message.body == b"late" and time.monotonic() - started < 4.5


def test_oversized_message_is_refused_before_sending(azure_cloud, unique):
    queue = _new_queue(azure_cloud, unique)
    with pytest.raises(ValueError, match="64 KiB"):
        queue.send(b"x" * 60_000)
