"""Value detectors and masking strategies (wardgate.core.masking): true and false positives per
detector, overlaps, unicode, strategies, the report, and inputs that must not make the scan slow."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import string
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from wardgate.core.masking import (
    COLUMN,
    DETECTOR_NAMES,
    DETECTORS,
    PRIORITY,
    Finding,
    MaskReport,
    MaskStrategy,
    apply,
    mask_findings,
    mask_text,
    mask_value,
    scan,
)

KEY = b"k" * 32


def found(text: str, detectors: list[str] | None = None) -> list[tuple[str, str]]:
    """(detector, matched text) of every finding."""
    return [(f.detector, text[f.start:f.end]) for f in scan(text, detectors)]


def only(detector: str, text: str) -> list[str]:
    """What ``detector`` alone finds in ``text``."""
    return [text[f.start:f.end] for f in scan(text, [detector])]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(header: dict, payload: dict, key: bytes = b"secret") -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def test_detector_catalogue() -> None:
    assert PRIORITY[0] == "pem_private_key" and PRIORITY[-1] == "high_entropy_secret"
    assert PRIORITY.index("jwt") < PRIORITY.index("github_token") < PRIORITY.index("bearer_token")
    assert set(PRIORITY) == DETECTOR_NAMES == {d.name for d in DETECTORS}
    assert len(DETECTOR_NAMES) == 13
    assert all(d.description for d in DETECTORS)


def test_finding_is_frozen_and_slotted() -> None:
    f = Finding("email", 1, 5)
    with pytest.raises(AttributeError):
        f.start = 2  # type: ignore[misc]
    assert not hasattr(f, "__dict__")


def test_unknown_detector_is_an_error() -> None:
    with pytest.raises(ValueError, match="no_such"):
        scan("jane@example.com", ["email", "no_such"])


def test_empty_and_short_texts() -> None:
    assert scan("") == []
    assert scan("a@b") == []
    assert scan("12345") == []
    assert scan("jane@example.com", []) == []


# --------------------------------------------------------------------------------------------------
# email


@pytest.mark.parametrize("text, expected", [
    ("jane.doe@example.com", "jane.doe@example.com"),
    ("mail first.last+tag@sub.example.co.uk now", "first.last+tag@sub.example.co.uk"),
    ("<JOHN_SMITH99@Example.ORG>", "JOHN_SMITH99@Example.ORG"),
    ("josé.álvarez@correo.es", "josé.álvarez@correo.es"),
    ("contact: jane@exämple.de.", "jane@exämple.de"),
    ("user@xn--bcher-kva.example", "user@xn--bcher-kva.example"),
    ("a@b.co", "a@b.co"),
])
def test_email_true_positives(text: str, expected: str) -> None:
    assert only("email", text) == [expected]


@pytest.mark.parametrize("text", [
    "user@localhost",
    "@handle mentioned",
    "foo@bar.123",
    "logo@2x.png and icon@3x.webp",
    ".jane@example.com"[0:0] + "jane..doe@example.com",
    "no at sign here example.com",
    "name@domain",
])
def test_email_false_positives(text: str) -> None:
    assert only("email", text) == []


# --------------------------------------------------------------------------------------------------
# phone


@pytest.mark.parametrize("text, expected", [
    ("call +1 415 555 2671 now", "+1 415 555 2671"),
    ("+14155552671", "+14155552671"),
    ("tel:+44 20 7946 0958", "+44 20 7946 0958"),
    ("+33 1 23 45 67 89", "+33 1 23 45 67 89"),
    ("+1 (415) 555-2671", "+1 (415) 555-2671"),
    ("+49-30-1234567", "+49-30-1234567"),
    ("(415) 555-2671", "(415) 555-2671"),
    ("415-555-2671", "415-555-2671"),
    ("415.555.2671", "415.555.2671"),
    ("1-800-555-0199", "1-800-555-0199"),
    ("020 7946 0958", "020 7946 0958"),
    ("07700 900123", "07700 900123"),
    ("030 12345678", "030 12345678"),
    ("01 23 45 67 89", "01 23 45 67 89"),
    ("030/1234567", "030/1234567"),
    ("(02) 9876 5432", "(02) 9876 5432"),
])
def test_phone_true_positives(text: str, expected: str) -> None:
    assert only("phone", text) == [expected]


@pytest.mark.parametrize("text", [
    "4155552671",             # a plain integer: an id or an amount as much as a phone
    "12345678901234",
    "2024-01-15",             # ISO date
    "15.01.2024", "01/15/2024", "2024-01-15T10:30:00Z", "12:30:45",
    "192.168.1.10", "10.0.0.254", "203.213.100.200",  # IPv4
    "v1.2.3", "2.31.0", "10.15.7",                      # versions
    "ORD-415-555-2671",       # order number glued to a prefix
    "order 123-456-7890",     # NANP area codes never start with 0 or 1
    "PO 1234-5678-9012",      # 4-4-4 grouping
    "978-3-16-148410-0",      # ISBN
    "3.14159265358979", "1,234,567.89", "+1234567.89",
    "415-555-2671-99",        # part of a longer number
    "555-2671",               # too short (7 digits)
])
def test_phone_false_positives(text: str) -> None:
    assert only("phone", text) == []


# --------------------------------------------------------------------------------------------------
# credit_card


@pytest.mark.parametrize("text, expected", [
    ("card 4111 1111 1111 1111 exp 12/30", "4111 1111 1111 1111"),
    ("4111-1111-1111-1111", "4111-1111-1111-1111"),
    ("5555555555554444", "5555555555554444"),              # Mastercard
    ("2223003122003222", "2223003122003222"),              # Mastercard 2-series
    ("amex 3782 822463 10005", "3782 822463 10005"),        # Amex 4-6-5
    ("378282246310005", "378282246310005"),
    ("6011111111111117", "6011111111111117"),              # Discover
    ("3530111333300000", "3530111333300000"),              # JCB
    ("30569309025904", "30569309025904"),                  # Diners, 14 digits
    ("4222222222222", "4222222222222"),                    # Visa, 13 digits
    ("6200000000000005", "6200000000000005"),              # UnionPay
    ("pan=4000056655665556;", "4000056655665556"),
])
def test_credit_card_true_positives(text: str, expected: str) -> None:
    assert only("credit_card", text) == [expected]


@pytest.mark.parametrize("text", [
    "4111 1111 1111 1112",        # Luhn fails
    "4111111111111112",
    "5555555555554445",
    "1234567812345670",           # Luhn-valid, but no network starts with 1
    "9111111111111111",
    "4111 1111-1111 1111",        # mixed separators
    "41 11 11 11 11 11 11 11",    # not a card grouping
    "37828224631000",             # Amex IIN, wrong length
    "order 4111111111111111234",  # 19 digits but Visa 19 needs Luhn: it fails
    "1.4111111111111111",         # part of a decimal
    "4111111111111111-2",
    "ID-4111111111111111",
])
def test_credit_card_false_positives(text: str) -> None:
    assert only("credit_card", text) == []


# --------------------------------------------------------------------------------------------------
# iban


@pytest.mark.parametrize("text, expected", [
    ("IBAN GB82 WEST 1234 5698 7654 32.", "GB82 WEST 1234 5698 7654 32"),
    ("GB82WEST12345698765432", "GB82WEST12345698765432"),
    ("DE89370400440532013000", "DE89370400440532013000"),
    ("DE89 3704 0044 0532 0130 00", "DE89 3704 0044 0532 0130 00"),
    ("FR14 2004 1010 0505 0001 3M02 606", "FR14 2004 1010 0505 0001 3M02 606"),
    ("NL91ABNA0417164300", "NL91ABNA0417164300"),
    ("CH9300762011623852957", "CH9300762011623852957"),
    ("NO9386011117947", "NO9386011117947"),
    ("GB82 WEST 1234 5698 7654 32 1234", "GB82 WEST 1234 5698 7654 32"),  # runs on into a number
])
def test_iban_true_positives(text: str, expected: str) -> None:
    assert only("iban", text) == [expected]


@pytest.mark.parametrize("text", [
    "GB83 WEST 1234 5698 7654 32",  # wrong check digits
    "DE89370400440532013001",
    "DE88370400440532013000",
    "XX89370400440532013000",       # no such country
    "DE8937040044053201300",        # one character short for DE
    "gb82west12345698765432",       # lowercase is not accepted
    "XGB82WEST12345698765432",
])
def test_iban_false_positives(text: str) -> None:
    assert only("iban", text) == []


# --------------------------------------------------------------------------------------------------
# us_ssn


@pytest.mark.parametrize("text, expected", [
    ("ssn 123-45-6789", "123-45-6789"),
    ("078-05-1120", "078-05-1120"),
    ("899-99-9999", "899-99-9999"),
])
def test_ssn_true_positives(text: str, expected: str) -> None:
    assert only("us_ssn", text) == [expected]


@pytest.mark.parametrize("text", [
    "000-12-3456", "666-12-3456", "900-12-3456", "987-65-4321",  # invalid areas
    "123-00-4567",                                                 # group 00
    "123-45-0000",                                                 # serial 0000
    "123-45-67890", "1123-45-6789", "A123-45-6789", "123-45-6789-1",
    "123456789", "123 45 6789", "2024-01-15",
])
def test_ssn_false_positives(text: str) -> None:
    assert only("us_ssn", text) == []


# --------------------------------------------------------------------------------------------------
# AWS


@pytest.mark.parametrize("text, expected", [
    ("AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("key id: ASIAY34FZKBOKMUTVV7A,", "ASIAY34FZKBOKMUTVV7A"),
    ("AROA1234567890ABCDEF", "AROA1234567890ABCDEF"),
])
def test_aws_access_key_id_true_positives(text: str, expected: str) -> None:
    assert only("aws_access_key_id", text) == [expected]


@pytest.mark.parametrize("text", [
    "AKIAIOSFODNN7EXAMPL",    # 19
    "AKIAIOSFODNN7EXAMPLE1",  # 21
    "XAKIAIOSFODNN7EXAMPLE",
    "akiaiosfodnn7example",
    "AKIAiosfodnn7example",
    "ABCDIOSFODNN7EXAMPLE",   # not an AWS prefix
])
def test_aws_access_key_id_false_positives(text: str) -> None:
    assert only("aws_access_key_id", text) == []


AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize("text", [
    f"aws_secret_access_key = {AWS_SECRET}",
    f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}",
    f'{{"AccessKeyId": "x", "SecretAccessKey": "{AWS_SECRET}"}}',
    f"secret_key: '{AWS_SECRET}'",
    f"mySecretAccessKey={AWS_SECRET}",
    f"AKIAIOSFODNN7EXAMPLE,{AWS_SECRET}",                       # next to an access key id
    f"Credentials for the aws account:\n  {AWS_SECRET}\n",       # AWS context
    f"{AWS_SECRET} (from Amazon IAM)",
])
def test_aws_secret_true_positives(text: str) -> None:
    assert only("aws_secret_access_key", text) == [AWS_SECRET]


@pytest.mark.parametrize("text", [
    AWS_SECRET,                                                      # no context
    f"token={AWS_SECRET}",                                           # key is not a secret key
    f"the laws of {AWS_SECRET}",                                      # "aws" inside a word
    "aws commit da39a3ee5e6b4b0d3255bfef95601890afd80709",           # SHA-1 hex, AWS context
    "aws_secret_access_key = da39a3ee5e6b4b0d3255bfef95601890afd8070",  # 39 characters
    f"aws {AWS_SECRET}X",                                            # 41 characters
    "aws " + "A" * 40,                                               # no lower case, no digit
])
def test_aws_secret_false_positives(text: str) -> None:
    assert only("aws_secret_access_key", text) == []


# --------------------------------------------------------------------------------------------------
# GitHub / GitLab

GH_BODY = "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"  # 36


@pytest.mark.parametrize("prefix", ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"])
def test_github_classic_tokens(prefix: str) -> None:
    token = prefix + GH_BODY
    assert only("github_token", f"GITHUB_TOKEN={token}\n") == [token]


def test_github_fine_grained_token() -> None:
    token = "github_pat_11ABCDEFG0123456789abcde_" + "x9Y8z7W6v5U4t3S2r1Q0p9O8n7M6l5K4j3I2h1G0f9E8d7C6b5A4z3Y2x1W0v"
    assert only("github_token", f"token: {token}") == [token]


@pytest.mark.parametrize("text", [
    "ghp_short",
    "ghx_" + GH_BODY,
    "xghp_" + GH_BODY,
    "ghp_" + GH_BODY[:35],
    "ghp-" + GH_BODY,
    "github_pat_tooshort",
])
def test_github_false_positives(text: str) -> None:
    assert only("github_token", text) == []


@pytest.mark.parametrize("token", [
    "glpat-xxxxxxxxxxxxxxxxxxxx",
    "glpat-Ab3dE_f6gH-9jK1mN2pQ",
    "glrt-t1_Ab3dEf6gH9jK1mN2pQrS",
    "gldt-Ab3dEf6gH9jK1mN2pQrS",
    "glptt-0123456789abcdef0123456789abcdef01234567",
    "glpat-Ab3dEf6gH9jK1mN2pQrStU.01.0w1c3e7sn",
    "GR1348941Ab3dEf6gH9jK1mN2pQrS",
])
def test_gitlab_true_positives(token: str) -> None:
    assert only("gitlab_token", f"PRIVATE-TOKEN: {token}") == [token]


@pytest.mark.parametrize("text", ["glpat-short", "glpat", "xglpat-xxxxxxxxxxxxxxxxxxxx", "glxyz-xxxxxxxxxxxxxxxxxxxx"])
def test_gitlab_false_positives(text: str) -> None:
    assert only("gitlab_token", text) == []


# --------------------------------------------------------------------------------------------------
# JWT


def test_jwt_true_positives() -> None:
    token = make_jwt({"alg": "HS256", "typ": "JWT"}, {"sub": "1234567890", "name": "Jane", "iat": 1516239022})
    assert only("jwt", token) == [token]
    assert only("jwt", f"id_token={token}&state=x") == [token]
    unsecured = b64url(b'{"alg":"none"}') + "." + b64url(b'{"sub":"x"}') + "."
    assert only("jwt", f"{unsecured} ") == [unsecured]


def test_jwt_signed_by_pyjwt() -> None:
    jwt = pytest.importorskip("jwt")
    key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode({"sub": "ci", "aud": "wardgate"}, key, algorithm="ES256", headers={"kid": "k1"})
    assert found(f"Authorization: Bearer {token}") == [("jwt", token)]


@pytest.mark.parametrize("text", [
    b64url(b'{"typ":"JWT"}') + "." + b64url(b'{"sub":"x"}') + ".c2ln",    # header without alg
    b64url(b"[1,2,3]") + "." + b64url(b"{}") + ".c2ln",                    # header not an object
    "eyJhbGciOiJIUzI1NiJ9",                                                 # one segment
    "eyJ!!!!.eyJ.x",
    "eyJub3QganNvbg.eyJ4IjoxfQ.c2ln",                                       # header not JSON
    "www.example.com",
])
def test_jwt_false_positives(text: str) -> None:
    assert only("jwt", text) == []


# --------------------------------------------------------------------------------------------------
# PEM


def _pem_keys() -> dict[str, str]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    pem = serialization.Encoding.PEM
    return {
        "pkcs8": rsa_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
        "rsa": rsa_key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption()).decode(),
        "ec": ec_key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption()).decode(),
        "encrypted": rsa_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(b"pw")).decode(),
        "openssh": ed_key.private_bytes(pem, serialization.PrivateFormat.OpenSSH,
                                        serialization.NoEncryption()).decode(),
        "public": rsa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
    }


@pytest.fixture(scope="module")
def pem_keys() -> dict[str, str]:
    return _pem_keys()


@pytest.mark.parametrize("kind", ["pkcs8", "rsa", "ec", "encrypted", "openssh"])
def test_pem_private_key_whole_block(pem_keys: dict[str, str], kind: str) -> None:
    block = pem_keys[kind].strip()
    text = f"config = '''\n{block}\n''' # end"
    assert found(text) == [("pem_private_key", block)]


def test_pem_truncated_block_is_masked_to_its_body(pem_keys: dict[str, str]) -> None:
    truncated = pem_keys["pkcs8"][:300]  # a value cut off by a column width
    findings = scan(truncated)
    assert [f.detector for f in findings] == ["pem_private_key"]
    assert findings[0].start == 0 and findings[0].end == len(truncated.rstrip())


def test_pem_two_blocks(pem_keys: dict[str, str]) -> None:
    a, b = pem_keys["pkcs8"].strip(), pem_keys["ec"].strip()
    assert found(f"{a}\n{b}\n") == [("pem_private_key", a), ("pem_private_key", b)]


def test_public_pem_blocks_are_not_findings(pem_keys: dict[str, str]) -> None:
    # Public keys and certificates are public; their base64 lines are not high-entropy secrets either.
    assert scan(pem_keys["public"]) == []
    assert scan(f"-----BEGIN CERTIFICATE-----\n{base64.b64encode(bytes(range(200))).decode()}\n"
                "-----END CERTIFICATE-----") == []
    assert only("pem_private_key", "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----") == []


# --------------------------------------------------------------------------------------------------
# Bearer


@pytest.mark.parametrize("text, expected", [
    ("Authorization: Bearer abcDEF123456ghi", "abcDEF123456ghi"),
    ("authorization: bearer 0123456789abcdef0123", "0123456789abcdef0123"),
    ("BEARER Zm9vYmFyOmJhejEyMw==", "Zm9vYmFyOmJhejEyMw=="),
    ("curl -H 'Authorization: Bearer sk-live_51H8xY2eZvKYlo2C.x9'", "sk-live_51H8xY2eZvKYlo2C.x9"),
    ("Bearer mF_9.B5f-4.1JqM.", "mF_9.B5f-4.1JqM"),  # RFC 6750's example; the final dot ends the sentence
])
def test_bearer_true_positives(text: str, expected: str) -> None:
    assert only("bearer_token", text) == [expected]


@pytest.mark.parametrize("text", [
    "Bearer authentication is the norm",
    "Authorization: Bearer YOUR_TOKEN_HERE",
    "Bearer <token>",
    "Bearer ${TOKEN}",
    "bearer bond",
    "Bearer abc123",  # shorter than 8
])
def test_bearer_false_positives(text: str) -> None:
    assert only("bearer_token", text) == []


def test_bearer_token_that_is_a_known_token_is_reported_as_that() -> None:
    token = "ghp_" + GH_BODY
    assert found(f"Authorization: Bearer {token}") == [("github_token", token)]
    jwt = make_jwt({"alg": "HS256"}, {"sub": "x"})
    assert found(f"Authorization: Bearer {jwt}") == [("jwt", jwt)]


# --------------------------------------------------------------------------------------------------
# high_entropy_secret


@pytest.mark.parametrize("text, expected", [
    ("sk_test_4eC39HqLyjWDarjtT1zdp7dc", "sk_test_4eC39HqLyjWDarjtT1zdp7dc"),
    ("api_key=Zx8Qp2Lm9Rt4Vw7Ys1Bn6Kd3Hf5Jg0Ca", "Zx8Qp2Lm9Rt4Vw7Ys1Bn6Kd3Hf5Jg0Ca"),
    ("token: 9yHqT3vKp0ZrW8sLm2XbN5cF7dJ4gA1e", "9yHqT3vKp0ZrW8sLm2XbN5cF7dJ4gA1e"),
    ("secret 'kq3v9x0m2b7n4c8z1l5j6h'", "kq3v9x0m2b7n4c8z1l5j6h"),
    ("https://example.com/callback?code=Zx8Qp2Lm9Rt4Vw7Ys1Bn6Kd3&state=ok", "Zx8Qp2Lm9Rt4Vw7Ys1Bn6Kd3"),
    ("blob: 3q2+7wEAAAB/Zm9vYmFyX3NlY3JldF8xMjM0NTY=", "3q2+7wEAAAB/Zm9vYmFyX3NlY3JldF8xMjM0NTY="),
])
def test_high_entropy_true_positives(text: str, expected: str) -> None:
    assert only("high_entropy_secret", text) == [expected]


def test_high_entropy_finds_most_random_tokens() -> None:
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits
    tokens = ["".join(rng.choice(alphabet) for _ in range(32)) for _ in range(300)]
    hits = sum(1 for t in tokens if only("high_entropy_secret", f"value {t} end") == [t])
    assert hits >= 0.95 * len(tokens)


@pytest.mark.parametrize("text", [
    "550e8400-e29b-41d4-a716-446655440000",                               # UUID
    "550E8400E29B41D4A716446655440000",                                   # UUID without dashes
    "commit 3f786850e387550fdab836ed7e6dc881de23001b",                    # git SHA-1
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "internationalization",                                               # words
    "Supercalifragilisticexpialidocious localization2024",
    "getUserAccountBalance2024 Python3TracebackLexer EcdsaSecp256k1VerificationKey2019",
    "napi-rs/whisper-linux-x64-gnu kebab-case-name-v2-2024-final my_snake_case_identifier_2",
    "/usr/lib/x86_64-linux-gnu/libssl.so.3",                              # paths
    "/home/runner/work/wardgate/wardgate/tests/unit/test_masking.py",
    "/var/lib/postgresql/15/main/pg_wal/000000010000000000000001",
    "https://example.com/api/v2/users/a1B2c3D4e5F6g7H8i9J0k1L2/profile",  # URL path
    "a1B2c3D4e5F6g7H8i9J0k1L2.json",                                     # file name
    "2024-01-15T10:30:00.123456+00:00",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA1",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "1234567890123456789012345",
])
def test_high_entropy_false_positives(text: str) -> None:
    assert only("high_entropy_secret", text) == []


# --------------------------------------------------------------------------------------------------
# Overlaps, order, unicode


def test_findings_are_sorted_and_labelled_in_mixed_text() -> None:
    jwt = make_jwt({"alg": "HS256"}, {"sub": "x"})
    text = (f"user jane@example.com paid with 4111 1111 1111 1111, ssn 123-45-6789, "
            f"iban DE89370400440532013000, phone +1 415 555 2671, key AKIAIOSFODNN7EXAMPLE, "
            f"token {jwt}.")
    assert [d for d, _ in found(text)] == [
        "email", "credit_card", "us_ssn", "iban", "phone", "aws_access_key_id", "jwt"]


def test_priority_at_the_same_position() -> None:
    # An IBAN is also a high-entropy-looking run: the IBAN detector, earlier in PRIORITY, wins.
    assert found("DE89370400440532013000") == [("iban", "DE89370400440532013000")]
    # An e-mail address whose local part is a phone number: e-mail comes before phone.
    assert found("+14155552671@sms.example.com") == [("email", "+14155552671@sms.example.com")]
    # A GitHub token used as a git username: the token, then nothing else.
    token = "ghp_" + GH_BODY
    assert found(f"https://{token}@github.com/org/repo.git") == [("github_token", token)]


def test_failed_candidate_falls_through_to_the_next_detector() -> None:
    # An IBAN-shaped run with bad check digits is rejected by mod-97, but it is random-looking.
    text = "ref GB00W3S7A2B4C6D8E1F3G5 x"
    assert only("iban", text) == []
    assert found(text) == [("high_entropy_secret", "GB00W3S7A2B4C6D8E1F3G5")]
    # A 40-character secret-like run without AWS context falls through to high_entropy_secret.
    token = "Zx8Qp2Lm9Rt4Vw7Ys1Bn6Kd3Hf5Jg0CaT7uI2oP4"
    assert found(f"value {token}") == [("high_entropy_secret", token)]


def test_pem_contains_its_base64_lines(pem_keys: dict[str, str]) -> None:
    assert [f.detector for f in scan(pem_keys["rsa"])] == ["pem_private_key"]


def test_unicode_text_offsets() -> None:
    text = "Kártya: 4111 1111 1111 1111 – köszönöm 📧 jane@exämple.de; 電話 +81 3-1234-5678。"
    assert found(text) == [
        ("credit_card", "4111 1111 1111 1111"),
        ("email", "jane@exämple.de"),
        ("phone", "+81 3-1234-5678"),
    ]
    masked = mask_text(text, MaskStrategy.redact())
    assert masked == ("Kártya: [REDACTED:credit_card] – köszönöm 📧 [REDACTED:email]; "
                      "電話 [REDACTED:phone]。")


def test_unicode_digits_are_not_digits() -> None:
    assert scan("٤١١١١١١١١١١١١١١١") == []  # Arabic-Indic digits


def test_random_texts_give_well_formed_findings() -> None:
    rng = random.Random(1)
    pieces = ["jane@example.com", "4111 1111 1111 1111", "123-45-6789", "DE89370400440532013000",
              "+1 415 555 2671", "AKIAIOSFODNN7EXAMPLE", AWS_SECRET, "ghp_" + GH_BODY, "Bearer abcDEF123456ghi",
              "glpat-xxxxxxxxxxxxxxxxxxxx", "hello", "2024-01-15", "é", "📧", " ", "\n", ",", "-", ".", "@", "=",
              "Zx8Qp2Lm9Rt4Vw7Ys1Bn6Kd3"]
    for _ in range(500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        findings = scan(text)
        previous_end = 0
        for f in findings:
            assert f.detector in DETECTOR_NAMES
            assert previous_end <= f.start < f.end <= len(text)
            previous_end = f.end
        # Masking replaces exactly the findings' spans.
        redacted = mask_findings(text, findings, MaskStrategy.redact("\u2588"))
        expected, pos = [], 0
        for f in findings:
            expected += [text[pos:f.start], "\u2588"]
            pos = f.end
        assert redacted == "".join(expected) + text[pos:]


def test_detector_selection() -> None:
    text = "jane@example.com 4111 1111 1111 1111"
    assert found(text, ["credit_card"]) == [("credit_card", "4111 1111 1111 1111")]
    assert found(text, ("email",)) == [("email", "jane@example.com")]
    assert found(text, ["phone"]) == []


@pytest.mark.parametrize("text", [
    "1 " * 50_000,
    "+1 " * 30_000,
    "a" * 200_000,
    "aA1" * 70_000,
    "@" * 100_000,
    "a@" * 50_000,
    "a." * 100_000 + "@",
    "x@" + "a." * 100_000,
    "-----BEGIN RSA PRIVATE KEY-----\n" * 5_000,
    "-----BEGIN PRIVATE KEY-----\n(x)" * 5_000,          # unterminated blocks, no END anywhere
    "-----BEGIN CERTIFICATE-----\n1" * 5_000,
    "-----BEGIN CERTIFICATE-----\n" + "QUJD\n" * 50_000,
    "Bearer " * 30_000,
    "0-0-0-" * 30_000,
    "4111 " * 40_000,
    "GB82 " * 40_000,
    "eyJhbGciOiJIUzI1NiJ9." * 10_000,
    "aws " + "A/" * 100_000,
])
def test_adversarial_inputs_stay_fast(text: str) -> None:
    started = time.perf_counter()
    scan(text)
    assert time.perf_counter() - started < 3.0, "the scan must stay linear on hostile values"


# --------------------------------------------------------------------------------------------------
# Strategies
#
# A whole-value strategy is applied by ``mask_value`` (COPY rows, the reference) and, per DataRow, by
# ``ResultMasker`` with the Python walker or the compiled one (``_rowmask_fast``): the tests that
# take ``whole`` run against all three, which must agree exactly.


def _row_masker(fast: bool):
    from wardgate.protocols.postgres.rowmask import ResultMasker

    def mask(value: str | None, strategy: MaskStrategy, *, key: bytes | None = None) -> str | None:
        masker = ResultMasker(((1, "column", strategy, "t.c", None, True),), key or b"", MaskReport(), fast=fast)
        raw = None if value is None else value.encode()
        cell = b"\xff\xff\xff\xff" if raw is None else len(raw).to_bytes(4, "big") + raw
        payload = masker.mask_row(b"\x00\x03\x00\x00\x00\x01a" + cell + b"\x00\x00\x00\x01z")
        assert payload[:7] == b"\x00\x03\x00\x00\x00\x01a" and payload[-5:] == b"\x00\x00\x00\x01z"
        length = int.from_bytes(payload[7:11], "big", signed=True)
        assert len(payload) == 11 + max(length, 0) + 5
        return None if length < 0 else payload[11:11 + length].decode()
    return mask


def _compiled_available() -> bool:
    from wardgate.protocols.postgres import rowmask
    return rowmask.fast_available()


@pytest.fixture(params=["mask_value", "datarow-python", pytest.param("datarow-compiled", marks=pytest.mark.skipif(
    not _compiled_available(), reason="compiled DataRow masker not in use (not built, stale, or WARDGATE_MASKING_PYTHON)"))])
def whole(request):
    """``mask_value``, or the same through a DataRow with the Python or the compiled walker."""
    if request.param == "mask_value":
        return mask_value
    return _row_masker(fast=request.param == "datarow-compiled")


def test_redact(whole) -> None:
    assert whole("jane@example.com", MaskStrategy.redact(), key=KEY) == "[REDACTED]"
    assert whole("x", MaskStrategy.redact("***"), key=KEY) == "***"
    text = "mail jane@example.com now"
    assert mask_findings(text, scan(text), MaskStrategy.redact()) == "mail [REDACTED:email] now"
    assert mask_findings(text, scan(text), MaskStrategy.redact("<hidden>")) == "mail <hidden> now"


@pytest.mark.parametrize("value, expected", [
    ("4111 1111 1111 1111", "**** **** **** 1111"),
    ("4111-1111-1111-1111", "****-****-****-1111"),
    ("4111111111111111", "************1111"),
    ("+1 (415) 555-2671", "+* (***) ***-2671"),
    ("123-45-6789", "***-**-6789"),
    ("GB82 WEST 1234 5698 7654 32", "**** **** **** **** **54 32"),
    ("josé@exämple.de", "**********le.de"),
    ("1234", "**34"),         # never more than half is kept
    ("ab", "*b"),
    ("a", "*"),
    ("", ""),
])
def test_partial_keeps_last_four(whole, value: str, expected: str) -> None:
    assert whole(value, MaskStrategy.partial(4)) == expected


def test_partial_options(whole) -> None:
    assert whole("4111 1111 1111 1111", MaskStrategy.partial(0)) == "**** **** **** ****"
    assert whole("4111 1111 1111 1111", MaskStrategy.partial(2, mask_char="x")) == "xxxx xxxx xxxx xx11"
    assert whole("4111 1111 1111 1111", MaskStrategy.partial(4, separators="")) == "***************1111"
    assert whole("4111 1111 1111 1111", MaskStrategy.partial(4, mask_char="•")) == "•••• •••• •••• 1111"
    assert whole("Zoë 0123", MaskStrategy.partial(2, separators=" ")) == "*** **23"
    assert whole("a-b-c-d-e", MaskStrategy.partial(2, separators="é-")) == "*-*-*-d-e"
    assert whole("4111 1111", MaskStrategy.partial(10**9)) == "**** 1111"  # never more than half
    text = "card 4111 1111 1111 1111."
    assert mask_findings(text, scan(text), MaskStrategy.partial()) == "card **** **** **** 1111."


def test_hash_is_keyed_and_deterministic(whole) -> None:
    strategy = MaskStrategy.hash()
    a1 = whole("jane@example.com", strategy, key=KEY)
    a2 = whole("jane@example.com", strategy, key=KEY)
    b = whole("john@example.com", strategy, key=KEY)
    other_key = whole("jane@example.com", strategy, key=b"another key of some length")
    assert a1 == a2 != b
    assert a1 != other_key
    expected = "tok_" + hmac.new(KEY, b"jane@example.com", hashlib.sha256).hexdigest()[:16]
    assert a1 == expected
    assert "jane" not in a1


def test_hash_options(whole) -> None:
    token = whole("x", MaskStrategy.hash(prefix="h:", length=20, encoding="base32"), key=KEY)
    assert token is not None and token.startswith("h:") and len(token) == 22
    assert set(token[2:]) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert len(whole("x", MaskStrategy.hash(length=64), key=KEY) or "") == 68
    with pytest.raises(ValueError):
        MaskStrategy.hash(length=4)
    with pytest.raises(ValueError):
        MaskStrategy.hash(encoding="base64")


def test_hash_needs_a_key(whole) -> None:
    with pytest.raises(ValueError, match="key"):
        whole("x", MaskStrategy.hash(), key=b"")
    with pytest.raises(ValueError, match="key"):
        whole("x", MaskStrategy.hash())


def test_hashed_spans_still_join() -> None:
    a = "from jane@example.com to bob@example.org"
    b = "cc: jane@example.com"
    masked_a = mask_text(a, MaskStrategy.hash(), key=KEY)
    masked_b = mask_text(b, MaskStrategy.hash(), key=KEY)
    token = mask_value("jane@example.com", MaskStrategy.hash(), key=KEY)
    assert masked_a is not None and masked_b is not None and token is not None
    assert token in masked_a and token in masked_b
    assert "jane@" not in masked_a + masked_b


def test_null(whole) -> None:
    assert whole("jane@example.com", MaskStrategy.null(), key=KEY) is None
    assert whole(None, MaskStrategy.redact()) is None
    assert mask_text("mail jane@example.com", MaskStrategy.null()) is None
    assert mask_text("nothing to see", MaskStrategy.null()) == "nothing to see"
    assert mask_text(None, MaskStrategy.redact()) is None
    # Part of a text cannot be NULL: the span is redacted.
    text = "mail jane@example.com"
    assert mask_findings(text, scan(text), MaskStrategy.null()) == "mail [REDACTED:email]"


def test_apply() -> None:
    assert apply(MaskStrategy.redact(), "x", detector="jwt") == "[REDACTED:jwt]"
    assert apply(MaskStrategy.redact(), "x") == "[REDACTED]"
    assert apply(MaskStrategy.null(), "x") is None


def test_mask_text_returns_clean_text_unchanged() -> None:
    text = "nothing sensitive here, order 12345"
    assert mask_text(text, MaskStrategy.redact()) is text


def test_mask_findings_rejects_bad_spans() -> None:
    with pytest.raises(ValueError):
        mask_findings("abcdef", [Finding("email", 2, 4), Finding("email", 3, 5)], MaskStrategy.redact())
    with pytest.raises(ValueError):
        mask_findings("abc", [Finding("email", 1, 9)], MaskStrategy.redact())
    assert mask_findings("abc", [], MaskStrategy.redact()) == "abc"


def test_strategy_from_policy_spec() -> None:
    assert MaskStrategy.from_spec("redact") == MaskStrategy.redact()
    assert MaskStrategy.from_spec({"strategy": "partial", "keep": 2}) == MaskStrategy.partial(2)
    assert MaskStrategy.from_spec({"match": "*.*.email", "strategy": "hash"}).kind == "hash"
    assert MaskStrategy.from_spec(MaskStrategy.null()) == MaskStrategy.null()
    with pytest.raises(ValueError):
        MaskStrategy.from_spec("scramble")
    with pytest.raises(ValueError):
        MaskStrategy.partial(-1)


# --------------------------------------------------------------------------------------------------
# Report


def test_report_counts_without_values() -> None:
    secrets_in_rows = ["jane@example.com", "4111 1111 1111 1111", "AKIAIOSFODNN7EXAMPLE", "123-45-6789"]
    rows = [
        ("jane@example.com", "note: card 4111 1111 1111 1111 and jane@example.com"),
        ("bob@example.org", "key AKIAIOSFODNN7EXAMPLE, ssn 123-45-6789"),
        ("carol@example.net", None),
    ]
    report = MaskReport()
    out = []
    for email, note in rows:
        masked_email = mask_value(email, MaskStrategy.partial(4))
        report.record("public.users.email")
        masked_note = mask_text(note, MaskStrategy.redact(), report=report, column="public.users.note")
        out.append((masked_email, masked_note))
    assert report.entries() == [
        {"column": "public.users.email", "detector": COLUMN, "count": 3},
        {"column": "public.users.note", "detector": "aws_access_key_id", "count": 1},
        {"column": "public.users.note", "detector": "credit_card", "count": 1},
        {"column": "public.users.note", "detector": "email", "count": 1},
        {"column": "public.users.note", "detector": "us_ssn", "count": 1},
    ]
    assert report.total == 7 and len(report) == 5 and report
    assert list(report)[0] == ("public.users.email", COLUMN, 3)
    serialized = json.dumps(report.entries()) + repr(report) + repr(report.counts())
    for raw in secrets_in_rows + ["bob@example.org", "carol@example.net"]:
        assert raw not in serialized
    for _, masked_note in out:
        for raw in secrets_in_rows:
            assert masked_note is None or raw not in masked_note
    assert not hasattr(report, "__dict__")  # nowhere to keep a value by accident


def test_report_merge_and_clear() -> None:
    a, b = MaskReport(), MaskReport()
    a.record("c", "email", 2)
    b.record("c", "email")
    b.record("d")
    b.record("e", "jwt", 0)
    a.merge(b)
    assert a.counts() == {("c", "email"): 3, ("d", COLUMN): 1}
    a.clear()
    assert not a and a.entries() == []
