/* sigmas.c: `ncsn sigmas`, the NCSNv2 schedule techniques computed from the data (sigmas.h).
 *
 * Song & Ermon, "Improved Techniques for Training Score-Based Generative Models" (2020):
 * Technique 1 (sigma_1 = max pairwise distance), 2 (geometric ratio gamma from the Gaussian
 * overlap criterion), 4 (the Langevin step size for a given T). The official NCSNv2 configs
 * were chosen with these rules and then rounded (CIFAR-10: sigma_1 = 50, L = 232, T = 5,
 * eps = 6.2e-6); the command prints what the rules give for the data at hand.
 */
#include "ncsn/sigmas.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ncsn/cli.h"
#include "ncsn/config.h"
#include "ncsn/data.h"
#include "ncsn/io.h"
#include "ncsn/progress.h"

/* ---- Technique 1: the exact maximum pairwise distance ------------------------------ */

typedef struct {
    long i, j;
    double estimate, bound; /* float32-GEMM estimate of the squared distance, and its error bound */
} distance_candidate;

typedef struct {
    distance_candidate *items;
    long count, capacity;
} candidate_list;

/* Drops every candidate that can no longer be the maximum. */
static void candidates_prune(candidate_list *list, double best_lower) {
    long kept = 0;
    for (long k = 0; k < list->count; k++)
        if (list->items[k].estimate + list->items[k].bound >= best_lower) list->items[kept++] = list->items[k];
    list->count = kept;
}

static void candidates_push(candidate_list *list, double best_lower, long i, long j, double estimate,
                            double bound) {
    if (list->count == list->capacity) {
        candidates_prune(list, best_lower);
        if (list->count == list->capacity || list->count * 2 > list->capacity) {
            list->capacity = list->capacity ? 2 * list->capacity : 1024;
            distance_candidate *grown = realloc(list->items, (size_t)list->capacity * sizeof *grown);
            if (!grown) ncsn_die("out of host memory for %ld distance candidates", list->capacity);
            list->items = grown;
        }
    }
    distance_candidate c = {i, j, estimate, bound};
    list->items[list->count++] = c;
}

