/* cuda_comm.c: the NCCL communicator behind comm.h (one process per GPU).
 *
 * Rank 0 calls ncclGetUniqueId (which also starts NCCL's bootstrap listener in rank 0's
 * process, so rank 0 must stay alive through ncclCommInitRank), comm.c hands the 128
 * bytes to the other ranks through the rendezvous, and every rank calls ncclCommInitRank
 * on its backend's device.
 *
 * Streams: collectives run on the communicator's own stream, joined to the backend's
 * compute stream by events in both directions:
 *   start: record `ready` on the compute stream; the comm stream waits for it; enqueue
 *          the NCCL collective on the comm stream. The compute stream is free to go on.
 *   wait:  record `reduced` on the comm stream; the compute stream waits for it.
 * Neither blocks the host. With one start followed by one wait this is the backend
 * stream's own order; with several starts during the backward (host/grad_sync.c starts
 * each gradient bucket from the model's grad-ready hook as soon as it is final) NCCL
 * reduces the buckets alongside the remaining backward kernels: `ready` is re-recorded at
 * each start, and cudaStreamWaitEvent waits for the record current at its call, so each
 * bucket waits for exactly the kernels enqueued before its hook call. The pattern (fork
 * and join through events) is capturable in a CUDA graph, as are NCCL collectives.
 *
 * Every NCCL call goes through NCCL_CHECK, which prints ncclGetErrorString and the
 * communicator's last error text (the detail: which peer, which transport) with the call
 * and file:line; CUDA calls through CUDA_CHECK (cuda_internal.h).
 *
 * Not compiled into anything that runs here: this machine has no GPU. It compiles with
 * CUDA=1 and is linked only when comm.c is built with NCSN_WITH_NCCL (comm.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nccl.h>

#include "host/cuda_internal.h"
#include "ncsn/comm.h"

_Static_assert(sizeof(ncclUniqueId) == NCSN_COMM_ID_BYTES, "NCCL's unique id must fit the rendezvous id");

#define NCCL_CHECK_COMM(comm, call)                                                                                    \
    do {                                                                                                               \
        ncclResult_t nccl_check_status_ = (call);                                                                      \
        if (nccl_check_status_ != ncclSuccess) {                                                                       \
            const char *nccl_check_detail_ = ncclGetLastError(comm);                                                   \
            fprintf(stderr, "ncsn: %s:%d: %s failed: %s (%d)%s%s\n", __FILE__, __LINE__, #call,                        \
                    ncclGetErrorString(nccl_check_status_), (int)nccl_check_status_,                                   \
                    nccl_check_detail_ && nccl_check_detail_[0] ? ": " : "",                                           \
                    nccl_check_detail_ ? nccl_check_detail_ : "");                                                     \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)
/* Calls without a communicator (ncclGetUniqueId, ncclCommInitRank, ncclGetVersion). */
#define NCCL_CHECK(call) NCCL_CHECK_COMM(NULL, call)

struct ncsn_nccl {
    ncclComm_t comm;
    int device;
    int rank, world_size;
    cudaStream_t stream; /* the comm stream */
    cudaEvent_t ready;   /* recorded on the compute stream: the buffer is final */
    cudaEvent_t reduced; /* recorded on the comm stream: the collectives so far are done */
    float *barrier_scalar; /* one device float reduced by ncsn_nccl_barrier */
};

void ncsn_nccl_unique_id(unsigned char id[NCSN_COMM_ID_BYTES], char *version, size_t version_len) {
    ncclUniqueId unique;
    NCCL_CHECK(ncclGetUniqueId(&unique));
    memcpy(id, &unique, NCSN_COMM_ID_BYTES);
    int v = 0;
    NCCL_CHECK(ncclGetVersion(&v));
    /* NCCL >= 2.9 encodes MAJOR * 10000 + MINOR * 100 + PATCH. */
    snprintf(version, version_len, "NCCL %d.%d.%d", v / 10000, v / 100 % 100, v % 100);
}

