/* convert.cu: the layout-and-type conversions around BF16 convolutions (host/cuda_conv.c).
 *
 * The model keeps every tensor in fp32 NCHW (backend.h). For NCSN_PRECISION_BF16 the
 * convolution's inputs are converted on the fly into bf16 channels-last copies in the
 * shared workspace, which is the layout cuDNN's bf16 tensor-core engines want, and its
 * output comes back the same way. Both directions are a batched 2-D transpose
 * [B][C][S] <-> [B][S][C] (activations: B = N, S = H*W; filters: B = K, S = kh*kw, i.e.
 * KCRS <-> KRSC) fused with the type conversion, so going channels-last costs no extra
 * pass over the data: the conversion has to read and write every element anyway.
 *
 * Rounding: fp32 -> bf16 is round to nearest, ties to even (__float2bfloat16_rn), the
 * same as oneDNN's reorder on the CPU, so the CPU BF16 path is a bit-exact model of the
 * GPU's inputs. bf16 -> fp32 is exact.
 *
 * Tiles: 32 x 32 elements through shared memory (padded by one column against bank
 * conflicts), 32 x 8 threads, so both the read and the write walk 32 consecutive
 * elements per warp. The batch is a grid-stride loop over blockIdx.z (no 65535 limit).
 *
 * The bf16 NHWC inference convolution (conv2d_forward_bf16) uses the same transposes for
 * its weights (packing fp32 KCRS -> bf16 KRSC; unpacking for the fp32 fallback) and for the
 * fallback's activations (bf16 NHWC -> fp32 NCHW in, fp32 NCHW -> fp32 NHWC out), plus one
 * kernel of its own: the epilogue (bias, residual, ELU) of an unfused cuDNN output, which
 * rounds to bf16 once.
 */
#include <cuda_bf16.h>

#include "kernels/cuda_launch.h"

#define CONVERT_TILE 32
#define CONVERT_ROWS 8

/* dst[b][s][c] = src[b][c][s], rounded to bf16 when dst_is_bf16, else fp32 */
static __global__ void channels_first_to_last_kernel(void *dst, int dst_is_bf16, const float *src, int B, int C,
                                                     size_t S) {
    __shared__ float tile[CONVERT_TILE][CONVERT_TILE + 1];
    size_t s0 = (size_t)blockIdx.x * CONVERT_TILE;
    int c0 = blockIdx.y * CONVERT_TILE;
    for (int b = blockIdx.z; b < B; b += gridDim.z) {
        const float *in = src + (size_t)b * C * S;
        size_t base = (size_t)b * C * S;
        /* read along s: tile[c - c0][s - s0] */
        for (int r = threadIdx.y; r < CONVERT_TILE; r += CONVERT_ROWS) {
            int c = c0 + r;
            size_t s = s0 + threadIdx.x;
            if (c < C && s < S) tile[r][threadIdx.x] = in[(size_t)c * S + s];
        }
        __syncthreads();
        /* write along c */
        for (int r = threadIdx.y; r < CONVERT_TILE; r += CONVERT_ROWS) {
            size_t s = s0 + r;
            int c = c0 + threadIdx.x;
            if (c < C && s < S) {
                float v = tile[threadIdx.x][r];
                if (dst_is_bf16) ((__nv_bfloat16 *)dst)[base + s * C + c] = __float2bfloat16_rn(v);
                else ((float *)dst)[base + s * C + c] = v;
            }
        }
        __syncthreads(); /* the next batch element reuses the tile */
    }
}

