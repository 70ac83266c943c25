"""Masking: find sensitive values in result text and replace them before they leave the gateway.

Protocol-neutral: the protocol adapters hand over ``str`` values (a column's text, a notice's detail)
and get ``str`` (or ``None`` for SQL NULL) back. Nothing here stores a raw value: the
:class:`MaskReport` keeps only (column, detector, count).

Detectors
---------
Each detector is a regular expression for *candidates* plus, where the format has one, a validator
(Luhn, mod-97, JWT header, context, randomness). All candidate patterns are alternatives of **one**
compiled regex, each closed by an empty named group (``match.lastgroup`` names the alternative); only
the candidates it yields are validated.

========================  =====================================================================
name                      what counts as a finding
========================  =====================================================================
``pem_private_key``       ``-----BEGIN [<WORDS> ]PRIVATE KEY[ BLOCK]-----`` through the matching
                          ``-----END …-----`` line, whole block (RSA, EC, PKCS#8, ENCRYPTED, OPENSSH,
                          PGP). Without an END line (a value cut off) the header and the base64 body
                          that follows it. Other PEM blocks (certificates, public keys) are public:
                          not findings, and stepped over whole so that their base64 lines are not
                          taken for high-entropy secrets.
``jwt``                   three base64url segments (JWS compact; five for JWE; empty signature for
                          ``alg: none``) whose first segment starts ``eyJ`` and decodes to a JSON
                          object with a string ``"alg"``.
``github_token``          ``ghp_ gho_ ghu_ ghs_ ghr_`` + 36..251 alphanumerics; ``github_pat_`` +
                          60..251 ``[A-Za-z0-9_]`` (fine-grained). No checksum test (fake-looking
                          tokens are masked too).
``gitlab_token``          ``glpat- gldt- glrt- glrtr- glptt- glft- glimt- glagent- glcbt- glsoat-
                          gloas- glffct- glwt-`` + 20..255 ``[A-Za-z0-9_-]`` (and the routable
                          ``.NN.xxxxxxx`` suffix); legacy runner registration ``GR1348941`` + 20.
``aws_access_key_id``     ``AKIA ASIA AGPA AIDA AROA AIPA ANPA ANVA APKA ABIA ACCA ASCA`` (and the
                          legacy ``A3T?``) + 16 uppercase alphanumerics, standing alone.
``aws_secret_access_key`` exactly 40 characters of ``[A-Za-z0-9/+]`` standing alone, and **either**
                          the value of a key named like a secret key (``aws_secret_access_key = v``,
                          ``AWS_SECRET_ACCESS_KEY=v``, ``"SecretAccessKey": "v"``, ``secret_key: 'v'``;
                          the key may be quoted and is not part of the finding) **or**, for a bare
                          value, mixed case with a digit or ``/``/``+`` (never pure hex, so never a
                          40-char SHA-1) within 256 characters of AWS context: ``aws``/``AWS``/
                          ``amazon`` as a word of its own (not "laws") or an ``AKIA``/``ASIA`` key id.
``bearer_token``          the token after ``Bearer `` (or ``bearer``/``BEARER``, one space or tab):
                          RFC 6750 ``b64token`` characters, 8 or more, with a digit or mixed case (so
                          "Bearer authentication" and "Bearer YOUR_TOKEN_HERE" are not findings);
                          trailing dots are left out. The word ``Bearer`` stays; a token that is a
                          JWT/GitHub/GitLab/AWS token is reported as that detector.
``credit_card``           13..19 digits, contiguous or grouped with one kind of separator (space or
                          ``-``; 4-4-4-4[-1..4], 4-4-4-1..4, 4-6-5, 4-6-4), whose IIN prefix and length fit
                          a major network (Visa, Mastercard incl. 2-series, Amex, Discover, JCB,
                          Diners, UnionPay, Maestro, Mir) and which pass Luhn. Not a part of a
                          longer number, a decimal or a ``-``/letter-glued code.
``iban``                  country code of the IBAN registry + 2 check digits + BBAN, contiguous or in
                          groups of four separated by single spaces, uppercase, of exactly the
                          registry length for that country, passing ISO 7064 mod-97.
``us_ssn``                ``AAA-GG-SSSS`` (dashes only: nine bare digits are an id as often as an
                          SSN) with area not 000, 666 or 900-999, group not 00, serial not 0000.
``email``                 ``local@domain.tld``: local part up to 64 of ``[\\w.%+-]`` (Unicode letters
                          allowed, no leading/trailing/double dot), dotted domain, alphabetic or
                          ``xn--`` TLD; asset names such as ``logo@2x.png`` are not addresses.
``phone``                 International (``+`` country code, 8..15 digits, separators space ``.`` ``-``
                          and parentheses; not ``+1234567.89``); NANP ``(415) 555-2671``,
                          ``415-555-2671``, ``415.555.2671``, ``1-800-555-0199`` (area and exchange
                          codes start 2-9, one kind of separator); trunk-prefix national numbers
                          ``020 7946 0958``, ``01 23 45 67 89``, ``030/1234567``, ``(02) 9876 5432``
                          (leading 0, at least one separator, 9..12 digits). A bare digit string
                          without ``+`` or separators is never a phone (an id or an amount as much as
                          a phone); neither are dates, times, IPv4 addresses, versions, ISBNs, numbers
                          glued to letters or ``-`` (``ORD-415-555-2671``) or part of longer numbers.
``high_entropy_secret``   a maximal run of 20+ characters of the base64/base64url alphabet that looks
                          random (:func:`_looks_random`: letters and digits, not pure hex -- so **UUIDs
                          and SHA-1/SHA-256 digests are not flagged** --, not a path or a kebab/snake
                          name, entropy and character-class mixing of a random string, not CamelCase).
                          Runs glued to a ``.`` (host and file names, URL paths after the host) or
                          starting with ``/`` are not candidates; URL query values are.
========================  =====================================================================

Overlaps (documented priority)
------------------------------
Findings never overlap. The scan goes left to right: **the leftmost candidate wins**; at the same start
position the detectors are tried in :data:`PRIORITY` order (``pem_private_key > jwt > github_token >
gitlab_token > aws_access_key_id > aws_secret_access_key > bearer_token > credit_card > iban > us_ssn >
email > phone > high_entropy_secret``) and a candidate that fails validation falls through to the next
detector at that same position (an IBAN with a bad check digit may still be a random token). Each
pattern takes the longest form it can (greedy, anchored on non-token characters on both sides), so
within a detector the rule is leftmost-longest. Scanning resumes after the accepted finding. Because the
patterns are anchored on token boundaries, a specific secret does not start inside a generic candidate:
the base64 lines of a PEM body are inside the PEM finding, a JWT after ``Bearer`` is reported as
``jwt``, ``ghp_…@github.com`` is a GitHub token (not an e-mail address).

Every finding starts after a character that is not an ASCII letter or digit (or at the start of the
text): the combined regex consumes that character first, which lets the regex engine skip over words in
C. (So ``x-----BEGIN …`` glued to a letter is not found.)

Speed
-----
:func:`scan` returns at once for text shorter than the shortest detectable value of the selected
detectors, then a prefilter drops the detectors that cannot match (no digit: no card, phone, SSN, IBAN
or high-entropy token; no ``@``: no e-mail; no ``eyJ``: no JWT; fewer than 13 digits or no four in a
row: no card; no ``ddd-dd-dddd``: no SSN; no ``UUdd``: no IBAN; no run of 20 ``[A-Za-z0-9+/_-]``: no
AWS key, GitLab or high-entropy token, of 40: no AWS secret or GitHub token; ...) and runs the
combined regex of the rest (compiled once per combination, cached). A detector is dropped only when
none of its candidates could exist or all would fail validation, so the findings are those of the full
scan. The prefilter is :func:`_possible_python`, or the same tests in one pass over the text in C
(``_detect_fast.pyx``, used when built from the current source; ``WARDGATE_DETECT_PYTHON=1`` turns it
off). Figures: ``bench/masking_speed.py --detector-cases``; ``tests/unit/test_masking_differential.py``
compares the scan with the implementation before these shortcuts.

Strategies
----------
:class:`MaskStrategy` (``redact``, ``partial``, ``hash``, ``null``); :func:`mask_value` masks a whole
column value, :func:`mask_findings` only the detected spans of a text, :func:`mask_text` scans and
masks in one call and records into a :class:`MaskReport`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import math
import operator
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from wardgate.core.compiled import load_compiled, warn_fallback

__all__ = [
    "COLUMN",
    "DETECTORS",
    "DETECTOR_NAMES",
    "Detector",
    "Finding",
    "MaskReport",
    "MaskStrategy",
    "PRIORITY",
    "apply",
    "mask_findings",
    "mask_text",
    "mask_value",
    "scan",
]


# --------------------------------------------------------------------------------------------------
# Findings and detector metadata


@dataclass(frozen=True, slots=True)
class Finding:
    """A detected span ``text[start:end]``; carries no copy of the text."""

    detector: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Detector:
    name: str
    description: str
    # The shortest text that can contain a finding of this detector (the fast path's length gate).
    min_length: int


DETECTORS: tuple[Detector, ...] = (
    Detector("pem_private_key", "PEM/PGP private key block, whole block", 27),
    Detector("jwt", "JSON Web Token: base64url segments, header is JSON with 'alg'", 16),
    Detector("github_token", "GitHub token: ghp_/gho_/ghu_/ghs_/ghr_ + 36, github_pat_ fine-grained", 40),
    Detector("gitlab_token", "GitLab token: glpat- and the other gl*- prefixes", 25),
    Detector("aws_access_key_id", "AWS access key id / unique id: AKIA, ASIA, ... + 16", 20),
    Detector("aws_secret_access_key", "AWS secret access key: 40 base64 chars in a key=value or AWS context", 40),
    Detector("bearer_token", "the token of 'Bearer <token>'", 15),
    Detector("credit_card", "payment card number: IIN of a major network, Luhn-valid", 13),
    Detector("iban", "IBAN: registry country and length, mod-97 valid", 15),
    Detector("us_ssn", "US social security number AAA-GG-SSSS, SSA invalid ranges excluded", 11),
    Detector("email", "e-mail address", 6),
    Detector("phone", "phone number: E.164/international, NANP, trunk-prefix national", 9),
    Detector("high_entropy_secret", "random-looking token of 20+ base64/base64url characters", 20),
)
PRIORITY: tuple[str, ...] = tuple(d.name for d in DETECTORS)
DETECTOR_NAMES: frozenset[str] = frozenset(PRIORITY)
_BIT = {name: 1 << i for i, name in enumerate(PRIORITY)}
_MIN_LENGTH = {d.name: d.min_length for d in DETECTORS}

# The value of ``detector`` in a :class:`MaskReport` entry for a whole-column mask.
COLUMN = "column"


# --------------------------------------------------------------------------------------------------
# Candidate patterns, in priority order: (marker, detector, pattern). A detector may have several
# alternatives. Every alternative *starts with a consuming literal or character class* and checks its
# left boundary with a lookbehind after it (``X(?<!B.)``): the regex engine then skips an alternative
# whose first character does not fit without entering it, which is what makes one combined regex of
# thirteen detectors cheap on prose. Each alternative ends with an empty group named by its marker:
# ``match.lastgroup`` tells which alternative matched; the finding is the whole match unless the
# validator says otherwise. Digits are written [0-9]: the patterns are compiled in Unicode mode (for
# e-mail local parts) where \d would also match other scripts' digits.

# A PEM body is at most 64 KiB and never runs into the next BEGIN line: an END line is looked for
# up to there only, so many unterminated BEGIN lines cost linear time, not quadratic.
_ALTERNATIVES: tuple[tuple[str, str | None, str], ...] = (
    ("pem", "pem_private_key", r"""
        -----BEGIN[ ](?P<pem_label>(?:[A-Z0-9]+[ ])*PRIVATE[ ]KEY(?:[ ]BLOCK)?)-----
        (?: (?:[^-]|-(?!----BEGIN[ ])){0,65536}?-----END[ ](?P=pem_label)-----
          | [A-Za-z0-9+/=:,\-\s]* )
    """),
    # Not a finding: other PEM blocks (certificates, public keys, CSRs) are public; the scan steps
    # over them whole so that their base64 lines are not taken for high-entropy secrets.
    ("pem_public", None, r"""
        -----BEGIN[ ](?![A-Z0-9 ]*PRIVATE)(?P<pem_public_label>[A-Z0-9]+(?:[ ][A-Z0-9]+){0,5})-----
        (?:[^-]|-(?!----BEGIN[ ])){0,65536}?-----END[ ](?P=pem_public_label)-----
    """),
    ("jwt", "jwt", r"""
        e(?<![A-Za-z0-9_-]e)yJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*
        (?:\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)?
        (?![A-Za-z0-9_-])
    """),
    ("github", "github_token", r"""
        g(?<![A-Za-z0-9_]g)
        (?: h[pousr]_[A-Za-z0-9]{36,251}
          | ithub_pat_[A-Za-z0-9_]{60,251} )
        (?![A-Za-z0-9_])
    """),
    ("gitlab", "gitlab_token", r"""
        [gG](?<![A-Za-z0-9_-].)
        (?: (?<=g)l(?:pat|dt|rt|rtr|ptt|ft|imt|agent|cbt|soat|oas|ffct|wt)
            -[A-Za-z0-9_-]{20,255}(?:\.[A-Za-z0-9]{2}\.[A-Za-z0-9]{5,12})?
          | (?<=G)R1348941[A-Za-z0-9_-]{20,60} )
        (?![A-Za-z0-9_-])
    """),
    ("aws_key", "aws_access_key_id", r"""
        A(?<![A-Za-z0-9]A)
        (?:KIA|SIA|GPA|IDA|ROA|IPA|NPA|NVA|PKA|BIA|CCA|SCA|3T[A-Z0-9])[A-Z0-9]{16}
        (?![A-Za-z0-9])
    """),
    # 40 base64 characters; the validator wants a secret-key name before it (key = value) or AWS
    # context near it.
    ("aws_secret", "aws_secret_access_key", r"""
        [A-Za-z0-9/+](?<![A-Za-z0-9/+].)[A-Za-z0-9/+]{39}(?![A-Za-z0-9/+=])
    """),
    # RFC 6750 b64token after a fixed-width "Bearer " (lookbehind), so that at the token's own
    # position the more specific detectors (jwt, github_token, ...) are tried first.
    ("bearer", "bearer_token", r"""
        [A-Za-z0-9._~+/-](?<=[Bb]earer[ ].|BEARER[ ].|[Bb]earer\t.)
        [A-Za-z0-9._~+/-]{7,}=*
        (?![A-Za-z0-9._~+/=-])
    """),
    ("card", "credit_card", r"""
        [0-9](?<![0-9A-Za-z_.,+-].)
        (?: [0-9]{12,18}
          | [0-9]{3}(?: (?:[ -][0-9]{4}){2,3}(?:[ -][0-9]{1,4})?
                      | [ -][0-9]{6}[ -][0-9]{4,5} ) )
        (?![0-9A-Za-z_]|[ -][0-9]|[.,][0-9])
    """),
    ("iban", "iban", r"""
        [A-Z](?<![A-Za-z0-9].)[A-Z][0-9]{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?
        (?![A-Za-z0-9])
    """),
    ("ssn", "us_ssn", r"""
        [0-8](?<![0-9A-Za-z_-].)[0-9]{2}(?<!000)(?<!666)-(?!00)[0-9]{2}-(?!0000)[0-9]{4}
        (?![0-9A-Za-z_]|-[0-9])
    """),
    ("email", "email", r"""
        [\w.%+-](?<![\w.%+-].)[\w.%+-]{0,63}
        @(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+(?:[^\W\d_]{2,63}|xn--[a-z0-9-]{2,59})
        (?![\w-]|\.[^\W_])
    """),
    ("phone_intl", "phone", r"""
        \+(?<![0-9A-Za-z_.,/+-]\+)[1-9][0-9 .()-]{6,22}[0-9]
        (?![0-9A-Za-z_]|[ .\-/][0-9]|\)[0-9])
    """),
    ("phone_nanp", "phone", r"""
        [(1-9](?<![0-9A-Za-z_.,/+-].)
        (?: (?<=1)[ .-](?:\([2-9][0-9]{2}\)[ ]?|[2-9][0-9]{2}[ .-])
          | (?<=\()[2-9][0-9]{2}\)[ ]?
          | (?<=[2-9])[0-9]{2}[ .-] )
        [2-9][0-9]{2}[ .-][0-9]{4}
        (?![0-9A-Za-z_]|[ .\-/][0-9]|\)[0-9])
    """),
    ("phone_trunk", "phone", r"""
        [(0](?<![0-9A-Za-z_.,/+-].)
        (?: (?<=\()0[1-9][0-9]{0,4}\)[ ]?
          | (?<=0)[1-9][0-9]{0,4}[ .\-/] )
        [0-9]{2,8}(?:[ .-][0-9]{2,8}){0,3}
        (?![0-9A-Za-z_]|[ .\-/][0-9]|\)[0-9])
    """),
    ("entropy", "high_entropy_secret", r"""
        [A-Za-z0-9+_-](?<![A-Za-z0-9+/_.-].)[A-Za-z0-9+/_-]{19,}={0,2}
        (?![A-Za-z0-9+/=_-]|\.[A-Za-z0-9])
    """),
)
_MARKERS: tuple[str, ...] = tuple(marker for marker, _, _ in _ALTERNATIVES)
_DETECTOR_OF: dict[str, str | None] = {marker: detector for marker, detector, _ in _ALTERNATIVES}
_MARKER_INDEX: dict[str, int] = {marker: i for i, marker in enumerate(_MARKERS)}
# The pseudo-detector bit of the alternatives that are not findings (``detector`` None).
_SKIP_BIT = 1 << len(PRIORITY)
_MARKER_BIT: dict[str, int] = {
    marker: _SKIP_BIT if detector is None else _BIT[detector] for marker, detector, _ in _ALTERNATIVES
}
_FLAGS = re.VERBOSE
# Every finding starts right after a character that is not an ASCII letter or digit (or at the start
# of the text: :func:`scan` searches "\n" + text). The combined regex *consumes* that character
# first, so that it starts with a character class and the regex engine skips in C over the letters
# and digits of words, where no finding can start, instead of trying every alternative at every
# position. (A consequence: a PEM block glued to a preceding letter, "x-----BEGIN", is not found.)
_BOUNDARY = r"[^A-Za-z0-9]"


def _alternative(marker: str, pattern: str) -> str:
    return f"(?:{pattern})(?P<{marker}>)"


@lru_cache(maxsize=None)
def _combined(mask: int) -> re.Pattern[str]:
    """The one regex of the detectors in ``mask``: boundary, then the alternatives in priority order."""
    parts = [_alternative(marker, pattern) for marker, _, pattern in _ALTERNATIVES if mask & _MARKER_BIT[marker]]
    return re.compile(f"{_BOUNDARY}(?:{'|'.join(parts)})", _FLAGS)


# --------------------------------------------------------------------------------------------------
# Validators: (text, match) -> (start, end) of the finding, or None. ``match`` is a match of one
# alternative, from the combined or the single pattern; its first character is the boundary.

Span = tuple[int, int] | None


def _whole(text: str, m: re.Match[str]) -> Span:
    return m.start() + 1, m.end()


def _validate_pem(text: str, m: re.Match[str]) -> Span:
    start, end = m.start() + 1, m.end()
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _b64url_decode(segment: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None


def _validate_jwt(text: str, m: re.Match[str]) -> Span:
    start, end = m.start() + 1, m.end()
    header = _b64url_decode(text[start:text.index(".", start)])
    if header is None:
        return None
    try:
        decoded = json.loads(header)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(decoded, dict) or not isinstance(decoded.get("alg"), str):
        return None
    return start, end


_AWS_CONTEXT = re.compile(
    r"(?<![A-Za-z])(?:aws|AWS|Aws|amazon|Amazon|AMAZON)(?![a-z])"
    r"|(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"
)
_AWS_CONTEXT_WINDOW = 256
# ``not value.strip(_HEX)``: only hex digits, in one C call (strip removes every character when, and
# only when, all of them are in the set).
_HEX = "0123456789abcdefABCDEF"
_HEX_DASH = _HEX + "-"


# ``<secret key name> = value`` / ``"SecretAccessKey": "value"``, ending where the value starts.
_SECRET_KEY_ASSIGNMENT = re.compile(
    r"""(?i:aws[_-]?secret[A-Za-z_-]*|secret[_-]?access[_-]?key|secret[_-]?key)["']?[ \t]*[:=][ \t]*["']?\Z"""
)


def _validate_aws_secret(text: str, m: re.Match[str]) -> Span:
    start, end = m.start() + 1, m.end()
    if _SECRET_KEY_ASSIGNMENT.search(text, max(0, start - 64), start):
        return start, end
    value = text[start:end]
    if not value.strip(_HEX) or value.isupper() or value.islower():
        return None
    if not any(c.isdigit() or c in "/+" for c in value):
        return None
    if _AWS_CONTEXT.search(text, max(0, start - _AWS_CONTEXT_WINDOW), start) or _AWS_CONTEXT.search(
        text, end, end + _AWS_CONTEXT_WINDOW
    ):
        return start, end
    return None


def _validate_bearer(text: str, m: re.Match[str]) -> Span:
    start, end = m.start() + 1, m.end()
    while end > start and text[end - 1] == ".":
        end -= 1
    token = text[start:end]
    if len(token) < 8:
        return None
    if any(c.isdigit() for c in token) or (not token.isupper() and not token.islower()):
        return start, end
    return None


# Luhn: the digit sum of twice each digit, as a translation of the digit characters.
_LUHN_DOUBLED = str.maketrans("0123456789", "0246813579")


def _luhn(digits: str) -> bool:
    doubled = digits[-2::-2].translate(_LUHN_DOUBLED)
    return (sum(digits[-1::-2].encode()) + sum(doubled.encode()) - 48 * len(digits)) % 10 == 0


def _card_network(digits: str) -> str | None:
    """The network whose IIN range and card lengths fit ``digits``, or None. (Prefixes of equal
    length compare as strings.)"""
    n = len(digits)
    p2, p3, p4, p6 = digits[:2], digits[:3], digits[:4], digits[:6]
    if digits[0] == "4":
        return "visa" if n in (13, 16, 19) else None
    if "51" <= p2 <= "55" or "2221" <= p4 <= "2720":
        return "mastercard" if n == 16 else None
    if p2 in ("34", "37"):
        return "amex" if n == 15 else None
    if "2200" <= p4 <= "2204":
        return "mir" if 16 <= n <= 19 else None
    if p4 == "6011" or "644" <= p3 <= "649" or p2 == "65" or "622126" <= p6 <= "622925":
        return "discover" if 16 <= n <= 19 else None
    if "3528" <= p4 <= "3589":
        return "jcb" if 16 <= n <= 19 else None
    if "300" <= p3 <= "305" or p4 == "3095" or p2 in ("36", "38", "39"):
        return "diners" if 14 <= n <= 19 else None
    if p2 in ("62", "81"):
        return "unionpay" if 16 <= n <= 19 else None
    if p2 in ("50", "56", "57", "58", "63", "67", "68", "69") or p4 in ("6759", "6761", "6762", "6763"):
        return "maestro" if 13 <= n <= 19 else None
    return None


def _validate_card(text: str, m: re.Match[str]) -> Span:
    # The pattern allows only the card groupings; here: one kind of separator, 13..19 digits, a
    # network's IIN and length, Luhn.
    start, end = m.start() + 1, m.end()
    raw = text[start:end]
    if " " in raw:
        if "-" in raw:
            return None
        digits = raw.replace(" ", "")
    else:
        digits = raw.replace("-", "")
    if not 13 <= len(digits) <= 19 or _card_network(digits) is None or not _luhn(digits):
        return None
    return start, end


# IBAN registry (SWIFT), country code -> total length.
_IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}


