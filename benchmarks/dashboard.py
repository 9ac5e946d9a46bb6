"""Dashboard: report build time and HTML size at scale, and the live console's refresh cost.

For 100 and 10,000 tenants with 10^5 runs (each run is an ``admit``, ``run_start`` and
``run_outcome`` audit line, and a row in the SQLite run index, synthesised directly; one
``modules/<tenant>/manifest.toml`` per tenant; a signed checkpoint at the end), prints:

- ``build_report`` wall time with each audit check: ``quick`` (what ``auto`` picks above
  16 MiB of log: hash chain after the checkpoint + Merkle root vs the signed checkpoint, in
  the same pass), ``none`` (the scan alone), and ``full`` (``tlog.verify_log``, as
  ``nightcore audit verify``) for reference;
- the HTML size (the tenant table is capped at 500 rows, problems first);
- the live console: first snapshot, then a refresh after one more run (3 new lines).

    .venv/bin/python benchmarks/dashboard.py            # 100 and 10,000 tenants, 10^5 runs
    .venv/bin/python benchmarks/dashboard.py --big      # also 10,000 tenants, 10^6 audit lines
    .venv/bin/python benchmarks/dashboard.py --quick    # 10^4 runs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nightcore import app
from nightcore.audit.tlog import TransparencyLog
from nightcore.context import NodeContext
from nightcore.dashboard.report import write_report
from nightcore.dashboard.server import LiveState
from nightcore.store.index import RunIndex

TARGET_BUILD_S = 5.0  # "within a few seconds"
PASS = "benchmark-passphrase"  # noqa: S105 - throwaway benchmark keys
LIMITS = {
    "fuel": 100_000_000,
    "memory_bytes": 16_777_216,
    "output_bytes": 65_536,
    "stack_bytes": 524_288,
    "wall_ms": 2000,
}
CODES = ("OK",) * 12 + ("TIMEOUT", "FUEL_EXHAUSTED", "EXIT_NONZERO", "MEMORY_LIMIT")


def dumps(rec: dict[str, Any]) -> bytes:
    # These records hold no floats and only ASCII keys: this *is* their RFC 8785 form.
    return json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def synthesize(ws: NodeContext, tenants: int, runs: int) -> tuple[int, int]:
    """Append ``runs`` runs over ``tenants`` tenants; returns (audit lines, bytes)."""
    log = ws.layout.state_dir / "audit" / "audit.jsonl"
    head = log.read_bytes().splitlines()
    prev, seq = hashlib.sha256(head[-1]).hexdigest(), len(head)
    node, key = ws.node_key_id(), hashlib.sha256(b"publisher").hexdigest()
    rows: list[dict[str, Any]] = []
    digests = [hashlib.sha256(f"t{i}".encode()).hexdigest() for i in range(tenants)]
    for i in range(tenants):
        d = ws.layout.modules_dir / f"tenant-{i:05d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "manifest.toml").write_text(
            f'schema = 1\ntenant = "tenant-{i:05d}"\nversion = "1.0.0"\n'
            f'description = "synthetic tenant {i}"\n'
        )
    with log.open("ab") as fh:
        chunk: list[bytes] = []
        for i in range(runs):
            t = i % tenants
            tenant = f"tenant-{t:05d}"
            day = 1 + i * 27 // runs
            clock = f"{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}"
            ts = f"2026-11-{day:02d}T{clock}.{i % 10**6:06d}Z"
            run_id = f"202611{day:02d}T000000{i % 10**6:06d}-{tenant}-{i:08x}"
            code = CODES[(i * 7 + t) % len(CODES)]
            wall_us = 800 + (i * 13 + t * 7) % 40_000
            outcome: dict[str, Any] = {
                "cache": "hit",
                "code": code,
                "detail": "" if code == "OK" else f"synthetic {code.lower()}",
                "exit_code": 0 if code == "OK" else None,
                "fuel_used": 1000 + (i * 37 + t * 101) % 900_000,
                "key_id": key,
                "limits": LIMITS,
                "memory_bytes": 65536 * (1 + t % 8),
                "module_sha256": digests[t],
                "output_bytes": 22 + t % 100,
                "output_truncated": False,
                "run_id": run_id,
                "stderr_sha256": hashlib.sha256(b"").hexdigest(),
                "stdout_sha256": hashlib.sha256(b"hello").hexdigest(),
                "wall_us": wall_us,
            }
            events = (
                (
                    "admit",
                    {
                        "capabilities": {"env": {}, "fs": [], "net": []},
                        "code": "OK",
                        "deterministic": False,
                        "envelope_sha256": digests[t],
                        "key_id": key,
                        "limits": LIMITS,
                        "module_sha256": digests[t],
                        "reason": "signature, digest, manifest and policy verified",
                        "run_id": run_id,
                        "seed": 0,
                    },
                ),
                ("run_start", {"module_sha256": digests[t], "run_id": run_id}),
                ("run_outcome", outcome),
            )
            for event, data in events:
                line = dumps(
                    {
                        "data": data,
                        "event": event,
                        "node": node,
                        "prev": prev,
                        "seq": seq,
                        "tenant": tenant,
                        "ts": ts,
                        "v": 1,
                    }
                )
                prev, seq = hashlib.sha256(line).hexdigest(), seq + 1
                chunk.append(line + b"\n")
            rows.append(
                {
                    "run_id": run_id,
                    "tenant": tenant,
                    "code": code,
                    "exit_code": outcome["exit_code"],
                    "fuel_used": outcome["fuel_used"],
                    "wall_ms": wall_us / 1000,
                    "memory_bytes": outcome["memory_bytes"],
                    "output_bytes": outcome["output_bytes"],
                    "key_id": key,
                    "module_sha256": digests[t],
                    "ts": ts,
                    "audit_seq": seq - 1,
                }
            )
            if len(chunk) >= 60_000:
                fh.write(b"".join(chunk))
                chunk = []
        fh.write(b"".join(chunk))
    index = RunIndex(ws.layout.state_dir / "nightcore.db")
    try:
        index.add(rows)
    finally:
        index.close()
    return seq, log.stat().st_size


def one_more_run(ws: NodeContext) -> None:
    audit = ws.audit()
    limits = LIMITS
    audit.append("admit", {"code": "OK", "limits": limits, "run_id": "x"}, "tenant-00000")
    audit.append("run_start", {"run_id": "x"}, "tenant-00000")
    audit.append("run_outcome", {"code": "OK", "run_id": "x", "limits": limits}, "tenant-00000")


def scenario(root: Path, tenants: int, runs: int) -> None:
    os.environ["NIGHTCORE_KEY_PASSPHRASE"] = PASS
    ws = app.init_workspace(root / f"ws-{tenants}-{runs}")
    t = time.perf_counter()
    lines, size = synthesize(ws, tenants, runs)
    made = time.perf_counter() - t
    t = time.perf_counter()
    cp = TransparencyLog(
        ws.layout, key_name=ws.config.node_name, signer=ws.node_signer, audit=ws.audit
    ).checkpoint("benchmark")
    signed = time.perf_counter() - t
    print(
        f"\n== {tenants:,} tenants, {runs:,} runs: {lines:,} audit lines, {size / 1e6:,.0f} MB "
        f"(synthesised in {made:.1f} s; checkpoint {cp.size:,} signed in {signed:.1f} s) =="
    )
    for mode in ("quick", "none", "full"):
        t = time.perf_counter()
        built = write_report(ws, root / f"report-{tenants}-{mode}.html", verify=mode)
        took = time.perf_counter() - t
        v = built.snapshot.audit.verify
        ok = "n/a" if v.ok is None else "OK" if v.ok else f"FAILED {v.code}"
        met = "met" if took <= TARGET_BUILD_S else "MISSED"
        target = f"(target <= {TARGET_BUILD_S:g} s: {met})" if mode != "full" else "(reference)"
        print(
            f"build --verify {mode:<5} {took:6.2f} s  {target:<27}"
            f" html {built.size / 1024:7.0f} KiB  rows {len(built.snapshot.shown):>4} of "
            f"{len(built.snapshot.tenants):,}  audit check: {ok}"
        )
    live = LiveState(ws)
    t = time.perf_counter()
    live.snapshot()
    first = time.perf_counter() - t
    one_more_run(ws)
    t = time.perf_counter()
    live.snapshot()
    again = time.perf_counter() - t
    print(f"live console: first snapshot {first:.2f} s, refresh after one more run {again:.3f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="10^4 runs instead of 10^5")
    parser.add_argument("--big", action="store_true", help="also a 10^6-line audit log")
    args = parser.parse_args()
    runs = 10_000 if args.quick else 100_000
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpu(s)")
    with tempfile.TemporaryDirectory(prefix="nightcore-bench-dash-") as tmp:
        root = Path(tmp)
        scenario(root, 100, runs)
        scenario(root, 10_000, runs)
        if args.big:
            scenario(root, 10_000, 333_333)
    return 0


if __name__ == "__main__":
    sys.exit(main())
