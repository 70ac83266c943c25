"""`make bench` reports what recording costs as issue 4 defines it: the share of the recording-off
TPS lost, per protocol, from runs of the same round (never across rounds)."""

from __future__ import annotations

import pytest


def test_cost_is_per_round_then_median_and_judged_only_for_the_default_mode(bench) -> None:
    Run = bench.Run
    runs = [
        Run("direct", "-", "simple", 0, tps=20000), Run("gateway", "off", "simple", 0, tps=10000),
        Run("gateway", "write", "simple", 0, tps=9000), Run("gateway", "always", "simple", 0, tps=2000),
        # round 1 is slower overall: per-round ratios, not a ratio of medians
        Run("gateway", "off", "simple", 1, tps=5000), Run("gateway", "write", "simple", 1, tps=4000),
        Run("gateway", "always", "simple", 1, tps=1000),
        Run("gateway", "off", "extended", 0, tps=8000), Run("gateway", "write", "extended", 0, tps=7600),
        Run("gateway", "write", "extended", 1, tps=1000),  # no `off` run in round 1: not compared
    ]
    lines = {(line["audit"], line["protocol"]): line for line in bench.summarize_recording_cost(runs, ["simple", "extended"])}
    assert lines[("write", "simple")]["cost"] == pytest.approx(0.15)  # median of 0.10 and 0.20
    assert lines[("write", "simple")]["pass"] is True
    assert lines[("always", "simple")]["cost"] == pytest.approx(0.80) and "pass" not in lines[("always", "simple")]
    assert lines[("write", "extended")]["cost"] == pytest.approx(0.05) and lines[("write", "extended")]["rounds"] == 1
    failing = bench.summarize_recording_cost([Run("gateway", "off", "simple", 0, tps=100),
                                              Run("gateway", "write", "simple", 0, tps=80)], ["simple"])
    assert failing[0]["pass"] is False
    assert bench.summarize_recording_cost([Run("gateway", "write", "simple", 0, tps=80)], ["simple"]) == []


def test_the_pass_through_reference_gets_a_ratio_per_round_and_no_verdict(bench) -> None:
    Run = bench.Run
    runs = [
        Run("gateway", "write", "simple", 0, tps=9000), Run("passthrough", "-", "simple", 0, tps=12000),
        Run("direct", "-", "simple", 0, tps=20000),
        Run("direct", "-", "simple", 1, tps=10000), Run("passthrough", "-", "simple", 1, tps=7000),
        Run("gateway", "write", "simple", 1, tps=4000),
    ]
    lines = bench.summarize(runs)
    assert [line["path"] for line in lines] == ["direct", "passthrough", "gateway"]
    passthrough = lines[1]
    assert passthrough["ratio"] == pytest.approx(0.65)  # median of 0.60 and 0.70, each against its round
    assert "pass" not in passthrough and "target" not in passthrough
    assert lines[2]["pass"] is False  # 0.45 and 0.40 against the 0.50 target
