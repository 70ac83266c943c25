# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled audit event chain: :class:`PendingEvents` and :class:`EventChain` of
:mod:`wardgate.core.eventchain` (the reference and fallback; read its docstrings for the contract).

They must produce exactly the reference's bytes (``tests/unit/test_eventchain_fast.py`` compares
both on random events). :mod:`wardgate.core.audit` uses this module only when ``SOURCE_SHA256`` (the
SHA-256 of this file, passed in by ``setup.py`` at build time) matches the ``.pyx`` next to it.

Why in C: two events are recorded for every statement. In Python each cost ~2 µs of glue around the
line (method calls, the members' dict and ``orjson``, ``bytes %``, ``hashlib`` and its hex digest, the
list of lines); here a line is formatted straight into one growing buffer, where it is hashed in
place (OpenSSL's SHA-256, which Python's ``hashlib`` uses too), and no Python object is made per
event but its id. Everything runs holding the GIL (never released), so the shared digest context
and buffers are safe.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_FromStringAndSize
from libc.string cimport memcmp, memcpy

cdef extern from *:
    """
    #ifndef WARDGATE_EVENTCHAIN_SOURCE_SHA256
    #define WARDGATE_EVENTCHAIN_SOURCE_SHA256 ""
    #endif
    """
    const char *WARDGATE_EVENTCHAIN_SOURCE_SHA256

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct tm:
        pass
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int CLOCK_REALTIME
    int clock_gettime(int clock, timespec *ts)
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

# The SHA-256 implementation is fetched once and one context is reused: OpenSSL 3's one-shot
# SHA256() looks the algorithm up on every call.
cdef EVP_MD *_sha256 = EVP_MD_fetch(NULL, b"SHA256", NULL)
cdef EVP_MD_CTX *_context = EVP_MD_CTX_new()
if _sha256 == NULL or _context == NULL:
    raise ImportError("OpenSSL's SHA-256 is not available")

SOURCE_SHA256 = WARDGATE_EVENTCHAIN_SOURCE_SHA256.decode()

cdef long long _cached_second = -1
cdef char _cached_stamp[32]  # "YYYY-MM-DDTHH:MM:SS" of _cached_second
cdef Py_ssize_t _cached_stamp_len = 0
cdef const char *_HEX = b"0123456789abcdef"
cdef double _test_clock = -1.0
cdef const char *_RESULT_END = b',"controls":["AU-3","AU-12"]'
cdef Py_ssize_t _RESULT_END_LEN = 28
cdef Py_ssize_t _KEEP_CAPACITY = 1 << 20  # a buffer grown past this by a huge statement shrinks back


def set_test_clock(now):
    """Make every event read ``now`` as its time (None: the system clock again). Tests only."""
    global _test_clock
    _test_clock = -1.0 if now is None else <double>now


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    if _test_clock >= 0.0:
        return _test_clock
    clock_gettime(CLOCK_REALTIME, &ts)
    # time.time()'s arithmetic, so the text is what the reference would print for the same instant
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline char *_put(char *out, const char *data, Py_ssize_t size) noexcept nogil:
    memcpy(out, data, size)
    return out + size


cdef inline int _digits(unsigned long long value) noexcept nogil:
    cdef int n = 1
    while value >= 10:
        value //= 10
        n += 1
    return n


cdef inline char *_put_int(char *out, long long value, int width) noexcept nogil:
    """``value`` in decimal, zero-padded to ``width`` digits (``%0<width>d``; ``-`` before the digits)."""
    cdef unsigned long long magnitude
    cdef int n, i
    if value < 0:
        out[0] = 45  # '-'
        out += 1
        magnitude = <unsigned long long>(-(value + 1)) + 1
        width -= 1
    else:
        magnitude = <unsigned long long>value
    n = _digits(magnitude)
    if n < width:
        n = width
    i = n - 1
    while i >= 0:
        out[i] = 48 + <char>(magnitude % 10)
        magnitude //= 10
        i -= 1
    return out + n


