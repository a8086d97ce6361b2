/* cuda_conv.c: the three convolutions (forward, backward-data, backward-filter) through
 * the cuDNN 9 graph (backend) API, plain C.
 *
 * For each distinct (shape, direction, precision, accumulate, pointer alignment,
 * determinism) we build ONE execution plan and cache it:
 *   tensor descriptors X, W, Y (NCHW / KCRS fp32, packed strides; BF16: see below)
 *   -> convolution descriptor (cross-correlation, "same" padding = dilation * (k / 2))
 *   -> one operation (CONVOLUTION_FORWARD / _BACKWARD_DATA / _BACKWARD_FILTER)
 *   -> operation graph -> heuristics (mode A, then FALLBACK if A yields nothing usable)
 *   -> the first engine configuration whose numerical notes the precision allows and
 *      that finalizes into an execution plan.
 * Execution is a variant pack (device pointers by unique id + the shared workspace).
 *
 * Precision. NCSN_PRECISION_FP32 is strict fp32: engines whose numerical notes say they
 * use tensor cores (TF32 on fp32 data), down-convert inputs, or reduce in lower
 * precision are skipped, exactly as PyTorch does with allow_tf32 off. TF32 accepts tensor
 * cores and reduced-precision reductions, but still not DOWN_CONVERT_INPUTS: on fp32 data
 * that note means the inputs are converted to fp16 (5 exponent bits: |x| > 65504 becomes
 * inf), which is not TF32; PyTorch drops those engines in every mode too.
 * The comp type is fp32 in every case. With be->deterministic, engines noted
 * NONDETERMINISTIC are skipped too.
 *
 * BF16 (compile-checked only: no GPU was available to run it. tests/test_precision.c,
 * run on a GPU machine, checks it against the CPU backend's BF16, which rounds the inputs
 * identically, and prints which output type each shape got). The model keeps
 * fp32 NCHW tensors everywhere (norms, loss, optimizer, sampler state and master weights
 * stay fp32); only the convolution sees bf16:
 *   1. its two inputs are converted by kernels/convert.cu into bf16 CHANNELS-LAST copies
 *      in the workspace (activations NHWC, filters KRSC; round to nearest even). Tensor-
 *      core convolutions want NHWC, and since the conversion must touch every element
 *      anyway, its transpose is free: the model itself need not change layout;
 *   2. cuDNN runs the convolution on them with fp32 compute (accumulation) and writes
 *      its output channels-last into the workspace, in fp32 where an engine supports
 *      that mixed-type graph, else in bf16 (one more rounding, of the output: relative
 *      2^-8 at most) -- build_plan tries fp32 first and the verbose line says which it got;
 *   3. a kernel transposes the output back into the caller's fp32 NCHW tensor, adding
 *      to it when the op accumulates (so bf16 plans always run with beta = 0).
 * Shapes for which cuDNN offers no bf16 engine at all (typically the 1- and 3-channel
 * first and last convolutions, which tensor cores cannot tile) run in TF32 instead, with
 * a one-line note. The bias and its gradient stay fp32 (the gradient from fp32 dout).
 * Weights are converted on every call: caching them would need invalidation whenever
 * the optimizer steps, and they are small next to the activations. The staging copies
 * live in the shared workspace, which therefore grows by about 1.5 times the bytes of
 * the largest fp32 activation at the planned batch size (a bf16 input, an fp32 output).
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

/* The three tensors by slot, for code that treats them alike (BF16 staging). */
enum { SLOT_X = 0, SLOT_W = 1, SLOT_Y = 2, SLOT_COUNT = 3 };

/* The slot each direction writes: y (forward), dx (backward-data), dw (backward-filter). */
static const int output_slot[3] = {SLOT_Y, SLOT_X, SLOT_W};

/* Descriptors a plan keeps alive: 3 tensors, the convolution, the operation, the graph and
 * the chosen engine configuration (the plan was finalized from them). */
