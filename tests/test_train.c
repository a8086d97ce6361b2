/* test_train.c: `ncsn train` end to end on data the test makes.
 *
 * Every run is `ncsn train` itself (ncsn_cmd_train in a forked child, exactly the
 * command-line path; the parent runs no OpenMP before the last fork, which libgomp
 * requires), one OpenMP thread per run, with stderr kept in a file for the message
 * checks. About 10 s on 2 cores. What is checked:
 *  1. learning: the toy network on the 2-D mixture, DSM: the mean loss of the last 100
 *     steps at most 0.8x that of the first 10 (measured 0.66x; the floor of this schedule
 *     is ~0.6x, see test_toy_learns); the 28x28 NCSNv2 of the resume runs: steps 36-40 at
 *     most 0.7x steps 1-5 (measured 0.46x); SSM on the toy data: finite and falling.
 *     --keep-last K leaves the K newest checkpoints.
 *  2. exact resume on a small NCSNv2 (28x28, ngf 4) with random flips, uniform
 *     dequantisation and EMA, so every random stream is exercised: 40 steps in one run vs
 *     20 + resume 20, vs SIGKILL after the first checkpoint + resume; the step-40
 *     checkpoints (and the step-20 ones) are compared tensor by tensor, bit for bit, with
 *     their metadata (step, seed, data order).
 *  3. refusals before any work, each with a one-line message and exit 1: an unknown config
 *     key, a dataset whose image size or channels differ from the config, a checkpoint of
 *     another architecture, of other widths, or of another noise schedule, --resume
 *     without a checkpoint, a fresh run into a workdir that already has one;
 *     a non-finite loss stops the run naming the step and the last good checkpoint, which
 *     stays byte-identical, and no later checkpoint is written.
 *  4. Fashion-MNIST (Debian's dataset-fashion-mnist) when installed: a few steps of the
 *     28x28 network on the real files; skipped with a message otherwise.
 *  5. the step's pieces, in process (after every fork): the perturbed batch equals a host
 *     recomputation from the documented RNG keys and the shared element math, bit for bit
 *     (flip, dequantisation, rescale, labels, noise); Adam and EMA equal their element
 *     functions applied on the host; clipping leaves a gradient of norm training.grad_clip;
 *     the warm-up schedule; the level indices are uniform (chi-square).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kernels/rng_math.h"
#include "ncsn/backend.h"
#include "ncsn/cli.h"
#include "ncsn/config.h"
#include "ncsn/data.h"
#include "ncsn/model.h"
#include "ncsn/train.h"
#include "ncsn/io.h"
#include "ncsn/safetensors.h"
#include "tests/harness.h"
#include "tests/train_support.h"

/* ---- files and processes ------------------------------------------------------------- */

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* Starts `ncsn train ARGS...` in a child with stderr (and stdout) to `log`; returns its pid. */
static pid_t spawn_train(const char *log, char *const args[]) {
    pid_t pid = fork_or_exit();
    if (pid == 0) {
        child_log_to(log);
        /* One thread: the runs compare bit for bit among themselves (a fixed thread count
         * fixes the reduction order), and a 2-core machine shared with other jobs turns
         * OpenMP barriers into a 20x slowdown. NCSN_TEST_THREADS=N overrides. */
        const char *threads = getenv("NCSN_TEST_THREADS");
        omp_set_num_threads(threads ? atoi(threads) : 1);
        int argc = 0;
        while (args[argc]) argc++;
        int rc = ncsn_cmd_train(argc, (char **)args);
        fflush(stdout);
        fflush(stderr);
        _exit(rc);
    }
    return pid;
}

