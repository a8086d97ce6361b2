/* act_bf16.cu: the memory-bound ops of bf16 NHWC inference (backend.h "inference in bf16
 * NHWC"): ELU, add, accumulate, the 2x2 mean pool, the 5x5 average and max pools, the
 * align_corners bilinear resize, and the two layout boundaries (fp32 NCHW -> bf16 NHWC for
 * the network input, bf16 NHWC -> fp32 NCHW for its output). InstanceNorm++ is in norms.cu
 * (it reuses the fp32 statistics kernels there); convolutions are in host/cuda_conv.c.
 *
 * Numerics: every kernel reads bf16, computes in fp32 with exactly the formula and the
 * summation order of its fp32 NCHW sibling (elementwise.cu, pooling.cu), and rounds once
 * with ncsn_bf16_from_float, so the CPU backend, which follows the same rule, agrees bit for
 * bit wherever both perform the same float operations.
 *
 * Access pattern: in NHWC the C channels of a pixel are adjacent, so a thread owns 8
 * consecutive channels of one pixel (or 8 consecutive elements of a flat tensor) and moves
 * them with one 16-byte load or store (ncsn_cuda_load8_bf16 in cuda_launch.h). That needs
 * C % 8 == 0 and 16-byte aligned pointers, true for every CIFAR-10 activation (C = 128 or
 * 256, tensors from ncsn_alloc); otherwise (`vector` 0: odd C, offset pointers) the same
 * kernels move the elements one by one. Consecutive threads take consecutive channel groups,
 * then consecutive pixels, so a warp reads and writes contiguous memory. All loops are
 * grid-stride; nothing uses atomics, so every output is a fixed function of the input.
 *
 * Bytes per element (2 per bf16 read or write; windows re-read their neighbours from L1/L2,
 * which DRAM does not see): elu 4, add 6, accumulate 6, mean_pool2 2.5 per input element,
 * avg/max_pool5 4, resize 2 per output element plus the input once, bf16_from_nchw 6,
 * nchw_from_bf16 6.
 */
#include "kernels/cuda_launch.h"

/* ---- launch helpers ---- */

static int aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* 16-byte vectors are usable for a pixel-major tensor when every pixel's channel run starts
 * on a 16-byte boundary. */
static int nhwc_vector(int C, const void *a, const void *b) { return C % 8 == 0 && aligned16(a) && aligned16(b); }

/* Number of 8-channel groups of one pixel (the last one partial when C % 8 != 0). */
static inline NCSN_HD int channel_groups(int C) { return (C + 7) / 8; }

/* ---- elementwise: thread t owns elements [8t, 8t + 8) of the flat tensor ---- */

/* The number of elements of the 8-element chunk starting at i that lie inside n. */
static inline __device__ int chunk_count(size_t i, size_t n) { return n - i < 8 ? (int)(n - i) : 8; }

/* In place allowed: each chunk is read completely before it is written. */
static __global__ void elu_forward_bf16_kernel(ncsn_bf16 *out, const ncsn_bf16 *x, size_t n, int vector) {
    NCSN_CUDA_GRID_STRIDE_LOOP(t, (n + 7) / 8) {
        size_t i = 8 * t;
        int count = chunk_count(i, n);
        float v[8];
        ncsn_cuda_load8_f32(v, x + i, count, vector);
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = ncsn_elu(v[k]);
        ncsn_cuda_store8_f32(out + i, v, count, vector);
    }
}

static __global__ void add_bf16_kernel(ncsn_bf16 *out, const ncsn_bf16 *a, const ncsn_bf16 *b, size_t n, int vector) {
    NCSN_CUDA_GRID_STRIDE_LOOP(t, (n + 7) / 8) {
        size_t i = 8 * t;
        int count = chunk_count(i, n);
        float va[8], vb[8];
        ncsn_cuda_load8_f32(va, a + i, count, vector);
        ncsn_cuda_load8_f32(vb, b + i, count, vector);
#pragma unroll
        for (int k = 0; k < 8; k++) va[k] = va[k] + vb[k];
        ncsn_cuda_store8_f32(out + i, va, count, vector);
    }
}

