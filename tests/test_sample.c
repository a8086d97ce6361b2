/* test_sample.c: the samplers (sample.h) and `ncsn sample` end to end, on tiny networks.
 *
 * What is checked, and why it could fail:
 *   1. step sizes: a_i as the official code computes it (CIFAR-10 v2: a_1 = 155 exactly);
 *   2. per-sample determinism: samples 0..15 with batch 16, 7 (a ragged split) and 1 are
 *      bit-identical, on the toy MLP and on a tiny NCSNv2 (a noise key that used the batch
 *      slot instead of the global index, or a network op that mixed examples, breaks it);
 *      the PC sampler, whose corrector step is one scalar per batch (score_sde), is shown to
 *      depend on the batch and to be reproducible for the same batch;
 *   3. the final denoising step is exactly x + sigma_L^2 s(x, L-1); clamping and the
 *      rescaled inverse transform;
 *   4. samplers against closed forms on an analytic score: ALD and PC on a Gaussian target
 *      land on its variance; inpainting keeps the known half at ref + O(sigma_L);
 *      interpolation shares a row's initial state and its j = 0 sample follows z_p;
 *   5. the command: --out DIR writes 000000.png ... equal to the core API's samples; the
 *      EMA weights are used by default and --no-ema takes the raw ones; --shard 0/2 + 1/2
 *      reproduce the same files; --out F.npz interrupted by --max-batches and re-run is
 *      byte-identical to an uninterrupted run and parses back (zip + npy header, shape,
 *      pixels); --out G.png has the grid's size; a second run with another seed into the
 *      same output is refused.
 * Runs in well under a minute: L = 4 levels, T = 2 steps, 28x28x1 images, ngf 4.
 */
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/rng_math.h"
#include "ncsn/backend.h"
#include "ncsn/cli.h"
#include "ncsn/config.h"
#include "ncsn/io.h"
#include "ncsn/model.h"
#include "ncsn/checkpoint.h"
#include "ncsn/sample.h"
#include "tests/harness.h"

static const char *V2_TINY =
    "training:\n  batch_size: 4\n  n_iters: 10\n"
    "sampling:\n  batch_size: 4\n  step_lr: 0.00005\n  n_steps_each: 2\n  denoise: true\n"
    "data:\n  dataset: \"FashionMNIST\"\n  image_size: 28\n  channels: 1\n  random_flip: false\n"
    "model:\n  arch: ncsnv2\n  sigma_begin: 1\n  sigma_end: 0.01\n  num_classes: 4\n  ema: true\n  ngf: 4\n"
    "optim:\n  lr: 0.0001\n";

static const char *TOY =
    "training:\n  batch_size: 4\n  n_iters: 10\n"
    "sampling:\n  batch_size: 16\n  step_lr: 0.1\n  n_steps_each: 3\n  denoise: true\n"
    "data:\n  dataset: \"TOY\"\n"
    "model:\n  arch: toy\n  sigma_begin: 20\n  sigma_end: 1\n  num_classes: 4\n  hidden: 16\n"
    "optim:\n  lr: 0.0001\n";

/* Scratch directory of the command tests (mkdtemp under /tmp, removed when all pass).
 * In the command lines and paths below, '@' stands for it. */
static char scratch[64] = "/tmp/ncsn_test_sample.XXXXXX";

static const char *at(const char *s) {
    static char bufs[4][1024];
    static int next = 0;
    char *out = bufs[next++ % 4];
    size_t n = 0;
    for (; *s && n + sizeof scratch < sizeof bufs[0]; s++) {
        if (*s == '@') {
            n += (size_t)snprintf(out + n, sizeof bufs[0] - n, "%s", scratch);
        } else {
            out[n++] = *s;
        }
    }
    out[n] = '\0';
    return out;
}

/* ---- helpers ---------------------------------------------------------------------------- */

/* Runs the whole chain for samples 0..N-1 in batches of B; returns N*P host floats. */
static float *sample_in_batches(ncsn_backend *be, ncsn_score_fn fn, void *ctx, const float *sigmas, int L, int C,
                                int H, int W, int N, int B, const ncsn_sampler_options *o) {
    size_t P = (size_t)C * H * W;
    ncsn_sampler *s = ncsn_sampler_create(be, fn, ctx, sigmas, L, C, H, W, B, o);
    float *x = ncsn_alloc(be, (size_t)B * P * sizeof(float));
    float *out = ncsn_xmalloc((size_t)N * P * sizeof(float));
    for (int first = 0; first < N; first += B) {
        int nb = N - first < B ? N - first : B;
        ncsn_sampler_run(s, x, (uint32_t)first, nb);
        ncsn_copy_to_host(be, out + (size_t)first * P, x, (size_t)nb * P * sizeof(float));
    }
    ncsn_free(be, x);
    ncsn_sampler_free(s);
    return out;
}

/* Bitwise comparison; prints the first differing values. */
static int expect_identical(const char *what, const float *a, const float *b, size_t n) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float))) {
            if (!bad) first = i;
            bad++;
        }
    EXPECT(bad == 0, "%s: %zu of %zu values differ, first at %zu: %.9g vs %.9g", what, bad, n, first,
           (double)a[first], (double)b[first]);
    if (!bad) printf("  ok   %s: %zu values bit-identical\n", what, n);
    return bad == 0;
}

static size_t file_bytes(const char *path, uint8_t **data) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        *data = NULL;
        return 0;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *data = ncsn_xmalloc((size_t)n + 1);
    size_t got = fread(*data, 1, (size_t)n, f);
    fclose(f);
    return got;
}

