"""CLI of the update channel: ``nightcore aufs repo|client|update|rollback|status``.

Repository commands work on a repository directory (``--repo DIR``, default
``$NIGHTCORE_AUFS_REPO`` or ``.``) and need no workspace. Client commands use the workspace
(``<ws>/state/aufs/metadata``, ``<ws>/aufs.toml``) unless ``--metadata-dir`` is given; when a
workspace is available every refresh, download, apply, rollback and refusal is audited.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nightcore.cli.context import open_workspace as _ws
from nightcore.cli.render import info, print_json, print_table
from nightcore.errors import NightCoreError, UsageError

EXIT_OK = 0
EXIT_FAILED = 1
REPO_ENV = "NIGHTCORE_AUFS_REPO"


def _ws_optional(args: argparse.Namespace) -> Any:
    try:
        return _ws(args)
    except NightCoreError:
        if args.workspace:
            raise
        return None


def _repo(args: argparse.Namespace) -> Any:
    from nightcore.aufs.repo import AufsRepo

    return AufsRepo(Path(args.repo or os.environ.get(REPO_ENV) or "."))


def _settings(ws: Any) -> Any:
    from nightcore.aufs.config import load_settings

    return load_settings(ws.root if ws is not None else None)


def _metadata_dir(args: argparse.Namespace, ws: Any) -> Path:
    if args.metadata_dir:
        return Path(args.metadata_dir)
    if ws is None:
        raise UsageError("no workspace: pass -w DIR or --metadata-dir DIR")
    return Path(ws.layout.state_dir) / "aufs" / "metadata"


def _url(value: str | None, fallback: str | None, what: str) -> str:
    from nightcore.aufs.config import check_url

    url = value or fallback
    if not url:
        raise UsageError(f"no {what}: pass --{what.replace('_', '-')} or set it in aufs.toml")
    return check_url(url, what)


# -- JSON shapes (docs/json.md, docs/schemas/aufs-*.schema.json) ---------------------------------
# TUF spells a key id ``keyid`` and leaves keys out; ``--json`` says ``key_id`` and prints
# every key of a shape, null for "none" (never "" or 0).


def _sign_json(st: Any) -> dict[str, Any]:
    """A staged role's signing status; ``previous_root_*`` null unless it rotates root."""
    out: dict[str, Any] = {"previous_root_signed": None, "previous_root_threshold": None}
    out.update(st.to_dict())
    return out


def _repo_status_json(st: dict[str, Any]) -> dict[str, Any]:
    roles: dict[str, Any] = {}
    for role, e in st["roles"].items():
        staged = e.get("staged")
        if staged is not None:
            staged = {"previous_root_signed": None, "previous_root_threshold": None, **staged}
        roles[role] = {
            "published_version": e.get("published_version") or None,
            "expires": e.get("expires"),
            "days_left": e.get("days_left"),
            "threshold": e.get("threshold"),
            "keys": [
                {"key_id": k["keyid"], "name": k["name"] or None, "age_days": k["age_days"]}
                for k in e.get("keys", [])
            ]
            if "keys" in e
            else None,
            "staged": staged,
        }
    return {**st, "roles": roles}


def _none_if_empty(value: Any) -> Any:
    return None if value == "" else value


def _versions_json(versions: dict[str, int]) -> dict[str, int | None]:
    """Trusted metadata versions; null for a role not loaded yet (0 on disk)."""
    return {role: v or None for role, v in versions.items()}


# -- repository ------------------------------------------------------------------------------


def cmd_repo_init(args: argparse.Namespace) -> int:
    from nightcore.aufs.repo import init_repo

    repo, result, statuses = init_repo(
        Path(args.dir),
        args.root_key,
        threshold=args.threshold,
        targets_keys=args.targets_key or None,
        targets_threshold=args.targets_threshold,
        online_key=args.online_key,
    )
    out = {
        "repository": str(repo.path),
        "published": result.to_dict() if result else None,
        "staged": [_sign_json(s) for s in statuses],
        "root_sha256": _root_sha(repo),
    }
    if args.json:
        print_json(out)
    else:
        info(f"initialised AUFS repository {repo.path}")
        for s in statuses:
            info(s.describe())
        if result is None:
            info(
                "thresholds not met yet: each maintainer runs 'aufs repo sign', "
                "then 'aufs repo publish'"
            )
        else:
            info(f"published root v1; distribute {repo.metadata_dir / '1.root.json'} to nodes")
    return EXIT_OK


