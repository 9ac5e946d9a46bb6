;; env-reader: prints every environment variable it sees, one "NAME=value" per line,
;; in the order the host hands them over, then returns (exit status 0).
;;
;; It prints nothing else, so its stdout is exactly the environment the manifest granted.
;; If the host refuses to report the environment it exits with status 1.
;;
;; Memory layout: [0, 16) iovec + written count, [16, 24) environ count and buffer size,
;; [1024, ...) the environ pointer array followed by the string buffer (memory is grown
;; as needed; a manifest may grant up to 64 variables of up to 4 KiB each).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get"
    (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))

  (memory (export "memory") 1)

  ;; Writes all of [ptr, ptr+len) to fd, retrying short writes; returns a WASI errno.
  (func $write_all (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (local $err i32)
    (local $n i32)
    (block $done
      (loop $again
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store (i32.const 0) (local.get $ptr))
        (i32.store (i32.const 4) (local.get $len))
        (local.set $err
          (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
        (if (local.get $err) (then (return (local.get $err))))
        (local.set $n (i32.load (i32.const 8)))
        (if (i32.eqz (local.get $n)) (then (return (i32.const 29))))
        (local.set $ptr (i32.add (local.get $ptr) (local.get $n)))
        (local.set $len (i32.sub (local.get $len) (local.get $n)))
        (br $again)))
    (i32.const 0))

  (func (export "_start")
    (local $count i32)
    (local $size i32)
    (local $buf i32)
    (local $end i32)
    (local $p i32)
    (if (call $environ_sizes_get (i32.const 16) (i32.const 20))
      (then (call $proc_exit (i32.const 1))))
    (local.set $count (i32.load (i32.const 16)))
    (local.set $size (i32.load (i32.const 20)))
    (br_if 0 (i32.eqz (local.get $count)))
    ;; pointers at 1024, strings right after them
    (local.set $buf (i32.add (i32.const 1024) (i32.shl (local.get $count) (i32.const 2))))
    (local.set $end (i32.add (local.get $buf) (local.get $size)))
    ;; grow memory until [0, end) fits
    (block $fits
      (loop $grow
        (br_if $fits
          (i32.le_u (local.get $end) (i32.shl (memory.size) (i32.const 16))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))
          (then (call $proc_exit (i32.const 1))))
        (br $grow)))
    (if (call $environ_get (i32.const 1024) (local.get $buf))
      (then (call $proc_exit (i32.const 1))))
    ;; the strings are NUL-terminated and contiguous: turn each NUL into a newline
    (local.set $p (local.get $buf))
    (block $converted
      (loop $scan
        (br_if $converted (i32.ge_u (local.get $p) (local.get $end)))
        (if (i32.eqz (i32.load8_u (local.get $p)))
          (then (i32.store8 (local.get $p) (i32.const 10))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $scan)))
    (if (call $write_all (i32.const 1) (local.get $buf) (local.get $size))
      (then (call $proc_exit (i32.const 1)))))
)
