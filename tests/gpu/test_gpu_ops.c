/* test_gpu_ops.c: every op of the CUDA backend against the CPU backend (ggml's
 * test-backend-ops idea), on random inputs in several shapes: the CIFAR-10 NCSNv2 layer
 * shapes, MNIST-size ones, and odd ones (sizes that divide nothing, a single channel, a
 * plane smaller than the pooling window, pointers only 4-byte aligned).
 *
 * The CPU backend is itself tested against float64 references and finite differences
 * (tests/test_*.c), so agreement here means the GPU computes the same functions.
 *
 * Tolerances (|gpu - cpu| <= atol + rtol |cpu| + stol max|cpu|, per element), and why:
 *   exact    copies, RNG uniforms (integer arithmetic), pooling selections, the official
 *            mean-pool order: both backends perform identical float operations.
 *   ulp      elementwise float math: nvcc contracts a*b+c into one FMA, the CPU build
 *            (-std=c11) does not, and CUDA's expm1f/sqrtf may differ by 1 ulp from
 *            glibc; a few ulp of the result or of the largest term: rtol = stol = 1e-6.
 *   normal   Box-Muller in float64 on both, rounded to float: atol 1e-6 (|z| < 6, so
 *            about 2 float ulp) covers a last-bit difference of device log/sin/cos.
 *   reduce   sums carried in double on both sides, rounded once: rtol 1e-6, stol 1e-6.
 *   in++     InstanceNorm++: double statistics on both sides, float application; the
 *            backward mixes float (GPU) and double (CPU) intermediates: 1e-5 of max|cpu|.
 *   conv     strict fp32 (no TF32): cuDNN and oneDNN sum the Cin*k*k (or N*H*W) products
 *            in different orders and may use Winograd transforms; the error is a small
 *            multiple of eps * sqrt(terms) * max|term|: 1e-4 of max|cpu| (and of |cpu|).
 *   tf32     one shape with TF32 allowed: inputs rounded to 10 mantissa bits (2^-11
 *            relative each), fp32 accumulation: 5e-3 of max|cpu|.
 *   gemm     fp32 sgemm, K up to 3072, different blocking: 2e-5 of max|cpu|.
 *
 * bf16 NHWC inference ops (outputs compared as values, |gpu - cpu| <= ulps * ulp(cpu) +
 * stol * max|cpu|, ulp(v) = the bf16 spacing at |v|, 2^-7..2^-8 of |v|; +0 equals -0). Both
 * backends read the same bf16 inputs and compute each op in fp32 with the same formula, so:
 *   exact    add, accumulate, the pools, 2x - 1 (every fp32 operation identical on both;
 *            max pool returns an input element).
 *   1ulp     ELU (CUDA's expm1f vs the CPU's vectorised expm1: fp32 results a few ulp
 *            apart, which round to the same or to adjacent bf16 values) and a general
 *            scale/shift (nvcc fuses x * scale + shift into one FMA, the C build does not).
 *   resize   1 ulp, plus 1e-6 of max|cpu| for results near zero: the FMA difference is
 *            relative to the terms, not to a result that cancels them.
 *   in++     the fp32 op's 1e-5 of max|cpu|, plus 1 ulp for the final rounding landing on
 *            the other side of a bf16 rounding boundary; the fp32 statistics as `in++`.
 *   conv     bf16 products are exact in fp32 on both sides; only the order of the fp32
 *            accumulation differs (cuDNN vs oneDNN): the fp32 conv tolerance (1e-4 of
 *            max|cpu|) plus 1 ulp for the output rounding.
 *
 * Without a usable GPU this prints "test-gpu: skipped: <reason>" and exits 0. Setting
 * NCSN_TEST_GPU_CPU_PAIR=1 runs the whole comparison with a second CPU backend in place
 * of the GPU, which checks this test itself on a machine without one.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/rng_math.h"
#include "ncsn/backend.h"
#include "tests/harness.h"
#include "tests/gpu/gpu_pair.h"

/* ---- the two backends and paired buffers ---- */

static ncsn_backend *cpu, *gpu;

typedef struct {
    float *c, *g; /* the same tensor on the CPU and on the GPU backend */
    size_t n;
} pair;

typedef struct {
    int32_t *c, *g;
    int n;
} label_pair;

/* Deterministic test data from the engine's own counter RNG: uniform in [lo, hi). */
static void random_host(float *h, size_t n, uint32_t tag, float lo, float hi) {
    for (size_t i = 0; i < n; i++) h[i] = lo + (hi - lo) * ncsn_rng_uniform(20240611u, NCSN_RNG_TOY, tag, 0, i);
}

typedef struct {
    void *c, *g;
} raw_pair;

/* `bytes` on each backend, copied from the host buffer h, or zero-filled when h is NULL. */
static raw_pair pair_alloc(const void *h, size_t bytes) {
    raw_pair r = {ncsn_alloc(cpu, bytes), ncsn_alloc(gpu, bytes)};
    if (h) {
        ncsn_copy_to_device(cpu, r.c, h, bytes);
        ncsn_copy_to_device(gpu, r.g, h, bytes);
    }
    return r;
}

static pair pair_from_host(const float *h, size_t n) {
    raw_pair r = pair_alloc(h, n * sizeof(float));
    pair p = {r.c, r.g, n};
    return p;
}

static pair pair_random(size_t n, uint32_t tag, float lo, float hi) {
    float *h = ncsn_xmalloc(n * sizeof(float));
    random_host(h, n, tag, lo, hi);
    pair p = pair_from_host(h, n);
    free(h);
    return p;
}

static pair pair_zero(size_t n) { return pair_from_host(NULL, n); }

static void pair_free(pair *p) {
    ncsn_free(cpu, p->c);
    ncsn_free(gpu, p->g);
    p->c = p->g = NULL;
}

static label_pair labels_from_host(const int32_t *h, int n) {
    raw_pair r = pair_alloc(h, (size_t)n * sizeof(int32_t));
    label_pair p = {r.c, r.g, n};
    return p;
}

static void labels_free(label_pair *p) {
    ncsn_free(cpu, p->c);
    ncsn_free(gpu, p->g);
}

/* ---- comparison and the report ---- */

typedef struct {
    const char *name;
    double atol, rtol, stol;
    int bf16_ulps; /* bf16 tensors: also this many bf16 ulps of |cpu| (bf16_ulp) */
} tolerance;

static const tolerance TOL_EXACT = {"exact", 0, 0, 0, 0};
static const tolerance TOL_ULP = {"ulp", 0, 1e-6, 1e-6, 0};
static const tolerance TOL_NORMAL = {"normal", 1e-6, 0, 0, 0};
static const tolerance TOL_REDUCE = {"reduce", 0, 1e-6, 1e-6, 0};
static const tolerance TOL_IN_PLUS = {"in++", 0, 1e-5, 1e-5, 0};
static const tolerance TOL_CONV = {"conv", 0, 1e-4, 1e-4, 0};
static const tolerance TOL_TF32 = {"tf32", 0, 5e-3, 5e-3, 0};
static const tolerance TOL_GEMM = {"gemm", 0, 2e-5, 2e-5, 0};
/* bf16 NHWC ops (see the file comment) */
static const tolerance TOL_BF16_ULP = {"1ulp", 0, 0, 0, 1};
static const tolerance TOL_BF16_RESIZE = {"resize", 0, 0, 1e-6, 1};
static const tolerance TOL_BF16_IN_PLUS = {"in++", 0, 0, 1e-5, 1};
static const tolerance TOL_BF16_CONV = {"conv", 0, 0, 1e-4, 1};

/* The spacing of bf16 values at |v| (8 significant bits): 2^(e - 8) for |v| in [2^(e-1), 2^e). */
static double bf16_ulp(double v) {
    int e;
    if (v == 0.0 || !isfinite(v)) return 0.0;
    frexp(v, &e);
    return ldexp(1.0, e - 8);
}

/* Compares host copies hg (GPU) and hc (CPU) of one tensor as values (+0 == -0, equal
 * infinities agree, a NaN matches only a NaN), prints one report line (for bf16 tensors
 * with the largest difference in bf16 ulps), and for a failure the first differing values. */
static int compare_host(const char *op, const char *shape, const float *hc, const float *hg, size_t n, tolerance tol,
                        int bf16) {
    double scale = 0.0, max_err = 0.0, max_ulps = 0.0;
    for (size_t i = 0; i < n; i++)
        if (fabs((double)hc[i]) > scale && isfinite(hc[i])) scale = fabs((double)hc[i]);
    size_t bad = 0, first_bad[5];
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)hg[i] - (double)hc[i]), ulp = bf16_ulp(hc[i]);
        int ok = hg[i] == hc[i] ||
                 err <= tol.atol + tol.rtol * fabs((double)hc[i]) + tol.stol * scale + tol.bf16_ulps * ulp;
        if (isnan(hc[i]) || isnan(hg[i])) ok = isnan(hc[i]) && isnan(hg[i]);
        if (hg[i] == hc[i]) err = 0.0; /* equal infinities */
        if (!ok) {
            if (bad < 5) first_bad[bad] = i;
            bad++;
            if (!(err > 0.0)) err = INFINITY; /* a NaN or infinity mismatch */
        }
        if (err > max_err) max_err = err;
        if (ok && ulp > 0.0 && err / ulp > max_ulps) max_ulps = err / ulp;
    }
    harness_checks++;
    if (bad) harness_failures++;
    char ulps[32] = "";
    if (bf16) snprintf(ulps, sizeof ulps, " (max %.2g ulp)", max_ulps);
    printf("%-38s %-28s %10.3e %10.3e  %-7s %s%s\n", op, shape, max_err, scale > 0 ? max_err / scale : max_err,
           tol.name, bad ? "FAIL" : "PASS", ulps);
    for (size_t k = 0; k < bad && k < 5; k++)
        printf("    [%zu] gpu %.9g cpu %.9g (err %.3g)\n", first_bad[k], hg[first_bad[k]], hc[first_bad[k]],
               fabs((double)hg[first_bad[k]] - (double)hc[first_bad[k]]));
    if (bad) printf("    %zu of %zu elements outside tolerance (max|cpu| %.3e)\n", bad, n, scale);
    return bad == 0;
}

