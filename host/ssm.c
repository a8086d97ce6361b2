/* ssm.c: sliced score matching by central finite differences (train.h).
 *
 * Mirrors ncsn:losses/sliced_sm.py anneal_sliced_score_estimation_vr with n_particles = 1:
 *   loss_n = sigma_n^2 (0.5 |s(x~_n)|^2 + v_n^T (d s / d x~)(x~_n) v_n)
 * with the Hessian-vector term replaced by v . (s(x~ + h v) - s(x~ - h v)) / (2h).
 *
 * Gradient. With N examples and s0 = s(x~), s+ = s(x~ + h v), s- = s(x~ - h v):
 *   d loss / d s0 = sigma^2 s0 / N,   d loss / d s+- = +-sigma^2 v / (2 h N),
 * and each score is a separate forward of the same network, so the parameter gradient is
 * the sum of three backward passes, run as forward/backward pairs (the model keeps one
 * forward's activations). The three passes share the labels.
 *
 * The per-level scalars reach the backend ops as tables indexed by the labels:
 * noise_inject(x~ + table[l] v) takes the step +-h_l, divide_by_sigma(v / table[l]) takes
 * the gradient scale (table = +-2 h_l N / sigma_l^2), and dsm_loss with z = 0 gives both
 * 0.5 sigma^2 |s0|^2 and its gradient sigma^2 s0 / N in one call.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ncsn/train.h"

struct ncsn_ssm {
    ncsn_model *m;
    ncsn_backend *be;
    int max_batch, L;
    size_t D;
    int table_batch;          /* N the gradient tables were built for (they contain 1/N) */
    float *step_host;         /* [L] h_l */
    float *step_pos, *step_neg;   /* backend [L]: +h_l, -h_l */
    float *grad_pos, *grad_neg;   /* backend [L]: +-2 h_l N / sigma_l^2 */
    float *x_shift;           /* backend N x D: x~ +- h v */
    float *s0, *s_pos, *s_neg;    /* backend N x D: the three scores */
    float *dscore;            /* backend N x D */
    float *zeros;             /* backend N x D of 0: dsm_loss with z = 0 */
    float *loss_first;        /* backend N: sigma^2 * 0.5 |s0|^2 */
    const float *last_v;      /* the v of the last call (backend), for the host loss */
};

static float *alloc_floats(ncsn_backend *be, size_t count) {
    float *p = ncsn_alloc(be, count * sizeof(float));
    if (!p) ncsn_die("ssm: cannot allocate %zu floats on %s", count, be->ops->name);
    return p;
}

ncsn_ssm *ncsn_ssm_create(ncsn_backend *be, ncsn_model *m, int max_batch) {
    NCSN_CHECK(be && m && max_batch >= 1);
    ncsn_ssm *s = ncsn_xcalloc(1, sizeof *s);
    s->m = m;
    s->be = be;
    s->max_batch = max_batch;
    s->L = ncsn_model_num_levels(m);
    s->D = ncsn_model_input_size(m);
    NCSN_CHECK(s->L >= 1 && s->D >= 1);

    /* h_l = NCSN_SSM_FD_REL sigma_l / sqrt(D): |h v| ~ NCSN_SSM_FD_REL sigma_l, small next to
     * the scale sigma_l of the perturbed density (truncation error ~ REL^2), large next to
     * the float32 spacing of x~ (rounding error ~ ulp(x~) / (REL sigma_l)). */
    const float *sigmas = ncsn_model_sigmas_host(m);
    s->step_host = ncsn_xmalloc((size_t)s->L * sizeof(float));
    float *neg = ncsn_xmalloc((size_t)s->L * sizeof(float));
    for (int l = 0; l < s->L; l++) {
        s->step_host[l] = (float)(NCSN_SSM_FD_REL * (double)sigmas[l] / sqrt((double)s->D));
        NCSN_CHECKF(s->step_host[l] > 0.0f, "ssm: finite-difference step of level %d is %g", l,
                    (double)s->step_host[l]);
        neg[l] = -s->step_host[l];
    }
    size_t L = (size_t)s->L, ND = (size_t)max_batch * s->D;
    s->step_pos = alloc_floats(be, L);
    s->step_neg = alloc_floats(be, L);
    ncsn_copy_to_device(be, s->step_pos, s->step_host, L * sizeof(float));
    ncsn_copy_to_device(be, s->step_neg, neg, L * sizeof(float));
    free(neg);
    s->grad_pos = alloc_floats(be, L);
    s->grad_neg = alloc_floats(be, L);
    s->x_shift = alloc_floats(be, ND);
    s->s0 = alloc_floats(be, ND);
    s->s_pos = alloc_floats(be, ND);
    s->s_neg = alloc_floats(be, ND);
    s->dscore = alloc_floats(be, ND);
    s->zeros = alloc_floats(be, ND); /* backend alloc is zero-filled */
    s->loss_first = alloc_floats(be, (size_t)max_batch);
    return s;
}

