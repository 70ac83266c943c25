"""``wardgate serve`` run as users run it, in a subprocess on free ports, with TLS from its dev
certificate: shared by the tests of worker processes and of stopping."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from wardgate.core.audit import read_segment
from wardgate.devtools.pgserver import free_port

RESOURCE = "orders-prod"
WORKER = re.compile(r"wardgate: worker (\d+) pid (\d+)")
ALL_READY = re.compile(r"ready: (\d+) of \1 workers\n")  # the supervisor's /readyz when every worker is


def wardgate_command() -> list[str]:
    return [sys.executable, "-m", "wardgate.cli"]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class ServedGateway:
    """``wardgate serve`` in a subprocess, on free ports; ``overrides`` replace configuration keys
    (``workers``, ``shutdown_grace``, ``policy``…)."""

    def __init__(self, postgres, directory: Path, **overrides):
        self.directory = directory
        self.port, self.control_port = free_port(), free_port()
        config = {
            "listeners": [{"protocol": "postgres", "address": f"127.0.0.1:{self.port}"}],
            "control": {"address": f"127.0.0.1:{self.control_port}"},
            "state_dir": str(directory / "state"),
            "dev_issuer": {"enabled": True},
            "resources": {RESOURCE: {"protocol": "postgres", "host": postgres.host, "port": postgres.port,
                                     "database": "orders", "username": "wardgate_svc",
                                     "password": "env://WARDGATE_SERVED_TEST_PASSWORD"}},
            "audit": {"sink": f"file://{directory / 'audit'}"},
        }
        config.update(overrides)
        self.workers = config.get("workers", 1)
        self.config_path = directory / "wardgate.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.env = {**os.environ, "WARDGATE_SERVED_TEST_PASSWORD": postgres.service_password}
        self.log_path = directory / "serve.log"
        self.process: subprocess.Popen | None = None

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def start(self) -> "ServedGateway":
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([*wardgate_command(), "serve", "--config", str(self.config_path)],
                                            stdout=log, stderr=subprocess.STDOUT, cwd="/", env=self.env)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        """Until the gateway, and every worker, is ready (with workers ``/readyz`` answers 200 as soon
        as one is)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"wardgate serve exited: {self.output}"
            try:
                status, body = http_get(self.control_url + "/readyz")
                if status == 200 and (ALL_READY.fullmatch(body) if self.workers != 1 else body == "ready\n"):
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"not ready: {self.output}"
            time.sleep(0.1)

    def worker_pids(self) -> dict[int, int]:
        """slot → pid of the latest start of each worker, as the supervisor printed it."""
        return {int(slot): int(pid) for slot, pid in WORKER.findall(self.output)}

    def token(self, subject: str, groups: str) -> str:
        minted = subprocess.run([*wardgate_command(), "token", "--config", str(self.config_path), "--sub", subject,
                                 "--groups", groups], capture_output=True, text=True, env=self.env, timeout=30)
        assert minted.returncode == 0, minted.stderr
        return minted.stdout.strip()

    def dsn(self, token: str) -> str:
        return (f"host=127.0.0.1 port={self.port} user=agent dbname={RESOURCE} password={token} "
                f"sslmode=verify-full sslrootcert={self.directory / 'state' / 'dev-ca.pem'} connect_timeout=10")

    def connect(self, token: str) -> psycopg.Connection:
        return psycopg.connect(self.dsn(token), autocommit=True)

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        status, body = http_get(self.control_url + "/metrics")
        assert status == 200, body
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(body) for s in family.samples}

    def events(self) -> list[dict]:
        events = []
        for path in sorted((self.directory / "audit").glob("*.jsonl")):
            events.extend(json.loads(line) for line in read_segment(path) if line.strip())
        return events

    def wait_exit(self, timeout: float) -> int:
        """Its exit code; killed, and the test failed, if it has not exited within ``timeout``."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            pytest.fail(f"wardgate serve did not exit within {timeout}s: {self.output}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait_exit(40)


def audit_verify(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*wardgate_command(), "audit", "verify", str(directory)], capture_output=True,
                          text=True, timeout=60)
