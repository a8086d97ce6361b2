/* sample.h: the samplers of NCSN / NCSNv2 / score_sde over any score function.
 *
 * What it is: annealed Langevin dynamics exactly as the official code runs it
 * (ncsnv2:models/__init__.py anneal_Langevin_dynamics, spec §5.2), plain Langevin at the
 * smallest sigma (the seeds' baseline), score_sde's predictor-corrector sampler
 * (ReverseDiffusionPredictor + LangevinCorrector, spec §5.3), v2 inpainting and v2
 * interpolation. The score is a callback, so the same chain runs on a network
 * (ncsn_model_forward) or on an analytic score (tests).
 * What it is not: the output files, resume and sharding: that is `ncsn sample`
 * (host/sample.c), built on this.
 *
 * Conventions
 * - x is N x C x H x W float32 in BACKEND memory (toy points are N x 2 x 1 x 1), in the
 *   space the network reads (the official data_transform space: [0,1], or [-1,1] when
 *   data.rescaled). The chain itself is never clamped; ncsn_sampler_output_host clamps.
 * - sigmas are float32, descending (sigma_1 > ... > sigma_L); level i uses label i.
 * - Step size (code convention, spec §5.2): a_i = step_lr * (sigma_i / sigma_L)^2, and
 *   x <- x + a_i s(x, i) + sqrt(2 a_i) z.
 * - Per-sample determinism: every random draw of sample k is keyed by its GLOBAL index k
 *   (kernels/rng_math.h): init by (seed, NCSN_RNG_SAMPLER_INIT, k, 0), Langevin noise by
 *   (seed, NCSN_RNG_LANGEVIN, k, global step), inpainting re-noise by
 *   (seed, NCSN_RNG_INPAINT, k, global step). With a score function that treats examples
 *   independently (the networks do), sample k is the same whatever the batch size or the
 *   batch it lands in: bit-identical on the CPU. Exception, by construction of score_sde:
 *   the PC corrector's step size is ONE scalar per batch from batch-mean norms, so PC
 *   samples depend on which samples share their batch (documented, tested as such).
 * - Device residency: a chain enqueues backend ops only, so on CUDA nothing synchronises
 *   until the caller copies x back (every sampler). ALD
 *   and plain Langevin keep their whole schedule (each level's label, a_i and sqrt(2 a_i))
 *   and a step counter in backend memory, so one step is captured once as a CUDA graph
 *   and replayed for all L*T steps (NCSN_CUDA_GRAPHS=0 runs the ops directly instead; the
 *   results are identical). Inpainting and interpolation pass per-level scalars by value.
 *   PC computes its corrector step size from the batch norms on the backend too.
 */
#ifndef NCSN_SAMPLE_H
#define NCSN_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

#include "ncsn/backend.h"
#include "ncsn/config.h"
#include "ncsn/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* score[n] = s(x[n], labels[n]) for n < N; all pointers in backend memory. Must not keep
 * pointers past the call and must treat examples independently for per-sample determinism. */
typedef void (*ncsn_score_fn)(void *ctx, float *score, const float *x, const int32_t *labels, int N);

typedef enum {
    NCSN_SAMPLER_ALD = 0,      /* annealed Langevin dynamics (v1/v2), + Tweedie denoise if asked */
    NCSN_SAMPLER_LANGEVIN = 1, /* plain Langevin at sigma_L only: L*T steps of a = step_lr */
    NCSN_SAMPLER_PC = 2,       /* score_sde: LangevinCorrector(snr) then ReverseDiffusionPredictor */
    NCSN_SAMPLER_INPAINT = 3,  /* v2 inpainting: left half re-drawn from the reference every step */
    NCSN_SAMPLER_INTERP = 4    /* v2 interpolation: z = cos(phi_j) z_p + sin(phi_j) z_q */
} ncsn_sampler_kind;

typedef enum {
    NCSN_INIT_UNIFORM = 0,  /* U[init_lo, init_hi) per element; official default U[0,1) */
    NCSN_INIT_GAUSSIAN = 1, /* N(0, sigma_1^2): score_sde's VE prior */
    NCSN_INIT_DATA = 2      /* sampling.data_init: reference + sigma_1 N(0, I) */
} ncsn_init_kind;

typedef struct {
    ncsn_sampler_kind kind;
    ncsn_init_kind init;
    float init_lo, init_hi; /* uniform init box (default 0, 1) */
    double step_lr;         /* epsilon, code convention */
    int n_steps_each;       /* T: Langevin (corrector) steps per level */
    int denoise;            /* ALD: final x += sigma_L^2 s(x, L-1); PC: return x_mean (noise_removal) */
    double snr;             /* PC corrector signal-to-noise ratio */
    int n_interpolations;   /* INTERP: samples per row (sample k is row k / n, position k % n) */
    int per_reference;      /* INPAINT / data init: sample k uses reference (k / per_reference) % M */
    uint64_t seed;
} ncsn_sampler_options;

