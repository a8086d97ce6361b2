/* sample.c: the samplers (sample.h), `ncsn sample` and `ncsn bench sampler` (cli.h).
 *
 * Part 1, the chains, mirror the official loops one to one (spec §5.2, §5.3); their
 * comments name the function each mirrors. Part 2 is the command: checkpoint loading,
 * batches over this shard's slice of sample indices, output files written as batches
 * finish, and resume. Part 3 is the benchmark.
 *
 * Why the chains are written as they are (the GPU design):
 * - Everything a chain touches is allocated at ncsn_sampler_create; a step only enqueues
 *   backend ops. The labels of level i are row i of a table in backend memory written once;
 *   before a level starts, that row is copied (device to device, asynchronous) into ONE fixed
 *   labels buffer, so a step reads the same pointers at every level.
 * - One ALD step is `chain_step`: level labels, the network evaluation, the Langevin update,
 *   and an increment of the step counter, all reading their per-step scalars (level, a_i,
 *   the Philox step of the noise) from a small chain state and schedule in backend memory.
 *   With fixed pointers and no by-value scalars, that is the unit a CUDA graph captures
 *   once and replays for every step of every level (run_chain_steps); on the CPU the same
 *   ops run directly.
 * - Nothing reads device memory back inside a chain. The PC corrector's step size, a
 *   function of two batch-mean norms, is computed on the backend (pc_step_size) into a
 *   one-level schedule that langevin_step_chain reads, as score_sde keeps it a tensor.
 *
 * Where the result differs from the official code, on purpose:
 * - the noise comes from the engine's Philox streams (rng_math.h), not torch's generator:
 *   same distributions, not the same numbers;
 * - v1 computes its step sizes from float64 sigmas; we use the float32 sigmas the network
 *   was trained with (v2's behaviour): a_i differs in the last bits;
 * - v1's saved final frame is the state BEFORE the last update; we return the state after
 *   every update (v2's behaviour);
 * - v2 passes the U[0,1) init through data_transform, which with uniform_dequantization
 *   would add U/256 quantisation noise to the init; we apply only the rescale (no shipped
 *   v2 config dequantises).
 */
#include "ncsn/sample.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/rng_math.h"
#include "ncsn/checkpoint.h"
#include "ncsn/cli.h"
#include "ncsn/common.h"
#include "ncsn/data.h"
#include "ncsn/io.h"
#include "ncsn/progress.h"

/* ====================================================================================== */
/* Part 1: the chains                                                                     */
/* ====================================================================================== */

struct ncsn_sampler {
    ncsn_backend *be;
    ncsn_score_fn score;
    void *score_ctx;
    ncsn_sampler_options opt;
    int L, C, H, W, max_batch;
    size_t per_example;
    float *sigmas;        /* host copy, L */
    int32_t *label_table; /* backend: L rows of max_batch labels, row i all i */
    int32_t *labels;      /* backend: max_batch, the current level's labels (fixed pointer) */
    float *score_buf;     /* backend: max_batch x per_example */
    float *noise;         /* backend: max_batch x per_example (init, PC, inpaint, interp) */
    float *noise_q;       /* backend: max_batch x per_example (interp's second noise) */
    float *refs;          /* backend: n_refs x per_example, or NULL */
    int n_refs;
    float *ref_batch;     /* backend: max_batch x per_example, each sample's reference */
    float *norms;         /* backend: 2 x max_batch (PC): squared norms of the score, then the noise */
    float *pc_schedule;   /* backend: 2 (PC): the corrector's (a, sqrt(2a)), computed on the backend */
    /* ALD and plain Langevin run as a replayable step (run_chain_steps): */
    float *schedule;        /* backend: 2L floats, (a_l, sqrt(2 a_l)) of level l */
    int32_t *level_labels;  /* backend: L, the network label of level l */
    uint32_t *chain_state;  /* backend: NCSN_CHAIN_STATE_COUNT (backend.h); ALD, Langevin, PC */
    int use_graph;          /* the backend captures graphs and NCSN_CUDA_GRAPHS is not 0 */
    ncsn_graph *graph;      /* one captured step, valid for (graph_x, graph_N) */
    const float *graph_x;
    int graph_N;
};

void ncsn_sampler_options_default(ncsn_sampler_options *o) {
    memset(o, 0, sizeof *o);
    o->kind = NCSN_SAMPLER_ALD;
    o->init = NCSN_INIT_UNIFORM;
    o->init_lo = 0.0f;
    o->init_hi = 1.0f;
    /* ncsnv2 anneal_Langevin_dynamics defaults; configs override them. */
    o->step_lr = 8e-6;
    o->n_steps_each = 200;
    o->denoise = 1;
    o->snr = 0.16; /* score_sde's NCSN++ CIFAR-10 value */
    o->n_interpolations = 15;
    o->per_reference = 1;
    o->seed = 1234;
}

void ncsn_sampler_options_from_config(ncsn_sampler_options *o, const ncsn_config *cfg) {
    ncsn_sampler_options_default(o);
    /* host/config.c fills the sampling section of a v1 config with what v1's
     * AnnealRunner.test hard-codes (step_lr 2e-5, T = 100, no denoising). */
    o->step_lr = cfg->sampling.step_lr;
    o->n_steps_each = cfg->sampling.n_steps_each;
    o->denoise = cfg->sampling.denoise;
    if (cfg->sampling.data_init) o->init = NCSN_INIT_DATA;
    if (cfg->sampling.n_interpolations > 0) o->n_interpolations = cfg->sampling.n_interpolations;
    if (cfg->sampling.inpainting) o->kind = NCSN_SAMPLER_INPAINT;
    if (cfg->sampling.interpolation) o->kind = NCSN_SAMPLER_INTERP;
}

static const char *const kind_names[] = {"ald", "langevin", "pc", "inpaint", "interp"};

const char *ncsn_sampler_kind_name(ncsn_sampler_kind k) {
    return (unsigned)k < sizeof kind_names / sizeof kind_names[0] ? kind_names[k] : "?";
}

int ncsn_sampler_kind_parse(const char *s) {
    for (int k = 0; k < (int)(sizeof kind_names / sizeof kind_names[0]); k++)
        if (!strcmp(s, kind_names[k])) return k;
    return -1;
}

long ncsn_sampler_nfe(const ncsn_sampler_options *o, int L) {
    long T = o->n_steps_each;
    switch (o->kind) {
    case NCSN_SAMPLER_PC:
        return (long)L * (T + 1); /* corrector steps + one predictor per level */
    case NCSN_SAMPLER_ALD:
    case NCSN_SAMPLER_LANGEVIN:
        return (long)L * T + (o->denoise ? 1 : 0);
    default:
        return (long)L * T; /* v2 inpainting / interpolation: no denoising */
    }
}

float ncsn_langevin_step_size(double step_lr, const float *sigmas, int L, int level) {
    NCSN_CHECKF(level >= 0 && level < L, "langevin step size: level %d outside 0..%d", level, L - 1);
    /* ncsnv2: step_size = step_lr * (sigma / sigmas[-1]) ** 2 with sigma, sigmas[-1] numpy
     * float32 scalars: the quotient and its square are float32, the product with the Python
     * float is float64, and torch rounds it to float32 when it scales the float32 score. */
    float ratio = sigmas[level] / sigmas[L - 1];
    float ratio_sq = ratio * ratio;
    return (float)(step_lr * (double)ratio_sq);
}

