/* backend.h: the op set, and the two backends (CPU, CUDA) behind it.
 *
 * What it is: every numerical operation the models, the trainer and the samplers use,
 * as one table of function pointers per backend. Model code calls ncsn_<op>(be, ...) and
 * never knows which device it runs on.
 * What it is not: a tensor library. Ops take raw float pointers that live in the
 * backend's memory (host memory for CPU, device memory for CUDA) plus explicit sizes.
 *
 * Conventions
 * - Layout is NCHW, float32, contiguous, exactly as PyTorch stores it. Weights are
 *   [K, C, kh, kw]. N batch, C channels in, K channels out, H x W spatial.
 * - Outputs first, then inputs, then weights, then saved statistics, then sizes.
 * - Overwrite vs accumulate: forward ops overwrite their output. Parameter gradients
 *   (dw, db, dgamma, dalpha, dbeta) always ACCUMULATE (+=), so a model zeroes its
 *   gradient buffer once per step. Activation gradients (din, dx) overwrite unless the
 *   op's `accumulate` argument is nonzero, in which case they are added (used at fan-in
 *   points: residual sums, RefineNet fusion, CRP sums).
 * - All ops are asynchronous on CUDA (one stream per backend); ncsn_synchronize() waits.
 *   Copies to the host are synchronous.
 * - Level labels are int32 indices 0..L-1 (0 = largest sigma), in backend memory.
 * - Every op checks its sizes; violating one is a fatal error naming the op.
 */
#ifndef NCSN_BACKEND_H
#define NCSN_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/element_math.h"
#include "ncsn/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { NCSN_DEVICE_CPU = 0, NCSN_DEVICE_CUDA = 1 } ncsn_device_kind;

/* Math precision of convolutions. FP32 is strict IEEE fp32 (tests, reproduction). TF32
 * changes only the CUDA backend. BF16 rounds convolution inputs and weights to bf16 with
 * fp32 accumulation and fp32 outputs, on CUDA (cuDNN) and on the CPU where oneDNN has bf16
 * kernels (elsewhere the CPU falls back to FP32 and says so). Norms, the loss, the
 * optimizer, master weights and the Langevin chain state are fp32 in every mode. */
typedef enum { NCSN_PRECISION_FP32 = 0, NCSN_PRECISION_TF32 = 1, NCSN_PRECISION_BF16 = 2 } ncsn_precision;

/* A stride-1 "same" 2-D convolution: padding = dilation * (ksize / 2), so the output is
 * N x K x H x W. Every convolution of NCSN v1/v2 is of this form (ConvMeanPool pools
 * after the convolution; adjust_padding is never active). */
typedef struct {
    int N, C, H, W; /* input */
    int K;          /* output channels */
    int ksize;      /* 1 or 3 */
    int dilation;   /* PyTorch convention: 1 = dense (oneDNN uses dilation - 1) */
    int has_bias;
} ncsn_conv_desc;

/* InstanceNorm++ statistics saved by the forward for the backward:
 * [mean (N*C) | rstd (N*C) | mhat (N*C) | rstd of channel means (N)]. */
#define NCSN_NORM_STATS_COUNT(N, C) ((size_t)3 * (size_t)(N) * (size_t)(C) + (size_t)(N))

typedef struct ncsn_backend ncsn_backend;
typedef struct ncsn_fence ncsn_fence; /* a point in a backend's op stream (fence_*) */
typedef struct ncsn_graph ncsn_graph; /* a captured, replayable op sequence (graph_*) */

/* A Langevin chain's per-step state in backend memory, uint32_t[NCSN_CHAIN_STATE_COUNT]:
 * the global step t (the Philox step of the noise; level = t / steps_per_level) and the
 * global index of the batch's first sample (the Philox example offset). Ops that read it
 * instead of taking by-value scalars can be captured once and replayed (graph_*). */
enum { NCSN_CHAIN_STEP = 0, NCSN_CHAIN_FIRST_INDEX = 1, NCSN_CHAIN_STATE_COUNT = 2 };

