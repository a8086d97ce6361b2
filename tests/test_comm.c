/* test_comm.c: the communicator (comm.h) on the CPU: K ranks as K processes.
 *
 * The binary is both the test driver and its ranks: ncsn_comm_spawn_local re-runs it as
 * `test_comm --worker <role>` with NCSN_RANK / NCSN_WORLD_SIZE set, exactly as `ncsn train
 * --nproc K` will run the trainer. Checks:
 * - rank discovery: each launcher's variables, their precedence, malformed values;
 *   ncsn_comm_bind_local_gpu's narrowing of CUDA_VISIBLE_DEVICES.
 * - rendezvous: file (rank 0 late, a stale file of another run skipped, timeouts, world
 *   mismatch, mode 0600, no temporary left) and TCP on 127.0.0.1 with a port the OS picked
 *   (clients retry until rank 0 listens; a client of another run is refused; timeouts on
 *   both sides). A 128-byte id with NUL, newline and 0xff bytes must arrive intact.
 * - K = 1, 2, 3 ranks with NCSN_COMM=shm (K = 3 once more through tcp:127.0.0.1):
 *   allreduce_mean over 263147 floats (two chunks and a remainder) against the float64
 *   mean: the result must be EXACTLY (float)((x_0 + ... + x_{K-1}) / K) with the sum in
 *   float64 in rank order (comm.h's definition), hence within half an ulp of the float64
 *   mean plus the float64 rounding of the sum (here <= 2^-50 relative: a bound of 0.5 ulp
 *   + 1e-12 relative is asserted), and bit-identical on every rank (the driver compares
 *   the ranks' result files byte for byte); broadcast from the last and from the first
 *   rank (exact); the bucketed all-reduce with 4096-byte, odd-sized (1000003 bytes,
 *   rounded down to floats) and 12-byte buckets equal to the unbucketed one bit for bit;
 *   a barrier that ranks reach at staggered times; n = 0.
 * - the property behind "the per-step math is the single-device math on the global
 *   batch": a 1x1-convolution score model with the CPU backend's dsm_loss on a global
 *   batch of 12 examples; each rank computes the loss and the parameter gradients of its
 *   disjoint slice of 12/K examples (per-slice mean weighting, noise keyed by the global
 *   example index), the all-reduced mean must equal the single-process global-batch
 *   loss and gradients. Tolerance: each gradient entry is a sum of m = 48 products (12
 *   examples x 4 pixels), computed in two different fp32 orders (oneDNN's reduction and
 *   the slice sums + the mean); fp32 summation error is at most (m + few) * 2^-24 *
 *   sum|terms| per side, so |distributed - global| <= 2 (m + 8) 2^-24 sum|terms| is a
 *   bound, not a guess. Both are also compared with a float64 evaluation of the same
 *   model (bound 1e-5 * sum|terms|, which also absorbs the fp32 rounding of the scores).
 * - failures: a rank that exits makes spawn_local stop the others promptly (< 5 s although
 *   they would sleep 60 s) and return 1; a rank waiting in a barrier for a rank that
 *   exited or hangs dies with a message naming it (NCSN_COMM_TIMEOUT); rank 0 cleans up
 *   its shared-memory segment when the rendezvous fails; no /dev/shm/ncsn-shm-* is left.
 * - world size 1 without NCSN_COMM: the no-op communicator.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kernels/rng_math.h"
#include "ncsn/backend.h"
#include "ncsn/comm.h"
#include "tests/harness.h"
#include "tests/expect_die.h"

#define SEED 20240611u
/* Two 1 MiB chunks of the shm communicator and an odd remainder. */
#define N_LARGE ((size_t)262144 + 1000 + 3)
#define N_SMALL ((size_t)1001)

static char test_dir[PATH_MAX];

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void set_env(const char *name, const char *value) {
    if (value ? setenv(name, value, 1) : unsetenv(name)) {
        perror("setenv");
        exit(2);
    }
}

static const char *const launcher_variables[] = {
    "NCSN_RANK",   "NCSN_WORLD_SIZE",  "NCSN_LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "SLURM_PROCID", "SLURM_NTASKS",
    "SLURM_LOCALID", "SLURM_JOB_ID", "SLURM_STEP_ID", "PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "NCSN_RUN_ID",
    "NCSN_COMM", "NCSN_RENDEZVOUS", "NCSN_COMM_TIMEOUT", "NCSN_RENDEZVOUS_TIMEOUT", NULL};

static void clear_launcher_env(void) {
    for (int i = 0; launcher_variables[i]; i++) set_env(launcher_variables[i], NULL);
}

static void path_in_test_dir(char *out, size_t len, const char *name) {
    if (snprintf(out, len, "%s/%s", test_dir, name) >= (int)len) {
        fprintf(stderr, "test setup: path too long\n");
        exit(2);
    }
}

/* ---- data --------------------------------------------------------------------------- */

/* Rank k's contribution: normal draws scaled over 2^-4 .. 2^4 so that the mean's
 * exponent varies and rounding is exercised at many magnitudes. */
static float rank_value(int rank, size_t i) {
    return (float)ldexp((double)ncsn_rng_normal(SEED, NCSN_RNG_TOY, (uint32_t)rank, 7, i), (int)(i % 9) - 4);
}

static void fill_rank_data(float *x, size_t n, int rank) {
    for (size_t i = 0; i < n; i++) x[i] = rank_value(rank, i);
}

static double float_ulp(float x) {
    float a = fabsf(x);
    return (double)nextafterf(a, INFINITY) - (double)a;
}

/* The 128-byte id of the rendezvous tests: every byte value class that could trip a
 * text-based implementation (NUL, newline, 0xff). */
