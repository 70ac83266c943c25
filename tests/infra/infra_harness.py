"""Run the Pulumi programs under Pulumi's mocks and record every resource they declare.

No Pulumi CLI or cloud is involved: ``pulumi.runtime.set_mocks`` replaces the engine, and
:class:`RecordingMocks` plays the providers, answering each registration with the inputs plus the
attributes a real provider computes (ARNs, URLs, ids) so that outputs flow into later resources exactly
as in a deployment. The tests then assert the security invariants on the recorded inputs.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pulumi

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `infra` and `functions` live at the repository root
    sys.path.insert(0, str(REPO_ROOT))

ACCOUNT = "123456789012"
REGION = "eu-west-1"
GCP_PROJECT = "acme-wardgate"
AZURE_SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
AZURE_TENANT = "00000000-0000-0000-0000-0000000000aa"


@dataclass
class Recorded:
    """One resource as the program declared it."""

    type: str
    name: str
    inputs: dict[str, Any]
    state: dict[str, Any]


@dataclass
class Stack:
    """Everything one program run declared."""

    resources: list[Recorded] = field(default_factory=list)
    result: Any = None

    def of_type(self, type_token: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == type_token]

    def one(self, type_token: str, name: str) -> Recorded:
        matches = [r for r in self.of_type(type_token) if r.name == name]
        assert len(matches) == 1, f"expected one {type_token} named {name}, found {[r.name for r in self.of_type(type_token)]}"
        return matches[0]

    def state_by(self, key: str) -> dict[Any, Recorded]:
        """Resources indexed by a computed attribute (arn, id…), to follow references."""
        return {r.state[key]: r for r in self.resources if isinstance(r.state.get(key), str)}


def _aws_state(type_token: str, name: str, inputs: dict) -> dict:
    service = type_token.split(":")[1].split("/")[0]
    physical = inputs.get("name") or inputs.get("bucket") or name
    state = {"arn": f"arn:aws:{service}:{REGION}:{ACCOUNT}:{type_token.split(':')[-1].lower()}/{physical}",
             "name": physical}
    if type_token == "aws:sqs/queue:Queue":
        state["url"] = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{physical}"
        state["arn"] = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{physical}"
    elif type_token == "aws:secretsmanager/secret:Secret":
        state["arn"] = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{physical}-AbCdEf"
    elif type_token == "aws:s3/bucket:Bucket":
        state["arn"] = f"arn:aws:s3:::{physical}"
        state["bucket"] = physical
    elif type_token == "aws:kms/key:Key":
        state["arn"] = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{name}"
        state["keyId"] = name
    elif type_token == "aws:lb/loadBalancer:LoadBalancer":
        state["dnsName"] = f"{physical}.elb.{REGION}.amazonaws.com"
    elif type_token == "aws:lambda/functionUrl:FunctionUrl":
        state["functionUrl"] = f"https://{name}.lambda-url.{REGION}.on.aws/"
    elif type_token == "aws:cloudwatch/logGroup:LogGroup":
        state["arn"] = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{physical}"
    return state


def _gcp_state(type_token: str, name: str, inputs: dict) -> dict:
    physical = inputs.get("name") or inputs.get("accountId") or name
    project = inputs.get("project", GCP_PROJECT)
    state = {"name": physical, "id": f"projects/{project}/{type_token.split(':')[-1].lower()}s/{physical}"}
    if type_token == "gcp:serviceaccount/account:Account":
        state["email"] = f"{physical}@{project}.iam.gserviceaccount.com"
        state["member"] = f"serviceAccount:{state['email']}"
    elif type_token == "gcp:pubsub/topic:Topic":
        state["id"] = f"projects/{project}/topics/{physical}"
    elif type_token == "gcp:pubsub/subscription:Subscription":
        state["id"] = f"projects/{project}/subscriptions/{physical}"
    elif type_token == "gcp:secretmanager/secret:Secret":
        state["id"] = f"projects/{project}/secrets/{inputs.get('secretId', physical)}"
        state["name"] = state["id"]
    elif type_token == "gcp:kms/keyRing:KeyRing":
        state["id"] = f"projects/{project}/locations/{inputs.get('location')}/keyRings/{physical}"
    elif type_token == "gcp:kms/cryptoKey:CryptoKey":
        state["id"] = f"{inputs.get('keyRing')}/cryptoKeys/{physical}"
    elif type_token == "gcp:storage/bucket:Bucket":
        state["url"] = f"gs://{physical}"
        state["id"] = physical
    elif type_token == "gcp:cloudfunctionsv2/function:Function":
        state["url"] = f"https://{physical}-abc123-ew.a.run.app"
        state["serviceConfig"] = {**inputs.get("serviceConfig", {}), "uri": state["url"]}
    elif type_token == "gcp:cloudrunv2/service:Service":
        state["uri"] = f"https://{physical}-abc123-ew.a.run.app"
    elif type_token == "gcp:compute/network:Network":
        state["selfLink"] = f"https://www.googleapis.com/compute/v1/projects/{project}/global/networks/{physical}"
        state["id"] = f"projects/{project}/global/networks/{physical}"
    elif type_token == "gcp:compute/subnetwork:Subnetwork":
        state["selfLink"] = (f"https://www.googleapis.com/compute/v1/projects/{project}/regions/"
                             f"{inputs.get('region')}/subnetworks/{physical}")
        state["id"] = f"projects/{project}/regions/{inputs.get('region')}/subnetworks/{physical}"
    elif type_token == "gcp:compute/instanceTemplate:InstanceTemplate":
        state["id"] = f"projects/{project}/global/instanceTemplates/{inputs.get('namePrefix', '')}0001"
        state["selfLink"] = f"https://www.googleapis.com/compute/v1/{state['id']}"
        state["selfLinkUnique"] = f"{state['selfLink']}?uniqueId=4242"
    elif type_token == "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager":
        state["instanceGroup"] = (f"https://www.googleapis.com/compute/v1/projects/{project}/regions/"
                                  f"{inputs.get('region')}/instanceGroups/{physical}")
    elif type_token == "gcp:compute/forwardingRule:ForwardingRule":
        state["ipAddress"] = "10.50.0.20"
    elif type_token == "gcp:projects/iAMCustomRole:IAMCustomRole":
        state["name"] = state["id"] = f"projects/{project}/roles/{inputs.get('roleId')}"
    elif type_token == "gcp:firestore/database:Database":
        state["id"] = f"projects/{project}/databases/{physical}"
    return state


_AZURE_NAME_KEYS = ("keyName", "secretName", "queueName", "tableName", "blobName", "containerName", "subnetName",
                    "containerAppName", "environmentName", "workspaceName", "virtualNetworkName",
                    "networkSecurityGroupName", "resourceName", "name", "accountName", "vaultName",
                    "resourceGroupName")
_AZURE_PROVIDERS = {"storage": "Microsoft.Storage", "keyvault": "Microsoft.KeyVault", "app": "Microsoft.App",
                    "web": "Microsoft.Web", "network": "Microsoft.Network", "resources": "Microsoft.Resources",
                    "managedidentity": "Microsoft.ManagedIdentity", "monitor": "Microsoft.Insights",
                    "operationalinsights": "Microsoft.OperationalInsights",
                    "authorization": "Microsoft.Authorization"}


def _azure_state(type_token: str, name: str, inputs: dict) -> dict:
    module, kind = type_token.split(":")[1:]
    physical = next((inputs[k] for k in _AZURE_NAME_KEYS if isinstance(inputs.get(k), str)), name)
    group = inputs.get("resourceGroupName", "rg")
    state = {"name": physical, "id": f"/subscriptions/{AZURE_SUBSCRIPTION}/resourceGroups/{group}/providers/"
                                     f"{_AZURE_PROVIDERS[module]}/{kind[0].lower() + kind[1:]}s/{physical}"}
    # Child resources' ids nest under their parent's, as Azure's do (role assignments are scoped by them).
    parent_of = {"Queue": ("accountName", "Microsoft.Storage/storageAccounts", "queueServices/default/queues"),
                 "Table": ("accountName", "Microsoft.Storage/storageAccounts", "tableServices/default/tables"),
                 "BlobContainer": ("accountName", "Microsoft.Storage/storageAccounts", "blobServices/default/containers"),
                 "Secret": ("vaultName", "Microsoft.KeyVault/vaults", "secrets"),
                 "Key": ("vaultName", "Microsoft.KeyVault/vaults", "keys")}
    if kind in parent_of and module in ("storage", "keyvault"):
        key, provider, children = parent_of[kind]
        state["id"] = (f"/subscriptions/{AZURE_SUBSCRIPTION}/resourceGroups/{group}/providers/{provider}/"
                       f"{inputs.get(key)}/{children}/{physical}")
    if type_token == "azure-native:managedidentity:UserAssignedIdentity":
        state["principalId"] = f"principal-{physical}"
        state["clientId"] = f"client-{physical}"
    elif type_token == "azure-native:web:WebApp":
        state["defaultHostName"] = f"{physical}.azurewebsites.net"
    elif type_token == "azure-native:keyvault:Vault":
        state["properties"] = {**inputs.get("properties", {}), "vaultUri": f"https://{physical}.vault.azure.net/"}
    elif type_token == "azure-native:keyvault:Key":
        state["keyUri"] = f"https://{inputs.get('vaultName')}.vault.azure.net/keys/{physical}"
    elif type_token == "azure-native:keyvault:Secret":
        state["properties"] = {**inputs.get("properties", {}),
                               "secretUri": f"https://{inputs.get('vaultName')}.vault.azure.net/secrets/{physical}"}
    elif type_token == "azure-native:app:ManagedEnvironment":
        state["staticIp"] = "10.40.2.4"
        state["defaultDomain"] = f"{physical}.internal.azurecontainerapps.io"
    elif type_token == "azure-native:operationalinsights:Workspace":
        state["customerId"] = f"customer-{physical}"
    elif type_token == "azure-native:app:ContainerApp":
        state["latestRevisionFqdn"] = f"{physical}.internal.azurecontainerapps.io"
    return state


class RecordingMocks(pulumi.runtime.Mocks):
    """Fake providers: record each resource's inputs, answer with plausible computed attributes."""

    def __init__(self, stack: Stack):
        self.stack = stack

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        if not args.custom:
            return f"{args.name}_id", {}
        cloud = args.typ.split(":")[0]
        computed = {"aws": _aws_state, "gcp": _gcp_state, "azure-native": _azure_state}[cloud](
            args.typ, args.name, args.inputs)
        state = {**args.inputs, **computed}
        identity = args.inputs.get("identity")
        if cloud == "azure-native" and isinstance(identity, dict) and \
                isinstance(identity.get("userAssignedIdentities"), list):
            # Azure answers a user-assigned identity list with a map keyed by identity id.
            state["identity"] = {**identity, "userAssignedIdentities": {
                i: {"principalId": f"principal-of-{i}"} for i in identity["userAssignedIdentities"]}}
        resource_id = computed.get("id", f"{args.name}-id")
        self.stack.resources.append(Recorded(args.typ, args.name, dict(args.inputs), {**state, "id": resource_id}))
        return resource_id, state

    def call(self, args: pulumi.runtime.MockCallArgs):
        token = args.token
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/deployer", "userId": "AIDA"}
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": [f"{REGION}a", f"{REGION}b", f"{REGION}c"], "zoneIds": ["euw1-az1", "euw1-az2"]}
        if token == "gcp:organizations/getClientConfig:getClientConfig":
            return {"project": GCP_PROJECT, "region": "europe-west1", "accessToken": "unused", "id": "x"}
        if token == "gcp:organizations/getProject:getProject":
            return {"projectId": GCP_PROJECT, "number": "123456789", "name": GCP_PROJECT}
        if token == "azure-native:authorization:getClientConfig":
            return {"tenantId": AZURE_TENANT, "subscriptionId": AZURE_SUBSCRIPTION, "clientId": "c",
                    "objectId": "deployer-object"}
        raise AssertionError(f"the program made an unexpected provider call: {token}")


