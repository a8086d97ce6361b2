/* test_grad_sync.c: the model's grad-ready hook (model.h) and the bucketed gradient
 * all-reduce it drives (grad_sync.h), on the CPU backend.
 *
 * 1. The hook's contract, for a small network of every architecture (CondRefineNetDilated,
 *    NCSNv2, NCSNv2Deeper, NCSNv2Deepest, the toy MLP): at each call the test copies the
 *    newly final region [first_final, previous first_final) of the gradient buffer; at the
 *    end of the backward the copies must equal the gradients bit for bit. A hook offset
 *    that is too small (a region reported final while a later op still adds to it) fails
 *    this: the later op changes the value after the copy. The offsets must strictly
 *    decrease, fall on table-entry boundaries and end with 0; the reports must be block by
 *    block (at least one per residual block); in the RefineNets, begin_conv (registered
 *    first, finished last) must be the only region of the last report. A backward with
 *    the hook gives bit-identical gradients and dx to one without it.
 * 2. The bucketed all-reduce with K = 2 and 3 ranks of the shm communicator (processes
 *    started with ncsn_comm_spawn_local, as test_comm does): each rank runs the backward
 *    of its own examples with the hook driving ncsn_grad_sync, on the toy MLP, NCSNv2 and
 *    NCSNv2Deepest, for bucket sizes of one float and 13 bytes (3 floats, rounded down;
 *    toy), 64 bytes (smaller than every conv weight) and 2000 bytes (RefineNets), 1000
 *    bytes, a third of the buffer + 4 bytes, the buffer less one float, exactly the
 *    buffer, and DDP's 25 MiB (larger than any buffer here: one bucket, started by the
 *    last report). The result must be bit-identical to one ncsn_comm_allreduce_mean over
 *    the whole buffer of the same raw gradients (the shm mean is elementwise; comm.h). During
 *    the backward, each hook call may only reduce buckets that are entirely final: the
 *    part of the buffer below the last bucket that may be started must be unchanged by the
 *    call. The statistics must show every bucket reduced, and as many started during the
 *    backward as lie entirely in the final suffix of the backward's last report but one
 *    (no bucket started late). Also: a step without hook calls (finish alone), two steps
 *    in a row with one ncsn_grad_sync.
 * 3. Misuse is a clear fatal error: a bucket of under 4 bytes; a second backward reporting
 *    before finish (the hook left set for the SSM loss's several backwards); finish after
 *    a partial report. One process with the no-op communicator leaves gradients as they are.
 * Bugs injected on purpose were caught, each naming the first wrong element: a residual
 * block reported final before its backward (1. and 2.), a CRP reported in two parts
 * around its backward (1.: offsets inside a tensor, values changed; 2.), grad_sync
 * starting a bucket with one element not yet final (2.: values, "changed below the final
 * buckets", statistics).
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/rng_math.h"
#include "ncsn/backend.h"
#include "ncsn/comm.h"
#include "ncsn/config.h"
#include "ncsn/grad_sync.h"
#include "ncsn/model.h"
#include "tests/harness.h"
#include "tests/expect_die.h"

#define SEED 20240917u
#define BATCH 2
#define LEVELS 3

/* ---- small networks --------------------------------------------------------------------- */

typedef struct {
    const char *name;
    ncsn_arch arch;
    int channels, image_size, ngf;
    int residual_blocks; /* 2 per cascade; 0 for the toy */
} arch_case;

/* The sizes of test_model_grad (ngf 4 here: no finite differences, so IN++'s conditioning
 * does not matter): Deeper needs 16x16 for its three halvings, Deepest 32x32 for four. */
static const arch_case arch_cases[] = {
    {"ncsn (v1)", NCSN_ARCH_NCSN, 1, 8, 4, 8},
    {"ncsnv2", NCSN_ARCH_NCSNV2, 3, 8, 4, 8},
    {"ncsnv2_deeper", NCSN_ARCH_NCSNV2_DEEPER, 1, 16, 4, 10},
    {"ncsnv2_deepest", NCSN_ARCH_NCSNV2_DEEPEST, 3, 32, 4, 12},
    {"toy", NCSN_ARCH_TOY, 2, 1, 0, 0},
};

