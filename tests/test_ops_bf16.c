/* test_ops_bf16.c: the CPU backend's bf16 NHWC inference ops (backend.h) against its fp32
 * NCHW ops.
 *
 * Every case draws fp32 values, rounds them to bf16 (so both sides see the same numbers),
 * runs the bf16 op on the NHWC bf16 tensor and the fp32 sibling on the same values as an
 * fp32 NCHW tensor, rounds the sibling's output to bf16 and compares in NHWC order. The
 * fp32 ops are themselves tested against float64 in test_ops.c; here what is checked is
 * that the bf16 ops compute THE SAME fp32 numbers as their siblings and round them once.
 *
 * Tolerances, per op (the contract: same formula and summation order, one rounding):
 * - elu, add, accumulate, the three pools, resize, bf16_from_nchw, nchw_from_bf16: the
 *   same fp32 operations in the same order on the same values, so BIT-EXACT (including
 *   NaN payloads for the max pool, whose NaN semantics are tested explicitly).
 * - IN++: the statistics' double sums run in another order (along NHWC rows instead of
 *   the fp32 op's vector lanes over a plane). Sums of bf16 differences are mostly exact in
 *   double, and otherwise differ by ~2^-53 relative, which changes the fp32 mean or rstd
 *   only when it straddles a rounding boundary, by 1 fp32 ulp. So stats are compared with
 *   atol = rtol = 1e-6 (several fp32 ulps, also covering mhat = (mu - M) * s, which
 *   amplifies a 1-ulp change of one mean by s), and the outputs within 1 bf16 ulp (a
 *   1-ulp change of a statistic moves the fp32 output by a few fp32 ulps, which can flip
 *   one bf16 rounding) or 2^-16 * max|out| for outputs near zero, where a bf16 ulp is
 *   smaller than that fp32 change. The number of bit-identical stats and outputs is
 *   printed (in practice all of them).
 * - conv: both sides sum the same exact fp32 products (bf16 x bf16 is exact in fp32) in
 *   fp32, in different orders. Outputs must be within 1 bf16 ulp of the rounded fp32
 *   reference, or, where the sum cancels (the result much smaller than the sum of the
 *   magnitudes of its terms, A = conv(|x|, |w|) + |b|), within 2^-16 * A: the order
 *   difference of n fp32 additions of random-sign terms is ~sqrt(n) 2^-24 A, at most
 *   5e-7 A ... 2e-6 A for the n = 9 ... 1152 terms here, and 2^-16 A = 1.5e-5 A sits
 *   well above that while a wrong tap or a dropped bias (O(A / n) or more) fails it. The
 *   max ulp difference is printed.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/cpu_internal.h" /* cpu_conv_bf16_nhwc_impl_name */
#include "ncsn/backend.h"
#include "tests/harness.h"

#define IN_STATS_TOL 1e-6
#define NEAR_ZERO_SLACK (1.0 / 65536.0) /* 2^-16, of max|out| (IN++) or of A (conv) */

static ncsn_backend *be;

/* ---- helpers ----------------------------------------------------------------------------- */

static uint64_t rng_state = 0x243F6A8885A308D3ull;
static float rand_range(float lo, float hi) { return lo + (hi - lo) * (float)harness_rand_uniform(&rng_state); }

static float bf(ncsn_bf16 h) { return ncsn_float_from_bf16(h); }

/* Backend buffer of n bf16 drawn from U(lo, hi) and rounded. */
static ncsn_bf16 *bf16_random(size_t n, float lo, float hi) {
    ncsn_bf16 *p = ncsn_alloc(be, n * sizeof(ncsn_bf16));
    for (size_t i = 0; i < n; i++) p[i] = ncsn_bf16_from_float(rand_range(lo, hi));
    return p;
}

static size_t nhwc_index(int C, int H, int W, int n, int c, int y, int x) {
    return (((size_t)n * H + y) * W + x) * C + c;
}

