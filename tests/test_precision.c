/* test_precision.c: the backend precision switch (be->precision): BF16, TF32 and FP32 on the
 * CPU backend, and CUDA BF16 against the CPU where a GPU is present.
 *
 * BF16 convolutions (host/cpu_conv.c) round their INPUTS to bf16 and accumulate in fp32
 * into fp32 outputs. Each direction is checked three ways, on shapes that cover the
 * first/last convolutions (3 or 1 channels), 1x1 shortcuts with channel tails, dilation
 * and a CIFAR-10 128-channel 32x32 layer:
 *
 * 1. Semantics, against an emulation: the FP32 backend run on inputs that the test rounds
 *    to bf16 itself (round to nearest even). A product of two bf16 numbers (8 significant
 *    bits each) is exact in fp32 (16 <= 24 bits), so the two results differ only in the
 *    order of their fp32 sums: |bf16 - emulated| <= 2 gamma(n) A, where n is the length of
 *    the reduction (C k^2 forward, K k^2 backward-data, N H W backward-weights; + 2 for the
 *    bias and the accumulating add), gamma(n) = n u32 / (1 - n u32) with u32 = 2^-24, and
 *    A = sum |terms| is the same convolution of the absolute values (computed by the FP32
 *    backend: a sum of positive terms, itself within gamma(n) relative; we allow 2^-10).
 *    This is rigorous, and it fails for any other rounding of the inputs (truncation,
 *    double rounding), for a wrong tap or layout, and (on the shapes with short
 *    reductions, where 2 gamma(n) A << 2^-8 |y|) for outputs rounded to bf16.
 * 2. Accuracy, against FP32: each operand carries a relative rounding error of at most
 *    u = 2^-8 (bf16 keeps 8 significant bits), a product at most 2u + u^2, so elementwise
 *    |bf16 - fp32| <= (2u + u^2 + 2 gamma(n)) A (rigorous, worst case: every rounding in
 *    the same direction). For random data the errors are independent and the sum of n
 *    products does a random walk, as does the value itself, so the RELATIVE L2 error
 *    ||bf16 - fp32|| / ||fp32|| does not grow with n: it is about sqrt(2) times the RMS
 *    relative rounding error of one operand, 2^-8 / sqrt(6) for mantissas spread over
 *    [1, 2) (the error is uniform within +-half an ulp, and E[1/m^2] = 1/2), i.e.
 *    ~0.58 * 2^-8 = 2.3e-3 (for db = sum dy, one operand: 1.6e-3). For outputs of at least
 *    1000 elements we require <= 2^-8 = 3.9e-3 (truncating instead of rounding to nearest
 *    would give ~4.5e-3); measured: 1.9e-3 to 2.3e-3. Smaller outputs print theirs.
 *    We also require that BF16 differs from FP32 somewhere: the switch must do something.
 * 3. FP32 untouched: FP32 results of a backend that ran BF16 before (and of TF32, which the
 *    CPU runs as FP32) are bit-identical to those of a fresh FP32 backend, and an
 *    accumulating BF16 call equals fp32(prefill + overwriting BF16 call) bit for bit.
 *
 * 4. On a GPU (CUDA build, device present; else "skipped: ..."): CUDA BF16 against the CPU.
 *    Both round the inputs to nearest even, so where cuDNN runs bf16 the results differ
 *    only by fp32 summation order, plus the rounding of the output where cuDNN writes it
 *    in bf16: |gpu - cpu bf16| <= (2 gamma(n) + [bf16 output] u) A. Shapes for which
 *    cuDNN has no bf16 engine run in TF32 (inputs to 10 stored mantissa bits, possibly
 *    truncated: relative 2^-10 per operand): |gpu - cpu fp32| <= (2 2^-10 + 2^-20 +
 *    2 gamma(n)) A. The bias gradient is computed from fp32 dout on the GPU (from bf16 dout
 *    on the CPU), so GPU db is held to the FP32 result: 2 gamma(n) A.
 *
 * If oneDNN has no jit bf16 primitive for a direction on this CPU (no avx512_core), the
 * backend runs it in FP32; checks 1 and 2 then print "skipped: ..." for it (check 3 runs).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/cpu_internal.h"
#include "kernels/rng_math.h"
#include "ncsn/backend.h"
#include "tests/harness.h"
#ifdef NCSN_WITH_CUDA
#include "host/cuda_internal.h" /* cuda_conv_effective_precision */
#endif

