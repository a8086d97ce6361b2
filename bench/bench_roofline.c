/* bench_roofline.c: the H100 performance model of bench/GPU_PERFORMANCE.md, computed from the
 * op sequence the code really issues rather than counted by hand.
 *
 * It builds the network of a config on a CPU backend whose compute ops are replaced by
 * counters (nothing is computed: the parameters stay zero and no data moves), runs one
 * network evaluation at batch 1 per design, and adds up for every op: the GPU kernels our
 * CUDA backend launches for it, the bytes those kernels read and write per image, and the
 * convolution FLOPs. Designs:
 *   tf32         fp32 NCHW activations, TF32 convolutions, bias by a separate kernel;
 *   bf16 staged  fp32 NCHW activations, each convolution converting its input to bf16 NHWC,
 *                cuDNN writing fp32 NHWC, a kernel transposing back (the bf16 path before
 *                ncsn_model_set_bf16_inference);
 *   bf16 NHWC    bf16 NHWC activations end to end (ncsn_model_set_bf16_inference: what
 *                `ncsn sample` runs in bf16, the default), each convolution's bias, residual
 *                and ELU in cuDNN's fused epilogue; and the same with cuDNN writing fp32 and
 *                a separate epilogue kernel (host/cuda_conv.c's fallback when no fused
 *                engine finalizes).
 * Bytes per op are what the CUDA kernels of kernels/ move: each tensor read once per pass
 * (the fp32 InstanceNorm++ statistics pass reads its input twice: mean, then squared
 * deviations; the bf16 one keeps small planes in shared memory between the two), the 5x5
 * pools' and the resize's neighbourhood re-reads served by L1/L2 and counted once.
 * The per-call weight conversions of the staged design are charged to a batch of B images.
 *
 * Time, kernel by kernel (a roofline): a cuDNN convolution takes the longer of its arithmetic
 * at the assumed efficiency and its own traffic (it streams its input and output while its
 * tensor cores work: for the 128/256-channel layers that traffic is hidden, for the 3-channel
 * first and last layers it is what counts); every other kernel (the norms, ELUs, sums, pools,
 * and the staging or bias kernels around a convolution where a design has them) is
 * memory-bound: bytes / achieved bandwidth. Kernels of one stream run one after another, so
 * the times add. The peaks and efficiencies are the assumptions table of
 * GPU_PERFORMANCE.md; change them there and here together. The 50k-sample FID time follows
 * from the NFE per sample.
 *
 * Usage: build/bench/bench_roofline [config.yml] [batch]
 *        (defaults: models/configs/cifar10.yml, 1000; a fraction of a second, no GPU)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_util.h"
#include "ncsn/backend.h"
#include "ncsn/config.h"
#include "ncsn/model.h"

/* ---- assumptions (GPU_PERFORMANCE.md, "Assumptions") ---- */
#define H100_BF16_PEAK 989e12  /* dense tensor-core FLOP/s */
#define H100_TF32_PEAK 495e12
#define H100_HBM_ACHIEVED 2.3e12 /* bytes/s: ~70 % of 3.35 TB/s for streaming kernels */
#define EFF_BF16_NHWC 0.50       /* cuDNN implicit GEMM on NHWC bf16, 128/256 channels, batch >= 500 */
#define EFF_BF16_NHWC_LOW 0.35   /* the pessimistic end */
#define EFF_TF32_NCHW 0.35       /* NCHW forces layout transposes inside cuDNN */
#define FID_SAMPLES 50000.0

typedef enum { DESIGN_TF32, DESIGN_BF16_STAGED, DESIGN_BF16_NHWC, DESIGN_BF16_NHWC_UNFUSED, DESIGN_COUNT } design;
static const char *const design_names[DESIGN_COUNT] = {"tf32 (fp32 NCHW)", "bf16 staged per conv",
                                                      "bf16 NHWC, epilogue fused", "bf16 NHWC, epilogue unfused"};

/* What one design's evaluation adds up to, per op kind. */
enum { K_CONV, K_NORM, K_ELU, K_ADD, K_POOL, K_RESIZE, K_BOUNDARY, K_COUNT };
static const char *const kind_names[K_COUNT] = {"convolutions", "InstanceNorm++ (+ELU)", "ELU", "add / accumulate",
                                                "pools", "bilinear resize", "input / output"};

