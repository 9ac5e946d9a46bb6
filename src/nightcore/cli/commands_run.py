"""CLI commands of the run path: run, cordon, uncordon, runs, state rebuild."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from nightcore.cli.context import node_client
from nightcore.cli.context import open_workspace as _ws
from nightcore.cli.render import info, print_json, print_table
from nightcore.errors import UsageError

PROGRESS_THRESHOLD = 5
REFRESH_VERIFY_MAX_BYTES = 64 * 1024 * 1024


def _fmt_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


def _fmt_fuel(fuel: int | None) -> str:
    # None: the run was stopped where Wasmtime had not written its fuel counter back
    # (docs/codes.md, TIMEOUT); "unknown" is the truth, 0 would be a false figure.
    return "unknown" if fuel is None else f"{fuel:,}"


def cmd_run(args: argparse.Namespace) -> int:
    if args.parallel is not None and not 1 <= args.parallel <= 256:
        raise UsageError("--parallel must be between 1 and 256")
    client = node_client(args)
    report = _run_through_node(client, args) if client is not None else _run_local(args)
    return _render_run(args, report)


class _Progress:
    """A progress bar only for a person watching: in a pipe or log file it is noise."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bar: Any = None
        self.task: Any = None

    def start(self, count: int) -> None:
        if self.args.json or count <= PROGRESS_THRESHOLD or not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(file=sys.stderr), transient=True)
        self.task = self.bar.add_task("running tenants", total=count)
        self.bar.start()

    def advance(self, *_: Any) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _run_local(args: argparse.Namespace) -> dict[str, Any]:
    from nightcore import app

    ws = _ws(args)
    names = app.select_tenants(ws, args.tenants or None)
    progress = _Progress(args)
    progress.start(len(names))
    try:
        report = app.run(
            ws,
            names,
            selected=True,
            parallel=args.parallel,
            progress=progress.advance if progress.bar is not None else None,
            strongbox=args.strongbox,
        ).to_dict()
    finally:
        progress.stop()
    if not args.no_dashboard:
        report["dashboard"] = lambda: _refresh_dashboard(ws)  # after the table, as before
    return report


def _refresh_dashboard(ws: Any) -> dict[str, str]:
    from nightcore.app.dashboard import build_report

    # The run just signed a checkpoint, and `nightcore audit verify` is the full check: the
    # refresh re-hashes the log ("quick") only while that stays cheap, so a node with a huge
    # log does not pay seconds per run for its report.
    log = ws.layout.audit_log
    big = log.exists() and log.stat().st_size > REFRESH_VERIFY_MAX_BYTES
    path, digest = build_report(ws, verify="none" if big else "quick")
    return {"path": str(path), "sha256": digest}