static __global__ void accumulate_bf16_kernel(ncsn_bf16 *y, const ncsn_bf16 *x, size_t n, int vector) {
    NCSN_CUDA_GRID_STRIDE_LOOP(t, (n + 7) / 8) {
        size_t i = 8 * t;
        int count = chunk_count(i, n);
        float vy[8], vx[8];
        ncsn_cuda_load8_f32(vy, y + i, count, vector);
        ncsn_cuda_load8_f32(vx, x + i, count, vector);
#pragma unroll
        for (int k = 0; k < 8; k++) vy[k] += vx[k];
        ncsn_cuda_store8_f32(y + i, vy, count, vector);
    }
}

extern "C" void ncsn_cuda_elu_forward_bf16(cudaStream_t stream, ncsn_bf16 *out, const ncsn_bf16 *x, size_t n) {
    if (n == 0) return;
    int vector = aligned16(out) && aligned16(x);
    elu_forward_bf16_kernel<<<ncsn_cuda_grid((n + 7) / 8), NCSN_CUDA_THREADS, 0, stream>>>(out, x, n, vector);
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" void ncsn_cuda_add_bf16(cudaStream_t stream, ncsn_bf16 *out, const ncsn_bf16 *a, const ncsn_bf16 *b,
                                   size_t n) {
    if (n == 0) return;
    int vector = aligned16(out) && aligned16(a) && aligned16(b);
    add_bf16_kernel<<<ncsn_cuda_grid((n + 7) / 8), NCSN_CUDA_THREADS, 0, stream>>>(out, a, b, n, vector);
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" void ncsn_cuda_accumulate_bf16(cudaStream_t stream, ncsn_bf16 *y, const ncsn_bf16 *x, size_t n) {
    if (n == 0) return;
    int vector = aligned16(y) && aligned16(x);
    accumulate_bf16_kernel<<<ncsn_cuda_grid((n + 7) / 8), NCSN_CUDA_THREADS, 0, stream>>>(y, x, n, vector);
    CUDA_CHECK_LAUNCH(stream);
}

/* ---- pooling and resampling: thread t owns channel group t % groups of output pixel
 *      t / groups (pixel = (n * Ho + oy) * Wo + ox) ---- */

typedef struct {
    size_t n; /* example */
    int y, x; /* output row and column */
    int c;    /* first channel of the group */
    int count; /* channels of the group: 8, or fewer in the last group when C % 8 != 0 */
} nhwc_site;

static inline __device__ nhwc_site nhwc_site_of(size_t t, int C, int Ho, int Wo) {
    int groups = channel_groups(C);
    nhwc_site s;
    size_t pixel = t / (size_t)groups;
    s.c = (int)(t % (size_t)groups) * 8;
    s.count = C - s.c < 8 ? C - s.c : 8;
    s.x = (int)(pixel % (size_t)Wo);
    size_t rows = pixel / (size_t)Wo;
    s.y = (int)(rows % (size_t)Ho);
    s.n = rows / (size_t)Ho;
    return s;
}

/* Element offset of channel c of pixel (y, x) of example n in an [N, H, W, C] tensor. */
static inline __device__ size_t nhwc_offset(size_t n, int y, int x, int c, int H, int W, int C) {
    return (((size_t)n * H + y) * W + x) * (size_t)C + (size_t)c;
}

/* The official ConvMeanPool order, as pooling.cu: ((x00 + x10) + x01) + x11, then / 4. */
static __global__ void mean_pool2_forward_bf16_kernel(ncsn_bf16 *out, const ncsn_bf16 *in, int C, int H, int W,
                                                      size_t threads, int vector) {
    int Ho = H / 2, Wo = W / 2;
    NCSN_CUDA_GRID_STRIDE_LOOP(t, threads) {
        nhwc_site s = nhwc_site_of(t, C, Ho, Wo);
        const ncsn_bf16 *p = in + nhwc_offset(s.n, 2 * s.y, 2 * s.x, s.c, H, W, C);
        size_t down = (size_t)W * C, right = (size_t)C;
        float x00[8], x10[8], x01[8], x11[8], v[8];
        ncsn_cuda_load8_f32(x00, p, s.count, vector);
        ncsn_cuda_load8_f32(x10, p + down, s.count, vector);
        ncsn_cuda_load8_f32(x01, p + right, s.count, vector);
        ncsn_cuda_load8_f32(x11, p + down + right, s.count, vector);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float sum = x00[k];
            sum += x10[k];
            sum += x01[k];
            sum += x11[k];
            v[k] = sum / 4.0f;
        }
        ncsn_cuda_store8_f32(out + nhwc_offset(s.n, s.y, s.x, s.c, Ho, Wo, C), v, s.count, vector);
    }
}

