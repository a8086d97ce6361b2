/* harness.h: the tiny test harness every tests/test_*.c uses.
 *
 * A test binary runs its checks, prints one line per check (PASS/FAIL with the numbers
 * that decided it), and exits non-zero if any check failed. Array comparisons print the
 * first differing values, not just "mismatch".
 */
#ifndef NCSN_TEST_HARNESS_H
#define NCSN_TEST_HARNESS_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ncsn/backend.h"

static int harness_failures = 0;
static int harness_checks = 0;

#define EXPECT(cond, ...)                                                    \
    do {                                                                     \
        harness_checks++;                                                    \
        if (!(cond)) {                                                       \
            harness_failures++;                                              \
            printf("  FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);         \
            printf(__VA_ARGS__);                                             \
            printf("\n");                                                    \
        }                                                                    \
    } while (0)

/* Compares got against ref (float64) with |got - ref| <= atol + rtol * |ref| elementwise.
 * Prints the max error and up to 5 first differing entries. Returns 1 on pass. */
static inline int harness_expect_close(const char *what, const float *got, const double *ref, size_t n,
                                       double atol, double rtol) {
    harness_checks++;
    double max_err = 0.0, max_ref = 0.0;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - ref[i]);
        if (!(err <= atol + rtol * fabs(ref[i]))) {
            if (bad < 5) printf("    %s[%zu]: got %.9g want %.9g (err %.3g)\n", what, i, got[i], ref[i], err);
            bad++;
        }
        if (err > max_err || err != err) max_err = err;
        if (fabs(ref[i]) > max_ref) max_ref = fabs(ref[i]);
    }
    if (bad) {
        harness_failures++;
        printf("  FAIL %s: %zu/%zu outside atol %.1e rtol %.1e (max err %.3e, max |ref| %.3e)\n", what, bad, n,
               atol, rtol, max_err, max_ref);
        return 0;
    }
    printf("  ok   %s: n=%zu max err %.3e (max |ref| %.3e)\n", what, n, max_err, max_ref);
    return 1;
}

/* Test data independent of the engine's own RNG: splitmix64 over *state, as a double in
 * [0, 1) with 53 random bits. */
static inline double harness_rand_uniform(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* The CPU backend every test runs on; a test cannot go on without it. */
/* ||got - ref|| / ||ref|| over n values, in double (||got - ref|| when ref is all zero). */
static inline double harness_relative_l2(const float *got, const float *ref, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)got[i] - (double)ref[i];
        num += e * e;
        den += (double)ref[i] * (double)ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static inline ncsn_backend *harness_cpu_backend(void) {
    char err[256];
    ncsn_backend *be = ncsn_cpu_backend_create(err, sizeof err);
    if (!be) {
        printf("cannot create the CPU backend: %s\n", err);
        exit(1);
    }
    return be;
}

static inline int harness_finish(const char *name) {
    printf("%s: %d checks, %d failed\n", name, harness_checks, harness_failures);
    return harness_failures ? 1 : 0;
}

#endif
