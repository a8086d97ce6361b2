/* cuda_launch.h: the launchers of the CUDA kernels, called by host/cuda_backend.c.
 *
 * What it is: one C function per kernel family entry point. Each launcher checks nothing
 * about shapes (host/cuda_backend.c asserts them once, naming the op), enqueues its
 * kernels on `stream`, and checks the launch (CUDA_CHECK_LAUNCH). What it is not: the op
 * table; the backend wraps these into ncsn_backend_ops.
 *
 * Conventions: NCHW float32 device pointers; sizes are of the INPUT as in backend.h;
 * `accumulate` nonzero means += into the destination. Launchers whose destination always
 * accumulates are named `..._accumulate`. Launchers that need temporary device memory take
 * it as a `scratch` argument sized by the matching `..._scratch_bytes` function, carved by
 * the backend from its one shared workspace. Zero-sized ops launch nothing.
 *
 * Per-element math is never written here or in the .cu files: kernels call the shared
 * functions of kernels/element_math.h and kernels/rng_math.h, so the CPU tests exercise
 * exactly the arithmetic the GPU runs. Only launches and reductions differ.
 */
#ifndef NCSN_CUDA_LAUNCH_H
#define NCSN_CUDA_LAUNCH_H

#include "ncsn/common.h"

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime.h>

#include "host/cuda_internal.h"
#include "kernels/element_math.h"
#include "kernels/rng_math.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Returns cudaSuccess when this binary holds kernel images the current device can run
 * (CUDA_ARCH in the Makefile), so the backend can refuse a GPU it cannot drive. */
cudaError_t ncsn_cuda_kernels_probe(void);

/* ---- elementwise.cu ---- */
void ncsn_cuda_elu_forward(cudaStream_t stream, float *out, const float *x, size_t n);
void ncsn_cuda_elu_backward(cudaStream_t stream, float *dx, const float *dout, const float *out, size_t n);
void ncsn_cuda_add(cudaStream_t stream, float *out, const float *a, const float *b, size_t n);
void ncsn_cuda_accumulate(cudaStream_t stream, float *y, const float *x, size_t n);
void ncsn_cuda_scale_shift(cudaStream_t stream, float *out, const float *x, float scale, float shift, size_t n);
void ncsn_cuda_divide_by_sigma(cudaStream_t stream, float *out, const float *x, const float *sigmas,
                               const int32_t *labels, int N, size_t per_example);
void ncsn_cuda_clamp01(cudaStream_t stream, float *x, size_t n);
void ncsn_cuda_logit(cudaStream_t stream, float *x, size_t n);
void ncsn_cuda_label_bias_forward(cudaStream_t stream, float *out, const float *table, const int32_t *labels, int N,
                                  int C, size_t spatial);
size_t ncsn_cuda_label_bias_backward_scratch_bytes(int N, int C);
void ncsn_cuda_label_bias_backward_accumulate(cudaStream_t stream, float *dtable, const float *dout,
                                              const int32_t *labels, int N, int C, size_t spatial, void *scratch);
/* Convolution bias: out[n, k, :] += b[k], and db[k] += sum over n and space of dout[n, k, :]. */
void ncsn_cuda_conv_bias_forward(cudaStream_t stream, float *out, const float *b, int N, int K, size_t spatial);
void ncsn_cuda_conv_bias_backward_accumulate(cudaStream_t stream, float *db, const float *dout, int N, int K,
                                             size_t spatial);

/* ---- norms.cu: InstanceNorm++ (stats layout: NCSN_NORM_STATS_COUNT in backend.h) ---- */
void ncsn_cuda_instance_norm_plus_forward(cudaStream_t stream, float *out, const float *x, const float *gamma,
                                          const float *alpha, const float *beta, int param_stride,
                                          const int32_t *labels, float *stats, int N, int C, int H, int W,
                                          int elu);
size_t ncsn_cuda_instance_norm_plus_backward_scratch_bytes(int N, int C);
void ncsn_cuda_instance_norm_plus_backward(cudaStream_t stream, float *dx, float *dgamma, float *dalpha, float *dbeta,
                                           const float *dout, const float *x, const float *gamma, const float *alpha,
                                           int param_stride, const int32_t *labels, const float *stats, int N, int C,
                                           int H, int W, int accumulate, void *scratch);