/* dst[b][c][s] (=, or += when accumulate) src[b][s][c], src fp32 or bf16 */
static __global__ void channels_last_to_first_f32_kernel(float *dst, const void *src, int src_is_bf16, int B, int C,
                                                         size_t S, int accumulate) {
    __shared__ float tile[CONVERT_TILE][CONVERT_TILE + 1];
    size_t s0 = (size_t)blockIdx.x * CONVERT_TILE;
    int c0 = blockIdx.y * CONVERT_TILE;
    for (int b = blockIdx.z; b < B; b += gridDim.z) {
        size_t base = (size_t)b * C * S;
        /* read along c: tile[s - s0][c - c0] */
        for (int r = threadIdx.y; r < CONVERT_TILE; r += CONVERT_ROWS) {
            size_t s = s0 + r;
            int c = c0 + threadIdx.x;
            if (c < C && s < S) {
                size_t i = base + s * C + c;
                tile[r][threadIdx.x] = src_is_bf16 ? __bfloat162float(((const __nv_bfloat16 *)src)[i])
                                                   : ((const float *)src)[i];
            }
        }
        __syncthreads();
        /* write along s */
        for (int r = threadIdx.y; r < CONVERT_TILE; r += CONVERT_ROWS) {
            int c = c0 + r;
            size_t s = s0 + threadIdx.x;
            if (c < C && s < S) {
                float *o = dst + base + (size_t)c * S + s;
                float v = tile[threadIdx.x][r];
                *o = accumulate ? *o + v : v;
            }
        }
        __syncthreads();
    }
}

static dim3 convert_grid(int B, int C, size_t S) {
    const unsigned max_z = 65535;
    unsigned z = (unsigned)B < max_z ? (unsigned)B : max_z;
    return dim3((unsigned)((S + CONVERT_TILE - 1) / CONVERT_TILE), (unsigned)((C + CONVERT_TILE - 1) / CONVERT_TILE),
                z);
}

extern "C" void ncsn_cuda_channels_first_to_last_bf16(cudaStream_t stream, uint16_t *dst, const float *src, int B,
                                                      int C, size_t S) {
    if ((size_t)B * C * S == 0) return;
    channels_first_to_last_kernel<<<convert_grid(B, C, S), dim3(CONVERT_TILE, CONVERT_ROWS), 0, stream>>>(
        dst, 1, src, B, C, S);
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" void ncsn_cuda_channels_first_to_last_f32(cudaStream_t stream, float *dst, const float *src, int B, int C,
                                                     size_t S) {
    if ((size_t)B * C * S == 0) return;
    channels_first_to_last_kernel<<<convert_grid(B, C, S), dim3(CONVERT_TILE, CONVERT_ROWS), 0, stream>>>(
        dst, 0, src, B, C, S);
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" void ncsn_cuda_channels_last_to_first_f32(cudaStream_t stream, float *dst, const void *src,
                                                     int src_is_bf16, int B, int C, size_t S, int accumulate) {
    if ((size_t)B * C * S == 0) return;
    channels_last_to_first_f32_kernel<<<convert_grid(B, C, S), dim3(CONVERT_TILE, CONVERT_ROWS), 0, stream>>>(
        dst, src, src_is_bf16, B, C, S, accumulate);
    CUDA_CHECK_LAUNCH(stream);
}

/* ---- the epilogue of an unfused bf16 NHWC convolution ---- */

/* dst[i] = bf16(act(src[i] + bias[k] + residual[i])), k = i % K: NHWC, so the channel is the
 * fastest index. A memory-bound pass; the bias row is tiny and stays in L1. The sum is in
 * fp32 in backend.h's order, which the fused cuDNN graph follows too (conv + bias, then
 * + residual, then the ELU), and rounds once through the shared element math. */
static __global__ void nhwc_epilogue_bf16_kernel(ncsn_bf16 *dst, const float *src, const float *bias,
                                                 const ncsn_bf16 *residual, int elu, size_t n, int K) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) {
        float v = src[i];
        if (bias) v += bias[i % (size_t)K];
        if (residual) v += ncsn_float_from_bf16(residual[i]);
        if (elu) v = ncsn_elu(v);
        dst[i] = ncsn_bf16_from_float(v);
    }
}

extern "C" void ncsn_cuda_nhwc_epilogue_bf16(cudaStream_t stream, ncsn_bf16 *dst, const float *src, const float *bias,
                                             const ncsn_bf16 *residual, int elu, size_t rows, int K) {
    size_t n = rows * (size_t)K;
    if (n == 0) return;
    nhwc_epilogue_bf16_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(dst, src, bias, residual, elu, n,
                                                                                   K);
    CUDA_CHECK_LAUNCH(stream);
}
