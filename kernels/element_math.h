/* element_math.h: the per-element math of every custom kernel, shared by both backends.
 *
 * Each function is the body of one loop iteration / one CUDA thread. The CPU backend
 * calls these in OpenMP loops; the kernels/ .cu files call them from __global__ functions. Only
 * launches and reductions differ between backends, so the CPU tests exercise the math the
 * GPU runs. float32 throughout, as the official PyTorch code computes.
 */
#ifndef NCSN_ELEMENT_MATH_H
#define NCSN_ELEMENT_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ncsn/common.h"

/* bfloat16 storage: the top 16 bits of an IEEE fp32 (8 exponent bits, 7 mantissa bits). */
typedef uint16_t ncsn_bf16;

/* fp32 -> bf16, round to nearest, ties to even: what __float2bfloat16_rn, oneDNN's
 * f32 -> bf16 conversion and torch.bfloat16 do. NaN stays a (quiet) NaN; values that round
 * past the largest bf16 become inf. Integer math only, so both backends get the same bits. */
static inline NCSN_HD ncsn_bf16 ncsn_bf16_from_float(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (ncsn_bf16)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (ncsn_bf16)(u >> 16);
}

/* bf16 -> fp32, exact. */
static inline NCSN_HD float ncsn_float_from_bf16(ncsn_bf16 h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ELU with alpha = 1 (torch.nn.ELU()). */
static inline NCSN_HD float ncsn_elu(float x) { return x > 0.0f ? x : expm1f(x); }

/* ELU gradient from the forward output y: dELU/dx = 1 for x > 0, exp(x) = y + 1 otherwise. */
static inline NCSN_HD float ncsn_elu_grad_from_output(float dy, float y) {
    return y > 0.0f ? dy : dy * (y + 1.0f);
}

/* Hyper-parameters of one Adam update, as torch.optim.Adam takes them. `step` is the
 * 1-based update count after this update (torch's state['step']). */
typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    int amsgrad;
    long step;
} ncsn_adam_hparams;

/* Per-step scalars derived once on the host: torch computes
 *   bias_correction1 = 1 - beta1^t, bias_correction2 = 1 - beta2^t,
 *   step_size = lr / bias_correction1,
 *   denom = sqrt(v) / sqrt(bias_correction2) + eps. */
typedef struct {
    float step_size, sqrt_bias_correction2;
} ncsn_adam_scalars;

static inline ncsn_adam_scalars ncsn_adam_prepare(const ncsn_adam_hparams *hp) {
    double bc1 = 1.0 - pow((double)hp->beta1, (double)hp->step);
    double bc2 = 1.0 - pow((double)hp->beta2, (double)hp->step);
    ncsn_adam_scalars s;
    s.step_size = (float)(hp->lr / bc1);
    s.sqrt_bias_correction2 = (float)sqrt(bc2);
    return s;
}

/* One torch.optim.Adam element update (single-tensor, non-foreach path of torch 1.13):
 * weight decay is L2 added to the gradient (not AdamW). vmax may be NULL when !amsgrad. */
static inline NCSN_HD void ncsn_adam_element(float *p, float g, float *m, float *v, float *vmax,
                                             float beta1, float beta2, float eps, float weight_decay,
                                             int amsgrad, float step_size, float sqrt_bc2) {
    float param = *p;
    if (weight_decay != 0.0f) g = g + weight_decay * param;
    float mt = beta1 * *m + (1.0f - beta1) * g;
    float vt = beta2 * *v + (1.0f - beta2) * g * g;
    *m = mt;
    *v = vt;
    float second = vt;
    if (amsgrad) {
        float vm = *vmax > vt ? *vmax : vt;
        *vmax = vm;
        second = vm;
    }
    float denom = sqrtf(second) / sqrt_bc2 + eps;
    *p = param - step_size * (mt / denom);
}

/* EMA (ncsnv2 EMAHelper): shadow <- (1 - mu) * theta + mu * shadow. */
static inline NCSN_HD float ncsn_ema_element(float shadow, float theta, float mu) {
    return (1.0f - mu) * theta + mu * shadow;
}

/* DSM perturbation: x_noisy = x + sigma * z. */
static inline NCSN_HD float ncsn_noise_inject_element(float x, float sigma, float z) {
    return x + sigma * z;
}

