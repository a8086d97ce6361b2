#!/usr/bin/python3
"""make_fixtures.py OUTDIR: writes the model-parity fixtures the engine's tests read
(.plan/TEAM.md "Fixture format"), one safetensors file per network:

  metadata  config (YAML text of a small official-format config, with model.arch),
            seed (engine init seed), batch (N)
  input.x        [N,C,H,W] F32   images in [0,1] (toy: 2-D points, used as is)
  input.labels   [N]       I32   level indices, several levels per fixture
  input.z        [N,C,H,W] F32   standard normal noise for the loss
  output.score   [N,C,H,W] F32   s(x, labels) at the clean x
  output.loss    [1]       F32   mean_n 0.5*sum((sigma_n s(x + sigma_n z, labels) + z)^2)
                                 (anneal_dsm_score_estimation, anneal_power 2, these labels/z)
  grad.<key>               F32   d loss / d parameter, every parameter, official key names
  buffer.sigmas  [L]       F32   the schedule

Weights are not stored: the engine re-creates them with ncsn_model_init(seed), and so does
tools/ncsn_torch.init_from_engine_rng. Everything is computed in float32 like the official
code, single-threaded with deterministic algorithms, so a rerun writes identical files. The
float32 reference itself is compared with a float64 evaluation and the worst relative
difference is printed: the engine's tolerance must be well above that.

Usage: /usr/bin/python3 tools/make_fixtures.py tests/fixtures
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ncsn_torch  # noqa: E402
import safetensors_io  # noqa: E402

SIZE_LIMIT = 2000000  # bytes, all fixtures together (issue 3: < 2 MB)
# The engine test allows 1e-4 * max|reference| per tensor; the float32 reference must itself be
# well inside that (checked against float64), or the fixture would test rounding noise.
REFERENCE_REL_LIMIT = 2e-5

V1_TEMPLATE = """\
training:
  batch_size: {batch}
  n_epochs: 500000
  n_iters: 200001
  ngpu: 1
  snapshot_freq: 5000
  algo: 'dsm'
  anneal_power: 2.0

data:
  dataset: "{dataset}"
  image_size: {image_size}
  channels: {channels}
  logit_transform: false
  random_flip: false

model:
  arch: ncsn
  sigma_begin: {sigma_begin}
  sigma_end: {sigma_end}
  num_classes: {num_classes}
  batch_norm: false
  ngf: {ngf}

optim:
  weight_decay: 0.000
  optimizer: "Adam"
  lr: 0.001
  beta1: 0.9
  amsgrad: false
"""

V2_TEMPLATE = """\
training:
  batch_size: {batch}
  n_epochs: 500000
  n_iters: 300001
  snapshot_freq: 5000
  snapshot_sampling: false
  anneal_power: 2
  log_all_sigmas: false

sampling:
  batch_size: 4
  data_init: false
  step_lr: 0.0000062
  n_steps_each: 5
  ckpt_id: 0
  final_only: true
  fid: false
  denoise: true
  num_samples4fid: 16
  inpainting: false
  interpolation: false
  n_interpolations: 15

data:
  dataset: "{dataset}"
  image_size: {image_size}
  channels: {channels}
  logit_transform: false
  uniform_dequantization: false
  gaussian_dequantization: false
  random_flip: {random_flip}
  rescaled: false
  num_workers: 0
{toy_data}
model:
  arch: {arch}
  sigma_begin: {sigma_begin}
  num_classes: {num_classes}
  ema: true
  ema_rate: 0.999
  spec_norm: false
  sigma_dist: geometric
  sigma_end: {sigma_end}
  normalization: InstanceNorm++
  nonlinearity: elu
  ngf: {ngf}
{toy_model}
optim:
  weight_decay: 0.000
  optimizer: "Adam"
  lr: 0.0001
  beta1: 0.9
  amsgrad: false
  eps: 0.00000001