/* The values of a bf16 NHWC tensor as an fp32 NCHW one (exact). */
static float *nchw_from_nhwc(const ncsn_bf16 *x, int N, int C, int H, int W) {
    float *out = ncsn_alloc(be, (size_t)N * C * H * W * sizeof(float));
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                for (int w = 0; w < W; w++)
                    out[(((size_t)n * C + c) * H + y) * W + w] = bf(x[nhwc_index(C, H, W, n, c, y, w)]);
    return out;
}

/* An fp32 NCHW result rounded to bf16 in NHWC order: the reference of a bf16 op. */
static ncsn_bf16 *nhwc_rounded(const float *x, int N, int C, int H, int W) {
    ncsn_bf16 *out = ncsn_alloc(be, (size_t)N * C * H * W * sizeof(ncsn_bf16));
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                for (int w = 0; w < W; w++)
                    out[nhwc_index(C, H, W, n, c, y, w)] =
                        ncsn_bf16_from_float(x[(((size_t)n * C + c) * H + y) * W + w]);
    return out;
}

static ncsn_bf16 *rounded(const float *x, size_t n) {
    ncsn_bf16 *out = ncsn_alloc(be, n * sizeof(ncsn_bf16));
    for (size_t i = 0; i < n; i++) out[i] = ncsn_bf16_from_float(x[i]);
    return out;
}

/* Distance in bf16 steps (both finite; +0 and -0 are 0 apart). */
static int ulp_distance(ncsn_bf16 a, ncsn_bf16 b) {
    int ia = a & 0x8000 ? -(int)(a & 0x7fff) : (int)a, ib = b & 0x8000 ? -(int)(b & 0x7fff) : (int)b;
    return abs(ia - ib);
}

/* got vs ref, elementwise: identical bits when max_ulp == 0; else within max_ulp bf16
 * steps, or within slack[i] in value (slack may be NULL). Prints the first 5 differences. */
static int expect_bf16(const char *what, const ncsn_bf16 *got, const ncsn_bf16 *ref, size_t n, int max_ulp,
                       const float *slack) {
    harness_checks++;
    size_t bad = 0, identical = 0, by_slack = 0;
    int worst = 0;
    for (size_t i = 0; i < n; i++) {
        if (got[i] == ref[i]) {
            identical++;
            continue;
        }
        const float g = bf(got[i]), r = bf(ref[i]);
        const int finite = isfinite(g) && isfinite(r);
        const int d = finite ? ulp_distance(got[i], ref[i]) : 1 << 20;
        if (d > worst) worst = d;
        int ok = max_ulp > 0 && d <= max_ulp;
        if (!ok && max_ulp > 0 && slack && finite && fabsf(g - r) <= slack[i]) ok = 1, by_slack++;
        if (!ok) {
            if (bad < 5)
                printf("    %s[%zu]: got %.9g (0x%04x) want %.9g (0x%04x), %d ulp\n", what, i, g, got[i], r, ref[i],
                       d);
            bad++;
        }
    }
    if (bad) {
        harness_failures++;
        printf("  FAIL %s: %zu/%zu differ beyond %d ulp (max %d ulp)\n", what, bad, n, max_ulp, worst);
        return 0;
    }
    printf("  ok   %s: n=%zu, %zu bit-identical, max %d ulp%s", what, n, identical, worst,
           by_slack ? "" : "\n");
    if (by_slack) printf(", %zu within the near-zero slack\n", by_slack);
    return 1;
}

/* ---- elementwise ------------------------------------------------------------------------- */

