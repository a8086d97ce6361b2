/* test_sigmas.c: `ncsn sigmas` (NCSNv2 techniques 1, 2, 4) against independent evaluations.
 *
 * - sigma_1: the blocked-GEMM maximum pairwise distance equals a brute-force float64 scan
 *   exactly (same pair, same value), for ragged block sizes, and on data built so that many
 *   pairs tie within float32 rounding (where a plain float32 GEMM argmax could pick a wrong
 *   pair, the float64 re-check must not).
 * - gamma: compared with the criterion evaluated by Simpson integration of the normal
 *   density (no erfc) and solved by a geometric scan plus bisection.
 * - eps: compared with a dense grid minimisation of the seed's formula written out
 *   literally (the un-simplified fraction), for the official CIFAR-10 schedule.
 * - the official CIFAR-10 numbers (sigma_1 = 50, L = 232, T = 5, eps = 6.2e-6): how close
 *   the rules land, with bounds a correct implementation must meet.
 * - the command end to end on a generated .npy.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/rng_math.h"
#include "ncsn/backend.h"
#include "ncsn/cli.h"
#include "ncsn/io.h"
#include "ncsn/sigmas.h"
#include "tests/harness.h"

/* ---- sigma_1 ----------------------------------------------------------------------- */

static double brute_force_max(const float *x, long N, long D, long *bi, long *bj) {
    double best = -1.0;
    for (long i = 0; i < N; i++)
        for (long j = i + 1; j < N; j++) {
            double s = 0.0;
            for (long d = 0; d < D; d++) {
                double diff = (double)x[i * D + d] - (double)x[j * D + d];
                s += diff * diff;
            }
            if (s > best) {
                best = s;
                *bi = i;
                *bj = j;
            }
        }
    return sqrt(best);
}

static void check_max_distance(ncsn_backend *be, const char *what, const float *x, long N, long D) {
    long ri = -1, rj = -1;
    double ref = brute_force_max(x, N, D, &ri, &rj);
    int blocks[] = {1024, 64, 37, 7};
    for (size_t k = 0; k < sizeof blocks / sizeof blocks[0]; k++) {
        ncsn_max_distance md = ncsn_max_pairwise_distance(be, x, N, D, blocks[k]);
        /* Both sides sum the same float64 squared differences in the same order: equal. */
        EXPECT(md.distance == ref && md.i == ri && md.j == rj,
               "%s block %d: got %.17g (pair %ld,%ld), brute force %.17g (pair %ld,%ld)", what, blocks[k],
               md.distance, md.i, md.j, ref, ri, rj);
        printf("  %s block %4d: max distance %.9g pair (%ld, %ld), %ld candidates re-checked\n", what,
               blocks[k], md.distance, md.i, md.j, md.candidates);
    }
}

static void test_max_distance(ncsn_backend *be) {
    printf("-- technique 1: exact max pairwise distance\n");
    /* Quantised pixels like a real dataset: k / 255 from the engine RNG. */
    const long N = 301, D = 3 * 8 * 8;
    float *x = malloc((size_t)N * D * sizeof(float));
    for (long i = 0; i < N * D; i++)
        x[i] = (float)(ncsn_rng_u32(7, NCSN_RNG_TOY, 0, 0, (uint64_t)i) % 256u) / 255.0f;
    check_max_distance(be, "uniform pixels", x, N, D);

    /* Near ties: two tight clusters at 0.25 and 0.75 with jitter of 1e-4; every cross pair
     * is at distance ~ sqrt(D)/2 and the spread of squared distances (~1e-3) is of the order
     * of the float32 GEMM error bound (~1e-3), so many pairs survive to the float64 re-check. */
    for (long i = 0; i < N; i++)
        for (long d = 0; d < D; d++) {
            float jitter = 1e-4f * (ncsn_rng_uniform(8, NCSN_RNG_TOY, (uint32_t)i, 0, (uint64_t)d) - 0.5f);
            x[i * D + d] = (i % 2 ? 0.75f : 0.25f) + jitter;
        }
    check_max_distance(be, "near ties", x, N, D);

    /* The smallest case: two examples, one block. */
    float two[6] = {0, 0, 0, 1, 1, 1};
    ncsn_max_distance md = ncsn_max_pairwise_distance(be, two, 2, 3, 1024);
    EXPECT(fabs(md.distance - sqrt(3.0)) < 1e-15, "two points: %.17g want sqrt(3)", md.distance);
    free(x);
}

