"""Runtime releases: stage a wheel, self-test it, switch atomically, roll back on failure.

What this does, exactly (and no more):

* The release is a wheel that the channel delivered (TUF-verified length and SHA-256). Its
  members are checked (no absolute paths, no ``..``, no links, size caps) and written under
  ``<ws>/state/aufs/runtime/.staging-<id>/site/``.
* Self-test: a fresh ``python -I`` process puts that ``site`` directory first on
  ``sys.path``, imports ``nightcore`` (and checks it really came from the staged directory and
  that the staged dist-info names the expected version), then runs ``nightcore doctor --json``
  in it; the test passes only if everything imports and doctor exits 0.
* Switch: the staged directory becomes ``runtime/<version>/`` and the symlink
  ``runtime/current`` is replaced atomically (``symlink`` + ``rename``) to point at it. The
  self-test runs again through ``current``; if it fails, ``current`` is switched back to the
  previous version (or removed if there was none).
* A failed pre-switch self-test leaves ``current`` untouched and deletes the staged copy.

The wheel's *dependencies* are not installed: the staged runtime uses the host environment's
packages. To execute the staged runtime:
``PYTHONPATH=<ws>/state/aufs/runtime/current/site python -m nightcore ...``. Swapping the
interpreter or the installed distribution itself is out of scope of this minimal version.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from nightcore.aufs import artifacts
from nightcore.aufs.config import Limits
from nightcore.aufs.errors import AufsError

SELFTEST = r"""
import sys, json
site, expected = sys.argv[1], sys.argv[2]
sys.path.insert(0, site)
from pathlib import Path
import importlib.metadata as md
import nightcore
import nightcore.cli.main as cli
if not Path(nightcore.__file__).resolve().is_relative_to(Path(site).resolve()):
    print("nightcore was not imported from the staged runtime", file=sys.stderr)
    sys.exit(3)
found = md.version("nightcore")
if found != expected:
    print(f"staged runtime says version {found}, expected {expected}", file=sys.stderr)
    sys.exit(4)
sys.exit(cli.main(["doctor", "--json"]))
"""


@dataclass(frozen=True)
class SelfTest:
    ok: bool
    detail: str


def runtime_dir(ws_state: Path) -> Path:
    return ws_state / "aufs" / "runtime"


def current_version(ws_state: Path) -> str | None:
    link = runtime_dir(ws_state) / "current"
    try:
        return os.readlink(link)
    except OSError:
        return None


def self_test(site: Path, version: str, timeout: float) -> SelfTest:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NIGHTCORE_", "PYTHON"))}
    with tempfile.TemporaryDirectory(prefix="nightcore-selftest-") as cwd:
        try:
            p = subprocess.run(
                [sys.executable, "-I", "-c", SELFTEST, str(site), version],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=cwd,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return SelfTest(False, f"self-test did not finish within {timeout}s")
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
        return SelfTest(False, f"exit status {p.returncode}: {tail[:200]}")
    return SelfTest(True, "import check and doctor passed")


def _switch(rdir: Path, target: str | None) -> None:
    """Point ``current`` at ``target`` atomically (or remove it when ``target`` is None)."""
    link = rdir / "current"
    if target is None:
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        return
    tmp = rdir / f".current.tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fd = os.open(rdir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class RuntimeResult:
    version: str
    previous: str | None
    switched: bool
    stage: str  # "switched" | "pre-switch" | "post-switch"
    detail: str


def install_runtime(ws_state: Path, version: str, wheel: bytes, limits: Limits) -> RuntimeResult:
    """Stage, self-test and switch; on failure leave (or put back) the previous runtime.

    Returns a result with ``switched=False`` when the self-test failed and the previous
    runtime is still current; raises for a malformed wheel.
    """
    members = artifacts.read_wheel(
        wheel, max_members=limits.max_wheel_members, max_bytes=limits.max_wheel_bytes
    )
    if "nightcore/__init__.py" not in members:
        raise AufsError(
            "the wheel does not contain the nightcore package", code="AUFS_TARGET_INVALID"
        )
    if not artifacts.VERSION_RE.fullmatch(version):
        raise AufsError("runtime version is malformed", code="AUFS_TARGET_INVALID")
    rdir = runtime_dir(ws_state)
    rdir.mkdir(parents=True, exist_ok=True)
    for stale in rdir.glob(".staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = rdir / f".staging-{uuid.uuid4().hex[:12]}"
    site = staging / "site"
    try:
        for name, body in members.items():
            dest = site / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            try:
                os.write(fd, body)
            finally:
                os.close(fd)
        previous = current_version(ws_state)
        pre = self_test(site, version, limits.selftest_timeout)
        if not pre.ok:
            return RuntimeResult(version, previous, False, "pre-switch", pre.detail)
        final = rdir / version
        if final.exists():
            if previous == version:
                return RuntimeResult(version, previous, False, "unchanged", "already current")
            shutil.rmtree(final)
        os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _switch(rdir, version)
    post = self_test(rdir / "current" / "site", version, limits.selftest_timeout)
    if not post.ok:
        _switch(rdir, previous)
        shutil.rmtree(final, ignore_errors=True)
        return RuntimeResult(version, previous, False, "post-switch", post.detail)
    return RuntimeResult(version, previous, True, "switched", post.detail)