static void test_elementwise_case(size_t n) {
    printf("elementwise n=%zu\n", n);
    ncsn_bf16 *a = bf16_random(n, -4.0f, 4.0f), *b = bf16_random(n, -4.0f, 4.0f);
    ncsn_bf16 *out = ncsn_alloc(be, n * sizeof(ncsn_bf16));
    float *af = ncsn_alloc(be, n * sizeof(float)), *bfl = ncsn_alloc(be, n * sizeof(float));
    float *ref = ncsn_alloc(be, n * sizeof(float));
    for (size_t i = 0; i < n; i++) af[i] = bf(a[i]), bfl[i] = bf(b[i]);

    ncsn_elu_forward_bf16(be, out, a, n);
    ncsn_elu_forward(be, ref, af, n);
    ncsn_bf16 *r = rounded(ref, n);
    expect_bf16("elu_forward_bf16", out, r, n, 0, NULL);
    memcpy(out, a, n * sizeof(ncsn_bf16));
    ncsn_elu_forward_bf16(be, out, out, n); /* in place */
    expect_bf16("elu_forward_bf16 in place", out, r, n, 0, NULL);
    ncsn_free(be, r);

    ncsn_add_bf16(be, out, a, b, n);
    ncsn_add(be, ref, af, bfl, n);
    r = rounded(ref, n);
    expect_bf16("add_bf16", out, r, n, 0, NULL);
    ncsn_free(be, r);

    memcpy(out, a, n * sizeof(ncsn_bf16));
    ncsn_accumulate_bf16(be, out, b, n);
    memcpy(ref, af, n * sizeof(float));
    ncsn_accumulate(be, ref, bfl, n);
    r = rounded(ref, n);
    expect_bf16("accumulate_bf16", out, r, n, 0, NULL);
    ncsn_free(be, r);

    ncsn_free(be, a); ncsn_free(be, b); ncsn_free(be, out); ncsn_free(be, af); ncsn_free(be, bfl); ncsn_free(be, ref);
}

/* ---- pooling and resize ------------------------------------------------------------------ */

typedef enum { POOL_MEAN2, POOL_AVG5, POOL_MAX5, POOL_RESIZE } pool_op;
static const char *const pool_names[] = {"mean_pool2_forward_bf16", "avg_pool5_forward_bf16",
                                         "max_pool5_forward_bf16", "resize_bilinear_forward_bf16"};

/* `x` (bf16 NHWC, N x C x H x W) through the bf16 op and through its fp32 sibling. With
 * `specials`, some inputs become NaN (two payloads, both signs) and -inf. */
static void test_pool_case(pool_op op, int N, int C, int H, int W, int Ho, int Wo, int few_values, int specials) {
    if (op == POOL_MEAN2) Ho = H / 2, Wo = W / 2;
    if (op == POOL_AVG5 || op == POOL_MAX5) Ho = H, Wo = W;
    char what[160];
    snprintf(what, sizeof what, "%s N%d C%d %dx%d -> %dx%d%s%s", pool_names[op], N, C, H, W, Ho, Wo,
             few_values ? " (ties)" : "", specials ? " (NaN, -inf)" : "");
    const size_t ni = (size_t)N * C * H * W, no = (size_t)N * C * Ho * Wo;
    ncsn_bf16 *x = bf16_random(ni, -3.0f, 3.0f);
    /* Few distinct values make many ties, which decide the max pool's choices. */
    if (few_values)
        for (size_t i = 0; i < ni; i++) x[i] = ncsn_bf16_from_float(roundf(bf(x[i])));
    if (specials) {
        const ncsn_bf16 special[4] = {0x7fc1, 0xffc0, 0xff80, 0x7fa0}; /* NaN, -NaN, -inf, signalling NaN */
        for (int k = 0; k < 2 + N * 4; k++) x[(size_t)(harness_rand_uniform(&rng_state) * ni)] = special[k % 4];
    }
    float *xf = nchw_from_nhwc(x, N, C, H, W), *ref = ncsn_alloc(be, no * sizeof(float));
    ncsn_bf16 *out = ncsn_alloc(be, no * sizeof(ncsn_bf16));
    switch (op) {
    case POOL_MEAN2:
        ncsn_mean_pool2_forward_bf16(be, out, x, N, C, H, W);
        ncsn_mean_pool2_forward(be, ref, xf, N, C, H, W);
        break;
    case POOL_AVG5:
        ncsn_avg_pool5_forward_bf16(be, out, x, N, C, H, W);
        ncsn_avg_pool5_forward(be, ref, xf, N, C, H, W);
        break;
    case POOL_MAX5:
        ncsn_max_pool5_forward_bf16(be, out, x, N, C, H, W);
        ncsn_max_pool5_forward(be, ref, xf, N, C, H, W);
        break;
    case POOL_RESIZE:
        ncsn_resize_bilinear_forward_bf16(be, out, x, N, C, H, W, Ho, Wo);
        ncsn_resize_bilinear_forward(be, ref, xf, N, C, H, W, Ho, Wo);
        break;
    }
    ncsn_bf16 *r = nhwc_rounded(ref, N, C, Ho, Wo);
    if (specials) {
        size_t nans = 0;
        for (size_t i = 0; i < no; i++) nans += isnan(bf(r[i]));
        EXPECT(nans > 0, "%s: the NaN inputs reached no output", what);
    }
    expect_bf16(what, out, r, no, 0, NULL);
    ncsn_free(be, x); ncsn_free(be, xf); ncsn_free(be, ref); ncsn_free(be, out); ncsn_free(be, r);
}

