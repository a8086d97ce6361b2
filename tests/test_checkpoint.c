/* test_checkpoint.c: the engine checkpoint (checkpoint.h) on a small parameter table.
 *
 * Checks: a full checkpoint (parameters, Adam m / v / vmax, EMA, sigmas, step, run state,
 * config text with quotes and newlines) loads back bit for bit; a model-only file (what
 * a converted official checkpoint is: model tensors and config, no format or optimizer)
 * loads for sampling and is refused, with the reason, for resuming; a checkpoint that
 * does not fit the model reports every missing, unexpected, mis-shaped and mis-typed
 * tensor on its own line and then exits 1 naming the file; a failed save (PATH.tmp
 * cannot be created) leaves the previous checkpoint intact; the run directory helpers
 * find the newest checkpoint_<step>.safetensors and prune all but the newest K.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ncsn/checkpoint.h"
#include "tests/expect_die.h"
#include "tests/harness.h"

/* A table built by hand (the layout ncsn_param_table_add produces: offsets in order). */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[4];
} entry_spec;

static void table_init(ncsn_param_table *t, const entry_spec *spec, int n) {
    memset(t, 0, sizeof(*t));
    t->entries = calloc((size_t)n, sizeof(*t->entries));
    t->n = t->cap = n;
    for (int i = 0; i < n; i++) {
        ncsn_param_entry *e = &t->entries[i];
        snprintf(e->name, sizeof(e->name), "%s", spec[i].name);
        e->ndim = spec[i].ndim;
        e->count = 1;
        for (int d = 0; d < e->ndim; d++) e->shape[d] = spec[i].shape[d], e->count *= (size_t)spec[i].shape[d];
        e->offset = t->total;
        t->total += e->count;
    }
}

static const entry_spec spec_a[] = {
    {"begin_conv.weight", 4, {4, 1, 3, 3}}, {"begin_conv.bias", 1, {4}}, {"normalizer.alpha", 1, {4}},
    {"end_conv.weight", 4, {1, 4, 3, 3}},   {"end_conv.bias", 1, {1}},
};
/* The same model with one tensor renamed and one reshaped. */
static const entry_spec spec_b[] = {
    {"begin_conv.weight", 4, {4, 3, 3, 3}}, {"begin_conv.bias", 1, {4}}, {"normalizer.gamma", 1, {4}},
    {"end_conv.weight", 4, {1, 4, 3, 3}},   {"end_conv.bias", 1, {1}},
};

static ncsn_param_table table_a, table_b;

static const char *config_text = "training:\n  batch_size: 128\n  algo: 'dsm'\ndata:\n  dataset: \"CIFAR10\"\n"
                                 "# a comment with \"quotes\", a \\ backslash and \xc3\xa9\n";

static float *random_floats(size_t n, uint32_t seed) {
    float *v = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        v[i] = ((float)(seed >> 8) / 16777216.0f - 0.5f) * 8.0f;
    }
    return v;
}

static int same_floats(const float *a, const float *b, size_t n) { return !memcmp(a, b, n * sizeof(float)); }

/* Globals the forked error cases use. */
static char path_full[512], path_model[512], path_params[512];
static float *P, *M, *V, *VMAX, *E, SIG[5];

static void save_full(const char *path, int64_t step) {
    ncsn_checkpoint_data d;
    memset(&d, 0, sizeof(d));
    d.params = P, d.adam_m = M, d.adam_v = V, d.adam_vmax = VMAX, d.ema = E, d.sigmas = SIG, d.num_levels = 5;
    d.step = step;
    d.state = (ncsn_run_state){42, 3, 17, 1, 99};
    ncsn_checkpoint_save(path, &table_a, &d, config_text, "ncsnv2");
}

