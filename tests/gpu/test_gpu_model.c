/* test_gpu_model.c: whole-network agreement of the CUDA backend with the CPU backend: one
 * full training step and a short Langevin chain, on a tiny NCSNv2 (CIFAR-10 shape, 32x32x3)
 * and a tiny NCSN v1 (MNIST shape, 28x28x1), both ngf 8 and L = 10.
 *
 * tests/gpu/test_gpu_ops.c checks every op in isolation; this checks that the models'
 * call lists (buffer offsets, accumulate flags, stream ordering, the arena plan) produce
 * the same training step and the same samples on the device. Both models start from the
 * SAME parameters (the CPU model is initialised, its buffer copied to the GPU model) and
 * see the same x, labels and noise z: ncsn_fill_normal is a counter RNG (kernels/rng_math.h),
 * so each backend draws z itself and gets the same values (checked first).
 *
 * The step (what ncsn_trainer_step does, written out with the public pieces):
 *   noise_inject -> forward -> dsm_loss (with dscore) -> zero_grads -> backward
 *   -> ONE adam_step -> ema_update.
 *
 * Tolerances, and why (strict FP32 on both sides: no TF32, deterministic cuDNN algorithms):
 *   noise z     atol 1e-6: Box-Muller in float64 on both, rounded to float; a last-bit
 *               difference of the device's log/sin/cos is about 2 ulp at |z| < 6.
 *   loss        rel 1e-5: a sum of squares carried in double, of scores that differ only
 *               by convolution summation order (below).
 *   score       1e-4 of max|cpu|: cuDNN and oneDNN sum the Cin*k*k products of every
 *               convolution in a different order (and may use Winograd or FFT transforms),
 *               so each layer carries a few eps * sqrt(terms) of relative error; through
 *               the ~20 convolutions of these nets that stays well under 1e-4.
 *   gradients   per tensor, by name: max|gpu - cpu| <= 1e-4 * max|cpu| of THAT tensor, for
 *               the same reason (the weight gradient sums N*H*W products in yet another order).
 *   after Adam  derived, per element: at step 1 Adam moves a parameter by
 *               u(g) = lr * g / (|g| + eps) (m_hat = g, sqrt(v_hat) = |g|), so a gradient
 *               known to within d (the tensor's gradient tolerance) may move it by anything
 *               in u([g - d, g + d]); where |g| <= d that includes both signs (up to 2 lr:
 *               counted and reported, not an error). Plus 4 ulp of the parameter for the
 *               rounding of the update itself (nvcc contracts into FMAs, the CPU does not).
 *   EMA         the same bound times (1 - mu), plus 4 ulp.
 *   samples     1e-4 of max|cpu| (and of |cpu|): the Langevin noise is bit-identical by
 *               construction (same Philox keys on both backends), so every difference comes
 *               from the network's convolutions, fed back through a few chain steps.
 *
 * bf16 NHWC inference (ncsn_model_set_bf16_inference, the sampler's default network): one
 * forward and a short chain on both backends, each held to 3x the CPU's own measured distance
 * from fp32 (test_bf16_inference says why), and graph replay vs direct ops bit for bit.
 *
 * Multi-GPU: the public API has no device count, so this test does not pretend to test
 * data parallelism; it prints how to (tests/test_train_dp.c does it on the CPU).
 *
 * Without a usable GPU this prints "test-gpu: skipped: <reason>" and exits 0.
 * NCSN_TEST_GPU_CPU_PAIR=1 runs everything with a second CPU backend in place of the GPU,
 * which checks this test's logic on a machine without one (the results are then bit-identical).
 * NCSN_TEST_GPU_VERBOSE=1 prints one line per parameter tensor instead of a summary.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/rng_math.h"
#include "ncsn/backend.h"
#include "ncsn/config.h"
#include "ncsn/model.h"
#include "ncsn/sample.h"
#include "tests/harness.h"
#include "tests/gpu/gpu_pair.h"

static ncsn_backend *cpu, *gpu;
static int verbose;

/* Tiny official-layout configs. v2: CIFAR-10 shape; v1: MNIST shape (single channel, so the
 * v1 CondInstanceNorm++ "C == 1" path of the first layers runs too). */