/* sigma^2-weighted DSM residual. With target = -z / sigma,
 *   (s - target)^2 * sigma^2 = (sigma * s + z)^2.
 * The per-example loss is 0.5 * sum over dims of the square of this residual. */
static inline NCSN_HD float ncsn_dsm_residual(float s, float z, float sigma) { return sigma * s + z; }

/* d/ds of  (1/N) * 0.5 * (sigma s + z)^2  =  sigma * (sigma s + z) / N. */
static inline NCSN_HD float ncsn_dsm_grad(float s, float z, float sigma, float inv_batch) {
    return sigma * (sigma * s + z) * inv_batch;
}

/* Annealed Langevin update with the official code's convention:
 *   x <- x + a * s + sqrt(2 a) * z,   a = step_lr * (sigma_i / sigma_L)^2. */
static inline NCSN_HD float ncsn_langevin_element(float x, float s, float z, float a, float noise_scale) {
    return x + a * s + noise_scale * z;
}

/* torch.nn.utils.clip_grad_norm_(max_norm, norm_type=2) as one factor from the squared
 * norm: every gradient is multiplied by min(1, max_norm / (norm + 1e-6)). Computed where
 * the norm lives (backend memory), so clipping needs no host round trip. */
static inline NCSN_HD float ncsn_clip_coef(float norm2, float max_norm) {
    float coef = max_norm / (sqrtf(norm2) + 1e-6f);
    return coef < 1.0f ? coef : 1.0f;
}

/* score_sde LangevinCorrector (VE: alpha = 1): the step size a = 2 (snr |z| / |s|)^2, with
 * |s| and |z| each the batch MEAN of the per-example norms. norms2 holds the squared
 * per-example norms of the score (first N) and of the noise (next N). One thread's work
 * on the device (a handful of values per example). A zero or non-finite score norm gives
 * an infinite or NaN step, so the chain turns non-finite and `ncsn sample` stops on it. */
static inline NCSN_HD float ncsn_pc_corrector_step_size(const float *norms2, int N, double snr) {
    double grad = 0.0, noise = 0.0;
    for (int n = 0; n < N; n++) {
        grad += sqrt((double)norms2[n]);
        noise += sqrt((double)norms2[N + n]);
    }
    double ratio = snr * (noise / N) / (grad / N);
    return (float)(2.0 * ratio * ratio);
}

/* Final (Tweedie) denoising: x <- x + sigma_L^2 * s(x, L-1). */
static inline NCSN_HD float ncsn_denoise_element(float x, float s, float sigma_last_sq) {
    return x + sigma_last_sq * s;
}

/* Uniform dequantisation (v1 always, v2 data.uniform_dequantization):
 *   x <- x * 255/256 + u / 256,  u ~ U[0, 1). */
static inline NCSN_HD float ncsn_dequantize_element(float x, float u) {
    return x * (255.0f / 256.0f) + u * (1.0f / 256.0f);
}

/* logit_transform (lambda = 1e-6): logit(lambda + (1 - 2 lambda) x). */
static inline NCSN_HD float ncsn_logit_element(float x) {
    float y = 1e-6f + (1.0f - 2e-6f) * x;
    return logf(y) - log1pf(-y);
}

static inline NCSN_HD float ncsn_clamp01_element(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

/* InstanceNorm++ output for one element, given the per-(n,c) statistics:
 *   h = (x - mean) * rstd + alpha * mhat;  out = gamma * h + beta. */
static inline NCSN_HD float ncsn_in_plus_element(float x, float mean, float rstd, float mhat, float gamma,
                                                 float alpha, float beta) {
    return gamma * ((x - mean) * rstd + alpha * mhat) + beta;
}

/* The same, followed by the ELU when `elu` (instance_norm_plus_forward's fused pair). */
static inline NCSN_HD float ncsn_in_plus_elu_element(float x, float mean, float rstd, float mhat, float gamma,
                                                     float alpha, float beta, int elu) {
    float y = ncsn_in_plus_element(x, mean, rstd, mhat, gamma, alpha, beta);
    return elu ? ncsn_elu(y) : y;
}

#endif /* NCSN_ELEMENT_MATH_H */
