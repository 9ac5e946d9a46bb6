"""Hostile tenants of issue 14 as WAT, shared by the resource-bound tests: a descriptor bomb,
a 2 GiB writer, an inode bomb, a compile bomb (generated binary)."""

from __future__ import annotations

WASI = "wasi_snapshot_preview1"
_IMPORTS = f"""
 (import "{WASI}" "path_open"
   (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
 (import "{WASI}" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
 (import "{WASI}" "fd_close" (func $close (param i32) (result i32)))
"""
# WASI oflags
CREAT, EXCL, TRUNC = 1, 4, 8
RIGHTS = "(i64.const 0x1fffffff)"


def _open(name_ptr: int, name_len: int, oflags: int, out_ptr: int) -> str:
    return (
        f"(call $open (i32.const 3) (i32.const 0) (i32.const {name_ptr}) (i32.const {name_len})"
        f" (i32.const {oflags}) {RIGHTS} {RIGHTS} (i32.const 0) (i32.const {out_ptr}))"
    )


def fd_bomb(opens: int = 20_000, *, spin: bool = True) -> str:
    """Opens the same file in its first preopen ``opens`` times and keeps every descriptor;
    then spins (only a stop during the run ends it before its wall time)."""
    tail = "(loop $spin (br $spin))" if spin else ""
    return f"""(module {_IMPORTS}
 (memory (export "memory") 1)
 (data (i32.const 100) "f")
 (func (export "_start") (local $i i32)
  (loop $l
    (drop {_open(100, 1, CREAT, 200)})
    (local.set $i (i32.add (local.get $i) (i32.const 1)))
    (br_if $l (i32.lt_u (local.get $i) (i32.const {opens}))))
  {tail}))"""


def big_writer(total_bytes: int = 2 << 30, *, spin: bool = True) -> str:
    """Writes ``total_bytes`` (64 KiB at a time) to ``big`` in its first preopen, stopping at
    the first failed write; then spins."""
    chunks = total_bytes // 65536
    tail = "(loop $spin (br $spin))" if spin else ""
    return f"""(module {_IMPORTS}
 (memory (export "memory") 2)
 (data (i32.const 100) "big")
 (func (export "_start") (local $i i32) (local $fd i32)
  (if (i32.ne {_open(100, 3, CREAT | TRUNC, 200)} (i32.const 0)) (then (unreachable)))
  (local.set $fd (i32.load (i32.const 200)))
  (i32.store (i32.const 300) (i32.const 65536))
  (i32.store (i32.const 304) (i32.const 65536))
  (block $done
   (loop $l
    (br_if $done (i32.ne
      (call $write (local.get $fd) (i32.const 300) (i32.const 1) (i32.const 400))
      (i32.const 0)))
    (local.set $i (i32.add (local.get $i) (i32.const 1)))
    (br_if $l (i32.lt_u (local.get $i) (i32.const {chunks})))))
  {tail}))"""


def inode_bomb(files: int = 100_000, *, spin: bool = True) -> str:
    """Creates empty files n00000, n00001, ... in its first preopen (closing each); then
    spins."""
    tail = "(loop $spin (br $spin))" if spin else ""
    return f"""(module {_IMPORTS}
 (memory (export "memory") 1)
 (data (i32.const 100) "n00000")
 (func $name (param $i i32) (local $k i32)
  (local.set $k (i32.const 5))
  (loop $d
   (i32.store8 (i32.add (i32.const 100) (local.get $k))
     (i32.add (i32.const 48) (i32.rem_u (local.get $i) (i32.const 10))))
   (local.set $i (i32.div_u (local.get $i) (i32.const 10)))
   (local.set $k (i32.sub (local.get $k) (i32.const 1)))
   (br_if $d (i32.gt_s (local.get $k) (i32.const 0)))))
 (func (export "_start") (local $i i32)
  (block $done
   (loop $l
    (call $name (local.get $i))
    (br_if $done (i32.ne {_open(100, 6, CREAT | EXCL, 200)} (i32.const 0)))
    (drop (call $close (i32.load (i32.const 200))))
    (local.set $i (i32.add (local.get $i) (i32.const 1)))
    (br_if $l (i32.lt_u (local.get $i) (i32.const {files})))))
  {tail}))"""


def compile_bomb(functions: int) -> bytes:
    """A valid module of ``functions`` empty functions (and an exported ``_start``): cheap to
    write, expensive to compile (300,000 of them took 32 s and 1.9 GB in-process)."""

    def leb(v: int) -> bytes:
        out = bytearray()
        while True:
            b, v = v & 0x7F, v >> 7
            if v:
                out.append(b | 0x80)
            else:
                out.append(b)
                return bytes(out)

    def section(kind: int, body: bytes) -> bytes:
        return bytes([kind]) + leb(len(body)) + body

    types = section(1, leb(1) + b"\x60\x00\x00")
    funcs = section(3, leb(functions) + b"\x00" * functions)
    exports = section(7, leb(1) + leb(6) + b"_start" + b"\x00" + leb(0))
    code = section(10, leb(functions) + b"\x02\x00\x0b" * functions)
    return b"\x00asm\x01\x00\x00\x00" + types + funcs + exports + code
