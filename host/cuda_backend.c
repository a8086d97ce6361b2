/* cuda_backend.c: the CUDA backend (backend.h): device selection, one stream with the
 * cuDNN and cuBLAS handles bound to it, memory, the shared workspace, and the op table.
 *
 * Every op is enqueued on the one stream and returns immediately; ncsn_synchronize()
 * and copies to the host wait. Shapes are asserted here, once per op, naming the op;
 * the launchers in kernels/ trust them. Convolutions live in cuda_conv.c, kernels in
 * kernels/ (one .cu per family); this file is glue.
 *
 * Which outputs accumulate is backend.h's rule: forward outputs overwrite, parameter
 * gradients (dw, db, dgamma, dalpha, dbeta, dtable) always +=, activation gradients
 * overwrite unless the op's `accumulate` flag is set.
 *
 * Defaults: strict FP32 convolutions and GEMMs (be->precision = NCSN_PRECISION_FP32) and
 * deterministic algorithms off; callers flip both fields before the first op (they are
 * part of every cached plan's key, so a later change also takes effect).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/cuda_internal.h"
#include "kernels/cuda_launch.h"

/* ---- the shared workspace ---- */

void *cuda_workspace_reserve(ncsn_backend *be, size_t bytes) {
    cuda_backend_impl *impl = cuda_impl(be);
    if (bytes <= impl->workspace_bytes) return impl->workspace;
    /* Work already queued may still read the old buffer: wait before freeing it. (Inside a
     * CUDA graph capture this synchronize fails loudly, which is the right outcome: the
     * capture would bake in a pointer that is about to change. Warm up before capturing.) */
    CUDA_CHECK(cudaStreamSynchronize(impl->stream));
    if (impl->workspace) CUDA_CHECK(cudaFree(impl->workspace));
    impl->workspace = NULL;
    /* Round up to 1 MiB so a run of slightly growing requests reallocates once. */
    size_t rounded = (bytes + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1);
    CUDA_CHECK(cudaMalloc(&impl->workspace, rounded));
    impl->workspace_bytes = rounded;
    return impl->workspace;
}

/* ---- memory ---- */

static void *cuda_alloc(ncsn_backend *be, size_t bytes) {
    if (bytes == 0) bytes = 256; /* a valid, distinct pointer even for nothing, as the CPU backend */
    void *p = NULL;
    CUDA_CHECK(cudaMalloc(&p, bytes)); /* cudaMalloc aligns to at least 256 bytes */
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, cuda_impl(be)->stream));
    return p;
}

static void cuda_free(ncsn_backend *be, void *p) {
    if (!p) return;
    /* Queued kernels may still use p. */
    CUDA_CHECK(cudaStreamSynchronize(cuda_impl(be)->stream));
    CUDA_CHECK(cudaFree(p));
}

static void cuda_memset_zero(ncsn_backend *be, void *p, size_t bytes) {
    if (bytes == 0) return;
    NCSN_CHECKF(p != NULL, "memset_zero: NULL pointer for %zu bytes", bytes);
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, cuda_impl(be)->stream));
}

/* Host buffers reaching the backend are pageable (malloc); for those CUDA copies the
 * source into a staging buffer before cudaMemcpyAsync returns, so the caller may reuse it
 * at once, and the copy stays ordered with the ops on the stream. */
static void cuda_copy_to_device(ncsn_backend *be, void *dst, const void *src_host, size_t bytes) {
    if (bytes == 0) return;
    NCSN_CHECKF(dst && src_host, "copy_to_device: NULL pointer (dst %p, src %p)", dst, src_host);
    CUDA_CHECK(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, cuda_impl(be)->stream));
}

static void cuda_copy_to_host(ncsn_backend *be, void *dst_host, const void *src, size_t bytes) {
    if (bytes == 0) return;
    NCSN_CHECKF(dst_host && src, "copy_to_host: NULL pointer (dst %p, src %p)", dst_host, src);
    cudaStream_t stream = cuda_impl(be)->stream;
    CUDA_CHECK(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream)); /* copies to the host are synchronous */
}

static void cuda_copy(ncsn_backend *be, void *dst, const void *src, size_t bytes) {
    if (bytes == 0) return;
    NCSN_CHECKF(dst && src, "copy: NULL pointer (dst %p, src %p)", dst, src);
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cuda_impl(be)->stream));
}

static void cuda_copy_columns(ncsn_backend *be, float *dst, const float *src, size_t rows, size_t width,
                              size_t cols) {
    NCSN_CHECKF(cols <= width && (rows == 0 || cols == 0 || (dst && src)),
                "copy_columns: %zu columns of rows of %zu (dst %p, src %p)", cols, width, (void *)dst,
                (const void *)src);
    if (rows == 0 || cols == 0) return;
    const size_t pitch = width * sizeof(float);
    CUDA_CHECK(cudaMemcpy2DAsync(dst, pitch, src, pitch, cols * sizeof(float), rows, cudaMemcpyDeviceToDevice,
                                 cuda_impl(be)->stream));
}

static void cuda_synchronize(ncsn_backend *be) { CUDA_CHECK(cudaStreamSynchronize(cuda_impl(be)->stream)); }

/* Page-locked: the DMA engine reads it directly, so cudaMemcpyAsync from it returns at
 * once and overlaps with the host (the caller then owns the ordering: fence_*). */
