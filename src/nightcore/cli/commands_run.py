"""CLI commands of the run path (run, cordon, runs, state). Registered by cli.main."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def register(add: Callable[..., Any], sub: Any) -> None:
    return None
