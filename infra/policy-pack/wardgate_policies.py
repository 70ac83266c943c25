"""wardgate's deployment invariants as checks on one resource's properties.

Each check takes the Pulumi type token and the resource's (camelCase) properties, as CrossGuard hands
them over, and returns the violations it finds. ``__main__.py`` wraps them in a CrossGuard policy pack
(``pulumi preview --policy-pack infra/policy-pack``); the tests call them directly. They hold any stack
to what the wardgate programs guarantee, so a hand-edited or forked program cannot quietly drop one.
"""

from __future__ import annotations

import json
import sys
from ipaddress import ip_network
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root (see infra/common/paths.py)
from infra.aws.iam import STAR_ONLY_ACTIONS  # noqa: E402

Check = Callable[[dict[str, Any]], list[str]]
CHECKS: dict[str, list[tuple[str, str, Check]]] = {}


def check(type_token: str, name: str, description: str):
    def register(function: Check) -> Check:
        CHECKS.setdefault(type_token, []).append((name, description, function))
        return function
    return register


def violations(type_token: str, props: dict[str, Any]) -> list[str]:
    """Every invariant the resource breaks, as ``policy-name: message``."""
    return [f"{name}: {message}" for name, _, function in CHECKS.get(type_token, [])
            for message in function(props)]


def _public(cidr: str) -> bool:
    network = ip_network(cidr, strict=False)
    return not network.is_private or network.prefixlen == 0


# --- AWS ---------------------------------------------------------------------------------------------

@check("aws:lb/loadBalancer:LoadBalancer", "aws-gateway-lb-internal", "load balancers are internal (SC-7)")
def _aws_lb(props):
    return [] if props.get("internal") is True else ["the load balancer is internet-facing"]


@check("aws:ec2/securityGroup:SecurityGroup", "aws-no-public-ingress", "no ingress from public ranges (SC-7)")
def _aws_sg(props):
    return [f"ingress from {cidr} on port {rule.get('fromPort')}" for rule in props.get("ingresses") or []
            for cidr in rule.get("cidrBlocks") or [] if _public(cidr)]


@check("aws:s3/bucket:Bucket", "aws-audit-bucket-object-lock", "audit buckets have Object Lock (AU-9)")
def _aws_bucket(props):
    name = props.get("bucket") or props.get("bucketPrefix") or ""
    return ["audit bucket without Object Lock"] if "audit" in name and props.get("objectLockEnabled") is not True else []


@check("aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration", "aws-object-lock-retention",
       "Object Lock has a default retention (AU-9, AU-11)")
def _aws_lock(props):
    retention = (props.get("rule") or {}).get("defaultRetention") or {}
    if retention.get("mode") not in ("COMPLIANCE", "GOVERNANCE") or not (retention.get("days") or retention.get("years")):
        return ["no default retention mode and period"]
    return []


@check("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "aws-block-public-access",
       "all four public access blocks are on (AC-3)")
def _aws_pab(props):
    off = [k for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
           if props.get(k) is not True]
    return [f"{', '.join(off)} not enabled"] if off else []


@check("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration", "aws-sse-kms",
       "buckets encrypt with a KMS key (SC-28)")
def _aws_sse(props):
    rules = props.get("rules") or []
    if not any(((r.get("applyServerSideEncryptionByDefault") or {}).get("sseAlgorithm") == "aws:kms") for r in rules):
        return ["default encryption is not SSE-KMS"]
    return []


def _statements(policy: Any) -> list[dict]:
    document = json.loads(policy) if isinstance(policy, str) else policy or {}
    statements = document.get("Statement", [])
    return statements if isinstance(statements, list) else [statements]


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


@check("aws:iam/rolePolicy:RolePolicy", "aws-least-privilege", "no wildcard actions or resources (AC-6)")
def _aws_role_policy(props):
    found = []
    for statement in _statements(props.get("policy")):
        if statement.get("Effect") != "Allow":
            continue
        actions = _as_list(statement.get("Action", []))
        wild = [a for a in actions if a == "*" or a.endswith(":*")]
        if wild:
            found.append(f"wildcard action(s) {wild}")
        if "*" in _as_list(statement.get("Resource", [])) and not set(actions) <= STAR_ONLY_ACTIONS:
            found.append(f"Resource '*' for {sorted(set(actions) - STAR_ONLY_ACTIONS)}, which accept narrower resources")
    return found


