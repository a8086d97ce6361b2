/* train.h: `ncsn train`, the training loop of the official runners, and its pieces.
 *
 * What it is: the loop of ncsn AnnealRunner.train / ncsnv2 NCSNRunner.train (spec §4, §6):
 * per step, draw a batch -> preprocess -> perturb -> loss -> zero_grad -> backward ->
 * (clip) -> Adam -> EMA; checkpoints every training.snapshot_freq steps and at the end;
 * exact resume. The step runs on the backend: parameters, gradients, Adam moments, EMA,
 * activations and the noise stay in backend memory. The sliced-score-matching loss
 * (training.algo: ssm) is here too (host/ssm.c).
 * What it is not: the networks (model.h), the data readers (data.h), the file format of
 * checkpoints (checkpoint.h) or the sampler (sample.h).
 *
 * Determinism: every random draw of a step is a pure function of the seed, the step index
 * and the example's position, keyed through kernels/rng_math.h. With s = the number of
 * completed updates before this one (0-based step index) and B the batch size, example n of
 * the batch has the GLOBAL example index g = s*B + n, and:
 *   level index   labels[n] = (u32(seed, NCSN_RNG_LABELS, n, s, 0) * L) >> 32
 *   random flip   flip iff u32(seed, NCSN_RNG_FLIP, g, s, 0) has its top bit set (p = 1/2)
 *   dequantise    u = uniform(seed, NCSN_RNG_DEQUANT, g, s, i)
 *   Gaussian deq. z = normal(seed, NCSN_RNG_DEQUANT, g | 2^31, s, i)   (own stream)
 *   DSM noise     z = normal(seed, NCSN_RNG_NOISE, g, s, i)
 *   SSM slices    v = normal(seed, NCSN_RNG_SLICE, g, s, i)
 * and the data order is the loader's (epoch, position) stream (data.h). A checkpoint holds
 * the step, the seed and the loader state; nothing else carries randomness, so N steps +
 * resume + N steps equals 2N steps bit for bit on one device.
 *
 * Data parallelism (comm.h): K processes (ranks) train one model on one global batch.
 *   ncsn train --config F.yml --workdir DIR --nproc K   K ranks on this machine
 *   mpirun -np K ncsn train ...  /  srun -n K ncsn train ...   (ranks from the launcher's
 *       variables; set NCSN_RENDEZVOUS=file:PATH on a shared filesystem or tcp:HOST:PORT,
 *       see comm.h; --nproc, when also given, must equal the launcher's world size)
 * B = training.batch_size stays the GLOBAL batch and must be a multiple of K. Rank r takes
 * rows [r*B/K, (r+1)*B/K) of every global batch (the loader's shard options; every rank
 * walks the same global (epoch, position) stream), and every draw above is keyed by the
 * example's GLOBAL position n = r*B/K + i, so each example sees exactly the noise, level,
 * flip and dequantisation it would see in a one-process run. Each rank's loss is the mean
 * over its slice; the gradient buffer is all-reduced to its mean over ranks in buckets
 * started during the backward (grad_sync.h), which is the gradient of the global-batch mean loss (up to fp32 summation
 * order). Clipping (on the reduced gradient), Adam and EMA then run identically on every
 * rank, so parameters stay identical: rank 0's parameters and optimiser state are broadcast
 * at start (fresh or resumed), and at every checkpoint the ranks compare a parameter
 * checksum and stop if one has drifted. Only rank 0 prints, writes metrics.jsonl (interval
 * losses reduced over ranks), checkpoints and snapshot samples; the others wait at a
 * barrier after each checkpoint. A checkpoint holds only global state (step, seed, loader
 * stream), so a run resumes on any K that divides B. tests/test_train_dp.c checks --nproc 1
 * against --nproc 2 and a --nproc 2 -> --nproc 1 resume on the CPU (shm all-reduce).
 *
 * Host synchronisation on CUDA: none inside a step (clipping reads the norm on the device).
 * The host stays one step ahead: batches come from the loader in pinned staging memory,
 * and a batch returns to the loader once the fence after its upload is reached. Losses
 * are read back at log points only (every step on the CPU, where a read costs nothing, so
 * a non-finite loss is caught at the exact step there).
 *
 * Test loss (the official runners' every-100-steps evaluation): every test_freq updates,
 * the DSM loss of one global batch of the dataset's test split (stream 1 of the loader,
 * evaluation k taking stream positions [kB, (k+1)B)), with the test draws
 * (NCSN_RNG_TEST_LABELS / _NOISE / _DEQUANT keyed by k, so the training streams are
 * untouched and resume stays exact), no flip, EMA weights when model.ema (v2's
 * ema_copy). Logged as "test_loss" in metrics.jsonl. Off when the data has no separate
 * test split (a single file, an image folder, an .npy array) and for SSM.
 */