static int files_equal(const char *p, const char *q) {
    uint8_t *a, *b;
    size_t na = file_bytes(p, &a), nb = file_bytes(q, &b);
    int same = a && b && na == nb && !memcmp(a, b, na);
    free(a);
    free(b);
    return same;
}

/* ncsn <argv...> in-process (ncsn_cmd_sample returns its exit status). */
static int run_sample(const char *args) {
    char buf[2048];
    /* fp32 unless the run says otherwise: these runs are compared bit for bit with the core
     * API's fp32 samples. */
    snprintf(buf, sizeof buf, "%s%s", at(args), strstr(args, "--precision") ? "" : " --precision fp32");
    char *argv[64];
    int argc = 0;
    for (char *tok = strtok(buf, " "); tok && argc < 63; tok = strtok(NULL, " ")) argv[argc++] = tok;
    argv[argc] = NULL;
    return ncsn_cmd_sample(argc, argv);
}

/* The same in a child process, for runs expected to die; returns the exit status. Its
 * stderr goes to `log` (NULL: discarded). */
static int run_sample_child_log(const char *args, const char *log) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) ncsn_die("fork: %s", strerror(errno));
    if (pid == 0) {
        if (!freopen(log ? log : "/dev/null", "w", stderr)) _exit(99);
        _exit(run_sample(args));
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) ncsn_die("waitpid: %s", strerror(errno));
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static int run_sample_child(const char *args) { return run_sample_child_log(args, NULL); }

/* Writes a model-only checkpoint: the config, raw weights from init seed `raw_seed` and an
 * EMA copy from `ema_seed` (so the two are distinguishable). */
static void write_checkpoint(ncsn_backend *be, const ncsn_config *cfg, const char *path, uint64_t raw_seed,
                             uint64_t ema_seed) {
    ncsn_model *m = ncsn_model_create(be, cfg);
    const ncsn_param_table *t = ncsn_model_table(m);
    float *raw = ncsn_xmalloc(t->total * sizeof(float)), *ema = ncsn_xmalloc(t->total * sizeof(float));
    ncsn_model_init(m, raw_seed);
    ncsn_copy_to_host(be, raw, ncsn_model_params(m), t->total * sizeof(float));
    ncsn_model_init(m, ema_seed);
    ncsn_copy_to_host(be, ema, ncsn_model_params(m), t->total * sizeof(float));
    ncsn_checkpoint_data d;
    memset(&d, 0, sizeof d);
    d.params = raw;
    d.ema = ema;
    int v2 = cfg->model.arch == NCSN_ARCH_NCSNV2 || cfg->model.arch == NCSN_ARCH_NCSNV2_DEEPER ||
             cfg->model.arch == NCSN_ARCH_NCSNV2_DEEPEST;
    d.sigmas = v2 ? (float *)ncsn_model_sigmas_host(m) : NULL;
    d.num_levels = v2 ? ncsn_model_num_levels(m) : 0;
    d.step = 7;
    ncsn_checkpoint_save(path, t, &d, cfg->text, ncsn_arch_name(cfg->model.arch));
    free(raw);
    free(ema);
    ncsn_model_free(m);
}

/* The samples `ncsn sample` should write: core API, seed, config options, given weights. */
static uint8_t *expected_uint8(ncsn_backend *be, const ncsn_config *cfg, uint64_t init_seed, uint64_t seed, int N) {
    ncsn_model *m = ncsn_model_create(be, cfg);
    ncsn_model_init(m, init_seed);
    ncsn_model_plan(m, N);
    int C, H, W;
    ncsn_model_input_shape(m, &C, &H, &W);
    ncsn_sampler_options o;
    ncsn_sampler_options_from_config(&o, cfg);
    o.seed = seed;
    size_t P = (size_t)C * H * W;
    float *x = sample_in_batches(be, ncsn_model_score_fn, m, ncsn_model_sigmas_host(m), ncsn_model_num_levels(m), C, H,
                                 W, N, N, &o);
    ncsn_sampler_output_host(x, (size_t)N * P, cfg);
    uint8_t *u8 = ncsn_xmalloc((size_t)N * P);
    for (int n = 0; n < N; n++) ncsn_to_uint8_hwc(u8 + (size_t)n * P, x + (size_t)n * P, C, H, W);
    free(x);
    ncsn_model_free(m);
    return u8;
}

/* Reads arr_0 of a stored (uncompressed) npz: checks the zip local header, the npy magic,
 * dtype |u1 and the shape; returns a pointer to the pixel data inside `file`. */
static const uint8_t *parse_npz(const uint8_t *file, size_t size, int64_t shape[4]) {
    if (size < 30 || file[0] != 'P' || file[1] != 'K' || file[2] != 3 || file[3] != 4) return NULL;
    unsigned method = file[8] | file[9] << 8;
    unsigned name_len = file[26] | file[27] << 8, extra_len = file[28] | file[29] << 8;
    if (method != 0 || 30 + name_len > size || memcmp(file + 30, "arr_0.npy", name_len) != 0) return NULL;
    const uint8_t *npy = file + 30 + name_len + extra_len;
    if (npy + 12 > file + size || memcmp(npy, "\x93NUMPY", 6) != 0) return NULL;
    size_t header_len, header_at;
    if (npy[6] == 1) {
        header_len = npy[8] | (size_t)npy[9] << 8;
        header_at = 10;
    } else {
        header_len = npy[8] | (size_t)npy[9] << 8 | (size_t)npy[10] << 16 | (size_t)npy[11] << 24;
        header_at = 12;
    }
    char header[1024];
    if (header_len >= sizeof header || npy + header_at + header_len > file + size) return NULL;
    memcpy(header, npy + header_at, header_len);
    header[header_len] = '\0';
    if (!strstr(header, "'descr': '|u1'") || !strstr(header, "'fortran_order': False")) return NULL;
    const char *sh = strstr(header, "'shape': (");
    long long d[4];
    if (!sh || sscanf(sh, "'shape': (%lld, %lld, %lld, %lld)", &d[0], &d[1], &d[2], &d[3]) != 4) return NULL;
    for (int i = 0; i < 4; i++) shape[i] = d[i];
    return npy + header_at + header_len;
}

