/* test_model_fixtures.c: the whole models against the PyTorch reference.
 *
 * Each tests/fixtures/<name>.safetensors (tools/make_fixtures.py, TEAM.md "Fixture
 * format") holds a small official-format config, an init seed, inputs, the reference score
 * s(x, y), the annealed DSM loss at x + sigma z and d loss / d param for every parameter,
 * all computed by tools/ncsn_torch.py (the official module structure) from weights drawn
 * with the engine's own init convention. So this checks, per architecture: the init
 * convention, the forward, the loss and every parameter gradient.
 *
 * Tolerance: per tensor, max |got - ref| <= 1e-4 * max |ref|. Both sides are fp32; the
 * networks are 20-60 layers deep, and the two implementations sum in different orders
 * (oneDNN vs ATen convolutions, double vs float reductions in IN++), so agreement is
 * ~1e-6 relative per op, growing through depth; IN++ on planes with a small variance and
 * the channel-mean term with C - 1 = 2 or 3 amplify it. 1e-4 of the tensor's largest value
 * leaves a margin of ~10x over what we observe, and any structural error (a missing term,
 * a wrong flag, a swapped parameter) is O(1) of the scale.
 * The loss is compared with the same relative tolerance.
 */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ncsn/backend.h"
#include "ncsn/config.h"
#include "ncsn/model.h"
#include "ncsn/safetensors.h"
#include "tests/harness.h"

#define FIXTURE_DIR "tests/fixtures"
#define REL_TOL 1e-4

static ncsn_backend *be;

static const char *const expected_fixtures[] = {"v1_28", "v1_32", "v2_28", "v2_32", "deeper_28", "deepest_32", "toy"};

static const ncsn_st_tensor *need_tensor(const ncsn_safetensors *st, const char *path, const char *name,
                                         ncsn_dtype dtype, size_t count) {
    const ncsn_st_tensor *t = ncsn_safetensors_find(st, name);
    NCSN_CHECKF(t != NULL, "%s: no tensor '%s'", path, name);
    NCSN_CHECKF(t->dtype == dtype, "%s: tensor '%s' has dtype %d, want %d", path, name, (int)t->dtype, (int)dtype);
    NCSN_CHECKF(t->nbytes == count * ncsn_dtype_size(dtype), "%s: tensor '%s' has %zu bytes, want %zu", path, name,
                t->nbytes, count * ncsn_dtype_size(dtype));
    return t;
}

/* max |got - ref| <= REL_TOL * max |ref| over the tensor; prints one line, and the first
 * differing values on failure. Returns the error relative to max |ref|. */
static double compare_tensor(const char *fixture, const char *what, const float *got, const float *ref, size_t n,
                             int verbose) {
    double max_err = 0.0, max_ref = 0.0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - (double)ref[i]);
        if (err > max_err || err != err) {
            max_err = err;
            worst = i;
        }
        if (fabs((double)ref[i]) > max_ref) max_ref = fabs((double)ref[i]);
    }
    double rel = max_ref > 0.0 ? max_err / max_ref : (max_err > 0.0 ? INFINITY : 0.0);
    int ok = rel <= REL_TOL;
    harness_checks++;
    if (!ok) {
        harness_failures++;
        printf("  FAIL %-10s %-52s n=%-7zu max err %.3e  max|ref| %.3e  rel %.2e > %.0e\n", fixture, what, n, max_err,
               max_ref, rel, REL_TOL);
        int shown = 0;
        for (size_t i = 0; i < n && shown < 5; i++) {
            double err = fabs((double)got[i] - (double)ref[i]);
            if (err > REL_TOL * max_ref || err != err) {
                printf("         [%zu] got %.9g want %.9g\n", i, got[i], ref[i]);
                shown++;
            }
        }
        printf("         worst [%zu] got %.9g want %.9g\n", worst, got[worst], ref[worst]);
    } else if (verbose) {
        printf("  ok   %-10s %-52s n=%-7zu max err %.3e  max|ref| %.3e  rel %.2e\n", fixture, what, n, max_err, max_ref,
               rel);
    }
    return rel;
}

