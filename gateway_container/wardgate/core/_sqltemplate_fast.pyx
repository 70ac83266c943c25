# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled ``sqlclass._template_pieces_python``: the text of a plain SQL statement around its int4
literals (the template cache's key, step 2 of ``sqlclass.classify``).

It must return exactly what the reference returns (``tests/unit/test_sqltemplate_fast.py`` compares
both on random texts): a different split could file a statement under another's template. Used only
when ``SOURCE_SHA256`` (the SHA-256 of this file, compiled in by ``setup.py``) matches this file.

Why in C: the reference runs two regular expressions over the statement (``fullmatch`` of the allowed
characters, ``split`` at literals), ~4 µs for a pgbench statement; every simple-protocol statement
that differs from an earlier one only in a key pays it. One pass over the bytes here.
"""

from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.ref cimport Py_INCREF
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_FromStringAndSize

cdef extern from *:
    """
    #ifndef WARDGATE_SQLTEMPLATE_SOURCE_SHA256
    #define WARDGATE_SQLTEMPLATE_SOURCE_SHA256 ""
    #endif
    """
    const char *WARDGATE_SQLTEMPLATE_SOURCE_SHA256
    int PyUnicode_IS_ASCII(object o)

SOURCE_SHA256 = WARDGATE_SQLTEMPLATE_SOURCE_SHA256.decode()

cdef enum:
    MAX_CHARS = 2048      # sqlclass._TEMPLATE_MAX_CHARS
    MAX_LITERALS = 1024   # at most MAX_CHARS / 2 literals fit (a digit and a separator each)

# sqlclass._TEMPLATE_TEXT's characters: letters, digits, _ and  \t\r\n(),;=<>+*/.%!|&~^@#[]{}?:-
cdef char _ALLOWED[128]
# characters that make a digit run part of a larger token on either side: [A-Za-z0-9_.]
cdef char _WORD[128]
cdef int _c
for _c in range(128):
    _ALLOWED[_c] = 0
    _WORD[_c] = 0
for _c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_":
    _ALLOWED[_c] = 1
    _WORD[_c] = 1
for _c in b" \t\r\n(),;=<>+*/.%!|&~^@#[]{}?:-":
    _ALLOWED[_c] = 1
_WORD[46] = 1  # '.'


def template_pieces(str sql):
    """The text around its int4 literals as a tuple, or None when the text is not plain enough."""
    cdef Py_ssize_t size = len(sql)
    if size > MAX_CHARS or not PyUnicode_IS_ASCII(sql):
        return None
    cdef const unsigned char *text = <const unsigned char *>PyUnicode_AsUTF8AndSize(sql, &size)
    cdef Py_ssize_t starts[MAX_LITERALS]
    cdef Py_ssize_t ends[MAX_LITERALS]
    cdef Py_ssize_t literals = 0
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t run
    cdef unsigned char c
    while i < size:
        c = text[i]
        if not _ALLOWED[c]:
            return None
        if (c == 45 or c == 47) and i + 1 < size and text[i + 1] == (45 if c == 45 else 42):
            return None  # a comment: "--" or "/*"
        if 48 <= c <= 57 and (i == 0 or not _WORD[text[i - 1]]):
            run = i
            while run < size and 48 <= text[run] <= 57:
                run += 1
            if run - i <= 9 and (run == size or text[run] >= 128 or not _WORD[text[run]]):
                starts[literals] = i
                ends[literals] = run
                literals += 1
            i = run  # the rest of the run cannot start a literal (a digit precedes it)
            continue
        i += 1
    if literals == 0:
        return None
    pieces = PyTuple_New(literals + 1)
    cdef Py_ssize_t previous = 0
    cdef object piece
    for i in range(literals + 1):
        if i < literals:
            piece = PyUnicode_FromStringAndSize(<const char *>text + previous, starts[i] - previous)
            previous = ends[i]
        else:
            piece = PyUnicode_FromStringAndSize(<const char *>text + previous, size - previous)
        Py_INCREF(piece)
        PyTuple_SET_ITEM(pieces, i, piece)
    return pieces
