"""The ``nightcore`` command: parse, call one API function, render.

Heavy modules (wasmtime, cryptography, rich) are imported inside the command that needs
them, so ``nightcore --help`` starts in a few tens of milliseconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nightcore.cli.context import open_workspace as _ws
from nightcore.cli.render import clean, error, info, print_json, print_table
from nightcore.errors import NightCoreError, UsageError

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and something was denied or failed
EXIT_ERROR = 2  # the command itself was refused (usage, bad input, broken state)

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own usage errors, same format as ours
        raise UsageError(message)


def _parse_time(value: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"not an ISO 8601 date: {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


# -- commands ------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from nightcore import api

    root = Path(args.dir or args.workspace or os.environ.get("NIGHTCORE_HOME") or ".")
    ws = api.init_workspace(root, name=args.name, fips=args.fips)
    out = {
        "workspace": str(ws.root),
        "node_key_id": ws.node_key_id(),
        "node_public_key": str(ws.node_pub_path),
        "fips": ws.policy.fips,
    }
    if args.json:
        print_json(out)
    else:
        info(f"initialised workspace {ws.root}")
        info(f"node key id {out['node_key_id']}  (public key: node.pub.pem)")
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from nightcore import api
    from nightcore.trust.keys import KEY_NAME_RE, passphrase_from_env_or_prompt

    if not KEY_NAME_RE.fullmatch(args.name):
        raise UsageError("--name must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}")
    passphrase = passphrase_from_env_or_prompt(confirm=True)
    gen = api.keygen(args.name, Path(args.out), passphrase, fips=args.fips)
    out = {
        "name": gen.name,
        "key_id": gen.key_id,
        "scheme": gen.scheme,
        "private_key": str(gen.private_path),
        "public_key": str(gen.public_path),
    }
    if args.json:
        print_json(out)
    else:
        print(gen.key_id)
        info(f"{gen.scheme} key written: {gen.private_path} (encrypted, 0600), {gen.public_path}")
    return EXIT_OK


def cmd_sign(args: argparse.Namespace) -> int:
    from nightcore import api

    res = api.sign_tenant(Path(args.tenant_dir), args.key, fips=bool(args.fips))
    out = {
        "tenant": res.tenant,
        "envelope": str(res.envelope_path),
        "key_id": res.key_id,
        "module_sha256": res.module_sha256,
    }
    if args.json:
        print_json(out)
    else:
        info(f"signed {res.tenant}: module sha256 {res.module_sha256} by key {res.key_id[:16]}")
    return EXIT_OK


def cmd_trust_add(args: argparse.Namespace) -> int:
    from nightcore import api

    ws = _ws(args)
    tk = api.trust_add_key(
        ws,
        Path(args.pubkey),
        scope=args.scope,
        role=args.role,
        expires=_parse_time(args.expires) if args.expires else None,
        name=args.name,
    )
    if args.json:
        print_json(tk.to_dict())
    else:
        info(f"trusted {tk.role} key {tk.key_id} for tenants {tk.scope!r}")
    return EXIT_OK


def cmd_trust_list(args: argparse.Namespace) -> int:
    from nightcore import api

    keys = api.trust_list(_ws(args))
    if args.json:
        print_json([k.to_dict() for k in keys])
    else:
        print_table(
            "Trusted keys",
            ["key id", "name", "role", "scope", "scheme", "expires"],
            [
                [
                    k.key_id[:16],
                    k.name,
                    k.role,
                    k.scope,
                    k.key.scheme,
                    k.expires.isoformat() if k.expires else "-",
                ]
                for k in keys
            ],
        )
    return EXIT_OK


def cmd_trust_remove(args: argparse.Namespace) -> int:
    from nightcore import api

    kid = api.trust_remove_key(_ws(args), args.key_id)
    if args.json:
        print_json({"removed": kid})
    else:
        info(f"removed key {kid}")
    return EXIT_OK


def cmd_trust_import(args: argparse.Namespace) -> int:
    from nightcore import api

    rl = api.import_revocations(_ws(args), Path(args.file))
    if args.json:
        print_json({"version": rl.version, "signer": rl.signer})
    else:
        info(f"accepted revocation list version {rl.version}")
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    from nightcore import api

    rl = api.revoke(
        _ws(args), kind=args.kind, subject=args.subject, key=args.key, reason=args.reason
    )
    if args.json:
        print_json({"revoked": args.subject, "kind": args.kind, "list_version": rl.version})
    else:
        info(f"revoked {args.kind} {args.subject}; revocation list is now version {rl.version}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from nightcore import api

    decisions = api.verify_tenants(_ws(args), args.tenants or None)
    if args.json:
        print_json([d.to_dict() for d in decisions])
    else:
        print_table(
            "Verification",
            ["tenant", "verdict", "reason", "key id", "module sha256"],
            [[d.tenant, d.code, d.reason, d.key_id[:16], d.module_sha256[:16]] for d in decisions],
            code_column=1,
        )
    return EXIT_OK if decisions and all(d.ok for d in decisions) else EXIT_FAILED


def cmd_doctor(args: argparse.Namespace) -> int:
    from nightcore import doctor

    ws = None
    try:
        ws = _ws(args)
    except NightCoreError:
        ws = None
    checks = doctor.run_checks(ws)
    if args.json:
        print_json(checks)
    else:
        print_table(
            "Night Core doctor",
            ["check", "status", "detail"],
            [[c["check"], c["status"], c["detail"]] for c in checks],
            code_column=1,
        )
    return EXIT_OK if all(c["status"] in ("OK", "INFO") for c in checks) else EXIT_FAILED


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    common.add_argument(
        "-w",
        "--workspace",
        default=argparse.SUPPRESS,
        help="workspace directory (default: $NIGHTCORE_HOME or .)",
    )
    common.add_argument(
        "--fips",
        action="store_true",
        default=argparse.SUPPRESS,
        help="restrict keys and signatures to the FIPS allow-list",
    )

    p = _Parser(
        prog="nightcore",
        parents=[common],
        description="Night Core: run signed WebAssembly tenants in bounded sandboxes, "
        "with tamper-evident evidence of every decision.",
    )
    p.add_argument("--version", action="version", version="nightcore 0.1.0")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, handler: Handler, help_: str, parent: Any = sub) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(
            name, help=help_, parents=[common], description=help_
        )
        sp.set_defaults(handler=handler)
        return sp

    sp = add("init", cmd_init, "create a workspace (node policy, node key, directories)")
    sp.add_argument("dir", nargs="?")
    sp.add_argument("--name", default="node", help="node name")

    sp = add("keygen", cmd_keygen, "generate a signing key (Ed25519; ECDSA P-256 with --fips)")
    sp.add_argument("--name", required=True)
    sp.add_argument("--out", default=".", help="directory for NAME.key and NAME.pub.pem")

    sp = add("sign", cmd_sign, "sign a tenant directory's manifest and module")
    sp.add_argument("tenant_dir")
    sp.add_argument("--key", required=True, help="private key file or private-key URI")

    trust = add("trust", _need_sub, "manage trusted keys and revocation lists")
    tsub = trust.add_subparsers(dest="trust_cmd", metavar="ACTION", parser_class=_Parser)
    sp = add("add-key", cmd_trust_add, "trust a public key for tenants matching a scope", tsub)
    sp.add_argument("pubkey")
    sp.add_argument("--scope", required=True, help="glob over tenant ids, e.g. 'acme-*'")
    sp.add_argument("--role", default="publisher", choices=["publisher", "maintainer"])
    sp.add_argument("--expires", help="ISO 8601 date after which the key is not trusted")
    sp.add_argument("--name", help="display name (default: the file name)")
    add("list", cmd_trust_list, "list trusted keys", tsub)
    sp = add("remove", cmd_trust_remove, "stop trusting a key", tsub)
    sp.add_argument("key_id", help="key id or a unique prefix of at least 8 hex characters")
    sp = add(
        "import-revocations",
        cmd_trust_import,
        "accept a newer signed revocation list from a file",
        tsub,
    )
    sp.add_argument("file")

    sp = add("revoke", cmd_revoke, "revoke a key id or a module digest (maintainer-signed)")
    sp.add_argument("kind", choices=["key", "module"])
    sp.add_argument("subject", help="key id (64 hex) or module sha256 (64 hex)")
    sp.add_argument("--key", required=True, help="maintainer private key file or URI")
    sp.add_argument("--reason", required=True)

    sp = add("verify", cmd_verify, "verify tenants (signature, digest, manifest, policy)")
    sp.add_argument("tenants", nargs="*")

    add("doctor", cmd_doctor, "report the environment: versions, FIPS backend, workspace")

    _register_extensions(add, sub)
    return p


def _register_extensions(add: Callable[..., argparse.ArgumentParser], sub: Any) -> None:
    """Commands of later layers (run path, audit tree) register here."""
    from nightcore.cli import (
        commands_audit,
        commands_aufs,
        commands_dashboard,
        commands_evidence,
        commands_run,
    )

    commands_run.register(add, sub)
    commands_audit.register(add, sub)
    commands_evidence.register(add, sub)
    commands_aufs.register(add, sub)
    commands_dashboard.register(add, sub)


def _need_sub(args: argparse.Namespace) -> int:
    raise UsageError(f"'{args.command}' needs an action; see nightcore {args.command} --help")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        for name, default in (("json", False), ("workspace", None), ("fips", False)):
            if not hasattr(args, name):
                setattr(args, name, default)
        handler: Handler | None = getattr(args, "handler", None)
        if handler is None:
            parser.print_help()
            return EXIT_ERROR
        return handler(args)
    except NightCoreError as exc:
        if getattr(args if "args" in locals() else None, "json", False):
            print_json({"ok": False, "code": exc.code, "error": clean(exc.message, 400)})
        error(exc.code, exc.message)
        return EXIT_ERROR
    except OSError as exc:
        error("IO_ERROR", f"{exc.strerror or exc}: {exc.filename or ''}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        error("INTERRUPTED", "interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
