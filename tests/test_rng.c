/* test_rng.c: the Philox counter RNG (kernels/rng_math.h) and the backend's fill ops.
 *
 * 1. Philox-4x32-10 against Random123's published known-answer vectors.
 * 2. u32 / uniform / normal draws against the reference values of .plan/rng_vectors.txt
 *    (written by .plan/rngvec.c on this machine), both through the inline functions and
 *    through the CPU backend's fill_uniform / fill_normal.
 * 3. Moments of 1e6 draws: every statistic must lie within 5 standard errors of its
 *    expectation (a correct generator fails such a check with probability ~6e-7 each).
 * 4. Keying: a batch of 7 at example_offset 5 equals rows 5..11 of a batch of 16 (noise does
 *    not depend on how a batch is split), and different purposes / steps / seeds / examples
 *    give unrelated streams.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kernels/rng_math.h"
#include "ncsn/backend.h"
#include "tests/harness.h"

static ncsn_backend *be;

static void test_philox_known_answers(void) {
    printf("philox4x32-10 known answers (Random123 kat_vectors)\n");
    static const uint32_t in[3][6] = {
        {0, 0, 0, 0, 0, 0},
        {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
        {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u}};
    static const uint32_t want[3][4] = {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u},
                                        {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu},
                                        {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}};
    for (int t = 0; t < 3; t++) {
        ncsn_philox_u32x4 b = ncsn_philox4x32_10(in[t][0], in[t][1], in[t][2], in[t][3], in[t][4], in[t][5]);
        for (int k = 0; k < 4; k++)
            EXPECT(b.v[k] == want[t][k], "vector %d word %d: got %08x want %08x", t, k, b.v[k], want[t][k]);
    }
}

/* From .plan/rng_vectors.txt: (seed, purpose 1, example 0, step 3, index 0..5). */
static const uint64_t ref_seeds[2] = {0, 1234};
static const uint32_t ref_u32[2][6] = {{2087650778u, 1824150524u, 4138512259u, 3555273455u, 3049414599u, 763758896u},
                                       {856509877u, 1546951124u, 2156438889u, 2675944689u, 1831644931u, 310568139u}};
static const double ref_uniform[2][6] = {
    {0.486069024, 0.424718082, 0.963572443, 0.827776551, 0.709997118, 0.177826464},
    {0.199421704, 0.360177577, 0.50208503, 0.623041868, 0.426463068, 0.0723097324}};
static const double ref_normal[2][6] = {
    {-1.06928277, 0.54721427, 0.12789382, -0.240537569, 0.362586051, 0.743989229},
    {-1.1461885, 1.38235974, -0.840200663, -0.819777012, 1.17310488, 0.572960615}};

static void test_reference_values(void) {
    printf("reference draws (.plan/rng_vectors.txt)\n");
    float *u = ncsn_alloc(be, 6 * sizeof(float)), *z = ncsn_alloc(be, 6 * sizeof(float));
    for (int s = 0; s < 2; s++) {
        for (int i = 0; i < 6; i++) {
            uint32_t got = ncsn_rng_u32(ref_seeds[s], 1, 0, 3, (uint64_t)i);
            EXPECT(got == ref_u32[s][i], "seed %llu index %d: u32 %u want %u", (unsigned long long)ref_seeds[s], i,
                   got, ref_u32[s][i]);
        }
        ncsn_fill_uniform(be, u, 1, 6, ref_seeds[s], 1, 0, 3);
        ncsn_fill_normal(be, z, 1, 6, ref_seeds[s], 1, 0, 3);
        /* Uniforms are integer arithmetic: bit-exact. The 9 printed digits round-trip the
         * float, so (float)ref is the exact expected value. */
        for (int i = 0; i < 6; i++)
            EXPECT(u[i] == (float)ref_uniform[s][i], "seed %llu index %d: uniform %.9g want %.9g",
                   (unsigned long long)ref_seeds[s], i, u[i], ref_uniform[s][i]);
        /* Normals: float64 Box-Muller rounded to float; 2 float ulps allow another libm. */
        harness_expect_close("  fill_normal (2 ulp)", z, ref_normal[s], 6, 0.0, 2.4e-7);
    }
    ncsn_free(be, u);
    ncsn_free(be, z);
}

