/* test_train_mpi.c: `mpirun -np 2 ncsn train` with the rendezvous id through MPI (comm.h).
 *
 * Every run is the built binary (BUILD/ncsn, beside the BUILD/tests folder of this test),
 * started by fork + exec with stdout and stderr to a log, one OpenMP thread per rank.
 * What is checked:
 *  1. the binary says whether it has MPI (`ncsn --help`: "MPI rendezvous compiled in:"),
 *     and that agrees with how this test was compiled (same Makefile flags);
 *  2. NCSN_RENDEZVOUS=mpi where MPI cannot serve is refused with exit 1 and one clear
 *     reason: under `--nproc 2` (no MPI launcher) an MPI build says "not started by an MPI
 *     launcher" (it must not call MPI_Init there), a build without MPI says "built without
 *     MPI (make MPI=1)";
 *  3. (MPI build and mpirun on PATH) `mpirun -np 2 ncsn train`, CPU backend, 10 steps,
 *     NCSN_RENDEZVOUS unset, takes the mpi rendezvous (its start-up line says so) and
 *     writes a final checkpoint BIT-IDENTICAL to the one of `--nproc 2` (file rendezvous).
 *     Why bit-identical and not within a tolerance: both runs are 2 ranks with the same
 *     shards, the same keyed draws and the same shm all-reduce (a fixed float64 order,
 *     comm.h), one thread each; the only difference is how rank 1 learnt the segment name.
 *  4. (same) under mpirun, launcher variables that disagree with MPI's ranks (NCSN_RANK=0
 *     on both ranks) stop the job with exit != 0 and the one-line message naming both.
 * Without MPI in the build or without mpirun, 3 and 4 print why they are skipped.
 * Open MPI refuses to run as root unless OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM) are set, and a
 * sandbox may have no network: the runs use the shared-memory transport only (btl
 * self,vader; pml ob1) and --oversubscribe (2 ranks on as few cores as there are).
 * About 2 s on 2 cores; every run is killed after RUN_TIMEOUT_S.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ncsn/safetensors.h"
#include "tests/harness.h"
#include "tests/train_support.h"

#define RUN_TIMEOUT_S 50.0

static char g_ncsn[PATH_MAX];

/* The first executable `name` on PATH into out; 0 when there is none. */
static int find_on_path(const char *name, char *out, size_t size) {
    const char *path = getenv("PATH");
    if (!path) return 0;
    while (*path) {
        size_t len = strcspn(path, ":");
        snprintf(out, size, "%.*s/%s", (int)len, len ? path : ".", name);
        if (access(out, X_OK) == 0) return 1;
        path += len + (path[len] == ':');
    }
    return 0;
}

/* Runs argv (argv[0] a path) with stdout and stderr to `log` and the environment of a
 * clean job: no rank or rendezvous variables of ours, one OpenMP thread, plain progress
 * lines, Open MPI allowed to run as root; `extra` ("NAME=value", NULL-terminated) on top.
 * In its own process group, killed with the whole group after RUN_TIMEOUT_S (mpirun and
 * its ranks included). Returns the exit status, 128 + signal, or -1 on a timeout. */
