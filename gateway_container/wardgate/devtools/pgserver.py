"""A throwaway PostgreSQL cluster for tests, the demo and benchmarks.

``ThrowawayPostgres`` runs ``initdb`` into a fresh temporary directory, starts a
postmaster on a free TCP port of 127.0.0.1 (and a unix socket in a private
temporary directory), and creates:

* a superuser (``.superuser`` / ``.superuser_password``) for the tests' own
  direct access,
* the role ``wardgate_svc`` with a random password (``.service_password``),
* the database ``orders`` owned by ``wardgate_svc``.

Every statement is logged (``log_statement=all``) to ``.log_path`` inside the
data directory, so a test can prove that a statement never reached the backend
(``log_text()``).  Server settings are otherwise PostgreSQL's defaults (fsync
stays on), apart from ``max_connections=200`` and
``password_encryption=scram-sha-256``.

When running as root, the server binaries (which refuse to run as root) are
run as the ``postgres`` system user; otherwise as the current user.  The
postmaster is a direct child of this process (not daemonised by ``pg_ctl``),
stays in its process group (so killing the group kills it), and, when started
from the main thread, gets SIGQUIT should this process die without calling
:meth:`ThrowawayPostgres.stop` (Linux parent-death signal); an ``atexit`` hook
covers a normal interpreter exit.  Binaries are looked up in ``$WARDGATE_PG_BINDIR``, then on
``PATH``, then in ``/usr/lib/postgresql/*/bin`` (newest version first).

Only the standard library is used; ``psql`` from the same installation runs
the setup SQL.
"""

from __future__ import annotations

import atexit
import ctypes
import glob
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Callable

__all__ = ["ThrowawayPostgres", "find_pg_binary", "PG_AUTH_METHODS", "free_port", "env_without_libpq"]

PG_AUTH_METHODS = frozenset({"scram-sha-256", "md5", "password", "trust"})

SERVICE_ROLE = "wardgate_svc"
SERVICE_DB = "orders"
SUPERUSER = "postgres"

_INSTALL_HINT = "install PostgreSQL 15 server binaries (apt-get install postgresql-15)"
_CLIENT_HINT = "install the PostgreSQL client (apt-get install postgresql-client)"
_ROLE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

# Waits (seconds).
START_TIMEOUT = 60
STOP_TIMEOUT = 30
COMMAND_TIMEOUT = 120
RELOAD_TIMEOUT = 15
PORT_ATTEMPTS = 5


def _version_key(path: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,)
    version = Path(path).parent.name
    return tuple(int(p) for p in re.findall(r"\d+", version)) or (0,)


