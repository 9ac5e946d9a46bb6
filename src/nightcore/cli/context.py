"""What every CLI command shares: opening the workspace the user pointed at."""

from __future__ import annotations

import argparse

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (nightcore --help)
if TYPE_CHECKING:
    from nightcore.workspace import Workspace


def open_workspace(args: argparse.Namespace) -> Workspace:
    """``-w`` beats ``NIGHTCORE_HOME`` beats the current directory; ``--fips`` only tightens."""
    from nightcore.workspace import Workspace

    return Workspace.open(args.workspace, fips=True if args.fips else None)
