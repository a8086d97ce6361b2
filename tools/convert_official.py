#!/usr/bin/python3
"""convert_official.py: official NCSN / NCSNv2 PyTorch checkpoints <-> ncsn engine safetensors.

Official layouts (spec 8):
  v1 (ermongroup/ncsn AnnealRunner):    torch.save([model_state, optim_state])
  v2 (ermongroup/ncsnv2 NCSNRunner):    torch.save([model_state, optim_state, epoch, step, ema_shadow])
                                        (ema_shadow only when model.ema)
Model keys carry DataParallel's `module.` prefix; v2 includes the `sigmas` buffer. The EMA
shadow has no `module.` prefix and no `sigmas`.

Engine layout: tensor names = official keys without `module.` (v2 keeps `sigmas`), float32;
optional `adam.m.<key>` / `adam.v.<key>` (Adam exp_avg / exp_avg_sq) and `ema.<key>` (EMA
shadow); metadata `config` (the YAML text) and `step`.

  to-engine   IN.pth OUT.safetensors --config CONFIG.yml [--ema] [--with-adam] [--with-ema] [--step N]
      --ema        model tensors from the EMA shadow (what the official sampler uses)
      --with-adam  also store the Adam moments; --with-ema also store the shadow as ema.*
      CONFIG may be a plain official YAML file or the `config.yml` the official runners dump
      (a YAML-serialised argparse.Namespace; read without executing anything).
  to-official IN.safetensors OUT.pth
      writes the list the official runner of the config's architecture saves (v1: 2 entries,
      v2: 4 or 5); Adam state from adam.* when present (else a fresh optimizer state), EMA
      shadow from ema.* when present (else a copy of the weights).
  --selftest  round trip on synthetic DataParallel-style checkpoints built with ncsn_torch.

Names and shapes are checked against the network the config describes (tools/ncsn_torch.py),
so a checkpoint converted with the wrong config is refused with the first mismatch named.
"""
import argparse
import collections
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ncsn_torch  # noqa: E402
import safetensors_io  # noqa: E402

SECTIONS = ("training", "sampling", "fast_fid", "test", "data", "model", "optim")
ADAM_M, ADAM_V, EMA = "adam.m.", "adam.v.", "ema."


def die(msg):
    print("convert_official: " + msg, file=sys.stderr)
    sys.exit(1)


# --------------------------------------------------------------------------------------------
# Config text

def read_config_text(path):
    """Returns plain YAML text of the official sections. Accepts the runners' dumped
    argparse.Namespace (python/object tags are read as plain mappings, python/object/apply
    values such as torch.device are dropped: nothing is constructed or executed)."""
    import yaml

    class NamespaceLoader(yaml.SafeLoader):
        pass

    NamespaceLoader.add_multi_constructor(
        "tag:yaml.org,2002:python/object/apply:", lambda loader, suffix, node: None)
    NamespaceLoader.add_multi_constructor(
        "tag:yaml.org,2002:python/object:", lambda loader, suffix, node: loader.construct_mapping(node, deep=True))
    with open(path) as f:
        text = f.read()
    if "!!python/" not in text:
        yaml.safe_load(text)  # must parse
        return text
    d = yaml.load(text, Loader=NamespaceLoader)
    d = {k: v for k, v in d.items() if k in SECTIONS}
    return yaml.safe_dump(d, sort_keys=False)


def model_for(config_text):
    cfg = ncsn_torch.load_config(config_text)
    return cfg, ncsn_torch.get_model(cfg)


def check_names(what, got, model):
    """got: {name: array}. Every state-dict key of the model must be there with its shape."""
    want = collections.OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    bad = [(k, tuple(got[k].shape), want[k]) for k in want if k in got and tuple(got[k].shape) != want[k]]
    if missing or extra or bad:
        lines = []
        if missing:
            lines.append("missing %d (first: %s)" % (len(missing), ", ".join(missing[:3])))
        if extra:
            lines.append("unexpected %d (first: %s)" % (len(extra), ", ".join(extra[:3])))
        if bad:
            lines.append("shape mismatch %d (first: %s is %s, config wants %s)" % ((len(bad),) + bad[0]))
        die("%s does not match the config's network: %s" % (what, "; ".join(lines)))


