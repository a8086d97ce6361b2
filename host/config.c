/* config.c: the official NCSN / NCSNv2 YAML configuration (config.h), read with libyaml.
 *
 * The file is loaded as one libyaml document and walked section by section. Every key is
 * looked up in `key_specs` below, which is the whole contract: the keys of
 * ermongroup/ncsn configs/anneal.yml (and baseline.yml, scorenet.yml: training.ngpu,
 * noise_std, n_particles) and of ermongroup/ncsnv2 configs/{cifar10,celeba,church,bedroom,
 * tower,ffhq,ncsn_original}.yml, plus the engine extensions marked "engine". A key not in
 * the table, a duplicate key, or a value of the wrong type is a one-line error naming the
 * file and the dotted key, and exit(1).
 *
 * Values follow YAML 1.1 as PyYAML reads the official files, with one deliberate leniency:
 * a float key accepts exponent notation without a dot ("1e-3"), which PyYAML would read as
 * the STRING "1e-3" and the official Adam would then reject. Integer keys take decimal
 * integers only (PyYAML would turn "1.0" into a float that range() rejects); boolean keys
 * take true/false/yes/no/on/off in any of PyYAML's spellings, not 0/1 (the official code
 * tests `random_flip is False`, which 0 would not satisfy). A quoted value is a string.
 *
 * Which network (model.arch, engine key) when the file does not say:
 *   1. data.dataset TOY                                    -> toy
 *   2. the v1 layout                                       -> ncsn
 *      = the file has a key only the v1 code reads (training.algo, training.ngpu,
 *        training.noise_std, training.n_particles, model.batch_norm) and none of the model
 *        keys only the v2 code reads (model.ema, ema_rate, spec_norm, sigma_dist,
 *        normalization, nonlinearity). The v1 runner cannot run without training.algo
 *        and the v2 runner cannot run without model.sigma_dist / model.ema, so a file
 *        written for one repository is never taken for the other; a `sampling` section
 *        added to anneal.yml (to drive our sampler) keeps it v1.
 *   3. otherwise (v2 layout), as ncsnv2 runners/ncsn_runner.py:get_model does:
 *      CIFAR10, CELEBA -> ncsnv2; LSUN -> ncsnv2_deeper; FFHQ -> ncsnv2_deepest; any other
 *      dataset is an error asking for model.arch (the official get_model returns None).
 * An explicit model.arch decides the layout too (ncsn -> v1 defaults, others -> v2).
 *
 * Defaults for keys absent from the file (the official code reads most keys
 * unconditionally and raises AttributeError when one is missing; where it has a default
 * we take it, otherwise the value every official config uses, otherwise as noted):
 *   required, no default: data.dataset, model.sigma_begin, model.num_classes; for the
 *     image networks also data.image_size, data.channels, model.ngf.
 *   training: batch_size 128, n_epochs 500000, n_iters 200001 (anneal.yml), ngpu 1,
 *     noise_std 0.01 (scorenet.yml), algo dsm, snapshot_freq 5000, snapshot_sampling
 *     false for v1 (the v1 runner never samples while training) / true for v2,
 *     anneal_power 2 (the loss function's default), log_all_sigmas false, n_particles 1
 *     (baseline.yml); engine: grad_clip 0 (off), warmup 0 (off), keep_last 0 (keep all),
 *     log_freq 100 (the official test-loss period).
 *   sampling: v1 = what AnnealRunner.test hard-codes: batch_size 25, step_lr 2e-5,
 *     n_steps_each 100, denoise false; v2 = the defaults of models/__init__.py
 *     anneal_Langevin_dynamics: step_lr 8e-6, n_steps_each 200, denoise true, and
 *     batch_size 100 (cifar10.yml). Both: data_init false, ckpt_id null (-1: the latest
 *     checkpoint, as the v2 runner does for None), final_only TRUE (engine choice: the
 *     official v1 test() saves every step and the v2 function default is False; set
 *     final_only: false to get every step), fid false, num_samples4fid 10000,
 *     inpainting false, interpolation false, n_interpolations 15 (cifar10.yml).
 *   fast_fid: batch_size 1000, num_samples 1000, step_lr and n_steps_each = the sampling
 *     values (equal in every official config), begin_ckpt 5000, end_ckpt n_iters - 1,
 *     verbose false, ensemble false.
 *   test: begin_ckpt 5000, end_ckpt n_iters - 1, batch_size 100.
 *   data: category "", logit_transform false, uniform_dequantization TRUE for v1 (the v1
 *     runner always dequantises, x*255/256 + U/256, and ignores the key) / false for v2,
 *     gaussian_dequantization false, random_flip false for MNIST, FashionMNIST and TOY
 *     (anneal.yml's MNIST setting) / true otherwise (every other official config),
 *     rescaled false, num_workers 4; engine (toy, after the v1 toy runner's GMMDist
 *     0.8 N(5, I) + 0.2 N(-5, I)): toy_weight 0.2, toy_mean1 -5, toy_mean2 5,
 *     toy_size 10000; the toy network sees 2-D points, so channels 2, image_size 1.
 *   model: sigma_end 0.01, ema false, ema_rate 0.999, spec_norm false, sigma_dist
 *     geometric, normalization InstanceNorm++, nonlinearity elu, batch_norm false;
 *     engine: hidden 128 (toy MLP width).
 *   optim: weight_decay 0, optimizer Adam, lr 1e-3 (v1, anneal.yml) / 1e-4 (v2 configs),
 *     beta1 0.9, eps 1e-8 (PyTorch's default, which v1 uses), amsgrad false.
 *
 * Values are then checked against what this engine implements (Adam only, ELU only,
 * InstanceNorm++ only, no spectral norm, batch_norm false, dsm or ssm) and against their
 * ranges, each failure naming the key.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <yaml.h>

#include "ncsn/common.h"
#include "ncsn/config.h"

/* ---- the key table ----------------------------------------------------------------------- */