@check("aws:sqs/queue:Queue", "aws-queue-dead-letter", "every queue has a dead-letter path")
def _aws_queue(props):
    if props.get("redrivePolicy") or (props.get("tags") or {}).get("wardgate:role") == "dead-letter":
        return []
    return ["queue without a redrive policy (and not tagged wardgate:role=dead-letter)"]


@check("aws:secretsmanager/secretVersion:SecretVersion", "aws-no-secret-values",
       "secret values never pass through Pulumi (SC-12)")
def _aws_secret_version(props):
    return ["a secret value is declared in the program; put it out of band"]


@check("aws:lambda/function:Function", "aws-function-env-references", "function settings carry references only")
def _aws_lambda(props):
    variables = (props.get("environment") or {}).get("variables") or {}
    return [f"{k} looks like a secret value" for k, v in variables.items() if _looks_secret(v)]


def _looks_secret(value: Any) -> bool:
    text = str(value)
    return "-----BEGIN" in text or "password=" in text.lower() or "AccountKey=" in text or "xoxb-" in text


# --- GCP ---------------------------------------------------------------------------------------------

# Google's load-balancer health checkers: public ranges, but only Google's probes come from them.
GCP_HEALTH_CHECK_RANGES = frozenset({"35.191.0.0/16", "130.211.0.0/22"})
# Written by a VM's logging and monitoring agents; these permissions exist at project level only.
GCP_VM_AGENT_ROLES = frozenset({"roles/logging.logWriter", "roles/monitoring.metricWriter"})


