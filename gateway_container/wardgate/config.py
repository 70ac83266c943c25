"""The gateway's configuration file: a YAML document validated by pydantic.

Every model forbids unknown keys, so a typo is an error naming the key rather than a silently
ignored setting. Durations accept seconds (``90``) or ``"30s"``, ``"15m"``, ``"1h"``.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator,
                      model_validator)

from wardgate.cpus import auto_worker_count

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: object) -> float:
    """``"15m"`` → 900.0; numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '30s', '15m', '1h'")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f"{value!r} is not a duration (use seconds or '30s', '15m', '1h', '2d')")


Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema({
    "anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": _DURATION.pattern}],
    "description": "seconds, or a string such as '30s', '15m', '1h', '2d'",
})]

# Algorithms a trusted issuer may sign with. Never "none"; never HS* (a shared secret would let anyone
# holding the verification key mint tokens, and HS* with a public key is the classic confusion attack).
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_address(value: str) -> tuple[str, int]:
    """``"127.0.0.1:6432"`` / ``"[::1]:6432"`` → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT")
    host = host.strip("[]")
    if not host:
        raise ValueError(f"{value!r} has no host")
    port_number = int(port)
    if not 0 <= port_number <= 65535:
        raise ValueError(f"port {port_number} is out of range")
    return host, port_number


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TLSConfig(_Strict):
    """A server certificate. When a listener has no ``tls`` block, a dev CA and certificate are
    generated in the state directory (fine for local use; production configures real ones)."""

    cert_file: Path
    key_file: Path


class ListenerConfig(_Strict):
    protocol: Literal["postgres"]
    address: str = "127.0.0.1:6432"
    tls: TLSConfig | None = None
    # Tokens are bearer credentials: by default the password message that carries one must arrive over
    # TLS. Plain TCP is accepted only from a loopback peer, and only when this is set.
    allow_plaintext_token_on_loopback: bool = False

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value


class ControlConfig(_Strict):
    """HTTP control port: health, readiness, Prometheus metrics, dev-issuer discovery and JWKS."""

    address: str = "127.0.0.1:9480"

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value


class IssuerConfig(_Strict):
    """A trusted OIDC / workload-identity issuer."""

    issuer: str
    audience: str | list[str]
    algorithms: list[str] = Field(default_factory=lambda: ["RS256"])
    # Where the signing keys are. Default: the ``jwks_uri`` of the issuer's discovery document.
    jwks_uri: str | None = None
    clock_skew: Duration = 30.0
    # Tokens whose ``exp - iat`` exceeds this are refused: workload tokens are short-lived by design.
    max_token_lifetime: Duration = 3600.0
    # Which claim carries group membership (IdPs differ: ``groups``, ``roles``, ``cognito:groups``…).
    groups_claim: str = "groups"
    # Claims copied into the principal for policy and audit (CI context: GitHub ``repository``, ``ref``,
    # ``environment``, ``job_workflow_ref``; GitLab ``project_path``, ``ref``…). Missing ones are skipped.
    claims: list[str] = Field(
        default_factory=lambda: [
            "repository", "repository_owner", "ref", "ref_type", "environment", "job_workflow_ref",
            "workflow", "run_id", "actor", "project_path", "namespace_path", "pipeline_source",
            "email", "preferred_username", "tid", "oid", "azp",
        ]
    )

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one algorithm is required")
        bad = [alg for alg in value if alg not in ASYMMETRIC_ALGORITHMS]
        if bad:
            raise ValueError(
                f"algorithm(s) {bad} not allowed: only asymmetric algorithms "
                f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))}) may be trusted"
            )
        return value

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError(f"issuer {value!r} must be an http(s) URL")
        return value


class DevIssuerConfig(_Strict):
    """A local token issuer for development: ``wardgate token`` mints tokens that only a config
    enabling this trusts. Its discovery document and JWKS are served on the control port, so the
    gateway verifies dev tokens exactly like real ones, over HTTP."""

    enabled: bool = False
    audience: str = "wardgate"
    max_token_lifetime: Duration = 3600.0


class BackendTLSConfig(_Strict):
    mode: Literal["disable", "require", "verify-ca", "verify-full"] = "disable"
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _ca(self) -> "BackendTLSConfig":
        if self.mode in ("verify-ca", "verify-full") and self.ca_file is None:
            raise ValueError(f"tls.mode {self.mode} needs tls.ca_file")
        return self


class ResourceConfig(_Strict):
    """A backend the gateway fronts. Clients name it as the PostgreSQL ``database``."""

    protocol: Literal["postgres"]
    host: str
    port: int = 5432
    database: str
    # The gateway's own account on the backend; the client never sees these.
    username: str
    # A credential URL: ``env://VAR``, ``file:///path`` (later: ``aws-sm://``, ``gcp-sm://``,
    # ``azure-kv://``). Omit for trust authentication.
    password: str | None = None
    tls: BackendTLSConfig = BackendTLSConfig()
    connect_timeout: Duration = 10.0
    # How long a fetched credential is reused before it is fetched again (a credential the backend
    # refuses is re-fetched at once, whatever this says).
    credential_refresh: Duration = 300.0


class AuditConfig(_Strict):
    # Where events go. ``file://DIR`` is the embedded default.
    sink: str = "file://./wardgate-audit"
    # ``write``: every event is written to the OS before the client sees the result it describes
    # (survives a crash of the gateway process, not of the machine), fsynced every ``fsync_interval``.
    # ``always``: every event is fsynced before the client sees the result (group commit).
    fsync: Literal["write", "always"] = "write"
    fsync_interval: Duration = 1.0
    # Recording can be switched off only for benchmarks; a warning says so loudly at start.
    enabled: bool = True
    # Key that signs segment digests: ``file://PATH.pem`` (Ed25519, created if missing; default
    # state_dir/audit-signing-key.pem) or a cloud KMS key (``awskms://``, ``gcpkms://``, ``azurekv-key://``).
    signer: str | None = None
    # Write-once bucket that sealed segments, digests and keys are shipped to, where auditors read
    # them (``s3://``, ``gs://``, ``azblob://``, ``file://``). None: the spool directory is the trail.
    archive: str | None = None
    # With an archive, a segment is sealed (and shipped) at the latest this long after it was opened.
    seal_interval: Duration = 300.0
    archive_interval: Duration = 5.0
    # Sealed data the archive cannot take for this long makes the gateway refuse commands (fail
    # closed) until it can; meanwhile the local spool holds every event durably.
    archive_grace: Duration = 60.0


class PolicyConfig(_Strict):
    # A policy bundle (YAML). Without one the gateway allows every statement that parses, and says so.
    file: Path
    # Reload when the file changes (checked every ``watch_interval``) and on SIGHUP. An invalid new
    # version is refused loudly and the running policy stays.
    watch: bool = True
    watch_interval: Duration = 2.0


class ApproverIdentity(_Strict):
    """Who a Slack user, a Teams user or a generic-webhook name is, for approver checks."""

    issuer: str
    subject: str
    groups: list[str] = Field(default_factory=list)
    display: str | None = None


class NotifyConfig(_Strict):
    # slack: Block Kit with approve/deny buttons (answered at POST /approvals/slack);
    # teams: an Adaptive Card with signed approve/deny links; generic: JSON signed with HMAC-SHA256.
    kind: Literal["slack", "teams", "generic"]
    # The webhook URL. Slack and Teams URLs embed a secret: give a credential URL (env://, file://,
    # aws-sm://…) rather than the URL itself; plain https:// URLs are accepted for receivers without one.
    url: str
    # HMAC key of the generic kind (credential URL).
    secret: str | None = None
    # Identities (keys of ``approvals.identities``) to mint one-time approve/deny links for.
    link_approvers: list[str] = Field(default_factory=list)
    timeout: Duration = 10.0


class GrantRoleConfig(_Strict):
    """A role that may be requested just in time (``wardgate access request``)."""

    approvers: list[str] = Field(min_length=1)
    quorum: int = Field(1, ge=1)
    max_duration: Duration = 8 * 3600.0


class ApprovalsConfig(_Strict):
    """Held commands and access grants. On by default with embedded backends: a policy ``review``
    holds the statement until an approver decides with ``wardgate approvals`` at the control port."""

    enabled: bool = True
    # Create-once records of requests, votes and outcomes (sqlite:// relative to state_dir, dynamodb://,
    # firestore://, aztable://).
    store: str = "sqlite://approvals.db"
    # Where new requests are announced for the notifier (memory://, sqs://, pubsub://, azqueue://).
    queue: str = "memory://approvals"
    # The base URL approvers reach the webhook at (signed links, hints). Default: the control port.
    public_url: str | None = None
    # Run the notifier inside the gateway (embedded default); off when a cloud function consumes the queue.
    notify: NotifyConfig | None = None
    run_notifier: bool = True
    slack_signing_secret: str | None = None   # credential URL
    hmac_secret: str | None = None            # credential URL: Teams/generic decisions
    link_key: str | None = None               # credential URL; default: a random key in state_dir
    identities: dict[str, ApproverIdentity] = Field(default_factory=dict)  # "slack:U123" → identity
    grants: dict[str, GrantRoleConfig] = Field(default_factory=dict)
    # How often a session re-reads its access grants (expiry itself is checked at every command).
    grant_refresh: Duration = 5.0

    @model_validator(mode="after")
    def _links(self) -> "ApprovalsConfig":
        if self.notify is not None:
            unknown = [name for name in self.notify.link_approvers if name not in self.identities]
            if unknown:
                raise ValueError(f"notify.link_approvers names unknown identities {unknown}: "
                                 "declare them under approvals.identities")
            if self.notify.kind == "generic" and not self.notify.secret:
                raise ValueError("notify.kind 'generic' needs notify.secret (the HMAC key, as a credential URL)")
        return self


class GatewayConfig(_Strict):
    listeners: list[ListenerConfig]
    control: ControlConfig = ControlConfig()
    state_dir: Path = Path("./.wardgate")
    issuers: list[IssuerConfig] = Field(default_factory=list)
    dev_issuer: DevIssuerConfig = DevIssuerConfig()
    resources: dict[str, ResourceConfig]
    audit: AuditConfig = AuditConfig()
    policy: PolicyConfig | None = None
    approvals: ApprovalsConfig = ApprovalsConfig()
    # Key of the masking "hash" strategy (HMAC), as a credential URL (env://, file://…). Replicas that
    # must produce the same tokens share it. Default: a random key kept in state_dir/masking.key.
    masking_key: str | None = None
    # Processes serving client sessions: a number, or "auto": one per CPU this process may run on (its
    # affinity), but no more than its cgroup's CPU quota rounded up (1.5 CPUs: 2; see auto_worker_count).
    # Above 1, a supervisor accepts connections and hands them to the workers in turn, restarts a
    # worker that dies, and serves the control port for all of them (see docs/workers.md).
    workers: int | Literal["auto"] = 1
    # On SIGTERM/SIGINT: stop accepting, close each session at its next point with no statement running
    # and no transaction open, and only after this long close the rest (their open transactions roll
    # back). 0: close every session at once. Keep it under the platform's stop timeout (ECS and
    # Container Apps: 30 s), which also covers shipping the last audit segment.
    shutdown_grace: Duration = 20.0

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: object) -> object:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 127):
            return value
        raise ValueError(f"{value!r}: workers is a number from 1 to 127, or 'auto'")

    def worker_count(self) -> int:
        if self.workers == "auto":
            return auto_worker_count()
        return self.workers

    @model_validator(mode="after")
    def _trust(self) -> "GatewayConfig":
        if not self.issuers and not self.dev_issuer.enabled:
            raise ValueError("no trusted issuer: configure 'issuers' or enable 'dev_issuer'")
        return self


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names the file and the bad key."""


def format_validation_error(source: Path | str, error: ValidationError, what: str = "configuration") -> str:
    """One line per problem, each naming the key (dotted path) that is wrong."""
    lines = [f"{source}: invalid {what}"]
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {location}: {message}")
    return "\n".join(lines)


def validate_yaml(raw: bytes | str, source: Path | str, model: type[BaseModel], what: str,
                  error: type[Exception]):
    """YAML text → a validated ``model``; every failure is an ``error`` naming ``source`` and, for
    schema problems, the bad key."""
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{source}: a {what} must be a mapping of keys to values")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(format_validation_error(source, exc, what)) from None


def load_config(path: Path | str) -> GatewayConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    config = validate_yaml(text, path, GatewayConfig, "configuration", ConfigError)
    # Relative paths are relative to the config file, so a config works wherever it is run from.
    base = path.parent
    update: dict = {"state_dir": (base / config.state_dir).resolve()}
    if config.policy is not None:
        update["policy"] = config.policy.model_copy(update={"file": (base / config.policy.file).resolve()})
    return config.model_copy(update=update)