/* ---- analytic scores ------------------------------------------------------------------- */

/* Score of N(0, I) perturbed with sigma: -x / (1 + sigma^2). */
typedef struct {
    const float *sigmas;
    size_t per_example;
} gauss_ctx;

static void gauss_score(void *vctx, float *score, const float *x, const int32_t *labels, int N) {
    const gauss_ctx *c = vctx;
    for (int n = 0; n < N; n++) {
        float s2 = c->sigmas[labels[n]] * c->sigmas[labels[n]];
        for (size_t i = 0; i < c->per_example; i++)
            score[(size_t)n * c->per_example + i] = -x[(size_t)n * c->per_example + i] / (1.0f + s2);
    }
}

static void zero_score(void *ctx, float *score, const float *x, const int32_t *labels, int N) {
    memset(score, 0, (size_t)N * *(const size_t *)ctx * sizeof(float));
}

static double variance_of(const float *x, size_t n) {
    double s = 0.0, ss = 0.0;
    for (size_t i = 0; i < n; i++) {
        s += x[i];
        ss += (double)x[i] * x[i];
    }
    return ss / n - (s / n) * (s / n);
}

/* ---- the tests ------------------------------------------------------------------------- */

static void test_step_size(void) {
    /* CIFAR-10 v2 (spec §5.1): sigma 50 -> 0.01, step_lr 6.2e-6: a_1 = 155 (numpy prints 155.0). */
    float sig[2] = {50.0f, 0.01f};
    float a1 = ncsn_langevin_step_size(6.2e-6, sig, 2, 0), aL = ncsn_langevin_step_size(6.2e-6, sig, 2, 1);
    EXPECT(a1 == 155.0f && aL == 6.2e-6f, "a_1 = %.9g (want 155), a_L = %.9g (want 6.2e-6)", (double)a1, (double)aL);
    ncsn_sampler_options o;
    ncsn_sampler_options_default(&o);
    o.n_steps_each = 5;
    EXPECT(ncsn_sampler_nfe(&o, 232) == 1161, "ALD NFE for CIFAR-10 v2: %ld (want 1161)", ncsn_sampler_nfe(&o, 232));
    o.kind = NCSN_SAMPLER_PC;
    o.n_steps_each = 1;
    EXPECT(ncsn_sampler_nfe(&o, 1000) == 2000, "PC NFE (N = 1000, 1 corrector): %ld", ncsn_sampler_nfe(&o, 1000));
}

static void test_determinism(ncsn_backend *be, const char *yaml, const char *name) {
    ncsn_config cfg;
    ncsn_config_parse(&cfg, yaml, name);
    ncsn_model *m = ncsn_model_create(be, &cfg);
    ncsn_model_init(m, 11);
    ncsn_model_plan(m, 16);
    int C, H, W, L = ncsn_model_num_levels(m);
    ncsn_model_input_shape(m, &C, &H, &W);
    const int N = 16;
    size_t count = (size_t)N * C * H * W;
    ncsn_sampler_options o;
    ncsn_sampler_options_from_config(&o, &cfg);
    o.seed = 5;
    const float *sig = ncsn_model_sigmas_host(m);
    float *b16 = sample_in_batches(be, ncsn_model_score_fn, m, sig, L, C, H, W, N, 16, &o);
    float *b7 = sample_in_batches(be, ncsn_model_score_fn, m, sig, L, C, H, W, N, 7, &o);
    float *b1 = sample_in_batches(be, ncsn_model_score_fn, m, sig, L, C, H, W, N, 1, &o);
    char what[128];
    snprintf(what, sizeof what, "%s ALD: batch 7 vs batch 16", name);
    expect_identical(what, b7, b16, count);
    snprintf(what, sizeof what, "%s ALD: batch 1 vs batch 16", name);
    expect_identical(what, b1, b16, count);
    /* The chain must actually move and differ between samples (else the test proves nothing). */
    double v = variance_of(b16, count);
    EXPECT(v > 1e-6 && isfinite(v), "%s: sample variance %.3g", name, v);

    /* PC: reproducible for the same batch, but batch-dependent (score_sde's batch-mean norms). */
    ncsn_sampler_options pc = o;
    pc.kind = NCSN_SAMPLER_PC;
    pc.init = NCSN_INIT_GAUSSIAN;
    pc.n_steps_each = 1;
    float *p16 = sample_in_batches(be, ncsn_model_score_fn, m, sig, L, C, H, W, N, 16, &pc);
    float *p16b = sample_in_batches(be, ncsn_model_score_fn, m, sig, L, C, H, W, N, 16, &pc);
    float *p7 = sample_in_batches(be, ncsn_model_score_fn, m, sig, L, C, H, W, N, 7, &pc);
    snprintf(what, sizeof what, "%s PC: same batch twice", name);
    expect_identical(what, p16, p16b, count);
    EXPECT(memcmp(p16, p7, count * sizeof(float)) != 0,
           "%s PC: batch 7 equals batch 16, but the corrector's step is a batch statistic", name);
    printf("  ok   %s PC: batch 7 differs from batch 16, as score_sde's batch-shared step size implies\n", name);
    free(b16);
    free(b7);
    free(b1);
    free(p16);
    free(p16b);
    free(p7);
    ncsn_model_free(m);
    ncsn_config_free(&cfg);
}

