/* cpu_backend.c: the CPU backend (backend.h): host memory, every non-convolution op as an
 * OpenMP loop (fp32 NCHW, and the bf16 NHWC inference ops at the end), and the ops table.
 * Convolutions and gemm_nt live in cpu_conv.c (oneDNN).
 *
 * Element math comes from kernels/element_math.h and kernels/rng_math.h, the same inline
 * functions the CUDA kernels call, so the CPU tests exercise the GPU's arithmetic (the one
 * exception, ELU's expm1, is a vectorisable equivalent within 1 ulp, see there). Loops
 * are parallel over N*C planes (norms, pooling, resampling) or over elements; reductions
 * (DSM loss, sum of squares, IN++ statistics) accumulate in double, which costs nothing
 * next to a convolution and keeps large sums accurate.
 *
 * Speed: every hot loop vectorises (-O3 -march=native): branch-free bodies, `omp simd` where
 * the compiler cannot prove independence or must reassociate a reduction (a fixed lane order
 * for a given build, independent of the thread count), the 5x5 pools separable. Measured
 * per op against PyTorch by bench/bench_cpu_ops.
 *
 * Overwrite vs accumulate (backend.h): forward outputs and activation gradients overwrite
 * unless `accumulate` is set; parameter gradients (dgamma, dalpha, dbeta, dtable, dw, db)
 * always accumulate. Parameter-gradient sums for conditional IN++ and label biases go to
 * rows chosen by labels, and several examples can share a row, so those are accumulated
 * serially over n (parallel over channels) to stay race-free and deterministic.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "host/cpu_internal.h"
#include "kernels/element_math.h"
#include "kernels/rng_math.h"

#define CPU_ALIGN 256

/* Parallel loops: each op opens at most one OpenMP parallel region, with a static
 * schedule, so the team wakes once per op and every thread gets one contiguous block
 * (whole planes or long element ranges: threads never write the same cache line). Below
 * CPU_PARALLEL_MIN elements an op stays on the calling thread: waking and joining the team
 * costs microseconds on an idle machine (and a scheduler time slice when another job has
 * preempted a team thread), more than a 32K-element elementwise op takes alone. */
#define CPU_PARALLEL_MIN ((size_t)1 << 15)
/* The same for ops that draw a Philox normal per element (~100x the work of an add). */
#define CPU_PARALLEL_MIN_RNG ((size_t)1 << 10)
/* libgomp's waiting policy matters more than any threshold on a machine that other jobs
 * load: idle team threads spin by default, lose their scheduler share for it and are then
 * late to the next region; on this 2-core machine at load 3-4 a CIFAR-10 step ran 1.4-1.8x
 * faster with GOMP_SPINCOUNT=10000 or OMP_WAIT_POLICY=passive, while on an idle machine the
 * default spin is fastest. libgomp reads these when it loads, so only the environment can
 * set them. */

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

static void cpu_copy_columns(ncsn_backend *be, float *dst, const float *src, size_t rows, size_t width,
                             size_t cols) {
    NCSN_CHECKF(cols <= width && (rows == 0 || cols == 0 || (dst && src)),
                "copy_columns: %zu columns of rows of %zu (dst %p, src %p)", cols, width, (void *)dst,
                (const void *)src);
    for (size_t r = 0; r < rows; r++) memmove(dst + r * width, src + r * width, cols * sizeof(float));
}

static void cpu_copy_to_device(ncsn_backend *be, void *dst, const void *src_host, size_t bytes) {
    cpu_copy(be, dst, src_host, bytes);
}

static void cpu_copy_to_host(ncsn_backend *be, void *dst_host, const void *src, size_t bytes) {
    cpu_copy(be, dst_host, src, bytes);
}

static void cpu_synchronize(ncsn_backend *be) {}

/* Every CPU op has finished when it returns, so plain memory is all the staging an
 * asynchronous upload needs, and a fence has nothing to wait for. */
static void *cpu_host_alloc(ncsn_backend *be, size_t bytes) { return cpu_alloc(be, bytes); }

static void cpu_host_free(ncsn_backend *be, void *p) { free(p); }

/* Any distinct non-NULL pointer will do; the fence carries no state. */
static ncsn_fence *cpu_fence_create(ncsn_backend *be) { return ncsn_xcalloc(1, 1); }

static void cpu_fence_record(ncsn_backend *be, ncsn_fence *f) { NCSN_CHECKF(f, "fence_record: NULL fence"); }

static void cpu_fence_wait(ncsn_backend *be, ncsn_fence *f) { NCSN_CHECKF(f, "fence_wait: NULL fence"); }

static void cpu_fence_destroy(ncsn_backend *be, ncsn_fence *f) { free(f); }

/* No graphs: callers run the ops directly (graph_begin returns 0), and nothing may then
 * ask for a graph. */
static int cpu_graph_begin(ncsn_backend *be) { return 0; }

static ncsn_graph *cpu_graph_end(ncsn_backend *be) {
    ncsn_die("graph_end: the cpu backend has no graphs (graph_begin returned 0)");
}

static void cpu_graph_launch(ncsn_backend *be, ncsn_graph *g) {
    ncsn_die("graph_launch: the cpu backend has no graphs (graph_begin returned 0)");
}

static void cpu_graph_destroy(ncsn_backend *be, ncsn_graph *g) {
    NCSN_CHECKF(g == NULL, "graph_destroy: the cpu backend has no graphs");
}

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
 * Stats layout: [mean (N*C) | rstd (N*C) | mhat (N*C) | s (N)].
 *
 * Work split: everything of one example (its C planes, their channel statistics, the
 * apply) depends only on that example, so when there are at least as many examples as
 * threads each thread takes whole examples and the op needs no barrier inside; an
 * example's planes (512 KB at 128 x 32 x 32) are still in L2 when the apply pass re-reads
 * them. With fewer examples than threads (sampling one image on a many-core machine) the
 * same per-plane steps run as three work-shared loops over planes, examples and planes. */

#define IN_EPS 1e-5

static size_t param_row(const int32_t *labels, int n, int param_stride) {
    return labels ? (size_t)labels[n] * (size_t)param_stride : 0;
}

/* Mean and rstd of P values from the sums of x - x0 and (x - x0)^2 (double). */
static void in_stats_from_shifted_sums(double x0, double sum, double sq, size_t P, float *mean, float *rstd) {
    const double shifted_mean = sum / (double)P;
    double var = sq / (double)P - shifted_mean * shifted_mean;
    if (var < 0.0) var = 0.0; /* rounding of a constant plane */
    *mean = (float)(x0 + shifted_mean);
    *rstd = (float)(1.0 / sqrt(var + IN_EPS));
}

/* Mean and rstd of one plane in one pass: double sums of x - x0 and (x - x0)^2, shifted
 * by the plane's first element so that the variance does not come from the difference of
 * two large numbers when the plane's mean is far from 0 (the cancellation left is
 * (mu - x0)^2 / var * 2^-53, negligible next to the fp32 result). `omp simd reduction`
 * lets the compiler split each sum over the vector lanes: a fixed order for a given build,
 * independent of the thread count. */
static void in_plane_stats(const float *xp, size_t P, float *mean, float *rstd) {
    const double x0 = xp[0];
    double sum = 0.0, sq = 0.0;
#pragma omp simd reduction(+ : sum, sq)
    for (size_t i = 0; i < P; i++) {
        double t = (double)xp[i] - x0;
        sum += t;
        sq += t * t;
    }
    in_stats_from_shifted_sums(x0, sum, sq, P, mean, rstd);
}

/* The channel-mean normalisation of one example, from the float means as stored (the
 * backward sees the same numbers). */
static void in_channel_stats(const float *mu, int C, float *mhat, float *chan_rstd) {
    if (C == 1) {
        mhat[0] = 0.0f;
        *chan_rstd = 0.0f;
        return;
    }
    double M = 0.0;
    for (int c = 0; c < C; c++) M += mu[c];
    M /= C;
    double V = 0.0;
    for (int c = 0; c < C; c++) V += ((double)mu[c] - M) * ((double)mu[c] - M);
    V /= (C - 1);
    double s = 1.0 / sqrt(V + IN_EPS);
    for (int c = 0; c < C; c++) mhat[c] = (float)(((double)mu[c] - M) * s);
    *chan_rstd = (float)s;
}

/* ---- ELU (here: the IN++ forward fuses it) ------------------------------------------- */

