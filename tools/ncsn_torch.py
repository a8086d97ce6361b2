#!/usr/bin/python3
"""ncsn_torch.py: the PyTorch reference of the ncsn engine's networks and losses.

Written from /work/shared/spec/ncsn.md (sections 1-4, 8, 11), not from the official code, but
with the official module and parameter names, so `state_dict()` keys and shapes equal those of
ermongroup/ncsn and ermongroup/ncsnv2 checkpoints (without DataParallel's `module.` prefix):

  CondRefineNetDilated   NCSN v1: conditional IN++ (embedding [L, 3C]) everywhere, average-pool
                         CRP, output NOT divided by sigma.
  NCSNv2                 4 cascades; unconditional IN++ (alpha, gamma, beta), max-pool CRP, no
                         norms inside refine blocks, output divided by sigmas[y] (a buffer).
  NCSNv2Deeper           5 cascades (LSUN).
  NCSNv2Deepest          6 cascades (FFHQ).
  Toy                    engine extension: a conditional MLP for 2-D points (x is N x 2 x 1 x 1,
                         used as is), level-indexed bias tables, output divided by sigmas[y].

Inputs are images in [0, 1]; models apply 2x - 1 themselves unless data.logit_transform or
data.rescaled (the toy model never does). Labels are int64 level indices (0 = largest sigma).

`init_from_engine_rng(model, seed)` re-creates the engine's initialisation bit for bit
(.plan/TEAM.md "Parameter initialisation convention"), so fixtures need not store weights.

Losses: `anneal_dsm` (spec 4.1) and the exact sliced score matching loss
`anneal_sliced_score_estimation_vr` (spec 4.2, double backprop), both with the randomness
(labels, z, v) passed in so the engine can be checked on the same draws.

Self-test: /usr/bin/python3 tools/ncsn_torch.py --selftest
"""
import argparse
import math
import os
import sys
import types

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ncsn_rng  # noqa: E402

ARCHS = ("ncsn", "ncsnv2", "ncsnv2_deeper", "ncsnv2_deepest", "toy")

# --------------------------------------------------------------------------------------------
# Configs: the official YAML layout (sections training/sampling/data/model/optim) as nested
# namespaces, config.yml-style attribute access (config.model.ngf).


def dict2namespace(d):
    ns = types.SimpleNamespace()
    for key, value in d.items():
        setattr(ns, key, dict2namespace(value) if isinstance(value, dict) else value)
    return ns


def namespace2dict(ns):
    return {k: namespace2dict(v) if isinstance(v, types.SimpleNamespace) else v for k, v in vars(ns).items()}


def load_config(path_or_text):
    """Parses YAML text (or a file path) into a namespace; fills model.arch when absent the way
    the engine infers it (v1 layout -> ncsn; v2 by dataset)."""
    import yaml
    text = path_or_text
    if "\n" not in path_or_text and os.path.exists(path_or_text):
        with open(path_or_text) as f:
            text = f.read()
    cfg = dict2namespace(yaml.safe_load(text))
    if not hasattr(cfg.model, "arch"):
        cfg.model.arch = infer_arch(cfg)
    if cfg.model.arch not in ARCHS:
        raise ValueError("model.arch '%s' is not one of %s" % (cfg.model.arch, ", ".join(ARCHS)))
    return cfg


def infer_arch(cfg):
    """v1 configs (anneal.yml) have training.algo and no sampling section; v2 picks the
    network by dataset as ncsnv2:runners/ncsn_runner.py:get_model does."""
    if hasattr(cfg.training, "algo") or not hasattr(cfg, "sampling"):
        return "ncsn"
    dataset = cfg.data.dataset.upper()
    if dataset == "TOY":
        return "toy"
    if dataset == "LSUN":
        return "ncsnv2_deeper"
    if dataset == "FFHQ":
        return "ncsnv2_deepest"
    return "ncsnv2"


def _flag(section, name):
    return bool(getattr(section, name, False))


