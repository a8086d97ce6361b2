#!/usr/bin/python3
"""check_ssm.py OUTDIR: fixtures for the engine's finite-difference sliced score matching
(host/ssm.c, tests/test_ssm.c), from the PyTorch reference (tools/ncsn_torch.py).

The engine cannot double-backprop, so `training.algo: ssm` uses the central difference
    v^T (ds/dx) v  ~=  v . (s(x + h v) - s(x - h v)) / (2h),   h = REL * sigma / sqrt(D)
inside the official loss anneal_sliced_score_estimation_vr (n_particles 1). Each fixture
holds, for one small network and fixed draws:

  metadata  config (YAML), seed (engine init seed), batch (N), fd_rel (REL)
  input.x, input.labels, input.z, input.v      data, levels, DSM noise, projections
  exact.loss [1], exact.loss_per_example [N], exact.grad.<key>
        the official SSM loss (double backprop, float64) and its parameter gradients
  fd.loss [1], fd.loss_per_example [N], fd.grad.<key>
        the finite-difference loss evaluated in float64 with the engine's h, and its
        gradients: what the engine computes, up to float32 rounding

so the test separates the two errors: engine vs fd.* is float32 arithmetic only (tight);
fd.* vs exact.* is the O(h^2) truncation of the method (printed here for several REL).
Weights come from the engine's init RNG (ncsn_torch.init_from_engine_rng), as for the model
fixtures, so they are not stored.

Usage: /usr/bin/python3 tools/check_ssm.py tests/fixtures
"""
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures  # noqa: E402
import ncsn_torch  # noqa: E402
import safetensors_io  # noqa: E402

FD_REL = 0.01  # must equal NCSN_SSM_FD_REL in include/ncsn/train.h

# name: (template, arch, dataset, C, size, ngf, L, sigma_begin, sigma_end, labels, seed)
FIXTURES = [
    ("ssm_toy", "v2", "toy", "TOY", 2, 1, 0, 10, 5, 0.1, [0, 3, 6, 9], 2001),
    ("ssm_v1_28", "v1", "ncsn", "MNIST", 1, 28, 3, 10, 1, 0.01, [0, 5, 9], 2002),
]


def fd_steps(sigmas, labels, D, rel):
    """h per example as the engine computes it: float32(rel * sigma / sqrt(D))."""
    return np.array([np.float32(rel * float(sigmas[l]) / math.sqrt(D)) for l in labels], dtype=np.float64)


def ssm_fd(model, x, labels, z, v, sigmas, h):
    """The finite-difference SSM loss (float64 when the model and inputs are), differentiable
    w.r.t. the parameters: mean_n sigma^2 (0.5 |s0|^2 + v.(s+ - s-)/(2h))."""
    N = x.shape[0]
    shape = (N,) + (1,) * (x.dim() - 1)
    used = sigmas[labels].view(shape)
    perturbed = x + z * used
    hh = torch.from_numpy(h).to(x.dtype).view(shape)
    s0 = model(perturbed, labels)
    sp = model(perturbed + hh * v, labels)
    sm = model(perturbed - hh * v, labels)
    dims = tuple(range(1, x.dim()))
    first = 0.5 * (s0 * s0).sum(dim=dims)
    second = (v * (sp - sm)).sum(dim=dims) / (2.0 * hh.view(N))
    per = (first + second) * used.view(N) ** 2
    return per.mean(), per


def ssm_exact(model, x, labels, z, v, sigmas):
    N = x.shape[0]
    loss = ncsn_torch.anneal_sliced_score_estimation_vr(model, x, labels, z, v, sigmas, n_particles=1)
    # Per-example values, recomputed the same way (the reference returns the mean only).
    used = sigmas[labels].view(N, *([1] * (x.dim() - 1)))
    dup = (x + z * used).detach().requires_grad_(True)
    s = model(dup, labels)
    g = torch.autograd.grad((s * v).sum(), dup, create_graph=False)[0]
    dims = tuple(range(1, x.dim()))
    per = (0.5 * (s * s).sum(dim=dims) + (v * g).sum(dim=dims)) * used.view(N) ** 2
    return loss, per.detach()