/* ---- gamma ------------------------------------------------------------------------- */

/* Phi(b) - Phi(a) by composite Simpson on the density, independent of erfc. */
static double normal_mass(double a, double b) {
    if (b < a) return -normal_mass(b, a);
    if (a < -40.0) a = -40.0;
    if (b > 40.0) b = 40.0;
    if (b <= a) return 0.0;
    const int n = 20000; /* even */
    double h = (b - a) / n, s = 0.0;
    for (int k = 0; k <= n; k++) {
        double t = a + k * h;
        double w = (k == 0 || k == n) ? 1.0 : (k % 2 ? 4.0 : 2.0);
        s += w * exp(-0.5 * t * t);
    }
    return s * h / 3.0 / sqrt(2.0 * M_PI);
}

static double criterion_simpson(double g, double D) {
    double shift = sqrt(2.0 * D) * (g - 1.0);
    return normal_mass(shift - 3.0 * g, shift + 3.0 * g);
}

/* Geometric scan for the sign change of criterion - 0.5, then bisection. */
static double gamma_reference(double D) {
    double prev_g = 1.0;
    for (double g = 1.0005; g < 100.0; g += 0.0005 * g) {
        double f = criterion_simpson(g, D) - 0.5;
        if (f <= 0.0) {
            /* Bisection inside the scan's bracket (the secant stalls where the criterion is
             * flat, as for D = 5). */
            double a = prev_g, b = g;
            for (int it = 0; it < 100 && b - a > 1e-15 * b; it++) {
                double c = 0.5 * (a + b);
                if (criterion_simpson(c, D) > 0.5)
                    a = c;
                else
                    b = c;
            }
            return 0.5 * (a + b);
        }
        prev_g = g;
            }
    return NAN;
}

static void test_gamma(void) {
    printf("-- technique 2: gamma and L\n");
    double dims[] = {5.0, 16.0, 784.0, 3072.0, 12288.0, 196608.0};
    for (size_t k = 0; k < sizeof dims / sizeof dims[0]; k++) {
        double g = ncsn_solve_gamma(dims[k]);
        double ref = gamma_reference(dims[k]);
        /* Simpson with 20000 panels is accurate to ~1e-12 here; the root moves by
         * d(criterion)/d(gamma) ~ sqrt(D) per unit, so 1e-9 is a safe bound. */
        EXPECT(fabs(g - ref) < 1e-9, "D=%g: gamma %.15f, Simpson+bisection %.15f", dims[k], g, ref);
        EXPECT(fabs(ncsn_gamma_criterion(g, dims[k]) - 0.5) < 1e-12, "D=%g: criterion at gamma %.15f", dims[k],
               ncsn_gamma_criterion(g, dims[k]));
        printf("  D=%-7g gamma %.9f (reference %.9f)\n", dims[k], g, ref);
    }
    /* D <= 4 (2-D toy data): sqrt(2D) <= 3, the window never leaves the mass: no root. */
    EXPECT(isnan(ncsn_solve_gamma(2.0)) && isnan(ncsn_solve_gamma(4.0)), "D=2, 4 should have no gamma: %g %g",
           ncsn_solve_gamma(2.0), ncsn_solve_gamma(4.0));
    EXPECT(ncsn_gamma_criterion(1e6, 2.0) > 0.5, "D=2 criterion at gamma 1e6: %g", ncsn_gamma_criterion(1e6, 2.0));
    /* Official CIFAR-10: D = 3072, sigma_1 = 50, sigma_L = 0.01, L = 232 (ratio 1.03756). */
    double g = ncsn_solve_gamma(3072.0);
    int L = ncsn_num_levels(50.0, 0.01, g);
    double official_ratio = pow(50.0 / 0.01, 1.0 / 231.0);
    EXPECT(50.0 / pow(g, L - 1) <= 0.01 * (1 + 1e-12) && 50.0 / pow(g, L - 2) > 0.01,
           "L=%d is not the smallest count reaching 0.01 with ratio %.9f", L, g);
    /* The rule is approximate ("~= 0.5") and the official configs round towards more levels:
     * a correct gamma for D = 3072 lies within 1% of the official ratio, L within 10%. */
    EXPECT(fabs(g - official_ratio) / official_ratio < 0.01, "gamma %.6f vs official ratio %.6f", g, official_ratio);
    EXPECT(abs(L - 232) <= 23, "L=%d vs official 232", L);
    printf("  CIFAR-10 (D=3072, 50 -> 0.01): gamma %.6f vs official ratio %.6f; L = %d vs official 232 "
           "(criterion at the official ratio: %.4f)\n",
           g, official_ratio, L, ncsn_gamma_criterion(official_ratio, 3072.0));
}

