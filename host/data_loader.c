/* data_loader.c: shuffled batches from an in-memory dataset, prepared on a host thread
 * ahead of the consumer (data.h).
 *
 * The example order is a pure function of (seed, stream, epoch, position), so the worker
 * can run ahead freely and a resumed run only needs the consumer's (epoch, position).
 * Buffers rotate in a ring: the worker fills slot w, the consumer takes slot c, both in
 * ring order; a slot is FREE -> READY (filled, waiting) -> HELD (consumer) -> FREE. The
 * worker fills outside the lock; set_state bumps a generation number so that a fill that
 * started before the reset is thrown away when it ends instead of being waited for.
 */
#include <pthread.h>
#include <string.h>

#include "kernels/rng_math.h"
#include "ncsn/common.h"
#include "ncsn/data.h"

enum { SLOT_FREE = 0, SLOT_READY = 1, SLOT_HELD = 2 };

struct ncsn_loader {
    const ncsn_dataset *ds;
    int batch_size;    /* global B */
    int rows;          /* rows this process receives: B / shard_count */
    int row_begin;     /* its first row in the global batch */
    size_t example;    /* floats per example: C*H*W */
    uint64_t seed;
    uint32_t stream;
    int shuffle;

    int depth;
    float **buffers;
    int *status;
    ncsn_loader_state *slot_begin, *slot_end;
    void *(*buffer_alloc)(void *ctx, size_t bytes);
    void (*buffer_free)(void *ctx, void *ptr);
    void *buffer_ctx;

    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t changed; /* any slot or control change; waiters re-check their condition */
    int stop;
    uint64_t generation;

    /* worker side (next_fill and fill_slot under the lock; the permutation cache is the
     * worker's alone) */
    ncsn_loader_state next_fill;
    int fill_slot;
    uint32_t *perm;
    uint64_t perm_epoch;
    int perm_valid;

    /* consumer side */
    int take_slot;
    int held;
    ncsn_loader_state consumer_state;
};

static void check_pthread(int rc, const char *what) {
    if (rc != 0) ncsn_die("data loader: %s failed: %s", what, strerror(rc));
}

