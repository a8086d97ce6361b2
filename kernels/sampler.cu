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

/* x <- x + a s + sqrt(2a) z with z drawn in place: the noise never touches memory. The
 * grid-stride body of both Langevin kernels (by-value scalars, and the chain's). */
static __device__ __forceinline__ void langevin_update(float *x, const float *score, size_t per_example, float a,
                                                       float noise_scale, uint64_t seed, uint32_t example_offset,
                                                       uint32_t step, size_t n) {
    NCSN_CUDA_GRID_STRIDE_LOOP(i, n) {
        uint32_t example = example_offset + (uint32_t)(i / per_example);
        float z = ncsn_rng_normal(seed, NCSN_RNG_LANGEVIN, example, step, i % per_example);
        x[i] = ncsn_langevin_element(x[i], score[i], z, a, noise_scale);
    }
}

static __global__ void langevin_step_kernel(float *x, const float *score, size_t per_example, float a,
                                            float noise_scale, uint64_t seed, uint32_t example_offset, uint32_t step,
                                            size_t n) {
    langevin_update(x, score, per_example, a, noise_scale, seed, example_offset, step, n);
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

/* ---- the chain ops: the per-step scalars come from device memory ----
 * A CUDA graph freezes by-value kernel arguments, so a step captured once and replayed
 * reads what changes from step to step (the step counter, hence the level, a_i and the
 * noise key) from the chain state and the schedule table. The level is checked on the
 * device: a level past the table is a sampler bug, and __trap() turns it into a launch
 * failure at the next synchronising call instead of a read past the table. */
static __device__ __forceinline__ int chain_level(const uint32_t *state, uint32_t steps_per_level, int L) {
    uint32_t level = state[NCSN_CHAIN_STEP] / steps_per_level;
    if (level >= (uint32_t)L) __trap();
    return (int)level;
}

static __global__ void langevin_step_chain_kernel(float *x, const float *score, size_t per_example,
                                                  const float *schedule, int L, const uint32_t *state,
                                                  uint32_t steps_per_level, uint64_t seed, size_t n) {
    const int level = chain_level(state, steps_per_level, L);
    langevin_update(x, score, per_example, schedule[2 * level], schedule[2 * level + 1], seed,
                    state[NCSN_CHAIN_FIRST_INDEX], state[NCSN_CHAIN_STEP], n);
}

extern "C" void ncsn_cuda_langevin_step_chain(cudaStream_t stream, float *x, const float *score, int N,
                                              size_t per_example, const float *schedule, int L, const uint32_t *state,
                                              uint32_t steps_per_level, uint64_t seed) {
    size_t n = (size_t)N * per_example;
    if (n == 0) return;
    langevin_step_chain_kernel<<<ncsn_cuda_grid(n), NCSN_CUDA_THREADS, 0, stream>>>(
        x, score, per_example, schedule, L, state, steps_per_level, seed, n);
    CUDA_CHECK_LAUNCH(stream);
}

static __global__ void chain_labels_kernel(int32_t *labels, int N, const int32_t *level_labels, int L,
                                           const uint32_t *state, uint32_t steps_per_level) {
    const int32_t label = level_labels[chain_level(state, steps_per_level, L)];
    NCSN_CUDA_GRID_STRIDE_LOOP(i, (size_t)N) labels[i] = label;
}

extern "C" void ncsn_cuda_chain_labels(cudaStream_t stream, int32_t *labels, int N, const int32_t *level_labels,
                                       int L, const uint32_t *state, uint32_t steps_per_level) {
    if (N == 0) return;
    chain_labels_kernel<<<ncsn_cuda_grid((size_t)N), NCSN_CUDA_THREADS, 0, stream>>>(labels, N, level_labels, L,
                                                                                      state, steps_per_level);
    CUDA_CHECK_LAUNCH(stream);
}

/* One thread: the last node of a replayed step, after every kernel that read the state. */
static __global__ void chain_advance_kernel(uint32_t *state) { state[NCSN_CHAIN_STEP] += 1u; }

extern "C" void ncsn_cuda_chain_advance(cudaStream_t stream, uint32_t *state) {
    chain_advance_kernel<<<1, 1, 0, stream>>>(state);
    CUDA_CHECK_LAUNCH(stream);
}

/* ---- the PC corrector's step size, on the device ---- */

/* One block per example: a block-wide sum of squares in double (ncsn_cuda_block_sum). */
static __global__ void row_sum_squares_kernel(float *out, const float *x, size_t per_example) {
    const float *row = x + (size_t)blockIdx.x * per_example;
    double sum = 0.0;
    for (size_t i = threadIdx.x; i < per_example; i += blockDim.x) sum += (double)row[i] * (double)row[i];
    sum = ncsn_cuda_block_sum(sum);
    if (threadIdx.x == 0) out[blockIdx.x] = (float)sum;
}

extern "C" void ncsn_cuda_row_sum_squares(cudaStream_t stream, float *out, const float *x, int N,
                                          size_t per_example) {
    if (N == 0) return;
    row_sum_squares_kernel<<<(unsigned)N, NCSN_CUDA_REDUCE_THREADS, 0, stream>>>(out, x, per_example);
    CUDA_CHECK_LAUNCH(stream);
}

/* One thread: the batch means of 2N norms (ncsn_pc_corrector_step_size), as langevin_step_chain's
 * one-level schedule (a, sqrt(2a)). */
static __global__ void pc_step_size_kernel(float *out, const float *norms2, int N, double snr) {
    float a = ncsn_pc_corrector_step_size(norms2, N, snr);
    out[0] = a;
    out[1] = sqrtf(2.0f * a);
}

extern "C" void ncsn_cuda_pc_step_size(cudaStream_t stream, float *out, const float *norms2, int N, double snr) {
    pc_step_size_kernel<<<1, 1, 0, stream>>>(out, norms2, N, snr);
    CUDA_CHECK_LAUNCH(stream);
}
