/* cuda_conv.c: the three convolutions (forward, backward-data, backward-filter) of the
 * fp32 NCHW op set, and the forward of the bf16 NHWC inference op set (backend.h), through
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
 *
 * bf16 NHWC inference (conv2d_forward_bf16; compile-checked only: no GPU was
 * available to run it). The sampler's network keeps its activations in bf16 NHWC, so the
 * convolution reads the caller's input and writes the caller's output directly: no staging,
 * no transpose. Its weights are packed once (conv2d_pack_weights_bf16: fp32 KCRS -> bf16
 * KRSC, round to nearest even, padded to a multiple of 256 bytes, then the fp32 bias at that
 * 256-byte boundary, so the bias operand is always aligned). The contract is
 * out = bf16(act(conv(in, w) + b + residual)): fp32 accumulation, the bias, the residual and
 * the ELU (the "epilogue", each optional) in fp32, ONE rounding. Plans are cached as above,
 * keyed by shape (N included), bias / residual (none, separate, out itself) / ELU, the
 * alignment of in, out, residual and of the bias, and determinism. The first variant that
 * finalizes on this GPU serves the shape (cuda_conv_bf16_variant in cuda_internal.h):
 *   fused        X bf16 NHWC, W bf16 KRSC -> CONVOLUTION_FORWARD (fp32 compute) -> fp32
 *                virtual -> [POINTWISE ADD B fp32 [1, K, 1, 1], strides {K, 1, K, K}]
 *                -> [POINTWISE ADD R bf16 NHWC] -> [POINTWISE ELU_FWD] -> Y bf16 NHWC, every
 *                intermediate a virtual fp32 tensor and every pointwise op in fp32 math.
 *                Only cuDNN's runtime-fusion engines take such graphs (NVRTC-compiled when
 *                the plan is finalized: once per shape, in the eager warm-up; sm_80+, NHWC,
 *                channel counts that tensor cores tile). Tried first when there is an
 *                epilogue, except with the residual in place (out += conv): cuDNN documents
 *                no aliasing of variant-pack tensors, so that case starts at fp32-output
 *                until FUSE_IN_PLACE_RESIDUAL is enabled after a GPU check. (The networks'
 *                call lists never ask for it: models/layers.c keeps residuals apart.)
 *   fp32-output  conv -> Y fp32 NHWC in the workspace, then kernels/convert.cu runs the
 *                epilogue and rounds once: the contract, one more memory pass.
 *   bf16-output  conv -> Y bf16 NHWC, the caller's out: only for a convolution without an
 *                epilogue (no bias, residual or ELU), where it is the contract; tried first
 *                there. With an epilogue it would round twice, so it is never used.
 *   via-fp32     no bf16 engine at all (possibly the C = 3 first and K = 3 last convolutions,
 *                which tensor cores cannot tile): the input is widened to fp32 NCHW, the
 *                packed weights unpacked to fp32 KCRS (exact), the fp32 path's plan runs
 *                (TF32; strict FP32 if the backend is strict), its output is transposed to
 *                fp32 NHWC and the epilogue kernel rounds it into out; announced once. The
 *                numbers are those of the bf16 convolution to fp32 accuracy: every bf16 value
 *                is exact in TF32, so the products are exact and accumulate in fp32 (an
 *                engine with Winograd or FFT transforms adds fp32-level error, far inside
 *                the bf16 output's rounding).
 * NCSN_CUDA_VERBOSE=1 prints the variant, engine and workspace of every shape;
 * cuda_conv_bf16_inference_variant() reports it to tests and benchmarks.
 * CUDA-graph capture: the first (eager) call with a shape builds its plan(s) and reserves
 * their workspace; later calls only look the plan up, build a host-side variant pack and
 * enqueue work, so they can be captured (no allocation, synchronisation or host copy).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/cuda_internal.h"
#include "kernels/cuda_launch.h"

typedef enum { CONV_FORWARD = 0, CONV_BACKWARD_DATA = 1, CONV_BACKWARD_FILTER = 2 } conv_direction;

static const char *const conv_direction_names[] = {"forward", "backward-data", "backward-filter"};

/* Unique ids of the three tensors; in every direction X is the activation on the input
 * side (x or dx), W the filter (w or dw) and Y the activation on the output side (y or dy).
 * The fused bf16 NHWC graph adds the bias B, the residual R and the virtual fp32 tensors
 * between its operations (after the convolution, the bias add, the residual add). */
enum {
    UID_X = 'x',
    UID_W = 'w',
    UID_Y = 'y',
    UID_B = 'b',
    UID_R = 'r',
    UID_AFTER_CONV = 'c',
    UID_AFTER_BIAS = 'd',
    UID_AFTER_RESIDUAL = 'e'
};

/* The three tensors by slot, for code that treats them alike (BF16 staging). */
enum { SLOT_X = 0, SLOT_W = 1, SLOT_Y = 2, SLOT_COUNT = 3 };

/* The slot each direction writes: y (forward), dx (backward-data), dw (backward-filter). */
static const int output_slot[3] = {SLOT_Y, SLOT_X, SLOT_W};

/* Descriptors a plan keeps alive (the plan was finalized from them): a convolution graph
 * has 3 tensors, the convolution, the operation, the graph and the chosen engine
 * configuration (7); the fused bf16 NHWC graph adds up to three pointwise operations, each
 * with its descriptor, its output tensor and an operand tensor (B, R; the ELU has none):
 * 7 + 3 * 4 - 1 = 18. */