# --------------------------------------------------------------------------------------------
# official -> engine

def _np32(t):
    return t.detach().cpu().to(torch.float32).contiguous().numpy()


def to_engine(pth, out, config_path, use_ema=False, with_adam=False, with_ema=False, step=None):
    states = torch.load(pth, map_location="cpu")
    if not isinstance(states, (list, tuple)) or len(states) < 2:
        die("%s: expected an official checkpoint list [state, optim, ...]" % pth)
    state, optim = states[0], states[1]
    layout_v2 = len(states) >= 4
    ema_shadow = states[4] if len(states) >= 5 else None
    text = read_config_text(config_path)
    cfg, model = model_for(text)

    model_tensors = collections.OrderedDict()
    for k, v in state.items():
        name = k[len("module."):] if k.startswith("module.") else k
        model_tensors[name] = _np32(v)
    check_names(pth, model_tensors, model)
    param_names = [n for n, _ in model.named_parameters()]

    if use_ema or with_ema:
        if ema_shadow is None:
            die("%s has no EMA shadow (v1 checkpoints and model.ema: false runs have none)" % pth)
        shadow = {k[len("module."):] if k.startswith("module.") else k: _np32(v) for k, v in ema_shadow.items()}
        absent = [n for n in param_names if n not in shadow]
        if absent:
            die("%s: EMA shadow lacks %s" % (pth, absent[0]))
    if use_ema:
        for n in param_names:
            model_tensors[n] = shadow[n]

    tensors = collections.OrderedDict(model_tensors)
    if with_adam:
        group_params = [i for g in optim["param_groups"] for i in g["params"]]
        if len(group_params) != len(param_names):
            die("%s: optimizer has %d parameters, the network %d" % (pth, len(group_params), len(param_names)))
        # torch.optim state is keyed by the position of the parameter in model.parameters(),
        # which is named_parameters() order.
        for pos, idx in enumerate(group_params):
            st = optim["state"].get(idx)
            name = param_names[pos]
            if st is None:  # never stepped: zero moments
                m = v = np.zeros_like(model_tensors[name])
            else:
                m, v = _np32(st["exp_avg"]), _np32(st["exp_avg_sq"])
            tensors[ADAM_M + name] = m
            tensors[ADAM_V + name] = v
    if with_ema:
        for n in param_names:
            tensors[EMA + n] = shadow[n]

    if step is None:
        if layout_v2:
            step = int(states[3])
        else:  # v1 saves no step; Adam counts one per training step
            steps = [int(s["step"]) for s in optim["state"].values() if "step" in s]
            step = max(steps) if steps else 0
    meta = {"config": text, "step": str(int(step))}
    safetensors_io.write(out, tensors, meta)
    return tensors, meta


# --------------------------------------------------------------------------------------------
# engine -> official