static const char *V2_TINY =
    "training:\n  batch_size: 4\n"
    "data:\n  dataset: CIFAR10\n  image_size: 32\n  channels: 3\n"
    "model:\n  arch: ncsnv2\n  sigma_begin: 50\n  sigma_end: 0.01\n  num_classes: 10\n"
    "  sigma_dist: geometric\n  ema: true\n  ema_rate: 0.999\n  ngf: 8\n"
    "optim:\n  lr: 0.001\n  beta1: 0.9\n  eps: 0.00000001\n";

static const char *V1_TINY =
    "training:\n  batch_size: 4\n  algo: dsm\n"
    "data:\n  dataset: MNIST\n  image_size: 28\n  channels: 1\n"
    "model:\n  arch: ncsn\n  sigma_begin: 1\n  sigma_end: 0.01\n  num_classes: 10\n  ngf: 8\n"
    "optim:\n  lr: 0.001\n  beta1: 0.9\n  eps: 0.00000001\n";

enum { BATCH = 4 };
static const uint64_t SEED = 20240611u;
static const double ADAM_BETA2 = 0.999; /* torch default; the configs do not set it */
static const float EMA_MU = 0.999f;

/* ---- host copies and the comparison ---------------------------------------------------- */

static float *to_host(ncsn_backend *be, const float *p, size_t n) {
    float *h = ncsn_xmalloc(n * sizeof(float));
    ncsn_copy_to_host(be, h, p, n * sizeof(float));
    return h;
}

static double max_abs(const float *a, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        if (fabs((double)a[i]) > m) m = fabs((double)a[i]);
    return m;
}

/* Elementwise |g - c| <= atol + rtol |c| + stol max|c|; NaN only matches NaN. Prints the
 * report line (when `print`) and on failure the first differing values. Returns 1 on pass;
 * *ratio receives max err / max|c|. */
static int compare_host(const char *what, const char *model, const float *g, const float *c, size_t n, double atol,
                        double rtol, double stol, int print, double *ratio) {
    double scale = max_abs(c, n), max_err = 0.0;
    size_t bad = 0, first_bad[5];
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)g[i] - (double)c[i]);
        int ok = err <= atol + rtol * fabs((double)c[i]) + stol * scale;
        if (isnan(c[i]) || isnan(g[i])) ok = isnan(c[i]) && isnan(g[i]);
        if (!ok) {
            if (bad < 5) first_bad[bad] = i;
            bad++;
        }
        if (err > max_err || err != err) max_err = err;
    }
    harness_checks++;
    if (bad) harness_failures++;
    double r = scale > 0 ? max_err / scale : max_err;
    if (ratio) *ratio = r;
    if (print || bad)
        printf("  %-4s %-44s n=%-7zu max abs %9.3e  /max|cpu| %9.3e  %s\n", model, what, n, max_err, r,
               bad ? "FAIL" : "PASS");
    for (size_t k = 0; k < bad && k < 5; k++)
        printf("      [%zu] gpu %.9g cpu %.9g (err %.3g)\n", first_bad[k], g[first_bad[k]], c[first_bad[k]],
               fabs((double)g[first_bad[k]] - (double)c[first_bad[k]]));
    if (bad) printf("      %zu/%zu outside tolerance\n", bad, n);
    return bad == 0;
}

/* One Adam step's displacement of a parameter from a first-step gradient g (m_hat = g,
 * sqrt(v_hat) = |g|), in double. */
static double adam_first_update(double lr, double eps, double g) { return lr * g / (fabs(g) + eps); }

static double ulp_of(float x) {
    float a = fabsf(x);
    return (double)nextafterf(a, INFINITY) - (double)a;
}

/* ---- one model on both backends ---------------------------------------------------------- */

typedef struct {
    ncsn_model *mc, *mg;
    size_t P, D; /* parameters; input elements per example */
    int L, C, H, W;
} model_pair;

