"""A connection remembers that the last result shape had nothing to mask, and says so again for the
next result of that shape without resolving its columns: only while the profile, the statement's
tables and the catalog's names are the same, and none of those names is due for reloading."""

from __future__ import annotations

import asyncio
import time

from wardgate.core.audit import Recorder
from wardgate.core.model import Principal
from wardgate.core.policy import parse_policy
from wardgate.devtools.harness import CollectingTransport, relay_without_sockets
from wardgate.protocols.postgres import catalog as catalog_module, engine, wire
from wardgate.protocols.postgres.catalog import CatalogResolver
from wardgate_testkit import default_policy_text

OID = 16400
SECRET = b"078-05-1120 belongs to nobody"  # a column the profile masks by name, once it has that name


def _msg(kind: bytes, payload: bytes = b"") -> bytes:
    return wire.message(kind, payload)


# one int4 column of table OID, attribute 2, text format
ROW_DESCRIPTION = _msg(b"T", b"\x00\x01c\x00" + OID.to_bytes(4, "big") + b"\x00\x02" + b"\x00\x00\x00\x17" + b"\x00\x04"
                       + bytes(6))


def _answer(value: bytes, description: bytes) -> bytes:
    return (description + _msg(b"D", b"\x00\x01" + len(value).to_bytes(4, "big") + value)
            + _msg(b"C", b"SELECT 1\x00") + wire.ready_for_query(b"I"))


def _run(steps, queries=None, policy=None, description: bytes = ROW_DESCRIPTION) -> list[bytes]:
    """Run a query per step (``step(resolver)`` first changes the catalog); the client bytes of each."""
    async def go():
        recorder = Recorder(None)
        recorder.start(asyncio.get_running_loop())
        connection = relay_without_sockets(recorder, CollectingTransport(), CollectingTransport(), name="orders-dev")
        connection.frontend.core.policy = policy or parse_policy(default_policy_text().encode())
        resolver = CatalogResolver(None)
        connection.frontend._catalogs["orders-dev"] = resolver
        connection.session.principal = Principal("https://issuer.example", "agent", groups=("ai-agents",))
        outputs = []
        for n, step in enumerate(steps):
            step(resolver)
            before = len(connection.transport.data)
            connection.data_received(wire.query(queries[n] if queries else "SELECT c FROM public.people"))
            connection._from_backend(_answer(SECRET, description))
            outputs.append(bytes(connection.transport.data[before:]))
        recorder.close()
        return outputs

    return asyncio.run(go())


def _names(column: str):
    def load(resolver: CatalogResolver) -> None:  # what CatalogResolver.load stores, and its generation
        resolver._columns[OID] = (time.monotonic(), "public.people", {1: "id", 2: column})
        resolver.generation += 1
    return load


def _unchanged(resolver: CatalogResolver) -> None:
    pass


def test_a_column_renamed_to_a_masked_name_is_masked_at_once() -> None:
    outputs = _run([_names("note"), _unchanged, _unchanged, _names("ssn"), _unchanged])
    assert [SECRET in out for out in outputs] == [True, True, True, False, False]


def test_names_due_for_reloading_are_not_taken_from_the_remembered_shape(monkeypatch) -> None:
    real_monotonic, later = time.monotonic, [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: real_monotonic() + later[0])

    def time_passes(resolver: CatalogResolver) -> None:  # the names loaded at the start are now due
        later[0] = catalog_module.CACHE_SECONDS + 1

    asked = []
    original = engine._NeedCatalog.__init__

    def need(self, oids, relation=None):
        asked.append(set(oids))
        original(self, oids, relation)

    monkeypatch.setattr(engine._NeedCatalog, "__init__", need)
    outputs = _run([_names("note"), _unchanged, time_passes])
    # the third result waits for its columns to be looked up again, instead of a remembered answer
    assert asked and all(oids == {OID} for oids in asked) and SECRET in outputs[1] and outputs[2] == b""


def test_the_same_result_shape_from_a_statement_on_other_tables_is_decided_again() -> None:
    # A column rule that names its table: a computed column of a statement reading it is redacted.
    text = default_policy_text(naming_table="customers")
    computed = _msg(b"T", b"\x00\x01c\x00" + bytes(6) + b"\x00\x00\x00\x17" + b"\x00\x04" + bytes(6))
    # the same computed int4 column for both statements
    outputs = _run([_unchanged] * 3, ["SELECT length(note) AS c FROM notes", "SELECT length(note) AS c FROM notes",
                                      "SELECT length(ssn) AS c FROM customers"], parse_policy(text.encode()), computed)
    assert [SECRET in out for out in outputs] == [True, True, False]
