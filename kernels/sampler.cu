/* sampler.cu: annealed Langevin dynamics (spec section 5.2), the final denoising step, and
 * the counter-based random fills (kernels/rng_math.h).
 *
 * Every random value is a pure function of (seed, purpose, example, step, index): element
 * i of example n uses example = example_offset + n, so a sample's chain does not depend on
 * the batch it runs in, on the grid shape, or on the device (uniforms are bit-identical
 * to the CPU backend; normals agree to float32 rounding of a float64 Box-Muller). A CUDA
 * graph replaying these kernels with a new `step` therefore draws fresh noise.
 */
#include "kernels/cuda_launch.h"

/* One kernel for both distributions: the branch is uniform across the grid. */
static __global__ void fill_kernel(float *out, size_t per_example, uint64_t seed, uint32_t purpose,
                                   uint32_t example_offset, uint32_t step, int normal, size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) {
        uint32_t example = example_offset + (uint32_t)(i / per_example);
        size_t index = i % per_example;
        out[i] = normal ? ncsn_rng_normal(seed, purpose, example, step, index)
                        : ncsn_rng_uniform(seed, purpose, example, step, index);
    }
}

static void launch_fill(cudaStream_t stream, float *out, int N, size_t per_example, uint64_t seed, uint32_t purpose,
                        uint32_t example_offset, uint32_t step, int normal) {
    size_t n = (size_t)N * per_example;
    if (n == 0) return;
    fill_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(out, per_example, seed, purpose, example_offset,
                                                                     step, normal, n);
    CUDA_CHECK_LAUNCH(stream);
}

extern "C" void ncsn_cuda_fill_normal(cudaStream_t stream, float *out, int N, size_t per_example, uint64_t seed,
                                      uint32_t purpose, uint32_t example_offset, uint32_t step) {
    launch_fill(stream, out, N, per_example, seed, purpose, example_offset, step, 1);
}

extern "C" void ncsn_cuda_fill_uniform(cudaStream_t stream, float *out, int N, size_t per_example, uint64_t seed,
                                       uint32_t purpose, uint32_t example_offset, uint32_t step) {
    launch_fill(stream, out, N, per_example, seed, purpose, example_offset, step, 0);
}

/* x <- x + a s + sqrt(2a) z with z drawn in place: the noise never touches memory. */
static __global__ void langevin_step_kernel(float *x, const float *score, size_t per_example, float a,
                                            float noise_scale, uint64_t seed, uint32_t example_offset, uint32_t step,
                                            size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) {
        uint32_t example = example_offset + (uint32_t)(i / per_example);
        float z = ncsn_rng_normal(seed, NCSN_RNG_LANGEVIN, example, step, i % per_example);
        x[i] = ncsn_langevin_element(x[i], score[i], z, a, noise_scale);
    }
}

extern "C" void ncsn_cuda_langevin_step(cudaStream_t stream, float *x, const float *score, int N, size_t per_example,
                                        float a, uint64_t seed, uint32_t example_offset, uint32_t step) {
    size_t n = (size_t)N * per_example;
    if (n == 0) return;
    /* sqrt(2a) once per step on the host: sqrtf is correctly rounded, so this is the same
     * float the CPU backend computes. */
    float noise_scale = sqrtf(2.0f * a);
    langevin_step_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(x, score, per_example, a, noise_scale,
                                                                              seed, example_offset, step, n);
    CUDA_CHECK_LAUNCH(stream);
}

static __global__ void denoise_step_kernel(float *x, const float *score, size_t n, float sigma_last_sq) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) x[i] = ncsn_denoise_element(x[i], score[i], sigma_last_sq);
}

extern "C" void ncsn_cuda_denoise_step(cudaStream_t stream, float *x, const float *score, size_t n,
                                       float sigma_last_sq) {
    if (n == 0) return;
    denoise_step_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(x, score, n, sigma_last_sq);
    CUDA_CHECK_LAUNCH(stream);
}