/* Runs `ncsn train ARGS...` to completion; returns the exit status (128 + signal if killed). */
static int run_train(const char *log, char *const args[]) {
    pid_t pid = spawn_train(log, args);
    int status = 0;
    if (waitpid(pid, &status, 0) < 0) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* ---- configs and data ------------------------------------------------------------------ */

/* A small NCSNv2 for 28x28 gray images, official v2 layout; every random path on. */
static void write_image_config(const char *path, int image_size, const char *extra_training, double lr) {
    char text[4096];
    snprintf(text, sizeof text,
             "training:\n"
             "  batch_size: 6\n"
             "  n_epochs: 500000\n"
             "  n_iters: 300001\n"
             "  snapshot_freq: 20\n"
             "  snapshot_sampling: false\n"
             "  anneal_power: 2\n"
             "  log_all_sigmas: false\n"
             "  log_freq: 5\n"
             "%s"
             "data:\n"
             "  dataset: \"NPY\"\n"
             "  image_size: %d\n"
             "  channels: 1\n"
             "  logit_transform: false\n"
             "  uniform_dequantization: true\n"
             "  gaussian_dequantization: false\n"
             "  random_flip: true\n"
             "  rescaled: false\n"
             "  num_workers: 0\n"
             "model:\n"
             "  arch: ncsnv2\n"
             "  sigma_begin: 10\n"
             "  num_classes: 12\n"
             "  ema: true\n"
             "  ema_rate: 0.9\n"
             "  spec_norm: false\n"
             "  sigma_dist: geometric\n"
             "  sigma_end: 0.01\n"
             "  normalization: InstanceNorm++\n"
             "  nonlinearity: elu\n"
             "  ngf: 4\n"
             "optim:\n"
             "  weight_decay: 0.000\n"
             "  optimizer: \"Adam\"\n"
             "  lr: %g\n"
             "  beta1: 0.9\n"
             "  amsgrad: false\n"
             "  eps: 0.00000001\n",
             extra_training, image_size, lr);
    write_text(path, text);
}

/* The 2-D toy mixture 0.2 N((-5,-5), I) + 0.8 N((5,5), I) with the toy MLP. */
static void write_toy_config(const char *path, const char *algo, double lr, long snapshot_freq) {
    char text[2048];
    snprintf(text, sizeof text,
             "training:\n"
             "  batch_size: 128\n"
             "  n_iters: 1000\n"
             "  snapshot_freq: %ld\n"
             "  snapshot_sampling: false\n"
             "  log_freq: 10\n"
             "  algo: %s\n"
             "data:\n"
             "  dataset: TOY\n"
             "  image_size: 1\n"
             "  channels: 2\n"
             "model:\n"
             "  arch: toy\n"
             "  sigma_begin: 5\n"
             "  sigma_end: 0.1\n"
             "  num_classes: 10\n"
             "  hidden: 64\n"
             "  ema: false\n"
             "optim:\n"
             "  lr: %g\n",
             snapshot_freq, algo, lr);
    write_text(path, text);
}

/* ---- checkpoint comparison ---------------------------------------------------------- */

static int compare_checkpoints(const char *a_path, const char *b_path) {
    ncsn_safetensors a, b;
    char err[512];
    if (!ncsn_safetensors_try_read(&a, a_path, err, sizeof err)) {
        EXPECT(0, "cannot read %s: %s", a_path, err);
        return 0;
    }
    if (!ncsn_safetensors_try_read(&b, b_path, err, sizeof err)) {
        EXPECT(0, "cannot read %s: %s", b_path, err);
        ncsn_safetensors_free(&a);
        return 0;
    }
    int same = a.n_tensors == b.n_tensors && a.n_meta == b.n_meta;
    if (!same) printf("    %d vs %d tensors, %d vs %d metadata keys\n", a.n_tensors, b.n_tensors, a.n_meta, b.n_meta);
    size_t bytes = 0;
    for (int i = 0; i < a.n_tensors && same; i++) {
        const ncsn_st_tensor *ta = &a.tensors[i], *tb = ncsn_safetensors_find(&b, ta->name);
        if (!tb || tb->nbytes != ta->nbytes || tb->dtype != ta->dtype) {
            printf("    tensor %s: missing or different shape in %s\n", ta->name, b_path);
            same = 0;
            break;
        }
        if (memcmp(ta->data, tb->data, ta->nbytes)) {
            const unsigned char *pa = ta->data, *pb = tb->data;
            size_t k = 0;
            while (pa[k] == pb[k]) k++;
            k /= 4;
            if (ta->dtype == NCSN_DT_F32)
                printf("    tensor %s differs first at element %zu: %.9g vs %.9g\n", ta->name, k,
                       (double)((const float *)ta->data)[k], (double)((const float *)tb->data)[k]);
            else
                printf("    tensor %s differs first at element %zu\n", ta->name, k);
            same = 0;
        }
        bytes += ta->nbytes;
    }
    for (int i = 0; i < a.n_meta && same; i++) {
        const char *vb = ncsn_safetensors_meta(&b, a.meta[i].key);
        if (!vb || strcmp(vb, a.meta[i].value)) {
            /* The config text may legitimately differ only if the runs used different files. */
            printf("    metadata %s differs: '%.60s' vs '%.60s'\n", a.meta[i].key, a.meta[i].value, vb ? vb : "(none)");
            same = 0;
        }
    }
    if (same) printf("  identical: %s == %s (%d tensors, %zu bytes)\n", a_path, b_path, a.n_tensors, bytes);
    ncsn_safetensors_free(&a);
    ncsn_safetensors_free(&b);
    return same;
}

/* ---- 1. learning ------------------------------------------------------------------------ */

/* Mean of losses[from, to). */
static double mean_of(const double *x, int from, int to) {
    double s = 0.0;
    for (int i = from; i < to; i++) s += x[i];
    return to > from ? s / (to - from) : NAN;
}

static void test_toy_learns(void) {
    printf("-- toy mixture: the DSM loss falls\n");
    char cfg[512], dir[512], log[512];
    path_in(cfg, sizeof cfg, "toy_dsm.yml");
    path_in(dir, sizeof dir, "toy_dsm");
    path_in(log, sizeof log, "toy_dsm.log");
    write_toy_config(cfg, "dsm", 3e-3, 1000);
    char *args[] = {"--config", cfg, "--workdir", dir, "--device", "cpu", "--steps", "600", NULL};
    int rc = run_train(log, args);
    EXPECT(rc == 0, "toy training exit status %d; log:\n%s", rc, read_text(log));
    double loss[128];
    int n = read_metric(dir, "loss", loss, NULL, 128);
    /* Per example the loss is 0.5 |sigma s + z|^2 with D = 2. Untrained it is ~1 (the first
     * 10 steps). The ideal score of a unit-variance mode gives (D/2) / (1 + sigma^2) per
     * level: ~1 at the small sigmas, which no network can beat, and 0.04 at sigma = 5, so
     * the achievable mean over this schedule is ~0.58. Limit: the mean of the last 100
     * steps at most 0.8x the first 10 (measured ~0.67x). */
    double first = n ? loss[0] : NAN, last = mean_of(loss, n - 10, n);
    EXPECT(n == 60 && last <= 0.8 * first, "%d log lines; loss first %.4f last %.4f", n, first, last);
    printf("  DSM loss: first 10 steps %.4f, last 100 steps %.4f (ratio %.3f, limit 0.8)\n", first, last, last / first);

    printf("-- toy mixture: sliced score matching (finite differences) trains\n");
    path_in(cfg, sizeof cfg, "toy_ssm.yml");
    path_in(dir, sizeof dir, "toy_ssm");
    path_in(log, sizeof log, "toy_ssm.log");
    write_toy_config(cfg, "ssm", 3e-3, 1000);
    char *args_ssm[] = {"--config", cfg, "--workdir", dir, "--device", "cpu", "--steps", "600", NULL};
    rc = run_train(log, args_ssm);
    EXPECT(rc == 0, "toy SSM training exit status %d; log:\n%s", rc, read_text(log));
    n = read_metric(dir, "loss", loss, NULL, 128);
    /* The SSM objective equals the score-matching loss minus a constant (E tr grad s +
     * 0.5|s|^2, weighted by sigma^2), so it goes below 0; it must fall from the start. On
     * the CPU it is logged from every step (finite differences, host loss). */
    first = mean_of(loss, 0, 1);
    last = mean_of(loss, n - 10, n);
    EXPECT(n == 60 && isfinite(last) && last < first - 0.1, "%d log lines; loss first %.4f last %.4f", n, first, last);
    printf("  SSM loss: first 10 steps %.4f, last 100 steps %.4f\n", first, last);
}

/* --keep-last K: after a run with checkpoints every 2 steps, only the newest K remain. */
static void test_keep_last(void) {
    printf("-- --keep-last\n");
    char cfg[512], dir[512], log[512];
    path_in(cfg, sizeof cfg, "toy_keep.yml");
    path_in(dir, sizeof dir, "toy_keep");
    path_in(log, sizeof log, "toy_keep.log");
    write_toy_config(cfg, "dsm", 1e-3, 2);
    char *args[] = {"--config", cfg, "--workdir", dir, "--device", "cpu", "--steps", "10", "--keep-last", "2", NULL};
    int rc = run_train(log, args);
    EXPECT(rc == 0, "keep-last run exit %d:\n%s", rc, read_text(log));
    int found[11] = {0}, others = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        int step;
        char tail[64];
        if (sscanf(e->d_name, "checkpoint_%d.%63s", &step, tail) == 2 && !strcmp(tail, "safetensors") && step >= 0 &&
            step <= 10)
            found[step] = 1;
        else if (strncmp(e->d_name, "checkpoint", 10) == 0)
            others++;
    }
    if (d) closedir(d);
    int kept = 0;
    for (int k = 0; k <= 10; k++) kept += found[k];
    EXPECT(kept == 2 && found[8] && found[10] && !others, "after 10 steps with checkpoints every 2 and --keep-last 2: "
           "%d kept (8: %d, 10: %d), %d other files", kept, found[8], found[10], others);
    printf("  checkpoints every 2 steps, --keep-last 2: %d files left (steps 8 and 10: %s)\n", kept,
           found[8] && found[10] ? "yes" : "no");
}

