"""``wardgate sessions`` and ``wardgate replay`` against the trail of a real gateway.

GIVEN a gateway with a small policy (reads allowed with a masking profile, ``DROP TABLE`` denied by a
named rule) and a real psycopg client that runs a few statements (one returning 5 rows, one masked,
one refused by the rule, one unparseable), WHEN the CLI reads the gateway's audit directory, THEN
``sessions`` lists the session with its subject, resource and counts and filters it, and ``replay``
shows the statements in order with their decisions, rules, row counts and maskings; ``--json`` gives
back exactly the recorded events; unknown and ambiguous sessions exit 2; a broken chain is flagged.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import psycopg
import pytest

from wardgate.cli import main
from small_trail import record_small_session
from wardgate.devtools.harness import GatewayThread, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def recorded(postgres, make_gateway) -> tuple[GatewayThread, str, str, str]:
    """A gateway, its audit directory, the id of one finished session by ``replayer``, and the table."""
    gateway, session, table = record_small_session(postgres, make_gateway, "replayer")
    return gateway, str(gateway.gateway.recorder.spool.directory), session, table


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _sessions_json(capsys, directory: str, *filters: str) -> list[dict[str, Any]]:
    code, out, err = _run(capsys, "sessions", directory, "--json", *filters)
    assert code == 0, err
    return json.loads(out)


def test_sessions_lists_and_filters(recorded, capsys):
    gateway, directory, session, _ = recorded
    rows = _sessions_json(capsys, directory)
    assert [r["session"] for r in rows] == [session]  # the gateway-level chain is not a session
    (row,) = rows
    assert row["subject"] == "replayer" and row["issuer"].endswith("/dev-issuer")
    assert row["resource"] == "orders-prod" and row["peer"].startswith("127.0.0.1:")
    assert row["commands"] == 5 and row["denied"] == 2
    assert row["end"] == "client disconnected" and set(row["decisions"]) == {"allow", "deny"}

    code, out, _ = _run(capsys, "sessions", directory)
    assert code == 0
    header, line = out.strip().splitlines()
    assert header.split()[:4] == ["START", "SESSION", "SUBJECT", "RESOURCE"]
    assert session in line and "replayer" in line and "orders-prod" in line and "client disconnected" in line

    assert _sessions_json(capsys, directory, "--subject", "nobody*") == []
    assert len(_sessions_json(capsys, directory, "--subject", "repl*")) == 1
    assert _sessions_json(capsys, directory, "--resource", "*-dev") == []
    assert len(_sessions_json(capsys, directory, "--resource", "orders-*")) == 1
    assert len(_sessions_json(capsys, directory, "--decision", "deny")) == 1
    assert _sessions_json(capsys, directory, "--decision", "review") == []
    assert len(_sessions_json(capsys, directory, "--since", row["start"][:10])) == 1  # a date: the whole day
    assert _sessions_json(capsys, directory, "--since", "2999-01-01T00:00:00Z") == []
    assert _sessions_json(capsys, directory, "--until", "2000-01-01") == []
    assert _run(capsys, "sessions", directory, "--since", "yesterday")[0] == 2
    assert _run(capsys, "sessions", directory + "/nope")[0] == 2

    # A session that does not match the filters, by another subject.
    with psycopg.connect(gateway.dsn(gateway.token("other", groups=("dev",)), "orders-prod"), autocommit=True) as c:
        c.execute("SELECT 1").fetchall()
    wait_for(lambda: len(_sessions_json(capsys, directory)) == 2)
    assert [r["session"] for r in _sessions_json(capsys, directory, "--decision", "deny")] == [session]
    assert [r["subject"] for r in _sessions_json(capsys, directory, "--subject", "oth*")] == ["other"]
    starts = [r["start"] for r in _sessions_json(capsys, directory)]
    assert starts == sorted(starts)


def test_replay_shows_the_session(recorded, capsys):
    _, directory, session, table = recorded
    code, out, err = _run(capsys, "replay", directory, session)
    assert code == 0, err
    lines = out.splitlines()
    assert not any(line.startswith("WARNING") for line in lines)
    assert lines[0].startswith(f"session {session}") and "orders-prod" in lines[0]
    assert "replayer" in out and "repository=acme/app" in out and "groups: dev" in out
    assert lines[-1].split()[1] == "ended" and "client disconnected" in lines[-1]
    assert all(line.startswith("  +") or line.startswith(" " * 10) for line in lines[4:])

    statements = ["SELECT 1", "SELECT generate_series(1, 5)", f"SELECT id, email FROM {table} ORDER BY id",
                  f"DROP TABLE {table}", "SELEC 1"]
    positions = [next(i for i, line in enumerate(lines) if line.endswith(f"] query       {s}")) for s in statements]
    assert positions == sorted(positions)
    series = lines[positions[1]:positions[2]]
    assert any("allow by rule dev-reads" in line for line in series)
    assert any("[2] result" in line and "SELECT 5" in line and "5 rows" in line for line in series)
    masked = lines[positions[2]:positions[3]]
    assert any("[3] masked" in line and "email (column) x2" in line for line in masked), masked
    assert any("mask pii" in line and table in line for line in masked)
    drop = lines[positions[3]:positions[4]]
    assert any("DENY by rule no-drops: dropping tables is not allowed here" in line for line in drop), drop
    assert any("[4] result" in line and "refused" in line and "42501" in line for line in drop)
    unparseable = lines[positions[4]:]
    assert any("DENY by rule builtin:unparseable" in line for line in unparseable)


def test_replay_json_round_trips(recorded, capsys):
    gateway, directory, session, _ = recorded
    code, out, _ = _run(capsys, "replay", directory, session, "--json")
    assert code == 0
    recorded_events = [e for e in gateway.audit_events() if e["session"] == session]
    assert json.loads(out) == recorded_events
    assert [e["seq"] for e in json.loads(out)] == list(range(1, len(recorded_events) + 1))


def test_replay_resolves_prefixes(recorded, capsys):
    gateway, directory, session, _ = recorded
    code, out, _ = _run(capsys, "replay", directory, session[:8], "--json")
    assert code == 0 and {e["session"] for e in json.loads(out)} == {session}

    code, out, err = _run(capsys, "replay", directory, "zz-no-such-session")
    assert code == 2 and out == "" and "zz-no-such-session" in err

    # Two sessions: the empty-ish common prefix is ambiguous and says which sessions it matches.
    with psycopg.connect(gateway.dsn(gateway.token("other", groups=("dev",)), "orders-prod"), autocommit=True) as c:
        c.execute("SELECT 1").fetchall()
    wait_for(lambda: len(_sessions_json(capsys, directory)) == 2)
    ids = [r["session"] for r in _sessions_json(capsys, directory)]
    common = ""
    for a, b in zip(*ids):
        if a != b:
            break
        common += a
    code, out, err = _run(capsys, "replay", directory, common)
    assert code == 2 and "ambiguous" in err and all(i in err for i in ids)


def test_replay_warns_about_a_broken_chain(recorded, capsys):
    _, directory, session, _ = recorded
    copy = Path(tempfile.mkdtemp(prefix="wardgate-replay-copy-")) / "audit"
    shutil.copytree(directory, copy)
    for path in copy.glob("*.jsonl"):
        path.chmod(0o644)
        text = path.read_text()
        if "generate_series(1, 5)" in text:
            path.write_text(text.replace("generate_series(1, 5)", "generate_series(1, 6)"))
    code, out, _ = _run(capsys, "replay", str(copy), session)
    assert code == 0
    assert out.startswith("WARNING: hash chain broken") and "wardgate audit verify" in out.splitlines()[1]
    assert "generate_series(1, 6)" in out  # still shown
    code, out, err = _run(capsys, "replay", str(copy), session, "--json")
    assert code == 0 and json.loads(out) and "wardgate audit verify" in err
    code, out, _ = _run(capsys, "replay", directory, session)
    assert not out.startswith("WARNING")
