/* pooling.cu: 2x2 mean pool (ConvMeanPool), 5x5 average pool (v1 CRP), 5x5 max pool (v2
 * CRP) and align_corners bilinear resize (MSF), forward and backward. Sizes are of the
 * INPUT, as in backend.h. Activation gradients overwrite unless `accumulate`.
 *
 * Every backward is a GATHER: one thread per input element sums the output gradients that
 * reach it, in a fixed order. A scatter with atomicAdd would be shorter but would make the
 * gradients depend on thread timing; these kernels are deterministic.
 */
#include "kernels/cuda_launch.h"

/* ---- 2x2 mean pool, stride 2 ---- */

/* The official ConvMeanPool adds the four phases as
 *   ((x[::2, ::2] + x[1::2, ::2]) + x[::2, 1::2]) + x[1::2, 1::2], then divides by 4;
 * the same order here keeps the result bit-identical to it. */
static __global__ void mean_pool2_forward_kernel(float *out, const float *in, int H, int W, size_t n) {
    int Ho = H / 2, Wo = W / 2;
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) {
        size_t plane = i / ((size_t)Ho * Wo);
        int r = (int)(i % ((size_t)Ho * Wo));
        int oy = r / Wo, ox = r % Wo;
        const float *p = in + plane * H * W + (size_t)(2 * oy) * W + 2 * ox;
        float sum = p[0];
        sum += p[W];
        sum += p[1];
        sum += p[W + 1];
        out[i] = sum / 4.0f;
    }
}

static __global__ void mean_pool2_backward_kernel(float *din, const float *dout, int H, int W, int accumulate,
                                                  size_t n) {
    int Ho = H / 2, Wo = W / 2;
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) {
        size_t plane = i / ((size_t)H * W);
        int r = (int)(i % ((size_t)H * W));
        int y = r / W, x = r % W;
        float value = dout[plane * Ho * Wo + (size_t)(y / 2) * Wo + x / 2] / 4.0f;
        din[i] = accumulate ? din[i] + value : value;
    }
}

extern "C" void ncsn_cuda_mean_pool2_forward(cudaStream_t stream, float *out, const float *in, int N, int C, int H,
                                             int W) {
    size_t n = (size_t)N * C * (H / 2) * (W / 2);
    if (n == 0) return;
    mean_pool2_forward_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(out, in, H, W, n);
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" void ncsn_cuda_mean_pool2_backward(cudaStream_t stream, float *din, const float *dout, int N, int C, int H,
                                              int W, int accumulate) {
    size_t n = (size_t)N * C * H * W;
    if (n == 0) return;
    mean_pool2_backward_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(din, dout, H, W, accumulate, n);
    CUDA_CHECK_LAUNCH(stream);
}

/* ---- 5x5 windows, stride 1, pad 2 ---- */

#define POOL5_RADIUS 2
#define POOL5_AREA 25.0f /* count_include_pad=True: border windows still divide by 25 */

/* Sum of the 5x5 window of plane p around (y, x), in the CPU backend's order (its
 * separable box filter): each row's in-range taps left to right, then the 5 row sums top
 * to bottom. Skipped padding taps are the CPU's zero pads (x + 0 == x), so the two
 * backends agree bit for bit, which tests/gpu/test_gpu_ops.c checks. */
static inline __device__ float box5_sum(const float *p, int H, int W, int y, int x) {
    float total = 0.0f;
    for (int yy = y - POOL5_RADIUS; yy <= y + POOL5_RADIUS; yy++) {
        if (yy < 0 || yy >= H) continue;
        float row = 0.0f;
        for (int xx = x - POOL5_RADIUS; xx <= x + POOL5_RADIUS; xx++)
            if (xx >= 0 && xx < W) row += p[(size_t)yy * W + xx];
        total += row;
    }
    return total;
}

static __global__ void avg_pool5_forward_kernel(float *out, const float *in, int H, int W, size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) {
        size_t plane = i / ((size_t)H * W);
        int r = (int)(i % ((size_t)H * W));
        out[i] = box5_sum(in + plane * H * W, H, W, r / W, r % W) / POOL5_AREA;
    }
}

/* The 5x5 window is symmetric: input (y, x) lies in the windows of exactly the outputs
 * within distance 2 of it; their gradients are summed, then divided by 25. */
static __global__ void avg_pool5_backward_kernel(float *din, const float *dout, int H, int W, int accumulate,
                                                 size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) {
        size_t plane = i / ((size_t)H * W);
        int r = (int)(i % ((size_t)H * W));
        float value = box5_sum(dout + plane * H * W, H, W, r / W, r % W) / POOL5_AREA;
        din[i] = accumulate ? din[i] + value : value;
    }
}

