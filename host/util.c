/* util.c: fatal errors and checked allocation (common.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "ncsn/common.h"

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
