/* cmd_model.c: `ncsn info`, `ncsn score` and `ncsn bench model`.
 *
 * info  : builds the network of a config and prints its architecture, tensor table and
 *         parameter count (no weights needed).
 * score : evaluates s_theta(x, sigma_y) of a checkpoint on an .npy batch.
 * bench model : forward and forward+backward throughput of a freshly initialised network,
 *         with the PyTorch peer (bench/torch_baseline.py) run in the same invocation.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#include "ncsn/backend.h"
#include "ncsn/checkpoint.h"
#include "ncsn/cli.h"
#include "ncsn/config.h"
#include "ncsn/io.h"
#include "ncsn/model.h"
#include "kernels/rng_math.h"

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Returns the value after `--name`, or NULL; dies on a dangling flag. */
static const char *flag_value(int argc, char **argv, const char *name) {
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], name)) {
            if (i + 1 >= argc) ncsn_die("%s needs a value", name);
            return argv[i + 1];
        }
    return NULL;
}

static void check_flags(int argc, char **argv, const char *const *known, const char *cmd) {
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "--", 2)) continue;
        int ok = 0;
        for (const char *const *k = known; *k; k++) ok |= !strcmp(argv[i], *k);
        if (!ok) ncsn_die("%s: unknown option '%s'", cmd, argv[i]);
    }
}

int ncsn_cmd_info(int argc, char **argv) {
    static const char *const known[] = {"--config", "--no-table", NULL};
    check_flags(argc, argv, known, "info");
    const char *path = flag_value(argc, argv, "--config");
    if (!path) ncsn_die("info: --config FILE.yml is required");
    int table = 1;
    for (int i = 0; i < argc; i++) table &= strcmp(argv[i], "--no-table") != 0;
    ncsn_config cfg;
    ncsn_config_load(&cfg, path);
    char err[256];
    ncsn_backend *be = ncsn_backend_create(NCSN_DEVICE_CPU, err, sizeof err);
    if (!be) ncsn_die("info: %s", err);
    ncsn_model *m = ncsn_model_create(be, &cfg);
    ncsn_model_print_info(m, stdout, table);
    ncsn_model_free(m);
    ncsn_backend_destroy(be);
    ncsn_config_free(&cfg);
    return 0;
}

/* Builds the model a checkpoint describes and loads its weights (cli.h). */
ncsn_model *ncsn_model_from_checkpoint(ncsn_backend *be, const char *ckpt_path, const char *config_path, int ema,
                                       ncsn_config *cfg, ncsn_loaded_model_info *info) {
    ncsn_checkpoint_file f;
    ncsn_checkpoint_open(&f, ckpt_path);
    if (config_path) {
        ncsn_config_load(cfg, config_path);
    } else {
        const char *text = ncsn_checkpoint_config_text(&f);
        if (!text) ncsn_die("%s: no config stored in the checkpoint; pass --config F.yml", ckpt_path);
        char origin[1100];
        snprintf(origin, sizeof origin, "%s (stored config)", ckpt_path);
        ncsn_config_parse(cfg, text, origin);
    }
    const char *arch = ncsn_checkpoint_arch(&f);
    if (arch && strcmp(arch, ncsn_arch_name(cfg->model.arch)))
        ncsn_die("%s: checkpoint is for architecture '%s', the config builds '%s'", ckpt_path, arch,
                 ncsn_arch_name(cfg->model.arch));
    ncsn_model *m = ncsn_model_create(be, cfg);
    const ncsn_param_table *t = ncsn_model_table(m);
    const int L = ncsn_model_num_levels(m);
    ncsn_checkpoint_data d;
    memset(&d, 0, sizeof d);
    d.params = ncsn_xmalloc(t->total * sizeof(float));
    d.ema = ema != 0 ? ncsn_xmalloc(t->total * sizeof(float)) : NULL;
    if (ncsn_safetensors_find(&f.st, "sigmas")) {
        d.num_levels = L;
        d.sigmas = ncsn_xmalloc((size_t)L * sizeof(float));
    }
    ncsn_checkpoint_load(&f, t, &d, ema == 1 ? NCSN_CKPT_NEED_EMA : NCSN_CKPT_MODEL);
    if (d.has_sigmas) {
        const float *ms = ncsn_model_sigmas_host(m);
        for (int i = 0; i < L; i++)
            if (fabsf(d.sigmas[i] - ms[i]) > 1e-6f * ms[i])
                ncsn_die("%s: sigmas[%d] = %.9g in the checkpoint but %.9g from the config's schedule", ckpt_path, i,
                         (double)d.sigmas[i], (double)ms[i]);
    }
    int used_ema = ema != 0 && d.has_ema;
    const float *w = used_ema ? d.ema : d.params;
    size_t bytes = t->total * sizeof(float);
    if (info) {
        info->step = (long long)d.step;
        info->used_ema = used_ema;
        uLong crc = crc32(0L, Z_NULL, 0);
        for (size_t off = 0; off < bytes; off += (size_t)1 << 30) {
            size_t len = bytes - off < ((size_t)1 << 30) ? bytes - off : (size_t)1 << 30;
            crc = crc32(crc, (const Bytef *)w + off, (uInt)len);
        }
        info->weights_crc = (uint32_t)crc;
    }
    ncsn_copy_to_device(be, ncsn_model_params(m), w, bytes);
    free(d.params);
    free(d.ema);
    free(d.sigmas);
    ncsn_checkpoint_close(&f);
    return m;
}