typedef struct ncsn_backend_ops {
    const char *name;

    /* ---- memory ---- */
    void *(*alloc)(ncsn_backend *be, size_t bytes); /* zero-filled, 256-byte aligned */
    void (*free)(ncsn_backend *be, void *p);
    void (*memset_zero)(ncsn_backend *be, void *p, size_t bytes);
    void (*copy_to_device)(ncsn_backend *be, void *dst, const void *src_host, size_t bytes);
    void (*copy_to_host)(ncsn_backend *be, void *dst_host, const void *src, size_t bytes);
    void (*copy)(ncsn_backend *be, void *dst, const void *src, size_t bytes);
    /* The first `cols` floats of each of `rows` rows of `width` floats: dst[r][j] = src[r][j]
     * for j < cols (a strided copy: cudaMemcpy2DAsync on CUDA). Inpainting's known half. */
    void (*copy_columns)(ncsn_backend *be, float *dst, const float *src, size_t rows, size_t width, size_t cols);
    void (*synchronize)(ncsn_backend *be);
    /* Host staging memory the backend copies from without an intermediate copy: page-
     * locked (cudaHostAlloc) on CUDA, plain aligned memory on the CPU. copy_to_device from
     * it is truly asynchronous on CUDA: the buffer must not be rewritten until a fence
     * recorded after the copy has been waited for. */
    void *(*host_alloc)(ncsn_backend *be, size_t bytes);
    void (*host_free)(ncsn_backend *be, void *p);
    /* fence_record marks everything enqueued so far; fence_wait blocks the host until that
     * work has finished (CUDA events; no-ops on the CPU, whose ops finish before returning). */
    ncsn_fence *(*fence_create)(ncsn_backend *be);
    void (*fence_record)(ncsn_backend *be, ncsn_fence *f);
    void (*fence_wait)(ncsn_backend *be, ncsn_fence *f);
    void (*fence_destroy)(ncsn_backend *be, ncsn_fence *f);

    /* ---- graphs: capture an op sequence once, replay it (CUDA graphs) ----
     * graph_begin returns 1 when the backend starts capturing (ops enqueued until graph_end
     * are recorded, not run) and 0 when it has no graphs (CPU): the caller then runs its ops
     * directly. A captured sequence must not allocate, synchronise or copy to the host, and
     * every pointer and by-value argument in it is frozen: what varies between replays must
     * be read from backend memory (the chain ops below). */
    int (*graph_begin)(ncsn_backend *be);
    ncsn_graph *(*graph_end)(ncsn_backend *be);
    void (*graph_launch)(ncsn_backend *be, ncsn_graph *g);
    void (*graph_destroy)(ncsn_backend *be, ncsn_graph *g);

    /* ---- convolution ---- */
    void (*conv2d_forward)(ncsn_backend *be, float *out, const float *in, const float *w, const float *b,
                           const ncsn_conv_desc *d);
    void (*conv2d_backward_data)(ncsn_backend *be, float *din, const float *dout, const float *w,
                                 const ncsn_conv_desc *d, int accumulate);
    /* dw += ..., db += ... (db ignored when !has_bias) */
    void (*conv2d_backward_weights_accumulate)(ncsn_backend *be, float *dw, float *db, const float *in,
                                               const float *dout, const ncsn_conv_desc *d);

    /* ---- InstanceNorm++ (unconditional and conditional) ----
     * Parameters of example n are gamma[row*stride + c], alpha[...], beta[...] with
     * row = labels ? labels[n] : 0. Unconditional IN++ passes stride 0 and labels NULL;
     * conditional IN++ passes pointers into the [L, 3C] embedding (gamma = embed,
     * alpha = embed + C, beta = embed + 2C) with stride 3C. Channel-mean variance is the
     * unbiased one (divide by C-1); for C == 1 the mhat term is defined as 0.
     * With `elu` nonzero the forward writes ELU(IN++(x)) (ncsn_in_plus_elu_element): the
     * norm -> ELU pair of residual blocks and heads in one pass. The ELU backward needs only
     * its output and the norm backward only x and the statistics, so nothing is lost. */
    void (*instance_norm_plus_forward)(ncsn_backend *be, float *out, const float *x, const float *gamma,
                                       const float *alpha, const float *beta, int param_stride,
                                       const int32_t *labels, float *stats, int N, int C, int H, int W, int elu);
    void (*instance_norm_plus_backward)(ncsn_backend *be, float *dx, float *dgamma, float *dalpha,
                                        float *dbeta, const float *dout, const float *x, const float *gamma,
                                        const float *alpha, int param_stride, const int32_t *labels,
                                        const float *stats, int N, int C, int H, int W, int accumulate);

    /* ---- activation ---- (in place allowed: out == x, dx == dout) */
    void (*elu_forward)(ncsn_backend *be, float *out, const float *x, size_t n);
    void (*elu_backward)(ncsn_backend *be, float *dx, const float *dout, const float *out, size_t n);

    /* ---- pooling and resampling ---- (sizes are of the INPUT) */
    /* 2x2 mean pool, stride 2 (ConvMeanPool); H and W even. */
    void (*mean_pool2_forward)(ncsn_backend *be, float *out, const float *in, int N, int C, int H, int W);
    void (*mean_pool2_backward)(ncsn_backend *be, float *din, const float *dout, int N, int C, int H, int W,
                                int accumulate);
    /* 5x5 average pool, stride 1, pad 2, count_include_pad (always / 25): v1 CRP. */
    void (*avg_pool5_forward)(ncsn_backend *be, float *out, const float *in, int N, int C, int H, int W);
    void (*avg_pool5_backward)(ncsn_backend *be, float *din, const float *dout, int N, int C, int H, int W,
                               int accumulate);
    /* 5x5 max pool, stride 1, pad 2 (padding = -inf): v2 CRP. The backward routes each
     * output gradient to the first maximum of its window in row-major order. */
    void (*max_pool5_forward)(ncsn_backend *be, float *out, const float *in, int N, int C, int H, int W);
    void (*max_pool5_backward)(ncsn_backend *be, float *din, const float *dout, const float *in, int N, int C,
                               int H, int W, int accumulate);
    /* Bilinear resize, align_corners=True: src = dst * (in - 1) / (out - 1). */
    void (*resize_bilinear_forward)(ncsn_backend *be, float *out, const float *in, int N, int C, int H, int W,
                                    int Ho, int Wo);
    void (*resize_bilinear_backward)(ncsn_backend *be, float *din, const float *dout, int N, int C, int H,
                                     int W, int Ho, int Wo, int accumulate);

    /* ---- elementwise ---- */
    void (*add)(ncsn_backend *be, float *out, const float *a, const float *b, size_t n); /* out = a + b */
    void (*accumulate)(ncsn_backend *be, float *y, const float *x, size_t n);          /* y += x */
    void (*scale_shift)(ncsn_backend *be, float *out, const float *x, float scale, float shift, size_t n);
    /* out[n, :] = x[n, :] / sigmas[labels[n]] (v2 output head; also its own backward). */
    void (*divide_by_sigma)(ncsn_backend *be, float *out, const float *x, const float *sigmas,
                            const int32_t *labels, int N, size_t per_example);
    void (*clamp01)(ncsn_backend *be, float *x, size_t n);
    /* data.logit_transform, in place: x <- logit(1e-6 + (1 - 2e-6) x) (ncsn_logit_element). */
    void (*logit)(ncsn_backend *be, float *x, size_t n);
    /* out[n, c, :] += table[labels[n] * C + c]: a per-level bias (toy conditional MLP), and
     * its backward dtable[labels[n] * C + c] += sum over the spatial dims of dout[n, c, :]. */
    void (*label_bias_forward)(ncsn_backend *be, float *out, const float *table, const int32_t *labels, int N,
                               int C, size_t spatial);
    void (*label_bias_backward_accumulate)(ncsn_backend *be, float *dtable, const float *dout,
                                           const int32_t *labels, int N, int C, size_t spatial);

    /* ---- randomness (kernels/rng_math.h): element i of example n is drawn from
     *      (seed, purpose, example_offset + n, step, i) ---- */
    void (*fill_normal)(ncsn_backend *be, float *out, int N, size_t per_example, uint64_t seed, uint32_t purpose,
                        uint32_t example_offset, uint32_t step);
    void (*fill_uniform)(ncsn_backend *be, float *out, int N, size_t per_example, uint64_t seed,
                         uint32_t purpose, uint32_t example_offset, uint32_t step);

    /* ---- custom kernels of the method ---- */
    /* x_noisy[n] = x[n] + sigmas[labels[n]] * z[n] */
    void (*noise_inject)(ncsn_backend *be, float *x_noisy, const float *x, const float *z, const float *sigmas,
                         const int32_t *labels, int N, size_t per_example);
    /* loss_per_example[n] = 0.5 * sum_d (sigma s + z)^2;  dscore = sigma (sigma s + z) / N
     * (gradient of the batch mean). dscore may be NULL (evaluation only). */
    void (*dsm_loss)(ncsn_backend *be, float *loss_per_example, float *dscore, const float *score,
                     const float *z, const float *sigmas, const int32_t *labels, int N, size_t per_example);
    /* One fused torch.optim.Adam update over the whole parameter buffer. vmax may be NULL
     * unless hp->amsgrad. */
    void (*adam_step)(ncsn_backend *be, float *params, const float *grads, float *m, float *v, float *vmax,
                      size_t n, const ncsn_adam_hparams *hp);
    /* shadow <- mu * shadow + (1 - mu) * params over the whole buffer. */
    void (*ema_update)(ncsn_backend *be, float *shadow, const float *params, size_t n, float mu);
    /* x <- x + a * score + sqrt(2a) * z with z = normal(seed, NCSN_RNG_LANGEVIN,
     * example_offset + n, step, i): noise is keyed by the sample's global index. */
    void (*langevin_step)(ncsn_backend *be, float *x, const float *score, int N, size_t per_example, float a,
                          uint64_t seed, uint32_t example_offset, uint32_t step);
    /* The same update with its scalars read from backend memory, for replayed graphs:
     * t = state[NCSN_CHAIN_STEP], level l = t / steps_per_level (< L, checked),
     * a = schedule[2l], sqrt(2a) = schedule[2l + 1] (both precomputed in float32 on the host
     * as langevin_step computes them), step t, example offset state[NCSN_CHAIN_FIRST_INDEX].
     * Bit-identical to langevin_step with those scalars. */
    void (*langevin_step_chain)(ncsn_backend *be, float *x, const float *score, int N, size_t per_example,
                                const float *schedule, int L, const uint32_t *state, uint32_t steps_per_level,
                                uint64_t seed);
    /* labels[n] = level_labels[state[NCSN_CHAIN_STEP] / steps_per_level] for n < N (the
     * network label of the chain's current level; level < L, checked). */
    void (*chain_labels)(ncsn_backend *be, int32_t *labels, int N, const int32_t *level_labels, int L,
                         const uint32_t *state, uint32_t steps_per_level);
    /* state[NCSN_CHAIN_STEP] += 1: the last op of a replayed step. */
    void (*chain_advance)(ncsn_backend *be, uint32_t *state);
    /* x <- x + sigma_last^2 * score */
    void (*denoise_step)(ncsn_backend *be, float *x, const float *score, size_t n, float sigma_last_sq);
    /* C[M, Nc] = A[M, K] * B[Nc, K]^T, row-major (oneDNN sgemm / cuBLAS): the blocked
     * pairwise-distance computation of `ncsn sigmas`. */
    void (*gemm_nt)(ncsn_backend *be, float *C, const float *A, const float *B, int M, int Nc, int K);
    /* out = sum of squares of x, written to one float in backend memory (grad-norm). */
    void (*sum_squares)(ncsn_backend *be, float *out, const float *x, size_t n);
    /* out[n] = sum of squares of x[n, :], n < N, one float each (the PC corrector's norms). */
    void (*row_sum_squares)(ncsn_backend *be, float *out, const float *x, int N, size_t per_example);
    /* The PC corrector's step as a one-level schedule for langevin_step_chain, from the
     * row_sum_squares of the score (norms2[0, N)) and of the noise (norms2[N, 2N)):
     * out[0] = a = ncsn_pc_corrector_step_size(norms2, N, snr), out[1] = sqrtf(2a). */
    void (*pc_step_size)(ncsn_backend *be, float *out, const float *norms2, int N, double snr);
    /* g <- g * ncsn_clip_coef(*norm2, max_norm) with norm2 in backend memory (the
     * sum_squares output): gradient-norm clipping without reading the norm back. */
    void (*clip_by_norm)(ncsn_backend *be, float *g, size_t n, const float *norm2, float max_norm);

    /* ---- inference in bf16 NHWC: the sampler's network evaluation ----
     * The network forward with every activation stored as bf16 (ncsn_bf16, round to nearest
     * even) in NHWC order [N, H, W, C]: half the bytes of fp32 and the layout tensor-core
     * convolutions read natively, so no op converts or transposes between two others. Every
     * op reads bf16, computes in fp32 exactly as its fp32 NCHW counterpart above does (same
     * element math, same reduction formulas, fp32 accumulation), and rounds its output to
     * bf16 once. Norm statistics (fp32, NCSN_NORM_STATS_COUNT, same layout), parameters,
     * labels and sigmas are fp32 as everywhere. Forward only: there is no bf16 backward.
     * Sizes are the same logical N, C, H, W as the fp32 ops; `n` counts elements.
     * The boundaries: bf16_from_nchw turns the fp32 NCHW network input into bf16 NHWC
     * (with the model's 2x - 1), nchw_from_bf16 turns the output back into fp32 NCHW (with
     * the v2 division by sigma). */

    /* Convolution weights (and bias) packed once from the fp32 parameters: the [K, C, kh, kw]
     * weights in the backend's bf16 layout (CUDA: KRSC; CPU: oneDNN's blocked bf16 format for
     * the shape), then, when d->has_bias, an fp32 copy of the bias at a 256-byte boundary
     * (cuDNN's fused epilogue wants it aligned). The packing is a snapshot: re-pack after the
     * parameters change. Its bytes depend on the descriptor but not on N (pack with the H, W
     * and dilation of the forward; any N), are a multiple of 256, and `packed` must be
     * 256-byte aligned. b may be NULL only when !d->has_bias. */
    size_t (*conv2d_packed_weights_bytes)(ncsn_backend *be, const ncsn_conv_desc *d);
    void (*conv2d_pack_weights_bf16)(ncsn_backend *be, void *packed, const float *w, const float *b,
                                     const ncsn_conv_desc *d);
    /* out = bf16(act(conv(in, w) + b + residual)), fp32 accumulation of the bf16 products and
     * fp32 epilogue before the one rounding: the memory-bound op that follows a convolution in
     * the networks runs in its epilogue (cuDNN: a fused conv -> add -> add -> ELU graph where an
     * engine takes it; the CPU: oneDNN post-ops). residual: NULL, or a bf16 NHWC tensor of out's
     * shape, out itself included (out += conv; the CUDA backend then uses its unfused path);
     * never overlapping in. act: the ELU when `elu`, else the identity. Not in place (out must
     * not overlap in). */
    void (*conv2d_forward_bf16)(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, const void *packed,
                                const ncsn_bf16 *residual, int elu, const ncsn_conv_desc *d);
    /* instance_norm_plus_forward on bf16 NHWC (elu: fused ELU). stats are written as there. */
    void (*instance_norm_plus_forward_bf16)(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *x,
                                            const float *gamma, const float *alpha, const float *beta,
                                            int param_stride, const int32_t *labels, float *stats, int N, int C,
                                            int H, int W, int elu);
    void (*elu_forward_bf16)(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *x, size_t n); /* in place ok */
    void (*add_bf16)(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *a, const ncsn_bf16 *b, size_t n);
    void (*accumulate_bf16)(ncsn_backend *be, ncsn_bf16 *y, const ncsn_bf16 *x, size_t n); /* y = bf16(y + x) */
    /* The pooling and resize forwards above, on bf16 NHWC (sizes of the INPUT; not in place). */
    void (*mean_pool2_forward_bf16)(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C, int H, int W);
    void (*avg_pool5_forward_bf16)(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C, int H, int W);
    void (*max_pool5_forward_bf16)(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C, int H, int W);
    void (*resize_bilinear_forward_bf16)(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C, int H,
                                         int W, int Ho, int Wo);
    /* out[n, h, w, c] = bf16(scale * x[n, c, h, w] + shift): fp32 NCHW in, bf16 NHWC out. */
    void (*bf16_from_nchw)(ncsn_backend *be, ncsn_bf16 *out, const float *x, float scale, float shift, int N, int C,
                           int H, int W);
    /* out[n, c, h, w] = x[n, h, w, c] / sigmas[labels[n]] (as divide_by_sigma), or x itself when
     * sigmas is NULL: bf16 NHWC in, fp32 NCHW out. */
    void (*nchw_from_bf16)(ncsn_backend *be, float *out, const ncsn_bf16 *x, const float *sigmas,
                           const int32_t *labels, int N, int C, int H, int W);
} ncsn_backend_ops;

