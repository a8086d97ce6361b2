/* cpu_backend.c: the CPU backend (backend.h): host memory, every non-convolution op as an
 * OpenMP loop, and the ops table. Convolutions and gemm_nt live in cpu_conv.c (oneDNN).
 *
 * Element math comes from kernels/element_math.h and kernels/rng_math.h, the same inline
 * functions the CUDA kernels call, so the CPU tests exercise the GPU's arithmetic. Loops
 * are parallel over N*C planes (norms, pooling, resampling) or over elements; reductions
 * (DSM loss, sum of squares, IN++ statistics) accumulate in double, which costs nothing
 * next to a convolution and keeps large sums accurate.
 *
 * Overwrite vs accumulate (backend.h): forward outputs and activation gradients overwrite
 * unless `accumulate` is set; parameter gradients (dgamma, dalpha, dbeta, dtable, dw, db)
 * always accumulate. Parameter-gradient sums for conditional IN++ and label biases go to
 * rows chosen by labels, and several examples can share a row, so those are accumulated
 * serially over n (parallel over channels) to stay race-free and deterministic.
 */
#include <math.h>
#include <string.h>

#include "host/cpu_internal.h"
#include "kernels/element_math.h"
#include "kernels/rng_math.h"

#define CPU_ALIGN 256

/* ---- memory ------------------------------------------------------------------------- */

static void *cpu_alloc(ncsn_backend *be, size_t bytes) {
    size_t rounded = (bytes + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN;
    if (rounded == 0) rounded = CPU_ALIGN;
    void *p = aligned_alloc(CPU_ALIGN, rounded);
    if (!p) ncsn_die("cpu alloc: aligned_alloc of %zu bytes failed", rounded);
    memset(p, 0, rounded);
    return p;
}

static void cpu_free(ncsn_backend *be, void *p) { free(p); }

static void cpu_memset_zero(ncsn_backend *be, void *p, size_t bytes) {
    if (bytes) memset(p, 0, bytes);
}

static void cpu_copy(ncsn_backend *be, void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src) memmove(dst, src, bytes);
}

static void cpu_copy_to_device(ncsn_backend *be, void *dst, const void *src_host, size_t bytes) {
    cpu_copy(be, dst, src_host, bytes);
}

static void cpu_copy_to_host(ncsn_backend *be, void *dst_host, const void *src, size_t bytes) {
    cpu_copy(be, dst_host, src, bytes);
}

static void cpu_synchronize(ncsn_backend *be) {}

