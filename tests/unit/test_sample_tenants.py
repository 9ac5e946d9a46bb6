"""The sample tenants in examples/tenants/ and tools/build_tenants.py.

Every manifest must pass the strict schema, every module must compile, and the tenants that
end by themselves are run here with plain wasmtime + WASI (no Night Core runtime) to check
that they do what expected.toml says. The resource-limit tenants are only checked to trap
the way they are meant to under plain wasmtime limits; the runtime's own tests check the
outcome codes it reports for them.
"""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import wasmtime

REPO = Path(__file__).resolve().parents[2]
TENANTS = REPO / "examples" / "tenants"

try:
    from nightcore.module.manifest import Manifest, parse_manifest_toml
except ModuleNotFoundError:  # a checkout that is not pip-installed: use src/ directly
    sys.path.insert(0, str(REPO / "src"))
    from nightcore.module.manifest import Manifest, parse_manifest_toml


def _load_build_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_tenants", REPO / "tools" / "build_tenants.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_tenants = _load_build_tool()

REQUIRED_TENANTS = {
    "hello",
    "env-reader",
    "fs-writer",
    "fs-escaper",
    "infinite-loop",
    "fuel-burner",
    "memory-bomb",
    "deep-recursion",
    "output-flood",
    "exit-code",
    "wordcount",
}
OUTCOME_CODES = {
    "OK",
    "EXIT_NONZERO",
    "FUEL_EXHAUSTED",
    "TIMEOUT",
    "MEMORY_LIMIT",
    "STACK_OVERFLOW",
    "OUTPUT_LIMIT",
    "TRAP",
}
# The most generous node policy the samples are meant to run under.
NODE_MAXIMA = {
    "fuel": 1_000_000_000_000,
    "wall_ms": 10_000,
    "memory_bytes": 268_435_456,
    "stack_bytes": 1_048_576,
    "output_bytes": 1_048_576,
}
# Tenants that end by themselves (OK / EXIT_NONZERO): run here for real.
SELF_ENDING = ("hello", "env-reader", "fs-writer", "fs-escaper", "exit-code", "wordcount")

TENANT_DIRS: list[Path] = build_tenants.tenant_dirs()
TENANT_NAMES = [p.name for p in TENANT_DIRS]
EXPECTED: dict[str, dict[str, Any]] = tomllib.loads(
    (TENANTS / "expected.toml").read_text(encoding="utf-8")
)


def manifest_of(name: str) -> Manifest:
    return parse_manifest_toml((TENANTS / name / "manifest.toml").read_bytes())


def wasm_of(name: str) -> bytes:
    data: bytes = build_tenants.build_wasm(TENANTS / name)
    return data


# ---- running a module with plain wasmtime ----


@dataclass
class Outcome:
    exit_code: int | None  # None: the guest trapped
    trap: wasmtime.Trap | None
    stdout: bytes
    stderr: bytes
    memory_pages: int


def run_plain(
    wasm: bytes,
    *,
    tmp: Path,
    argv: Sequence[str] = ("tenant",),
    env: Sequence[tuple[str, str]] = (),
    preopens: Sequence[tuple[Path, str, bool]] = (),
    fuel: int = 1_000_000_000,
    memory_bytes: int | None = None,
    stack_bytes: int | None = None,
) -> Outcome:
    """Run ``_start`` once under a fuel budget, stdout/stderr captured to files."""
    config = wasmtime.Config()
    config.consume_fuel = True
    if stack_bytes is not None:
        config.max_wasm_stack = stack_bytes
    engine = wasmtime.Engine(config)
    module = wasmtime.Module(engine, wasm)
    store = wasmtime.Store(engine)
    store.set_fuel(fuel)
    if memory_bytes is not None:
        store.set_limits(memory_size=memory_bytes)
    out, err = tmp / "stdout", tmp / "stderr"
    wasi = wasmtime.WasiConfig()
    wasi.argv = list(argv)
    wasi.env = [list(kv) for kv in env]
    wasi.stdout_file = str(out)
    wasi.stderr_file = str(err)
    for host, guest, writable in preopens:
        wasi.preopen_dir(str(host), guest, writable)
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    instance = linker.instantiate(store, module)
    start = instance.exports(store)["_start"]
    assert isinstance(start, wasmtime.Func)
    exit_code: int | None = 0
    trap: wasmtime.Trap | None = None
    try:
        start(store)
    except wasmtime.ExitTrap as exc:
        exit_code = exc.code
    except wasmtime.Trap as exc:
        exit_code, trap = None, exc
    memory = instance.exports(store)["memory"]
    assert isinstance(memory, wasmtime.Memory)
    return Outcome(exit_code, trap, out.read_bytes(), err.read_bytes(), memory.size(store))