static int compare(const char *op, const char *shape, const pair *p, tolerance tol) {
    size_t n = p->n;
    float *hc = ncsn_xmalloc(n * sizeof(float)), *hg = ncsn_xmalloc(n * sizeof(float));
    ncsn_copy_to_host(cpu, hc, p->c, n * sizeof(float));
    ncsn_copy_to_host(gpu, hg, p->g, n * sizeof(float));
    int ok = compare_host(op, shape, hc, hg, n, tol, 0);
    free(hc);
    free(hg);
    return ok;
}

/* ---- memory ---- */

static void test_memory(void) {
    const size_t n = 1000;
    pair p = pair_zero(n); /* alloc promises zero-filled memory */
    compare("alloc (zero-filled)", "1000", &p, TOL_EXACT);
    float *h = ncsn_xmalloc(n * sizeof(float));
    random_host(h, n, 1, -1.0f, 1.0f);
    ncsn_copy_to_device(cpu, p.c, h, n * sizeof(float));
    ncsn_copy_to_device(gpu, p.g, h, n * sizeof(float));
    pair q = pair_zero(n);
    ncsn_copy(cpu, q.c, p.c, n * sizeof(float));
    ncsn_copy(gpu, q.g, p.g, n * sizeof(float));
    ncsn_synchronize(gpu); /* not needed before copy_to_host, but every op gets called */
    float *back = ncsn_xmalloc(n * sizeof(float));
    ncsn_copy_to_host(gpu, back, q.g, n * sizeof(float));
    harness_checks++;
    int same = !memcmp(back, h, n * sizeof(float));
    if (!same) harness_failures++;
    printf("%-38s %-28s %10s %10s  %-7s %s\n", "copy_to_device/copy/copy_to_host", "1000", "-", "-", "exact",
           same ? "PASS" : "FAIL");
    ncsn_memset_zero(cpu, q.c + 10, 100 * sizeof(float));
    ncsn_memset_zero(gpu, q.g + 10, 100 * sizeof(float));
    compare("memset_zero", "1000 [10, 110)", &q, TOL_EXACT);
    free(h);
    free(back);
    pair_free(&p);
    pair_free(&q);
}

/* ---- convolutions ---- */

static void test_conv(ncsn_conv_desc d, int offset_floats) {
    char shape[96];
    snprintf(shape, sizeof shape, "%dx%dx%dx%d K%d k%d d%d%s%s", d.N, d.C, d.H, d.W, d.K, d.ksize, d.dilation,
             d.has_bias ? " b" : "", offset_floats ? " +4B" : "");
    size_t nin = (size_t)d.N * d.C * d.H * d.W, nout = (size_t)d.N * d.K * d.H * d.W;
    size_t nw = (size_t)d.K * d.C * d.ksize * d.ksize, off = (size_t)offset_floats;
    float bound = 1.0f / sqrtf((float)(d.C * d.ksize * d.ksize)); /* PyTorch's default init scale */
    /* One allocation per tensor with `off` leading floats: off = 1 leaves tensors only
     * 4-byte aligned, as inside a model's parameter buffer. */
    pair x = pair_random(nin + off, 100, -1.0f, 1.0f), w = pair_random(nw + off, 101, -bound, bound);
    pair b = pair_random(d.K + off, 102, -bound, bound), y = pair_zero(nout + off);
    ncsn_conv2d_forward(cpu, y.c + off, x.c + off, w.c + off, b.c + off, &d);
    ncsn_conv2d_forward(gpu, y.g + off, x.g + off, w.g + off, b.g + off, &d);
    compare("conv2d_forward", shape, &y, TOL_CONV);

    pair dy = pair_random(nout + off, 103, -1.0f, 1.0f), dx = pair_random(nin + off, 104, -1.0f, 1.0f);
    ncsn_conv2d_backward_data(cpu, dx.c + off, dy.c + off, w.c + off, &d, 0);
    ncsn_conv2d_backward_data(gpu, dx.g + off, dy.g + off, w.g + off, &d, 0);
    compare("conv2d_backward_data", shape, &dx, TOL_CONV);
    ncsn_conv2d_backward_data(cpu, dx.c + off, dy.c + off, w.c + off, &d, 1);
    ncsn_conv2d_backward_data(gpu, dx.g + off, dy.g + off, w.g + off, &d, 1);
    compare("conv2d_backward_data (accumulate)", shape, &dx, TOL_CONV);

    /* dw and db start non-zero: the op must add, not overwrite. */
    pair dw = pair_random(nw + off, 105, -0.5f, 0.5f), db = pair_random(d.K + off, 106, -0.5f, 0.5f);
    ncsn_conv2d_backward_weights_accumulate(cpu, dw.c + off, db.c + off, x.c + off, dy.c + off, &d);
    ncsn_conv2d_backward_weights_accumulate(gpu, dw.g + off, db.g + off, x.g + off, dy.g + off, &d);
    compare("conv2d_backward_weights (dw +=)", shape, &dw, TOL_CONV);
    if (d.has_bias) compare("conv2d_backward_weights (db +=)", shape, &db, TOL_CONV);

    pair *all[] = {&x, &w, &b, &y, &dy, &dx, &dw, &db};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(all[i]);
}

static void test_conv_tf32(ncsn_conv_desc d) {
    char shape[96];
    snprintf(shape, sizeof shape, "%dx%dx%dx%d K%d k%d d%d", d.N, d.C, d.H, d.W, d.K, d.ksize, d.dilation);
    size_t nin = (size_t)d.N * d.C * d.H * d.W, nout = (size_t)d.N * d.K * d.H * d.W;
    size_t nw = (size_t)d.K * d.C * d.ksize * d.ksize;
    float bound = 1.0f / sqrtf((float)(d.C * d.ksize * d.ksize));
    pair x = pair_random(nin, 110, -1.0f, 1.0f), w = pair_random(nw, 111, -bound, bound);
    pair b = pair_random(d.K, 112, -bound, bound), y = pair_zero(nout);
    ncsn_precision saved = gpu->precision;
    gpu->precision = NCSN_PRECISION_TF32;
    ncsn_conv2d_forward(cpu, y.c, x.c, w.c, b.c, &d);
    ncsn_conv2d_forward(gpu, y.g, x.g, w.g, b.g, &d);
    gpu->precision = saved;
    compare("conv2d_forward (TF32 allowed)", shape, &y, TOL_TF32);
    pair_free(&x);
    pair_free(&w);
    pair_free(&b);
    pair_free(&y);
}

/* ---- InstanceNorm++ ---- */

/* levels = 0: unconditional (per-channel vectors, stride 0, no labels); otherwise
 * conditional over an [levels, 3C] embedding with the given labels (repeats allowed). */
