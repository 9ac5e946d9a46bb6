"""The compile-only child process of :mod:`nightcore.sandbox.compiler` (see there): build
the run's Engine, bound itself (``RLIMIT_AS``, ``RLIMIT_CPU``, no core), say ready, compile
the module read from stdin, answer with the serialized artifact or the compile error."""

from __future__ import annotations

import argparse
import os
import resource
from pathlib import Path

from nightcore.sandbox.compiler import LEN4, LEN8, MAX_MESSAGE


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmSize in /proc/self/status")


def _read_stdin(n: int) -> bytes:
    chunks: list[bytes] = []
    while n:
        chunk = os.read(0, min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="nightcore.sandbox.compile_child")
    p.add_argument("--stack-bytes", type=int, required=True)
    p.add_argument("--deterministic", type=int, choices=(0, 1), default=0)
    p.add_argument("--memory-bytes", type=int, required=True)
    p.add_argument("--cpu-s", type=int, required=True)
    args = p.parse_args(argv)
    import wasmtime

    from nightcore.sandbox.engine import EngineKey, _make_engine, _one_line

    engine = _make_engine(EngineKey(args.stack_bytes, bool(args.deterministic)))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (args.cpu_s, args.cpu_s + 1))
    limit = _vm_size() + args.memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _write(b"R")
    (n,) = LEN8.unpack(_read_stdin(LEN8.size))
    data = _read_stdin(n)
    try:
        artifact = bytes(wasmtime.Module(engine, data).serialize())
    except wasmtime.WasmtimeError as exc:
        message = _one_line(str(exc)).encode("utf-8")[:MAX_MESSAGE]
        _write(b"E" + LEN4.pack(len(message)) + message)
    else:
        _write(b"O" + LEN8.pack(len(artifact)) + artifact)
    os._exit(0)


if __name__ == "__main__":
    main()