/* ---- eps --------------------------------------------------------------------------- */

/* The seed's formula, literally:
 * (1 - e/sL^2)^(2T) (g^2 - 2e/(sL^2 - sL^2 (1 - e/sL^2)^2)) + 2e/(sL^2 - sL^2 (1 - e/sL^2)^2) */
static double seed_formula(double e, double g, double sL, int T) {
    double s2 = sL * sL;
    double q = 1.0 - e / s2;
    double frac = 2.0 * e / (s2 - s2 * q * q);
    return pow(q, 2.0 * T) * (g * g - frac) + frac;
}

static double eps_reference(double g, double sL, int T) {
    double best_e = 0.0, best = 1e300;
    for (int k = 0; k < 400000; k++) { /* log-uniform grid over [1e-10, 1) * sL^2 */
        double e = pow(10.0, -10.0 + 10.0 * k / 400000.0) * sL * sL;
        double dev = fabs(seed_formula(e, g, sL, T) - 1.0);
        if (dev < best) {
            best = dev;
            best_e = e;
        }
    }
    return best_e;
}

static void test_step_lr(void) {
    printf("-- technique 4: step size for T steps per level\n");
    double official_ratio = pow(50.0 / 0.01, 1.0 / 231.0);
    double r;
    double eps = ncsn_solve_step_lr(official_ratio, 0.01, 5, &r);
    double ref = eps_reference(official_ratio, 0.01, 5);
    /* The grid step is 10^(10/400000) - 1 = 5.8e-5 relative; the minimum is flat, so allow
     * 1e-3 relative for where the grid lands. */
    EXPECT(fabs(eps - ref) / ref < 1e-3, "eps %.9g vs grid %.9g", eps, ref);
    EXPECT(fabs(r - seed_formula(eps, official_ratio, 0.01, 5)) < 1e-12, "ratio %.15f vs literal %.15f", r,
           seed_formula(eps, official_ratio, 0.01, 5));
    /* The official value 6.2e-6 is this minimiser rounded to two digits. */
    EXPECT(fabs(eps - 6.2e-6) / 6.2e-6 < 0.01, "eps %.4g vs official 6.2e-6", eps);
    printf("  official schedule (L=232, T=5): eps %.5g (grid %.5g), s_T^2/sigma^2 = %.5f; official 6.2e-6\n", eps,
           ref, r);
    /* The same for the schedule the rules give (L from gamma). */
    double g = ncsn_solve_gamma(3072.0);
    int L = ncsn_num_levels(50.0, 0.01, g);
    double ratio = pow(50.0 / 0.01, 1.0 / (L - 1));
    double eps_rules = ncsn_solve_step_lr(ratio, 0.01, 5, &r);
    double ref_rules = eps_reference(ratio, 0.01, 5);
    EXPECT(fabs(eps_rules - ref_rules) / ref_rules < 1e-3, "eps %.9g vs grid %.9g", eps_rules, ref_rules);
    printf("  rules' schedule (L=%d, T=5): eps %.5g, s_T^2/sigma^2 = %.5f\n", L, eps_rules, r);
    /* Sanity of the formula's limits: eps -> 0 gives gamma^2, and more steps per level
     * bring the ratio closer to 1 at the optimum. */
    EXPECT(fabs(ncsn_langevin_variance_ratio(1e-18, 1.05, 0.01, 5) - 1.05 * 1.05) < 1e-9, "eps -> 0 limit");
    double r5, r50;
    ncsn_solve_step_lr(official_ratio, 0.01, 5, &r5);
    ncsn_solve_step_lr(official_ratio, 0.01, 50, &r50);
    EXPECT(fabs(r50 - 1.0) < fabs(r5 - 1.0), "T=50 deviation %.5f not below T=5 deviation %.5f", r50 - 1, r5 - 1);
}

