/* test_config.c: the YAML config reader (config.h) and the stock configs.
 *
 * Checks: every stock config in models/configs parses, with the architecture the official code
 * would build and the values of its file; the inference rule on inline configs; that
 * unknown keys, wrong types, bad YAML, duplicates and missing keys each stop with one
 * line naming the file and the key; and the noise schedule: the float32 sigmas of the
 * CIFAR-10 v2 and v1 schedules equal the spec's values bit for bit, and (when
 * /usr/bin/python3 has numpy) every stock schedule equals numpy's
 * np.exp(np.linspace(np.log(b), np.log(e), L)).astype(np.float32) bit for bit.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ncsn/config.h"
#include "tests/expect_die.h"
#include "tests/harness.h"

/* ---- stock configs ----------------------------------------------------------------------- */

typedef struct {
    const char *file;
    ncsn_arch arch;
    int is_v1;
    const char *dataset;
    int image_size, channels, ngf, L;
    double sigma_begin;
} stock_case;

static const stock_case stock[] = {
    {"mnist_v1.yml", NCSN_ARCH_NCSN, 1, "MNIST", 28, 1, 64, 10, 1},
    {"cifar10_v1.yml", NCSN_ARCH_NCSN, 1, "CIFAR10", 32, 3, 128, 10, 1},
    {"celeba_v1.yml", NCSN_ARCH_NCSN, 1, "CELEBA", 32, 3, 128, 10, 1},
    {"cifar10.yml", NCSN_ARCH_NCSNV2, 0, "CIFAR10", 32, 3, 128, 232, 50},
    {"celeba.yml", NCSN_ARCH_NCSNV2, 0, "CELEBA", 64, 3, 128, 500, 90},
    {"church.yml", NCSN_ARCH_NCSNV2_DEEPER, 0, "LSUN", 64, 3, 128, 788, 140},
    {"bedroom.yml", NCSN_ARCH_NCSNV2_DEEPER, 0, "LSUN", 128, 3, 128, 1086, 190},
    {"tower.yml", NCSN_ARCH_NCSNV2_DEEPER, 0, "LSUN", 128, 3, 128, 1086, 190},
    {"ffhq.yml", NCSN_ARCH_NCSNV2_DEEPEST, 0, "FFHQ", 256, 3, 128, 2311, 348},
    {"ncsn_original.yml", NCSN_ARCH_NCSNV2, 0, "CIFAR10", 32, 3, 128, 10, 1},
    {"fashion_mnist_small.yml", NCSN_ARCH_NCSNV2, 0, "FashionMNIST", 28, 1, -1, 64, -1},
    {"toy.yml", NCSN_ARCH_TOY, 0, "TOY", 1, 2, -1, 10, -1},
};
#define N_STOCK ((int)(sizeof(stock) / sizeof(stock[0])))