#define POOL5_RADIUS 2
#define POOL5_AREA 25.0f /* count_include_pad=True: border windows still divide by 25 */

/* pooling.cu's box5_sum order (the CPU's separable box filter): each in-range row's taps
 * left to right from 0, then the row sums top to bottom from 0. */
static __global__ void avg_pool5_forward_bf16_kernel(ncsn_bf16 *out, const ncsn_bf16 *in, int C, int H, int W,
                                                     size_t threads, int vector) {
    NCSN_CUDA_GRID_STRIDE_LOOP(t, threads) {
        nhwc_site s = nhwc_site_of(t, C, H, W);
        float total[8];
#pragma unroll
        for (int k = 0; k < 8; k++) total[k] = 0.0f;
        for (int yy = s.y - POOL5_RADIUS; yy <= s.y + POOL5_RADIUS; yy++) {
            if (yy < 0 || yy >= H) continue;
            float row[8];
#pragma unroll
            for (int k = 0; k < 8; k++) row[k] = 0.0f;
#pragma unroll /* the row's 5 loads in flight together */
            for (int dx = -POOL5_RADIUS; dx <= POOL5_RADIUS; dx++) {
                int xx = s.x + dx;
                if (xx < 0 || xx >= W) continue;
                float tap[8];
                ncsn_cuda_load8_f32(tap, in + nhwc_offset(s.n, yy, xx, s.c, H, W, C), s.count, vector);
#pragma unroll
                for (int k = 0; k < 8; k++) row[k] += tap[k];
            }
#pragma unroll
            for (int k = 0; k < 8; k++) total[k] += row[k];
        }
#pragma unroll
        for (int k = 0; k < 8; k++) total[k] = total[k] / POOL5_AREA;
        ncsn_cuda_store8_f32(out + nhwc_offset(s.n, s.y, s.x, s.c, H, W, C), total, s.count, vector);
    }
}

/* pooling.cu's max_pool5_argmax rule per channel: the window's in-range elements in
 * row-major order, a later one replacing the candidate only if strictly greater, the first
 * NaN winning outright. The output is the selected element's bf16 bits, unrounded. Starting
 * from -inf's bits is the same as starting from the first element: if nothing is greater
 * than -inf, every element is -inf. */
#define BF16_NEG_INF ((ncsn_bf16)0xff80u)

static __global__ void max_pool5_forward_bf16_kernel(ncsn_bf16 *out, const ncsn_bf16 *in, int C, int H, int W,
                                                     size_t threads, int vector) {
    NCSN_CUDA_GRID_STRIDE_LOOP(t, threads) {
        nhwc_site s = nhwc_site_of(t, C, H, W);
        ncsn_bf16 selected[8];
        float best[8];
        unsigned nan_found = 0; /* bit k: channel k has met its first NaN */
#pragma unroll
        for (int k = 0; k < 8; k++) {
            selected[k] = BF16_NEG_INF;
            best[k] = -INFINITY;
        }
        for (int yy = s.y - POOL5_RADIUS; yy <= s.y + POOL5_RADIUS; yy++) {
            if (yy < 0 || yy >= H) continue;
#pragma unroll /* the row's 5 loads in flight together */
            for (int dx = -POOL5_RADIUS; dx <= POOL5_RADIUS; dx++) {
                int xx = s.x + dx;
                if (xx < 0 || xx >= W) continue;
                ncsn_bf16 tap[8];
                ncsn_cuda_load8_bf16(tap, in + nhwc_offset(s.n, yy, xx, s.c, H, W, C), s.count, vector);
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    float v = ncsn_float_from_bf16(tap[k]);
                    if (nan_found & (1u << k)) continue;
                    if (isnan(v)) {
                        nan_found |= 1u << k;
                        selected[k] = tap[k];
                    } else if (v > best[k]) {
                        best[k] = v;
                        selected[k] = tap[k];
                    }
                }
            }
        }
        ncsn_cuda_store8_bf16(out + nhwc_offset(s.n, s.y, s.x, s.c, H, W, C), selected, s.count, vector);
    }
}

