/* test_model_params.c: the parameter tables of the stock networks against the official
 * PyTorch models (spec §2, §3.4): total counts, conv MACs per forward, and every
 * state-dict key and shape, in order, against the key lists dumped from the original
 * classes (tests/data/keys_*.txt, copies of the spec's lists). Also the initialisation
 * convention on a small model (bounds, zero betas, determinism in the seed).
 *
 * The big models are only constructed (parameter and gradient buffers, no arena): MACs
 * are counted analytically at construction, nothing is run.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ncsn/backend.h"
#include "ncsn/config.h"
#include "ncsn/model.h"
#include "tests/harness.h"

static ncsn_backend *be;

static ncsn_config make_config(ncsn_arch arch, int channels, int image_size, int ngf, int L) {
    ncsn_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.model.arch = arch;
    cfg.model.arch_given = 1;
    cfg.model.ngf = ngf;
    cfg.model.num_classes = L;
    cfg.model.sigma_begin = 50.0;
    cfg.model.sigma_end = 0.01;
    cfg.model.hidden = 128;
    strcpy(cfg.model.sigma_dist, "geometric");
    strcpy(cfg.model.normalization, "InstanceNorm++");
    strcpy(cfg.model.nonlinearity, "elu");
    cfg.data.channels = channels;
    cfg.data.image_size = image_size;
    return cfg;
}

typedef struct {
    const char *what;
    ncsn_arch arch;
    int channels, image_size, ngf, L;
    size_t params;     /* spec §2 / §3.4 */
    double macs_g;     /* G MACs per forward per example, as the spec quotes it */
    double macs_unit;  /* the last quoted digit: the check allows half of it */
} count_case;

static void check_counts(const count_case *cc) {
    ncsn_config cfg = make_config(cc->arch, cc->channels, cc->image_size, cc->ngf, cc->L);
    ncsn_model *m = ncsn_model_create(be, &cfg);
    const ncsn_param_table *t = ncsn_model_table(m);
    double macs = ncsn_model_conv_macs(m) / 1e9;
    printf("  %-34s params %10zu (want %10zu)  conv MACs %8.4f G (spec %.4g G)\n", cc->what, t->total, cc->params,
           macs, cc->macs_g);
    EXPECT(t->total == cc->params, "%s: %zu parameters, want %zu", cc->what, t->total, cc->params);
    EXPECT(fabs(macs - cc->macs_g) <= 0.5 * cc->macs_unit, "%s: %.4f G MACs, spec %.4g G", cc->what, macs,
           cc->macs_g);
    /* The table tiles the buffer in order. */
    size_t off = 0;
    int tiled = 1;
    for (int i = 0; i < t->n; i++) {
        if (t->entries[i].offset != off) tiled = 0;
        off += t->entries[i].count;
    }
    EXPECT(tiled && off == t->total, "%s: table offsets are not contiguous", cc->what);
    ncsn_model_free(m);
}

/* Compares the table with a key list "name [d0, d1, ...]" per line ('#' comments; the
 * `sigmas` buffer is not a parameter). Prints the first differing lines. */
static void check_keys(const char *what, const ncsn_config *cfg, const char *path) {
    FILE *f = fopen(path, "r");
    EXPECT(f != NULL, "cannot open %s", path);
    if (!f) return;
    ncsn_model *m = ncsn_model_create(be, cfg);
    const ncsn_param_table *t = ncsn_model_table(m);
    char line[512];
    int i = 0, bad = 0, lines = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '#' || line[0] == '\0') continue;
        char name[256];
        int64_t shape[8];
        int ndim = 0;
        char *sp = strchr(line, ' ');
        if (!sp) continue;
        size_t len = (size_t)(sp - line);
        memcpy(name, line, len);
        name[len] = '\0';
        if (!strcmp(name, "sigmas")) continue;
        lines++;
        for (char *p = strchr(sp, '[') + 1; *p && *p != ']' && ndim < 8;) {
            shape[ndim++] = strtoll(p, &p, 10);
            while (*p == ',' || *p == ' ') p++;
        }
        int ok = i < t->n && !strcmp(t->entries[i].name, name) && t->entries[i].ndim == ndim;
        for (int d = 0; ok && d < ndim; d++) ok = t->entries[i].shape[d] == shape[d];
        if (!ok) {
            if (bad < 5) {
                printf("    %s line %d: want %s", what, lines, line);
                if (i < t->n) {
                    printf(", got %s [", t->entries[i].name);
                    for (int d = 0; d < t->entries[i].ndim; d++)
                        printf("%s%lld", d ? ", " : "", (long long)t->entries[i].shape[d]);
                    printf("]\n");
                } else {
                    printf(", got nothing (table has %d entries)\n", t->n);
                }
            }
            bad++;
        }
        i++;
    }
    fclose(f);
    EXPECT(bad == 0 && i == t->n, "%s: %d of %d keys differ; table has %d entries, list %d", what, bad, lines, t->n,
           lines);
    if (bad == 0 && i == t->n) printf("  ok   %s: %d keys, names and shapes equal to %s\n", what, lines, path);
    ncsn_model_free(m);
}

