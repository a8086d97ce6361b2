/* model.c: the public model interface (model.h): construction from a config, official
 * initialisation, arena planning, and dispatch to the architectures.
 *
 * Arena layout (per example, in floats, each slot rounded to 64): the slots every block
 * registered at construction (saved activations and statistics, then the backward's
 * gradient slots), the label copy, and three scratch tensors of the largest temporary
 * size. ncsn_model_plan(N) allocates N times that in one ncsn_alloc; slot s of the batch
 * starts at arena + N * s.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/rng_math.h"
#include "models/layers.h"
#include "ncsn/model.h"

struct ncsn_model {
    ncsn_backend *be;
    ncsn_arch arch;
    int C, H, W, L, ngf, hidden;
    ncsn_param_table table;
    param_init *init; /* per table entry */
    float *params, *grads, *sigmas;
    float *sigmas_host;
    double macs;
    /* arena */
    size_t act_per_example; /* floats per example, all slots */
    act_slot labels_slot, tmp_slot[3];
    float *arena;
    int planned_N, last_N;
    /* the network */
    refinenet rn;
    toy_net toy;
    conv_layer **convs; /* every convolution of rn / toy (net_builder.convs) */
    int n_convs;
    /* bf16 inference (ncsn_model_set_bf16_inference): packed conv weights; NULL: off */
    unsigned char *packed;
    /* grad-ready hook (model.h); NULL: none */
    ncsn_grad_ready_fn grad_ready;
    void *grad_ready_ctx;
};

static const char *arch_class_name(ncsn_arch arch) {
    switch (arch) {
    case NCSN_ARCH_NCSN: return "CondRefineNetDilated";
    case NCSN_ARCH_NCSNV2: return "NCSNv2";
    case NCSN_ARCH_NCSNV2_DEEPER: return "NCSNv2Deeper";
    case NCSN_ARCH_NCSNV2_DEEPEST: return "NCSNv2Deepest";
    case NCSN_ARCH_TOY: return "conditional MLP";
    }
    return "unknown";
}

ncsn_model *ncsn_model_create(ncsn_backend *be, const ncsn_config *cfg) {
    NCSN_CHECK(be != NULL && cfg != NULL);
    ncsn_model *m = ncsn_xcalloc(1, sizeof *m);
    m->be = be;
    m->arch = cfg->model.arch;
    m->L = cfg->model.num_classes;
    m->ngf = cfg->model.ngf;
    m->hidden = cfg->model.hidden;
    NCSN_CHECKF(m->L >= 1, "model: model.num_classes must be >= 1, got %d", m->L);
    if (m->arch == NCSN_ARCH_TOY) {
        m->C = cfg->data.channels;
        m->H = m->W = 1;
    } else {
        m->C = cfg->data.channels;
        m->H = m->W = cfg->data.image_size;
        NCSN_CHECKF(m->C >= 1 && m->H >= 2 && m->ngf >= 1,
                    "model %s: needs data.channels >= 1, data.image_size >= 2 and model.ngf >= 1 (got %d, %d, %d)",
                    ncsn_arch_name(m->arch), m->C, m->H, m->ngf);
    }

    net_builder b;
    memset(&b, 0, sizeof b);
    b.table = &m->table;
    b.L = m->L;
    switch (m->arch) {
    case NCSN_ARCH_NCSN: ncsn_v1_build(&b, &m->rn, cfg); break;
    case NCSN_ARCH_NCSNV2: ncsnv2_build(&b, &m->rn, cfg); break;
    case NCSN_ARCH_NCSNV2_DEEPER: ncsnv2_deeper_build(&b, &m->rn, cfg); break;
    case NCSN_ARCH_NCSNV2_DEEPEST: ncsnv2_deepest_build(&b, &m->rn, cfg); break;
    case NCSN_ARCH_TOY: toy_build(&b, &m->toy, cfg); break;
    default: ncsn_die("model: unknown architecture %d", (int)m->arch);
    }
    m->init = b.init;
    m->macs = b.macs;
    m->convs = b.convs;
    m->n_convs = b.n_convs;
    /* The packed-weight offsets are written into the layers later, through these pointers:
     * the builders must have built every layer in place, inside this model. */
    for (int i = 0; i < m->n_convs; i++)
        NCSN_CHECK((const char *)m->convs[i] >= (const char *)m &&
                   (const char *)(m->convs[i] + 1) <= (const char *)(m + 1));
    m->labels_slot = builder_act(&b, 1); /* int32, one per example */
    for (int i = 0; i < 3; i++) m->tmp_slot[i] = builder_act(&b, b.max_temp);
    m->act_per_example = b.act_floats;

    const size_t bytes = m->table.total * sizeof(float);
    m->params = ncsn_alloc(be, bytes);
    m->grads = ncsn_alloc(be, bytes);
    ncsn_memset_zero(be, m->params, bytes);
    ncsn_memset_zero(be, m->grads, bytes);

    m->sigmas_host = ncsn_xmalloc((size_t)m->L * sizeof(float));
    ncsn_config_sigmas(cfg, m->sigmas_host);
    m->sigmas = ncsn_alloc(be, (size_t)m->L * sizeof(float));
    ncsn_copy_to_device(be, m->sigmas, m->sigmas_host, (size_t)m->L * sizeof(float));
    return m;
}

