/* test_adam.c: the optimiser, EMA, sampler and loss kernels of the CPU backend.
 *
 * - adam_step over 5 steps (plain; weight decay + amsgrad) against (a) a float64
 *   re-implementation of torch 1.13's single-tensor Adam written here and (b) numbers
 *   produced by real torch.optim.Adam (script below).
 * - ema_update, langevin_step, denoise_step, dsm_loss against float64 references; the DSM
 *   gradient also against central finite differences of the float64 batch-mean loss.
 *
 * Tolerances: parameters are |p| <= 3, whose fp32 ulp is 2.4e-7; each Adam step rounds p
 * once (half an ulp) and m, v to fp32 (relative 6e-8, entering the update of size <= lr
 * with a factor ~1), so 5 steps stay within atol 1.5e-6 + rtol 1e-6 of float64 and of
 * torch (which also rounds (1 - beta) differently: 1 - 0.9 in double, then to float, vs
 * 1.0f - 0.9f here; a 2e-7 relative difference in one factor of m).
 * Elementwise updates (EMA, Langevin, denoise) have 2-3 fp32 roundings: 1e-6 relative.
 * The DSM loss is a double sum of fp32 squared residuals: 1e-6 relative.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kernels/rng_math.h"
#include "ncsn/backend.h"
#include "tests/harness.h"

static ncsn_backend *be;

#define NPARAM 5
#define NSTEP 5
static const float adam_init[NPARAM] = {0.5f, -1.25f, 3.0f, 0.0f, -0.001f};
static const float adam_grad_base[NPARAM] = {0.3f, -0.7f, 1e-3f, 2.0f, -5e-5f};
static const float adam_grad_scale[NSTEP] = {1.0f, 0.1f, 2.0f, 0.05f, 0.5f};

/* Produced on this machine with Debian's torch 1.13.0a0 (/usr/bin/python3) by:
 *
 *   import torch
 *   init = [0.5, -1.25, 3.0, 0.0, -0.001]
 *   base = [0.3, -0.7, 1e-3, 2.0, -5e-5]
 *   scales = [1.0, 0.1, 2.0, 0.05, 0.5]
 *   configs = [dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False),
 *              dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True)]
 *   for cfg in configs:
 *       p = torch.nn.Parameter(torch.tensor(init))
 *       opt = torch.optim.Adam([p], foreach=False, **cfg)
 *       for t, s in enumerate(scales):
 *           p.grad = torch.tensor(base) * s
 *           opt.step()
 *           print(cfg['amsgrad'], t + 1, ', '.join('%.9g' % v for v in p.detach().tolist()))
 *
 * Rows: the parameters after steps 1..5. */
static const double torch_adam_plain[NSTEP][NPARAM] = {
    {0.499000013, -1.24899995, 2.99900007, -0.000999999931, -2.00117938e-07},
    {0.498259217, -1.24825919, 2.99825931, -0.00174081046, 0.000740402029},
    {0.497431397, -1.2474314, 2.99743152, -0.00256863888, 0.00156810251},
    {0.49674046, -1.24674046, 2.99674058, -0.00325956359, 0.00225890381},
    {0.49605152, -1.24605155, 2.99605155, -0.00394850969, 0.00294771558}};
static const double torch_adam_amsgrad_wd[NSTEP][NPARAM] = {
    {0.490000039, -1.24000001, 2.99000001, -0.00999999605, 0.00893377513},
    {0.481808126, -1.23175657, 2.98000169, -0.0174208768, 0.00273416284},
    {0.47318083, -1.2231046, 2.97000265, -0.0256759673, -0.00318581611},
    {0.465646654, -1.21551478, 2.96000719, -0.0325454026, -0.0058477968},
    {0.458074361, -1.20788336, 2.95001435, -0.0394383334, -0.00485488726}};

/* torch 1.13 torch/optim/adam.py _single_tensor_adam, in float64. */
typedef struct {
    double p[NPARAM], m[NPARAM], v[NPARAM], vmax[NPARAM];
} adam_state64;