static void test_denoise_and_clamp(ncsn_backend *be) {
    ncsn_config cfg;
    ncsn_config_parse(&cfg, V2_TINY, "v2 tiny");
    ncsn_model *m = ncsn_model_create(be, &cfg);
    ncsn_model_init(m, 3);
    const int N = 3;
    ncsn_model_plan(m, N);
    int C, H, W, L = ncsn_model_num_levels(m);
    ncsn_model_input_shape(m, &C, &H, &W);
    size_t count = (size_t)N * C * H * W;
    const float *sig = ncsn_model_sigmas_host(m);
    ncsn_sampler_options o;
    ncsn_sampler_options_from_config(&o, &cfg);
    o.denoise = 0;
    float *plain = sample_in_batches(be, ncsn_model_score_fn, m, sig, L, C, H, W, N, N, &o);
    o.denoise = 1;
    float *den = sample_in_batches(be, ncsn_model_score_fn, m, sig, L, C, H, W, N, N, &o);
    /* expected: plain + sigma_L^2 * s(plain, L-1), with the same float ops as the backend */
    float *x = ncsn_alloc(be, count * sizeof(float)), *s = ncsn_alloc(be, count * sizeof(float));
    int32_t *labels = ncsn_alloc(be, N * sizeof(int32_t));
    int32_t lh[3] = {L - 1, L - 1, L - 1};
    ncsn_copy_to_device(be, labels, lh, sizeof lh);
    ncsn_copy_to_device(be, x, plain, count * sizeof(float));
    ncsn_model_forward(m, s, x, labels, N);
    float *sh = ncsn_xmalloc(count * sizeof(float));
    ncsn_copy_to_host(be, sh, s, count * sizeof(float));
    float *want = ncsn_xmalloc(count * sizeof(float));
    for (size_t i = 0; i < count; i++) want[i] = ncsn_denoise_element(plain[i], sh[i], sig[L - 1] * sig[L - 1]);
    expect_identical("denoise: final x = x + sigma_L^2 s(x, L-1)", den, want, count);
    double moved = 0.0;
    for (size_t i = 0; i < count; i++) moved = fmax(moved, fabs((double)den[i] - plain[i]));
    EXPECT(moved > 0.0, "denoise changed nothing (max |diff| %g)", moved);
    printf("  ok   denoise moves samples by up to %.3g (sigma_L = %g)\n", moved, (double)sig[L - 1]);

    /* The raw chain leaves [0, 1] (so clamping matters), and the output is clamped. */
    float lo = plain[0], hi = plain[0];
    for (size_t i = 0; i < count; i++) {
        lo = fminf(lo, plain[i]);
        hi = fmaxf(hi, plain[i]);
    }
    ncsn_sampler_output_host(plain, count, &cfg);
    float clo = plain[0], chi = plain[0];
    for (size_t i = 0; i < count; i++) {
        clo = fminf(clo, plain[i]);
        chi = fmaxf(chi, plain[i]);
    }
    printf("  chain range [%.3g, %.3g] -> output range [%.3g, %.3g]\n", (double)lo, (double)hi, (double)clo,
           (double)chi);
    EXPECT(clo >= 0.0f && chi <= 1.0f, "output outside [0,1]: [%g, %g]", (double)clo, (double)chi);
    float v[4] = {-0.5f, 0.25f, 1.0f, 1.75f};
    ncsn_sampler_output_host(v, 4, &cfg);
    EXPECT(v[0] == 0.0f && v[1] == 0.25f && v[2] == 1.0f && v[3] == 1.0f, "clamp: %g %g %g %g", (double)v[0],
           (double)v[1], (double)v[2], (double)v[3]);
    cfg.data.rescaled = 1;
    float r[3] = {-1.0f, 0.0f, 3.0f};
    ncsn_sampler_output_host(r, 3, &cfg);
    EXPECT(r[0] == 0.0f && r[1] == 0.5f && r[2] == 1.0f, "rescaled inverse: %g %g %g", (double)r[0], (double)r[1],
           (double)r[2]);
    cfg.data.rescaled = 0;
    free(plain);
    free(den);
    free(sh);
    free(want);
    ncsn_free(be, x);
    ncsn_free(be, s);
    ncsn_free(be, labels);
    ncsn_model_free(m);
    ncsn_config_free(&cfg);
}

