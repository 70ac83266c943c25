"""The gateway's network: private subnets only for workloads; a NAT for outbound calls (issuers'
JWKS, AWS APIs), no inbound path from the internet (SC-7)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.common.config import StackConfig
from infra.common.naming import Naming


@dataclass
class NetworkRefs:
    vpc_id: pulumi.Input[str]
    private_subnet_ids: list[pulumi.Input[str]]


class PrivateNetwork(pulumi.ComponentResource):
    """A VPC with two private subnets (workloads), one public subnet holding only the NAT gateway,
    and gateway endpoints so S3 and DynamoDB traffic stays on the AWS network."""

    def __init__(self, name: str, stack: StackConfig, naming: Naming, opts: pulumi.ResourceOptions | None = None):
        super().__init__("wardgate:aws:PrivateNetwork", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = naming.tags()
        cidr = stack.network.cidr
        subnets = list(cidr.subnets(new_prefix=min(cidr.prefixlen + 4, 28)))
        zones = aws.get_availability_zones_output(state="available").names

        self.vpc = aws.ec2.Vpc(naming.name("vpc"), cidr_block=str(cidr), enable_dns_hostnames=True,
                               enable_dns_support=True, tags={**tags, "Name": naming.name("vpc")}, opts=child)
        igw = aws.ec2.InternetGateway(naming.name("igw"), vpc_id=self.vpc.id, tags=tags, opts=child)
        public = aws.ec2.Subnet(naming.name("nat"), vpc_id=self.vpc.id, cidr_block=str(subnets[2]),
                                availability_zone=zones[0], map_public_ip_on_launch=False, tags=tags, opts=child)
        public_routes = aws.ec2.RouteTable(naming.name("nat-routes"), vpc_id=self.vpc.id,
                                           routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}],
                                           tags=tags, opts=child)
        aws.ec2.RouteTableAssociation(naming.name("nat-routes"), subnet_id=public.id,
                                      route_table_id=public_routes.id, opts=child)
        nat_ip = aws.ec2.Eip(naming.name("nat-ip"), domain="vpc", tags=tags, opts=child)
        nat = aws.ec2.NatGateway(naming.name("nat"), allocation_id=nat_ip.id, subnet_id=public.id, tags=tags,
                                 opts=child)
        private_routes = aws.ec2.RouteTable(naming.name("private-routes"), vpc_id=self.vpc.id,
                                            routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}],
                                            tags=tags, opts=child)
        self.private_subnets = []
        for index in range(2):
            subnet = aws.ec2.Subnet(naming.name(f"private-{index}"), vpc_id=self.vpc.id,
                                    cidr_block=str(subnets[index]), availability_zone=zones[index],
                                    map_public_ip_on_launch=False, tags=tags, opts=child)
            aws.ec2.RouteTableAssociation(naming.name(f"private-{index}"), subnet_id=subnet.id,
                                          route_table_id=private_routes.id, opts=child)
            self.private_subnets.append(subnet)
        for service in ("s3", "dynamodb"):
            aws.ec2.VpcEndpoint(naming.name(f"{service}-endpoint"), vpc_id=self.vpc.id,
                                service_name=f"com.amazonaws.{stack.location}.{service}",
                                vpc_endpoint_type="Gateway", route_table_ids=[private_routes.id],
                                tags=tags, opts=child)
        self.register_outputs({"vpc_id": self.vpc.id})

    def refs(self) -> NetworkRefs:
        return NetworkRefs(self.vpc.id, [subnet.id for subnet in self.private_subnets])


def network_for(stack: StackConfig, naming: Naming, parent: pulumi.Resource) -> NetworkRefs:
    """The network to deploy into: created, or the stack's existing one."""
    if stack.network.create:
        return PrivateNetwork(naming.name("network"), stack, naming, pulumi.ResourceOptions(parent=parent)).refs()
    return NetworkRefs(stack.network.network_id, list(stack.network.subnet_ids))