ncsn_sampler *ncsn_sampler_create(ncsn_backend *be, ncsn_score_fn score, void *ctx, const float *sigmas, int L,
                                  int C, int H, int W, int max_batch, const ncsn_sampler_options *o) {
    NCSN_CHECKF(L >= 1 && C >= 1 && H >= 1 && W >= 1 && max_batch >= 1,
                "sampler: bad shape L=%d C=%d H=%d W=%d batch=%d", L, C, H, W, max_batch);
    NCSN_CHECKF(o->n_steps_each >= 1, "sampler: n_steps_each must be >= 1 (got %d)", o->n_steps_each);
    NCSN_CHECKF(o->step_lr > 0.0, "sampler: step_lr must be > 0 (got %g)", o->step_lr);
    NCSN_CHECKF((unsigned)o->kind <= NCSN_SAMPLER_INTERP, "sampler: unknown kind %d", (int)o->kind);
    for (int i = 0; i < L; i++) {
        NCSN_CHECKF(sigmas[i] > 0.0f && isfinite(sigmas[i]), "sampler: sigma[%d] = %g is not positive", i,
                    (double)sigmas[i]);
        NCSN_CHECKF(i == 0 || sigmas[i] < sigmas[i - 1],
                    "sampler: sigmas must be strictly descending (sigma[%d] = %g, sigma[%d] = %g)", i - 1,
                    (double)sigmas[i - 1], i, (double)sigmas[i]);
    }
    if (o->kind == NCSN_SAMPLER_INTERP)
        NCSN_CHECKF(o->n_interpolations >= 2, "sampler: interpolation needs n_interpolations >= 2 (got %d)",
                    o->n_interpolations);
    if (o->kind == NCSN_SAMPLER_INPAINT)
        NCSN_CHECKF(W >= 2, "sampler: inpainting needs an image at least 2 columns wide (W = %d)", W);
    if (o->kind == NCSN_SAMPLER_PC)
        NCSN_CHECKF(o->snr > 0.0, "sampler: pc needs snr > 0 (got %g)", o->snr);
    if (o->kind == NCSN_SAMPLER_INPAINT || o->init == NCSN_INIT_DATA)
        NCSN_CHECKF(o->per_reference >= 1, "sampler: per_reference must be >= 1 (got %d)", o->per_reference);

    ncsn_sampler *s = ncsn_xcalloc(1, sizeof *s);
    s->be = be;
    s->score = score;
    s->score_ctx = ctx;
    s->opt = *o;
    s->L = L;
    s->C = C;
    s->H = H;
    s->W = W;
    s->max_batch = max_batch;
    s->per_example = (size_t)C * H * W;
    s->sigmas = ncsn_xmalloc((size_t)L * sizeof(float));
    memcpy(s->sigmas, sigmas, (size_t)L * sizeof(float));

    size_t batch_floats = (size_t)max_batch * s->per_example;
    int32_t *table = ncsn_xmalloc((size_t)L * max_batch * sizeof(int32_t));
    for (int i = 0; i < L; i++)
        for (int n = 0; n < max_batch; n++) table[(size_t)i * max_batch + n] = i;
    s->label_table = ncsn_alloc(be, (size_t)L * max_batch * sizeof(int32_t));
    ncsn_copy_to_device(be, s->label_table, table, (size_t)L * max_batch * sizeof(int32_t));
    free(table);
    s->labels = ncsn_alloc(be, (size_t)max_batch * sizeof(int32_t));
    s->score_buf = ncsn_alloc(be, batch_floats * sizeof(float));
    s->noise = ncsn_alloc(be, batch_floats * sizeof(float));
    if (o->kind == NCSN_SAMPLER_INTERP) s->noise_q = ncsn_alloc(be, batch_floats * sizeof(float));
    if (o->kind == NCSN_SAMPLER_INPAINT || o->init == NCSN_INIT_DATA)
        s->ref_batch = ncsn_alloc(be, batch_floats * sizeof(float));
    if (o->kind == NCSN_SAMPLER_PC) {
        s->norms = ncsn_alloc(be, 2 * (size_t)max_batch * sizeof(float));
        s->pc_schedule = ncsn_alloc(be, 2 * sizeof(float));
        s->chain_state = ncsn_alloc(be, NCSN_CHAIN_STATE_COUNT * sizeof(uint32_t));
    }
    if (o->kind == NCSN_SAMPLER_ALD || o->kind == NCSN_SAMPLER_LANGEVIN) {
        /* The schedule of the replayable step: level l runs at label l with a_l (ALD), or at
         * label L-1 with a_{L-1} = step_lr throughout (plain Langevin); sqrt(2a) is rounded
         * here exactly as langevin_step rounds it. */
        float *sched = ncsn_xmalloc(2 * (size_t)L * sizeof(float));
        int32_t *lab = ncsn_xmalloc((size_t)L * sizeof(int32_t));
        for (int l = 0; l < L; l++) {
            lab[l] = o->kind == NCSN_SAMPLER_LANGEVIN ? L - 1 : l;
            float a = ncsn_langevin_step_size(o->step_lr, sigmas, L, lab[l]);
            sched[2 * l] = a;
            sched[2 * l + 1] = sqrtf(2.0f * a);
        }
        s->schedule = ncsn_alloc(be, 2 * (size_t)L * sizeof(float));
        s->level_labels = ncsn_alloc(be, (size_t)L * sizeof(int32_t));
        s->chain_state = ncsn_alloc(be, NCSN_CHAIN_STATE_COUNT * sizeof(uint32_t));
        ncsn_copy_to_device(be, s->schedule, sched, 2 * (size_t)L * sizeof(float));
        ncsn_copy_to_device(be, s->level_labels, lab, (size_t)L * sizeof(int32_t));
        free(sched);
        free(lab);
        const char *env = getenv("NCSN_CUDA_GRAPHS");
        s->use_graph = !(env && !strcmp(env, "0"));
    }
    return s;
}

void ncsn_sampler_free(ncsn_sampler *s) {
    if (!s) return;
    ncsn_backend *be = s->be;
    ncsn_free(be, s->label_table);
    ncsn_free(be, s->labels);
    ncsn_free(be, s->score_buf);
    ncsn_free(be, s->noise);
    if (s->noise_q) ncsn_free(be, s->noise_q);
    if (s->refs) ncsn_free(be, s->refs);
    if (s->ref_batch) ncsn_free(be, s->ref_batch);
    if (s->norms) ncsn_free(be, s->norms);
    if (s->pc_schedule) ncsn_free(be, s->pc_schedule);
    if (s->graph) ncsn_graph_destroy(be, s->graph);
    if (s->schedule) ncsn_free(be, s->schedule);
    if (s->level_labels) ncsn_free(be, s->level_labels);
    if (s->chain_state) ncsn_free(be, s->chain_state);
    free(s->sigmas);
    free(s);
}

void ncsn_sampler_set_references(ncsn_sampler *s, const float *refs_host, int M) {
    NCSN_CHECKF(M >= 1, "sampler: need at least one reference image (got %d)", M);
    if (s->refs) ncsn_free(s->be, s->refs);
    size_t bytes = (size_t)M * s->per_example * sizeof(float);
    s->refs = ncsn_alloc(s->be, bytes);
    ncsn_copy_to_device(s->be, s->refs, refs_host, bytes);
    s->n_refs = M;
}

/* Which random stream "row" sample k draws its initial state from: its own index, except
 * for interpolation, where every sample of a row starts from the row's state (v2 repeats
 * the row's initial image n_interpolations times). */
static uint32_t init_key(const ncsn_sampler *s, uint32_t k) {
    return s->opt.kind == NCSN_SAMPLER_INTERP ? k / (uint32_t)s->opt.n_interpolations : k;
}

/* Sample k's reference: v2 inpainting lays out refer_image[:, None].repeat(1, k, ...), so
 * consecutive samples share one reference. */
static size_t reference_of(const ncsn_sampler *s, uint32_t k) {
    return (size_t)(init_key(s, k) / (uint32_t)s->opt.per_reference) % (size_t)s->n_refs;
}

/* Fills `out` (N examples) with draws of `purpose` keyed by each sample's init row. One
 * batched call when the rows are the sample indices, else one call per sample. */
static void fill_keyed(ncsn_sampler *s, float *out, uint32_t first_index, int N, uint32_t purpose, int normal) {
    ncsn_backend *be = s->be;
    size_t P = s->per_example;
    if (s->opt.kind != NCSN_SAMPLER_INTERP) {
        if (normal)
            ncsn_fill_normal(be, out, N, P, s->opt.seed, purpose, first_index, 0);
        else
            ncsn_fill_uniform(be, out, N, P, s->opt.seed, purpose, first_index, 0);
        return;
    }
    for (int n = 0; n < N; n++) {
        uint32_t key = init_key(s, first_index + (uint32_t)n);
        if (normal)
            ncsn_fill_normal(be, out + (size_t)n * P, 1, P, s->opt.seed, purpose, key, 0);
        else
            ncsn_fill_uniform(be, out + (size_t)n * P, 1, P, s->opt.seed, purpose, key, 0);
    }
}

void ncsn_sampler_init_batch(ncsn_sampler *s, float *x, uint32_t first_index, int N) {
    NCSN_CHECKF(N >= 1 && N <= s->max_batch, "sampler: batch of %d outside 1..%d", N, s->max_batch);
    ncsn_backend *be = s->be;
    size_t P = s->per_example, count = (size_t)N * P;
    int needs_refs = s->opt.kind == NCSN_SAMPLER_INPAINT || s->opt.init == NCSN_INIT_DATA;
    if (needs_refs) {
        NCSN_CHECKF(s->refs != NULL, "sampler: %s needs reference images (ncsn_sampler_set_references)",
                    s->opt.kind == NCSN_SAMPLER_INPAINT ? "inpainting" : "data init");
        for (int n = 0; n < N; n++)
            ncsn_copy(be, s->ref_batch + (size_t)n * P, s->refs + reference_of(s, first_index + (uint32_t)n) * P,
                      P * sizeof(float));
    }
    switch (s->opt.init) {
    case NCSN_INIT_UNIFORM:
        /* torch.rand(...): U[0,1); a box [lo, hi) for toy data. */
        fill_keyed(s, x, first_index, N, NCSN_RNG_SAMPLER_INIT, 0);
        if (s->opt.init_lo != 0.0f || s->opt.init_hi != 1.0f)
            ncsn_scale_shift(be, x, x, s->opt.init_hi - s->opt.init_lo, s->opt.init_lo, count);
        break;
    case NCSN_INIT_GAUSSIAN:
        /* score_sde VESDE.prior_sampling: randn * sigma_max. */
        fill_keyed(s, x, first_index, N, NCSN_RNG_SAMPLER_INIT, 1);
        ncsn_scale_shift(be, x, x, s->sigmas[0], 0.0f, count);
        break;
    case NCSN_INIT_DATA:
        /* NCSNRunner.sample with data_init: samples + sigmas[0] * randn_like(samples). */
        fill_keyed(s, s->noise, first_index, N, NCSN_RNG_SAMPLER_INIT, 1);
        ncsn_scale_shift(be, s->noise, s->noise, s->sigmas[0], 0.0f, count);
        ncsn_add(be, x, s->ref_batch, s->noise, count);
        break;
    default:
        ncsn_die("sampler: unknown init %d", (int)s->opt.init);
    }
}

/* The network evaluation at the current labels. */
static void evaluate_score(ncsn_sampler *s, const float *x, int N) {
    s->score(s->score_ctx, s->score_buf, x, s->labels, N);
}

/* Points the fixed labels buffer at level `label` (asynchronous device-to-device copy). */
static void set_level_labels(ncsn_sampler *s, int label, int N) {
    ncsn_copy(s->be, s->labels, s->label_table + (size_t)label * s->max_batch, (size_t)N * sizeof(int32_t));
}

