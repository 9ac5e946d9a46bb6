"""CLI commands of the evidence layer: sbom, replay, proof export/verify, forensics export."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nightcore.cli.context import open_workspace as _ws
from nightcore.cli.render import info, print_json, print_table
from nightcore.errors import NightCoreError

# -- commands -------------------------------------------------------------------------------


def cmd_sbom(args: argparse.Namespace) -> int:
    from nightcore.app.evidence import write_sbom

    try:
        ws = _ws(args)
    except NightCoreError:
        ws = None  # the runtime's own SBOM needs no workspace
    out = Path(args.out)
    digest = write_sbom(ws, out)
    if args.json:
        print_json({"sbom": str(out), "sha256": digest, "spec": "CycloneDX 1.5"})
    else:
        info(f"wrote {out} (CycloneDX 1.5, validated), sha256 {digest}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from nightcore.app.evidence import replay
    from nightcore.app.run import resolve_run_id

    ws = _ws(args)
    run_id = resolve_run_id(ws, args.run_id)  # a unique prefix names its run
    res = replay(ws, run_id, strongbox=args.strongbox)
    if args.json:
        # null, not "": no stream differs; the attestation predates recording its isolation
        doc = res.to_dict()
        doc["diverged"] = res.diverged or None
        doc["attested_isolation"] = res.attested_isolation or None
        print_json(doc)
    else:
        rows = [
            [
                k,
                res.original[k][:16],
                res.replayed[k][:16],
                "same" if res.original[k] == res.replayed[k] else "DIFFERS",
            ]
            for k in ("outcome", "stdout", "stderr")
        ]
        print_table(f"Replay of {run_id}", ["stream", "attested", "replayed", ""], rows)
        info(
            res.code
            + (f": first difference in {res.diverged}" if res.diverged else "")
            + (
                ""
                if res.deterministic
                else " (this time: the tenant is not declared deterministic, so a later "
                "replay may differ)"
            )
        )
    return 0 if res.code == "REPLAY_MATCH" else 1


def cmd_proof_export(args: argparse.Namespace) -> int:
    from nightcore.app.evidence import export_proof

    runs = [r for r in (args.runs or "").split(",") if r] or None
    digest, n = export_proof(_ws(args), Path(args.out), since=args.since, runs=runs)
    if args.json:
        print_json({"bundle": args.out, "sha256": digest, "runs": n})
    else:
        info(f"wrote {args.out}: {n} runs, sha256 {digest}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from nightcore.app.evidence import verify_bundle
    from nightcore.trust.pubkey import read_public_pem

    pem = read_public_pem(args.key, "node public key")
    res = verify_bundle(Path(args.bundle), pem)
    if args.json:
        print_json(res.to_dict())
    else:
        print_table(
            "Bundle verification",
            ["check", "result", "detail"],
            [[c.check, "OK" if c.ok else c.code, c.detail] for c in res.checks],
            code_column=1,
        )
    failure = res.first_failure
    if failure is not None:
        if not args.json:
            info(f"error[{failure.code}]: {failure.detail}")
        return 1
    return 0


def cmd_forensics_export(args: argparse.Namespace) -> int:
    from nightcore.app.evidence import export_forensics

    res = export_forensics(
        _ws(args), args.tenant, Path(args.out), run=args.run, no_checkpoint=args.no_checkpoint
    )
    if args.json:
        print_json(
            {
                "bundle": args.out,
                "sha256": res.sha256,
                "runs": res.runs,
                "checkpoint": res.checkpoint_size,
                "checkpoint_signed": res.checkpoint_signed,
                "lines_left_out": res.lines_left_out,
            }
        )
        return 0
    info(f"wrote {args.out}: tenant {args.tenant}, {res.runs} runs, sha256 {res.sha256}")
    if res.checkpoint_signed:
        info(f"signed checkpoint {res.checkpoint_size} so every exported audit line is proven")
    if res.lines_left_out:
        n = res.lines_left_out
        info(
            f"{n} audit line{'' if n == 1 else 's'} after checkpoint {res.checkpoint_size} "
            "left out (--no-checkpoint); drop --no-checkpoint to include them"
        )
    return 0


def register(add: Callable[..., argparse.ArgumentParser], sub: Any) -> None:
    from nightcore.cli.main import _need_sub
    from nightcore.cli.main import _Parser as Parser

    sp = add("sbom", cmd_sbom)
    sp.add_argument("--out", default="sbom.cdx.json", help="output file (default sbom.cdx.json)")
    sp = add("replay", cmd_replay)
    sp.add_argument("run_id", help="the run to replay (see nightcore runs)")
    sp.add_argument(
        "--strongbox",
        action="store_true",
        help="replay in a confined worker (Linux, root; node policy may require it anyway)",
    )
    proof = add("proof", _need_sub)
    psub = proof.add_subparsers(dest="proof_cmd", metavar="ACTION", parser_class=Parser)
    sp = add("export", cmd_proof_export, "export a signed proof bundle", psub)
    sp.add_argument("--out", required=True, help="bundle file to write")
    sp.add_argument("--since", help="runs started at or after this ISO 8601 time")
    sp.add_argument("--runs", help="comma-separated run ids")
    sp = add("verify", _verify, "verify a bundle offline with only the node public key", psub)
    sp.add_argument("bundle", help="the proof bundle file")
    sp.add_argument("--key", required=True, help="the node's public key (node.pub.pem)")
    forensics = add("forensics", _need_sub)
    fsub = forensics.add_subparsers(dest="forensics_cmd", metavar="ACTION", parser_class=Parser)
    sp = add("export", cmd_forensics_export, "export a signed forensic bundle", fsub)
    sp.add_argument("--tenant", required=True, help="the tenant under investigation")
    sp.add_argument("--run", help="one run id (default: the tenant's runs)")
    sp.add_argument("--out", required=True, help="bundle file to write")
    sp.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="write nothing: cut the audit slice at the latest checkpoint instead of signing one",
    )
    sp = add("verify", _verify, "verify a forensic bundle offline", fsub)
    sp.add_argument("bundle", help="the forensic bundle file")
    sp.add_argument("--key", required=True, help="the node's public key (node.pub.pem)")
