"""nightcore.fsio.file_lock / hold_lock: the one flock helper every writer lock uses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nightcore.aufs.errors import AufsError
from nightcore.errors import NightCoreError
from nightcore.fsio import file_lock, hold_lock

HOLDER = """
import sys, time
from pathlib import Path
from nightcore.fsio import file_lock
with file_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold(path: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_creates_the_lock_file_0600_and_releases_on_exit(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    os.umask(old := os.umask(0))  # whatever the umask, the file is 0600 or narrower
    with file_lock(path) as fd:
        assert fd >= 0 and path.stat().st_mode & 0o777 == 0o600 & ~old
    with pytest.raises(OSError):
        os.fstat(fd)  # closed
    with file_lock(path, busy=NightCoreError("busy", code="X_BUSY")):
        pass  # free again


def test_non_blocking_raises_the_callers_error_with_its_code(tmp_path: Path) -> None:
    path = tmp_path / "repo.lock"
    proc = _hold(path, 30)
    try:
        busy = AufsError("another AUFS command holds the repository lock", code="AUFS_BUSY")
        with pytest.raises(AufsError) as exc, file_lock(path, busy=busy):
            pytest.fail("the lock was taken twice")
        assert exc.value.code == "AUFS_BUSY"
    finally:
        proc.kill()
        proc.wait()
    with file_lock(path, busy=NightCoreError("busy", code="X_BUSY")):
        pass  # the holder died: the lock went with it


def test_blocking_waits_for_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "audit.lock"
    proc = _hold(path, 0.5)
    start = time.monotonic()
    with file_lock(path):
        waited = time.monotonic() - start
    proc.wait()
    assert waited > 0.2


def test_hold_lock_keeps_the_descriptor_and_unlocks_on_error(tmp_path: Path) -> None:
    path = tmp_path / "w.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(ValueError), hold_lock(fd):
            raise ValueError("boom")
        os.fstat(fd)  # still open
        with file_lock(path, busy=NightCoreError("busy", code="X_BUSY")):
            pass  # and unlocked
        with hold_lock(fd), pytest.raises(NightCoreError) as exc:  # noqa: SIM117
            with file_lock(path, busy=NightCoreError("busy", code="X_BUSY")):
                pass
        assert exc.value.code == "X_BUSY"
    finally:
        os.close(fd)