/* One step of annealed Langevin dynamics (ncsnv2 anneal_Langevin_dynamics, inner loop):
 *   grad = scorenet(x, labels); x = x + a * grad + sqrt(2a) * randn,
 * written so that it can be captured once and replayed: every pointer is fixed for the
 * sampler's lifetime (x, score_buf, labels, the model's arena), and what changes from step
 * to step (the level's label and a_i, the noise key) is read from the chain state in
 * backend memory, which the step's last op advances. Bit-identical to the by-value
 * ncsn_langevin_step with the same scalars (tests/test_ops.c). */
static void chain_step(ncsn_sampler *s, float *x, int N) {
    ncsn_backend *be = s->be;
    const uint32_t T = (uint32_t)s->opt.n_steps_each;
    ncsn_chain_labels(be, s->labels, N, s->level_labels, s->L, s->chain_state, T);
    evaluate_score(s, x, N);
    ncsn_langevin_step_chain(be, x, s->score_buf, N, s->per_example, s->schedule, s->L, s->chain_state, T,
                             s->opt.seed);
    ncsn_chain_advance(be, s->chain_state);
}

/* Steps [first_step, first_step + count) of the chain of samples first_index.. on x.
 * On a backend with graphs (CUDA) the step is captured once per (x, N) and replayed: the
 * host enqueues one graph launch per step instead of ~300 kernels and cuDNN executions,
 * and the GPU runs them back to back. The first step of a new (x, N) runs eagerly, so
 * every convolution plan exists and the workspace has its final size before capture. */
static void run_chain_steps(ncsn_sampler *s, float *x, uint32_t first_index, int N, uint32_t first_step,
                            uint32_t count) {
    ncsn_backend *be = s->be;
    uint32_t state[NCSN_CHAIN_STATE_COUNT];
    state[NCSN_CHAIN_STEP] = first_step;
    state[NCSN_CHAIN_FIRST_INDEX] = first_index;
    /* Ordered after the previous replay on the backend's stream; copied from pageable
     * memory, so the host may reuse `state` at once (backend.h). */
    ncsn_copy_to_device(be, s->chain_state, state, sizeof state);
    if (count == 0) return;
    if (s->graph && (s->graph_x != x || s->graph_N != N)) {
        ncsn_graph_destroy(be, s->graph);
        s->graph = NULL;
    }
    if (s->use_graph && !s->graph) {
        chain_step(s, x, N); /* eager warm-up */
        if (--count == 0) return;
        if (ncsn_graph_begin(be)) {
            chain_step(s, x, N); /* recorded, not run */
            s->graph = ncsn_graph_end(be);
            s->graph_x = x;
            s->graph_N = N;
        } else {
            s->use_graph = 0; /* no graphs here (CPU): run every step directly */
        }
    }
    if (s->graph)
        for (uint32_t k = 0; k < count; k++) ncsn_graph_launch(be, s->graph);
    else
        for (uint32_t k = 0; k < count; k++) chain_step(s, x, N);
}

/* v2 anneal_Langevin_dynamics_inpainting, one step: the known left half (columns
 * [0, W/2)) is overwritten with ref + sigma * randn BEFORE every network evaluation. */
static void inpaint_step(ncsn_sampler *s, float *x, uint32_t first_index, int N, float sigma, float a,
                         uint32_t step) {
    ncsn_backend *be = s->be;
    size_t P = s->per_example, count = (size_t)N * P;
    ncsn_fill_normal(be, s->noise, N, P, s->opt.seed, NCSN_RNG_INPAINT, first_index, step);
    ncsn_scale_shift(be, s->noise, s->noise, sigma, 0.0f, count);
    ncsn_add(be, s->noise, s->noise, s->ref_batch, count); /* corrupted = ref + sigma z */
    /* x[:, :, :, :W/2] = corrupted[:, :, :, :W/2]: one strided copy over every image row. */
    ncsn_copy_columns(be, x, s->noise, (size_t)N * s->C * s->H, (size_t)s->W, (size_t)(s->W / 2));
    evaluate_score(s, x, N);
    ncsn_langevin_step(be, x, s->score_buf, N, P, a, s->opt.seed, first_index, step);
}

/* v2 anneal_Langevin_dynamics_interpolation, one step. Row r = k / n_interp shares two
 * noises z_p, z_q (keyed by examples 2r and 2r+1 of the Langevin stream); position
 * j = k % n_interp mixes them as cos(phi_j) z_p + sin(phi_j) z_q, phi_j =
 * linspace(0, pi/2, n_interp)[j], so the row interpolates on the noise sphere. */
static void interp_step(ncsn_sampler *s, float *x, uint32_t first_index, int N, float a, uint32_t step) {
    ncsn_backend *be = s->be;
    size_t P = s->per_example, count = (size_t)N * P;
    int n_interp = s->opt.n_interpolations;
    evaluate_score(s, x, N);
    for (int n = 0; n < N; n++) {
        uint32_t k = first_index + (uint32_t)n;
        uint32_t row = k / (uint32_t)n_interp, j = k % (uint32_t)n_interp;
        float *zp = s->noise + (size_t)n * P, *zq = s->noise_q + (size_t)n * P;
        ncsn_fill_normal(be, zp, 1, P, s->opt.seed, NCSN_RNG_LANGEVIN, 2u * row, step);
        ncsn_fill_normal(be, zq, 1, P, s->opt.seed, NCSN_RNG_LANGEVIN, 2u * row + 1u, step);
        /* torch.linspace(0, pi/2, n) in float32, then torch.cos / torch.sin in float32. */
        float phi = (float)((double)j * (1.5707963267948966 / (double)(n_interp - 1)));
        ncsn_scale_shift(be, zp, zp, cosf(phi), 0.0f, P);
        ncsn_scale_shift(be, zq, zq, sinf(phi), 0.0f, P);
    }
    ncsn_accumulate(be, s->noise, s->noise_q, count);           /* z = cos z_p + sin z_q */
    ncsn_denoise_step(be, x, s->score_buf, count, a);           /* x + a * grad */
    ncsn_scale_shift(be, s->noise, s->noise, (float)sqrt(2.0 * (double)a), 0.0f, count);
    ncsn_accumulate(be, x, s->noise, count);                    /* + sqrt(2a) * z */
}

/* score_sde LangevinCorrector.update_fn (VE: alpha = 1), one step:
 *   grad_norm, noise_norm = batch MEANS of per-sample L2 norms;
 *   a = 2 (snr * noise_norm / grad_norm)^2;  x = x + a grad + sqrt(2a) z.
 * The step size is one scalar for the whole batch: a sample's trajectory depends on the
 * other samples of its batch (unlike ALD). */
static void pc_corrector_step(ncsn_sampler *s, float *x, uint32_t first_index, int N, uint32_t step) {
    ncsn_backend *be = s->be;
    size_t P = s->per_example;
    evaluate_score(s, x, N);
    /* The same draws langevin_step_chain makes below, so the norm is of the noise used. */
    ncsn_fill_normal(be, s->noise, N, P, s->opt.seed, NCSN_RNG_LANGEVIN, first_index, step);
    ncsn_row_sum_squares(be, s->norms, s->score_buf, N, P);
    ncsn_row_sum_squares(be, s->norms + N, s->noise, N, P);
    /* score_sde computes the step size on the device too: no host round trip. The chain
     * state holds this step's number (one level: steps_per_level is never reached). */
    ncsn_pc_step_size(be, s->pc_schedule, s->norms, N, s->opt.snr);
    ncsn_langevin_step_chain(be, x, s->score_buf, N, P, s->pc_schedule, 1, s->chain_state, UINT32_MAX, s->opt.seed);
    ncsn_chain_advance(be, s->chain_state);
}

/* score_sde ReverseDiffusionPredictor.update_fn with VESDE.discretize (SMLD):
 *   G = sqrt(sigma_i^2 - sigma_{i+1}^2) (sigma_{L} := 0: the discrete sigmas ascend in
 *   score_sde, and timestep k = L-1-i), x_mean = x + G^2 grad, x = x_mean + G z.
 * With noise_removal the last level returns x_mean. */
static void pc_predictor_step(ncsn_sampler *s, float *x, uint32_t first_index, int N, int level, uint32_t step) {
    ncsn_backend *be = s->be;
    size_t P = s->per_example, count = (size_t)N * P;
    double sigma = s->sigmas[level], next = level + 1 < s->L ? (double)s->sigmas[level + 1] : 0.0;
    double G2 = sigma * sigma - next * next;
    evaluate_score(s, x, N);
    ncsn_denoise_step(be, x, s->score_buf, count, (float)G2);
    if (level == s->L - 1 && s->opt.denoise) return;
    ncsn_fill_normal(be, s->noise, N, P, s->opt.seed, NCSN_RNG_LANGEVIN, first_index, step);
    ncsn_scale_shift(be, s->noise, s->noise, (float)sqrt(G2), 0.0f, count);
    ncsn_accumulate(be, x, s->noise, count);
}

/* Keeps the chain state's step number in line with the predictor's (by-value) one. */
static void pc_predictor_then_advance(ncsn_sampler *s, float *x, uint32_t first_index, int N, int level,
                                      uint32_t step) {
    pc_predictor_step(s, x, first_index, N, level, step);
    ncsn_chain_advance(s->be, s->chain_state);
}

