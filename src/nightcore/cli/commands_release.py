"""CLI commands of Night Core's own releases: ``release verify``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nightcore.cli.render import info, print_json, print_table


def cmd_release_verify(args: argparse.Namespace) -> int:
    from nightcore.app.release import verify_release
    from nightcore.trust.pubkey import read_public_pem

    pem = read_public_pem(args.key, "release public key")
    res = verify_release(Path(args.dir), pem)
    if args.json:
        print_json(res.to_dict())
    else:
        print_table(
            "Release verification",
            ["check", "result", "detail"],
            [[c.check, "OK" if c.ok else c.code, c.detail] for c in res.checks],
            code_column=1,
        )
    failure = res.first_failure
    if failure is not None:
        if not args.json:
            info(f"error[{failure.code}]: {failure.detail}")
        return 1
    if not args.json:
        info(f"release nightcore {res.version} (commit {res.commit[:12]}) verified")
    return 0


def cmd_release_stage(args: argparse.Namespace) -> int:
    import os

    from nightcore.app.release import stage_release_in_aufs
    from nightcore.trust.pubkey import read_public_pem

    pem = read_public_pem(args.key, "release public key")
    repo = Path(args.repo or os.environ.get("NIGHTCORE_AUFS_REPO") or ".")
    out = stage_release_in_aufs(repo, Path(args.dir), pem, min_runtime=args.min_runtime or "")
    if args.json:
        print_json(out)
    else:
        info(
            f"staged {out['target']} (nightcore {out['version']}, commit {out['commit'][:12]}, "
            f"sha256 {out['sha256'][:16]}); targets must now be signed by a threshold"
        )
    return 0


def register(add: Callable[..., argparse.ArgumentParser], sub: Any) -> None:
    from nightcore.cli.main import _need_sub
    from nightcore.cli.main import _Parser as Parser

    release = add("release", _need_sub)
    rsub = release.add_subparsers(dest="release_cmd", metavar="ACTION", parser_class=Parser)
    sp = add(
        "verify",
        cmd_release_verify,
        "verify a release directory offline: signatures, checksums, provenance, SBOM",
        rsub,
    )
    sp.add_argument("dir", help="the release directory (make release's output)")
    sp.add_argument("--key", required=True, help="the release public key (PEM)")
    sp = add(
        "stage",
        cmd_release_stage,
        "verify a release, then stage its wheel as an AUFS repository's runtime target",
        rsub,
    )
    sp.add_argument("dir", help="the release directory (make release's output)")
    sp.add_argument("--key", required=True, help="the release public key (PEM)")
    sp.add_argument("--repo", help="AUFS repository directory (default $NIGHTCORE_AUFS_REPO or .)")
    sp.add_argument("--min-runtime", help="the lowest runtime version that may apply it")
