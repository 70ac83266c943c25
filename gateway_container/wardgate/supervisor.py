"""A gateway of several worker processes (``workers:`` above 1), so one container uses all its CPUs.

One event loop is one CPU: a gateway container given two vCPUs used one of them. The supervisor
process owns the listening sockets and the control port; each worker is a whole gateway process
without either (``server.Gateway`` with a ``WorkerRole``):

- **Connections**: the supervisor accepts and hands each client socket to the next live worker in
  turn (``SCM_RIGHTS`` over a ``SOCK_SEQPACKET`` pair, before a byte is read: TLS, startup and the
  whole session are the worker's). Round-robin rather than ``SO_REUSEPORT``: the kernel's hash can
  give six of eight pgbench clients to one worker, and no other local process can bind the port.
- **Cancel keys** carry the issuing worker's slot (``CancelRegistry``); a CancelRequest reaching
  another worker is passed to the owner over its internal socket.
- **Control port** (supervisor): ``/metrics`` sums the workers' metrics, ``/readyz`` is ready while at
  least one worker is (``aggregate_readiness``: one restarting worker does not make the replica look
  down; the body names it), dev issuer discovery and JWKS, the approvals webhook and its notifier.
- **Audit**: each worker writes its own segments (its own gateway id) into the shared spool, seals,
  signs and ships them; the spool and the archive are safe for several writers.
- **Approvals**: held statements wait on the shared decision store (polled), so an approval given at
  the supervisor's webhook reaches the worker that holds the statement.
- **A worker that dies** loses its sessions (clients see the connection close) and is started again
  (its unsealed segment is recovered by the new worker); the others go on. The supervisor's death
  stops the workers: their channel ends.
- **Signals**: SIGTERM/SIGINT stop everything: each worker closes its sessions as they become idle,
  for at most ``shutdown_grace``, then the rest (every session's end recorded); a second one stops at
  once. SIGHUP reloads the policy everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wardgate.config import GatewayConfig, parse_address
from wardgate.metrics import merge_expositions
from wardgate.server import Gateway, StartError, close_watched, start_or_explain, worker_socket_path

log = logging.getLogger("wardgate.supervisor")

START_TIMEOUT = 60.0     # a worker must be serving within this long
STOP_TIMEOUT = 30.0      # after its shutdown_grace: then it is killed
RESTART_DELAY_MAX = 30.0  # backoff between restarts of a worker that keeps dying at start
SCRAPE_TIMEOUT = 5.0


def aggregate_readiness(problems: Sequence[str | None], *, accepting: bool = True) -> tuple[bool, str]:
    """The supervisor's readiness from each worker's problem (``None``: ready and answering):
    ready while the supervisor accepts connections and at least one worker is ready, so one worker
    being restarted does not take the replica out of its load balancer. The one-line body counts the
    ready workers and names every other one's problem (``ready: 1 of 2 workers; worker 1: not running``).

    Each worker counts alone, whatever its problem: one whose audit sink is down refuses statements
    (fail-closed) and is not ready, but does not make the others unready; workers share one sink, so
    an outage of it takes them all, and the replica, down together."""
    ready_count = sum(problem is None for problem in problems)
    ready = accepting and ready_count > 0
    parts = [f"{'ready' if ready else 'not ready'}: {ready_count} of {len(problems)} workers"]
    if not accepting:
        parts.append("stopping: not accepting connections")
    parts.extend(" ".join(problem.split()) for problem in problems if problem is not None)
    return ready, "; ".join(parts) + "\n"


class WorkerStartError(StartError):
    """A worker did not start; its own error is in the log above."""


@dataclass
class WorkerProcess:
    slot: int
    process: asyncio.subprocess.Process | None = None
    channel: socket.socket | None = None
    ready: bool = False
    started_at: float = 0.0
    ready_waiter: asyncio.Future | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, config: GatewayConfig, config_path: Path, workers: int):
        self.config = config
        self.config_path = Path(config_path).resolve()
        self.count = workers
        self.control = Gateway(config, config_dir=self.config_path.parent, control_only=True, supervisor=self)
        self.workers = [WorkerProcess(slot) for slot in range(1, workers + 1)]
        self.listener_addresses: list[tuple[str, int]] = []
        self.restarts = 0
        self.run_dir: Path | None = None
        self._listeners: list[socket.socket] = []
        self._next = 0
        self._stopping = False
        self._monitors: list[asyncio.Task] = []

    # --- start and stop -----------------------------------------------------------------------------
    async def start(self) -> None:
        # Private (0700) and short: Unix socket paths are limited to 107 bytes.
        self.run_dir = Path(tempfile.mkdtemp(prefix="wardgate-"))
        try:
            # Keys, dev certificate, dev issuer: made once, here, before the workers start.
            await start_or_explain(self.control)
            for index, listener in enumerate(self.config.listeners):
                self._listen(index, *parse_address(listener.address))
            await asyncio.gather(*(self._spawn(worker) for worker in self.workers))
        except BaseException:
            await self.stop()
            raise
        for worker in self.workers:
            self._monitors.append(asyncio.get_running_loop().create_task(self._monitor(worker)))

    def _listen(self, index: int, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(511)
            sock.setblocking(False)
            self._listeners.append(sock)
            self.listener_addresses.append(sock.getsockname()[:2])
            loop.add_reader(sock.fileno(), self._accept, index, sock)
            if port == 0:
                port = sock.getsockname()[1]  # every address of a name gets the same port

    async def stop(self) -> None:
        self._stopping = True
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()
        for task in self._monitors:
            task.cancel()
        # Each worker drains its sessions (config shutdown_grace), then stops.
        self.signal_workers(signal.SIGTERM)
        for worker in self.workers:
            await self._reap(worker)
        await self.control.stop()
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def signal_workers(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(signum)

    async def _reap(self, worker: WorkerProcess) -> None:
        process = worker.process
        if process is None:
            return
        timeout = self.config.shutdown_grace + STOP_TIMEOUT
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except asyncio.TimeoutError:
            log.error("worker %d (pid %d) did not stop within %.0fs: killed", worker.slot, process.pid, timeout)
            process.kill()
            await process.wait()
        self._close_channel(worker)

    def reload_policy(self) -> None:
        if self.config.policy is None:
            return
        self.control.reload_policy()
        self.signal_workers(signal.SIGHUP)

    # --- workers ------------------------------------------------------------------------------------
    async def _spawn(self, worker: WorkerProcess) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        host, port = self.control.control_address
        command = [sys.executable, "-m", "wardgate.cli", "serve", "--config", str(self.config_path),
                   "--worker-slot", str(worker.slot), "--worker-channel", str(theirs.fileno()),
                   "--worker-control", f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                   "--worker-run-dir", str(self.run_dir)]
        try:
            worker.process = await asyncio.create_subprocess_exec(*command, pass_fds=[theirs.fileno()])
        finally:
            theirs.close()
        ours.setblocking(False)
        worker.channel, worker.ready, worker.started_at = ours, False, time.monotonic()
        worker.ready_waiter = loop.create_future()
        loop.add_reader(ours.fileno(), self._on_worker_message, worker)
        log.info("worker %d started (pid %d)", worker.slot, worker.process.pid)
        print(f"wardgate: worker {worker.slot} pid {worker.process.pid}", flush=True)
        wait = asyncio.ensure_future(worker.process.wait())
        try:
            done, _ = await asyncio.wait({worker.ready_waiter, wait}, timeout=START_TIMEOUT,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            wait.cancel()
        if worker.ready:
            return
        if worker.process.returncode is None:
            worker.process.kill()
            await worker.process.wait()
            raise WorkerStartError(f"worker {worker.slot} did not start within {START_TIMEOUT:.0f}s")
        raise WorkerStartError(f"worker {worker.slot} exited with code {worker.process.returncode} while starting "
                               "(its error is above)")

    def _on_worker_message(self, worker: WorkerProcess) -> None:
        try:
            message = worker.channel.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            message = b""
        if message == b"ready":
            worker.ready = True
            if worker.ready_waiter is not None and not worker.ready_waiter.done():
                worker.ready_waiter.set_result(None)
        elif not message:  # the worker is gone (its monitor restarts it)
            worker.ready = False
            asyncio.get_running_loop().remove_reader(worker.channel.fileno())

    def _close_channel(self, worker: WorkerProcess) -> None:
        worker.ready = False
        if worker.channel is not None:
            close_watched(worker.channel)
            worker.channel = None

    async def _monitor(self, worker: WorkerProcess) -> None:
        """Start a worker again when it dies, with backoff while it dies right after starting."""
        delay = 0.5
        while not self._stopping:
            code = await worker.process.wait()
            if self._stopping:
                return
            self._close_channel(worker)
            lived = time.monotonic() - worker.started_at
            log.error("worker %d (pid %d) exited with code %s after %.0fs; its sessions are lost; starting it "
                      "again", worker.slot, worker.process.pid, code, lived)
            self.restarts += 1
            delay = 0.5 if lived > 60 else min(delay * 2, RESTART_DELAY_MAX)
            await asyncio.sleep(delay)
            while not self._stopping:
                try:
                    await self._spawn(worker)
                    break
                except WorkerStartError as exc:
                    log.error("%s; trying again in %.0fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RESTART_DELAY_MAX)

    # --- connections --------------------------------------------------------------------------------
    def _accept(self, index: int, listener: socket.socket) -> None:
        for _ in range(64):  # then let the loop breathe
            try:
                client, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the client waits in the backlog
                log.error("accept failed: %s", exc)
                return
            self._hand_over(index, client)

    def _hand_over(self, index: int, client: socket.socket) -> None:
        try:
            for _ in range(len(self.workers)):
                worker = self.workers[self._next % len(self.workers)]
                self._next += 1
                if not worker.ready:
                    continue
                try:
                    socket.send_fds(worker.channel, [bytes([index])], [client.fileno()])
                    return
                except OSError as exc:  # full or gone: the next worker
                    log.warning("cannot hand a connection to worker %d: %s", worker.slot, exc)
            log.error("no worker is serving: connection closed")
        finally:
            client.close()  # the worker has its own descriptor now

    # --- control port -------------------------------------------------------------------------------
    async def _ask(self, worker: WorkerProcess, path: str) -> tuple[int, bytes]:
        import aiohttp

        connector = aiohttp.UnixConnector(path=str(worker_socket_path(self.run_dir, worker.slot)))
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)) as client:
            async with client.get(f"http://worker{path}") as answer:
                return answer.status, await answer.read()

    async def worker_problems(self) -> list[str | None]:
        """Why each worker is not ready, in slot order (``None``: it is ready and answering)."""

        async def check(worker: WorkerProcess) -> str | None:
            if not worker.ready:
                return f"worker {worker.slot}: not running"
            try:
                status, body = await self._ask(worker, "/readyz")
            except Exception as exc:
                return f"worker {worker.slot}: not answering ({exc or type(exc).__name__})"
            return None if status == 200 else f"worker {worker.slot}: {body.decode(errors='replace').strip()}"

        return list(await asyncio.gather(*(check(w) for w in self.workers)))

    async def readiness(self) -> tuple[bool, str]:
        """``/readyz`` of the control port: (ready, body), see ``aggregate_readiness``. The listeners
        accept from start until ``stop()``."""
        return aggregate_readiness(await self.worker_problems(), accepting=not self._stopping)

    async def metrics(self) -> bytes:
        """The workers' metrics summed. A worker that does not answer counts as one whose audit sink
        is down: the sum must not look healthy without it."""

        async def scrape(worker: WorkerProcess) -> bytes:
            try:
                status, body = await self._ask(worker, "/metrics")
                if status == 200:
                    return body
            except Exception as exc:
                log.warning("metrics of worker %d: %s", worker.slot, exc)
            return b"# TYPE wardgate_audit_sink_up gauge\nwardgate_audit_sink_up 0\n"

        texts = await asyncio.gather(*(scrape(w) for w in self.workers))
        return merge_expositions(texts, workers=sum(w.ready for w in self.workers), worker_restarts=self.restarts)


async def run_supervisor(config: GatewayConfig, config_path: Path, workers: int, *, on_started=None) -> None:
    supervisor = Supervisor(config, config_path, workers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await supervisor.start()
    loop.add_signal_handler(signal.SIGHUP, supervisor.reload_policy)
    if on_started is not None:
        on_started(supervisor)
    try:
        await stop.wait()
        # The workers drain their sessions; another SIGTERM or SIGINT tells them to stop at once.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, supervisor.signal_workers, signal.SIGTERM)
    finally:
        await supervisor.stop()
