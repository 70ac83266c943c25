"""Fixtures for the Azure adapters: one Azurite + fake Key Vault for the whole session.

The environment variables that point the adapters at the local cloud are set per test (monkeypatch),
never for the whole session, so tests of other clouds that run in the same session see no Azure
emulator settings.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from wardgate.devtools.localcloud.azure import AzureLocalCloud


@pytest.fixture(scope="session")
def azure_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureLocalCloud]:
    cloud = AzureLocalCloud(tmp_path_factory.mktemp("azure-localcloud"))
    cloud.start()
    try:
        yield cloud
    finally:
        cloud.stop()


@pytest.fixture(scope="session")
def azure_urls(azure_cloud: AzureLocalCloud) -> dict[str, str]:
    return azure_cloud.provision("wgtest")


@pytest.fixture
def azure_env(azure_cloud: AzureLocalCloud, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = azure_cloud.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def unique() -> str:
    """A short lowercase name part, unique per test (resources are shared by the session)."""
    return uuid.uuid4().hex[:10]