#define U_BF16 (1.0 / 256.0)         /* unit roundoff of bf16: 2^-8 */
#define U_FP32 (1.0 / 16777216.0)    /* unit roundoff of fp32: 2^-24 */
#define U_TF32 (1.0 / 1024.0)        /* TF32 operand error if the hardware truncates: 2^-10 */
#define L2_BOUND (1.0 / 256.0)       /* relative L2 bound of check 2 */
/* Below this many elements the relative L2 error is a poor estimate of the RMS (a few
 * terms, and sums like db can cancel), so it is printed but not asserted. */
#define L2_MIN_COUNT 1000
#define ABS_SUM_SLACK (1.0 / 1024.0) /* relative error allowed for the fp32-computed A */

static ncsn_backend *be_fp32;  /* fresh, strict FP32: the reference */
static ncsn_backend *be_mixed; /* switched between BF16, FP32 and TF32 */
static ncsn_backend *be_gpu;   /* CUDA backend in BF16, when built with CUDA and a GPU is present */

/* ---- the outputs of one shape ---------------------------------------------------------- */

/* Everything a run computes for a shape: the overwriting outputs, and the accumulating
 * ones started from the case's prefills (dw and db also once from zero). */
typedef enum { OUT_Y, OUT_DX, OUT_DX_ACC, OUT_DW, OUT_DW_ACC, OUT_DB, OUT_DB_ACC, OUT_COUNT } output_id;
typedef enum { SIZE_X, SIZE_W, SIZE_Y, SIZE_K } size_kind;

static const struct {
    const char *name;
    cpu_conv_direction dir;
    size_kind size;
    int accumulates;      /* started from a random prefill */
    int twin;             /* accumulating outputs: the same call started from zero; else -1 */
    int rounded_operands; /* per product: 2 (bf16 times bf16), 1 for db = sum dy */
} outputs[OUT_COUNT] = {
    {"forward y", CPU_CONV_FORWARD, SIZE_Y, 0, -1, 2},
    {"backward-data dx", CPU_CONV_BACKWARD_DATA, SIZE_X, 0, -1, 2},
    {"backward-data dx (accumulate)", CPU_CONV_BACKWARD_DATA, SIZE_X, 1, OUT_DX, 2},
    {"backward-weights dw", CPU_CONV_BACKWARD_WEIGHTS, SIZE_W, 0, -1, 2},
    {"backward-weights dw +=", CPU_CONV_BACKWARD_WEIGHTS, SIZE_W, 1, OUT_DW, 2},
    {"backward-weights db", CPU_CONV_BACKWARD_WEIGHTS, SIZE_K, 0, -1, 1},
    {"backward-weights db +=", CPU_CONV_BACKWARD_WEIGHTS, SIZE_K, 1, OUT_DB, 1},
};

typedef struct {
    float *out[OUT_COUNT];
} conv_results;

typedef struct {
    ncsn_conv_desc d;
    size_t size[4];                /* elements of x, w, y, and K (by size_kind) */
    double reduction[3];           /* n of each direction (see the header) */
    const float *x, *w, *b, *dy;   /* inputs */
    const float *prefill[OUT_COUNT]; /* NULL for the overwriting outputs */
} conv_case;

static size_t output_count(const conv_case *c, output_id o) {
    if (outputs[o].size == SIZE_K && !c->d.has_bias) return 0;
    return c->size[outputs[o].size];
}

/* ---- helpers ----------------------------------------------------------------------------- */

/* U(-scale, scale) from the engine's own counter RNG: array `stream` of case `step`. */
static float *random_array(size_t n, float scale, uint32_t stream, uint32_t step) {
    float *p = ncsn_xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = scale * (2.0f * ncsn_rng_uniform(2024, NCSN_RNG_TOY, stream, step, i) - 1.0f);
    return p;
}
static float *map_array(const float *src, size_t n, float (*f)(float)) {
    float *p = ncsn_xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = f(src[i]);
    return p;
}

/* fp32 -> bf16 -> fp32 with round to nearest, ties to even (what oneDNN's reorder and
 * CUDA's __float2bfloat16_rn do). Inputs here are finite. */