static void make_id(unsigned char id[NCSN_COMM_ID_BYTES], unsigned salt) {
    for (int i = 0; i < NCSN_COMM_ID_BYTES; i++) id[i] = (unsigned char)(i * 37u + salt * 101u);
    id[3] = 0, id[4] = '\n', id[5] = 0xff, id[127] = 0;
}

/* ---- worker roles (run as ranks by ncsn_comm_spawn_local) ---------------------------- */

static void write_result_file(const char *what, int world, int rank, const float *x, size_t n) {
    char name[64], path[PATH_MAX];
    snprintf(name, sizeof name, "%s.%d.%d", what, world, rank);
    path_in_test_dir(path, sizeof path, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(x, sizeof(float), n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
}

static void worker_collectives(ncsn_comm *comm, ncsn_backend *be) {
    const int K = ncsn_comm_world_size(comm), r = ncsn_comm_rank(comm);
    float *mine = ncsn_xmalloc(N_LARGE * sizeof(float));
    float *got = ncsn_xmalloc(N_LARGE * sizeof(float));

    /* allreduce_mean against its definition and against the float64 mean */
    fill_rank_data(mine, N_LARGE, r);
    memcpy(got, mine, N_LARGE * sizeof(float));
    ncsn_comm_allreduce_mean(comm, be, got, N_LARGE);
    size_t not_exact = 0, outside = 0;
    double worst_ulps = 0.0;
    for (size_t i = 0; i < N_LARGE; i++) {
        double sum = 0.0, exact = 0.0;
        for (int k = 0; k < K; k++) sum += (double)rank_value(k, i);
        exact = sum / K; /* the float64 mean (rank order; float64 rounding is far below fp32's) */
        const float defined = (float)(sum / (double)K);
        if (memcmp(&got[i], &defined, sizeof(float)) != 0 && not_exact++ < 5)
            printf("    allreduce_mean[%zu]: got %.9g, definition %.9g\n", i, got[i], defined);
        double err = fabs((double)got[i] - exact), ulp = float_ulp((float)exact);
        if (ulp > 0 && err / ulp > worst_ulps) worst_ulps = err / ulp;
        if (!(err <= 0.5 * ulp + 1e-12 * fabs(exact)) && outside++ < 5)
            printf("    allreduce_mean[%zu]: got %.9g, float64 mean %.17g (%.3g ulp)\n", i, got[i], exact, err / ulp);
    }
    EXPECT(not_exact == 0, "K=%d: %zu of %zu elements differ from (float)(float64 rank-order sum / K)", K, not_exact,
           N_LARGE);
    EXPECT(outside == 0, "K=%d: %zu elements further than 0.5 ulp from the float64 mean", K, outside);
    printf("  %s allreduce_mean, K=%d, n=%zu: bit-exact to its definition, max %.3f ulp from the float64 mean\n",
           not_exact || outside ? "FAIL" : "ok  ", K, N_LARGE, worst_ulps);
    write_result_file("allreduce", K, r, got, N_LARGE);

    /* bucketed == unbucketed, bit for bit */
    static const size_t bucket_bytes[] = {4096, 1000003};
    for (size_t b = 0; b < sizeof bucket_bytes / sizeof bucket_bytes[0]; b++) {
        float *bucketed = ncsn_xmalloc(N_LARGE * sizeof(float));
        memcpy(bucketed, mine, N_LARGE * sizeof(float));
        ncsn_comm_allreduce_mean_buckets(comm, be, bucketed, N_LARGE, bucket_bytes[b]);
        size_t first = N_LARGE;
        for (size_t i = 0; i < N_LARGE && first == N_LARGE; i++)
            if (memcmp(&bucketed[i], &got[i], sizeof(float)) != 0) first = i;
        EXPECT(first == N_LARGE, "K=%d buckets of %zu bytes: element %zu is %.9g, unbucketed %.9g", K, bucket_bytes[b],
               first, first < N_LARGE ? bucketed[first] : 0.0f, first < N_LARGE ? got[first] : 0.0f);
        if (first == N_LARGE)
            printf("  ok   allreduce_mean_buckets(%zu bytes), K=%d: bit-identical to unbucketed\n", bucket_bytes[b], K);
        free(bucketed);
    }
    {
        float small[N_SMALL], small_ref[N_SMALL];
        fill_rank_data(small, N_SMALL, r);
        memcpy(small_ref, small, sizeof small);
        ncsn_comm_allreduce_mean(comm, be, small_ref, N_SMALL);
        ncsn_comm_allreduce_mean_buckets(comm, be, small, N_SMALL, 12); /* 3 floats a bucket */
        EXPECT(memcmp(small, small_ref, sizeof small) == 0, "K=%d: 12-byte buckets differ from unbucketed", K);
        /* The split form: three starts, one wait (what the overlapped trainer will do). */
        fill_rank_data(small, N_SMALL, r);
        ncsn_comm_allreduce_mean_start(comm, be, small + 700, N_SMALL - 700);
        ncsn_comm_allreduce_mean_start(comm, be, small + 300, 400);
        ncsn_comm_allreduce_mean_start(comm, be, small, 300);
        ncsn_comm_wait(comm, be);
        EXPECT(memcmp(small, small_ref, sizeof small) == 0, "K=%d: start/start/start/wait differs from one call", K);
    }

    /* broadcast from the last rank, then from rank 0 */
    const int roots[2] = {K - 1, 0};
    for (int t = 0; t < (K > 1 ? 2 : 1); t++) {
        const int root = roots[t];
        fill_rank_data(got, N_LARGE, r);
        ncsn_comm_broadcast(comm, be, got, N_LARGE, root);
        fill_rank_data(mine, N_LARGE, root);
        EXPECT(memcmp(got, mine, N_LARGE * sizeof(float)) == 0, "K=%d: broadcast from root %d is not root's data", K,
               root);
    }

    /* n = 0 is a no-op, including for the barrier count (the next barrier still matches) */
    ncsn_comm_allreduce_mean(comm, be, NULL, 0);
    ncsn_comm_broadcast(comm, be, NULL, 0, 0);

    /* barrier: rank r arrives 40 r ms late; after it, every rank's marker must exist */
    sleep_ms(40 * r);
    char name[64], path[PATH_MAX];
    snprintf(name, sizeof name, "marker.%d.%d", K, r);
    path_in_test_dir(path, sizeof path, name);
    write_text_file(path, "here\n");
    ncsn_comm_barrier(comm);
    int missing = 0;
    for (int k = 0; k < K; k++) {
        snprintf(name, sizeof name, "marker.%d.%d", K, k);
        path_in_test_dir(path, sizeof path, name);
        missing += access(path, F_OK) != 0;
    }
    EXPECT(missing == 0, "K=%d: %d ranks' markers missing after the barrier", K, missing);
    free(mine);
    free(got);
}

/* The DSM gradient of a 1x1-convolution score model s(x) = W x + b on examples
 * [offset, offset + n) of the global batch, into grads = [dW (C*C) | db (C) | loss (1)]. */
enum { DSM_BATCH = 12, DSM_C = 3, DSM_H = 2, DSM_W = 2, DSM_L = 4 };
#define DSM_PER_EXAMPLE ((size_t)DSM_C * DSM_H * DSM_W)
#define DSM_GRADS (DSM_C * DSM_C + DSM_C + 1)
static const float dsm_sigmas[DSM_L] = {1.0f, 0.5f, 0.25f, 0.1f};

typedef struct {
    float x_noisy[DSM_BATCH * DSM_PER_EXAMPLE], dscore[DSM_BATCH * DSM_PER_EXAMPLE], z[DSM_BATCH * DSM_PER_EXAMPLE];
    int32_t labels[DSM_BATCH];
} dsm_inputs;

static void dsm_weights(float *w, float *b) {
    for (int i = 0; i < DSM_C * DSM_C; i++) w[i] = 2.0f * ncsn_rng_uniform(SEED, NCSN_RNG_INIT, 0, 0, i) - 1.0f;
    for (int i = 0; i < DSM_C; i++) b[i] = 0.2f * ncsn_rng_uniform(SEED, NCSN_RNG_INIT, 0, 1, i) - 0.1f;
}

static void dsm_slice_gradient(ncsn_backend *be, int offset, int n, float grads[DSM_GRADS], dsm_inputs *keep) {
    float w[DSM_C * DSM_C], b[DSM_C];
    dsm_weights(w, b);
    const size_t count = (size_t)n * DSM_PER_EXAMPLE;
    float x[DSM_BATCH * DSM_PER_EXAMPLE], z[DSM_BATCH * DSM_PER_EXAMPLE], x_noisy[DSM_BATCH * DSM_PER_EXAMPLE];
    float score[DSM_BATCH * DSM_PER_EXAMPLE], dscore[DSM_BATCH * DSM_PER_EXAMPLE], loss[DSM_BATCH];
    int32_t labels[DSM_BATCH];
    /* Draws keyed by the GLOBAL example index, as the trainer will key them. */
    ncsn_fill_uniform(be, x, n, DSM_PER_EXAMPLE, SEED, NCSN_RNG_TOY, (uint32_t)offset, 0);
    ncsn_fill_normal(be, z, n, DSM_PER_EXAMPLE, SEED, NCSN_RNG_NOISE, (uint32_t)offset, 0);
    for (int i = 0; i < n; i++) labels[i] = (int32_t)(ncsn_rng_u32(SEED, NCSN_RNG_LABELS, (uint32_t)(offset + i), 0, 0) % DSM_L);
    ncsn_noise_inject(be, x_noisy, x, z, dsm_sigmas, labels, n, DSM_PER_EXAMPLE);
    const ncsn_conv_desc d = {.N = n, .C = DSM_C, .H = DSM_H, .W = DSM_W, .K = DSM_C, .ksize = 1, .dilation = 1, .has_bias = 1};
    ncsn_conv2d_forward(be, score, x_noisy, w, b, &d);
    ncsn_dsm_loss(be, loss, dscore, score, z, dsm_sigmas, labels, n, DSM_PER_EXAMPLE);
    memset(grads, 0, DSM_GRADS * sizeof(float));
    ncsn_conv2d_backward_weights_accumulate(be, grads, grads + DSM_C * DSM_C, x_noisy, dscore, &d);
    double loss_sum = 0.0;
    for (int i = 0; i < n; i++) loss_sum += loss[i];
    grads[DSM_GRADS - 1] = (float)(loss_sum / n); /* the slice's mean loss */
    if (keep) {
        memcpy(keep->x_noisy, x_noisy, count * sizeof(float));
        memcpy(keep->dscore, dscore, count * sizeof(float));
        memcpy(keep->z, z, count * sizeof(float));
        memcpy(keep->labels, labels, (size_t)n * sizeof(int32_t));
    }
}

static void worker_dsm(ncsn_comm *comm, ncsn_backend *be) {
    const int K = ncsn_comm_world_size(comm), r = ncsn_comm_rank(comm);
    NCSN_CHECK(DSM_BATCH % K == 0);
    const int n = DSM_BATCH / K;
    float distributed[DSM_GRADS], global[DSM_GRADS];
    dsm_slice_gradient(be, r * n, n, distributed, NULL);
    ncsn_comm_allreduce_mean(comm, be, distributed, DSM_GRADS);

    /* The single-device step on the whole global batch, in this process. */
    dsm_inputs in;
    dsm_slice_gradient(be, 0, DSM_BATCH, global, &in);

    /* float64 evaluation of the same model on the same (fp32) noisy inputs, and the
     * per-entry sum of |terms| that scales the fp32 error bounds. */
    float w[DSM_C * DSM_C], b[DSM_C];
    dsm_weights(w, b);
    double ref[DSM_GRADS] = {0}, abs_terms[DSM_GRADS] = {0};
    const int P = DSM_H * DSM_W;
    for (int e = 0; e < DSM_BATCH; e++) {
        const double sigma = dsm_sigmas[in.labels[e]];
        double residual_sq = 0.0;
        for (int k = 0; k < DSM_C; k++)
            for (int p = 0; p < P; p++) {
                double s = b[k];
                for (int c = 0; c < DSM_C; c++) s += (double)w[k * DSM_C + c] * in.x_noisy[(e * DSM_C + c) * P + p];
                const double residual = sigma * s + in.z[(e * DSM_C + k) * P + p];
                residual_sq += residual * residual;
                const double ds = sigma * residual / DSM_BATCH;
                const double ds32 = in.dscore[(e * DSM_C + k) * P + p];
                for (int c = 0; c < DSM_C; c++) {
                    const double xv = in.x_noisy[(e * DSM_C + c) * P + p];
                    ref[k * DSM_C + c] += ds * xv;
                    abs_terms[k * DSM_C + c] += fabs(ds32 * xv);
                }
                ref[DSM_C * DSM_C + k] += ds;
                abs_terms[DSM_C * DSM_C + k] += fabs(ds32);
            }
        ref[DSM_GRADS - 1] += 0.5 * residual_sq / DSM_BATCH;
        abs_terms[DSM_GRADS - 1] += 0.5 * residual_sq / DSM_BATCH;
    }
    const double u = ldexp(1.0, -24), m = DSM_BATCH * P;
    double worst_vs_global = 0.0, worst_vs_ref = 0.0;
    int bad = 0;
    for (int i = 0; i < DSM_GRADS; i++) {
        const double bound_global = 2.0 * (m + 8.0) * u * abs_terms[i], bound_ref = 1e-5 * abs_terms[i];
        const double e_global = fabs((double)distributed[i] - (double)global[i]);
        const double e_ref = fmax(fabs((double)distributed[i] - ref[i]), fabs((double)global[i] - ref[i]));
        worst_vs_global = fmax(worst_vs_global, e_global / bound_global);
        worst_vs_ref = fmax(worst_vs_ref, e_ref / bound_ref);
        if ((!(e_global <= bound_global) || !(e_ref <= bound_ref)) && bad++ < 5)
            printf("    grad[%d]: distributed %.9g, global %.9g, float64 %.12g (bounds %.3g, %.3g)\n", i,
                   distributed[i], global[i], ref[i], bound_global, bound_ref);
    }
    EXPECT(bad == 0, "K=%d: %d of %d loss/gradient entries outside their bounds", K, bad, DSM_GRADS);
    if (!bad)
        printf("  ok   DSM step on %d slices of %d == global batch of %d: loss %.7g vs %.7g, worst error %.3f of the "
               "fp32 bound (%.3f of the float64 bound)\n",
               K, n, DSM_BATCH, distributed[DSM_GRADS - 1], global[DSM_GRADS - 1], worst_vs_global, worst_vs_ref);
}

static int run_worker(const char *role) {
    ncsn_comm_env env;
    ncsn_comm_env_read(&env);
    if (env.rank != 0) {
        /* Only rank 0 talks on stdout; the others' logs are shown by the driver on failure. */
        char name[64], path[PATH_MAX];
        snprintf(name, sizeof name, "log.%s.%d.%d", role, env.world_size, env.rank);
        path_in_test_dir(path, sizeof path, name);
        if (!freopen(path, "w", stdout)) exit(2);
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(role, "fail")) {
        /* Rank 1 fails at once; the others would sleep for a minute unless stopped. */
        if (env.rank == 1) exit(3);
        sleep(60);
        return 0;
    }
    ncsn_backend *be = harness_cpu_backend();
    ncsn_comm *comm = ncsn_comm_create(be);
    EXPECT(!strcmp(ncsn_comm_kind(comm), "shm"), "kind %s", ncsn_comm_kind(comm));
    EXPECT(ncsn_comm_rank(comm) == env.rank && ncsn_comm_world_size(comm) == env.world_size &&
               ncsn_comm_local_rank(comm) == env.rank,
           "rank %d/%d local %d, env says %d/%d", ncsn_comm_rank(comm), ncsn_comm_world_size(comm),
           ncsn_comm_local_rank(comm), env.rank, env.world_size);
    if (!strcmp(role, "collectives")) {
        worker_collectives(comm, be);
        worker_dsm(comm, be);
    } else {
        ncsn_die("unknown worker role '%s'", role);
    }
    ncsn_comm_destroy(comm);
    ncsn_backend_destroy(be);
    char name[64];
    snprintf(name, sizeof name, "rank %d of %d", env.rank, env.world_size);
    return harness_finish(name);
}

/* ---- driver: rank discovery --------------------------------------------------------- */

static void read_env_die(void *arg) {
    (void)arg;
    ncsn_comm_env env;
    ncsn_comm_env_read(&env);
}

static void bind_gpu_die(void *arg) {
    (void)arg;
    ncsn_comm_bind_local_gpu();
}

static void test_env(void) {
    ncsn_comm_env env;
    clear_launcher_env();
    ncsn_comm_env_read(&env);
    EXPECT(env.rank == 0 && env.world_size == 1 && env.local_rank == 0 && !env.launched, "no variables: %d/%d launched %d",
           env.rank, env.world_size, env.launched);

    set_env("SLURM_PROCID", "5"), set_env("SLURM_NTASKS", "8");
    ncsn_comm_env_read(&env);
    EXPECT(env.rank == 5 && env.world_size == 8 && env.local_rank == 5 && env.launched &&
               !strcmp(env.source, "SLURM_PROCID/SLURM_NTASKS"),
           "slurm: %d/%d local %d (%s)", env.rank, env.world_size, env.local_rank, env.source);
    set_env("SLURM_LOCALID", "1");
    ncsn_comm_env_read(&env);
    EXPECT(env.local_rank == 1, "SLURM_LOCALID: local %d", env.local_rank);

    /* mpirun inside a Slurm allocation: mpirun's ranks win */
    set_env("OMPI_COMM_WORLD_RANK", "2"), set_env("OMPI_COMM_WORLD_SIZE", "4"), set_env("OMPI_COMM_WORLD_LOCAL_RANK", "0");
    ncsn_comm_env_read(&env);
    EXPECT(env.rank == 2 && env.world_size == 4 && env.local_rank == 0 &&
               !strcmp(env.source, "OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE"),
           "open mpi over slurm: %d/%d local %d (%s)", env.rank, env.world_size, env.local_rank, env.source);
    set_env("PMI_RANK", "1"), set_env("PMI_SIZE", "3");
    ncsn_comm_env_read(&env);
    EXPECT(env.rank == 2, "open mpi before PMI: rank %d", env.rank);
    set_env("NCSN_RANK", "0"), set_env("NCSN_WORLD_SIZE", "2");
    ncsn_comm_env_read(&env);
    EXPECT(env.rank == 0 && env.world_size == 2 && !strcmp(env.source, "NCSN_RANK/NCSN_WORLD_SIZE"),
           "NCSN_* first: %d/%d (%s)", env.rank, env.world_size, env.source);
    clear_launcher_env();
    set_env("PMI_RANK", "1"), set_env("PMI_SIZE", "3"), set_env("MPI_LOCALRANKID", "1");
    ncsn_comm_env_read(&env);
    EXPECT(env.rank == 1 && env.world_size == 3 && env.local_rank == 1, "PMI: %d/%d local %d", env.rank,
           env.world_size, env.local_rank);
    printf("  ok   rank discovery: none, Slurm, Open MPI over Slurm, PMI, NCSN_* first\n");

    clear_launcher_env();
    set_env("NCSN_RANK", "4"), set_env("NCSN_WORLD_SIZE", "4");
    EXPECT_DIE2("rank >= world size", read_env_die, NULL, "NCSN_RANK=4", "out of range");
    set_env("NCSN_RANK", "1x");
    EXPECT_DIE2("malformed rank", read_env_die, NULL, "NCSN_RANK='1x'", "not an integer");
    set_env("NCSN_RANK", NULL);
    EXPECT_DIE2("half a pair", read_env_die, NULL, "NCSN_WORLD_SIZE is set but NCSN_RANK is not", "both or neither");
    set_env("NCSN_WORLD_SIZE", "0"), set_env("NCSN_RANK", "0");
    EXPECT_DIE1("world size 0", read_env_die, NULL, "NCSN_WORLD_SIZE=0 is out of range");
    clear_launcher_env();

    /* GPU binding: only the environment changes, so it is testable without a GPU. */
    const char *saved = getenv("CUDA_VISIBLE_DEVICES");
    char saved_copy[256] = "";
    if (saved) snprintf(saved_copy, sizeof saved_copy, "%s", saved);
    set_env("CUDA_VISIBLE_DEVICES", NULL);
    ncsn_comm_bind_local_gpu();
    EXPECT(getenv("CUDA_VISIBLE_DEVICES") == NULL, "one process must not touch CUDA_VISIBLE_DEVICES");
    set_env("NCSN_RANK", "3"), set_env("NCSN_WORLD_SIZE", "4"), set_env("NCSN_LOCAL_RANK", "1");
    ncsn_comm_bind_local_gpu();
    const char *v = getenv("CUDA_VISIBLE_DEVICES");
    EXPECT(v && !strcmp(v, "1"), "unset -> local rank: '%s'", v ? v : "(unset)");
    set_env("CUDA_VISIBLE_DEVICES", "3,GPU-5e1f,7");
    ncsn_comm_bind_local_gpu();
    v = getenv("CUDA_VISIBLE_DEVICES");
    EXPECT(v && !strcmp(v, "GPU-5e1f"), "list -> local rank's entry: '%s'", v ? v : "(unset)");
    set_env("CUDA_VISIBLE_DEVICES", "6");
    ncsn_comm_bind_local_gpu();
    v = getenv("CUDA_VISIBLE_DEVICES");
    EXPECT(v && !strcmp(v, "6"), "single entry kept: '%s'", v ? v : "(unset)");
    set_env("CUDA_VISIBLE_DEVICES", "0,1"), set_env("NCSN_LOCAL_RANK", "2");
    EXPECT_DIE2("more local ranks than GPUs", bind_gpu_die, NULL, "local rank 2", "lists only 2 devices");
    printf("  ok   ncsn_comm_bind_local_gpu: unset, list, single entry\n");
    set_env("CUDA_VISIBLE_DEVICES", saved ? saved_copy : NULL);
    clear_launcher_env();
}

/* ---- driver: rendezvous ------------------------------------------------------------- */

typedef struct {
    const char *spec;
    int world;
    const int *delay_ms; /* per rank, or NULL */
    const char *tag;
    double timeout_s;
} rendezvous_job;

/* Runs the ranks of one rendezvous as processes; returns how many did not receive rank
 * 0's id intact. */
static int run_rendezvous(const rendezvous_job *job) {
    pid_t pids[8];
    fflush(stdout);
    for (int r = 0; r < job->world; r++) {
        pids[r] = fork();
        if (pids[r] < 0) {
            perror("fork");
            exit(2);
        }
        if (pids[r] == 0) {
            if (job->delay_ms) sleep_ms(job->delay_ms[r]);
            unsigned char id[NCSN_COMM_ID_BYTES], want[NCSN_COMM_ID_BYTES];
            make_id(want, 1);
            if (r == 0) memcpy(id, want, sizeof id);
            else memset(id, 0xab, sizeof id);
            ncsn_rendezvous_exchange(job->spec, r, job->world, job->tag, id, job->timeout_s);
            _exit(memcmp(id, want, sizeof id) == 0 ? 0 : 10);
        }
    }
    int failed = 0;
    for (int r = 0; r < job->world; r++) {
        int status = 0;
        waitpid(pids[r], &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            printf("    %s: rank %d ended with wait status 0x%x\n", job->spec, r, (unsigned)status);
            failed++;
        }
    }
    return failed;
}

/* A TCP port the OS just handed out on 127.0.0.1 (free for the next moments). */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        perror("free_port");
        exit(2);
    }
    close(fd);
    return ntohs(a.sin_port);
}

