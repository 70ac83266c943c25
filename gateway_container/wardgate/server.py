"""Assembles a running gateway from its configuration: control port, decision core, listeners."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import socket
import ssl
import struct
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from wardgate import adapters
from wardgate.config import GatewayConfig, IssuerConfig, ResourceConfig, parse_address
from wardgate.core.archive import AuditArchive
from wardgate.core.audit import AuditUnavailable, Recorder, end_crashed_sessions, open_sink
from wardgate.core.files import create_file_atomically
from wardgate.core.credentials import CredentialBroker, open_source
from wardgate.core.devissuer import DevIssuer, dev_issuer_url
from wardgate.core.identity import TokenVerifier
from wardgate.core.integrity import LocalEd25519Signer
from wardgate.core.model import Principal
from wardgate.core.policy import AllowAll, PolicyError, load_policy
from wardgate.core.session import DecisionCore
from wardgate.metrics import GatewayMetrics
from wardgate.protocols.postgres.backend import BackendTarget
from wardgate.protocols.postgres.engine import (CancelRegistry, PgResource, PostgresFrontend, adopt_connection,
                                                serve_postgres)
from wardgate.tlsdev import ensure_dev_certificate, server_ssl_context

log = logging.getLogger("wardgate")


def _file_stamp(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def local_url(url: str, base: Path) -> str:
    """``file://``/``sqlite://`` URLs with a relative path are relative to ``base`` (the config file's
    directory or the state directory); other URLs are returned unchanged."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("file", "sqlite") or rest.startswith("/"):
        return url
    return f"{scheme}://{(base / rest).resolve()}"


def backend_ssl_context(resource: ResourceConfig) -> ssl.SSLContext | None:
    mode = resource.tls.mode
    if mode == "disable":
        return None
    if mode == "require":
        # libpq's "require": encrypted, server identity not checked.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context = ssl.create_default_context(cafile=str(resource.tls.ca_file))
    context.check_hostname = mode == "verify-full"
    return context


@dataclass(frozen=True)
class WorkerRole:
    """What a worker process of a supervised gateway (``wardgate.supervisor``) is told at start."""

    slot: int                          # 1…127, also in the top bits of its cancel keys
    channel_fd: int                    # SOCK_SEQPACKET to the supervisor: accepted client sockets
    control_address: tuple[str, int]   # the supervisor's control port (dev issuer, approvals links)
    run_dir: Path                      # private directory of the workers' internal sockets

    def socket_path(self, slot: int) -> Path:
        return worker_socket_path(self.run_dir, slot)


def worker_socket_path(run_dir: Path, slot: int) -> Path:
    return run_dir / f"w{slot}.sock"


def close_watched(sock: socket.socket) -> None:
    """Stop the event loop watching ``sock`` for reading (if it does), then close it."""
    try:
        asyncio.get_running_loop().remove_reader(sock.fileno())
    except (ValueError, OSError):  # already closed
        pass
    sock.close()