/* expm1(x) for x <= 0, branch-free so that the ELU loops vectorise (libm's expm1f is a
 * call per element, which no compiler vectorises; it was the largest non-convolution cost
 * of a training step). It computes the same function as ncsn_elu in kernels/element_math.h
 * (the reference, which the CUDA kernels run) to within the error stated below.
 * Method (as Cephes/SLEEF): x = k ln2 + r with k = round(x / ln2), |r| <= ln2 / 2 (ln2 in
 * two parts, Cody-Waite, so r is exact to fp32 rounding); expm1(r) by its Taylor series to
 * r^7 (truncation < 1.6e-8 relative on that interval); then
 * expm1(x) = 2^k expm1(r) + (2^k - 1) as one fma, where 2^k - 1 is exact. k = 0 near 0,
 * so small |x| keep full relative accuracy (no exp(x) - 1 cancellation). x is clamped to
 * [-30, 0]: below -17.4 expm1f is -1 in fp32 anyway, and 2^-44 stays a normal number.
 * NaN stays NaN (the clamps compare false and the arithmetic propagates it); -inf gives -1.
 * Measured against double expm1 over [-20, 20] (positive x take ELU's x > 0 branch and
 * are exact): on every fp32 value of [-20, 0) the max error is 0.88 ulp (0.50 ulp on
 * [-1e-3, 0)); on the 2^-12 grid the max relative error is 7.4e-8 and the result is at
 * most 1 ulp from glibc's expm1f. Denormal inputs come back unchanged (expm1(x) = x). */
static inline float elu_expm1_nonpositive(float x) {
    float xc = x > 0.0f ? 0.0f : x;
    xc = xc < -30.0f ? -30.0f : xc;
    /* k = round(x / ln2) by the 1.5 * 2^23 trick: the low bits of t hold k, no int conversion. */
    const float shifter = 12582912.0f; /* 0x1.8p23 */
    const float t = fmaf(xc, 1.44269504088896341f, shifter);
    const float kf = t - shifter;
    const float r = fmaf(kf, -1.42860682030941723212e-6f, fmaf(kf, -0.693145751953125f, xc));
    float p = 1.0f / 5040.0f;
    p = fmaf(p, r, 1.0f / 720.0f);
    p = fmaf(p, r, 1.0f / 120.0f);
    p = fmaf(p, r, 1.0f / 24.0f);
    p = fmaf(p, r, 1.0f / 6.0f);
    p = fmaf(p, r, 0.5f);
    const float expm1_r = fmaf(p * r, r, r);
    uint32_t tbits, scale_bits;
    memcpy(&tbits, &t, sizeof tbits);
    scale_bits = (tbits - 0x4B400000u + 127u) << 23; /* k + bias into the exponent field */
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    return fmaf(scale, expm1_r, scale - 1.0f);
}

/* ELU with the vectorisable expm1: what cpu_elu_forward and the fused IN++ forward compute. */
static inline float cpu_elu(float v) {
    const float neg = elu_expm1_nonpositive(v);
    return v > 0.0f ? v : neg;
}

typedef struct {
    float *out, *mean, *rstd, *mhat, *chan_rstd;
    const float *x, *gamma, *alpha, *beta;
    const int32_t *labels;
    int param_stride, C, elu;
    size_t P;
} in_forward_args;

static void in_plane_forward_apply(const in_forward_args *a, size_t nc) {
    const int n = (int)(nc / a->C), c = (int)(nc % a->C);
    const size_t p = param_row(a->labels, n, a->param_stride) + c;
    const float g = a->gamma[p], al = a->alpha[p], b = a->beta[p];
    const float mu = a->mean[nc], r = a->rstd[nc], mh = a->mhat[nc];
    const float *xp = a->x + nc * a->P;
    float *op = a->out + nc * a->P;
    /* Two loops, so each vectorises without a per-element branch on the flag. */
    if (a->elu) {
#pragma omp simd
        for (size_t i = 0; i < a->P; i++) op[i] = cpu_elu(ncsn_in_plus_element(xp[i], mu, r, mh, g, al, b));
    } else {
#pragma omp simd
        for (size_t i = 0; i < a->P; i++) op[i] = ncsn_in_plus_element(xp[i], mu, r, mh, g, al, b);
    }
}

static void cpu_instance_norm_plus_forward(ncsn_backend *be, float *out, const float *x, const float *gamma,
                                           const float *alpha, const float *beta, int param_stride,
                                           const int32_t *labels, float *stats, int N, int C, int H, int W,
                                           int elu) {
    check_nchw("instance_norm_plus_forward", N, C, H, W);
    if (labels) check_labels("instance_norm_plus_forward", labels, N);
    NCSN_CHECKF(labels || param_stride == 0, "instance_norm_plus_forward: stride %d without labels", param_stride);
    const size_t P = (size_t)H * W, NC = (size_t)N * C;
    const in_forward_args a = {.out = out, .mean = stats, .rstd = stats + NC, .mhat = stats + 2 * NC,
                               .chan_rstd = stats + 3 * NC, .x = x, .gamma = gamma, .alpha = alpha, .beta = beta,
                               .labels = labels, .param_stride = param_stride, .C = C, .elu = elu, .P = P};
    const int parallel = NC * P >= CPU_PARALLEL_MIN;
    if (N >= omp_get_max_threads()) {
#pragma omp parallel for schedule(static) if (parallel : parallel)
        for (int n = 0; n < N; n++) {
            const size_t base = (size_t)n * C;
            for (size_t nc = base; nc < base + C; nc++) in_plane_stats(x + nc * P, P, &a.mean[nc], &a.rstd[nc]);
            in_channel_stats(a.mean + base, C, a.mhat + base, &a.chan_rstd[n]);
            for (size_t nc = base; nc < base + C; nc++) in_plane_forward_apply(&a, nc);
        }
    } else {
#pragma omp parallel if (parallel : parallel)
        {
#pragma omp for schedule(static)
            for (size_t nc = 0; nc < NC; nc++) in_plane_stats(x + nc * P, P, &a.mean[nc], &a.rstd[nc]);
#pragma omp for schedule(static)
            for (int n = 0; n < N; n++)
                in_channel_stats(a.mean + (size_t)n * C, C, a.mhat + (size_t)n * C, &a.chan_rstd[n]);
#pragma omp for schedule(static)
            for (size_t nc = 0; nc < NC; nc++) in_plane_forward_apply(&a, nc);
        }
    }
}

/* Analytic backward. With g = dout, xhat = (x - mu) * rstd, dh = gamma * g:
 *   dbeta_c += sum g;  dgamma_c += sum g * (xhat + alpha * mhat);  dalpha_c += gamma * mhat * sum g
 *   through xhat (mu and var of the plane):  rstd * (dh - mean(dh) - xhat * mean(dh * xhat))
 *   through mhat (the channel means):  dmhat_c = alpha_c * sum dh and
 *     dmu_c = s * (dmhat_c - mean_c dmhat - mhat_c * sum_k(dmhat_k * mhat_k) / (C - 1)),
 *   which reaches every x of plane c as dmu_c / (H*W).
 * Per plane that is dx = A * (g - mean g) + B * (x - mu) + S with plane constants
 * A = rstd * gamma, B = -rstd^2 * mean(dh * xhat), S = dmu / (H*W), applied in fp32. Both
 * differences come first: rstd can be large (up to 1/sqrt(eps) = 316 for a constant plane),
 * and A * g - A * mean g would lose to cancellation what g - mean g keeps. */
typedef struct {
    float *dx;
    const float *dout, *x, *gamma, *alpha, *mean, *rstd, *mhat, *chan_rstd;
    const int32_t *labels;
    double *sum_g, *sum_gxhat; /* per plane: sum g, sum g * xhat */
    int param_stride, C, accumulate;
    size_t P;
} in_backward_args;

static void in_plane_grad_sums(const in_backward_args *a, size_t nc) {
    const float *gp = a->dout + nc * a->P, *xp = a->x + nc * a->P;
    const double mu = a->mean[nc];
    double sg = 0.0, sgx = 0.0;
#pragma omp simd reduction(+ : sg, sgx)
    for (size_t i = 0; i < a->P; i++) {
        sg += gp[i];
        sgx += (double)gp[i] * ((double)xp[i] - mu);
    }
    a->sum_g[nc] = sg;
    a->sum_gxhat[nc] = sgx * (double)a->rstd[nc];
}

/* The channel-means path of example n, then its planes' dx. */
static void in_example_backward_apply(const in_backward_args *a, int n) {
    const int C = a->C;
    const size_t row = param_row(a->labels, n, a->param_stride), base = (size_t)n * C;
    const double inv_P = 1.0 / (double)a->P;
    double mean_dmhat = 0.0, dot = 0.0;
    if (C > 1) {
        for (int c = 0; c < C; c++) {
            double dmhat = (double)a->alpha[row + c] * a->gamma[row + c] * a->sum_g[base + c];
            mean_dmhat += dmhat;
            dot += dmhat * a->mhat[base + c];
        }
        mean_dmhat /= C;
    }
    for (int c = 0; c < C; c++) {
        const size_t nc = base + c;
        double dmu = 0.0;
        if (C > 1) {
            double dmhat = (double)a->alpha[row + c] * a->gamma[row + c] * a->sum_g[nc];
            dmu = a->chan_rstd[n] * (dmhat - mean_dmhat - a->mhat[nc] * dot / (C - 1));
        }
        const double g = a->gamma[row + c], r = a->rstd[nc];
        const double mean_dh_xhat = g * a->sum_gxhat[nc] * inv_P;
        const float A = (float)(r * g), B = (float)(-r * r * mean_dh_xhat), S = (float)(dmu * inv_P);
        const float mu = a->mean[nc], mean_g = (float)(a->sum_g[nc] * inv_P);
        const float *gp = a->dout + nc * a->P, *xp = a->x + nc * a->P;
        float *dp = a->dx + nc * a->P;
        if (a->accumulate) {
#pragma omp simd
            for (size_t i = 0; i < a->P; i++) dp[i] += fmaf(A, gp[i] - mean_g, fmaf(B, xp[i] - mu, S));
        } else {
#pragma omp simd
            for (size_t i = 0; i < a->P; i++) dp[i] = fmaf(A, gp[i] - mean_g, fmaf(B, xp[i] - mu, S));
        }
    }
}

