"""Audit log and transparency log: durable appends, proofs, full verification; same-run baselines.

Prints, beside each target:

- durable appends/s (``AuditLog.append``: one ``write`` + ``fsync`` per event) with one writer
  and with two writer processes sharing the log; batched ``append_many`` for reference;
- inclusion-proof generation and verification time at 10^4, 10^5 and 10^6 leaves
  (``TreeStore`` built from synthetic leaf hashes), and the cost of loading ``tree.bin``;
- full ``audit verify`` (chain + tree + checkpoints, :func:`verify_log`) of 10^6 realistic lines,
  in MB/s, beside bare ``hashlib`` over the same bytes (one SHA-256 of the file, and one per
  line: the floor of any per-line chain check) and the reference single-process checker
  ``verify_chain`` (measured on a 10^5-line prefix);
- the incremental tree sync after the log grew by one line, at 10^6 lines.

    .venv/bin/python benchmarks/audit.py            # everything (10^6 parts take ~1 minute)
    .venv/bin/python benchmarks/audit.py --quick    # 10^4 and 10^5 only
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nightcore.audit import merkle
from nightcore.audit.log import ZERO_HASH, AuditLog, Event, verify_chain
from nightcore.audit.tree import LogTree
from nightcore.audit.verify import verify_log
from nightcore.canonical import canonical

TARGET_APPENDS_PER_S = 5_000
TARGET_PROOF_MS = 1.0
TARGET_VERIFY_S = 10.0

WRITER = """
import sys, time
from pathlib import Path
from nightcore.audit.log import AuditLog
log = AuditLog(Path(sys.argv[1]), "bench-" + sys.argv[2])
n = int(sys.argv[3])
while time.time() < float(sys.argv[4]):
    time.sleep(0.001)
t = time.perf_counter()
for i in range(n):
    log.append("bench", {"w": sys.argv[2], "i": i, "code": "OK"}, tenant="bench")
