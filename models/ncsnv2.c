/* ncsnv2.c: the NCSNv2 family (ncsnv2:models/ncsnv2.py; spec §3): NCSNv2 (4 cascades,
 * CIFAR-10 and CelebA), NCSNv2Deeper (5, LSUN), NCSNv2Deepest (6, FFHQ).
 *
 * Unconditional: InstanceNorm2dPlus everywhere, no norms inside the RefineBlocks, CRP
 * pools with MaxPool2d(5, 1, 2). The only use of the level is the last step,
 * s(x, y) = f(x) / sigmas[y] (Technique 3).
 */
#include "models/layers.h"

void ncsnv2_build(net_builder *b, refinenet *n, const ncsn_config *cfg) {
    const int ngf = cfg->model.ngf;
    const res_stage_desc stages[4] = {
        {"res1", ngf, ngf, 0, 0},
        {"res2", ngf, 2 * ngf, 1, 0},
        {"res3", 2 * ngf, 2 * ngf, 1, 2},
        {"res4", 2 * ngf, 2 * ngf, 1, 4}, /* adjust_padding at 28x28: a no-op with dilation */
    };
    const refine_desc refines[4] = {{"refine1", 2 * ngf}, {"refine2", 2 * ngf}, {"refine3", ngf}, {"refine4", ngf}};
    const int order[4] = {0, 1, 2, 3};
    refinenet_build(b, n, 0, 1, refinenet_centre_input(cfg), cfg->data.channels, cfg->data.image_size,
                    cfg->data.image_size, ngf, 4, stages, refines, order);
}

void ncsnv2_deeper_build(net_builder *b, refinenet *n, const ncsn_config *cfg) {
    const int ngf = cfg->model.ngf;
    const res_stage_desc stages[5] = {
        {"res1", ngf, ngf, 0, 0},
        {"res2", ngf, 2 * ngf, 1, 0},
        {"res3", 2 * ngf, 2 * ngf, 1, 0}, /* a real downsampling */
        {"res4", 2 * ngf, 4 * ngf, 1, 2},
        {"res5", 4 * ngf, 4 * ngf, 1, 4},
    };
    const refine_desc refines[5] = {
        {"refine1", 4 * ngf}, {"refine2", 2 * ngf}, {"refine3", 2 * ngf}, {"refine4", ngf}, {"refine5", ngf},
    };
    const int order[5] = {0, 1, 2, 3, 4};
    refinenet_build(b, n, 0, 1, refinenet_centre_input(cfg), cfg->data.channels, cfg->data.image_size,
                    cfg->data.image_size, ngf, 5, stages, refines, order);
}

void ncsnv2_deepest_build(net_builder *b, refinenet *n, const ncsn_config *cfg) {
    const int ngf = cfg->model.ngf;
    const res_stage_desc stages[6] = {
        {"res1", ngf, ngf, 0, 0},
        {"res2", ngf, 2 * ngf, 1, 0},
        {"res3", 2 * ngf, 2 * ngf, 1, 0},
        {"res31", 2 * ngf, 2 * ngf, 1, 0}, /* the extra non-dilated down stage */
        {"res4", 2 * ngf, 4 * ngf, 1, 2},
        {"res5", 4 * ngf, 4 * ngf, 1, 4},
    };
    /* Forward order refine1, refine2, refine31, refine3, refine4, refine5; __init__
     * registers refine31 after refine3, and the state-dict keys follow registration. */
    const refine_desc refines[6] = {
        {"refine1", 4 * ngf}, {"refine2", 2 * ngf}, {"refine31", 2 * ngf},
        {"refine3", 2 * ngf}, {"refine4", ngf},     {"refine5", ngf},
    };
    const int order[6] = {0, 1, 3, 2, 4, 5};
    refinenet_build(b, n, 0, 1, refinenet_centre_input(cfg), cfg->data.channels, cfg->data.image_size,
                    cfg->data.image_size, ngf, 6, stages, refines, order);
}