def _mod97(iban: str) -> bool:
    rearranged = iban[4:] + iban[:4]
    remainder = 0
    for ch in rearranged:
        value = ord(ch) - 48 if ch <= "9" else ord(ch) - 55  # A=10 ... Z=35
        remainder = (remainder * (100 if value > 9 else 10) + value) % 97
    return remainder == 1


def _validate_iban(text: str, m: re.Match[str]) -> Span:
    start, end = m.start() + 1, m.end()
    length = _IBAN_LENGTHS.get(text[start:start + 2])
    if length is None:
        return None
    # The candidate may run on into a following group ("... 7654 32 ABCD"): take exactly the
    # registry length, which must end on a group boundary.
    count = 0
    pos = start
    while pos < end and count < length:
        if text[pos] != " ":
            count += 1
        pos += 1
    if count < length or (pos < end and text[pos] != " "):
        return None
    if not _mod97(text[start:pos].replace(" ", "")):
        return None
    return start, pos


# Image and asset names look like addresses ("logo@2x.png"); none of these is a top-level domain.
_NOT_TLDS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "avif", "ico", "bmp", "tif", "tiff", "css", "js"})


def _validate_email(text: str, m: re.Match[str]) -> Span:
    start, end = m.span()
    start += 1
    if end - start > 254:
        return None
    # The local part has no "@" and the domain at least one ".": the TLD is after its last one.
    local, _, domain = text[start:end].partition("@")
    if local[0] == "." or local[-1] == "." or ".." in local:
        return None
    if domain.rpartition(".")[2].lower() in _NOT_TLDS:
        return None
    return start, end