struct ncsn_backend {
    const ncsn_backend_ops *ops;
    ncsn_device_kind kind;
    ncsn_precision precision;
    int deterministic; /* CUDA: deterministic algorithms only */
    void *impl;        /* backend-private state: conv plan cache, workspace, stream, handles */
};

/* Creates a backend. On failure returns NULL and writes a one-line reason into err, e.g.
 * "no CUDA device: cudaGetDeviceCount returned 0" or "no CUDA device: built without CUDA". */
ncsn_backend *ncsn_backend_create(ncsn_device_kind kind, char *err, size_t errlen);
/* "cpu", "cuda" or "auto" (CUDA when a device is present, else CPU; prints which). */
ncsn_backend *ncsn_backend_create_from_name(const char *name);
void ncsn_backend_destroy(ncsn_backend *be);
/* "fp32" | "tf32" | "bf16"; dies naming the flag on anything else. */
ncsn_precision ncsn_precision_parse(const char *name, const char *flag);
const char *ncsn_precision_name(ncsn_precision p);
/* Sets be->precision (before the first convolution) and prints one start-up line
 * "precision: ..." saying what runs in which format. */
void ncsn_backend_set_precision(ncsn_backend *be, ncsn_precision p);
/* Is this binary built with the CUDA backend? */
int ncsn_backend_cuda_compiled(void);