void ncsn_sampler_run_levels(ncsn_sampler *s, float *x, uint32_t first_index, int N, int level_begin,
                             int level_end) {
    NCSN_CHECKF(N >= 1 && N <= s->max_batch, "sampler: batch of %d outside 1..%d", N, s->max_batch);
    NCSN_CHECKF(0 <= level_begin && level_begin <= level_end && level_end <= s->L,
                "sampler: levels [%d, %d) outside [0, %d)", level_begin, level_end, s->L);
    const int T = s->opt.n_steps_each;
    if (s->opt.kind == NCSN_SAMPLER_ALD || s->opt.kind == NCSN_SAMPLER_LANGEVIN) {
        /* The whole level range is one run of the replayable step: each level's label and
         * a_i are in the schedule in backend memory. Plain Langevin
         * (BaselineRunner.Langevin_dynamics) stays at the smallest sigma, where a = step_lr;
         * its L*T steps are numbered like ALD's. */
        run_chain_steps(s, x, first_index, N, (uint32_t)(level_begin * T), (uint32_t)((level_end - level_begin) * T));
        return;
    }
    if (s->opt.kind == NCSN_SAMPLER_PC) {
        /* The corrector reads its step number from the chain state (pc_corrector_step). */
        uint32_t state[NCSN_CHAIN_STATE_COUNT];
        state[NCSN_CHAIN_STEP] = (uint32_t)(level_begin * (T + 1));
        state[NCSN_CHAIN_FIRST_INDEX] = first_index;
        ncsn_copy_to_device(s->be, s->chain_state, state, sizeof state);
    }
    for (int i = level_begin; i < level_end; i++) {
        float a = ncsn_langevin_step_size(s->opt.step_lr, s->sigmas, s->L, i);
        set_level_labels(s, i, N);
        switch (s->opt.kind) {
        case NCSN_SAMPLER_ALD:
        case NCSN_SAMPLER_LANGEVIN:
            break; /* above */
        case NCSN_SAMPLER_INPAINT:
            for (int t = 0; t < T; t++)
                inpaint_step(s, x, first_index, N, s->sigmas[i], a, (uint32_t)(i * T + t));
            break;
        case NCSN_SAMPLER_INTERP:
            for (int t = 0; t < T; t++) interp_step(s, x, first_index, N, a, (uint32_t)(i * T + t));
            break;
        case NCSN_SAMPLER_PC:
            /* score_sde pc_sampler: corrector, then predictor, at every time step. */
            for (int t = 0; t < T; t++) pc_corrector_step(s, x, first_index, N, (uint32_t)(i * (T + 1) + t));
            pc_predictor_then_advance(s, x, first_index, N, i, (uint32_t)(i * (T + 1) + T));
            break;
        }
    }
}

void ncsn_sampler_finish(ncsn_sampler *s, float *x, int N) {
    if (!s->opt.denoise) return;
    if (s->opt.kind != NCSN_SAMPLER_ALD && s->opt.kind != NCSN_SAMPLER_LANGEVIN) return;
    /* ncsnv2: x_mod = x_mod + sigmas[-1] ** 2 * scorenet(x_mod, last_noise). */
    float sigma_last = s->sigmas[s->L - 1];
    set_level_labels(s, s->L - 1, N);
    evaluate_score(s, x, N);
    ncsn_denoise_step(s->be, x, s->score_buf, (size_t)N * s->per_example, sigma_last * sigma_last);
}

void ncsn_sampler_run(ncsn_sampler *s, float *x, uint32_t first_index, int N) {
    ncsn_sampler_init_batch(s, x, first_index, N);
    ncsn_sampler_run_levels(s, x, first_index, N, 0, s->L);
    ncsn_sampler_finish(s, x, N);
}

void ncsn_sampler_output_host(float *x, size_t count, const ncsn_config *cfg) {
    if (cfg->model.arch == NCSN_ARCH_TOY) return;
    /* datasets/__init__.py inverse_data_transform, then torch.clamp(x, 0.0, 1.0). */
    for (size_t i = 0; i < count; i++) {
        float v = x[i];
        if (cfg->data.logit_transform)
            v = 1.0f / (1.0f + expf(-v));
        else if (cfg->data.rescaled)
            v = (v + 1.0f) / 2.0f;
        x[i] = ncsn_clamp01_element(v);
    }
}

void ncsn_model_score_fn(void *model, float *score, const float *x, const int32_t *labels, int N) {
    ncsn_model_forward((ncsn_model *)model, score, x, labels, N);
}

void ncsn_sample_model_host(ncsn_backend *be, ncsn_model *m, const ncsn_config *cfg, float *out_host, int N,
                            uint64_t seed) {
    int C, H, W;
    ncsn_model_input_shape(m, &C, &H, &W);
    ncsn_sampler_options o;
    ncsn_sampler_options_from_config(&o, cfg);
    o.seed = seed;
    if (o.init == NCSN_INIT_DATA) o.init = NCSN_INIT_UNIFORM; /* snapshots have no data at hand */
    ncsn_sampler *s = ncsn_sampler_create(be, ncsn_model_score_fn, m, ncsn_model_sigmas_host(m),
                                          ncsn_model_num_levels(m), C, H, W, N, &o);
    size_t count = (size_t)N * C * H * W;
    float *x = ncsn_alloc(be, count * sizeof(float));
    ncsn_sampler_run(s, x, 0, N);
    ncsn_copy_to_host(be, out_host, x, count * sizeof(float));
    ncsn_free(be, x);
    ncsn_sampler_free(s);
    ncsn_sampler_output_host(out_host, count, cfg);
}

/* ====================================================================================== */
/* Part 2: `ncsn sample`                                                                  */
/* ====================================================================================== */
/* Output and resume design.
 * The run covers the sample indices of its shard, [N*i/M, N*(i+1)/M), in batches of B
 * consecutive indices. Because sample k depends on k alone (ALD and friends), a batch is
 * a unit of work that can be skipped, redone or split differently in another run, and
 * the final set is the same. What is on disk decides what is left to do:
 *   --out DIR        one PNG per sample, DIR/%06d.png by global index, each written
 *                    atomically (PATH.tmp, rename): a file that exists is complete. A
 *                    batch with all its files present is skipped.
 *   --out F.npz      batches go to F.npz.parts/<first>-<end>.npy (uint8 NHWC, atomic);
 *   --out G.png      when the parts cover [0, N) (all shards), the process that sees it
 *                    first (under an flock) streams them in index order into F.npz
 *                    (arr_0, uint8 NHWC) or draws the grid G.png, deletes the parts and
 *                    leaves F.npz.parts/complete, so a re-run says "nothing to do".
 * Every output keeps a manifest (DIR/ncsn_sample_manifest.txt or F.parts/manifest.txt)
 * of what decides the samples: N, shape, seed, sampler settings and a CRC-32 of the
 * weights. A re-run with different settings is refused instead of mixing two runs.
 * --max-batches K stops after K generated batches (time-limited jobs; the tests use it as
 * the interruption). */


typedef struct {
    const char *checkpoint, *config, *out, *device, *data, *sampler;
    const char *precision; /* --precision: default bf16 (sampler_precision) */
    long n;
    int batch;
    uint64_t seed;
    int ema;          /* -1: EMA weights when the checkpoint has them; 0: raw; 1: EMA required */
    int shard_index, shard_count;
    double step_lr;   /* <= 0: config */
    int n_steps_each; /* <= 0: config */
    int denoise;      /* -1: config */
    double snr;       /* <= 0: default */
    int init;         /* -1: the sampler's default */
    int n_interp, per_ref, nrow; /* <= 0: default */
    long max_batches; /* <= 0: no limit */
    int levels;       /* bench: levels timed */
    int baseline;     /* bench: run the PyTorch peer */
} sample_args;

static void parse_shard(const char *v, int *index, int *count) {
    int i = -1, m = -1, used = 0;
    if (sscanf(v, "%d/%d%n", &i, &m, &used) != 2 || v[used] || m < 1 || i < 0 || i >= m)
        ncsn_die("--shard: expected i/M with 0 <= i < M (e.g. 0/4), got '%s'", v);
    *index = i;
    *count = m;
}

static int parse_init(const char *v) {
    if (!strcmp(v, "uniform")) return NCSN_INIT_UNIFORM;
    if (!strcmp(v, "gaussian")) return NCSN_INIT_GAUSSIAN;
    if (!strcmp(v, "data")) return NCSN_INIT_DATA;
    ncsn_die("--init: expected uniform, gaussian or data, got '%s'", v);
}

static const char *init_name(ncsn_init_kind k) {
    return k == NCSN_INIT_UNIFORM ? "uniform" : k == NCSN_INIT_GAUSSIAN ? "gaussian" : "data";
}

