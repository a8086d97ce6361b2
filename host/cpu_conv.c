/* cpu_conv.c: the CPU backend's convolutions (oneDNN 2.6, v2 C API) and gemm_nt (dnnl_sgemm).
 *
 * Each distinct ncsn_conv_desc gets one cache entry holding, per direction (forward,
 * backward-data, backward-weights), a primitive descriptor, the primitive, and cached
 * reorder primitives between the user's plain NCHW / OIHW tensors and the layout the
 * primitive chose. Primitives are created on first use and reused on every later call;
 * a call only points memory objects at this call's buffers and executes.
 *
 * Layout: with CPU_CONV_LAYOUT_ANY the primitive picks its layout (format_tag_any); on
 * AVX-512 that is the blocked nChw16c / OIhw16i16o family, which is faster than plain NCHW
 * or NHWC even after paying for the reorders of activations in and out of each call (the
 * measurements are summarised at cpu_conv_layout in cpu_internal.h; bench/bench_ops).
 *
 * Accumulation: activation gradients with `accumulate` and every parameter gradient are
 * computed into a scratch buffer and added to the user's tensor by a reorder primitive
 * with a sum post-op (dst = reorder(src) + dst), which also does the layout change; the
 * K-float bias gradient is staged and added by a loop.
 *
 * Numerics: algorithm `convolution_direct` (no Winograd, whose transforms change the
 * rounding). Padding is "same": dilation * (ksize / 2) on every side, and oneDNN counts
 * dilation from 0 (PyTorch dilation d is oneDNN d - 1).
 *
 * Precision (be->precision, read at every call; the cache is keyed by it, so FP32 and BF16
 * primitives of one shape live side by side and switching costs nothing after warm-up):
 * - FP32: strict IEEE fp32 in every direction (the tests' reference numerics).
 * - TF32: the CPU has no TF32; identical to FP32, bit for bit (shares the FP32 entries).
 * - BF16: the convolution INPUTS are rounded to bf16 (round to nearest even) by the cached
 *   f32 -> bf16 reorders that also change the layout: forward src and weights, backward-
 *   data diff_dst and weights, backward-weights src and diff_dst. Products of two bf16
 *   numbers are exact in fp32 and oneDNN accumulates them in fp32, and every OUTPUT (dst,
 *   diff_src, diff_weights, diff_bias) is f32, so the only error next to FP32 is the
 *   input rounding (relative 2^-8 per operand; tests/test_precision.c states the bounds).
 *   The forward bias is added in f32; diff_bias is the f32 sum of the bf16 diff_dst.
 *   The user's tensors, the biases, and everything outside the convolutions stay fp32.
 *   oneDNN 2.6 has jit bf16 convolutions for exactly these type combinations on
 *   avx512_core (native with avx512_bf16, emulated without). Where it has none (the
 *   descriptor is unimplemented, or only its reference `ref:any` code would run, which is
 *   orders of magnitude slower than jit fp32) that direction runs in FP32 instead, and a
 *   one-line note says so once per direction.
 *
 * bf16 NHWC inference (conv2d_forward_bf16, backend.h): a second kind of cache entry, whose
 * user tensors are the sampler's bf16 NHWC activations and the packed weights instead of
 * fp32 NCHW / OIHW. Its forward primitive reads and writes bf16 NHWC itself (src and dst
 * forced to dnnl_nhwc: brgconv on avx512_core_bf16), adds the f32 bias and rounds once, so
 * a call runs the primitive alone, with no reorder of activations or weights. It is bf16
 * whatever be->precision says (the precision switch is the training ops').
 * The packed weights are in the weights layout (format_tag_any) that the forward primitive
 * of the same shape picks at the canonical batch PACK_N: the layout depends on C, K, ksize,
 * dilation and H x W, but not on N, so one packed copy serves every batch size. A primitive
 * for another N that wants a different layout gets the weights by a cached reorder from the
 * packed layout at every call (correct, slower; said once on stderr). Where oneDNN has no
 * jit bf16 primitive (only `ref:any`, or unimplemented), the entry runs the fp32 primitive
 * with cached reorders bf16 NHWC -> f32 in and f32 -> bf16 NHWC out (the packed weights are
 * then plain bf16 OIHW, exact in f32): the same sums of exact bf16 products in f32, slower,
 * also said once.
 */
#include <stdio.h>
#include <string.h>

#include "host/cpu_internal.h"

#if DNNL_VERSION_MAJOR != 2
#error "cpu_conv.c uses the oneDNN v2 C API (dnnl_*_desc_init); oneDNN 3 renamed these calls"
#endif

static const char *const direction_names[CPU_CONV_DIRECTIONS] = {"forward", "backward-data", "backward-weights"};

/* One tensor argument of a primitive: the user's plain layout, the primitive's layout,
 * and the reorders between them (NULL where not needed). In BF16 the primitive's inputs
 * differ from the user's fp32 tensors in data type too, so they are always reordered. */
typedef struct {
    dnnl_memory_desc_t user_md, prim_md;
    int reorder;                    /* prim_md differs from user_md */
    dnnl_primitive_t to_prim;       /* user -> primitive layout (inputs) */
    dnnl_primitive_t from_prim;     /* primitive -> user, overwrite (outputs) */
    dnnl_primitive_t from_prim_sum; /* primitive -> user, user += (accumulating outputs) */
    dnnl_memory_t user_mem, prim_mem;
} conv_arg;

/* Argument slots; their meaning per direction:
 *   forward:          SRC = in,  WEIGHTS = w,  DST = out,  BIAS = b
 *   backward-data:    SRC = din (output), WEIGHTS = w, DST = dout
 *   backward-weights: SRC = in,  WEIGHTS = dw (output), DST = dout, BIAS = db (output) */
enum { ARG_SRC = 0, ARG_WEIGHTS = 1, ARG_DST = 2, ARG_BIAS = 3, ARG_COUNT = 4 };

/* The primitive of one direction of one cache entry. */
typedef struct {
    int ready;
    /* BF16 entries only: oneDNN has no jit bf16 primitive for this direction here, so the
     * call is served by the FP32 entry of the same shape (pd and prim stay NULL). */
    int runs_fp32;
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t prim;
    dnnl_memory_t scratchpad_mem;
    size_t scratchpad_bytes;
    conv_arg args[ARG_COUNT];
} conv_primitive;

/* The user tensors of an entry: the training ops' fp32 NCHW activations and OIHW weights,
 * or the inference ops' bf16 NHWC activations and packed bf16 weights (forward only). */
typedef enum { CONV_IO_F32_NCHW = 0, CONV_IO_BF16_NHWC = 1 } conv_io;