static void test_stock_configs(void) {
    printf("stock configs\n");
    for (int i = 0; i < N_STOCK; i++) {
        const stock_case *s = &stock[i];
        char path[256];
        snprintf(path, sizeof(path), "models/configs/%s", s->file);
        ncsn_config cfg;
        ncsn_config_load(&cfg, path);
        EXPECT(cfg.model.arch == s->arch, "%s: arch %s, want %s", s->file, ncsn_arch_name(cfg.model.arch),
               ncsn_arch_name(s->arch));
        EXPECT(cfg.is_v1 == s->is_v1, "%s: is_v1 %d, want %d", s->file, cfg.is_v1, s->is_v1);
        EXPECT(!strcmp(cfg.data.dataset, s->dataset), "%s: dataset %s", s->file, cfg.data.dataset);
        EXPECT(cfg.data.image_size == s->image_size && cfg.data.channels == s->channels, "%s: %dx%d", s->file,
               cfg.data.image_size, cfg.data.channels);
        if (s->ngf > 0) EXPECT(cfg.model.ngf == s->ngf, "%s: ngf %d", s->file, cfg.model.ngf);
        EXPECT(cfg.model.num_classes == s->L, "%s: L %d want %d", s->file, cfg.model.num_classes, s->L);
        if (s->sigma_begin > 0) EXPECT(cfg.model.sigma_begin == s->sigma_begin, "%s: sigma_begin %g", s->file, cfg.model.sigma_begin);
        char *text = (char *)file_read_all(path, NULL);
        EXPECT(text && cfg.text && !strcmp(text, cfg.text), "%s: cfg->text differs from the file", s->file);
        EXPECT(!strcmp(cfg.path, path), "%s: cfg->path '%s'", s->file, cfg.path);
        printf("  ok   %-24s %s%s, L=%d, sigma %g -> %g\n", s->file, ncsn_arch_name(cfg.model.arch),
               cfg.is_v1 ? " (v1 layout)" : "", cfg.model.num_classes, cfg.model.sigma_begin, cfg.model.sigma_end);
        free(text);
        ncsn_config_free(&cfg);
    }

    /* Values and defaults that matter downstream. */
    ncsn_config c;
    ncsn_config_load(&c, "models/configs/mnist_v1.yml");
    EXPECT(c.data.uniform_dequantization == 1, "v1 always dequantises (default true), got %d",
           c.data.uniform_dequantization);
    EXPECT(c.data.random_flip == 0 && c.optim.lr == 1e-3 && c.optim.eps == 1e-8 && c.model.ema == 0,
           "mnist_v1 flip %d lr %g eps %g ema %d", c.data.random_flip, c.optim.lr, c.optim.eps, c.model.ema);
    EXPECT(c.sampling.denoise == 0 && c.sampling.step_lr == 2e-5 && c.sampling.n_steps_each == 100 &&
               c.sampling.batch_size == 25,
           "v1 sampling defaults: denoise %d step_lr %g n_steps_each %d batch %d", c.sampling.denoise,
           c.sampling.step_lr, c.sampling.n_steps_each, c.sampling.batch_size);
    EXPECT(!strcmp(c.training.algo, "dsm") && c.training.anneal_power == 2.0 && c.training.n_iters == 200001,
           "mnist_v1 training");
    ncsn_config_free(&c);

    ncsn_config_load(&c, "models/configs/cifar10.yml");
    EXPECT(c.model.ema == 1 && c.model.ema_rate == 0.999 && c.sampling.step_lr == 0.0000062 &&
               c.sampling.n_steps_each == 5 && c.sampling.denoise == 1 && c.sampling.ckpt_id == 300000 &&
               c.optim.lr == 0.0001 && c.optim.eps == 1e-8 && c.data.uniform_dequantization == 0 &&
               c.data.random_flip == 1 && c.fast_fid.num_samples == 1000 && c.test.end_ckpt == 300000,
           "cifar10.yml values");
    EXPECT(c.training.keep_last == 0 && c.training.grad_clip == 0 && c.training.warmup == 0 &&
               c.training.log_freq == 100,
           "engine defaults keep_last %d grad_clip %g warmup %ld log_freq %ld", c.training.keep_last,
           c.training.grad_clip, c.training.warmup, c.training.log_freq);
    ncsn_config_free(&c);

    ncsn_config_load(&c, "models/configs/ffhq.yml");
    EXPECT(c.optim.eps == 0.001 && c.training.batch_size == 32, "ffhq eps %g batch %d", c.optim.eps,
           c.training.batch_size);
    ncsn_config_free(&c);

    ncsn_config_load(&c, "models/configs/church.yml");
    EXPECT(!strcmp(c.data.category, "church_outdoor"), "church category '%s'", c.data.category);
    ncsn_config_free(&c);

    /* ncsn_original.yml has no fast_fid/test sections: their defaults follow n_iters. */
    ncsn_config_load(&c, "models/configs/ncsn_original.yml");
    EXPECT(c.fast_fid.end_ckpt == 300000 && c.test.end_ckpt == 300000 && c.fast_fid.step_lr == 0.00002 &&
               c.fast_fid.n_steps_each == 100 && c.data.uniform_dequantization == 1 && c.sampling.denoise == 0,
           "ncsn_original defaults: fast_fid.end_ckpt %ld step_lr %g", c.fast_fid.end_ckpt, c.fast_fid.step_lr);
    ncsn_config_free(&c);

    ncsn_config_load(&c, "models/configs/toy.yml");
    EXPECT(c.data.toy_weight == 0.2 && c.data.toy_mean1 == -5 && c.data.toy_mean2 == 5 && c.model.hidden == 128,
           "toy values weight %g means %g %g hidden %d", c.data.toy_weight, c.data.toy_mean1, c.data.toy_mean2,
           c.model.hidden);
    ncsn_config_free(&c);
}

