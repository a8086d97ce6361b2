/* comm.c: the communicator (comm.h): rank discovery from launcher variables, the file,
 * TCP and MPI rendezvous, the no-op and shared-memory implementations, and the local
 * launcher. The NCCL implementation is in cuda_comm.c; this file dispatches to it.
 * MPI (built with MPI=1, -DNCSN_WITH_MPI) is used for the rendezvous only: one MPI_Bcast
 * of rank 0's id; the collectives themselves run on shm or NCCL.
 *
 * The shared-memory all-reduce (one machine, K processes, CPU backend)
 * One segment per communicator: a header (barrier words, the ranks' pids) and K + 1 slots
 * of SHM_SLOT_BYTES. A buffer is reduced in slot-sized chunks; per chunk:
 *   1. each rank copies its chunk into its own slot;             barrier
 *   2. rank r computes elements [r*len/K, (r+1)*len/K) of the mean into the result slot
 *      (float64 sum in rank order 0..K-1, divided by K, rounded once); barrier
 *   3. each rank copies the result slot into its buffer.
 * Every element is computed once, by one rank, in a fixed order: all ranks receive the
 * same bits and the result does not depend on chunking. Two barriers per chunk suffice
 * because of one invariant: after a collective's last barrier only the result slot is
 * read (step 3, or nothing), own slots are written only at a collective's start, and the
 * result slot is written only between the two barriers of step 2, which no rank reaches
 * before every rank has finished the previous step 3. Broadcast reads the root's own slot
 * between its two barriers, for the same reason.
 *
 * The barrier is a generation counter: arriving ranks increment `arrived`; the last one
 * resets it and bumps `generation`; the others spin briefly, then sleep on the generation
 * word with futex (the segment is MAP_SHARED, so the non-private futex works across
 * processes), waking every 100 ms to check the timeout and whether every peer is alive.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef NCSN_WITH_MPI
#include <mpi.h>
#endif

#include "ncsn/comm.h"

#define COMM_DIE(...) ncsn_die("comm: " __VA_ARGS__)

/* ---- small utilities ---------------------------------------------------------------- */

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_seconds(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* A whole decimal integer in [lo, hi], or fatal naming the variable. */
static long parse_long(const char *name, const char *text, long lo, long hi) {
    errno = 0;
    char *end = NULL;
    long v = strtol(text, &end, 10);
    while (end && isspace((unsigned char)*end)) end++;
    if (errno || end == text || *end != '\0')
        COMM_DIE("%s='%s' is not an integer", name, text);
    if (v < lo || v > hi) COMM_DIE("%s=%ld is out of range [%ld, %ld]", name, v, lo, hi);
    return v;
}

static double env_seconds(const char *name, double fallback) {
    const char *text = getenv(name);
    if (!text || !*text) return fallback;
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end != '\0' || !(v > 0.0))
        COMM_DIE("%s='%s' is not a positive number of seconds", name, text);
    return v;
}

/* ---- where this process stands ------------------------------------------------------ */

/* The launchers whose variables we read, in precedence order (comm.h). */
static const struct {
    const char *rank, *size, *local_rank;
} rank_sources[] = {
    {"NCSN_RANK", "NCSN_WORLD_SIZE", "NCSN_LOCAL_RANK"},
    {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
    {"PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"},
    {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
};

void ncsn_comm_env_read(ncsn_comm_env *env) {
    memset(env, 0, sizeof *env);
    env->world_size = 1;
    snprintf(env->source, sizeof env->source, "no launcher variables");
    for (size_t s = 0; s < sizeof rank_sources / sizeof rank_sources[0]; s++) {
        const char *rank = getenv(rank_sources[s].rank), *size = getenv(rank_sources[s].size);
        if (!rank && !size) continue;
        if (!rank || !size)
            COMM_DIE("%s is set but %s is not (both or neither)", rank ? rank_sources[s].rank : rank_sources[s].size,
                     rank ? rank_sources[s].size : rank_sources[s].rank);
        env->world_size = (int)parse_long(rank_sources[s].size, size, 1, 1 << 20);
        env->rank = (int)parse_long(rank_sources[s].rank, rank, 0, env->world_size - 1);
        const char *local = getenv(rank_sources[s].local_rank);
        env->local_rank = local ? (int)parse_long(rank_sources[s].local_rank, local, 0, env->world_size - 1) : env->rank;
        env->launched = 1;
        snprintf(env->source, sizeof env->source, "%s/%s", rank_sources[s].rank, rank_sources[s].size);
        return;
    }
}

void ncsn_comm_bind_local_gpu(void) {
    ncsn_comm_env env;
    ncsn_comm_env_read(&env);
    if (env.world_size == 1) return;
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    char chosen[64];
    if (!visible) {
        snprintf(chosen, sizeof chosen, "%d", env.local_rank);
    } else {
        /* Entries are indices or GPU-/MIG- UUIDs, comma-separated; the empty list (no GPU)
         * and a single entry (already bound by the scheduler) stay as they are. */
        int count = *visible ? 1 : 0;
        for (const char *p = visible; *p; p++) count += *p == ',';
        if (count <= 1) return;
        if (env.local_rank >= count)
            COMM_DIE("local rank %d (from %s) but CUDA_VISIBLE_DEVICES='%s' lists only %d devices: one GPU per rank",
                     env.local_rank, env.source, visible, count);
        const char *start = visible;
        for (int i = 0; i < env.local_rank; i++) start = strchr(start, ',') + 1;
        size_t len = strcspn(start, ",");
        if (len == 0 || len >= sizeof chosen) COMM_DIE("CUDA_VISIBLE_DEVICES='%s': malformed entry", visible);
        memcpy(chosen, start, len);
        chosen[len] = '\0';
    }
    if (setenv("CUDA_VISIBLE_DEVICES", chosen, 1) != 0) COMM_DIE("setenv CUDA_VISIBLE_DEVICES: %s", strerror(errno));
}

/* The job tag that tells this run's rendezvous from a stale one (comm.h). */
static void job_tag(char *tag, size_t len) {
    const char *run = getenv("NCSN_RUN_ID"), *job = getenv("SLURM_JOB_ID"), *step = getenv("SLURM_STEP_ID");
    const char *pmix = getenv("PMIX_NAMESPACE"), *ompi = getenv("OMPI_MCA_ess_base_jobid");
    if (run && *run) snprintf(tag, len, "ncsn:%s", run);
    else if (job && *job) snprintf(tag, len, "slurm:%s.%s", job, step ? step : "");
    else if (pmix && *pmix) snprintf(tag, len, "pmix:%s", pmix);
    else if (ompi && *ompi) snprintf(tag, len, "ompi:%s", ompi);
    else tag[0] = '\0';
}

/* ---- rendezvous: file --------------------------------------------------------------- */

#define RDV_TAG_BYTES 64
static const char file_magic[] = "ncsn-rendezvous 1";

static void file_publish(const char *path, int world_size, const char *tag, const unsigned char id[NCSN_COMM_ID_BYTES]) {
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        COMM_DIE("rendezvous file:%s: path too long", path);
    char header[160];
    int header_len = snprintf(header, sizeof header, "%s world=%d tag=%s\n", file_magic, world_size, tag);
    NCSN_CHECK(header_len > 0 && header_len < (int)sizeof header);
    /* 0600: the id lets a process join NCCL's bootstrap; other users need not read it. */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) COMM_DIE("rendezvous file:%s: cannot create %s: %s", path, tmp, strerror(errno));
    struct {
        const void *data;
        size_t len;
    } parts[2] = {{header, (size_t)header_len}, {id, NCSN_COMM_ID_BYTES}};
    for (int i = 0; i < 2; i++) {
        const char *p = parts[i].data;
        size_t left = parts[i].len;
        while (left) {
            ssize_t k = write(fd, p, left);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) {
                int e = errno;
                close(fd);
                unlink(tmp);
                COMM_DIE("rendezvous file:%s: writing %s: %s", path, tmp, strerror(e));
            }
            p += k;
            left -= (size_t)k;
        }
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        int e = errno;
        unlink(tmp);
        COMM_DIE("rendezvous file:%s: fsync/close of %s: %s", path, tmp, strerror(e));
    }
    /* rename is atomic: a reader sees no file or the whole file, never a partial one. */
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        COMM_DIE("rendezvous file:%s: rename from %s: %s", path, tmp, strerror(e));
    }
    /* Make the new directory entry durable too (a shared filesystem may be remounted). */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) dir[1] = '\0';
    else if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) COMM_DIE("rendezvous file:%s: cannot open directory %s: %s", path, dir, strerror(errno));
    if (fsync(dfd) != 0 && errno != EINVAL) /* EINVAL: the filesystem cannot sync directories */
        COMM_DIE("rendezvous file:%s: fsync of directory %s: %s", path, dir, strerror(errno));
    close(dfd);
}