/* The batch size whose forward primitive defines the packed weights layout. */
#define PACK_N 1

/* The epilogue of a bf16 NHWC forward, as oneDNN post-ops: EPILOGUE_SUM adds what dst holds
 * (dst += conv: the residual, copied there first when it lives elsewhere), EPILOGUE_ELU
 * applies the ELU after. Training entries have none. */
enum { EPILOGUE_SUM = 1, EPILOGUE_ELU = 2 };

struct cpu_conv_entry {
    ncsn_conv_desc desc;
    ncsn_precision precision; /* FP32 or BF16: TF32 is mapped to FP32 before the lookup */
    conv_io io;
    int epilogue; /* EPILOGUE_* bits (bf16 NHWC entries) */
    int epilogue_in_loop; /* the fp32 fallback: the epilogue runs as a loop after the primitive */
    conv_primitive dir[CPU_CONV_DIRECTIONS];
};

/* ---- small helpers ------------------------------------------------------------------- */

/* The CPU has no TF32: it runs as strict FP32, from the same cache entries. */
static ncsn_precision cpu_precision(ncsn_precision requested) {
    return requested == NCSN_PRECISION_BF16 ? NCSN_PRECISION_BF16 : NCSN_PRECISION_FP32;
}

static int conv_desc_equal(const ncsn_conv_desc *a, const ncsn_conv_desc *b) {
    return a->N == b->N && a->C == b->C && a->H == b->H && a->W == b->W && a->K == b->K &&
           a->ksize == b->ksize && a->dilation == b->dilation && !!a->has_bias == !!b->has_bias;
}

static void conv_desc_check(const ncsn_conv_desc *d, const char *op) {
    NCSN_CHECKF(d->N > 0 && d->C > 0 && d->H > 0 && d->W > 0 && d->K > 0,
                "%s: bad sizes N=%d C=%d H=%d W=%d K=%d", op, d->N, d->C, d->H, d->W, d->K);
    NCSN_CHECKF(d->ksize == 1 || d->ksize == 3, "%s: ksize %d (expected 1 or 3)", op, d->ksize);
    NCSN_CHECKF(d->dilation >= 1, "%s: dilation %d (PyTorch convention, >= 1)", op, d->dilation);
}

static dnnl_memory_desc_t make_md(int ndims, const dnnl_dim_t *dims, dnnl_data_type_t type, dnnl_format_tag_t tag) {
    dnnl_memory_desc_t md;
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&md, ndims, dims, type, tag));
    return md;
}

static dnnl_primitive_t make_reorder(cpu_backend_impl *impl, const dnnl_memory_desc_t *from,
                                     const dnnl_memory_desc_t *to, int sum) {
    dnnl_primitive_attr_t attr = NULL;
    if (sum) {
        dnnl_post_ops_t post_ops;
        DNNL_CHECK(dnnl_post_ops_create(&post_ops));
        DNNL_CHECK(dnnl_post_ops_append_sum(post_ops, 1.0f));
        DNNL_CHECK(dnnl_primitive_attr_create(&attr));
        DNNL_CHECK(dnnl_primitive_attr_set_post_ops(attr, post_ops));
        DNNL_CHECK(dnnl_post_ops_destroy(post_ops));
    }
    dnnl_primitive_desc_t pd;
    DNNL_CHECK(dnnl_reorder_primitive_desc_create(&pd, from, impl->engine, to, impl->engine, attr));
    dnnl_primitive_t prim;
    DNNL_CHECK(dnnl_primitive_create(&prim, pd));
    DNNL_CHECK(dnnl_primitive_desc_destroy(pd));
    if (attr) DNNL_CHECK(dnnl_primitive_attr_destroy(attr));
    return prim;
}

/* Sets up one argument. `is_output`: the primitive writes it; `sum`: the user tensor is
 * accumulated into (only for outputs). */
static void conv_arg_init(cpu_backend_impl *impl, conv_arg *a, const dnnl_memory_desc_t *user_md,
                          const dnnl_memory_desc_t *prim_md, int is_output, int sum) {
    memset(a, 0, sizeof *a);
    a->user_md = *user_md;
    a->prim_md = *prim_md;
    a->reorder = !dnnl_memory_desc_equal(user_md, prim_md);
    /* An output is written in place, or reordered from f32: training outputs are always f32
     * (BF16 rounds inputs only), so their reorders are pure layout changes and the sum
     * post-op adds in f32; the bf16 NHWC fallback's f32 -> bf16 NHWC is the one output
     * reorder that changes the type (round to nearest even, once). */
    NCSN_CHECKF(!is_output || (!a->reorder && !sum) ||
                    (prim_md->data_type == dnnl_f32 && (!sum || user_md->data_type == dnnl_f32)),
                "oneDNN: convolution output reordered from a non-f32 type");
    DNNL_CHECK(dnnl_memory_create(&a->user_mem, &a->user_md, impl->engine, DNNL_MEMORY_NONE));
    DNNL_CHECK(dnnl_memory_create(&a->prim_mem, &a->prim_md, impl->engine, DNNL_MEMORY_NONE));
    if (!is_output) {
        if (a->reorder) a->to_prim = make_reorder(impl, &a->user_md, &a->prim_md, 0);
        return;
    }
    if (a->reorder) a->from_prim = make_reorder(impl, &a->prim_md, &a->user_md, 0);
    /* Same layout too: a plain reorder with sum is simply user += scratch. */
    if (sum) a->from_prim_sum = make_reorder(impl, &a->prim_md, &a->user_md, 1);
}

static void conv_arg_destroy(conv_arg *a) {
    if (a->to_prim) DNNL_CHECK(dnnl_primitive_destroy(a->to_prim));
    if (a->from_prim) DNNL_CHECK(dnnl_primitive_destroy(a->from_prim));
    if (a->from_prim_sum) DNNL_CHECK(dnnl_primitive_destroy(a->from_prim_sum));
    if (a->user_mem) DNNL_CHECK(dnnl_memory_destroy(a->user_mem));
    if (a->prim_mem) DNNL_CHECK(dnnl_memory_destroy(a->prim_mem));
}

static void exec_reorder(cpu_backend_impl *impl, dnnl_primitive_t reorder, dnnl_memory_t from, dnnl_memory_t to) {
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    DNNL_CHECK(dnnl_primitive_execute(reorder, impl->stream, 2, args));
}