typedef enum { KEY_INT, KEY_LONG, KEY_DOUBLE, KEY_BOOL, KEY_STRING, KEY_ARCH } key_type;

typedef struct {
    const char *section, *name;
    key_type type;
    size_t offset; /* into ncsn_config */
    size_t size;   /* bytes of the field (string capacity) */
} key_spec;

#define KEY(sec, field, type) \
    {#sec, #field, type, offsetof(ncsn_config, sec.field), sizeof(((ncsn_config *)0)->sec.field)}

static const key_spec key_specs[] = {
    /* training (v1 anneal.yml, baseline.yml, scorenet.yml; v2 configs) */
    KEY(training, batch_size, KEY_INT),
    KEY(training, n_epochs, KEY_LONG),
    KEY(training, n_iters, KEY_LONG),
    KEY(training, ngpu, KEY_INT),
    KEY(training, noise_std, KEY_DOUBLE),
    KEY(training, algo, KEY_STRING),
    KEY(training, snapshot_freq, KEY_LONG),
    KEY(training, snapshot_sampling, KEY_BOOL),
    KEY(training, anneal_power, KEY_DOUBLE),
    KEY(training, log_all_sigmas, KEY_BOOL),
    KEY(training, n_particles, KEY_INT),
    KEY(training, grad_clip, KEY_DOUBLE), /* engine */
    KEY(training, warmup, KEY_LONG),      /* engine */
    KEY(training, keep_last, KEY_INT),    /* engine */
    KEY(training, log_freq, KEY_LONG),    /* engine */
    /* sampling (v2) */
    KEY(sampling, batch_size, KEY_INT),
    KEY(sampling, data_init, KEY_BOOL),
    KEY(sampling, step_lr, KEY_DOUBLE),
    KEY(sampling, n_steps_each, KEY_INT),
    KEY(sampling, ckpt_id, KEY_LONG), /* null allowed: -1 */
    KEY(sampling, final_only, KEY_BOOL),
    KEY(sampling, fid, KEY_BOOL),
    KEY(sampling, denoise, KEY_BOOL),
    KEY(sampling, num_samples4fid, KEY_INT),
    KEY(sampling, inpainting, KEY_BOOL),
    KEY(sampling, interpolation, KEY_BOOL),
    KEY(sampling, n_interpolations, KEY_INT),
    /* fast_fid (v2) */
    KEY(fast_fid, batch_size, KEY_INT),
    KEY(fast_fid, num_samples, KEY_INT),
    KEY(fast_fid, step_lr, KEY_DOUBLE),
    KEY(fast_fid, n_steps_each, KEY_INT),
    KEY(fast_fid, begin_ckpt, KEY_LONG),
    KEY(fast_fid, end_ckpt, KEY_LONG),
    KEY(fast_fid, verbose, KEY_BOOL),
    KEY(fast_fid, ensemble, KEY_BOOL),
    /* test (v2) */
    KEY(test, begin_ckpt, KEY_LONG),
    KEY(test, end_ckpt, KEY_LONG),
    KEY(test, batch_size, KEY_INT),
    /* data */
    KEY(data, dataset, KEY_STRING),
    KEY(data, category, KEY_STRING),
    KEY(data, image_size, KEY_INT),
    KEY(data, channels, KEY_INT),
    KEY(data, logit_transform, KEY_BOOL),
    KEY(data, uniform_dequantization, KEY_BOOL),
    KEY(data, gaussian_dequantization, KEY_BOOL),
    KEY(data, random_flip, KEY_BOOL),
    KEY(data, rescaled, KEY_BOOL),
    KEY(data, num_workers, KEY_INT),
    KEY(data, toy_weight, KEY_DOUBLE), /* engine */
    KEY(data, toy_mean1, KEY_DOUBLE),  /* engine */
    KEY(data, toy_mean2, KEY_DOUBLE),  /* engine */
    KEY(data, toy_size, KEY_INT),      /* engine */
    /* model */
    KEY(model, arch, KEY_ARCH), /* engine */
    KEY(model, sigma_begin, KEY_DOUBLE),
    KEY(model, sigma_end, KEY_DOUBLE),
    KEY(model, num_classes, KEY_INT),
    KEY(model, ema, KEY_BOOL),
    KEY(model, ema_rate, KEY_DOUBLE),
    KEY(model, spec_norm, KEY_BOOL),
    KEY(model, sigma_dist, KEY_STRING),
    KEY(model, normalization, KEY_STRING),
    KEY(model, nonlinearity, KEY_STRING),
    KEY(model, ngf, KEY_INT),
    KEY(model, batch_norm, KEY_BOOL),
    KEY(model, hidden, KEY_INT), /* engine */
    /* optim */
    KEY(optim, weight_decay, KEY_DOUBLE),
    KEY(optim, optimizer, KEY_STRING),
    KEY(optim, lr, KEY_DOUBLE),
    KEY(optim, beta1, KEY_DOUBLE),
    KEY(optim, eps, KEY_DOUBLE),
    KEY(optim, amsgrad, KEY_BOOL),
};
#define N_KEYS ((int)(sizeof(key_specs) / sizeof(key_specs[0])))

static const char *const section_names[] = {"training", "sampling", "fast_fid", "test", "data", "model", "optim"};
#define N_SECTIONS ((int)(sizeof(section_names) / sizeof(section_names[0])))

static const char *const arch_names[] = {"ncsn", "ncsnv2", "ncsnv2_deeper", "ncsnv2_deepest", "toy"};

const char *ncsn_arch_name(ncsn_arch arch) {
    if ((int)arch < 0 || (int)arch >= (int)(sizeof(arch_names) / sizeof(arch_names[0]))) return "unknown";
    return arch_names[arch];
}

/* ---- parse state ------------------------------------------------------------------------- */

typedef struct {
    ncsn_config *cfg;
    const char *origin;             /* file name or description, for errors */
    unsigned char seen[N_KEYS];     /* key present in the file */
    unsigned char section_seen[N_SECTIONS];
} parse_ctx;

static int key_index(const char *section, const char *name) {
    for (int i = 0; i < N_KEYS; i++)
        if (!strcmp(key_specs[i].section, section) && !strcmp(key_specs[i].name, name)) return i;
    return -1;
}

static int seen(const parse_ctx *pc, const char *section, const char *name) {
    int k = key_index(section, name);
    NCSN_CHECK(k >= 0);
    return pc->seen[k];
}

static void *field_ptr(ncsn_config *cfg, int k) { return (char *)cfg + key_specs[k].offset; }

/* ---- scalar conversion ------------------------------------------------------------------- */

static int is_plain(const yaml_node_t *node) { return node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE; }

static int scalar_is_null(const yaml_node_t *node) {
    if (!is_plain(node)) return 0;
    const char *s = (const char *)node->data.scalar.value;
    return !strcmp(s, "") || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

/* PyYAML's YAML 1.1 booleans. Returns 1/0, or -1 when the scalar is not one. */
static int parse_bool(const char *s) {
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (!strcmp(s, yes[i])) return 1;
        if (!strcmp(s, no[i])) return 0;
    }
    return -1;
}

/* A decimal integer with an optional sign. Returns 0 when s is not one or overflows. */
static int parse_integer(const char *s, long long *out) {
    const char *p = s;
    if (*p == '+' || *p == '-') p++;
    if (!isdigit((unsigned char)*p)) return 0;
    for (const char *q = p; *q; q++)
        if (!isdigit((unsigned char)*q)) return 0;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno == ERANGE || *end != '\0') return 0;
    *out = v;
    return 1;
}

