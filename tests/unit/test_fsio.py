"""nightcore.fsio.atomic_write: the one way Night Core replaces a file; open_regular,
read_regular_capped and read_input: the one way it reads a file it does not control."""

from __future__ import annotations

import errno
import os
import socket
import threading
from pathlib import Path

import pytest

from nightcore.errors import NightCoreError
from nightcore.fsio import atomic_write, open_regular, read_input, read_regular_capped


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


# -- reading what a user or outside data names -------------------------------------------------


def _specials(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: a blocking open would wait forever
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")  # a blocking read would never end
    d = tmp_path / "dir"
    d.mkdir()
    out = {"a FIFO": fifo, "a device": zero, "a directory": d}
    sock = tmp_path / "sock"
    if len(str(sock)) < 100:  # AF_UNIX path limit
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(sock))
        server.close()
        out["a socket"] = sock
    return out


def test_special_files_are_refused_without_blocking(tmp_path: Path) -> None:
    for kind, path in _specials(tmp_path).items():
        with pytest.raises(OSError) as info:
            read_regular_capped(path, 1 << 20)
        assert info.value.errno in (errno.EINVAL, errno.EISDIR, errno.ENXIO), kind
        if info.value.errno != errno.ENXIO:  # a socket cannot even be opened
            assert (info.value.strerror or "").startswith(kind), info.value
        with pytest.raises(NightCoreError) as refused:
            read_input(path, 100, what="key", code="KEY_INVALID", unreadable="USAGE")
        assert refused.value.code == "KEY_INVALID", (kind, refused.value)
        assert refused.value.message.startswith(f"key {path} is "), refused.value


def test_size_caps_and_links(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 10)
    assert read_regular_capped(f, 10) == b"x" * 10
    with pytest.raises(OSError) as info:
        read_regular_capped(f, 9)
    assert info.value.errno == errno.EFBIG
    with pytest.raises(OSError):
        open_regular(f, cap=9)
    with open_regular(f, cap=10) as fh:
        assert fh.read() == b"x" * 10
    link = tmp_path / "link"
    link.symlink_to(f)
    assert read_regular_capped(link, 10) == b"x" * 10
    with pytest.raises(OSError) as info:
        read_regular_capped(link, 10, follow=False)
    assert info.value.errno == errno.ELOOP
    with pytest.raises(NightCoreError) as refused:
        read_input(f, 9, what="w", code="A_CODE", too_large="TOO_BIG")
    assert refused.value.code == "TOO_BIG" and "larger than 9 bytes" in refused.value.message
    with pytest.raises(NightCoreError) as refused:
        read_input(link, 10, what="w", code="A_CODE", follow=False)
    assert refused.value.code == "A_CODE" and "symbolic link" in refused.value.message


def test_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(NightCoreError) as refused:
        read_input(missing, 10, what="w", code="A_CODE", unreadable="USAGE")
    assert refused.value.code == "USAGE" and "not found" in refused.value.message
    with pytest.raises(FileNotFoundError):
        read_input(missing, 10, what="w", code="A_CODE", missing_ok=True)
