/* layers.c: the RefineNet building blocks and trunk (layers.h), as forward/backward pairs.
 *
 * Overwrite vs accumulate, once for this file:
 * - Parameter gradients always ACCUMULATE (+=) into the model's gradient buffer (the
 *   backend's weight-gradient and norm-gradient ops add), so one backward adds one batch.
 * - Activation gradients OVERWRITE, except at fan-in points, where the second and later
 *   contributions ACCUMULATE: residual sums (block input = main path + shortcut), RCU and
 *   CRP sums (their backward runs in place and adds the path's gradient onto the identity
 *   one), the MSF sum (each input gets its own gradient; the sum's fan-in is the output
 *   gradient shared by all inputs), and the residual-stage outputs that feed both the next
 *   stage and a RefineBlock (the RefineBlock writes first, the stage adds).
 * - A backward function with an `accumulate` argument applies it to its input gradient.
 *
 * Dimension names: N examples, C channels in, K channels out, H x W spatial, L levels,
 * F RefineNet features.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/layers.h"

/* ---- construction helpers ------------------------------------------------------------ */

static size_t round_up_slot(size_t floats) {
    return (floats + NCSN_SLOT_ALIGN - 1) / NCSN_SLOT_ALIGN * NCSN_SLOT_ALIGN;
}

size_t builder_param(net_builder *b, param_init_kind kind, int fan_in, int ndim, const int64_t *shape,
                     const char *fmt, ...) {
    char name[NCSN_MAX_NAME];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    NCSN_CHECKF(len > 0 && len < (int)sizeof name, "parameter name too long (format '%s')", fmt);
    if (b->table->n == b->init_cap) {
        b->init_cap = b->init_cap ? 2 * b->init_cap : 64;
        param_init *grown = realloc(b->init, (size_t)b->init_cap * sizeof *grown);
        if (!grown) ncsn_die("out of host memory growing the init table");
        b->init = grown;
    }
    b->init[b->table->n].kind = kind;
    b->init[b->table->n].fan_in = fan_in;
    return ncsn_param_table_add(b->table, name, ndim, shape);
}

act_slot builder_act(net_builder *b, size_t floats) {
    NCSN_CHECK(floats > 0);
    act_slot s = b->act_floats;
    b->act_floats += round_up_slot(floats);
    return s;
}

void builder_temp(net_builder *b, size_t floats) {
    if (floats > b->max_temp) b->max_temp = floats;
}

static size_t plane(int C, int H, int W) { return (size_t)C * (size_t)H * (size_t)W; }

/* Formats a submodule name into sub (NCSN_MAX_NAME chars); too long a name is an error. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void sub_name(char *sub, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(sub, NCSN_MAX_NAME, fmt, ap);
    va_end(ap);
    NCSN_CHECKF(len > 0 && len < NCSN_MAX_NAME, "module name too long (format '%s')", fmt);
}

/* ---- gradient progress (layers.h; model.h's grad-ready hook) -------------------------- */

void grad_progress_mark(grad_progress *p, param_range r) {
    NCSN_CHECKF(r.begin <= r.end && r.end <= p->first_final,
                "model backward: parameters [%zu, %zu) reported final, but [%zu, end) already is (reported twice?)",
                r.begin, r.end, p->first_final);
    if (r.begin == r.end) return;
    /* Merge r with the pending ranges it touches. An overlap means a range was reported
     * twice: a bug in a backward call list. */
    for (int i = 0; i < p->n_pending;) {
        const param_range q = p->pending[i];
        NCSN_CHECKF(q.end <= r.begin || r.end <= q.begin,
                    "model backward: parameters [%zu, %zu) reported final twice (overlap with [%zu, %zu))", r.begin,
                    r.end, q.begin, q.end);
        if (q.end == r.begin || r.end == q.begin) {
            r.begin = q.begin < r.begin ? q.begin : r.begin;
            r.end = q.end > r.end ? q.end : r.end;
            p->pending[i] = p->pending[--p->n_pending];
            i = 0; /* the grown range may now touch one already passed */
        } else {
            i++;
        }
    }
    /* Every pending range that touched r is merged into it, so r either extends the final
     * suffix (and nothing pending is left adjacent to the new suffix) or waits. */
    if (r.end == p->first_final) {
        p->first_final = r.begin;
        p->ready(p->ctx, r.begin);
    } else {
        NCSN_CHECKF(p->n_pending < GRAD_PROGRESS_MAX_PENDING,
                    "model backward: more than %d separate final parameter ranges wait for the suffix",
                    GRAD_PROGRESS_MAX_PENDING);
        p->pending[p->n_pending++] = r;
    }
}

/* ---- convolution (nn.Conv2d, stride 1, "same" padding) ------------------------------- */

void conv_build(net_builder *b, conv_layer *l, const char *name, int C, int K, int ksize, int dilation,
                int has_bias, int H, int W) {
    NCSN_CHECKF(ksize == 1 || ksize == 3, "%s: kernel size %d", name, ksize);
    l->C = C;
    l->K = K;
    l->ksize = ksize;
    l->dilation = dilation;
    l->H = H;
    l->W = W;
    const int fan_in = C * ksize * ksize;
    const int64_t wshape[4] = {K, C, ksize, ksize}, bshape[1] = {K};
    l->params.begin = builder_mark(b);
    l->w = builder_param(b, PARAM_INIT_UNIFORM, fan_in, 4, wshape, "%s.weight", name);
    l->b = has_bias ? builder_param(b, PARAM_INIT_UNIFORM, fan_in, 1, bshape, "%s.bias", name) : NCSN_NO_PARAM;
    l->params.end = builder_mark(b);
    b->macs += (double)K * C * ksize * ksize * H * W;
    if (b->n_convs == b->convs_cap) {
        b->convs_cap = b->convs_cap ? 2 * b->convs_cap : 64;
        conv_layer **grown = realloc(b->convs, (size_t)b->convs_cap * sizeof *grown);
        if (!grown) ncsn_die("out of host memory growing the convolution list");
        b->convs = grown;
    }
    b->convs[b->n_convs++] = l;
}

ncsn_conv_desc conv_layer_desc(const conv_layer *l, int N) {
    ncsn_conv_desc d;
    d.N = N;
    d.C = l->C;
    d.H = l->H;
    d.W = l->W;
    d.K = l->K;
    d.ksize = l->ksize;
    d.dilation = l->dilation;
    d.has_bias = l->b != NCSN_NO_PARAM;
    return d;
}

