/*
 * fs-escaper: a hostile tenant that tries to reach files outside its one preopen.
 *
 * It is granted a single read-write preopen, "data". Every attempt below is made with the
 * raw WASI preview1 calls (<wasi/api.h>) against the preopen's directory fd, so it is the
 * runtime that has to refuse them; wasi-libc's own path resolution (which would refuse
 * most of them before the host is even asked) is bypassed on purpose. A few attempts are
 * then repeated through stdio (fopen), the way ordinary C code would try them.
 *
 * One line is printed per attempt, e.g.
 *     open [data] ../../../../etc/passwd: denied errno=76 (NOTCAPABLE)
 *     create [data] ../escaped.txt: ESCAPED
 * and a last summary line:
 *     fs-escaper: all 15 escape attempts denied
 *     fs-escaper: 1 of 15 escape attempts SUCCEEDED
 *
 * Exit status: 0 if every attempt was denied, 1 if any succeeded, 2 if the "data"
 * preopen is missing. Any error at all counts as "denied": an attempt only counts as
 * an escape when the call reports success. (Whether a refused call still left something
 * on the host is for the runtime's own tests to check from outside.)
 *
 * Setup steps that are not escapes by themselves (creating symlinks or a scratch file
 * inside "data") are printed as "setup ..." lines and cleaned up afterwards, so repeated
 * runs over the same host directory print the same output.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <wasi/api.h>

#define FD_READ_RIGHTS ((__wasi_rights_t)__WASI_RIGHTS_FD_READ)
#define FD_WRITE_RIGHTS ((__wasi_rights_t)__WASI_RIGHTS_FD_WRITE)

static int attempts;
static int escapes;

static const char *errno_name(unsigned e) {
    switch (e) {
    case __WASI_ERRNO_ACCES: return "ACCES";
    case __WASI_ERRNO_BADF: return "BADF";
    case __WASI_ERRNO_EXIST: return "EXIST";
    case __WASI_ERRNO_INVAL: return "INVAL";
    case __WASI_ERRNO_IO: return "IO";
    case __WASI_ERRNO_ISDIR: return "ISDIR";
    case __WASI_ERRNO_LOOP: return "LOOP";
    case __WASI_ERRNO_NAMETOOLONG: return "NAMETOOLONG";
    case __WASI_ERRNO_NOENT: return "NOENT";
    case __WASI_ERRNO_NOSYS: return "NOSYS";
    case __WASI_ERRNO_NOTDIR: return "NOTDIR";
    case __WASI_ERRNO_NOTEMPTY: return "NOTEMPTY";
    case __WASI_ERRNO_NOTSUP: return "NOTSUP";
    case __WASI_ERRNO_PERM: return "PERM";
    case __WASI_ERRNO_ROFS: return "ROFS";
    case __WASI_ERRNO_XDEV: return "XDEV";
    case __WASI_ERRNO_NOTCAPABLE: return "NOTCAPABLE";
    default: return "?";
    }
}

/* Records the outcome of one escape attempt; err == 0 means the call succeeded. */
static void report(const char *what, const char *label, unsigned err) {
    attempts++;
    if (err == 0) {
        escapes++;
        printf("%s %s: ESCAPED\n", what, label);
    } else {
        printf("%s %s: denied errno=%u (%s)\n", what, label, err, errno_name(err));
    }
}

static void setup(const char *what, const char *label, unsigned err) {
    if (err == 0)
        printf("setup %s %s: ok\n", what, label);
    else
        printf("setup %s %s: refused errno=%u (%s)\n", what, label, err, errno_name(err));
}

/* The fd of the directory preopen called `name`, or -1. */
static int find_preopen(const char *name) {
    size_t len = strlen(name);
    for (__wasi_fd_t fd = 3; fd < 1024; fd++) {
        __wasi_prestat_t st;
        if (__wasi_fd_prestat_get(fd, &st) != 0)
            break; /* past the last preopen */
        if (st.tag != __WASI_PREOPENTYPE_DIR || st.u.dir.pr_name_len != len)
            continue;
        char buf[64];
        if (len > sizeof buf)
            continue;
        if (__wasi_fd_prestat_dir_name(fd, (uint8_t *)buf, len) != 0)
            continue;
        if (memcmp(buf, name, len) == 0)
            return (int)fd;
    }
    return -1;
}