static void test_roundtrip(void) {
    printf("full roundtrip\n");
    size_t n = table_a.total;
    P = random_floats(n, 1), M = random_floats(n, 2), V = random_floats(n, 3), VMAX = random_floats(n, 4);
    E = random_floats(n, 5);
    for (int i = 0; i < 5; i++) SIG[i] = 50.0f / (float)(1 << i);
    scratch_path(path_full, sizeof(path_full), "full.safetensors");
    save_full(path_full, 1234);
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path_full);
    struct stat sb;
    EXPECT(stat(tmp, &sb) != 0, "PATH.tmp left behind after a save");

    ncsn_checkpoint_file f;
    ncsn_checkpoint_open(&f, path_full);
    EXPECT(ncsn_checkpoint_config_text(&f) && !strcmp(ncsn_checkpoint_config_text(&f), config_text),
           "config text differs after the roundtrip");
    EXPECT(ncsn_checkpoint_arch(&f) && !strcmp(ncsn_checkpoint_arch(&f), "ncsnv2"), "arch metadata");
    ncsn_checkpoint_data d;
    memset(&d, 0, sizeof(d));
    d.params = calloc(n, 4), d.adam_m = calloc(n, 4), d.adam_v = calloc(n, 4), d.adam_vmax = calloc(n, 4);
    d.ema = calloc(n, 4), d.sigmas = calloc(5, 4), d.num_levels = 5;
    ncsn_checkpoint_load(&f, &table_a, &d, NCSN_CKPT_NEED_OPTIMIZER | NCSN_CKPT_NEED_EMA);
    EXPECT(same_floats(d.params, P, n) && same_floats(d.adam_m, M, n) && same_floats(d.adam_v, V, n) &&
               same_floats(d.adam_vmax, VMAX, n) && same_floats(d.ema, E, n) && same_floats(d.sigmas, SIG, 5),
           "arrays differ after the roundtrip");
    EXPECT(d.step == 1234 && d.state.seed == 42 && d.state.epoch == 3 && d.state.position == 17 &&
               d.state.test_epoch == 1 && d.state.test_position == 99,
           "step %lld / run state differ", (long long)d.step);
    EXPECT(d.has_optimizer && d.has_amsgrad && d.has_ema && d.has_sigmas, "has_* flags %d %d %d %d", d.has_optimizer,
           d.has_amsgrad, d.has_ema, d.has_sigmas);
    printf("  ok   %zu floats x 5 families + sigmas, step, run state and config text bit-identical\n", n);

    /* Sampling reads only the weights: the other arrays may be left out. */
    ncsn_checkpoint_data m;
    memset(&m, 0, sizeof(m));
    m.params = calloc(n, 4), m.num_levels = 5;
    ncsn_checkpoint_load(&f, &table_a, &m, NCSN_CKPT_MODEL);
    EXPECT(same_floats(m.params, P, n) && m.has_optimizer && m.has_ema, "model-only load of a full file");
    free(m.params);
    ncsn_checkpoint_close(&f);
    free(d.params), free(d.adam_m), free(d.adam_v), free(d.adam_vmax), free(d.ema), free(d.sigmas);
}

/* What tools/ writes for an official checkpoint: model tensors (with sigmas) and config. */
static void test_model_only(void) {
    printf("model-only file\n");
    scratch_path(path_model, sizeof(path_model), "converted.safetensors");
    ncsn_safetensors st;
    memset(&st, 0, sizeof(st));
    for (int i = 0; i < table_a.n; i++) {
        const ncsn_param_entry *e = &table_a.entries[i];
        ncsn_safetensors_add(&st, e->name, NCSN_DT_F32, e->ndim, e->shape, P + e->offset);
    }
    int64_t L = 5;
    ncsn_safetensors_add(&st, "sigmas", NCSN_DT_F32, 1, &L, SIG);
    ncsn_safetensors_set_meta(&st, "config", config_text);
    ncsn_safetensors_write(&st, path_model);
    ncsn_safetensors_free(&st);

    ncsn_checkpoint_file f;
    ncsn_checkpoint_open(&f, path_model);
    ncsn_checkpoint_data d;
    memset(&d, 0, sizeof(d));
    d.params = calloc(table_a.total, 4), d.sigmas = calloc(5, 4), d.num_levels = 5;
    d.adam_m = calloc(table_a.total, 4); /* present pointers are fine when the family is absent */
    ncsn_checkpoint_load(&f, &table_a, &d, NCSN_CKPT_MODEL);
    EXPECT(same_floats(d.params, P, table_a.total) && same_floats(d.sigmas, SIG, 5) && !d.has_optimizer &&
               !d.has_ema && d.has_sigmas && d.step == 0,
           "model-only file: params/sigmas/flags");
    printf("  ok   model tensors + sigmas + config load for sampling (no optimizer, no EMA, step 0)\n");
    free(d.params), free(d.sigmas), free(d.adam_m);
    ncsn_checkpoint_close(&f);
}

