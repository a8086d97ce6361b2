/* grad_sync.c: the bucketed gradient all-reduce driven by the model's grad-ready hook
 * (grad_sync.h).
 *
 * State of a step: [unstarted, n) has been started as whole buckets, [0, unstarted) not
 * yet; final_from is the smallest first_final the hook reported (n before the first
 * report). The bucket below `unstarted` is [max(0, unstarted - B), unstarted); it is
 * started once final_from has reached its first element. The collectives themselves are
 * comm.h's split form (start / wait), which on NCCL forks the comm stream off the compute
 * stream at each start and joins it back at the wait.
 */
#include <stdlib.h>

#include "ncsn/common.h"
#include "ncsn/grad_sync.h"

struct ncsn_grad_sync {
    ncsn_comm *comm;
    ncsn_backend *be;
    float *grads;
    size_t n;
    size_t bucket;     /* floats per bucket */
    size_t unstarted;  /* [0, unstarted) not started this step */
    size_t final_from; /* [final_from, n) reported final this step */
    ncsn_grad_sync_stats step, last;
};

ncsn_grad_sync *ncsn_grad_sync_create(ncsn_comm *comm, ncsn_backend *be, float *grads, size_t n,
                                      size_t bucket_bytes) {
    NCSN_CHECKF(comm && be && grads && n > 0, "grad_sync: needs a communicator, a backend and a gradient buffer");
    NCSN_CHECKF(bucket_bytes >= sizeof(float), "grad_sync: a bucket of %zu bytes holds no gradient (at least %zu)",
                bucket_bytes, sizeof(float));
    ncsn_grad_sync *gs = ncsn_xcalloc(1, sizeof *gs);
    gs->comm = comm;
    gs->be = be;
    gs->grads = grads;
    gs->n = n;
    gs->bucket = bucket_bytes / sizeof(float);
    gs->unstarted = n;
    gs->final_from = n;
    return gs;
}

void ncsn_grad_sync_destroy(ncsn_grad_sync *gs) {
    if (!gs) return;
    NCSN_CHECKF(gs->unstarted == gs->n && gs->final_from == gs->n,
                "grad_sync: destroyed in the middle of a step (buckets started, ncsn_grad_sync_finish not called)");
    free(gs);
}

/* Starts, in order from the end, every unstarted bucket that lies inside [first_final, n). */
static void start_final_buckets(ncsn_grad_sync *gs, size_t first_final, int in_backward) {
    while (gs->unstarted > 0) {
        const size_t begin = gs->unstarted > gs->bucket ? gs->unstarted - gs->bucket : 0;
        if (begin < first_final) break; /* part of the bucket may still be accumulating */
        ncsn_comm_allreduce_mean_start(gs->comm, gs->be, gs->grads + begin, gs->unstarted - begin);
        gs->unstarted = begin;
        gs->step.buckets++;
        if (in_backward) gs->step.overlapped++;
    }
}

void ncsn_grad_sync_hook(void *ctx, size_t first_final) {
    ncsn_grad_sync *gs = ctx;
    /* Within a backward the reports strictly decrease to 0; anything else is a second
     * backward reporting before finish, whose gradients would add onto reduced buckets. */
    NCSN_CHECKF(first_final < gs->final_from,
                "grad_sync: gradients from %zu reported final after [%zu, %zu) already were: a second backward "
                "before ncsn_grad_sync_finish (set the grad-ready hook only for the last backward of a step)",
                first_final, gs->final_from, gs->n);
    gs->final_from = first_final;
    start_final_buckets(gs, first_final, first_final > 0);
}

void ncsn_grad_sync_finish(ncsn_grad_sync *gs) {
    /* Either no backward reported (no hook: reduce everything now) or one reported all. */
    NCSN_CHECKF(gs->final_from == 0 || gs->final_from == gs->n,
                "grad_sync: finish after a backward that reported only [%zu, %zu) of the gradients final",
                gs->final_from, gs->n);
    start_final_buckets(gs, 0, 0);
    ncsn_comm_wait(gs->comm, gs->be);
    gs->last = gs->step;
    gs->step = (ncsn_grad_sync_stats){0, 0};
    gs->unstarted = gs->n;
    gs->final_from = gs->n;
}

ncsn_grad_sync_stats ncsn_grad_sync_last_stats(const ncsn_grad_sync *gs) { return gs->last; }