static void cpu_instance_norm_plus_backward(ncsn_backend *be, float *dx, float *dgamma, float *dalpha,
                                            float *dbeta, const float *dout, const float *x, const float *gamma,
                                            const float *alpha, int param_stride, const int32_t *labels,
                                            const float *stats, int N, int C, int H, int W, int accumulate) {
    check_nchw("instance_norm_plus_backward", N, C, H, W);
    if (labels) check_labels("instance_norm_plus_backward", labels, N);
    NCSN_CHECKF(labels || param_stride == 0, "instance_norm_plus_backward: stride %d without labels", param_stride);
    const size_t P = (size_t)H * W, NC = (size_t)N * C;
    double *sums = op_scratch(be, 2 * NC * sizeof(double));
    const in_backward_args a = {.dx = dx, .dout = dout, .x = x, .gamma = gamma, .alpha = alpha, .mean = stats,
                                .rstd = stats + NC, .mhat = stats + 2 * NC, .chan_rstd = stats + 3 * NC,
                                .labels = labels, .sum_g = sums, .sum_gxhat = sums + NC,
                                .param_stride = param_stride, .C = C, .accumulate = accumulate, .P = P};
    const int parallel = NC * P >= CPU_PARALLEL_MIN;
    if (N >= omp_get_max_threads()) {
#pragma omp parallel for schedule(static) if (parallel : parallel)
        for (int n = 0; n < N; n++) {
            for (size_t nc = (size_t)n * C; nc < (size_t)(n + 1) * C; nc++) in_plane_grad_sums(&a, nc);
            in_example_backward_apply(&a, n);
        }
    } else {
#pragma omp parallel if (parallel : parallel)
        {
#pragma omp for schedule(static)
            for (size_t nc = 0; nc < NC; nc++) in_plane_grad_sums(&a, nc);
#pragma omp for schedule(static)
            for (int n = 0; n < N; n++) in_example_backward_apply(&a, n);
        }
    }
    /* Parameter gradients: serial over n because examples may share a row (N * C terms). */
    for (int n = 0; n < N; n++) {
        size_t row = param_row(labels, n, param_stride);
        for (int c = 0; c < C; c++) {
            size_t nc = (size_t)n * C + c;
            double mh = a.mhat[nc], sg = a.sum_g[nc];
            dbeta[row + c] += (float)sg;
            dgamma[row + c] += (float)(a.sum_gxhat[nc] + alpha[row + c] * mh * sg);
            dalpha[row + c] += (float)(gamma[row + c] * mh * sg);
        }
    }
}

static void cpu_elu_forward(ncsn_backend *be, float *out, const float *x, size_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= CPU_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) out[i] = cpu_elu(x[i]);
}

static void cpu_elu_backward(ncsn_backend *be, float *dx, const float *dout, const float *out, size_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= CPU_PARALLEL_MIN)
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
#pragma omp parallel for schedule(static) if (parallel : NC * H * W >= CPU_PARALLEL_MIN)
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
#pragma omp parallel for schedule(static) if (parallel : NC * H * W >= CPU_PARALLEL_MIN)
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

/* ---- 5x5 windows (stride 1, pad 2), separably ----------------------------------------
 * A 5x5 window is a 5-tap pass along W and then a 5-tap pass along H over its result; the
 * avg pool adds, the max pool takes maxima. The padding is made real, so that no loop has
 * a border case (border cases in scalar code were most of the time of a 16x16 plane):
 * each plane is copied into rows of W + 4 with two pad columns on each side, and the W
 * pass writes into a buffer with two pad rows above and below, so the H pass is one flat
 * loop over the plane (row offsets 0 .. 4W). The pad value is what the padding means: 0
 * for the count_include_pad sum (x + 0 == x, so the sums equal those of skipping the
 * taps), -inf for the max (it never wins against a real value; planes holding NaN or -inf
 * take the reference path below instead).
 * Scratch: each thread owns a slice of op_buf, cache-line aligned so that threads never
 * share a line; pad cells are written once per op and only the interior per plane. */

#define CPU_CACHE_FLOATS 16 /* 64-byte lines */

/* One slice of op_buf per thread that a parallel region may have. */
typedef struct {
    float *base;
    size_t stride; /* floats, whole cache lines */
} thread_slices;

/* Lays out op_buf as [head_bytes of shared data | one slice of per_thread floats per
 * thread], each part starting on a cache line, and returns the head. */
static void *op_scratch_with_slices(ncsn_backend *be, size_t head_bytes, size_t per_thread, thread_slices *slices) {
    const size_t line = CPU_CACHE_FLOATS * sizeof(float);
    const size_t head = (head_bytes + line - 1) / line * line;
    slices->stride = (per_thread + CPU_CACHE_FLOATS - 1) / CPU_CACHE_FLOATS * CPU_CACHE_FLOATS;
    char *p = op_scratch(be, head + slices->stride * (size_t)omp_get_max_threads() * sizeof(float));
    slices->base = (float *)(p + head);
    return p;
}

/* The calling thread's slice (inside the parallel region). */
static float *my_slice(const thread_slices *slices) {
    return slices->base + slices->stride * (size_t)omp_get_thread_num();
}

/* Floats of a plane with two pad columns each side, and of one with two pad rows each side. */
static size_t padded_columns_size(int H, int W) { return (size_t)H * ((size_t)W + 4); }
static size_t padded_rows_size(int H, int W) { return ((size_t)H + 4) * (size_t)W; }

static void pad_columns_init(float *pin, int H, int W, float pad) {
    for (int y = 0; y < H; y++) {
        float *row = pin + (size_t)y * (W + 4);
        row[0] = row[1] = row[W + 2] = row[W + 3] = pad;
    }
}

static void pad_columns_copy(float *pin, const float *plane, int H, int W) {
    for (int y = 0; y < H; y++) memcpy(pin + (size_t)y * (W + 4) + 2, plane + (size_t)y * W, (size_t)W * sizeof(float));
}

static void pad_rows_init(float *rows, int H, int W, float pad) {
    const size_t w = (size_t)W, tail = ((size_t)H + 2) * w;
    for (size_t i = 0; i < 2 * w; i++) rows[i] = rows[tail + i] = pad;
}

/* rs row y + 2 = sums of the 5 taps of row y, left to right. */
static void box5_rows(float *rs, const float *pin, int H, int W) {
    for (int y = 0; y < H; y++) {
        const float *p = pin + (size_t)y * (W + 4);
        float *o = rs + ((size_t)y + 2) * W;
#pragma omp simd
        for (int x = 0; x < W; x++) o[x] = (((p[x] + p[x + 1]) + p[x + 2]) + p[x + 3]) + p[x + 4];
    }
}

/* out (= or +=) the sums of the 5 row sums, top to bottom, / 25. */
static void box5_cols(float *out, const float *rs, int H, int W, int accumulate) {
    const size_t P = (size_t)H * W, w = (size_t)W;
    if (accumulate) {
#pragma omp simd
        for (size_t i = 0; i < P; i++)
            out[i] += ((((rs[i] + rs[i + w]) + rs[i + 2 * w]) + rs[i + 3 * w]) + rs[i + 4 * w]) / 25.0f;
    } else {
#pragma omp simd
        for (size_t i = 0; i < P; i++)
            out[i] = ((((rs[i] + rs[i + w]) + rs[i + 2 * w]) + rs[i + 3 * w]) + rs[i + 4 * w]) / 25.0f;
    }
}

/* AvgPool2d(5, stride 1, pad 2), count_include_pad (v1 CondCRPBlock): fp32 sums of the
 * 5 row sums (PyTorch's CPU kernel adds the 25 taps row-major; the two orders differ by
 * fp32 rounding, ~1e-7 relative). The window is symmetric, so the same box filter is the
 * backward in gather form (each input collects the outputs whose window covers it). */
static void box5_mean_planes(ncsn_backend *be, float *out, const float *in, int N, int C, int H, int W,
                             int accumulate) {
    const size_t NC = (size_t)N * C, P = (size_t)H * W, pin_size = padded_columns_size(H, W);
    thread_slices slices;
    op_scratch_with_slices(be, 0, pin_size + padded_rows_size(H, W), &slices);
#pragma omp parallel if (parallel : NC * P >= CPU_PARALLEL_MIN)
    {
        float *pin = my_slice(&slices), *rs = pin + pin_size;
        pad_columns_init(pin, H, W, 0.0f);
        pad_rows_init(rs, H, W, 0.0f);
#pragma omp for schedule(static)
        for (size_t nc = 0; nc < NC; nc++) {
            pad_columns_copy(pin, in + nc * P, H, W);
            box5_rows(rs, pin, H, W);
            box5_cols(out + nc * P, rs, H, W, accumulate);
        }
    }
}