/* ---- 2. exact resume ------------------------------------------------------------------ */


/* The runs read an MNIST-format folder with both splits and evaluate the test loss every
 * 10 steps (steps 10, 20, 30, 40: one of them at a log point, the others not), so resume
 * exactness covers the evaluations too: they must leave the training streams untouched,
 * and a resumed run must evaluate the same test batches with the same draws. */
static void test_exact_resume(const char *data) {
    printf("-- exact resume: 40 steps == 20 + resume 20 == kill -9 after step 20 + resume (test loss every 10)\n");
    char cfg[512], a[512], b[512], c[512], log[512], pa[600], pb[600], pc[600];
    path_in(cfg, sizeof cfg, "v2_28.yml");
    write_image_config(cfg, 28, "", 1e-3);
    char *text = read_text(cfg);
    char *npy = strstr(text, "\"NPY\"");
    NCSN_CHECK(npy != NULL);
    memmove(npy + 7, npy + 5, strlen(npy + 5) + 1); /* "NPY" -> "MNIST" */
    memcpy(npy, "\"MNIST\"", 7);
    write_text(cfg, text);
    free(text);
    path_in(a, sizeof a, "resume_a");
    path_in(b, sizeof b, "resume_b");
    path_in(c, sizeof c, "resume_c");

    /* A: 40 steps in one run (checkpoints at 20 and 40). */
    path_in(log, sizeof log, "resume_a.log");
    char *args_a[] = {"--config", cfg,     "--workdir", a,    "--data",      (char *)data,
                      "--device", "cpu",   "--steps",   "40", "--test-freq", "10",         NULL};
    int rc = run_train(log, args_a);
    EXPECT(rc == 0, "run A exit %d; log:\n%s", rc, read_text(log));

    /* B: 20 steps, then --resume to 40. */
    path_in(log, sizeof log, "resume_b1.log");
    char *args_b1[] = {"--config", cfg,   "--workdir", b,    "--data",      (char *)data,
                       "--device", "cpu", "--steps",   "20", "--test-freq", "10",         NULL};
    rc = run_train(log, args_b1);
    EXPECT(rc == 0, "run B (first half) exit %d; log:\n%s", rc, read_text(log));
    path_in(log, sizeof log, "resume_b2.log");
    char *args_b2[] = {"--config", cfg,  "--workdir", b,          "--data",      (char *)data, "--device",
                       "cpu",      "--steps", "40", "--resume", "--test-freq", "10",         NULL};
    rc = run_train(log, args_b2);
    EXPECT(rc == 0, "run B (resumed) exit %d; log:\n%s", rc, read_text(log));

    /* C: 40 steps killed with SIGKILL as soon as checkpoint_20 exists, then resumed. The
     * checkpoint is renamed into place atomically, so its existence means it is complete. */
    path_in(log, sizeof log, "resume_c1.log");
    snprintf(pc, sizeof pc, "%s/checkpoint_20.safetensors", c);
    char *args_c1[] = {"--config", cfg,   "--workdir", c,    "--data",      (char *)data,
                       "--device", "cpu", "--steps",   "40", "--test-freq", "10",         NULL};
    pid_t pid = spawn_train(log, args_c1);
    int killed_between = 0, status = 0;
    for (int i = 0; i < 600000; i++) { /* up to 60 s */
        if (file_exists(pc)) {
            kill(pid, SIGKILL);
            break;
        }
        if (waitpid(pid, &status, WNOHANG) == pid) {
            pid = 0;
            break;
        }
        usleep(100);
    }
    if (pid) {
        waitpid(pid, &status, 0);
        killed_between = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    }
    char c40[600];
    snprintf(c40, sizeof c40, "%s/checkpoint_40.safetensors", c);
    EXPECT(killed_between && !file_exists(c40), "run C was not killed between the checkpoints (status %d)", status);
    printf("  run C killed by SIGKILL after checkpoint_20 appeared: %s\n", killed_between ? "yes" : "no");
    path_in(log, sizeof log, "resume_c2.log");
    char *args_c2[] = {"--config", cfg,  "--workdir", c,          "--data",      (char *)data, "--device",
                       "cpu",      "--steps", "40", "--resume", "--test-freq", "10",         NULL};
    rc = run_train(log, args_c2);
    EXPECT(rc == 0, "run C (resumed) exit %d; log:\n%s", rc, read_text(log));

    for (int step = 20; step <= 40; step += 20) {
        snprintf(pa, sizeof pa, "%s/checkpoint_%d.safetensors", a, step);
        snprintf(pb, sizeof pb, "%s/checkpoint_%d.safetensors", b, step);
        snprintf(pc, sizeof pc, "%s/checkpoint_%d.safetensors", c, step);
        EXPECT(compare_checkpoints(pa, pb), "step %d: one run vs 20 + resume differ", step);
        EXPECT(compare_checkpoints(pa, pc), "step %d: one run vs kill -9 + resume differ", step);
    }
    /* The resumed runs' metrics.jsonl equal the one run's, line for line up to the clock. */
    double la[16], lb[16], lc[16];
    long sa[16], sb[16], sc[16];
    int na = read_metric(a, "loss", la, sa, 16), nb = read_metric(b, "loss", lb, sb, 16);
    int nc = read_metric(c, "loss", lc, sc, 16);
    int same = na == 8 && nb == na && nc == na;
    for (int i = 0; same && i < na; i++) same = sa[i] == sb[i] && sa[i] == sc[i] && la[i] == lb[i] && la[i] == lc[i];
    EXPECT(same, "metrics.jsonl losses differ between the runs (%d, %d, %d lines)", na, nb, nc);
    /* The test losses: at steps 10, 20, 30, 40, finite, and the same in every run (the
     * resumed runs evaluated 30 and 40 themselves). */
    double ta[8], tb[8], tc[8];
    long ka[8], kb[8], kc[8];
    int ma = read_metric(a, "test_loss", ta, ka, 8), mb = read_metric(b, "test_loss", tb, kb, 8);
    int mc = read_metric(c, "test_loss", tc, kc, 8);
    int tsame = ma == 4 && mb == 4 && mc == 4;
    for (int i = 0; tsame && i < 4; i++)
        tsame = ka[i] == 10 * (i + 1) && kb[i] == ka[i] && kc[i] == ka[i] && isfinite(ta[i]) && ta[i] == tb[i] &&
                ta[i] == tc[i];
    EXPECT(tsame, "test losses differ between the runs or are missing (%d, %d, %d lines)", ma, mb, mc);
    if (ma == 4)
        printf("  test loss (EMA weights) at steps 10-40: %.2f %.2f %.2f %.2f, identical in the resumed runs: %s\n",
               ta[0], ta[1], ta[2], ta[3], tsame ? "yes" : "NO");
    /* The same runs show the image network learning: its loss starts near D/2 + |f|^2/2
     * (~650 for 784 pixels) and falls quickly at the large sigmas. Limit: the last 5 steps
     * at most 0.7x the first 5 (measured ~0.55x). */
    if (na == 8) {
        EXPECT(la[7] <= 0.7 * la[0], "image DSM loss first %.2f last %.2f", la[0], la[7]);
        printf("  NCSNv2 28x28 DSM loss: first 5 steps %.2f, steps 36-40 %.2f (ratio %.3f, limit 0.7)\n", la[0], la[7],
               la[7] / la[0]);
    }
}