static void test_moments(void) {
    printf("moments of 1e6 draws (each within 5 standard errors)\n");
    const int N = 4;
    const size_t per = 250000, n = (size_t)N * per;
    float *z = ncsn_alloc(be, n * sizeof(float)), *u = ncsn_alloc(be, n * sizeof(float));
    ncsn_fill_normal(be, z, N, per, 42, NCSN_RNG_NOISE, 0, 7);
    ncsn_fill_uniform(be, u, N, per, 42, NCSN_RNG_DEQUANT, 0, 7);
    double m1 = 0, m2 = 0, m3 = 0, m4 = 0;
    size_t nonfinite = 0;
    for (size_t i = 0; i < n; i++) {
        double v = z[i];
        if (!isfinite(v)) nonfinite++;
        m1 += v;
        m2 += v * v;
        m3 += v * v * v;
        m4 += v * v * v * v;
    }
    m1 /= n; m2 /= n; m3 /= n; m4 /= n;
    double var = m2 - m1 * m1, skew = m3 / pow(var, 1.5), kurt = m4 / (var * var);
    double rn = sqrt((double)n);
    /* Standard errors under N(0,1): mean 1/sqrt(n), variance sqrt(2/n), skewness sqrt(6/n),
     * kurtosis sqrt(24/n). */
    EXPECT(nonfinite == 0, "%zu non-finite normals", nonfinite);
    EXPECT(fabs(m1) < 5.0 / rn, "normal mean %.3e, 5 SE = %.3e", m1, 5.0 / rn);
    EXPECT(fabs(var - 1.0) < 5.0 * sqrt(2.0) / rn, "normal variance %.6f, 5 SE = %.3e", var, 5.0 * sqrt(2.0) / rn);
    EXPECT(fabs(skew) < 5.0 * sqrt(6.0) / rn, "normal skewness %.4f, 5 SE = %.3e", skew, 5.0 * sqrt(6.0) / rn);
    EXPECT(fabs(kurt - 3.0) < 5.0 * sqrt(24.0) / rn, "normal kurtosis %.4f, 5 SE = %.3e", kurt, 5.0 * sqrt(24.0) / rn);
    printf("  normal: mean %.2e  var %.5f  skew %.4f  kurtosis %.4f\n", m1, var, skew, kurt);

    double u1 = 0, u2 = 0, umin = 1, umax = 0;
    size_t off_grid = 0;
    for (size_t i = 0; i < n; i++) {
        double v = u[i];
        u1 += v;
        umin = fmin(umin, v);
        umax = fmax(umax, v);
        if (v * 16777216.0 != floor(v * 16777216.0)) off_grid++;
    }
    u1 /= n;
    for (size_t i = 0; i < n; i++) u2 += (u[i] - u1) * (u[i] - u1);
    u2 /= n;
    /* U[0,1): mean 1/2 (SE sqrt(1/12 / n)), variance 1/12 (SE sqrt((1/80 - 1/144) / n)). */
    EXPECT(umin >= 0.0 && umax < 1.0, "uniform outside [0, 1): min %.9g max %.9g", umin, umax);
    EXPECT(off_grid == 0, "%zu uniforms are not multiples of 2^-24", off_grid);
    EXPECT(fabs(u1 - 0.5) < 5.0 * sqrt(1.0 / 12.0) / rn, "uniform mean %.6f", u1);
    EXPECT(fabs(u2 - 1.0 / 12.0) < 5.0 * sqrt(1.0 / 80.0 - 1.0 / 144.0) / rn, "uniform variance %.6f (want %.6f)", u2,
           1.0 / 12.0);
    printf("  uniform: min %.3g  max %.9g  mean %.6f  var %.6f\n", umin, umax, u1, u2);
    ncsn_free(be, z);
    ncsn_free(be, u);
}

/* Draws of two streams: count of identical values and sample correlation. */
static void expect_unrelated(const char *what, const float *a, const float *b, size_t n) {
    size_t same = 0;
    double sab = 0, saa = 0, sbb = 0;
    for (size_t i = 0; i < n; i++) {
        same += a[i] == b[i];
        sab += (double)a[i] * b[i];
        saa += (double)a[i] * a[i];
        sbb += (double)b[i] * b[i];
    }
    double corr = sab / sqrt(saa * sbb);
    /* Equal floats by chance: ~n * 2^-24 at most (a few); correlation SE is 1/sqrt(n). */
    EXPECT(same <= 2 && fabs(corr) < 5.0 / sqrt((double)n), "%s: %zu equal draws, correlation %.4f", what, same, corr);
}