void *cpu_scratch_reserve(cpu_scratch *s, size_t bytes) {
    if (bytes <= s->bytes && s->ptr) return s->ptr;
    free(s->ptr);
    size_t rounded = (bytes + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN;
    if (rounded == 0) rounded = CPU_ALIGN;
    s->ptr = aligned_alloc(CPU_ALIGN, rounded);
    if (!s->ptr) ncsn_die("cpu scratch: aligned_alloc of %zu bytes failed", rounded);
    s->bytes = rounded;
    return s->ptr;
}

void cpu_scratch_release(cpu_scratch *s) {
    free(s->ptr);
    s->ptr = NULL;
    s->bytes = 0;
}

/* Per-op temporaries from the backend's grow-only buffer (ops run one at a time). */
static void *op_scratch(ncsn_backend *be, size_t bytes) {
    return cpu_scratch_reserve(&((cpu_backend_impl *)be->impl)->op_buf, bytes);
}

/* ---- shape checks -------------------------------------------------------------------- */

static void check_nchw(const char *op, int N, int C, int H, int W) {
    NCSN_CHECKF(N > 0 && C > 0 && H > 0 && W > 0, "%s: bad sizes N=%d C=%d H=%d W=%d", op, N, C, H, W);
}

static void check_labels(const char *op, const int32_t *labels, int N) {
    NCSN_CHECKF(labels != NULL, "%s: labels is NULL", op);
    for (int n = 0; n < N; n++) NCSN_CHECKF(labels[n] >= 0, "%s: labels[%d] = %d is negative", op, n, labels[n]);
}

/* ---- InstanceNorm++ ------------------------------------------------------------------
 * Mirrors InstanceNorm2dPlus / ConditionalInstanceNorm2dPlus (spec §1.2). Per (n, c):
 * mean mu and biased variance over H*W, rstd = 1/sqrt(var + 1e-5). Per n: the channel
 * means' mean M and unbiased variance V (C - 1 in the denominator), s = 1/sqrt(V + 1e-5),
 * mhat_c = (mu_c - M) * s (0 when C == 1). out = gamma * ((x - mu) * rstd + alpha * mhat) + beta.
 * Stats layout: [mean (N*C) | rstd (N*C) | mhat (N*C) | s (N)]. */

#define IN_EPS 1e-5

static size_t param_row(const int32_t *labels, int n, int param_stride) {
    return labels ? (size_t)labels[n] * (size_t)param_stride : 0;
}

static void cpu_instance_norm_plus_forward(ncsn_backend *be, float *out, const float *x, const float *gamma,
                                           const float *alpha, const float *beta, int param_stride,
                                           const int32_t *labels, float *stats, int N, int C, int H, int W) {
    check_nchw("instance_norm_plus_forward", N, C, H, W);
    if (labels) check_labels("instance_norm_plus_forward", labels, N);
    NCSN_CHECKF(labels || param_stride == 0, "instance_norm_plus_forward: stride %d without labels", param_stride);
    const size_t P = (size_t)H * W, NC = (size_t)N * C;
    float *mean = stats, *rstd = stats + NC, *mhat = stats + 2 * NC, *chan_rstd = stats + 3 * NC;

    /* Per-plane statistics, two-pass in double (exact enough that var never goes negative). */
#pragma omp parallel for schedule(static)
    for (size_t nc = 0; nc < NC; nc++) {
        const float *xp = x + nc * P;
        double sum = 0.0;
        for (size_t i = 0; i < P; i++) sum += xp[i];
        double mu = sum / (double)P;
        double sq = 0.0;
        for (size_t i = 0; i < P; i++) {
            double t = xp[i] - mu;
            sq += t * t;
        }
        mean[nc] = (float)mu;
        rstd[nc] = (float)(1.0 / sqrt(sq / (double)P + IN_EPS));
    }
    /* Channel-mean normalisation; uses the float means as stored, like the backward. */
    for (int n = 0; n < N; n++) {
        const float *mu = mean + (size_t)n * C;
        if (C == 1) {
            mhat[n] = 0.0f;
            chan_rstd[n] = 0.0f;
            continue;
        }
        double M = 0.0;
        for (int c = 0; c < C; c++) M += mu[c];
        M /= C;
        double V = 0.0;
        for (int c = 0; c < C; c++) V += ((double)mu[c] - M) * ((double)mu[c] - M);
        V /= (C - 1);
        double s = 1.0 / sqrt(V + IN_EPS);
        for (int c = 0; c < C; c++) mhat[(size_t)n * C + c] = (float)(((double)mu[c] - M) * s);
        chan_rstd[n] = (float)s;
    }
#pragma omp parallel for schedule(static)
    for (size_t nc = 0; nc < NC; nc++) {
        int n = (int)(nc / C), c = (int)(nc % C);
        size_t p = param_row(labels, n, param_stride) + c;
        float g = gamma[p], a = alpha[p], b = beta[p], mu = mean[nc], r = rstd[nc], mh = mhat[nc];
        const float *xp = x + nc * P;
        float *op = out + nc * P;
        for (size_t i = 0; i < P; i++) op[i] = ncsn_in_plus_element(xp[i], mu, r, mh, g, a, b);
    }
}

/* Analytic backward. With g = dout, xhat = (x - mu) * rstd, dh = gamma * g:
 *   dbeta_c += sum g;  dgamma_c += sum g * (xhat + alpha * mhat);  dalpha_c += gamma * mhat * sum g
 *   through xhat (mu and var of the plane):  rstd * (dh - mean(dh) - xhat * mean(dh * xhat))
 *   through mhat (the channel means):  dmhat_c = alpha_c * sum dh and
 *     dmu_c = s * (dmhat_c - mean_c dmhat - mhat_c * sum_k(dmhat_k * mhat_k) / (C - 1)),
 *   which reaches every x of plane c as dmu_c / (H*W). */
static void cpu_instance_norm_plus_backward(ncsn_backend *be, float *dx, float *dgamma, float *dalpha,
                                            float *dbeta, const float *dout, const float *x, const float *gamma,
                                            const float *alpha, int param_stride, const int32_t *labels,
                                            const float *stats, int N, int C, int H, int W, int accumulate) {
    check_nchw("instance_norm_plus_backward", N, C, H, W);
    if (labels) check_labels("instance_norm_plus_backward", labels, N);
    NCSN_CHECKF(labels || param_stride == 0, "instance_norm_plus_backward: stride %d without labels", param_stride);
    const size_t P = (size_t)H * W, NC = (size_t)N * C;
    const float *mean = stats, *rstd = stats + NC, *mhat = stats + 2 * NC, *chan_rstd = stats + 3 * NC;
    /* Per-plane sums: sum g, sum g * xhat (both double). */
    double *sum_g = op_scratch(be, 3 * NC * sizeof(double)), *sum_gxhat = sum_g + NC, *dmu = sum_g + 2 * NC;

#pragma omp parallel for schedule(static)
    for (size_t nc = 0; nc < NC; nc++) {
        const float *gp = dout + nc * P, *xp = x + nc * P;
        double mu = mean[nc], r = rstd[nc], sg = 0.0, sgx = 0.0;
        for (size_t i = 0; i < P; i++) {
            sg += gp[i];
            sgx += gp[i] * ((xp[i] - mu) * r);
        }
        sum_g[nc] = sg;
        sum_gxhat[nc] = sgx;
    }
    /* Parameter gradients: serial over n because examples may share a row. */
    for (int n = 0; n < N; n++) {
        size_t row = param_row(labels, n, param_stride);
        for (int c = 0; c < C; c++) {
            size_t nc = (size_t)n * C + c;
            double mh = mhat[nc];
            dbeta[row + c] += (float)sum_g[nc];
            dgamma[row + c] += (float)(sum_gxhat[nc] + alpha[row + c] * mh * sum_g[nc]);
            dalpha[row + c] += (float)(gamma[row + c] * mh * sum_g[nc]);
        }
    }
    /* Channel-means path. */
    for (int n = 0; n < N; n++) {
        size_t row = param_row(labels, n, param_stride), base = (size_t)n * C;
        if (C == 1) {
            dmu[base] = 0.0;
            continue;
        }
        double s = chan_rstd[n], mean_dmhat = 0.0, dot = 0.0;
        for (int c = 0; c < C; c++) {
            double dmhat = (double)alpha[row + c] * gamma[row + c] * sum_g[base + c];
            mean_dmhat += dmhat;
            dot += dmhat * mhat[base + c];
        }
        mean_dmhat /= C;
        for (int c = 0; c < C; c++) {
            double dmhat = (double)alpha[row + c] * gamma[row + c] * sum_g[base + c];
            dmu[base + c] = s * (dmhat - mean_dmhat - mhat[base + c] * dot / (C - 1));
        }
    }
#pragma omp parallel for schedule(static)
    for (size_t nc = 0; nc < NC; nc++) {
        int n = (int)(nc / C), c = (int)(nc % C);
        size_t p = param_row(labels, n, param_stride) + c;
        double g = gamma[p], r = rstd[nc], mu = mean[nc];
        double mean_dh = g * sum_g[nc] / (double)P, mean_dh_xhat = g * sum_gxhat[nc] / (double)P;
        double shift = dmu[nc] / (double)P;
        const float *gp = dout + nc * P, *xp = x + nc * P;
        float *dp = dx + nc * P;
        for (size_t i = 0; i < P; i++) {
            double xhat = (xp[i] - mu) * r;
            float v = (float)(r * (g * gp[i] - mean_dh - xhat * mean_dh_xhat) + shift);
            dp[i] = accumulate ? dp[i] + v : v;
        }
    }
}

/* ---- ELU ----------------------------------------------------------------------------- */

static void cpu_elu_forward(ncsn_backend *be, float *out, const float *x, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = ncsn_elu(x[i]);
}

static void cpu_elu_backward(ncsn_backend *be, float *dx, const float *dout, const float *out, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) dx[i] = ncsn_elu_grad_from_output(dout[i], out[i]);
}

