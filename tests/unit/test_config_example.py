"""The example configuration is what the docs point users to: it must load, and name every key."""

from pathlib import Path

from wardgate.config import AuditConfig, GatewayConfig, IssuerConfig, ListenerConfig, ResourceConfig, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "gateway_container" / "config.example.yaml"


def test_example_configuration_loads():
    config = load_config(EXAMPLE)
    assert config.policy is not None and config.resources["orders-prod"].tls.mode == "verify-full"


def test_example_configuration_documents_every_key():
    text = EXAMPLE.read_text()
    for model in (GatewayConfig, ListenerConfig, IssuerConfig, ResourceConfig, AuditConfig):
        for key in model.model_fields:
            assert f"{key}:" in text, f"{model.__name__}.{key} is not in config.example.yaml"