static int run_logged(const char *log, char *const argv[], char *const extra[]) {
    pid_t pid = fork_or_exit();
    if (pid == 0) {
        setpgid(0, 0);
        child_log_to(log);
        static const char *const cleared[] = {"NCSN_RANK", "NCSN_WORLD_SIZE", "NCSN_LOCAL_RANK", "NCSN_RENDEZVOUS",
                                              "NCSN_RUN_ID", "NCSN_COMM"};
        for (size_t i = 0; i < sizeof cleared / sizeof cleared[0]; i++) unsetenv(cleared[i]);
        setenv("OMP_NUM_THREADS", "1", 1);
        setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
        setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
        for (int i = 0; extra && extra[i]; i++) putenv(extra[i]);
        execv(argv[0], argv);
        _exit(127);
    }
    setpgid(pid, pid); /* also here: no race with the child's own call */
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int status = 0;
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (w < 0 && errno != EINTR) return -1;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((double)(now.tv_sec - start.tv_sec) + 1e-9 * (double)(now.tv_nsec - start.tv_nsec) > RUN_TIMEOUT_S) {
            kill(-pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        struct timespec pause = {0, 20 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
}

/* A small NCSNv2 (28x28 gray, ngf 4, global batch 4) with random flips, uniform
 * dequantisation and EMA, so every keyed random stream is sharded over the ranks. */
static const char config_text[] =
    "training:\n  batch_size: 4\n  n_epochs: 500000\n  n_iters: 300001\n  snapshot_freq: 10\n"
    "  snapshot_sampling: false\n  anneal_power: 2\n  log_all_sigmas: false\n  log_freq: 10\n"
    "data:\n  dataset: \"NPY\"\n  image_size: 28\n  channels: 1\n  logit_transform: false\n"
    "  uniform_dequantization: true\n  gaussian_dequantization: false\n  random_flip: true\n"
    "  rescaled: false\n  num_workers: 0\n"
    "model:\n  arch: ncsnv2\n  sigma_begin: 10\n  num_classes: 8\n  ema: true\n  ema_rate: 0.9\n"
    "  spec_norm: false\n  sigma_dist: geometric\n  sigma_end: 0.01\n  normalization: InstanceNorm++\n"
    "  nonlinearity: elu\n  ngf: 4\n"
    "optim:\n  weight_decay: 0.000\n  optimizer: \"Adam\"\n  lr: 0.001\n  beta1: 0.9\n  amsgrad: false\n"
    "  eps: 0.00000001\n";

/* Every metadata value and every tensor's bytes equal; prints the first difference. */
static void expect_identical(const char *a_path, const char *b_path) {
    ncsn_safetensors a, b;
    char err[512];
    if (!ncsn_safetensors_try_read(&a, a_path, err, sizeof err)) {
        EXPECT(0, "cannot read %s: %s", a_path, err);
        return;
    }
    if (!ncsn_safetensors_try_read(&b, b_path, err, sizeof err)) {
        EXPECT(0, "cannot read %s: %s", b_path, err);
        ncsn_safetensors_free(&a);
        return;
    }
    int same = a.n_tensors == b.n_tensors && a.n_meta == b.n_meta;
    if (!same) printf("  %d vs %d tensors, %d vs %d metadata keys\n", a.n_tensors, b.n_tensors, a.n_meta, b.n_meta);
    for (int i = 0; same && i < a.n_meta; i++) {
        const char *vb = ncsn_safetensors_meta(&b, a.meta[i].key);
        if (!vb || strcmp(vb, a.meta[i].value)) {
            printf("  metadata %s differs: '%.60s' vs '%.60s'\n", a.meta[i].key, a.meta[i].value, vb ? vb : "(none)");
            same = 0;
        }
    }
    size_t bytes = 0;
    for (int i = 0; same && i < a.n_tensors; i++) {
        const ncsn_st_tensor *ta = &a.tensors[i], *tb = ncsn_safetensors_find(&b, ta->name);
        if (!tb || tb->nbytes != ta->nbytes || tb->dtype != ta->dtype) {
            printf("  tensor %s missing or of another shape or type in %s\n", ta->name, b_path);
            same = 0;
        } else if (memcmp(ta->data, tb->data, ta->nbytes) != 0) {
            size_t k = 0;
            const unsigned char *pa = ta->data, *pb = tb->data;
            while (pa[k] == pb[k]) k++;
            if (ta->dtype == NCSN_DT_F32) {
                size_t e = k / sizeof(float);
                printf("  tensor %s differs first at element %zu: %.9g vs %.9g\n", ta->name, e,
                       (double)((const float *)ta->data)[e], (double)((const float *)tb->data)[e]);
            } else {
                printf("  tensor %s differs first at byte %zu\n", ta->name, k);
            }
            same = 0;
        }
        bytes += ta->nbytes;
    }
    if (same) printf("  %d tensors (%zu bytes) and %d metadata values bit-identical\n", a.n_tensors, bytes, a.n_meta);
    EXPECT(same, "%s and %s differ", a_path, b_path);
    ncsn_safetensors_free(&a);
    ncsn_safetensors_free(&b);
}

/* Exit status rc == want (want < 0: any failure) and the log contains `needle`. */
static void expect_outcome(const char *what, const char *log, int rc, int want, const char *needle) {
    char *text = read_text(log);
    int ok = (want >= 0 ? rc == want : rc > 0) && strstr(text, needle) != NULL;
    if (ok) printf("  %s: exit %d, log has \"%s\"\n", what, rc, needle);
    char expected[32];
    snprintf(expected, sizeof expected, want >= 0 ? "%d" : "a failure", want);
    EXPECT(ok, "%s: exit %d (expected %s), looked for \"%s\" in the log:\n%s", what, rc, expected, needle, text);
    free(text);
}

int main(void) {
    if (!find_ncsn(g_ncsn, sizeof g_ncsn)) {
        printf("cannot find the ncsn binary beside this test (%s): build it with `make`\n", g_ncsn);
        return 1;
    }
    make_test_root("train_mpi");
    printf("binary %s; workdirs under %s\n", g_ncsn, g_root);
    char cfg[512], data[512], log[512];
    path_in(cfg, sizeof cfg, "v2_28.yml");
    path_in(data, sizeof data, "images28.npy");
    write_text(cfg, config_text);
    write_image_data(data, 40, 28);

    /* 1. What the binary says about itself. */
    path_in(log, sizeof log, "help.log");
    char *help_argv[] = {g_ncsn, "--help", NULL};
    int rc = run_logged(log, help_argv, NULL);
    char *text = read_text(log);
    const char *line = strstr(text, "MPI rendezvous compiled in: ");
    const int binary_has_mpi = line && !strncmp(line + 28, "yes", 3);
#ifdef NCSN_WITH_MPI
    const int test_has_mpi = 1;
#else
    const int test_has_mpi = 0;
#endif
    EXPECT(rc == 0 && line && binary_has_mpi == test_has_mpi,
           "ncsn --help: exit %d, MPI line \"%.32s\"; this test was compiled %s NCSN_WITH_MPI (a stale binary?)", rc,
           line ? line : "(missing)", test_has_mpi ? "with" : "without");
    printf("-- ncsn --help: MPI rendezvous compiled in: %s\n", binary_has_mpi ? "yes" : "no");
    free(text);

    /* 2. NCSN_RENDEZVOUS=mpi where it cannot work: ranks of --nproc, no MPI launcher. */
    printf("-- NCSN_RENDEZVOUS=mpi under --nproc 2 is refused\n");
    char wr[512];
    path_in(wr, sizeof wr, "refused");
    path_in(log, sizeof log, "refused.log");
    char *refused_argv[] = {g_ncsn, "train", "--config", cfg,      "--workdir", wr,  "--data", data,
                            "--device", "cpu", "--steps", "2", "--nproc",  "2", NULL};
    char rdv_mpi[] = "NCSN_RENDEZVOUS=mpi";
    char *refused_env[] = {rdv_mpi, NULL};
    rc = run_logged(log, refused_argv, refused_env);
    expect_outcome("NCSN_RENDEZVOUS=mpi --nproc 2", log, rc, 1,
                   binary_has_mpi ? "NCSN_RENDEZVOUS=mpi, but this process was not started by an MPI launcher"
                                  : "NCSN_RENDEZVOUS=mpi: this binary was built without MPI (make MPI=1)");

    char mpirun[PATH_MAX];
    if (!binary_has_mpi) {
        printf("-- skipped: mpirun -np 2 vs --nproc 2, and the rank check: the binary was built without MPI "
               "(make MPI=1)\n");
        return harness_finish("test_train_mpi");
    }
    if (!find_on_path("mpirun", mpirun, sizeof mpirun)) {
        printf("-- skipped: mpirun -np 2 vs --nproc 2, and the rank check: no mpirun on PATH\n");
        return harness_finish("test_train_mpi");
    }

    /* 3. mpirun -np 2 (id through MPI_Bcast) vs --nproc 2 (id through a file), 10 steps. */
    printf("-- 10 steps: %s -np 2 vs --nproc 2 (global batch 4: 2 examples per rank)\n", mpirun);
    char wm[512], wn[512];
    path_in(wm, sizeof wm, "mpirun");
    path_in(wn, sizeof wn, "nproc");
    char *mpirun_argv[] = {mpirun, "--oversubscribe", "-np", "2", "--mca", "btl", "self,vader", "--mca", "pml", "ob1",
                           g_ncsn, "train", "--config", cfg, "--workdir", wm, "--data", data, "--device", "cpu",
                           "--steps", "10", NULL};
    path_in(log, sizeof log, "mpirun.log");
    rc = run_logged(log, mpirun_argv, NULL);
    expect_outcome("mpirun -np 2", log, rc, 0, "rendezvous mpi (MPI_Bcast");
    expect_outcome("mpirun -np 2", log, rc, 0, "data parallel: 2 ranks (shm all-reduce)");
    char *nproc_argv[] = {g_ncsn, "train", "--config", cfg,     "--workdir", wn,  "--data", data,
                          "--device", "cpu", "--steps", "10", "--nproc", "2", NULL};
    path_in(log, sizeof log, "nproc.log");
    rc = run_logged(log, nproc_argv, NULL);
    expect_outcome("--nproc 2", log, rc, 0, "rendezvous file:");
    char pm[600], pn[600];
    snprintf(pm, sizeof pm, "%s/checkpoint_10.safetensors", wm);
    snprintf(pn, sizeof pn, "%s/checkpoint_10.safetensors", wn);
    expect_identical(pm, pn);

    /* 4. Launcher variables that contradict MPI: both ranks claim rank 0. */
    printf("-- mpirun -np 2 with NCSN_RANK=0 on both ranks is refused\n");
    char wx[512];
    path_in(wx, sizeof wx, "mismatch");
    char *mismatch_argv[] = {mpirun, "--oversubscribe", "-np", "2", "--mca", "btl", "self,vader", "--mca", "pml", "ob1",
                             g_ncsn, "train", "--config", cfg, "--workdir", wx, "--data", data, "--device", "cpu",
                             "--steps", "2", NULL};
    char rank0[] = "NCSN_RANK=0", world2[] = "NCSN_WORLD_SIZE=2";
    char *mismatch_env[] = {rank0, world2, NULL};
    path_in(log, sizeof log, "mismatch.log");
    rc = run_logged(log, mismatch_argv, mismatch_env);
    expect_outcome("mpirun with NCSN_RANK=0 on both ranks", log, rc, -1,
                   "MPI_Comm_rank/MPI_Comm_size say rank 1 of 2, but this process is rank 0 of 2 (from "
                   "NCSN_RANK/NCSN_WORLD_SIZE)");
    return harness_finish("test_train_mpi");
}
