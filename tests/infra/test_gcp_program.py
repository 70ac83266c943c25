"""The GCP program, run under Pulumi's mocks for both example stacks: the security invariants hold."""

from __future__ import annotations

import re

import pytest
import yaml

from infra_harness import REPO_ROOT, run_program
from functions.build import GCP_ENTRY_POINTS, build, tree_digest
from infra.common.config import load_stack_file
from infra.gcp.wardgate_gcp import deploy
from wardgate.config import GatewayConfig

GCP_DIR = REPO_ROOT / "infra" / "gcp"


@pytest.fixture(scope="module", params=["dev", "prod"])
def deployed(request, fake_functions, tmp_path_factory):
    config = load_stack_file(GCP_DIR / f"Pulumi.{request.param}.yaml")
    build_dir = tmp_path_factory.mktemp(f"gcp-build-{request.param}")
    stack = run_program(lambda: deploy(config, functions_dir=fake_functions, build_dir=build_dir),
                        "wardgate-gcp", request.param)
    stack.config = config
    stack.build_dir = build_dir
    stack.built = build("gcp", tmp_path_factory.mktemp("gcp-rebuild"), functions_dir=fake_functions)
    return stack


def _name(stack, purpose: str) -> str:
    return f"wardgate-{stack.config.environment}-{purpose}"


def test_gateway_has_no_public_ingress(deployed):
    [service] = deployed.of_type("gcp:cloudrunv2/service:Service")
    assert service.inputs["ingress"] == "INGRESS_TRAFFIC_INTERNAL_ONLY"
    invokers = [m for m in deployed.of_type("gcp:cloudrunv2/serviceIamMember:ServiceIamMember")
                if m.inputs["name"] == service.inputs["name"]]
    assert invokers == []  # nobody, let alone allUsers, is granted run.invoker on the gateway
    assert service.inputs["template"]["vpcAccess"]["egress"] == "ALL_TRAFFIC"
    assert deployed.of_type("gcp:compute/firewall:Firewall") == []  # GCP's implied deny-ingress stands
    # Only the webhook function is public; every other function is internal and invoked by the pusher.
    for function in deployed.of_type("gcp:cloudfunctionsv2/function:Function"):
        public = function.inputs["name"] == _name(deployed, "webhook")
        assert function.inputs["serviceConfig"]["ingressSettings"] == ("ALLOW_ALL" if public else "ALLOW_INTERNAL_ONLY")
    all_users = [m.inputs["name"] for m in deployed.of_type("gcp:cloudrunv2/serviceIamMember:ServiceIamMember")
                 if m.inputs["member"] == "allUsers"]
    assert all_users == [_name(deployed, "webhook")]


def test_audit_bucket_is_worm_encrypted_and_private(deployed):
    bucket = deployed.one("gcp:storage/bucket:Bucket", _name(deployed, "audit"))
    retention = bucket.inputs["retentionPolicy"]
    assert retention["retentionPeriod"] == str(deployed.config.audit.retention_days * 86400)
    assert retention["isLocked"] is (deployed.config.tier == "prod")
    assert bucket.inputs["uniformBucketLevelAccess"] is True
    assert bucket.inputs["publicAccessPrevention"] == "enforced"
    assert bucket.inputs["versioning"] == {"enabled": True}
    key = deployed.state_by("id")[bucket.inputs["encryption"]["defaultKmsKeyName"]]
    assert key.type == "gcp:kms/cryptoKey:CryptoKey" and key.inputs["purpose"] == "ENCRYPT_DECRYPT"
    # The storage service agent may use the key (else CMEK writes fail).
    agents = [m for m in deployed.of_type("gcp:kms/cryptoKeyIAMMember:CryptoKeyIAMMember")
              if m.inputs["cryptoKeyId"] == key.state["id"]]
    assert [m.inputs["member"] for m in agents] == ["serviceAccount:service-123456789@gs-project-accounts.iam.gserviceaccount.com"]
    for member in deployed.of_type("gcp:storage/bucketIAMMember:BucketIAMMember"):
        assert member.inputs["member"] not in ("allUsers", "allAuthenticatedUsers")


def test_signing_key_is_an_asymmetric_p256_key(deployed):
    [signing] = [k for k in deployed.of_type("gcp:kms/cryptoKey:CryptoKey") if k.inputs["purpose"] == "ASYMMETRIC_SIGN"]
    assert signing.inputs["versionTemplate"]["algorithm"] == "EC_SIGN_P256_SHA256"
    assert signing.inputs["versionTemplate"]["protectionLevel"] == ("HSM" if deployed.config.tier == "prod" else "SOFTWARE")


