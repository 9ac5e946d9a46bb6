"""Build and lay out the sample tenants in ``examples/tenants/``.

Each tenant is a directory ``examples/tenants/<tenant>/`` holding a ``manifest.toml`` and
either a hand-written ``module.wat`` (assembled on the fly with ``wasmtime.wat2wasm``) or a
``main.c`` together with its committed build output ``module.wasm``. C tenants are built
with the ``ziglang`` package (no system toolchain needed)::

    python -m ziglang cc --target=wasm32-wasi -O2 -s -Wl,-z,stack-size=262144 \
        -o module.wasm main.c

``-s`` strips debug info and names, so the output is byte-for-byte reproducible with the
same ziglang version, which lets CI check the committed binaries (``--check-c``). The
explicit 256 KiB shadow stack keeps the module's initial memory at a few pages instead of
zig's 16 MiB default, so it fits the tenants' ``memory_bytes`` limits.

Usage::

    python tools/build_tenants.py --out DIR     # DIR/<tenant>/{module.wasm,manifest.toml}
    python tools/build_tenants.py --rebuild-c   # recompile every C tenant in place
    python tools/build_tenants.py --check-c     # exit 1 if a committed module.wasm is stale

``--rebuild-c`` and ``--check-c`` also cover the NET samples in ``examples/net/``; ``--out``
and ``--list`` cover them only when named with ``--tenant``.
    python tools/build_tenants.py --list        # print the tenant names

``--tenant NAME`` (repeatable) restricts any of these to some tenants.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TENANTS_DIR = REPO_ROOT / "examples" / "tenants"
# Tenants that use the NET host API (docs/net.md): built and checked like the others, but not
# part of the default --out / --list set (the demo and the sample tests run those).
NET_TENANTS_DIR = REPO_ROOT / "examples" / "net"

MANIFEST = "manifest.toml"
WAT_SOURCE = "module.wat"
C_SOURCE = "main.c"
WASM = "module.wasm"

# The C compiler command, minus the output path. Run with cwd = the tenant directory and
# the source given by its relative name, so no host path can leak into the module.
C_FLAGS: tuple[str, ...] = (
    "--target=wasm32-wasi",
    "-O2",
    "-s",
    "-Wall",
    "-Wextra",
    "-Wl,-z,stack-size=262144",
)
C_TIMEOUT_S = 600


class BuildError(Exception):
    """A tenant directory is malformed or a build step failed."""


def is_c_tenant(tenant_dir: Path) -> bool:
    return (tenant_dir / C_SOURCE).is_file()


def tenant_dirs(root: Path = TENANTS_DIR) -> list[Path]:
    """Every tenant directory under ``root`` (those with a manifest), sorted by name."""
    return sorted(p.parent for p in root.glob(f"*/{MANIFEST}") if p.parent.is_dir())


def check_tenant_dir(tenant_dir: Path) -> None:
    """Refuse a directory whose layout or manifest tenant id does not match its name."""
    has_wat = (tenant_dir / WAT_SOURCE).is_file()
    has_c = is_c_tenant(tenant_dir)
    if has_wat == has_c:
        raise BuildError(f"{tenant_dir}: needs exactly one of {WAT_SOURCE} or {C_SOURCE}")
    try:
        manifest = tomllib.loads((tenant_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BuildError(f"{tenant_dir / MANIFEST}: {exc}") from None
    if manifest.get("tenant") != tenant_dir.name:
        raise BuildError(
            f"{tenant_dir / MANIFEST}: tenant = {manifest.get('tenant')!r}, "
            f"expected the directory name {tenant_dir.name!r}"
        )


def build_wasm(tenant_dir: Path) -> bytes:
    """The module bytes of one tenant: assembled WAT, or the committed C build output."""
    wat = tenant_dir / WAT_SOURCE
    if wat.is_file():
        import wasmtime

        wasm = wasmtime.wat2wasm(wat.read_text(encoding="utf-8"))
        return bytes(wasm)
    if is_c_tenant(tenant_dir):
        committed = tenant_dir / WASM
        if not committed.is_file():
            raise BuildError(f"{tenant_dir}: {WASM} is missing; run --rebuild-c")
        return committed.read_bytes()
    raise BuildError(f"{tenant_dir}: no {WAT_SOURCE} or {C_SOURCE}")


def compile_c(tenant_dir: Path, out: Path) -> None:
    """Compile ``tenant_dir/main.c`` to ``out`` with ziglang (the venv's interpreter)."""
    cmd = [sys.executable, "-m", "ziglang", "cc", *C_FLAGS, "-o", str(out.resolve()), C_SOURCE]
    try:
        proc = subprocess.run(
            cmd,
            cwd=tenant_dir,
            capture_output=True,
            text=True,
            timeout=C_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"{tenant_dir.name}: compiler did not run: {exc}") from None
    if proc.returncode != 0:
        raise BuildError(
            f"{tenant_dir.name}: compile failed (exit {proc.returncode}):\n{proc.stderr}"
        )
    if proc.stderr.strip():
        # warnings: show them, but they do not fail the build
        print(proc.stderr, file=sys.stderr, end="")


def lay_out(out_dir: Path, tenants: Sequence[Path]) -> None:
    """Write ``out_dir/<tenant>/module.wasm`` and ``manifest.toml`` for every tenant."""
    for tenant_dir in tenants:
        check_tenant_dir(tenant_dir)
        wasm = build_wasm(tenant_dir)
        dest = out_dir / tenant_dir.name
        dest.mkdir(parents=True, exist_ok=True)
        (dest / WASM).write_bytes(wasm)
        shutil.copyfile(tenant_dir / MANIFEST, dest / MANIFEST)
        print(f"{tenant_dir.name}: {len(wasm)} bytes -> {dest}")


def rebuild_c(tenants: Sequence[Path]) -> None:
    for tenant_dir in tenants:
        if not is_c_tenant(tenant_dir):
            continue
        check_tenant_dir(tenant_dir)
        with tempfile.TemporaryDirectory(prefix="nightcore-build-") as tmp:
            built = Path(tmp) / WASM
            compile_c(tenant_dir, built)
            data = built.read_bytes()
        target = tenant_dir / WASM
        old = target.read_bytes() if target.is_file() else None
        target.write_bytes(data)
        state = "unchanged" if old == data else "updated"
        print(f"{tenant_dir.name}: {len(data)} bytes, {state}")


def check_c(tenants: Sequence[Path]) -> bool:
    """Recompile every C tenant in a temp dir; True when all match the committed bytes."""
    ok = True
    for tenant_dir in tenants:
        if not is_c_tenant(tenant_dir):
            continue
        check_tenant_dir(tenant_dir)
        committed = tenant_dir / WASM
        with tempfile.TemporaryDirectory(prefix="nightcore-check-") as tmp:
            built = Path(tmp) / WASM
            compile_c(tenant_dir, built)
            data = built.read_bytes()
        if not committed.is_file():
            print(f"{tenant_dir.name}: {WASM} is missing", file=sys.stderr)
            ok = False
        elif committed.read_bytes() != data:
            print(
                f"{tenant_dir.name}: committed {WASM} differs from a fresh build "
                f"({committed.stat().st_size} vs {len(data)} bytes); run --rebuild-c",
                file=sys.stderr,
            )
            ok = False
        else:
            print(f"{tenant_dir.name}: up to date ({len(data)} bytes)")
    return ok


def select(names: Sequence[str] | None, *, every: bool = False) -> list[Path]:
    """The named tenants (any root), or with no names the samples (and, with ``every``, the
    NET samples of examples/net too)."""
    all_dirs = tenant_dirs() + tenant_dirs(NET_TENANTS_DIR)
    if not names:
        return all_dirs if every else tenant_dirs()
    by_name = {p.name: p for p in all_dirs}
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise BuildError(f"unknown tenant {unknown[0]!r} (have: {', '.join(sorted(by_name))})")
    return [by_name[n] for n in sorted(set(names))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the Night Core sample tenants.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", type=Path, metavar="DIR", help="lay out DIR/<tenant>/")
    action.add_argument("--rebuild-c", action="store_true", help="recompile C tenants in place")
    action.add_argument(
        "--check-c", action="store_true", help="fail if a committed C build is stale"
    )
    action.add_argument("--list", action="store_true", help="print the tenant names")
    parser.add_argument(
        "--tenant", action="append", metavar="NAME", help="only this tenant (repeatable)"
    )
    args = parser.parse_args(argv)
    try:
        tenants = select(args.tenant, every=args.rebuild_c or args.check_c)
        if args.list:
            for t in tenants:
                print(t.name)
        elif args.out is not None:
            lay_out(args.out, tenants)
        elif args.rebuild_c:
            rebuild_c(tenants)
        elif args.check_c:
            return 0 if check_c(tenants) else 1
    except BuildError as exc:
        print(f"build_tenants: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