int ncsn_cmd_score(int argc, char **argv) {
    static const char *const known[] = {"--checkpoint", "--config", "--input", "--labels", "--out",
                                        "--device", "--batch", "--ema", "--no-ema", "--precision", NULL};
    check_flags(argc, argv, known, "score");
    const char *ckpt = flag_value(argc, argv, "--checkpoint"), *in = flag_value(argc, argv, "--input");
    const char *lab = flag_value(argc, argv, "--labels"), *out = flag_value(argc, argv, "--out");
    if (!ckpt || !in || !lab || !out)
        ncsn_die("score: --checkpoint C --input x.npy --labels y.npy --out s.npy are required");
    const char *b = flag_value(argc, argv, "--batch");
    int chunk = b ? atoi(b) : 32;
    if (chunk <= 0) ncsn_die("score: --batch must be positive");
    int use_ema = 0; /* the parameters unless --ema */
    for (int i = 0; i < argc; i++) use_ema |= !strcmp(argv[i], "--ema");

    ncsn_backend *be = ncsn_backend_create_from_name(flag_value(argc, argv, "--device"));
    const char *precision = flag_value(argc, argv, "--precision");
    ncsn_backend_set_precision(be, precision ? ncsn_precision_parse(precision, "--precision") : NCSN_PRECISION_FP32);
    ncsn_config cfg;
    ncsn_model *m = ncsn_model_from_checkpoint(be, ckpt, flag_value(argc, argv, "--config"), use_ema, &cfg, NULL);
    int C, H, W;
    ncsn_model_input_shape(m, &C, &H, &W);
    int L = ncsn_model_num_levels(m);

    ncsn_npy x, y;
    ncsn_npy_read(&x, in);
    if (x.dtype != NCSN_NPY_F32) ncsn_die("%s: expected float32 input, got another dtype", in);
    if (x.ndim != 4 || x.shape[1] != C || x.shape[2] != H || x.shape[3] != W) {
        char got[160] = "";
        for (int d = 0; d < x.ndim && d < 8; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "", (long long)x.shape[d]);
        ncsn_die("%s: expected shape [N, %d, %d, %d] (NCHW), got [%s]", in, C, H, W, got);
    }
    ncsn_npy_read(&y, lab);
    int64_t N = x.shape[0];
    if (y.ndim != 1 || y.shape[0] != N) ncsn_die("%s: expected shape [%lld] (one level per input)", lab, (long long)N);
    int32_t *labels = ncsn_xmalloc((size_t)N * sizeof(int32_t));
    for (int64_t n = 0; n < N; n++) {
        int64_t v;
        if (y.dtype == NCSN_NPY_I32) v = ((const int32_t *)y.data)[n];
        else if (y.dtype == NCSN_NPY_I64) v = ((const int64_t *)y.data)[n];
        else ncsn_die("%s: expected int32 or int64 level indices", lab);
        if (v < 0 || v >= L) ncsn_die("%s: label %lld at index %lld is outside [0, %d)", lab, (long long)v, (long long)n, L);
        labels[n] = (int32_t)v;
    }

    size_t D = (size_t)C * H * W;
    if (chunk > N) chunk = (int)(N > 0 ? N : 1);
    ncsn_model_plan(m, chunk);
    float *dx = ncsn_alloc(be, (size_t)chunk * D * sizeof(float));
    float *ds = ncsn_alloc(be, (size_t)chunk * D * sizeof(float));
    int32_t *dl = ncsn_alloc(be, (size_t)chunk * sizeof(int32_t));
    float *scores = ncsn_xmalloc((size_t)N * D * sizeof(float) + 1);
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
        int n = (int)(N - n0 < chunk ? N - n0 : chunk);
        ncsn_copy_to_device(be, dx, (const float *)x.data + (size_t)n0 * D, (size_t)n * D * sizeof(float));
        ncsn_copy_to_device(be, dl, labels + n0, (size_t)n * sizeof(int32_t));
        ncsn_model_forward(m, ds, dx, dl, n);
        ncsn_copy_to_host(be, scores + (size_t)n0 * D, ds, (size_t)n * D * sizeof(float));
    }
    ncsn_npy_write(out, NCSN_NPY_F32, 4, x.shape, scores);
    fprintf(stderr, "score: wrote %s [%lld, %d, %d, %d]\n", out, (long long)N, C, H, W);
    free(scores);
    free(labels);
    ncsn_free(be, dx);
    ncsn_free(be, ds);
    ncsn_free(be, dl);
    ncsn_npy_free(&x);
    ncsn_npy_free(&y);
    ncsn_model_free(m);
    ncsn_config_free(&cfg);
    ncsn_backend_destroy(be);
    return 0;
}