_PHONE_SEPARATORS = re.compile(r"[ .()\-/]+")


def _validate_phone(text: str, m: re.Match[str]) -> Span:
    start, end = m.start() + 1, m.end()
    raw = text[start:end]
    digits = sum(map(str.isdigit, raw))  # map: half the cost of a generator, on every phone candidate
    first = raw[0]
    if first == "+":
        if not 8 <= digits <= 15 or raw.count("(") != raw.count(")"):
            return None
        body = raw[1:]
        if ".." in body or "--" in body or "  " in body:
            return None
        separators = _PHONE_SEPARATORS.findall(body)
        if separators == ["."]:  # "+1234567.89": a signed decimal
            return None
        return start, end
    if first == "0" or raw.startswith("(0"):
        return (start, end) if 9 <= digits <= 12 else None
    # NANP: one kind of separator between the groups (parentheses aside).
    body = raw[2:] if raw[:2] in ("1-", "1.", "1 ") else raw
    if not body.startswith("("):
        if body[3] != body[7]:
            return None
    return start, end


# high_entropy_secret thresholds, tuned on random tokens against 279k candidate runs taken from Python
# sources, file paths and package names (45 of those flagged, most of them base64 blobs or random ids
# themselves). Random tokens flagged: base62/base64/base64url 95-99% at 28..64 characters, 88-95% at
# 20..24; single-case base36 94% / 88%.
HIGH_ENTROPY_RATIO = 0.80          # entropy / log2(min(length, alphabet of the classes present))
HIGH_ENTROPY_CLASS_CHANGES = 0.60  # class changes / those expected of a random string
HIGH_ENTROPY_MAX_WORDS = 0.60      # share of characters in capitalised words ("Account")
_SEGMENT_SEPARATORS = re.compile(r"[-_+/]")
_EMBEDDED_HEX = re.compile(
    r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}|(?<![A-Za-z0-9])[0-9a-fA-F]{8,}(?![A-Za-z0-9])"
)
_CAPITALISED_WORD = re.compile(r"[A-Z][a-z]{2,}")
_HAS_DIGIT = re.compile(r"[0-9]").search
_HAS_LOWER = re.compile(r"[a-z]").search
_HAS_UPPER = re.compile(r"[A-Z]").search