print(time.perf_counter() - t)
"""


def line(target: float, value: float, unit: str, *, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    rel = ">=" if higher_is_better else "<="
    return f"{value:,.3f} {unit}  (target {rel} {target:,} {unit}: {'met' if ok else 'MISSED'})"


# -- appends -------------------------------------------------------------------------------


def bench_appends(root: Path, n: int) -> None:
    print(f"\n== durable appends (each fsync'd before append returns), {n} events ==")
    log = AuditLog(root / "one", "bench")
    log.append("warmup", {})
    t = time.perf_counter()
    for i in range(n):
        log.append("bench", {"i": i, "code": "OK"}, tenant="bench")
    one = n / (time.perf_counter() - t)
    target = line(TARGET_APPENDS_PER_S, one, "appends/s", higher_is_better=True)
    print(f"1 writer:            {target}")

    two_dir = root / "two"
    AuditLog(two_dir, "bench").append("warmup", {})
    start_at = time.time() + 0.5  # both start together, after interpreter start-up
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(two_dir), str(w), str(n), str(start_at)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(2)
    ]
    times = [float(p.communicate()[0]) for p in procs]
    two = 2 * n / max(times)
    print(f"2 writer processes:  {two:,.0f} appends/s in total ({two / 2:,.0f} each)")
    verify_chain(iter((two_dir / "audit.jsonl").read_bytes().splitlines(keepends=True)))

    batch = AuditLog(root / "batch", "bench")
    t = time.perf_counter()
    for b in range(n // 100):
        batch.append_many([Event("bench", {"i": b * 100 + k}, "bench") for k in range(100)])
    print(f"append_many(100):    {n // 100 * 100 / (time.perf_counter() - t):,.0f} events/s")

    fd = os.open(root / "bare", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    payload = b"x" * 300 + b"\n"
    t = time.perf_counter()
    for _ in range(n):
        os.write(fd, payload)
        os.fsync(fd)
    bare = n / (time.perf_counter() - t)
    os.close(fd)
    print(f"bare write+fsync:    {bare:,.0f} /s  (Night Core at {one / bare:.0%} of the floor)")


# -- proofs --------------------------------------------------------------------------------


def bench_proofs(sizes: list[int]) -> None:
    print("\n== inclusion proofs (TreeStore over synthetic leaves) ==")
    rng = random.Random(7)
    for size in sizes:
        leaves = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(size)]
        t = time.perf_counter()
        tree = merkle.TreeStore.from_leaf_hashes(leaves)
        build = time.perf_counter() - t
        blob = tree.to_bytes()
        t = time.perf_counter()
        merkle.TreeStore.from_bytes(blob)
        load = time.perf_counter() - t
        root = tree.root()
        idx = [rng.randrange(size) for _ in range(2000)]
        t = time.perf_counter()
        proofs = [tree.inclusion_proof(i) for i in idx]
        gen_ms = (time.perf_counter() - t) / len(idx) * 1e3
        t = time.perf_counter()
        for i, p in zip(idx, proofs, strict=True):
            merkle.verify_inclusion(leaves[i], i, size, p, root)
        ver_ms = (time.perf_counter() - t) / len(idx) * 1e3
        print(
            f"{size:>9,} leaves: proof "
            + line(TARGET_PROOF_MS, gen_ms, "ms", higher_is_better=False)
            + f"; verify {ver_ms:.3f} ms; build {build:.2f} s; load tree.bin {load:.2f} s"
        )


# -- full verification ---------------------------------------------------------------------


def realistic_record(i: int, prev: str, node: str) -> dict[str, object]:
    tenant = f"tenant-{i % 97:02d}"
    kind = i % 4
    if kind == 0:
        data: dict[str, object] = {
            "code": "OK",
            "key_id": hashlib.sha256(b"publisher").hexdigest(),
            "module_sha256": hashlib.sha256(tenant.encode()).hexdigest(),
            "reason": "signature, digest and policy checks passed",
            "ok": True,
        }
        event = "verify"
    elif kind == 1:
        data = {"run_id": f"r{i:012x}", "module_sha256": hashlib.sha256(b"m").hexdigest()}
        event = "run_start"
    elif kind == 2:
        data = {
            "run_id": f"r{i - 1:012x}",
            "code": "OK",
            "exit_code": 0,
            "fuel_used": 1_234_567 + i,
            "wall_ms": 3 + i % 50,
            "stdout_sha256": hashlib.sha256(b"hello\n").hexdigest(),
            "stderr_sha256": hashlib.sha256(b"").hexdigest(),
        }
        event = "run_outcome"
    else:
        data = {"tenant": tenant, "cache": "hit", "engine": "wasmtime-50.0.1"}
        event = "admit"
    return {
        "v": 1,
        "seq": i,
        "ts": f"2026-11-28T21:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}000Z",
        "node": node,
        "event": event,
        "tenant": tenant,
        "data": data,
        "prev": prev,
    }


def write_log(path: Path, n: int) -> float:
    """``n`` canonical, correctly chained lines, written directly (the writer's format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    node = hashlib.sha256(b"node").hexdigest()
    prev = ZERO_HASH
    t = time.perf_counter()
    with path.open("wb") as fh:
        chunk: list[bytes] = []
        for i in range(n):
            raw = canonical(realistic_record(i, prev, node))
            prev = hashlib.sha256(raw).hexdigest()
            chunk.append(raw + b"\n")
            if len(chunk) >= 50_000:
                fh.write(b"".join(chunk))
                chunk = []
        fh.write(b"".join(chunk))
    return time.perf_counter() - t


def bench_verify(root: Path, n: int, reference_lines: int) -> None:
    print(f"\n== full verification of {n:,} realistic lines ==")
    audit_dir = root / f"verify-{n}"
    log = audit_dir / "audit.jsonl"
    gen = write_log(log, n)
    data = log.read_bytes()
    mb = len(data) / 1e6
    print(f"log: {mb:,.0f} MB, {len(data) / n:.0f} B/line (generated in {gen:.1f} s)")

    t = time.perf_counter()
    hashlib.sha256(data).digest()
    bare_file = time.perf_counter() - t
    t = time.perf_counter()
    for raw in data.splitlines():
        hashlib.sha256(raw).digest()
    bare_lines = time.perf_counter() - t
    del data

    t = time.perf_counter()
    report = verify_log(audit_dir, None)
    full = time.perf_counter() - t
    assert report.ok and report.entries == n, report.to_dict()
    t = time.perf_counter()
    verify_log(audit_dir, None, workers=1)
    single = time.perf_counter() - t

    with log.open("rb") as fh:
        head = [fh.readline() for _ in range(min(reference_lines, n))]
    t = time.perf_counter()
    verify_chain(iter(head))
    ref = (time.perf_counter() - t) * n / len(head)

    print("verify_log (parallel):   " + line(TARGET_VERIFY_S, full, "s", higher_is_better=False))
    print(f"                         {mb / full:,.0f} MB/s, {n / full:,.0f} lines/s")
    print(f"verify_log (1 process):  {single:.2f} s, {mb / single:,.0f} MB/s")
    print(
        f"verify_chain (reference, extrapolated from {len(head):,} lines): {ref:.2f} s, "
        f"{mb / ref:,.0f} MB/s"
    )
    print(f"bare sha256 of the file: {bare_file:.2f} s, {mb / bare_file:,.0f} MB/s")
    print(f"bare sha256 per line:    {bare_lines:.2f} s, {mb / bare_lines:,.0f} MB/s")
    print(
        f"ratios: verify_log / sha256(file) = {full / bare_file:.1f}x, "
        f"/ sha256(per line) = {full / bare_lines:.1f}x; verify_chain / verify_log = "
        f"{ref / full:.1f}x"
    )

    tree = LogTree(audit_dir)
    t = time.perf_counter()
    tree.sync()
    rebuild = time.perf_counter() - t
    AuditLog(audit_dir, "bench").append("bench", {"after": True})
    t = time.perf_counter()
    tree.sync()
    warm = time.perf_counter() - t
    AuditLog(audit_dir, "bench").append("bench", {"after": 2})
    t = time.perf_counter()
    LogTree(audit_dir).sync()
    cold = time.perf_counter() - t
    print(
        f"tree sync at {n:,}: first build {rebuild:.2f} s; +1 line {warm * 1e3:.1f} ms "
        f"(tree in memory), {cold:.2f} s (new process: loads tree.bin)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the 10^6 parts")
    ap.add_argument("--appends", type=int, default=3000, help="events per append benchmark")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="nc-bench-audit-") as tmp:
        root = Path(tmp)
        bench_appends(root, args.appends)
        bench_proofs([10**4, 10**5] if args.quick else [10**4, 10**5, 10**6])
        bench_verify(root, 10**5 if args.quick else 10**6, 10**5)


if __name__ == "__main__":
    main()