/* Backend constructors, one per backend file. */
ncsn_backend *ncsn_cpu_backend_create(char *err, size_t errlen);
ncsn_backend *ncsn_cuda_backend_create(char *err, size_t errlen);
void ncsn_cpu_backend_destroy(ncsn_backend *be);
void ncsn_cuda_backend_destroy(ncsn_backend *be);

/* ---- call wrappers: model code reads as ncsn_conv2d_forward(be, ...) ---- */
#define NCSN_OP(be, op) ((be)->ops->op)
#define ncsn_alloc(be, bytes) NCSN_OP(be, alloc)(be, bytes)
#define ncsn_free(be, p) NCSN_OP(be, free)(be, p)
#define ncsn_memset_zero(be, p, bytes) NCSN_OP(be, memset_zero)(be, p, bytes)
#define ncsn_copy_to_device(be, d, s, bytes) NCSN_OP(be, copy_to_device)(be, d, s, bytes)
#define ncsn_copy_to_host(be, d, s, bytes) NCSN_OP(be, copy_to_host)(be, d, s, bytes)
#define ncsn_copy(be, d, s, bytes) NCSN_OP(be, copy)(be, d, s, bytes)
#define ncsn_copy_columns(be, ...) NCSN_OP(be, copy_columns)(be, __VA_ARGS__)
#define ncsn_synchronize(be) NCSN_OP(be, synchronize)(be)
#define ncsn_host_alloc(be, bytes) NCSN_OP(be, host_alloc)(be, bytes)
#define ncsn_host_free(be, p) NCSN_OP(be, host_free)(be, p)
#define ncsn_fence_create(be) NCSN_OP(be, fence_create)(be)
#define ncsn_fence_record(be, f) NCSN_OP(be, fence_record)(be, f)
#define ncsn_fence_wait(be, f) NCSN_OP(be, fence_wait)(be, f)
#define ncsn_fence_destroy(be, f) NCSN_OP(be, fence_destroy)(be, f)
#define ncsn_graph_begin(be) NCSN_OP(be, graph_begin)(be)
#define ncsn_graph_end(be) NCSN_OP(be, graph_end)(be)
#define ncsn_graph_launch(be, g) NCSN_OP(be, graph_launch)(be, g)
#define ncsn_graph_destroy(be, g) NCSN_OP(be, graph_destroy)(be, g)
#define ncsn_conv2d_forward(be, ...) NCSN_OP(be, conv2d_forward)(be, __VA_ARGS__)
#define ncsn_conv2d_backward_data(be, ...) NCSN_OP(be, conv2d_backward_data)(be, __VA_ARGS__)
#define ncsn_conv2d_backward_weights_accumulate(be, ...) \
    NCSN_OP(be, conv2d_backward_weights_accumulate)(be, __VA_ARGS__)