void ncsn_model_free(ncsn_model *m) {
    if (!m) return;
    ncsn_free(m->be, m->params);
    ncsn_free(m->be, m->grads);
    ncsn_free(m->be, m->sigmas);
    if (m->arena) ncsn_free(m->be, m->arena);
    if (m->packed) ncsn_free(m->be, m->packed);
    free(m->convs);
    free(m->sigmas_host);
    free(m->init);
    ncsn_param_table_free(&m->table);
    free(m);
}

const ncsn_param_table *ncsn_model_table(const ncsn_model *m) { return &m->table; }
float *ncsn_model_params(ncsn_model *m) { return m->params; }
float *ncsn_model_grads(ncsn_model *m) { return m->grads; }
float *ncsn_model_sigmas(ncsn_model *m) { return m->sigmas; }
const float *ncsn_model_sigmas_host(const ncsn_model *m) { return m->sigmas_host; }
int ncsn_model_num_levels(const ncsn_model *m) { return m->L; }

void ncsn_model_input_shape(const ncsn_model *m, int *C, int *H, int *W) {
    if (C) *C = m->C;
    if (H) *H = m->H;
    if (W) *W = m->W;
}

size_t ncsn_model_input_size(const ncsn_model *m) { return (size_t)m->C * m->H * m->W; }

/* ---- initialisation (TEAM.md convention; tools/ncsn_torch.py init_from_engine_rng) ---- */

static void init_entry(float *out, const ncsn_param_entry *e, const param_init *how, uint64_t seed, uint32_t t) {
    const int64_t count = (int64_t)e->count;
    switch (how->kind) {
    case PARAM_INIT_UNIFORM: {
        /* PyTorch's default conv init: kaiming_uniform(a = sqrt 5) for the weight and
         * U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the bias are the same bound. */
        NCSN_CHECK(how->fan_in > 0);
        const float bound = (float)(1.0 / sqrt((double)how->fan_in));
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < count; i++) {
            float u = ncsn_rng_uniform(seed, NCSN_RNG_INIT, 0, t, (uint64_t)i);
            out[i] = (2.0f * u - 1.0f) * bound;
        }
        break;
    }
    case PARAM_INIT_NORMAL_ONE:
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < count; i++)
            out[i] = (float)(1.0 + 0.02 * (double)ncsn_rng_normal(seed, NCSN_RNG_INIT, 0, t, (uint64_t)i));
        break;
    case PARAM_INIT_ZERO:
        memset(out, 0, (size_t)count * sizeof(float));
        break;
    case PARAM_INIT_COND_EMBED: {
        /* [L, 3C] rows [gamma | alpha | beta]: gamma, alpha ~ N(1, 0.02), beta = 0. */
        NCSN_CHECK(e->ndim == 2 && e->shape[1] % 3 == 0);
        const int64_t row = e->shape[1], two_c = 2 * (row / 3);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < count; i++)
            out[i] = (i % row < two_c)
                         ? (float)(1.0 + 0.02 * (double)ncsn_rng_normal(seed, NCSN_RNG_INIT, 0, t, (uint64_t)i))
                         : 0.0f;
        break;
    }
    }
}