static void test_closed_forms(ncsn_backend *be) {
    /* Gaussian target N(0, I) in 8 dims, 2000 samples: ALD and PC end near the variance
     * of q_{sigma_L}, 1 + sigma_L^2 = 1.01. With T = 20 the chain lags the shrinking
     * target a little: the same loops in float64 numpy (different noise) end at 1.052 (ALD)
     * and 1.044 (PC). The standard error of a variance from 16,000 values is ~0.011; an
     * update whose noise does not match its step (a s + sqrt(a) z, mixing the paper's and
     * the code's conventions) ends near half the variance, far outside the +-0.08 allowed. */
    enum { L = 30, N = 2000, P = 8 };
    float sig[L];
    for (int i = 0; i < L; i++) sig[i] = (float)exp(log(10.0) + (log(0.1) - log(10.0)) * i / (L - 1));
    gauss_ctx gc = {sig, P};
    ncsn_sampler_options o;
    ncsn_sampler_options_default(&o);
    o.step_lr = 0.002; /* a_L = 0.002: ULA bias on the variance ~a/2 = 0.001 */
    o.n_steps_each = 20;
    o.denoise = 0;
    o.seed = 77;
    float *ald = sample_in_batches(be, gauss_score, &gc, sig, L, P, 1, 1, N, N, &o);
    double v_ald = variance_of(ald, (size_t)N * P);
    o.kind = NCSN_SAMPLER_PC;
    o.init = NCSN_INIT_GAUSSIAN;
    o.n_steps_each = 1;
    o.snr = 0.16;
    o.denoise = 1;
    float *pc = sample_in_batches(be, gauss_score, &gc, sig, L, P, 1, 1, N, N, &o);
    double v_pc = variance_of(pc, (size_t)N * P);
    printf("  Gaussian target, variance of q_sigma_L = %.4f: ALD %.4f, PC %.4f\n", 1.0 + sig[L - 1] * sig[L - 1], v_ald,
           v_pc);
    EXPECT(fabs(v_ald - 1.05) < 0.08, "ALD variance %.4f, want 1.05 +- 0.08", v_ald);
    EXPECT(fabs(v_pc - 1.04) < 0.08, "PC variance %.4f, want 1.04 +- 0.08", v_pc);
    free(ald);
    free(pc);

    /* Inpainting with a zero score: the left half ends at ref + sigma_L z + sqrt(2 a_L) z'. */
    {
        enum { C = 1, H = 4, Wd = 6, NI = 3, LI = 3 };
        size_t per = (size_t)C * H * Wd;
        float isig[LI] = {1.0f, 0.1f, 0.01f};
        float refs[2 * C * H * Wd];
        for (size_t i = 0; i < 2 * per; i++) refs[i] = (float)(i % 7) / 7.0f;
        ncsn_sampler_options io;
        ncsn_sampler_options_default(&io);
        io.kind = NCSN_SAMPLER_INPAINT;
        io.step_lr = 1e-5;
        io.n_steps_each = 2;
        io.denoise = 0;
        io.per_reference = 2; /* samples 0, 1 -> ref 0; sample 2 -> ref 1 */
        io.seed = 9;
        size_t pe = per;
        ncsn_sampler *s = ncsn_sampler_create(be, zero_score, &pe, isig, LI, C, H, Wd, NI, &io);
        ncsn_sampler_set_references(s, refs, 2);
        float *x = ncsn_alloc(be, NI * per * sizeof(float));
        ncsn_sampler_run(s, x, 0, NI);
        float out[NI * C * H * Wd];
        ncsn_copy_to_host(be, out, x, sizeof out);
        double max_err = 0.0, right_dev = 0.0;
        uint32_t last = (uint32_t)(LI * io.n_steps_each - 1);
        float a = ncsn_langevin_step_size(io.step_lr, isig, LI, LI - 1);
        for (int n = 0; n < NI; n++)
            for (int h = 0; h < H; h++)
                for (int w = 0; w < Wd; w++) {
                    size_t i = (size_t)h * Wd + w;
                    const float *ref = refs + (size_t)(n / 2) * per;
                    float got = out[(size_t)n * per + i];
                    if (w < Wd / 2) {
                        double want = ref[i] + isig[LI - 1] * ncsn_rng_normal(9, NCSN_RNG_INPAINT, (uint32_t)n, last, i) +
                                      sqrt(2.0 * a) * ncsn_rng_normal(9, NCSN_RNG_LANGEVIN, (uint32_t)n, last, i);
                        max_err = fmax(max_err, fabs(got - want));
                    } else {
                        right_dev = fmax(right_dev, fabs(got - ref[i]));
                    }
                }
        printf("  inpainting (zero score): left half vs ref + sigma_L z + sqrt(2a) z': max err %.2e; right half "
               "free (max |x - ref| %.2f)\n",
               max_err, right_dev);
        EXPECT(max_err < 1e-6, "inpainting left half: max err %.3g", max_err);
        EXPECT(right_dev > 0.1, "inpainting right half stuck at the reference (%.3g)", right_dev);
        ncsn_free(be, x);
        ncsn_sampler_free(s);
    }

    /* Interpolation with a zero score: every sample of a row starts from the row's state,
     * and position j = 0 of a row receives exactly sqrt(2a) z_p at each step. */
    {
        enum { P2 = 5, NR = 4, LI = 2 };
        float isig[LI] = {1.0f, 0.5f};
        ncsn_sampler_options io;
        ncsn_sampler_options_default(&io);
        io.kind = NCSN_SAMPLER_INTERP;
        io.n_interpolations = 4;
        io.step_lr = 0.01;
        io.n_steps_each = 3;
        io.denoise = 0;
        io.seed = 21;
        size_t pe = P2;
        /* 8 samples = 2 rows of 4, generated in ragged batches of 3 (rows split across batches). */
        float *xs = sample_in_batches(be, zero_score, &pe, isig, LI, P2, 1, 1, 2 * NR, 3, &io);
        double max_err = 0.0;
        for (int row = 0; row < 2; row++)
            for (size_t i = 0; i < P2; i++) {
                double want = ncsn_rng_uniform(21, NCSN_RNG_SAMPLER_INIT, (uint32_t)row, 0, i);
                for (int lvl = 0; lvl < LI; lvl++) {
                    double a = ncsn_langevin_step_size(io.step_lr, isig, LI, lvl);
                    for (int t = 0; t < io.n_steps_each; t++)
                        want += sqrt(2.0 * a) *
                                ncsn_rng_normal(21, NCSN_RNG_LANGEVIN, 2u * row, (uint32_t)(lvl * io.n_steps_each + t), i);
                }
                max_err = fmax(max_err, fabs(xs[(size_t)(row * NR) * P2 + i] - want));
            }
        printf("  interpolation (zero score): j = 0 vs init(row) + sum sqrt(2a) z_p: max err %.2e\n", max_err);
        EXPECT(max_err < 1e-5, "interpolation j = 0: max err %.3g", max_err);
        free(xs);
    }
}

