"""The gateway image (``gateway_container/Dockerfile``), built and run for real with buildah.

No Docker engine and no container registry are reachable here, so ``FROM python:3.11-slim`` is served
by a **stand-in base image**: Debian bookworm (the slim image's own distribution) bootstrapped with
``debootstrap``, with Debian's Python 3.11, its headers and pip, tagged ``python:3.11-slim`` in a
private image store. Everything after ``FROM`` is the Dockerfile as deployers build it: the build
stage compiles the wheels, the runtime stage installs them and ``wardgate accelerators`` fails the
build if a compiled accelerator cannot load there.

The built image then runs the way the AWS program starts it (``infra.common.gateway_config.
boot_command``: configuration and TLS from environment variables), as its own user, and ``psql``
connects through it with ``sslmode=verify-full`` to a throwaway PostgreSQL.

Needs root, ``buildah`` and ``debootstrap`` (``.ci/run`` installs them) and Debian's package mirror
and PyPI; skipped, saying which is missing, otherwise (failed instead with ``WARDGATE_REQUIRE_IMAGE``
set, as in CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from infra.common.gateway_config import CONFIG_ENV, CONFIG_PATH, TLS_ENV, TLS_FROM_ENV_FILES, boot_command
from wardgate.core.audit import read_segment
from wardgate.devtools.pgserver import free_port
from wardgate.tlsdev import ensure_dev_certificate

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/wardgate:image-test"
BASE = "docker.io/library/python:3.11-slim"  # what the Dockerfile's FROM resolves to
BASE_PACKAGES = "python3,python3-pip,python3-venv,python3-dev,ca-certificates"
PSQL = shutil.which("psql") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))), None)


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "building an image needs root here"
    for tool in ("buildah", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {tool})"
    if PSQL is None:
        return "psql is not installed"
    return None


REQUIRED = os.environ.get("WARDGATE_REQUIRE_IMAGE", "") not in ("", "0")  # CI: a skip would hide a broken image
if _missing() is not None and REQUIRED:
    raise RuntimeError(f"WARDGATE_REQUIRE_IMAGE is set, but the image cannot be built here: {_missing()}")
# Bootstrapping the base and building take minutes (about 3 here), more than the suite's default timeout.
pytestmark = [pytest.mark.skipif(_missing() is not None, reason=_missing() or ""), pytest.mark.timeout(1800)]


def _skip_or_fail(reason: str) -> None:
    if REQUIRED:
        pytest.fail(reason)
    pytest.skip(reason)


class Buildah:
    """buildah with its own image store (vfs: no overlay mounts needed), so nothing outside the test's
    directory is touched."""

    def __init__(self, directory: Path):
        self.prefix = ["buildah", "--storage-driver", "vfs", "--root", str(directory / "storage"),
                       "--runroot", str(directory / "run")]

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"buildah {' '.join(args[:3])}… failed ({result.returncode}):\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def popen(self, *args: str, log: Path) -> subprocess.Popen:
        return subprocess.Popen([*self.prefix, *args], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _stand_in_base(buildah: Buildah, directory: Path) -> None:
    rootfs = directory / "base-rootfs"
    bootstrap = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(rootfs),
         "http://deb.debian.org/debian"], capture_output=True, text=True, timeout=1200)
    if bootstrap.returncode != 0:
        _skip_or_fail(f"debootstrap could not fetch Debian bookworm: {bootstrap.stderr.strip()[-300:]}")
    # What the official image differs in, for the Dockerfile's commands: `python`/`pip` on PATH, and
    # pip may install into the system interpreter (no PEP 668 marker).
    (rootfs / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
    for name, target in (("python", "/usr/bin/python3"), ("pip", "/usr/bin/pip3")):
        (rootfs / "usr/local/bin" / name).symlink_to(target)
    shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
    container = buildah("from", "scratch").stdout.strip()
    buildah("copy", container, str(rootfs), "/")
    buildah("commit", "-q", container, BASE)
    buildah("rm", container)
    shutil.rmtree(rootfs)


@pytest.fixture(scope="module")
def image() -> Iterator[tuple[Buildah, str]]:
    directory = Path(tempfile.mkdtemp(prefix="wardgate-image-"))
    buildah = Buildah(directory)
    try:
        _stand_in_base(buildah, directory)
        # The build context is what git tracks (as a fresh clone has it), not this working tree's
        # build products.
        context = directory / "context"
        context.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                                  "--exclude-standard"], capture_output=True, check=True).stdout
        for name in filter(None, archive.decode().split("\0")):
            source = ROOT / name
            if source.is_file():
                (context / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, context / name)
        build = ["bud", "--isolation", "chroot", "--pull=never", "--layers=false",
                 "-f", "gateway_container/Dockerfile", "-t", IMAGE]
        host_ca = Path("/etc/ssl/certs/ca-certificates.crt")
        if host_ca.is_file():
            # This host reaches PyPI through its own CA: let the build's RUN steps trust it too
            # (mounted for the build only; the image keeps its own bundle).
            build += ["-v", f"{host_ca}:{host_ca}:ro"]
        result = subprocess.run([*buildah.prefix, *build, str(context)], capture_output=True, text=True,
                                timeout=1800, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, f"the image did not build:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
        yield buildah, result.stdout
    finally:
        buildah("rm", "--all", check=False)
        buildah("rmi", "--all", "--force", check=False)
        shutil.rmtree(directory, ignore_errors=True)


def test_the_image_builds_with_every_accelerator_and_runs_as_its_own_user(image) -> None:
    buildah, build_output = image
    # `wardgate accelerators` ran in the runtime stage: each one loaded from the installed package.
    for accelerator in ("DataRow masker", "SQL template splitter", "audit event chain", "backend relay loop",
                        "detector prefilter"):
        assert any(line.startswith(accelerator + " ") and " in use " in line and "/dist-packages/wardgate/" in line
                   for line in build_output.splitlines()), f"{accelerator} not in use in the image"
    config = json.loads(buildah("inspect", "--type", "image", IMAGE).stdout)["OCIv1"]["config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["wardgate"] and config["Cmd"] == ["serve", "--config", "/etc/wardgate/config.yaml"]
    assert set(config["ExposedPorts"]) == {"6432/tcp", "9480/tcp"}
    # The build stage's compiler did not come along.
    container = buildah("from", IMAGE).stdout.strip()
    try:
        probe = buildah("run", "--isolation", "chroot", container, "--", "sh", "-c",
                        "command -v gcc || echo no-compiler; id -u; ls /etc/wardgate/policies", check=False)
        assert probe.returncode == 0, probe.stderr
        lines = probe.stdout.split()
        assert lines[:2] == ["no-compiler", "10001"], probe.stdout
        assert "ai-agent-default" in lines[2:], probe.stdout
    finally:
        buildah("rm", container, check=False)


def test_the_image_serves_psql_over_verified_tls_and_records_the_session(image, postgres, tmp_path) -> None:
    buildah, _ = image
    listener, control = free_port(), free_port()
    tls = ensure_dev_certificate(tmp_path / "tls", hostnames=("localhost",), ips=("127.0.0.1",))
    state = "/var/lib/wardgate"
    config = {
        "listeners": [{"protocol": "postgres", "address": f"127.0.0.1:{listener}",
                       "tls": {"cert_file": TLS_FROM_ENV_FILES["cert"], "key_file": TLS_FROM_ENV_FILES["key"]}}],
        "control": {"address": f"127.0.0.1:{control}"},
        "state_dir": f"{state}/state",
        "dev_issuer": {"enabled": True},
        # A bundle the image ships (COPY policies): agents read, destructive statements are refused.
        "policy": {"file": "/etc/wardgate/policies/ai-agent-default/policy.yaml", "watch": False},
        "resources": {"orders-prod": {"protocol": "postgres", "host": postgres.host, "port": postgres.port,
                                      "database": "orders", "username": "wardgate_svc",
                                      "password": "env://ORDERS_PASSWORD"}},
        "audit": {"sink": f"file://{state}/audit"},
    }
    environment = {CONFIG_ENV: yaml.safe_dump(config), TLS_ENV["cert"]: tls.cert_file.read_text(),
                   TLS_ENV["key"]: tls.key_file.read_text(), "ORDERS_PASSWORD": postgres.service_password}
    env_args = [arg for name, value in environment.items() for arg in ("--env", f"{name}={value}")]
    container = buildah("from", IMAGE).stdout.strip()
    log = tmp_path / "gateway.log"
    # As ECS starts it: the infra's boot command writes the configuration and TLS files, then execs.
    gateway = buildah.popen("run", "--isolation", "chroot", *env_args, container, "--", *boot_command(tls_from_env=True),
                            log=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{control}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert gateway.poll() is None, f"the gateway exited ({gateway.returncode}):\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"the gateway never became ready:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
        minted = buildah("run", "--isolation", "chroot", container, "--", "wardgate", "token", "--config",
                         "/tmp/wardgate/config.yaml", "--sub", "ci-image-test", "--groups", "dev")
        token = minted.stdout.strip()
        env = {**os.environ, "PGPASSWORD": token, "PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(tls.ca_file),
               "PGCONNECT_TIMEOUT": "10"}
        psql = [str(PSQL), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(listener), "-U", "agent", "-d", "orders-prod"]
        selected = subprocess.run([*psql, "-c", "SELECT 'through the image', current_user"], env=env,
                                  capture_output=True, text=True, timeout=60)
        assert selected.returncode == 0, selected.stderr + log.read_text()[-3000:]
        # The client is the agent; the backend session is the gateway's own role.
        assert selected.stdout.strip() == "through the image|wardgate_svc"
        dropped = subprocess.run([*psql, "-c", "DROP TABLE IF EXISTS image_test_never"], env=env,
                                 capture_output=True, text=True, timeout=60)
        assert dropped.returncode != 0 and "not allowed through wardgate" in dropped.stderr, dropped.stderr
        # The gateway runs as the image's user, not root.
        owners = {}
        for process in Path("/proc").glob("[0-9]*"):
            try:
                argv = (process / "cmdline").read_bytes().split(b"\0")
                # The gateway itself (python … wardgate serve), not the launcher's command line.
                if argv[-4:-1] == [b"serve", b"--config", CONFIG_PATH.encode()] and \
                        Path(argv[0].decode()).name not in ("buildah", "sh"):
                    owners[process.name] = process.stat().st_uid
            except OSError:
                pass  # gone meanwhile
        assert owners and set(owners.values()) == {10001}, owners
    finally:
        os.killpg(gateway.pid, 15)
        try:
            gateway.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(gateway.pid, 9)
            gateway.wait(10)
    # What the auditor reads: the session's events, in the container's audit directory.
    mount = Path(buildah("mount", container).stdout.strip())
    try:
        trail = mount / state.lstrip("/") / "audit"
        events = [json.loads(line) for path in sorted(trail.glob("*.jsonl")) for line in read_segment(path)]
        # The trail the image wrote verifies: chains, sealed segments and their signed digests.
        verified = subprocess.run([sys.executable, "-m", "wardgate.cli", "audit", "verify", str(trail)],
                                  capture_output=True, text=True, timeout=120)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        buildah("umount", container, check=False)
        buildah("rm", container, check=False)
    decided = [(e["statement"].split()[0], e["decision"], e["rule"]) for e in events
               if e.get("type") == "command.decided" and (e.get("identity") or {}).get("subject") == "ci-image-test"]
    assert decided == [("SELECT", "allow", "agents-read"), ("DROP", "deny", "deny-destructive")], decided
