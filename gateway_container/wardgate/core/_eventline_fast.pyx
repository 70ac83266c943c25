# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled audit event lines: the per-event formatting and hashing of ``SessionLog.emit_json``.

:func:`event_line` must return exactly what ``audit._event_line_python`` returns (that function is
the reference and the fallback; ``tests/unit/test_eventline_fast.py`` compares both on random
input). :mod:`wardgate.core.audit` uses this module only when ``SOURCE_SHA256`` (the SHA-256 of this
file, passed in by ``setup.py`` at build time) matches the ``.pyx`` next to it.

Why in C: per event, Python spends ~3 µs on the ``bytes %`` format, the ``hashlib`` object, its hex
digest and the date text; two events per statement made that a large part of what recording costs.
SHA-256 is OpenSSL's (``libcrypto``, which Python's own ``hashlib`` uses). One digest context is
shared: safe because :func:`event_line` holds the GIL throughout (it never releases it).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdio cimport snprintf
from libc.string cimport memcpy

cdef extern from *:
    """
    #ifndef WARDGATE_EVENTLINE_SOURCE_SHA256
    #define WARDGATE_EVENTLINE_SOURCE_SHA256 ""
    #endif
    """
    const char *WARDGATE_EVENTLINE_SOURCE_SHA256

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct tm:
        pass
    tm *gmtime_r(const time_t *timep, tm *result)
    size_t strftime(char *s, size_t maxsize, const char *fmt, const tm *t)

cdef extern from "<openssl/evp.h>" nogil:
    ctypedef struct EVP_MD:
        pass
    ctypedef struct EVP_MD_CTX:
        pass
    EVP_MD *EVP_MD_fetch(void *libctx, const char *algorithm, const char *properties)
    EVP_MD_CTX *EVP_MD_CTX_new()
    int EVP_DigestInit_ex2(EVP_MD_CTX *ctx, const EVP_MD *type, void *params)
    int EVP_DigestUpdate(EVP_MD_CTX *ctx, const void *d, size_t cnt)
    int EVP_DigestFinal_ex(EVP_MD_CTX *ctx, unsigned char *md, unsigned int *s)

# The SHA-256 implementation is fetched once and one context is reused (the GIL serializes callers):
# OpenSSL 3's one-shot SHA256() looks the algorithm up on every call.
cdef EVP_MD *_sha256 = EVP_MD_fetch(NULL, b"SHA256", NULL)
cdef EVP_MD_CTX *_context = EVP_MD_CTX_new()
if _sha256 == NULL or _context == NULL:
    raise ImportError("OpenSSL's SHA-256 is not available")

SOURCE_SHA256 = WARDGATE_EVENTLINE_SOURCE_SHA256.decode()

cdef long long _cached_second = -1
cdef char _cached_stamp[32]  # "YYYY-MM-DDTHH:MM:SS" of _cached_second
cdef Py_ssize_t _cached_stamp_len = 0
cdef const char *_HEX = b"0123456789abcdef"


cdef inline char *_put(char *out, const char *data, Py_ssize_t size) noexcept nogil:
    memcpy(out, data, size)
    return out + size


def event_line(bytes sid, long long seq, double now, bytes event_type, bytes members, bytes fixed,
               bytes prev_hash):
    """``(line, sha256_hex)``: the JSON line of one event (newline included) and the hex SHA-256
    of it, as ASCII bytes — the next event's ``prev_hash``. See ``audit._LINE`` for the layout."""
    global _cached_second, _cached_stamp_len
    cdef long long second = <long long>now
    cdef long micros = <long>((now - <double>second) * 1000000.0)
    cdef time_t when
    cdef tm parts
    if second != _cached_second:
        when = <time_t>second
        if gmtime_r(&when, &parts) == NULL:
            raise ValueError(f"event time {now!r} cannot be formatted")
        _cached_stamp_len = strftime(_cached_stamp, sizeof(_cached_stamp), "%Y-%m-%dT%H:%M:%S", &parts)
        _cached_second = second
    cdef char padded_seq[32]
    cdef char plain_seq[32]
    cdef char micro_text[16]
    cdef int padded_len = snprintf(padded_seq, sizeof(padded_seq), "%06lld", seq)
    cdef int plain_len = snprintf(plain_seq, sizeof(plain_seq), "%lld", seq)
    cdef int micro_len = snprintf(micro_text, sizeof(micro_text), "%06ld", micros)
    cdef Py_ssize_t sid_len = PyBytes_GET_SIZE(sid)
    cdef Py_ssize_t type_len = PyBytes_GET_SIZE(event_type)
    cdef Py_ssize_t members_len = PyBytes_GET_SIZE(members)
    cdef Py_ssize_t fixed_len = PyBytes_GET_SIZE(fixed)
    cdef Py_ssize_t hash_len = PyBytes_GET_SIZE(prev_hash)
    # {"id":"<sid>-<seq06>","time":"<stamp>.<micros>Z","type":"<type>","seq":<seq>[,<members>]<fixed>,"prev_hash":"<hash>"}\n
    cdef Py_ssize_t size = (7 + sid_len + 1 + padded_len + 10 + _cached_stamp_len + 1 + micro_len + 11 + type_len + 8
                            + plain_len + (1 if members_len else 0) + members_len + fixed_len + 14 + hash_len + 3)
    line = PyBytes_FromStringAndSize(NULL, size)
    cdef char *start = PyBytes_AS_STRING(line)
    cdef char *out = start
    out = _put(out, b'{"id":"', 7)
    out = _put(out, PyBytes_AS_STRING(sid), sid_len)
    out = _put(out, b"-", 1)
    out = _put(out, padded_seq, padded_len)
    out = _put(out, b'","time":"', 10)
    out = _put(out, _cached_stamp, _cached_stamp_len)
    out = _put(out, b".", 1)
    out = _put(out, micro_text, micro_len)
    out = _put(out, b'Z","type":"', 11)
    out = _put(out, PyBytes_AS_STRING(event_type), type_len)
    out = _put(out, b'","seq":', 8)
    out = _put(out, plain_seq, plain_len)
    if members_len:
        out = _put(out, b",", 1)
        out = _put(out, PyBytes_AS_STRING(members), members_len)
    out = _put(out, PyBytes_AS_STRING(fixed), fixed_len)
    out = _put(out, b',"prev_hash":"', 14)
    out = _put(out, PyBytes_AS_STRING(prev_hash), hash_len)
    out = _put(out, b'"}\n', 3)
    if out - start != size:  # a layout mistake must never produce a torn or padded line
        raise AssertionError(f"event line size {out - start} != {size}")
    cdef unsigned char digest[32]
    cdef unsigned int digest_len = 0
    if (EVP_DigestInit_ex2(_context, _sha256, NULL) != 1 or EVP_DigestUpdate(_context, start, <size_t>size) != 1
            or EVP_DigestFinal_ex(_context, digest, &digest_len) != 1 or digest_len != 32):
        raise RuntimeError("OpenSSL SHA-256 failed")
    hexed = PyBytes_FromStringAndSize(NULL, 64)
    cdef char *hex_out = PyBytes_AS_STRING(hexed)
    cdef int i
    for i in range(32):
        hex_out[2 * i] = _HEX[digest[i] >> 4]
        hex_out[2 * i + 1] = _HEX[digest[i] & 15]
    return line, hexed