static float round_bf16(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    bits &= 0xFFFF0000u;
    memcpy(&x, &bits, sizeof bits);
    return x;
}

static double gamma_n(double n) { return n * U_FP32 / (1.0 - n * U_FP32); }

/* Elementwise |got - ref| <= factor * A[i] (A: the absolute-value convolution, see the
 * header). Prints the worst ratio err / A and the first violations. */
static void expect_within(const char *what, const float *got, const float *ref, const float *abs_sum, size_t n,
                          double factor) {
    harness_checks++;
    size_t bad = 0;
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - (double)ref[i]);
        double bound = factor * (double)abs_sum[i] * (1.0 + ABS_SUM_SLACK);
        double ratio = abs_sum[i] > 0 ? err / (double)abs_sum[i] : (err > 0 ? INFINITY : 0.0);
        if (ratio > worst || err != err) worst = ratio;
        if (!(err <= bound)) {
            if (bad < 5)
                printf("    %s[%zu]: got %.9g want %.9g (err %.3g > bound %.3g)\n", what, i, got[i], ref[i], err,
                       bound);
            bad++;
        }
    }
    if (bad) {
        harness_failures++;
        printf("  FAIL %s: %zu/%zu beyond %.3g * sum|terms| (worst err/sum|terms| %.3g)\n", what, bad, n, factor,
               worst);
        return;
    }
    printf("  ok   %s: max err/sum|terms| %.3g <= %.3g\n", what, worst, factor);
}


static void expect_identical(const char *what, const float *got, const float *ref, size_t n) {
    harness_checks++;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &ref[i], sizeof(float))) {
            if (bad < 5) printf("    %s[%zu]: got %.9g want %.9g\n", what, i, got[i], ref[i]);
            bad++;
        }
    if (bad) {
        harness_failures++;
        printf("  FAIL %s: %zu/%zu not bit-identical\n", what, bad, n);
        return;
    }
    printf("  ok   %s: bit-identical (n=%zu)\n", what, n);
}

/* ---- running a shape -------------------------------------------------------------------- */

/* A copy of n host floats in backend memory (host memory on the CPU, device on CUDA). */
static float *to_backend(ncsn_backend *be, const float *host, size_t n) {
    float *p = ncsn_alloc(be, n * sizeof(float)); /* zero-filled: the start of what has no prefill */
    if (host) ncsn_copy_to_device(be, p, host, n * sizeof(float));
    return p;
}

/* Runs every direction on backend `be` with the given inputs and the case's prefills, and
 * returns the outputs in host memory. */
static void run_all(ncsn_backend *be, const conv_case *c, const float *x, const float *w, const float *b,
                    const float *dy, conv_results *r) {
    const ncsn_conv_desc *d = &c->d;
    float *bx = to_backend(be, x, c->size[SIZE_X]), *bw = to_backend(be, w, c->size[SIZE_W]);
    float *bb = to_backend(be, b, c->size[SIZE_K]), *bdy = to_backend(be, dy, c->size[SIZE_Y]);
    float *o[OUT_COUNT];
    for (int k = 0; k < OUT_COUNT; k++) o[k] = to_backend(be, c->prefill[k], c->size[outputs[k].size]);
    ncsn_conv2d_forward(be, o[OUT_Y], bx, bw, d->has_bias ? bb : NULL, d);
    ncsn_conv2d_backward_data(be, o[OUT_DX], bdy, bw, d, 0);
    ncsn_conv2d_backward_data(be, o[OUT_DX_ACC], bdy, bw, d, 1);
    ncsn_conv2d_backward_weights_accumulate(be, o[OUT_DW], d->has_bias ? o[OUT_DB] : NULL, bx, bdy, d);
    ncsn_conv2d_backward_weights_accumulate(be, o[OUT_DW_ACC], d->has_bias ? o[OUT_DB_ACC] : NULL, bx, bdy, d);
    ncsn_synchronize(be);
    for (int k = 0; k < OUT_COUNT; k++) {
        size_t n = c->size[outputs[k].size];
        r->out[k] = ncsn_xmalloc(n * sizeof(float));
        ncsn_copy_to_host(be, r->out[k], o[k], n * sizeof(float));
        ncsn_free(be, o[k]);
    }
    ncsn_free(be, bx); ncsn_free(be, bw); ncsn_free(be, bb); ncsn_free(be, bdy);
}