def shannon_entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    n = len(value)
    if not n:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def _char_class(c: str) -> int:
    if "a" <= c <= "z":
        return 0
    if "A" <= c <= "Z":
        return 1
    if "0" <= c <= "9":
        return 2
    return 3


_CLASS_BYTES = bytes(_char_class(chr(b)) for b in range(256))


def _looks_random(token: str) -> bool:
    """The ``high_entropy_secret`` heuristic, for one maximal run of 20+ base64/base64url characters.

    Candidates are bounded by characters outside the alphabet, are not glued to a ``.`` and do not start
    with ``/``, so host and file names, dotted identifiers, versions, dates and the path of a URL after
    its host name are never candidates (a URL's query values are). A candidate is a finding when all
    of these hold:

    1. 20+ characters without ``=`` padding, with a letter and a digit (words and numbers fail);
    2. not pure hex (``[0-9a-fA-F-]``): **UUIDs, SHA-1/SHA-256 digests, git commit ids and hex ids are
       not flagged** -- in result data they are identifiers far more often than secrets, and a hex
       secret cannot be told from a digest by its characters (mask such columns by name instead);
       hex ids and UUIDs embedded between ``-``/``_`` are removed and the rest judged alone;
    3. not a path: starting with ``/`` or ``~``, or 3+ ``/`` segments all shorter than 20, it is
       judged by its longest segment; not a kebab/snake name: 4+ segments (split on ``-_+/``) all
       shorter than 12 characters;
    4. Shannon entropy >= :data:`HIGH_ENTROPY_RATIO` x log2(min(length, alphabet size of the
       character classes present)): identifiers repeat letters, random strings do not;
    5. adjacent letters/digits change class (lower/upper/digit) at least
       :data:`HIGH_ENTROPY_CLASS_CHANGES` x as often as a random string over the same classes would
       (~62% for base62): ``Python3TracebackLexer`` changes class rarely;
    6. at most :data:`HIGH_ENTROPY_MAX_WORDS` of its letters and digits lie in capitalised words
       (``[A-Z][a-z]{2,}``): CamelCase identifiers with a digit fail here.
    """
    core = token.rstrip("=")
    n = len(core)
    if n < 20 or not core.strip(_HEX_DASH):  # only hex digits and "-"
        return False
    if _HAS_DIGIT(core) is None:
        return False
    lower = _HAS_LOWER(core) is not None
    upper = _HAS_UPPER(core) is not None
    if not (lower or upper):
        return False
    if "/" in core:
        segments = [s for s in core.split("/") if s]
        if core[0] in "/~" or (len(segments) >= 3 and max(map(len, segments)) < 20):
            longest = max(segments, key=len, default="")
            return len(longest) >= 20 and _looks_random(longest)
    segments = _SEGMENT_SEPARATORS.split(core)
    if len(segments) >= 4 and max(map(len, segments)) < 12:
        return False
    if "-" in core or "_" in core:
        rest = _EMBEDDED_HEX.sub("", core)
        if len(rest) != n:
            return len(rest) >= 20 and _looks_random(rest)
    alnum = "".join(filter(str.isalnum, core))
    if alnum.isascii():
        # _char_class of each character, as bytes (a translation), and the class changes between
        # neighbours counted in C.
        classes: Sequence[int] = alnum.encode().translate(_CLASS_BYTES)
        changes = sum(map(operator.ne, classes, classes[1:]))
    else:
        classes = [_char_class(c) for c in alnum]
        changes = sum(1 for a, b in zip(classes, classes[1:]) if a != b)
    others = len(set(core)) - len(set(alnum))
    weights = [w for w, present in ((26, lower), (26, upper), (10, True)) if present]
    alphabet = sum(weights)
    if shannon_entropy(core) < HIGH_ENTROPY_RATIO * math.log2(min(n, alphabet + others)):
        return False
    expected = 1.0 - sum((w / alphabet) ** 2 for w in weights)
    if changes < HIGH_ENTROPY_CLASS_CHANGES * expected * (len(classes) - 1):
        return False
    words = sum(map(len, _CAPITALISED_WORD.findall(alnum)))
    return words <= HIGH_ENTROPY_MAX_WORDS * len(alnum)


