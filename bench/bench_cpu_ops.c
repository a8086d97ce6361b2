/* bench_cpu_ops.c: milliseconds per call of the CPU backend's non-convolution ops on the
 * CIFAR-10 model's activation shapes, next to the same op in PyTorch.
 *
 * The NCSNv2 CIFAR-10 network (ngf 128) runs its norms, ELUs, CRP pools and residual sums
 * on N x 128 x 32 x 32 and N x 256 x 16 x 16 tensors; at N = 32 each is 4M floats (16 MB),
 * so these ops are memory- and overhead-bound, and the model's step calls them hundreds of
 * times. Each op is timed as one warm-up call then `runs` calls (out of place: the model
 * runs its ELUs in place, which costs the same); the table gives the fastest run and the
 * median. On a shared 2-core machine other jobs preempt one of the two OpenMP threads and
 * every barrier then waits a scheduler time slice, so medians jump in multiples of ~4 ms;
 * the fastest run is the op's own cost, and the peer reports its fastest run too.
 *
 * The peer: the same ops in PyTorch (torch.nn.functional, and InstanceNorm2dPlus written as
 * ncsnv2's module computes it), run by /usr/bin/python3 with the same thread count right
 * after the engine's measurements, so both see similar load on a shared machine; the last
 * column is torch ms / engine ms (> 1: the engine is faster). Backwards run through
 * autograd on a graph built once outside the timing (retain_graph), so only the backward is
 * timed. PyTorch's max-pool backward scatters through the indices its forward saved; the
 * engine's recomputes them (backend.h's forward has no index output), so that one line
 * compares a scatter with an argmax plus a scatter.
 *
 * Usage: build/bench/bench_cpu_ops [runs]   (OMP_NUM_THREADS sets the threads of both;
 * NCSN_BENCH_NO_TORCH=1 skips the peer). Run from the repository root. On a loaded machine
 * OMP_WAIT_POLICY=passive (inherited by the peer) keeps spinning threads from losing their
 * scheduler share; see the ops' comments in host/cpu_backend.c.
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "kernels/rng_math.h"
#include "ncsn/backend.h"

enum { BATCH = 32, LEVELS = 10 };

typedef struct {
    const char *name;
    int C, H;
} bench_shape;

/* Keep in sync with SHAPES in the peer below. */
static const bench_shape shapes[] = {{"128ch@32x32", 128, 32}, {"256ch@16x16", 256, 16}};
enum { NSHAPE = sizeof shapes / sizeof shapes[0] };

typedef enum {
    OP_IN_PLUS_FORWARD,
    OP_IN_PLUS_BACKWARD,
    OP_COND_IN_PLUS_FORWARD,
    OP_COND_IN_PLUS_BACKWARD,
    OP_ELU_FORWARD,
    OP_ELU_BACKWARD,
    OP_MAX_POOL5_FORWARD,
    OP_MAX_POOL5_BACKWARD,
    OP_AVG_POOL5_FORWARD,
    OP_AVG_POOL5_BACKWARD,
    OP_MEAN_POOL2_FORWARD,
    OP_MEAN_POOL2_BACKWARD,
    OP_RESIZE_FORWARD, /* bilinear, from H/2 x W/2 up to H x W (the MSF of refine4) */
    OP_RESIZE_BACKWARD,
    OP_ADD,
    OP_ACCUMULATE,
    OP_SCALE_SHIFT,
    OP_COUNT
} bench_op;

/* Keep in sync with OPS in the peer below (same names, same order). */
static const char *op_names[OP_COUNT] = {
    "in_plus_forward",      "in_plus_backward",      "cond_in_plus_forward", "cond_in_plus_backward",
    "elu_forward",          "elu_backward",          "max_pool5_forward",    "max_pool5_backward",
    "avg_pool5_forward",    "avg_pool5_backward",    "mean_pool2_forward",   "mean_pool2_backward",
    "resize_up2_forward",   "resize_up2_backward",   "add",                  "accumulate",
    "scale_shift",
};

