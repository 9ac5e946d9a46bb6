"""CLI commands of the run path: run, cordon, uncordon, runs, state rebuild."""

from __future__ import annotations

import argparse
import sys

from nightcore.cli.context import node_client
from nightcore.cli.context import open_workspace as _ws
from nightcore.cli.render import info, print_json, print_table
from nightcore.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (cold CLI)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

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
    if args.dev_limits is not None:
        from nightcore.module.manifest import LIMIT_NAMES
        from nightcore.policy import parse_dev_limits

        args.dev_limits = parse_dev_limits(args.dev_limits, LIMIT_NAMES)
    # A development override runs in this process: the node serves production requests only.
    client = node_client(args) if args.dev_limits is None else None
    report = _run_through_node(client, args) if client is not None else _run_local(args)
    return _render_run(args, report)


class _Progress:
    """A progress bar only for a person watching: in a pipe or log file it is noise."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bar: Any = None
        self.task: Any = None

    @staticmethod
    def wanted(args: argparse.Namespace) -> bool:
        return not args.json and sys.stderr.isatty()

    def start(self, count: int) -> None:
        if count <= PROGRESS_THRESHOLD or not self.wanted(self.args):
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
            dev_limits=args.dev_limits,
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
                "progress": _Progress.wanted(args),
            },
            on_event,
        )
    finally:
        progress.stop()
    return report


STDERR_DETAIL_CHARS = 120
SHOW_OUTPUT_LINES = 200  # `run --show-output`: the last lines of each run's stdout


def _stream_reader(args: argparse.Namespace) -> Callable[[str, str, int], list[str]] | None:
    """Reads the cleaned tail of a run's stream from the workspace, in this process (read-only;
    the node, if one served the run, wrote the same files). None if the workspace is not
    readable here."""
    from nightcore.errors import NightCoreError

    try:
        from nightcore.app.run import stream_tail

        ws = _ws(args)
    except (NightCoreError, OSError):
        return None

    def read(run_id: str, stream: str, lines: int) -> list[str]:
        try:
            return stream_tail(ws, run_id, stream, lines) if run_id else []
        except (NightCoreError, OSError):
            return []

    return read


def _failure_details(
    reader: Callable[[str, str, int], list[str]], failed: list[dict[str, Any]]
) -> dict[str, str]:
    """``detail`` of each run that did not end OK, with the last line it wrote to stderr,
    which often says why (CLI only: the JSON keeps ``reason`` as recorded)."""
    from nightcore.cli.render import clean

    details: dict[str, str] = {}
    for r in failed:
        last = reader(r["run_id"], "stderr", 1)
        if last and last[0].strip():
            tail = clean(last[0].strip(), STDERR_DETAIL_CHARS)
            details[r["run_id"]] = f"{r['reason']}; stderr: {tail}" if r["reason"] else tail
    return details


def _print_outputs(
    reader: Callable[[str, str, int], list[str]], runs: list[dict[str, Any]]
) -> None:
    from nightcore.cli.render import clean

    for r in runs:
        if not r["run_id"] or r["code"] == "CORDONED":
            continue
        lines = reader(r["run_id"], "stdout", SHOW_OUTPUT_LINES)
        sys.stdout.write(f"-- {clean(r['tenant'], 80)} stdout ({r['run_id']}):\n")
        sys.stdout.write("".join(f"  | {line}\n" for line in lines))


def _render_run(args: argparse.Namespace, report: dict[str, Any]) -> int:
    runs: list[dict[str, Any]] = report["runs"]
    if args.json:
        print_json(runs)
    else:
        failed = [r for r in runs if r["code"] != "OK" and r["run_id"]]
        show_output = getattr(args, "show_output", False)
        reader = _stream_reader(args) if failed or show_output else None
        details = _failure_details(reader, failed) if reader is not None else {}
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
                    details.get(r["run_id"], r["reason"] or ""),
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
        if show_output and reader is not None:
            _print_outputs(reader, runs)
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
        # A node key that cannot sign C2SP notes (P-384): a known gap, not a failure.
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


def cmd_logs(args: argparse.Namespace) -> int:
    """``nightcore logs RUN_ID``: the same as ``nightcore runs logs RUN_ID``."""
    args.action = "logs"
    return _runs_logs(args)


def cmd_runs(args: argparse.Namespace) -> int:
    action = getattr(args, "action", None)
    if action is not None:
        if args.run_id is None:
            raise UsageError(f"runs {action} needs a RUN_ID (a unique prefix is enough)")
        return _runs_show(args) if action == "show" else _runs_logs(args)
    if not 1 <= args.limit <= 100_000:
        raise UsageError("--limit must be between 1 and 100000")
    if args.denied:
        return _runs_denied(args)
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


def _isolation_text(layers: Any) -> str:
    """``strongbox (seccomp, no_new_privs, uid 1500000002, landlock ABI 7, netns, mountns)``."""
    if not isinstance(layers, dict):
        return "unknown (not attested)"
    if layers.get("mode") != "strongbox":
        return str(layers.get("mode") or "unknown")
    on = [k for k in ("seccomp", "no_new_privs") if layers.get(k) is True]
    if layers.get("uid") is not None:
        on.append(f"uid {layers['uid']}")
    if layers.get("landlock_abi"):
        on.append(f"landlock ABI {layers['landlock_abi']}")
    on += [k for k in ("netns", "mountns") if layers.get(k) is True]
    return f"strongbox ({', '.join(on) or 'no layer'})"


def _runs_show(args: argparse.Namespace) -> int:
    from nightcore.app.run import run_details
    from nightcore.cli.render import clean

    d = run_details(_ws(args), args.run_id)
    if args.json:
        print_json(d)
        return 0
    att = d["attestation"]
    head = [
        ["tenant", d["tenant"]],
        ["verdict", d["code"]],
        ["exit", "-" if d["exit_code"] is None else d["exit_code"]],
        ["detail", d["detail"] or ""],
        ["audit seq", d["audit_seq"]],
        ["time", d["ts"] or "-"],
        ["key id", d["key_id"] or "-"],
        ["isolation", _isolation_text(d.get("isolation"))],
        ["attestation", att["path"]],
        ["sha256", att["sha256"] or "-"],
        ["verified", "yes (node.pub.pem)" if att["verified"] else f"NO: {att['error']}"],
    ]
    if not d["indexed"]:
        head.append(["index", d["index_error"] or "not in the run index (nightcore state rebuild)"])
    # Key/value lines, not a table: a path or an error is never cut at a column width.
    sys.stdout.write(f"Run {d['run_id']}\n")
    sys.stdout.write("".join(f"  {k:<12} {clean(v, 400)}".rstrip() + "\n" for k, v in head))
    lim, use = d["limits"], d["usage"]
    fmt: dict[str, Callable[[Any], str]] = {
        "fuel": _fmt_fuel,
        "wall_ms": lambda v: f"{v:,.1f}" if isinstance(v, int | float) else "unknown",
        "memory_bytes": lambda v: _fmt_bytes(v) if isinstance(v, int) else "unknown",
        "output_bytes": lambda v: _fmt_bytes(v) if isinstance(v, int) else "unknown",
    }
    rows = [
        [label, fmt[name](use.get(name)), "-" if lim.get(name) is None else fmt[name](lim[name])]
        for name, label in (
            ("fuel", "fuel"),
            ("wall_ms", "wall ms"),
            ("memory_bytes", "memory"),
            ("output_bytes", "output"),
        )
    ]
    print_table("Limits and usage", ["resource", "used", "limit"], rows, free_column=None)
    grants = d["grants"]
    if isinstance(grants, dict):
        import json

        gr = [[k, json.dumps(v, sort_keys=True)] for k, v in sorted(grants.items())]
        print_table("Grants (signed manifest capabilities)", ["kind", "granted"], gr)
    for name in ("stdout", "stderr"):
        st = d["streams"][name]
        shown = len(st["tail"])
        sys.stdout.write(
            f"{name}: {_fmt_bytes(st['bytes'])}"
            + (f", last {shown} lines (cleaned):\n" if shown else "\n")
        )
        for line in st["tail"]:
            sys.stdout.write(f"  | {clean(line, 400)}\n")
    return 0


def _runs_denied(args: argparse.Namespace) -> int:
    """Tenants refused before they ran, from the audit log (read in this process, read-only,
    like ``runs show``: the index holds only runs that ran)."""
    from nightcore.app.run import denials

    rows = denials(_ws(args), args.tenant, args.limit)
    if args.json:
        print_json(rows)
        return 0
    print_table(
        "Denials",
        ["seq", "tenant", "code", "key", "reason"],
        [
            [
                r["audit_seq"],
                r["tenant"] or "-",
                r["code"],
                (r["key_id"] or "")[:16] or "-",
                r["reason"] or "",
            ]
            for r in rows
        ],
        code_column=2,
    )
    return 0


def _runs_logs(args: argparse.Namespace) -> int:
    from nightcore.app.run import LOG_CAP, run_log
    from nightcore.cli.render import clean

    stream = "stderr" if args.stderr else "stdout"
    if getattr(args, "follow", False):
        return _follow(args, stream)
    run_id, data, size = run_log(_ws(args), args.run_id, stream)
    truncated = size > len(data)
    if args.json:
        print_json(
            {
                "run_id": run_id,
                "stream": stream,
                "bytes": size,
                "truncated": truncated,
                "text": data.decode("utf-8", errors="replace"),
            }
        )
        return 0
    if sys.stdout.isatty() and not args.raw:
        # The tenant's bytes on a person's terminal: control sequences are cleaned.
        text = data.decode("utf-8", errors="replace")
        sys.stdout.write("".join(clean(line, 1 << 20) + "\n" for line in text.splitlines()))
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    if truncated:
        info(f"{stream} of {run_id} is {size} bytes: printed the first {LOG_CAP}")
    return 0


def _follow(args: argparse.Namespace, stream: str) -> int:
    from nightcore.app.run import follow_run_log
    from nightcore.cli.render import clean
    from nightcore.errors import UsageError

    if args.json:
        raise UsageError("--follow prints the bytes as they come: not with --json")
    tidy = sys.stdout.isatty() and not args.raw
    pending = b""
    sys.stdout.flush()
    for chunk in follow_run_log(_ws(args), args.run_id, stream):
        if not tidy:
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            continue
        # On a person's terminal, whole lines cleaned of control sequences.
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            sys.stdout.write(clean(line.decode("utf-8", errors="replace"), 1 << 20) + "\n")
        sys.stdout.flush()
    if tidy and pending:
        sys.stdout.write(clean(pending.decode("utf-8", errors="replace"), 1 << 20) + "\n")
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
    sp.add_argument("tenants", nargs="*", help="tenant ids to run (default: every tenant)")
    sp.add_argument(
        "--dev-limits",
        metavar="NAME=VALUE,...",
        help="development only: replace the manifests' signed limits for this run (e.g. "
        "fuel=1000,wall_ms=50; still capped by policy maxima; audited); refused "
        "DEV_MODE_DISABLED unless nightcore.toml has [policy] development = true; runs in "
        "this process even when a node serves the workspace",
    )
    sp.add_argument(
        "--strongbox",
        action="store_true",
        help="run each tenant in a confined worker process: seccomp allow-list, no network, "
        "the tenant's own uid, Landlock, a private mount namespace, rlimits (Linux, root; "
        "node policy [policy] isolation may require it; docs/strongbox.md)",
    )
    sp.add_argument(
        "--no-dashboard",
        action="store_true",
        help="do not refresh state/dashboard.html after the run",
    )
    sp.add_argument(
        "--show-output",
        action="store_true",
        help=f"print each run's stdout after the table (the last {SHOW_OUTPUT_LINES} lines, "
        "cleaned of control characters; all of it: nightcore runs logs RUN_ID)",
    )
    sp.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="worker threads (default: run.parallel in nightcore.toml)",
    )
    sp = add("cordon", cmd_cordon)
    sp.add_argument("tenant", help="the tenant id to stop")
    sp.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    sp = add("uncordon", cmd_uncordon)
    sp.add_argument("tenant", help="the cordoned tenant id")
    sp.add_argument("--reason", default="", help="why (recorded in the audit log)")
    sp = add("runs", cmd_runs)
    sp.add_argument(
        "action",
        nargs="?",
        choices=("show", "logs"),
        help="show: one run's outcome, limits vs usage, grants, output tails, attestation; "
        "logs: the bytes a run wrote to stdout (--stderr: stderr). Both read the workspace "
        "in this process (read-only), even when a node serves it",
    )
    sp.add_argument(
        "run_id", nargs="?", metavar="RUN_ID", help="with show/logs: a run id or a unique prefix"
    )
    sp.add_argument("--stderr", action="store_true", help="logs: the stderr stream")
    sp.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="logs: print the output as the run writes it, until the run ends",
    )
    sp.add_argument(
        "--raw",
        action="store_true",
        help="logs: the bytes as written even on a terminal (default there: cleaned lines)",
    )
    sp.add_argument("--tenant", help="only this tenant's runs")
    sp.add_argument("--limit", type=int, default=50, help="the latest N runs (default 50)")
    sp.add_argument(
        "--denied",
        action="store_true",
        help="list the tenants refused before they ran (failed verification, cordon, host "
        "error while preparing), from the audit log, instead of the runs that ran",
    )
    sp = add("logs", cmd_logs)
    sp.add_argument("run_id", metavar="RUN_ID", help="a run id or a unique prefix of one")
    sp.add_argument("--stderr", action="store_true", help="the stderr stream (default: stdout)")
    sp.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="print the output as the run writes it, until the run ends (a run in progress "
        "in process or on a node; a strongbox run's output appears when it ends)",
    )
    sp.add_argument(
        "--raw",
        action="store_true",
        help="the bytes as written even on a terminal (default there: cleaned lines)",
    )
    state = add("state", _need_sub)
    ssub = state.add_subparsers(dest="state_cmd", metavar="ACTION", parser_class=Parser)
    add("rebuild", cmd_state_rebuild, "rebuild the run index from the audit log", ssub)