/* Index (within the plane) of the first maximum of the window around (y, x) in row-major
 * order: the first in-bounds element is the initial candidate, a later one replaces it
 * only if strictly greater; the first NaN wins outright (PyTorch propagates NaN). Padding
 * is never selected (it behaves as -inf). Same rule as the CPU backend. */
static inline __device__ int max_pool5_argmax(const float *p, int H, int W, int y, int x) {
    int y0 = max(y - POOL5_RADIUS, 0), x0 = max(x - POOL5_RADIUS, 0);
    int y1 = min(y + POOL5_RADIUS, H - 1), x1 = min(x + POOL5_RADIUS, W - 1);
    int best = y0 * W + x0;
    float best_value = -INFINITY;
    for (int yy = y0; yy <= y1; yy++)
        for (int xx = x0; xx <= x1; xx++) {
            float v = p[yy * W + xx];
            if (isnan(v)) return yy * W + xx;
            if (v > best_value) {
                best_value = v;
                best = yy * W + xx;
            }
        }
    return best;
}

static __global__ void max_pool5_forward_kernel(float *out, const float *in, int H, int W, size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) {
        size_t plane = i / ((size_t)H * W);
        int r = (int)(i % ((size_t)H * W));
        const float *p = in + plane * H * W;
        out[i] = p[max_pool5_argmax(p, H, W, r / W, r % W)];
    }
}

static __global__ void max_pool5_argmax_kernel(int32_t *argmax, const float *in, int H, int W, size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) {
        size_t plane = i / ((size_t)H * W);
        int r = (int)(i % ((size_t)H * W));
        argmax[i] = max_pool5_argmax(in + plane * H * W, H, W, r / W, r % W);
    }
}

/* Input (y, x) receives dout of every output within distance 2 whose argmax it is. */
static __global__ void max_pool5_backward_kernel(float *din, const float *dout, const int32_t *argmax, int H, int W,
                                                 int accumulate, size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) {
        size_t plane = i / ((size_t)H * W);
        int r = (int)(i % ((size_t)H * W));
        int y = r / W, x = r % W;
        const float *g = dout + plane * H * W;
        const int32_t *a = argmax + plane * H * W;
        float sum = 0.0f;
        for (int oy = y - POOL5_RADIUS; oy <= y + POOL5_RADIUS; oy++) {
            if (oy < 0 || oy >= H) continue;
            for (int ox = x - POOL5_RADIUS; ox <= x + POOL5_RADIUS; ox++)
                if (ox >= 0 && ox < W && a[oy * W + ox] == r) sum += g[oy * W + ox];
        }
        din[i] = accumulate ? din[i] + sum : sum;
    }
}

extern "C" void ncsn_cuda_avg_pool5_forward(cudaStream_t stream, float *out, const float *in, int N, int C, int H,
                                            int W) {
    size_t n = (size_t)N * C * H * W;
    if (n == 0) return;
    avg_pool5_forward_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(out, in, H, W, n);
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" void ncsn_cuda_avg_pool5_backward(cudaStream_t stream, float *din, const float *dout, int N, int C, int H,
                                             int W, int accumulate) {
    size_t n = (size_t)N * C * H * W;
    if (n == 0) return;
    avg_pool5_backward_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(din, dout, H, W, accumulate, n);
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" void ncsn_cuda_max_pool5_forward(cudaStream_t stream, float *out, const float *in, int N, int C, int H,
                                            int W) {
    size_t n = (size_t)N * C * H * W;
    if (n == 0) return;
    max_pool5_forward_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(out, in, H, W, n);
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" size_t ncsn_cuda_max_pool5_backward_scratch_bytes(int N, int C, int H, int W) {
    return (size_t)N * C * H * W * sizeof(int32_t);
}

extern "C" void ncsn_cuda_max_pool5_backward(cudaStream_t stream, float *din, const float *dout, const float *in, int N,
                                             int C, int H, int W, int accumulate, void *scratch) {
    size_t n = (size_t)N * C * H * W;
    if (n == 0) return;
    int32_t *argmax = (int32_t *)scratch;
    max_pool5_argmax_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(argmax, in, H, W, n);
    CUDA_CHECK_LAUNCH(stream);
    max_pool5_backward_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(din, dout, argmax, H, W, accumulate,
                                                                                   n);
    CUDA_CHECK_LAUNCH(stream);
}

/* ---- bilinear resize, align_corners=True ---- */

/* PyTorch's area_pixel_compute_scale with align_corners: (in - 1) / (out - 1) in float,
 * 0 for a single output (every output then reads source index 0). */
static inline __device__ float align_corners_scale(int in_size, int out_size) {
    return out_size > 1 ? (float)(in_size - 1) / (float)(out_size - 1) : 0.0f;
}

