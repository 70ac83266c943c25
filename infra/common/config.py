"""The stack configuration every cloud's program reads: one pydantic schema, one loader.

A stack's settings live under the ``wardgate:`` namespace of ``Pulumi.<stack>.yaml``. Every model
forbids unknown keys, so a typo is an error naming the key. Secret *values* are never accepted here:
the programs create each secret (database credentials, webhook URL, TLS key…) in the cloud's secret
manager and wire it by reference; the operator puts the value there after ``pulumi up``.
"""

from __future__ import annotations

import json
import re
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from infra.common.paths import make_importable

make_importable()
from wardgate.config import (  # noqa: E402  (one schema for the gateway and its deployments)
    ApproverIdentity, GrantRoleConfig, IssuerConfig, ResourceConfig)

# The gateway's own default, so a stack that says nothing deploys what the gateway would do anyway.
_GATEWAY_CREDENTIAL_REFRESH = ResourceConfig.model_fields["credential_refresh"].default

NAMESPACE = "wardgate"

# CloudWatch accepts only these retention periods; the other clouds accept any number of days, and one
# list for all keeps a stack's settings portable.
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
                      2922, 3288, 3653)

# Keys that would carry a secret value. They get a message saying where the value goes instead of the
# generic "unknown key".
_SECRET_KEYS = frozenset({"password", "secret", "token", "private_key", "key", "webhook_url", "signing_secret",
                          "client_secret", "connection_string", "api_key"})

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")


