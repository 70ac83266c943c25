"""The GCP program, run under Pulumi's mocks for both example stacks: the security invariants hold."""

from __future__ import annotations

import re
from ipaddress import ip_network

import pytest
import yaml

from infra_harness import REPO_ROOT, run_program
from functions.build import GCP_ENTRY_POINTS, build, tree_digest
from infra.common.config import load_stack_file
from infra.gcp.wardgate_gcp import VM_AGENT_ROLES, deploy
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


def _template(stack):
    [template] = stack.of_type("gcp:compute/instanceTemplate:InstanceTemplate")
    return template


def _declaration(stack) -> dict:
    """The container Container-Optimized OS runs on each gateway VM."""
    return yaml.safe_load(_template(stack).inputs["metadata"]["gce-container-declaration"])


def _gateway_document(stack) -> dict:
    [container] = _declaration(stack)["spec"]["containers"]
    assert [e["name"] for e in container["env"]] == ["WARDGATE_CONFIG_YAML"]
    return yaml.safe_load(container["env"][0]["value"])


def test_gateway_has_no_public_ingress(deployed):
    template = _template(deployed)
    [interface] = template.inputs["networkInterfaces"]
    assert "accessConfigs" not in interface and "ipv6AccessConfigs" not in interface  # no external address
    assert template.inputs["shieldedInstanceConfig"] == {"enableSecureBoot": True, "enableVtpm": True,
                                                         "enableIntegrityMonitoring": True}
    metadata = template.inputs["metadata"]
    assert metadata["enable-oslogin"] == "TRUE" and metadata["block-project-ssh-keys"] == "TRUE"
    assert template.inputs["serviceAccount"]["email"] == \
        f"{_name(deployed, 'gateway')}@acme-wardgate.iam.gserviceaccount.com"
    assert template.inputs["disks"][0]["sourceImage"].startswith("projects/cos-cloud/")
    # The only way in is an internal passthrough TCP load balancer on the listener port.
    [rule] = deployed.of_type("gcp:compute/forwardingRule:ForwardingRule")
    assert rule.inputs["loadBalancingScheme"] == "INTERNAL" and rule.inputs["ipProtocol"] == "TCP"
    assert rule.inputs["ports"] == ["6432"] and rule.inputs["allowGlobalAccess"] is False
    [backend] = deployed.of_type("gcp:compute/regionBackendService:RegionBackendService")
    assert backend.inputs["loadBalancingScheme"] == "INTERNAL" and backend.inputs["protocol"] == "TCP"
    # A cancel connection (psql's Ctrl-C, a driver's timeout) must reach the replica that issued the key.
    assert backend.inputs["sessionAffinity"] == "CLIENT_IP"
    [group] = deployed.of_type("gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager")
    assert [b["group"] for b in backend.inputs["backends"]] == [group.state["instanceGroup"]]
    assert group.inputs["versions"][0]["instanceTemplate"] == template.state["selfLinkUnique"]
    assert group.inputs["targetSize"] == deployed.config.gateway.replicas
    [check] = deployed.of_type("gcp:compute/regionHealthCheck:RegionHealthCheck")
    assert check.inputs["httpHealthCheck"] == {"port": 9480, "requestPath": "/readyz"}
    assert backend.inputs["healthChecks"] == check.state["id"]
    assert group.inputs["autoHealingPolicies"]["healthCheck"] == check.state["id"]
    # Firewall: clients on the listener, Google's health checkers on the control port; nothing else.
    rules = {f.inputs["name"]: f for f in deployed.of_type("gcp:compute/firewall:Firewall")}
    assert set(rules) == {_name(deployed, "gateway-clients"), _name(deployed, "gateway-health-checks")}
    clients, checkers = rules[_name(deployed, "gateway-clients")], rules[_name(deployed, "gateway-health-checks")]
    assert clients.inputs["sourceRanges"] == [str(c) for c in deployed.config.network.client_cidrs]
    assert clients.inputs["allows"] == [{"protocol": "tcp", "ports": ["6432"]}]
    assert checkers.inputs["sourceRanges"] == ["35.191.0.0/16", "130.211.0.0/22"]
    assert checkers.inputs["allows"] == [{"protocol": "tcp", "ports": ["9480"]}]
    for firewall in rules.values():
        assert firewall.inputs["direction"] == "INGRESS"
        assert firewall.inputs["targetServiceAccounts"] == [template.inputs["serviceAccount"]["email"]]
        for source in firewall.inputs["sourceRanges"]:
            assert ip_network(source).prefixlen > 0, source  # never 0.0.0.0/0
            assert ip_network(source).is_private or source in ("35.191.0.0/16", "130.211.0.0/22"), source
    # Shared VPC: the rules go into the network's (host) project.
    network_id = deployed.config.network.network_id
    expected_project = network_id.split("/")[1] if network_id else "acme-wardgate"
    assert {f.inputs["project"] for f in rules.values()} == {expected_project}
    assert deployed.of_type("gcp:cloudrunv2/service:Service") == []
    # Only the webhook function is public; every other function is internal and invoked by the pusher.
    for function in deployed.of_type("gcp:cloudfunctionsv2/function:Function"):
        public = function.inputs["name"] == _name(deployed, "webhook")
        assert function.inputs["serviceConfig"]["ingressSettings"] == ("ALLOW_ALL" if public else "ALLOW_INTERNAL_ONLY")
    all_users = [m.inputs["name"] for m in deployed.of_type("gcp:cloudrunv2/serviceIamMember:ServiceIamMember")
                 if m.inputs["member"] == "allUsers"]
    assert all_users == [_name(deployed, "webhook")]