/* One attempt: 1 = got the id, 0 = no file yet, -1 = a file from another run. */
static int file_try_read(const char *path, int world_size, const char *tag, unsigned char id[NCSN_COMM_ID_BYTES],
                         char *stale_tag, size_t stale_len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return 0;
        COMM_DIE("rendezvous file:%s: cannot open: %s", path, strerror(errno));
    }
    unsigned char data[512];
    size_t len = 0;
    for (;;) {
        ssize_t k = read(fd, data + len, sizeof data - len);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) COMM_DIE("rendezvous file:%s: read: %s", path, strerror(errno));
        if (k == 0 || (len += (size_t)k) == sizeof data) break;
    }
    close(fd);
    const unsigned char *nl = memchr(data, '\n', len);
    size_t magic_len = strlen(file_magic);
    if (!nl || len < magic_len || memcmp(data, file_magic, magic_len) != 0)
        COMM_DIE("rendezvous file:%s: not a rendezvous file (first line should start \"%s\")", path, file_magic);
    char header[200];
    size_t header_len = (size_t)(nl - data);
    if (header_len >= sizeof header) COMM_DIE("rendezvous file:%s: header line too long", path);
    memcpy(header, data, header_len);
    header[header_len] = '\0';
    int file_world = 0, consumed = 0;
    if (sscanf(header + magic_len, " world=%d tag=%n", &file_world, &consumed) != 1 || consumed == 0)
        COMM_DIE("rendezvous file:%s: malformed header \"%s\"", path, header);
    const char *file_tag = header + magic_len + consumed;
    if (strcmp(file_tag, tag) != 0) {
        snprintf(stale_tag, stale_len, "%s", file_tag);
        return -1;
    }
    if (file_world != world_size)
        COMM_DIE("rendezvous file:%s: written by a rank 0 with world size %d, this rank has world size %d", path,
                 file_world, world_size);
    if (len != header_len + 1 + NCSN_COMM_ID_BYTES)
        COMM_DIE("rendezvous file:%s: %zu bytes after the header, expected %d", path, len - header_len - 1,
                 NCSN_COMM_ID_BYTES);
    memcpy(id, nl + 1, NCSN_COMM_ID_BYTES);
    return 1;
}

static void file_receive(const char *path, int world_size, const char *tag, unsigned char id[NCSN_COMM_ID_BYTES],
                         double timeout_s) {
    const double deadline = now_seconds() + timeout_s;
    char stale[RDV_TAG_BYTES * 2] = "";
    int saw_stale = 0;
    for (;;) {
        int got = file_try_read(path, world_size, tag, id, stale, sizeof stale);
        if (got == 1) return;
        saw_stale |= got == -1;
        if (now_seconds() >= deadline) {
            if (saw_stale)
                COMM_DIE("rendezvous file:%s: timed out after %g s: the file there belongs to another run (tag "
                         "\"%s\", this run's is \"%s\"); is rank 0 running? Remove the file or use a fresh path",
                         path, timeout_s, stale, tag);
            COMM_DIE("rendezvous file:%s: timed out after %g s waiting for rank 0 to write it (is rank 0 running, "
                     "and is the path on a filesystem every rank sees?)",
                     path, timeout_s);
        }
        sleep_seconds(0.05);
    }
}

/* ---- rendezvous: TCP ---------------------------------------------------------------- */

/* Wire format (integers big-endian): the client sends HELLO = magic[8] "NCSNRDV1",
 * rank u32, world u32, tag[64] (NUL-padded); rank 0 answers magic[8] "NCSNID01" and the
 * id, or closes the connection when the world size or tag do not match. */
#define TCP_HELLO_BYTES (8 + 4 + 4 + RDV_TAG_BYTES)
#define TCP_REPLY_BYTES (8 + NCSN_COMM_ID_BYTES)

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16), p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}
static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Reads or writes exactly len bytes before the deadline: 0 on success, else an errno
 * (ETIMEDOUT, or ECONNRESET when the peer closed early). */
