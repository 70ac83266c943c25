"""Policy as code: which identity may run which command on which resource, now.

A bundle is one YAML file (schema: :class:`PolicyBundle`, published as JSON Schema by
``wardgate policy schema``). Evaluation, per statement of a command:

1. the principal's **roles** are every role one of whose matchers matches the token's claims;
2. the **rules** that apply are those naming one of those roles (or ``*``) and the resource (by name
   glob or environment);
3. **deny overrides**: a matching ``deny`` rule refuses; else a matching ``review`` rule holds the
   statement for approval; else a matching ``allow`` rule allows; **no matching rule means deny**.

How ``when`` conditions match depends on the effect, so that a rule reads as it would be said aloud:
an ``allow`` rule lists what is permitted — *every* class of the statement must be listed and *every*
table it touches must match; ``deny`` and ``review`` rules list what is forbidden or sensitive — *any*
listed class or table is enough. A multi-statement command gets the strictest of its statements'
decisions.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator,
                      model_validator)

from wardgate.config import Duration, validate_yaml
from wardgate.core.approval import MAX_APPROVAL_TIMEOUT
from wardgate.core.model import Approval, Command, Decision, Principal, Verdict
from wardgate.core.sqlclass import Classification

ClassName = Literal["read", "write", "ddl", "dcl", "admin", "session", "transaction", "copy_out", "copy_in",
                    "copy_program", "call", "unknown"]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

DEFAULT_CONTROLS = {"allow": ("AC-3", "AC-6"), "deny": ("AC-3", "AC-6"), "review": ("AC-3", "AC-5", "AC-6")}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _claim_patterns(value: Any) -> Any:
    """A claim condition: a glob, a list of globs, or a boolean/number compared as text."""
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, (int, float)):
        return [str(value)]
    if isinstance(value, list):
        return [("true" if v else "false") if isinstance(v, bool) else str(v) if isinstance(v, (int, float)) else v
                for v in value]
    return _as_list(value)


_ONE_OR_MANY = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
# A string or a list of strings in the file; always a list once loaded.
Globs = Annotated[list[str], BeforeValidator(_as_list), WithJsonSchema(_ONE_OR_MANY)]
ClaimPatterns = Annotated[list[str], BeforeValidator(_claim_patterns), WithJsonSchema({
    "anyOf": [{"type": "string"}, {"type": "boolean"}, {"type": "number"},
              {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "boolean"}, {"type": "number"}]}}]})]


class ClaimMatcher(_Strict):
    """All given keys must match. Strings are globs (``acme/*``); a list means any of them."""

    issuer: Globs | None = None
    subject: Globs | None = None
    groups: Globs | None = None  # any of the principal's groups matches any glob
    claims: dict[str, ClaimPatterns] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _not_empty(self) -> "ClaimMatcher":
        if self.issuer is None and self.subject is None and self.groups is None and not self.claims:
            raise ValueError("a matcher needs at least one of issuer, subject, groups, claims "
                             "(an empty matcher would match every token)")
        return self

    def matches(self, principal: Principal) -> bool:
        if self.issuer is not None and not _any_glob(principal.issuer, self.issuer):
            return False
        if self.subject is not None and not _any_glob(principal.subject, self.subject):
            return False
        if self.groups is not None and not any(_any_glob(g, self.groups) for g in principal.groups):
            return False
        for name, patterns in self.claims.items():
            value = principal.all_claims.get(name, principal.claims.get(name))
            values = value if isinstance(value, list) else [value]
            if not any(v is not None and _any_glob(_claim_text(v), patterns) for v in values):
                return False
        return True


class RoleSpec(_Strict):
    description: str = ""
    match: list[ClaimMatcher] = Field(min_length=1)


class ResourceSpec(_Strict):
    environment: str | None = None
    description: str = ""


class When(_Strict):
    classes: list[ClassName] | None = None
    verbs: list[str] | None = None          # globs on the statement's verb: "DROP *", "TRUNCATE"
    tables: list[str] | None = None         # globs on "schema.table" or "table" as written
    functions: list[str] | None = None      # deny/review: any called function matches
    unfiltered: bool | None = None          # UPDATE/DELETE without a real filter
    multi_statement: bool | None = None
    hours: str | None = None                # "08:00-18:00" in ``timezone``; outside it the rule does not match
    days: list[Day] | None = None
    timezone: str = "UTC"
    session_older_than: Duration | None = None

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            _parse_hours(value)
        except ValueError:
            raise ValueError(f"hours {value!r} must look like '08:00-18:00'") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}") from None
        return value

    @field_validator("verbs")
    @classmethod
    def _upper(cls, value: list[str] | None) -> list[str] | None:
        return [v.upper() for v in value] if value is not None else None

    @property
    def time_dependent(self) -> bool:
        return self.hours is not None or self.days is not None or self.session_older_than is not None


class ApprovalSpec(_Strict):
    scope: Literal["statement", "session", "duration"] = "statement"
    duration: Duration | None = None
    quorum: int = Field(1, ge=1)
    # How long a held statement waits for a decision (at most core.approval.MAX_APPROVAL_TIMEOUT).
    timeout: Duration = 900.0

    @model_validator(mode="after")
    def _duration(self) -> "ApprovalSpec":
        if self.scope == "duration" and not self.duration:
            raise ValueError("approval.scope 'duration' needs approval.duration (e.g. 30m)")
        if not 0 < self.timeout <= MAX_APPROVAL_TIMEOUT:
            raise ValueError(f"approval.timeout must be more than 0 and at most {MAX_APPROVAL_TIMEOUT / 3600:g}h, "
                             f"not {self.timeout:g}s")
        return self


class Rule(_Strict):
    name: str
    effect: Literal["allow", "deny", "review"]
    roles: Globs = Field(default_factory=lambda: ["*"])
    resources: Globs = Field(default_factory=lambda: ["*"])
    environments: list[str] | None = None
    when: When = When()
    message: str | None = None
    controls: list[str] | None = None
    approvers: list[str] = Field(default_factory=list)  # roles or groups allowed to approve
    approval: ApprovalSpec = ApprovalSpec()
    mask: str | None = None  # masking profile for results this rule allows
    # At most this many rows of a result this rule allows reach the client; past it the rest is
    # withheld and the session closed (nothing half-read is left running).
    max_rows: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _review_needs_approvers(self) -> "Rule":
        if self.effect == "review" and not self.approvers:
            raise ValueError(f"rule {self.name!r}: effect 'review' needs approvers")
        if self.effect != "allow" and self.mask is not None:
            raise ValueError(f"rule {self.name!r}: only allow rules take a mask profile")
        if self.effect != "allow" and self.max_rows is not None:
            raise ValueError(f"rule {self.name!r}: only allow rules take max_rows")
        return self


class MaskColumn(_Strict):
    match: str                               # "schema.table.column", "table.column" or "column" globs
    strategy: Literal["redact", "partial", "hash", "null"] = "redact"
    keep: int = Field(4, ge=0)


class MaskProfile(_Strict):
    columns: list[MaskColumn] = Field(default_factory=list)
    detectors: list[str] = Field(default_factory=list)
    detector_strategy: Literal["redact", "partial", "hash", "null"] = "redact"
    # Values in result columns computed by an expression (no source table) of a statement touching a
    # masked column's table are redacted whole: lower(email) must not leak what email would.
    redact_computed: bool = True


class PolicyBundle(_Strict):
    version: Literal[1] = 1
    name: str
    description: str = ""
    roles: dict[str, RoleSpec]
    resources: dict[str, ResourceSpec] = Field(default_factory=dict)
    rules: list[Rule]
    masking: dict[str, MaskProfile] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> "PolicyBundle":
        names = [rule.name for rule in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique: {duplicates}")
        for rule in self.rules:
            for role in rule.roles:
                if role != "*" and role not in self.roles:
                    raise ValueError(f"rule {rule.name!r} names unknown role {role!r}")
            if rule.mask is not None and rule.mask not in self.masking:
                raise ValueError(f"rule {rule.name!r} names unknown masking profile {rule.mask!r}")
        return self


class PolicyError(Exception):
    """A policy file that cannot be used; the message names the file and the bad key."""


class Policy(Protocol):
    bundle_hash: str

    def decide(self, principal: Principal, resource: str, command: Command,
               classification: Classification | None, *, session_started: float, now: float) -> Decision: ...


def _claim_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _any_glob(value: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def _parse_hours(text: str) -> tuple[_dt.time, _dt.time]:
    start, end = text.split("-")
    return _dt.time.fromisoformat(start.strip()), _dt.time.fromisoformat(end.strip())


@dataclass(frozen=True, slots=True)
class _Verdict:
    verdict: Verdict
    rule: Rule | None
    message: str


class PolicyEngine:
    """Evaluates one loaded bundle. Thread-compatible: immutable after construction."""

    def __init__(self, bundle: PolicyBundle, bundle_hash: str, source: str = "<memory>"):
        self.bundle = bundle
        self.bundle_hash = bundle_hash
        self.source = source
        self._role_rules: dict[tuple[tuple[str, ...], str], tuple[Rule, ...]] = {}
        self._cache: dict[tuple, Decision] = {}
        self._time_dependent: dict[int, tuple] = {}

    # --- roles and applicable rules ---------------------------------------------------------------
    def environment_of(self, resource: str) -> str | None:
        """The resource's environment: an exact entry wins, else the first glob that matches."""
        spec = self.bundle.resources.get(resource)
        if spec is None:
            spec = next((s for pattern, s in self.bundle.resources.items() if fnmatch.fnmatchcase(resource, pattern)),
                        None)
        return spec.environment if spec is not None else None

    def roles_for(self, principal: Principal) -> tuple[str, ...]:
        return tuple(sorted(name for name, role in self.bundle.roles.items()
                            if any(m.matches(principal) for m in role.match)))

    def _rules_for(self, roles: tuple[str, ...], resource: str) -> tuple[Rule, ...]:
        key = (roles, resource)
        rules = self._role_rules.get(key)
        if rules is None:
            environment = self.environment_of(resource)
            rules = tuple(
                rule for rule in self.bundle.rules
                if ("*" in rule.roles or any(r in rule.roles for r in roles))
                and _any_glob(resource, rule.resources)
                and (rule.environments is None or (environment is not None and environment in rule.environments))
            )
            self._role_rules[key] = rules
        return rules

    # --- decisions ----------------------------------------------------------------------------------
    def decide(self, principal: Principal, resource: str, command: Command,
               classification: Classification | None, *, session_started: float, now: float,
               roles: tuple[str, ...] | None = None) -> Decision:
        if roles is None:
            roles = self.roles_for(principal)
        rules = self._rules_for(roles, resource)
        if classification is None:
            # Not SQL (e.g. a fast-path function call): only rules without statement conditions apply
            return self._opaque(command, roles, rules)
        cached_rules = self._time_dependent.get(id(rules))  # rules tuples are cached: stable identity
        if cached_rules is not None and cached_rules[0] is rules:
            time_dependent = cached_rules[1]
        else:
            time_dependent = any(rule.when.time_dependent for rule in rules)
            self._time_dependent[id(rules)] = (rules, time_dependent)
        # Keyed by the classification object itself (the classifier returns the same object for the
        # same statement shape), and confirmed by identity: two texts that normalize alike but
        # classify differently have different objects, so neither can borrow the other's decision.
        key = (roles, resource, id(classification))
        if not time_dependent:
            cached = self._cache.get(key)
            if cached is not None and cached[0] is classification:
                return cached[1]
        decision = self._evaluate(classification, roles, rules, session_started, now)
        if time_dependent:
            return replace(decision, volatile=True)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key] = (classification, decision)
        return decision

    def _opaque(self, command: Command, roles: tuple[str, ...], rules: Sequence[Rule]) -> Decision:
        return Decision(Verdict.DENY, "builtin:opaque-command",
                        f"{command.kind} requests carry no statement the policy can inspect; refused",
                        ("AC-3",), roles=roles)

    def _evaluate(self, classification: Classification, roles: tuple[str, ...], rules: Sequence[Rule],
                  session_started: float, now: float) -> Decision:
        classes = tuple(sorted(classification.classes))
        tables = tuple(sorted(classification.tables))
        if not classification.statements:
            return Decision(Verdict.ALLOW, "builtin:empty-statement", "", ("AC-3",), roles=roles)
        worst: _Verdict | None = None
        masks: set[str] = set()
        limits: list[int] = []
        for statement in classification.statements:
            result = self._statement_verdict(statement, classification, rules, session_started, now)
            if result.verdict is Verdict.ALLOW and result.rule is not None:
                if result.rule.mask:
                    masks.add(result.rule.mask)
                if result.rule.max_rows is not None:
                    limits.append(result.rule.max_rows)
            if worst is None or _SEVERITY[result.verdict] > _SEVERITY[worst.verdict]:
                worst = result
        if len(masks) > 1 and worst.verdict is Verdict.ALLOW:
            # One result stream, one profile: rather than mask with only one of them, refuse.
            return Decision(Verdict.DENY, "builtin:conflicting-masks",
                            f"the statements of this command need different masking profiles "
                            f"({', '.join(sorted(masks))}); send them separately", ("AC-3", "SC-28"),
                            classes, tables, roles)
        rule = worst.rule
        controls = tuple(rule.controls) if rule is not None and rule.controls else DEFAULT_CONTROLS[worst.verdict.value]
        approval = None
        if worst.verdict is Verdict.REVIEW:
            spec = rule.approval
            approval = Approval(tuple(rule.approvers), spec.scope, spec.duration, spec.quorum, spec.timeout)
        return Decision(worst.verdict, rule.name if rule is not None else "builtin:no-matching-rule",
                        worst.message, controls, classes, tables, roles,
                        mask_profile=next(iter(masks)) if masks and worst.verdict is Verdict.ALLOW else None,
                        approval=approval,
                        max_rows=min(limits) if limits and worst.verdict is Verdict.ALLOW else None)

    def _statement_verdict(self, statement, classification: Classification, rules: Sequence[Rule],
                           session_started: float, now: float) -> _Verdict:
        review: Rule | None = None
        allow: Rule | None = None
        for rule in rules:
            effect = rule.effect
            if effect == "allow":
                if allow is None and _matches(rule.when, statement, classification, session_started, now,
                                              every=True):
                    allow = rule
            elif _matches(rule.when, statement, classification, session_started, now, every=False):
                if effect == "deny":
                    return _Verdict(Verdict.DENY, rule, rule.message or _describe(rule, statement))
                if review is None:
                    review = rule
        if review is not None:
            return _Verdict(Verdict.REVIEW, review, review.message or f"{statement.verb} needs approval "
                            f"(rule {review.name}, approvers: {', '.join(review.approvers)})")
        if allow is not None:
            return _Verdict(Verdict.ALLOW, allow, "")
        return _Verdict(Verdict.DENY, None, f"no rule allows {statement.verb} "
                        f"({', '.join(sorted(statement.classes))}) for your roles on this resource")


_SEVERITY = {Verdict.ALLOW: 0, Verdict.REVIEW: 1, Verdict.DENY: 2}


def _describe(rule: Rule, statement) -> str:
    return f"{statement.verb} is denied by rule {rule.name}"


def _time_ok(when: When, session_started: float, now: float) -> bool:
    if when.session_older_than is not None and now - session_started <= when.session_older_than:
        return False
    if when.hours is None and when.days is None:
        return True
    local = _dt.datetime.fromtimestamp(now, ZoneInfo(when.timezone))
    if when.days is not None and _DAYS[local.weekday()] not in when.days:
        return False
    if when.hours is not None:
        start, end = _parse_hours(when.hours)
        current = local.time()
        inside = start <= current < end if start <= end else (current >= start or current < end)
        if not inside:
            return False
    return True


def _matches(when: When, statement, classification: Classification, session_started: float, now: float,
             *, every: bool) -> bool:
    """``every=True`` for allow rules: every class, table and function of the statement must be
    listed. ``every=False`` for deny and review rules: any listed one is enough."""
    quantifier = all if every else any
    if when.classes is not None:
        listed = set(when.classes)
        if not (statement.classes <= listed if every else statement.classes & listed):
            return False
    if when.verbs is not None and not _any_glob(statement.verb, when.verbs):
        return False
    if when.tables is not None and not quantifier(_any_glob(t, when.tables) for t in statement.tables):
        return False
    if when.functions is not None and not quantifier(_any_glob(f, when.functions) for f in statement.functions):
        return False
    if when.unfiltered is not None and statement.unfiltered != when.unfiltered:
        return False
    if when.multi_statement is not None and classification.multi_statement != when.multi_statement:
        return False
    return _time_ok(when, session_started, now)


def load_policy(path: Path | str) -> PolicyEngine:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy: {exc.strerror}") from None
    return parse_policy(raw, str(path))


def parse_policy(raw: bytes, source: str = "<memory>") -> PolicyEngine:
    bundle = validate_yaml(raw, source, PolicyBundle, "policy", PolicyError)
    return PolicyEngine(bundle, "sha256:" + hashlib.sha256(raw).hexdigest(), source)


def policy_json_schema() -> dict[str, Any]:
    return PolicyBundle.model_json_schema()


class AllowAll:
    """The policy when none is configured: every statement that parses is allowed (and recorded).
    The gateway says so loudly at start; `make demo` and the overhead benchmark use it."""

    bundle_hash = "builtin:allow-all"
    source = "builtin:allow-all"
    bundle = None

    def roles_for(self, principal: Principal) -> tuple[str, ...]:
        return ()

    def decide(self, principal: Principal, resource: str, command: Command,
               classification: Classification | None, *, session_started: float, now: float,
               roles: tuple[str, ...] | None = None) -> Decision:
        return _ALLOW_ALL


_ALLOW_ALL = Decision(Verdict.ALLOW, rule="builtin:allow-all", controls=("AC-3",))
