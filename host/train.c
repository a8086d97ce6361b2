/* train.c: `ncsn train` and `ncsn bench train` (train.h, cli.h).
 *
 * The step mirrors ncsnv2 NCSNRunner.train / ncsn AnnealRunner.train (spec §6.1):
 *   draw batch -> data_transform (dequantise, flip, rescale / logit) -> labels ->
 *   x~ = x + sigma z -> loss -> zero_grad -> backward -> [clip] -> Adam -> [EMA]
 * and the loop adds what the official runners leave to the user: atomic checkpoints with
 * the whole training state, exact resume, a non-finite-loss guard, progress and metrics.
 */
#include "ncsn/train.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kernels/rng_math.h"
#include "ncsn/checkpoint.h"
#include "ncsn/cli.h"
#include "ncsn/data.h"
#include "ncsn/grad_sync.h"
#include "ncsn/io.h"
#include "ncsn/progress.h"
#include "ncsn/sample.h"

/* ---- the step ------------------------------------------------------------------------ */

struct ncsn_trainer {
    ncsn_backend *be;
    ncsn_model *m;
    const ncsn_config *cfg;
    uint64_t seed;
    int B, L, C, H, W; /* B: this rank's rows of the batch */
    /* Data parallelism: the global batch and this rank's first global position in it
     * (B and 0 for one process); comm all-reduces the gradients (NULL: one process). */
    int global_B, first_row;
    ncsn_comm *comm;
    size_t D; /* C*H*W */
    size_t P; /* parameters */
    int ssm;  /* training.algo == ssm */
    /* Image preprocessing switches, resolved once from the config (spec §6.2). */
    int images, uniform_dequant, gaussian_dequant, flip, rescale, logit;
    /* Optimiser state, table.total floats each. */
    float *adam_m, *adam_v, *adam_vmax, *ema;
    /* Step buffers (backend). */
    float *x, *x_noisy, *noise, *tmp, *score, *dscore, *loss, *slices, *grad_norm2;
    int32_t *labels;
    int32_t *labels_host; /* staging memory (ncsn_host_alloc): uploaded asynchronously */
    ncsn_fence *uploaded; /* recorded after the step's uploads (ncsn_trainer_wait_upload) */
    ncsn_grad_sync *grad_sync; /* world size > 1: bucketed gradient all-reduce; NULL otherwise */
    float *param_backup;       /* the parameters while the EMA weights stand in (lazily allocated) */
    ncsn_ssm *ssm_state;
};

static float *alloc_floats(ncsn_backend *be, size_t count, const char *what) {
    float *p = ncsn_alloc(be, count * sizeof(float));
    if (!p) ncsn_die("train: cannot allocate %s (%zu floats) on %s", what, count, be->ops->name);
    return p;
}

/* The keyed streams of one batch: a training step draws from the training purposes with
 * step = the update index, a test evaluation from the test purposes with step = the
 * evaluation index (train.h), so evaluating never consumes a training draw. */
typedef struct {
    uint32_t labels, noise, dequant;
} batch_draws;

static const batch_draws TRAIN_DRAWS = {NCSN_RNG_LABELS, NCSN_RNG_NOISE, NCSN_RNG_DEQUANT};
static const batch_draws TEST_DRAWS = {NCSN_RNG_TEST_LABELS, NCSN_RNG_TEST_NOISE, NCSN_RNG_TEST_DEQUANT};

static int32_t draw_label(uint64_t seed, uint32_t purpose, long step, int n, int L) {
    /* Lemire's multiply-shift: floor(u * L / 2^32), bias below L / 2^32 (< 1e-6). */
    uint32_t u = ncsn_rng_u32(seed, purpose, (uint32_t)n, (uint32_t)step, 0);
    return (int32_t)(((uint64_t)u * (uint64_t)L) >> 32);
}

int32_t ncsn_train_label(uint64_t seed, long step, int n, int L) {
    return draw_label(seed, NCSN_RNG_LABELS, step, n, L);
}

double ncsn_trainer_lr(const ncsn_config *cfg, long step) {
    double lr = cfg->optim.lr;
    if (cfg->training.warmup > 0) {
        double f = (double)step / (double)cfg->training.warmup;
        if (f < 1.0) lr *= f;
    }
    return lr;
}

ncsn_trainer *ncsn_trainer_create(ncsn_backend *be, ncsn_model *m, const ncsn_config *cfg, uint64_t seed, int B) {
    NCSN_CHECK(be && m && cfg && B >= 1);
    const char *origin = cfg->path[0] ? cfg->path : "config";
    if (cfg->training.anneal_power != 2.0)
        ncsn_die("%s: training.anneal_power is %g; the engine implements the official value 2 only (the "
                 "sigma^2 weighting is fused into the loss kernel)",
                 origin, cfg->training.anneal_power);
    int ssm = !strcmp(cfg->training.algo, "ssm");
    if (!ssm && strcmp(cfg->training.algo, "dsm"))
        ncsn_die("%s: training.algo is '%s'; expected 'dsm' or 'ssm'", origin, cfg->training.algo);
    if (ssm && cfg->training.n_particles > 1)
        ncsn_die("%s: training.n_particles is %d; sliced score matching runs with 1 particle", origin,
                 cfg->training.n_particles);
    if (strcmp(cfg->optim.optimizer, "Adam"))
        ncsn_die("%s: optim.optimizer is '%s'; the official runners and the engine use 'Adam'", origin,
                 cfg->optim.optimizer);

    ncsn_trainer *t = ncsn_xcalloc(1, sizeof *t);
    t->be = be;
    t->m = m;
    t->cfg = cfg;
    t->seed = seed;
    t->B = B;
    t->global_B = B;
    t->first_row = 0;
    t->L = ncsn_model_num_levels(m);
    ncsn_model_input_shape(m, &t->C, &t->H, &t->W);
    t->D = ncsn_model_input_size(m);
    NCSN_CHECK(t->D == (size_t)t->C * (size_t)t->H * (size_t)t->W);
    t->P = ncsn_model_table(m)->total;
    t->ssm = ssm;

    /* v1 AnnealRunner.train dequantises every batch; v2 data_transform only with
     * data.uniform_dequantization. Toy points are not images: no image transforms. */
    t->images = cfg->model.arch != NCSN_ARCH_TOY;
    t->uniform_dequant = t->images && (cfg->is_v1 || cfg->data.uniform_dequantization);
    t->gaussian_dequant = t->images && cfg->data.gaussian_dequantization;
    t->flip = t->images && cfg->data.random_flip;
    t->rescale = t->images && cfg->data.rescaled;
    t->logit = t->images && !cfg->data.rescaled && cfg->data.logit_transform;

    t->adam_m = alloc_floats(be, t->P, "Adam exp_avg");
    t->adam_v = alloc_floats(be, t->P, "Adam exp_avg_sq");
    if (cfg->optim.amsgrad) t->adam_vmax = alloc_floats(be, t->P, "Adam max_exp_avg_sq");
    if (cfg->model.ema) {
        t->ema = alloc_floats(be, t->P, "EMA shadow");
        ncsn_copy(be, t->ema, ncsn_model_params(m), t->P * sizeof(float)); /* EMAHelper.register */
    }
    size_t BD = (size_t)B * t->D;
    t->x = alloc_floats(be, BD, "batch");
    t->x_noisy = alloc_floats(be, BD, "perturbed batch");
    t->noise = alloc_floats(be, BD, "noise");
    t->tmp = alloc_floats(be, BD, "dequantisation noise");
    t->loss = alloc_floats(be, (size_t)B, "losses");
    t->grad_norm2 = alloc_floats(be, 1, "gradient norm");
    t->labels = ncsn_alloc(be, (size_t)B * sizeof(int32_t));
    if (!t->labels) ncsn_die("train: cannot allocate labels on %s", be->ops->name);
    t->labels_host = ncsn_host_alloc(be, (size_t)B * sizeof(int32_t));
    t->uploaded = ncsn_fence_create(be);
    if (ssm) {
        t->slices = alloc_floats(be, BD, "SSM projections");
        t->ssm_state = ncsn_ssm_create(be, m, B);
    } else {
        t->score = alloc_floats(be, BD, "scores");
        t->dscore = alloc_floats(be, BD, "score gradients");
    }
    return t;
}

void ncsn_trainer_free(ncsn_trainer *t) {
    if (!t) return;
    ncsn_backend *be = t->be;
    float *buffers[] = {t->adam_m, t->adam_v, t->adam_vmax, t->ema,    t->x,      t->x_noisy, t->noise,
                        t->tmp,    t->score,  t->dscore,    t->loss,   t->slices, t->grad_norm2,
                        t->param_backup};
    for (size_t k = 0; k < sizeof buffers / sizeof buffers[0]; k++)
        if (buffers[k]) ncsn_free(be, buffers[k]);
    ncsn_free(be, t->labels);
    ncsn_ssm_free(t->ssm_state);
    ncsn_host_free(be, t->labels_host);
    ncsn_fence_destroy(be, t->uploaded);
    if (t->grad_sync) {
        ncsn_model_set_grad_ready_hook(t->m, NULL, NULL); /* the model outlives the trainer */
        ncsn_grad_sync_destroy(t->grad_sync);
    }
    free(t);
}