/* The two source taps of output index `dst` and their weights, as upsample_bilinear2d:
 * i0 = floor(src), i1 = i0 + 1 unless i0 is the last index (then i1 = i0). */
typedef struct {
    int i0, i1;
    float w0, w1;
} bilinear_taps;

static inline __device__ bilinear_taps bilinear_source(float scale, int dst, int in_size) {
    float src = scale * (float)dst;
    bilinear_taps t;
    t.i0 = min((int)src, in_size - 1); /* rounding of scale * dst must not pass the edge */
    t.i1 = t.i0 + (t.i0 < in_size - 1 ? 1 : 0);
    t.w1 = src - (float)t.i0;
    t.w0 = 1.0f - t.w1;
    return t;
}

static __global__ void resize_bilinear_forward_kernel(float *out, const float *in, int H, int W, int Ho, int Wo,
                                                      size_t n) {
    float scale_h = align_corners_scale(H, Ho), scale_w = align_corners_scale(W, Wo);
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) {
        size_t plane = i / ((size_t)Ho * Wo);
        int r = (int)(i % ((size_t)Ho * Wo));
        bilinear_taps ty = bilinear_source(scale_h, r / Wo, H), tx = bilinear_source(scale_w, r % Wo, W);
        const float *p = in + plane * H * W;
        out[i] = ty.w0 * (tx.w0 * p[ty.i0 * W + tx.i0] + tx.w1 * p[ty.i0 * W + tx.i1]) +
                 ty.w1 * (tx.w0 * p[ty.i1 * W + tx.i0] + tx.w1 * p[ty.i1 * W + tx.i1]);
    }
}

/* Weight with which output index `dst` reads source index `target` (both taps may land
 * on it at the last index). */
static inline __device__ float bilinear_weight(float scale, int dst, int in_size, int target) {
    bilinear_taps t = bilinear_source(scale, dst, in_size);
    return (t.i0 == target ? t.w0 : 0.0f) + (t.i1 == target ? t.w1 : 0.0f);
}

/* Outputs that can read source index `target`: those with floor(scale * dst) in
 * [target - 1, target]. The bounds are widened by one to absorb rounding; the exact
 * weights filter the extra candidates. */
static inline __device__ void bilinear_candidates(float scale, int target, int out_size, int *lo, int *hi) {
    if (scale == 0.0f) { /* a single output row/column, or a single input: all read index 0 */
        *lo = 0;
        *hi = target == 0 ? out_size - 1 : -1;
        return;
    }
    *lo = max((int)floor((double)(target - 1) / (double)scale) - 1, 0);
    *hi = min((int)ceil((double)(target + 1) / (double)scale) + 1, out_size - 1);
}

static __global__ void resize_bilinear_backward_kernel(float *din, const float *dout, int H, int W, int Ho, int Wo,
                                                       int accumulate, size_t n) {
    float scale_h = align_corners_scale(H, Ho), scale_w = align_corners_scale(W, Wo);
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) {
        size_t plane = i / ((size_t)H * W);
        int r = (int)(i % ((size_t)H * W));
        int y = r / W, x = r % W;
        int oy0, oy1, ox0, ox1;
        bilinear_candidates(scale_h, y, Ho, &oy0, &oy1);
        bilinear_candidates(scale_w, x, Wo, &ox0, &ox1);
        const float *g = dout + plane * Ho * Wo;
        float sum = 0.0f;
        for (int oy = oy0; oy <= oy1; oy++) {
            float wy = bilinear_weight(scale_h, oy, H, y);
            if (wy == 0.0f) continue;
            for (int ox = ox0; ox <= ox1; ox++) {
                float wx = bilinear_weight(scale_w, ox, W, x);
                if (wx != 0.0f) sum += wy * wx * g[(size_t)oy * Wo + ox];
            }
        }
        din[i] = accumulate ? din[i] + sum : sum;
    }
}

extern "C" void ncsn_cuda_resize_bilinear_forward(cudaStream_t stream, float *out, const float *in, int N, int C, int H,
                                                  int W, int Ho, int Wo) {
    size_t n = (size_t)N * C * Ho * Wo;
    if (n == 0) return;
    resize_bilinear_forward_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(out, in, H, W, Ho, Wo, n);
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" void ncsn_cuda_resize_bilinear_backward(cudaStream_t stream, float *din, const float *dout, int N, int C,
                                                   int H, int W, int Ho, int Wo, int accumulate) {
    size_t n = (size_t)N * C * H * W;
    if (n == 0) return;
    resize_bilinear_backward_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(din, dout, H, W, Ho, Wo,
                                                                                         accumulate, n);
    CUDA_CHECK_LAUNCH(stream);
}
