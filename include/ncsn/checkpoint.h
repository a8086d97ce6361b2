/* checkpoint.h: the engine's training checkpoint, a .safetensors file (safetensors.h).
 *
 * What it is: saving and loading everything a run needs to resume bit-exactly, on HOST
 * float arrays laid out as one ncsn_param_table describes them (the trainer copies to
 * and from its backend; this module never touches a backend). What it is not: a
 * converter of the official .pth files (tools/ does that, into this format).
 *
 * Tensors (all F32, PyTorch shapes):
 *   <key>              model parameters, key = the official state-dict key (table order)
 *   sigmas [L]         the noise levels (v2 architectures, like the official buffer)
 *   adam.m.<key>       Adam first moments (exp_avg)
 *   adam.v.<key>       Adam second moments (exp_avg_sq)
 *   adam.vmax.<key>    AMSGrad running max of v (only with optim.amsgrad)
 *   ema.<key>          EMA shadow of the parameters (only with model.ema)
 * Metadata (strings): format = "ncsn-checkpoint-1", arch (ncsn_arch_name), config (the
 * YAML text), step, and the run state seed, epoch, position, test_epoch, test_position
 * (decimal). A file with only the model tensors (+ config), e.g. a converted official
 * checkpoint, is a valid checkpoint for scoring and sampling.
 *
 * Loading checks EVERY expected name, shape and dtype against the table and reports each
 * problem on its own line ("ncsn: FILE: missing tensor 'x' [128, 3, 3, 3]", "... tensor
 * 'x' has shape [..], the model expects [..]", "... unexpected tensor 'y'"), then exits(1)
 * with a summary line. A family of tensors (adam.m, adam.v, adam.vmax, ema) is either
 * complete or absent; absent families are fine unless the caller requires them.
 *
 * Files are named checkpoint_<step>.safetensors inside a run directory and written
 * atomically, so a crash during a save leaves the previous checkpoint intact.
 */
#ifndef NCSN_CHECKPOINT_H
#define NCSN_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "ncsn/model.h"
#include "ncsn/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NCSN_CHECKPOINT_FORMAT "ncsn-checkpoint-1"

/* Where the run's randomness and data stream stand after the saved step. The engine RNG
 * is counter based (rng_math.h), so the seed and the step number are its whole state; the
 * loaders' (data.h) state is the (epoch, position) pair of their example streams. */
typedef struct {
    uint64_t seed;          /* run seed */
    uint64_t epoch;         /* training loader: epoch of the next example */
    uint64_t position;      /* training loader: stream position inside it */
    uint64_t test_epoch;    /* test-loss loader, same meaning */
    uint64_t test_position;
} ncsn_run_state;

/* The arrays of a checkpoint, each table->total floats in table order (sigmas: L).
 * Saving: NULL pointers are not written. Loading: see ncsn_checkpoint_load. */
typedef struct {
    float *params;
    float *adam_m, *adam_v, *adam_vmax;
    float *ema;
    float *sigmas;
    int num_levels; /* L: length of sigmas; 0 for architectures without the buffer (v1, toy) */
    int64_t step;
    ncsn_run_state state;
    /* Set by ncsn_checkpoint_load: which families the file held. */
    int has_optimizer, has_amsgrad, has_ema, has_sigmas;
} ncsn_checkpoint_data;

/* Writes PATH atomically. d->params is required; config_text and arch_name are stored as
 * metadata (config_text may be NULL). */
void ncsn_checkpoint_save(const char *path, const ncsn_param_table *table, const ncsn_checkpoint_data *d,
                          const char *config_text, const char *arch_name);

/* An opened checkpoint: the file read and its format checked, before the model exists
 * (the sampler builds the model from the config stored inside). */
typedef struct {
    char path[1024];
    ncsn_safetensors st;
} ncsn_checkpoint_file;

void ncsn_checkpoint_open(ncsn_checkpoint_file *f, const char *path);
/* The stored YAML config, or NULL when the file has none. Owned by f. */
const char *ncsn_checkpoint_config_text(const ncsn_checkpoint_file *f);
/* The stored architecture name, or NULL. */
const char *ncsn_checkpoint_arch(const ncsn_checkpoint_file *f);
void ncsn_checkpoint_close(ncsn_checkpoint_file *f);

/* What the caller needs from the file. */
enum {
    NCSN_CKPT_MODEL = 0,          /* parameters only: sampling, scoring */
    NCSN_CKPT_NEED_OPTIMIZER = 1, /* adam.m and adam.v (and adam.vmax when d->adam_vmax) must be there */
    NCSN_CKPT_NEED_EMA = 2        /* ema.* must be there */
};

/* Copies the tensors into the non-NULL arrays of d after checking every name, shape and
 * dtype against `table` (and sigmas against d->num_levels). Families present in the file
 * are copied when their array is non-NULL and skipped otherwise; missing families are an
 * error only when `need` asks for them. Sets d->step (0 when absent), d->state (zeros
 * when absent) and the has_* flags. Any problem: one line each, then exit(1). */
void ncsn_checkpoint_load(const ncsn_checkpoint_file *f, const ncsn_param_table *table, ncsn_checkpoint_data *d,
                          int need);

/* "DIR/checkpoint_<step>.safetensors" into out (dies if it does not fit). */
void ncsn_checkpoint_path(char *out, size_t outlen, const char *dir, int64_t step);
/* The checkpoint with the largest step in dir (files checkpoint_<digits>.safetensors;
 * anything else, *.tmp included, is ignored). Returns 1 and fills out (and *step if
 * non-NULL), or 0 when dir has none (or does not exist). */
int ncsn_checkpoint_find_latest(const char *dir, char *out, size_t outlen, int64_t *step);
/* Deletes all but the keep_last newest checkpoints in dir (keep_last <= 0: keeps all).
 * Returns the number deleted. */
int ncsn_checkpoint_prune(const char *dir, int keep_last);

#ifdef __cplusplus
}
#endif

#endif /* NCSN_CHECKPOINT_H */
