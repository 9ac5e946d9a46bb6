"""The run path measured against bare wasmtime-py, all in one run of this script.

(a) floor: bare wasmtime-py, InstancePre + fresh Store + WASI + per-run stdout sink, hello module
(b) Night Core warm in-process runs/s of the same module: full verification, limits, durable audit
    (20 tenants per call, and 1 per call), with the sandbox alone as a decomposition
(c) Night Core with 1 vs 2 threads (20 tenants per batch)
(d) cold `nightcore run` CLI wall time for 1 and 20 tenants vs a bare `python -c` wasmtime script
(e) timeout overshoot (median, p95) for a 200 ms wall limit

    .venv/bin/python benchmarks/run.py [--quick]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nightcore import app
from nightcore.context import NodeContext
from nightcore.demo import build_tenant
from nightcore.runner.admission import verify_packages
from nightcore.runner.pipeline import Runner

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "tenants"
PASS = "benchmark-passphrase"  # noqa: S105 - throwaway benchmark keys

BARE_SCRIPT = """
import sys, wasmtime
wasm = open(sys.argv[1], "rb").read()
n = int(sys.argv[2])
engine = wasmtime.Engine()
module = wasmtime.Module(engine, wasm)
linker = wasmtime.Linker(engine)
linker.define_wasi()
pre = linker.instantiate_pre(module)
for _ in range(n):
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    out = []
    wasi.stdout_custom = lambda b: out.append(b) or len(b)
    store.set_wasi(wasi)
    pre.instantiate(store).exports(store)["_start"](store)