static ncsn_conv_desc conv_desc(const layer_ctx *c, const conv_layer *l) { return conv_layer_desc(l, c->N); }

/* ---- the forward's activation ops: fp32 NCHW, or bf16 NHWC in bf16 inference ----------- */

/* An arena slot seen as bf16 storage (bf16 inference: layers.h, memory model). */
static ncsn_bf16 *bf16_of(float *p) { return (ncsn_bf16 *)(void *)p; }
static const ncsn_bf16 *cbf16_of(const float *p) { return (const ncsn_bf16 *)(const void *)p; }

static void act_elu(const layer_ctx *c, float *out, const float *x, size_t n) {
    if (c->packed) ncsn_elu_forward_bf16(c->be, bf16_of(out), cbf16_of(x), n);
    else ncsn_elu_forward(c->be, out, x, n);
}

static void act_add(const layer_ctx *c, float *out, const float *a, const float *b, size_t n) {
    if (c->packed) ncsn_add_bf16(c->be, bf16_of(out), cbf16_of(a), cbf16_of(b), n);
    else ncsn_add(c->be, out, a, b, n);
}

static void act_accumulate(const layer_ctx *c, float *y, const float *x, size_t n) {
    if (c->packed) ncsn_accumulate_bf16(c->be, bf16_of(y), cbf16_of(x), n);
    else ncsn_accumulate(c->be, y, x, n);
}

static void act_mean_pool2(const layer_ctx *c, float *out, const float *in, int C, int H, int W) {
    if (c->packed) ncsn_mean_pool2_forward_bf16(c->be, bf16_of(out), cbf16_of(in), c->N, C, H, W);
    else ncsn_mean_pool2_forward(c->be, out, in, c->N, C, H, W);
}

static void act_resize(const layer_ctx *c, float *out, const float *in, int C, int H, int W, int Ho, int Wo) {
    if (c->packed) ncsn_resize_bilinear_forward_bf16(c->be, bf16_of(out), cbf16_of(in), c->N, C, H, W, Ho, Wo);
    else ncsn_resize_bilinear_forward(c->be, out, in, c->N, C, H, W, Ho, Wo);
}

void conv_forward(const layer_ctx *c, const conv_layer *l, float *out, const float *in) {
    ncsn_conv_desc d = conv_desc(c, l);
    if (c->packed) ncsn_conv2d_forward_bf16(c->be, bf16_of(out), cbf16_of(in), c->packed + l->packed, NULL, 0, &d);
    else ncsn_conv2d_forward(c->be, out, in, c->params + l->w, d.has_bias ? c->params + l->b : NULL, &d);
}

/* out = act(conv(in) + residual): residual NULL, another tensor, or out itself (out +=
 * conv(in)); act = ELU when `elu`. In bf16 inference one op (the sum and the ELU in the
 * convolution's epilogue); in fp32 the convolution, an accumulate (through `scratch` when the
 * sum lands in the residual's own buffer) and an in-place ELU, exactly as separate ops. */
static void conv_epilogue_forward(const layer_ctx *c, const conv_layer *l, float *out, const float *in,
                                  const float *residual, int elu, float *scratch) {
    const size_t n = (size_t)c->N * plane(l->K, l->H, l->W);
    if (c->packed) {
        /* The call lists keep the residual apart from the output in bf16 inference: cuDNN
         * documents no aliasing between a fused graph's tensors. */
        NCSN_CHECK(residual != out);
        ncsn_conv_desc d = conv_desc(c, l);
        ncsn_conv2d_forward_bf16(c->be, bf16_of(out), cbf16_of(in), c->packed + l->packed,
                                 residual ? cbf16_of(residual) : NULL, elu, &d);
        return;
    }
    if (!residual) {
        conv_forward(c, l, out, in);
    } else if (residual == out) {
        conv_forward(c, l, scratch, in);
        ncsn_accumulate(c->be, out, scratch, n);
    } else {
        conv_forward(c, l, out, in);
        ncsn_accumulate(c->be, out, residual, n);
    }
    if (elu) ncsn_elu_forward(c->be, out, out, n);
}

void conv_backward(const layer_ctx *c, const conv_layer *l, float *din, int accumulate, const float *dout,
                   const float *in) {
    ncsn_conv_desc d = conv_desc(c, l);
    ncsn_conv2d_backward_weights_accumulate(c->be, c->grads + l->w, d.has_bias ? c->grads + l->b : NULL, in,
                                            dout, &d);
    if (din) ncsn_conv2d_backward_data(c->be, din, dout, c->params + l->w, &d, accumulate);
}

/* ---- InstanceNorm++ (InstanceNorm2dPlus / ConditionalInstanceNorm2dPlus) ------------- */

void norm_build(net_builder *b, norm_layer *l, const char *name, int conditional, int C, int H, int W) {
    l->C = C;
    l->H = H;
    l->W = W;
    l->params.begin = builder_mark(b);
    if (conditional) {
        /* nn.Embedding(L, 3C): row y = [gamma | alpha | beta] of level y. */
        const int64_t shape[2] = {b->L, 3 * C};
        size_t e = builder_param(b, PARAM_INIT_COND_EMBED, 0, 2, shape, "%s.embed.weight", name);
        l->gamma = e;
        l->alpha = e + (size_t)C;
        l->beta = e + 2 * (size_t)C;
        l->stride = 3 * C;
    } else {
        /* Registration order of InstanceNorm2dPlus: alpha, gamma, beta. */
        const int64_t shape[1] = {C};
        l->alpha = builder_param(b, PARAM_INIT_NORMAL_ONE, 0, 1, shape, "%s.alpha", name);
        l->gamma = builder_param(b, PARAM_INIT_NORMAL_ONE, 0, 1, shape, "%s.gamma", name);
        l->beta = builder_param(b, PARAM_INIT_ZERO, 0, 1, shape, "%s.beta", name);
        l->stride = 0;
    }
    l->params.end = builder_mark(b);
    /* NCSN_NORM_STATS_COUNT(N, C) = N * (3C + 1): linear in N, so it is a slot. */
    l->stats = builder_act(b, 3 * (size_t)C + 1);
}

/* IN++ forward, with the ELU that follows it fused when `elu`. */
static void norm_act_forward(const layer_ctx *c, const norm_layer *l, float *out, const float *x, int elu) {
    const float *P = c->params;
    const int32_t *labels = l->stride ? c->labels : NULL;
    float *stats = ctx_slot(c, l->stats);
    if (c->packed)
        ncsn_instance_norm_plus_forward_bf16(c->be, bf16_of(out), cbf16_of(x), P + l->gamma, P + l->alpha, P + l->beta,
                                             l->stride, labels, stats, c->N, l->C, l->H, l->W, elu);
    else
        ncsn_instance_norm_plus_forward(c->be, out, x, P + l->gamma, P + l->alpha, P + l->beta, l->stride, labels,
                                        stats, c->N, l->C, l->H, l->W, elu);
}

