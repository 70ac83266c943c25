"""The gateway's runtime configuration, rendered by the programs from the resources they create.

It carries *references* only (queue and table names, key ids, secret URLs such as
``aws-sm://arn:…``); the gateway fetches secret values itself at run time with its own identity. The
document travels in one environment variable (:data:`CONFIG_ENV`) because no platform here mounts a
plain file into a container without extra storage, and the image reads ``--config FILE``: the boot
command writes it to a private temp file first.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import yaml

from infra.common.config import StackConfig

CONFIG_ENV = "WARDGATE_CONFIG_YAML"
CONFIG_PATH = "/tmp/wardgate/config.yaml"
LISTENER_PORT = 6432
AUDIT_SEAL_SECONDS = 60
CONTROL_PORT = 9480
STATE_DIR = "/var/lib/wardgate"
# Where TLS material handed over in environment variables (ECS secrets) or fetched from Secret Manager
# (Compute Engine) is written at boot.
TLS_ENV = {"cert": "WARDGATE_TLS_CERT", "key": "WARDGATE_TLS_KEY"}
TLS_FROM_ENV_FILES = {"cert": "/tmp/wardgate/tls/server.pem", "key": "/tmp/wardgate/tls/server-key.pem"}


@dataclass(frozen=True)
class GatewayWiring:
    """Everything the gateway must know about the cloud resources around it, as URLs."""

    audit_archive: str
    signer: str
    approvals_queue: str
    decision_store: str
    approvals_public_url: str
    masking_key: str
    resource_passwords: dict[str, str]
    tls_cert_file: str
    tls_key_file: str
    control_address: str = f"127.0.0.1:{CONTROL_PORT}"


def issuer_documents(stack: StackConfig) -> list[dict]:
    """The trusted issuers as configuration (the gateway's, and the approval webhook's REST API's)."""
    return [issuer.model_dump(mode="json", exclude_defaults=True) for issuer in stack.issuers]


def identity_documents(stack: StackConfig) -> dict[str, dict]:
    """Chat users → approver identities, as configuration (the gateway's, and the webhook function's)."""
    return {key: identity.model_dump(mode="json", exclude_none=True)
            for key, identity in sorted(stack.approvals.identities.items())}


def grant_documents(stack: StackConfig) -> dict[str, dict]:
    """Just-in-time roles, as configuration (the gateway's, and the webhook function's)."""
    return {role: grant.model_dump(mode="json") for role, grant in sorted(stack.approvals.grants.items())}


def gateway_config_document(stack: StackConfig, wiring: GatewayWiring) -> dict:
    """The gateway configuration (``wardgate.config.GatewayConfig`` plus the cloud wiring keys)."""
    resources = {}
    for name, resource in stack.resources.items():
        entry = {
            "protocol": resource.protocol,
            "host": resource.host,
            "port": resource.port,
            "database": resource.database,
            "username": resource.username,
            "password": wiring.resource_passwords[name],
            "tls": {"mode": resource.tls_mode, **({"ca_file": resource.ca_file} if resource.ca_file else {})},
            # Shorter than the rotation's grace period (checked in the stack config).
            "credential_refresh": resource.credential_refresh_seconds,
        }
        resources[name] = entry
    return {
        "listeners": [{
            "protocol": "postgres",
            "address": f"0.0.0.0:{LISTENER_PORT}",
            # TLS ends at the gateway, never at a load balancer: PostgreSQL negotiates TLS inside its
            # own protocol (SSLRequest), and tokens must never cross the network in clear.
            "tls": {"cert_file": wiring.tls_cert_file, "key_file": wiring.tls_key_file},
        }],
        "control": {"address": wiring.control_address},
        "state_dir": STATE_DIR,
        # One worker process per vCPU the stack gives the container (an event loop uses one), counted
        # here rather than "auto": a container may see more CPUs than its quota.
        "workers": max(1, int(stack.gateway.cpu)),
        "issuers": issuer_documents(stack),
        "resources": resources,
        "policy": {"file": stack.gateway.policy_file},
        "masking_key": wiring.masking_key,
        # Events are spooled on local disk first (durable before any result is released), sealed
        # segments are shipped to the WORM archive; the gateway refuses commands when it cannot ship.
        # The spool is on the replica's own disk, which a replaced replica (crash, scale-in without a
        # clean stop) takes with it: sealing every minute instead of every 5 bounds what such a loss
        # can take to the last minute of unsealed events, for ~1,440 small segments a day per replica.
        "audit": {"sink": f"file://{STATE_DIR}/audit", "archive": wiring.audit_archive, "signer": wiring.signer,
                  "seal_interval": AUDIT_SEAL_SECONDS},
        "approvals": {
            "store": wiring.decision_store,
            "queue": wiring.approvals_queue,
            "public_url": wiring.approvals_public_url,
            # The notifier function consumes the queue; the gateway only announces.
            "run_notifier": False,
            # The same approvers and requestable roles the webhook function is given, so a decision
            # or an access request means the same through the gateway's control port.
            "identities": identity_documents(stack),
            "grants": grant_documents(stack),
        },
    }


def render_gateway_config(stack: StackConfig, wiring: GatewayWiring) -> str:
    return yaml.safe_dump(gateway_config_document(stack, wiring), sort_keys=False)


# Reads Secret Manager versions into files with the VM's service account, using only the image's Python
# standard library (the metadata server's token, then the REST API): Compute Engine has no secret mounts.
# Arguments: pairs of (projects/P/secrets/S, file).
SECRET_MANAGER_FETCH = """\
import base64, json, sys, urllib.request
TOKEN = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
API = "https://secretmanager.googleapis.com/v1/"
def get(url, headers):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
        return json.load(response)
token = get(TOKEN, {"Metadata-Flavor": "Google"})["access_token"]
for name, path in zip(sys.argv[1::2], sys.argv[2::2]):
    payload = get(API + name + "/versions/latest:access", {"Authorization": "Bearer " + token})["payload"]
    with open(path, "wb") as out:
        out.write(base64.b64decode(payload["data"]))
"""


def boot_command(tls_from_env: bool, tls_from_secret_manager: dict[str, str] | None = None) -> list[str]:
    """The container command: write the configuration and the TLS material to private files, then exec
    the gateway. TLS comes from environment variables ECS injected as secrets (``tls_from_env``;
    ``unset`` keeps the key out of the gateway's environment once it is on disk), from Secret Manager
    (``tls_from_secret_manager``: part → ``projects/P/secrets/S``, on Compute Engine), or is mounted by
    the platform (neither)."""
    steps = ["set -eu", "umask 077", "mkdir -p /tmp/wardgate/tls",
             f'printf "%s" "${CONFIG_ENV}" > {shlex.quote(CONFIG_PATH)}']
    if tls_from_env:
        for part in ("cert", "key"):
            steps.append(f'printf "%s" "${TLS_ENV[part]}" > {shlex.quote(TLS_FROM_ENV_FILES[part])}')
        steps.append(f"unset {TLS_ENV['cert']} {TLS_ENV['key']}")
    if tls_from_secret_manager:
        pairs = " ".join(f"{shlex.quote(tls_from_secret_manager[part])} {shlex.quote(TLS_FROM_ENV_FILES[part])}"
                         for part in ("cert", "key"))
        steps.append(f"python -c {shlex.quote(SECRET_MANAGER_FETCH)} {pairs}")
    steps.append(f"exec wardgate serve --config {shlex.quote(CONFIG_PATH)}")
    return ["/bin/sh", "-c", "; ".join(steps)]
