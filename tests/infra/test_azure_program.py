"""The Azure program, run under Pulumi's mocks for both example stacks: the security invariants hold."""

from __future__ import annotations

from ipaddress import ip_network

import pytest
import yaml

from infra_harness import AZURE_SUBSCRIPTION, REPO_ROOT, run_program
from functions.build import build, tree_digest
from infra.azure.wardgate_azure import PLACEHOLDER, ROLES, deploy
from infra.common.config import load_stack_file
from wardgate.config import GatewayConfig

AZURE_DIR = REPO_ROOT / "infra" / "azure"
ROLE_NAMES = {guid: name for name, guid in ROLES.items()}


@pytest.fixture(scope="module", params=["dev", "prod"])
def deployed(request, fake_functions, tmp_path_factory):
    config = load_stack_file(AZURE_DIR / f"Pulumi.{request.param}.yaml")
    build_dir = tmp_path_factory.mktemp(f"azure-build-{request.param}")
    stack = run_program(lambda: deploy(config, functions_dir=fake_functions, build_dir=build_dir),
                        "wardgate-azure", request.param)
    stack.config = config
    stack.build_dir = build_dir
    stack.built = build("azure", tmp_path_factory.mktemp("azure-rebuild"), functions_dir=fake_functions)
    return stack


def _gateway(stack):
    [gateway] = stack.of_type("azure-native:app:ContainerApp")
    return gateway


def test_gateway_has_no_public_ingress(deployed):
    gateway = _gateway(deployed)
    ingress = gateway.inputs["configuration"]["ingress"]
    assert ingress["external"] is False and ingress["transport"] == "tcp" and ingress["allowInsecure"] is False
    allowed = [ip_network(rule["ipAddressRange"]) for rule in ingress["ipSecurityRestrictions"]]
    assert allowed and all(net.is_private and rule["action"] == "Allow"
                           for net, rule in zip(allowed, ingress["ipSecurityRestrictions"]))
    [environment] = deployed.of_type("azure-native:app:ManagedEnvironment")
    assert environment.inputs["vnetConfiguration"]["internal"] is True
    for group in deployed.of_type("azure-native:network:NetworkSecurityGroup"):
        for rule in group.inputs["securityRules"]:
            if rule["direction"] == "Inbound" and rule["access"] == "Allow":
                assert all(ip_network(p).is_private for p in rule["sourceAddressPrefixes"])


def test_audit_blobs_are_worm_encrypted_and_private(deployed):
    data = deployed.one("azure-native:storage:StorageAccount", f"wardgate-{deployed.config.environment}-data")
    policy = data.inputs["immutableStorageWithVersioning"]
    assert policy["enabled"] is True
    assert policy["immutabilityPolicy"]["immutabilityPeriodSinceCreationInDays"] == deployed.config.audit.retention_days
    assert policy["immutabilityPolicy"]["state"] == ("Locked" if deployed.config.tier == "prod" else "Unlocked")
    assert policy["immutabilityPolicy"]["allowProtectedAppendWrites"] is False
    for account in deployed.of_type("azure-native:storage:StorageAccount"):
        assert account.inputs["allowBlobPublicAccess"] is False
        assert account.inputs["allowSharedKeyAccess"] is False
        assert account.inputs["minimumTlsVersion"] == "TLS1_2" and account.inputs["enableHttpsTrafficOnly"] is True
    assert data.inputs["encryption"]["services"]["blob"]["enabled"] is True
    assert data.inputs["networkRuleSet"]["defaultAction"] == "Deny"
    [blob_service] = deployed.of_type("azure-native:storage:BlobServiceProperties")
    assert blob_service.inputs["isVersioningEnabled"] is True
    for container in deployed.of_type("azure-native:storage:BlobContainer"):
        assert container.inputs["publicAccess"] == "None"


def test_key_vault_is_rbac_with_purge_protection_and_an_ec_p256_signing_key(deployed):
    [vault] = deployed.of_type("azure-native:keyvault:Vault")
    properties = vault.inputs["properties"]
    assert properties["enableRbacAuthorization"] is True and properties["enablePurgeProtection"] is True
    assert properties["networkAcls"]["defaultAction"] == "Deny"
    [key] = deployed.of_type("azure-native:keyvault:Key")
    assert key.inputs["properties"]["curveName"] == "P-256"
    assert key.inputs["properties"]["kty"] == ("EC-HSM" if deployed.config.tier == "prod" else "EC")
    assert key.inputs["properties"]["keyOps"] == ["sign", "verify"]