static ncsn_config small_config(const arch_case *a) {
    ncsn_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.model.arch = a->arch;
    cfg.model.arch_given = 1;
    cfg.model.ngf = a->ngf ? a->ngf : 4;
    cfg.model.num_classes = LEVELS;
    cfg.model.sigma_begin = 1.0;
    cfg.model.sigma_end = 0.1;
    cfg.model.hidden = 16;
    strcpy(cfg.model.sigma_dist, "geometric");
    cfg.data.channels = a->channels;
    cfg.data.image_size = a->image_size;
    return cfg;
}

/* A model with its inputs for one backward: x in [0, 1], labels, dscore ~ N(0, 1), all
 * keyed by `who` (the rank), so that ranks hold different gradients. */
typedef struct {
    ncsn_model *m;
    size_t n, D;
    float *x, *score, *dscore, *dx;
    int32_t *labels;
} net;

static net net_create(ncsn_backend *be, const arch_case *a, uint32_t who) {
    net t;
    ncsn_config cfg = small_config(a);
    t.m = ncsn_model_create(be, &cfg);
    ncsn_model_init(t.m, SEED);
    ncsn_model_plan(t.m, BATCH);
    t.n = ncsn_model_table(t.m)->total;
    t.D = ncsn_model_input_size(t.m);
    const size_t ND = BATCH * t.D;
    t.x = ncsn_alloc(be, ND * sizeof(float));
    t.score = ncsn_alloc(be, ND * sizeof(float));
    t.dscore = ncsn_alloc(be, ND * sizeof(float));
    t.dx = ncsn_alloc(be, ND * sizeof(float));
    t.labels = ncsn_alloc(be, BATCH * sizeof(int32_t));
    for (size_t i = 0; i < ND; i++) {
        t.x[i] = ncsn_rng_uniform(SEED, NCSN_RNG_TOY, who, 1, i);
        t.dscore[i] = ncsn_rng_normal(SEED, NCSN_RNG_TOY, who, 2, i);
    }
    for (int i = 0; i < BATCH; i++) t.labels[i] = (int32_t)((who + (uint32_t)i) % LEVELS);
    return t;
}

static void net_free(ncsn_backend *be, net *t) {
    ncsn_free(be, t->x);
    ncsn_free(be, t->score);
    ncsn_free(be, t->dscore);
    ncsn_free(be, t->dx);
    ncsn_free(be, t->labels);
    ncsn_model_free(t->m);
}

/* zero_grad, forward, backward: one training step's gradient. */
static void net_backward(net *t, float *dx) {
    ncsn_model_zero_grads(t->m);
    ncsn_model_forward(t->m, t->score, t->x, t->labels, BATCH);
    ncsn_model_backward(t->m, dx, t->dscore);
}

/* The table entry holding element `offset` (for messages). */
static const char *entry_at(const ncsn_param_table *tab, size_t offset) {
    for (int e = 0; e < tab->n; e++)
        if (offset >= tab->entries[e].offset && offset < tab->entries[e].offset + tab->entries[e].count)
            return tab->entries[e].name;
    return "(past the end)";
}

static int is_entry_start(const ncsn_param_table *tab, size_t offset) {
    for (int e = 0; e < tab->n; e++)
        if (tab->entries[e].offset == offset) return 1;
    return 0;
}

static size_t first_difference(const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0) return i;
    return n;
}

/* ---- 1. the hook's contract ------------------------------------------------------------- */

#define MAX_REPORTS 512

typedef struct {
    const float *grads;
    size_t n;
    float *copy;          /* region [off_k, off_{k-1}) copied at report k */
    size_t offsets[MAX_REPORTS];
    int reports;
    int out_of_order;     /* an offset that did not decrease */
} report_log;

static void record_report(void *ctx, size_t first_final) {
    report_log *log = ctx;
    const size_t previous = log->reports ? log->offsets[log->reports - 1] : log->n;
    if (log->reports == MAX_REPORTS || first_final >= previous) {
        log->out_of_order = 1;
        return;
    }
    memcpy(log->copy + first_final, log->grads + first_final, (previous - first_final) * sizeof(float));
    log->offsets[log->reports++] = first_final;
}

