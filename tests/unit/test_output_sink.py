"""The run's output capture and its live view for ``logs --follow`` (watchdog.OutputSink).

The live files appear only once a run has lasted ``live_after_s`` (a tiny run never creates
them: two files made and removed per run were ~15% of its host work), then hold everything
captured so far and grow as the guest writes."""

from __future__ import annotations

import os
import time
from pathlib import Path

from nightcore.sandbox.watchdog import OutputSink


def _paths(tmp_path: Path) -> tuple[Path, Path]:
    live = tmp_path / "live"
    return live / "r.stdout", live / "r.stderr"


def test_a_short_run_makes_no_live_files(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    sink = OutputSink(1024, paths, live_after_s=3600)
    assert sink.write_stdout(b"hello\n") == 6
    sink.tick()
    sink.close_live()
    assert not paths[0].parent.exists()
    assert sink.snapshot() == (b"hello\n", b"", False)


def test_the_live_view_starts_with_what_was_captured_then_grows(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    sink = OutputSink(1024, paths, live_after_s=0.05)
    sink.write_stdout(b"early ")
    sink.write_stderr(b"warn ")
    assert not paths[0].exists()
    time.sleep(0.06)  # the view's due time is the behaviour under test, not readiness
    sink.write_stdout(b"late\n")
    assert paths[0].read_bytes() == b"early late\n"
    assert paths[1].read_bytes() == b"warn "
    sink.write_stderr(b"more\n")
    assert paths[1].read_bytes() == b"warn more\n"
    assert os.stat(paths[0].parent).st_mode & 0o777 == 0o700
    assert os.stat(paths[0]).st_mode & 0o777 == 0o600
    sink.close_live()
    sink.write_stdout(b"after close\n")  # captured, no longer copied
    assert paths[0].read_bytes() == b"early late\n"
    assert sink.snapshot()[0] == b"early late\nafter close\n"


def test_a_tick_opens_the_view_of_a_quiet_run(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    sink = OutputSink(1024, paths, live_after_s=0)
    sink.tick()
    assert paths[0].read_bytes() == b"" and paths[1].read_bytes() == b""
    sink.close_live()


def test_the_view_never_follows_a_planted_link_and_the_capture_is_kept(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    paths[0].parent.mkdir()
    target = tmp_path / "elsewhere"
    target.write_bytes(b"untouched")
    paths[0].symlink_to(target)
    sink = OutputSink(1024, paths, live_after_s=0)
    assert sink.write_stdout(b"data") == 4
    sink.close_live()
    assert target.read_bytes() == b"untouched"
    assert sink.snapshot()[0] == b"data"


def test_the_cap_applies_to_the_capture_and_the_view(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    sink = OutputSink(8, paths, live_after_s=0)
    assert sink.write_stdout(b"0123456789") == 8
    assert sink.truncated
    assert paths[0].read_bytes() == b"01234567"
    sink.close_live()


def test_a_fifo_in_place_of_a_live_file_never_blocks_the_run(tmp_path: Path) -> None:
    """Opening a FIFO for writing blocks until a reader comes (with one, it would be a pipe,
    not a file): the view is skipped, the capture kept. A hang here fails the test's run."""
    paths = _paths(tmp_path)
    paths[0].parent.mkdir()
    os.mkfifo(paths[0])
    sink = OutputSink(1024, paths, live_after_s=0)
    assert sink.write_stdout(b"data") == 4
    reader = os.open(paths[0], os.O_RDONLY | os.O_NONBLOCK)  # now a writer's open succeeds
    try:
        fresh = OutputSink(1024, paths, live_after_s=0)
        assert fresh.write_stdout(b"more") == 4
        fresh.close_live()
        assert os.read(reader, 64) == b""  # nothing went into the pipe
    finally:
        os.close(reader)
    sink.close_live()
    assert sink.snapshot()[0] == b"data" and fresh.snapshot()[0] == b"more"
