"""How fast `wardgate audit verify` checks a trail: builds a 1M-event trail (sessions of 20 statements,
signed 64 MiB segments, as the gateway writes them) and prints events per second for the build and
for the verification. Usage: bench/audit_verify_speed.py [--events N] [--keep DIR]."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from wardgate.audittool import verify_trail
from wardgate.core.audit import FileSpool, Recorder, SessionLog
from wardgate.core.integrity import LocalEd25519Signer


def build_trail(directory: Path, events: int) -> int:
    signer = LocalEd25519Signer(directory.parent / "signing-key.pem")
    recorder = Recorder(FileSpool(directory, "bench0001", signer=signer))
    written = 0
    session = 0
    while written < events:
        session += 1
        log = SessionLog(recorder, f"bench{session:012d}", {"gateway": "bench0001", "protocol": "postgres",
                                                            "resource": "orders-prod"})
        log.emit("session.started", {"peer": "127.0.0.1:1", "tls": True})
        for i in range(20):
            decided = log.emit("command.decided", {"kind": "query", "statement": f"SELECT {i}",
                                                   "decision": "allow", "rule": "r"})
            log.emit("command.result", {"command": decided, "status": "ok", "rows": 1})
        log.emit("session.ended", {"reason": "client disconnected"})
        written += 43
        recorder.commit()
    recorder.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="build the trail here and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="wardgate-verify-bench-"))
    directory = root / "audit"
    try:
        started = time.perf_counter()
        events = build_trail(directory, args.events)
        built = time.perf_counter() - started
        started = time.perf_counter()
        report = verify_trail(directory)
        checked = time.perf_counter() - started
        segments = len(list(directory.glob("*.jsonl")))
        print(f"trail: {events} events in {segments} segments, built in {built:.1f}s ({events / built:,.0f} events/s)")
        print(f"verify: {checked:.1f}s = {events / checked:,.0f} events/s; result: {'OK' if report.ok else 'FAILED'}")
        for finding in report.findings[:5]:
            print(f"  {finding.level}: {finding.message}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
