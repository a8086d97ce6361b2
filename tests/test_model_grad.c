/* test_model_grad.c: the hand-written model backward against finite differences of the
 * model's own forward, for a small network of every architecture; plus the backward's
 * contracts (parameter gradients accumulate, the arena's planned batch does not leak into
 * results, examples are independent).
 *
 * Loss L = sum(score * r) with a fixed random r, so one backward with dscore = r gives
 * dL/dtheta and dL/dx. For every parameter tensor K_SAMPLES random elements (all of them
 * in tiny tensors), and K_SAMPLES input elements, are checked against central differences
 * (L(v + h) - L(v - h)) / (v+ - v-), L summed in float64 from the fp32 scores, v+- the
 * fp32 values actually stored, h = REL_STEP * max(|v|, scale of its tensor).
 *
 * Why this is harder than an op test, and what the check does about it (measured over
 * nine random draws of inputs and samples before choosing the numbers below):
 * - The forward is fp32. Perturbing one parameter re-rounds every later op, so L carries
 *   noise; measure_noise() measures it (largest residual of L over 16 few-ulp probes):
 *   3e-7 to 1e-6 of |L| here. A central difference inherits noise / h; the check allows
 *   NOISE_MARGIN times that on top of the relative tolerance.
 * - The networks are only piecewise smooth: v2's max pool switches its argmax, and a
 *   central difference across such a kink averages two slopes. If the left and right
 *   differences disagree by more than KINK_TOL (+ noise) the step is cut by 4, twice at
 *   most; an element still kinked is inconclusive and replaced by another draw.
 * - IN++ makes the functions strongly curved: its channel-mean term divides by the
 *   standard deviation of the C channel means. With ngf = 4 (C = 4 at the first
 *   norms) that deviation is sometimes tiny for random inputs and L is nearly singular
 *   (finite differences change by 2x between h = 1e-2 and 1e-4); with ngf = 8 it is not.
 *   So the networks here have ngf 8, L 3, N 2, inputs 8x8 (v1, v2), 16x16 and 28x28
 *   (Deeper: 4x4 and 7x7 at the bottom, an odd size, 7 -> 14 upsampling) and 32x32
 *   (Deepest: 4x4 at the bottom; 2x2 planes make IN++ near-singular too).
 * With h = 1e-3 relative the smooth-part truncation error is ~1e-4 and the observed
 * worst error over all draws and architectures was 0.032 in units of
 *     |fd - an| / (|an| + NOISE_MARGIN * noise / TOL);
 * the check requires <= TOL = 0.05 per element. Bugs injected on purpose (a missing
 * residual or CRP accumulate, an overwrite instead of an accumulate, gamma and alpha
 * gradients swapped, a 5% error in one pooling backward) failed this test with errors
 * of 0.05 to 20, tens to hundreds of tensors each. The exact comparison (1e-4 against
 * PyTorch's autograd) is test_model_fixtures; this test is the independent check that
 * needs no reference.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ncsn/backend.h"
#include "ncsn/config.h"
#include "ncsn/model.h"
#include "tests/harness.h"

#include <omp.h>

#define K_SAMPLES 2     /* elements per tensor */
#define MAX_DRAWS 8     /* draws per tensor when elements are inconclusive */
#define REL_STEP 1e-3   /* h relative to max(|v|, tensor scale) */
#define KINK_TOL 1e-2   /* left/right difference mismatch that means a kink within h */
#define NOISE_PROBES 16
#define NOISE_MARGIN 4.0
#define TOL 5e-2

static ncsn_backend *be;

