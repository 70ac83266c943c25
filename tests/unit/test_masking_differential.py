"""Differential safety net for the detector scan (wardgate.core.masking): ``scan`` and ``mask_text`` must
give exactly what the frozen original implementation gives (``masking_reference_b4f0b5a.py``, the module
as it was before session 11 made the scan cheaper) on a large fixed corpus: every string argument of
``test_masking.py``'s parametrized cases, hand-picked edge cases (every detector's positives and near
misses, the prefilter's boundaries) and seeded random and adversarial strings (unicode, digit-heavy,
near-miss e-mails/cards/IBANs, base64/hex blobs, long texts), under several detector selections and
every strategy. Findings, masked text and report counts are compared exactly."""

from __future__ import annotations

import base64
import random
import string

import masking_reference_b4f0b5a as reference
import pytest
import test_masking

from wardgate.core import masking

PROFILE = ("email", "credit_card", "us_ssn", "iban", "aws_access_key_id", "aws_secret_access_key", "github_token",
           "gitlab_token", "jwt", "pem_private_key", "bearer_token")
KEY = b"differential-key"


def _harvested() -> list[str]:
    """Every string value of test_masking.py's parametrized cases, and its constants."""
    out: list[str] = []

    def add(value) -> None:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, (tuple, list)):
            for item in value:
                add(item)
        elif hasattr(value, "values"):  # pytest.param
            add(value.values)

    for name in dir(test_masking):
        for mark in getattr(getattr(test_masking, name), "pytestmark", []):
            if mark.name == "parametrize":
                add(list(mark.args[1]))
    gh = "ghp_" + test_masking.GH_BODY
    jwt = test_masking.make_jwt({"alg": "HS256", "typ": "JWT"}, {"sub": "1234567890"})
    out += [test_masking.AWS_SECRET, gh, jwt, f"Authorization: Bearer {jwt}", f"Authorization: Bearer {gh}",
            f"https://{gh}@github.com/org/repo.git", "github_pat_" + "A1b2C3d4E5" * 7]
    return out


PEM_KEYS = test_masking._pem_keys()
BODY = base64.b64encode(bytes(range(200))).decode()

