;; memory-bomb: grows linear memory one 64 KiB page at a time, touching every new page.
;; When memory.grow fails (returns -1) it executes `unreachable`.
;;
;; The module declares no maximum, so only the runtime's memory limit (16 MiB in the
;; manifest) stops the growth: expected outcome MEMORY_LIMIT.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (local $old i32)
    (loop $grow
      (local.set $old (memory.grow (i32.const 1)))
      (if (i32.eq (local.get $old) (i32.const -1))
        (then unreachable))
      ;; touch the first byte of the new page so it is really committed
      (i32.store8 (i32.shl (local.get $old) (i32.const 16)) (i32.const 0xAA))
      (br $grow)))
)
