/* optimizer.cu: one fused torch.optim.Adam update and one EMA update over the whole
 * parameter buffer, and the sum of squares used for the gradient norm.
 *
 * The parameters, gradients and moments each live in one contiguous buffer (llm.c's
 * layout), so each update is a single launch whatever the network.
 */
#include "kernels/cuda_launch.h"

/* The per-step scalars (bias corrections) are computed once on the host by
 * ncsn_adam_prepare, in double, exactly as the CPU backend does. */
static __global__ void adam_kernel(float *params, const float *grads, float *m, float *v, float *vmax, size_t n,
                                   float beta1, float beta2, float eps, float weight_decay, int amsgrad,
                                   float step_size, float sqrt_bias_correction2) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) {
        ncsn_adam_element(&params[i], grads[i], &m[i], &v[i], vmax ? &vmax[i] : NULL, beta1, beta2, eps, weight_decay,
                          amsgrad, step_size, sqrt_bias_correction2);
    }
}

extern "C" void ncsn_cuda_adam_step(cudaStream_t stream, float *params, const float *grads, float *m, float *v,
                                    float *vmax, size_t n, const ncsn_adam_hparams *hp) {
    if (n == 0) return;
    ncsn_adam_scalars s = ncsn_adam_prepare(hp);
    adam_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(params, grads, m, v, vmax, n, hp->beta1, hp->beta2,
                                                                     hp->eps, hp->weight_decay, hp->amsgrad,
                                                                     s.step_size, s.sqrt_bias_correction2);
    CUDA_CHECK_LAUNCH(stream);
}

static __global__ void ema_kernel(float *shadow, const float *params, size_t n, float mu) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) shadow[i] = ncsn_ema_element(shadow[i], params[i], mu);
}

extern "C" void ncsn_cuda_ema_update(cudaStream_t stream, float *shadow, const float *params, size_t n, float mu) {
    if (n == 0) return;
    ema_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(shadow, params, n, mu);
    CUDA_CHECK_LAUNCH(stream);
}

/* Sum of squares in two deterministic passes: a FIXED number of blocks each reduce a
 * grid-strided share into one double partial, then one block adds the partials in order.
 * (A single pass with atomicAdd would make the gradient norm, and so gradient clipping,
 * vary from run to run.) */
#define SUM_SQUARES_BLOCKS 512

static __global__ void sum_squares_partials_kernel(double *partials, const float *x, size_t n) {
    double sum = 0.0;
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) sum += (double)x[i] * (double)x[i];
    sum = ncsn_cuda_block_sum(sum);
    if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

static __global__ void sum_partials_kernel(float *out, const double *partials, int count) {
    double sum = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) sum += partials[i];
    sum = ncsn_cuda_block_sum(sum);
    if (threadIdx.x == 0) *out = (float)sum;
}

extern "C" size_t ncsn_cuda_sum_squares_scratch_bytes(void) { return SUM_SQUARES_BLOCKS * sizeof(double); }

extern "C" void ncsn_cuda_sum_squares(cudaStream_t stream, float *out, const float *x, size_t n, void *scratch) {
    double *partials = (double *)scratch;
    /* n == 0 still writes the (zero) result: the output is defined for an empty buffer. */
    sum_squares_partials_kernel<<<SUM_SQUARES_BLOCKS, NCSN_CUDA_REDUCE_THREADS, 0, stream>>>(partials, x, n);
    CUDA_CHECK_LAUNCH(stream);
    sum_partials_kernel<<<1, NCSN_CUDA_REDUCE_THREADS, 0, stream>>>(out, partials, SUM_SQUARES_BLOCKS);
    CUDA_CHECK_LAUNCH(stream);
}

/* Gradient clipping with the norm in device memory: every thread derives the same factor
 * from *norm2 (one cached load), so the host never reads the norm inside a step. */
static __global__ void clip_by_norm_kernel(float *g, size_t n, const float *norm2, float max_norm) {
    const float coef = ncsn_clip_coef(*norm2, max_norm);
    if (coef == 1.0f) return; /* multiplying by 1 changes nothing */
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) g[i] *= coef;
}

extern "C" void ncsn_cuda_clip_by_norm(cudaStream_t stream, float *g, size_t n, const float *norm2, float max_norm) {
    if (n == 0) return;
    clip_by_norm_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(g, n, norm2, max_norm);
    CUDA_CHECK_LAUNCH(stream);
}