def _root_sha(repo: Any) -> str | None:
    import hashlib

    p = repo.metadata_dir / "1.root.json"
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None


def cmd_repo_add_target(args: argparse.Namespace) -> int:
    repo = _repo(args)
    tf = repo.add_target(
        Path(args.source),
        kind=args.kind,
        min_runtime=args.min_runtime or "",
        version=args.version or "",
    )
    out = {"path": tf.path, "length": tf.length, "sha256": tf.hashes["sha256"], "custom": tf.custom}
    if args.json:
        print_json(out)
    else:
        info(f"staged {tf.path} ({tf.length} bytes); targets must now be signed by a threshold")
    return EXIT_OK


def cmd_repo_remove_target(args: argparse.Namespace) -> int:
    _repo(args).remove_target(args.path)
    if args.json:
        print_json({"removed": args.path})
    else:
        info(f"removed {args.path} from the staged targets")
    return EXIT_OK


def cmd_repo_sign(args: argparse.Namespace) -> int:
    from nightcore.aufs.repo import signer_of

    repo = _repo(args)
    st = repo.sign(args.role, signer_of(args.key))
    if args.json:
        print_json(_sign_json(st))
    else:
        info(st.describe() + (" -- ready to publish" if st.ready else ""))
    return EXIT_OK


def cmd_repo_publish(args: argparse.Namespace) -> int:
    res = _repo(args).publish()
    if args.json:
        print_json(res.to_dict())
    else:
        info("published " + ", ".join(f"{r} v{res.versions[r]}" for r in res.published))
    return EXIT_OK


def cmd_repo_rotate(args: argparse.Namespace) -> int:
    st = _repo(args).rotate_key(args.role, args.old, args.new)
    if args.json:
        print_json(_sign_json(st))
    else:
        info(
            f"staged root v{st.version} rotating a {args.role} key; it needs signatures by a "
            "threshold of the previous AND the new root keys ('aufs repo sign --role root')"
        )
    return EXIT_OK


def cmd_repo_override(args: argparse.Namespace) -> int:
    from nightcore.aufs.repo import signer_of

    repo = _repo(args)
    path, n = repo.stage_override(
        args.tenant, args.version, signer_of(args.key), reason=args.reason, days=args.days
    )
    if args.json:
        print_json({"override": str(path), "signatures": n})
    else:
        info(f"override {path} has {n} signature(s); targets must be re-signed after it")
    return EXIT_OK


def cmd_repo_status(args: argparse.Namespace) -> int:
    st = _repo(args).status()
    if args.json:
        print_json(_repo_status_json(st))
    else:
        rows = []
        for role, e in st["roles"].items():
            keys = ", ".join(
                f"{k['name'] or k['keyid'][:8]}({k['age_days']}d)" for k in e.get("keys", [])
            )
            rows.append(
                [
                    role,
                    e.get("published_version", 0),
                    e.get("expires", "-"),
                    e.get("days_left", "-"),
                    f"{e.get('threshold', '-')}",
                    keys,
                ]
            )
        print_table(
            "AUFS repository",
            ["role", "version", "expires", "days left", "threshold", "keys (age)"],
            rows,
        )
        for w in st["warnings"]:
            info(f"warning: {w}")
    return EXIT_FAILED if any("EXPIRED" in w for w in st["warnings"]) else EXIT_OK


def cmd_repo_backup(args: argparse.Namespace) -> int:
    res = _repo(args).backup(Path(args.out))
    if args.json:
        print_json(res)
    else:
        info(f"backed up root versions {res['root_versions']} to {res['backup']}")
    return EXIT_OK