void norm_forward(const layer_ctx *c, const norm_layer *l, float *out, const float *x) {
    norm_act_forward(c, l, out, x, 0);
}

void norm_backward(const layer_ctx *c, const norm_layer *l, float *dx, int accumulate, const float *dout,
                   const float *x) {
    const float *P = c->params;
    float *G = c->grads;
    ncsn_instance_norm_plus_backward(c->be, dx, G + l->gamma, G + l->alpha, G + l->beta, dout, x, P + l->gamma,
                                     P + l->alpha, l->stride, l->stride ? c->labels : NULL, ctx_slot(c, l->stats),
                                     c->N, l->C, l->H, l->W, accumulate);
}

/* norm -> ELU, the pre-activation pair of residual blocks, v1 RCUs and the head, in one
 * pass: the backward needs only the ELU output (and the norm's input and statistics). */
static void norm_elu_forward(const layer_ctx *c, const norm_layer *l, float *a, const float *x) {
    norm_act_forward(c, l, a, x, 1);
}

/* da is destroyed (it becomes d(norm output)). */
static void norm_elu_backward(const layer_ctx *c, const norm_layer *l, float *dx, int accumulate, float *da,
                              const float *a, const float *x) {
    ncsn_elu_backward(c->be, da, da, a, (size_t)c->N * plane(l->C, l->H, l->W));
    norm_backward(c, l, dx, accumulate, da, x);
}

/* ---- residual blocks ----------------------------------------------------------------- */

void res_block_build(net_builder *b, res_block *r, const char *name, int conditional, int Cin, int Cout,
                     int down, int dilation, int H, int W) {
    char sub[NCSN_MAX_NAME];
    memset(r, 0, sizeof *r);
    r->params.begin = builder_mark(b);
    const int dil = dilation ? dilation : 1;
    r->Cin = Cin;
    r->Cout = Cout;
    r->H = H;
    r->W = W;
    if (down) {
        /* conv1 and norm2 keep Cin; conv2 does Cin -> Cout. */
        r->Cmid = Cin;
        if (dilation) {
            /* The dilated 'down' quirk: no downsampling, dilated 3x3 shortcut with bias. */
            r->shortcut = SHORTCUT_DILATED_3X3;
            r->Ho = H;
            r->Wo = W;
        } else {
            NCSN_CHECKF(H % 2 == 0 && W % 2 == 0, "%s: ConvMeanPool needs an even size, got %dx%d", name, H, W);
            r->pool = 1;
            r->shortcut = SHORTCUT_MEANPOOL_1X1;
            r->Ho = H / 2;
            r->Wo = W / 2;
        }
    } else {
        r->Cmid = Cout;
        r->Ho = H;
        r->Wo = W;
        if (Cin == Cout) r->shortcut = SHORTCUT_IDENTITY;
        else if (dilation) r->shortcut = SHORTCUT_DILATED_3X3;
        else ncsn_die("%s: a non-resampling block with Cin %d != Cout %d and no dilation is not used by any "
                      "NCSN network", name, Cin, Cout);
    }

    /* Official registration order: conv1, normalize2, conv2, shortcut, normalize1. */
    sub_name(sub, "%s.conv1", name);
    conv_build(b, &r->conv1, sub, Cin, r->Cmid, 3, dil, 1, H, W);
    sub_name(sub, "%s.normalize2", name);
    norm_build(b, &r->norm2, sub, conditional, r->Cmid, H, W);
    sub_name(sub, r->pool ? "%s.conv2.conv" : "%s.conv2", name);
    conv_build(b, &r->conv2, sub, r->Cmid, Cout, 3, dil, 1, H, W);
    if (r->shortcut == SHORTCUT_MEANPOOL_1X1) {
        sub_name(sub, "%s.shortcut.conv", name);
        conv_build(b, &r->shortcut_conv, sub, Cin, Cout, 1, 1, 1, H, W);
    } else if (r->shortcut == SHORTCUT_DILATED_3X3) {
        sub_name(sub, "%s.shortcut", name);
        conv_build(b, &r->shortcut_conv, sub, Cin, Cout, 3, dil, 1, H, W);
    }
    sub_name(sub, "%s.normalize1", name);
    norm_build(b, &r->norm1, sub, conditional, Cin, H, W);
    r->params.end = builder_mark(b);

    r->a1 = builder_act(b, plane(Cin, H, W));
    r->h1 = builder_act(b, plane(r->Cmid, H, W));
    r->a2 = builder_act(b, plane(r->Cmid, H, W));
    r->out = builder_act(b, plane(Cout, r->Ho, r->Wo));
    int Cmax = Cin > Cout ? Cin : Cout;
    builder_temp(b, plane(Cmax, H, W));
}

/* out = conv2(ELU(norm2(conv1(ELU(norm1(x)))))) + shortcut(x) */
void res_block_forward(const layer_ctx *c, const res_block *r, const float *x) {
    float *a1 = ctx_slot(c, r->a1), *h1 = ctx_slot(c, r->h1), *a2 = ctx_slot(c, r->a2);
    float *out = ctx_slot(c, r->out);
    const size_t n_out = (size_t)c->N * plane(r->Cout, r->Ho, r->Wo);
    norm_elu_forward(c, &r->norm1, a1, x);
    conv_forward(c, &r->conv1, h1, a1);
    norm_elu_forward(c, &r->norm2, a2, h1);
    /* The shortcut decides the pooling: only the 1x1 ConvMeanPool shortcut goes with a
     * pooled conv2 (res_block_build). Where no pool sits between, the residual sum is the
     * second convolution's epilogue. */
    switch (r->shortcut) {
    case SHORTCUT_IDENTITY:
        conv_epilogue_forward(c, &r->conv2, out, a2, x, 0, NULL);
        break;
    case SHORTCUT_MEANPOOL_1X1:
        conv_forward(c, &r->conv2, c->tmp[0], a2);
        act_mean_pool2(c, out, c->tmp[0], r->Cout, r->H, r->W);
        conv_forward(c, &r->shortcut_conv, c->tmp[0], x);
        act_mean_pool2(c, c->tmp[1], c->tmp[0], r->Cout, r->H, r->W);
        act_accumulate(c, out, c->tmp[1], n_out);
        break;
    case SHORTCUT_DILATED_3X3:
        conv_forward(c, &r->conv2, c->tmp[0], a2);
        conv_epilogue_forward(c, &r->shortcut_conv, out, x, c->tmp[0], 0, NULL);
        break;
    }
}

