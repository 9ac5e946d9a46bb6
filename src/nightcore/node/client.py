"""The thin client of a running node: one request over its Unix socket, replies as plain data.

Imports nothing heavy (no wasmtime, no cryptography, not the facade): a CLI command that a node
serves pays for a Python start, argparse, this module and a socket round trip.
"""

from __future__ import annotations

import errno
import os
import socket

from nightcore.errors import NightCoreError
from nightcore.node import protocol

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (cold CLI)
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

CONNECT_TIMEOUT_S = 5.0
# A request may run tenants for a long time; the node answers when their outcomes are durable.
REPLY_TIMEOUT_S = 3600.0


class NodeClient:
    """A connection to the node serving one workspace (one request per connection)."""

    def __init__(self, sock: socket.socket, path: str | Path) -> None:
        self._sock = sock
        self.path = path

    def close(self) -> None:
        self._sock.close()

    def call(
        self,
        op: str,
        args: dict[str, Any],
        progress: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> Any:
        """Send one request; return its result or raise the node's NightCoreError."""
        try:
            self._sock.settimeout(REPLY_TIMEOUT_S)
            self._sock.sendall(protocol.request(op, args))
            reader = self._sock.makefile("rb")
            while True:
                line = reader.readline(protocol.MAX_REPLY_LINE_BYTES + 1)
                if not line:
                    raise NightCoreError(
                        "the node closed the connection before answering (it may have "
                        "stopped; its audit log records what it did)",
                        code="NODE_DISCONNECTED",
                    )
                if len(line) > protocol.MAX_REPLY_LINE_BYTES:
                    raise NightCoreError("the node's reply is too large", code="NODE_REPLY_INVALID")
                try:
                    msg = protocol.loads(line)
                except protocol.ProtocolError as exc:
                    raise NightCoreError(
                        f"the node's reply is malformed: {exc}", code="NODE_REPLY_INVALID"
                    ) from None
                if "event" in msg:
                    if progress is not None and isinstance(msg.get("data"), dict):
                        progress(str(msg["event"]), msg["data"])
                    continue
                if msg.get("ok") is True:
                    return msg.get("result")
                err = msg.get("error")
                if isinstance(err, dict):
                    raise NightCoreError(
                        str(err.get("message", "")), code=str(err.get("code", "NODE_ERROR"))
                    )
                raise NightCoreError("the node's reply is malformed", code="NODE_REPLY_INVALID")
        except OSError as exc:
            raise NightCoreError(
                f"lost the node at {self.path}: {exc.strerror or exc}", code="NODE_DISCONNECTED"
            ) from None
        finally:
            self.close()


def connect(path: str | Path) -> NodeClient | None:
    """A client of the node listening at ``path``, or None when no node runs there (no socket,
    or a socket left by a node that is gone): the caller then works in-process."""
    if not os.path.exists(path):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return None  # a stale socket: no node is listening
        raise NightCoreError(
            f"cannot reach the node at {path}: {exc.strerror or exc} "
            "(use --local to work without it)",
            code="NODE_UNREACHABLE",
        ) from None
    return NodeClient(sock, path)
