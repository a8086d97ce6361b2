/* test_train_dp.c: data-parallel `ncsn train --nproc K` on the CPU (shm all-reduce).
 *
 * Every run is the built binary (BUILD/ncsn, beside the BUILD/tests folder of this test) started by
 * fork + exec: --nproc re-executes /proc/self/exe, which must be `ncsn`, not this test.
 * One OpenMP thread per rank. A small NCSNv2 (28x28 gray, ngf 4, global batch 6) with
 * random flips, uniform dequantisation and EMA, so every keyed random stream is sharded.
 * What is checked:
 *  1. equivalence: 10 steps with --nproc 1 and with --nproc 2 give the same checkpoint
 *     (parameters, Adam moments, EMA) within the tolerance below, the same metadata (step,
 *     seed, loader stream state: the global stream), and the same logged losses within
 *     1e-5 relative (the losses of step 1 onward depend on the parameters, so they carry
 *     the same small drift; the draws themselves are identical by construction).
 *  2. resume on another world size: the --nproc 2 run resumed with --nproc 1 to step 15
 *     gives step 15 with finite losses, and matches the --nproc 1 run resumed to step 15
 *     within the same tolerance.
 *  3. refusal: --nproc 4 with global batch 6 stops with exit 1 and says why.
 * With NCSN_TEST_DP_DEVICE=cuda (make test-gpu, >= 2 GPUs) the ranks are GPUs and the
 * all-reduce is NCCL's; the tolerances below hold there too (NCCL's average of two ranks is
 * one correctly rounded sum and a halving, as exact as the shm mean).
 *
 * Tolerance. The two runs differ only in fp32 summation order: the one-process gradient
 * is one sum over 6 examples (and oneDNN's reductions over a batch of 6), the two-rank one
 * the float64 mean of two float32 half-batch means (batches of 3). That is ~1e-7 relative
 * on each gradient, and the training dynamics carry it forward step by step. Bounds:
 *   - every float tensor (parameters, EMA, Adam m and v): max |a - b| <= 1e-4 * max |a|
 *     over the tensor (normwise: Adam's moments are running sums of gradients whose
 *     elements cancel, so an element-wise relative bound is meaningless near zero);
 *     measured 2.8e-6 (an adam.v tensor) after 10 and after 15 steps: 36x margin;
 *   - parameters and EMA element-wise: |a - b| <= 1e-2 lr. An Adam update is at most ~lr,
 *     so this says the runs agree to 1% of one update; measured 1.2e-4 lr = 1.19e-7, one
 *     float32 ulp of an IN++ gamma/alpha near 1 (80x margin);
 *   - logged losses: 1e-5 relative; measured 1e-8 to 4e-8.
 * About 2 s on 2 cores.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/rng_math.h"
#include "ncsn/io.h"
#include "ncsn/safetensors.h"
#include "tests/harness.h"
#include "tests/train_support.h"

#define LR 1e-3
#define TENSOR_REL 1e-4
#define PARAM_ABS_LR 1e-2

static char g_ncsn[PATH_MAX];

/* Runs `ncsn train ARGS...` with stdout and stderr to `log`; returns the exit status. */
static int run_ncsn_train(const char *log, char *const args[]) {
    char *argv[32];
    int argc = 0;
    argv[argc++] = g_ncsn;
    argv[argc++] = "train";
    for (int i = 0; args[i]; i++) {
        if (argc >= 31) {
            printf("too many arguments\n");
            exit(1);
        }
        argv[argc++] = args[i];
    }
    argv[argc] = NULL;
    pid_t pid = fork_or_exit();
    if (pid == 0) {
        child_log_to(log);
        /* One thread per rank: a fixed reduction order, and no oversubscription on 2 cores. */
        setenv("OMP_NUM_THREADS", "1", 1);
        unsetenv("NCSN_RANK");
        unsetenv("NCSN_WORLD_SIZE");
        unsetenv("NCSN_LOCAL_RANK");
        unsetenv("NCSN_RENDEZVOUS");
        execv(g_ncsn, argv);
        _exit(127);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) < 0) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* The small NCSNv2 of tests/test_train.c: 28x28 gray, ngf 4, batch 6, every random path on. */