#ifndef NCSN_TRAIN_H
#define NCSN_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "ncsn/backend.h"
#include "ncsn/comm.h"
#include "ncsn/config.h"
#include "ncsn/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The official runners seed torch/numpy with 1234; so does `ncsn train` by default. */
#define NCSN_TRAIN_DEFAULT_SEED 1234u
/* The official runners evaluate the test loss every 100 steps (hard-coded there). */
#define NCSN_TRAIN_TEST_FREQ 100

typedef struct {
    const char *config_path; /* required (also with --resume: it may change lr, log_freq, ...) */
    const char *workdir;     /* required; created if missing */
    const char *data_path;   /* NULL: the dataset's default location */
    const char *device;      /* "cpu" | "cuda" | "auto" (NULL: auto) */
    const char *precision;   /* "fp32" (default) | "tf32" | "bf16": convolutions only, printed at start-up */
    long steps;              /* train until this many updates are done; 0: training.n_iters */
    uint64_t seed;
    int seed_given;
    int resume;              /* continue from the newest checkpoint in workdir */
    int keep_last;           /* checkpoints kept; < 0: training.keep_last (0 = all) */
    int nproc;               /* --nproc: 0 = not given; with launcher variables it must equal the
                                world size (ncsn_cmd_train spawns the ranks when there are none) */
    long test_freq;          /* test loss every this many steps; 0: off (ncsn_cmd_train: 100) */
} ncsn_train_options;

/* Runs `ncsn train`. Returns the process exit status (fatal input errors exit directly). */
int ncsn_train(const ncsn_train_options *o);

/* ---- one training step, shared by `ncsn train` and `ncsn bench train` ----------------- */

typedef struct ncsn_trainer ncsn_trainer;

/* Optimiser state (Adam moments, amsgrad max, EMA shadow) and step buffers for model m,
 * which must be planned for batch B. The EMA shadow starts as a copy of the current
 * parameters (ncsnv2 EMAHelper.register). Refuses anneal_power != 2 and unknown algos. */
ncsn_trainer *ncsn_trainer_create(ncsn_backend *be, ncsn_model *m, const ncsn_config *cfg, uint64_t seed, int B);
void ncsn_trainer_free(ncsn_trainer *t);
/* Makes t one rank of a data-parallel step: t's B (from create) is the local slice, the
 * global batch is global_batch = B * ncsn_comm_world_size(comm), this rank's rows start at
 * global position ncsn_comm_rank(comm) * B, and each step all-reduces the gradient buffer
 * to its mean over ranks before clipping and Adam. Without this call (or with a one-process
 * comm) the trainer is the single-process one. */
void ncsn_trainer_set_comm(ncsn_trainer *t, ncsn_comm *comm);

/* One update. x_host: the batch, B x C x H x W floats in [0, 1] (k / 255), host memory
 * (ideally ncsn_host_alloc staging memory: then the upload is asynchronous on CUDA);
 * random flips are applied to it in place. step: updates completed before this one.
 * Enqueues backend work only: no host synchronisation (clipping included); returns the
 * learning rate used. */
double ncsn_trainer_step(ncsn_trainer *t, float *x_host, long step);
/* Blocks until the last step's upload of x_host has completed, so that the caller may
 * rewrite or recycle x_host (immediately on the CPU). */
void ncsn_trainer_wait_upload(ncsn_trainer *t);

/* Swaps the EMA shadow into the model's parameters (on = 1; the parameters are kept aside)
 * and back (on = 0). model.ema must be on. */
