"""CLI of work across nodes: ``nightcore mesh submit``, ``mesh runs``, ``mesh queue``,
``mesh publish-tenant`` (registered under ``nightcore mesh`` by
:mod:`nightcore.cli.commands_mesh`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from nightcore.cli.render import info, print_json, print_table


def _config(args: argparse.Namespace) -> Any:
    from nightcore.cli.commands_node import mesh_config

    return mesh_config(args)


def cmd_submit(args: argparse.Namespace) -> int:
    from nightcore.mesh import workqueue

    out = workqueue.submit(_config(args), list(args.tenants), args.count, wait_s=args.wait)
    if args.json:
        print_json({"results": None, **out})  # results: null without --wait
        return 0 if not (out.get("results") or {}).get("pending") else 1
    ids = out["request_ids"]
    shown = ids if len(ids) <= 10 else [*ids[:5], "...", *ids[-5:]]
    info(
        f"submitted {out['count']} request(s) to run {', '.join(out['tenants'])} on "
        f"{out['stream']}" + (f" ({out['duplicates']} duplicate(s))" if out["duplicates"] else "")
    )
    for rid in shown:
        print(rid)
    results = out.get("results")
    if results is not None:
        codes = ", ".join(f"{c} {n}" for c, n in sorted(results["codes"].items())) or "none"
        info(f"results: {results['done']}/{out['count']} ({codes})")
        if results["pending"]:
            info(f"{len(results['pending'])} request(s) without a result yet")
            return 1
    return 0


def _num(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def cmd_runs(args: argparse.Namespace) -> int:
    from nightcore.mesh import workqueue

    out = workqueue.runs(_config(args), args.limit)
    if args.json:
        print_json(out)
        return 0
    rows = [
        [
            r["request_id"],
            r["tenant"] or "-",
            r["node"] or "-",
            r["code"],
            r["run_id"] or "-",
            _num(r["exit_code"]),
            _num(r["fuel_used"]),
            _num(r["wall_ms"]),
            r.get("reason") or "",
        ]
        for r in out["rows"]
    ]
    print_table(
        "Night Mesh runs",
        ["request", "tenant", "node", "code", "run id", "exit", "fuel", "wall ms", "reason"],
        rows,
        code_column=3,
    )
    info(f"{len(rows)} run(s) shown; {out['results']} result(s) on the results stream")
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    from nightcore.mesh import workqueue

    settings = None
    if args.ack_wait is not None or args.max_deliver is not None:
        settings = workqueue.QueueSettings(
            ack_wait_s=args.ack_wait if args.ack_wait is not None else workqueue.DEFAULT_ACK_WAIT_S,
            max_deliver=(
                args.max_deliver if args.max_deliver is not None else workqueue.DEFAULT_MAX_DELIVER
            ),
        )
    out = workqueue.queue(_config(args), settings)
    if args.json:
        print_json(out)
        return 0
    print_table(
        "Night Mesh work queue",
        ["stream", "waiting", "in flight", "redelivered", "ack wait s", "max deliver"],
        [
            [
                out["stream"],
                out.get("waiting", 0),
                out.get("in_flight", 0),
                out.get("redelivered", 0),
                _num(out.get("ack_wait_s")),
                out.get("max_deliver", "-"),
            ]
        ],
        free_column=None,
    )
    return 0


def cmd_publish_tenant(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nightcore.mesh import packages

    out = packages.publish_tenant(_config(args), Path(args.dir))
    if args.json:
        print_json(out)
        return 0
    info(
        f"published {out['tenant']} ({out['bytes']} bytes) to {out['store']}; each node "
        "verifies it with its own trust before installing it"
    )
    return 0


def register_work(add: Callable[..., argparse.ArgumentParser], msub: Any) -> None:
    """Add ``submit``, ``runs`` and ``queue`` to the ``mesh`` subcommands ``msub``."""
    from nightcore.cli.commands_node import add_mesh_options

    sp = add(
        "submit",
        cmd_submit,
        "put run requests on the work queue: any node of the mesh runs each exactly once "
        "(e.g. nightcore mesh submit hello --count 100 --mesh nats://10.0.0.1:4222)",
        msub,
    )
    sp.add_argument("tenants", nargs="+", metavar="TENANT", help="tenants each request runs")
    sp.add_argument(
        "--count", type=int, default=1, help="number of requests (each runs every TENANT once)"
    )
    sp.add_argument(
        "--wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wait up to SECONDS for every request's result (exit 1 if some have none)",
    )
    add_mesh_options(sp, required=True)

    sp = add(
        "runs",
        cmd_runs,
        "the results of mesh work: one row per run (request, tenant, node, code, run id, exit, "
        "fuel, wall ms); e.g. nightcore mesh runs --limit 20 --mesh nats://10.0.0.1:4222",
        msub,
    )
    sp.add_argument("--limit", type=int, default=50, help="last N results (default 50)")
    add_mesh_options(sp, required=True)

    sp = add(
        "publish-tenant",
        cmd_publish_tenant,
        "put a signed tenant package in the mesh object store; nodes fetch it, verify it with "
        "their own trust and install it before running it (e.g. nightcore mesh publish-tenant "
        "ws/modules/hello --mesh nats://10.0.0.1:4222)",
        msub,
    )
    sp.add_argument("dir", metavar="DIR", help="the signed tenant directory (modules/<tenant>)")
    add_mesh_options(sp, required=True)

    sp = add(
        "queue",
        cmd_queue,
        "the work queue's depth and consumer settings; --ack-wait/--max-deliver create or "
        "change them (e.g. nightcore mesh queue --ack-wait 15 --mesh nats://10.0.0.1:4222)",
        msub,
    )
    sp.add_argument(
        "--ack-wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="redeliver a request this long after its node's last sign of life (default 15)",
    )
    sp.add_argument(
        "--max-deliver",
        type=int,
        default=None,
        metavar="N",
        help="deliveries of one request before JetStream gives up on it (default 5)",
    )
    add_mesh_options(sp, required=True)
