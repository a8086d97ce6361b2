/* layers.h: the building blocks of the score networks as forward/backward pairs, and the
 * networks assembled from them (models/ internal; the public interface is ncsn/model.h).
 *
 * What it is: convolution, InstanceNorm++ (conditional and not), ELU, the four residual
 * block variants, RCU, CRP, MSF and RefineBlock of RefineNet (spec §1), the RefineNet trunk
 * shared by NCSN v1 and the NCSNv2 family (spec §2, §3), and the toy MLP. Every block is a
 * struct filled once at construction (parameter offsets, shapes, arena slots) plus a
 * forward and a backward function that only issue backend ops.
 * What it is not: a graph or an allocator. Memory is decided at construction.
 *
 * Memory model
 * - Parameters: a block stores offsets (in floats) into the model's parameter buffer; its
 *   gradients sit at the same offsets of the gradient buffer.
 * - Activations: an `act_slot` is an offset in floats PER EXAMPLE into the activation arena.
 *   With the arena planned for Np examples, slot s starts at arena + Np * s, so every
 *   slot scales with the batch and planning is a single allocation. Sizes are rounded up
 *   to 64 floats, so every slot is 256-byte aligned whatever Np is.
 * - A block owns slots for what its backward needs (norm inputs and statistics, ELU
 *   outputs, conv inputs) and nothing else; values only needed inside the forward go to
 *   the three shared scratch tensors ctx->tmp[0..2] (each of the largest temporary size),
 *   which the backward reuses for its own intermediate gradients.
 * - bf16 inference (layer_ctx.packed != NULL; ncsn_model_set_bf16_inference): the forward
 *   runs the backend's bf16 NHWC ops, so every activation slot holds bf16 in NHWC order
 *   and uses half of its bytes (slots stay sized in floats: one arena serves both modes).
 *   Convolutions read their weights from the packed copy. There is no bf16 backward.
 */
#ifndef NCSN_MODELS_LAYERS_H
#define NCSN_MODELS_LAYERS_H

#include <stddef.h>
#include <stdint.h>

#include "ncsn/backend.h"
#include "ncsn/model.h"

#define NCSN_NO_PARAM ((size_t)-1)
#define NCSN_MAX_CASCADES 6   /* NCSNv2Deepest */
#define NCSN_MAX_RCU_BLOCKS 3 /* output RCU of an end RefineBlock */
#define NCSN_SLOT_ALIGN 64    /* floats */

typedef size_t act_slot;

/* The parameters of a layer or block: elements [begin, end) of the parameter buffer (and,
 * at the same offsets, of the gradient buffer). A block registers its tensors
 * consecutively, so one range covers them all. */
typedef struct {
    size_t begin, end;
} param_range;

/* ---- construction ------------------------------------------------------------------- */

/* How ncsn_model_init fills a tensor (TEAM.md "Parameter initialisation convention"). */
typedef enum {
    PARAM_INIT_UNIFORM = 0,  /* U(-b, b), b = 1/sqrt(fan_in): conv weights, conv biases, toy tables */
    PARAM_INIT_NORMAL_ONE,   /* N(1, 0.02): IN++ gamma and alpha */
    PARAM_INIT_ZERO,         /* IN++ beta */
    PARAM_INIT_COND_EMBED    /* CondIN++ [L, 3C]: gamma and alpha columns N(1, 0.02), beta 0 */
} param_init_kind;

typedef struct {
    param_init_kind kind;
    int fan_in; /* PARAM_INIT_UNIFORM */
} param_init;

/* A convolution layer (defined with the primitive layers below). */
typedef struct conv_layer conv_layer;

/* Collects, while a network is built: the parameter table (in registration order), how to
 * initialise each entry, the arena slots (per example) and the conv MACs per example. */
typedef struct {
    ncsn_param_table *table;
    param_init *init; /* parallel to table->entries */
    int init_cap;
    size_t act_floats; /* per example: slots handed out so far */
    size_t max_temp;   /* per example: the largest scratch tensor any block needs */
    double macs;       /* conv multiply-accumulates per example per forward */
    int L;             /* noise levels (rows of CondIN++ embeddings, toy tables) */
    conv_layer **convs; /* every convolution built, in build order (bf16 weight packing) */
    int n_convs, convs_cap;
} net_builder;

/* Adds the tensor named by the printf-style format; returns its offset in floats. */
size_t builder_param(net_builder *b, param_init_kind kind, int fan_in, int ndim, const int64_t *shape,
                     const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 6, 7)))
#endif
    ;
