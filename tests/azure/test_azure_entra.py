"""EntraTokenSource: an Entra access token as the PostgreSQL password, with its expiry.

No Entra ID emulator exists; ``FakeEntraCredential`` is a fake of the azure-core ``TokenCredential``
protocol (``get_token(*scopes) -> AccessToken``), the object ``DefaultAzureCredential`` is in
production, injected through the source's ``credential`` argument.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from wardgate.adapters.azure import POSTGRES_SCOPE, EntraTokenSource
from wardgate.core.credentials import CredentialBroker, CredentialError


class FakeEntraCredential:
    """Issues numbered tokens that expire ``lifetime`` seconds after issue; records the scopes asked."""

    def __init__(self, lifetime: int = 3600, fail: bool = False):
        self.lifetime, self.fail = lifetime, fail
        self.requests: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs) -> AccessToken:
        self.requests.append(scopes)
        if self.fail:
            raise ClientAuthenticationError("ManagedIdentityCredential: no managed identity endpoint found")
        return AccessToken(f"entra-token-{len(self.requests)}", int(time.time()) + self.lifetime)


def test_password_is_a_token_for_the_postgres_scope_with_its_expiry():
    fake = FakeEntraCredential(lifetime=3600)
    source = EntraTokenSource(f"azure-ad://?scope={POSTGRES_SCOPE}", "gateway-identity", credential=fake)
    credential = source.fetch()
    assert fake.requests == [(POSTGRES_SCOPE,)]
    assert (credential.username, credential.password) == ("gateway-identity", "entra-token-1")
    assert abs(credential.expires_at - (time.time() + 3600)) < 5


def test_scope_defaults_to_azure_database_for_postgresql():
    fake = FakeEntraCredential()
    EntraTokenSource("azure-ad://", "gateway-identity", credential=fake).fetch()
    assert fake.requests == [("https://ossrdbms-aad.database.windows.net/.default",)]


def test_broker_fetches_a_new_token_before_the_old_one_expires():
    fake = FakeEntraCredential(lifetime=120)
    source = EntraTokenSource("azure-ad://", "gateway-identity", credential=fake)
    now = [time.time()]
    broker = CredentialBroker(source, "gateway-identity", expiry_margin=60, wall_clock=lambda: now[0])

    async def scenario() -> list[str]:
        first = (await broker.get()).password
        cached = (await broker.get()).password
        now[0] += 70  # within the margin of the token's expiry
        renewed = (await broker.get()).password
        return [first, cached, renewed]

    assert asyncio.run(scenario()) == ["entra-token-1", "entra-token-1", "entra-token-2"]


def test_no_identity_is_a_credential_error_naming_the_scope():
    source = EntraTokenSource("azure-ad://", "gateway-identity", credential=FakeEntraCredential(fail=True))
    with pytest.raises(CredentialError, match="ossrdbms-aad.*no managed identity"):
        source.fetch()


@pytest.mark.parametrize("url, message", [
    ("azure-ad://tenant/x", "takes no host or path"),
    ("azure-ad://?scope=ossrdbms", "must look like https://RESOURCE/.default"),
    ("azure-ad://?scope=https://x/.default&tenant=t", "unknown parameter"),
])
def test_bad_urls_are_refused(url, message):
    with pytest.raises(ValueError, match=message):
        EntraTokenSource(url, "u", credential=FakeEntraCredential())
