/* train_support.h: what the training tests (test_train.c, test_train_dp.c, test_train_mpi.c)
 * share: their temporary folder, the ncsn binary, child logs, and the files they write and read. */
#ifndef NCSN_TEST_TRAIN_SUPPORT_H
#define NCSN_TEST_TRAIN_SUPPORT_H

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/rng_math.h"
#include "ncsn/io.h"

static char g_root[256]; /* the test's temporary folder */

static inline void path_in(char *out, size_t size, const char *name) { snprintf(out, size, "%s/%s", g_root, name); }

/* The ncsn binary of this build into out: the tests run as BUILD/tests/test_x. 0 when it
 * is not there (built without `make`). */
static inline int find_ncsn(char *out, size_t size) {
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return 0;
    self[n] = 0;
    snprintf(out, size, "%s/../ncsn", dirname(self));
    return access(out, X_OK) == 0;
}

/* g_root = a fresh /tmp/ncsn_test_<name>_XXXXXX; exits 1 with a message if it cannot. */
static inline void make_test_root(const char *name) {
    snprintf(g_root, sizeof g_root, "/tmp/ncsn_test_%s_XXXXXX", name);
    if (!mkdtemp(g_root)) {
        printf("mkdtemp failed: %s\n", strerror(errno));
        exit(1);
    }
}

/* fork(), flushing stdout first (the child would print the buffer again); exits on failure. */
static inline pid_t fork_or_exit(void) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        printf("fork failed: %s\n", strerror(errno));
        exit(1);
    }
    return pid;
}

/* In a forked child: stdout and stderr to `log` (exit 99 when it cannot be opened), plain
 * progress lines. */
static inline void child_log_to(const char *log) {
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) _exit(99);
    dup2(fd, 1);
    dup2(fd, 2);
    close(fd);
    setenv("NCSN_PROGRESS", "plain", 1);
}

/* The values of `"key":` in DIR/metrics.jsonl, in order, from the lines that have it (and
 * a "step"); their steps into `steps` when not NULL. Returns the count (at most cap). */
static inline int read_metric(const char *workdir, const char *key, double *out, long *steps, int cap) {
    char path[600], needle[64];
    snprintf(path, sizeof path, "%s/metrics.jsonl", workdir);
    snprintf(needle, sizeof needle, "\"%s\":", key);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[2048];
    int n = 0;
    while (n < cap && fgets(line, sizeof line, f)) {
        const char *l = strstr(line, needle), *st = strstr(line, "\"step\":");
        if (!l || !st) continue;
        out[n] = strtod(l + strlen(needle), NULL);
        if (steps) steps[n] = strtol(st + 7, NULL, 10);
        n++;
    }
    fclose(f);
    return n;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        printf("cannot write %s: %s\n", path, strerror(errno));
        exit(1);
    }
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return calloc(1, 1);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = calloc((size_t)n + 1, 1);
    if (fread(s, 1, (size_t)n, f) != (size_t)n) s[0] = 0;
    fclose(f);
    return s;
}

/* N gray S x S disc images (see write_image_data), images first .. first + N - 1 of the
 * keyed sequence, into u8 (N*S*S bytes). */
static void make_disc_images(uint8_t *u8, int N, int S, uint32_t first) {
    for (int i = 0; i < N; i++) {
        uint32_t n = first + (uint32_t)i;
        float cx = S * (0.3f + 0.4f * ncsn_rng_uniform(5, NCSN_RNG_TOY, n, 0, 0));
        float cy = S * (0.3f + 0.4f * ncsn_rng_uniform(5, NCSN_RNG_TOY, n, 0, 1));
        float rad = S * (0.15f + 0.15f * ncsn_rng_uniform(5, NCSN_RNG_TOY, n, 0, 2));
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                float d = sqrtf((x - cx) * (x - cx) + (y - cy) * (y - cy));
                int v = d < rad ? 220 : 30;
                v += (int)(ncsn_rng_u32(5, NCSN_RNG_TOY, n, 1, (uint64_t)(y * S + x)) % 21u) - 10;
                u8[((size_t)i * S + y) * S + x] = (uint8_t)v;
            }
    }
}

/* N gray S x S images: a bright disc of random radius and centre on a dark background with
 * pixel noise: simple structure that a small network learns quickly. As a uint8 .npy. */
static void write_image_data(const char *path, int N, int S) {
    uint8_t *u8 = malloc((size_t)N * S * S);
    make_disc_images(u8, N, S, 0);
    int64_t shape[3] = {N, S, S};
    ncsn_npy_write(path, NCSN_NPY_U8, 3, shape, u8);
    free(u8);
}

/* The same kind of images as an MNIST-format folder with both splits:
 * DIR/train-images-idx3-ubyte (images 0 .. n_train-1) and DIR/t10k-images-idx3-ubyte
 * (n_test other images), so the test loss has a test split. */
static inline void write_idx_folder(const char *dir, int n_train, int n_test, int S) {
    mkdir(dir, 0777);
    const char *names[2] = {"train-images-idx3-ubyte", "t10k-images-idx3-ubyte"};
    const int counts[2] = {n_train, n_test};
    for (int split = 0; split < 2; split++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, names[split]);
        int N = counts[split];
        uint8_t *u8 = malloc((size_t)N * S * S);
        make_disc_images(u8, N, S, split ? 1000000u : 0u);
        /* IDX: magic 0x00000803 (unsigned byte, 3 dims), then the dims, big-endian. */
        uint8_t header[16] = {0, 0, 8, 3};
        uint32_t dims[3] = {(uint32_t)N, (uint32_t)S, (uint32_t)S};
        for (int d = 0; d < 3; d++)
            for (int b = 0; b < 4; b++) header[4 + 4 * d + b] = (uint8_t)(dims[d] >> (24 - 8 * b));
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(header, 1, 16, f) != 16 || fwrite(u8, 1, (size_t)N * S * S, f) != (size_t)N * S * S ||
            fclose(f) != 0) {
            printf("cannot write %s: %s\n", path, strerror(errno));
            exit(1);
        }
        free(u8);
    }
}

#endif
