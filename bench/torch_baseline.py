#!/usr/bin/python3
"""torch_baseline.py: the PyTorch speed peer of `ncsn bench` on the CPU.

Same architecture (tools/ncsn_torch.py, built from the same official YAML config), float32,
PyTorch's own CPU kernels (oneDNN convolutions) with --threads threads (default: all cores).

  --mode model    forward (no_grad) and forward+backward images/s at --batch
  --mode train    the official runner's step: per-example labels, noise, DSM loss, zero_grad,
                  backward, Adam (config lr/beta1/eps/amsgrad/wd), EMA update when model.ema
                  (ncsnv2 EMAHelper: per-parameter shadow = (1-mu) theta + mu shadow)
  --mode sampler  annealed Langevin steps as the official loops (score, noise, update), timed at
                  one level; images/s for the whole chain = batch / (time per step * NFE),
                  NFE = L*T (+1 for the final denoising step when sampling.denoise)

Each mode warms up (--warmup iterations), then times --iters iterations. --json prints one JSON
line (what the engine's bench reads); otherwise a readable summary.

  /usr/bin/python3 bench/torch_baseline.py --config models/configs/cifar10_v2.yml --batch 32 --mode model
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import ncsn_torch  # noqa: E402


def conv_macs_per_image(model, x, y):
    """Multiply-accumulates of all convolutions in one forward, per example (forward hooks)."""
    total = [0]

    def hook(mod, inp, out):
        k = mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]
        total[0] += out.numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(x[:1], y[:1])
    for h in handles:
        h.remove()
    return total[0]


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def inputs(cfg, batch, gen):
    C, S = cfg.data.channels, cfg.data.image_size
    x = torch.rand(batch, C, S, S, generator=gen)
    y = torch.randint(0, cfg.model.num_classes, (batch,), generator=gen)
    return x, y


def bench_model(cfg, model, args, gen):
    x, y = inputs(cfg, args.batch, gen)
    dout = torch.randn(x.shape, generator=gen)
    model.train()

    def fwd():
        with torch.no_grad():
            model(x, y)

    def fwd_bwd():
        model.zero_grad(set_to_none=False)
        out = model(x, y)
        out.backward(dout)

    t_f = timed(fwd, args.warmup, args.iters)
    t_fb = timed(fwd_bwd, args.warmup, args.iters)
    macs = conv_macs_per_image(model, x, y)
    return {"fwd_s": t_f, "fwd_images_per_s": args.batch / t_f,
            "fwdbwd_s": t_fb, "fwdbwd_images_per_s": args.batch / t_fb,
            "conv_gmacs_per_image": macs / 1e9,
            "fwd_gflops": 2 * macs * args.batch / t_f / 1e9,
            "fwdbwd_gflops": 3 * 2 * macs * args.batch / t_fb / 1e9}


def bench_train(cfg, model, args, gen):
    o = cfg.optim
    opt = torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=getattr(o, "weight_decay", 0.),
                           betas=(getattr(o, "beta1", 0.9), 0.999), amsgrad=getattr(o, "amsgrad", False),
                           eps=getattr(o, "eps", 1e-8))
    use_ema = bool(getattr(cfg.model, "ema", False))
    mu = float(getattr(cfg.model, "ema_rate", 0.999))
    shadow = {n: p.detach().clone() for n, p in model.named_parameters()} if use_ema else None
    sigmas = ncsn_torch.model_sigmas(model, cfg)
    x, _ = inputs(cfg, args.batch, gen)
    L = cfg.model.num_classes

    def step():
        labels = torch.randint(0, L, (x.shape[0],), generator=gen)
        z = torch.randn(x.shape, generator=gen)
        loss = ncsn_torch.anneal_dsm(model, x, labels, z, sigmas)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if shadow is not None:
            for n, p in model.named_parameters():
                shadow[n].data = (1. - mu) * p.data + mu * shadow[n].data

    t = timed(step, args.warmup, args.iters)
    return {"step_s": t, "steps_per_s": 1 / t, "images_per_s": args.batch / t, "ema": use_ema}


def bench_sampler(cfg, model, args, gen):
    sampling = getattr(cfg, "sampling", None)
    # v1 configs have no sampling section: AnnealRunner.test uses T = 100, step_lr 2e-5, no denoise.
    T = int(getattr(sampling, "n_steps_each", 100)) if sampling else 100
    step_lr = float(getattr(sampling, "step_lr", 2e-5)) if sampling else 2e-5
    denoise = bool(getattr(sampling, "denoise", False)) if sampling else False
    sigmas = ncsn_torch.model_sigmas(model, cfg)
    L = len(sigmas)
    level = L // 2
    a = step_lr * (sigmas[level] / sigmas[-1]).item() ** 2
    C, S = cfg.data.channels, cfg.data.image_size
    state = {"x": torch.rand(args.batch, C, S, S, generator=gen)}
    labels = torch.full((args.batch,), level, dtype=torch.long)
    model.eval()

    def step():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            grad = model(state["x"], labels).float()
        with torch.no_grad():
            noise = torch.randn(state["x"].shape, generator=gen)
            state["x"] = state["x"] + a * grad + noise * (2 * a) ** 0.5

    t = timed(step, args.warmup, args.iters)
    nfe = L * T + (1 if denoise else 0)
    return {"step_s": t, "evaluations_per_s": args.batch / t, "nfe": nfe,
            "chain_images_per_s": args.batch / (t * nfe), "chain_s_per_batch": t * nfe}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--mode", choices=("model", "train", "sampler"), default="model")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="sampler mode: bf16 runs the network under torch.autocast('cpu', bfloat16)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    cfg = ncsn_torch.load_config(args.config)
    model = ncsn_torch.get_model(cfg)
    result = {"peer": "pytorch", "torch": torch.__version__, "mode": args.mode, "config": args.config,
              "precision": args.precision,
              "arch": cfg.model.arch, "batch": args.batch, "threads": args.threads, "iters": args.iters,
              "params": sum(p.numel() for p in model.parameters())}
    result.update({"model": bench_model, "train": bench_train, "sampler": bench_sampler}[args.mode](cfg, model, args, gen))
    if args.json:
        print(json.dumps(result))
        return 0
    print("pytorch %s, %s (%s, %d params), batch %d, %d threads, %d timed iterations"
          % (torch.__version__, args.config, cfg.model.arch, result["params"], args.batch, args.threads, args.iters))
    if args.mode == "model":
        print("  forward          %8.2f images/s  %6.1f GFLOP/s (conv %.3f GMAC/image)"
              % (result["fwd_images_per_s"], result["fwd_gflops"], result["conv_gmacs_per_image"]))
        print("  forward+backward %8.2f images/s  %6.1f GFLOP/s" % (result["fwdbwd_images_per_s"], result["fwdbwd_gflops"]))
    elif args.mode == "train":
        print("  train step       %8.3f steps/s  %8.2f images/s  (EMA %s)"
              % (result["steps_per_s"], result["images_per_s"], "on" if result["ema"] else "off"))
    else:
        print("  Langevin step    %8.2f evaluations/s; chain of %d NFE: %.4f images/s (%.0f s per batch)"
              % (result["evaluations_per_s"], result["nfe"], result["chain_images_per_s"], result["chain_s_per_batch"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