static void write_config(const char *path) {
    char text[2048];
    snprintf(text, sizeof text,
             "training:\n  batch_size: 6\n  n_epochs: 500000\n  n_iters: 300001\n  snapshot_freq: 10\n"
             "  snapshot_sampling: false\n  anneal_power: 2\n  log_all_sigmas: false\n  log_freq: 5\n"
             "data:\n  dataset: \"NPY\"\n  image_size: 28\n  channels: 1\n  logit_transform: false\n"
             "  uniform_dequantization: true\n  gaussian_dequantization: false\n  random_flip: true\n"
             "  rescaled: false\n  num_workers: 0\n"
             "model:\n  arch: ncsnv2\n  sigma_begin: 10\n  num_classes: 12\n  ema: true\n  ema_rate: 0.9\n"
             "  spec_norm: false\n  sigma_dist: geometric\n  sigma_end: 0.01\n  normalization: InstanceNorm++\n"
             "  nonlinearity: elu\n  ngf: 4\n"
             "optim:\n  weight_decay: 0.000\n  optimizer: \"Adam\"\n  lr: %g\n  beta1: 0.9\n  amsgrad: false\n"
             "  eps: 0.00000001\n",
             LR);
    write_text(path, text);
}


/* Compares two checkpoints: every metadata value and non-float tensor equal; every F32
 * tensor T within max_i |a_i - b_i| <= TENSOR_REL * max_i |a_i| (the error relative to the
 * tensor's scale: Adam's moments are sums of gradients whose elements cancel, so an
 * element-wise relative bound is meaningless near zero); parameters and EMA additionally
 * within PARAM_ABS_LR * lr element-wise (an Adam update is at most ~lr in size). Prints the
 * worst tensors. Returns 1 when within. */
static int compare_close(const char *what, const char *a_path, const char *b_path) {
    ncsn_safetensors a, b;
    char err[512];
    if (!ncsn_safetensors_try_read(&a, a_path, err, sizeof err)) {
        EXPECT(0, "%s: cannot read %s: %s", what, a_path, err);
        return 0;
    }
    if (!ncsn_safetensors_try_read(&b, b_path, err, sizeof err)) {
        EXPECT(0, "%s: cannot read %s: %s", what, b_path, err);
        ncsn_safetensors_free(&a);
        return 0;
    }
    int ok = a.n_tensors == b.n_tensors && a.n_meta == b.n_meta;
    if (!ok) printf("  %s: %d vs %d tensors, %d vs %d metadata keys\n", what, a.n_tensors, b.n_tensors, a.n_meta, b.n_meta);
    for (int i = 0; i < a.n_meta && ok; i++) {
        const char *vb = ncsn_safetensors_meta(&b, a.meta[i].key);
        if (!vb || strcmp(vb, a.meta[i].value)) {
            printf("  %s: metadata %s differs: '%.60s' vs '%.60s'\n", what, a.meta[i].key, a.meta[i].value,
                   vb ? vb : "(none)");
            ok = 0;
        }
    }
    double worst_rel = 0.0, worst_param_lr = 0.0;
    const char *worst_rel_name = "", *worst_param_name = "";
    size_t values = 0, identical = 0;
    for (int i = 0; i < a.n_tensors && ok; i++) {
        const ncsn_st_tensor *ta = &a.tensors[i], *tb = ncsn_safetensors_find(&b, ta->name);
        if (!tb || tb->nbytes != ta->nbytes || tb->dtype != ta->dtype) {
            printf("  %s: tensor %s missing or of another shape in %s\n", what, ta->name, b_path);
            ok = 0;
            break;
        }
        if (ta->dtype != NCSN_DT_F32) {
            if (memcmp(ta->data, tb->data, ta->nbytes)) {
                printf("  %s: non-float tensor %s differs\n", what, ta->name);
                ok = 0;
            }
            continue;
        }
        const float *pa = ta->data, *pb = tb->data;
        size_t n = ta->nbytes / sizeof(float), worst_k = 0;
        double scale = 0.0, max_diff = 0.0;
        int finite = 1;
        for (size_t k = 0; k < n; k++) {
            double d = fabs((double)pa[k] - (double)pb[k]);
            finite &= isfinite(pa[k]) && isfinite(pb[k]);
            scale = fmax(scale, fabs((double)pa[k]));
            if (d > max_diff) {
                max_diff = d;
                worst_k = k;
            }
            values++;
            identical += d == 0.0;
        }
        double rel = scale > 0.0 ? max_diff / scale : max_diff;
        int is_moment = !strncmp(ta->name, "adam.", 5) || !strncmp(ta->name, "optim", 5);
        double in_lr = max_diff / LR;
        int bad = !finite || rel > TENSOR_REL || (!is_moment && in_lr > PARAM_ABS_LR);
        if (bad)
            printf("  %s: %s[%zu] = %.9g vs %.9g: |diff| %.3g = %.3g of the tensor's max |x| %.3g (%.3g lr)\n", what,
                   ta->name, worst_k, (double)pa[worst_k], (double)pb[worst_k], max_diff, rel, scale, in_lr);
        ok &= !bad;
        if (rel > worst_rel) {
            worst_rel = rel;
            worst_rel_name = ta->name;
        }
        if (!is_moment && in_lr > worst_param_lr) {
            worst_param_lr = in_lr;
            worst_param_name = ta->name;
        }
    }
    printf("  %s: %zu values, %.1f%% bit-identical; worst max|diff|/max|x| %.3g (%s, limit %g); parameters and EMA: "
           "max |diff| %.3g lr (%s, limit %g lr)\n",
           what, values, values ? 100.0 * (double)identical / (double)values : 0.0, worst_rel, worst_rel_name,
           TENSOR_REL, worst_param_lr, worst_param_name, PARAM_ABS_LR);
    ncsn_safetensors_free(&a);
    ncsn_safetensors_free(&b);
    EXPECT(ok, "%s: %s and %s differ beyond the tolerance", what, a_path, b_path);
    return ok;
}