static model_pair pair_create(const ncsn_config *cfg) {
    model_pair mp;
    mp.mc = ncsn_model_create(cpu, cfg);
    mp.mg = ncsn_model_create(gpu, cfg);
    ncsn_model_plan(mp.mc, BATCH);
    ncsn_model_plan(mp.mg, BATCH);
    mp.P = ncsn_model_table(mp.mc)->total;
    NCSN_CHECKF(ncsn_model_table(mp.mg)->total == mp.P, "parameter counts differ: cpu %zu gpu %zu", mp.P,
                ncsn_model_table(mp.mg)->total);
    mp.D = ncsn_model_input_size(mp.mc);
    mp.L = ncsn_model_num_levels(mp.mc);
    ncsn_model_input_shape(mp.mc, &mp.C, &mp.H, &mp.W);

    /* Same starting point: the CPU model's official initialisation, copied over. */
    ncsn_model_init(mp.mc, SEED);
    float *theta = to_host(cpu, ncsn_model_params(mp.mc), mp.P);
    ncsn_copy_to_device(gpu, ncsn_model_params(mp.mg), theta, mp.P * sizeof(float));
    float *back = to_host(gpu, ncsn_model_params(mp.mg), mp.P);
    NCSN_CHECK(memcmp(back, theta, mp.P * sizeof(float)) == 0);
    free(back);
    free(theta);
    return mp;
}

static void pair_free(model_pair *mp) {
    ncsn_model_free(mp->mc);
    ncsn_model_free(mp->mg);
}

/* ---- 1. one training step ---------------------------------------------------------------- */

