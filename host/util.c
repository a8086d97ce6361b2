/* util.c: fatal errors and checked allocation (common.h). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "ncsn/common.h"
#include "ncsn/cli.h"

void ncsn_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("ncsn: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

void *ncsn_xmalloc_at(size_t bytes, const char *file, int line) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) ncsn_die("%s:%d: out of host memory allocating %zu bytes", file, line, bytes);
    return p;
}

void *ncsn_xcalloc_at(size_t count, size_t size, const char *file, int line) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) ncsn_die("%s:%d: out of host memory allocating %zu x %zu bytes", file, line, count, size);
    return p;
}

long ncsn_parse_long_flag(const char *flag, const char *text, long lo, long hi) {
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < lo || v > hi)
        ncsn_die("%s: expected an integer in [%ld, %ld], got '%s'", flag, lo, hi, text);
    return v;
}

double ncsn_parse_double_flag(const char *flag, const char *text, int positive) {
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !isfinite(v) || (positive && v <= 0.0))
        ncsn_die("%s: expected a %snumber, got '%s'", flag, positive ? "positive " : "", text);
    return v;
}
