"""The gateway on Google Cloud: a regional managed instance group of Container-Optimized OS VMs behind
an internal passthrough TCP load balancer.

Why not Cloud Run: it carries HTTP(S) and gRPC only, and the PostgreSQL wire protocol is raw TCP with
TLS negotiated inside it (``SSLRequest``). A passthrough load balancer forwards the TCP connection
untouched, keeps the client's address (so the audit trail records the real peer) and lets the gateway
end TLS itself. The VMs have no external address, boot verified (Shielded VM), admit SSH only through
OS Login, and run the image under the gateway's own service account.
"""

from __future__ import annotations

import re
from typing import Any

import pulumi
import pulumi_gcp as gcp
import yaml

from infra.common.config import StackConfig
from infra.common.gateway_config import CONFIG_ENV, CONTROL_PORT, LISTENER_PORT, boot_command
from infra.common.naming import Naming
from infra.gcp.network import NetworkRefs

# Google's health checkers, the only sources besides the clients that reach the VMs
# (https://cloud.google.com/load-balancing/docs/health-check-concepts#ip-ranges).
HEALTH_CHECK_RANGES = ("35.191.0.0/16", "130.211.0.0/22")
COS_IMAGE = "projects/cos-cloud/global/images/family/cos-stable"
# (machine type, vCPUs, memory MB), smallest first: the first that holds the stack's cpu and memory.
MACHINE_TYPES = (("e2-medium", 1, 4096), ("e2-standard-2", 2, 8192), ("e2-standard-4", 4, 16384))
_ARTIFACT_REGISTRY = re.compile(r"^([a-z0-9-]+)-docker\.pkg\.dev/([a-z0-9-]+)/([a-z0-9._-]+)/")
_NETWORK_PROJECT = re.compile(r"^(?:https://www\.googleapis\.com/compute/v1/)?projects/([^/]+)/")


def machine_type(cpu: float, memory_mb: int) -> str:
    for name, vcpus, memory in MACHINE_TYPES:
        if cpu <= vcpus and memory_mb <= memory:
            return name
    raise ValueError(f"no machine type offers {cpu} vCPU and {memory_mb} MB")  # the stack schema bounds both


def artifact_registry_repository(image: str) -> tuple[str, str, str] | None:
    """(location, project, repository) of an Artifact Registry image, or None for other registries."""
    match = _ARTIFACT_REGISTRY.match(image)
    return match.groups() if match else None  # type: ignore[return-value]


def network_project(network_id: Any, default: pulumi.Input[str]) -> pulumi.Input[str]:
    """Firewall rules live in the network's project: the host project of a Shared VPC."""
    match = _NETWORK_PROJECT.match(network_id) if isinstance(network_id, str) else None
    return match.group(1) if match else default


def container_declaration(image: str, config_yaml: str, tls_secrets: dict[str, str]) -> str:
    """The ``gce-container-declaration`` metadata Container-Optimized OS runs (host network)."""
    command = boot_command(tls_from_env=False, tls_from_secret_manager=tls_secrets)
    return yaml.safe_dump({"spec": {
        "containers": [{
            "name": "wardgate-gateway", "image": image, "command": command[:1], "args": command[1:],
            "env": [{"name": CONFIG_ENV, "value": config_yaml}],
            "securityContext": {"privileged": False}, "stdin": False, "tty": False,
        }],
        "restartPolicy": "Always",
    }}, sort_keys=False)


