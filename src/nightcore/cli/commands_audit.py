"""CLI commands of the audit layer: ``nightcore audit ...``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from nightcore.cli.render import info, print_json


def _ws(args: argparse.Namespace) -> Any:
    from nightcore.workspace import Workspace

    return Workspace.open(args.workspace, fips=True if args.fips else None)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from nightcore.audit.log import verify_chain

    ws = _ws(args)
    report = verify_chain(ws.audit().iter_lines())
    out = {"ok": True, "entries": report.entries, "head": report.head}
    if args.json:
        print_json(out)
    else:
        info(f"audit log OK: {report.entries} entries, head {report.head}")
    return 0


def register(add: Callable[..., argparse.ArgumentParser], sub: Any) -> None:
    from nightcore.cli.main import _need_sub
    from nightcore.cli.main import _Parser as Parser

    audit = add("audit", _need_sub, "inspect and verify the audit log")
    asub = audit.add_subparsers(dest="audit_cmd", metavar="ACTION", parser_class=Parser)
    add("verify", cmd_audit_verify, "verify the audit log's hash chain", asub)
