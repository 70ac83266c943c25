# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled ``masking._possible_python``: the detector prefilter of ``masking.scan`` (which detectors
of a selection can match a text at all), in one pass over the text's characters.

It must return exactly what the reference returns (``tests/unit/test_detect_fast.py`` compares both on
random and adversarial texts under every selection; ``test_masking_differential.py`` compares the scan
with the original implementation): a detector wrongly dropped would leave a secret unmasked. Used only
when ``SOURCE_SHA256`` (the SHA-256 of this file, compiled in by ``setup.py``) matches this file.

Why in C: the reference is a dozen Python-level tests (two byte translations, ``in``, ``count``),
~10k instructions even for a short clean value, the most common one; here it is one call and a loop.

The tests, as in the reference (bits: ``masking.PRIORITY`` order; bit 13 is the PEM "step over" bit):
the length gate (``by_length``, masking._BY_LENGTH), an ASCII digit, an ASCII letter, ``A``, ``@``,
the shapes ``ddd-dd-dddd``, ``UUdd`` (U: ASCII uppercase, d: ASCII digit), ``dddd``, ``dd``, ``+d``,
the digit count, a run of 20 / 40 characters of ``[A-Za-z0-9+/_-]`` and the literals ``-----BEGIN``,
``eyJ``, ``earer``, ``EARER``, ``gh``, ``github_pat_``, ``gl``, ``GR1348941``. Non-ASCII characters
are none of these (the reference sees their UTF-8 bytes, all >= 0x80).
"""

from cpython.unicode cimport PyUnicode_GET_LENGTH, PyUnicode_READ, PyUnicode_KIND, PyUnicode_DATA

ctypedef unsigned char Py_UCS1

cdef extern from *:
    """
    #ifndef WARDGATE_DETECT_SOURCE_SHA256
    #define WARDGATE_DETECT_SOURCE_SHA256 ""
    #endif
    """
    const char *WARDGATE_DETECT_SOURCE_SHA256

SOURCE_SHA256 = WARDGATE_DETECT_SOURCE_SHA256.decode()

# Detector bits, masking.PRIORITY order (masking refuses this module if its PRIORITY differs).
PRIORITY = ("pem_private_key", "jwt", "github_token", "gitlab_token", "aws_access_key_id", "aws_secret_access_key",
            "bearer_token", "credit_card", "iban", "us_ssn", "email", "phone", "high_entropy_secret")
cdef enum:
    PEM = 1 << 0
    JWT = 1 << 1
    GITHUB = 1 << 2
    GITLAB = 1 << 3
    AWS_KEY = 1 << 4
    AWS_SECRET = 1 << 5
    BEARER = 1 << 6
    CARD = 1 << 7
    IBAN = 1 << 8
    SSN = 1 << 9
    EMAIL = 1 << 10
    PHONE = 1 << 11
    ENTROPY = 1 << 12
    SKIP = 1 << 13
    NEEDS_DIGIT = CARD | IBAN | SSN | PHONE | ENTROPY
    NEEDS_LETTER = ((1 << 13) - 1) & ~(CARD | SSN | PHONE)
    NEEDS_RUN20 = AWS_KEY | AWS_SECRET | GITHUB | GITLAB | ENTROPY
    NEEDS_RUN40 = AWS_SECRET | GITHUB

# Character classes of ASCII: 1 digit, 2 uppercase, 4 lowercase, 8 run character [A-Za-z0-9+/_-].
cdef unsigned char _CLASS[128]
cdef int _c
for _c in range(128):
    _CLASS[_c] = 0
for _c in range(48, 58):
    _CLASS[_c] = 1 | 8
for _c in range(65, 91):
    _CLASS[_c] = 2 | 8
for _c in range(97, 123):
    _CLASS[_c] = 4 | 8
for _c in b"+/_-":
    _CLASS[_c] = 8

cdef long _BY_LENGTH[64]
_by_length_ready = False


def set_by_length(by_length):
    """Copy ``masking._BY_LENGTH`` (the detectors a text of each length < 64 can hold)."""
    global _by_length_ready
    if len(by_length) != 64:
        raise ValueError("by_length must have 64 entries")
    for i in range(64):
        _BY_LENGTH[i] = by_length[i]
    _by_length_ready = True


cdef inline unsigned char _cls(Py_UCS4 ch) noexcept:
    return _CLASS[ch] if ch < 128 else 0


cdef inline bint _literal(int kind, const void *data, Py_ssize_t n, Py_ssize_t i, const char *lit,
                          Py_ssize_t m) noexcept:
    """``lit`` (ASCII, length m) at position i of the text."""
    cdef Py_ssize_t j
    if i + m > n:
        return False
    for j in range(m):
        if PyUnicode_READ(kind, data, i + j) != <Py_UCS4>lit[j]:
            return False
    return True


def possible(str text, Py_ssize_t n, long selected):
    """The detectors of ``selected`` that can match ``text`` (``n`` its length), as
    ``masking._possible_python``."""
    if not _by_length_ready:
        raise RuntimeError("set_by_length was not called")
    if n != PyUnicode_GET_LENGTH(text):
        raise ValueError("n must be the length of text")
    cdef long mask = (selected & _BY_LENGTH[n]) if n < 64 else selected
    if not mask:
        return 0
    cdef int kind = PyUnicode_KIND(text)
    cdef const void *data = PyUnicode_DATA(text)
    cdef Py_ssize_t i, digits = 0, digit_run = 0, longest_digits = 0, token_run = 0, longest_run = 0
    cdef Py_UCS4 ch, prev = 0
    cdef unsigned char cls
    cdef bint letter = False, has_a = False, at = False, ssn_shape = False, iban_shape = False
    cdef bint two_digits = False, plus_digit = False, begin = False, eyj = False, bearer = False
    cdef bint github = False, gitlab = False
    for i in range(n):
        ch = (<const Py_UCS1 *>data)[i] if kind == 1 else PyUnicode_READ(kind, data, i)
        cls = _cls(ch)
        if cls == 12 and ch != 101 and ch != 103:
            # The commonest character, a lowercase letter that starts no literal: the body below,
            # shortened to what it does for one.
            token_run += 1
            digit_run = 0
            letter = True
            prev = ch
            continue
        if cls & 8:
            token_run += 1
        elif token_run:
            if token_run > longest_run:
                longest_run = token_run
            token_run = 0
        if cls & 1:
            digits += 1
            digit_run += 1
            if digit_run > longest_digits:
                longest_digits = digit_run
            if digit_run >= 2:
                two_digits = True
                if digit_run == 2 and i >= 3 and _cls(PyUnicode_READ(kind, data, i - 2)) & 2 \
                        and _cls(PyUnicode_READ(kind, data, i - 3)) & 2:
                    iban_shape = True  # UUdd
                elif digit_run >= 4 and i >= 10 and not ssn_shape:
                    # ddd-dd-dddd ending here
                    if (PyUnicode_READ(kind, data, i - 4) == 45 and PyUnicode_READ(kind, data, i - 7) == 45
                            and _cls(PyUnicode_READ(kind, data, i - 5)) & 1
                            and _cls(PyUnicode_READ(kind, data, i - 6)) & 1
                            and _cls(PyUnicode_READ(kind, data, i - 8)) & 1
                            and _cls(PyUnicode_READ(kind, data, i - 9)) & 1
                            and _cls(PyUnicode_READ(kind, data, i - 10)) & 1):
                        ssn_shape = True
            elif prev == 43:  # +d
                plus_digit = True
        else:
            digit_run = 0
            if cls & 6:
                letter = True
                if ch == 65:  # A
                    has_a = True
                elif ch == 101:  # e: eyJ, (b)earer
                    if not eyj and _literal(kind, data, n, i, b"eyJ", 3):
                        eyj = True
                    elif not bearer and _literal(kind, data, n, i, b"earer", 5):
                        bearer = True
                elif ch == 69:  # E: (B)EARER
                    if not bearer and _literal(kind, data, n, i, b"EARER", 5):
                        bearer = True
                elif ch == 103:  # g: gh, gl, github_pat_
                    if i + 1 < n:
                        if PyUnicode_READ(kind, data, i + 1) == 104:
                            github = True
                        elif PyUnicode_READ(kind, data, i + 1) == 108:
                            gitlab = True
                        elif not github and _literal(kind, data, n, i, b"github_pat_", 11):
                            github = True
                elif ch == 71:  # G: GR1348941
                    if not gitlab and _literal(kind, data, n, i, b"GR1348941", 9):
                        gitlab = True
            elif ch == 64:
                at = True
            elif ch == 45:  # -----BEGIN
                if not begin and _literal(kind, data, n, i, b"-----BEGIN", 10):
                    begin = True
        prev = ch
    if token_run > longest_run:
        longest_run = token_run
    # The reference's sequence of tests, in its order (the step-over bit depends on it).
    if mask & NEEDS_DIGIT and digits == 0:
        mask &= ~NEEDS_DIGIT
    if mask & NEEDS_LETTER and not letter:
        mask &= ~NEEDS_LETTER
    if mask & AWS_KEY and not has_a:
        mask &= ~AWS_KEY
    if mask & EMAIL and not at:
        mask &= ~EMAIL
    if mask & SSN and not ssn_shape:
        mask &= ~SSN
    if mask & (PEM | ENTROPY):
        if not begin:
            mask &= ~PEM
        elif mask & ENTROPY:
            mask |= SKIP
    if mask & IBAN and not iban_shape:
        mask &= ~IBAN
    if mask & CARD and (digits < 13 or longest_digits < 4):
        mask &= ~CARD
    if mask & PHONE and ((not two_digits and not plus_digit) or digits < 8):
        mask &= ~PHONE
    if mask & NEEDS_RUN20:
        if longest_run < 20:
            mask &= ~NEEDS_RUN20
        elif mask & NEEDS_RUN40 and longest_run < 40:
            mask &= ~NEEDS_RUN40
    if mask & JWT and not eyj:
        mask &= ~JWT
    if mask & BEARER and not bearer:
        mask &= ~BEARER
    if mask & GITHUB and not github:
        mask &= ~GITHUB
    if mask & GITLAB and not gitlab:
        mask &= ~GITLAB
    return mask