def find_pg_binary(name: str, bin_dir: Path | None = None) -> Path | None:
    """Find a PostgreSQL program: ``bin_dir`` first, then $WARDGATE_PG_BINDIR,
    then PATH, then ``/usr/lib/postgresql/*/bin`` (newest first)."""
    candidates: list[Path] = []
    if bin_dir is not None:
        candidates.append(Path(bin_dir) / name)
    env_dir = os.environ.get("WARDGATE_PG_BINDIR")
    if env_dir:
        candidates.append(Path(env_dir) / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


_ROOT_PREFIX = "wardgate-pg-"
_SOCKET_PREFIX = "wgpgs-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_dirs(parent: Path | None, prefix: str) -> None:
    """Remove <prefix><pid>-* directories whose creating process is gone
    (and whose postmaster, if any, is gone too)."""
    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    try:
        entries = list(parent.glob(prefix + "*-*"))
    except OSError:
        return
    for entry in entries:
        m = re.match(re.escape(prefix) + r"(\d+)-", entry.name)
        if not m or not entry.is_dir() or _pid_alive(int(m.group(1))):
            continue
        try:
            postmaster = int((entry / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            postmaster = None
        if postmaster is not None and _pid_alive(postmaster):
            continue  # its server still runs (parent-death signal not applied): leave it
        shutil.rmtree(entry, ignore_errors=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to 0, read, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sql_literal(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL byte in SQL literal")
    return "'" + value.replace("'", "''") + "'"


def _sql_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _libpq_value(value: str | int) -> str:
    text = str(value)
    if text and not re.search(r"[\s'\\]", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def env_without_libpq(**extra: str) -> dict[str, str]:
    """The environment without PG* variables (they would redirect psql/pgbench), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra)
    return env


def _clean_env() -> dict[str, str]:
    """For the server programs: no PG* variables, and the C locale."""
    env = env_without_libpq(LC_ALL="C")
    env.pop("LANG", None)
    return env


class ThrowawayPostgres:
    """A private PostgreSQL cluster, removed again by :meth:`stop`.

    Usage::

        with ThrowawayPostgres() as pg:
            psycopg.connect(pg.dsn(user="wardgate_svc", password=pg.service_password))

    Attributes after :meth:`start`: ``host`` ("127.0.0.1"), ``port``,
    ``socket_dir``, ``data_dir``, ``log_path``, ``superuser``,
    ``superuser_password``, ``service_user`` ("wardgate_svc"),
    ``service_password``, ``dbname`` ("orders"), ``bin_dir``.
    """

    host = "127.0.0.1"

    def __init__(self, base_dir: Path | None = None, *, log_statement: str = "all") -> None:
        """``base_dir``: where to make the temporary cluster directory (the
        system temp dir by default; as root it must be traversable by the
        postgres user). ``log_statement``: keep "all" (the default) for tests
        that read the log; a benchmark may pass "none"."""
        if log_statement not in {"none", "ddl", "mod", "all"}:
            raise ValueError(f"log_statement must be none, ddl, mod or all, not {log_statement!r}")
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.log_statement = log_statement
        self.superuser = SUPERUSER
        self.superuser_password = secrets.token_urlsafe(18)
        self.service_user = SERVICE_ROLE
        self.service_password = secrets.token_urlsafe(18)
        self.dbname = SERVICE_DB
        self.port: int | None = None
        self.root_dir: Path | None = None
        self.data_dir: Path | None = None
        self.socket_dir: Path | None = None
        self.log_path: Path | None = None
        self.bin_dir: Path | None = None
        self._passwords: dict[str, str | None] = {}
        self._role_hba: list[tuple[str, str]] = []
        self._hba_generation = 0
        self._ssl = False
        self._running = False
        self._uid: int | None = None  # when root: run server programs as the postgres user
        self._gid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "ThrowawayPostgres":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._running

    @property
    def postmaster_pid(self) -> int | None:
        """The postmaster's process id while it runs (benchmarks account its backends' CPU time)."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> "ThrowawayPostgres":
        if self._running:
            return self
        self._locate_binaries()
        self._choose_os_user()
        self._passwords, self._role_hba, self._hba_generation = {}, [], 0
        atexit.register(self.stop)
        self._atexit_registered = True
        try:
            self._make_dirs()
            self._initdb()
            self._write_hba()
            self._start_server()
            self._bootstrap()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Fast shutdown, then remove every directory this instance made.
        Safe to call more than once."""
        try:
            self._shutdown_server()
        finally:
            self._running = False
            for directory in (self.root_dir, self.socket_dir):
                if directory is not None:
                    shutil.rmtree(directory, ignore_errors=True)
            self.root_dir = self.socket_dir = None
            if self._atexit_registered:
                atexit.unregister(self.stop)
                self._atexit_registered = False

    # ------------------------------------------------------------------ public API

    def dsn(self, user: str | None = None, password: str | None = None, dbname: str | None = None) -> str:
        """A libpq keyword/value connection string for 127.0.0.1:port.

        ``user`` defaults to the superuser; ``password`` defaults to the
        password this instance set for ``user`` (omitted for roles it does not
        know, or that were created without one); ``dbname`` defaults to
        ``orders``."""
        self._require_running()
        user = user or self.superuser
        if password is None:
            password = self._passwords.get(user)
        parts = {
            "host": self.host,
            "port": self.port,
            "user": user,
            "dbname": dbname or self.dbname,
        }
        if password is not None:
            parts["password"] = password
        return " ".join(f"{k}={_libpq_value(v)}" for k, v in parts.items())

    def env_for(self, user: str | None = None, password: str | None = None, dbname: str | None = None) -> dict[str, str]:
        """PG* environment variables (only those: merge into ``os.environ``
        yourself) for psql / pgbench to reach this server over TCP."""
        self._require_running()
        user = user or self.superuser
        if password is None:
            password = self._passwords.get(user)
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": user,
            "PGDATABASE": dbname or self.dbname,
            "PGSSLMODE": "disable",
            "PGCONNECT_TIMEOUT": "10",
        }
        if password is not None:
            env["PGPASSWORD"] = password
        return env

    def add_role(self, name: str, password: str | None, method: str = "scram-sha-256") -> None:
        """Create a LOGIN role and let it authenticate with ``method``
        (one of scram-sha-256, md5, password, trust) from 127.0.0.1 and the
        unix socket. Its pg_hba lines go before the catch-all scram line; the
        configuration is reloaded and the reload awaited before returning.

        For ``md5`` the password is stored as an MD5 hash (so the md5
        exchange, not SCRAM, is used); otherwise as a SCRAM verifier."""
        self._require_running()
        if method not in PG_AUTH_METHODS:
            raise ValueError(f"unsupported auth method {method!r}; expected one of {sorted(PG_AUTH_METHODS)}")
        if not _ROLE_NAME_RE.match(name):
            raise ValueError(f"role name {name!r} must match {_ROLE_NAME_RE.pattern}")
        if password is None and method != "trust":
            raise ValueError(f"a password is required for method {method!r}")
        encryption = "md5" if method == "md5" else "scram-sha-256"
        pw_clause = f" PASSWORD {_sql_literal(password)}" if password is not None else ""
        self.run_sql(
            "SET log_statement = 'none';\n"
            f"SET password_encryption = {_sql_literal(encryption)};\n"
            f"CREATE ROLE {_sql_ident(name)} LOGIN{pw_clause};\n",
            dbname="postgres",
        )
        self._passwords[name] = password
        self._role_hba.append((name, method))
        self._write_hba()
        self.reload()

    def enable_ssl(self, cert_file: Path, key_file: Path) -> None:
        """Serve TLS with this certificate and key (copied into the data directory, owned by the
        server's user as PostgreSQL requires), then reload."""
        self._require_running()
        assert self.data_dir is not None
        for source, name, mode in ((cert_file, "server.crt", 0o644), (key_file, "server.key", 0o600)):
            target = self.data_dir / name
            shutil.copyfile(source, target)
            target.chmod(mode)
            self._chown(target)
        self._ssl = True
        self.reload()

    def reload(self) -> None:
        """Reload postgresql.conf and pg_hba.conf and wait until the
        postmaster has applied them (new sessions see the new generation)."""
        self._require_running()
        self._hba_generation += 1
        self._write_conf()
        self.run_sql("SELECT pg_reload_conf();", dbname="postgres")
        deadline = time.monotonic() + RELOAD_TIMEOUT
        want = str(self._hba_generation)
        while True:
            seen = self.run_sql("SHOW wardgate.conf_generation;", dbname="postgres").strip()
            if seen == want:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not apply the reloaded configuration within {RELOAD_TIMEOUT}s")
            time.sleep(0.05)

    def run_sql(
        self,
        sql: str,
        *,
        dbname: str | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> str:
        """Run SQL with psql (superuser by default, over TCP, ON_ERROR_STOP)
        and return its unaligned, tuples-only output. Raises RuntimeError with
        psql's message on failure."""
        self._require_running()
        psql = find_pg_binary("psql", self.bin_dir)
        if psql is None:
            raise RuntimeError(f"psql not found: {_CLIENT_HINT}")
        env = _clean_env()
        env.update(self.env_for(user, password, dbname))
        proc = subprocess.run(
            [str(psql), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"],
            input=sql,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            cwd=self.root_dir,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed (exit {proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def log_size(self) -> int:
        """Current size of the server log in bytes: pass it to
        ``log_text(since=…)`` to read only what was logged afterwards."""
        if self.log_path is None or not self.log_path.exists():
            return 0
        return self.log_path.stat().st_size

    def log_text(self, since: int = 0) -> str:
        """The backend's own log (every statement, connection, error),
        from byte offset ``since``."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", errors="replace")

    def binary(self, name: str) -> Path:
        """Path of a PostgreSQL program (psql, pgbench, …) of the same
        installation where possible; RuntimeError if none is found."""
        found = find_pg_binary(name, self.bin_dir)
        if found is None:
            hint = _CLIENT_HINT if name in {"psql", "pgbench"} else _INSTALL_HINT
            raise RuntimeError(f"{name} not found: {hint}")
        return found

    # ------------------------------------------------------------------ internals

    def _require_running(self) -> None:
        if not self._running:
            raise RuntimeError("ThrowawayPostgres is not running: call start() first")

    def _locate_binaries(self) -> None:
        initdb = find_pg_binary("initdb")
        if initdb is None:
            raise RuntimeError(f"initdb not found: {_INSTALL_HINT}")
        # /usr/local/bin/initdb may be a symlink into /usr/lib/postgresql/N/bin:
        # take postgres (and psql) from the very same installation.
        self.bin_dir = Path(os.path.realpath(initdb)).parent
        for name in ("postgres",):
            if not (self.bin_dir / name).is_file():
                raise RuntimeError(f"{name} not found next to {initdb}: {_INSTALL_HINT}")
        if find_pg_binary("psql", self.bin_dir) is None:
            raise RuntimeError(f"psql not found: {_CLIENT_HINT}")

    def _choose_os_user(self) -> None:
        self._uid = self._gid = None
        if os.geteuid() != 0:
            return
        import pwd

        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError(
                "running as root, but there is no 'postgres' system user to run the server as: "
                + _INSTALL_HINT
            ) from None
        self._uid, self._gid = entry.pw_uid, entry.pw_gid

    def _as_server_user(self) -> dict[str, object]:
        """subprocess keyword arguments that drop root to the postgres user."""
        if self._uid is None:
            return {}
        return {"user": self._uid, "group": self._gid, "extra_groups": []}

    def _run_server_program(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root_dir,  # the postgres user may not be able to enter our cwd
            stdin=subprocess.DEVNULL,
            **self._as_server_user(),  # type: ignore[arg-type]
        )

    def _chown(self, path: Path) -> None:
        if self._uid is not None:
            os.chown(path, self._uid, self._gid)  # type: ignore[arg-type]

    def _make_dirs(self) -> None:
        if self.base_dir is not None:
            self.base_dir.mkdir(parents=True, exist_ok=True)
        # Directory names carry our pid, so a later run can remove what a
        # killed one (SIGKILL, SIGTERM: no atexit) left behind.
        _remove_stale_dirs(self.base_dir, _ROOT_PREFIX)
        _remove_stale_dirs(None, _SOCKET_PREFIX)
        self.root_dir = Path(tempfile.mkdtemp(prefix=f"{_ROOT_PREFIX}{os.getpid()}-", dir=self.base_dir))
        self._check_traversable(self.root_dir.parent)
        # The socket path must stay short (sun_path is ~107 bytes): its own
        # temp dir under the system temp dir, whatever base_dir is.
        self.socket_dir = Path(tempfile.mkdtemp(prefix=f"{_SOCKET_PREFIX}{os.getpid()}-"))
        self.data_dir = self.root_dir / "data"
        self.log_path = self.data_dir / "postgres.log"
        for directory in (self.root_dir, self.socket_dir):
            directory.chmod(0o700)
            self._chown(directory)

    def _check_traversable(self, directory: Path) -> None:
        """As root the server runs as postgres, which must be able to reach
        our directories: every ancestor needs the matching x bit."""
        if self._uid is None:
            return
        import pwd

        gids = set(os.getgrouplist(pwd.getpwuid(self._uid).pw_name, self._gid))  # type: ignore[arg-type]
        for path in (directory, *directory.parents):
            st = path.stat()
            if st.st_uid == self._uid:
                ok = st.st_mode & stat.S_IXUSR
            elif st.st_gid in gids:
                ok = st.st_mode & stat.S_IXGRP
            else:
                ok = st.st_mode & stat.S_IXOTH
            if not ok:
                raise RuntimeError(
                    f"{path} is not accessible to the 'postgres' user that runs the server "
                    f"(we run as root): choose a base_dir below a world-traversable directory such as "
                    f"{tempfile.gettempdir()}, or leave base_dir unset"
                )

    def _initdb(self) -> None:
        assert self.root_dir is not None and self.bin_dir is not None and self.data_dir is not None
        pwfile = self.root_dir / "superuser.pw"
        pwfile.write_text(self.superuser_password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        try:
            proc = self._run_server_program(
                str(self.bin_dir / "initdb"),
                "-D", str(self.data_dir),
                "-U", self.superuser,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",  # only initdb's final sync of the new files; the server keeps fsync=on
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        self._passwords[self.superuser] = self.superuser_password
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write("\n# wardgate.devtools.pgserver: its settings come last\ninclude = 'wardgate.conf'\n")

    def _write_conf(self) -> None:
        assert self.data_dir is not None and self.socket_dir is not None
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": _sql_literal(str(self.socket_dir)),
            "max_connections": "200",
            "password_encryption": "'scram-sha-256'",
            "logging_collector": "off",
            "log_destination": "'stderr'",
            "log_statement": _sql_literal(self.log_statement),
            "log_connections": "on",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "ssl": "on" if self._ssl else "off",
            "wardgate.conf_generation": _sql_literal(str(self._hba_generation)),
        }
        conf = self.data_dir / "wardgate.conf"
        conf.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        self._chown(conf)

    def _write_hba(self) -> None:
        assert self.data_dir is not None
        lines = ["# managed by wardgate.devtools.pgserver", "# TYPE  DATABASE  USER  ADDRESS  METHOD"]
        for name, method in self._role_hba:
            lines.append(f'local all "{name}" {method}')
            lines.append(f'host  all "{name}" 127.0.0.1/32 {method}')
        lines.append("local all all scram-sha-256")
        lines.append("host  all all 127.0.0.1/32 scram-sha-256")
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("\n".join(lines) + "\n")
        self._chown(hba)

    def _start_server(self) -> None:
        last_error = ""
        for _attempt in range(PORT_ATTEMPTS):
            self.port = free_port()
            self._write_conf()
            offset = self.log_size()
            if self._spawn_postmaster():
                self._running = True
                return
            log = self.log_text(since=offset)
            last_error = f"PostgreSQL did not start (port {self.port}); server log:\n{log}"
            if "could not bind" in log or "Address already in use" in log or "could not create any TCP/IP sockets" in log:
                continue  # port taken between our probe and the postmaster's bind: try another
            break
        raise RuntimeError(last_error)

    def _spawn_postmaster(self) -> bool:
        """Start the postmaster; True once it accepts connections, False if it
        exited. Raises RuntimeError on timeout (after killing it)."""
        assert self.bin_dir is not None and self.data_dir is not None and self.log_path is not None
        self.log_path.touch()
        self._chown(self.log_path)
        preexec = _parent_death_hook() if threading.current_thread() is threading.main_thread() else None
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_clean_env(),
                cwd=self.root_dir,
                preexec_fn=preexec,
                **self._as_server_user(),  # type: ignore[arg-type]
            )
        pidfile = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            try:
                lines = pidfile.read_text().splitlines()
            except OSError:
                lines = []
            # Line 8 of postmaster.pid is the postmaster's status (what pg_ctl -w polls).
            if len(lines) >= 8 and int(lines[0] or 0) == self._proc.pid and lines[7].strip() == "ready":
                return True
            time.sleep(0.05)
        self._shutdown_server()
        raise RuntimeError(f"PostgreSQL did not become ready within {START_TIMEOUT}s; server log:\n{self.log_text()}")

    def _bootstrap(self) -> None:
        self.run_sql(
            "SET log_statement = 'none';\n"
            f"CREATE ROLE {_sql_ident(self.service_user)} LOGIN PASSWORD {_sql_literal(self.service_password)};\n"
            f"CREATE DATABASE {_sql_ident(self.dbname)} OWNER {_sql_ident(self.service_user)};\n",
            dbname="postgres",
        )
        self._passwords[self.service_user] = self.service_password

    def _shutdown_server(self) -> None:
        """Fast shutdown (SIGINT); immediate shutdown (SIGQUIT) then SIGKILL
        if it does not finish in time."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGQUIT, 10), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                return
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def _parent_death_hook() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel SIGQUIT the postmaster (immediate
    shutdown) if the thread that started it dies. Linux only; resolved in the
    parent, since the forked child must not import anything."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    sigquit = int(signal.SIGQUIT)

    def hook() -> None:
        prctl(1, sigquit, 0, 0, 0)  # PR_SET_PDEATHSIG, after the drop to the postgres user
        if os.getppid() != parent:  # parent already gone between fork and prctl
            os.kill(os.getpid(), sigquit)

    return hook