static void free_results(conv_results *r) {
    for (int k = 0; k < OUT_COUNT; k++) free(r->out[k]);
}

/* A: the same computation on absolute values; an accumulating output adds its |prefill|
 * (one more term). */
static void run_abs(const conv_case *c, const float *x, const float *w, const float *dy, conv_results *a) {
    float *ax = map_array(x, c->size[SIZE_X], fabsf), *aw = map_array(w, c->size[SIZE_W], fabsf);
    float *ab = map_array(c->b, c->size[SIZE_K], fabsf), *ady = map_array(dy, c->size[SIZE_Y], fabsf);
    conv_case zero = *c; /* the same runs from zero prefills */
    memset(zero.prefill, 0, sizeof zero.prefill);
    run_all(be_fp32, &zero, ax, aw, ab, ady, a);
    for (int k = 0; k < OUT_COUNT; k++)
        if (c->prefill[k])
            for (size_t i = 0; i < c->size[outputs[k].size]; i++) a->out[k][i] += fabsf(c->prefill[k][i]);
    free(ax); free(aw); free(ab); free(ady);
}

/* Check 4 (see the header). */
static void test_gpu_case(const conv_case *c, const conv_results *cpu_fp32, const conv_results *cpu_bf16,
                          const conv_results *abs_sum, const conv_results *abs_rounded) {
#ifdef NCSN_WITH_CUDA
    be_gpu->precision = NCSN_PRECISION_BF16;
    conv_results g;
    run_all(be_gpu, c, c->x, c->w, c->b, c->dy, &g);
    ncsn_precision ran[3];
    int bf16_output[3];
    for (int dir = 0; dir < 3; dir++) {
        ran[dir] = cuda_conv_effective_precision(be_gpu, &c->d, dir, &bf16_output[dir]);
        printf("  cuda %-16s runs in %s\n", dir == 0 ? "forward" : dir == 1 ? "backward-data" : "backward-filter",
               ran[dir] != NCSN_PRECISION_BF16 ? "tf32"
               : bf16_output[dir]              ? "bf16 (bf16 output)"
                                               : "bf16 (fp32 output)");
    }
    for (int k = 0; k < OUT_COUNT; k++) {
        size_t n = output_count(c, (output_id)k);
        if (!n) continue;
        int dir = outputs[k].dir;
        double gamma2 = 2 * gamma_n(c->reduction[dir]);
        /* db comes from fp32 dout on the GPU whatever the precision */
        int against_bf16 = ran[dir] == NCSN_PRECISION_BF16 && outputs[k].size != SIZE_K;
        char what[96];
        snprintf(what, sizeof what, "cuda %s vs cpu %s", outputs[k].name, against_bf16 ? "bf16" : "fp32");
        if (against_bf16)
            expect_within(what, g.out[k], cpu_bf16->out[k], abs_rounded->out[k], n,
                          gamma2 + (bf16_output[dir] ? U_BF16 : 0.0));
        else if (outputs[k].size == SIZE_K)
            expect_within(what, g.out[k], cpu_fp32->out[k], abs_sum->out[k], n, gamma2);
        else
            expect_within(what, g.out[k], cpu_fp32->out[k], abs_sum->out[k], n,
                          2 * U_TF32 + U_TF32 * U_TF32 + gamma2);
    }
    free_results(&g);
#else
    (void)c, (void)cpu_fp32, (void)cpu_bf16, (void)abs_sum, (void)abs_rounded;
#endif
}