typedef struct {
    const char *spec;
    int rank, world;
    const char *tag;
    double timeout_s;
} exchange_args;

static void exchange_die(void *arg) {
    const exchange_args *a = arg;
    unsigned char id[NCSN_COMM_ID_BYTES];
    make_id(id, 2);
    ncsn_rendezvous_exchange(a->spec, a->rank, a->world, a->tag, id, a->timeout_s);
}

static void test_rendezvous(void) {
    char path[PATH_MAX], spec[PATH_MAX + 8];
    const int rank0_late[3] = {300, 0, 0};

    /* file: rank 0 arrives 0.3 s after the others, which poll */
    path_in_test_dir(path, sizeof path, "rdv-file");
    snprintf(spec, sizeof spec, "file:%s", path);
    rendezvous_job job = {spec, 3, rank0_late, "ncsn:test", 10.0};
    EXPECT(run_rendezvous(&job) == 0, "file rendezvous, 3 ranks, rank 0 late");
    struct stat st;
    EXPECT(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600, "rendezvous file mode %o, want 600",
           (unsigned)(st.st_mode & 0777));
    char tmp_pattern[PATH_MAX];
    snprintf(tmp_pattern, sizeof tmp_pattern, "%s.tmp.", "rdv-file");
    int leftovers = 0;
    DIR *dir = opendir(test_dir);
    for (struct dirent *e; dir && (e = readdir(dir));) leftovers += !strncmp(e->d_name, tmp_pattern, strlen(tmp_pattern));
    if (dir) closedir(dir);
    EXPECT(leftovers == 0, "%d temporary files left beside the rendezvous file", leftovers);
    printf("  ok   file rendezvous: 3 ranks, rank 0 late, id intact, mode 0600, no temporary left\n");

    /* a file of another run is skipped: readers wait for this run's rank 0 */
    unsigned char stale[NCSN_COMM_ID_BYTES];
    make_id(stale, 9);
    ncsn_rendezvous_exchange(spec, 0, 3, "ncsn:old-run", stale, 1.0);
    EXPECT(run_rendezvous(&job) == 0, "file rendezvous over a stale file of another run");
    printf("  ok   file rendezvous skips a stale file of another run\n");

    /* timeouts and mismatches */
    exchange_args late = {spec, 1, 3, "ncsn:new-run", 0.3};
    ncsn_rendezvous_exchange(spec, 0, 3, "ncsn:old-run", stale, 1.0);
    EXPECT_DIE2("file: only another run's file", exchange_die, &late, "timed out after 0.3 s", "belongs to another run");
    unlink(path);
    EXPECT_DIE2("file: no rank 0", exchange_die, &late, "timed out after 0.3 s waiting for rank 0",
                "filesystem every rank sees");
    ncsn_rendezvous_exchange(spec, 0, 3, "ncsn:new-run", stale, 1.0);
    exchange_args other_world = {spec, 1, 2, "ncsn:new-run", 0.3};
    EXPECT_DIE2("file: world size mismatch", exchange_die, &other_world, "world size 3", "this rank has world size 2");
    unlink(path);
    exchange_args no_spec = {"", 1, 2, "", 0.3};
    EXPECT_DIE2("world > 1 without a rendezvous", exchange_die, &no_spec, "needs a rendezvous", "NCSN_RENDEZVOUS=file:");
    exchange_args bad_spec = {"udp:x:1", 1, 2, "", 0.3};
    EXPECT_DIE1("unknown scheme", exchange_die, &bad_spec, "expected file:PATH or tcp:HOST:PORT");

    /* tcp on loopback: clients retry until rank 0 listens 0.3 s later */
    snprintf(spec, sizeof spec, "tcp:127.0.0.1:%d", free_port());
    rendezvous_job tcp_job = {spec, 3, rank0_late, "ncsn:test", 10.0};
    EXPECT(run_rendezvous(&tcp_job) == 0, "tcp rendezvous, 3 ranks, rank 0 late");
    printf("  ok   tcp rendezvous on %s: 3 ranks, rank 0 late, id intact\n", spec);

    /* a client of another run is refused; this run's client is served */
    snprintf(spec, sizeof spec, "tcp:127.0.0.1:%d", free_port());
    fflush(stdout);
    pid_t server = fork();
    if (server == 0) {
        unsigned char id[NCSN_COMM_ID_BYTES];
        make_id(id, 1);
        ncsn_rendezvous_exchange(spec, 0, 2, "ncsn:A", id, 5.0);
        _exit(0);
    }
    sleep_ms(100);
    exchange_args intruder = {spec, 1, 2, "ncsn:B", 0.5};
    EXPECT_DIE2("tcp: client of another run", exchange_die, &intruder, "timed out", "closed the connection");
    rendezvous_job ours = {spec, 2, NULL, "ncsn:A", 5.0};
    {
        /* only rank 1 of `ours`: rank 0 is the server above */
        pid_t client = fork();
        if (client == 0) {
            unsigned char id[NCSN_COMM_ID_BYTES], want[NCSN_COMM_ID_BYTES];
            make_id(want, 1);
            memset(id, 0, sizeof id);
            ncsn_rendezvous_exchange(ours.spec, 1, 2, ours.tag, id, ours.timeout_s);
            _exit(memcmp(id, want, sizeof id) == 0 ? 0 : 10);
        }
        int cs = 0, ss = 0;
        waitpid(client, &cs, 0);
        waitpid(server, &ss, 0);
        EXPECT(WIFEXITED(cs) && WEXITSTATUS(cs) == 0 && WIFEXITED(ss) && WEXITSTATUS(ss) == 0,
               "after refusing another run, rank 0 serves ours (client 0x%x, server 0x%x)", (unsigned)cs, (unsigned)ss);
    }

    snprintf(spec, sizeof spec, "tcp:127.0.0.1:%d", free_port());
    exchange_args nobody = {spec, 2, 3, "", 0.5};
    EXPECT_DIE2("tcp: nobody listening", exchange_die, &nobody, "rank 2 timed out after 0.5 s connecting to rank 0",
                "Connection refused");
    exchange_args lonely = {spec, 0, 3, "", 0.3};
    EXPECT_DIE2("tcp: nobody connects", exchange_die, &lonely, "2 of 2 ranks never connected", "ranks: 1 2");
    exchange_args bad_port = {"tcp:127.0.0.1:99999", 1, 2, "", 0.3};
    EXPECT_DIE1("tcp: port out of range", exchange_die, &bad_port, "out of range [1, 65535]");
}

