"""The ``nightcore`` command: parse, call one API function, render.

Heavy modules (wasmtime, cryptography, rich) are imported inside the command that needs
them, and a command's parser is built only when it is invoked, so ``nightcore --help``
starts in a few tens of milliseconds. This module imports no more than ``argparse`` and
:mod:`nightcore.errors` itself (not even ``typing``, ``pathlib`` or ``json``).
"""

from __future__ import annotations

import argparse
import os
import sys

from nightcore.errors import NightCoreError, UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Callable, Sequence
    from typing import Any

    Handler = Callable[[argparse.Namespace], int]
    Registrar = Callable[[Callable[..., argparse.ArgumentParser], Any], None]

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and something was denied or failed
EXIT_ERROR = 2  # the command itself was refused (usage, bad input, broken state)


def _columns() -> int:
    """``shutil.get_terminal_size().columns`` without importing shutil (~3 ms of every cold
    start: argparse builds a help formatter for each argument it adds): ``$COLUMNS``, else
    the terminal on stdout, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _HelpFormatter(argparse.HelpFormatter):
    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        width = _columns() - 2 if width is None else width  # what argparse computes
        super().__init__(prog, indent_increment, max_help_position, width)


class _RawDescriptionHelpFormatter(_HelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # argparse's own usage errors, same format as ours
        raise UsageError(message)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        """A value outside ``choices`` close to a known name gets "did you mean": ``unknown
        command 'rnu' (did you mean 'run'?)``, ``unknown action 'verfy' for 'audit' ...``;
        any other keeps argparse's message, which lists the choices."""
        if action.choices is None or value in action.choices:
            return
        import difflib

        names = [str(c) for c in action.choices]
        close = difflib.get_close_matches(str(value), names, n=3, cutoff=0.6)
        if not close:
            super()._check_value(action, value)
            return
        hint = " or ".join(repr(c) for c in close)
        if isinstance(action, argparse._SubParsersAction):
            cmd = self.prog.partition(" ")[2]
            what = f"unknown action {value!r} for {cmd!r}" if cmd else f"unknown command {value!r}"
        else:
            what = f"argument {argparse._get_action_name(action)}: invalid choice {value!r}"
        raise UsageError(f"{what} (did you mean {hint}?)")


def _parse_time(value: str) -> dt.datetime:
    import datetime as dt

    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"not an ISO 8601 date: {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _ws(args: argparse.Namespace) -> Any:
    from nightcore.cli.context import open_workspace

    return open_workspace(args)