/* Returns 0 (and says so) for a file that is not a model fixture, e.g. the SSM ones. */
static int run_fixture(const char *name, const char *path) {
    ncsn_safetensors st;
    ncsn_safetensors_read(&st, path);
    if (!ncsn_safetensors_find(&st, "output.score")) {
        printf("skip %s: no output.score (not a model fixture)\n", name);
        ncsn_safetensors_free(&st);
        return 0;
    }
    const char *config_text = ncsn_safetensors_meta(&st, "config");
    const char *seed_text = ncsn_safetensors_meta(&st, "seed");
    NCSN_CHECKF(config_text && seed_text, "%s: metadata 'config' and 'seed' are required", path);
    ncsn_config cfg;
    ncsn_config_parse(&cfg, config_text, path);
    const uint64_t seed = strtoull(seed_text, NULL, 10);

    ncsn_model *m = ncsn_model_create(be, &cfg);
    ncsn_model_init(m, seed);
    const ncsn_param_table *t = ncsn_model_table(m);
    const ncsn_st_tensor *lt = ncsn_safetensors_find(&st, "input.labels");
    NCSN_CHECKF(lt && lt->ndim == 1, "%s: input.labels [N] missing", path);
    const int N = (int)lt->shape[0];
    const size_t D = ncsn_model_input_size(m), ND = (size_t)N * D;
    printf("%s: %s, %zu parameters, N = %d, seed %llu\n", name, ncsn_arch_name(cfg.model.arch), t->total, N,
           (unsigned long long)seed);

    const float *x = need_tensor(&st, path, "input.x", NCSN_DT_F32, ND)->data;
    const int32_t *labels = need_tensor(&st, path, "input.labels", NCSN_DT_I32, (size_t)N)->data;
    const float *z = need_tensor(&st, path, "input.z", NCSN_DT_F32, ND)->data;
    const float *ref_score = need_tensor(&st, path, "output.score", NCSN_DT_F32, ND)->data;
    const float *ref_loss = need_tensor(&st, path, "output.loss", NCSN_DT_F32, 1)->data;

    /* The schedule the reference used (its sigmas buffer) is the config's. */
    const ncsn_st_tensor *sig = ncsn_safetensors_find(&st, "buffer.sigmas");
    if (sig) {
        NCSN_CHECKF(sig->nbytes == (size_t)ncsn_model_num_levels(m) * sizeof(float), "%s: buffer.sigmas size", path);
        compare_tensor(name, "sigmas", ncsn_model_sigmas_host(m), sig->data, (size_t)ncsn_model_num_levels(m), 1);
    }

    /* Backend buffers (the CPU backend's are host memory, but go through the API). */
    ncsn_model_plan(m, N);
    float *d_x = ncsn_alloc(be, ND * sizeof(float)), *d_z = ncsn_alloc(be, ND * sizeof(float));
    float *d_xn = ncsn_alloc(be, ND * sizeof(float)), *d_score = ncsn_alloc(be, ND * sizeof(float));
    float *d_dscore = ncsn_alloc(be, ND * sizeof(float)), *d_loss = ncsn_alloc(be, (size_t)N * sizeof(float));
    int32_t *d_labels = ncsn_alloc(be, (size_t)N * sizeof(int32_t));
    ncsn_copy_to_device(be, d_x, x, ND * sizeof(float));
    ncsn_copy_to_device(be, d_z, z, ND * sizeof(float));
    ncsn_copy_to_device(be, d_labels, labels, (size_t)N * sizeof(int32_t));
    float *h = ncsn_xmalloc((ND > t->total ? ND : t->total) * sizeof(float));

    /* 1. score at the clean input */
    ncsn_model_forward(m, d_score, d_x, d_labels, N);
    ncsn_copy_to_host(be, h, d_score, ND * sizeof(float));
    compare_tensor(name, "output.score", h, ref_score, ND, 1);

    /* 2. annealed DSM loss at x + sigma z, and its gradients */
    float *sigmas = ncsn_model_sigmas(m);
    ncsn_noise_inject(be, d_xn, d_x, d_z, sigmas, d_labels, N, D);
    ncsn_model_forward(m, d_score, d_xn, d_labels, N);
    ncsn_dsm_loss(be, d_loss, d_dscore, d_score, d_z, sigmas, d_labels, N, D);
    float loss_pe[64];
    NCSN_CHECK(N <= 64);
    ncsn_copy_to_host(be, loss_pe, d_loss, (size_t)N * sizeof(float));
    double loss = 0.0;
    for (int n = 0; n < N; n++) loss += loss_pe[n];
    float loss_f = (float)(loss / N);
    compare_tensor(name, "output.loss", &loss_f, ref_loss, 1, 1);

    ncsn_model_zero_grads(m);
    ncsn_model_backward(m, NULL, d_dscore);
    ncsn_copy_to_host(be, h, ncsn_model_grads(m), t->total * sizeof(float));
    double worst = 0.0;
    const char *worst_name = "";
    for (int i = 0; i < t->n; i++) {
        const ncsn_param_entry *e = &t->entries[i];
        char key[NCSN_MAX_NAME + 8];
        snprintf(key, sizeof key, "grad.%s", e->name);
        const float *ref = need_tensor(&st, path, key, NCSN_DT_F32, e->count)->data;
        double rel = compare_tensor(name, key, h + e->offset, ref, e->count, 1);
        if (rel > worst) {
            worst = rel;
            worst_name = e->name;
        }
    }
    /* Every gradient in the file belongs to a table entry (nothing of the reference is
     * missing from the C model). */
    int n_grads = 0;
    for (int i = 0; i < st.n_tensors; i++)
        if (!strncmp(st.tensors[i].name, "grad.", 5)) {
            n_grads++;
            EXPECT(ncsn_param_table_find(t, st.tensors[i].name + 5) != NULL, "%s: reference has %s, model has not",
                   name, st.tensors[i].name);
        }
    EXPECT(n_grads == t->n, "%s: reference has %d gradient tensors, the model %d", name, n_grads, t->n);
    printf("%s: %d gradient tensors, worst relative error %.2e (%s)\n", name, t->n, worst, worst_name);

    free(h);
    ncsn_free(be, d_x);
    ncsn_free(be, d_z);
    ncsn_free(be, d_xn);
    ncsn_free(be, d_score);
    ncsn_free(be, d_dscore);
    ncsn_free(be, d_loss);
    ncsn_free(be, d_labels);
    ncsn_model_free(m);
    ncsn_config_free(&cfg);
    ncsn_safetensors_free(&st);
    return 1;
}