/* ---- pooling.cu ---- */
void ncsn_cuda_mean_pool2_forward(cudaStream_t stream, float *out, const float *in, int N, int C, int H, int W);
void ncsn_cuda_mean_pool2_backward(cudaStream_t stream, float *din, const float *dout, int N, int C, int H, int W,
                                   int accumulate);
void ncsn_cuda_avg_pool5_forward(cudaStream_t stream, float *out, const float *in, int N, int C, int H, int W);
void ncsn_cuda_avg_pool5_backward(cudaStream_t stream, float *din, const float *dout, int N, int C, int H, int W,
                                  int accumulate);
void ncsn_cuda_max_pool5_forward(cudaStream_t stream, float *out, const float *in, int N, int C, int H, int W);
size_t ncsn_cuda_max_pool5_backward_scratch_bytes(int N, int C, int H, int W);
void ncsn_cuda_max_pool5_backward(cudaStream_t stream, float *din, const float *dout, const float *in, int N, int C,
                                  int H, int W, int accumulate, void *scratch);
void ncsn_cuda_resize_bilinear_forward(cudaStream_t stream, float *out, const float *in, int N, int C, int H, int W,
                                       int Ho, int Wo);
void ncsn_cuda_resize_bilinear_backward(cudaStream_t stream, float *din, const float *dout, int N, int C, int H, int W,
                                        int Ho, int Wo, int accumulate);

/* ---- loss.cu ---- */
void ncsn_cuda_noise_inject(cudaStream_t stream, float *x_noisy, const float *x, const float *z, const float *sigmas,
                            const int32_t *labels, int N, size_t per_example);
void ncsn_cuda_dsm_loss(cudaStream_t stream, float *loss_per_example, float *dscore, const float *score, const float *z,
                        const float *sigmas, const int32_t *labels, int N, size_t per_example);

/* ---- optimizer.cu ---- */
void ncsn_cuda_adam_step(cudaStream_t stream, float *params, const float *grads, float *m, float *v, float *vmax,
                         size_t n, const ncsn_adam_hparams *hp);
void ncsn_cuda_ema_update(cudaStream_t stream, float *shadow, const float *params, size_t n, float mu);
size_t ncsn_cuda_sum_squares_scratch_bytes(void);
void ncsn_cuda_sum_squares(cudaStream_t stream, float *out, const float *x, size_t n, void *scratch);
void ncsn_cuda_clip_by_norm(cudaStream_t stream, float *g, size_t n, const float *norm2, float max_norm);

/* ---- sampler.cu (and the counter-based RNG fills) ---- */
void ncsn_cuda_fill_normal(cudaStream_t stream, float *out, int N, size_t per_example, uint64_t seed, uint32_t purpose,
                           uint32_t example_offset, uint32_t step);
void ncsn_cuda_fill_uniform(cudaStream_t stream, float *out, int N, size_t per_example, uint64_t seed, uint32_t purpose,
                            uint32_t example_offset, uint32_t step);
void ncsn_cuda_langevin_step(cudaStream_t stream, float *x, const float *score, int N, size_t per_example, float a,
                             uint64_t seed, uint32_t example_offset, uint32_t step);
void ncsn_cuda_denoise_step(cudaStream_t stream, float *x, const float *score, size_t n, float sigma_last_sq);
/* The chain ops (backend.h): scalars read from device memory, for replayed graphs. */
void ncsn_cuda_langevin_step_chain(cudaStream_t stream, float *x, const float *score, int N, size_t per_example,
                                   const float *schedule, int L, const uint32_t *state, uint32_t steps_per_level,
                                   uint64_t seed);
void ncsn_cuda_chain_labels(cudaStream_t stream, int32_t *labels, int N, const int32_t *level_labels, int L,
                            const uint32_t *state, uint32_t steps_per_level);
void ncsn_cuda_chain_advance(cudaStream_t stream, uint32_t *state);
/* The PC corrector: per-example squared norms, and its step size as a one-level schedule. */
void ncsn_cuda_row_sum_squares(cudaStream_t stream, float *out, const float *x, int N, size_t per_example);
void ncsn_cuda_pc_step_size(cudaStream_t stream, float *out, const float *norms2, int N, double snr);

/* ---- convert.cu: BF16 convolution staging (host/cuda_conv.c). A tensor is viewed as
 *      [B][C][S] channels-first (NCHW: B = N, S = H*W; KCRS filters: B = K, S = kh*kw) or
 *      [B][S][C] channels-last; bf16 buffers are uint16_t bit patterns so that C callers
 *      need no CUDA type. ---- */