def get_sigmas(config):
    """sigma_i = exp(linspace(log begin, log end, L)) in float64, then float32 (get_sigmas)."""
    s = np.exp(np.linspace(np.log(config.model.sigma_begin), np.log(config.model.sigma_end),
                           config.model.num_classes))
    return torch.tensor(s, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# Normalisations (spec 1.2)

def _instance_norm_plus(x, alpha, gamma, beta):
    """IN++: IN(x) + alpha * standardised channel means, then gamma * h + beta.
    alpha/gamma/beta are [N or 1, C]. Channel-mean variance is unbiased (torch.var), eps 1e-5;
    the spatial variance of IN is biased, eps 1e-5."""
    means = torch.mean(x, dim=(2, 3))
    m = torch.mean(means, dim=-1, keepdim=True)
    v = torch.var(means, dim=-1, keepdim=True)
    means = (means - m) / torch.sqrt(v + 1e-5)
    h = F.instance_norm(x, eps=1e-5)
    h = h + means[..., None, None] * alpha[..., None, None]
    return gamma[..., None, None] * h + beta[..., None, None]


class ConditionalInstanceNorm2dPlus(nn.Module):
    """v1 CondIN++: one embedding row [gamma | alpha | beta] per noise level."""

    def __init__(self, num_features, num_classes, bias=True):
        super().__init__()
        assert bias, "only the bias=True variant is used by the official networks"
        self.num_features = num_features
        self.instance_norm = nn.InstanceNorm2d(num_features, affine=False, track_running_stats=False)
        self.embed = nn.Embedding(num_classes, num_features * 3)
        # Official init (the engine re-creates it from its RNG): gamma, alpha ~ N(1, .02), beta 0.
        with torch.no_grad():
            self.embed.weight[:, :2 * num_features].normal_(1, 0.02)
            self.embed.weight[:, 2 * num_features:].zero_()

    def forward(self, x, y):
        gamma, alpha, beta = self.embed(y).chunk(3, dim=-1)
        return _instance_norm_plus(x, alpha, gamma, beta)


class InstanceNorm2dPlus(nn.Module):
    """v2 IN++ (unconditional): per-channel alpha, gamma, beta (registered in that order).
    `bias` is the official signature's second argument; the final normaliser receives
    num_classes there (truthy), which is harmless."""

    def __init__(self, num_features, bias=True):
        super().__init__()
        assert bias
        self.num_features = num_features
        self.instance_norm = nn.InstanceNorm2d(num_features, affine=False, track_running_stats=False)
        self.alpha = nn.Parameter(torch.empty(num_features).normal_(1, 0.02))
        self.gamma = nn.Parameter(torch.empty(num_features).normal_(1, 0.02))
        self.beta = nn.Parameter(torch.zeros(num_features))

    def forward(self, x):
        return _instance_norm_plus(x, self.alpha[None], self.gamma[None], self.beta[None])


# --------------------------------------------------------------------------------------------
# Convolution helpers (spec 1.1, 1.3)

def conv3x3(cin, cout, bias):
    return nn.Conv2d(cin, cout, 3, stride=1, padding=1, bias=bias)


def dilated_conv3x3(cin, cout, dilation):
    return nn.Conv2d(cin, cout, 3, stride=1, padding=dilation, dilation=dilation, bias=True)


class ConvMeanPool(nn.Module):
    """conv (k, pad k//2, bias) then 2x2 mean pool as a sum of the four strided phases / 4,
    row offset first (the official summation order). The adjust_padding variant is never
    built by the standard networks (spec 1.4) and is not provided."""

    def __init__(self, cin, cout, kernel_size):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=1, padding=kernel_size // 2, bias=True)

    def forward(self, x):
        h = self.conv(x)
        return (h[:, :, ::2, ::2] + h[:, :, 1::2, ::2] + h[:, :, ::2, 1::2] + h[:, :, 1::2, 1::2]) / 4.


# --------------------------------------------------------------------------------------------
# Residual blocks (spec 1.4). One class for both families: `num_classes` set -> conditional
# (v1 ConditionalResidualBlock, norms take y); None -> v2 ResidualBlock.
# Registration order = key order: conv1, normalize2, conv2, shortcut, normalize1.

class _ResidualBlock(nn.Module):
    def __init__(self, cin, cout, num_classes=None, resample=None, dilation=None):
        super().__init__()
        self.conditional = num_classes is not None
        norm = (lambda c: ConditionalInstanceNorm2dPlus(c, num_classes)) if self.conditional \
            else (lambda c: InstanceNorm2dPlus(c))
        shortcut = None
        if resample == "down":
            if dilation is not None:
                # A dilated "down" block does not downsample: dilation replaces subsampling.
                self.conv1 = dilated_conv3x3(cin, cin, dilation)
                self.normalize2 = norm(cin)
                self.conv2 = dilated_conv3x3(cin, cout, dilation)
                shortcut = dilated_conv3x3(cin, cout, dilation)
            else:
                self.conv1 = conv3x3(cin, cin, bias=True)
                self.normalize2 = norm(cin)
                self.conv2 = ConvMeanPool(cin, cout, 3)
                shortcut = ConvMeanPool(cin, cout, 1)
        elif resample is None:
            if dilation is not None:
                self.conv1 = dilated_conv3x3(cin, cout, dilation)
                self.normalize2 = norm(cout)
                self.conv2 = dilated_conv3x3(cout, cout, dilation)
                if cin != cout:
                    shortcut = dilated_conv3x3(cin, cout, dilation)
            else:
                self.conv1 = conv3x3(cin, cout, bias=True)
                self.normalize2 = norm(cout)
                self.conv2 = conv3x3(cout, cout, bias=True)
                if cin != cout:
                    shortcut = nn.Conv2d(cin, cout, 1, bias=True)
        else:
            raise ValueError("resample must be None or 'down'")
        if shortcut is not None:
            self.shortcut = shortcut
        self.normalize1 = norm(cin)
        self.act = nn.ELU()

    def _norm(self, module, x, y):
        return module(x, y) if self.conditional else module(x)

    def forward(self, x, y=None):
        h = self.act(self._norm(self.normalize1, x, y))
        h = self.conv1(h)
        h = self.act(self._norm(self.normalize2, h, y))
        h = self.conv2(h)
        skip = self.shortcut(x) if hasattr(self, "shortcut") else x
        return skip + h


# --------------------------------------------------------------------------------------------
# RefineNet pieces (spec 1.5). Conditional (v1) when num_classes is given: every conv inside
# RCU/CRP/MSF is preceded by a CondIN++. v1 CRP pools by AvgPool(5, 1, 2) counting the padding;
# v2 by MaxPool(5, 1, 2).

class RCUBlock(nn.Module):
    def __init__(self, features, n_blocks, n_stages, num_classes=None):
        super().__init__()
        self.conditional = num_classes is not None
        self.n_blocks, self.n_stages = n_blocks, n_stages
        for i in range(n_blocks):
            for j in range(n_stages):
                if self.conditional:
                    setattr(self, "{}_{}_norm".format(i + 1, j + 1),
                            ConditionalInstanceNorm2dPlus(features, num_classes))
                setattr(self, "{}_{}_conv".format(i + 1, j + 1), conv3x3(features, features, bias=False))
        self.act = nn.ELU()

    def forward(self, x, y=None):
        for i in range(self.n_blocks):
            residual = x
            for j in range(self.n_stages):
                if self.conditional:
                    x = getattr(self, "{}_{}_norm".format(i + 1, j + 1))(x, y)
                x = self.act(x)
                x = getattr(self, "{}_{}_conv".format(i + 1, j + 1))(x)
            x = x + residual
        return x


class CRPBlock(nn.Module):
    def __init__(self, features, n_stages, num_classes=None):
        super().__init__()
        self.conditional = num_classes is not None
        self.convs = nn.ModuleList([conv3x3(features, features, bias=False) for _ in range(n_stages)])
        if self.conditional:
            self.norms = nn.ModuleList([ConditionalInstanceNorm2dPlus(features, num_classes)
                                        for _ in range(n_stages)])
            self.pool = nn.AvgPool2d(kernel_size=5, stride=1, padding=2)  # count_include_pad
        else:
            self.pool = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)
        self.act = nn.ELU()

    def forward(self, x, y=None):
        x = self.act(x)
        path = x
        for i, conv in enumerate(self.convs):
            if self.conditional:
                path = self.norms[i](path, y)
            path = conv(self.pool(path))
            x = path + x
        return x