#define PLAN_MAX_OWNED 7

/* Workspace offsets are rounded to this, so every staged tensor is 16-byte aligned. */
#define WORKSPACE_ALIGN 256

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
    /* BF16 plans only (precision == NCSN_PRECISION_BF16; their key has accumulate 0 and
     * alignment 16, since they never touch the caller's pointers): */
    cudnnDataType_t output_type; /* what cuDNN writes into the staging: FLOAT, else BFLOAT16 */
    int runs_tf32;               /* no bf16 engine for this shape: the TF32 plan serves it */
};

static const char *precision_name(ncsn_precision p) {
    return p == NCSN_PRECISION_FP32 ? "strict-fp32" : p == NCSN_PRECISION_TF32 ? "tf32" : "bf16";
}

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

/* A packed 4-D tensor of logical shape [d0, d1, d2, d3] (NCHW activations, KCRS filters),
 * stored channels-first (the model's layout) or channels-last (NHWC / KRSC: the BF16
 * staging). cuDNN always takes dims in N, C, H, W order; the strides say the layout. */
static cudnnBackendDescriptor_t make_tensor(int64_t uid, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                                            cudnnDataType_t type, int channels_last, int64_t alignment) {
    int64_t dims[4] = {d0, d1, d2, d3};
    int64_t strides[4] = {d1 * d2 * d3, d2 * d3, d3, 1};
    if (channels_last) {
        strides[1] = 1;
        strides[2] = d3 * d1;
        strides[3] = d1;
    }
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
    return op; /* not finalized: build_plan does that (a BF16 type mix may be rejected) */
}

/* Finalizes an operation or graph. FP32 / TF32 graphs must be accepted (a rejection is a
 * bug: CUDNN_CHECK). A BF16 graph with an fp32 output mixes data types, which cuDNN may
 * reject already here rather than at the heuristics: for those a rejection is an empty
 * answer, recorded in last_status, and the caller tries the next output type. */