class Gateway:
    """One gateway process. Alone (the default) it does everything. Supervised, it is either the
    supervisor's ``control_only`` part (control port, dev issuer, approvals webhook and notifier, no
    client sessions) or a ``worker`` (client sessions handed over by the supervisor, its own audit
    writer; its metrics, readiness and cancel endpoint on an internal Unix socket)."""

    def __init__(self, config: GatewayConfig, *, config_dir: Path | None = None, worker: WorkerRole | None = None,
                 control_only: bool = False, supervisor=None):
        self.config = config
        self.config_dir = config_dir or Path.cwd()
        self.worker = worker
        self.control_only = control_only
        self.supervisor = supervisor  # wardgate.supervisor.Supervisor of a control_only gateway
        self.stop_requested = asyncio.Event()
        self._channel: socket.socket | None = None
        self._cancels: CancelRegistry | None = None
        self._stopped = False
        self.gateway_id = uuid.uuid4().hex[:12]
        self.metrics = GatewayMetrics()
        self.dev_issuer: DevIssuer | None = None
        self.recorder: Recorder | None = None
        self.core: DecisionCore | None = None
        self.control_address: tuple[str, int] | None = None
        self.listener_addresses: list[tuple[str, int]] = []
        self.dev_ca_file: Path | None = None
        self._runner: web.AppRunner | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._frontends: list[PostgresFrontend] = []
        self._draining = False
        self._ready = False
        self._policy_stamp: tuple | None = None
        self._watcher: asyncio.Task | None = None
        self._sealer_task: asyncio.Task | None = None
        self.approvals = None          # wardgate.approvals.ApprovalService when enabled
        self.approval_webhook = None
        self._notifier_stop: threading.Event | None = None
        self._notifier_thread: threading.Thread | None = None
        self.archive: AuditArchive | None = None

    def reload_policy(self) -> bool:
        """Load the policy file again (file change, SIGHUP). An invalid file keeps the running policy,
        loudly: logged as an error and recorded. Returns whether the new policy is in force."""
        path = self.config.policy.file
        self._policy_stamp = _file_stamp(path)
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            log.error("policy reload REFUSED, the previous policy stays in force:\n%s", exc)
            try:
                self.core.note("policy.load_failed", source=str(path), error=str(exc),
                               running_policy=self.core.policy.bundle_hash, controls=["CM-3", "CM-6"])
            except AuditUnavailable:
                pass
            return False
        if policy.bundle_hash != self.core.policy.bundle_hash:
            self.core.set_policy(policy, source=str(path))
            log.info("policy reloaded: %s", policy.bundle_hash)
        return True

    async def _watch_policy(self) -> None:
        interval = self.config.policy.watch_interval
        while True:
            await asyncio.sleep(interval)
            if _file_stamp(self.config.policy.file) != self._policy_stamp:
                self.reload_policy()

    async def start(self) -> None:
        config = self.config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        # The control port comes first: the dev issuer's JWKS must be reachable before any token
        # is verified, and its URL contains the bound port. A worker's is the supervisor's.
        if self.worker is None:
            await self._start_control()
        else:
            self.control_address = self.worker.control_address
            await self._start_worker_port()
        issuers: list[IssuerConfig] = list(config.issuers)
        if config.dev_issuer.enabled:
            host, port = self.control_address
            url = dev_issuer_url(f"{host}:{port}")
            if self.worker is None:
                self.dev_issuer = DevIssuer(config.state_dir, url, config.dev_issuer.audience,
                                            config.dev_issuer.max_token_lifetime)
            issuers.append(IssuerConfig(issuer=url, audience=config.dev_issuer.audience, algorithms=["ES256"],
                                        max_token_lifetime=config.dev_issuer.max_token_lifetime))
        adapters.register_secret_schemes()  # aws-sm://, gcp-sm://, azure-kv://… for credential URLs
        if self.control_only:
            spool = None  # the workers record; their signing key is made once, here, before they start
            if config.audit.enabled and not config.audit.signer:
                LocalEd25519Signer(config.state_dir / "audit-signing-key.pem")
        elif config.audit.enabled:
            if config.audit.signer:
                signer = adapters.open_signer(local_url(config.audit.signer, self.config_dir))
            else:
                signer = LocalEd25519Signer(config.state_dir / "audit-signing-key.pem")
            spool = open_sink(config.audit.sink, self.config_dir, self.gateway_id, signer=signer)
        else:
            log.warning("AUDIT RECORDING IS OFF: no session of this gateway is recorded (benchmarks only)")
            spool = None
        self.recorder = Recorder(spool, fsync=config.audit.fsync, fsync_interval=config.audit.fsync_interval)
        self.recorder.start(asyncio.get_running_loop())
        if spool is not None and config.audit.archive:
            store = adapters.open_object_store(local_url(config.audit.archive, self.config_dir))
            self.archive = AuditArchive(spool.directory, store, interval=config.audit.archive_interval,
                                        grace=config.audit.archive_grace)
            self.archive.start()
            self._sealer_task = asyncio.get_running_loop().create_task(self._seal_periodically(spool))
        if spool is not None and spool.recovered:
            ended = end_crashed_sessions(self.recorder, spool.recovered, self.gateway_id)
            self.recorder.commit()
            log.warning("recovered the audit trail of a gateway that died: sealed %d segment(s), recorded the end "
                        "of %d open session(s)", len(spool.recovered), len(ended))
        if config.policy is not None:
            policy = load_policy(config.policy.file)  # PolicyError: refuse to start, naming the key
            self._policy_stamp = _file_stamp(config.policy.file)
        else:
            log.warning("NO POLICY CONFIGURED: every statement that parses is allowed (and recorded)")
            policy = AllowAll()
        verifier = TokenVerifier(issuers)
        if config.approvals.enabled:
            self._start_approvals(verifier)
        self.core = DecisionCore(verifier=verifier, policy=policy, recorder=self.recorder,
                                 gateway_id=self.gateway_id, observer=self.metrics, approvals=self.approvals,
                                 approve_hint=self.approvals.approve_hint if self.approvals else "",
                                 grant_refresh=config.approvals.grant_refresh)
        self.core.set_policy(policy, source=str(config.policy.file) if config.policy else "builtin")
        if config.policy is not None and config.policy.watch:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_policy())
        resources = {name: self._pg_resource(name, r) for name, r in config.resources.items()
                     if r.protocol == "postgres"}
        if self.worker is not None:  # keys carry the slot; other workers' keys are passed to them
            cancels = CancelRegistry(self.worker.slot, self._cancel_in_worker, self.metrics.cancel_request)
        else:
            cancels = CancelRegistry(observe=self.metrics.cancel_request)
        self._cancels = cancels
        masking_key = self._secret(config.masking_key, "masking.key")
        for listener in config.listeners:
            if listener.tls is not None:
                context = server_ssl_context(listener.tls.cert_file, listener.tls.key_file)
            else:
                dev = ensure_dev_certificate(config.state_dir)
                self.dev_ca_file = dev.ca_file
                context = server_ssl_context(dev.cert_file, dev.key_file)
            if self.control_only:
                continue  # the supervisor listens; its workers serve
            frontend = PostgresFrontend(self.core, resources, ssl_context=context,
                                        allow_plaintext_token_on_loopback=listener.allow_plaintext_token_on_loopback,
                                        cancel_registry=cancels, masking_key=masking_key)
            self._frontends.append(frontend)
            if self.worker is not None:
                continue
            host, port = parse_address(listener.address)
            server = await serve_postgres(frontend, host, port)
            self._servers.append(server)
            bound = server.sockets[0].getsockname()
            self.listener_addresses.append((bound[0], bound[1]))
        if self.worker is not None:
            self._start_channel()
        self._ready = True

    def _pg_resource(self, name: str, resource: ResourceConfig) -> PgResource:
        source = open_source(resource.password, resource.username) if resource.password else None
        target = BackendTarget(resource.host, resource.port, resource.database, resource.tls.mode,
                               backend_ssl_context(resource), resource.connect_timeout)
        return PgResource(name, target, CredentialBroker(source, resource.username,
                                                         refresh_after=resource.credential_refresh))

    async def _start_control(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/dev-issuer/.well-known/openid-configuration", self._dev_discovery)
        app.router.add_get("/dev-issuer/jwks", self._dev_jwks)
        # The approvals webhook and REST API (embedded default of the cloud approval function).
        app.router.add_route("*", "/approvals{tail:.*}", self._approvals_http)
        app.router.add_route("*", "/access{tail:.*}", self._approvals_http)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = parse_address(self.config.control.address)
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        bound = site._server.sockets[0].getsockname()
        self.control_address = (bound[0], bound[1])

    # --- worker of a supervised gateway ------------------------------------------------------------
    async def _start_worker_port(self) -> None:
        """The worker's internal endpoints, on a Unix socket in the supervisor's private directory:
        readiness and metrics (the supervisor aggregates them) and cancel requests from other workers."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/cancel", self._cancel_http)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        path = self.worker.socket_path(self.worker.slot)
        # Again if every worker stopped (the last one out removes it) and the supervisor restarts them.
        self.worker.run_dir.mkdir(mode=0o700, exist_ok=True)
        path.unlink(missing_ok=True)  # a previous worker in this slot died
        await web.UnixSite(self._runner, str(path)).start()

    async def _cancel_http(self, request: web.Request) -> web.Response:
        body = await request.read()
        if len(body) != 8:
            return web.Response(status=400, text="a cancel request is 8 bytes: process id, secret\n")
        pid = struct.unpack("!I", body[:4])[0]
        await self._cancels.cancel(pid, body[4:], forwarded=True)
        return web.Response(status=204)

    async def _cancel_in_worker(self, slot: int, pid: int, secret: bytes) -> None:
        """Hand a CancelRequest for another worker's key to that worker."""
        import aiohttp

        connector = aiohttp.UnixConnector(path=str(self.worker.socket_path(slot)))
        timeout = aiohttp.ClientTimeout(total=5)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
                async with client.post("http://worker/cancel", data=struct.pack("!I", pid) + secret) as answer:
                    if answer.status != 204:
                        log.warning("cancel for worker %d: answered %d", slot, answer.status)
        except aiohttp.ClientError as exc:
            raise OSError(str(exc)) from None

    def _start_channel(self) -> None:
        channel = socket.socket(fileno=self.worker.channel_fd)
        channel.setblocking(False)
        self._channel = channel
        asyncio.get_running_loop().add_reader(channel.fileno(), self._on_channel)
        channel.send(b"ready")

    def _on_channel(self) -> None:
        """Client sockets the supervisor accepted: one per message, whose byte is the listener's index."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(self._channel, 16, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                message, fds = b"", []
                log.error("worker %d: channel to the supervisor failed: %s", self.worker.slot, exc)
            if not message and not fds:
                # The supervisor is gone: nobody hands over connections, aggregates metrics or stops
                # this worker any more. Stop (sessions end recorded) rather than linger.
                loop.remove_reader(self._channel.fileno())
                if not self.stop_requested.is_set():
                    log.error("worker %d: the supervisor is gone; stopping", self.worker.slot)
                    self.stop_requested.set()
                return
            for fd in fds:
                client = socket.socket(fileno=fd)
                index = message[0] if message else -1
                if not 0 <= index < len(self._frontends):
                    log.error("worker %d: connection for unknown listener %d closed", self.worker.slot, index)
                    client.close()
                    continue
                loop.create_task(adopt_connection(self._frontends[index], client))

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._draining:
            return web.Response(status=503, text=f"stopping: {self._open_sessions()} session(s) left, "
                                                 "each closed once idle\n")
        if not self._ready:
            return web.Response(status=503, text="starting\n")
        answer = "ready\n"
        if self.supervisor is not None:  # ready while one worker is; the answer names the others
            ready, answer = await self.supervisor.readiness()
            if not ready:
                return web.Response(status=503, text=answer)
        if self.recorder.last_error is not None:
            return web.Response(status=503, text=f"audit sink unavailable: {self.recorder.last_error}\n")
        if self.core is not None and self.core.refusing is not None:
            return web.Response(status=503, text=f"refusing commands: {self.core.refusing}\n")
        return web.Response(text=answer)

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.supervisor is not None:
            body = await self.supervisor.metrics()
            return web.Response(body=body, content_type="text/plain", charset="utf-8")
        if self.recorder is not None:
            self.metrics.audit_events.set(self.recorder.events_written)
            self.metrics.audit_up.set(0 if self.recorder.last_error else 1)
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def _approvals_http(self, request: web.Request) -> web.Response:
        if self.approval_webhook is None:
            return web.json_response({"error": "approvals are not enabled on this gateway"}, status=503)
        from wardgate.approvals.webhook import WebhookRequest

        body = await request.read()
        call = WebhookRequest(request.method, request.path_qs, dict(request.headers), body, dict(request.query))
        # The handler reads and writes the decision store: off the event loop.
        answer = await asyncio.to_thread(self.approval_webhook.handle, call)
        return web.Response(status=answer.status, body=answer.body, headers=dict(answer.headers))

    def _start_approvals(self, verifier: TokenVerifier) -> None:
        from wardgate.approvals.notify import Notifier, WebhookTarget
        from wardgate.approvals.service import ApprovalService
        from wardgate.approvals.webhook import ApprovalWebhook

        cfg = self.config.approvals
        store = adapters.open_decision_store(local_url(cfg.store, self.config.state_dir))
        queue = adapters.open_queue(local_url(cfg.queue, self.config.state_dir))
        host, port = self.control_address
        public = (cfg.public_url or f"http://{host}:{port}").rstrip("/")
        # Approver roles follow the policy in force (reloads included), plus the token's groups.
        service = ApprovalService(store, queue, roles_of=lambda p: set(self.core.policy.roles_for(p)) | set(p.groups),
                                  approve_hint=f"wardgate approvals approve {{id}} --url {public}")
        link_key = self._secret(cfg.link_key, "approval-link.key")
        identities = {name: Principal(i.issuer, i.subject, tuple(i.groups),
                                      {"display": i.display} if i.display else {})
                      for name, i in cfg.identities.items()}
        webhook = ApprovalWebhook(
            service, verifier=verifier,
            slack_signing_secret=self._secret(cfg.slack_signing_secret) if cfg.slack_signing_secret else None,
            hmac_secret=self._secret(cfg.hmac_secret) if cfg.hmac_secret else None,
            link_key=link_key, identities=identities,
            grant_approvers={role: (tuple(g.approvers), g.quorum, g.max_duration) for role, g in cfg.grants.items()},
            max_grant_seconds=max((g.max_duration for g in cfg.grants.values()), default=8 * 3600.0),
            link_base_url=public)
        self.approvals = service
        self.approval_webhook = webhook
        # An in-process queue does not survive a restart, and a cloud queue may have been down when a
        # request was stored: announce every pending request again (the notifier skips decided ones).
        # Supervised, the supervisor does it once, not each worker.
        if self.worker is None:
            try:
                announced = service.reannounce_pending()
                if announced:
                    log.warning("approvals: re-announced %d pending request(s)", announced)
            except Exception as exc:  # the store is down: held statements will be refused, loudly
                log.error("approvals: cannot read pending requests from %s: %s", cfg.store, exc)
        if cfg.notify is not None and cfg.run_notifier:
            url = cfg.notify.url
            if not url.startswith(("https://", "http://")):
                url = open_source(url, "webhook").fetch().password
            target = WebhookTarget(cfg.notify.kind, url,
                                   secret=self._secret(cfg.notify.secret) if cfg.notify.secret else None,
                                   links=webhook.links, link_approvers=tuple(cfg.notify.link_approvers),
                                   timeout=cfg.notify.timeout)
            notifier = Notifier(queue, target, store=store)
            self._notifier_stop = threading.Event()
            self._notifier_thread = threading.Thread(target=notifier.run_forever, args=(self._notifier_stop,),
                                                     name="wardgate-approval-notifier", daemon=True)
            self._notifier_thread.start()

    def _secret(self, url: str | None, generated: str | None = None) -> bytes:
        """A secret from a credential URL, or one generated once into state_dir/``generated``."""
        if url:
            return open_source(url, "secret").fetch().password.encode()
        path = self.config.state_dir / generated
        create_file_atomically(path, secrets.token_hex(32).encode(), 0o600)  # the first one created wins
        return path.read_text().strip().encode()

    async def _dev_discovery(self, request: web.Request) -> web.Response:
        if self.dev_issuer is None:
            raise web.HTTPNotFound(text="the dev issuer is not enabled\n")
        return web.json_response(self.dev_issuer.discovery())

    async def _dev_jwks(self, request: web.Request) -> web.Response:
        if self.dev_issuer is None:
            raise web.HTTPNotFound(text="the dev issuer is not enabled\n")
        return web.json_response(self.dev_issuer.jwks())

    async def _seal_periodically(self, spool) -> None:
        # Rotation happens in the loop thread, which is the spool's only writer. The archive's
        # verdict is relayed to the core here too: past its grace, commands are refused.
        interval = self.config.audit.seal_interval
        tick = min(interval / 4, 1.0)
        while True:
            await asyncio.sleep(tick)
            spool.rotate_if_older(interval)
            error = self.archive.error
            if self.core is not None and error != self.core.refusing:
                if error is not None:
                    log.error("refusing commands: %s", error)
                else:
                    log.warning("audit archive %s writable again: commands are accepted", self.config.audit.archive)
                self.core.refusing = error

    async def drain(self, grace: float, abandon: asyncio.Event | None = None) -> None:
        """Stop taking sessions and let the open ones reach a point where nothing runs and no
        transaction is open, where each is closed; wait at most ``grace`` seconds (or until
        ``abandon`` is set: a second signal). :meth:`stop` then closes whatever is left."""
        if self._stopped or grace <= 0:
            return
        self._draining = True  # /readyz: 503 from now on, so load balancers send no one new
        for server in self._servers:
            server.close()  # no new connections
        open_sessions = self._open_sessions()
        if not open_sessions:
            return
        log.info("stopping: %d session(s) are closed as each becomes idle, for at most %.0fs "
                 "(another SIGTERM or SIGINT: at once)", open_sessions, grace)
        for frontend in self._frontends:
            frontend.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while left := self._open_sessions():
            if loop.time() >= deadline or (abandon is not None and abandon.is_set()):
                log.warning("stopping: closing %d session(s) still running a statement or in a transaction "
                            "(their transactions roll back)", left)
                return
            await asyncio.sleep(0.05)

    def _open_sessions(self) -> int:
        """Sessions not closed yet. One being closed counts as closed: over TLS the transport waits for
        the client's close_notify, which an idle client sends only when it next reads."""
        return sum(1 for frontend in self._frontends for connection in frontend.connections
                   if connection.transport is None or not connection.transport.is_closing())

    async def stop(self) -> None:
        if self._stopped:  # after a failed start, and again by whoever started it
            return
        self._stopped = True
        self._ready = False
        if self._channel is not None:
            close_watched(self._channel)
        if self._watcher is not None:
            self._watcher.cancel()
        if self._sealer_task is not None:
            self._sealer_task.cancel()
        if self._notifier_stop is not None:
            self._notifier_stop.set()
        for server in self._servers:
            server.close()
        for frontend in self._frontends:
            frontend.close_all()
        for server in self._servers:
            await server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost callbacks record session ends
        if self._runner is not None:
            await self._runner.cleanup()
        if self.worker is not None:
            # The supervisor removes its directory when it stops; one that was killed cannot, and the
            # last worker out does.
            self.worker.socket_path(self.worker.slot).unlink(missing_ok=True)
            try:
                self.worker.run_dir.rmdir()
            except OSError:
                pass  # other workers' sockets are still there, or the supervisor removed it
        if self.recorder is not None:
            self.recorder.close()
        if self.archive is not None:
            # The spool sealed its last segment on close: ship it before exiting.
            report = await asyncio.to_thread(self.archive.stop, final=True)
            if report is not None and report.error:
                log.error("audit archive: %s; %d object(s) stay in the spool and are shipped at the next "
                          "start", report.error, len(report.pending))


class StartError(Exception):
    """The gateway could not start; the message says why (the traceback is logged at DEBUG)."""


async def start_or_explain(gateway) -> None:
    """``gateway.start()``; a failure (address in use, unwritable directory, unreachable key…) becomes
    a :class:`StartError` naming it, after what was started is stopped."""
    try:
        await gateway.start()
    except (PolicyError, StartError):
        raise
    except Exception as exc:
        log.debug("start failed", exc_info=True)
        try:
            await gateway.stop()
        except Exception:
            log.debug("stopping after a failed start failed too", exc_info=True)
        raise StartError(str(exc) or type(exc).__name__) from exc


async def run_gateway(config: GatewayConfig, config_dir: Path, *, on_started=None,
                      worker: WorkerRole | None = None) -> None:
    gateway = Gateway(config, config_dir=config_dir, worker=worker)
    stop = gateway.stop_requested
    loop = asyncio.get_running_loop()
    # Handlers first: a SIGTERM that arrives while starting still stops the gateway cleanly.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if worker is not None:
        # Ctrl-C reaches the whole process group: the supervisor stops its workers itself, and a
        # worker that left first would look like one that died.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
    if config.policy is not None:
        # Before start: a SIGHUP while starting (a supervisor passing one on) must not kill the process.
        loop.add_signal_handler(signal.SIGHUP, lambda: gateway.core is not None and gateway.reload_policy())
    await start_or_explain(gateway)
    if on_started is not None:
        on_started(gateway)
    try:
        await stop.wait()
        # A second SIGTERM or SIGINT while draining stops at once.
        stop.clear()
        await gateway.drain(config.shutdown_grace, stop)
    finally:
        await gateway.stop()