static void test_command(ncsn_backend *be) {
    ncsn_config cfg;
    ncsn_config_parse(&cfg, V2_TINY, "v2 tiny");
    if (!mkdtemp(scratch)) ncsn_die("mkdtemp %s: %s", scratch, strerror(errno));
    write_checkpoint(be, &cfg, at("@/ckpt.safetensors"), 100, 200);
    const int N = 10;
    int C = 1, H = 28, W = 28;
    size_t per = (size_t)C * H * W;

    /* --out DIR: one PNG per sample, equal to the core API's samples with the EMA weights. */
    EXPECT(run_sample("--checkpoint @/ckpt.safetensors --n 10 --batch 4 --out @/dir --seed 3 --device cpu") == 0,
           "sample --out DIR failed");
    uint8_t *want_ema = expected_uint8(be, &cfg, 200, 3, N);
    uint8_t *want_raw = expected_uint8(be, &cfg, 100, 3, 2);
    int png_ok = 1;
    for (int k = 0; k < N; k++) {
        char path[256];
        snprintf(path, sizeof path, "%s/dir/%06d.png", scratch, k);
        uint8_t *img = NULL;
        int h = 0, w = 0;
        struct stat sb;
        if (stat(path, &sb) != 0) {
            EXPECT(0, "missing %s", path);
            png_ok = 0;
            continue;
        }
        ncsn_image_read(path, C, &img, &h, &w);
        if (h != H || w != W || memcmp(img, want_ema + (size_t)k * per, per)) {
            EXPECT(0, "%s (%dx%d) differs from the core API's sample %d with EMA weights", path, h, w, k);
            png_ok = 0;
        }
        free(img);
    }
    struct stat sb;
    EXPECT(stat(at("@/dir/000010.png"), &sb) != 0, "wrote a PNG beyond --n");
    if (png_ok) printf("  ok   --out DIR: 000000.png..000009.png = core API samples (EMA weights)\n");

    /* --no-ema takes the raw weights. */
    EXPECT(run_sample("--checkpoint @/ckpt.safetensors --n 2 --batch 2 --out @/raw --seed 3 --no-ema "
                      "--device cpu") == 0, "sample --no-ema failed");
    {
        uint8_t *img = NULL;
        int h, w;
        ncsn_image_read(at("@/raw/000001.png"), C, &img, &h, &w);
        EXPECT(!memcmp(img, want_raw + per, per), "--no-ema sample 1 differs from the raw-weight core sample");
        EXPECT(memcmp(want_raw + per, want_ema + per, per) != 0, "EMA and raw weights give the same sample");
        free(img);
    }

    /* --shard 0/2 and 1/2 into another directory reproduce the same bytes. */
    EXPECT(run_sample("--checkpoint @/ckpt.safetensors --n 10 --batch 3 --out @/sh --seed 3 --shard 1/2 "
                      "--device cpu") == 0, "shard 1/2 failed");
    EXPECT(stat(at("@/sh/000004.png"), &sb) != 0 && stat(at("@/sh/000005.png"), &sb) == 0,
           "shard 1/2 of 10 should hold exactly samples 5..9");
    EXPECT(run_sample("--checkpoint @/ckpt.safetensors --n 10 --batch 3 --out @/sh --seed 3 --shard 0/2 "
                      "--device cpu") == 0, "shard 0/2 failed");
    int same = 1;
    for (int k = 0; k < N; k++) {
        char p[256], q[256];
        snprintf(p, sizeof p, "%s/dir/%06d.png", scratch, k);
        snprintf(q, sizeof q, "%s/sh/%06d.png", scratch, k);
        if (!files_equal(p, q)) {
            EXPECT(0, "%s differs from %s", q, p);
            same = 0;
        }
    }
    if (same) printf("  ok   --shard 0/2 + 1/2 (batch 3) == one run (batch 4): 10 PNGs byte-identical\n");

    /* Resume in DIR mode: delete two files, re-run, same bytes back. */
    {
        uint8_t *orig;
        size_t n_orig = file_bytes(at("@/dir/000006.png"), &orig);
        unlink(at("@/dir/000006.png"));
        unlink(at("@/dir/000009.png"));
        EXPECT(run_sample("--checkpoint @/ckpt.safetensors --n 10 --batch 4 --out @/dir --seed 3 "
                          "--device cpu") == 0, "DIR resume failed");
        uint8_t *back;
        size_t n_back = file_bytes(at("@/dir/000006.png"), &back);
        EXPECT(n_orig && n_orig == n_back && !memcmp(orig, back, n_orig), "resumed 000006.png differs");
        EXPECT(stat(at("@/dir/000009.png"), &sb) == 0, "resume did not rewrite 000009.png");
        free(orig);
        free(back);
    }

    /* A diverged chain (a step size that overflows) stops with one line naming the samples,
     * and writes none of them. */
    char divlog[600], divdir[600], first_png[700];
    snprintf(divlog, sizeof divlog, "%s/diverged.log", scratch);
    snprintf(divdir, sizeof divdir, "%s/diverged", scratch);
    snprintf(first_png, sizeof first_png, "%s/000000.png", divdir);
    int div_rc = run_sample_child_log("--checkpoint @/ckpt.safetensors --n 4 --batch 4 --out @/diverged --seed 3 "
                                      "--step-lr 1e38 --device cpu",
                                      divlog);
    uint8_t *div_bytes = NULL;
    size_t div_len = file_bytes(divlog, &div_bytes);
    char *div_text = div_bytes ? (char *)div_bytes : calloc(1, 1);
    div_text[div_len] = 0;
    EXPECT(div_rc == 1 && strstr(div_text, "the ald chain diverged") && strstr(div_text, "samples [0, 4)") &&
               access(first_png, F_OK) != 0,
           "--step-lr 1e38: exit %d, log:\n%s", div_rc, div_text);
    const char *div_line = strstr(div_text, "ncsn: ");
    printf("  ok   a diverged chain: exit %d: %s", div_rc, div_line ? div_line : div_text);
    free(div_text);

    /* A different seed into the same output is refused. */
    EXPECT(run_sample_child("--checkpoint @/ckpt.safetensors --n 10 --batch 4 --out @/dir --seed 4 "
                            "--device cpu") == 1, "a run with another seed was not refused");

    /* --out F.npz: interrupted after one batch, resumed, equals an uninterrupted run. */
    EXPECT(run_sample("--checkpoint @/ckpt.safetensors --n 10 --batch 4 --out @/a.npz --seed 3 "
                      "--max-batches 1 --device cpu") == 0, "npz first part failed");
    EXPECT(stat(at("@/a.npz"), &sb) != 0, "npz written although interrupted");
    EXPECT(stat(at("@/a.npz.parts/000000000-000000004.npy"), &sb) == 0, "first part missing");
    EXPECT(run_sample("--checkpoint @/ckpt.safetensors --n 10 --batch 5 --out @/a.npz --seed 3 "
                      "--device cpu") == 0, "npz resume failed");
    EXPECT(run_sample("--checkpoint @/ckpt.safetensors --n 10 --batch 10 --out @/b.npz --seed 3 "
                      "--device cpu") == 0, "npz in one go failed");
    EXPECT(files_equal(at("@/a.npz"), at("@/b.npz")), "interrupted+resumed npz differs from the uninterrupted one");
    {
        uint8_t *file;
        size_t size = file_bytes(at("@/a.npz"), &file);
        int64_t shape[4] = {0, 0, 0, 0};
        const uint8_t *pix = file ? parse_npz(file, size, shape) : NULL;
        EXPECT(pix && shape[0] == N && shape[1] == H && shape[2] == W && shape[3] == C,
               "npz arr_0: parse failed or shape (%lld, %lld, %lld, %lld)", (long long)shape[0], (long long)shape[1],
               (long long)shape[2], (long long)shape[3]);
        if (pix) {
            EXPECT(pix + (size_t)N * per <= file + size && !memcmp(pix, want_ema, (size_t)N * per),
                   "npz pixels differ from the core API's samples");
            printf("  ok   --out F.npz: interrupted (--max-batches 1) + resumed with another batch == one run; "
                   "arr_0 uint8 (10, 28, 28, 1) = the PNG samples\n");
        }
        free(file);
    }
    /* Complete: a re-run does nothing (and the npz is untouched). */
    EXPECT(run_sample("--checkpoint @/ckpt.safetensors --n 10 --batch 4 --out @/a.npz --seed 3 "
                      "--device cpu") == 0, "re-run of a complete npz failed");
    EXPECT(files_equal(at("@/a.npz"), at("@/b.npz")), "re-run changed the complete npz");

    /* --precision bf16, the sampler's default: the network runs bf16 NHWC end to end. The
     * chain state stays fp32 and the Langevin noise is the same, so the samples differ from
     * the fp32 ones only through the scores' bf16 error, which test_infer_bf16 bounds at 5e-2
     * relative L2 per evaluation and measures at ~1e-2; through a chain that moves x by O(1)
     * (U[0, 1) start to samples), that is at most 5e-2 of the pixel range in the L2 sense:
     * RMS pixel difference <= 0.05 * 255 = 12.75 levels. */
    {
        char bflog[600];
        snprintf(bflog, sizeof bflog, "%s/bf16.log", scratch);
        EXPECT(run_sample_child_log("--checkpoint @/ckpt.safetensors --n 10 --batch 10 --out @/bf16.npz --seed 3 "
                                    "--device cpu --precision bf16",
                                    bflog) == 0,
               "--precision bf16 failed");
        uint8_t *log_bytes = NULL;
        size_t log_len = file_bytes(bflog, &log_bytes);
        EXPECT(log_bytes && memmem(log_bytes, log_len, "bf16 NHWC activations end to end", 32),
               "--precision bf16 did not run the bf16 NHWC network (its log lacks the line)");
        free(log_bytes);
        uint8_t *file;
        size_t size = file_bytes(at("@/bf16.npz"), &file);
        int64_t shape[4] = {0, 0, 0, 0};
        const uint8_t *pix = file ? parse_npz(file, size, shape) : NULL;
        EXPECT(pix && shape[0] == N, "bf16 npz: parse failed");
        if (pix) {
            double sq = 0.0;
            int max_diff = 0;
            for (size_t i = 0; i < (size_t)N * per; i++) {
                int dlt = abs((int)pix[i] - (int)want_ema[i]);
                sq += (double)dlt * dlt;
                if (dlt > max_diff) max_diff = dlt;
            }
            const double rms = sqrt(sq / (double)((size_t)N * per));
            printf("  %s   --precision bf16 (bf16 NHWC network) vs fp32 samples: RMS %.3f levels (bound 12.75), "
                   "max %d levels\n",
                   rms <= 12.75 ? "ok" : "FAIL", rms, max_diff);
            EXPECT(rms <= 12.75, "bf16 samples RMS %.3f levels from the fp32 ones", rms);
        }
        free(file);
    }

    /* --out G.png: a grid of 10 with nrow ceil(sqrt(10)) = 4: 4 x 3 cells of 28 px + 2 px padding. */
    EXPECT(run_sample("--checkpoint @/ckpt.safetensors --n 10 --batch 4 --out @/grid.png --seed 3 "
                      "--device cpu") == 0, "grid failed");
    {
        uint8_t *img = NULL;
        int h = 0, w = 0;
        ncsn_image_read(at("@/grid.png"), 1, &img, &h, &w);
        EXPECT(w == 4 * (28 + 2) + 2 && h == 3 * (28 + 2) + 2, "grid is %dx%d, want %dx%d", w, h, 4 * 30 + 2,
               3 * 30 + 2);
        /* Cell (row 0, col 1) is sample 1. */
        int cell_ok = 1;
        for (int y = 0; y < H && cell_ok; y++)
            for (int x = 0; x < W; x++)
                if (img[(size_t)(2 + y) * w + 2 + 30 + x] != want_ema[per + (size_t)y * W + x]) {
                    cell_ok = 0;
                    break;
                }
        EXPECT(cell_ok, "grid cell (0, 1) is not sample 1");
        if (cell_ok) printf("  ok   --out grid.png: %dx%d, cell (0,1) = sample 1\n", w, h);
        free(img);
    }
    free(want_ema);
    free(want_raw);
    ncsn_config_free(&cfg);
}

