"""Secret sources: SecretManagerSource through the real Secret Manager SDK client against
``FakeSecretManager`` (a gRPC fake of the SecretManagerService wire API; Google ships no emulator),
and CloudSqlIamSource through real google-auth credentials whose token refresh goes over HTTP to
``FakeOAuthTokenEndpoint`` below (a fake of Google's OAuth2 token endpoint, on loopback)."""

from __future__ import annotations

import datetime
import json
import re
import time
import urllib.parse
from typing import Any

import google.auth
import pytest
from google.oauth2.credentials import Credentials

from wardgate.adapters.gcp import CLOUDSQL_LOGIN_SCOPE, CloudSqlIamSource, SecretManagerSource
from wardgate.core.credentials import CredentialError
from wardgate_testkit import LoopbackJson


def test_the_current_version_is_read_and_a_new_version_is_picked_up(gcp_cloud, unique):
    url = gcp_cloud.create_secret(unique, json.dumps({"username": "svc", "password": "first"}))
    source = SecretManagerSource(url, "fallback-user")
    first = source.fetch()
    assert (first.username, first.password, first.expires_at) == ("svc", "first", None)

    gcp_cloud.add_secret_version(unique, "second-plain-password")  # a rotation
    rotated = source.fetch()
    assert (rotated.username, rotated.password) == ("fallback-user", "second-plain-password")
    assert SecretManagerSource(url + "/versions/1", "u").fetch().password == "first"  # a pinned version


def test_a_disabled_version_is_refused_with_the_reason(gcp_cloud, unique):
    url = gcp_cloud.create_secret(unique, "pw1")
    version = gcp_cloud.add_secret_version(unique, "pw2")
    gcp_cloud.secret_manager_client().disable_secret_version(name=version)
    with pytest.raises(CredentialError, match=re.escape(url) + r".*not usable.*DISABLED"):
        SecretManagerSource(url, "u").fetch()  # "latest" is the newest version, even when disabled
    assert SecretManagerSource(url + "/versions/1", "u").fetch().password == "pw1"


def test_a_missing_secret_or_malformed_payload_is_named(gcp_cloud, unique):
    missing = f"gcp-sm://projects/{gcp_cloud.project}/secrets/{unique}-absent"
    with pytest.raises(CredentialError, match=re.escape(missing) + ": no such secret"):
        SecretManagerSource(missing, "u").fetch()
    url = gcp_cloud.create_secret(unique, '{"user": "no password field"}')
    with pytest.raises(CredentialError, match="needs a 'password' field"):
        SecretManagerSource(url, "u").fetch()


def test_an_unreachable_secret_manager_fails_within_the_timeout(gcp_cloud, dead_endpoint, monkeypatch):
    monkeypatch.setenv("WARDGATE_SECRETMANAGER_EMULATOR_HOST", dead_endpoint)
    url = f"gcp-sm://projects/{gcp_cloud.project}/secrets/db?timeout=2"
    started = time.monotonic()
    with pytest.raises(CredentialError, match=re.escape(url) + ": Secret Manager unavailable"):
        SecretManagerSource(url, "u").fetch()
    assert time.monotonic() - started < 6


@pytest.mark.parametrize("url, complaint", [
    ("gcp-sm://", "expected projects/"),
    ("gcp-sm://projects/p", "expected secrets/"),
    ("gcp-sm://projects/p/secrets/", "missing secrets name"),
    ("gcp-sm://projects/p/secrets/s/version/1", "expected versions/"),
    ("gcp-sm://projects/p/secrets/s?timeout=0", "timeout"),
])
def test_bad_secret_urls_are_refused(url, complaint):
    with pytest.raises(ValueError, match=complaint):
        SecretManagerSource(url, "u")


# ------------------------------------------------------------------------------ Cloud SQL IAM auth