void ncsn_trainer_use_ema_weights(ncsn_trainer *t, int on);
/* The test loss of one batch (x_host as for ncsn_trainer_step, not flipped): the DSM loss
 * with levels, dequantisation and noise from the test streams keyed by eval_index, under
 * the EMA weights when model.ema; no gradient. Writes the B local per-example losses to
 * loss_host (synchronises). Not for training.algo ssm. */
void ncsn_trainer_test_loss(ncsn_trainer *t, float *x_host, long eval_index, float *loss_host);
/* Reads the per-example losses of the last step (B local floats; synchronises) and the level
 * indices they were drawn at. Either pointer may be NULL. */
void ncsn_trainer_read_loss(ncsn_trainer *t, float *loss_host, int32_t *labels_host);

/* The trainer's backend buffers (table.total floats each; vmax NULL unless amsgrad, ema
 * NULL unless model.ema), for checkpoints. */
float *ncsn_trainer_adam_m(ncsn_trainer *t);
float *ncsn_trainer_adam_v(ncsn_trainer *t);
float *ncsn_trainer_adam_vmax(ncsn_trainer *t);
float *ncsn_trainer_ema(ncsn_trainer *t);
/* The last step's perturbed batch x~ = preprocess(x) + sigma z (backend memory, B x C x H x W)
 * and its gradient norm before clipping (NAN unless training.grad_clip > 0; reads it back,
 * so it synchronises: log points and tests). */
const float *ncsn_trainer_perturbed(const ncsn_trainer *t);
double ncsn_trainer_grad_norm(const ncsn_trainer *t);
/* The learning rate of update number step (0-based): optim.lr, times the linear
 * warm-up factor min(step / warmup, 1) when training.warmup > 0 (score_sde's
 * optimization_manager, where the first update therefore has lr 0). */
double ncsn_trainer_lr(const ncsn_config *cfg, long step);
/* Level index of example n at step s (the formula above), for tests and tools. */
int32_t ncsn_train_label(uint64_t seed, long step, int n, int L);

/* ---- sliced score matching (host/ssm.c) -------------------------------------------------
 * The official anneal_sliced_score_estimation_vr (spec §4.2) needs v^T (d s / d x~) v, which
 * it gets by double backprop. The engine has hand-written first-order backward passes only,
 * so it uses the central finite difference of Pang et al. (NeurIPS 2020, "Efficient
 * learning of generative models via finite-difference score matching"):
 *     v^T (d s / d x~) v  ~=  v . (s(x~ + h v) - s(x~ - h v)) / (2h),   error O(h^2),
 * and the per-example loss sigma^2 (0.5 |s(x~)|^2 + that), averaged over the batch
 * (n_particles 1, v ~ N(0, I)). Its parameter gradient is exact for the finite-difference
 * loss: three forward/backward pairs run one after another, each backward accumulating
 * into the parameter gradients (ds0 = sigma^2 s0 / N; ds+- = +-sigma^2 v / (2hN)).
 * h is per level: h = NCSN_SSM_FD_REL * sigma / sqrt(D), so the step h|v| ~ NCSN_SSM_FD_REL
 * sigma is a fixed fraction of the scale on which the perturbed density varies. */
#define NCSN_SSM_FD_REL 0.01

typedef struct ncsn_ssm ncsn_ssm;

/* Buffers for batches of up to max_batch on model m (created on be, planned for at least
 * max_batch). */
ncsn_ssm *ncsn_ssm_create(ncsn_backend *be, ncsn_model *m, int max_batch);
void ncsn_ssm_free(ncsn_ssm *s);
/* Accumulates the gradient of the batch-mean finite-difference SSM loss into the model's
 * gradient buffer. x_noisy (N x D), v (N x D, the projections) and labels are in backend
 * memory; x_noisy = x + sigma z is the perturbed batch. Three forward/backward pairs. */
void ncsn_ssm_loss_backward(ncsn_ssm *s, const float *x_noisy, const float *v, const int32_t *labels, int N);
/* Per-example losses of the last call, computed on the host in float64 from the three
 * scores (synchronises; log points only). labels_host: the N level indices. */
void ncsn_ssm_read_loss(ncsn_ssm *s, float *loss_host, const int32_t *labels_host, int N);
/* The finite-difference step of level l. */
float ncsn_ssm_step(const ncsn_ssm *s, int level);

#ifdef __cplusplus
}
#endif

#endif /* NCSN_TRAIN_H */
