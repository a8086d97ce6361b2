/* toy.c: the conditional MLP score network for 2-D toy data (engine extension; the
 * `toy` arch of tools/ncsn_torch.py).
 *
 *   h1 = ELU(lin1(x) + embed1.weight[y]);  h2 = ELU(lin2(h1) + embed2.weight[y]);
 *   s  = lin3(h2) / sigmas[y]
 *
 * The linear layers are 1x1 convolutions over an (N, C, 1, 1) input, so the backend's
 * conv ops and parameter names (lin*.weight [K, C, 1, 1]) serve unchanged. The input is
 * used as is (no 2x - 1: toy data are not images).
 */
#include "models/layers.h"

void toy_build(net_builder *b, toy_net *t, const ncsn_config *cfg) {
    const int C = cfg->data.channels, Hd = cfg->model.hidden, L = b->L;
    NCSN_CHECKF(C >= 1 && Hd >= 1, "toy model: data.channels %d, model.hidden %d", C, Hd);
    t->C = C;
    t->hidden = Hd;
    /* Registration order: lin1, embed1, lin2, embed2, lin3. Each table takes the uniform
     * bound 1/sqrt(fan_in) of the layer whose output it biases. */
    const int64_t table_shape[2] = {L, Hd};
    conv_build(b, &t->lin1, "lin1", C, Hd, 1, 1, 1, 1, 1);
    t->embed1 = builder_param(b, PARAM_INIT_UNIFORM, C, 2, table_shape, "embed1.weight");
    t->embed1_params = (param_range){t->embed1, builder_mark(b)};
    conv_build(b, &t->lin2, "lin2", Hd, Hd, 1, 1, 1, 1, 1);
    t->embed2 = builder_param(b, PARAM_INIT_UNIFORM, Hd, 2, table_shape, "embed2.weight");
    t->embed2_params = (param_range){t->embed2, builder_mark(b)};
    conv_build(b, &t->lin3, "lin3", Hd, C, 1, 1, 1, 1, 1);
    t->h0 = builder_act(b, (size_t)C);
    t->a1 = builder_act(b, (size_t)Hd);
    t->a2 = builder_act(b, (size_t)Hd);
    t->out = builder_act(b, (size_t)C);
    builder_temp(b, (size_t)(Hd > C ? Hd : C));
}

void toy_forward(const layer_ctx *c, const toy_net *t, float *score, const float *x, const float *sigmas) {
    const size_t nh = (size_t)c->N * t->hidden;
    float *h0 = ctx_slot(c, t->h0), *a1 = ctx_slot(c, t->a1), *a2 = ctx_slot(c, t->a2), *f = ctx_slot(c, t->out);
    /* lin1's backward reads its input after the caller may have reused x: keep a copy. */
    ncsn_copy(c->be, h0, x, (size_t)c->N * t->C * sizeof(float));
    conv_forward(c, &t->lin1, a1, h0);
    ncsn_label_bias_forward(c->be, a1, c->params + t->embed1, c->labels, c->N, t->hidden, 1);
    ncsn_elu_forward(c->be, a1, a1, nh);
    conv_forward(c, &t->lin2, a2, a1);
    ncsn_label_bias_forward(c->be, a2, c->params + t->embed2, c->labels, c->N, t->hidden, 1);
    ncsn_elu_forward(c->be, a2, a2, nh);
    conv_forward(c, &t->lin3, f, a2);
    ncsn_divide_by_sigma(c->be, score, f, sigmas, c->labels, c->N, (size_t)t->C);
}

void toy_backward(const layer_ctx *c, const toy_net *t, float *dx, const float *dscore, const float *sigmas) {
    const size_t nh = (size_t)c->N * t->hidden;
    const float *h0 = ctx_slot(c, t->h0), *a1 = ctx_slot(c, t->a1), *a2 = ctx_slot(c, t->a2);
    float *df = c->tmp[0], *dh2 = c->tmp[1], *dh1 = c->tmp[2];
    ncsn_divide_by_sigma(c->be, df, dscore, sigmas, c->labels, c->N, (size_t)t->C);
    conv_backward(c, &t->lin3, dh2, 0, df, a2);
    grads_final(c, t->lin3.params);
    ncsn_elu_backward(c->be, dh2, dh2, a2, nh);
    ncsn_label_bias_backward_accumulate(c->be, c->grads + t->embed2, dh2, c->labels, c->N, t->hidden, 1);
    grads_final(c, t->embed2_params);
    conv_backward(c, &t->lin2, dh1, 0, dh2, a1);
    grads_final(c, t->lin2.params);
    ncsn_elu_backward(c->be, dh1, dh1, a1, nh);
    ncsn_label_bias_backward_accumulate(c->be, c->grads + t->embed1, dh1, c->labels, c->N, t->hidden, 1);
    grads_final(c, t->embed1_params);
    conv_backward(c, &t->lin1, dx, 0, dh1, h0);
    grads_final(c, t->lin1.params);
}
