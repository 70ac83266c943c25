"""Environment variables the programs set on each function: the contract between ``infra/`` and
``functions/`` (also written down in ``functions/README.md``). Values are references only: URLs of
queues, stores, keys and secrets (``aws-sm://…``, ``gcp-sm://…``, ``azure-kv://…``), never secret values.
"""

from __future__ import annotations

import json

from infra.common.config import StackConfig
from infra.common.gateway_config import issuer_documents

APPROVALS_QUEUE = "WARDGATE_APPROVALS_QUEUE"
DECISION_STORE = "WARDGATE_DECISION_STORE"
APPROVAL_CHANNEL = "WARDGATE_APPROVAL_CHANNEL"
APPROVER_GROUPS = "WARDGATE_APPROVER_GROUPS"
WEBHOOK_URL_SECRET = "WARDGATE_WEBHOOK_URL_SECRET"      # where notifications are posted (Slack/Teams URL)
SIGNING_SECRET = "WARDGATE_SIGNING_SECRET"              # verifies the chat platform's signed callbacks
WEBHOOK_ENDPOINT = "WARDGATE_WEBHOOK_ENDPOINT"          # the webhook function's own URL, for links
AUDIT_STORE = "WARDGATE_AUDIT_STORE"
EVIDENCE_STORE = "WARDGATE_EVIDENCE_STORE"
SIGNER = "WARDGATE_SIGNER"
ROTATION_RESOURCES = "WARDGATE_ROTATION_RESOURCES"      # JSON: {secret URL: {resource, host, port, …}}
ISSUERS = "WARDGATE_ISSUERS"                            # JSON: the OIDC issuers the approval REST API trusts
# The database's certificate is checked by the gateway (its CA bundle lives in the gateway image); the
# rotation function still refuses to send credentials without TLS.
ROTATION_SSLMODE = "require"


def rotation_resources(stack: StackConfig, secret_urls: dict[str, str]) -> str:
    """What the rotation function needs to change each rotated credential (no values)."""
    return json.dumps({secret_urls[name]: {"resource": name, "host": r.host, "port": r.port,
                                           "database": r.database, "username": r.username,
                                           "rotate_days": r.rotate_days, "grace_seconds": r.grace_seconds,
                                           "sslmode": ROTATION_SSLMODE}
                       for name, r in sorted(stack.resources.items()) if r.rotate_days and name in secret_urls},
                      sort_keys=True)


def issuers(stack: StackConfig) -> str:
    """The stack's trusted issuers exactly as the gateway is configured with them, so the approval
    webhook's REST API accepts the same tokens the gateway does."""
    return json.dumps(issuer_documents(stack), sort_keys=True)
