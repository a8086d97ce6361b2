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

/* ---- forward on bf16 NHWC (backend.h "inference in bf16 NHWC") ----
 * Same statistics and element formula as above; only the layout differs. In NHWC the H*W
 * elements of an (n, c) plane are C apart, so a statistics block owns a GROUP of channels
 * of one example: its threads form `lanes` (1 or 2) x rows, lane l holding 8 consecutive
 * channels (one 16-byte load per pixel), rows walking the pixels. A warp therefore reads
 * 32/lanes pixels x 16 or 32 contiguous bytes, every DRAM sector whole. Per channel the
 * partial sums are doubles, reduced over the rows of a warp by shuffles and over the warps
 * in a fixed order through shared memory: deterministic, no atomics. The second pass (squared
 * deviations around the fp32-rounded mean, as plane_stats_kernel) reads the group's bf16
 * slice from shared memory where the first pass left it (HW * lanes * 16 bytes, up to
 * 40 KiB: any plane up to 35x35), else from global memory again. channel_mean_stats_kernel
 * then runs unchanged on the fp32 statistics, and the apply kernel keeps each thread on 8
 * fixed channels of one example, with their six per-channel values in registers, over a run
 * of pixels. DRAM traffic: 2 bytes per element for the statistics, 2 + 2 for the apply. */

#define IN_BF16_MAX_LANES 2                    /* 8-channel groups per statistics block */
/* Staging budget: with the ~1 KiB of static reduction buffers it stays under the 48 KiB a
 * block may use without opting in (cudaFuncAttributeMaxDynamicSharedMemorySize), and at 32x32
 * (32 KiB) still lets registers, not shared memory, bound the blocks per SM. */
#define IN_BF16_STAGE_MAX_BYTES (40 * 1024)
#define IN_BF16_MAX_WARPS (NCSN_CUDA_REDUCE_THREADS / 32)

static inline __device__ uint4 pack_bf16x8(const ncsn_bf16 h[8]) {
    uint4 u;
    u.x = (uint32_t)h[0] | (uint32_t)h[1] << 16;
    u.y = (uint32_t)h[2] | (uint32_t)h[3] << 16;
    u.z = (uint32_t)h[4] | (uint32_t)h[5] << 16;
    u.w = (uint32_t)h[6] | (uint32_t)h[7] << 16;
    return u;
}

static inline __device__ void unpack_bf16x8(float v[8], uint4 u) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        v[2 * k] = ncsn_float_from_bf16((ncsn_bf16)(w[k] & 0xffffu));
        v[2 * k + 1] = ncsn_float_from_bf16((ncsn_bf16)(w[k] >> 16));
    }
}

/* Sums v[k] of every thread of the same lane over all rows of the block; each thread gets
 * its lane's 8 totals back. blockDim.x is a multiple of 32 (at most NCSN_CUDA_REDUCE_THREADS)
 * and lanes divides 32, so a warp holds whole rows and xor offsets >= lanes stay in a lane. */
static inline __device__ void in_bf16_sum_rows(double v[8], int lanes) {
    __shared__ double partial[IN_BF16_MAX_WARPS][IN_BF16_MAX_LANES * 8];
    __shared__ double total[IN_BF16_MAX_LANES * 8];
    for (int offset = lanes; offset < 32; offset *= 2)
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] += __shfl_xor_sync(0xffffffffu, v[k], offset);
    int warp = threadIdx.x / 32, lane = threadIdx.x % lanes;
    if (threadIdx.x % 32 < (unsigned)lanes)
#pragma unroll
        for (int k = 0; k < 8; k++) partial[warp][lane * 8 + k] = v[k];
    __syncthreads();
    if (threadIdx.x < (unsigned)(lanes * 8)) {
        double sum = 0.0;
        for (int w = 0; w < (int)(blockDim.x / 32); w++) sum += partial[w][threadIdx.x];
        total[threadIdx.x] = sum;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = total[lane * 8 + k];
    __syncthreads(); /* the buffers are reused by the next call */
}

/* One 8-channel run of one pixel, packed as it lies in memory (the staging format). */
static inline __device__ uint4 load_run(const ncsn_bf16 *p, int count, int vector) {
    ncsn_bf16 h[8];
    ncsn_cuda_load8_bf16(h, p, count, vector);
    return pack_bf16x8(h);
}

/* Pixels each thread loads before it adds: independent loads in flight, since the loop
 * trip count is not known at compile time and the compiler would otherwise issue one. */
#define IN_BF16_UNROLL 4