void res_block_backward(const layer_ctx *c, const res_block *r, float *dx, int accumulate, const float *dout,
                        const float *x) {
    const float *a1 = ctx_slot(c, r->a1), *h1 = ctx_slot(c, r->h1), *a2 = ctx_slot(c, r->a2);
    /* Gradient at the conv outputs: through the 2x2 mean pool when conv2 is a ConvMeanPool
     * (the pooled shortcut shares it). */
    const float *dconv = dout;
    if (r->pool) {
        ncsn_mean_pool2_backward(c->be, c->tmp[2], dout, c->N, r->Cout, r->H, r->W, 0);
        dconv = c->tmp[2];
    }
    /* Main path first, so it can overwrite dx when the caller asks for overwrite. */
    conv_backward(c, &r->conv2, c->tmp[0], 0, dconv, a2);
    norm_elu_backward(c, &r->norm2, c->tmp[1], 0, c->tmp[0], a2, h1);
    conv_backward(c, &r->conv1, c->tmp[0], 0, c->tmp[1], a1);
    norm_elu_backward(c, &r->norm1, dx, accumulate, c->tmp[0], a1, x);
    /* Shortcut: the fan-in at x. */
    switch (r->shortcut) {
    case SHORTCUT_IDENTITY:
        ncsn_accumulate(c->be, dx, dout, (size_t)c->N * plane(r->Cin, r->H, r->W));
        break;
    case SHORTCUT_MEANPOOL_1X1:
    case SHORTCUT_DILATED_3X3:
        conv_backward(c, &r->shortcut_conv, dx, 1, dconv, x);
        break;
    }
}

/* ---- RCU (CondRCUBlock / RCUBlock) ----------------------------------------------------- */

void rcu_build(net_builder *b, rcu_block *r, const char *name, int conditional, int in_place, int C,
               int n_blocks, int H, int W) {
    char sub[NCSN_MAX_NAME];
    memset(r, 0, sizeof *r);
    NCSN_CHECK(n_blocks >= 1 && n_blocks <= NCSN_MAX_RCU_BLOCKS);
    NCSN_CHECKF(!(conditional && in_place), "%s: a v1 RCU keeps every block input; it cannot run in place", name);
    r->C = C;
    r->H = H;
    r->W = W;
    r->n_blocks = n_blocks;
    r->conditional = conditional;
    r->in_place = in_place;
    r->params.begin = builder_mark(b);
    const size_t P = plane(C, H, W);
    /* Keys "<block>_<stage>_norm", "<block>_<stage>_conv", 1-based, norm before conv. */
    for (int i = 0; i < n_blocks; i++) {
        for (int j = 0; j < 2; j++) {
            if (conditional) {
                sub_name(sub, "%s.%d_%d_norm", name, i + 1, j + 1);
                norm_build(b, &r->norm[i][j], sub, 1, C, H, W);
            }
            sub_name(sub, "%s.%d_%d_conv", name, i + 1, j + 1);
            conv_build(b, &r->conv[i][j], sub, C, C, 3, 1, 0, H, W);
            r->e[i][j] = builder_act(b, P);
        }
        if (conditional) {
            r->c[i] = builder_act(b, P);
            r->out[i] = builder_act(b, P);
        }
    }
    if (!conditional && !in_place) r->out[0] = builder_act(b, P);
    builder_temp(b, P);
    r->params.end = builder_mark(b);
}

static float *rcu_output(const layer_ctx *c, const rcu_block *r, float *x) {
    if (r->conditional) return ctx_slot(c, r->out[r->n_blocks - 1]);
    return r->in_place ? x : ctx_slot(c, r->out[0]);
}

/* Block input b: the RCU input for b = 0, else the previous block's output (v1 only: v2
 * block inputs are overwritten by the chain and never read back). */
static const float *rcu_block_input(const layer_ctx *c, const rcu_block *r, int b, const float *x) {
    return b == 0 ? x : ctx_slot(c, r->out[b - 1]);
}

float *rcu_forward(const layer_ctx *c, const rcu_block *r, float *x, int elu_out) {
    const size_t n = (size_t)c->N * plane(r->C, r->H, r->W);
    float *y = rcu_output(c, r, x);
    for (int b = 0; b < r->n_blocks; b++) {
        float *e0 = ctx_slot(c, r->e[b][0]), *e1 = ctx_slot(c, r->e[b][1]);
        const int elu = elu_out && b == r->n_blocks - 1;
        if (r->conditional) {
            const float *xb = rcu_block_input(c, r, b, x);
            float *cb = ctx_slot(c, r->c[b]), *ob = ctx_slot(c, r->out[b]);
            norm_elu_forward(c, &r->norm[b][0], e0, xb);
            conv_forward(c, &r->conv[b][0], cb, e0);
            norm_elu_forward(c, &r->norm[b][1], e1, cb);
            conv_epilogue_forward(c, &r->conv[b][1], ob, e1, xb, elu, NULL); /* x += residual */
        } else {
            /* Block input: x for the first block of a chain that is not in place, else the
             * chain buffer itself. */
            const float *xb = (b == 0) ? x : y;
            act_elu(c, e0, xb, n);
            conv_epilogue_forward(c, &r->conv[b][0], e1, e0, NULL, 1, NULL);
            /* fp32 keeps the chain in y, adding in place (the backward needs only the ELU
             * outputs). bf16 inference writes each block's output into its e0 slot, free once
             * conv 0 has read it, so that no convolution adds into its own residual (cuDNN's
             * fused epilogue wants them apart); the output then lives there. */
            float *ob = c->packed ? e0 : y;
            conv_epilogue_forward(c, &r->conv[b][1], ob, e1, xb, elu, c->tmp[0]);
            y = ob;
        }
    }
    return y;
}

