/* test_langevin_mixture.c: the seeds' slow-mixing experiment (seeds/000, "朗之万动力学的缓慢
 * 混合"; seeds/002 Fig. 2/3; NCSN paper §3.2.2 and Fig. 3) on the engine's sampler.
 *
 * Data: p = 0.2 N((-5,-5), I) + 0.8 N((5,5), I) in 2-D. Its score does not depend on the
 * mixture weight where the modes are apart, so Langevin dynamics started uniformly over a
 * box keeps the proportion in which the start points fall on either side (about one half)
 * and never learns 0.2/0.8: the barrier between the modes (distance 14) is not crossed in
 * any practical number of steps. Annealed Langevin starts at a noise level where the two
 * modes have merged into one broad bump, whose shape (mean, skew) DOES carry the weights,
 * and follows the perturbed distributions down to sigma = 1, ending with the right weights.
 *
 * The score is exact, not learned: the perturbed density q_sigma = p * N(0, sigma^2 I) is the
 * mixture of N(mu_k, (1 + sigma^2) I) with the same weights, whose score is
 *   s(x) = sum_k r_k(x) (mu_k - x) / (1 + sigma^2),  r_k = posterior responsibility of k.
 *
 * Settings (the NCSN paper's toy experiment, code convention a = eps * sigma_i^2 / sigma_L^2):
 *   annealed: sigma geometric 20 -> 1, L = 10, T = 100 steps per level, step_lr eps = 0.1;
 *   plain:    the data score itself (sigma -> 0), a = 0.1, 1000 steps;
 *   both start from U[-8, 8]^2, 10,000 points, seed 2019 (fixed).
 * The chains run through ncsn_sampler (sample.h) on the CPU backend, so the test exercises
 * the same code as `ncsn sample`: ncsn_langevin_step on N x 2 x 1 x 1 "images".
 *
 * Pass criteria and why they are safe but meaningful:
 *   annealed |frac(-5,-5) - 0.2| <= 0.03: the binomial standard error at n = 10,000 is
 *   sqrt(0.2 * 0.8 / 1e4) = 0.004, so 0.03 is 7 standard errors of slack for discretisation
 *   bias; a sampler that lost the weights would sit near 0.5.
 *   plain frac in [0.35, 0.65]: starting points split by the boundary x + y = -0.14 (about
 *   49.5% on the (-5,-5) side); anything near 0.2 would mean plain Langevin mixed, which it
 *   cannot here.
 * Also checked: the analytic score against a central finite difference of log q_sigma, and
 * that the annealed samples have the right spread around their mode (variance ~ 1 + sigma_L^2).
 *
 * Usage: test_langevin_mixture [PLOT.png]  (with a path, also writes the scatter plot
 * data / Langevin / annealed Langevin side by side, the seeds' Fig. 3).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/rng_math.h"
#include "ncsn/backend.h"
#include "ncsn/sample.h"
#include "tests/harness.h"

#define N_POINTS 10000
static const double WEIGHT1 = 0.2;                 /* weight of the (-5,-5) mode */
static const double MU1[2] = {-5.0, -5.0}, MU2[2] = {5.0, 5.0};

/* The exact score of the mixture perturbed with N(0, sigma^2 I), for the sigma of each
 * example's label. `sigmas` is the schedule the sampler runs; sigma 0 gives the data score. */
typedef struct {
    const float *sigmas;
    int L;
} mixture_ctx;

static void mixture_score_at(double sigma, const float *x, float *out) {
    double var = 1.0 + sigma * sigma;
    double d1x = x[0] - MU1[0], d1y = x[1] - MU1[1], d2x = x[0] - MU2[0], d2y = x[1] - MU2[1];
    /* log responsibilities, normalised with log-sum-exp: far from a mode the Gaussian terms
     * underflow in float64 otherwise (|x - mu|^2 / 2 ~ 100 at the far mode). */
    double l1 = log(WEIGHT1) - 0.5 * (d1x * d1x + d1y * d1y) / var;
    double l2 = log(1.0 - WEIGHT1) - 0.5 * (d2x * d2x + d2y * d2y) / var;
    double m = l1 > l2 ? l1 : l2;
    double r1 = exp(l1 - m), r2 = exp(l2 - m), z = r1 + r2;
    r1 /= z;
    r2 /= z;
    out[0] = (float)((r1 * (MU1[0] - x[0]) + r2 * (MU2[0] - x[0])) / var);
    out[1] = (float)((r1 * (MU1[1] - x[1]) + r2 * (MU2[1] - x[1])) / var);
}

