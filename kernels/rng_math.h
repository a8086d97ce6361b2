/* rng_math.h: Philox-4x32-10 counter-based generator, shared by the CPU and CUDA backends.
 *
 * A draw is a pure function of (seed, stream, index): no state, no dependence on thread
 * layout, so a CUDA grid of any shape, an OpenMP loop of any schedule, and a batch of any
 * size produce the same numbers. The 128-bit Philox counter is
 *     { index / 4, step, example, purpose }
 * and the 64-bit key is the seed. Each Philox block yields four 32-bit words, so element
 * `index` takes lane index % 4 of block index / 4.
 *
 * Uniform draws are bit-identical on every device (integer arithmetic only). Normal draws
 * use Box-Muller in float64 so the host libm and CUDA's log/sincos agree to well under one
 * float32 ulp after rounding; they are identical on one device across runs.
 *
 * Reference for the round function: Salmon et al., "Parallel random numbers: as easy as
 * 1, 2, 3" (SC'11); constants are the published Philox4x32 multipliers and Weyl keys.
 */
#ifndef NCSN_RNG_MATH_H
#define NCSN_RNG_MATH_H

#include <math.h>
#include <stdint.h>

#include "ncsn/common.h"

/* What a stream of random numbers is for. Keeping purposes apart means, for example, that
 * training noise and dequantisation noise of the same example never coincide. */
enum {
    NCSN_RNG_INIT = 1,          /* parameter initialisation (step = tensor index) */
    NCSN_RNG_LABELS = 2,        /* training level indices (example = batch slot) */
    NCSN_RNG_NOISE = 3,         /* DSM perturbation z */
    NCSN_RNG_DEQUANT = 4,       /* uniform dequantisation */
    NCSN_RNG_FLIP = 5,          /* random horizontal flip */
    NCSN_RNG_SHUFFLE = 6,       /* data order */
    NCSN_RNG_SAMPLER_INIT = 7,  /* sampler initial state */
    NCSN_RNG_LANGEVIN = 8,      /* Langevin noise (step = global step counter) */
    NCSN_RNG_SLICE = 9,         /* sliced score matching projections */
    NCSN_RNG_INPAINT = 10,      /* inpainting re-noised reference */
    NCSN_RNG_TOY = 11,          /* toy data sets */
    /* The test-loss evaluations (train.h): the training streams' counterparts, with
     * step = the evaluation's index, so evaluating never draws from a training stream. */
    NCSN_RNG_TEST_LABELS = 12,
    NCSN_RNG_TEST_NOISE = 13,
    NCSN_RNG_TEST_DEQUANT = 14
};

typedef struct {
    uint32_t v[4];
} ncsn_philox_u32x4;

static inline NCSN_HD void ncsn_mulhilo32(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo) {
    uint64_t product = (uint64_t)a * (uint64_t)b;
    *hi = (uint32_t)(product >> 32);
    *lo = (uint32_t)product;
}

/* Philox-4x32 with 10 rounds. */
static inline NCSN_HD ncsn_philox_u32x4 ncsn_philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2,
                                                            uint32_t c3, uint32_t k0, uint32_t k1) {
    const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
    const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    for (int round = 0; round < 10; round++) {
        uint32_t hi0, lo0, hi1, lo1;
        ncsn_mulhilo32(M0, c0, &hi0, &lo0);
        ncsn_mulhilo32(M1, c2, &hi1, &lo1);
        uint32_t n0 = hi1 ^ c1 ^ k0;
        uint32_t n1 = lo1;
        uint32_t n2 = hi0 ^ c3 ^ k1;
        uint32_t n3 = lo0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += W0;
        k1 += W1;
    }
    ncsn_philox_u32x4 r;
    r.v[0] = c0; r.v[1] = c1; r.v[2] = c2; r.v[3] = c3;
    return r;
}

static inline NCSN_HD ncsn_philox_u32x4 ncsn_rng_block(uint64_t seed, uint32_t purpose, uint32_t example,
                                                       uint32_t step, uint64_t block) {
    /* The block index gets 32 bits; tensors larger than 2^34 elements per example are
     * outside this engine's range. */
    return ncsn_philox4x32_10((uint32_t)block, step, example, purpose, (uint32_t)seed,
                              (uint32_t)(seed >> 32));
}

/* Raw 32-bit draw number `index` of the stream. */
static inline NCSN_HD uint32_t ncsn_rng_u32(uint64_t seed, uint32_t purpose, uint32_t example,
                                            uint32_t step, uint64_t index) {
    ncsn_philox_u32x4 b = ncsn_rng_block(seed, purpose, example, step, index >> 2);
    return b.v[index & 3];
}

/* Uniform in [0, 1) with 24 random bits: exactly representable, bit-identical everywhere. */
static inline NCSN_HD float ncsn_u32_to_uniform(uint32_t u) {
    return (float)(u >> 8) * (1.0f / 16777216.0f);
}

static inline NCSN_HD float ncsn_rng_uniform(uint64_t seed, uint32_t purpose, uint32_t example,
                                             uint32_t step, uint64_t index) {
    return ncsn_u32_to_uniform(ncsn_rng_u32(seed, purpose, example, step, index));
}

/* Standard normal draw number `index`. Lanes (0,1) and (2,3) of a block form Box-Muller
 * pairs: lane 0/2 takes the cosine, lane 1/3 the sine. */
static inline NCSN_HD float ncsn_rng_normal(uint64_t seed, uint32_t purpose, uint32_t example,
                                            uint32_t step, uint64_t index) {
    ncsn_philox_u32x4 b = ncsn_rng_block(seed, purpose, example, step, index >> 2);
    unsigned lane = (unsigned)(index & 3);
    uint32_t a = b.v[lane & 2u], c = b.v[(lane & 2u) + 1u];
    /* u in (0, 1]: never log(0). 32 bits of resolution, computed in double. */
    double u = ((double)a + 1.0) * (1.0 / 4294967296.0);
    double v = (double)c * (1.0 / 4294967296.0);
    double radius = sqrt(-2.0 * log(u));
    double angle = 6.283185307179586476925 * v;
    return (float)((lane & 1u) ? radius * sin(angle) : radius * cos(angle));
}

#endif /* NCSN_RNG_MATH_H */