static void test_pools(void) {
    printf("pooling and resize\n");
    test_pool_case(POOL_MEAN2, 2, 5, 6, 10, 0, 0, 0, 0);
    test_pool_case(POOL_MEAN2, 3, 64, 16, 16, 0, 0, 0, 0); /* above the parallel threshold */
    test_pool_case(POOL_AVG5, 2, 5, 7, 9, 0, 0, 0, 0);     /* odd sizes */
    test_pool_case(POOL_AVG5, 1, 3, 2, 3, 0, 0, 0, 0);     /* smaller than the window */
    test_pool_case(POOL_AVG5, 3, 64, 16, 12, 0, 0, 0, 0);
    test_pool_case(POOL_MAX5, 2, 5, 7, 9, 0, 0, 0, 0);
    test_pool_case(POOL_MAX5, 2, 5, 7, 9, 0, 0, 1, 0);     /* ties */
    test_pool_case(POOL_MAX5, 1, 3, 2, 3, 0, 0, 1, 0);
    test_pool_case(POOL_MAX5, 3, 64, 16, 12, 0, 0, 1, 0);
    /* NaN (the first one of the window wins), -inf; the 5x5 pools split work by images when
     * N >= threads and by rows otherwise, so both with N = 1 and N = 17 */
    test_pool_case(POOL_MAX5, 1, 7, 9, 11, 0, 0, 1, 1);
    test_pool_case(POOL_MAX5, 17, 5, 7, 9, 0, 0, 1, 1);
    test_pool_case(POOL_AVG5, 17, 5, 7, 9, 0, 0, 0, 0);
    test_pool_case(POOL_RESIZE, 2, 7, 5, 7, 9, 13, 0, 0);  /* up, odd */
    test_pool_case(POOL_RESIZE, 1, 16, 8, 8, 3, 5, 0, 0);  /* down */
    test_pool_case(POOL_RESIZE, 2, 4, 6, 6, 1, 1, 0, 0);   /* one output pixel: scale 0 */
    test_pool_case(POOL_RESIZE, 3, 64, 8, 8, 16, 16, 0, 0);
}

/* ---- the network's ends: bf16_from_nchw, nchw_from_bf16 ---------------------------------- */

