"""The gateway on ECS Fargate: private subnets only, reachable through an internal Network Load
Balancer from the stack's private client ranges. TLS is end to end: the NLB forwards TCP and the
gateway terminates TLS, because PostgreSQL negotiates TLS inside its own protocol (SSLRequest), which
a TLS-terminating load balancer would break."""

from __future__ import annotations

import re
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.aws.iam import allow, document, trust
from infra.aws.network import NetworkRefs
from infra.common.config import StackConfig
from infra.common.gateway_config import CONFIG_ENV, LISTENER_PORT, TLS_ENV, boot_command
from infra.common.naming import Naming

_ECR_IMAGE = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/([^:@]+)")
_PRIVATE_RANGES = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]


def ecr_repository_arn(image: str) -> str | None:
    """The ECR repository an image reference names, or None for other registries."""
    match = _ECR_IMAGE.match(image)
    if match is None:
        return None
    account, region, repository = match.groups()
    return f"arn:aws:ecr:{region}:{account}:repository/{repository}"


class GatewayService(pulumi.ComponentResource):
    """ECS cluster, task definition, service, internal NLB, security groups, roles and log group."""

    def __init__(self, name: str, *, stack: StackConfig, naming: Naming, network: NetworkRefs,
                 config_yaml: pulumi.Input[str], task_grants: list[dict], tls_secret_arns: dict[str, Any],
                 data_key_arn: Any, opts: pulumi.ResourceOptions | None = None):
        super().__init__("wardgate:aws:GatewayService", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = naming.tags()
        prod = stack.tier == "prod"
        clients = [str(cidr) for cidr in stack.network.client_cidrs]
        resource_ports = sorted({r.port for r in stack.resources.values()})

        self.lb_security_group = aws.ec2.SecurityGroup(
            naming.name("gateway-lb"), vpc_id=network.vpc_id, description="wardgate NLB: private clients only",
            ingress=[{"protocol": "tcp", "from_port": LISTENER_PORT, "to_port": LISTENER_PORT,
                      "cidr_blocks": clients, "description": "PostgreSQL clients (private ranges)"}],
            egress=[{"protocol": "tcp", "from_port": LISTENER_PORT, "to_port": LISTENER_PORT,
                     "cidr_blocks": _PRIVATE_RANGES, "description": "to the gateway tasks"}],
            tags=tags, opts=child)
        self.task_security_group = aws.ec2.SecurityGroup(
            naming.name("gateway-task"), vpc_id=network.vpc_id, description="wardgate gateway tasks",
            ingress=[
                # The NLB preserves client addresses (so the audit trail records the real peer):
                # the tasks admit the same private client ranges, and the NLB for health checks.
                {"protocol": "tcp", "from_port": LISTENER_PORT, "to_port": LISTENER_PORT, "cidr_blocks": clients,
                 "description": "clients through the NLB"},
                {"protocol": "tcp", "from_port": LISTENER_PORT, "to_port": LISTENER_PORT,
                 "security_groups": [self.lb_security_group.id], "description": "NLB health checks"},
            ],
            egress=[
                {"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["0.0.0.0/0"],
                 "description": "AWS APIs and OIDC issuers' JWKS over HTTPS"},
                *({"protocol": "tcp", "from_port": port, "to_port": port, "cidr_blocks": _PRIVATE_RANGES,
                   "description": "backends"} for port in resource_ports),
            ],
            tags=tags, opts=child)

        self.load_balancer = aws.lb.LoadBalancer(
            naming.name("gateway", max_length=32), name=naming.name("gateway", max_length=32), internal=True,
            load_balancer_type="network", subnets=network.private_subnet_ids,
            security_groups=[self.lb_security_group.id], enable_cross_zone_load_balancing=True,
            enable_deletion_protection=prod, tags=tags, opts=child)
        target_group = aws.lb.TargetGroup(
            naming.name("gateway-tg", max_length=32), name=naming.name("gateway-tg", max_length=32),
            port=LISTENER_PORT, protocol="TCP", target_type="ip", vpc_id=network.vpc_id, preserve_client_ip="true",
            # A PostgreSQL cancel (psql's Ctrl-C, a driver's timeout) is a new connection carrying the key
            # one replica issued; only that replica can act on it. Source-IP stickiness sends it there.
            stickiness={"type": "source_ip", "enabled": True},
            health_check={"protocol": "TCP", "interval": 10, "healthy_threshold": 2, "unhealthy_threshold": 2},
            tags=tags, opts=child)
        aws.lb.Listener(naming.name("gateway-listener"), load_balancer_arn=self.load_balancer.arn,
                        port=LISTENER_PORT, protocol="TCP",
                        default_actions=[{"type": "forward", "target_group_arn": target_group.arn}], opts=child)

        log_group = aws.cloudwatch.LogGroup(naming.name("gateway-logs"), name=f"/ecs/{naming.name('gateway')}",
                                            retention_in_days=stack.audit.log_retention_days, tags=tags, opts=child)
        execution_grants = [
            allow(["logs:CreateLogStream", "logs:PutLogEvents"], [pulumi.Output.concat(log_group.arn, ":*")]),
            allow(["secretsmanager:GetSecretValue"], list(tls_secret_arns.values())),
            allow(["kms:Decrypt"], [data_key_arn],
                  {"StringEquals": {"kms:ViaService": f"secretsmanager.{stack.location}.amazonaws.com"}}),
        ]
        repository = ecr_repository_arn(stack.gateway.image)
        if repository is not None:
            execution_grants.append(allow(["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"], [repository]))
            execution_grants.append(allow(["ecr:GetAuthorizationToken"], ["*"]))
        self.execution_role = aws.iam.Role(naming.name("gateway-execution"), name=naming.name("gateway-execution"),
                                           assume_role_policy=trust("ecs-tasks.amazonaws.com"), tags=tags, opts=child)
        aws.iam.RolePolicy(naming.name("gateway-execution"), role=self.execution_role.id,
                           policy=document(*execution_grants), opts=child)
        self.task_role = aws.iam.Role(naming.name("gateway-task"), name=naming.name("gateway-task"),
                                      assume_role_policy=trust("ecs-tasks.amazonaws.com"), tags=tags, opts=child)
        aws.iam.RolePolicy(naming.name("gateway-task"), role=self.task_role.id, policy=document(*task_grants),
                           opts=child)

        container = {
            "name": "gateway",
            "image": stack.gateway.image,
            "essential": True,
            "user": "10001:10001",
            "command": boot_command(tls_from_env=True),
            "entryPoint": [],
            "portMappings": [{"containerPort": LISTENER_PORT, "protocol": "tcp"}],
            "environment": [{"name": CONFIG_ENV, "value": config_yaml}],
            # Injected by ECS from Secrets Manager at start: the task definition holds only the ARNs.
            "secrets": [{"name": TLS_ENV[part], "valueFrom": arn} for part, arn in sorted(tls_secret_arns.items())],
            "logConfiguration": {"logDriver": "awslogs", "options": {
                "awslogs-group": log_group.name, "awslogs-region": stack.location,
                "awslogs-stream-prefix": "gateway"}},
            "healthCheck": {"command": ["CMD", "python", "-c",
                                        "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen("
                                        "'http://127.0.0.1:9480/healthz', timeout=2).status == 200 else 1)"],
                            "interval": 15, "timeout": 3, "retries": 3, "startPeriod": 10},
        }
        cluster = aws.ecs.Cluster(naming.name("cluster"), name=naming.name("cluster"),
                                  settings=[{"name": "containerInsights", "value": "enabled"}], tags=tags, opts=child)
        task = aws.ecs.TaskDefinition(
            naming.name("gateway"), family=naming.name("gateway"), requires_compatibilities=["FARGATE"],
            network_mode="awsvpc", cpu=str(int(stack.gateway.cpu * 1024)), memory=str(stack.gateway.memory_mb),
            execution_role_arn=self.execution_role.arn, task_role_arn=self.task_role.arn,
            runtime_platform={"operating_system_family": "LINUX", "cpu_architecture": "X86_64"},
            container_definitions=pulumi.Output.json_dumps([container]), tags=tags, opts=child)
        aws.ecs.Service(
            naming.name("gateway"), name=naming.name("gateway"), cluster=cluster.arn, task_definition=task.arn,
            launch_type="FARGATE", desired_count=stack.gateway.replicas, enable_execute_command=False,
            network_configuration={"subnets": network.private_subnet_ids, "assign_public_ip": False,
                                   "security_groups": [self.task_security_group.id]},
            load_balancers=[{"target_group_arn": target_group.arn, "container_name": "gateway",
                             "container_port": LISTENER_PORT}],
            deployment_circuit_breaker={"enable": True, "rollback": True}, propagate_tags="SERVICE",
            tags=tags, opts=pulumi.ResourceOptions(parent=self, depends_on=[target_group]))
        self.register_outputs({"endpoint": self.load_balancer.dns_name})