/* ---- pooling and resampling ---------------------------------------------------------- */

/* 2x2 mean pool, stride 2, in the official summation order
 * ((x[0,0] + x[1,0]) + x[0,1]) + x[1,1], then / 4 (ConvMeanPool). */
static void cpu_mean_pool2_forward(ncsn_backend *be, float *out, const float *in, int N, int C, int H, int W) {
    check_nchw("mean_pool2_forward", N, C, H, W);
    NCSN_CHECKF(H % 2 == 0 && W % 2 == 0, "mean_pool2_forward: H=%d W=%d must be even", H, W);
    const int Ho = H / 2, Wo = W / 2;
    const size_t NC = (size_t)N * C;
#pragma omp parallel for schedule(static)
    for (size_t nc = 0; nc < NC; nc++) {
        const float *ip = in + nc * H * W;
        float *op = out + nc * Ho * Wo;
        for (int y = 0; y < Ho; y++)
            for (int x = 0; x < Wo; x++) {
                const float *r0 = ip + (size_t)(2 * y) * W + 2 * x, *r1 = r0 + W;
                op[y * Wo + x] = (((r0[0] + r1[0]) + r0[1]) + r1[1]) / 4.0f;
            }
    }
}

static void cpu_mean_pool2_backward(ncsn_backend *be, float *din, const float *dout, int N, int C, int H, int W,
                                    int accumulate) {
    check_nchw("mean_pool2_backward", N, C, H, W);
    NCSN_CHECKF(H % 2 == 0 && W % 2 == 0, "mean_pool2_backward: H=%d W=%d must be even", H, W);
    const int Wo = W / 2;
    const size_t NC = (size_t)N * C;
#pragma omp parallel for schedule(static)
    for (size_t nc = 0; nc < NC; nc++) {
        const float *gp = dout + nc * (H / 2) * Wo;
        float *dp = din + nc * H * W;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                float v = gp[(y / 2) * Wo + x / 2] / 4.0f;
                float *d = dp + (size_t)y * W + x;
                *d = accumulate ? *d + v : v;
            }
    }
}