static void test_train_step(const char *tag, const ncsn_config *cfg) {
    model_pair mp = pair_create(cfg);
    const size_t P = mp.P, BD = (size_t)BATCH * mp.D;
    const ncsn_param_table *tab = ncsn_model_table(mp.mc);
    printf("-- %s (%s, %dx%dx%d, ngf %d, L %d): %zu parameters in %d tensors; one training step, batch %d\n", tag,
           ncsn_arch_name(cfg->model.arch), mp.C, mp.H, mp.W, cfg->model.ngf, mp.L, P, tab->n, BATCH);

    /* Inputs: images in [0, 1] and one label of each kind, from the engine's counter RNG. */
    float *x_host = ncsn_xmalloc(BD * sizeof(float));
    for (size_t i = 0; i < BD; i++) x_host[i] = ncsn_rng_uniform(SEED, NCSN_RNG_TOY, 0, 1, i);
    int32_t labels_host[BATCH] = {0, mp.L / 2, mp.L - 1, 3};

    float *x[2], *z[2], *xn[2], *score[2], *dscore[2], *loss[2], *adam_m[2], *adam_v[2], *shadow[2];
    int32_t *labels[2];
    ncsn_backend *bes[2] = {cpu, gpu};
    ncsn_model *ms[2] = {mp.mc, mp.mg};
    for (int s = 0; s < 2; s++) {
        ncsn_backend *be = bes[s];
        x[s] = ncsn_alloc(be, BD * sizeof(float));
        z[s] = ncsn_alloc(be, BD * sizeof(float));
        xn[s] = ncsn_alloc(be, BD * sizeof(float));
        score[s] = ncsn_alloc(be, BD * sizeof(float));
        dscore[s] = ncsn_alloc(be, BD * sizeof(float));
        loss[s] = ncsn_alloc(be, BATCH * sizeof(float));
        adam_m[s] = ncsn_alloc(be, P * sizeof(float)); /* zero-filled: torch's fresh state */
        adam_v[s] = ncsn_alloc(be, P * sizeof(float));
        shadow[s] = ncsn_alloc(be, P * sizeof(float));
        labels[s] = ncsn_alloc(be, BATCH * sizeof(int32_t));
        ncsn_copy_to_device(be, x[s], x_host, BD * sizeof(float));
        ncsn_copy_to_device(be, labels[s], labels_host, sizeof labels_host);
        ncsn_copy(be, shadow[s], ncsn_model_params(ms[s]), P * sizeof(float)); /* EMA starts at theta */
        ncsn_fill_normal(be, z[s], BATCH, mp.D, SEED, NCSN_RNG_NOISE, 0, 0);
    }

    const ncsn_adam_hparams hp = {.lr = (float)cfg->optim.lr,
                                  .beta1 = (float)cfg->optim.beta1,
                                  .beta2 = (float)ADAM_BETA2,
                                  .eps = (float)cfg->optim.eps,
                                  .weight_decay = (float)cfg->optim.weight_decay,
                                  .amsgrad = cfg->optim.amsgrad,
                                  .step = 1};
    NCSN_CHECKF(hp.weight_decay == 0.0f && !hp.amsgrad, "the Adam bound below assumes plain Adam");
    for (int s = 0; s < 2; s++) {
        ncsn_backend *be = bes[s];
        ncsn_model *m = ms[s];
        ncsn_noise_inject(be, xn[s], x[s], z[s], ncsn_model_sigmas(m), labels[s], BATCH, mp.D);
        ncsn_model_forward(m, score[s], xn[s], labels[s], BATCH);
        ncsn_dsm_loss(be, loss[s], dscore[s], score[s], z[s], ncsn_model_sigmas(m), labels[s], BATCH, mp.D);
        ncsn_model_zero_grads(m);
        ncsn_model_backward(m, NULL, dscore[s]);
        ncsn_adam_step(be, ncsn_model_params(m), ncsn_model_grads(m), adam_m[s], adam_v[s], NULL, P, &hp);
        ncsn_ema_update(be, shadow[s], ncsn_model_params(m), P, EMA_MU);
        ncsn_synchronize(be);
    }

    /* Host copies: [0] cpu, [1] gpu. */
    float *hz[2], *hl[2], *hs[2], *hg[2], *hp_[2], *hsh[2];
    for (int s = 0; s < 2; s++) {
        hz[s] = to_host(bes[s], z[s], BD);
        hl[s] = to_host(bes[s], loss[s], BATCH);
        hs[s] = to_host(bes[s], score[s], BD);
        hg[s] = to_host(bes[s], ncsn_model_grads(ms[s]), P);
        hp_[s] = to_host(bes[s], ncsn_model_params(ms[s]), P);
        hsh[s] = to_host(bes[s], shadow[s], P);
    }
    float *theta0 = ncsn_xmalloc(P * sizeof(float));
    /* theta0: the parameters before the step (the same init, drawn again), for the ulp
     * term of the bound and the check that the step moved them. */
    {
        ncsn_model *m0 = ncsn_model_create(cpu, cfg);
        ncsn_model_init(m0, SEED);
        ncsn_copy_to_host(cpu, theta0, ncsn_model_params(m0), P * sizeof(float));
        ncsn_model_free(m0);
    }

    compare_host("noise z (counter RNG, each backend draws)", tag, hz[1], hz[0], BD, 1e-6, 0, 0, 1, NULL);

    double lc = 0, lg = 0;
    for (int n = 0; n < BATCH; n++) lc += hl[0][n], lg += hl[1][n];
    lc /= BATCH, lg /= BATCH;
    double lrel = fabs(lg - lc) / fabs(lc);
    EXPECT(isfinite(lc) && lrel <= 1e-5, "%s loss: gpu %.9g cpu %.9g rel %.3g > 1e-5", tag, lg, lc, lrel);
    printf("  %-4s %-44s cpu %.9g gpu %.9g  rel %9.3e  %s\n", tag, "DSM loss (batch mean)", lc, lg, lrel,
           isfinite(lc) && lrel <= 1e-5 ? "PASS" : "FAIL");
    compare_host("loss per example", tag, hl[1], hl[0], BATCH, 0, 1e-5, 0, 1, NULL);
    compare_host("scores s(x + sigma z, label)", tag, hs[1], hs[0], BD, 0, 1e-4, 1e-4, 1, NULL);

    /* Gradients, tensor by tensor; the per-tensor tolerance d feeds the Adam bound. */
    double *grad_tol = ncsn_xmalloc(P * sizeof(double));
    int worst = -1, grad_failed = 0;
    double worst_ratio = -1;
    for (int t = 0; t < tab->n; t++) {
        const ncsn_param_entry *e = &tab->entries[t];
        const ncsn_param_entry *eg = &ncsn_model_table(mp.mg)->entries[t];
        NCSN_CHECKF(!strcmp(e->name, eg->name) && e->offset == eg->offset && e->count == eg->count,
                    "tables differ at %d: %s vs %s", t, e->name, eg->name);
        char what[NCSN_MAX_NAME + 16];
        snprintf(what, sizeof what, "grad %s", e->name);
        double ratio;
        int ok = compare_host(what, tag, hg[1] + e->offset, hg[0] + e->offset, e->count, 0, 0, 1e-4, verbose, &ratio);
        grad_failed += !ok;
        if (ratio > worst_ratio) worst_ratio = ratio, worst = t;
        double d = 1e-4 * max_abs(hg[0] + e->offset, e->count);
        for (size_t i = 0; i < e->count; i++) grad_tol[e->offset + i] = d;
    }
    printf("  %-4s %-44s %d/%d tensors pass; worst %s: max err/max|cpu| %9.3e (tol 1e-4)  %s\n", tag,
           "gradients, per tensor by name", tab->n - grad_failed, tab->n, worst >= 0 ? tab->entries[worst].name : "-",
           worst_ratio, grad_failed ? "FAIL" : "PASS");

    /* Parameters after one Adam step, and the EMA after one update: the derived bound. */
    size_t bad_p = 0, bad_e = 0, undetermined = 0, first_p = 0, first_e = 0;
    double max_err_p = 0, max_err_e = 0, max_ratio_p = 0;
    const double lr = hp.lr, eps = hp.eps, one_minus_mu = 1.0 - (double)EMA_MU;
    for (size_t i = 0; i < P; i++) {
        double g = hg[0][i], d = grad_tol[i], u = adam_first_update(lr, eps, g);
        double spread = fmax(fabs(adam_first_update(lr, eps, g + d) - u), fabs(adam_first_update(lr, eps, g - d) - u));
        if (g != 0.0 && fabs(g) <= d) undetermined++;
        double tol_p = spread + 4 * ulp_of(hp_[0][i]) + 4 * ulp_of(theta0[i]);
        double err_p = fabs((double)hp_[1][i] - (double)hp_[0][i]);
        if (!(err_p <= tol_p)) {
            if (bad_p++ == 0) first_p = i;
        }
        if (err_p > max_err_p) max_err_p = err_p;
        if (tol_p > 0 && err_p / tol_p > max_ratio_p) max_ratio_p = err_p / tol_p;
        double tol_e = one_minus_mu * tol_p + 4 * ulp_of(hsh[0][i]);
        double err_e = fabs((double)hsh[1][i] - (double)hsh[0][i]);
        if (!(err_e <= tol_e)) {
            if (bad_e++ == 0) first_e = i;
        }
        if (err_e > max_err_e) max_err_e = err_e;
    }
    harness_checks += 2;
    harness_failures += (bad_p != 0) + (bad_e != 0);
    printf("  %-4s %-44s max abs %9.3e  max err/bound %6.3f  %s\n", tag, "params after 1 Adam step (lr 1e-3)",
           max_err_p, max_ratio_p, bad_p ? "FAIL" : "PASS");
    printf("       (%zu of %zu gradients within their tolerance of 0: update sign undetermined, bound 2 lr)\n",
           undetermined, P);
    if (bad_p)
        printf("      %zu/%zu outside; first [%zu] gpu %.9g cpu %.9g grad %.3g\n", bad_p, P, first_p, hp_[1][first_p],
               hp_[0][first_p], hg[0][first_p]);
    printf("  %-4s %-44s max abs %9.3e  %s\n", tag, "EMA shadow after 1 update (mu 0.999)", max_err_e,
           bad_e ? "FAIL" : "PASS");
    if (bad_e)
        printf("      %zu/%zu outside; first [%zu] gpu %.9g cpu %.9g\n", bad_e, P, first_e, hsh[1][first_e],
               hsh[0][first_e]);
    /* The step must have done something, or all of the above compares zeros. */
    size_t moved = 0;
    for (size_t i = 0; i < P; i++) moved += hp_[0][i] != theta0[i];
    EXPECT(moved > P / 2, "%s: Adam moved only %zu of %zu parameters", tag, moved, P);

    for (int s = 0; s < 2; s++) {
        ncsn_backend *be = bes[s];
        ncsn_free(be, x[s]), ncsn_free(be, z[s]), ncsn_free(be, xn[s]), ncsn_free(be, score[s]);
        ncsn_free(be, dscore[s]), ncsn_free(be, loss[s]), ncsn_free(be, adam_m[s]), ncsn_free(be, adam_v[s]);
        ncsn_free(be, shadow[s]), ncsn_free(be, labels[s]);
        free(hz[s]), free(hl[s]), free(hs[s]), free(hg[s]), free(hp_[s]), free(hsh[s]);
    }
    free(theta0);
    free(grad_tol);
    free(x_host);
    pair_free(&mp);
}