/* ---- 3. refusals ------------------------------------------------------------------------ */

static void expect_refusal(const char *what, char *const args[], const char *needle, const char *needle2) {
    char log[512];
    path_in(log, sizeof log, "refusal.log");
    int rc = run_train(log, args);
    char *text = read_text(log);
    EXPECT(rc == 1 && strstr(text, needle) && (!needle2 || strstr(text, needle2)),
           "%s: exit %d, expected 1 and a message with '%s'%s%s; got:\n%s", what, rc, needle, needle2 ? " and " : "",
           needle2 ? needle2 : "", text);
    size_t len = strlen(text);
    while (len && text[len - 1] == '\n') text[--len] = 0;
    char *last = strrchr(text, '\n');
    printf("  %s: exit %d: %s\n", what, rc, last ? last + 1 : text);
    free(text);
}

static void test_refusals(const char *data28) {
    printf("-- refusals before any work, and the non-finite loss guard\n");
    char cfg[512], dir[512], data16[512], toy_cfg[512], toy_dir[512], log[512];

    /* Unknown config key: refused by the config layer; the workdir is not even created. */
    path_in(cfg, sizeof cfg, "unknown_key.yml");
    write_image_config(cfg, 28, "  learning_rate_typo: 3\n", 1e-3);
    path_in(dir, sizeof dir, "unknown_key");
    char *a1[] = {"--config", cfg, "--workdir", dir, "--data", (char *)data28, "--device", "cpu", "--steps", "2", NULL};
    expect_refusal("unknown config key", a1, "training.learning_rate_typo", NULL);
    EXPECT(!file_exists(dir), "the workdir %s was created for a refused config", dir);

    /* Dataset image size differs from the config: 16x16 images, config says 28. */
    path_in(data16, sizeof data16, "images16.npy");
    write_image_data(data16, 8, 16);
    path_in(cfg, sizeof cfg, "v2_28_plain.yml");
    write_image_config(cfg, 28, "", 1e-3);
    path_in(dir, sizeof dir, "wrong_size");
    char *a2[] = {"--config", cfg, "--workdir", dir, "--data", data16, "--device", "cpu", "--steps", "2", NULL};
    expect_refusal("dataset of another image size", a2, "16", "28");
    char ck[600];
    snprintf(ck, sizeof ck, "%s/checkpoint_2.safetensors", dir);
    EXPECT(!file_exists(ck), "a checkpoint was written for a refused dataset");

    /* A toy run leaves checkpoint_2; resuming it with the image network is refused. */
    path_in(toy_cfg, sizeof toy_cfg, "toy_small.yml");
    write_toy_config(toy_cfg, "dsm", 1e-3, 2);
    path_in(toy_dir, sizeof toy_dir, "other_arch");
    path_in(log, sizeof log, "toy_small.log");
    char *a3[] = {"--config", toy_cfg, "--workdir", toy_dir, "--device", "cpu", "--steps", "2", NULL};
    int rc = run_train(log, a3);
    EXPECT(rc == 0, "toy run exit %d:\n%s", rc, read_text(log));
    snprintf(ck, sizeof ck, "%s/checkpoint_2.safetensors", toy_dir);
    char *before = read_text(ck);
    char *a4[] = {"--config", cfg,   "--workdir", toy_dir,    "--data", (char *)data28, "--device",
                  "cpu",      "--steps", "4",      "--resume", NULL};
    expect_refusal("checkpoint of another architecture", a4, "checkpoint", NULL);

    /* Same architecture, other widths (ngf 8 instead of 4): the checkpoint layer names each
     * mis-shaped tensor. Another noise schedule: refused too (v2 stores the sigmas). */
    char resumable[512];
    path_in(resumable, sizeof resumable, "resume_a");
    path_in(cfg, sizeof cfg, "v2_28_wide.yml");
    write_image_config(cfg, 28, "", 1e-3);
    char *wide = read_text(cfg);
    char *ngf = strstr(wide, "ngf: 4");
    ngf[5] = '8';
    write_text(cfg, wide);
    free(wide);
    char *a8[] = {"--config", cfg,   "--workdir", resumable,  "--data", (char *)data28, "--device",
                  "cpu",      "--steps", "60",     "--resume", NULL};
    expect_refusal("checkpoint of other widths", a8, "the model expects", NULL);
    path_in(cfg, sizeof cfg, "v2_28_sigmas.yml");
    write_image_config(cfg, 28, "", 1e-3);
    char *sched = read_text(cfg);
    char *sb = strstr(sched, "sigma_begin: 10");
    memcpy(sb, "sigma_begin: 20", 15);
    write_text(cfg, sched);
    free(sched);
    char *a9[] = {"--config", cfg,   "--workdir", resumable,  "--data", (char *)data28, "--device",
                  "cpu",      "--steps", "60",     "--resume", NULL};
    expect_refusal("checkpoint with another noise schedule", a9, "noise levels differ", NULL);

    /* --resume with no checkpoint; a fresh run into a workdir that has one. */
    path_in(dir, sizeof dir, "empty_workdir");
    char *a5[] = {"--config", toy_cfg, "--workdir", dir, "--device", "cpu", "--steps", "2", "--resume", NULL};
    expect_refusal("--resume without a checkpoint", a5, "no checkpoint", NULL);
    char *a6[] = {"--config", toy_cfg, "--workdir", toy_dir, "--device", "cpu", "--steps", "4", NULL};
    expect_refusal("fresh run into a workdir with checkpoints", a6, "--resume", NULL);

    /* Non-finite loss: resume the toy run with lr 1e30; the first update sends the weights
     * to ~1e30, the next forward overflows. The run must stop with the step and the last
     * good checkpoint (checkpoint_2, unchanged), writing no further checkpoint. */
    path_in(cfg, sizeof cfg, "toy_nan.yml");
    write_toy_config(cfg, "dsm", 1e30, 2);
    char *a7[] = {"--config", cfg, "--workdir", toy_dir, "--device", "cpu", "--steps", "10", "--resume", NULL};
    char needle[700];
    snprintf(needle, sizeof needle, "last good checkpoint: %s", ck);
    expect_refusal("non-finite loss", a7, "step 4: loss is", needle);
    char *after = read_text(ck);
    EXPECT(!strcmp(before, after) && strlen(before) > 0, "checkpoint_2 changed after the non-finite loss");
    char ck4[600];
    snprintf(ck4, sizeof ck4, "%s/checkpoint_4.safetensors", toy_dir);
    EXPECT(!file_exists(ck4), "a checkpoint was written after the loss became non-finite");
    free(before);
    free(after);
}