void ncsn_model_init(ncsn_model *m, uint64_t seed) {
    size_t max_count = 0;
    for (int t = 0; t < m->table.n; t++)
        if (m->table.entries[t].count > max_count) max_count = m->table.entries[t].count;
    float *host = ncsn_xmalloc(max_count * sizeof(float));
    for (int t = 0; t < m->table.n; t++) {
        const ncsn_param_entry *e = &m->table.entries[t];
        init_entry(host, e, &m->init[t], seed, (uint32_t)t);
        ncsn_copy_to_device(m->be, m->params + e->offset, host, e->count * sizeof(float));
    }
    free(host);
}

/* ---- arena, forward, backward ------------------------------------------------------------ */

void ncsn_model_plan(ncsn_model *m, int N) {
    NCSN_CHECKF(N >= 1, "ncsn_model_plan: batch size %d", N);
    if (N <= m->planned_N) return;
    if (m->arena) ncsn_free(m->be, m->arena);
    m->arena = ncsn_alloc(m->be, (size_t)N * m->act_per_example * sizeof(float));
    m->planned_N = N;
    m->last_N = 0;
}

static layer_ctx model_ctx(ncsn_model *m, int N) {
    layer_ctx c;
    c.be = m->be;
    c.params = m->params;
    c.grads = m->grads;
    c.arena = m->arena;
    c.N = N;
    c.N_planned = m->planned_N;
    c.labels = (const int32_t *)ctx_slot(&c, m->labels_slot);
    for (int i = 0; i < 3; i++) c.tmp[i] = ctx_slot(&c, m->tmp_slot[i]);
    c.progress = NULL;
    return c;
}

void ncsn_model_forward(ncsn_model *m, float *score, const float *x, const int32_t *labels, int N) {
    NCSN_CHECKF(m->arena && N >= 1 && N <= m->planned_N,
                "ncsn_model_forward: batch %d but the arena is planned for %d (call ncsn_model_plan first)", N,
                m->planned_N);
    if (m->be->kind == NCSN_DEVICE_CPU)
        for (int n = 0; n < N; n++)
            NCSN_CHECKF(labels[n] >= 0 && labels[n] < m->L, "ncsn_model_forward: labels[%d] = %d outside [0, %d)", n,
                        labels[n], m->L);
    layer_ctx c = model_ctx(m, N);
    c.packed = m->packed;
    /* The backward needs the labels after the caller may have reused its buffer. */
    ncsn_copy(m->be, (void *)c.labels, labels, (size_t)N * sizeof(int32_t));
    if (m->arch == NCSN_ARCH_TOY) toy_forward(&c, &m->toy, score, x, m->sigmas);
    else refinenet_forward(&c, &m->rn, score, x, m->sigmas);
    m->last_N = N;
}

void ncsn_model_backward(ncsn_model *m, float *dx, const float *dscore) {
    NCSN_CHECKF(m->last_N > 0, "ncsn_model_backward: no forward since the arena was planned");
    NCSN_CHECKF(!m->packed, "ncsn_model_backward: the model is in bf16 inference (forward only); "
                            "ncsn_model_set_bf16_inference(m, 0) first");
    layer_ctx c = model_ctx(m, m->last_N);
    grad_progress progress = {.ready = m->grad_ready, .ctx = m->grad_ready_ctx, .first_final = m->table.total};
    if (m->grad_ready) c.progress = &progress;
    if (m->arch == NCSN_ARCH_TOY) toy_backward(&c, &m->toy, dx, dscore, m->sigmas);
    else refinenet_backward(&c, &m->rn, dx, dscore, m->sigmas);
    /* Every block must have reported its parameters, so the last call was with 0: a
     * listener that all-reduces in buckets relies on it. */
    if (m->grad_ready)
        NCSN_CHECKF(progress.first_final == 0 && progress.n_pending == 0,
                    "model backward: only [%zu, %zu) of the gradients were reported final (%d ranges pending)",
                    progress.first_final, m->table.total, progress.n_pending);
}