/* The peer, run as `python3 -c`: prints "op <shape> <op> <ms>" per measurement. */
static const char *torch_peer =
    "import sys, time\n"
    "import torch\n"
    "import torch.nn.functional as F\n"
    "RUNS, N, L = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])\n"
    "torch.set_num_threads(int(sys.argv[4]))\n"
    "SHAPES = [('128ch@32x32', 128, 32), ('256ch@16x16', 256, 16)]\n"
    "def fastest(fn):\n"
    "    fn()\n"
    "    ts = []\n"
    "    for _ in range(RUNS):\n"
    "        t0 = time.perf_counter(); fn(); ts.append((time.perf_counter() - t0) * 1e3)\n"
    "    return min(ts)\n"
    "def in_plus(x, gamma, alpha, beta):\n"
    "    # ncsnv2 InstanceNorm2dPlus.forward (bias=True); per-example parameter rows when 2-D\n"
    "    C = x.shape[1]\n"
    "    means = torch.mean(x, dim=(2, 3))\n"
    "    m = torch.mean(means, dim=-1, keepdim=True)\n"
    "    v = torch.var(means, dim=-1, keepdim=True)\n"
    "    means = (means - m) / (torch.sqrt(v + 1e-5))\n"
    "    h = F.instance_norm(x, eps=1e-5)\n"
    "    h = h + means[..., None, None] * alpha.view(-1, C, 1, 1)\n"
    "    return gamma.view(-1, C, 1, 1) * h + beta.view(-1, C, 1, 1)\n"
    "def mean_pool2(x):  # ConvMeanPool's pooling, in the official summation order\n"
    "    return (x[:, :, ::2, ::2] + x[:, :, 1::2, ::2] + x[:, :, ::2, 1::2] + x[:, :, 1::2, 1::2]) / 4\n"
    "def backward_only(out, inputs, grad):\n"
    "    # The graph is built once, outside the timing; each call runs only the backward.\n"
    "    return lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True)\n"
    "torch.manual_seed(0)\n"
    "for name, C, H in SHAPES:\n"
    "    x = torch.randn(N, C, H, H) * 2 + 0.3; g = torch.randn(N, C, H, H); y = torch.randn(N, C, H, H)\n"
    "    xs = torch.randn(N, C, H // 2, H // 2); gs = torch.randn(N, C, H // 2, H // 2)\n"
    "    labels = torch.arange(N) % L\n"
    "    gamma = torch.ones(C, requires_grad=True); alpha = torch.ones(C, requires_grad=True)\n"
    "    beta = torch.zeros(C, requires_grad=True)\n"
    "    embed = torch.nn.Embedding(L, 3 * C)\n"
    "    xg = x.clone().requires_grad_(True); xsg = xs.clone().requires_grad_(True)\n"
    "    elu_out = F.elu(x)\n"
    "    with torch.enable_grad():\n"
    "        gm, al, be = embed(labels).chunk(3, dim=-1)\n"
    "        graphs = {\n"
    "            'in_plus_backward': (in_plus(xg, gamma, alpha, beta), [xg, gamma, alpha, beta], g),\n"
    "            'cond_in_plus_backward': (in_plus(xg, gm, al, be), [xg, embed.weight], g),\n"
    "            'max_pool5_backward': (F.max_pool2d(xg, 5, 1, 2), [xg], g),\n"
    "            'avg_pool5_backward': (F.avg_pool2d(xg, 5, 1, 2), [xg], g),\n"
    "            'mean_pool2_backward': (mean_pool2(xg), [xg], gs),\n"
    "            'resize_up2_backward':\n"
    "                (F.interpolate(xsg, size=(H, H), mode='bilinear', align_corners=True), [xsg], g),\n"
    "        }\n"
    "    with torch.no_grad():\n"
    "        gm0, al0, be0 = embed(labels).chunk(3, dim=-1)\n"
    "    ops = [\n"
    "        ('in_plus_forward', lambda: in_plus(x, gamma.detach(), alpha.detach(), beta.detach())),\n"
    "        ('in_plus_backward', None),\n"
    "        ('cond_in_plus_forward', lambda: in_plus(x, gm0, al0, be0)),\n"
    "        ('cond_in_plus_backward', None),\n"
    "        ('elu_forward', lambda: F.elu(x)),\n"
    "        ('elu_backward', lambda: torch.ops.aten.elu_backward(g, 1.0, 1.0, 1.0, True, elu_out)),\n"
    "        ('max_pool5_forward', lambda: F.max_pool2d(x, 5, 1, 2)), ('max_pool5_backward', None),\n"
    "        ('avg_pool5_forward', lambda: F.avg_pool2d(x, 5, 1, 2)), ('avg_pool5_backward', None),\n"
    "        ('mean_pool2_forward', lambda: mean_pool2(x)), ('mean_pool2_backward', None),\n"
    "        ('resize_up2_forward', lambda: F.interpolate(xs, size=(H, H), mode='bilinear', align_corners=True)),\n"
    "        ('resize_up2_backward', None),\n"
    "        ('add', lambda: torch.add(x, y)), ('accumulate', lambda: y.add_(x)),\n"
    "        ('scale_shift', lambda: torch.add(x * 2.0, -1.0)),\n"
    "    ]\n"
    "    for op, fn in ops:\n"
    "        if fn is None:\n"
    "            out, inputs, grad = graphs[op]\n"
    "            ms = fastest(backward_only(out, inputs, grad))\n"
    "        else:\n"
    "            with torch.no_grad():\n"
    "                ms = fastest(fn)\n"
    "        print('op %s %s %.4f' % (name, op, ms))\n"
    "    sys.stdout.flush()\n";