static void test_import_export(int N, int C, int H, int W) {
    printf("bf16_from_nchw / nchw_from_bf16 N%d C%d %dx%d\n", N, C, H, W);
    const size_t n = (size_t)N * C * H * W;
    float *x = ncsn_alloc(be, n * sizeof(float)), *ref = ncsn_alloc(be, n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = rand_range(0.0f, 1.0f); /* an image in [0, 1], not bf16-valued */
    ncsn_bf16 *h = ncsn_alloc(be, n * sizeof(ncsn_bf16));
    ncsn_bf16_from_nchw(be, h, x, 2.0f, -1.0f, N, C, H, W); /* the model's 2x - 1 */
    ncsn_scale_shift(be, ref, x, 2.0f, -1.0f, n);
    ncsn_bf16 *r = nhwc_rounded(ref, N, C, H, W);
    expect_bf16("bf16_from_nchw", h, r, n, 0, NULL);

    /* Back, through the v2 head's division, with distinct labels per example. */
    const int L = 4;
    float *sigmas = ncsn_alloc(be, L * sizeof(float));
    int32_t *labels = ncsn_alloc(be, (size_t)N * sizeof(int32_t));
    for (int l = 0; l < L; l++) sigmas[l] = 50.0f * powf(0.3f, (float)l);
    for (int k = 0; k < N; k++) labels[k] = (k * 3 + 1) % L;
    float *back = ncsn_alloc(be, n * sizeof(float)), *hf = nchw_from_nhwc(h, N, C, H, W);
    ncsn_nchw_from_bf16(be, back, h, sigmas, labels, N, C, H, W);
    ncsn_divide_by_sigma(be, ref, hf, sigmas, labels, N, (size_t)C * H * W);
    size_t first_bad = n;
    for (size_t i = 0; i < n && first_bad == n; i++)
        if (memcmp(&back[i], &ref[i], sizeof(float))) first_bad = i;
    EXPECT(first_bad == n, "nchw_from_bf16 / sigma differs from divide_by_sigma at %zu: got %.9g want %.9g", first_bad,
           first_bad < n ? back[first_bad] : 0.0, first_bad < n ? ref[first_bad] : 0.0);
    ncsn_nchw_from_bf16(be, back, h, NULL, NULL, N, C, H, W);
    const int copy_exact = !memcmp(back, hf, n * sizeof(float));
    EXPECT(copy_exact, "nchw_from_bf16 without sigmas is not an exact copy");
    if (first_bad == n && copy_exact) printf("  ok   nchw_from_bf16: n=%zu bit-identical with and without sigmas\n", n);
    ncsn_free(be, x); ncsn_free(be, ref); ncsn_free(be, h); ncsn_free(be, r); ncsn_free(be, sigmas);
    ncsn_free(be, labels); ncsn_free(be, back); ncsn_free(be, hf);
}

/* ---- InstanceNorm++ ------------------------------------------------------------------------ */

/* L = 0: unconditional (gamma, alpha, beta of C; stride 0, no labels); else an [L, 3C]
 * embedding with labels. Channels get their own offset and spread, as real activations do. */
static void test_norm_case(int N, int C, int H, int W, int L, int elu) {
    char what[160];
    snprintf(what, sizeof what, "instance_norm_plus_forward_bf16 N%d C%d %dx%d %s elu=%d", N, C, H, W,
             L ? "conditional" : "unconditional", elu);
    printf("%s\n", what);
    const size_t n = (size_t)N * C * H * W, nstats = NCSN_NORM_STATS_COUNT(N, C);
    ncsn_bf16 *x = ncsn_alloc(be, n * sizeof(ncsn_bf16));
    for (int c = 0; c < C; c++) {
        const float offset = rand_range(-2.0f, 2.0f), spread = rand_range(0.25f, 2.0f);
        for (int k = 0; k < N; k++)
            for (size_t p = 0; p < (size_t)H * W; p++)
                x[((size_t)k * H * W + p) * C + c] = ncsn_bf16_from_float(offset + spread * rand_range(-1.0f, 1.0f));
    }
    const int rows = L ? L : 1, stride = L ? 3 * C : 0;
    float *params = ncsn_alloc(be, (size_t)rows * 3 * C * sizeof(float));
    for (size_t i = 0; i < (size_t)rows * 3 * C; i++) params[i] = rand_range(0.5f, 1.5f);
    float *gamma = params, *alpha = params + C, *beta = params + 2 * C; /* row 0; rows are `stride` apart */
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < C; c++) beta[(size_t)r * stride + c] = rand_range(-0.5f, 0.5f);
    int32_t *labels = NULL;
    if (L) {
        labels = ncsn_alloc(be, (size_t)N * sizeof(int32_t));
        for (int k = 0; k < N; k++) labels[k] = (L - 1 - k) % L;
    }
    ncsn_bf16 *out = ncsn_alloc(be, n * sizeof(ncsn_bf16));
    float *stats = ncsn_alloc(be, nstats * sizeof(float)), *ref_stats = ncsn_alloc(be, nstats * sizeof(float));
    ncsn_instance_norm_plus_forward_bf16(be, out, x, gamma, alpha, beta, stride, labels, stats, N, C, H, W, elu);
    float *xf = nchw_from_nhwc(x, N, C, H, W), *ref = ncsn_alloc(be, n * sizeof(float));
    ncsn_instance_norm_plus_forward(be, ref, xf, gamma, alpha, beta, stride, labels, ref_stats, N, C, H, W, elu);

    double *ref_stats_d = malloc(nstats * sizeof(double));
    size_t stats_identical = 0;
    for (size_t i = 0; i < nstats; i++) {
        ref_stats_d[i] = ref_stats[i];
        stats_identical += !memcmp(&stats[i], &ref_stats[i], sizeof(float));
    }
    harness_expect_close("  stats [mean | rstd | mhat | s]", stats, ref_stats_d, nstats, IN_STATS_TOL, IN_STATS_TOL);
    printf("       %zu/%zu stats bit-identical to the fp32 op's\n", stats_identical, nstats);
    ncsn_bf16 *r = nhwc_rounded(ref, N, C, H, W);
    float max_ref = 0.0f;
    for (size_t i = 0; i < n; i++) max_ref = fmaxf(max_ref, fabsf(ref[i]));
    float *slack = ncsn_alloc(be, n * sizeof(float));
    for (size_t i = 0; i < n; i++) slack[i] = (float)(NEAR_ZERO_SLACK * max_ref);
    expect_bf16("  out", out, r, n, 1, slack);
    ncsn_free(be, x); ncsn_free(be, params); ncsn_free(be, out); ncsn_free(be, stats); ncsn_free(be, ref_stats);
    ncsn_free(be, xf); ncsn_free(be, ref); ncsn_free(be, r); ncsn_free(be, slack);
    if (labels) ncsn_free(be, labels);
    free(ref_stats_d);
}

