/* cuda_conv.c: the three convolutions (forward, backward-data, backward-filter) through
 * the cuDNN 9 graph (backend) API, plain C.
 *
 * For each distinct (shape, direction, precision, accumulate, pointer alignment,
 * determinism) we build ONE execution plan and cache it:
 *   tensor descriptors X, W, Y (NCHW / KCRS fp32, packed strides)
 *   -> convolution descriptor (cross-correlation, "same" padding = dilation * (k / 2))
 *   -> one operation (CONVOLUTION_FORWARD / _BACKWARD_DATA / _BACKWARD_FILTER)
 *   -> operation graph -> heuristics (mode A, then FALLBACK if A yields nothing usable)
 *   -> the first engine configuration whose numerical notes the precision allows and
 *      that finalizes into an execution plan.
 * Execution is a variant pack (device pointers by unique id + the shared workspace).
 *
 * Precision. NCSN_PRECISION_FP32 is strict fp32: engines whose numerical notes say they
 * use tensor cores (TF32 on fp32 data), down-convert inputs, or reduce in lower
 * precision are skipped, exactly as PyTorch does with allow_tf32 off. TF32 accepts them.
 * BF16 currently runs as TF32 (the bf16 data path is issue 6). The comp type is fp32 in
 * every case. With be->deterministic, engines noted NONDETERMINISTIC are skipped too.
 *
 * Accumulation. Backward-data with `accumulate` and backward-filter (dw +=) ask cuDNN for
 * beta = 1 (y = conv + y), which the convolution operations support as an attribute. If
 * no engine accepts beta = 1 for a shape, the plan is built with beta = 0 into a scratch
 * slice of the workspace and a kernel adds it: slower, same result.
 *
 * Handles. cuDNN >= 9.8 deprecates the handle attributes of operation graphs and plans;
 * heuristics and plans take a device-properties descriptor instead (created once from the
 * handle in cuda_backend.c), and the handle is only needed to execute.
 *
 * Bias. cuDNN's runtime-fusion engines could add the bias inside the convolution, but
 * not for every fp32 NCHW shape; a broadcast-add kernel after the convolution and a
 * per-channel reduction kernel for its gradient (kernels/elementwise.cu) are always valid.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/cuda_internal.h"
#include "kernels/cuda_launch.h"

typedef enum { CONV_FORWARD = 0, CONV_BACKWARD_DATA = 1, CONV_BACKWARD_FILTER = 2 } conv_direction;

static const char *const conv_direction_names[] = {"forward", "backward-data", "backward-filter"};

/* Unique ids of the three tensors; in every direction X is the activation on the input
 * side (x or dx), W the filter (w or dw) and Y the activation on the output side (y or dy). */
enum { UID_X = 'x', UID_W = 'w', UID_Y = 'y' };

/* Descriptors a plan keeps alive: 3 tensors, the convolution, the operation, the graph and
 * the chosen engine configuration (the plan was finalized from them). */
#define PLAN_MAX_OWNED 7

struct cuda_conv_plan {
    /* key */
    ncsn_conv_desc desc;
    conv_direction direction;
    ncsn_precision precision;
    int accumulate; /* the caller wants Y += conv (beta = 1) */
    int alignment;  /* bytes guaranteed for every pointer: 4, 8 or 16 */
    int deterministic;
    /* value */
    cudnnBackendDescriptor_t plan;
    cudnnBackendDescriptor_t owned[PLAN_MAX_OWNED];
    int owned_count;
    int64_t workspace_bytes;
    int beta_in_place; /* 1: the plan itself accumulates; 0 with accumulate: scratch + add */
};

/* ---- descriptor helpers ---- */

static cudnnBackendDescriptor_t create_descriptor(cudnnBackendDescriptorType_t type) {
    cudnnBackendDescriptor_t d = NULL;
    CUDNN_CHECK(cudnnBackendCreateDescriptor(type, &d));
    return d;
}

static void set_attribute(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                          cudnnBackendAttributeType_t type, int64_t count, const void *values) {
    CUDNN_CHECK(cudnnBackendSetAttribute(d, name, type, count, values));
}

