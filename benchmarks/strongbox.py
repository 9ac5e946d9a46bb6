"""``--strongbox`` cost, all in one run of this script (root, Linux).

(a) cold confined worker: spawn -> locked down and ready (median, max), with every layer and
    without the issue-14 layers (Landlock, mount namespace)
(b) per-run cost of the hello module: warm strongbox worker (every layer; and without Landlock
    and the mount namespace, as before issue 14) vs the in-process Sandbox
(c) the runner's per-run hand-over of a tenant's (small) data root to its uid (grant_access)

    .venv/bin/python benchmarks/strongbox.py [--quick]
    .venv/bin/python benchmarks/strongbox.py --trace   # re-derive ALLOWED_SYSCALLS (strace -f)
"""

from __future__ import annotations

import hashlib
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import wasmtime

from nightcore.sandbox.engine import Sandbox
from nightcore.sandbox.strongbox import (
    ALLOWED_SYSCALLS,
    StrongboxSandbox,
    Worker,
    WorkerKey,
    WorkerOptions,
    config_to_json,
)
from nightcore.sandbox.types import EffectiveLimits, RunConfig

MIB = 1024 * 1024
LIMITS = EffectiveLimits(
    fuel=50_000_000, wall_ms=2_000, memory_bytes=4 * MIB, stack_bytes=512 * 1024, output_bytes=4096
)
HELLO = bytes(
    wasmtime.wat2wasm("""
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
""")
)
CONFIG = RunConfig(
    tenant="bench",
    module_sha256=hashlib.sha256(HELLO).hexdigest(),
    entrypoint="_start",
    argv=("bench",),
    env=(),
    preopens=(),
    limits=LIMITS,
)


OLD_LAYERS = WorkerOptions(landlock=False, mount_ns=False)


def cold_starts(n: int, options: WorkerOptions | None = None) -> list[float]:
    out = []
    for _ in range(n):
        w = Worker(WorkerKey.of(CONFIG), options or WorkerOptions())
        w.wait_ready()
        out.append(w.ready_ms)
        w.stop()
    return out


def per_run_ms(run: object, n: int) -> list[float]:
    fn = run  # Sandbox.run or StrongboxSandbox.run
    assert callable(fn)
    for _ in range(20):
        fn(HELLO, CONFIG)
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        result = fn(HELLO, CONFIG)
        samples.append((time.perf_counter() - t) * 1000)
        assert result.code == "OK", result
    return samples


def trace() -> None:
    """Run the hello module in an unfiltered worker under strace; list syscalls after lockdown."""
    with tempfile.TemporaryDirectory() as tmp:
        log = str(Path(tmp) / "strace.txt")
        w = Worker(WorkerKey.of(CONFIG), WorkerOptions(), trace_to=log)
        w.wait_ready()
        w.send({"op": "run", "seq": 1, "config": config_to_json(CONFIG)}, HELLO)
        w.receive(time.monotonic() + 20, 4096)
        w.stop()
        seen: set[str] = set()
        after = False
        for line in Path(log).read_text().splitlines():
            m = re.match(r"\d+\s+(\w+)\(", line)
            if not m:
                continue
            if m.group(1) == "getppid":  # the worker's marker: the filter would load here
                after = True
            elif after:
                seen.add(m.group(1))
    print("after lockdown:", " ".join(sorted(seen)))
    print("not in ALLOWED_SYSCALLS:", " ".join(sorted(seen - set(ALLOWED_SYSCALLS))) or "-")


def main() -> None:
    if "--trace" in sys.argv:
        trace()
        return
    quick = "--quick" in sys.argv
    for label, options in (("every layer", None), ("no Landlock/mountns", OLD_LAYERS)):
        cold = cold_starts(3 if quick else 10, options)
        print(
            f"(a) cold confined worker ready, {label:19s}: median {statistics.median(cold):.1f} "
            f"ms, max {max(cold):.1f} ms (n={len(cold)})"
        )
    n = 200 if quick else 2000
    with Sandbox(None, b"") as sb:
        local = per_run_ms(sb.run, n)
    with StrongboxSandbox(workers=1) as box:
        confined = per_run_ms(box.run, n)
    with StrongboxSandbox(workers=1, options=OLD_LAYERS) as box:
        old = per_run_ms(box.run, n)
    for name, s in (
        ("in-process Sandbox", local),
        ("strongbox, every layer", confined),
        ("strongbox, no LL/mntns", old),
    ):
        q = statistics.quantiles(s, n=20)
        print(f"(b) {name:22s}: median {statistics.median(s):.3f} ms, p95 {q[18]:.3f} ms (n={n})")
    extra = statistics.median(confined) - statistics.median(local)
    print(f"    strongbox overhead per run (every layer): {extra:.3f} ms")
    print(
        "    Landlock + mount namespace per run: "
        f"{statistics.median(confined) - statistics.median(old):+.3f} ms"
    )
    with tempfile.TemporaryDirectory() as tmp, StrongboxSandbox(workers=1) as box:
        root = Path(tmp) / "tenant"
        (root / "data").mkdir(parents=True)
        for i in range(10):
            (root / "data" / f"f{i}").write_bytes(b"x")
        grants = []
        for _ in range(n):
            t = time.perf_counter()
            box.grant_access(root, "bench")
            grants.append((time.perf_counter() - t) * 1000)
    print(
        f"(c) grant_access of a 12-entry data root: median {statistics.median(grants):.3f} ms "
        f"(n={n})"
    )


if __name__ == "__main__":
    main()
