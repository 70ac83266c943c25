"""PubSubQueue against Google's Pub/Sub emulator (which implements dead-letter policies and
``delivery_attempt``, so the whole redelivery/dead-letter path is the service's own here)."""

from __future__ import annotations

import re
import time

import pytest
from google import pubsub_v1
from google.auth.credentials import AnonymousCredentials

from wardgate.adapters.gcp import PubSubQueue
from wardgate.core.ports import StoreUnavailable
from wardgate.devtools.harness import wait_for


def test_a_sent_message_is_received_once_and_gone_after_ack(gcp_cloud, unique):
    queue = PubSubQueue(gcp_cloud.create_queue(unique) + "&visibility=1")
    message_id = queue.send(b'{"request": "r1"}', {"kind": "approval"})

    [message] = queue.receive(wait_seconds=10)
    assert (message.id, message.body, message.receive_count) == (message_id, b'{"request": "r1"}', 1)
    assert message.attributes == {"kind": "approval"}
    queue.ack(message)

    time.sleep(1.5)  # past the visibility timeout: an acknowledged message must not come back
    assert queue.receive(wait_seconds=2) == []


def test_a_received_message_is_invisible_until_its_ack_deadline(gcp_cloud, unique):
    queue = PubSubQueue(gcp_cloud.create_queue(unique, ack_deadline=30))
    queue.send(b"held")
    [message] = queue.receive(wait_seconds=10)
    assert queue.receive(wait_seconds=1.5) == []  # another consumer sees nothing while it is leased
    queue.ack(message)


def test_an_unacknowledged_message_comes_back_with_a_higher_receive_count(gcp_cloud, unique):
    queue = PubSubQueue(gcp_cloud.create_queue(unique) + "&visibility=1")
    queue.send(b"retry me")
    [first] = queue.receive(wait_seconds=10)
    [second] = queue.receive(wait_seconds=10)  # lease expired after 1 s: redelivered
    assert (second.id, second.body) == (first.id, b"retry me")
    assert (first.receive_count, second.receive_count) == (1, 2)
    queue.ack(second)


def test_a_poison_message_lands_in_the_dead_letter_topic(gcp_cloud, unique):
    queue = PubSubQueue(gcp_cloud.create_queue(unique, max_delivery_attempts=5) + "&visibility=1")
    queue.send(b"poison", {"request": "bad"})
    counts = []
    for _ in range(5):
        counts += [m.receive_count for m in queue.receive(wait_seconds=10)]  # never acknowledged
    assert counts == [1, 2, 3, 4, 5]
    # The sixth delivery goes to the dead-letter topic instead (the emulator forwards when the
    # subscription is next pulled; the service does it on its own once the lease expires).
    assert queue.receive(wait_seconds=3) == []

    dead = wait_for(lambda: queue.dead_letters(), "the poison message in the dead-letter subscription", timeout=20)
    assert [(m.body, m.receive_count, m.attributes["request"]) for m in dead] == [(b"poison", 5, "bad")]
    assert [m.body for m in queue.dead_letters()] == [b"poison"]  # peeking leaves it there
    assert queue.receive(wait_seconds=2) == []  # and it never comes back to the live queue


def test_a_subscription_without_dead_letter_policy_is_refused(gcp_cloud, unique):
    publisher = pubsub_v1.PublisherClient(credentials=AnonymousCredentials())
    subscriber = pubsub_v1.SubscriberClient(credentials=AnonymousCredentials())
    topic = publisher.create_topic(name=f"projects/{gcp_cloud.project}/topics/{unique}")
    subscriber.create_subscription(name=f"projects/{gcp_cloud.project}/subscriptions/{unique}-plain",
                                   topic=topic.name)
    queue = PubSubQueue(f"pubsub://{gcp_cloud.project}/{unique}?subscription={unique}-plain")
    with pytest.raises(StoreUnavailable, match="no dead-letter policy"):
        queue.receive()


def test_a_missing_subscription_names_the_queue(gcp_cloud, unique):
    url = f"pubsub://{gcp_cloud.project}/{unique}?subscription=nosuchsub&timeout=3"
    with pytest.raises(StoreUnavailable, match="nosuchsub"):
        PubSubQueue(url).receive()


def test_an_unreachable_endpoint_fails_within_the_timeout(gcp_cloud, dead_endpoint, monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", dead_endpoint)
    url = f"pubsub://{gcp_cloud.project}/approvals?subscription=approvals-sub&timeout=2"
    queue = PubSubQueue(url)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=re.escape(f"queue {url}:")):
        queue.send(b"x")
    assert time.monotonic() - started < 6


@pytest.mark.parametrize("url, complaint", [
    ("pubsub:///topic?subscription=s", "missing project"),
    ("pubsub://proj?subscription=sub", "missing topic"),
    ("pubsub://proj/topic", r"missing \?subscription"),
    ("pubsub://proj/topic?subscription=1bad", "invalid subscription name"),
    ("pubsub://proj/topic?subscription=sub&visibility=soon", "visibility"),
    ("pubsub://proj/topic?subscription=sub&visibility=601", "0..600"),
    ("pubsub://proj/topic?subscription=sub&timeout=-1", "timeout"),
])
def test_bad_urls_are_refused_with_the_wrong_part_named(url, complaint):
    with pytest.raises(ValueError, match=complaint):
        PubSubQueue(url)
