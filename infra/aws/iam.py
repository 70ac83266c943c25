"""IAM policy documents as data: small helpers so every grant in the program reads as
"these actions on these resources", and the tests can inspect it the same way."""

from __future__ import annotations

from typing import Any

import pulumi

# Actions AWS authorizes only on "*": no narrower resource exists for them. They are the only ones
# any wardgate policy grants on "*" (tests and the policy pack hold the programs to this list).
STAR_ONLY_ACTIONS = frozenset({
    "ecr:GetAuthorizationToken",
    "secretsmanager:GetRandomPassword",
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
})


def allow(actions: list[str], resources: list[Any], condition: dict | None = None) -> dict:
    statement: dict[str, Any] = {"Effect": "Allow", "Action": sorted(actions), "Resource": resources}
    if condition:
        statement["Condition"] = condition
    return statement


def document(*statements: dict) -> pulumi.Output[str]:
    """A policy document whose ARNs may still be outputs."""
    return pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": list(statements)})


def trust(service: str, condition: dict | None = None) -> pulumi.Output[str]:
    """Assume-role policy for one AWS service principal, optionally only under ``condition`` (such as
    ``aws:SourceAccount``, against the confused deputy)."""
    statement: dict[str, Any] = {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    if condition:
        statement["Condition"] = condition
    return pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": [statement]})


def via_service(region: str, *services: str) -> dict:
    """Limit a KMS grant to use through the named services (S3, Secrets Manager…), never direct."""
    return {"StringEquals": {"kms:ViaService": [f"{service}.{region}.amazonaws.com" for service in services]}}


def deny_insecure_transport(resources: list[Any], action: str) -> dict:
    """Refuse every request not made over TLS (SC-8)."""
    return {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": action,
            "Resource": resources, "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
