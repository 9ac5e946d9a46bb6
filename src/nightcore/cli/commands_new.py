"""CLI commands for writing a tenant: ``new`` (scaffold a directory) and ``build``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nightcore.cli.render import info, print_json


def cmd_new(args: argparse.Namespace) -> int:
    from nightcore.app.tenant import scaffold_tenant

    res = scaffold_tenant(
        args.tenant, lang=args.lang, directory=Path(args.dir) if args.dir else None
    )
    if args.json:
        print_json(res.to_dict())
    else:
        info(f"created {res.directory}: " + ", ".join(f.name for f in res.files))
        info(f"next: nightcore build {res.directory}  (then sign it; see {res.files[-1]})")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from nightcore.app.tenant import build_tenant

    res = build_tenant(Path(args.dir))
    if args.json:
        print_json(res.to_dict())
    else:
        # sha256sum format: `sha256sum -c` can check it.
        sys.stdout.write(f"{res.sha256}  {res.wasm}\n")
        info(f"built {res.wasm} ({res.size:,} bytes) from {res.source.name}")
    return 0


def register(add: Callable[..., argparse.ArgumentParser], sub: Any) -> None:
    sp = add("new", cmd_new)
    sp.add_argument("tenant", help="the tenant id: [a-z0-9][a-z0-9._-]{0,62}")
    sp.add_argument(
        "--lang",
        choices=["wat", "c"],
        default="wat",
        help="the source language: wat (module.wat, default) or c (main.c, built with ziglang)",
    )
    sp.add_argument(
        "--dir",
        help="the new directory (default: ./TENANT; its name must be the tenant id)",
    )

    sp = add("build", cmd_build)
    sp.add_argument(
        "dir", help="tenant directory with module.wat or main.c; writes module.wasm there"
    )
