"""Audit durability with real processes: kill -9 loses no acknowledged event; a full audit disk
makes the gateway refuse (clearly), and it recovers by itself when space returns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import psycopg
import pytest
import yaml

from wardgate.audittool import verify_trail
from wardgate.core.audit import read_segment
from wardgate.devtools.pgserver import free_port


def _events(directory: Path) -> list[dict]:
    return [orjson.loads(line) for path in sorted(directory.glob("*.jsonl")) for line in read_segment(path)]


def _serve(config: Path) -> subprocess.Popen:
    log = config.parent / f"serve-{uuid.uuid4().hex[:6]}.log"
    with open(log, "w") as output:  # a file, not a pipe nobody drains
        process = subprocess.Popen([sys.executable, "-m", "wardgate.cli", "serve", "--config", str(config)],
                                   stdout=output, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        if "control port" in log.read_text():
            return process
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"wardgate serve did not start: {log.read_text()}")


def _config(workdir: Path, postgres, audit_dir: Path) -> tuple[Path, int]:
    port, control = free_port(), free_port()
    os.environ["WARDGATE_DURABILITY_PW"] = postgres.service_password
    config = {
        "listeners": [{"protocol": "postgres", "address": f"127.0.0.1:{port}",
                       "allow_plaintext_token_on_loopback": True}],
        "control": {"address": f"127.0.0.1:{control}"},
        "state_dir": str(workdir / "state"),
        "dev_issuer": {"enabled": True},
        "resources": {"orders-prod": {"protocol": "postgres", "host": postgres.host, "port": postgres.port,
                                      "database": "orders", "username": "wardgate_svc",
                                      "password": "env://WARDGATE_DURABILITY_PW"}},
        "audit": {"sink": f"file://{audit_dir}"},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


def _token(config: Path, subject: str) -> str:
    return subprocess.check_output([sys.executable, "-m", "wardgate.cli", "token", "--config", str(config),
                                    "--sub", subject], text=True).strip()


def test_kill_9_loses_no_event_whose_result_the_client_saw(postgres):
    workdir = Path(tempfile.mkdtemp(prefix="wardgate-kill9-"))
    audit = workdir / "audit"
    config, port = _config(workdir, postgres, audit)
    gateway = _serve(config)
    acknowledged: list[str] = []
    try:
        token = _token(config, "kill9")
        conn = psycopg.connect(host="127.0.0.1", port=port, dbname="orders-prod", user="agent", password=token,
                               sslmode="disable", autocommit=True)
        for i in range(200):
            marker = f"kill9-{uuid.uuid4().hex[:8]}-{i}"
            conn.execute(f"SELECT '{marker}'").fetchone()
            acknowledged.append(marker)  # the client has seen this statement's result
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(10)
        conn.close()
    finally:
        if gateway.poll() is None:
            gateway.kill()

    events = _events(audit)
    decided = {e["statement"].split("'")[1]: e["id"] for e in events if e["type"] == "command.decided"}
    results = {e["command"] for e in events if e["type"] == "command.result" and e["status"] == "ok"}
    missing = [m for m in acknowledged if m not in decided or decided[m] not in results]
    assert not missing, f"{len(missing)} acknowledged statements have no recorded decision+result: {missing[:3]}"

    # Before any restart the dead gateway's segment is still unsealed: verify cannot tell a crash
    # from a gateway that is still running, and says so as a warning.
    session = next(e["session"] for e in events if e["type"] == "session.authenticated")
    before = verify_trail(audit)
    assert before.ok and any("is not sealed yet" in f.message for f in before.findings), before.findings

    # The next start seals what the dead gateway left and records the end of the session it cut
    # short, continuing that session's chain: the trail then verifies whole.
    restarted = _serve(config)
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(20) == 0
    report = verify_trail(audit)
    assert report.ok, [f.message for f in report.findings]
    ended = [e for e in _events(audit) if e["type"] == "session.ended" and e["session"] == session]
    assert len(ended) == 1 and ended[0]["recovered"] is True and "crashed or was killed" in ended[0]["reason"]


def test_full_audit_disk_refuses_clearly_and_recovers(small_disk, postgres, make_gateway):
    audit = small_disk / "audit"
    gateway = make_gateway(audit={"sink": f"file://{audit}"})
    token = gateway.token("fulldisk")
    conn = psycopg.connect(gateway.dsn(token, "orders-prod"), autocommit=True)
    assert conn.execute("SELECT 1").fetchone() == (1,)

    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # take every byte that is left
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    with pytest.raises(psycopg.OperationalError, match="audit sink cannot be written"):
        for _ in range(50):  # the first statement whose event does not fit closes the session
            conn.execute("SELECT repeat('x', 4000)").fetchone()
    with pytest.raises(psycopg.OperationalError, match="audit sink cannot be written"):
        psycopg.connect(gateway.dsn(token, "orders-prod"))  # nor can a session start unrecorded
    ready = gateway.call(_readyz(gateway))
    assert ready[0] == 503 and "audit sink unavailable" in ready[1]

    filler.unlink()
    with psycopg.connect(gateway.dsn(token, "orders-prod"), autocommit=True) as again:
        assert again.execute("SELECT 2").fetchone() == (2,)
    assert gateway.call(_readyz(gateway))[0] == 200
    types = [e["type"] for e in gateway.audit_events()]
    assert types.count("session.aborted") >= 1 and "command.decided" in types


async def _readyz(gateway):
    import aiohttp

    async with aiohttp.ClientSession() as client:
        async with client.get(f"{gateway.control_url}/readyz") as response:
            return response.status, await response.text()
