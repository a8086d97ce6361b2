/* comm.h: data-parallel communication between training processes (ranks).
 *
 * What it is: one interface for the collectives data-parallel training needs (mean
 * all-reduce of the gradient buffer, broadcast of the initial parameters, barrier), with
 * three implementations chosen at ncsn_comm_create:
 *   none  one process: every collective is the identity (the default for world size 1);
 *   shm   K processes on one machine, CPU backend: a CPU all-reduce through POSIX shared
 *         memory (comm.c). This is how the multi-rank code path is tested without GPUs;
 *   nccl  one process per GPU, CUDA backend: NCCL (cuda_comm.c, built with CUDA=1 and
 *         -DNCSN_WITH_NCCL -lnccl; see "Building with NCCL").
 * What it is not: a general message-passing layer, or a launcher for several machines
 * (mpirun/srun do that; ncsn_comm_spawn_local covers one machine). It does not shard data,
 * write checkpoints or pick ranks for either: the trainer does (see "The trainer's side").
 *
 * Why the per-step math is the single-device math on the global batch
 * With B = global batch, K ranks, each rank holds a DISJOINT slice of B/K examples and its
 * loss is the mean over its slice, so its parameter gradient is (K/B) * sum over its slice.
 * The mean over ranks of those gradients is (1/B) * sum over the whole batch: exactly the
 * gradient of the single-device loss on B examples (up to fp32 summation order). This needs
 * EQUAL slices: the trainer requires B % K == 0. Noise, levels and dequantisation draws are
 * keyed by the GLOBAL example index (rank * B/K + i, kernels/rng_math.h), so each example
 * sees the same draws as on one device. tests/test_comm.c checks the property on the CPU
 * backend's dsm_loss gradient with 1, 2 and 3 ranks.
 *
 * Launching (rank and world size come from environment variables, so no MPI library is
 * needed; a build with MPI=1 also uses MPI for the rendezvous, below)
 *   ncsn train ... --nproc K            K ranks on this machine (ncsn_comm_spawn_local).
 *   mpirun -np K ncsn train ...         Open MPI: OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK.
 *   srun -n K ncsn train ...            Slurm: SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID.
 *                                       (In an sbatch script, launch with srun: the script
 *                                       itself sees SLURM_PROCID=0 and the full SLURM_NTASKS.)
 *   any launcher                        NCSN_RANK / NCSN_WORLD_SIZE [/ NCSN_LOCAL_RANK].
 * Precedence: NCSN_*, then Open MPI, then MPICH/Intel MPI (PMI_RANK / PMI_SIZE /
 * MPI_LOCALRANKID), then Slurm (so mpirun inside a Slurm allocation uses mpirun's ranks).
 * No variable set: one process, rank 0. The local rank (the rank's index on its machine)
 * defaults to the global rank.
 *
 * Rendezvous: how ranks find each other (NCSN_RENDEZVOUS, needed when world size > 1,
 * except under an MPI launcher in a build with MPI)
 * Rank 0 creates a 128-byte id (NCCL: ncclGetUniqueId, which also starts NCCL's bootstrap
 * listener in rank 0's process; shm: the name of the shared-memory segment) and the other
 * ranks receive it out of band:
 *   mpi            MPI_Bcast from rank 0 over a duplicate of MPI_COMM_WORLD. The default
 *                  when NCSN_RENDEZVOUS is unset, the binary was built with MPI=1
 *                  (-DNCSN_WITH_MPI; ncsn_comm_mpi_compiled) and an MPI launcher started
 *                  the process: one of OMPI_COMM_WORLD_SIZE (Open MPI's mpirun), PMI_SIZE
 *                  (MPICH / Intel MPI Hydra, srun --mpi=pmi2) or PMIX_RANK (srun
 *                  --mpi=pmix) is set. MPI_Init_thread (FUNNELED) runs in ncsn_comm_create
 *                  unless MPI is initialised already, never in a process no MPI launcher
 *                  started (an explicit NCSN_RENDEZVOUS=mpi there is an error), and never
 *                  for one process. MPI_Comm_rank/_size must equal the rank and world size
 *                  from the variables above (else a one-line error naming both). MPI_Finalize
 *                  runs when the last communicator that used MPI is destroyed, and only if
 *                  ncsn initialised MPI; a caller of ncsn_rendezvous_exchange alone
 *                  finalises MPI itself. MPI does not time out (NCSN_RENDEZVOUS_TIMEOUT does
 *                  not apply); a rank that dies makes mpirun end the job. MPI carries only
 *                  the id: the collectives run on shm or NCCL. A build without MPI refuses
 *                  NCSN_RENDEZVOUS=mpi ("built without MPI (make MPI=1)").
 *   file:PATH      Rank 0 writes PATH atomically (PATH.tmp.<pid>, fsync, rename, fsync of
 *                  the directory); the others poll every 50 ms. PATH must be on a
 *                  filesystem every rank sees (NFS, Lustre; any local path for --nproc).
 *                  Rank 0 removes PATH once every rank is connected. Use a fresh path per
 *                  job: a file left by a crashed run is recognised and skipped only when a
 *                  job tag is available (below).
 *   tcp:HOST:PORT  Rank 0 listens on PORT (on the loopback interface when HOST is a
 *                  loopback address, else on all interfaces); the others connect to
 *                  HOST:PORT, retrying until rank 0 is up. HOST is rank 0's host name or
 *                  address as the other ranks see it, e.g. tcp:$(hostname):29500 under
 *                  mpirun, or the first host of `scontrol show hostnames` under Slurm.
 * file and tcp wait at most NCSN_RENDEZVOUS_TIMEOUT seconds (default 600) and then fail with a
 * message naming the rendezvous and what was missing. Job tag: NCSN_RUN_ID (set by
 * ncsn_comm_spawn_local), else SLURM_JOB_ID.SLURM_STEP_ID, else Open MPI's job id
 * (PMIX_NAMESPACE or OMPI_MCA_ess_base_jobid); a file or a TCP peer with another tag
 * belongs to another run and is ignored (file) or refused (tcp). --nproc needs no
 * NCSN_RENDEZVOUS: the launcher picks a file under $TMPDIR (default /tmp).
 *
 * Other environment variables
 *   NCSN_COMM             auto (default: nccl with the CUDA backend, shm with the CPU
 *                         backend, none for one process) | shm | nccl | none. An explicit
 *                         shm or nccl is honoured for one process too (tests).
 *   NCSN_COMM_TIMEOUT     seconds an shm collective waits for the slowest rank before it
 *                         fails naming the missing ranks (default 1800; rank 0 may be
 *                         writing a checkpoint or samples while the others wait). A rank
 *                         that exits is detected within 0.1 s. NCCL: NCCL's own settings.
 *
 * Semantics of the collectives (all ranks must call the same collectives, in the same
 * order, with the same n; buffers live in the backend's memory: host for CPU, device for
 * CUDA; `be` is the backend the comm was created with)
 * - ncsn_comm_allreduce_mean: in place, buf <- (1/K) sum over ranks of buf. Ordered after
 *   everything already enqueued on `be` and before anything enqueued after it returns
 *   (CUDA: stream order, no host synchronisation; CPU: it returns when done).
 *   shm: each element is exactly (float)((x_0 + ... + x_{K-1}) / K) with the sum and the
 *   division in float64, the sum in rank order 0..K-1: within half an ulp of the float64
 *   mean (plus the float64 rounding of the sum, ~2^-50 relative unless the ranks' values
 *   cancel), bit-identical on every rank, independent of how the buffer is split into
 *   chunks or buckets, and identical from run to run.
 *   nccl: ncclAllReduce(..., ncclAvg) on the comm's stream; every rank receives the same
 *   values, but the summation order depends on NCCL's algorithm and the count, so the
 *   last bits can differ between bucketings and GPU counts.
 * - ncsn_comm_allreduce_mean_buckets: the same, as consecutive reductions of bucket_bytes
 *   each (rounded down to whole floats). Same result on shm (bitwise).
 * - ncsn_comm_allreduce_mean_start / ncsn_comm_wait: the split form, for overlapping the
 *   reduction of finished gradient regions with the rest of the backward (below). Between
 *   start and wait neither the host nor ops on `be` may read or write the region. On
 *   none/shm, start completes the reduction before returning and wait does nothing.
 * - ncsn_comm_broadcast: buf <- root's buf on every rank (the initial parameters, so all
 *   ranks start identical even if they were initialised differently).
 * - ncsn_comm_barrier: returns on a rank only after every rank has entered it (e.g. the
 *   others wait while rank 0 writes a checkpoint). It does not wait for `be`'s queue.
 *
 * Overlapping the gradient all-reduce with the backward (include/ncsn/grad_sync.h, used by
 * the trainer) The backward runs from the network's output to its input, so the parameter
 * gradients of the LAST table entries (contiguous at the end of the one gradient buffer)
 * are final first; the model's grad-ready hook reports each suffix that is. Each time the
 * final region since the last launch reaches B bytes (25 MiB, PyTorch DDP's default),
 * grad_sync calls ncsn_comm_allreduce_mean_start(comm, be, grads + off, count). On CUDA that records an
 * event on the backend's compute stream, makes the comm's own stream wait for it, and
 * enqueues ncclAllReduce there: NCCL reduces that region while the compute stream goes on
 * with the earlier layers. After the backward, the remainder is started, then
 * ncsn_comm_wait(comm, be) records an event on the comm stream and makes the compute
 * stream wait for it, so gradient clipping, Adam and the next step's gradient zeroing see
 * the reduced gradients; the host never blocks. This is correct because every parameter
 * is used once per forward, so a region is not written again after its layer's backward.
 * The fork/join of the two streams through events is also what CUDA graph capture needs
 * (NCCL collectives can be captured). The CPU comm runs start synchronously: on two cores
 * there is nothing to overlap with.
 *
 * GPUs: one GPU per rank. The CUDA backend uses the first visible device, so each rank
 * must see only its own: call ncsn_comm_bind_local_gpu() BEFORE creating the backend. It
 * narrows CUDA_VISIBLE_DEVICES to the rank's entry (the local rank's device when unset,
 * the local rank's entry of the list when it lists several, unchanged when the scheduler
 * already gave the rank exactly one, e.g. srun --gpus-per-task=1).
 *
 * Building with NCCL: host/cuda_comm.c always compiles with CUDA=1, but comm.c calls it
 * only when NCSN_WITH_NCCL is defined, so binaries do not need libnccl until the Makefile's
 * CUDA branch adds `-DNCSN_WITH_NCCL` to CFLAGS and `-lnccl` to LDLIBS. A binary without it
 * refuses NCSN_COMM=nccl (and the CUDA backend with world size > 1) with that advice.
 *
 * The trainer's side: shard every global batch by rank (equal slices, global example
 * indices for the random draws), reduce the gradient buffer once per step in buckets
 * during the backward (grad_sync.h) and the logged losses at log points, broadcast the parameters (and on resume the
 * optimiser state) from rank 0 at start, write checkpoints and print on rank 0 only with
 * a barrier after each checkpoint. Checkpoints do not depend on the world size, so a run
 * resumes on any GPU count with the same global batch.
 *
 * Errors are fatal (common.h): "ncsn: comm: ..." naming the variable, file, address or
 * rank at fault, exit 1.
 */