static void *cuda_host_alloc(ncsn_backend *be, size_t bytes) {
    void *p = NULL;
    CUDA_CHECK(cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocDefault));
    memset(p, 0, bytes);
    return p;
}

static void cuda_host_free(ncsn_backend *be, void *p) {
    if (!p) return;
    /* A copy from p may still be queued. */
    CUDA_CHECK(cudaStreamSynchronize(cuda_impl(be)->stream));
    CUDA_CHECK(cudaFreeHost(p));
}

/* ---- fences: CUDA events without timing (the cheapest kind) ---- */

struct ncsn_fence {
    cudaEvent_t event;
};

static ncsn_fence *cuda_fence_create(ncsn_backend *be) {
    ncsn_fence *f = ncsn_xcalloc(1, sizeof *f);
    /* Blocking sync: the host thread sleeps in fence_wait instead of spinning a core that
     * the data loader's thread wants. */
    CUDA_CHECK(cudaEventCreateWithFlags(&f->event, cudaEventDisableTiming | cudaEventBlockingSync));
    return f;
}

static void cuda_fence_record(ncsn_backend *be, ncsn_fence *f) {
    NCSN_CHECKF(f, "fence_record: NULL fence");
    CUDA_CHECK(cudaEventRecord(f->event, cuda_impl(be)->stream));
}

static void cuda_fence_wait(ncsn_backend *be, ncsn_fence *f) {
    NCSN_CHECKF(f, "fence_wait: NULL fence");
    CUDA_CHECK(cudaEventSynchronize(f->event));
}

static void cuda_fence_destroy(ncsn_backend *be, ncsn_fence *f) {
    if (!f) return;
    CUDA_CHECK(cudaEventDestroy(f->event));
    free(f);
}

/* ---- graphs: stream capture of the backend's one stream ----
 * Thread-local capture mode: this thread may not call unsafe APIs (cudaMalloc, a
 * synchronisation) while capturing, which is exactly the graph_begin contract, and the
 * data loader's thread stays free to do what it likes. cuDNN executions and our kernels
 * are captured like any stream work; plans and the workspace must already exist (one
 * eager warm-up step before capture; cuda_workspace_reserve fails loudly otherwise). */
struct ncsn_graph {
    cudaGraphExec_t exec;
    /* The shared workspace the capture baked into the graph's cuDNN and scratch nodes. */
    const void *workspace;
};

int ncsn_cuda_capturing = 0;

static int cuda_graph_begin(ncsn_backend *be) {
#ifdef NCSN_CUDA_SYNC_EVERY_LAUNCH
    /* The debug build synchronises after every launch, which capture forbids: no graphs. */
    return 0;
#else
    CUDA_CHECK(cudaStreamBeginCapture(cuda_impl(be)->stream, cudaStreamCaptureModeThreadLocal));
    ncsn_cuda_capturing = 1;
    return 1;
#endif
}

static ncsn_graph *cuda_graph_end(ncsn_backend *be) {
    cudaGraph_t graph = NULL;
    CUDA_CHECK(cudaStreamEndCapture(cuda_impl(be)->stream, &graph));
    NCSN_CHECKF(graph != NULL, "graph_end: the capture produced no graph (NCSN_CUDA_GRAPHS=0 runs without graphs)");
    ncsn_graph *g = ncsn_xcalloc(1, sizeof *g);
    CUDA_CHECK(cudaGraphInstantiate(&g->exec, graph, 0));
    ncsn_cuda_capturing = 0; /* instantiated: later failures are not the capture's */
    g->workspace = cuda_impl(be)->workspace;
    CUDA_CHECK(cudaGraphDestroy(graph)); /* the executable graph is independent of it */
    /* Upload now, so the first replay does not pay for it inside a timed loop. */
    CUDA_CHECK(cudaGraphUpload(g->exec, cuda_impl(be)->stream));
    return g;
}

static void cuda_graph_launch(ncsn_backend *be, ncsn_graph *g) {
    NCSN_CHECKF(g, "graph_launch: NULL graph");
    /* An op run eagerly after the capture may have grown (freed and reallocated) the
     * workspace; a replay would then read and write freed memory. */
    NCSN_CHECKF(g->workspace == cuda_impl(be)->workspace,
                "graph_launch: the shared workspace was reallocated after this graph was captured "
                "(an op outside the graph needed more); destroy the graph and capture it again");
    CUDA_CHECK(cudaGraphLaunch(g->exec, cuda_impl(be)->stream));
}

static void cuda_graph_destroy(ncsn_backend *be, ncsn_graph *g) {
    if (!g) return;
    CUDA_CHECK(cudaStreamSynchronize(cuda_impl(be)->stream)); /* a replay may be in flight */
    CUDA_CHECK(cudaGraphExecDestroy(g->exec));
    free(g);
}

/* ---- shape checks shared by the ops ---- */

static void check_nchw(const char *op, int N, int C, int H, int W) {
    NCSN_CHECKF(N > 0 && C > 0 && H > 0 && W > 0, "%s: sizes must be positive (N=%d C=%d H=%d W=%d)", op, N, C, H, W);
}