/* A finite decimal number (integer, fraction or exponent form). No hex, inf or nan. */
static int parse_number(const char *s, double *out) {
    const char *p = s;
    if (*p == '+' || *p == '-') p++;
    if (!(isdigit((unsigned char)*p) || (*p == '.' && isdigit((unsigned char)p[1])))) return 0;
    for (const char *q = p; *q; q++)
        if (!(isdigit((unsigned char)*q) || *q == '.' || *q == 'e' || *q == 'E' || *q == '+' || *q == '-'))
            return 0;
    errno = 0;
    char *end = NULL;
    double v = strtod(s, &end);
    if (*end != '\0' || errno == ERANGE || !isfinite(v)) return 0;
    *out = v;
    return 1;
}

static const char *node_kind(const yaml_node_t *node) {
    switch (node->type) {
    case YAML_MAPPING_NODE: return "a mapping";
    case YAML_SEQUENCE_NODE: return "a list";
    default: return "nothing";
    }
}

static void die_type(const parse_ctx *pc, int k, const char *expects, const yaml_node_t *value) {
    const key_spec *ks = &key_specs[k];
    if (value->type != YAML_SCALAR_NODE)
        ncsn_die("%s: key '%s.%s' expects %s, got %s", pc->origin, ks->section, ks->name, expects, node_kind(value));
    if (scalar_is_null(value))
        ncsn_die("%s: key '%s.%s' expects %s, got null", pc->origin, ks->section, ks->name, expects);
    /* The value as one short line: a block scalar could span many. */
    char shown[64];
    const char *v = (const char *)value->data.scalar.value;
    size_t n = 0;
    for (; v[n] && n < sizeof(shown) - 4; n++) shown[n] = (unsigned char)v[n] < 0x20 ? '?' : v[n];
    snprintf(shown + n, sizeof(shown) - n, "%s", v[n] ? "..." : "");
    const yaml_scalar_style_t style = value->data.scalar.style;
    const char *kind = (style == YAML_SINGLE_QUOTED_SCALAR_STYLE || style == YAML_DOUBLE_QUOTED_SCALAR_STYLE)
                           ? "the quoted string "
                           : is_plain(value) ? "" : "the block string ";
    ncsn_die("%s: key '%s.%s' expects %s, got %s'%s'", pc->origin, ks->section, ks->name, expects, kind, shown);
}