/* ---- inference on inline configs --------------------------------------------------------- */

static void infer_case(const char *what, const char *text, ncsn_arch want, int want_v1) {
    ncsn_config c;
    ncsn_config_parse(&c, text, what);
    EXPECT(c.model.arch == want && c.is_v1 == want_v1, "%s: got %s (v1 %d), want %s (v1 %d)", what,
           ncsn_arch_name(c.model.arch), c.is_v1, ncsn_arch_name(want), want_v1);
    if (c.model.arch == want && c.is_v1 == want_v1) printf("  ok   infer %s -> %s\n", what, ncsn_arch_name(want));
    ncsn_config_free(&c);
}

#define MODEL_V1 "model:\n  sigma_begin: 1\n  num_classes: 10\n  ngf: 8\n"
#define MODEL_V2 "model:\n  sigma_begin: 50\n  num_classes: 232\n  sigma_dist: geometric\n  ngf: 8\n"
#define DATA(ds, size) "data:\n  dataset: " #ds "\n  image_size: " #size "\n  channels: 3\n"

static void test_inference(void) {
    printf("architecture inference\n");
    infer_case("v1 by training.algo", "training:\n  algo: dsm\n" DATA(CIFAR10, 32) MODEL_V1, NCSN_ARCH_NCSN, 1);
    infer_case("v1 by model.batch_norm", DATA(CELEBA, 32) MODEL_V1 "  batch_norm: false\n", NCSN_ARCH_NCSN, 1);
    infer_case("v1 + a sampling section stays v1",
               "training:\n  algo: dsm\nsampling:\n  step_lr: 0.00002\n" DATA(CIFAR10, 32) MODEL_V1, NCSN_ARCH_NCSN, 1);
    infer_case("v2 CIFAR10", DATA(CIFAR10, 32) MODEL_V2, NCSN_ARCH_NCSNV2, 0);
    infer_case("v2 CELEBA", DATA(CELEBA, 64) MODEL_V2, NCSN_ARCH_NCSNV2, 0);
    infer_case("v2 LSUN", DATA(LSUN, 128) MODEL_V2, NCSN_ARCH_NCSNV2_DEEPER, 0);
    infer_case("v2 FFHQ", DATA(FFHQ, 256) MODEL_V2, NCSN_ARCH_NCSNV2_DEEPEST, 0);
    infer_case("v2 keys win over training.algo", "training:\n  algo: dsm\n" DATA(CIFAR10, 32) MODEL_V2,
               NCSN_ARCH_NCSNV2, 0);
    infer_case("neither layout: v2 by dataset", DATA(LSUN, 64) MODEL_V1, NCSN_ARCH_NCSNV2_DEEPER, 0);
    infer_case("TOY dataset", "data:\n  dataset: TOY\nmodel:\n  sigma_begin: 20\n  num_classes: 10\n", NCSN_ARCH_TOY,
               0);
    infer_case("explicit arch overrides the dataset", DATA(CIFAR10, 32) MODEL_V2 "  arch: ncsnv2_deepest\n",
               NCSN_ARCH_NCSNV2_DEEPEST, 0);
    infer_case("explicit arch ncsn on a v2 file", DATA(CIFAR10, 32) MODEL_V2 "  arch: ncsn\n", NCSN_ARCH_NCSN, 1);
    infer_case("dataset names are case-insensitive", DATA(cifar10, 32) MODEL_V2, NCSN_ARCH_NCSNV2, 0);

    for (int a = 0; a <= NCSN_ARCH_TOY; a++) {
        char text[512];
        snprintf(text, sizeof(text), DATA(NPY, 32) MODEL_V2 "  arch: %s\n", ncsn_arch_name((ncsn_arch)a));
        if (a == NCSN_ARCH_TOY) snprintf(text, sizeof(text), "data:\n  dataset: NPY\n" MODEL_V2 "  arch: toy\n");
        ncsn_config c;
        ncsn_config_parse(&c, text, "arch name roundtrip");
        EXPECT(c.model.arch == (ncsn_arch)a && c.model.arch_given, "model.arch %s parsed as %s",
               ncsn_arch_name((ncsn_arch)a), ncsn_arch_name(c.model.arch));
        ncsn_config_free(&c);
    }

    /* Defaults that depend on the layout. */
    ncsn_config c;
    ncsn_config_parse(&c, DATA(CIFAR10, 32) MODEL_V2 "sampling:\n  ckpt_id: null\n", "defaults");
    EXPECT(c.sampling.ckpt_id == -1 && c.sampling.denoise == 1 && c.optim.lr == 1e-4 && c.model.sigma_end == 0.01 &&
               !strcmp(c.model.normalization, "InstanceNorm++") && c.data.random_flip == 1,
           "v2 defaults: ckpt_id %ld denoise %d lr %g", c.sampling.ckpt_id, c.sampling.denoise, c.optim.lr);
    ncsn_config_free(&c);
    ncsn_config_parse(&c, "training:\n  algo: dsm\n  n_iters: 1001\ndata:\n  dataset: MNIST\n  image_size: 28\n  "
                          "channels: 1\n" MODEL_V1,
                      "defaults v1");
    EXPECT(c.data.random_flip == 0 && c.data.uniform_dequantization == 1 && c.optim.lr == 1e-3 &&
               c.test.end_ckpt == 1000 && c.training.snapshot_sampling == 0,
           "v1 defaults: flip %d dequant %d lr %g test.end_ckpt %ld", c.data.random_flip,
           c.data.uniform_dequantization, c.optim.lr, c.test.end_ckpt);
    ncsn_config_free(&c);
    /* YAML spellings PyYAML reads: yes/no booleans, exponent floats, quoted strings. */
    ncsn_config_parse(&c,
                      "data:\n  dataset: 'CIFAR10'\n  image_size: 32\n  channels: 3\n  random_flip: No\n" MODEL_V2 "  ema: yes\noptim:\n  lr: 2e-4\n  "
                                            "optimizer: \"Adam\"\n",
                      "spellings");
    EXPECT(c.data.random_flip == 0 && c.model.ema == 1 && c.optim.lr == 2e-4, "spellings: flip %d ema %d lr %g",
           c.data.random_flip, c.model.ema, c.optim.lr);
    ncsn_config_free(&c);
}

