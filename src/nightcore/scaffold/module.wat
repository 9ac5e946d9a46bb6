;; $tenant: prints "hello from $tenant" and returns from _start (exit status 0).
;; Built by `nightcore build` (WAT -> wasm with wasmtime.wat2wasm).
;;
;; Memory layout: [0, 16) the iovec and the written-bytes count, [64, ...) the message.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $$fd_write (param i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)
  (data (i32.const 64) "$message")

  ;; Writes all of [ptr, ptr+len) to fd, retrying short writes; returns a WASI errno.
  (func $$write_all (param $$fd i32) (param $$ptr i32) (param $$len i32) (result i32)
    (local $$err i32)
    (local $$n i32)
    (block $$done
      (loop $$again
        (br_if $$done (i32.eqz (local.get $$len)))
        (i32.store (i32.const 0) (local.get $$ptr))
        (i32.store (i32.const 4) (local.get $$len))
        (local.set $$err
          (call $$fd_write (local.get $$fd) (i32.const 0) (i32.const 1) (i32.const 8)))
        (if (local.get $$err) (then (return (local.get $$err))))
        (local.set $$n (i32.load (i32.const 8)))
        ;; a write that makes no progress would spin forever: report EIO (29)
        (if (i32.eqz (local.get $$n)) (then (return (i32.const 29))))
        (local.set $$ptr (i32.add (local.get $$ptr) (local.get $$n)))
        (local.set $$len (i32.sub (local.get $$len) (local.get $$n)))
        (br $$again)))
    (i32.const 0))

  (func (export "_start")
    (drop (call $$write_all (i32.const 1) (i32.const 64) (i32.const $length))))
)
