"""The AWS program, run under Pulumi's mocks for both example stacks (Pulumi.dev.yaml, Pulumi.prod.yaml):
the security invariants of issue 7 hold on what it declares."""

from __future__ import annotations

import json
from ipaddress import ip_network

import pytest
import yaml

from infra_harness import REPO_ROOT, as_list, policy_statements, run_program
from functions.build import AWS_HANDLERS, build
from infra.aws.iam import STAR_ONLY_ACTIONS
from infra.aws.wardgate_aws import deploy
from infra.common.config import ApprovalSettings, load_stack_file
from wardgate.config import GatewayConfig

AWS_DIR = REPO_ROOT / "infra" / "aws"


def teams_variant(config):
    """The dev stack with Teams approvals: the notifier then signs cards and mints links."""
    approvals = ApprovalSettings.model_validate({
        **config.approvals.model_dump(mode="json", exclude={"identities", "link_approvers"}), "channel": "teams",
        "identities": {"teams:0c1d2e3f-4a5b-4c6d-8e7f-90a1b2c3d4e5": {
            "issuer": "https://acme.okta.com", "subject": "alice@acme.example", "groups": ["platform-oncall"]}},
        "link_approvers": ["teams:0c1d2e3f-4a5b-4c6d-8e7f-90a1b2c3d4e5"]})
    return config.model_copy(update={"approvals": approvals})


@pytest.fixture(scope="module", params=["dev", "prod", "dev-teams"])
def deployed(request, fake_functions, tmp_path_factory):
    config = load_stack_file(AWS_DIR / f"Pulumi.{request.param.split('-')[0]}.yaml")
    if request.param.endswith("-teams"):
        config = teams_variant(config)
    build_dir = tmp_path_factory.mktemp(f"aws-build-{request.param}")
    stack = run_program(lambda: deploy(config, functions_dir=fake_functions, build_dir=build_dir),
                        "wardgate-aws", request.param)
    stack.config = config
    stack.built = build("aws", tmp_path_factory.mktemp("aws-rebuild"), functions_dir=fake_functions)
    stack.build_dir = build_dir
    return stack


def _role_policies(stack) -> dict[str, list[dict]]:
    """Role name → its inline policy statements."""
    roles = {r.state["id"]: r.inputs["name"] for r in stack.of_type("aws:iam/role:Role")}
    return {roles[p.inputs["role"]]: policy_statements(p.inputs["policy"])
            for p in stack.of_type("aws:iam/rolePolicy:RolePolicy")}


def _actions(statements: list[dict]) -> set[str]:
    return {action for s in statements if s["Effect"] == "Allow" for action in as_list(s["Action"])}


def test_gateway_has_no_public_ingress(deployed):
    [lb] = deployed.of_type("aws:lb/loadBalancer:LoadBalancer")
    assert lb.inputs["internal"] is True and lb.inputs["loadBalancerType"] == "network"
    [service] = deployed.of_type("aws:ecs/service:Service")
    assert service.inputs["networkConfiguration"]["assignPublicIp"] is False
    assert service.inputs["enableExecuteCommand"] is False
    for group in deployed.of_type("aws:ec2/securityGroup:SecurityGroup"):
        for rule in group.inputs.get("ingresses", []):
            for cidr in rule.get("cidrBlocks", []):
                assert ip_network(cidr).is_private and ip_network(cidr).prefixlen > 0, (group.name, cidr)
    for subnet in deployed.of_type("aws:ec2/subnet:Subnet"):
        assert subnet.inputs.get("mapPublicIpOnLaunch") is False
    # The listener forwards TCP; TLS is the gateway's, with a certificate from Secrets Manager.
    [listener] = deployed.of_type("aws:lb/listener:Listener")
    assert listener.inputs["protocol"] == "TCP" and listener.inputs["port"] == 6432
    document = yaml.safe_load(_gateway_container(deployed)["environment"][0]["value"])
    assert set(document["listeners"][0]["tls"]) == {"cert_file", "key_file"}


def test_a_cancel_connection_reaches_the_replica_that_issued_its_key(deployed):
    # psql's Ctrl-C and drivers' timeouts open a new connection: from the same client address, the
    # target group must send it to the same replica (the only one that knows the key).
    [target_group] = deployed.of_type("aws:lb/targetGroup:TargetGroup")
    assert target_group.inputs["stickiness"] == {"type": "source_ip", "enabled": True}
    assert target_group.inputs["preserveClientIp"] == "true"