void rcu_backward(const layer_ctx *c, const rcu_block *r, float *d, const float *x) {
    const size_t n = (size_t)c->N * plane(r->C, r->H, r->W);
    for (int b = r->n_blocks - 1; b >= 0; b--) {
        const float *e0 = ctx_slot(c, r->e[b][0]), *e1 = ctx_slot(c, r->e[b][1]);
        /* Second stage: d -> tmp0 = d(ELU output e1) -> d(conv0 output). */
        conv_backward(c, &r->conv[b][1], c->tmp[0], 0, d, e1);
        const float *dconv0;
        if (r->conditional) {
            norm_elu_backward(c, &r->norm[b][1], c->tmp[1], 0, c->tmp[0], e1, ctx_slot(c, r->c[b]));
            dconv0 = c->tmp[1];
        } else {
            ncsn_elu_backward(c->be, c->tmp[0], c->tmp[0], e1, n);
            dconv0 = c->tmp[0];
        }
        /* First stage, then the residual fan-in: d(x_b) = d(out_b) + path. */
        conv_backward(c, &r->conv[b][0], c->tmp[2], 0, dconv0, e0);
        if (r->conditional) {
            norm_elu_backward(c, &r->norm[b][0], d, 1, c->tmp[2], e0, rcu_block_input(c, r, b, x));
        } else {
            ncsn_elu_backward(c->be, c->tmp[2], c->tmp[2], e0, n);
            ncsn_accumulate(c->be, d, c->tmp[2], n);
        }
    }
}

/* ---- CRP (CondCRPBlock / CRPBlock) ---------------------------------------------------- */

void crp_build(net_builder *b, crp_block *r, const char *name, int conditional, int F, int H, int W) {
    char sub[NCSN_MAX_NAME];
    memset(r, 0, sizeof *r);
    r->F = F;
    r->H = H;
    r->W = W;
    r->conditional = conditional;
    r->params.begin = builder_mark(b);
    for (int i = 0; i < 2; i++) {
        sub_name(sub, "%s.convs.%d", name, i);
        conv_build(b, &r->convs[i], sub, F, F, 3, 1, 0, H, W);
    }
    if (conditional)
        for (int i = 0; i < 2; i++) {
            sub_name(sub, "%s.norms.%d", name, i);
            norm_build(b, &r->norms[i], sub, 1, F, H, W);
        }
    r->params.end = builder_mark(b);
    const size_t P = plane(F, H, W);
    r->p[0] = builder_act(b, P);
    r->p[1] = builder_act(b, P);
    r->c0 = builder_act(b, P);
    r->out = builder_act(b, P);
    builder_temp(b, P);
}

/* Pooling of stage i (the v1 attribute is called maxpool but is an AvgPool2d(5, 1, 2)). */
static void crp_pool_forward(const layer_ctx *c, const crp_block *r, float *out, const float *in) {
    if (c->packed) {
        if (r->conditional) ncsn_avg_pool5_forward_bf16(c->be, bf16_of(out), cbf16_of(in), c->N, r->F, r->H, r->W);
        else ncsn_max_pool5_forward_bf16(c->be, bf16_of(out), cbf16_of(in), c->N, r->F, r->H, r->W);
    } else {
        if (r->conditional) ncsn_avg_pool5_forward(c->be, out, in, c->N, r->F, r->H, r->W);
        else ncsn_max_pool5_forward(c->be, out, in, c->N, r->F, r->H, r->W);
    }
}

static void crp_pool_backward(const layer_ctx *c, const crp_block *r, float *din, int accumulate,
                              const float *dout, const float *in) {
    if (r->conditional) ncsn_avg_pool5_backward(c->be, din, dout, c->N, r->F, r->H, r->W, accumulate);
    else ncsn_max_pool5_backward(c->be, din, dout, in, c->N, r->F, r->H, r->W, accumulate);
}

/* x = act(x); path = x; per stage: [v1 path = norm(path)]; path = conv(pool(path)); x = path + x */
float *crp_forward(const layer_ctx *c, const crp_block *r, float *x, int x_activated) {
    const size_t n = (size_t)c->N * plane(r->F, r->H, r->W);
    float *a = x, *p0 = ctx_slot(c, r->p[0]), *p1 = ctx_slot(c, r->p[1]);
    float *c0 = ctx_slot(c, r->c0), *out = ctx_slot(c, r->out);
    if (!x_activated) act_elu(c, a, x, n);
    /* stage 0 */
    if (r->conditional) {
        norm_forward(c, &r->norms[0], c->tmp[0], a);
        crp_pool_forward(c, r, p0, c->tmp[0]);
    } else {
        crp_pool_forward(c, r, p0, a);
    }
    conv_forward(c, &r->convs[0], c0, p0);
    act_add(c, c->tmp[1], c0, a, n); /* the running sum, until stage 1 adds to it */
    /* stage 1 */
    if (r->conditional) {
        norm_forward(c, &r->norms[1], c->tmp[0], c0);
        crp_pool_forward(c, r, p1, c->tmp[0]);
    } else {
        crp_pool_forward(c, r, p1, c0);
    }
    conv_epilogue_forward(c, &r->convs[1], out, p1, c->tmp[1], 0, NULL);
    return out;
}

void crp_backward(const layer_ctx *c, const crp_block *r, float *d, const float *a) {
    const size_t n = (size_t)c->N * plane(r->F, r->H, r->W);
    const float *p0 = ctx_slot(c, r->p[0]), *p1 = ctx_slot(c, r->p[1]), *c0 = ctx_slot(c, r->c0);
    /* stage 1: d(out) reaches conv1's output and, through the running sum, c0 and a. */
    float *dc0;
    conv_backward(c, &r->convs[1], c->tmp[0], 0, d, p1);
    if (r->conditional) {
        crp_pool_backward(c, r, c->tmp[1], 0, c->tmp[0], NULL);
        norm_backward(c, &r->norms[1], c->tmp[0], 0, c->tmp[1], c0);
        dc0 = c->tmp[0];
    } else {
        crp_pool_backward(c, r, c->tmp[1], 0, c->tmp[0], c0);
        dc0 = c->tmp[1];
    }
    ncsn_accumulate(c->be, dc0, d, n); /* d(c0) = path + running sum */
    /* stage 0 */
    float *dp0 = (dc0 == c->tmp[0]) ? c->tmp[1] : c->tmp[0];
    conv_backward(c, &r->convs[0], dp0, 0, dc0, p0);
    if (r->conditional) {
        crp_pool_backward(c, r, c->tmp[2], 0, dp0, NULL);
        norm_backward(c, &r->norms[0], d, 1, c->tmp[2], a);
    } else {
        crp_pool_backward(c, r, d, 1, dp0, a);
    }
    /* d(a) = running sum + path is now in d; through the ELU (a holds its output). */
    ncsn_elu_backward(c->be, d, d, a, n);
}