static void test_in_plus(int N, int C, int H, int W, int levels, const int32_t *label_values) {
    char shape[96];
    snprintf(shape, sizeof shape, "%dx%dx%dx%d %s", N, C, H, W, levels ? "cond" : "uncond");
    size_t n = (size_t)N * C * H * W, nstats = NCSN_NORM_STATS_COUNT(N, C);
    int stride = levels ? 3 * C : 0;
    size_t nparams = levels ? (size_t)levels * 3 * C : 3 * (size_t)C;
    /* gamma, alpha ~ 1 + small, beta small: the layout is [gamma | alpha | beta] per row
     * (conditional) or three vectors back to back (unconditional). */
    float *h = ncsn_xmalloc(nparams * sizeof(float));
    random_host(h, nparams, 200, 0.5f, 1.5f);
    for (size_t r = 0; r < (levels ? (size_t)levels : 1); r++)
        for (int c = 0; c < C; c++) h[r * 3 * C + 2 * C + c] -= 1.0f; /* beta in [-0.5, 0.5) */
    pair params = pair_from_host(h, nparams);
    free(h);
    /* Non-zero plane means so the channel-means term matters. */
    pair x = pair_random(n, 201, -1.0f, 2.0f), out = pair_zero(n), stats = pair_zero(nstats);
    label_pair labels = {NULL, NULL, 0};
    if (levels) labels = labels_from_host(label_values, N);
    const size_t alpha_off = (size_t)C, beta_off = 2 * (size_t)C; /* same offsets in both layouts */

    ncsn_instance_norm_plus_forward(cpu, out.c, x.c, params.c, params.c + alpha_off, params.c + beta_off, stride,
                                    labels.c, stats.c, N, C, H, W, 0);
    ncsn_instance_norm_plus_forward(gpu, out.g, x.g, params.g, params.g + alpha_off, params.g + beta_off, stride,
                                    labels.g, stats.g, N, C, H, W, 0);
    compare("instance_norm_plus_forward (out)", shape, &out, TOL_IN_PLUS);
    compare("instance_norm_plus_forward (stats)", shape, &stats, TOL_IN_PLUS);
    /* The fused ELU (elu = 1), into its own buffer: the backward below reads these stats. The
     * ELU's slope is at most 1, so the fp32 tolerance carries over. */
    pair out_elu = pair_zero(n), stats_elu = pair_zero(nstats);
    ncsn_instance_norm_plus_forward(cpu, out_elu.c, x.c, params.c, params.c + alpha_off, params.c + beta_off, stride,
                                    labels.c, stats_elu.c, N, C, H, W, 1);
    ncsn_instance_norm_plus_forward(gpu, out_elu.g, x.g, params.g, params.g + alpha_off, params.g + beta_off, stride,
                                    labels.g, stats_elu.g, N, C, H, W, 1);
    compare("instance_norm_plus_forward elu=1", shape, &out_elu, TOL_IN_PLUS);
    pair_free(&out_elu);
    pair_free(&stats_elu);

    pair dout = pair_random(n, 202, -1.0f, 1.0f), dx = pair_random(n, 203, -1.0f, 1.0f);
    pair dparams = pair_random(nparams, 204, -0.1f, 0.1f); /* non-zero: must accumulate */
    for (int accumulate = 0; accumulate <= 1; accumulate++) {
        ncsn_instance_norm_plus_backward(cpu, dx.c, dparams.c, dparams.c + alpha_off, dparams.c + beta_off, dout.c, x.c,
                                         params.c, params.c + alpha_off, stride, labels.c, stats.c, N, C, H, W,
                                         accumulate);
        ncsn_instance_norm_plus_backward(gpu, dx.g, dparams.g, dparams.g + alpha_off, dparams.g + beta_off, dout.g, x.g,
                                         params.g, params.g + alpha_off, stride, labels.g, stats.g, N, C, H, W,
                                         accumulate);
        compare(accumulate ? "instance_norm_plus_backward (dx +=)" : "instance_norm_plus_backward (dx)", shape, &dx,
                TOL_IN_PLUS);
        compare(accumulate ? "instance_norm_plus_backward (dp x2)" : "instance_norm_plus_backward (dparams)", shape,
                &dparams, TOL_IN_PLUS);
    }
    if (levels) labels_free(&labels);
    pair *all[] = {&params, &x, &out, &stats, &dout, &dx, &dparams};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(all[i]);
}

/* ---- activation ---- */

static void test_elu(size_t n) {
    char shape[32];
    snprintf(shape, sizeof shape, "%zu", n);
    pair x = pair_random(n, 300, -4.0f, 3.0f), out = pair_zero(n);
    ncsn_elu_forward(cpu, out.c, x.c, n);
    ncsn_elu_forward(gpu, out.g, x.g, n);
    compare("elu_forward", shape, &out, TOL_ULP);
    pair dout = pair_random(n, 301, -1.0f, 1.0f), dx = pair_zero(n);
    ncsn_elu_backward(cpu, dx.c, dout.c, out.c, n);
    ncsn_elu_backward(gpu, dx.g, dout.g, out.g, n);
    compare("elu_backward", shape, &dx, TOL_ULP);
    /* in place, as the models call it */
    ncsn_elu_forward(cpu, x.c, x.c, n);
    ncsn_elu_forward(gpu, x.g, x.g, n);
    compare("elu_forward (in place)", shape, &x, TOL_ULP);
    ncsn_elu_backward(cpu, dout.c, dout.c, x.c, n);
    ncsn_elu_backward(gpu, dout.g, dout.g, x.g, n);
    compare("elu_backward (in place)", shape, &dout, TOL_ULP);
    pair_free(&x);
    pair_free(&out);
    pair_free(&dout);
    pair_free(&dx);
}

/* ---- pooling and resampling ---- */

static void test_pools(int N, int C, int H, int W, int ties) {
    char shape[96];
    snprintf(shape, sizeof shape, "%dx%dx%dx%d%s", N, C, H, W, ties ? " ties" : "");
    size_t n = (size_t)N * C * H * W;
    float *h = ncsn_xmalloc(n * sizeof(float));
    random_host(h, n, 400, -2.0f, 2.0f);
    if (ties) /* three distinct values: most 5x5 windows hold several equal maxima */
        for (size_t i = 0; i < n; i++) h[i] = floorf(h[i] + 2.0f) < 1.0f ? 0.0f : (h[i] < 1.0f ? 1.0f : 2.0f);
    pair in = pair_from_host(h, n);
    free(h);
    pair out = pair_zero(n), dout = pair_random(n, 401, -1.0f, 1.0f), din = pair_random(n, 402, -1.0f, 1.0f);

    if (H % 2 == 0 && W % 2 == 0 && !ties) {
        size_t half = n / 4;
        pair pooled = pair_zero(half), dpooled = pair_random(half, 403, -1.0f, 1.0f);
        ncsn_mean_pool2_forward(cpu, pooled.c, in.c, N, C, H, W);
        ncsn_mean_pool2_forward(gpu, pooled.g, in.g, N, C, H, W);
        compare("mean_pool2_forward", shape, &pooled, TOL_EXACT);
        for (int acc = 0; acc <= 1; acc++) {
            ncsn_mean_pool2_backward(cpu, din.c, dpooled.c, N, C, H, W, acc);
            ncsn_mean_pool2_backward(gpu, din.g, dpooled.g, N, C, H, W, acc);
            compare(acc ? "mean_pool2_backward (+=)" : "mean_pool2_backward", shape, &din, TOL_EXACT);
        }
        pair_free(&pooled);
        pair_free(&dpooled);
    }
    if (!ties) {
        ncsn_avg_pool5_forward(cpu, out.c, in.c, N, C, H, W);
        ncsn_avg_pool5_forward(gpu, out.g, in.g, N, C, H, W);
        compare("avg_pool5_forward", shape, &out, TOL_EXACT);
        for (int acc = 0; acc <= 1; acc++) {
            ncsn_avg_pool5_backward(cpu, din.c, dout.c, N, C, H, W, acc);
            ncsn_avg_pool5_backward(gpu, din.g, dout.g, N, C, H, W, acc);
            compare(acc ? "avg_pool5_backward (+=)" : "avg_pool5_backward", shape, &din, TOL_EXACT);
        }
    }
    ncsn_max_pool5_forward(cpu, out.c, in.c, N, C, H, W);
    ncsn_max_pool5_forward(gpu, out.g, in.g, N, C, H, W);
    compare("max_pool5_forward", shape, &out, TOL_EXACT);
    /* The GPU gathers, the CPU scatters: the same terms in a different order. */
    for (int acc = 0; acc <= 1; acc++) {
        ncsn_max_pool5_backward(cpu, din.c, dout.c, in.c, N, C, H, W, acc);
        ncsn_max_pool5_backward(gpu, din.g, dout.g, in.g, N, C, H, W, acc);
        compare(acc ? "max_pool5_backward (+=)" : "max_pool5_backward", shape, &din, TOL_ULP);
    }
    pair_free(&in);
    pair_free(&out);
    pair_free(&dout);
    pair_free(&din);
}

static void test_resize(int N, int C, int H, int W, int Ho, int Wo) {
    char shape[96];
    snprintf(shape, sizeof shape, "%dx%dx%dx%d -> %dx%d", N, C, H, W, Ho, Wo);
    size_t n = (size_t)N * C * H * W, no = (size_t)N * C * Ho * Wo;
    pair in = pair_random(n, 500, -1.0f, 1.0f), out = pair_zero(no);
    ncsn_resize_bilinear_forward(cpu, out.c, in.c, N, C, H, W, Ho, Wo);
    ncsn_resize_bilinear_forward(gpu, out.g, in.g, N, C, H, W, Ho, Wo);
    compare("resize_bilinear_forward", shape, &out, TOL_ULP);
    pair dout = pair_random(no, 501, -1.0f, 1.0f), din = pair_random(n, 502, -1.0f, 1.0f);
    for (int acc = 0; acc <= 1; acc++) {
        ncsn_resize_bilinear_backward(cpu, din.c, dout.c, N, C, H, W, Ho, Wo, acc);
        ncsn_resize_bilinear_backward(gpu, din.g, dout.g, N, C, H, W, Ho, Wo, acc);
        compare(acc ? "resize_bilinear_backward (+=)" : "resize_bilinear_backward", shape, &din, TOL_ULP);
    }
    pair_free(&in);
    pair_free(&out);
    pair_free(&dout);
    pair_free(&din);
}

/* ---- elementwise ---- */

