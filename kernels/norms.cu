/* norms.cu: InstanceNorm++ forward and backward (v2 InstanceNorm2dPlus and v1/v2
 * ConditionalInstanceNorm2dPlus, spec section 1.2), for one example n and channel c:
 *
 *   mu_c  = mean over H, W of x            var_c = biased variance over H, W
 *   r_c   = 1 / sqrt(var_c + 1e-5)         xhat  = (x - mu_c) * r_c
 *   M     = mean over c of mu_c            V     = UNBIASED variance over c of mu_c
 *   s     = 1 / sqrt(V + 1e-5)             mhat_c = (mu_c - M) * s   (0 when C == 1)
 *   out   = gamma_c * (xhat + alpha_c * mhat_c) + beta_c
 *
 * with gamma/alpha/beta taken from row labels[n] of a strided table (conditional) or row 0
 * (stride 0, unconditional). Saved statistics: [mu (N*C) | r (N*C) | mhat (N*C) | s (N)];
 * for C == 1 the channel-mean term does not exist, and s is stored as 0.
 *
 * Backward, with g = dout and h = xhat + alpha mhat (sums are over H, W of one plane):
 *   dbeta  += sum g            dgamma += sum g xhat + alpha mhat sum g
 *   dalpha += gamma mhat sum g
 *   dx = r gamma (g - mean g - xhat mean(g xhat))      (instance norm, through xhat)
 *      + dmu_c / (H W)                                  (through mhat: mhat depends on mu_c)
 *   dmu_c = s (dmhat_c - mean_k dmhat_k - mhat_c sum_k(dmhat_k mhat_k) / (C - 1)),
 *   dmhat_c = alpha_c gamma_c sum g                     (the unbiased-variance normalisation
 *                                                        of the channel means, differentiated)
 * Parameter gradients accumulate; dx overwrites unless `accumulate`.
 *
 * Launch plan: statistics with one block per (n, c) plane (CUB block reductions, double
 * partial sums), channel terms with one block per example, then one elementwise pass.
 * Parameter rows are accumulated by one thread per channel that walks the batch in order:
 * examples can share a level (the same row), and this keeps the adds race-free and
 * deterministic without atomics.
 */
#include "kernels/cuda_launch.h"

#define IN_PLUS_EPS 1e-5

/* Per-plane mean and reciprocal standard deviation (biased variance), two passes over the
 * plane (the second on L2-resident data) rather than E[x^2] - E[x]^2, which cancels. */
static __global__ void plane_stats_kernel(float *mean, float *rstd, const float *x, size_t plane_size) {
    const float *plane = x + (size_t)blockIdx.x * plane_size;
    double sum = 0.0;
    for (size_t i = threadIdx.x; i < plane_size; i += blockDim.x) sum += plane[i];
    double mu = ncsn_cuda_block_sum(sum) / (double)plane_size;
    float mu_f = (float)mu;
    double squares = 0.0;
    for (size_t i = threadIdx.x; i < plane_size; i += blockDim.x) {
        double d = (double)plane[i] - (double)mu_f;
        squares += d * d;
    }
    double var = ncsn_cuda_block_sum(squares) / (double)plane_size;
    if (threadIdx.x == 0) {
        mean[blockIdx.x] = mu_f;
        rstd[blockIdx.x] = (float)(1.0 / sqrt(var + IN_PLUS_EPS));
    }
}

/* One block per example: normalised channel means mhat and their 1/std s. */
static __global__ void channel_mean_stats_kernel(float *mhat, float *cm_rstd, const float *mean, int C) {
    const float *m = mean + (size_t)blockIdx.x * C;
    float *mh = mhat + (size_t)blockIdx.x * C;
    if (C == 1) { /* torch.var of one value is NaN; the spec defines the term as 0 */
        if (threadIdx.x == 0) {
            mh[0] = 0.0f;
            cm_rstd[blockIdx.x] = 0.0f;
        }
        return;
    }
    double sum = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) sum += m[c];
    double M = ncsn_cuda_block_sum(sum) / C;
    double squares = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) squares += ((double)m[c] - M) * ((double)m[c] - M);
    double V = ncsn_cuda_block_sum(squares) / (C - 1);
    double s = 1.0 / sqrt(V + IN_PLUS_EPS);
    for (int c = threadIdx.x; c < C; c += blockDim.x) mh[c] = (float)(((double)m[c] - M) * s);
    if (threadIdx.x == 0) cm_rstd[blockIdx.x] = (float)s;
}