static void test_conv_case(int N, int C, int H, int W, int K, int ksize, int dilation, int has_bias) {
    static uint32_t case_index = 0;
    case_index++;
    conv_case c;
    memset(&c, 0, sizeof c);
    c.d = (ncsn_conv_desc){N, C, H, W, K, ksize, dilation, has_bias};
    c.size[SIZE_X] = (size_t)N * C * H * W;
    c.size[SIZE_W] = (size_t)K * C * ksize * ksize;
    c.size[SIZE_Y] = (size_t)N * K * H * W;
    c.size[SIZE_K] = (size_t)K;
    /* +2: the bias or prefill add, and slack for the final add of a split reduction */
    c.reduction[CPU_CONV_FORWARD] = (double)C * ksize * ksize + 2;
    c.reduction[CPU_CONV_BACKWARD_DATA] = (double)K * ksize * ksize + 2;
    c.reduction[CPU_CONV_BACKWARD_WEIGHTS] = (double)N * H * W + 2;
    printf("conv N%d C%d %dx%d K%d k%d d%d %s\n", N, C, H, W, K, ksize, dilation, has_bias ? "bias" : "no bias");

    /* PyTorch's default init scale for the weights, U(-1, 1) activations and gradients. */
    float wscale = (float)(1.0 / sqrt((double)C * ksize * ksize));
    float *x = random_array(c.size[SIZE_X], 1.0f, 1, case_index);
    float *w = random_array(c.size[SIZE_W], wscale, 2, case_index);
    float *b = random_array(c.size[SIZE_K], wscale, 3, case_index);
    float *dy = random_array(c.size[SIZE_Y], 1.0f, 4, case_index);
    float *prefills[OUT_COUNT] = {NULL};
    for (int k = 0; k < OUT_COUNT; k++)
        if (outputs[k].accumulates) prefills[k] = random_array(c.size[outputs[k].size], 1.0f, 5 + k, case_index);
    c.x = x; c.w = w; c.b = b; c.dy = dy;
    memcpy(c.prefill, prefills, sizeof prefills);

    conv_results ref, bf16, emu, fp32_again, tf32, abs_sum, abs_rounded;
    run_all(be_fp32, &c, x, w, b, dy, &ref);
    run_abs(&c, x, w, dy, &abs_sum);

    be_mixed->precision = NCSN_PRECISION_BF16;
    run_all(be_mixed, &c, x, w, b, dy, &bf16);
    ncsn_precision ran[CPU_CONV_DIRECTIONS];
    for (int dir = 0; dir < CPU_CONV_DIRECTIONS; dir++) {
        const char *impl = NULL;
        ran[dir] = cpu_conv_effective_precision(be_mixed, &c.d, (cpu_conv_direction)dir, &impl);
        printf("  %-16s runs in %s: %s\n",
               dir == 0 ? "forward" : dir == 1 ? "backward-data" : "backward-weights",
               ran[dir] == NCSN_PRECISION_BF16 ? "bf16" : "fp32", impl);
        if (ran[dir] != NCSN_PRECISION_BF16)
            printf("  skipped: bf16 checks of this direction (oneDNN runs it in fp32 on this CPU)\n");
    }

    /* 1. against the emulation: FP32 on bf16-rounded inputs (the bias stays fp32). */
    float *xr = map_array(x, c.size[SIZE_X], round_bf16), *wr = map_array(w, c.size[SIZE_W], round_bf16);
    float *dyr = map_array(dy, c.size[SIZE_Y], round_bf16);
    run_all(be_fp32, &c, xr, wr, b, dyr, &emu);
    run_abs(&c, xr, wr, dyr, &abs_rounded);
    for (int k = 0; k < OUT_COUNT; k++) {
        size_t n = output_count(&c, (output_id)k);
        if (!n || ran[outputs[k].dir] != NCSN_PRECISION_BF16) continue;
        char what[96];
        snprintf(what, sizeof what, "%s vs emulated", outputs[k].name);
        expect_within(what, bf16.out[k], emu.out[k], abs_rounded.out[k], n, 2 * gamma_n(c.reduction[outputs[k].dir]));
    }

    /* 2. against FP32 (the overwriting outputs): the rigorous elementwise bound, the
     * relative L2 error, and "differs". */
    for (int k = 0; k < OUT_COUNT; k++) {
        size_t n = output_count(&c, (output_id)k);
        if (!n || outputs[k].accumulates || ran[outputs[k].dir] != NCSN_PRECISION_BF16) continue;
        char what[96];
        snprintf(what, sizeof what, "%s bf16 vs fp32", outputs[k].name);
        expect_within(what, bf16.out[k], ref.out[k], abs_sum.out[k], n,
                      2 * U_BF16 + U_BF16 * U_BF16 + 2 * gamma_n(c.reduction[outputs[k].dir]));
        double rel = harness_relative_l2(bf16.out[k], ref.out[k], n);
        EXPECT(rel > 0, "%s: bf16 identical to fp32 (the precision switch did nothing)", what);
        /* RMS relative rounding error of one operand: 2^-8 / sqrt(6) (see the header). */
        double expected = sqrt(outputs[k].rounded_operands / 6.0) * U_BF16;
        if (n < L2_MIN_COUNT) {
            printf("  info %s: relative L2 %.3e (n=%zu: too few to assert)\n", what, rel, n);
            continue;
        }
        EXPECT(rel <= L2_BOUND, "%s: relative L2 error %.3e > %.3e", what, rel, L2_BOUND);
        printf("  %s   %s: relative L2 %.3e (bound %.3e, expected ~%.1e for random data)\n",
               rel <= L2_BOUND && rel > 0 ? "ok" : "FAIL", what, rel, L2_BOUND, expected);
    }

    /* 3. FP32 untouched after BF16 ran on the same backend; TF32 = FP32 on the CPU; an
     * accumulating BF16 call = prefill + the overwriting one, added in fp32. */
    be_mixed->precision = NCSN_PRECISION_FP32;
    run_all(be_mixed, &c, x, w, b, dy, &fp32_again);
    be_mixed->precision = NCSN_PRECISION_TF32;
    run_all(be_mixed, &c, x, w, b, dy, &tf32);
    for (int k = 0; k < OUT_COUNT; k++) {
        size_t n = output_count(&c, (output_id)k);
        if (!n) continue;
        char what[96];
        snprintf(what, sizeof what, "fp32 after bf16: %s", outputs[k].name);
        expect_identical(what, fp32_again.out[k], ref.out[k], n);
        snprintf(what, sizeof what, "tf32 (= fp32 on the CPU): %s", outputs[k].name);
        expect_identical(what, tf32.out[k], ref.out[k], n);
        if (!outputs[k].accumulates) continue;
        float *sum = ncsn_xmalloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) sum[i] = c.prefill[k][i] + bf16.out[outputs[k].twin][i];
        snprintf(what, sizeof what, "bf16 %s = prefill + overwriting call", outputs[k].name);
        expect_identical(what, bf16.out[k], sum, n);
        free(sum);
    }

    if (be_gpu) test_gpu_case(&c, &ref, &bf16, &abs_sum, &abs_rounded);

    free_results(&ref); free_results(&bf16); free_results(&emu); free_results(&fp32_again);
    free_results(&tf32); free_results(&abs_sum); free_results(&abs_rounded);
    free(xr); free(wr); free(dyr);
    free(x); free(w); free(b); free(dy);
    for (int k = 0; k < OUT_COUNT; k++) free(prefills[k]);
}

