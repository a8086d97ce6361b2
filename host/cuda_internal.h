/* cuda_internal.h: private state of the CUDA backend, shared by cuda_backend.c (memory,
 * the op table, cuBLAS), cuda_conv.c (cuDNN graph-API convolutions) and the kernel files
 * under kernels/ (the status-check macros only).
 *
 * What it is: the backend's `impl` struct, the status-check macros and the few functions
 * the backend files call in each other. What it is not: a public interface; nothing
 * outside the CUDA backend files (host/cuda_ prefix, kernels/ .cu files) includes it.
 *
 * Every CUDA runtime, cuDNN and cuBLAS call goes through CUDA_CHECK / CUDNN_CHECK /
 * CUBLAS_CHECK: on failure they print the library's own message, the call and file:line,
 * then exit(1). The engine never continues after a failed library call.
 *
 * Streams and the shared workspace: every op is enqueued on impl->stream, so the one
 * workspace can be reused by consecutive ops without further synchronisation. The
 * workspace only grows (synchronously) when a new convolution plan or a larger scratch
 * request appears; a model's first step (or a warm-up pass) therefore reaches its final
 * size, after which pointers are stable (a requirement for CUDA graph capture).
 */
#ifndef NCSN_CUDA_INTERNAL_H
#define NCSN_CUDA_INTERNAL_H

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime.h>

#include "ncsn/backend.h"

#ifndef __CUDACC__
/* With CUDNN_WARN_DEPRECATED, any use of a deprecated cuDNN function or enumerator in our
 * code warns and so fails the -Werror build: nothing deprecated can creep in unnoticed.
 * The header's own declarations of deprecated items are exempt (they would warn merely
 * by being declared). */
#define CUDNN_WARN_DEPRECATED
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <cudnn_graph.h>
#pragma GCC diagnostic pop
#include <cublas_v2.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Nonzero while the backend's stream is being captured into a CUDA graph (cuda_backend.c):
 * a library call that fails then most likely does not support capture, and the error says
 * how to run without graphs. */
extern int ncsn_cuda_capturing;
#define NCSN_CUDA_CAPTURE_HINT()                                                                                       \
    do {                                                                                                               \
        if (ncsn_cuda_capturing)                                                                                       \
            fprintf(stderr, "ncsn: (this failed while capturing a CUDA graph; NCSN_CUDA_GRAPHS=0 runs without "       \
                            "graphs)\n");                                                                               \
    } while (0)