/* ---- 2. a short sampler chain ------------------------------------------------------------ */

/* ALD over the last `levels` levels of the schedule (n_steps_each 2) then the Tweedie
 * denoising step, batch 4, from the uniform init: 2 * levels + 1 network evaluations. The
 * first levels of the official schedule (sigma_1 = 50) would throw an untrained network's
 * chain far outside [0, 1]; the small-sigma end is where the samples are made. */
/* The ALD options of the chain tests: the last levels, 2 steps each, + denoise. */
static ncsn_sampler_options chain_options(double step_lr, uint64_t seed) {
    ncsn_sampler_options o;
    ncsn_sampler_options_default(&o);
    o.kind = NCSN_SAMPLER_ALD;
    o.init = NCSN_INIT_UNIFORM;
    o.init_lo = 0.0f, o.init_hi = 1.0f;
    o.step_lr = step_lr;
    o.n_steps_each = 2;
    o.denoise = 1;
    o.seed = seed;
    return o;
}

/* Runs the last `levels` levels of the chain on one backend; returns x on the host, and the
 * initial x in *x_init when it is not NULL. */
static float *run_chain(ncsn_backend *be, ncsn_model *m, const model_pair *mp, const ncsn_sampler_options *o,
                        int levels, float **x_init) {
    const size_t BD = (size_t)BATCH * mp->D;
    ncsn_sampler *smp = ncsn_sampler_create(be, ncsn_model_score_fn, m, ncsn_model_sigmas_host(m), mp->L, mp->C,
                                            mp->H, mp->W, BATCH, o);
    float *x = ncsn_alloc(be, BD * sizeof(float));
    ncsn_sampler_init_batch(smp, x, 0, BATCH);
    if (x_init) *x_init = to_host(be, x, BD);
    ncsn_sampler_run_levels(smp, x, 0, BATCH, mp->L - levels, mp->L);
    ncsn_sampler_finish(smp, x, BATCH);
    float *h = to_host(be, x, BD);
    ncsn_free(be, x);
    ncsn_sampler_free(smp);
    return h;
}