def _run_through_node(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    progress = _Progress(args)

    def on_event(event: str, data: dict[str, Any]) -> None:
        if event == "selected" and isinstance(data.get("count"), int):
            progress.start(data["count"])
        elif event == "progress":
            progress.advance()

    try:
        report: dict[str, Any] = client.call(
            "run",
            {
                "tenants": args.tenants or None,
                "parallel": args.parallel,
                "strongbox": bool(args.strongbox),
                "dashboard": not args.no_dashboard,
            },
            on_event,
        )
    finally:
        progress.stop()
    return report


def _render_run(args: argparse.Namespace, report: dict[str, Any]) -> int:
    runs: list[dict[str, Any]] = report["runs"]
    if args.json:
        print_json(runs)
    else:
        rows = []
        for r in runs:
            ran = bool(r["run_id"]) and r["code"] != "CORDONED" and r["audit_seq"] is not None
            rows.append(
                [
                    r["tenant"],
                    r["code"],
                    "-" if r["exit_code"] is None else r["exit_code"],
                    _fmt_fuel(r["fuel_used"]) if ran else "-",
                    f"{r['wall_ms']:.1f}" if ran else "-",
                    _fmt_bytes(r["memory_bytes"]) if ran else "-",
                    _fmt_bytes(r["output_bytes"]) if ran else "-",
                    r["key_id"][:12] or "-",
                    r["reason"] or "",
                ]
            )
        print_table(
            "Night Core run",
            [
                "tenant",
                "verdict",
                "exit",
                "fuel",
                "wall ms",
                "memory",
                "output",
                "key id",
                "detail",
            ],
            rows,
            code_column=1,
        )
        ok = sum(r["code"] == "OK" for r in runs)
        info(f"{ok}/{len(runs)} tenants OK")
        checkpoint = report.get("checkpoint")
        if checkpoint is not None:
            info(f"signed checkpoint: {checkpoint['size']} entries, root {checkpoint['root'][:16]}")
    dashboard = report.get("dashboard")
    if callable(dashboard):
        dashboard = dashboard()
    if dashboard is not None and not args.json:
        info(f"dashboard: {dashboard['path']} (sha256 {dashboard['sha256']})")
    if report.get("index_error") is not None:
        code, message = report["index_error"]
        info(f"warning[{code}]: {message}")
    for m in report.get("mirrors") or []:
        if not m["ok"]:
            info(
                f"warning[MIRROR_UNAVAILABLE]: audit mirror {m['name']} is {m['lag']} lines "
                f"behind: {m['error']}"
            )
    if report.get("checkpoint_error") is not None:
        code, message = report["checkpoint_error"]
        info(f"warning[{code}]: no checkpoint was signed after this run: {message}")
        # An ECDSA (FIPS) node cannot sign C2SP notes: that is a known gap, not a failure.
        if code != "CHECKPOINT_UNSUPPORTED_KEY":
            return 1
    return 0 if runs and all(r["code"] == "OK" for r in runs) else 1


def cmd_cordon(args: argparse.Namespace) -> int:
    client = node_client(args)
    if client is not None:
        out = client.call("cordon", {"tenant": args.tenant, "reason": args.reason})
    else:
        from nightcore import app

        out = app.cordon(_ws(args), args.tenant, args.reason)
    if args.json:
        print_json(out)
    else:
        info(f"cordoned {args.tenant}")
    return 0


def cmd_uncordon(args: argparse.Namespace) -> int:
    client = node_client(args)
    if client is not None:
        out = client.call("uncordon", {"tenant": args.tenant, "reason": args.reason or ""})
    else:
        from nightcore import app

        out = app.uncordon(_ws(args), args.tenant, args.reason or "")
    if args.json:
        print_json(out)
    else:
        info(f"uncordoned {args.tenant}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 100_000:
        raise UsageError("--limit must be between 1 and 100000")
    client = node_client(args)
    if client is not None:
        rows = client.call("runs", {"tenant": args.tenant, "limit": args.limit})
    else:
        from nightcore import app

        rows = app.runs(_ws(args), args.tenant, args.limit)
    if args.json:
        print_json(rows)
    else:
        print_table(
            "Runs",
            ["run id", "tenant", "verdict", "exit", "fuel", "wall ms", "seq"],
            [
                [
                    r["run_id"],
                    r["tenant"],
                    r["code"],
                    "-" if r["exit_code"] is None else r["exit_code"],
                    _fmt_fuel(r["fuel_used"]),
                    f"{r['wall_ms']:.1f}",
                    r["audit_seq"],
                ]
                for r in rows
            ],
            code_column=2,
            free_column=None,
        )
    return 0


def cmd_state_rebuild(args: argparse.Namespace) -> int:
    from nightcore import app

    n = app.rebuild_index(_ws(args))
    if args.json:
        print_json({"runs_indexed": n})
    else:
        info(f"rebuilt state/nightcore.db from the audit log: {n} runs")
    return 0


def register(add: Callable[..., argparse.ArgumentParser], sub: Any) -> None:
    from nightcore.cli.main import _need_sub
    from nightcore.cli.main import _Parser as Parser

    sp = add("run", cmd_run)
    sp.add_argument("tenants", nargs="*")
    sp.add_argument(
        "--strongbox",
        action="store_true",
        help="run each tenant in a confined worker process: seccomp allow-list, no network, "
        "unprivileged uid, rlimits (Linux, root; docs/strongbox.md)",
    )
    sp.add_argument(
        "--no-dashboard",
        action="store_true",
        help="do not refresh state/dashboard.html after the run",
    )
    sp.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="worker threads (default: run.parallel in nightcore.toml)",
    )
    sp = add("cordon", cmd_cordon)
    sp.add_argument("tenant")
    sp.add_argument("--reason", required=True)
    sp = add("uncordon", cmd_uncordon)
    sp.add_argument("tenant")
    sp.add_argument("--reason", default="")
    sp = add("runs", cmd_runs)
    sp.add_argument("--tenant")
    sp.add_argument("--limit", type=int, default=50)
    state = add("state", _need_sub)
    ssub = state.add_subparsers(dest="state_cmd", metavar="ACTION", parser_class=Parser)
    add("rebuild", cmd_state_rebuild, "rebuild the run index from the audit log", ssub)
