"""Where wardgate keeps things on AWS: keys, the WORM audit bucket, the decision table, the
approvals queue and the secrets (created empty: values are put by the operator, never by Pulumi)."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra.aws.iam import deny_insecure_transport, document
from infra.common.config import StackConfig
from infra.common.naming import Naming

AUDIT_PREFIX = "audit/"
EVIDENCE_PREFIX = "evidence/"


class Keys(pulumi.ComponentResource):
    """A symmetric data key (S3 SSE-KMS, secrets) and the asymmetric key that signs audit digests."""

    def __init__(self, name: str, stack: StackConfig, naming: Naming, account_id: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("wardgate:aws:Keys", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, protect=stack.tier == "prod")
        # The AWS default key policy: the account (through IAM policies) administers the key; who may
        # *use* it is decided by the narrow role policies of this program.
        key_policy = pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": [{
            "Sid": "AccountAdministersThroughIam", "Effect": "Allow",
            "Principal": {"AWS": pulumi.Output.concat("arn:aws:iam::", account_id, ":root")},
            "Action": "kms:*", "Resource": "*"}]})
        window = 30 if stack.tier == "prod" else 7
        self.data_key = aws.kms.Key(naming.name("data"), description="wardgate audit bucket and secrets",
                                    enable_key_rotation=True, deletion_window_in_days=window,
                                    policy=key_policy, tags=naming.tags(), opts=child)
        # ECC_NIST_P256 / SIGN_VERIFY: wardgate's ECDSA_P256_SHA256 digest signer (AU-9(3)).
        self.signing_key = aws.kms.Key(naming.name("audit-signing"), description="wardgate audit digest signing",
                                       key_usage="SIGN_VERIFY", customer_master_key_spec="ECC_NIST_P256",
                                       deletion_window_in_days=window, policy=key_policy, tags=naming.tags(),
                                       opts=child)
        aws.kms.Alias(naming.name("audit-signing-alias"), name=f"alias/{naming.name('audit-signing')}",
                      target_key_id=self.signing_key.key_id, opts=pulumi.ResourceOptions(parent=self))
        self.register_outputs({"signing_key_arn": self.signing_key.arn})


class AuditBucket(pulumi.ComponentResource):
    """S3 bucket for audit segments (``audit/``) and evidence (``evidence/``): Object Lock (compliance
    mode in prod: nobody can shorten it), versioning, SSE-KMS with the data key, all public access
    blocked, TLS-only (AU-9, SC-28, SC-8)."""

    def __init__(self, name: str, stack: StackConfig, naming: Naming, data_key: aws.kms.Key,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("wardgate:aws:AuditBucket", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.bucket = aws.s3.Bucket(naming.name("audit"), bucket=naming.global_name("audit"),
                                    object_lock_enabled=True, force_destroy=False, tags=naming.tags(),
                                    opts=pulumi.ResourceOptions(parent=self, protect=stack.tier == "prod"))
        aws.s3.BucketOwnershipControls(naming.name("audit-ownership"), bucket=self.bucket.id,
                                       rule={"object_ownership": "BucketOwnerEnforced"}, opts=child)
        aws.s3.BucketPublicAccessBlock(naming.name("audit-public-access"), bucket=self.bucket.id,
                                       block_public_acls=True, block_public_policy=True, ignore_public_acls=True,
                                       restrict_public_buckets=True, opts=child)
        aws.s3.BucketVersioning(naming.name("audit-versioning"), bucket=self.bucket.id,
                                versioning_configuration={"status": "Enabled"}, opts=child)
        aws.s3.BucketServerSideEncryptionConfiguration(
            naming.name("audit-encryption"), bucket=self.bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms",
                                                                "kms_master_key_id": data_key.arn},
                    "bucket_key_enabled": True}], opts=child)
        aws.s3.BucketObjectLockConfiguration(
            naming.name("audit-object-lock"), bucket=self.bucket.id,
            rule={"default_retention": {"mode": "COMPLIANCE" if stack.tier == "prod" else "GOVERNANCE",
                                        "days": stack.audit.retention_days}}, opts=child)
        objects = pulumi.Output.concat(self.bucket.arn, "/*")
        aws.s3.BucketPolicy(naming.name("audit-policy"), bucket=self.bucket.id,
                            policy=document(deny_insecure_transport([self.bucket.arn, objects], "s3:*")),
                            opts=child)
        self.register_outputs({"bucket": self.bucket.bucket})

    def prefix_arn(self, prefix: str) -> pulumi.Output[str]:
        return pulumi.Output.concat(self.bucket.arn, "/", prefix, "*")


class ApprovalsQueue(pulumi.ComponentResource):
    """SQS approvals queue whose poison messages move to a dead-letter queue after
    ``approvals.max_receives`` deliveries; both encrypted and TLS-only."""

    def __init__(self, name: str, stack: StackConfig, naming: Naming, visibility_seconds: int,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("wardgate:aws:ApprovalsQueue", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.dead_letters = aws.sqs.Queue(naming.name("approvals-dlq"), name=naming.name("approvals-dlq"),
                                          message_retention_seconds=14 * 86400, sqs_managed_sse_enabled=True,
                                          tags={**naming.tags(), "wardgate:role": "dead-letter"}, opts=child)
        self.queue = aws.sqs.Queue(
            naming.name("approvals"), name=naming.name("approvals"), sqs_managed_sse_enabled=True,
            visibility_timeout_seconds=visibility_seconds, message_retention_seconds=4 * 86400,
            redrive_policy=pulumi.Output.json_dumps({"deadLetterTargetArn": self.dead_letters.arn,
                                                     "maxReceiveCount": stack.approvals.max_receives}),
            tags=naming.tags(), opts=child)
        aws.sqs.RedriveAllowPolicy(naming.name("approvals-dlq-allow"), queue_url=self.dead_letters.url,
                                   redrive_allow_policy=pulumi.Output.json_dumps({
                                       "redrivePermission": "byQueue", "sourceQueueArns": [self.queue.arn]}),
                                   opts=child)
        for label, queue in (("approvals", self.queue), ("approvals-dlq", self.dead_letters)):
            aws.sqs.QueuePolicy(naming.name(f"{label}-policy"), queue_url=queue.url,
                                policy=document(deny_insecure_transport([queue.arn], "sqs:*")), opts=child)
        self.register_outputs({"queue_url": self.queue.url})


def decision_table(stack: StackConfig, naming: Naming, parent: pulumi.Resource) -> aws.dynamodb.Table:
    """Create-once decision records, keyed as ``wardgate.adapters.aws.DECISION_TABLE_KEY_SCHEMA``;
    first write wins by conditional put."""
    return aws.dynamodb.Table(
        naming.name("decisions"), name=naming.name("decisions"), billing_mode="PAY_PER_REQUEST",
        hash_key="collection", range_key="record_key",
        attributes=[{"name": "collection", "type": "S"}, {"name": "record_key", "type": "S"}],
        point_in_time_recovery={"enabled": True},
        server_side_encryption={"enabled": True}, deletion_protection_enabled=stack.tier == "prod",
        tags=naming.tags(), opts=pulumi.ResourceOptions(parent=parent))


def secret(purpose: str, description: str, stack: StackConfig, naming: Naming, data_key: aws.kms.Key,
           parent: pulumi.Resource) -> aws.secretsmanager.Secret:
    """An empty secret: its value is put by the operator (``aws secretsmanager put-secret-value``)."""
    return aws.secretsmanager.Secret(
        naming.name(purpose), name=naming.name(purpose), description=description, kms_key_id=data_key.arn,
        recovery_window_in_days=30 if stack.tier == "prod" else 7, tags=naming.tags(),
        opts=pulumi.ResourceOptions(parent=parent))