def _validate_high_entropy(text: str, m: re.Match[str]) -> Span:
    start, end = m.start() + 1, m.end()
    return (start, end) if _looks_random(text[start:end]) else None


_VALIDATORS: dict[str, Callable[[str, re.Match[str]], Span]] = {
    "pem": _validate_pem,
    "pem_public": _whole,
    "jwt": _validate_jwt,
    "github": _whole,
    "gitlab": _whole,
    "aws_key": _whole,
    "aws_secret": _validate_aws_secret,
    "bearer": _validate_bearer,
    "card": _validate_card,
    "iban": _validate_iban,
    "ssn": _whole,
    "email": _validate_email,
    "phone_intl": _validate_phone,
    "phone_nanp": _validate_phone,
    "phone_trunk": _validate_phone,
    "entropy": _validate_high_entropy,
}
assert set(_VALIDATORS) == set(_MARKERS)


# --------------------------------------------------------------------------------------------------
# Scanning


@lru_cache(maxsize=256)
def _selection(detectors: tuple[str, ...] | None) -> tuple[int, int]:
    """(bit mask, shortest detectable length) of a detector selection."""
    if detectors is None:
        names: Iterable[str] = PRIORITY
    else:
        unknown = sorted(set(detectors) - DETECTOR_NAMES)
        if unknown:
            raise ValueError(f"unknown detector(s) {unknown}; known: {list(PRIORITY)}")
        names = detectors
    mask = 0
    for name in names:
        mask |= _BIT[name]
    min_length = min((_MIN_LENGTH[name] for name in PRIORITY if mask & _BIT[name]), default=1 << 62)
    return mask, min_length