def tenant_root(tmp: Path, name: str) -> Path:
    """The runtime's layout: <workspace>/state/tenants/<tenant>/<preopen>."""
    return tmp / "workspace" / "state" / "tenants" / name


def run_tenant(name: str, tmp: Path, files: dict[str, bytes] | None = None) -> Outcome:
    """Run a tenant the way its manifest asks (args, env, preopens), plain wasmtime."""
    m = manifest_of(name)
    root = tenant_root(tmp, name)
    preopens = []
    for grant in m.capabilities.fs:
        host = root / grant.path
        host.mkdir(parents=True, exist_ok=True)
        preopens.append((host, grant.path, grant.mode == "rw"))
    for rel, content in (files or {}).items():
        (root / rel).write_bytes(content)
    io = tmp / "io"
    io.mkdir(exist_ok=True)
    return run_plain(
        wasm_of(name),
        tmp=io,
        argv=(name, *m.args),
        env=m.capabilities.env,
        preopens=preopens,
        memory_bytes=m.limits.memory_bytes,
        stack_bytes=m.limits.stack_bytes,
    )


def files_under(path: Path) -> Iterator[str]:
    for p in sorted(path.rglob("*")):
        yield p.relative_to(path).as_posix()


# ---- the set of tenants and expected.toml ----


def test_every_required_tenant_is_present() -> None:
    assert set(TENANT_NAMES) >= REQUIRED_TENANTS
    assert set(EXPECTED) == set(TENANT_NAMES)


@pytest.mark.parametrize("name", sorted(REQUIRED_TENANTS))
def test_expected_entry_is_well_formed(name: str) -> None:
    entry = EXPECTED[name]
    assert set(entry) <= {"code", "exit_code", "stdout_contains", "stdout_exact"}
    assert entry["code"] in OUTCOME_CODES
    if entry["code"] == "OK":
        assert entry.get("exit_code") == 0
    if entry["code"] == "EXIT_NONZERO":
        assert entry.get("exit_code", 0) != 0
    if "stdout_exact" in entry:
        assert entry["stdout_contains"] in entry["stdout_exact"]


# ---- manifests and modules ----


@pytest.mark.parametrize("name", TENANT_NAMES)
def test_manifest_is_valid_and_within_node_policy(name: str) -> None:
    m = manifest_of(name)
    assert m.tenant == name
    assert m.entrypoint == "_start"
    limits = m.limits.to_dict()
    assert set(limits) == set(NODE_MAXIMA), "samples set every limit explicitly"
    for key, value in limits.items():
        assert value <= NODE_MAXIMA[key], key


@pytest.mark.parametrize("name", TENANT_NAMES)
def test_module_compiles_and_exports_the_wasi_entry_points(name: str) -> None:
    engine = wasmtime.Engine()
    wasm = wasm_of(name)
    wasmtime.Module.validate(engine, wasm)
    module = wasmtime.Module(engine, wasm)
    exports = {e.name: e.type for e in module.exports}
    start = exports["_start"]
    assert isinstance(start, wasmtime.FuncType)
    assert start.params == [] and start.results == []
    memory = exports["memory"]
    assert isinstance(memory, wasmtime.MemoryType)
    # The initial memory must fit the tenant's own memory limit.
    limit = manifest_of(name).limits.memory_bytes
    assert limit is not None and memory.limits.min * 65_536 <= limit
    assert {i.module for i in module.imports} <= {"wasi_snapshot_preview1"}


@pytest.mark.parametrize("name", TENANT_NAMES)
def test_source_layout(name: str) -> None:
    d = TENANTS / name
    build_tenants.check_tenant_dir(d)
    if (d / "main.c").is_file():
        assert wasm_of(name) == (d / "module.wasm").read_bytes()
    else:
        assert not (d / "module.wasm").exists(), "WAT tenants are assembled, not committed"