#ifndef NCSN_COMM_H
#define NCSN_COMM_H

#include <stddef.h>

#include "ncsn/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bytes of the id rank 0 hands to the others (NCCL_UNIQUE_ID_BYTES). */
#define NCSN_COMM_ID_BYTES 128
/* Ranks of one shm communicator (one machine). */
#define NCSN_COMM_SHM_MAX_RANKS 64

typedef struct ncsn_comm ncsn_comm;

/* Where this process stands, read from the environment (precedence above). */
typedef struct {
    int rank, world_size, local_rank;
    int launched;       /* 1 when rank variables were found (this process is one rank of a job) */
    char source[64];    /* e.g. "SLURM_PROCID/SLURM_NTASKS", or "no launcher variables" */
} ncsn_comm_env;

/* Fills env; malformed or inconsistent values are fatal (e.g. NCSN_RANK=4 with
 * NCSN_WORLD_SIZE=4, or only one variable of a pair set). */
void ncsn_comm_env_read(ncsn_comm_env *env);

/* 1 when this library was built with MPI (make MPI=1): the mpi rendezvous is available. */
int ncsn_comm_mpi_compiled(void);

/* Narrows CUDA_VISIBLE_DEVICES to this rank's GPU (see "GPUs"); does nothing for one
 * process. Must run before the first CUDA call of the process. */