#define ncsn_instance_norm_plus_forward(be, ...) NCSN_OP(be, instance_norm_plus_forward)(be, __VA_ARGS__)
#define ncsn_instance_norm_plus_backward(be, ...) NCSN_OP(be, instance_norm_plus_backward)(be, __VA_ARGS__)
#define ncsn_elu_forward(be, ...) NCSN_OP(be, elu_forward)(be, __VA_ARGS__)
#define ncsn_elu_backward(be, ...) NCSN_OP(be, elu_backward)(be, __VA_ARGS__)
#define ncsn_mean_pool2_forward(be, ...) NCSN_OP(be, mean_pool2_forward)(be, __VA_ARGS__)
#define ncsn_mean_pool2_backward(be, ...) NCSN_OP(be, mean_pool2_backward)(be, __VA_ARGS__)
#define ncsn_avg_pool5_forward(be, ...) NCSN_OP(be, avg_pool5_forward)(be, __VA_ARGS__)
#define ncsn_avg_pool5_backward(be, ...) NCSN_OP(be, avg_pool5_backward)(be, __VA_ARGS__)
#define ncsn_max_pool5_forward(be, ...) NCSN_OP(be, max_pool5_forward)(be, __VA_ARGS__)
#define ncsn_max_pool5_backward(be, ...) NCSN_OP(be, max_pool5_backward)(be, __VA_ARGS__)
#define ncsn_resize_bilinear_forward(be, ...) NCSN_OP(be, resize_bilinear_forward)(be, __VA_ARGS__)
#define ncsn_resize_bilinear_backward(be, ...) NCSN_OP(be, resize_bilinear_backward)(be, __VA_ARGS__)
#define ncsn_add(be, ...) NCSN_OP(be, add)(be, __VA_ARGS__)
#define ncsn_accumulate(be, ...) NCSN_OP(be, accumulate)(be, __VA_ARGS__)
#define ncsn_scale_shift(be, ...) NCSN_OP(be, scale_shift)(be, __VA_ARGS__)
#define ncsn_divide_by_sigma(be, ...) NCSN_OP(be, divide_by_sigma)(be, __VA_ARGS__)
#define ncsn_clamp01(be, ...) NCSN_OP(be, clamp01)(be, __VA_ARGS__)
#define ncsn_logit(be, ...) NCSN_OP(be, logit)(be, __VA_ARGS__)
#define ncsn_label_bias_forward(be, ...) NCSN_OP(be, label_bias_forward)(be, __VA_ARGS__)
#define ncsn_label_bias_backward_accumulate(be, ...) NCSN_OP(be, label_bias_backward_accumulate)(be, __VA_ARGS__)
#define ncsn_fill_normal(be, ...) NCSN_OP(be, fill_normal)(be, __VA_ARGS__)
#define ncsn_fill_uniform(be, ...) NCSN_OP(be, fill_uniform)(be, __VA_ARGS__)
#define ncsn_noise_inject(be, ...) NCSN_OP(be, noise_inject)(be, __VA_ARGS__)
#define ncsn_dsm_loss(be, ...) NCSN_OP(be, dsm_loss)(be, __VA_ARGS__)
#define ncsn_adam_step(be, ...) NCSN_OP(be, adam_step)(be, __VA_ARGS__)
#define ncsn_ema_update(be, ...) NCSN_OP(be, ema_update)(be, __VA_ARGS__)
#define ncsn_langevin_step(be, ...) NCSN_OP(be, langevin_step)(be, __VA_ARGS__)
#define ncsn_langevin_step_chain(be, ...) NCSN_OP(be, langevin_step_chain)(be, __VA_ARGS__)
#define ncsn_chain_labels(be, ...) NCSN_OP(be, chain_labels)(be, __VA_ARGS__)
#define ncsn_chain_advance(be, state) NCSN_OP(be, chain_advance)(be, state)
#define ncsn_denoise_step(be, ...) NCSN_OP(be, denoise_step)(be, __VA_ARGS__)
#define ncsn_gemm_nt(be, ...) NCSN_OP(be, gemm_nt)(be, __VA_ARGS__)
#define ncsn_sum_squares(be, ...) NCSN_OP(be, sum_squares)(be, __VA_ARGS__)
#define ncsn_clip_by_norm(be, ...) NCSN_OP(be, clip_by_norm)(be, __VA_ARGS__)
#define ncsn_row_sum_squares(be, ...) NCSN_OP(be, row_sum_squares)(be, __VA_ARGS__)
#define ncsn_pc_step_size(be, ...) NCSN_OP(be, pc_step_size)(be, __VA_ARGS__)
#define ncsn_conv2d_packed_weights_bytes(be, d) NCSN_OP(be, conv2d_packed_weights_bytes)(be, d)
#define ncsn_conv2d_pack_weights_bf16(be, ...) NCSN_OP(be, conv2d_pack_weights_bf16)(be, __VA_ARGS__)
#define ncsn_conv2d_forward_bf16(be, ...) NCSN_OP(be, conv2d_forward_bf16)(be, __VA_ARGS__)
#define ncsn_instance_norm_plus_forward_bf16(be, ...) NCSN_OP(be, instance_norm_plus_forward_bf16)(be, __VA_ARGS__)
#define ncsn_elu_forward_bf16(be, ...) NCSN_OP(be, elu_forward_bf16)(be, __VA_ARGS__)
#define ncsn_add_bf16(be, ...) NCSN_OP(be, add_bf16)(be, __VA_ARGS__)
#define ncsn_accumulate_bf16(be, ...) NCSN_OP(be, accumulate_bf16)(be, __VA_ARGS__)
#define ncsn_mean_pool2_forward_bf16(be, ...) NCSN_OP(be, mean_pool2_forward_bf16)(be, __VA_ARGS__)
#define ncsn_avg_pool5_forward_bf16(be, ...) NCSN_OP(be, avg_pool5_forward_bf16)(be, __VA_ARGS__)
#define ncsn_max_pool5_forward_bf16(be, ...) NCSN_OP(be, max_pool5_forward_bf16)(be, __VA_ARGS__)
#define ncsn_resize_bilinear_forward_bf16(be, ...) NCSN_OP(be, resize_bilinear_forward_bf16)(be, __VA_ARGS__)
#define ncsn_bf16_from_nchw(be, ...) NCSN_OP(be, bf16_from_nchw)(be, __VA_ARGS__)
#define ncsn_nchw_from_bf16(be, ...) NCSN_OP(be, nchw_from_bf16)(be, __VA_ARGS__)

#ifdef __cplusplus
}
#endif

#endif /* NCSN_BACKEND_H */