/* The current end of the parameter table: a block's range is [mark before, mark after). */
static inline size_t builder_mark(const net_builder *b) { return b->table->total; }
/* A slot of `floats` per example in the arena. */
act_slot builder_act(net_builder *b, size_t floats);
/* Records that a block uses scratch tensors of `floats` per example. */
void builder_temp(net_builder *b, size_t floats);

/* ---- run time ----------------------------------------------------------------------- */

/* Gradient progress of one backward, for model.h's grad-ready hook.
 * Each backward call list reports, right after the last op that adds to a block's
 * parameter gradients, that the block's range is final (grads_final). The tracker joins
 * the reported ranges into the final suffix [first_final, total) of the gradient buffer
 * and calls the hook whenever that suffix grows. Table order is forward (registration)
 * order and the backward runs in reverse, so most ranges extend the suffix at once; those
 * that finish before a range above them (the head: normalizer and end_conv are registered
 * right after begin_conv; a RefineBlock's output_convs before its msf and crp; Deepest's
 * refine3 before refine31) wait in `pending` until the gap above them is final too. */
#define GRAD_PROGRESS_MAX_PENDING 8

typedef struct {
    ncsn_grad_ready_fn ready;
    void *ctx;
    size_t first_final; /* [first_final, total) is final and has been reported */
    int n_pending;
    param_range pending[GRAD_PROGRESS_MAX_PENDING]; /* final, not adjacent to the suffix; disjoint */
} grad_progress;

typedef struct {
    ncsn_backend *be;
    float *params, *grads;
    float *arena;
    int N;                  /* examples in this pass */
    int N_planned;          /* slot stride */
    const int32_t *labels;  /* N level indices (backend memory, a copy in the arena) */
    float *tmp[3];          /* shared scratch, builder max_temp floats per example each */
    const unsigned char *packed; /* bf16 inference: the packed conv weights; NULL: fp32 NCHW */
    grad_progress *progress; /* backward only; NULL when no grad-ready hook is set */
} layer_ctx;

static inline float *ctx_slot(const layer_ctx *c, act_slot s) { return c->arena + (size_t)c->N_planned * s; }

void grad_progress_mark(grad_progress *p, param_range r);
/* Called by a backward once no later op of it adds to the gradients in r. Without a
 * hook it costs one branch. */
static inline void grads_final(const layer_ctx *c, param_range r) {
    if (c->progress) grad_progress_mark(c->progress, r);
}

/* ---- primitive layers --------------------------------------------------------------- */

/* nn.Conv2d with stride 1 and "same" padding (dilation * (ksize / 2)). */
struct conv_layer {
    size_t w, b; /* b = NCSN_NO_PARAM: no bias */
    size_t packed; /* bf16 inference: byte offset of its packed weights in layer_ctx.packed */
    int C, K, ksize, dilation, H, W;
    param_range params;
};

/* InstanceNorm2dPlus (conditional: ConditionalInstanceNorm2dPlus, parameters in the
 * [L, 3C] embedding as [gamma | alpha | beta]). Owns its statistics slot. */
typedef struct {
    size_t gamma, alpha, beta;
    int stride; /* 0 unconditional, 3C conditional */
    int C, H, W;
    act_slot stats;
    param_range params;
} norm_layer;

void conv_build(net_builder *b, conv_layer *l, const char *name, int C, int K, int ksize, int dilation,
                int has_bias, int H, int W);
/* The layer's convolution at batch N. */
ncsn_conv_desc conv_layer_desc(const conv_layer *l, int N);
void conv_forward(const layer_ctx *c, const conv_layer *l, float *out, const float *in);
/* dw, db += ...; din (may be NULL: not wanted) overwritten or accumulated. */
void conv_backward(const layer_ctx *c, const conv_layer *l, float *din, int accumulate, const float *dout,
                   const float *in);

void norm_build(net_builder *b, norm_layer *l, const char *name, int conditional, int C, int H, int W);
void norm_forward(const layer_ctx *c, const norm_layer *l, float *out, const float *x);
void norm_backward(const layer_ctx *c, const norm_layer *l, float *dx, int accumulate, const float *dout,
                   const float *x);

/* ---- residual blocks (spec §1.4: ConditionalResidualBlock / ResidualBlock) ---------- */

typedef enum {
    SHORTCUT_IDENTITY = 0,   /* resample None, Cin == Cout */
    SHORTCUT_MEANPOOL_1X1,   /* 'down', no dilation: ConvMeanPool(1x1) */
    SHORTCUT_DILATED_3X3     /* 'down' with dilation: dilated 3x3 conv with bias, no pooling */
} shortcut_kind;

