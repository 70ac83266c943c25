"""The supervisor's /metrics: the workers' expositions merged into one set for the whole gateway.

Workers are real GatewayMetrics filled the way the core fills them (observer calls, verdict counters,
latency lists indexed by bisect_left); the merge is read back with prometheus_client's own parser."""

from __future__ import annotations

from bisect import bisect_left
from types import SimpleNamespace

import prometheus_client.metrics
import pytest
from prometheus_client.parser import text_string_to_metric_families

from wardgate.core.model import Verdict
from wardgate.metrics import GatewayMetrics, merge_expositions

PG = (("protocol", "postgres"), ("resource", "orders"))
MY = (("protocol", "mysql"), ("resource", "billing"))


def _parse(text: bytes | str) -> dict[tuple, float]:
    if isinstance(text, bytes):
        text = text.decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, f"series {key} rendered twice"
            found[key] = sample.value
    return found


def _families(text: bytes) -> dict[str, tuple[str, str]]:
    return {f.name: (f.type, f.documentation) for f in text_string_to_metric_families(text.decode())}


def _latencies(metrics: GatewayMetrics, protocol: str, *seconds: float) -> None:
    bounds, data = metrics.latency_histogram(protocol)
    for value in seconds:  # as Session.result does
        data[bisect_left(bounds, value)] += 1
        data[-1] += value


def _sessions(metrics: GatewayMetrics, protocol: str, resource: str, opened: int, closed: int) -> None:
    for _ in range(opened):
        metrics.session_opened(protocol, resource)
    for _ in range(closed):
        metrics.session_closed(protocol, resource)


@pytest.fixture
def clock(monkeypatch):
    """Sets the creation time prometheus_client stamps on new counters, so _created differs per worker."""
    now = SimpleNamespace(value=0.0)
    monkeypatch.setattr(prometheus_client.metrics, "time", SimpleNamespace(time=lambda: now.value))
    return now


@pytest.fixture
def workers(clock) -> list[GatewayMetrics]:
    # Created in the order 2000, 1000, 3000: the earliest is neither the first nor the last worker.
    one, two, three = GatewayMetrics(), GatewayMetrics(), GatewayMetrics()

    clock.value = 2000.0
    _sessions(one, "postgres", "orders", opened=2, closed=1)
    one.authenticated("postgres", True, "ok")
    one.authenticated("postgres", True, "ok")
    one.authenticated("postgres", False, "expired")
    one.decision_counts("postgres")[Verdict.ALLOW] += 3
    one.decision_counts("postgres")[Verdict.DENY] += 1
    _latencies(one, "postgres", 0.003, 0.003, 2.0)
    one.audit_events.set(10)
    one.audit_up.set(1)

    clock.value = 1000.0
    _sessions(two, "postgres", "orders", opened=3, closed=0)
    for _ in range(3):
        two.authenticated("postgres", True, "ok")
    two.decision_counts("postgres")[Verdict.ALLOW] += 4
    two.decision_counts("postgres")[Verdict.REVIEW] += 2
    _latencies(two, "postgres", 0.0004, 0.02)
    two.audit_events.set(5)
    two.audit_up.set(1)

    clock.value = 3000.0
    _sessions(three, "mysql", "billing", opened=1, closed=0)  # only this worker serves mysql
    three.authenticated("mysql", True, "ok")
    three.decision_counts("mysql")[Verdict.DENY] += 2
    _latencies(three, "mysql", 0.1)
    three.audit_events.set(7)
    three.audit_up.set(1)
    return [one, two, three]


def test_sessions_and_authentications_sum_across_workers(workers) -> None:
    merged = _parse(merge_expositions(w.render() for w in workers))
    assert merged[("wardgate_sessions_total", PG)] == 5
    assert merged[("wardgate_sessions_open", PG)] == 4
    assert merged[("wardgate_sessions_total", MY)] == 1
    assert merged[("wardgate_sessions_open", MY)] == 1
    auth = "wardgate_authentications_total"
    assert merged[(auth, (("outcome", "ok"), ("protocol", "postgres"), ("reason", "ok")))] == 5
    assert merged[(auth, (("outcome", "refused"), ("protocol", "postgres"), ("reason", "expired")))] == 1
    assert merged[(auth, (("outcome", "ok"), ("protocol", "mysql"), ("reason", "ok")))] == 1
    assert merged[("wardgate_audit_events_written", ())] == 22


