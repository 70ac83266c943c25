# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled head of ``ClientConnection._from_backend``: the backend messages of unmasked results, in
one pass over the chunk.

It handles what the Python loop (and its ``_backend_message``) does with these messages, the same
way, and stops at the first message it does not take (or that is not complete in ``data``),
returning where the Python loop must go on. What it takes:

- ``D`` DataRow of an unmasked result: counted;
- ``T`` RowDescription of an unmasked simple query (nothing to do), or answering an unmasked
  Describe (its pending entry popped);
- ``C`` CommandComplete of an unmasked simple query or Execute: ``result(event, "ok", rows, tag,
  None, seconds)`` with the tag's trailing number as rows (for an Execute never fewer than the rows
  counted), the row count reset, an Execute's entry popped;
- ``Z`` ReadyForQuery ending an unmasked simple query or answering a Sync: its entry popped;
- ``1``/``2``/``3`` Parse/Bind/CloseComplete of an extended-protocol entry, ``n`` NoData answering
  an unmasked Describe: popped.

Of a masked entry (a masking profile at ``[4]``), it takes only what needs no masker:

- ``Z`` ending a masked simple query: its entry popped, and its masked tables (``tables``) dropped;
- where a masked result begins, ``start(entry, data, start, end)`` (the connection's
  ``_scan_result_start``) does the Python loop's work for the message and answers None when the
  message must be left to the Python loop instead (nothing was changed: columns to look up first, no
  known layout…):
  - ``T`` of a masked simple query: the result's masker is built; True when the result has nothing
    to mask (the entry becomes ``plain``, below), False when it has (the scan stops after the
    message: the masker takes the rows);
  - ``T`` answering a masked Describe: the layout is remembered (True), the entry popped;
  - the first ``D`` of a masked Execute: the masker is built from the portal's layout; True when
    nothing is masked (the entry becomes ``plain``, the row is counted), False when it is (the scan
    stops before the row: the masker takes it);
- ``D`` and ``C`` of ``plain``: the entry whose current result has no column to mask (the Python
  side built its masker from the RowDescription, or the first row, and found nothing to mask), handled
  as an unmasked entry's, except that ``C`` first calls ``finished(event)`` (the connection's
  ``_finish_masking``: a notice masked during the result is reported there). ``plain`` holds for that
  result only: the next result of the same simple query starts with a RowDescription, which the
  Python loop handles (everything else of a masked entry stops the scan too).