typedef struct {
    int Cin, Cmid, Cout, H, W, Ho, Wo;
    int pool; /* conv2 is a ConvMeanPool (non-dilated 'down') */
    shortcut_kind shortcut;
    norm_layer norm1, norm2;
    conv_layer conv1, conv2, shortcut_conv;
    act_slot a1, h1, a2, out; /* ELU(norm1 x), conv1 out, ELU(norm2 h1), block output */
    param_range params;
} res_block;

void res_block_build(net_builder *b, res_block *r, const char *name, int conditional, int Cin, int Cout,
                     int down, int dilation, int H, int W);
void res_block_forward(const layer_ctx *c, const res_block *r, const float *x);
void res_block_backward(const layer_ctx *c, const res_block *r, float *dx, int accumulate, const float *dout,
                        const float *x);

/* ---- RefineNet pieces (spec §1.5) ----------------------------------------------------- */

/* RCU with n_blocks blocks of 2 stages. v1: CondIN++ -> ELU -> conv per stage; v2: ELU -> conv.
 * v2 blocks run in one chain buffer (the output slot, or the input's own buffer when
 * in_place): its backward needs only the ELU outputs. v1 keeps every block output, each
 * being the next block's norm input. */
typedef struct {
    int C, H, W, n_blocks, conditional, in_place;
    norm_layer norm[NCSN_MAX_RCU_BLOCKS][2];
    conv_layer conv[NCSN_MAX_RCU_BLOCKS][2];
    act_slot e[NCSN_MAX_RCU_BLOCKS][2]; /* ELU outputs = conv inputs */
    act_slot c[NCSN_MAX_RCU_BLOCKS];    /* v1: first conv output (input of the second norm) */
    act_slot out[NCSN_MAX_RCU_BLOCKS];  /* v1: per block; v2: out[0] is the chain (unless in place) */
    param_range params;
} rcu_block;

void rcu_build(net_builder *b, rcu_block *r, const char *name, int conditional, int in_place, int C,
               int n_blocks, int H, int W);
/* Returns the output: x itself when in place, else the output slot; in bf16 inference, the
 * last block's e0 slot (rcu_forward keeps residuals apart from outputs there). elu_out:
 * apply the ELU to the output too (bf16 inference: the consumer is a CRP, whose leading ELU
 * moves here). */
float *rcu_forward(const layer_ctx *c, const rcu_block *r, float *x, int elu_out);
/* In place: d holds d(out) on entry and d(x) on exit. x: the forward's input. */
void rcu_backward(const layer_ctx *c, const rcu_block *r, float *d, const float *x);

/* CRP with 2 stages. v1: CondIN++ -> AvgPool5 -> conv; v2: MaxPool5 -> conv. The forward
 * applies the ELU in place on its input x (which becomes the saved ELU output): a CRP
 * input (MSF output or a start block's adapted input) is never needed again. */
typedef struct {
    int F, H, W, conditional;
    conv_layer convs[2];
    norm_layer norms[2];
    act_slot p[2], c0, out; /* pooled (conv inputs), first conv output, block output */
    param_range params;
} crp_block;

void crp_build(net_builder *b, crp_block *r, const char *name, int conditional, int F, int H, int W);
float *crp_forward(const layer_ctx *c, const crp_block *r, float *x, int x_activated);
/* In place: d(out) -> d(x). a: the forward's input buffer (holding ELU(x)). */
void crp_backward(const layer_ctx *c, const crp_block *r, float *d, const float *a);

/* MSF: per input [v1: CondIN++] -> conv (bias) -> bilinear resize (align_corners) -> sum. */
typedef struct {
    int n_in, F, H, W, conditional;
    int Cin[2], Hin[2], Win[2];
    norm_layer norms[2];
    conv_layer convs[2];
    act_slot n[2]; /* v1: normalised inputs (conv inputs) */
    act_slot out;
    param_range params;
} msf_block;

void msf_build(net_builder *b, msf_block *r, const char *name, int conditional, int n_in, const int *Cin,
               const int *Hin, const int *Win, int F, int H, int W);
float *msf_forward(const layer_ctx *c, const msf_block *r, float *const *xs, int elu_out);
/* dxs[i] = d(xs[i]) (overwritten); must not alias dout. */
void msf_backward(const layer_ctx *c, const msf_block *r, float *const *dxs, const float *dout,
                  float *const *xs);

typedef struct {
    int n_in, F, H, W, conditional, start, end;
    rcu_block adapt[2];
    msf_block msf;
    crp_block crp;
    rcu_block out_rcu;
} refine_block;

