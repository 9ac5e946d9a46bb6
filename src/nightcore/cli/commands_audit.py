"""CLI commands of the audit layer: ``nightcore audit ...``.

``verify``, ``checkpoint``, ``show``, ``prove``, ``consistency`` work on a workspace;
``verify-proof`` and ``verify-consistency`` are offline: they need only the files named on the
command line and the node's public key (no workspace). A check that runs and says "no" exits 1
with ``error[CODE]: message``; a refused command (usage, unreadable file) exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nightcore.cli.context import open_workspace as _ws
from nightcore.cli.render import clean, error, info, print_json, print_table
from nightcore.errors import AuditError, NightCoreError

EXIT_OK = 0
EXIT_FAILED = 1
SHOW_DEFAULT_LIMIT = 50
MAX_KEY_FILE = 64 * 1024


def _read_capped(path: str, cap: int, code: str, what: str) -> bytes:
    """A file named on the command line: ``code`` when it is above ``cap`` or not a regular
    file (a FIFO, a device, a directory), ``IO_ERROR`` when it cannot be read."""
    from nightcore.fsio import read_input

    return read_input(path, cap, what=what, code=code, unreadable="IO_ERROR", error=AuditError)


def _refused(args: argparse.Namespace, exc: AuditError, **extra: Any) -> int:
    """A check that ran and failed: exit 1 with the code (JSON on stdout with --json)."""
    if args.json:
        print_json({"ok": False, "code": exc.code, "error": clean(exc.message, 400), **extra})
    error(exc.code, exc.message)
    return EXIT_FAILED


def _is_audit_code(code: str) -> bool:
    from nightcore.codes import ALL_CODES

    return any(info.domain in ("audit", "tlog") for info in ALL_CODES.get(code, ()))


def _write_out(path: str, data: bytes) -> None:
    Path(path).write_bytes(data)


# -- verify --------------------------------------------------------------------------------


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from nightcore.cli.context import node_client

    source = getattr(args, "source", None)
    client = node_client(args)
    if source is not None and source.startswith(("nats://", "tls://")):
        # A Night Mesh audit stream (or a region's mirror of it): read here, not by the node.
        from nightcore.mesh.auditrepl import verify_stream

        report: dict[str, Any] = verify_stream(
            _ws(args),
            source,
            prefix=args.mesh_prefix,
            node=args.node,
            domain=args.domain,
            creds=args.mesh_creds,
        ).to_dict()
    elif client is not None:
        report = client.call("audit_verify", {"source": source})
    else:
        from nightcore.app import audit

        report = audit.verify_log(_ws(args), source).to_dict()
    if args.json:
        print_json(report)
    if not report["ok"]:
        message = report.get("error") or ""
        seq = report.get("seq")
        if seq is not None and not message.startswith(f"line {seq}:"):
            message = f"seq {seq}: {message}"
        error(str(report.get("code")), message)
        return EXIT_FAILED
    if not args.json:
        latest = report["latest_checkpoint"]
        # The verdict is the command's result: stdout, like every other result.
        print(
            f"audit log OK: {report['entries']} entries, head {report['head']}, Merkle root "
            f"{report['root']}, {report['checkpoints']} checkpoint(s)"
            + (f", latest at size {latest}" if latest is not None else ""),
            flush=True,
        )
    for warning in report["warnings"]:
        info(f"warning: {warning}")
    return EXIT_OK


# -- mirrors and heartbeat -------------------------------------------------------------------


def _mirror_table(rows: list[Any], title: str) -> None:
    if not rows:
        info("no audit mirrors configured ([[audit.mirror]] in nightcore.toml)")
        return
    print_table(
        title,
        ["mirror", "kind", "lines", "lag", "checkpoints", "status"],
        [[m.name, m.kind, m.lines, m.lag, m.checkpoints, "OK" if m.ok else m.error] for m in rows],
        code_column=5,
    )


def _mirror_json(m: Any) -> dict[str, Any]:
    return {**m.to_dict(), "error": m.error or None}  # null, not "", when the mirror is fine


def cmd_mirror_status(args: argparse.Namespace) -> int:
    from nightcore.app import audit

    rows = audit.mirror_status(_ws(args))
    if args.json:
        print_json([_mirror_json(m) for m in rows])
    else:
        _mirror_table(rows, "Audit mirrors")
    return EXIT_OK if all(m.ok for m in rows) else EXIT_FAILED


def cmd_mirror_sync(args: argparse.Namespace) -> int:
    from nightcore.app import audit

    rows = audit.mirror_sync(_ws(args))
    if args.json:
        print_json([_mirror_json(m) for m in rows])
    else:
        _mirror_table(rows, "Audit mirrors after sync")
    return EXIT_OK if all(m.ok for m in rows) else EXIT_FAILED


def cmd_mirror_region(args: argparse.Namespace) -> int:
    from nightcore.mesh.auditrepl import create_region_mirror

    row = create_region_mirror(
        args.server,
        region=args.domain,
        source_domain=args.source_domain,
        prefix=args.mesh_prefix,
        creds=args.mesh_creds,
    )
    if args.json:
        print_json(row)
    else:
        print_table(
            "Audit mirror (second region)",
            ["stream", "domain", "mirrors", "from domain", "messages", "lag"],
            [
                [
                    row["stream"],
                    row["region"],
                    row["source"],
                    row["source_domain"],
                    row["messages"],
                    "-" if row["lag"] is None else row["lag"],
                ]
            ],
        )
    return EXIT_OK


def cmd_heartbeat(args: argparse.Namespace) -> int:
    import time

    from nightcore.app import audit

    ws = _ws(args)
    idle = args.idle if args.idle is not None else ws.config.heartbeat_idle_seconds
    while True:
        cp = audit.heartbeat(ws, idle)
        if args.json:
            # One shape whether or not a heartbeat was signed (null: none); with --loop one
            # document per line (JSON Lines), each written as soon as it is known.
            doc = {
                "heartbeat": cp is not None,
                **dict.fromkeys(("origin", "size", "root", "key_name", "note")),
                **(cp.to_dict() if cp else {}),
            }
            if args.loop:
                sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
                sys.stdout.flush()
            else:
                print_json(doc)
        elif cp is not None:
            info(f"heartbeat checkpoint {cp.size} signed (root {cp.root.hex()[:16]})")
        if not args.loop:
            return EXIT_OK
        time.sleep(max(1.0, idle / 4))


# -- checkpoint ----------------------------------------------------------------------------


def cmd_audit_checkpoint(args: argparse.Namespace) -> int:
    from nightcore.cli.context import node_client

    client = node_client(args)
    try:
        if client is not None:
            cp: dict[str, Any] = client.call("audit_checkpoint", {"reason": args.reason})
        else:
            from nightcore.app import audit

            signed, path = audit.checkpoint(_ws(args), args.reason)
            cp = {**signed.to_dict(), "path": str(path)}
    except AuditError as exc:
        return _refused(args, exc)
    except NightCoreError as exc:
        # Through a node an audit refusal arrives as a NightCoreError with its code: the same
        # exit status as in-process (1) for the audit layer's refusals, 2 for everything else.
        if client is None or not _is_audit_code(exc.code):
            raise
        return _refused(args, AuditError(exc.message, code=exc.code))
    if args.json:
        print_json({"ok": True, **cp})
    else:
        sys.stdout.write(cp["note"])
        info(f"checkpoint {cp['size']} signed (root {cp['root']}): {cp['path']}")
    return EXIT_OK


# -- show ----------------------------------------------------------------------------------


def cmd_audit_show(args: argparse.Namespace) -> int:
    from nightcore.cli.main import _parse_time
    from nightcore.errors import UsageError

    if args.limit < 0:
        raise UsageError("--limit must be 0 (no limit) or more")
    since = _parse_time(args.since) if args.since else None
    rows: list[dict[str, Any]] = []
    from nightcore.app import audit

    for rec in audit.records(_ws(args)):
        if args.tenant is not None and rec.get("tenant") != args.tenant:
            continue
        if args.event is not None and rec.get("event") != args.event:
            continue
        if since is not None:
            try:
                if _parse_time(str(rec.get("ts", ""))) < since:
                    continue
            except UsageError:
                continue
        rows.append(rec)
    if args.limit:
        rows = rows[-args.limit :]
    if args.json:
        print_json(rows)
        return EXIT_OK
    print_table(
        "Audit log",
        ["seq", "time", "event", "tenant", "data"],
        [
            [
                r.get("seq", "?"),
                r.get("ts", ""),
                r.get("event", ""),
                clean(r.get("tenant", "-")),
                clean(json.dumps(r.get("data", {}), sort_keys=True, separators=(",", ":"))),
            ]
            for r in rows
        ],
    )
    return EXIT_OK


# -- proofs --------------------------------------------------------------------------------


def cmd_audit_prove(args: argparse.Namespace) -> int:
    from nightcore.app import audit

    ws = _ws(args)
    try:
        proof = audit.prove(ws, args.seq)
        entry = audit.entry(ws, args.seq) if args.entry_out else None
    except AuditError as exc:
        return _refused(args, exc)
    if args.out:
        _write_out(args.out, proof)
    if entry is not None:
        _write_out(args.entry_out, entry)
    if args.json:
        print_json(
            {
                "ok": True,
                "index": args.seq,
                "proof": proof.decode("utf-8"),
                "out": args.out,
                "entry_out": args.entry_out,
            }
        )
    elif args.out:
        info(f"inclusion proof of entry {args.seq} written to {args.out}")
    else:
        sys.stdout.write(proof.decode("utf-8"))
    if entry is not None and not args.json:
        info(f"entry {args.seq} written to {args.entry_out}")
    return EXIT_OK


def _key_history(args: argparse.Namespace) -> bytes | None:
    """``--key-history FILE`` (node-keys.json of a log whose node key was rotated), read capped."""
    if not getattr(args, "key_history", None):
        return None
    from nightcore.audit.keyhistory import MAX_HISTORY_BYTES

    return _read_capped(
        args.key_history, MAX_HISTORY_BYTES, "NODE_KEY_HISTORY_INVALID", "node-key history"
    )


def cmd_audit_verify_proof(args: argparse.Namespace) -> int:
    from nightcore.app.audit import verify_inclusion_proof
    from nightcore.audit.log import MAX_LINE_BYTES
    from nightcore.audit.note import MAX_TLOG_PROOF_SIZE

    proof = _read_capped(args.proof, MAX_TLOG_PROOF_SIZE, "PROOF_FORMAT_INVALID", "proof")
    key = _read_capped(args.key, MAX_KEY_FILE, "KEY_INVALID", "public key")
    entry = _read_capped(args.entry, MAX_LINE_BYTES + 1, "AUDIT_LINE_TOO_LARGE", "entry")
    history = _key_history(args)
    try:
        cp, rec = verify_inclusion_proof(proof, entry, key, history)
    except AuditError as exc:
        return _refused(args, exc)
    out = {
        "ok": True,
        "index": rec["seq"],
        "size": cp.size,
        "root": cp.root.hex(),
        "origin": cp.origin,
        "signed_by": list(cp.key_names),
        "entry": {k: rec.get(k) for k in ("seq", "ts", "event", "tenant", "node")},
    }
    if args.json:
        print_json(out)
    else:
        info(
            f"OK: entry {rec['seq']} ({clean(rec['event'], 60)}) is in the log {cp.origin} "
            f"of size {cp.size}, checkpoint signed by {clean(', '.join(cp.key_names), 80)}"
        )
    return EXIT_OK


def cmd_audit_consistency(args: argparse.Namespace) -> int:
    from nightcore.audit.note import MAX_NOTE_SIZE

    old = _read_capped(args.old_checkpoint, MAX_NOTE_SIZE, "NOTE_TOO_LARGE", "checkpoint")
    from nightcore.app import audit

    ws = _ws(args)
    try:
        proof = audit.consistency(ws, old)
    except AuditError as exc:
        return _refused(args, exc)
    if args.out:
        _write_out(args.out, proof.to_text())
    if args.json:
        print_json({"ok": True, **proof.to_dict(), "out": args.out})
        return EXIT_OK
    if not args.out:
        sys.stdout.write(proof.to_text().decode("utf-8"))
    info(
        f"OK: the log extends checkpoint {proof.old.size}; proof to signed checkpoint "
        f"{proof.new.size}" + (f" written to {args.out}" if args.out else "")
    )
    return EXIT_OK


def cmd_audit_verify_consistency(args: argparse.Namespace) -> int:
    from nightcore.app.audit import verify_consistency_proof
    from nightcore.audit.note import MAX_NOTE_SIZE, MAX_TLOG_PROOF_SIZE

    proof = _read_capped(args.proof, MAX_TLOG_PROOF_SIZE, "PROOF_FORMAT_INVALID", "proof")
    old = _read_capped(args.old, MAX_NOTE_SIZE, "NOTE_TOO_LARGE", "checkpoint")
    key = _read_capped(args.key, MAX_KEY_FILE, "KEY_INVALID", "public key")
    history = _key_history(args)
    try:
        res = verify_consistency_proof(proof, old, key, history)
    except AuditError as exc:
        return _refused(args, exc)
    if args.json:
        print_json({"ok": True, **res.to_dict()})
    else:
        info(f"OK: checkpoint {res.new.size} extends checkpoint {res.old.size}")
    return EXIT_OK


# -- parser --------------------------------------------------------------------------------


def _seq(text: str) -> int:
    from nightcore.errors import UsageError

    if not text.isdigit() or (len(text) > 1 and text[0] == "0") or len(text) > 20:
        raise UsageError(f"not an entry number: {text!r}")
    return int(text)


def register(add: Callable[..., argparse.ArgumentParser], sub: Any) -> None:
    from nightcore.cli.main import _need_sub
    from nightcore.cli.main import _Parser as Parser

    audit = add("audit", _need_sub)
    asub = audit.add_subparsers(dest="audit_cmd", metavar="ACTION", parser_class=Parser)
    sp = add(
        "verify",
        cmd_audit_verify,
        "verify the hash chain, the Merkle tree and every signed checkpoint",
        asub,
    )
    sp.add_argument(
        "--source",
        metavar="MIRROR|nats://HOST:PORT",
        help="verify a mirror instead, held to this node's own signed checkpoints: a configured "
        "mirror's name, or a Night Mesh audit stream (a region's mirror of it) at that server",
    )
    sp.add_argument(
        "--mesh-prefix",
        default=None,
        help="with nats://: the deployment prefix (default nightcore)",
    )
    sp.add_argument(
        "--node", default=None, help="with nats://: whose log (default: this workspace's node)"
    )
    sp.add_argument(
        "--domain", default=None, help="with nats://: the JetStream domain to read (a region)"
    )
    sp.add_argument("--mesh-creds", default=None, help="with nats://: NATS credentials file")
    mirror = add("mirror", _need_sub, "audit mirrors: status and catch-up", asub)
    msub = mirror.add_subparsers(dest="mirror_cmd", metavar="ACTION", parser_class=Parser)
    add("status", cmd_mirror_status, "each mirror's position and lag", msub)
    add("sync", cmd_mirror_sync, "copy what each mirror is missing", msub)
    sp = add(
        "region",
        cmd_mirror_region,
        "create (or show) a second region's mirror of the Night Mesh audit stream",
        msub,
    )
    sp.add_argument("server", metavar="nats://HOST:PORT", help="a server of the second region")
    sp.add_argument(
        "--domain", required=True, help="the region's JetStream domain (names the mirror stream)"
    )
    sp.add_argument(
        "--source-domain",
        required=True,
        help="the JetStream domain of the servers holding the audit stream",
    )
    sp.add_argument("--mesh-prefix", default=None, help="the deployment prefix (default nightcore)")
    sp.add_argument("--mesh-creds", default=None, help="NATS credentials file")
    sp = add(
        "heartbeat",
        cmd_heartbeat,
        "sign a heartbeat checkpoint if the log has been idle (for cron or a loop)",
        asub,
    )
    sp.add_argument(
        "--idle",
        type=int,
        default=None,
        help="seconds of silence before a heartbeat (default: [audit] heartbeat_idle_seconds)",
    )
    sp.add_argument("--loop", action="store_true", help="keep running, checking every idle/4 s")
    sp = add("checkpoint", cmd_audit_checkpoint, "sign a checkpoint of the whole log", asub)
    sp.add_argument("--reason", default="manual", help="recorded in the checkpoint event")

    sp = add("show", cmd_audit_show, "list audit entries (latest last)", asub)
    sp.add_argument("--tenant", help="only entries of this tenant")
    sp.add_argument("--event", help="only entries of this event (verify, run, checkpoint ...)")
    sp.add_argument("--since", help="ISO 8601 time; entries at or after it")
    sp.add_argument(
        "--limit",
        type=int,
        default=SHOW_DEFAULT_LIMIT,
        help=f"show the latest N matches (default {SHOW_DEFAULT_LIMIT}; 0: all)",
    )

    sp = add(
        "prove", cmd_audit_prove, "print an inclusion proof (c2sp tlog-proof) of entry SEQ", asub
    )
    sp.add_argument("seq", type=_seq, metavar="SEQ", help="sequence number of the audit entry")
    sp.add_argument("--out", help="write the proof to FILE instead of stdout")
    sp.add_argument("--entry-out", help="also write the entry's line (the proven bytes) to FILE")

    sp = add(
        "verify-proof",
        cmd_audit_verify_proof,
        "verify an inclusion proof offline (needs only the proof, the entry and node.pub.pem)",
        asub,
    )
    sp.add_argument("proof", metavar="PROOF_FILE", help="the inclusion proof")
    sp.add_argument("--key", required=True, metavar="NODE_PUB_PEM", help="the node's public key")
    sp.add_argument("--entry", required=True, metavar="ENTRY_FILE", help="the audit line bytes")
    sp.add_argument(
        "--key-history",
        metavar="NODE_KEYS_JSON",
        help="the node-key history (state/audit/node-keys.json) of a log whose node key was "
        "rotated; --key must be one of its keys (docs/keys.md)",
    )

    sp = add(
        "consistency",
        cmd_audit_consistency,
        "prove the log (re-verified) extends an old signed checkpoint",
        asub,
    )
    sp.add_argument(
        "old_checkpoint", metavar="OLD_CHECKPOINT_FILE", help="a signed checkpoint seen earlier"
    )
    sp.add_argument("--out", help="write the consistency proof to FILE")

    sp = add(
        "verify-consistency",
        cmd_audit_verify_consistency,
        "verify a consistency proof offline against an old checkpoint and node.pub.pem",
        asub,
    )
    sp.add_argument("proof", metavar="PROOF_FILE", help="the consistency proof")
    sp.add_argument(
        "--old", required=True, metavar="OLD_CHECKPOINT_FILE", help="the old signed checkpoint"
    )
    sp.add_argument("--key", required=True, metavar="NODE_PUB_PEM", help="the node's public key")
    sp.add_argument(
        "--key-history",
        metavar="NODE_KEYS_JSON",
        help="the node-key history of a log whose node key was rotated (docs/keys.md)",
    )