static void cpu_avg_pool5_forward(ncsn_backend *be, float *out, const float *in, int N, int C, int H, int W) {
    check_nchw("avg_pool5_forward", N, C, H, W);
    box5_mean_planes(be, out, in, N, C, H, W, 0);
}

static void cpu_avg_pool5_backward(ncsn_backend *be, float *din, const float *dout, int N, int C, int H, int W,
                                   int accumulate) {
    check_nchw("avg_pool5_backward", N, C, H, W);
    box5_mean_planes(be, din, dout, N, C, H, W, accumulate);
}

/* MaxPool2d(5, stride 1, pad 2) (v2 CRPBlock).
 * Reference semantics, and the path for planes that hold a NaN or -inf: the index (within
 * the plane) of the first maximum of the 5x5 window at (y, x) in row-major order; a NaN
 * wins at once (PyTorch propagates NaN); out-of-range positions are -inf padding and never
 * win, not even against a -inf input. */
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
                if (isnan(v)) return best;
            }
        }
    }
    return best;
}

/* Does the plane hold a value for which -inf padding and strict `>` are not the reference
 * semantics (NaN, -inf)? */
static int plane_needs_reference(const float *p, size_t P) {
    int odd = 0;
#pragma omp simd reduction(| : odd)
    for (size_t i = 0; i < P; i++) odd |= !(p[i] > -INFINITY);
    return odd;
}

/* The first maximum in row-major order of a 5x5 window is the leftmost maximum of the
 * topmost row whose maximum equals the window's. So the W pass keeps, per position, the
 * row maximum and the plane index of its leftmost occurrence, and the H pass keeps the
 * topmost row on ties: both replace only on a strict `>`, scanning left to right and top
 * to bottom. */
static inline void max5_take(float *m, int32_t *k, float v, int32_t kv) {
    const int better = v > *m;
    *m = better ? v : *m;
    *k = better ? kv : *k;
}

/* rm row y + 2 = max of the 5 taps of row y (values only: the forward). */
static void max5_rows(float *rm, const float *pin, int H, int W) {
    for (int y = 0; y < H; y++) {
        const float *p = pin + (size_t)y * (W + 4);
        float *o = rm + ((size_t)y + 2) * W;
#pragma omp simd
        for (int x = 0; x < W; x++) {
            float m = p[x];
            m = p[x + 1] > m ? p[x + 1] : m;
            m = p[x + 2] > m ? p[x + 2] : m;
            m = p[x + 3] > m ? p[x + 3] : m;
            m = p[x + 4] > m ? p[x + 4] : m;
            o[x] = m;
        }
    }
}

static void max5_cols(float *out, const float *rm, int H, int W) {
    const size_t P = (size_t)H * W, w = (size_t)W;
#pragma omp simd
    for (size_t i = 0; i < P; i++) {
        float m = rm[i];
        m = rm[i + w] > m ? rm[i + w] : m;
        m = rm[i + 2 * w] > m ? rm[i + 2 * w] : m;
        m = rm[i + 3 * w] > m ? rm[i + 3 * w] : m;
        m = rm[i + 4 * w] > m ? rm[i + 4 * w] : m;
        out[i] = m;
    }
}

/* The same with the index of the first maximum (the backward). A pad tap's index lies
 * outside the row, but it is never chosen. */
static void max5_rows_arg(float *rm, int32_t *ri, const float *pin, int H, int W) {
    for (int y = 0; y < H; y++) {
        const float *p = pin + (size_t)y * (W + 4);
        const size_t row = ((size_t)y + 2) * W;
        const int32_t first_tap = (int32_t)((size_t)y * W) - 2; /* plane index of tap 0 at x = 0 */
#pragma omp simd
        for (int x = 0; x < W; x++) {
            float m = p[x];
            int32_t k = first_tap + x;
            max5_take(&m, &k, p[x + 1], first_tap + x + 1);
            max5_take(&m, &k, p[x + 2], first_tap + x + 2);
            max5_take(&m, &k, p[x + 3], first_tap + x + 3);
            max5_take(&m, &k, p[x + 4], first_tap + x + 4);
            rm[row + x] = m;
            ri[row + x] = k;
        }
    }
}

static void max5_cols_arg(int32_t *arg, const float *rm, const int32_t *ri, int H, int W) {
    const size_t P = (size_t)H * W, w = (size_t)W;
#pragma omp simd
    for (size_t i = 0; i < P; i++) {
        float m = rm[i];
        int32_t k = ri[i];
        max5_take(&m, &k, rm[i + w], ri[i + w]);
        max5_take(&m, &k, rm[i + 2 * w], ri[i + 2 * w]);
        max5_take(&m, &k, rm[i + 3 * w], ri[i + 3 * w]);
        max5_take(&m, &k, rm[i + 4 * w], ri[i + 4 * w]);
        arg[i] = k;
    }
}

static void cpu_max_pool5_forward(ncsn_backend *be, float *out, const float *in, int N, int C, int H, int W) {
    check_nchw("max_pool5_forward", N, C, H, W);
    const size_t NC = (size_t)N * C, P = (size_t)H * W, pin_size = padded_columns_size(H, W);
    thread_slices slices;
    op_scratch_with_slices(be, 0, pin_size + padded_rows_size(H, W), &slices);
#pragma omp parallel if (parallel : NC * P >= CPU_PARALLEL_MIN)
    {
        float *pin = my_slice(&slices), *rm = pin + pin_size;
        pad_columns_init(pin, H, W, -INFINITY);
        pad_rows_init(rm, H, W, -INFINITY);
#pragma omp for schedule(static)
        for (size_t nc = 0; nc < NC; nc++) {
            const float *ip = in + nc * P;
            float *op = out + nc * P;
            if (plane_needs_reference(ip, P)) {
                for (int y = 0; y < H; y++)
                    for (int x = 0; x < W; x++) op[(size_t)y * W + x] = ip[max_pool5_argmax(ip, H, W, y, x)];
                continue;
            }
            pad_columns_copy(pin, ip, H, W);
            max5_rows(rm, pin, H, W);
            max5_cols(op, rm, H, W);
        }
    }
}

/* Each output's gradient goes to the first maximum of its window (recomputed separably:
 * the forward has no index output), added in row-major order of the outputs, as the
 * reference loop adds them (so the result is the reference's, bit for bit). The scatter
 * is scalar; a vectorised 25-tap gather (each input summing the outputs that chose it, in
 * the same order) measured 2x slower: its masked adds form a 25-long dependency chain. */
