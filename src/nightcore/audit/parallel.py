"""Scanning a large audit log with one process per core, and building its tree from the runs.

Lines are independent except for ``prev``, which is checked across segment boundaries here;
the result is that of one sequential :func:`~nightcore.audit.scan.scan_file`.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, Final

from nightcore.audit import merkle
from nightcore.audit.log import ZERO_HASH
from nightcore.audit.scan import READ_CHUNK, Scan, chain_broken, scan_file
from nightcore.errors import AuditError
from nightcore.fsio import open_regular

__all__ = ["PARALLEL_MIN_BYTES", "scan_log", "segments", "tree_of"]

PARALLEL_MIN_BYTES: Final = 32 * 1024 * 1024
_MAX_WORKERS: Final = 8


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _cuts(path: Path, size: int, parts: int) -> list[int]:
    """Offsets splitting ``[0, size)`` just after newlines into at most ``parts`` runs."""
    cuts = [0]
    with open_regular(path) as fh:
        for i in range(1, parts):
            pos = max(size * i // parts, cuts[-1])
            fh.seek(pos)
            while pos < size:
                block = fh.read(min(1 << 20, size - pos))
                k = block.find(b"\n")
                if k >= 0:
                    pos += k + 1
                    break
                pos += len(block)
            if cuts[-1] < pos < size:
                cuts.append(pos)
    cuts.append(size)
    return cuts


def _first_seqs(path: Path, cuts: list[int]) -> list[int]:
    """The seq of the first line of each run: newlines before its start (the last run's own
    lines are not counted)."""
    seqs = [0]
    with open_regular(path) as fh:
        for a, b in itertools.pairwise(cuts[:-1]):
            fh.seek(a)
            left, n = b - a, 0
            while left > 0:
                block = fh.read(min(READ_CHUNK, left))
                if not block:
                    break
                n += block.count(b"\n")
                left -= len(block)
            seqs.append(seqs[-1] + n)
    return seqs


def segments(path: Path, size: int, parts: int) -> list[tuple[int, int, int]]:
    """Split ``[0, size)`` at newlines into at most ``parts`` (start, end, first seq) runs."""
    cuts = _cuts(path, size, parts)
    return [
        (a, b, seq)
        for (a, b), seq in zip(itertools.pairwise(cuts), _first_seqs(path, cuts), strict=True)
    ]


def tree_of(scan: Scan) -> merkle.TreeStore:
    """The TreeStore over a scan's leaves; a parallel scan's runs bring most interior nodes."""
    if scan.runs is None:
        return merkle.TreeStore.from_bytes(merkle.FILE_MAGIC + bytes(scan.leaves))
    return merkle.TreeStore.from_runs(bytes(scan.leaves), scan.runs)


def scan_segment(path: Path, start: int, end: int, seq0: int) -> dict[str, Any]:
    """One run of a parallel scan, as plain values (they cross a process boundary)."""
    scan = scan_file(path, start, end, seq0, None)
    err = scan.error
    leaves = bytes(scan.leaves)
    return {
        "levels": merkle.run_levels(leaves, seq0),
        "count": scan.count,
        "head": scan.head,
        "first_prev": scan.first_prev,
        "leaves": leaves,
        "events": scan.events,
        "end": scan.end,
        "last_start": scan.last_start,
        "error": None if err is None else [err.code, err.message],
        "error_seq": scan.error_seq,
        "error_end": scan.error_end,
        "torn": scan.torn,
    }


def segment_worker_main() -> None:
    """Entry point of a scan worker process: reads ``[path, start, end, seq0]`` (JSON, one line)
    from stdin; writes one JSON header line, then the raw leaf hashes and interior levels."""
    import sys

    path, start, end, seq0 = json.loads(sys.stdin.readline())
    res = scan_segment(Path(path), int(start), int(end), int(seq0))
    blobs = [res.pop("leaves"), *res.pop("levels")]
    res["torn"] = res["torn"].hex()
    res["blob_lengths"] = [len(b) for b in blobs]
    out = sys.stdout.buffer
    out.write(json.dumps(res).encode() + b"\n")
    for blob in blobs:
        out.write(blob)
    out.flush()


_WORKER_CODE: Final = (
    "from nightcore.audit.parallel import segment_worker_main\nsegment_worker_main()\n"
)


def _read_worker(proc: Any) -> dict[str, Any] | None:
    out = proc.stdout.read()  # not communicate(): stdin is already closed
    proc.stdout.close()
    if proc.wait() != 0:
        return None
    header, sep, body = out.partition(b"\n")
    try:
        res: dict[str, Any] = json.loads(header)
        lengths = [int(n) for n in res["blob_lengths"]]
    except (ValueError, KeyError, TypeError):
        return None
    if not sep or not lengths or sum(lengths) != len(body):
        return None
    blobs, pos = [], 0
    for n in lengths:
        blobs.append(body[pos : pos + n])
        pos += n
    res["leaves"], res["levels"] = blobs[0], blobs[1:]
    res["torn"] = bytes.fromhex(res["torn"])
    res["events"] = [tuple(e) for e in res["events"]]
    return res


def scan_log(path: Path, size: int, *, workers: int | None = None) -> Scan:
    """Scan the whole log ``[0, size)`` from seq 0; in parallel when it is large.

    ``workers=None`` picks one process per available core for logs of at least
    :data:`PARALLEL_MIN_BYTES`. Workers are fresh interpreters (``subprocess``, not fork: the
    caller may be threaded); a worker that fails is replaced by scanning its run here. The
    result is the same as one sequential scan.
    """
    if workers is None:
        workers = min(_cpus(), _MAX_WORKERS) if size >= PARALLEL_MIN_BYTES else 1
    if workers <= 1 or size == 0:
        return scan_file(path, 0, size, 0, ZERO_HASH)
    cuts = _cuts(path, size, workers)
    if len(cuts) <= 2:
        return scan_file(path, 0, size, 0, ZERO_HASH)
    import subprocess
    import sys

    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (package_root, env.get("PYTHONPATH")) if x)
    # Start the interpreters first: they import while this process counts lines for the seqs.
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        for _ in range(len(cuts) - 2)
    ]
    try:
        segments = [
            (a, b, seq)
            for (a, b), seq in zip(itertools.pairwise(cuts), _first_seqs(path, cuts), strict=True)
        ]
        for proc, seg in zip(procs, segments[1:], strict=True):
            assert proc.stdin is not None
            try:
                proc.stdin.write(json.dumps([str(path), *seg]).encode() + b"\n")
                proc.stdin.close()
            except OSError:
                proc.kill()
        a, b, seq0 = segments[0]
        first = scan_file(path, a, b, seq0, ZERO_HASH)  # this process takes the first run
        first.runs = [(0, first.count, merkle.run_levels(bytes(first.leaves), 0))]
        parts: list[dict[str, Any]] = []
        for proc, seg in zip(procs, segments[1:], strict=True):
            res = _read_worker(proc)
            parts.append(res if res is not None else scan_segment(path, *seg))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return _join(first, parts)


def _join(scan: Scan, parts: list[dict[str, Any]]) -> Scan:
    """Append the segments' results to the first scan, checking ``prev`` at each boundary."""
    for part in parts:
        if scan.error is not None or scan.torn:
            break
        seq = scan.seq0 + scan.count
        if part["count"] and part["first_prev"] != scan.head:
            scan.fail(chain_broken(seq), seq, None)
            break
        if scan.runs is not None:
            scan.runs.append((seq, part["count"], part["levels"]))
        scan.leaves += part["leaves"]
        scan.events.extend(part["events"])
        scan.count += part["count"]
        if part["count"]:
            scan.head, scan.last_start = part["head"], part["last_start"]
        scan.end = part["end"]
        if part["error"] is not None:
            code, message = part["error"]
            scan.fail(AuditError(message, code=code), part["error_seq"], part["error_end"])
        scan.torn = part["torn"]
    return scan
