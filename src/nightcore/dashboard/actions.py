"""The live console's write actions: the only place where the console changes the workspace.

Cordon, uncordon, sign a checkpoint and run tenants, each with plain data in (tenant ids, a
reason, the actor ``token:<id>``) and plain JSON data out, raising
:class:`~nightcore.errors.NightCoreError` with a stable code on refusal. The HTTP layer
(:mod:`nightcore.dashboard.routes`) authenticates, parses and maps errors to statuses; every
action goes through the application facade (:mod:`nightcore.app`), as the CLI's do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from nightcore.context import NodeContext
from nightcore.errors import NightCoreError


class ConsoleActions:
    """The console's actions on one workspace, with one warm runner for its lifetime.

    The runner is created on the first run and used under a lock: engines, compiled modules,
    memoized verifications and the run index stay warm, so a service that runs tenants through
    ``POST /api/run`` pays no cold start per run. A second run while one is in progress is
    refused (``BUSY``) rather than queued.
    """

    def __init__(
        self, ws: NodeContext, *, run: Callable[[list[str]], dict[str, Any]] | None = None
    ) -> None:
        """``run``: the host's way to run selected tenants (the node agent passes its own, so
        the console's runs go to its worker pool); by default a warm runner of the console's."""
        self.ws = ws
        self.warm_runners: list[Any] = []
        self._host_run = run
        self._run_lock = threading.Lock()

    def cordon(self, tenant: str, reason: str, actor: str) -> dict[str, Any]:
        """Cordon ``tenant``; the cordon entry (reason, since, ...) as plain data."""
        from nightcore import app

        entry = app.cordon(self.ws, tenant, reason, actor=actor)
        return {k: v for k, v in entry.items() if k not in ("tenant", "cordoned")}

    def uncordon(self, tenant: str, reason: str, actor: str) -> None:
        from nightcore import app

        app.uncordon(self.ws, tenant, reason, actor=actor)

    def checkpoint(self, reason: str) -> dict[str, Any]:
        """Sign a checkpoint of the audit log now; the checkpoint as plain data."""
        from nightcore.app import audit

        cp, _path = audit.checkpoint(self.ws, reason)
        return dict(cp.to_dict())

    def run(self, tenants: list[str] | None, actor: str) -> dict[str, Any]:
        """Run ``tenants`` (all if None) after a ``console_action`` event names the actor."""
        if not self._run_lock.acquire(blocking=False):
            raise NightCoreError("a run started from the console is still in progress", code="BUSY")
        try:
            from nightcore import app
            from nightcore.runner.pipeline import Runner

            names = app.select_tenants(self.ws, tenants or None)
            self.ws.audit().append(
                "console_action", {"action": "run", "actor": actor, "tenants": tenants or []}
            )
            if self._host_run is not None:
                done = self._host_run(names)
                return {
                    "ok": bool(done["runs"]) and all(r["code"] == "OK" for r in done["runs"]),
                    "runs": done["runs"],
                    "checkpoint": done.get("checkpoint"),
                }
            if not self.warm_runners:
                self.warm_runners.append(Runner(self.ws))
            report = app.run(self.ws, names, selected=True, runner=self.warm_runners[0])
            return {
                "ok": report.ok,
                "runs": [r.to_dict() for r in report.runs],
                "checkpoint": getattr(report, "checkpoint", None),
            }
        finally:
            self._run_lock.release()

    def close(self) -> None:
        """Release the warm runner (the server calls this once it has stopped)."""
        with self._run_lock:
            while self.warm_runners:
                self.warm_runners.pop().close()
