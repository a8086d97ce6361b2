/* test_infer_bf16.c: whole networks in bf16 inference (ncsn_model_set_bf16_inference) on the
 * CPU backend: the sampler's fast path, where every activation is stored as bf16 in NHWC
 * order and the convolutions read weights packed once.
 *
 * tests/test_ops_bf16.c checks every bf16 op against its fp32 op; this checks the model's
 * call list in that mode (slot reuse at half the bytes, the NHWC boundaries, the fused
 * norm + ELU, packed-weight offsets) and measures what the mode costs in accuracy:
 *
 * 1. One network evaluation against strict fp32, on the official CIFAR-10 NCSNv2 (the FID
 *    network), the official MNIST NCSN v1 (conditional norms, average-pool CRP) and a small
 *    NCSNv2Deeper (mean-pool residual blocks), from the official initialisation, inputs
 *    U[0, 1), random levels. Bound: relative L2 <= FORWARD_L2_BOUND. Why that bound: each
 *    stored activation carries a relative rounding error of RMS 2^-8 / sqrt(6) ~ 1.6e-3
 *    (test_precision.c, check 2); between two convolutions a tensor is stored one to three
 *    times (conv output, norm + ELU, sums), and the instance norms rescale every layer to
 *    unit variance, so each of the ~40 stored tensors on the longest path adds an
 *    independent ~2-3e-3 relative error, in quadrature sqrt(40) * 2.5e-3 ~ 1.6e-2.
 *    Measured: 1.2e-2 (CIFAR-10), 0.9e-2 (MNIST v1), 1.1e-2 (Deeper), against 0.7-0.8e-2
 *    for bf16 convolution inputs alone (the staged path, also printed). The bound 5e-2 is
 *    3x the estimate and 4x the measurement, and far below what a call-list bug gives: a
 *    missing ELU (the CRP's, moved to its producer) measured 1.7e-1, and a layout or
 *    offset mix-up scrambles the output (~1).
 *    The mode must also change something (not bit-identical to fp32), switching it off must
 *    give the fp32 result back bit for bit, and the output must not depend on the batch it
 *    was evaluated in beyond the bf16 noise (batch 1 vs batch 3, first example).
 * 2. The packed weights are a snapshot (model.h): changing the parameters without re-packing
 *    leaves the bf16 output bit-identical; re-packing changes it.
 * 3. A short annealed Langevin chain (the last 3 levels of CIFAR-10 x 5 steps + denoise, the
 *    config's step_lr): the chain state stays fp32 and the Langevin noise is identical, so
 *    the chains differ only through the scores (bound derived at test_chain).
 * 4. The backward refuses a model in bf16 inference, with a one-line error.
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
#include "tests/expect_die.h"

#define FORWARD_L2_BOUND 5e-2

#define BATCH 3

static ncsn_backend *be;

static const char *DEEPER_SMALL =
    "data:\n  dataset: CELEBA\n  image_size: 64\n  channels: 3\n"
    "model:\n  arch: ncsnv2_deeper\n  sigma_begin: 90\n  sigma_end: 0.01\n  num_classes: 20\n"
    "  sigma_dist: geometric\n  ngf: 16\n";

static float *to_host(const float *p, size_t n) {
    float *h = ncsn_xmalloc(n * sizeof(float));
    ncsn_copy_to_host(be, h, p, n * sizeof(float));
    return h;
}


static int all_finite(const float *a, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(a[i])) return 0;
    return 1;
}

/* Inputs U[0, 1) and levels spread over [0, L), keyed so every run sees the same. */
static void make_inputs(float *x_host, int32_t *labels, size_t D, int N, int L) {
    for (size_t i = 0; i < (size_t)N * D; i++) x_host[i] = ncsn_rng_uniform(7, 1, 0, 0, i);
    for (int n = 0; n < N; n++) labels[n] = (int32_t)((n * 7 + 1) % L);
}

static float *forward(ncsn_model *m, const float *x, const int32_t *labels, int N, size_t D) {
    float *score = ncsn_alloc(be, (size_t)N * D * sizeof(float));
    ncsn_model_forward(m, score, x, labels, N);
    float *h = to_host(score, (size_t)N * D);
    ncsn_free(be, score);
    return h;
}

typedef struct {
    ncsn_model *m;
} die_ctx;

static void backward_in_bf16(void *arg) {
    die_ctx *c = arg;
    ncsn_model_backward(c->m, NULL, ncsn_model_params(c->m)); /* any buffer: it must refuse first */
}

