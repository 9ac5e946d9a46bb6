"""What every CLI command shares: opening the workspace the user pointed at."""

from __future__ import annotations

import argparse

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (nightcore --help)
if TYPE_CHECKING:
    from nightcore.context import NodeContext
    from nightcore.node.client import NodeClient


def open_workspace(args: argparse.Namespace) -> NodeContext:
    """``-w`` beats ``NIGHTCORE_HOME`` beats the nearest of the current directory and its
    parents holding ``nightcore.toml`` (:func:`nightcore.layout.find_root`); ``--fips`` only
    tightens."""
    from nightcore.context import NodeContext

    return NodeContext.open(args.workspace, fips=True if args.fips else None)


def node_client(args: argparse.Namespace) -> NodeClient | None:
    """A client of the node serving this workspace, or None to work in-process: with
    ``--local``, with ``--fips`` (a node keeps the policy it was started with), or when no node
    is running. Imports neither wasmtime nor cryptography (docs/node.md)."""
    if getattr(args, "local", False) or getattr(args, "fips", False):
        return None
    from nightcore.node.client import connect
    from nightcore.node.protocol import socket_path

    return connect(socket_path(args.workspace))