/* ---- driver: collectives through spawn_local ---------------------------------------- */

static int compare_rank_files(const char *what, int K) {
    float *ref = ncsn_xmalloc(N_LARGE * sizeof(float)), *other = ncsn_xmalloc(N_LARGE * sizeof(float));
    int bad = 0;
    for (int r = 0; r < K; r++) {
        char name[64], path[PATH_MAX];
        snprintf(name, sizeof name, "%s.%d.%d", what, K, r);
        path_in_test_dir(path, sizeof path, name);
        FILE *f = fopen(path, "rb");
        size_t got = f ? fread(r == 0 ? ref : other, sizeof(float), N_LARGE, f) : 0;
        if (f) fclose(f);
        if (got != N_LARGE) {
            printf("    %s: %zu of %zu floats\n", path, got, N_LARGE);
            bad++;
            continue;
        }
        if (r == 0) continue;
        for (size_t i = 0; i < N_LARGE; i++)
            if (memcmp(&ref[i], &other[i], sizeof(float)) != 0) {
                printf("    %s: rank %d element %zu is %.9g, rank 0 has %.9g\n", what, r, i, other[i], ref[i]);
                bad++;
                break;
            }
    }
    free(ref);
    free(other);
    return bad;
}

static void show_rank_logs(const char *role, int K) {
    for (int r = 1; r < K; r++) {
        char name[64], path[PATH_MAX], title[64];
        snprintf(name, sizeof name, "log.%s.%d.%d", role, K, r);
        path_in_test_dir(path, sizeof path, name);
        snprintf(title, sizeof title, "rank %d of %d", r, K);
        print_file_indented(path, title);
    }
}