void ncsn_trainer_set_comm(ncsn_trainer *t, ncsn_comm *comm) {
    NCSN_CHECK(t && comm);
    int K = ncsn_comm_world_size(comm), rank = ncsn_comm_rank(comm);
    NCSN_CHECK(K >= 1 && rank >= 0 && rank < K);
    NCSN_CHECKF((long)t->B * K < 0x7fffffffL, "train: global batch %d x %d ranks", t->B, K);
    t->comm = comm;
    t->global_B = t->B * K;
    t->first_row = rank * t->B;
    if (K > 1 && !t->grad_sync) {
        t->grad_sync = ncsn_grad_sync_create(comm, t->be, ncsn_model_grads(t->m), t->P,
                                             NCSN_GRAD_SYNC_DEFAULT_BUCKET_BYTES);
        /* DSM: one backward per step, whose hook starts each bucket once its gradients are
         * final (NCCL reduces it while the earlier layers' backward runs). SSM's three
         * backwards accumulate: no hook; finish reduces the whole buffer after the third. */
        if (!t->ssm) ncsn_model_set_grad_ready_hook(t->m, ncsn_grad_sync_hook, t->grad_sync);
    }
}

float *ncsn_trainer_adam_m(ncsn_trainer *t) { return t->adam_m; }
float *ncsn_trainer_adam_v(ncsn_trainer *t) { return t->adam_v; }
float *ncsn_trainer_adam_vmax(ncsn_trainer *t) { return t->adam_vmax; }
float *ncsn_trainer_ema(ncsn_trainer *t) { return t->ema; }
const float *ncsn_trainer_perturbed(const ncsn_trainer *t) { return t->x_noisy; }
double ncsn_trainer_grad_norm(const ncsn_trainer *t) {
    if (!(t->cfg->training.grad_clip > 0.0)) return NAN;
    float norm2;
    ncsn_copy_to_host(t->be, &norm2, t->grad_norm2, sizeof norm2); /* synchronises */
    return sqrt((double)norm2);
}

void ncsn_trainer_wait_upload(ncsn_trainer *t) { ncsn_fence_wait(t->be, t->uploaded); }

/* torchvision RandomHorizontalFlip(p = 0.5), per example, on the host copy of the batch:
 * a flip is a permutation, so doing it while the batch passes through host memory costs
 * one pass over it and no backend op. */
static void flip_batch_host(float *x, int B, int global_B, int first_row, int C, int H, int W, uint64_t seed,
                            long step) {
    for (int n = 0; n < B; n++) {
        uint32_t example = (uint32_t)((uint64_t)step * (uint64_t)global_B + (uint64_t)(first_row + n));
        if (!(ncsn_rng_u32(seed, NCSN_RNG_FLIP, example, (uint32_t)step, 0) >> 31)) continue;
        float *img = x + (size_t)n * (size_t)C * (size_t)H * (size_t)W;
        for (int row = 0; row < C * H; row++) {
            float *r = img + (size_t)row * (size_t)W;
            for (int a = 0, b = W - 1; a < b; a++, b--) {
                float s = r[a];
                r[a] = r[b];
                r[b] = s;
            }
        }
    }
}

/* data_transform on the backend (ncsnv2 datasets/__init__.py; v1 AnnealRunner.train). */
static void preprocess(ncsn_trainer *t, long step, uint32_t first_example, uint32_t dequant_purpose) {
    ncsn_backend *be = t->be;
    size_t BD = (size_t)t->B * t->D;
    if (t->uniform_dequant) {
        /* x / 256 * 255 + U[0,1) / 256, in the float32 operation order of
         * ncsn_dequantize_element: x * (255/256) rounded once, u / 256 exact, sum rounded. */
        ncsn_fill_uniform(be, t->tmp, t->B, t->D, t->seed, dequant_purpose, first_example, (uint32_t)step);
        ncsn_scale_shift(be, t->tmp, t->tmp, 1.0f / 256.0f, 0.0f, BD);
        ncsn_scale_shift(be, t->x, t->x, 255.0f / 256.0f, 0.0f, BD);
        ncsn_accumulate(be, t->x, t->tmp, BD);
    }
    if (t->gaussian_dequant) {
        /* X + 0.01 N(0, I); the example index's top bit keeps this stream apart from the
         * uniform one, which shares the purpose. */
        ncsn_fill_normal(be, t->tmp, t->B, t->D, t->seed, dequant_purpose, first_example | 0x80000000u,
                         (uint32_t)step);
        ncsn_scale_shift(be, t->tmp, t->tmp, 0.01f, 0.0f, BD);
        ncsn_accumulate(be, t->x, t->tmp, BD);
    }
    if (t->rescale) {
        ncsn_scale_shift(be, t->x, t->x, 2.0f, -1.0f, BD);
    } else if (t->logit) {
        ncsn_logit(be, t->x, BD);
    }
}

/* Steps 1 and 2 of a training step, and of a test evaluation (with its own draws):
 * 1. batch and labels: one uniform level index per example (torch.randint(0, L, (B,))),
 *    keyed by the example's global position so any number of ranks draws the same levels;
 * 2. data_transform, then the perturbation x~ = x + sigma_y z (anneal_dsm_score_estimation).
 * `step` keys the draws: the update index, or the evaluation index. */
static void prepare_batch(ncsn_trainer *t, float *x_host, long step, const batch_draws *draws) {
    NCSN_CHECK(step >= 0 && step < 0xffffffffL);
    ncsn_backend *be = t->be;
    size_t BD = (size_t)t->B * t->D;
    /* Global example index of this rank's first row (train.h: g = s*B + n, B global). */
    uint32_t first_example = (uint32_t)((uint64_t)step * (uint64_t)t->global_B + (uint64_t)t->first_row);
    for (int n = 0; n < t->B; n++)
        t->labels_host[n] = draw_label(t->seed, draws->labels, step, t->first_row + n, t->L);
    /* From staging memory on CUDA (the loader's pinned buffers, labels_host): asynchronous;
     * the fence tells the caller when x_host and labels_host may be rewritten. */
    ncsn_copy_to_device(be, t->x, x_host, BD * sizeof(float));
    ncsn_copy_to_device(be, t->labels, t->labels_host, (size_t)t->B * sizeof(int32_t));
    ncsn_fence_record(be, t->uploaded);
    preprocess(t, step, first_example, draws->dequant);
    ncsn_fill_normal(be, t->noise, t->B, t->D, t->seed, draws->noise, first_example, (uint32_t)step);
    ncsn_noise_inject(be, t->x_noisy, t->x, t->noise, ncsn_model_sigmas(t->m), t->labels, t->B, t->D);
}

double ncsn_trainer_step(ncsn_trainer *t, float *x_host, long step) {
    NCSN_CHECK(step >= 0 && step < 0xffffffffL);
    ncsn_backend *be = t->be;
    ncsn_model *m = t->m;
    const ncsn_config *cfg = t->cfg;
    uint32_t first_example = (uint32_t)((uint64_t)step * (uint64_t)t->global_B + (uint64_t)t->first_row);
    const float *sigmas = ncsn_model_sigmas(m);

    /* 1-2. Random flips (torchvision RandomHorizontalFlip, training only), then the batch,
     *      labels, transforms and perturbation. */
    if (t->flip) flip_batch_host(x_host, t->B, t->global_B, t->first_row, t->C, t->H, t->W, t->seed, step);
    prepare_batch(t, x_host, step, &TRAIN_DRAWS);

    /* 3. Loss and gradients. zero_grad before the forward is the runner's zero_grad before
     *    backward: nothing reads the gradients in between. */
    ncsn_model_zero_grads(m);
    if (t->ssm) {
        ncsn_fill_normal(be, t->slices, t->B, t->D, t->seed, NCSN_RNG_SLICE, first_example, (uint32_t)step);
        ncsn_ssm_loss_backward(t->ssm_state, t->x_noisy, t->slices, t->labels, t->B);
    } else {
        ncsn_model_forward(m, t->score, t->x_noisy, t->labels, t->B);
        ncsn_dsm_loss(be, t->loss, t->dscore, t->score, t->noise, sigmas, t->labels, t->B, t->D);
        ncsn_model_backward(m, NULL, t->dscore);
    }

    /* 3b. Data parallel: each rank's gradient is that of the mean loss over its slice; their
     *     mean over ranks (equal slices) is the gradient of the global-batch mean loss. The
     *     reduction runs in ~25 MiB buckets started during the backward as soon as their
     *     gradients are final (grad_sync.h; NCCL overlaps them with the rest of the
     *     backward, shm reduces them on the spot); finish completes the last ones. */
    float *grads = ncsn_model_grads(m);
    if (t->grad_sync) ncsn_grad_sync_finish(t->grad_sync);

    /* 4. Optional gradient-norm clipping (torch.nn.utils.clip_grad_norm_, as score_sde):
     *    coef = max_norm / (norm + 1e-6), applied when below 1. The norm stays in backend
     *    memory and the clip kernel reads it there: no host synchronisation. */
    if (cfg->training.grad_clip > 0.0) {
        ncsn_sum_squares(be, t->grad_norm2, grads, t->P);
        ncsn_clip_by_norm(be, grads, t->P, t->grad_norm2, (float)cfg->training.grad_clip);
    }

    /* 5. Adam (torch.optim.Adam: betas (beta1, 0.999), eps, weight_decay, amsgrad), then
     *    the EMA of the parameters (ncsnv2 EMAHelper.update after optimizer.step()). */
    double lr = ncsn_trainer_lr(cfg, step);
    ncsn_adam_hparams hp = {.lr = (float)lr,
                            .beta1 = (float)cfg->optim.beta1,
                            .beta2 = 0.999f,
                            .eps = (float)cfg->optim.eps,
                            .weight_decay = (float)cfg->optim.weight_decay,
                            .amsgrad = cfg->optim.amsgrad,
                            .step = step + 1};
    ncsn_adam_step(be, ncsn_model_params(m), grads, t->adam_m, t->adam_v, t->adam_vmax, t->P, &hp);
    if (t->ema) ncsn_ema_update(be, t->ema, ncsn_model_params(m), t->P, (float)cfg->model.ema_rate);
    return lr;
}

