"""Masking PostgreSQL results in flight: DataRow values and COPY OUT rows.

A :class:`ResultMasker` is built per result from its RowDescription, the policy's masking profile and
the catalog (table OID + attribute number → ``schema.table.column``, so ``SELECT email AS e`` is
still ``customers.email``). Rows of results that need no masking are never decoded.

Per column:
- a column rule (``schema.table.column`` / ``table.column`` / ``column`` globs) masks the whole value;
  a computed column (no source table) is matched by its result name, and is redacted whole when the
  statement touches a table named by a column rule (``lower(ssn)`` must not leak what ``ssn`` would);
- detectors scan the other text-like columns and mask what they find inside the value.
Values in binary format are masked when the type's binary form is its text (text, varchar, name…);
a masked column of another type in binary format cannot be rendered masked and becomes NULL.

Two implementations of the per-row work, with byte-identical output: the compiled ``_rowmask_fast``
(Cython; built by ``setup.py`` when the package is installed) and :class:`_PythonRowWalker`, the
reference and fallback. The compiled module is used only if it was built from the ``.pyx`` next to
it (SHA-256 embedded at build time); otherwise, or when it cannot be imported, a warning is logged
once and the Python walker is used. ``WARDGATE_MASKING_PYTHON=1`` forces the Python walker.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from pathlib import Path
import struct
from functools import lru_cache

from wardgate.core.compiled import load_compiled, warn_fallback
from wardgate.core.masking import MaskReport, MaskStrategy, mask_text, mask_value, value_masker

log = logging.getLogger("wardgate.masking")

_U16 = struct.Struct("!H")
_I32 = struct.Struct("!i")

# Types whose binary send format is their text: masking them in either format is the same.
TEXT_LIKE_TYPES = frozenset({25, 1043, 1042, 19, 18, 114, 142, 705})  # text, varchar, bpchar, name, char, json,
# xml, unknown
# Types whose values detectors scan (in text format): the text-like ones, jsonb and arrays of text.
# Numbers, dates, booleans, UUIDs are not scanned: a secret is not stored as one.
SCANNED_TYPES = TEXT_LIKE_TYPES | {3802, 1009, 1015, 1014, 143, 199}  # jsonb, text[], varchar[], bpchar[], xml[], json[]


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    table_oid: int
    attnum: int
    type_oid: int
    format: int


@lru_cache(maxsize=4096)  # a result shape repeats: parse each RowDescription once
def parse_row_description(payload: bytes) -> tuple[Field, ...]:
    count = int.from_bytes(payload[:2], "big")
    fields = []
    offset = 2
    for _ in range(count):
        end = payload.index(b"\x00", offset)
        name = payload[offset:end].decode("utf-8", "replace")
        offset = end + 1
        table_oid = int.from_bytes(payload[offset:offset + 4], "big")
        attnum = int.from_bytes(payload[offset + 4:offset + 6], "big", signed=True)
        type_oid = int.from_bytes(payload[offset + 6:offset + 10], "big")
        fmt = int.from_bytes(payload[offset + 16:offset + 18], "big")
        fields.append(Field(name, table_oid, attnum, type_oid, fmt))
        offset += 18
    return tuple(fields)


def with_formats(fields: list[Field], formats: list[int]) -> list[Field]:
    """Apply Bind's result-format codes (none: all text; one: all that; else one per column)."""
    if not formats:
        chosen = [0] * len(fields)
    elif len(formats) == 1:
        chosen = formats * len(fields)
    else:
        chosen = formats
    return [Field(f.name, f.table_oid, f.attnum, f.type_oid, chosen[i] if i < len(chosen) else 0)
            for i, f in enumerate(fields)]


def _pattern_matches(pattern: str, column: str | None, label: str) -> bool:
    """``column`` is "schema.table.column" (None for computed); patterns of fewer parts match the
    trailing parts."""
    parts = pattern.count(".") + 1
    if column is None:
        return fnmatch.fnmatchcase(label, pattern.rsplit(".", 1)[-1]) if parts == 1 or pattern.startswith("*.") else False
    candidate = ".".join(column.split(".")[-parts:])
    return fnmatch.fnmatchcase(candidate, pattern)