def test_decisions_sum_per_verdict_and_one_worker_series_keep_their_value(workers) -> None:
    merged = _parse(merge_expositions(w.render() for w in workers))
    decisions = "wardgate_decisions_total"
    assert merged[(decisions, (("protocol", "postgres"), ("verdict", "allow")))] == 7
    assert merged[(decisions, (("protocol", "postgres"), ("verdict", "deny")))] == 1  # worker one only
    assert merged[(decisions, (("protocol", "postgres"), ("verdict", "review")))] == 2  # worker two only
    assert merged[(decisions, (("protocol", "mysql"), ("verdict", "deny")))] == 2  # worker three only
    # Every series of every worker appears once, and nothing else does.
    union = set().union(*(_parse(w.render()) for w in workers))
    assert set(merged) == union


def test_latency_histogram_sums_bucket_by_bucket(workers) -> None:
    merged = _parse(merge_expositions(w.render() for w in workers))
    bucket = "wardgate_command_seconds_bucket"
    # postgres observations: 0.0004 (two), 0.003, 0.003, 2.0 (one), 0.02 (two)
    expected = {"0.0005": 1, "0.001": 1, "0.0025": 1, "0.005": 3, "0.01": 3, "0.025": 4, "1.0": 4,
                "2.5": 5, "30.0": 5, "+Inf": 5}
    for le, count in expected.items():
        assert merged[(bucket, (("le", le), ("protocol", "postgres")))] == count, le
    pg = [v for (name, labels), v in merged.items() if name == bucket and ("protocol", "postgres") in labels]
    assert pg == sorted(pg) and len(pg) == 16  # still cumulative, in bound order
    assert merged[("wardgate_command_seconds_count", (("protocol", "postgres"),))] == 5
    assert merged[("wardgate_command_seconds_sum", (("protocol", "postgres"),))] == pytest.approx(2.0264)
    assert merged[(bucket, (("le", "0.05"), ("protocol", "mysql")))] == 0
    assert merged[(bucket, (("le", "0.1"), ("protocol", "mysql")))] == 1
    assert merged[("wardgate_command_seconds_count", (("protocol", "mysql"),))] == 1
    assert merged[("wardgate_command_seconds_sum", (("protocol", "mysql"),))] == pytest.approx(0.1)


def test_audit_sink_is_up_only_if_up_in_every_worker(workers) -> None:
    assert _parse(merge_expositions(w.render() for w in workers))[("wardgate_audit_sink_up", ())] == 1
    workers[1].audit_up.set(0)
    assert _parse(merge_expositions(w.render() for w in workers))[("wardgate_audit_sink_up", ())] == 0


def test_created_is_the_earliest_creation(workers) -> None:
    merged = _parse(merge_expositions(w.render() for w in workers))
    assert merged[("wardgate_sessions_created", PG)] == 1000.0  # workers one (2000) and two (1000)
    assert merged[("wardgate_sessions_created", MY)] == 3000.0
    ok = (("outcome", "ok"), ("protocol", "postgres"), ("reason", "ok"))
    assert merged[("wardgate_authentications_created", ok)] == 1000.0


def test_families_keep_help_and_type(workers) -> None:
    text = merge_expositions(w.render() for w in workers)
    families = _families(text)
    assert families == _families(workers[0].render()) | _families(workers[2].render())
    assert families["wardgate_sessions"] == ("counter", "Client sessions opened")
    assert families["wardgate_command_seconds"] == ("histogram", "Command latency through the gateway")
    assert families["wardgate_audit_sink_up"] == ("gauge", "1 when the audit sink accepts writes")
    assert b"# TYPE wardgate_sessions_total counter\n" in text


def test_supervisor_figures_are_added_when_given(workers) -> None:
    texts = [w.render() for w in workers]
    text = merge_expositions(texts, workers=3, worker_restarts=2)
    merged = _parse(text)
    assert merged[("wardgate_workers", ())] == 3
    assert merged[("wardgate_worker_restarts_total", ())] == 2
    families = _families(text)
    assert families["wardgate_workers"] == ("gauge", "Worker processes serving connections")
    assert families["wardgate_worker_restarts"] == ("counter", "Worker processes restarted after they died")
    assert merged[("wardgate_sessions_total", PG)] == 5  # the workers' figures are still there
    assert not {"wardgate_workers", "wardgate_worker_restarts"} & set(_families(merge_expositions(texts)))


def test_text_and_bytes_and_a_single_worker(workers) -> None:
    one = workers[0].render()
    assert _parse(merge_expositions([one])) == _parse(one)
    assert _parse(merge_expositions([one.decode(), workers[1].render()]))[("wardgate_sessions_total", PG)] == 5
    assert merge_expositions([]) == b""