class StackConfigError(ValueError):
    """A stack configuration that cannot be deployed; the message names the source and each bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkSettings(_Strict):
    """Create a private network for the gateway (``create: true``), or deploy into an existing one."""

    create: bool = True
    cidr: IPv4Network = IPv4Network("10.40.0.0/16")
    # Existing network (create: false): AWS VPC id / GCP network self-link / Azure VNet resource id,
    # and the private subnets to use (AWS: two or more; GCP: one subnetwork; Azure: one subnet delegated
    # to Microsoft.App/environments).
    network_id: str | None = None
    subnet_ids: list[str] = Field(default_factory=list)
    # Who may open connections to the gateway's listener. Private ranges only: the gateway is never
    # reachable from the internet (SC-7).
    client_cidrs: list[IPv4Network] = Field(min_length=1)

    @field_validator("client_cidrs")
    @classmethod
    def _private_only(cls, value: list[IPv4Network]) -> list[IPv4Network]:
        public = [str(net) for net in value if not net.is_private or net.prefixlen == 0]
        if public:
            raise ValueError(f"{public} not private: the gateway accepts clients from private ranges only")
        return value

    @field_validator("cidr")
    @classmethod
    def _cidr_size(cls, value: IPv4Network) -> IPv4Network:
        if not value.is_private or value.prefixlen > 20:
            raise ValueError(f"{value} must be a private range of /20 or larger (it is split into subnets)")
        return value

    @model_validator(mode="after")
    def _existing(self) -> "NetworkSettings":
        if not self.create and (not self.network_id or not self.subnet_ids):
            raise ValueError("with create: false, network_id and subnet_ids name the existing network")
        return self


class GatewaySettings(_Strict):
    """The gateway container."""

    image: str = Field(min_length=3)
    # vCPUs; the values every platform here accepts (Fargate allows only these).
    cpu: float = 0.5
    memory_mb: int = Field(1024, ge=512, le=16384)
    replicas: int = Field(2, ge=1, le=20)
    policy_file: str = "/etc/wardgate/policies/ai-agent-default/policy.yaml"

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: float) -> float:
        if value not in (0.25, 0.5, 1, 2, 4):
            raise ValueError(f"{value} vCPU is not offered: use 0.25, 0.5, 1, 2 or 4")
        return value


class ResourceSettings(_Strict):
    """A backend the gateway fronts. Its credential is the secret the program creates for it."""

    protocol: Literal["postgres"] = "postgres"
    host: str = Field(min_length=1)
    port: int = Field(5432, ge=1, le=65535)
    database: str = Field(min_length=1)
    username: str = Field(min_length=1)
    tls_mode: Literal["require", "verify-full"] = "require"
    ca_file: str | None = None
    # Days between scheduled rotations of the credential; 0 disables rotation.
    rotate_days: int = Field(30, ge=0, le=365)
    # How long the previous credential keeps working after a rotation (then its password is removed).
    grace_seconds: int = Field(3600, ge=60)
    # How long the gateway reuses a fetched credential before fetching it again.
    credential_refresh_seconds: int = Field(int(_GATEWAY_CREDENTIAL_REFRESH), ge=10)

    @model_validator(mode="after")
    def _ca(self) -> "ResourceSettings":
        if self.tls_mode == "verify-full" and not self.ca_file:
            raise ValueError("tls_mode verify-full needs ca_file (a CA bundle inside the gateway image)")
        return self

    @model_validator(mode="after")
    def _grace(self) -> "ResourceSettings":
        if not self.rotate_days:
            return self
        # Shorter than the refresh, gateways would still hold a removed password (one refused login and
        # re-fetch per connection); as long as the interval, the previous credential never retires.
        if self.grace_seconds <= self.credential_refresh_seconds:
            raise ValueError(f"grace_seconds ({self.grace_seconds}) must be longer than credential_refresh_seconds "
                             f"({self.credential_refresh_seconds}): gateways must have fetched the new credential "
                             "before the old one stops working")
        if self.grace_seconds >= self.rotate_days * 86400:
            raise ValueError(f"grace_seconds ({self.grace_seconds}) must be shorter than the rotation interval "
                             f"(rotate_days {self.rotate_days} = {self.rotate_days * 86400} s)")
        return self


class AuditSettings(_Strict):
    """Where the trail lives and for how long it cannot be changed."""

    # WORM retention of audit segments and evidence (S3 Object Lock / GCS retention policy / immutable
    # blob policy): nobody, not even an administrator in prod, can delete or change them before this.
    retention_days: int = Field(ge=1, le=36500)
    log_retention_days: int = 365
    evidence_export_hour_utc: int = Field(2, ge=0, le=23)

    @field_validator("log_retention_days")
    @classmethod
    def _log_days(cls, value: int) -> int:
        if value not in LOG_RETENTION_DAYS:
            raise ValueError(f"{value} is not a supported log retention (one of {list(LOG_RETENTION_DAYS)})")
        return value


# Which identity-map keys each channel's webhook can authenticate: Slack button clicks arrive as
# ``slack:<user id>``; Teams links and generic HMAC-signed decisions as ``teams:…`` / ``generic:…``.
_IDENTITY_PREFIXES = {"slack": ("slack",), "teams": ("teams", "generic"), "generic": ("generic", "teams")}
# No commas: link approvers reach the notifier as one comma-separated variable.
_IDENTITY_KEY = re.compile(r"^(slack|teams|generic):[^\s:,][^\s,]*$")


class ApprovalSettings(_Strict):
    """Human approval: where requests are announced and who may decide.

    ``identities``, ``link_approvers`` and ``grants`` reach both the approval functions and the
    gateway's rendered ``approvals:`` block, so the two always agree on who an approver is."""

    channel: Literal["slack", "teams", "generic"]
    approver_groups: list[str] = Field(min_length=1)
    decision_timeout_seconds: int = Field(900, ge=60, le=86400)
    # Deliveries of an approval message before it moves to the dead-letter queue.
    max_receives: int = Field(5, ge=1, le=20)
    # Chat user → approver identity ("slack:U012AB3CD" → issuer, subject, groups): who clicked.
    identities: dict[str, ApproverIdentity] = Field(default_factory=dict)
    # Identity keys the notifier mints one-time approve/deny links for (Teams cards carry only links).
    link_approvers: list[str] = Field(default_factory=list)
    # Roles requestable just in time (`wardgate access request`) → who approves, quorum, max duration.
    grants: dict[str, GrantRoleConfig] = Field(default_factory=dict)

    @field_validator("identities")
    @classmethod
    def _identity_keys(cls, value: dict[str, ApproverIdentity]) -> dict[str, ApproverIdentity]:
        bad = [key for key in value if not _IDENTITY_KEY.fullmatch(key)]
        if bad:
            raise ValueError(f"identity key(s) {bad}: use slack:<user id>, teams:<Entra object id> or generic:<name> "
                             "(no spaces or commas)")
        return value

    @model_validator(mode="after")
    def _approvers_can_act(self) -> "ApprovalSettings":
        # Each check below catches a setting that would deploy cleanly and then silently let nobody
        # approve: the webhook function accepts as approver roles only groups in approver_groups.
        problems = []
        accepted = set(self.approver_groups)
        usable = _IDENTITY_PREFIXES[self.channel]
        dead = sorted(key for key in self.identities if key.split(":", 1)[0] not in usable)
        if dead:
            problems.append(f"identities {dead} cannot sign in through the {self.channel} channel "
                            f"(it authenticates {' and '.join(p + ':' for p in usable)} keys)")
        powerless = sorted(key for key, identity in self.identities.items() if not accepted & set(identity.groups))
        if powerless:
            problems.append(f"identities {powerless} are in none of approver_groups {sorted(accepted)}: "
                            "they could approve nothing")
        unknown = [key for key in self.link_approvers if key not in self.identities]
        if unknown:
            problems.append(f"link_approvers {unknown} are not keys of approvals.identities (a link names "
                            "the identity that acts)")
        if self.channel == "teams" and not self.link_approvers:
            problems.append("channel teams needs link_approvers: Teams cards approve through one-time links only")
        for role, grant in sorted(self.grants.items()):
            outside = sorted(set(grant.approvers) - accepted)
            if outside:
                problems.append(f"grants.{role}.approvers {outside} are not in approver_groups {sorted(accepted)}: "
                                "the webhook would never count their votes")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class StackConfig(_Strict):
    """A stack's settings (``wardgate:`` namespace of ``Pulumi.<stack>.yaml``)."""

    environment: str
    tier: Literal["dev", "prod"]
    # AWS region / GCP region / Azure location.
    location: str = Field(min_length=2)
    gateway: GatewaySettings
    network: NetworkSettings
    resources: dict[str, ResourceSettings] = Field(min_length=1)
    audit: AuditSettings
    approvals: ApprovalSettings
    issuers: list[IssuerConfig]
    # Principals given the read-only auditor role (AWS principal ARNs / GCP IAM members such as
    # "group:auditors@example.com" / Entra object ids).
    auditors: list[str] = Field(default_factory=list)
    # Appended to globally unique names (buckets, storage accounts, vaults) when one is taken.
    name_suffix: str = Field("", pattern=r"^[a-z0-9]{0,6}$")

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9]{1,9}", value):
            raise ValueError(f"{value!r} must be 2-10 lowercase letters/digits, starting with a letter "
                             "(it is part of every resource name)")
        return value

    @field_validator("issuers")
    @classmethod
    def _issuers(cls, value: list[IssuerConfig]) -> list[IssuerConfig]:
        if not value:
            raise ValueError("at least one trusted OIDC issuer is required (the gateway trusts no token otherwise)")
        return value

    @field_validator("resources")
    @classmethod
    def _resource_names(cls, value: dict[str, ResourceSettings]) -> dict[str, ResourceSettings]:
        bad = [name for name in value if not _NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"resource name(s) {bad}: use 2-32 lowercase letters, digits and '-'")
        return value

    @model_validator(mode="after")
    def _production(self) -> "StackConfig":
        if self.tier != "prod":
            return self
        problems = []
        if "@sha256:" not in self.gateway.image:
            problems.append("gateway.image: prod deploys an image pinned by digest (…@sha256:…), not a tag")
        if self.audit.retention_days < 365:
            problems.append("audit.retention_days: prod keeps the audit trail at least 365 days")
        if self.gateway.replicas < 2:
            problems.append("gateway.replicas: prod runs at least 2 replicas")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def parse_stack_config(values: dict[str, Any], source: str) -> StackConfig:
    """``wardgate:``-namespace values (namespace stripped) → a validated :class:`StackConfig`."""
    problems = list(_secret_values(values, ()))
    if problems:
        raise StackConfigError("\n".join([f"{source}: invalid stack configuration", *problems]))
    try:
        return StackConfig.model_validate(values)
    except ValidationError as exc:
        lines = [f"{source}: invalid stack configuration"]
        for item in exc.errors():
            key = ".".join(str(part) for part in item["loc"]) or "(top level)"
            message = "unknown key" if item["type"] == "extra_forbid" or item["type"] == "extra_forbidden" \
                else item["msg"].removeprefix("Value error, ")
            lines.append(f"  {NAMESPACE}:{key}: {message}")
        raise StackConfigError("\n".join(lines)) from None


