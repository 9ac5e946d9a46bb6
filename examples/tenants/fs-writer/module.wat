;; fs-writer: exercises a read-write and a read-only preopen.
;;
;; 1. Finds the preopen named "data" (rw) and creates/truncates data/out.txt with the
;;    43-byte line "written by the night core fs-writer tenant\n", then prints
;;    "wrote data/out.txt".
;; 2. Finds the preopen named "input" (ro) and tries to create input/forbidden.txt for
;;    writing. That must fail; it prints "write input/forbidden.txt: denied errno=N".
;;
;; Exit status (deterministic for a given host):
;;   0  out.txt written and the write into the read-only preopen was denied
;;   1  the write into the read-only preopen SUCCEEDED (a sandbox violation)
;;   2  setup problem: a preopen is missing or data/out.txt could not be written
;;
;; Preopens are located by name with fd_prestat_get/fd_prestat_dir_name, so the module
;; does not depend on the order in which the host numbers them.
;;
;; Memory layout: [0, 16) iovec + written count, [16, 24) prestat, [24, 28) opened fd,
;; [32, 96) preopen name buffer, [96, 128) decimal digits, [256, ...) constant strings.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close"
    (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get"
    (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name"
    (func $fd_prestat_dir_name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))

  (memory (export "memory") 1)

  (data (i32.const 256) "data")                                                    ;; 4
  (data (i32.const 264) "input")                                                   ;; 5
  (data (i32.const 272) "out.txt")                                                 ;; 7
  (data (i32.const 288) "forbidden.txt")                                           ;; 13
  (data (i32.const 320) "written by the night core fs-writer tenant\n")            ;; 43
  (data (i32.const 384) "wrote data/out.txt\n")                                    ;; 19
  (data (i32.const 448) "write input/forbidden.txt: denied errno=")                ;; 40
  (data (i32.const 512) "write input/forbidden.txt: ALLOWED (sandbox violation)\n") ;; 55
  (data (i32.const 576) "error: no preopen named ")                                ;; 24
  (data (i32.const 640) "error: data/out.txt errno=")                              ;; 26
  (data (i32.const 704) "\n")                                                      ;; 1

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

  (func $say (param $ptr i32) (param $len i32)
    (drop (call $write_all (i32.const 1) (local.get $ptr) (local.get $len))))

  ;; Prints the decimal form of $n followed by a newline.
  (func $say_num_ln (param $n i32)
    (local $len i32)
    (local $t i32)
    (local $i i32)
    (local.set $t (local.get $n))
    (loop $count
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (local.set $t (i32.div_u (local.get $t) (i32.const 10)))
      (br_if $count (local.get $t)))
    (local.set $i (local.get $len))
    (loop $digit
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (i32.const 96) (local.get $i))
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digit (local.get $i)))
    (i32.store8 (i32.add (i32.const 96) (local.get $len)) (i32.const 10))
    (call $say (i32.const 96) (i32.add (local.get $len) (i32.const 1))))

  (func $mem_eq (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $differ
      (loop $next
        (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
        (br_if $differ
          (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  ;; Returns the fd of the directory preopen called [name, name+len), or -1.
  ;; Preopens are numbered from 3 upwards; fd_prestat_get fails past the last one.
  (func $find_preopen (param $name i32) (param $len i32) (result i32)
    (local $fd i32)
    (local.set $fd (i32.const 3))
    (block $none
      (loop $next
        (br_if $none (call $fd_prestat_get (local.get $fd) (i32.const 16)))
        (if (i32.and
              (i32.eqz (i32.load8_u (i32.const 16)))                 ;; tag 0: directory
              (i32.eq (i32.load (i32.const 20)) (local.get $len)))   ;; same name length
          (then
            (if (i32.eqz
                  (call $fd_prestat_dir_name (local.get $fd) (i32.const 32) (local.get $len)))
              (then
                (if (call $mem_eq (i32.const 32) (local.get $name) (local.get $len))
                  (then (return (local.get $fd))))))))
        (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
        (br_if $none (i32.gt_u (local.get $fd) (i32.const 1024)))
        (br $next)))
    (i32.const -1))

  (func $need_preopen (param $name i32) (param $len i32) (result i32)
    (local $fd i32)
    (local.set $fd (call $find_preopen (local.get $name) (local.get $len)))
    (if (i32.lt_s (local.get $fd) (i32.const 0))
      (then
        (call $say (i32.const 576) (i32.const 24))
        (call $say (local.get $name) (local.get $len))
        (call $say (i32.const 704) (i32.const 1))
        (call $proc_exit (i32.const 2))))
    (local.get $fd))

  ;; path_open(dir, "name", O_CREAT|O_TRUNC, rights FD_WRITE); returns errno, fd at [24].
  (func $create (param $dir i32) (param $name i32) (param $len i32) (result i32)
    (call $path_open
      (local.get $dir)
      (i32.const 0)           ;; dirflags: do not follow symlinks
      (local.get $name) (local.get $len)
      (i32.const 9)           ;; oflags: CREAT (1) | TRUNC (8)
      (i64.const 64)          ;; rights base: FD_WRITE
      (i64.const 0)           ;; rights inheriting
      (i32.const 0)           ;; fdflags
      (i32.const 24)))

  (func (export "_start")
    (local $data i32)
    (local $input i32)
    (local $err i32)
    (local $file i32)
    (local.set $data (call $need_preopen (i32.const 256) (i32.const 4)))
    (local.set $input (call $need_preopen (i32.const 264) (i32.const 5)))

    ;; 1. data/out.txt must be writable
    (local.set $err (call $create (local.get $data) (i32.const 272) (i32.const 7)))
    (if (i32.eqz (local.get $err))
      (then
        (local.set $file (i32.load (i32.const 24)))
        (local.set $err (call $write_all (local.get $file) (i32.const 320) (i32.const 43)))
        (drop (call $fd_close (local.get $file)))))
    (if (local.get $err)
      (then
        (call $say (i32.const 640) (i32.const 26))
        (call $say_num_ln (local.get $err))
        (call $proc_exit (i32.const 2))))
    (call $say (i32.const 384) (i32.const 19))

    ;; 2. input/forbidden.txt must not be creatable
    (local.set $err (call $create (local.get $input) (i32.const 288) (i32.const 13)))
    (if (i32.eqz (local.get $err))
      (then
        (drop (call $fd_close (i32.load (i32.const 24))))
        (call $say (i32.const 512) (i32.const 55))
        (call $proc_exit (i32.const 1))))
    (call $say (i32.const 448) (i32.const 40))
    (call $say_num_ln (local.get $err)))
)