def test_every_queue_has_a_dead_letter_path(deployed):
    queues = {q.inputs["queueName"]: q for q in deployed.of_type("azure-native:storage:Queue")}
    for name in queues:
        assert name.endswith("-poison") or f"{name}-poison" in queues, name
    [app] = deployed.of_type("azure-native:web:WebApp")
    settings = {s["name"]: s["value"] for s in app.inputs["siteConfig"]["appSettings"]}
    assert settings["AzureFunctionsJobHost__extensions__queues__maxDequeueCount"] == \
        str(deployed.config.approvals.max_receives)


def _assignments(stack) -> dict[str, set[tuple[str, str]]]:
    """principal → {(role name, scope tail)}."""
    found: dict[str, set[tuple[str, str]]] = {}
    for assignment in stack.of_type("azure-native:authorization:RoleAssignment"):
        guid = assignment.inputs["roleDefinitionId"].rsplit("/", 1)[-1]
        scope = assignment.inputs["scope"]
        tail = scope.split("/providers/", 1)[-1]
        found.setdefault(assignment.inputs["principalId"], set()).add((ROLE_NAMES[guid], tail))
    return found


def test_role_assignments_are_narrow_and_each_principal_gets_what_it_uses(deployed):
    env = deployed.config.environment
    for assignment in deployed.of_type("azure-native:authorization:RoleAssignment"):
        scope = assignment.inputs["scope"]
        assert scope.count("/") > 4 and "/providers/" in scope, f"broad scope {scope}"
        assert assignment.inputs["roleDefinitionId"].startswith(f"/subscriptions/{AZURE_SUBSCRIPTION}/")
    data = f"Microsoft.Storage/storageAccounts/wg{env}data{deployed.config.name_suffix}"
    vault = f"Microsoft.KeyVault/vaults/wg{env}kv{deployed.config.name_suffix}"
    secret = lambda purpose: f"{vault}/secrets/wardgate-{env}-{purpose}"  # noqa: E731
    signing = f"{vault}/keys/wardgate-{env}-audit-signing"
    found = _assignments(deployed)
    assert found[f"principal-wardgate-{env}-gateway"] == {
        ("queue-sender", f"{data}/queueServices/default/queues/approvals"),
        ("table-contributor", f"{data}/tableServices/default/tables/decisions"),
        ("blob-contributor", f"{data}/blobServices/default/containers/audit"),
        ("crypto-user", signing),
        *(("secrets-user", secret(f"db-{n}")) for n in deployed.config.resources),
        ("secrets-user", secret("masking-key")), ("secrets-user", secret("gateway-tls-cert")),
        ("secrets-user", secret("gateway-tls-key"))}
    runtime = f"Microsoft.Storage/storageAccounts/wg{env}func{deployed.config.name_suffix}"
    rotated = [n for n, r in deployed.config.resources.items() if r.rotate_days]
    assert found[f"principal-wardgate-{env}-functions"] == {
        ("queue-processor", f"{data}/queueServices/default/queues/approvals"),
        ("queue-sender", f"{data}/queueServices/default/queues/approvals-poison"),
        ("table-contributor", f"{data}/tableServices/default/tables/decisions"),
        ("blob-reader", f"{data}/blobServices/default/containers/audit"),
        ("blob-contributor", f"{data}/blobServices/default/containers/evidence"),
        ("crypto-user", signing), ("secrets-user", secret("approver-webhook-url")),
        ("secrets-user", secret("approver-signing-secret")),
        *(("secrets-officer", secret(f"db-{n}")) for n in rotated),
        ("blob-owner", runtime), ("queue-contributor", runtime)}
    for auditor in deployed.config.auditors:
        assert {role for role, _ in found[auditor]} == {"blob-reader", "table-reader", "kv-reader", "logs-reader"}


def test_secrets_are_wired_by_reference_only(deployed):
    for item in deployed.of_type("azure-native:keyvault:Secret"):
        assert item.inputs["properties"]["value"] == PLACEHOLDER
    gateway = _gateway(deployed)
    for reference in gateway.inputs["configuration"]["secrets"]:
        assert "value" not in reference and reference["keyVaultUrl"].startswith("https://")
    container = gateway.inputs["template"]["containers"][0]
    assert {e["name"] for e in container["env"]} == {"WARDGATE_CONFIG_YAML", "AZURE_CLIENT_ID"}
    document = yaml.safe_load(container["env"][0]["value"])
    names = {s.inputs["secretName"] for s in deployed.of_type("azure-native:keyvault:Secret")}
    for resource in document["resources"].values():
        assert resource["password"].split("/")[-1] in names and resource["password"].startswith("azure-kv://")
    [app] = deployed.of_type("azure-native:web:WebApp")
    for setting in app.inputs["siteConfig"]["appSettings"]:
        assert "AccountKey=" not in setting["value"] and "SharedAccessSignature" not in setting["value"]
        if "SECRET" in setting["name"]:
            assert setting["value"].startswith("azure-kv://"), setting