def cmd_repo_serve(args: argparse.Namespace) -> int:
    from nightcore.aufs.serve import make_server

    repo = _repo(args)
    server = make_server(repo.path / "public", args.port)
    host, port = server.server_address[:2]
    info(
        f"serving {repo.path / 'public'} on http://{host!s}:{port}/ "
        "(metadata/, targets/); Ctrl-C stops"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return EXIT_OK


# -- client ----------------------------------------------------------------------------------


def cmd_client_init(args: argparse.Namespace) -> int:
    from nightcore.aufs.client import init_client
    from nightcore.aufs.config import SETTINGS_NAME, render_settings
    from nightcore.aufs.errors import AufsError
    from nightcore.fsio import atomic_write, read_input

    ws = _ws_optional(args)
    settings = _settings(ws)
    path = Path(args.root_json)
    data = read_input(
        path,
        settings.limits.root_max_length,
        what="root.json",
        code="AUFS_METADATA_INVALID",
        too_large="AUFS_TOO_LARGE",
        unreadable="USAGE",
        error=AufsError,
    )
    mdir = _metadata_dir(args, ws)
    try:
        ri = init_client(
            mdir,
            data,
            expect_sha256=args.expect_sha256,
            limits=settings.limits,
            fips=_fips(args, ws),
        )
    except NightCoreError as exc:
        if ws is not None:
            ws.audit().append(
                "aufs_refused",
                {"stage": "client_init", "code": exc.code, "reason": exc.message[:400]},
            )
        raise
    if ws is not None:
        ws.audit().append(
            "aufs_client_init", {"root_version": ri.version, "root_sha256": ri.sha256}
        )
        cfg = Path(ws.root) / SETTINGS_NAME
        if (args.metadata_url or args.target_base_url) and not cfg.exists():
            atomic_write(cfg, render_settings(args.metadata_url, args.target_base_url))
    if args.json:
        roles = {
            name: {"threshold": r["threshold"], "key_ids": list(r["keyids"])}
            for name, r in ri.roles.items()
        }
        print_json({"metadata_dir": str(mdir), **ri.to_dict(), "roles": roles})
    else:
        info(f"trusting root v{ri.version} (sha256 {ri.sha256}) in {mdir}")
    return EXIT_OK


def _client(args: argparse.Namespace, ws: Any, *, targets: bool) -> Any:
    from nightcore.aufs.client import AufsClient

    settings = _settings(ws)
    mdir = _metadata_dir(args, ws)
    target_dir = None
    target_url = None
    if targets:
        target_url = _url(args.target_base_url, settings.target_base_url, "target_base_url")
        if args.target_dir:
            target_dir = Path(args.target_dir)
        elif ws is not None:
            target_dir = Path(ws.layout.state_dir) / "aufs" / "targets"
        else:
            raise UsageError("pass --target-dir (no workspace)")
    return AufsClient(
        mdir,
        _url(args.metadata_url, settings.metadata_url, "metadata_url"),
        limits=settings.limits,
        target_dir=target_dir,
        target_base_url=target_url,
        fips=_fips(args, ws),
    )


def _fips(args: argparse.Namespace, ws: Any) -> bool:
    """FIPS mode: the workspace's policy (which --fips already tightened), else --fips."""
    if ws is not None:
        return bool(ws.policy.fips)
    return bool(getattr(args, "fips", False))


def _audited(ws: Any, event: str, data: dict[str, Any]) -> None:
    if ws is not None:
        ws.audit().append(event, data)


def cmd_client_refresh(args: argparse.Namespace) -> int:
    ws = _ws_optional(args)
    try:
        client = _client(args, ws, targets=False)  # FIPS: the trusted root is checked here
        before = client.versions()
        versions = client.refresh()
    except NightCoreError as exc:
        _audited(
            ws, "aufs_refused", {"stage": "refresh", "code": exc.code, "reason": exc.message[:400]}
        )
        raise
    _audited(
        ws, "aufs_refresh", {"versions": versions, "changed": versions != before, "before": before}
    )
    if args.json:
        print_json({"versions": _versions_json(versions), "changed": versions != before})
    else:
        info("trusted " + ", ".join(f"{k} v{v}" for k, v in versions.items()))
    return EXIT_OK


def cmd_client_download(args: argparse.Namespace) -> int:
    ws = _ws_optional(args)
    client = _client(args, ws, targets=True)
    out = []
    for path in args.targets:
        try:
            tinfo = client.targetinfo(path)
            local = client.download(tinfo)
        except NightCoreError as exc:
            _audited(
                ws,
                "aufs_refused",
                {
                    "stage": "download",
                    "path": path[:200],
                    "code": exc.code,
                    "reason": exc.message[:400],
                },
            )
            raise
        _audited(
            ws,
            "aufs_download",
            {"path": path, "sha256": tinfo.hashes.get("sha256"), "length": tinfo.length},
        )
        out.append(
            {
                "path": path,
                "file": str(local),
                "length": tinfo.length,
                "sha256": tinfo.hashes.get("sha256"),
            }
        )
    if args.json:
        print_json(out)
    else:
        for o in out:
            info(f"{o['path']} -> {o['file']}")
    return EXIT_OK


# -- node ------------------------------------------------------------------------------------


def cmd_update(args: argparse.Namespace) -> int:
    from nightcore.aufs.update import Updater

    ws = _ws(args)
    settings = _settings(ws)
    up = Updater(
        ws,
        settings,
        metadata_url=_url(args.metadata_url, settings.metadata_url, "metadata_url"),
        target_base_url=_url(args.target_base_url, settings.target_base_url, "target_base_url"),
    )
    report = up.run()
    if args.json:
        doc = report.to_dict()
        doc["metadata_versions"] = _versions_json(doc["metadata_versions"])
        doc["outcomes"] = [
            {
                **o,
                "tenant": _none_if_empty(o["tenant"]),
                "previous_version": _none_if_empty(o["previous_version"]),
            }
            for o in doc["outcomes"]
        ]
        print_json(doc)
    else:
        print_table(
            "AUFS update",
            ["target", "kind", "version", "verdict", "action", "detail"],
            [[o.path, o.kind, o.version, o.code, o.action, o.reason] for o in report.outcomes],
            code_column=3,
        )
        info("metadata " + ", ".join(f"{k} v{v}" for k, v in report.versions.items()))
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_rollback(args: argparse.Namespace) -> int:
    from nightcore.aufs.update import rollback_tenant

    res = rollback_tenant(_ws(args), args.tenant)
    if args.json:
        print_json(res)
    else:
        info(f"rolled {res['tenant']} back from {res['from_version']} to {res['to_version']}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from nightcore.aufs import runtime
    from nightcore.aufs.state import NodePaths, is_initialized, load_state, trusted_versions

    ws = _ws(args)
    paths = NodePaths(ws)
    versions = trusted_versions(paths.metadata) if is_initialized(paths.metadata) else {}
    state = load_state(paths)
    out = {
        "metadata_versions": versions,
        "tenants": state["tenants"],
        "trust": state["trust"],
        "runtime_current": runtime.current_version(ws.layout.state_dir),
    }
    if args.json:
        # installed.json's records, in the --json shape: every key, null for unknown.
        tenants = {
            t: {
                k: _none_if_empty(r.get(k))
                for k in ("version", "sha256", "path", "previous", "previous_version")
            }
            for t, r in state["tenants"].items()
        }
        trust = {
            kind: (
                {"version": str(rec["version"]), "sha256": rec["sha256"]}
                if isinstance(rec := state["trust"].get(kind), dict)
                else None
            )
            for kind in ("registry", "revocations")
        }
        print_json(
            {
                **out,
                "metadata_versions": _versions_json(versions),
                "tenants": tenants,
                "trust": trust,
            }
        )
    else:
        info("trusted metadata: " + (", ".join(f"{k} v{v}" for k, v in versions.items()) or "none"))
        print_table(
            "AUFS-installed tenants",
            ["tenant", "version", "previous"],
            [
                [t, r["version"], r.get("previous_version") or "-"]
                for t, r in sorted(state["tenants"].items())
            ],
        )
        info(f"runtime current: {out['runtime_current'] or '(host installation)'}")
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------------


def _need_sub(args: argparse.Namespace) -> int:
    words = [args.command, getattr(args, "aufs_cmd", None)]
    name = " ".join(w for w in words if w)
    raise UsageError(f"'{name}' needs an action; see nightcore {name} --help")


def register(add: Callable[..., argparse.ArgumentParser], sub: Any) -> None:
    from nightcore.cli.main import _Parser as Parser

    aufs = add("aufs", _need_sub)
    asub = aufs.add_subparsers(dest="aufs_cmd", metavar="ACTION", parser_class=Parser)

    repo = add("repo", _need_sub, "maintain an AUFS repository (threshold-signed)", asub)
    rsub = repo.add_subparsers(dest="repo_cmd", metavar="ACTION", parser_class=Parser)

    def repo_cmd(
        name: str, handler: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        sp = add(name, handler, help_, rsub)
        if name != "init":
            sp.add_argument("--repo", help=f"repository directory (default ${REPO_ENV} or .)")
        return sp

    sp = repo_cmd("init", cmd_repo_init, "create a repository (root and targets threshold keys)")
    sp.add_argument("dir", help="the new repository directory")
    sp.add_argument(
        "--root-key",
        action="append",
        required=True,
        help="root key (.key signs, .pub.pem only lists); repeat",
    )
    sp.add_argument("--threshold", type=int, default=2, help="root threshold (default 2)")
    sp.add_argument(
        "--targets-key", action="append", help="targets key (default: the root keys); repeat"
    )
    sp.add_argument(
        "--targets-threshold", type=int, help="targets threshold (default: --threshold)"
    )
    sp.add_argument(
        "--online-key",
        help="private key for snapshot and timestamp (default: generate into DIR/private)",
    )

    sp = repo_cmd(
        "add-target", cmd_repo_add_target, "stage a tenant package, trust file or runtime wheel"
    )
    sp.add_argument(
        "source", help="signed tenant dir or .tar.gz, registry.json, revocations.json, or a .whl"
    )
    sp.add_argument(
        "--kind",
        choices=["tenant", "registry", "revocations", "runtime"],
        help="what SOURCE is (default: inferred from it)",
    )
    sp.add_argument("--min-runtime", help="lowest Night Core version that may apply it")
    sp.add_argument("--version", help="version of a registry target (an increasing number)")

    sp = repo_cmd("remove-target", cmd_repo_remove_target, "stage the removal of a target")
    sp.add_argument("path", help="target path as listed in targets metadata")

    sp = repo_cmd("sign", cmd_repo_sign, "add your signature to staged root or targets metadata")
    sp.add_argument(
        "--role", required=True, choices=["root", "targets"], help="the metadata to sign"
    )
    sp.add_argument("--key", required=True, help="your private key file or URI")

    repo_cmd(
        "publish",
        cmd_repo_publish,
        "publish staged metadata once thresholds of distinct keys are met",
    )

    sp = repo_cmd("rotate-key", cmd_repo_rotate, "stage a root that replaces one key of a role")
    sp.add_argument(
        "--role",
        required=True,
        choices=["root", "targets", "snapshot", "timestamp"],
        help="the role whose key changes",
    )
    sp.add_argument("--old", required=True, help="key file or key id (>= 8 hex) to remove")
    sp.add_argument("--new", required=True, help="key file to add (a private key for online roles)")

    sp = repo_cmd(
        "override",
        cmd_repo_override,
        "sign a downgrade override (needs two distinct maintainer keys)",
    )
    sp.add_argument("tenant", help="the tenant to downgrade")
    sp.add_argument("version", help="the older version to allow")
    sp.add_argument("--key", required=True, help="your maintainer private key file or URI")
    sp.add_argument("--reason", default="", help="why this downgrade (first signer)")
    sp.add_argument("--days", type=int, default=7, help="validity of the override (first signer)")

    repo_cmd("status", cmd_repo_status, "versions, expiries and key ages (warns past 90 days)")
    sp = repo_cmd("backup", cmd_repo_backup, "copy every root version and current metadata")
    sp.add_argument("--out", required=True, help="backup directory")
    sp = repo_cmd("serve", cmd_repo_serve, "serve public/ on 127.0.0.1 (development and tests)")
    sp.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")

    client = add("client", _need_sub, "TUF client: bootstrap trust, refresh, download", asub)
    csub = client.add_subparsers(dest="client_cmd", metavar="ACTION", parser_class=Parser)

    def client_cmd(
        name: str, handler: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        sp = add(name, handler, help_, csub)
        sp.add_argument(
            "--metadata-dir", help="trusted metadata dir (default <ws>/state/aufs/metadata)"
        )
        sp.add_argument("--metadata-url", help="repository metadata URL (default: aufs.toml)")
        return sp

    sp = client_cmd("init", cmd_client_init, "trust a root.json obtained out of band (offline)")
    sp.add_argument("root_json", help="the repository's root.json")
    sp.add_argument("--expect-sha256", help="refuse unless root.json has this SHA-256")
    sp.add_argument("--target-base-url", help="stored in aufs.toml with --metadata-url")
    client_cmd(
        "refresh",
        cmd_client_refresh,
        "update trusted metadata (root, timestamp, snapshot, targets)",
    )
    sp = client_cmd("download", cmd_client_download, "download and verify targets")
    sp.add_argument("targets", nargs="+", help="target paths to download")
    sp.add_argument("--target-base-url", help="targets base URL (default: aufs.toml)")
    sp.add_argument("--target-dir", help="where to put them (default <ws>/state/aufs/targets)")

    sp = add("update", cmd_update, "refresh, download what changed, verify and apply it", asub)
    sp.add_argument("--metadata-url", help="repository metadata URL (default: aufs.toml)")
    sp.add_argument("--target-base-url", help="targets base URL (default: aufs.toml)")
    sp = add(
        "rollback", cmd_rollback, "restore the version AUFS kept when it replaced a tenant", asub
    )
    sp.add_argument("tenant", help="the tenant to restore")
    add("status", cmd_status, "trusted metadata versions, installed tenants, current runtime", asub)