@check("gcp:cloudrunv2/service:Service", "gcp-run-internal", "Cloud Run services take internal traffic only (SC-7)")
def _gcp_run(props):
    allowed = ("INGRESS_TRAFFIC_INTERNAL_ONLY", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER")
    return [] if props.get("ingress") in allowed else [f"ingress is {props.get('ingress')!r}"]


@check("gcp:compute/forwardingRule:ForwardingRule", "gcp-lb-internal", "load balancers are internal (SC-7)")
def _gcp_forwarding_rule(props):
    scheme = props.get("loadBalancingScheme")
    found = [] if scheme == "INTERNAL" else [f"load balancing scheme is {scheme!r}, not INTERNAL"]
    if props.get("allowGlobalAccess") is True:
        found.append("reachable from every region (allowGlobalAccess)")
    return found


@check("gcp:compute/instanceTemplate:InstanceTemplate", "gcp-vm-hardened",
       "VMs: no external address, Shielded VM, OS Login (SC-7, SI-7, AC-17)")
def _gcp_template(props):
    found = [f"network interface {i} has an external address" for i, nic in enumerate(props.get("networkInterfaces") or [])
             if nic.get("accessConfigs") or nic.get("ipv6AccessConfigs")]
    shielded = props.get("shieldedInstanceConfig") or {}
    off = [k for k in ("enableSecureBoot", "enableVtpm", "enableIntegrityMonitoring") if shielded.get(k) is not True]
    if off:
        found.append(f"Shielded VM {', '.join(off)} not enabled")
    if str((props.get("metadata") or {}).get("enable-oslogin", "")).upper() != "TRUE":
        found.append("OS Login is not enabled (enable-oslogin)")
    return found


@check("gcp:compute/firewall:Firewall", "gcp-no-public-ingress",
       "ingress only from private ranges or Google's health checkers (SC-7)")
def _gcp_firewall(props):
    if str(props.get("direction", "INGRESS")).upper() != "INGRESS" or props.get("denies"):
        return []
    return [f"ingress from {cidr}" for cidr in props.get("sourceRanges") or []
            if _public(cidr) and cidr not in GCP_HEALTH_CHECK_RANGES]


@check("gcp:storage/bucket:Bucket", "gcp-bucket-private", "buckets are uniform-access and never public (AC-3)")
def _gcp_bucket(props):
    found = []
    if props.get("uniformBucketLevelAccess") is not True:
        found.append("uniform bucket-level access is off")
    if props.get("publicAccessPrevention") != "enforced":
        found.append("public access prevention is not enforced")
    if "audit" in str(props.get("name", "")):
        if not (props.get("retentionPolicy") or {}).get("retentionPeriod"):
            found.append("audit bucket without a retention policy (AU-9)")
        if not (props.get("encryption") or {}).get("defaultKmsKeyName"):
            found.append("audit bucket without CMEK (SC-28)")
    return found


@check("gcp:pubsub/subscription:Subscription", "gcp-subscription-dead-letter", "every subscription dead-letters")
def _gcp_subscription(props):
    if props.get("deadLetterPolicy") or (props.get("labels") or {}).get("wardgate-role") == "dead-letter":
        return []
    return ["subscription without a dead-letter policy (and not labelled wardgate-role=dead-letter)"]


@check("gcp:projects/iAMMember:IAMMember", "gcp-no-broad-project-grants", "project grants are narrow (AC-6)")
def _gcp_project_member(props):
    found = []
    if props.get("role") in ("roles/owner", "roles/editor", "roles/viewer"):
        found.append(f"primitive role {props.get('role')}")
    if not (props.get("condition") or {}).get("expression") and props.get("role") not in GCP_VM_AGENT_ROLES:
        found.append("project-wide grant without an IAM condition")
    return found


@check("gcp:cloudrunv2/serviceIamMember:ServiceIamMember", "gcp-public-invoker-only-webhook",
       "only the approval webhook may be invoked by allUsers")
def _gcp_invoker(props):
    if props.get("member") in ("allUsers", "allAuthenticatedUsers") and not str(props.get("name", "")).endswith("-webhook"):
        return [f"{props.get('member')} may invoke {props.get('name')}"]
    return []


@check("gcp:secretmanager/secretVersion:SecretVersion", "gcp-no-secret-values",
       "secret values never pass through Pulumi (SC-12)")
def _gcp_secret_version(props):
    return ["a secret value is declared in the program; add versions out of band"]


# --- Azure -------------------------------------------------------------------------------------------

@check("azure-native:storage:StorageAccount", "azure-storage-secure", "storage: no public access, TLS 1.2+, no keys")
def _azure_storage(props):
    found = []
    if props.get("allowBlobPublicAccess") is not False:
        found.append("anonymous blob access is not disabled")
    if props.get("minimumTlsVersion") not in ("TLS1_2", "TLS1_3"):
        found.append("minimum TLS version below 1.2 (SC-8)")
    if props.get("allowSharedKeyAccess") is not False:
        found.append("shared key access is enabled (use Entra identities)")
    return found


@check("azure-native:app:ContainerApp", "azure-gateway-internal", "Container Apps ingress is internal (SC-7)")
def _azure_app(props):
    ingress = (props.get("configuration") or {}).get("ingress") or {}
    found = ["ingress is external"] if ingress.get("external") is not False else []
    found += [f"ingress allows {r.get('ipAddressRange')}" for r in ingress.get("ipSecurityRestrictions") or []
              if r.get("action") == "Allow" and _public(r.get("ipAddressRange", "0.0.0.0/0"))]
    return found


@check("azure-native:keyvault:Vault", "azure-key-vault-protected", "Key Vault uses RBAC and purge protection (SC-12)")
def _azure_vault(props):
    properties = props.get("properties") or {}
    found = []
    if properties.get("enableRbacAuthorization") is not True:
        found.append("access policies instead of RBAC")
    if properties.get("enablePurgeProtection") is not True:
        found.append("purge protection is off")
    return found


@check("azure-native:authorization:RoleAssignment", "azure-narrow-role-scope",
       "roles are assigned on a resource, never a subscription or resource group (AC-6)")
def _azure_role(props):
    scope = str(props.get("scope", ""))
    return [] if "/providers/" in scope else [f"role assigned at broad scope {scope!r}"]


def crossguard_policies() -> list:
    """The checks as CrossGuard resource validation policies (one per check)."""
    from pulumi_policy import ResourceValidationPolicy

    def make(type_token: str, name: str, description: str, function: Check):
        def validate(args, report_violation):
            if args.resource_type == type_token:
                for message in function(args.props):
                    report_violation(message)
        return ResourceValidationPolicy(name=name, description=description, validate=validate)

    return [make(t, n, d, f) for t, entries in sorted(CHECKS.items()) for n, d, f in entries]