/* Block b: example b / groups, channels [8 lanes (b % groups), + 8 lanes). */
static __global__ void plane_stats_bf16_kernel(float *mean, float *rstd, const ncsn_bf16 *x, int C, int HW, int lanes,
                                               int groups, int staged, int vector) {
    extern __shared__ uint4 stage[]; /* [HW][lanes] when staged */
    int lane = threadIdx.x % lanes, row = threadIdx.x / lanes, rows = blockDim.x / lanes;
    size_t n = blockIdx.x / (unsigned)groups;
    int c0 = ((int)(blockIdx.x % (unsigned)groups) * lanes + lane) * 8;
    int count = C - c0 < 8 ? C - c0 : 8; /* <= 0: a lane past the last channel, adding zeros */
    const ncsn_bf16 *base = x + n * (size_t)HW * C + c0;
    const uint4 zero = make_uint4(0, 0, 0, 0); /* past the plane: bf16 zeros, which add nothing */

    double sum[8];
#pragma unroll
    for (int k = 0; k < 8; k++) sum[k] = 0.0;
    for (int p0 = row; p0 < HW; p0 += IN_BF16_UNROLL * rows) {
        uint4 run[IN_BF16_UNROLL];
#pragma unroll
        for (int j = 0; j < IN_BF16_UNROLL; j++) {
            int p = p0 + j * rows;
            run[j] = p < HW ? load_run(base + (size_t)p * C, count, vector) : zero;
        }
#pragma unroll
        for (int j = 0; j < IN_BF16_UNROLL; j++) {
            int p = p0 + j * rows;
            if (staged && p < HW) stage[p * lanes + lane] = run[j]; /* read back by this thread only */
            float v[8];
            unpack_bf16x8(v, run[j]);
#pragma unroll
            for (int k = 0; k < 8; k++) sum[k] += (double)v[k];
        }
    }
    in_bf16_sum_rows(sum, lanes);
    float mu_f[8];
#pragma unroll
    for (int k = 0; k < 8; k++) mu_f[k] = (float)(sum[k] / (double)HW);

    double squares[8];
#pragma unroll
    for (int k = 0; k < 8; k++) squares[k] = 0.0;
    for (int p0 = row; p0 < HW; p0 += IN_BF16_UNROLL * rows) {
        uint4 run[IN_BF16_UNROLL];
#pragma unroll
        for (int j = 0; j < IN_BF16_UNROLL; j++) {
            int p = p0 + j * rows;
            run[j] = p >= HW ? zero : staged ? stage[p * lanes + lane] : load_run(base + (size_t)p * C, count, vector);
        }
#pragma unroll
        for (int j = 0; j < IN_BF16_UNROLL; j++) {
            if (p0 + j * rows >= HW) break; /* a zero here would add mu^2 */
            float v[8];
            unpack_bf16x8(v, run[j]);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                double d = (double)v[k] - (double)mu_f[k];
                squares[k] += d * d;
            }
        }
    }
    in_bf16_sum_rows(squares, lanes);
    if (row == 0)
        for (int k = 0; k < count; k++) {
            size_t plane = n * (size_t)C + (size_t)(c0 + k);
            mean[plane] = mu_f[k];
            rstd[plane] = (float)(1.0 / sqrt(squares[k] / (double)HW + IN_PLUS_EPS));
        }
}

/* Block b: example n = b / (groups * chunks), pixel chunk (b / groups) % chunks, channel
 * group b % groups of `lanes` 8-channel lanes; thread (lane, row) applies IN++ to its 8
 * channels at pixels chunk * chunk_pixels + row, + rows, ... At most NCSN_CUDA_THREADS
 * threads, three blocks per SM: ~80 registers (48 of them the per-channel values).
 * Unbounded, nvcc takes ~106 on sm_90 and fits only two blocks, halving the loads in
 * flight; bounded it spills 8 bytes there, which L1 absorbs. */