/* Buffers of one shape: activations x, y, g, out, and the half-size xs, gs of the
 * pools and the resize. */
typedef struct {
    int N, C, H, W;
    size_t n, n_half;
    float *x, *y, *g, *out, *xs, *gs, *gamma, *alpha, *beta, *dgamma, *dalpha, *dbeta, *embed, *dembed, *stats;
    int32_t *labels;
} bench_bufs;

static void run_op(ncsn_backend *be, bench_op op, bench_bufs *b) {
    const int N = b->N, C = b->C, H = b->H, W = b->W;
    const size_t n = b->n;
    switch (op) {
    case OP_IN_PLUS_FORWARD:
        ncsn_instance_norm_plus_forward(be, b->out, b->x, b->gamma, b->alpha, b->beta, 0, NULL, b->stats, N, C, H, W, 0);
        break;
    case OP_IN_PLUS_BACKWARD:
        ncsn_instance_norm_plus_backward(be, b->y, b->dgamma, b->dalpha, b->dbeta, b->g, b->x, b->gamma, b->alpha, 0,
                                         NULL, b->stats, N, C, H, W, 0);
        break;
    case OP_COND_IN_PLUS_FORWARD:
        ncsn_instance_norm_plus_forward(be, b->out, b->x, b->embed, b->embed + C, b->embed + 2 * C, 3 * C, b->labels,
                                        b->stats, N, C, H, W, 0);
        break;
    case OP_COND_IN_PLUS_BACKWARD:
        ncsn_instance_norm_plus_backward(be, b->y, b->dembed, b->dembed + C, b->dembed + 2 * C, b->g, b->x, b->embed,
                                         b->embed + C, 3 * C, b->labels, b->stats, N, C, H, W, 0);
        break;
    /* Out of place: repeating an in-place ELU backward would shrink g into denormals. */
    case OP_ELU_FORWARD: ncsn_elu_forward(be, b->out, b->x, n); break;
    case OP_ELU_BACKWARD: ncsn_elu_backward(be, b->y, b->g, b->out, n); break;
    case OP_MAX_POOL5_FORWARD: ncsn_max_pool5_forward(be, b->out, b->x, N, C, H, W); break;
    case OP_MAX_POOL5_BACKWARD: ncsn_max_pool5_backward(be, b->y, b->g, b->x, N, C, H, W, 0); break;
    case OP_AVG_POOL5_FORWARD: ncsn_avg_pool5_forward(be, b->out, b->x, N, C, H, W); break;
    case OP_AVG_POOL5_BACKWARD: ncsn_avg_pool5_backward(be, b->y, b->g, N, C, H, W, 0); break;
    case OP_MEAN_POOL2_FORWARD: ncsn_mean_pool2_forward(be, b->xs, b->x, N, C, H, W); break;
    case OP_MEAN_POOL2_BACKWARD: ncsn_mean_pool2_backward(be, b->y, b->gs, N, C, H, W, 0); break;
    case OP_RESIZE_FORWARD: ncsn_resize_bilinear_forward(be, b->out, b->xs, N, C, H / 2, W / 2, H, W); break;
    case OP_RESIZE_BACKWARD: ncsn_resize_bilinear_backward(be, b->gs, b->g, N, C, H / 2, W / 2, H, W, 0); break;
    case OP_ADD: ncsn_add(be, b->out, b->x, b->y, n); break;
    case OP_ACCUMULATE: ncsn_accumulate(be, b->y, b->x, n); break;
    case OP_SCALE_SHIFT: ncsn_scale_shift(be, b->out, b->x, 2.0f, -1.0f, n); break;
    case OP_COUNT: break;
    }
}