def to_official(st_path, out):
    tensors, meta = safetensors_io.read(st_path)
    if "config" not in meta:
        die("%s has no config metadata" % st_path)
    cfg, model = model_for(meta["config"])
    model_tensors = {k: v for k, v in tensors.items() if not k.startswith((ADAM_M, ADAM_V, EMA))}
    if "sigmas" not in model_tensors and hasattr(model, "sigmas"):
        model_tensors["sigmas"] = model.sigmas.numpy()  # a file with weights only: the config schedule
    check_names(st_path, model_tensors, model)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in model_tensors.items()})
    step = int(meta.get("step", "0"))

    o = cfg.optim
    optimizer = torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=getattr(o, "weight_decay", 0.),
                                 betas=(getattr(o, "beta1", 0.9), 0.999), amsgrad=getattr(o, "amsgrad", False),
                                 eps=getattr(o, "eps", 1e-8))
    have_adam = any(k.startswith(ADAM_M) for k in tensors)
    if have_adam:
        for name, p in model.named_parameters():
            if ADAM_M + name not in tensors or ADAM_V + name not in tensors:
                die("%s: Adam moments for %s missing" % (st_path, name))
            optimizer.state[p] = {"step": torch.tensor(float(step)),
                                  "exp_avg": torch.from_numpy(tensors[ADAM_M + name].copy()),
                                  "exp_avg_sq": torch.from_numpy(tensors[ADAM_V + name].copy())}
    state = collections.OrderedDict(("module." + k, v) for k, v in model.state_dict().items())
    if cfg.model.arch == "ncsn":
        states = [state, optimizer.state_dict()]
    else:
        states = [state, optimizer.state_dict(), 0, step]
        if getattr(cfg.model, "ema", False):
            shadow = collections.OrderedDict()
            for name, p in model.named_parameters():
                src = tensors.get(EMA + name)
                shadow[name] = torch.from_numpy(src.copy()) if src is not None else p.detach().clone()
            states.append(shadow)
    torch.save(states, out)
    return states


# --------------------------------------------------------------------------------------------
# Self-test