def test_every_subscription_dead_letters_and_every_dead_letter_topic_keeps_messages(deployed):
    topics = {t.state["id"]: t for t in deployed.of_type("gcp:pubsub/topic:Topic")}
    subscriptions = deployed.of_type("gcp:pubsub/subscription:Subscription")
    dead_topics = set()
    for subscription in subscriptions:
        if subscription.inputs.get("labels", {}).get("wardgate-role") == "dead-letter":
            continue
        policy = subscription.inputs["deadLetterPolicy"]
        assert policy["deadLetterTopic"] in topics and policy["deadLetterTopic"] != subscription.inputs["topic"]
        assert 5 <= policy["maxDeliveryAttempts"] <= 100
        dead_topics.add(policy["deadLetterTopic"])
    held = {s.inputs["topic"] for s in subscriptions if s.inputs.get("labels", {}).get("wardgate-role") == "dead-letter"}
    assert dead_topics == held  # a dead-letter topic without a subscription would drop messages
    agents = {m.inputs["topic"] for m in deployed.of_type("gcp:pubsub/topicIAMMember:TopicIAMMember")
              if "gcp-sa-pubsub" in m.inputs["member"]}
    assert dead_topics <= agents  # Pub/Sub may publish to each dead-letter topic
    # Every non-dead-letter topic is consumed through a dead-lettering subscription.
    consumed = {s.inputs["topic"] for s in subscriptions if "deadLetterPolicy" in s.inputs}
    assert set(topics) - dead_topics == consumed
    approvals = deployed.one("gcp:pubsub/subscription:Subscription", _name(deployed, "approvals-notifier"))
    assert approvals.inputs["deadLetterPolicy"]["maxDeliveryAttempts"] == deployed.config.approvals.max_receives


def _bindings(stack) -> dict[str, set[tuple[str, str]]]:
    """member → {(role, what)} over every IAM member resource."""
    found: dict[str, set[tuple[str, str]]] = {}
    kinds = {"gcp:storage/bucketIAMMember:BucketIAMMember": "bucket",
             "gcp:kms/cryptoKeyIAMMember:CryptoKeyIAMMember": "cryptoKeyId",
             "gcp:secretmanager/secretIamMember:SecretIamMember": "secretId",
             "gcp:pubsub/topicIAMMember:TopicIAMMember": "topic",
             "gcp:pubsub/subscriptionIAMMember:SubscriptionIAMMember": "subscription",
             "gcp:projects/iAMMember:IAMMember": "project",
             "gcp:cloudrunv2/serviceIamMember:ServiceIamMember": "name"}
    for type_token, key in kinds.items():
        for binding in stack.of_type(type_token):
            found.setdefault(binding.inputs["member"], set()).add((binding.inputs["role"], binding.inputs[key]))
    return found


def test_no_broad_roles_and_each_principal_gets_only_what_it_uses(deployed):
    for binding in deployed.of_type("gcp:projects/iAMMember:IAMMember"):
        assert binding.inputs["role"] not in ("roles/owner", "roles/editor", "roles/viewer")
        assert binding.inputs.get("condition", {}).get("expression"), "project-wide grant without a condition"
        assert "/databases/" + _name(deployed, "decisions") in binding.inputs["condition"]["expression"]
    secrets = {s.inputs["secretId"]: s.state["id"] for s in deployed.of_type("gcp:secretmanager/secret:Secret")}
    bindings = _bindings(deployed)
    sa = lambda purpose: f"serviceAccount:{_name(deployed, purpose)}@acme-wardgate.iam.gserviceaccount.com"  # noqa: E731
    bucket, signing = _name(deployed, "audit"), None
    [signing] = [k.state["id"] for k in deployed.of_type("gcp:kms/cryptoKey:CryptoKey")
                 if k.inputs["purpose"] == "ASYMMETRIC_SIGN"]
    accessor = "roles/secretmanager.secretAccessor"
    db = {(accessor, secrets[_name(deployed, f"db-{n}")]) for n in deployed.config.resources}
    assert bindings[sa("gateway")] == db | {
        (accessor, secrets[_name(deployed, p)]) for p in ("masking-key", "gateway-tls-cert", "gateway-tls-key")} | {
        ("roles/datastore.user", "acme-wardgate"), ("roles/storage.objectViewer", bucket),
        ("roles/storage.objectCreator", bucket), ("roles/cloudkms.signerVerifier", signing),
        ("roles/pubsub.publisher", f"projects/acme-wardgate/topics/{_name(deployed, 'approvals')}")}
    assert bindings[sa("notifier")] == {(accessor, secrets[_name(deployed, "approver-webhook-url")])}
    assert bindings[sa("webhook")] == {(accessor, secrets[_name(deployed, "approver-signing-secret")]),
                                       ("roles/datastore.user", "acme-wardgate")}
    assert bindings[sa("evidence")] == {("roles/storage.objectViewer", bucket), ("roles/storage.objectCreator", bucket),
                                        ("roles/cloudkms.signerVerifier", signing)}
    rotated = [n for n, r in deployed.config.resources.items() if r.rotate_days]
    assert bindings.get(sa("rotation"), set()) == {
        (role, secrets[_name(deployed, f"db-{n}")]) for n in rotated
        for role in (accessor, "roles/secretmanager.secretVersionManager")}
    # Object roles are confined to their prefixes.
    conditions = {(b.inputs["member"], b.inputs["role"]): b.inputs["condition"]["expression"]
                  for b in deployed.of_type("gcp:storage/bucketIAMMember:BucketIAMMember") if "condition" in b.inputs}
    assert re.findall(r"objects/([a-z]+/)", conditions[(sa("gateway"), "roles/storage.objectCreator")]) == ["audit/"]
    assert re.findall(r"objects/([a-z]+/)", conditions[(sa("evidence"), "roles/storage.objectCreator")]) == ["evidence/"]
    # Auditors: read-only roles only.
    for auditor in deployed.config.auditors:
        assert {role for role, _ in bindings[auditor]} == {"roles/storage.objectViewer", "roles/cloudkms.publicKeyViewer",
                                                           "roles/datastore.viewer"}


