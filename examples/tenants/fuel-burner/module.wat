;; fuel-burner: counts upwards forever, doing a little arithmetic per iteration.
;;
;; The manifest grants only 1_000_000 units of fuel but a generous wall time, so fuel
;; runs out long before the deadline: expected outcome FUEL_EXHAUSTED.
(module
  (memory (export "memory") 1)
  (global $sink (mut i64) (i64.const 0))
  (func (export "_start")
    (local $i i64)
    (local $acc i64)
    (loop $forever
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      ;; xorshift-style mixing so the loop body is not trivially empty
      (local.set $acc (i64.xor (local.get $acc) (i64.mul (local.get $i) (i64.const 0x9E3779B97F4A7C15))))
      (local.set $acc (i64.xor (local.get $acc) (i64.shr_u (local.get $acc) (i64.const 29))))
      (global.set $sink (local.get $acc))
      (br $forever)))
)