static void test_elementwise(void) {
    const size_t n = 100003; /* not a multiple of any block size */
    const char *shape = "100003";
    pair a = pair_random(n, 600, -2.0f, 2.0f), b = pair_random(n, 601, -2.0f, 2.0f), out = pair_zero(n);
    ncsn_add(cpu, out.c, a.c, b.c, n);
    ncsn_add(gpu, out.g, a.g, b.g, n);
    compare("add", shape, &out, TOL_EXACT);
    ncsn_accumulate(cpu, out.c, a.c, n);
    ncsn_accumulate(gpu, out.g, a.g, n);
    compare("accumulate", shape, &out, TOL_EXACT);
    ncsn_scale_shift(cpu, out.c, a.c, 2.0f, -1.0f, n); /* the models' 2x - 1 */
    ncsn_scale_shift(gpu, out.g, a.g, 2.0f, -1.0f, n);
    compare("scale_shift (2x - 1)", shape, &out, TOL_EXACT);
    ncsn_scale_shift(cpu, out.c, a.c, 0.7f, 0.3f, n);
    ncsn_scale_shift(gpu, out.g, a.g, 0.7f, 0.3f, n);
    compare("scale_shift (0.7x + 0.3)", shape, &out, TOL_ULP);
    ncsn_clamp01(cpu, b.c, n);
    ncsn_clamp01(gpu, b.g, n);
    compare("clamp01", shape, &b, TOL_EXACT);

    /* per-example ops: N = 7 examples of 3*5*5 */
    const int N = 7;
    const size_t per = 75;
    int32_t hl[7] = {3, 0, 9, 3, 3, 1, 0};
    label_pair labels = labels_from_host(hl, N);
    pair sigmas = pair_random(10, 602, 0.01f, 50.0f), x = pair_random(N * per, 603, -1.0f, 1.0f);
    pair y = pair_zero(N * per);
    ncsn_divide_by_sigma(cpu, y.c, x.c, sigmas.c, labels.c, N, per);
    ncsn_divide_by_sigma(gpu, y.g, x.g, sigmas.g, labels.g, N, per);
    compare("divide_by_sigma", "7 x 75", &y, TOL_EXACT);

    /* label bias: C = 4 channels, 9 spatial positions, 10 levels, repeated labels */
    const int C = 4;
    const size_t spatial = 9;
    pair table = pair_random(10 * C, 604, -1.0f, 1.0f), h = pair_random((size_t)N * C * spatial, 605, -1.0f, 1.0f);
    ncsn_label_bias_forward(cpu, h.c, table.c, labels.c, N, C, spatial);
    ncsn_label_bias_forward(gpu, h.g, table.g, labels.g, N, C, spatial);
    compare("label_bias_forward (+=)", "7x4x9", &h, TOL_EXACT);
    pair dtable = pair_random(10 * C, 606, -1.0f, 1.0f);
    ncsn_label_bias_backward_accumulate(cpu, dtable.c, h.c, labels.c, N, C, spatial);
    ncsn_label_bias_backward_accumulate(gpu, dtable.g, h.g, labels.g, N, C, spatial);
    compare("label_bias_backward_accumulate", "7x4x9", &dtable, TOL_REDUCE);

    labels_free(&labels);
    pair *all[] = {&a, &b, &out, &sigmas, &x, &y, &table, &h, &dtable};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(all[i]);
}

/* ---- randomness ---- */

static void test_rng(void) {
    const int N = 3;
    const size_t per = 3073; /* odd: the last Philox block is partly used */
    const uint64_t seed = 0xDEADBEEFCAFEF00Dull;
    pair u = pair_zero(N * per), z = pair_zero(N * per);
    ncsn_fill_uniform(cpu, u.c, N, per, seed, NCSN_RNG_DEQUANT, 17, 5);
    ncsn_fill_uniform(gpu, u.g, N, per, seed, NCSN_RNG_DEQUANT, 17, 5);
    compare("fill_uniform (bit-exact)", "3 x 3073", &u, TOL_EXACT);
    ncsn_fill_normal(cpu, z.c, N, per, seed, NCSN_RNG_NOISE, 17, 5);
    ncsn_fill_normal(gpu, z.g, N, per, seed, NCSN_RNG_NOISE, 17, 5);
    compare("fill_normal", "3 x 3073", &z, TOL_NORMAL);
    /* A larger batch that includes the same examples must reproduce them. */
    pair big = pair_zero(5 * per);
    ncsn_fill_normal(gpu, big.g, 5, per, seed, NCSN_RNG_NOISE, 16, 5);
    float *a = ncsn_xmalloc(N * per * sizeof(float)), *b = ncsn_xmalloc(5 * per * sizeof(float));
    ncsn_copy_to_host(gpu, a, z.g, N * per * sizeof(float));
    ncsn_copy_to_host(gpu, b, big.g, 5 * per * sizeof(float));
    int same = !memcmp(a, b + per, N * per * sizeof(float));
    harness_checks++;
    if (!same) harness_failures++;
    printf("%-38s %-28s %10s %10s  %-7s %s\n", "fill_normal (batch-independent)", "examples 17..19 of 16..20", "-", "-",
           "exact", same ? "PASS" : "FAIL");
    free(a);
    free(b);
    pair_free(&u);
    pair_free(&z);
    pair_free(&big);
}

/* ---- the method's kernels ---- */

static void test_loss(int N, size_t per) {
    char shape[64];
    snprintf(shape, sizeof shape, "%d x %zu", N, per);
    int32_t *hl = ncsn_xmalloc((size_t)N * sizeof(int32_t));
    for (int n = 0; n < N; n++) hl[n] = (n * 7) % 10;
    label_pair labels = labels_from_host(hl, N);
    free(hl);
    pair sigmas = pair_random(10, 700, 0.01f, 50.0f);
    pair x = pair_random(N * per, 701, 0.0f, 1.0f), z = pair_random(N * per, 702, -3.0f, 3.0f);
    pair xn = pair_zero(N * per);
    ncsn_noise_inject(cpu, xn.c, x.c, z.c, sigmas.c, labels.c, N, per);
    ncsn_noise_inject(gpu, xn.g, x.g, z.g, sigmas.g, labels.g, N, per);
    compare("noise_inject", shape, &xn, TOL_ULP);
    pair score = pair_random(N * per, 703, -5.0f, 5.0f), loss = pair_zero(N), dscore = pair_zero(N * per);
    ncsn_dsm_loss(cpu, loss.c, dscore.c, score.c, z.c, sigmas.c, labels.c, N, per);
    ncsn_dsm_loss(gpu, loss.g, dscore.g, score.g, z.g, sigmas.g, labels.g, N, per);
    compare("dsm_loss (loss per example)", shape, &loss, TOL_REDUCE);
    compare("dsm_loss (dscore)", shape, &dscore, TOL_ULP);
    ncsn_dsm_loss(cpu, loss.c, NULL, score.c, z.c, sigmas.c, labels.c, N, per);
    ncsn_dsm_loss(gpu, loss.g, NULL, score.g, z.g, sigmas.g, labels.g, N, per);
    compare("dsm_loss (no dscore)", shape, &loss, TOL_REDUCE);
    labels_free(&labels);
    pair *all[] = {&sigmas, &x, &z, &xn, &score, &loss, &dscore};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(all[i]);
}

static void test_adam(int amsgrad, float weight_decay) {
    const size_t n = 50021;
    char shape[64];
    snprintf(shape, sizeof shape, "%zu amsgrad=%d wd=%g", n, amsgrad, (double)weight_decay);
    pair p = pair_random(n, 800, -1.0f, 1.0f), m = pair_zero(n), v = pair_zero(n), vmax = pair_zero(n);
    ncsn_adam_hparams hp = {.lr = 1e-3f,
                            .beta1 = 0.9f,
                            .beta2 = 0.999f,
                            .eps = 1e-8f,
                            .weight_decay = weight_decay,
                            .amsgrad = amsgrad,
                            .step = 0};
    for (int t = 1; t <= 3; t++) {
        pair g = pair_random(n, 801 + (uint32_t)t, -1.0f, 1.0f);
        hp.step = t;
        ncsn_adam_step(cpu, p.c, g.c, m.c, v.c, amsgrad ? vmax.c : NULL, n, &hp);
        ncsn_adam_step(gpu, p.g, g.g, m.g, v.g, amsgrad ? vmax.g : NULL, n, &hp);
        pair_free(&g);
    }
    compare("adam_step x3 (params)", shape, &p, TOL_ULP);
    compare("adam_step x3 (m)", shape, &m, TOL_ULP);
    compare("adam_step x3 (v)", shape, &v, TOL_ULP);
    if (amsgrad) compare("adam_step x3 (vmax)", shape, &vmax, TOL_ULP);
    pair_free(&p);
    pair_free(&m);
    pair_free(&v);
    pair_free(&vmax);
}

static void test_sampler_steps(void) {
    const int N = 4;
    const size_t per = 3 * 32 * 32;
    pair x = pair_random(N * per, 900, 0.0f, 1.0f), score = pair_random(N * per, 901, -10.0f, 10.0f);
    ncsn_langevin_step(cpu, x.c, score.c, N, per, 3.3e-6f, 42, 100, 7);
    ncsn_langevin_step(gpu, x.g, score.g, N, per, 3.3e-6f, 42, 100, 7);
    compare("langevin_step", "4x3x32x32", &x, TOL_ULP);
    ncsn_denoise_step(cpu, x.c, score.c, N * per, 1e-4f);
    ncsn_denoise_step(gpu, x.g, score.g, N * per, 1e-4f);
    compare("denoise_step", "4x3x32x32", &x, TOL_ULP);
    pair shadow = pair_random(N * per, 902, -1.0f, 1.0f);
    ncsn_ema_update(cpu, shadow.c, x.c, N * per, 0.999f);
    ncsn_ema_update(gpu, shadow.g, x.g, N * per, 0.999f);
    compare("ema_update", "12288", &shadow, TOL_ULP);
    pair_free(&x);
    pair_free(&score);
    pair_free(&shadow);
}

/* Pinned staging + fence: after fence_wait the device holds what the host buffer held at
 * the copy, even though the host rewrites the buffer right after. */
static void test_staging(void) {
    const size_t n = 1 << 20;
    float *h = ncsn_host_alloc(gpu, n * sizeof(float));
    random_host(h, n, 1100, -1.0f, 1.0f);
    pair d = pair_from_host(h, n); /* the CPU side keeps the original values */
    ncsn_memset_zero(gpu, d.g, n * sizeof(float));
    ncsn_fence *f = ncsn_fence_create(gpu);
    ncsn_copy_to_device(gpu, d.g, h, n * sizeof(float));
    ncsn_fence_record(gpu, f);
    ncsn_fence_wait(gpu, f);
    for (size_t i = 0; i < n; i++) h[i] = 99.0f; /* the copy is complete: this must not reach d.g */
    compare("pinned copy_to_device + fence", "1M floats", &d, TOL_EXACT);
    ncsn_fence_destroy(gpu, f);
    ncsn_host_free(gpu, h);
    pair_free(&d);
}