# -- commands ------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nightcore import app
    from nightcore.cli.render import info, print_json

    root = Path(args.dir or args.workspace or os.environ.get("NIGHTCORE_HOME") or ".")
    ctx = app.init_workspace(root, name=args.name, fips=args.fips)
    out = {
        "workspace": str(ctx.root),
        "node_key_id": ctx.node_key_id(),
        "node_public_key": str(ctx.layout.node_pub_path),
        "fips": ctx.policy.fips,
    }
    if args.json:
        print_json(out)
    else:
        info(f"initialised workspace {ctx.root}")
        info(f"node key id {out['node_key_id']}  (public key: node.pub.pem)")
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nightcore import app
    from nightcore.cli.render import info, print_json
    from nightcore.trust.keys import KEY_NAME_RE, passphrase_from_env_or_prompt

    if not KEY_NAME_RE.fullmatch(args.name):
        raise UsageError("--name must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}")
    passphrase = passphrase_from_env_or_prompt(confirm=True)
    gen = app.keygen(args.name, Path(args.out), passphrase, fips=args.fips)
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
    from pathlib import Path

    from nightcore import app
    from nightcore.cli.render import info, print_json

    res = app.sign_tenant(Path(args.tenant_dir), args.key, fips=bool(args.fips))
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
    from pathlib import Path

    from nightcore import app
    from nightcore.cli.render import info, print_json

    tk = app.trust_add_key(
        _ws(args),
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
    from nightcore.app.trust import trust_list_states
    from nightcore.cli.render import print_json, print_table

    keys = trust_list_states(_ws(args))
    if args.json:
        print_json(
            [
                {
                    **k.to_dict(),
                    "state": "revoked" if rev else "trusted",
                    "revoked": {"reason": rev.reason, "revoked_at": rev.revoked_at}
                    if rev
                    else None,
                }
                for k, rev in keys
            ]
        )
    else:
        print_table(
            "Trusted keys",
            ["key id", "name", "role", "scope", "scheme", "expires", "state"],
            [
                [
                    k.key_id[:16],
                    k.name,
                    k.role,
                    k.scope,
                    k.key.scheme,
                    k.expires.isoformat() if k.expires else "-",
                    f"revoked: {rev.reason}" if rev else "trusted",
                ]
                for k, rev in keys
            ],
        )
    return EXIT_OK


def cmd_trust_remove(args: argparse.Namespace) -> int:
    from nightcore import app
    from nightcore.cli.render import info, print_json

    kid = app.trust_remove_key(_ws(args), args.key_id)
    if args.json:
        print_json({"removed": kid})
    else:
        info(f"removed key {kid}")
    return EXIT_OK


def cmd_trust_rotate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nightcore.app.trust import trust_rotate_key
    from nightcore.cli.render import info, print_json

    old, new = trust_rotate_key(
        _ws(args), args.key_id, Path(args.pubkey), grace_days=args.grace_days
    )
    if args.json:
        print_json({"old": old.to_dict(), "new": new.to_dict()})
    else:
        until = old.expires.isoformat() if old.expires else "-"
        info(
            f"trusted {new.role} key {new.key_id[:16]} for {new.scope!r}; old key "
            f"{old.key_id[:16]} expires {until}: re-sign its tenants with the new key before then"
        )
    return EXIT_OK


def cmd_trust_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nightcore import app
    from nightcore.cli.render import info, print_json

    rl = app.import_revocations(_ws(args), Path(args.file))
    if args.json:
        print_json({"version": rl.version, "signer": rl.signer})
    else:
        info(f"accepted revocation list version {rl.version}")
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    from nightcore import app
    from nightcore.cli.render import info, print_json

    rl = app.revoke(
        _ws(args), kind=args.kind, subject=args.subject, key=args.key, reason=args.reason
    )
    entries = rl.keys if args.kind == "key" else rl.modules
    prefix = args.subject.lower()
    subject = next((r.subject for r in entries if r.subject.startswith(prefix)), prefix)
    if args.json:
        print_json({"revoked": subject, "kind": args.kind, "list_version": rl.version})
    else:
        info(f"revoked {args.kind} {subject}; revocation list is now version {rl.version}")
    return EXIT_OK


def cmd_revocations_list(args: argparse.Namespace) -> int:
    from nightcore.app.trust import revocations_list
    from nightcore.cli.render import info, print_json, print_table

    rl, names = revocations_list(_ws(args))
    keys = [
        {
            "key_id": r.subject,
            "name": names.get(r.subject),
            "reason": r.reason,
            "revoked_at": r.revoked_at,
        }
        for r in rl.keys
    ]
    modules = [
        {"sha256": r.subject, "reason": r.reason, "revoked_at": r.revoked_at} for r in rl.modules
    ]
    if args.json:
        print_json(
            {
                "version": rl.version,
                "issued": rl.issued,
                "signer": rl.signer,
                "keys": keys,
                "modules": modules,
            }
        )
        return EXIT_OK
    if rl.version == 0:
        info("no revocation list yet (version 0): nothing is revoked")
    else:
        info(f"revocation list version {rl.version}, issued {rl.issued}, signed by {rl.signer}")
    print_table(
        "Revocations",
        ["kind", "subject", "name", "reason", "revoked at"],
        [["key", k["key_id"], k["name"] or "-", k["reason"], k["revoked_at"]] for k in keys]
        + [["module", m["sha256"], "-", m["reason"], m["revoked_at"]] for m in modules],
    )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from nightcore.cli.context import node_client
    from nightcore.cli.render import print_json, print_table

    client = node_client(args)
    if client is not None:
        decisions: list[dict[str, Any]] = client.call("verify", {"tenants": args.tenants or None})
    else:
        from nightcore import app

        decisions = [d.to_dict() for d in app.verify(_ws(args), args.tenants or None)]
    if args.json:
        print_json(decisions)
    else:
        print_table(
            "Verification",
            ["tenant", "verdict", "reason", "key id", "module sha256"],
            [
                [d["tenant"], d["code"], d["reason"], d["key_id"][:16], d["module_sha256"][:16]]
                for d in decisions
            ],
            code_column=1,
        )
    ok = bool(decisions) and all(d["code"] == "OK" for d in decisions)
    return EXIT_OK if ok else EXIT_FAILED


def cmd_doctor(args: argparse.Namespace) -> int:
    from nightcore import doctor
    from nightcore.cli.render import print_json, print_table

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
    # WARN (an old publisher key) is advice, not a failure.
    return EXIT_OK if all(c["status"] in ("OK", "INFO", "WARN") for c in checks) else EXIT_FAILED


# -- parser --------------------------------------------------------------------------------


class _Discard:
    """Stands in for the parser of a command that is not being built: swallows its set-up
    (``add_argument``, ``add_subparsers``, ``set_defaults`` ...)."""

    def __getattr__(self, name: str) -> Any:
        return self._swallow

    def _swallow(self, *_args: Any, **_kwargs: Any) -> Any:
        return self


_DISCARD: Any = _Discard()

if TYPE_CHECKING:
    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    _SubParsers = argparse._SubParsersAction


class _Commands(_SubParsers):
    """The top-level COMMAND argument, whose parsers are built only when invoked.

    ``nightcore run`` imports one command module and builds the parser of ``run`` alone, not
    those of all ~60 commands and actions (that cost ~15 ms of every cold start). The command
    list in ``--help`` and the "invalid choice" error need only each command's name and help
    line (``_COMMANDS``, in the same order), so argparse prints exactly what it would print
    with every parser built.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._builders: dict[str, Callable[[str], None]] = {}

    def add_lazy(self, name: str, help_: str, build: Callable[[str], None]) -> None:
        self._choices_actions.append(self._ChoicesPseudoAction(name, (), help_))
        self._name_parser_map[name] = _DISCARD  # replaced by the real parser in build()
        self._builders[name] = build

    def build_all(self) -> None:
        """Build every command's parser (shell completion needs them all)."""
        for name in list(self._builders):
            self._builders[name](name)
            del self._builders[name]

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if name not in self._builders:
            return super().add_parser(name, **kwargs)
        # Building a registered command: what add_parser does, minus the second help line.
        kwargs.pop("help", None)
        if kwargs.get("prog") is None:
            kwargs["prog"] = f"{self._prog_prefix} {name}"
        parser = self._parser_class(**kwargs)
        self._name_parser_map[name] = parser
        return parser

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        name = values[0]
        build = self._builders.get(name)
        if build is not None:
            build(name)
            del self._builders[name]
        super().__call__(parser, namespace, values, option_string)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    common.add_argument(
        "-w",
        "--workspace",
        default=argparse.SUPPRESS,
        help="workspace directory (default: $NIGHTCORE_HOME, else the nearest of . and its "
        "parents holding nightcore.toml)",
    )
    common.add_argument(
        "--fips",
        action="store_true",
        default=argparse.SUPPRESS,
        help="restrict keys and signatures to the FIPS allow-list",
    )
    common.add_argument(
        "--local",
        action="store_true",
        default=argparse.SUPPRESS,
        help="work in this process even when a node serves the workspace",
    )

    p = _Parser(
        prog="nightcore",
        parents=[common],
        description="Night Core: run signed WebAssembly tenants in bounded sandboxes, "
        "with tamper-evident evidence of every decision.",
    )
    from nightcore import __version__

    p.add_argument("--version", action="version", version=f"nightcore {__version__}")
    sub = p.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser, action=_Commands
    )
    assert isinstance(sub, _Commands)

    def build(name: str) -> None:
        """Build the parser of top-level command ``name``: its module's ``register(add, sub)``
        runs with an ``add`` that builds ``name`` and swallows the module's other commands."""

        def add(n: str, handler: Handler, help_: str | None = None, parent: Any = sub) -> Any:
            if parent is _DISCARD or (parent is sub and n != name):
                return _DISCARD
            extra: dict[str, Any] = {}
            if help_ is None:  # a top-level command: its help line is in _COMMANDS
                help_ = _COMMANDS[n][1]
                lines = "\n".join(f"  {line}" for line in _EXAMPLES.get(n, ()))
                extra = {
                    "epilog": f"examples:\n{lines}",
                    "formatter_class": _RawDescriptionHelpFormatter,
                }
            sp: argparse.ArgumentParser = parent.add_parser(
                n, help=help_, parents=[common], description=help_, **extra
            )
            sp.set_defaults(handler=handler)
            return sp

        _registrar(_COMMANDS[name][0])(add, sub)

    for name, (_, help_) in _COMMANDS.items():
        sub.add_lazy(name, help_, build)
    return p