static void check_pointers2(const char *op, const void *a, const void *b) {
    NCSN_CHECKF(a && b, "%s: NULL tensor pointer", op);
}

static void check_pointers3(const char *op, const void *a, const void *b, const void *c) {
    NCSN_CHECKF(a && b && c, "%s: NULL tensor pointer", op);
}

static cudaStream_t stream_of(ncsn_backend *be) { return cuda_impl(be)->stream; }

/* ---- InstanceNorm++ ---- */

static void check_in_plus(const char *op, int param_stride, const int32_t *labels, int N, int C, int H, int W) {
    check_nchw(op, N, C, H, W);
    NCSN_CHECKF(labels || param_stride == 0, "%s: parameter stride %d without labels", op, param_stride);
    NCSN_CHECKF(param_stride == 0 || param_stride >= C, "%s: parameter stride %d < C=%d (rows would overlap)", op,
                param_stride, C);
}

static void cuda_instance_norm_plus_forward(ncsn_backend *be, float *out, const float *x, const float *gamma,
                                            const float *alpha, const float *beta, int param_stride,
                                            const int32_t *labels, float *stats, int N, int C, int H, int W,
                                            int elu) {
    check_in_plus("instance_norm_plus_forward", param_stride, labels, N, C, H, W);
    check_pointers3("instance_norm_plus_forward", out, x, stats);
    check_pointers3("instance_norm_plus_forward", gamma, alpha, beta);
    ncsn_cuda_instance_norm_plus_forward(stream_of(be), out, x, gamma, alpha, beta, param_stride, labels, stats, N, C,
                                         H, W, elu);
}

static void cuda_instance_norm_plus_backward(ncsn_backend *be, float *dx, float *dgamma, float *dalpha, float *dbeta,
                                             const float *dout, const float *x, const float *gamma, const float *alpha,
                                             int param_stride, const int32_t *labels, const float *stats, int N, int C,
                                             int H, int W, int accumulate) {
    check_in_plus("instance_norm_plus_backward", param_stride, labels, N, C, H, W);
    check_pointers3("instance_norm_plus_backward", dx, dout, x);
    check_pointers3("instance_norm_plus_backward", dgamma, dalpha, dbeta);
    check_pointers3("instance_norm_plus_backward", gamma, alpha, stats);
    void *scratch = cuda_workspace_reserve(be, ncsn_cuda_instance_norm_plus_backward_scratch_bytes(N, C));
    ncsn_cuda_instance_norm_plus_backward(stream_of(be), dx, dgamma, dalpha, dbeta, dout, x, gamma, alpha, param_stride,
                                          labels, stats, N, C, H, W, accumulate, scratch);
}

/* ---- activation ---- */

static void cuda_elu_forward(ncsn_backend *be, float *out, const float *x, size_t n) {
    if (n) check_pointers2("elu_forward", out, x);
    ncsn_cuda_elu_forward(stream_of(be), out, x, n);
}

static void cuda_elu_backward(ncsn_backend *be, float *dx, const float *dout, const float *out, size_t n) {
    if (n) check_pointers3("elu_backward", dx, dout, out);
    ncsn_cuda_elu_backward(stream_of(be), dx, dout, out, n);
}

/* ---- pooling and resampling ---- */

static void cuda_mean_pool2_forward(ncsn_backend *be, float *out, const float *in, int N, int C, int H, int W) {
    check_nchw("mean_pool2_forward", N, C, H, W);
    NCSN_CHECKF(H % 2 == 0 && W % 2 == 0, "mean_pool2_forward: H=%d W=%d must be even", H, W);
    check_pointers2("mean_pool2_forward", out, in);
    ncsn_cuda_mean_pool2_forward(stream_of(be), out, in, N, C, H, W);
}

static void cuda_mean_pool2_backward(ncsn_backend *be, float *din, const float *dout, int N, int C, int H, int W,
                                     int accumulate) {
    check_nchw("mean_pool2_backward", N, C, H, W);
    NCSN_CHECKF(H % 2 == 0 && W % 2 == 0, "mean_pool2_backward: H=%d W=%d must be even", H, W);
    check_pointers2("mean_pool2_backward", din, dout);
    ncsn_cuda_mean_pool2_backward(stream_of(be), din, dout, N, C, H, W, accumulate);
}

static void cuda_avg_pool5_forward(ncsn_backend *be, float *out, const float *in, int N, int C, int H, int W) {
    check_nchw("avg_pool5_forward", N, C, H, W);
    check_pointers2("avg_pool5_forward", out, in);
    ncsn_cuda_avg_pool5_forward(stream_of(be), out, in, N, C, H, W);
}

static void cuda_avg_pool5_backward(ncsn_backend *be, float *din, const float *dout, int N, int C, int H, int W,
                                    int accumulate) {
    check_nchw("avg_pool5_backward", N, C, H, W);
    check_pointers2("avg_pool5_backward", din, dout);
    ncsn_cuda_avg_pool5_backward(stream_of(be), din, dout, N, C, H, W, accumulate);
}

static void cuda_max_pool5_forward(ncsn_backend *be, float *out, const float *in, int N, int C, int H, int W) {
    check_nchw("max_pool5_forward", N, C, H, W);
    check_pointers2("max_pool5_forward", out, in);
    ncsn_cuda_max_pool5_forward(stream_of(be), out, in, N, C, H, W);
}