static double mixture_log_density(double sigma, double x, double y) {
    double var = 1.0 + sigma * sigma;
    double q1 = WEIGHT1 * exp(-0.5 * ((x - MU1[0]) * (x - MU1[0]) + (y - MU1[1]) * (y - MU1[1])) / var);
    double q2 = (1.0 - WEIGHT1) * exp(-0.5 * ((x - MU2[0]) * (x - MU2[0]) + (y - MU2[1]) * (y - MU2[1])) / var);
    return log((q1 + q2) / (2.0 * M_PI * var));
}

/* ncsn_score_fn: the CPU backend's memory is host memory, so the callback reads x directly. */
static void mixture_score(void *vctx, float *score, const float *x, const int32_t *labels, int N) {
    const mixture_ctx *ctx = vctx;
    for (int n = 0; n < N; n++) {
        NCSN_CHECK(labels[n] >= 0 && labels[n] < ctx->L);
        mixture_score_at(ctx->sigmas[labels[n]], x + 2 * (size_t)n, score + 2 * (size_t)n);
    }
}

/* Points nearer (-5,-5) than (5,5), i.e. x + y < 0. */
static double fraction_near_mode1(const float *xy, int N) {
    int count = 0;
    for (int n = 0; n < N; n++) count += xy[2 * n] + xy[2 * n + 1] < 0.0f;
    return (double)count / N;
}

/* Runs one chain over the sampler and returns the N x 2 points (host). */
static float *run_chain(ncsn_backend *be, ncsn_sampler_kind kind, const float *sigmas, int L, int T,
                        double step_lr, uint64_t seed) {
    mixture_ctx ctx = {sigmas, L};
    ncsn_sampler_options o;
    ncsn_sampler_options_default(&o);
    o.kind = kind;
    o.init = NCSN_INIT_UNIFORM;
    o.init_lo = -8.0f;
    o.init_hi = 8.0f;
    o.step_lr = step_lr;
    o.n_steps_each = T;
    o.denoise = 0;
    o.seed = seed;
    ncsn_sampler *s = ncsn_sampler_create(be, mixture_score, &ctx, sigmas, L, 2, 1, 1, N_POINTS, &o);
    float *x = ncsn_alloc(be, (size_t)N_POINTS * 2 * sizeof(float));
    ncsn_sampler_run(s, x, 0, N_POINTS);
    float *out = ncsn_xmalloc((size_t)N_POINTS * 2 * sizeof(float));
    ncsn_copy_to_host(be, out, x, (size_t)N_POINTS * 2 * sizeof(float));
    ncsn_free(be, x);
    ncsn_sampler_free(s);
    return out;
}

