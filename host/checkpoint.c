/* checkpoint.c: the engine's checkpoint on top of safetensors (checkpoint.h).
 *
 * The official runners save torch.save([model_state, optimizer_state, epoch, step,
 * ema_shadow]); this file keeps the same content under the official state-dict keys, in
 * one flat safetensors file, so tools can read it without the engine and official
 * weights convert one-to-one.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ncsn/checkpoint.h"
#include "ncsn/common.h"
#include "ncsn/safetensors.h"

/* The optional per-parameter families, in file order. */
typedef struct {
    const char *prefix;
    const char *what; /* for messages */
} family_spec;

enum { FAM_ADAM_M = 0, FAM_ADAM_V, FAM_ADAM_VMAX, FAM_EMA, N_FAMILIES };
static const family_spec families[N_FAMILIES] = {
    {"adam.m.", "Adam first moments"},
    {"adam.v.", "Adam second moments"},
    {"adam.vmax.", "AMSGrad maxima"},
    {"ema.", "EMA shadow"},
};

static float *family_array(const ncsn_checkpoint_data *d, int fam) {
    switch (fam) {
    case FAM_ADAM_M: return d->adam_m;
    case FAM_ADAM_V: return d->adam_v;
    case FAM_ADAM_VMAX: return d->adam_vmax;
    default: return d->ema;
    }
}

static void family_name(char *out, size_t cap, int fam, const char *key) {
    int n = snprintf(out, cap, "%s%s", families[fam].prefix, key);
    NCSN_CHECK(n > 0 && (size_t)n < cap);
}

static void check_table(const ncsn_param_table *t) {
    NCSN_CHECK(t != NULL && t->n >= 0);
    for (int i = 0; i < t->n; i++) {
        const ncsn_param_entry *e = &t->entries[i];
        size_t count = 1;
        NCSN_CHECKF(e->ndim >= 0 && e->ndim <= 4, "checkpoint: table entry '%s' has %d dims", e->name, e->ndim);
        for (int k = 0; k < e->ndim; k++) count *= (size_t)e->shape[k];
        NCSN_CHECKF(count == e->count && e->offset + e->count <= t->total,
                    "checkpoint: table entry '%s' is inconsistent (count %zu, offset %zu, total %zu)", e->name, e->count,
                    e->offset, t->total);
    }
}

/* ---- save -------------------------------------------------------------------------------- */

static void set_meta_u64(ncsn_safetensors *st, const char *key, uint64_t v) {
    char buf[32];
    snprintf(buf, sizeof(buf), "%" PRIu64, v);
    ncsn_safetensors_set_meta(st, key, buf);
}

void ncsn_checkpoint_save(const char *path, const ncsn_param_table *table, const ncsn_checkpoint_data *d,
                          const char *config_text, const char *arch_name) {
    NCSN_CHECK(path != NULL && d != NULL && d->params != NULL);
    check_table(table);
    NCSN_CHECK(d->step >= 0);
    ncsn_safetensors st;
    memset(&st, 0, sizeof(st));
    ncsn_safetensors_set_meta(&st, "format", NCSN_CHECKPOINT_FORMAT);
    if (arch_name) ncsn_safetensors_set_meta(&st, "arch", arch_name);
    if (config_text) ncsn_safetensors_set_meta(&st, "config", config_text);
    set_meta_u64(&st, "step", (uint64_t)d->step);
    set_meta_u64(&st, "seed", d->state.seed);
    set_meta_u64(&st, "epoch", d->state.epoch);
    set_meta_u64(&st, "position", d->state.position);
    set_meta_u64(&st, "test_epoch", d->state.test_epoch);
    set_meta_u64(&st, "test_position", d->state.test_position);

    for (int i = 0; i < table->n; i++) {
        const ncsn_param_entry *e = &table->entries[i];
        ncsn_safetensors_add(&st, e->name, NCSN_DT_F32, e->ndim, e->shape, d->params + e->offset);
    }
    if (d->sigmas && d->num_levels > 0) {
        int64_t L = d->num_levels;
        ncsn_safetensors_add(&st, "sigmas", NCSN_DT_F32, 1, &L, d->sigmas);
    }
    for (int fam = 0; fam < N_FAMILIES; fam++) {
        const float *arr = family_array(d, fam);
        if (!arr) continue;
        for (int i = 0; i < table->n; i++) {
            const ncsn_param_entry *e = &table->entries[i];
            char name[sizeof(st.tensors[0].name)];
            family_name(name, sizeof(name), fam, e->name);
            ncsn_safetensors_add(&st, name, NCSN_DT_F32, e->ndim, e->shape, arr + e->offset);
        }
    }
    ncsn_safetensors_write(&st, path);
    ncsn_safetensors_free(&st);
}

