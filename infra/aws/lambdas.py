"""The four Lambda functions. Each gets its own role whose policy names exactly the actions and
resources that function uses (AC-6), its own log group with retention, and the code directory that
``functions/build.py`` produced for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.aws.iam import allow, document, trust

RUNTIME = "python3.11"
# Lambda refuses a function whose environment (names + values) exceeds 4 KB.
ENVIRONMENT_LIMIT = 4096
_ENI_ACTIONS = ["ec2:AssignPrivateIpAddresses", "ec2:CreateNetworkInterface", "ec2:DeleteNetworkInterface",
                "ec2:DescribeNetworkInterfaces", "ec2:UnassignPrivateIpAddresses"]


class LambdaFunction(pulumi.ComponentResource):
    """A Lambda function with a role of its own that holds only ``grants`` (plus writing its logs)."""

    def __init__(self, name: str, *, handler: str, code_dir: Path, grants: list[dict], environment: dict[str, Any],
                 log_retention_days: int, tags: dict[str, str], timeout: int = 30, memory_mb: int = 256,
                 vpc: tuple[list[Any], list[Any]] | None = None, dead_letter_arn: Any = None,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("wardgate:aws:LambdaFunction", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        log_group = aws.cloudwatch.LogGroup(name, name=f"/aws/lambda/{name}", retention_in_days=log_retention_days,
                                            tags=tags, opts=child)
        role = aws.iam.Role(name, name=name, assume_role_policy=trust("lambda.amazonaws.com"), tags=tags, opts=child)
        statements = [allow(["logs:CreateLogStream", "logs:PutLogEvents"],
                            [pulumi.Output.concat(log_group.arn, ":*")]), *grants]
        if vpc is not None:  # Lambda creates its ENIs with the function's role; EC2 offers no narrower scope
            statements.append(allow(_ENI_ACTIONS, ["*"]))
        if dead_letter_arn is not None:
            statements.append(allow(["sqs:SendMessage"], [dead_letter_arn]))
        policy = aws.iam.RolePolicy(name, role=role.id, policy=document(*statements), opts=child)
        self.role = role
        self.function = aws.lambda_.Function(
            name, name=name, role=role.arn, runtime=RUNTIME, handler=handler,
            code=pulumi.FileArchive(str(code_dir)), timeout=timeout, memory_size=memory_mb,
            environment={"variables": pulumi.Output.all(**environment).apply(
                lambda values: checked_environment(name, values))},
            logging_config={"log_format": "JSON", "log_group": log_group.name},
            vpc_config={"subnet_ids": vpc[0], "security_group_ids": vpc[1]} if vpc else None,
            dead_letter_config={"target_arn": dead_letter_arn} if dead_letter_arn is not None else None,
            tags=tags, opts=pulumi.ResourceOptions(parent=self, depends_on=[policy, log_group]))
        self.register_outputs({"arn": self.function.arn})


class EnvironmentTooLarge(ValueError):
    """A function's settings exceed what Lambda accepts; raised at deploy time, before AWS refuses."""


def checked_environment(function: str, variables: dict[str, str]) -> dict[str, str]:
    """``variables``, or a clear error naming the largest settings when Lambda would refuse them."""
    size = sum(len(k.encode()) + len(str(v).encode()) for k, v in variables.items())
    if size > ENVIRONMENT_LIMIT:
        largest = sorted(variables, key=lambda k: len(str(variables[k]).encode()), reverse=True)[:3]
        raise EnvironmentTooLarge(
            f"{function}: its settings are {size} bytes, over Lambda's {ENVIRONMENT_LIMIT}-byte environment limit "
            f"(largest: {', '.join(largest)}); shorten wardgate:approvals.identities/grants or wardgate:issuers")
    return variables
