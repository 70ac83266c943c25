"""wardgate on Azure: ``deploy(stack)`` builds every resource of one environment.

Gateway on Container Apps in a VNet-integrated environment with internal TCP ingress and a
user-assigned managed identity; a data Storage account (approvals queue + poison queue, decision table,
audit and evidence containers under a version-level immutability policy, locked in prod) with shared
keys and anonymous access disabled, TLS 1.2+; a Function App (Elastic Premium, VNet-integrated) running
every function with its own identity; Key Vault (RBAC, purge protection) for secrets and the EC P-256
signing key; Log Analytics receiving the platform and Key Vault audit logs; a reader role for auditors.

Every role assignment is scoped to the one queue, table, container, secret or key it is for.
"""

from __future__ import annotations

import re
from pathlib import Path

import pulumi
from pulumi_azure_native import (app, authorization, keyvault, managedidentity, monitor, network,
                                 operationalinsights, resources, storage, web)

from functions.build import build, tree_digest
from infra.common import function_env as env
from infra.common.config import StackConfig, StackConfigError
from infra.common.gateway_config import CONFIG_ENV, LISTENER_PORT, GatewayWiring, boot_command, render_gateway_config
from infra.common.naming import Naming

DEFAULT_BUILD_DIR = Path(__file__).resolve().parent / ".build"
# Key Vault cannot hold a secret without a value. The program creates each secret with this
# placeholder (not a secret) and never touches the value again: the operator sets the real one.
PLACEHOLDER = "set-by-operator: az keyvault secret set"
TLS_MOUNT = "/run/secrets/wardgate-tls"
ROTATION_SCHEDULE = "0 30 * * * *"  # NCRONTAB with seconds: minute 30 of every hour
_OBJECT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# Built-in role definition ids (stable GUIDs across tenants).
ROLES = {
    "queue-sender": "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a",     # Storage Queue Data Message Sender
    "queue-processor": "8a0f0c08-91a1-4084-bc3d-661d67233fed",  # Storage Queue Data Message Processor
    "queue-contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",  # Storage Queue Data Contributor
    "table-contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",  # Storage Table Data Contributor
    "table-reader": "76199698-9eea-4c19-bc75-cec21354c6b6",     # Storage Table Data Reader
    "blob-contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",  # Storage Blob Data Contributor
    "blob-reader": "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",      # Storage Blob Data Reader
    "blob-owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",       # Storage Blob Data Owner
    "secrets-user": "4633458b-17de-408a-b874-0445c86b69e6",     # Key Vault Secrets User
    "secrets-officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",  # Key Vault Secrets Officer
    "crypto-user": "12338af0-0e69-4776-bea7-57ae8d297424",      # Key Vault Crypto User
    "kv-reader": "21090545-7ca7-4776-b22c-e363652d74d2",        # Key Vault Reader
    "logs-reader": "73c42c96-874c-492b-b04d-ab87d138a893",      # Log Analytics Reader
}