static void test_spawned(char *self, int K, const char *rendezvous) {
    char *argv[] = {self, "--worker", "collectives", NULL};
    set_env("NCSN_COMM", "shm");
    set_env("NCSN_RENDEZVOUS", rendezvous);
    printf("  -- %d rank%s, shm, rendezvous %s\n", K, K > 1 ? "s" : "", rendezvous ? rendezvous : "(launcher's file)");
    const double start = now_seconds();
    int status = ncsn_comm_spawn_local(K, 3, argv);
    EXPECT(status == 0, "spawn_local(%d) returned %d", K, status);
    if (status != 0) show_rank_logs("collectives", K);
    const int differing = compare_rank_files("allreduce", K);
    EXPECT(differing == 0, "K=%d: %d ranks' all-reduce results differ from rank 0's", K, differing);
    if (!differing) printf("  ok   K=%d: all-reduce results bit-identical on every rank (%.2f s)\n", K, now_seconds() - start);
    set_env("NCSN_COMM", NULL);
    set_env("NCSN_RENDEZVOUS", NULL);
}

/* ---- driver: failures --------------------------------------------------------------- */

typedef struct {
    int peer; /* what rank 1 does after creating its comm: 0 exit, 1 hang until rank 0 dies */
} peer_args;

static void barrier_with_bad_peer(void *arg) {
    const peer_args *a = arg;
    char path[PATH_MAX], spec[PATH_MAX + 8];
    path_in_test_dir(path, sizeof path, a->peer ? "rdv-hang" : "rdv-exit");
    snprintf(spec, sizeof spec, "file:%s", path);
    set_env("NCSN_COMM", "shm");
    set_env("NCSN_WORLD_SIZE", "2");
    set_env("NCSN_RENDEZVOUS", spec);
    set_env("NCSN_COMM_TIMEOUT", "0.5");
    int fds[2];
    if (pipe(fds) != 0) exit(2);
    pid_t peer = fork();
    if (peer == 0) {
        set_env("NCSN_RANK", "1");
        close(fds[1]);
        ncsn_backend *be = harness_cpu_backend();
        ncsn_comm *comm = ncsn_comm_create(be);
        (void)comm;
        char c;
        if (a->peer) /* hang until rank 0 is gone (its end of the pipe closes) */
            while (read(fds[0], &c, 1) > 0) {
            }
        _exit(0);
    }
    close(fds[0]);
    set_env("NCSN_RANK", "0");
    ncsn_backend *be = harness_cpu_backend();
    /* Keep rank 0's "comm: ..." line out of the captured stderr: the check shows the error. */
    fflush(stderr);
    int saved_stderr = dup(2), null_fd = open("/dev/null", O_WRONLY);
    if (saved_stderr < 0 || null_fd < 0 || dup2(null_fd, 2) < 0) exit(2);
    ncsn_comm *comm = ncsn_comm_create(be);
    fflush(stderr);
    if (dup2(saved_stderr, 2) < 0) exit(2);
    ncsn_comm_barrier(comm); /* rank 1 never arrives */
}