/* The toy arch through the command: points to .npy (equal to the core API's chain from the
 * box around both modes), and the three-panel scatter plot. */
static void test_command_toy(ncsn_backend *be) {
    ncsn_config cfg;
    ncsn_config_parse(&cfg, TOY, "toy");
    write_checkpoint(be, &cfg, at("@/toy.safetensors"), 31, 32);
    EXPECT(run_sample("--checkpoint @/toy.safetensors --n 50 --out @/toy.npy --seed 8 --no-ema --device cpu") == 0,
           "toy sample to .npy failed");
    ncsn_npy a;
    ncsn_npy_read(&a, at("@/toy.npy"));
    EXPECT(a.dtype == NCSN_NPY_F32 && a.ndim == 2 && a.shape[0] == 50 && a.shape[1] == 2,
           "toy .npy: dtype %d, %d dims, shape [%lld, %lld]", (int)a.dtype, a.ndim, (long long)a.shape[0],
           (long long)a.shape[1]);
    ncsn_model *m = ncsn_model_create(be, &cfg);
    ncsn_model_init(m, 31);
    ncsn_model_plan(m, 50);
    ncsn_sampler_options o;
    ncsn_sampler_options_from_config(&o, &cfg);
    o.seed = 8;
    o.init_lo = -8.0f; /* toy_mean1 - 3 */
    o.init_hi = 8.0f;  /* toy_mean2 + 3 */
    float *want = sample_in_batches(be, ncsn_model_score_fn, m, ncsn_model_sigmas_host(m), ncsn_model_num_levels(m), 2,
                                    1, 1, 50, 50, &o);
    if (a.count == 100) expect_identical("toy --out F.npy vs core API (init box [-8, 8])", a.data, want, 100);
    free(want);
    ncsn_npy_free(&a);
    ncsn_model_free(m);

    EXPECT(run_sample("--checkpoint @/toy.safetensors --n 50 --out @/toy.png --seed 8 --device cpu") == 0,
           "toy scatter plot failed");
    uint8_t *img = NULL;
    int h = 0, w = 0;
    ncsn_image_read(at("@/toy.png"), 3, &img, &h, &w);
    /* 3 panels of 360 px, 36 px left margin, 24 px gaps, 18 px right; 30 px title, 36 px axis. */
    EXPECT(w == 36 + 3 * 360 + 2 * 24 + 18 && h == 30 + 360 + 36, "toy plot is %dx%d", w, h);
    free(img);
    ncsn_config_free(&cfg);
}

int main(void) {
    /* The chains here are thousands of tiny ops (the PC corrector alone makes one
     * sum_squares call per example per step, for its per-sample norms); at these sizes
     * OpenMP fork/join dominates, badly so on a loaded 2-core CI machine (measured: 7 s with
     * one thread, 90 s with two under load). Results are bit-identical for any thread
     * count, so the test runs single-threaded. */
    omp_set_num_threads(1);
    ncsn_backend *be = ncsn_backend_create_from_name("cpu");
    test_step_size();
    test_determinism(be, TOY, "toy");
    test_determinism(be, V2_TINY, "ncsnv2 28px");
    test_denoise_and_clamp(be);
    test_closed_forms(be);
    test_command(be);
    test_command_toy(be);
    ncsn_backend_destroy(be);
    if (harness_failures == 0) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", scratch);
        if (system(cmd) != 0) printf("  note: could not remove %s\n", scratch);
    } else {
        printf("  outputs kept in %s\n", scratch);
    }
    return harness_finish("test_sample");
}