void ncsn_trainer_use_ema_weights(ncsn_trainer *t, int on) {
    NCSN_CHECKF(t->ema, "train: model.ema is off: there are no EMA weights");
    size_t bytes = t->P * sizeof(float);
    float *params = ncsn_model_params(t->m);
    if (on) {
        if (!t->param_backup) t->param_backup = alloc_floats(t->be, t->P, "parameter backup");
        ncsn_copy(t->be, t->param_backup, params, bytes);
        ncsn_copy(t->be, params, t->ema, bytes);
    } else {
        ncsn_copy(t->be, params, t->param_backup, bytes);
    }
}

void ncsn_trainer_test_loss(ncsn_trainer *t, float *x_host, long eval_index, float *loss_host) {
    NCSN_CHECKF(!t->ssm, "train: the test loss is a DSM loss; training.algo ssm has none");
    ncsn_backend *be = t->be;
    prepare_batch(t, x_host, eval_index, &TEST_DRAWS);
    /* ncsnv2 NCSNRunner.train evaluates with ema_helper.ema_copy(score) when model.ema;
     * v1 with the network itself. No gradient: dscore NULL, the backward never runs. */
    if (t->ema) ncsn_trainer_use_ema_weights(t, 1);
    ncsn_model_forward(t->m, t->score, t->x_noisy, t->labels, t->B);
    ncsn_dsm_loss(be, t->loss, NULL, t->score, t->noise, ncsn_model_sigmas(t->m), t->labels, t->B, t->D);
    if (t->ema) ncsn_trainer_use_ema_weights(t, 0);
    ncsn_copy_to_host(be, loss_host, t->loss, (size_t)t->B * sizeof(float)); /* synchronises */
}

void ncsn_trainer_read_loss(ncsn_trainer *t, float *loss_host, int32_t *labels_host) {
    if (loss_host) {
        if (t->ssm)
            ncsn_ssm_read_loss(t->ssm_state, loss_host, t->labels_host, t->B);
        else
            ncsn_copy_to_host(t->be, loss_host, t->loss, (size_t)t->B * sizeof(float));
    }
    if (labels_host) memcpy(labels_host, t->labels_host, (size_t)t->B * sizeof(int32_t));
}

/* ---- the workdir: checkpoints, metrics --------------------------------------------------- */

static void make_dir(const char *path) {
    if (mkdir(path, 0777) != 0 && errno != EEXIST) ncsn_die("%s: cannot create directory: %s", path, strerror(errno));
}

/* On resume, metrics.jsonl may hold lines past the checkpoint (a killed run logged them
 * before dying); the resumed run logs those steps again, so drop them: keep the lines with
 * "step" <= resumed_step. Rewritten atomically (tmp + rename). */
static void truncate_metrics(const char *path, long resumed_step) {
    FILE *in = fopen(path, "r");
    if (!in) {
        if (errno == ENOENT) return;
        ncsn_die("%s: %s", path, strerror(errno));
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *out = fopen(tmp, "w");
    if (!out) ncsn_die("%s: %s", tmp, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, in)) > 0) {
        const char *s = strstr(line, "\"step\":");
        if (!s || strtol(s + 7, NULL, 10) > resumed_step) continue;
        if (fwrite(line, 1, (size_t)len, out) != (size_t)len) ncsn_die("%s: write failed: %s", tmp, strerror(errno));
    }
    free(line);
    fclose(in);
    if (fflush(out) != 0 || fsync(fileno(out)) != 0 || fclose(out) != 0)
        ncsn_die("%s: write failed: %s", tmp, strerror(errno));
    if (rename(tmp, path) != 0) ncsn_die("%s: rename failed: %s", path, strerror(errno));
}

/* ---- losses between log points ------------------------------------------------------
 * Per-step, per-example losses are kept for the whole log interval so that the metrics
 * are interval means and per-sigma-bucket means. DSM on a device other than the CPU
 * copies each step's B losses into a device-side history (no sync) and reads the
 * interval back at the next check point; the CPU reads each step (a memcpy). SSM losses
 * need the three scores on the host (ncsn_ssm_read_loss), so they are computed at check
 * points only, from that step's batch. */

#define LOSS_BUCKETS 4

typedef struct {
    int B, rows_cap;
    float *hist_dev;      /* rows_cap x B (DSM, non-CPU device) */
    float *hist_host;     /* rows_cap x B */
    int32_t *labels;      /* rows_cap x B */
    unsigned char *valid; /* rows_cap: row read (or readable from hist_dev) */
    int rows;             /* rows used since the last log point */
    int rows_on_host;     /* rows [0, rows_on_host) are in hist_host */
    long first_step;      /* 1-based step number of row 0 */
} loss_window;

static void window_reset(loss_window *w, long next_step) {
    w->rows = 0;
    w->rows_on_host = 0;
    w->first_step = next_step;
    memset(w->valid, 0, (size_t)w->rows_cap);
}

/* Records the losses of the step just done (1-based `step`); `read` says whether the
 * caller is at a check point (losses needed on the host now). */
static void window_record(loss_window *w, ncsn_trainer *t, long step, int read, int device_is_cpu) {
    NCSN_CHECK(w->rows < w->rows_cap && step == w->first_step + w->rows);
    int row = w->rows++;
    size_t off = (size_t)row * (size_t)w->B;
    memcpy(w->labels + off, t->labels_host, (size_t)w->B * sizeof(int32_t));
    if (t->ssm) {
        if (read || device_is_cpu) {
            ncsn_ssm_read_loss(t->ssm_state, w->hist_host + off, t->labels_host, w->B);
            w->valid[row] = 1;
        }
    } else if (device_is_cpu) {
        ncsn_copy_to_host(t->be, w->hist_host + off, t->loss, (size_t)w->B * sizeof(float));
        w->valid[row] = 1;
    } else {
        ncsn_copy(t->be, w->hist_dev + off, t->loss, (size_t)w->B * sizeof(float));
        w->valid[row] = 1;
    }
    if (!t->ssm && !device_is_cpu && read && w->rows > w->rows_on_host) {
        /* One synchronising read for the whole interval. */
        size_t first = (size_t)w->rows_on_host * (size_t)w->B;
        ncsn_copy_to_host(t->be, w->hist_host + first, w->hist_dev + first,
                          (size_t)(w->rows - w->rows_on_host) * (size_t)w->B * sizeof(float));
    }
    if (read || device_is_cpu || t->ssm) w->rows_on_host = w->rows;
}

/* The first non-finite per-example loss on the host, as (row, example); 0 if none. */
static int window_first_nonfinite(const loss_window *w, int *row_out, int *n_out) {
    for (int r = 0; r < w->rows_on_host; r++) {
        if (!w->valid[r]) continue;
        for (int n = 0; n < w->B; n++)
            if (!isfinite(w->hist_host[(size_t)r * w->B + n])) {
                *row_out = r;
                *n_out = n;
                return 1;
            }
    }
    return 0;
}

typedef struct {
    double loss;                  /* mean over the examples read */
    double bucket[LOSS_BUCKETS];  /* mean per level bucket (NAN when empty) */
    int buckets;
    long examples;
    /* The sums behind the means, so that ranks can combine their windows. */
    double sum, bucket_sum[LOSS_BUCKETS];
    long bucket_count[LOSS_BUCKETS];
} window_stats;

static void window_stats_finish(window_stats *s) {
    s->loss = s->examples ? s->sum / (double)s->examples : NAN;
    for (int b = 0; b < s->buckets; b++)
        s->bucket[b] = s->bucket_count[b] ? s->bucket_sum[b] / (double)s->bucket_count[b] : NAN;
}

