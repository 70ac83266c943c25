"""/metrics as the core feeds it: sessions count decisions and latencies into the structures the
observer hands out, and a scrape shows the totals of every session of the protocol."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from wardgate.core.audit import Recorder
from wardgate.core.model import Command, Principal
from wardgate.core.policy import AllowAll
from wardgate.core.session import DecisionCore, NullObserver
from wardgate.metrics import GatewayMetrics


def _samples(metrics: GatewayMetrics) -> dict[tuple, float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _session(core: DecisionCore, name: str):
    session = core.open_session(protocol="postgres", resource="orders", peer=name, tls=False, client={})
    session.principal = Principal("https://issuer.example", name)
    return session


def test_decisions_and_latencies_of_all_sessions_reach_the_scrape() -> None:
    metrics = GatewayMetrics()
    core = DecisionCore(verifier=None, policy=AllowAll(), recorder=Recorder(None), gateway_id="t", observer=metrics)
    first, second = _session(core, "alice"), _session(core, "bob")
    first.decide(Command("postgres", "query", "SELECT 1"))
    second.decide(Command("postgres", "query", "SELECT 2"))
    second.decide(Command("postgres", "query", "SELEC nonsense"))  # unparseable: refused
    first.result("e1", "ok", 1, "SELECT 1", None, 0.003)
    second.result("e2", "ok", 1, "SELECT 1", None, 2.0)
    second.result("e3", "refused")  # no duration: not a latency

    samples = _samples(metrics)
    decisions = "wardgate_decisions_total"
    assert samples[(decisions, (("protocol", "postgres"), ("verdict", "allow")))] == 2
    assert samples[(decisions, (("protocol", "postgres"), ("verdict", "deny")))] == 1
    bucket = "wardgate_command_seconds_bucket"
    assert samples[(bucket, (("le", "0.0025"), ("protocol", "postgres")))] == 0
    assert samples[(bucket, (("le", "0.005"), ("protocol", "postgres")))] == 1
    assert samples[(bucket, (("le", "1.0"), ("protocol", "postgres")))] == 1
    assert samples[(bucket, (("le", "2.5"), ("protocol", "postgres")))] == 2
    assert samples[(bucket, (("le", "+Inf"), ("protocol", "postgres")))] == 2
    assert samples[("wardgate_command_seconds_count", (("protocol", "postgres"),))] == 2
    assert abs(samples[("wardgate_command_seconds_sum", (("protocol", "postgres"),))] - 2.003) < 1e-9


def test_a_latency_on_a_bucket_bound_counts_in_that_bucket() -> None:
    metrics = GatewayMetrics()
    core = DecisionCore(verifier=None, policy=AllowAll(), recorder=Recorder(None), gateway_id="t", observer=metrics)
    _session(core, "alice").result("e1", "ok", 0, "SELECT 0", None, 0.005)  # le="0.005" means <= 0.005
    samples = _samples(metrics)
    assert samples[("wardgate_command_seconds_bucket", (("le", "0.0025"), ("protocol", "postgres")))] == 0
    assert samples[("wardgate_command_seconds_bucket", (("le", "0.005"), ("protocol", "postgres")))] == 1


def test_without_an_observer_sessions_still_decide_and_finish() -> None:
    core = DecisionCore(verifier=None, policy=AllowAll(), recorder=Recorder(None), gateway_id="t")
    assert isinstance(core.observer, NullObserver)
    session = _session(core, "alice")
    decision, _ = session.decide(Command("postgres", "query", "SELECT 1"))
    assert decision.verdict == "allow"
    session.result("e1", "ok", 1, "SELECT 1", None, 0.01)
