/* bench_util.h: what every bench/ program needs: a clock, a comparator for medians, the
 * machine's load (other jobs on a shared 2-core machine depress every number), and inputs. */
#ifndef NCSN_BENCH_UTIL_H
#define NCSN_BENCH_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "kernels/rng_math.h"
#include "ncsn/backend.h"

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

/* The timed-run count from argv[1] (else `fallback`; at least 1), and the CPU backend, or
 * a message naming the program and exit 1. */
static inline int bench_runs(int argc, char **argv, int fallback) {
    int runs = argc > 1 ? atoi(argv[1]) : fallback;
    return runs < 1 ? 1 : runs;
}

static inline ncsn_backend *bench_cpu_backend(const char *program) {
    char err[256];
    ncsn_backend *be = ncsn_cpu_backend_create(err, sizeof err);
    if (!be) {
        fprintf(stderr, "%s: cannot create the CPU backend: %s\n", program, err);
        exit(1);
    }
    return be;
}

/* ---- the CIFAR-10 3x3 convolutions that bench_ops and bench_precision time ---- */

typedef struct {
    const char *name;
    int C, H, dilation;
} bench_conv;

/* Keep in sync with CONVS in bench/torch_ops.py. */
static const bench_conv bench_convs[] = {
    {"128ch@32x32_d1", 128, 32, 1}, {"256ch@16x16_d1", 256, 16, 1}, {"256ch@16x16_d2", 256, 16, 2},
    {"256ch@16x16_d4", 256, 16, 4}};
enum { BENCH_NCONV = sizeof bench_convs / sizeof bench_convs[0], BENCH_NDIR = 3, BENCH_BATCH = 32 };
static const char *const bench_dir_names[BENCH_NDIR] = {"forward", "backward_data", "backward_weights"};

/* One convolution's tensors at batch BENCH_BATCH, filled from the engine RNG. */
typedef struct {
    ncsn_conv_desc d;
    float *x, *y, *dy, *dx, *w, *dw, *b, *db;
    double flops; /* 2 * MACs of one call, padding taps counted */
} bench_conv_tensors;

static inline bench_conv_tensors bench_conv_create(ncsn_backend *be, const bench_conv *bc) {
    bench_conv_tensors t;
    t.d = (ncsn_conv_desc){BENCH_BATCH, bc->C, bc->H, bc->H, bc->C, 3, bc->dilation, 1};
    size_t nact = (size_t)BENCH_BATCH * bc->C * bc->H * bc->H, nw = (size_t)bc->C * bc->C * 9;
    t.x = ncsn_alloc(be, nact * sizeof(float));
    t.y = ncsn_alloc(be, nact * sizeof(float));
    t.dy = ncsn_alloc(be, nact * sizeof(float));
    t.dx = ncsn_alloc(be, nact * sizeof(float));
    t.w = ncsn_alloc(be, nw * sizeof(float));
    t.dw = ncsn_alloc(be, nw * sizeof(float));
    t.b = ncsn_alloc(be, bc->C * sizeof(float));
    t.db = ncsn_alloc(be, bc->C * sizeof(float));
    bench_fill(t.x, nact, 1, 1.0f, 0.0f);
    bench_fill(t.dy, nact, 2, 1.0f, 0.0f);
    bench_fill(t.w, nw, 3, 0.03f, 0.0f);
    bench_fill(t.b, bc->C, 4, 0.1f, 0.0f);
    t.flops = 2.0 * BENCH_BATCH * bc->C * bc->C * 9.0 * bc->H * bc->H;
    return t;
}

/* One call in direction dir (0 forward, 1 backward-data, 2 backward-weights), waited for. */
static inline void bench_conv_run(ncsn_backend *be, bench_conv_tensors *t, int dir) {
    if (dir == 0) ncsn_conv2d_forward(be, t->y, t->x, t->w, t->b, &t->d);
    if (dir == 1) ncsn_conv2d_backward_data(be, t->dx, t->dy, t->w, &t->d, 0);
    if (dir == 2) ncsn_conv2d_backward_weights_accumulate(be, t->dw, t->db, t->x, t->dy, &t->d);
    ncsn_synchronize(be);
}

static inline void bench_conv_free(ncsn_backend *be, bench_conv_tensors *t) {
    float *bufs[] = {t->x, t->y, t->dy, t->dx, t->w, t->dw, t->b, t->db};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) ncsn_free(be, bufs[i]);
}

#endif
