"""The provisioned GCP local cloud, opened through the URL registry exactly as a gateway would."""

from __future__ import annotations

from wardgate.adapters import (open_decision_store, open_object_store, open_queue, open_secret_source, open_signer,
                               register_secret_schemes)
from wardgate.adapters.gcp import CloudKmsSigner, FirestoreDecisionStore, GcsObjectStore, PubSubQueue
from wardgate.core.credentials import open_source
from wardgate.core.integrity import Signer
from wardgate.core.ports import DecisionStore, MessageQueue, ObjectStore


def test_every_provisioned_url_opens_through_the_registry_and_works(gcp_cloud, gcp_urls):
    assert {"queue", "decision_store", "audit_bucket", "signer", "db_secret"} <= set(gcp_urls)

    queue = open_queue(gcp_urls["queue"])
    assert isinstance(queue, PubSubQueue) and isinstance(queue, MessageQueue)
    queue.send(b"approval r9")
    [message] = queue.receive(wait_seconds=10)
    queue.ack(message)
    assert message.body == b"approval r9"

    store = open_decision_store(gcp_urls["decision_store"])
    assert isinstance(store, FirestoreDecisionStore) and isinstance(store, DecisionStore)
    assert store.create("localcloud/r9", {"ok": True}) and store.get("localcloud/r9") == {"ok": True}

    bucket = open_object_store(gcp_urls["audit_bucket"])  # WORM check on: the bucket has a retention policy
    assert isinstance(bucket, GcsObjectStore) and isinstance(bucket, ObjectStore)
    bucket.put("localcloud/seg.jsonl", b"x")
    assert bucket.get("localcloud/seg.jsonl") == b"x"

    signer = open_signer(gcp_urls["signer"])
    assert isinstance(signer, CloudKmsSigner) and isinstance(signer, Signer)

    credential = open_secret_source(gcp_urls["db_secret"], "ignored").fetch()
    assert credential.username == "wardgate_svc" and credential.password

    register_secret_schemes()  # the broker's own lookup reaches the same source
    assert open_source(gcp_urls["db_secret"], "ignored").fetch() == credential


def test_a_provisioned_secret_can_carry_a_given_password(gcp_cloud):
    urls = gcp_cloud.provision("given", db_password="s3cret-from-test")
    secret = open_secret_source(urls["db_secret"], "x").fetch()
    assert (secret.username, secret.password) == ("wardgate_svc", "s3cret-from-test")
