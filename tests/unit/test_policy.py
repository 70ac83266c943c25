"""The policy engine: roles from claims, rules per resource, deny-overrides, time windows, the decision
cache, bundle validation errors, and the ``wardgate policy`` command line.

Bundles are small inline YAML documents parsed with :func:`parse_policy`; every decision is taken with
an explicit ``now`` so that time-window rules are deterministic.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from wardgate.core.model import Command, Principal, Verdict
from wardgate.core.policy import PolicyEngine, PolicyError, load_policy, parse_policy
from wardgate.core.sqlclass import classify

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
AGENT_BUNDLE = POLICIES / "ai-agent-default" / "policy.yaml"

# Monday 3 June 2024, 10:00 UTC: a working day, inside office hours.
MONDAY_10_UTC = dt.datetime(2024, 6, 3, 10, 0, tzinfo=dt.timezone.utc).timestamp()


# --- helpers ----------------------------------------------------------------------------------------


def bundle(text: str) -> PolicyEngine:
    return parse_policy(textwrap.dedent(text).encode(), "test-bundle.yaml")


def refused(text: str) -> str:
    """The PolicyError message of a bundle that must not load."""
    with pytest.raises(PolicyError) as error:
        bundle(text)
    return str(error.value)


def principal(subject: str = "agent-7", groups: tuple[str, ...] = (), issuer: str = "https://idp.example.com",
              **claims: Any) -> Principal:
    all_claims = {"iss": issuer, "sub": subject, "groups": list(groups), **claims}
    return Principal(issuer=issuer, subject=subject, groups=tuple(groups), claims=dict(claims),
                     all_claims=all_claims)


AGENT = principal("agent-7", ("ai-agents",))
DBA = principal("dana", ("dba",))
STRANGER = principal("mallory", ("marketing",))


def decide(engine: PolicyEngine, who: Principal, sql: str, resource: str = "db", *, now: float = MONDAY_10_UTC,
           session_age: float = 0.0):
    return engine.decide(who, resource, Command("postgres", "query", sql), classify(sql),
                         session_started=now - session_age, now=now)


def at(year: int, month: int, day: int, hour: int, minute: int = 0, tz: str = "UTC") -> float:
    return dt.datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz)).timestamp()


def wardgate_command() -> list[str]:
    script = Path(sys.executable).parent / "wardgate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "wardgate.cli"]


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([*wardgate_command(), *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


# A bundle for rule-semantics tests: one role per group, rules added per test.
ROLES = """
version: 1
name: t
roles:
  agent:
    match: [{groups: [ai-agents]}]
  dba:
    match: [{groups: [dba]}]