def test_rendered_gateway_config_is_valid_and_points_at_the_created_resources(deployed):
    container = _gateway(deployed).inputs["template"]["containers"][0]
    config = GatewayConfig.model_validate(yaml.safe_load(container["env"][0]["value"]))
    account = f"wg{deployed.config.environment}data{deployed.config.name_suffix}"
    assert config.audit.archive == f"azblob://{account}/audit"
    assert config.approvals.queue == f"azqueue://{account}/approvals?max_receives={deployed.config.approvals.max_receives}"
    assert config.approvals.store == f"aztable://{account}/decisions"
    assert config.audit.signer.startswith("azurekv-key://")


def test_function_app_runs_the_code_build_packaged(deployed):
    [blob] = deployed.of_type("azure-native:storage:Blob")
    assert blob.inputs["source"].path == str(deployed.build_dir / "azure" / "function_app")
    assert tree_digest(blob.inputs["source"].path) == tree_digest(deployed.built["function_app"])
    [app] = deployed.of_type("azure-native:web:WebApp")
    settings = {s["name"]: s["value"] for s in app.inputs["siteConfig"]["appSettings"]}
    assert settings["WEBSITE_RUN_FROM_PACKAGE"].endswith("/releases/" + blob.inputs["blobName"])
    assert settings["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert app.inputs["httpsOnly"] is True and app.inputs["siteConfig"]["ftpsState"] == "Disabled"


def _settings(stack) -> dict[str, str]:
    [app] = stack.of_type("azure-native:web:WebApp")
    return {s["name"]: s["value"] for s in app.inputs["siteConfig"]["appSettings"]}


def test_rotation_timer_runs_hourly_with_grace_and_tls_for_each_rotated_secret(deployed):
    from functions.key_rotation.handler import load_targets

    settings = _settings(deployed)
    assert settings["WARDGATE_ROTATION_SCHEDULE"] == "0 30 * * * *"  # NCRONTAB: minute 30 of every hour
    assert "AzureWebJobs.key_rotation.Disabled" not in settings
    targets = load_targets(settings)  # the function's own parser
    rotated = {n: r for n, r in deployed.config.resources.items() if r.rotate_days}
    vault = f"wg{deployed.config.environment}kv{deployed.config.name_suffix}"
    assert set(targets) == {f"azure-kv://{vault}/wardgate-{deployed.config.environment}-db-{n}" for n in rotated}
    for target in targets.values():
        expected = rotated[target.resource]
        assert (target.rotate_days, target.grace_seconds, target.sslmode) == (
            expected.rotate_days, expected.grace_seconds, "require")


def test_the_webhook_trusts_the_stacks_issuers_for_its_rest_api(deployed):
    from functions.approval.handler import ApprovalSettings

    settings = ApprovalSettings.from_environment(_settings(deployed))
    assert list(settings.issuers) == deployed.config.issuers


def test_without_rotated_resources_the_rotation_timer_is_disabled(fake_functions, tmp_path):
    config = load_stack_file(AZURE_DIR / "Pulumi.dev.yaml")
    config = config.model_copy(update={"resources": {
        name: resource.model_copy(update={"rotate_days": 0}) for name, resource in config.resources.items()}})
    stack = run_program(lambda: deploy(config, functions_dir=fake_functions, build_dir=tmp_path),
                        "wardgate-azure", "dev")
    settings = _settings(stack)
    assert settings["AzureWebJobs.key_rotation.Disabled"] == "true"
    assert settings["WARDGATE_ROTATION_RESOURCES"] == "{}"


def test_the_approval_functions_settings_let_an_approver_decide_through_the_stacks_channel(
        deployed, tmp_path, monkeypatch):
    from approval_wiring import check_approval_wiring

    env = deployed.config.environment
    [app] = deployed.of_type("azure-native:web:WebApp")
    # The platform names the host; the handler derives the links' endpoint from it.
    settings = {**_settings(deployed), "WEBSITE_HOSTNAME": app.state["defaultHostName"]}
    # One identity runs every function: what it may read is what both approval functions may read.
    readable = {f"azure-kv://{tail.split('/')[2]}/{tail.split('/')[-1]}"
                for role, tail in _assignments(deployed)[f"principal-wardgate-{env}-functions"]
                if role == "secrets-user"}
    container = _gateway(deployed).inputs["template"]["containers"][0]
    gateway = GatewayConfig.model_validate(yaml.safe_load(container["env"][0]["value"]))
    check_approval_wiring(deployed.config, settings, settings, gateway.approvals, notifier_secrets=readable,
                          webhook_secrets=readable, store_path=tmp_path / "decisions.db", monkeypatch=monkeypatch)