int main(int argc, char **argv) {
    const uint64_t seed = 2019;
    /* A step here is 20,000 floats and a single-threaded analytic score: OpenMP fork/join
     * costs more than it saves, and results are bit-identical for any thread count. */
    omp_set_num_threads(1);
    ncsn_backend *be = ncsn_backend_create_from_name("cpu");

    /* --- the analytic score is the gradient of the log density (finite differences) --- */
    {
        const double pts[4][2] = {{-5.3, -4.1}, {0.2, -0.4}, {4.0, 6.5}, {-1.0, 2.0}};
        const double sig[3] = {0.0, 1.0, 20.0};
        double max_err = 0.0;
        for (int p = 0; p < 4; p++)
            for (int q = 0; q < 3; q++) {
                float x[2] = {(float)pts[p][0], (float)pts[p][1]}, s[2];
                mixture_score_at(sig[q], x, s);
                const double h = 1e-4;
                for (int d = 0; d < 2; d++) {
                    double xp[2] = {x[0], x[1]}, xm[2] = {x[0], x[1]};
                    xp[d] += h;
                    xm[d] -= h;
                    double fd = (mixture_log_density(sig[q], xp[0], xp[1]) -
                                 mixture_log_density(sig[q], xm[0], xm[1])) / (2.0 * h);
                    double err = fabs(fd - s[d]) / (1.0 + fabs(fd));
                    if (err > max_err) max_err = err;
                }
            }
        /* float32 output (rel 6e-8) + O(h^2) truncation: 1e-5 leaves a wide margin. */
        EXPECT(max_err < 1e-5, "analytic score vs finite differences: max rel err %.3g", max_err);
        printf("  analytic score vs central differences of log q_sigma: max rel err %.2e\n", max_err);
    }

    /* --- the schedule: sigma_i = exp(linspace(log 20, log 1, 10)) in float64, cast --- */
    enum { L = 10, T = 100 };
    float sigmas[L];
    for (int i = 0; i < L; i++) sigmas[i] = (float)exp(log(20.0) + (log(1.0) - log(20.0)) * i / (L - 1));
    const double eps = 0.1;

    /* --- plain Langevin on the data score (sigma -> 0): one level, a = eps, 1000 steps --- */
    const float data_sigma[1] = {1e-6f};
    float *plain = run_chain(be, NCSN_SAMPLER_LANGEVIN, data_sigma, 1, L * T, eps, seed);
    double f_plain = fraction_near_mode1(plain, N_POINTS);

    /* --- annealed Langevin --- */
    float *annealed = run_chain(be, NCSN_SAMPLER_ALD, sigmas, L, T, eps, seed);
    double f_annealed = fraction_near_mode1(annealed, N_POINTS);

    /* --- the initial points, for the record: the proportion plain Langevin keeps --- */
    int init_side = 0;
    for (int n = 0; n < N_POINTS; n++) {
        float u = -8.0f + 16.0f * ncsn_rng_uniform(seed, NCSN_RNG_SAMPLER_INIT, (uint32_t)n, 0, 0);
        float v = -8.0f + 16.0f * ncsn_rng_uniform(seed, NCSN_RNG_SAMPLER_INIT, (uint32_t)n, 0, 1);
        init_side += u + v < -0.139f; /* the equal-responsibility line x + y = -ln(4)/10 */
    }
    printf("  schedule: sigma 20 -> 1 geometric, L = %d, T = %d, step_lr = %g (a_1 = %g, a_L = %g)\n", L, T, eps,
           (double)ncsn_langevin_step_size(eps, sigmas, L, 0), (double)ncsn_langevin_step_size(eps, sigmas, L, L - 1));
    printf("  fraction of %d samples near (-5,-5): true 0.200 | init side %.4f | plain Langevin %.4f | "
           "annealed Langevin %.4f\n",
           N_POINTS, (double)init_side / N_POINTS, f_plain, f_annealed);
    EXPECT(fabs(f_annealed - WEIGHT1) <= 0.03, "annealed Langevin fraction %.4f not within 0.03 of 0.2", f_annealed);
    EXPECT(f_plain >= 0.35 && f_plain <= 0.65,
           "plain Langevin fraction %.4f: expected it to stay near the init proportion (~0.5)", f_plain);

    /* --- the annealed samples sit in the modes with the right spread: per-mode variance
     *     of q_{sigma_L} is 1 + 1^2 = 2 per coordinate (ULA at a = 0.1 inflates it by
     *     ~a/4 / (1 - a/4): about 2.5%); accept 1.7 .. 2.4. --- */
    double sum = 0.0, sumsq = 0.0;
    int n2 = 0;
    for (int n = 0; n < N_POINTS; n++) {
        if (annealed[2 * n] + annealed[2 * n + 1] < 0.0f) continue;
        double d = annealed[2 * n] - MU2[0];
        sum += d;
        sumsq += d * d;
        n2++;
    }
    double mean = sum / n2, var = sumsq / n2 - mean * mean;
    printf("  annealed samples in the (5,5) mode: %d, mean offset %.3f, variance %.3f (q_sigma_L: 2)\n", n2, mean,
           var);
    EXPECT(fabs(mean) < 0.1 && var > 1.7 && var < 2.4, "mode (5,5): mean offset %.3f variance %.3f", mean, var);

    if (argc > 1) {
        /* The data panel: exact draws from p, keyed by the toy stream. */
        float *data = ncsn_xmalloc((size_t)N_POINTS * 2 * sizeof(float));
        for (int n = 0; n < N_POINTS; n++) {
            int first = ncsn_rng_uniform(seed, NCSN_RNG_TOY, 0, 0, (uint64_t)n) < WEIGHT1;
            const double *mu = first ? MU1 : MU2;
            for (int d = 0; d < 2; d++)
                data[2 * n + d] = (float)(mu[d] + ncsn_rng_normal(seed, NCSN_RNG_TOY, 0, 1, 2 * (uint64_t)n + d));
        }
        char t_data[64], t_plain[64], t_annealed[64];
        snprintf(t_data, sizeof t_data, "DATA %.0f%%", 100.0 * fraction_near_mode1(data, N_POINTS));
        snprintf(t_plain, sizeof t_plain, "LANGEVIN %.0f%%", 100.0 * f_plain);
        snprintf(t_annealed, sizeof t_annealed, "ANNEALED LANGEVIN %.0f%%", 100.0 * f_annealed);
        ncsn_toy_panel panels[3] = {{data, N_POINTS, t_data}, {plain, N_POINTS, t_plain},
                                    {annealed, N_POINTS, t_annealed}};
        ncsn_toy_plot_png(argv[1], panels, 3, -10.0f, 10.0f, 5.0f, 360);
        printf("  wrote %s (percent = share of points near (-5,-5))\n", argv[1]);
        free(data);
    }

    free(plain);
    free(annealed);
    ncsn_backend_destroy(be);
    return harness_finish("test_langevin_mixture");
}