static void test_network(const char *tag, const ncsn_config *cfg, int check_backward_refused) {
    printf("%s: %s, %dx%dx%d, ngf %d, L %d\n", tag, ncsn_arch_name(cfg->model.arch), cfg->data.channels,
           cfg->data.image_size, cfg->data.image_size, cfg->model.ngf, cfg->model.num_classes);
    ncsn_backend_set_precision(be, NCSN_PRECISION_FP32);
    ncsn_model *m = ncsn_model_create(be, cfg);
    ncsn_model_init(m, 1234);
    ncsn_model_plan(m, BATCH);
    int C, H, W;
    ncsn_model_input_shape(m, &C, &H, &W);
    const size_t D = (size_t)C * H * W, ND = BATCH * D;
    float *xh = ncsn_xmalloc(ND * sizeof(float));
    int32_t *labels = ncsn_alloc(be, BATCH * sizeof(int32_t));
    make_inputs(xh, labels, D, BATCH, cfg->model.num_classes);
    float *x = ncsn_alloc(be, ND * sizeof(float));
    ncsn_copy_to_device(be, x, xh, ND * sizeof(float));

    float *s32 = forward(m, x, labels, BATCH, D);
    ncsn_backend_set_precision(be, NCSN_PRECISION_BF16);
    float *s_staged = forward(m, x, labels, BATCH, D); /* bf16 convolution inputs, fp32 activations */
    EXPECT(ncsn_model_set_bf16_inference(m, 1) == 1, "%s: bf16 inference refused", tag);
    float *s16 = forward(m, x, labels, BATCH, D);
    float *s16_b1 = forward(m, x, labels, 1, D);

    const double e16 = harness_relative_l2(s16, s32, ND), e_staged = harness_relative_l2(s_staged, s32, ND);
    printf("  relative L2 vs fp32: bf16 NHWC inference %.3e (bound %.0e); bf16 convolutions only %.3e\n", e16,
           FORWARD_L2_BOUND, e_staged);
    EXPECT(all_finite(s16, ND), "%s: bf16 inference output not finite", tag);
    EXPECT(e16 <= FORWARD_L2_BOUND, "%s: bf16 inference relative L2 %.3e > %.0e", tag, e16, FORWARD_L2_BOUND);
    EXPECT(memcmp(s16, s32, ND * sizeof(float)) != 0, "%s: bf16 inference is bit-identical to fp32 (not active?)",
           tag);
    const double e_b1 = harness_relative_l2(s16_b1, s32, D);
    printf("  example 0 evaluated alone: relative L2 vs fp32 %.3e\n", e_b1);
    EXPECT(e_b1 <= FORWARD_L2_BOUND, "%s: batch-1 bf16 output relative L2 %.3e > %.0e", tag, e_b1, FORWARD_L2_BOUND);

    /* Snapshot: scale the convolution weights (the 4-D tensors; biases and norm parameters
     * are read live in fp32, so they stay) by 1.5 without re-packing: the output must not
     * move. Re-packing must then change it. The parameters are restored afterwards. */
    const ncsn_param_table *t = ncsn_model_table(m);
    float *params = ncsn_model_params(m);
    float *saved = to_host(params, t->total);
    float *scaled = ncsn_xmalloc(t->total * sizeof(float));
    for (size_t i = 0; i < t->total; i++) scaled[i] = saved[i];
    size_t changed = 0;
    for (int e = 0; e < t->n; e++)
        if (t->entries[e].ndim == 4) { /* convolution weights [K, C, kh, kw] */
            for (size_t i = 0; i < t->entries[e].count; i++) scaled[t->entries[e].offset + i] *= 1.5f;
            changed += t->entries[e].count;
        }
    NCSN_CHECK(changed > 0);
    ncsn_copy_to_device(be, params, scaled, t->total * sizeof(float));
    float *s_snapshot = forward(m, x, labels, BATCH, D);
    EXPECT(memcmp(s_snapshot, s16, ND * sizeof(float)) == 0,
           "%s: changing conv weights without re-packing changed the bf16 output", tag);
    ncsn_model_set_bf16_inference(m, 1);
    float *s_repacked = forward(m, x, labels, BATCH, D);
    const double e_repacked = harness_relative_l2(s_repacked, s16, ND);
    EXPECT(e_repacked > 1e-2, "%s: re-packed scaled weights did not change the output (%.3e)", tag, e_repacked);
    ncsn_copy_to_device(be, params, saved, t->total * sizeof(float));

    if (check_backward_refused) {
        die_ctx dc = {m};
        const char *want[] = {"bf16 inference", NULL};
        EXPECT(expect_die("backward in bf16 inference", backward_in_bf16, &dc, want, 1),
               "%s: the backward did not refuse a model in bf16 inference", tag);
    }

    /* Off again: the fp32 path, bit for bit. */
    ncsn_backend_set_precision(be, NCSN_PRECISION_FP32);
    EXPECT(ncsn_model_set_bf16_inference(m, 0) == 0, "%s: switching bf16 inference off", tag);
    float *s32_again = forward(m, x, labels, BATCH, D);
    EXPECT(memcmp(s32_again, s32, ND * sizeof(float)) == 0, "%s: fp32 after bf16 inference is not bit-identical",
           tag);

    free(xh); free(s32); free(s_staged); free(s16); free(s16_b1); free(saved); free(scaled);
    free(s_snapshot); free(s_repacked); free(s32_again);
    ncsn_free(be, x);
    ncsn_free(be, labels);
    ncsn_model_free(m);
}