/* Input: points the primitive's memory at the user's tensor, or reorders it into `buf`. */
static void stage_input(cpu_backend_impl *impl, conv_arg *a, const void *user, cpu_scratch *buf) {
    if (!a->reorder) {
        DNNL_CHECK(dnnl_memory_set_data_handle(a->prim_mem, (void *)user));
        return;
    }
    DNNL_CHECK(dnnl_memory_set_data_handle(a->user_mem, (void *)user));
    void *scratch = cpu_scratch_reserve(buf, dnnl_memory_desc_get_size(&a->prim_md));
    DNNL_CHECK(dnnl_memory_set_data_handle(a->prim_mem, scratch));
    exec_reorder(impl, a->to_prim, a->user_mem, a->prim_mem);
}

/* Output, before the primitive runs: write straight into the user's tensor when that
 * is possible (same layout, overwrite), else into `buf`. */
static void prepare_output(conv_arg *a, void *user, cpu_scratch *buf, int accumulate) {
    if (!a->reorder && !accumulate) {
        DNNL_CHECK(dnnl_memory_set_data_handle(a->prim_mem, user));
        return;
    }
    void *scratch = cpu_scratch_reserve(buf, dnnl_memory_desc_get_size(&a->prim_md));
    DNNL_CHECK(dnnl_memory_set_data_handle(a->prim_mem, scratch));
}

/* Output, after the primitive ran: bring the result into the user's tensor. */
static void finish_output(cpu_backend_impl *impl, conv_arg *a, void *user, int accumulate) {
    if (!a->reorder && !accumulate) return;
    DNNL_CHECK(dnnl_memory_set_data_handle(a->user_mem, user));
    exec_reorder(impl, accumulate ? a->from_prim_sum : a->from_prim, a->prim_mem, a->user_mem);
}

static const dnnl_memory_desc_t *query_md(dnnl_primitive_desc_t pd, dnnl_query_t what) {
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, what, 0);
    NCSN_CHECKF(md != NULL, "oneDNN: primitive descriptor has no memory descriptor for query %d", (int)what);
    return md;
}

/* The bias arguments: oneDNN reports bias as the second weights tensor (index 1). */
static const dnnl_memory_desc_t *query_bias_md(dnnl_primitive_desc_t pd, dnnl_query_t what) {
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, what, 1);
    NCSN_CHECKF(md != NULL && md->ndims == 1, "oneDNN: convolution has no bias memory descriptor");
    return md;
}

static const char *impl_info(const_dnnl_primitive_desc_t pd) {
    const char *name = NULL;
    DNNL_CHECK(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, (void *)&name));
    return name ? name : "?";
}

/* ---- primitive construction ---------------------------------------------------------- */

/* The tensors of one convolution as oneDNN sees them. User tensors are plain f32; the
 * primitive's tensors leave the layout to oneDNN (or the forced one). Its inputs (`*_in`:
 * src, weights, dst in the role of diff_dst) carry the entry's input type, bf16 in BF16;
 * its outputs (`*_out`, biases) are always f32. */
typedef struct {
    dnnl_dims_t src, wei, bias, dst;
    dnnl_dims_t strides, dilates, pad; /* oneDNN reads these as dnnl_dims_t */
    dnnl_memory_desc_t user_src, user_wei, user_bias, user_dst;
    dnnl_memory_desc_t src_in, wei_in, dst_in;
    dnnl_memory_desc_t src_out, wei_out, dst_out, bias_any;
} conv_shapes;

static void conv_shapes_init(const cpu_backend_impl *impl, const ncsn_conv_desc *d, ncsn_precision precision,
                             conv_shapes *s) {
    s->src[0] = d->N; s->src[1] = d->C; s->src[2] = d->H; s->src[3] = d->W;
    s->wei[0] = d->K; s->wei[1] = d->C; s->wei[2] = d->ksize; s->wei[3] = d->ksize;
    s->bias[0] = d->K;
    s->dst[0] = d->N; s->dst[1] = d->K; s->dst[2] = d->H; s->dst[3] = d->W;
    s->strides[0] = s->strides[1] = 1;
    s->dilates[0] = s->dilates[1] = d->dilation - 1;               /* oneDNN counts from 0 */
    s->pad[0] = s->pad[1] = (dnnl_dim_t)d->dilation * (d->ksize / 2); /* "same" */
    s->user_src = make_md(4, s->src, dnnl_f32, dnnl_nchw);
    s->user_wei = make_md(4, s->wei, dnnl_f32, dnnl_oihw);
    s->user_bias = make_md(1, s->bias, dnnl_f32, dnnl_x);
    s->user_dst = make_md(4, s->dst, dnnl_f32, dnnl_nchw);
    dnnl_format_tag_t act = impl->layout == CPU_CONV_LAYOUT_NCHW   ? dnnl_nchw
                            : impl->layout == CPU_CONV_LAYOUT_NHWC ? dnnl_nhwc
                                                                   : dnnl_format_tag_any;
    dnnl_data_type_t in = precision == NCSN_PRECISION_BF16 ? dnnl_bf16 : dnnl_f32;
    s->src_in = make_md(4, s->src, in, act);
    s->wei_in = make_md(4, s->wei, in, dnnl_format_tag_any);
    s->dst_in = make_md(4, s->dst, in, act);
    s->src_out = make_md(4, s->src, dnnl_f32, act);
    s->wei_out = make_md(4, s->wei, dnnl_f32, dnnl_format_tag_any);
    s->dst_out = make_md(4, s->dst, dnnl_f32, act);
    s->bias_any = make_md(1, s->bias, dnnl_f32, dnnl_format_tag_any);
}

/* Primitive descriptor with a user-managed scratchpad (one shared buffer, grown to the
 * largest primitive's need, instead of one allocation per primitive). FP32 must succeed.
 * BF16 may not: then it returns NULL with the reason in `why`. */