def grads_of(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def rel_err(a, b):
    scale = max(float(b.abs().max()), 1e-30)
    return float((a - b).abs().max()) / scale


def build(name, template, arch, dataset, C, size, ngf, L, s_begin, s_end, labels, seed):
    labels = np.array(labels, dtype=np.int32)
    N = len(labels)
    text = make_fixtures.config_text(template, arch, dataset, C, size, ngf, L, s_begin, s_end, N)
    text = text.replace("  anneal_power:", "  algo: 'ssm'\n  n_particles: 1\n  anneal_power:", 1) \
        if "algo:" not in text else text.replace("algo: 'dsm'", "algo: 'ssm'\n  n_particles: 1")
    cfg = ncsn_torch.load_config(text)
    model = ncsn_torch.init_from_engine_rng(ncsn_torch.get_model(cfg), seed).double()
    x32, z32 = make_fixtures.make_inputs(arch, C, size, size, labels, seed)
    rng = np.random.default_rng(seed + 1)
    v32 = rng.standard_normal(x32.shape).astype(np.float32)
    D = int(np.prod(x32.shape[1:]))
    x, z, v = (torch.from_numpy(a).double() for a in (x32, z32, v32))
    y = torch.from_numpy(labels.astype(np.int64))
    sigmas = ncsn_torch.model_sigmas(model, cfg).double()
    # The engine perturbs in float32: x~ = fl32(x + sigma z). Use that x~ for all three
    # references so they differ from the engine by the engine's arithmetic only.
    sig32 = sigmas.float()[y].view(N, *([1] * (x.dim() - 1)))
    xt = (torch.from_numpy(x32) + torch.from_numpy(z32) * sig32).double()
    zero = torch.zeros_like(z)

    exact, exact_per = ssm_exact(model, xt, y, zero, v, sigmas)
    exact_grads = grads_of(model, ncsn_torch.anneal_sliced_score_estimation_vr(model, xt, y, zero, v, sigmas))
    h = fd_steps(sigmas.float().numpy(), labels, D, FD_REL)
    fd, fd_per = ssm_fd(model, xt, y, zero, v, sigmas, h)
    fd_grads = grads_of(model, fd)

    print("%s (%s, N=%d, D=%d, params %d): exact loss %.9g" % (
        name, arch, N, D, sum(p.numel() for p in model.parameters()), exact.item()))
    # How much float32 alone moves these numbers: the exact loss and the engine's FD loss in
    # float32 against float64 (the SSM loss is a difference of two large terms at small
    # sigma, and the FD gradient a difference of two large backward passes).
    model.float()
    x32t, v32t, zero32, sig32v = xt.float(), v.float(), zero.float(), sigmas.float()
    e32 = ncsn_torch.anneal_sliced_score_estimation_vr(model, x32t, y, zero32, v32t, sig32v)
    e32_grads = grads_of(model, e32)
    f32, _ = ssm_fd(model, x32t, y, zero32, v32t, sig32v, h)
    f32_grads = grads_of(model, f32)
    model.double()

    def whole(ga, gb):
        a = torch.cat([ga[k].double().flatten() for k in gb])
        b = torch.cat([gb[k].double().flatten() for k in gb])
        return float((a - b).norm() / b.norm())

    for what, loss32, g32, loss64, g64 in (("exact", e32, e32_grads, exact, exact_grads),
                                           ("fd", f32, f32_grads, fd, fd_grads)):
        worst = max((rel_err(g32[k].double(), g64[k]), k) for k in g64)
        print("  float32 vs float64, %-5s: loss rel err %.2e, grad |g32 - g64|/|g64| %.2e, worst tensor %.2e (%s)" % (
            what, abs(loss32.item() - loss64.item()) / abs(loss64.item()), whole(g32, g64), worst[0], worst[1]))
    for rel in (0.1, 0.03, 0.01, 0.003, 0.001):
        f64, _ = ssm_fd(model, xt, y, zero, v, sigmas, fd_steps(sigmas.float().numpy(), labels, D, rel))
        g64 = grads_of(model, f64)
        m32 = model.float()
        f32, _ = ssm_fd(m32, xt.float(), y, zero.float(), v.float(), sigmas.float(),
                        fd_steps(sigmas.float().numpy(), labels, D, rel))
        model.double()
        worst = max((rel_err(g64[k], exact_grads[k]), k) for k in g64)
        flat64 = torch.cat([g64[k].flatten() for k in g64])
        flat_exact = torch.cat([exact_grads[k].flatten() for k in g64])
        overall = float((flat64 - flat_exact).norm() / flat_exact.norm())
        print("  REL %-6g fd64: loss rel err %.2e, grad |fd - exact|/|exact| %.2e, worst tensor %.2e (%s)"
              " | fd32 loss rel err %.2e%s" % (
            rel, abs(f64.item() - exact.item()) / abs(exact.item()), overall, worst[0], worst[1],
            abs(f32.item() - exact.item()) / abs(exact.item()), "   <- engine" if rel == FD_REL else ""))

    tensors = {"input.x": x32, "input.labels": labels, "input.z": z32, "input.v": v32,
               "exact.loss": np.array([exact.item()], dtype=np.float32),
               "exact.loss_per_example": exact_per.numpy().astype(np.float32),
               "fd.loss": np.array([fd.item()], dtype=np.float32),
               "fd.loss_per_example": fd_per.detach().numpy().astype(np.float32)}
    for key, g in exact_grads.items():
        tensors["exact.grad." + key] = g.numpy().astype(np.float32)
    for key, g in fd_grads.items():
        tensors["fd.grad." + key] = g.numpy().astype(np.float32)
    meta = {"config": text, "seed": str(seed), "batch": str(N), "fd_rel": repr(FD_REL)}
    return tensors, meta


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    torch.set_num_threads(1)
    total = 0
    for spec in FIXTURES:
        tensors, meta = build(*spec)
        path = os.path.join(outdir, spec[0] + ".safetensors")
        safetensors_io.write(path, tensors, meta)
        total += os.path.getsize(path)
        print("  wrote %s (%.1f KiB)" % (path, os.path.getsize(path) / 1024))
    print("total %.1f KiB" % (total / 1024))
    return 0


if __name__ == "__main__":
    sys.exit(main())
