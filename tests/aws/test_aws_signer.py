"""KmsSigner against moto_server's KMS (real ECDSA P-256 keys, real signatures): audit digests signed
by the cloud key verify offline with the public key alone, exactly as ``wardgate audit verify`` does."""

from __future__ import annotations

import base64
import copy
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from wardgate.adapters import open_signer
from wardgate.adapters.aws import KMS_RAW_MESSAGE_LIMIT, KmsSigner
from wardgate.core.integrity import (ALGORITHM_ECDSA_P256, Signer, build_digest, canonical, load_public_key,
                                     public_key_id, verify_signature)
from wardgate.core.ports import StoreUnavailable


def _segment(sessions: int) -> bytes:
    lines = [f'{{"session":"s{n}","seq":1,"type":"session.ended","time":"2025-01-01T00:00:0{n % 10}Z"}}\n'
             for n in range(sessions)]
    return "".join(lines).encode()


def _digest(signer: Signer, data: bytes) -> dict:
    return build_digest(Path("20250101T000000Z-gw1-000001.jsonl"), data, gateway="gw1", signer=signer,
                        previous_name=None, previous_sha256=None, signed_at="2025-01-01T00:00:10Z")


def test_digest_signed_by_kms_verifies_offline_and_tampering_fails(aws_urls):
    signer = open_signer(aws_urls["signer"])
    assert isinstance(signer, KmsSigner) and isinstance(signer, Signer)
    assert signer.algorithm == ALGORITHM_ECDSA_P256

    record = _digest(signer, _segment(3))
    public_key = load_public_key(signer.public_key_pem())  # all a verifier holds: the exported PEM
    assert public_key_id(public_key) == signer.key_id == record["key_id"]
    assert verify_signature(record, public_key)

    tampered = copy.deepcopy(record)
    tampered["sessions"]["s1"]["last_seq"] = 2  # an event "deleted" from the segment
    assert not verify_signature(tampered, public_key)
    forged_hash = dict(record, segment_sha256=hashlib.sha256(b"other segment").hexdigest())
    assert not verify_signature(forged_hash, public_key)


def test_large_digest_over_the_kms_raw_limit_still_verifies(aws_urls):
    """Digests over 4096 bytes are signed as their SHA-256 (MessageType DIGEST) by real KMS.
    moto ignores MessageType, so here the adapter's fallback (RAW, after the DIGEST signature
    failed local verification) is what signs; real KMS's DIGEST path is not exercised by this test."""
    signer = KmsSigner(aws_urls["signer"])
    record = _digest(signer, _segment(80))
    assert len(canonical(record)) > KMS_RAW_MESSAGE_LIMIT
    assert verify_signature(record, load_public_key(signer.public_key_pem()))


def test_signer_by_key_id_arn_and_alias_agree(aws_urls, aws_cloud):
    alias_signer = KmsSigner(aws_urls["signer"])
    alias = aws_urls["signer"].split("//")[1].split("?")[0]
    metadata = aws_cloud.client("kms").describe_key(KeyId=alias)["KeyMetadata"]
    by_id = KmsSigner(f"awskms://{metadata['KeyId']}?region=us-east-1")
    by_arn = KmsSigner(f"awskms://{metadata['Arn']}")
    assert alias_signer.key_id == by_id.key_id == by_arn.key_id
    assert alias_signer.public_key_pem() == by_arn.public_key_pem()


def test_signature_is_der_ecdsa_over_sha256_of_the_data(aws_urls):
    signer = KmsSigner(aws_urls["signer"])
    signature = signer.sign(b"canonical digest bytes")
    decode_dss_signature(signature)  # DER (r, s), or this raises
    load_public_key(signer.public_key_pem()).verify(signature, b"canonical digest bytes", ec.ECDSA(hashes.SHA256()))
    record = {"algorithm": ALGORITHM_ECDSA_P256, "signature": base64.b64encode(signature).decode()}
    assert not verify_signature(record, load_public_key(signer.public_key_pem()))  # other bytes: refused


def test_keys_that_are_not_p256_signing_keys_are_refused(aws_cloud):
    kms = aws_cloud.client("kms")
    rsa = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    with pytest.raises(ValueError, match="key is RSA_2048 SIGN_VERIFY; wardgate needs an ECC_NIST_P256"):
        KmsSigner(f"awskms://{rsa}?region=us-east-1")
    p384 = kms.create_key(KeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    with pytest.raises(ValueError, match="ECC_NIST_P384"):
        KmsSigner(f"awskms://{p384}?region=us-east-1")


def test_unknown_key_is_store_unavailable_naming_the_url():
    with pytest.raises(StoreUnavailable, match=r"signer awskms://alias/nope\?region=us-east-1: NotFoundException"):
        KmsSigner("awskms://alias/nope?region=us-east-1")


@pytest.mark.parametrize(("url", "message"), [
    ("awskms://", "awskms://: missing key id, alias or ARN"),
    ("awskms://arn:aws:kms:eu-west-1:123456789012:key/k?region=us-east-1",
     "region=us-east-1 contradicts the ARN's region eu-west-1"),
    ("awskms://arn:aws:kms", "malformed ARN"),
    ("awskms://alias/x?algorithm=ed25519", "unknown parameter 'algorithm'"),
])
def test_bad_key_urls_name_what_is_wrong(url, message):
    with pytest.raises(ValueError, match=message):
        KmsSigner(url)
