;; http-get: GETs each URL of its arguments through the Night Core host API
;; (import "nightcore" "http_request", docs/net.md) and prints, for each one,
;;
;;     rc=<return value> status=<HTTP status>
;;     <response body, when rc > 0>
;;
;; rc >= 0 is the number of body bytes received; a negative rc is a stable error number
;; (-3 destination not granted, -4 address refused, -9 response over the cap, ...).
;; Exit status 0 when every request returned rc >= 0, else 1.
;;
;; Memory layout (2 pages):
;;   0     iovec for fd_write (ptr, len)     8   bytes written (fd_write)
;;   12    HTTP status (u32, written by the host)
;;   16    argc                              20  argv buffer size
;;   32    "GET"
;;   40    text: "rc=", " status=", "\n", "usage: http-get URL...\n"
;;   64    decimal digits of a number (written backwards, ends at 96)
;;   256   argv pointers (at most 256)       1280  argv strings (at most 15104 bytes)
;;   16384 response buffer (114688 bytes, to the end of memory)
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get"
    (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "nightcore" "http_request"
    (func $http_request (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 32) "GET")
  (data (i32.const 40) "rc=")
  (data (i32.const 43) " status=")
  (data (i32.const 51) "\n")
  (data (i32.const 112) "usage: http-get URL...\n")

  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func $strlen (param $p i32) (result i32)
    (local $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))

  ;; Print a signed 32-bit number in decimal.
  (func $print_int (param $v i32)
    (local $p i32) (local $neg i32) (local $u i64)
    (local.set $p (i32.const 96))
    (local.set $u (i64.extend_i32_s (local.get $v)))
    (if (i64.lt_s (local.get $u) (i64.const 0))
      (then (local.set $neg (i32.const 1))
            (local.set $u (i64.sub (i64.const 0) (local.get $u)))))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $u) (i64.const 10)))))
      (local.set $u (i64.div_u (local.get $u) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $u) (i64.const 0))))
    (if (local.get $neg)
      (then (local.set $p (i32.sub (local.get $p) (i32.const 1)))
            (i32.store8 (local.get $p) (i32.const 45))))
    (call $write (local.get $p) (i32.sub (i32.const 96) (local.get $p))))

  (func (export "_start")
    (local $i i32) (local $argc i32) (local $url i32) (local $rc i32) (local $failed i32)
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (local.set $argc (i32.load (i32.const 16)))
    (if (i32.or (i32.lt_u (local.get $argc) (i32.const 2))
                (i32.or (i32.gt_u (local.get $argc) (i32.const 256))
                        (i32.gt_u (i32.load (i32.const 20)) (i32.const 15104))))
      (then (call $write (i32.const 112) (i32.const 23))
            (call $proc_exit (i32.const 2))))
    (drop (call $args_get (i32.const 256) (i32.const 1280)))
    (local.set $i (i32.const 1))
    (loop $each
      (local.set $url (i32.load (i32.add (i32.const 256) (i32.mul (local.get $i) (i32.const 4)))))
      (i32.store (i32.const 12) (i32.const 0))
      (local.set $rc
        (call $http_request
          (i32.const 32) (i32.const 3)
          (local.get $url) (call $strlen (local.get $url))
          (i32.const 0) (i32.const 0)
          (i32.const 16384) (i32.const 114688)
          (i32.const 12)))
      (call $write (i32.const 40) (i32.const 3))
      (call $print_int (local.get $rc))
      (call $write (i32.const 43) (i32.const 8))
      (call $print_int (i32.load (i32.const 12)))
      (call $write (i32.const 51) (i32.const 1))
      (if (i32.gt_s (local.get $rc) (i32.const 0))
        (then (call $write (i32.const 16384) (local.get $rc))
              (call $write (i32.const 51) (i32.const 1))))
      (if (i32.lt_s (local.get $rc) (i32.const 0))
        (then (local.set $failed (i32.const 1))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $each (i32.lt_u (local.get $i) (local.get $argc))))
    (call $proc_exit (local.get $failed))))