static void test_sampler(const char *tag, const ncsn_config *cfg, int levels, double step_lr) {
    model_pair mp = pair_create(cfg);
    const size_t BD = (size_t)BATCH * mp.D;
    const ncsn_sampler_options o = chain_options(step_lr, SEED + 1);
    NCSN_CHECK(levels >= 1 && levels <= mp.L);

    /* Runs: the CPU; the GPU replaying one captured step (the default); the GPU running
     * every op directly (NCSN_CUDA_GRAPHS=0), which must give the same bits as the graph. */
    float *hx[3], *hx_init = NULL;
    hx[0] = run_chain(cpu, mp.mc, &mp, &o, levels, &hx_init);
    hx[1] = run_chain(gpu, mp.mg, &mp, &o, levels, NULL);
    setenv("NCSN_CUDA_GRAPHS", "0", 1);
    hx[2] = run_chain(gpu, mp.mg, &mp, &o, levels, NULL);
    unsetenv("NCSN_CUDA_GRAPHS");
    char what[96];
    snprintf(what, sizeof what, "ALD x: levels %d..%d x 2 steps + denoise", mp.L - levels, mp.L - 1);
    compare_host(what, tag, hx[1], hx[0], BD, 0, 1e-4, 1e-4, 1, NULL);
    harness_checks++;
    int same = !memcmp(hx[1], hx[2], BD * sizeof(float));
    if (!same) harness_failures++;
    printf("  %s ALD x: CUDA graph replay vs direct ops: %s\n", tag, same ? "bit-identical PASS" : "differ FAIL");
    /* The chain must have moved away from its U[0, 1) start (sqrt(2 a) of the last level
     * alone is ~0.01) and stayed finite and bounded, or the comparison proves little. */
    double mx = max_abs(hx[0], BD), moved = 0.0;
    int finite = 1;
    for (size_t i = 0; i < BD; i++) {
        finite &= isfinite(hx[0][i]);
        moved = fmax(moved, fabs((double)hx[0][i] - (double)hx_init[i]));
    }
    EXPECT(finite && moved > 0.05 && mx < 1e3, "%s chain: max|x| %g, max|x - x_init| %g (finite %d)", tag, mx, moved,
           finite);
    printf("       (cpu chain: max|x| %.4g, max|x - x_init| %.4g; Langevin noise is bit-identical by construction,\n"
           "        so differences come from the network's convolutions only)\n",
           mx, moved);
    free(hx_init);
    free(hx[0]);
    free(hx[1]);
    free(hx[2]);
    pair_free(&mp);
}

