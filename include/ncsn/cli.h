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

#endif
