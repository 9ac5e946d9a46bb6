"""nightcore.fsio.atomic_write: the one way Night Core replaces a file."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from nightcore.fsio import atomic_write


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.part")


@pytest.mark.parametrize("durable", [True, False])
def test_writes_whole_files_with_their_mode(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "new" / "dir" / "file"  # a missing parent is created
    atomic_write(target, b"x" * (3 << 20), 0o600, durable=durable)
    assert target.read_bytes() == b"x" * (3 << 20)
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["file"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"old")

    def full_disk(fd: int, data: object) -> int:  # injected: a full disk cannot be caused here
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_stale_temporary_is_replaced_and_a_planted_symlink_not_followed(
    tmp_path: Path,
) -> None:
    target = tmp_path / "cursor"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    _tmp_name(target).symlink_to(victim)  # what a killed process, or an attacker, left
    atomic_write(target, b"data")
    assert target.read_bytes() == b"data" and victim.read_bytes() == b"keep"
    assert not target.is_symlink() and not _tmp_name(target).exists()


def test_concurrent_writers_never_mix(tmp_path: Path) -> None:
    target = tmp_path / "shared"
    payloads = [bytes([65 + i]) * 200_000 for i in range(8)]
    threads = [
        threading.Thread(target=atomic_write, args=(target, p), kwargs={"durable": False})
        for p in payloads
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]