static dnnl_primitive_desc_t create_pd(cpu_backend_impl *impl, const dnnl_convolution_desc_t *cd,
                                       const_dnnl_primitive_desc_t hint, ncsn_precision precision, int epilogue,
                                       char *why, size_t whylen) {
    dnnl_primitive_attr_t attr;
    DNNL_CHECK(dnnl_primitive_attr_create(&attr));
    DNNL_CHECK(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    if (epilogue) {
        dnnl_post_ops_t post_ops;
        DNNL_CHECK(dnnl_post_ops_create(&post_ops));
        if (epilogue & EPILOGUE_SUM) DNNL_CHECK(dnnl_post_ops_append_sum(post_ops, 1.0f));
        if (epilogue & EPILOGUE_ELU)
            DNNL_CHECK(dnnl_post_ops_append_eltwise(post_ops, 1.0f, dnnl_eltwise_elu, 1.0f, 0.0f));
        DNNL_CHECK(dnnl_primitive_attr_set_post_ops(attr, post_ops));
        DNNL_CHECK(dnnl_post_ops_destroy(post_ops));
    }
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t status = dnnl_primitive_desc_create(&pd, cd, attr, impl->engine, hint);
    DNNL_CHECK(dnnl_primitive_attr_destroy(attr));
    if (precision != NCSN_PRECISION_BF16) {
        DNNL_CHECK(status);
        return pd;
    }
    if (status == dnnl_unimplemented) {
        snprintf(why, whylen, "oneDNN answers unimplemented");
        return NULL;
    }
    DNNL_CHECK(status); /* anything but "unimplemented" is a real error */
    const char *name = impl_info(pd);
    if (!strncmp(name, "ref", 3)) {
        snprintf(why, whylen, "only oneDNN's reference implementation '%s' would run", name);
        DNNL_CHECK(dnnl_primitive_desc_destroy(pd));
        return NULL;
    }
    return pd;
}

static void primitive_finish(cpu_backend_impl *impl, conv_primitive *p) {
    DNNL_CHECK(dnnl_primitive_create(&p->prim, p->pd));
    const dnnl_memory_desc_t *scratch_md = query_md(p->pd, dnnl_query_scratchpad_md);
    p->scratchpad_bytes = dnnl_memory_desc_get_size(scratch_md);
    DNNL_CHECK(dnnl_memory_create(&p->scratchpad_mem, scratch_md, impl->engine, DNNL_MEMORY_NONE));
    p->ready = 1;
}

/* A BF16 direction without a bf16 primitive: served by the FP32 entry from now on. */
static void fall_back_to_fp32(cpu_backend_impl *impl, cpu_conv_entry *e, cpu_conv_direction dir, const char *why) {
    e->dir[dir].runs_fp32 = 1;
    e->dir[dir].ready = 1;
    if (impl->bf16_fallback_reported[dir]) return;
    impl->bf16_fallback_reported[dir] = 1;
    const ncsn_conv_desc *d = &e->desc;
    fprintf(stderr,
            "ncsn: cpu: no bf16 %s convolution on this CPU (%s, first for N=%d C=%d %dx%d K=%d k%d d%d); "
            "such convolutions run in fp32\n",
            direction_names[dir], why, d->N, d->C, d->H, d->W, d->K, d->ksize, d->dilation);
}

/* The primitive descriptor of direction `dir` from `cd` (the backward ones hinted by the
 * entry's forward). Returns the primitive to complete, or NULL when a BF16 direction fell
 * back to FP32. */
static conv_primitive *begin_primitive(cpu_backend_impl *impl, cpu_conv_entry *e, cpu_conv_direction dir,
                                       const dnnl_convolution_desc_t *cd) {
    conv_primitive *p = &e->dir[dir];
    const_dnnl_primitive_desc_t hint = dir == CPU_CONV_FORWARD ? NULL : e->dir[CPU_CONV_FORWARD].pd;
    char why[160];
    p->pd = create_pd(impl, cd, hint, e->precision, 0, why, sizeof why);
    if (p->pd) return p;
    fall_back_to_fp32(impl, e, dir, why);
    return NULL;
}

static void build_forward(cpu_backend_impl *impl, cpu_conv_entry *e) {
    conv_shapes s;
    conv_shapes_init(impl, &e->desc, e->precision, &s);
    dnnl_convolution_desc_t cd;
    DNNL_CHECK(dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_training, dnnl_convolution_direct,
                                                          &s.src_in, &s.wei_in,
                                                          e->desc.has_bias ? &s.bias_any : NULL, &s.dst_out,
                                                          s.strides, s.dilates, s.pad, s.pad));
    conv_primitive *p = begin_primitive(impl, e, CPU_CONV_FORWARD, &cd);
    if (!p) return;
    conv_arg_init(impl, &p->args[ARG_SRC], &s.user_src, query_md(p->pd, dnnl_query_src_md), 0, 0);
    conv_arg_init(impl, &p->args[ARG_WEIGHTS], &s.user_wei, query_md(p->pd, dnnl_query_weights_md), 0, 0);
    conv_arg_init(impl, &p->args[ARG_DST], &s.user_dst, query_md(p->pd, dnnl_query_dst_md), 1, 0);
    if (e->desc.has_bias)
        conv_arg_init(impl, &p->args[ARG_BIAS], &s.user_bias, query_bias_md(p->pd, dnnl_query_weights_md), 0, 0);
    primitive_finish(impl, p);
}

static void build_backward_data(cpu_backend_impl *impl, cpu_conv_entry *e) {
    conv_shapes s;
    conv_shapes_init(impl, &e->desc, e->precision, &s);
    dnnl_convolution_desc_t cd;
    DNNL_CHECK(dnnl_dilated_convolution_backward_data_desc_init(&cd, dnnl_convolution_direct, &s.src_out, &s.wei_in,
                                                                &s.dst_in, s.strides, s.dilates, s.pad, s.pad));
    conv_primitive *p = begin_primitive(impl, e, CPU_CONV_BACKWARD_DATA, &cd);
    if (!p) return;
    conv_arg_init(impl, &p->args[ARG_SRC], &s.user_src, query_md(p->pd, dnnl_query_diff_src_md), 1, 1);
    conv_arg_init(impl, &p->args[ARG_WEIGHTS], &s.user_wei, query_md(p->pd, dnnl_query_weights_md), 0, 0);
    conv_arg_init(impl, &p->args[ARG_DST], &s.user_dst, query_md(p->pd, dnnl_query_diff_dst_md), 0, 0);
    primitive_finish(impl, p);
}

static void build_backward_weights(cpu_backend_impl *impl, cpu_conv_entry *e) {
    conv_shapes s;
    conv_shapes_init(impl, &e->desc, e->precision, &s);
    dnnl_convolution_desc_t cd;
    DNNL_CHECK(dnnl_dilated_convolution_backward_weights_desc_init(
        &cd, dnnl_convolution_direct, &s.src_in, &s.wei_out, e->desc.has_bias ? &s.bias_any : NULL, &s.dst_in,
        s.strides, s.dilates, s.pad, s.pad));
    conv_primitive *p = begin_primitive(impl, e, CPU_CONV_BACKWARD_WEIGHTS, &cd);
    if (!p) return;
    conv_arg_init(impl, &p->args[ARG_SRC], &s.user_src, query_md(p->pd, dnnl_query_src_md), 0, 0);
    conv_arg_init(impl, &p->args[ARG_WEIGHTS], &s.user_wei, query_md(p->pd, dnnl_query_diff_weights_md), 1, 1);
    conv_arg_init(impl, &p->args[ARG_DST], &s.user_dst, query_md(p->pd, dnnl_query_diff_dst_md), 0, 0);
    if (e->desc.has_bias) {
        /* K floats, plain: staged in a scratch buffer and added by a serial loop (a reorder
         * with a sum post-op would be one more parallel region for a few hundred adds). */
        const dnnl_memory_desc_t *bias_md = query_bias_md(p->pd, dnnl_query_diff_weights_md);
        NCSN_CHECKF(dnnl_memory_desc_equal(bias_md, &s.user_bias), "oneDNN chose a non-plain diff_bias layout");
        conv_arg_init(impl, &p->args[ARG_BIAS], &s.user_bias, bias_md, 1, 0);
    }
    primitive_finish(impl, p);
}