/* ---- errors ------------------------------------------------------------------------------ */

static void load_file(void *arg) {
    ncsn_config c;
    ncsn_config_load(&c, (const char *)arg);
}

static void error_case(const char *name, const char *text, const char *want1, const char *want2) {
    static char path[512];
    snprintf(path, sizeof(path), "%s/%s.yml", scratch_dir, name);
    write_text_file(path, text);
    char prefix[600];
    snprintf(prefix, sizeof(prefix), "ncsn: %s", path); /* every message names the file */
    const char *want[] = {prefix, want1, want2, NULL};
    expect_die(name, load_file, path, want, 1);
}

static void test_errors(void) {
    printf("errors\n");
    const char *base = DATA(CIFAR10, 32) MODEL_V2;
    char text[2048];
    snprintf(text, sizeof(text), "%s  foo: 1\n", base);
    error_case("unknown_key", text, ": unknown key 'model.foo'", NULL);
    snprintf(text, sizeof(text), "%sfoo:\n  bar: 1\n", base);
    error_case("unknown_section", text, ": unknown key 'foo'", NULL);
    error_case("wrong_type_int", DATA(CIFAR10, 32) "model:\n  sigma_begin: 50\n  num_classes: 232\n  ngf: abc\n",
               ": key 'model.ngf' expects an integer, got 'abc'", NULL);
    error_case("float_for_int", DATA(CIFAR10, 32) "model:\n  sigma_begin: 50\n  num_classes: 232.0\n  ngf: 8\n",
               "key 'model.num_classes' expects an integer, got '232.0'", NULL);
    snprintf(text, sizeof(text), "%soptim:\n  lr: fast\n", base);
    error_case("wrong_type_float", text, "key 'optim.lr' expects a number, got 'fast'", NULL);
    snprintf(text, sizeof(text), "%s  ema: maybe\n", base);
    error_case("wrong_type_bool", text, "key 'model.ema' expects a boolean (true/false), got 'maybe'", NULL);
    snprintf(text, sizeof(text), "%s  ema: 1\n", base);
    error_case("int_for_bool", text, "key 'model.ema' expects a boolean", NULL);
    error_case("quoted_number", DATA(CIFAR10, 32) "model:\n  sigma_begin: 50\n  num_classes: 232\n  ngf: '128'\n",
               "key 'model.ngf' expects an integer, got the quoted string '128'", NULL);
    snprintf(text, sizeof(text), "%s  ngf:\n    a: 1\n", DATA(CIFAR10, 32) "model:\n  sigma_begin: 50\n  num_classes: 232\n");
    error_case("mapping_for_int", text, "key 'model.ngf' expects an integer, got a mapping", NULL);
    snprintf(text, sizeof(text), "%s  nonlinearity: |\n    elu\n    relu\n", base);
    error_case("block_scalar", text, "key 'model.nonlinearity' expects a one-line string, got the block string 'elu?relu?'", NULL);
    snprintf(text, sizeof(text), "%soptim:\n  lr: |\n    0.1\n    0.2\n", base);
    error_case("block_scalar_number", text, "key 'optim.lr' expects a number, got the block string '0.1?0.2?'", NULL);
    snprintf(text, sizeof(text), "%s  sigma_end: null\n", base);
    error_case("null_value", text, "key 'model.sigma_end' expects a number, got null", NULL);
    error_case("bad_yaml_indent", "data:\n  dataset: CIFAR10\n   image_size: 32\n", ":3:", "YAML");
    error_case("bad_yaml_bracket", "data:\n  dataset: [CIFAR10\nmodel:\n  ngf: 1\n", "YAML", NULL);
    error_case("bad_yaml_tab", "data:\n\tdataset: CIFAR10\n", ":2:", "YAML");
    snprintf(text, sizeof(text), "%s  ngf: 16\n", base);
    error_case("duplicate_key", text, "duplicate key 'model.ngf'", NULL);
    error_case("missing_num_classes", DATA(CIFAR10, 32) "model:\n  sigma_begin: 50\n  ngf: 8\n",
               "missing key 'model.num_classes'", NULL);
    error_case("missing_dataset", MODEL_V2, "missing key 'data.dataset'", NULL);
    error_case("cannot_infer", DATA(MNIST, 28) MODEL_V2, "cannot infer the network for data.dataset 'MNIST'",
               "model.arch");
    snprintf(text, sizeof(text), "%s  normalization: GroupNorm\n", base);
    error_case("unsupported_norm", text, "key 'model.normalization' must be InstanceNorm++", "'GroupNorm'");
    snprintf(text, sizeof(text), "%s  arch: resnet\n", base);
    error_case("bad_arch", text, "key 'model.arch' must be one of", "'resnet'");
    error_case("bad_dataset", DATA(IMAGENET, 32) MODEL_V2, "key 'data.dataset' must be one of", "'IMAGENET'");
    snprintf(text, sizeof(text), "%s  spec_norm: true\n", base);
    error_case("spec_norm", text, "key 'model.spec_norm' must be false", NULL);
    error_case("zero_levels", DATA(CIFAR10, 32) "model:\n  sigma_begin: 50\n  num_classes: 0\n  ngf: 8\n",
               "key 'model.num_classes' must be >= 1, got 0", NULL);
    error_case("sigma_order", DATA(CIFAR10, 32) "model:\n  sigma_begin: 0.001\n  num_classes: 10\n  ngf: 8\n",
               "model.sigma_begin (0.001) must be >= model.sigma_end (0.01)", NULL);
    snprintf(text, sizeof(text), "%s---\n%s", base, base);
    error_case("two_documents", text, "more than one YAML document", NULL);
    error_case("empty", "", "the config is empty", NULL);
    error_case("not_a_mapping", "- 1\n- 2\n", "must be a mapping of sections", NULL);
    error_case("empty_section", "sampling:\n" DATA(CIFAR10, 32) MODEL_V2, "section 'sampling' is empty", NULL);
    EXPECT_DIE2("missing file", load_file, "/nonexistent/config.yml", "ncsn: /nonexistent/config.yml: cannot open",
                "No such file");
}