static float *bench_alloc(ncsn_backend *be, size_t floats) { return ncsn_alloc(be, floats * sizeof(float)); }

static void bufs_create(ncsn_backend *be, bench_bufs *b, const bench_shape *s) {
    memset(b, 0, sizeof *b);
    b->N = BATCH;
    b->C = s->C;
    b->H = b->W = s->H;
    b->n = (size_t)BATCH * s->C * s->H * s->H;
    b->n_half = b->n / 4;
    b->x = bench_alloc(be, b->n);
    b->y = bench_alloc(be, b->n);
    b->g = bench_alloc(be, b->n);
    b->out = bench_alloc(be, b->n);
    b->xs = bench_alloc(be, b->n_half);
    b->gs = bench_alloc(be, b->n_half);
    b->gamma = bench_alloc(be, (size_t)s->C);
    b->alpha = bench_alloc(be, (size_t)s->C);
    b->beta = bench_alloc(be, (size_t)s->C);
    b->dgamma = bench_alloc(be, (size_t)s->C);
    b->dalpha = bench_alloc(be, (size_t)s->C);
    b->dbeta = bench_alloc(be, (size_t)s->C);
    b->embed = bench_alloc(be, (size_t)LEVELS * 3 * s->C);
    b->dembed = bench_alloc(be, (size_t)LEVELS * 3 * s->C);
    b->stats = bench_alloc(be, NCSN_NORM_STATS_COUNT(BATCH, s->C));
    b->labels = ncsn_alloc(be, BATCH * sizeof(int32_t));
    /* Activations as the model sees them: a non-zero mean per plane, both ELU branches. */
    bench_fill(b->x, b->n, 1, 2.0f, 0.3f);
    bench_fill(b->y, b->n, 2, 1.0f, 0.0f);
    bench_fill(b->g, b->n, 3, 1.0f, 0.0f);
    bench_fill(b->xs, b->n_half, 6, 1.0f, 0.0f);
    bench_fill(b->gs, b->n_half, 7, 1.0f, 0.0f);
    bench_fill(b->gamma, (size_t)s->C, 8, 0.02f, 1.0f);
    bench_fill(b->alpha, (size_t)s->C, 9, 0.02f, 1.0f);
    bench_fill(b->embed, (size_t)LEVELS * 3 * s->C, 10, 0.02f, 1.0f);
    for (int i = 0; i < BATCH; i++) b->labels[i] = i % LEVELS;
}

static void bufs_free(ncsn_backend *be, bench_bufs *b) {
    float *all[] = {b->x,     b->y,      b->g,      b->out,    b->xs,     b->gs,  b->gamma, b->alpha, b->beta,
                    b->dgamma, b->dalpha, b->dbeta, b->embed, b->dembed, b->stats};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) ncsn_free(be, all[i]);
    ncsn_free(be, b->labels);
}

static int torch_available(void) { return !getenv("NCSN_BENCH_NO_TORCH") && !access("/usr/bin/python3", X_OK); }