class MSFBlock(nn.Module):
    def __init__(self, in_planes, features, num_classes=None):
        super().__init__()
        self.conditional = num_classes is not None
        self.features = features
        self.convs = nn.ModuleList([conv3x3(c, features, bias=True) for c in in_planes])
        if self.conditional:
            self.norms = nn.ModuleList([ConditionalInstanceNorm2dPlus(c, num_classes) for c in in_planes])

    def forward(self, xs, shape, y=None):
        sums = torch.zeros(xs[0].shape[0], self.features, *shape, dtype=xs[0].dtype, device=xs[0].device)
        for i, conv in enumerate(self.convs):
            h = self.norms[i](xs[i], y) if self.conditional else xs[i]
            h = conv(h)
            h = F.interpolate(h, size=tuple(shape), mode="bilinear", align_corners=True)
            sums = sums + h
        return sums


class RefineBlock(nn.Module):
    """Registration order (= key order): adapt_convs, output_convs, msf, crp."""

    def __init__(self, in_planes, features, num_classes=None, start=False, end=False):
        super().__init__()
        self.n_blocks = len(in_planes)
        self.adapt_convs = nn.ModuleList([RCUBlock(c, 2, 2, num_classes) for c in in_planes])
        self.output_convs = RCUBlock(features, 3 if end else 1, 2, num_classes)
        if not start:
            self.msf = MSFBlock(in_planes, features, num_classes)
        else:
            assert in_planes[0] == features
        self.crp = CRPBlock(features, 2, num_classes)

    def forward(self, xs, output_shape, y=None):
        hs = [self.adapt_convs[i](xs[i], y) for i in range(self.n_blocks)]
        h = self.msf(hs, output_shape, y) if self.n_blocks > 1 else hs[0]
        h = self.crp(h, y)
        return self.output_convs(h, y)


# --------------------------------------------------------------------------------------------
# Networks (spec 2, 3)

class _ScoreNetBase(nn.Module):
    def _preprocess(self, x):
        if self.logit_transform or self.rescaled:
            return x
        return 2 * x - 1.


class CondRefineNetDilated(_ScoreNetBase):
    """NCSN v1 (ncsn:models/cond_refinenet_dilated.py). No sigmas buffer in its state dict."""

    def __init__(self, config):
        super().__init__()
        self.logit_transform = _flag(config.data, "logit_transform")
        self.rescaled = _flag(config.data, "rescaled")
        ngf, L, C = config.model.ngf, config.model.num_classes, config.data.channels
        self.ngf, self.num_classes = ngf, L
        self.begin_conv = nn.Conv2d(C, ngf, 3, stride=1, padding=1)
        self.normalizer = ConditionalInstanceNorm2dPlus(ngf, L)
        self.end_conv = nn.Conv2d(ngf, C, 3, stride=1, padding=1)
        self.res1 = nn.ModuleList([_ResidualBlock(ngf, ngf, L), _ResidualBlock(ngf, ngf, L)])
        self.res2 = nn.ModuleList([_ResidualBlock(ngf, 2 * ngf, L, resample="down"),
                                   _ResidualBlock(2 * ngf, 2 * ngf, L)])
        self.res3 = nn.ModuleList([_ResidualBlock(2 * ngf, 2 * ngf, L, resample="down", dilation=2),
                                   _ResidualBlock(2 * ngf, 2 * ngf, L, dilation=2)])
        # (the 28x28 variant passes adjust_padding here; with a dilation it is a no-op)
        self.res4 = nn.ModuleList([_ResidualBlock(2 * ngf, 2 * ngf, L, resample="down", dilation=4),
                                   _ResidualBlock(2 * ngf, 2 * ngf, L, dilation=4)])
        self.refine1 = RefineBlock([2 * ngf], 2 * ngf, L, start=True)
        self.refine2 = RefineBlock([2 * ngf, 2 * ngf], 2 * ngf, L)
        self.refine3 = RefineBlock([2 * ngf, 2 * ngf], ngf, L)
        self.refine4 = RefineBlock([ngf, ngf], ngf, L, end=True)
        self.act = nn.ELU()

    @staticmethod
    def _cascade(blocks, x, y):
        for block in blocks:
            x = block(x, y)
        return x

    def forward(self, x, y):
        h = self.begin_conv(self._preprocess(x))
        layer1 = self._cascade(self.res1, h, y)
        layer2 = self._cascade(self.res2, layer1, y)
        layer3 = self._cascade(self.res3, layer2, y)
        layer4 = self._cascade(self.res4, layer3, y)
        ref1 = self.refine1([layer4], layer4.shape[2:], y)
        ref2 = self.refine2([layer3, ref1], layer3.shape[2:], y)
        ref3 = self.refine3([layer2, ref2], layer2.shape[2:], y)
        out = self.refine4([layer1, ref3], layer1.shape[2:], y)
        out = self.act(self.normalizer(out, y))
        return self.end_conv(out)