static unsigned try_open(__wasi_fd_t dir, const char *path, __wasi_lookupflags_t lookup,
                         __wasi_oflags_t oflags, __wasi_rights_t rights) {
    __wasi_fd_t fd;
    __wasi_errno_t err = __wasi_path_open(dir, lookup, path, oflags, rights, 0, 0, &fd);
    if (err == 0)
        (void)__wasi_fd_close(fd);
    return err;
}

static void open_read(__wasi_fd_t dir, const char *path, __wasi_lookupflags_t lookup) {
    char label[128];
    snprintf(label, sizeof label, "[data] %s", path);
    report("open", label, try_open(dir, path, lookup, 0, FD_READ_RIGHTS));
}

static void create_write(__wasi_fd_t dir, const char *path) {
    char label[128];
    snprintf(label, sizeof label, "[data] %s", path);
    report("create", label,
           try_open(dir, path, 0, __WASI_OFLAGS_CREAT | __WASI_OFLAGS_TRUNC, FD_WRITE_RIGHTS));
}

static void libc_open(const char *path, const char *mode) {
    char label[128];
    snprintf(label, sizeof label, "%s (mode %s)", path, mode);
    FILE *f = fopen(path, mode);
    unsigned err = 0;
    if (f == NULL) {
        err = (unsigned)errno; /* wasi-libc's errno values are the WASI errno codes */
        if (err == 0)
            err = __WASI_ERRNO_IO;
    } else {
        fclose(f);
    }
    report("fopen", label, err);
}

int main(void) {
    int data_fd = find_preopen("data");
    if (data_fd < 0) {
        printf("error: no preopen named data\n");
        return 2;
    }
    __wasi_fd_t data = (__wasi_fd_t)data_fd;

    /* 1. Reading outside the preopen. */
    open_read(data, "../../../../etc/passwd", 0);
    open_read(data, "/etc/passwd", 0);
    open_read(data, "../../secret.txt", 0);   /* the guest path data/../../secret.txt */
    open_read(data, "./.././../secret.txt", 0);
    open_read(data, "..", 0);

    /* 2. Creating files and directories outside the preopen. */
    create_write(data, "../../escaped.txt");     /* the guest path data/../../escaped.txt */
    create_write(data, "../escaped.txt");
    {
        unsigned err = __wasi_path_create_directory(data, "../escaped-dir");
        if (err == 0)
            (void)__wasi_path_remove_directory(data, "../escaped-dir");
        report("mkdir", "[data] ../escaped-dir", err);
    }

    /* 3. Metadata of the directory above the preopen. */
    {
        __wasi_filestat_t st;
        report("stat", "[data] ..", __wasi_path_filestat_get(data, 0, "..", &st));
    }

    /* 4. Moving a file out of the preopen. */
    {
        (void)__wasi_path_unlink_file(data, "rename-me.txt");
        unsigned err = try_open(data, "rename-me.txt", 0, __WASI_OFLAGS_CREAT, FD_WRITE_RIGHTS);
        setup("create", "[data] rename-me.txt", err);
        err = __wasi_path_rename(data, "rename-me.txt", data, "../renamed.txt");
        report("rename", "[data] rename-me.txt -> ../renamed.txt", err);
        (void)__wasi_path_unlink_file(data, "rename-me.txt");
    }

    /* 5. Following symlinks that point outside (absolute and relative targets). */
    {
        (void)__wasi_path_unlink_file(data, "abs-link");
        (void)__wasi_path_unlink_file(data, "up-link");
        setup("symlink", "[data] abs-link -> /etc", __wasi_path_symlink("/etc", data, "abs-link"));
        setup("symlink", "[data] up-link -> ../../../..",
              __wasi_path_symlink("../../../..", data, "up-link"));
        open_read(data, "abs-link/passwd", __WASI_LOOKUPFLAGS_SYMLINK_FOLLOW);
        open_read(data, "up-link/etc/passwd", __WASI_LOOKUPFLAGS_SYMLINK_FOLLOW);
        (void)__wasi_path_unlink_file(data, "abs-link");
        (void)__wasi_path_unlink_file(data, "up-link");
    }

    /* 6. The same ideas through wasi-libc's stdio, as ordinary C code would try them. */
    libc_open("/etc/passwd", "r");
    libc_open("data/../../secret.txt", "r");
    libc_open("data/../../escaped.txt", "w");

    if (escapes == 0)
        printf("fs-escaper: all %d escape attempts denied\n", attempts);
    else
        printf("fs-escaper: %d of %d escape attempts SUCCEEDED\n", escapes, attempts);
    return escapes == 0 ? 0 : 1;
}