static window_stats window_summarise(const loss_window *w, int L) {
    window_stats s = {0};
    s.buckets = L < LOSS_BUCKETS ? L : LOSS_BUCKETS;
    double sum = 0.0, bsum[LOSS_BUCKETS] = {0};
    long bcount[LOSS_BUCKETS] = {0};
    for (int r = 0; r < w->rows_on_host; r++) {
        if (!w->valid[r]) continue;
        for (int n = 0; n < w->B; n++) {
            size_t i = (size_t)r * w->B + n;
            double l = w->hist_host[i];
            int b = (int)((long)w->labels[i] * s.buckets / L); /* bucket 0 = largest sigmas */
            sum += l;
            bsum[b] += l;
            bcount[b]++;
            s.examples++;
        }
    }
    s.sum = sum;
    for (int b = 0; b < s.buckets; b++) {
        s.bucket_sum[b] = bsum[b];
        s.bucket_count[b] = bcount[b];
    }
    window_stats_finish(&s);
    return s;
}

/* ---- ncsn train ------------------------------------------------------------------------- */

typedef struct {
    const ncsn_train_options *o;
    ncsn_config cfg;
    ncsn_backend *be;
    ncsn_model *m;
    ncsn_trainer *t;
    uint64_t seed;
    long step, total;
    int B, keep_last; /* B: the global batch */
    /* Data parallelism (comm.h): K ranks, each with B_local = B / K rows of every batch;
     * `lead` (rank 0) alone prints and writes files. K = 1: one process. */
    ncsn_comm *comm;
    int rank, K, B_local, lead;
    float *reduce_buf; /* backend scratch for the small reductions below (K > 1) */
    long log_freq, snapshot_freq;
    ncsn_loader_state loader_state; /* after the last batch consumed */
    char last_good[4096];           /* newest checkpoint written or resumed from ("" = none) */
    long test_freq;                 /* 0: no test loss */
    double test_loss;               /* the last evaluation's mean over the global test batch */
    long test_step;                 /* the step it was computed at (0: none yet) */
    char metrics_path[4096];
} train_run;

/* mkdir -p */
static void make_dirs(const char *path) {
    char buf[4096];
    int n = snprintf(buf, sizeof buf, "%s", path);
    if (n <= 0 || (size_t)n >= sizeof buf) ncsn_die("%s: path too long", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            make_dir(buf);
            *p = '/';
        }
    make_dir(buf);
}

/* Copies backend floats to a fresh host array. */
static float *host_copy(ncsn_backend *be, const float *src, size_t count) {
    float *h = ncsn_xmalloc(count * sizeof(float));
    ncsn_copy_to_host(be, h, src, count * sizeof(float));
    return h;
}

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

static void die_nonfinite_state(const train_run *r, const char *what) {
    ncsn_die("step %ld: %s are not finite after the update; last good checkpoint: %s", r->step, what,
             r->last_good[0] ? r->last_good : "none (no checkpoint was written)");
}

/* ---- checkpoints (checkpoint.h) -------------------------------------------------------- */

/* v2 networks carry the sigmas buffer in their state dict; v1 and the toy MLP do not. */
static int has_sigmas_buffer(ncsn_arch arch) { return arch != NCSN_ARCH_NCSN && arch != NCSN_ARCH_TOY; }

static void save_training_checkpoint(train_run *r) {
    const ncsn_param_table *table = ncsn_model_table(r->m);
    size_t P = table->total;
    int L = ncsn_model_num_levels(r->m);
    ncsn_checkpoint_data d;
    memset(&d, 0, sizeof d);
    d.params = host_copy(r->be, ncsn_model_params(r->m), P);
    d.adam_m = host_copy(r->be, r->t->adam_m, P);
    d.adam_v = host_copy(r->be, r->t->adam_v, P);
    d.adam_vmax = r->t->adam_vmax ? host_copy(r->be, r->t->adam_vmax, P) : NULL;
    d.ema = r->t->ema ? host_copy(r->be, r->t->ema, P) : NULL;
    /* Never replace a good checkpoint with a broken one: a finite loss at this step does not
     * prove the update after it was finite (an infinite gradient gives NaN weights). */
    if (!all_finite(d.params, P)) die_nonfinite_state(r, "parameters");
    if (!all_finite(d.adam_m, P) || !all_finite(d.adam_v, P) || (d.adam_vmax && !all_finite(d.adam_vmax, P)))
        die_nonfinite_state(r, "Adam moments");
    if (d.ema && !all_finite(d.ema, P)) die_nonfinite_state(r, "EMA weights");
    float *sigmas = NULL;
    if (has_sigmas_buffer(r->cfg.model.arch)) {
        sigmas = ncsn_xmalloc((size_t)L * sizeof *sigmas);
        memcpy(sigmas, ncsn_model_sigmas_host(r->m), (size_t)L * sizeof *sigmas);
        d.sigmas = sigmas;
        d.num_levels = L;
    }
    d.step = r->step;
    d.state.seed = r->seed;
    d.state.epoch = r->loader_state.epoch;
    d.state.position = r->loader_state.position;
    char path[4096];
    ncsn_checkpoint_path(path, sizeof path, r->o->workdir, r->step);
    ncsn_checkpoint_save(path, table, &d, r->cfg.text, ncsn_arch_name(r->cfg.model.arch));
    snprintf(r->last_good, sizeof r->last_good, "%s", path);
    ncsn_checkpoint_prune(r->o->workdir, r->keep_last);
    free(d.params);
    free(d.adam_m);
    free(d.adam_v);
    free(d.adam_vmax);
    free(d.ema);
    free(sigmas);
}

/* Loads everything the run needs from `path`; every problem (another architecture,
 * missing or mis-shaped tensors, a different noise schedule, no optimizer state) stops the
 * run here, before any training work. */
static void load_training_checkpoint(train_run *r, const char *path) {
    ncsn_checkpoint_file f;
    ncsn_checkpoint_open(&f, path);
    const char *arch = ncsn_checkpoint_arch(&f), *want = ncsn_arch_name(r->cfg.model.arch);
    if (arch && strcmp(arch, want))
        ncsn_die("%s: checkpoint of a %s network, but %s builds %s: a checkpoint of another architecture cannot be "
                 "resumed",
                 path, arch, r->o->config_path, want);
    const ncsn_param_table *table = ncsn_model_table(r->m);
    size_t P = table->total;
    int L = ncsn_model_num_levels(r->m);
    ncsn_checkpoint_data d;
    memset(&d, 0, sizeof d);
    d.params = ncsn_xmalloc(P * sizeof(float));
    d.adam_m = ncsn_xmalloc(P * sizeof(float));
    d.adam_v = ncsn_xmalloc(P * sizeof(float));
    d.adam_vmax = r->t->adam_vmax ? ncsn_xmalloc(P * sizeof(float)) : NULL;
    d.ema = r->t->ema ? ncsn_xmalloc(P * sizeof(float)) : NULL;
    if (has_sigmas_buffer(r->cfg.model.arch)) {
        d.sigmas = ncsn_xmalloc((size_t)L * sizeof(float));
        d.num_levels = L;
    }
    ncsn_checkpoint_load(&f, table, &d, NCSN_CKPT_NEED_OPTIMIZER | (d.ema ? NCSN_CKPT_NEED_EMA : 0));
    /* The official v2 runner takes sigmas from the checkpoint's buffer; the engine builds
     * them from the config, so the two must agree. */
    if (d.has_sigmas && memcmp(d.sigmas, ncsn_model_sigmas_host(r->m), (size_t)L * sizeof(float)))
        ncsn_die("%s: its noise levels differ from those of %s (model.sigma_begin / sigma_end / num_classes): resume "
                 "with the schedule it was trained with",
                 path, r->o->config_path);
    ncsn_copy_to_device(r->be, ncsn_model_params(r->m), d.params, P * sizeof(float));
    ncsn_copy_to_device(r->be, r->t->adam_m, d.adam_m, P * sizeof(float));
    ncsn_copy_to_device(r->be, r->t->adam_v, d.adam_v, P * sizeof(float));
    if (d.adam_vmax) ncsn_copy_to_device(r->be, r->t->adam_vmax, d.adam_vmax, P * sizeof(float));
    if (d.ema) ncsn_copy_to_device(r->be, r->t->ema, d.ema, P * sizeof(float));
    r->step = (long)d.step;
    r->seed = d.state.seed;
    r->loader_state.epoch = d.state.epoch;
    r->loader_state.position = d.state.position;
    free(d.params);
    free(d.adam_m);
    free(d.adam_v);
    free(d.adam_vmax);
    free(d.ema);
    free(d.sigmas);
    ncsn_checkpoint_close(&f);
}

/* The loader's buffer provider: the backend's staging memory (ctx is the backend). */
static void *staging_alloc(void *be, size_t bytes) { return ncsn_host_alloc((ncsn_backend *)be, bytes); }