static cpu_conv_entry *conv_find(cpu_backend_impl *impl, const ncsn_conv_desc *d, ncsn_precision precision,
                                 conv_io io, int epilogue) {
    for (int i = 0; i < impl->conv_cache_count; i++) {
        cpu_conv_entry *e = &impl->conv_cache[i];
        if (e->precision == precision && e->io == io && e->epilogue == epilogue && conv_desc_equal(&e->desc, d))
            return e;
    }
    return NULL;
}

/* A new, empty entry with its key set (the caller builds its primitives). */
static cpu_conv_entry *conv_new_entry(cpu_backend_impl *impl, const ncsn_conv_desc *d, ncsn_precision precision,
                                      conv_io io, int epilogue) {
    if (impl->conv_cache_count == impl->conv_cache_capacity) {
        /* No pointer to an entry outlives one op call, so the entries may move; the
         * oneDNN handles inside them are pointers and move with them. */
        int cap = impl->conv_cache_capacity ? 2 * impl->conv_cache_capacity : 16;
        cpu_conv_entry *grown = ncsn_xcalloc((size_t)cap, sizeof *grown);
        if (impl->conv_cache_count) memcpy(grown, impl->conv_cache, (size_t)impl->conv_cache_count * sizeof *grown);
        free(impl->conv_cache);
        impl->conv_cache = grown;
        impl->conv_cache_capacity = cap;
    }
    cpu_conv_entry *e = &impl->conv_cache[impl->conv_cache_count++];
    memset(e, 0, sizeof *e);
    e->desc = *d;
    e->desc.has_bias = !!d->has_bias;
    e->precision = precision;
    e->io = io;
    e->epilogue = epilogue;
    return e;
}

static cpu_conv_entry *conv_lookup(cpu_backend_impl *impl, const ncsn_conv_desc *d, ncsn_precision precision,
                                   cpu_conv_direction direction) {
    cpu_conv_entry *e = conv_find(impl, d, precision, CONV_IO_F32_NCHW, 0);
    if (!e) {
        e = conv_new_entry(impl, d, precision, CONV_IO_F32_NCHW, 0);
        build_forward(impl, e); /* also the hint for both backward directions */
    }
    if (!e->dir[direction].ready) {
        if (e->dir[CPU_CONV_FORWARD].runs_fp32) {
            /* The backward primitives need a bf16 forward as their hint; without one they
             * fall back with it (oneDNN with no bf16 forward has no bf16 backward either). */
            fall_back_to_fp32(impl, e, direction, "no bf16 forward primitive to build it from");
        } else {
            if (direction == CPU_CONV_BACKWARD_DATA) build_backward_data(impl, e);
            if (direction == CPU_CONV_BACKWARD_WEIGHTS) build_backward_weights(impl, e);
        }
    }
    return e;
}

/* ---- bf16 NHWC inference entries ------------------------------------------------------ */

/* The forward of a bf16 NHWC entry. `packed_md` is the packed weights layout (that of the
 * PACK_N entry of the shape), or NULL when building that entry, whose primitive defines it. */
static void build_forward_bf16_nhwc(cpu_backend_impl *impl, cpu_conv_entry *e, const dnnl_memory_desc_t *packed_md) {
    const ncsn_conv_desc *d = &e->desc;
    conv_shapes s; /* for the dims, strides, dilations and padding */
    conv_shapes_init(impl, d, NCSN_PRECISION_BF16, &s);
    const dnnl_memory_desc_t user_src = make_md(4, s.src, dnnl_bf16, dnnl_nhwc);
    const dnnl_memory_desc_t user_dst = make_md(4, s.dst, dnnl_bf16, dnnl_nhwc);
    const dnnl_memory_desc_t wei_any = make_md(4, s.wei, dnnl_bf16, dnnl_format_tag_any);
    dnnl_convolution_desc_t cd;
    DNNL_CHECK(dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct,
                                                          &user_src, &wei_any, d->has_bias ? &s.bias_any : NULL,
                                                          &user_dst, s.strides, s.dilates, s.pad, s.pad));
    conv_primitive *p = &e->dir[CPU_CONV_FORWARD];
    char why[160];
    if (impl->bf16_nhwc_force_fp32) snprintf(why, sizeof why, "fp32 forced for a test");
    else p->pd = create_pd(impl, &cd, NULL, NCSN_PRECISION_BF16, e->epilogue, why, sizeof why);
    if (!p->pd) {
        /* No jit bf16 primitive: the fp32 one, in the layouts it prefers, behind reorders
         * from and to bf16 NHWC. */
        const dnnl_memory_desc_t src_any = make_md(4, s.src, dnnl_f32, dnnl_format_tag_any);
        const dnnl_memory_desc_t wei_f32 = make_md(4, s.wei, dnnl_f32, dnnl_format_tag_any);
        const dnnl_memory_desc_t dst_any = make_md(4, s.dst, dnnl_f32, dnnl_format_tag_any);
        DNNL_CHECK(dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct,
                                                              &src_any, &wei_f32, d->has_bias ? &s.bias_any : NULL,
                                                              &dst_any, s.strides, s.dilates, s.pad, s.pad));
        p->pd = create_pd(impl, &cd, NULL, NCSN_PRECISION_FP32, 0, why, sizeof why);
        /* Its dst is staged, so post-ops would not see ours: with an epilogue, the result
         * comes back in fp32 NHWC and a loop applies the epilogue before the one rounding. */
        e->epilogue_in_loop = e->epilogue != 0;
        if (!impl->bf16_nhwc_fallback_reported) {
            impl->bf16_nhwc_fallback_reported = 1;
            fprintf(stderr,
                    "ncsn: cpu: no bf16 NHWC convolution kernel for N=%d C=%d %dx%d K=%d k%d d%d (%s); such "
                    "conv2d_forward_bf16 calls run the fp32 convolution on converted data (same result, slower)\n",
                    d->N, d->C, d->H, d->W, d->K, d->ksize, d->dilation, why);
        }
    }
    const dnnl_memory_desc_t *prim_wei = query_md(p->pd, dnnl_query_weights_md);
    dnnl_memory_desc_t user_wei;
    if (packed_md) user_wei = *packed_md;
    else if (prim_wei->data_type == dnnl_bf16) user_wei = *prim_wei;
    else user_wei = make_md(4, s.wei, dnnl_bf16, dnnl_oihw); /* the fallback's packed layout */
    conv_arg_init(impl, &p->args[ARG_SRC], &user_src, query_md(p->pd, dnnl_query_src_md), 0, 0);
    conv_arg_init(impl, &p->args[ARG_WEIGHTS], &user_wei, prim_wei, 0, 0);
    const dnnl_memory_desc_t user_dst_f32 = make_md(4, s.dst, dnnl_f32, dnnl_nhwc);
    conv_arg_init(impl, &p->args[ARG_DST], e->epilogue_in_loop ? &user_dst_f32 : &user_dst,
                  query_md(p->pd, dnnl_query_dst_md), 1, 0);
    if (d->has_bias)
        conv_arg_init(impl, &p->args[ARG_BIAS], &s.user_bias, query_bias_md(p->pd, dnnl_query_weights_md), 0, 0);
    primitive_finish(impl, p);
}