Rows of a result with a row limit (its decision event in ``limits``, the connection's ``_limits``)
are counted against it: the first row past it is left to the Python loop, which refuses it and the
rest; ``Z`` of a simple query drops its limit. ``tests/unit/test_relay_fast.py`` runs random backend
streams through the connection with and without it and compares everything the client and the trail
see. Used only when ``SOURCE_SHA256`` (the SHA-256 of this file, compiled in by ``setup.py``) matches
this file; ``WARDGATE_RELAY_PYTHON=1`` turns it off.

Why in C: for a pgbench select the four messages cost ~1.5 µs of interpreter time in the Python loop
(branching on each message's kind and on the pending entry), paid by every transaction.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.tuple cimport PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport uint32_t, int64_t

cdef extern from *:
    """
    #ifndef WARDGATE_RELAY_SOURCE_SHA256
    #define WARDGATE_RELAY_SOURCE_SHA256 ""
    #endif
    #include <time.h>
    /* time.perf_counter() on Linux: CLOCK_MONOTONIC in nanoseconds, as a double in seconds. */
    static double wardgate_perf_counter(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec) / 1e9;
    }
    """
    const char *WARDGATE_RELAY_SOURCE_SHA256
    double wardgate_perf_counter()

SOURCE_SHA256 = WARDGATE_RELAY_SOURCE_SHA256.decode()

# Message kinds (engine._Q and friends).
cdef enum:
    KIND_Q = 81         # Query: a pending simple query
    KIND_P = 80
    KIND_B = 66
    KIND_D = 68         # Describe (client) / DataRow (backend)
    KIND_E = 69
    KIND_C = 67         # Close (client) / CommandComplete (backend)
    KIND_T = 84         # RowDescription
    KIND_Z = 90         # ReadyForQuery
    KIND_S = 83         # Sync (client)
    KIND_1 = 49         # ParseComplete
    KIND_2 = 50         # BindComplete
    KIND_3 = 51         # CloseComplete
    KIND_n = 110        # NoData
    MAX_DIGITS = 18     # row counts with more digits are converted by Python's int()

cdef inline uint32_t _length_at(const unsigned char *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef inline tuple _head(object pending):
    """The first pending entry, or None when nothing is pending. Entries are read without bounds
    checks below, so anything but the engine's 6-tuples is refused here (the session is closed)."""
    if not pending:
        return None
    entry = pending[0]
    if type(entry) is not tuple or PyTuple_GET_SIZE(entry) != 6:
        raise TypeError(f"pending entry is not a 6-tuple: {entry!r}")
    return <tuple>entry


cdef inline bint _unmasked_query(tuple head):
    return head[0] == KIND_Q and head[4] is None


cdef inline bint _extended(object kind):
    return kind == KIND_P or kind == KIND_B or kind == KIND_D or kind == KIND_E or kind == KIND_C


cdef object _tag_rows(const unsigned char *tag, Py_ssize_t size, str text):
    """``int(rows) if rows.isdigit() else None`` for ``rows = text.rpartition(" ")[2]``, where
    ``text`` is ``tag`` decoded as ASCII with replacement (so a byte ≥ 0x80 is never a digit)."""
    cdef Py_ssize_t start = size
    while start > 0 and tag[start - 1] != 32:
        start -= 1
    if start == size:
        return None
    cdef Py_ssize_t i
    cdef int64_t value = 0
    for i in range(start, size):
        if tag[i] < 48 or tag[i] > 57:
            return None
    if size - start > MAX_DIGITS:
        return int(text[start:])
    for i in range(start, size):
        value = value * 10 + (tag[i] - 48)
    return value


def scan_backend(object data, Py_ssize_t pos, object pending, object result, object rows_so_far,
                 object plain=None, dict tables=None, object finished=None, object start=None,
                 dict limits=None):
    """Handle complete backend messages of ``data`` from ``pos`` while they are of the kinds above;
    return ``(pos, rows)``: where the Python loop goes on, and the DataRows counted since the last
    result (``rows_so_far`` on entry). Anything but ``bytes`` is left to the Python loop whole.
    Without ``tables`` and ``finished``, every message of a masked entry stops the scan."""
    cdef object starts
    if type(data) is not bytes:
        return pos, rows_so_far
    cdef const unsigned char *buf = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t end, tag_size
    cdef uint32_t length
    cdef unsigned char kind
    cdef tuple head
    cdef object rows = rows_so_far
    cdef str tag
    popleft = None
    if tables is None or finished is None:
        plain = None
        start = None
    if limits is not None and not limits:
        limits = None
    while size - pos >= 5:
        kind = buf[pos]
        length = _length_at(buf + pos + 1)
        if length < 4:
            break  # the Python loop deals with it
        end = pos + 1 + <Py_ssize_t>length
        if end > size:
            break  # incomplete: the Python loop streams or buffers it
        head = _head(pending)
        if kind == KIND_D:
            if limits is not None and head is not None:
                limit = limits.get(head[1])
                if limit is not None and rows + 1 > limit[0]:
                    break  # past its limit: the Python loop refuses the rest
            if head is not None and head[4] is not None and head is not plain:
                if head[0] != KIND_E or start is None:
                    break  # a masked result: the masker's path
                starts = start(head, data, pos + 5, end)  # a masked Execute's rows begin: its masker
                if not starts:
                    break  # left to the Python loop, or the masker takes the rows
                plain = head
            rows = rows + 1
        elif kind == KIND_Z:
            if head is None:
                break
            if head[0] == KIND_Q and head[4] is not None:
                if tables is None:
                    break
                tables.pop(head[1], None)  # the masked query is over
            elif not (head[0] == KIND_Q or head[0] == KIND_S):
                break
            if limits is not None and head[0] == KIND_Q:
                limits.pop(head[1], None)  # the limited query is over
            if popleft is None:
                popleft = pending.popleft
            popleft()
        elif kind == KIND_T or kind == KIND_n:
            if head is None:
                break
            if kind == KIND_T and _unmasked_query(head):
                pass
            elif kind == KIND_T and head[0] == KIND_Q and start is not None:
                starts = start(head, data, pos + 5, end)  # a masked result begins: its masker
                if starts is None:
                    break  # left to the Python loop
                pos = end
                if not starts:
                    break  # the masker takes the rows
                plain = head
                continue
            elif kind == KIND_T and head[0] == KIND_D and start is not None:
                if not start(head, data, pos + 5, end):  # answering a masked Describe: its layout
                    break
                if popleft is None:
                    popleft = pending.popleft
                popleft()
            elif head[0] == KIND_D and head[4] is None:  # answering a Describe (not the gateway's own)
                if popleft is None:
                    popleft = pending.popleft
                popleft()
            else:
                break
        elif kind == KIND_C:
            if head is None:
                break
            k = head[0]
            if not (k == KIND_Q or k == KIND_E):
                break
            if head[4] is not None:
                if head is not plain:
                    break
                finished(head[1])  # before the result, as _backend_message
                plain = None  # (the masker state is reset there)
            tag_size = <Py_ssize_t>length - 5
            if tag_size < 0:
                tag_size = 0
            tag = PyUnicode_DecodeASCII(<const char *>(buf + pos + 5), tag_size, "replace")
            reported = _tag_rows(buf + pos + 5, tag_size, tag)
            if k == KIND_E and rows and (reported is None or reported < rows):
                reported = rows  # never fewer rows than were sent (as _backend_message)
            rows = 0
            result(head[1], "ok", reported, tag, None, wardgate_perf_counter() - <double>head[2])
            if k == KIND_E:
                if popleft is None:
                    popleft = pending.popleft
                popleft()
        elif kind == KIND_1 or kind == KIND_2 or kind == KIND_3:
            if head is None or not _extended(head[0]):
                break
            if popleft is None:
                popleft = pending.popleft
            popleft()
        else:
            break
        pos = end
    return pos, rows