# Each layer registers its commands with ``register(add, sub)``, where
# ``add(name, handler, help=None, parent=sub)`` returns the new command's parser. A top-level
# command passes no help: its help line is here, in ``nightcore --help`` order, so that
# listing needs no command module imported (tests/unit/test_cli_parser.py checks both agree).
_CORE = "nightcore.cli.main:_register_core"
_RUN = "nightcore.cli.commands_run:register"
_AUDIT = "nightcore.cli.commands_audit:register"
_EVIDENCE = "nightcore.cli.commands_evidence:register"
_AUFS = "nightcore.cli.commands_aufs:register"
_DASHBOARD = "nightcore.cli.commands_dashboard:register"
_NODE = "nightcore.cli.commands_node:register"
_NEW = "nightcore.cli.commands_new:register"
_MESH = "nightcore.cli.commands_mesh:register"
_RELEASE = "nightcore.cli.commands_release:register"
_NODEKEY = "nightcore.cli.commands_nodekey:register"
_COMMANDS: dict[str, tuple[str, str]] = {
    "init": (_CORE, "create a workspace (node policy, node key, directories)"),
    "keygen": (_CORE, "generate a signing key (Ed25519; ECDSA P-256 with --fips)"),
    "sign": (_CORE, "sign a tenant directory's manifest and module"),
    "trust": (_CORE, "manage trusted keys and revocation lists"),
    "revoke": (_CORE, "revoke a key id or a module digest (maintainer-signed)"),
    "revocations": (_CORE, "show the revocation list: revoked keys and modules"),
    "verify": (_CORE, "verify tenants (signature, digest, manifest, policy)"),
    "doctor": (_CORE, "report the environment: versions, FIPS backend, workspace"),
    "completion": (_CORE, "print the shell completion script (bash, zsh, fish)"),
    "new": (_NEW, "scaffold a tenant directory: commented manifest, source, README"),
    "build": (_NEW, "compile a tenant's module.wat or main.c to module.wasm (reproducible)"),
    "run": (_RUN, "verify, admit and run tenants in bounded sandboxes"),
    "cordon": (_RUN, "stop a tenant from running (incident response)"),
    "uncordon": (_RUN, "allow a cordoned tenant to run again"),
    "runs": (_RUN, "query run history (SQLite index)"),
    "logs": (_RUN, "print what a run wrote to stdout (or --stderr)"),
    "state": (_RUN, "maintain derived state"),
    "audit": (_AUDIT, "inspect, checkpoint, prove and verify the audit log"),
    "node-key": (_NODEKEY, "rotate or revoke the node key; one audit log spans key generations"),
    "sbom": (_EVIDENCE, "write the node's CycloneDX SBOM (runtime + admitted tenants)"),
    "replay": (_EVIDENCE, "re-run a recorded run and compare it with its attestation"),
    "proof": (_EVIDENCE, "export and verify offline proof bundles"),
    "forensics": (_EVIDENCE, "export an incident bundle for one tenant"),
    "aufs": (_AUFS, "TUF-secured updates: repository tooling and node client"),
    "dashboard": (_DASHBOARD, "the self-contained HTML report"),
    "serve": (_DASHBOARD, "the live console: report views, JSON API, server-sent events"),
    "node": (_NODE, "the resident node agent: warm workers, local API for the CLI"),
    "mesh": (_MESH, "Night Mesh on NATS: signed trust broadcast, node status"),
    "release": (_RELEASE, "verify a Night Core release offline; stage it as an AUFS runtime"),
}