def _strategy(kind: str, keep: int = 4) -> MaskStrategy:
    return MaskStrategy.partial(keep) if kind == "partial" else MaskStrategy(kind)


_TOUCHES: dict[tuple, tuple] = {}


def touches_named_table(profile, tables) -> bool:
    """Does the statement touch a table that a column rule names explicitly (not by a wildcard)?"""
    key = (id(profile), tuple(tables))
    cached = _TOUCHES.get(key)
    if cached is not None and cached[0] is profile:
        return cached[1]
    answer = _touches_named_table(profile, tables)
    if len(_TOUCHES) > 4096:
        _TOUCHES.clear()
    _TOUCHES[key] = (profile, answer)
    return answer


def _touches_named_table(profile, tables) -> bool:
    for rule in profile.columns:
        parts = rule.match.split(".")
        if len(parts) < 2 or parts[-2] == "*":
            continue
        for table in tables:
            if fnmatch.fnmatchcase(table.split(".")[-1], parts[-2]):
                return True
    return False


_BUILT: dict[tuple, tuple] = {}  # (fields id, profile id, tables, catalog generation) → (fields, profile, plan)
_PLANS: dict[tuple, tuple] = {}  # (profile id, columns, redact_computed) → (profile, plan): built once


def _plan(fields: list[Field], labels: list[str | None], profile, redact_computed: bool) -> tuple:
    key = (id(profile), tuple((f.name, f.type_oid, f.format) for f in fields), tuple(labels), redact_computed)
    cached = _PLANS.get(key)
    if cached is not None and cached[0] is profile:
        return cached[1]
    detector_strategy = _strategy(profile.detector_strategy)
    detectors = tuple(profile.detectors)
    plan = []
    for index, (field, column) in enumerate(zip(fields, labels)):
        label = column or field.name
        # Text format renders every type as text; in binary only text-like types are text.
        textual = field.format == 0 or field.type_oid in TEXT_LIKE_TYPES
        rule = next((r for r in profile.columns if _pattern_matches(r.match, column, field.name)), None)
        if rule is not None:
            plan.append((index, "column", _strategy(rule.strategy, rule.keep), label, None, textual))
        elif column is None and redact_computed:
            plan.append((index, "column", MaskStrategy.redact(), label, None, textual))
        elif detectors and textual and field.type_oid in SCANNED_TYPES:
            plan.append((index, "detect", detector_strategy, label, detectors, True))
    plan = tuple(plan)
    if len(_PLANS) > 4096:
        _PLANS.clear()
    _PLANS[key] = (profile, plan)
    return plan


_NULL_VALUE = b"\xff\xff\xff\xff"
# Step kinds of the compiled walker (_rowmask_fast.CONSTANT, PARTIAL, CALL).
_KIND_CONSTANT, _KIND_PARTIAL, _KIND_CALL = 0, 1, 2


def _prefixed(text: str | None) -> bytes:
    """A DataRow value: length-prefixed bytes, or the NULL marker."""
    if text is None:
        return _NULL_VALUE
    data = text.encode()
    return len(data).to_bytes(4, "big") + data


def _load_fast():
    """(the compiled module, None) or (None, why it is not used)."""
    return load_compiled("wardgate.protocols.postgres._rowmask_fast", Path(__file__).with_name("_rowmask_fast.pyx"),
                         what="DataRow masker", disable_env="WARDGATE_MASKING_PYTHON")


_FAST, _FAST_PROBLEM = _load_fast()


def fast_available() -> bool:
    """Is the compiled DataRow masker in use (built, from the current source)?"""
    return _FAST is not None


