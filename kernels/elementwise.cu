/* elementwise.cu: ELU, the small arithmetic ops, the per-level label bias and the
 * convolution bias (forward broadcast add, backward per-channel reduction).
 *
 * Which outputs accumulate: conv bias gradients and label-bias table gradients (+=, they
 * are parameter gradients); everything else overwrites (backend.h).
 *
 * Parameter-gradient reductions are deterministic: each output element is reduced by one
 * block (or one thread walking the batch in order), never by atomics, so two runs give
 * bit-identical gradients.
 */
#include "kernels/cuda_launch.h"

/* ---- ELU (torch.nn.ELU, alpha = 1) ---- */

static __global__ void elu_forward_kernel(float *out, const float *x, size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) out[i] = ncsn_elu(x[i]);
}

/* In place allowed (dx == dout): each element reads its own dout before writing. */
static __global__ void elu_backward_kernel(float *dx, const float *dout, const float *out, size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) dx[i] = ncsn_elu_grad_from_output(dout[i], out[i]);
}

extern "C" cudaError_t ncsn_cuda_kernels_probe(void) {
    struct cudaFuncAttributes attributes;
    return cudaFuncGetAttributes(&attributes, (const void *)elu_forward_kernel);
}

extern "C" void ncsn_cuda_elu_forward(cudaStream_t stream, float *out, const float *x, size_t n) {
    if (n == 0) return;
    elu_forward_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(out, x, n);
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" void ncsn_cuda_elu_backward(cudaStream_t stream, float *dx, const float *dout, const float *out, size_t n) {
    if (n == 0) return;
    elu_backward_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(dx, dout, out, n);
    CUDA_CHECK_LAUNCH(stream);
}

/* ---- small arithmetic ---- */

static __global__ void add_kernel(float *out, const float *a, const float *b, size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) out[i] = a[i] + b[i];
}

static __global__ void accumulate_kernel(float *y, const float *x, size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) y[i] += x[i];
}

static __global__ void scale_shift_kernel(float *out, const float *x, float scale, float shift, size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) out[i] = x[i] * scale + shift;
}

/* A true division, as the official v2 head computes `h / used_sigmas`; multiplying by a
 * reciprocal would differ from the CPU backend in the last bit. */
static __global__ void divide_by_sigma_kernel(float *out, const float *x, const float *sigmas, const int32_t *labels,
                                              size_t per_example, size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) out[i] = x[i] / sigmas[labels[i / per_example]];
}

/* The parentheses around the name stop backend.h's op macro ncsn_clamp01(be, ...) from
 * swallowing the call to element_math.h's function of the same name. */
static __global__ void clamp01_kernel(float *x, size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) x[i] = ncsn_clamp01_element(x[i]);
}

extern "C" void ncsn_cuda_add(cudaStream_t stream, float *out, const float *a, const float *b, size_t n) {
    if (n == 0) return;
    add_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(out, a, b, n);
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" void ncsn_cuda_accumulate(cudaStream_t stream, float *y, const float *x, size_t n) {
    if (n == 0) return;
    accumulate_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(y, x, n);
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" void ncsn_cuda_scale_shift(cudaStream_t stream, float *out, const float *x, float scale, float shift,
                                      size_t n) {
    if (n == 0) return;
    scale_shift_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(out, x, scale, shift, n);
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" void ncsn_cuda_divide_by_sigma(cudaStream_t stream, float *out, const float *x, const float *sigmas,
                                          const int32_t *labels, int N, size_t per_example) {
    size_t n = (size_t)N * per_example;
    if (n == 0) return;
    divide_by_sigma_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(out, x, sigmas, labels, per_example, n);
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" void ncsn_cuda_clamp01(cudaStream_t stream, float *x, size_t n) {
    if (n == 0) return;
    clamp01_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(x, n);
    CUDA_CHECK_LAUNCH(stream);
}

static __global__ void logit_kernel(float *x, size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) x[i] = ncsn_logit_element(x[i]);
}

extern "C" void ncsn_cuda_logit(cudaStream_t stream, float *x, size_t n) {
    if (n == 0) return;
    logit_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(x, n);
    CUDA_CHECK_LAUNCH(stream);
}

/* ---- per-level bias (toy conditional MLP) ---- */

