"""FirestoreDecisionStore against Google's Firestore emulator: create-once is Firestore's own
``create()`` precondition, so the race below is decided by the emulator, not by the adapter."""

from __future__ import annotations

import re
import threading
import time

import pytest

from wardgate.adapters.gcp import FirestoreDecisionStore, firestore_document_id
from wardgate.core.ports import StoreUnavailable


@pytest.fixture
def store_url(gcp_cloud, unique) -> str:
    return f"firestore://{gcp_cloud.project}/{unique}"


def test_the_first_create_wins_and_later_ones_change_nothing(store_url):
    store = FirestoreDecisionStore(store_url)
    assert store.create("approvals/r1/decision", {"by": "alice", "approved": True, "n": [1, {"x": None}]})
    assert not store.create("approvals/r1/decision", {"by": "mallory", "approved": False})
    assert store.get("approvals/r1/decision") == {"by": "alice", "approved": True, "n": [1, {"x": None}]}
    assert store.get("approvals/r2/decision") is None


def test_two_clients_racing_on_one_key_exactly_one_wins(store_url):
    stores = [FirestoreDecisionStore(store_url), FirestoreDecisionStore(store_url)]  # two SDK clients
    for store in stores:
        store.get("warm-up")  # connect first, so the race is between the creates themselves
    for round_number in range(5):
        key = f"approvals/race-{round_number}/decision"
        barrier = threading.Barrier(2)
        results: dict[str, bool] = {}

        def decide(store: FirestoreDecisionStore, approver: str) -> None:
            barrier.wait()
            results[approver] = store.create(key, {"by": approver})

        threads = [threading.Thread(target=decide, args=(store, name)) for store, name in zip(stores, ("ann", "bob"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results.values()) == [False, True]
        winner = next(name for name, won in results.items() if won)
        assert stores[0].get(key) == stores[1].get(key) == {"by": winner}


def test_keys_with_slashes_round_trip_and_list_is_a_sorted_prefix_scan(store_url):
    store = FirestoreDecisionStore(store_url)
    keys = ["req/a:1/request", "req/a:1/decision", "req/a:10/request", "req/a-1/x", "req.a", "other/x",
            "req/__x__/y", "req/../z", "req/u@example.com/grant"]
    for key in keys:
        assert store.create(key, {"key": key})
    assert store.list("req/a:1/") == [("req/a:1/decision", {"key": "req/a:1/decision"}),
                                      ("req/a:1/request", {"key": "req/a:1/request"})]
    assert [key for key, _ in store.list("req/")] == sorted(k for k in keys if k.startswith("req/"))
    assert [key for key, _ in store.list("")] == sorted(keys)
    assert store.list("nothing/") == []
    assert all(store.get(key) == {"key": key} for key in keys)


def test_document_ids_are_valid_firestore_ids():
    for key in ["a/b", ".", "..", "__name__", "x%2Fy"]:
        document_id = firestore_document_id(key)
        assert "/" not in document_id and document_id not in (".", "..") and not document_id.startswith("__")
    assert firestore_document_id("a/b") != firestore_document_id("a%2Fb")  # reversible: no collisions


def test_an_empty_key_is_refused(store_url):
    with pytest.raises(ValueError, match="empty"):
        FirestoreDecisionStore(store_url).create("", {})


def test_an_unreachable_endpoint_fails_within_the_timeout(gcp_cloud, dead_endpoint, monkeypatch):
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", dead_endpoint)
    url = f"firestore://{gcp_cloud.project}/decisions?timeout=2"
    store = FirestoreDecisionStore(url)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=re.escape(f"decision store {url}:")):
        store.create("a/b", {"x": 1})
    assert time.monotonic() - started < 6


@pytest.mark.parametrize("url, complaint", [
    ("firestore:///decisions", "missing project"),
    ("firestore://proj", "missing collection"),
    ("firestore://proj/a/b", "one top-level collection"),
    ("firestore://proj/decisions?timeout=x", "timeout"),
])
def test_bad_urls_are_refused_with_the_wrong_part_named(url, complaint):
    with pytest.raises(ValueError, match=complaint):
        FirestoreDecisionStore(url)