int ncsn_model_set_bf16_inference(ncsn_model *m, int on) {
    if (m->packed) ncsn_free(m->be, m->packed);
    m->packed = NULL;
    if (!on || m->arch == NCSN_ARCH_TOY) return 0;
    /* One buffer; each convolution's packed weights at a 256-byte-aligned offset. The size
     * of a packing does not depend on the batch (backend.h), so N = 1 describes it. */
    size_t total = 0;
    for (int i = 0; i < m->n_convs; i++) {
        conv_layer *l = m->convs[i];
        const ncsn_conv_desc d = conv_layer_desc(l, 1);
        l->packed = total;
        size_t bytes = ncsn_conv2d_packed_weights_bytes(m->be, &d);
        NCSN_CHECKF(bytes > 0 && bytes % 256 == 0,
                    "bf16 inference: packed weights of %zu bytes (not a multiple of 256)", bytes);
        total += bytes;
    }
    m->packed = ncsn_alloc(m->be, total);
    for (int i = 0; i < m->n_convs; i++) {
        const conv_layer *l = m->convs[i];
        const ncsn_conv_desc d = conv_layer_desc(l, 1);
        ncsn_conv2d_pack_weights_bf16(m->be, m->packed + l->packed, m->params + l->w,
                                      d.has_bias ? m->params + l->b : NULL, &d);
    }
    return 1;
}

void ncsn_model_set_grad_ready_hook(ncsn_model *m, ncsn_grad_ready_fn fn, void *ctx) {
    m->grad_ready = fn;
    m->grad_ready_ctx = fn ? ctx : NULL;
}

void ncsn_model_zero_grads(ncsn_model *m) {
    ncsn_memset_zero(m->be, m->grads, m->table.total * sizeof(float));
}

double ncsn_model_conv_macs(const ncsn_model *m) { return m->macs; }

/* ---- description ------------------------------------------------------------------------- */

static void format_count(char *buf, size_t len, size_t v) {
    char digits[32];
    int n = snprintf(digits, sizeof digits, "%zu", v), o = 0;
    for (int i = 0; i < n && o + 2 < (int)len; i++) {
        if (i > 0 && (n - i) % 3 == 0) buf[o++] = ',';
        buf[o++] = digits[i];
    }
    buf[o] = '\0';
}

void ncsn_model_print_info(const ncsn_model *m, FILE *f, int print_table) {
    char num[32];
    fprintf(f, "model: %s (arch %s), input %dx%dx%d, L = %d levels", arch_class_name(m->arch),
            ncsn_arch_name(m->arch), m->C, m->H, m->W, m->L);
    if (m->arch == NCSN_ARCH_TOY) fprintf(f, ", hidden = %d\n", m->hidden);
    else fprintf(f, ", ngf = %d\n", m->ngf);

    /* Per top-level submodule ("res2", "refine31", ...), in table order. */
    enum { MAX_GROUPS = 64 };
    char groups[MAX_GROUPS][NCSN_MAX_NAME];
    size_t group_count[MAX_GROUPS] = {0};
    int group_tensors[MAX_GROUPS] = {0}, n_groups = 0;
    for (int t = 0; t < m->table.n; t++) {
        const ncsn_param_entry *e = &m->table.entries[t];
        size_t len = strcspn(e->name, ".");
        int g = 0;
        while (g < n_groups && !(strlen(groups[g]) == len && !strncmp(groups[g], e->name, len))) g++;
        if (g == n_groups) {
            NCSN_CHECK(n_groups < MAX_GROUPS);
            memcpy(groups[g], e->name, len);
            groups[g][len] = '\0';
            n_groups++;
        }
        group_count[g] += e->count;
        group_tensors[g]++;
    }
    fprintf(f, "  %-14s %8s %14s\n", "submodule", "tensors", "parameters");
    for (int g = 0; g < n_groups; g++) {
        format_count(num, sizeof num, group_count[g]);
        fprintf(f, "  %-14s %8d %14s\n", groups[g], group_tensors[g], num);
    }
    if (print_table) {
        fprintf(f, "  %-52s %-20s %12s\n", "tensor", "shape", "count");
        for (int t = 0; t < m->table.n; t++) {
            const ncsn_param_entry *e = &m->table.entries[t];
            char shape[64];
            int o = snprintf(shape, sizeof shape, "[");
            for (int d = 0; d < e->ndim; d++)
                o += snprintf(shape + o, sizeof shape - (size_t)o, "%s%lld", d ? ", " : "", (long long)e->shape[d]);
            snprintf(shape + o, sizeof shape - (size_t)o, "]");
            fprintf(f, "  %-52s %-20s %12zu\n", e->name, shape, e->count);
        }
    }
    fprintf(f, "conv MACs per forward: %.4g G per example\n", m->macs / 1e9);
    fprintf(f, "activation arena: %.1f MiB per example (saved activations, gradients, scratch)\n",
            (double)m->act_per_example * sizeof(float) / (1024.0 * 1024.0));
    fprintf(f, "parameters: %zu\n", m->table.total);
}