void refine_block_build(net_builder *b, refine_block *r, const char *name, int conditional, int n_in,
                        const int *Cin, const int *Hin, const int *Win, int F, int H, int W, int start, int end);
/* xs[1] (the previous RefineBlock's output) may be overwritten in v2. Returns the output. */
float *refine_block_forward(const layer_ctx *c, const refine_block *r, float *const *xs);
/* Where the block's output lives after its forward in fp32 (what the backward reads). */
float *refine_block_output(const layer_ctx *c, const refine_block *r);
/* d: d(out) on entry (destroyed). dxs[i] receive d(xs[i]) (overwritten); for a start block
 * dxs[0] must be d itself (the chain runs in place). xs: the forward's inputs. Reports each
 * part's parameters final (grads_final) as it is done. */
void refine_block_backward(const layer_ctx *c, const refine_block *r, float *d, float *const *dxs,
                           float *const *xs);

/* ---- the RefineNet trunk (v1 CondRefineNetDilated, NCSNv2, NCSNv2Deeper, NCSNv2Deepest) --- */

typedef struct {
    const char *name; /* "res1" */
    int Cin, Cout;    /* block 0: Cin -> Cout (resample 'down' if down), block 1: Cout -> Cout */
    int down;
    int dilation;     /* 0: none */
} res_stage_desc;

typedef struct {
    const char *name; /* "refine1" */
    int F;            /* features */
} refine_desc;

typedef struct {
    int conditional;     /* v1: CondIN++ everywhere, AvgPool CRP */
    int divide_by_sigma; /* v2: s = f(x) / sigma_y */
    int centre_input;    /* 2x - 1 inside the model */
    int C, H, W, ngf, n_cascades;
    int layer_C[NCSN_MAX_CASCADES], layer_H[NCSN_MAX_CASCADES], layer_W[NCSN_MAX_CASCADES];
    conv_layer begin_conv, end_conv;
    norm_layer normalizer;
    res_block res[NCSN_MAX_CASCADES][2];
    refine_block refine[NCSN_MAX_CASCADES]; /* forward order: refine[0] takes the deepest layer */
    param_range head_params;                /* normalizer and end_conv (adjacent in the table) */
    act_slot h0, begin_out, head_a, head_out; /* model input, begin_conv out, ELU(normalizer), end_conv out (v2) */
    /* gradient slots */
    act_slot dlayer[NCSN_MAX_CASCADES], dref[2], dstage, dbegin, dh0;
} refinenet;

/* Builds the trunk. Parameters are registered in the official order: begin_conv,
 * normalizer, end_conv, the residual stages, then the refine blocks in the order of
 * `refine_register_order` (indices into refines, which are in forward order). */
void refinenet_build(net_builder *b, refinenet *n, int conditional, int divide_by_sigma, int centre_input, int C,
                     int H, int W, int ngf, int n_cascades, const res_stage_desc *stages, const refine_desc *refines,
                     const int *refine_register_order);
void refinenet_forward(const layer_ctx *c, const refinenet *n, float *score, const float *x, const float *sigmas);
void refinenet_backward(const layer_ctx *c, const refinenet *n, float *dx, const float *dscore,
                        const float *sigmas);

/* Does the network apply 2x - 1 to its [0, 1] input itself? Yes unless data.logit_transform
 * or data.rescaled (the official get_model). */
static inline int refinenet_centre_input(const ncsn_config *cfg) {
    return !cfg->data.logit_transform && !cfg->data.rescaled;
}

/* The architectures (models/ncsn_v1.c, models/ncsnv2.c). */
void ncsn_v1_build(net_builder *b, refinenet *n, const ncsn_config *cfg);
void ncsnv2_build(net_builder *b, refinenet *n, const ncsn_config *cfg);
void ncsnv2_deeper_build(net_builder *b, refinenet *n, const ncsn_config *cfg);
void ncsnv2_deepest_build(net_builder *b, refinenet *n, const ncsn_config *cfg);

/* ---- toy conditional MLP (models/toy.c) ------------------------------------------------ */

typedef struct {
    int C, hidden;
    conv_layer lin1, lin2, lin3;
    size_t embed1, embed2; /* [L, hidden] per-level bias tables */
    param_range embed1_params, embed2_params;
    act_slot h0, a1, a2, out;
} toy_net;

void toy_build(net_builder *b, toy_net *t, const ncsn_config *cfg);
void toy_forward(const layer_ctx *c, const toy_net *t, float *score, const float *x, const float *sigmas);
void toy_backward(const layer_ctx *c, const toy_net *t, float *dx, const float *dscore, const float *sigmas);

#endif /* NCSN_MODELS_LAYERS_H */