ncsn_max_distance ncsn_max_pairwise_distance(ncsn_backend *be, const float *x, long N, long D, int block) {
    NCSN_CHECKF(N >= 2, "max pairwise distance needs at least 2 examples (got %ld)", N);
    NCSN_CHECK(D >= 1 && block >= 1);
    NCSN_CHECKF((double)D * ldexp(1.0, -24) < 0.01, "data dimension %ld is too large for the float32 bound", D);
    /* The rounding bound below is for IEEE float32 products; TF32 or BF16 GEMMs would need
     * a bound 2^13 to 2^16 times wider. */
    ncsn_precision saved_precision = be->precision;
    be->precision = NCSN_PRECISION_FP32;

    /* Squared norms in float64: exact up to 1 ulp of float64 for float32 inputs. */
    double *norm2 = ncsn_xmalloc((size_t)N * sizeof *norm2);
    double *norm = ncsn_xmalloc((size_t)N * sizeof *norm);
#pragma omp parallel for schedule(static)
    for (long i = 0; i < N; i++) {
        const float *row = x + (size_t)i * (size_t)D;
        double s = 0.0;
        for (long d = 0; d < D; d++) s += (double)row[d] * (double)row[d];
        norm2[i] = s;
        norm[i] = sqrt(s);
    }

    size_t bytes = (size_t)N * (size_t)D * sizeof(float);
    float *x_dev = ncsn_alloc(be, bytes);
    if (!x_dev) ncsn_die("cannot allocate %.1f MB on %s for the data (use --subset)", bytes / 1e6, be->ops->name);
    ncsn_copy_to_device(be, x_dev, x, bytes);
    float *gram_dev = ncsn_alloc(be, (size_t)block * (size_t)block * sizeof(float));
    float *gram = ncsn_xmalloc((size_t)block * (size_t)block * sizeof(float));

    /* Error of a float32 dot product of length D in any summation order (with or without
     * FMA): |fl(a.b) - a.b| <= gamma_D sum|a_k b_k| <= gamma_D |a| |b|, gamma_D = Du/(1-Du)
     * (Higham, Accuracy and Stability of Numerical Algorithms, §3.1). The squared distance
     * carries 2 a.b, plus a float64 rounding margin for the sum of three terms. */
    const double u = ldexp(1.0, -24);
    const double gamma_D = (double)D * u / (1.0 - (double)D * u);

    candidate_list list = {0};
    double best_lower = -DBL_MAX; /* the max is at least this (a lower bound of some pair) */
    double t0 = ncsn_now();
    for (long i0 = 0; i0 < N; i0 += block) {
        int bi = (int)(N - i0 < block ? N - i0 : block);
        for (long j0 = i0; j0 < N; j0 += block) {
            int bj = (int)(N - j0 < block ? N - j0 : block);
            ncsn_gemm_nt(be, gram_dev, x_dev + (size_t)i0 * (size_t)D, x_dev + (size_t)j0 * (size_t)D, bi, bj,
                         (int)D);
            ncsn_copy_to_host(be, gram, gram_dev, (size_t)bi * (size_t)bj * sizeof(float));
            for (int a = 0; a < bi; a++) {
                long i = i0 + a;
                int b_first = j0 == i0 ? a + 1 : 0; /* each unordered pair once, never i == j */
                for (int b = b_first; b < bj; b++) {
                    long j = j0 + b;
                    double estimate = norm2[i] + norm2[j] - 2.0 * (double)gram[(size_t)a * (size_t)bj + (size_t)b];
                    double bound = 2.0 * gamma_D * norm[i] * norm[j] + 1e-12 * (norm2[i] + norm2[j]);
                    if (estimate + bound < best_lower) continue;
                    if (estimate - bound > best_lower) best_lower = estimate - bound;
                    candidates_push(&list, best_lower, i, j, estimate, bound);
                }
            }
        }
    }
    ncsn_max_distance result = {0};
    result.gemm_seconds = ncsn_now() - t0;
    candidates_prune(&list, best_lower);

    /* Re-check the survivors exactly; the true maximum is among them by construction. */
    double best = -1.0;
    for (long k = 0; k < list.count; k++) {
        const float *a = x + (size_t)list.items[k].i * (size_t)D;
        const float *b = x + (size_t)list.items[k].j * (size_t)D;
        double s = 0.0;
        for (long d = 0; d < D; d++) {
            double diff = (double)a[d] - (double)b[d];
            s += diff * diff;
        }
        if (s > best) {
            best = s;
            result.i = list.items[k].i;
            result.j = list.items[k].j;
        }
    }
    NCSN_CHECK(list.count >= 1);
    result.distance = sqrt(best);
    result.candidates = list.count;

    free(list.items);
    free(gram);
    ncsn_free(be, gram_dev);
    ncsn_free(be, x_dev);
    free(norm);
    free(norm2);
    be->precision = saved_precision;
    return result;
}

/* ---- Technique 2: the ratio gamma and the number of levels ------------------------- */

double ncsn_normal_cdf(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }

double ncsn_gamma_criterion(double gamma, double D) {
    double shift = sqrt(2.0 * D) * (gamma - 1.0);
    return ncsn_normal_cdf(shift + 3.0 * gamma) - ncsn_normal_cdf(shift - 3.0 * gamma);
}

double ncsn_solve_gamma(double D) {
    NCSN_CHECK(D >= 1.0);
    /* The criterion is Phi(3) - Phi(-3) = 0.997 at gamma = 1. The window
     * [shift - 3 gamma, shift + 3 gamma] moves right with shift = sqrt(2D)(gamma - 1); when
     * sqrt(2D) > 3 (D >= 5) it outruns the growing half-width and the criterion falls to 0
     * monotonically, so bisection finds the one root. For D <= 4 (2-D toy data) the window
     * keeps covering the mass and no gamma reaches 0.5: the technique does not apply. */
    if (sqrt(2.0 * D) <= 3.0) return NAN;
    double lo = 1.0, hi = 2.0;
    while (ncsn_gamma_criterion(hi, D) > 0.5) {
        lo = hi;
        hi *= 2.0;
        if (hi > 1e12) return NAN;
    }
    for (int it = 0; it < 200 && hi - lo > 4.0 * DBL_EPSILON * hi; it++) {
        double mid = 0.5 * (lo + hi);
        if (ncsn_gamma_criterion(mid, D) > 0.5)
            lo = mid;
        else
            hi = mid;
    }
    return 0.5 * (lo + hi);
}

int ncsn_num_levels(double sigma_begin, double sigma_end, double gamma) {
    NCSN_CHECK(sigma_begin > sigma_end && sigma_end > 0.0 && gamma > 1.0);
    /* sigma_L = sigma_1 / gamma^(L-1) <= sigma_end  <=>  L - 1 >= log(sigma_1/sigma_L) / log(gamma).
     * The schedule then spans exactly [sigma_end, sigma_begin] with a ratio <= gamma, so the
     * overlap criterion is met or exceeded. The 1e-9 keeps an exact integer from rounding up. */
    double steps = log(sigma_begin / sigma_end) / log(gamma);
    return 1 + (int)ceil(steps - 1e-9);
}