void ncsn_comm_bind_local_gpu(void);

/* Creates the communicator for this rank from the environment (NCSN_COMM, the rank
 * variables, NCSN_RENDEZVOUS) for buffers of backend `be`; collective over all ranks (the
 * rendezvous and a barrier). Rank 0 prints one line describing it when world size > 1. */
ncsn_comm *ncsn_comm_create(ncsn_backend *be);
/* Collective: waits for outstanding work (NCCL) and frees everything. NULL is a no-op. */
void ncsn_comm_destroy(ncsn_comm *comm);

int ncsn_comm_rank(const ncsn_comm *comm);
int ncsn_comm_world_size(const ncsn_comm *comm);
int ncsn_comm_local_rank(const ncsn_comm *comm);
/* "none", "shm" or "nccl". */
const char *ncsn_comm_kind(const ncsn_comm *comm);

void ncsn_comm_allreduce_mean(ncsn_comm *comm, ncsn_backend *be, float *buf, size_t n);
void ncsn_comm_allreduce_mean_buckets(ncsn_comm *comm, ncsn_backend *be, float *buf, size_t n,
                                      size_t bucket_bytes);
void ncsn_comm_allreduce_mean_start(ncsn_comm *comm, ncsn_backend *be, float *buf, size_t n);
void ncsn_comm_wait(ncsn_comm *comm, ncsn_backend *be);
void ncsn_comm_broadcast(ncsn_comm *comm, ncsn_backend *be, float *buf, size_t n, int root);
void ncsn_comm_barrier(ncsn_comm *comm);

