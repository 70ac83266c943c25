"""The CrossGuard policy pack: it passes every resource the programs declare for the example stacks,
and refuses each insecure variant with a message saying what is wrong."""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest

from infra_harness import REPO_ROOT, run_program
from infra.common.config import load_stack_file

_spec = importlib.util.spec_from_file_location("wardgate_policies", REPO_ROOT / "infra" / "policy-pack" / "wardgate_policies.py")
policies = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(policies)


@pytest.fixture(scope="module")
def all_stacks(fake_functions, tmp_path_factory):
    from infra.aws.wardgate_aws import deploy as aws
    from infra.azure.wardgate_azure import deploy as azure
    from infra.gcp.wardgate_gcp import deploy as gcp

    stacks = []
    for cloud, deploy in (("aws", aws), ("gcp", gcp), ("azure", azure)):
        for env in ("dev", "prod"):
            config = load_stack_file(REPO_ROOT / "infra" / cloud / f"Pulumi.{env}.yaml")
            out = tmp_path_factory.mktemp(f"{cloud}-{env}")
            stacks.append(run_program(lambda: deploy(config, functions_dir=fake_functions, build_dir=out),
                                      f"wardgate-{cloud}", env))
    return stacks


def test_the_programs_pass_their_own_policy_pack(all_stacks):
    checked = set()
    for stack in all_stacks:
        for resource in stack.resources:
            assert policies.violations(resource.type, resource.inputs) == [], (resource.type, resource.name)
            if resource.type in policies.CHECKS:
                checked.add(resource.type)
    # Nearly every checked type occurs in the programs (the *SecretVersion checks must never find one).
    # (and Cloud Run services: none since the gateway moved to VMs; the check stays for forks).
    assert set(policies.CHECKS) - checked == {"aws:secretsmanager/secretVersion:SecretVersion",
                                              "gcp:secretmanager/secretVersion:SecretVersion",
                                              "gcp:cloudrunv2/service:Service"}


@pytest.mark.parametrize("type_token, props, expected", [
    ("aws:lb/loadBalancer:LoadBalancer", {"internal": False}, "internet-facing"),
    ("aws:ec2/securityGroup:SecurityGroup", {"ingresses": [{"fromPort": 6432, "cidrBlocks": ["0.0.0.0/0"]}]},
     "ingress from 0.0.0.0/0"),
    ("aws:s3/bucket:Bucket", {"bucket": "wardgate-prod-audit"}, "without Object Lock"),
    ("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", {"blockPublicAcls": True}, "blockPublicPolicy"),
    ("aws:iam/rolePolicy:RolePolicy", {"policy": json.dumps({"Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/*"}]})}, "wildcard action"),
    ("aws:iam/rolePolicy:RolePolicy", {"policy": json.dumps({"Statement": [
        {"Effect": "Allow", "Action": ["sqs:SendMessage"], "Resource": "*"}]})}, "which accept narrower resources"),
    ("aws:sqs/queue:Queue", {"name": "q"}, "without a redrive policy"),
    ("aws:secretsmanager/secretVersion:SecretVersion", {"secretString": "x"}, "out of band"),
    ("aws:lambda/function:Function", {"environment": {"variables": {"DB": "host=x password=y"}}}, "looks like a secret"),
    ("gcp:cloudrunv2/service:Service", {"ingress": "INGRESS_TRAFFIC_ALL"}, "ingress is 'INGRESS_TRAFFIC_ALL'"),
    ("gcp:compute/forwardingRule:ForwardingRule", {"loadBalancingScheme": "EXTERNAL"}, "not INTERNAL"),
    ("gcp:compute/instanceTemplate:InstanceTemplate", {"networkInterfaces": [{"accessConfigs": [{}]}],
                                                       "metadata": {"enable-oslogin": "TRUE"}}, "external address"),
    ("gcp:compute/instanceTemplate:InstanceTemplate", {"shieldedInstanceConfig": {"enableSecureBoot": False}},
     "enableSecureBoot"),
    ("gcp:compute/instanceTemplate:InstanceTemplate", {"metadata": {}}, "OS Login is not enabled"),
    ("gcp:compute/firewall:Firewall", {"direction": "INGRESS", "sourceRanges": ["0.0.0.0/0"]}, "ingress from 0.0.0.0/0"),
    ("gcp:compute/firewall:Firewall", {"sourceRanges": ["35.191.0.0/16", "8.8.8.0/24"]}, "ingress from 8.8.8.0/24"),
    ("gcp:projects/iAMMember:IAMMember", {"role": "roles/datastore.user", "member": "user:a@b"}, "without an IAM condition"),
    ("gcp:storage/bucket:Bucket", {"name": "wardgate-dev-audit", "uniformBucketLevelAccess": True,
                                   "publicAccessPrevention": "enforced"}, "without a retention policy"),
    ("gcp:pubsub/subscription:Subscription", {"topic": "t"}, "without a dead-letter policy"),
    ("gcp:projects/iAMMember:IAMMember", {"role": "roles/editor", "member": "user:a@b"}, "primitive role"),
    ("gcp:cloudrunv2/serviceIamMember:ServiceIamMember", {"member": "allUsers", "name": "wardgate-prod-gateway"},
     "allUsers may invoke wardgate-prod-gateway"),
    ("azure-native:storage:StorageAccount", {"allowBlobPublicAccess": False, "minimumTlsVersion": "TLS1_0",
                                             "allowSharedKeyAccess": False}, "below 1.2"),
    ("azure-native:app:ContainerApp", {"configuration": {"ingress": {"external": True}}}, "ingress is external"),
    ("azure-native:keyvault:Vault", {"properties": {"enableRbacAuthorization": True}}, "purge protection is off"),
    ("azure-native:authorization:RoleAssignment", {"scope": "/subscriptions/s/resourceGroups/rg"}, "broad scope"),
])
def test_each_insecure_variant_is_refused(type_token, props, expected):
    found = policies.violations(type_token, props)
    assert any(expected in message for message in found), found


def test_crossguard_policies_report_through_the_engine_callback():
    reported = []
    by_name = {p.name: p for p in policies.crossguard_policies()}
    assert len(by_name) == sum(len(entries) for entries in policies.CHECKS.values())
    args = SimpleNamespace(resource_type="aws:lb/loadBalancer:LoadBalancer", props={"internal": False})
    by_name["aws-gateway-lb-internal"].validate(args, lambda message, urn=None: reported.append(message))
    assert reported == ["the load balancer is internet-facing"]
    by_name["aws-no-public-ingress"].validate(args, lambda message, urn=None: reported.append(message))
    assert len(reported) == 1  # a policy ignores other resource types