typedef struct {
    double kernels[K_COUNT], bytes[K_COUNT], calls[K_COUNT];
    double us[K_COUNT], us_low[K_COUNT]; /* roofline time at the middle and the low conv efficiency */
    double conv_flops;
} tally;

static tally t;
static design current;
static int batch_for_weights = 1000;

static int verbose; /* NCSN_ROOFLINE_VERBOSE=1: one line per op call */

static double mem_us(double bytes) { return bytes / H100_HBM_ACHIEVED * 1e6; }

/* A memory-bound op: `kernels` launches moving `bytes` per image. */
static void add(int kind, double kernels, double bytes) {
    if (verbose) printf("    %-24s kernels %.0f  KiB/image %8.1f\n", kind_names[kind], kernels, bytes / 1024.0);
    t.calls[kind] += 1;
    t.kernels[kind] += kernels;
    t.bytes[kind] += bytes;
    t.us[kind] += mem_us(bytes);
    t.us_low[kind] += mem_us(bytes);
}

/* A convolution: the cuDNN kernel (flops, its own traffic conv_bytes), plus `extra_kernels`
 * memory-bound kernels around it moving extra_bytes (staging, bias). */
static void add_conv(double flops, double conv_bytes, double extra_kernels, double extra_bytes, int bf16) {
    const double peak = bf16 ? H100_BF16_PEAK : H100_TF32_PEAK;
    const double eff = bf16 ? EFF_BF16_NHWC : EFF_TF32_NCHW, eff_low = bf16 ? EFF_BF16_NHWC_LOW : EFF_TF32_NCHW;
    double c = flops / (peak * eff) * 1e6, c_low = flops / (peak * eff_low) * 1e6, m = mem_us(conv_bytes);
    if (verbose)
        printf("    %-24s kernels %.0f  KiB/image %8.1f  (compute %.2f us, own traffic %.2f us)\n",
               kind_names[K_CONV], 1 + extra_kernels, (conv_bytes + extra_bytes) / 1024.0, c, m);
    t.conv_flops += flops;
    t.calls[K_CONV] += 1;
    t.kernels[K_CONV] += 1 + extra_kernels;
    t.bytes[K_CONV] += conv_bytes + extra_bytes;
    t.us[K_CONV] += (c > m ? c : m) + mem_us(extra_bytes);
    t.us_low[K_CONV] += (c_low > m ? c_low : m) + mem_us(extra_bytes);
}

/* ---- counting ops: fp32 NCHW (designs tf32 and bf16 staged) ---- */

static void c_conv2d_forward(ncsn_backend *be, float *out, const float *in, const float *w, const float *b,
                             const ncsn_conv_desc *d) {
    const double x = (double)d->N * d->C * d->H * d->W, y = (double)d->N * d->K * d->H * d->W;
    const double wn = (double)d->K * d->C * d->ksize * d->ksize;
    const double flops = 2.0 * y * d->C * d->ksize * d->ksize;
    double extra_kernels = 0, conv_bytes, extra_bytes = 0;
    if (current == DESIGN_BF16_STAGED) {
        /* input -> bf16 NHWC (read 4, write 2), weights -> bf16 KRSC once per call (per batch),
         * cuDNN (read 2, write fp32 NHWC 4), transpose back (read 4, write 4). */
        extra_kernels = 3;
        conv_bytes = x * 2 + y * 4 + wn * 2 / batch_for_weights;
        extra_bytes = x * (4 + 2) + y * (4 + 4) + wn * (4 + 2) / batch_for_weights;
    } else {
        conv_bytes = x * 4 + y * 4 + wn * 4 / batch_for_weights;
    }
    if (b) {
        extra_kernels += 1;
        extra_bytes += y * 8; /* the broadcast bias add: read, write */
    }
    add_conv(flops, conv_bytes, extra_kernels, extra_bytes, current == DESIGN_BF16_STAGED);
}