/* Runs `nproc` copies of this program (/proc/self/exe with argv; argv[argc] must be NULL)
 * as ranks 0..nproc-1 of one job on this machine: each child gets NCSN_RANK,
 * NCSN_WORLD_SIZE, NCSN_LOCAL_RANK, NCSN_RUN_ID, NCSN_RENDEZVOUS=file:$TMPDIR/... unless
 * set, and OMP_NUM_THREADS = cores / nproc unless set. Waits for all; when one fails it
 * stops the others (SIGTERM, then SIGKILL after 10 s) and names it. Children die with
 * the launcher. Returns 0 when every rank exited with status 0, else 1. The trainer's
 * pattern: `ncsn_comm_env e; ncsn_comm_env_read(&e);
 *           if (nproc > 1 && !e.launched) return ncsn_comm_spawn_local(nproc, argc, argv);`
 * (the children see the rank variables and train). */
int ncsn_comm_spawn_local(int nproc, int argc, char **argv);

/* The rendezvous alone (used by ncsn_comm_create; public for tests and other tools):
 * rank 0 publishes id, every other rank receives it into id. spec is "file:PATH",
 * "tcp:HOST:PORT" or "mpi"; NULL or "" means mpi under an MPI launcher in an MPI build, else
 * an error. tag is the job tag ("" for none; mpi ignores it); file and tcp are fatal after
 * timeout_s seconds. */
void ncsn_rendezvous_exchange(const char *spec, int rank, int world_size, const char *tag,
                              unsigned char id[NCSN_COMM_ID_BYTES], double timeout_s);

/* ---- between comm.c and cuda_comm.c only (defined when built with NCSN_WITH_CUDA) ----
 * The NCCL communicator, its stream and events. Callers use the functions above. */
typedef struct ncsn_nccl ncsn_nccl;
/* Rank 0: ncclGetUniqueId into id; writes "NCCL x.y.z" into version. */
void ncsn_nccl_unique_id(unsigned char id[NCSN_COMM_ID_BYTES], char *version, size_t version_len);
ncsn_nccl *ncsn_nccl_create(ncsn_backend *be, int rank, int world_size, const unsigned char id[NCSN_COMM_ID_BYTES]);
void ncsn_nccl_allreduce_mean_start(ncsn_nccl *nc, ncsn_backend *be, float *buf, size_t n);
void ncsn_nccl_wait(ncsn_nccl *nc, ncsn_backend *be);
void ncsn_nccl_broadcast(ncsn_nccl *nc, ncsn_backend *be, float *buf, size_t n, int root);
void ncsn_nccl_barrier(ncsn_nccl *nc);
void ncsn_nccl_destroy(ncsn_nccl *nc);

#ifdef __cplusplus
}
#endif

#endif /* NCSN_COMM_H */