static void test_clip_and_logit(void) {
    const size_t n = 300007;
    pair g = pair_random(n, 1200, -1.0f, 1.0f), norm2 = pair_zero(1);
    ncsn_sum_squares(cpu, norm2.c, g.c, n);
    ncsn_sum_squares(gpu, norm2.g, g.g, n);
    float norm2_host;
    ncsn_copy_to_host(cpu, &norm2_host, norm2.c, sizeof norm2_host);
    float max_norm = 0.3f * sqrtf(norm2_host);
    ncsn_clip_by_norm(cpu, g.c, n, norm2.c, max_norm);
    ncsn_clip_by_norm(gpu, g.g, n, norm2.g, max_norm);
    compare("clip_by_norm (norm read on device)", "300007", &g, TOL_ULP);
    /* The PC corrector's per-example norms (one block per row on CUDA) and step size. */
    const int rows = 7;
    const size_t per = 3 * 32 * 32;
    pair xr = pair_random((size_t)rows * per, 1202, -2.0f, 2.0f), norms = pair_zero(2 * rows);
    ncsn_row_sum_squares(cpu, norms.c, xr.c, rows, per);
    ncsn_row_sum_squares(gpu, norms.g, xr.g, rows, per);
    ncsn_row_sum_squares(cpu, norms.c + rows, xr.c, rows, per); /* stand-in noise norms */
    ncsn_row_sum_squares(gpu, norms.g + rows, xr.g, rows, per);
    compare("row_sum_squares", "7x3x32x32", &norms, TOL_REDUCE);
    pair pcs = pair_zero(2);
    ncsn_pc_step_size(cpu, pcs.c, norms.c, rows, 0.16);
    ncsn_pc_step_size(gpu, pcs.g, norms.g, rows, 0.16);
    compare("pc_step_size (a, sqrt(2a))", "7 examples", &pcs, TOL_REDUCE);
    pair_free(&xr);
    pair_free(&norms);
    pair_free(&pcs);

    /* Inpainting's strided copy: the left 16 of 32 columns of 4x3x32 rows. */
    pair src = pair_random(4 * 3 * 32 * 32, 1203, -1.0f, 1.0f), dst = pair_random(4 * 3 * 32 * 32, 1204, 5.0f, 6.0f);
    ncsn_copy_columns(cpu, dst.c, src.c, 4 * 3 * 32, 32, 16);
    ncsn_copy_columns(gpu, dst.g, src.g, 4 * 3 * 32, 32, 16);
    compare("copy_columns (cudaMemcpy2DAsync)", "384 rows, 16 of 32", &dst, TOL_EXACT);
    pair_free(&src);
    pair_free(&dst);

    pair x = pair_random(n, 1201, 0.0f, 1.0f);
    ncsn_logit(cpu, x.c, n);
    ncsn_logit(gpu, x.g, n);
    compare("logit", "300007", &x, TOL_ULP);
    pair_free(&g);
    pair_free(&norm2);
    pair_free(&x);
}

/* The replayable ALD step with a stand-in network (score = -x / sigma^2-ish: scale_shift),
 * captured once as a graph on the GPU and replayed 12 times across three levels, against
 * the CPU running the same ops directly. Checks the graph machinery (capture, frozen
 * pointers, the device-side counter) as well as the chain kernels. */
typedef struct {
    ncsn_backend *be;
    float *x, *score, *schedule;
    int32_t *labels, *level_labels;
    uint32_t *state;
} chain_side;

enum { CHAIN_N = 4, CHAIN_L = 3, CHAIN_T = 5, CHAIN_STEPS = 12 };
static const size_t chain_per = 3 * 16 * 16;

static void chain_side_init(chain_side *c, ncsn_backend *be, const float *x_host) {
    const float a[CHAIN_L] = {4e-2f, 1e-2f, 2.5e-3f};
    const int32_t lab[CHAIN_L] = {0, 1, 2};
    float sched[2 * CHAIN_L];
    for (int l = 0; l < CHAIN_L; l++) {
        sched[2 * l] = a[l];
        sched[2 * l + 1] = sqrtf(2.0f * a[l]);
    }
    const size_t n = CHAIN_N * chain_per;
    c->be = be;
    c->x = ncsn_alloc(be, n * sizeof(float));
    c->score = ncsn_alloc(be, n * sizeof(float));
    c->schedule = ncsn_alloc(be, sizeof sched);
    c->labels = ncsn_alloc(be, CHAIN_N * sizeof(int32_t));
    c->level_labels = ncsn_alloc(be, sizeof lab);
    c->state = ncsn_alloc(be, NCSN_CHAIN_STATE_COUNT * sizeof(uint32_t));
    ncsn_copy_to_device(be, c->x, x_host, n * sizeof(float));
    ncsn_copy_to_device(be, c->schedule, sched, sizeof sched);
    ncsn_copy_to_device(be, c->level_labels, lab, sizeof lab);
    const uint32_t state[NCSN_CHAIN_STATE_COUNT] = {0, 500}; /* step 0, samples 500.. */
    ncsn_copy_to_device(be, c->state, state, sizeof state);
}

static void chain_side_step(chain_side *c) {
    const size_t n = CHAIN_N * chain_per;
    ncsn_chain_labels(c->be, c->labels, CHAIN_N, c->level_labels, CHAIN_L, c->state, CHAIN_T);
    ncsn_scale_shift(c->be, c->score, c->x, -1.0f, 0.0f, n); /* the score of N(0, I) */
    ncsn_langevin_step_chain(c->be, c->x, c->score, CHAIN_N, chain_per, c->schedule, CHAIN_L, c->state, CHAIN_T, 7);
    ncsn_chain_advance(c->be, c->state);
}

static void chain_side_free(chain_side *c) {
    ncsn_free(c->be, c->x);
    ncsn_free(c->be, c->score);
    ncsn_free(c->be, c->schedule);
    ncsn_free(c->be, c->labels);
    ncsn_free(c->be, c->level_labels);
    ncsn_free(c->be, c->state);
}

static void test_chain_graph(void) {
    const size_t n = CHAIN_N * chain_per;
    float *x0 = ncsn_xmalloc(n * sizeof(float));
    random_host(x0, n, 1300, -3.0f, 3.0f);
    chain_side c, g;
    chain_side_init(&c, cpu, x0);
    chain_side_init(&g, gpu, x0);
    for (int k = 0; k < CHAIN_STEPS; k++) chain_side_step(&c);
    int captured = 0;
    if (ncsn_graph_begin(gpu)) {
        chain_side_step(&g); /* recorded, not run */
        ncsn_graph *graph = ncsn_graph_end(gpu);
        for (int k = 0; k < CHAIN_STEPS; k++) ncsn_graph_launch(gpu, graph);
        ncsn_graph_destroy(gpu, graph);
        captured = 1;
    } else {
        for (int k = 0; k < CHAIN_STEPS; k++) chain_side_step(&g);
    }
    pair x = {c.x, g.x, n};
    /* 12 steps of x <- (1 - a) x + sqrt(2a) z: each step's normals agree to ~1e-6 (TOL_NORMAL)
     * and the contraction keeps the errors from growing: 1e-5 absolute is ample. */
    const tolerance tol_chain = {"chain", 1e-5, 1e-6, 0, 0};
    compare(captured ? "ALD step: graph x12 vs cpu" : "ALD step: direct x12 vs cpu (no graphs)", "4x3x16x16", &x,
            tol_chain);
    uint32_t sc[NCSN_CHAIN_STATE_COUNT], sg[NCSN_CHAIN_STATE_COUNT];
    int32_t lc[CHAIN_N], lg[CHAIN_N];
    ncsn_copy_to_host(cpu, sc, c.state, sizeof sc);
    ncsn_copy_to_host(gpu, sg, g.state, sizeof sg);
    ncsn_copy_to_host(cpu, lc, c.labels, sizeof lc);
    ncsn_copy_to_host(gpu, lg, g.labels, sizeof lg);
    int ok = sc[NCSN_CHAIN_STEP] == CHAIN_STEPS && !memcmp(sc, sg, sizeof sc) && !memcmp(lc, lg, sizeof lc) &&
             lg[0] == CHAIN_STEPS / CHAIN_T;
    harness_checks++;
    if (!ok) harness_failures++;
    printf("%-38s %-28s %10s %10s  %-7s %s\n", "ALD step: counter and labels", "state, labels", "-", "-", "exact",
           ok ? "PASS" : "FAIL");
    if (!ok)
        printf("    step cpu %u gpu %u (want %d), label cpu %d gpu %d\n", sc[NCSN_CHAIN_STEP], sg[NCSN_CHAIN_STEP],
               CHAIN_STEPS, lc[0], lg[0]);
    chain_side_free(&c);
    chain_side_free(&g);
    free(x0);
}