int ncsn_json_number(const char *json, const char *key, double *out) {
    char pattern[96];
    snprintf(pattern, sizeof pattern, "\"%s\"", key);
    const char *p = strstr(json, pattern);
    if (!p) return 0;
    p = strchr(p + strlen(pattern), ':');
    if (!p) return 0;
    return sscanf(p + 1, "%lf", out) == 1;
}

int ncsn_run_torch_baseline(const char *mode, const char *config, int batch, const char *extra, char *line,
                            size_t linelen) {
    FILE *probe = fopen("bench/torch_baseline.py", "r");
    if (!probe) {
        fprintf(stderr, "torch peer: bench/torch_baseline.py not found (run from the repository root)\n");
        return 0;
    }
    fclose(probe);
    if (strchr(config, '\'')) {
        fprintf(stderr, "torch peer: skipped (a quote in the config path)\n");
        return 0;
    }
    char cmd[4800];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 bench/torch_baseline.py --mode %s --config '%s' --batch %d %s --json",
             mode, config, batch, extra ? extra : "");
    FILE *f = popen(cmd, "r");
    if (!f) return 0;
    int found = 0;
    char buf[8192];
    while (fgets(buf, sizeof buf, f))
        if (buf[0] == '{') {
            snprintf(line, linelen, "%s", buf);
            found = 1;
        }
    int status = pclose(f);
    if (status != 0 || !found) {
        fprintf(stderr, "torch peer: '%s' failed (status %d; needs /usr/bin/python3 with PyTorch: apt-get install "
                        "python3-torch); no ratio printed\n",
                cmd, status);
        return 0;
    }
    return 1;
}

