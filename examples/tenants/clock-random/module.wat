;; clock-random: prints the realtime clock and 16 random bytes as hex, then exits 0.
;; Run with deterministic = true, the clock and the random source are the runtime's
;; replayable ones, so `nightcore replay` reproduces the output byte for byte.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get"
    (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get"
    (func $random_get (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "0123456789abcdef")

  ;; Writes 2*n hex digits of the n bytes at $src to $dst; returns the end of the output.
  (func $hex (param $src i32) (param $n i32) (param $dst i32) (result i32)
    (local $i i32) (local $b i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $b (i32.load8_u (i32.add (local.get $src) (local.get $i))))
        (i32.store8 (i32.add (local.get $dst) (i32.shl (local.get $i) (i32.const 1)))
          (i32.load8_u (i32.add (i32.const 1024) (i32.shr_u (local.get $b) (i32.const 4)))))
        (i32.store8
          (i32.add (local.get $dst) (i32.add (i32.shl (local.get $i) (i32.const 1)) (i32.const 1)))
          (i32.load8_u (i32.add (i32.const 1024) (i32.and (local.get $b) (i32.const 15)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.add (local.get $dst) (i32.shl (local.get $n) (i32.const 1))))

  (func (export "_start")
    (local $p i32)
    ;; 8 bytes of realtime clock at 0, 16 random bytes at 8
    (if (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 0)) (then unreachable))
    (if (call $random_get (i32.const 8) (i32.const 16)) (then unreachable))
    ;; "t=<16 hex> r=<32 hex>\n" at 2048
    (i32.store8 (i32.const 2048) (i32.const 116))
    (i32.store8 (i32.const 2049) (i32.const 61))
    (local.set $p (call $hex (i32.const 0) (i32.const 8) (i32.const 2050)))
    (i32.store8 (local.get $p) (i32.const 32))
    (i32.store8 (i32.add (local.get $p) (i32.const 1)) (i32.const 114))
    (i32.store8 (i32.add (local.get $p) (i32.const 2)) (i32.const 61))
    (local.set $p (call $hex (i32.const 8) (i32.const 16) (i32.add (local.get $p) (i32.const 3))))
    (i32.store8 (local.get $p) (i32.const 10))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (i32.store (i32.const 4096) (i32.const 2048))
    (i32.store (i32.const 4100) (i32.sub (local.get $p) (i32.const 2048)))
    (drop (call $fd_write (i32.const 1) (i32.const 4096) (i32.const 1) (i32.const 4104)))))