static void c_in_plus(ncsn_backend *be, float *out, const float *x, const float *gamma, const float *alpha,
                      const float *beta, int stride, const int32_t *labels, float *stats, int N, int C, int H, int W,
                      int elu) {
    add(K_NORM, 3, (double)N * C * H * W * 4 * 4); /* stats: 2 reads; apply: read, write */
}
static void c_elu(ncsn_backend *be, float *out, const float *x, size_t n) { add(K_ELU, 1, (double)n * 8); }
static void c_add(ncsn_backend *be, float *out, const float *a, const float *b, size_t n) {
    add(K_ADD, 1, (double)n * 12);
}
static void c_accumulate(ncsn_backend *be, float *y, const float *x, size_t n) { add(K_ADD, 1, (double)n * 12); }
static void c_mean_pool2(ncsn_backend *be, float *out, const float *in, int N, int C, int H, int W) {
    add(K_POOL, 1, (double)N * C * H * W * (4 + 1));
}
static void c_pool5(ncsn_backend *be, float *out, const float *in, int N, int C, int H, int W) {
    add(K_POOL, 1, (double)N * C * H * W * 8);
}
static void c_resize(ncsn_backend *be, float *out, const float *in, int N, int C, int H, int W, int Ho, int Wo) {
    add(K_RESIZE, 1, (double)N * C * (H * W + Ho * Wo) * 4);
}
static void c_scale_shift(ncsn_backend *be, float *out, const float *x, float scale, float shift, size_t n) {
    add(K_BOUNDARY, 1, (double)n * 8);
}
static void c_divide_by_sigma(ncsn_backend *be, float *out, const float *x, const float *sigmas,
                              const int32_t *labels, int N, size_t per) {
    add(K_BOUNDARY, 1, (double)N * per * 8);
}

/* ---- counting ops: bf16 NHWC ---- */

static size_t c_packed_bytes(ncsn_backend *be, const ncsn_conv_desc *d) {
    size_t bytes = (size_t)d->K * d->C * d->ksize * d->ksize * 2;
    return (bytes + 255) / 256 * 256;
}
static void c_pack(ncsn_backend *be, void *packed, const float *w, const float *b, const ncsn_conv_desc *d) {}
/* The convolution with its epilogue: the residual is read once in the epilogue (2 bytes per
 * output element), bias and ELU cost nothing. Unfused: cuDNN writes fp32 into the workspace
 * and one kernel applies bias, residual and ELU and rounds (read 4, write 2). */
static void c_conv2d_forward_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, const void *packed,
                                  const ncsn_bf16 *residual, int elu, const ncsn_conv_desc *d) {
    const double x = (double)d->N * d->C * d->H * d->W, y = (double)d->N * d->K * d->H * d->W;
    const double wn = (double)d->K * d->C * d->ksize * d->ksize;
    const double flops = 2.0 * y * d->C * d->ksize * d->ksize;
    double extra_kernels = 0, conv_bytes = x * 2 + y * 2 + wn * 2 / batch_for_weights, extra_bytes = 0;
    if (residual) conv_bytes += y * 2;
    if ((d->has_bias || residual || elu) && current == DESIGN_BF16_NHWC_UNFUSED) {
        /* cuDNN writes fp32 (4 instead of 2); the epilogue kernel reads it, writes bf16 */
        conv_bytes += y * 2 - (residual ? y * 2 : 0);
        extra_kernels = 1;
        extra_bytes = y * (4 + 2) + (residual ? y * 2 : 0);
    }
    add_conv(flops, conv_bytes, extra_kernels, extra_bytes, 1);
}
static void c_in_plus_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *x, const float *gamma,
                           const float *alpha, const float *beta, int stride, const int32_t *labels, float *stats,
                           int N, int C, int H, int W, int elu) {
    /* kernels/norms.cu: the statistics kernel keeps its slice of the plane in shared memory
     * for the second pass when it fits (H W x 2 lanes x 16 bytes <= 40 KiB: planes up to
     * 35 x 35), so the input is read twice (statistics, apply) instead of three times. */
    const int staged = (double)H * W * 2 * 16 <= 40 * 1024;
    add(K_NORM, 3, (double)N * C * H * W * 2 * (staged ? 3 : 4));
}
static void c_elu_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *x, size_t n) {
    add(K_ELU, 1, (double)n * 4);
}
static void c_add_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *a, const ncsn_bf16 *b, size_t n) {
    add(K_ADD, 1, (double)n * 6);
}
static void c_accumulate_bf16(ncsn_backend *be, ncsn_bf16 *y, const ncsn_bf16 *x, size_t n) {
    add(K_ADD, 1, (double)n * 6);
}
static void c_mean_pool2_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C, int H, int W) {
    add(K_POOL, 1, (double)N * C * H * W * (2 + 0.5));
}
static void c_pool5_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C, int H, int W) {
    add(K_POOL, 1, (double)N * C * H * W * 4);
}
static void c_resize_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C, int H, int W, int Ho,
                          int Wo) {
    add(K_RESIZE, 1, (double)N * C * (H * W + Ho * Wo) * 2);
}
static void c_bf16_from_nchw(ncsn_backend *be, ncsn_bf16 *out, const float *x, float scale, float shift, int N, int C,
                             int H, int W) {
    add(K_BOUNDARY, 1, (double)N * C * H * W * 6);
}
static void c_nchw_from_bf16(ncsn_backend *be, float *out, const ncsn_bf16 *x, const float *sigmas,
                             const int32_t *labels, int N, int C, int H, int W) {
    add(K_BOUNDARY, 1, (double)N * C * H * W * 6);
}