static void test_norm(void) {
    for (int elu = 0; elu <= 1; elu++) {
        test_norm_case(3, 16, 7, 5, 0, elu);   /* unconditional, odd sizes */
        test_norm_case(2, 32, 8, 8, 4, elu);   /* conditional, labels into an [L, 3C] table */
        test_norm_case(2, 1, 6, 6, 0, elu);    /* C = 1: mhat defined as 0 */
        test_norm_case(2, 1, 6, 6, 3, elu);
        test_norm_case(1, 128, 16, 16, 5, elu); /* one example, parallel over rows */
    }
}

/* ---- convolution ------------------------------------------------------------------------- */

/* Weights packed ONCE from the N = 1 descriptor and used at N = 1 and N = 5 on backend
 * `cb`: the packed layout must not depend on N. With `flip`, cb builds its N = 5 primitive
 * the other way round from its N = 1 one (jit bf16 vs the forced fp32 fallback), so the
 * N = 5 call must reorder the packed weights into its own layout. */
static void test_conv_case(ncsn_backend *cb, int C, int H, int W, int K, int ksize, int dilation, int has_bias,
                           int flip) {
    const int batches[2] = {1, 5};
    ncsn_conv_desc d1 = {1, C, H, W, K, ksize, dilation, has_bias}, d5 = d1;
    d5.N = 5;
    printf("conv2d_forward_bf16 C%d %dx%d K%d k%d d%d %s%s\n", C, H, W, K, ksize, dilation,
           has_bias ? "bias" : "no bias", flip ? " (N=5 built the other way: weights reordered per call)" : "");
    const size_t bytes = ncsn_conv2d_packed_weights_bytes(cb, &d1);
    EXPECT(bytes == ncsn_conv2d_packed_weights_bytes(cb, &d5), "packed bytes %zu at N=1, %zu at N=5", bytes,
           ncsn_conv2d_packed_weights_bytes(cb, &d5));
    EXPECT(bytes % 256 == 0 && bytes >= (size_t)K * C * ksize * ksize * sizeof(ncsn_bf16),
           "packed bytes %zu for %d weights", bytes, K * C * ksize * ksize);
    const size_t nw = (size_t)K * C * ksize * ksize;
    float *w = ncsn_alloc(be, nw * sizeof(float)), *b = ncsn_alloc(be, (size_t)K * sizeof(float));
    float *w_rounded = ncsn_alloc(be, nw * sizeof(float)), *w_abs = ncsn_alloc(be, nw * sizeof(float));
    const float bound = 1.0f / sqrtf((float)(C * ksize * ksize)); /* PyTorch's init scale */
    for (size_t i = 0; i < nw; i++) {
        w[i] = rand_range(-bound, bound);
        w_rounded[i] = bf(ncsn_bf16_from_float(w[i]));
        w_abs[i] = fabsf(w_rounded[i]);
    }
    for (int k = 0; k < K; k++) b[k] = rand_range(-bound, bound);
    void *packed = ncsn_alloc(be, bytes);
    ncsn_conv2d_pack_weights_bf16(cb, packed, w, has_bias ? b : NULL, &d1);

    for (int bi = 0; bi < 2; bi++) {
        const int N = batches[bi];
        ncsn_conv_desc d = d1;
        d.N = N;
        const size_t ni = (size_t)N * C * H * W, no = (size_t)N * K * H * W;
        if (flip && N != 1) {
            cpu_backend_impl *impl = cb->impl;
            impl->bf16_nhwc_force_fp32 = !impl->bf16_nhwc_force_fp32;
        }
        ncsn_bf16 *x = bf16_random(ni, -1.0f, 1.0f), *out = ncsn_alloc(be, no * sizeof(ncsn_bf16));
        ncsn_conv2d_forward_bf16(cb, out, x, packed, NULL, 0, &d);
        /* The reference in strict fp32; the magnitudes A for the cancellation slack. */
        float *xf = nchw_from_nhwc(x, N, C, H, W), *ref = ncsn_alloc(be, no * sizeof(float));
        float *magnitude = ncsn_alloc(be, no * sizeof(float));
        const ncsn_precision saved = be->precision;
        be->precision = NCSN_PRECISION_FP32;
        ncsn_conv2d_forward(be, ref, xf, w_rounded, has_bias ? b : NULL, &d);
        for (size_t i = 0; i < ni; i++) xf[i] = fabsf(xf[i]);
        ncsn_conv_desc d_abs = d;
        d_abs.has_bias = 0;
        ncsn_conv2d_forward(be, magnitude, xf, w_abs, NULL, &d_abs);
        be->precision = saved;
        ncsn_bf16 *r = nhwc_rounded(ref, N, K, H, W);
        float *slack = ncsn_alloc(be, no * sizeof(float));
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++)
                for (size_t p = 0; p < (size_t)H * W; p++) {
                    const size_t i = ((size_t)n * K + k) * H * W + p;
                    slack[(size_t)n * H * W * K + p * K + k] =
                        (float)(NEAR_ZERO_SLACK * (magnitude[i] + (has_bias ? fabsf(b[k]) : 0.0f)));
                }
        char what[128];
        snprintf(what, sizeof what, "  N=%d (%s)", N, cpu_conv_bf16_nhwc_impl_name(cb, &d));
        expect_bf16(what, out, r, no, 1, slack);

        /* The epilogue: bf16(ELU(conv + b + residual)) with a separate residual, and
         * bf16(conv + b + out) in place. Reference: the fp32 conv plus the residual, then the
         * ELU (ncsn_elu), rounded once. oneDNN's post-op ELU is its own vectorised expm1, so
         * like the CPU ELU op it may round the other way at a bf16 boundary: 1 ulp, and the
         * slack grows by |residual| (the sum's magnitude). */
        ncsn_bf16 *res = bf16_random(no, -1.0f, 1.0f), *out_res = ncsn_alloc(be, no * sizeof(ncsn_bf16));
        ncsn_bf16 *out_acc = ncsn_alloc(be, no * sizeof(ncsn_bf16));
        memcpy(out_acc, res, no * sizeof(ncsn_bf16));
        ncsn_conv2d_forward_bf16(cb, out_res, x, packed, res, 1, &d);
        ncsn_conv2d_forward_bf16(cb, out_acc, x, packed, out_acc, 0, &d);
        ncsn_bf16 *r_elu = ncsn_alloc(be, no * sizeof(ncsn_bf16)), *r_acc = ncsn_alloc(be, no * sizeof(ncsn_bf16));
        float *slack_res = ncsn_alloc(be, no * sizeof(float));
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++)
                for (size_t p = 0; p < (size_t)H * W; p++) {
                    const size_t i = ((size_t)n * K + k) * H * W + p, o = (size_t)n * H * W * K + p * K + k;
                    const float sum = ref[i] + bf(res[o]);
                    r_elu[o] = ncsn_bf16_from_float(ncsn_elu(sum));
                    r_acc[o] = ncsn_bf16_from_float(sum);
                    slack_res[o] = slack[o] + (float)(NEAR_ZERO_SLACK * fabsf(bf(res[o])));
                }
        snprintf(what, sizeof what, "  N=%d + residual, ELU", N);
        expect_bf16(what, out_res, r_elu, no, 1, slack_res);
        snprintf(what, sizeof what, "  N=%d += in place (residual = out)", N);
        expect_bf16(what, out_acc, r_acc, no, 1, slack_res);
        ncsn_free(be, res); ncsn_free(be, out_res); ncsn_free(be, out_acc); ncsn_free(be, r_elu);
        ncsn_free(be, r_acc); ncsn_free(be, slack_res);
        ncsn_free(be, x); ncsn_free(be, out); ncsn_free(be, xf); ncsn_free(be, ref); ncsn_free(be, magnitude);
        ncsn_free(be, r); ncsn_free(be, slack);
    }
    if (flip) {
        cpu_backend_impl *impl = cb->impl;
        impl->bf16_nhwc_force_fp32 = !impl->bf16_nhwc_force_fp32; /* as the caller set it */
    }
    ncsn_free(be, w); ncsn_free(be, b); ncsn_free(be, w_rounded); ncsn_free(be, w_abs); ncsn_free(be, packed);
}