/* Offset of the gamma/alpha/beta entry of example n, channel c. */
static inline __device__ size_t in_plus_param_index(const int32_t *labels, int param_stride, int n, int c) {
    size_t row = labels ? (size_t)labels[n] : 0;
    return row * (size_t)param_stride + (size_t)c;
}

static __global__ void in_plus_apply_kernel(float *out, const float *x, const float *gamma, const float *alpha,
                                            const float *beta, int param_stride, const int32_t *labels,
                                            const float *mean, const float *rstd, const float *mhat, int C,
                                            size_t plane_size, size_t n, int elu) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) {
        size_t plane = i / plane_size;
        int example = (int)(plane / (size_t)C), c = (int)(plane % (size_t)C);
        size_t p = in_plus_param_index(labels, param_stride, example, c);
        out[i] = ncsn_in_plus_elu_element(x[i], mean[plane], rstd[plane], mhat[plane], gamma[p], alpha[p], beta[p],
                                          elu);
    }
}

extern "C" void ncsn_cuda_instance_norm_plus_forward(cudaStream_t stream, float *out, const float *x,
                                                     const float *gamma, const float *alpha, const float *beta,
                                                     int param_stride, const int32_t *labels, float *stats, int N,
                                                     int C, int H, int W, int elu) {
    size_t planes = (size_t)N * C, plane_size = (size_t)H * W, n = planes * plane_size;
    if (n == 0) return;
    float *mean = stats, *rstd = stats + planes, *mhat = stats + 2 * planes, *cm_rstd = stats + 3 * planes;
    plane_stats_kernel<<<(unsigned)planes, NCSN_CUDA_REDUCE_THREADS, 0, stream>>>(mean, rstd, x, plane_size);
    CUDA_CHECK_LAUNCH(stream);
    channel_mean_stats_kernel<<<(unsigned)N, NCSN_CUDA_REDUCE_THREADS, 0, stream>>>(mhat, cm_rstd, mean, C);
    CUDA_CHECK_LAUNCH(stream);
    in_plus_apply_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(
        out, x, gamma, alpha, beta, param_stride, labels, mean, rstd, mhat, C, plane_size, n, elu);
    CUDA_CHECK_LAUNCH(stream);
}

/* ---- backward ---- */

/* Per plane: sum of g and sum of g * xhat. */
static __global__ void plane_grad_sums_kernel(float *g_sum, float *g_xhat_sum, const float *dout, const float *x,
                                              const float *mean, const float *rstd, size_t plane_size) {
    size_t offset = (size_t)blockIdx.x * plane_size;
    float mu = mean[blockIdx.x], r = rstd[blockIdx.x];
    double sum_g = 0.0, sum_gx = 0.0;
    for (size_t i = threadIdx.x; i < plane_size; i += blockDim.x) {
        float g = dout[offset + i];
        sum_g += g;
        sum_gx += (double)g * (double)((x[offset + i] - mu) * r);
    }
    sum_g = ncsn_cuda_block_sum(sum_g);
    sum_gx = ncsn_cuda_block_sum(sum_gx);
    if (threadIdx.x == 0) {
        g_sum[blockIdx.x] = (float)sum_g;
        g_xhat_sum[blockIdx.x] = (float)sum_gx;
    }
}

/* Thread c walks the batch in order (see the file comment on why not atomics). */
static __global__ void in_plus_param_grads_kernel(float *dgamma, float *dalpha, float *dbeta, const float *g_sum,
                                                  const float *g_xhat_sum, const float *gamma, const float *alpha,
                                                  const float *mhat, int param_stride, const int32_t *labels, int N,
                                                  int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    for (int n = 0; n < N; n++) {
        size_t plane = (size_t)n * C + c, p = in_plus_param_index(labels, param_stride, n, c);
        float sg = g_sum[plane], mh = mhat[plane];
        dbeta[p] += sg;
        dgamma[p] += g_xhat_sum[plane] + alpha[p] * mh * sg;
        dalpha[p] += gamma[p] * mh * sg;
    }
}