class WardgateAzure(pulumi.ComponentResource):
    """One wardgate environment on Azure."""

    def __init__(self, name: str, stack: StackConfig, code: dict[str, Path],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("wardgate:azure:Deployment", name, None, opts)
        bad = [a for a in stack.auditors if not _OBJECT_ID.match(a)]
        if bad:
            raise StackConfigError(f"wardgate:auditors: {bad} are not Entra object ids (GUIDs)")
        if not stack.network.create and len(stack.network.subnet_ids) != 2:
            raise StackConfigError("wardgate:network.subnet_ids: give two subnets: the Container Apps subnet "
                                   "(delegated to Microsoft.App/environments) and the Function App subnet "
                                   "(delegated to Microsoft.Web/serverFarms)")
        naming = Naming(stack.environment, stack.name_suffix)
        prod = stack.tier == "prod"
        tags = naming.tags()
        me = pulumi.ResourceOptions(parent=self)
        keep = pulumi.ResourceOptions(parent=self, protect=prod)
        location = stack.location
        client = authorization.get_client_config_output()

        group = resources.ResourceGroup(naming.name("rg"), resource_group_name=naming.name("rg"), location=location,
                                        tags=tags, opts=me)
        rg = group.name
        apps_subnet, functions_subnet = self._network(stack, naming, rg, location, tags)

        workspace = operationalinsights.Workspace(
            naming.name("logs"), workspace_name=naming.name("logs"), resource_group_name=rg, location=location,
            sku={"name": "PerGB2018"}, retention_in_days=max(30, min(stack.audit.log_retention_days, 730)),
            tags=tags, opts=me)

        # Identities: the gateway's, and the Function App's.
        gateway_id = managedidentity.UserAssignedIdentity(naming.name("gateway"), resource_name_=naming.name("gateway"),
                                                          resource_group_name=rg, location=location, tags=tags, opts=me)
        functions_id = managedidentity.UserAssignedIdentity(naming.name("functions"),
                                                            resource_name_=naming.name("functions"),
                                                            resource_group_name=rg, location=location, tags=tags,
                                                            opts=me)

        def grant(label: str, role: str, scope, principal) -> None:
            authorization.RoleAssignment(
                naming.name(label), scope=scope, principal_id=principal, principal_type="ServicePrincipal",
                role_definition_id=pulumi.Output.concat("/subscriptions/", client.subscription_id,
                                                        "/providers/Microsoft.Authorization/roleDefinitions/",
                                                        ROLES[role]), opts=me)

        # Data: queues, table and WORM blobs, reachable only with Entra identities over TLS 1.2+.
        data_name = naming.compact("data")
        data = storage.StorageAccount(
            naming.name("data"), account_name=data_name, resource_group_name=rg, location=location,
            kind="StorageV2", sku={"name": "Standard_GRS" if prod else "Standard_LRS"},
            minimum_tls_version="TLS1_2", enable_https_traffic_only=True, allow_blob_public_access=False,
            allow_shared_key_access=False, default_to_o_auth_authentication=True, allow_cross_tenant_replication=False,
            network_rule_set={"default_action": "Deny", "bypass": "AzureServices", "virtual_network_rules": [
                {"virtual_network_resource_id": apps_subnet, "action": "Allow"},
                {"virtual_network_resource_id": functions_subnet, "action": "Allow"}]},
            # Version-level WORM for every blob: locked in prod, so no one can shorten or remove it.
            immutable_storage_with_versioning={"enabled": True, "immutability_policy": {
                "immutability_period_since_creation_in_days": stack.audit.retention_days,
                "state": "Locked" if prod else "Unlocked", "allow_protected_append_writes": False}},
            encryption={"key_source": "Microsoft.Storage", "require_infrastructure_encryption": True,
                        "services": {"blob": {"enabled": True, "key_type": "Account"},
                                     "queue": {"enabled": True, "key_type": "Account"},
                                     "table": {"enabled": True, "key_type": "Account"}}},
            tags=tags, opts=keep)
        storage.BlobServiceProperties(naming.name("data-blob-service"), account_name=data.name, resource_group_name=rg,
                                      blob_services_name="default", is_versioning_enabled=True, opts=me)
        containers = {purpose: storage.BlobContainer(naming.name(purpose), account_name=data.name,
                                                     container_name=purpose, resource_group_name=rg,
                                                     public_access="None", opts=me)
                      for purpose in ("audit", "evidence")}
        queue = storage.Queue(naming.name("approvals"), account_name=data.name, queue_name="approvals",
                              resource_group_name=rg, opts=me)
        # The Functions runtime moves a message here after maxDequeueCount deliveries.
        poison = storage.Queue(naming.name("approvals-poison"), account_name=data.name, queue_name="approvals-poison",
                               resource_group_name=rg, metadata={"wardgate_role": "dead-letter"}, opts=me)
        table = storage.Table(naming.name("decisions"), account_name=data.name, table_name="decisions",
                              resource_group_name=rg, opts=me)

        scopes = {"queue:approvals": queue.id, "queue:approvals-poison": poison.id, "table:decisions": table.id,
                  "blob:audit": containers["audit"].id, "blob:evidence": containers["evidence"].id}

        def sub_scope(kind: str, item: str):
            """A role assignment scope: the one queue, table or container (its resource id)."""
            return scopes[f"{kind}:{item}"]

        # Key Vault: RBAC only, purge protection, no anonymous network path.
        vault_name = naming.compact("kv")
        vault = keyvault.Vault(naming.name("kv"), vault_name=vault_name, resource_group_name=rg, location=location,
                               properties={
                                   "tenant_id": client.tenant_id,
                                   "sku": {"family": "A", "name": "premium" if prod else "standard"},
                                   "enable_rbac_authorization": True, "enable_purge_protection": True,
                                   "enable_soft_delete": True, "soft_delete_retention_in_days": 90,
                                   "public_network_access": "Enabled",
                                   "network_acls": {"default_action": "Deny", "bypass": "AzureServices",
                                                    "virtual_network_rules": [{"id": apps_subnet},
                                                                              {"id": functions_subnet}]}},
                               tags=tags, opts=keep)
        monitor.DiagnosticSetting(naming.name("kv-audit"), name=naming.name("kv-audit"), resource_uri=vault.id,
                                  workspace_id=workspace.id, logs=[{"category_group": "audit", "enabled": True}],
                                  opts=me)
        signing_key = keyvault.Key(naming.name("audit-signing"), key_name=naming.name("audit-signing"), vault_name=vault.name,
                                   resource_group_name=rg, properties={
                                       "kty": "EC-HSM" if prod else "EC", "curve_name": "P-256",
                                       "key_ops": ["sign", "verify"]}, tags=tags, opts=keep)
        key_scope = signing_key.id

        def secret(purpose: str) -> keyvault.Secret:
            return keyvault.Secret(naming.name(purpose), secret_name=naming.name(purpose), vault_name=vault.name,
                                   resource_group_name=rg, properties={"value": PLACEHOLDER,
                                                                       "content_type": "set by the operator"},
                                   tags=tags, opts=pulumi.ResourceOptions(parent=self, ignore_changes=["properties.value"]))

        db_secrets = {n: secret(f"db-{n}") for n in sorted(stack.resources)}
        masking_key = secret("masking-key")
        webhook_url_secret = secret("approver-webhook-url")
        signing_secret = secret("approver-signing-secret")
        tls = {"cert": secret("gateway-tls-cert"), "key": secret("gateway-tls-key")}
        vault_host = f"{vault_name}.vault.azure.net"

        def secret_scope(item: keyvault.Secret):
            return item.id

        def secret_url(item: keyvault.Secret):
            return pulumi.Output.concat("azure-kv://", vault_name, "/", item.name)

        # Gateway grants.
        gp = gateway_id.principal_id
        grant("gateway-queue", "queue-sender", sub_scope("queue", "approvals"), gp)
        grant("gateway-table", "table-contributor", sub_scope("table", "decisions"), gp)
        grant("gateway-audit", "blob-contributor", sub_scope("blob", "audit"), gp)
        grant("gateway-signs", "crypto-user", key_scope, gp)
        gateway_secrets = {**{f"db-{n}": s for n, s in db_secrets.items()}, "masking-key": masking_key,
                           "tls-cert": tls["cert"], "tls-key": tls["key"]}
        for purpose, item in gateway_secrets.items():
            grant(f"gateway-reads-{purpose}", "secrets-user", secret_scope(item), gp)

        # Function App grants (one app hosts every function; its identity holds the union of their needs).
        fp = functions_id.principal_id
        grant("functions-queue", "queue-processor", sub_scope("queue", "approvals"), fp)
        grant("functions-poison", "queue-sender", sub_scope("queue", "approvals-poison"), fp)
        grant("functions-table", "table-contributor", sub_scope("table", "decisions"), fp)
        grant("functions-audit", "blob-reader", sub_scope("blob", "audit"), fp)
        grant("functions-evidence", "blob-contributor", sub_scope("blob", "evidence"), fp)
        grant("functions-signs", "crypto-user", key_scope, fp)
        grant("functions-webhook-url", "secrets-user", secret_scope(webhook_url_secret), fp)
        grant("functions-signing-secret", "secrets-user", secret_scope(signing_secret), fp)
        rotated = {n: db_secrets[n] for n, r in sorted(stack.resources.items()) if r.rotate_days}
        for n, item in rotated.items():
            grant(f"functions-rotates-{n}", "secrets-officer", secret_scope(item), fp)

        # The Function App: its runtime storage (identity-based) and code package.
        runtime = storage.StorageAccount(
            naming.name("func"), account_name=naming.compact("func"), resource_group_name=rg, location=location,
            kind="StorageV2", sku={"name": "Standard_LRS"}, minimum_tls_version="TLS1_2", enable_https_traffic_only=True,
            allow_blob_public_access=False, allow_shared_key_access=False, default_to_o_auth_authentication=True,
            tags=tags, opts=me)
        releases = storage.BlobContainer(naming.name("releases"), account_name=runtime.name, container_name="releases",
                                         resource_group_name=rg, public_access="None", opts=me)
        package_dir = code["function_app"]
        # Named by content digest: a changed build is a new blob, and the app setting moves to it.
        package_name = f"function_app-{tree_digest(package_dir)[:16]}.zip"
        package = storage.Blob(naming.name("function-package"), account_name=runtime.name,
                               container_name=releases.name, resource_group_name=rg, type="Block",
                               blob_name=package_name,
                               source=pulumi.FileArchive(str(package_dir)), opts=me)
        self.package = package
        grant("functions-runtime-blobs", "blob-owner", runtime.id, fp)
        grant("functions-runtime-queues", "queue-contributor", runtime.id, fp)
        plan = web.AppServicePlan(naming.name("functions-plan"), name=naming.name("functions-plan"),
                                  resource_group_name=rg, location=location, kind="elastic", reserved=True,
                                  sku={"name": "EP1", "tier": "ElasticPremium"}, maximum_elastic_worker_count=5,
                                  tags=tags, opts=me)
        queue_service = f"https://{data_name}.queue.core.windows.net"
        store_url = f"aztable://{data_name}/decisions"
        signer_url = pulumi.Output.concat("azurekv-key://", vault_name, "/", signing_key.name)
        queue_url = f"azqueue://{data_name}/approvals?max_receives={stack.approvals.max_receives}"
        rotation_urls = pulumi.Output.all(**{n: secret_url(s) for n, s in rotated.items()}).apply(
            lambda urls: env.rotation_resources(stack, dict(urls)))
        settings = {
            "FUNCTIONS_EXTENSION_VERSION": "~4", "FUNCTIONS_WORKER_RUNTIME": "python",
            # Identity-based connections: no account key or connection string anywhere.
            "AzureWebJobsStorage__accountName": runtime.name, "AzureWebJobsStorage__credential": "managedidentity",
            "AzureWebJobsStorage__clientId": functions_id.client_id,
            "WardgateQueue__queueServiceUri": queue_service, "WardgateQueue__credential": "managedidentity",
            "WardgateQueue__clientId": functions_id.client_id,
            "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": str(stack.approvals.max_receives),
            "AZURE_CLIENT_ID": functions_id.client_id,
            "WEBSITE_RUN_FROM_PACKAGE": pulumi.Output.concat("https://", runtime.name, ".blob.core.windows.net/",
                                                             releases.name, "/", package_name),
            "WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID": functions_id.id,
            "WARDGATE_APPROVALS_QUEUE_NAME": "approvals",
            "WARDGATE_EVIDENCE_SCHEDULE": f"0 0 {stack.audit.evidence_export_hour_utc} * * *",
            # Hourly: each run retires a previous credential whose grace is over, and rotates a
            # credential that reached rotate_days (functions/key_rotation/azure.py).
            "WARDGATE_ROTATION_SCHEDULE": ROTATION_SCHEDULE,
            env.APPROVALS_QUEUE: queue_url, env.DECISION_STORE: store_url,
            env.APPROVAL_CHANNEL: stack.approvals.channel, env.APPROVER_GROUPS: ",".join(stack.approvals.approver_groups),
            env.WEBHOOK_URL_SECRET: secret_url(webhook_url_secret), env.SIGNING_SECRET: secret_url(signing_secret),
            env.AUDIT_STORE: f"azblob://{data_name}/audit", env.EVIDENCE_STORE: f"azblob://{data_name}/evidence",
            env.SIGNER: signer_url, env.ROTATION_RESOURCES: rotation_urls, env.ISSUERS: env.issuers(stack),
            # One app runs the notifier and the webhook: it gets both functions' approver settings.
            **env.webhook_approvers(stack), **env.notifier_links(stack),
        }
        if not rotated:
            # Nothing to rotate: the timer (function key_rotation) would fail every hour on an empty list.
            settings["AzureWebJobs.key_rotation.Disabled"] = "true"
        self.function_app = web.WebApp(
            naming.name("functions"), name=naming.global_name("functions"), resource_group_name=rg, location=location,
            kind="functionapp,linux", server_farm_id=plan.id, https_only=True, reserved=True,
            identity={"type": "UserAssigned", "user_assigned_identities": [functions_id.id]},
            key_vault_reference_identity=functions_id.id, virtual_network_subnet_id=functions_subnet,
            site_config={"linux_fx_version": "Python|3.11", "min_tls_version": "1.2", "ftps_state": "Disabled",
                         "http20_enabled": True, "vnet_route_all_enabled": True,
                         "app_settings": [{"name": k, "value": v} for k, v in sorted(settings.items())]},
            tags=tags, opts=me)
        self.settings = settings
        monitor.DiagnosticSetting(naming.name("functions-logs"), name=naming.name("functions-logs"),
                                  resource_uri=self.function_app.id, workspace_id=workspace.id,
                                  logs=[{"category": "FunctionAppLogs", "enabled": True}], opts=me)

        # The gateway on Container Apps: internal TCP ingress only, from the stack's client ranges.
        environment = app.ManagedEnvironment(
            naming.name("apps"), environment_name=naming.name("apps"), resource_group_name=rg, location=location,
            vnet_configuration={"infrastructure_subnet_id": apps_subnet, "internal": True},
            workload_profiles=[{"name": "Consumption", "workload_profile_type": "Consumption"}],
            app_logs_configuration={"destination": "azure-monitor"}, zone_redundant=prod, tags=tags, opts=me)
        monitor.DiagnosticSetting(naming.name("apps-logs"), name=naming.name("apps-logs"), resource_uri=environment.id,
                                  workspace_id=workspace.id, logs=[{"category_group": "allLogs", "enabled": True}],
                                  opts=me)
        wiring = pulumi.Output.all(signer_url, self.function_app.default_host_name, secret_url(masking_key),
                                   pulumi.Output.all(**{n: secret_url(s) for n, s in db_secrets.items()})).apply(
            lambda v: GatewayWiring(audit_archive=f"azblob://{data_name}/audit", signer=v[0],
                                    approvals_queue=queue_url, decision_store=store_url,
                                    approvals_public_url=f"https://{v[1]}", masking_key=v[2],
                                    resource_passwords=dict(v[3]), tls_cert_file=f"{TLS_MOUNT}/server.pem",
                                    tls_key_file=f"{TLS_MOUNT}/server-key.pem"))
        self.gateway_config = wiring.apply(lambda w: render_gateway_config(stack, w))
        command = boot_command(tls_from_env=False)
        self.gateway = app.ContainerApp(
            naming.name("gateway"), container_app_name=naming.name("gateway"), resource_group_name=rg,
            location=location, managed_environment_id=environment.id, workload_profile_name="Consumption",
            identity={"type": "UserAssigned", "user_assigned_identities": [gateway_id.id]},
            configuration={
                "active_revisions_mode": "Single",
                "ingress": {"external": False, "transport": "tcp", "target_port": LISTENER_PORT,
                            "exposed_port": LISTENER_PORT, "allow_insecure": False,
                            "ip_security_restrictions": [{"name": f"clients-{i}", "action": "Allow",
                                                          "ip_address_range": str(cidr)}
                                                         for i, cidr in enumerate(stack.network.client_cidrs)]},
                # Key Vault references, resolved by the platform with the gateway's identity.
                "secrets": [{"name": f"tls-{part}", "identity": gateway_id.id,
                             "key_vault_url": pulumi.Output.concat("https://", vault_host, "/secrets/", tls[part].name)}
                            for part in sorted(tls)],
            },
            template={
                "containers": [{
                    "name": "gateway", "image": stack.gateway.image, "command": command[:1], "args": command[1:],
                    "env": [{"name": CONFIG_ENV, "value": self.gateway_config},
                            {"name": "AZURE_CLIENT_ID", "value": gateway_id.client_id}],
                    "resources": {"cpu": stack.gateway.cpu, "memory": f"{stack.gateway.cpu * 2}Gi"},
                    "volume_mounts": [{"volume_name": "tls", "mount_path": TLS_MOUNT}],
                }],
                "volumes": [{"name": "tls", "storage_type": "Secret", "secrets": [
                    {"secret_ref": "tls-cert", "path": "server.pem"}, {"secret_ref": "tls-key", "path": "server-key.pem"}]}],
                "scale": {"min_replicas": stack.gateway.replicas, "max_replicas": max(stack.gateway.replicas, 10)},
            }, tags=tags, opts=me)

        # Auditors: read the trail, the decisions, the signing key's public half and the logs.
        for index, auditor in enumerate(stack.auditors):
            for label, role, scope in (("audit", "blob-reader", sub_scope("blob", "audit")),
                                       ("evidence", "blob-reader", sub_scope("blob", "evidence")),
                                       ("decisions", "table-reader", sub_scope("table", "decisions")),
                                       ("key", "kv-reader", key_scope), ("logs", "logs-reader", workspace.id)):
                authorization.RoleAssignment(
                    naming.name(f"auditor-{index}-{label}"), scope=scope, principal_id=auditor, principal_type="User",
                    role_definition_id=pulumi.Output.concat("/subscriptions/", client.subscription_id,
                                                            "/providers/Microsoft.Authorization/roleDefinitions/",
                                                            ROLES[role]), opts=me)

        self.outputs = {
            "gateway_fqdn": self.gateway.latest_revision_fqdn,
            "gateway_static_ip": environment.static_ip,
            "data_account": data.name,
            "key_vault": vault.name,
            "webhook_host": self.function_app.default_host_name,
            "secrets_to_fill": {s_name: pulumi.Output.concat("https://", vault_host, "/secrets/", s.name) for s_name, s in [
                *((f"db-{n}", s) for n, s in db_secrets.items()), ("masking-key", masking_key),
                ("approver-webhook-url", webhook_url_secret), ("approver-signing-secret", signing_secret),
                ("gateway-tls-cert", tls["cert"]), ("gateway-tls-key", tls["key"])]},
        }
        self.register_outputs(self.outputs)

    def _network(self, stack: StackConfig, naming: Naming, rg, location: str, tags: dict) -> tuple:
        """(Container Apps subnet id, Function App subnet id): created, or the stack's existing ones."""
        if not stack.network.create:
            return stack.network.subnet_ids[0], stack.network.subnet_ids[1]
        me = pulumi.ResourceOptions(parent=self)
        cidr = stack.network.cidr
        apps_range, functions_range = list(cidr.subnets(new_prefix=23))[:2]
        nsg = network.NetworkSecurityGroup(
            naming.name("gateway-nsg"), network_security_group_name=naming.name("gateway-nsg"), resource_group_name=rg,
            location=location, tags=tags, security_rules=[
                {"name": "clients", "priority": 100, "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
                 "source_address_prefixes": [str(c) for c in stack.network.client_cidrs], "source_port_range": "*",
                 "destination_address_prefix": "VirtualNetwork", "destination_port_range": str(LISTENER_PORT)},
                {"name": "deny-internet", "priority": 4000, "direction": "Inbound", "access": "Deny", "protocol": "*",
                 "source_address_prefix": "Internet", "source_port_range": "*", "destination_address_prefix": "*",
                 "destination_port_range": "*"}], opts=me)
        vnet = network.VirtualNetwork(naming.name("vnet"), virtual_network_name=naming.name("vnet"),
                                      resource_group_name=rg, location=location,
                                      address_space={"address_prefixes": [str(cidr)]}, tags=tags, opts=me)
        endpoints = [{"service": "Microsoft.Storage"}, {"service": "Microsoft.KeyVault"}]
        apps = network.Subnet(naming.name("apps"), subnet_name="apps", virtual_network_name=vnet.name,
                              resource_group_name=rg, address_prefix=str(apps_range), service_endpoints=endpoints,
                              network_security_group={"id": nsg.id},
                              delegations=[{"name": "apps", "service_name": "Microsoft.App/environments"}], opts=me)
        functions = network.Subnet(naming.name("functions"), subnet_name="functions", virtual_network_name=vnet.name,
                                   resource_group_name=rg, address_prefix=str(functions_range),
                                   service_endpoints=endpoints, network_security_group={"id": nsg.id},
                                   delegations=[{"name": "functions", "service_name": "Microsoft.Web/serverFarms"}],
                                   opts=pulumi.ResourceOptions(parent=self, depends_on=[apps]))
        return apps.id, functions.id


def deploy(stack: StackConfig, *, functions_dir: Path | None = None, build_dir: Path | None = None) -> WardgateAzure:
    """Package the functions (``functions/build.py``) and declare the environment."""
    code = build("azure", build_dir or DEFAULT_BUILD_DIR, functions_dir=functions_dir)
    return WardgateAzure(Naming(stack.environment).name("azure"), stack, code)