/* ---- Technique 4: the step size for T steps per level ------------------------------ */

double ncsn_langevin_variance_ratio(double eps, double gamma, double sigma_end, int T) {
    /* With t = eps / sigma_L^2:  sigma_L^2 - sigma_L^2 (1 - t)^2 = sigma_L^2 t (2 - t), so the
     * stationary term 2 eps / (...) is 2 / (2 - t): no cancellation for small eps. */
    double t = eps / (sigma_end * sigma_end);
    double stationary = 2.0 / (2.0 - t);
    return pow(1.0 - t, 2.0 * T) * (gamma * gamma - stationary) + stationary;
}

double ncsn_solve_step_lr(double gamma, double sigma_end, int T, double *ratio_out) {
    NCSN_CHECK(gamma > 1.0 && sigma_end > 0.0 && T >= 1);
    /* The deviation |ratio - 1| is unimodal in log eps on (0, sigma_L^2): a coarse scan of
     * log10 t over [-12, 0) finds the basin, golden-section search refines it. */
    const int scan = 1200;
    double s2 = sigma_end * sigma_end;
    double best_lt = -12.0, best_dev = DBL_MAX;
    for (int k = 0; k < scan; k++) {
        double lt = -12.0 + 12.0 * k / scan;
        double dev = fabs(ncsn_langevin_variance_ratio(pow(10.0, lt) * s2, gamma, sigma_end, T) - 1.0);
        if (dev < best_dev) {
            best_dev = dev;
            best_lt = lt;
        }
    }
    double lo = best_lt - 12.0 / scan, hi = best_lt + 12.0 / scan;
    if (hi > -1e-12) hi = -1e-12;
    const double phi = 0.5 * (sqrt(5.0) - 1.0);
    double a = hi - phi * (hi - lo), b = lo + phi * (hi - lo);
    double fa = fabs(ncsn_langevin_variance_ratio(pow(10.0, a) * s2, gamma, sigma_end, T) - 1.0);
    double fb = fabs(ncsn_langevin_variance_ratio(pow(10.0, b) * s2, gamma, sigma_end, T) - 1.0);
    for (int it = 0; it < 200 && hi - lo > 1e-13; it++) {
        if (fa < fb) {
            hi = b;
            b = a;
            fb = fa;
            a = hi - phi * (hi - lo);
            fa = fabs(ncsn_langevin_variance_ratio(pow(10.0, a) * s2, gamma, sigma_end, T) - 1.0);
        } else {
            lo = a;
            a = b;
            fa = fb;
            b = lo + phi * (hi - lo);
            fb = fabs(ncsn_langevin_variance_ratio(pow(10.0, b) * s2, gamma, sigma_end, T) - 1.0);
        }
    }
    double eps = pow(10.0, 0.5 * (lo + hi)) * s2;
    if (ratio_out) *ratio_out = ncsn_langevin_variance_ratio(eps, gamma, sigma_end, T);
    return eps;
}

/* ---- the command ------------------------------------------------------------------- */

static void sigmas_usage(FILE *f) {
    fprintf(f,
            "usage: ncsn sigmas --data PATH [--config F.yml] [--dataset NAME] [--image-size S] [--channels C]\n"
            "                   [--subset N] [--T 5] [--sigma-end 0.01] [--device cpu|cuda|auto] [--block 1024]\n"
            "Computes NCSNv2's techniques from the data: sigma_1 = the exact maximum pairwise distance\n"
            "(pixels in [0,1]), the geometric ratio gamma and the number of levels L, and the Langevin\n"
            "step size for T steps per level (default: the config's sampling.n_steps_each, else 5); prints\n"
            "a config snippet. Without --config the dataset is inferred from PATH (.npy, CIFAR-10 batches,\n"
            "IDX files, else a folder of images).\n");
}

/* The dataset name for a --data path when no config says it. */
static const char *infer_dataset(const char *path) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t n = strlen(path);
    if (n >= 4 && !strcasecmp(path + n - 4, ".npy")) return "NPY";
    if (strcasestr(path, "cifar") || strcasestr(base, "data_batch") || strcasestr(base, "test_batch")) return "CIFAR10";
    if (strcasestr(path, "fashion")) return "FashionMNIST";
    if (strcasestr(path, "mnist") || strcasestr(base, "idx3-ubyte")) return "MNIST";
    if (strcasestr(path, "celeba")) return "CELEBA";
    return "FOLDER";
}

