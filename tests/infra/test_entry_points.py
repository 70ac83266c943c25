"""Each project's ``__main__.py`` — what ``pulumi up`` runs — reads the stack's settings from the engine
and declares the environment (run here under mocks, with the functions built from a fake tree)."""

from __future__ import annotations

import importlib
import json
import runpy

import pulumi
import pytest
import yaml
from pulumi.runtime import config as runtime_config

from infra_harness import REPO_ROOT, RecordingMocks, Stack


@pytest.mark.parametrize("cloud, marker", [("aws", "aws:ecs/service:Service"),
                                           ("gcp", "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager"),
                                           ("azure", "azure-native:app:ContainerApp")])
def test_main_deploys_the_stack_the_engine_selected(cloud, marker, fake_functions, tmp_path, monkeypatch):
    module = importlib.import_module(f"infra.{cloud}.wardgate_{cloud}")
    real_build = module.build
    monkeypatch.setattr(module, "build", lambda name, out, **kw: real_build(
        name, tmp_path, **{**kw, "functions_dir": fake_functions}))
    document = yaml.safe_load((REPO_ROOT / "infra" / cloud / "Pulumi.dev.yaml").read_text())["config"]
    stack = Stack()
    pulumi.runtime.set_mocks(RecordingMocks(stack), project=f"wardgate-{cloud}", stack="dev", preview=False)
    runtime_config.set_all_config({k: v if isinstance(v, str) else json.dumps(v) for k, v in document.items()}, [])
    try:
        pulumi.runtime.test(lambda: runpy.run_path(str(REPO_ROOT / "infra" / cloud / "__main__.py")) and None)()
    finally:
        runtime_config.set_all_config({}, [])
    assert len(stack.of_type(marker)) == 1
    assert all(r.name.startswith("wardgate-dev-") for r in stack.resources)  # one naming scheme