/* Initialisation convention (TEAM.md) on a small v1 model: conv tensors within their
 * bound, CondIN++ beta columns zero and gamma/alpha near 1, same seed -> same values,
 * another seed -> different values. Exact values are checked against PyTorch by the
 * fixture test; this pins the rules down independently. */
static void check_init(void) {
    ncsn_config cfg = make_config(NCSN_ARCH_NCSN, 3, 16, 8, 4);
    ncsn_model *m = ncsn_model_create(be, &cfg);
    const ncsn_param_table *t = ncsn_model_table(m);
    float *p = ncsn_xmalloc(t->total * sizeof(float)), *q = ncsn_xmalloc(t->total * sizeof(float));
    ncsn_model_init(m, 1234);
    ncsn_copy_to_host(be, p, ncsn_model_params(m), t->total * sizeof(float));
    int bad_bound = 0, bad_beta = 0, bad_gamma = 0, n_conv = 0, n_embed = 0;
    double max_frac = 0.0; /* largest |w| / bound over conv tensors: close to 1 for U(-b, b) */
    for (int i = 0; i < t->n; i++) {
        const ncsn_param_entry *e = &t->entries[i];
        const float *v = p + e->offset;
        if (strstr(e->name, "embed.weight")) {
            n_embed++;
            int64_t row = e->shape[1], C = row / 3;
            for (size_t k = 0; k < e->count; k++) {
                int64_t col = (int64_t)k % row;
                if (col >= 2 * C && v[k] != 0.0f) bad_beta++;
                if (col < 2 * C && fabsf(v[k] - 1.0f) > 0.15f) bad_gamma++; /* 7.5 sd of N(1, .02) */
            }
        } else {
            n_conv++;
            /* fan_in of a bias is its weight's (the previous entry). */
            const ncsn_param_entry *w = e->ndim == 4 ? e : e - 1;
            double bound = 1.0 / sqrt((double)(w->shape[1] * w->shape[2] * w->shape[3]));
            double mx = 0.0;
            for (size_t k = 0; k < e->count; k++) mx = fmax(mx, fabs(v[k]));
            if (mx > bound * (1 + 1e-6)) bad_bound++;
            if (e->ndim == 4 && e->count > 1000) max_frac = fmax(max_frac, mx / bound);
        }
    }
    EXPECT(bad_bound == 0, "%d of %d conv tensors exceed 1/sqrt(fan_in)", bad_bound, n_conv);
    EXPECT(bad_beta == 0, "%d CondIN++ beta entries are not 0", bad_beta);
    EXPECT(bad_gamma == 0, "%d CondIN++ gamma/alpha entries are far from 1", bad_gamma);
    EXPECT(max_frac > 0.99, "large conv tensors do not fill their bound (max |w|/b = %.4f)", max_frac);
    ncsn_model_init(m, 1234);
    ncsn_copy_to_host(be, q, ncsn_model_params(m), t->total * sizeof(float));
    EXPECT(!memcmp(p, q, t->total * sizeof(float)), "init is not deterministic in the seed");
    ncsn_model_init(m, 1235);
    ncsn_copy_to_host(be, q, ncsn_model_params(m), t->total * sizeof(float));
    size_t same = 0;
    for (size_t k = 0; k < t->total; k++) same += p[k] == q[k] && p[k] != 0.0f;
    EXPECT(same < t->total / 1000, "seeds 1234 and 1235 share %zu of %zu values", same, t->total);
    printf("  ok   init: %d conv tensors within bound (max |w|/b %.4f), %d CondIN++ tables, deterministic\n", n_conv,
           max_frac, n_embed);
    free(p);
    free(q);
    ncsn_model_free(m);
}

/* The stock configs (models/configs, official keys) build the network the official
 * runner would: get_model's dataset -> class mapping (spec §3) and the spec's counts. */