static void cpu_max_pool5_backward(ncsn_backend *be, float *din, const float *dout, const float *in, int N, int C,
                                   int H, int W, int accumulate) {
    check_nchw("max_pool5_backward", N, C, H, W);
    NCSN_CHECKF(((size_t)H + 4) * ((size_t)W + 4) <= INT32_MAX, "max_pool5_backward: plane %dx%d too large", H, W);
    const size_t NC = (size_t)N * C, P = (size_t)H * W;
    const size_t pin_size = padded_columns_size(H, W), rows_size = padded_rows_size(H, W);
    thread_slices slices; /* padded plane | row maxima | their indices | window argmax */
    op_scratch_with_slices(be, 0, pin_size + 2 * rows_size + P, &slices);
#pragma omp parallel if (parallel : NC * P >= CPU_PARALLEL_MIN)
    {
        float *pin = my_slice(&slices), *rm = pin + pin_size;
        int32_t *ri = (int32_t *)(rm + rows_size), *arg = ri + rows_size;
        pad_columns_init(pin, H, W, -INFINITY);
        pad_rows_init(rm, H, W, -INFINITY);
        memset(ri, 0, rows_size * sizeof(int32_t)); /* pad rows: never chosen, but defined */
#pragma omp for schedule(static)
        for (size_t nc = 0; nc < NC; nc++) {
            const float *ip = in + nc * P, *gp = dout + nc * P;
            float *dp = din + nc * P;
            if (!accumulate) memset(dp, 0, P * sizeof(float));
            if (plane_needs_reference(ip, P)) {
                for (int y = 0; y < H; y++)
                    for (int x = 0; x < W; x++) dp[max_pool5_argmax(ip, H, W, y, x)] += gp[(size_t)y * W + x];
                continue;
            }
            pad_columns_copy(pin, ip, H, W);
            max5_rows_arg(rm, ri, pin, H, W);
            max5_cols_arg(arg, rm, ri, H, W);
            for (size_t i = 0; i < P; i++) dp[arg[i]] += gp[i];
        }
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
#pragma omp parallel for schedule(static) if (parallel : NC * Ho * Wo >= CPU_PARALLEL_MIN)
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

/* The adjoint of the forward's two 1-D interpolations, one after the other: first along H
 * (each output row adds into its two source rows of a H x Wo buffer, a contiguous
 * vectorised loop), then along W (each buffer element into its two source columns). That
 * is (Ho + H) * Wo * 2 multiply-adds instead of the 4 * Ho * Wo scattered ones of adding
 * each output's four taps directly; the weights are the same, the rounding of the sums
 * differs at fp32 level. */
static void cpu_resize_bilinear_backward(ncsn_backend *be, float *din, const float *dout, int N, int C, int H,
                                         int W, int Ho, int Wo, int accumulate) {
    check_nchw("resize_bilinear_backward", N, C, H, W);
    NCSN_CHECKF(Ho > 0 && Wo > 0, "resize_bilinear_backward: bad output size %dx%d", Ho, Wo);
    const size_t NC = (size_t)N * C, rows = (size_t)H * Wo;
    thread_slices slices;
    bilinear_tap *ty = op_scratch_with_slices(be, ((size_t)Ho + Wo) * sizeof(bilinear_tap), rows, &slices);
    bilinear_tap *tx = ty + Ho;
    bilinear_taps(ty, H, Ho);
    bilinear_taps(tx, W, Wo);
#pragma omp parallel if (parallel : NC * (size_t)Ho * Wo >= CPU_PARALLEL_MIN)
    {
        float *dy = my_slice(&slices);
#pragma omp for schedule(static)
        for (size_t nc = 0; nc < NC; nc++) {
            const float *gp = dout + nc * (size_t)Ho * Wo;
            float *dp = din + nc * (size_t)H * W;
            memset(dy, 0, rows * sizeof(float));
            for (int y = 0; y < Ho; y++) {
                float *r0 = dy + (size_t)ty[y].i0 * Wo, *r1 = dy + (size_t)ty[y].i1 * Wo;
                const float *g = gp + (size_t)y * Wo;
                const float l0 = ty[y].l0, l1 = ty[y].l1;
                /* r0 and r1 are the same row at the last source row (l1 = 0): two loops. */
#pragma omp simd
                for (int x = 0; x < Wo; x++) r0[x] += l0 * g[x];
#pragma omp simd
                for (int x = 0; x < Wo; x++) r1[x] += l1 * g[x];
            }
            if (!accumulate) memset(dp, 0, (size_t)H * W * sizeof(float));
            for (int yi = 0; yi < H; yi++) {
                const float *r = dy + (size_t)yi * Wo;
                float *d = dp + (size_t)yi * W;
                for (int x = 0; x < Wo; x++) {
                    d[tx[x].i0] += tx[x].l0 * r[x];
                    d[tx[x].i1] += tx[x].l1 * r[x];
                }
            }
        }
    }
}

/* ---- elementwise --------------------------------------------------------------------- */

static void cpu_add(ncsn_backend *be, float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= CPU_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

static void cpu_accumulate(ncsn_backend *be, float *y, const float *x, size_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= CPU_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

static void cpu_scale_shift(ncsn_backend *be, float *out, const float *x, float scale, float shift, size_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= CPU_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) out[i] = x[i] * scale + shift;
}

static void cpu_divide_by_sigma(ncsn_backend *be, float *out, const float *x, const float *sigmas,
                                const int32_t *labels, int N, size_t per_example) {
    check_labels("divide_by_sigma", labels, N);
#pragma omp parallel for collapse(2) schedule(static) if (parallel : N * per_example >= CPU_PARALLEL_MIN)
    for (int n = 0; n < N; n++)
        for (size_t i = 0; i < per_example; i++) {
            size_t j = (size_t)n * per_example + i;
            out[j] = x[j] / sigmas[labels[n]]; /* a division, as torch's h / used_sigmas */
        }
}

static void cpu_clamp01(ncsn_backend *be, float *x, size_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= CPU_PARALLEL_MIN)
    /* Parenthesised: backend.h also defines a function-like macro ncsn_clamp01(be, ...). */
    for (size_t i = 0; i < n; i++) x[i] = ncsn_clamp01_element(x[i]);
}

static void cpu_logit(ncsn_backend *be, float *x, size_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= CPU_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) x[i] = ncsn_logit_element(x[i]);
}

static void cpu_label_bias_forward(ncsn_backend *be, float *out, const float *table, const int32_t *labels, int N,
                                   int C, size_t spatial) {
    check_labels("label_bias_forward", labels, N);
    NCSN_CHECKF(N > 0 && C > 0, "label_bias_forward: N=%d C=%d", N, C);
    const size_t NC = (size_t)N * C;
#pragma omp parallel for schedule(static) if (parallel : NC * spatial >= CPU_PARALLEL_MIN)
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
#pragma omp parallel for schedule(static) if (parallel : (size_t)N * C * spatial >= CPU_PARALLEL_MIN)
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
#pragma omp parallel for collapse(2) schedule(static) if (parallel : N * per_example >= CPU_PARALLEL_MIN_RNG)
    for (int n = 0; n < N; n++)
        for (size_t i = 0; i < per_example; i++)
            out[(size_t)n * per_example + i] = ncsn_rng_normal(seed, purpose, example_offset + (uint32_t)n, step, i);
}

static void cpu_fill_uniform(ncsn_backend *be, float *out, int N, size_t per_example, uint64_t seed,
                             uint32_t purpose, uint32_t example_offset, uint32_t step) {
#pragma omp parallel for collapse(2) schedule(static) if (parallel : N * per_example >= CPU_PARALLEL_MIN_RNG)
    for (int n = 0; n < N; n++)
        for (size_t i = 0; i < per_example; i++)
            out[(size_t)n * per_example + i] = ncsn_rng_uniform(seed, purpose, example_offset + (uint32_t)n, step, i);
}

/* ---- custom kernels of the method ---------------------------------------------------- */

static void cpu_noise_inject(ncsn_backend *be, float *x_noisy, const float *x, const float *z, const float *sigmas,
                             const int32_t *labels, int N, size_t per_example) {
    check_labels("noise_inject", labels, N);
#pragma omp parallel for collapse(2) schedule(static) if (parallel : N * per_example >= CPU_PARALLEL_MIN)
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
#pragma omp parallel for schedule(static) if (parallel : N * per_example >= CPU_PARALLEL_MIN)
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
#pragma omp parallel for simd schedule(static) if (parallel : n >= CPU_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++)
        ncsn_adam_element(params + i, grads[i], m + i, v + i, hp->amsgrad ? vmax + i : NULL, hp->beta1, hp->beta2,
                          hp->eps, hp->weight_decay, hp->amsgrad, s.step_size, s.sqrt_bias_correction2);
}

static void cpu_ema_update(ncsn_backend *be, float *shadow, const float *params, size_t n, float mu) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= CPU_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) shadow[i] = ncsn_ema_element(shadow[i], params[i], mu);
}

/* x <- x + a s + noise_scale z, z keyed by (seed, LANGEVIN, example_offset + n, step, i):
 * the one loop behind langevin_step and langevin_step_chain. */
static void langevin_update(float *x, const float *score, int N, size_t per_example, float a, float noise_scale,
                            uint64_t seed, uint32_t example_offset, uint32_t step) {
#pragma omp parallel for collapse(2) schedule(static) if (parallel : N * per_example >= CPU_PARALLEL_MIN_RNG)
    for (int n = 0; n < N; n++)
        for (size_t i = 0; i < per_example; i++) {
            size_t j = (size_t)n * per_example + i;
            float z = ncsn_rng_normal(seed, NCSN_RNG_LANGEVIN, example_offset + (uint32_t)n, step, i);
            x[j] = ncsn_langevin_element(x[j], score[j], z, a, noise_scale);
        }
}

static void cpu_langevin_step(ncsn_backend *be, float *x, const float *score, int N, size_t per_example, float a,
                              uint64_t seed, uint32_t example_offset, uint32_t step) {
    NCSN_CHECKF(a >= 0.0f, "langevin_step: negative step size %g", (double)a);
    langevin_update(x, score, N, per_example, a, sqrtf(2.0f * a), seed, example_offset, step);
}

/* The chain's level at its current step, checked: an out-of-range level is a sampler bug. */
static int chain_level(const char *op, const uint32_t *state, uint32_t steps_per_level, int L) {
    NCSN_CHECKF(state && steps_per_level > 0 && L > 0, "%s: state %p, steps_per_level %u, L %d", op,
                (const void *)state, steps_per_level, L);
    uint32_t level = state[NCSN_CHAIN_STEP] / steps_per_level;
    NCSN_CHECKF(level < (uint32_t)L, "%s: step %u is level %u of a %d-level chain", op, state[NCSN_CHAIN_STEP], level,
                L);
    return (int)level;
}

static void cpu_langevin_step_chain(ncsn_backend *be, float *x, const float *score, int N, size_t per_example,
                                    const float *schedule, int L, const uint32_t *state, uint32_t steps_per_level,
                                    uint64_t seed) {
    int level = chain_level("langevin_step_chain", state, steps_per_level, L);
    langevin_update(x, score, N, per_example, schedule[2 * level], schedule[2 * level + 1], seed,
                    state[NCSN_CHAIN_FIRST_INDEX], state[NCSN_CHAIN_STEP]);
}

