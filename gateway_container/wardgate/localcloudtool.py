"""``wardgate localcloud up|down|env``: the Docker-free local cloud for developers.

``up`` starts the emulators of the chosen clouds on free loopback ports (``devtools/localcloud``),
creates the same queues, buckets, tables, keys and secrets the Pulumi programs create, writes the
environment and resource URLs to ``DIR/env`` and ``DIR/resources.json``, and stays in the foreground
until interrupted (or ``down``), then stops everything it started. ``env`` prints the environment as
shell ``export`` lines; ``down`` stops a running ``up`` through its pid file.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

CLOUDS = ("aws", "gcp", "azure")
DEFAULT_DIR = Path(".wardgate-localcloud")


def _cloud_class(name: str):
    if name == "aws":
        from wardgate.devtools.localcloud.aws import AwsLocalCloud
        return AwsLocalCloud
    if name == "gcp":
        from wardgate.devtools.localcloud.gcp import GcpLocalCloud
        return GcpLocalCloud
    if name == "azure":
        from wardgate.devtools.localcloud.azure import AzureLocalCloud
        return AzureLocalCloud
    raise ValueError(f"unknown cloud {name!r} (choose from {', '.join(CLOUDS)})")


def up(directory: Path, clouds: list[str], prefix: str = "wardgate", *, once: bool = False) -> int:
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    pid_file = directory / "pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), 0)
            print(f"wardgate localcloud: already running (pid {pid_file.read_text().strip()}); "
                  f"`wardgate localcloud down --dir {directory}` first", file=sys.stderr)
            return 1
        except (OSError, ValueError):
            pid_file.unlink()  # a stale pid file from an up that died
    started = []
    environment: dict[str, str] = {}
    resources: dict[str, dict[str, str]] = {}
    stop = {"now": False}

    def request_stop(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        for name in clouds:
            cloud = _cloud_class(name)(directory / name)
            started.append(cloud)
            env = cloud.start()
            environment.update(env)
            # The provisioning clients read the endpoints from the environment, as users' will.
            os.environ.update(env)
            resources[name] = cloud.provision(prefix)
        (directory / "env").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(environment.items())))
        (directory / "resources.json").write_text(json.dumps(resources, indent=2, sort_keys=True) + "\n")
        pid_file.write_text(str(os.getpid()))
        print(f"wardgate localcloud: {', '.join(clouds)} running; environment in {directory / 'env'}")
        for name, urls in resources.items():
            for key, url in sorted(urls.items()):
                print(f"  {name:6} {key:16} {url}")
        print("stop with Ctrl-C or `wardgate localcloud down`", flush=True)
        while not stop["now"] and not once:
            time.sleep(0.5)
        return 0
    except Exception as exc:
        print(f"wardgate localcloud: could not start: {exc}", file=sys.stderr)
        return 1
    finally:
        for cloud in reversed(started):
            try:
                cloud.stop()
            except Exception as exc:  # stop the others regardless
                print(f"wardgate localcloud: stopping {type(cloud).__name__}: {exc}", file=sys.stderr)
        pid_file.unlink(missing_ok=True)


def env(directory: Path) -> int:
    path = directory / "env"
    if not path.exists():
        print(f"wardgate localcloud: no environment in {directory} (is `wardgate localcloud up` running?)",
              file=sys.stderr)
        return 1
    sys.stdout.write(path.read_text())
    return 0


def down(directory: Path, timeout: float = 30.0) -> int:
    pid_file = directory / "pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        print(f"wardgate localcloud: nothing running in {directory}", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        print("wardgate localcloud: was not running (stale pid file removed)", file=sys.stderr)
        return 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("wardgate localcloud: stopped")
            return 0
        time.sleep(0.2)
    print(f"wardgate localcloud: pid {pid} did not stop within {timeout:.0f}s", file=sys.stderr)
    return 1


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("localcloud", help="run the local cloud (emulators) without Docker")
    commands = parser.add_subparsers(dest="localcloud_command", required=True)
    start = commands.add_parser("up", help="start emulators, create resources, stay in the foreground")
    start.add_argument("--cloud", action="append", choices=CLOUDS,
                       help="cloud to start (repeatable; default: all three)")
    start.add_argument("--prefix", default="wardgate", help="name prefix of the created resources")
    start.add_argument("--once", action="store_true", help="start, provision, print, then stop (a check)")
    for command in (start, commands.add_parser("env", help="print the environment as export lines"),
                    commands.add_parser("down", help="stop a running `up`")):
        command.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state directory (default %(default)s)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    if args.localcloud_command == "up":
        return up(args.dir, args.cloud or list(CLOUDS), args.prefix, once=args.once)
    if args.localcloud_command == "env":
        return env(args.dir)
    return down(args.dir)