/* dst[b][s][c] = bf16 round-to-nearest-even of src[b][c][s] */
void ncsn_cuda_channels_first_to_last_bf16(cudaStream_t stream, uint16_t *dst, const float *src, int B, int C,
                                           size_t S);
/* dst[b][c][s] = (or += when accumulate) src[b][s][c]; src is bf16 when src_is_bf16, else fp32 */
void ncsn_cuda_channels_last_to_first_f32(cudaStream_t stream, float *dst, const void *src, int src_is_bf16, int B,
                                          int C, size_t S, int accumulate);

/* ---- bf16 NHWC inference (backend.h "inference in bf16 NHWC"): act_bf16.cu and, for
 *      InstanceNorm++, norms.cu. Activations are ncsn_bf16 [N, H, W, C]; sizes are the
 *      logical N, C, H, W of the INPUT as in backend.h; n counts elements. Each launcher
 *      picks 16-byte vector access when C % 8 == 0 and its pointers are 16-byte aligned,
 *      element access otherwise (same results). ---- */
void ncsn_cuda_elu_forward_bf16(cudaStream_t stream, ncsn_bf16 *out, const ncsn_bf16 *x, size_t n);
void ncsn_cuda_add_bf16(cudaStream_t stream, ncsn_bf16 *out, const ncsn_bf16 *a, const ncsn_bf16 *b, size_t n);
void ncsn_cuda_accumulate_bf16(cudaStream_t stream, ncsn_bf16 *y, const ncsn_bf16 *x, size_t n);
void ncsn_cuda_mean_pool2_forward_bf16(cudaStream_t stream, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C, int H,
                                       int W);
void ncsn_cuda_avg_pool5_forward_bf16(cudaStream_t stream, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C, int H,
                                      int W);
void ncsn_cuda_max_pool5_forward_bf16(cudaStream_t stream, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C, int H,
                                      int W);
void ncsn_cuda_resize_bilinear_forward_bf16(cudaStream_t stream, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C,
                                            int H, int W, int Ho, int Wo);
/* out[n, h, w, c] = bf16(x[n, c, h, w] * scale + shift) */
void ncsn_cuda_bf16_from_nchw(cudaStream_t stream, ncsn_bf16 *out, const float *x, float scale, float shift, int N,
                              int C, int H, int W);
/* out[n, c, h, w] = x[n, h, w, c] / sigmas[labels[n]], or x when sigmas is NULL */
void ncsn_cuda_nchw_from_bf16(cudaStream_t stream, float *out, const ncsn_bf16 *x, const float *sigmas,
                              const int32_t *labels, int N, int C, int H, int W);
/* norms.cu; stats as the fp32 op (NCSN_NORM_STATS_COUNT), written in fp32. */
void ncsn_cuda_instance_norm_plus_forward_bf16(cudaStream_t stream, ncsn_bf16 *out, const ncsn_bf16 *x,
                                               const float *gamma, const float *alpha, const float *beta,
                                               int param_stride, const int32_t *labels, float *stats, int N, int C,
                                               int H, int W, int elu);

#ifdef __cplusplus
}
#endif

/* ---- helpers shared by the .cu files ---- */
#ifdef __CUDACC__
/* Elementwise kernels use grid-stride loops over size_t indices, so one launch covers any
 * n; the grid is capped where more blocks would only add scheduling overhead. */
#define NCSN_CUDA_THREADS 256
static inline unsigned ncsn_cuda_grid(size_t n) {
    size_t blocks = (n + NCSN_CUDA_THREADS - 1) / NCSN_CUDA_THREADS;
    const size_t max_blocks = (size_t)1 << 16;
    return (unsigned)(blocks < max_blocks ? (blocks ? blocks : 1) : max_blocks);
}
#define NCSN_CUDA_GRID_STRIDE_LOOP(i, n)                                                                               \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* Block reductions: CUB's BlockReduce over NCSN_CUDA_REDUCE_THREADS threads. Partial sums
 * are carried in double: the reductions here (instance-norm statistics, bias and
 * embedding gradients, the loss) are memory bound, so the wider accumulator is free and
 * keeps the result independent of the summation order to well below float32 resolution,
 * which is what lets the CPU comparison use tight tolerances. */
#include <cub/block/block_reduce.cuh>

#define NCSN_CUDA_REDUCE_THREADS 256
typedef cub::BlockReduce<double, NCSN_CUDA_REDUCE_THREADS> ncsn_block_reduce;

