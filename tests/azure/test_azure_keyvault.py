"""KeyVaultSigner and KeyVaultSecretSource through the real Key Vault SDK clients, against
FakeKeyVault (no Key Vault emulator exists): HTTPS, the SDK's challenge-auth flow, keys, secrets."""

from __future__ import annotations

import base64
import copy
import json

import pytest

from wardgate.adapters import open_secret_source, open_signer
from wardgate.adapters.azure import KeyVaultSecretSource, KeyVaultSigner
from wardgate.core.credentials import CredentialError
from wardgate.core.integrity import (ALGORITHM_ECDSA_P256, Signer, canonical, load_public_key, public_key_id,
                                     verify_signature)
from wardgate.core.ports import StoreUnavailable

pytestmark = pytest.mark.usefixtures("azure_env")


def _signed_digest(signer: Signer) -> dict:
    record = {"v": 1, "segment": "20250101T000000Z-gw-1.jsonl", "segment_sha256": "ab" * 32, "events": 42,
              "previous_digest": None, "key_id": signer.key_id, "algorithm": signer.algorithm}
    record["signature"] = base64.b64encode(signer.sign(canonical(record))).decode()
    return record


def test_digest_signed_in_the_vault_verifies_offline_and_tampering_fails(azure_urls):
    signer = open_signer(azure_urls["signer"])
    assert isinstance(signer, Signer) and signer.algorithm == ALGORITHM_ECDSA_P256
    public_key = load_public_key(signer.public_key_pem())
    assert signer.key_id == public_key_id(public_key)

    record = _signed_digest(signer)
    assert verify_signature(record, public_key)
    tampered = copy.deepcopy(record)
    tampered["events"] = 41
    assert not verify_signature(tampered, public_key)


def test_signer_pins_the_key_version_it_opened(azure_cloud, unique):
    key_name = f"k-{unique}"
    first = azure_cloud.key_client().create_ec_key(key_name, curve="P-256")
    old_signer = KeyVaultSigner(f"azurekv-key://wardgate-local/{key_name}")
    azure_cloud.key_client().create_ec_key(key_name, curve="P-256")  # rotation: a new version
    new_signer = KeyVaultSigner(f"azurekv-key://wardgate-local/{key_name}")
    pinned = KeyVaultSigner(f"azurekv-key://wardgate-local/{key_name}/{first.properties.version}")

    assert new_signer.key_id != old_signer.key_id == pinned.key_id
    # Each signer's signatures verify with the public key it exports (never a mismatched version).
    for signer in (old_signer, new_signer, pinned):
        assert verify_signature(_signed_digest(signer), load_public_key(signer.public_key_pem()))
    assert not verify_signature(_signed_digest(new_signer), load_public_key(old_signer.public_key_pem()))


def test_missing_key_and_refused_token_are_clear_errors(azure_urls, monkeypatch):
    with pytest.raises(StoreUnavailable, match="azurekv-key://wardgate-local/no-such-key.*KeyNotFound"):
        KeyVaultSigner("azurekv-key://wardgate-local/no-such-key")
    monkeypatch.setenv("WARDGATE_AZURE_KEYVAULT_TOKEN", "a-token-the-vault-does-not-accept")
    with pytest.raises(StoreUnavailable, match="cannot read the key"):
        open_signer(azure_urls["signer"])


def test_secret_source_returns_the_current_version(azure_cloud, unique):
    name = f"s-{unique}"
    secrets = azure_cloud.secret_client()
    secrets.set_secret(name, json.dumps({"username": "app", "password": "first-password"}))
    source = open_secret_source(f"azure-kv://wardgate-local/{name}", "default-user")
    assert isinstance(source, KeyVaultSecretSource)
    first = source.fetch()
    assert (first.username, first.password) == ("app", "first-password")

    secrets.set_secret(name, "rotated-plain-password")  # a new version, plain text this time
    second = source.fetch()
    assert (second.username, second.password) == ("default-user", "rotated-plain-password")


def test_provisioned_db_secret_is_a_usable_credential(azure_urls):
    credential = open_secret_source(azure_urls["db_secret"], "ignored").fetch()
    assert credential.username == "wardgate_svc" and len(credential.password) >= 16


def test_missing_secret_names_the_source_and_not_the_value(azure_urls):
    with pytest.raises(CredentialError, match="azure-kv://wardgate-local/no-such-secret.*SecretNotFound"):
        KeyVaultSecretSource("azure-kv://wardgate-local/no-such-secret", "u").fetch()