/* The bf16 NHWC entry of `d`, built on first use. Its PACK_N sibling, which defines the
 * packed weights layout, is built first (before the new slot: building may move the cache). */
static cpu_conv_entry *conv_lookup_bf16_nhwc(cpu_backend_impl *impl, const ncsn_conv_desc *d, int epilogue) {
    cpu_conv_entry *e = conv_find(impl, d, NCSN_PRECISION_BF16, CONV_IO_BF16_NHWC, epilogue);
    if (e) return e;
    if (d->N == PACK_N && !epilogue) {
        e = conv_new_entry(impl, d, NCSN_PRECISION_BF16, CONV_IO_BF16_NHWC, 0);
        build_forward_bf16_nhwc(impl, e, NULL);
        return e;
    }
    /* The packed layout is the one of the plain (no post-op) PACK_N entry. */
    ncsn_conv_desc canonical = *d;
    canonical.N = PACK_N;
    const dnnl_memory_desc_t packed_md =
        conv_lookup_bf16_nhwc(impl, &canonical, 0)->dir[CPU_CONV_FORWARD].args[ARG_WEIGHTS].user_md;
    e = conv_new_entry(impl, d, NCSN_PRECISION_BF16, CONV_IO_BF16_NHWC, epilogue);
    build_forward_bf16_nhwc(impl, e, &packed_md);
    const conv_arg *w = &e->dir[CPU_CONV_FORWARD].args[ARG_WEIGHTS];
    if (w->reorder && !impl->bf16_nhwc_weights_reorder_reported) {
        impl->bf16_nhwc_weights_reorder_reported = 1;
        fprintf(stderr,
                "ncsn: cpu: the bf16 NHWC convolution N=%d C=%d %dx%d K=%d k%d d%d wants another weights layout "
                "than the packed one (N=%d); such calls reorder the weights every time (slower)\n",
                d->N, d->C, d->H, d->W, d->K, d->ksize, d->dilation, PACK_N);
    }
    return e;
}

/* The primitive that runs direction `dir` of `d` at the backend's precision. The pointer
 * is valid until the next lookup (the cache may grow and move). */
static conv_primitive *conv_get(ncsn_backend *be, const ncsn_conv_desc *d, cpu_conv_direction dir) {
    cpu_backend_impl *impl = be->impl;
    ncsn_precision precision = cpu_precision(be->precision);
    cpu_conv_entry *e = conv_lookup(impl, d, precision, dir);
    if (e->dir[dir].runs_fp32) e = conv_lookup(impl, d, NCSN_PRECISION_FP32, dir);
    return &e->dir[dir];
}

static void run_primitive(cpu_backend_impl *impl, conv_primitive *p, dnnl_exec_arg_t *args, int nargs) {
    void *scratch = cpu_scratch_reserve(&impl->scratchpad, p->scratchpad_bytes);
    DNNL_CHECK(dnnl_memory_set_data_handle(p->scratchpad_mem, scratch));
    args[nargs].arg = DNNL_ARG_SCRATCHPAD;
    args[nargs].memory = p->scratchpad_mem;
    DNNL_CHECK(dnnl_primitive_execute(p->prim, impl->stream, nargs + 1, args));
}

/* ---- the three ops ------------------------------------------------------------------- */

/* The forward of any entry: its src, weights and bias staged (pointed at, or reordered into
 * scratch where the primitive wants another layout or type), run, dst brought back. */
static void run_forward(cpu_backend_impl *impl, conv_primitive *p, void *out, const void *in, const void *w,
                        const float *b) {
    stage_input(impl, &p->args[ARG_SRC], in, &impl->src_buf);
    stage_input(impl, &p->args[ARG_WEIGHTS], w, &impl->weights_buf);
    prepare_output(&p->args[ARG_DST], out, &impl->dst_buf, 0);
    dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, p->args[ARG_SRC].prim_mem},
                               {DNNL_ARG_WEIGHTS, p->args[ARG_WEIGHTS].prim_mem},
                               {DNNL_ARG_DST, p->args[ARG_DST].prim_mem}};
    int nargs = 3;
    if (b) {
        stage_input(impl, &p->args[ARG_BIAS], b, &impl->bias_buf);
        args[nargs].arg = DNNL_ARG_BIAS;
        args[nargs].memory = p->args[ARG_BIAS].prim_mem;
        nargs++;
    }
    run_primitive(impl, p, args, nargs);
    finish_output(impl, &p->args[ARG_DST], out, 0);
    DNNL_CHECK(dnnl_stream_wait(impl->stream));
}

void cpu_conv2d_forward(ncsn_backend *be, float *out, const float *in, const float *w, const float *b,
                        const ncsn_conv_desc *d) {
    conv_desc_check(d, "conv2d_forward");
    NCSN_CHECKF(!d->has_bias || b, "conv2d_forward: has_bias but b is NULL");
    run_forward(be->impl, conv_get(be, d, CPU_CONV_FORWARD), out, in, w, d->has_bias ? b : NULL);
}