static void test_hook_contract(ncsn_backend *be, const arch_case *a) {
    net t = net_create(be, a, 0);
    const ncsn_param_table *tab = ncsn_model_table(t.m);
    const float *grads = ncsn_model_grads(t.m);
    const size_t n = t.n, ND = BATCH * t.D;

    /* Without the hook first: the reference gradients and dx. */
    float *plain = ncsn_xmalloc(n * sizeof(float)), *plain_dx = ncsn_xmalloc(ND * sizeof(float));
    net_backward(&t, t.dx);
    memcpy(plain, grads, n * sizeof(float));
    memcpy(plain_dx, t.dx, ND * sizeof(float));

    report_log log = {.grads = grads, .n = n, .copy = ncsn_xcalloc(n, sizeof(float))};
    ncsn_model_set_grad_ready_hook(t.m, record_report, &log);
    net_backward(&t, t.dx);
    ncsn_model_set_grad_ready_hook(t.m, NULL, NULL);

    EXPECT(!log.out_of_order, "%s: hook offsets did not strictly decrease (or more than %d reports)", a->name,
           MAX_REPORTS);
    EXPECT(log.reports > 0 && log.offsets[log.reports - 1] == 0, "%s: %d reports, the last at %zu (want 0)", a->name,
           log.reports, log.reports ? log.offsets[log.reports - 1] : n);
    int off_boundary = 0;
    for (int k = 0; k < log.reports; k++)
        if (!is_entry_start(tab, log.offsets[k])) off_boundary++;
    EXPECT(off_boundary == 0, "%s: %d hook offsets inside a tensor", a->name, off_boundary);
    EXPECT(log.reports >= a->residual_blocks + 1, "%s: %d reports for %d residual blocks (block granularity?)",
           a->name, log.reports, a->residual_blocks);
    if (a->arch != NCSN_ARCH_TOY && log.reports >= 2) {
        /* begin_conv is the first table entry (weight, bias) and the last op of the backward. */
        const size_t after_begin = tab->entries[2].offset;
        EXPECT(!strcmp(tab->entries[0].name, "begin_conv.weight") && log.offsets[log.reports - 2] == after_begin,
               "%s: the report before the last is at %zu (%s), want %zu (the entry after begin_conv)", a->name,
               log.offsets[log.reports - 2], entry_at(tab, log.offsets[log.reports - 2]), after_begin);
    }

    /* The contract: nothing reported final changed afterwards. */
    const size_t d = first_difference(log.copy, grads, n);
    int reported_at = -1;
    for (int k = 0; k < log.reports && d < n; k++)
        if (log.offsets[k] <= d) {
            reported_at = k;
            break;
        }
    EXPECT(d == n, "%s: gradient %zu (%s) was %.9g when reported final (report %d, offset %zu) and %.9g at the end",
           a->name, d, d < n ? entry_at(tab, d) : "", d < n ? log.copy[d] : 0.0f, reported_at,
           reported_at >= 0 ? log.offsets[reported_at] : 0, d < n ? grads[d] : 0.0f);

    /* No behaviour change from the hook. */
    const size_t dg = first_difference(plain, grads, n), ddx = first_difference(plain_dx, t.dx, ND);
    EXPECT(dg == n, "%s: with the hook, gradient %zu (%s) is %.9g, without %.9g", a->name, dg,
           dg < n ? entry_at(tab, dg) : "", dg < n ? grads[dg] : 0.0f, dg < n ? plain[dg] : 0.0f);
    EXPECT(ddx == ND, "%s: with the hook, dx[%zu] is %.9g, without %.9g", a->name, ddx, ddx < ND ? t.dx[ddx] : 0.0f,
           ddx < ND ? plain_dx[ddx] : 0.0f);

    if (d == n && dg == n && ddx == ND && !log.out_of_order) {
        printf("  ok   %-15s %zu params, %d reports, all final when reported; suffix starts:", a->name, n, log.reports);
        for (int k = 0; k < log.reports; k++) {
            /* Top-level module of each report ("refine4", "res2", ...), collapsed. */
            const char *name = entry_at(tab, log.offsets[k]);
            const size_t len = strcspn(name, ".");
            const char *prev = k ? entry_at(tab, log.offsets[k - 1]) : "";
            if (k && strlen(prev) >= len && !strncmp(prev, name, len) && (prev[len] == '.' || !prev[len])) continue;
            printf(" %.*s", (int)len, name);
        }
        printf("\n");
    }
    free(log.copy);
    free(plain);
    free(plain_dx);
    net_free(be, &t);
}

/* ---- 2. the bucketed all-reduce on K ranks (run as a rank) -------------------------------- */

typedef struct {
    ncsn_grad_sync *gs;
    const float *grads;
    float *raw;           /* each region copied when reported final, before grad_sync sees it */
    float *below;         /* scratch: the buffer below the lowest bucket the call may start */
    size_t n, bucket;     /* floats */
    size_t previous;      /* last reported offset */
    size_t last_but_one;  /* offset of the report before the final 0 */
    size_t touched_early; /* first element below the allowed region changed by a hook call; n: none */
} sync_probe;