/* ---- bilinear resize, align_corners=True: the taps and the expression of pooling.cu ---- */

static __global__ void resize_bilinear_forward_bf16_kernel(ncsn_bf16 *out, const ncsn_bf16 *in, int C, int H, int W,
                                                           int Ho, int Wo, size_t threads, int vector) {
    float scale_h = ncsn_cuda_align_corners_scale(H, Ho), scale_w = ncsn_cuda_align_corners_scale(W, Wo);
    NCSN_CUDA_GRID_STRIDE_LOOP(t, threads) {
        nhwc_site s = nhwc_site_of(t, C, Ho, Wo);
        ncsn_bilinear_taps ty = ncsn_cuda_bilinear_source(scale_h, s.y, H);
        ncsn_bilinear_taps tx = ncsn_cuda_bilinear_source(scale_w, s.x, W);
        float p00[8], p01[8], p10[8], p11[8], v[8];
        ncsn_cuda_load8_f32(p00, in + nhwc_offset(s.n, ty.i0, tx.i0, s.c, H, W, C), s.count, vector);
        ncsn_cuda_load8_f32(p01, in + nhwc_offset(s.n, ty.i0, tx.i1, s.c, H, W, C), s.count, vector);
        ncsn_cuda_load8_f32(p10, in + nhwc_offset(s.n, ty.i1, tx.i0, s.c, H, W, C), s.count, vector);
        ncsn_cuda_load8_f32(p11, in + nhwc_offset(s.n, ty.i1, tx.i1, s.c, H, W, C), s.count, vector);
#pragma unroll
        for (int k = 0; k < 8; k++)
            v[k] = ty.w0 * (tx.w0 * p00[k] + tx.w1 * p01[k]) + ty.w1 * (tx.w0 * p10[k] + tx.w1 * p11[k]);
        ncsn_cuda_store8_f32(out + nhwc_offset(s.n, s.y, s.x, s.c, Ho, Wo, C), v, s.count, vector);
    }
}

static size_t site_threads(int N, int C, int Ho, int Wo) { return (size_t)N * Ho * Wo * (size_t)channel_groups(C); }

/* The three pools share a signature: one launcher, given the kernel and the output size. */
typedef void (*pool_bf16_kernel)(ncsn_bf16 *out, const ncsn_bf16 *in, int C, int H, int W, size_t threads, int vector);

static void launch_pool_bf16(cudaStream_t stream, pool_bf16_kernel kernel, ncsn_bf16 *out, const ncsn_bf16 *in, int N,
                             int C, int H, int W, int Ho, int Wo) {
    size_t threads = site_threads(N, C, Ho, Wo);
    if (threads == 0) return;
    kernel<<<ncsn_cuda_grid(threads), NCSN_CUDA_THREADS, 0, stream>>>(out, in, C, H, W, threads,
                                                                     nhwc_vector(C, out, in));
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" void ncsn_cuda_mean_pool2_forward_bf16(cudaStream_t stream, ncsn_bf16 *out, const ncsn_bf16 *in, int N,
                                                  int C, int H, int W) {
    launch_pool_bf16(stream, mean_pool2_forward_bf16_kernel, out, in, N, C, H, W, H / 2, W / 2);
}

extern "C" void ncsn_cuda_avg_pool5_forward_bf16(cudaStream_t stream, ncsn_bf16 *out, const ncsn_bf16 *in, int N,
                                                 int C, int H, int W) {
    launch_pool_bf16(stream, avg_pool5_forward_bf16_kernel, out, in, N, C, H, W, H, W);
}