void cpu_conv2d_backward_data(ncsn_backend *be, float *din, const float *dout, const float *w,
                              const ncsn_conv_desc *d, int accumulate) {
    conv_desc_check(d, "conv2d_backward_data");
    cpu_backend_impl *impl = be->impl;
    conv_primitive *p = conv_get(be, d, CPU_CONV_BACKWARD_DATA);
    stage_input(impl, &p->args[ARG_DST], dout, &impl->dst_buf);
    stage_input(impl, &p->args[ARG_WEIGHTS], w, &impl->weights_buf);
    prepare_output(&p->args[ARG_SRC], din, &impl->src_buf, accumulate);
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_DIFF_DST, p->args[ARG_DST].prim_mem},
                               {DNNL_ARG_WEIGHTS, p->args[ARG_WEIGHTS].prim_mem},
                               {DNNL_ARG_DIFF_SRC, p->args[ARG_SRC].prim_mem}};
    run_primitive(impl, p, args, 3);
    finish_output(impl, &p->args[ARG_SRC], din, accumulate);
    DNNL_CHECK(dnnl_stream_wait(impl->stream));
}

void cpu_conv2d_backward_weights_accumulate(ncsn_backend *be, float *dw, float *db, const float *in,
                                            const float *dout, const ncsn_conv_desc *d) {
    conv_desc_check(d, "conv2d_backward_weights_accumulate");
    NCSN_CHECKF(!d->has_bias || db, "conv2d_backward_weights_accumulate: has_bias but db is NULL");
    cpu_backend_impl *impl = be->impl;
    conv_primitive *p = conv_get(be, d, CPU_CONV_BACKWARD_WEIGHTS);
    stage_input(impl, &p->args[ARG_SRC], in, &impl->src_buf);
    stage_input(impl, &p->args[ARG_DST], dout, &impl->dst_buf);
    prepare_output(&p->args[ARG_WEIGHTS], dw, &impl->weights_buf, 1);
    dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, p->args[ARG_SRC].prim_mem},
                               {DNNL_ARG_DIFF_DST, p->args[ARG_DST].prim_mem},
                               {DNNL_ARG_DIFF_WEIGHTS, p->args[ARG_WEIGHTS].prim_mem}};
    int nargs = 3;
    float *bias_grad = NULL;
    if (d->has_bias) {
        bias_grad = cpu_scratch_reserve(&impl->bias_buf, (size_t)d->K * sizeof(float));
        DNNL_CHECK(dnnl_memory_set_data_handle(p->args[ARG_BIAS].prim_mem, bias_grad));
        args[nargs].arg = DNNL_ARG_DIFF_BIAS;
        args[nargs].memory = p->args[ARG_BIAS].prim_mem;
        nargs++;
    }
    run_primitive(impl, p, args, nargs);
    finish_output(impl, &p->args[ARG_WEIGHTS], dw, 1);
    DNNL_CHECK(dnnl_stream_wait(impl->stream));
    if (d->has_bias)
        for (int k = 0; k < d->K; k++) db[k] += bias_grad[k];
}

/* ---- bf16 NHWC inference ops ---------------------------------------------------------- */

/* The packed weights layout of `d` (its PACK_N entry's). Valid until the next lookup. */
static const dnnl_memory_desc_t *packed_weights_md(cpu_backend_impl *impl, const ncsn_conv_desc *d) {
    ncsn_conv_desc canonical = *d;
    canonical.N = PACK_N;
    return &conv_lookup_bf16_nhwc(impl, &canonical, 0)->dir[CPU_CONV_FORWARD].args[ARG_WEIGHTS].user_md;
}

static size_t round_up_256(size_t bytes) { return (bytes + 255) / 256 * 256; }

/* Packed layout (backend.h): the weights in packed_weights_md, then the fp32 bias at the
 * next 256-byte boundary. */
static size_t packed_bias_offset(cpu_backend_impl *impl, const ncsn_conv_desc *d) {
    return round_up_256(dnnl_memory_desc_get_size(packed_weights_md(impl, d)));
}

size_t cpu_conv2d_packed_weights_bytes(ncsn_backend *be, const ncsn_conv_desc *d) {
    conv_desc_check(d, "conv2d_packed_weights_bytes");
    return packed_bias_offset(be->impl, d) + (d->has_bias ? round_up_256((size_t)d->K * sizeof(float)) : 0);
}

/* A one-off reorder (packing happens once per parameter change, not per step); oneDNN's
 * f32 -> bf16 rounds to nearest even, and zero-fills the padding of blocked layouts. */
void cpu_conv2d_pack_weights_bf16(ncsn_backend *be, void *packed, const float *w, const float *b,
                                  const ncsn_conv_desc *d) {
    conv_desc_check(d, "conv2d_pack_weights_bf16");
    NCSN_CHECKF(packed && w, "conv2d_pack_weights_bf16: packed %p, w %p", packed, (const void *)w);
    NCSN_CHECKF(!d->has_bias || b, "conv2d_pack_weights_bf16: has_bias but b is NULL");
    NCSN_CHECKF((uintptr_t)packed % 256 == 0, "conv2d_pack_weights_bf16: packed %p is not 256-byte aligned", packed);
    cpu_backend_impl *impl = be->impl;
    const dnnl_memory_desc_t to_md = *packed_weights_md(impl, d);
    conv_shapes s;
    conv_shapes_init(impl, d, NCSN_PRECISION_BF16, &s);
    dnnl_primitive_t reorder = make_reorder(impl, &s.user_wei, &to_md, 0);
    dnnl_memory_t from, to;
    DNNL_CHECK(dnnl_memory_create(&from, &s.user_wei, impl->engine, (void *)w));
    DNNL_CHECK(dnnl_memory_create(&to, &to_md, impl->engine, packed));
    exec_reorder(impl, reorder, from, to);
    DNNL_CHECK(dnnl_stream_wait(impl->stream));
    DNNL_CHECK(dnnl_memory_destroy(from));
    DNNL_CHECK(dnnl_memory_destroy(to));
    DNNL_CHECK(dnnl_primitive_destroy(reorder));
    if (d->has_bias) memcpy((char *)packed + packed_bias_offset(impl, d), b, (size_t)d->K * sizeof(float));
}

/* The epilogue as oneDNN post-ops: sum (dst += conv; a residual held elsewhere is copied
 * into out first, a memcpy next to the convolution) and eltwise ELU, in fp32 before dst's one
 * rounding to bf16. Where the shape fell back to the fp32 primitive (its dst is staged, so
 * post-ops would not see ours), its fp32 result goes to scratch and a loop applies the
 * epilogue, bf16(ELU(conv + residual)): the same single rounding. */
