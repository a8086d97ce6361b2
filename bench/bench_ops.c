/* bench_ops.c: GFLOP/s of the CPU backend's convolutions on the CIFAR-10 model's 3x3 layers.
 *
 * The NCSN v1 / NCSNv2 CIFAR-10 networks spend their time in 3x3 convolutions with
 * C = K = 128 at 32x32 and C = K = 256 at 16x16 (dilations 1, 2, 4 in the dilated stages).
 * For each, at N = 32: forward, backward-data and backward-weights, timed as one warm-up
 * call (primitive creation, first touch) then the median of RUNS calls. FLOPs are
 * 2 * MACs = 2 * N * K * C * 9 * H * W (padding taps counted, as everyone reports them).
 *
 * The peer: bench/torch_ops.py runs the same convolutions in PyTorch (2 threads); when
 * /usr/bin/python3 and that script are present this program runs it right after timing
 * each convolution itself (so both see the same load on a shared machine) and prints the
 * engine / torch ratio per line. The FP32 peak printed is an ESTIMATE: cores x FP32 FLOP per
 * cycle x the clock /proc/cpuinfo reports (boost clocks make the true peak higher). FLOP
 * per cycle is two FMA pipes x lanes x 2, with the pipe width read from the CPU flags
 * (fp32_flop_per_cycle): 64 for full-width AVX-512 (Intel server cores; AMD Zen 5, told
 * from Zen 4 by avx512_vp2intersect), 32 for Zen 4 (AVX-512 on 256-bit pipes) and AVX2.
 *
 * Usage: build-cpu/bench/bench_ops [runs]   (NCSN_CPU_CONV_LAYOUT=any|nchw|nhwc selects the
 * primitives' layout, see host/cpu_internal.h; NCSN_BENCH_NO_TORCH=1 skips the peer).
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

enum { NCONV = BENCH_NCONV, NDIR = BENCH_NDIR, BATCH = BENCH_BATCH };

/* First "cpu MHz" of /proc/cpuinfo, 0 if unknown. */
static double cpu_mhz(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return 0.0;
    char line[256];
    double mhz = 0.0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "cpu MHz", 7)) {
            const char *colon = strchr(line, ':');
            if (colon) mhz = atof(colon + 1);
            break;
        }
    fclose(f);
    return mhz;
}

/* FP32 FLOP per cycle per core from /proc/cpuinfo's vendor and flags (see the header). */
static double fp32_flop_per_cycle(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return 32.0;
    char line[8192];
    int amd = 0, avx512 = 0, vp2intersect = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "vendor_id", 9)) amd = strstr(line, "AuthenticAMD") != NULL;
        if (!strncmp(line, "flags", 5)) {
            avx512 = strstr(line, " avx512f") != NULL;
            vp2intersect = strstr(line, " avx512_vp2intersect") != NULL;
            break;
        }
    }
    fclose(f);
    if (!avx512) return 32.0;         /* AVX2: 2 pipes x 8 lanes x 2 */
    if (amd && !vp2intersect) return 32.0; /* Zen 4: 512-bit ops on 256-bit pipes */
    return 64.0;                      /* 2 pipes x 16 lanes x 2 */
}

static int torch_available(void) {
    return !getenv("NCSN_BENCH_NO_TORCH") && !access("/usr/bin/python3", X_OK) && !access("bench/torch_ops.py", R_OK);
}

/* Runs the peer for one convolution; fills torch_gflops[dir] (0 where it did not report). */
static void run_torch(int runs, const char *conv_name, double torch_gflops[NDIR]) {
    memset(torch_gflops, 0, sizeof(double) * NDIR);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 bench/torch_ops.py %d %s", runs, conv_name);
    FILE *p = popen(cmd, "r");
    if (!p) {
        printf("torch peer: popen failed\n");
        return;
    }
    char line[256], name[64], dir[64];
    double ms, gflops;
    int got = 0;
    while (fgets(line, sizeof line, p)) {
        if (sscanf(line, "conv %63s %63s %lf %lf", name, dir, &ms, &gflops) != 4 || strcmp(name, conv_name)) continue;
        for (int d = 0; d < NDIR; d++)
            if (!strcmp(dir, bench_dir_names[d])) {
                torch_gflops[d] = gflops;
                got++;
            }
    }
    int status = pclose(p);
    if (status != 0 || got != NDIR)
        printf("torch peer: exited with status %d after %d of %d results for %s\n", status, got, NDIR, conv_name);
}