class FakeOAuthTokenEndpoint:
    """A fake of Google's OAuth2 token endpoint (``POST /token``, refresh-token grant), on loopback.

    Each refresh hands out a new access token valid for an hour and records the form it received."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self._http = LoopbackJson(self._respond)
        self.token_uri = f"{self._http.url}/token"

    def _respond(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if method != "POST":
            return 405, None
        form = dict(urllib.parse.parse_qsl(body.decode()))
        self.requests.append(form)
        return 200, {"access_token": f"ya29.fake-{len(self.requests)}", "expires_in": 3600,
                     "token_type": "Bearer", "scope": form.get("scope", "")}

    def close(self) -> None:
        self._http.close()


@pytest.fixture
def token_endpoint():
    endpoint = FakeOAuthTokenEndpoint()
    yield endpoint
    endpoint.close()


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)  # google-auth's naive UTC


INSTANCE = "cloudsql-iam://acme-prod:europe-west1:orders"


def test_a_valid_token_is_the_password_and_its_expiry_is_reported():
    expiry = _utcnow() + datetime.timedelta(minutes=30)
    source = CloudSqlIamSource(INSTANCE, "gateway@acme-prod.iam", credentials=Credentials(token="tok-1", expiry=expiry))
    credential = source.fetch()
    assert (credential.username, credential.password) == ("gateway@acme-prod.iam", "tok-1")
    assert credential.expires_at == pytest.approx(expiry.replace(tzinfo=datetime.timezone.utc).timestamp())


def test_an_expired_token_is_refreshed(token_endpoint):
    credentials = Credentials(token="old", expiry=_utcnow() - datetime.timedelta(minutes=1), refresh_token="r",
                              token_uri=token_endpoint.token_uri, client_id="c", client_secret="s")
    credential = CloudSqlIamSource(INSTANCE, "gateway@acme-prod.iam", credentials=credentials).fetch()
    assert credential.password == "ya29.fake-1"
    assert credential.expires_at == pytest.approx(time.time() + 3600, abs=30)
    assert token_endpoint.requests[0]["grant_type"] == "refresh_token"


def test_ambient_credentials_are_asked_for_the_cloud_sql_login_scope(token_endpoint, monkeypatch):
    """ADC discovery itself cannot be pointed at a local token endpoint (an authorized-user file's
    token_uri is always overridden with Google's), so ``google.auth.default`` is replaced by a fake
    that records the scopes it is asked for and returns real refreshable credentials with them."""
    asked: list[list[str]] = []

    def fake_default(scopes=None, **_kwargs):
        asked.append(list(scopes or []))
        return Credentials(token=None, refresh_token="r", token_uri=token_endpoint.token_uri, client_id="c",
                           client_secret="s", scopes=scopes), "acme-prod"

    monkeypatch.setattr(google.auth, "default", fake_default)
    source = CloudSqlIamSource(INSTANCE, "dev@example.com")
    assert source.fetch().password == "ya29.fake-1"
    assert asked == [[CLOUDSQL_LOGIN_SCOPE]]
    assert token_endpoint.requests[0]["scope"].split() == [CLOUDSQL_LOGIN_SCOPE]  # what the token is for
    assert source.fetch().password == "ya29.fake-1"  # still valid: not refreshed again
    assert len(token_endpoint.requests) == 1


def test_a_token_that_cannot_be_refreshed_is_a_credential_error_naming_the_instance(dead_endpoint):
    stale = Credentials(token="old", expiry=_utcnow() - datetime.timedelta(minutes=1))
    with pytest.raises(CredentialError, match=re.escape(INSTANCE) + ": cannot obtain an IAM access token"):
        CloudSqlIamSource(INSTANCE, "u@p.iam", credentials=stale).fetch()

    unreachable = Credentials(token="old", expiry=_utcnow() - datetime.timedelta(minutes=1), refresh_token="r",
                              token_uri=f"http://{dead_endpoint}/token", client_id="c", client_secret="s")
    started = time.monotonic()
    with pytest.raises(CredentialError, match=re.escape(INSTANCE)):
        CloudSqlIamSource(INSTANCE, "u@p.iam", credentials=unreachable, timeout=2).fetch()
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("url, username, complaint", [
    ("cloudsql-iam://acme-prod:orders", "u", "PROJECT:REGION:INSTANCE"),
    ("cloudsql-iam://acme-prod::orders", "u", "PROJECT:REGION:INSTANCE"),
    ("cloudsql-iam://a:b:c/extra", "u", "unexpected path"),
    ("cloudsql-iam://a:b:c", "", "user name is required"),
    ("cloudsql-iam://a:b:c", "gw@acme.iam.gserviceaccount.com", "'gw@acme.iam'"),
])
def test_bad_cloud_sql_urls_and_users_are_refused(url, username, complaint):
    with pytest.raises(ValueError, match=complaint):
        CloudSqlIamSource(url, username)