HAND_PICKED = [
    "", " ", "a", "@", "+", "0", "\n", "é", "📧", "\x00", "\ud800", "a\ud800b 4111111111111111",
    "Please ship by Friday", "Stainless Steel Water Bottle 750ml", "221B Baker Street, London NW1 6XE",
    "Please forward the invoice to jane.doe@example.com before Friday",
    "Customer 4242 prefers deliveries before noon; call 415-555-2671",
    "(415) 555-2671", "415.555.2671", "415-555-2671", "1-800-555-0199", "1 (800) 555-0199", "020 7946 0958",
    "01 23 45 67 89", "030/1234567", "(02) 9876 5432", "+1234567.89", "+44 20 7946 0958", "+1 (415) 555-2671",
    "ORD-415-555-2671", "415-555-2671x", "call 415-555-26710", "v1.415.555.2671", "10.0.0.12", "2024-01-15",
    "14:30:00", "+81 3-1234-5678", "+1--415", "+1 415..555", "tel:+14155552671",
    "logo@2x.png", "a@b.co", "jane@exämple.de", "x@" + "a." * 40 + "com", ".jane@example.com",
    "jane..doe@example.com", "jane.@example.com", "j@e.x", "xn--@xn--p1ai.xn--p1ai", "a@b.xn--p1ai",
    "4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "3782 822463 10005", "378282246310005",
    "5555-5555-5555-4444", "4111 1111-1111 1111", "4111 1111 1111 1112", "0.4111111111111111",
    "A4111111111111111", "4111111111111111.5", "6011 1111 1111 1117", "2221000000000009", "4111 1111 1111 1111 1",
    "DE89370400440532013000", "DE89 3704 0044 0532 0130 00", "GB82 WEST 1234 5698 7654 32", "GB82WEST12345698765432",
    "GB82 WEST 1234 5698 7654 32 ABCD", "GB00W3S7A2B4C6D8E1F3G5", "NO9386011117947", "XX89370400440532013000",
    "123-45-6789", "000-12-3456", "666-12-3456", "900-12-3456", "123-00-6789", "123-45-0000", "123-45-6789-1",
    "AKIAIOSFODNN7EXAMPLE", "ASIAIOSFODNN7EXAMPLE", "A3TXIOSFODNN7EXAMPLE", "xAKIAIOSFODNN7EXAMPLE",
    "AKIAIOSFODNN7EXAMPLEX",
    f"aws_secret_access_key = {test_masking.AWS_SECRET}", f'"SecretAccessKey": "{test_masking.AWS_SECRET}"',
    f"AWS key {test_masking.AWS_SECRET}", f"laws {test_masking.AWS_SECRET}", f"{test_masking.AWS_SECRET} amazon",
    "AKIAIOSFODNN7EXAMPLE " + test_masking.AWS_SECRET, "aws " + "a" * 40, "aws " + "3f786850e387550fdab836ed7e6dc881de23001b",
    "Bearer abcDEF123456ghi", "bearer 0123456789abcdef0123", "BEARER Zm9vYmFyOmJhejEyMw==", "Bearer mF_9.B5f-4.1JqM.",
    "Bearer\tabcDEF123456ghi", "Bearer  abcDEF123456ghi", "Bearer YOUR_TOKEN_HERE", "xBearer abcDEF123456ghi",
    "glpat-xxxxxxxxxxxxxxxxxxxx", "glpat-xxxxxxxxxxxxxxxxxxxx.01.abcdefg", "GR1348941xxxxxxxxxxxxxxxxxxxx",
    "glpat-short", "gldt-" + "a" * 20, "glagent-" + "A_b-" * 6,
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "eyJub3QganNvbg.eyJ4IjoxfQ.c2ln", "eyJ!!!!.eyJ.x",
    "550e8400-e29b-41d4-a716-446655440000", "550E8400E29B41D4A716446655440000",
    "3f786850e387550fdab836ed7e6dc881de23001b", "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
    "3q2+7wEAAAB/Zm9vYmFyX3NlY3JldF8xMjM0NTY=", "Zx8Qp2Lm9Rt4Vw7Ys1Bn6Kd3Hf5Jg0CaT7uI2oP4", "Zx8Qp2Lm9Rt4Vw7Ys1Bn",
    "Zx8Qp2Lm9Rt4Vw7Ys1B", "key-550e8400-e29b-41d4-a716-446655440000-Zx8Qp2Lm9Rt4Vw7Ys1Bn6Kd3",
    "/usr/lib/x86_64-linux-gnu/libssl.so.3", "https://example.com/cb?code=Zx8Qp2Lm9Rt4Vw7Ys1Bn6Kd3&state=ok",
    "a1B2c3D4e5F6g7H8i9J0k1L2.json", "x.a1B2c3D4e5F6g7H8i9J0k1L2",
    PEM_KEYS["pkcs8"], PEM_KEYS["rsa"], PEM_KEYS["ec"], PEM_KEYS["encrypted"], PEM_KEYS["openssh"],
    PEM_KEYS["public"], PEM_KEYS["pkcs8"][:300], "x" + PEM_KEYS["ec"], PEM_KEYS["public"] + PEM_KEYS["ec"],
    f"-----BEGIN CERTIFICATE-----\n{BODY}\n-----END CERTIFICATE-----",
    # A public block with findings inside: stepped over whole only while high_entropy_secret is selected.
    "-----BEGIN CERTIFICATE-----\ncall +1 415 555 2671 or jane@example.com\n-----END CERTIFICATE-----",
    "-----BEGIN CERTIFICATE-----\nshort\n-----END CERTIFICATE----- then 4111 1111 1111 1111",
    "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----", "-----BEGIN RSA PRIVATE KEY-----\n",
    "-----BEGIN PRIVATE KEY-----\n(x)", "-----BEGIN CERTIFICATE-----\n1",
]

WORDS = ("the order was shipped to warehouse customer invoice Friday note call deliveries before noon please "
         "Springfield Tuesday report account payment key token secret aws AWS amazon Bearer bearer version "
         "user email phone card iban ssn ghp_ glpat- eyJ -----BEGIN A AKIA GB DE NO id ref x").split()
SEPARATORS = [" ", " ", " ", ", ", ". ", "\n", "\t", "-", "/", ":", "=", "'", '"', "(", ")", "_", "@", "+", "."]
UNICODE = "éüßøÅ日本語📧٤١–—\u00a0\u200b"


