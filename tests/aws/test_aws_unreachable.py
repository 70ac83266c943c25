"""A dead endpoint fails every adapter fast, with the URL in the message: the caller fails closed
and says why instead of hanging on botocore's default timeouts and retries."""

from __future__ import annotations

import time

import pytest

from wardgate.adapters.aws import (DynamoDecisionStore, KmsSigner, RdsIamSource, S3ObjectStore, SecretsManagerSource,
                                   SqsQueue)
from wardgate.core.credentials import CredentialError
from wardgate.core.ports import StoreUnavailable
from wardgate.devtools.pgserver import free_port

CALLS = {
    "sqs://approvals?region=us-east-1": lambda url: SqsQueue(url).send(b"x"),
    "dynamodb://decisions?region=us-east-1": lambda url: DynamoDecisionStore(url).create("a/b", {}),
    "s3://audit-bucket/audit?region=us-east-1": lambda url: S3ObjectStore(url).put("seg", b"x"),
    "awskms://alias/audit?region=us-east-1": lambda url: KmsSigner(url),
    "aws-sm://db?region=us-east-1": lambda url: SecretsManagerSource(url, "u").fetch(),
}


@pytest.fixture
def dead_endpoint(monkeypatch: pytest.MonkeyPatch) -> str:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    return endpoint


@pytest.mark.parametrize("url", sorted(CALLS))
def test_dead_endpoint_is_store_unavailable_within_seconds(url, dead_endpoint):
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as failure:
        CALLS[url](url)
    assert time.monotonic() - started < 5.0
    message = str(failure.value)
    assert url in message and "Could not connect to the endpoint URL" in message
    if url.startswith("aws-sm://"):
        assert isinstance(failure.value, CredentialError)  # what the PostgreSQL engine catches


def test_rds_iam_token_needs_no_endpoint(dead_endpoint):
    """Signing is local: a token is produced even with no AWS service reachable (RDS checks it)."""
    assert RdsIamSource("rds-iam://db.internal:5432?region=us-east-1", "u").fetch().password.startswith(
        "db.internal:5432/?Action=connect")