# The "examples:" section of each top-level command's --help (1-3 realistic command lines).
_EXAMPLES: dict[str, tuple[str, ...]] = {
    "init": ("nightcore init ws", "nightcore init ws --name edge-1 --fips"),
    "keygen": ("nightcore keygen --name alice --out keys",),
    "new": ("nightcore new hello", "nightcore new wc --lang c --dir ws/modules/wc"),
    "build": ("nightcore build hello", "nightcore build ws/modules/wc --json"),
    "sign": ("nightcore sign ws/modules/hello --key keys/alice.key",),
    "trust": (
        "nightcore trust add-key keys/alice.pub.pem --scope 'hello*'",
        "nightcore trust add-key keys/ops.pub.pem --scope '*' --role maintainer",
        "nightcore trust rotate-key 3f9a1c2b keys/alice-2027.pub.pem --grace-days 14",
    ),
    "revoke": (
        "nightcore revoke key 3f9a1c2b --key keys/ops.key --reason 'stolen laptop'",
        "nightcore revoke module SHA256 --key keys/ops.key --reason 'CVE-2026-0001'",
    ),
    "revocations": ("nightcore revocations list", "nightcore revocations list --json"),
    "verify": ("nightcore verify", "nightcore verify hello --json"),
    "doctor": ("nightcore doctor", "nightcore doctor --json"),
    "completion": ("nightcore completion bash", "nightcore completion zsh"),
    "run": ("nightcore run", "nightcore run hello --strongbox", "nightcore run --parallel 4"),
    "cordon": ("nightcore cordon hello --reason 'incident 42'",),
    "uncordon": ("nightcore uncordon hello --reason 'incident 42 closed'",),
    "runs": (
        "nightcore runs",
        "nightcore runs --tenant hello --limit 10 --json",
        "nightcore runs --denied",
    ),
    "logs": (
        "nightcore logs 20261205T0750",
        "nightcore logs 20261205T0750 --stderr",
        "nightcore logs --follow 20261205T0750",
    ),
    "state": ("nightcore state rebuild",),
    "audit": (
        "nightcore audit verify",
        "nightcore audit show --tenant hello --limit 20",
        "nightcore audit prove 3 --out p.proof --entry-out e.json",
    ),
    "node-key": (
        "nightcore node-key rotate",
        "nightcore node-key list --json",
        "nightcore node-key revoke 3f9a1c2b --last-trusted-size 120",
    ),
    "sbom": ("nightcore sbom --out sbom.cdx.json",),
    "replay": ("nightcore replay RUN_ID",),
    "proof": (
        "nightcore proof export --out proof.tar.gz",
        "nightcore proof verify proof.tar.gz --key node.pub.pem",
    ),
    "forensics": (
        "nightcore forensics export --tenant hello --out hello-incident.tar.gz",
        "nightcore forensics verify hello-incident.tar.gz --key node.pub.pem",
    ),
    "aufs": (
        "nightcore aufs repo init repo --root-key m1.key --root-key m2.key --root-key m3.key",
        "nightcore aufs client init root.json --metadata-url https://updates.example/metadata",
        "nightcore aufs update",
    ),
    "dashboard": ("nightcore dashboard build", "nightcore dashboard build --out report.html"),
    "serve": ("nightcore serve token create", "nightcore serve --port 8700"),
    "node": ("nightcore node", "nightcore node --workers 4 --http 8700", "nightcore node status"),
    "mesh": (
        "nightcore mesh status --mesh nats://10.0.0.1:4222,nats://10.0.0.2:4222",
        "nightcore mesh revoke key 3f9a1c2b --key keys/ops.key --reason 'stolen laptop' "
        "--mesh nats://10.0.0.1:4222",
        "nightcore mesh cordon hello --key keys/ops.key --reason 'incident 42' --mesh nats://10.0.0.1:4222",
    ),
    "release": (
        "nightcore release verify dist/release --key release.pub.pem",
        "nightcore release verify dist/release --key release.pub.pem --json",
        "nightcore release stage dist/release --key release.pub.pem --repo aufs-repo",
    ),
}