/* ---- 4. Fashion-MNIST -------------------------------------------------------------------- */

static void test_fashion_mnist(void) {
    printf("-- Fashion-MNIST loader smoke\n");
    char idx[512];
    snprintf(idx, sizeof idx, "%s/train-images-idx3-ubyte.gz", NCSN_FASHION_MNIST_DIR);
    if (!file_exists(idx)) {
        printf("  skipped: %s not found (apt-get install dataset-fashion-mnist)\n", idx);
        return;
    }
    char cfg[512], dir[512], log[512];
    path_in(cfg, sizeof cfg, "fashion.yml");
    write_image_config(cfg, 28, "", 1e-3);
    char *text = read_text(cfg);
    char *p = strstr(text, "\"NPY\"");
    char fixed[4200];
    snprintf(fixed, sizeof fixed, "%.*s\"FashionMNIST\"%s", (int)(p - text), text, p + 5);
    write_text(cfg, fixed);
    free(text);
    path_in(dir, sizeof dir, "fashion");
    path_in(log, sizeof log, "fashion.log");
    char *args[] = {"--config", cfg, "--workdir", dir, "--device", "cpu", "--steps", "5", NULL};
    int rc = run_train(log, args);
    char *out = read_text(log);
    EXPECT(rc == 0 && strstr(out, "60000 examples"), "Fashion-MNIST run exit %d:\n%s", rc, out);
    double loss[4];
    int n = read_metric(dir, "loss", loss, NULL, 4);
    /* An untrained v2 network gives 0.5 |f + z|^2 ~ D/2 = 392 and up per example. */
    EXPECT(n == 1 && isfinite(loss[0]) && loss[0] > 100 && loss[0] < 1e5, "Fashion-MNIST: %d log lines, loss %g", n,
           n ? loss[0] : NAN);
    if (n) printf("  5 steps on the real training set (60000 images of 28x28): loss %.4f\n", loss[0]);
    free(out);
}