/* The chains differ only through the scores: x <- x + a s + sqrt(2a) z with the same z (and
 * the final x + sigma_L^2 s). The score terms add up to at most the chain's whole movement
 * |x_end - x_init|, and each carries the network's relative error, at most FORWARD_L2_BOUND;
 * so |x_bf16 - x_fp32| <= FORWARD_L2_BOUND * |x_end - x_init| to first order (the feedback of
 * a changed x into later scores is of second order over 16 small steps). */
static void test_chain(const ncsn_config *cfg) {
    printf("chain: CIFAR-10 NCSNv2, last 3 levels x 5 steps + denoise, batch 2\n");
    const int B = 2, levels = 3;
    float *xs[2];
    ncsn_model *m = ncsn_model_create(be, cfg);
    ncsn_model_init(m, 99);
    ncsn_model_plan(m, B);
    int C, H, W;
    ncsn_model_input_shape(m, &C, &H, &W);
    const int L = ncsn_model_num_levels(m);
    const size_t BD = (size_t)B * C * H * W;
    ncsn_sampler_options o;
    ncsn_sampler_options_default(&o);
    o.kind = NCSN_SAMPLER_ALD;
    o.init = NCSN_INIT_UNIFORM;
    o.init_lo = 0.0f, o.init_hi = 1.0f;
    o.step_lr = cfg->sampling.step_lr;
    o.n_steps_each = cfg->sampling.n_steps_each;
    o.denoise = 1;
    o.seed = 5;
    float *x_init = NULL;
    for (int bf16 = 0; bf16 < 2; bf16++) {
        ncsn_backend_set_precision(be, bf16 ? NCSN_PRECISION_BF16 : NCSN_PRECISION_FP32);
        ncsn_model_set_bf16_inference(m, bf16);
        ncsn_sampler *s = ncsn_sampler_create(be, ncsn_model_score_fn, m, ncsn_model_sigmas_host(m), L, C, H, W, B, &o);
        float *x = ncsn_alloc(be, BD * sizeof(float));
        ncsn_sampler_init_batch(s, x, 0, B);
        if (!bf16) x_init = to_host(x, BD);
        ncsn_sampler_run_levels(s, x, 0, B, L - levels, L);
        ncsn_sampler_finish(s, x, B);
        xs[bf16] = to_host(x, BD);
        ncsn_free(be, x);
        ncsn_sampler_free(s);
    }
    const double e = harness_relative_l2(xs[1], xs[0], BD), moved = harness_relative_l2(xs[0], x_init, BD);
    const double bound = FORWARD_L2_BOUND * moved;
    printf("  relative L2 of x, bf16 inference vs fp32: %.3e (bound %.2e = %.0e x the chain's movement %.3e)\n", e,
           bound, FORWARD_L2_BOUND, moved);
    EXPECT(all_finite(xs[1], BD), "chain: bf16 chain not finite");
    EXPECT(moved > 1e-3, "chain: the fp32 chain barely moved (%.3e): the comparison would prove little", moved);
    EXPECT(e <= bound, "chain: bf16 inference chain relative L2 %.3e > %.2e", e, bound);
    EXPECT(e > 0.0, "chain: bf16 inference chain bit-identical to fp32 (not active?)");
    free(x_init); free(xs[0]); free(xs[1]);
    ncsn_model_free(m);
}

int main(void) {
    be = harness_cpu_backend();
    ncsn_config cifar, mnist, deeper;
    ncsn_config_load(&cifar, "models/configs/cifar10.yml");
    ncsn_config_load(&mnist, "models/configs/mnist_v1.yml");
    ncsn_config_parse(&deeper, DEEPER_SMALL, "deeper_small (inline)");
    test_network("cifar10 (official)", &cifar, 1);
    test_network("mnist v1 (official)", &mnist, 0);
    test_network("deeper 64x64 ngf 16", &deeper, 0);
    test_chain(&cifar);
    ncsn_config_free(&cifar);
    ncsn_config_free(&mnist);
    ncsn_config_free(&deeper);
    ncsn_backend_destroy(be);
    return harness_finish("test_infer_bf16");
}