static void cuda_max_pool5_backward(ncsn_backend *be, float *din, const float *dout, const float *in, int N, int C,
                                    int H, int W, int accumulate) {
    check_nchw("max_pool5_backward", N, C, H, W);
    check_pointers3("max_pool5_backward", din, dout, in);
    void *scratch = cuda_workspace_reserve(be, ncsn_cuda_max_pool5_backward_scratch_bytes(N, C, H, W));
    ncsn_cuda_max_pool5_backward(stream_of(be), din, dout, in, N, C, H, W, accumulate, scratch);
}

static void cuda_resize_bilinear_forward(ncsn_backend *be, float *out, const float *in, int N, int C, int H, int W,
                                         int Ho, int Wo) {
    check_nchw("resize_bilinear_forward", N, C, H, W);
    NCSN_CHECKF(Ho > 0 && Wo > 0, "resize_bilinear_forward: bad output size %dx%d", Ho, Wo);
    check_pointers2("resize_bilinear_forward", out, in);
    ncsn_cuda_resize_bilinear_forward(stream_of(be), out, in, N, C, H, W, Ho, Wo);
}

static void cuda_resize_bilinear_backward(ncsn_backend *be, float *din, const float *dout, int N, int C, int H, int W,
                                          int Ho, int Wo, int accumulate) {
    check_nchw("resize_bilinear_backward", N, C, H, W);
    NCSN_CHECKF(Ho > 0 && Wo > 0, "resize_bilinear_backward: bad output size %dx%d", Ho, Wo);
    check_pointers2("resize_bilinear_backward", din, dout);
    ncsn_cuda_resize_bilinear_backward(stream_of(be), din, dout, N, C, H, W, Ho, Wo, accumulate);
}

/* ---- elementwise ---- */

static void cuda_add(ncsn_backend *be, float *out, const float *a, const float *b, size_t n) {
    if (n) check_pointers3("add", out, a, b);
    ncsn_cuda_add(stream_of(be), out, a, b, n);
}

static void cuda_accumulate(ncsn_backend *be, float *y, const float *x, size_t n) {
    if (n) check_pointers2("accumulate", y, x);
    ncsn_cuda_accumulate(stream_of(be), y, x, n);
}

static void cuda_scale_shift(ncsn_backend *be, float *out, const float *x, float scale, float shift, size_t n) {
    if (n) check_pointers2("scale_shift", out, x);
    ncsn_cuda_scale_shift(stream_of(be), out, x, scale, shift, n);
}

static void cuda_divide_by_sigma(ncsn_backend *be, float *out, const float *x, const float *sigmas,
                                 const int32_t *labels, int N, size_t per_example) {
    NCSN_CHECKF(N >= 0, "divide_by_sigma: N=%d", N);
    if (N && per_example) {
        check_pointers2("divide_by_sigma", out, x);
        check_pointers2("divide_by_sigma", sigmas, labels);
    }
    ncsn_cuda_divide_by_sigma(stream_of(be), out, x, sigmas, labels, N, per_example);
}

static void cuda_clamp01(ncsn_backend *be, float *x, size_t n) {
    NCSN_CHECKF(n == 0 || x, "clamp01: NULL tensor pointer");
    ncsn_cuda_clamp01(stream_of(be), x, n);
}

static void cuda_logit(ncsn_backend *be, float *x, size_t n) {
    NCSN_CHECKF(n == 0 || x, "logit: NULL tensor pointer");
    ncsn_cuda_logit(stream_of(be), x, n);
}

static void cuda_label_bias_forward(ncsn_backend *be, float *out, const float *table, const int32_t *labels, int N,
                                    int C, size_t spatial) {
    NCSN_CHECKF(N > 0 && C > 0, "label_bias_forward: N=%d C=%d", N, C);
    check_pointers3("label_bias_forward", out, table, labels);
    ncsn_cuda_label_bias_forward(stream_of(be), out, table, labels, N, C, spatial);
}

static void cuda_label_bias_backward_accumulate(ncsn_backend *be, float *dtable, const float *dout,
                                                const int32_t *labels, int N, int C, size_t spatial) {
    NCSN_CHECKF(N > 0 && C > 0, "label_bias_backward_accumulate: N=%d C=%d", N, C);
    check_pointers3("label_bias_backward_accumulate", dtable, dout, labels);
    void *scratch = cuda_workspace_reserve(be, ncsn_cuda_label_bias_backward_scratch_bytes(N, C));
    ncsn_cuda_label_bias_backward_accumulate(stream_of(be), dtable, dout, labels, N, C, spatial, scratch);
}

/* ---- randomness ---- */

static void cuda_fill_normal(ncsn_backend *be, float *out, int N, size_t per_example, uint64_t seed, uint32_t purpose,
                             uint32_t example_offset, uint32_t step) {
    NCSN_CHECKF(N >= 0, "fill_normal: N=%d", N);
    NCSN_CHECKF(N == 0 || per_example == 0 || out, "fill_normal: NULL output");
    ncsn_cuda_fill_normal(stream_of(be), out, N, per_example, seed, purpose, example_offset, step);
}