/* ---- mismatches (forked: each ends in exit 1) -------------------------------------------- */

typedef struct {
    const char *path;
    const ncsn_param_table *table;
    int need, num_levels, with_vmax;
} load_args;

static void load_case(void *arg) {
    const load_args *a = arg;
    ncsn_checkpoint_file f;
    ncsn_checkpoint_open(&f, a->path);
    ncsn_checkpoint_data d;
    memset(&d, 0, sizeof(d));
    d.params = calloc(a->table->total, 4);
    d.num_levels = a->num_levels;
    d.sigmas = calloc(8, 4);
    if (a->with_vmax) d.adam_vmax = calloc(a->table->total, 4);
    ncsn_checkpoint_load(&f, a->table, &d, a->need);
}

/* A single problem: its line, then the summary line. */
#define EXPECT_ONE_PROBLEM(what, arg, s1)                               \
    do {                                                                \
        const char *w_[] = {(s1), "1 problem:", NULL};                  \
        expect_die((what), load_case, (arg), w_, 2);                    \
    } while (0)

static void test_mismatch(void) {
    printf("mismatches\n");
    /* A params-only checkpoint of model A, loaded as model B. */
    scratch_path(path_params, sizeof(path_params), "params_only.safetensors");
    ncsn_checkpoint_data d;
    memset(&d, 0, sizeof(d));
    d.params = P;
    d.step = 7;
    ncsn_checkpoint_save(path_params, &table_a, &d, config_text, "ncsn");
    load_args a = {path_params, &table_b, NCSN_CKPT_MODEL, 0, 0};
    const char *want[] = {"missing tensor 'normalizer.gamma' [4]",
                          "tensor 'begin_conv.weight' has shape [4, 1, 3, 3], the model expects [4, 3, 3, 3]",
                          "unexpected tensor 'normalizer.alpha'",
                          "3 problems: the checkpoint (arch ncsn) does not match the model (5 parameter tensors)",
                          path_params, NULL};
    expect_die("renamed + reshaped tensor: one line each, then the summary", load_case, &a, want, 4);
    printf("%s", expect_die_output);

    /* The full file as model B: the families show the same problems, per family. */
    load_args b = {path_full, &table_b, NCSN_CKPT_NEED_OPTIMIZER, 5, 1};
    const char *want_b[] = {"missing tensor 'adam.m.normalizer.gamma' [4]", "unexpected tensor 'ema.normalizer.alpha'",
                            "tensor 'adam.vmax.begin_conv.weight' has shape [4, 1, 3, 3]", "15 problems", NULL};
    expect_die("full file, wrong model: families checked too", load_case, &b, want_b, 16);

    /* Resuming from a model-only file. */
    load_args c = {path_model, &table_a, NCSN_CKPT_NEED_OPTIMIZER, 5, 0};
    const char *want_c[] = {"missing Adam first moments (no adam.m.* tensors): this file cannot resume training",
                            "missing Adam second moments (no adam.v.* tensors)", "2 problems", NULL};
    expect_die("resume from a model-only file", load_case, &c, want_c, 3);
    load_args c2 = {path_model, &table_a, NCSN_CKPT_NEED_EMA, 5, 0};
    EXPECT_ONE_PROBLEM("EMA required but absent", &c2, "missing EMA shadow (no ema.* tensors)");

    /* sigmas: wrong L, and present for an architecture without the buffer. */
    load_args s1 = {path_model, &table_a, NCSN_CKPT_MODEL, 7, 0};
    EXPECT_ONE_PROBLEM("sigmas with a different L", &s1, "tensor 'sigmas' has shape [5], the model expects [7]");
    load_args s2 = {path_model, &table_a, NCSN_CKPT_MODEL, 0, 0};
    EXPECT_ONE_PROBLEM("sigmas for a v1 model", &s2, "unexpected tensor 'sigmas'");

    /* dtype, partial family, foreign format, bad metadata. */
    static char p_dtype[512], p_partial[512], p_format[512], p_step[512];
    ncsn_safetensors st;
    memset(&st, 0, sizeof(st));
    for (int i = 0; i < table_a.n; i++) {
        const ncsn_param_entry *e = &table_a.entries[i];
        ncsn_safetensors_add(&st, e->name, i == 4 ? NCSN_DT_I32 : NCSN_DT_F32, e->ndim, e->shape, P + e->offset);
    }
    scratch_path(p_dtype, sizeof(p_dtype), "dtype.safetensors");
    ncsn_safetensors_write(&st, p_dtype);
    ncsn_safetensors_free(&st);
    load_args t = {p_dtype, &table_a, NCSN_CKPT_MODEL, 0, 0};
    EXPECT_ONE_PROBLEM("wrong dtype", &t, "tensor 'end_conv.bias' has dtype I32, the model expects F32");

    memset(&st, 0, sizeof(st));
    char name[160];
    for (int i = 0; i < table_a.n; i++) {
        const ncsn_param_entry *e = &table_a.entries[i];
        ncsn_safetensors_add(&st, e->name, NCSN_DT_F32, e->ndim, e->shape, P + e->offset);
        snprintf(name, sizeof(name), "ema.%s", e->name);
        if (i != 2) ncsn_safetensors_add(&st, name, NCSN_DT_F32, e->ndim, e->shape, E + e->offset);
    }
    scratch_path(p_partial, sizeof(p_partial), "partial.safetensors");
    ncsn_safetensors_write(&st, p_partial);
    load_args pa = {p_partial, &table_a, NCSN_CKPT_MODEL, 0, 0};
    EXPECT_ONE_PROBLEM("incomplete EMA family", &pa, "missing tensor 'ema.normalizer.alpha' [4]");

    ncsn_safetensors_set_meta(&st, "format", "ncsn-checkpoint-99");
    scratch_path(p_format, sizeof(p_format), "format.safetensors");
    ncsn_safetensors_write(&st, p_format);
    load_args fo = {p_format, &table_a, NCSN_CKPT_MODEL, 0, 0};
    EXPECT_DIE1("unknown format", load_case, &fo, "checkpoint format 'ncsn-checkpoint-99' is not supported");
    ncsn_safetensors_free(&st);

    memset(&st, 0, sizeof(st));
    for (int i = 0; i < table_a.n; i++) {
        const ncsn_param_entry *e = &table_a.entries[i];
        ncsn_safetensors_add(&st, e->name, NCSN_DT_F32, e->ndim, e->shape, P + e->offset);
    }
    ncsn_safetensors_set_meta(&st, "step", "12a");
    scratch_path(p_step, sizeof(p_step), "step.safetensors");
    ncsn_safetensors_write(&st, p_step);
    ncsn_safetensors_free(&st);
    load_args so = {p_step, &table_a, NCSN_CKPT_MODEL, 0, 0};
    EXPECT_DIE1("bad step metadata", load_case, &so, "metadata 'step' is not a decimal integer: '12a'");
}