def test_gateway_vm_spools_on_a_cmek_disk_and_pulls_with_its_own_identity(deployed):
    [disk] = _template(deployed).inputs["disks"]
    [data_key] = [k.state["id"] for k in deployed.of_type("gcp:kms/cryptoKey:CryptoKey")
                  if k.inputs["purpose"] == "ENCRYPT_DECRYPT"]
    assert disk["diskEncryptionKey"]["kmsKeySelfLink"] == data_key
    [pull] = deployed.of_type("gcp:artifactregistry/repositoryIamMember:RepositoryIamMember")
    assert (pull.inputs["location"], pull.inputs["repository"], pull.inputs["role"]) == (
        "europe-west1", "wardgate", "roles/artifactregistry.reader")
    assert deployed.config.gateway.image.startswith(
        f"europe-west1-docker.pkg.dev/{pull.inputs['project']}/wardgate/")
    [container] = _declaration(deployed)["spec"]["containers"]
    assert container["image"] == deployed.config.gateway.image
    assert container["securityContext"] == {"privileged": False}


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
    assert sorted(m.inputs["member"] for m in agents) == [
        "serviceAccount:service-123456789@compute-system.iam.gserviceaccount.com",  # the VMs' boot disks
        "serviceAccount:service-123456789@gs-project-accounts.iam.gserviceaccount.com"]
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
             "gcp:cloudrunv2/serviceIamMember:ServiceIamMember": "name",
             "gcp:artifactregistry/repositoryIamMember:RepositoryIamMember": "repository"}
    for type_token, key in kinds.items():
        for binding in stack.of_type(type_token):
            found.setdefault(binding.inputs["member"], set()).add((binding.inputs["role"], binding.inputs[key]))
    return found