static void cpu_chain_labels(ncsn_backend *be, int32_t *labels, int N, const int32_t *level_labels, int L,
                             const uint32_t *state, uint32_t steps_per_level) {
    int32_t label = level_labels[chain_level("chain_labels", state, steps_per_level, L)];
    for (int n = 0; n < N; n++) labels[n] = label;
}

static void cpu_chain_advance(ncsn_backend *be, uint32_t *state) { state[NCSN_CHAIN_STEP]++; }

static void cpu_denoise_step(ncsn_backend *be, float *x, const float *score, size_t n, float sigma_last_sq) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= CPU_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) x[i] = ncsn_denoise_element(x[i], score[i], sigma_last_sq);
}

/* Fixed blocks summed in parallel, then the block sums in order: the result is the same
 * bit for bit for any thread count (an OpenMP reduction combines in arbitrary order). */
#define SUM_BLOCK 16384
static void cpu_sum_squares(ncsn_backend *be, float *out, const float *x, size_t n) {
    size_t nblocks = (n + SUM_BLOCK - 1) / SUM_BLOCK;
    double *partial = op_scratch(be, (nblocks ? nblocks : 1) * sizeof(double));
#pragma omp parallel for schedule(static) if (parallel : n >= CPU_PARALLEL_MIN)
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

static void cpu_row_sum_squares(ncsn_backend *be, float *out, const float *x, int N, size_t per_example) {
    NCSN_CHECKF(N >= 0 && out && (N == 0 || x), "row_sum_squares: N=%d, out %p, x %p", N, (void *)out,
                (const void *)x);
#pragma omp parallel for schedule(static) if (parallel : N * per_example >= CPU_PARALLEL_MIN)
    for (int n = 0; n < N; n++) {
        const float *row = x + (size_t)n * per_example;
        double sum = 0.0;
        for (size_t i = 0; i < per_example; i++) sum += (double)row[i] * row[i];
        out[n] = (float)sum;
    }
}

static void cpu_pc_step_size(ncsn_backend *be, float *out, const float *norms2, int N, double snr) {
    NCSN_CHECKF(N >= 1 && out && norms2 && snr > 0.0, "pc_step_size: N=%d, snr %g", N, snr);
    float a = ncsn_pc_corrector_step_size(norms2, N, snr);
    out[0] = a;
    out[1] = sqrtf(2.0f * a);
}

static void cpu_clip_by_norm(ncsn_backend *be, float *g, size_t n, const float *norm2, float max_norm) {
    NCSN_CHECKF(norm2 && max_norm > 0.0f, "clip_by_norm: norm2 %p, max_norm %g", (const void *)norm2,
                (double)max_norm);
    const float coef = ncsn_clip_coef(*norm2, max_norm);
    if (coef == 1.0f) return; /* multiplying by 1 changes nothing */
#pragma omp parallel for simd schedule(static) if (parallel : n >= CPU_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) g[i] *= coef;
}

/* ---- bf16 NHWC inference -----------------------------------------------------------------
 * The forward ops above on bf16 activations in NHWC order (backend.h): each reads bf16,
 * computes in fp32 with the formula and summation order of its fp32 NCHW sibling (so on
 * the same values it gives the sibling's fp32 result, bit for bit, except where noted) and
 * rounds once with ncsn_bf16_from_float. In NHWC the C channels of a pixel are adjacent, so
 * the loops are parallel over pixel rows (n, y) and vectorise over the channels (64..256
 * in the networks' hidden layers; the image-sized ends, C = 1 or 3, are a small share of a
 * step). The convolution and the weight packing are in cpu_conv.c. */

static inline float bf16_get(ncsn_bf16 h) { return ncsn_float_from_bf16(h); }
static inline ncsn_bf16 bf16_put(float f) { return ncsn_bf16_from_float(f); }

/* IN++ on [N, H, W, C]. The statistics are those of in_plane_stats: per channel, double
 * sums of x - x0 and (x - x0)^2 with x0 the plane's first element (pixel (0, 0)), then
 * in_stats_from_shifted_sums and in_channel_stats. Only the order of the double sums
 * differs (here: along each row, then the rows in order; there: vector lanes over the
 * plane), a difference of ~2^-53 relative that reaches the fp32 mean and rstd only when it
 * straddles a float rounding boundary (then by 1 fp32 ulp). The per-row partial sums make
 * the result independent of the thread count; with fewer examples than threads (sampling
 * one image) the rows still split over all threads. */
static void cpu_instance_norm_plus_forward_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *x,
                                                const float *gamma, const float *alpha, const float *beta,
                                                int param_stride, const int32_t *labels, float *stats, int N, int C,
                                                int H, int W, int elu) {
    const char *op = "instance_norm_plus_forward_bf16";
    check_nchw(op, N, C, H, W);
    if (labels) check_labels(op, labels, N);
    NCSN_CHECKF(labels || param_stride == 0, "%s: stride %d without labels", op, param_stride);
    NCSN_CHECKF(out && x && gamma && alpha && beta && stats, "%s: NULL pointer", op);
    const size_t P = (size_t)H * W, NC = (size_t)N * C, rows = (size_t)N * H, row_len = (size_t)W * C;
    float *mean = stats, *rstd = stats + NC, *mhat = stats + 2 * NC, *chan_rstd = stats + 3 * NC;
    /* op_buf: per row, sum[C] | sq[C]; per example, the shifts x0[C] */
    double *row_sums = op_scratch(be, (2 * rows + (size_t)N) * (size_t)C * sizeof(double));
    double *shift = row_sums + 2 * rows * C;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) shift[(size_t)n * C + c] = bf16_get(x[(size_t)n * P * C + c]);
#pragma omp parallel if (parallel : NC * P >= CPU_PARALLEL_MIN)
    {
#pragma omp for schedule(static)
        for (size_t r = 0; r < rows; r++) {
            const ncsn_bf16 *xr = x + r * row_len;
            const double *x0 = shift + r / H * C;
            double *sum = row_sums + 2 * r * C, *sq = sum + C;
            for (int c = 0; c < C; c++) sum[c] = sq[c] = 0.0;
            for (int w = 0; w < W; w++) {
                const ncsn_bf16 *px = xr + (size_t)w * C;
#pragma omp simd
                for (int c = 0; c < C; c++) {
                    const double t = (double)bf16_get(px[c]) - x0[c];
                    sum[c] += t;
                    sq[c] += t * t;
                }
            }
        }
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            for (int c = 0; c < C; c++) {
                double sum = 0.0, sq = 0.0;
                for (int y = 0; y < H; y++) {
                    const double *rs = row_sums + 2 * ((size_t)n * H + y) * C;
                    sum += rs[c];
                    sq += rs[C + c];
                }
                const size_t nc = (size_t)n * C + c;
                in_stats_from_shifted_sums(shift[nc], sum, sq, P, &mean[nc], &rstd[nc]);
            }
            in_channel_stats(mean + (size_t)n * C, C, mhat + (size_t)n * C, &chan_rstd[n]);
        }
#pragma omp for schedule(static)
        for (size_t r = 0; r < rows; r++) {
            const int n = (int)(r / H);
            const size_t row = param_row(labels, n, param_stride), base = (size_t)n * C;
            const float *g = gamma + row, *al = alpha + row, *b = beta + row;
            const float *mu = mean + base, *rs = rstd + base, *mh = mhat + base;
            const ncsn_bf16 *xr = x + r * row_len;
            ncsn_bf16 *orow = out + r * row_len;
            for (int w = 0; w < W; w++) {
                const ncsn_bf16 *px = xr + (size_t)w * C;
                ncsn_bf16 *po = orow + (size_t)w * C;
                /* Two loops, so each vectorises without a per-element branch on the flag. */
                if (elu) {
#pragma omp simd
                    for (int c = 0; c < C; c++)
                        po[c] = bf16_put(cpu_elu(ncsn_in_plus_element(bf16_get(px[c]), mu[c], rs[c], mh[c], g[c],
                                                                      al[c], b[c])));
                } else {
#pragma omp simd
                    for (int c = 0; c < C; c++)
                        po[c] = bf16_put(
                            ncsn_in_plus_element(bf16_get(px[c]), mu[c], rs[c], mh[c], g[c], al[c], b[c]));
                }
            }
        }
    }
}

static void cpu_elu_forward_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *x, size_t n) {
    NCSN_CHECKF(n == 0 || (out && x), "elu_forward_bf16: out %p, x %p", (void *)out, (const void *)x);
#pragma omp parallel for simd schedule(static) if (parallel : n >= CPU_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) out[i] = bf16_put(cpu_elu(bf16_get(x[i])));
}

static void cpu_add_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *a, const ncsn_bf16 *b, size_t n) {
    NCSN_CHECKF(n == 0 || (out && a && b), "add_bf16: out %p, a %p, b %p", (void *)out, (const void *)a,
                (const void *)b);
#pragma omp parallel for simd schedule(static) if (parallel : n >= CPU_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) out[i] = bf16_put(bf16_get(a[i]) + bf16_get(b[i]));
}