/* ---- MSF (CondMSFBlock / MSFBlock) ---------------------------------------------------- */

void msf_build(net_builder *b, msf_block *r, const char *name, int conditional, int n_in, const int *Cin,
               const int *Hin, const int *Win, int F, int H, int W) {
    char sub[NCSN_MAX_NAME];
    memset(r, 0, sizeof *r);
    NCSN_CHECK(n_in == 2);
    r->n_in = n_in;
    r->F = F;
    r->H = H;
    r->W = W;
    r->conditional = conditional;
    r->params.begin = builder_mark(b);
    for (int i = 0; i < n_in; i++) {
        r->Cin[i] = Cin[i];
        r->Hin[i] = Hin[i];
        r->Win[i] = Win[i];
        sub_name(sub, "%s.convs.%d", name, i);
        conv_build(b, &r->convs[i], sub, Cin[i], F, 3, 1, 1, Hin[i], Win[i]);
        builder_temp(b, plane(F, Hin[i], Win[i]));
        builder_temp(b, plane(Cin[i], Hin[i], Win[i]));
    }
    if (conditional)
        for (int i = 0; i < n_in; i++) {
            sub_name(sub, "%s.norms.%d", name, i);
            norm_build(b, &r->norms[i], sub, 1, Cin[i], Hin[i], Win[i]);
            r->n[i] = builder_act(b, plane(Cin[i], Hin[i], Win[i]));
        }
    r->params.end = builder_mark(b);
    r->out = builder_act(b, plane(F, H, W));
    builder_temp(b, plane(F, H, W));
}

static int msf_same_size(const msf_block *r, int i) { return r->Hin[i] == r->H && r->Win[i] == r->W; }

/* sums = 0; per input: sums += resize(conv([v1 norm](x_i))). A same-size bilinear resize
 * with align_corners=True is the identity, so it is skipped. The resized inputs go first,
 * so that a same-size input adds itself to the sum in its convolution's epilogue (bf16
 * inference); with at most two terms the order does not change the fp32 sum. */
float *msf_forward(const layer_ctx *c, const msf_block *r, float *const *xs, int elu_out) {
    const size_t n = (size_t)c->N * plane(r->F, r->H, r->W);
    float *out = ctx_slot(c, r->out);
    NCSN_CHECK(r->n_in <= 2 && msf_same_size(r, 0));
    /* The last op is the convolution of the last same-size input (input 0 always is one):
     * it applies elu_out. */
    int last_same = 0;
    for (int i = 0; i < r->n_in; i++)
        if (msf_same_size(r, i)) last_same = i;
    int written = 0;
    for (int same_size = 0; same_size <= 1; same_size++) {
        for (int i = 0; i < r->n_in; i++) {
            if (msf_same_size(r, i) != same_size) continue;
            const float *in = xs[i];
            if (r->conditional) {
                float *ni = ctx_slot(c, r->n[i]);
                norm_forward(c, &r->norms[i], ni, xs[i]);
                in = ni;
            }
            /* The partial sum lives in tmp[1]; the last input's convolution adds it into out. */
            const int last = same_size && i == last_same;
            if (same_size) {
                conv_epilogue_forward(c, &r->convs[i], last ? out : c->tmp[1], in, written ? c->tmp[1] : NULL,
                                      last && elu_out, NULL);
            } else {
                conv_forward(c, &r->convs[i], c->tmp[0], in);
                act_resize(c, written ? c->tmp[2] : c->tmp[1], c->tmp[0], r->F, r->Hin[i], r->Win[i], r->H, r->W);
                if (written) act_accumulate(c, c->tmp[1], c->tmp[2], n);
            }
            written = 1;
        }
    }
    return out;
}

void msf_backward(const layer_ctx *c, const msf_block *r, float *const *dxs, const float *dout,
                  float *const *xs) {
    for (int i = 0; i < r->n_in; i++) {
        NCSN_CHECK(dxs[i] != dout);
        const float *dconv = dout;
        if (!msf_same_size(r, i)) {
            ncsn_resize_bilinear_backward(c->be, c->tmp[0], dout, c->N, r->F, r->Hin[i], r->Win[i], r->H, r->W, 0);
            dconv = c->tmp[0];
        }
        if (r->conditional) {
            conv_backward(c, &r->convs[i], c->tmp[1], 0, dconv, ctx_slot(c, r->n[i]));
            norm_backward(c, &r->norms[i], dxs[i], 0, c->tmp[1], xs[i]);
        } else {
            conv_backward(c, &r->convs[i], dxs[i], 0, dconv, xs[i]);
        }
    }
}

/* ---- RefineBlock (CondRefineBlock / RefineBlock) --------------------------------------- */

void refine_block_build(net_builder *b, refine_block *r, const char *name, int conditional, int n_in,
                        const int *Cin, const int *Hin, const int *Win, int F, int H, int W, int start, int end) {
    char sub[NCSN_MAX_NAME];
    memset(r, 0, sizeof *r);
    NCSN_CHECK(n_in == 1 || n_in == 2);
    NCSN_CHECKF(start == (n_in == 1), "%s: a start block has exactly one input", name);
    NCSN_CHECKF(!start || Cin[0] == F, "%s: start block needs in_planes[0] == features (%d vs %d)", name, Cin[0], F);
    NCSN_CHECKF(Hin[0] == H && Win[0] == W, "%s: input 0 must be at the output size", name);
    r->n_in = n_in;
    r->F = F;
    r->H = H;
    r->W = W;
    r->conditional = conditional;
    r->start = start;
    r->end = end;
    /* Registration order: adapt_convs, output_convs, msf, crp. In v2 the second input (the
     * previous RefineBlock's output) is needed by nothing else, so its RCU runs in place;
     * the first (a residual stage's output) is a norm input of the encoder's backward. */
    for (int i = 0; i < n_in; i++) {
        sub_name(sub, "%s.adapt_convs.%d", name, i);
        rcu_build(b, &r->adapt[i], sub, conditional, !conditional && i == 1, Cin[i], 2, Hin[i], Win[i]);
    }
    /* The output RCU's input is the CRP output, owned by this block: in place in v2. */
    sub_name(sub, "%s.output_convs", name);
    rcu_build(b, &r->out_rcu, sub, conditional, !conditional, F, end ? 3 : 1, H, W);
    if (!start) {
        sub_name(sub, "%s.msf", name);
        msf_build(b, &r->msf, sub, conditional, n_in, Cin, Hin, Win, F, H, W);
    }
    sub_name(sub, "%s.crp", name);
    crp_build(b, &r->crp, sub, conditional, F, H, W);
}

