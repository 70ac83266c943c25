"""The shared stack configuration: every example stack loads; each mistake is refused naming the key."""

from __future__ import annotations

import json

import pytest
import yaml

from infra_harness import REPO_ROOT
from infra.common.config import StackConfigError, load_from_pulumi, load_stack_file, parse_stack_config
from infra.common.naming import Naming, NameTooLong

EXAMPLES = sorted((REPO_ROOT / "infra").glob("*/Pulumi.*.yaml"))


def _dev_values() -> dict:
    document = yaml.safe_load((REPO_ROOT / "infra" / "aws" / "Pulumi.dev.yaml").read_text())
    return {k.removeprefix("wardgate:"): v for k, v in document["config"].items() if k.startswith("wardgate:")}


def test_every_example_stack_loads():
    names = {path.relative_to(REPO_ROOT / "infra").as_posix() for path in EXAMPLES}
    assert names == {f"{cloud}/Pulumi.{env}.yaml" for cloud in ("aws", "gcp", "azure") for env in ("dev", "prod")}
    for path in EXAMPLES:
        config = load_stack_file(path)
        assert config.environment == path.stem.split(".")[1] == config.tier


def _error(values: dict) -> str:
    with pytest.raises(StackConfigError) as caught:
        parse_stack_config(values, "Pulumi.test.yaml")
    return str(caught.value)


def test_missing_issuers_is_refused_naming_the_key():
    values = _dev_values()
    del values["issuers"]
    assert "wardgate:issuers: Field required" in _error(values)
    values["issuers"] = []
    assert "wardgate:issuers: at least one trusted OIDC issuer is required" in _error(values)


def test_bad_issuer_is_refused_naming_the_key():
    values = _dev_values()
    values["issuers"] = [{"issuer": "https://ci.example", "audience": "x", "algorithms": ["HS256"]}]
    assert "wardgate:issuers.0.algorithms:" in _error(values)


@pytest.mark.parametrize("retention", [0, -5, "forever", 40000])
def test_bad_audit_retention_is_refused_naming_the_key(retention):
    values = _dev_values()
    values["audit"] = {"retention_days": retention}
    assert "wardgate:audit.retention_days:" in _error(values)


def test_unsupported_log_retention_is_refused_naming_the_key():
    values = _dev_values()
    values["audit"] = {"retention_days": 30, "log_retention_days": 42}
    assert "wardgate:audit.log_retention_days: 42 is not a supported log retention" in _error(values)


def test_prod_requires_a_pinned_image_long_retention_and_two_replicas():
    values = _dev_values() | {"tier": "prod"}
    values["gateway"] = {"image": "wardgate:latest", "replicas": 1}
    message = _error(values)
    for key in ("gateway.image", "audit.retention_days", "gateway.replicas"):
        assert key in message


def test_secret_values_are_refused_with_where_they_go_instead():
    values = _dev_values()
    values["resources"] = {"orders": {**values["resources"]["orders"], "password": "hunter2"}}
    message = _error(values)
    assert "wardgate:resources.orders.password: secret values are not accepted" in message
    assert "hunter2" not in message
    values = _dev_values() | {"approvals": {"secure": "v1:abc"}}
    assert "wardgate:approvals: encrypted config values are not used" in _error(values)


def test_unknown_keys_and_public_client_ranges_are_refused():
    values = _dev_values() | {"enviroment": "dev"}
    assert "wardgate:enviroment: unknown key" in _error(values)
    values = _dev_values()
    values["network"] = {**values["network"], "client_cidrs": ["0.0.0.0/0"]}
    assert "wardgate:network.client_cidrs:" in _error(values) and "not private" in _error(values)


def test_existing_network_needs_its_ids():
    values = _dev_values()
    values["network"] = {"create": False, "client_cidrs": ["10.0.0.0/8"]}
    assert "wardgate:network: " in _error(values) and "network_id and subnet_ids" in _error(values)


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "Pulumi.x.yaml"
    path.write_text("config: [\n")
    with pytest.raises(StackConfigError, match="Pulumi.x.yaml: not valid YAML"):
        load_stack_file(path)
    with pytest.raises(StackConfigError, match="cannot read"):
        load_stack_file(tmp_path / "missing.yaml")


