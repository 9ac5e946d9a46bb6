"""CLI of Night Mesh: ``nightcore mesh status|revoke|cordon|uncordon|add-key|remove-key``
(and the work queue's commands). Each connects to the mesh given by ``--mesh`` (the same
options as ``nightcore node --mesh``); publishing commands sign with a maintainer key trusted
by the workspace (``-w``), exactly as the local ``revoke``/``cordon`` do."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from nightcore.cli.commands_node import add_mesh_options, mesh_config
from nightcore.cli.render import info, print_json, print_table
from nightcore.errors import UsageError


def _ws(args: argparse.Namespace) -> Any:
    from nightcore.cli.context import open_workspace

    return open_workspace(args)


def _published(args: argparse.Namespace, out: dict[str, Any], what: str) -> int:
    if args.json:
        print_json(out)
    else:
        info(
            f"published {what}: {out['kind']} version {out['version']} (trust stream sequence "
            f"{out['seq']}); every node verifies and applies it before its next run"
        )
    return 0


def cmd_mesh_revoke(args: argparse.Namespace) -> int:
    from nightcore.mesh.ops import publish_revocation

    out = publish_revocation(
        _ws(args),
        mesh_config(args),
        kind=args.kind,
        subject=args.subject,
        key=args.key,
        reason=args.reason,
    )
    return _published(args, out, f"revocation of {args.kind} {out['revoked']}")


def _cordon_target(args: argparse.Namespace) -> tuple[str, str]:
    if (args.tenant is None) == (args.node is None):
        raise UsageError("give a TENANT or --node NAME (one of them)")
    return ("node_", args.node) if args.node is not None else ("", args.tenant)


def cmd_mesh_cordon(args: argparse.Namespace) -> int:
    from nightcore.mesh.ops import publish_change

    prefix, target = _cordon_target(args)
    out = publish_change(
        _ws(args),
        mesh_config(args),
        op=f"{prefix}cordon",
        target=target,
        key=args.key,
        reason=args.reason,
    )
    return _published(args, out, f"cordon of {'node ' if prefix else ''}{target}")


def cmd_mesh_uncordon(args: argparse.Namespace) -> int:
    from nightcore.mesh.ops import publish_change

    prefix, target = _cordon_target(args)
    out = publish_change(
        _ws(args),
        mesh_config(args),
        op=f"{prefix}uncordon",
        target=target,
        key=args.key,
        reason=args.reason or "",
    )
    return _published(args, out, f"uncordon of {'node ' if prefix else ''}{target}")


def cmd_mesh_add_key(args: argparse.Namespace) -> int:
    from nightcore.cli.main import _parse_time
    from nightcore.mesh.ops import key_fields_from_pem, publish_change

    key_id, fields = key_fields_from_pem(
        args.pubkey,
        scope=args.scope,
        role=args.role,
        name=args.name,
        expires=_parse_time(args.expires) if args.expires else None,
    )
    out = publish_change(
        _ws(args), mesh_config(args), op="key_add", target=key_id, key=args.key, new_key=fields
    )
    return _published(args, out, f"trust of key {key_id[:16]} ({args.role}, {args.scope})")


def cmd_mesh_remove_key(args: argparse.Namespace) -> int:
    from nightcore.app import resolve_key_id
    from nightcore.mesh.ops import publish_change

    ctx = _ws(args)
    key_id = resolve_key_id(ctx, args.key_id)
    out = publish_change(ctx, mesh_config(args), op="key_remove", target=key_id, key=args.key)
    return _published(args, out, f"removal of key {key_id[:16]}")


def _age(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "-"


def cmd_mesh_status(args: argparse.Namespace) -> int:
    from nightcore.mesh.ops import status

    out = status(mesh_config(args))
    if args.json:
        print_json(out)
        return 0
    rows = []
    for n in out["nodes"]:
        trust = n.get("trust") or {}
        rows.append(
            [
                n["node"],
                "yes" if n["alive"] else ("stopped" if n.get("stopped") else "no"),
                "yes" if n.get("cordoned") else "no",
                "yes" if n.get("admitted") else "no",
                str(n.get("version", "-")),
                _age(n.get("heartbeat_age_s")),
                str(trust.get("revocations_version", "-")),
                str(trust.get("changes_version", "-")),
                str(trust.get("seq", "-")),
            ]
        )
    print_table(
        "Night Mesh nodes",
        [
            "node",
            "alive",
            "cordoned",
            "caught up",
            "version",
            "heartbeat age s",
            "revocations v",
            "changes v",
            "trust seq",
        ],
        rows,
    )
    t = out["trust"]
    if t.get("exists"):
        info(
            f"trust stream {t['stream']}: {t['documents']} document(s), last sequence "
            f"{t['last_seq']}, replicas {t['replicas']}; newest revocation list version "
            f"{t['revocations_version']}, change version {t['changes_version']}"
        )
    else:
        info(f"trust stream {t['stream']} does not exist yet (no node or publisher has run)")
    for key in out:
        if key not in ("mesh", "nodes", "trust"):
            info(f"{key}: {_summary(out[key])}")
    return 0


def cmd_mesh_init(args: argparse.Namespace) -> int:
    from nightcore.mesh.ops import init

    out = init(mesh_config(args))
    if args.json:
        print_json(out)
    else:
        info(f"mesh ready: {', '.join(out['created_or_present'])} ({out['replicas']} replica(s))")
    return 0


def _summary(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items() if not isinstance(v, dict | list))
    return str(value)


def _signing(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--key", required=True, help="maintainer private key file or URI")


def register(add: Callable[..., argparse.ArgumentParser], sub: Any) -> None:
    from nightcore.cli.main import _need_sub
    from nightcore.cli.main import _Parser as Parser

    mesh = add("mesh", _need_sub)
    msub = mesh.add_subparsers(dest="mesh_cmd", metavar="ACTION", parser_class=Parser)

    sp = add(
        "status",
        cmd_mesh_status,
        "nodes (alive, cordoned, version, heartbeat age, trust versions) and the streams",
        msub,
    )
    add_mesh_options(sp, required=True)

    sp = add(
        "init",
        cmd_mesh_init,
        "create the deployment's streams and buckets (for nodes that may not create them)",
        msub,
    )
    add_mesh_options(sp, required=True)

    sp = add("revoke", cmd_mesh_revoke, "publish a signed revocation to every node", msub)
    sp.add_argument("kind", choices=["key", "module"], help="what to revoke")
    sp.add_argument(
        "subject",
        help="key id (64 hex, or a unique prefix of >= 8 hex of a trusted key) "
        "or module sha256 (64 hex)",
    )
    _signing(sp)
    sp.add_argument("--reason", required=True, help="why (kept in the revocation list)")
    add_mesh_options(sp, required=True)

    for name, handler, helptext in (
        (
            "cordon",
            cmd_mesh_cordon,
            "publish a signed cordon of a tenant (or --node) to every node",
        ),
        ("uncordon", cmd_mesh_uncordon, "publish a signed uncordon of a tenant (or --node)"),
    ):
        sp = add(name, handler, helptext, msub)
        sp.add_argument("tenant", nargs="?", default=None, help="tenant id")
        sp.add_argument(
            "--node",
            metavar="NAME",
            default=None,
            help="cordon a node instead: it takes no mesh work (its local runs still work)",
        )
        _signing(sp)
        sp.add_argument(
            "--reason", required=name == "cordon", default=None, help="why (audited by every node)"
        )
        add_mesh_options(sp, required=True)

    sp = add("add-key", cmd_mesh_add_key, "publish a signed key-registry addition", msub)
    sp.add_argument("pubkey", help="the public key to trust (NAME.pub.pem)")
    sp.add_argument("--scope", required=True, help="glob over tenant ids, e.g. 'acme-*'")
    sp.add_argument(
        "--role",
        default="publisher",
        choices=["publisher", "maintainer"],
        help="publisher signs tenants; maintainer signs revocations (default publisher)",
    )
    sp.add_argument("--expires", help="ISO 8601 date after which the key is not trusted")
    sp.add_argument("--name", help="display name (default: the file name)")
    _signing(sp)
    add_mesh_options(sp, required=True)

    sp = add("remove-key", cmd_mesh_remove_key, "publish a signed key-registry removal", msub)
    sp.add_argument("key_id", help="key id or a unique prefix of at least 8 hex characters")
    _signing(sp)
    add_mesh_options(sp, required=True)

    # -- work queue (helper "work"): `mesh submit`, `mesh runs` parsers go below -------------
    from nightcore.cli.commands_meshwork import register_work

    register_work(add, msub)
