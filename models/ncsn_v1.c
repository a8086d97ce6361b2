/* ncsn_v1.c: NCSN v1, CondRefineNetDilated (ncsn:models/cond_refinenet_dilated.py; spec §2).
 *
 * Conditional everywhere: every norm is a ConditionalInstanceNorm2dPlus whose [L, 3C]
 * embedding is indexed by the level label; CRP pools with AvgPool2d(5, 1, 2). The output
 * is NOT divided by sigma. Only one real downsampling (res2); res3 and res4 are dilated
 * 'down' blocks that keep the size, so refine4's MSF is the one bilinear upsampling.
 */
#include "models/layers.h"

void ncsn_v1_build(net_builder *b, refinenet *n, const ncsn_config *cfg) {
    const int ngf = cfg->model.ngf;
    /* res4 of the 28x28 variant passes adjust_padding=True together with dilation=4, which
     * only affects the non-dilated branch: a no-op here (spec §1.4). */
    const res_stage_desc stages[4] = {
        {"res1", ngf, ngf, 0, 0},
        {"res2", ngf, 2 * ngf, 1, 0},
        {"res3", 2 * ngf, 2 * ngf, 1, 2},
        {"res4", 2 * ngf, 2 * ngf, 1, 4},
    };
    const refine_desc refines[4] = {{"refine1", 2 * ngf}, {"refine2", 2 * ngf}, {"refine3", ngf}, {"refine4", ngf}};
    const int order[4] = {0, 1, 2, 3};
    refinenet_build(b, n, /*conditional=*/1, /*divide_by_sigma=*/0, refinenet_centre_input(cfg), cfg->data.channels,
                    cfg->data.image_size, cfg->data.image_size, ngf, 4, stages, refines, order);
}