static void expect_run(const char *what, const char *log, char *const args[]) {
    int rc = run_ncsn_train(log, args);
    if (rc != 0) {
        char *text = read_text(log);
        EXPECT(0, "%s: exit %d; log:\n%s", what, rc, text);
        free(text);
    } else {
        EXPECT(1, "%s", what);
    }
}

int main(void) {
    /* NCSN_TEST_DP_DEVICE=cuda: the same checks with one GPU per rank and NCCL (run by
     * `make test-gpu` when at least two GPUs are visible). */
    char *device = getenv("NCSN_TEST_DP_DEVICE") ? getenv("NCSN_TEST_DP_DEVICE") : "cpu";
    if (!find_ncsn(g_ncsn, sizeof g_ncsn)) {
        printf("cannot find the ncsn binary beside this test (%s): build it with `make`\n", g_ncsn);
        return 1;
    }
    make_test_root("train_dp");
    printf("binary %s, device %s; workdirs under %s\n", g_ncsn, device, g_root);
    char cfg[512], data[512], w1[512], w2[512], log[512];
    path_in(cfg, sizeof cfg, "v2_28.yml");
    path_in(data, sizeof data, "images28.npy");
    path_in(w1, sizeof w1, "nproc1");
    path_in(w2, sizeof w2, "nproc2");
    write_config(cfg);
    write_image_data(data, 50, 28);

    /* 1. --nproc 1 vs --nproc 2, 10 steps. */
    printf("-- 10 steps, --nproc 1 vs --nproc 2 (global batch 6: 3 examples per rank)\n");
    char *args1[] = {"--config", cfg, "--workdir", w1, "--data", data, "--device", device, "--steps", "10", "--nproc", "1",
                     NULL};
    path_in(log, sizeof log, "nproc1.log");
    expect_run("--nproc 1", log, args1);
    char *args2[] = {"--config", cfg, "--workdir", w2, "--data", data, "--device", device, "--steps", "10", "--nproc", "2",
                     NULL};
    path_in(log, sizeof log, "nproc2.log");
    expect_run("--nproc 2", log, args2);
    char *text = read_text(log);
    EXPECT(strstr(text, "data parallel: 2 ranks (shm all-reduce)") != NULL, "--nproc 2 log lacks the start-up line:\n%s",
           text);
    /* Other ranks are quiet: one start-up line and one "done" line for the whole job. */
    const char *first = strstr(text, "ncsn train: config");
    EXPECT(first && !strstr(first + 1, "ncsn train: config"), "--nproc 2 printed the start-up lines more than once");
    free(text);

    char p1[600], p2[600];
    snprintf(p1, sizeof p1, "%s/checkpoint_10.safetensors", w1);
    snprintf(p2, sizeof p2, "%s/checkpoint_10.safetensors", w2);
    compare_close("step 10", p1, p2);

    double l1[8], l2[8];
    long s1[8], s2[8];
    int n1 = read_metric(w1, "loss", l1, s1, 8), n2 = read_metric(w2, "loss", l2, s2, 8);
    int same = n1 == 2 && n2 == 2;
    double worst = 0.0;
    for (int i = 0; same && i < n1; i++) {
        double rel = fabs(l1[i] - l2[i]) / fabs(l1[i]);
        worst = fmax(worst, rel);
        same = s1[i] == s2[i] && isfinite(l1[i]) && rel <= 1e-5;
    }
    EXPECT(same, "logged losses differ: %d vs %d lines, first %.9g vs %.9g", n1, n2, n1 ? l1[0] : NAN,
           n2 ? l2[0] : NAN);
    printf("  logged losses (steps 5, 10): %.7g %.7g vs %.7g %.7g, max relative difference %.3g (limit 1e-5)\n",
           n1 > 0 ? l1[0] : NAN, n1 > 1 ? l1[1] : NAN, n2 > 0 ? l2[0] : NAN, n2 > 1 ? l2[1] : NAN, worst);

    /* 2. Resume the two-rank run with one rank, and the one-rank run likewise, to step 15. */
    printf("-- resume to step 15 with --nproc 1: from the --nproc 2 checkpoint vs from the --nproc 1 one\n");
    char *resume2[] = {"--config", cfg, "--workdir", w2, "--data", data, "--device", device, "--steps", "15", "--resume",
                       "--nproc", "1", NULL};
    path_in(log, sizeof log, "resume2.log");
    expect_run("--nproc 2 run resumed with --nproc 1", log, resume2);
    char *resume1[] = {"--config", cfg, "--workdir", w1, "--data", data, "--device", device, "--steps", "15", "--resume",
                       "--nproc", "1", NULL};
    path_in(log, sizeof log, "resume1.log");
    expect_run("--nproc 1 run resumed with --nproc 1", log, resume1);
    n2 = read_metric(w2, "loss", l2, s2, 8);
    EXPECT(n2 == 3 && s2[2] == 15 && isfinite(l2[2]), "resumed run: %d metrics lines, last step %ld loss %g", n2,
           n2 ? s2[n2 - 1] : -1L, n2 ? l2[n2 - 1] : NAN);
    snprintf(p1, sizeof p1, "%s/checkpoint_15.safetensors", w1);
    snprintf(p2, sizeof p2, "%s/checkpoint_15.safetensors", w2);
    compare_close("step 15", p1, p2);

    /* 3. A global batch that K does not divide is refused, naming both. */
    printf("-- refusal: --nproc 4 with batch 6\n");
    char w4[512];
    path_in(w4, sizeof w4, "nproc4");
    char *args4[] = {"--config", cfg, "--workdir", w4, "--data", data, "--device", device, "--steps", "2", "--nproc", "4",
                     NULL};
    path_in(log, sizeof log, "nproc4.log");
    int rc = run_ncsn_train(log, args4);
    text = read_text(log);
    const char *msg = strstr(text, "batch_size 6 is not a multiple of the 4 data-parallel ranks");
    EXPECT(rc == 1 && msg && !strstr(msg + 1, "batch_size 6 is not"),
           "--nproc 4: exit %d, expected 1 and the batch message once (rank 0); log:\n%s", rc, text);
    free(text);
    return harness_finish("test_train_dp");
}
