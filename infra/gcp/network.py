"""The gateway's VPC on GCP: one private subnetwork (Private Google Access on), Cloud NAT for
outbound calls (issuers' JWKS), no external addresses and no inbound rule from the internet."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra.common.config import StackConfig
from infra.common.naming import Naming


@dataclass
class NetworkRefs:
    network: pulumi.Input[str]
    subnetwork: pulumi.Input[str]


class PrivateNetwork(pulumi.ComponentResource):
    """VPC + subnetwork + Cloud Router/NAT; GCP denies ingress unless a firewall rule allows it, and
    the only rules this program adds admit the client ranges and Google's health checkers to the
    gateway VMs (``gateway.py``)."""

    def __init__(self, name: str, stack: StackConfig, naming: Naming, project: str,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("wardgate:gcp:PrivateNetwork", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.network = gcp.compute.Network(naming.name("vpc"), name=naming.name("vpc"), project=project,
                                           auto_create_subnetworks=False, opts=child)
        self.subnetwork = gcp.compute.Subnetwork(naming.name("gateway"), name=naming.name("gateway"), project=project,
                                                 region=stack.location, network=self.network.id,
                                                 ip_cidr_range=str(next(stack.network.cidr.subnets(new_prefix=24))),
                                                 private_ip_google_access=True, opts=child)
        router = gcp.compute.Router(naming.name("router"), name=naming.name("router"), project=project,
                                    region=stack.location, network=self.network.id, opts=child)
        gcp.compute.RouterNat(naming.name("nat"), name=naming.name("nat"), project=project, region=stack.location,
                              router=router.name, nat_ip_allocate_option="AUTO_ONLY",
                              source_subnetwork_ip_ranges_to_nat="ALL_SUBNETWORKS_ALL_IP_RANGES",
                              log_config={"enable": True, "filter": "ERRORS_ONLY"}, opts=child)
        self.register_outputs({"network": self.network.id})


def network_for(stack: StackConfig, naming: Naming, project: str, parent: pulumi.Resource) -> NetworkRefs:
    if stack.network.create:
        created = PrivateNetwork(naming.name("network"), stack, naming, project, pulumi.ResourceOptions(parent=parent))
        return NetworkRefs(created.network.id, created.subnetwork.id)
    return NetworkRefs(stack.network.network_id, stack.network.subnet_ids[0])