static int transfer_all(int fd, void *buf, size_t len, int writing, double deadline) {
    unsigned char *p = buf;
    while (len) {
        double left = deadline - now_seconds();
        if (left <= 0) return ETIMEDOUT;
        struct pollfd pfd = {fd, writing ? POLLOUT : POLLIN, 0};
        int r = poll(&pfd, 1, (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return errno;
        if (r == 0) return ETIMEDOUT;
        ssize_t k = writing ? send(fd, p, len, MSG_NOSIGNAL) : recv(fd, p, len, 0);
        if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (k < 0) return errno;
        if (k == 0) return ECONNRESET;
        p += k;
        len -= (size_t)k;
    }
    return 0;
}

/* Splits "HOST:PORT" (HOST may be [v6]) into host and port strings. */
static void split_host_port(const char *spec, const char *hostport, char *host, size_t host_len, char *port,
                            size_t port_len) {
    const char *colon = strrchr(hostport, ':');
    if (!colon || colon == hostport || !colon[1])
        COMM_DIE("rendezvous %s: expected tcp:HOST:PORT", spec);
    const char *h = hostport;
    size_t hl = (size_t)(colon - hostport);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') h++, hl -= 2;
    if (hl >= host_len || strlen(colon + 1) >= port_len) COMM_DIE("rendezvous %s: host or port too long", spec);
    memcpy(host, h, hl);
    host[hl] = '\0';
    snprintf(port, port_len, "%s", colon + 1);
    parse_long("the rendezvous port", port, 1, 65535);
}

static int is_loopback(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return 0;
}

static void tcp_serve(const char *spec, const char *host, const char *port, int world_size, const char *tag,
                      const unsigned char id[NCSN_COMM_ID_BYTES], double timeout_s) {
    const double deadline = now_seconds() + timeout_s;
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) COMM_DIE("rendezvous %s: cannot resolve %s: %s", spec, host, gai_strerror(gai));
    /* Bind where the others will connect: loopback stays on loopback (tests, one machine);
     * otherwise all interfaces of the family, since HOST may resolve differently here
     * (e.g. Debian maps the own host name to 127.0.1.1) than on the other machines. */
    struct sockaddr_storage addr;
    socklen_t addr_len = (socklen_t)res->ai_addrlen;
    memcpy(&addr, res->ai_addr, res->ai_addrlen);
    const int family = res->ai_family;
    freeaddrinfo(res);
    if (!is_loopback((struct sockaddr *)&addr)) {
        if (family == AF_INET) ((struct sockaddr_in *)&addr)->sin_addr.s_addr = htonl(INADDR_ANY);
        else ((struct sockaddr_in6 *)&addr)->sin6_addr = in6addr_any;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) COMM_DIE("rendezvous %s: socket: %s", spec, strerror(errno));
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
        COMM_DIE("rendezvous %s: SO_REUSEADDR: %s", spec, strerror(errno));
    if (bind(fd, (struct sockaddr *)&addr, addr_len) != 0)
        COMM_DIE("rendezvous %s: rank 0 cannot listen on port %s: %s", spec, port, strerror(errno));
    if (listen(fd, world_size < 128 ? world_size : 128) != 0)
        COMM_DIE("rendezvous %s: listen: %s", spec, strerror(errno));

    unsigned char *served = ncsn_xcalloc((size_t)world_size, 1);
    int refusals = 0;
    unsigned char reply[TCP_REPLY_BYTES];
    memcpy(reply, "NCSNID01", 8);
    memcpy(reply + 8, id, NCSN_COMM_ID_BYTES);
    for (int remaining = world_size - 1; remaining > 0;) {
        double left = deadline - now_seconds();
        struct pollfd pfd = {fd, POLLIN, 0};
        int r = left > 0 ? poll(&pfd, 1, (int)(left * 1000) + 1) : 0;
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) COMM_DIE("rendezvous %s: poll: %s", spec, strerror(errno));
        if (r == 0) {
            char missing[256] = "";
            size_t used = 0;
            for (int k = 1; k < world_size && used + 12 < sizeof missing; k++)
                if (!served[k]) used += (size_t)snprintf(missing + used, sizeof missing - used, " %d", k);
            COMM_DIE("rendezvous %s: timed out after %g s: %d of %d ranks never connected (ranks:%s)", spec, timeout_s,
                     remaining, world_size - 1, missing);
        }
        int conn = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            COMM_DIE("rendezvous %s: accept: %s", spec, strerror(errno));
        }
        /* A stray or slow client gets 10 s, not the whole rendezvous. */
        double conn_deadline = now_seconds() + 10.0 < deadline ? now_seconds() + 10.0 : deadline;
        unsigned char hello[TCP_HELLO_BYTES];
        int e = transfer_all(conn, hello, sizeof hello, 0, conn_deadline);
        if (e || memcmp(hello, "NCSNRDV1", 8) != 0) {
            fprintf(stderr, "ncsn: comm: rendezvous %s: ignored a connection that did not speak the protocol (%s)\n",
                    spec, e ? strerror(e) : "bad magic");
            close(conn);
            continue;
        }
        uint32_t peer_rank = get_u32(hello + 8), peer_world = get_u32(hello + 12);
        char peer_tag[RDV_TAG_BYTES + 1];
        memcpy(peer_tag, hello + 16, RDV_TAG_BYTES);
        peer_tag[RDV_TAG_BYTES] = '\0';
        if (strcmp(peer_tag, tag) != 0) {
            /* Another run on the same port: refuse it and keep waiting for ours. Its ranks
             * retry every second, so say it once. */
            if (!refusals++)
                fprintf(stderr,
                        "ncsn: comm: rendezvous %s: refusing ranks of another run (tag \"%s\", ours \"%s\"); "
                        "further refusals are not shown\n",
                        spec, peer_tag, tag);
            close(conn);
            continue;
        }
        if (peer_world != (uint32_t)world_size || peer_rank == 0 || peer_rank >= (uint32_t)world_size)
            COMM_DIE("rendezvous %s: a rank %u with world size %u connected; this job has world size %d", spec,
                     peer_rank, peer_world, world_size);
        if (served[peer_rank]) COMM_DIE("rendezvous %s: rank %u connected twice (two processes with one rank?)", spec,
                                        peer_rank);
        e = transfer_all(conn, reply, sizeof reply, 1, conn_deadline);
        if (e) COMM_DIE("rendezvous %s: sending the id to rank %u: %s", spec, peer_rank, strerror(e));
        close(conn);
        served[peer_rank] = 1;
        remaining--;
    }
    free(served);
    close(fd);
}

static void tcp_receive(const char *spec, const char *host, const char *port, int rank, int world_size, const char *tag,
                        unsigned char id[NCSN_COMM_ID_BYTES], double timeout_s) {
    const double deadline = now_seconds() + timeout_s;
    unsigned char hello[TCP_HELLO_BYTES] = {0};
    memcpy(hello, "NCSNRDV1", 8);
    put_u32(hello + 8, (uint32_t)rank);
    put_u32(hello + 12, (uint32_t)world_size);
    memcpy(hello + 16, tag, strnlen(tag, RDV_TAG_BYTES - 1));
    char last_error[320] = "no attempt";
    double backoff = 0.05;
    for (;;) {
        struct addrinfo hints = {0}, *res = NULL;
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        int gai = getaddrinfo(host, port, &hints, &res);
        if (gai != 0) {
            /* DNS may lag behind a freshly started node: retry like a refused connection. */
            snprintf(last_error, sizeof last_error, "cannot resolve %s: %s", host, gai_strerror(gai));
        } else {
            for (struct addrinfo *a = res; a; a = a->ai_next) {
                int fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
                if (fd < 0) {
                    snprintf(last_error, sizeof last_error, "socket: %s", strerror(errno));
                    continue;
                }
                int e = 0;
                if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
                    e = errno;
                    if (e == EINPROGRESS) {
                        /* Bounded per attempt: an unreachable host must not eat the budget. */
                        double left = deadline - now_seconds();
                        int ms = (int)((left < 5.0 ? left : 5.0) * 1000) + 1;
                        struct pollfd pfd = {fd, POLLOUT, 0};
                        int r = poll(&pfd, 1, ms);
                        socklen_t el = sizeof e;
                        if (r <= 0) e = r == 0 ? ETIMEDOUT : errno;
                        else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0) e = errno;
                    }
                }
                if (e == 0) e = transfer_all(fd, hello, sizeof hello, 1, deadline);
                unsigned char reply[TCP_REPLY_BYTES];
                if (e == 0) e = transfer_all(fd, reply, sizeof reply, 0, deadline);
                close(fd);
                if (e == 0) {
                    freeaddrinfo(res);
                    if (memcmp(reply, "NCSNID01", 8) != 0)
                        COMM_DIE("rendezvous %s: %s:%s answered, but not with an ncsn rendezvous reply", spec, host,
                                 port);
                    memcpy(id, reply + 8, NCSN_COMM_ID_BYTES);
                    return;
                }
                snprintf(last_error, sizeof last_error, "%s", strerror(e));
                /* Connected, then closed without a reply: rank 0 refused us. */
                if (e == ECONNRESET)
                    snprintf(last_error, sizeof last_error,
                             "rank 0 closed the connection (another run on this port, tag \"%s\" refused?)", tag);
            }
            freeaddrinfo(res);
        }
        if (now_seconds() + backoff >= deadline)
            COMM_DIE("rendezvous %s: rank %d timed out after %g s connecting to rank 0 at %s:%s (last error: %s)", spec,
                     rank, timeout_s, host, port, last_error);
        sleep_seconds(backoff);
        backoff = backoff * 2 < 1.0 ? backoff * 2 : 1.0;
    }
}