/* ---- 3. bf16 inference (the sampler's fast path) ------------------------------------------ */



/* One forward and a short chain with both models in bf16 NHWC inference. The GPU and the
 * CPU round the same activations to bf16, but their convolutions sum in different orders,
 * so a value near a rounding boundary can round either way on either side: the two are
 * independent approximations of the fp32 result. With d = the CPU's measured distance from
 * its own fp32 run (relative L2), the GPU's distance from that fp32 is statistically the
 * same d, so by the triangle inequality |gpu - cpu| <= 2d, and we allow 3d for the
 * variation of d between runs. (A layout or offset bug gives a relative L2 near 1.) In the
 * CPU-pair mode both sides are the same backend, so the results are bit-identical.
 * Graph replay and direct ops must agree bit for bit in bf16 too. */
static void test_bf16_inference(const char *tag, const ncsn_config *cfg, int levels, double step_lr) {
    model_pair mp = pair_create(cfg);
    const size_t BD = (size_t)BATCH * mp.D;
    const ncsn_sampler_options o = chain_options(step_lr, SEED + 2);

    /* One forward at every precision on the same inputs. */
    float *xh = ncsn_xmalloc(BD * sizeof(float));
    int32_t lab[BATCH];
    for (size_t i = 0; i < BD; i++) xh[i] = ncsn_rng_uniform(SEED, 3, 0, 0, i);
    for (int n = 0; n < BATCH; n++) lab[n] = (int32_t)((3 * n + 1) % mp.L);
    ncsn_backend *bes[2] = {cpu, gpu};
    ncsn_model *ms[2] = {mp.mc, mp.mg};
    float *score[3];
    for (int k = 0; k < 3; k++) { /* 0: cpu fp32, 1: cpu bf16, 2: gpu bf16 */
        ncsn_backend *be = bes[k == 2];
        ncsn_model *m = ms[k == 2];
        if (k >= 1) {
            ncsn_backend_set_precision(be, NCSN_PRECISION_BF16);
            EXPECT(ncsn_model_set_bf16_inference(m, 1) == 1, "%s: bf16 inference refused", tag);
        }
        float *x = ncsn_alloc(be, BD * sizeof(float)), *sc = ncsn_alloc(be, BD * sizeof(float));
        int32_t *labels = ncsn_alloc(be, sizeof lab);
        ncsn_copy_to_device(be, x, xh, BD * sizeof(float));
        ncsn_copy_to_device(be, labels, lab, sizeof lab);
        ncsn_model_forward(m, sc, x, labels, BATCH);
        score[k] = to_host(be, sc, BD);
        ncsn_free(be, x);
        ncsn_free(be, sc);
        ncsn_free(be, labels);
    }
    const double d_score = harness_relative_l2(score[1], score[0], BD);
    const double g_score = harness_relative_l2(score[2], score[1], BD);
    harness_checks++;
    int ok = g_score <= 3.0 * d_score;
    if (!ok) harness_failures++;
    printf("  %-4s bf16 inference score: |gpu - cpu| %.3e (bound 3 x |cpu bf16 - cpu fp32| = %.3e)  %s\n", tag,
           g_score, 3.0 * d_score, ok ? "PASS" : "FAIL");

    /* The chains: CPU fp32 (for d), CPU bf16, GPU bf16 by graph replay and by direct ops. */
    ncsn_backend_set_precision(cpu, NCSN_PRECISION_FP32);
    ncsn_model_set_bf16_inference(mp.mc, 0);
    float *x32 = run_chain(cpu, mp.mc, &mp, &o, levels, NULL);
    ncsn_backend_set_precision(cpu, NCSN_PRECISION_BF16);
    ncsn_model_set_bf16_inference(mp.mc, 1);
    float *xc = run_chain(cpu, mp.mc, &mp, &o, levels, NULL);
    float *xg = run_chain(gpu, mp.mg, &mp, &o, levels, NULL);
    setenv("NCSN_CUDA_GRAPHS", "0", 1);
    float *xd = run_chain(gpu, mp.mg, &mp, &o, levels, NULL);
    unsetenv("NCSN_CUDA_GRAPHS");
    const double d_chain = harness_relative_l2(xc, x32, BD), g_chain = harness_relative_l2(xg, xc, BD);
    harness_checks++;
    ok = g_chain <= 3.0 * d_chain;
    if (!ok) harness_failures++;
    printf("  %-4s bf16 inference chain x: |gpu - cpu| %.3e (bound 3 x |cpu bf16 - cpu fp32| = %.3e)  %s\n", tag,
           g_chain, 3.0 * d_chain, ok ? "PASS" : "FAIL");
    harness_checks++;
    int same = !memcmp(xg, xd, BD * sizeof(float));
    if (!same) harness_failures++;
    printf("  %-4s bf16 inference chain: CUDA graph replay vs direct ops: %s\n", tag,
           same ? "bit-identical PASS" : "differ FAIL");

    ncsn_backend_set_precision(cpu, NCSN_PRECISION_FP32);
    ncsn_backend_set_precision(gpu, NCSN_PRECISION_FP32);
    for (int k = 0; k < 3; k++) free(score[k]);
    free(xh); free(x32); free(xc); free(xg); free(xd);
    pair_free(&mp);
}

