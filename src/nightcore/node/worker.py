"""A node worker process: a warm runner of one workspace that runs the batches the node hands it.

Started by the node as ``python -I -m nightcore.node.worker --in FD --out FD`` — a new
interpreter, never a fork of the node (a fork after Wasmtime has compiled anything can hang:
``../shared/COMPONENTS.md``). Its first frame names the workspace; from then on each ``batch``
frame carries tenant names and the run id the node assigned to each.

The worker does the whole per-run job in its own process, in parallel with the other workers:
it reads and verifies each package itself (the bytes it verified are the bytes it compiles,
invariant 1), admits, runs, and records — ``admit``/``run_start`` durable before the run,
``run_outcome`` durable before it is reported (group commit within the batch), the signed
attestation, the index row. The audit log is one hash chain across the node's processes: every
append takes the log's ``flock`` and builds its lines from the real last line. The node signs
the checkpoint once the request's batches are done.

Replies: a ``progress`` frame per finished run, then one ``result`` frame with every run of the
batch as plain data. The worker ends on end of input, with ``os._exit`` (a normal interpreter
exit can race Wasmtime's threads).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path
from typing import Any

MAX_FRAME_JSON = 4 * 1024 * 1024


def encode_run(run: dict[str, Any]) -> dict[str, Any]:
    """A run's plain data for the frame format, which carries no floats: ``wall_ms`` travels
    as integer microseconds (``wall_us``), as in the audit log."""
    out = dict(run)
    wall_ms = out.pop("wall_ms", None)
    out["wall_us"] = None if wall_ms is None else round(float(wall_ms) * 1000)
    return out


def decode_run(run: dict[str, Any]) -> dict[str, Any]:
    out = dict(run)
    wall_us = out.pop("wall_us", None)
    out["wall_ms"] = wall_us / 1000 if isinstance(wall_us, int) else None
    return out


def _serve(in_fd: int, out_fd: int, nudge_fd: int | None = None) -> None:
    from nightcore.context import NodeContext
    from nightcore.errors import NightCoreError
    from nightcore.runner.pipeline import Runner, TenantRun
    from nightcore.sandbox import strongbox as sb

    header, _ = sb.read_frame(in_fd, max_json=64 * 1024, max_blob=0)
    if header.get("op") != "init" or not isinstance(header.get("workspace"), str):
        raise SystemExit(2)
    ctx = NodeContext(Path(header["workspace"]))
    runner = Runner(ctx)
    runner.sandbox()  # engines and ticker now, not on the first run
    if nudge_fd is not None:  # the node's "trust state changed": the kill switch re-checks now
        runner.killswitch().watch_fd(nudge_fd)
    sb.write_frame(out_fd, {"op": "ready", "pid": os.getpid()})
    while True:
        try:
            header, _ = sb.read_frame(in_fd, max_json=MAX_FRAME_JSON, max_blob=0)
        except sb.FrameError as exc:
            if exc.eof:
                return
            raise
        if header.get("op") != "batch":
            raise SystemExit(2)
        seq = header.get("seq")
        jobs: list[dict[str, Any]] = header.get("jobs") or []
        names = [str(j["tenant"]) for j in jobs]
        run_ids = {str(j["tenant"]): str(j["run_id"]) for j in jobs}

        def progress(tr: TenantRun, seq: Any = seq) -> None:
            sb.write_frame(out_fd, {"op": "progress", "seq": seq, "run": encode_run(tr.to_dict())})

        try:
            report = runner.run(
                names, parallel=1, progress=progress, checkpoint=None, run_ids=run_ids
            )
            reply: dict[str, Any] = {
                "op": "result",
                "seq": seq,
                "runs": [encode_run(r.to_dict()) for r in report.runs],
                "index_error": list(report.index_error) if report.index_error else None,
            }
        except NightCoreError as exc:
            reply = {"op": "result", "seq": seq, "error": [exc.code, exc.message]}
        sb.write_frame(out_fd, reply)


def _watch_lifeline(fd: int) -> None:
    """End this process the moment the node is gone (the lifeline's write end closes with it):
    a worker must not go on recording runs the restarted node has closed as INTERRUPTED."""

    def watch() -> None:
        while True:
            try:
                if not os.read(fd, 1):
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        os._exit(70)

    threading.Thread(target=watch, name="nightcore-lifeline", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="nightcore.node.worker")
    p.add_argument("--in", dest="in_fd", type=int, required=True)
    p.add_argument("--out", dest="out_fd", type=int, required=True)
    p.add_argument("--lifeline", type=int, required=True)
    p.add_argument("--nudge", type=int, default=None)
    args = p.parse_args(argv)
    _watch_lifeline(args.lifeline)
    code = 0
    try:
        _serve(args.in_fd, args.out_fd, args.nudge)
    except SystemExit as exc:
        code = int(exc.code or 0)
    except BaseException as exc:  # noqa: BLE001 - the node sees the exit status; say why once
        print(f"nightcore worker {os.getpid()}: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