/* ---- rendezvous: MPI ----------------------------------------------------------------- */

/* 1 when an MPI launcher started this process: it sets one of these in every process it
 * starts (Open MPI's mpirun; MPICH's and Intel MPI's Hydra; Slurm's srun --mpi=pmix). Only
 * such a process may call MPI_Init: in any other, MPI_Init makes a one-rank "singleton"
 * job (Open MPI 4 forks a helper daemon for it), which cannot match a world size > 1 and
 * is never what a user of `ncsn train` wants. */
static int launched_by_mpi(void) {
    static const char *const names[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *v = getenv(names[i]);
        if (v && *v) return 1;
    }
    return 0;
}

int ncsn_comm_mpi_compiled(void) {
#ifdef NCSN_WITH_MPI
    return 1;
#else
    return 0;
#endif
}

#ifdef NCSN_WITH_MPI
/* MPI_Finalize is ours to call only when ncsn called MPI_Init (a program that embeds
 * libncsn may have initialised MPI itself); it runs when the last communicator whose
 * rendezvous was mpi is destroyed. */
static int mpi_initialised_by_ncsn;
static int mpi_communicators;
static char mpi_library[64]; /* "Open MPI v4.1.4": the first field of the library version */

static void mpi_check(int rc, const char *call) {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "error code %d", rc);
    COMM_DIE("MPI: %s failed: %s", call, text);
}

/* Our own copy of MPI_COMM_WORLD while the rendezvous runs (MPI_COMM_NULL otherwise): its
 * messages cannot meet a host program's, and its errors return to us (to be named) instead
 * of aborting inside the call. */
static MPI_Comm mpi_world = MPI_COMM_NULL;

/* MPI_Init unless MPI is up already, and the check that MPI's ranks are ncsn's. Called
 * before rank 0 makes its segment or NCCL id, so that a mismatch (which mpirun answers by
 * killing the job) leaves nothing behind; idempotent. */