_ALL_SELECTED = _selection(None)
_B = _BIT
_NEEDS_DIGIT = _B["credit_card"] | _B["iban"] | _B["us_ssn"] | _B["phone"] | _B["high_entropy_secret"]
_PEM, _JWT, _BEARER = _B["pem_private_key"], _B["jwt"], _B["bearer_token"]
_GITHUB, _GITLAB, _SSN, _EMAIL = _B["github_token"], _B["gitlab_token"], _B["us_ssn"], _B["email"]
_ENTROPY, _AWS_KEY, _AWS_SECRET = _B["high_entropy_secret"], _B["aws_access_key_id"], _B["aws_secret_access_key"]
_CARD, _IBAN, _PHONE = _B["credit_card"], _B["iban"], _B["phone"]
# Every detector but these three needs an ASCII letter somewhere.
_NEEDS_LETTER = ((1 << len(PRIORITY)) - 1) & ~(_B["credit_card"] | _B["us_ssn"] | _B["phone"])
# Detectors whose candidate is a run of 20+ characters of [A-Za-z0-9+/_-] (a finding of 20+ of them:
# ``A`` + 19 key characters, ``gl…-`` + 20, the entropy run), and those whose run is 40+ (the AWS secret's 40
# base64 characters, ``ghp_`` + 36).
_NEEDS_RUN20 = _AWS_KEY | _AWS_SECRET | _GITHUB | _GITLAB | _ENTROPY
_NEEDS_RUN40 = _AWS_SECRET | _GITHUB
# Detectors whose minimum length a text of length i reaches (i < 64; longer texts: all).
_BY_LENGTH: tuple[int, ...] = tuple(
    sum(_B[d.name] for d in DETECTORS if d.min_length <= i) for i in range(64)
)

# The prefilter looks at the text's UTF-8 bytes through two translation tables, each one C pass:
# ``_CLASSES`` maps ASCII digits to ``d``, letters to ``U``/``l`` (upper/lower), keeps other ASCII
# characters and maps every non-ASCII byte to a space; ``_RUNS`` maps [A-Za-z0-9+/_-] to ``e`` and
# everything else to a space. Both results are ASCII and become ``str`` (``str in str`` is the cheap
# membership test: ``bytes in bytes`` first tries its argument as an int, ``bytes.find`` parses a tuple
# of arguments). Then ``in`` answers what the regexes would have: "a digit?", "a ddd-dd-dddd shape?",
# "a run of 20 token characters?". Non-ASCII characters are bytes >= 0x80 in UTF-8 (lone surrogates
# too, with ``surrogatepass``): never a digit, a letter or a token character, as in the patterns
# (which write their classes in ASCII).
_CLASSES = bytes(
    ord("d") if 48 <= b <= 57 else ord("U") if 65 <= b <= 90 else ord("l") if 97 <= b <= 122
    else b if b < 128 else 32
    for b in range(256)
)
_RUNS = bytes(ord("e") if b < 128 and (chr(b).isalnum() or chr(b) in "+/_-") else 32 for b in range(256))
_RUN20, _RUN40 = "e" * 20, "e" * 40
# Masks without one group of detectors (positive: ``mask & ~group`` on a negative int costs more).
_EVERY = (_SKIP_BIT << 1) - 1
_NO_DIGIT, _NO_LETTER, _NO_RUN20, _NO_RUN40 = (_EVERY ^ _NEEDS_DIGIT, _EVERY ^ _NEEDS_LETTER, _EVERY ^ _NEEDS_RUN20,
                                               _EVERY ^ _NEEDS_RUN40)
_NO_AWS_KEY, _NO_EMAIL, _NO_SSN, _NO_PEM, _NO_IBAN = (_EVERY ^ _AWS_KEY, _EVERY ^ _EMAIL, _EVERY ^ _SSN,
                                                      _EVERY ^ _PEM, _EVERY ^ _IBAN)
_NO_CARD, _NO_PHONE, _NO_JWT, _NO_BEARER = _EVERY ^ _CARD, _EVERY ^ _PHONE, _EVERY ^ _JWT, _EVERY ^ _BEARER
_NO_GITHUB, _NO_GITLAB = _EVERY ^ _GITHUB, _EVERY ^ _GITLAB


def _possible_python(text: str, n: int, selected: int) -> int:
    """The detectors of ``selected`` that can match ``text`` at all, by cheap tests (length,
    characters, literals); each test runs only while its detectors are still in question. A detector
    is dropped only when no candidate of its pattern can be in the text or every candidate would be
    refused by its validator (as the scan would have): dropping it never changes the findings.
    (The reference of, and fallback for, the compiled ``_detect_fast.possible``.)"""
    mask = selected & _BY_LENGTH[n] if n < 64 else selected
    if not mask:
        return 0
    raw = text.encode("utf-8", "surrogatepass")
    classes = raw.translate(_CLASSES).decode()
    if mask & _NEEDS_DIGIT and "d" not in classes:
        mask &= _NO_DIGIT
    if mask & _NEEDS_LETTER and "l" not in classes and "U" not in classes:  # numbers, dates, times
        mask &= _NO_LETTER
    if mask & _AWS_KEY and "A" not in text:
        mask &= _NO_AWS_KEY
    if mask & _EMAIL and "@" not in text:
        mask &= _NO_EMAIL
    if mask & _SSN and "ddd-dd-dddd" not in classes:  # [0-8]dd-dd-dddd
        mask &= _NO_SSN
    if mask & (_PEM | _ENTROPY):
        if "-----BEGIN" not in text:
            mask &= _NO_PEM
        elif mask & _ENTROPY:
            # Public PEM blocks are stepped over (with what is in them) whenever high_entropy_secret
            # passed the tests above, whether or not it is dropped below.
            mask |= _SKIP_BIT
    if mask & _IBAN and "UUdd" not in classes:  # country code, check digits
        mask &= _NO_IBAN
    # A card number has 13..19 digits, four of them in a row; a phone number 8+ (its validator; NANP
    # 10), two in a row or one after the "+".
    if mask & _CARD and ("dddd" not in classes or classes.count("d") < 13):
        mask &= _NO_CARD
    if mask & _PHONE and (("dd" not in classes and "+d" not in classes) or classes.count("d") < 8):
        mask &= _NO_PHONE
    if mask & _NEEDS_RUN20:
        runs = raw.translate(_RUNS).decode()
        if _RUN20 not in runs:
            mask &= _NO_RUN20
        elif mask & _NEEDS_RUN40 and _RUN40 not in runs:
            mask &= _NO_RUN40
    if mask & _JWT and "eyJ" not in text:
        mask &= _NO_JWT
    if mask & _BEARER and "earer" not in text and "EARER" not in text:
        mask &= _NO_BEARER
    if mask & _GITHUB and "gh" not in text and "github_pat_" not in text:
        mask &= _NO_GITHUB
    if mask & _GITLAB and "gl" not in text and "GR1348941" not in text:
        mask &= _NO_GITLAB
    return mask


def _load_fast():
    """(the compiled prefilter, None) or (None, why it is not used)."""
    fast, problem = load_compiled("wardgate.core._detect_fast", Path(__file__).with_name("_detect_fast.pyx"),
                                  what="detector prefilter", disable_env="WARDGATE_DETECT_PYTHON")
    if fast is not None:
        if getattr(fast, "PRIORITY", None) != PRIORITY:
            return None, "the compiled detector prefilter numbers the detectors differently from masking.PRIORITY"
        fast.set_by_length(_BY_LENGTH)
    return fast, problem