/* ---- sigmas ------------------------------------------------------------------------------ */

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void expect_bits(const char *what, const float *got, const float *want, int n, int offset) {
    int bad = 0;
    for (int i = 0; i < n; i++)
        if (bits(got[i]) != bits(want[i])) {
            if (bad++ < 5)
                printf("    %s[%d]: got %.9g (0x%08x) want %.9g (0x%08x)\n", what, offset + i, got[i], bits(got[i]),
                       want[i], bits(want[i]));
        }
    EXPECT(bad == 0, "%s: %d of %d values differ", what, bad, n);
    if (!bad) printf("  ok   %s: %d values bit-identical\n", what, n);
}

/* v as numpy prints a float32 array: the shortest decimal that reads back as v, cut to
 * at most 8 decimals (then rounded at the 8th), trailing zeros removed. */
static void print8(char *out, size_t cap, float v) {
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(out, cap, "%.*g", digits, (double)v);
        if (strtof(out, NULL) == v) break;
    }
    const char *dot = strchr(out, '.');
    if (strchr(out, 'e') || (dot && strlen(dot + 1) > 8)) snprintf(out, cap, "%.8f", (double)v);
    if (strchr(out, '.')) {
        char *end = out + strlen(out) - 1;
        while (end > out && *end == '0') *end-- = '\0';
        if (*end == '.') *end = '\0';
    }
}

