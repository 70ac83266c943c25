"""Per-statement CPU cost of the PostgreSQL relay, without sockets.

Feeds ClientConnections the bytes of a pgbench select-only transaction (a client ``Q``, or
``P/B/D/E/S`` for the extended protocol) and the backend's answer, through fake transports, with a
real event-loop iteration after each side (the recorder's flush runs there, as in the server), and
prints CPU microseconds per transaction for: relay only (recording off), recording with ``write``.
It isolates the gateway's own Python work from the kernel and the other processes, so a change to
the hot path can be judged in a second. The end-to-end figure is ``bench/pg_overhead.py``.

On a shared machine, count instructions instead of timing: ``bench/hotpath_instructions.sh`` runs
one configuration under callgrind and counts only the second run's loop (start-up, imports and
first-use work left out).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import uvloop

from wardgate.core.audit import FileSpool, Recorder
from wardgate.devtools.harness import relay_frontend, relay_without_sockets
from wardgate.protocols.postgres import wire


class _NullTransport:
    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


def _simple_round(aid: int) -> tuple[bytes, bytes]:
    request = wire.query(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};")
    answer = (wire.message(b"T", b"\x00\x01abalance\x00" + bytes(18))
              + wire.message(b"D", b"\x00\x01\x00\x00\x00\x04" + b"1234")
              + wire.message(b"C", b"SELECT 1\x00") + wire.ready_for_query(b"I"))
    return request, answer


def _extended_round(aid: int) -> tuple[bytes, bytes]:
    text = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
    request = (wire.message(b"P", b"\x00" + text.encode() + b"\x00\x00\x00")
               + wire.message(b"B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x05" + str(aid % 99999).zfill(5).encode()
                              + b"\x00\x00")
               + wire.message(b"D", b"P\x00") + wire.message(b"E", b"\x00\x00\x00\x00\x00")
               + wire.message(b"S"))
    answer = (wire.message(b"1") + wire.message(b"2")
              + wire.message(b"T", b"\x00\x01abalance\x00" + bytes(18))
              + wire.message(b"D", b"\x00\x01\x00\x00\x00\x04" + b"1234")
              + wire.message(b"C", b"SELECT 1\x00") + wire.ready_for_query(b"I"))
    return request, answer


_runs = 0


async def _measure(recording: bool, protocol: str, rounds: int, directory: Path, sessions: int) -> float:
    spool = FileSpool(directory / f"audit-{protocol}-{recording}", "bench") if recording else None
    recorder = Recorder(spool)
    recorder.start(asyncio.get_running_loop())
    # One gateway, several sessions: they share its core (policy, metrics, decision caches) as in
    # `wardgate serve`; a core per session would miss the per-policy caches on every statement.
    frontend = relay_frontend(recorder)
    connections = [relay_without_sockets(recorder, _NullTransport(), _NullTransport(), name=f"bench{n}",
                                         frontend=frontend) for n in range(sessions)]
    build = _simple_round if protocol == "simple" else _extended_round
    # New statement texts in every run: pgbench picks among a million aids, so the exact-text cache
    # of the classifier rarely hits; a repeated run must not find the previous run's texts cached.
    global _runs
    _runs += 1
    traffic = [build(i) for i in range(_runs * rounds, (_runs + 1) * rounds)]
    batches = [traffic[at:at + sessions] for at in range(0, rounds, sessions)]
    os.getppid()  # marker: bench/hotpath_instructions.sh has callgrind dump its counts here
    # CPU time of this process, not wall-clock: on a shared machine waiting for a core is not our cost.
    started = time.process_time()
    for batch in batches:
        # Each session's request, then one event-loop iteration (it runs the recorder's flush, which
        # the relay schedules with call_soon, so its cost is counted); then each answer, and again.
        # Several sessions per iteration, as `wardgate serve` sees them under load: its flush
        # serves every session that forwarded something in that iteration.
        for connection, (request, _) in zip(connections, batch):
            connection.data_received(request)
        await asyncio.sleep(0)
        for connection, (_, answer) in zip(connections, batch):
            connection._from_backend(answer)
        await asyncio.sleep(0)
    elapsed = time.process_time() - started
    os.getppid()
    recorder.close()
    return elapsed / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5, help="report the fastest of N runs (noise only adds)")
    parser.add_argument("--protocol", choices=("simple", "extended"), action="append",
                        help="only this protocol (repeatable; default both)")
    parser.add_argument("--recording", choices=("off", "write"), action="append",
                        help="only this recording mode (repeatable; default both)")
    parser.add_argument("--sessions", type=int, default=4,
                        help="sessions served per event-loop iteration (default 4: under pgbench -c 8, "
                             "`wardgate serve` forwards ~3.7 messages per flush)")
    args = parser.parse_args()
    if args.sessions < 1 or args.rounds < args.sessions:
        parser.error("--sessions must be at least 1 and at most --rounds")
    protocols = args.protocol or ("simple", "extended")
    recordings = [mode == "write" for mode in (args.recording or ("off", "write"))]
    with tempfile.TemporaryDirectory() as tmp:
        for protocol in protocols:
            for recording in recordings:
                # uvloop, as in `wardgate serve`: its call_soon costs differ from asyncio's.
                cost = min(uvloop.run(_measure(recording, protocol, args.rounds, Path(tmp), args.sessions))
                           for _ in range(args.repeat))
                label = "recording (write)" if recording else "recording off"
                print(f"{protocol:9s} {label:18s} {cost:7.2f} µs/transaction")


if __name__ == "__main__":
    main()