def _registrar(ref: str) -> Registrar:
    import importlib

    module, _, func = ref.partition(":")
    registrar: Registrar = getattr(importlib.import_module(module), func)
    return registrar


def _register_core(add: Callable[..., argparse.ArgumentParser], sub: Any) -> None:
    sp = add("init", cmd_init)
    sp.add_argument(
        "dir", nargs="?", help="workspace directory (default: -w, $NIGHTCORE_HOME or .)"
    )
    sp.add_argument("--name", default="node", help="node name")

    sp = add("keygen", cmd_keygen)
    sp.add_argument("--name", required=True, help="key name: NAME.key and NAME.pub.pem")
    sp.add_argument("--out", default=".", help="directory for NAME.key and NAME.pub.pem")

    sp = add("sign", cmd_sign)
    sp.add_argument("tenant_dir", help="directory with manifest.toml and module.wasm")
    sp.add_argument("--key", required=True, help="private key file or private-key URI")

    trust = add("trust", _need_sub)
    tsub = trust.add_subparsers(dest="trust_cmd", metavar="ACTION", parser_class=_Parser)
    sp = add("add-key", cmd_trust_add, "trust a public key for tenants matching a scope", tsub)
    sp.add_argument("pubkey", help="the signer's public key (NAME.pub.pem)")
    sp.add_argument("--scope", required=True, help="glob over tenant ids, e.g. 'acme-*'")
    sp.add_argument(
        "--role",
        default="publisher",
        choices=["publisher", "maintainer"],
        help="publisher signs tenants; maintainer signs revocations (default publisher)",
    )
    sp.add_argument("--expires", help="ISO 8601 date after which the key is not trusted")
    sp.add_argument("--name", help="display name (default: the file name)")
    add("list", cmd_trust_list, "list trusted keys", tsub)
    sp = add("remove", cmd_trust_remove, "stop trusting a key", tsub)
    sp.add_argument("key_id", help="key id or a unique prefix of at least 8 hex characters")
    sp = add(
        "rotate-key",
        cmd_trust_rotate,
        "replace a publisher or maintainer key: trust the new one, expire the old one",
        tsub,
    )
    sp.add_argument("key_id", help="the old key id or a unique prefix of at least 8 hex")
    sp.add_argument("pubkey", help="the new public key (NAME.pub.pem)")
    sp.add_argument(
        "--grace-days",
        type=int,
        default=30,
        help="days the old key stays trusted while tenants are re-signed (default 30)",
    )
    sp = add(
        "import-revocations",
        cmd_trust_import,
        "accept a newer signed revocation list from a file",
        tsub,
    )
    sp.add_argument("file", help="a signed revocations.json")

    sp = add("revoke", cmd_revoke)
    sp.add_argument("kind", choices=["key", "module"], help="what to revoke")
    sp.add_argument(
        "subject",
        help="key id (64 hex, or a unique prefix of >= 8 hex of a trusted key) "
        "or module sha256 (64 hex)",
    )
    sp.add_argument("--key", required=True, help="maintainer private key file or URI")
    sp.add_argument("--reason", required=True, help="why (kept in the revocation list)")

    revs = add("revocations", _need_sub)
    rsub = revs.add_subparsers(dest="revocations_cmd", metavar="ACTION", parser_class=_Parser)
    add("list", cmd_revocations_list, "revoked keys and modules with reasons", rsub)

    sp = add("verify", cmd_verify)
    sp.add_argument("tenants", nargs="*", help="tenant ids (default: every tenant)")

    add("doctor", cmd_doctor)

    sp = add("completion", cmd_completion)
    sp.add_argument(
        "shell",
        choices=SHELLS,
        help="the shell to print the script for (bash: save it as "
        "~/.local/share/bash-completion/completions/nightcore)",
    )