/* The lowest bucket start >= first_final: grad_sync may reduce [it, n) and nothing below. */
static size_t lowest_startable(size_t n, size_t bucket, size_t first_final) {
    size_t begin = n;
    while (begin > 0) {
        const size_t next = begin > bucket ? begin - bucket : 0;
        if (next < first_final) break;
        begin = next;
    }
    return begin;
}

static void probe_hook(void *ctx, size_t first_final) {
    sync_probe *p = ctx;
    memcpy(p->raw + first_final, p->grads + first_final, (p->previous - first_final) * sizeof(float));
    const size_t allowed = lowest_startable(p->n, p->bucket, first_final);
    memcpy(p->below, p->grads, allowed * sizeof(float));
    ncsn_grad_sync_hook(p->gs, first_final);
    const size_t d = first_difference(p->below, p->grads, allowed);
    if (d < allowed && d < p->touched_early) p->touched_early = d;
    if (first_final > 0) p->last_but_one = first_final;
    p->previous = first_final;
}

/* Buckets entirely inside [from, n): the ones a correct hook has started before the last report. */
static size_t buckets_inside(size_t n, size_t bucket, size_t from) {
    size_t count = 0;
    for (size_t end = n; end > 0; end = end > bucket ? end - bucket : 0) {
        const size_t begin = end > bucket ? end - bucket : 0;
        if (begin < from) break;
        count++;
    }
    return count;
}

/* One step: backward (with the probe as hook unless use_hook is 0), finish; checks against
 * one whole-buffer all-reduce of the same raw gradients. Returns 1 on pass. */
static int sync_step(ncsn_comm *comm, ncsn_backend *be, net *t, ncsn_grad_sync *gs, size_t bucket_bytes,
                     int use_hook, const char *what) {
    const int K = ncsn_comm_world_size(comm);
    const size_t n = t->n, bucket = bucket_bytes / sizeof(float);
    float *grads = ncsn_model_grads(t->m);
    sync_probe p = {.gs = gs, .grads = grads, .raw = ncsn_xmalloc(n * sizeof(float)),
                    .below = ncsn_xmalloc(n * sizeof(float)), .n = n, .bucket = bucket, .previous = n,
                    .last_but_one = n, .touched_early = n};
    if (use_hook) ncsn_model_set_grad_ready_hook(t->m, probe_hook, &p);
    net_backward(t, NULL);
    ncsn_model_set_grad_ready_hook(t->m, NULL, NULL);
    if (!use_hook) memcpy(p.raw, grads, n * sizeof(float));
    ncsn_grad_sync_finish(gs);

    /* The reference: the same raw gradients in one reduction. */
    ncsn_comm_allreduce_mean(comm, be, p.raw, n);
    const ncsn_param_table *tab = ncsn_model_table(t->m);
    const size_t d = first_difference(grads, p.raw, n);
    const ncsn_grad_sync_stats st = ncsn_grad_sync_last_stats(gs);
    const size_t want_buckets = (n + bucket - 1) / bucket;
    const size_t want_early = use_hook ? buckets_inside(n, bucket, p.last_but_one) : 0;
    EXPECT(d == n, "K=%d %s: element %zu (%s) is %.9g, one whole-buffer all-reduce gives %.9g", K, what, d,
           d < n ? entry_at(tab, d) : "", d < n ? grads[d] : 0.0f, d < n ? p.raw[d] : 0.0f);
    EXPECT(p.touched_early == n, "K=%d %s: a hook call changed element %zu (%s), below the final buckets", K, what,
           p.touched_early, p.touched_early < n ? entry_at(tab, p.touched_early) : "");
    EXPECT(st.buckets == want_buckets && st.overlapped == want_early,
           "K=%d %s: %zu buckets, %zu started during the backward; want %zu and %zu", K, what, st.buckets,
           st.overlapped, want_buckets, want_early);
    const int ok = d == n && p.touched_early == n && st.buckets == want_buckets && st.overlapped == want_early;
    if (ok)
        printf("  ok   K=%d %-40s bit-identical to one all-reduce; %zu buckets, %zu during the backward\n", K, what,
               st.buckets, st.overlapped);
    free(p.raw);
    free(p.below);
    return ok;
}