/* ---- atomic save ------------------------------------------------------------------------- */

static void save_blocked(void *arg) { save_full((const char *)arg, 99999); }

static void test_atomic(void) {
    printf("atomic save\n");
    static char p[512];
    char tmp[600];
    scratch_path(p, sizeof(p), "atomic.safetensors");
    save_full(p, 100);
    size_t before_size;
    struct stat sb;
    stat(p, &sb);
    before_size = (size_t)sb.st_size;
    snprintf(tmp, sizeof(tmp), "%s.tmp", p);
    mkdir(tmp, 0755); /* the writer cannot create PATH.tmp: the save fails midway */
    EXPECT_DIE2("save fails", save_blocked, p, p, "cannot create");
    rmdir(tmp);
    ncsn_checkpoint_file f;
    ncsn_checkpoint_open(&f, p);
    ncsn_checkpoint_data d;
    memset(&d, 0, sizeof(d));
    d.params = calloc(table_a.total, 4), d.num_levels = 5;
    ncsn_checkpoint_load(&f, &table_a, &d, NCSN_CKPT_MODEL);
    stat(p, &sb);
    EXPECT(d.step == 100 && same_floats(d.params, P, table_a.total) && (size_t)sb.st_size == before_size,
           "the previous checkpoint is intact after a failed save (step %lld)", (long long)d.step);
    if (d.step == 100) printf("  ok   previous checkpoint (step 100) intact and loadable\n");
    free(d.params);
    ncsn_checkpoint_close(&f);
}