static void cpu_accumulate_bf16(ncsn_backend *be, ncsn_bf16 *y, const ncsn_bf16 *x, size_t n) {
    NCSN_CHECKF(n == 0 || (y && x), "accumulate_bf16: y %p, x %p", (void *)y, (const void *)x);
#pragma omp parallel for simd schedule(static) if (parallel : n >= CPU_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) y[i] = bf16_put(bf16_get(y[i]) + bf16_get(x[i]));
}

/* mean_pool2_forward's order, ((x[0,0] + x[1,0]) + x[0,1]) + x[1,1], then / 4. */
static void cpu_mean_pool2_forward_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C, int H,
                                        int W) {
    check_nchw("mean_pool2_forward_bf16", N, C, H, W);
    NCSN_CHECKF(H % 2 == 0 && W % 2 == 0, "mean_pool2_forward_bf16: H=%d W=%d must be even", H, W);
    const int Ho = H / 2, Wo = W / 2;
    const size_t rows = (size_t)N * Ho, in_row = (size_t)W * C;
#pragma omp parallel for schedule(static) if (parallel : (size_t)N * C * H * W >= CPU_PARALLEL_MIN)
    for (size_t r = 0; r < rows; r++) {
        const ncsn_bf16 *top = in + (r / Ho * H + 2 * (r % Ho)) * in_row, *bottom = top + in_row;
        ncsn_bf16 *orow = out + r * (size_t)Wo * C;
        for (int x = 0; x < Wo; x++) {
            const ncsn_bf16 *t0 = top + (size_t)2 * x * C, *t1 = t0 + C, *b0 = bottom + (size_t)2 * x * C, *b1 = b0 + C;
            ncsn_bf16 *po = orow + (size_t)x * C;
#pragma omp simd
            for (int c = 0; c < C; c++)
                po[c] = bf16_put((((bf16_get(t0[c]) + bf16_get(b0[c])) + bf16_get(t1[c])) + bf16_get(b1[c])) / 4.0f);
        }
    }
}

/* The 5x5 pools, separably as their fp32 siblings: a 5-tap pass along W into fp32 row
 * results (rows of the whole batch, in op_buf), then a 5-tap pass along H over those. A
 * tap outside the image reads a row of the pad value (0 for the count_include_pad sum,
 * -inf for the max), as the fp32 ops' padded planes do, so the bodies have no border case
 * and the sums are the fp32 ops' sums, term for term.
 * The max is max_pool5_forward's, its reference path included: the first NaN of the window
 * in row-major order if it holds one, else the maximum. Taken tap by tap, a NaN wins at
 * once and is then kept; separably, each row's first NaN and then the topmost row's is the
 * window's first NaN. That rule costs several times the plain strict `>` in the vector
 * loops, so it runs only on rows that hold a NaN (or, in the H pass, draw from one). */
typedef enum { POOL5_AVG = 0, POOL5_MAX = 1, POOL5_MAX_NAN = 2 } pool5_kind;

static inline float max_step(float m, float v) { return v > m ? v : m; }
static inline float max_step_nan(float m, float v) { return m != m ? m : (v > m || v != v ? v : m); }

static int bf16_holds_nan(const ncsn_bf16 *x, size_t n) {
    int any = 0;
#pragma omp simd reduction(| : any)
    for (size_t i = 0; i < n; i++) any |= (x[i] & 0x7fffu) > 0x7f80u;
    return any;
}

/* W pass, one pixel: o[c] = the taps t0..t4 (bf16, left to right) combined. */
static inline void pool5_taps_w(float *o, const ncsn_bf16 *t0, const ncsn_bf16 *t1, const ncsn_bf16 *t2,
                                const ncsn_bf16 *t3, const ncsn_bf16 *t4, int C, pool5_kind kind) {
    if (kind == POOL5_AVG) {
#pragma omp simd
        for (int c = 0; c < C; c++)
            o[c] = (((bf16_get(t0[c]) + bf16_get(t1[c])) + bf16_get(t2[c])) + bf16_get(t3[c])) + bf16_get(t4[c]);
    } else if (kind == POOL5_MAX) {
#pragma omp simd
        for (int c = 0; c < C; c++)
            o[c] = max_step(max_step(max_step(max_step(bf16_get(t0[c]), bf16_get(t1[c])), bf16_get(t2[c])),
                                     bf16_get(t3[c])),
                            bf16_get(t4[c]));
    } else {
#pragma omp simd
        for (int c = 0; c < C; c++)
            o[c] = max_step_nan(max_step_nan(max_step_nan(max_step_nan(bf16_get(t0[c]), bf16_get(t1[c])),
                                                          bf16_get(t2[c])),
                                             bf16_get(t3[c])),
                                bf16_get(t4[c]));
    }
}

/* H pass, one output row of n = W * C: the row results t0..t4 (top to bottom) combined,
 * / 25 for the mean, rounded. */
static inline void pool5_taps_h(ncsn_bf16 *o, const float *t0, const float *t1, const float *t2, const float *t3,
                                const float *t4, size_t n, pool5_kind kind) {
    if (kind == POOL5_AVG) {
#pragma omp simd
        for (size_t i = 0; i < n; i++) o[i] = bf16_put(((((t0[i] + t1[i]) + t2[i]) + t3[i]) + t4[i]) / 25.0f);
    } else if (kind == POOL5_MAX) {
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            o[i] = bf16_put(max_step(max_step(max_step(max_step(t0[i], t1[i]), t2[i]), t3[i]), t4[i]));
    } else {
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            o[i] = bf16_put(max_step_nan(max_step_nan(max_step_nan(max_step_nan(t0[i], t1[i]), t2[i]), t3[i]), t4[i]));
    }
}

/* The pad rows a pass reads where a tap is outside the image. */
typedef struct {
    const float *row;    /* W * C floats: the H pass */
    const ncsn_bf16 *px; /* C bf16: the W pass */
} pool5_pads;

/* W pass of image row xr into rowres (W * C floats); returns whether the row holds a NaN
 * (always 0 for the mean). */
static int pool5_w_pass(float *rowres, const ncsn_bf16 *xr, int C, int W, const pool5_pads *pad, pool5_kind kind) {
    const int nan = kind == POOL5_MAX && bf16_holds_nan(xr, (size_t)W * C);
    for (int x = 0; x < W; x++) {
        const ncsn_bf16 *t0 = x >= 2 ? xr + (size_t)(x - 2) * C : pad->px;
        const ncsn_bf16 *t1 = x >= 1 ? xr + (size_t)(x - 1) * C : pad->px;
        const ncsn_bf16 *t3 = x + 1 < W ? xr + (size_t)(x + 1) * C : pad->px;
        const ncsn_bf16 *t4 = x + 2 < W ? xr + (size_t)(x + 2) * C : pad->px;
        pool5_taps_w(rowres + (size_t)x * C, t0, t1, xr + (size_t)x * C, t3, t4, C, nan ? POOL5_MAX_NAN : kind);
    }
    return nan;
}

/* H pass of output row y of one image, from the image's H row results and NaN flags. */
static void pool5_h_pass(ncsn_bf16 *orow, const float *rowres, const int *row_nan, int y, int H, size_t row_len,
                         const pool5_pads *pad, pool5_kind kind) {
    int nan = 0;
    for (int k = y - 2; k <= y + 2; k++) nan |= k >= 0 && k < H && row_nan[k];
    const float *t0 = y >= 2 ? rowres + (size_t)(y - 2) * row_len : pad->row;
    const float *t1 = y >= 1 ? rowres + (size_t)(y - 1) * row_len : pad->row;
    const float *t3 = y + 1 < H ? rowres + (size_t)(y + 1) * row_len : pad->row;
    const float *t4 = y + 2 < H ? rowres + (size_t)(y + 2) * row_len : pad->row;
    pool5_taps_h(orow, t0, t1, rowres + (size_t)y * row_len, t3, t4, row_len, nan ? POOL5_MAX_NAN : kind);
}

/* Work split as IN++'s: with at least as many examples as threads, each thread pools whole
 * images through its own slice of op_buf (one image's row results, L2-sized), with no
 * barrier; with fewer (sampling one image), the rows of the batch split over all threads
 * in two work-shared passes through row results for the whole (small) batch. */