static void set_value(parse_ctx *pc, int k, const yaml_node_t *value) {
    const key_spec *ks = &key_specs[k];
    void *dst = field_ptr(pc->cfg, k);
    const char *s = value->type == YAML_SCALAR_NODE ? (const char *)value->data.scalar.value : NULL;
    switch (ks->type) {
    case KEY_INT:
    case KEY_LONG: {
        long long v;
        /* sampling.ckpt_id: null means "the latest checkpoint" in the v2 runner. */
        if (!strcmp(ks->section, "sampling") && !strcmp(ks->name, "ckpt_id") && s && scalar_is_null(value)) {
            *(long *)dst = -1;
            return;
        }
        if (!s || !is_plain(value) || !parse_integer(s, &v)) die_type(pc, k, "an integer", value);
        if (ks->type == KEY_INT) {
            if (v < -2147483647LL || v > 2147483647LL)
                ncsn_die("%s: key '%s.%s': %s is out of range", pc->origin, ks->section, ks->name, s);
            *(int *)dst = (int)v;
        } else {
            *(long *)dst = (long)v;
        }
        return;
    }
    case KEY_DOUBLE: {
        double v;
        if (!s || !is_plain(value) || !parse_number(s, &v)) die_type(pc, k, "a number", value);
        *(double *)dst = v;
        return;
    }
    case KEY_BOOL: {
        int v = (s && is_plain(value)) ? parse_bool(s) : -1;
        if (v < 0) die_type(pc, k, "a boolean (true/false)", value);
        *(int *)dst = v;
        return;
    }
    case KEY_STRING: {
        if (!s || scalar_is_null(value)) die_type(pc, k, "a string", value);
        for (const char *q = s; *q; q++)
            if ((unsigned char)*q < 0x20) die_type(pc, k, "a one-line string", value);
        if (strlen(s) >= ks->size)
            ncsn_die("%s: key '%s.%s': value '%s' is longer than %zu characters", pc->origin, ks->section, ks->name,
                     s, ks->size - 1);
        memcpy(dst, s, strlen(s) + 1);
        return;
    }
    case KEY_ARCH: {
        if (!s || scalar_is_null(value)) die_type(pc, k, "an architecture name", value);
        for (int a = 0; a < (int)(sizeof(arch_names) / sizeof(arch_names[0])); a++) {
            if (!strcmp(s, arch_names[a])) {
                *(ncsn_arch *)dst = (ncsn_arch)a;
                pc->cfg->model.arch_given = 1;
                return;
            }
        }
        ncsn_die("%s: key 'model.arch' must be one of ncsn, ncsnv2, ncsnv2_deeper, ncsnv2_deepest, toy; got '%s'",
                 pc->origin, s);
    }
    }
}

/* ---- document walk ----------------------------------------------------------------------- */

static const char *scalar_key(const parse_ctx *pc, yaml_node_t *key, const char *where) {
    if (!key || key->type != YAML_SCALAR_NODE)
        ncsn_die("%s:%lu: %s: keys must be plain names, got %s", pc->origin,
                 key ? (unsigned long)key->start_mark.line + 1 : 0UL, where, key ? node_kind(key) : "nothing");
    return (const char *)key->data.scalar.value;
}

static void walk_section(parse_ctx *pc, yaml_document_t *doc, const char *section, yaml_node_t *map) {
    if (map->type != YAML_MAPPING_NODE) {
        if (map->type == YAML_SCALAR_NODE && scalar_is_null(map))
            ncsn_die("%s: section '%s' is empty (remove it or give it keys)", pc->origin, section);
        ncsn_die("%s: key '%s' expects a mapping of keys, got %s", pc->origin, section,
                 map->type == YAML_SCALAR_NODE ? "a single value" : node_kind(map));
    }
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(doc, p->value);
        const char *name = scalar_key(pc, kn, section);
        int k = key_index(section, name);
        if (k < 0) ncsn_die("%s: unknown key '%s.%s'", pc->origin, section, name);
        if (pc->seen[k]) ncsn_die("%s: duplicate key '%s.%s'", pc->origin, section, name);
        NCSN_CHECK(vn != NULL);
        pc->seen[k] = 1;
        set_value(pc, k, vn);
    }
}

static void die_yaml(const parse_ctx *pc, const yaml_parser_t *parser) {
    const char *problem = parser->problem ? parser->problem : "unknown libyaml error";
    if (parser->error == YAML_MEMORY_ERROR) ncsn_die("%s: out of memory while parsing YAML", pc->origin);
    if (parser->context)
        ncsn_die("%s:%lu:%lu: YAML syntax error: %s (%s at line %lu)", pc->origin,
                 (unsigned long)parser->problem_mark.line + 1, (unsigned long)parser->problem_mark.column + 1, problem,
                 parser->context, (unsigned long)parser->context_mark.line + 1);
    ncsn_die("%s:%lu:%lu: YAML error: %s", pc->origin, (unsigned long)parser->problem_mark.line + 1,
             (unsigned long)parser->problem_mark.column + 1, problem);
}