extern "C" void ncsn_cuda_max_pool5_forward_bf16(cudaStream_t stream, ncsn_bf16 *out, const ncsn_bf16 *in, int N,
                                                 int C, int H, int W) {
    launch_pool_bf16(stream, max_pool5_forward_bf16_kernel, out, in, N, C, H, W, H, W);
}

extern "C" void ncsn_cuda_resize_bilinear_forward_bf16(cudaStream_t stream, ncsn_bf16 *out, const ncsn_bf16 *in, int N,
                                                       int C, int H, int W, int Ho, int Wo) {
    size_t threads = site_threads(N, C, Ho, Wo);
    if (threads == 0) return;
    resize_bilinear_forward_bf16_kernel<<<ncsn_cuda_grid(threads), NCSN_CUDA_THREADS, 0, stream>>>(
        out, in, C, H, W, Ho, Wo, threads, nhwc_vector(C, out, in));
    CUDA_CHECK_LAUNCH(stream);
}

/* ---- layout boundaries: fp32 NCHW <-> bf16 NHWC ----
 * Both are batched transposes [C][S] <-> [S][C] (S = H*W) fused with the conversion.
 * The network's own boundaries have C = 3 (or 1, MNIST): there one thread per pixel moves
 * all C channels, so the fp32 side is read or written in runs of 32 consecutive floats per
 * warp and the bf16 side is one contiguous run of 32*C elements. Wider tensors go through
 * 32 x 32 shared-memory tiles (32 x 8 threads, padded against bank conflicts) as in
 * convert.cu, so both sides are accessed along their contiguous dimension. */

#define TRANSPOSE_TILE 32
#define TRANSPOSE_ROWS 8
#define TRANSPOSE_PIXEL_MAX_C 4 /* C up to this: one thread per pixel */

/* The scale_shift formula (elementwise.cu): x * scale + shift. */
static __global__ void bf16_from_nchw_pixel_kernel(ncsn_bf16 *out, const float *x, float scale, float shift, int C,
                                                   size_t S, size_t pixels) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, pixels) {
        size_t n = i / S, s = i % S;
        const float *src = x + n * (size_t)C * S + s;
        for (int c = 0; c < C; c++) out[i * C + c] = ncsn_bf16_from_float(src[(size_t)c * S] * scale + shift);
    }
}

static __global__ void bf16_from_nchw_tile_kernel(ncsn_bf16 *out, const float *x, float scale, float shift, int N,
                                                  int C, size_t S) {
    __shared__ float tile[TRANSPOSE_TILE][TRANSPOSE_TILE + 1];
    size_t s0 = (size_t)blockIdx.x * TRANSPOSE_TILE;
    int c0 = blockIdx.y * TRANSPOSE_TILE;
    for (int n = blockIdx.z; n < N; n += gridDim.z) {
        const float *src = x + (size_t)n * C * S;
        ncsn_bf16 *dst = out + (size_t)n * C * S;
        for (int r = threadIdx.y; r < TRANSPOSE_TILE; r += TRANSPOSE_ROWS) { /* read along s */
            int c = c0 + r;
            size_t s = s0 + threadIdx.x;
            if (c < C && s < S) tile[r][threadIdx.x] = src[(size_t)c * S + s] * scale + shift;
        }
        __syncthreads();
        for (int r = threadIdx.y; r < TRANSPOSE_TILE; r += TRANSPOSE_ROWS) { /* write along c */
            size_t s = s0 + r;
            int c = c0 + threadIdx.x;
            if (c < C && s < S) dst[s * C + c] = ncsn_bf16_from_float(tile[threadIdx.x][r]);
        }
        __syncthreads(); /* the next example reuses the tile */
    }
}

/* divide_by_sigma's true division (elementwise.cu), or the value itself without sigmas. */
static inline __device__ float from_bf16_over_sigma(ncsn_bf16 h, float sigma, int divide) {
    float v = ncsn_float_from_bf16(h);
    return divide ? v / sigma : v;
}