/* Runs the peer; fills torch_ms[shape][op] (0 where it did not report). */
static void run_torch(int runs, int threads, double torch_ms[NSHAPE][OP_COUNT]) {
    memset(torch_ms, 0, sizeof(double) * NSHAPE * OP_COUNT);
    /* The script goes through a temporary file: it is too long for one argv entry of a
     * shell command line to stay readable, and popen has no argv form. */
    char path[] = "/tmp/bench_cpu_ops_peer_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        printf("torch peer: mkstemp failed\n");
        return;
    }
    FILE *f = fdopen(fd, "w");
    if (!f || fputs(torch_peer, f) == EOF || fclose(f) != 0) {
        printf("torch peer: writing %s failed\n", path);
        unlink(path);
        return;
    }
    char cmd[256];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %d %d %d %d", path, runs, BATCH, LEVELS, threads);
    FILE *p = popen(cmd, "r");
    if (!p) {
        printf("torch peer: popen failed\n");
        unlink(path);
        return;
    }
    char line[256], shape[64], op[64];
    double ms;
    int got = 0;
    while (fgets(line, sizeof line, p)) {
        if (sscanf(line, "op %63s %63s %lf", shape, op, &ms) != 3) continue;
        for (int s = 0; s < NSHAPE; s++)
            for (int o = 0; o < OP_COUNT; o++)
                if (!strcmp(shape, shapes[s].name) && !strcmp(op, op_names[o])) {
                    torch_ms[s][o] = ms;
                    got++;
                }
    }
    int status = pclose(p);
    unlink(path);
    if (status != 0 || got != NSHAPE * OP_COUNT)
        printf("torch peer: exited with status %d after %d of %d results\n", status, got, NSHAPE * OP_COUNT);
}

int main(int argc, char **argv) {
    int runs = bench_runs(argc, argv, 11);
    ncsn_backend *be = bench_cpu_backend("bench_cpu_ops");
    const int threads = omp_get_max_threads();
    printf("bench_cpu_ops: CPU backend, %d threads, N = %d, fastest and median of %d runs after 1 warm-up\n", threads,
           BATCH, runs);
    double load = load_average();
    printf("load average at start: %.2f (%s)\n", load,
           load > threads ? "BUSY: other jobs share the cores, numbers are depressed" : "quiet enough");

    double engine_ms[NSHAPE][OP_COUNT], engine_median_ms[NSHAPE][OP_COUNT], torch_ms[NSHAPE][OP_COUNT];
    double *times = malloc(sizeof(double) * (size_t)runs);
    if (!times) ncsn_die("bench_cpu_ops: out of memory");
    for (int s = 0; s < NSHAPE; s++) {
        bench_bufs b;
        bufs_create(be, &b, &shapes[s]);
        for (int op = 0; op < OP_COUNT; op++) {
            /* The norm backwards read the statistics of their own forward. */
            if (op == OP_IN_PLUS_BACKWARD) run_op(be, OP_IN_PLUS_FORWARD, &b);
            if (op == OP_COND_IN_PLUS_BACKWARD) run_op(be, OP_COND_IN_PLUS_FORWARD, &b);
            for (int r = -1; r < runs; r++) {
                double t0 = now_ms();
                run_op(be, (bench_op)op, &b);
                ncsn_synchronize(be);
                if (r >= 0) times[r] = now_ms() - t0;
            }
            qsort(times, (size_t)runs, sizeof(double), cmp_double);
            engine_ms[s][op] = times[0];
            engine_median_ms[s][op] = times[runs / 2];
        }
        bufs_free(be, &b);
    }
    free(times);
    ncsn_cpu_backend_destroy(be);

    int with_torch = torch_available();
    if (with_torch) run_torch(runs, threads, torch_ms);
    else {
        memset(torch_ms, 0, sizeof torch_ms);
        printf("torch peer: skipped (NCSN_BENCH_NO_TORCH set, or no /usr/bin/python3)\n");
    }

    printf("%-12s %-22s %9s %9s %9s %9s\n", "shape (N=32)", "op", "ms", "median", "torch ms", "torch/ms");
    double total = 0.0, total_torch = 0.0;
    for (int s = 0; s < NSHAPE; s++)
        for (int op = 0; op < OP_COUNT; op++) {
            char torch_col[16] = "-", ratio[16] = "-";
            if (torch_ms[s][op] > 0) {
                snprintf(torch_col, sizeof torch_col, "%.3f", torch_ms[s][op]);
                snprintf(ratio, sizeof ratio, "%.2fx", torch_ms[s][op] / engine_ms[s][op]);
                total += engine_ms[s][op];
                total_torch += torch_ms[s][op];
            }
            printf("%-12s %-22s %9.3f %9.3f %9s %9s\n", shapes[s].name, op_names[op], engine_ms[s][op],
                   engine_median_ms[s][op], torch_col, ratio);
        }
    if (total_torch > 0)
        printf("sum of the fastest runs: engine %.2f ms, torch %.2f ms -> %.2fx\n", total, total_torch,
               total_torch / total);
    printf("load average at end: %.2f\n", load_average());
    return 0;
}