static void adam_reference_step(adam_state64 *s, const double *grad, const ncsn_adam_hparams *hp) {
    double bc1 = 1.0 - pow(hp->beta1, (double)hp->step), bc2 = 1.0 - pow(hp->beta2, (double)hp->step);
    double step_size = hp->lr / bc1;
    for (int i = 0; i < NPARAM; i++) {
        double g = grad[i];
        if (hp->weight_decay != 0) g += hp->weight_decay * s->p[i];
        s->m[i] = hp->beta1 * s->m[i] + (1.0 - hp->beta1) * g;
        s->v[i] = hp->beta2 * s->v[i] + (1.0 - hp->beta2) * g * g;
        double second = s->v[i];
        if (hp->amsgrad) {
            s->vmax[i] = fmax(s->vmax[i], s->v[i]);
            second = s->vmax[i];
        }
        double denom = sqrt(second) / sqrt(bc2) + hp->eps;
        s->p[i] -= step_size * s->m[i] / denom;
    }
}

static void test_adam_config(const char *name, ncsn_adam_hparams hp, const double (*torch_ref)[NPARAM]) {
    printf("adam %s\n", name);
    float *p = ncsn_alloc(be, NPARAM * sizeof(float)), *g = ncsn_alloc(be, NPARAM * sizeof(float));
    float *m = ncsn_alloc(be, NPARAM * sizeof(float)), *v = ncsn_alloc(be, NPARAM * sizeof(float));
    float *vmax = hp.amsgrad ? ncsn_alloc(be, NPARAM * sizeof(float)) : NULL;
    memcpy(p, adam_init, sizeof adam_init);
    adam_state64 ref;
    memset(&ref, 0, sizeof ref);
    int amsgrad_active = 0; /* did vmax ever exceed v (else the test would not exercise amsgrad)? */
    for (int i = 0; i < NPARAM; i++) ref.p[i] = adam_init[i];
    for (int t = 0; t < NSTEP; t++) {
        double g64[NPARAM];
        for (int i = 0; i < NPARAM; i++) {
            g[i] = adam_grad_base[i] * adam_grad_scale[t]; /* float product, as torch's tensor * s */
            g64[i] = g[i];
        }
        hp.step = t + 1;
        ncsn_adam_step(be, p, g, m, v, vmax, NPARAM, &hp);
        adam_reference_step(&ref, g64, &hp);
        for (int i = 0; i < NPARAM; i++) amsgrad_active |= ref.vmax[i] > ref.v[i];
        char what[96];
        snprintf(what, sizeof what, "  step %d params vs float64", t + 1);
        harness_expect_close(what, p, ref.p, NPARAM, 1.5e-6, 1e-6);
        snprintf(what, sizeof what, "  step %d params vs torch.optim.Adam", t + 1);
        harness_expect_close(what, p, torch_ref[t], NPARAM, 1.5e-6, 1e-6);
    }
    harness_expect_close("  exp_avg after 5 steps", m, ref.m, NPARAM, 1e-9, 1e-6);
    harness_expect_close("  exp_avg_sq after 5 steps", v, ref.v, NPARAM, 1e-12, 1e-6);
    if (hp.amsgrad) {
        harness_expect_close("  max_exp_avg_sq after 5 steps", vmax, ref.vmax, NPARAM, 1e-12, 1e-6);
        /* The gradients shrink at step 4: vmax must then keep the larger earlier value. */
        EXPECT(amsgrad_active, "test data does not exercise amsgrad (vmax == v at every step)");
    }
    ncsn_free(be, p); ncsn_free(be, g); ncsn_free(be, m); ncsn_free(be, v);
    if (vmax) ncsn_free(be, vmax);
}

static void test_adam(void) {
    ncsn_adam_hparams plain = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 0, 0};
    ncsn_adam_hparams ams_wd = {1e-2f, 0.9f, 0.99f, 1e-6f, 0.1f, 1, 0};
    test_adam_config("lr 1e-3, betas (0.9, 0.999), eps 1e-8", plain, torch_adam_plain);
    test_adam_config("lr 1e-2, betas (0.9, 0.99), eps 1e-6, weight_decay 0.1, amsgrad", ams_wd, torch_adam_amsgrad_wd);
}

/* ---- EMA, Langevin, denoise ------------------------------------------------------------- */

static float rand_sym(uint32_t i, uint32_t stream) { return 2.0f * ncsn_rng_uniform(5, NCSN_RNG_TOY, stream, 0, i) - 1.0f; }