cdef inline int _int_len(long long value, int width) noexcept nogil:
    cdef unsigned long long magnitude
    cdef int sign = 0
    cdef int n
    if value < 0:
        sign = 1
        magnitude = <unsigned long long>(-(value + 1)) + 1
        width -= 1
    else:
        magnitude = <unsigned long long>value
    n = _digits(magnitude)
    return sign + (n if n > width else width)


# --- JSON strings, escaped as orjson escapes them: ", \ and control characters; the rest as UTF-8 ----
cdef inline Py_ssize_t _json_len(const unsigned char *text, Py_ssize_t size) noexcept nogil:
    cdef Py_ssize_t total = size + 2
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(size):
        c = text[i]
        if c < 32:
            total += 1 if (c == 8 or c == 9 or c == 10 or c == 12 or c == 13) else 5
        elif c == 34 or c == 92:
            total += 1
    return total


cdef inline char *_put_json(char *out, const unsigned char *text, Py_ssize_t size) noexcept nogil:
    cdef Py_ssize_t i
    cdef unsigned char c
    out[0] = 34
    out += 1
    for i in range(size):
        c = text[i]
        if c >= 32 and c != 34 and c != 92:
            out[0] = c
            out += 1
        elif c == 34 or c == 92:
            out[0] = 92
            out[1] = c
            out += 2
        elif c == 8:
            out = _put(out, b"\\b", 2)
        elif c == 9:
            out = _put(out, b"\\t", 2)
        elif c == 10:
            out = _put(out, b"\\n", 2)
        elif c == 12:
            out = _put(out, b"\\f", 2)
        elif c == 13:
            out = _put(out, b"\\r", 2)
        else:
            out = _put(out, b"\\u00", 4)
            out[0] = _HEX[c >> 4]
            out[1] = _HEX[c & 15]
            out += 2
    out[0] = 34
    return out + 1


cdef struct _Text:
    const unsigned char *data  # NULL: JSON null
    Py_ssize_t size
    Py_ssize_t json_size


cdef inline _Text _text(object value) except *:
    """A str (or None) to be written as a JSON string (or null)."""
    cdef _Text text
    cdef Py_ssize_t size = 0
    if value is None:
        text.data = NULL
        text.size = 0
        text.json_size = 4
        return text
    if not isinstance(value, str):
        raise TypeError(f"expected str or None, not {type(value).__name__}")
    text.data = <const unsigned char *>PyUnicode_AsUTF8AndSize(value, &size)  # raises on surrogates
    text.size = size
    text.json_size = _json_len(text.data, size)
    return text


cdef inline char *_put_text(char *out, _Text text) noexcept nogil:
    if text.data == NULL:
        return _put(out, b"null", 4)
    return _put_json(out, text.data, text.size)


cdef inline char *_put_member(char *out, const char *name, Py_ssize_t name_size, _Text value) noexcept nogil:
    """``name`` (already quoted, with its colon and any leading comma) then ``value``."""
    return _put_text(_put(out, name, name_size), value)