/* Sum of `v` over the block, returned to EVERY thread. Must be called by all threads of
 * the block; may be called repeatedly (it synchronises before its storage is reused). */
static inline __device__ double ncsn_cuda_block_sum(double v) {
    __shared__ ncsn_block_reduce::TempStorage temp;
    __shared__ double total;
    double sum = ncsn_block_reduce(temp).Sum(v);
    if (threadIdx.x == 0) total = sum;
    __syncthreads();
    double result = total;
    __syncthreads();
    return result;
}

/* align_corners=True bilinear source taps (PyTorch's upsample_bilinear2d): the scale is
 * (in - 1) / (out - 1) in float, 0 for a single output (every output reads index 0); output
 * index dst reads i0 = floor(scale * dst) (clamped: the rounding of scale * dst must not
 * pass the edge) and i1 = i0 + 1, or i0 again at the last index. (pooling.cu still has its
 * own copy of these under the unprefixed names.) */
typedef struct {
    int i0, i1;
    float w0, w1;
} ncsn_bilinear_taps;

static inline __device__ float ncsn_cuda_align_corners_scale(int in_size, int out_size) {
    return out_size > 1 ? (float)(in_size - 1) / (float)(out_size - 1) : 0.0f;
}

static inline __device__ ncsn_bilinear_taps ncsn_cuda_bilinear_source(float scale, int dst, int in_size) {
    float src = scale * (float)dst;
    ncsn_bilinear_taps t;
    t.i0 = min((int)src, in_size - 1);
    t.i1 = t.i0 + (t.i0 < in_size - 1 ? 1 : 0);
    t.w1 = src - (float)t.i0;
    t.w0 = 1.0f - t.w1;
    return t;
}

/* bf16 runs: up to 8 consecutive bf16 elements (8 channels of one NHWC pixel, or a chunk of
 * a flat tensor), `count` of which exist (count <= 0: none; missing ones read as 0 and are
 * not written). With `vector` and a full run, one 16-byte access moves all 8; the caller
 * guarantees that the address is then 16-byte aligned. Element 0 is the low half of the
 * first 32-bit word (little-endian), as in memory. */
static inline __device__ void ncsn_cuda_load8_bf16(ncsn_bf16 h[8], const ncsn_bf16 *p, int count, int vector) {
    if (vector && count == 8) {
        uint4 u = *(const uint4 *)p;
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            h[2 * k] = (ncsn_bf16)(w[k] & 0xffffu);
            h[2 * k + 1] = (ncsn_bf16)(w[k] >> 16);
        }
    } else {
#pragma unroll
        for (int k = 0; k < 8; k++) h[k] = k < count ? p[k] : (ncsn_bf16)0;
    }
}

static inline __device__ void ncsn_cuda_store8_bf16(ncsn_bf16 *p, const ncsn_bf16 h[8], int count, int vector) {
    if (vector && count == 8) {
        uint4 u;
        u.x = (uint32_t)h[0] | (uint32_t)h[1] << 16;
        u.y = (uint32_t)h[2] | (uint32_t)h[3] << 16;
        u.z = (uint32_t)h[4] | (uint32_t)h[5] << 16;
        u.w = (uint32_t)h[6] | (uint32_t)h[7] << 16;
        *(uint4 *)p = u;
    } else {
#pragma unroll
        for (int k = 0; k < 8; k++)
            if (k < count) p[k] = h[k];
    }
}

/* The same runs as fp32 values: bf16 -> fp32 is exact; fp32 -> bf16 is the one rounding of
 * each bf16 op (ncsn_bf16_from_float, round to nearest even, as the CPU backend). */
static inline __device__ void ncsn_cuda_load8_f32(float v[8], const ncsn_bf16 *p, int count, int vector) {
    ncsn_bf16 h[8];
    ncsn_cuda_load8_bf16(h, p, count, vector);
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = ncsn_float_from_bf16(h[k]);
}

static inline __device__ void ncsn_cuda_store8_f32(ncsn_bf16 *p, const float v[8], int count, int vector) {
    ncsn_bf16 h[8];
#pragma unroll
    for (int k = 0; k < 8; k++) h[k] = ncsn_bf16_from_float(v[k]);
    ncsn_cuda_store8_bf16(p, h, count, vector);
}
#endif

#endif /* NCSN_CUDA_LAUNCH_H */