/* Official v2 defaults (step_lr 8e-6 ... are replaced by the config's sampling section in
 * ncsn_sampler_options_from_config). */
void ncsn_sampler_options_default(ncsn_sampler_options *o);
/* step_lr, n_steps_each, denoise, data_init, inpainting / interpolation and
 * n_interpolations from cfg->sampling (for v1 configs config.c fills that section with
 * what v1's AnnealRunner.test hard-codes: step_lr 2e-5, T = 100, no denoising). */
void ncsn_sampler_options_from_config(ncsn_sampler_options *o, const ncsn_config *cfg);
const char *ncsn_sampler_kind_name(ncsn_sampler_kind k);
/* Parses "ald" | "langevin" | "pc" | "inpaint" | "interp"; returns -1 if unknown. */
int ncsn_sampler_kind_parse(const char *s);

/* Network evaluations per sample of one full chain (ALD: L*T + denoise; PC: L*(T+1)). */
long ncsn_sampler_nfe(const ncsn_sampler_options *o, int L);

/* The step size of level i: a_i = step_lr * (sigma_i / sigma_L)^2 as the official code
 * computes it: the ratio and its square in float32 (numpy float32 scalars), times step_lr
 * in float64, rounded to float32 where it multiplies the float32 tensors. */
float ncsn_langevin_step_size(double step_lr, const float *sigmas, int L, int level);

typedef struct ncsn_sampler ncsn_sampler;

/* A sampler for batches of up to max_batch examples of shape C x H x W, over the score
 * function (score, ctx) and the L float32 sigmas (host memory, copied). Allocates every
 * buffer it needs here: a chain allocates nothing. */
ncsn_sampler *ncsn_sampler_create(ncsn_backend *be, ncsn_score_fn score, void *ctx, const float *sigmas, int L,
                                  int C, int H, int W, int max_batch, const ncsn_sampler_options *o);
void ncsn_sampler_free(ncsn_sampler *s);

/* Reference images for NCSN_INIT_DATA and NCSN_SAMPLER_INPAINT: M examples, float32 CHW
 * in the network's input space, host memory (copied to the backend). */
void ncsn_sampler_set_references(ncsn_sampler *s, const float *refs_host, int M);

/* The whole chain for samples first_index .. first_index + N - 1 (N <= max_batch): init,
 * every level, the final step. x (backend memory) receives the unclamped chain state. */
void ncsn_sampler_run(ncsn_sampler *s, float *x, uint32_t first_index, int N);

/* The pieces of ncsn_sampler_run, for benchmarks and step-by-step drivers:
 * init; levels [level_begin, level_end); the final step (denoise / PC noise removal is
 * part of the last level, so this is the ALD Tweedie step only). */
void ncsn_sampler_init_batch(ncsn_sampler *s, float *x, uint32_t first_index, int N);
void ncsn_sampler_run_levels(ncsn_sampler *s, float *x, uint32_t first_index, int N, int level_begin,
                             int level_end);
void ncsn_sampler_finish(ncsn_sampler *s, float *x, int N);

/* The official inverse_data_transform on host data: sigmoid if logit_transform, (x+1)/2 if
 * rescaled, then clamp to [0,1] (skipped for toy points, which are not images). */
void ncsn_sampler_output_host(float *x, size_t count, const ncsn_config *cfg);

/* Convenience for the trainer's snapshot grids: ALD with the config's sampling section on
 * model m (built on backend be and planned for a batch of at least N), samples 0..N-1 of
 * `seed`; writes N*C*H*W floats to out_host, already through ncsn_sampler_output_host. */
void ncsn_sample_model_host(ncsn_backend *be, ncsn_model *m, const ncsn_config *cfg, float *out_host, int N,
                            uint64_t seed);

/* The ncsn_score_fn of a network: ctx is an ncsn_model * planned for the batch. */
void ncsn_model_score_fn(void *model, float *score, const float *x, const int32_t *labels, int N);

/* ---- toy_plot.c: scatter plots of 2-D samples (the seeds' Fig. 2/3) ---- */
typedef struct {
    const float *xy;   /* N points, interleaved (x0, y0, x1, y1, ...), host memory */
    int N;
    const char *title; /* letters (drawn upper-case), digits and " .,-=/:()+%"; NULL = none */
} ncsn_toy_panel;

/* Renders panels side by side, each a square scatter plot of the box [lo, hi]^2 with
 * axes through 0 and ticks at every integer multiple of `tick`, points as small
 * alpha-blended dots (density shows), into an 8-bit RGB image written with ncsn_png_write. */
void ncsn_toy_plot_png(const char *path, const ncsn_toy_panel *panels, int n_panels, float lo, float hi,
                       float tick, int panel_px);

#ifdef __cplusplus
}
#endif

#endif /* NCSN_SAMPLE_H */
