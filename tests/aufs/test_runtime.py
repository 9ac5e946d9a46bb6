"""Runtime releases through AUFS: stage, self-test, atomic switch, automatic rollback."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

from nightcore.aufs import runtime
from tests.aufs.conftest import World
from tests.conftest import REPO

SRC = REPO / "src" / "nightcore"


def build_wheel(out: Path, version: str, *, broken: bool = False) -> Path:
    """A wheel of this very source tree, relabelled ``version`` (optionally broken)."""
    path = out / f"nightcore-{version}-py3-none-any.whl"
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(SRC.rglob("*")):
            if f.is_dir() or "__pycache__" in f.parts:
                continue
            name = "nightcore/" + f.relative_to(SRC).as_posix()
            data = f.read_bytes()
            if broken and name == "nightcore/cli/main.py":
                data = b'raise ImportError("this release is broken")\n'
            zf.writestr(name, data)
        di = f"nightcore-{version}.dist-info"
        zf.writestr(
            f"{di}/METADATA", f"Metadata-Version: 2.1\nName: nightcore\nVersion: {version}\n"
        )
        zf.writestr(f"{di}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{di}/RECORD", "")
    return path


def _current(w: World) -> str | None:
    return runtime.current_version(w.ws.layout.state_dir)


def test_runtime_release_switches_and_a_failing_one_rolls_back(world: World) -> None:
    wheels = world.tmp / "wheels"
    world.add_and_publish(build_wheel(wheels, "0.2.0"))
    [o] = world.update().outcomes
    assert (o.kind, o.code, o.action) == ("runtime", "OK", "installed")
    assert _current(world) == "0.2.0"
    site = world.ws.layout.state_dir / "aufs" / "runtime" / "current" / "site"
    assert (site / "nightcore" / "__init__.py").exists()

    # A broken release: the self-test fails before the switch; 0.2.0 stays current and runs.
    world.add_and_publish(build_wheel(wheels, "0.3.0", broken=True))
    [o] = world.update().outcomes
    assert o.code == "RUNTIME_SELFTEST_FAILED", o.reason
    assert "this release is broken" in o.reason and "0.2.0 stays current" in o.reason
    assert _current(world) == "0.2.0"
    assert not (world.ws.layout.state_dir / "aufs" / "runtime" / "0.3.0").exists()
    assert runtime.self_test(site, "0.2.0", 60).ok
    [rb] = world.audit_events("aufs_rollback")
    assert rb["data"]["stage"] == "pre-switch" and rb["data"]["current"] == "0.2.0"
    assert world.audit_events("aufs_refused")[-1]["data"]["code"] == "RUNTIME_SELFTEST_FAILED"


def test_post_switch_failure_switches_back(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    rdir = world.ws.layout.state_dir / "aufs" / "runtime"
    (rdir / "0.2.0" / "site").mkdir(parents=True)
    os.symlink("0.2.0", rdir / "current")
    calls: list[Path] = []

    def fake(site: Path, version: str, timeout: float) -> runtime.SelfTest:
        calls.append(site)
        # Passes in staging, fails once live (e.g. it depends on its final path).
        return runtime.SelfTest(len(calls) == 1, "fails once switched")

    monkeypatch.setattr(runtime, "self_test", fake)
    world.add_and_publish(build_wheel(world.tmp / "wheels", "0.3.0"))
    [o] = world.update().outcomes
    assert o.code == "RUNTIME_SELFTEST_FAILED" and "post-switch" in o.reason
    assert len(calls) == 2 and "current" in calls[1].parts
    assert _current(world) == "0.2.0"
    assert not (rdir / "0.3.0").exists()


def test_runtime_downgrade_is_refused(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    rdir = world.ws.layout.state_dir / "aufs" / "runtime"
    (rdir / "0.5.0").mkdir(parents=True)
    os.symlink("0.5.0", rdir / "current")
    world.add_and_publish(build_wheel(world.tmp / "wheels", "0.3.0"))
    [o] = world.update().outcomes
    assert o.code == "DOWNGRADE_REFUSED"
    assert _current(world) == "0.5.0"
