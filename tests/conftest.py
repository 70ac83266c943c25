"""Shared fixtures for the whole test session (the local clouds' are in ``cloud_fixtures``)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from wardgate.devtools.pgserver import ThrowawayPostgres

pytest_plugins = ["cloud_fixtures"]


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