static void check_stock_configs(void) {
    static const struct {
        const char *path;
        ncsn_arch arch;
        size_t params;
    } stock[] = {
        {"models/configs/mnist_v1.yml", NCSN_ARCH_NCSN, 7638657},
        {"models/configs/cifar10_v1.yml", NCSN_ARCH_NCSN, 30117635},
        {"models/configs/celeba_v1.yml", NCSN_ARCH_NCSN, 30117635},
        {"models/configs/cifar10.yml", NCSN_ARCH_NCSNV2, 29694083},
        {"models/configs/celeba.yml", NCSN_ARCH_NCSNV2, 29694083},
        {"models/configs/ncsn_original.yml", NCSN_ARCH_NCSNV2, 29694083}, /* spec §3.5 */
        {"models/configs/church.yml", NCSN_ARCH_NCSNV2_DEEPER, 83445379},
        {"models/configs/bedroom.yml", NCSN_ARCH_NCSNV2_DEEPER, 83445379},
        {"models/configs/tower.yml", NCSN_ARCH_NCSNV2_DEEPER, 83445379},
        {"models/configs/ffhq.yml", NCSN_ARCH_NCSNV2_DEEPEST, 94132611},
    };
    for (size_t i = 0; i < sizeof stock / sizeof stock[0]; i++) {
        ncsn_config cfg;
        ncsn_config_load(&cfg, stock[i].path);
        ncsn_model *m = ncsn_model_create(be, &cfg);
        size_t total = ncsn_model_table(m)->total;
        EXPECT(cfg.model.arch == stock[i].arch && total == stock[i].params, "%s: %s with %zu parameters, want %s with %zu",
               stock[i].path, ncsn_arch_name(cfg.model.arch), total, ncsn_arch_name(stock[i].arch), stock[i].params);
        printf("  %-36s %-15s L %4d  %10zu parameters\n", stock[i].path, ncsn_arch_name(cfg.model.arch),
               ncsn_model_num_levels(m), total);
        ncsn_model_free(m);
        ncsn_config_free(&cfg);
    }
}

int main(void) {
    be = harness_cpu_backend();

    printf("parameter counts and conv MACs (spec §2, §3.4)\n");
    const count_case cases[] = {
        {"NCSN v1, MNIST 28x28x1, ngf 64", NCSN_ARCH_NCSN, 1, 28, 64, 10, 7638657, 1.893, 0.001},
        {"NCSN v1, CIFAR-10 32x32x3, ngf 128", NCSN_ARCH_NCSN, 3, 32, 128, 10, 30117635, 9.893, 0.001},
        {"NCSNv2, CIFAR-10 32x32x3", NCSN_ARCH_NCSNV2, 3, 32, 128, 232, 29694083, 9.89, 0.01},
        {"NCSNv2, CelebA 64x64x3", NCSN_ARCH_NCSNV2, 3, 64, 128, 500, 29694083, 39.57, 0.01},
        {"NCSNv2Deeper, church 64x64x3", NCSN_ARCH_NCSNV2_DEEPER, 3, 64, 128, 788, 83445379, 37.75, 0.01},
        {"NCSNv2Deeper, bedroom 128x128x3", NCSN_ARCH_NCSNV2_DEEPER, 3, 128, 128, 1086, 83445379, 151.0, 0.1},
        {"NCSNv2Deepest, FFHQ 256x256x3", NCSN_ARCH_NCSNV2_DEEPEST, 3, 256, 128, 2311, 94132611, 419.5, 0.1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_counts(&cases[i]);

    printf("state-dict keys and shapes, in order\n");
    ncsn_config v1 = make_config(NCSN_ARCH_NCSN, 3, 32, 128, 10);
    check_keys("v1 CIFAR-10", &v1, "tests/data/keys_v1_cifar10.txt");
    ncsn_config v2 = make_config(NCSN_ARCH_NCSNV2, 3, 32, 128, 232);
    check_keys("NCSNv2 CIFAR-10", &v2, "tests/data/keys_v2_cifar10.txt");
    ncsn_config deeper = make_config(NCSN_ARCH_NCSNV2_DEEPER, 3, 128, 128, 1086);
    check_keys("NCSNv2Deeper 128", &deeper, "tests/data/keys_v2deeper_128.txt");

    printf("stock configs\n");
    check_stock_configs();

    printf("initialisation convention\n");
    check_init();

    printf("summary printed by ncsn_model_print_info (NCSNv2 CIFAR-10):\n");
    ncsn_model *m = ncsn_model_create(be, &v2);
    ncsn_model_print_info(m, stdout, 0);
    ncsn_model_free(m);

    ncsn_backend_destroy(be);
    return harness_finish("test_model_params");
}
