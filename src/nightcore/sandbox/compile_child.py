"""The compile-only child process of :mod:`nightcore.sandbox.compiler` (see there): no core
dumps, say ready, then compile each module read from stdin with an Engine built like the
run's and answer with the serialized artifact or the compile error. Its address space is
bounded by the parent (``prlimit`` before each module), its time by the parent's clock."""

from __future__ import annotations

import os
import resource

from nightcore.sandbox.compiler import LEN4, LEN8, MAX_MESSAGE, REQUEST


def _read_stdin(n: int) -> bytes | None:
    chunks: list[bytes] = []
    while n:
        chunk = os.read(0, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def main() -> None:
    import wasmtime

    from nightcore.sandbox.engine import EngineKey, _make_engine, _one_line

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    engines: dict[EngineKey, wasmtime.Engine] = {}
    _write(b"R")
    while True:
        head = _read_stdin(REQUEST.size)
        if head is None:
            break  # the parent closed the pipe
        n, stack_bytes, deterministic = REQUEST.unpack(head)
        data = _read_stdin(n)
        if data is None:
            break
        key = EngineKey(stack_bytes, bool(deterministic))
        try:
            engine = engines.get(key)
            if engine is None:
                # One core per compilation: a compile bomb cannot take a neighbour's CPU.
                engine = engines[key] = _make_engine(key, parallel_compilation=False)
            artifact = bytes(wasmtime.Module(engine, data).serialize())
        except wasmtime.WasmtimeError as exc:
            message = _one_line(str(exc)).encode("utf-8")[:MAX_MESSAGE]
            _write(b"E" + LEN4.pack(len(message)) + message)
        else:
            _write(b"O" + LEN8.pack(len(artifact)) + artifact)
    os._exit(0)


if __name__ == "__main__":
    main()