def _random_token(rng: random.Random, alphabet: str, low: int, high: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def _mutate(rng: random.Random, text: str) -> str:
    """A near miss: one character changed, inserted or removed, a case flip, or something glued on."""
    if not text:
        return text
    i = rng.randrange(len(text))
    pool = string.ascii_letters + string.digits + " -.@+/_=()" + "é"
    kind = rng.randrange(7)
    if kind == 0:
        return text[:i] + rng.choice(pool) + text[i + 1:]
    if kind == 1:
        return text[:i] + rng.choice(pool) + text[i:]
    if kind == 2:
        return text[:i] + text[i + 1:]
    if kind == 3:
        return text.swapcase()
    if kind == 4:
        return rng.choice(pool) + text
    if kind == 5:
        return text + rng.choice(pool)
    return text[:i]


def _corpus() -> list[str]:
    rng = random.Random(20240611)
    positives = _harvested() + HAND_PICKED
    texts = list(positives)
    positives = [text for text in positives if len(text) <= 5000]  # the adversarial 200k ones once only
    alphabets = [
        string.digits + " .-()+/",
        string.digits + " -",
        string.ascii_letters + string.digits + "+/=",
        string.ascii_letters + string.digits + "_-",
        "0123456789abcdef-",
        string.ascii_uppercase + string.digits + " ",
        string.printable,
        string.ascii_letters + " " + UNICODE,
        "eyJgh_lpat-GR1348941Bbearer-BEGIN@.",
    ]
    for _ in range(4000):  # near misses of the positives
        text = rng.choice(positives)
        for _ in range(rng.randint(1, 3)):
            text = _mutate(rng, text)
        texts.append(text)
    for _ in range(3000):  # random strings over alphabets that detectors care about
        texts.append(_random_token(rng, rng.choice(alphabets), 0, 80))
    for _ in range(3000):  # positives, words, numbers and separators glued together
        parts = []
        for _ in range(rng.randint(1, 10)):
            roll = rng.random()
            if roll < 0.25:
                parts.append(rng.choice(positives)[:200])
            elif roll < 0.6:
                parts.append(rng.choice(WORDS))
            elif roll < 0.75:
                parts.append(_random_token(rng, string.digits, 1, 20))
            elif roll < 0.85:
                parts.append(_random_token(rng, string.ascii_letters + string.digits + "+/_-", 10, 50))
            elif roll < 0.9:
                parts.append(rng.choice(UNICODE))
            parts.append(rng.choice(SEPARATORS))
        texts.append("".join(parts))
    for _ in range(300):  # long texts: prose with the odd finding (or none)
        parts = []
        while sum(map(len, parts)) < rng.randint(300, 3000):
            parts.append(rng.choice(WORDS) if rng.random() < 0.97 else rng.choice(positives)[:100])
            parts.append(rng.choice(SEPARATORS[:6]))
        texts.append("".join(parts))
    for _ in range(500):  # blobs: base64, base64url, hex, UUIDs
        data = rng.randbytes(rng.randint(8, 60))
        texts += [base64.b64encode(data).decode(), base64.urlsafe_b64encode(data).decode().rstrip("="),
                  data.hex(), str(__import__("uuid").UUID(bytes=data[:16].ljust(16, b"\0")))]
    return texts


CORPUS = _corpus()
SELECTIONS: list[tuple[str, ...] | None] = [None, PROFILE] + [(name,) for name in masking.PRIORITY] + [
    ("email", "phone"), ("credit_card", "high_entropy_secret"), ("iban", "us_ssn", "phone"),
    ("aws_access_key_id", "aws_secret_access_key"), ("pem_private_key",), ("high_entropy_secret", "email"),
]


def _findings(module, text: str, detectors) -> list[tuple[str, int, int]]:
    return [(f.detector, f.start, f.end) for f in module.scan(text, detectors)]


def test_corpus_is_large_and_has_findings() -> None:
    assert len(CORPUS) > 10_000
    assert sum(1 for text in CORPUS if reference.scan(text)) > 2_000


@pytest.mark.parametrize("detectors", SELECTIONS, ids=lambda s: "all" if s is None else "+".join(s)[:40])
def test_scan_matches_the_original(detectors) -> None:
    mismatches = []
    # Single detectors: a sample of the corpus keeps the run short; all and the profile: everything.
    texts = CORPUS if detectors is None or len(detectors) > 1 else CORPUS[::3]
    for text in texts:
        expected = _findings(reference, text, detectors)
        got = _findings(masking, text, detectors)
        if got != expected:
            mismatches.append((text, expected, got))
    assert not mismatches, f"{len(mismatches)} differences, first: {mismatches[:3]!r}"


@pytest.mark.parametrize("detectors", [None, PROFILE, ["email", "phone", "credit_card"]],
                         ids=["all", "profile", "list"])
def test_mask_text_matches_the_original(detectors) -> None:
    strategies = [("redact", None), ("partial", {"strategy": "partial", "keep": 4}), ("hash", "hash"),
                  ("null", "null"), ("marker", {"strategy": "redact", "marker": "#"})]
    for name, spec in strategies:
        new_report, old_report = masking.MaskReport(), reference.MaskReport()
        new_strategy = masking.MaskStrategy.from_spec(spec or "redact")
        old_strategy = reference.MaskStrategy.from_spec(spec or "redact")
        for i, text in enumerate(CORPUS):
            column = f"c{i % 3}"
            got = masking.mask_text(text, new_strategy, key=KEY, detectors=detectors, report=new_report,
                                    column=column)
            expected = reference.mask_text(text, old_strategy, key=KEY, detectors=detectors, report=old_report,
                                           column=column)
            assert got == expected, (name, text)
            if expected is text:
                assert got is text, (name, text)  # clean text comes back as the same object
        assert new_report.counts() == old_report.counts(), name
        assert new_report.counts(), name


def test_unknown_detector_still_an_error() -> None:
    with pytest.raises(ValueError):
        masking.scan("text", ["nope"])
    with pytest.raises(ValueError):
        masking.scan("text", ("email", "nope"))