def test_secrets_are_wired_by_reference_only(deployed):
    assert deployed.of_type("gcp:secretmanager/secretVersion:SecretVersion") == []
    secret_ids = {s.state["id"] for s in deployed.of_type("gcp:secretmanager/secret:Secret")}
    [service] = deployed.of_type("gcp:cloudrunv2/service:Service")
    container = service.inputs["template"]["containers"][0]
    assert [e["name"] for e in container["envs"]] == ["WARDGATE_CONFIG_YAML"]
    assert all("valueSource" not in e for e in container["envs"])
    volumes = service.inputs["template"]["volumes"]
    assert {v["secret"]["secret"] for v in volumes} == {_name(deployed, "gateway-tls-cert"),
                                                        _name(deployed, "gateway-tls-key")}
    document = yaml.safe_load(container["envs"][0]["value"])
    for resource in document["resources"].values():
        assert resource["password"].removeprefix("gcp-sm://") in secret_ids
    for function in deployed.of_type("gcp:cloudfunctionsv2/function:Function"):
        config = function.inputs["serviceConfig"]
        assert "secretEnvironmentVariables" not in config
        for key, value in config["environmentVariables"].items():
            if "SECRET" in key:
                assert value.removeprefix("gcp-sm://") in secret_ids, (function.name, key)


def test_rendered_gateway_config_is_valid_and_points_at_the_created_resources(deployed):
    [service] = deployed.of_type("gcp:cloudrunv2/service:Service")
    config = GatewayConfig.model_validate(yaml.safe_load(service.inputs["template"]["containers"][0]["envs"][0]["value"]))
    env = deployed.config.environment
    assert config.audit.archive == f"gs://wardgate-{env}-audit/audit/"
    assert re.fullmatch(r"gcpkms://projects/acme-wardgate/locations/europe-west1/keyRings/wardgate-\w+-keys/"
                        r"cryptoKeys/wardgate-\w+-audit-signing/cryptoKeyVersions/1", config.audit.signer)
    assert config.approvals.queue == (f"pubsub://acme-wardgate/wardgate-{env}-approvals"
                                      f"?subscription=wardgate-{env}-approvals-notifier")
    assert config.approvals.store == f"firestore://acme-wardgate/decisions?database=wardgate-{env}-decisions"
    assert config.listeners[0].tls.cert_file.as_posix() == "/run/secrets/wardgate-tls-cert/server.pem"


def test_functions_run_the_code_build_packaged(deployed):
    objects = {o.state["name"]: o for o in deployed.of_type("gcp:storage/bucketObject:BucketObject")}
    expected = {"notifier": ("approval", GCP_ENTRY_POINTS["approval"][0]),
                "webhook": ("approval", GCP_ENTRY_POINTS["approval"][1]),
                "evidence": ("evidence_export", "export")}
    if any(r.rotate_days for r in deployed.config.resources.values()):
        expected["rotation"] = ("key_rotation", "rotate")
    functions = {f.inputs["name"]: f for f in deployed.of_type("gcp:cloudfunctionsv2/function:Function")}
    assert set(functions) == {_name(deployed, p) for p in expected}
    for purpose, (unit, entry_point) in expected.items():
        build_config = functions[_name(deployed, purpose)].inputs["buildConfig"]
        assert build_config["entryPoint"] == entry_point and build_config["runtime"] == "python311"
        source = objects[build_config["source"]["storageSource"]["object"]]
        assert source.inputs["source"].path == str(deployed.build_dir / "gcp" / unit)
        assert tree_digest(source.inputs["source"].path) == tree_digest(deployed.built[unit])
        assert source.inputs["name"] == f"{unit}-{tree_digest(deployed.built[unit])[:16]}.zip"


def test_evidence_schedule_and_rotation_notifications_are_wired(deployed):
    [job] = deployed.of_type("gcp:cloudscheduler/job:Job")
    assert job.inputs["schedule"] == f"0 {deployed.config.audit.evidence_export_hour_utc} * * *"
    schedule_topic = f"projects/acme-wardgate/topics/{_name(deployed, 'evidence-export-schedule')}"
    assert job.inputs["pubsubTarget"]["topicName"] == schedule_topic
    rotated = {_name(deployed, f"db-{n}") for n, r in deployed.config.resources.items() if r.rotate_days}
    with_rotation = {s.inputs["secretId"] for s in deployed.of_type("gcp:secretmanager/secret:Secret")
                     if "rotation" in s.inputs}
    assert with_rotation == rotated