/* ---- open / load ------------------------------------------------------------------------- */

void ncsn_checkpoint_open(ncsn_checkpoint_file *f, const char *path) {
    NCSN_CHECK(f != NULL && path != NULL);
    memset(f, 0, sizeof(*f));
    size_t len = strlen(path);
    if (len >= sizeof(f->path)) ncsn_die("%s: path too long", path);
    memcpy(f->path, path, len + 1);
    ncsn_safetensors_read(&f->st, path);
    const char *format = ncsn_safetensors_meta(&f->st, "format");
    /* No format string: a converted official checkpoint (model tensors + config). */
    if (format && strcmp(format, NCSN_CHECKPOINT_FORMAT) != 0)
        ncsn_die("%s: checkpoint format '%s' is not supported (this engine reads '%s')", path, format,
                 NCSN_CHECKPOINT_FORMAT);
}

const char *ncsn_checkpoint_config_text(const ncsn_checkpoint_file *f) { return ncsn_safetensors_meta(&f->st, "config"); }
const char *ncsn_checkpoint_arch(const ncsn_checkpoint_file *f) { return ncsn_safetensors_meta(&f->st, "arch"); }

void ncsn_checkpoint_close(ncsn_checkpoint_file *f) {
    if (!f) return;
    ncsn_safetensors_free(&f->st);
    memset(f, 0, sizeof(*f));
}

/* Problems are printed as they are found (up to a limit), then counted into one exit. */
#define MAX_PROBLEM_LINES 100

typedef struct {
    const char *path;
    int count;
} problem_log;

static void problem(problem_log *log, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(problem_log *log, const char *fmt, ...) {
    log->count++;
    if (log->count > MAX_PROBLEM_LINES) return;
    fprintf(stderr, "ncsn: %s: ", log->path);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void shape_str(char *out, size_t cap, int ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++) n += (size_t)snprintf(out + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap) snprintf(out + n, cap - n, "]");
}

static const char *dtype_str(ncsn_dtype dt) {
    switch (dt) {
    case NCSN_DT_F32: return "F32";
    case NCSN_DT_I32: return "I32";
    case NCSN_DT_I64: return "I64";
    case NCSN_DT_U8: return "U8";
    }
    return "?";
}

/* Checks one expected tensor; marks it used. Returns it when it matches, else NULL. */
static const ncsn_st_tensor *expect_tensor(problem_log *log, const ncsn_safetensors *st, unsigned char *used,
                                           const char *name, int ndim, const int64_t *shape, int report_missing) {
    const ncsn_st_tensor *t = ncsn_safetensors_find(st, name);
    char want[96], got[96];
    shape_str(want, sizeof(want), ndim, shape);
    if (!t) {
        if (report_missing) problem(log, "missing tensor '%s' %s", name, want);
        return NULL;
    }
    used[t - st->tensors] = 1;
    int ok = 1;
    if (t->dtype != NCSN_DT_F32) {
        problem(log, "tensor '%s' has dtype %s, the model expects F32", name, dtype_str(t->dtype));
        ok = 0;
    }
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        shape_str(got, sizeof(got), t->ndim, t->shape);
        problem(log, "tensor '%s' has shape %s, the model expects %s", name, got, want);
        ok = 0;
    }
    return ok ? t : NULL;
}

static uint64_t meta_u64(const ncsn_checkpoint_file *f, const char *key) {
    const char *s = ncsn_safetensors_meta(&f->st, key);
    if (!s) return 0;
    uint64_t v = 0;
    if (!*s) ncsn_die("%s: metadata '%s' is empty, expected a decimal integer", f->path, key);
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9' || v > (UINT64_MAX - 9) / 10)
            ncsn_die("%s: metadata '%s' is not a decimal integer: '%.40s'", f->path, key, s);
        v = v * 10 + (uint64_t)(*p - '0');
    }
    return v;
}