static int finalize_graph_part(cudnnBackendDescriptor_t d, int may_reject, cudnnStatus_t *last_status) {
    if (!may_reject) {
        CUDNN_CHECK(cudnnBackendFinalize(d));
        return 1;
    }
    cudnnStatus_t status = cudnnBackendFinalize(d);
    if (status == CUDNN_STATUS_SUCCESS) return 1;
    *last_status = status;
    if (getenv("NCSN_CUDA_VERBOSE")) {
        char detail[512];
        cudnnGetLastErrorString(detail, sizeof detail);
        fprintf(stderr, "cuda: bf16 convolution graph rejected: %s%s%s\n", cudnnGetErrorString(status),
                detail[0] ? ": " : "", detail);
    }
    return 0;
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
        if (precision == NCSN_PRECISION_TF32 && note == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS) return 0;
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

/* Builds the descriptors of `p` (its key filled in; for BF16 also output_type) with the
 * given beta. Returns 1 if an execution plan was found. FP32 / TF32: fp32 NCHW tensors,
 * the caller's own pointers. BF16: channels-last staging tensors, inputs bf16, the output
 * slot in output_type. */
static int build_plan(cuda_backend_impl *impl, cuda_conv_plan *p, float beta, cudnnStatus_t *last_status) {
    const ncsn_conv_desc *d = &p->desc;
    int64_t a = p->alignment;
    int bf16 = p->precision == NCSN_PRECISION_BF16;
    cudnnDataType_t types[SLOT_COUNT] = {CUDNN_DATA_FLOAT, CUDNN_DATA_FLOAT, CUDNN_DATA_FLOAT};
    if (bf16) {
        for (int slot = 0; slot < SLOT_COUNT; slot++) types[slot] = CUDNN_DATA_BFLOAT16;
        types[output_slot[p->direction]] = p->output_type;
    }
    cudnnBackendDescriptor_t x = make_tensor(UID_X, d->N, d->C, d->H, d->W, types[SLOT_X], bf16, a);
    cudnnBackendDescriptor_t w = make_tensor(UID_W, d->K, d->C, d->ksize, d->ksize, types[SLOT_W], bf16, a);
    cudnnBackendDescriptor_t y = make_tensor(UID_Y, d->N, d->K, d->H, d->W, types[SLOT_Y], bf16, a);
    cudnnBackendDescriptor_t conv = make_convolution(d);
    cudnnBackendDescriptor_t op = make_operation(p->direction, x, w, y, conv, beta);
    p->owned_count = 0;
    p->owned[p->owned_count++] = x;
    p->owned[p->owned_count++] = w;
    p->owned[p->owned_count++] = y;
    p->owned[p->owned_count++] = conv;
    p->owned[p->owned_count++] = op;
    if (!finalize_graph_part(op, bf16, last_status)) {
        destroy_plan_descriptors(p);
        return 0;
    }
    /* No handle on the graph: since cuDNN 9.8 graphs and plans are built without a device
     * ("deviceless"), heuristics and plans take the device-properties descriptor, and the
     * handle attributes are deprecated (9.19). */
    cudnnBackendDescriptor_t graph = create_descriptor(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    set_attribute(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op);
    p->owned[p->owned_count++] = graph;
    if (!finalize_graph_part(graph, bf16, last_status)) {
        destroy_plan_descriptors(p);
        return 0;
    }

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
                "cuda: conv %s N%d C%d H%d W%d K%d k%d d%d: engine %lld, workspace %lld B, beta %g, align %d, %s%s%s\n",
                conv_direction_names[p->direction], d->N, d->C, d->H, d->W, d->K, d->ksize, d->dilation,
                (long long)engine_index, (long long)p->workspace_bytes, (double)beta, p->alignment,
                precision_name(p->precision),
                !bf16 ? "" : p->output_type == CUDNN_DATA_FLOAT ? " (bf16 NHWC inputs, fp32 output)"
                                                                : " (bf16 NHWC inputs, bf16 output)",
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

/* Elements of a slot's tensor, and its [B][C][S] view for the staging kernels. */
static void slot_geometry(const ncsn_conv_desc *d, int slot, int *B, int *C, size_t *S) {
    switch (slot) {
    case SLOT_X:
        *B = d->N, *C = d->C, *S = (size_t)d->H * d->W;
        return;
    case SLOT_W:
        *B = d->K, *C = d->C, *S = (size_t)d->ksize * d->ksize;
        return;
    default:
        *B = d->N, *C = d->K, *S = (size_t)d->H * d->W;
        return;
    }
}

static size_t slot_count(const ncsn_conv_desc *d, int slot) {
    int B, C;
    size_t S;
    slot_geometry(d, slot, &B, &C, &S);
    return (size_t)B * C * S;
}

/* Floats written by a direction: y (forward), dx (backward-data) or dw (backward-filter). */
static size_t output_count(const ncsn_conv_desc *d, conv_direction direction) {
    return slot_count(d, output_slot[direction]);
}

static size_t round_up(size_t bytes) { return (bytes + WORKSPACE_ALIGN - 1) / WORKSPACE_ALIGN * WORKSPACE_ALIGN; }

/* Bytes of a BF16 plan's staging copy of `slot`: bf16 for the inputs, output_type for the
 * output. */
static size_t staged_bytes(const cuda_conv_plan *p, int slot) {
    size_t element = slot == output_slot[p->direction] && p->output_type == CUDNN_DATA_FLOAT ? sizeof(float) : 2;
    return round_up(slot_count(&p->desc, slot) * element);
}

/* Workspace a plan needs, in this order: cuDNN's own, rounded to 256 B; then either the
 * scratch output of a plan that cannot accumulate in place (FP32 / TF32), or the three
 * staging tensors X, W, Y (BF16). */
static size_t plan_workspace_bytes(const cuda_conv_plan *p) {
    size_t bytes = round_up((size_t)p->workspace_bytes);
    if (p->precision == NCSN_PRECISION_BF16) {
        for (int slot = 0; slot < SLOT_COUNT; slot++) bytes += staged_bytes(p, slot);
        return bytes;
    }
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

/* BF16: the plan with an fp32 output if any engine takes that mixed graph, else with a
 * bf16 output; if neither, the shape is marked to run in TF32. */
static void build_bf16_plan(ncsn_backend *be, cuda_conv_plan *p) {
    cuda_backend_impl *impl = cuda_impl(be);
    static const cudnnDataType_t output_types[2] = {CUDNN_DATA_FLOAT, CUDNN_DATA_BFLOAT16};
    cudnnStatus_t last_status = CUDNN_STATUS_SUCCESS;
    for (int i = 0; i < 2; i++) {
        p->output_type = output_types[i];
        if (build_plan(impl, p, 0.0f, &last_status)) return;
    }
    p->runs_tf32 = 1;
    const ncsn_conv_desc *d = &p->desc;
    if (!impl->bf16_fallback_reported || getenv("NCSN_CUDA_VERBOSE"))
        fprintf(stderr,
                "ncsn: cuda: no cuDNN bf16 engine for conv %s N=%d C=%d H=%d W=%d K=%d k=%d dilation=%d (last status "
                "%s); %s convolutions run in tf32%s\n",
                conv_direction_names[p->direction], d->N, d->C, d->H, d->W, d->K, d->ksize, d->dilation,
                cudnnGetErrorString(last_status), impl->bf16_fallback_reported ? "this shape's" : "such",
                impl->bf16_fallback_reported ? "" : " (NCSN_CUDA_VERBOSE=1 lists every shape)");
    impl->bf16_fallback_reported = 1;
}

static cuda_conv_plan *get_plan(ncsn_backend *be, const ncsn_conv_desc *d, conv_direction direction,
                                ncsn_precision precision, int accumulate, int alignment) {
    cuda_backend_impl *impl = cuda_impl(be);
    for (int i = 0; i < impl->plan_count; i++)
        if (same_key(&impl->plans[i], d, direction, precision, accumulate, alignment, be->deterministic))
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
    p->precision = precision;
    p->accumulate = accumulate;
    p->alignment = alignment;
    p->deterministic = be->deterministic;

    if (precision == NCSN_PRECISION_BF16) {
        build_bf16_plan(be, p);
    } else {
        cudnnStatus_t last_status = CUDNN_STATUS_SUCCESS;
        p->beta_in_place = accumulate;
        if (!build_plan(impl, p, accumulate ? 1.0f : 0.0f, &last_status)) {
            p->beta_in_place = 0;
            if (!accumulate || !build_plan(impl, p, 0.0f, &last_status))
                ncsn_die("%s:%d: cuDNN has no %s engine for conv %s N=%d C=%d H=%d W=%d K=%d k=%d dilation=%d "
                         "(alignment %d B%s): last status %s",
                         __FILE__, __LINE__, precision_name(precision), conv_direction_names[direction], d->N, d->C,
                         d->H, d->W, d->K, d->ksize, d->dilation, alignment,
                         be->deterministic ? ", deterministic" : "", cudnnGetErrorString(last_status));
        }
    }
    impl->plan_count++;
    /* Grow the shared workspace now, while no graph capture can be running, so later
     * calls with this shape never reallocate it. */
    if (!p->runs_tf32) cuda_workspace_reserve(be, plan_workspace_bytes(p));
    return p;
}

/* The plan that runs one call at the backend's precision. BF16 plans are keyed with
 * accumulate 0 and alignment 16: they stage everything in the workspace. A BF16 shape
 * without a bf16 engine is served by the TF32 plan of the caller's accumulate and
 * alignment. The pointer is valid until the next get_plan (the cache may move). */
static cuda_conv_plan *plan_for_call(ncsn_backend *be, const ncsn_conv_desc *d, conv_direction direction,
                                     int accumulate, int alignment) {
    ncsn_precision precision = be->precision;
    if (precision == NCSN_PRECISION_BF16) {
        cuda_conv_plan *p = get_plan(be, d, direction, NCSN_PRECISION_BF16, 0, 16);
        if (!p->runs_tf32) return p;
        precision = NCSN_PRECISION_TF32;
    }
    return get_plan(be, d, direction, precision, accumulate, alignment);
}

static void execute_variant_pack(cuda_backend_impl *impl, cuda_conv_plan *p, void *x, void *w, void *y,
                                 void *workspace) {
    int64_t uids[3] = {UID_X, UID_W, UID_Y};
    void *pointers[3] = {x, w, y};
    cudnnBackendDescriptor_t pack = create_descriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
    set_attribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 3, uids);
    set_attribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 3, pointers);
    set_attribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
    CUDNN_CHECK(cudnnBackendFinalize(pack));
    CUDNN_CHECK(cudnnBackendExecute(impl->cudnn, p->plan, pack));
    CUDNN_CHECK(cudnnBackendDestroyDescriptor(pack));
}

/* Executes an FP32 / TF32 plan `p`: out = conv(...) (+ out when accumulating). `out` is
 * whichever of x/w/y the direction writes; it is redirected into workspace scratch when
 * the plan cannot accumulate in place. */
static void execute_plan(ncsn_backend *be, cuda_conv_plan *p, void *x, void *w, void *y, float *out) {
    cuda_backend_impl *impl = cuda_impl(be);
    int scratch_add = p->accumulate && !p->beta_in_place;
    char *workspace = cuda_workspace_reserve(be, plan_workspace_bytes(p));
    float *scratch = (float *)(workspace + round_up((size_t)p->workspace_bytes));
    if (scratch_add) {
        if (out == x) x = scratch;
        if (out == w) w = scratch;
        if (out == y) y = scratch;
    }
    execute_variant_pack(impl, p, x, w, y, workspace);
    if (scratch_add) ncsn_cuda_accumulate(impl->stream, out, scratch, output_count(&p->desc, p->direction));
}

/* Executes a BF16 plan: the two input slots (fp32 NCHW / KCRS, the caller's) are staged
 * as bf16 channels-last, cuDNN writes the output slot's staging, and that is transposed
 * back into the caller's fp32 tensor (+= when accumulate). tensors[] holds the caller's
 * x, w, y pointers; tensors[output_slot] is the output. */
static void execute_bf16_plan(ncsn_backend *be, cuda_conv_plan *p, float *const tensors[SLOT_COUNT], int accumulate) {
    cuda_backend_impl *impl = cuda_impl(be);
    char *workspace = cuda_workspace_reserve(be, plan_workspace_bytes(p));
    void *staged[SLOT_COUNT];
    size_t offset = round_up((size_t)p->workspace_bytes);
    for (int slot = 0; slot < SLOT_COUNT; slot++) {
        staged[slot] = workspace + offset;
        offset += staged_bytes(p, slot);
    }
    int out = output_slot[p->direction];
    for (int slot = 0; slot < SLOT_COUNT; slot++) {
        if (slot == out) continue;
        int B, C;
        size_t S;
        slot_geometry(&p->desc, slot, &B, &C, &S);
        ncsn_cuda_channels_first_to_last_bf16(impl->stream, (uint16_t *)staged[slot], tensors[slot], B, C, S);
    }
    execute_variant_pack(impl, p, staged[SLOT_X], staged[SLOT_W], staged[SLOT_Y], workspace);
    int B, C;
    size_t S;
    slot_geometry(&p->desc, out, &B, &C, &S);
    ncsn_cuda_channels_last_to_first_f32(impl->stream, tensors[out], staged[out], p->output_type == CUDNN_DATA_BFLOAT16,
                                         B, C, S, accumulate);
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
    cuda_conv_plan *p = plan_for_call(be, d, CONV_FORWARD, 0, alignment3(in, w, out));
    if (p->precision == NCSN_PRECISION_BF16) {
        float *const tensors[SLOT_COUNT] = {(float *)in, (float *)w, out};
        execute_bf16_plan(be, p, tensors, 0);
    } else {
        execute_plan(be, p, (void *)in, (void *)w, out, out);
    }
    if (d->has_bias) ncsn_cuda_conv_bias_forward(cuda_impl(be)->stream, out, b, d->N, d->K, (size_t)d->H * d->W);
}

void cuda_conv2d_backward_data(ncsn_backend *be, float *din, const float *dout, const float *w, const ncsn_conv_desc *d,
                               int accumulate) {
    check_conv_desc(d, "conv2d_backward_data");
    NCSN_CHECKF(din && dout && w, "conv2d_backward_data: NULL tensor (din %p, dout %p, w %p)", (void *)din,
                (const void *)dout, (const void *)w);
    cuda_conv_plan *p = plan_for_call(be, d, CONV_BACKWARD_DATA, accumulate ? 1 : 0, alignment3(din, w, dout));
    if (p->precision == NCSN_PRECISION_BF16) {
        float *const tensors[SLOT_COUNT] = {din, (float *)w, (float *)dout};
        execute_bf16_plan(be, p, tensors, accumulate ? 1 : 0);
    } else {
        execute_plan(be, p, din, (void *)w, (void *)dout, din);
    }
}

void cuda_conv2d_backward_weights_accumulate(ncsn_backend *be, float *dw, float *db, const float *in, const float *dout,
                                             const ncsn_conv_desc *d) {
    check_conv_desc(d, "conv2d_backward_weights_accumulate");
    NCSN_CHECKF(dw && in && dout, "conv2d_backward_weights_accumulate: NULL tensor (dw %p, in %p, dout %p)", (void *)dw,
                (const void *)in, (const void *)dout);
    NCSN_CHECKF(!d->has_bias || db, "conv2d_backward_weights_accumulate: has_bias but db is NULL");
    cuda_conv_plan *p = plan_for_call(be, d, CONV_BACKWARD_FILTER, 1, alignment3(in, dw, dout));
    if (p->precision == NCSN_PRECISION_BF16) {
        float *const tensors[SLOT_COUNT] = {(float *)in, dw, (float *)dout};
        execute_bf16_plan(be, p, tensors, 1);
    } else {
        execute_plan(be, p, (void *)in, dw, (void *)dout, dw);
    }
    if (d->has_bias)
        ncsn_cuda_conv_bias_backward_accumulate(cuda_impl(be)->stream, db, dout, d->N, d->K, (size_t)d->H * d->W);
}

ncsn_precision cuda_conv_effective_precision(ncsn_backend *be, const ncsn_conv_desc *d, int direction,
                                             int *bf16_output) {
    check_conv_desc(d, "cuda_conv_effective_precision");
    NCSN_CHECKF(direction >= CONV_FORWARD && direction <= CONV_BACKWARD_FILTER,
                "cuda_conv_effective_precision: direction %d", direction);
    if (bf16_output) *bf16_output = 0;
    if (be->precision != NCSN_PRECISION_BF16) return be->precision;
    cuda_conv_plan *p = get_plan(be, d, (conv_direction)direction, NCSN_PRECISION_BF16, 0, 16);
    if (p->runs_tf32) return NCSN_PRECISION_TF32;
    if (bf16_output) *bf16_output = p->output_type == CUDNN_DATA_BFLOAT16;
    return NCSN_PRECISION_BF16;
}

void cuda_conv_destroy(cuda_backend_impl *impl) {
    for (int i = 0; i < impl->plan_count; i++) destroy_plan_descriptors(&impl->plans[i]);
    free(impl->plans);
    impl->plans = NULL;
    impl->plan_count = impl->plan_capacity = 0;
}