def ensure_event_loop() -> None:
    """Pulumi's mocks run on ``asyncio.get_event_loop()``. Earlier tests in the same run (``asyncio.run``,
    in-process gateways) can leave the main thread with no current loop, or a closed one."""
    try:
        usable = not asyncio.get_event_loop().is_closed()
    except RuntimeError:
        usable = False
    if not usable:
        asyncio.set_event_loop(asyncio.new_event_loop())


def run_program(build: Callable[[], Any], project: str, stack_name: str) -> Stack:
    """Run ``build()`` (which declares resources) under mocks until every registration completed."""
    ensure_event_loop()
    stack = Stack()
    pulumi.runtime.set_mocks(RecordingMocks(stack), project=project, stack=stack_name, preview=False)

    @pulumi.runtime.test
    def run():
        stack.result = build()
        outputs = getattr(stack.result, "outputs", {}) or {}
        return pulumi.Output.all(**{k: v for k, v in outputs.items() if v is not None})

    run()
    return stack


FAKE_SOURCES = {
    "approval/handler.py": "def handle(request):\n    return request\n",
    "approval/aws.py": "def notifier(event, context):\n    pass\n\n\ndef webhook(event, context):\n    pass\n",
    "approval/gcp.py": "def notifier(cloud_event):\n    pass\n\n\ndef webhook(request):\n    pass\n",
    "evidence_export/handler.py": "def export_evidence():\n    pass\n",
    "evidence_export/aws.py": "def handler(event, context):\n    pass\n",
    "evidence_export/gcp.py": "def export(cloud_event):\n    pass\n",
    "key_rotation/handler.py": "def rotate_credential():\n    pass\n",
    "key_rotation/aws.py": "def handler(event, context):\n    pass\n",
    "key_rotation/gcp.py": "def rotate(cloud_event):\n    pass\n",
    "key_rotation/azure.py": "def register(app):\n    pass\n",
    "azure_app.py": "import azure.functions as func\n\napp = func.FunctionApp()\n",
    "__init__.py": "",
}


def policy_statements(policy: Any) -> list[dict]:
    document = json.loads(policy) if isinstance(policy, str) else policy
    statements = document["Statement"]
    return statements if isinstance(statements, list) else [statements]


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]