def _secret_values(value: Any, path: tuple[str, ...]):
    """Secret values or Pulumi-encrypted values anywhere in the settings → one message each."""
    if isinstance(value, dict):
        if set(value) == {"secure"}:
            yield (f"  {NAMESPACE}:{'.'.join(path)}: encrypted config values are not used: secrets live in the "
                   "cloud's secret manager and are wired by reference (see docs/deploy-<cloud>.md)")
            return
        for key, item in value.items():
            if str(key).lower() in _SECRET_KEYS:
                yield (f"  {NAMESPACE}:{'.'.join((*path, str(key)))}: secret values are not accepted in stack "
                       "config; the program creates the secret and you put the value there after `pulumi up`")
            else:
                yield from _secret_values(item, (*path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _secret_values(item, (*path, str(index)))


def load_stack_file(path: Path | str) -> StackConfig:
    """Read ``Pulumi.<stack>.yaml`` and validate its ``wardgate:`` settings."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise StackConfigError(f"{path}: cannot read stack configuration: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise StackConfigError(f"{path}: not valid YAML: {exc}") from None
    settings = (document or {}).get("config") if isinstance(document, dict) else None
    if not isinstance(settings, dict):
        raise StackConfigError(f"{path}: no 'config:' mapping")
    prefix = f"{NAMESPACE}:"
    values = {key[len(prefix):]: value for key, value in settings.items() if key.startswith(prefix)}
    return parse_stack_config(values, path.name)


def load_from_pulumi() -> StackConfig:
    """The running stack's settings, as the Pulumi engine hands them to the program (every
    ``wardgate:`` key, so a misspelt one is reported rather than ignored)."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    everything = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    prefix = f"{NAMESPACE}:"
    values: dict[str, Any] = {}
    for key, raw in everything.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if runtime_config.is_config_secret(key):
            values[name] = {"secure": "..."}  # refused by parse_stack_config, naming the key
            continue
        try:  # structured values arrive JSON-encoded, plain ones as the string itself
            values[name] = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            values[name] = raw
    return parse_stack_config(values, f"stack {pulumi.get_stack()}")
