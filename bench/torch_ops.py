"""torch_ops.py: the peer of bench/bench_ops.c, the same convolutions in PyTorch.

Runs the 3x3 convolutions of the CIFAR-10 NCSN models at N = 32 (forward, backward-data,
backward-weights) on 2 threads, exactly as bench_ops times the engine (one warm-up, then
the median of several runs), and prints one line per measurement:

    conv <name> <direction> <milliseconds> <GFLOP/s>

bench_ops runs this with /usr/bin/python3 (Debian's torch 1.13, whose CPU convolutions
are oneDNN too) right after timing the same convolution itself, so that both see the same
load on a shared machine, and prints engine / torch ratios.
Standalone: /usr/bin/python3 bench/torch_ops.py [runs [conv name]]
"""
import statistics
import sys
import time

import torch

# name, C (= K), H (= W), dilation: keep in sync with bench_ops.c
CONVS = [("128ch@32x32_d1", 128, 32, 1), ("256ch@16x16_d1", 256, 16, 1),
         ("256ch@16x16_d2", 256, 16, 2), ("256ch@16x16_d4", 256, 16, 4)]
N = 32
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
ONLY = sys.argv[2] if len(sys.argv) > 2 else None


def median_ms(fn):
    fn()  # warm-up: primitive creation and first-touch of memory
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    for name, C, H, d in CONVS:
        if ONLY is not None and name != ONLY:
            continue
        x = torch.randn(N, C, H, H)
        w = torch.randn(C, C, 3, 3) * (1.0 / (C * 9) ** 0.5)
        b = torch.randn(C)
        gy = torch.randn(N, C, H, H)
        flops = 2.0 * N * C * C * 9 * H * H
        args = dict(stride=[1, 1], padding=[d, d], dilation=[d, d], transposed=False, output_padding=[0, 0],
                    groups=1)

        def forward():
            with torch.no_grad():
                torch.nn.functional.conv2d(x, w, b, 1, d, d)

        def backward(mask):
            torch.ops.aten.convolution_backward(gy, x, w, [C], args["stride"], args["padding"], args["dilation"],
                                                args["transposed"], args["output_padding"], args["groups"], mask)

        for direction, fn in (("forward", forward), ("backward_data", lambda: backward([True, False, False])),
                              ("backward_weights", lambda: backward([False, True, True]))):
            ms = median_ms(fn)
            print("conv %s %s %.3f %.2f" % (name, direction, ms, flops / (ms * 1e-3) / 1e9), flush=True)


if __name__ == "__main__":
    main()
