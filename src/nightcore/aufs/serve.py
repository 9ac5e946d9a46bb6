"""``aufs repo serve``: a loopback-only static HTTP server for development and tests.

It serves ``<repo>/public`` (metadata and targets) and nothing else: no directory listings,
no private keys, no staged metadata. Clients never trust the transport (TUF verifies every
byte), so production can use any static web server or object store instead.
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from typing import Any

from nightcore.aufs.errors import AufsError

LOOPBACK = "127.0.0.1"


class _Handler(http.server.SimpleHTTPRequestHandler):
    def list_directory(self, path: Any) -> None:
        self.send_error(404, "not found")

    def log_message(self, format: str, *args: Any) -> None:
        return


def make_server(public_dir: Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    if not public_dir.is_dir():
        raise AufsError(f"{public_dir} does not exist", code="AUFS_REPO_NOT_FOUND")
    handler = functools.partial(_Handler, directory=str(public_dir))
    server = http.server.ThreadingHTTPServer((LOOPBACK, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(public_dir: Path, port: int = 0) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Start a server on a free loopback port; returns it and its base URL."""
    server = make_server(public_dir, port)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, f"http://{LOOPBACK}:{server.server_address[1]}/"
