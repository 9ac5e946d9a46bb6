"""The kill switch: runs in flight stop when the trust state turns against them.

``cordon``, ``revoke key``, ``revoke module`` (and ``trust remove``, a revocation list imported
from elsewhere) stop admitting the affected tenants at once — admission reads the same files —
and, through this module, interrupt their runs already in flight: ``CORDONED_IN_FLIGHT`` or
``REVOKED_IN_FLIGHT`` is the run's audited outcome code, and its ``run_outcome`` line names the
change (``interrupted_by``). Neighbours in the same batch are not touched.

The trigger is the durable trust state every path writes (the CLI in another terminal, the node,
a mesh broadcast applied in the node process): ``state/cordons.json``, the key registry, the
revocation list and its version mark. While at least one run is watched, one daemon thread per
:class:`KillSwitch` ``stat()``\\ s those four files every ``POLL_S``; only when one of them
changed does it parse them (the registry and the signed revocation list through the context's
caches) and re-evaluate every watched run — set lookups, no per-run parsing. When no run is in
flight the thread sleeps on a condition and costs nothing. A process that applies a change
itself (the node) does not wait for the poll: :func:`nightcore.runner.trustwatch.trust_changed`
wakes this process's switches at once and calls the listeners the node registered (it nudges
its worker processes).

A run is interrupted exactly when admission would now refuse it for a trust reason: its tenant
cordoned, its signing key revoked or no longer in the registry, its module digest revoked — or
the trust state no longer loads (fail closed: admission would refuse every run).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nightcore.errors import NightCoreError
from nightcore.runner import trustwatch
from nightcore.sandbox.types import Interrupt

if TYPE_CHECKING:
    from nightcore.context import NodeContext

POLL_S = 0.01  # how often the four trust files are stat()ed while a run is in flight
CORDONED_IN_FLIGHT = "CORDONED_IN_FLIGHT"
REVOKED_IN_FLIGHT = "REVOKED_IN_FLIGHT"
MAX_REASON = 300

Signature = tuple[tuple[int, int, int, int] | None, ...]


@dataclass(frozen=True)
class _State:
    """What the trust files say, reduced to the lookups a run's evaluation needs."""

    cordons: dict[str, dict[str, str]]
    revoked_keys: dict[str, str]  # key id -> reason
    revoked_modules: dict[str, str]  # module sha256 -> reason
    registry_keys: frozenset[str]
    list_version: int
    error: tuple[str, str] | None = None  # (code, message): the state did not load


@dataclass(frozen=True)
class _Watched:
    tenant: str
    key_id: str
    module_sha256: str
    interrupt: Interrupt
    seq: int  # registration order: which states may judge it (see KillSwitch._judge)


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _clip(text: object) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= MAX_REASON else s[: MAX_REASON - 3] + "..."