/* ---- 5. the step's pieces ---------------------------------------------------------------- */

static void step_pieces_on(const char *what, const char *config_text, int check_clip) {
    printf("-- one step of %s, against a host recomputation\n", what);
    ncsn_config cfg;
    ncsn_config_parse(&cfg, config_text, what);
    ncsn_backend *be = harness_cpu_backend();
    ncsn_model *m = ncsn_model_create(be, &cfg);
    const int B = cfg.training.batch_size;
    const uint64_t seed = 77;
    const long step = 3;
    ncsn_model_plan(m, B);
    ncsn_model_init(m, seed);
    ncsn_trainer *t = ncsn_trainer_create(be, m, &cfg, seed, B);
    int C, H, W;
    ncsn_model_input_shape(m, &C, &H, &W);
    const size_t D = ncsn_model_input_size(m), BD = (size_t)B * D, P = ncsn_model_table(m)->total;
    const int L = ncsn_model_num_levels(m);

    float *x = malloc(BD * sizeof *x), *x0 = malloc(BD * sizeof *x0);
    for (size_t i = 0; i < BD; i++) x0[i] = x[i] = (float)(ncsn_rng_u32(3, NCSN_RNG_TOY, 0, 0, i) & 255u) / 255.0f;
    float *theta0 = malloc(P * 4), *theta1 = malloc(P * 4), *g = malloc(P * 4), *mm = malloc(P * 4),
          *vv = malloc(P * 4), *ema = malloc(P * 4), *xn = malloc(BD * 4);
    ncsn_copy_to_host(be, theta0, ncsn_model_params(m), P * 4);
    double lr = ncsn_trainer_step(t, x, step);
    ncsn_copy_to_host(be, theta1, ncsn_model_params(m), P * 4);
    ncsn_copy_to_host(be, g, ncsn_model_grads(m), P * 4);
    ncsn_copy_to_host(be, mm, ncsn_trainer_adam_m(t), P * 4);
    ncsn_copy_to_host(be, vv, ncsn_trainer_adam_v(t), P * 4);
    ncsn_copy_to_host(be, xn, ncsn_trainer_perturbed(t), BD * 4);
    int32_t *labels = malloc((size_t)B * sizeof *labels);
    ncsn_trainer_read_loss(t, NULL, labels);

    /* The perturbed batch from the documented keys (train.h) and kernels/element_math.h. */
    const float *sigmas = ncsn_model_sigmas_host(m);
    int images = cfg.model.arch != NCSN_ARCH_TOY, mismatches = 0, label_mismatches = 0;
    size_t first_bad = 0;
    for (int n = 0; n < B; n++) {
        uint32_t gidx = (uint32_t)(step * B + n);
        int32_t label = ncsn_train_label(seed, step, n, L);
        label_mismatches += label != labels[n];
        int flip = images && cfg.data.random_flip && (ncsn_rng_u32(seed, NCSN_RNG_FLIP, gidx, (uint32_t)step, 0) >> 31);
        for (int c = 0; c < C; c++)
            for (int h = 0; h < H; h++)
                for (int w0 = 0; w0 < W; w0++) {
                    size_t i = ((size_t)c * H + h) * W + w0;
                    float v = x0[(size_t)n * D + ((size_t)c * H + h) * W + (flip ? W - 1 - w0 : w0)];
                    if (images && cfg.data.uniform_dequantization)
                        v = ncsn_dequantize_element(v, ncsn_rng_uniform(seed, NCSN_RNG_DEQUANT, gidx, (uint32_t)step, i));
                    if (images && cfg.data.rescaled) v = v * 2.0f + -1.0f;
                    float z = ncsn_rng_normal(seed, NCSN_RNG_NOISE, gidx, (uint32_t)step, i);
                    float want = ncsn_noise_inject_element(v, sigmas[label], z);
                    if (memcmp(&want, &xn[(size_t)n * D + i], 4)) {
                        if (!mismatches) first_bad = (size_t)n * D + i;
                        mismatches++;
                    }
                }
    }
    EXPECT(label_mismatches == 0, "%d labels differ from ncsn_train_label", label_mismatches);
    EXPECT(mismatches == 0, "%d of %zu perturbed values differ from the host recomputation (first at %zu: %.9g)",
           mismatches, BD, first_bad, mismatches ? (double)xn[first_bad] : 0.0);
    printf("  perturbed batch: %zu values bit-identical to the host recomputation\n", BD - (size_t)mismatches);

    /* Adam (first update: m = v = 0 before) and EMA from their element functions. */
    ncsn_adam_hparams hp = {.lr = (float)lr, .beta1 = (float)cfg.optim.beta1, .beta2 = 0.999f,
                            .eps = (float)cfg.optim.eps, .weight_decay = (float)cfg.optim.weight_decay,
                            .amsgrad = cfg.optim.amsgrad, .step = step + 1};
    ncsn_adam_scalars sc = ncsn_adam_prepare(&hp);
    int adam_bad = 0, ema_bad = 0;
    for (size_t i = 0; i < P; i++) {
        float p = theta0[i], m0 = 0.0f, v0 = 0.0f, vm = 0.0f;
        ncsn_adam_element(&p, g[i], &m0, &v0, hp.amsgrad ? &vm : NULL, hp.beta1, hp.beta2, hp.eps, hp.weight_decay,
                          hp.amsgrad, sc.step_size, sc.sqrt_bias_correction2);
        adam_bad += memcmp(&p, &theta1[i], 4) || memcmp(&m0, &mm[i], 4) || memcmp(&v0, &vv[i], 4);
    }
    EXPECT(adam_bad == 0, "%d of %zu Adam updates differ from ncsn_adam_element", adam_bad, P);
    if (ncsn_trainer_ema(t)) {
        ncsn_copy_to_host(be, ema, ncsn_trainer_ema(t), P * 4);
        for (size_t i = 0; i < P; i++) {
            float want = ncsn_ema_element(theta0[i], theta1[i], (float)cfg.model.ema_rate);
            ema_bad += memcmp(&want, &ema[i], 4) != 0;
        }
        EXPECT(ema_bad == 0, "%d of %zu EMA values differ from ncsn_ema_element", ema_bad, P);
    }
    printf("  Adam%s: %zu parameters bit-identical to the element functions\n", ncsn_trainer_ema(t) ? " and EMA" : "",
           P - (size_t)adam_bad);

    if (check_clip) {
        double norm2 = 0.0;
        for (size_t i = 0; i < P; i++) norm2 += (double)g[i] * g[i];
        double clip = cfg.training.grad_clip, before = ncsn_trainer_grad_norm(t);
        /* coef = clip / (norm + 1e-6) in float: the clipped norm is clip to ~1e-6 relative. */
        EXPECT(before > clip && fabs(sqrt(norm2) - clip) <= 1e-5 * clip,
               "clipping: norm before %.6g, after %.9g, clip %.6g", before, sqrt(norm2), clip);
        printf("  gradient norm %.5g clipped to %.9g (grad_clip %g)\n", before, sqrt(norm2), clip);
    }
    free(x);
    free(x0);
    free(theta0);
    free(theta1);
    free(g);
    free(mm);
    free(vv);
    free(ema);
    free(xn);
    free(labels);
    ncsn_trainer_free(t);
    ncsn_model_free(m);
    ncsn_backend_destroy(be);
    ncsn_config_free(&cfg);
}