static void pool5_forward_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C, int H, int W,
                               pool5_kind kind) {
    const size_t rows = (size_t)N * H, row_len = (size_t)W * C, image = (size_t)H * row_len;
    const int per_image = N >= omp_get_max_threads();
    /* op_buf: the pad row (W * C floats) | the pad pixel (C bf16, in C floats) | then either
     * per-thread slices of one image (row results | row NaN flags), or the whole batch's
     * row results | row NaN flags */
    const size_t head = (row_len + (size_t)C) * sizeof(float);
    const size_t results = (per_image ? (size_t)H : rows) * (row_len + 1); /* floats, + one int per row */
    thread_slices slices;
    float *pad_row = per_image ? op_scratch_with_slices(be, head, results, &slices)
                               : op_scratch(be, head + results * sizeof(float));
    const pool5_pads pad = {.row = pad_row, .px = (const ncsn_bf16 *)(pad_row + row_len)};
    const float pad_value = kind == POOL5_MAX ? -INFINITY : 0.0f;
    for (size_t i = 0; i < row_len; i++) pad_row[i] = pad_value;
    for (int c = 0; c < C; c++) ((ncsn_bf16 *)pad.px)[c] = bf16_put(pad_value);
    const int parallel = rows * row_len >= CPU_PARALLEL_MIN;
    if (per_image) {
#pragma omp parallel if (parallel : parallel)
        {
            float *rowres = my_slice(&slices);
            int *row_nan = (int *)(rowres + (size_t)H * row_len);
#pragma omp for schedule(static)
            for (int n = 0; n < N; n++) {
                const ncsn_bf16 *xi = in + (size_t)n * image;
                for (int y = 0; y < H; y++)
                    row_nan[y] = pool5_w_pass(rowres + (size_t)y * row_len, xi + (size_t)y * row_len, C, W, &pad, kind);
                for (int y = 0; y < H; y++)
                    pool5_h_pass(out + (size_t)n * image + (size_t)y * row_len, rowres, row_nan, y, H, row_len, &pad,
                                 kind);
            }
        }
        return;
    }
    float *rowres = pad_row + row_len + C;
    int *row_nan = (int *)(rowres + rows * row_len);
#pragma omp parallel if (parallel : parallel)
    {
#pragma omp for schedule(static)
        for (size_t r = 0; r < rows; r++)
            row_nan[r] = pool5_w_pass(rowres + r * row_len, in + r * row_len, C, W, &pad, kind);
#pragma omp for schedule(static)
        for (size_t r = 0; r < rows; r++) {
            const size_t n = r / H;
            pool5_h_pass(out + r * row_len, rowres + n * image, row_nan + n * H, (int)(r % H), H, row_len, &pad, kind);
        }
    }
}

static void cpu_avg_pool5_forward_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C, int H,
                                       int W) {
    check_nchw("avg_pool5_forward_bf16", N, C, H, W);
    pool5_forward_bf16(be, out, in, N, C, H, W, POOL5_AVG);
}

static void cpu_max_pool5_forward_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C, int H,
                                       int W) {
    check_nchw("max_pool5_forward_bf16", N, C, H, W);
    pool5_forward_bf16(be, out, in, N, C, H, W, POOL5_MAX);
}

/* resize_bilinear_forward's taps and expression, per pixel over its channels. */
static void cpu_resize_bilinear_forward_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C,
                                             int H, int W, int Ho, int Wo) {
    bilinear_tap *ty = bilinear_plan(be, "resize_bilinear_forward_bf16", N, C, H, W, Ho, Wo), *tx = ty + Ho;
    const size_t rows = (size_t)N * Ho, in_row = (size_t)W * C;
#pragma omp parallel for schedule(static) if (parallel : rows * Wo * C >= CPU_PARALLEL_MIN)
    for (size_t r = 0; r < rows; r++) {
        const size_t image = r / Ho * H;
        const bilinear_tap vy = ty[r % Ho];
        const ncsn_bf16 *r0 = in + (image + vy.i0) * in_row, *r1 = in + (image + vy.i1) * in_row;
        ncsn_bf16 *orow = out + r * (size_t)Wo * C;
        for (int x = 0; x < Wo; x++) {
            const bilinear_tap vx = tx[x];
            const ncsn_bf16 *a0 = r0 + (size_t)vx.i0 * C, *a1 = r0 + (size_t)vx.i1 * C;
            const ncsn_bf16 *b0 = r1 + (size_t)vx.i0 * C, *b1 = r1 + (size_t)vx.i1 * C;
            ncsn_bf16 *po = orow + (size_t)x * C;
#pragma omp simd
            for (int c = 0; c < C; c++)
                po[c] = bf16_put(vy.l0 * (vx.l0 * bf16_get(a0[c]) + vx.l1 * bf16_get(a1[c])) +
                                 vy.l1 * (vx.l0 * bf16_get(b0[c]) + vx.l1 * bf16_get(b1[c])));
        }
    }
}

/* The network input: scale_shift's x * scale + shift, NCHW -> NHWC. C is the image's 1 or
 * 3 channels here, so the loops run along W (contiguous reads) with writes C apart. */
static void cpu_bf16_from_nchw(ncsn_backend *be, ncsn_bf16 *out, const float *x, float scale, float shift, int N,
                               int C, int H, int W) {
    check_nchw("bf16_from_nchw", N, C, H, W);
    NCSN_CHECKF(out && x, "bf16_from_nchw: out %p, x %p", (void *)out, (const void *)x);
    const size_t rows = (size_t)N * H;
#pragma omp parallel for schedule(static) if (parallel : rows * W * C >= CPU_PARALLEL_MIN)
    for (size_t r = 0; r < rows; r++) {
        const size_t n = r / H, y = r % H;
        ncsn_bf16 *orow = out + r * (size_t)W * C;
        for (int c = 0; c < C; c++) {
            const float *xr = x + ((n * C + c) * H + y) * W;
            for (int w = 0; w < W; w++) orow[(size_t)w * C + c] = bf16_put(xr[w] * scale + shift);
        }
    }
}

/* The network output: NHWC -> NCHW fp32, divided by sigma as divide_by_sigma does, or an
 * exact copy. */
static void cpu_nchw_from_bf16(ncsn_backend *be, float *out, const ncsn_bf16 *x, const float *sigmas,
                               const int32_t *labels, int N, int C, int H, int W) {
    check_nchw("nchw_from_bf16", N, C, H, W);
    NCSN_CHECKF(out && x, "nchw_from_bf16: out %p, x %p", (void *)out, (const void *)x);
    if (sigmas) check_labels("nchw_from_bf16", labels, N);
    const size_t rows = (size_t)N * H;
#pragma omp parallel for schedule(static) if (parallel : rows * W * C >= CPU_PARALLEL_MIN)
    for (size_t r = 0; r < rows; r++) {
        const size_t n = r / H, y = r % H;
        const ncsn_bf16 *xr = x + r * (size_t)W * C;
        for (int c = 0; c < C; c++) {
            float *orow = out + ((n * C + c) * H + y) * W;
            if (sigmas) {
                const float sigma = sigmas[labels[n]];
                for (int w = 0; w < W; w++) orow[w] = bf16_get(xr[(size_t)w * C + c]) / sigma;
            } else {
                for (int w = 0; w < W; w++) orow[w] = bf16_get(xr[(size_t)w * C + c]);
            }
        }
    }
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
    .copy_columns = cpu_copy_columns,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_host_free,
    .fence_create = cpu_fence_create,
    .fence_record = cpu_fence_record,
    .fence_wait = cpu_fence_wait,
    .fence_destroy = cpu_fence_destroy,
    .graph_begin = cpu_graph_begin,
    .graph_end = cpu_graph_end,
    .graph_launch = cpu_graph_launch,
    .graph_destroy = cpu_graph_destroy,
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
    .logit = cpu_logit,
    .label_bias_forward = cpu_label_bias_forward,
    .label_bias_backward_accumulate = cpu_label_bias_backward_accumulate,
    .fill_normal = cpu_fill_normal,
    .fill_uniform = cpu_fill_uniform,
    .noise_inject = cpu_noise_inject,
    .dsm_loss = cpu_dsm_loss,
    .adam_step = cpu_adam_step,
    .ema_update = cpu_ema_update,
    .langevin_step = cpu_langevin_step,
    .langevin_step_chain = cpu_langevin_step_chain,
    .chain_labels = cpu_chain_labels,
    .chain_advance = cpu_chain_advance,
    .denoise_step = cpu_denoise_step,
    .gemm_nt = cpu_gemm_nt,
    .sum_squares = cpu_sum_squares,
    .clip_by_norm = cpu_clip_by_norm,
    .row_sum_squares = cpu_row_sum_squares,
    .pc_step_size = cpu_pc_step_size,
    .conv2d_packed_weights_bytes = cpu_conv2d_packed_weights_bytes,
    .conv2d_pack_weights_bf16 = cpu_conv2d_pack_weights_bf16,
    .conv2d_forward_bf16 = cpu_conv2d_forward_bf16,
    .instance_norm_plus_forward_bf16 = cpu_instance_norm_plus_forward_bf16,
    .elu_forward_bf16 = cpu_elu_forward_bf16,
    .add_bf16 = cpu_add_bf16,
    .accumulate_bf16 = cpu_accumulate_bf16,
    .mean_pool2_forward_bf16 = cpu_mean_pool2_forward_bf16,
    .avg_pool5_forward_bf16 = cpu_avg_pool5_forward_bf16,
    .max_pool5_forward_bf16 = cpu_max_pool5_forward_bf16,
    .resize_bilinear_forward_bf16 = cpu_resize_bilinear_forward_bf16,
    .bf16_from_nchw = cpu_bf16_from_nchw,
    .nchw_from_bf16 = cpu_nchw_from_bf16,
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
        cpu_scratch_release(&impl->epilogue_buf);
        free(impl);
    }
    free(be);
}