static void staging_free(void *be, void *p) { ncsn_host_free((ncsn_backend *)be, p); }

/* Writes DIR/metrics.jsonl line for the interval that ends at r->step. */
static void write_metrics(const train_run *r, const window_stats *s, double lr, double elapsed, double rate) {
    FILE *f = fopen(r->metrics_path, "a");
    if (!f) ncsn_die("%s: %s", r->metrics_path, strerror(errno));
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    fprintf(f, "{\"step\": %ld, \"loss\": %.9g, \"loss_by_sigma_bucket\": [", r->step, s->loss);
    for (int b = 0; b < s->buckets; b++) {
        if (isfinite(s->bucket[b]))
            fprintf(f, "%s%.9g", b ? ", " : "", s->bucket[b]);
        else
            fprintf(f, "%snull", b ? ", " : "");
    }
    fprintf(f, "], \"examples\": %ld, \"lr\": %.9g", s->examples, lr);
    double grad_norm = ncsn_trainer_grad_norm(r->t); /* NAN unless clipping; a sync at a log point */
    if (isfinite(grad_norm)) fprintf(f, ", \"grad_norm\": %.9g", grad_norm);
    if (r->test_step == r->step) fprintf(f, ", \"test_loss\": %.9g", r->test_loss);
    fprintf(f, ", \"steps_per_s\": %.6g, \"elapsed\": %.3f, \"time\": %.3f}\n", rate, elapsed,
            (double)now.tv_sec + 1e-9 * (double)now.tv_nsec);
    if (fclose(f) != 0) ncsn_die("%s: write failed: %s", r->metrics_path, strerror(errno));
}

/* A metrics.jsonl line for a test evaluation at a step that is not a log point. */
static void write_test_metrics(const train_run *r) {
    FILE *f = fopen(r->metrics_path, "a");
    if (!f) ncsn_die("%s: %s", r->metrics_path, strerror(errno));
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    fprintf(f, "{\"step\": %ld, \"test_loss\": %.9g, \"time\": %.3f}\n", r->step, r->test_loss,
            (double)now.tv_sec + 1e-9 * (double)now.tv_nsec);
    if (fclose(f) != 0) ncsn_die("%s: write failed: %s", r->metrics_path, strerror(errno));
}

/* ---- data parallelism: the run-level collectives (comm.h) ------------------------------ */

/* Every rank calls these at the same points (start, log points, checkpoints), so the
 * collectives pair up. They are cheap: a few floats, or one parameter pass per checkpoint. */

#define REDUCE_SLOTS (2 + 2 * LOSS_BUCKETS)

/* Combines the ranks' loss windows into the window of the global batch: the sums and
 * counts go through the mean all-reduce (float32 sums: ~1e-7 relative, plenty for a
 * logged loss; counts are small integers, rounded back). */
static void reduce_window_stats(train_run *r, window_stats *s) {
    if (r->K == 1) return;
    float v[REDUCE_SLOTS] = {(float)s->sum, (float)s->examples};
    for (int b = 0; b < LOSS_BUCKETS; b++) {
        v[2 + b] = b < s->buckets ? (float)s->bucket_sum[b] : 0.0f;
        v[2 + LOSS_BUCKETS + b] = b < s->buckets ? (float)s->bucket_count[b] : 0.0f;
    }
    ncsn_copy_to_device(r->be, r->reduce_buf, v, sizeof v);
    ncsn_comm_allreduce_mean(r->comm, r->be, r->reduce_buf, REDUCE_SLOTS);
    ncsn_copy_to_host(r->be, v, r->reduce_buf, sizeof v);
    s->sum = (double)v[0] * r->K;
    s->examples = lround((double)v[1] * r->K);
    for (int b = 0; b < s->buckets; b++) {
        s->bucket_sum[b] = (double)v[2 + b] * r->K;
        s->bucket_count[b] = lround((double)v[2 + LOSS_BUCKETS + b] * r->K);
    }
    window_stats_finish(s);
}

/* The test batch's loss sum and example count over the ranks (the same float32 mean
 * all-reduce as the windows); returns the global mean. */
static double reduce_test_loss(train_run *r, double sum, long count) {
    if (r->K > 1) {
        float v[2] = {(float)sum, (float)count};
        ncsn_copy_to_device(r->be, r->reduce_buf, v, sizeof v);
        ncsn_comm_allreduce_mean(r->comm, r->be, r->reduce_buf, 2);
        ncsn_copy_to_host(r->be, v, r->reduce_buf, sizeof v);
        sum = (double)v[0] * r->K;
        count = lround((double)v[1] * r->K);
    }
    return count ? sum / (double)count : NAN;
}

/* Rank 0's parameters and optimiser state to every rank: a fresh run starts from rank 0's
 * initialisation and a resumed one from what rank 0 read, whatever the others did. */
static void broadcast_state(train_run *r) {
    if (r->K == 1) return;
    size_t P = ncsn_model_table(r->m)->total;
    float *bufs[] = {ncsn_model_params(r->m), r->t->adam_m, r->t->adam_v, r->t->adam_vmax, r->t->ema};
    for (size_t k = 0; k < sizeof bufs / sizeof bufs[0]; k++)
        if (bufs[k]) ncsn_comm_broadcast(r->comm, r->be, bufs[k], P, 0);
}

/* The ranks' parameters must stay bit-identical (same reduced gradient, same Adam). At each
 * checkpoint every rank hashes its parameters (64-bit FNV-1a of the bytes), and the four
 * 16-bit pieces, exact in float32, are mean-reduced: the mean of identical values is the
 * value itself, so a rank whose own hash differs from the mean has drifted (with K ranks
 * at least one rank of a disagreeing set sees a difference) and stops the job. */
static void check_ranks_agree(train_run *r) {
    if (r->K == 1) return;
    size_t P = ncsn_model_table(r->m)->total;
    float *p = host_copy(r->be, ncsn_model_params(r->m), P);
    uint64_t h = 1469598103934665603ull;
    const unsigned char *bytes = (const unsigned char *)p;
    for (size_t i = 0; i < P * sizeof(float); i++) h = (h ^ bytes[i]) * 1099511628211ull;
    free(p);
    float own[4], mean[4];
    for (int k = 0; k < 4; k++) own[k] = (float)((h >> (16 * k)) & 0xffffu);
    ncsn_copy_to_device(r->be, r->reduce_buf, own, sizeof own);
    ncsn_comm_allreduce_mean(r->comm, r->be, r->reduce_buf, 4);
    ncsn_copy_to_host(r->be, mean, r->reduce_buf, sizeof mean);
    if (memcmp(own, mean, sizeof own))
        ncsn_die("step %ld: rank %d's parameters differ from the other ranks' (hash %016llx): the data-parallel "
                 "replicas diverged",
                 r->step, r->rank, (unsigned long long)h);
}

/* Snapshot grid (v2 NCSNRunner.train with training.snapshot_sampling): 36 samples from the
 * EMA weights when model.ema, with the config's sampling section. The sampler's RNG is
 * keyed by its own purposes, so this leaves the training stream untouched. */
static void snapshot_samples(train_run *r) {
    if (!r->cfg.training.snapshot_sampling || r->cfg.model.arch == NCSN_ARCH_TOY) return;
    const int n = 36;
    int C, H, W;
    ncsn_model_input_shape(r->m, &C, &H, &W);
    if (r->t->ema) ncsn_trainer_use_ema_weights(r->t, 1);
    if (r->B_local < n) ncsn_model_plan(r->m, n);
    float *out = ncsn_xmalloc((size_t)n * (size_t)C * (size_t)H * (size_t)W * sizeof(float));
    ncsn_sample_model_host(r->be, r->m, &r->cfg, out, n, r->seed);
    if (r->B_local < n) ncsn_model_plan(r->m, r->B_local);
    if (r->t->ema) ncsn_trainer_use_ema_weights(r->t, 0);
    char dir[4200], path[4300];
    snprintf(dir, sizeof dir, "%s/samples", r->o->workdir);
    make_dir(dir);
    snprintf(path, sizeof path, "%s/image_grid_%ld.png", dir, r->step);
    ncsn_grid_png_write(path, out, n, C, H, W, 6);
    free(out);
}

static void train_usage(FILE *f) {
    fprintf(f, "usage: ncsn train --config F.yml --workdir DIR [--data PATH] [--device cpu|cuda|auto]\n"
               "                  [--steps N] [--seed S] [--resume] [--keep-last K] [--nproc K] [--precision fp32|tf32|bf16]\n"
               "                  [--test-freq N]\n"
               "Trains as the official runners (DSM, or SSM with training.algo: ssm). --steps N trains until\n"
               "N updates are done (default training.n_iters); checkpoints go to DIR/checkpoint_<step>.safetensors\n"
               "every training.snapshot_freq steps and at the end; --resume continues from the newest one,\n"
               "exactly. Metrics: DIR/metrics.jsonl every training.log_freq steps; the DSM loss of a test batch\n"
               "(the dataset's test split, EMA weights when model.ema) every --test-freq steps (default 100, 0: off).\n"
               "--nproc K trains data-parallel on K processes of this machine (training.batch_size is the global\n"
               "batch, a multiple of K); under mpirun/srun the ranks come from the launcher (see comm.h).\n");
}

