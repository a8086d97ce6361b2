/* bench_util.h: what every bench/ program needs: a clock, a comparator for medians, the
 * machine's load (other jobs on a shared 2-core machine depress every number), and inputs. */
#ifndef NCSN_BENCH_UTIL_H
#define NCSN_BENCH_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include "kernels/rng_math.h"

static inline double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

static inline int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* 1-minute load average, -1 if unknown. */
static inline double load_average(void) {
    double load = -1.0;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &load) != 1) load = -1.0;
        fclose(f);
    }
    return load;
}

/* p[i] = shift + scale * U(-1, 1), from the engine RNG (stream = which buffer). */
static inline void bench_fill(float *p, size_t n, uint32_t stream, float scale, float shift) {
    for (size_t i = 0; i < n; i++)
        p[i] = shift + scale * (2.0f * ncsn_rng_uniform(1, NCSN_RNG_TOY, stream, 0, i) - 1.0f);
}

#endif