static void test_ema_denoise(void) {
    printf("ema_update, denoise_step\n");
    size_t n = 1001;
    float *shadow = ncsn_alloc(be, n * sizeof(float)), *theta = ncsn_alloc(be, n * sizeof(float));
    double *ref = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        shadow[i] = rand_sym((uint32_t)i, 1);
        theta[i] = rand_sym((uint32_t)i, 2);
    }
    float mu = 0.999f;
    for (size_t i = 0; i < n; i++) ref[i] = (double)mu * shadow[i] + (1.0 - (double)mu) * theta[i];
    ncsn_ema_update(be, shadow, theta, n, mu);
    harness_expect_close("  ema_update mu 0.999", shadow, ref, n, 1e-7, 1e-6);

    float sigma_last = 0.01f, sls = sigma_last * sigma_last;
    for (size_t i = 0; i < n; i++) ref[i] = (double)shadow[i] + (double)sls * (100.0f * theta[i]);
    for (size_t i = 0; i < n; i++) theta[i] *= 100.0f; /* scores ~ 1/sigma are large */
    ncsn_denoise_step(be, shadow, theta, n, sls);
    harness_expect_close("  denoise_step", shadow, ref, n, 1e-7, 1e-6);
    ncsn_free(be, shadow); ncsn_free(be, theta); free(ref);
}

static void test_langevin(void) {
    printf("langevin_step\n");
    const int N = 10;
    const size_t per = 37;
    const uint64_t seed = 2024;
    const uint32_t offset = 100, step = 517;
    const float a = 3.3e-5f;
    size_t n = (size_t)N * per;
    float *x = ncsn_alloc(be, n * sizeof(float)), *s = ncsn_alloc(be, n * sizeof(float));
    float *x0 = ncsn_alloc(be, n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        x0[i] = rand_sym((uint32_t)i, 3);
        s[i] = 50.0f * rand_sym((uint32_t)i, 4);
    }
    memcpy(x, x0, n * sizeof(float));
    double *ref = malloc(n * sizeof(double));
    for (int k = 0; k < N; k++)
        for (size_t i = 0; i < per; i++) {
            double z = ncsn_rng_normal(seed, NCSN_RNG_LANGEVIN, offset + (uint32_t)k, step, i);
            size_t j = (size_t)k * per + i;
            ref[j] = (double)x0[j] + (double)a * s[j] + sqrt(2.0 * (double)a) * z;
        }
    ncsn_langevin_step(be, x, s, N, per, a, seed, offset, step);
    harness_expect_close("  x + a s + sqrt(2a) z", x, ref, n, 1e-7, 1e-6);

    /* Noise is keyed by the sample's global index: 4 samples at offset + 3 equal rows 3..6. */
    float *part = ncsn_alloc(be, 4 * per * sizeof(float));
    memcpy(part, x0 + 3 * per, 4 * per * sizeof(float));
    ncsn_langevin_step(be, part, s + 3 * per, 4, per, a, seed, offset + 3, step);
    EXPECT(!memcmp(part, x + 3 * per, 4 * per * sizeof(float)), "langevin noise depends on the batch split");

    /* A different step draws different noise. */
    memcpy(part, x0, per * sizeof(float));
    ncsn_langevin_step(be, part, s, 1, per, a, seed, offset, step + 1);
    int same = 0;
    for (size_t i = 0; i < per; i++) same += part[i] == x[i];
    EXPECT(same < 3, "steps %u and %u gave %d identical updates of %zu", step, step + 1, same, per);
    free(ref);
    ncsn_free(be, x); ncsn_free(be, s); ncsn_free(be, x0); ncsn_free(be, part);
}

/* ---- DSM loss ------------------------------------------------------------------------------ */

typedef struct {
    int N;
    size_t per;
    double *score, *z;
    const float *sigmas;
    const int32_t *labels;
} dsm_ctx;

/* Batch mean of 0.5 * sum (sigma s + z)^2: what dscore is the gradient of. */
static double dsm_mean_loss(void *ctx) {
    dsm_ctx *c = ctx;
    double total = 0;
    for (int k = 0; k < c->N; k++) {
        double sigma = c->sigmas[c->labels[k]];
        for (size_t i = 0; i < c->per; i++) {
            double r = sigma * c->score[k * c->per + i] + c->z[k * c->per + i];
            total += 0.5 * r * r;
        }
    }
    return total / c->N;
}

