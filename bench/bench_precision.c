/* bench_precision.c: CPU convolution throughput, FP32 against BF16, on the CIFAR-10 3x3 layers.
 *
 * The layers and the FLOP count are those of bench/bench_ops.c (C = K = 128 at 32x32,
 * C = K = 256 at 16x16 with dilations 1, 2, 4; N = 32; FLOPs = 2 N K C 9 H W). Both
 * precisions run on ONE backend whose be->precision is switched between calls, and every
 * repetition times FP32 and BF16 back to back, so both see the same load on a shared
 * machine; the table gives the median of each and the ratio BF16 / FP32 (> 1: BF16 is
 * faster). Times include what a real call pays: the f32 -> bf16 reorders of the inputs and
 * the reorder of the f32 output back to the user's NCHW.
 *
 * BF16 rounds the convolution inputs to 8 significant bits (tests/test_precision.c states
 * and checks the error); on Zen 4 the avx512_bf16 dot product does two multiply-adds per
 * fp32 lane, which bounds the gain at 2x before reorders and memory traffic.
 *
 * Usage: build/bench/bench_precision [runs]   (default 5; about 10 s on 2 cores)
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "host/cpu_internal.h"
#include "bench/bench_util.h"
#include "kernels/rng_math.h"
#include "ncsn/backend.h"

enum { NCONV = BENCH_NCONV, NDIR = BENCH_NDIR, NPREC = 2, BATCH = BENCH_BATCH };
static const ncsn_precision precisions[NPREC] = {NCSN_PRECISION_FP32, NCSN_PRECISION_BF16};

int main(int argc, char **argv) {
    int runs = bench_runs(argc, argv, 5);
    ncsn_backend *be = bench_cpu_backend("bench_precision");
    printf("bench_precision: CPU backend, %d threads, N = %d, median of %d runs after 1 warm-up, "
           "FP32 and BF16 interleaved\n",
           omp_get_max_threads(), BATCH, runs);
    double load_start = load_average();
    printf("load average at start: %.2f (%s)\n", load_start,
           load_start > omp_get_max_threads() ? "BUSY: other jobs share the cores, numbers are depressed"
                                              : "quiet enough");

    double ms[NCONV][NDIR][NPREC], gflops[NCONV][NDIR][NPREC];
    const char *impl[NCONV][NDIR][NPREC];
    double *times[NPREC];
    for (int p = 0; p < NPREC; p++) times[p] = malloc(sizeof(double) * (size_t)runs);
    for (int c = 0; c < NCONV; c++) {
        const bench_conv *bc = &bench_convs[c];
        bench_conv_tensors t = bench_conv_create(be, bc);
        for (int dir = 0; dir < NDIR; dir++) {
            for (int r = -1; r < runs; r++)
                for (int p = 0; p < NPREC; p++) {
                    be->precision = precisions[p];
                    double t0 = now_ms();
                    bench_conv_run(be, &t, dir);
                    if (r >= 0) times[p][r] = now_ms() - t0;
                }
            for (int p = 0; p < NPREC; p++) {
                qsort(times[p], (size_t)runs, sizeof(double), cmp_double);
                ms[c][dir][p] = times[p][runs / 2];
                gflops[c][dir][p] = t.flops / (ms[c][dir][p] * 1e-3) * 1e-9;
                be->precision = precisions[p];
                ncsn_precision ran = cpu_conv_effective_precision(be, &t.d, (cpu_conv_direction)dir, &impl[c][dir][p]);
                if (ran != precisions[p])
                    printf("note: %s %s asked for bf16 but runs in fp32 (no bf16 primitive on this CPU)\n", bc->name,
                           bench_dir_names[dir]);
            }
        }
        bench_conv_free(be, &t);
    }
    for (int p = 0; p < NPREC; p++) free(times[p]);

    printf("%-16s %-17s %9s %9s %9s %9s %7s  %s\n", "conv (N=32)", "direction", "fp32 ms", "GFLOP/s", "bf16 ms",
           "GFLOP/s", "ratio", "oneDNN implementation (fp32 / bf16)");
    double total[NPREC] = {0, 0}, total_dir[NDIR][NPREC];
    memset(total_dir, 0, sizeof total_dir);
    for (int c = 0; c < NCONV; c++)
        for (int dir = 0; dir < NDIR; dir++) {
            printf("%-16s %-17s %9.2f %9.1f %9.2f %9.1f %6.2fx  %s / %s\n", bench_convs[c].name, bench_dir_names[dir],
                   ms[c][dir][0], gflops[c][dir][0], ms[c][dir][1], gflops[c][dir][1], ms[c][dir][0] / ms[c][dir][1],
                   impl[c][dir][0], impl[c][dir][1]);
            for (int p = 0; p < NPREC; p++) {
                total[p] += ms[c][dir][p];
                total_dir[dir][p] += ms[c][dir][p];
            }
        }
    for (int dir = 0; dir < NDIR; dir++)
        printf("all four layers, %-17s fp32 %8.1f ms  bf16 %8.1f ms  ratio %.2fx\n", bench_dir_names[dir],
               total_dir[dir][0], total_dir[dir][1], total_dir[dir][0] / total_dir[dir][1]);
    printf("all four layers, all directions  fp32 %8.1f ms  bf16 %8.1f ms  ratio %.2fx\n", total[0], total[1],
           total[0] / total[1]);
    printf("load average at end: %.2f\n", load_average());
    ncsn_cpu_backend_destroy(be);
    return 0;
}
