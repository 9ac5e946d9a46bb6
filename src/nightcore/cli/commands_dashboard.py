"""CLI commands of the dashboard: ``dashboard build``, ``serve``, ``serve token ...``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nightcore.cli.context import open_workspace as _ws
from nightcore.cli.render import clean, info, print_json, print_table


def cmd_dashboard_build(args: argparse.Namespace) -> int:
    from nightcore.app.dashboard import write_report
    from nightcore.errors import UsageError

    if args.max_rows < 1:
        raise UsageError("--max-rows must be at least 1")
    ws = _ws(args)
    built = write_report(
        ws,
        Path(args.out) if args.out else None,
        diff_since=args.diff,
        verify=args.verify,
        max_rows=args.max_rows,
    )
    s = built.snapshot
    v = s.audit.verify
    if args.json:
        out: dict[str, Any] = {
            "path": str(built.path),
            "sha256": built.sha256,
            "bytes": built.size,
            "tenants": len(s.tenants),
            "tenants_shown": len(s.shown),
            "runs": s.runs.total,
            "audit_entries": s.audit.entries,
            "verify": v.to_dict(),
            "diff": None,  # without --diff
        }
        if s.diff is not None:
            out["diff"] = {
                "since": s.diff.label,
                "new_tenants": s.diff.new_tenants,
                "changed_digests": [
                    {"tenant": t, "from": a, "to": b} for t, a, b in s.diff.changed_digests
                ],
                "changed_verdicts": [
                    {"tenant": t, "from": a, "to": b} for t, a, b in s.diff.changed_verdicts
                ],
            }
        print_json(out)
    else:
        # sha256sum format: `sha256sum -c` can check it.
        sys.stdout.write(f"{built.sha256}  {built.path}\n")
        state = "OK" if v.ok else "FAILED" if v.ok is False else "not checked"
        info(
            f"wrote {built.path} ({built.size:,} bytes): {len(s.tenants):,} tenants, "
            f"{s.runs.total:,} runs, {s.audit.entries:,} audit entries ({v.mode} verification: "
            f"{state})"
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from nightcore.cli.context import node_client
    from nightcore.dashboard.server import serve
    from nightcore.errors import NightCoreError

    ws = _ws(args)
    client = node_client(args)
    if client is not None:
        client.close()
        # One process runs a workspace's tenants: a second one with its own runner would race
        # the node's workers for the same tenants. The node hosts the console itself.
        raise NightCoreError(
            "a node is running for this workspace: its console is started with it "
            "(nightcore node --http HOST:PORT); or use --local to serve one anyway",
            code="NODE_RUNNING",
        )

    def ready(url: str) -> None:
        if args.json:  # one line, so that a script can read the address (e.g. with --port 0)
            sys.stdout.write(json.dumps({"url": url, "workspace": str(ws.root)}) + "\n")
            sys.stdout.flush()
        info(f"serving the Night Core console on {url} (read-only without a token; Ctrl-C stops)")

    serve(
        ws,
        args.host,
        args.port,
        allow_remote=args.allow_remote,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        allowed_hosts=args.allowed_host or (),
        ready=ready,
        log=None if args.quiet else info,
    )
    info("console stopped")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    from nightcore.app.dashboard import token_store
    from nightcore.dashboard.tokens import parse_expires

    new = token_store(_ws(args)).create(parse_expires(args.expires))
    if args.json:
        print_json({"id": new.id, "token": new.token, "expires": new.expires})
    else:
        sys.stdout.write(new.token + "\n")
        info(
            f"token {new.id} expires {new.expires}; it is shown only now (the workspace keeps "
            "its SHA-256). Use it as 'Authorization: Bearer <token>'."
        )
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    import datetime as dt

    from nightcore.app.dashboard import token_store

    records = token_store(_ws(args)).records()
    now = dt.datetime.now(dt.UTC)
    if args.json:
        print_json([{**r.public(), "expired": r.expired(now)} for r in records])
    else:
        print_table(
            "Console tokens",
            ["id", "created", "expires", "state"],
            [[r.id, r.created, r.expires, "EXPIRED" if r.expired(now) else "OK"] for r in records],
            code_column=3,
        )
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from nightcore.app.dashboard import token_store

    token_store(_ws(args)).revoke(args.token_id)
    if args.json:
        print_json({"revoked": args.token_id})
    else:
        info(f"revoked token {clean(args.token_id, 40)}")
    return 0


def register(add: Callable[..., argparse.ArgumentParser], sub: Any) -> None:
    from nightcore.cli.main import _need_sub
    from nightcore.cli.main import _Parser as Parser
    from nightcore.dashboard_defaults import (
        DEFAULT_HOST,
        DEFAULT_PORT,
        DEFAULT_TTL,
        MAX_ROWS,
        VERIFY_MODES,
    )

    dash = add("dashboard", _need_sub)
    dsub = dash.add_subparsers(dest="dashboard_cmd", metavar="ACTION", parser_class=Parser)
    sp = add(
        "build",
        cmd_dashboard_build,
        "write the report (one HTML file, no network access) and print its SHA-256",
        dsub,
    )
    sp.add_argument("--out", help="output file (default: <workspace>/state/dashboard.html)")
    sp.add_argument(
        "--diff",
        metavar="SINCE",
        help="also show what changed since an audit log size (checkpoint) or an ISO 8601 time",
    )
    sp.add_argument(
        "--verify",
        choices=VERIFY_MODES,
        default="auto",
        help="audit check shown in the report: full (as 'audit verify'), quick (hash chain and "
        "Merkle root vs the signed checkpoint, from the same pass), none; auto = full up to "
        "16 MiB of log, else quick",
    )
    sp.add_argument(
        "--max-rows",
        type=int,
        default=MAX_ROWS,
        help=f"tenant rows shown, problems first (default {MAX_ROWS})",
    )

    sp = add("serve", cmd_serve)
    sp.add_argument("--host", default=DEFAULT_HOST, help=f"address (default {DEFAULT_HOST})")
    sp.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    sp.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (requires --tls-cert and --tls-key)",
    )
    sp.add_argument("--tls-cert", help="TLS certificate chain (PEM)")
    sp.add_argument("--tls-key", help="TLS private key (PEM)")
    sp.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="another host name clients may use (Host header check); repeatable",
    )
    sp.add_argument("--quiet", action="store_true", help="no request log on stderr")
    ssub = sp.add_subparsers(dest="serve_cmd", metavar="ACTION", parser_class=Parser)
    tok = add("token", _need_sub, "manage the console's bearer tokens", ssub)
    tsub = tok.add_subparsers(dest="token_cmd", metavar="ACTION", parser_class=Parser)
    sp = add("create", cmd_token_create, "create a token (printed once)", tsub)
    sp.add_argument(
        "--expires",
        default=DEFAULT_TTL,
        help=f"30m, 12h, 7d, 2w or an ISO 8601 time; at most 366 days (default {DEFAULT_TTL})",
    )
    add("list", cmd_token_list, "list token ids and expiry times", tsub)
    sp = add("revoke", cmd_token_revoke, "revoke a token by id", tsub)
    sp.add_argument("token_id", help="the token id (see serve token list)")
