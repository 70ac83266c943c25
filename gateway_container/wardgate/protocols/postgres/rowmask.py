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
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from wardgate.core.masking import MaskReport, MaskStrategy, mask_text, mask_value

# Types whose binary send format is their text: masking them in either format is the same.
TEXT_LIKE_TYPES = frozenset({25, 1043, 1042, 19, 18, 114, 142, 705, 1009, 1015})  # text, varchar, bpchar,
# name, char, json, xml, unknown; arrays of text/varchar in *text* format only (see _textual)
_ARRAY_TYPES = frozenset({1009, 1015})


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    table_oid: int
    attnum: int
    type_oid: int
    format: int


def parse_row_description(payload: bytes) -> list[Field]:
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
    return fields


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


def touches_named_table(profile, tables) -> bool:
    """Does the statement touch a table that a column rule names explicitly (not by a wildcard)?"""
    for rule in profile.columns:
        parts = rule.match.split(".")
        if len(parts) < 2 or parts[-2] == "*":
            continue
        for table in tables:
            if fnmatch.fnmatchcase(table.split(".")[-1], parts[-2]):
                return True
    return False


class ResultMasker:
    __slots__ = ("plan", "key", "report", "columns")

    def __init__(self, plan: list[tuple], key: bytes, report: MaskReport, columns: int):
        self.plan = plan  # (index, mode, strategy, label, detectors, textual)
        self.key = key
        self.report = report
        self.columns = columns

    @classmethod
    def build(cls, fields: list[Field], profile, resolve, tables, key: bytes, report: MaskReport) -> "ResultMasker | None":
        detector_strategy = _strategy(profile.detector_strategy)
        redact_computed = profile.redact_computed and touches_named_table(profile, tables)
        plan = []
        for index, field in enumerate(fields):
            column = resolve(field.table_oid, field.attnum) if field.table_oid else None
            label = column or field.name
            textual = field.type_oid in TEXT_LIKE_TYPES and (field.format == 0 or field.type_oid not in _ARRAY_TYPES)
            if field.format == 0:
                textual = True  # text format: every value is text
            rule = next((r for r in profile.columns if _pattern_matches(r.match, column, field.name)), None)
            if rule is not None:
                plan.append((index, "column", _strategy(rule.strategy, rule.keep), label, None, textual))
            elif column is None and redact_computed:
                plan.append((index, "column", MaskStrategy.redact(), label, None, textual))
            elif profile.detectors and textual:
                plan.append((index, "detect", detector_strategy, label, tuple(profile.detectors), True))
        return cls(plan, key, report, len(fields)) if plan else None

    def mask_row(self, payload: bytes) -> bytes:
        """A DataRow payload with the planned columns masked."""
        count = int.from_bytes(payload[:2], "big")
        spans = []
        offset = 2
        for _ in range(count):
            length = int.from_bytes(payload[offset:offset + 4], "big", signed=True)
            offset += 4
            if length < 0:
                spans.append((offset, -1))
            else:
                spans.append((offset, length))
                offset += length
        replaced: dict[int, bytes | None] = {}
        for index, mode, strategy, label, detectors, textual in self.plan:
            if index >= count:
                continue
            start, length = spans[index]
            if length < 0:
                continue
            if not textual:
                replaced[index] = None  # cannot render masked in this binary format
                self.report.record(label)
                continue
            value = payload[start:start + length].decode("utf-8", "replace")
            if mode == "column":
                masked = mask_value(value, strategy, key=self.key)
                self.report.record(label)
            else:
                masked = mask_text(value, strategy, key=self.key, detectors=detectors, report=self.report,
                                   column=label)
                if masked is value:
                    continue
            replaced[index] = None if masked is None else masked.encode()
        if not replaced:
            return payload
        out = [payload[:2]]
        for index, (start, length) in enumerate(spans):
            if index in replaced:
                value = replaced[index]
                if value is None:
                    out.append(b"\xff\xff\xff\xff")
                else:
                    out.append(len(value).to_bytes(4, "big") + value)
            elif length < 0:
                out.append(b"\xff\xff\xff\xff")
            else:
                out.append(payload[start - 4:start + length])
        return b"".join(out)

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
        for index, mode, strategy, label, detectors, _ in self.plan:
            if index >= len(values) or values[index] == null:
                continue
            value = values[index]
            if mode == "column":
                masked = mask_value(value, strategy, key=self.key)
                self.report.record(label)
            else:
                masked = mask_text(value, strategy, key=self.key, detectors=detectors, report=self.report,
                                   column=label)
                if masked is value:
                    continue
            values[index] = masked
            changed = True
        return changed


class DetectAll:
    """For COPY of a query (no column identities): detectors on every field."""
