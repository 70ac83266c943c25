# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled DataRow masking: the per-row walk and rebuild of :class:`rowmask.ResultMasker` in C.

It must produce byte-identical output to ``ResultMasker._mask_row_python`` (the pure-Python
implementation, which stays the fallback and the reference; ``tests/unit/test_rowmask_fast.py``
compares both). :mod:`rowmask` uses this module only when ``SOURCE_SHA256`` (the SHA-256 of this
file, passed in by ``setup.py`` at build time) matches the ``.pyx`` next to it: a compiled module
left over from an older source is never used.

A :class:`RowWalker` gets the masked columns as steps ``(index, slot, kind, argument)``, in
ascending column order:

- ``CONSTANT``: ``argument`` is the replacement value, length-prefixed (redact, null, a non-text
  binary value): copied without a Python call;
- ``PARTIAL``: ``argument`` is ``(keep, mask_char, separators, fallback)``; an ASCII value is masked
  here (same rule as ``masking._partial``), any other value by ``fallback(raw) -> prefixed bytes``;
- ``CALL``: ``argument(raw) -> prefixed bytes | None`` (hash, detectors; ``None``: unchanged).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

cdef extern from *:
    """
    #ifndef WARDGATE_ROWMASK_SOURCE_SHA256
    #define WARDGATE_ROWMASK_SOURCE_SHA256 ""
    #endif
    """
    const char *WARDGATE_ROWMASK_SOURCE_SHA256

# SHA-256 (hex) of the .pyx this module was compiled from; "" when built without setup.py.
SOURCE_SHA256 = (<bytes>WARDGATE_ROWMASK_SOURCE_SHA256).decode("ascii")

CONSTANT = 0
PARTIAL = 1
CALL = 2


cdef inline Py_ssize_t _be32(const unsigned char *p) noexcept nogil:
    # Signed big-endian int32 (a DataRow column length; -1 is NULL).
    return <Py_ssize_t><int>((<unsigned int>p[0] << 24) | (<unsigned int>p[1] << 16)
                             | (<unsigned int>p[2] << 8) | <unsigned int>p[3])