/* The first three and last three of L sigmas against their printed forms. */
static void expect_printed(const char *what, const float *s, int L, const char *const *printed) {
    int bad = 0;
    for (int k = 0; k < 6; k++) {
        int i = k < 3 ? k : L - 6 + k;
        char buf[64];
        print8(buf, sizeof(buf), s[i]);
        if (strcmp(buf, printed[k]) && bad++ < 5) printf("    %s[%d]: %s, spec %s\n", what, i, buf, printed[k]);
    }
    EXPECT(bad == 0, "%s: %d of 6 differ", what, bad);
    if (!bad) printf("  ok   %s: 6 values equal the spec\n", what);
}

/* numpy's float32 schedule as hex bit patterns, via /usr/bin/python3. */
static int numpy_sigmas(double begin, double end, int L, const char *dist, float *out) {
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/python3 -c 'import numpy as np\n"
             "b, e, L = %.17g, %.17g, %d\n"
             "s = np.exp(np.linspace(np.log(b), np.log(e), L)) if \"%s\" == \"geometric\" else np.linspace(b, e, L)\n"
             "print(\" \".join(\"%%08x\" %% v for v in s.astype(np.float32).view(np.uint32)))'",
             begin, end, L, dist);
    FILE *p = popen(cmd, "r");
    if (!p) return 0;
    int n = 0;
    unsigned v;
    while (n < L && fscanf(p, "%8x", &v) == 1) {
        uint32_t u = v;
        memcpy(&out[n++], &u, 4);
    }
    return pclose(p) == 0 && n == L;
}

