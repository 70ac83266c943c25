"""SecretsManagerSource against moto_server's Secrets Manager; RdsIamSource's token (signed locally,
no service involved) taken apart to show it presigns the right connect request."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from wardgate.adapters import open_secret_source, register_secret_schemes
from wardgate.adapters.aws import RdsIamSource, SecretsManagerSource, SecretUnavailable
from wardgate.core.credentials import Credential, CredentialError, open_source
from wardgate.core.ports import StoreUnavailable


def test_provisioned_secret_holds_the_credential_given(aws_cloud):
    urls = aws_cloud.provision("cred-given", db_credential=Credential("orders_svc", "s3cret"))
    credential = open_secret_source(urls["db_secret"], "ignored-default").fetch()
    assert (credential.username, credential.password, credential.expires_at) == ("orders_svc", "s3cret", None)


def test_a_rotated_secret_is_seen_on_the_next_fetch(aws_urls, aws_cloud):
    source = SecretsManagerSource(aws_urls["db_secret"], "wardgate_svc")
    before = source.fetch()
    secret_id = aws_urls["db_secret"].split("//")[1].split("?")[0]
    aws_cloud.client("secretsmanager").put_secret_value(
        SecretId=secret_id, SecretString=json.dumps({"username": "wardgate_svc", "password": "rotated"}))
    after = source.fetch()
    assert after.password == "rotated" != before.password
    previous = SecretsManagerSource(aws_urls["db_secret"] + "&stage=AWSPREVIOUS", "wardgate_svc").fetch()
    assert previous.password == before.password


def test_plain_text_secret_is_the_password_of_the_configured_user(aws_cloud):
    aws_cloud.client("secretsmanager").create_secret(Name="plain/pw", SecretString="  just-a-password\n")
    credential = SecretsManagerSource("aws-sm://plain/pw?region=us-east-1", "report_reader").fetch()
    assert (credential.username, credential.password) == ("report_reader", "just-a-password")


def test_registered_scheme_resolves_through_the_core_broker(aws_urls):
    register_secret_schemes()
    assert isinstance(open_source(aws_urls["db_secret"], "wardgate_svc"), SecretsManagerSource)


def test_missing_secret_fails_as_a_credential_error_naming_the_url():
    source = SecretsManagerSource("aws-sm://absent/secret?region=us-east-1", "u")
    with pytest.raises(SecretUnavailable, match=r"secret source aws-sm://absent/secret\?region=us-east-1: "
                                                 r"ResourceNotFoundException") as failure:
        source.fetch()
    assert isinstance(failure.value, CredentialError) and isinstance(failure.value, StoreUnavailable)


def test_malformed_json_secret_is_refused_without_showing_it(aws_cloud):
    aws_cloud.client("secretsmanager").create_secret(Name="broken/json", SecretString='{"password": "hunter2"')
    with pytest.raises(CredentialError, match="does not parse") as failure:
        SecretsManagerSource("aws-sm://broken/json?region=us-east-1", "u").fetch()
    assert "hunter2" not in str(failure.value)


def test_rds_iam_token_presigns_connect_for_host_port_and_user():
    source = open_secret_source("rds-iam://orders.abc123.eu-west-1.rds.amazonaws.com:5432", "iam_reader")
    assert isinstance(source, RdsIamSource)
    issued = time.time()
    credential = source.fetch()
    assert credential.username == "iam_reader"
    assert issued + 15 * 60 - 120 < credential.expires_at < issued + 15 * 60  # before RDS refuses it

    token = urlsplit("https://" + credential.password)
    query = {name: values[0] for name, values in parse_qs(token.query).items()}
    assert (token.hostname, token.port) == ("orders.abc123.eu-west-1.rds.amazonaws.com", 5432)
    assert query["Action"] == "connect" and query["DBUser"] == "iam_reader"
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and query["X-Amz-Expires"] == "900"
    access_key, _date, region, service, _ = query["X-Amz-Credential"].split("/")
    assert (access_key, region, service) == ("test", "eu-west-1", "rds-db")  # the host's region
    assert len(query["X-Amz-Signature"]) == 64


def test_rds_iam_region_parameter_wins_and_tokens_differ_per_user():
    first = RdsIamSource("rds-iam://10.0.0.5:3306?region=ap-southeast-2", "a").fetch().password
    second = RdsIamSource("rds-iam://10.0.0.5:3306?region=ap-southeast-2", "b").fetch().password
    assert "%2Fap-southeast-2%2Frds-db%2F" in first and "DBUser=b" in second and first != second


def test_rds_iam_without_credentials_fails_as_a_credential_error(monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(CredentialError, match="rds-iam://db:5432: cannot sign an IAM token"):
        RdsIamSource("rds-iam://db:5432", "u").fetch()


@pytest.mark.parametrize(("url", "username", "message"), [
    ("aws-sm://", "u", "aws-sm://: missing secret name or ARN"),
    ("aws-sm://db?stage=", "u", "empty stage"),
    ("aws-sm://db?version=3", "u", "unknown parameter 'version'"),
    ("rds-iam://", "u", "missing database host"),
    ("rds-iam://db", "u", "missing port"),
    ("rds-iam://db:port", "u", "port is not a number"),
    ("rds-iam://db:5432/orders", "u", "unexpected path"),
    ("rds-iam://db:5432", "", "user name is required"),
])
def test_bad_secret_urls_name_what_is_wrong(url, username, message):
    with pytest.raises(ValueError, match=message):
        open_secret_source(url, username)