class _NCSNv2Base(_ScoreNetBase):
    """Shared head of the v2 family: sigmas buffer (registered first, so it leads the state
    dict), begin_conv, normalizer, end_conv; the output is divided by sigmas[y]."""

    def __init__(self, config):
        super().__init__()
        self.logit_transform = _flag(config.data, "logit_transform")
        self.rescaled = _flag(config.data, "rescaled")
        self.ngf, self.num_classes = config.model.ngf, config.model.num_classes
        self.register_buffer("sigmas", get_sigmas(config))
        C, ngf = config.data.channels, self.ngf
        self.begin_conv = nn.Conv2d(C, ngf, 3, stride=1, padding=1)
        self.normalizer = InstanceNorm2dPlus(ngf, self.num_classes)
        self.end_conv = nn.Conv2d(ngf, C, 3, stride=1, padding=1)
        self.act = nn.ELU()

    @staticmethod
    def _cascade(blocks, x):
        for block in blocks:
            x = block(x)
        return x

    def _head(self, out, y):
        out = self.end_conv(self.act(self.normalizer(out)))
        return out / self.sigmas[y].view(out.shape[0], 1, 1, 1)


def _rb(cin, cout, resample=None, dilation=None):
    return _ResidualBlock(cin, cout, None, resample=resample, dilation=dilation)


class NCSNv2(_NCSNv2Base):
    def __init__(self, config):
        super().__init__(config)
        ngf = self.ngf
        self.res1 = nn.ModuleList([_rb(ngf, ngf), _rb(ngf, ngf)])
        self.res2 = nn.ModuleList([_rb(ngf, 2 * ngf, "down"), _rb(2 * ngf, 2 * ngf)])
        self.res3 = nn.ModuleList([_rb(2 * ngf, 2 * ngf, "down", 2), _rb(2 * ngf, 2 * ngf, None, 2)])
        self.res4 = nn.ModuleList([_rb(2 * ngf, 2 * ngf, "down", 4), _rb(2 * ngf, 2 * ngf, None, 4)])
        self.refine1 = RefineBlock([2 * ngf], 2 * ngf, start=True)
        self.refine2 = RefineBlock([2 * ngf, 2 * ngf], 2 * ngf)
        self.refine3 = RefineBlock([2 * ngf, 2 * ngf], ngf)
        self.refine4 = RefineBlock([ngf, ngf], ngf, end=True)

    def forward(self, x, y):
        h = self.begin_conv(self._preprocess(x))
        layer1 = self._cascade(self.res1, h)
        layer2 = self._cascade(self.res2, layer1)
        layer3 = self._cascade(self.res3, layer2)
        layer4 = self._cascade(self.res4, layer3)
        ref1 = self.refine1([layer4], layer4.shape[2:])
        ref2 = self.refine2([layer3, ref1], layer3.shape[2:])
        ref3 = self.refine3([layer2, ref2], layer2.shape[2:])
        out = self.refine4([layer1, ref3], layer1.shape[2:])
        return self._head(out, y)


class NCSNv2Deeper(_NCSNv2Base):
    def __init__(self, config):
        super().__init__(config)
        ngf = self.ngf
        self.res1 = nn.ModuleList([_rb(ngf, ngf), _rb(ngf, ngf)])
        self.res2 = nn.ModuleList([_rb(ngf, 2 * ngf, "down"), _rb(2 * ngf, 2 * ngf)])
        self.res3 = nn.ModuleList([_rb(2 * ngf, 2 * ngf, "down"), _rb(2 * ngf, 2 * ngf)])
        self.res4 = nn.ModuleList([_rb(2 * ngf, 4 * ngf, "down", 2), _rb(4 * ngf, 4 * ngf, None, 2)])
        self.res5 = nn.ModuleList([_rb(4 * ngf, 4 * ngf, "down", 4), _rb(4 * ngf, 4 * ngf, None, 4)])
        self.refine1 = RefineBlock([4 * ngf], 4 * ngf, start=True)
        self.refine2 = RefineBlock([4 * ngf, 4 * ngf], 2 * ngf)
        self.refine3 = RefineBlock([2 * ngf, 2 * ngf], 2 * ngf)
        self.refine4 = RefineBlock([2 * ngf, 2 * ngf], ngf)
        self.refine5 = RefineBlock([ngf, ngf], ngf, end=True)

    def forward(self, x, y):
        h = self.begin_conv(self._preprocess(x))
        layer1 = self._cascade(self.res1, h)
        layer2 = self._cascade(self.res2, layer1)
        layer3 = self._cascade(self.res3, layer2)
        layer4 = self._cascade(self.res4, layer3)
        layer5 = self._cascade(self.res5, layer4)
        ref1 = self.refine1([layer5], layer5.shape[2:])
        ref2 = self.refine2([layer4, ref1], layer4.shape[2:])
        ref3 = self.refine3([layer3, ref2], layer3.shape[2:])
        ref4 = self.refine4([layer2, ref3], layer2.shape[2:])
        out = self.refine5([layer1, ref4], layer1.shape[2:])
        return self._head(out, y)


