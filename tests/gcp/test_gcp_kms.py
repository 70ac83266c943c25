"""CloudKmsSigner through the real Cloud KMS SDK client against ``FakeCloudKms`` (a gRPC fake of the
KeyManagementService wire API; Google ships no KMS emulator). The fake holds a real P-256 or
Ed25519 private key, so what is proven is the adapter's use of the API (digest, CRC32C integrity
fields, PEM public key) and that its signatures verify offline with wardgate's own verifier."""

from __future__ import annotations

import re
import time

import pytest

from wardgate.adapters.gcp import CloudKmsSigner
from wardgate.core.integrity import (ALGORITHM_ECDSA_P256, ALGORITHM_ED25519, build_digest, load_public_key,
                                     public_key_id, verify_signature)
from wardgate.core.ports import StoreUnavailable

SEGMENT = (b'{"session":"s1","seq":1,"time":"2026-01-01T00:00:00Z","type":"session.started"}\n'
           b'{"session":"s1","seq":2,"time":"2026-01-01T00:00:01Z","type":"session.ended"}\n')


def signed_digest(signer, tmp_path):
    segment = tmp_path / "20260101T000000Z-gw1-000001.jsonl"
    segment.write_bytes(SEGMENT)
    return build_digest(segment, SEGMENT, gateway="gw1", signer=signer, previous_name=None,
                        previous_sha256=None, signed_at="2026-01-01T00:00:02Z")


def test_a_digest_signed_by_the_kms_key_verifies_offline_and_a_tampered_one_does_not(gcp_urls, tmp_path):
    signer = CloudKmsSigner(gcp_urls["signer"])
    assert signer.algorithm == ALGORITHM_ECDSA_P256
    public_key = load_public_key(signer.public_key_pem())
    assert signer.key_id == public_key_id(public_key)

    record = signed_digest(signer, tmp_path)
    assert record["key_id"] == signer.key_id
    assert verify_signature(record, public_key)
    assert not verify_signature({**record, "events": record["events"] - 1}, public_key)
    assert not verify_signature({**record, "segment_sha256": "0" * 64}, public_key)


def test_a_second_key_does_not_vouch_for_the_first_keys_digest(gcp_cloud, gcp_urls, unique, tmp_path):
    record = signed_digest(CloudKmsSigner(gcp_urls["signer"]), tmp_path)
    other = CloudKmsSigner(gcp_cloud.create_signing_key(unique, "other"))
    assert other.key_id != record["key_id"]
    assert not verify_signature(record, load_public_key(other.public_key_pem()))


def test_an_ed25519_key_signs_the_message_itself(gcp_cloud, unique, tmp_path):
    signer = CloudKmsSigner(gcp_cloud.create_signing_key(unique, "ed", algorithm="EC_SIGN_ED25519"))
    assert signer.algorithm == ALGORITHM_ED25519
    record = signed_digest(signer, tmp_path)
    public_key = load_public_key(signer.public_key_pem())
    assert verify_signature(record, public_key)
    assert not verify_signature({**record, "gateway": "gw2"}, public_key)


def test_a_missing_key_version_fails_at_construction_naming_the_url(gcp_urls):
    url = gcp_urls["signer"].replace("cryptoKeyVersions/1", "cryptoKeyVersions/7") + "?timeout=3"
    with pytest.raises(StoreUnavailable, match=re.escape(f"signer {url}: GetPublicKey failed") + ".*not found"):
        CloudKmsSigner(url)


def test_an_unreachable_endpoint_fails_within_the_timeout(gcp_urls, dead_endpoint, monkeypatch):
    monkeypatch.setenv("WARDGATE_KMS_EMULATOR_HOST", dead_endpoint)
    url = gcp_urls["signer"] + "?timeout=2"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=re.escape(f"signer {url}:")):
        CloudKmsSigner(url)
    assert time.monotonic() - started < 6


@pytest.mark.parametrize("url, complaint", [
    ("gcpkms://", "expected projects/"),
    ("gcpkms://projects/p/locations/global/keyRings/r/cryptoKeys/k", "expected cryptoKeyVersions/"),
    ("gcpkms://projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/", "missing cryptoKeyVersions"),
    ("gcpkms://projects/p/locations/global/keyRings/r/keys/k/cryptoKeyVersions/1", "expected cryptoKeys/"),
    ("gcpkms://projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1/x", "trailing"),
])
def test_bad_urls_are_refused_with_the_wrong_part_named(url, complaint):
    with pytest.raises(ValueError, match=complaint):
        CloudKmsSigner(url)
