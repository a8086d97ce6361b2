#!/bin/sh
# make demo: the main job on an embedded default, CPU only, a few minutes on 2 cores.
#  1. trains the toy conditional MLP on the 2-D mixture 0.2 N((-5,-5), I) + 0.8 N((5,5), I)
#     and plots data / plain Langevin / annealed Langevin side by side (the seeds' Fig. 2/3);
#  2. trains a small NCSNv2 on Fashion-MNIST (Debian's dataset-fashion-mnist) and writes a
#     sample grid from annealed Langevin dynamics with the final denoising step.
# Outputs land in demo/ (override with DEMO_DIR); step counts with TOY_STEPS / FM_STEPS.
set -e
build=${1:-build}
ncsn="$build/ncsn"
out=${DEMO_DIR:-demo}
toy_steps=${TOY_STEPS:-5001}
fm_steps=${FM_STEPS:-1500}
mkdir -p "$out"
rm -rf "$out/toy" "$out/fashion_mnist"

echo "== demo 1/2: toy 2-D mixture ($toy_steps steps)"
"$ncsn" train --config models/configs/toy.yml --workdir "$out/toy" --device cpu --steps "$toy_steps"
toy_ckpt=$(ls "$out"/toy/checkpoint_*.safetensors | sort -V | tail -1)
"$ncsn" sample --checkpoint "$toy_ckpt" --n "${TOY_POINTS:-2000}" --batch "${TOY_POINTS:-2000}" --out "$out/toy_langevin.png" --device cpu

echo "== demo 2/2: NCSNv2 on Fashion-MNIST ($fm_steps steps)"
"$ncsn" train --config models/configs/fashion_mnist_small.yml --workdir "$out/fashion_mnist" --device cpu \
    --steps "$fm_steps"
fm_ckpt=$(ls "$out"/fashion_mnist/checkpoint_*.safetensors | sort -V | tail -1)
# --no-ema: this early in training the weights still move fast, and the EMA (rate 0.995, an
# average over the last ~200 steps) lags behind them; its samples were visibly blurrier than
# the raw weights' after 1500 steps. Long runs sample from the EMA (the default).
"$ncsn" sample --checkpoint "$fm_ckpt" --n 64 --batch 64 --out "$out/fashion_mnist_samples.png" --device cpu --no-ema

echo "demo: wrote $out/toy_langevin.png and $out/fashion_mnist_samples.png"