def test_the_program_reads_the_same_settings_from_the_pulumi_engine():
    import pulumi
    from pulumi.runtime import config as runtime_config

    document = yaml.safe_load((REPO_ROOT / "infra" / "aws" / "Pulumi.dev.yaml").read_text())["config"]
    # The engine hands structured values to the program JSON-encoded, plain ones as strings.
    engine = {k: v if isinstance(v, str) else json.dumps(v) for k, v in document.items()}
    from infra_harness import RecordingMocks, Stack

    pulumi.runtime.set_mocks(RecordingMocks(Stack()), project="wardgate-aws", stack="dev")
    runtime_config.set_all_config(engine, secret_keys=[])
    try:
        assert load_from_pulumi() == load_stack_file(REPO_ROOT / "infra" / "aws" / "Pulumi.dev.yaml")
        runtime_config.set_all_config(engine, secret_keys=["wardgate:approvals"])
        with pytest.raises(StackConfigError, match="wardgate:approvals: encrypted config values are not used"):
            load_from_pulumi()
    finally:
        runtime_config.set_all_config({}, secret_keys=[])


def test_naming_scheme():
    naming = Naming("prod", "a1")
    assert naming.name("approvals") == "wardgate-prod-approvals"
    assert naming.global_name("audit") == "wardgate-prod-audit-a1"
    assert naming.compact("data") == "wgproddataa1"
    with pytest.raises(NameTooLong, match="allows 24"):
        naming.compact("a-very-long-purpose-name")


def test_boot_command_writes_the_config_and_tls_privately_and_drops_the_key_from_the_environment(tmp_path):
    import os
    import stat
    import subprocess

    from infra.common.gateway_config import boot_command

    script = boot_command(tls_from_env=True)[2].replace("/tmp/wardgate", str(tmp_path / "wg"))
    # Stand in for the gateway: show what it would be started with.
    script = script.replace("exec wardgate serve --config", "exec env WARDGATE_ARGS=--config sh -c 'env; cat \"$0\"'")
    result = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=30, env={
        "PATH": os.environ["PATH"], "WARDGATE_CONFIG_YAML": "audit:\n  sink: 'file:///x y'\n",
        "WARDGATE_TLS_CERT": "-----BEGIN CERTIFICATE-----", "WARDGATE_TLS_KEY": "-----BEGIN PRIVATE KEY-----"})
    assert result.returncode == 0, result.stderr
    assert "WARDGATE_TLS_KEY" not in result.stdout and "audit:\n  sink: 'file:///x y'" in result.stdout
    key = tmp_path / "wg" / "tls" / "server-key.pem"
    assert key.read_text() == "-----BEGIN PRIVATE KEY-----"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


@pytest.mark.parametrize("settings, message", [
    ({"grace_seconds": 300}, "grace_seconds (300) must be longer than credential_refresh_seconds (300)"),
    ({"grace_seconds": 900, "credential_refresh_seconds": 1200}, "must be longer than credential_refresh_seconds (1200)"),
    ({"rotate_days": 1, "grace_seconds": 86400}, "must be shorter than the rotation interval (rotate_days 1 = 86400 s)"),
])
def test_rotation_grace_must_outlast_the_gateways_refresh_and_end_before_the_next_rotation(settings, message):
    values = _dev_values()
    values["resources"] = {"orders": {**values["resources"]["orders"], **settings}}
    error = _error(values)
    assert "wardgate:resources.orders:" in error and message in error


def test_rotation_grace_is_not_checked_when_rotation_is_off_and_refresh_reaches_the_gateway():
    from infra.common.gateway_config import GatewayWiring, gateway_config_document

    values = _dev_values()
    values["resources"] = {"orders": {**values["resources"]["orders"], "rotate_days": 0, "grace_seconds": 60},
                           "billing": {**values["resources"]["orders"], "credential_refresh_seconds": 120}}
    config = parse_stack_config(values, "Pulumi.test.yaml")
    wiring = GatewayWiring(audit_archive="file:///a", signer="file:///k.pem", approvals_queue="memory://q",
                           decision_store="sqlite:///d", approvals_public_url="https://x",
                           masking_key="env://MASK", resource_passwords={"orders": "env://A", "billing": "env://B"},
                           tls_cert_file="/c.pem", tls_key_file="/k.pem")
    resources = gateway_config_document(config, wiring)["resources"]
    assert (resources["orders"]["credential_refresh"], resources["billing"]["credential_refresh"]) == (300, 120)


def _approvals(**changes) -> dict:
    values = _dev_values()
    values["approvals"] = {**values["approvals"], **changes}
    return values


ALICE = {"issuer": "https://acme.okta.com", "subject": "alice@acme.example", "groups": ["platform-oncall"]}


