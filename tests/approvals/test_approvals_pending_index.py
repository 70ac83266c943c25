"""Pending approval requests come from the deadline index, not from a scan of every request ever made.

GIVEN a decision store holding requests made over many days (decided, expired, pending, deadlines on
either side of midnight UTC), THEN ``pending()`` lists exactly the undecided ones before their
deadline, oldest first — the same answer as reading every record — while reading only the ``open/``
buckets of today and the next day(s). A request waits at most 24 hours: longer timeouts are refused
by the service and by policy validation, naming the key.
"""

from __future__ import annotations

import random
import time

import pytest

from approvals_helpers import ALICE, BOB, every_pending, hold
from wardgate.core.policy import PolicyError, load_policy
from wardgate.core.ports import StoreUnavailable


class CountingStore:
    """The real SQLite store, with the prefixes ``list`` was asked for."""

    def __init__(self, store) -> None:
        self.inner = store
        self.url = store.url
        self.listed: list[str] = []

    def create(self, key, record):
        return self.inner.create(key, record)

    def get(self, key):
        return self.inner.get(key)

    def list(self, prefix):
        self.listed.append(prefix)
        return self.inner.list(prefix)


def test_pending_is_the_index_answer_and_reads_only_recent_buckets(service, store, clock):
    rng = random.Random(20261207)
    # Start just before midnight UTC, 40 days ago, so deadlines cross day boundaries.
    day = 86400
    clock.now = (int(time.time()) // day - 40) * day + day - 600
    for _ in range(400):
        clock.now += rng.choice([30, 600, 3600, 5 * 3600])
        request = hold(service, timeout=rng.choice([60, 900, 3600, 6 * 3600, 24 * 3600]))
        fate = rng.random()
        if fate < 0.3:
            service.decide(request.id, BOB, rng.choice(["approve", "deny"]))
        elif fate < 0.4:
            service.withdraw(request.id, "client cancelled")
    counting = CountingStore(store)
    service.store = counting
    for probe in (clock.now, clock.now + 1800, clock.now + 7 * 3600, clock.now + 2 * day):
        counting.listed.clear()
        expected = every_pending(store, probe)
        assert [r.id for r in service.pending(probe)] == expected
        assert counting.listed and all(prefix.startswith("open/") for prefix in counting.listed), counting.listed
        assert len(counting.listed) <= 3
    assert every_pending(store, clock.now)  # the probes saw pending requests, not only empty answers
    assert [r.id for r, _ in service.requests("pending", clock.now)] == every_pending(store, clock.now)


def test_index_write_failure_refuses_the_request(service, store):
    class IndexRefusing(CountingStore):
        def create(self, key, record):
            if key.startswith("open/"):
                raise StoreUnavailable("index table unavailable")
            return super().create(key, record)

    service.store = IndexRefusing(store)
    with pytest.raises(StoreUnavailable, match="index table unavailable"):
        hold(service)


def test_timeout_over_a_day_is_refused_by_the_service(service):
    with pytest.raises(ValueError, match="at most 24h"):
        hold(service, ALICE, timeout=24 * 3600 + 1)


def test_timeout_over_a_day_is_refused_by_the_policy_naming_the_key(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("""\
version: 1
name: long-wait
rules:
  - name: review-everything
    effect: review
    approvers: [dba]
    approval: {timeout: 2d}
""")
    with pytest.raises(PolicyError) as caught:
        load_policy(policy)
    assert "rules.0.approval" in str(caught.value) and "at most 24h" in str(caught.value)