#define CUDA_CHECK(call)                                                                                               \
    do {                                                                                                               \
        cudaError_t cuda_check_status_ = (call);                                                                       \
        if (cuda_check_status_ != cudaSuccess) {                                                                       \
            fprintf(stderr, "ncsn: %s:%d: %s failed: %s (%s)\n", __FILE__, __LINE__, #call,                            \
                    cudaGetErrorString(cuda_check_status_), cudaGetErrorName(cuda_check_status_));                     \
            NCSN_CUDA_CAPTURE_HINT();                                                                                  \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

/* After every kernel launch: catches invalid launch configurations and images missing for
 * this GPU. Faults inside a kernel surface at the next synchronising call; build with
 * -DNCSN_CUDA_SYNC_EVERY_LAUNCH to pin them to the launch that caused them. */
#ifdef NCSN_CUDA_SYNC_EVERY_LAUNCH
#define CUDA_CHECK_LAUNCH(stream)                                                                                      \
    do {                                                                                                               \
        CUDA_CHECK(cudaGetLastError());                                                                                \
        CUDA_CHECK(cudaStreamSynchronize(stream));                                                                     \
    } while (0)
#else
#define CUDA_CHECK_LAUNCH(stream) CUDA_CHECK(cudaGetLastError())
#endif

#ifndef __CUDACC__
/* cudnnGetLastErrorString carries the detail (which attribute, which engine) that the bare
 * status name lacks. */
#define CUDNN_CHECK(call)                                                                                              \
    do {                                                                                                               \
        cudnnStatus_t cudnn_check_status_ = (call);                                                                    \
        if (cudnn_check_status_ != CUDNN_STATUS_SUCCESS) {                                                             \
            char cudnn_check_detail_[512];                                                                             \
            cudnnGetLastErrorString(cudnn_check_detail_, sizeof cudnn_check_detail_);                                  \
            fprintf(stderr, "ncsn: %s:%d: %s failed: %s (%d)%s%s\n", __FILE__, __LINE__, #call,                        \
                    cudnnGetErrorString(cudnn_check_status_), (int)cudnn_check_status_,                                \
                    cudnn_check_detail_[0] ? ": " : "", cudnn_check_detail_);                                          \
            NCSN_CUDA_CAPTURE_HINT();                                                                                  \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

#define CUBLAS_CHECK(call)                                                                                             \
    do {                                                                                                               \
        cublasStatus_t cublas_check_status_ = (call);                                                                  \
        if (cublas_check_status_ != CUBLAS_STATUS_SUCCESS) {                                                           \
            fprintf(stderr, "ncsn: %s:%d: %s failed: %s (%s)\n", __FILE__, __LINE__, #call,                            \
                    cublasGetStatusString(cublas_check_status_), cublasGetStatusName(cublas_check_status_));           \
            NCSN_CUDA_CAPTURE_HINT();                                                                                  \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

typedef struct cuda_conv_plan cuda_conv_plan; /* one cached cuDNN execution plan (cuda_conv.c) */

typedef struct {
    int device;
    cudaStream_t stream;
    cudnnHandle_t cudnn;
    cublasHandle_t cublas;
    /* Device properties for cuDNN heuristics and plans (the graph API's replacement for
     * the deprecated per-graph / per-plan handle attributes, cuDNN >= 9.8). */
    cudnnBackendDescriptor_t cudnn_device_properties;
    /* The one workspace: cuDNN plan workspaces, the scratch output of a convolution that
     * must be added afterwards, and the small temporaries of reductions. */
    void *workspace;
    size_t workspace_bytes;
    /* Convolution plans, one per (shape, direction, precision, accumulate, alignment,
     * determinism); a model has at most a few hundred, so a linear scan is cheap next to
     * a convolution. */
    cuda_conv_plan *plans;
    int plan_count, plan_capacity;
    /* BF16: set once a shape had no cuDNN bf16 engine and fell back to TF32, so that the
     * one-line note is printed once (NCSN_CUDA_VERBOSE lists every shape). */
    int bf16_fallback_reported;
    /* bf16 NHWC inference convolutions (conv2d_forward_bf16): set once a shape ran through
     * the fp32 path (no bf16 engine at all), resp. once an epilogue (bias, residual, ELU) ran
     * on a bf16 output (a second rounding), so each one-line note is printed once. */
    int bf16_nhwc_fallback_reported;
} cuda_backend_impl;

static inline cuda_backend_impl *cuda_impl(ncsn_backend *be) { return (cuda_backend_impl *)be->impl; }

/* cuda_backend.c: returns a workspace of at least `bytes`, growing it (after waiting for
 * the stream, since queued work may still use the old one) when needed. */
void *cuda_workspace_reserve(ncsn_backend *be, size_t bytes);

/* cuda_conv.c */
void cuda_conv_destroy(cuda_backend_impl *impl);
void cuda_conv2d_forward(ncsn_backend *be, float *out, const float *in, const float *w, const float *b,
                         const ncsn_conv_desc *d);
void cuda_conv2d_backward_data(ncsn_backend *be, float *din, const float *dout, const float *w, const ncsn_conv_desc *d,
                               int accumulate);
void cuda_conv2d_backward_weights_accumulate(ncsn_backend *be, float *dw, float *db, const float *in, const float *dout,
                                             const ncsn_conv_desc *d);
/* The precision direction `direction` (0 forward, 1 backward-data, 2 backward-filter) of
 * `d` actually runs in at be->precision, building its plan if needed: BF16 shapes without
 * a cuDNN bf16 engine run in TF32. For BF16, *bf16_output (if not NULL) says whether cuDNN
 * writes the output in bf16 (1) or fp32 (0). For tests (tests/test_precision.c). */
ncsn_precision cuda_conv_effective_precision(ncsn_backend *be, const ncsn_conv_desc *d, int direction,
                                             int *bf16_output);
/* The bf16 NHWC inference convolution (backend.h "inference in bf16 NHWC"). */
size_t cuda_conv2d_packed_weights_bytes(ncsn_backend *be, const ncsn_conv_desc *d);
void cuda_conv2d_pack_weights_bf16(ncsn_backend *be, void *packed, const float *w, const float *b,
                                   const ncsn_conv_desc *d);
void cuda_conv2d_forward_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, const void *packed_w,
                              const ncsn_bf16 *residual, int elu, const ncsn_conv_desc *d);
/* How the bf16 NHWC forward runs a shape (cuda_conv.c's header comment has the details). The
 * epilogue is what follows the convolution: the bias, the residual, the ELU, as present. */
typedef enum {
    CUDA_CONV_BF16_FUSED = 0,   /* one cuDNN graph: conv -> fp32 -> epilogue -> bf16 */
    CUDA_CONV_BF16_FP32_OUTPUT, /* cuDNN writes fp32 NHWC; a kernel runs the epilogue, rounds */
    CUDA_CONV_BF16_BF16_OUTPUT, /* cuDNN writes bf16 NHWC (only without an epilogue) */
    CUDA_CONV_BF16_VIA_FP32,    /* no bf16 engine: fp32 NCHW staging, the TF32 / FP32 plan */
    CUDA_CONV_BF16_VARIANT_COUNT
} cuda_conv_bf16_variant;
/* The variant the bf16 NHWC forward uses for `d` (building its plan if needed) with a
 * residual (0 none, 1 a separate tensor, 2 out itself), the ELU (0 / 1), in / out / residual
 * pointers `io_alignment`-byte aligned and the bias `bias_alignment`-byte aligned (2, 4, 8
 * or 16; arena tensors with C, K multiples of 8 are 16), and its name ("fused",
 * "fp32-output", "bf16-output", "via-fp32"). For tests and benchmarks that report what each
 * shape got. */
cuda_conv_bf16_variant cuda_conv_bf16_inference_variant(ncsn_backend *be, const ncsn_conv_desc *d, int residual,
                                                        int elu, int io_alignment, int bias_alignment);
const char *cuda_conv_bf16_variant_name(cuda_conv_bf16_variant v);
#endif /* !__CUDACC__ */

/* ---- kernels/convert.cu launchers for the bf16 NHWC inference convolution (cuda_conv.c);
 *      the staging launchers it shares with the BF16 training path are in
 *      kernels/cuda_launch.h ---- */
/* The epilogue of an unfused bf16 NHWC convolution, for r < rows (= N*H*W), k < K:
 *   dst[r][k] = bf16(act(src[r][k] + bias[k] + residual[r][k])), act = ELU if elu,
 * summed in fp32 in that order and rounded once (ncsn_bf16_from_float). bias and residual may
 * be NULL (no add). src is the fp32 staging of the convolution's output. Each element is read
 * before it is written by the same thread, so dst may equal residual. */
void ncsn_cuda_nhwc_epilogue_bf16(cudaStream_t stream, ncsn_bf16 *dst, const float *src, const float *bias,
                                  const ncsn_bf16 *residual, int elu, size_t rows, int K);
/* dst[b][s][c] = src[b][c][s], fp32 both (the fp32 twin of ncsn_cuda_channels_first_to_last_bf16
 * in kernels/cuda_launch.h: the fallback's fp32 NCHW output into NHWC for the epilogue). */
void ncsn_cuda_channels_first_to_last_f32(cudaStream_t stream, float *dst, const float *src, int B, int C, size_t S);

#ifdef __cplusplus
}
#endif

#endif /* NCSN_CUDA_INTERNAL_H */