"""


def with_rules(rules: str, extra: str = "") -> PolicyEngine:
    return bundle(ROLES + textwrap.dedent(extra) + "rules:\n" + textwrap.indent(textwrap.dedent(rules), "  "))


# --- roles from claims ----------------------------------------------------------------------------


ROLE_BUNDLE = """
version: 1
name: roles
roles:
  exact-subject:
    match: [{subject: agent-7}]
  glob-subject:
    match: [{subject: "repo:acme/*"}]
  any-of-subjects:
    match: [{subject: [alice, bob]}]
  group-member:
    match: [{groups: [dba, "team-*"]}]
  issuer-glob:
    match: [{issuer: "https://*.example.com"}]
  protected-ref:
    match: [{claims: {ref_protected: true}}]
  production-env:
    match: [{claims: {environment: production}}]
  mfa:
    match: [{claims: {amr: mfa}}]
  both-keys:
    match: [{issuer: https://ci.example.org, claims: {repository: acme/app}}]
  either-matcher:
    match:
      - {groups: [ops]}
      - {claims: {wardgate_role: operator}}
rules:
  - {name: nothing, effect: deny, when: {classes: [admin]}}
"""


@pytest.fixture(scope="module")
def role_engine() -> PolicyEngine:
    return bundle(ROLE_BUNDLE)


@pytest.mark.parametrize("who, expected", [
    pytest.param(principal("agent-7", issuer="https://other.test"), {"exact-subject"}, id="exact-subject"),
    pytest.param(principal("agent-70", issuer="https://other.test"), set(), id="exact-is-not-prefix"),
    pytest.param(principal("Agent-7", issuer="https://other.test"), set(), id="exact-is-case-sensitive"),
    pytest.param(principal("repo:acme/app:ref:refs/heads/main", issuer="https://other.test"), {"glob-subject"},
                 id="glob-subject"),
    pytest.param(principal("repo:acme-evil/app", issuer="https://other.test"), set(), id="glob-needs-its-prefix"),
    pytest.param(principal("bob", issuer="https://other.test"), {"any-of-subjects"}, id="any-of-list"),
    pytest.param(principal("carol", issuer="https://other.test"), set(), id="not-in-any-of-list"),
    pytest.param(principal("x", ("readers", "dba"), issuer="https://other.test"), {"group-member"},
                 id="one-of-several-groups"),
    pytest.param(principal("x", ("team-payments",), issuer="https://other.test"), {"group-member"},
                 id="group-glob"),
    pytest.param(principal("x", ("dbas",), issuer="https://other.test"), set(), id="group-exact"),
    pytest.param(principal("x", issuer="https://idp.example.com"), {"issuer-glob"}, id="issuer-glob"),
    pytest.param(principal("x", issuer="https://idp.example.org"), set(), id="issuer-glob-no-match"),
    pytest.param(principal("x", issuer="https://other.test", ref_protected=True), {"protected-ref"},
                 id="bool-claim-true"),
    pytest.param(principal("x", issuer="https://other.test", ref_protected="true"), {"protected-ref"},
                 id="bool-claim-as-string"),
    pytest.param(principal("x", issuer="https://other.test", ref_protected=False), set(), id="bool-claim-false"),
    pytest.param(principal("x", issuer="https://other.test"), set(), id="missing-claim"),
    pytest.param(principal("x", issuer="https://other.test", environment="production"), {"production-env"},
                 id="string-claim"),
    pytest.param(principal("x", issuer="https://other.test", environment="staging"), set(),
                 id="string-claim-other-value"),
    pytest.param(principal("x", issuer="https://other.test", amr=["pwd", "mfa"]), {"mfa"},
                 id="list-valued-claim-contains"),
    pytest.param(principal("x", issuer="https://other.test", amr=["pwd"]), set(),
                 id="list-valued-claim-lacks"),
    pytest.param(principal("x", issuer="https://ci.example.org", repository="acme/app"), {"both-keys"},
                 id="all-keys-match"),
    pytest.param(principal("x", issuer="https://ci.example.org", repository="acme/other"), set(),
                 id="one-key-of-two-fails"),
    pytest.param(principal("x", ("ops",), issuer="https://other.test"), {"either-matcher"},
                 id="first-matcher"),
    pytest.param(principal("x", issuer="https://other.test", wardgate_role="operator"), {"either-matcher"},
                 id="second-matcher"),
])
def test_roles_from_claims(role_engine, who, expected):
    assert set(role_engine.roles_for(who)) == expected


def test_several_roles_at_once(role_engine):
    who = principal("agent-7", ("dba",), issuer="https://idp.example.com", environment="production")
    assert role_engine.roles_for(who) == ("exact-subject", "group-member", "issuer-glob", "production-env")


def test_claims_only_in_all_claims_are_matched(role_engine):
    # The audit view keeps a few claims; matching uses every claim of the verified token.
    who = Principal(issuer="https://other.test", subject="x", claims={}, all_claims={"environment": "production"})
    assert role_engine.roles_for(who) == ("production-env",)


def test_matcher_without_keys_is_refused():
    message = refused("""
        version: 1
        name: t
        roles:
          everyone:
            match: [{}]
        rules: []
    """)
    assert "roles.everyone.match.0" in message
    assert "at least one of issuer, subject, groups, claims" in message


def test_role_without_matchers_is_refused():
    message = refused("""
        version: 1
        name: t
        roles:
          nobody: {match: []}
        rules: []
    """)
    assert "roles.nobody.match" in message


# --- validation errors name what is wrong -----------------------------------------------------------


def test_rule_naming_an_unknown_role_is_refused():
    message = refused(ROLES + """
rules:
  - {name: ops-read, effect: allow, roles: [agent, operators], when: {classes: [read]}}
""")
    assert "ops-read" in message and "unknown role 'operators'" in message


def test_rule_naming_an_unknown_masking_profile_is_refused():
    message = refused(ROLES + """
rules:
  - {name: agents-read, effect: allow, roles: [agent], when: {classes: [read]}, mask: pii}
masking:
  secrets: {detectors: [jwt]}
""")
    assert "agents-read" in message and "unknown masking profile 'pii'" in message


@pytest.mark.parametrize("text, location", [
    pytest.param(ROLES + "rules:\n  - {name: r, effect: deny, when: {tabels: [t]}}\n", "rules.0.when.tabels",
                 id="when"),
    pytest.param(ROLES + "rules:\n  - {name: r, effect: deny, rolez: [agent]}\n", "rules.0.rolez", id="rule"),
    pytest.param(ROLES + "rules: []\nrulez: []\n", "rulez", id="top-level"),
    pytest.param("version: 1\nname: t\nroles:\n  a: {match: [{grups: [x]}]}\nrules: []\n",
                 "roles.a.match.0.grups", id="matcher"),
    pytest.param(ROLES + "rules: []\nresources:\n  db: {environmnet: production}\n", "resources.db.environmnet",
                 id="resource"),
    pytest.param(ROLES + "rules: []\nmasking:\n  p: {columns: [{match: email, stratgy: hash}]}\n",
                 "masking.p.columns.0.stratgy", id="masking"),
])
def test_unknown_keys_are_refused_by_name(text, location):
    with pytest.raises(PolicyError) as error:
        parse_policy(text.encode(), "bundle.yaml")
    message = str(error.value)
    assert message.startswith("bundle.yaml: invalid policy")
    assert f"{location}: unknown key" in message


@pytest.mark.parametrize("rule, fragment", [
    ("{name: r, effect: review, when: {classes: [write]}}", "needs approvers"),
    ("{name: r, effect: deny, mask: p}", "only allow rules take a mask profile"),
    ("{name: r, effect: allow, when: {hours: '8-18'}}", "hours '8-18' must look like '08:00-18:00'"),
    ("{name: r, effect: allow, when: {timezone: Mars/Olympus_Mons}}", "unknown timezone 'Mars/Olympus_Mons'"),
    ("{name: r, effect: allow, when: {days: [funday]}}", "rules.0.when.days.0"),
    ("{name: r, effect: allow, when: {classes: [reads]}}", "rules.0.when.classes.0"),
    ("{name: r, effect: permit}", "rules.0.effect"),
    ("{name: r, effect: allow, when: {session_older_than: soon}}", "'soon' is not a duration"),
    ("{name: r, effect: review, approvers: [dba], approval: {scope: duration}}", "needs approval.duration"),
])
def test_invalid_rules_are_refused_with_a_reason(rule, fragment):
    message = refused(ROLES + "masking:\n  p: {}\nrules:\n  - " + rule + "\n")
    assert fragment in message


def test_duplicate_rule_names_are_refused():
    message = refused(ROLES + "rules:\n  - {name: r, effect: deny}\n  - {name: r, effect: allow}\n")
    assert "rule names must be unique" in message and "'r'" in message


@pytest.mark.parametrize("raw, fragment", [
    (b"rules: [unclosed", "not valid YAML"),
    (b"- just\n- a list\n", "a policy must be a mapping"),
    (b"", "a policy must be a mapping"),
])
def test_unreadable_bundles_are_refused(raw, fragment):
    with pytest.raises(PolicyError) as error:
        parse_policy(raw, "p.yaml")
    assert str(error.value).startswith("p.yaml: ") and fragment in str(error.value)


def test_missing_file_is_refused_naming_it(tmp_path):
    with pytest.raises(PolicyError) as error:
        load_policy(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(error.value) and "cannot read policy" in str(error.value)


def test_bundle_hash_is_the_sha256_of_the_file_bytes(tmp_path):
    import hashlib

    raw = AGENT_BUNDLE.read_bytes()
    engine = load_policy(AGENT_BUNDLE)
    assert engine.bundle_hash == "sha256:" + hashlib.sha256(raw).hexdigest()
    # Any byte changes the hash, even a comment: the audit record names exactly what was in force.
    assert parse_policy(raw + b"\n# edited\n").bundle_hash != engine.bundle_hash


# --- deny overrides, no rule means deny --------------------------------------------------------------


OVERRIDES = """
- {name: allow-writes, effect: allow, roles: [agent], when: {classes: [read, write]}}
- {name: review-orders, effect: review, roles: [agent], when: {tables: [orders]}, approvers: [dba]}
- {name: deny-payments, effect: deny, roles: [agent], when: {tables: [payments]}}
"""


@pytest.mark.parametrize("sql, verdict, rule", [
    ("UPDATE customers SET x = 1 WHERE id = 1", Verdict.ALLOW, "allow-writes"),
    ("UPDATE orders SET x = 1 WHERE id = 1", Verdict.REVIEW, "review-orders"),
    ("UPDATE payments SET x = 1 WHERE id = 1", Verdict.DENY, "deny-payments"),
    # matched by all three: deny wins, whatever the order of the rules
    ("UPDATE orders SET x = 1 FROM payments WHERE orders.id = payments.id", Verdict.DENY, "deny-payments"),
    # allow and review: review wins
    ("SELECT * FROM orders JOIN customers USING (id)", Verdict.REVIEW, "review-orders"),
])
def test_deny_overrides_review_overrides_allow(sql, verdict, rule):
    for rules in (OVERRIDES, "\n".join(reversed(OVERRIDES.strip().splitlines()))):
        decision = decide(with_rules(rules), AGENT, sql)
        assert (decision.verdict, decision.rule) == (verdict, rule), rules


def test_multi_statement_command_takes_the_strictest_decision():
    engine = with_rules(OVERRIDES)
    assert decide(engine, AGENT, "SELECT 1; UPDATE orders SET x = 1 WHERE id = 1").verdict is Verdict.REVIEW
    decision = decide(engine, AGENT, "UPDATE orders SET x = 1 WHERE id = 1; SELECT * FROM payments; SELECT 1")
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "deny-payments")


def test_no_matching_rule_means_deny():
    engine = with_rules("- {name: agents-read, effect: allow, roles: [agent], when: {classes: [read]}}")
    decision = decide(engine, AGENT, "INSERT INTO t VALUES (1)")
    assert decision.verdict is Verdict.DENY
    assert decision.rule == "builtin:no-matching-rule"
    assert "INSERT" in decision.message and "write" in decision.message
    assert decision.controls == ("AC-3", "AC-6")
    # a principal with no role at all gets nothing either
    stranger = decide(engine, STRANGER, "SELECT 1")
    assert (stranger.verdict, stranger.rule, stranger.roles) == (Verdict.DENY, "builtin:no-matching-rule", ())


def test_rules_for_other_roles_do_not_apply():
    engine = with_rules("- {name: dba-all, effect: allow, roles: [dba], when: {classes: [read, write]}}")
    assert decide(engine, DBA, "DELETE FROM t WHERE id = 1").verdict is Verdict.ALLOW
    assert decide(engine, AGENT, "DELETE FROM t WHERE id = 1").rule == "builtin:no-matching-rule"


def test_a_rule_for_every_role_applies_to_everyone():
    engine = with_rules("- {name: no-drops, effect: deny, when: {verbs: ['DROP *']}}\n"
                        "- {name: dba-all, effect: allow, roles: [dba], when: {classes: [ddl]}}")
    assert decide(engine, DBA, "DROP TABLE t").rule == "no-drops"
    assert decide(engine, STRANGER, "DROP TABLE t").rule == "no-drops"


def test_opaque_commands_are_denied():
    engine = with_rules("- {name: everything, effect: allow, roles: [agent]}")
    decision = engine.decide(AGENT, "db", Command("postgres", "function_call", "fast-path oid=1", language="opaque"),
                             None, session_started=MONDAY_10_UTC, now=MONDAY_10_UTC)
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "builtin:opaque-command")


# --- classes: allow needs every class, deny any -------------------------------------------------------


def test_allow_needs_every_class_of_the_statement_listed():
    engine = with_rules("- {name: agents-read, effect: allow, roles: [agent], when: {classes: [read]}}")
    assert decide(engine, AGENT, "SELECT * FROM t").verdict is Verdict.ALLOW
    # read + admin: a [read] rule does not allow it
    decision = decide(engine, AGENT, "SELECT pg_read_file('/etc/passwd')")
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "builtin:no-matching-rule")
    assert set(decision.classes) == {"read", "admin"}
    # read + write (a data-modifying CTE)
    assert decide(engine, AGENT, "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d").verdict \
        is Verdict.DENY


def test_deny_matches_on_any_class():
    engine = with_rules("- {name: no-admin, effect: deny, when: {classes: [admin]}}\n"
                        "- {name: agents-read, effect: allow, roles: [agent], when: {classes: [read, admin]}}")
    decision = decide(engine, AGENT, "SELECT pg_read_file('/etc/passwd')")
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "no-admin")
    assert decide(engine, AGENT, "SELECT 1").verdict is Verdict.ALLOW


def test_review_matches_on_any_class():
    engine = with_rules("- {name: hold-writes, effect: review, when: {classes: [write]}, approvers: [dba]}\n"
                        "- {name: all, effect: allow, roles: [agent], when: {classes: [read, write]}}")
    assert decide(engine, AGENT, "INSERT INTO t SELECT * FROM u").verdict is Verdict.REVIEW
    assert decide(engine, AGENT, "SELECT * FROM u").verdict is Verdict.ALLOW


# --- tables, verbs, unfiltered, multi_statement ----------------------------------------------------


def test_allow_tables_must_all_match():
    engine = with_rules("- {name: public-read, effect: allow, roles: [agent], "
                        "when: {classes: [read], tables: ['public_*', 'app.*']}}")
    assert decide(engine, AGENT, "SELECT * FROM public_a JOIN app.users USING (id)").verdict is Verdict.ALLOW
    decision = decide(engine, AGENT, "SELECT * FROM public_a JOIN secret_b USING (id)")
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "builtin:no-matching-rule")
    assert decision.tables == ("public_a", "secret_b")
    # schema-qualified names are matched as written: other.users is not app.*
    assert decide(engine, AGENT, "SELECT * FROM other.users").verdict is Verdict.DENY


def test_deny_tables_match_any():
    engine = with_rules("- {name: no-secrets, effect: deny, when: {tables: ['secret_*', '*.credentials']}}\n"
                        "- {name: read, effect: allow, roles: [agent], when: {classes: [read]}}")
    assert decide(engine, AGENT, "SELECT * FROM public_a").verdict is Verdict.ALLOW
    assert decide(engine, AGENT, "SELECT * FROM public_a JOIN secret_b USING (id)").rule == "no-secrets"
    assert decide(engine, AGENT, "SELECT * FROM public_a WHERE id IN (SELECT id FROM secret_x)").rule == \
        "no-secrets"
    assert decide(engine, AGENT, "SELECT * FROM vault.credentials").rule == "no-secrets"
    assert decide(engine, AGENT, "SELECT 1").verdict is Verdict.ALLOW


def test_verb_globs():
    engine = with_rules("- {name: no-drops, effect: deny, when: {verbs: ['drop *', TRUNCATE]}}\n"
                        "- {name: ddl, effect: allow, roles: [agent], when: {classes: [ddl, write]}}")
    for sql in ("DROP TABLE t", "drop index i", "DROP SCHEMA s CASCADE", "TRUNCATE t"):
        assert decide(engine, AGENT, sql).rule == "no-drops", sql
    for sql in ("CREATE TABLE t (id int)", "ALTER TABLE t ADD COLUMN x int"):
        assert decide(engine, AGENT, sql).verdict is Verdict.ALLOW, sql


def test_allow_rule_with_verbs_allows_only_those_verbs():
    engine = with_rules("- {name: inserts-only, effect: allow, roles: [agent], when: {verbs: [INSERT]}}")
    assert decide(engine, AGENT, "INSERT INTO t VALUES (1)").verdict is Verdict.ALLOW
    assert decide(engine, AGENT, "DELETE FROM t WHERE id = 1").verdict is Verdict.DENY


@pytest.mark.parametrize("sql, unfiltered", [
    ("DELETE FROM t", True),
    ("DELETE FROM t WHERE 1 = 1", True),
    ("UPDATE t SET x = 1 WHERE true", True),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", True),
    ("DELETE FROM t WHERE id = 1", False),
    ("UPDATE t SET x = 1 WHERE id > 10", False),
])
def test_unfiltered_writes(sql, unfiltered):
    engine = with_rules("- {name: no-mass-changes, effect: deny, when: {unfiltered: true}}\n"
                        "- {name: writes, effect: allow, roles: [agent], when: {classes: [read, write]}}")
    decision = decide(engine, AGENT, sql)
    if unfiltered:
        assert (decision.verdict, decision.rule) == (Verdict.DENY, "no-mass-changes")
    else:
        assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "writes")


def test_allow_only_filtered_writes():
    engine = with_rules("- {name: filtered, effect: allow, roles: [agent], when: {classes: [write], "
                        "unfiltered: false}}")
    assert decide(engine, AGENT, "DELETE FROM t WHERE id = 1").verdict is Verdict.ALLOW
    assert decide(engine, AGENT, "DELETE FROM t").verdict is Verdict.DENY


def test_multi_statement_condition():
    engine = with_rules("- {name: one-at-a-time, effect: deny, when: {multi_statement: true}}\n"
                        "- {name: read, effect: allow, roles: [agent], when: {classes: [read]}}")
    assert decide(engine, AGENT, "SELECT 1").verdict is Verdict.ALLOW
    decision = decide(engine, AGENT, "SELECT 1; SELECT 2")
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "one-at-a-time")


# --- time windows --------------------------------------------------------------------------------------


def test_office_hours_in_a_timezone():
    engine = with_rules("- {name: office, effect: allow, roles: [agent], when: {classes: [read], "
                        "hours: '08:00-18:00', days: [mon, tue, wed, thu, fri], timezone: Europe/Berlin}}")
    # Monday 3 June 2024 (CEST, UTC+2)
    assert decide(engine, AGENT, "SELECT 1", now=at(2024, 6, 3, 8, 0, "Europe/Berlin")).verdict is Verdict.ALLOW
    assert decide(engine, AGENT, "SELECT 1", now=at(2024, 6, 3, 17, 59, "Europe/Berlin")).verdict is Verdict.ALLOW
    assert decide(engine, AGENT, "SELECT 1", now=at(2024, 6, 3, 18, 0, "Europe/Berlin")).verdict is Verdict.DENY
    assert decide(engine, AGENT, "SELECT 1", now=at(2024, 6, 3, 7, 59, "Europe/Berlin")).verdict is Verdict.DENY
    # 06:30 UTC is 08:30 in Berlin: inside; 17:00 UTC is 19:00 in Berlin: outside
    assert decide(engine, AGENT, "SELECT 1", now=at(2024, 6, 3, 6, 30)).verdict is Verdict.ALLOW
    assert decide(engine, AGENT, "SELECT 1", now=at(2024, 6, 3, 17, 0)).verdict is Verdict.DENY
    # Saturday 8 June, noon: wrong day
    assert decide(engine, AGENT, "SELECT 1", now=at(2024, 6, 8, 12, 0, "Europe/Berlin")).verdict is Verdict.DENY
    # Sunday 23:30 UTC is already Monday 01:30 in Berlin: the day is the local one (and 01:30 is outside hours)
    assert decide(engine, AGENT, "SELECT 1", now=at(2024, 6, 2, 23, 30)).verdict is Verdict.DENY


def test_days_in_the_rules_timezone():
    engine = with_rules("- {name: weekend, effect: allow, roles: [agent], when: {classes: [read], days: [sat, sun], "
                        "timezone: Asia/Tokyo}}")
    # Friday 7 June 2024 16:00 UTC is Saturday 01:00 in Tokyo
    assert decide(engine, AGENT, "SELECT 1", now=at(2024, 6, 7, 16, 0)).verdict is Verdict.ALLOW
    # Friday 7 June 2024 14:00 UTC is Friday 23:00 in Tokyo
    assert decide(engine, AGENT, "SELECT 1", now=at(2024, 6, 7, 14, 0)).verdict is Verdict.DENY


@pytest.mark.parametrize("hour, minute, inside", [
    (22, 0, True), (23, 30, True), (0, 0, True), (5, 59, True),
    (6, 0, False), (12, 0, False), (21, 59, False),
])
def test_overnight_window(hour, minute, inside):
    engine = with_rules("- {name: no-night-writes, effect: deny, when: {classes: [write], hours: '22:00-06:00'}}\n"
                        "- {name: writes, effect: allow, roles: [agent], when: {classes: [write]}}")
    decision = decide(engine, AGENT, "INSERT INTO t VALUES (1)", now=at(2024, 6, 3, hour, minute))
    assert decision.rule == ("no-night-writes" if inside else "writes")


def test_session_older_than():
    engine = with_rules("- {name: stale-sessions, effect: deny, when: {session_older_than: 1h}}\n"
                        "- {name: read, effect: allow, roles: [agent], when: {classes: [read]}}")
    assert decide(engine, AGENT, "SELECT 1", session_age=10).verdict is Verdict.ALLOW
    assert decide(engine, AGENT, "SELECT 1", session_age=3600).verdict is Verdict.ALLOW
    decision = decide(engine, AGENT, "SELECT 1", session_age=3601)
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "stale-sessions")


def test_decision_cache_does_not_serve_stale_answers_for_time_dependent_rules():
    engine = with_rules("- {name: office, effect: allow, roles: [agent], when: {classes: [read], "
                        "hours: '08:00-18:00'}}")
    sql = "SELECT * FROM t WHERE id = 1"
    inside, outside = at(2024, 6, 3, 10), at(2024, 6, 3, 20)
    assert decide(engine, AGENT, sql, now=inside).verdict is Verdict.ALLOW
    assert decide(engine, AGENT, sql, now=outside).verdict is Verdict.DENY
    assert decide(engine, AGENT, sql, now=inside).verdict is Verdict.ALLOW
    # same normalized text, other literal
    assert decide(engine, AGENT, "SELECT * FROM t WHERE id = 2", now=outside).verdict is Verdict.DENY

    # the same with a deny rule, first seen while it does not match
    engine = with_rules("- {name: night, effect: deny, when: {hours: '22:00-06:00'}}\n"
                        "- {name: read, effect: allow, roles: [agent], when: {classes: [read]}}")
    assert decide(engine, AGENT, sql, now=at(2024, 6, 3, 12)).verdict is Verdict.ALLOW
    assert decide(engine, AGENT, sql, now=at(2024, 6, 3, 23)).verdict is Verdict.DENY

    # and for the session's age
    engine = with_rules("- {name: stale, effect: deny, when: {session_older_than: 60}}\n"
                        "- {name: read, effect: allow, roles: [agent], when: {classes: [read]}}")
    assert decide(engine, AGENT, sql, session_age=1).verdict is Verdict.ALLOW
    assert decide(engine, AGENT, sql, session_age=120).verdict is Verdict.DENY
    assert decide(engine, AGENT, sql, session_age=1).verdict is Verdict.ALLOW


@pytest.mark.parametrize("harmless, dangerous, resource", [
    # the classifier reads the setting's name: set_config('role', …) is admin, set_config('search_path', …) not
    ("SELECT set_config('search_path', 'public', false)", "SELECT set_config('role', 'postgres', false)",
     "orders-prod"),
    # a function in an untrusted language is admin; one in SQL is plain DDL (allowed to agents on dev)
    ("CREATE FUNCTION f() RETURNS int LANGUAGE 'sql' AS 'select 1'",
     "CREATE FUNCTION f() RETURNS int LANGUAGE 'plpython3u' AS 'return 1'", "orders-dev"),
], ids=["set_config", "function-language"])
def test_decision_cache_does_not_confuse_statements_that_normalize_alike(harmless, dangerous, resource):
    """Texts sharing a normalized form can classify differently (the classifier then caches them by
    exact text only); a decision taken for one must not be served for the other."""
    assert classify(harmless).normalized == classify(dangerous).normalized  # the premise
    assert classify(harmless).classes != classify(dangerous).classes
    engine = load_policy(AGENT_BUNDLE)
    first = decide(engine, AGENT, harmless, resource)
    assert first.verdict is Verdict.ALLOW, first
    second = decide(engine, AGENT, dangerous, resource)
    assert (second.verdict, second.rule) == (Verdict.DENY, "deny-admin"), second
    assert "admin" in second.classes
    # and the other way round, on a fresh engine
    engine = load_policy(AGENT_BUNDLE)
    assert decide(engine, AGENT, dangerous, resource).rule == "deny-admin"
    assert decide(engine, AGENT, harmless, resource).verdict is Verdict.ALLOW


def test_decision_cache_is_per_role_set_and_resource():
    engine = with_rules("- {name: agents-read, effect: allow, roles: [agent], resources: [orders-*], "
                        "when: {classes: [read]}}")
    assert decide(engine, AGENT, "SELECT 1", "orders-dev").verdict is Verdict.ALLOW
    assert decide(engine, DBA, "SELECT 1", "orders-dev").verdict is Verdict.DENY
    assert decide(engine, AGENT, "SELECT 1", "billing-dev").verdict is Verdict.DENY
    assert decide(engine, AGENT, "SELECT 1", "orders-dev").verdict is Verdict.ALLOW


# --- resources and environments -------------------------------------------------------------------


ENVIRONMENTS = """
resources:
  orders-prod: {environment: production}
  test-prod: {environment: staging}
  "*-prod": {environment: production}
  "*-dev": {environment: development}
"""


def test_environment_of_resources():
    engine = with_rules("- {name: r, effect: deny}", ENVIRONMENTS)
    assert engine.environment_of("orders-prod") == "production"
    assert engine.environment_of("billing-prod") == "production"
    assert engine.environment_of("test-prod") == "staging"  # an exact entry beats a glob
    assert engine.environment_of("orders-dev") == "development"
    assert engine.environment_of("misc") is None


def test_rules_by_environment():
    engine = with_rules("""
        - {name: dev-writes, effect: allow, roles: [agent], environments: [development], when: {classes: [write]}}
        - {name: prod-writes, effect: review, roles: [agent], environments: [production], when: {classes: [write]},
           approvers: [dba]}
        - {name: reads, effect: allow, roles: [agent], when: {classes: [read]}}
    """, ENVIRONMENTS)
    insert = "INSERT INTO t VALUES (1)"
    assert decide(engine, AGENT, insert, "orders-dev").rule == "dev-writes"      # by glob
    assert decide(engine, AGENT, insert, "orders-prod").rule == "prod-writes"    # by exact name
    assert decide(engine, AGENT, insert, "billing-prod").rule == "prod-writes"   # by glob
    # staging, and a resource with no environment at all: no environment rule applies
    assert decide(engine, AGENT, insert, "test-prod").rule == "builtin:no-matching-rule"
    assert decide(engine, AGENT, insert, "misc").rule == "builtin:no-matching-rule"
    # a rule without environments applies everywhere
    for resource in ("orders-dev", "orders-prod", "misc"):
        assert decide(engine, AGENT, "SELECT 1", resource).rule == "reads"


def test_rules_by_resource_glob():
    engine = with_rules("- {name: orders, effect: allow, roles: [agent], resources: 'orders-*', "
                        "when: {classes: [read]}}")
    assert decide(engine, AGENT, "SELECT 1", "orders-dev").verdict is Verdict.ALLOW
    assert decide(engine, AGENT, "SELECT 1", "billing-dev").verdict is Verdict.DENY


# --- what a decision carries ---------------------------------------------------------------------


def test_mask_profile_is_carried_on_allow_only():
    engine = with_rules("""
        - {name: no-drops, effect: deny, when: {verbs: [DROP TABLE]}}
        - {name: read, effect: allow, roles: [agent], when: {classes: [read]}, mask: pii}
        - {name: ddl, effect: allow, roles: [agent], when: {classes: [ddl]}}
    """, "masking:\n  pii:\n    columns: [{match: '*.email', strategy: partial, keep: 4}]\n")
    allowed = decide(engine, AGENT, "SELECT email FROM customers")
    assert (allowed.verdict, allowed.mask_profile) == (Verdict.ALLOW, "pii")
    assert decide(engine, AGENT, "CREATE TABLE x (id int)").mask_profile is None
    assert decide(engine, AGENT, "SELECT 1; DROP TABLE x").mask_profile is None
    assert decide(engine, DBA, "SELECT email FROM customers").mask_profile is None  # denied: nothing to mask


def test_approval_spec_is_carried_on_review():
    engine = with_rules("""
        - name: prod-changes
          effect: review
          roles: [agent]
          when: {classes: [write]}
          approvers: [dba, release-managers]
          approval: {scope: duration, duration: 30m, quorum: 2, timeout: 10m}
        - {name: writes, effect: allow, roles: [agent], when: {classes: [write]}}
    """)
    decision = decide(engine, AGENT, "UPDATE t SET x = 1 WHERE id = 1")
    assert (decision.verdict, decision.rule) == (Verdict.REVIEW, "prod-changes")
    approval = decision.approval
    assert approval.approvers == ("dba", "release-managers")
    assert (approval.scope, approval.seconds, approval.quorum, approval.timeout) == ("duration", 1800.0, 2, 600.0)
    assert "needs approval" in decision.message and "dba" in decision.message
    # defaults
    engine = with_rules("- {name: hold, effect: review, when: {classes: [write]}, approvers: [dba]}")
    approval = decide(engine, AGENT, "INSERT INTO t VALUES (1)").approval
    assert (approval.scope, approval.seconds, approval.quorum, approval.timeout) == ("statement", None, 1, 900.0)
    # no approval on other verdicts
    assert decide(engine, AGENT, "SELECT 1").approval is None


def test_messages():
    engine = with_rules("""
        - {name: no-drops, effect: deny, when: {verbs: [DROP TABLE]}}
        - {name: no-truncate, effect: deny, when: {verbs: [TRUNCATE]}, message: ask a DBA}
    """)
    assert decide(engine, AGENT, "DROP TABLE t").message == "DROP TABLE is denied by rule no-drops"
    assert decide(engine, AGENT, "TRUNCATE t").message == "ask a DBA"


def test_controls_defaults_and_overrides():
    engine = with_rules("""
        - {name: no-drops, effect: deny, when: {verbs: [DROP TABLE]}}
        - {name: no-truncate, effect: deny, when: {verbs: [TRUNCATE]}, controls: [AC-3, CM-5]}
        - {name: hold, effect: review, when: {classes: [write]}, approvers: [dba]}
        - {name: hold-ddl, effect: review, when: {classes: [ddl]}, approvers: [dba], controls: [AC-5]}
        - {name: read, effect: allow, roles: [agent], when: {classes: [read]}, controls: [AC-3, AC-6, AC-21]}
        - {name: session, effect: allow, roles: [agent], when: {classes: [session]}}
    """)
    cases = {
        "DROP TABLE t": ("no-drops", ("AC-3", "AC-6")),
        "TRUNCATE t": ("no-truncate", ("AC-3", "CM-5")),
        "INSERT INTO t VALUES (1)": ("hold", ("AC-3", "AC-5", "AC-6")),
        "CREATE TABLE t (id int)": ("hold-ddl", ("AC-5",)),
        "SELECT 1": ("read", ("AC-3", "AC-6", "AC-21")),
        "SET search_path = app": ("session", ("AC-3", "AC-6")),
        "VACUUM t": ("builtin:no-matching-rule", ("AC-3", "AC-6")),
    }
    for sql, (rule, controls) in cases.items():
        decision = decide(engine, AGENT, sql)
        assert (decision.rule, decision.controls) == (rule, controls), sql


def test_decision_reports_what_it_saw():
    engine = with_rules("- {name: writes, effect: allow, roles: [agent], when: {classes: [read, write]}}")
    decision = decide(engine, AGENT, "INSERT INTO b SELECT * FROM a")
    assert decision.classes == ("read", "write")
    assert decision.tables == ("a", "b")
    assert decision.roles == ("agent",)


@pytest.mark.parametrize("sql", ["", "   ", ";", "-- only a comment", "/* nothing */ ;"])
def test_empty_statement_is_allowed(sql):
    engine = with_rules("- {name: nothing, effect: deny, when: {classes: [read]}}")
    decision = decide(engine, STRANGER, sql)
    assert (decision.verdict, decision.rule) == (Verdict.ALLOW, "builtin:empty-statement")


# --- the shipped bundles ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*/policy.yaml")), ids=lambda p: p.parent.name)
def test_shipped_bundles_load(path):
    engine = load_policy(path)
    assert engine.bundle_hash.startswith("sha256:")
    assert engine.bundle.rules


def test_agent_bundle_semantics():
    engine = load_policy(AGENT_BUNDLE)
    assert decide(engine, AGENT, "SELECT * FROM orders", "orders-prod").rule == "agents-read"
    review = decide(engine, AGENT, "INSERT INTO orders VALUES (1)", "orders-prod")
    assert (review.verdict, review.rule, review.approval.approvers) == (Verdict.REVIEW, "review-prod-changes",
                                                                       ("dba",))
    assert decide(engine, AGENT, "INSERT INTO orders VALUES (1)", "orders-dev").rule == "agents-change-non-prod"
    assert decide(engine, DBA, "DROP TABLE orders", "orders-dev").rule == "deny-destructive"
    assert decide(engine, AGENT, "DELETE FROM orders WHERE 1=1", "orders-dev").rule == "deny-unfiltered-writes"
    assert decide(engine, DBA, "INSERT INTO orders VALUES (1)", "orders-prod").rule == "dba-all"


# --- the command line -----------------------------------------------------------------------------


def test_cli_policy_test_passes_on_the_shipped_bundles():
    result = run_cli("policy", "test", "policies")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    passed, failed = summary.split(" passed, ")
    assert int(passed) >= 26 and failed == "0 failed", summary
    assert "FAIL" not in result.stdout


def test_cli_policy_test_verbose_lists_every_case():
    result = run_cli("policy", "test", "--verbose-cases", str(POLICIES / "ai-agent-default"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   policy_test.yaml: agents read production" in result.stdout


def test_cli_policy_test_failing_case(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    (tmp_path / "policy.yaml").write_bytes(AGENT_BUNDLE.read_bytes())
    (tests / "wrong_test.yaml").write_text(yaml.safe_dump({
        "policy": "../policy.yaml",
        "cases": [
            {"name": "agents read", "claims": {"sub": "a", "groups": ["ai-agents"]}, "resource": "orders-prod",
             "sql": "SELECT 1", "expect": "allow", "rule": "agents-read"},
            {"name": "agents may drop tables (wrong)", "claims": {"sub": "a", "groups": ["ai-agents"]},
             "resource": "orders-dev", "sql": "DROP TABLE orders", "expect": "allow"},
            {"name": "wrong rule named", "claims": {"sub": "a", "groups": ["ai-agents"]}, "resource": "orders-prod",
             "sql": "SELECT 1", "expect": "allow", "rule": "dba-all"},
            {"name": "wrong mask named", "claims": {"sub": "a", "groups": ["ai-agents"]}, "resource": "orders-prod",
             "sql": "SELECT 1", "expect": "allow", "mask": "none"},
        ],
    }))
    result = run_cli("policy", "test", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("FAIL wrong_test.yaml: agents may drop tables (wrong)")
               and "expected allow, got deny" in line and "deny-destructive" in line for line in lines), lines
    assert any(line.startswith("FAIL wrong_test.yaml: wrong rule named") and "expected rule dba-all, got agents-read"
               in line for line in lines), lines
    assert any(line.startswith("FAIL wrong_test.yaml: wrong mask named") and "expected mask none" in line
               for line in lines), lines
    assert not any(line.startswith("FAIL") and "agents read" in line for line in lines)
    assert lines[-1] == "1 passed, 3 failed"


def test_cli_policy_test_time_and_session_age(tmp_path):
    (tmp_path / "policy.yaml").write_text(ROLES + textwrap.dedent("""
        rules:
          - {name: night, effect: deny, when: {hours: '22:00-06:00', timezone: Europe/Berlin}}
          - {name: stale, effect: deny, when: {session_older_than: 1h}}
          - {name: read, effect: allow, roles: [agent], when: {classes: [read]}}
    """))
    (tmp_path / "policy_test.yaml").write_text(yaml.safe_dump({"cases": [
        {"name": "day", "claims": {"groups": ["ai-agents"]}, "resource": "db", "sql": "SELECT 1",
         "expect": "allow", "at": "2024-06-03T10:00:00Z"},
        {"name": "night in Berlin", "claims": {"groups": ["ai-agents"]}, "resource": "db", "sql": "SELECT 1",
         "expect": "deny", "rule": "night", "at": "2024-06-03T21:30:00Z"},
        {"name": "old session", "claims": {"groups": ["ai-agents"]}, "resource": "db", "sql": "SELECT 1",
         "expect": "deny", "rule": "stale", "at": "2024-06-03T10:00:00Z", "session_age": 7200},
    ]}))
    result = run_cli("policy", "test", str(tmp_path / "policy_test.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "3 passed, 0 failed"


def test_cli_policy_test_invalid_test_file(tmp_path):
    (tmp_path / "policy.yaml").write_bytes(AGENT_BUNDLE.read_bytes())
    (tmp_path / "bad_test.yaml").write_text("cases:\n  - {name: x, claims: {}, resource: r, sql: SELECT 1, "
                                            "expect: allow, expectt: deny}\n")
    result = run_cli("policy", "test", str(tmp_path / "bad_test.yaml"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "expectt" in result.stderr


def test_cli_explain_json():
    claims = json.dumps({"iss": "https://idp.example.com", "sub": "agent-7", "groups": ["ai-agents"]})
    result = run_cli("policy", "explain", "--policy", str(AGENT_BUNDLE), "--claims", claims,
                     "--resource", "orders-prod", "--sql", "UPDATE orders SET status = 'x' WHERE id = 1", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) >= {"decision", "rule", "message", "roles", "classes", "tables", "mask", "approvers",
                         "controls", "statements", "parse_error"}
    assert data["decision"] == "review"
    assert data["rule"] == "review-prod-changes"
    assert data["roles"] == ["agent"]
    assert data["classes"] == ["write"] and data["tables"] == ["orders"]
    assert data["approvers"] == ["dba"]
    assert data["controls"] == ["AC-3", "AC-5", "AC-6"]
    assert data["mask"] is None and data["parse_error"] is None
    assert "needs approval" in data["message"]
    [statement] = data["statements"]
    assert statement["verb"] == "UPDATE" and statement["classes"] == ["write"]
    assert statement["tables"] == ["orders"] and statement["unfiltered"] is False
    assert isinstance(statement["functions"], list) and isinstance(statement["reasons"], list)


def test_cli_explain_json_allow_with_mask_and_parse_error(tmp_path):
    claims_file = tmp_path / "claims.json"
    claims_file.write_text(json.dumps({"sub": "agent-7", "groups": ["ai-agents"]}))
    result = run_cli("policy", "explain", "--policy", str(AGENT_BUNDLE), "--claims", str(claims_file),
                     "--resource", "orders-prod", "--sql", "SELECT email FROM customers", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["decision"], data["rule"], data["mask"], data["approvers"]) == ("allow", "agents-read",
                                                                                 "pii-and-secrets", None)
    result = run_cli("policy", "explain", "--policy", str(AGENT_BUNDLE), "--claims", str(claims_file),
                     "--resource", "orders-prod", "--sql", "SELEC 1", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["decision"], data["rule"], data["statements"]) == ("deny", "builtin:unparseable", [])
    assert data["parse_error"]


def test_cli_explain_reads_a_token_without_verifying_it():
    import jwt

    token = jwt.encode({"sub": "dana", "groups": ["dba"]}, "not-a-real-key-only-for-this-test!!", algorithm="HS256")
    result = run_cli("policy", "explain", "--policy", str(AGENT_BUNDLE), "--token", token,
                     "--resource", "orders-prod", "--sql", "VACUUM orders")
    assert result.returncode == 0, result.stderr
    assert "decision: ALLOW" in result.stdout and "dba-all" in result.stdout


def test_cli_schema_is_a_json_schema():
    result = run_cli("policy", "schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert {"name", "roles", "rules"} <= set(schema["required"])
    assert {"version", "name", "roles", "resources", "rules", "masking"} <= set(schema["properties"])
    rules = schema["properties"]["rules"]
    assert rules["type"] == "array" and rules["items"] == {"$ref": "#/$defs/Rule"}
    definitions = schema["$defs"]
    assert {"Rule", "When", "ClaimMatcher", "RoleSpec", "ApprovalSpec", "MaskProfile"} <= set(definitions)
    rule = definitions["Rule"]
    assert rule["additionalProperties"] is False
    assert rule["properties"]["effect"]["enum"] == ["allow", "deny", "review"]
    assert {"name", "effect"} <= set(rule["required"])
    assert definitions["When"]["additionalProperties"] is False
    # every $ref resolves
    text = result.stdout
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/$defs/')[1:]}:
        assert ref in definitions, ref


# A deliberately small JSON Schema checker (jsonschema is not installed): enough for what pydantic emits.
def _schema_errors(value: Any, schema: dict, root: dict, where: str = "") -> list[str]:
    if "$ref" in schema:
        return _schema_errors(value, root["$defs"][schema["$ref"].rsplit("/", 1)[1]], root, where)
    if "anyOf" in schema:
        options = [_schema_errors(value, option, root, where) for option in schema["anyOf"]]
        return [] if any(not o for o in options) else [f"{where or '/'}: {value!r} matches no anyOf option "
                                                       f"({'; '.join(e for o in options for e in o)})"]
    errors = []
    kind = schema.get("type")
    checks = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is not None:
        ok = isinstance(value, checks[kind])
    else:
        ok = True
    if not ok:
        return [f"{where or '/'}: {value!r} is not of type {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r} is not {schema['const']!r}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}/{key}: required")
        for key, item in value.items():
            if key in properties:
                errors.extend(_schema_errors(item, properties[key], root, f"{where}/{key}"))
            elif isinstance(schema.get("additionalProperties"), dict):
                errors.extend(_schema_errors(item, schema["additionalProperties"], root, f"{where}/{key}"))
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}/{key}: additional property")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors.extend(_schema_errors(item, schema["items"], root, f"{where}/{index}"))
    return errors


def test_schema_checker_finds_errors():
    schema = json.loads(run_cli("policy", "schema").stdout)
    assert _schema_errors({"name": "x", "roles": {}, "rules": [{"name": "r", "effect": "permit"}]}, schema, schema)
    assert _schema_errors({"name": "x", "roles": {}, "rules": [], "rulez": []}, schema, schema)


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*/policy.yaml")), ids=lambda p: p.parent.name)
def test_shipped_bundles_conform_to_the_published_schema(path):
    """An editor validating with ``wardgate policy schema`` must accept what the gateway accepts: the
    shipped bundles use durations such as ``15m``, scalar strings where lists are also allowed
    (``issuer: https://…``, ``roles: agent``) and scalar claim values."""
    schema = json.loads(run_cli("policy", "schema").stdout)
    errors = _schema_errors(yaml.safe_load(path.read_text()), schema, schema)
    assert not errors, "\n".join(errors)


def test_cli_validate():
    result = run_cli("policy", "validate", str(AGENT_BUNDLE))
    assert result.returncode == 0, result.stderr
    assert "valid policy 'ai-agent-default'" in result.stdout and "sha256:" in result.stdout


def test_cli_validate_bad_file_names_the_key(tmp_path):
    bad = tmp_path / "policy.yaml"
    bad.write_text(AGENT_BUNDLE.read_text().replace("  - name: deny-admin\n", "  - name: deny-admin\n"
                                                                                "    efect: deny\n", 1))
    result = run_cli("policy", "validate", str(bad))
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(bad) in result.stderr
    assert "rules.2.efect: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_validate_missing_file(tmp_path):
    result = run_cli("policy", "validate", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "missing.yaml" in result.stderr and "Traceback" not in result.stderr


def test_statements_needing_different_masks_are_refused_and_max_rows_takes_the_smallest():
    engine = parse_policy(b"""
version: 1
name: t
roles: {agent: {match: [{groups: [a]}]}}
rules:
  - {name: people, effect: allow, roles: [agent], when: {classes: [read], tables: [people]}, mask: p1, max_rows: 10}
  - {name: cards, effect: allow, roles: [agent], when: {classes: [read], tables: [cards]}, mask: p2, max_rows: 3}
  - {name: plain, effect: allow, roles: [agent], when: {classes: [read], tables: [things]}, max_rows: 7}
masking:
  p1: {detectors: [email]}
  p2: {detectors: [credit_card]}
""")
    principal = Principal("https://i", "s", groups=("a",))

    def decide(sql):
        return engine.decide(principal, "r", Command("postgres", "query", sql), classify(sql),
                             session_started=0, now=0)

    mixed = decide("SELECT * FROM people; SELECT * FROM cards")
    assert mixed.verdict is Verdict.DENY and mixed.rule == "builtin:conflicting-masks"
    one = decide("SELECT * FROM people; SELECT * FROM things")
    assert one.verdict is Verdict.ALLOW and one.mask_profile == "p1" and one.max_rows == 7
    assert decide("SELECT * FROM things").max_rows == 7 and decide("SELECT * FROM things").mask_profile is None
