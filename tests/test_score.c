/* test_score.c: `ncsn score` end to end on a tiny conditional network.
 *
 * Writes a model-only checkpoint (what tools/convert_official.py produces), inputs and
 * labels as .npy, runs the command in-process and checks its output against the model's
 * forward computed here: bit-identical, since both run the same CPU code on the same
 * weights and the network treats examples independently (the command evaluates in chunks
 * of --batch, the reference in one batch). Then each malformed input must give one clear
 * line naming the file and a non-zero exit.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "expect_die.h"
#include "ncsn/checkpoint.h"
#include "ncsn/cli.h"
#include "ncsn/config.h"
#include "ncsn/io.h"
#include "ncsn/model.h"

/* A v1 network (CondIN++ rows indexed by the label): a wrong label shows in the output. */
static const char *V1 =
    "training:\n  batch_size: 4\n  n_iters: 10\n  algo: 'dsm'\n"
    "data:\n  dataset: \"MNIST\"\n  image_size: 28\n  channels: 1\n  logit_transform: false\n"
    "model:\n  arch: ncsn\n  sigma_begin: 1\n  sigma_end: 0.01\n  num_classes: 5\n  ngf: 4\n"
    "optim:\n  lr: 0.001\n";

enum { N = 5, C = 1, H = 28, W = 28, L = 5 };

static char ckpt[512], xpath[512], ypath[512], out[512], bad[512];

static int run_score(const char *input, const char *labels, const char *outpath, const char *batch) {
    char *argv[] = {"--checkpoint", ckpt, "--input", (char *)input, "--labels", (char *)labels, "--out",
                    (char *)outpath, "--device", "cpu", "--precision", "fp32", "--batch", (char *)batch, NULL};
    return ncsn_cmd_score(14, argv);
}

static void score_bad_input(void *arg) { exit(run_score((const char *)arg, ypath, out, "2")); }
static void score_bad_labels(void *arg) { exit(run_score(xpath, (const char *)arg, out, "2")); }

