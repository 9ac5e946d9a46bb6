;; deep-recursion: a function that calls itself without a base case.
;;
;; The addition after the call keeps the call out of tail position, and the locals make
;; every frame non-trivial, so the wasm stack (256 KiB in the manifest) overflows:
;; expected outcome STACK_OVERFLOW.
(module
  (memory (export "memory") 1)
  (func $recurse (param $n i64) (result i64)
    (local $next i64)
    (local $mix i64)
    (local.set $next (i64.add (local.get $n) (i64.const 1)))
    (local.set $mix (i64.mul (local.get $next) (i64.const 31)))
    (i64.add
      (call $recurse (local.get $next))
      (i64.xor (local.get $mix) (local.get $n))))
  (func (export "_start")
    (drop (call $recurse (i64.const 0))))
)