int main(int argc, char **argv) {
    int runs = bench_runs(argc, argv, 5);
    ncsn_backend *be = bench_cpu_backend("bench_ops");
    int threads = omp_get_max_threads();
    double mhz = cpu_mhz(), flop_per_cycle = fp32_flop_per_cycle(), peak = threads * flop_per_cycle * mhz * 1e-3;
    const char *layout = getenv("NCSN_CPU_CONV_LAYOUT");
    printf("bench_ops: CPU backend, %d threads, conv layout %s, N = %d, median of %d runs after 1 warm-up\n", threads,
           layout && *layout ? layout : "any", BATCH, runs);
    printf("load average at start: %.2f (%s)\n", load_average(),
           load_average() > threads ? "BUSY: other jobs share the cores, numbers are depressed" : "quiet enough");
    if (mhz > 0)
        printf("FP32 peak estimate: %d cores x %.0f FLOP/cycle x %.0f MHz = %.0f GFLOP/s (estimate: nominal clock)\n",
               threads, flop_per_cycle, mhz, peak);

    int with_torch = torch_available();
    if (!with_torch)
        printf("torch peer: skipped (needs /usr/bin/python3 and bench/torch_ops.py, run from the repository root)\n");
    double engine_gflops[NCONV][NDIR], engine_ms[NCONV][NDIR], torch_gflops[NCONV][NDIR];
    memset(torch_gflops, 0, sizeof torch_gflops);
    for (int c = 0; c < NCONV; c++) {
        const bench_conv *bc = &bench_convs[c];
        bench_conv_tensors t = bench_conv_create(be, bc);
        for (int dir = 0; dir < NDIR; dir++) {
            double *times = malloc(sizeof(double) * (size_t)runs);
            for (int r = -1; r < runs; r++) {
                double t0 = now_ms();
                bench_conv_run(be, &t, dir);
                if (r >= 0) times[r] = now_ms() - t0;
            }
            qsort(times, (size_t)runs, sizeof(double), cmp_double);
            engine_ms[c][dir] = times[runs / 2];
            engine_gflops[c][dir] = t.flops / (engine_ms[c][dir] * 1e-3) * 1e-9;
            free(times);
        }
        bench_conv_free(be, &t);
        if (with_torch) run_torch(runs, bc->name, torch_gflops[c]);
    }
    ncsn_cpu_backend_destroy(be);

    printf("%-16s %-17s %9s %9s %8s %9s %8s\n", "conv (N=32)", "direction", "ms", "GFLOP/s", "of peak", "torch", "ratio");
    for (int c = 0; c < NCONV; c++)
        for (int dir = 0; dir < NDIR; dir++) {
            char peak_frac[16] = "-", torch_col[16] = "-", ratio[16] = "-";
            if (peak > 0) snprintf(peak_frac, sizeof peak_frac, "%.0f%%", 100.0 * engine_gflops[c][dir] / peak);
            if (torch_gflops[c][dir] > 0) {
                snprintf(torch_col, sizeof torch_col, "%.1f", torch_gflops[c][dir]);
                snprintf(ratio, sizeof ratio, "%.2fx", engine_gflops[c][dir] / torch_gflops[c][dir]);
            }
            printf("%-16s %-17s %9.2f %9.1f %8s %9s %8s\n", bench_convs[c].name, bench_dir_names[dir], engine_ms[c][dir],
                   engine_gflops[c][dir], peak_frac, torch_col, ratio);
        }
    printf("load average at end: %.2f\n", load_average());
    return 0;
}