static ncsn_backend_ops counting_ops(const ncsn_backend_ops *real) {
    ncsn_backend_ops o = *real; /* memory ops stay real (the arena, the label copy) */
    o.name = "counting";
    o.conv2d_forward = c_conv2d_forward;
    o.instance_norm_plus_forward = c_in_plus;
    o.elu_forward = c_elu;
    o.add = c_add;
    o.accumulate = c_accumulate;
    o.mean_pool2_forward = c_mean_pool2;
    o.avg_pool5_forward = c_pool5;
    o.max_pool5_forward = c_pool5;
    o.resize_bilinear_forward = c_resize;
    o.scale_shift = c_scale_shift;
    o.divide_by_sigma = c_divide_by_sigma;
    o.conv2d_packed_weights_bytes = c_packed_bytes;
    o.conv2d_pack_weights_bf16 = c_pack;
    o.conv2d_forward_bf16 = c_conv2d_forward_bf16;
    o.instance_norm_plus_forward_bf16 = c_in_plus_bf16;
    o.elu_forward_bf16 = c_elu_bf16;
    o.add_bf16 = c_add_bf16;
    o.accumulate_bf16 = c_accumulate_bf16;
    o.mean_pool2_forward_bf16 = c_mean_pool2_bf16;
    o.avg_pool5_forward_bf16 = c_pool5_bf16;
    o.max_pool5_forward_bf16 = c_pool5_bf16;
    o.resize_bilinear_forward_bf16 = c_resize_bf16;
    o.bf16_from_nchw = c_bf16_from_nchw;
    o.nchw_from_bf16 = c_nchw_from_bf16;
    return o;
}