/* Parses the options of `ncsn sample` and `ncsn bench sampler` (bench: 1). */
static void parse_sample_args(sample_args *a, int argc, char **argv, int bench) {
    memset(a, 0, sizeof *a);
    a->seed = 1234; /* the official runners' seed */
    a->ema = -1;
    a->shard_count = 1;
    a->denoise = -1;
    a->init = -1;
    a->levels = 1;
    a->baseline = 1;
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i];
#define VALUE() (i + 1 < argc ? argv[++i] : (ncsn_die("%s needs a value", o), (char *)NULL))
        if (!strcmp(o, "--checkpoint") && !bench) a->checkpoint = VALUE();
        else if (!strcmp(o, "--config")) a->config = VALUE();
        else if (!strcmp(o, "--out") && !bench) a->out = VALUE();
        else if (!strcmp(o, "--device")) a->device = VALUE();
        else if (!strcmp(o, "--precision")) a->precision = VALUE();
        else if (!strcmp(o, "--data") && !bench) a->data = VALUE();
        else if (!strcmp(o, "--sampler")) a->sampler = VALUE();
        else if (!strcmp(o, "--n") && !bench) a->n = ncsn_parse_long_flag(o, VALUE(), 1, 2147483647L);
        else if (!strcmp(o, "--batch")) a->batch = (int)ncsn_parse_long_flag(o, VALUE(), 1, 1 << 20);
        else if (!strcmp(o, "--seed")) a->seed = (uint64_t)ncsn_parse_long_flag(o, VALUE(), 0, 0x7fffffffffffffffL);
        else if (!strcmp(o, "--ema") && !bench) a->ema = 1;
        else if (!strcmp(o, "--no-ema") && !bench) a->ema = 0;
        else if (!strcmp(o, "--shard") && !bench) parse_shard(VALUE(), &a->shard_index, &a->shard_count);
        else if (!strcmp(o, "--step-lr")) a->step_lr = ncsn_parse_double_flag(o, VALUE(), 1);
        else if (!strcmp(o, "--n-steps-each")) a->n_steps_each = (int)ncsn_parse_long_flag(o, VALUE(), 1, 1 << 20);
        else if (!strcmp(o, "--denoise")) a->denoise = 1;
        else if (!strcmp(o, "--no-denoise")) a->denoise = 0;
        else if (!strcmp(o, "--snr")) a->snr = ncsn_parse_double_flag(o, VALUE(), 1);
        else if (!strcmp(o, "--init") && !bench) a->init = parse_init(VALUE());
        else if (!strcmp(o, "--n-interp") && !bench) a->n_interp = (int)ncsn_parse_long_flag(o, VALUE(), 2, 1 << 16);
        else if (!strcmp(o, "--per-ref") && !bench) a->per_ref = (int)ncsn_parse_long_flag(o, VALUE(), 1, 1 << 20);
        else if (!strcmp(o, "--nrow") && !bench) a->nrow = (int)ncsn_parse_long_flag(o, VALUE(), 1, 1 << 16);
        else if (!strcmp(o, "--max-batches") && !bench) a->max_batches = ncsn_parse_long_flag(o, VALUE(), 1, 1L << 40);
        else if (!strcmp(o, "--levels") && bench) a->levels = (int)ncsn_parse_long_flag(o, VALUE(), 1, 1 << 20);
        else if (!strcmp(o, "--no-baseline") && bench) a->baseline = 0;
        else ncsn_die("%s: unknown option '%s' (see `ncsn --help`)", bench ? "bench sampler" : "sample", o);
#undef VALUE
    }
}

/* Applies the command line over the config's sampling section. */
static void sampler_options_from_args(ncsn_sampler_options *o, const ncsn_config *cfg, const sample_args *a) {
    ncsn_sampler_options_from_config(o, cfg);
    if (a->sampler) {
        int k = ncsn_sampler_kind_parse(a->sampler);
        if (k < 0) ncsn_die("--sampler: expected ald, langevin, pc, inpaint or interp, got '%s'", a->sampler);
        o->kind = (ncsn_sampler_kind)k;
    }
    if (o->kind == NCSN_SAMPLER_PC) {
        /* score_sde: prior N(0, sigma_max^2), one corrector step per level, noise removal. */
        o->init = NCSN_INIT_GAUSSIAN;
        o->n_steps_each = 1;
        o->denoise = 1;
    }
    if (a->step_lr > 0.0) o->step_lr = a->step_lr;
    if (a->n_steps_each > 0) o->n_steps_each = a->n_steps_each;
    if (a->denoise >= 0) o->denoise = a->denoise;
    if (a->snr > 0.0) o->snr = a->snr;
    if (a->init >= 0) o->init = (ncsn_init_kind)a->init;
    if (a->n_interp > 0) o->n_interpolations = a->n_interp;
    if (a->per_ref > 0) o->per_reference = a->per_ref;
    else if (o->kind == NCSN_SAMPLER_INPAINT) o->per_reference = 8; /* a row of 8 completions per image */
    o->seed = a->seed;
    if (cfg->data.rescaled && o->init == NCSN_INIT_UNIFORM) {
        /* v2 applies data_transform to the U[0,1) init: 2u - 1 (exact in float32). */
        o->init_lo = -1.0f;
        o->init_hi = 1.0f;
    }
    if (cfg->data.logit_transform)
        ncsn_die("sampling with data.logit_transform is not supported (no official config uses it)");
}

/* ---- the checkpoint ------------------------------------------------------------------ */

typedef struct {
    ncsn_config cfg;
    ncsn_model *model;
    int used_ema;
    uint32_t weights_crc; /* CRC-32 of the float32 weights sampled with (the manifest's id) */
    char step[32];        /* training step stored in the checkpoint */
} loaded_model;

/* Model-only load (ncsn_model_from_checkpoint): the official tensors, or their EMA copies
 * ("ema.<key>") when asked (--ema) or by default when the file has them, as the v2 runner
 * samples with the EMA shadow. Adam state is ignored. The config is the checkpoint's own
 * unless --config is given. */
static void load_model(loaded_model *lm, ncsn_backend *be, const char *path, const char *config_path, int ema) {
    memset(lm, 0, sizeof *lm);
    ncsn_loaded_model_info info;
    lm->model = ncsn_model_from_checkpoint(be, path, config_path, ema, &lm->cfg, &info);
    snprintf(lm->step, sizeof lm->step, "%lld", info.step);
    lm->used_ema = info.used_ema;
    lm->weights_crc = info.weights_crc;
}

/* ---- files --------------------------------------------------------------------------- */

static int path_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

static void make_dir(const char *p) {
    if (mkdir(p, 0777) != 0 && errno != EEXIST) ncsn_die("%s: cannot create directory: %s", p, strerror(errno));
    struct stat sb;
    if (stat(p, &sb) != 0 || !S_ISDIR(sb.st_mode)) ncsn_die("%s: exists and is not a directory", p);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcasecmp(s + n - m, suffix);
}

/* Writes `text` to path unless it exists; if it exists, it must hold the same text. The
 * first differing line names what changed. */
static void manifest_check_or_create(const char *path, const char *text, const char *output) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0666);
    if (fd >= 0) {
        size_t len = strlen(text);
        if (write(fd, text, len) != (ssize_t)len || fsync(fd) != 0)
            ncsn_die("%s: cannot write the manifest: %s", path, strerror(errno));
        if (close(fd) != 0) ncsn_die("%s: close: %s", path, strerror(errno));
        return;
    }
    if (errno != EEXIST) ncsn_die("%s: cannot create the manifest: %s", path, strerror(errno));
    FILE *f = fopen(path, "rb");
    if (!f) ncsn_die("%s: cannot read the manifest: %s", path, strerror(errno));
    char old[4096];
    size_t got = fread(old, 1, sizeof old - 1, f);
    old[got] = '\0';
    fclose(f);
    if (!strcmp(old, text)) return;
    /* Find the first line that differs, for the message. */
    const char *a = old, *b = text;
    while (*a && *b) {
        const char *ea = strchr(a, '\n'), *eb = strchr(b, '\n');
        size_t la = ea ? (size_t)(ea - a) : strlen(a), lb = eb ? (size_t)(eb - b) : strlen(b);
        if (la != lb || memcmp(a, b, la)) {
            ncsn_die("%s was made by a different run: its manifest says '%.*s', this run has '%.*s'; use the same "
                     "options or another --out",
                     output, (int)la, a, (int)lb, b);
        }
        a += la + (ea ? 1 : 0);
        b += lb + (eb ? 1 : 0);
    }
    ncsn_die("%s was made by a different run (manifest %s differs); use the same options or another --out", output,
             path);
}

/* A batch part: samples [first, end) as uint8 NHWC. */
typedef struct {
    uint32_t first, end;
    char name[64];
} part_file;

static int compare_parts(const void *pa, const void *pb) {
    const part_file *a = pa, *b = pb;
    if (a->first != b->first) return a->first < b->first ? -1 : 1;
    return a->end < b->end ? 1 : (a->end > b->end ? -1 : 0); /* longest first */
}

/* Lists DIR's part files "<first>-<end>.npy" (anything else, e.g. a PATH.tmp left by a
 * killed write, is ignored). */
static part_file *list_parts(const char *dir, int *count) {
    DIR *d = opendir(dir);
    if (!d) ncsn_die("%s: cannot list: %s", dir, strerror(errno));
    int n = 0, cap = 16;
    part_file *parts = ncsn_xmalloc((size_t)cap * sizeof *parts);
    struct dirent *de;
    while ((de = readdir(d))) {
        unsigned first, end;
        int used = 0;
        if (sscanf(de->d_name, "%9u-%9u.npy%n", &first, &end, &used) != 2 || de->d_name[used] || end <= first) continue;
        char canonical[64];
        snprintf(canonical, sizeof canonical, "%09u-%09u.npy", first, end);
        if (strcmp(canonical, de->d_name)) continue;
        if (n == cap) {
            cap *= 2;
            part_file *grown = realloc(parts, (size_t)cap * sizeof *parts);
            if (!grown) ncsn_die("out of host memory listing %s", dir);
            parts = grown;
        }
        parts[n].first = first;
        parts[n].end = end;
        snprintf(parts[n].name, sizeof parts[n].name, "%s", canonical);
        n++;
    }
    closedir(d);
    qsort(parts, (size_t)n, sizeof *parts, compare_parts);
    *count = n;
    return parts;
}

/* covered[k] = 1 for every sample in some part (k < N). */
static void mark_covered(uint8_t *covered, long N, const part_file *parts, int n_parts) {
    memset(covered, 0, (size_t)N);
    for (int p = 0; p < n_parts; p++)
        for (uint32_t k = parts[p].first; k < parts[p].end && k < (uint32_t)N; k++) covered[k] = 1;
}

static void read_part(ncsn_npy *a, const char *dir, const part_file *pf, int C, int H, int W) {
    char path[1400];
    snprintf(path, sizeof path, "%s/%s", dir, pf->name);
    ncsn_npy_read(a, path);
    if (a->dtype != NCSN_NPY_U8 || a->ndim != 4 || a->shape[0] != (int64_t)(pf->end - pf->first) ||
        a->shape[1] != H || a->shape[2] != W || a->shape[3] != C)
        ncsn_die("%s: expected uint8 [%u, %d, %d, %d]", path, pf->end - pf->first, H, W, C);
}