static void test_step_pieces(void) {
    /* An image network with every transform on (rescaled instead of the model's 2x - 1). */
    char path[512];
    path_in(path, sizeof path, "pieces.yml");
    write_image_config(path, 28, "", 1e-3);
    char *text = read_text(path);
    char *p = strstr(text, "rescaled: false");
    memcpy(p, "rescaled: true ", 15);
    step_pieces_on("NCSNv2 28x28 (flip, dequantisation, rescale, EMA)", text, 0);
    free(text);
    /* The toy network with clipping and warm-up. */
    path_in(path, sizeof path, "pieces_toy.yml");
    write_toy_config(path, "dsm", 1e-3, 100);
    text = read_text(path);
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", text);
    char *tr = strstr(buf, "training:\n");
    char fixed[4200];
    snprintf(fixed, sizeof fixed, "%.*straining:\n  grad_clip: 0.001\n  warmup: 10\n%s", (int)(tr - buf), buf,
             tr + strlen("training:\n"));
    step_pieces_on("toy MLP (grad_clip 0.001, warmup 10)", fixed, 1);
    ncsn_config cfg;
    ncsn_config_parse(&cfg, fixed, "pieces_toy.yml");
    /* score_sde's warm-up: lr * min(step / warmup, 1), step = updates done before. */
    EXPECT(ncsn_trainer_lr(&cfg, 0) == 0.0 && fabs(ncsn_trainer_lr(&cfg, 5) - 5e-4) < 1e-15 &&
               ncsn_trainer_lr(&cfg, 10) == 1e-3 && ncsn_trainer_lr(&cfg, 1000) == 1e-3,
           "warm-up lr: %g %g %g %g", ncsn_trainer_lr(&cfg, 0), ncsn_trainer_lr(&cfg, 5), ncsn_trainer_lr(&cfg, 10),
           ncsn_trainer_lr(&cfg, 1000));
    ncsn_config_free(&cfg);
    free(text);

    /* Level indices: uniform over L. Chi-square with L - 1 = 231 degrees of freedom over
     * 2000 steps x 128 examples: mean 231, sd 21.5; 350 is 5.5 sd out. */
    const int L = 232, steps = 2000, B = 128;
    long *count = calloc(L, sizeof *count);
    for (int s = 0; s < steps; s++)
        for (int n = 0; n < B; n++) count[ncsn_train_label(1234, s, n, L)]++;
    double expected = (double)steps * B / L, chi2 = 0.0;
    for (int l = 0; l < L; l++) chi2 += (count[l] - expected) * (count[l] - expected) / expected;
    EXPECT(chi2 < 350.0, "level indices: chi-square %.1f with %d degrees of freedom", chi2, L - 1);
    printf("-- level indices: chi-square %.1f with %d degrees of freedom (limit 350)\n", chi2, L - 1);
    free(count);
}

int main(void) {
    make_test_root("train");
    printf("workdirs under %s\n", g_root);
    char data28[512], idx28[512];
    path_in(data28, sizeof data28, "images28.npy");
    write_image_data(data28, 50, 28);
    path_in(idx28, sizeof idx28, "images28_idx");
    write_idx_folder(idx28, 50, 20, 28);

    test_toy_learns();
    test_keep_last();
    test_exact_resume(idx28);
    test_refusals(data28);
    test_fashion_mnist();
    test_step_pieces(); /* in process: OpenMP starts here, after the last fork */

    int failed = harness_failures;
    if (!failed) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
        if (system(cmd) != 0) printf("could not remove %s\n", g_root);
    } else {
        printf("kept %s for inspection\n", g_root);
    }
    return harness_finish("test_train");
}