#define PLAN_MAX_OWNED 18

/* Workspace offsets are rounded to this, so every staged tensor is 16-byte aligned. */
#define WORKSPACE_ALIGN 256

/* backend.h: packed bf16 weights are a multiple of this many bytes, at an address aligned
 * to it, so consecutive packings in one buffer all start 16-byte aligned for cuDNN. */
#define PACKED_WEIGHTS_ALIGN 256

/* Which op set a plan serves. PLAN_FP32_NCHW: the fp32 NCHW convolutions (FP32 / TF32
 * plans on the caller's tensors, BF16 plans on staged copies). PLAN_BF16_NHWC: the bf16 NHWC
 * inference forward (conv2d_forward_bf16) on the caller's bf16 tensors. */
typedef enum { PLAN_FP32_NCHW = 0, PLAN_BF16_NHWC = 1 } plan_kind;

/* The residual of a bf16 NHWC forward: none, a tensor of its own, or the output itself
 * (out += conv: read and written in place). */
enum { RESIDUAL_NONE = 0, RESIDUAL_SEPARATE = 1, RESIDUAL_IN_PLACE = 2 };

/* Whether the fused cuDNN graph may serve RESIDUAL_IN_PLACE, i.e. run with the residual R and
 * the output Y at the same address. An epilogue reads each element of R before it writes the
 * same element of Y, in the same thread, so in practice this is safe, but cuDNN documents no
 * aliasing between variant-pack tensors: until a GPU run has checked it (tests/gpu), in-place
 * residuals take the unfused path, whose epilogue kernel is ours. */
#define FUSE_IN_PLACE_RESIDUAL 0

struct cuda_conv_plan {
    /* key (desc.has_bias is 0 in PLAN_FP32_NCHW plans: their bias is a separate kernel) */
    ncsn_conv_desc desc;
    plan_kind kind;
    conv_direction direction;
    ncsn_precision precision;
    int accumulate; /* the caller wants Y += conv (beta = 1) */
    int alignment;  /* bytes guaranteed for every pointer: 4, 8 or 16 (bf16 NHWC: of in and out, 2 to 16) */
    int bias_alignment; /* PLAN_BF16_NHWC with a bias: bytes guaranteed for b; else 0 */
    int residual;       /* PLAN_BF16_NHWC: RESIDUAL_NONE / _SEPARATE / _IN_PLACE */
    int elu;            /* PLAN_BF16_NHWC: the epilogue ends with the ELU */
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
    /* PLAN_BF16_NHWC only: how the shape runs (cuda_internal.h; VIA_FP32 has no plan here:
     * the PLAN_FP32_NCHW plan of the shape serves it). */
    cuda_conv_bf16_variant variant;
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
 * staging and the bf16 inference tensors). cuDNN always takes dims in N, C, H, W order; the
 * strides say the layout. A virtual tensor lives only inside a fused graph (no memory, no
 * pointer in the variant pack). */