static void parse_document(parse_ctx *pc, const char *text) {
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) ncsn_die("%s: cannot initialise the YAML parser", pc->origin);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, strlen(text));
    if (!yaml_parser_load(&parser, &doc)) die_yaml(pc, &parser);
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) ncsn_die("%s: the config is empty", pc->origin);
    if (root->type != YAML_MAPPING_NODE)
        ncsn_die("%s: the config must be a mapping of sections (training, data, model, ...), got %s", pc->origin,
                 root->type == YAML_SCALAR_NODE ? "a single value" : node_kind(root));

    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(&doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(&doc, p->value);
        const char *name = scalar_key(pc, kn, "top level");
        int s = -1;
        for (int i = 0; i < N_SECTIONS; i++)
            if (!strcmp(section_names[i], name)) s = i;
        if (s < 0) ncsn_die("%s: unknown key '%s'", pc->origin, name);
        if (pc->section_seen[s]) ncsn_die("%s: duplicate key '%s'", pc->origin, name);
        pc->section_seen[s] = 1;
        walk_section(pc, &doc, name, vn);
    }
    yaml_document_delete(&doc);

    /* A second document ("---" then more YAML): PyYAML's yaml.load raises "expected a
     * single document in the stream"; so do we, rather than ignore half the file. */
    yaml_document_t extra;
    if (!yaml_parser_load(&parser, &extra)) die_yaml(pc, &parser);
    int has_extra = yaml_document_get_root_node(&extra) != NULL;
    yaml_document_delete(&extra);
    yaml_parser_delete(&parser);
    if (has_extra) ncsn_die("%s: more than one YAML document; a config is a single document", pc->origin);
}

/* ---- layout, architecture, defaults ------------------------------------------------------ */

static int dataset_is(const ncsn_config *cfg, const char *name) { return !strcasecmp(cfg->data.dataset, name); }

static void infer_arch(parse_ctx *pc) {
    ncsn_config *cfg = pc->cfg;
    if (cfg->model.arch_given) {
        cfg->is_v1 = cfg->model.arch == NCSN_ARCH_NCSN;
        return;
    }
    if (dataset_is(cfg, "TOY")) {
        cfg->model.arch = NCSN_ARCH_TOY;
        cfg->is_v1 = 0;
        return;
    }
    static const char *const v1_only[][2] = {
        {"training", "algo"}, {"training", "ngpu"}, {"training", "noise_std"},
        {"training", "n_particles"}, {"model", "batch_norm"}};
    static const char *const v2_only_model[] = {"ema", "ema_rate", "spec_norm", "sigma_dist", "normalization",
                                                "nonlinearity"};
    int has_v1 = 0, has_v2 = 0;
    for (size_t i = 0; i < sizeof(v1_only) / sizeof(v1_only[0]); i++) has_v1 |= seen(pc, v1_only[i][0], v1_only[i][1]);
    for (size_t i = 0; i < sizeof(v2_only_model) / sizeof(v2_only_model[0]); i++)
        has_v2 |= seen(pc, "model", v2_only_model[i]);
    if (has_v1 && !has_v2) {
        cfg->model.arch = NCSN_ARCH_NCSN;
        cfg->is_v1 = 1;
        return;
    }
    cfg->is_v1 = 0;
    if (dataset_is(cfg, "CIFAR10") || dataset_is(cfg, "CELEBA"))
        cfg->model.arch = NCSN_ARCH_NCSNV2;
    else if (dataset_is(cfg, "LSUN"))
        cfg->model.arch = NCSN_ARCH_NCSNV2_DEEPER;
    else if (dataset_is(cfg, "FFHQ"))
        cfg->model.arch = NCSN_ARCH_NCSNV2_DEEPEST;
    else
        ncsn_die("%s: cannot infer the network for data.dataset '%s' (the official NCSNv2 code builds one only for "
                 "CIFAR10, CELEBA, LSUN and FFHQ); set model.arch to ncsnv2, ncsnv2_deeper or ncsnv2_deepest",
                 pc->origin, cfg->data.dataset);
}

