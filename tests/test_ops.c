/* test_ops.c: every op of the CPU backend against a naive float64 implementation written
 * here, and every backward against central finite differences of that float64 forward.
 *
 * Gradient checks use a random projection loss L = sum(out * r) with a fixed random r, so
 * one backward call with dout = r gives dL/d(input) for all inputs at once, and one central
 * difference (L(x + h e_i) - L(x - h e_i)) / 2h per input element checks it.
 *
 * Tolerances (atol is relative to the largest |reference| of the array, so they are scale
 * free; rtol the same number):
 * - TOL_SUM = 2e-5: ops whose fp32 result is a sum of up to ~200 products (convolutions,
 *   5x5 pools, gradients summed over a plane). fp32 rounding of a K-term sum is bounded by
 *   about K * 2^-24 * sum|terms| ~ 1.2e-5 for K = 200; random signs make it far smaller.
 * - TOL_ELEM = 1e-6: per-element ops with a handful of fp32 roundings (a few ulp).
 * - TOL_NORM = 1e-4: InstanceNorm++, whose fp32 output and stored fp32 statistics are
 *   subtracted ((x - mu) * rstd) and divided by small deviations (rstd up to 1/sqrt(eps)),
 *   amplifying 1-ulp errors of mu and rstd by |x - mu| / std ~ a few; and the FD of the
 *   float64 forward has truncation error O(h^2) ~ 1e-8 relative with h = 1e-4.
 * Linear ops are checked with h = 1e-2: their central differences are exact up to float64
 * rounding of L (~1e-14 relative).
 * Accumulate flags: each activation-gradient backward runs once overwriting and once with
 * accumulate = 1 on a prefilled buffer; parameter gradients always start prefilled, so a
 * missing += shows as an offset.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ncsn/backend.h"
#include "tests/harness.h"

#define TOL_SUM 2e-5
#define TOL_ELEM 1e-6
#define TOL_NORM 1e-4

static ncsn_backend *be;

/* ---- helpers ----------------------------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double rand_uniform(void) { return harness_rand_uniform(&rng_state); }
static float rand_sym(void) { return (float)(2.0 * rand_uniform() - 1.0); }

/* Backend buffer of n floats (host memory on the CPU backend), filled with U(-1, 1). */
static float *buf_random(size_t n) {
    float *p = ncsn_alloc(be, n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = rand_sym();
    return p;
}
static float *buf_zero(size_t n) { return ncsn_alloc(be, n * sizeof(float)); }
static float *buf_copy(const float *src, size_t n) {
    float *p = ncsn_alloc(be, n * sizeof(float));
    memcpy(p, src, n * sizeof(float));
    return p;
}
static double *to_double(const float *src, size_t n) {
    double *p = malloc((n ? n : 1) * sizeof(double));
    for (size_t i = 0; i < n; i++) p[i] = src[i];
    return p;
}
static double max_abs(const double *x, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
    return m;
}
/* Scale-free comparison: atol = tol * max|ref| (at least tol * 1e-3), rtol = tol. */
static int expect_close(const char *what, const float *got, const double *ref, size_t n, double tol) {
    double scale = fmax(max_abs(ref, n), 1e-3);
    return harness_expect_close(what, got, ref, n, tol * scale, tol);
}
/* ref_acc[i] = before[i] + grad[i]: what an accumulating output must hold. */
static double *plus(const float *before, const double *grad, size_t n) {
    double *p = malloc((n ? n : 1) * sizeof(double));
    for (size_t i = 0; i < n; i++) p[i] = (double)before[i] + grad[i];
    return p;
}

/* Central finite differences of a float64 loss with respect to each element of `x`. */
typedef double (*loss_fn)(void *ctx);
static void finite_diff(double *grad, double *x, size_t n, double h, loss_fn loss, void *ctx) {
    for (size_t i = 0; i < n; i++) {
        double saved = x[i];
        x[i] = saved + h;
        double up = loss(ctx);
        x[i] = saved - h;
        double down = loss(ctx);
        x[i] = saved;
        grad[i] = (up - down) / (2.0 * h);
    }
}
static double dot(const double *a, const double *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* ---- memory ops ---------------------------------------------------------------------------- */

static void test_memory(void) {
    printf("memory\n");
    size_t n = 1000;
    unsigned char *p = ncsn_alloc(be, n);
    EXPECT(((uintptr_t)p % 256) == 0, "alloc not 256-byte aligned: %p", (void *)p);
    int nonzero = 0;
    for (size_t i = 0; i < n; i++) nonzero += p[i] != 0;
    EXPECT(nonzero == 0, "alloc not zero-filled: %d nonzero bytes", nonzero);
    float src[7] = {1, 2, 3, 4, 5, 6, 7}, back[7] = {0};
    float *d = ncsn_alloc(be, sizeof src), *e = ncsn_alloc(be, sizeof src);
    ncsn_copy_to_device(be, d, src, sizeof src);
    ncsn_copy(be, e, d, sizeof src);
    ncsn_copy_to_host(be, back, e, sizeof src);
    ncsn_synchronize(be);
    EXPECT(!memcmp(back, src, sizeof src), "copy round trip changed the data");
    ncsn_memset_zero(be, e, 3 * sizeof(float));
    EXPECT(e[0] == 0 && e[2] == 0 && e[3] == 4, "memset_zero: got %g %g %g", e[0], e[2], e[3]);
    ncsn_free(be, p);
    ncsn_free(be, d);
    ncsn_free(be, e);
}

/* ---- convolution ----------------------------------------------------------------------------- */

typedef struct {
    ncsn_conv_desc d;
    double *x, *w, *b, *r; /* float64 copies; r = projection of the output */
} conv_ctx;

static void conv_ref(const conv_ctx *c, double *out) {
    const ncsn_conv_desc *d = &c->d;
    int ks = d->ksize, pad = d->dilation * (ks / 2);
    for (int n = 0; n < d->N; n++)
        for (int k = 0; k < d->K; k++)
            for (int y = 0; y < d->H; y++)
                for (int x = 0; x < d->W; x++) {
                    double s = d->has_bias ? c->b[k] : 0.0;
                    for (int ci = 0; ci < d->C; ci++)
                        for (int ky = 0; ky < ks; ky++) {
                            int iy = y - pad + ky * d->dilation;
                            if (iy < 0 || iy >= d->H) continue;
                            for (int kx = 0; kx < ks; kx++) {
                                int ix = x - pad + kx * d->dilation;
                                if (ix < 0 || ix >= d->W) continue;
                                s += c->x[(((size_t)n * d->C + ci) * d->H + iy) * d->W + ix] *
                                     c->w[(((size_t)k * d->C + ci) * ks + ky) * ks + kx];
                            }
                        }
                    out[(((size_t)n * d->K + k) * d->H + y) * d->W + x] = s;
                }
}

static double conv_loss(void *ctx) {
    conv_ctx *c = ctx;
    size_t no = (size_t)c->d.N * c->d.K * c->d.H * c->d.W;
    double *out = malloc(no * sizeof(double));
    conv_ref(c, out);
    double l = dot(out, c->r, no);
    free(out);
    return l;
}

static void test_conv_case(int N, int C, int H, int W, int K, int ksize, int dilation, int has_bias) {
    ncsn_conv_desc d = {N, C, H, W, K, ksize, dilation, has_bias};
    char name[160];
    snprintf(name, sizeof name, "conv N%d C%d %dx%d K%d k%d d%d %s", N, C, H, W, K, ksize, dilation,
             has_bias ? "bias" : "nobias");
    printf("%s\n", name);
    size_t ni = (size_t)N * C * H * W, no = (size_t)N * K * H * W, nw = (size_t)K * C * ksize * ksize;
    float *x = buf_random(ni), *w = buf_random(nw), *b = buf_random(K), *r = buf_random(no);
    float *out = buf_random(no);
    conv_ctx c = {d, to_double(x, ni), to_double(w, nw), to_double(b, K), to_double(r, no)};

    ncsn_conv2d_forward(be, out, x, w, has_bias ? b : NULL, &d);
    double *ref = malloc(no * sizeof(double));
    conv_ref(&c, ref);
    expect_close("  forward", out, ref, no, TOL_SUM);
    /* Forward twice with the same descriptor: the cached primitive must give the same result. */
    float *out2 = buf_zero(no);
    ncsn_conv2d_forward(be, out2, x, w, has_bias ? b : NULL, &d);
    EXPECT(!memcmp(out, out2, no * sizeof(float)), "second forward through the cache differs");

    /* backward-data: overwrite, then accumulate onto a prefilled buffer */
    double *gx = malloc(ni * sizeof(double));
    finite_diff(gx, c.x, ni, 1e-2, conv_loss, &c);
    float *din = buf_random(ni);
    ncsn_conv2d_backward_data(be, din, r, w, &d, 0);
    expect_close("  backward_data vs FD", din, gx, ni, TOL_SUM);
    float *din_acc = buf_random(ni);
    double *gx_acc = plus(din_acc, gx, ni);
    ncsn_conv2d_backward_data(be, din_acc, r, w, &d, 1);
    expect_close("  backward_data accumulate", din_acc, gx_acc, ni, TOL_SUM);

    /* backward-weights: always accumulates */
    double *gw = malloc(nw * sizeof(double)), *gb = malloc((size_t)K * sizeof(double));
    finite_diff(gw, c.w, nw, 1e-2, conv_loss, &c);
    float *dw = buf_random(nw), *db = buf_random(K);
    double *gw_acc = plus(dw, gw, nw);
    float *db_before = buf_copy(db, K);
    ncsn_conv2d_backward_weights_accumulate(be, dw, has_bias ? db : NULL, x, r, &d);
    expect_close("  backward_weights (+=) vs FD", dw, gw_acc, nw, TOL_SUM);
    if (has_bias) {
        finite_diff(gb, c.b, K, 1e-2, conv_loss, &c);
        double *gb_acc = plus(db_before, gb, K);
        expect_close("  backward_bias (+=) vs FD", db, gb_acc, K, TOL_SUM);
        free(gb_acc);
    } else {
        EXPECT(!memcmp(db, db_before, (size_t)K * sizeof(float)), "db written although has_bias = 0");
    }

    free(c.x); free(c.w); free(c.b); free(c.r); free(ref); free(gx); free(gx_acc); free(gw); free(gb); free(gw_acc);
    ncsn_free(be, x); ncsn_free(be, w); ncsn_free(be, b); ncsn_free(be, r); ncsn_free(be, out); ncsn_free(be, out2);
    ncsn_free(be, din); ncsn_free(be, din_acc); ncsn_free(be, dw); ncsn_free(be, db); ncsn_free(be, db_before);
}

static void test_conv(void) {
    test_conv_case(1, 1, 1, 1, 1, 1, 1, 1);   /* everything 1 */
    test_conv_case(1, 1, 1, 1, 2, 3, 1, 0);   /* 3x3 kernel on a 1x1 image: only the centre tap */
    test_conv_case(3, 5, 7, 6, 4, 3, 1, 0);   /* odd sizes, N = 3, no bias */
    test_conv_case(2, 3, 9, 5, 6, 3, 2, 1);   /* dilation 2 */
    test_conv_case(1, 2, 5, 11, 3, 3, 4, 1);  /* dilation 4: taps beyond the image on both sides */
    test_conv_case(3, 17, 5, 3, 9, 1, 1, 1);  /* 1x1 conv (shortcut), channels not a multiple of 8 */
    test_conv_case(2, 16, 4, 4, 32, 3, 1, 1); /* multiples of 16: the blocked layouts' fast path */
    test_conv_case(1, 19, 5, 3, 21, 3, 2, 0); /* blocked layouts with channel tails */
    test_conv_case(2, 3, 6, 6, 1, 3, 1, 1);   /* K = 1 (final conv to one channel) */
}

/* ---- InstanceNorm++ ------------------------------------------------------------------------ */

typedef struct {
    int N, C, H, W, stride;
    const int32_t *labels;
    double *x, *gamma, *alpha, *beta, *r; /* gamma/alpha/beta may point into one embed table */
} norm_ctx;

/* Float64 InstanceNorm2dPlus / ConditionalInstanceNorm2dPlus (spec 1.2). stats as backend.h. */
static void norm_ref(const norm_ctx *c, double *out, double *stats) {
    int N = c->N, C = c->C;
    size_t P = (size_t)c->H * c->W, NC = (size_t)N * C;
    double *mu = malloc(NC * sizeof(double)), *rstd = malloc(NC * sizeof(double)), *mhat = malloc(NC * sizeof(double));
    for (size_t nc = 0; nc < NC; nc++) {
        double s = 0, q = 0;
        for (size_t i = 0; i < P; i++) s += c->x[nc * P + i];
        mu[nc] = s / P;
        for (size_t i = 0; i < P; i++) q += (c->x[nc * P + i] - mu[nc]) * (c->x[nc * P + i] - mu[nc]);
        rstd[nc] = 1.0 / sqrt(q / P + 1e-5);
    }
    for (int n = 0; n < N; n++) {
        double M = 0, V = 0, s = 0;
        for (int ch = 0; ch < C; ch++) M += mu[n * C + ch];
        M /= C;
        for (int ch = 0; ch < C; ch++) V += (mu[n * C + ch] - M) * (mu[n * C + ch] - M);
        if (C > 1) {
            V /= (C - 1);
            s = 1.0 / sqrt(V + 1e-5);
        }
        for (int ch = 0; ch < C; ch++) mhat[n * C + ch] = C > 1 ? (mu[n * C + ch] - M) * s : 0.0;
        if (stats) stats[3 * NC + n] = s;
    }
    for (size_t nc = 0; nc < NC; nc++) {
        int n = (int)(nc / C), ch = (int)(nc % C);
        size_t p = (c->labels ? (size_t)c->labels[n] * c->stride : 0) + ch;
        for (size_t i = 0; i < P; i++)
            out[nc * P + i] =
                c->gamma[p] * ((c->x[nc * P + i] - mu[nc]) * rstd[nc] + c->alpha[p] * mhat[nc]) + c->beta[p];
        if (stats) {
            stats[nc] = mu[nc];
            stats[NC + nc] = rstd[nc];
            stats[2 * NC + nc] = mhat[nc];
        }
    }
    free(mu); free(rstd); free(mhat);
}

static double norm_loss(void *ctx) {
    norm_ctx *c = ctx;
    size_t n = (size_t)c->N * c->C * c->H * c->W;
    double *out = malloc(n * sizeof(double));
    norm_ref(c, out, NULL);
    double l = dot(out, c->r, n);
    free(out);
    return l;
}

/* L = number of label rows (0: unconditional, parameters of shape [C]). */
static void test_norm_case(int N, int C, int H, int W, int L, const int32_t *labels_host) {
    char name[128];
    snprintf(name, sizeof name, "instance_norm_plus N%d C%d %dx%d %s", N, C, H, W,
             L ? "conditional" : "unconditional");
    printf("%s\n", name);
    size_t n = (size_t)N * C * H * W, NC = (size_t)N * C, nstats = NCSN_NORM_STATS_COUNT(N, C);
    int stride = L ? 3 * C : 0;
    size_t nparam = L ? (size_t)L * 3 * C : 3 * (size_t)C;
    float *x = buf_random(n), *r = buf_random(n), *params = buf_random(nparam);
    /* Give every plane its own offset and scale so the channel means differ. */
    for (size_t nc = 0; nc < NC; nc++)
        for (int i = 0; i < H * W; i++) x[nc * H * W + i] = x[nc * H * W + i] * (0.5f + (float)(nc % 3)) + 0.3f * (float)(nc % 5);
    float *gamma = params, *alpha = params + C, *beta = params + 2 * C; /* either layout */
    int32_t *labels = NULL;
    if (L) {
        labels = ncsn_alloc(be, (size_t)N * sizeof(int32_t));
        memcpy(labels, labels_host, (size_t)N * sizeof(int32_t));
    }
    norm_ctx c = {N, C, H, W, stride, labels_host, to_double(x, n), NULL, NULL, NULL, to_double(r, n)};
    double *dparams = to_double(params, nparam);
    c.gamma = dparams;
    c.alpha = dparams + C;
    c.beta = dparams + 2 * C;

    float *out = buf_random(n), *stats = buf_random(nstats);
    ncsn_instance_norm_plus_forward(be, out, x, gamma, alpha, beta, stride, labels, stats, N, C, H, W, 0);
    /* The fused ELU (elu = 1) must equal the two passes bit for bit: one element function
     * (ncsn_in_plus_elu_element), the fp32 value rounded once either way. */
    float *out_elu = buf_random(n), *stats_elu = buf_random(nstats), *out_then_elu = buf_zero(n);
    ncsn_instance_norm_plus_forward(be, out_elu, x, gamma, alpha, beta, stride, labels, stats_elu, N, C, H, W, 1);
    ncsn_elu_forward(be, out_then_elu, out, n);
    EXPECT(memcmp(out_elu, out_then_elu, n * sizeof(float)) == 0, "fused norm+ELU differs from norm then ELU");
    EXPECT(memcmp(stats_elu, stats, nstats * sizeof(float)) == 0, "fused norm+ELU saved different statistics");
    ncsn_free(be, out_elu); ncsn_free(be, stats_elu); ncsn_free(be, out_then_elu);
    double *ref = malloc(n * sizeof(double)), *ref_stats = malloc(nstats * sizeof(double));
    norm_ref(&c, ref, ref_stats);
    expect_close("  forward", out, ref, n, TOL_NORM);
    expect_close("  stats [mean | rstd | mhat | s]", stats, ref_stats, nstats, TOL_NORM);

    /* dx: overwrite and accumulate */
    double *gx = malloc(n * sizeof(double));
    finite_diff(gx, c.x, n, 1e-4, norm_loss, &c);
    float *dx = buf_random(n), *dx_acc = buf_random(n);
    double *gx_acc = plus(dx_acc, gx, n);
    /* parameter gradients accumulate into the same layout as the parameters */
    double *gp = malloc(nparam * sizeof(double));
    finite_diff(gp, dparams, nparam, 1e-4, norm_loss, &c);
    float *dparam = buf_random(nparam);
    double *gp_acc = plus(dparam, gp, nparam);
    ncsn_instance_norm_plus_backward(be, dx, dparam, dparam + C, dparam + 2 * C, r, x, gamma, alpha, stride, labels,
                                     stats, N, C, H, W, 0);
    expect_close("  backward dx vs FD", dx, gx, n, TOL_NORM);
    expect_close("  backward dgamma|dalpha|dbeta (+=) vs FD", dparam, gp_acc, nparam, TOL_NORM);
    float *dscratch = buf_zero(nparam);
    ncsn_instance_norm_plus_backward(be, dx_acc, dscratch, dscratch + C, dscratch + 2 * C, r, x, gamma, alpha, stride,
                                     labels, stats, N, C, H, W, 1);
    expect_close("  backward dx accumulate", dx_acc, gx_acc, n, TOL_NORM);

    free(c.x); free(c.r); free(dparams); free(ref); free(ref_stats); free(gx); free(gx_acc); free(gp); free(gp_acc);
    ncsn_free(be, x); ncsn_free(be, r); ncsn_free(be, params); ncsn_free(be, out); ncsn_free(be, stats);
    ncsn_free(be, dx); ncsn_free(be, dx_acc); ncsn_free(be, dparam); ncsn_free(be, dscratch);
    if (labels) ncsn_free(be, labels);
}

static void test_norm(void) {
    test_norm_case(3, 5, 6, 7, 0, NULL);  /* unconditional, odd sizes */
    test_norm_case(2, 1, 4, 3, 0, NULL);  /* C = 1: mhat term defined as 0 */
    test_norm_case(3, 6, 1, 1, 0, NULL);  /* 1x1 spatial: zero variance, only the mhat path moves */
    const int32_t labels[3] = {2, 0, 2}; /* repeated row: its gradient is the sum of two examples */
    test_norm_case(3, 4, 3, 5, 3, labels);
    const int32_t one[1] = {1};
    test_norm_case(1, 2, 2, 2, 4, one);
}

/* ---- ELU ----------------------------------------------------------------------------------------- */

typedef struct {
    double *x, *r;
    size_t n;
} elu_ctx;
static double elu_loss(void *ctx) {
    elu_ctx *c = ctx;
    double l = 0;
    for (size_t i = 0; i < c->n; i++) l += c->r[i] * (c->x[i] > 0 ? c->x[i] : expm1(c->x[i]));
    return l;
}

static void test_elu(void) {
    printf("elu\n");
    size_t n = 1003;
    float *x = buf_random(n), *r = buf_random(n);
    for (size_t i = 0; i < n; i++) {
        x[i] *= 4.0f;
        if (fabsf(x[i]) < 1e-3f) x[i] = 0.5f; /* keep FD away from the kink at 0 */
    }
    elu_ctx c = {to_double(x, n), to_double(r, n), n};
    double *ref = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) ref[i] = c.x[i] > 0 ? c.x[i] : expm1(c.x[i]);
    float *out = buf_zero(n);
    ncsn_elu_forward(be, out, x, n);
    expect_close("  forward", out, ref, n, TOL_ELEM);
    float *inplace = buf_copy(x, n);
    ncsn_elu_forward(be, inplace, inplace, n);
    EXPECT(!memcmp(inplace, out, n * sizeof(float)), "in-place forward differs from out-of-place");
    double *g = malloc(n * sizeof(double));
    finite_diff(g, c.x, n, 1e-5, elu_loss, &c);
    float *dx = buf_zero(n);
    ncsn_elu_backward(be, dx, r, out, n);
    expect_close("  backward vs FD", dx, g, n, TOL_ELEM);
    float *dinplace = buf_copy(r, n);
    ncsn_elu_backward(be, dinplace, dinplace, out, n);
    EXPECT(!memcmp(dinplace, dx, n * sizeof(float)), "in-place backward differs from out-of-place");
    free(c.x); free(c.r); free(ref); free(g);
    ncsn_free(be, x); ncsn_free(be, r); ncsn_free(be, out); ncsn_free(be, inplace); ncsn_free(be, dx);
    ncsn_free(be, dinplace);
}

/* ---- pooling and resampling ----------------------------------------------------------------- */

typedef enum { POOL_MEAN2, POOL_AVG5, POOL_MAX5, POOL_BILINEAR } pool_kind;
typedef struct {
    pool_kind kind;
    int N, C, H, W, Ho, Wo;
    double *x, *r;
} pool_ctx;

static void pool_out_size(const pool_ctx *c, int *Ho, int *Wo) {
    *Ho = c->kind == POOL_MEAN2 ? c->H / 2 : c->kind == POOL_BILINEAR ? c->Ho : c->H;
    *Wo = c->kind == POOL_MEAN2 ? c->W / 2 : c->kind == POOL_BILINEAR ? c->Wo : c->W;
}

/* Float64 references. Max pool keeps the first maximum in row-major window order. */
static void pool_ref(const pool_ctx *c, double *out) {
    int Ho, Wo, H = c->H, W = c->W;
    pool_out_size(c, &Ho, &Wo);
    for (size_t nc = 0; nc < (size_t)c->N * c->C; nc++) {
        const double *ip = c->x + nc * H * W;
        double *op = out + nc * Ho * Wo;
        for (int y = 0; y < Ho; y++)
            for (int x = 0; x < Wo; x++) {
                double v = 0;
                if (c->kind == POOL_MEAN2) {
                    v = (ip[2 * y * W + 2 * x] + ip[(2 * y + 1) * W + 2 * x] + ip[2 * y * W + 2 * x + 1] +
                         ip[(2 * y + 1) * W + 2 * x + 1]) / 4.0;
                } else if (c->kind == POOL_AVG5 || c->kind == POOL_MAX5) {
                    double s = 0, m = -INFINITY;
                    for (int ky = y - 2; ky <= y + 2; ky++)
                        for (int kx = x - 2; kx <= x + 2; kx++) {
                            if (ky < 0 || ky >= H || kx < 0 || kx >= W) continue;
                            s += ip[ky * W + kx];
                            if (ip[ky * W + kx] > m) m = ip[ky * W + kx];
                        }
                    v = c->kind == POOL_AVG5 ? s / 25.0 : m;
                } else {
                    double sy = Ho > 1 ? y * (double)(H - 1) / (Ho - 1) : 0.0;
                    double sx = Wo > 1 ? x * (double)(W - 1) / (Wo - 1) : 0.0;
                    int y0 = (int)floor(sy), x0 = (int)floor(sx);
                    int y1 = y0 < H - 1 ? y0 + 1 : y0, x1 = x0 < W - 1 ? x0 + 1 : x0;
                    double ly = sy - y0, lx = sx - x0;
                    v = (1 - ly) * ((1 - lx) * ip[y0 * W + x0] + lx * ip[y0 * W + x1]) +
                        ly * ((1 - lx) * ip[y1 * W + x0] + lx * ip[y1 * W + x1]);
                }
                op[y * Wo + x] = v;
            }
    }
}

static double pool_loss(void *ctx) {
    pool_ctx *c = ctx;
    int Ho, Wo;
    pool_out_size(c, &Ho, &Wo);
    size_t no = (size_t)c->N * c->C * Ho * Wo;
    double *out = malloc(no * sizeof(double));
    pool_ref(c, out);
    double l = dot(out, c->r, no);
    free(out);
    return l;
}

static void pool_forward(const pool_ctx *c, float *out, const float *in) {
    switch (c->kind) {
    case POOL_MEAN2: ncsn_mean_pool2_forward(be, out, in, c->N, c->C, c->H, c->W); break;
    case POOL_AVG5: ncsn_avg_pool5_forward(be, out, in, c->N, c->C, c->H, c->W); break;
    case POOL_MAX5: ncsn_max_pool5_forward(be, out, in, c->N, c->C, c->H, c->W); break;
    case POOL_BILINEAR: ncsn_resize_bilinear_forward(be, out, in, c->N, c->C, c->H, c->W, c->Ho, c->Wo); break;
    }
}
static void pool_backward(const pool_ctx *c, float *din, const float *dout, const float *in, int accumulate) {
    switch (c->kind) {
    case POOL_MEAN2: ncsn_mean_pool2_backward(be, din, dout, c->N, c->C, c->H, c->W, accumulate); break;
    case POOL_AVG5: ncsn_avg_pool5_backward(be, din, dout, c->N, c->C, c->H, c->W, accumulate); break;
    case POOL_MAX5: ncsn_max_pool5_backward(be, din, dout, in, c->N, c->C, c->H, c->W, accumulate); break;
    case POOL_BILINEAR:
        ncsn_resize_bilinear_backward(be, din, dout, c->N, c->C, c->H, c->W, c->Ho, c->Wo, accumulate);
        break;
    }
}

static void test_pool_case(pool_kind kind, int N, int C, int H, int W, int Ho, int Wo) {
    static const char *names[] = {"mean_pool2", "avg_pool5", "max_pool5", "resize_bilinear"};
    pool_ctx c = {kind, N, C, H, W, Ho, Wo, NULL, NULL};
    int ho, wo;
    pool_out_size(&c, &ho, &wo);
    printf("%s N%d C%d %dx%d -> %dx%d\n", names[kind], N, C, H, W, ho, wo);
    size_t ni = (size_t)N * C * H * W, no = (size_t)N * C * ho * wo;
    float *x = buf_random(ni), *r = buf_random(no);
    if (kind == POOL_MAX5) {
        /* Distinct values at least 1e-3 apart, so FD with h = 1e-5 never changes an argmax. */
        for (size_t i = 0; i < ni; i++) x[i] = (float)((double)((i * 7919) % ni) * 1e-3 - 0.3);
    }
    c.x = to_double(x, ni);
    c.r = to_double(r, no);
    float *out = buf_random(no);
    pool_forward(&c, out, x);
    double *ref = malloc(no * sizeof(double));
    pool_ref(&c, ref);
    expect_close("  forward", out, ref, no, kind == POOL_MAX5 ? 0.0 : TOL_SUM);

    double *g = malloc(ni * sizeof(double));
    finite_diff(g, c.x, ni, kind == POOL_MAX5 ? 1e-5 : 1e-2, pool_loss, &c);
    float *din = buf_random(ni), *din_acc = buf_random(ni);
    double *g_acc = plus(din_acc, g, ni);
    pool_backward(&c, din, r, x, 0);
    expect_close("  backward vs FD", din, g, ni, TOL_SUM);
    pool_backward(&c, din_acc, r, x, 1);
    expect_close("  backward accumulate", din_acc, g_acc, ni, TOL_SUM);
    free(c.x); free(c.r); free(ref); free(g); free(g_acc);
    ncsn_free(be, x); ncsn_free(be, r); ncsn_free(be, out); ncsn_free(be, din); ncsn_free(be, din_acc);
}

/* The official ConvMeanPool sums ((x00 + x10) + x01) + x11 in fp32, then / 4: bit-exact. */
static void test_mean_pool_order(void) {
    printf("mean_pool2 summation order\n");
    /* [[x00, x01], [x10, x11]]: summing x00 + x10 first cancels exactly and keeps the tiny
     * terms; column-first (x00 + x01) loses x01 to rounding and gives 7.5e-9, not 1e-8. */
    float in[4] = {1.0f, 1e-8f, -1.0f, 3e-8f};
    float *x = buf_copy(in, 4), *out = buf_zero(1);
    ncsn_mean_pool2_forward(be, out, x, 1, 1, 2, 2);
    float want = (((in[0] + in[2]) + in[1]) + in[3]) / 4.0f; /* x[::2,::2] + x[1::2,::2] + x[::2,1::2] + x[1::2,1::2] */
    EXPECT(out[0] == want, "got %.9g want %.9g", out[0], want);
    ncsn_free(be, x);
    ncsn_free(be, out);
}

/* Ties: the max pool backward routes each output's gradient to the FIRST maximum of its
 * window in row-major order; padding is -inf (never chosen, even when all inputs < 0). */
static void test_max_pool_ties(void) {
    printf("max_pool5 ties and -inf padding\n");
    int H = 4, W = 6;
    size_t P = (size_t)H * W;
    float *x = buf_zero(P), *out = buf_zero(P), *dout = buf_zero(P), *din = buf_zero(P);
    for (size_t i = 0; i < P; i++) x[i] = -2.0f;
    x[1 * W + 4] = -1.0f;
    x[3 * W + 0] = -1.0f; /* two maxima: windows that see both pick row 1 first */
    for (size_t i = 0; i < P; i++) dout[i] = (float)(i + 1);
    ncsn_max_pool5_forward(be, out, x, 1, 1, H, W);
    ncsn_max_pool5_backward(be, din, dout, x, 1, 1, H, W, 0);
    double *want_out = calloc(P, sizeof(double)), *want_din = calloc(P, sizeof(double));
    for (int y = 0; y < H; y++)
        for (int xx = 0; xx < W; xx++) {
            int best = -1;
            for (int ky = y - 2; ky <= y + 2; ky++)
                for (int kx = xx - 2; kx <= xx + 2; kx++)
                    if (ky >= 0 && ky < H && kx >= 0 && kx < W && (best < 0 || x[ky * W + kx] > x[best])) best = ky * W + kx;
            want_out[y * W + xx] = x[best];
            want_din[best] += dout[y * W + xx];
        }
    harness_expect_close("  forward (all inputs negative)", out, want_out, P, 0, 0);
    harness_expect_close("  backward routes to the first maximum", din, want_din, P, 0, 0);
    free(want_out); free(want_din);
    ncsn_free(be, x); ncsn_free(be, out); ncsn_free(be, dout); ncsn_free(be, din);
}

static void test_pool(void) {
    test_pool_case(POOL_MEAN2, 3, 2, 6, 4, 0, 0);
    test_pool_case(POOL_MEAN2, 1, 1, 2, 2, 0, 0);
    test_pool_case(POOL_AVG5, 3, 2, 7, 5, 0, 0);
    test_pool_case(POOL_AVG5, 1, 1, 1, 1, 0, 0);
    test_pool_case(POOL_AVG5, 2, 3, 3, 2, 0, 0);
    test_pool_case(POOL_MAX5, 3, 2, 7, 5, 0, 0);
    test_pool_case(POOL_MAX5, 1, 1, 1, 1, 0, 0);
    test_pool_case(POOL_MAX5, 2, 1, 2, 9, 0, 0);
    test_pool_case(POOL_BILINEAR, 3, 2, 5, 3, 9, 7);  /* upsample, odd sizes */
    test_pool_case(POOL_BILINEAR, 1, 1, 1, 1, 4, 3);  /* from a single pixel */
    test_pool_case(POOL_BILINEAR, 2, 1, 4, 6, 4, 6);  /* same size: identity */
    test_pool_case(POOL_BILINEAR, 1, 2, 8, 7, 3, 1);  /* downsample, to a single column */
    test_mean_pool_order();
    test_max_pool_ties();
}

/* ---- elementwise ---------------------------------------------------------------------------------- */

typedef struct {
    int N, C;
    size_t spatial;
    const int32_t *labels;
    double *table, *r;
} label_bias_ctx;
static double label_bias_loss(void *ctx) {
    label_bias_ctx *c = ctx;
    double l = 0;
    for (int n = 0; n < c->N; n++)
        for (int ch = 0; ch < c->C; ch++)
            for (size_t i = 0; i < c->spatial; i++)
                l += c->r[((size_t)n * c->C + ch) * c->spatial + i] * c->table[(size_t)c->labels[n] * c->C + ch];
    return l;
}

static void test_elementwise(void) {
    printf("elementwise\n");
    size_t n = 517;
    float *a = buf_random(n), *b = buf_random(n), *out = buf_zero(n);
    double *ref = malloc(n * sizeof(double));
    ncsn_add(be, out, a, b, n);
    for (size_t i = 0; i < n; i++) ref[i] = (double)a[i] + b[i];
    expect_close("  add", out, ref, n, TOL_ELEM);
    float *y = buf_copy(a, n);
    ncsn_accumulate(be, y, b, n);
    expect_close("  accumulate", y, ref, n, TOL_ELEM);
    ncsn_scale_shift(be, out, a, 2.5f, -0.75f, n);
    for (size_t i = 0; i < n; i++) ref[i] = (double)a[i] * 2.5 - 0.75;
    expect_close("  scale_shift", out, ref, n, TOL_ELEM);
    float *cl = buf_copy(a, n);
    for (size_t i = 0; i < n; i++) cl[i] *= 2.0f;
    for (size_t i = 0; i < n; i++) ref[i] = fmin(1.0, fmax(0.0, (double)cl[i]));
    ncsn_clamp01(be, cl, n);
    harness_expect_close("  clamp01", cl, ref, n, 0, 0);

    /* divide_by_sigma and noise_inject: per-example sigma chosen by label */
    int N = 3;
    size_t per = 11;
    float sig_host[4] = {50.0f, 7.5f, 0.3f, 0.01f};
    int32_t lab_host[3] = {3, 0, 3};
    float *sigmas = buf_copy(sig_host, 4);
    int32_t *labels = ncsn_alloc(be, sizeof lab_host);
    memcpy(labels, lab_host, sizeof lab_host);
    float *x = buf_random(N * per), *z = buf_random(N * per), *o = buf_zero(N * per);
    double *r2 = malloc(N * per * sizeof(double));
    ncsn_divide_by_sigma(be, o, x, sigmas, labels, N, per);
    for (int k = 0; k < N; k++)
        for (size_t i = 0; i < per; i++) r2[k * per + i] = (double)x[k * per + i] / sig_host[lab_host[k]];
    expect_close("  divide_by_sigma", o, r2, N * per, TOL_ELEM);
    ncsn_noise_inject(be, o, x, z, sigmas, labels, N, per);
    for (int k = 0; k < N; k++)
        for (size_t i = 0; i < per; i++) r2[k * per + i] = (double)x[k * per + i] + (double)sig_host[lab_host[k]] * z[k * per + i];
    expect_close("  noise_inject", o, r2, N * per, TOL_ELEM);

    /* label_bias: forward adds the row; backward accumulates plane sums into the row (FD) */
    int C = 3, L = 4;
    size_t spatial = 5;
    float *table = buf_random((size_t)L * C), *act = buf_random((size_t)N * C * spatial);
    float *act0 = buf_copy(act, (size_t)N * C * spatial);
    ncsn_label_bias_forward(be, act, table, labels, N, C, spatial);
    double *rb = malloc((size_t)N * C * spatial * sizeof(double));
    for (int k = 0; k < N; k++)
        for (int ch = 0; ch < C; ch++)
            for (size_t i = 0; i < spatial; i++) {
                size_t idx = ((size_t)k * C + ch) * spatial + i;
                rb[idx] = (double)act0[idx] + table[(size_t)lab_host[k] * C + ch];
            }
    expect_close("  label_bias_forward (+=)", act, rb, (size_t)N * C * spatial, TOL_ELEM);
    float *rproj = buf_random((size_t)N * C * spatial);
    label_bias_ctx lc = {N, C, spatial, lab_host, to_double(table, (size_t)L * C), to_double(rproj, (size_t)N * C * spatial)};
    double *gt = malloc((size_t)L * C * sizeof(double));
    finite_diff(gt, lc.table, (size_t)L * C, 1e-2, label_bias_loss, &lc);
    float *dtable = buf_random((size_t)L * C);
    double *gt_acc = plus(dtable, gt, (size_t)L * C);
    ncsn_label_bias_backward_accumulate(be, dtable, rproj, labels, N, C, spatial);
    expect_close("  label_bias_backward (+=, repeated label) vs FD", dtable, gt_acc, (size_t)L * C, TOL_SUM);

    /* gemm_nt: C = A B^T, row-major */
    int M = 7, Nc = 5, K = 13;
    float *A = buf_random((size_t)M * K), *B = buf_random((size_t)Nc * K), *Cm = buf_random((size_t)M * Nc);
    double *rc = malloc((size_t)M * Nc * sizeof(double));
    for (int i = 0; i < M; i++)
        for (int j = 0; j < Nc; j++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += (double)A[i * K + k] * B[j * K + k];
            rc[i * Nc + j] = s;
        }
    ncsn_gemm_nt(be, Cm, A, B, M, Nc, K);
    expect_close("  gemm_nt 7x5x13", Cm, rc, (size_t)M * Nc, TOL_SUM);
    ncsn_gemm_nt(be, Cm, A, B, 1, 1, 1);
    double r11 = (double)A[0] * B[0];
    expect_close("  gemm_nt 1x1x1", Cm, &r11, 1, TOL_ELEM);

    /* sum_squares over a buffer large enough that a float accumulator would drift */
    size_t big = 1000003;
    float *v = buf_random(big), *ss = buf_zero(1);
    double want = 0;
    for (size_t i = 0; i < big; i++) want += (double)v[i] * v[i];
    ncsn_sum_squares(be, ss, v, big);
    expect_close("  sum_squares (1e6 elements)", ss, &want, 1, TOL_ELEM);

    free(ref); free(r2); free(rb); free(lc.table); free(lc.r); free(gt); free(gt_acc); free(rc);
    ncsn_free(be, a); ncsn_free(be, b); ncsn_free(be, out); ncsn_free(be, y); ncsn_free(be, cl);
    ncsn_free(be, sigmas); ncsn_free(be, labels); ncsn_free(be, x); ncsn_free(be, z); ncsn_free(be, o);
    ncsn_free(be, table); ncsn_free(be, act); ncsn_free(be, act0); ncsn_free(be, rproj); ncsn_free(be, dtable);
    ncsn_free(be, A); ncsn_free(be, B); ncsn_free(be, Cm); ncsn_free(be, v); ncsn_free(be, ss);
}

/* The ops behind the replayable ALD step (sample.c chain_step) must be the by-value ops
 * they replace, bit for bit, since sample k must not depend on whether a graph ran it. */
static void test_chain_ops(void) {
    printf("chain ops (the replayable Langevin step), clipping, logit, staging\n");
    enum { N = 3, L = 4 };
    const uint32_t T = 5;
    const size_t per = 37, n = (size_t)N * per;
    const uint64_t seed = 99;
    const float a_host[L] = {3e-3f, 1e-4f, 2.5e-6f, 8e-7f};
    const int32_t labels_of_level[L] = {0, 1, 2, 3};
    float sched_host[2 * L];
    for (int l = 0; l < L; l++) {
        sched_host[2 * l] = a_host[l];
        sched_host[2 * l + 1] = sqrtf(2.0f * a_host[l]);
    }
    float *sched = buf_copy(sched_host, 2 * L);
    int32_t *level_labels = ncsn_alloc(be, sizeof labels_of_level), *labels = ncsn_alloc(be, N * sizeof(int32_t));
    memcpy(level_labels, labels_of_level, sizeof labels_of_level);
    uint32_t *state = ncsn_alloc(be, NCSN_CHAIN_STATE_COUNT * sizeof(uint32_t));
    const uint32_t steps[] = {0, 4, 5, 13, 19}, firsts[] = {0, 1000};
    int same = 1, labels_ok = 1;
    for (size_t si = 0; si < sizeof steps / sizeof steps[0]; si++)
        for (size_t fi = 0; fi < 2; fi++) {
            float *x1 = buf_random(n), *x2 = buf_copy(x1, n), *score = buf_random(n);
            state[NCSN_CHAIN_STEP] = steps[si];
            state[NCSN_CHAIN_FIRST_INDEX] = firsts[fi];
            uint32_t level = steps[si] / T;
            ncsn_langevin_step_chain(be, x1, score, N, per, sched, L, state, T, seed);
            ncsn_langevin_step(be, x2, score, N, per, a_host[level], seed, firsts[fi], steps[si]);
            if (memcmp(x1, x2, n * sizeof(float)) != 0) {
                printf("    step %u first %u: chain update differs from langevin_step\n", steps[si], firsts[fi]);
                same = 0;
            }
            ncsn_chain_labels(be, labels, N, level_labels, L, state, T);
            for (int k = 0; k < N; k++)
                if (labels[k] != labels_of_level[level]) labels_ok = 0;
            ncsn_free(be, x1); ncsn_free(be, x2); ncsn_free(be, score);
        }
    EXPECT(same, "langevin_step_chain is not bit-identical to langevin_step");
    EXPECT(labels_ok, "chain_labels did not write the level's label");
    state[NCSN_CHAIN_STEP] = 7;
    state[NCSN_CHAIN_FIRST_INDEX] = 1000;
    ncsn_chain_advance(be, state);
    EXPECT(state[NCSN_CHAIN_STEP] == 8 && state[NCSN_CHAIN_FIRST_INDEX] == 1000,
           "chain_advance: state (%u, %u), want (8, 1000)", state[NCSN_CHAIN_STEP], state[NCSN_CHAIN_FIRST_INDEX]);

    /* clip_by_norm: scaled by max_norm / (norm + 1e-6) when that is below 1, else untouched. */
    size_t gn = 1000;
    float *g = buf_random(gn), *g0 = buf_copy(g, gn), *norm2 = buf_zero(1);
    ncsn_sum_squares(be, norm2, g, gn);
    double norm = sqrt((double)*norm2), max_norm = 0.25 * norm;
    double *rg = malloc(gn * sizeof(double));
    for (size_t i = 0; i < gn; i++) rg[i] = (double)g0[i] * (max_norm / (norm + 1e-6));
    ncsn_clip_by_norm(be, g, gn, norm2, (float)max_norm);
    expect_close("  clip_by_norm (norm 4x max_norm)", g, rg, gn, TOL_ELEM);
    memcpy(g, g0, gn * sizeof(float));
    ncsn_clip_by_norm(be, g, gn, norm2, (float)(2.0 * norm));
    EXPECT(memcmp(g, g0, gn * sizeof(float)) == 0, "clip_by_norm changed gradients whose norm is below max_norm");

    /* row_sum_squares against float64 sums; pc_step_size against the score_sde formula. */
    float *rows = buf_random(n), *rn = buf_zero(2 * N);
    double rref[2 * N];
    for (int k = 0; k < N; k++) {
        rref[k] = 0.0;
        for (size_t i = 0; i < per; i++) rref[k] += (double)rows[k * per + i] * rows[k * per + i];
    }
    ncsn_row_sum_squares(be, rn, rows, N, per);
    expect_close("  row_sum_squares", rn, rref, N, TOL_ELEM);
    for (int k = 0; k < N; k++) rn[N + k] = (float)(4.0 * (k + 1)); /* noise norms^2: 4, 8, 12 */
    float *pc = buf_zero(2);
    ncsn_pc_step_size(be, pc, rn, N, 0.16);
    double gmean = 0.0, zmean = 0.0;
    for (int k = 0; k < N; k++) {
        gmean += sqrt((double)rn[k]) / N;
        zmean += sqrt(4.0 * (k + 1)) / N;
    }
    double ratio = 0.16 * zmean / gmean, pc_ref[2] = {2.0 * ratio * ratio, sqrt(4.0 * ratio * ratio)};
    expect_close("  pc_step_size (a, sqrt(2a))", pc, pc_ref, 2, TOL_ELEM);

    /* logit on (0.01, 0.99): atol 2e-6 = two float32 logs of magnitude <= 4.6, each within
     * about 1 ulp (4.8e-7), subtracted. */
    float *lx = buf_random(n);
    double *rl = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        lx[i] = 0.5f + 0.49f * lx[i];
        double y = 1e-6 + (1.0 - 2e-6) * (double)lx[i];
        rl[i] = log(y / (1.0 - y));
    }
    ncsn_logit(be, lx, n);
    harness_expect_close("  logit", lx, rl, n, 2e-6, 1e-6);

    /* copy_columns: the left 3 of 7 columns of 5 rows; the rest of dst untouched. */
    float *cs = buf_random(35), *cd = buf_random(35), *cd0 = buf_copy(cd, 35);
    ncsn_copy_columns(be, cd, cs, 5, 7, 3);
    int cols_ok = 1;
    for (int r = 0; r < 5; r++)
        for (int j = 0; j < 7; j++) cols_ok &= cd[r * 7 + j] == (j < 3 ? cs[r * 7 + j] : cd0[r * 7 + j]);
    EXPECT(cols_ok, "copy_columns: wrong values (left 3 of 7 columns of 5 rows)");
    ncsn_free(be, cs); ncsn_free(be, cd); ncsn_free(be, cd0);

    /* Staging memory and fences: zeroed memory; fences and graph_begin are no-ops here. */
    unsigned char *h = ncsn_host_alloc(be, 4096);
    int zero = 1;
    for (int i = 0; i < 4096; i++) zero &= h[i] == 0;
    EXPECT(zero, "host_alloc memory is not zero-filled");
    ncsn_fence *f = ncsn_fence_create(be);
    ncsn_fence_record(be, f);
    ncsn_fence_wait(be, f);
    ncsn_fence_destroy(be, f);
    ncsn_host_free(be, h);
    EXPECT(ncsn_graph_begin(be) == 0, "the cpu backend claims to capture graphs");

    free(rg); free(rl);
    ncsn_free(be, sched); ncsn_free(be, level_labels); ncsn_free(be, labels); ncsn_free(be, state);
    ncsn_free(be, g); ncsn_free(be, g0); ncsn_free(be, norm2); ncsn_free(be, lx);
    ncsn_free(be, rows); ncsn_free(be, rn); ncsn_free(be, pc);
}

int main(void) {
    be = harness_cpu_backend();
    test_memory();
    test_conv();
    test_norm();
    test_elu();
    test_pool();
    test_elementwise();
    test_chain_ops();
    ncsn_cpu_backend_destroy(be);
    return harness_finish("test_ops");
}