int main(int argc, char **argv) {
    const char *config = argc > 1 ? argv[1] : "models/configs/cifar10.yml";
    batch_for_weights = argc > 2 ? atoi(argv[2]) : 1000;
    verbose = getenv("NCSN_ROOFLINE_VERBOSE") && !strcmp(getenv("NCSN_ROOFLINE_VERBOSE"), "1");
    if (batch_for_weights < 1) batch_for_weights = 1;
    ncsn_backend *be = bench_cpu_backend("bench_roofline");
    const ncsn_backend_ops *real = be->ops;
    const ncsn_backend_ops counting = counting_ops(real);
    be->ops = &counting;

    ncsn_config cfg;
    ncsn_config_load(&cfg, config);
    ncsn_model *m = ncsn_model_create(be, &cfg);
    ncsn_model_plan(m, 1);
    int C, H, W;
    ncsn_model_input_shape(m, &C, &H, &W);
    const size_t D = (size_t)C * H * W;
    float *x = ncsn_alloc(be, D * sizeof(float)), *score = ncsn_alloc(be, D * sizeof(float));
    int32_t *labels = ncsn_alloc(be, sizeof(int32_t));
    const double nfe = (double)cfg.model.num_classes * cfg.sampling.n_steps_each + (cfg.sampling.denoise ? 1 : 0);

    printf("bench_roofline: %s (%s, %dx%dx%d, ngf %d), one network evaluation per image; weights charged to "
           "batch %d\n",
           config, ncsn_arch_name(cfg.model.arch), C, H, W, cfg.model.ngf, batch_for_weights);
    printf("assumptions: bf16 %.0f TFLOP/s x %.2f (%.2f low), tf32 %.0f TFLOP/s x %.2f, HBM %.1f TB/s achieved\n\n",
           H100_BF16_PEAK / 1e12, EFF_BF16_NHWC, EFF_BF16_NHWC_LOW, H100_TF32_PEAK / 1e12, EFF_TF32_NCHW,
           H100_HBM_ACHIEVED / 1e12);
    double per_image_us[DESIGN_COUNT], per_image_us_low[DESIGN_COUNT];
    for (int dsg = 0; dsg < DESIGN_COUNT; dsg++) {
        current = (design)dsg;
        memset(&t, 0, sizeof t);
        const int bf16_nhwc = dsg == DESIGN_BF16_NHWC || dsg == DESIGN_BF16_NHWC_UNFUSED;
        ncsn_model_set_bf16_inference(m, bf16_nhwc);
        ncsn_model_forward(m, score, x, labels, 1);
        /* The replayed sampler step around the network: chain labels, the Langevin update
         * (read x and the score, write x: fp32) and the step counter. */
        const double step_bytes = (double)D * 12, step_kernels = 3;
        double bytes = step_bytes, kernels = step_kernels, us = mem_us(step_bytes), us_low = us;
        printf("%s\n  %-24s %8s %8s %12s %10s %10s\n", design_names[dsg], "op", "calls", "kernels", "MiB/image",
               "us/image", "(low eff)");
        for (int k = 0; k < K_COUNT; k++) {
            if (t.calls[k] == 0) continue;
            printf("  %-24s %8.0f %8.0f %12.2f %10.2f %10.2f\n", kind_names[k], t.calls[k], t.kernels[k],
                   t.bytes[k] / 1048576.0, t.us[k], t.us_low[k]);
            bytes += t.bytes[k];
            kernels += t.kernels[k];
            us += t.us[k];
            us_low += t.us_low[k];
        }
        printf("  %-24s %8s %8.0f %12.2f %10.2f %10.2f\n", "Langevin step around it", "", step_kernels,
               step_bytes / 1048576.0, mem_us(step_bytes), mem_us(step_bytes));
        per_image_us[dsg] = us;
        per_image_us_low[dsg] = us_low;
        printf("  total: %.0f kernels per step, %.1f MiB/image, %.2f conv GFLOP/image: %.1f us per image-evaluation "
               "(%.1f at low conv efficiency)\n\n",
               kernels, bytes / 1048576.0, t.conv_flops / 1e9, us, us_low);
    }
    ncsn_model_set_bf16_inference(m, 0);
    printf("50k FID batch: %.0f NFE per sample, %.4g image-evaluations; 1 hour allows %.1f us each\n", nfe,
           FID_SAMPLES * nfe, 3600.0 / (FID_SAMPLES * nfe) * 1e6);
    for (int dsg = 0; dsg < DESIGN_COUNT; dsg++) {
        const double h = FID_SAMPLES * nfe * per_image_us[dsg] * 1e-6 / 3600.0;
        const double h_low = FID_SAMPLES * nfe * per_image_us_low[dsg] * 1e-6 / 3600.0;
        printf("  %-26s %6.1f us/eval  %.2f h (%s 1 h)  at low conv efficiency %.2f h\n", design_names[dsg],
               per_image_us[dsg], h, h <= 1.0 ? "within" : "over", h_low);
    }
    ncsn_free(be, x);
    ncsn_free(be, score);
    ncsn_free(be, labels);
    ncsn_model_free(m);
    ncsn_config_free(&cfg);
    be->ops = real;
    ncsn_backend_destroy(be);
    return 0;
}