def test_prod_stack_is_deployed_into_the_existing_network(deployed):
    vpcs = deployed.of_type("aws:ec2/vpc:Vpc")
    [service] = deployed.of_type("aws:ecs/service:Service")
    if deployed.config.network.create:
        assert len(vpcs) == 1 and len(deployed.of_type("aws:ec2/natGateway:NatGateway")) == 1
    else:
        assert vpcs == []
        assert service.inputs["networkConfiguration"]["subnets"] == deployed.config.network.subnet_ids


def test_audit_bucket_is_worm_encrypted_and_private(deployed):
    [bucket] = deployed.of_type("aws:s3/bucket:Bucket")
    bucket_id = bucket.state["id"]
    assert bucket.inputs["objectLockEnabled"] is True
    [lock] = deployed.of_type("aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration")
    retention = lock.inputs["rule"]["defaultRetention"]
    assert lock.inputs["bucket"] == bucket_id
    assert retention["mode"] == ("COMPLIANCE" if deployed.config.tier == "prod" else "GOVERNANCE")
    assert retention["days"] == deployed.config.audit.retention_days
    [versioning] = deployed.of_type("aws:s3/bucketVersioning:BucketVersioning")
    assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"
    [encryption] = deployed.of_type(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    default = encryption.inputs["rules"][0]["applyServerSideEncryptionByDefault"]
    keys = deployed.state_by("arn")
    assert default["sseAlgorithm"] == "aws:kms"
    assert keys[default["kmsMasterKeyId"]].inputs.get("enableKeyRotation") is True
    [block] = deployed.of_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert all(block.inputs[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                                   "restrictPublicBuckets"))
    [policy] = deployed.of_type("aws:s3/bucketPolicy:BucketPolicy")
    [deny] = policy_statements(policy.inputs["policy"])
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_signing_key_is_an_asymmetric_p256_kms_key(deployed):
    signing = [k for k in deployed.of_type("aws:kms/key:Key") if k.inputs.get("keyUsage") == "SIGN_VERIFY"]
    assert [k.inputs["customerMasterKeySpec"] for k in signing] == ["ECC_NIST_P256"]


def test_every_queue_has_a_dead_letter_path(deployed):
    queues = {q.state["arn"]: q for q in deployed.of_type("aws:sqs/queue:Queue")}
    dead_letter_targets = set()
    for queue in queues.values():
        if "redrivePolicy" in queue.inputs:
            redrive = json.loads(queue.inputs["redrivePolicy"])
            assert redrive["maxReceiveCount"] == deployed.config.approvals.max_receives
            dead_letter_targets.add(redrive["deadLetterTargetArn"])
    for target in deployed.of_type("aws:cloudwatch/eventTarget:EventTarget"):
        dead_letter_targets.add(target.inputs["deadLetterConfig"]["arn"])
    assert dead_letter_targets <= set(queues)
    for arn, queue in queues.items():
        assert "redrivePolicy" in queue.inputs or arn in dead_letter_targets, f"{queue.name} has no dead-letter path"
        assert queue.inputs["sqsManagedSseEnabled"] is True
    assert len(dead_letter_targets) == 2  # approvals DLQ, evidence-export DLQ


def test_no_policy_grants_wildcards_where_a_narrower_grant_exists(deployed):
    for role, statements in _role_policies(deployed).items():
        for statement in statements:
            actions = as_list(statement["Action"])
            assert not any(a == "*" or a.endswith(":*") for a in actions), (role, actions)
            if "*" in as_list(statement["Resource"]):
                assert set(actions) <= STAR_ONLY_ACTIONS, (role, actions)


def test_each_principal_gets_exactly_what_it_uses(deployed):
    env = deployed.config.environment
    policies = _role_policies(deployed)
    logs = {"logs:CreateLogStream", "logs:PutLogEvents"}
    expected = {
        f"wardgate-{env}-gateway-task": {
            "sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl", "dynamodb:GetItem", "dynamodb:PutItem",
            "dynamodb:Query", "s3:GetBucketObjectLockConfiguration", "s3:ListBucketVersions", "s3:GetObjectVersion",
            "s3:PutObject", "kms:GenerateDataKey", "kms:Decrypt", "kms:Sign", "kms:GetPublicKey",
            "secretsmanager:GetSecretValue"},
        f"wardgate-{env}-gateway-execution": logs | {
            "secretsmanager:GetSecretValue", "kms:Decrypt", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
            "ecr:GetAuthorizationToken"},
        f"wardgate-{env}-notifier": logs | {
            "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility",
            # DynamoDecisionStore.get and .create: delivered/decided checks, the delivered record.
            "dynamodb:GetItem", "dynamodb:PutItem",
            "secretsmanager:GetSecretValue", "kms:Decrypt"},
        f"wardgate-{env}-webhook": logs | {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query",
                                           "secretsmanager:GetSecretValue", "kms:Decrypt"},
        f"wardgate-{env}-evidence-export": logs | {
            "s3:ListBucketVersions", "s3:GetObjectVersion", "s3:GetBucketObjectLockConfiguration", "s3:PutObject",
            "kms:Decrypt", "kms:GenerateDataKey", "kms:Sign", "kms:GetPublicKey", "sqs:SendMessage"},
        f"wardgate-{env}-key-rotation": logs | {
            "secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue",
            "secretsmanager:UpdateSecretVersionStage", "secretsmanager:GetRandomPassword", "kms:Decrypt",
            "kms:GenerateDataKey", "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces",
            "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"},
        f"wardgate-{env}-rotation-scheduler": {"lambda:InvokeFunction"},
        f"wardgate-{env}-auditor": {
            "s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectRetention", "s3:GetObjectLegalHold", "s3:ListBucket",
            "s3:ListBucketVersions", "s3:GetBucketObjectLockConfiguration", "s3:GetBucketVersioning", "kms:Decrypt",
            "kms:DescribeKey", "kms:GetPublicKey", "kms:Verify", "dynamodb:GetItem", "dynamodb:Query"},
    }
    assert {role: _actions(s) for role, s in policies.items()} == expected

    secrets = {s.inputs["name"]: s.state["arn"] for s in deployed.of_type("aws:secretsmanager/secret:Secret")}
    resources_of = lambda role, action: {r for s in policies[role] if action in as_list(s["Action"])  # noqa: E731
                                         for r in as_list(s["Resource"])}
    # Secrets: each principal reads only its own.
    db = {secrets[f"wardgate-{env}-db-{name}"] for name in deployed.config.resources}
    assert resources_of(f"wardgate-{env}-gateway-task", "secretsmanager:GetSecretValue") == \
        db | {secrets[f"wardgate-{env}-masking-key"]}
    # The notifier reads the signing secret only when it signs (teams/generic bodies, one-time links).
    signs = deployed.config.approvals.channel != "slack" or bool(deployed.config.approvals.link_approvers)
    assert resources_of(f"wardgate-{env}-notifier", "secretsmanager:GetSecretValue") == \
        {secrets[f"wardgate-{env}-approver-webhook-url"]} | \
        ({secrets[f"wardgate-{env}-approver-signing-secret"]} if signs else set())
    [table] = deployed.of_type("aws:dynamodb/table:Table")
    for role in ("notifier", "webhook", "gateway-task"):
        for action in ("dynamodb:GetItem", "dynamodb:PutItem"):
            assert resources_of(f"wardgate-{env}-{role}", action) == {table.state["arn"]}, (role, action)
    assert resources_of(f"wardgate-{env}-webhook", "secretsmanager:GetSecretValue") == \
        {secrets[f"wardgate-{env}-approver-signing-secret"]}
    rotated = {secrets[f"wardgate-{env}-db-{n}"] for n, r in deployed.config.resources.items() if r.rotate_days}
    assert resources_of(f"wardgate-{env}-key-rotation", "secretsmanager:PutSecretValue") == rotated
    # The audit trail: the gateway writes audit/, evidence export reads audit/ and writes evidence/ only.
    [bucket] = deployed.of_type("aws:s3/bucket:Bucket")
    arn = bucket.state["arn"]
    assert resources_of(f"wardgate-{env}-gateway-task", "s3:PutObject") == {f"{arn}/audit/*"}
    assert resources_of(f"wardgate-{env}-evidence-export", "s3:GetObjectVersion") == {f"{arn}/audit/*",
                                                                                     f"{arn}/evidence/*"}
    assert resources_of(f"wardgate-{env}-evidence-export", "s3:PutObject") == {f"{arn}/evidence/*"}
    [signing] = [k.state["arn"] for k in deployed.of_type("aws:kms/key:Key") if k.inputs.get("keyUsage") == "SIGN_VERIFY"]
    assert resources_of(f"wardgate-{env}-gateway-task", "kms:Sign") == {signing}
    assert resources_of(f"wardgate-{env}-evidence-export", "kms:Sign") == {signing}
    # The auditor role trusts exactly the configured principals.
    auditor = deployed.one("aws:iam/role:Role", f"wardgate-{env}-auditor")
    trust = json.loads(auditor.inputs["assumeRolePolicy"])["Statement"][0]["Principal"]["AWS"]
    assert trust == deployed.config.auditors


def _gateway_container(stack) -> dict:
    [task] = stack.of_type("aws:ecs/taskDefinition:TaskDefinition")
    [container] = json.loads(task.inputs["containerDefinitions"])
    return container


def test_secrets_are_wired_by_reference_only(deployed):
    assert deployed.of_type("aws:secretsmanager/secretVersion:SecretVersion") == []
    secret_arns = {s.state["arn"] for s in deployed.of_type("aws:secretsmanager/secret:Secret")}
    container = _gateway_container(deployed)
    assert [e["name"] for e in container["environment"]] == ["WARDGATE_CONFIG_YAML"]
    assert {s["valueFrom"] for s in container["secrets"]} <= secret_arns
    document = yaml.safe_load(container["environment"][0]["value"])
    for name, resource in document["resources"].items():
        assert resource["password"].removeprefix("aws-sm://") in secret_arns, name
    assert document["masking_key"].removeprefix("aws-sm://") in secret_arns
    for function in deployed.of_type("aws:lambda/function:Function"):
        for key, value in function.inputs["environment"]["variables"].items():
            if "SECRET" in key:
                assert value.removeprefix("aws-sm://") in secret_arns, (function.name, key)
    for secret in deployed.of_type("aws:secretsmanager/secret:Secret"):
        assert secret.inputs["kmsKeyId"] in {k.state["arn"] for k in deployed.of_type("aws:kms/key:Key")}


def test_rendered_gateway_config_is_a_valid_gateway_configuration(deployed):
    document = yaml.safe_load(_gateway_container(deployed)["environment"][0]["value"])
    config = GatewayConfig.model_validate(document)
    env = deployed.config.environment
    assert [i.issuer for i in config.issuers] == [i.issuer for i in deployed.config.issuers]
    assert set(config.resources) == set(deployed.config.resources)
    assert config.audit.archive == f"s3://wardgate-{env}-audit/audit/?region=eu-west-1"
    assert config.audit.signer.startswith("awskms://arn:aws:kms:eu-west-1:")
    assert config.approvals.queue == f"sqs://wardgate-{env}-approvals?region=eu-west-1"
    assert config.approvals.store == f"dynamodb://wardgate-{env}-decisions?region=eu-west-1"
    assert config.approvals.run_notifier is False
    assert config.approvals.public_url.endswith(".lambda-url.eu-west-1.on.aws/")
    # The URLs are the forms the gateway's AWS adapters parse.
    from wardgate.adapters import aws as adapters
    adapters._parse_url(config.approvals.queue, "sqs", {"region", "visibility", "wait"})
    adapters._parse_url(config.audit.archive, "s3", {"region", "worm"})


def test_functions_run_the_code_build_packaged(deployed):
    functions = {f.inputs["name"]: f for f in deployed.of_type("aws:lambda/function:Function")}
    env = deployed.config.environment
    assert set(functions) == {f"wardgate-{env}-{p.replace('_', '-')}" for p in AWS_HANDLERS}
    for purpose, (unit, handler) in AWS_HANDLERS.items():
        function = functions[f"wardgate-{env}-{purpose.replace('_', '-')}"]
        assert function.inputs["handler"] == handler
        assert function.inputs["runtime"] == "python3.11"
        packaged = function.inputs["code"].path
        assert packaged == str(deployed.build_dir / "aws" / unit)
        # What was uploaded is byte-for-byte what an independent build produces.
        from functions.build import tree_digest
        assert tree_digest(packaged) == tree_digest(deployed.built[unit])


def test_notifier_webhook_schedule_and_rotation_are_wired(deployed):
    [mapping] = deployed.of_type("aws:lambda/eventSourceMapping:EventSourceMapping")
    approvals = [q for q in deployed.of_type("aws:sqs/queue:Queue") if q.inputs["name"].endswith("-approvals")]
    assert mapping.inputs["eventSourceArn"] == approvals[0].state["arn"]
    [url] = deployed.of_type("aws:lambda/functionUrl:FunctionUrl")
    assert url.inputs["functionName"].endswith("-webhook")
    [rule] = deployed.of_type("aws:cloudwatch/eventRule:EventRule")
    assert rule.inputs["scheduleExpression"] == f"cron(0 {deployed.config.audit.evidence_export_hour_utc} * * ? *)"
    rotations = deployed.of_type("aws:secretsmanager/secretRotation:SecretRotation")
    rotated = sorted(n for n, r in deployed.config.resources.items() if r.rotate_days)
    assert sorted(r.name.removeprefix(f"wardgate-{deployed.config.environment}-rotate-") for r in rotations) == rotated
    for log_group in deployed.of_type("aws:cloudwatch/logGroup:LogGroup"):
        assert log_group.inputs["retentionInDays"] == deployed.config.audit.log_retention_days


def test_prod_protects_what_it_must_keep(deployed):
    prod = deployed.config.tier == "prod"
    [table] = deployed.of_type("aws:dynamodb/table:Table")
    assert table.inputs["deletionProtectionEnabled"] is prod
    assert table.inputs["pointInTimeRecovery"]["enabled"] is True
    [lb] = deployed.of_type("aws:lb/loadBalancer:LoadBalancer")
    assert lb.inputs["enableDeletionProtection"] is prod


def test_decision_table_has_the_key_schema_the_gateway_adapter_uses(deployed):
    from wardgate.adapters.aws import DECISION_TABLE_KEY_SCHEMA

    [table] = deployed.of_type("aws:dynamodb/table:Table")
    keys = {k["KeyType"]: k["AttributeName"] for k in DECISION_TABLE_KEY_SCHEMA["KeySchema"]}
    assert (table.inputs["hashKey"], table.inputs["rangeKey"]) == (keys["HASH"], keys["RANGE"])
    assert {(a["name"], a["type"]) for a in table.inputs["attributes"]} == \
        {(a["AttributeName"], a["AttributeType"]) for a in DECISION_TABLE_KEY_SCHEMA["AttributeDefinitions"]}


def test_previous_credentials_are_retired_hourly_by_a_scheduler_that_may_only_invoke_rotation(deployed):
    env = deployed.config.environment
    secrets = {s.inputs["name"]: s.state["arn"] for s in deployed.of_type("aws:secretsmanager/secret:Secret")}
    rotation = deployed.one("aws:lambda/function:Function", f"wardgate-{env}-key-rotation")
    schedules = {s.inputs["name"]: s for s in deployed.of_type("aws:scheduler/schedule:Schedule")}
    rotated = sorted(n for n, r in deployed.config.resources.items() if r.rotate_days)
    assert sorted(schedules) == [f"wardgate-{env}-retire-{n}" for n in rotated]
    role = deployed.one("aws:iam/role:Role", f"wardgate-{env}-rotation-scheduler")
    [trusted] = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    assert trusted["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trusted["Condition"] == {"StringEquals": {"aws:SourceAccount": "123456789012"}}
    assert _role_policies(deployed)[f"wardgate-{env}-rotation-scheduler"] == [
        {"Effect": "Allow", "Action": ["lambda:InvokeFunction"], "Resource": [rotation.state["arn"]]}]
    for name in rotated:
        schedule = schedules[f"wardgate-{env}-retire-{name}"]
        assert schedule.inputs["scheduleExpression"] == "rate(1 hour)"
        target = schedule.inputs["target"]
        assert target["arn"] == rotation.state["arn"] and target["roleArn"] == role.state["arn"]
        # The event functions/key_rotation/aws.py acts on: its own step, for exactly this secret.
        assert json.loads(target["input"]) == {"SecretId": secrets[f"wardgate-{env}-db-{name}"],
                                               "Step": "retirePrevious"}


def test_rotation_settings_carry_schedule_grace_and_tls(deployed):
    from functions.key_rotation.handler import load_targets

    env = deployed.config.environment
    rotation = deployed.one("aws:lambda/function:Function", f"wardgate-{env}-key-rotation")
    targets = load_targets(rotation.inputs["environment"]["variables"])  # the function's own parser
    secrets = {s.inputs["name"]: s.state["arn"] for s in deployed.of_type("aws:secretsmanager/secret:Secret")}
    rotated = {n: r for n, r in deployed.config.resources.items() if r.rotate_days}
    assert set(targets) == {f"aws-sm://{secrets[f'wardgate-{env}-db-{n}']}" for n in rotated}
    for url, target in targets.items():
        settings = rotated[target.resource]
        assert (target.rotate_days, target.grace_seconds, target.sslmode) == (
            settings.rotate_days, settings.grace_seconds, "require")
        assert settings.credential_refresh_seconds < target.grace_seconds < target.rotate_days * 86400


def test_the_webhook_trusts_the_stacks_issuers_for_its_rest_api(deployed):
    from functions.approval.handler import ApprovalSettings

    env = deployed.config.environment
    webhook = deployed.one("aws:lambda/function:Function", f"wardgate-{env}-webhook")
    settings = ApprovalSettings.from_environment(webhook.inputs["environment"]["variables"])
    assert list(settings.issuers) == deployed.config.issuers
    for other in deployed.of_type("aws:lambda/function:Function"):
        if other is not webhook:
            assert "WARDGATE_ISSUERS" not in other.inputs["environment"]["variables"], other.name


def _environment(stack, purpose: str) -> dict[str, str]:
    function = stack.one("aws:lambda/function:Function", f"wardgate-{stack.config.environment}-{purpose}")
    return function.inputs["environment"]["variables"]


def test_the_approval_functions_settings_let_an_approver_decide_through_the_stacks_channel(
        deployed, tmp_path, monkeypatch):
    from approval_wiring import check_approval_wiring

    env = deployed.config.environment
    policies = _role_policies(deployed)
    readable = lambda role: {f"aws-sm://{r}" for s in policies[role]  # noqa: E731
                             if "secretsmanager:GetSecretValue" in as_list(s["Action"]) for r in as_list(s["Resource"])}
    gateway = GatewayConfig.model_validate(yaml.safe_load(_gateway_container(deployed)["environment"][0]["value"]))
    notifier = _environment(deployed, "notifier")
    check_approval_wiring(deployed.config, notifier, _environment(deployed, "webhook"), gateway.approvals,
                          notifier_secrets=readable(f"wardgate-{env}-notifier"),
                          webhook_secrets=readable(f"wardgate-{env}-webhook"),
                          store_path=tmp_path / "decisions.db", monkeypatch=monkeypatch)
    [url] = deployed.of_type("aws:lambda/functionUrl:FunctionUrl")
    assert notifier["WARDGATE_WEBHOOK_ENDPOINT"] == url.state["functionUrl"]  # links point at the webhook


def test_optional_approver_settings_are_absent_when_the_stack_has_none(fake_functions, tmp_path):
    config = load_stack_file(AWS_DIR / "Pulumi.dev.yaml")
    config = config.model_copy(update={"approvals": config.approvals.model_copy(update={"identities": {},
                                                                                        "grants": {}})})
    stack = run_program(lambda: deploy(config, functions_dir=fake_functions, build_dir=tmp_path),
                        "wardgate-aws", "dev")
    stack.config = config
    webhook, notifier = _environment(stack, "webhook"), _environment(stack, "notifier")
    for name in ("WARDGATE_APPROVER_IDENTITIES", "WARDGATE_GRANTS", "WARDGATE_LINK_APPROVERS", ):
        assert name not in webhook and name not in notifier
    assert "WARDGATE_SIGNING_SECRET" not in notifier  # slack, no links: the notifier signs nothing


def test_settings_over_lambdas_environment_limit_are_refused_naming_them(fake_functions, tmp_path):
    from infra.aws.lambdas import EnvironmentTooLarge

    config = load_stack_file(AWS_DIR / "Pulumi.dev.yaml")
    many = {f"slack:U{n:08d}": {"issuer": "https://acme.okta.com", "subject": f"approver-{n}@acme.example",
                                "groups": ["platform-oncall"]} for n in range(60)}
    approvals = ApprovalSettings.model_validate({**config.approvals.model_dump(mode="json"), "identities": many})
    config = config.model_copy(update={"approvals": approvals})
    with pytest.raises(Exception) as caught:
        run_program(lambda: deploy(config, functions_dir=fake_functions, build_dir=tmp_path), "wardgate-aws", "dev")
    error = caught.value
    while not isinstance(error, EnvironmentTooLarge) and (error.__cause__ or error.__context__):
        error = error.__cause__ or error.__context__
    assert isinstance(error, EnvironmentTooLarge), caught.value
    assert "wardgate-dev-webhook" in str(error) and "WARDGATE_APPROVER_IDENTITIES" in str(error)