static void test_keying(void) {
    printf("keying: batch split, purposes, steps, seeds, examples\n");
    const size_t per = 3 * 7 * 5; /* an odd per-example size: blocks straddle examples */
    float *big = ncsn_alloc(be, 16 * per * sizeof(float)), *small = ncsn_alloc(be, 7 * per * sizeof(float));
    ncsn_fill_normal(be, big, 16, per, 99, NCSN_RNG_NOISE, 0, 12);
    ncsn_fill_normal(be, small, 7, per, 99, NCSN_RNG_NOISE, 5, 12);
    EXPECT(!memcmp(small, big + 5 * per, 7 * per * sizeof(float)),
           "fill_normal N=7 at example_offset 5 differs from rows 5..11 of N=16");
    ncsn_fill_uniform(be, big, 16, per, 99, NCSN_RNG_DEQUANT, 0, 12);
    ncsn_fill_uniform(be, small, 7, per, 99, NCSN_RNG_DEQUANT, 5, 12);
    EXPECT(!memcmp(small, big + 5 * per, 7 * per * sizeof(float)),
           "fill_uniform N=7 at example_offset 5 differs from rows 5..11 of N=16");
    /* Element i of example n is the inline function's draw (seed, purpose, offset + n, step, i). */
    float direct = ncsn_rng_uniform(99, NCSN_RNG_DEQUANT, 5 + 3, 12, 17);
    EXPECT(small[3 * per + 17] == direct, "fill_uniform element (3, 17) %.9g != rng_uniform %.9g", small[3 * per + 17],
           direct);

    const size_t n = 20000;
    float *a = ncsn_alloc(be, n * sizeof(float)), *b = ncsn_alloc(be, n * sizeof(float));
    ncsn_fill_normal(be, a, 1, n, 7, NCSN_RNG_NOISE, 0, 0);
    ncsn_fill_normal(be, b, 1, n, 7, NCSN_RNG_LANGEVIN, 0, 0);
    expect_unrelated("  purposes NOISE vs LANGEVIN", a, b, n);
    ncsn_fill_normal(be, b, 1, n, 7, NCSN_RNG_NOISE, 0, 1);
    expect_unrelated("  steps 0 vs 1", a, b, n);
    ncsn_fill_normal(be, b, 1, n, 8, NCSN_RNG_NOISE, 0, 0);
    expect_unrelated("  seeds 7 vs 8", a, b, n);
    ncsn_fill_normal(be, b, 1, n, 7 + (1ull << 32), NCSN_RNG_NOISE, 0, 0);
    expect_unrelated("  seeds differing only in the high 32 bits", a, b, n);
    ncsn_fill_normal(be, b, 1, n, 7, NCSN_RNG_NOISE, 1, 0);
    expect_unrelated("  examples 0 vs 1", a, b, n);
    /* Box-Muller pairs share a block: the cosine and sine lanes must not be correlated. */
    float *lane0 = ncsn_alloc(be, n / 4 * sizeof(float)), *lane1 = ncsn_alloc(be, n / 4 * sizeof(float));
    for (size_t i = 0; i < n / 4; i++) {
        lane0[i] = a[4 * i];
        lane1[i] = a[4 * i + 1];
    }
    expect_unrelated("  Box-Muller lanes 0 vs 1", lane0, lane1, n / 4);
    /* Same key twice: identical (the generator is a pure function). */
    ncsn_fill_normal(be, b, 1, n, 7, NCSN_RNG_NOISE, 0, 0);
    EXPECT(!memcmp(a, b, n * sizeof(float)), "same (seed, purpose, example, step) gave different draws");
    ncsn_free(be, big); ncsn_free(be, small); ncsn_free(be, a); ncsn_free(be, b); ncsn_free(be, lane0);
    ncsn_free(be, lane1);
}

int main(void) {
    be = harness_cpu_backend();
    test_philox_known_answers();
    test_reference_values();
    test_moments();
    test_keying();
    ncsn_cpu_backend_destroy(be);
    return harness_finish("test_rng");
}
