"""Writing files so that no reader ever sees half of one: keys, certificates, digests."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlparse


def _write_temporary(path: Path, data: bytes, mode: int) -> Path:
    """``data`` in a new sibling file with ``mode`` from the start (a key is never readable by
    others, even briefly), written and fsynced."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o600 or 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def create_file_atomically(path: Path, data: bytes, mode: int) -> bool:
    """Create ``path`` unless it exists (then return False). It is linked into place whole: a reader
    never sees a partial file, and of two processes creating it at once the first link wins."""
    temporary = _write_temporary(path, data, mode)
    try:
        os.link(temporary, path)
        created = True
    except FileExistsError:
        created = False
    finally:
        temporary.unlink(missing_ok=True)
    if created:
        fsync_directory(path.parent)
    return created


def replace_file_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path``: a reader sees the old content or the new, never a mix."""
    temporary = _write_temporary(path, data, mode)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def file_url_path(url: str) -> str:
    """The path part of a ``file://`` (or ``sqlite://``) URL as written: ``file:///abs`` gives
    ``/abs``, and ``file://./rel`` / ``file://rel`` a relative path (the "host" is its first part),
    which the caller resolves against the directory it is relative to."""
    parsed = urlparse(url)
    return (parsed.netloc + parsed.path) if parsed.netloc in ("", ".", "..") else parsed.path