int ncsn_cmd_train(int argc, char **argv) {
    ncsn_train_options o;
    memset(&o, 0, sizeof o);
    o.keep_last = -1;
    o.test_freq = NCSN_TRAIN_TEST_FREQ;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            train_usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--resume")) {
            o.resume = 1;
            continue;
        }
        if (i + 1 >= argc) {
            train_usage(stderr);
            ncsn_die("train: %s needs a value", a);
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--config")) o.config_path = v;
        else if (!strcmp(a, "--workdir")) o.workdir = v;
        else if (!strcmp(a, "--data")) o.data_path = v;
        else if (!strcmp(a, "--device")) o.device = v;
        else if (!strcmp(a, "--precision")) o.precision = v;
        else if (!strcmp(a, "--steps")) o.steps = ncsn_parse_long_flag(a, v, 1, 0x7fffffffL);
        else if (!strcmp(a, "--seed")) {
            o.seed = (uint64_t)ncsn_parse_long_flag(a, v, 0, 0x7fffffffffffffffL);
            o.seed_given = 1;
        } else if (!strcmp(a, "--keep-last")) o.keep_last = (int)ncsn_parse_long_flag(a, v, 0, 1000000);
        else if (!strcmp(a, "--nproc")) o.nproc = (int)ncsn_parse_long_flag(a, v, 1, NCSN_COMM_SHM_MAX_RANKS);
        else if (!strcmp(a, "--test-freq")) o.test_freq = ncsn_parse_long_flag(a, v, 0, 0x7fffffffL);
        else {
            train_usage(stderr);
            ncsn_die("train: unknown option '%s'", a);
        }
    }
    if (!o.config_path || !o.workdir) {
        train_usage(stderr);
        ncsn_die("train: --config and --workdir are required");
    }
    ncsn_comm_env env;
    ncsn_comm_env_read(&env);
    if (o.nproc > 1 && !env.launched) {
        /* Refuse an indivisible batch here, once, before any rank exists: checked only in
         * the ranks, a rank that exits first can make the launcher stop rank 0 before rank 0
         * has printed the reason. */
        ncsn_config cfg;
        ncsn_config_load(&cfg, o.config_path);
        int B = cfg.training.batch_size;
        ncsn_config_free(&cfg);
        if (B % o.nproc != 0)
            ncsn_die("%s: training.batch_size %d is not a multiple of the %d data-parallel ranks: every rank takes "
                     "an equal slice of the global batch (use a rank count that divides %d)",
                     o.config_path, B, o.nproc, B);
        /* The launcher: K copies of this very command line (/proc/self/exe train ARGS...,
         * --nproc included: each child sees the rank variables, checks that --nproc agrees
         * with them and trains as one rank). */
        char **child_argv = ncsn_xmalloc((size_t)(argc + 3) * sizeof *child_argv);
        child_argv[0] = program_invocation_name;
        child_argv[1] = "train";
        for (int i = 0; i < argc; i++) child_argv[2 + i] = argv[i];
        child_argv[argc + 2] = NULL;
        int rc = ncsn_comm_spawn_local(o.nproc, argc + 2, child_argv);
        free(child_argv);
        return rc;
    }
    return ncsn_train(&o);
}

