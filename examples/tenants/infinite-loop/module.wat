;; infinite-loop: spins forever without calling the host.
;;
;; The manifest grants a huge fuel budget (10^12) but only 200 ms of wall time, so the
;; wall-clock deadline (epoch interruption) is what stops it: expected outcome TIMEOUT.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $forever
      (br $forever)))
)