static void test_gemm_and_norm(int M, int Nc, int K) {
    char shape[64];
    snprintf(shape, sizeof shape, "%dx%d . %dx%d^T", M, K, Nc, K);
    pair A = pair_random((size_t)M * K, 1000, 0.0f, 1.0f), B = pair_random((size_t)Nc * K, 1001, 0.0f, 1.0f);
    pair Cm = pair_zero((size_t)M * Nc);
    ncsn_gemm_nt(cpu, Cm.c, A.c, B.c, M, Nc, K);
    ncsn_gemm_nt(gpu, Cm.g, A.g, B.g, M, Nc, K);
    compare("gemm_nt", shape, &Cm, TOL_GEMM);
    pair sum = pair_zero(1);
    ncsn_sum_squares(cpu, sum.c, A.c, (size_t)M * K);
    ncsn_sum_squares(gpu, sum.g, A.g, (size_t)M * K);
    snprintf(shape, sizeof shape, "%zu", (size_t)M * K);
    compare("sum_squares", shape, &sum, TOL_REDUCE);
    pair_free(&A);
    pair_free(&B);
    pair_free(&Cm);
    pair_free(&sum);
}

/* ---- inference in bf16 NHWC (shapes printed N x H x W x C) ---- */

typedef struct {
    ncsn_bf16 *c, *g; /* the same bf16 tensor on the CPU and on the GPU backend */
    size_t n;
} bpair;

static bpair bpair_from_host(const ncsn_bf16 *h, size_t n) {
    raw_pair r = pair_alloc(h, n * sizeof(ncsn_bf16));
    bpair p = {r.c, r.g, n};
    return p;
}

/* Uniform in [lo, hi), rounded to bf16 (the values a bf16 network carries). */
static bpair bpair_random(size_t n, uint32_t tag, float lo, float hi) {
    float *f = ncsn_xmalloc(n * sizeof(float));
    ncsn_bf16 *h = ncsn_xmalloc(n * sizeof(ncsn_bf16));
    random_host(f, n, tag, lo, hi);
    for (size_t i = 0; i < n; i++) h[i] = ncsn_bf16_from_float(f[i]);
    bpair p = bpair_from_host(h, n);
    free(f);
    free(h);
    return p;
}

static bpair bpair_zero(size_t n) { return bpair_from_host(NULL, n); }

static void bpair_free(bpair *p) {
    ncsn_free(cpu, p->c);
    ncsn_free(gpu, p->g);
    p->c = p->g = NULL;
}

/* compare() for bf16 tensors, on their exact fp32 values. */
static int compare_bf16(const char *op, const char *shape, const bpair *p, tolerance tol) {
    size_t n = p->n;
    ncsn_bf16 *h = ncsn_xmalloc(n * sizeof(ncsn_bf16));
    float *hc = ncsn_xmalloc(n * sizeof(float)), *hg = ncsn_xmalloc(n * sizeof(float));
    ncsn_copy_to_host(cpu, h, p->c, n * sizeof(ncsn_bf16));
    for (size_t i = 0; i < n; i++) hc[i] = ncsn_float_from_bf16(h[i]);
    ncsn_copy_to_host(gpu, h, p->g, n * sizeof(ncsn_bf16));
    for (size_t i = 0; i < n; i++) hg[i] = ncsn_float_from_bf16(h[i]);
    int ok = compare_host(op, shape, hc, hg, n, tol, 1);
    free(h);
    free(hc);
    free(hg);
    return ok;
}

/* Tensors start `off` elements into their allocations: off = 1 leaves them 2-byte aligned,
 * which sends the CUDA kernels down their element-by-element path instead of the 16-byte
 * vectors (the compared buffers include the untouched leading elements). */
static void test_bf16_elementwise(size_t n, size_t off) {
    char shape[48];
    snprintf(shape, sizeof shape, "%zu%s", n, off ? " +2B" : "");
    bpair x = bpair_random(n + off, 1400, -4.0f, 3.0f), b = bpair_random(n + off, 1401, -2.0f, 2.0f);
    bpair out = bpair_zero(n + off);
    ncsn_elu_forward_bf16(cpu, out.c + off, x.c + off, n);
    ncsn_elu_forward_bf16(gpu, out.g + off, x.g + off, n);
    compare_bf16("elu_forward_bf16", shape, &out, TOL_BF16_ULP);
    ncsn_add_bf16(cpu, out.c + off, x.c + off, b.c + off, n);
    ncsn_add_bf16(gpu, out.g + off, x.g + off, b.g + off, n);
    compare_bf16("add_bf16", shape, &out, TOL_EXACT);
    ncsn_accumulate_bf16(cpu, out.c + off, b.c + off, n);
    ncsn_accumulate_bf16(gpu, out.g + off, b.g + off, n);
    compare_bf16("accumulate_bf16", shape, &out, TOL_EXACT);
    /* in place, as the models call ELU */
    ncsn_elu_forward_bf16(cpu, out.c + off, out.c + off, n);
    ncsn_elu_forward_bf16(gpu, out.g + off, out.g + off, n);
    compare_bf16("elu_forward_bf16 (in place)", shape, &out, TOL_BF16_ULP);
    bpair_free(&x);
    bpair_free(&b);
    bpair_free(&out);
}

/* special: 0 plain, 1 ties (three values: most max windows hold several equal maxima),
 * 2 with NaN and infinities sprinkled in (every op must propagate them as its fp32 twin). */
static void test_bf16_pools(int N, int C, int H, int W, int special, size_t off) {
    static const char *names[] = {"", " ties", " nan/inf"};
    char shape[96];
    snprintf(shape, sizeof shape, "%dx%dx%dx%d%s%s", N, H, W, C, names[special], off ? " +2B" : "");
    size_t n = (size_t)N * C * H * W;
    float *f = ncsn_xmalloc((n + off) * sizeof(float));
    ncsn_bf16 *h = ncsn_xmalloc((n + off) * sizeof(ncsn_bf16));
    random_host(f, n + off, 1500, -2.0f, 2.0f);
    for (size_t i = 0; i < n + off; i++) {
        if (special == 1) f[i] = floorf(f[i] + 2.0f) < 1.0f ? 0.0f : (f[i] < 1.0f ? 1.0f : 2.0f);
        if (special == 2 && i % 97 == 5) f[i] = NAN;
        if (special == 2 && i % 89 == 7) f[i] = i % 2 ? INFINITY : -INFINITY;
        h[i] = ncsn_bf16_from_float(f[i]);
    }
    bpair in = bpair_from_host(h, n + off), out = bpair_zero(n + off);
    free(f);
    free(h);
    if (H % 2 == 0 && W % 2 == 0) {
        bpair pooled = bpair_zero(n / 4 + off);
        ncsn_mean_pool2_forward_bf16(cpu, pooled.c + off, in.c + off, N, C, H, W);
        ncsn_mean_pool2_forward_bf16(gpu, pooled.g + off, in.g + off, N, C, H, W);
        compare_bf16("mean_pool2_forward_bf16", shape, &pooled, TOL_EXACT);
        bpair_free(&pooled);
    }
    ncsn_avg_pool5_forward_bf16(cpu, out.c + off, in.c + off, N, C, H, W);
    ncsn_avg_pool5_forward_bf16(gpu, out.g + off, in.g + off, N, C, H, W);
    compare_bf16("avg_pool5_forward_bf16", shape, &out, TOL_EXACT);
    ncsn_max_pool5_forward_bf16(cpu, out.c + off, in.c + off, N, C, H, W);
    ncsn_max_pool5_forward_bf16(gpu, out.g + off, in.g + off, N, C, H, W);
    compare_bf16("max_pool5_forward_bf16", shape, &out, TOL_EXACT);
    bpair_free(&in);
    bpair_free(&out);
}

static void test_bf16_resize(int N, int C, int H, int W, int Ho, int Wo, size_t off) {
    char shape[96];
    snprintf(shape, sizeof shape, "%dx%dx%dx%d -> %dx%d%s", N, H, W, C, Ho, Wo, off ? " +2B" : "");
    size_t n = (size_t)N * C * H * W, no = (size_t)N * C * Ho * Wo;
    bpair in = bpair_random(n + off, 1600, -1.0f, 1.0f), out = bpair_zero(no + off);
    ncsn_resize_bilinear_forward_bf16(cpu, out.c + off, in.c + off, N, C, H, W, Ho, Wo);
    ncsn_resize_bilinear_forward_bf16(gpu, out.g + off, in.g + off, N, C, H, W, Ho, Wo);
    compare_bf16("resize_bilinear_forward_bf16", shape, &out, Ho == H && Wo == W ? TOL_EXACT : TOL_BF16_RESIZE);
    bpair_free(&in);
    bpair_free(&out);
}

