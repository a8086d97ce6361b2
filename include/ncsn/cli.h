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
#include "ncsn/backend.h"
#include "ncsn/config.h"
#include "ncsn/model.h"
/* Builds the network a checkpoint describes (its stored config, or config_path when
 * non-NULL) on be and loads its weights (the EMA copy when use_ema and present); the
 * stored sigmas buffer, when present, replaces the config's schedule. cfg is filled. */
ncsn_model *ncsn_model_from_checkpoint(ncsn_backend *be, const char *ckpt_path, const char *config_path,
                                       int use_ema, ncsn_config *cfg);
/* Runs `/usr/bin/python3 bench/torch_baseline.py --mode MODE --config F --batch B --json`
 * and returns 1 with its JSON line in `line`, or 0 (with a message) when it cannot run. */
int ncsn_run_torch_baseline(const char *mode, const char *config, int batch, char *line, size_t linelen);

#endif
