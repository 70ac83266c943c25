"""Prometheus metrics. They wrap the core from outside (as its Observer): no engine counts itself.

Per-statement observations land in plain Python counters and are turned into Prometheus samples only
when ``/metrics`` is scraped: the client library's locked ``inc``/``observe`` would cost more than
the rest of the bookkeeping on the statement path.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

# Statement latency through the gateway, request received → response complete.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _StatementCollector:
    """Exposes the hot-path counters kept by :class:`GatewayMetrics`."""

    def __init__(self, metrics: "GatewayMetrics"):
        self.metrics = metrics

    def collect(self):
        decisions = CounterMetricFamily("wardgate_decisions", "Command decisions by verdict",
                                        labels=["protocol", "verdict"])
        for protocol, counts in list(self.metrics.decisions.items()):
            for verdict, value in list(counts.items()):
                decisions.add_metric([protocol, getattr(verdict, "value", verdict)], value)
        yield decisions
        latency = HistogramMetricFamily("wardgate_command_seconds", "Command latency through the gateway",
                                        labels=["protocol"])
        for protocol, data in list(self.metrics.latencies.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), data[:-1]):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
            latency.add_metric([protocol], buckets, data[-1])
        yield latency


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sessions_open = Gauge("wardgate_sessions_open", "Client sessions currently open",
                                   ["protocol", "resource"], registry=self.registry)
        self.sessions_total = Counter("wardgate_sessions_total", "Client sessions opened",
                                      ["protocol", "resource"], registry=self.registry)
        self.authentications = Counter("wardgate_authentications_total", "Token verifications by outcome",
                                       ["protocol", "outcome", "reason"], registry=self.registry)
        self.cancel_requests = Counter(
            "wardgate_cancel_requests_total",
            "PostgreSQL cancel requests by outcome: backend (passed to the backend), withdrawn (a held "
            "statement's approval request), unknown (no such key here: another replica issued it, its "
            "session ended, or it is forged), failed (the backend or worker could not be reached)",
            ["outcome"], registry=self.registry)
        self.audit_events = Gauge("wardgate_audit_events_written", "Audit events written since start",
                                  registry=self.registry)
        self.audit_up = Gauge("wardgate_audit_sink_up", "1 when the audit sink accepts writes",
                              registry=self.registry)
        self.decisions: dict[str, defaultdict] = {}  # protocol → verdict → count (the core counts)
        # protocol → one count per bucket of LATENCY_BUCKETS and one above, then the sum (the core counts)
        self.latencies: dict[str, list] = {}
        self.registry.register(_StatementCollector(self))

    # Observer interface
    def session_opened(self, protocol: str, resource: str) -> None:
        self.sessions_open.labels(protocol, resource).inc()
        self.sessions_total.labels(protocol, resource).inc()

    def session_closed(self, protocol: str, resource: str) -> None:
        self.sessions_open.labels(protocol, resource).dec()

    def authenticated(self, protocol: str, ok: bool, reason: str) -> None:
        self.authentications.labels(protocol, "ok" if ok else "refused", reason).inc()

    def cancel_request(self, outcome: str) -> None:
        self.cancel_requests.labels(outcome).inc()

    def decision_counts(self, protocol: str) -> defaultdict:
        counts = self.decisions.get(protocol)
        if counts is None:
            counts = self.decisions[protocol] = defaultdict(int)
        return counts

    def latency_histogram(self, protocol: str) -> tuple[tuple[float, ...], list]:
        data = self.latencies.get(protocol)
        if data is None:
            data = self.latencies[protocol] = [0] * (len(LATENCY_BUCKETS) + 1) + [0.0]
        return LATENCY_BUCKETS, data

    def render(self) -> bytes:
        return generate_latest(self.registry)


# Samples merged across workers by the minimum instead of the sum: the sink is up for the gateway only
# if it is up in every worker (fail closed).
_MERGED_BY_MINIMUM = frozenset({"wardgate_audit_sink_up"})


class _Families:
    """A collector that yields fixed metric families (the merged ones), for generate_latest."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self):
        return iter(self.families)


def merge_expositions(texts: Iterable[bytes | str], *, workers: int | None = None,
                      worker_restarts: int | None = None) -> bytes:
    """One exposition for the whole gateway from each worker's :meth:`GatewayMetrics.render`.

    Samples with the same name and label set are summed across workers, except ``*_created`` (the
    earliest creation) and :data:`_MERGED_BY_MINIMUM`; a series only some workers have keeps its value.
    Histograms sum bucket by bucket, which stays cumulative as every worker uses LATENCY_BUCKETS.
    ``workers`` and ``worker_restarts``, when given, are the supervisor's own figures.
    """
    # family name → (type, help, {(sample name, sorted labels): value}), in order of first appearance
    families: dict[str, tuple[str, str, dict[tuple, float]]] = {}
    for text in texts:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(family.name, (family.type, family.documentation, {}))[2]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in merged:
                    merged[key] = sample.value
                elif sample.name.endswith("_created") or sample.name in _MERGED_BY_MINIMUM:
                    merged[key] = min(merged[key], sample.value)
                else:
                    merged[key] += sample.value
    # Timestamps are dropped: a sum of several workers' samples has no single time.
    out: list[Metric] = []
    for name, (typ, documentation, samples) in families.items():
        metric = Metric(name, documentation, typ)
        for (sample_name, labels), value in samples.items():
            metric.add_sample(sample_name, dict(labels), value)
        out.append(metric)
    if workers is not None:
        out.append(GaugeMetricFamily("wardgate_workers", "Worker processes serving connections", value=workers))
    if worker_restarts is not None:
        out.append(CounterMetricFamily("wardgate_worker_restarts", "Worker processes restarted after they died",
                                       value=worker_restarts))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(out))
    return generate_latest(registry)