class NCSNv2Deepest(_NCSNv2Base):
    """Registration order res1, res2, res3, res31, res4, res5, refine1, refine2, refine3,
    refine31, refine4, refine5 (note refine31 after refine3 in the keys, but used before it)."""

    def __init__(self, config):
        super().__init__(config)
        ngf = self.ngf
        self.res1 = nn.ModuleList([_rb(ngf, ngf), _rb(ngf, ngf)])
        self.res2 = nn.ModuleList([_rb(ngf, 2 * ngf, "down"), _rb(2 * ngf, 2 * ngf)])
        self.res3 = nn.ModuleList([_rb(2 * ngf, 2 * ngf, "down"), _rb(2 * ngf, 2 * ngf)])
        self.res31 = nn.ModuleList([_rb(2 * ngf, 2 * ngf, "down"), _rb(2 * ngf, 2 * ngf)])
        self.res4 = nn.ModuleList([_rb(2 * ngf, 4 * ngf, "down", 2), _rb(4 * ngf, 4 * ngf, None, 2)])
        self.res5 = nn.ModuleList([_rb(4 * ngf, 4 * ngf, "down", 4), _rb(4 * ngf, 4 * ngf, None, 4)])
        self.refine1 = RefineBlock([4 * ngf], 4 * ngf, start=True)
        self.refine2 = RefineBlock([4 * ngf, 4 * ngf], 2 * ngf)
        self.refine3 = RefineBlock([2 * ngf, 2 * ngf], 2 * ngf)
        self.refine31 = RefineBlock([2 * ngf, 2 * ngf], 2 * ngf)
        self.refine4 = RefineBlock([2 * ngf, 2 * ngf], ngf)
        self.refine5 = RefineBlock([ngf, ngf], ngf, end=True)

    def forward(self, x, y):
        h = self.begin_conv(self._preprocess(x))
        layer1 = self._cascade(self.res1, h)
        layer2 = self._cascade(self.res2, layer1)
        layer3 = self._cascade(self.res3, layer2)
        layer31 = self._cascade(self.res31, layer3)
        layer4 = self._cascade(self.res4, layer31)
        layer5 = self._cascade(self.res5, layer4)
        ref1 = self.refine1([layer5], layer5.shape[2:])
        ref2 = self.refine2([layer4, ref1], layer4.shape[2:])
        ref31 = self.refine31([layer31, ref2], layer31.shape[2:])
        ref3 = self.refine3([layer3, ref31], layer3.shape[2:])
        ref4 = self.refine4([layer2, ref3], layer2.shape[2:])
        out = self.refine5([layer1, ref4], layer1.shape[2:])
        return self._head(out, y)


class Toy(nn.Module):
    """Engine extension: conditional MLP score network for 2-D data (model.arch: toy).
    x is N x 2 x 1 x 1 and used as is (no 2x - 1). Each hidden layer adds a per-level bias row:
        h1 = ELU(lin1(x) + embed1.weight[y]); h2 = ELU(lin2(h1) + embed2.weight[y]);
        s  = lin3(h2) / sigmas[y].
    Parameter order: lin1.weight, lin1.bias, embed1.weight, lin2.weight, lin2.bias,
    embed2.weight, lin3.weight, lin3.bias (the sigmas buffer leads the state dict)."""

    def __init__(self, config):
        super().__init__()
        # Engine defaults when the keys are absent: model.hidden 128, data.channels 2.
        H, L = getattr(config.model, "hidden", 128), config.model.num_classes
        C = getattr(config.data, "channels", 2)
        assert C == 2, "the toy network is for 2-D points (data.channels: 2)"
        self.register_buffer("sigmas", get_sigmas(config))
        self.lin1 = nn.Conv2d(C, H, 1)
        self.embed1 = nn.Embedding(L, H)
        self.lin2 = nn.Conv2d(H, H, 1)
        self.embed2 = nn.Embedding(L, H)
        self.lin3 = nn.Conv2d(H, C, 1)
        # Label-bias tables start like the layer's bias: U(-b, b), b = 1/sqrt(fan_in).
        with torch.no_grad():
            self.embed1.weight.uniform_(-1 / math.sqrt(C), 1 / math.sqrt(C))
            self.embed2.weight.uniform_(-1 / math.sqrt(H), 1 / math.sqrt(H))
        self.act = nn.ELU()

    def forward(self, x, y):
        h = self.act(self.lin1(x) + self.embed1(y)[:, :, None, None])
        h = self.act(self.lin2(h) + self.embed2(y)[:, :, None, None])
        out = self.lin3(h)
        return out / self.sigmas[y].view(x.shape[0], 1, 1, 1)


def get_model(config):
    arch = getattr(config.model, "arch", None) or infer_arch(config)
    cls = {"ncsn": CondRefineNetDilated, "ncsnv2": NCSNv2, "ncsnv2_deeper": NCSNv2Deeper,
           "ncsnv2_deepest": NCSNv2Deepest, "toy": Toy}[arch]
    return cls(config)


def model_sigmas(model, config):
    """The model's schedule: its buffer for v2/toy, computed from the config for v1."""
    return model.sigmas if hasattr(model, "sigmas") else get_sigmas(config)


# --------------------------------------------------------------------------------------------
# Engine initialisation (TEAM.md "Parameter initialisation convention")

def _engine_values(kind, shape, seed, t, bound=None):
    n = int(np.prod(shape))
    idx = np.arange(n, dtype=np.uint64)
    if kind == "uniform":
        u = ncsn_rng.uniform(seed, ncsn_rng.RNG_INIT, 0, t, idx)
        vals = (np.float32(2.0) * u - np.float32(1.0)) * np.float32(bound)  # all float32 ops
    elif kind == "normal1":
        z = ncsn_rng.normal(seed, ncsn_rng.RNG_INIT, 0, t, idx)
        vals = (1.0 + 0.02 * z.astype(np.float64)).astype(np.float32)
    elif kind == "zero":
        vals = np.zeros(n, dtype=np.float32)
    else:
        raise ValueError(kind)
    return vals.reshape(shape)


def _conv_bound(conv):
    fan_in = int(np.prod(conv.weight.shape[1:]))
    return np.float32(1.0 / math.sqrt(float(fan_in)))


