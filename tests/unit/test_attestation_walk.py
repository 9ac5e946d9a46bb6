"""The walk that finds the files a tenant wrote in its read-write grants (for the run
attestation): bounded, iterative, descriptor-relative. Real trees on disk (one 1,000 levels
deep, beyond PATH_MAX), real symlinks to /dev/zero and real FIFOs."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nightcore.errors import NightCoreError
from nightcore.evidence import attestation
from nightcore.evidence.attestation import snapshot, written_files
from tests.deep_tree import build_deep_tree, remove_deep_tree


def _bounded(fn: Callable[[], Any]) -> Any:
    """Call ``fn`` in a thread so a regression (a host that reads /dev/zero or waits on a FIFO
    forever) fails this test instead of hanging the suite. The join timeout is a guard, not a
    measurement: the walk takes milliseconds."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test thread below
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "the walk did not finish (it followed a link or blocked)"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture
def grant(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


def test_a_tree_1000_levels_deep_is_a_tree_limit_not_a_crash(grant: Path) -> None:
    build_deep_tree(grant, 1000)
    try:
        for call in (
            lambda: snapshot([("data", grant)]),
            lambda: written_files({}, [("data", grant)]),
        ):
            with pytest.raises(NightCoreError) as info:
                _bounded(call)
            assert info.value.code == "TREE_LIMIT"
            assert "deep" in info.value.message
    finally:
        assert remove_deep_tree(grant) == 1000


def test_files_deep_but_within_the_cap_are_found_and_hashed(grant: Path) -> None:
    build_deep_tree(grant, 100)
    fd = os.open(grant, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(100):
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        wfd = os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(wfd, b"bottom\n")
        os.close(wfd)
    finally:
        os.close(fd)
    (grant / "top.txt").write_bytes(b"top\n")
    before = snapshot([("data", grant)])
    assert len(before) == 2
    (grant / "top.txt").write_bytes(b"changed, and longer\n")
    written, truncated = written_files(before, [("data", grant)])
    assert written == [("fs/data/top.txt", hashlib.sha256(b"changed, and longer\n").hexdigest())]
    assert not truncated
    written, truncated = written_files({}, [("data", grant)])
    names = [n for n, _ in written]
    assert names == sorted(names) and f"fs/data/{'d/' * 100}leaf.txt" in names
    assert dict(written)[f"fs/data/{'d/' * 100}leaf.txt"] == hashlib.sha256(b"bottom\n").hexdigest()


def _swap_on_open(
    monkeypatch: pytest.MonkeyPatch, victim: Path, make: Callable[[Path], None]
) -> list[bool]:
    """Replace ``victim`` (a regular file when the walk looked at it) just before the host
    opens it: the race a concurrent run of the same tenant can win. Mocked because the window
    cannot be hit deterministically otherwise: the swap is done at the last moment each
    implementation offers (the path-based re-snapshot, or the descriptor-relative open)."""
    done: list[bool] = []

    def swap() -> None:
        if not done:
            victim.unlink()
            make(victim)
            done.append(True)

    real_snapshot = attestation.snapshot

    def snapshot_then_swap(pairs: Any) -> Any:  # the old, path-based host re-opened by path
        state = real_snapshot(pairs)
        swap()
        return state

    real_open = os.open

    def open_with_swap(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if kwargs.get("dir_fd") is not None and str(path) == victim.name:
            swap()
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(attestation, "snapshot", snapshot_then_swap)
    monkeypatch.setattr(os, "open", open_with_swap)
    return done


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p.symlink_to("/dev/zero"),
        os.mkfifo,
    ],
    ids=["symlink-to-dev-zero", "fifo"],
)
def test_a_file_swapped_for_a_link_or_fifo_is_not_followed(
    grant: Path, monkeypatch: pytest.MonkeyPatch, make: Callable[[Path], None]
) -> None:
    (grant / "out.bin").write_bytes(b"x" * 10)
    (grant / "kept.txt").write_bytes(b"kept")
    done = _swap_on_open(monkeypatch, grant / "out.bin", make)
    written, _ = _bounded(lambda: written_files({}, [("data", grant)]))
    assert done, "the race was not exercised"
    assert dict(written) == {"fs/data/kept.txt": hashlib.sha256(b"kept").hexdigest()}


def test_links_and_special_files_already_there_are_skipped(grant: Path) -> None:
    (grant / "zero").symlink_to("/dev/zero")
    (grant / "up").symlink_to("..")
    os.mkfifo(grant / "pipe")
    (grant / "real").write_bytes(b"r")
    assert list(snapshot([("data", grant)])) == ["fs/data/real"]
    written, truncated = _bounded(lambda: written_files({}, [("data", grant)]))
    assert [n for n, _ in written] == ["fs/data/real"] and not truncated


def test_caps_on_files_bytes_and_entries(grant: Path) -> None:
    for i in range(20):
        (grant / f"f{i:02}").write_bytes(b"y" * 100)
    written, truncated = written_files({}, [("data", grant)], max_files=5)
    assert len(written) == 5 and truncated
    written, truncated = written_files({}, [("data", grant)], max_bytes=250)
    assert len(written) == 2 and truncated
    with pytest.raises(NightCoreError) as info:
        written_files({}, [("data", grant)], max_entries=10)
    assert info.value.code == "TREE_LIMIT"
    with pytest.raises(NightCoreError) as info:
        snapshot([("data", grant)], max_entries=10)
    assert info.value.code == "TREE_LIMIT"


def test_a_missing_grant_is_empty(tmp_path: Path) -> None:
    assert snapshot([("data", tmp_path / "absent")]) == {}
    assert written_files({}, [("data", tmp_path / "absent")]) == ([], False)