def test_build_tool_lays_out_a_modules_dir(tmp_path: Path) -> None:
    out = tmp_path / "modules"
    assert build_tenants.main(["--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(TENANT_NAMES)
    for name in TENANT_NAMES:
        assert sorted(p.name for p in (out / name).iterdir()) == ["manifest.toml", "module.wasm"]
        assert (out / name / "module.wasm").read_bytes() == wasm_of(name)
        assert (out / name / "manifest.toml").read_bytes() == (
            TENANTS / name / "manifest.toml"
        ).read_bytes()


def test_build_tool_refuses_an_unknown_tenant(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_tenants.main(["--list", "--tenant", "no-such-tenant"]) == 2
    assert "unknown tenant" in capsys.readouterr().err


# ---- tenants that end by themselves, run for real ----


@pytest.mark.parametrize("name", SELF_ENDING)
def test_self_ending_tenant_matches_expected(name: str, tmp_path: Path) -> None:
    entry = EXPECTED[name]
    result = run_tenant(name, tmp_path)
    assert result.trap is None, str(result.trap)
    assert result.exit_code == entry["exit_code"], result.stdout
    stdout = result.stdout.decode()
    assert entry["stdout_contains"] in stdout
    if "stdout_exact" in entry:
        assert stdout == entry["stdout_exact"]
    assert result.stderr == b""


def test_hello(tmp_path: Path) -> None:
    result = run_tenant("hello", tmp_path)
    assert (result.exit_code, result.stdout) == (0, b"hello from night core\n")


def test_exit_code(tmp_path: Path) -> None:
    result = run_tenant("exit-code", tmp_path)
    assert result.exit_code == 3


def test_env_reader_prints_exactly_the_granted_environment(tmp_path: Path) -> None:
    result = run_plain(
        wasm_of("env-reader"), tmp=tmp_path, env=[("A", "1"), ("B_2", "x=y z"), ("EMPTY", "")]
    )
    assert result.exit_code == 0
    assert result.stdout == b"A=1\nB_2=x=y z\nEMPTY=\n"
    empty = run_plain(wasm_of("env-reader"), tmp=tmp_path)
    assert (empty.exit_code, empty.stdout) == (0, b"")


def test_fs_writer_writes_data_and_not_input(tmp_path: Path) -> None:
    result = run_tenant("fs-writer", tmp_path)
    assert result.exit_code == 0
    root = tenant_root(tmp_path, "fs-writer")
    assert (root / "data" / "out.txt").read_bytes() == (
        b"written by the night core fs-writer tenant\n"
    )
    assert list(files_under(root / "input")) == []
    assert result.stdout.startswith(b"wrote data/out.txt\nwrite input/forbidden.txt: denied errno=")
    # A second run over the same directories behaves the same (out.txt is truncated).
    again = run_tenant("fs-writer", tmp_path)
    assert (again.exit_code, again.stdout) == (result.exit_code, result.stdout)
    assert (root / "data" / "out.txt").stat().st_size == 43


def test_fs_writer_reports_a_writable_input_as_a_violation(tmp_path: Path) -> None:
    data, inp = tmp_path / "d", tmp_path / "i"
    data.mkdir()
    inp.mkdir()
    result = run_plain(
        wasm_of("fs-writer"), tmp=tmp_path, preopens=[(data, "data", True), (inp, "input", True)]
    )
    assert result.exit_code == 1
    assert b"ALLOWED (sandbox violation)" in result.stdout


def test_fs_writer_without_preopens_exits_2(tmp_path: Path) -> None:
    result = run_plain(wasm_of("fs-writer"), tmp=tmp_path)
    assert (result.exit_code, result.stdout) == (2, b"error: no preopen named data\n")


def test_fs_escaper_is_denied_everything_and_leaves_no_trace(tmp_path: Path) -> None:
    result = run_tenant("fs-escaper", tmp_path)
    lines = result.stdout.decode().splitlines()
    attempts = [ln for ln in lines if not ln.startswith(("setup ", "fs-escaper:"))]
    assert len(attempts) == 15
    assert all(": denied errno=" in ln for ln in attempts), lines
    assert lines[-1] == "fs-escaper: all 15 escape attempts denied"
    assert result.exit_code == 0
    # Nothing was created anywhere in the workspace, inside "data" included (cleaned up).
    assert list(files_under(tmp_path / "workspace")) == [
        "state",
        "state/tenants",
        "state/tenants/fs-escaper",
        "state/tenants/fs-escaper/data",
    ]
    again = run_tenant("fs-escaper", tmp_path)
    assert (again.exit_code, again.stdout) == (0, result.stdout)


def fnv1a64(data: bytes, h: int = 0xCBF29CE484222325) -> int:
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def wc(data: bytes) -> tuple[int, int, int]:
    return data.count(b"\n"), len(data.split()), len(data)


def expected_report(args: Sequence[str], files: dict[str, bytes]) -> str:
    """A Python model of the report main.c documents."""
    lines = ["night core wordcount report"]
    total = [0, 0, 0]
    total_hash = 0xCBF29CE484222325
    items = [(f"arg[{i}]", a.encode()) for i, a in enumerate(args, 1)]
    items += [(f"input/{n}", files[n]) for n in sorted(files)]
    for label, data in items:
        counts = wc(data)
        total = [t + c for t, c in zip(total, counts, strict=True)]
        total_hash = fnv1a64(data + b"\0", total_hash)
        lines.append(
            f"{label} lines={counts[0]} words={counts[1]} bytes={counts[2]} "
            f"fnv1a64={fnv1a64(data):016x}"
        )
    lines.append(
        f"total items={len(items)} files={len(files)} lines={total[0]} words={total[1]} "
        f"bytes={total[2]} fnv1a64={total_hash:016x}"
    )
    return "\n".join(lines) + "\n"


def test_wordcount_report_with_empty_input(tmp_path: Path) -> None:
    m = manifest_of("wordcount")
    result = run_tenant("wordcount", tmp_path)
    assert result.exit_code == 0
    report = expected_report(m.args, {})
    assert result.stdout.decode() == report + "report written to data/report.txt\n"
    written = tenant_root(tmp_path, "wordcount") / "data" / "report.txt"
    assert written.read_text() == report


def test_wordcount_report_with_input_files(tmp_path: Path) -> None:
    files = {
        "words.txt": b"the quick brown fox\njumps over the lazy dog\n",
        "b.bin": bytes(range(256)) * 40,  # more than one 4 KiB read
        "a.txt": b"  leading and trailing spaces \t\n\nno newline at end",
        "empty": b"",
    }
    root = tenant_root(tmp_path, "wordcount")
    (root / "input" / "subdir").mkdir(parents=True)  # directories are skipped
    result = run_tenant("wordcount", tmp_path, {f"input/{k}": v for k, v in files.items()})
    assert result.exit_code == 0
    report = expected_report(manifest_of("wordcount").args, files)
    assert result.stdout.decode() == report + "report written to data/report.txt\n"
    assert (root / "data" / "report.txt").read_text() == report


def test_wordcount_without_a_writable_data_dir_exits_1(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    result = run_plain(wasm_of("wordcount"), tmp=tmp_path, preopens=[(data, "data", False)])
    assert result.exit_code == 1
    assert result.stdout == expected_report([], {}).encode()
    assert b"cannot write data/report.txt" in result.stderr


# ---- resource-limit tenants: they misbehave the way they claim, under plain wasmtime ----


def test_fuel_burner_and_infinite_loop_never_end_by_themselves(tmp_path: Path) -> None:
    for name in ("fuel-burner", "infinite-loop"):
        result = run_plain(wasm_of(name), tmp=tmp_path, fuel=1_000_000)
        assert result.trap is not None and result.trap.trap_code == wasmtime.TrapCode.OUT_OF_FUEL


def test_memory_bomb_grows_to_the_limit_then_traps(tmp_path: Path) -> None:
    limit = manifest_of("memory-bomb").limits.memory_bytes
    assert limit is not None
    result = run_plain(wasm_of("memory-bomb"), tmp=tmp_path, memory_bytes=limit)
    assert result.trap is not None and result.trap.trap_code == wasmtime.TrapCode.UNREACHABLE
    assert result.memory_pages * 65_536 == limit


def test_deep_recursion_overflows_the_stack(tmp_path: Path) -> None:
    stack = manifest_of("deep-recursion").limits.stack_bytes
    result = run_plain(wasm_of("deep-recursion"), tmp=tmp_path, stack_bytes=stack)
    assert result.trap is not None
    assert result.trap.trap_code == wasmtime.TrapCode.STACK_OVERFLOW


def test_output_flood_writes_past_its_output_limit(tmp_path: Path) -> None:
    m = manifest_of("output-flood")
    assert m.limits.output_bytes is not None
    # ~17k fuel builds the chunk, then each 1 KiB write costs only a few units of fuel:
    # 25k is enough to go well past 64 KiB without writing hundreds of megabytes.
    result = run_plain(wasm_of("output-flood"), tmp=tmp_path, fuel=25_000)
    assert result.trap is not None and result.trap.trap_code == wasmtime.TrapCode.OUT_OF_FUEL
    assert len(result.stdout) > m.limits.output_bytes
    line = EXPECTED["output-flood"]["stdout_contains"].encode()
    assert result.stdout[: m.limits.output_bytes] == line * (m.limits.output_bytes // len(line))