static void cuda_fill_uniform(ncsn_backend *be, float *out, int N, size_t per_example, uint64_t seed, uint32_t purpose,
                              uint32_t example_offset, uint32_t step) {
    NCSN_CHECKF(N >= 0, "fill_uniform: N=%d", N);
    NCSN_CHECKF(N == 0 || per_example == 0 || out, "fill_uniform: NULL output");
    ncsn_cuda_fill_uniform(stream_of(be), out, N, per_example, seed, purpose, example_offset, step);
}

/* ---- custom kernels of the method ---- */

static void cuda_noise_inject(ncsn_backend *be, float *x_noisy, const float *x, const float *z, const float *sigmas,
                              const int32_t *labels, int N, size_t per_example) {
    NCSN_CHECKF(N >= 0, "noise_inject: N=%d", N);
    if (N && per_example) {
        check_pointers3("noise_inject", x_noisy, x, z);
        check_pointers2("noise_inject", sigmas, labels);
    }
    ncsn_cuda_noise_inject(stream_of(be), x_noisy, x, z, sigmas, labels, N, per_example);
}

static void cuda_dsm_loss(ncsn_backend *be, float *loss_per_example, float *dscore, const float *score, const float *z,
                          const float *sigmas, const int32_t *labels, int N, size_t per_example) {
    NCSN_CHECKF(N > 0, "dsm_loss: N=%d", N);
    check_pointers3("dsm_loss", loss_per_example, score, z);
    check_pointers2("dsm_loss", sigmas, labels);
    ncsn_cuda_dsm_loss(stream_of(be), loss_per_example, dscore, score, z, sigmas, labels, N, per_example);
}

static void cuda_adam_step(ncsn_backend *be, float *params, const float *grads, float *m, float *v, float *vmax,
                           size_t n, const ncsn_adam_hparams *hp) {
    NCSN_CHECKF(hp != NULL, "adam_step: NULL hyper-parameters");
    NCSN_CHECKF(hp->step >= 1, "adam_step: step %ld (1-based count after this update)", hp->step);
    NCSN_CHECKF(!hp->amsgrad || vmax, "adam_step: amsgrad needs vmax");
    if (n) {
        check_pointers2("adam_step", params, grads);
        check_pointers2("adam_step", m, v);
    }
    ncsn_cuda_adam_step(stream_of(be), params, grads, m, v, hp->amsgrad ? vmax : NULL, n, hp);
}

static void cuda_ema_update(ncsn_backend *be, float *shadow, const float *params, size_t n, float mu) {
    NCSN_CHECKF(mu >= 0.0f && mu <= 1.0f, "ema_update: mu %g outside [0, 1]", (double)mu);
    if (n) check_pointers2("ema_update", shadow, params);
    ncsn_cuda_ema_update(stream_of(be), shadow, params, n, mu);
}

static void cuda_langevin_step(ncsn_backend *be, float *x, const float *score, int N, size_t per_example, float a,
                               uint64_t seed, uint32_t example_offset, uint32_t step) {
    NCSN_CHECKF(N >= 0, "langevin_step: N=%d", N);
    NCSN_CHECKF(a >= 0.0f, "langevin_step: negative step size %g", (double)a);
    if (N && per_example) check_pointers2("langevin_step", x, score);
    ncsn_cuda_langevin_step(stream_of(be), x, score, N, per_example, a, seed, example_offset, step);
}

static void check_chain(const char *op, int N, int L, const uint32_t *state, uint32_t steps_per_level) {
    NCSN_CHECKF(N >= 0 && L > 0 && steps_per_level > 0, "%s: N=%d L=%d steps_per_level=%u", op, N, L,
                steps_per_level);
    NCSN_CHECKF(state != NULL, "%s: NULL chain state", op);
}

static void cuda_langevin_step_chain(ncsn_backend *be, float *x, const float *score, int N, size_t per_example,
                                     const float *schedule, int L, const uint32_t *state, uint32_t steps_per_level,
                                     uint64_t seed) {
    check_chain("langevin_step_chain", N, L, state, steps_per_level);
    if (N && per_example) check_pointers3("langevin_step_chain", x, score, schedule);
    ncsn_cuda_langevin_step_chain(stream_of(be), x, score, N, per_example, schedule, L, state, steps_per_level, seed);
}

static void cuda_chain_labels(ncsn_backend *be, int32_t *labels, int N, const int32_t *level_labels, int L,
                              const uint32_t *state, uint32_t steps_per_level) {
    check_chain("chain_labels", N, L, state, steps_per_level);
    if (N) check_pointers2("chain_labels", labels, level_labels);
    ncsn_cuda_chain_labels(stream_of(be), labels, N, level_labels, L, state, steps_per_level);
}

static void cuda_chain_advance(ncsn_backend *be, uint32_t *state) {
    NCSN_CHECKF(state != NULL, "chain_advance: NULL chain state");
    ncsn_cuda_chain_advance(stream_of(be), state);
}

static void cuda_denoise_step(ncsn_backend *be, float *x, const float *score, size_t n, float sigma_last_sq) {
    if (n) check_pointers2("denoise_step", x, score);
    ncsn_cuda_denoise_step(stream_of(be), x, score, n, sigma_last_sq);
}