static void test_dsm_loss(void) {
    printf("dsm_loss\n");
    const int N = 3, L = 4;
    const size_t per = 3 * 5 * 7;
    const float sig_host[4] = {50.0f, 5.0f, 0.5f, 0.01f};
    const int32_t lab_host[3] = {0, 3, 3};
    size_t n = (size_t)N * per;
    float *sigmas = ncsn_alloc(be, L * sizeof(float));
    int32_t *labels = ncsn_alloc(be, N * sizeof(int32_t));
    memcpy(sigmas, sig_host, sizeof sig_host);
    memcpy(labels, lab_host, sizeof lab_host);
    float *score = ncsn_alloc(be, n * sizeof(float)), *z = ncsn_alloc(be, n * sizeof(float));
    ncsn_fill_normal(be, z, N, per, 3, NCSN_RNG_NOISE, 0, 0);
    /* A score near the optimum -z / sigma plus a perturbation, as in training. */
    for (int k = 0; k < N; k++)
        for (size_t i = 0; i < per; i++)
            score[k * per + i] = -z[k * per + i] / sig_host[lab_host[k]] + 0.3f * rand_sym((uint32_t)(k * per + i), 6);
    float *loss = ncsn_alloc(be, N * sizeof(float)), *dscore = ncsn_alloc(be, n * sizeof(float));
    ncsn_dsm_loss(be, loss, dscore, score, z, sigmas, labels, N, per);

    dsm_ctx c = {N, per, malloc(n * sizeof(double)), malloc(n * sizeof(double)), sig_host, lab_host};
    for (size_t i = 0; i < n; i++) {
        c.score[i] = score[i];
        c.z[i] = z[i];
    }
    /* The residual sigma * s + z is formed in fp32 (as PyTorch does) and cancels near the
     * optimum s = -z / sigma: its rounding error is up to u * (|sigma s| + |r|) with
     * u = 2^-24 (one rounding of the product, one of the sum), so the loss may differ from
     * float64 by sum |r| * that, plus the final rounding to float. */
    for (int k = 0; k < N; k++) {
        double sigma = sig_host[lab_host[k]], sum = 0, bound = 0, u = 1.0 / 16777216.0;
        for (size_t i = 0; i < per; i++) {
            double ss = sigma * c.score[k * per + i], r = ss + c.z[k * per + i];
            sum += r * r;
            bound += fabs(r) * u * (fabs(ss) + fabs(r));
        }
        double ref_loss = 0.5 * sum;
        char what[64];
        snprintf(what, sizeof what, "  loss of example %d (sigma %g)", k, sigma);
        harness_expect_close(what, &loss[k], &ref_loss, 1, 2.0 * bound, 2.0 * u);
    }

    /* dscore against central differences of the float64 batch-mean loss (quadratic in the
     * score, so the central difference is exact up to float64 rounding). */
    double *fd = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        double saved = c.score[i], h = 1e-3;
        c.score[i] = saved + h;
        double up = dsm_mean_loss(&c);
        c.score[i] = saved - h;
        double down = dsm_mean_loss(&c);
        c.score[i] = saved;
        fd[i] = (up - down) / (2 * h);
    }
    double scale = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(fd[i]));
    harness_expect_close("  dscore vs FD of the batch mean", dscore, fd, n, 1e-6 * scale, 1e-5);

    /* Evaluation only: dscore NULL, same losses. */
    float *loss2 = ncsn_alloc(be, N * sizeof(float));
    ncsn_dsm_loss(be, loss2, NULL, score, z, sigmas, labels, N, per);
    EXPECT(!memcmp(loss, loss2, N * sizeof(float)), "loss with dscore = NULL differs");
    free(c.score); free(c.z); free(fd);
    ncsn_free(be, sigmas); ncsn_free(be, labels); ncsn_free(be, score); ncsn_free(be, z); ncsn_free(be, loss);
    ncsn_free(be, dscore); ncsn_free(be, loss2);
}

int main(void) {
    be = harness_cpu_backend();
    test_adam();
    test_ema_denoise();
    test_langevin();
    test_dsm_loss();
    ncsn_cpu_backend_destroy(be);
    return harness_finish("test_adam");
}
