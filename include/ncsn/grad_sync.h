/* grad_sync.h: the data-parallel gradient all-reduce in buckets, started during the
 * backward (PyTorch DDP's Reducer, for one contiguous gradient buffer).
 *
 * What it is: a listener for the model's grad-ready hook (model.h). It cuts the gradient
 * buffer into buckets of bucket_bytes counted from the END of the buffer (the backward
 * finishes the last table entries first) and starts the mean all-reduce of a bucket
 * (ncsn_comm_allreduce_mean_start) as soon as the hook reports every gradient in it final.
 * ncsn_grad_sync_finish starts what is left and orders the result before everything
 * enqueued on the backend afterwards (clipping, Adam, the next step's zero_grads).
 * What it is not: a communicator (comm.h), or gradient accumulation over micro-batches.
 *
 * Result: the same as one ncsn_comm_allreduce_mean over the whole buffer. With the shm
 * communicator bit for bit (its mean is elementwise, independent of bucketing; comm.h);
 * with NCCL the same up to NCCL's summation order, which depends on the count (comm.h).
 *
 * Buckets: B = bucket_bytes / 4 floats (rounded down); bucket j holds the elements
 * [max(0, n - (j+1) B), n - j B), and they are started in the order j = 0, 1, ... on every
 * rank. The sequence of collectives therefore depends only on n and B, never on timing,
 * as NCCL requires of all ranks. A bucket is started at the first hook call whose final
 * suffix covers it; the call with 0 that ends every backward starts the rest. PyTorch DDP
 * uses 25 MiB buckets (NCSN_GRAD_SYNC_DEFAULT_BUCKET_BYTES); smaller ones start earlier and
 * overlap more, at a fixed cost per collective.
 *
 * Overlap, by communicator:
 *   nccl  each start records an event on the backend's compute stream and makes the
 *         comm's own stream wait for it before ncclAllReduce (cuda_comm.c), so the bucket
 *         is reduced while the compute stream runs the earlier layers' backward. finish
 *         records an event on the comm stream after the last NCCL call and makes the
 *         compute stream wait for it. The host never blocks.
 *   shm   each bucket is reduced synchronously inside the hook: bucketed, not overlapped.
 *         The CPU backend runs every op on all cores of the calling process, so there is
 *         nothing to overlap the copy-and-sum with; the result is the same.
 *   none  (one process) nothing happens.
 *
 * Use (the trainer):
 *   gs = ncsn_grad_sync_create(comm, be, ncsn_model_grads(m), table->total, bytes);
 *   ncsn_model_set_grad_ready_hook(m, ncsn_grad_sync_hook, gs);   -- once
 *   per step: zero_grads; forward; backward (starts buckets); ncsn_grad_sync_finish(gs);
 *             then clipping and Adam.
 * Without hook calls in a step (no hook set, e.g. for the SSM loss's three backwards),
 * finish reduces the whole buffer, in the same buckets. The hook may report only ONE
 * backward between two finishes: a second backward's report (its offsets start above the
 * first one's 0) is a fatal error naming the cause, since a bucket already reduced would
 * be added to again. Between a bucket's start and finish nothing may write its
 * gradients; the hook's contract guarantees that for the backward.
 *
 * Errors are fatal (common.h).
 */
#ifndef NCSN_GRAD_SYNC_H
#define NCSN_GRAD_SYNC_H

#include <stddef.h>

#include "ncsn/backend.h"
#include "ncsn/comm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* PyTorch DDP's bucket_cap_mb default. */
#define NCSN_GRAD_SYNC_DEFAULT_BUCKET_BYTES ((size_t)25 << 20)

typedef struct ncsn_grad_sync ncsn_grad_sync;

/* grads: n floats in `be`'s memory (the model's gradient buffer); bucket_bytes >= 4. The
 * communicator must have been created for `be`. */
ncsn_grad_sync *ncsn_grad_sync_create(ncsn_comm *comm, ncsn_backend *be, float *grads, size_t n,
                                      size_t bucket_bytes);
/* NULL is a no-op. Call after the last finish (no bucket may be in flight); clear the
 * model's hook first if the model lives on. */
void ncsn_grad_sync_destroy(ncsn_grad_sync *gs);

/* The grad-ready hook (model.h's ncsn_grad_ready_fn); ctx is the ncsn_grad_sync. Starts
 * every bucket inside [first_final, n) that is not started yet. */
void ncsn_grad_sync_hook(void *ctx, size_t first_final);

/* Starts the buckets not started yet, then orders the reduction before everything
 * enqueued on the backend afterwards. Ends the step: the next hook call begins a new one. */
void ncsn_grad_sync_finish(ncsn_grad_sync *gs);

typedef struct {
    size_t buckets;    /* buckets reduced in the step: ceil(n / B) */
    size_t overlapped; /* of which started by the hook before the backward's last report */
} ncsn_grad_sync_stats;

/* Of the last finished step (zeros before the first). */
ncsn_grad_sync_stats ncsn_grad_sync_last_stats(const ncsn_grad_sync *gs);

#ifdef __cplusplus
}
#endif

#endif /* NCSN_GRAD_SYNC_H */
