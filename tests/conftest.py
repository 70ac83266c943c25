"""Shared fixtures for the whole test session (the local clouds' are in ``cloud_fixtures``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from wardgate.devtools.pgserver import ThrowawayPostgres

pytest_plugins = ["cloud_fixtures"]

_session_tmp: Path | None = None


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Every temporary directory the tests and the code they run create with ``tempfile`` (in this
    process, and in ``wardgate serve`` and other subprocesses through TMPDIR) goes into one directory,
    removed when the session ends: a test that does not remove its own leaves nothing behind (runs
    used to leave hundreds of directories in /tmp each)."""
    global _session_tmp
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is not None:
        factory.getbasetemp()  # pytest's own tmp_path stays where it was (kept for the last runs)
    _session_tmp = Path(tempfile.mkdtemp(prefix="wardgate-tests-"))
    _session_tmp.chmod(0o711)  # the postgres user (throwaway clusters, their TLS files) passes through
    tempfile.tempdir = str(_session_tmp)
    os.environ["TMPDIR"] = str(_session_tmp)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _session_tmp is not None:
        shutil.rmtree(_session_tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[ThrowawayPostgres]:
    """One throwaway PostgreSQL cluster for the whole test session.

    It has the role ``wardgate_svc`` (``.service_password``, SCRAM) owning the
    database ``orders``, a superuser (``.superuser``/``.superuser_password``),
    logs every statement to ``.log_path`` (read with ``log_text(since=…)``,
    take the offset first with ``log_size()``), and ``add_role(name, password,
    method)`` for other auth methods. Tests share it: use unique role and
    table names.
    """
    pg = ThrowawayPostgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 1 MiB tmpfs to fill (needs root to mount; CI runs as root)."""
    mountpoint = Path(tempfile.mkdtemp(prefix="wardgate-fulldisk-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        os.rmdir(mountpoint)
        pytest.skip(f"cannot mount a tmpfs to fill ({mounted.stderr.strip()})")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
        os.rmdir(mountpoint)
