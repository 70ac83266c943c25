"""The AWS local cloud (moto_server) for the AWS adapter tests: one emulator per test session,
fresh resources per test (``aws_urls``), and the emulator's environment applied to each test only."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from wardgate.devtools.localcloud.aws import AwsLocalCloud

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def aws_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AwsLocalCloud]:
    cloud = AwsLocalCloud(tmp_path_factory.mktemp("aws-localcloud"))
    cloud.start()
    try:
        yield cloud
    finally:
        cloud.stop()


@pytest.fixture(autouse=True)
def aws_env(aws_cloud: AwsLocalCloud, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point boto3 at the emulator for this test; keep the developer's own AWS config out."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    env = aws_cloud.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def aws_urls(aws_cloud: AwsLocalCloud) -> dict[str, str]:
    """A fresh set of provisioned resources (queue + DLQ, table, bucket, key, secret) for one test."""
    return aws_cloud.provision(f"t{next(_prefixes)}")
