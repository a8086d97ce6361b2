/* sigmas.h: choosing the noise schedule from the data (NCSNv2, Song & Ermon 2020, §3).
 *
 * What it is: the three computations behind `ncsn sigmas`:
 *   Technique 1  sigma_1 = the maximum pairwise Euclidean distance of the training set
 *                (pixels in [0, 1], images flattened), computed EXACTLY: blocked GEMMs on the
 *                backend give every squared distance as |a|^2 + |b|^2 - 2 a.b in float32,
 *                and every pair whose float32 estimate could be the maximum (a rigorous
 *                rounding bound) is recomputed in float64 on the host.
 *   Technique 2  the ratio gamma of the geometric schedule from
 *                Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) = 0.5,
 *                and so the number of levels L from sigma_1 down to sigma_L.
 *   Technique 4  for T Langevin steps per level, the step size eps that brings
 *                s_T^2 / sigma^2 = (1 - eps/sL^2)^(2T) (gamma^2 - 2eps/(sL^2 - sL^2 (1 - eps/sL^2)^2))
 *                                  + 2eps/(sL^2 - sL^2 (1 - eps/sL^2)^2)
 *                closest to 1 (the expression has a minimum above 1 for the shipped
 *                settings, so "closest" is the minimiser).
 * What it is not: a data loader (the command reads the data through data.h).
 * Units: distances in the [0, 1] pixel scale the models see before their 2x - 1.
 */
#ifndef NCSN_SIGMAS_H
#define NCSN_SIGMAS_H

#include <stddef.h>

#include "ncsn/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    double distance;        /* exact max Euclidean distance (float64 over the float32 data) */
    long i, j;              /* the pair (row indices, i < j) */
    long candidates;        /* pairs re-checked in float64 */
    double gemm_seconds;    /* time in the blocked GEMMs */
} ncsn_max_distance;

/* x: N rows of D floats in HOST memory. Rows are uploaded to `be` and multiplied in blocks
 * of `block` rows (1024 is a good size). N >= 2. The backend's precision is forced to
 * FP32 for the call: the rounding bound assumes IEEE float32 products. */
ncsn_max_distance ncsn_max_pairwise_distance(ncsn_backend *be, const float *x, long N, long D, int block);

/* Standard normal CDF, via erfc for accuracy in the tails. */
double ncsn_normal_cdf(double x);
/* Phi(sqrt(2D)(gamma-1) + 3gamma) - Phi(sqrt(2D)(gamma-1) - 3gamma). */
double ncsn_gamma_criterion(double gamma, double D);
/* The gamma > 1 where the criterion equals 0.5 (bisection to float64 resolution); NAN when
 * there is none (D <= 4: the criterion stays above 0.5 for every gamma). */
double ncsn_solve_gamma(double D);
/* Smallest L with sigma_1 / gamma^(L-1) <= sigma_L (levels from sigma_begin to sigma_end). */
int ncsn_num_levels(double sigma_begin, double sigma_end, double gamma);
/* s_T^2 / sigma^2 of Technique 4 for step size eps (0 < eps < sigma_end^2). */
double ncsn_langevin_variance_ratio(double eps, double gamma, double sigma_end, int T);
/* The eps in (0, sigma_end^2) minimising |ratio - 1|; writes the ratio it reaches. */
double ncsn_solve_step_lr(double gamma, double sigma_end, int T, double *ratio_out);

#ifdef __cplusplus
}
#endif

#endif /* NCSN_SIGMAS_H */
