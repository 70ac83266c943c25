"""Fixtures for the Azure adapters, on the session's Azurite + fake Key Vault (``azure_cloud``, from
``cloud_fixtures``). Tests that need the emulator's variables ask for ``azure_env`` (set per test),
so the error tests here and other clouds' tests see no Azure emulator settings.
"""

from __future__ import annotations

import uuid

import pytest

from wardgate.devtools.localcloud.azure import AzureLocalCloud


@pytest.fixture(scope="session")
def azure_urls(azure_cloud: AzureLocalCloud) -> dict[str, str]:
    return azure_cloud.provision("wgtest")


@pytest.fixture
def unique() -> str:
    """A short lowercase name part, unique per test (resources are shared by the session)."""
    return uuid.uuid4().hex[:10]