int ncsn_cmd_bench_model(int argc, char **argv) {
    static const char *const known[] = {"--config", "--batch", "--device", "--iters", "--no-torch", "--precision", NULL};
    check_flags(argc, argv, known, "bench model");
    const char *path = flag_value(argc, argv, "--config");
    if (!path) ncsn_die("bench model: --config FILE.yml is required");
    const char *b = flag_value(argc, argv, "--batch");
    const char *it = flag_value(argc, argv, "--iters");
    int batch = b ? atoi(b) : 32, iters = it ? atoi(it) : 5;
    if (batch <= 0 || iters <= 0) ncsn_die("bench model: --batch and --iters must be positive");
    int torch = 1;
    for (int i = 0; i < argc; i++) torch &= strcmp(argv[i], "--no-torch") != 0;

    ncsn_config cfg;
    ncsn_config_load(&cfg, path);
    ncsn_backend *be = ncsn_backend_create_from_name(flag_value(argc, argv, "--device"));
    const char *precision = flag_value(argc, argv, "--precision");
    ncsn_backend_set_precision(be, precision ? ncsn_precision_parse(precision, "--precision") : NCSN_PRECISION_FP32);
    ncsn_model *m = ncsn_model_create(be, &cfg);
    ncsn_model_init(m, 1234);
    ncsn_model_plan(m, batch);
    size_t D = ncsn_model_input_size(m);
    int L = ncsn_model_num_levels(m);
    float *x = ncsn_alloc(be, (size_t)batch * D * sizeof(float));
    float *score = ncsn_alloc(be, (size_t)batch * D * sizeof(float));
    int32_t *labels = ncsn_alloc(be, (size_t)batch * sizeof(int32_t));
    int32_t *host_labels = ncsn_xmalloc((size_t)batch * sizeof(int32_t));
    for (int n = 0; n < batch; n++) host_labels[n] = (int32_t)((n * 7919) % L);
    ncsn_copy_to_device(be, labels, host_labels, (size_t)batch * sizeof(int32_t));
    ncsn_fill_uniform(be, x, batch, D, 1, NCSN_RNG_SAMPLER_INIT, 0, 0);

    double macs = ncsn_model_conv_macs(m) * batch;
    /* warm-up: primitive creation and first-touch of the arena are not steady state */
    ncsn_model_forward(m, score, x, labels, batch);
    ncsn_model_zero_grads(m);
    ncsn_model_backward(m, NULL, score);
    ncsn_synchronize(be);

    double t0 = now_seconds();
    for (int i = 0; i < iters; i++) ncsn_model_forward(m, score, x, labels, batch);
    ncsn_synchronize(be);
    double fwd = (now_seconds() - t0) / iters;
    t0 = now_seconds();
    for (int i = 0; i < iters; i++) {
        ncsn_model_forward(m, score, x, labels, batch);
        ncsn_model_zero_grads(m);
        ncsn_model_backward(m, NULL, score);
    }
    ncsn_synchronize(be);
    double fwdbwd = (now_seconds() - t0) / iters;

    printf("bench model: %s (%s), batch %d, %s backend, %d iters\n", path, ncsn_arch_name(cfg.model.arch), batch,
           be->ops->name, iters);
    printf("  forward          %8.2f images/s  %7.1f GFLOP/s (conv)\n", batch / fwd, 2.0 * macs / fwd * 1e-9);
    printf("  forward+backward %8.2f images/s  %7.1f GFLOP/s (conv, 3x forward MACs)\n", batch / fwdbwd,
           6.0 * macs / fwdbwd * 1e-9);
    if (torch && be->kind == NCSN_DEVICE_CPU) {
        char line[4096];
        double tf, tfb;
        if (ncsn_run_torch_baseline("model", path, batch, NULL, line, sizeof line) &&
            ncsn_json_number(line, "fwd_images_per_s", &tf) && ncsn_json_number(line, "fwdbwd_images_per_s", &tfb)) {
            printf("  pytorch forward  %8.2f images/s  -> ncsn/pytorch %.2fx\n", tf, batch / fwd / tf);
            printf("  pytorch fwd+bwd  %8.2f images/s  -> ncsn/pytorch %.2fx\n", tfb, batch / fwdbwd / tfb);
        }
    }
    free(host_labels);
    ncsn_free(be, x);
    ncsn_free(be, score);
    ncsn_free(be, labels);
    ncsn_model_free(m);
    ncsn_backend_destroy(be);
    ncsn_config_free(&cfg);
    return 0;
}