ncsn_nccl *ncsn_nccl_create(ncsn_backend *be, int rank, int world_size, const unsigned char id[NCSN_COMM_ID_BYTES]) {
    NCSN_CHECKF(be->kind == NCSN_DEVICE_CUDA, "nccl: needs the CUDA backend");
    NCSN_CHECKF(world_size >= 1 && rank >= 0 && rank < world_size, "nccl: rank %d of world size %d", rank, world_size);
    ncsn_nccl *nc = ncsn_xcalloc(1, sizeof *nc);
    nc->device = cuda_impl(be)->device;
    nc->rank = rank;
    nc->world_size = world_size;
    /* ncclCommInitRank binds the communicator to the current device. */
    CUDA_CHECK(cudaSetDevice(nc->device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&nc->stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&nc->ready, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&nc->reduced, cudaEventDisableTiming));
    CUDA_CHECK(cudaMalloc((void **)&nc->barrier_scalar, sizeof(float)));
    CUDA_CHECK(cudaMemsetAsync(nc->barrier_scalar, 0, sizeof(float), nc->stream));
    ncclUniqueId unique;
    memcpy(&unique, id, NCSN_COMM_ID_BYTES);
    NCCL_CHECK(ncclCommInitRank(&nc->comm, world_size, unique, rank));
    int nccl_ranks = 0, nccl_device = -1;
    NCCL_CHECK_COMM(nc->comm, ncclCommCount(nc->comm, &nccl_ranks));
    NCCL_CHECK_COMM(nc->comm, ncclCommCuDevice(nc->comm, &nccl_device));
    NCSN_CHECKF(nccl_ranks == world_size && nccl_device == nc->device,
                "nccl: communicator has %d ranks on device %d, expected %d ranks on device %d", nccl_ranks, nccl_device,
                world_size, nc->device);
    return nc;
}

/* The comm stream waits for everything enqueued on the compute stream so far. */
static void join_compute_into_comm(ncsn_nccl *nc, ncsn_backend *be) {
    CUDA_CHECK(cudaEventRecord(nc->ready, cuda_impl(be)->stream));
    CUDA_CHECK(cudaStreamWaitEvent(nc->stream, nc->ready, 0));
}

void ncsn_nccl_allreduce_mean_start(ncsn_nccl *nc, ncsn_backend *be, float *buf, size_t n) {
    join_compute_into_comm(nc, be);
    /* In place (sendbuff == recvbuff) is supported by NCCL; ncclAvg divides by the rank count. */
    NCCL_CHECK_COMM(nc->comm, ncclAllReduce(buf, buf, n, ncclFloat, ncclAvg, nc->comm, nc->stream));
}

void ncsn_nccl_wait(ncsn_nccl *nc, ncsn_backend *be) {
    CUDA_CHECK(cudaEventRecord(nc->reduced, nc->stream));
    CUDA_CHECK(cudaStreamWaitEvent(cuda_impl(be)->stream, nc->reduced, 0));
}

void ncsn_nccl_broadcast(ncsn_nccl *nc, ncsn_backend *be, float *buf, size_t n, int root) {
    join_compute_into_comm(nc, be);
    NCCL_CHECK_COMM(nc->comm, ncclBroadcast(buf, buf, n, ncclFloat, root, nc->comm, nc->stream));
    ncsn_nccl_wait(nc, be);
}

/* NCCL has no barrier: a one-element all-reduce completes on a rank only once every rank
 * has contributed, i.e. has entered the barrier; the host then waits for it. */
void ncsn_nccl_barrier(ncsn_nccl *nc) {
    NCCL_CHECK_COMM(nc->comm, ncclAllReduce(nc->barrier_scalar, nc->barrier_scalar, 1, ncclFloat, ncclSum, nc->comm,
                                            nc->stream));
    CUDA_CHECK(cudaStreamSynchronize(nc->stream));
}

void ncsn_nccl_destroy(ncsn_nccl *nc) {
    if (!nc) return;
    CUDA_CHECK(cudaSetDevice(nc->device));
    CUDA_CHECK(cudaStreamSynchronize(nc->stream));
    /* Finalize flushes NCCL's outstanding operations (collective over the ranks); Destroy
     * then frees local resources only. */
    NCCL_CHECK_COMM(nc->comm, ncclCommFinalize(nc->comm));
    NCCL_CHECK_COMM(nc->comm, ncclCommDestroy(nc->comm));
    CUDA_CHECK(cudaFree(nc->barrier_scalar));
    CUDA_CHECK(cudaEventDestroy(nc->ready));
    CUDA_CHECK(cudaEventDestroy(nc->reduced));
    CUDA_CHECK(cudaStreamDestroy(nc->stream));
    free(nc);
}
