"""TableDecisionStore against Azurite's table service: create-once, races, prefixes, key encoding."""

from __future__ import annotations

import threading

import pytest

from wardgate.adapters import open_decision_store
from wardgate.adapters.azure import TableDecisionStore, decode_table_key, encode_table_key
from wardgate.core.ports import DecisionStore, StoreUnavailable

pytestmark = pytest.mark.usefixtures("azure_env")

TRICKY_KEYS = ["approvals/r-1/request", "approvals/r-1/decision", "a-b", "a/b", "a.b", "a|b", "a~b",
               "odd/#?\\chars", "ünïcode/ключ", "grants/user@example.com:read", "x" * 200]


def _new_store(azure_cloud, unique: str) -> TableDecisionStore:
    table = f"t{unique}"
    azure_cloud.table_service().create_table(table)
    return open_decision_store(f"aztable://devstoreaccount1/{table}")


def test_first_write_wins_and_records_are_never_replaced(azure_cloud, unique):
    store = _new_store(azure_cloud, unique)
    assert isinstance(store, DecisionStore)
    assert store.get("approvals/r-1/decision") is None
    assert store.create("approvals/r-1/decision", {"approver": "alice", "verdict": "approve"}) is True
    assert store.create("approvals/r-1/decision", {"approver": "mallory", "verdict": "approve"}) is False
    assert store.get("approvals/r-1/decision") == {"approver": "alice", "verdict": "approve"}


def test_two_clients_racing_on_one_key_exactly_one_wins(azure_cloud, unique):
    """Two store instances (two HTTP clients), many rounds: the service's 409 decides each round."""
    url = _new_store(azure_cloud, unique).url
    stores = [TableDecisionStore(url), TableDecisionStore(url)]
    for round_number in range(15):
        key = f"approvals/race-{round_number}/decision"
        barrier = threading.Barrier(2)
        results: dict[int, bool] = {}

        def decide(index: int) -> None:
            barrier.wait()
            results[index] = stores[index].create(key, {"approver": f"approver-{index}"})

        threads = [threading.Thread(target=decide, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results.values()) == [False, True]
        winner = next(i for i, won in results.items() if won)
        assert stores[1 - winner].get(key) == {"approver": f"approver-{winner}"}


def test_keys_with_any_characters_round_trip(azure_cloud, unique):
    store = _new_store(azure_cloud, unique)
    for key in TRICKY_KEYS:
        assert store.create(key, {"key": key})
    for key in TRICKY_KEYS:
        assert store.get(key) == {"key": key}
    assert store.list("") == sorted((key, {"key": key}) for key in TRICKY_KEYS)


def test_list_returns_exactly_the_prefix_sorted_by_key(azure_cloud, unique):
    store = _new_store(azure_cloud, unique)
    keys = ["approvals/r-2/request", "approvals/r-1/request", "approvals/r-1/decision", "approvals/r-10/request",
            "approvals/r-1.5/request", "approvalsX/other", "approval", "grants/g-1"]
    for key in keys:
        store.create(key, {"k": key})

    def listed(prefix: str) -> list[str]:
        return [key for key, _record in store.list(prefix)]

    assert listed("approvals/r-1/") == ["approvals/r-1/decision", "approvals/r-1/request"]
    assert listed("approvals/r-1") == sorted(k for k in keys if k.startswith("approvals/r-1"))
    assert listed("approvals/") == sorted(k for k in keys if k.startswith("approvals/"))
    assert listed("appro") == sorted(k for k in keys if k.startswith("appro"))  # spans partitions
    assert listed("nothing") == []


def test_encoding_is_reversible_prefix_preserving_and_table_safe():
    for key in TRICKY_KEYS:
        encoded = encode_table_key(key)
        assert decode_table_key(encoded) == key
        assert not set(encoded) & set("/\\#?") and all(0x20 <= ord(c) < 0x7F for c in encoded)
        for cut in range(len(key)):
            assert encoded.startswith(encode_table_key(key[:cut]))
    assert not encode_table_key("a/c").startswith(encode_table_key("a-"))


def test_missing_table_is_an_outage_not_an_absent_record(azure_env):
    store = TableDecisionStore("aztable://devstoreaccount1/tablethatdoesnotexist")
    with pytest.raises(StoreUnavailable, match="aztable://devstoreaccount1/tablethatdoesnotexist.*TableNotFound"):
        store.get("approvals/r-1/request")
