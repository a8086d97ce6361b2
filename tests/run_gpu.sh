#!/bin/sh
# make test-gpu: runs the CUDA-vs-CPU test binaries, or says clearly why they cannot run.
# Usage: tests/run_gpu.sh BUILD CUDA gpu_test_bins...
# Exits 0 with a "test-gpu: skipped: <reason>" line when the binaries were built without
# CUDA or no NVIDIA GPU is visible; otherwise runs them like `make test` (tests/run.sh),
# non-zero if any fails.
build="$1"; cuda="$2"
shift 2 2>/dev/null || shift $#
if [ "$cuda" != "1" ]; then
    echo "test-gpu: skipped: built without CUDA (nvcc not found or CUDA=0)"
    exit 0
fi
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo "test-gpu: skipped: no NVIDIA GPU visible (nvidia-smi)"
    exit 0
fi
if [ "$#" -eq 0 ]; then
    echo "test-gpu: no GPU test binaries given (expected $build/tests/gpu/test_gpu_*)"
    exit 1
fi
sh "$(dirname "$0")/run.sh" "$build" "$@" || exit 1
# Multi-GPU equivalence: --nproc 2 (NCCL) against --nproc 1, the CPU test's checks.
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
if [ "$gpus" -ge 2 ]; then
    echo "test-gpu: multi-GPU equivalence on $gpus GPUs (tests/test_train_dp.c with NCSN_TEST_DP_DEVICE=cuda)"
    NCSN_TEST_DP_DEVICE=cuda "$build/tests/test_train_dp" || exit 1
else
    echo "test-gpu: multi-GPU equivalence: skipped ($gpus GPU visible, 2 needed)"
fi