#define DEFAULT(sec, field, value)                                   \
    do {                                                             \
        if (!seen(pc, #sec, #field)) cfg->sec.field = (value);       \
    } while (0)
#define DEFAULT_STR(sec, field, value)                                                   \
    do {                                                                                 \
        if (!seen(pc, #sec, #field)) snprintf(cfg->sec.field, sizeof(cfg->sec.field), "%s", (value)); \
    } while (0)

static void require(const parse_ctx *pc, const char *section, const char *name, const char *why) {
    if (!seen(pc, section, name)) ncsn_die("%s: missing key '%s.%s' (%s)", pc->origin, section, name, why);
}

static void apply_defaults(parse_ctx *pc) {
    ncsn_config *cfg = pc->cfg;
    const int v1 = cfg->is_v1;
    const int toy = cfg->model.arch == NCSN_ARCH_TOY;

    DEFAULT(training, batch_size, 128);
    DEFAULT(training, n_epochs, 500000);
    DEFAULT(training, n_iters, 200001);
    DEFAULT(training, ngpu, 1);
    DEFAULT(training, noise_std, 0.01);
    DEFAULT_STR(training, algo, "dsm");
    DEFAULT(training, snapshot_freq, 5000);
    DEFAULT(training, snapshot_sampling, v1 ? 0 : 1);
    DEFAULT(training, anneal_power, 2.0);
    DEFAULT(training, log_all_sigmas, 0);
    DEFAULT(training, n_particles, 1);
    DEFAULT(training, grad_clip, 0.0);
    DEFAULT(training, warmup, 0);
    DEFAULT(training, keep_last, 0);
    DEFAULT(training, log_freq, 100);

    DEFAULT(sampling, batch_size, v1 ? 25 : 100);
    DEFAULT(sampling, data_init, 0);
    DEFAULT(sampling, step_lr, v1 ? 2e-5 : 8e-6);
    DEFAULT(sampling, n_steps_each, v1 ? 100 : 200);
    DEFAULT(sampling, ckpt_id, -1);
    DEFAULT(sampling, final_only, 1);
    DEFAULT(sampling, fid, 0);
    DEFAULT(sampling, denoise, v1 ? 0 : 1);
    DEFAULT(sampling, num_samples4fid, 10000);
    DEFAULT(sampling, inpainting, 0);
    DEFAULT(sampling, interpolation, 0);
    DEFAULT(sampling, n_interpolations, 15);

    DEFAULT(fast_fid, batch_size, 1000);
    DEFAULT(fast_fid, num_samples, 1000);
    DEFAULT(fast_fid, step_lr, cfg->sampling.step_lr);
    DEFAULT(fast_fid, n_steps_each, cfg->sampling.n_steps_each);
    DEFAULT(fast_fid, begin_ckpt, 5000);
    DEFAULT(fast_fid, end_ckpt, cfg->training.n_iters - 1);
    DEFAULT(fast_fid, verbose, 0);
    DEFAULT(fast_fid, ensemble, 0);

    DEFAULT(test, begin_ckpt, 5000);
    DEFAULT(test, end_ckpt, cfg->training.n_iters - 1);
    DEFAULT(test, batch_size, 100);

    DEFAULT_STR(data, category, "");
    DEFAULT(data, logit_transform, 0);
    DEFAULT(data, uniform_dequantization, v1 ? 1 : 0);
    DEFAULT(data, gaussian_dequantization, 0);
    DEFAULT(data, random_flip,
            (dataset_is(cfg, "MNIST") || dataset_is(cfg, "FashionMNIST") || dataset_is(cfg, "TOY")) ? 0 : 1);
    DEFAULT(data, rescaled, 0);
    DEFAULT(data, num_workers, 4);
    DEFAULT(data, toy_weight, 0.2);
    DEFAULT(data, toy_mean1, -5.0);
    DEFAULT(data, toy_mean2, 5.0);
    DEFAULT(data, toy_size, 10000);
    if (toy) {
        DEFAULT(data, channels, 2);
        DEFAULT(data, image_size, 1);
    }

    DEFAULT(model, sigma_end, 0.01);
    DEFAULT(model, ema, 0);
    DEFAULT(model, ema_rate, 0.999);
    DEFAULT(model, spec_norm, 0);
    DEFAULT_STR(model, sigma_dist, "geometric");
    DEFAULT_STR(model, normalization, "InstanceNorm++");
    DEFAULT_STR(model, nonlinearity, "elu");
    DEFAULT(model, batch_norm, 0);
    DEFAULT(model, hidden, 128);

    DEFAULT(optim, weight_decay, 0.0);
    DEFAULT_STR(optim, optimizer, "Adam");
    DEFAULT(optim, lr, v1 ? 1e-3 : 1e-4);
    DEFAULT(optim, beta1, 0.9);
    DEFAULT(optim, eps, 1e-8);
    DEFAULT(optim, amsgrad, 0);

    const char *no_default = "the official code has no default for it";
    require(pc, "model", "sigma_begin", no_default);
    require(pc, "model", "num_classes", no_default);
    if (!toy) {
        require(pc, "data", "image_size", no_default);
        require(pc, "data", "channels", no_default);
        require(pc, "model", "ngf", no_default);
    }
}

/* ---- value checks ------------------------------------------------------------------------ */

static void check_one_of(const parse_ctx *pc, const char *key, const char *value, const char *const *allowed, int n,
                         int case_insensitive, const char *note) {
    char list[256] = "";
    for (int i = 0; i < n; i++) {
        if (case_insensitive ? !strcasecmp(value, allowed[i]) : !strcmp(value, allowed[i])) return;
        size_t len = strlen(list);
        snprintf(list + len, sizeof(list) - len, "%s%s", i ? ", " : "", allowed[i]);
    }
    ncsn_die("%s: key '%s' must be %s%s%s; got '%s'", pc->origin, key, n > 1 ? "one of " : "", list, note, value);
}

static void check_range(const parse_ctx *pc, const char *key, double v, double lo, int lo_open, double hi,
                        int hi_open) {
    int ok = (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
    if (ok) return;
    char want[96];
    if (isinf(hi))
        snprintf(want, sizeof(want), "%s %g", lo_open ? ">" : ">=", lo);
    else
        snprintf(want, sizeof(want), "in %s%g, %g%s", lo_open ? "(" : "[", lo, hi, hi_open ? ")" : "]");
    ncsn_die("%s: key '%s' must be %s, got %.10g", pc->origin, key, want, v);
}

static void check_false(const parse_ctx *pc, const char *key, int v, const char *why) {
    if (v) ncsn_die("%s: key '%s' must be false: %s", pc->origin, key, why);
}

static void check_dataset(const parse_ctx *pc) {
    static const char *const datasets[] = {"MNIST", "FashionMNIST", "CIFAR10", "CELEBA", "LSUN",
                                           "FFHQ",  "FOLDER",       "NPY",     "TOY"};
    check_one_of(pc, "data.dataset", pc->cfg->data.dataset, datasets, 9, 1, " (case-insensitive)");
}

static void validate(const parse_ctx *pc) {
    const ncsn_config *cfg = pc->cfg;
    const double inf = INFINITY;

    static const char *const algos[] = {"dsm", "ssm"};
    check_one_of(pc, "training.algo", cfg->training.algo, algos, 2, 0, "");
    check_range(pc, "training.batch_size", cfg->training.batch_size, 1, 0, inf, 0);
    check_range(pc, "training.n_epochs", (double)cfg->training.n_epochs, 1, 0, inf, 0);
    check_range(pc, "training.n_iters", (double)cfg->training.n_iters, 1, 0, inf, 0);
    check_range(pc, "training.ngpu", cfg->training.ngpu, 0, 0, inf, 0);
    check_range(pc, "training.noise_std", cfg->training.noise_std, 0, 1, inf, 0);
    check_range(pc, "training.snapshot_freq", (double)cfg->training.snapshot_freq, 1, 0, inf, 0);
    check_range(pc, "training.n_particles", cfg->training.n_particles, 1, 0, inf, 0);
    check_range(pc, "training.grad_clip", cfg->training.grad_clip, 0, 0, inf, 0);
    check_range(pc, "training.warmup", (double)cfg->training.warmup, 0, 0, inf, 0);
    check_range(pc, "training.keep_last", cfg->training.keep_last, 0, 0, inf, 0);
    check_range(pc, "training.log_freq", (double)cfg->training.log_freq, 1, 0, inf, 0);

    check_range(pc, "sampling.batch_size", cfg->sampling.batch_size, 1, 0, inf, 0);
    check_range(pc, "sampling.step_lr", cfg->sampling.step_lr, 0, 1, inf, 0);
    check_range(pc, "sampling.n_steps_each", cfg->sampling.n_steps_each, 1, 0, inf, 0);
    check_range(pc, "sampling.ckpt_id", (double)cfg->sampling.ckpt_id, -1, 0, inf, 0);
    check_range(pc, "sampling.num_samples4fid", cfg->sampling.num_samples4fid, 0, 0, inf, 0);
    check_range(pc, "sampling.n_interpolations", cfg->sampling.n_interpolations, 1, 0, inf, 0);

    check_range(pc, "fast_fid.batch_size", cfg->fast_fid.batch_size, 1, 0, inf, 0);
    check_range(pc, "fast_fid.num_samples", cfg->fast_fid.num_samples, 0, 0, inf, 0);
    check_range(pc, "fast_fid.step_lr", cfg->fast_fid.step_lr, 0, 1, inf, 0);
    check_range(pc, "fast_fid.n_steps_each", cfg->fast_fid.n_steps_each, 1, 0, inf, 0);
    check_range(pc, "test.batch_size", cfg->test.batch_size, 1, 0, inf, 0);

    if (cfg->model.arch == NCSN_ARCH_TOY) {
        if (cfg->data.channels != 2 || cfg->data.image_size != 1)
            ncsn_die("%s: model.arch toy works on 2-D points: data.channels must be 2 and data.image_size 1 "
                     "(or leave both out), got %d and %d",
                     pc->origin, cfg->data.channels, cfg->data.image_size);
    } else {
        check_range(pc, "data.image_size", cfg->data.image_size, 1, 0, inf, 0);
        if (cfg->data.channels != 1 && cfg->data.channels != 3)
            ncsn_die("%s: key 'data.channels' must be 1 or 3, got %d", pc->origin, cfg->data.channels);
    }
    check_range(pc, "data.num_workers", cfg->data.num_workers, 0, 0, inf, 0);
    check_range(pc, "data.toy_weight", cfg->data.toy_weight, 0, 0, 1, 0);
    check_range(pc, "data.toy_size", cfg->data.toy_size, 1, 0, inf, 0);

    check_range(pc, "model.sigma_begin", cfg->model.sigma_begin, 0, 1, inf, 0);
    check_range(pc, "model.sigma_end", cfg->model.sigma_end, 0, 1, inf, 0);
    if (cfg->model.sigma_begin < cfg->model.sigma_end)
        ncsn_die("%s: model.sigma_begin (%g) must be >= model.sigma_end (%g): levels go from the largest sigma "
                 "down",
                 pc->origin, cfg->model.sigma_begin, cfg->model.sigma_end);
    check_range(pc, "model.num_classes", cfg->model.num_classes, 1, 0, inf, 0);
    check_range(pc, "model.ema_rate", cfg->model.ema_rate, 0, 0, 1, 0);
    check_false(pc, "model.spec_norm", cfg->model.spec_norm, "spectral normalisation is not implemented");
    check_false(pc, "model.batch_norm", cfg->model.batch_norm, "the NCSN networks have no batch normalisation");
    static const char *const dists[] = {"geometric", "uniform"};
    check_one_of(pc, "model.sigma_dist", cfg->model.sigma_dist, dists, 2, 0, "");
    static const char *const norms[] = {"InstanceNorm++"};
    check_one_of(pc, "model.normalization", cfg->model.normalization, norms, 1, 0,
                 " (the only normalisation this engine implements)");
    static const char *const acts[] = {"elu"};
    check_one_of(pc, "model.nonlinearity", cfg->model.nonlinearity, acts, 1, 0,
                 " (the only nonlinearity this engine implements)");
    if (cfg->model.arch != NCSN_ARCH_TOY) check_range(pc, "model.ngf", cfg->model.ngf, 1, 0, inf, 0);
    check_range(pc, "model.hidden", cfg->model.hidden, 1, 0, inf, 0);

    static const char *const optims[] = {"Adam"};
    check_one_of(pc, "optim.optimizer", cfg->optim.optimizer, optims, 1, 0,
                 " (the official code also knows RMSProp and SGD; this engine implements Adam)");
    check_range(pc, "optim.lr", cfg->optim.lr, 0, 1, inf, 0);
    check_range(pc, "optim.beta1", cfg->optim.beta1, 0, 0, 1, 1);
    check_range(pc, "optim.eps", cfg->optim.eps, 0, 0, inf, 0);
    check_range(pc, "optim.weight_decay", cfg->optim.weight_decay, 0, 0, inf, 0);
}

/* ---- public API -------------------------------------------------------------------------- */

void ncsn_config_parse(ncsn_config *cfg, const char *text, const char *origin) {
    NCSN_CHECK(cfg != NULL && text != NULL);
    if (!origin) origin = "<config>";
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->path, sizeof(cfg->path), "%s", origin);
    size_t len = strlen(text);
    cfg->text = ncsn_xmalloc(len + 1);
    memcpy(cfg->text, text, len + 1);

    parse_ctx pc;
    memset(&pc, 0, sizeof(pc));
    pc.cfg = cfg;
    pc.origin = origin;
    parse_document(&pc, cfg->text);
    /* data.dataset drives the inference, so it is checked first. */
    if (!seen(&pc, "data", "dataset")) ncsn_die("%s: missing key 'data.dataset'", origin);
    check_dataset(&pc);
    infer_arch(&pc);
    apply_defaults(&pc);
    validate(&pc);
}

void ncsn_config_load(ncsn_config *cfg, const char *path) {
    NCSN_CHECK(cfg != NULL && path != NULL);
    FILE *f = fopen(path, "rb");
    if (!f) ncsn_die("%s: cannot open: %s", path, strerror(errno));
    size_t cap = 4096, len = 0;
    char *text = ncsn_xmalloc(cap);
    for (;;) {
        if (len + 1 >= cap) {
            cap *= 2;
            char *bigger = realloc(text, cap);
            if (!bigger) ncsn_die("%s: out of memory reading the config", path);
            text = bigger;
        }
        size_t got = fread(text + len, 1, cap - 1 - len, f);
        len += got;
        if (got == 0) break;
    }
    if (ferror(f)) ncsn_die("%s: read error: %s", path, strerror(errno));
    fclose(f);
    text[len] = '\0';
    if (strlen(text) != len) ncsn_die("%s: the config contains a NUL byte; is it a text file?", path);
    ncsn_config_parse(cfg, text, path);
    free(text);
}

void ncsn_config_free(ncsn_config *cfg) {
    if (!cfg) return;
    free(cfg->text);
    cfg->text = NULL;
}

/* numpy.linspace(start, stop, num) in float64, element i, the way numpy computes it:
 * step = (stop - start) / (num - 1); y = i * step + start (two roundings, no fused
 * multiply-add: the product goes through a volatile so no compiler flag can contract
 * it); the last element is `stop` exactly. */
static double linspace_at(double start, double stop, int num, int i) {
    if (num == 1) return start;
    if (i == num - 1) return stop;
    const double div = (double)(num - 1);
    const double delta = stop - start;
    const double step = delta / div;
    volatile double prod;
    if (step == 0.0)
        prod = ((double)i / div) * delta; /* numpy's branch for a zero step */
    else
        prod = (double)i * step;
    return prod + start;
}

void ncsn_config_sigmas(const ncsn_config *cfg, float *out) {
    NCSN_CHECK(cfg != NULL && out != NULL);
    const int L = cfg->model.num_classes;
    NCSN_CHECK(L >= 1);
    if (!strcmp(cfg->model.sigma_dist, "uniform")) {
        /* get_sigmas 'uniform': np.linspace(begin, end, L), then .float(). */
        for (int i = 0; i < L; i++) out[i] = (float)linspace_at(cfg->model.sigma_begin, cfg->model.sigma_end, L, i);
        return;
    }
    NCSN_CHECKF(!strcmp(cfg->model.sigma_dist, "geometric"), "unknown sigma_dist '%s'", cfg->model.sigma_dist);
    /* np.exp(np.linspace(np.log(begin), np.log(end), L)) in float64, then .float(). */
    const double lb = log(cfg->model.sigma_begin), le = log(cfg->model.sigma_end);
    for (int i = 0; i < L; i++) out[i] = (float)exp(linspace_at(lb, le, L, i));
}