class _PythonRowWalker:
    """The per-row work in Python: the reference for (and fallback of) ``_rowmask_fast.RowWalker``.
    ``steps`` are (index, slot, replacement): ready bytes when the output does not depend on the
    value, else a function of the raw value returning the length-prefixed value (None: unchanged)."""

    __slots__ = ("steps", "last_index", "counts")

    def __init__(self, steps: tuple, last_index: int):
        self.steps = steps
        self.last_index = last_index
        self.counts = [0] * len(steps)

    def take_counts(self) -> list[tuple[int, int]]:
        counts = [(slot, count) for (_, slot, _), count in zip(self.steps, self.counts) if count]
        self.counts = [0] * len(self.steps)
        return counts

    def mask_row(self, payload: bytes) -> bytes:
        """A DataRow payload with the planned columns masked (the same object when nothing changed)."""
        count = _U16.unpack_from(payload)[0]
        walk = self.last_index + 1 if self.last_index < count else count
        unpack = _I32.unpack_from
        spans = []  # flat: offset, length, offset, length…
        offset = 2
        for _ in range(walk):
            length = unpack(payload, offset)[0]
            spans.append(offset)
            spans.append(length)
            offset += 4 + length if length > 0 else 4
        if offset > len(payload):
            raise ValueError("DataRow payload shorter than its column lengths")
        out = None
        copied = 0
        counts = self.counts
        for step, (index, slot, replacement) in enumerate(self.steps):
            if index >= walk:
                break
            offset = spans[2 * index]
            length = spans[2 * index + 1]
            if length < 0:
                continue
            if replacement.__class__ is not bytes:
                replacement = replacement(payload[offset + 4:offset + 4 + length])
                if replacement is None:
                    continue
            counts[step] += 1
            if out is None:
                out = [payload[:offset]]
            else:
                out.append(payload[copied:offset])
            out.append(replacement)
            copied = offset + 4 + length
        if out is None:
            return payload
        out.append(payload[copied:])
        return b"".join(out)