/* ---- run directory ----------------------------------------------------------------------- */

static void touch(const char *dir, const char *name) {
    char p[600];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    write_text_file(p, "x");
}

static int exists(const char *dir, const char *name) {
    char p[600];
    struct stat sb;
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    return stat(p, &sb) == 0;
}

static void test_run_dir(void) {
    printf("run directory\n");
    char dir[512], out[1024];
    scratch_path(dir, sizeof(dir), "run");
    mkdir(dir, 0755);
    int64_t step = -1;
    EXPECT(ncsn_checkpoint_find_latest(dir, out, sizeof(out), &step) == 0, "empty run dir has no checkpoint");
    EXPECT(ncsn_checkpoint_find_latest("/nonexistent/run", out, sizeof(out), &step) == 0, "missing dir: none");
    const char *names[] = {"checkpoint_5.safetensors", "checkpoint_100.safetensors", "checkpoint_20.safetensors",
                           "checkpoint_7000.safetensors.tmp", "checkpoint_x.safetensors", "checkpoint_.safetensors",
                           "checkpoint_900.pth", "notes.txt"};
    for (int i = 0; i < 8; i++) touch(dir, names[i]);
    char want[1100];
    snprintf(want, sizeof(want), "%s/checkpoint_100.safetensors", dir);
    int found = ncsn_checkpoint_find_latest(dir, out, sizeof(out), &step);
    EXPECT(found && step == 100 && !strcmp(out, want), "latest: found %d step %lld path %s", found, (long long)step,
           out);
    ncsn_checkpoint_path(out, sizeof(out), dir, 300000);
    snprintf(want, sizeof(want), "%s/checkpoint_300000.safetensors", dir);
    EXPECT(!strcmp(out, want), "checkpoint_path %s", out);
    EXPECT(ncsn_checkpoint_prune(dir, 0) == 0, "keep_last 0 keeps everything");
    int removed = ncsn_checkpoint_prune(dir, 2);
    EXPECT(removed == 1 && !exists(dir, names[0]) && exists(dir, names[1]) && exists(dir, names[2]),
           "prune(2) removed %d; keeps 100 and 20, removes 5", removed);
    int others = 1;
    for (int i = 3; i < 8; i++) others &= exists(dir, names[i]);
    EXPECT(others, "prune touched a file that is not a checkpoint");
    EXPECT(ncsn_checkpoint_prune(dir, 5) == 0, "nothing to prune when fewer than K");
    printf("  ok   latest = checkpoint_100 (numeric, not lexical); prune keeps the newest 2 and ignores other files\n");
}

int main(void) {
    scratch_dir_create("test_checkpoint");
    table_init(&table_a, spec_a, 5);
    table_init(&table_b, spec_b, 5);
    test_roundtrip();
    test_model_only();
    test_mismatch();
    test_atomic();
    test_run_dir();
    free(P), free(M), free(V), free(VMAX), free(E);
    free(table_a.entries), free(table_b.entries);
    scratch_dir_remove();
    return harness_finish("test_checkpoint");
}
