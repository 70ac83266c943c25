"""``wardgate`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from wardgate.config import ConfigError, load_config, parse_address, parse_duration
from wardgate.core.policy import PolicyError


def _serve(args: argparse.Namespace) -> int:
    import uvloop

    config = load_config(args.config)
    config_dir = Path(args.config).resolve().parent

    def started(gateway) -> None:
        for host, port in gateway.listener_addresses:
            print(f"wardgate: postgres listener on {host}:{port}", flush=True)
        control = gateway.control if hasattr(gateway, "control") else gateway
        host, port = control.control_address
        print(f"wardgate: control port on http://{host}:{port} (/healthz /readyz /metrics)", flush=True)
        if control.dev_issuer is not None:
            print(f"wardgate: dev issuer {control.dev_issuer.issuer_url}", flush=True)
        if control.dev_ca_file is not None:
            print(f"wardgate: dev TLS CA {control.dev_ca_file}", flush=True)

    from wardgate.server import StartError, WorkerRole, run_gateway

    def run(main, who: str = "") -> int:
        try:
            uvloop.run(main)
        except StartError as exc:  # the supervisor's WorkerStartError too
            print(f"wardgate: {who}cannot start: {exc}", file=sys.stderr)
            return 1
        return 0

    if args.worker_slot is not None:  # started by a supervisor (wardgate.supervisor), not by hand
        role = WorkerRole(args.worker_slot, args.worker_channel, parse_address(args.worker_control),
                          Path(args.worker_run_dir))
        return run(run_gateway(config, config_dir, worker=role), f"worker {role.slot} ")
    workers = config.worker_count()
    if workers > 1:
        from wardgate.supervisor import run_supervisor

        def supervised(supervisor) -> None:
            started(supervisor)
            print(f"wardgate: {workers} workers serving", flush=True)

        return run(run_supervisor(config, Path(args.config), workers, on_started=supervised))
    return run(run_gateway(config, config_dir, on_started=started))


def _token(args: argparse.Namespace) -> int:
    from wardgate.core.devissuer import DevIssuer, dev_issuer_url

    config = load_config(args.config)
    if not config.dev_issuer.enabled:
        raise ConfigError(f"{args.config}: dev_issuer.enabled is false: this gateway trusts no dev tokens")
    if config.control.address.endswith(":0"):
        raise ConfigError(f"{args.config}: control.address has port 0: dev tokens need a fixed control port")
    extra = {}
    for item in args.claim or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"wardgate token: --claim {item!r} is not KEY=VALUE")
        extra[key] = value
    issuer = DevIssuer(config.state_dir, dev_issuer_url(config.control.address), config.dev_issuer.audience,
                       config.dev_issuer.max_token_lifetime)
    groups = [g for part in args.groups or [] for g in part.split(",") if g]
    try:
        print(issuer.mint(args.sub, groups, ttl=parse_duration(args.ttl), extra_claims=extra))
    except ValueError as exc:
        raise SystemExit(f"wardgate token: {exc}")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(json.dumps({"listeners": len(config.listeners), "resources": sorted(config.resources),
                      "issuers": [i.issuer for i in config.issuers], "dev_issuer": config.dev_issuer.enabled}))
    return 0


def _policy_validate(args: argparse.Namespace) -> int:
    from wardgate.core.policy import load_policy

    engine = load_policy(args.policy)
    bundle = engine.bundle
    print(f"{args.policy}: valid policy {bundle.name!r} ({len(bundle.roles)} roles, {len(bundle.rules)} rules, "
          f"{len(bundle.masking)} masking profiles), {engine.bundle_hash}")
    return 0


def _policy_explain(args: argparse.Namespace) -> int:
    from wardgate.core.policy import load_policy
    from wardgate.policytool import claims_from_token, explain, format_explanation, principal_from_claims

    engine = load_policy(args.policy)
    if args.token:
        claims = claims_from_token(args.token)
    else:
        try:
            claims = json.loads(Path(args.claims).read_text()) if not args.claims.lstrip().startswith("{") \
                else json.loads(args.claims)
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"wardgate policy explain: --claims {args.claims!r}: {exc}")
    result = explain(engine, principal_from_claims(claims), args.resource, args.sql)
    print(json.dumps(result.as_dict(), indent=2) if args.json else format_explanation(result))
    return 0


def _policy_test(args: argparse.Namespace) -> int:
    from wardgate.policytool import run_tests

    total_passed = total_failed = 0
    for name in args.files:
        path = Path(name)
        files = sorted(path.glob("**/*test*.yaml")) if path.is_dir() else [path]
        for file in files:
            passed, failed, lines = run_tests(file)
            total_passed += passed
            total_failed += failed
            for line in lines:
                if failed or args.verbose_cases:
                    print(line)
    print(f"{total_passed} passed, {total_failed} failed")
    return 1 if total_failed or not total_passed else 0


def _policy_schema(args: argparse.Namespace) -> int:
    from wardgate.policytool import schema_json

    print(schema_json())
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from wardgate.audittool import format_report, verify_trail

    directory = _trail_directory(args.location, "audit verify")
    if directory is None:
        return 2
    trusted = None
    if args.trusted_key:
        try:
            trusted = [Path(name).read_bytes() for name in args.trusted_key]
        except OSError as exc:
            print(f"wardgate audit verify: --trusted-key: {exc}", file=sys.stderr)
            return 2
    try:
        report = verify_trail(directory, since=args.since, until=args.until, trusted_keys=trusted)
    except ValueError as exc:  # a malformed --since/--until or --trusted-key
        print(f"wardgate audit verify: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict(), indent=2) if args.json else format_report(report))
    return 0 if report.ok else 1


def _trail_directory(location: str, command: str) -> Path | None:
    """The audit directory named by DIR or file://DIR, or a local copy of an archive bucket
    (s3://, gs://, azblob://). None, with a message, when it is not one."""
    from wardgate.core.files import file_url_path

    scheme = location.partition("://")[0] if "://" in location else ""
    if scheme and scheme != "file":
        return _downloaded_trail(location, command)
    if location.startswith("file://"):
        location = file_url_path(location)
    directory = Path(location)
    if not directory.is_dir():
        print(f"wardgate {command}: {location}: not a directory", file=sys.stderr)
        return None
    return directory


def _downloaded_trail(location: str, command: str) -> Path | None:
    import atexit
    import shutil
    import tempfile

    from wardgate import adapters
    from wardgate.core.archive import download_trail
    from wardgate.core.ports import StoreUnavailable

    try:
        store = adapters.open_object_store(location)
        directory = Path(tempfile.mkdtemp(prefix="wardgate-trail-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        count = download_trail(store, directory)
    except (adapters.AdapterError, StoreUnavailable, ValueError) as exc:
        print(f"wardgate {command}: {location}: {exc}", file=sys.stderr)
        return None
    print(f"wardgate {command}: read {count} object(s) from {location}", file=sys.stderr)
    return directory


def _sessions(args: argparse.Namespace) -> int:
    from wardgate.replaytool import ReplayError, format_sessions, list_sessions

    directory = _trail_directory(args.location, "sessions")
    if directory is None:
        return 2
    try:
        rows = list_sessions(directory, subject=args.subject, resource=args.resource, since=args.since,
                             until=args.until, decision=args.decision)
    except ReplayError as exc:
        print(f"wardgate sessions: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=2) if args.json else format_sessions(rows))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from wardgate.replaytool import ReplayError, chain_findings, format_replay, read_trail, resolve_session

    directory = _trail_directory(args.location, "replay")
    if directory is None:
        return 2
    try:
        session = resolve_session(read_trail(directory), args.session)
    except ReplayError as exc:
        print(f"wardgate replay: {exc}", file=sys.stderr)
        return 2
    findings = chain_findings(session)
    if args.json:
        for message in findings:
            print(f"wardgate replay: warning: {message}; run `wardgate audit verify {args.location}`",
                  file=sys.stderr)
        print(json.dumps(session.ordered, indent=2, ensure_ascii=False))
    else:
        warnings = [f"hash chain broken: {message}" for message in findings]
        print(format_replay(session, full=args.full, warnings=warnings, location=args.location))
    return 0


def _evidence_export(args: argparse.Namespace) -> int:
    from wardgate.core.integrity import LocalEd25519Signer
    from wardgate.evidence import EvidenceError, export_evidence

    directory = _trail_directory(args.location, "evidence export")
    if directory is None:
        return 2
    signer = None
    if args.signing_key:
        key = Path(args.signing_key)
        if not key.is_file():
            print(f"wardgate evidence export: --signing-key {key}: no such file", file=sys.stderr)
            return 2
        try:
            signer = LocalEd25519Signer(key)
        except ValueError as exc:
            print(f"wardgate evidence export: --signing-key: {exc}", file=sys.stderr)
            return 2
    try:
        package = export_evidence(directory, Path(args.out), since=args.since, until=args.until, signer=signer)
    except EvidenceError as exc:
        print(f"wardgate evidence export: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wardgate evidence export: {exc}", file=sys.stderr)
        return 2
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(package["summary"].items()))
    print(f"wardgate evidence export: wrote {args.out}: {package['verification']['summary']}; controls: {statuses}"
          + ("" if signer else "; manifest NOT signed (no --signing-key)"))
    return 0


def _approvals_reindex(args: argparse.Namespace) -> int:
    """``wardgate approvals reindex``: give requests stored before the pending index their ``open/``
    copy (see ApprovalService.reindex)."""
    from wardgate import adapters
    from wardgate.adapters.local import local_path
    from wardgate.approvals.cli import CliError
    from wardgate.approvals.service import ApprovalService
    from wardgate.core.ports import StoreUnavailable
    from wardgate.server import local_url

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None
    if not config.approvals.enabled:
        raise CliError(f"{args.config}: approvals.enabled is false: this gateway keeps no approval requests", 2)
    url = local_url(config.approvals.store, config.state_dir)
    try:
        try:
            # Opening a SQLite store creates it: a wrong --config would "index" a new, empty one.
            if url.startswith("sqlite://") and not local_path(url).is_file():
                raise CliError(f"decision store {url}: no such file ({args.config} names it as approvals.store "
                               f"in state_dir {config.state_dir}): is this the gateway's configuration?", 2)
            store = adapters.open_decision_store(url)
        except ValueError as exc:  # an unknown scheme, a missing cloud SDK (adapters.AdapterError), a bad URL
            raise CliError(f"{args.config}: approvals.store: {exc}", 2) from None
        count = ApprovalService(store, None, roles_of=lambda _principal: ()).reindex()
    except StoreUnavailable as exc:
        raise CliError(f"cannot reach the decision store: {exc} (nothing is lost: run reindex again once "
                       "it is reachable)", 2) from None
    print(f"indexed {count} pending approval request(s) that had no open/ copy in {url}")
    return 0


def _accelerators(args: argparse.Namespace) -> int:
    """The gateway's compiled accelerators as ``wardgate serve`` would load them: an install (or an
    image build) can check that none silently falls back to the slower Python reference."""
    import wardgate.server  # noqa: F401 - importing the gateway loads every accelerator
    from wardgate.core.compiled import accelerator_status

    status = accelerator_status()
    width = max(len(what) for what in status)
    for what, (state, detail) in sorted(status.items()):
        print(f"{what:<{width}}  {state:<8}  {detail}")
    return 1 if any(state == "fallback" for state, _ in status.values()) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wardgate", description="Layer 7 access gateway for AI agents and CI")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", required=True, help="gateway configuration (YAML)")
    # Internal: how a supervisor starts its workers (see wardgate.supervisor).
    serve.add_argument("--worker-slot", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-channel", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-control", help=argparse.SUPPRESS)
    serve.add_argument("--worker-run-dir", help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)

    token = commands.add_parser("token", help="mint a short-lived token from the dev issuer")
    token.add_argument("--config", required=True, help="the gateway configuration that enables dev_issuer")
    token.add_argument("--sub", required=True, help="subject (who the token names)")
    token.add_argument("--groups", action="append", help="group(s), comma-separated or repeated")
    token.add_argument("--ttl", default="15m", help="lifetime, e.g. 15m (default)")
    token.add_argument("--claim", action="append", help="extra claim KEY=VALUE (e.g. repository=acme/app)")
    token.set_defaults(func=_token)

    policy = commands.add_parser("policy", help="validate, explain and test policy bundles")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    validate = policy_commands.add_parser("validate", help="check a policy file")
    validate.add_argument("policy")
    validate.set_defaults(func=_policy_validate)
    explain = policy_commands.add_parser("explain", help="show the decision for one statement")
    explain.add_argument("--policy", required=True)
    who = explain.add_mutually_exclusive_group(required=True)
    who.add_argument("--claims", help="claims as a JSON file or inline JSON")
    who.add_argument("--token", help="a token whose claims are read (NOT verified: dry run)")
    explain.add_argument("--resource", required=True)
    explain.add_argument("--sql", required=True)
    explain.add_argument("--json", action="store_true")
    explain.set_defaults(func=_policy_explain)
    test = policy_commands.add_parser("test", help="run policy test files (exit 1 on any failure)")
    test.add_argument("files", nargs="+", help="test files, or directories searched for *test*.yaml")
    test.add_argument("--verbose-cases", action="store_true", help="print every case, not only failures")
    test.set_defaults(func=_policy_test)
    schema = policy_commands.add_parser("schema", help="print the policy JSON Schema (for editors)")
    schema.set_defaults(func=_policy_schema)

    audit = commands.add_parser("audit", help="verify audit trails")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser(
        "verify", help="prove an audit trail complete and unaltered (exit 0 only if it is)")
    verify.add_argument("location", help="the audit sink directory (or file://DIR), or a copy of it")
    verify.add_argument("--since", help="only segments with events at or after this ISO 8601 time")
    verify.add_argument("--until", help="only segments with events at or before this ISO 8601 time")
    verify.add_argument("--trusted-key", action="append",
                        help="accept only this public key (PEM; repeatable) instead of the trail's keys/")
    verify.add_argument("--json", action="store_true", help="machine-readable report")
    verify.set_defaults(func=_audit_verify)

    sessions = commands.add_parser("sessions", help="list the recorded sessions of an audit trail")
    sessions.add_argument("location", help="the audit sink directory (or file://DIR), or a copy of it")
    sessions.add_argument("--subject", help="only sessions whose subject matches this glob")
    sessions.add_argument("--resource", help="only sessions on resources matching this glob")
    sessions.add_argument("--since", help="only sessions active at or after this ISO 8601 time")
    sessions.add_argument("--until", help="only sessions started at or before this ISO 8601 time")
    sessions.add_argument("--decision", choices=("allow", "deny", "review"),
                          help="only sessions with at least one statement so decided")
    sessions.add_argument("--json", action="store_true", help="machine-readable list")
    sessions.set_defaults(func=_sessions)

    replay = commands.add_parser("replay", help="show one recorded session as it happened")
    replay.add_argument("location", help="the audit sink directory (or file://DIR), or a copy of it")
    replay.add_argument("session", help="the session id, or a unique prefix of it")
    replay.add_argument("--full", action="store_true", help="statements and messages in full")
    replay.add_argument("--json", action="store_true", help="the session's events as recorded (a JSON array)")
    replay.set_defaults(func=_replay)

    evidence = commands.add_parser("evidence", help="export compliance evidence from an audit trail")
    evidence_commands = evidence.add_subparsers(dest="evidence_command", required=True)
    export = evidence_commands.add_parser(
        "export", help="evidence per NIST SP 800-53 control for a period: JSON, HTML, OSCAL, signed manifest")
    export.add_argument("location", help="the audit sink directory (or file://DIR), or a copy of it")
    export.add_argument("--since", help="period start (ISO 8601 time or date)")
    export.add_argument("--until", help="period end (ISO 8601 time or date: the whole day)")
    export.add_argument("--out", required=True, help="directory to write the evidence package into")
    export.add_argument("--signing-key", help="Ed25519 private key (PKCS#8 PEM) that signs manifest.json, e.g. "
                        "the gateway's state_dir/audit-signing-key.pem")
    export.set_defaults(func=_evidence_export)

    accelerators = commands.add_parser(
        "accelerators", help="show whether each compiled accelerator is in use (exit 1 if one falls back to Python)")
    accelerators.set_defaults(func=_accelerators)

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("--config", required=True)
    check.set_defaults(func=_check_config)

    from wardgate import localcloudtool
    from wardgate.approvals import cli as approvals_cli

    approvals_cli.add_parser(commands, reindex=_approvals_reindex)
    localcloudtool.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # The Azure SDK logs every HTTP request's headers at INFO.
    logging.getLogger("azure").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (ConfigError, PolicyError) as exc:
        print(f"wardgate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