static void test_sigmas(void) {
    printf("sigmas\n");
    ncsn_config c;
    ncsn_config_load(&c, "models/configs/cifar10.yml");
    float s[2311];
    ncsn_config_sigmas(&c, s);
    /* spec ncsn.md §5.1 lists the first/last sigmas as numpy prints a float32 array (at
     * most 8 decimals). The first ones need no more digits, so they must match bit for
     * bit; all must print the same at 8 decimals. (Every value is also compared bit for
     * bit with numpy itself below.) */
    const float first[3] = {50.0f, 48.190025f, 46.445568f};
    expect_bits("cifar10 v2 first", s, first, 3, 0);
    const char *cifar_printed[6] = {"50", "48.190025", "46.445568", "0.01076529", "0.01037559", "0.01"};
    expect_printed("cifar10 v2 first/last as printed", s, 232, cifar_printed);
    ncsn_config_free(&c);

    ncsn_config_load(&c, "models/configs/cifar10_v1.yml");
    ncsn_config_sigmas(&c, s);
    const float v1_first[3] = {1.0f, 0.59948426f, 0.35938138f};
    expect_bits("v1 first", s, v1_first, 3, 0);
    const char *v1_printed[6] = {"1", "0.59948426", "0.35938138", "0.02782559", "0.01668101", "0.01"};
    expect_printed("v1 first/last as printed", s, 10, v1_printed);
    ncsn_config_free(&c);

    ncsn_config_parse(&c, DATA(CIFAR10, 32) "model:\n  sigma_begin: 7.3\n  num_classes: 1\n  ngf: 8\n", "L=1");
    ncsn_config_sigmas(&c, s);
    EXPECT(s[0] == 7.3f, "L = 1: sigma %.9g, want sigma_begin 7.3", s[0]);
    ncsn_config_free(&c);

    if (!have_python_numpy()) {
        printf("  skip numpy cross-check: /usr/bin/python3 with numpy not found\n");
        return;
    }
    for (int i = 0; i < N_STOCK; i++) {
        char path[256];
        snprintf(path, sizeof(path), "models/configs/%s", stock[i].file);
        ncsn_config_load(&c, path);
        float want[2311];
        int L = c.model.num_classes;
        ncsn_config_sigmas(&c, s);
        if (!numpy_sigmas(c.model.sigma_begin, c.model.sigma_end, L, c.model.sigma_dist, want)) {
            EXPECT(0, "numpy failed for %s", stock[i].file);
        } else {
            char what[300];
            snprintf(what, sizeof(what), "numpy %s", stock[i].file);
            expect_bits(what, s, want, L, 0);
        }
        ncsn_config_free(&c);
    }
    /* The 'uniform' option of get_sigmas. */
    ncsn_config_parse(&c, DATA(CIFAR10, 32) "model:\n  sigma_begin: 3\n  num_classes: 37\n  ngf: 8\n  sigma_dist: uniform\n",
                      "uniform");
    float want[37];
    ncsn_config_sigmas(&c, s);
    if (numpy_sigmas(3, 0.01, 37, "uniform", want)) expect_bits("numpy uniform schedule", s, want, 37, 0);
    else EXPECT(0, "numpy failed for the uniform schedule");
    ncsn_config_free(&c);
}

int main(void) {
    scratch_dir_create("test_config");
    test_stock_configs();
    test_inference();
    test_errors();
    test_sigmas();
    scratch_dir_remove();
    return harness_finish("test_config");
}