class GatewayGroup(pulumi.ComponentResource):
    """Instance template, regional MIG with autohealing, health check, internal TCP load balancer and
    the two firewall rules that admit anything to the VMs (clients; health checkers)."""

    def __init__(self, name: str, *, stack: StackConfig, naming: Naming, project: pulumi.Input[str],
                 network: NetworkRefs, service_account: gcp.serviceaccount.Account, config_yaml: pulumi.Input[str],
                 tls_secrets: dict[str, pulumi.Input[str]], disk_key: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("wardgate:gcp:GatewayGroup", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        region = stack.location
        labels = naming.tags()
        declaration = pulumi.Output.all(config_yaml, pulumi.Output.all(**tls_secrets)).apply(
            lambda v: container_declaration(stack.gateway.image, v[0], dict(v[1])))
        # Templates are immutable: a changed one is a new template (name_prefix), rolled out by the MIG.
        template = gcp.compute.InstanceTemplate(
            naming.name("gateway-template"), name_prefix=f"{naming.name('gateway')}-", project=project,
            machine_type=machine_type(stack.gateway.cpu, stack.gateway.memory_mb), can_ip_forward=False,
            labels=labels, tags=["wardgate-gateway"],
            disks=[{"source_image": COS_IMAGE, "boot": True, "auto_delete": True, "disk_type": "pd-balanced",
                    "disk_size_gb": 20, "disk_encryption_key": {"kms_key_self_link": disk_key}}],
            # No access_configs: no external address.
            network_interfaces=[{"network": network.network, "subnetwork": network.subnetwork}],
            service_account={"email": service_account.email,
                             "scopes": ["https://www.googleapis.com/auth/cloud-platform"]},
            shielded_instance_config={"enable_secure_boot": True, "enable_vtpm": True,
                                      "enable_integrity_monitoring": True},
            metadata={"gce-container-declaration": declaration, "enable-oslogin": "TRUE",
                      "block-project-ssh-keys": "TRUE", "serial-port-enable": "FALSE",
                      "google-logging-enabled": "true", "google-monitoring-enabled": "true"},
            opts=child)
        self.health_check = gcp.compute.RegionHealthCheck(
            naming.name("gateway-ready"), name=naming.name("gateway-ready"), project=project, region=region,
            http_health_check={"port": CONTROL_PORT, "request_path": "/readyz"},
            check_interval_sec=10, timeout_sec=5, healthy_threshold=2, unhealthy_threshold=3,
            log_config={"enable": True}, opts=child)
        self.group = gcp.compute.RegionInstanceGroupManager(
            naming.name("gateway"), name=naming.name("gateway"), project=project, region=region,
            base_instance_name=naming.name("gateway"), target_size=stack.gateway.replicas,
            versions=[{"name": "gateway", "instance_template": template.self_link_unique}],
            # Replaced VMs come up before old ones leave; a regional MIG surges by at least its zones.
            update_policy={"type": "PROACTIVE", "minimal_action": "REPLACE", "max_surge_fixed": 3,
                           "max_unavailable_fixed": 0, "replacement_method": "SUBSTITUTE"},
            auto_healing_policies={"health_check": self.health_check.id, "initial_delay_sec": 180},
            wait_for_instances=False, opts=child)
        backend = gcp.compute.RegionBackendService(
            naming.name("gateway-backend"), name=naming.name("gateway-backend"), project=project, region=region,
            load_balancing_scheme="INTERNAL", protocol="TCP", health_checks=self.health_check.id,
            # A PostgreSQL cancel is a new connection carrying the key one replica issued; only that
            # replica can act on it. Client-IP affinity sends it there.
            session_affinity="CLIENT_IP",
            backends=[{"group": self.group.instance_group, "balancing_mode": "CONNECTION"}],
            connection_draining_timeout_sec=300, opts=child)
        self.forwarding_rule = gcp.compute.ForwardingRule(
            naming.name("gateway-lb"), name=naming.name("gateway-lb"), project=project, region=region,
            load_balancing_scheme="INTERNAL", ip_protocol="TCP", ports=[str(LISTENER_PORT)],
            backend_service=backend.id, network=network.network, subnetwork=network.subnetwork,
            allow_global_access=False, labels=labels, opts=child)

        firewall_project = network_project(stack.network.network_id, project)
        targets = [service_account.email]
        for purpose, ports, sources in (
                ("gateway-clients", [str(LISTENER_PORT)], [str(c) for c in stack.network.client_cidrs]),
                ("gateway-health-checks", [str(CONTROL_PORT)], list(HEALTH_CHECK_RANGES))):
            gcp.compute.Firewall(
                naming.name(purpose), name=naming.name(purpose), project=firewall_project,
                network=network.network, direction="INGRESS", priority=1000,
                allows=[{"protocol": "tcp", "ports": ports}], source_ranges=sources,
                target_service_accounts=targets, log_config={"metadata": "INCLUDE_ALL_METADATA"}, opts=child)
        self.register_outputs({"address": self.forwarding_rule.ip_address})