void ncsn_checkpoint_load(const ncsn_checkpoint_file *f, const ncsn_param_table *table, ncsn_checkpoint_data *d,
                          int need) {
    NCSN_CHECK(f != NULL && d != NULL && d->params != NULL);
    check_table(table);
    const ncsn_safetensors *st = &f->st;
    problem_log log = {f->path, 0};
    unsigned char *used = ncsn_xcalloc((size_t)(st->n_tensors ? st->n_tensors : 1), 1);
    const ncsn_st_tensor **model = ncsn_xcalloc((size_t)(table->n ? table->n : 1), sizeof(*model));

    for (int i = 0; i < table->n; i++) {
        const ncsn_param_entry *e = &table->entries[i];
        model[i] = expect_tensor(&log, st, used, e->name, e->ndim, e->shape, 1);
    }

    const ncsn_st_tensor *sigmas = NULL;
    d->has_sigmas = 0;
    if (ncsn_safetensors_find(st, "sigmas")) {
        if (d->num_levels <= 0) {
            used[ncsn_safetensors_find(st, "sigmas") - st->tensors] = 1;
            problem(&log, "unexpected tensor 'sigmas': this architecture has no noise-level buffer");
        } else {
            int64_t L = d->num_levels;
            sigmas = expect_tensor(&log, st, used, "sigmas", 1, &L, 1);
            d->has_sigmas = sigmas != NULL;
        }
    }

    /* Families: all of a family's tensors, or none. */
    int present[N_FAMILIES] = {0};
    for (int fam = 0; fam < N_FAMILIES; fam++) {
        char name[sizeof(st->tensors[0].name)];
        for (int i = 0; i < table->n; i++) {
            family_name(name, sizeof(name), fam, table->entries[i].name);
            if (ncsn_safetensors_find(st, name)) present[fam]++;
        }
        int required = ((need & NCSN_CKPT_NEED_OPTIMIZER) && (fam == FAM_ADAM_M || fam == FAM_ADAM_V)) ||
                       ((need & NCSN_CKPT_NEED_OPTIMIZER) && fam == FAM_ADAM_VMAX && d->adam_vmax) ||
                       ((need & NCSN_CKPT_NEED_EMA) && fam == FAM_EMA);
        if (present[fam] == 0) {
            if (required && table->n > 0)
                problem(&log, "missing %s (no %s* tensors): this file cannot %s", families[fam].what,
                        families[fam].prefix, fam == FAM_EMA ? "provide EMA weights" : "resume training");
            continue;
        }
        for (int i = 0; i < table->n; i++) {
            const ncsn_param_entry *e = &table->entries[i];
            family_name(name, sizeof(name), fam, e->name);
            expect_tensor(&log, st, used, name, e->ndim, e->shape, 1); /* partial family: each missing one */
        }
    }
    for (int i = 0; i < st->n_tensors; i++)
        if (!used[i]) problem(&log, "unexpected tensor '%s'", st->tensors[i].name);

    if (log.count) {
        if (log.count > MAX_PROBLEM_LINES)
            fprintf(stderr, "ncsn: %s: ... %d more problems not shown\n", f->path, log.count - MAX_PROBLEM_LINES);
        const char *arch = ncsn_checkpoint_arch(f);
        ncsn_die("%s: %d problem%s: the checkpoint%s%s%s does not match the model (%d parameter tensors)", f->path,
                 log.count, log.count == 1 ? "" : "s", arch ? " (arch " : "", arch ? arch : "", arch ? ")" : "",
                 table->n);
    }

    /* Everything matches: copy. */
    for (int i = 0; i < table->n; i++) memcpy(d->params + table->entries[i].offset, model[i]->data, model[i]->nbytes);
    if (sigmas && d->sigmas) memcpy(d->sigmas, sigmas->data, sigmas->nbytes);
    for (int fam = 0; fam < N_FAMILIES; fam++) {
        float *arr = family_array(d, fam);
        if (!present[fam] || !arr) continue;
        char name[sizeof(st->tensors[0].name)];
        for (int i = 0; i < table->n; i++) {
            const ncsn_param_entry *e = &table->entries[i];
            family_name(name, sizeof(name), fam, e->name);
            const ncsn_st_tensor *t = ncsn_safetensors_find(st, name);
            memcpy(arr + e->offset, t->data, t->nbytes);
        }
    }
    d->has_optimizer = present[FAM_ADAM_M] > 0 && present[FAM_ADAM_V] > 0;
    d->has_amsgrad = present[FAM_ADAM_VMAX] > 0;
    d->has_ema = present[FAM_EMA] > 0;
    uint64_t step = meta_u64(f, "step");
    if (step > (uint64_t)INT64_MAX) ncsn_die("%s: metadata 'step' is out of range", f->path);
    d->step = (int64_t)step;
    d->state.seed = meta_u64(f, "seed");
    d->state.epoch = meta_u64(f, "epoch");
    d->state.position = meta_u64(f, "position");
    d->state.test_epoch = meta_u64(f, "test_epoch");
    d->state.test_position = meta_u64(f, "test_position");
    free(used);
    free(model);
}

