"""wardgate on AWS: ``deploy(stack)`` builds every resource of one environment.

Gateway on ECS Fargate behind an internal NLB; SQS approvals queue + DLQ; DynamoDB decision table;
S3 audit bucket with Object Lock; KMS data and signing keys; Secrets Manager secrets (created empty,
rotated by the rotation function); Lambda functions for notify, webhook, evidence export and rotation;
a read-only auditor role. Every grant is written out here, per principal, so a reviewer can read who
may do what.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pulumi
import pulumi_aws as aws

from functions.build import AWS_HANDLERS, build
from infra.aws.data import AUDIT_PREFIX, EVIDENCE_PREFIX, ApprovalsQueue, AuditBucket, Keys, decision_table, secret
from infra.aws.gateway import GatewayService
from infra.aws.iam import allow, deny_insecure_transport, document, trust, via_service
from infra.aws.lambdas import LambdaFunction
from infra.aws.network import network_for
from infra.common import function_env as env
from infra.common.config import StackConfig, StackConfigError
from infra.common.gateway_config import TLS_FROM_ENV_FILES, GatewayWiring, render_gateway_config
from infra.common.naming import Naming

DEFAULT_BUILD_DIR = Path(__file__).resolve().parent / ".build"
VENDOR_ENV = "WARDGATE_FUNCTIONS_VENDOR_DIR"
_AUDITOR_PRINCIPAL = re.compile(r"^arn:aws:iam::\d{12}:(root|role/[\w+=,.@/-]+|user/[\w+=,.@/-]+)$")
_NOTIFIER_TIMEOUT = 30
# The rotation function's own step (functions/key_rotation/aws.py) and how often it runs.
RETIRE_STEP = "retirePrevious"
RETIRE_SCHEDULE = "rate(1 hour)"


def secret_url(arn: pulumi.Input[str]) -> pulumi.Output[str]:
    return pulumi.Output.concat("aws-sm://", arn)


class WardgateAws(pulumi.ComponentResource):
    """One wardgate environment on AWS."""

    def __init__(self, name: str, stack: StackConfig, code: dict[str, Path],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("wardgate:aws:Deployment", name, None, opts)
        bad_auditors = [a for a in stack.auditors if not _AUDITOR_PRINCIPAL.match(a)]
        if bad_auditors:
            raise StackConfigError(f"wardgate:auditors: {bad_auditors} are not IAM principal ARNs "
                                   "(arn:aws:iam::ACCOUNT:root|role/…|user/…)")
        naming = Naming(stack.environment, stack.name_suffix)
        tags = naming.tags()
        me = pulumi.ResourceOptions(parent=self)
        region = stack.location
        account_id = aws.get_caller_identity_output().account_id

        network = network_for(stack, naming, self)
        keys = Keys(naming.name("keys"), stack, naming, account_id, me)
        audit = AuditBucket(naming.name("audit-store"), stack, naming, keys.data_key, me)
        approvals = ApprovalsQueue(naming.name("approvals-queue"), stack, naming,
                                   visibility_seconds=6 * _NOTIFIER_TIMEOUT, opts=me)
        table = decision_table(stack, naming, self)

        def new_secret(purpose: str, description: str) -> aws.secretsmanager.Secret:
            return secret(purpose, description, stack, naming, keys.data_key, self)

        db_secrets = {name: new_secret(f"db-{name}", f"wardgate's credential for resource {name}")
                      for name in sorted(stack.resources)}
        masking_key = new_secret("masking-key", "HMAC key of the hash masking strategy")
        webhook_url = new_secret("approver-webhook-url", f"{stack.approvals.channel} URL approval requests go to")
        signing_secret = new_secret("approver-signing-secret",
                                    "verifies the chat platform's callbacks; signs teams/generic messages and links")
        tls = {"cert": new_secret("gateway-tls-cert", "gateway TLS certificate chain (PEM)"),
               "key": new_secret("gateway-tls-key", "gateway TLS private key (PEM)")}

        data_key = keys.data_key.arn
        signing_key = keys.signing_key.arn
        decisions_url = pulumi.Output.concat("dynamodb://", table.name, "?region=", region)
        audit_url = pulumi.Output.concat("s3://", audit.bucket.bucket, "/", AUDIT_PREFIX, "?region=", region)
        evidence_url = pulumi.Output.concat("s3://", audit.bucket.bucket, "/", EVIDENCE_PREFIX, "?region=", region)
        signer_url = pulumi.Output.concat("awskms://", signing_key)
        queue_url = pulumi.Output.concat("sqs://", approvals.queue.name, "?region=", region)
        db_urls = {name: secret_url(s.arn) for name, s in db_secrets.items()}

        def write_once(prefix: str) -> list[dict]:
            """What wardgate's S3 object store does to write under ``prefix``: check Object Lock, find
            earlier versions of a key (create-once), read the original, put with If-None-Match."""
            return [
                allow(["s3:GetBucketObjectLockConfiguration"], [audit.bucket.arn]),
                allow(["s3:ListBucketVersions"], [audit.bucket.arn], {"StringLike": {"s3:prefix": [prefix + "*"]}}),
                allow(["s3:GetObjectVersion", "s3:PutObject"], [audit.prefix_arn(prefix)]),
            ]

        # The webhook first: the gateway's approval messages link to it.
        # It is public by necessity (Slack/Teams call it); every request is authenticated by the
        # platform's signature, checked with the signing secret, before anything is recorded.
        webhook = self._function("webhook", code, stack, naming, [
            allow(["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query"], [table.arn]),
            allow(["secretsmanager:GetSecretValue"], [signing_secret.arn]),
            allow(["kms:Decrypt"], [data_key], via_service(region, "secretsmanager")),
        ], {env.DECISION_STORE: decisions_url, env.SIGNING_SECRET: secret_url(signing_secret.arn),
            env.APPROVAL_CHANNEL: stack.approvals.channel,
            env.APPROVER_GROUPS: ",".join(stack.approvals.approver_groups), env.ISSUERS: env.issuers(stack),
            **env.webhook_approvers(stack)})
        self.webhook_url = aws.lambda_.FunctionUrl(naming.name("webhook-url"), function_name=webhook.function.name,
                                                   authorization_type="NONE", opts=me)
        aws.lambda_.Permission(naming.name("webhook-url-invoke"), action="lambda:InvokeFunctionUrl",
                               function=webhook.function.name, principal="*", function_url_auth_type="NONE", opts=me)

        # The gateway.
        wiring = pulumi.Output.all(audit_url, signer_url, queue_url, decisions_url, self.webhook_url.function_url,
                                   secret_url(masking_key.arn), pulumi.Output.all(**db_urls)).apply(
            lambda v: GatewayWiring(audit_archive=v[0], signer=v[1], approvals_queue=v[2], decision_store=v[3],
                                    approvals_public_url=v[4], masking_key=v[5], resource_passwords=dict(v[6]),
                                    tls_cert_file=TLS_FROM_ENV_FILES["cert"], tls_key_file=TLS_FROM_ENV_FILES["key"]))
        self.gateway_config = wiring.apply(lambda w: render_gateway_config(stack, w))
        gateway_grants = [
            allow(["sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:SendMessage"], [approvals.queue.arn]),
            allow(["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query"], [table.arn]),
            *write_once(AUDIT_PREFIX),
            allow(["kms:Decrypt", "kms:GenerateDataKey"], [data_key], via_service(region, "s3", "secretsmanager")),
            allow(["kms:GetPublicKey", "kms:Sign"], [signing_key]),
            allow(["secretsmanager:GetSecretValue"], [*(s.arn for s in db_secrets.values()), masking_key.arn]),
        ]
        self.gateway = GatewayService(naming.name("gateway-service"), stack=stack, naming=naming, network=network,
                                      config_yaml=self.gateway_config, task_grants=gateway_grants,
                                      tls_secret_arns={part: s.arn for part, s in tls.items()},
                                      data_key_arn=data_key, opts=me)

        def function(purpose: str, grants: list[dict], environment: dict, **kwargs) -> LambdaFunction:
            return self._function(purpose, code, stack, naming, grants, environment, **kwargs)

        read_via_secrets_manager = allow(["kms:Decrypt"], [data_key], via_service(region, "secretsmanager"))

        # The notifier reads the signing secret only when it signs (teams/generic bodies, links).
        notifier_secrets = [webhook_url.arn, *([signing_secret.arn] if env.notifier_signs(stack) else [])]
        notifier_signing = {env.SIGNING_SECRET: secret_url(signing_secret.arn)} if env.notifier_signs(stack) else {}
        notifier = function("notifier", [
            allow(["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes",
                   "sqs:ReceiveMessage"], [approvals.queue.arn]),
            # DynamoDecisionStore.get (already delivered? already decided?) and .create (delivered).
            allow(["dynamodb:GetItem", "dynamodb:PutItem"], [table.arn]),
            allow(["secretsmanager:GetSecretValue"], notifier_secrets),
            read_via_secrets_manager,
        ], {env.APPROVALS_QUEUE: queue_url, env.DECISION_STORE: decisions_url,
            env.WEBHOOK_URL_SECRET: secret_url(webhook_url.arn), **notifier_signing, **env.notifier_links(stack),
            env.APPROVAL_CHANNEL: stack.approvals.channel, env.WEBHOOK_ENDPOINT: self.webhook_url.function_url},
            timeout=_NOTIFIER_TIMEOUT)
        aws.lambda_.EventSourceMapping(naming.name("notifier-trigger"), event_source_arn=approvals.queue.arn,
                                       function_name=notifier.function.arn, batch_size=10,
                                       function_response_types=["ReportBatchItemFailures"], opts=me)

        # Evidence export, daily: failed deliveries and failed runs land in a dead-letter queue.
        evidence_dlq = aws.sqs.Queue(naming.name("evidence-export-dlq"), name=naming.name("evidence-export-dlq"),
                                     sqs_managed_sse_enabled=True, message_retention_seconds=14 * 86400,
                                     tags={**tags, "wardgate:role": "dead-letter"}, opts=me)
        evidence = function("evidence_export", [
            # Reads the trail (every version, as verification does), writes evidence write-once.
            allow(["s3:ListBucketVersions"], [audit.bucket.arn], {"StringLike": {"s3:prefix": [AUDIT_PREFIX + "*"]}}),
            allow(["s3:GetObjectVersion"], [audit.prefix_arn(AUDIT_PREFIX)]),
            *write_once(EVIDENCE_PREFIX),
            allow(["kms:Decrypt", "kms:GenerateDataKey"], [data_key], via_service(region, "s3")),
            allow(["kms:GetPublicKey", "kms:Sign"], [signing_key]),
        ], {env.AUDIT_STORE: audit_url, env.EVIDENCE_STORE: evidence_url, env.SIGNER: signer_url},
            timeout=900, memory_mb=1024, dead_letter_arn=evidence_dlq.arn)
        schedule = aws.cloudwatch.EventRule(naming.name("evidence-export-schedule"),
                                            schedule_expression=f"cron(0 {stack.audit.evidence_export_hour_utc} * * ? *)",
                                            tags=tags, opts=me)
        aws.cloudwatch.EventTarget(naming.name("evidence-export-target"), rule=schedule.name,
                                   arn=evidence.function.arn, dead_letter_config={"arn": evidence_dlq.arn},
                                   retry_policy={"maximum_retry_attempts": 3, "maximum_event_age_in_seconds": 3600},
                                   opts=me)
        aws.lambda_.Permission(naming.name("evidence-export-invoke"), action="lambda:InvokeFunction",
                               function=evidence.function.name, principal="events.amazonaws.com",
                               source_arn=schedule.arn, opts=me)
        aws.sqs.QueuePolicy(naming.name("evidence-export-dlq-policy"), queue_url=evidence_dlq.url, policy=document(
            deny_insecure_transport([evidence_dlq.arn], "sqs:*"),
            {"Sid": "ScheduleDeadLetters", "Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"},
             "Action": "sqs:SendMessage", "Resource": evidence_dlq.arn,
             "Condition": {"ArnEquals": {"aws:SourceArn": schedule.arn}}}), opts=me)

        # Credential rotation: Secrets Manager's rotation schedule invokes it per rotated secret.
        rotated = {name: db_secrets[name] for name, r in sorted(stack.resources.items()) if r.rotate_days}
        if rotated:
            rotation_group = aws.ec2.SecurityGroup(
                naming.name("key-rotation"), vpc_id=network.vpc_id, description="wardgate credential rotation",
                egress=[{"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["0.0.0.0/0"],
                         "description": "Secrets Manager API"},
                        *({"protocol": "tcp", "from_port": p, "to_port": p,
                           "cidr_blocks": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"], "description": "backends"}
                          for p in sorted({stack.resources[n].port for n in rotated}))],
                tags=tags, opts=me)
            rotation_urls = pulumi.Output.all(**{n: db_urls[n] for n in rotated}).apply(
                lambda urls: env.rotation_resources(stack, dict(urls)))
            rotation = function("key_rotation", [
                allow(["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue",
                       "secretsmanager:PutSecretValue", "secretsmanager:UpdateSecretVersionStage"],
                      [s.arn for s in rotated.values()]),
                allow(["secretsmanager:GetRandomPassword"], ["*"]),
                allow(["kms:Decrypt", "kms:GenerateDataKey"], [data_key], via_service(region, "secretsmanager")),
            ], {env.ROTATION_RESOURCES: rotation_urls}, timeout=120,
                vpc=(network.private_subnet_ids, [rotation_group.id]))
            for name, db_secret in rotated.items():
                permission = aws.lambda_.Permission(naming.name(f"rotate-{name}-invoke"),
                                                    action="lambda:InvokeFunction",
                                                    function=rotation.function.name,
                                                    principal="secretsmanager.amazonaws.com",
                                                    source_arn=db_secret.arn, opts=me)
                aws.secretsmanager.SecretRotation(
                    naming.name(f"rotate-{name}"), secret_id=db_secret.id,
                    rotation_lambda_arn=rotation.function.arn,
                    rotation_rules={"automatically_after_days": stack.resources[name].rotate_days},
                    # No rotation before the operator has put the first value.
                    rotate_immediately=False,
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[permission]))
            self._retire_schedules(rotated, rotation, naming, account_id)

        # Auditors: read the trail and verify signatures; change nothing.
        self.auditor_role = None
        if stack.auditors:
            self.auditor_role = aws.iam.Role(naming.name("auditor"), name=naming.name("auditor"),
                                             assume_role_policy=pulumi.Output.json_dumps({
                                                 "Version": "2012-10-17", "Statement": [{
                                                     "Effect": "Allow", "Principal": {"AWS": list(stack.auditors)},
                                                     "Action": "sts:AssumeRole"}]}),
                                             tags=tags, opts=me)
            aws.iam.RolePolicy(naming.name("auditor"), role=self.auditor_role.id, policy=document(
                allow(["s3:GetObject", "s3:GetObjectLegalHold", "s3:GetObjectRetention", "s3:GetObjectVersion"],
                      [pulumi.Output.concat(audit.bucket.arn, "/*")]),
                allow(["s3:GetBucketObjectLockConfiguration", "s3:GetBucketVersioning", "s3:ListBucket",
                       "s3:ListBucketVersions"], [audit.bucket.arn]),
                allow(["kms:Decrypt"], [data_key], via_service(region, "s3")),
                allow(["kms:DescribeKey", "kms:GetPublicKey", "kms:Verify"], [signing_key]),
                allow(["dynamodb:GetItem", "dynamodb:Query"], [table.arn]),
            ), opts=me)

        self.outputs = {
            "gateway_endpoint": self.gateway.load_balancer.dns_name,
            "audit_bucket": audit.bucket.bucket,
            "signing_key_arn": signing_key,
            "approvals_queue_url": approvals.queue.url,
            "webhook_url": self.webhook_url.function_url,
            "auditor_role_arn": self.auditor_role.arn if self.auditor_role else None,
            "secrets_to_fill": {purpose: s.arn for purpose, s in [
                *((f"db-{n}", s) for n, s in db_secrets.items()), ("masking-key", masking_key),
                ("approver-webhook-url", webhook_url), ("approver-signing-secret", signing_secret),
                ("gateway-tls-cert", tls["cert"]), ("gateway-tls-key", tls["key"])]},
        }
        self.register_outputs(self.outputs)

    def _retire_schedules(self, rotated: dict[str, aws.secretsmanager.Secret], rotation: LambdaFunction,
                          naming: Naming, account_id: pulumi.Input[str]) -> None:
        """Hourly ``retirePrevious`` per rotated secret, so the previous credential stops working within
        an hour of its grace period (Secrets Manager itself would only retire it at the next rotation).
        A failed run needs no dead-letter queue: the next hour's run does the same work."""
        me = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(naming.name("rotation-scheduler"), name=naming.name("rotation-scheduler"),
                            assume_role_policy=trust("scheduler.amazonaws.com",
                                                     {"StringEquals": {"aws:SourceAccount": account_id}}),
                            tags=naming.tags(), opts=me)
        policy = aws.iam.RolePolicy(naming.name("rotation-scheduler"), role=role.id, policy=document(
            allow(["lambda:InvokeFunction"], [rotation.function.arn])), opts=me)
        for name, db_secret in rotated.items():
            aws.scheduler.Schedule(
                naming.name(f"retire-{name}"), name=naming.name(f"retire-{name}"),
                schedule_expression=RETIRE_SCHEDULE, flexible_time_window={"mode": "OFF"},
                target={"arn": rotation.function.arn, "role_arn": role.arn,
                        "input": pulumi.Output.json_dumps({"SecretId": db_secret.arn, "Step": RETIRE_STEP}),
                        "retry_policy": {"maximum_retry_attempts": 2, "maximum_event_age_in_seconds": 1800}},
                opts=pulumi.ResourceOptions(parent=self, depends_on=[policy]))

    def _function(self, purpose: str, code: dict[str, Path], stack: StackConfig, naming: Naming,
                  grants: list[dict], environment: dict, **kwargs) -> LambdaFunction:
        unit, handler = AWS_HANDLERS[purpose]
        return LambdaFunction(naming.name(purpose.replace("_", "-")), handler=handler, code_dir=code[unit],
                              grants=grants, environment=environment, tags=naming.tags(),
                              log_retention_days=stack.audit.log_retention_days,
                              opts=pulumi.ResourceOptions(parent=self), **kwargs)


def deploy(stack: StackConfig, *, functions_dir: Path | None = None, build_dir: Path | None = None) -> WardgateAws:
    """Package the functions (``functions/build.py``) and declare the environment."""
    vendor = os.environ.get(VENDOR_ENV)  # Lambda installs nothing: dependencies vendored beforehand
    code = build("aws", build_dir or DEFAULT_BUILD_DIR, functions_dir=functions_dir,
                 vendor_dir=Path(vendor) if vendor else None)
    return WardgateAws(Naming(stack.environment).name("aws"), stack, code)