typedef enum { OUT_DIR = 0, OUT_NPZ = 1, OUT_GRID = 2 } output_kind;

/* Streams the parts, in sample order, into the npz or the grid. Called under the lock. */
static void assemble(output_kind kind, const char *out, const char *parts_dir, long N, int C, int H, int W,
                     int nrow) {
    int n_parts = 0;
    part_file *parts = list_parts(parts_dir, &n_parts);
    ncsn_npz_writer *npz = kind == OUT_NPZ ? ncsn_npz_open(out, H, W, C) : NULL;
    size_t per = (size_t)C * H * W;
    float *grid = kind == OUT_GRID ? ncsn_xmalloc((size_t)N * per * sizeof(float)) : NULL;
    uint32_t cursor = 0;
    for (int p = 0; p < n_parts && cursor < (uint32_t)N; p++) {
        if (parts[p].end <= cursor) continue; /* a shorter duplicate of samples already taken */
        NCSN_CHECKF(parts[p].first <= cursor, "%s: no part holds sample %u", parts_dir, cursor);
        ncsn_npy a;
        read_part(&a, parts_dir, &parts[p], C, H, W);
        uint32_t end = parts[p].end < (uint32_t)N ? parts[p].end : (uint32_t)N;
        const uint8_t *rows = (const uint8_t *)a.data + (size_t)(cursor - parts[p].first) * per;
        if (npz) ncsn_npz_append(npz, rows, (int)(end - cursor));
        if (grid) {
            /* uint8 HWC -> float CHW k/255: ncsn_to_uint8_hwc maps it back to k exactly. */
            for (uint32_t k = cursor; k < end; k++) {
                const uint8_t *img = rows + (size_t)(k - cursor) * per;
                float *dst = grid + (size_t)k * per;
                for (int c = 0; c < C; c++)
                    for (int y = 0; y < H; y++)
                        for (int x = 0; x < W; x++)
                            dst[((size_t)c * H + y) * W + x] = (float)img[((size_t)y * W + x) * C + c] / 255.0f;
            }
        }
        ncsn_npy_free(&a);
        cursor = end;
    }
    NCSN_CHECKF(cursor == (uint32_t)N, "%s: parts end at sample %u of %ld", parts_dir, cursor, N);
    if (npz) ncsn_npz_close(npz);
    if (grid) {
        ncsn_grid_png_write(out, grid, (int)N, C, H, W, nrow);
        free(grid);
    }
    for (int p = 0; p < n_parts; p++) {
        char path[1400];
        snprintf(path, sizeof path, "%s/%s", parts_dir, parts[p].name);
        if (unlink(path) != 0) ncsn_die("%s: cannot remove: %s", path, strerror(errno));
    }
    free(parts);
}

/* ---- the toy sampler: points, not images ----------------------------------------------- */

/* Share of points on mode 1's side of the perpendicular bisector of the two toy means
 * (which lie on the diagonal). */
static double toy_fraction_mode1(const float *xy, int N, double m1, double m2) {
    int c = 0;
    for (int n = 0; n < N; n++) c += ((double)xy[2 * n] + xy[2 * n + 1] - (m1 + m2)) * (m1 - m2) > 0.0;
    return (double)c / N;
}

static float *toy_chain(ncsn_backend *be, loaded_model *lm, const ncsn_sampler_options *o, int N, int B) {
    int L = ncsn_model_num_levels(lm->model);
    ncsn_sampler *s = ncsn_sampler_create(be, ncsn_model_score_fn, lm->model, ncsn_model_sigmas_host(lm->model), L, 2,
                                          1, 1, B, o);
    float *x = ncsn_alloc(be, (size_t)B * 2 * sizeof(float));
    float *out = ncsn_xmalloc((size_t)N * 2 * sizeof(float));
    for (int first = 0; first < N; first += B) {
        int nb = N - first < B ? N - first : B;
        ncsn_sampler_run(s, x, (uint32_t)first, nb);
        ncsn_copy_to_host(be, out + (size_t)first * 2, x, (size_t)nb * 2 * sizeof(float));
    }
    ncsn_free(be, x);
    ncsn_sampler_free(s);
    return out;
}

/* Toy arch: --out F.npy writes the N x 2 samples (float32); --out F.png draws the seeds'
 * Fig. 3: data / plain Langevin / annealed Langevin side by side. */
static int sample_toy(ncsn_backend *be, loaded_model *lm, ncsn_sampler_options *o, const sample_args *a) {
    const ncsn_data_config *dc = &lm->cfg.data;
    NCSN_CHECKF(lm->cfg.data.channels == 2, "toy sampling expects 2-D points (data.channels %d)", dc->channels);
    double lo = fmin(dc->toy_mean1, dc->toy_mean2) - 3.0, hi = fmax(dc->toy_mean1, dc->toy_mean2) + 3.0;
    if (o->init == NCSN_INIT_UNIFORM) {
        /* The seeds' experiment starts uniformly over a box around both modes. */
        o->init_lo = (float)lo;
        o->init_hi = (float)hi;
    }
    NCSN_CHECKF(o->init != NCSN_INIT_DATA && o->kind != NCSN_SAMPLER_INPAINT && o->kind != NCSN_SAMPLER_INTERP,
                "toy sampling supports --sampler ald|langevin|pc with uniform or gaussian init");
    int N = (int)a->n, B = a->batch > 0 && a->batch < N ? a->batch : N;
    float *samples = toy_chain(be, lm, o, N, B);
    double f = toy_fraction_mode1(samples, N, dc->toy_mean1, dc->toy_mean2);
    printf("%s: %d points, fraction near mode 1 (%g, %g): %.4f (data weight %g)\n", ncsn_sampler_kind_name(o->kind), N,
           dc->toy_mean1, dc->toy_mean1, f, dc->toy_weight);
    if (ends_with(a->out, ".npy")) {
        int64_t shape[2] = {N, 2};
        ncsn_npy_write(a->out, NCSN_NPY_F32, 2, shape, samples);
    } else if (ends_with(a->out, ".png")) {
        /* The middle panel is the seeds' plain Langevin (NCSN paper Fig. 3: eps = 0.1, 1000
         * steps): the smallest-sigma score with a step sized for unit-variance modes. The
         * config's step_lr is sized for annealing from sigma_1 and would barely move a
         * chain that stays at sigma_L (a = step_lr there). */
        ncsn_sampler_options plain = *o;
        plain.kind = NCSN_SAMPLER_LANGEVIN;
        plain.step_lr = 0.1;
        plain.denoise = 0;
        float *langevin = toy_chain(be, lm, &plain, N, B);
        double fl = toy_fraction_mode1(langevin, N, dc->toy_mean1, dc->toy_mean2);
        printf("langevin (a = 0.1, %ld steps at sigma_L): %d points, fraction near mode 1: %.4f\n",
               (long)ncsn_model_num_levels(lm->model) * plain.n_steps_each, N, fl);
        ncsn_dataset ds;
        ncsn_dataset_open(&ds, dc, a->data, 1, a->seed);
        int nd = ds.N < (size_t)N ? (int)ds.N : N;
        double fd = toy_fraction_mode1(ds.f32, nd, dc->toy_mean1, dc->toy_mean2);
        char t_data[64], t_plain[64], t_annealed[64];
        snprintf(t_data, sizeof t_data, "DATA %.0f%%", 100.0 * fd);
        snprintf(t_plain, sizeof t_plain, "LANGEVIN %.0f%%", 100.0 * fl);
        snprintf(t_annealed, sizeof t_annealed, "%s %.0f%%",
                 o->kind == NCSN_SAMPLER_PC ? "PC SAMPLER" : "ANNEALED LANGEVIN", 100.0 * f);
        ncsn_toy_panel panels[3] = {{ds.f32, nd, t_data}, {langevin, N, t_plain}, {samples, N, t_annealed}};
        float box = (float)(fmax(fabs(lo), fabs(hi)) + 2.0);
        ncsn_toy_plot_png(a->out, panels, 3, -box, box, 5.0f, 360);
        printf("wrote %s (percent = share of points near mode 1)\n", a->out);
        ncsn_dataset_free(&ds);
        free(langevin);
    } else {
        ncsn_die("--out: a toy model's samples go to F.npy (points) or F.png (scatter plot), got '%s'", a->out);
    }
    free(samples);
    return 0;
}

/* ---- references for data init and inpainting ------------------------------------------ */

static void load_references(ncsn_sampler *s, const loaded_model *lm, const ncsn_sampler_options *o,
                            const sample_args *a, long N) {
    ncsn_dataset ds;
    ncsn_dataset_open(&ds, &lm->cfg.data, a->data, 1, a->seed);
    int C, H, W;
    ncsn_model_input_shape(lm->model, &C, &H, &W);
    NCSN_CHECKF(ds.C == C && ds.H == H && ds.W == W, "--data: images are %dx%dx%d, the model takes %dx%dx%d", ds.C,
                ds.H, ds.W, C, H, W);
    long rows = o->kind == NCSN_SAMPLER_INTERP ? (N + o->n_interpolations - 1) / o->n_interpolations : N;
    long need = (rows + o->per_reference - 1) / o->per_reference;
    int M = (size_t)need < ds.N ? (int)need : (int)ds.N;
    size_t per = (size_t)C * H * W;
    float *refs = ncsn_xmalloc((size_t)M * per * sizeof(float));
    for (int m = 0; m < M; m++) {
        ncsn_dataset_example(&ds, (size_t)m, refs + (size_t)m * per);
        if (lm->cfg.data.rescaled)
            for (size_t i = 0; i < per; i++) refs[(size_t)m * per + i] = 2.0f * refs[(size_t)m * per + i] - 1.0f;
    }
    ncsn_sampler_set_references(s, refs, M);
    fprintf(stderr, "references: %d images of %s (sample k uses image (k / %d) %% %d)\n", M,
            ds.path[0] ? ds.path : ds.dataset, o->per_reference, M);
    free(refs);
    ncsn_dataset_free(&ds);
}