static cudnnBackendDescriptor_t make_tensor_ex(int64_t uid, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                                               cudnnDataType_t type, int channels_last, int64_t alignment,
                                               bool is_virtual) {
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
    if (is_virtual) set_attribute(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    CUDNN_CHECK(cudnnBackendFinalize(t));
    return t;
}

static cudnnBackendDescriptor_t make_tensor(int64_t uid, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                                            cudnnDataType_t type, int channels_last, int64_t alignment) {
    return make_tensor_ex(uid, d0, d1, d2, d3, type, channels_last, alignment, false);
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
        /* bf16 promises fp32 accumulation of the bf16 products (backend.h): no engine that
         * reduces in lower precision or converts the inputs further (to fp16: 5 exponent bits). */
        if (precision == NCSN_PRECISION_BF16 && (note == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS ||
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

/* Keeps a descriptor alive with the plan (destroyed with it). */
static void own(cuda_conv_plan *p, cudnnBackendDescriptor_t d) {
    NCSN_CHECKF(p->owned_count < PLAN_MAX_OWNED, "cuda_conv: a plan owns more than %d descriptors", PLAN_MAX_OWNED);
    p->owned[p->owned_count++] = d;
}

static void destroy_plan_descriptors(cuda_conv_plan *p) {
    if (p->plan) CUDNN_CHECK(cudnnBackendDestroyDescriptor(p->plan));
    for (int i = p->owned_count - 1; i >= 0; i--) CUDNN_CHECK(cudnnBackendDestroyDescriptor(p->owned[i]));
    p->plan = NULL;
    p->owned_count = 0;
}

/* Finds the execution plan of `p`'s finalized `graph`: heuristics mode A, then FALLBACK,
 * the first allowed engine that finalizes (kept with the plan), and its workspace size.
 * Returns 0, with p's descriptors released, if there is none. */
static int plan_graph(cuda_backend_impl *impl, cuda_conv_plan *p, cudnnBackendDescriptor_t graph,
                      ncsn_precision precision, int64_t *engine_index, cudnnStatus_t *last_status) {
    static const cudnnBackendHeurMode_t modes[2] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};
    for (int m = 0; m < 2 && !p->plan; m++) {
        cudnnBackendDescriptor_t config = NULL;
        p->plan = plan_from_heuristics(impl, graph, modes[m], precision, p->deterministic, &config, engine_index,
                                       last_status);
        if (p->plan) own(p, config);
    }
    if (!p->plan) {
        destroy_plan_descriptors(p);
        return 0;
    }
    int64_t got = 0;
    CUDNN_CHECK(cudnnBackendGetAttribute(p->plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &got,
                                         &p->workspace_bytes));
    return 1;
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
    own(p, x);
    own(p, w);
    own(p, y);
    own(p, conv);
    own(p, op);
    if (!finalize_graph_part(op, bf16, last_status)) {
        destroy_plan_descriptors(p);
        return 0;
    }
    /* No handle on the graph: since cuDNN 9.8 graphs and plans are built without a device
     * ("deviceless"), heuristics and plans take the device-properties descriptor, and the
     * handle attributes are deprecated (9.19). */
    cudnnBackendDescriptor_t graph = create_descriptor(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    set_attribute(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op);
    own(p, graph);
    if (!finalize_graph_part(graph, bf16, last_status)) {
        destroy_plan_descriptors(p);
        return 0;
    }

    int64_t engine_index = -1;
    if (!plan_graph(impl, p, graph, p->precision, &engine_index, last_status)) return 0;
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
 * aligned memory, but tensors inside a model's buffers sit at any float (bf16: any
 * element) offset, and cuDNN must be told the alignment it may assume. */
static int pointer_alignment(const void *p) {
    uintptr_t a = (uintptr_t)p;
    for (int alignment = 16; alignment > 1; alignment /= 2)
        if (a % (uintptr_t)alignment == 0) return alignment;
    return 1;
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
 * staging tensors X, W, Y (BF16), or the fp32 NHWC output of an unfused bf16 NHWC plan
 * (CUDA_CONV_BF16_FP32_OUTPUT). */
static size_t plan_workspace_bytes(const cuda_conv_plan *p) {
    size_t bytes = round_up((size_t)p->workspace_bytes);
    if (p->kind == PLAN_BF16_NHWC) {
        if (p->variant == CUDA_CONV_BF16_FP32_OUTPUT) bytes += round_up(slot_count(&p->desc, SLOT_Y) * sizeof(float));
        return bytes;
    }
    if (p->precision == NCSN_PRECISION_BF16) {
        for (int slot = 0; slot < SLOT_COUNT; slot++) bytes += staged_bytes(p, slot);
        return bytes;
    }
    if (p->accumulate && !p->beta_in_place) bytes += output_count(&p->desc, p->direction) * sizeof(float);
    return bytes;
}

/* Do two plans have the same key (the fields above `plan` in cuda_conv_plan)? */
static int same_key(const cuda_conv_plan *a, const cuda_conv_plan *b) {
    return a->kind == b->kind && a->direction == b->direction && a->precision == b->precision &&
           a->accumulate == b->accumulate && a->alignment == b->alignment && a->bias_alignment == b->bias_alignment &&
           a->deterministic == b->deterministic && a->desc.N == b->desc.N && a->desc.C == b->desc.C &&
           a->desc.H == b->desc.H && a->desc.W == b->desc.W && a->desc.K == b->desc.K &&
           a->desc.ksize == b->desc.ksize && a->desc.dilation == b->desc.dilation &&
           a->desc.has_bias == b->desc.has_bias && a->residual == b->residual && a->elu == b->elu;
}

static cuda_conv_plan *find_plan(cuda_backend_impl *impl, const cuda_conv_plan *key) {
    for (int i = 0; i < impl->plan_count; i++)
        if (same_key(&impl->plans[i], key)) return &impl->plans[i];
    return NULL;
}

/* A new cache entry holding `key` (its value still to be built). Pointers into the cache
 * are valid until the next append: the array may move. */
static cuda_conv_plan *append_plan(cuda_backend_impl *impl, const cuda_conv_plan *key) {
    if (impl->plan_count == impl->plan_capacity) {
        int capacity = impl->plan_capacity ? 2 * impl->plan_capacity : 64;
        cuda_conv_plan *grown = realloc(impl->plans, (size_t)capacity * sizeof *grown);
        if (!grown) ncsn_die("%s:%d: out of host memory for the convolution plan cache", __FILE__, __LINE__);
        impl->plans = grown;
        impl->plan_capacity = capacity;
    }
    cuda_conv_plan *p = &impl->plans[impl->plan_count++];
    *p = *key;
    return p;
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
    cuda_conv_plan key;
    memset(&key, 0, sizeof key);
    key.desc = *d;
    key.desc.has_bias = 0; /* the bias is not part of the cuDNN graph */
    key.kind = PLAN_FP32_NCHW;
    key.direction = direction;
    key.precision = precision;
    key.accumulate = accumulate;
    key.alignment = alignment;
    key.deterministic = be->deterministic;
    cuda_conv_plan *p = find_plan(impl, &key);
    if (p) return p;
    p = append_plan(impl, &key);

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

/* Runs plan `p` on `count` tensors (device pointers by unique id; virtual tensors have
 * none). Only host-side descriptors are created, so this is legal inside a graph capture. */
static void execute_tensors(cuda_backend_impl *impl, cuda_conv_plan *p, int64_t count, const int64_t *uids,
                            void *const *pointers, void *workspace) {
    cudnnBackendDescriptor_t pack = create_descriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
    set_attribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, count, uids);
    set_attribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, count, pointers);
    set_attribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
    CUDNN_CHECK(cudnnBackendFinalize(pack));
    CUDNN_CHECK(cudnnBackendExecute(impl->cudnn, p->plan, pack));
    CUDNN_CHECK(cudnnBackendDestroyDescriptor(pack));
}

static void execute_variant_pack(cuda_backend_impl *impl, cuda_conv_plan *p, void *x, void *w, void *y,
                                 void *workspace) {
    static const int64_t uids[3] = {UID_X, UID_W, UID_Y};
    void *const pointers[3] = {x, w, y};
    execute_tensors(impl, p, 3, uids, pointers, workspace);
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

/* ---- the bf16 NHWC inference convolution (backend.h "inference in bf16 NHWC") ---- */

const char *cuda_conv_bf16_variant_name(cuda_conv_bf16_variant v) {
    static const char *const names[CUDA_CONV_BF16_VARIANT_COUNT] = {"fused", "fp32-output", "bf16-output",
                                                                    "via-fp32"};
    NCSN_CHECKF(v >= 0 && v < CUDA_CONV_BF16_VARIANT_COUNT, "cuda_conv_bf16_variant_name: variant %d", (int)v);
    return names[v];
}

static const char *const bf16_variant_descriptions[CUDA_CONV_BF16_VARIANT_COUNT] = {
    "conv -> fp32 -> epilogue -> bf16 in one cuDNN graph", "cuDNN writes fp32, a kernel runs the epilogue and rounds",
    "cuDNN writes bf16", "no bf16 engine: fp32 NCHW staging"};

/* Does the epilogue of `p` do anything (bias, residual, ELU)? */
static int has_epilogue(const cuda_conv_plan *p) { return p->desc.has_bias || p->residual != RESIDUAL_NONE || p->elu; }

/* Appends a pointwise operation `mode` (fp32 math) on `x` (and the operand `b` unless NULL)
 * to the graph of `p` being built, writing a new tensor: virtual fp32 with id `y_uid`, or
 * the bf16 NHWC output when y_uid is UID_Y. Returns that tensor, or NULL if cuDNN rejects the
 * operation (descriptors released, status in last_status). */
static cudnnBackendDescriptor_t append_pointwise(cuda_conv_plan *p, cudnnBackendDescriptor_t *ops,
                                                 int64_t *op_count, cudnnPointwiseMode_t mode,
                                                 cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b, int64_t y_uid,
                                                 cudnnStatus_t *last_status) {
    const ncsn_conv_desc *d = &p->desc;
    int is_output = y_uid == UID_Y;
    cudnnBackendDescriptor_t y =
        make_tensor_ex(y_uid, d->N, d->K, d->H, d->W, is_output ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT, 1,
                       is_output ? p->alignment : 16, !is_output);
    own(p, y);
    cudnnDataType_t math = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t pw = create_descriptor(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    own(p, pw);
    set_attribute(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    set_attribute(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &math);
    if (mode == CUDNN_POINTWISE_ELU_FWD) {
        double alpha = 1.0; /* torch.nn.ELU() */
        set_attribute(pw, CUDNN_ATTR_POINTWISE_ELU_ALPHA, CUDNN_TYPE_DOUBLE, 1, &alpha);
    }
    if (!finalize_graph_part(pw, 1, last_status)) {
        destroy_plan_descriptors(p);
        return NULL;
    }
    cudnnBackendDescriptor_t op = create_descriptor(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    own(p, op);
    set_attribute(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw);
    set_attribute(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    if (b) set_attribute(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    set_attribute(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    if (!finalize_graph_part(op, 1, last_status)) {
        destroy_plan_descriptors(p);
        return NULL;
    }
    ops[(*op_count)++] = op;
    return y;
}

/* Builds the cuDNN graph of `variant` for the bf16 NHWC plan `p` (its key filled in).
 * Returns 1 if an engine finalized into an execution plan; 0 (descriptors released, status
 * in last_status) if cuDNN rejects the graph or no engine takes it.
 *   X bf16 NHWC [N, C, H, W] (the caller's input), W bf16 KRSC [K, C, k, k] (the packing),
 *   CONVOLUTION_FORWARD with fp32 compute, then
 *   FUSED:       -> fp32 virtual -> [ADD B fp32 [1, K, 1, 1], the bias broadcast]
 *                -> [ADD R bf16 NHWC, the residual] -> [ELU_FWD, alpha 1] -> Y bf16 NHWC,
 *                every intermediate fp32 virtual, every pointwise op in fp32 math
 *   FP32_OUTPUT: -> Y fp32 NHWC (workspace staging; the epilogue kernel follows)
 *   BF16_OUTPUT: -> Y bf16 NHWC (the caller's out, or workspace staging if the residual is
 *                out itself; an epilogue kernel follows if there is an epilogue). */
static int build_bf16_nhwc_plan(cuda_backend_impl *impl, cuda_conv_plan *p, cuda_conv_bf16_variant variant,
                                cudnnStatus_t *last_status) {
    const ncsn_conv_desc *d = &p->desc;
    const int64_t io_alignment = p->alignment;
    const int64_t staged_alignment = 16; /* packed weights and workspace staging: 256-byte offsets */
    int fused = variant == CUDA_CONV_BF16_FUSED;
    p->owned_count = 0;
    cudnnBackendDescriptor_t x = make_tensor(UID_X, d->N, d->C, d->H, d->W, CUDNN_DATA_BFLOAT16, 1, io_alignment);
    own(p, x);
    cudnnBackendDescriptor_t w =
        make_tensor(UID_W, d->K, d->C, d->ksize, d->ksize, CUDNN_DATA_BFLOAT16, 1, staged_alignment);
    own(p, w);
    cudnnBackendDescriptor_t conv_out;
    if (fused)
        conv_out =
            make_tensor_ex(UID_AFTER_CONV, d->N, d->K, d->H, d->W, CUDNN_DATA_FLOAT, 1, staged_alignment, true);
    else if (variant == CUDA_CONV_BF16_FP32_OUTPUT)
        conv_out = make_tensor(UID_Y, d->N, d->K, d->H, d->W, CUDNN_DATA_FLOAT, 1, staged_alignment);
    else
        conv_out = make_tensor(UID_Y, d->N, d->K, d->H, d->W, CUDNN_DATA_BFLOAT16, 1, io_alignment);
    own(p, conv_out);
    cudnnBackendDescriptor_t conv = make_convolution(d);
    own(p, conv);
    cudnnBackendDescriptor_t ops[4];
    int64_t op_count = 0;
    ops[op_count] = make_operation(CONV_FORWARD, x, w, conv_out, conv, 0.0f);
    own(p, ops[op_count]);
    if (!finalize_graph_part(ops[op_count++], 1, last_status)) {
        destroy_plan_descriptors(p);
        return 0;
    }
    if (fused) {
        /* The chain in the order of backend.h: + b, + residual, ELU; the last op writes Y. */
        int remaining = d->has_bias + (p->residual != RESIDUAL_NONE) + p->elu;
        cudnnBackendDescriptor_t t = conv_out;
        if (d->has_bias) {
            /* [1, K, 1, 1] with channels-last strides {K, 1, K, K}: the per-channel broadcast
             * operand of cuDNN's conv-bias fusions. */
            cudnnBackendDescriptor_t b = make_tensor(UID_B, 1, d->K, 1, 1, CUDNN_DATA_FLOAT, 1, p->bias_alignment);
            own(p, b);
            t = append_pointwise(p, ops, &op_count, CUDNN_POINTWISE_ADD, t, b, --remaining ? UID_AFTER_BIAS : UID_Y,
                                 last_status);
            if (!t) return 0;
        }
        if (p->residual != RESIDUAL_NONE) {
            cudnnBackendDescriptor_t r =
                make_tensor(UID_R, d->N, d->K, d->H, d->W, CUDNN_DATA_BFLOAT16, 1, io_alignment);
            own(p, r);
            t = append_pointwise(p, ops, &op_count, CUDNN_POINTWISE_ADD, t, r,
                                 --remaining ? UID_AFTER_RESIDUAL : UID_Y, last_status);
            if (!t) return 0;
        }
        if (p->elu) {
            t = append_pointwise(p, ops, &op_count, CUDNN_POINTWISE_ELU_FWD, t, NULL, UID_Y, last_status);
            if (!t) return 0;
        }
    }
    cudnnBackendDescriptor_t graph = create_descriptor(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    own(p, graph);
    set_attribute(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, op_count, ops);
    if (!finalize_graph_part(graph, 1, last_status)) {
        destroy_plan_descriptors(p);
        return 0;
    }
    /* Mode A ranks the runtime-fusion engines a fused graph needs (they compile their kernel
     * when the plan is finalized: once per shape, during the eager warm-up). The numerical
     * notes filter nothing at bf16 (tensor cores are the point); determinism still filters. */
    int64_t engine_index = -1;
    if (!plan_graph(impl, p, graph, NCSN_PRECISION_BF16, &engine_index, last_status)) return 0;
    if (getenv("NCSN_CUDA_VERBOSE"))
        fprintf(stderr,
                "cuda: conv bf16-nhwc forward N%d C%d H%d W%d K%d k%d d%d%s%s%s%s: %s (%s): engine %lld, "
                "workspace %lld B, align %d, bias align %d%s\n",
                d->N, d->C, d->H, d->W, d->K, d->ksize, d->dilation, d->has_bias ? " +bias" : "",
                p->residual == RESIDUAL_SEPARATE ? " +residual" : "",
                p->residual == RESIDUAL_IN_PLACE ? " +=out" : "", p->elu ? " elu" : "",
                cuda_conv_bf16_variant_name(variant), bf16_variant_descriptions[variant], (long long)engine_index,
                (long long)p->workspace_bytes, p->alignment, p->bias_alignment,
                p->deterministic ? ", deterministic" : "");
    return 1;
}

/* CUDA_CONV_BF16_VIA_FP32: the shape runs on fp32 copies through the fp32 path's plan, at
 * FP32 if the backend is strict, else TF32. Numerically this is the bf16 convolution the
 * contract asks for: the copies hold bf16 values exactly (the weights unpacked from the
 * packing), TF32 represents every bf16 value exactly (10 >= 7 mantissa bits), so every
 * product is exact and accumulated in fp32; the epilogue kernel then adds the bias and the
 * residual in fp32, applies the ELU and rounds once. Workspace: the fp32 plan's own, then
 * X (NCHW), W (KCRS), Y (NCHW) and Y again in NHWC, all fp32 at 256-byte offsets. Returns
 * that plan (building it if needed: pointers into the cache may move) and the layout. */
enum { VIA_X = 0, VIA_W, VIA_Y, VIA_Y_NHWC, VIA_COUNT };

static cuda_conv_plan *via_fp32_plan(ncsn_backend *be, const ncsn_conv_desc *d, size_t offsets[VIA_COUNT],
                                     size_t *total_bytes) {
    ncsn_precision precision = be->precision == NCSN_PRECISION_FP32 ? NCSN_PRECISION_FP32 : NCSN_PRECISION_TF32;
    cuda_conv_plan *p = get_plan(be, d, CONV_FORWARD, precision, 0, 16);
    const size_t counts[VIA_COUNT] = {slot_count(d, SLOT_X), slot_count(d, SLOT_W), slot_count(d, SLOT_Y),
                                      slot_count(d, SLOT_Y)};
    size_t offset = round_up(plan_workspace_bytes(p));
    for (int i = 0; i < VIA_COUNT; i++) {
        offsets[i] = offset;
        offset += round_up(counts[i] * sizeof(float));
    }
    *total_bytes = offset;
    return p;
}

static void forward_bf16_via_fp32(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, const void *packed_w,
                                  const float *b, const ncsn_bf16 *residual, int elu, const ncsn_conv_desc *d) {
    cuda_backend_impl *impl = cuda_impl(be);
    size_t offsets[VIA_COUNT], total_bytes;
    cuda_conv_plan *p = via_fp32_plan(be, d, offsets, &total_bytes);
    char *workspace = cuda_workspace_reserve(be, total_bytes); /* reserved when the shape was planned */
    float *x = (float *)(workspace + offsets[VIA_X]);
    float *w = (float *)(workspace + offsets[VIA_W]);
    float *y = (float *)(workspace + offsets[VIA_Y]);
    float *y_nhwc = (float *)(workspace + offsets[VIA_Y_NHWC]);
    size_t spatial = (size_t)d->H * d->W;
    ncsn_cuda_channels_last_to_first_f32(impl->stream, x, in, 1, d->N, d->C, spatial, 0);
    ncsn_cuda_channels_last_to_first_f32(impl->stream, w, packed_w, 1, d->K, d->C, (size_t)d->ksize * d->ksize, 0);
    execute_plan(be, p, x, w, y, y); /* needs only the plan's own part of the workspace */
    ncsn_cuda_channels_first_to_last_f32(impl->stream, y_nhwc, y, d->N, d->K, spatial);
    ncsn_cuda_nhwc_epilogue_bf16(impl->stream, out, y_nhwc, d->has_bias ? b : NULL, residual, elu,
                                 (size_t)d->N * spatial, d->K);
}

/* The bf16 NHWC plan of one call, built on first use. Variants are tried best first:
 *   with an epilogue: the fused graph (one rounding, no extra pass; not for an in-place
 *     residual unless FUSE_IN_PLACE_RESIDUAL), the fp32 output (one rounding, one more
 *     pass), the bf16 output plus the epilogue kernel (two roundings);
 *   without: the bf16 output, then the fp32 output.
 * A shape no bf16 engine takes at all is marked VIA_FP32. The pointer is valid until the
 * next get_plan / get_bf16_nhwc_plan. */
static cuda_conv_plan *get_bf16_nhwc_plan(ncsn_backend *be, const ncsn_conv_desc *d, int residual, int elu,
                                          int io_alignment, int bias_alignment) {
    cuda_backend_impl *impl = cuda_impl(be);
    cuda_conv_plan key;
    memset(&key, 0, sizeof key);
    key.desc = *d;
    key.kind = PLAN_BF16_NHWC;
    key.direction = CONV_FORWARD;
    key.precision = NCSN_PRECISION_BF16;
    key.alignment = io_alignment;
    key.bias_alignment = d->has_bias ? bias_alignment : 0;
    key.residual = residual;
    key.elu = elu ? 1 : 0;
    key.deterministic = be->deterministic;
    cuda_conv_plan *p = find_plan(impl, &key);
    if (p) return p;
    p = append_plan(impl, &key);

    /* Every variant rounds once, as the contract says: with an epilogue, cuDNN's output is fp32
     * (fused, or fp32-output), never bf16 with the epilogue applied after (that would round the
     * convolution twice: half a bf16 step of the conv, many steps of a small sum); via-fp32 is
     * the last resort for both. */
    cuda_conv_bf16_variant order[2];
    int count = 0;
    if (has_epilogue(p)) {
        if (residual != RESIDUAL_IN_PLACE || FUSE_IN_PLACE_RESIDUAL) order[count++] = CUDA_CONV_BF16_FUSED;
        order[count++] = CUDA_CONV_BF16_FP32_OUTPUT;
    } else {
        order[count++] = CUDA_CONV_BF16_BF16_OUTPUT;
        order[count++] = CUDA_CONV_BF16_FP32_OUTPUT;
    }
    cudnnStatus_t last_status = CUDNN_STATUS_SUCCESS;
    p->variant = CUDA_CONV_BF16_VIA_FP32;
    for (int i = 0; i < count && p->variant == CUDA_CONV_BF16_VIA_FP32; i++)
        if (build_bf16_nhwc_plan(impl, p, order[i], &last_status)) p->variant = order[i];

    int verbose = getenv("NCSN_CUDA_VERBOSE") != NULL;
    if (p->variant == CUDA_CONV_BF16_VIA_FP32) {
        if (!impl->bf16_nhwc_fallback_reported || verbose)
            fprintf(stderr,
                    "ncsn: cuda: no cuDNN bf16 NHWC engine for conv N=%d C=%d H=%d W=%d K=%d k=%d dilation=%d "
                    "(alignment %d B, last status %s); %s convolutions run through fp32 staging in %s, same "
                    "numerics, slower%s\n",
                    d->N, d->C, d->H, d->W, d->K, d->ksize, d->dilation, io_alignment,
                    cudnnGetErrorString(last_status), impl->bf16_nhwc_fallback_reported ? "this shape's" : "such",
                    be->precision == NCSN_PRECISION_FP32 ? "fp32" : "tf32",
                    impl->bf16_nhwc_fallback_reported ? "" : " (NCSN_CUDA_VERBOSE=1 lists every shape)");
        impl->bf16_nhwc_fallback_reported = 1;
        /* Build the fp32 plan that serves the shape and reserve its workspace with the
         * staging now, so no later (captured) call allocates. That appends to the cache, so
         * look this entry up again. */
        size_t offsets[VIA_COUNT], total_bytes;
        via_fp32_plan(be, d, offsets, &total_bytes);
        cuda_workspace_reserve(be, total_bytes);
        p = find_plan(impl, &key);
        NCSN_CHECKF(p != NULL, "cuda_conv: the bf16 NHWC plan vanished from the cache");
        return p;
    }
    /* Grow the shared workspace now (the eager call), so captured calls never reallocate. */
    cuda_workspace_reserve(be, plan_workspace_bytes(p));
    return p;
}

static size_t round_up_packed(size_t bytes) {
    return (bytes + PACKED_WEIGHTS_ALIGN - 1) / PACKED_WEIGHTS_ALIGN * PACKED_WEIGHTS_ALIGN;
}

/* Packed layout (backend.h): bf16 KRSC weights, then the fp32 bias at the next 256-byte
 * boundary, so the fused graph's bias operand is always 16-byte aligned. */
static size_t packed_bias_offset(const ncsn_conv_desc *d) {
    return round_up_packed((size_t)d->K * d->C * d->ksize * d->ksize * sizeof(ncsn_bf16));
}

size_t cuda_conv2d_packed_weights_bytes(ncsn_backend *be, const ncsn_conv_desc *d) {
    check_conv_desc(d, "conv2d_packed_weights_bytes");
    return packed_bias_offset(d) + (d->has_bias ? round_up_packed((size_t)d->K * sizeof(float)) : 0);
}

static void check_packed_alignment(const void *packed, const char *op) {
    NCSN_CHECKF((uintptr_t)packed % PACKED_WEIGHTS_ALIGN == 0,
                "%s: packed weights at %p are not %d-byte aligned (backend.h)", op, packed, PACKED_WEIGHTS_ALIGN);
}

void cuda_conv2d_pack_weights_bf16(ncsn_backend *be, void *packed, const float *w, const float *b,
                                   const ncsn_conv_desc *d) {
    check_conv_desc(d, "conv2d_pack_weights_bf16");
    NCSN_CHECKF(packed && w, "conv2d_pack_weights_bf16: NULL tensor (packed %p, w %p)", packed, (const void *)w);
    NCSN_CHECKF(!d->has_bias || b, "conv2d_pack_weights_bf16: has_bias but b is NULL");
    check_packed_alignment(packed, "conv2d_pack_weights_bf16");
    cudaStream_t stream = cuda_impl(be)->stream;
    /* KCRS fp32 -> KRSC bf16, round to nearest even: the [B][C][S] -> [B][S][C] transpose
     * with B = K, S = kh * kw. The padding up to the 256-byte multiple is left alone. */
    ncsn_cuda_channels_first_to_last_bf16(stream, (uint16_t *)packed, w, d->K, d->C, (size_t)d->ksize * d->ksize);
    if (d->has_bias)
        CUDA_CHECK(cudaMemcpyAsync((char *)packed + packed_bias_offset(d), b, (size_t)d->K * sizeof(float),
                                   cudaMemcpyDeviceToDevice, stream));
}

/* Do the byte ranges [a, a + a_bytes) and [b, b + b_bytes) overlap? */
static int ranges_overlap(const void *a, size_t a_bytes, const void *b, size_t b_bytes) {
    uintptr_t a0 = (uintptr_t)a, b0 = (uintptr_t)b;
    return a0 < b0 + b_bytes && b0 < a0 + a_bytes;
}

void cuda_conv2d_forward_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, const void *packed_w,
                              const ncsn_bf16 *residual, int elu, const ncsn_conv_desc *d) {
    const char *op = "conv2d_forward_bf16";
    check_conv_desc(d, op);
    NCSN_CHECKF(out && in && packed_w, "%s: NULL tensor (out %p, in %p, packed_w %p)", op, (void *)out,
                (const void *)in, packed_w);
    check_packed_alignment(packed_w, op);
    const float *b = d->has_bias ? (const float *)((const char *)packed_w + packed_bias_offset(d)) : NULL;
    NCSN_CHECKF((uintptr_t)in % sizeof(ncsn_bf16) == 0 && (uintptr_t)out % sizeof(ncsn_bf16) == 0 &&
                    (uintptr_t)residual % sizeof(ncsn_bf16) == 0,
                "%s: bf16 tensors at odd addresses (in %p, out %p, residual %p)", op, (const void *)in, (void *)out,
                (const void *)residual);
    NCSN_CHECKF(!d->has_bias || (uintptr_t)b % sizeof(float) == 0, "%s: bias at %p is not 4-byte aligned", op,
                (const void *)b);
    /* A convolution reads neighbours of every output position: it cannot run in place, and
     * the residual (read where it is written) is either out itself or apart from out and in. */
    size_t in_bytes = slot_count(d, SLOT_X) * sizeof(ncsn_bf16), out_bytes = slot_count(d, SLOT_Y) * sizeof(ncsn_bf16);
    NCSN_CHECKF(!ranges_overlap(out, out_bytes, in, in_bytes), "%s: out [%p, +%zu B) overlaps in [%p, +%zu B)", op,
                (void *)out, out_bytes, (const void *)in, in_bytes);
    int residual_mode = !residual ? RESIDUAL_NONE : residual == out ? RESIDUAL_IN_PLACE : RESIDUAL_SEPARATE;
    if (residual_mode == RESIDUAL_SEPARATE)
        NCSN_CHECKF(!ranges_overlap(residual, out_bytes, out, out_bytes) &&
                        !ranges_overlap(residual, out_bytes, in, in_bytes),
                    "%s: residual [%p, +%zu B) overlaps out [%p) or in [%p) without being out", op,
                    (const void *)residual, out_bytes, (void *)out, (const void *)in);

    cuda_backend_impl *impl = cuda_impl(be);
    int io_alignment = min_int(pointer_alignment(in), pointer_alignment(out));
    if (residual) io_alignment = min_int(io_alignment, pointer_alignment(residual));
    cuda_conv_plan *p =
        get_bf16_nhwc_plan(be, d, residual_mode, elu, io_alignment, d->has_bias ? pointer_alignment(b) : 0);
    const float *bias = d->has_bias ? b : NULL;
    size_t rows = (size_t)d->N * d->H * d->W;
    switch (p->variant) {
    case CUDA_CONV_BF16_FUSED: {
        char *workspace = cuda_workspace_reserve(be, plan_workspace_bytes(p));
        int64_t uids[5] = {UID_X, UID_W, UID_Y};
        void *pointers[5] = {(void *)in, (void *)packed_w, out};
        int64_t count = 3;
        if (bias) uids[count] = UID_B, pointers[count++] = (void *)bias;
        if (residual) uids[count] = UID_R, pointers[count++] = (void *)residual;
        execute_tensors(impl, p, count, uids, pointers, workspace);
        return;
    }
    case CUDA_CONV_BF16_FP32_OUTPUT: {
        char *workspace = cuda_workspace_reserve(be, plan_workspace_bytes(p));
        float *staged = (float *)(workspace + round_up((size_t)p->workspace_bytes));
        execute_variant_pack(impl, p, (void *)in, (void *)packed_w, staged, workspace);
        ncsn_cuda_nhwc_epilogue_bf16(impl->stream, out, staged, bias, residual, elu, rows, d->K);
        return;
    }
    case CUDA_CONV_BF16_BF16_OUTPUT: { /* no epilogue (get_bf16_nhwc_plan): cuDNN's output is the result */
        NCSN_CHECK(!has_epilogue(p));
        char *workspace = cuda_workspace_reserve(be, plan_workspace_bytes(p));
        execute_variant_pack(impl, p, (void *)in, (void *)packed_w, out, workspace);
        return;
    }
    case CUDA_CONV_BF16_VIA_FP32:
        forward_bf16_via_fp32(be, out, in, packed_w, bias, residual, elu, d); /* p is dead: the cache may move */
        return;
    default:
        ncsn_die("%s: plan variant %d", op, (int)p->variant);
    }
}


cuda_conv_bf16_variant cuda_conv_bf16_inference_variant(ncsn_backend *be, const ncsn_conv_desc *d, int residual,
                                                        int elu, int io_alignment, int bias_alignment) {
    check_conv_desc(d, "cuda_conv_bf16_inference_variant");
    NCSN_CHECKF(residual == RESIDUAL_NONE || residual == RESIDUAL_SEPARATE || residual == RESIDUAL_IN_PLACE,
                "cuda_conv_bf16_inference_variant: residual %d (0 none, 1 separate, 2 out itself)", residual);
    NCSN_CHECKF(io_alignment == 2 || io_alignment == 4 || io_alignment == 8 || io_alignment == 16,
                "cuda_conv_bf16_inference_variant: io_alignment %d (2, 4, 8 or 16)", io_alignment);
    NCSN_CHECKF(!d->has_bias || bias_alignment == 4 || bias_alignment == 8 || bias_alignment == 16,
                "cuda_conv_bf16_inference_variant: bias_alignment %d (4, 8 or 16)", bias_alignment);
    return get_bf16_nhwc_plan(be, d, residual, elu, io_alignment, bias_alignment)->variant;
}

void cuda_conv_destroy(cuda_backend_impl *impl) {
    for (int i = 0; i < impl->plan_count; i++) destroy_plan_descriptors(&impl->plans[i]);
    free(impl->plans);
    impl->plans = NULL;
    impl->plan_count = impl->plan_capacity = 0;
}
