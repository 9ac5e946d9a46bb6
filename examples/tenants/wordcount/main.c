/*
 * wordcount: a small, ordinary C program (wasi-libc stdio) run as a Night Core tenant.
 *
 * It counts lines, words and bytes, wc-style, of
 *   - each of its own arguments (argv[1..], from the manifest), then
 *   - each regular file directly inside the read-only preopen "input", in byte-wise
 *     name order (the directory listing order is not stable, so it is sorted),
 * computes a 64-bit FNV-1a checksum of each, and writes the report to data/report.txt
 * (read-write preopen "data") and to stdout.
 *
 * Report format (one item per line, then a total; names are printed with control
 * characters replaced by '?'):
 *
 *     night core wordcount report
 *     arg[1] lines=0 words=4 bytes=19 fnv1a64=...
 *     input/words.txt lines=2 words=9 bytes=44 fnv1a64=...
 *     total items=2 files=1 lines=2 words=13 bytes=63 fnv1a64=...
 *
 * A "word" is a maximal run of bytes that are not ASCII whitespace (space, \t, \n, \v,
 * \f, \r); "lines" counts '\n' bytes. The total's fnv1a64 is FNV-1a-64 over the bytes of
 * every item in report order, each item followed by one NUL byte. The output depends only
 * on the arguments and the files in "input", so it is deterministic.
 *
 * After the report, stdout gets one more line, "report written to data/report.txt".
 * Exit status: 0 on success, 1 if the report could not be written (it is still printed to
 * stdout first), 2 on an internal error (out of memory, unreadable input file).
 */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL
#define MAX_FILES 256

struct counts {
    uint64_t lines, words, bytes, hash;
    int in_word;
};

static uint64_t total_hash = FNV_OFFSET;

static void counts_init(struct counts *c) {
    memset(c, 0, sizeof *c);
    c->hash = FNV_OFFSET;
}

static void counts_feed(struct counts *c, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char b = p[i];
        int space = b == ' ' || (b >= '\t' && b <= '\r');
        if (b == '\n')
            c->lines++;
        if (space)
            c->in_word = 0;
        else if (!c->in_word) {
            c->in_word = 1;
            c->words++;
        }
        c->hash = (c->hash ^ b) * FNV_PRIME;
        total_hash = (total_hash ^ b) * FNV_PRIME;
    }
    c->bytes += n;
}

/* ---- the report, accumulated in memory ---- */

static char *report;
static size_t report_len, report_cap;

static void die(const char *what) {
    fprintf(stderr, "wordcount: %s\n", what);
    exit(2);
}

static void emit(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        die("format error");
    if (report_len + (size_t)n + 1 > report_cap) {
        size_t cap = report_cap ? report_cap : 1024;
        while (cap < report_len + (size_t)n + 1)
            cap *= 2;
        char *p = realloc(report, cap);
        if (p == NULL)
            die("out of memory");
        report = p;
        report_cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(report + report_len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    report_len += (size_t)n;
}

static void emit_counts(const struct counts *c) {
    emit(" lines=%llu words=%llu bytes=%llu fnv1a64=%016llx\n", (unsigned long long)c->lines,
         (unsigned long long)c->words, (unsigned long long)c->bytes,
         (unsigned long long)c->hash);
}

/* A copy of `name` that is safe to print on one line. */
static char *printable(const char *name) {
    char *s = strdup(name);
    if (s == NULL)
        die("out of memory");
    for (char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f)
            *p = '?';
    return s;
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of the regular files directly inside `dir`; *count gets their number. */
static char **list_files(const char *dir, size_t *count) {
    static char *names[MAX_FILES];
    *count = 0;
    DIR *d = opendir(dir);
    if (d == NULL)
        return names;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && *count < MAX_FILES) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char path[1024];
        struct stat st;
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path)
            continue;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        names[*count] = strdup(e->d_name);
        if (names[*count] == NULL)
            die("out of memory");
        (*count)++;
    }
    closedir(d);
    qsort(names, *count, sizeof names[0], by_name);
    return names;
}

int main(int argc, char **argv) {
    struct counts total;
    counts_init(&total);
    unsigned long items = 0;

    emit("night core wordcount report\n");

    for (int i = 1; i < argc; i++) {
        struct counts c;
        counts_init(&c);
        counts_feed(&c, (const unsigned char *)argv[i], strlen(argv[i]));
        total_hash = (total_hash ^ 0) * FNV_PRIME;
        emit("arg[%d]", i);
        emit_counts(&c);
        total.lines += c.lines;
        total.words += c.words;
        total.bytes += c.bytes;
        items++;
    }

    size_t nfiles;
    char **files = list_files("input", &nfiles);
    for (size_t i = 0; i < nfiles; i++) {
        char path[1024];
        snprintf(path, sizeof path, "input/%s", files[i]);
        FILE *f = fopen(path, "rb");
        if (f == NULL)
            die("cannot open an input file");
        struct counts c;
        counts_init(&c);
        unsigned char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0)
            counts_feed(&c, buf, n);
        if (ferror(f))
            die("cannot read an input file");
        fclose(f);
        total_hash = (total_hash ^ 0) * FNV_PRIME;
        char *name = printable(files[i]);
        emit("input/%s", name);
        free(name);
        emit_counts(&c);
        total.lines += c.lines;
        total.words += c.words;
        total.bytes += c.bytes;
        items++;
    }

    total.hash = total_hash;
    emit("total items=%lu files=%lu", items, (unsigned long)nfiles);
    emit_counts(&total);

    fwrite(report, 1, report_len, stdout);

    FILE *out = fopen("data/report.txt", "wb");
    int ok = out != NULL;
    int err = errno;
    if (ok) {
        ok = fwrite(report, 1, report_len, out) == report_len;
        err = errno;
        ok = (fclose(out) == 0) && ok;
    }
    if (!ok) {
        fflush(stdout);
        fprintf(stderr, "wordcount: cannot write data/report.txt (errno=%d)\n", err);
        return 1;
    }
    printf("report written to data/report.txt\n");
    return 0;
}