def selftest():
    import tempfile
    torch.manual_seed(0)
    torch.set_num_threads(1)
    failures = 0

    def check(what, ok, detail=""):
        nonlocal failures
        print("%s %s %s" % ("ok  " if ok else "FAIL", what, detail))
        failures += 0 if ok else 1

    v1_cfg = ("training:\n  batch_size: 2\n  algo: 'dsm'\n  anneal_power: 2.0\n"
              "data:\n  dataset: MNIST\n  image_size: 28\n  channels: 1\n  logit_transform: false\n"
              "model:\n  sigma_begin: 1\n  sigma_end: 0.01\n  num_classes: 10\n  batch_norm: false\n  ngf: 4\n"
              "optim:\n  weight_decay: 0.0\n  optimizer: Adam\n  lr: 0.001\n  beta1: 0.9\n  amsgrad: false\n")
    v2_cfg = ("training:\n  batch_size: 2\n  anneal_power: 2\n"
              "sampling:\n  batch_size: 4\n  step_lr: 0.0000062\n  n_steps_each: 5\n  denoise: true\n"
              "data:\n  dataset: CIFAR10\n  image_size: 32\n  channels: 3\n  logit_transform: false\n"
              "  rescaled: false\n"
              "model:\n  sigma_begin: 50\n  num_classes: 12\n  ema: true\n  ema_rate: 0.999\n"
              "  sigma_dist: geometric\n  sigma_end: 0.01\n  ngf: 4\n"
              "optim:\n  weight_decay: 0.0\n  optimizer: Adam\n  lr: 0.0001\n  beta1: 0.9\n"
              "  amsgrad: false\n  eps: 0.00000001\n")
    # What the official runners dump next to their checkpoints (argparse.Namespace via yaml.dump).
    v2_namespace = ("!!python/object:argparse.Namespace\ndata: !!python/object:argparse.Namespace\n"
                    "  channels: 3\n  dataset: CIFAR10\n  image_size: 32\n  logit_transform: false\n"
                    "  rescaled: false\ndevice: !!python/object/apply:torch.device\n- cpu\n"
                    "model: !!python/object:argparse.Namespace\n  ema: true\n  ema_rate: 0.999\n"
                    "  ngf: 4\n  num_classes: 12\n  sigma_begin: 50\n  sigma_dist: geometric\n"
                    "  sigma_end: 0.01\noptim: !!python/object:argparse.Namespace\n  amsgrad: false\n"
                    "  beta1: 0.9\n  eps: 1.0e-08\n  lr: 0.0001\n  optimizer: Adam\n  weight_decay: 0.0\n"
                    "sampling: !!python/object:argparse.Namespace\n  batch_size: 4\n  denoise: true\n"
                    "training: !!python/object:argparse.Namespace\n  anneal_power: 2\n  batch_size: 2\n")

    def train_official_style(cfg_text, steps, ema_rate=None):
        """A few official-style steps of a DataParallel-wrapped model (CPU: DataParallel just
        forwards, but the state dict gets the `module.` prefix exactly as in the real runs)."""
        cfg = ncsn_torch.load_config(cfg_text)
        model = ncsn_torch.get_model(cfg)
        dp = torch.nn.DataParallel(model)
        opt = torch.optim.Adam(dp.parameters(), lr=cfg.optim.lr, betas=(0.9, 0.999), eps=getattr(cfg.optim, "eps", 1e-8))
        shadow = {n: p.detach().clone() for n, p in model.named_parameters()} if ema_rate else None
        sig = ncsn_torch.model_sigmas(model, cfg)
        C, S = cfg.data.channels, cfg.data.image_size
        for _ in range(steps):
            x = torch.rand(2, C, S, S)
            y = torch.randint(0, cfg.model.num_classes, (2,))
            loss = ncsn_torch.anneal_dsm(dp, x, y, torch.randn_like(x), sig)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if shadow is not None:
                for n, p in model.named_parameters():
                    shadow[n].mul_(ema_rate).add_((1 - ema_rate) * p.detach())
        return cfg, dp, opt, shadow

    with tempfile.TemporaryDirectory() as d:
        for tag, cfg_text, ema in (("v1", v1_cfg, None), ("v2", v2_cfg, 0.9)):
            cfg_path = os.path.join(d, tag + ".yml")
            with open(cfg_path, "w") as f:
                f.write(v2_namespace if tag == "v2" else cfg_text)
            cfg, dp, opt, shadow = train_official_style(cfg_text, 3, ema)
            pth = os.path.join(d, tag + ".pth")
            if tag == "v1":
                torch.save([dp.state_dict(), opt.state_dict()], pth)
            else:
                torch.save([dp.state_dict(), opt.state_dict(), 1, 3, shadow], pth)
            sd = dp.state_dict()
            check("%s synthetic checkpoint has module. keys" % tag, all(k.startswith("module.") for k in sd))

            # official -> engine, full
            st_path = os.path.join(d, tag + ".safetensors")
            to_engine(pth, st_path, cfg_path, with_adam=True, with_ema=shadow is not None)
            tensors, meta = safetensors_io.read(st_path)
            model_keys = [k[len("module."):] for k in sd]
            check("%s engine model tensors = state dict" % tag,
                  all(np.array_equal(tensors[k], sd["module." + k].numpy()) for k in model_keys),
                  "%d tensors" % len(model_keys))
            check("%s engine key order = official order" % tag,
                  [k for k in tensors if not k.startswith((ADAM_M, ADAM_V, EMA))] == model_keys)
            check("%s sigmas kept iff v2" % tag, ("sigmas" in tensors) == (tag == "v2"))
            check("%s step metadata" % tag, meta["step"] == "3", meta["step"])
            check("%s config metadata is plain YAML" % tag, "!!python" not in meta["config"] and
                  ncsn_torch.load_config(meta["config"]).model.ngf == 4)
            names = [n for n, _ in dp.module.named_parameters()]
            ost = opt.state_dict()["state"]
            check("%s Adam moments" % tag, all(
                np.array_equal(tensors[ADAM_M + n], ost[i]["exp_avg"].numpy()) and
                np.array_equal(tensors[ADAM_V + n], ost[i]["exp_avg_sq"].numpy()) for i, n in enumerate(names)))
            if shadow is not None:
                check("%s EMA tensors" % tag, all(np.array_equal(tensors[EMA + n], shadow[n].numpy()) for n in names))
                ema_path = os.path.join(d, tag + "_ema.safetensors")
                to_engine(pth, ema_path, cfg_path, use_ema=True)
                te, _ = safetensors_io.read(ema_path)
                check("%s --ema takes the shadow for parameters, keeps sigmas" % tag,
                      all(np.array_equal(te[n], shadow[n].numpy()) for n in names) and
                      np.array_equal(te["sigmas"], sd["module.sigmas"].numpy()) and
                      not any(k.startswith((ADAM_M, EMA)) for k in te))

            # engine -> official, loaded by the official structure (DataParallel + Adam)
            back = os.path.join(d, tag + "_back.pth")
            to_official(st_path, back)
            states = torch.load(back)
            check("%s official list length" % tag, len(states) == (2 if tag == "v1" else 5), str(len(states)))
            fresh_cfg = ncsn_torch.load_config(cfg_text)
            fresh = torch.nn.DataParallel(ncsn_torch.get_model(fresh_cfg))
            fresh.load_state_dict(states[0])  # strict
            check("%s weights round trip" % tag, all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), sd.values())))
            fopt = torch.optim.Adam(fresh.parameters(), lr=cfg.optim.lr, eps=getattr(cfg.optim, "eps", 1e-8))
            fopt.load_state_dict(states[1])
            # One more identical step on both: equal results means the Adam state survived.
            x = torch.rand(2, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
            y = torch.tensor([0, 5])
            z = torch.randn_like(x)
            for net, o in ((dp, opt), (fresh, fopt)):
                sig = ncsn_torch.model_sigmas(net.module, cfg)
                loss = ncsn_torch.anneal_dsm(net, x, y, z, sig)
                o.zero_grad()
                loss.backward()
                o.step()
            check("%s Adam state round trip (next step identical)" % tag,
                  all(torch.equal(a, b) for a, b in zip(fresh.parameters(), dp.parameters())))
            if shadow is not None:
                check("%s EMA shadow round trip (no module., no sigmas)" % tag,
                      list(states[4].keys()) == names and all(torch.equal(states[4][n], shadow[n]) for n in names))
                check("%s v2 step" % tag, states[3] == 3)

        # Refusals: wrong config for a checkpoint.
        import subprocess
        wrong = os.path.join(d, "wrong.yml")
        with open(wrong, "w") as f:
            f.write(v1_cfg.replace("ngf: 4", "ngf: 8"))
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "to-engine", os.path.join(d, "v1.pth"),
                            os.path.join(d, "x.safetensors"), "--config", wrong], capture_output=True, text=True)
        check("wrong config refused", r.returncode != 0 and "shape mismatch" in r.stderr, r.stderr.strip())
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "to-engine", os.path.join(d, "v1.pth"),
                            os.path.join(d, "x.safetensors"), "--config", os.path.join(d, "v1.yml"), "--ema"],
                           capture_output=True, text=True)
        check("--ema on v1 refused", r.returncode != 0 and "no EMA shadow" in r.stderr, r.stderr.strip())

    print("convert_official selftest: %d failures" % failures)
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--selftest", action="store_true")
    sub = ap.add_subparsers(dest="cmd")
    a = sub.add_parser("to-engine", help="official .pth -> engine .safetensors")
    a.add_argument("input")
    a.add_argument("output")
    a.add_argument("--config", required=True, help="the run's YAML config (official file or dumped config.yml)")
    a.add_argument("--ema", action="store_true", help="model tensors from the EMA shadow")
    a.add_argument("--with-adam", action="store_true", help="store Adam moments as adam.m.* / adam.v.*")
    a.add_argument("--with-ema", action="store_true", help="store the EMA shadow as ema.*")
    a.add_argument("--step", type=int, help="override the step metadata")
    b = sub.add_parser("to-official", help="engine .safetensors -> official .pth")
    b.add_argument("input")
    b.add_argument("output")
    args = ap.parse_args()
    if args.selftest:
        return selftest()
    if args.cmd == "to-engine":
        tensors, meta = to_engine(args.input, args.output, args.config, args.ema, args.with_adam, args.with_ema, args.step)
        print("%s: %d tensors, step %s" % (args.output, len(tensors), meta["step"]))
        return 0
    if args.cmd == "to-official":
        states = to_official(args.input, args.output)
        print("%s: official list of %d entries, %d model tensors" % (args.output, len(states), len(states[0])))
        return 0
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