cdef class PendingEvents:
    """Event lines appended and not yet written, in one buffer; see ``eventchain.PendingEvents``."""

    cdef char *_buffer
    cdef Py_ssize_t _size
    cdef Py_ssize_t _capacity
    cdef readonly Py_ssize_t count
    cdef readonly list chains
    cdef public double last_time
    cdef public bint unordered

    def __cinit__(self):
        self.chains = []

    def __dealloc__(self):
        PyMem_Free(self._buffer)

    def __len__(self):
        return self.count

    def data(self):
        """Every unwritten line, in order."""
        return PyBytes_FromStringAndSize(self._buffer, self._size)

    def account(self, dict sessions):
        """Fold the chains of the unwritten lines into a segment's ``sessions``; see the reference."""
        cdef EventChain chain
        cdef list entry
        for item in self.chains:
            chain = <EventChain>item
            entry = sessions.get(chain.session_id)
            if entry is None:
                entry = [chain.seq - chain.unwritten + 1, chain.seq,
                         PyBytes_FromStringAndSize(chain._prev_hash, 64), False]
                sessions[chain.session_id] = entry
            else:
                entry[1] = chain.seq
                entry[2] = PyBytes_FromStringAndSize(chain._prev_hash, 64)
            if chain.ended_seq is not None and chain.ended_seq >= entry[0]:
                entry[3] = True
            chain.unwritten = 0

    def clear(self):
        """Forget the unwritten lines (they were written); ``last_time`` stays."""
        cdef char *smaller
        self._size = 0
        self.count = 0
        self.chains.clear()
        self.unordered = False
        if self._capacity > _KEEP_CAPACITY:
            smaller = <char *>PyMem_Realloc(self._buffer, 65536)
            if smaller != NULL:
                self._buffer = smaller
                self._capacity = 65536

    cdef char *_reserve(self, Py_ssize_t size) except NULL:
        """Room for ``size`` more bytes at the end; the pointer is valid until the next reserve."""
        cdef Py_ssize_t wanted = self._size + size
        cdef Py_ssize_t capacity
        cdef char *grown
        if wanted > self._capacity:
            capacity = self._capacity * 2 if self._capacity else 65536
            if capacity < wanted:
                capacity = wanted
            grown = <char *>PyMem_Realloc(self._buffer, capacity)
            if grown == NULL:
                raise MemoryError("no memory for audit events")
            self._buffer = grown
            self._capacity = capacity
        return self._buffer + self._size


