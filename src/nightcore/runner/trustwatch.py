"""Who must hear, in this process, that a workspace's trust state was just changed here.

The operations that write the trust state (cordon, revoke, a revocation list imported, a key
removed) call :func:`trust_changed` after the write; the kill switches of this process
(:mod:`nightcore.runner.killswitch`) re-check their in-flight runs at once, and the listeners
(a node nudges its worker processes) are called. A change made by another process is seen by
the kill switches' poll instead. Kept apart from the kill switch so that the writers need not
import it (it reads the cordons through :mod:`nightcore.runner.cordon`).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Protocol


class Switch(Protocol):
    root: Path

    def check_now(self) -> None: ...


_SWITCHES: weakref.WeakSet[Switch] = weakref.WeakSet()
_LISTENERS: list[Callable[[Path], None]] = []
_LOCK = threading.Lock()


def register_switch(switch: Switch) -> None:
    """Wake ``switch`` on every change to its workspace (held weakly)."""
    with _LOCK:
        _SWITCHES.add(switch)


def unregister_switch(switch: Switch) -> None:
    with _LOCK:
        _SWITCHES.discard(switch)


def add_listener(listener: Callable[[Path], None]) -> Callable[[], None]:
    """Call ``listener(root)`` on every :func:`trust_changed` of this process; its remover."""
    with _LOCK:
        _LISTENERS.append(listener)

    def remove() -> None:
        with _LOCK, contextlib.suppress(ValueError):
            _LISTENERS.remove(listener)

    return remove


def trust_changed(root: Path) -> None:
    """The trust state of workspace ``root`` was just written by this process."""
    with _LOCK:
        switches = [s for s in _SWITCHES if s.root == root]
        listeners = list(_LISTENERS)
    for switch in switches:
        switch.check_now()
    for listener in listeners:
        listener(root)