/* Mean of the 5x5 window centred at (y, x) with zero padding counted (count_include_pad:
 * always / 25), summed row-major in fp32 like PyTorch's CPU avg_pool2d. The window is
 * symmetric, so the same function is the forward (over inputs) and the gather form of the
 * backward (each input collects the outputs whose window covers it; no races). */
static inline float box5_mean(const float *plane, int H, int W, int y, int x) {
    float sum = 0.0f;
    for (int ky = y - 2; ky <= y + 2; ky++) {
        if (ky < 0 || ky >= H) continue;
        for (int kx = x - 2; kx <= x + 2; kx++)
            if (kx >= 0 && kx < W) sum += plane[(size_t)ky * W + kx];
    }
    return sum / 25.0f;
}

/* AvgPool2d(5, stride 1, pad 2), count_include_pad (v1 CondCRPBlock). */
static void cpu_avg_pool5_forward(ncsn_backend *be, float *out, const float *in, int N, int C, int H, int W) {
    check_nchw("avg_pool5_forward", N, C, H, W);
    const size_t NC = (size_t)N * C, P = (size_t)H * W;
#pragma omp parallel for schedule(static)
    for (size_t nc = 0; nc < NC; nc++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) out[nc * P + (size_t)y * W + x] = box5_mean(in + nc * P, H, W, y, x);
}

static void cpu_avg_pool5_backward(ncsn_backend *be, float *din, const float *dout, int N, int C, int H, int W,
                                   int accumulate) {
    check_nchw("avg_pool5_backward", N, C, H, W);
    const size_t NC = (size_t)N * C, P = (size_t)H * W;
#pragma omp parallel for schedule(static)
    for (size_t nc = 0; nc < NC; nc++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                float v = box5_mean(dout + nc * P, H, W, y, x);
                float *d = din + nc * P + (size_t)y * W + x;
                *d = accumulate ? *d + v : v;
            }
}

/* Index (within the plane) of the first maximum of the 5x5 window at (y, x), row-major;
 * out-of-range positions are -inf padding and never win. */
