"""The AWS adapter tests run on the session's moto_server (``aws_cloud``, from ``cloud_fixtures``):
fresh resources per test (``aws_urls``), the emulator's environment applied to every test here."""

from __future__ import annotations

import itertools

import pytest

from wardgate.devtools.localcloud.aws import AwsLocalCloud

_prefixes = itertools.count()


@pytest.fixture(autouse=True)
def _emulator_env(aws_env: dict[str, str]) -> dict[str, str]:
    return aws_env


@pytest.fixture
def aws_urls(aws_cloud: AwsLocalCloud) -> dict[str, str]:
    """A fresh set of provisioned resources (queue + DLQ, table, bucket, key, secret) for one test."""
    return aws_cloud.provision(f"t{next(_prefixes)}")
