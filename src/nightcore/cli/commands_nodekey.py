"""CLI commands of the node-key lifecycle: ``nightcore node-key list|rotate|revoke``
(docs/keys.md). Each parses, calls one :mod:`nightcore.app.nodekey` function and renders."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nightcore.cli.context import open_workspace as _ws
from nightcore.cli.render import info, print_json, print_table


def cmd_list(args: argparse.Namespace) -> int:
    from nightcore.app.nodekey import node_key_history

    res = node_key_history(_ws(args))
    if args.json:
        print_json(res)
        return 0
    rows = []
    for k in res["keys"]:
        end = "" if k["to_size"] is None else str(k["to_size"])
        revoked = k["revoked"]
        state = "active" if k["active"] else "retired"
        if revoked is not None:
            state = f"REVOKED after size {revoked['last_trusted_size']}"
        rows.append([k["key_id"][:16], f"{k['from_size']}..{end}", state])
    print_table(f"Node keys of log {res['origin']}", ["key id", "checkpoint sizes", "state"], rows)
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    from nightcore.app.nodekey import node_key_rotate

    res = node_key_rotate(
        _ws(args),
        to_key=args.to_key,
        to_public=Path(args.to_public) if args.to_public else None,
    )
    if args.json:
        print_json(res)
        return 0
    info(
        f"node key rotated: {res['old_key_id'][:16]} -> {res['new_key_id'][:16]} "
        f"({res['scheme']}); the old key signed checkpoints up to size "
        f"{res['old_key_last_checkpoint']}, the new key from there on "
        f"(first: {res['new_key_first_checkpoint']})"
    )
    info(f"key history: {res['history']} (give it to verifiers with --key-history)")
    if res["retired_key_file"]:
        info(f"old private key kept as {res['retired_key_file']} (shred it when unneeded)")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from nightcore.app.nodekey import node_key_revoke

    res = node_key_revoke(_ws(args), args.key_id, args.last_trusted_size)
    if args.json:
        print_json(res)
        return 0
    info(
        f"node key {res['key_id'][:16]} revoked: its checkpoints above size "
        f"{res['last_trusted_size']} are refused; {len(res['checkpoints_set_aside'])} stored "
        f"checkpoint(s) set aside; the active key signed checkpoint {res['checkpoint']}"
    )
    return 0


def _size(text: str) -> int:
    if not text.isdigit() or len(text) > 20:
        raise argparse.ArgumentTypeError("a log size is a non-negative integer")
    return int(text)


def register(add: Callable[..., argparse.ArgumentParser], sub: Any) -> None:
    from nightcore.cli.main import _need_sub
    from nightcore.cli.main import _Parser as Parser

    nk = add("node-key", _need_sub)
    nsub = nk.add_subparsers(dest="node_key_cmd", metavar="ACTION", parser_class=Parser)
    add("list", cmd_list, "the node keys of this log and the checkpoint sizes each signs", nsub)
    sp = add(
        "rotate",
        cmd_rotate,
        "replace the node key; the old key signs the transition into the audit log",
        nsub,
    )
    sp.add_argument(
        "--to-key",
        metavar="URI",
        help="rotate to an existing signer (securesystemslib URI: KMS, HSM) instead of "
        "generating a local key",
    )
    sp.add_argument(
        "--to-public", metavar="PEM", help="the public key of --to-key (SubjectPublicKeyInfo)"
    )
    sp = add(
        "revoke",
        cmd_revoke,
        "revoke a retired (compromised) node key after the last log size it is trusted for",
        nsub,
    )
    sp.add_argument("key_id", metavar="KEYID", help="the node key id (or its first 8+ hex)")
    sp.add_argument(
        "--last-trusted-size",
        type=_size,
        required=True,
        metavar="N",
        help="checkpoints this key signed above size N are refused from now on",
    )
