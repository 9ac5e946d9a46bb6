"""A node worker process: one warm in-process sandbox that runs verified modules on request.

Started by the node as ``python -I -m nightcore.node.worker --in FD --out FD`` — a new
interpreter, never a fork of the node (a fork after Wasmtime has compiled anything can hang:
``../shared/COMPONENTS.md``). The node sends an ``init`` frame first (the compiled-module cache
directory, its HMAC secret as the blob: never on the command line or in the environment), then
``run`` frames: a RunConfig as JSON and the verified module bytes as the blob. Each reply is the
sandbox's result (``nightcore.sandbox.strongbox.result_to_frame``) plus the sandbox events it
raised (``cache_rejected``), which the node audits. The frame format and its parsing on the
node's side are the strongbox's: the node treats a worker's reply as untrusted input.

The worker ends on end of input, and with ``os._exit`` (a normal interpreter exit can race
Wasmtime's threads).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

MAX_INIT_JSON = 64 * 1024
MAX_REQUEST_JSON = 4 * 1024 * 1024
MAX_MODULE_BYTES = 256 * 1024 * 1024


def _serve(in_fd: int, out_fd: int) -> None:
    from nightcore.errors import NightCoreError
    from nightcore.sandbox import strongbox as sb
    from nightcore.sandbox.engine import Sandbox
    from nightcore.sandbox.types import RunResult

    header, secret = sb.read_frame(in_fd, max_json=MAX_INIT_JSON, max_blob=1024)
    if header.get("op") != "init" or not isinstance(header.get("cache_dir"), str):
        raise SystemExit(2)
    events: list[dict[str, Any]] = []

    def on_event(name: str, fields: dict[str, object]) -> None:
        events.append({"event": name, "data": fields})

    cache_dir = header["cache_dir"]
    sandbox = Sandbox(Path(cache_dir) if cache_dir else None, secret, on_event=on_event)
    sb.write_frame(out_fd, {"op": "ready", "pid": os.getpid()})
    while True:
        try:
            header, blob = sb.read_frame(
                in_fd, max_json=MAX_REQUEST_JSON, max_blob=MAX_MODULE_BYTES
            )
        except sb.FrameError as exc:
            if exc.eof:
                return
            raise
        if header.get("op") != "run":
            raise SystemExit(2)
        seq = header.get("seq")
        try:
            config = sb.config_from_json(header.get("config"))
            result = sandbox.run(blob, config)
        except NightCoreError as exc:
            result = RunResult.refused(exc.code, exc.message)
        reply, out = sb.result_to_frame(result)
        reply["seq"] = seq
        reply["events"], events[:] = list(events), []
        sb.write_frame(out_fd, reply, out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="nightcore.node.worker")
    p.add_argument("--in", dest="in_fd", type=int, required=True)
    p.add_argument("--out", dest="out_fd", type=int, required=True)
    args = p.parse_args(argv)
    code = 0
    try:
        _serve(args.in_fd, args.out_fd)
    except SystemExit as exc:
        code = int(exc.code or 0)
    except BaseException as exc:  # noqa: BLE001 - the node sees the exit status; say why once
        print(f"nightcore worker {os.getpid()}: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
