/* common.h: error reporting, status-check macros and the host/device qualifier.
 *
 * What it is: the few macros every file uses. Errors in this engine are fatal and
 * reported as one line "ncsn: <where>: <what>" on stderr followed by exit(1); the
 * engine never continues after a failed library call or a violated shape invariant.
 * What it is not: a logging framework (see log.h for progress lines).
 */
#ifndef NCSN_COMMON_H
#define NCSN_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef __CUDACC__
#define NCSN_HD __host__ __device__
#else
#define NCSN_HD
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Prints "ncsn: <message>" and exits with status 1. */
void ncsn_die(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2), noreturn))
#endif
    ;

/* Calls malloc/calloc and dies with file:line on failure. */
void *ncsn_xmalloc_at(size_t bytes, const char *file, int line);
void *ncsn_xcalloc_at(size_t count, size_t size, const char *file, int line);
#define ncsn_xmalloc(b) ncsn_xmalloc_at((b), __FILE__, __LINE__)
#define ncsn_xcalloc(n, s) ncsn_xcalloc_at((n), (s), __FILE__, __LINE__)

#ifdef __cplusplus
}
#endif

/* Shape and invariant checks stay on in release builds: they are cheap next to a
 * convolution and a wrong shape in code that cannot be run here must fail loudly. */
#define NCSN_CHECK(cond, ...)                                                      \
    do {                                                                           \
        if (!(cond)) ncsn_die("%s:%d: check failed: %s", __FILE__, __LINE__, #cond); \
    } while (0)

#define NCSN_CHECKF(cond, ...)                                                     \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "ncsn: %s:%d: ", __FILE__, __LINE__);                  \
            fprintf(stderr, __VA_ARGS__);                                          \
            fputc('\n', stderr);                                                   \
            exit(1);                                                               \
        }                                                                          \
    } while (0)

#endif /* NCSN_COMMON_H */