cdef class EventChain:
    """One session's events; see ``eventchain.EventChain``."""

    cdef readonly PendingEvents pending
    cdef readonly str session_id
    cdef bytes _sid
    cdef public long long seq
    cdef char _prev_hash[64]
    cdef public bytes fixed
    cdef public long long unwritten
    cdef public object ended_seq
    # the line being appended: where it starts in the buffer and how long it must be
    cdef Py_ssize_t _line_start
    cdef Py_ssize_t _line_size

    def __init__(self, PendingEvents pending, str session_id):
        self.pending = pending
        self.session_id = session_id
        self._sid = session_id.encode()
        self.seq = 0
        memcpy(self._prev_hash, b"0000000000000000000000000000000000000000000000000000000000000000", 64)
        self.fixed = b""
        self.unwritten = 0
        self.ended_seq = None

    @property
    def prev_hash(self):
        return PyBytes_FromStringAndSize(self._prev_hash, 64)

    @prev_hash.setter
    def prev_hash(self, bytes value):
        if PyBytes_GET_SIZE(value) != 64:
            raise ValueError("prev_hash must be 64 hex characters")
        memcpy(self._prev_hash, PyBytes_AS_STRING(value), 64)

    cdef char *_begin(self, const char *event_type, Py_ssize_t type_size, Py_ssize_t members_size) except NULL:
        """Reserve the whole line and write it up to where the event's members go."""
        global _cached_second, _cached_stamp_len
        cdef PendingEvents pending = self.pending
        cdef long long seq = self.seq + 1
        cdef double now = _now()
        cdef long long second = <long long>now
        cdef long long micros = <long long>((now - <double>second) * 1000000.0)
        cdef time_t when
        cdef tm parts
        if now < pending.last_time:
            pending.unordered = True
        pending.last_time = now
        if second != _cached_second:
            when = <time_t>second
            if gmtime_r(&when, &parts) == NULL:
                raise ValueError(f"event time {now!r} cannot be formatted")
            _cached_stamp_len = strftime(_cached_stamp, sizeof(_cached_stamp), "%Y-%m-%dT%H:%M:%S", &parts)
            _cached_second = second
        cdef Py_ssize_t sid_size = PyBytes_GET_SIZE(self._sid)
        cdef Py_ssize_t fixed_size = PyBytes_GET_SIZE(self.fixed)
        # {"id":"<sid>-<seq06>","time":"<stamp>.<micros06>Z","type":"<type>","seq":<seq>[,<members>]<fixed>,"prev_hash":"<hash>"}\n
        cdef Py_ssize_t size = (7 + sid_size + 1 + _int_len(seq, 6) + 10 + _cached_stamp_len + 1 + _int_len(micros, 6)
                                + 11 + type_size + 8 + _int_len(seq, 0) + (1 + members_size if members_size else 0)
                                + fixed_size + 14 + 64 + 3)
        cdef char *out = pending._reserve(size)
        self._line_start = pending._size
        self._line_size = size
        out = _put(out, b'{"id":"', 7)
        out = _put(out, PyBytes_AS_STRING(self._sid), sid_size)
        out[0] = 45  # '-'
        out = _put_int(out + 1, seq, 6)
        out = _put(out, b'","time":"', 10)
        out = _put(out, _cached_stamp, _cached_stamp_len)
        out[0] = 46  # '.'
        out = _put_int(out + 1, micros, 6)
        out = _put(out, b'Z","type":"', 11)
        out = _put(out, event_type, type_size)
        out = _put(out, b'","seq":', 8)
        out = _put_int(out, seq, 0)
        if members_size:
            out[0] = 44  # ','
            out += 1
        return out

    cdef object _finish(self, char *out, bint ended, bint want_id):
        """Write the rest of the line begun by :meth:`_begin`, hash it, account for it; return the
        event's id (or None when ``want_id`` is false)."""
        cdef PendingEvents pending = self.pending
        cdef char *start = pending._buffer + self._line_start
        cdef unsigned char digest[32]
        cdef unsigned int digest_size = 0
        cdef int i
        out = _put(out, PyBytes_AS_STRING(self.fixed), PyBytes_GET_SIZE(self.fixed))
        out = _put(out, b',"prev_hash":"', 14)
        out = _put(out, self._prev_hash, 64)
        out = _put(out, b'"}\n', 3)
        if out - start != self._line_size:  # a layout mistake must never produce a torn or padded line
            raise AssertionError(f"event line size {out - start} != {self._line_size}")
        if (EVP_DigestInit_ex2(_context, _sha256, NULL) != 1
                or EVP_DigestUpdate(_context, start, <size_t>self._line_size) != 1
                or EVP_DigestFinal_ex(_context, digest, &digest_size) != 1 or digest_size != 32):
            raise RuntimeError("OpenSSL SHA-256 failed")
        for i in range(32):
            self._prev_hash[2 * i] = _HEX[digest[i] >> 4]
            self._prev_hash[2 * i + 1] = _HEX[digest[i] & 15]
        # Committed only now: an exception above leaves neither the line nor the sequence number used.
        pending._size += self._line_size
        pending.count += 1
        self.seq += 1
        if not self.unwritten:
            pending.chains.append(self)
        self.unwritten += 1
        if ended:
            self.ended_seq = self.seq
        if not want_id:
            return None
        # the id is the line's first member: {"id":"<sid>-<seq06>"
        return PyUnicode_FromStringAndSize(start + 7, PyBytes_GET_SIZE(self._sid) + 1 + _int_len(self.seq, 6))

    def append_event(self, str event_type, bytes members):
        """Append one event whose own members are given serialized; return its id."""
        cdef Py_ssize_t type_size = 0
        cdef const char *type_text = PyUnicode_AsUTF8AndSize(event_type, &type_size)
        cdef Py_ssize_t members_size = PyBytes_GET_SIZE(members)
        cdef char *out = self._begin(type_text, type_size, members_size)
        out = _put(out, PyBytes_AS_STRING(members), members_size)
        return self._finish(out, type_size == 13 and memcmp(type_text, b"session.ended", 13) == 0, True)

    def decided(self, kind, statement, statement_name, fingerprint, bytes decision_members):
        """Append a ``command.decided`` event; return its id."""
        cdef _Text kind_text = _text(kind)
        cdef _Text statement_text = _text(statement)
        cdef _Text name_text = _text(statement_name)
        cdef _Text fingerprint_text = _text(fingerprint)
        cdef Py_ssize_t decision_size = PyBytes_GET_SIZE(decision_members)
        # "kind":K,"statement":S,"statement_name":N,"fingerprint":F,<decision members>
        cdef Py_ssize_t members_size = (7 + kind_text.json_size + 13 + statement_text.json_size + 18
                                        + name_text.json_size + 15 + fingerprint_text.json_size + 1 + decision_size)
        cdef char *out = self._begin(b"command.decided", 15, members_size)
        out = _put_member(out, b'"kind":', 7, kind_text)
        out = _put_member(out, b',"statement":', 13, statement_text)
        out = _put_member(out, b',"statement_name":', 18, name_text)
        out = _put_member(out, b',"fingerprint":', 15, fingerprint_text)
        out[0] = 44  # ','
        out = _put(out + 1, PyBytes_AS_STRING(decision_members), decision_size)
        return self._finish(out, False, True)

    def result(self, command, status, rows, tag, error_json, seconds):
        """Append a ``command.result`` event for the command event ``command``."""
        cdef _Text command_text = _text(command)
        cdef _Text status_text = _text(status)
        cdef _Text tag_text = _text(tag)
        cdef long long row_count = 0
        cdef long long duration = 0
        cdef int overflow = 0
        cdef bytes rows_text = None  # rows beyond 64 bits, as Python prints them
        cdef Py_ssize_t rows_size = 4
        cdef Py_ssize_t error_size = 4
        cdef Py_ssize_t duration_size = 4
        if rows is not None:
            row_count = PyLong_AsLongLongAndOverflow(rows, &overflow)
            if overflow:
                rows_text = b"%d" % rows
                rows_size = PyBytes_GET_SIZE(rows_text)
            else:
                rows_size = _int_len(row_count, 0)
        if error_json is not None:
            if type(error_json) is not bytes:
                raise TypeError("error_json must be bytes or None")
            error_size = PyBytes_GET_SIZE(error_json)
        if seconds is not None:
            duration = <long long>(<double>seconds * 1000000.0)
            duration_size = _int_len(duration, 0)
        # "command":C,"status":S,"rows":R,"tag":T,"error":E,"duration_us":D,"controls":["AU-3","AU-12"]
        cdef Py_ssize_t members_size = (10 + command_text.json_size + 10 + status_text.json_size + 8 + rows_size
                                        + 7 + tag_text.json_size + 9 + error_size + 15 + duration_size
                                        + _RESULT_END_LEN)
        cdef char *out = self._begin(b"command.result", 14, members_size)
        out = _put_member(out, b'"command":', 10, command_text)
        out = _put_member(out, b',"status":', 10, status_text)
        out = _put(out, b',"rows":', 8)
        if rows is None:
            out = _put(out, b"null", 4)
        elif rows_text is not None:
            out = _put(out, PyBytes_AS_STRING(rows_text), rows_size)
        else:
            out = _put_int(out, row_count, 0)
        out = _put_member(out, b',"tag":', 7, tag_text)
        out = _put(out, b',"error":', 9)
        if error_json is None:
            out = _put(out, b"null", 4)
        else:
            out = _put(out, PyBytes_AS_STRING(error_json), error_size)
        out = _put(out, b',"duration_us":', 15)
        if seconds is None:
            out = _put(out, b"null", 4)
        else:
            out = _put_int(out, duration, 0)
        out = _put(out, _RESULT_END, _RESULT_END_LEN)
        self._finish(out, False, False)