void ncsn_loader_permutation(uint32_t *perm, size_t N, uint64_t seed, uint32_t stream, uint64_t epoch) {
    NCSN_CHECKF(N <= UINT32_MAX, "data loader: %zu examples exceed the 2^32 the order can index", N);
    NCSN_CHECKF(epoch <= UINT32_MAX, "data loader: epoch %llu exceeds 2^32", (unsigned long long)epoch);
    for (size_t i = 0; i < N; i++) perm[i] = (uint32_t)i;
    uint64_t draw = 0;
    for (size_t i = N; i-- > 1;) {
        /* j uniform in [0, i]: Lemire, "Fast random integer generation in an interval"
         * (2019): the high word of u * range, rejecting the few low words that would bias it. */
        uint32_t range = (uint32_t)i + 1u;
        uint64_t m = (uint64_t)ncsn_rng_u32(seed, NCSN_RNG_SHUFFLE, stream, (uint32_t)epoch, draw++) * range;
        uint32_t low = (uint32_t)m;
        if (low < range) {
            uint32_t threshold = (uint32_t)(0u - range) % range;
            while (low < threshold) {
                m = (uint64_t)ncsn_rng_u32(seed, NCSN_RNG_SHUFFLE, stream, (uint32_t)epoch, draw++) * range;
                low = (uint32_t)m;
            }
        }
        size_t j = (size_t)(m >> 32);
        uint32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

static void advance(ncsn_loader_state *s, size_t N) {
    if (++s->position == N) {
        s->epoch++;
        s->position = 0;
    }
}

static size_t example_at(ncsn_loader *ld, ncsn_loader_state s) {
    if (!ld->shuffle) return (size_t)s.position;
    if (!ld->perm_valid || ld->perm_epoch != s.epoch) {
        ncsn_loader_permutation(ld->perm, ld->ds->N, ld->seed, ld->stream, s.epoch);
        ld->perm_epoch = s.epoch;
        ld->perm_valid = 1;
    }
    return ld->perm[s.position];
}

/* Writes this shard's rows of the batch that starts at `s`; returns the state after it. */
static ncsn_loader_state fill_batch(ncsn_loader *ld, float *dst, ncsn_loader_state s) {
    for (int r = 0; r < ld->batch_size; r++) {
        if (r >= ld->row_begin && r < ld->row_begin + ld->rows)
            ncsn_dataset_example(ld->ds, example_at(ld, s), dst + (size_t)(r - ld->row_begin) * ld->example);
        advance(&s, ld->ds->N);
    }
    return s;
}

static void *worker_main(void *arg) {
    ncsn_loader *ld = arg;
    check_pthread(pthread_mutex_lock(&ld->lock), "pthread_mutex_lock");
    while (!ld->stop) {
        if (ld->status[ld->fill_slot] != SLOT_FREE) {
            check_pthread(pthread_cond_wait(&ld->changed, &ld->lock), "pthread_cond_wait");
            continue;
        }
        int slot = ld->fill_slot;
        uint64_t generation = ld->generation;
        ncsn_loader_state begin = ld->next_fill;
        check_pthread(pthread_mutex_unlock(&ld->lock), "pthread_mutex_unlock");
        ncsn_loader_state end = fill_batch(ld, ld->buffers[slot], begin);
        check_pthread(pthread_mutex_lock(&ld->lock), "pthread_mutex_lock");
        if (generation == ld->generation) {
            ld->slot_begin[slot] = begin;
            ld->slot_end[slot] = end;
            ld->status[slot] = SLOT_READY;
            ld->fill_slot = (slot + 1) % ld->depth;
            ld->next_fill = end;
            check_pthread(pthread_cond_broadcast(&ld->changed), "pthread_cond_broadcast");
        }
    }
    check_pthread(pthread_mutex_unlock(&ld->lock), "pthread_mutex_unlock");
    return NULL;
}

static void check_state(const ncsn_dataset *ds, ncsn_loader_state s) {
    if (s.position >= ds->N)
        ncsn_die("%s: data order state (epoch %llu, position %llu) does not fit a dataset of %zu examples "
                 "(a checkpoint from other data?)",
                 ds->path, (unsigned long long)s.epoch, (unsigned long long)s.position, ds->N);
}

static void *default_alloc(void *ctx, size_t bytes) {
    (void)ctx;
    return ncsn_xmalloc(bytes);
}

static void default_free(void *ctx, void *ptr) {
    (void)ctx;
    free(ptr);
}

ncsn_loader *ncsn_loader_create(const ncsn_dataset *ds, const ncsn_loader_options *opt, ncsn_loader_state start) {
    int shards = opt->shard_count ? opt->shard_count : 1;
    NCSN_CHECKF(ds->N > 0 && (ds->u8 || ds->f32), "%s: data loader over an empty dataset", ds->path);
    NCSN_CHECKF(opt->batch_size > 0, "data loader: batch size %d", opt->batch_size);
    NCSN_CHECKF(shards > 0 && opt->shard_index >= 0 && opt->shard_index < shards,
                "data loader: shard %d of %d", opt->shard_index, shards);
    if (opt->batch_size % shards != 0)
        ncsn_die("data loader: batch size %d is not a multiple of the %d data-parallel ranks", opt->batch_size, shards);
    NCSN_CHECKF(opt->depth == 0 || opt->depth >= 2, "data loader: depth %d (want >= 2)", opt->depth);
    NCSN_CHECKF(!opt->buffer_alloc == !opt->buffer_free, "data loader: a buffer provider needs both alloc and free");

    check_state(ds, start);

    ncsn_loader *ld = ncsn_xcalloc(1, sizeof *ld);
    ld->ds = ds;
    ld->batch_size = opt->batch_size;
    ld->rows = opt->batch_size / shards;
    ld->row_begin = opt->shard_index * ld->rows;
    ld->example = (size_t)ds->C * ds->H * ds->W;
    ld->seed = opt->seed;
    ld->stream = opt->stream;
    ld->shuffle = opt->shuffle;
    ld->depth = opt->depth ? opt->depth : 2;
    ld->buffer_alloc = opt->buffer_alloc ? opt->buffer_alloc : default_alloc;
    ld->buffer_free = opt->buffer_alloc ? opt->buffer_free : default_free;
    ld->buffer_ctx = opt->buffer_ctx;

    ld->buffers = ncsn_xcalloc((size_t)ld->depth, sizeof *ld->buffers);
    ld->status = ncsn_xcalloc((size_t)ld->depth, sizeof *ld->status);
    ld->slot_begin = ncsn_xcalloc((size_t)ld->depth, sizeof *ld->slot_begin);
    ld->slot_end = ncsn_xcalloc((size_t)ld->depth, sizeof *ld->slot_end);
    size_t bytes = (size_t)ld->rows * ld->example * sizeof(float);
    for (int i = 0; i < ld->depth; i++) {
        ld->buffers[i] = ld->buffer_alloc(ld->buffer_ctx, bytes);
        NCSN_CHECKF(ld->buffers[i], "data loader: buffer provider returned NULL for %zu bytes", bytes);
    }
    if (ld->shuffle) {
        NCSN_CHECKF(ds->N <= UINT32_MAX, "%s: %zu examples exceed the 2^32 the order can index", ds->path, ds->N);
        ld->perm = ncsn_xmalloc(ds->N * sizeof *ld->perm);
    }
    ld->next_fill = ld->consumer_state = start;

    check_pthread(pthread_mutex_init(&ld->lock, NULL), "pthread_mutex_init");
    check_pthread(pthread_cond_init(&ld->changed, NULL), "pthread_cond_init");
    check_pthread(pthread_create(&ld->thread, NULL, worker_main, ld), "pthread_create");
    return ld;
}

void ncsn_loader_destroy(ncsn_loader *ld) {
    if (!ld) return;
    NCSN_CHECKF(ld->held == 0, "data loader: destroyed while the consumer holds %d batch(es)", ld->held);
    check_pthread(pthread_mutex_lock(&ld->lock), "pthread_mutex_lock");
    ld->stop = 1;
    check_pthread(pthread_cond_broadcast(&ld->changed), "pthread_cond_broadcast");
    check_pthread(pthread_mutex_unlock(&ld->lock), "pthread_mutex_unlock");
    check_pthread(pthread_join(ld->thread, NULL), "pthread_join");
    check_pthread(pthread_cond_destroy(&ld->changed), "pthread_cond_destroy");
    check_pthread(pthread_mutex_destroy(&ld->lock), "pthread_mutex_destroy");
    for (int i = 0; i < ld->depth; i++) ld->buffer_free(ld->buffer_ctx, ld->buffers[i]);
    free(ld->buffers);
    free(ld->status);
    free(ld->slot_begin);
    free(ld->slot_end);
    free(ld->perm);
    free(ld);
}

ncsn_batch ncsn_loader_acquire(ncsn_loader *ld) {
    /* With every buffer held the worker could never produce the next batch. */
    NCSN_CHECKF(ld->held < ld->depth, "data loader: acquire with all %d buffers held (release one first)", ld->depth);
    check_pthread(pthread_mutex_lock(&ld->lock), "pthread_mutex_lock");
    while (ld->status[ld->take_slot] != SLOT_READY)
        check_pthread(pthread_cond_wait(&ld->changed, &ld->lock), "pthread_cond_wait");
    int slot = ld->take_slot;
    ld->status[slot] = SLOT_HELD;
    ld->take_slot = (slot + 1) % ld->depth;
    ld->held++;
    ncsn_batch b = {ld->buffers[slot], ld->rows, ld->slot_begin[slot], ld->slot_end[slot], slot};
    ld->consumer_state = b.end;
    check_pthread(pthread_mutex_unlock(&ld->lock), "pthread_mutex_unlock");
    return b;
}

void ncsn_loader_release(ncsn_loader *ld, const ncsn_batch *b) {
    NCSN_CHECKF(b->slot >= 0 && b->slot < ld->depth, "data loader: release of unknown slot %d", b->slot);
    check_pthread(pthread_mutex_lock(&ld->lock), "pthread_mutex_lock");
    NCSN_CHECKF(ld->status[b->slot] == SLOT_HELD, "data loader: release of slot %d, which is not held", b->slot);
    ld->status[b->slot] = SLOT_FREE;
    ld->held--;
    check_pthread(pthread_cond_broadcast(&ld->changed), "pthread_cond_broadcast");
    check_pthread(pthread_mutex_unlock(&ld->lock), "pthread_mutex_unlock");
}

void ncsn_loader_next(ncsn_loader *ld, float *dst) {
    ncsn_batch b = ncsn_loader_acquire(ld);
    memcpy(dst, b.x, (size_t)b.n * ld->example * sizeof(float));
    ncsn_loader_release(ld, &b);
}

ncsn_loader_state ncsn_loader_get_state(const ncsn_loader *ld) {
    return ld->consumer_state;
}

void ncsn_loader_set_state(ncsn_loader *ld, ncsn_loader_state s) {
    check_state(ld->ds, s);
    check_pthread(pthread_mutex_lock(&ld->lock), "pthread_mutex_lock");
    NCSN_CHECKF(ld->held == 0, "data loader: set_state while the consumer holds %d batch(es)", ld->held);
    ld->generation++;
    for (int i = 0; i < ld->depth; i++) ld->status[i] = SLOT_FREE;
    ld->fill_slot = ld->take_slot = 0;
    ld->next_fill = ld->consumer_state = s;
    check_pthread(pthread_cond_broadcast(&ld->changed), "pthread_cond_broadcast");
    check_pthread(pthread_mutex_unlock(&ld->lock), "pthread_mutex_unlock");
}
