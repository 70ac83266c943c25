"""The example configuration is what the docs point users to: it must load, and name every key."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from wardgate.config import (AuditConfig, GatewayConfig, IssuerConfig, ListenerConfig, ResourceConfig,
                             format_validation_error, load_config)

EXAMPLE = Path(__file__).resolve().parents[2] / "gateway_container" / "config.example.yaml"


def test_example_configuration_loads():
    config = load_config(EXAMPLE)
    assert config.policy is not None and config.resources["orders-prod"].tls.mode == "verify-full"


def test_example_configuration_documents_every_key():
    text = EXAMPLE.read_text()
    for model in (GatewayConfig, ListenerConfig, IssuerConfig, ResourceConfig, AuditConfig):
        for key in model.model_fields:
            assert f"{key}:" in text, f"{model.__name__}.{key} is not in config.example.yaml"


def test_workers_is_a_number_from_1_to_127_or_auto():
    base = {"listeners": [{"protocol": "postgres"}], "resources": {}, "dev_issuer": {"enabled": True}}
    assert GatewayConfig.model_validate(base).worker_count() == 1
    assert GatewayConfig.model_validate({**base, "workers": 3}).worker_count() == 3
    assert GatewayConfig.model_validate({**base, "workers": "auto"}).worker_count() >= 1
    for bad in (0, 128, "many", True, 2.5):
        with pytest.raises(ValidationError) as caught:
            GatewayConfig.model_validate({**base, "workers": bad})
        message = format_validation_error("gw.yaml", caught.value)
        assert "  workers: " in message and "from 1 to 127, or 'auto'" in message, message
