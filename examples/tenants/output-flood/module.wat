;; output-flood: writes 1 KiB chunks to stdout forever, ignoring errors and short writes.
;;
;; The manifest caps output at 64 KiB (with plenty of fuel and 5 s of wall time), so the
;; runtime's output limit is what ends the run: expected outcome OUTPUT_LIMIT.
;;
;; Memory layout: [0, 16) iovec + written count, [64, 128) one 64-byte line,
;; [1024, 2048) the 1 KiB chunk (the line repeated 16 times).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)
  (data (i32.const 64) "night core output-flood: this line repeats until the cap hits!!\n")

  (func (export "_start")
    (local $i i32)
    ;; build the chunk
    (loop $fill
      (i32.store8
        (i32.add (i32.const 1024) (local.get $i))
        (i32.load8_u (i32.add (i32.const 64) (i32.and (local.get $i) (i32.const 63)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 1024))))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 1024))
    (loop $flood
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $flood)))
)