"""


def floor_runs_per_s(wasm: bytes, seconds: float) -> float:
    import wasmtime

    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, wasm)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    pre = linker.instantiate_pre(module)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        store = wasmtime.Store(engine)
        wasi = wasmtime.WasiConfig()
        sink: list[bytes] = []
        wasi.stdout_custom = lambda b, sink=sink: sink.append(b) or len(b)
        store.set_wasi(wasi)
        start = pre.instantiate(store).exports(store)["_start"]
        assert isinstance(start, wasmtime.Func)
        start(store)
        n += 1
    return n / (time.perf_counter() - t0)


def make_ws(root: Path, tenants: dict[str, str], fuel: int | None = None) -> NodeContext:
    """tenants: workspace tenant name -> sample to copy (optionally with another fuel limit)."""
    os.environ["NIGHTCORE_KEY_PASSPHRASE"] = PASS
    ws = app.init_workspace(root / "ws")
    key = app.keygen("pub", root / "keys", PASS.encode())
    app.trust_add_key(ws, key.public_path, scope="*")
    for name, sample in tenants.items():
        dest = ws.layout.modules_dir / name
        build_tenant(EXAMPLES / sample, dest)
        text = (dest / "manifest.toml").read_text()
        text = text.replace(f'tenant = "{sample}"', f'tenant = "{name}"')
        if fuel is not None:
            text = text.replace("fuel = 1_000_000\n", f"fuel = {fuel}\n")
        (dest / "manifest.toml").write_text(text)
        app.sign_tenant(dest, str(key.private_path))
    return ws


def warm_runs_per_s(
    ws: NodeContext, tenants: list[str], parallel: int, seconds: float, checkpoint: bool = False
) -> float:
    runner = Runner(ws)
    try:
        runner.run(tenants, parallel=parallel)  # warm: compile + cache
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            report = runner.run(tenants, parallel=parallel, checkpoint=checkpoint)
            assert report.ok
            n += len(tenants)
        return n / (time.perf_counter() - t0)
    finally:
        runner.close()


def sandbox_runs_per_s(ws: NodeContext, tenant: str, seconds: float) -> float:
    """The sandbox alone (limits, fuel, epoch deadline, WASI capabilities, capped sinks) on
    an already verified module: what the run path costs before anything is recorded."""
    from nightcore.runner.pipeline import effective_limits, prepare_preopens
    from nightcore.sandbox.types import RunConfig

    v = verify_packages(ws, [tenant])[0]
    m = v.decision.manifest
    assert m is not None
    cfg = RunConfig(
        tenant=tenant,
        module_sha256=v.decision.module_sha256,
        entrypoint=m.entrypoint,
        argv=(tenant, *m.args),
        env=m.capabilities.env,
        preopens=prepare_preopens(ws.layout, m),
        limits=effective_limits(m, ws.policy),
        deterministic=False,
        seed=0,
    )
    runner = Runner(ws)
    try:
        sandbox = runner.sandbox()
        sandbox.run(v.module, cfg)
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            assert sandbox.run(v.module, cfg).code == "OK"
            n += 1
        return n / (time.perf_counter() - t0)
    finally:
        runner.close()


def timed(cmd: list[str], repeat: int, env: dict[str, str] | None = None) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=False, capture_output=True, env=env)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def console_run_ms(ws: NodeContext, rounds: int) -> list[float]:
    """POST /api/run for one tenant against a running `nightcore serve` (warm runner): the
    path for callers that cannot afford a cold start per run."""
    import json
    import urllib.request

    from nightcore.dashboard.server import ServerThread
    from nightcore.dashboard.tokens import TokenStore, parse_expires

    token = TokenStore(ws).create(parse_expires("1h")).token
    times = []
    with ServerThread(ws, rate_limit=10_000) as server:
        for i in range(rounds + 1):
            req = urllib.request.Request(  # noqa: S310 - a loopback URL we started
                server.url + "api/run",
                data=json.dumps({"tenants": ["hello"]}).encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                method="POST",
            )
            t0 = time.perf_counter()
            with urllib.request.urlopen(req) as res:  # noqa: S310 - loopback URL we started
                assert json.loads(res.read())["ok"]
            if i:  # the first request warms the runner
                times.append(time.perf_counter() - t0)
    return times


def timed_interleaved(
    cmds: dict[str, list[str]], rounds: int, env: dict[str, str]
) -> dict[str, list[float]]:
    """Wall times of each command, one of each per round: on a shared VM the background load
    drifts by tens of ms within seconds, and interleaving spreads it evenly over the commands
    compared (ratios of medians and of minimums are both printed)."""
    out: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(rounds):
        for name, cmd in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=False, capture_output=True, env=env)
            out[name].append(time.perf_counter() - t0)
    return out


def main() -> None:
    quick = "--quick" in sys.argv
    secs = 1.0 if quick else 3.0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws1 = make_ws(root / "one", {"hello": "hello"})
        wasm = (ws1.layout.modules_dir / "hello" / "module.wasm").read_bytes()

        ws20 = make_ws(root / "twenty", {f"hello-{i:02d}": "hello" for i in range(20)})
        names = sorted(p.name for p in ws20.layout.modules_dir.iterdir())

        floor = floor_runs_per_s(wasm, secs)
        sandbox = sandbox_runs_per_s(ws1, "hello", secs)
        warm = warm_runs_per_s(ws1, ["hello"], 1, secs)
        warm_cp = warm_runs_per_s(ws1, ["hello"], 1, secs, checkpoint=True)
        t1 = warm_runs_per_s(ws20, names, 1, secs)
        t2 = warm_runs_per_s(ws20, names, 2, secs)
        print(
            "(a) bare wasmtime-py floor (InstancePre, per-run sink): "
            f"{floor:,.0f} runs/s ({1e3 / floor:.3f} ms/run)"
        )
        print(
            f"    the sandbox alone (fuel, epoch deadline, store limits, WASI capabilities, "
            f"capped sinks; nothing recorded): {sandbox:,.0f} runs/s ({1e3 / sandbox:.3f} ms/run)"
            f" = {sandbox / floor:.2f}x floor"
        )
        print(
            "(b) nightcore warm, the same module, 20 tenants per call (verify + limits + "
            "attestation + durable audit, outcomes group-committed): "
            f"{t1:,.0f} runs/s ({1e3 / t1:.2f} ms/run) = {t1 / floor:.3f}x floor (target >= 0.5x)"
        )
        print(
            f"    1 tenant per call (two fsyncs a call: admission+start, then outcome): "
            f"{warm:,.0f} runs/s ({1e3 / warm:.2f} ms/run) = {warm / floor:.3f}x floor"
        )
        print(
            f"    1 tenant per call with a signed checkpoint after every call (as the CLI does): "
            f"{warm_cp:,.0f} runs/s ({1e3 / warm_cp:.2f} ms/run)"
        )
        print(
            f"(c) nightcore 20-tenant batches: 1 thread {t1:,.0f} runs/s, 2 threads "
            f"{t2:,.0f} runs/s, scaling {t2 / t1:.2f}x (target >= 1.8x on 2 cores)"
        )
        loops = make_ws(
            root / "loops", {f"loop-{i:02d}": "fuel-burner" for i in range(8)}, fuel=500_000_000
        )
        lnames = sorted(p.name for p in loops.layout.modules_dir.iterdir())
        runner = Runner(loops)
        try:
            runner.run(lnames, parallel=1, checkpoint=False)
            c1 = []
            c2 = []
            for _ in range(3):
                t0 = time.perf_counter()
                runner.run(lnames, parallel=1, checkpoint=False)
                c1.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                runner.run(lnames, parallel=2, checkpoint=False)
                c2.append(time.perf_counter() - t0)
        finally:
            runner.close()
        print(
            f"    CPU-bound guests (8 x 500M-fuel loops): 1 thread {min(c1) * 1e3:.0f} ms, "
            f"2 threads {min(c2) * 1e3:.0f} ms, scaling {min(c1) / min(c2):.2f}x"
        )

        nc = [sys.executable, "-m", "nightcore"]
        env = dict(os.environ, NIGHTCORE_KEY_PASSPHRASE=PASS)
        hello = str(ws1.layout.modules_dir / "hello/module.wasm")
        shutil.rmtree(ws1.layout.state_dir / "cache")
        cold_compile = timed([*nc, "-w", str(ws1.root), "run"], 1, env)
        t = timed_interleaved(
            {
                "bare1": [sys.executable, "-c", BARE_SCRIPT, hello, "1"],
                "cli1": [*nc, "-w", str(ws1.root), "run"],
                "nodash": [*nc, "-w", str(ws1.root), "run", "--no-dashboard"],
                "bare20": [sys.executable, "-c", BARE_SCRIPT, hello, "20"],
                "cli20": [*nc, "-w", str(ws20.root), "run"],
                "help": [*nc, "--help"],
            },
            5 if quick else 15,
            env,
        )
        med = {k: statistics.median(v) for k, v in t.items()}
        low = {k: min(v) for k, v in t.items()}

        def vs(name: str, base: str) -> str:
            return (
                f"{med[name] * 1e3:.0f} ms (min {low[name] * 1e3:.0f}) vs {med[base] * 1e3:.0f} ms "
                f"(min {low[base] * 1e3:.0f}) = {med[name] / med[base]:.2f}x of medians, "
                f"{low[name] / low[base]:.2f}x of minimums"
            )

        print(
            "(d) cold CLI, stdout a pipe, interleaved rounds (target <= 2x for 1 tenant):\n"
            f"    1 tenant, run --no-dashboard: {vs('nodash', 'bare1')}\n"
            f"    1 tenant, run (refreshes state/dashboard.html): {vs('cli1', 'bare1')}\n"
            f"    20 tenants, run: {vs('cli20', 'bare20')}\n"
            f"    first run with an empty compile cache {cold_compile * 1e3:.0f} ms; "
            f"`nightcore --help` {med['help'] * 1e3:.0f} ms"
        )
        resident = console_run_ms(ws1, 10 if quick else 30)
        print(
            "    resident: `nightcore serve`, POST /api/run for 1 tenant (warm runner, signed "
            f"checkpoint per request): median {statistics.median(resident) * 1e3:.1f} ms, "
            f"min {min(resident) * 1e3:.1f} ms"
        )

        loop = make_ws(root / "loop", {"infinite-loop": "infinite-loop"})
        runner = Runner(loop)
        over = []
        try:
            for _ in range(5 if quick else 15):
                report = runner.run(["infinite-loop"])
                r = report.runs[0]
                assert r.code == "TIMEOUT", r.code
                over.append(r.wall_ms - 200.0)
        finally:
            runner.close()
        over.sort()
        p95 = over[min(len(over) - 1, round(0.95 * (len(over) - 1)))]
        print(
            f"(e) timeout overshoot for a 200 ms limit over {len(over)} runs: median "
            f"{statistics.median(over):.1f} ms, p95 {p95:.1f} ms (target p95 <= 20 ms)"
        )


if __name__ == "__main__":
    main()
