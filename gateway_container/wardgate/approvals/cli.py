"""``wardgate approvals …`` and ``wardgate access …``: the approvers' and requesters' CLI.

Every command calls the approvals REST API (the gateway's control port, or the cloud approval
function) at ``--url`` with the caller's OIDC token, so the server checks identity and approver
groups exactly as it does for Slack or Teams decisions; the CLI itself decides nothing. The one
exception is the operator's ``approvals reindex --config FILE`` (``wardgate.cli``): it opens the
gateway's decision store itself and only copies pending requests into the pending index.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlencode

DEFAULT_URL = "http://127.0.0.1:9480"
TIMEOUT = 30.0


class CliError(Exception):
    """A failure to show the user; ``exit_code`` 1 for a refusal by the server, 2 for local problems."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise CliError(f"--token-file {args.token_file}: {exc.strerror or exc}", 2) from None
    else:
        token = os.environ.get("WARDGATE_TOKEN", "").strip()
    if not token:
        raise CliError("no token: pass --token-file FILE or set WARDGATE_TOKEN "
                       "(e.g. WARDGATE_TOKEN=$(wardgate token --config … --sub you))", 2)
    return token


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    url = args.url.rstrip("/") + path
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {_token(args)}", "Accept": "application/json",
        **({"Content-Type": "application/json"} if data is not None else {})})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            message = json.loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            message = raw.decode(errors="replace")[:300] or exc.reason
        raise CliError(f"refused (HTTP {exc.code}): {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot reach {args.url}: {reason}", 2) from None


def _state(row: dict[str, Any]) -> str:
    outcome = row.get("outcome")
    if not outcome:
        return "pending"
    who = ", ".join(b.get("subject", "?") for b in outcome.get("by") or [])
    return f"{outcome['verdict']} by {who}" if who else outcome["verdict"]


def _print_request(row: dict[str, Any]) -> None:
    subject = row["requester"].get("subject")
    what = (f"role {row['role']} for {row['duration_seconds']:g}s: {row['reason']}" if row["kind"] == "grant"
            else row["statement"])
    print(f"{row['id']}  {_state(row)}  requester={subject}  resource={row['resource']}  rule={row['rule']}  "
          f"approvers={','.join(row['approvers'])}(quorum {row['quorum']})  deadline={row['deadline']}")
    for line in what.splitlines() or [""]:
        print(f"    {line}")


def _approvals_list(args: argparse.Namespace) -> int:
    result = _call(args, "GET", "/approvals?" + urlencode({"state": args.state}))
    if args.json:
        print(json.dumps(result["requests"], indent=2))
        return 0
    if not result["requests"]:
        print(f"no {args.state} approval requests you can see")
    for row in result["requests"]:
        _print_request(row)
    return 0


def _approvals_show(args: argparse.Namespace) -> int:
    result = _call(args, "GET", f"/approvals/{quote(args.id, safe='')}")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    _print_request({**result["request"], "outcome": result["outcome"]})
    for vote in result["votes"]:
        reason = f": {vote['reason']}" if vote["reason"] else ""
        print(f"  vote {vote['verdict']} by {vote['approver']['subject']} via {vote['via']} at {vote['at']}{reason}")
    return 0


def _approvals_decide(args: argparse.Namespace) -> int:
    verdict = args.approvals_command
    result = _call(args, "POST", f"/approvals/{quote(args.id, safe='')}/{verdict}", {"reason": args.reason or ""})
    print(result["message"])
    return 0


def _access_request(args: argparse.Namespace) -> int:
    result = _call(args, "POST", "/access/requests", {
        "resource": args.resource, "role": args.role, "duration": args.duration, "reason": args.reason})
    print(result["message"])
    return 0


def _access_list(args: argparse.Namespace) -> int:
    path = "/access/grants" + (f"?{urlencode({'resource': args.resource})}" if args.resource else "")
    result = _call(args, "GET", path)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if not result["grants"]:
        print("no active grants")
    for grant in result["grants"]:
        print(f"{grant['id']}  ACTIVE  role={grant['role']}  resource={grant['resource']}  "
              f"until {grant['expires_at']}  approved by {', '.join(grant['approved_by'])}")
    active = {grant["id"] for grant in result["grants"]}
    for row in result["requests"]:
        if row["id"] not in active:
            print(f"{row['id']}  {row['state']}  role={row['role']}  resource={row['resource']}  "
                  f"requested {row['created']}: {row['reason']}")
    return 0


def _run(func):
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except CliError as exc:
            print(f"wardgate {args.command}: {exc}", file=sys.stderr)
            return exc.exit_code
    return wrapped


def add_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]", *,
               reindex: Callable[[argparse.Namespace], int] | None = None) -> None:
    """Add ``approvals`` and ``access`` to the ``wardgate`` command's subparsers. ``reindex`` runs the
    operator's ``approvals reindex --config FILE`` (it opens the gateway's decision store, so the
    ``wardgate`` command, which may import the adapters, hands it in; raise :class:`CliError`)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("WARDGATE_URL", DEFAULT_URL),
                        help=f"approvals API (default: $WARDGATE_URL or {DEFAULT_URL})")
    common.add_argument("--token-file", help="file holding your OIDC token (default: $WARDGATE_TOKEN)")

    approvals = subparsers.add_parser("approvals", help="list and decide held commands and access requests")
    approval_commands = approvals.add_subparsers(dest="approvals_command", required=True)
    listing = approval_commands.add_parser("list", parents=[common], help="requests you may see")
    listing.add_argument("--state", choices=("pending", "decided", "all"), default="pending")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_run(_approvals_list))
    show = approval_commands.add_parser("show", parents=[common], help="one request with its votes")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_run(_approvals_show))
    for verdict in ("approve", "deny"):
        decide = approval_commands.add_parser(verdict, parents=[common], help=f"{verdict} a request")
        decide.add_argument("id")
        decide.add_argument("--reason", help="why (recorded in the audit trail)")
        decide.set_defaults(func=_run(_approvals_decide))
    if reindex is not None:
        command = approval_commands.add_parser(
            "reindex", help="operator: give requests stored by a gateway older than the pending index their "
            "open/ copy, so they are listed as pending (reads every request once)")
        command.add_argument("--config", required=True, help="the gateway configuration (its approvals.store)")
        command.set_defaults(func=_run(reindex))

    access = subparsers.add_parser("access", help="just-in-time access grants")
    access_commands = access.add_subparsers(dest="access_command", required=True)
    request = access_commands.add_parser("request", parents=[common], help="ask for a role for a while")
    request.add_argument("--resource", required=True)
    request.add_argument("--role", required=True)
    request.add_argument("--duration", required=True, help="e.g. 30m, 2h")
    request.add_argument("--reason", required=True, help="why you need it (shown to approvers)")
    request.set_defaults(func=_run(_access_request))
    grants = access_commands.add_parser("list", parents=[common], help="your grants and grant requests")
    grants.add_argument("--resource")
    grants.add_argument("--json", action="store_true")
    grants.set_defaults(func=_run(_access_list))


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m wardgate.approvals.cli``) until ``wardgate`` wires add_parser in."""
    parser = argparse.ArgumentParser(prog="wardgate")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