/* As test_in_plus, on bf16 NHWC (levels = 0: unconditional). */
static void test_bf16_in_plus(int N, int C, int H, int W, int levels, const int32_t *label_values, int elu,
                              size_t off) {
    char shape[96];
    snprintf(shape, sizeof shape, "%dx%dx%dx%d %s%s%s", N, H, W, C, levels ? "cond" : "uncond", elu ? " elu" : "",
             off ? " +2B" : "");
    size_t n = (size_t)N * C * H * W, nstats = NCSN_NORM_STATS_COUNT(N, C);
    int stride = levels ? 3 * C : 0;
    size_t nparams = levels ? (size_t)levels * 3 * C : 3 * (size_t)C;
    float *h = ncsn_xmalloc(nparams * sizeof(float));
    random_host(h, nparams, 1700, 0.5f, 1.5f);
    for (size_t r = 0; r < (levels ? (size_t)levels : 1); r++)
        for (int c = 0; c < C; c++) h[r * 3 * C + 2 * C + c] -= 1.0f; /* beta in [-0.5, 0.5) */
    pair params = pair_from_host(h, nparams);
    free(h);
    bpair x = bpair_random(n + off, 1701, -1.0f, 2.0f), out = bpair_zero(n + off);
    pair stats = pair_zero(nstats);
    label_pair labels = {NULL, NULL, 0};
    if (levels) labels = labels_from_host(label_values, N);
    const size_t alpha_off = (size_t)C, beta_off = 2 * (size_t)C;
    ncsn_instance_norm_plus_forward_bf16(cpu, out.c + off, x.c + off, params.c, params.c + alpha_off,
                                         params.c + beta_off, stride, labels.c, stats.c, N, C, H, W, elu);
    ncsn_instance_norm_plus_forward_bf16(gpu, out.g + off, x.g + off, params.g, params.g + alpha_off,
                                         params.g + beta_off, stride, labels.g, stats.g, N, C, H, W, elu);
    compare_bf16("instance_norm_plus_forward_bf16 (out)", shape, &out, TOL_BF16_IN_PLUS);
    compare("instance_norm_plus_forward_bf16 (stats)", shape, &stats, TOL_IN_PLUS);
    if (levels) labels_free(&labels);
    pair_free(&params);
    pair_free(&stats);
    bpair_free(&x);
    bpair_free(&out);
}

/* The network's boundaries: its input (2x - 1 into bf16 NHWC) and its output (fp32 NCHW,
 * divided by sigma or not). */
static void test_bf16_boundaries(int N, int C, int H, int W, size_t off) {
    char shape[96];
    snprintf(shape, sizeof shape, "%dx%dx%dx%d%s", N, H, W, C, off ? " +2B/+4B" : "");
    size_t n = (size_t)N * C * H * W;
    pair x = pair_random(n + off, 1800, 0.0f, 1.0f), back = pair_zero(n + off);
    bpair y = bpair_zero(n + off);
    ncsn_bf16_from_nchw(cpu, y.c + off, x.c + off, 2.0f, -1.0f, N, C, H, W);
    ncsn_bf16_from_nchw(gpu, y.g + off, x.g + off, 2.0f, -1.0f, N, C, H, W);
    compare_bf16("bf16_from_nchw (2x - 1)", shape, &y, TOL_EXACT);
    ncsn_nchw_from_bf16(cpu, back.c + off, y.c + off, NULL, NULL, N, C, H, W);
    ncsn_nchw_from_bf16(gpu, back.g + off, y.g + off, NULL, NULL, N, C, H, W);
    compare("nchw_from_bf16", shape, &back, TOL_EXACT);
    const int32_t hl[8] = {3, 0, 9, 3, 1, 7, 2, 5};
    NCSN_CHECKF(N <= 8, "test_bf16_boundaries: N=%d > 8 labels", N);
    label_pair labels = labels_from_host(hl, N);
    pair sigmas = pair_random(10, 1801, 0.01f, 50.0f);
    ncsn_nchw_from_bf16(cpu, back.c + off, y.c + off, sigmas.c, labels.c, N, C, H, W);
    ncsn_nchw_from_bf16(gpu, back.g + off, y.g + off, sigmas.g, labels.g, N, C, H, W);
    compare("nchw_from_bf16 (/ sigma)", shape, &back, TOL_EXACT);
    ncsn_bf16_from_nchw(cpu, y.c + off, x.c + off, 0.7f, 0.3f, N, C, H, W);
    ncsn_bf16_from_nchw(gpu, y.g + off, x.g + off, 0.7f, 0.3f, N, C, H, W);
    compare_bf16("bf16_from_nchw (0.7x + 0.3)", shape, &y, TOL_BF16_ULP);
    labels_free(&labels);
    pair_free(&sigmas);
    pair_free(&x);
    pair_free(&back);
    bpair_free(&y);
}

/* Each backend packs the same fp32 weights into its own layout (they differ), then both
 * convolve the same bf16 input. */
static void test_bf16_conv(ncsn_conv_desc d) {
    char shape[96];
    snprintf(shape, sizeof shape, "%dx%dx%dx%d K%d k%d d%d%s", d.N, d.H, d.W, d.C, d.K, d.ksize, d.dilation,
             d.has_bias ? " b" : "");
    size_t nin = (size_t)d.N * d.C * d.H * d.W, nout = (size_t)d.N * d.K * d.H * d.W;
    size_t nw = (size_t)d.K * d.C * d.ksize * d.ksize;
    float bound = 1.0f / sqrtf((float)(d.C * d.ksize * d.ksize));
    bpair x = bpair_random(nin, 1900, -1.0f, 1.0f), y = bpair_zero(nout);
    pair w = pair_random(nw, 1901, -bound, bound), b = pair_random(d.K, 1902, -bound, bound);
    size_t bytes_c = ncsn_conv2d_packed_weights_bytes(cpu, &d), bytes_g = ncsn_conv2d_packed_weights_bytes(gpu, &d);
    int sizes_ok = bytes_c % 256 == 0 && bytes_g % 256 == 0 && bytes_c >= nw * sizeof(ncsn_bf16) &&
                   bytes_g >= nw * sizeof(ncsn_bf16);
    harness_checks++;
    if (!sizes_ok) harness_failures++;
    printf("%-38s %-28s %10zu %10zu  %-7s %s\n", "conv2d_packed_weights_bytes (cpu, gpu)", shape, bytes_c, bytes_g,
           "256x", sizes_ok ? "PASS" : "FAIL");
    void *packed_c = ncsn_alloc(cpu, bytes_c), *packed_g = ncsn_alloc(gpu, bytes_g);
    ncsn_conv2d_pack_weights_bf16(cpu, packed_c, w.c, d.has_bias ? b.c : NULL, &d);
    ncsn_conv2d_pack_weights_bf16(gpu, packed_g, w.g, d.has_bias ? b.g : NULL, &d);
    ncsn_conv2d_forward_bf16(cpu, y.c, x.c, packed_c, NULL, 0, &d);
    ncsn_conv2d_forward_bf16(gpu, y.g, x.g, packed_g, NULL, 0, &d);
    compare_bf16("conv2d_forward_bf16 (packed)", shape, &y, TOL_BF16_CONV);
    /* The epilogue: + a separate residual then ELU (cuDNN's fused graph where an engine takes
     * it), and += in place (the unfused path). cuDNN's ELU is its own: the conv tolerance
     * (1 ulp + a share of max) covers a rounding flip there too. */
    bpair r = bpair_random(nout, 1903, -1.0f, 1.0f), y_acc = bpair_random(nout, 1903, -1.0f, 1.0f);
    ncsn_conv2d_forward_bf16(cpu, y.c, x.c, packed_c, r.c, 1, &d);
    ncsn_conv2d_forward_bf16(gpu, y.g, x.g, packed_g, r.g, 1, &d);
    compare_bf16("conv2d_forward_bf16 (+ residual, ELU)", shape, &y, TOL_BF16_CONV);
    ncsn_conv2d_forward_bf16(cpu, y_acc.c, x.c, packed_c, y_acc.c, 0, &d);
    ncsn_conv2d_forward_bf16(gpu, y_acc.g, x.g, packed_g, y_acc.g, 0, &d);
    compare_bf16("conv2d_forward_bf16 (+= in place)", shape, &y_acc, TOL_BF16_CONV);
    ncsn_free(cpu, packed_c);
    ncsn_free(gpu, packed_g);
    bpair_free(&r);
    bpair_free(&y_acc);
    bpair_free(&x);
    bpair_free(&y);
    pair_free(&w);
    pair_free(&b);
}

/* A missing bf16 op would crash the comparisons: check both tables first. */
static int bf16_ops_present(const ncsn_backend *be) {
    const ncsn_backend_ops *o = be->ops;
    return o->conv2d_packed_weights_bytes && o->conv2d_pack_weights_bf16 && o->conv2d_forward_bf16 &&
           o->instance_norm_plus_forward_bf16 && o->elu_forward_bf16 && o->add_bf16 && o->accumulate_bf16 &&
           o->mean_pool2_forward_bf16 && o->avg_pool5_forward_bf16 && o->max_pool5_forward_bf16 &&
           o->resize_bilinear_forward_bf16 && o->bf16_from_nchw && o->nchw_from_bf16;
}

