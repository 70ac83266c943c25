"""The local clouds as session fixtures, shared by every test directory (a pytest plugin registered
from ``tests/conftest.py``), so each emulator starts at most once per test run.

``aws_cloud``, ``gcp_cloud`` and ``azure_cloud`` are started, never provisioned: each directory
provisions what its tests need under its own names. Starting a cloud changes nothing in
``os.environ``; the variables that point SDKs and adapters at a cloud are set per test by
``aws_env``/``gcp_env``/``azure_env`` (monkeypatch), so tests that assume their absence still see none.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from wardgate.devtools.localcloud.aws import AwsLocalCloud
from wardgate.devtools.localcloud.azure import AzureLocalCloud
from wardgate.devtools.localcloud.gcp import GcpLocalCloud
from wardgate_testkit import Receiver, start_receiver

# A developer's own AWS configuration would make boto3 reach past the emulator.
_AMBIENT_AWS_VARIABLES = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")


def _running(cloud: Any) -> Iterator[Any]:
    cloud.start()
    try:
        yield cloud
    finally:
        cloud.stop()


def _apply(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> dict[str, str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


# -- AWS: moto_server ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def aws_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AwsLocalCloud]:
    """One moto_server for the session (resources: ``aws_cloud.provision(prefix)``, unique prefixes)."""
    yield from _running(AwsLocalCloud(tmp_path_factory.mktemp("aws-localcloud")))


@pytest.fixture
def aws_env(aws_cloud: AwsLocalCloud, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """boto3 pointed at the emulator for this test only; the developer's own AWS config kept out."""
    for name in _AMBIENT_AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    return _apply(monkeypatch, aws_cloud.env())


# -- GCP: Google's emulators plus wardgate's KMS / Secret Manager fakes ----------------------------


@pytest.fixture(scope="session")
def gcp_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcpLocalCloud]:
    """Storage, Pub/Sub, Firestore emulators and the KMS/Secret Manager fakes, once per session."""
    yield from _running(GcpLocalCloud(tmp_path_factory.mktemp("gcp-localcloud")))


@pytest.fixture
def gcp_env(gcp_cloud: GcpLocalCloud, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The emulator variables (``*_EMULATOR_HOST``) for this test: SDKs find emulators through them."""
    return _apply(monkeypatch, dict(gcp_cloud.env))


# -- Azure: Azurite plus the fake Key Vault -------------------------------------------------------


@pytest.fixture(scope="session")
def azure_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureLocalCloud]:
    """Azurite (blob, queue, table) and the fake Key Vault, once per session."""
    yield from _running(AzureLocalCloud(tmp_path_factory.mktemp("azure-localcloud")))


@pytest.fixture
def azure_env(azure_cloud: AzureLocalCloud, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The storage connection string and the fake vault's URL, CA and token, for this test."""
    return _apply(monkeypatch, azure_cloud.env())


# -- what several directories' tests talk to --------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A chat platform's incoming webhook (Slack/Teams/generic stand-in) on a free loopback port."""
    with start_receiver() as running:
        yield running


@pytest.fixture
def fresh_function_instances() -> Iterator[None]:
    """The approval function's warm-instance cache emptied around a test, so each test's functions are
    built from its own settings (made autouse by the directories that call the functions)."""
    from functions.approval import handler

    handler._instances.clear()
    yield
    handler._instances.clear()