static __global__ void __launch_bounds__(NCSN_CUDA_THREADS, 3)
    in_plus_apply_bf16_kernel(ncsn_bf16 *out, const ncsn_bf16 *x, const float *gamma, const float *alpha,
                              const float *beta, int param_stride, const int32_t *labels, const float *mean,
                              const float *rstd, const float *mhat, int C, int HW, int lanes, int groups, int chunks,
                              int chunk_pixels, int elu, int vector) {
    int lane = threadIdx.x % lanes, row = threadIdx.x / lanes, rows = blockDim.x / lanes; /* blockDim = rows * lanes */
    unsigned b = blockIdx.x;
    int group = (int)(b % (unsigned)groups), chunk = (int)((b / (unsigned)groups) % (unsigned)chunks);
    int n = (int)(b / ((unsigned)groups * (unsigned)chunks));
    int c0 = (group * lanes + lane) * 8;
    int count = C - c0 < 8 ? C - c0 : 8;
    if (count <= 0) return;

    float mu[8], r[8], mh[8], g[8], a[8], be[8];
#pragma unroll
    for (int k = 0; k < 8; k++) {
        int c = c0 + (k < count ? k : 0); /* lanes past C repeat channel c0: never stored */
        size_t plane = (size_t)n * C + (size_t)c, p = in_plus_param_index(labels, param_stride, n, c);
        mu[k] = mean[plane];
        r[k] = rstd[plane];
        mh[k] = mhat[plane];
        g[k] = gamma[p];
        a[k] = alpha[p];
        be[k] = beta[p];
    }
    /* Two pixels per iteration, both loaded before either is stored: out may alias x, so
     * the compiler could not hoist the second load above the first store itself. */
    int end = (chunk + 1) * chunk_pixels < HW ? (chunk + 1) * chunk_pixels : HW;
    const ncsn_bf16 *xn = x + (size_t)n * HW * C + c0;
    ncsn_bf16 *outn = out + (size_t)n * HW * C + c0;
    for (int p = chunk * chunk_pixels + row; p < end; p += 2 * rows) {
        int has_second = p + rows < end;
        float v0[8], v1[8];
        ncsn_cuda_load8_f32(v0, xn + (size_t)p * C, count, vector);
        ncsn_cuda_load8_f32(v1, xn + (size_t)(p + rows) * C, has_second ? count : 0, vector);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            v0[k] = ncsn_in_plus_elu_element(v0[k], mu[k], r[k], mh[k], g[k], a[k], be[k], elu);
            v1[k] = ncsn_in_plus_elu_element(v1[k], mu[k], r[k], mh[k], g[k], a[k], be[k], elu);
        }
        ncsn_cuda_store8_f32(outn + (size_t)p * C, v0, count, vector);
        ncsn_cuda_store8_f32(outn + (size_t)(p + rows) * C, v1, has_second ? count : 0, vector);
    }
}

extern "C" void ncsn_cuda_instance_norm_plus_forward_bf16(cudaStream_t stream, ncsn_bf16 *out, const ncsn_bf16 *x,
                                                          const float *gamma, const float *alpha, const float *beta,
                                                          int param_stride, const int32_t *labels, float *stats,
                                                          int N, int C, int H, int W, int elu) {
    size_t planes = (size_t)N * C;
    int HW = H * W;
    if (planes * (size_t)HW == 0) return;
    float *mean = stats, *rstd = stats + planes, *mhat = stats + 2 * planes, *cm_rstd = stats + 3 * planes;
    int cgroups = (C + 7) / 8; /* 8-channel lanes per pixel */
    int vector = C % 8 == 0 && ((uintptr_t)x & 15u) == 0 && ((uintptr_t)out & 15u) == 0;

    /* statistics: 2 lanes (16 channels) per block; threads a multiple of 32 covering the
     * plane once where it is small (8x8: 128 threads), at most 256 */
    int lanes = cgroups < IN_BF16_MAX_LANES ? cgroups : IN_BF16_MAX_LANES;
    int groups = (cgroups + lanes - 1) / lanes;
    size_t wanted = ((size_t)HW * lanes + 31) / 32 * 32;
    unsigned threads = wanted < NCSN_CUDA_REDUCE_THREADS ? (unsigned)wanted : NCSN_CUDA_REDUCE_THREADS;
    size_t stage_bytes = (size_t)HW * lanes * sizeof(uint4);
    int staged = stage_bytes <= IN_BF16_STAGE_MAX_BYTES;
    plane_stats_bf16_kernel<<<(unsigned)((size_t)N * groups), threads, staged ? stage_bytes : 0, stream>>>(
        mean, rstd, x, C, HW, lanes, groups, staged, vector);
    CUDA_CHECK_LAUNCH(stream);
    channel_mean_stats_kernel<<<(unsigned)N, NCSN_CUDA_REDUCE_THREADS, 0, stream>>>(mhat, cm_rstd, mean, C);
    CUDA_CHECK_LAUNCH(stream);

    /* apply: up to 32 lanes (256 channels, a warp's 512 contiguous bytes) per block; each
     * thread takes up to 8 pixels, fewer when that would leave under ~1024 blocks (small
     * batches), so the grid still fills the GPU */
    int apply_lanes = cgroups < 32 ? cgroups : 32;
    int apply_groups = (cgroups + apply_lanes - 1) / apply_lanes;
    int rows = NCSN_CUDA_THREADS / apply_lanes;
    int per_thread = 8;
    while (per_thread > 1 && (size_t)N * apply_groups * ((HW + rows * per_thread - 1) / (rows * per_thread)) < 1024)
        per_thread /= 2;
    int chunk_pixels = rows * per_thread, chunks = (HW + chunk_pixels - 1) / chunk_pixels;
    in_plus_apply_bf16_kernel<<<(unsigned)((size_t)N * apply_groups * chunks), (unsigned)(rows * apply_lanes), 0,
                                stream>>>(out, x, gamma, alpha, beta, param_stride, labels, mean, rstd, mhat, C, HW,
                                          apply_lanes, apply_groups, chunks, chunk_pixels, elu, vector);
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