SHELLS = ("bash", "zsh", "fish", "tcsh", "powershell")


def cmd_completion(args: argparse.Namespace) -> int:
    """argcomplete's registration script: the shell then calls ``nightcore`` itself with
    ``_ARGCOMPLETE`` set, and :func:`_complete` answers from the real parser."""
    from argcomplete.shell_integration import shellcode

    script = shellcode(["nightcore"], shell=args.shell)
    if args.json:
        from nightcore.cli.render import print_json

        print_json({"shell": args.shell, "script": script})
    else:
        sys.stdout.write(script)
    return EXIT_OK


def _complete(parser: argparse.ArgumentParser) -> None:
    """Answer a shell's completion request (``_ARGCOMPLETE`` set) and exit. Every command's
    parser is built first (a normal start builds only the invoked one), so subcommands,
    actions and options all complete; argcomplete is imported only here."""
    import argcomplete

    for action in parser._subparsers._group_actions if parser._subparsers else ():
        if isinstance(action, _Commands):
            action.build_all()
    argcomplete.autocomplete(parser)


def _need_sub(args: argparse.Namespace) -> int:
    raise UsageError(f"'{args.command}' needs an action; see nightcore {args.command} --help")


def _refuse(
    parsed: argparse.Namespace | None, argv: Sequence[str] | None, code: str, message: str
) -> None:
    """A refusal: the error object on stdout with ``--json`` (every code, also I/O errors),
    and the one-line ``error[CODE]: message`` on stderr."""
    from nightcore.cli.render import clean, error, print_json

    if getattr(parsed, "json", False) or (
        parsed is None and "--json" in (sys.argv[1:] if argv is None else argv)
    ):
        print_json({"ok": False, "code": code, "error": clean(message, 400)})
    error(code, message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:
        _complete(parser)  # exits
    try:
        args = parser.parse_args(argv)
        for name, default in (
            ("json", False),
            ("workspace", None),
            ("fips", False),
            ("local", False),
        ):
            if not hasattr(args, name):
                setattr(args, name, default)
        handler: Handler | None = getattr(args, "handler", None)
        if handler is None:
            parser.print_help()
            return EXIT_ERROR
        return handler(args)
    except NightCoreError as exc:
        _refuse(args if "args" in locals() else None, argv, exc.code, exc.message)
        return EXIT_ERROR
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say
        return EXIT_ERROR
    except OSError as exc:
        message = f"{exc.strerror or exc}: {exc.filename or ''}"
        _refuse(args if "args" in locals() else None, argv, "IO_ERROR", message)
        return EXIT_ERROR
    except KeyboardInterrupt:
        from nightcore.cli.render import error

        error("INTERRUPTED", "interrupted")
        return 130


def run() -> None:
    """The ``nightcore`` console command: :func:`main`, then exit without tearing the
    interpreter down.

    Teardown (final garbage collections, clearing ~200 modules, freeing Wasmtime engines) cost
    ~45 ms of a ~230 ms cold ``nightcore run`` (benchmarks/run.py). Nothing is lost by skipping
    it: every durable write was fsync'd and every file closed before ``main`` returned; stdio is
    flushed and the ``atexit`` handlers (libraries' own cleanup) still run. An exception that
    escapes ``main`` takes the normal path, traceback and all.
    """
    import atexit

    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a closed pipe or stream: nothing more to say
            code = code or EXIT_ERROR
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    run()