void ncsn_ssm_free(ncsn_ssm *s) {
    if (!s) return;
    ncsn_backend *be = s->be;
    float *buffers[] = {s->step_pos, s->step_neg, s->grad_pos, s->grad_neg, s->x_shift, s->s0,
                        s->s_pos,    s->s_neg,    s->dscore,   s->zeros,    s->loss_first};
    for (size_t k = 0; k < sizeof buffers / sizeof buffers[0]; k++) ncsn_free(be, buffers[k]);
    free(s->step_host);
    free(s);
}

float ncsn_ssm_step(const ncsn_ssm *s, int level) {
    NCSN_CHECK(level >= 0 && level < s->L);
    return s->step_host[level];
}

/* divide_by_sigma(v / table[l]) = +-sigma_l^2 v / (2 h_l N): table = +-2 h_l N / sigma_l^2,
 * rebuilt when N changes (only the last batch of a bench or a test differs). */
static void build_grad_tables(ncsn_ssm *s, int N) {
    if (s->table_batch == N) return;
    const float *sigmas = ncsn_model_sigmas_host(s->m);
    float *pos = ncsn_xmalloc((size_t)s->L * sizeof(float)), *neg = ncsn_xmalloc((size_t)s->L * sizeof(float));
    for (int l = 0; l < s->L; l++) {
        double sigma = (double)sigmas[l];
        pos[l] = (float)(2.0 * (double)s->step_host[l] * (double)N / (sigma * sigma));
        neg[l] = -pos[l];
    }
    ncsn_copy_to_device(s->be, s->grad_pos, pos, (size_t)s->L * sizeof(float));
    ncsn_copy_to_device(s->be, s->grad_neg, neg, (size_t)s->L * sizeof(float));
    free(pos);
    free(neg);
    s->table_batch = N;
}

void ncsn_ssm_loss_backward(ncsn_ssm *s, const float *x_noisy, const float *v, const int32_t *labels, int N) {
    NCSN_CHECKF(N >= 1 && N <= s->max_batch, "ssm: batch %d outside 1..%d", N, s->max_batch);
    ncsn_backend *be = s->be;
    ncsn_model *m = s->m;
    const float *sigmas = ncsn_model_sigmas(m);
    build_grad_tables(s, N);
    s->last_v = v;

    /* 1. s0 = s(x~): loss term sigma^2 * 0.5 |s0|^2 and its gradient sigma^2 s0 / N, which
     *    is dsm_loss with z = 0: 0.5 sum (sigma s + 0)^2 and sigma (sigma s + 0) / N. */
    ncsn_model_forward(m, s->s0, x_noisy, labels, N);
    ncsn_dsm_loss(be, s->loss_first, s->dscore, s->s0, s->zeros, sigmas, labels, N, s->D);
    ncsn_model_backward(m, NULL, s->dscore);

    /* 2. s+ = s(x~ + h v), upstream gradient +sigma^2 v / (2hN). */
    ncsn_noise_inject(be, s->x_shift, x_noisy, v, s->step_pos, labels, N, s->D);
    ncsn_model_forward(m, s->s_pos, s->x_shift, labels, N);
    ncsn_divide_by_sigma(be, s->dscore, v, s->grad_pos, labels, N, s->D);
    ncsn_model_backward(m, NULL, s->dscore);

    /* 3. s- = s(x~ - h v), upstream gradient -sigma^2 v / (2hN). */
    ncsn_noise_inject(be, s->x_shift, x_noisy, v, s->step_neg, labels, N, s->D);
    ncsn_model_forward(m, s->s_neg, s->x_shift, labels, N);
    ncsn_divide_by_sigma(be, s->dscore, v, s->grad_neg, labels, N, s->D);
    ncsn_model_backward(m, NULL, s->dscore);
}

void ncsn_ssm_read_loss(ncsn_ssm *s, float *loss_host, const int32_t *labels_host, int N) {
    NCSN_CHECK(s->last_v && N >= 1 && N <= s->max_batch);
    size_t ND = (size_t)N * s->D;
    float *first = ncsn_xmalloc((size_t)N * sizeof(float));
    float *v = ncsn_xmalloc(ND * sizeof(float));
    float *sp = ncsn_xmalloc(ND * sizeof(float));
    float *sm = ncsn_xmalloc(ND * sizeof(float));
    ncsn_copy_to_host(s->be, first, s->loss_first, (size_t)N * sizeof(float));
    ncsn_copy_to_host(s->be, v, s->last_v, ND * sizeof(float));
    ncsn_copy_to_host(s->be, sp, s->s_pos, ND * sizeof(float));
    ncsn_copy_to_host(s->be, sm, s->s_neg, ND * sizeof(float));
    const float *sigmas = ncsn_model_sigmas_host(s->m);
    for (int n = 0; n < N; n++) {
        int l = labels_host[n];
        NCSN_CHECK(l >= 0 && l < s->L);
        double dot = 0.0;
        for (size_t i = (size_t)n * s->D; i < (size_t)(n + 1) * s->D; i++) dot += (double)v[i] * ((double)sp[i] - (double)sm[i]);
        double sigma = (double)sigmas[l];
        loss_host[n] = (float)((double)first[n] + sigma * sigma * dot / (2.0 * (double)s->step_host[l]));
    }
    free(first);
    free(v);
    free(sp);
    free(sm);
}
