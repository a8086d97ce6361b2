/* main.c: the `ncsn` command line. Each subcommand lives in its own file (cli.h). */
#include <stdio.h>
#include <string.h>

#include "ncsn/backend.h"
#include "ncsn/cli.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ncsn <command> [options]\n"
            "  train   --config F.yml --workdir DIR [--data PATH] [--device cpu|cuda] [--steps N] [--seed S] [--resume]\n"
            "  sample  --checkpoint C [--config F] --n N --batch B --out DIR|file.npz|grid.png [--seed S]\n"
            "  score   --checkpoint C --input x.npy --labels y.npy --out s.npy [--device D]\n"
            "  info    --config F.yml\n"
            "  sigmas  --data PATH [--config F] [--subset N]\n"
            "  bench   model|train|sampler --config F --batch B [--device D]\n"
            "CUDA backend compiled in: %s\n",
            ncsn_backend_cuda_compiled() ? "yes" : "no");
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    fprintf(stderr, "ncsn: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