class KillSwitch:
    """Watches one workspace's trust state for the runs of one process (one per Runner)."""

    def __init__(self, ctx: NodeContext, *, poll_s: float = POLL_S) -> None:
        layout = ctx.layout
        self.ctx = ctx
        self.root = layout.root
        self._paths = (
            layout.cordons_path,
            layout.registry_path,
            layout.revocations_path,
            layout.revocation_mark_path,
        )
        self._poll_s = poll_s
        self._cond = threading.Condition()
        self._runs: dict[int, _Watched] = {}  # id(interrupt) -> run
        self._seq = 0  # runs registered so far
        self._check_lock = threading.Lock()
        self._signature: Signature | None = None
        self._state: _State | None = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.reloads = 0  # times the trust files were parsed (tests, benchmarks)
        trustwatch.register_switch(self)

    # -- runs --------------------------------------------------------------------------
    def watch(self, tenant: str, key_id: str, module_sha256: str) -> Interrupt:
        """Register a run about to start; its interrupt (already tripped if the trust state
        changed against it since admission)."""
        with self._cond:
            self._seq += 1
            watched = _Watched(tenant, key_id, module_sha256.lower(), Interrupt(), self._seq)
            self._runs[id(watched.interrupt)] = watched
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._loop, name="nightcore-killswitch", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        try:
            self._judge(watched)
        except BaseException:
            self.release(watched.interrupt)
            raise
        return watched.interrupt

    def release(self, interrupt: Interrupt) -> None:
        """The run ended: stop watching it."""
        with self._cond:
            self._runs.pop(id(interrupt), None)

    @property
    def watched(self) -> int:
        with self._cond:
            return len(self._runs)

    # -- triggers ----------------------------------------------------------------------
    def check_now(self) -> None:
        """Re-read the trust files now instead of at the next poll (a change was just made)."""
        self._wake.set()

    def watch_fd(self, fd: int) -> None:
        """Call :meth:`check_now` whenever a byte arrives on ``fd`` (a node worker's nudge
        pipe); the thread ends with the pipe."""

        def read() -> None:
            while True:
                try:
                    data = os.read(fd, 64)
                except InterruptedError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                self.check_now()

        threading.Thread(target=read, name="nightcore-killswitch-nudge", daemon=True).start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._wake.set()
        trustwatch.unregister_switch(self)

    # -- the watcher -------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._runs and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            if self._wake.wait(self._poll_s):
                self._wake.clear()
            try:
                self._judge(None)
            except Exception as exc:  # noqa: BLE001 - fail closed, and keep watching
                failed = _State({}, {}, {}, frozenset(), 0, ("HOST_ERROR", type(exc).__name__))
                with self._cond:
                    runs = list(self._runs.values())
                for watched in runs:
                    self._evaluate(watched, failed)

    def _judge(self, own: _Watched | None) -> None:
        """stat() the trust files; parse them again only when one changed identity (inode,
        size, mtime, ctime) since the last parse, and then judge every run registered before
        the stat by the new state. With nothing changed, judge only ``own`` (a run registering
        now) by the state held, which is then the files' current content.

        Why "registered before the stat": a run is admitted before it registers, so a state
        read after its registration is never older than its admission (no run is stopped on
        a stale view, e.g. just after an uncordon); and a run registering after the stat is
        judged by its own call, which comes after this one (the lock) and sees this state or
        a newer one (no run is missed)."""
        with self._check_lock:
            with self._cond:
                horizon = self._seq
                idle = own is None and not self._runs
            if idle:
                return  # nothing to judge: parse lazily, when the next run registers
            signature = tuple(_identity(p) for p in self._paths)
            if signature == self._signature and self._state is not None:
                if own is not None:
                    self._evaluate(own, self._state)
                return
            # stat() before reading: a change after the stat is seen at the next call.
            state = self._state = self._load()
            self._signature = signature
            self.reloads += 1
            with self._cond:
                runs = [w for w in self._runs.values() if w.seq <= horizon]
            for watched in runs:
                self._evaluate(watched, state)

    def _load(self) -> _State:
        from nightcore.runner.cordon import load_cordons

        ctx = self.ctx
        try:
            cordons = load_cordons(ctx.layout)
            registry = ctx.load_registry()
            rl = ctx.load_revocations(registry)
        except NightCoreError as exc:
            return _State({}, {}, {}, frozenset(), 0, (exc.code, exc.message))
        except OSError as exc:
            return _State({}, {}, {}, frozenset(), 0, ("IO_ERROR", str(exc)))
        except Exception as exc:  # noqa: BLE001 - fail closed: every watched run is stopped
            return _State({}, {}, {}, frozenset(), 0, ("HOST_ERROR", f"{type(exc).__name__}"))
        return _State(
            cordons=cordons,
            revoked_keys={r.subject: r.reason for r in rl.keys},
            revoked_modules={r.subject: r.reason for r in rl.modules},
            registry_keys=frozenset(str(k.key_id) for k in registry.keys),
            list_version=rl.version,
        )

    @staticmethod
    def _evaluate(w: _Watched, state: _State) -> None:
        if w.interrupt.code:
            return
        if state.error is not None:
            code, message = state.error
            w.interrupt.trip(
                REVOKED_IN_FLIGHT,
                _clip(f"trust state no longer loads ({code}: {message}): run stopped"),
                {"change": "trust_state_invalid", "code": code, "reason": _clip(message)},
            )
        elif w.tenant in state.cordons:
            entry = state.cordons[w.tenant]
            reason = _clip(entry.get("reason", ""))
            w.interrupt.trip(
                CORDONED_IN_FLIGHT,
                _clip(f"tenant cordoned while running: {reason}"),
                {"change": "cordon", "reason": reason, "cordoned_at": str(entry.get("ts", ""))},
            )
        elif w.key_id in state.revoked_keys:
            reason = _clip(state.revoked_keys[w.key_id])
            w.interrupt.trip(
                REVOKED_IN_FLIGHT,
                _clip(f"signing key {w.key_id[:16]} revoked while running: {reason}"),
                {
                    "change": "key_revoked",
                    "key_id": w.key_id,
                    "reason": reason,
                    "list_version": state.list_version,
                },
            )
        elif w.module_sha256 in state.revoked_modules:
            reason = _clip(state.revoked_modules[w.module_sha256])
            w.interrupt.trip(
                REVOKED_IN_FLIGHT,
                _clip(f"module {w.module_sha256[:16]} revoked while running: {reason}"),
                {
                    "change": "module_revoked",
                    "module_sha256": w.module_sha256,
                    "reason": reason,
                    "list_version": state.list_version,
                },
            )
        elif w.key_id and w.key_id not in state.registry_keys:
            w.interrupt.trip(
                REVOKED_IN_FLIGHT,
                f"signing key {w.key_id[:16]} removed from the trust registry while running",
                {"change": "key_removed", "key_id": w.key_id},
            )