/* ncsn_die on rank 0; a quiet exit(1) on the others, which reach the same verdict. */
static void die_on_lead(int lead, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die_on_lead(int lead, const char *fmt, ...) {
    if (lead) {
        char msg[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        ncsn_die("%s", msg);
    }
    exit(1);
}

static const char *precision_name(ncsn_precision p) {
    return p == NCSN_PRECISION_FP32 ? "fp32" : p == NCSN_PRECISION_TF32 ? "tf32" : "bf16";
}

int ncsn_train(const ncsn_train_options *o) {
    train_run run;
    memset(&run, 0, sizeof run);
    train_run *r = &run;
    r->o = o;

    /* 1. Everything that can refuse the job, before any work: the config (unknown keys and
     *    bad values die in ncsn_config_load), the workdir's checkpoints, the checkpoint's
     *    architecture (names and shapes, checked by the checkpoint layer), the dataset's
     *    image size and channels (checked by ncsn_dataset_open). */
    ncsn_config_load(&r->cfg, o->config_path);
    const ncsn_config *cfg = &r->cfg;
    r->B = cfg->training.batch_size;
    NCSN_CHECKF(r->B >= 1, "%s: training.batch_size %d", o->config_path, r->B);
    r->total = o->steps > 0 ? o->steps : cfg->training.n_iters;
    NCSN_CHECKF(r->total >= 1 && r->total < 0xffffffffL, "%s: %ld training steps", o->config_path, r->total);
    r->keep_last = o->keep_last >= 0 ? o->keep_last : cfg->training.keep_last;
    r->log_freq = cfg->training.log_freq > 0 ? cfg->training.log_freq : 100;
    r->snapshot_freq = cfg->training.snapshot_freq; /* <= 0: only at the end */
    if (cfg->training.anneal_power != 2.0)
        ncsn_die("%s: training.anneal_power is %g; the engine implements the official value 2 only",
                 o->config_path, cfg->training.anneal_power);

    char resume_path[4096] = "";
    int64_t latest_step = 0;
    int have_ckpt = ncsn_checkpoint_find_latest(o->workdir, resume_path, sizeof resume_path, &latest_step);
    if (o->resume && !have_ckpt)
        ncsn_die("%s: --resume, but the workdir has no checkpoint_<step>.safetensors", o->workdir);
    if (!o->resume && have_ckpt)
        ncsn_die("%s: the workdir already has checkpoints (newest %s); pass --resume to continue, or use another "
                 "--workdir",
                 o->workdir, resume_path);
    make_dirs(o->workdir);
    snprintf(r->metrics_path, sizeof r->metrics_path, "%s/metrics.jsonl", o->workdir);

    /* Data parallelism: one rank of K (comm.h); K = 1 without launcher variables. Every
     * rank has passed the checks above before the rendezvous, so rank 0 cannot write a
     * checkpoint that another rank's "already has checkpoints" check would see. */
    ncsn_comm_env env;
    ncsn_comm_env_read(&env);
    /* Refusals that every rank reaches alike: checked before the rendezvous (no rank is left
     * waiting for a dead one), printed by rank 0 only (one message, not K). */
    if (o->nproc > 0 && o->nproc != env.world_size)
        die_on_lead(env.rank == 0,
                    "train: --nproc %d, but this process is one of %d ranks (%s): give --nproc only without a "
                    "launcher, or make them agree",
                    o->nproc, env.world_size, env.source);
    if (r->B % env.world_size != 0)
        die_on_lead(env.rank == 0,
                    "%s: training.batch_size %d is not a multiple of the %d data-parallel ranks: every rank takes an "
                    "equal slice of the global batch (use a rank count that divides %d)",
                    o->config_path, r->B, env.world_size, r->B);
    ncsn_comm_bind_local_gpu();
    r->be = ncsn_backend_create_from_name(o->device ? o->device : "auto");
    ncsn_precision precision = o->precision ? ncsn_precision_parse(o->precision, "--precision") : NCSN_PRECISION_FP32;
    if (env.rank == 0)
        ncsn_backend_set_precision(r->be, precision); /* prints the start-up line once */
    else
        r->be->precision = precision;
    const int on_cpu = r->be->kind == NCSN_DEVICE_CPU;
    r->comm = ncsn_comm_create(r->be);
    r->K = ncsn_comm_world_size(r->comm);
    r->rank = ncsn_comm_rank(r->comm);
    r->lead = r->rank == 0;
    NCSN_CHECKF(r->K == env.world_size && r->B % r->K == 0, "train: %d ranks, batch %d", r->K, r->B);
    r->B_local = r->B / r->K;
    if (r->K > 1) r->reduce_buf = alloc_floats(r->be, REDUCE_SLOTS, "reduction scratch");
    r->m = ncsn_model_create(r->be, cfg);
    ncsn_model_plan(r->m, r->B_local);
    r->seed = o->seed_given ? o->seed : NCSN_TRAIN_DEFAULT_SEED;
    if (o->resume) {
        r->t = ncsn_trainer_create(r->be, r->m, cfg, r->seed, r->B_local);
        ncsn_trainer_set_comm(r->t, r->comm);
        load_training_checkpoint(r, resume_path); /* sets step, seed, loader state, all tensors */
        if (o->seed_given && o->seed != r->seed)
            ncsn_die("%s was trained with seed %llu; --seed %llu would break the exact resume (omit --seed)",
                     resume_path, (unsigned long long)r->seed, (unsigned long long)o->seed);
        r->t->seed = r->seed;
        snprintf(r->last_good, sizeof r->last_good, "%s", resume_path);
        if (r->step >= r->total)
            ncsn_die("%s is at step %ld; nothing to do for --steps %ld (raise --steps)", resume_path, r->step, r->total);
    } else {
        ncsn_model_init(r->m, r->seed);
        r->t = ncsn_trainer_create(r->be, r->m, cfg, r->seed, r->B_local); /* EMA shadow = initial weights */
        ncsn_trainer_set_comm(r->t, r->comm);
    }
    broadcast_state(r);

    ncsn_dataset ds;
    const char *data_path = o->data_path ? o->data_path : ncsn_dataset_default_path(cfg->data.dataset);
    ncsn_dataset_open(&ds, &cfg->data, data_path, 1, r->seed);
    int C, H, W;
    ncsn_model_input_shape(r->m, &C, &H, &W);
    if (ds.C != C || ds.H != H || ds.W != W)
        ncsn_die("%s: examples are %d x %d x %d but the model takes %d x %d x %d", ds.path[0] ? ds.path : "data",
                 ds.C, ds.H, ds.W, C, H, W);
    if (ds.N < 1) ncsn_die("%s: the dataset is empty", ds.path);
    /* The test split for the test loss (the official runners' test_loader), when the data
     * has one distinct from the training split. */
    ncsn_dataset test_ds;
    memset(&test_ds, 0, sizeof test_ds);
    const char *test_off = NULL;
    r->test_freq = o->test_freq;
    if (r->test_freq > 0 && r->t->ssm) test_off = "training.algo ssm (the test loss is a DSM loss)";
    else if (r->test_freq > 0 && !ncsn_dataset_has_test_split(&cfg->data, data_path))
        test_off = "the data has no separate test split";
    if (test_off) r->test_freq = 0;
    if (r->test_freq > 0) {
        ncsn_dataset_open(&test_ds, &cfg->data, data_path, 0, r->seed);
        if (test_ds.C != C || test_ds.H != H || test_ds.W != W || test_ds.N < 1)
            ncsn_die("%s: the test split has %zu examples of %d x %d x %d; the model takes %d x %d x %d",
                     test_ds.path[0] ? test_ds.path : "data", test_ds.N, test_ds.C, test_ds.H, test_ds.W, C, H, W);
    }

    /* 2. Start-up lines: what runs, where, how; rank 0 only, the other ranks stay quiet. */
    const ncsn_param_table *table = ncsn_model_table(r->m);
    const float *sig = ncsn_model_sigmas_host(r->m);
    int L = ncsn_model_num_levels(r->m);
    if (r->lead) {
        fprintf(stderr, "ncsn train: config %s (%s layout), workdir %s\n", o->config_path, cfg->is_v1 ? "v1" : "v2",
                o->workdir);
        fprintf(stderr, "device: %s, precision %s%s\n", r->be->ops->name, precision_name(r->be->precision),
                on_cpu ? "" : (r->be->deterministic ? ", deterministic" : ", non-deterministic algorithms allowed"));
        fprintf(stderr, "model: %s, %zu parameters, %d levels (sigma %.6g .. %.6g)\n", ncsn_arch_name(cfg->model.arch),
                table->total, L, (double)sig[0], (double)sig[L - 1]);
        fprintf(stderr, "data: %s %s: %zu examples of %d x %d x %d; batch %d; dequantisation %s, flip %s, %s\n",
                ds.dataset, ds.path[0] ? ds.path : "(generated)", ds.N, ds.C, ds.H, ds.W, r->B,
                r->t->uniform_dequant ? "uniform" : (r->t->gaussian_dequant ? "gaussian" : "off"),
                r->t->flip ? "on" : "off",
                !r->t->images ? "points used as they are"
                              : (r->t->rescale ? "rescaled to [-1,1]" : (r->t->logit ? "logit transform" : "the model applies 2x-1")));
        fprintf(stderr,
                "training: %s, steps %ld -> %ld, Adam lr %g (beta1 %g, beta2 0.999, eps %g, weight decay %g, amsgrad %s)%s%s, "
                "EMA %s, log every %ld, checkpoint every %ld (keep %s), seed %llu\n",
                r->t->ssm ? "sliced score matching (finite differences)" : "denoising score matching", r->step, r->total,
                cfg->optim.lr, cfg->optim.beta1, cfg->optim.eps, cfg->optim.weight_decay, cfg->optim.amsgrad ? "on" : "off",
                cfg->training.warmup > 0 ? ", linear warm-up" : "", cfg->training.grad_clip > 0 ? ", grad clipping" : "",
                r->t->ema ? "on" : "off", r->log_freq, r->snapshot_freq, r->keep_last > 0 ? "last K" : "all",
                (unsigned long long)r->seed);
        if (r->test_freq > 0)
            fprintf(stderr, "test loss: every %ld steps, one batch of %d from the test split (%zu examples), %s\n",
                    r->test_freq, r->B, test_ds.N, r->t->ema ? "EMA weights" : "current weights");
        else
            fprintf(stderr, "test loss: off (%s)\n", test_off ? test_off : "--test-freq 0");
        if (o->resume)
            fprintf(stderr, "resumed from %s: step %ld, data epoch %llu position %llu\n", resume_path, r->step,
                    (unsigned long long)r->loader_state.epoch, (unsigned long long)r->loader_state.position);
        if (r->K > 1)
            fprintf(stderr, "data parallel: %d ranks (%s all-reduce), %d of the %d examples of every batch per rank\n",
                    r->K, ncsn_comm_kind(r->comm), r->B_local, r->B);
        if (o->resume) truncate_metrics(r->metrics_path, r->step);
    }

    /* 3. The loop. */
    ncsn_loader_options lo;
    memset(&lo, 0, sizeof lo);
    lo.batch_size = r->B;
    lo.seed = r->seed;
    lo.stream = 0;
    lo.shuffle = 1;
    lo.shard_index = r->rank; /* rows [rank * B/K, (rank+1) * B/K) of every global batch */
    lo.shard_count = r->K;
    /* Batches are prepared in the backend's staging memory (pinned on CUDA), so the upload
     * is a true asynchronous copy; a batch goes back to the loader once its upload is done
     * (ncsn_trainer_wait_upload). Three buffers: one uploading, one ready, one filling. */
    lo.depth = 3;
    lo.buffer_alloc = staging_alloc;
    lo.buffer_free = staging_free;
    lo.buffer_ctx = r->be;
    ncsn_loader *loader = ncsn_loader_create(&ds, &lo, r->loader_state);
    /* The test stream: loader stream 1 over the test split, one global batch per evaluation.
     * Evaluation k (0-based, after update (k + 1) * test_freq) takes stream positions
     * [kB, (k + 1)B), so a resumed run starts it from the step alone: no checkpoint state. */
    ncsn_loader *test_loader = NULL;
    float *test_losses = NULL;
    if (r->test_freq > 0) {
        ncsn_loader_options tlo = lo;
        tlo.stream = 1;
        tlo.depth = 2;
        uint64_t first = (uint64_t)(r->step / r->test_freq) * (uint64_t)r->B;
        ncsn_loader_state ts = {first / test_ds.N, first % test_ds.N};
        test_loader = ncsn_loader_create(&test_ds, &tlo, ts);
        test_losses = ncsn_xmalloc((size_t)r->B_local * sizeof(float));
    }

    loss_window w;
    memset(&w, 0, sizeof w);
    w.B = r->B_local; /* this rank's losses; reduce_window_stats combines the ranks' */
    w.rows_cap = (int)(r->log_freq < r->total - r->step ? r->log_freq : r->total - r->step);
    if (w.rows_cap < 1) w.rows_cap = 1;
    w.hist_host = ncsn_xmalloc((size_t)w.rows_cap * (size_t)w.B * sizeof(float));
    w.labels = ncsn_xmalloc((size_t)w.rows_cap * (size_t)w.B * sizeof(int32_t));
    w.valid = ncsn_xmalloc((size_t)w.rows_cap);
    if (!on_cpu && !r->t->ssm) w.hist_dev = alloc_floats(r->be, (size_t)w.rows_cap * (size_t)w.B, "loss history");
    window_reset(&w, r->step + 1);

    ncsn_progress progress;
    /* Only rank 0 reports progress; the others never touch the progress object. */
    if (r->lead) ncsn_progress_begin(&progress, "train", "steps", r->step, r->total, r->B);
    const long start_step = r->step;
    double t_begin = ncsn_now(), lr = 0.0;
    while (r->step < r->total) {
        ncsn_batch batch = ncsn_loader_acquire(loader);
        NCSN_CHECK(batch.n == r->B_local);
        lr = ncsn_trainer_step(r->t, batch.x, r->step); /* enqueues the upload and the step */
        /* On CUDA this returns once the GPU has reached this step's upload, i.e. finished the
         * previous step: the host stays one step ahead, and the loader refills the buffer
         * while this step computes. On the CPU the step is already done. */
        ncsn_trainer_wait_upload(r->t);
        ncsn_loader_release(loader, &batch);
        r->loader_state = batch.end;
        r->step++;

        int log_now = r->step % r->log_freq == 0 || r->step == r->total;
        int save_now = (r->snapshot_freq > 0 && r->step % r->snapshot_freq == 0) || r->step == r->total;
        if (w.rows == w.rows_cap) window_reset(&w, r->step); /* interval longer than the buffer: drop */
        window_record(&w, r->t, r->step, log_now || save_now, on_cpu);
        int bad_row, bad_n;
        if (window_first_nonfinite(&w, &bad_row, &bad_n)) {
            float v = w.hist_host[(size_t)bad_row * w.B + bad_n];
            int level = w.labels[(size_t)bad_row * w.B + bad_n];
            if (r->lead) ncsn_progress_end(&progress);
            /* Any rank may see it first (its slice holds the example): it reports the
             * example's position in the global batch, and the launcher stops the others. */
            fprintf(stderr,
                    "ncsn: step %ld: loss is %s (example %d of the batch, level %d, sigma %g; lr %g); last good "
                    "checkpoint: %s\n",
                    w.first_step + bad_row, isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf"), r->rank * r->B_local + bad_n,
                    level,
                    (double)sig[level], lr, r->last_good[0] ? r->last_good : "none (no checkpoint was written)");
            exit(1);
        }
        if (test_loader && r->step % r->test_freq == 0) {
            /* The official runners' test loss (spec §6.1): no gradient, EMA weights when on. */
            ncsn_batch tb = ncsn_loader_acquire(test_loader);
            NCSN_CHECK(tb.n == r->B_local);
            ncsn_trainer_test_loss(r->t, tb.x, r->step / r->test_freq - 1, test_losses);
            ncsn_loader_release(test_loader, &tb);
            double sum = 0.0;
            for (int n = 0; n < r->B_local; n++) sum += test_losses[n];
            r->test_loss = reduce_test_loss(r, sum, r->B_local); /* collective */
            r->test_step = r->step;
            if (r->lead && !log_now) {
                write_test_metrics(r);
                ncsn_progress_message(&progress, "step %ld: test loss %.5g", r->step, r->test_loss);
            }
        }
        if (log_now) {
            window_stats s = window_summarise(&w, L);
            reduce_window_stats(r, &s); /* collective: every rank logs at the same steps */
            double elapsed = ncsn_now() - t_begin;
            double rate = elapsed > 0 ? (double)(r->step - start_step) / elapsed : 0.0;
            if (r->lead) {
                write_metrics(r, &s, lr, elapsed, rate);
                if (r->test_step == r->step)
                    ncsn_progress_status(&progress, "loss %.5g  test %.5g", s.loss, r->test_loss);
                else
                    ncsn_progress_status(&progress, "loss %.5g", s.loss);
                ncsn_progress_log(&progress, r->step);
            }
            window_reset(&w, r->step + 1);
        } else if (r->lead) {
            ncsn_progress_update(&progress, r->step);
        }
        if (save_now) {
            check_ranks_agree(r); /* collective */
            if (r->lead) {
                save_training_checkpoint(r);
                ncsn_progress_message(&progress, "saved %s", r->last_good);
                snapshot_samples(r);
            }
            /* The others wait for the file: no rank leaves the job (done or failed) before
             * the checkpoint of this step is complete. */
            if (r->K > 1) ncsn_comm_barrier(r->comm);
        }
    }
    if (r->lead) {
        ncsn_progress_end(&progress);
        fprintf(stderr, "done: %ld steps in %.1f s; last checkpoint %s\n", r->step - start_step,
                ncsn_now() - t_begin, r->last_good);
    }

    ncsn_loader_destroy(loader);
    if (test_loader) ncsn_loader_destroy(test_loader);
    free(test_losses);
    ncsn_dataset_free(&test_ds);
    free(w.hist_host);
    free(w.labels);
    free(w.valid);
    if (w.hist_dev) ncsn_free(r->be, w.hist_dev);
    ncsn_dataset_free(&ds);
    ncsn_trainer_free(r->t);
    ncsn_model_free(r->m);
    if (r->reduce_buf) ncsn_free(r->be, r->reduce_buf);
    ncsn_comm_destroy(r->comm); /* collective */
    ncsn_backend_destroy(r->be);
    ncsn_config_free(&r->cfg);
    return 0;
}

/* ---- ncsn bench train ------------------------------------------------------------------- */

int ncsn_cmd_bench_train(int argc, char **argv) {
    const char *config_path = NULL, *device = "auto", *precision = NULL;
    long B = 0, steps = 0, warmup = 2;
    int run_torch = 1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--no-torch")) {
            run_torch = 0;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help") || i + 1 >= argc) {
            fprintf(a[1] == 'h' || !strcmp(a, "--help") ? stdout : stderr,
                    "usage: ncsn bench train --config F.yml --batch B [--device cpu|cuda|auto] [--precision P] [--steps K]\n"
                    "                        [--warmup W] [--no-torch]\n"
                    "Times the training step (the one `ncsn train` runs, on synthetic images) and prints steps/s\n"
                    "and images/s; on the CPU also the PyTorch peer (bench/torch_baseline.py --mode train) and\n"
                    "the ratio.\n");
            return !strcmp(a, "-h") || !strcmp(a, "--help") ? 0 : 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--config")) config_path = v;
        else if (!strcmp(a, "--batch")) B = ncsn_parse_long_flag(a, v, 1, 1 << 20);
        else if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--precision")) precision = v;
        else if (!strcmp(a, "--steps")) steps = ncsn_parse_long_flag(a, v, 1, 1 << 20);
        else if (!strcmp(a, "--warmup")) warmup = ncsn_parse_long_flag(a, v, 0, 1 << 20);
        else ncsn_die("bench train: unknown option '%s'", a);
    }
    if (!config_path) ncsn_die("bench train: --config is required");
    ncsn_config cfg;
    ncsn_config_load(&cfg, config_path);
    if (B <= 0) B = cfg.training.batch_size;
    cfg.training.batch_size = (int)B;

    ncsn_backend *be = ncsn_backend_create_from_name(device);
    ncsn_backend_set_precision(be, precision ? ncsn_precision_parse(precision, "--precision") : NCSN_PRECISION_FP32);
    const int on_cpu = be->kind == NCSN_DEVICE_CPU;
    if (steps <= 0) steps = on_cpu ? 5 : 50;
    ncsn_model *m = ncsn_model_create(be, &cfg);
    ncsn_model_plan(m, (int)B);
    ncsn_model_init(m, NCSN_TRAIN_DEFAULT_SEED);
    ncsn_trainer *t = ncsn_trainer_create(be, m, &cfg, NCSN_TRAIN_DEFAULT_SEED, (int)B);
    /* Synthetic images: k / 255 with k uniform, as a dataset would give. */
    size_t BD = (size_t)B * ncsn_model_input_size(m);
    float *x = ncsn_xmalloc(BD * sizeof(float)), *batch = ncsn_xmalloc(BD * sizeof(float));
    for (size_t i = 0; i < BD; i++) x[i] = (float)(ncsn_rng_u32(7, NCSN_RNG_TOY, 0, 0, i) & 255u) / 255.0f;

    fprintf(stderr, "bench train: %s (%s, %zu parameters), batch %ld, %s on %s, %ld warm-up + %ld timed steps\n",
            config_path, ncsn_arch_name(cfg.model.arch), ncsn_model_table(m)->total, B,
            t->ssm ? "SSM" : "DSM", be->ops->name, warmup, steps);
    double t0 = 0.0;
    for (long s = 0; s < warmup + steps; s++) {
        if (s == warmup) {
            ncsn_synchronize(be);
            t0 = ncsn_now();
        }
        memcpy(batch, x, BD * sizeof(float)); /* the step flips its input in place */
        ncsn_trainer_step(t, batch, s);
    }
    ncsn_synchronize(be);
    double seconds = ncsn_now() - t0;
    double steps_per_s = (double)steps / seconds, images_per_s = steps_per_s * (double)B;
    printf("ncsn   train step %8.3f steps/s  %9.2f images/s  (%s, batch %ld, %.1f ms/step)\n", steps_per_s,
           images_per_s, be->ops->name, B, 1e3 * seconds / (double)steps);
    if (on_cpu && run_torch) {
        char line[8192];
        double torch_steps = 0.0, torch_images = 0.0;
        if (ncsn_run_torch_baseline("train", config_path, (int)B, NULL, line, sizeof line) &&
            ncsn_json_number(line, "images_per_s", &torch_images) && ncsn_json_number(line, "steps_per_s", &torch_steps) &&
            torch_images > 0) {
            printf("torch  train step %8.3f steps/s  %9.2f images/s  (bench/torch_baseline.py, same machine)\n",
                   torch_steps, torch_images);
            printf("ratio  ncsn / torch = %.2fx\n", images_per_s / torch_images);
        }
    }
    free(x);
    free(batch);
    ncsn_trainer_free(t);
    ncsn_model_free(m);
    ncsn_backend_destroy(be);
    ncsn_config_free(&cfg);
    return 0;
}