float *refine_block_output(const layer_ctx *c, const refine_block *r) {
    return rcu_output(c, &r->out_rcu, ctx_slot(c, r->crp.out));
}

/* The adapted inputs hs[i] and the CRP input, as the forward left them. */
static void refine_block_inner(const layer_ctx *c, const refine_block *r, float *const *xs, float **hs,
                               float **crp_in) {
    for (int i = 0; i < r->n_in; i++) hs[i] = rcu_output(c, &r->adapt[i], xs[i]);
    *crp_in = r->start ? hs[0] : ctx_slot(c, r->msf.out);
}

float *refine_block_forward(const layer_ctx *c, const refine_block *r, float *const *xs) {
    float *hs[2] = {NULL, NULL};
    /* In bf16 inference the CRP's leading ELU runs in the epilogue of the convolution that
     * produced its input (the start block's adapted input, or the MSF sum): nothing else reads
     * the value before the ELU. In fp32 the CRP applies it, as the backward expects. */
    const int fuse = c->packed != NULL;
    for (int i = 0; i < r->n_in; i++) hs[i] = rcu_forward(c, &r->adapt[i], xs[i], fuse && r->start);
    float *h = r->start ? hs[0] : msf_forward(c, &r->msf, hs, fuse);
    h = crp_forward(c, &r->crp, h, fuse);
    return rcu_forward(c, &r->out_rcu, h, 0);
}

void refine_block_backward(const layer_ctx *c, const refine_block *r, float *d, float *const *dxs,
                           float *const *xs) {
    float *hs[2] = {NULL, NULL}, *crp_in = NULL;
    refine_block_inner(c, r, xs, hs, &crp_in);
    rcu_backward(c, &r->out_rcu, d, ctx_slot(c, r->crp.out));
    grads_final(c, r->out_rcu.params);
    crp_backward(c, &r->crp, d, crp_in);
    grads_final(c, r->crp.params);
    if (r->start) {
        NCSN_CHECKF(dxs[0] == d, "start RefineBlock: its input gradient is computed in place");
    } else {
        msf_backward(c, &r->msf, dxs, d, hs);
        grads_final(c, r->msf.params);
    }
    for (int i = 0; i < r->n_in; i++) {
        rcu_backward(c, &r->adapt[i], dxs[i], xs[i]);
        grads_final(c, r->adapt[i].params);
    }
}

/* ---- the RefineNet trunk ---------------------------------------------------------------- */

void refinenet_build(net_builder *b, refinenet *n, int conditional, int divide_by_sigma, int centre_input, int C,
                     int H, int W, int ngf, int n_cascades, const res_stage_desc *stages, const refine_desc *refines,
                     const int *refine_register_order) {
    char sub[NCSN_MAX_NAME];
    memset(n, 0, sizeof *n);
    NCSN_CHECK(n_cascades >= 1 && n_cascades <= NCSN_MAX_CASCADES);
    n->conditional = conditional;
    n->divide_by_sigma = divide_by_sigma;
    n->centre_input = centre_input;
    n->C = C;
    n->H = H;
    n->W = W;
    n->ngf = ngf;
    n->n_cascades = n_cascades;

    conv_build(b, &n->begin_conv, "begin_conv", C, ngf, 3, 1, 1, H, W);
    norm_build(b, &n->normalizer, "normalizer", conditional, ngf, H, W);
    conv_build(b, &n->end_conv, "end_conv", ngf, C, 3, 1, 1, H, W);
    n->head_params.begin = n->normalizer.params.begin;
    n->head_params.end = n->end_conv.params.end;
    NCSN_CHECK(n->normalizer.params.end == n->end_conv.params.begin);

    /* Encoder: residual stages of two blocks each. */
    int Cc = ngf, Hc = H, Wc = W;
    for (int s = 0; s < n_cascades; s++) {
        const res_stage_desc *st = &stages[s];
        NCSN_CHECKF(st->Cin == Cc, "%s: input channels %d, previous stage gives %d", st->name, st->Cin, Cc);
        sub_name(sub, "%s.0", st->name);
        res_block_build(b, &n->res[s][0], sub, conditional, st->Cin, st->Cout, st->down, st->dilation, Hc, Wc);
        Hc = n->res[s][0].Ho;
        Wc = n->res[s][0].Wo;
        sub_name(sub, "%s.1", st->name);
        res_block_build(b, &n->res[s][1], sub, conditional, st->Cout, st->Cout, 0, st->dilation, Hc, Wc);
        Cc = st->Cout;
        n->layer_C[s] = Cc;
        n->layer_H[s] = Hc;
        n->layer_W[s] = Wc;
    }

    /* Decoder: refine[k] fuses layer (n - 1 - k) with refine[k - 1]'s output, at that
     * layer's size; built (registered) in the official order. */
    for (int j = 0; j < n_cascades; j++) {
        int k = refine_register_order[j], s = n_cascades - 1 - k;
        NCSN_CHECK(k >= 0 && k < n_cascades);
        int Cin[2] = {n->layer_C[s], k > 0 ? refines[k - 1].F : 0};
        int Hin[2] = {n->layer_H[s], k > 0 ? n->layer_H[s + 1] : 0};
        int Win[2] = {n->layer_W[s], k > 0 ? n->layer_W[s + 1] : 0};
        refine_block_build(b, &n->refine[k], refines[k].name, conditional, k == 0 ? 1 : 2, Cin, Hin, Win,
                           refines[k].F, n->layer_H[s], n->layer_W[s], k == 0, k == n_cascades - 1);
    }
    NCSN_CHECKF(refines[n_cascades - 1].F == ngf && n->layer_H[0] == H && n->layer_W[0] == W,
                "the last RefineBlock must give ngf channels at the input size");

    const size_t in_size = plane(C, H, W), top = plane(ngf, H, W);
    n->h0 = builder_act(b, in_size);
    n->begin_out = builder_act(b, top);
    n->head_a = builder_act(b, top);
    n->head_out = builder_act(b, in_size); /* v2: before / sigma; bf16 inference: before export */
    builder_temp(b, top);

    /* Gradient slots: one per encoder output that a RefineBlock reads (the deepest one is
     * produced in place in dref), two ping-pong buffers for the decoder chain, one between
     * the two blocks of a stage, and the begin_conv output / model input. */
    size_t max_ref = 0, max_layer = 0;
    for (int s = 0; s < n_cascades; s++) {
        size_t layer = plane(n->layer_C[s], n->layer_H[s], n->layer_W[s]);
        if (layer > max_layer) max_layer = layer;
        if (s < n_cascades - 1) n->dlayer[s] = builder_act(b, layer);
        const refine_block *rb = &n->refine[s];
        size_t ref = plane(rb->F, rb->H, rb->W);
        if (ref > max_ref) max_ref = ref;
    }
    n->dref[0] = builder_act(b, max_ref);
    n->dref[1] = builder_act(b, max_ref);
    n->dstage = builder_act(b, max_layer);
    n->dbegin = builder_act(b, top);
    n->dh0 = builder_act(b, in_size);
}

