;; exit-code: prints one line, then calls proc_exit(3).
;; The runtime should report EXIT_NONZERO with exit code 3.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))

  (memory (export "memory") 1)
  ;; 33 bytes
  (data (i32.const 64) "exit-code: exiting with status 3\n")

  (func (export "_start")
    ;; one best-effort write (iovec at 0, written count at 8), then exit
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 33))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $proc_exit (i32.const 3)))
)
