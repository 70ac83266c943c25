"""Requests stored by a gateway older than the pending index get their ``open/`` copy.

GIVEN requests stored the old way (the request record, no ``open/<day of the deadline>/<id>`` copy),
THEN ``pending()`` does not list them; ``reindex()`` reads every request once and gives exactly the
undecided ones before their deadline the copy a new request gets, changes no record, and a second run
writes nothing. At start-up (``reannounce_pending``) this runs once per store: the marker
``meta/pending-index-v1`` makes later starts read one record instead of the whole store.
``wardgate approvals reindex --config FILE`` runs it on the store the configuration names, whatever
the marker says, with one-line errors (exit 2) for a bad configuration or a store it cannot use.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from approvals_helpers import ALICE, BOB, every_pending, hold, roles_of
from wardgate.adapters.local import SqliteDecisionStore
from wardgate.approvals.records import (PENDING_INDEX_MARKER, ApprovalRequest, instant, new_request_id,
                                        open_index_key, request_key)
from wardgate.approvals.service import ApprovalService
from wardgate.config import load_config
from wardgate.core.ports import StoreUnavailable
from wardgate.server import Gateway, local_url


class OldGatewayStore:
    """The store as a gateway older than the pending index used it: ``_store`` wrote the request
    record and nothing under ``open/``."""

    def __init__(self, store) -> None:
        self.inner = store
        self.url = store.url

    def create(self, key, record):
        if key.startswith("open/"):
            return True
        return self.inner.create(key, record)

    def get(self, key):
        return self.inner.get(key)

    def list(self, prefix):
        return self.inner.list(prefix)


class CountingStore(OldGatewayStore):
    """The real store, with the prefixes ``list`` was asked for."""

    def __init__(self, store) -> None:
        super().__init__(store)
        self.listed: list[str] = []

    def create(self, key, record):
        return self.inner.create(key, record)

    def list(self, prefix):
        self.listed.append(prefix)
        return self.inner.list(prefix)


@pytest.fixture
def old(store, queue, clock) -> ApprovalService:
    """An approval service as the previous version ran it, on the same store."""
    return ApprovalService(OldGatewayStore(store), queue, roles_of=roles_of, clock=clock)


def snapshot(store) -> dict[str, dict]:
    return dict(store.list(""))


def legacy_mix(service, old, clock):
    """Old-way requests in every state, and one new request. Returns (pending legacy, the others)."""
    expired = hold(old, statement="DROP TABLE a", timeout=60)
    clock.advance(120)  # past its deadline, no outcome written (nobody expired it)
    waiting = hold(old, statement="DROP TABLE b", timeout=3600)
    approved = hold(old, statement="DROP TABLE c")
    old.decide(approved.id, BOB, "approve")
    denied = hold(old, statement="DROP TABLE d")
    old.decide(denied.id, BOB, "deny", "no")
    withdrawn = hold(old, statement="DROP TABLE e")
    old.withdraw(withdrawn.id, "client cancelled")
    clock.advance(1)  # pending() lists oldest first
    grant = old.request_grant(ALICE, resource="orders", role="admin", duration_seconds=1800, reason="incident 42",
                              approvers=["dba"], timeout_seconds=900)
    clock.advance(1)
    new = hold(service, statement="DROP TABLE f")
    return [waiting, grant], [expired, approved, denied, withdrawn], new


def test_pending_misses_old_requests_until_reindex_copies_exactly_the_open_ones(service, old, store, clock):
    (waiting, grant), closed, new = legacy_mix(service, old, clock)
    assert [r.id for r in service.pending()] == [new.id]  # the gap: the old ones are not listed
    before = snapshot(store)

    assert service.reindex() == 2

    assert [r.id for r in service.pending()] == every_pending(store, clock.now) == [waiting.id, grant.id, new.id]
    after = snapshot(store)
    # No record changed; the new ones are the two copies (the request record itself, as a new
    # request's copy is) and the marker.
    assert {key: after[key] for key in before} == before
    copies = {open_index_key(r.deadline, r.id): store.get(request_key(r.id)) for r in (waiting, grant)}
    assert {key: after[key] for key in after.keys() - before.keys() if key != PENDING_INDEX_MARKER} == copies
    assert store.get(open_index_key(new.deadline, new.id)) == store.get(request_key(new.id))
    assert all(store.get(open_index_key(r.deadline, r.id)) is None for r in closed)
    assert store.get(PENDING_INDEX_MARKER)["indexed"] == 2

    assert service.reindex() == 0  # idempotent: nothing written, nothing changed
    assert snapshot(store) == after


def test_reindex_at_a_later_time_skips_requests_expired_meanwhile(service, old, store, clock):
    short = hold(old, statement="DROP TABLE a", timeout=300)
    longer = hold(old, statement="DROP TABLE b", timeout=3600)
    assert service.reindex(now=clock.now + 600) == 1
    assert store.get(open_index_key(short.deadline, short.id)) is None
    assert [r.id for r in service.pending(clock.now + 600)] == [longer.id]


def test_a_decision_after_reindex_removes_it_from_pending(service, old):
    request = hold(old)
    assert service.reindex() == 1
    assert [r.id for r in service.pending()] == [request.id]
    service.decide(request.id, BOB, "approve")
    assert service.pending() == []


def test_start_up_indexes_once_per_store_and_announces_the_old_requests(store, queue, clock, old):
    request = hold(old)
    queue.receive(10)  # the old gateway announced it; the new one's queue (in-process) starts empty
    counting = CountingStore(store)
    started = ApprovalService(counting, queue, roles_of=roles_of, clock=clock)
    assert started.reannounce_pending() == 1
    [message] = queue.receive(10)
    assert json.loads(message.body)["id"] == request.id
    assert "approval/" in counting.listed and store.get(PENDING_INDEX_MARKER) is not None

    # The next start reads the marker, not the whole store. A request an old gateway stores after it
    # (a rolling upgrade) is found only by `wardgate approvals reindex`, which scans whatever it says.
    clock.advance(1)
    late = hold(old, statement="DROP TABLE late")
    counting.listed.clear()
    restarted = ApprovalService(counting, queue, roles_of=roles_of, clock=clock)
    assert restarted.reannounce_pending() == 1
    assert "approval/" not in counting.listed and all(p.startswith("open/") for p in counting.listed)
    assert restarted.index_once() is None
    assert restarted.reindex() == 1
    assert [r.id for r in restarted.pending()] == [request.id, late.id]


def test_a_store_failure_leaves_no_marker_so_the_next_start_scans_again(store, queue, clock, old):
    hold(old)

    class IndexRefusing(CountingStore):
        def create(self, key, record):
            if key.startswith("open/"):
                raise StoreUnavailable("index table unavailable")
            return super().create(key, record)

    failing = ApprovalService(IndexRefusing(store), queue, roles_of=roles_of, clock=clock)
    with pytest.raises(StoreUnavailable, match="index table unavailable"):
        failing.reannounce_pending()
    assert store.get(PENDING_INDEX_MARKER) is None
    assert ApprovalService(store, queue, roles_of=roles_of, clock=clock).index_once() == 1


def test_an_old_timeout_over_a_day_is_indexed_by_its_deadline_and_named(service, store, clock, caplog):
    # The old service took any timeout: a 3-day request, written as it wrote it.
    created = instant(clock.now)
    request = ApprovalRequest(id=new_request_id(), kind="grant", requester=ALICE.audit_view(), resource="orders",
                              approvers=("dba",), quorum=1, created=created, deadline=instant(created + 3 * 86400),
                              rule="access:admin", role="admin", duration_seconds=1800.0, reason="audit",
                              scope="duration", scope_seconds=1800.0)
    assert store.create(request_key(request.id), request.to_record())
    with caplog.at_level(logging.WARNING, logger="wardgate.approvals.service"):
        assert service.reindex() == 1
    assert store.get(open_index_key(request.deadline, request.id)) == request.to_record()
    assert f"request {request.id} waits until" in caplog.text and "listed as pending from" in caplog.text
    assert service.pending() == []  # beyond the buckets pending() reads ...
    assert [r.id for r in service.pending(request.deadline - 3600)] == [request.id]  # ... until it is close


# -- wardgate approvals reindex --config FILE ------------------------------------------------------

CONFIG = """\
listeners: [{protocol: postgres, address: "127.0.0.1:6432"}]
resources: {orders: {protocol: postgres, host: 127.0.0.1, database: orders, username: gw}}
dev_issuer: {enabled: true}
state_dir: "."
approvals: {store: "%s"}
"""


def reindex(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wardgate.cli", "approvals", "reindex", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


def write_config(tmp_path: Path, store_url: str = "sqlite://decisions.db", name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(CONFIG % store_url)
    return path


def test_cli_indexes_the_store_the_configuration_names(service, old, store, clock, tmp_path):
    clock.now = time.time() - 300  # the CLI runs on the real clock: the 60 s request has expired by then
    (waiting, grant), _closed, new = legacy_mix(service, old, clock)
    clock.now = time.time()
    config = write_config(tmp_path)  # the fixture's store: state_dir/decisions.db
    first = reindex(config)
    assert first.returncode == 0, first.stderr
    store_url = f"sqlite://{tmp_path.resolve()}/decisions.db"
    assert first.stdout == f"indexed 2 pending approval request(s) that had no open/ copy in {store_url}\n"
    assert [r.id for r in service.pending()] == [waiting.id, grant.id, new.id]
    assert store.get(PENDING_INDEX_MARKER) is not None
    # A second run writes nothing.
    second = reindex(config)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("indexed 0 pending approval request(s)")


@pytest.mark.parametrize("case, expected", [
    ("missing", "cannot read configuration"),
    ("invalid", "approvals.stor: unknown key"),
    ("disabled", "approvals.enabled is false"),
    ("no-file", "no such file"),
    ("not-a-database", "cannot reach the decision store: decision store sqlite://"),
    ("unknown-scheme", "approvals.store: decision store 'nosuch://table': unsupported scheme"),
])
def test_cli_errors_are_one_line_with_exit_2(tmp_path, case, expected):
    config = write_config(tmp_path)
    if case == "missing":
        config = tmp_path / "missing.yaml"
    elif case == "invalid":
        config.write_text(config.read_text().replace("{store:", "{stor:"))
    elif case == "disabled":
        config.write_text(config.read_text().replace("{store:", "{enabled: false, store:"))
    elif case == "not-a-database":
        (tmp_path / "decisions.db").write_bytes(b"this is not a SQLite database, " * 100)
    elif case == "unknown-scheme":
        config = write_config(tmp_path, "nosuch://table")
    result = reindex(config)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("wardgate approvals: ") and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert case != "no-file" or not (tmp_path / "decisions.db").exists()  # no empty store created


def test_the_fixture_store_is_the_one_the_config_names(tmp_path, store):
    # Guards the CLI test above: the config's relative URL lands on the fixture's file.
    assert isinstance(store, SqliteDecisionStore)
    url = local_url("sqlite://decisions.db", tmp_path)
    assert url == f"sqlite://{tmp_path.resolve()}/decisions.db" and store.path.samefile(url[len("sqlite://"):])


def test_the_gateways_approval_start_up_lists_the_old_requests(old, store, clock, tmp_path, verifier):
    clock.now = time.time()
    request = hold(old)
    config = load_config(write_config(tmp_path))  # the fixture's store, an in-process queue
    gateway = Gateway(config.model_copy(update={"approvals": config.approvals.model_copy(
        update={"queue": f"memory://approvals-{request.id}"})}), config_dir=tmp_path)
    gateway.control_address = ("127.0.0.1", 9480)
    gateway._start_approvals(verifier)  # what `wardgate serve` runs (the supervisor, or the only process)
    assert [r.id for r in gateway.approvals.pending()] == [request.id]
    assert store.get(PENDING_INDEX_MARKER)["indexed"] == 1