static float *layer_output(const layer_ctx *c, const refinenet *n, int s) {
    return ctx_slot(c, n->res[s][1].out);
}

void refinenet_forward(const layer_ctx *c, const refinenet *n, float *score, const float *x, const float *sigmas) {
    const size_t in_size = plane(n->C, n->H, n->W), n_in = (size_t)c->N * in_size;
    float *h0 = ctx_slot(c, n->h0), *h = ctx_slot(c, n->begin_out);
    /* Inputs are in [0, 1]; the networks see 2x - 1 unless logit_transform / rescaled.
     * The input is copied either way: begin_conv's backward reads it after the caller may
     * have reused x. */
    if (c->packed)
        ncsn_bf16_from_nchw(c->be, bf16_of(h0), x, n->centre_input ? 2.0f : 1.0f, n->centre_input ? -1.0f : 0.0f,
                            c->N, n->C, n->H, n->W);
    else if (n->centre_input) ncsn_scale_shift(c->be, h0, x, 2.0f, -1.0f, n_in);
    else ncsn_copy(c->be, h0, x, n_in * sizeof(float));
    conv_forward(c, &n->begin_conv, h, h0);

    const float *in = h;
    for (int s = 0; s < n->n_cascades; s++) {
        res_block_forward(c, &n->res[s][0], in);
        res_block_forward(c, &n->res[s][1], ctx_slot(c, n->res[s][0].out));
        in = layer_output(c, n, s);
    }

    float *ref = NULL;
    for (int k = 0; k < n->n_cascades; k++) {
        float *xs[2] = {layer_output(c, n, n->n_cascades - 1 - k), ref};
        ref = refine_block_forward(c, &n->refine[k], xs);
    }

    float *a = ctx_slot(c, n->head_a);
    norm_elu_forward(c, &n->normalizer, a, ref);
    if (c->packed) {
        /* Back to the caller's fp32 NCHW, with the v2 division by sigma in the same pass. */
        float *f = ctx_slot(c, n->head_out);
        conv_forward(c, &n->end_conv, f, a);
        ncsn_nchw_from_bf16(c->be, score, cbf16_of(f), n->divide_by_sigma ? sigmas : NULL, c->labels, c->N, n->C,
                            n->H, n->W);
    } else if (n->divide_by_sigma) {
        float *f = ctx_slot(c, n->head_out);
        conv_forward(c, &n->end_conv, f, a);
        ncsn_divide_by_sigma(c->be, score, f, sigmas, c->labels, c->N, in_size);
    } else {
        conv_forward(c, &n->end_conv, score, a);
    }
}

void refinenet_backward(const layer_ctx *c, const refinenet *n, float *dx, const float *dscore,
                        const float *sigmas) {
    const size_t in_size = plane(n->C, n->H, n->W), n_in = (size_t)c->N * in_size;
    const int nc = n->n_cascades;

    /* Head: [1/sigma] -> end_conv -> ELU -> normalizer, into the decoder gradient. */
    const float *dhead = dscore;
    if (n->divide_by_sigma) {
        ncsn_divide_by_sigma(c->be, c->tmp[0], dscore, sigmas, c->labels, c->N, in_size);
        dhead = c->tmp[0];
    }
    const float *a = ctx_slot(c, n->head_a);
    conv_backward(c, &n->end_conv, c->tmp[1], 0, dhead, a);
    int cur = 0;
    norm_elu_backward(c, &n->normalizer, ctx_slot(c, n->dref[cur]), 0, c->tmp[1], a,
                      refine_block_output(c, &n->refine[nc - 1]));
    grads_final(c, n->head_params);

    /* Decoder, last to first: each RefineBlock writes d(encoder layer) and d(previous
     * RefineBlock output); the encoder layers' gradients are completed by the stages. */
    for (int k = nc - 1; k >= 1; k--) {
        float *xs[2] = {layer_output(c, n, nc - 1 - k), refine_block_output(c, &n->refine[k - 1])};
        float *dxs[2] = {ctx_slot(c, n->dlayer[nc - 1 - k]), ctx_slot(c, n->dref[1 - cur])};
        refine_block_backward(c, &n->refine[k], ctx_slot(c, n->dref[cur]), dxs, xs);
        cur = 1 - cur;
    }
    float *dtop = ctx_slot(c, n->dref[cur]);
    {
        float *xs[1] = {layer_output(c, n, nc - 1)};
        float *dxs[1] = {dtop};
        refine_block_backward(c, &n->refine[0], dtop, dxs, xs);
    }

    /* Encoder, deepest stage first. Stage s's output gradient is complete once stage s + 1
     * has added its part to what refine wrote. */
    float *dstage = ctx_slot(c, n->dstage), *dbegin = ctx_slot(c, n->dbegin);
    for (int s = nc - 1; s >= 0; s--) {
        const float *dout = (s == nc - 1) ? dtop : ctx_slot(c, n->dlayer[s]);
        res_block_backward(c, &n->res[s][1], dstage, 0, dout, ctx_slot(c, n->res[s][0].out));
        grads_final(c, n->res[s][1].params);
        const float *in = s > 0 ? layer_output(c, n, s - 1) : ctx_slot(c, n->begin_out);
        float *din = s > 0 ? ctx_slot(c, n->dlayer[s - 1]) : dbegin;
        res_block_backward(c, &n->res[s][0], din, s > 0, dstage, in);
        grads_final(c, n->res[s][0].params);
    }

    float *dh0 = dx ? ctx_slot(c, n->dh0) : NULL;
    conv_backward(c, &n->begin_conv, dh0, 0, dbegin, ctx_slot(c, n->h0));
    grads_final(c, n->begin_conv.params);
    if (dx) {
        if (n->centre_input) ncsn_scale_shift(c->be, dx, dh0, 2.0f, 0.0f, n_in);
        else ncsn_copy(c->be, dx, dh0, n_in * sizeof(float));
    }
}
