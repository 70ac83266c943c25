"""Environment variables the programs set on each function: the contract between ``infra/`` and
``functions/`` (also written down in ``functions/README.md``). Values are references only: URLs of
queues, stores, keys and secrets (``aws-sm://…``, ``gcp-sm://…``, ``azure-kv://…``), never secret values.
"""

from __future__ import annotations

import json

from infra.common.config import StackConfig
from infra.common.gateway_config import grant_documents, identity_documents, issuer_documents

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
APPROVER_IDENTITIES = "WARDGATE_APPROVER_IDENTITIES"    # JSON: {"slack:U…": {issuer, subject, groups}}
LINK_APPROVERS = "WARDGATE_LINK_APPROVERS"              # comma-separated identity keys that get one-time links
GRANTS = "WARDGATE_GRANTS"                              # JSON: {role: {approvers, quorum, max_duration}}
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


def notifier_signs(stack: StackConfig) -> bool:
    """Whether the notifier needs the signing secret: teams/generic bodies are signed with it, and
    one-time links with a key derived from it (HKDF). Slack bodies are not signed by us."""
    return stack.approvals.channel != "slack" or bool(stack.approvals.link_approvers)


def webhook_approvers(stack: StackConfig) -> dict[str, str]:
    """The webhook's optional approver settings, present only when the stack configures them (an
    absent variable and an empty map mean the same to the function)."""
    settings = {}
    if stack.approvals.identities:
        settings[APPROVER_IDENTITIES] = json.dumps(identity_documents(stack), sort_keys=True)
    if stack.approvals.grants:
        settings[GRANTS] = json.dumps(grant_documents(stack), sort_keys=True)
    return settings


def notifier_links(stack: StackConfig) -> dict[str, str]:
    """Who the notifier mints one-time links for (Teams needs them), when anyone."""
    links = stack.approvals.link_approvers
    return {LINK_APPROVERS: ",".join(links)} if links else {}