/* One block per example: dmu_c, the gradient reaching the plane mean through mhat. */
static __global__ void channel_mean_grad_kernel(float *dmean, const float *g_sum, const float *gamma,
                                                const float *alpha, const float *mhat, const float *cm_rstd,
                                                int param_stride, const int32_t *labels, int C) {
    int n = blockIdx.x;
    size_t base = (size_t)n * C;
    if (C == 1) {
        if (threadIdx.x == 0) dmean[base] = 0.0f;
        return;
    }
    double sum_d = 0.0, sum_dm = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        size_t p = in_plus_param_index(labels, param_stride, n, c);
        double dmhat = (double)alpha[p] * gamma[p] * g_sum[base + c];
        sum_d += dmhat;
        sum_dm += dmhat * mhat[base + c];
    }
    double mean_d = ncsn_cuda_block_sum(sum_d) / C;
    double dot = ncsn_cuda_block_sum(sum_dm) / (C - 1);
    double s = cm_rstd[n];
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        size_t p = in_plus_param_index(labels, param_stride, n, c);
        double dmhat = (double)alpha[p] * gamma[p] * g_sum[base + c];
        dmean[base + c] = (float)(s * (dmhat - mean_d - mhat[base + c] * dot));
    }
}

static __global__ void in_plus_dx_kernel(float *dx, const float *dout, const float *x, const float *gamma,
                                         int param_stride, const int32_t *labels, const float *mean, const float *rstd,
                                         const float *g_sum, const float *g_xhat_sum, const float *dmean, int C,
                                         size_t plane_size, int accumulate, size_t n) {
    float inv_size = 1.0f / (float)plane_size;
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) {
        size_t plane = i / plane_size;
        int example = (int)(plane / (size_t)C), c = (int)(plane % (size_t)C);
        float r = rstd[plane], xhat = (x[i] - mean[plane]) * r;
        float gam = gamma[in_plus_param_index(labels, param_stride, example, c)];
        float through_xhat = r * gam * (dout[i] - g_sum[plane] * inv_size - xhat * g_xhat_sum[plane] * inv_size);
        float value = through_xhat + dmean[plane] * inv_size;
        dx[i] = accumulate ? dx[i] + value : value;
    }
}

extern "C" size_t ncsn_cuda_instance_norm_plus_backward_scratch_bytes(int N, int C) {
    return 3 * (size_t)N * C * sizeof(float);
}

extern "C" void ncsn_cuda_instance_norm_plus_backward(cudaStream_t stream, float *dx, float *dgamma, float *dalpha,
                                                      float *dbeta, const float *dout, const float *x,
                                                      const float *gamma, const float *alpha, int param_stride,
                                                      const int32_t *labels, const float *stats, int N, int C, int H,
                                                      int W, int accumulate, void *scratch) {
    size_t planes = (size_t)N * C, plane_size = (size_t)H * W, n = planes * plane_size;
    if (n == 0) return;
    const float *mean = stats, *rstd = stats + planes, *mhat = stats + 2 * planes, *cm_rstd = stats + 3 * planes;
    float *g_sum = (float *)scratch, *g_xhat_sum = g_sum + planes, *dmean = g_sum + 2 * planes;

    plane_grad_sums_kernel<<<(unsigned)planes, NCSN_CUDA_REDUCE_THREADS, 0, stream>>>(g_sum, g_xhat_sum, dout, x, mean,
                                                                                      rstd, plane_size);
    CUDA_CHECK_LAUNCH(stream);
    in_plus_param_grads_kernel<<<(unsigned)((C + 127) / 128), 128, 0, stream>>>(
        dgamma, dalpha, dbeta, g_sum, g_xhat_sum, gamma, alpha, mhat, param_stride, labels, N, C);
    CUDA_CHECK_LAUNCH(stream);
    channel_mean_grad_kernel<<<(unsigned)N, NCSN_CUDA_REDUCE_THREADS, 0, stream>>>(dmean, g_sum, gamma, alpha, mhat,
                                                                                   cm_rstd, param_stride, labels, C);
    CUDA_CHECK_LAUNCH(stream);
    in_plus_dx_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(
        dx, dout, x, gamma, param_stride, labels, mean, rstd, g_sum, g_xhat_sum, dmean, C, plane_size, accumulate, n);
    CUDA_CHECK_LAUNCH(stream);
}
