/* gpu_pair.h: the two backends every GPU test compares, set up one way.
 *
 * gpu is the CUDA backend, or, with NCSN_TEST_GPU_CPU_PAIR=1, a second CPU backend, so the
 * test's own logic can be checked on a machine without a GPU. Both run strict fp32 and
 * gpu deterministic algorithms only: a comparison must not depend on which engine cuDNN's
 * heuristics rank first, nor on TF32. Include after tests/harness.h.
 */
#ifndef NCSN_TEST_GPU_PAIR_H
#define NCSN_TEST_GPU_PAIR_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ncsn/backend.h"

/* Creates *cpu and *gpu. Returns 1 in CPU-pair mode, 0 against CUDA, and -1 after
 * printing "test-gpu: skipped: <reason>" when there is no GPU (the test then exits 0). */
static inline int gpu_pair_create(ncsn_backend **cpu, ncsn_backend **gpu) {
    char err[512] = {0};
    const char *pair_env = getenv("NCSN_TEST_GPU_CPU_PAIR");
    int cpu_pair = pair_env && !strcmp(pair_env, "1");
    *gpu = cpu_pair ? ncsn_cpu_backend_create(err, sizeof err) : ncsn_cuda_backend_create(err, sizeof err);
    if (!*gpu) {
        printf("test-gpu: skipped: %s\n", err);
        return -1;
    }
    *cpu = ncsn_cpu_backend_create(err, sizeof err);
    if (!*cpu) ncsn_die("cannot create the CPU backend: %s", err);
    (*cpu)->precision = (*gpu)->precision = NCSN_PRECISION_FP32;
    (*gpu)->deterministic = 1;
    return cpu_pair;
}

#endif /* NCSN_TEST_GPU_PAIR_H */