int main(void) {
    be = harness_cpu_backend();
    int found = 0;
    for (size_t i = 0; i < sizeof expected_fixtures / sizeof expected_fixtures[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s.safetensors", FIXTURE_DIR, expected_fixtures[i]);
        FILE *f = fopen(path, "rb");
        if (!f) {
            printf("skip %s: %s not found (make fixtures)\n", expected_fixtures[i], path);
            continue;
        }
        fclose(f);
        found += run_fixture(expected_fixtures[i], path);
    }
    /* Any other model fixture in the directory is run too. */
    DIR *dir = opendir(FIXTURE_DIR);
    if (dir) {
        struct dirent *de;
        while ((de = readdir(dir)) != NULL) {
            size_t len = strlen(de->d_name);
            const char *ext = ".safetensors";
            if (len <= strlen(ext) || strcmp(de->d_name + len - strlen(ext), ext)) continue;
            char stem[256];
            snprintf(stem, sizeof stem, "%.*s", (int)(len - strlen(ext)), de->d_name);
            int known = 0;
            for (size_t i = 0; i < sizeof expected_fixtures / sizeof expected_fixtures[0]; i++)
                known |= !strcmp(stem, expected_fixtures[i]);
            if (known) continue;
            char path[512];
            snprintf(path, sizeof path, "%s/%s", FIXTURE_DIR, de->d_name);
            found += run_fixture(stem, path);
        }
        closedir(dir);
    }
    EXPECT(found > 0, "no fixtures in %s: run `make fixtures` (needs python3-torch)", FIXTURE_DIR);
    ncsn_backend_destroy(be);
    return harness_finish("test_model_fixtures");
}