static inline size_t max_pool5_argmax(const float *ip, int H, int W, int y, int x) {
    size_t best = (size_t)y * W + x;
    float best_v = -INFINITY;
    int found = 0;
    for (int ky = y - 2; ky <= y + 2; ky++) {
        if (ky < 0 || ky >= H) continue;
        for (int kx = x - 2; kx <= x + 2; kx++) {
            if (kx < 0 || kx >= W) continue;
            float v = ip[(size_t)ky * W + kx];
            if (!found || v > best_v || isnan(v)) {
                best = (size_t)ky * W + kx;
                best_v = v;
                found = 1;
                if (isnan(v)) return best; /* PyTorch propagates NaN */
            }
        }
    }
    return best;
}

static void cpu_max_pool5_forward(ncsn_backend *be, float *out, const float *in, int N, int C, int H, int W) {
    check_nchw("max_pool5_forward", N, C, H, W);
    const size_t NC = (size_t)N * C;
#pragma omp parallel for schedule(static)
    for (size_t nc = 0; nc < NC; nc++) {
        const float *ip = in + nc * H * W;
        float *op = out + nc * H * W;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) op[(size_t)y * W + x] = ip[max_pool5_argmax(ip, H, W, y, x)];
    }
}

static void cpu_max_pool5_backward(ncsn_backend *be, float *din, const float *dout, const float *in, int N, int C,
                                   int H, int W, int accumulate) {
    check_nchw("max_pool5_backward", N, C, H, W);
    const size_t NC = (size_t)N * C, P = (size_t)H * W;
#pragma omp parallel for schedule(static)
    for (size_t nc = 0; nc < NC; nc++) {
        const float *ip = in + nc * P, *gp = dout + nc * P;
        float *dp = din + nc * P;
        if (!accumulate) memset(dp, 0, P * sizeof(float));
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) dp[max_pool5_argmax(ip, H, W, y, x)] += gp[(size_t)y * W + x];
    }
}

/* Bilinear interpolation with align_corners=True, as PyTorch's CPU upsample_bilinear2d
 * computes it in float: scale = (in - 1) / (out - 1) (0 when out == 1), src = scale * dst,
 * i0 = floor(src), i1 = i0 + (i0 < in - 1), lambda = src - i0. */
typedef struct {
    int i0, i1;
    float l0, l1;
} bilinear_tap;

static void bilinear_taps(bilinear_tap *taps, int in, int out) {
    float scale = out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f;
    for (int o = 0; o < out; o++) {
        float src = scale * (float)o;
        int i0 = (int)src;
        if (i0 > in - 1) i0 = in - 1;
        taps[o].i0 = i0;
        taps[o].i1 = i0 + (i0 < in - 1 ? 1 : 0);
        taps[o].l1 = src - (float)i0;
        taps[o].l0 = 1.0f - taps[o].l1;
    }
}

/* Checks the sizes and returns the Ho row taps followed by the Wo column taps. */
static bilinear_tap *bilinear_plan(ncsn_backend *be, const char *op, int N, int C, int H, int W, int Ho, int Wo) {
    check_nchw(op, N, C, H, W);
    NCSN_CHECKF(Ho > 0 && Wo > 0, "%s: bad output size %dx%d", op, Ho, Wo);
    bilinear_tap *taps = op_scratch(be, ((size_t)Ho + Wo) * sizeof *taps);
    bilinear_taps(taps, H, Ho);
    bilinear_taps(taps + Ho, W, Wo);
    return taps;
}

static void cpu_resize_bilinear_forward(ncsn_backend *be, float *out, const float *in, int N, int C, int H, int W,
                                        int Ho, int Wo) {
    bilinear_tap *ty = bilinear_plan(be, "resize_bilinear_forward", N, C, H, W, Ho, Wo), *tx = ty + Ho;
    const size_t NC = (size_t)N * C;
#pragma omp parallel for schedule(static)
    for (size_t nc = 0; nc < NC; nc++) {
        const float *ip = in + nc * H * W;
        float *op = out + nc * Ho * Wo;
        for (int y = 0; y < Ho; y++) {
            const float *r0 = ip + (size_t)ty[y].i0 * W, *r1 = ip + (size_t)ty[y].i1 * W;
            for (int x = 0; x < Wo; x++) {
                int x0 = tx[x].i0, x1 = tx[x].i1;
                op[(size_t)y * Wo + x] = ty[y].l0 * (tx[x].l0 * r0[x0] + tx[x].l1 * r0[x1]) +
                                         ty[y].l1 * (tx[x].l0 * r1[x0] + tx[x].l1 * r1[x1]);
            }
        }
    }
}