void cpu_conv2d_forward_bf16(ncsn_backend *be, ncsn_bf16 *out, const ncsn_bf16 *in, const void *packed_w,
                             const ncsn_bf16 *residual, int elu, const ncsn_conv_desc *d) {
    conv_desc_check(d, "conv2d_forward_bf16");
    NCSN_CHECKF(out && in && packed_w, "conv2d_forward_bf16: out %p, in %p, packed %p", (void *)out,
                (const void *)in, packed_w);
    const size_t in_n = (size_t)d->N * d->C * d->H * d->W, out_n = (size_t)d->N * d->K * d->H * d->W;
    NCSN_CHECKF(out + out_n <= in || in + in_n <= out, "conv2d_forward_bf16: out overlaps in (not in place)");
    NCSN_CHECKF(!residual || residual + out_n <= in || in + in_n <= residual,
                "conv2d_forward_bf16: the residual overlaps the input");
    NCSN_CHECKF(!residual || residual == out || residual + out_n <= out || out + out_n <= residual,
                "conv2d_forward_bf16: the residual overlaps the output without being it");
    cpu_backend_impl *impl = be->impl;
    const int epilogue = (residual ? EPILOGUE_SUM : 0) | (elu ? EPILOGUE_ELU : 0);
    cpu_conv_entry *e = conv_lookup_bf16_nhwc(impl, d, epilogue);
    /* The entry's user weights layout is the packed one: the bias follows it (packed_bias_offset,
     * without a second cache lookup on every call). */
    const dnnl_memory_desc_t *packed_md = &e->dir[CPU_CONV_FORWARD].args[ARG_WEIGHTS].user_md;
    const size_t bias_offset = round_up_256(dnnl_memory_desc_get_size(packed_md));
    const float *b = d->has_bias ? (const float *)((const char *)packed_w + bias_offset) : NULL;
    if (!e->epilogue_in_loop) {
        /* On the jit path nothing is staged: src, packed weights and dst are the primitive's own. */
        if (residual && residual != out) memcpy(out, residual, out_n * sizeof *out);
        run_forward(impl, &e->dir[CPU_CONV_FORWARD], out, in, packed_w, b);
        return;
    }
    float *conv = cpu_scratch_reserve(&impl->epilogue_buf, out_n * sizeof *conv);
    run_forward(impl, &e->dir[CPU_CONV_FORWARD], conv, in, packed_w, b);
#pragma omp parallel for schedule(static) if (out_n >= ((size_t)1 << 15))
    for (size_t i = 0; i < out_n; i++) {
        float v = conv[i] + (residual ? ncsn_float_from_bf16(residual[i]) : 0.0f);
        out[i] = ncsn_bf16_from_float(elu ? ncsn_elu(v) : v);
    }
}

const char *cpu_conv_bf16_nhwc_impl_name(ncsn_backend *be, const ncsn_conv_desc *d) {
    conv_desc_check(d, "cpu_conv_bf16_nhwc_impl_name");
    return impl_info(conv_lookup_bf16_nhwc(be->impl, d, 0)->dir[CPU_CONV_FORWARD].pd);
}

ncsn_precision cpu_conv_effective_precision(ncsn_backend *be, const ncsn_conv_desc *d, cpu_conv_direction dir,
                                            const char **impl_name) {
    conv_desc_check(d, "cpu_conv_effective_precision");
    NCSN_CHECKF(dir >= CPU_CONV_FORWARD && dir < CPU_CONV_DIRECTIONS, "cpu_conv_effective_precision: direction %d",
                (int)dir);
    cpu_backend_impl *impl = be->impl;
    ncsn_precision precision = cpu_precision(be->precision);
    cpu_conv_entry *e = conv_lookup(impl, d, precision, dir);
    if (e->dir[dir].runs_fp32) {
        precision = NCSN_PRECISION_FP32;
        e = conv_lookup(impl, d, precision, dir);
    }
    if (impl_name) *impl_name = impl_info(e->dir[dir].pd);
    return precision;
}

/* ---- gemm ---------------------------------------------------------------------------- */

void cpu_gemm_nt(ncsn_backend *be, float *C, const float *A, const float *B, int M, int Nc, int K) {
    NCSN_CHECKF(M > 0 && Nc > 0 && K > 0, "gemm_nt: bad sizes M=%d N=%d K=%d", M, Nc, K);
    /* Row-major C[M, Nc] = A[M, K] * B[Nc, K]^T. */
    DNNL_CHECK(dnnl_sgemm('N', 'T', M, Nc, K, 1.0f, A, K, B, K, 0.0f, C, Nc));
}

/* ---- lifetime ------------------------------------------------------------------------ */

void cpu_conv_init(cpu_backend_impl *impl) {
    DNNL_CHECK(dnnl_engine_create(&impl->engine, dnnl_cpu, 0));
    DNNL_CHECK(dnnl_stream_create(&impl->stream, impl->engine, dnnl_stream_default_flags));
    impl->layout = CPU_CONV_LAYOUT_ANY;
    const char *layout = getenv("NCSN_CPU_CONV_LAYOUT");
    if (layout && *layout) {
        if (!strcmp(layout, "any")) impl->layout = CPU_CONV_LAYOUT_ANY;
        else if (!strcmp(layout, "nchw")) impl->layout = CPU_CONV_LAYOUT_NCHW;
        else if (!strcmp(layout, "nhwc")) impl->layout = CPU_CONV_LAYOUT_NHWC;
        else ncsn_die("NCSN_CPU_CONV_LAYOUT='%s' (expected any, nchw or nhwc)", layout);
    }
}

void cpu_conv_destroy(cpu_backend_impl *impl) {
    for (int i = 0; i < impl->conv_cache_count; i++) {
        cpu_conv_entry *e = &impl->conv_cache[i];
        for (int k = 0; k < CPU_CONV_DIRECTIONS; k++) {
            conv_primitive *p = &e->dir[k];
            for (int a = 0; a < ARG_COUNT; a++) conv_arg_destroy(&p->args[a]);
            if (p->prim) DNNL_CHECK(dnnl_primitive_destroy(p->prim));
            if (p->pd) DNNL_CHECK(dnnl_primitive_desc_destroy(p->pd));
            if (p->scratchpad_mem) DNNL_CHECK(dnnl_memory_destroy(p->scratchpad_mem));
        }
    }
    free(impl->conv_cache);
    impl->conv_cache = NULL;
    impl->conv_cache_count = impl->conv_cache_capacity = 0;
    if (impl->stream) DNNL_CHECK(dnnl_stream_destroy(impl->stream));
    if (impl->engine) DNNL_CHECK(dnnl_engine_destroy(impl->engine));
}