def init_plan(model):
    """[(name, param, (rule, bound))] in named_parameters() order: the engine's rule per tensor."""
    special = {}  # id(param) -> rule, for parameters owned by an Embedding
    for module in model.modules():
        if isinstance(module, ConditionalInstanceNorm2dPlus):
            special[id(module.embed.weight)] = ("condin", None)
        if isinstance(module, Toy):  # label-bias tables start like the bias of their layer
            special[id(module.embed1.weight)] = ("uniform", _conv_bound(module.lin1))
            special[id(module.embed2.weight)] = ("uniform", _conv_bound(module.lin2))
    plan = []
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            name = (mname + "." if mname else "") + pname
            if id(p) in special:
                how = special[id(p)]
            elif isinstance(module, nn.Conv2d):
                how = ("uniform", _conv_bound(module))
            elif isinstance(module, InstanceNorm2dPlus):
                how = ("zero", None) if pname == "beta" else ("normal1", None)
            else:
                raise ValueError("no engine init rule for parameter %s" % name)
            plan.append((name, p, how))
    names = [n for n, _ in model.named_parameters()]
    assert names == [n for n, _, _ in plan], "init walk disagrees with named_parameters() order"
    return plan


@torch.no_grad()
def init_from_engine_rng(model, seed):
    """Sets every parameter as ncsn_model_init(m, seed) does: entry t of the table (t = index
    in named_parameters() order), element i row-major, draws (seed, INIT, 0, t, i)."""
    for t, (name, p, (kind, bound)) in enumerate(init_plan(model)):
        shape = tuple(p.shape)
        if kind == "condin":
            # [L, 3C]: columns < 2C (gamma, alpha) ~ N(1, .02) with i = r*3C + c; beta = 0.
            vals = _engine_values("normal1", shape, seed, t)
            vals[:, 2 * (shape[1] // 3):] = 0
        else:
            vals = _engine_values(kind, shape, seed, t, bound)
        p.copy_(torch.from_numpy(np.ascontiguousarray(vals)))
    return model


# --------------------------------------------------------------------------------------------
# Losses (spec 4)

def anneal_dsm(model, x, labels, z, sigmas, anneal_power=2.):
    """Annealed DSM (anneal_dsm_score_estimation) with given labels and standard normal z:
    mean_n 0.5 * sum((s(x + sigma z) - target)^2) * sigma^anneal_power, target = -sigma z / sigma^2."""
    used = sigmas[labels].view(x.shape[0], *([1] * len(x.shape[1:])))
    noise = z * used
    perturbed = x + noise
    target = -1 / (used ** 2) * noise
    scores = model(perturbed, labels)
    target = target.view(target.shape[0], -1)
    scores = scores.view(scores.shape[0], -1)
    loss = 0.5 * ((scores - target) ** 2).sum(dim=-1) * used.squeeze() ** anneal_power
    return loss.mean(dim=0)


def anneal_sliced_score_estimation_vr(model, x, labels, z, v, sigmas, n_particles=1):
    """Exact SSM (ncsn:losses/sliced_sm.py), with given z ([N, ...]) and projections v
    ([n_particles * N, ...], Gaussian). Hutchinson term by double backprop (create_graph),
    so the result is differentiable w.r.t. the parameters."""
    N = x.shape[0]
    used = sigmas[labels].view(N, *([1] * len(x.shape[1:])))
    perturbed = x + z * used
    dup = perturbed.unsqueeze(0).expand(n_particles, *perturbed.shape).contiguous().view(-1, *x.shape[1:])
    dup_labels = labels.unsqueeze(0).expand(n_particles, N).contiguous().view(-1)
    dup = dup.detach().requires_grad_(True)
    assert v.shape == dup.shape
    s = model(dup, dup_labels)
    sv = torch.sum(s * v)
    loss1 = torch.sum(s * s, dim=tuple(range(1, s.dim()))) / 2.
    grad = torch.autograd.grad(sv, dup, create_graph=True)[0]
    loss2 = torch.sum(v * grad, dim=tuple(range(1, s.dim())))
    loss1 = loss1.view(n_particles, -1).mean(dim=0)
    loss2 = loss2.view(n_particles, -1).mean(dim=0)
    loss = (loss1 + loss2) * (used.squeeze() ** 2)
    return loss.mean(dim=0)


# --------------------------------------------------------------------------------------------
# Self-test

OFFICIAL_COUNTS = [
    # (what, arch, channels, image_size, ngf, L, params)
    ("v1 MNIST", "ncsn", 1, 28, 64, 10, 7638657),
    ("v1 CIFAR-10", "ncsn", 3, 32, 128, 10, 30117635),
    ("NCSNv2 CIFAR-10", "ncsnv2", 3, 32, 128, 232, 29694083),
    ("NCSNv2Deeper", "ncsnv2_deeper", 3, 128, 128, 1086, 83445379),
    ("NCSNv2Deepest", "ncsnv2_deepest", 3, 256, 128, 2311, 94132611),
]

KEY_FILES = {"ncsn": "keys_v1_cifar10.txt", "ncsnv2": "keys_v2_cifar10.txt", "ncsnv2_deeper": "keys_v2deeper_128.txt"}


def small_config(arch, channels, image_size, ngf, L, sigma_begin=1., sigma_end=0.01, hidden=32):
    d = {"training": {"batch_size": 4}, "data": {"dataset": "CIFAR10", "image_size": image_size,
                                                 "channels": channels, "logit_transform": False,
                                                 "rescaled": False},
         "model": {"arch": arch, "ngf": ngf, "num_classes": L, "sigma_begin": sigma_begin,
                   "sigma_end": sigma_end, "hidden": hidden}}
    return dict2namespace(d)


def read_key_file(path):
    keys = []
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, shape = line.split(" ", 1)
            keys.append((name, [int(s) for s in shape.strip().strip("[]").split(",") if s.strip()]))
    return keys


def selftest():
    failures = 0

    def check(what, ok, detail=""):
        nonlocal failures
        print("%s %s %s" % ("ok  " if ok else "FAIL", what, detail))
        failures += 0 if ok else 1

    torch.manual_seed(0)
    spec_dir = os.environ.get("NCSN_SPEC_DIR", "/work/shared/spec")
    for what, arch, C, size, ngf, L, want in OFFICIAL_COUNTS:
        model = get_model(small_config(arch, C, size, ngf, L, 50., 0.01))
        n = sum(p.numel() for p in model.parameters())
        check("params %-16s" % what, n == want, "%d (official %d)" % (n, want))
        if arch in KEY_FILES and size != 28:
            path = os.path.join(spec_dir, KEY_FILES[arch])
            if not os.path.exists(path):
                check("keys %s" % arch, False, "%s missing" % path)
                continue
            want_keys = read_key_file(path)
            got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
            same = got == want_keys
            detail = "%d keys" % len(got)
            if not same:
                for i, (a, b) in enumerate(zip(got, want_keys)):
                    if a != b:
                        detail += "; first difference at %d: ours %s, file %s" % (i, a, b)
                        break
                else:
                    detail += "; lengths %d vs %d" % (len(got), len(want_keys))
            check("keys %-16s" % arch, same, detail + " (order, names, shapes vs %s)" % KEY_FILES[arch])
        del model

    # Deepest key order: refine31 registered after refine3, res31 between res3 and res4.
    m = get_model(small_config("ncsnv2_deepest", 3, 32, 4, 12, 50., 0.01))
    tops = []
    for k in m.state_dict().keys():
        top = k.split(".")[0]
        if top not in tops:
            tops.append(top)
    want_tops = ["sigmas", "begin_conv", "normalizer", "end_conv", "res1", "res2", "res3", "res31", "res4",
                 "res5", "refine1", "refine2", "refine3", "refine31", "refine4", "refine5"]
    check("deepest module order", tops == want_tops, str(tops))

    # Shapes through the networks at small widths (spec 2, 3: 28 -> 14, dilated blocks keep size).
    for arch, C, size in (("ncsn", 1, 28), ("ncsn", 3, 32), ("ncsnv2", 3, 32), ("ncsnv2", 1, 28),
                          ("ncsnv2_deeper", 1, 28), ("ncsnv2_deeper", 3, 64), ("ncsnv2_deepest", 3, 32)):
        cfg = small_config(arch, C, size, 4, 10, 50., 0.01)
        model = get_model(cfg)
        init_from_engine_rng(model, 7)
        x = torch.rand(2, C, size, size)
        y = torch.tensor([0, 9])
        out = model(x, y)
        check("forward %s %dx%dx%d" % (arch, C, size, size), out.shape == x.shape and torch.isfinite(out).all(),
              str(tuple(out.shape)))

    # The building blocks against spec 1.2 / 1.3 / 1.5 written out in float64 numpy.
    rng = np.random.default_rng(1)
    xn = rng.standard_normal((2, 5, 3, 4)) * 2 + rng.standard_normal((2, 5, 1, 1))
    al, ga, be = (rng.standard_normal((2, 5)) for _ in range(3))
    mc = xn.mean(axis=(2, 3))
    mhat = (mc - mc.mean(1, keepdims=True)) / np.sqrt(mc.var(1, ddof=1, keepdims=True) + 1e-5)
    inx = (xn - xn.mean(axis=(2, 3), keepdims=True)) / np.sqrt(xn.var(axis=(2, 3), keepdims=True) + 1e-5)
    want = ga[:, :, None, None] * (inx + al[:, :, None, None] * mhat[:, :, None, None]) + be[:, :, None, None]
    got = _instance_norm_plus(*(torch.from_numpy(a) for a in (xn, al, ga, be))).numpy()
    check("IN++ formula (unbiased channel var, biased spatial var, eps 1e-5)", np.allclose(got, want, atol=1e-12))
    cond = ConditionalInstanceNorm2dPlus(5, 4).double()
    with torch.no_grad():
        cond.embed.weight.copy_(torch.from_numpy(rng.standard_normal((4, 15))))
    yy = torch.tensor([3, 1])
    e = cond.embed.weight.detach().numpy()[[3, 1]]
    want = _instance_norm_plus(torch.from_numpy(xn), torch.from_numpy(e[:, 5:10]), torch.from_numpy(e[:, :5]),
                               torch.from_numpy(e[:, 10:]))
    check("CondIN++ row layout [gamma | alpha | beta]", torch.allclose(cond(torch.from_numpy(xn), yy), want))
    crp1 = CRPBlock(3, 2, num_classes=4)
    x1 = torch.rand(1, 3, 6, 6)
    check("v1 CRP pool: 5x5 average counting padding",
          torch.allclose(crp1.pool(x1)[0, :, 0, 0], x1[0, :, :3, :3].sum(dim=(1, 2)) / 25))
    crp2 = CRPBlock(3, 2)
    check("v2 CRP pool: 5x5 max", torch.allclose(crp2.pool(x1)[0, :, 0, 0], x1[0, :, :3, :3].amax(dim=(1, 2))))
    cmp_ = ConvMeanPool(3, 4, 3)
    check("ConvMeanPool = conv then 2x2 mean", torch.allclose(cmp_(x1), F.avg_pool2d(cmp_.conv(x1), 2), atol=1e-6))
    up = F.interpolate(torch.tensor([[[[0., 3.]]]]), size=(1, 4), mode="bilinear", align_corners=True)
    check("bilinear align_corners=True", torch.allclose(up, torch.tensor([[[[0., 1., 2., 3.]]]])))

    # Engine init: spot values against the RNG directly and the statistics of each rule.
    cfg = small_config("ncsn", 3, 32, 8, 10)
    model = init_from_engine_rng(get_model(cfg), 1234)
    sd = dict(model.named_parameters())
    w = sd["begin_conv.weight"].detach().numpy()
    u = ncsn_rng.uniform(1234, ncsn_rng.RNG_INIT, 0, 0, np.arange(w.size))
    b = np.float32(1 / math.sqrt(27))
    check("init begin_conv.weight", np.array_equal(w.ravel(), (2 * u - 1) * b), "t=0 uniform * 1/sqrt(27)")
    e = sd["normalizer.embed.weight"].detach().numpy()  # t = 2
    zz = ncsn_rng.normal(1234, ncsn_rng.RNG_INIT, 0, 2, np.arange(e.size)).reshape(e.shape)
    check("init CondIN++ gamma/alpha", np.array_equal(e[:, :16], (1 + 0.02 * zz[:, :16].astype(np.float64)).astype(np.float32)))
    check("init CondIN++ beta", np.all(e[:, 16:] == 0))
    check("init uniform bounds", all(float(p.abs().max()) <= float(h[1]) for _, p, h in init_plan(model) if h[0] == "uniform"))
    m2 = init_from_engine_rng(get_model(small_config("ncsnv2", 3, 32, 8, 12, 50.)), 5)
    gam = torch.cat([p.detach() for n, p in m2.named_parameters() if n.endswith(("gamma", "alpha"))])
    check("init IN++ gamma/alpha ~ N(1,.02)", abs(gam.mean().item() - 1) < 0.005 and abs(gam.std().item() - 0.02) < 0.003,
          "mean %.4f std %.4f over %d" % (gam.mean(), gam.std(), gam.numel()))
    check("init IN++ beta = 0", all((p == 0).all() for n, p in m2.named_parameters() if n.endswith("beta")))
    m3 = init_from_engine_rng(get_model(small_config("ncsnv2", 3, 32, 8, 12, 50.)), 5)
    check("init deterministic", all(torch.equal(a, b) for a, b in zip(m2.parameters(), m3.parameters())))

    # Toy: parameter order and forward definition.
    tcfg = small_config("toy", 2, 1, 0, 10, 5., 0.1, hidden=32)
    toy = init_from_engine_rng(Toy(tcfg), 3)
    names = [n for n, _ in toy.named_parameters()]
    want = ["lin1.weight", "lin1.bias", "embed1.weight", "lin2.weight", "lin2.bias", "embed2.weight",
            "lin3.weight", "lin3.bias"]
    check("toy parameter order", names == want, str(names))
    e1 = toy.embed1.weight.detach().numpy()
    check("toy embed1 bound", np.abs(e1).max() <= 1 / math.sqrt(2) and np.abs(e1).max() > 0.5)
    xt = torch.randn(5, 2, 1, 1)
    yt = torch.tensor([0, 1, 5, 9, 3])
    h1 = F.elu(xt[:, :, 0, 0] @ toy.lin1.weight[:, :, 0, 0].T + toy.lin1.bias + toy.embed1.weight[yt])
    h2 = F.elu(h1 @ toy.lin2.weight[:, :, 0, 0].T + toy.lin2.bias + toy.embed2.weight[yt])
    ref = (h2 @ toy.lin3.weight[:, :, 0, 0].T + toy.lin3.bias) / toy.sigmas[yt][:, None]
    check("toy forward", torch.allclose(toy(xt, yt)[:, :, 0, 0], ref, atol=1e-6))

    # DSM loss: v2's s = f/sigma makes loss = 0.5*||f(x~) + z||^2 (spec 4.1).
    cfg = small_config("ncsnv2", 1, 28, 4, 12, 50.)
    model = init_from_engine_rng(get_model(cfg), 11)
    x = torch.rand(3, 1, 28, 28)
    z = torch.randn_like(x)
    y = torch.tensor([0, 5, 11])
    loss = anneal_dsm(model, x, y, z, model.sigmas)
    f = model(x + model.sigmas[y].view(3, 1, 1, 1) * z, y) * model.sigmas[y].view(3, 1, 1, 1)
    alt = (0.5 * ((f + z) ** 2).sum(dim=(1, 2, 3))).mean()
    check("dsm v2 identity", abs(loss.item() - alt.item()) <= 1e-5 * abs(alt.item()), "%.6f vs %.6f" % (loss, alt))

    # SSM: exact loss vs a float64 finite-difference Hutchinson term on a toy model.
    toy64 = init_from_engine_rng(Toy(tcfg), 3).double()
    x = torch.randn(4, 2, 1, 1, dtype=torch.float64)
    z = torch.randn_like(x)
    v = torch.randn_like(x)
    y = torch.tensor([0, 3, 6, 9])
    sig = toy64.sigmas
    exact = anneal_sliced_score_estimation_vr(toy64, x, y, z, v, sig)
    xt = x + z * sig[y].view(4, 1, 1, 1)
    hstep = 1e-5
    with torch.no_grad():
        s = toy64(xt, y)
        fd = ((toy64(xt + hstep * v, y) - toy64(xt - hstep * v, y)) / (2 * hstep) * v).sum(dim=(1, 2, 3))
        fd_loss = ((0.5 * (s * s).sum(dim=(1, 2, 3)) + fd) * sig[y] ** 2).mean()
    check("ssm vs finite differences", abs(exact.item() - fd_loss.item()) < 1e-6 * max(1, abs(fd_loss.item())),
          "%.9g vs %.9g" % (exact, fd_loss))
    exact.backward()
    check("ssm differentiable", all(p.grad is not None and torch.isfinite(p.grad).all() for p in toy64.parameters()))

    print("ncsn_torch selftest: %d failures" % failures)
    return 1 if failures else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--selftest", action="store_true")
    ap.add_argument("--config", help="print the parameter table of the model of this config")
    args = ap.parse_args()
    if args.selftest:
        sys.exit(selftest())
    if args.config:
        cfg = load_config(args.config)
        model = get_model(cfg)
        for k, v in model.state_dict().items():
            print(k, list(v.shape))
        print("parameters:", sum(p.numel() for p in model.parameters()))
        sys.exit(0)
    ap.print_help()
