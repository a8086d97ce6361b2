/* cpu_internal.h: private state of the CPU backend, shared by cpu_backend.c (memory, the
 * OpenMP ops, the ops table) and cpu_conv.c (oneDNN convolutions and sgemm).
 *
 * What it is: the backend's `impl` struct and the few functions the two files call in each
 * other. What it is not: a public interface; nothing outside host/cpu_*.c includes it.
 *
 * Threading: ops are called from one host thread at a time (like a CUDA stream); each op
 * parallelises internally (OpenMP, or oneDNN's own OpenMP). The convolution cache and the
 * scratch buffers are therefore not locked.
 */
#ifndef NCSN_CPU_INTERNAL_H
#define NCSN_CPU_INTERNAL_H

#include <stddef.h>

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>

#include "ncsn/backend.h"

/* Every oneDNN call goes through this: on failure it names the call, oneDNN's status and
 * file:line, then exits (the engine never continues after a failed library call). */
#define DNNL_CHECK(call)                                                                        \
    do {                                                                                        \
        dnnl_status_t dnnl_check_status_ = (call);                                              \
        if (dnnl_check_status_ != dnnl_success)                                                 \
            ncsn_die("%s:%d: %s failed: dnnl_status %s (%d)", __FILE__, __LINE__, #call,        \
                     dnnl_status2str(dnnl_check_status_), (int)dnnl_check_status_);             \
    } while (0)

/* Which memory layout the convolution primitives run in. User tensors are always plain
 * NCHW / OIHW; anything else is reached by cached reorders around the primitive.
 * ANY (the default) lets oneDNN choose: its blocked nChw16c / OIhw16i16o family on AVX-512
 * (jit:avx512_core). NCSN_CPU_CONV_LAYOUT=any|nchw|nhwc selects another for measurement.
 * Measured on the CIFAR-10 3x3 layers at N = 32 (bench/bench_ops; one thread, CPU time, on
 * a shared machine): plain NCHW runs oneDNN's im2col gemm and is 15-35% slower than ANY
 * in every direction (backward-weights of 128ch@32x32 collapses to ~10 GFLOP/s with two
 * threads); NHWC (brgconv forward) is within +-10% of ANY on the forward but 5-20% slower
 * on both backwards; so ANY, reorders included, is the fastest overall. */
typedef enum { CPU_CONV_LAYOUT_ANY = 0, CPU_CONV_LAYOUT_NCHW = 1, CPU_CONV_LAYOUT_NHWC = 2 } cpu_conv_layout;

typedef struct cpu_conv_entry cpu_conv_entry; /* one cached (ncsn_conv_desc, precision) (cpu_conv.c) */

/* The three convolution directions; each cache entry holds one primitive per direction.
 * (Added with the BF16 path: tests ask which implementation a direction runs.) */
typedef enum {
    CPU_CONV_FORWARD = 0,
    CPU_CONV_BACKWARD_DATA = 1,
    CPU_CONV_BACKWARD_WEIGHTS = 2,
    CPU_CONV_DIRECTIONS = 3
} cpu_conv_direction;

/* A grow-only host buffer reused across calls (reorder targets, oneDNN scratchpad). */
typedef struct {
    void *ptr;
    size_t bytes;
} cpu_scratch;

typedef struct {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    cpu_conv_layout layout;
    /* Convolution primitives, one entry per distinct (ncsn_conv_desc, precision): a model
     * has tens per precision. */
    cpu_conv_entry *conv_cache;
    int conv_cache_count, conv_cache_capacity;
    /* BF16: set once a direction had to fall back to fp32 (no jit bf16 primitive on this
     * CPU), so the one-line explanation is printed once per direction, not per shape. */
    int bf16_fallback_reported[CPU_CONV_DIRECTIONS];
    /* bf16 NHWC inference convolutions: the same once-only notes, for a shape served by the
     * fp32 primitive on converted data, and for a batch size whose primitive wants another
     * weights layout than the packed one. */
    int bf16_nhwc_fallback_reported, bf16_nhwc_weights_reorder_reported;
    /* Tests only: bf16 NHWC entries built while this is set take the fp32 fallback, as if
     * oneDNN had no bf16 kernel for them (no shape on this CPU lacks one). */
    int bf16_nhwc_force_fp32;
    /* Shared scratch, grown to the largest need and then reused, so that a training or
     * sampling step allocates nothing: the oneDNN scratchpad (user mode, one buffer for
     * every primitive), reorder targets for src, weights and dst, the bias-gradient staging
     * buffer, and op_buf for the OpenMP ops' temporaries (IN++ sums, resize taps). */
    cpu_scratch scratchpad, src_buf, weights_buf, dst_buf, bias_buf, op_buf, epilogue_buf;
} cpu_backend_impl;

/* Grows `s` to at least `bytes` (contents not preserved) and returns its pointer. */
void *cpu_scratch_reserve(cpu_scratch *s, size_t bytes);
void cpu_scratch_release(cpu_scratch *s);

/* cpu_conv.c */
void cpu_conv_init(cpu_backend_impl *impl);
void cpu_conv_destroy(cpu_backend_impl *impl);
void cpu_conv2d_forward(ncsn_backend *be, float *out, const float *in, const float *w, const float *b,
                        const ncsn_conv_desc *d);
void cpu_conv2d_backward_data(ncsn_backend *be, float *din, const float *dout, const float *w,
                              const ncsn_conv_desc *d, int accumulate);
void cpu_conv2d_backward_weights_accumulate(ncsn_backend *be, float *dw, float *db, const float *in,
                                            const float *dout, const ncsn_conv_desc *d);
void cpu_gemm_nt(ncsn_backend *be, float *C, const float *A, const float *B, int M, int Nc, int K);
/* bf16 NHWC inference (backend.h): weights packed in the layout of the shape's forward
 * primitive at a canonical batch size, and the forward on bf16 NHWC activations. */
size_t cpu_conv2d_packed_weights_bytes(ncsn_backend *be, const ncsn_conv_desc *d);
void cpu_conv2d_pack_weights_bf16(ncsn_backend *be, void *packed, const float *w, const float *b,
                                  const ncsn_conv_desc *d);
void cpu_conv2d_forward_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, const void *packed_w,
                             const ncsn_bf16 *residual, int elu, const ncsn_conv_desc *d);
const char *cpu_conv_bf16_nhwc_impl_name(ncsn_backend *be, const ncsn_conv_desc *d);
/* The precision direction `dir` of convolution `d` actually runs in at be->precision
 * (building its primitive if needed): NCSN_PRECISION_BF16 only where oneDNN has a jit bf16
 * primitive on this CPU, else NCSN_PRECISION_FP32. *impl_name (if not NULL) receives
 * oneDNN's implementation name, e.g. "jit_bf16:avx512_core_bf16"; it stays valid until the
 * backend is destroyed. For tests and benchmarks. */
ncsn_precision cpu_conv_effective_precision(ncsn_backend *be, const ncsn_conv_desc *d, cpu_conv_direction dir,
                                            const char **impl_name);

#endif /* NCSN_CPU_INTERNAL_H */