int ncsn_cmd_sigmas(int argc, char **argv) {
    const char *data_path = NULL, *config_path = NULL, *dataset = NULL, *device = "auto";
    long subset = 0, image_size = 0, channels = 0, block = 1024, T = 0;
    double sigma_end = 0.0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            sigmas_usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            sigmas_usage(stderr);
            ncsn_die("sigmas: %s needs a value", a);
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--data")) data_path = v;
        else if (!strcmp(a, "--config")) config_path = v;
        else if (!strcmp(a, "--dataset")) dataset = v;
        else if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--subset")) subset = ncsn_parse_long_flag(a, v, 2, 1L << 40);
        else if (!strcmp(a, "--image-size")) image_size = ncsn_parse_long_flag(a, v, 1, 4096);
        else if (!strcmp(a, "--channels")) channels = ncsn_parse_long_flag(a, v, 1, 3);
        else if (!strcmp(a, "--block")) block = ncsn_parse_long_flag(a, v, 1, 16384);
        else if (!strcmp(a, "--T")) T = ncsn_parse_long_flag(a, v, 1, 100000);
        else if (!strcmp(a, "--sigma-end")) sigma_end = ncsn_parse_double_flag(a, v, 0);
        else {
            sigmas_usage(stderr);
            ncsn_die("sigmas: unknown option '%s'", a);
        }
    }

    /* What to read: the config's data section, or one inferred from the path. */
    ncsn_config cfg;
    memset(&cfg, 0, sizeof cfg);
    ncsn_data_config dc;
    memset(&dc, 0, sizeof dc);
    if (config_path) {
        ncsn_config_load(&cfg, config_path);
        dc = cfg.data;
        if (sigma_end <= 0.0) sigma_end = cfg.model.sigma_end;
    } else {
        if (!data_path) {
            sigmas_usage(stderr);
            ncsn_die("sigmas: --data PATH (or --config F.yml with a dataset that has a default location) is required");
        }
        snprintf(dc.dataset, sizeof dc.dataset, "%s", dataset ? dataset : infer_dataset(data_path));
        if (!strcasecmp(dc.dataset, "MNIST") || !strcasecmp(dc.dataset, "FashionMNIST")) {
            dc.image_size = 28;
            dc.channels = 1;
        } else if (!strcasecmp(dc.dataset, "CIFAR10")) {
            dc.image_size = 32;
            dc.channels = 3;
        } else if (!strcasecmp(dc.dataset, "NPY")) {
            ncsn_npy a; /* the array's own shape: (N, H, W[, C]) */
            ncsn_npy_read(&a, data_path);
            if (a.ndim != 3 && a.ndim != 4) ncsn_die("%s: expected a uint8 array (N, H, W[, C])", data_path);
            dc.image_size = (int)a.shape[1];
            dc.channels = a.ndim == 4 ? (int)a.shape[3] : 1;
            ncsn_npy_free(&a);
        } else if (!strcasecmp(dc.dataset, "CELEBA")) {
            dc.image_size = 64;
            dc.channels = 3;
        } else {
            dc.channels = 3;
        }
    }
    if (dataset) snprintf(dc.dataset, sizeof dc.dataset, "%s", dataset);
    if (image_size) dc.image_size = (int)image_size;
    if (channels) dc.channels = (int)channels;
    if (dc.image_size <= 0)
        ncsn_die("sigmas: the image size of %s data is not known: pass --image-size S (or --config)", dc.dataset);
    if (sigma_end <= 0.0) sigma_end = 0.01;
    if (T <= 0) T = config_path ? cfg.sampling.n_steps_each : 5;

    ncsn_dataset ds;
    ncsn_dataset_open(&ds, &dc, data_path ? data_path : ncsn_dataset_default_path(dc.dataset), 1, 1234);
    long N = (long)ds.N;
    long D = (long)ds.C * ds.H * ds.W;
    /* --subset N: a uniformly random subset (the loader's epoch-0 permutation, seed 1234). */
    long used = subset && subset < N ? subset : N;
    uint32_t *order = NULL;
    if (used < N) {
        NCSN_CHECKF(N <= 0xffffffffL, "sigmas: %ld examples is more than the permutation supports", N);
        order = ncsn_xmalloc((size_t)N * sizeof *order);
        ncsn_loader_permutation(order, (size_t)N, 1234, 0, 0);
    }
    float *x = ncsn_xmalloc((size_t)used * (size_t)D * sizeof(float));
    for (long k = 0; k < used; k++) ncsn_dataset_example(&ds, order ? order[k] : (size_t)k, x + (size_t)k * (size_t)D);

    ncsn_backend *be = ncsn_backend_create_from_name(device);
    fprintf(stderr, "sigmas: %s %s: %ld examples of %d x %d x %d (D = %ld)%s; exact max distance over %ld on %s\n",
            ds.dataset, ds.path, N, ds.C, ds.H, ds.W, D, used < N ? " (random subset)" : "", used, be->ops->name);
    ncsn_max_distance md = ncsn_max_pairwise_distance(be, x, used, D, (int)block);
    double gflops = (double)used * (double)used * (double)D / md.gemm_seconds * 1e-9;

    double sigma_begin = md.distance;
    NCSN_CHECKF(sigma_begin > sigma_end, "sigmas: max distance %g is not above sigma_end %g", sigma_begin, sigma_end);
    printf("# ncsn sigmas: %s, %ld of %ld examples, D = %ld\n", ds.path[0] ? ds.path : ds.dataset, used, N, D);
    printf("# technique 1: sigma_1 = max pairwise distance = %.6g (examples %ld and %ld; exact: %ld candidates\n"
           "#   re-checked in float64; %.2f s in blocked GEMMs, %.1f GFLOP/s)\n",
           sigma_begin, order ? (long)order[md.i] : md.i, order ? (long)order[md.j] : md.j, md.candidates,
           md.gemm_seconds, gflops);

    /* Technique 2 decides L; where it cannot (D <= 4, e.g. 2-D toy data) the config's L is
     * kept. Technique 4 then runs on the schedule the snippet proposes, and, with --config,
     * also on the config's own schedule. */
    double gamma = ncsn_solve_gamma((double)D);
    int L = 0;
    if (gamma > 1.0) {
        L = ncsn_num_levels(sigma_begin, sigma_end, gamma);
        printf("# technique 2: gamma = %.6f (Phi(sqrt(2D)(g-1)+3g) - Phi(sqrt(2D)(g-1)-3g) = %.4f), so L = %d levels\n"
               "#   from %.6g to %g\n",
               gamma, ncsn_gamma_criterion(gamma, (double)D), L, sigma_begin, sigma_end);
    } else if (config_path) {
        L = cfg.model.num_classes;
        printf("# technique 2: does not apply for D = %ld (it needs D >= 5): keeping the config's L = %d\n", D, L);
    } else {
        ncsn_die("sigmas: D = %ld: no ratio satisfies technique 2 (it needs D >= 5; sigma_1 = %.6g); pass --config "
                 "to keep its number of levels",
                 D, sigma_begin);
    }
    NCSN_CHECKF(L >= 2, "sigmas: %d levels", L);
    double ratio = pow(sigma_begin / sigma_end, 1.0 / (double)(L - 1));
    double variance_ratio;
    double step_lr = ncsn_solve_step_lr(ratio, sigma_end, (int)T, &variance_ratio);
    printf("# technique 4: T = %ld steps per level on this schedule (ratio %.6f, criterion %.4f): step_lr = %.3g\n"
           "#   (s_T^2/sigma^2 = %.4f, its minimum)\n",
           T, ratio, ncsn_gamma_criterion(ratio, (double)D), step_lr, variance_ratio);
    if (config_path && cfg.model.num_classes >= 2 && cfg.model.sigma_begin > cfg.model.sigma_end) {
        double cratio = pow(cfg.model.sigma_begin / cfg.model.sigma_end, 1.0 / (double)(cfg.model.num_classes - 1));
        double cvar, clr = ncsn_solve_step_lr(cratio, cfg.model.sigma_end, (int)T, &cvar);
        printf("#   the config's schedule (%g .. %g, L = %d, ratio %.6f, criterion %.4f): step_lr = %.3g (s_T^2/sigma^2 "
               "= %.4f); the config has %g\n",
               cfg.model.sigma_begin, cfg.model.sigma_end, cfg.model.num_classes, cratio,
               ncsn_gamma_criterion(cratio, (double)D), clr, cvar, cfg.sampling.step_lr);
    }
    printf("model:\n  sigma_begin: %.4g\n  sigma_end: %g\n  num_classes: %d\nsampling:\n  n_steps_each: %ld\n"
           "  step_lr: %.2g\n",
           sigma_begin, sigma_end, L, T, step_lr);

    free(x);
    free(order);
    ncsn_dataset_free(&ds);
    ncsn_backend_destroy(be);
    if (config_path) ncsn_config_free(&cfg);
    return 0;
}