/* Row-major C[M, Nc] = A[M, K] B[Nc, K]^T through column-major cuBLAS: a row-major
 * matrix is its transpose in column-major, so compute C^T[Nc, M] = B[Nc, K] A^T[K, M],
 * i.e. Sgemm(op(B) = T, op(A) = N) on the column-major views B^T (K x Nc, ld K) and
 * A^T (K x M, ld K), writing C^T (Nc x M, ld Nc) = row-major C. */
static void cuda_gemm_nt(ncsn_backend *be, float *C, const float *A, const float *B, int M, int Nc, int K) {
    NCSN_CHECKF(M > 0 && Nc > 0 && K > 0, "gemm_nt: M=%d Nc=%d K=%d", M, Nc, K);
    check_pointers3("gemm_nt", C, A, B);
    cuda_backend_impl *impl = cuda_impl(be);
    /* DEFAULT_MATH is plain fp32 FMA (cuBLAS >= 11 uses TF32 only on request). */
    CUBLAS_CHECK(cublasSetMathMode(impl->cublas, be->precision == NCSN_PRECISION_FP32 ? CUBLAS_DEFAULT_MATH
                                                                                      : CUBLAS_TF32_TENSOR_OP_MATH));
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasSgemm(impl->cublas, CUBLAS_OP_T, CUBLAS_OP_N, Nc, M, K, &alpha, B, K, A, K, &beta, C, Nc));
}

static void cuda_sum_squares(ncsn_backend *be, float *out, const float *x, size_t n) {
    NCSN_CHECKF(out && (n == 0 || x), "sum_squares: NULL pointer");
    void *scratch = cuda_workspace_reserve(be, ncsn_cuda_sum_squares_scratch_bytes());
    ncsn_cuda_sum_squares(stream_of(be), out, x, n, scratch);
}

static void cuda_row_sum_squares(ncsn_backend *be, float *out, const float *x, int N, size_t per_example) {
    NCSN_CHECKF(N >= 0 && out && (N == 0 || x), "row_sum_squares: N=%d, out %p, x %p", N, (void *)out,
                (const void *)x);
    ncsn_cuda_row_sum_squares(stream_of(be), out, x, N, per_example);
}

static void cuda_pc_step_size(ncsn_backend *be, float *out, const float *norms2, int N, double snr) {
    NCSN_CHECKF(N >= 1 && out && norms2 && snr > 0.0, "pc_step_size: N=%d, snr %g", N, snr);
    ncsn_cuda_pc_step_size(stream_of(be), out, norms2, N, snr);
}

static void cuda_clip_by_norm(ncsn_backend *be, float *g, size_t n, const float *norm2, float max_norm) {
    NCSN_CHECKF(norm2 && (n == 0 || g) && max_norm > 0.0f, "clip_by_norm: g %p, norm2 %p, max_norm %g", (void *)g,
                (const void *)norm2, (double)max_norm);
    ncsn_cuda_clip_by_norm(stream_of(be), g, n, norm2, max_norm);
}

/* ---- inference in bf16 NHWC (backend.h) ----
 * The same shape and pointer checks as the fp32 siblings. Windowed ops (pools, resize)
 * read neighbours of the element they write, so their output must not be their input. */

static void cuda_instance_norm_plus_forward_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *x,
                                                 const float *gamma, const float *alpha, const float *beta,
                                                 int param_stride, const int32_t *labels, float *stats, int N, int C,
                                                 int H, int W, int elu) {
    check_in_plus("instance_norm_plus_forward_bf16", param_stride, labels, N, C, H, W);
    check_pointers3("instance_norm_plus_forward_bf16", out, x, stats);
    check_pointers3("instance_norm_plus_forward_bf16", gamma, alpha, beta);
    ncsn_cuda_instance_norm_plus_forward_bf16(stream_of(be), out, x, gamma, alpha, beta, param_stride, labels, stats,
                                              N, C, H, W, elu);
}

static void cuda_elu_forward_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *x, size_t n) {
    if (n) check_pointers2("elu_forward_bf16", out, x);
    ncsn_cuda_elu_forward_bf16(stream_of(be), out, x, n);
}

static void cuda_add_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *a, const ncsn_bf16 *b, size_t n) {
    if (n) check_pointers3("add_bf16", out, a, b);
    ncsn_cuda_add_bf16(stream_of(be), out, a, b, n);
}

static void cuda_accumulate_bf16(ncsn_backend *be, ncsn_bf16 *y, const ncsn_bf16 *x, size_t n) {
    if (n) check_pointers2("accumulate_bf16", y, x);
    ncsn_cuda_accumulate_bf16(stream_of(be), y, x, n);
}

static void check_window_op(const char *op, const void *out, const void *in, int N, int C, int H, int W) {
    check_nchw(op, N, C, H, W);
    check_pointers2(op, out, in);
    NCSN_CHECKF(out != in, "%s: cannot run in place (out == in)", op);
}

static void cuda_mean_pool2_forward_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C, int H,
                                         int W) {
    check_window_op("mean_pool2_forward_bf16", out, in, N, C, H, W);
    NCSN_CHECKF(H % 2 == 0 && W % 2 == 0, "mean_pool2_forward_bf16: H=%d W=%d must be even", H, W);
    ncsn_cuda_mean_pool2_forward_bf16(stream_of(be), out, in, N, C, H, W);
}