static void cpu_resize_bilinear_backward(ncsn_backend *be, float *din, const float *dout, int N, int C, int H,
                                         int W, int Ho, int Wo, int accumulate) {
    bilinear_tap *ty = bilinear_plan(be, "resize_bilinear_backward", N, C, H, W, Ho, Wo), *tx = ty + Ho;
    const size_t NC = (size_t)N * C;
#pragma omp parallel for schedule(static)
    for (size_t nc = 0; nc < NC; nc++) {
        const float *gp = dout + nc * Ho * Wo;
        float *dp = din + nc * H * W;
        if (!accumulate) memset(dp, 0, (size_t)H * W * sizeof(float));
        for (int y = 0; y < Ho; y++) {
            float *r0 = dp + (size_t)ty[y].i0 * W, *r1 = dp + (size_t)ty[y].i1 * W;
            for (int x = 0; x < Wo; x++) {
                float g = gp[(size_t)y * Wo + x];
                int x0 = tx[x].i0, x1 = tx[x].i1;
                r0[x0] += ty[y].l0 * tx[x].l0 * g;
                r0[x1] += ty[y].l0 * tx[x].l1 * g;
                r1[x0] += ty[y].l1 * tx[x].l0 * g;
                r1[x1] += ty[y].l1 * tx[x].l1 * g;
            }
        }
    }
}

/* ---- elementwise --------------------------------------------------------------------- */

static void cpu_add(ncsn_backend *be, float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

static void cpu_accumulate(ncsn_backend *be, float *y, const float *x, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

static void cpu_scale_shift(ncsn_backend *be, float *out, const float *x, float scale, float shift, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = x[i] * scale + shift;
}

static void cpu_divide_by_sigma(ncsn_backend *be, float *out, const float *x, const float *sigmas,
                                const int32_t *labels, int N, size_t per_example) {
    check_labels("divide_by_sigma", labels, N);
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < N; n++)
        for (size_t i = 0; i < per_example; i++) {
            size_t j = (size_t)n * per_example + i;
            out[j] = x[j] / sigmas[labels[n]]; /* a division, as torch's h / used_sigmas */
        }
}

static void cpu_clamp01(ncsn_backend *be, float *x, size_t n) {
#pragma omp parallel for schedule(static)
    /* Parenthesised: backend.h also defines a function-like macro ncsn_clamp01(be, ...). */
    for (size_t i = 0; i < n; i++) x[i] = ncsn_clamp01_element(x[i]);
}

static void cpu_label_bias_forward(ncsn_backend *be, float *out, const float *table, const int32_t *labels, int N,
                                   int C, size_t spatial) {
    check_labels("label_bias_forward", labels, N);
    NCSN_CHECKF(N > 0 && C > 0, "label_bias_forward: N=%d C=%d", N, C);
    const size_t NC = (size_t)N * C;
#pragma omp parallel for schedule(static)
    for (size_t nc = 0; nc < NC; nc++) {
        float b = table[(size_t)labels[nc / C] * C + nc % C];
        float *op = out + nc * spatial;
        for (size_t i = 0; i < spatial; i++) op[i] += b;
    }
}

static void cpu_label_bias_backward_accumulate(ncsn_backend *be, float *dtable, const float *dout,
                                               const int32_t *labels, int N, int C, size_t spatial) {
    check_labels("label_bias_backward_accumulate", labels, N);
    NCSN_CHECKF(N > 0 && C > 0, "label_bias_backward_accumulate: N=%d C=%d", N, C);
    /* Parallel over channels, serial over examples: rows may repeat across n. */
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++)
        for (int n = 0; n < N; n++) {
            const float *gp = dout + ((size_t)n * C + c) * spatial;
            double sum = 0.0;
            for (size_t i = 0; i < spatial; i++) sum += gp[i];
            dtable[(size_t)labels[n] * C + c] += (float)sum;
        }
}

/* ---- randomness ---------------------------------------------------------------------- */