static void worker_buckets(ncsn_comm *comm, ncsn_backend *be) {
    const int r = ncsn_comm_rank(comm);
    static const int which[] = {4, 1, 3}; /* toy, ncsnv2, ncsnv2_deepest */
    for (size_t w = 0; w < sizeof which / sizeof which[0]; w++) {
        const arch_case *a = &arch_cases[which[w]];
        net t = net_create(be, a, (uint32_t)r + 1);
        const size_t n = t.n;
        /* The toy's tiny buffer affords buckets of 1 and 3 floats (13 bytes: rounded down);
         * the RefineNets' (30k to 90k floats) get 16-float buckets. */
        const int toy = a->arch == NCSN_ARCH_TOY;
        const size_t sizes[] = {toy ? 4 : 64, toy ? 13 : 2000, 1000, (n / 3) * 4 + 4,
                                (n - 1) * 4, n * 4, NCSN_GRAD_SYNC_DEFAULT_BUCKET_BYTES};
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            ncsn_grad_sync *gs = ncsn_grad_sync_create(comm, be, ncsn_model_grads(t.m), n, sizes[s]);
            char what[96];
            snprintf(what, sizeof what, "%s, %zu-byte buckets:", a->name, sizes[s]);
            sync_step(comm, be, &t, gs, sizes[s], 1, what);
            if (s == 2) {
                /* The same grad_sync again (its state was reset by finish), then a step
                 * without hook calls: finish reduces everything. */
                snprintf(what, sizeof what, "%s, %zu-byte, 2nd step:", a->name, sizes[s]);
                sync_step(comm, be, &t, gs, sizes[s], 1, what);
                snprintf(what, sizeof what, "%s, %zu-byte, no hook:", a->name, sizes[s]);
                sync_step(comm, be, &t, gs, sizes[s], 0, what);
            }
            ncsn_grad_sync_destroy(gs);
        }
        net_free(be, &t);
    }
}