"""

# name: (template, arch, dataset, channels, image_size, ngf, L, sigma_begin, sigma_end, labels, seed)
# Widths: every fixture stores one float32 gradient per parameter and parameters grow as ngf^2,
# so the 2 MB budget (2,000,000 bytes) allows ngf 8 only for v1_32 (0.6 MB; v1 is the network
# with a norm before every convolution, best tested at the larger width); v2_32 uses ngf 6, the
# 28x28 ones ngf 4, Deeper and Deepest ngf 3 (channel counts 3/6/12 also exercise the
# non-multiple-of-8 paths of the convolution backends). v1 uses L = 6: its CondIN++ tables cost
# 3*L floats per normalised channel. Narrower is worse conditioned: IN++ standardises the C
# channel means by their spread, and with C = 2 or 3 that spread can be tiny, so float32 rounding
# is amplified (v1_28 at ngf 3: 1.5e-4 relative between float32 and float64; at ngf 2 some
# bias gradients are pure rounding noise). REFERENCE_REL_LIMIT below catches such a choice.
FIXTURES = [
    ("v1_28", "v1", "ncsn", "MNIST", 1, 28, 4, 6, 1, 0.01, [0, 3, 5], 1001),
    ("v1_32", "v1", "ncsn", "CIFAR10", 3, 32, 8, 6, 1, 0.01, [5, 2], 1002),
    ("v2_32", "v2", "ncsnv2", "CIFAR10", 3, 32, 6, 12, 50, 0.01, [0, 11], 1003),
    ("v2_28", "v2", "ncsnv2", "FashionMNIST", 1, 28, 4, 12, 10, 0.01, [11, 5, 0], 1004),
    ("deeper_28", "v2", "ncsnv2_deeper", "FashionMNIST", 1, 28, 3, 12, 5, 0.01, [3, 10], 1005),
    ("deepest_32", "v2", "ncsnv2_deepest", "CIFAR10", 3, 32, 3, 12, 20, 0.01, [7, 1], 1006),
    ("toy", "v2", "toy", "TOY", 2, 1, 0, 10, 5, 0.1, [0, 3, 6, 9], 1007),
]

TOY_HIDDEN = 32
TOY_DATA = "  toy_weight: 0.2\n  toy_mean1: -5.0\n  toy_mean2: 5.0\n  toy_size: 10000\n"


def config_text(template, arch, dataset, channels, image_size, ngf, L, sigma_begin, sigma_end, batch):
    fields = dict(arch=arch, dataset=dataset, channels=channels, image_size=image_size, ngf=ngf,
                  num_classes=L, sigma_begin=sigma_begin, sigma_end=sigma_end, batch=batch,
                  random_flip="false" if arch == "toy" or channels == 1 else "true",
                  toy_data=TOY_DATA if arch == "toy" else "",
                  toy_model="  hidden: %d\n" % TOY_HIDDEN if arch == "toy" else "")
    text = (V1_TEMPLATE if template == "v1" else V2_TEMPLATE).format(**fields)
    if arch == "toy":  # an MLP has no ngf; leave the key to its default
        text = text.replace("  ngf: %d\n" % ngf, "")
    return text


def make_inputs(arch, C, H, W, labels, seed):
    """x, z from numpy's PCG64 (stable across numpy versions); x in [0,1) for images, toy points
    from the 0.2/0.8 mixture at (-5,-5)/(5,5) with unit variance."""
    rng = np.random.default_rng(seed)
    N = len(labels)
    if arch == "toy":
        centre = np.where(rng.random(N) < 0.2, -5.0, 5.0)[:, None]
        x = (centre + rng.standard_normal((N, 2))).reshape(N, 2, 1, 1)
    else:
        x = rng.random((N, C, H, W))
    z = rng.standard_normal((N, C, H, W))
    return x.astype(np.float32), z.astype(np.float32)


def evaluate(model, cfg, x, labels, z, dtype):
    model = model.to(dtype)
    model.zero_grad(set_to_none=True)
    xt, zt = torch.from_numpy(x).to(dtype), torch.from_numpy(z).to(dtype)
    y = torch.from_numpy(labels.astype(np.int64))
    sigmas = ncsn_torch.model_sigmas(model, cfg).to(dtype)
    with torch.no_grad():
        score = model(xt, y)
    loss = ncsn_torch.anneal_dsm(model, xt, y, zt, sigmas)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return score, loss.detach(), grads, sigmas


def max_rel(a, b):
    a, b = a.double(), b.double()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale > 0 else (a - b).abs().max().item()


def build(name, template, arch, dataset, C, size, ngf, L, s_begin, s_end, labels, seed):
    labels = np.array(labels, dtype=np.int32)
    N = len(labels)
    text = config_text(template, arch, dataset, C, size, ngf, L, s_begin, s_end, N)
    cfg = ncsn_torch.load_config(text)
    assert cfg.model.arch == arch
    if arch == "toy":
        assert cfg.model.hidden == TOY_HIDDEN
    model = ncsn_torch.init_from_engine_rng(ncsn_torch.get_model(cfg), seed)
    x, z = make_inputs(arch, C, size, size, labels, seed)
    score, loss, grads, sigmas = evaluate(model, cfg, x, labels, z, torch.float32)
    # Precision of the float32 reference: the same weights and inputs in float64.
    score64, loss64, grads64, _ = evaluate(model, cfg, x, labels, z, torch.float64)
    worst_grad = max((max_rel(grads[k], grads64[k]), k) for k in grads)
    tensors = {"input.x": x, "input.labels": labels, "input.z": z,
               "output.score": score.numpy().astype(np.float32),
               "output.loss": np.array([loss.item()], dtype=np.float32)}
    for key, g in grads.items():
        tensors["grad." + key] = g.numpy().astype(np.float32)
    tensors["buffer.sigmas"] = sigmas.numpy().astype(np.float32)
    meta = {"config": text, "seed": str(seed), "batch": str(N)}
    nparams = sum(p.numel() for p in model.parameters())
    info = ("%-11s %-15s N=%d L=%-2d params %7d loss %-12.6g f32-vs-f64: score %.1e loss %.1e grad %.1e (%s)"
            % (name, arch, N, L, nparams, loss.item(), max_rel(score, score64),
               abs(loss.item() - loss64.item()) / abs(loss64.item()), worst_grad[0], worst_grad[1]))
    worst = max(max_rel(score, score64), worst_grad[0])
    if worst > REFERENCE_REL_LIMIT:
        raise SystemExit("make_fixtures: %s: float32 reference differs from float64 by %.1e (> %.0e)"
                         % (name, worst, REFERENCE_REL_LIMIT))
    return tensors, meta, info


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    total = 0
    for spec in FIXTURES:
        tensors, meta, info = build(*spec)
        path = os.path.join(outdir, spec[0] + ".safetensors")
        safetensors_io.write(path, tensors, meta)
        # Read back: what the engine will see.
        back, back_meta = safetensors_io.read(path)
        assert back_meta == meta and all(np.array_equal(back[k], tensors[k]) for k in tensors)
        size = os.path.getsize(path)
        total += size
        print("%s  %7.1f KiB" % (info, size / 1024))
    print("total %d bytes (limit %d)" % (total, SIZE_LIMIT))
    if total > SIZE_LIMIT:
        print("make_fixtures: fixtures exceed the size limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