int main(void) {
    ncsn_backend *be = harness_cpu_backend();
    scratch_dir_create("ncsn_test_score");
    scratch_path(ckpt, sizeof ckpt, "model.safetensors");
    scratch_path(xpath, sizeof xpath, "x.npy");
    scratch_path(ypath, sizeof ypath, "y.npy");
    scratch_path(out, sizeof out, "s.npy");

    ncsn_config cfg;
    ncsn_config_parse(&cfg, V1, "test_score V1");
    ncsn_model *m = ncsn_model_create(be, &cfg);
    const ncsn_param_table *t = ncsn_model_table(m);
    ncsn_model_init(m, 42);
    float *params = ncsn_xmalloc(t->total * sizeof(float));
    ncsn_copy_to_host(be, params, ncsn_model_params(m), t->total * sizeof(float));
    ncsn_checkpoint_data d;
    memset(&d, 0, sizeof d);
    d.params = params;
    ncsn_checkpoint_save(ckpt, t, &d, cfg.text, ncsn_arch_name(cfg.model.arch));

    const size_t D = (size_t)C * H * W;
    float *x = ncsn_xmalloc(N * D * sizeof(float));
    for (size_t i = 0; i < N * D; i++) x[i] = (float)((i * 2654435761u) % 1000u) / 999.0f;
    int64_t labels[N] = {0, 4, 2, 2, 1};
    int64_t xshape[4] = {N, C, H, W}, yshape[1] = {N};
    ncsn_npy_write(xpath, NCSN_NPY_F32, 4, xshape, x);
    ncsn_npy_write(ypath, NCSN_NPY_I64, 1, yshape, labels);

    /* reference: one batch through the model */
    ncsn_model_plan(m, N);
    float *dx = ncsn_alloc(be, N * D * sizeof(float)), *ds = ncsn_alloc(be, N * D * sizeof(float));
    int32_t *dl = ncsn_alloc(be, N * sizeof(int32_t)), l32[N];
    for (int n = 0; n < N; n++) l32[n] = (int32_t)labels[n];
    ncsn_copy_to_device(be, dx, x, N * D * sizeof(float));
    ncsn_copy_to_device(be, dl, l32, sizeof l32);
    ncsn_model_forward(m, ds, dx, dl, N);
    float *ref = ncsn_xmalloc(N * D * sizeof(float));
    ncsn_copy_to_host(be, ref, ds, N * D * sizeof(float));

    /* the command, in chunks of 2 (3 chunks, the last one short) */
    EXPECT(run_score(xpath, ypath, out, "2") == 0, "ncsn score failed");
    ncsn_npy s;
    ncsn_npy_read(&s, out);
    EXPECT(s.dtype == NCSN_NPY_F32 && s.ndim == 4 && s.shape[0] == N && s.shape[1] == C && s.shape[2] == H &&
               s.shape[3] == W,
           "output is not float32 [%d, %d, %d, %d]", N, C, H, W);
    size_t differ = 0;
    for (size_t i = 0; i < N * D && s.count == N * D; i++) differ += ((const float *)s.data)[i] != ref[i];
    EXPECT(differ == 0, "%zu of %zu scores differ from the in-process forward", differ, N * D);
    if (!differ) printf("  ok   score: %d examples in chunks of 2 == one in-process batch, bit for bit\n", N);
    /* Guards the bit-identity check above against a degenerate network: two examples'
     * scores must differ. */
    int outputs_differ = 0;
    for (size_t i = 0; i < D; i++) outputs_differ |= ref[3 * D + i] != ref[0 * D + i];
    EXPECT(outputs_differ, "scores of examples 0 and 3 are identical: the network is degenerate");
    ncsn_npy_free(&s);

    /* malformed inputs: one clear line naming the file, exit 1 (a "precision:" start-up
     * line may come first, hence 2 lines) */
    const char *want_shape[] = {"x3.npy", "expected shape [N, 1, 28, 28]", "got [5, 3, 28, 28]", NULL};
    scratch_path(bad, sizeof bad, "x3.npy");
    int64_t shape3[4] = {N, 3, H, W};
    float *x3 = ncsn_xcalloc(N * 3 * D, sizeof(float));
    ncsn_npy_write(bad, NCSN_NPY_F32, 4, shape3, x3);
    expect_die("wrong channel count", score_bad_input, bad, want_shape, 2);

    static char bad64[512];
    scratch_path(bad64, sizeof bad64, "x64.npy");
    double *x64 = ncsn_xcalloc(N * D, sizeof(double));
    ncsn_npy_write(bad64, NCSN_NPY_F64, 4, xshape, x64);
    const char *want_dtype[] = {"x64.npy", "expected float32", NULL};
    expect_die("float64 input", score_bad_input, bad64, want_dtype, 2);

    static char badl[512];
    scratch_path(badl, sizeof badl, "ybad.npy");
    int64_t labels_bad[N] = {0, 1, 5, 2, 3};
    ncsn_npy_write(badl, NCSN_NPY_I64, 1, yshape, labels_bad);
    const char *want_label[] = {"ybad.npy", "label 5 at index 2 is outside [0, 5)", NULL};
    expect_die("label out of range", score_bad_labels, badl, want_label, 2);

    static char badn[512];
    scratch_path(badn, sizeof badn, "yshort.npy");
    int64_t yshort[1] = {N - 1};
    ncsn_npy_write(badn, NCSN_NPY_I64, 1, yshort, labels);
    const char *want_count[] = {"yshort.npy", "one level per input", NULL};
    expect_die("label count", score_bad_labels, badn, want_count, 2);

    free(x3);
    free(x64);
    free(ref);
    free(x);
    free(params);
    ncsn_free(be, dx);
    ncsn_free(be, ds);
    ncsn_free(be, dl);
    ncsn_model_free(m);
    ncsn_config_free(&cfg);
    ncsn_backend_destroy(be);
    int rc = harness_finish("test_score");
    if (!rc) scratch_dir_remove();
    return rc;
}