static uint64_t rng_state = 0x243F6A8885A308D3ull;
static double rand_uniform(void) { return harness_rand_uniform(&rng_state); }
static double rand_normal(void) {
    double u = rand_uniform() + 1e-300, v = rand_uniform();
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

static ncsn_config tiny_config(ncsn_arch arch, int channels, int image_size) {
    ncsn_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.model.arch = arch;
    cfg.model.arch_given = 1;
    cfg.model.ngf = 8;
    cfg.model.num_classes = 3;
    cfg.model.sigma_begin = 1.0;
    cfg.model.sigma_end = 0.1;
    cfg.model.hidden = 16;
    strcpy(cfg.model.sigma_dist, "geometric");
    cfg.data.channels = channels;
    cfg.data.image_size = image_size;
    return cfg;
}

typedef struct {
    ncsn_model *m;
    int N;
    size_t D;
    float *x, *score, *r, *dx; /* backend buffers (host memory on the CPU backend) */
    int32_t *labels;
    double noise; /* measured fp32 rounding noise of L (see measure_noise) */
} grad_case;

static double loss_at(grad_case *g) {
    ncsn_model_forward(g->m, g->score, g->x, g->labels, g->N);
    double L = 0.0;
    for (size_t i = 0; i < (size_t)g->N * g->D; i++) L += (double)g->score[i] * (double)g->r[i];
    return L;
}

/* One-sided and central differences of L in the fp32 value v[i] with the step
 * h = step * max(|v_i|, scale); the divisors are the fp32 steps actually taken. L0 is
 * L at the unperturbed point (every perturbation is undone exactly, so it is computed
 * once). */
typedef struct {
    double left, right, central, h;
} differences;

static differences take_differences(grad_case *g, float *v, size_t i, double step, double scale, double L0) {
    const float saved = v[i];
    differences d;
    d.h = step * fmax(fabs((double)saved), scale);
    v[i] = (float)((double)saved + d.h);
    const double up = (double)v[i] - (double)saved, Lp = loss_at(g);
    v[i] = (float)((double)saved - d.h);
    const double down = (double)saved - (double)v[i], Lm = loss_at(g);
    v[i] = saved;
    d.left = (L0 - Lm) / down;
    d.right = (Lp - L0) / up;
    d.central = (Lp - Lm) / (up + down);
    return d;
}

/* The rounding noise of L: perturbing one value by a few ulp changes L by its gradient
 * times the step (known: the analytic gradient, second order is ~1e-12 of L) plus the
 * re-rounding of every later op. The largest residual over NOISE_PROBES random
 * parameters is the noise scale used for the finite differences. */
static double measure_noise(grad_case *g, float *params, const float *an, size_t n, double L0) {
    double worst = 0.0;
    for (int k = 0; k < NOISE_PROBES; k++) {
        size_t i = (size_t)(rand_uniform() * (double)n);
        const float saved = params[i];
        params[i] = nextafterf(nextafterf(nextafterf(nextafterf(saved, INFINITY), INFINITY), INFINITY), INFINITY);
        const double step = (double)params[i] - (double)saved, L = loss_at(g);
        params[i] = saved;
        worst = fmax(worst, fabs(L - L0 - (double)an[i] * step));
    }
    return worst;
}

typedef struct {
    int checked, inconclusive, failed;
    double worst;
} fd_stats;

/* Checks K_SAMPLES random elements of v (n floats; all of them when n <= K_SAMPLES)
 * against the analytic gradient an. Per element: if the left and right differences
 * disagree, a kink (a max-pool argmax switch) lies within h, where the central
 * difference averages two slopes; the step is then cut by 4 (twice at most) and a
 * still-kinked element is inconclusive and replaced by another draw (MAX_DRAWS in all).
 * A tensor with no conclusive element fails. */
static void check_elements(grad_case *g, const char *arch, const char *what, float *v, const float *an, size_t n,
                           double scale, double L0, fd_stats *st) {
    const int want = n <= K_SAMPLES ? (int)n : K_SAMPLES;
    int conclusive = 0, bad = 0, draws = 0;
    double worst = 0.0;
    while (conclusive < want && draws < (n <= K_SAMPLES ? (int)n : MAX_DRAWS)) {
        size_t i = n <= K_SAMPLES ? (size_t)draws : (size_t)(rand_uniform() * (double)n);
        draws++;
        differences d;
        double noise = 0.0;
        int smooth = 0;
        for (int cut = 0; cut < 3 && !smooth; cut++) {
            d = take_differences(g, v, i, REL_STEP / (double)(1 << (2 * cut)), scale, L0);
            /* The most the rounding noise of L moves the central difference (two
             * evaluations over 2h); the left - right gap can move by up to 4x that. */
            noise = g->noise / d.h;
            smooth = fabs(d.left - d.right) <= KINK_TOL * fmax(fabs(d.left), fabs(d.right)) + 4.0 * noise;
        }
        if (!smooth) {
            st->inconclusive++;
            continue;
        }
        conclusive++;
        /* Pass: |fd - an| <= TOL |an| + NOISE_MARGIN noise, i.e. rel <= TOL. */
        const double a = an[i], err = fabs(d.central - a), rel = err / (fabs(a) + NOISE_MARGIN * noise / TOL);
        if (!(rel <= TOL)) {
            if (bad++ < 3)
                printf("    %s %s[%zu]: backward %.8g, central difference %.8g (left %.8g, right %.8g, h %.2e, "
                       "noise %.2e), rel %.2e\n",
                       arch, what, i, a, d.central, d.left, d.right, d.h, noise, rel);
        }
        if (rel > worst || rel != rel) worst = rel;
    }
    harness_checks++;
    st->checked += conclusive;
    if (bad || conclusive == 0) {
        harness_failures++;
        st->failed++;
        if (bad) printf("  FAIL %-8s %-48s %d of %d elements outside %.0e\n", arch, what, bad, conclusive, TOL);
        else printf("  FAIL %-8s %-48s no conclusive element in %d draws\n", arch, what, draws);
    }
    if (worst > st->worst) st->worst = worst;
}

static void run_arch(const char *arch, const ncsn_config *cfg, uint64_t seed) {
    grad_case g;
    memset(&g, 0, sizeof g);
    g.m = ncsn_model_create(be, cfg);
    ncsn_model_init(g.m, seed);
    g.N = 2;
    g.D = ncsn_model_input_size(g.m);
    const size_t ND = (size_t)g.N * g.D;
    const ncsn_param_table *t = ncsn_model_table(g.m);
    ncsn_model_plan(g.m, g.N);
    g.x = ncsn_alloc(be, ND * sizeof(float));
    g.score = ncsn_alloc(be, ND * sizeof(float));
    g.r = ncsn_alloc(be, ND * sizeof(float));
    g.dx = ncsn_alloc(be, ND * sizeof(float));
    g.labels = ncsn_alloc(be, (size_t)g.N * sizeof(int32_t));
    const int toy = cfg->model.arch == NCSN_ARCH_TOY;
    for (size_t i = 0; i < ND; i++) {
        g.x[i] = toy ? (float)(2.0 * rand_normal()) : (float)rand_uniform();
        g.r[i] = (float)rand_normal();
    }
    g.labels[0] = 0;
    g.labels[1] = cfg->model.num_classes - 1; /* two different levels: rows of the tables */

    /* Analytic gradients, into host copies (the FD loop reuses the arena). */
    float *params = ncsn_model_params(g.m); /* host memory on the CPU backend */
    float *an = ncsn_xmalloc(t->total * sizeof(float)), *an_x = ncsn_xmalloc(ND * sizeof(float));
    ncsn_model_zero_grads(g.m);
    const double L0 = loss_at(&g);
    ncsn_model_backward(g.m, g.dx, g.r);
    ncsn_copy_to_host(be, an, ncsn_model_grads(g.m), t->total * sizeof(float));
    ncsn_copy_to_host(be, an_x, g.dx, ND * sizeof(float));

    /* Contract: parameter gradients accumulate. A second backward adds the same values
     * again: 2x, up to the rounding of the backend's own partial sums (it may add the
     * per-example parts one by one), so per tensor within 1e-6 of its largest value. */
    ncsn_model_backward(g.m, NULL, g.r);
    const float *twice = ncsn_model_grads(g.m);
    int not_doubled = 0;
    for (int i = 0; i < t->n; i++) {
        const ncsn_param_entry *e = &t->entries[i];
        double mx = 0.0, err = 0.0;
        for (size_t k = e->offset; k < e->offset + e->count; k++) {
            mx = fmax(mx, fabs(2.0 * an[k]));
            err = fmax(err, fabs((double)twice[k] - 2.0 * an[k]));
        }
        if (err > 1e-6 * mx) {
            if (not_doubled++ < 3)
                printf("    %s %s: second backward off 2x by %.3e (max %.3e)\n", arch, e->name, err, mx);
        }
    }
    EXPECT(not_doubled == 0, "%s: %d tensors did not accumulate to 2x over two backwards", arch, not_doubled);

    g.noise = measure_noise(&g, params, an, t->total, L0);
    fd_stats st = {0, 0, 0, 0.0};
    for (int i = 0; i < t->n; i++) {
        const ncsn_param_entry *e = &t->entries[i];
        double rms = 0.0;
        for (size_t k = 0; k < e->count; k++) rms += (double)params[e->offset + k] * params[e->offset + k];
        rms = sqrt(rms / (double)e->count);
        check_elements(&g, arch, e->name, params + e->offset, an + e->offset, e->count, fmax(rms, 0.1), L0, &st);
    }
    fd_stats sx = {0, 0, 0, 0.0};
    check_elements(&g, arch, "input x", g.x, an_x, ND, 0.1, L0, &sx);
    printf("  %-8s %zu parameters in %d tensors: %d elements checked (%d inconclusive draws), worst rel error %.2e; "
           "input x: %d checked, worst %.2e; noise of L %.1e (L = %.4g)\n",
           arch, t->total, t->n, st.checked, st.inconclusive, st.worst, sx.checked, sx.worst, g.noise, L0);

    /* Contract: results do not depend on the planned batch (slots are strided by it) and
     * examples are independent (every norm is per example). Plan for 5, run the two
     * examples together and one at a time. */
    float *ref = ncsn_xmalloc(ND * sizeof(float));
    (void)loss_at(&g);
    memcpy(ref, g.score, ND * sizeof(float));
    ncsn_model_plan(g.m, 5);
    (void)loss_at(&g);
    double max_err = 0.0, max_ref = 0.0;
    for (size_t i = 0; i < ND; i++) {
        max_err = fmax(max_err, fabs((double)g.score[i] - ref[i]));
        max_ref = fmax(max_ref, fabs((double)ref[i]));
    }
    EXPECT(max_err == 0.0, "%s: planning for 5 changed the scores of a batch of 2 (max err %.3e)", arch, max_err);
    for (int n = 0; n < g.N; n++) {
        ncsn_model_forward(g.m, g.score, g.x + (size_t)n * g.D, g.labels + n, 1);
        for (size_t i = 0; i < g.D; i++)
            max_err = fmax(max_err, fabs((double)g.score[i] - ref[(size_t)n * g.D + i]));
    }
    /* Convolutions may pick a different algorithm for N = 1: fp32 reassociation only. */
    EXPECT(max_err <= 1e-5 * max_ref, "%s: example-by-example scores differ from the batch (max err %.3e of %.3e)",
           arch, max_err, max_ref);

    free(ref);
    free(an);
    free(an_x);
    ncsn_free(be, g.x);
    ncsn_free(be, g.score);
    ncsn_free(be, g.r);
    ncsn_free(be, g.dx);
    ncsn_free(be, g.labels);
    ncsn_model_free(g.m);
}

int main(void) {
    be = harness_cpu_backend();
    if (be->kind != NCSN_DEVICE_CPU) return 1; /* the FD loop edits parameters in place */
    /* Thousands of forwards of tiny networks: one thread avoids OpenMP fork/join costs
     * that dominate such small ops (and makes the run time independent of machine load).
     * The threaded paths are exercised by test_model_fixtures. */
    omp_set_num_threads(1);
    printf("backward vs central finite differences (ngf 8, L 3, N 2; h = %.0e relative, tol %.0e)\n", REL_STEP, TOL);
    ncsn_config v1 = tiny_config(NCSN_ARCH_NCSN, 3, 8);
    run_arch("v1", &v1, 11);
    ncsn_config v2 = tiny_config(NCSN_ARCH_NCSNV2, 3, 8);
    run_arch("v2", &v2, 12);
    ncsn_config deeper = tiny_config(NCSN_ARCH_NCSNV2_DEEPER, 3, 16); /* 16 -> 4x4 at the bottom */
    run_arch("deeper", &deeper, 13);
    ncsn_config deepest = tiny_config(NCSN_ARCH_NCSNV2_DEEPEST, 3, 32); /* 32 -> 4x4 at the bottom */
    run_arch("deepest", &deepest, 14);
    /* 28 -> 14 -> 7: an odd size, and a 7 -> 14 bilinear upsampling in refine4. */
    ncsn_config deeper_28 = tiny_config(NCSN_ARCH_NCSNV2_DEEPER, 1, 28);
    run_arch("deeper28", &deeper_28, 15);
    ncsn_config toy = tiny_config(NCSN_ARCH_TOY, 2, 1);
    run_arch("toy", &toy, 16);
    ncsn_backend_destroy(be);
    return harness_finish("test_model_grad");
}
