"""Resource bounds of issue 14 (docs/limits.md), all in one run of this script.

(a) per-run cost of a *cached* module with the bounds vs without them, measured in the same
    run: the in-process sandbox as built (bounded compile, disk/descriptor monitor) against
    the same sandbox with compilation in-process and no monitor registration; a module
    without grants and one with a read-write grant holding 20 files;
(b) a cache miss: compile in the bounded child vs in-process (the price a new module pays
    once; later runs load the artifact from the memory or authenticated disk cache);
(c) overshoot: how far a 2 GiB writer (disk_bytes = 1 MiB), an inode bomb (disk_files = 200)
    and a descriptor bomb (open_files = 64) got before they were stopped.

    .venv/bin/python benchmarks/limits.py [--quick]
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import wasmtime

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.hostile_tenants import big_writer, compile_bomb, fd_bomb, inode_bomb

from nightcore.sandbox.engine import Sandbox
from nightcore.sandbox.types import EffectiveLimits, Preopen, RunConfig

MIB = 1024 * 1024
LIMITS = EffectiveLimits(
    fuel=10**12, wall_ms=30_000, memory_bytes=4 * MIB, stack_bytes=512 * 1024, output_bytes=4096
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


def _config(module: bytes, grant: Path | None, **limits: int) -> RunConfig:
    return RunConfig(
        tenant="bench",
        module_sha256=hashlib.sha256(module).hexdigest(),
        entrypoint="_start",
        argv=("bench",),
        env=(),
        preopens=(Preopen(grant, "data", True),) if grant is not None else (),
        limits=dataclasses.replace(LIMITS, **limits),
    )


def _unbounded(sb: Sandbox) -> Sandbox:
    """The same sandbox without the bounds: in-process compile, no monitor registration."""
    sb._bounded_compile = False
    sb._track = lambda config, interrupt: (interrupt or _Interrupt(), None)  # type: ignore[method-assign]
    return sb


def _Interrupt() -> Any:
    from nightcore.sandbox.types import Interrupt

    return Interrupt()


def _per_run_us(sb: Sandbox, cfg: RunConfig, module: bytes, n: int) -> list[float]:
    sb.run(module, cfg)  # warm: compiled and cached
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        res = sb.run(module, cfg)
        out.append((time.perf_counter() - t0) * 1e6)
        assert res.code == "OK" and res.cache == "hit", (res.code, res.detail)
    return out


def cached_runs(n: int) -> None:
    print(f"(a) per-run cost of a cached module, {n} runs each, interleaved (median / p90 us)")
    with tempfile.TemporaryDirectory() as tmp:
        grant = Path(tmp) / "data"
        grant.mkdir()
        for i in range(20):
            (grant / f"f{i}").write_bytes(b"x" * 100)
        with Sandbox(None, b"") as bounded, _unbounded(Sandbox(None, b"")) as plain:
            for label, g in (("no grant", None), ("rw grant, 20 files", grant)):
                cfg = _config(HELLO, g)
                a: list[float] = []
                b: list[float] = []
                for _ in range(5):  # interleave so machine load hits both alike
                    a += _per_run_us(bounded, cfg, HELLO, n // 5)
                    b += _per_run_us(plain, cfg, HELLO, n // 5)
                ma, mb = statistics.median(a), statistics.median(b)
                pa = statistics.quantiles(a, n=10)[-1]
                pb = statistics.quantiles(b, n=10)[-1]
                print(
                    f"    {label:20s} with bounds {ma:8.0f} / {pa:8.0f}   without {mb:8.0f} / "
                    f"{pb:8.0f}   ratio {ma / mb:5.2f}  (+{ma - mb:.0f} us)"
                )


def _variant(i: int) -> bytes:
    """A distinct small module (a cache miss each)."""
    return bytes(
        wasmtime.wat2wasm(
            f'(module (memory (export "memory") 1) (data (i32.const 0) "v{i}")'
            ' (func (export "_start")))'
        )
    )


def cache_miss(n: int) -> None:
    print(f"(b) cache misses (median of {n}, ms): bounded compile process vs in-process")
    first: list[float] = []
    inproc_first: list[float] = []
    for _ in range(n):
        with Sandbox(None, b"") as sb:
            t0 = time.perf_counter()
            assert sb.run(HELLO, _config(HELLO, None)).cache == "miss"
            first.append((time.perf_counter() - t0) * 1000)
        with _unbounded(Sandbox(None, b"")) as sb:
            t0 = time.perf_counter()
            assert sb.run(HELLO, _config(HELLO, None)).cache == "miss"
            inproc_first.append((time.perf_counter() - t0) * 1000)
    warm: list[float] = []
    inproc: list[float] = []
    with Sandbox(None, b"") as sb, _unbounded(Sandbox(None, b"")) as plain:
        sb.run(HELLO, _config(HELLO, None))  # the compile process is up
        for i in range(n):
            for box, out in ((sb, warm), (plain, inproc)):
                module = _variant(i)
                t0 = time.perf_counter()
                assert box.run(module, _config(module, None)).cache == "miss"
                out.append((time.perf_counter() - t0) * 1000)
    mf, mif = statistics.median(first), statistics.median(inproc_first)
    mw, mi = statistics.median(warm), statistics.median(inproc)
    print(f"    first miss of a sandbox (starts the process) {mf:7.1f}   in-process {mif:7.1f}")
    print(f"    later misses (process kept)                  {mw:7.1f}   in-process {mi:7.1f}")


def overshoot(n: int) -> None:
    print(f"(c) overshoot before the stop (tick 10 ms), worst of {n}")
    worst = {"bytes": 0, "entries": 0, "fds": 0}
    with Sandbox(None, b"") as sb:
        for _ in range(n):
            with tempfile.TemporaryDirectory() as tmp:
                for kind, wat, lim in (
                    ("bytes", big_writer(2 << 30), {"disk_bytes": MIB}),
                    ("entries", inode_bomb(100_000), {"disk_files": 200}),
                    ("fds", fd_bomb(20_000), {"open_files": 64}),
                ):
                    grant = Path(tmp) / kind
                    grant.mkdir()
                    module = bytes(wasmtime.wat2wasm(wat))
                    res = sb.run(module, _config(module, grant, **lim))
                    if kind == "bytes":
                        got = sum(p.stat().st_size for p in grant.iterdir())
                    elif kind == "entries":
                        got = len(list(grant.iterdir()))
                    else:
                        m = re.search(r"held (\d+) descriptors", res.detail)
                        got = int(m.group(1)) if m else -1
                    worst[kind] = max(worst[kind], got)
                    assert res.code in ("DISK_LIMIT", "FD_LIMIT"), (res.code, res.detail)
    print(f"    2 GiB writer, disk_bytes = 1 MiB:   {worst['bytes'] / MIB:8.1f} MiB written")
    print(f"    inode bomb,  disk_files = 200:     {worst['entries']:8d} entries created")
    print(f"    fd bomb,     open_files = 64:      {worst['fds']:8d} descriptors held at the look")
    start = time.perf_counter()
    module = compile_bomb(200_000)
    with Sandbox(None, b"") as sb:
        res = sb.run(module, _config(module, None, compile_ms=500))
    print(
        f"    compile bomb (200,000 functions), compile_ms = 500: {res.code} after "
        f"{(time.perf_counter() - start) * 1000:.0f} ms"
    )


def main() -> None:
    quick = "--quick" in sys.argv
    cached_runs(100 if quick else 500)
    cache_miss(3 if quick else 10)
    overshoot(2 if quick else 5)


if __name__ == "__main__":
    main()