/* A packed 4-D fp32 tensor [d0, d1, d2, d3] (NCHW activations, KCRS filters). */
static cudnnBackendDescriptor_t make_tensor(int64_t uid, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                                            int64_t alignment) {
    int64_t dims[4] = {d0, d1, d2, d3};
    int64_t strides[4] = {d1 * d2 * d3, d2 * d3, d3, 1};
    cudnnDataType_t type = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t t = create_descriptor(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    set_attribute(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
    set_attribute(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims);
    set_attribute(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides);
    set_attribute(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    set_attribute(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment);
    CUDNN_CHECK(cudnnBackendFinalize(t));
    return t;
}

static cudnnBackendDescriptor_t make_convolution(const ncsn_conv_desc *d) {
    int64_t spatial_dims = 2;
    int64_t pad = (int64_t)d->dilation * (d->ksize / 2);
    int64_t paddings[2] = {pad, pad}, dilations[2] = {d->dilation, d->dilation}, strides[2] = {1, 1};
    cudnnDataType_t compute = CUDNN_DATA_FLOAT;
    cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION; /* what PyTorch's Conv2d computes */
    cudnnBackendDescriptor_t c = create_descriptor(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
    set_attribute(c, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &spatial_dims);
    set_attribute(c, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
    set_attribute(c, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode);
    set_attribute(c, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dilations);
    set_attribute(c, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, strides);
    set_attribute(c, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, paddings);
    set_attribute(c, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, paddings);
    CUDNN_CHECK(cudnnBackendFinalize(c));
    return c;
}

static cudnnBackendDescriptor_t make_operation(conv_direction direction, cudnnBackendDescriptor_t x,
                                               cudnnBackendDescriptor_t w, cudnnBackendDescriptor_t y,
                                               cudnnBackendDescriptor_t conv, float beta) {
    static const cudnnBackendDescriptorType_t types[3] = {
        CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR,
        CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
        CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR};
    /* attribute names per direction, in the order x, w, y, conv, alpha, beta */
    static const cudnnBackendAttributeName_t names[3][6] = {
        {CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
         CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
         CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA},
        {CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
         CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
         CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA},
        {CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
         CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
         CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA}};
    float alpha = 1.0f;
    cudnnBackendDescriptor_t op = create_descriptor(types[direction]);
    set_attribute(op, names[direction][0], CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    set_attribute(op, names[direction][1], CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &w);
    set_attribute(op, names[direction][2], CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    set_attribute(op, names[direction][3], CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &conv);
    set_attribute(op, names[direction][4], CUDNN_TYPE_FLOAT, 1, &alpha);
    set_attribute(op, names[direction][5], CUDNN_TYPE_FLOAT, 1, &beta);
    CUDNN_CHECK(cudnnBackendFinalize(op));
    return op;
}

/* Does the precision (and determinism) setting allow this engine? */
static int engine_allowed(cudnnBackendDescriptor_t engine, ncsn_precision precision, int deterministic) {
    cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
    int64_t count = 0;
    CUDNN_CHECK(cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                         CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &count, notes));
    for (int64_t i = 0; i < count; i++) {
        cudnnBackendNumericalNote_t note = notes[i];
        if (precision == NCSN_PRECISION_FP32 &&
            (note == CUDNN_NUMERICAL_NOTE_TENSOR_CORE || note == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS ||
             note == CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION))
            return 0;
        if (deterministic && note == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) return 0;
    }
    return 1;
}

/* Runs the heuristics in `mode` over `graph` and finalizes the first allowed engine
 * configuration into an execution plan. Returns the plan (NULL if none) and hands back the
 * chosen configuration, which the caller keeps alive with the plan. `last_status` records
 * the last failure, for the error message when no mode yields a plan. */
static cudnnBackendDescriptor_t plan_from_heuristics(cuda_backend_impl *impl, cudnnBackendDescriptor_t graph,
                                                     cudnnBackendHeurMode_t mode, ncsn_precision precision,
                                                     int deterministic, cudnnBackendDescriptor_t *chosen_config,
                                                     int64_t *engine_index, cudnnStatus_t *last_status) {
    cudnnBackendDescriptor_t heuristics = create_descriptor(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    set_attribute(heuristics, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph);
    set_attribute(heuristics, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    set_attribute(heuristics, CUDNN_ATTR_ENGINEHEUR_DEVICEPROP, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                  &impl->cudnn_device_properties);
    /* A mode may not cover a graph (NOT_SUPPORTED): that is an empty answer, not an error;
     * the caller then asks the next mode. */
    cudnnStatus_t status = cudnnBackendFinalize(heuristics);
    if (status != CUDNN_STATUS_SUCCESS) {
        *last_status = status;
        CUDNN_CHECK(cudnnBackendDestroyDescriptor(heuristics));
        return NULL;
    }
    int64_t count = 0;
    CUDNN_CHECK(cudnnBackendGetAttribute(heuristics, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                         &count, NULL));
    cudnnBackendDescriptor_t *configs = ncsn_xcalloc(count > 0 ? (size_t)count : 1, sizeof *configs);
    for (int64_t i = 0; i < count; i++) configs[i] = create_descriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    int64_t returned = 0;
    if (count > 0)
        CUDNN_CHECK(cudnnBackendGetAttribute(heuristics, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                             count, &returned, configs));

    cudnnBackendDescriptor_t plan = NULL;
    int64_t chosen = -1;
    for (int64_t i = 0; i < returned && !plan; i++) {
        cudnnBackendDescriptor_t engine = create_descriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
        int64_t got = 0;
        CUDNN_CHECK(cudnnBackendGetAttribute(configs[i], CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                             &got, &engine));
        int allowed = engine_allowed(engine, precision, deterministic);
        int64_t index = -1;
        CUDNN_CHECK(
            cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &got, &index));
        CUDNN_CHECK(cudnnBackendDestroyDescriptor(engine));
        if (!allowed) continue;
        cudnnBackendDescriptor_t candidate = create_descriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
        set_attribute(candidate, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                      &configs[i]);
        set_attribute(candidate, CUDNN_ATTR_EXECUTION_PLAN_DEVICEPROP, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                      &impl->cudnn_device_properties);
        /* An engine may reject this shape, alignment or beta at finalize time (mostly the
         * NOT_SUPPORTED family, but runtime-compiled engines can also fail to build);
         * heuristics rank candidates, they do not guarantee them, so try the next one. */
        status = cudnnBackendFinalize(candidate);
        if (status == CUDNN_STATUS_SUCCESS) {
            plan = candidate;
            chosen = i;
            *engine_index = index;
        } else {
            *last_status = status;
            CUDNN_CHECK(cudnnBackendDestroyDescriptor(candidate));
        }
    }
    for (int64_t i = 0; i < count; i++)
        if (i != chosen) CUDNN_CHECK(cudnnBackendDestroyDescriptor(configs[i]));
    *chosen_config = chosen >= 0 ? configs[chosen] : NULL;
    free(configs);
    CUDNN_CHECK(cudnnBackendDestroyDescriptor(heuristics));
    return plan;
}

static void destroy_plan_descriptors(cuda_conv_plan *p) {
    if (p->plan) CUDNN_CHECK(cudnnBackendDestroyDescriptor(p->plan));
    for (int i = p->owned_count - 1; i >= 0; i--) CUDNN_CHECK(cudnnBackendDestroyDescriptor(p->owned[i]));
    p->plan = NULL;
    p->owned_count = 0;
}

/* Builds the descriptors of `p` (its key filled in) with the given beta. Returns 1 if an
 * execution plan was found. */
static int build_plan(cuda_backend_impl *impl, cuda_conv_plan *p, float beta, cudnnStatus_t *last_status) {
    const ncsn_conv_desc *d = &p->desc;
    int64_t a = p->alignment;
    cudnnBackendDescriptor_t x = make_tensor(UID_X, d->N, d->C, d->H, d->W, a);
    cudnnBackendDescriptor_t w = make_tensor(UID_W, d->K, d->C, d->ksize, d->ksize, a);
    cudnnBackendDescriptor_t y = make_tensor(UID_Y, d->N, d->K, d->H, d->W, a);
    cudnnBackendDescriptor_t conv = make_convolution(d);
    cudnnBackendDescriptor_t op = make_operation(p->direction, x, w, y, conv, beta);
    /* No handle on the graph: since cuDNN 9.8 graphs and plans are built without a device
     * ("deviceless"), heuristics and plans take the device-properties descriptor, and the
     * handle attributes are deprecated (9.19). */
    cudnnBackendDescriptor_t graph = create_descriptor(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    set_attribute(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op);
    CUDNN_CHECK(cudnnBackendFinalize(graph));

    p->owned_count = 0;
    p->owned[p->owned_count++] = x;
    p->owned[p->owned_count++] = w;
    p->owned[p->owned_count++] = y;
    p->owned[p->owned_count++] = conv;
    p->owned[p->owned_count++] = op;
    p->owned[p->owned_count++] = graph;

    static const cudnnBackendHeurMode_t modes[2] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};
    int64_t engine_index = -1;
    for (int m = 0; m < 2 && !p->plan; m++) {
        cudnnBackendDescriptor_t config = NULL;
        p->plan = plan_from_heuristics(impl, graph, modes[m], p->precision, p->deterministic, &config, &engine_index,
                                       last_status);
        if (p->plan) p->owned[p->owned_count++] = config;
    }
    if (!p->plan) {
        destroy_plan_descriptors(p);
        return 0;
    }
    int64_t got = 0;
    CUDNN_CHECK(cudnnBackendGetAttribute(p->plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &got,
                                         &p->workspace_bytes));
    if (getenv("NCSN_CUDA_VERBOSE"))
        fprintf(stderr,
                "cuda: conv %s N%d C%d H%d W%d K%d k%d d%d: engine %lld, workspace %lld B, beta %g, align %d%s%s\n",
                conv_direction_names[p->direction], d->N, d->C, d->H, d->W, d->K, d->ksize, d->dilation,
                (long long)engine_index, (long long)p->workspace_bytes, (double)beta, p->alignment,
                p->precision == NCSN_PRECISION_FP32 ? ", strict fp32" : ", tf32 allowed",
                p->deterministic ? ", deterministic" : "");
    return 1;
}

/* Largest power of two (at most 16) dividing the address. cudaMalloc returns 256-byte
 * aligned memory, but tensors inside a model's buffers sit at any float offset, and cuDNN
 * must be told the alignment it may assume. */
static int pointer_alignment(const void *p) {
    uintptr_t a = (uintptr_t)p;
    if (a % 16 == 0) return 16;
    if (a % 8 == 0) return 8;
    return 4;
}

static int min_int(int a, int b) { return a < b ? a : b; }

/* Floats written by a direction: y (forward), dx (backward-data) or dw (backward-filter). */
static size_t output_count(const ncsn_conv_desc *d, conv_direction direction) {
    switch (direction) {
    case CONV_FORWARD:
        return (size_t)d->N * d->K * d->H * d->W;
    case CONV_BACKWARD_DATA:
        return (size_t)d->N * d->C * d->H * d->W;
    case CONV_BACKWARD_FILTER:
        return (size_t)d->K * d->C * d->ksize * d->ksize;
    }
    return 0;
}

/* Workspace a plan needs: cuDNN's own, rounded to 256 B, then the scratch output when the
 * plan cannot accumulate in place. */
static size_t plan_workspace_bytes(const cuda_conv_plan *p) {
    size_t bytes = ((size_t)p->workspace_bytes + 255) / 256 * 256;
    if (p->accumulate && !p->beta_in_place) bytes += output_count(&p->desc, p->direction) * sizeof(float);
    return bytes;
}

static int same_key(const cuda_conv_plan *p, const ncsn_conv_desc *d, conv_direction direction,
                    ncsn_precision precision, int accumulate, int alignment, int deterministic) {
    return p->direction == direction && p->precision == precision && p->accumulate == accumulate &&
           p->alignment == alignment && p->deterministic == deterministic && p->desc.N == d->N && p->desc.C == d->C &&
           p->desc.H == d->H && p->desc.W == d->W && p->desc.K == d->K && p->desc.ksize == d->ksize &&
           p->desc.dilation == d->dilation;
}

static cuda_conv_plan *get_plan(ncsn_backend *be, const ncsn_conv_desc *d, conv_direction direction, int accumulate,
                                int alignment) {
    cuda_backend_impl *impl = cuda_impl(be);
    for (int i = 0; i < impl->plan_count; i++)
        if (same_key(&impl->plans[i], d, direction, be->precision, accumulate, alignment, be->deterministic))
            return &impl->plans[i];

    if (impl->plan_count == impl->plan_capacity) {
        int capacity = impl->plan_capacity ? 2 * impl->plan_capacity : 64;
        cuda_conv_plan *grown = realloc(impl->plans, (size_t)capacity * sizeof *grown);
        if (!grown) ncsn_die("%s:%d: out of host memory for the convolution plan cache", __FILE__, __LINE__);
        impl->plans = grown;
        impl->plan_capacity = capacity;
    }
    cuda_conv_plan *p = &impl->plans[impl->plan_count];
    memset(p, 0, sizeof *p);
    p->desc = *d;
    p->desc.has_bias = 0; /* the bias is not part of the cuDNN graph */
    p->direction = direction;
    p->precision = be->precision;
    p->accumulate = accumulate;
    p->alignment = alignment;
    p->deterministic = be->deterministic;

    cudnnStatus_t last_status = CUDNN_STATUS_SUCCESS;
    p->beta_in_place = accumulate;
    if (!build_plan(impl, p, accumulate ? 1.0f : 0.0f, &last_status)) {
        p->beta_in_place = 0;
        if (!accumulate || !build_plan(impl, p, 0.0f, &last_status))
            ncsn_die("%s:%d: cuDNN has no %s engine for conv %s N=%d C=%d H=%d W=%d K=%d k=%d dilation=%d "
                     "(alignment %d B%s): last status %s",
                     __FILE__, __LINE__, be->precision == NCSN_PRECISION_FP32 ? "strict-fp32" : "tf32",
                     conv_direction_names[direction], d->N, d->C, d->H, d->W, d->K, d->ksize, d->dilation, alignment,
                     be->deterministic ? ", deterministic" : "", cudnnGetErrorString(last_status));
    }
    impl->plan_count++;
    /* Grow the shared workspace now, while no graph capture can be running, so later
     * calls with this shape never reallocate it. */
    cuda_workspace_reserve(be, plan_workspace_bytes(p));
    return p;
}

/* Executes `p`: out = conv(...) (+ out when accumulating). `out` is whichever of x/w/y
 * the direction writes; it is redirected into workspace scratch when the plan cannot
 * accumulate in place. */
static void execute_plan(ncsn_backend *be, cuda_conv_plan *p, void *x, void *w, void *y, float *out) {
    cuda_backend_impl *impl = cuda_impl(be);
    int scratch_add = p->accumulate && !p->beta_in_place;
    char *workspace = cuda_workspace_reserve(be, plan_workspace_bytes(p));
    float *scratch = (float *)(workspace + ((size_t)p->workspace_bytes + 255) / 256 * 256);
    if (scratch_add) {
        if (out == x) x = scratch;
        if (out == w) w = scratch;
        if (out == y) y = scratch;
    }
    int64_t uids[3] = {UID_X, UID_W, UID_Y};
    void *pointers[3] = {x, w, y};
    void *workspace_pointer = workspace;
    cudnnBackendDescriptor_t pack = create_descriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
    set_attribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 3, uids);
    set_attribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 3, pointers);
    set_attribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace_pointer);
    CUDNN_CHECK(cudnnBackendFinalize(pack));
    CUDNN_CHECK(cudnnBackendExecute(impl->cudnn, p->plan, pack));
    CUDNN_CHECK(cudnnBackendDestroyDescriptor(pack));
    if (scratch_add) ncsn_cuda_accumulate(impl->stream, out, scratch, output_count(&p->desc, p->direction));
}

/* ---- the three ops ---- */

static void check_conv_desc(const ncsn_conv_desc *d, const char *op) {
    NCSN_CHECKF(d != NULL, "%s: NULL ncsn_conv_desc", op);
    NCSN_CHECKF(d->N > 0 && d->C > 0 && d->H > 0 && d->W > 0 && d->K > 0,
                "%s: sizes must be positive (N=%d C=%d H=%d W=%d K=%d)", op, d->N, d->C, d->H, d->W, d->K);
    NCSN_CHECKF(d->ksize == 1 || d->ksize == 3, "%s: ksize %d (expected 1 or 3)", op, d->ksize);
    NCSN_CHECKF(d->dilation >= 1, "%s: dilation %d (PyTorch convention, >= 1)", op, d->dilation);
    NCSN_CHECKF(d->has_bias == 0 || d->has_bias == 1, "%s: has_bias %d", op, d->has_bias);
}

static int alignment3(const void *a, const void *b, const void *c) {
    return min_int(pointer_alignment(a), min_int(pointer_alignment(b), pointer_alignment(c)));
}

void cuda_conv2d_forward(ncsn_backend *be, float *out, const float *in, const float *w, const float *b,
                         const ncsn_conv_desc *d) {
    check_conv_desc(d, "conv2d_forward");
    NCSN_CHECKF(out && in && w, "conv2d_forward: NULL tensor (out %p, in %p, w %p)", (void *)out, (const void *)in,
                (const void *)w);
    NCSN_CHECKF(!d->has_bias || b, "conv2d_forward: has_bias but b is NULL");
    cuda_conv_plan *p = get_plan(be, d, CONV_FORWARD, 0, alignment3(in, w, out));
    execute_plan(be, p, (void *)in, (void *)w, out, out);
    if (d->has_bias) ncsn_cuda_conv_bias_forward(cuda_impl(be)->stream, out, b, d->N, d->K, (size_t)d->H * d->W);
}

void cuda_conv2d_backward_data(ncsn_backend *be, float *din, const float *dout, const float *w, const ncsn_conv_desc *d,
                               int accumulate) {
    check_conv_desc(d, "conv2d_backward_data");
    NCSN_CHECKF(din && dout && w, "conv2d_backward_data: NULL tensor (din %p, dout %p, w %p)", (void *)din,
                (const void *)dout, (const void *)w);
    cuda_conv_plan *p = get_plan(be, d, CONV_BACKWARD_DATA, accumulate ? 1 : 0, alignment3(din, w, dout));
    execute_plan(be, p, din, (void *)w, (void *)dout, din);
}

void cuda_conv2d_backward_weights_accumulate(ncsn_backend *be, float *dw, float *db, const float *in, const float *dout,
                                             const ncsn_conv_desc *d) {
    check_conv_desc(d, "conv2d_backward_weights_accumulate");
    NCSN_CHECKF(dw && in && dout, "conv2d_backward_weights_accumulate: NULL tensor (dw %p, in %p, dout %p)", (void *)dw,
                (const void *)in, (const void *)dout);
    NCSN_CHECKF(!d->has_bias || db, "conv2d_backward_weights_accumulate: has_bias but db is NULL");
    cuda_conv_plan *p = get_plan(be, d, CONV_BACKWARD_FILTER, 1, alignment3(in, dw, dout));
    execute_plan(be, p, (void *)in, dw, (void *)dout, dw);
    if (d->has_bias)
        ncsn_cuda_conv_bias_backward_accumulate(cuda_impl(be)->stream, db, dout, d->N, d->K, (size_t)d->H * d->W);
}

void cuda_conv_destroy(cuda_backend_impl *impl) {
    for (int i = 0; i < impl->plan_count; i++) destroy_plan_descriptors(&impl->plans[i]);
    free(impl->plans);
    impl->plans = NULL;
    impl->plan_count = impl->plan_capacity = 0;
}
