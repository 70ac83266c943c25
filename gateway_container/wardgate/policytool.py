"""``wardgate policy …``: validate, explain and test policy bundles offline, as users do in CI.

A policy test file (YAML) lists cases; each names who (claims), where (resource), what (sql) and the
expected decision::

    policy: policy.yaml            # relative to the test file; default: policy.yaml beside it
    cases:
      - name: agents may read
        claims: {iss: https://token.actions.githubusercontent.com, sub: repo:acme/app:ref:refs/heads/main,
                 repository: acme/app, groups: [ai-agents]}
        resource: orders-prod
        sql: SELECT * FROM orders WHERE id = 1
        expect: allow              # allow | deny | review
        rule: agents-read          # optional: the rule that must decide
        mask: pii                  # optional: the masking profile that must apply
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wardgate.core.model import Command, Decision, Principal, Verdict
from wardgate.core.policy import PolicyEngine, PolicyError, load_policy
from wardgate.core.sqlclass import Classification, SqlParseError, classify


class _Case(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    claims: dict[str, Any]
    resource: str
    sql: str
    expect: Literal["allow", "deny", "review"]
    rule: str | None = None
    mask: str | None = None
    session_age: float = 0.0
    at: str | None = None  # ISO time the statement is evaluated at (time-window rules)


class _TestFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: str = "policy.yaml"
    cases: list[_Case] = Field(min_length=1)


def principal_from_claims(claims: dict[str, Any], groups_claim: str = "groups") -> Principal:
    groups = claims.get(groups_claim, ())
    if isinstance(groups, str):
        groups = (groups,)
    return Principal(issuer=str(claims.get("iss", "")), subject=str(claims.get("sub", "")),
                     groups=tuple(groups), claims=dict(claims), all_claims=dict(claims))


def claims_from_token(token: str) -> dict[str, Any]:
    """Read a token's claims WITHOUT verifying it: explain is a dry run, not an authentication."""
    try:
        return jwt.decode(token, options={"verify_signature": False})
    except jwt.DecodeError as exc:
        raise ValueError(f"not a JWT: {exc}") from None


@dataclass
class Explanation:
    decision: Decision
    classification: Classification | None
    parse_error: str | None

    def as_dict(self) -> dict[str, Any]:
        statements = []
        if self.classification is not None:
            for statement in self.classification.statements:
                statements.append({"verb": statement.verb, "classes": sorted(statement.classes),
                                   "tables": sorted(statement.tables), "unfiltered": statement.unfiltered,
                                   "functions": sorted(statement.functions), "reasons": list(statement.reasons)})
        d = self.decision
        return {"decision": d.verdict.value, "rule": d.rule, "message": d.message or None, "roles": list(d.roles),
                "classes": list(d.classes), "tables": list(d.tables), "mask": d.mask_profile,
                "approvers": list(d.approval.approvers) if d.approval else None, "controls": list(d.controls),
                "statements": statements, "parse_error": self.parse_error}


def explain(engine: PolicyEngine, principal: Principal, resource: str, sql: str, *,
            session_age: float = 0.0, now: float | None = None) -> Explanation:
    now = time.time() if now is None else now
    try:
        classification = classify(sql)
    except SqlParseError as exc:
        decision = Decision(Verdict.DENY, "builtin:unparseable", f"statement refused: it cannot be parsed ({exc})",
                            ("AC-3", "SI-10"), roles=engine.roles_for(principal))
        return Explanation(decision, None, str(exc))
    decision = engine.decide(principal, resource, Command("postgres", "query", sql), classification,
                             session_started=now - session_age, now=now)
    return Explanation(decision, classification, None)


def run_tests(path: Path) -> tuple[int, int, list[str]]:
    """Run one policy test file. Returns (passed, failed, report lines)."""
    try:
        data = yaml.safe_load(path.read_text())
        spec = _TestFile.model_validate(data)
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(f"{path}: cannot read policy tests: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PolicyError(f"{path}: invalid policy test file: {problems}") from None
    engine = load_policy(path.parent / spec.policy)
    passed, failed, lines = 0, 0, []
    for case in spec.cases:
        now = _parse_time(case.at) if case.at else time.time()
        result = explain(engine, principal_from_claims(case.claims), case.resource, case.sql,
                         session_age=case.session_age, now=now)
        d = result.decision
        problems = []
        if d.verdict.value != case.expect:
            problems.append(f"expected {case.expect}, got {d.verdict.value} (rule {d.rule}: {d.message or '-'})")
        if case.rule is not None and d.rule != case.rule:
            problems.append(f"expected rule {case.rule}, got {d.rule}")
        if case.mask is not None and d.mask_profile != case.mask:
            problems.append(f"expected mask {case.mask}, got {d.mask_profile}")
        if problems:
            failed += 1
            lines.append(f"FAIL {path.name}: {case.name}: " + "; ".join(problems))
        else:
            passed += 1
            lines.append(f"ok   {path.name}: {case.name}")
    return passed, failed, lines


def _parse_time(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def format_explanation(result: Explanation) -> str:
    data = result.as_dict()
    lines = [f"decision: {data['decision'].upper()}  (rule: {data['rule']})"]
    if data["message"]:
        lines.append(f"message:  {data['message']}")
    lines.append(f"roles:    {', '.join(data['roles']) or '(none matched)'}")
    if data["mask"]:
        lines.append(f"masking:  profile {data['mask']}")
    if data["approvers"]:
        lines.append(f"approvers: {', '.join(data['approvers'])}")
    lines.append(f"controls: {', '.join(data['controls'])}")
    for index, statement in enumerate(data["statements"], 1):
        lines.append(f"statement {index}: {statement['verb']}  classes={','.join(statement['classes'])}"
                     f"  tables={','.join(statement['tables']) or '-'}"
                     + ("  UNFILTERED" if statement["unfiltered"] else ""))
        for reason in statement["reasons"]:
            lines.append(f"    - {reason}")
    return "\n".join(lines)


def schema_json() -> str:
    from wardgate.core.policy import policy_json_schema

    return json.dumps(policy_json_schema(), indent=2)