static void mpi_join(int rank, int world_size) {
    if (mpi_world != MPI_COMM_NULL) return;
    int initialised = 0, finalised = 0;
    mpi_check(MPI_Finalized(&finalised), "MPI_Finalized");
    if (finalised)
        COMM_DIE("rendezvous mpi: MPI was finalised already in this process (when an earlier communicator was "
                 "destroyed), and MPI cannot be initialised twice: use file: or tcp: for a second communicator");
    mpi_check(MPI_Initialized(&initialised), "MPI_Initialized");
    if (!initialised) {
        /* FUNNELED: only this (the main) thread calls MPI, and only here and at destroy;
         * the OpenMP threads never do. A library that provides less still serves these
         * calls, so `provided` is not checked. */
        int provided = 0;
        mpi_check(MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
        mpi_initialised_by_ncsn = 1;
    }
    char version[MPI_MAX_LIBRARY_VERSION_STRING] = "";
    int version_len = 0;
    mpi_check(MPI_Get_library_version(version, &version_len), "MPI_Get_library_version");
    snprintf(mpi_library, sizeof mpi_library, "%.*s", (int)strcspn(version, ",\n\t"), version);
    mpi_check(MPI_Comm_dup(MPI_COMM_WORLD, &mpi_world), "MPI_Comm_dup");
    mpi_check(MPI_Comm_set_errhandler(mpi_world, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    int mpi_rank = -1, mpi_size = 0;
    mpi_check(MPI_Comm_rank(mpi_world, &mpi_rank), "MPI_Comm_rank");
    mpi_check(MPI_Comm_size(mpi_world, &mpi_size), "MPI_Comm_size");
    /* Every rank learns whether all agree, so that all stop here (not rank 0 later, killed
     * by mpirun with its segment made) when one does not. */
    int agree = mpi_rank == rank && mpi_size == world_size, all_agree = 0;
    mpi_check(MPI_Allreduce(&agree, &all_agree, 1, MPI_INT, MPI_MIN, mpi_world), "MPI_Allreduce of the rank check");
    if (!all_agree && agree)
        COMM_DIE("rendezvous mpi: another rank's MPI rank or size differs from its launcher variables (see its "
                 "message)");
    if (!agree) {
        ncsn_comm_env env;
        ncsn_comm_env_read(&env);
        COMM_DIE("rendezvous mpi: MPI_Comm_rank/MPI_Comm_size say rank %d of %d, but this process is rank %d of %d "
                 "(from %s); under mpirun leave NCSN_RANK/NCSN_WORLD_SIZE unset, or use NCSN_RENDEZVOUS=file:PATH "
                 "or tcp:HOST:PORT",
                 mpi_rank, mpi_size, rank, world_size, env.source);
    }
}

/* Rank 0's id to every rank. */
static void mpi_exchange(int rank, int world_size, unsigned char id[NCSN_COMM_ID_BYTES]) {
    mpi_join(rank, world_size);
    mpi_check(MPI_Bcast(id, NCSN_COMM_ID_BYTES, MPI_BYTE, 0, mpi_world), "MPI_Bcast of the rendezvous id");
    mpi_check(MPI_Comm_free(&mpi_world), "MPI_Comm_free"); /* sets mpi_world to MPI_COMM_NULL */
}
#endif

/* NCSN_RENDEZVOUS as given, or "mpi" when it is unset in an MPI build under an MPI
 * launcher (comm.h, "Rendezvous"); NULL when there is none. An mpi that cannot work is
 * refused here, before rank 0 makes a segment or an NCCL id. */
static const char *rendezvous_resolve(const char *spec) {
    if (!spec || !*spec) return ncsn_comm_mpi_compiled() && launched_by_mpi() ? "mpi" : NULL;
    if (!strcmp(spec, "mpi") && !ncsn_comm_mpi_compiled())
        COMM_DIE("NCSN_RENDEZVOUS=mpi: this binary was built without MPI (make MPI=1)");
    if (!strcmp(spec, "mpi") && !launched_by_mpi())
        COMM_DIE("NCSN_RENDEZVOUS=mpi, but this process was not started by an MPI launcher (none of "
                 "OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK is set): start the ranks with mpirun, or use "
                 "file:PATH or tcp:HOST:PORT");
    return spec;
}

void ncsn_rendezvous_exchange(const char *spec, int rank, int world_size, const char *tag,
                              unsigned char id[NCSN_COMM_ID_BYTES], double timeout_s) {
    NCSN_CHECKF(world_size >= 1 && rank >= 0 && rank < world_size, "rendezvous: rank %d of world size %d", rank,
                world_size);
    NCSN_CHECKF(strlen(tag) < RDV_TAG_BYTES, "rendezvous: tag \"%s\" longer than %d bytes", tag, RDV_TAG_BYTES - 1);
    if (world_size == 1) return;
    spec = rendezvous_resolve(spec);
    if (!spec)
        COMM_DIE("world size %d needs a rendezvous: set NCSN_RENDEZVOUS=file:PATH (a path every rank sees) or "
                 "tcp:HOST:PORT (rank 0's host)%s",
                 world_size,
                 ncsn_comm_mpi_compiled() ? ", or start the ranks with mpirun"
                                          : ", or build with make MPI=1 and start the ranks with mpirun");
    if (!strcmp(spec, "mpi")) {
#ifdef NCSN_WITH_MPI
        mpi_exchange(rank, world_size, id); /* rendezvous_resolve refuses mpi in a build without it */
#endif
    } else if (!strncmp(spec, "file:", 5)) {
        const char *path = spec + 5;
        if (!*path) COMM_DIE("rendezvous %s: empty path", spec);
        if (rank == 0) file_publish(path, world_size, tag, id);
        else file_receive(path, world_size, tag, id, timeout_s);
    } else if (!strncmp(spec, "tcp:", 4)) {
        char host[256], port[16];
        split_host_port(spec, spec + 4, host, sizeof host, port, sizeof port);
        if (rank == 0) tcp_serve(spec, host, port, world_size, tag, id, timeout_s);
        else tcp_receive(spec, host, port, rank, world_size, tag, id, timeout_s);
    } else {
        COMM_DIE("NCSN_RENDEZVOUS='%s': expected file:PATH or tcp:HOST:PORT (or mpi, under mpirun)", spec);
    }
}

/* ---- shared memory ------------------------------------------------------------------ */

/* 1 MiB per rank per chunk: big enough that the two barriers per chunk cost little next to
 * the copies, small enough that 8 ranks fit Docker's default 64 MiB /dev/shm. */
#define SHM_SLOT_BYTES ((size_t)1 << 20)
#define SHM_HEADER_BYTES ((size_t)4096)
#define SHM_MAGIC UINT64_C(0x314d48534e53434e) /* "NCSNSHM1" */

typedef struct {
    uint64_t magic;
    int32_t world_size;
    int32_t unused;
    uint64_t slot_bytes;
    /* The barrier: own cache lines, away from the pids that are read while spinning. */
    _Alignas(64) _Atomic uint32_t arrived;
    _Alignas(64) _Atomic uint32_t generation;
    _Alignas(64) _Atomic int32_t pid[NCSN_COMM_SHM_MAX_RANKS];
} shm_header;

_Static_assert(sizeof(shm_header) <= SHM_HEADER_BYTES, "shm header exceeds its page");
_Static_assert(sizeof(_Atomic uint32_t) == sizeof(uint32_t), "futex word must be a plain 32-bit int");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "process-shared atomics must be lock-free");

typedef enum { COMM_NONE = 0, COMM_SHM = 1, COMM_NCCL = 2 } comm_kind;

struct ncsn_comm {
    comm_kind kind;
    int rank, world_size, local_rank;
    ncsn_backend *be;
    char rendezvous[PATH_MAX + 8]; /* "" when none was used */
    /* shm */
    shm_header *shm;
    size_t shm_bytes;
    size_t slot_floats;
    double timeout_s;
    /* nccl */
    ncsn_nccl *nccl;
    /* 1 when the rendezvous went through MPI (MPI_Finalize at the last destroy) */
    int used_mpi;
};

static float *shm_slot(ncsn_comm *c, int index) {
    return (float *)((char *)c->shm + SHM_HEADER_BYTES + (size_t)index * c->shm->slot_bytes);
}

/* 1 while the process exists and is not a zombie (an exited child not yet reaped). */
static int process_alive(pid_t pid) {
    if (kill(pid, 0) != 0 && errno == ESRCH) return 0;
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    FILE *f = fopen(path, "r");
    if (!f) return 1; /* no /proc: kill() is all we can tell */
    size_t len = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[len] = '\0';
    const char *close_paren = strrchr(line, ')'); /* the command name may contain spaces */
    return !(close_paren && close_paren[1] == ' ' && (close_paren[2] == 'Z' || close_paren[2] == 'X'));
}

static void shm_barrier(ncsn_comm *c) {
    shm_header *h = c->shm;
    /* Read the generation BEFORE arriving: it cannot move until we have arrived. */
    const uint32_t gen = atomic_load_explicit(&h->generation, memory_order_acquire);
    if (atomic_fetch_add_explicit(&h->arrived, 1, memory_order_acq_rel) == (uint32_t)c->world_size - 1) {
        /* Last to arrive: reset for the next barrier, then release everyone. The acq_rel
         * chain of the arrivals makes every rank's writes visible to every other rank. */
        atomic_store_explicit(&h->arrived, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&h->generation, 1, memory_order_release);
        syscall(SYS_futex, (uint32_t *)&h->generation, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
        return;
    }
    for (int spin = 0; spin < 2000; spin++) {
        if (atomic_load_explicit(&h->generation, memory_order_acquire) != gen) return;
        if (spin >= 100) sched_yield(); /* more ranks than cores: let the others run */
    }
    const double start = now_seconds();
    while (atomic_load_explicit(&h->generation, memory_order_acquire) == gen) {
        struct timespec wait = {0, 100 * 1000 * 1000};
        long r = syscall(SYS_futex, (uint32_t *)&h->generation, FUTEX_WAIT, gen, &wait, NULL, 0);
        if (r != 0 && errno != EAGAIN && errno != ETIMEDOUT && errno != EINTR)
            COMM_DIE("shm barrier: futex wait: %s", strerror(errno));
        if (atomic_load_explicit(&h->generation, memory_order_acquire) != gen) return;
        for (int k = 0; k < c->world_size; k++) {
            pid_t pid = (pid_t)atomic_load_explicit(&h->pid[k], memory_order_relaxed);
            if (k == c->rank || pid <= 0 || process_alive(pid)) continue;
            /* It may have left after releasing this very barrier: not an error then. */
            if (atomic_load_explicit(&h->generation, memory_order_acquire) != gen) return;
            COMM_DIE("rank %d: rank %d (pid %ld) exited while the others wait for it in a collective", c->rank, k,
                     (long)pid);
        }
        if (now_seconds() - start > c->timeout_s)
            COMM_DIE("rank %d: timed out after %g s in a collective waiting for %u of %d ranks (NCSN_COMM_TIMEOUT); "
                     "do all ranks run the same collectives in the same order?",
                     c->rank, c->timeout_s,
                     (uint32_t)c->world_size - atomic_load_explicit(&h->arrived, memory_order_relaxed),
                     c->world_size);
    }
}

/* Rank 0's segment until every rank has attached and it is unlinked: removed at exit if
 * the rendezvous fails (a fatal error), so /dev/shm does not fill with dead segments. */
static char pending_segment[NCSN_COMM_ID_BYTES];
static pid_t pending_segment_owner;

static void unlink_pending_segment(void) {
    if (pending_segment[0] && getpid() == pending_segment_owner) shm_unlink(pending_segment);
}

/* Rank 0: create and initialise the segment, put its name into id. */
static void shm_create_segment(ncsn_comm *c, unsigned char id[NCSN_COMM_ID_BYTES]) {
    uint64_t nonce = 0;
    if (getrandom(&nonce, sizeof nonce, 0) != (ssize_t)sizeof nonce)
        nonce = (uint64_t)now_seconds() * 1000003u ^ (uint64_t)getpid();
    char name[NCSN_COMM_ID_BYTES];
    snprintf(name, sizeof name, "/ncsn-shm-%ld-%016llx", (long)getpid(), (unsigned long long)nonce);
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0) COMM_DIE("shm_open %s: %s", name, strerror(errno));
    /* Reserve the pages now: on a full tmpfs a plain ftruncate succeeds and the first
     * touch of a page later kills the process with SIGBUS. */
    int e = posix_fallocate(fd, 0, (off_t)c->shm_bytes);
    if (e != 0) {
        close(fd);
        shm_unlink(name);
        COMM_DIE("cannot reserve %.1f MiB of shared memory for %d ranks in /dev/shm: %s (Docker: raise --shm-size)",
                 (double)c->shm_bytes / (1 << 20), c->world_size, strerror(e));
    }
    c->shm = mmap(NULL, c->shm_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (c->shm == MAP_FAILED) COMM_DIE("mmap of %s: %s", name, strerror(errno));
    /* The segment is zero-filled: the barrier words and pids start at 0. */
    c->shm->world_size = c->world_size;
    c->shm->slot_bytes = SHM_SLOT_BYTES;
    atomic_store(&c->shm->pid[0], (int32_t)getpid());
    atomic_thread_fence(memory_order_seq_cst);
    c->shm->magic = SHM_MAGIC;
    memset(id, 0, NCSN_COMM_ID_BYTES);
    memcpy(id, name, strlen(name) + 1);
    static int registered = 0;
    if (!registered && atexit(unlink_pending_segment) == 0) registered = 1;
    memcpy(pending_segment, name, sizeof pending_segment);
    pending_segment_owner = getpid();
}

static void shm_attach_segment(ncsn_comm *c, const unsigned char id[NCSN_COMM_ID_BYTES]) {
    char name[NCSN_COMM_ID_BYTES];
    memcpy(name, id, sizeof name);
    name[sizeof name - 1] = '\0';
    if (strncmp(name, "/ncsn-shm-", 10) != 0)
        COMM_DIE("rank %d: the rendezvous id is not an shm segment name (does rank 0 use NCSN_COMM=shm too?)",
                 c->rank);
    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0) COMM_DIE("rank %d: shm_open %s: %s (ranks on different machines? shm needs one machine)", c->rank,
                         name, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) COMM_DIE("fstat %s: %s", name, strerror(errno));
    if ((size_t)st.st_size != c->shm_bytes)
        COMM_DIE("rank %d: shm segment %s has %lld bytes, expected %zu for %d ranks (world sizes differ?)", c->rank, name,
                 (long long)st.st_size, c->shm_bytes, c->world_size);
    c->shm = mmap(NULL, c->shm_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (c->shm == MAP_FAILED) COMM_DIE("mmap of %s: %s", name, strerror(errno));
    if (c->shm->magic != SHM_MAGIC || c->shm->world_size != c->world_size || c->shm->slot_bytes != SHM_SLOT_BYTES)
        COMM_DIE("rank %d: shm segment %s was made for another layout or world size", c->rank, name);
    if (atomic_exchange(&c->shm->pid[c->rank], (int32_t)getpid()) != 0)
        COMM_DIE("rank %d: another process already joined as rank %d", c->rank, c->rank);
}

static void shm_allreduce_mean(ncsn_comm *c, float *buf, size_t n) {
    const int K = c->world_size;
    float *own = shm_slot(c, c->rank), *result = shm_slot(c, K);
    const float *slots[NCSN_COMM_SHM_MAX_RANKS];
    for (int k = 0; k < K; k++) slots[k] = shm_slot(c, k);
    for (size_t off = 0; off < n; off += c->slot_floats) {
        const size_t len = n - off < c->slot_floats ? n - off : c->slot_floats;
        memcpy(own, buf + off, len * sizeof(float));
        shm_barrier(c);
        /* This rank's share of the elements, each summed over the ranks in order 0..K-1. */
        const size_t lo = len * (size_t)c->rank / (size_t)K, hi = len * (size_t)(c->rank + 1) / (size_t)K;
        for (size_t j = lo; j < hi; j++) {
            double sum = 0.0;
            for (int k = 0; k < K; k++) sum += (double)slots[k][j];
            result[j] = (float)(sum / (double)K);
        }
        shm_barrier(c);
        memcpy(buf + off, result, len * sizeof(float));
    }
}

static void shm_broadcast(ncsn_comm *c, float *buf, size_t n, int root) {
    float *source = shm_slot(c, root);
    for (size_t off = 0; off < n; off += c->slot_floats) {
        const size_t len = n - off < c->slot_floats ? n - off : c->slot_floats;
        if (c->rank == root) memcpy(source, buf + off, len * sizeof(float));
        shm_barrier(c);
        if (c->rank != root) memcpy(buf + off, source, len * sizeof(float));
        shm_barrier(c);
    }
}

/* ---- the communicator --------------------------------------------------------------- */

static const char *kind_names[] = {"none", "shm", "nccl"};

ncsn_comm *ncsn_comm_create(ncsn_backend *be) {
    NCSN_CHECK(be != NULL);
    ncsn_comm_env env;
    ncsn_comm_env_read(&env);
    const char *choice = getenv("NCSN_COMM");
    if (!choice || !*choice) choice = "auto";
    comm_kind kind;
    if (!strcmp(choice, "auto")) {
        kind = env.world_size == 1 ? COMM_NONE : be->kind == NCSN_DEVICE_CUDA ? COMM_NCCL : COMM_SHM;
    } else if (!strcmp(choice, "none")) {
        kind = COMM_NONE;
    } else if (!strcmp(choice, "shm")) {
        kind = COMM_SHM;
    } else if (!strcmp(choice, "nccl")) {
        kind = COMM_NCCL;
    } else {
        COMM_DIE("NCSN_COMM='%s': expected auto, shm, nccl or none", choice);
    }
    if (kind == COMM_NONE && env.world_size > 1)
        COMM_DIE("NCSN_COMM=none, but world size is %d (from %s)", env.world_size, env.source);
    if (kind == COMM_SHM && be->kind != NCSN_DEVICE_CPU)
        COMM_DIE("the shm communicator reduces host memory and needs the CPU backend; with the %s backend use nccl",
                 be->ops->name);
    if (kind == COMM_SHM && env.world_size > NCSN_COMM_SHM_MAX_RANKS)
        COMM_DIE("the shm communicator supports at most %d ranks (one machine), world size is %d",
                 NCSN_COMM_SHM_MAX_RANKS, env.world_size);
    if (kind == COMM_NCCL && be->kind != NCSN_DEVICE_CUDA)
        COMM_DIE("NCCL reduces device memory and needs the CUDA backend; with the %s backend use shm", be->ops->name);
#if !defined(NCSN_WITH_CUDA) || !defined(NCSN_WITH_NCCL)
    if (kind == COMM_NCCL)
        COMM_DIE("this binary was built without NCCL: build with make CUDA=1 and, in the Makefile's CUDA branch, "
                 "CFLAGS += -DNCSN_WITH_NCCL and LDLIBS += -lnccl");
#endif

    ncsn_comm *c = ncsn_xcalloc(1, sizeof *c);
    c->kind = kind;
    c->rank = env.rank;
    c->world_size = env.world_size;
    c->local_rank = env.local_rank;
    c->be = be;
    c->timeout_s = env_seconds("NCSN_COMM_TIMEOUT", 1800.0);
    if (kind == COMM_NONE) return c;

    const char *rendezvous = c->world_size > 1 ? rendezvous_resolve(getenv("NCSN_RENDEZVOUS")) : NULL;
#ifdef NCSN_WITH_MPI
    if (rendezvous && !strcmp(rendezvous, "mpi")) mpi_join(c->rank, c->world_size);
#endif
    const double rendezvous_timeout = env_seconds("NCSN_RENDEZVOUS_TIMEOUT", 600.0);
    char tag[RDV_TAG_BYTES];
    job_tag(tag, sizeof tag);
    unsigned char id[NCSN_COMM_ID_BYTES] = {0};
    char version[64] = "";
    if (kind == COMM_SHM) {
        c->slot_floats = SHM_SLOT_BYTES / sizeof(float);
        c->shm_bytes = SHM_HEADER_BYTES + (size_t)(c->world_size + 1) * SHM_SLOT_BYTES;
        if (c->rank == 0) shm_create_segment(c, id);
        ncsn_rendezvous_exchange(rendezvous, c->rank, c->world_size, tag, id, rendezvous_timeout);
        if (c->rank != 0) shm_attach_segment(c, id);
    } else {
#if defined(NCSN_WITH_CUDA) && defined(NCSN_WITH_NCCL)
        if (c->rank == 0) ncsn_nccl_unique_id(id, version, sizeof version);
        ncsn_rendezvous_exchange(rendezvous, c->rank, c->world_size, tag, id, rendezvous_timeout);
        c->nccl = ncsn_nccl_create(be, c->rank, c->world_size, id);
#endif
    }
    if (c->world_size > 1) snprintf(c->rendezvous, sizeof c->rendezvous, "%s", rendezvous);
#ifdef NCSN_WITH_MPI
    if (c->world_size > 1 && !strcmp(rendezvous, "mpi")) {
        c->used_mpi = 1;
        mpi_communicators++;
        snprintf(c->rendezvous, sizeof c->rendezvous, "mpi (MPI_Bcast, %s)", mpi_library);
    }
#endif

    /* Everyone is connected: the segment name and the rendezvous file are no longer needed,
     * and removing them now means no later run can pick up this run's id. */
    ncsn_comm_barrier(c);
    if (c->rank == 0) {
        if (kind == COMM_SHM) {
            char name[NCSN_COMM_ID_BYTES];
            memcpy(name, id, sizeof name);
            pending_segment[0] = '\0';
            if (shm_unlink(name) != 0) COMM_DIE("shm_unlink %s: %s", name, strerror(errno));
        }
        if (!strncmp(c->rendezvous, "file:", 5) && unlink(c->rendezvous + 5) != 0 && errno != ENOENT)
            COMM_DIE("rendezvous %s: cannot remove the file: %s", c->rendezvous, strerror(errno));
        if (c->world_size > 1)
            fprintf(stderr, "comm: %s%s%s, %d ranks (%s), rendezvous %s\n", kind_names[kind], *version ? " " : "",
                    version, c->world_size, env.source, c->rendezvous);
    }
    return c;
}

void ncsn_comm_destroy(ncsn_comm *c) {
    if (!c) return;
    if (c->kind == COMM_SHM) {
        ncsn_comm_barrier(c); /* nobody may still read this rank's slot */
        if (munmap(c->shm, c->shm_bytes) != 0) COMM_DIE("munmap: %s", strerror(errno));
    }
#if defined(NCSN_WITH_CUDA) && defined(NCSN_WITH_NCCL)
    if (c->kind == COMM_NCCL) ncsn_nccl_destroy(c->nccl);
#endif
#ifdef NCSN_WITH_MPI
    /* Every rank gets here (destroy is collective), as MPI_Finalize requires. */
    if (c->used_mpi && --mpi_communicators == 0 && mpi_initialised_by_ncsn) {
        mpi_check(MPI_Finalize(), "MPI_Finalize");
        mpi_initialised_by_ncsn = 0;
    }
#endif
    free(c);
}

int ncsn_comm_rank(const ncsn_comm *c) { return c->rank; }
int ncsn_comm_world_size(const ncsn_comm *c) { return c->world_size; }
int ncsn_comm_local_rank(const ncsn_comm *c) { return c->local_rank; }
const char *ncsn_comm_kind(const ncsn_comm *c) { return kind_names[c->kind]; }

static void check_call(const ncsn_comm *c, const ncsn_backend *be, const float *buf, size_t n, const char *op) {
    NCSN_CHECKF(be == c->be, "comm: %s: buffer of another backend than the communicator's", op);
    NCSN_CHECKF(buf != NULL || n == 0, "comm: %s: NULL buffer of %zu floats", op, n);
}

void ncsn_comm_allreduce_mean_start(ncsn_comm *c, ncsn_backend *be, float *buf, size_t n) {
    check_call(c, be, buf, n, "allreduce_mean");
    if (n == 0) return;
    if (c->kind == COMM_SHM) shm_allreduce_mean(c, buf, n);
#if defined(NCSN_WITH_CUDA) && defined(NCSN_WITH_NCCL)
    if (c->kind == COMM_NCCL) ncsn_nccl_allreduce_mean_start(c->nccl, be, buf, n);
#endif
}

void ncsn_comm_wait(ncsn_comm *c, ncsn_backend *be) {
    NCSN_CHECKF(be == c->be, "comm: wait: another backend than the communicator's");
#if defined(NCSN_WITH_CUDA) && defined(NCSN_WITH_NCCL)
    if (c->kind == COMM_NCCL) ncsn_nccl_wait(c->nccl, be);
#endif
}

void ncsn_comm_allreduce_mean(ncsn_comm *c, ncsn_backend *be, float *buf, size_t n) {
    ncsn_comm_allreduce_mean_start(c, be, buf, n);
    ncsn_comm_wait(c, be);
}

void ncsn_comm_allreduce_mean_buckets(ncsn_comm *c, ncsn_backend *be, float *buf, size_t n, size_t bucket_bytes) {
    NCSN_CHECKF(bucket_bytes >= sizeof(float), "comm: allreduce_mean_buckets: bucket of %zu bytes", bucket_bytes);
    const size_t bucket = bucket_bytes / sizeof(float);
    for (size_t off = 0; off < n; off += bucket)
        ncsn_comm_allreduce_mean_start(c, be, buf + off, n - off < bucket ? n - off : bucket);
    ncsn_comm_wait(c, be);
}

void ncsn_comm_broadcast(ncsn_comm *c, ncsn_backend *be, float *buf, size_t n, int root) {
    check_call(c, be, buf, n, "broadcast");
    NCSN_CHECKF(root >= 0 && root < c->world_size, "comm: broadcast: root %d of world size %d", root, c->world_size);
    if (n == 0) return;
    if (c->kind == COMM_SHM) shm_broadcast(c, buf, n, root);
#if defined(NCSN_WITH_CUDA) && defined(NCSN_WITH_NCCL)
    if (c->kind == COMM_NCCL) ncsn_nccl_broadcast(c->nccl, be, buf, n, root);
#endif
}

void ncsn_comm_barrier(ncsn_comm *c) {
    if (c->kind == COMM_SHM) shm_barrier(c);
#if defined(NCSN_WITH_CUDA) && defined(NCSN_WITH_NCCL)
    if (c->kind == COMM_NCCL) ncsn_nccl_barrier(c->nccl);
#endif
}

/* ---- the local launcher ------------------------------------------------------------- */

static void describe_status(int status, char *text, size_t len) {
    if (WIFEXITED(status)) snprintf(text, len, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(text, len, "was killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else snprintf(text, len, "ended with wait status 0x%x", (unsigned)status);
}

/* This process's environment with the given NAME=value entries replacing any of the same
 * name; built before fork, since the child may only make async-signal-safe calls. */
static char **environment_with(char *const *entries, int count) {
    extern char **environ;
    int total = 0;
    while (environ[total]) total++;
    char **env = ncsn_xcalloc((size_t)(total + count + 1), sizeof *env);
    int used = 0;
    for (int i = 0; i < total; i++) {
        int replaced = 0;
        for (int k = 0; k < count && !replaced; k++) {
            size_t name_len = (size_t)(strchr(entries[k], '=') - entries[k]) + 1; /* with the '=' */
            replaced = !strncmp(environ[i], entries[k], name_len);
        }
        if (!replaced) env[used++] = environ[i];
    }
    for (int k = 0; k < count; k++) env[used++] = entries[k];
    return env;
}

static void write_stderr(const char *a, const char *b) {
    /* After fork only write(2) is safe; a failed write has nowhere to be reported. */
    if (write(2, a, strlen(a)) < 0 || write(2, b, strlen(b)) < 0 || write(2, "\n", 1) < 0) _exit(127);
}

int ncsn_comm_spawn_local(int nproc, int argc, char **argv) {
    NCSN_CHECKF(nproc >= 1 && nproc <= 1024, "comm: spawn_local: nproc %d", nproc);
    NCSN_CHECKF(argc >= 1 && argv && argv[0] && !argv[argc], "comm: spawn_local: argv must be NULL-terminated");
    uint32_t nonce = 0;
    if (getrandom(&nonce, sizeof nonce, 0) != (ssize_t)sizeof nonce) nonce = (uint32_t)(now_seconds() * 1e6);
    char run_id[48];
    snprintf(run_id, sizeof run_id, "%ld-%08x", (long)getpid(), nonce);

    /* The variables every rank gets; the rank-specific ones are filled per rank below. */
    enum { MAX_ENTRIES = 6 };
    char entries[MAX_ENTRIES][PATH_MAX + 32];
    char *entry_ptrs[MAX_ENTRIES];
    int count = 0;
    const int rank_entry = count++, local_rank_entry = count++;
    snprintf(entries[count++], sizeof entries[0], "NCSN_WORLD_SIZE=%d", nproc);
    snprintf(entries[count++], sizeof entries[0], "NCSN_RUN_ID=%s", run_id);
    const char *rendezvous = getenv("NCSN_RENDEZVOUS");
    char own_file[PATH_MAX] = "";
    if (!rendezvous || !*rendezvous) {
        const char *tmp = getenv("TMPDIR");
        snprintf(own_file, sizeof own_file, "%s/ncsn-rendezvous-%s", tmp && *tmp ? tmp : "/tmp", run_id);
        snprintf(entries[count++], sizeof entries[0], "NCSN_RENDEZVOUS=file:%s", own_file);
    }
    if (!getenv("OMP_NUM_THREADS")) {
        /* K ranks share the cores; oversubscribed OpenMP teams would spin against each other. */
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        snprintf(entries[count++], sizeof entries[0], "OMP_NUM_THREADS=%ld", cores / nproc > 1 ? cores / nproc : 1);
    }
    for (int k = 0; k < count; k++) entry_ptrs[k] = entries[k];

    const pid_t launcher = getpid();
    pid_t *pids = ncsn_xcalloc((size_t)nproc, sizeof *pids);
    int *done = ncsn_xcalloc((size_t)nproc, sizeof *done);
    int failed_rank = -1, started = 0;
    fflush(stdout);
    fflush(stderr);
    for (int r = 0; r < nproc; r++) {
        snprintf(entries[rank_entry], sizeof entries[0], "NCSN_RANK=%d", r);
        snprintf(entries[local_rank_entry], sizeof entries[0], "NCSN_LOCAL_RANK=%d", r);
        char **env = environment_with(entry_ptrs, count);
        pid_t pid = fork();
        if (pid == 0) {
            /* A rank must not outlive its launcher (killed launcher, Ctrl-C in a pipeline). */
            if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != launcher) _exit(127);
            execve("/proc/self/exe", argv, env);
            execvpe(argv[0], argv, env); /* no /proc: the command as given */
            write_stderr("ncsn: comm: cannot run ", argv[0]);
            _exit(127);
        }
        free(env);
        if (pid < 0) {
            fprintf(stderr, "ncsn: comm: fork of rank %d: %s\n", r, strerror(errno));
            failed_rank = r;
            break;
        }
        pids[r] = pid;
        started++;
    }

    /* Wait for all; on the first failure stop the others, which would otherwise wait for
     * the failed rank in their next collective until NCSN_COMM_TIMEOUT. */
    double kill_deadline = 0.0;
    int stopping = 0;
    for (int remaining = started; remaining > 0;) {
        if (failed_rank >= 0 && !stopping) {
            stopping = 1;
            for (int k = 0; k < started; k++)
                if (!done[k]) kill(pids[k], SIGTERM);
            kill_deadline = now_seconds() + 10.0;
        }
        int progressed = 0;
        for (int r = 0; r < started; r++) {
            if (done[r]) continue;
            int status = 0;
            pid_t w = waitpid(pids[r], &status, WNOHANG);
            if (w == 0 || (w < 0 && errno == EINTR)) continue;
            if (w < 0) COMM_DIE("waitpid of rank %d (pid %ld): %s", r, (long)pids[r], strerror(errno));
            done[r] = 1;
            remaining--;
            progressed = 1;
            if ((WIFEXITED(status) && WEXITSTATUS(status) == 0) || stopping) continue;
            char text[96];
            describe_status(status, text, sizeof text);
            fprintf(stderr, "ncsn: comm: rank %d (pid %ld) %s; stopping the other ranks\n", r, (long)pids[r], text);
            failed_rank = r;
        }
        if (stopping && kill_deadline > 0.0 && now_seconds() > kill_deadline) {
            for (int k = 0; k < started; k++)
                if (!done[k]) kill(pids[k], SIGKILL);
            kill_deadline = 0.0;
        }
        if (!progressed && remaining > 0) sleep_seconds(0.02);
    }
    if (*own_file) unlink(own_file); /* still there when rank 0 failed before connecting all */
    free(pids);
    free(done);
    return failed_rank >= 0 ? 1 : 0;
}