static int run_worker(void) {
    ncsn_comm_env env;
    ncsn_comm_env_read(&env);
    if (env.rank != 0) {
        /* Only rank 0 talks on stdout; the driver shows the others' logs on failure. */
        char name[64], path[PATH_MAX];
        snprintf(name, sizeof name, "log.%d.%d", env.world_size, env.rank);
        scratch_path(path, sizeof path, name);
        if (!freopen(path, "w", stdout)) exit(2);
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    ncsn_backend *be = harness_cpu_backend();
    ncsn_comm *comm = ncsn_comm_create(be);
    EXPECT(!strcmp(ncsn_comm_kind(comm), "shm") && ncsn_comm_world_size(comm) == env.world_size,
           "communicator %s of %d ranks", ncsn_comm_kind(comm), ncsn_comm_world_size(comm));
    worker_buckets(comm, be);
    ncsn_comm_destroy(comm);
    ncsn_backend_destroy(be);
    char name[64];
    snprintf(name, sizeof name, "rank %d of %d", env.rank, env.world_size);
    return harness_finish(name);
}

static void show_rank_logs(int K) {
    for (int r = 1; r < K; r++) {
        char name[64], path[PATH_MAX], title[64];
        snprintf(name, sizeof name, "log.%d.%d", K, r);
        scratch_path(path, sizeof path, name);
        snprintf(title, sizeof title, "rank %d of %d", r, K);
        print_file_indented(path, title);
    }
}

static void test_ranks(char *self, int K) {
    char *argv[] = {self, "--worker", NULL};
    if (setenv("NCSN_COMM", "shm", 1) != 0) exit(2);
    printf("  -- %d ranks, shm\n", K);
    const int status = ncsn_comm_spawn_local(K, 2, argv);
    EXPECT(status == 0, "spawn_local(%d) returned %d (a rank failed a check or died)", K, status);
    if (status != 0) show_rank_logs(K);
    unsetenv("NCSN_COMM");
}

/* ---- 3. misuse, and one process ---------------------------------------------------------- */

typedef struct {
    ncsn_backend *be;
    ncsn_comm *comm;
    net *t;
} misuse_args;

static void tiny_bucket(void *arg) {
    misuse_args *m = arg;
    ncsn_grad_sync_create(m->comm, m->be, ncsn_model_grads(m->t->m), m->t->n, 3);
}

/* The reports of two backwards (the hook left set for the SSM loss's three), without
 * running them: a forked child must not enter OpenMP after its parent has used it. */
static void two_backwards(void *arg) {
    misuse_args *m = arg;
    ncsn_grad_sync *gs = ncsn_grad_sync_create(m->comm, m->be, ncsn_model_grads(m->t->m), m->t->n, 1000);
    ncsn_grad_sync_hook(gs, m->t->n / 2);
    ncsn_grad_sync_hook(gs, 0);
    ncsn_grad_sync_hook(gs, m->t->n - 10); /* the second backward's first report */
    ncsn_grad_sync_finish(gs);
}

static void partial_report(void *arg) {
    misuse_args *m = arg;
    ncsn_grad_sync *gs = ncsn_grad_sync_create(m->comm, m->be, ncsn_model_grads(m->t->m), m->t->n, 1000);
    ncsn_grad_sync_hook(gs, m->t->n / 2);
    ncsn_grad_sync_finish(gs);
}

static void test_one_process(ncsn_backend *be) {
    ncsn_comm *comm = ncsn_comm_create(be); /* no launcher variables, no NCSN_COMM: none */
    EXPECT(!strcmp(ncsn_comm_kind(comm), "none"), "one process: communicator %s", ncsn_comm_kind(comm));
    net t = net_create(be, &arch_cases[1], 0);
    float *grads = ncsn_model_grads(t.m);
    ncsn_grad_sync *gs = ncsn_grad_sync_create(comm, be, grads, t.n, 1000);
    ncsn_model_set_grad_ready_hook(t.m, ncsn_grad_sync_hook, gs);
    net_backward(&t, NULL);
    float *before = ncsn_xmalloc(t.n * sizeof(float));
    memcpy(before, grads, t.n * sizeof(float));
    ncsn_grad_sync_finish(gs);
    const ncsn_grad_sync_stats st = ncsn_grad_sync_last_stats(gs);
    EXPECT(first_difference(before, grads, t.n) == t.n && st.buckets == (t.n + 249) / 250,
           "one process: gradients changed by the no-op communicator, or %zu buckets (want %zu)", st.buckets,
           (t.n + 249) / 250);
    printf("  ok   one process (none): gradients unchanged, %zu buckets of 1000 bytes, %zu during the backward\n",
           st.buckets, st.overlapped);
    ncsn_model_set_grad_ready_hook(t.m, NULL, NULL);
    ncsn_grad_sync_destroy(gs);
    free(before);

    misuse_args m = {be, comm, &t};
    EXPECT_DIE1("grad_sync: bucket under one float", tiny_bucket, &m, "bucket of 3 bytes");
    EXPECT_DIE1("grad_sync: two backwards between finishes", two_backwards, &m,
                "second backward before ncsn_grad_sync_finish");
    EXPECT_DIE1("grad_sync: finish after a partial report", partial_report, &m,
                "finish after a backward that reported only");
    net_free(be, &t);
    ncsn_comm_destroy(comm);
}

/* ---- driver ------------------------------------------------------------------------------- */

static const char *const launcher_variables[] = {
    "NCSN_RANK", "NCSN_WORLD_SIZE", "NCSN_LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "SLURM_PROCID", "SLURM_NTASKS",
    "SLURM_LOCALID", "NCSN_COMM", "NCSN_RENDEZVOUS", NULL};

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "--worker")) {
        const char *dir = getenv("NCSN_TEST_GRAD_SYNC_DIR");
        if (!dir) ncsn_die("worker without NCSN_TEST_GRAD_SYNC_DIR");
        snprintf(scratch_dir, sizeof scratch_dir, "%s", dir);
        return run_worker();
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; launcher_variables[i]; i++) unsetenv(launcher_variables[i]);
    scratch_dir_create("grad_sync"); /* the ranks' logs */
    if (setenv("NCSN_TEST_GRAD_SYNC_DIR", scratch_dir, 1) != 0) return 2;

    ncsn_backend *be = harness_cpu_backend();
    printf("-- the grad-ready hook: reported regions are final\n");
    for (size_t a = 0; a < sizeof arch_cases / sizeof arch_cases[0]; a++) test_hook_contract(be, &arch_cases[a]);
    printf("-- one process, misuse\n");
    test_one_process(be);
    ncsn_backend_destroy(be);

    printf("-- bucketed all-reduce on K ranks == one whole-buffer all-reduce\n");
    for (int K = 2; K <= 3; K++) test_ranks(argv[0], K);
    scratch_dir_remove();
    return harness_finish("test_grad_sync");
}
