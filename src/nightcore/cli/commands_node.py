"""CLI of the node agent: ``nightcore node`` (serve the workspace) and ``nightcore node status``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from nightcore.cli.render import info, print_json, print_table
from nightcore.errors import NightCoreError, UsageError


def cmd_node(args: argparse.Namespace) -> int:
    if args.node_cmd == "status":
        return _status(args)
    from nightcore.cli.context import open_workspace
    from nightcore.node.server import run_node

    if args.workers is not None and not 1 <= args.workers <= 256:
        raise UsageError("--workers must be between 1 and 256")
    return run_node(
        open_workspace(args),
        workers=args.workers,
        tenant_cap=args.tenant_cap,
        http=_http(args.http) if args.http else None,
        mesh=mesh_config(args) if args.mesh else None,
    )


def mesh_config(args: argparse.Namespace) -> Any:
    """The MeshConfig of ``--mesh`` and its options (shared with ``nightcore mesh``)."""
    from nightcore.mesh.config import MeshConfig

    return MeshConfig.from_options(
        args.mesh,
        prefix=args.mesh_prefix,
        node_name=args.node_name,
        creds=args.mesh_creds,
        tls_ca=args.mesh_tls_ca,
        tls_cert=args.mesh_tls_cert,
        tls_key=args.mesh_tls_key,
        js_domain=args.mesh_domain,
        admit_timeout_s=getattr(args, "mesh_admit_timeout", None),
    )


def add_mesh_options(sp: argparse.ArgumentParser, *, required: bool) -> None:
    """``--mesh`` and its options (``nightcore node`` and every ``nightcore mesh`` command)."""
    sp.add_argument(
        "--mesh",
        metavar="URL[,URL...]",
        required=required,
        default=None,
        help="NATS servers of the mesh, e.g. nats://10.0.0.1:4222,nats://10.0.0.2:4222 "
        "(give every server of the cluster; tls://... for TLS)",
    )
    sp.add_argument(
        "--mesh-prefix",
        metavar="P",
        default=None,
        help="deployment prefix of every subject, stream and bucket ([a-z0-9-], default nightcore)",
    )
    sp.add_argument(
        "--mesh-creds",
        metavar="FILE",
        default=None,
        help="NATS credentials: a .creds file, an nkey seed file, or one line USER:PASSWORD "
        "(mode 0600)",
    )
    sp.add_argument("--mesh-tls-ca", metavar="FILE", default=None, help="CA to verify servers")
    sp.add_argument(
        "--mesh-tls-cert", metavar="FILE", default=None, help="client certificate (mutual TLS)"
    )
    sp.add_argument("--mesh-tls-key", metavar="FILE", default=None, help="client certificate's key")
    sp.add_argument(
        "--mesh-domain",
        metavar="D",
        default=None,
        help="JetStream domain that holds the mesh's streams (a node in a second region joined "
        "as a leafnode gives the first region's domain; default: the server's own)",
    )
    sp.add_argument(
        "--node-name",
        metavar="N",
        default=None,
        help="this node's name in the mesh ([a-z0-9-], default: the host name)",
    )


def _http(value: str) -> tuple[str, int]:
    from nightcore.dashboard_defaults import DEFAULT_HOST

    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = DEFAULT_HOST, value
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError("--http takes [HOST:]PORT with PORT in [0, 65535]")
    return host.strip("[]") or DEFAULT_HOST, int(port)


def _status(args: argparse.Namespace) -> int:
    from nightcore.layout import Layout, find_root
    from nightcore.node.client import connect

    client = connect(Layout(find_root(args.workspace)).node_socket)
    if client is None:
        raise NightCoreError("no node is running for this workspace", code="NODE_NOT_RUNNING")
    status: dict[str, Any] = client.call("status", {})
    if args.json:
        print_json(status)
        return 0
    pool = status["pool"]
    print_table(
        "Night Core node",
        ["pid", "uptime s", "workers", "busy", "queued", "tenant cap", "replaced", "requests"],
        [
            [
                status["pid"],
                f"{status['uptime_s']:.0f}",
                f"{pool['alive']}/{pool['size']}",
                pool["busy"],
                pool["queued"],
                pool["tenant_cap"],
                pool["replaced"],
                status["requests"],
            ]
        ],
    )
    info(f"workspace {status['workspace']}")
    return 0


def register(add: Callable[..., argparse.ArgumentParser], sub: Any) -> None:
    sp = add("node", cmd_node)
    sp.add_argument(
        "node_cmd",
        nargs="?",
        choices=["serve", "status"],
        default="serve",
        help="serve (default): run the node agent in the foreground until SIGTERM/SIGINT; "
        "status: ask a running node how it is doing",
    )
    sp.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: one per core)",
    )
    sp.add_argument(
        "--http",
        metavar="[HOST:]PORT",
        help="also serve the live console (loopback only) from this process; its runs use the "
        "node's workers (port 0: any free port, printed in the log)",
    )
    sp.add_argument(
        "--tenant-cap",
        type=int,
        default=None,
        help="most workers one tenant may hold at once (default: all but one)",
    )
    add_mesh_options(sp, required=False)
    sp.add_argument(
        "--mesh-admit-timeout",
        metavar="S",
        type=float,
        default=None,
        help="how long a run waits for the node to catch up with the mesh's trust changes "
        "before it is refused with MESH_NOT_CAUGHT_UP (default 60)",
    )