static void cuda_avg_pool5_forward_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C, int H,
                                        int W) {
    check_window_op("avg_pool5_forward_bf16", out, in, N, C, H, W);
    ncsn_cuda_avg_pool5_forward_bf16(stream_of(be), out, in, N, C, H, W);
}

static void cuda_max_pool5_forward_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C, int H,
                                        int W) {
    check_window_op("max_pool5_forward_bf16", out, in, N, C, H, W);
    ncsn_cuda_max_pool5_forward_bf16(stream_of(be), out, in, N, C, H, W);
}

static void cuda_resize_bilinear_forward_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, int N, int C,
                                              int H, int W, int Ho, int Wo) {
    check_window_op("resize_bilinear_forward_bf16", out, in, N, C, H, W);
    NCSN_CHECKF(Ho > 0 && Wo > 0, "resize_bilinear_forward_bf16: bad output size %dx%d", Ho, Wo);
    ncsn_cuda_resize_bilinear_forward_bf16(stream_of(be), out, in, N, C, H, W, Ho, Wo);
}

static void cuda_bf16_from_nchw(ncsn_backend *be, ncsn_bf16 *out, const float *x, float scale, float shift, int N,
                                int C, int H, int W) {
    check_nchw("bf16_from_nchw", N, C, H, W);
    check_pointers2("bf16_from_nchw", out, x);
    ncsn_cuda_bf16_from_nchw(stream_of(be), out, x, scale, shift, N, C, H, W);
}

static void cuda_nchw_from_bf16(ncsn_backend *be, float *out, const ncsn_bf16 *x, const float *sigmas,
                                const int32_t *labels, int N, int C, int H, int W) {
    check_nchw("nchw_from_bf16", N, C, H, W);
    check_pointers2("nchw_from_bf16", out, x);
    NCSN_CHECKF(!sigmas || labels, "nchw_from_bf16: sigmas without labels");
    ncsn_cuda_nchw_from_bf16(stream_of(be), out, x, sigmas, labels, N, C, H, W);
}

/* ---- the table and lifetime ---- */

static const ncsn_backend_ops cuda_ops = {
    .name = "cuda",
    .alloc = cuda_alloc,
    .free = cuda_free,
    .memset_zero = cuda_memset_zero,
    .copy_to_device = cuda_copy_to_device,
    .copy_to_host = cuda_copy_to_host,
    .copy = cuda_copy,
    .synchronize = cuda_synchronize,
    .copy_columns = cuda_copy_columns,
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .fence_create = cuda_fence_create,
    .fence_record = cuda_fence_record,
    .fence_wait = cuda_fence_wait,
    .fence_destroy = cuda_fence_destroy,
    .graph_begin = cuda_graph_begin,
    .graph_end = cuda_graph_end,
    .graph_launch = cuda_graph_launch,
    .graph_destroy = cuda_graph_destroy,
    .conv2d_forward = cuda_conv2d_forward,
    .conv2d_backward_data = cuda_conv2d_backward_data,
    .conv2d_backward_weights_accumulate = cuda_conv2d_backward_weights_accumulate,
    .instance_norm_plus_forward = cuda_instance_norm_plus_forward,
    .instance_norm_plus_backward = cuda_instance_norm_plus_backward,
    .elu_forward = cuda_elu_forward,
    .elu_backward = cuda_elu_backward,
    .mean_pool2_forward = cuda_mean_pool2_forward,
    .mean_pool2_backward = cuda_mean_pool2_backward,
    .avg_pool5_forward = cuda_avg_pool5_forward,
    .avg_pool5_backward = cuda_avg_pool5_backward,
    .max_pool5_forward = cuda_max_pool5_forward,
    .max_pool5_backward = cuda_max_pool5_backward,
    .resize_bilinear_forward = cuda_resize_bilinear_forward,
    .resize_bilinear_backward = cuda_resize_bilinear_backward,
    .add = cuda_add,
    .accumulate = cuda_accumulate,
    .scale_shift = cuda_scale_shift,
    .divide_by_sigma = cuda_divide_by_sigma,
    .clamp01 = cuda_clamp01,
    .logit = cuda_logit,
    .label_bias_forward = cuda_label_bias_forward,
    .label_bias_backward_accumulate = cuda_label_bias_backward_accumulate,
    .fill_normal = cuda_fill_normal,
    .fill_uniform = cuda_fill_uniform,
    .noise_inject = cuda_noise_inject,
    .dsm_loss = cuda_dsm_loss,
    .adam_step = cuda_adam_step,
    .ema_update = cuda_ema_update,
    .langevin_step = cuda_langevin_step,
    .langevin_step_chain = cuda_langevin_step_chain,
    .chain_labels = cuda_chain_labels,
    .chain_advance = cuda_chain_advance,
    .denoise_step = cuda_denoise_step,
    .gemm_nt = cuda_gemm_nt,
    .sum_squares = cuda_sum_squares,
    .clip_by_norm = cuda_clip_by_norm,
    .row_sum_squares = cuda_row_sum_squares,
    .pc_step_size = cuda_pc_step_size,
    .conv2d_packed_weights_bytes = cuda_conv2d_packed_weights_bytes,
    .conv2d_pack_weights_bf16 = cuda_conv2d_pack_weights_bf16,
    .conv2d_forward_bf16 = cuda_conv2d_forward_bf16,
    .instance_norm_plus_forward_bf16 = cuda_instance_norm_plus_forward_bf16,
    .elu_forward_bf16 = cuda_elu_forward_bf16,
    .add_bf16 = cuda_add_bf16,
    .accumulate_bf16 = cuda_accumulate_bf16,
    .mean_pool2_forward_bf16 = cuda_mean_pool2_forward_bf16,
    .avg_pool5_forward_bf16 = cuda_avg_pool5_forward_bf16,
    .max_pool5_forward_bf16 = cuda_max_pool5_forward_bf16,
    .resize_bilinear_forward_bf16 = cuda_resize_bilinear_forward_bf16,
    .bf16_from_nchw = cuda_bf16_from_nchw,
    .nchw_from_bf16 = cuda_nchw_from_bf16,
};

