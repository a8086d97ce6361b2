/* backend.c: choosing a backend (backend.h). */
#include <stdio.h>
#include <string.h>

#include "ncsn/backend.h"

int ncsn_backend_cuda_compiled(void) {
#ifdef NCSN_WITH_CUDA
    return 1;
#else
    return 0;
#endif
}

#ifndef NCSN_WITH_CUDA
ncsn_backend *ncsn_cuda_backend_create(char *err, size_t errlen) {
    snprintf(err, errlen, "no CUDA device: this binary was built without the CUDA backend (make CUDA=1)");
    return NULL;
}
#endif

ncsn_backend *ncsn_backend_create(ncsn_device_kind kind, char *err, size_t errlen) {
    if (kind == NCSN_DEVICE_CUDA) return ncsn_cuda_backend_create(err, errlen);
    return ncsn_cpu_backend_create(err, errlen);
}

ncsn_backend *ncsn_backend_create_from_name(const char *name) {
    char err[512] = {0};
    ncsn_backend *be = NULL;
    if (!name || !strcmp(name, "auto")) {
        be = ncsn_cuda_backend_create(err, sizeof err);
        if (be) {
            fprintf(stderr, "device: cuda (auto)\n");
            return be;
        }
        be = ncsn_cpu_backend_create(err, sizeof err);
        if (!be) ncsn_die("cannot create the CPU backend: %s", err);
        fprintf(stderr, "device: cpu (auto; no CUDA device)\n");
        return be;
    }
    if (!strcmp(name, "cuda")) {
        be = ncsn_cuda_backend_create(err, sizeof err);
        if (!be) ncsn_die("%s", err);
        return be;
    }
    if (!strcmp(name, "cpu")) {
        be = ncsn_cpu_backend_create(err, sizeof err);
        if (!be) ncsn_die("cannot create the CPU backend: %s", err);
        return be;
    }
    ncsn_die("unknown device '%s' (expected cpu, cuda or auto)", name);
}

void ncsn_backend_destroy(ncsn_backend *be) {
    if (!be) return;
#ifdef NCSN_WITH_CUDA
    if (be->kind == NCSN_DEVICE_CUDA) {
        ncsn_cuda_backend_destroy(be);
        return;
    }
#endif
    ncsn_cpu_backend_destroy(be);
}

ncsn_precision ncsn_precision_parse(const char *name, const char *flag) {
    if (!strcmp(name, "fp32")) return NCSN_PRECISION_FP32;
    if (!strcmp(name, "tf32")) return NCSN_PRECISION_TF32;
    if (!strcmp(name, "bf16")) return NCSN_PRECISION_BF16;
    ncsn_die("%s: expected fp32, tf32 or bf16, got '%s'", flag, name);
}

const char *ncsn_precision_name(ncsn_precision p) {
    return p == NCSN_PRECISION_BF16 ? "bf16" : p == NCSN_PRECISION_TF32 ? "tf32" : "fp32";
}

void ncsn_backend_set_precision(ncsn_backend *be, ncsn_precision p) {
    be->precision = p;
    const char *what = p == NCSN_PRECISION_FP32   ? "strict fp32 everywhere"
                       : p == NCSN_PRECISION_TF32 ? (be->kind == NCSN_DEVICE_CUDA ? "tf32 tensor-core convolutions"
                                                                                 : "fp32 (tf32 is a CUDA mode)")
                                                  : "bf16 convolution inputs/weights, fp32 accumulation";
    fprintf(stderr, "precision: %s (%s; norms, loss, optimizer and chain state fp32)\n", ncsn_precision_name(p),
            what);
}
