"""Real ``nightcore node --mesh`` processes and workspaces for the mesh tests.

Each node has a workspace of its own trusting the same publisher (alice) and maintainer
(maint) keys, with tenant ``hello`` signed by alice. Readiness is a log line (the node prints
"caught up with the trust stream" once it admits runs) or a condition polled with a deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nightcore import app
from nightcore.node.client import connect
from nightcore.trust.keys import GeneratedKey
from tests.conftest import HELLO_WAT, simple_manifest, wat_module, write_tenant

START_TIMEOUT_S = 120.0
WAIT_S = 90.0
CAUGHT_UP = "caught up with the trust stream"


def make_workspace(
    root: Path, keys: dict[str, GeneratedKey], tenants: tuple[str, ...] = ("hello",)
) -> Path:
    ctx = app.init_workspace(root)
    app.trust_add_key(ctx, keys["alice"].public_path, scope="*")
    app.trust_add_key(ctx, keys["maint"].public_path, scope="*", role="maintainer")
    for t in tenants:
        d = write_tenant(root, t, simple_manifest(t), wat_module(HELLO_WAT))
        app.sign_tenant(d, str(keys["alice"].private_path))
    return ctx.root


class MeshNode:
    """``nightcore -w WS node --mesh URLS --node-name NAME`` in its own process."""

    def __init__(self, ws: Path, servers: str, name: str, *, extra: tuple[str, ...] = ()) -> None:
        self.ws = ws
        self.name = name
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *("-m", "nightcore", "-w", str(ws), "node", "--workers", "1"),
                *("--mesh", servers, "--node-name", name),
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        self.log: list[str] = []
        self.await_line("serving ")

    def await_line(self, needle: str, timeout_s: float = START_TIMEOUT_S) -> str:
        """The next log line containing ``needle`` (lines already read are not searched)."""
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"node {self.name} exited early: {''.join(self.log)}")
            self.log.append(line)
            if needle in line:
                return line
        raise AssertionError(f"node {self.name} never printed {needle!r}: {''.join(self.log)}")

    def seen(self, needle: str) -> bool:
        return any(needle in line for line in self.log)

    def wait_caught_up(self) -> None:
        if not self.seen(CAUGHT_UP):
            self.await_line(CAUGHT_UP)

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        client = connect(self.ws / "state" / "node.sock")
        assert client is not None, f"node {self.name} is not listening"
        return client.call(op, args or {})

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("status")
        return result

    def run_codes(self, *tenants: str) -> list[str]:
        report = self.call("run", {"tenants": list(tenants)})
        return [str(r["code"]) for r in report["runs"]]

    def audit(self) -> list[dict[str, Any]]:
        return audit_lines(self.ws)

    def wait_audit(
        self, pred: Callable[[dict[str, Any]], bool], count: int = 1, what: str = ""
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` audit lines satisfy ``pred``; those lines."""
        deadline = time.monotonic() + WAIT_S
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            found = [r for r in self.audit() if pred(r)]
            if len(found) >= count:
                return found
            time.sleep(0.02)  # polling a condition with a deadline
        raise AssertionError(f"node {self.name}: {what or 'audit lines'} never appeared: {found}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        assert self.proc.stderr is not None
        self.log.append(self.proc.stderr.read())
        return self.proc.wait(timeout=START_TIMEOUT_S)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=60)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def audit_lines(ws: Path) -> list[dict[str, Any]]:
    text = (ws / "state" / "audit" / "audit.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def mesh_events(ws: Path, event: str) -> list[dict[str, Any]]:
    return [r for r in audit_lines(ws) if r["event"] == event]