_DETECT_FAST, _DETECT_PROBLEM = _load_fast()
_possible: Callable[[str, int, int], int] = _DETECT_FAST.possible if _DETECT_FAST is not None else _possible_python
warn_fallback(_DETECT_PROBLEM, "prefiltering detectors with the Python implementation (slower, same result)",
              logging.getLogger("wardgate.masking"))


# The search of each combination of detectors, compiled once (a dict: cheaper than an lru_cache call).
_SEARCH: dict[int, Callable[..., re.Match[str] | None]] = {}
# The last tuple of detector names scan was given and its selection: the rows of a result pass the same
# tuple (the plan's) every time, so an identity test replaces hashing it. A tuple of ``str`` cannot
# change; it is held here, so its id cannot be reused while it is compared.
_LAST_SELECTION: tuple[Any, tuple[int, int]] = (None, _ALL_SELECTED)
# A Finding built without the frozen dataclass's ``__init__`` (three ``object.__setattr__`` calls):
# the slots' own setters, a third of the cost. Same object, same equality and hash.
_new_finding = object.__new__
_set_detector, _set_start, _set_end = Finding.detector.__set__, Finding.start.__set__, Finding.end.__set__


def scan(text: str, detectors: Sequence[str] | None = None) -> list[Finding]:
    """Findings of the selected detectors (all when ``None``) in ``text``: sorted, non-overlapping.

    Overlaps are resolved leftmost first, then by :data:`PRIORITY` at the same start (see the module
    docstring). Raises ``ValueError`` for an unknown detector name.
    """
    global _LAST_SELECTION
    if detectors is None:
        selected, min_length = _ALL_SELECTED
    else:
        last = _LAST_SELECTION
        if last[0] is detectors:
            selected, min_length = last[1]
        elif type(detectors) is tuple:
            selection = _selection(detectors)
            _LAST_SELECTION = (detectors, selection)
            selected, min_length = selection
        else:
            selected, min_length = _selection(tuple(detectors))
    n = len(text)
    if n < min_length:
        return []
    mask = _possible(text, n, selected)
    if not mask:
        return []
    search = _SEARCH.get(mask)
    if search is None:
        search = _SEARCH[mask] = _combined(mask).search
    padded = "\n" + text  # positions below are in ``padded``; a finding's are one less
    findings: list[Finding] = []
    pos = 0
    if mask == _EMAIL:
        # Alone, the e-mail detector cannot find anything that starts (boundary character included)
        # before the local part of the first "@", which has at most 64 characters and no space (nor
        # "@": any later address starts after it). ``pos`` is in ``padded``: one more.
        at = text.index("@")
        pos = max(at - 64, text.rfind(" ", 0, at) + 1, 0)
    while pos < n:
        m = search(padded, pos)
        if m is None:
            break
        marker = m.lastgroup
        assert marker is not None
        span = _VALIDATORS[marker](padded, m)
        if span is None:
            marker, span = _fall_through(padded, m.start(), marker, mask)
            if span is None:
                pos = m.start() + 1
                continue
        detector = _DETECTOR_OF[marker]
        if detector is not None:
            finding = _new_finding(Finding)
            _set_detector(finding, detector)
            _set_start(finding, span[0] - 1)
            _set_end(finding, span[1] - 1)
            findings.append(finding)
        pos = span[1]
    return findings


@lru_cache(maxsize=None)
def _tail(mask: int, after: int) -> re.Pattern[str] | None:
    """The combined regex of the alternatives of ``mask`` that come after alternative ``after``."""
    parts = [_alternative(marker, pattern) for i, (marker, _, pattern) in enumerate(_ALTERNATIVES)
             if i > after and mask & _MARKER_BIT[marker]]
    return re.compile(f"{_BOUNDARY}(?:{'|'.join(parts)})", _FLAGS) if parts else None


def _fall_through(text: str, at: int, failed: str, mask: int) -> tuple[str, Span]:
    """The alternatives after ``failed`` (in priority order) tried after the boundary character at
    ``at``, as the alternation would have had ``failed``'s candidate not been there."""
    while True:
        tail = _tail(mask, _MARKER_INDEX[failed])
        m = tail.match(text, at) if tail is not None else None
        if m is None:
            return failed, None
        failed = m.lastgroup  # type: ignore[assignment]
        span = _VALIDATORS[failed](text, m)
        if span is not None:
            return failed, span


# --------------------------------------------------------------------------------------------------
# Strategies

_KINDS = ("redact", "partial", "hash", "null")
DEFAULT_MARKER = "[REDACTED]"


@dataclass(frozen=True, slots=True)
class MaskStrategy:
    """How a value (or a detected span) is masked.

    - ``redact``: replaced by ``marker``; when ``marker`` is None, ``"[REDACTED]"`` for a whole value
      and ``"[REDACTED:<detector>]"`` for a detected span.
    - ``partial``: the last ``keep`` significant characters stay, every other significant character
      becomes ``mask_char``; characters in ``separators`` (default space, ``-``, ``.``, ``(``, ``)``,
      ``+``, ``/``) stay where they are and do not count, so ``4111 1111 1111 1111`` becomes
      ``**** **** **** 1111`` and ``+1 (415) 555-2671`` becomes ``+* (***) ***-2671``. At most half
      of the significant characters are ever kept: a 4-character value is not shown whole by
      ``keep=4``. Length and separator positions are preserved (format-preserving).
    - ``hash``: ``prefix`` + the first ``length`` characters of ``HMAC-SHA256(key, value as UTF-8)``
      in lowercase ``hex`` or ``base32`` (no padding): deterministic for a key, so equal values give
      equal tokens and masked columns still join and group; without the key it cannot be reversed
      or confirmed by guessing. Default 16 hex characters (64 bits).
    - ``null``: the value becomes SQL NULL (``None``). A detected span inside a text cannot be NULL:
      :func:`mask_findings` redacts it instead; :func:`mask_text` returns ``None`` for the whole
      value when it has a finding.
    """

    kind: str = "redact"
    marker: str | None = None
    keep: int = 4
    mask_char: str = "*"
    separators: str = " -.()+/"
    prefix: str = "tok_"
    length: int = 16
    encoding: str = "hex"

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown masking strategy {self.kind!r}; known: {list(_KINDS)}")
        if self.keep < 0:
            raise ValueError("partial: keep must be >= 0")
        if len(self.mask_char) != 1:
            raise ValueError("partial: mask_char must be one character")
        if self.encoding not in ("hex", "base32"):
            raise ValueError("hash: encoding must be 'hex' or 'base32'")
        limit = 64 if self.encoding == "hex" else 52
        if not 8 <= self.length <= limit:
            raise ValueError(f"hash: length must be 8..{limit} for {self.encoding}")

    @classmethod
    def redact(cls, marker: str | None = None) -> "MaskStrategy":
        return cls("redact", marker=marker)

    @classmethod
    def partial(cls, keep: int = 4, *, mask_char: str = "*", separators: str = " -.()+/") -> "MaskStrategy":
        return cls("partial", keep=keep, mask_char=mask_char, separators=separators)

    @classmethod
    def hash(cls, *, prefix: str = "tok_", length: int = 16, encoding: str = "hex") -> "MaskStrategy":
        return cls("hash", prefix=prefix, length=length, encoding=encoding)

    @classmethod
    def null(cls) -> "MaskStrategy":
        return cls("null")

    @classmethod
    def from_spec(cls, spec: "str | MaskStrategy | Mapping[str, Any]") -> "MaskStrategy":
        """From a policy value: ``"redact"``, ``{"strategy": "partial", "keep": 4}``, ``{"kind": …}``."""
        if isinstance(spec, MaskStrategy):
            return spec
        if isinstance(spec, str):
            return cls(spec)
        options = dict(spec)
        kind = options.pop("strategy", None) or options.pop("kind", "redact")
        options.pop("match", None)
        return cls(kind, **options)