/* ---- run directory ----------------------------------------------------------------------- */

void ncsn_checkpoint_path(char *out, size_t outlen, const char *dir, int64_t step) {
    NCSN_CHECK(out != NULL && dir != NULL && step >= 0);
    int n = snprintf(out, outlen, "%s/checkpoint_%lld.safetensors", dir, (long long)step);
    if (n < 0 || (size_t)n >= outlen) ncsn_die("%s: checkpoint path too long", dir);
}

/* Step of "checkpoint_<digits>.safetensors", or -1 for any other name. */
static int64_t checkpoint_step(const char *name) {
    static const char prefix[] = "checkpoint_", suffix[] = ".safetensors";
    size_t n = strlen(name), np = sizeof(prefix) - 1, ns = sizeof(suffix) - 1;
    if (n <= np + ns || strncmp(name, prefix, np) || strcmp(name + n - ns, suffix)) return -1;
    int64_t v = 0;
    for (size_t i = np; i < n - ns; i++) {
        if (name[i] < '0' || name[i] > '9' || v > (INT64_MAX - 9) / 10) return -1;
        v = v * 10 + (name[i] - '0');
    }
    return v;
}

typedef struct {
    int64_t step;
    char name[256];
} ckpt_entry;

/* All checkpoints in dir; returns the count (0 if dir does not exist). */
static int list_checkpoints(const char *dir, ckpt_entry **out) {
    *out = NULL;
    DIR *dp = opendir(dir);
    if (!dp) {
        if (errno == ENOENT) return 0;
        ncsn_die("%s: cannot list the run directory: %s", dir, strerror(errno));
    }
    int n = 0, cap = 0;
    ckpt_entry *v = NULL;
    struct dirent *de;
    errno = 0;
    while ((de = readdir(dp)) != NULL) {
        int64_t step = checkpoint_step(de->d_name);
        if (step < 0 || strlen(de->d_name) >= sizeof(v[0].name)) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            ckpt_entry *g = realloc(v, (size_t)cap * sizeof(*g));
            if (!g) ncsn_die("out of memory listing %s", dir);
            v = g;
        }
        v[n].step = step;
        memcpy(v[n].name, de->d_name, strlen(de->d_name) + 1);
        n++;
        errno = 0;
    }
    if (errno) ncsn_die("%s: error listing the run directory: %s", dir, strerror(errno));
    closedir(dp);
    *out = v;
    return n;
}

static int entry_newest_first(const void *a, const void *b) {
    const ckpt_entry *x = a, *y = b;
    if (x->step != y->step) return x->step > y->step ? -1 : 1;
    return strcmp(x->name, y->name); /* "checkpoint_05" vs "checkpoint_5": deterministic */
}

int ncsn_checkpoint_find_latest(const char *dir, char *out, size_t outlen, int64_t *step) {
    NCSN_CHECK(dir != NULL && out != NULL);
    ckpt_entry *v;
    int n = list_checkpoints(dir, &v);
    if (n == 0) {
        free(v);
        return 0;
    }
    qsort(v, (size_t)n, sizeof(*v), entry_newest_first);
    int len = snprintf(out, outlen, "%s/%s", dir, v[0].name);
    if (len < 0 || (size_t)len >= outlen) ncsn_die("%s: checkpoint path too long", dir);
    if (step) *step = v[0].step;
    free(v);
    return 1;
}

int ncsn_checkpoint_prune(const char *dir, int keep_last) {
    NCSN_CHECK(dir != NULL);
    if (keep_last <= 0) return 0;
    ckpt_entry *v;
    int n = list_checkpoints(dir, &v), removed = 0;
    qsort(v, (size_t)n, sizeof(*v), entry_newest_first);
    for (int i = keep_last; i < n; i++) {
        char path[2048];
        int len = snprintf(path, sizeof(path), "%s/%s", dir, v[i].name);
        if (len < 0 || (size_t)len >= sizeof(path)) ncsn_die("%s: checkpoint path too long", dir);
        if (unlink(path) != 0) ncsn_die("%s: cannot delete an old checkpoint: %s", path, strerror(errno));
        removed++;
    }
    free(v);
    return removed;
}