static void test_conv(void) {
    test_conv_case(be, 8, 9, 7, 16, 3, 1, 1, 0);     /* odd sizes */
    test_conv_case(be, 16, 6, 10, 8, 3, 2, 0, 0);    /* dilation 2, no bias */
    test_conv_case(be, 32, 11, 13, 32, 3, 4, 1, 0);  /* dilation 4: taps beyond the image */
    test_conv_case(be, 24, 5, 5, 40, 1, 1, 1, 0);    /* 1x1 (shortcut) */
    test_conv_case(be, 24, 5, 5, 40, 1, 1, 0, 0);
    test_conv_case(be, 3, 8, 8, 32, 3, 1, 1, 0);     /* first conv of a colour model */
    test_conv_case(be, 1, 7, 7, 16, 3, 1, 1, 0);     /* first conv of a greyscale model */
    test_conv_case(be, 32, 8, 8, 3, 3, 1, 1, 0);     /* last conv, K = 3 */
    test_conv_case(be, 19, 5, 3, 21, 3, 2, 0, 0);    /* channel tails of the blocked layouts */
    test_conv_case(be, 128, 8, 8, 128, 3, 1, 1, 0);  /* a hidden layer: 1152 terms per output */

    /* The paths no shape on this CPU takes by itself, on fresh backends (the flag acts on
     * entries as they are built): the fp32 fallback, with the packed layout defined by a
     * jit primitive and by the fallback itself (plain bf16 OIHW), and the per-call reorder
     * of packed weights that a primitive wants in another layout. */
    for (int fallback_packs = 0; fallback_packs <= 1; fallback_packs++) {
        printf("forced fp32 fallback %s\n", fallback_packs ? "at N=1 (packing), jit at N=5" : "at N=5, jit at N=1");
        ncsn_backend *forced = harness_cpu_backend();
        ((cpu_backend_impl *)forced->impl)->bf16_nhwc_force_fp32 = fallback_packs;
        test_conv_case(forced, 16, 6, 10, 24, 3, 2, 1, 1);
        test_conv_case(forced, 3, 8, 8, 16, 3, 1, 0, 1);
        ncsn_cpu_backend_destroy(forced);
    }
}

int main(void) {
    be = harness_cpu_backend();
    test_elementwise_case(37);    /* serial */
    test_elementwise_case(40001); /* parallel, odd length */
    test_pools();
    test_import_export(2, 3, 5, 7);
    test_import_export(3, 1, 32, 32);
    test_norm();
    test_conv();
    ncsn_cpu_backend_destroy(be);
    return harness_finish("test_ops_bf16");
}
