"""DynamoDecisionStore against moto_server's DynamoDB: conditional puts decide who wins."""

from __future__ import annotations

import threading

import pytest

from wardgate.adapters import open_decision_store
from wardgate.adapters.aws import DynamoDecisionStore
from wardgate.core.ports import DecisionStore, StoreUnavailable


def test_create_get_list(aws_urls):
    store = open_decision_store(aws_urls["decision_store"])
    assert isinstance(store, DynamoDecisionStore) and isinstance(store, DecisionStore)
    request = {"command": "DELETE FROM orders", "requested_by": "ci@example", "deadline": 1.5, "tags": ["a"]}
    assert store.create("approvals/r1/request", request) is True
    assert store.create("approvals/r1/decision", {"verdict": "approved"}) is True
    assert store.create("approvals/r10/request", {"command": "x"}) is True
    assert store.create("grants/g1", {"role": "admin"}) is True

    assert store.get("approvals/r1/request") == request  # floats and lists come back as written
    assert store.get("approvals/r2/request") is None
    assert [key for key, _ in store.list("approvals/r1/")] == ["approvals/r1/decision", "approvals/r1/request"]
    assert [key for key, _ in store.list("approvals/")] == [
        "approvals/r1/decision", "approvals/r1/request", "approvals/r10/request"]
    assert [key for key, _ in store.list("")] == [
        "approvals/r1/decision", "approvals/r1/request", "approvals/r10/request", "grants/g1"]
    assert store.list("nothing/") == []


def test_first_write_wins_and_is_never_replaced(aws_urls):
    store = DynamoDecisionStore(aws_urls["decision_store"])
    assert store.create("approvals/r1/decision", {"verdict": "approved", "by": "alice"}) is True
    assert store.create("approvals/r1/decision", {"verdict": "denied", "by": "mallory"}) is False
    assert store.get("approvals/r1/decision") == {"verdict": "approved", "by": "alice"}


def test_racing_writers_through_separate_clients_exactly_one_wins(aws_urls):
    """Two approvers press at once, each through its own store (own boto3 client, own connection)."""
    stores = [DynamoDecisionStore(aws_urls["decision_store"]) for _ in range(2)]
    for round_number in range(15):
        key = f"approvals/race{round_number}/decision"
        barrier = threading.Barrier(2)
        results: dict[int, bool] = {}

        def decide(writer: int) -> None:
            barrier.wait()
            results[writer] = stores[writer].create(key, {"approver": f"approver-{writer}"})

        threads = [threading.Thread(target=decide, args=(writer,)) for writer in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(results.values()) == [False, True], f"round {round_number}: {results}"
        winner = next(writer for writer, won in results.items() if won)
        assert stores[0].get(key) == {"approver": f"approver-{winner}"}


def test_keys_outside_the_port_alphabet_are_refused(aws_urls):
    store = DynamoDecisionStore(aws_urls["decision_store"])
    for bad in ("", "/leading", "trailing/", "a//b", "has space", "semi;colon"):
        with pytest.raises(ValueError, match="is not /-separated"):
            store.create(bad, {})


def test_table_keyed_differently_is_refused(aws_cloud):
    aws_cloud.client("dynamodb").create_table(
        TableName="wrongly-keyed", BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
    store = DynamoDecisionStore("dynamodb://wrongly-keyed?region=us-east-1")
    for attempt in (lambda: store.create("a", {}), lambda: store.get("a"), lambda: store.list("")):
        with pytest.raises(StoreUnavailable, match="ValidationException.*is the table keyed collection \\+ record_key"):
            attempt()


def test_missing_table_is_store_unavailable_naming_the_url():
    with pytest.raises(StoreUnavailable, match=r"decision store dynamodb://absent\?region=us-east-1: ResourceNotFound"):
        DynamoDecisionStore("dynamodb://absent?region=us-east-1").create("a", {})


@pytest.mark.parametrize(("url", "message"), [
    ("dynamodb://", "dynamodb://: missing table name"),
    ("dynamodb://ab", "not a DynamoDB table name"),
    ("dynamodb://table?consistent=yes", "unknown parameter 'consistent'"),
    ("sqs://table", "expected a dynamodb:// URL"),
])
def test_bad_table_urls_name_what_is_wrong(url, message):
    with pytest.raises(ValueError, match=message):
        DynamoDecisionStore(url)