static __global__ void nchw_from_bf16_pixel_kernel(float *out, const ncsn_bf16 *x, const float *sigmas,
                                                   const int32_t *labels, int C, size_t S, size_t pixels) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, pixels) {
        size_t n = i / S, s = i % S;
        float sigma = sigmas ? sigmas[labels[n]] : 1.0f;
        float *dst = out + n * (size_t)C * S + s;
        for (int c = 0; c < C; c++) dst[(size_t)c * S] = from_bf16_over_sigma(x[i * C + c], sigma, sigmas != NULL);
    }
}

static __global__ void nchw_from_bf16_tile_kernel(float *out, const ncsn_bf16 *x, const float *sigmas,
                                                  const int32_t *labels, int N, int C, size_t S) {
    __shared__ float tile[TRANSPOSE_TILE][TRANSPOSE_TILE + 1];
    size_t s0 = (size_t)blockIdx.x * TRANSPOSE_TILE;
    int c0 = blockIdx.y * TRANSPOSE_TILE;
    for (int n = blockIdx.z; n < N; n += gridDim.z) {
        const ncsn_bf16 *src = x + (size_t)n * C * S;
        float *dst = out + (size_t)n * C * S;
        float sigma = sigmas ? sigmas[labels[n]] : 1.0f;
        for (int r = threadIdx.y; r < TRANSPOSE_TILE; r += TRANSPOSE_ROWS) { /* read along c */
            size_t s = s0 + r;
            int c = c0 + threadIdx.x;
            if (c < C && s < S) tile[r][threadIdx.x] = from_bf16_over_sigma(src[s * C + c], sigma, sigmas != NULL);
        }
        __syncthreads();
        for (int r = threadIdx.y; r < TRANSPOSE_TILE; r += TRANSPOSE_ROWS) { /* write along s */
            int c = c0 + r;
            size_t s = s0 + threadIdx.x;
            if (c < C && s < S) dst[(size_t)c * S + s] = tile[threadIdx.x][r];
        }
        __syncthreads();
    }
}

static dim3 transpose_grid(int N, int C, size_t S) {
    const unsigned max_z = 65535;
    unsigned z = (unsigned)N < max_z ? (unsigned)N : max_z;
    return dim3((unsigned)((S + TRANSPOSE_TILE - 1) / TRANSPOSE_TILE),
                (unsigned)((C + TRANSPOSE_TILE - 1) / TRANSPOSE_TILE), z);
}

extern "C" void ncsn_cuda_bf16_from_nchw(cudaStream_t stream, ncsn_bf16 *out, const float *x, float scale, float shift,
                                         int N, int C, int H, int W) {
    size_t S = (size_t)H * W, pixels = (size_t)N * S;
    if (pixels * (size_t)C == 0) return;
    if (C <= TRANSPOSE_PIXEL_MAX_C)
        bf16_from_nchw_pixel_kernel<<<ncsn_cuda_grid(pixels), NCSN_CUDA_THREADS, 0, stream>>>(out, x, scale, shift, C,
                                                                                             S, pixels);
    else
        bf16_from_nchw_tile_kernel<<<transpose_grid(N, C, S), dim3(TRANSPOSE_TILE, TRANSPOSE_ROWS), 0, stream>>>(
            out, x, scale, shift, N, C, S);
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" void ncsn_cuda_nchw_from_bf16(cudaStream_t stream, float *out, const ncsn_bf16 *x, const float *sigmas,
                                         const int32_t *labels, int N, int C, int H, int W) {
    size_t S = (size_t)H * W, pixels = (size_t)N * S;
    if (pixels * (size_t)C == 0) return;
    if (C <= TRANSPOSE_PIXEL_MAX_C)
        nchw_from_bf16_pixel_kernel<<<ncsn_cuda_grid(pixels), NCSN_CUDA_THREADS, 0, stream>>>(out, x, sigmas, labels, C,
                                                                                             S, pixels);
    else
        nchw_from_bf16_tile_kernel<<<transpose_grid(N, C, S), dim3(TRANSPOSE_TILE, TRANSPOSE_ROWS), 0, stream>>>(
            out, x, sigmas, labels, N, C, S);
    CUDA_CHECK_LAUNCH(stream);
}
