/* main.c: the `ncsn` command line. Each subcommand lives in its own file (cli.h). */
#include <stdio.h>
#include <string.h>

#include "ncsn/backend.h"
#include "ncsn/cli.h"
#include "ncsn/comm.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ncsn <command> [options]\n"
            "  train     --config F.yml --workdir DIR [--data PATH] [--device cpu|cuda|auto] [--steps N]\n"
            "            [--seed S] [--resume] [--keep-last K] [--nproc K] [--precision fp32|tf32|bf16]\n"
            "  sample    --checkpoint C [--config F] --n N --out DIR|F.npz|G.png [--batch B] [--seed S] [--device D]\n"
            "            [--ema|--no-ema] [--shard i/M] [--sampler ald|langevin|pc|inpaint|interp] [--step-lr X]\n"
            "            [--n-steps-each T] [--denoise|--no-denoise] [--snr X] [--init uniform|gaussian|data]\n"
            "            [--data PATH] [--per-ref R] [--n-interp K] [--nrow K] [--max-batches K]\n"
            "            [--precision fp32|tf32|bf16] (default: bf16)\n"
            "            (a toy checkpoint writes F.npy points or an F.png scatter plot: data / Langevin / annealed)\n"
            "  score     --checkpoint C --input x.npy --labels y.npy --out s.npy [--device D] [--precision P]\n"
            "  info      --config F.yml [--no-table]\n"
            "  sigmas    --data PATH [--config F] [--subset N] [--T 5]\n"
            "  bench     model|train|sampler --config F --batch B [--device D] [--no-torch|--no-baseline]\n"
            "CUDA backend compiled in: %s\n"
            "MPI rendezvous compiled in: %s\n",
            ncsn_backend_cuda_compiled() ? "yes" : "no", ncsn_comm_mpi_compiled() ? "yes" : "no");
}

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
} command;

static const command commands[] = {
    {"train", ncsn_cmd_train},   {"sample", ncsn_cmd_sample}, {"score", ncsn_cmd_score},
    {"info", ncsn_cmd_info},     {"sigmas", ncsn_cmd_sigmas},
};

static const command bench_commands[] = {
    {"model", ncsn_cmd_bench_model},
    {"train", ncsn_cmd_bench_train},
    {"sampler", ncsn_cmd_bench_sampler},
};

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "bench")) {
        for (size_t i = 0; argc > 2 && i < sizeof bench_commands / sizeof *bench_commands; i++)
            if (!strcmp(argv[2], bench_commands[i].name)) return bench_commands[i].run(argc - 3, argv + 3);
        fprintf(stderr, "ncsn: bench needs one of: model, train, sampler\n");
        return 2;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 2, argv + 2);
    fprintf(stderr, "ncsn: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