def test_no_broad_roles_and_each_principal_gets_only_what_it_uses(deployed):
    for binding in deployed.of_type("gcp:projects/iAMMember:IAMMember"):
        assert binding.inputs["role"] not in ("roles/owner", "roles/editor", "roles/viewer")
        if binding.inputs["role"] in VM_AGENT_ROLES:  # write-only, project-level by nature, the gateway's only
            assert binding.inputs["member"].startswith(f"serviceAccount:{_name(deployed, 'gateway')}@")
            continue
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
        ("roles/pubsub.publisher", f"projects/acme-wardgate/topics/{_name(deployed, 'approvals')}"),
        ("roles/logging.logWriter", "acme-wardgate"), ("roles/monitoring.metricWriter", "acme-wardgate"),
        ("roles/artifactregistry.reader", "wardgate")}
    # The notifier reads the signing secret only when it signs (teams/generic bodies, one-time links),
    # and reads and creates decision records through a custom role holding exactly those permissions.
    signs = deployed.config.approvals.channel != "slack" or bool(deployed.config.approvals.link_approvers)
    notifier_role = f"projects/acme-wardgate/roles/wardgate_{deployed.config.environment}_notifier_decisions"
    assert bindings[sa("notifier")] == {(accessor, secrets[_name(deployed, "approver-webhook-url")]),
                                        (notifier_role, "acme-wardgate")} | (
        {(accessor, secrets[_name(deployed, "approver-signing-secret")])} if signs else set())
    [custom] = deployed.of_type("gcp:projects/iAMCustomRole:IAMCustomRole")
    assert custom.state["name"] == notifier_role
    # FirestoreDecisionStore.get → BatchGetDocuments; .create → Commit with exists=false.
    assert sorted(custom.inputs["permissions"]) == ["datastore.entities.create", "datastore.entities.get"]
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
    [container] = _declaration(deployed)["spec"]["containers"]
    # The boot command fetches the TLS material itself, naming the secrets (never their values).
    script = container["args"][1]
    for part in ("gateway-tls-cert", "gateway-tls-key"):
        assert f"projects/acme-wardgate/secrets/{_name(deployed, part)}" in script
    assert "BEGIN" not in script
    document = _gateway_document(deployed)
    for resource in document["resources"].values():
        assert resource["password"].removeprefix("gcp-sm://") in secret_ids
    for function in deployed.of_type("gcp:cloudfunctionsv2/function:Function"):
        config = function.inputs["serviceConfig"]
        assert "secretEnvironmentVariables" not in config
        for key, value in config["environmentVariables"].items():
            if "SECRET" in key:
                assert value.removeprefix("gcp-sm://") in secret_ids, (function.name, key)


def test_rendered_gateway_config_is_valid_and_points_at_the_created_resources(deployed):
    config = GatewayConfig.model_validate(_gateway_document(deployed))
    env = deployed.config.environment
    assert config.audit.archive == f"gs://wardgate-{env}-audit/audit/"
    assert re.fullmatch(r"gcpkms://projects/acme-wardgate/locations/europe-west1/keyRings/wardgate-\w+-keys/"
                        r"cryptoKeys/wardgate-\w+-audit-signing/cryptoKeyVersions/1", config.audit.signer)
    assert config.approvals.queue == (f"pubsub://acme-wardgate/wardgate-{env}-approvals"
                                      f"?subscription=wardgate-{env}-approvals-notifier")
    assert config.approvals.store == f"firestore://acme-wardgate/decisions?database=wardgate-{env}-decisions"
    # The files the boot command writes, and a control port the health checkers reach.
    assert config.listeners[0].tls.cert_file.as_posix() == "/tmp/wardgate/tls/server.pem"
    assert config.listeners[0].address == "0.0.0.0:6432" and config.control.address == "0.0.0.0:9480"


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
    job = deployed.one("gcp:cloudscheduler/job:Job", _name(deployed, "evidence-export"))
    assert job.inputs["schedule"] == f"0 {deployed.config.audit.evidence_export_hour_utc} * * *"
    schedule_topic = f"projects/acme-wardgate/topics/{_name(deployed, 'evidence-export-schedule')}"
    assert job.inputs["pubsubTarget"]["topicName"] == schedule_topic
    rotated = {_name(deployed, f"db-{n}") for n, r in deployed.config.resources.items() if r.rotate_days}
    with_rotation = {s.inputs["secretId"] for s in deployed.of_type("gcp:secretmanager/secret:Secret")
                     if "rotation" in s.inputs}
    assert with_rotation == rotated