int main(void) {
    char err[256];
    be_fp32 = harness_cpu_backend();
    be_mixed = harness_cpu_backend();
    EXPECT(be_fp32->precision == NCSN_PRECISION_FP32, "a new CPU backend is not FP32 (precision %d)",
           (int)be_fp32->precision);
    be_gpu = ncsn_backend_create(NCSN_DEVICE_CUDA, err, sizeof err);
    if (!be_gpu) printf("skipped: CUDA BF16 against the CPU (%s)\n", err);
    test_conv_case(2, 3, 32, 32, 16, 3, 1, 1);    /* first conv: 3 input channels */
    test_conv_case(2, 128, 32, 32, 128, 3, 1, 1); /* CIFAR-10 NCSNv2 stage 1 */
    test_conv_case(2, 32, 16, 16, 32, 3, 2, 0);   /* dilated stage, no bias */
    test_conv_case(3, 19, 7, 5, 21, 1, 1, 1);     /* 1x1 shortcut, channel tails, odd sizes */
    test_conv_case(2, 16, 8, 8, 3, 3, 1, 1);      /* last conv: 3 output channels */
    test_conv_case(1, 8, 6, 6, 1, 3, 4, 1);       /* K = 1, dilation 4 beyond the image */
    ncsn_cpu_backend_destroy(be_fp32);
    ncsn_cpu_backend_destroy(be_mixed);
    if (be_gpu) ncsn_backend_destroy(be_gpu);
    return harness_finish("test_precision");
}