static __global__ void label_bias_forward_kernel(float *out, const float *table, const int32_t *labels, int C,
                                                 size_t spatial, size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) {
        size_t plane = i / spatial; /* n * C + c */
        int example = (int)(plane / (size_t)C), c = (int)(plane % (size_t)C);
        out[i] += table[(size_t)labels[example] * C + c];
    }
}

/* One block per (n, c) plane: plane_sums[n * C + c] = sum over space of dout[n, c, :]. */
static __global__ void plane_sums_kernel(float *plane_sums, const float *dout, size_t spatial) {
    const float *plane = dout + (size_t)blockIdx.x * spatial;
    double sum = 0.0;
    for (size_t s = threadIdx.x; s < spatial; s += blockDim.x) sum += plane[s];
    sum = ncsn_cuda_block_sum(sum);
    if (threadIdx.x == 0) plane_sums[blockIdx.x] = (float)sum;
}

/* Thread c walks the batch in order and adds into the row of each example's level.
 * Examples may share a level, so rows are not disjoint across n; keeping one channel per
 * thread makes the adds race-free without atomics, and their order fixed. */
static __global__ void label_rows_accumulate_kernel(float *dtable, const float *plane_sums, const int32_t *labels,
                                                    int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    for (int n = 0; n < N; n++) dtable[(size_t)labels[n] * C + c] += plane_sums[(size_t)n * C + c];
}

extern "C" void ncsn_cuda_label_bias_forward(cudaStream_t stream, float *out, const float *table, const int32_t *labels,
                                             int N, int C, size_t spatial) {
    size_t n = (size_t)N * C * spatial;
    if (n == 0) return;
    label_bias_forward_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(out, table, labels, C, spatial, n);
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" size_t ncsn_cuda_label_bias_backward_scratch_bytes(int N, int C) { return (size_t)N * C * sizeof(float); }

extern "C" void ncsn_cuda_label_bias_backward_accumulate(cudaStream_t stream, float *dtable, const float *dout,
                                                         const int32_t *labels, int N, int C, size_t spatial,
                                                         void *scratch) {
    if ((size_t)N * C * spatial == 0) return;
    float *plane_sums = (float *)scratch;
    plane_sums_kernel<<<(unsigned)(N * C), NCSN_CUDA_REDUCE_THREADS, 0, stream>>>(plane_sums, dout, spatial);
    CUDA_CHECK_LAUNCH(stream);
    label_rows_accumulate_kernel<<<(unsigned)((C + 127) / 128), 128, 0, stream>>>(dtable, plane_sums, labels, N, C);
    CUDA_CHECK_LAUNCH(stream);
}

/* ---- convolution bias ---- */

static __global__ void conv_bias_forward_kernel(float *out, const float *b, int K, size_t spatial, size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) out[i] += b[(i / spatial) % (size_t)K];
}

/* One block per output channel k: db[k] += sum over the batch and space of dout[:, k, :]. */
static __global__ void conv_bias_backward_accumulate_kernel(float *db, const float *dout, int N, int K,
                                                            size_t spatial) {
    int k = blockIdx.x;
    double sum = 0.0;
    for (int n = 0; n < N; n++) {
        const float *plane = dout + ((size_t)n * K + k) * spatial;
        for (size_t s = threadIdx.x; s < spatial; s += blockDim.x) sum += plane[s];
    }
    sum = ncsn_cuda_block_sum(sum);
    if (threadIdx.x == 0) db[k] += (float)sum;
}

extern "C" void ncsn_cuda_conv_bias_forward(cudaStream_t stream, float *out, const float *b, int N, int K,
                                            size_t spatial) {
    size_t n = (size_t)N * K * spatial;
    if (n == 0) return;
    conv_bias_forward_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(out, b, K, spatial, n);
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" void ncsn_cuda_conv_bias_backward_accumulate(cudaStream_t stream, float *db, const float *dout, int N, int K,
                                                        size_t spatial) {
    if ((size_t)N * K * spatial == 0) return;
    conv_bias_backward_accumulate_kernel<<<(unsigned)K, NCSN_CUDA_REDUCE_THREADS, 0, stream>>>(db, dout, N, K, spatial);
    CUDA_CHECK_LAUNCH(stream);
}