/* A diverged chain (too large a step, a broken checkpoint, PC with a zero score) is an
 * error, not a folder of black images: clamping would hide NaN. Batches already written
 * stay; the run stops before writing this one. */
static void check_finite_batch(const float *x, int nb, size_t per, uint32_t first, const char *sampler) {
    size_t bad = 0, first_bad = 0, count = (size_t)nb * per;
    for (size_t i = 0; i < count; i++)
        if (!isfinite(x[i]) && bad++ == 0) first_bad = i;
    if (bad)
        ncsn_die("sample: the %s chain diverged: %zu of %zu values of samples [%u, %u) are not finite (first in "
                 "sample %u); try a smaller --step-lr, or check the checkpoint",
                 sampler, bad, count, first, first + (uint32_t)nb, first + (uint32_t)(first_bad / per));
}

/* --precision, or the sampler's default: the fastest precision whose deviation from fp32
 * is measured and bounded. That is bf16, where the network runs bf16 NHWC end to end
 * (sampler_network_format): one CIFAR-10 NCSNv2 evaluation within 1.2e-2 relative L2 of fp32
 * (bound 5e-2), and a chain's state, which stays fp32, within the network's error times the
 * chain's own movement (tests/test_infer_bf16.c); a full 232 x 5 chain ended 3.4e-3 from the
 * fp32 one (measured once). The bound is established on the CPU;
 * cuDNN rounds the same tensors the same way, and make test-gpu checks CUDA bf16 inference
 * against the CPU's. --precision fp32 reproduces exactly. */
static ncsn_precision sampler_precision(const char *flag) {
    return flag ? ncsn_precision_parse(flag, "--precision") : NCSN_PRECISION_BF16;
}

/* In bf16 the sampler's network runs bf16 NHWC end to end (ncsn_model_set_bf16_inference):
 * activations stored as bf16, weights packed once, no per-convolution conversions. Call
 * after the final parameters are in place (the packing is a snapshot). */
static void sampler_network_format(ncsn_backend *be, ncsn_model *m) {
    if (be->precision != NCSN_PRECISION_BF16) return;
    if (ncsn_model_set_bf16_inference(m, 1)) /* 0: the toy MLP, which keeps fp32 activations */
        fprintf(stderr, "sampler network: bf16 NHWC activations end to end (fp32 math in every op, norm statistics "
                        "and chain state fp32), weights packed once\n");
}

int ncsn_cmd_sample(int argc, char **argv) {
    sample_args a;
    parse_sample_args(&a, argc, argv, 0);
    if (!a.checkpoint || !a.out || a.n <= 0)
        ncsn_die("sample: --checkpoint C, --n N and --out DIR|F.npz|G.png are required");
    ncsn_backend *be = ncsn_backend_create_from_name(a.device ? a.device : "auto");
    ncsn_backend_set_precision(be, sampler_precision(a.precision));
    loaded_model lm;
    load_model(&lm, be, a.checkpoint, a.config, a.ema);
    sampler_network_format(be, lm.model);
    ncsn_sampler_options o;
    sampler_options_from_args(&o, &lm.cfg, &a);
    int L = ncsn_model_num_levels(lm.model), C, H, W;
    ncsn_model_input_shape(lm.model, &C, &H, &W);
    const int B = a.batch > 0 ? a.batch : lm.cfg.sampling.batch_size;
    fprintf(stderr,
            "sample: %s (%s weights, step %s), arch %s, %s sampler: L = %d, T = %d, step_lr %g, %s, init %s, "
            "%ld NFE per sample, seed %llu\n",
            a.checkpoint, lm.used_ema ? "EMA" : "raw", lm.step, ncsn_arch_name(lm.cfg.model.arch),
            ncsn_sampler_kind_name(o.kind), L, o.n_steps_each, o.step_lr,
            o.kind == NCSN_SAMPLER_PC ? (o.denoise ? "noise removal" : "no noise removal")
                                      : (o.denoise ? "denoise" : "no denoise"),
            init_name(o.init), ncsn_sampler_nfe(&o, L), (unsigned long long)o.seed);
    if (o.kind == NCSN_SAMPLER_PC)
        fprintf(stderr, "note: the pc corrector's step size is shared by each batch, so pc samples depend on --batch\n");

    if (lm.cfg.model.arch == NCSN_ARCH_TOY) {
        ncsn_model_plan(lm.model, a.batch > 0 && a.batch < a.n ? a.batch : (int)a.n);
        int rc = sample_toy(be, &lm, &o, &a);
        ncsn_model_free(lm.model);
        ncsn_config_free(&lm.cfg);
        ncsn_backend_destroy(be);
        return rc;
    }

    output_kind kind = ends_with(a.out, ".npz") ? OUT_NPZ : ends_with(a.out, ".png") ? OUT_GRID : OUT_DIR;
    if (ends_with(a.out, ".npy") || ends_with(a.out, ".jpg"))
        ncsn_die("--out: expected a directory, F.npz or G.png, got '%s'", a.out);
    const long N = a.n;
    const size_t per = (size_t)C * H * W;

    /* Where the run's state lives, and its manifest. */
    char state_dir[1100], manifest_path[1200], complete_path[1200], lock_path[1200];
    if (kind == OUT_DIR) {
        snprintf(state_dir, sizeof state_dir, "%s", a.out);
        snprintf(manifest_path, sizeof manifest_path, "%s/ncsn_sample_manifest.txt", a.out);
    } else {
        snprintf(state_dir, sizeof state_dir, "%s.parts", a.out);
        snprintf(manifest_path, sizeof manifest_path, "%s/manifest.txt", state_dir);
    }
    snprintf(complete_path, sizeof complete_path, "%s/complete", state_dir);
    snprintf(lock_path, sizeof lock_path, "%s/lock", state_dir);
    make_dir(state_dir);
    char manifest[2048];
    int mlen = snprintf(manifest, sizeof manifest,
                        "ncsn sample manifest 1\nn %ld\nshape %d %d %d\nseed %llu\nsampler %s\ninit %s\nlevels %d\n"
                        "step_lr %.17g\nn_steps_each %d\ndenoise %d\nweights %s crc32 %08x\n",
                        N, C, H, W, (unsigned long long)o.seed, ncsn_sampler_kind_name(o.kind), init_name(o.init), L,
                        o.step_lr, o.n_steps_each, o.denoise, lm.used_ema ? "ema" : "raw", lm.weights_crc);
    if (o.kind == NCSN_SAMPLER_PC)
        mlen += snprintf(manifest + mlen, sizeof manifest - (size_t)mlen, "snr %.17g\nbatch %d\n", o.snr, B);
    if (o.kind == NCSN_SAMPLER_INTERP)
        mlen += snprintf(manifest + mlen, sizeof manifest - (size_t)mlen, "n_interpolations %d\n", o.n_interpolations);
    if (o.kind == NCSN_SAMPLER_INPAINT || o.init == NCSN_INIT_DATA)
        snprintf(manifest + mlen, sizeof manifest - (size_t)mlen, "references %s per %d\n",
                 a.data ? a.data : "(default)", o.per_reference);
    manifest_check_or_create(manifest_path, manifest, a.out);
    if (kind != OUT_DIR && path_exists(complete_path)) {
        if (path_exists(a.out)) {
            fprintf(stderr, "sample: %s is complete (%ld samples); nothing to do\n", a.out, N);
            ncsn_model_free(lm.model);
            ncsn_config_free(&lm.cfg);
            ncsn_backend_destroy(be);
            return 0;
        }
        /* The output was deleted after completion: start over. */
        if (unlink(complete_path) != 0) ncsn_die("%s: cannot remove: %s", complete_path, strerror(errno));
    }

    /* This shard's slice and its batches. */
    const long lo = (long)((int64_t)N * a.shard_index / a.shard_count);
    const long hi = (long)((int64_t)N * (a.shard_index + 1) / a.shard_count);
    const long n_batches = (hi - lo + B - 1) / B;
    uint8_t *covered = NULL;
    if (kind != OUT_DIR) {
        int n_parts = 0;
        part_file *parts = list_parts(state_dir, &n_parts);
        covered = ncsn_xmalloc((size_t)N);
        mark_covered(covered, N, parts, n_parts);
        free(parts);
    }
    /* Which batches are already done. */
    uint8_t *batch_done = ncsn_xcalloc((size_t)(n_batches > 0 ? n_batches : 1), 1);
    long done_before = 0;
    for (long b = 0; b < n_batches; b++) {
        long first = lo + b * B, end = first + B < hi ? first + B : hi;
        int all = 1;
        for (long k = first; k < end && all; k++) {
            if (kind == OUT_DIR) {
                char path[1200];
                snprintf(path, sizeof path, "%s/%06ld.png", a.out, k);
                all = path_exists(path);
            } else {
                all = covered[k];
            }
        }
        batch_done[b] = (uint8_t)all;
        done_before += all;
    }
    if (a.shard_count > 1)
        fprintf(stderr, "shard %d/%d: samples [%ld, %ld)\n", a.shard_index, a.shard_count, lo, hi);
    if (done_before)
        fprintf(stderr, "resuming: %ld of %ld batches already on disk\n", done_before, n_batches);

    /* Batches never exceed this shard's slice: plan and allocate no more than that. */
    const int B_alloc = (long)B < hi - lo ? B : (int)(hi - lo > 0 ? hi - lo : 1);
    ncsn_model_plan(lm.model, B_alloc);
    ncsn_sampler *s = ncsn_sampler_create(be, ncsn_model_score_fn, lm.model, ncsn_model_sigmas_host(lm.model), L, C,
                                          H, W, B_alloc, &o);
    if (o.kind == NCSN_SAMPLER_INPAINT || o.init == NCSN_INIT_DATA) load_references(s, &lm, &o, &a, N);
    float *x = ncsn_alloc(be, (size_t)B_alloc * per * sizeof(float));
    float *host = ncsn_xmalloc((size_t)B_alloc * per * sizeof(float));
    uint8_t *u8 = ncsn_xmalloc((size_t)B_alloc * per);

    ncsn_progress prog;
    ncsn_progress_begin(&prog, "sample", "batches", done_before, n_batches, B);
    long done = done_before, generated = 0;
    int stopped = 0;
    for (long b = 0; b < n_batches; b++) {
        if (batch_done[b]) continue;
        if (a.max_batches > 0 && generated >= a.max_batches) {
            stopped = 1;
            break;
        }
        const uint32_t first = (uint32_t)(lo + b * B);
        const int nb = (int)((lo + b * B + B < hi ? lo + b * B + B : hi) - (long)first);
        ncsn_sampler_init_batch(s, x, first, nb);
        for (int i = 0; i < L; i++) {
            ncsn_sampler_run_levels(s, x, first, nb, i, i + 1);
            ncsn_progress_status(&prog, "batch %ld: level %d/%d", b + 1, i + 1, L);
            ncsn_progress_update(&prog, done);
        }
        ncsn_sampler_finish(s, x, nb);
        ncsn_copy_to_host(be, host, x, (size_t)nb * per * sizeof(float));
        check_finite_batch(host, nb, per, first, ncsn_sampler_kind_name(o.kind));
        ncsn_sampler_output_host(host, (size_t)nb * per, &lm.cfg);
        for (int n = 0; n < nb; n++) ncsn_to_uint8_hwc(u8 + (size_t)n * per, host + (size_t)n * per, C, H, W);
        if (kind == OUT_DIR) {
            for (int n = 0; n < nb; n++) {
                char path[1200];
                snprintf(path, sizeof path, "%s/%06u.png", a.out, first + (uint32_t)n);
                if (!path_exists(path)) ncsn_png_write(path, u8 + (size_t)n * per, H, W, C);
            }
        } else {
            char path[1300];
            snprintf(path, sizeof path, "%s/%09u-%09u.npy", state_dir, first, first + (uint32_t)nb);
            int64_t shape[4] = {nb, H, W, C};
            ncsn_npy_write(path, NCSN_NPY_U8, 4, shape, u8);
        }
        generated++;
        done++;
        ncsn_progress_status(&prog, "batch %ld done", b + 1);
        ncsn_progress_log(&prog, done);
    }
    ncsn_progress_end(&prog);

    int rc = 0;
    if (stopped) {
        fprintf(stderr, "sample: stopped after %ld batches (--max-batches); %ld of %ld done, re-run to continue\n",
                generated, done, n_batches);
    } else if (kind != OUT_DIR) {
        /* Assemble when every shard's parts are in, once: the flock serialises shards that
         * finish together, and the loser finds `complete`. */
        int fd = open(lock_path, O_RDWR | O_CREAT, 0666);
        if (fd < 0) ncsn_die("%s: %s", lock_path, strerror(errno));
        if (flock(fd, LOCK_EX) != 0) ncsn_die("%s: flock: %s", lock_path, strerror(errno));
        if (!path_exists(complete_path)) {
            int n_parts = 0;
            part_file *parts = list_parts(state_dir, &n_parts);
            mark_covered(covered, N, parts, n_parts);
            free(parts);
            long missing = 0;
            for (long k = 0; k < N; k++) missing += !covered[k];
            if (missing) {
                fprintf(stderr, "sample: shard done; %ld of %ld samples still missing (other shards), %s not written yet\n",
                        missing, N, a.out);
            } else {
                int nrow = a.nrow > 0 ? a.nrow : (int)ceil(sqrt((double)N));
                assemble(kind, a.out, state_dir, N, C, H, W, nrow);
                FILE *f = fopen(complete_path, "wb");
                if (!f || fprintf(f, "%ld\n", N) < 0 || fclose(f) != 0)
                    ncsn_die("%s: cannot write: %s", complete_path, strerror(errno));
                fprintf(stderr, "sample: wrote %s (%ld samples)\n", a.out, N);
            }
        }
        if (flock(fd, LOCK_UN) != 0 || close(fd) != 0) ncsn_die("%s: unlock: %s", lock_path, strerror(errno));
    } else {
        fprintf(stderr, "sample: %s holds samples [%ld, %ld)\n", a.out, lo, hi);
    }
    free(u8);
    free(host);
    ncsn_free(be, x);
    free(covered);
    free(batch_done);
    ncsn_sampler_free(s);
    ncsn_model_free(lm.model);
    ncsn_config_free(&lm.cfg);
    ncsn_backend_destroy(be);
    return rc;
}