static void test_bf16_all(void) {
    int present = bf16_ops_present(cpu) && bf16_ops_present(gpu);
    if (!present) {
        harness_checks++;
        harness_failures++;
        printf("%-38s %-28s %10s %10s  %-7s FAIL (cpu %s, %s %s)\n", "bf16 ops present", "13 ops", "-", "-", "exact",
               bf16_ops_present(cpu) ? "all" : "missing", gpu->ops->name, bf16_ops_present(gpu) ? "all" : "missing");
        return;
    }
    /* CIFAR-10 NCSNv2 activations (128x32x32, 256x16x16, 256x8x8), a flat odd size on the
     * element path, and a tiny tail-only one. */
    test_bf16_elementwise(2 * 128 * 32 * 32, 0);
    test_bf16_elementwise(100003, 1);
    test_bf16_elementwise(7, 0);

    test_bf16_pools(2, 128, 32, 32, 0, 0);
    test_bf16_pools(5, 256, 8, 8, 0, 0);
    test_bf16_pools(2, 128, 16, 16, 0, 1); /* C = 128 on the element path */
    test_bf16_pools(3, 5, 7, 9, 0, 0);
    test_bf16_pools(1, 2, 3, 2, 0, 0); /* planes smaller than the 5x5 window */
    test_bf16_pools(2, 24, 10, 12, 1, 0);
    test_bf16_pools(2, 16, 9, 10, 2, 0);

    test_bf16_resize(3, 256, 8, 8, 16, 16, 0);
    test_bf16_resize(2, 128, 16, 16, 32, 32, 0);
    test_bf16_resize(2, 8, 8, 8, 8, 8, 0); /* same size: an exact identity */
    test_bf16_resize(3, 5, 7, 9, 13, 4, 0);
    test_bf16_resize(2, 128, 8, 8, 16, 16, 1);
    test_bf16_resize(1, 2, 1, 5, 3, 1, 0);

    const int32_t shared_labels[5] = {2, 0, 2, 2, 1}; /* examples 0, 2 and 3 share a row */
    test_bf16_in_plus(5, 128, 32, 32, 0, NULL, 1, 0);
    test_bf16_in_plus(2, 256, 8, 8, 5, shared_labels, 0, 0);
    test_bf16_in_plus(3, 256, 16, 16, 5, shared_labels, 1, 0);
    test_bf16_in_plus(2, 128, 32, 32, 0, NULL, 0, 1);       /* element path */
    test_bf16_in_plus(2, 16, 40, 40, 0, NULL, 1, 0);        /* a plane too large to stage on the GPU */
    test_bf16_in_plus(4, 24, 7, 9, 5, shared_labels, 1, 0); /* 3 groups of 8 channels: a lane past C */
    test_bf16_in_plus(2, 12, 6, 6, 0, NULL, 0, 0);          /* C % 8 != 0 */
    test_bf16_in_plus(3, 1, 28, 28, 3, shared_labels, 0, 0); /* C == 1: no channel-means term */
    test_bf16_in_plus(1, 3, 5, 5, 0, NULL, 1, 0);

    test_bf16_boundaries(5, 3, 32, 32, 0); /* the CIFAR-10 input and output */
    test_bf16_boundaries(2, 1, 28, 28, 1);
    test_bf16_boundaries(2, 128, 16, 16, 0); /* tile transposes */
    test_bf16_boundaries(3, 37, 5, 7, 1);

    /* The CIFAR-10 NCSNv2 convolutions (begin, residual, down, dilated, 1x1 shortcut, end)
     * and odd ones. */
    const ncsn_conv_desc convs[] = {
        {2, 3, 32, 32, 128, 3, 1, 1},   {2, 128, 32, 32, 128, 3, 1, 1}, {2, 128, 16, 16, 256, 3, 1, 1},
        {2, 256, 8, 8, 256, 3, 2, 1},   {2, 256, 8, 8, 256, 3, 4, 0},   {2, 128, 16, 16, 256, 1, 1, 1},
        {2, 128, 32, 32, 3, 3, 1, 1},   {3, 5, 7, 9, 6, 3, 3, 1},       {1, 1, 5, 5, 1, 1, 1, 0},
    };
    for (size_t i = 0; i < sizeof convs / sizeof convs[0]; i++) test_bf16_conv(convs[i]);
}

/* Every entry of the op table is set (a NULL would crash the first model that calls it). */
static void test_table_complete(const ncsn_backend *be) {
    const ncsn_backend_ops *o = be->ops;
    size_t count = 0, missing = 0;
#define ENTRY(op) (count++, missing += o->op == NULL)
    ENTRY(alloc); ENTRY(free); ENTRY(memset_zero); ENTRY(copy_to_device); ENTRY(copy_to_host); ENTRY(copy);
    ENTRY(synchronize); ENTRY(conv2d_forward); ENTRY(conv2d_backward_data);
    ENTRY(conv2d_backward_weights_accumulate); ENTRY(instance_norm_plus_forward); ENTRY(instance_norm_plus_backward);
    ENTRY(elu_forward); ENTRY(elu_backward); ENTRY(mean_pool2_forward); ENTRY(mean_pool2_backward);
    ENTRY(avg_pool5_forward); ENTRY(avg_pool5_backward); ENTRY(max_pool5_forward); ENTRY(max_pool5_backward);
    ENTRY(resize_bilinear_forward); ENTRY(resize_bilinear_backward); ENTRY(add); ENTRY(accumulate);
    ENTRY(scale_shift); ENTRY(divide_by_sigma); ENTRY(clamp01); ENTRY(label_bias_forward);
    ENTRY(label_bias_backward_accumulate); ENTRY(fill_normal); ENTRY(fill_uniform); ENTRY(noise_inject);
    ENTRY(dsm_loss); ENTRY(adam_step); ENTRY(ema_update); ENTRY(langevin_step); ENTRY(denoise_step); ENTRY(gemm_nt);
    ENTRY(sum_squares); ENTRY(host_alloc); ENTRY(host_free); ENTRY(fence_create); ENTRY(fence_record);
    ENTRY(fence_wait); ENTRY(fence_destroy); ENTRY(graph_begin); ENTRY(graph_end); ENTRY(graph_launch);
    ENTRY(graph_destroy); ENTRY(logit); ENTRY(langevin_step_chain); ENTRY(chain_labels); ENTRY(chain_advance);
    ENTRY(clip_by_norm); ENTRY(row_sum_squares); ENTRY(pc_step_size); ENTRY(copy_columns);
    ENTRY(conv2d_packed_weights_bytes); ENTRY(conv2d_pack_weights_bf16); ENTRY(conv2d_forward_bf16);
    ENTRY(instance_norm_plus_forward_bf16); ENTRY(elu_forward_bf16); ENTRY(add_bf16); ENTRY(accumulate_bf16);
    ENTRY(mean_pool2_forward_bf16); ENTRY(avg_pool5_forward_bf16); ENTRY(max_pool5_forward_bf16);
    ENTRY(resize_bilinear_forward_bf16); ENTRY(bf16_from_nchw); ENTRY(nchw_from_bf16);
#undef ENTRY
    harness_checks++;
    if (missing) harness_failures++;
    char shape[32];
    snprintf(shape, sizeof shape, "%zu entries", count);
    printf("%-38s %-28s %10zu %10s  %-7s %s\n", "op table complete (NULL entries)", shape, missing, "-", "exact",
           missing ? "FAIL" : "PASS");
}

int main(void) {
    int cpu_pair = gpu_pair_create(&cpu, &gpu);
    if (cpu_pair < 0) return 0;
    printf("test-gpu: %s backend vs cpu backend%s\n", gpu->ops->name,
           cpu_pair ? " (NCSN_TEST_GPU_CPU_PAIR=1: checking the test itself)" : "");
    printf("%-38s %-28s %10s %10s  %-7s %s\n", "op", "shape", "max abs", "/max|cpu|", "tol", "result");

    test_table_complete(gpu);
    test_memory();

    /* CIFAR-10 NCSNv2 (ngf 128): begin conv, residual convs at 32x32, the down path, the
     * dilated 8x8 stages, a 1x1 shortcut, the end conv; MNIST v1 first conv; odd shapes. */
    const ncsn_conv_desc convs[] = {
        {2, 3, 32, 32, 128, 3, 1, 1}, {2, 128, 32, 32, 128, 3, 1, 1}, {2, 128, 16, 16, 256, 3, 1, 1},
        {2, 256, 8, 8, 256, 3, 2, 1}, {2, 256, 8, 8, 256, 3, 4, 0},   {2, 128, 16, 16, 256, 1, 1, 1},
        {2, 128, 32, 32, 3, 3, 1, 1}, {2, 1, 28, 28, 8, 3, 1, 1},     {3, 5, 7, 9, 6, 3, 3, 1},
        {1, 1, 5, 5, 1, 1, 1, 0},     {2, 7, 11, 6, 4, 3, 2, 0},
    };
    for (size_t i = 0; i < sizeof convs / sizeof convs[0]; i++) test_conv(convs[i], 0);
    test_conv(convs[8], 1); /* 4-byte aligned tensors */
    test_conv(convs[1], 1);
    test_conv_tf32(convs[1]);

    const int32_t shared_labels[4] = {2, 0, 2, 2}; /* examples 0, 2 and 3 share a row */
    test_in_plus(2, 128, 32, 32, 0, NULL);
    test_in_plus(2, 256, 8, 8, 0, NULL);
    test_in_plus(4, 8, 7, 9, 5, shared_labels);
    test_in_plus(3, 1, 28, 28, 3, shared_labels); /* C == 1: no channel-means term */
    test_in_plus(1, 3, 5, 5, 0, NULL);

    test_elu(2 * 128 * 32 * 32);
    test_elu(7);

    test_pools(2, 128, 32, 32, 0);
    test_pools(3, 5, 7, 9, 0);
    test_pools(1, 2, 3, 2, 0); /* planes smaller than the 5x5 window */
    test_pools(2, 3, 10, 12, 1);

    test_resize(2, 128, 8, 8, 16, 16);
    test_resize(2, 128, 16, 16, 32, 32);
    test_resize(2, 4, 8, 8, 8, 8); /* same size: an exact identity */
    test_resize(3, 5, 7, 9, 13, 4);
    test_resize(1, 2, 1, 5, 3, 1);

    test_elementwise();
    test_rng();
    test_loss(8, 3 * 32 * 32);
    test_loss(3, 1);
    test_adam(0, 0.0f);
    test_adam(1, 1e-4f);
    test_sampler_steps();
    test_staging();
    test_clip_and_logit();
    test_chain_graph();
    test_gemm_and_norm(37, 29, 3072);
    test_gemm_and_norm(128, 128, 784);
    test_bf16_all();

    ncsn_backend_destroy(gpu);
    ncsn_backend_destroy(cpu);
    return harness_finish("test_gpu_ops");
}