@lru_cache(maxsize=64)
def _ascii_tables(separators: str, mask_char: str) -> tuple[bytes, bytes] | None:
    """(separator bytes, byte table masking every other byte) for the ASCII fast path."""
    if not (separators.isascii() and mask_char.isascii()):
        return None
    table = bytes(b if chr(b) in separators else ord(mask_char) for b in range(256))
    return separators.encode(), table


def _partial(value: str, strategy: MaskStrategy) -> str:
    separators, mask_char = strategy.separators, strategy.mask_char
    tables = _ascii_tables(separators, mask_char) if value.isascii() else None
    if tables is not None:
        raw = value.encode()
        significant = len(raw.translate(None, tables[0]))
    else:
        significant = sum(1 for c in value if c not in separators)
    keep = min(strategy.keep, significant // 2)
    cut = len(value)  # the kept tail starts at the keep-th significant character from the end
    while keep:
        cut -= 1
        if value[cut] not in separators:
            keep -= 1
    if tables is not None:
        return raw[:cut].translate(tables[1]).decode() + value[cut:]
    return "".join(c if c in separators else mask_char for c in value[:cut]) + value[cut:]


def _token(value: str, strategy: MaskStrategy, key: bytes | None) -> str:
    if not key:
        raise ValueError("the hash strategy needs a non-empty key (bytes)")
    digest = hmac.digest(key, value.encode("utf-8", "surrogatepass"), "sha256")
    if strategy.encoding == "hex":
        encoded = digest.hex()
    else:
        encoded = base64.b32encode(digest).decode("ascii").rstrip("=").lower()
    return strategy.prefix + encoded[:strategy.length]


def apply(strategy: MaskStrategy, value: str, *, key: bytes | None = None,
          detector: str | None = None) -> str | None:
    """``value`` masked by ``strategy``; ``detector`` names the finding when ``value`` is a span."""
    kind = strategy.kind
    if kind == "redact":
        if strategy.marker is not None:
            return strategy.marker
        return DEFAULT_MARKER if detector is None else f"[REDACTED:{detector}]"
    if kind == "partial":
        return _partial(value, strategy)
    if kind == "hash":
        return _token(value, strategy, key)
    return None  # null


def value_masker(strategy: MaskStrategy, *, key: bytes | None = None) -> "Callable[[str], str | None]":
    """The fastest function masking a whole (non-NULL) value by ``strategy``: for per-row loops."""
    kind = strategy.kind
    if kind == "partial":
        return lambda value: _partial(value, strategy)
    if kind == "hash":
        if not key:
            raise ValueError("the hash strategy needs a non-empty key (bytes)")
        return lambda value: _token(value, strategy, key)
    constant = apply(strategy, "", key=key)
    return lambda value: constant


def mask_value(value: str | None, strategy: MaskStrategy, *, key: bytes | None = None) -> str | None:
    """A whole column value masked; NULL stays NULL. ``key`` is needed by ``hash`` only."""
    if value is None:
        return None
    return apply(strategy, value, key=key)


def mask_findings(text: str, findings: Sequence[Finding], strategy: MaskStrategy, *,
                  key: bytes | None = None) -> str:
    """``text`` with each finding's span masked (``null`` redacts the span: part of a text cannot be
    NULL). ``findings`` must be sorted and non-overlapping, as :func:`scan` returns them."""
    if not findings:
        return text
    span_strategy = strategy if strategy.kind != "null" else MaskStrategy("redact", marker=strategy.marker)
    out: list[str] = []
    pos = 0
    for f in findings:
        if f.start < pos or f.end > len(text) or f.start >= f.end:
            raise ValueError("findings must be sorted, non-overlapping, non-empty spans of the text")
        out.append(text[pos:f.start])
        masked = apply(span_strategy, text[f.start:f.end], key=key, detector=f.detector)
        assert masked is not None
        out.append(masked)
        pos = f.end
    out.append(text[pos:])
    return "".join(out)


def mask_text(text: str | None, strategy: MaskStrategy, *, key: bytes | None = None,
              detectors: Sequence[str] | None = None, report: "MaskReport | None" = None,
              column: str = "") -> str | None:
    """Scan ``text`` and mask what is found, recording counts in ``report`` under ``column``.

    Text without findings is returned unchanged (the same object). With ``null`` a text with any
    finding becomes ``None``.
    """
    if text is None:
        return None
    findings = scan(text, detectors)
    if not findings:
        return text
    if report is not None:
        report.record_findings(column, findings)
    if strategy.kind == "null":
        return None
    return mask_findings(text, findings, strategy, key=key)


# --------------------------------------------------------------------------------------------------
# Report


class MaskReport:
    """Counts of maskings per (column, detector) for the audit event; never holds a value.

    Whole-column masks are recorded with detector :data:`COLUMN` (``"column"``).
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}

    def record(self, column: str, detector: str = COLUMN, count: int = 1) -> None:
        if count:
            key = (column, detector)
            self._counts[key] = self._counts.get(key, 0) + count

    def record_findings(self, column: str, findings: Iterable[Finding]) -> None:
        counts = self._counts
        for f in findings:
            key = (column, f.detector)
            counts[key] = counts.get(key, 0) + 1

    def merge(self, other: "MaskReport") -> None:
        for (column, detector), count in other._counts.items():
            self.record(column, detector, count)

    def counts(self) -> dict[tuple[str, str], int]:
        return dict(self._counts)

    def entries(self) -> list[dict[str, Any]]:
        """``[{"column", "detector", "count"}]`` sorted, for the audit event."""
        return [{"column": c, "detector": d, "count": n} for (c, d), n in sorted(self._counts.items())]

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def clear(self) -> None:
        self._counts.clear()

    def __len__(self) -> int:
        return len(self._counts)

    def __bool__(self) -> bool:
        return bool(self._counts)

    def __iter__(self) -> Iterator[tuple[str, str, int]]:
        for (column, detector), count in sorted(self._counts.items()):
            yield column, detector, count

    def __repr__(self) -> str:
        return f"MaskReport({self.entries()!r})"