static void rank0_without_peers(void *arg) {
    (void)arg;
    char spec[64];
    snprintf(spec, sizeof spec, "tcp:127.0.0.1:%d", free_port());
    set_env("NCSN_COMM", "shm");
    set_env("NCSN_RANK", "0");
    set_env("NCSN_WORLD_SIZE", "2");
    set_env("NCSN_RENDEZVOUS", spec);
    set_env("NCSN_RENDEZVOUS_TIMEOUT", "0.3");
    ncsn_backend *be = harness_cpu_backend();
    ncsn_comm_create(be);
}

static void comm_create_die(void *arg) {
    ncsn_backend *be = harness_cpu_backend();
    (void)arg;
    ncsn_comm_create(be);
}

static int count_shm_segments(void) {
    int count = 0;
    DIR *dir = opendir("/dev/shm");
    for (struct dirent *e; dir && (e = readdir(dir));) count += !strncmp(e->d_name, "ncsn-shm-", 9);
    if (dir) closedir(dir);
    return count;
}

static void test_failures(char *self) {
    char *argv[] = {self, "--worker", "fail", NULL};
    const double start = now_seconds();
    int status = ncsn_comm_spawn_local(3, 3, argv);
    const double took = now_seconds() - start;
    EXPECT(status == 1 && took < 5.0, "spawn_local with a failing rank: returned %d after %.2f s (want 1, < 5 s)", status,
           took);
    if (status == 1 && took < 5.0) printf("  ok   spawn_local stops the other ranks when one fails (%.2f s)\n", took);

    peer_args exited = {0}, hangs = {1};
    EXPECT_DIE2("shm barrier: peer exited", barrier_with_bad_peer, &exited, "rank 0: rank 1 (pid",
                "exited while the others wait");
    EXPECT_DIE1("shm barrier: peer hangs", barrier_with_bad_peer, &hangs,
                "timed out after 0.5 s in a collective waiting for 1 of 2 ranks");
    const char *want_lonely[] = {"1 of 1 ranks never connected", NULL};
    expect_die("shm create: rank 0 alone", rank0_without_peers, NULL, want_lonely, 0);

    /* configuration errors */
    set_env("NCSN_COMM", "nccl");
    EXPECT_DIE1("nccl with the CPU backend", comm_create_die, NULL, "needs the CUDA backend");
    set_env("NCSN_COMM", "mpi");
    EXPECT_DIE1("unknown NCSN_COMM", comm_create_die, NULL, "NCSN_COMM='mpi': expected auto, shm, nccl or none");
    set_env("NCSN_COMM", "none"), set_env("NCSN_RANK", "0"), set_env("NCSN_WORLD_SIZE", "2");
    EXPECT_DIE1("none with world size 2", comm_create_die, NULL, "NCSN_COMM=none, but world size is 2");
    set_env("NCSN_COMM", NULL);
    EXPECT_DIE1("world size 2 without NCSN_RENDEZVOUS", comm_create_die, NULL, "needs a rendezvous");
    clear_launcher_env();
}

