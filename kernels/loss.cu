/* loss.cu: the denoising score matching objective (spec section 4.1,
 * anneal_dsm_score_estimation with anneal_power 2): the perturbation of the data, and the
 * per-example loss with the gradient of the batch mean.
 *
 *   x_noisy = x + sigma_n z                   (noise_inject)
 *   loss_n  = 0.5 * sum_d (sigma_n s + z)^2   (dsm_loss; the trainer averages over n)
 *   dscore  = sigma_n (sigma_n s + z) / N
 */
#include "kernels/cuda_launch.h"

static __global__ void noise_inject_kernel(float *x_noisy, const float *x, const float *z, const float *sigmas,
                                           const int32_t *labels, size_t per_example, size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) {
        float sigma = sigmas[labels[i / per_example]];
        x_noisy[i] = ncsn_noise_inject_element(x[i], sigma, z[i]);
    }
}

extern "C" void ncsn_cuda_noise_inject(cudaStream_t stream, float *x_noisy, const float *x, const float *z,
                                       const float *sigmas, const int32_t *labels, int N, size_t per_example) {
    size_t n = (size_t)N * per_example;
    if (n == 0) return;
    noise_inject_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(x_noisy, x, z, sigmas, labels, per_example,
                                                                             n);
    CUDA_CHECK_LAUNCH(stream);
}

/* One block per example: the loss is a reduction over the example, the gradient is
 * elementwise and written in the same pass over score and z. */
static __global__ void dsm_loss_kernel(float *loss_per_example, float *dscore, const float *score, const float *z,
                                       const float *sigmas, const int32_t *labels, size_t per_example,
                                       float inv_batch) {
    size_t offset = (size_t)blockIdx.x * per_example;
    float sigma = sigmas[labels[blockIdx.x]];
    double squares = 0.0;
    for (size_t d = threadIdx.x; d < per_example; d += blockDim.x) {
        float s = score[offset + d], zd = z[offset + d];
        float r = ncsn_dsm_residual(s, zd, sigma);
        squares += (double)r * (double)r;
        if (dscore) dscore[offset + d] = ncsn_dsm_grad(s, zd, sigma, inv_batch);
    }
    squares = ncsn_cuda_block_sum(squares);
    if (threadIdx.x == 0) loss_per_example[blockIdx.x] = (float)(0.5 * squares);
}

extern "C" void ncsn_cuda_dsm_loss(cudaStream_t stream, float *loss_per_example, float *dscore, const float *score,
                                   const float *z, const float *sigmas, const int32_t *labels, int N,
                                   size_t per_example) {
    if (N == 0) return;
    dsm_loss_kernel<<<(unsigned)N, NCSN_CUDA_REDUCE_THREADS, 0, stream>>>(loss_per_example, dscore, score, z, sigmas,
                                                                          labels, per_example, 1.0f / (float)N);
    CUDA_CHECK_LAUNCH(stream);
}