/* ====================================================================================== */
/* Part 3: `ncsn bench sampler`                                                           */
/* ====================================================================================== */

/* The number after "key": in a one-line JSON object, or -1. */
int ncsn_cmd_bench_sampler(int argc, char **argv) {
    sample_args a;
    parse_sample_args(&a, argc, argv, 1);
    if (!a.config || a.batch <= 0) ncsn_die("bench sampler: --config F and --batch B are required");
    ncsn_backend *be = ncsn_backend_create_from_name(a.device ? a.device : "auto");
    ncsn_backend_set_precision(be, sampler_precision(a.precision));
    ncsn_config cfg;
    ncsn_config_load(&cfg, a.config);
    ncsn_model *m = ncsn_model_create(be, &cfg);
    ncsn_model_init(m, a.seed);
    sampler_network_format(be, m);
    const int B = a.batch, L = ncsn_model_num_levels(m);
    int C, H, W;
    ncsn_model_input_shape(m, &C, &H, &W);
    ncsn_sampler_options o;
    sampler_options_from_args(&o, &cfg, &a);
    if (o.init == NCSN_INIT_DATA) o.init = NCSN_INIT_UNIFORM; /* speed does not depend on the init */
    NCSN_CHECKF(o.kind != NCSN_SAMPLER_INPAINT, "bench sampler: inpainting needs reference data; bench ald or pc");
    const int K = a.levels < L ? a.levels : L;
    ncsn_model_plan(m, B);
    float *x = ncsn_alloc(be, (size_t)B * C * H * W * sizeof(float));

    /* Warm-up: one level creates the convolution primitives / plans, grows the workspaces
     * and, on CUDA, captures the step graph; the timed run then replays it. */
    ncsn_sampler *s = ncsn_sampler_create(be, ncsn_model_score_fn, m, ncsn_model_sigmas_host(m), L, C, H, W, B, &o);
    ncsn_sampler_init_batch(s, x, 0, B);
    ncsn_sampler_run_levels(s, x, 0, B, 0, 1);
    ncsn_sampler_init_batch(s, x, 0, B);
    ncsn_synchronize(be);
    double t0 = ncsn_now();
    ncsn_sampler_run_levels(s, x, 0, B, 0, K);
    ncsn_synchronize(be);
    double elapsed = ncsn_now() - t0;
    long steps = (long)K * (o.kind == NCSN_SAMPLER_PC ? o.n_steps_each + 1 : o.n_steps_each);
    double step_s = elapsed / (double)steps;
    long nfe = ncsn_sampler_nfe(&o, L);
    double chain_s = step_s * (double)nfe;
    printf("bench sampler: %s, arch %s, %s, batch %d, %s sampler, device %s\n", a.config, ncsn_arch_name(cfg.model.arch),
           cfg.data.dataset, B, ncsn_sampler_kind_name(o.kind), be->ops->name);
    printf("  timed %d level(s) x %ld network evaluations: %.3f s, %.4f s per step\n", K, steps / K, elapsed, step_s);
    printf("  network evaluations/s: %.2f batch evaluations/s = %.1f image evaluations/s (%.1f GFLOP/s conv)\n",
           1.0 / step_s, B / step_s, 2.0 * ncsn_model_conv_macs(m) * B / step_s * 1e-9);
    printf("  full chain (L = %d, T = %d, NFE %ld): %.1f s per batch, %.4g images/s (extrapolated)\n", L,
           o.n_steps_each, nfe, chain_s, B / chain_s);

    if (a.baseline && be->kind == NCSN_DEVICE_CPU) {
        /* The peer as the official code runs (fp32); when ncsn samples in bf16, also the peer
         * under torch.autocast(bfloat16), so both the product-to-product and the
         * like-for-like ratio are on record. */
        const char *peers[2] = {"--precision fp32", "--precision bf16"};
        int n_peers = be->precision == NCSN_PRECISION_BF16 ? 2 : 1;
        for (int k = 0; k < n_peers; k++) {
            char line[8192];
            double torch_step = 0.0;
            if (!ncsn_run_torch_baseline("sampler", a.config, B, peers[k], line, sizeof line) ||
                !ncsn_json_number(line, "step_s", &torch_step) || torch_step <= 0.0)
                break;
            printf("  pytorch %s (same chain step, same machine): %.4f s per step, %.4g images/s\n",
                   k ? "bf16 autocast" : "fp32", torch_step, B / (torch_step * (double)nfe));
            printf("  ratio ncsn %s / pytorch %s: %.2fx\n", ncsn_precision_name(be->precision), k ? "bf16" : "fp32",
                   torch_step / step_s);
        }
    }
    ncsn_sampler_free(s);
    ncsn_free(be, x);
    ncsn_model_free(m);
    ncsn_config_free(&cfg);
    ncsn_backend_destroy(be);
    return 0;
}
