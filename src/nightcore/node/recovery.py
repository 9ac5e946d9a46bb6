"""Closing runs a dead node left open.

A node killed with SIGKILL (or a power cut) can leave ``run_start`` lines without their
``run_outcome``: runs that may or may not have executed and whose result was never reported.
Before a node admits new work it gives each of them a closing ``run_outcome`` with the code
``INTERRUPTED`` (docs/node.md), so the log says plainly what happened to every run it started.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nightcore.audit.log import AuditLog, Event

INTERRUPTED_DETAIL = "the node stopped before this run's outcome was recorded"


def open_runs(lines: Iterable[bytes]) -> dict[str, dict[str, Any]]:
    """``run_id -> {tenant, module_sha256, seq}`` of every ``run_start`` without an outcome."""
    starts, outcomes = runs_since(lines)
    return {rid: info for rid, info in starts.items() if rid not in outcomes}


def runs_since(
    lines: Iterable[bytes],
) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[str, int]]]:
    """The ``run_start`` lines (``run_id -> {tenant, module_sha256, seq}``) and ``run_outcome``
    lines (``run_id -> (code, seq)``) among ``lines``."""
    started: dict[str, dict[str, Any]] = {}
    outcomes: dict[str, tuple[str, int]] = {}
    for raw in lines:
        # Cheap filter first: most lines are neither event.
        if b'"run_start"' not in raw and b'"run_outcome"' not in raw:
            continue
        rec = json.loads(raw)
        data = rec.get("data") or {}
        run_id = data.get("run_id")
        if not isinstance(run_id, str):
            continue
        if rec.get("event") == "run_start":
            started[run_id] = {
                "tenant": rec.get("tenant"),
                "module_sha256": data.get("module_sha256", ""),
                "seq": rec.get("seq"),
            }
        elif rec.get("event") == "run_outcome":
            outcomes[run_id] = (str(data.get("code")), int(rec.get("seq", -1)))
    return started, outcomes


def interrupted_events(
    open_: dict[str, dict[str, Any]],
    *,
    code: str = "INTERRUPTED",
    detail: str = INTERRUPTED_DETAIL,
) -> list[Event]:
    """The closing ``run_outcome`` of each open run (nothing about it is known but its start):
    ``INTERRUPTED`` after a node died, ``WORKER_CRASHED``/``TIMEOUT`` after a worker did."""
    from nightcore.audit.log import Event

    return [
        Event(
            "run_outcome",
            {
                "run_id": run_id,
                "code": code,
                "detail": detail,
                "exit_code": None,
                "fuel_used": None,  # unknown: the run's own accounting died with its process
                "wall_us": 0,
                "memory_bytes": 0,
                "output_bytes": 0,
                "output_truncated": False,
                "stdout_sha256": None,
                "stderr_sha256": None,
                "key_id": "",
                "module_sha256": info["module_sha256"],
                "run_start_seq": info["seq"],
            },
            info["tenant"],
        )
        for run_id, info in open_.items()
    ]


def close_interrupted(audit: AuditLog) -> list[str]:
    """Append an ``INTERRUPTED`` outcome for every open run; the run ids closed."""
    pending = open_runs(audit.iter_lines())
    if pending:
        audit.append_many(interrupted_events(pending))
    return list(pending)


def discard_live_output(live_dir: Path, run_ids: Iterable[str] | None = None) -> None:
    """Remove the live output of runs that ended without their own output files (closed as
    ``INTERRUPTED``/``WORKER_CRASHED``), so ``logs --follow`` stops; ``None``: every live
    file (a node starting: no run of this workspace is in flight). One flat directory, read
    without recursion; only regular files are removed."""
    import contextlib
    import os
    import stat

    if run_ids is not None:
        names = [f"{rid}.{stream}" for rid in run_ids for stream in ("stdout", "stderr")]
    else:
        try:
            with os.scandir(live_dir) as it:
                names = [e.name for e in it]
        except FileNotFoundError:
            return
    for name in names:
        path = live_dir / name
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(os.lstat(path).st_mode):
                path.unlink()