class ResultMasker:
    """Masks the rows of one result. The plan (which column, how) is cached per result shape; per row
    the work is one walk over the column lengths up to the last masked column, one call per masked
    value (none for strategies whose output is a constant, nor, in the compiled walker, for ASCII
    values of ``partial``), and the original's bytes copied around the values that changed.

    ``mask_row(payload)`` is the walker's own method (compiled or Python), stored on the instance:
    the per-row call goes straight to it. ``fast``: None uses the compiled walker when it is usable;
    True/False force one (True raises if it is not)."""

    __slots__ = ("plan", "key", "report", "counts", "last_index", "steps", "walker", "mask_row")

    def __init__(self, plan: tuple, key: bytes, report: MaskReport, fast: bool | None = None):
        self.plan = plan  # (index, mode, strategy, label, detectors, textual), by index
        self.key = key
        self.report = report
        self.counts = [0] * len(plan)  # COPY rows (mask_copy_line); DataRows count in the walker
        self.last_index = plan[-1][0] if plan else -1
        # Per masked column: (index, slot, replacement) where the replacement is ready bytes when the
        # output does not depend on the value (redact, null, non-text binary), else a function; and
        # the compiled walker's (index, slot, kind, argument) for the same column.
        steps = []
        fast_steps = []
        for slot, (index, mode, strategy, label, detectors, textual) in enumerate(plan):
            if not textual:
                steps.append((index, slot, _NULL_VALUE))  # cannot be rendered masked in this format
                fast_steps.append((index, slot, _KIND_CONSTANT, _NULL_VALUE))
            elif mode == "column" and strategy.kind in ("redact", "null"):
                constant = _prefixed(mask_value("", strategy, key=key))
                steps.append((index, slot, constant))
                fast_steps.append((index, slot, _KIND_CONSTANT, constant))
            elif mode == "column":
                function = self._column_function(strategy)
                steps.append((index, slot, function))
                if (strategy.kind == "partial" and strategy.separators.isascii()
                        and strategy.mask_char.isascii()):
                    fast_steps.append((index, slot, _KIND_PARTIAL,
                                       (strategy.keep, strategy.mask_char, strategy.separators, function)))
                else:
                    fast_steps.append((index, slot, _KIND_CALL, function))
            else:
                function = self._detector_function(strategy, detectors, label)
                steps.append((index, slot, function))
                fast_steps.append((index, slot, _KIND_CALL, function))
        self.steps = tuple(steps)
        if fast is None:
            warn_fallback(_FAST_PROBLEM, "masking rows with the Python implementation (slower, same output)", log)
            fast = _FAST is not None
        if fast:
            if _FAST is None:
                raise RuntimeError(_FAST_PROBLEM or "the compiled DataRow masker is disabled")
            self.walker = _FAST.RowWalker(tuple(fast_steps), self.last_index)
        else:
            self.walker = _PythonRowWalker(self.steps, self.last_index)
        self.mask_row = self.walker.mask_row

    def _column_function(self, strategy):
        masker = value_masker(strategy, key=self.key)

        def mask(raw: bytes) -> bytes:
            data = masker(raw.decode("utf-8", "replace")).encode()
            return len(data).to_bytes(4, "big") + data
        return mask

    def _detector_function(self, strategy, detectors, label):
        key, report = self.key, self.report

        def mask(raw: bytes) -> bytes | None:
            value = raw.decode("utf-8", "replace")
            masked = mask_text(value, strategy, key=key, detectors=detectors, report=report, column=label)
            return None if masked is value else _prefixed(masked)
        return mask

    @classmethod
    def build(cls, fields, profile, resolve, tables, key: bytes, report: MaskReport,
              generation: int = 0) -> "ResultMasker | None":
        """``generation`` is the catalog's: names resolved under another one may have changed."""
        # A result shape repeats (parse_row_description returns the same tuple for the same bytes):
        # its plan is looked up by identity, confirmed, instead of resolving columns again.
        cache_key = (id(fields), id(profile), tuple(tables), generation)
        hit = _BUILT.get(cache_key)
        if hit is not None and hit[0] is fields and hit[1] is profile:
            plan = hit[2]
        else:
            labels = [resolve(f.table_oid, f.attnum) if f.table_oid else None for f in fields]
            redact_computed = profile.redact_computed and touches_named_table(profile, tables)
            plan = _plan(list(fields), labels, profile, redact_computed)
            if len(_BUILT) > 4096:
                _BUILT.clear()
            _BUILT[cache_key] = (fields, profile, plan)
        return cls(plan, key, report) if plan else None

    def finish(self) -> None:
        """Move the whole-column counts into the report (detector findings went there directly)."""
        counts = self.counts
        for slot, count in self.walker.take_counts():
            counts[slot] += count
        for entry, count in zip(self.plan, counts):
            if count and entry[1] == "column" or count and not entry[5]:
                self.report.record(entry[3], "column", count)
        self.counts = [0] * len(self.plan)

    def mask_copy_line(self, line: bytes, csv: bool) -> bytes:
        """One COPY OUT text-format (tab-separated, ``\\N`` for NULL) or CSV line."""
        if csv:
            import csv as _csv
            import io

            values = next(_csv.reader(io.StringIO(line.decode("utf-8", "replace").rstrip("\r\n"))), [])
            changed = self._mask_values(values, null=None)
            if not changed:
                return line
            buffer = io.StringIO()
            _csv.writer(buffer, lineterminator="\n").writerow(["" if v is None else v for v in values])
            return buffer.getvalue().encode()
        text = line.decode("utf-8", "replace")
        ending = "\n" if text.endswith("\n") else ""
        values = text[:len(text) - len(ending)].split("\t")
        changed = self._mask_values(values, null="\\N")
        if not changed:
            return line
        return ("\t".join("\\N" if v is None else v for v in values) + ending).encode()

    def _mask_values(self, values: list, null) -> bool:
        changed = False
        for slot, (index, mode, strategy, label, detectors, _) in enumerate(self.plan):
            if index >= len(values) or values[index] == null:
                continue
            value = values[index]
            if mode == "column":
                masked = mask_value(value, strategy, key=self.key)
                self.counts[slot] += 1
            else:
                masked = mask_text(value, strategy, key=self.key, detectors=detectors, report=self.report,
                                   column=label)
                if masked is value:
                    continue
            values[index] = masked
            changed = True
        return changed
