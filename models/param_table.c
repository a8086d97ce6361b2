/* param_table.c: the parameter table (model.h): one entry per tensor, official state-dict
 * name and PyTorch shape, laid out back to back in one buffer in table order. */
#include <stdlib.h>
#include <string.h>

#include "ncsn/model.h"

size_t ncsn_param_table_add(ncsn_param_table *t, const char *name, int ndim, const int64_t *shape) {
    NCSN_CHECKF(ndim >= 1 && ndim <= 4, "param table: '%s' has %d dims (1..4 supported)", name, ndim);
    NCSN_CHECKF(strlen(name) < NCSN_MAX_NAME, "param table: name too long: '%s'", name);
    NCSN_CHECKF(ncsn_param_table_find(t, name) == NULL, "param table: duplicate name '%s'", name);
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 64;
        ncsn_param_entry *grown = realloc(t->entries, (size_t)cap * sizeof *grown);
        if (!grown) ncsn_die("param table: out of host memory growing to %d entries", cap);
        t->entries = grown;
        t->cap = cap;
    }
    ncsn_param_entry *e = &t->entries[t->n++];
    memset(e, 0, sizeof *e);
    strcpy(e->name, name);
    e->ndim = ndim;
    e->count = 1;
    for (int d = 0; d < ndim; d++) {
        NCSN_CHECKF(shape[d] > 0, "param table: '%s' has dimension %d of size %lld", name, d, (long long)shape[d]);
        e->shape[d] = shape[d];
        e->count *= (size_t)shape[d];
    }
    e->offset = t->total;
    t->total += e->count;
    return e->offset;
}

const ncsn_param_entry *ncsn_param_table_find(const ncsn_param_table *t, const char *name) {
    /* A few hundred entries, looked up only when loading or testing: linear is enough. */
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->entries[i].name, name)) return &t->entries[i];
    return NULL;
}

void ncsn_param_table_free(ncsn_param_table *t) {
    free(t->entries);
    memset(t, 0, sizeof *t);
}