cdef class RowWalker:
    """Masks DataRow payloads by a fixed list of steps; counts the values masked per step."""

    cdef Py_ssize_t nsteps
    cdef Py_ssize_t last_index
    cdef int *index
    cdef int *kind
    cdef Py_ssize_t *keep
    cdef unsigned char *mask_char
    cdef unsigned char *separators   # nsteps × 256 flags
    cdef long long *counts
    cdef Py_ssize_t *offsets         # per walked column: offset of its length word
    cdef Py_ssize_t *lengths         # per walked column: its length (negative: NULL)
    cdef Py_ssize_t *change_step     # per masked value of the row being built: its step
    cdef list arguments              # per step: bytes (CONSTANT), fallback or function
    cdef list held                   # per step: the bytes a Python call returned for this row
    cdef readonly tuple slots

    def __cinit__(self, steps, Py_ssize_t last_index):
        cdef Py_ssize_t n = len(steps), s, c
        self.nsteps = n
        self.last_index = last_index
        self.index = <int *>malloc(max(n, 1) * sizeof(int))
        self.kind = <int *>malloc(max(n, 1) * sizeof(int))
        self.keep = <Py_ssize_t *>malloc(max(n, 1) * sizeof(Py_ssize_t))
        self.mask_char = <unsigned char *>malloc(max(n, 1))
        self.separators = <unsigned char *>malloc(max(n, 1) * 256)
        self.counts = <long long *>malloc(max(n, 1) * sizeof(long long))
        self.offsets = <Py_ssize_t *>malloc((last_index + 2) * sizeof(Py_ssize_t))
        self.lengths = <Py_ssize_t *>malloc((last_index + 2) * sizeof(Py_ssize_t))
        self.change_step = <Py_ssize_t *>malloc(max(n, 1) * sizeof(Py_ssize_t))
        if (self.index == NULL or self.kind == NULL or self.keep == NULL or self.mask_char == NULL
                or self.separators == NULL or self.counts == NULL or self.offsets == NULL
                or self.lengths == NULL or self.change_step == NULL):
            raise MemoryError()
        memset(self.separators, 0, max(n, 1) * 256)
        self.arguments = [None] * n
        self.held = [None] * n
        slots = []
        previous = -1
        for s in range(n):
            index, slot, kind, argument = steps[s]
            if not previous < index <= last_index:
                raise ValueError("steps must be in ascending column order, up to last_index")
            previous = index
            self.index[s] = index
            self.kind[s] = kind
            self.counts[s] = 0
            slots.append(slot)
            if kind == CONSTANT:
                if type(argument) is not bytes:
                    raise TypeError("a CONSTANT step needs bytes")
                self.arguments[s] = argument
            elif kind == PARTIAL:
                keep, mask_char, separators, fallback = argument
                if not (isinstance(mask_char, str) and len(mask_char) == 1 and mask_char.isascii()
                        and isinstance(separators, str) and separators.isascii()):
                    raise ValueError("PARTIAL needs an ASCII mask character and separators")
                self.keep[s] = max(0, min(keep, 1 << 40))
                self.mask_char[s] = ord(mask_char)
                for c in separators.encode("ascii"):
                    self.separators[s * 256 + c] = 1
                self.arguments[s] = fallback
            elif kind == CALL:
                self.arguments[s] = argument
            else:
                raise ValueError(f"unknown step kind {kind!r}")
        self.slots = tuple(slots)

    def __dealloc__(self):
        free(self.index)
        free(self.kind)
        free(self.keep)
        free(self.mask_char)
        free(self.separators)
        free(self.counts)
        free(self.offsets)
        free(self.lengths)
        free(self.change_step)

    def take_counts(self):
        """``[(slot, count)]`` of the values masked since the last call; resets the counts."""
        cdef Py_ssize_t s
        out = []
        for s in range(self.nsteps):
            if self.counts[s]:
                out.append((self.slots[s], self.counts[s]))
                self.counts[s] = 0
        return out

    def mask_row(self, bytes payload not None):
        """A DataRow payload with the steps' columns masked (the same object when nothing changed)."""
        cdef const unsigned char *data = <const unsigned char *>PyBytes_AS_STRING(payload)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(payload)
        cdef Py_ssize_t count, walk, i, s, offset, length, changes = 0, out_size, copied, end
        cdef Py_ssize_t significant, keep, cut, j, k
        cdef list held = self.held
        cdef const unsigned char *value
        cdef const unsigned char *table
        cdef unsigned char *out
        cdef unsigned char mask_char
        cdef bint ascii
        cdef bytes replacement
        cdef object result
        if size < 2:
            raise ValueError("DataRow payload shorter than its column count")
        count = (<Py_ssize_t>data[0] << 8) | data[1]
        walk = self.last_index + 1 if self.last_index < count else count
        offset = 2
        for i in range(walk):
            if offset + 4 > size:
                raise ValueError("DataRow payload shorter than its column lengths")
            length = _be32(data + offset)
            self.offsets[i] = offset
            self.lengths[i] = length
            offset += 4 + length if length > 0 else 4
        if offset > size:
            raise ValueError("DataRow payload shorter than its column lengths")

        out_size = size
        try:
            for s in range(self.nsteps):
                i = self.index[s]
                if i >= walk:
                    break
                length = self.lengths[i]
                if length < 0:
                    continue
                offset = self.offsets[i]
                if self.kind[s] == CONSTANT:
                    out_size += PyBytes_GET_SIZE(<bytes>self.arguments[s]) - 4 - length
                elif self.kind[s] == PARTIAL:
                    value = data + offset + 4
                    ascii = True
                    for j in range(length):
                        if value[j] >= 0x80:
                            ascii = False
                            break
                    if not ascii:
                        result = self.arguments[s](payload[offset + 4:offset + 4 + length])
                        held[s] = <bytes?>result
                        out_size += PyBytes_GET_SIZE(<bytes>result) - 4 - length
                    # An ASCII value keeps its length: nothing to add.
                else:
                    result = self.arguments[s](payload[offset + 4:offset + 4 + length])
                    if result is None:
                        continue
                    held[s] = <bytes?>result
                    out_size += PyBytes_GET_SIZE(<bytes>result) - 4 - length
                self.counts[s] += 1
                self.change_step[changes] = s
                changes += 1
            if changes == 0:
                return payload

            result = PyBytes_FromStringAndSize(NULL, out_size)
            out = <unsigned char *>PyBytes_AS_STRING(result)
            copied = 0   # in the payload
            end = 0      # in the output
            for j in range(changes):
                s = self.change_step[j]
                i = self.index[s]
                offset = self.offsets[i]
                length = self.lengths[i]
                memcpy(out + end, data + copied, offset - copied)
                end += offset - copied
                copied = offset + 4 + length
                if self.kind[s] == CONSTANT:
                    replacement = <bytes>self.arguments[s]
                elif self.kind[s] == PARTIAL and held[s] is None:
                    # ASCII partial: same length; significant = not a separator.
                    value = data + offset + 4
                    table = self.separators + s * 256
                    significant = 0
                    for k in range(length):
                        significant += not table[value[k]]
                    keep = self.keep[s]
                    if keep > significant // 2:
                        keep = significant // 2
                    cut = length
                    while keep:
                        cut -= 1
                        if not table[value[cut]]:
                            keep -= 1
                    memcpy(out + end, data + offset, 4)
                    end += 4
                    mask_char = self.mask_char[s]
                    for k in range(cut):
                        out[end + k] = value[k] if table[value[k]] else mask_char
                    memcpy(out + end + cut, value + cut, length - cut)
                    end += length
                    continue
                else:
                    replacement = <bytes>held[s]
                    held[s] = None
                memcpy(out + end, PyBytes_AS_STRING(replacement), PyBytes_GET_SIZE(replacement))
                end += PyBytes_GET_SIZE(replacement)
            memcpy(out + end, data + copied, size - copied)
            return result
        except BaseException:
            for j in range(self.nsteps):
                held[j] = None
            raise