static void cpu_fill_normal(ncsn_backend *be, float *out, int N, size_t per_example, uint64_t seed, uint32_t purpose,
                            uint32_t example_offset, uint32_t step) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < N; n++)
        for (size_t i = 0; i < per_example; i++)
            out[(size_t)n * per_example + i] = ncsn_rng_normal(seed, purpose, example_offset + (uint32_t)n, step, i);
}

static void cpu_fill_uniform(ncsn_backend *be, float *out, int N, size_t per_example, uint64_t seed,
                             uint32_t purpose, uint32_t example_offset, uint32_t step) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < N; n++)
        for (size_t i = 0; i < per_example; i++)
            out[(size_t)n * per_example + i] = ncsn_rng_uniform(seed, purpose, example_offset + (uint32_t)n, step, i);
}

/* ---- custom kernels of the method ---------------------------------------------------- */

static void cpu_noise_inject(ncsn_backend *be, float *x_noisy, const float *x, const float *z, const float *sigmas,
                             const int32_t *labels, int N, size_t per_example) {
    check_labels("noise_inject", labels, N);
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < N; n++)
        for (size_t i = 0; i < per_example; i++) {
            size_t j = (size_t)n * per_example + i;
            x_noisy[j] = ncsn_noise_inject_element(x[j], sigmas[labels[n]], z[j]);
        }
}

static void cpu_dsm_loss(ncsn_backend *be, float *loss_per_example, float *dscore, const float *score,
                         const float *z, const float *sigmas, const int32_t *labels, int N, size_t per_example) {
    check_labels("dsm_loss", labels, N);
    NCSN_CHECKF(N > 0, "dsm_loss: N=%d", N);
    const float inv_batch = 1.0f / (float)N;
    /* One example per iteration, summed serially: the loss does not depend on the thread count. */
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float sigma = sigmas[labels[n]];
        size_t base = (size_t)n * per_example;
        double sum = 0.0;
        for (size_t i = 0; i < per_example; i++) {
            double r = ncsn_dsm_residual(score[base + i], z[base + i], sigma);
            sum += r * r;
            if (dscore) dscore[base + i] = ncsn_dsm_grad(score[base + i], z[base + i], sigma, inv_batch);
        }
        loss_per_example[n] = (float)(0.5 * sum);
    }
}

static void cpu_adam_step(ncsn_backend *be, float *params, const float *grads, float *m, float *v, float *vmax,
                          size_t n, const ncsn_adam_hparams *hp) {
    NCSN_CHECKF(hp->step >= 1, "adam_step: step %ld (1-based count after this update)", hp->step);
    NCSN_CHECKF(!hp->amsgrad || vmax, "adam_step: amsgrad needs vmax");
    const ncsn_adam_scalars s = ncsn_adam_prepare(hp);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        ncsn_adam_element(params + i, grads[i], m + i, v + i, hp->amsgrad ? vmax + i : NULL, hp->beta1, hp->beta2,
                          hp->eps, hp->weight_decay, hp->amsgrad, s.step_size, s.sqrt_bias_correction2);
}

static void cpu_ema_update(ncsn_backend *be, float *shadow, const float *params, size_t n, float mu) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) shadow[i] = ncsn_ema_element(shadow[i], params[i], mu);
}

static void cpu_langevin_step(ncsn_backend *be, float *x, const float *score, int N, size_t per_example, float a,
                              uint64_t seed, uint32_t example_offset, uint32_t step) {
    NCSN_CHECKF(a >= 0.0f, "langevin_step: negative step size %g", (double)a);
    const float noise_scale = sqrtf(2.0f * a);
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < N; n++)
        for (size_t i = 0; i < per_example; i++) {
            size_t j = (size_t)n * per_example + i;
            float z = ncsn_rng_normal(seed, NCSN_RNG_LANGEVIN, example_offset + (uint32_t)n, step, i);
            x[j] = ncsn_langevin_element(x[j], score[j], z, a, noise_scale);
        }
}

static void cpu_denoise_step(ncsn_backend *be, float *x, const float *score, size_t n, float sigma_last_sq) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] = ncsn_denoise_element(x[i], score[i], sigma_last_sq);
}

/* Fixed blocks summed in parallel, then the block sums in order: the result is the same
 * bit for bit for any thread count (an OpenMP reduction combines in arbitrary order). */
