#!/bin/sh
# make test-gpu: runs the CUDA-vs-CPU test binaries, or says clearly why they cannot run.
# Usage: tests/run_gpu.sh BUILD CUDA gpu_test_bins...
# Exits 0 with a "test-gpu: skipped: <reason>" line when the binaries were built without
# CUDA or no NVIDIA GPU is visible; otherwise runs them, writes their full output to
# BUILD/test-gpu/<binary>.log, prints a one-page report (one line per op: its shapes, the
# worst error relative to max|cpu| over them, the tolerance class and the verdict; then the
# model-level checks) and exits non-zero if any check failed.
# NCSN_TEST_GPU_CPU_PAIR=1 runs the same with a second CPU backend in place of the GPU (the
# binaries' pair mode), which checks the tests and this report on a machine without a GPU.
build="$1"; cuda="$2"
shift 2 2>/dev/null || shift $#
if [ "${NCSN_TEST_GPU_CPU_PAIR:-0}" != "1" ]; then
    if [ "$cuda" != "1" ]; then
        echo "test-gpu: skipped: built without CUDA (nvcc not found or CUDA=0)"
        exit 0
    fi
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
        echo "test-gpu: skipped: no NVIDIA GPU visible (nvidia-smi)"
        exit 0
    fi
fi
if [ "$#" -eq 0 ]; then
    echo "test-gpu: no GPU test binaries given (expected $build/tests/gpu/test_gpu_*)"
    exit 1
fi
logs="$build/test-gpu"
mkdir -p "$logs"
failed=0
for t in "$@"; do
    name=$(basename "$t")
    (cd "$(dirname "$0")/.." && "$t") > "$logs/$name.log" 2>&1 || failed=$((failed + 1))
done

echo "== test-gpu report (full output: $logs/*.log)"
for t in "$@"; do
    log="$logs/$(basename "$t").log"
    grep -m 1 '^test-gpu:' "$log"
    case "$(basename "$t")" in
    test_gpu_ops)
        # The op table (test_gpu_ops.c compare()): op, shape, max abs, max abs / max|cpu|, tol,
        # PASS/FAIL. Read from the verdict backwards (shapes contain spaces); the op is the
        # first 38 columns (names that are longer are cut there, consistently).
        awk '
            match($0, / (PASS|FAIL)/) {
                head = substr($0, 1, RSTART - 1); verdict = substr($0, RSTART + 1, 4)
                nf = split(head, f, " ")
                if (nf < 4) next
                op = substr($0, 1, 38); sub(/ +$/, "", op)
                tol = f[nf]; ratio = f[nf - 1]
                if (!(op in n)) { order[++k] = op; worst[op] = -1 }
                n[op]++; tols[op] = tol
                if (ratio ~ /^[0-9.]+e[-+][0-9]+$/ && ratio + 0 > worst[op]) worst[op] = ratio + 0
                if (verdict == "FAIL") bad[op]++
            }
            END {
                # Two columns of ops, to keep the report on one page.
                hdr = sprintf("%-32s %3s %9s %-6s %s", "op", "n", "worst/max", "tol", "result")
                printf "%-58s  %s\n", hdr, hdr
                half = int((k + 1) / 2)
                for (i = 1; i <= half; i++) {
                    line = ""
                    for (j = i; j <= k && j <= i + half; j += half) {
                        op = order[j]
                        w = worst[op] < 0 ? "-" : sprintf("%.2e", worst[op])
                        cell = sprintf("%-32.32s %3d %9s %-6.6s %s", op, n[op], w, tols[op],
                                       bad[op] ? sprintf("FAIL(%d)", bad[op]) : "PASS")
                        line = line == "" ? sprintf("%-58s", cell) : line "  " cell
                    }
                    print line
                }
            }' "$log"
        ;;
    *)
        # Model-level checks: the section headers and every verdict line.
        grep -E '^-- |PASS|FAIL' "$log" | grep -v '^test-gpu:' | cut -c1-110
        ;;
    esac
    tail -n 1 "$log"
done
if [ "$failed" -ne 0 ]; then
    echo "test-gpu: $failed of $# binaries failed (their logs above list the failing checks)"
    exit 1
fi
# Multi-GPU equivalence: --nproc 2 (NCCL) against --nproc 1, the CPU test's checks.
if [ "${NCSN_TEST_GPU_CPU_PAIR:-0}" = "1" ]; then
    echo "test-gpu: multi-GPU equivalence: skipped (pair mode)"
    exit 0
fi
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
if [ "$gpus" -ge 2 ]; then
    echo "test-gpu: multi-GPU equivalence on $gpus GPUs (tests/test_train_dp.c with NCSN_TEST_DP_DEVICE=cuda)"
    NCSN_TEST_DP_DEVICE=cuda "$build/tests/test_train_dp" > "$logs/test_train_dp.log" 2>&1 || {
        tail -n 20 "$logs/test_train_dp.log"
        exit 1
    }
    tail -n 1 "$logs/test_train_dp.log"
else
    echo "test-gpu: multi-GPU equivalence: skipped ($gpus GPU visible, 2 needed)"
fi
