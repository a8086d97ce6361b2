/* model.h: the networks (NCSN v1, the NCSNv2 family, the toy MLP) as flat call lists.
 *
 * What it is: construction of the parameter table from a config, official
 * initialisation, and hand-written forward / backward passes over backend ops.
 * What it is not: an autograd system; RefineNet is fixed, so the backward is the
 * forward's mirror written out.
 *
 * Memory: parameters, gradients (and, owned by the trainer, Adam moments and the EMA
 * copy) are each ONE contiguous backend buffer of table.total floats, laid out in the
 * order of the table. Table names are the official PyTorch state-dict keys without the
 * "module." prefix, and shapes are PyTorch's. Activations live in one arena planned by
 * ncsn_model_plan(N) for a batch size; forward/backward allocate nothing.
 *
 * Inputs are images in [0, 1] (N x C x H x W); the model applies 2x - 1 itself unless
 * data.logit_transform or data.rescaled. Labels are int32 level indices in backend memory.
 */
#ifndef NCSN_MODEL_H
#define NCSN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "ncsn/backend.h"
#include "ncsn/config.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NCSN_MAX_NAME 128

typedef struct {
    char name[NCSN_MAX_NAME]; /* official state-dict key, e.g. "res2.0.conv2.conv.weight" */
    int ndim;
    int64_t shape[4];
    size_t offset; /* in floats, into the parameter buffer */
    size_t count;
} ncsn_param_entry;

typedef struct {
    ncsn_param_entry *entries;
    int n, cap;
    size_t total; /* floats */
} ncsn_param_table;

/* Appends an entry (offset = current total) and returns its offset. */
size_t ncsn_param_table_add(ncsn_param_table *t, const char *name, int ndim, const int64_t *shape);
const ncsn_param_entry *ncsn_param_table_find(const ncsn_param_table *t, const char *name);
void ncsn_param_table_free(ncsn_param_table *t);

typedef struct ncsn_model ncsn_model;

/* Builds the network for cfg on backend be: parameter table, parameter and gradient
 * buffers (zeroed), the sigmas buffer (L floats, config schedule). */
ncsn_model *ncsn_model_create(ncsn_backend *be, const ncsn_config *cfg);
void ncsn_model_free(ncsn_model *m);

const ncsn_param_table *ncsn_model_table(const ncsn_model *m);
float *ncsn_model_params(ncsn_model *m); /* backend memory, table.total floats */
float *ncsn_model_grads(ncsn_model *m);  /* backend memory, table.total floats */
float *ncsn_model_sigmas(ncsn_model *m); /* backend memory, L floats */
const float *ncsn_model_sigmas_host(const ncsn_model *m);
int ncsn_model_num_levels(const ncsn_model *m);
/* Image (or toy point) shape: C, H, W; per-example element count. */
void ncsn_model_input_shape(const ncsn_model *m, int *C, int *H, int *W);
size_t ncsn_model_input_size(const ncsn_model *m);

/* Official initialisation: PyTorch default conv init (kaiming_uniform a=sqrt(5): weight and
 * bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))), IN++ gamma and alpha ~ N(1, 0.02), beta = 0,
 * drawn from the engine RNG (purpose NCSN_RNG_INIT, step = table index). */
void ncsn_model_init(ncsn_model *m, uint64_t seed);

/* Plans (or re-plans) the activation arena for batch size N. */
void ncsn_model_plan(ncsn_model *m, int N);
/* score = s_theta(x, labels), N examples (N <= planned N). */
void ncsn_model_forward(ncsn_model *m, float *score, const float *x, const int32_t *labels, int N);
/* Backward of the last forward: parameter gradients ACCUMULATE into ncsn_model_grads;
 * dx (gradient w.r.t. the input x) is written when non-NULL. */
void ncsn_model_backward(ncsn_model *m, float *dx, const float *dscore);
void ncsn_model_zero_grads(ncsn_model *m);

/* Gradient-ready hook: lets a data-parallel trainer all-reduce gradients while the rest of
 * the backward runs (grad_sync.h; PyTorch DDP's bucket hooks).
 * During ncsn_model_backward, fn(ctx, first_final) is called each time the final region
 * of the gradient buffer grows: elements [first_final, table.total) hold their final value
 * for this backward (no later op of it adds to them). Within one backward first_final
 * strictly decreases, and the last call is with 0 (every gradient final). The backward
 * runs from the output to the input and the table is in forward order, so the region is
 * a suffix that grows block by block: each residual block, each part of a RefineBlock
 * (output RCU, CRP, MSF, adapt RCUs), the head, begin_conv; the toy MLP per layer. Parts
 * that finish before a part above them in the table (the head, a RefineBlock's output
 * RCU, NCSNv2Deepest's refine3) are included once the gap above them is final.
 * The call happens when the ops are ENQUEUED: on the CUDA backend the region is final in
 * the backend's stream order (ops enqueued after the call see it), not yet on the host;
 * on the CPU backend it is final on return of those ops.
 * The gradients accumulate: set the hook only while the LAST backward before the
 * gradients are used runs (not for the first two of the SSM loss's three backwards).
 * fn = NULL removes it (the default); without a hook the backward does nothing extra. */
typedef void (*ncsn_grad_ready_fn)(void *ctx, size_t first_final);
void ncsn_model_set_grad_ready_hook(ncsn_model *m, ncsn_grad_ready_fn fn, void *ctx);

/* bf16 inference (the sampler's fast path): with on = 1, ncsn_model_forward runs the
 * backend's bf16 NHWC op set (backend.h): every activation is stored as bf16 in NHWC order,
 * convolutions read a bf16 copy of their weights packed now, in the backend's layout, and
 * the input and output stay fp32 NCHW. The packed weights are a snapshot of the current
 * parameters: call again after changing them (loading a checkpoint, switching to EMA).
 * There is no backward in this mode (ncsn_model_backward refuses); on = 0 frees the packed
 * weights and returns to fp32 NCHW. Returns 1 when on, 0 when off or when the architecture
 * has no bf16 path (the toy MLP, which keeps fp32 activations). */
int ncsn_model_set_bf16_inference(ncsn_model *m, int on);

/* Multiply-accumulates of the convolutions of one forward for one example. */
double ncsn_model_conv_macs(const ncsn_model *m);
/* Prints the architecture summary, the tensor table and "parameters: N". */
void ncsn_model_print_info(const ncsn_model *m, FILE *f, int print_table);

#ifdef __cplusplus
}
#endif

#endif /* NCSN_MODEL_H */