def test_previous_credentials_are_retired_hourly_through_the_rotation_topic(deployed):
    rotated = sorted(n for n, r in deployed.config.resources.items() if r.rotate_days)
    jobs = {j.inputs["name"]: j for j in deployed.of_type("gcp:cloudscheduler/job:Job")
            if j.inputs["name"] != _name(deployed, "evidence-export")}
    assert sorted(jobs) == [_name(deployed, f"retire-{n}") for n in rotated]
    secrets = {s.inputs["secretId"]: s.state["id"] for s in deployed.of_type("gcp:secretmanager/secret:Secret")}
    for name in rotated:
        job = jobs[_name(deployed, f"retire-{name}")]
        assert job.inputs["schedule"] == "15 * * * *"
        target = job.inputs["pubsubTarget"]
        assert target["topicName"] == f"projects/acme-wardgate/topics/{_name(deployed, 'secret-rotation')}"
        assert target["attributes"] == {"eventType": "WARDGATE_RETIRE", "secretId": secrets[_name(deployed, f"db-{name}")]}
        assert target["data"]  # functions-framework converts a push to a CloudEvent only when it has data
    # The rotation function resolves that secretId to one configured target (its own matcher).
    from functions.key_rotation.gcp import _matcher
    from functions.key_rotation.handler import load_targets, target_for

    rotation = deployed.one("gcp:cloudfunctionsv2/function:Function", _name(deployed, "rotation"))
    targets = load_targets(rotation.inputs["serviceConfig"]["environmentVariables"])
    for name in rotated:
        exact, _ = _matcher(jobs[_name(deployed, f"retire-{name}")].inputs["pubsubTarget"]["attributes"]["secretId"])
        _, target = target_for(targets, exact)
        settings = deployed.config.resources[name]
        assert (target.resource, target.rotate_days, target.grace_seconds, target.sslmode) == (
            name, settings.rotate_days, settings.grace_seconds, "require")


def test_the_webhook_trusts_the_stacks_issuers_for_its_rest_api(deployed):
    from functions.approval.handler import ApprovalSettings

    functions = {f.inputs["name"]: f for f in deployed.of_type("gcp:cloudfunctionsv2/function:Function")}
    webhook = functions.pop(_name(deployed, "webhook"))
    settings = ApprovalSettings.from_environment(webhook.inputs["serviceConfig"]["environmentVariables"])
    assert list(settings.issuers) == deployed.config.issuers
    assert all("WARDGATE_ISSUERS" not in f.inputs["serviceConfig"]["environmentVariables"] for f in functions.values())


def _environment(stack, purpose: str) -> dict[str, str]:
    function = stack.one("gcp:cloudfunctionsv2/function:Function", _name(stack, purpose))
    return function.inputs["serviceConfig"]["environmentVariables"]


def test_the_approval_functions_settings_let_an_approver_decide_through_the_stacks_channel(
        deployed, tmp_path, monkeypatch):
    from approval_wiring import check_approval_wiring

    secrets = {s.inputs["secretId"]: s.state["id"] for s in deployed.of_type("gcp:secretmanager/secret:Secret")}
    bindings = _bindings(deployed)
    readable = lambda purpose: {  # noqa: E731
        f"gcp-sm://{what}" for role, what in bindings[f"serviceAccount:{_name(deployed, purpose)}@acme-wardgate.iam"
                                                      ".gserviceaccount.com"]
        if role == "roles/secretmanager.secretAccessor" and what in secrets.values()}
    gateway = GatewayConfig.model_validate(_gateway_document(deployed))
    notifier = _environment(deployed, "notifier")
    check_approval_wiring(deployed.config, notifier, _environment(deployed, "webhook"), gateway.approvals,
                          notifier_secrets=readable("notifier"), webhook_secrets=readable("webhook"),
                          store_path=tmp_path / "decisions.db", monkeypatch=monkeypatch)
    webhook = deployed.one("gcp:cloudfunctionsv2/function:Function", _name(deployed, "webhook"))
    assert notifier["WARDGATE_WEBHOOK_ENDPOINT"] == webhook.state["url"]  # links point at the webhook