#define SUM_BLOCK 16384
static void cpu_sum_squares(ncsn_backend *be, float *out, const float *x, size_t n) {
    size_t nblocks = (n + SUM_BLOCK - 1) / SUM_BLOCK;
    double *partial = op_scratch(be, (nblocks ? nblocks : 1) * sizeof(double));
#pragma omp parallel for schedule(static)
    for (size_t blk = 0; blk < nblocks; blk++) {
        size_t end = (blk + 1) * SUM_BLOCK < n ? (blk + 1) * SUM_BLOCK : n;
        double sum = 0.0;
        for (size_t i = blk * SUM_BLOCK; i < end; i++) sum += (double)x[i] * x[i];
        partial[blk] = sum;
    }
    double total = 0.0;
    for (size_t blk = 0; blk < nblocks; blk++) total += partial[blk];
    *out = (float)total;
}

/* ---- the table and lifetime ---------------------------------------------------------- */

static const ncsn_backend_ops cpu_ops = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .memset_zero = cpu_memset_zero,
    .copy_to_device = cpu_copy_to_device,
    .copy_to_host = cpu_copy_to_host,
    .copy = cpu_copy,
    .synchronize = cpu_synchronize,
    .conv2d_forward = cpu_conv2d_forward,
    .conv2d_backward_data = cpu_conv2d_backward_data,
    .conv2d_backward_weights_accumulate = cpu_conv2d_backward_weights_accumulate,
    .instance_norm_plus_forward = cpu_instance_norm_plus_forward,
    .instance_norm_plus_backward = cpu_instance_norm_plus_backward,
    .elu_forward = cpu_elu_forward,
    .elu_backward = cpu_elu_backward,
    .mean_pool2_forward = cpu_mean_pool2_forward,
    .mean_pool2_backward = cpu_mean_pool2_backward,
    .avg_pool5_forward = cpu_avg_pool5_forward,
    .avg_pool5_backward = cpu_avg_pool5_backward,
    .max_pool5_forward = cpu_max_pool5_forward,
    .max_pool5_backward = cpu_max_pool5_backward,
    .resize_bilinear_forward = cpu_resize_bilinear_forward,
    .resize_bilinear_backward = cpu_resize_bilinear_backward,
    .add = cpu_add,
    .accumulate = cpu_accumulate,
    .scale_shift = cpu_scale_shift,
    .divide_by_sigma = cpu_divide_by_sigma,
    .clamp01 = cpu_clamp01,
    .label_bias_forward = cpu_label_bias_forward,
    .label_bias_backward_accumulate = cpu_label_bias_backward_accumulate,
    .fill_normal = cpu_fill_normal,
    .fill_uniform = cpu_fill_uniform,
    .noise_inject = cpu_noise_inject,
    .dsm_loss = cpu_dsm_loss,
    .adam_step = cpu_adam_step,
    .ema_update = cpu_ema_update,
    .langevin_step = cpu_langevin_step,
    .denoise_step = cpu_denoise_step,
    .gemm_nt = cpu_gemm_nt,
    .sum_squares = cpu_sum_squares,
};

ncsn_backend *ncsn_cpu_backend_create(char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    ncsn_backend *be = ncsn_xcalloc(1, sizeof *be);
    cpu_backend_impl *impl = ncsn_xcalloc(1, sizeof *impl);
    be->ops = &cpu_ops;
    be->kind = NCSN_DEVICE_CPU;
    be->precision = NCSN_PRECISION_FP32;
    be->deterministic = 1; /* fixed reduction orders: run to run identical for a given thread count */
    be->impl = impl;
    cpu_conv_init(impl);
    return be;
}

void ncsn_cpu_backend_destroy(ncsn_backend *be) {
    if (!be) return;
    cpu_backend_impl *impl = be->impl;
    if (impl) {
        cpu_conv_destroy(impl);
        cpu_scratch_release(&impl->scratchpad);
        cpu_scratch_release(&impl->src_buf);
        cpu_scratch_release(&impl->weights_buf);
        cpu_scratch_release(&impl->dst_buf);
        cpu_scratch_release(&impl->bias_buf);
        cpu_scratch_release(&impl->op_buf);
        free(impl);
    }
    free(be);
}