@pytest.mark.parametrize("changes, message", [
    ({"identities": {"slack:U1,U2": ALICE}},
     "identity key(s) ['slack:U1,U2']: use slack:<user id>"),
    ({"identities": {"U012AB3CD": ALICE}},
     "identity key(s) ['U012AB3CD']: use slack:<user id>, teams:<Entra object id> or generic:<name>"),
    ({"identities": {"slack:U1": {**ALICE, "groups": ["platfrom-oncall"]}}},
     "identities ['slack:U1'] are in none of approver_groups ['platform-oncall']: they could approve nothing"),
    ({"identities": {"teams:0c1d": ALICE}}, "identities ['teams:0c1d'] cannot sign in through the slack channel"),
    ({"identities": {"slack:U1": ALICE}, "link_approvers": ["slack:U2"]},
     "link_approvers ['slack:U2'] are not keys of approvals.identities"),
    ({"channel": "teams", "identities": {"teams:0c1d": ALICE}},
     "channel teams needs link_approvers: Teams cards approve through one-time links only"),
    ({"grants": {"dba": {"approvers": ["dba-approvers"]}}},
     "grants.dba.approvers ['dba-approvers'] are not in approver_groups ['platform-oncall']"),
])
def test_approver_settings_that_would_let_nobody_approve_are_refused(changes, message):
    error = _error(_approvals(**changes))
    assert "wardgate:approvals" in error and message in error


@pytest.mark.parametrize("grant, key", [
    ({"approvers": []}, "wardgate:approvals.grants.dba.approvers:"),
    ({"approvers": ["platform-oncall"], "quorum": 0}, "wardgate:approvals.grants.dba.quorum:"),
    ({"approvers": ["platform-oncall"], "max_duration": "forever"}, "wardgate:approvals.grants.dba.max_duration:"),
    ({"approvers": ["platform-oncall"], "ttl": "1h"}, "wardgate:approvals.grants.dba.ttl: unknown key"),
])
def test_malformed_grants_are_refused_naming_the_key(grant, key):
    assert key in _error(_approvals(grants={"dba": grant}))


def test_identities_grants_and_links_reach_the_gateway_configuration_as_the_stack_says():
    from infra.common.gateway_config import GatewayWiring, gateway_config_document
    from wardgate.config import GatewayConfig

    values = _approvals(channel="teams", identities={"teams:0c1d": {**ALICE, "display": "Alice"}},
                        link_approvers=["teams:0c1d"],
                        grants={"dba": {"approvers": ["platform-oncall"], "quorum": 2, "max_duration": "90m"}})
    config = parse_stack_config(values, "Pulumi.test.yaml")
    wiring = GatewayWiring(audit_archive="file:///a", signer="file:///k.pem", approvals_queue="memory://q",
                           decision_store="sqlite:///d", approvals_public_url="https://x", masking_key="env://MASK",
                           resource_passwords={"orders": "env://A"}, tls_cert_file="/c.pem", tls_key_file="/k.pem")
    gateway = GatewayConfig.model_validate(gateway_config_document(config, wiring)).approvals
    assert gateway.identities["teams:0c1d"].display == "Alice" and gateway.identities["teams:0c1d"].groups == \
        ["platform-oncall"]
    assert (gateway.grants["dba"].quorum, gateway.grants["dba"].max_duration) == (2, 5400.0)


@pytest.mark.parametrize("cpu, workers", [(0.25, 1), (0.5, 1), (1, 1), (2, 2), (4, 4)])
def test_the_gateway_runs_one_worker_process_per_vcpu_of_its_container(cpu, workers):
    from infra.common.gateway_config import GatewayWiring, gateway_config_document
    from wardgate.config import GatewayConfig

    values = _dev_values()
    values["gateway"] = {**values["gateway"], "cpu": cpu}
    config = parse_stack_config(values, "Pulumi.test.yaml")
    wiring = GatewayWiring(audit_archive="file:///a", signer="file:///k.pem", approvals_queue="memory://q",
                           decision_store="sqlite:///d", approvals_public_url="https://x", masking_key="env://MASK",
                           resource_passwords={"orders": "env://A"}, tls_cert_file="/c.pem", tls_key_file="/k.pem")
    assert GatewayConfig.model_validate(gateway_config_document(config, wiring)).worker_count() == workers


def test_deployed_gateways_seal_their_audit_segments_every_minute():
    """The replica's disk goes with the replica: what is not sealed (and shipped) is at most a minute."""
    from infra.common.gateway_config import GatewayWiring, gateway_config_document
    from wardgate.config import GatewayConfig

    config = parse_stack_config(_dev_values(), "Pulumi.test.yaml")
    wiring = GatewayWiring(audit_archive="file:///a", signer="file:///k.pem", approvals_queue="memory://q",
                           decision_store="sqlite:///d", approvals_public_url="https://x", masking_key="env://MASK",
                           resource_passwords={"orders": "env://A"}, tls_cert_file="/c.pem", tls_key_file="/k.pem")
    audit = GatewayConfig.model_validate(gateway_config_document(config, wiring)).audit
    assert audit.archive == "file:///a" and audit.seal_interval <= 60