int main(void) {
    verbose = getenv("NCSN_TEST_GPU_VERBOSE") && !strcmp(getenv("NCSN_TEST_GPU_VERBOSE"), "1");
    int cpu_pair = gpu_pair_create(&cpu, &gpu);
    if (cpu_pair < 0) return 0;
    printf("test-gpu: model: %s backend vs cpu backend, strict fp32%s\n", gpu->ops->name,
           cpu_pair ? " (NCSN_TEST_GPU_CPU_PAIR=1: checking the test itself)" : "");

    ncsn_config v2, v1;
    ncsn_config_parse(&v2, V2_TINY, "v2_tiny (inline)");
    ncsn_config_parse(&v1, V1_TINY, "v1_tiny (inline)");
    NCSN_CHECK(v2.model.arch == NCSN_ARCH_NCSNV2 && v1.model.arch == NCSN_ARCH_NCSN);

    test_train_step("v2", &v2);
    test_train_step("v1", &v1);

    printf("-- sampler chains (ALD, n_steps_each 2, batch %d, same seed)\n", BATCH);
    test_sampler("v2", &v2, 3, 5e-5);
    test_sampler("v1", &v1, 3, 2e-5);

    printf("-- bf16 NHWC inference (ncsn_model_set_bf16_inference), batch %d\n", BATCH);
    test_bf16_inference("v2", &v2, 3, 5e-5);
    test_bf16_inference("v1", &v1, 3, 2e-5);

    printf("-- multi-GPU equivalence: tests/run_gpu.sh runs tests/test_train_dp.c on 2 GPUs when present\n");

    ncsn_config_free(&v2);
    ncsn_config_free(&v1);
    ncsn_backend_destroy(gpu);
    ncsn_backend_destroy(cpu);
    return harness_finish("test_gpu_model");
}