static void test_single_process(void) {
    clear_launcher_env();
    ncsn_backend *be = harness_cpu_backend();
    ncsn_comm *comm = ncsn_comm_create(be);
    float x[5] = {1.5f, -2.0f, 3.25f, 0.0f, 1e-30f}, y[5];
    memcpy(y, x, sizeof x);
    ncsn_comm_allreduce_mean(comm, be, y, 5);
    ncsn_comm_allreduce_mean_buckets(comm, be, y, 5, 8);
    ncsn_comm_broadcast(comm, be, y, 5, 0);
    ncsn_comm_barrier(comm);
    EXPECT(!strcmp(ncsn_comm_kind(comm), "none") && ncsn_comm_rank(comm) == 0 && ncsn_comm_world_size(comm) == 1 &&
               memcmp(x, y, sizeof x) == 0,
           "single process: kind %s, rank %d of %d, identity %d", ncsn_comm_kind(comm), ncsn_comm_rank(comm),
           ncsn_comm_world_size(comm), memcmp(x, y, sizeof x) == 0);
    printf("  ok   one process without NCSN_COMM: the no-op communicator\n");
    ncsn_comm_destroy(comm);
    ncsn_backend_destroy(be);
}

static void remove_test_dir(void) {
    DIR *dir = opendir(test_dir);
    for (struct dirent *e; dir && (e = readdir(dir));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char path[PATH_MAX];
        path_in_test_dir(path, sizeof path, e->d_name);
        unlink(path);
    }
    if (dir) closedir(dir);
    rmdir(test_dir);
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--worker")) {
        const char *dir = getenv("NCSN_TEST_COMM_DIR");
        if (!dir) ncsn_die("worker without NCSN_TEST_COMM_DIR");
        snprintf(test_dir, sizeof test_dir, "%s", dir);
        return run_worker(argv[2]);
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    snprintf(test_dir, sizeof test_dir, "%s/ncsn-test-comm-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(test_dir)) {
        perror("mkdtemp");
        return 2;
    }
    set_env("NCSN_TEST_COMM_DIR", test_dir);
    const int segments_before = count_shm_segments();

    test_env();
    test_single_process();
    test_rendezvous();
    for (int K = 1; K <= 3; K++) test_spawned(argv[0], K, NULL);
    char spec[64];
    snprintf(spec, sizeof spec, "tcp:127.0.0.1:%d", free_port());
    test_spawned(argv[0], 3, spec);
    test_failures(argv[0]);

    const int leaked = count_shm_segments() - segments_before;
    EXPECT(leaked == 0, "%d /dev/shm/ncsn-shm-* segments left behind", leaked);
    remove_test_dir();
    return harness_finish("test_comm");
}