/* The cuDNN the binary was compiled against, or newer: cuDNN 9 keeps older applications
 * working on newer libraries, not the reverse, and the graph API is used here as the
 * compile-time headers define it (no handle on operation graphs, device-properties
 * descriptors, which need 9.8 at least). */
#define CUDNN_MIN_RUNTIME_VERSION CUDNN_VERSION

ncsn_backend *ncsn_cuda_backend_create(char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    int count = 0;
    cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
        /* No driver, no device, or a driver older than the runtime: not fatal, the caller
         * falls back to the CPU backend. */
        snprintf(err, errlen, "no CUDA device: %s", cudaGetErrorString(status));
        (void)cudaGetLastError(); /* clear the runtime's error state for later calls */
        return NULL;
    }
    if (count == 0) {
        snprintf(err, errlen, "no CUDA device: cudaGetDeviceCount returned 0");
        return NULL;
    }
    /* Device 0 of those visible: CUDA_VISIBLE_DEVICES selects (one process per GPU). */
    const int device = 0;
    CUDA_CHECK(cudaSetDevice(device));
    struct cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    status = ncsn_cuda_kernels_probe();
    if (status != cudaSuccess) {
        snprintf(err, errlen,
                 "no CUDA device: this binary has no kernels for %s (sm_%d%d): %s; rebuild with "
                 "make CUDA=1 CUDA_ARCH=\"%d%d\"",
                 prop.name, prop.major, prop.minor, cudaGetErrorString(status), prop.major, prop.minor);
        (void)cudaGetLastError();
        return NULL;
    }
    size_t cudnn_version = cudnnGetVersion();
    if (cudnn_version < CUDNN_MIN_RUNTIME_VERSION) {
        snprintf(err, errlen, "no CUDA device: cuDNN %zu found at run time, >= %d needed", cudnn_version,
                 CUDNN_MIN_RUNTIME_VERSION);
        return NULL;
    }

    ncsn_backend *be = ncsn_xcalloc(1, sizeof *be);
    cuda_backend_impl *impl = ncsn_xcalloc(1, sizeof *impl);
    be->ops = &cuda_ops;
    be->kind = NCSN_DEVICE_CUDA;
    be->precision = NCSN_PRECISION_FP32;
    be->deterministic = 0;
    be->impl = impl;
    impl->device = device;
    /* Non-blocking: the legacy default stream (used by nothing here) never serialises us. */
    CUDA_CHECK(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking));
    CUDNN_CHECK(cudnnCreate(&impl->cudnn));
    CUDNN_CHECK(cudnnSetStream(impl->cudnn, impl->stream));
    CUBLAS_CHECK(cublasCreate(&impl->cublas));
    CUBLAS_CHECK(cublasSetStream(impl->cublas, impl->stream));
    CUDNN_CHECK(cudnnBackendCreateDescriptor(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, &impl->cudnn_device_properties));
    CUDNN_CHECK(cudnnBackendSetAttribute(impl->cudnn_device_properties, CUDNN_ATTR_DEVICEPROP_HANDLE, CUDNN_TYPE_HANDLE,
                                         1, &impl->cudnn));
    CUDNN_CHECK(cudnnBackendFinalize(impl->cudnn_device_properties));

    int cublas_version = 0;
    CUBLAS_CHECK(cublasGetVersion(impl->cublas, &cublas_version));
    fprintf(stderr, "cuda: device %d: %s (sm_%d%d, %d SMs, %.1f GiB), cuDNN %zu, cuBLAS %d\n", device, prop.name,
            prop.major, prop.minor, prop.multiProcessorCount, (double)prop.totalGlobalMem / (1024.0 * 1024 * 1024),
            cudnn_version, cublas_version);
    return be;
}

void ncsn_cuda_backend_destroy(ncsn_backend *be) {
    if (!be) return;
    cuda_backend_impl *impl = cuda_impl(be);
    if (impl) {
        CUDA_CHECK(cudaStreamSynchronize(impl->stream));
        cuda_conv_destroy(impl);
        if (impl->workspace) CUDA_CHECK(cudaFree(impl->workspace));
        CUDNN_CHECK(cudnnBackendDestroyDescriptor(impl->cudnn_device_properties));
        CUBLAS_CHECK(cublasDestroy(impl->cublas));
        CUDNN_CHECK(cudnnDestroy(impl->cudnn));
        CUDA_CHECK(cudaStreamDestroy(impl->stream));
        free(impl);
    }
    free(be);
}