/* ---- the command ------------------------------------------------------------------- */

static void test_command(void) {
    printf("-- ncsn sigmas on a generated .npy\n");
    const int N = 97, H = 6, W = 6, C = 3;
    const long D = (long)C * H * W;
    uint8_t *u8 = malloc((size_t)N * D);
    for (long i = 0; i < N * D; i++) u8[i] = (uint8_t)(ncsn_rng_u32(11, NCSN_RNG_TOY, 0, 0, (uint64_t)i) & 255u);
    char dir[] = "/tmp/ncsn_test_sigmas_XXXXXX";
    if (!mkdtemp(dir)) {
        EXPECT(0, "mkdtemp failed");
        return;
    }
    char npy[256], out[256];
    snprintf(npy, sizeof npy, "%s/data.npy", dir);
    snprintf(out, sizeof out, "%s/out.txt", dir);
    int64_t shape[4] = {N, H, W, C};
    ncsn_npy_write(npy, NCSN_NPY_U8, 4, shape, u8);

    /* Expected: float64 brute force over k/255 (the dataset's pixel values, as float32). */
    float *x = malloc((size_t)N * D * sizeof(float));
    for (int n = 0; n < N; n++) /* CHW from HWC: distances do not depend on the order */
        for (long k = 0; k < D; k++) x[n * D + k] = (float)u8[n * D + k] / 255.0f;
    long bi, bj;
    double sigma1 = brute_force_max(x, N, D, &bi, &bj);
    int L = ncsn_num_levels(sigma1, 0.01, ncsn_solve_gamma((double)D));

    /* In process, stdout sent to a file for the duration of the command (a forked child
     * would inherit OpenMP's thread pool from the tests above, which libgomp does not
     * support). */
    fflush(stdout);
    int saved = dup(1);
    FILE *redirect = fopen(out, "w");
    EXPECT(saved >= 0 && redirect, "cannot redirect stdout to %s", out);
    if (saved < 0 || !redirect) return;
    dup2(fileno(redirect), 1);
    char *argv[] = {"--data", npy, "--device", "cpu", "--block", "13", NULL};
    int rc = ncsn_cmd_sigmas(6, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    fclose(redirect);
    EXPECT(rc == 0, "ncsn sigmas returned %d", rc);
    FILE *f = fopen(out, "r");
    char line[512];
    double got_sigma = -1.0;
    int got_L = -1;
    while (f && fgets(line, sizeof line, f)) {
        sscanf(line, "  sigma_begin: %lf", &got_sigma);
        sscanf(line, "  num_classes: %d", &got_L);
    }
    if (f) fclose(f);
    /* The snippet prints sigma_begin with 4 significant digits. */
    EXPECT(fabs(got_sigma - sigma1) <= 5e-4 * sigma1, "snippet sigma_begin %.6g vs brute force %.9g", got_sigma,
           sigma1);
    EXPECT(got_L == L, "snippet num_classes %d vs %d", got_L, L);
    printf("  snippet: sigma_begin %.6g (brute force %.9g), num_classes %d\n", got_sigma, sigma1, got_L);
    unlink(npy);
    unlink(out);
    rmdir(dir);
    free(x);
    free(u8);
}

int main(void) {
    ncsn_backend *be = harness_cpu_backend();
    test_max_distance(be);
    test_gamma();
    test_step_lr();
    test_command();
    ncsn_backend_destroy(be);
    return harness_finish("test_sigmas");
}
