/* cli.h: the subcommands of the `ncsn` binary. Each takes the arguments after its name
 * and returns the process exit status. host/main.c dispatches. */
#ifndef NCSN_CLI_H
#define NCSN_CLI_H

int ncsn_cmd_info(int argc, char **argv);          /* host/cmd_model.c */
int ncsn_cmd_score(int argc, char **argv);         /* host/cmd_model.c */
int ncsn_cmd_bench_model(int argc, char **argv);   /* host/cmd_model.c */
int ncsn_cmd_train(int argc, char **argv);         /* host/train.c */
int ncsn_cmd_bench_train(int argc, char **argv);   /* host/train.c */
int ncsn_cmd_sigmas(int argc, char **argv);        /* host/sigmas.c */
int ncsn_cmd_sample(int argc, char **argv);        /* host/sample.c */
int ncsn_cmd_bench_sampler(int argc, char **argv); /* host/sample.c */


/* Shared by the commands (host/cmd_model.c). */
#include <stddef.h>
#include <stdint.h>
#include "ncsn/backend.h"
#include "ncsn/config.h"
#include "ncsn/model.h"
/* Command-line values: a decimal integer in [lo, hi]; a finite number, > 0 when `positive`.
 * Anything else is a one-line fatal error naming the flag and the text. */
long ncsn_parse_long_flag(const char *flag, const char *text, long lo, long hi);
double ncsn_parse_double_flag(const char *flag, const char *text, int positive);

/* What ncsn_model_from_checkpoint loaded. */
typedef struct {
    long long step;       /* training steps completed when the checkpoint was written */
    int used_ema;         /* the weights are the EMA shadow */
    uint32_t weights_crc; /* CRC-32 of the loaded float32 weights (sample manifests) */
} ncsn_loaded_model_info;

/* Builds the network a checkpoint describes (its stored config, or config_path when
 * non-NULL) on be and loads its weights: ema = 1 the EMA copy (an error when absent),
 * 0 the parameters, -1 the EMA copy when stored, else the parameters. A stored sigmas
 * buffer must equal the config's schedule (1e-6 relative), else it is an error naming the
 * level: the levels a network was trained on are the ones it is evaluated at. cfg is
 * filled; info may be NULL. */
ncsn_model *ncsn_model_from_checkpoint(ncsn_backend *be, const char *ckpt_path, const char *config_path, int ema,
                                       ncsn_config *cfg, ncsn_loaded_model_info *info);
/* Runs `/usr/bin/python3 bench/torch_baseline.py --mode MODE --config F --batch B [EXTRA]
 * --json` (the PyTorch peer of the benches; EXTRA may be NULL) and returns 1 with its JSON
 * line in `line`, or 0 with a one-line note on stderr when it cannot run (no PyTorch, not
 * run from the repository root). */
int ncsn_run_torch_baseline(const char *mode, const char *config, int batch, const char *extra, char *line,
                            size_t linelen);
/* The number after "key": in that JSON line; 0 when absent. */
int ncsn_json_number(const char *json, const char *key, double *out);

#endif
