#!/usr/bin/python3
"""sigmas.py: NCSNv2's noise-schedule techniques (Song & Ermon 2020, "Improved techniques"),
the Python cross-check of `ncsn sigmas`.

  Technique 1  sigma_1 = the maximum Euclidean distance between two training examples.
  Technique 2  geometric schedule with ratio gamma = sigma_{i-1}/sigma_i solving
                   Phi(sqrt(2D)(gamma-1) + 3 gamma) - Phi(sqrt(2D)(gamma-1) - 3 gamma) = 0.5
               (D = data dimension), hence L = ceil(log(sigma_1/sigma_L) / log gamma) + 1.
  Technique 4  for T Langevin steps per level, the step size eps (the code's step_lr: the
               update is x += a s + sqrt(2a) z with a = eps (sigma_i/sigma_L)^2) that brings
                   s_T^2/sigma_i^2 = (1 - eps/sL^2)^{2T} (gamma^2 - 2eps/(sL^2 - sL^2(1 - eps/sL^2)^2))
                                     + 2eps/(sL^2 - sL^2(1 - eps/sL^2)^2)
               closest to 1. With r = eps/sL^2 the fraction is 2/(2 - r), so the search is over r.

Usage:
  sigmas.py --dim 3072 --sigma1 50 [--sigma-end 0.01] [--steps 5]
  sigmas.py --data x.npy [--subset N] ...    D and sigma_1 from the data (uint8 is scaled by
                                             1/255: the networks see images in [0, 1])
  sigmas.py --official [--coverage C]        every official NCSNv2 setting vs what this gives

What it finds (see --official): the equation as published (coverage 0.5) gives a slightly larger
gamma than the official schedules, e.g. CIFAR-10 L = 220 vs 232; all five official schedules sit
at coverage ~0.567 instead, so the authors' L is systematically ~5% larger. Given the official
gamma, the eps rule reproduces the official step sizes (CIFAR-10 6.18e-6 vs 6.2e-6; CelebA,
bedroom, FFHQ likewise) except LSUN church (2.3e-6 vs 4.9e-6).
"""
import argparse
import math
import sys

import numpy as np


def phi(x):
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def coverage(gamma, D):
    a = math.sqrt(2.0 * D) * (gamma - 1.0)
    return phi(a + 3.0 * gamma) - phi(a - 3.0 * gamma)


def solve_gamma(D, target=0.5):
    """Bisection for coverage(gamma) = target on gamma > 1. coverage(1) = Phi(3) - Phi(-3) = 0.997;
    the window [a - 3g, a + 3g] has its centre moving at sqrt(2D) per unit gamma and its ends
    at sqrt(2D) +- 3, so once sqrt(2D) > 3 the whole window eventually leaves through the right
    and coverage falls to 0 (after a slight initial rise). For sqrt(2D) <= 3 (D <= 4, e.g. 2-D
    toy data) the lower end never catches up: coverage tends to 1 and there is no solution."""
    if math.sqrt(2.0 * D) <= 3.0:
        raise ValueError("the gamma equation has no solution for D = %d (needs sqrt(2D) > 3, D >= 5); "
                         "choose the ratio directly for such low-dimensional data" % D)
    lo, hi = 1.0, 2.0
    while coverage(hi, D) > target:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if coverage(mid, D) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def num_levels(sigma1, sigma_end, gamma):
    return int(math.ceil(math.log(sigma1 / sigma_end) / math.log(gamma))) + 1


def variance_ratio(eps, sigma_end, gamma, T):
    r = eps / sigma_end ** 2
    frac = 2.0 * eps / (sigma_end ** 2 - sigma_end ** 2 * (1.0 - r) ** 2)
    return (1.0 - r) ** (2 * T) * (gamma ** 2 - frac) + frac


def solve_eps(sigma_end, gamma, T):
    """Minimises |s_T^2/sigma^2 - 1| over eps in (0, sigma_end^2): a log grid, then
    golden-section refinement around the best grid point."""
    s2 = sigma_end ** 2
    grid = s2 * np.logspace(-8, np.log10(0.999), 4000)
    err = np.array([abs(variance_ratio(e, sigma_end, gamma, T) - 1.0) for e in grid])
    k = int(np.argmin(err))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    f = lambda e: abs(variance_ratio(e, sigma_end, gamma, T) - 1.0)  # noqa: E731
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    for _ in range(200):
        c, d = b - g * (b - a), a + g * (b - a)
        if f(c) < f(d):
            b = d
        else:
            a = c
    eps = 0.5 * (a + b)
    return eps, variance_ratio(eps, sigma_end, gamma, T)


def max_pairwise_distance(x, block=1024):
    """Exact max ||x_i - x_j|| by blocked GEMMs: |a|^2 + |b|^2 - 2 a.b in float64."""
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    best = 0.0
    for i in range(0, len(x), block):
        a = x[i:i + block]
        for j in range(i, len(x), block):
            b = x[j:j + block]
            d2 = sq[i:i + block, None] + sq[None, j:j + block] - 2.0 * a @ b.T
            best = max(best, float(d2.max()))
    return math.sqrt(max(best, 0.0))


def schedule(D, sigma1, sigma_end, T, target=0.5):
    gamma = solve_gamma(D, target)
    L = num_levels(sigma1, sigma_end, gamma)
    eps, ratio = solve_eps(sigma_end, gamma, T)
    return gamma, L, eps, ratio


# Official NCSNv2 settings (spec 5.1): name, D, sigma_1, sigma_L, L, T, eps.
OFFICIAL = [
    ("CIFAR-10 32x32x3", 3072, 50, 0.01, 232, 5, 6.2e-6),
    ("CelebA 64x64x3", 12288, 90, 0.01, 500, 5, 3.3e-6),
    ("LSUN church 64x64x3 (config)", 12288, 140, 0.01, 788, 4, 4.9e-6),
    ("LSUN church 96x96x3 (paper)", 27648, 140, 0.01, 788, 4, 4.9e-6),
    ("LSUN bedroom/tower 128x128x3", 49152, 190, 0.01, 1086, 3, 1.8e-6),
    ("FFHQ 256x256x3", 196608, 348, 0.01, 2311, 3, 9e-7),
]


def report_official(target=0.5):
    """Two comparisons per setting: the full recipe (gamma from the coverage equation, then L
    and eps), and eps alone given the official schedule's own gamma = (s1/sL)^(1/(L-1))."""
    print("%-29s %6s %4s | %8s %4s %8s %7s | %4s %8s %8s %6s %8s" % (
        "setting", "D", "s1", "gamma", "L", "eps", "ratio",
        "L_off", "gamma_off", "eps_off", "cover", "eps*(off)"))
    for name, D, s1, sL, L_off, T, eps_off in OFFICIAL:
        gamma, L, eps, ratio = schedule(D, s1, sL, T, target)
        gamma_off = (s1 / sL) ** (1.0 / (L_off - 1))
        eps_for_off, _ = solve_eps(sL, gamma_off, T)
        print("%-29s %6d %4g | %8.6f %4d %8.3g %7.5f | %5d %8.6f %8.2g %6.4f %8.3g" % (
            name, D, s1, gamma, L, eps, ratio, L_off, gamma_off, eps_off, coverage(gamma_off, D), eps_for_off))


def selftest():
    failures = 0

    def check(what, ok, detail=""):
        nonlocal failures
        print("%s %s %s" % ("ok  " if ok else "FAIL", what, detail))
        failures += 0 if ok else 1

    for D in (5, 3072, 196608):
        g = solve_gamma(D)
        check("coverage(gamma) = 0.5 for D=%d" % D, abs(coverage(g, D) - 0.5) < 1e-12, "gamma %.6f" % g)
    try:
        solve_gamma(2)
        check("D=2 refused (no solution)", False)
    except ValueError:
        check("D=2 refused (no solution)", True)
    # Closed form of the equation's solution for large D: Phi(a + 3g) ~ 1, so a = 3g.
    D = 3072
    check("gamma = 1/(1 - 3/sqrt(2D))", abs(solve_gamma(D) - 1 / (1 - 3 / math.sqrt(2 * D))) < 1e-9)
    # Given the official CIFAR-10 gamma, the eps rule lands on the official 6.2e-6 (2 digits).
    gamma_off = (50 / 0.01) ** (1 / 231)
    eps, _ = solve_eps(0.01, gamma_off, 5)
    check("CIFAR-10 eps for the official gamma", abs(eps - 6.2e-6) < 0.05e-6, "%.3g" % eps)
    x = np.random.default_rng(0).random((300, 17))
    brute = max(np.linalg.norm(a - b) for a in x for b in x)
    check("max pairwise distance (blocked) = brute force",
          abs(max_pairwise_distance(x, block=64) - brute) < 1e-9 * brute)
    print("sigmas selftest: %d failures" % failures)
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, help="data dimension D")
    ap.add_argument("--sigma1", type=float, help="largest sigma (default: from --data)")
    ap.add_argument("--data", help=".npy array, N examples along the first axis")
    ap.add_argument("--subset", type=int, default=0, help="use the first N examples of --data")
    ap.add_argument("--sigma-end", type=float, default=0.01)
    ap.add_argument("--steps", type=int, default=5, help="T, Langevin steps per level")
    ap.add_argument("--coverage", type=float, default=0.5,
                    help="target of the Phi(..) - Phi(..) overlap equation (paper: 0.5)")
    ap.add_argument("--official", action="store_true", help="compare with the official settings")
    ap.add_argument("--selftest", action="store_true")
    args = ap.parse_args()
    if args.selftest:
        return selftest()
    if args.official:
        report_official(args.coverage)
        return 0
    D, sigma1 = args.dim, args.sigma1
    if args.data:
        x = np.load(args.data, mmap_mode="r")
        if args.subset:
            x = x[:args.subset]
        x = np.asarray(x)
        x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
        D = D or int(np.prod(x.shape[1:]))
        if sigma1 is None:
            sigma1 = max_pairwise_distance(x)
            print("sigma_1 = max pairwise distance over %d examples = %.6g" % (len(x), sigma1))
    if not D or sigma1 is None:
        ap.error("give --dim and --sigma1, or --data")
    try:
        gamma, L, eps, ratio = schedule(D, sigma1, args.sigma_end, args.steps, args.coverage)
    except ValueError as e:
        print("sigmas: %s" % e, file=sys.stderr)
        return 1
    print("D = %d  sigma_1 = %g  sigma_L = %g  T = %d" % (D, sigma1, args.sigma_end, args.steps))
    print("gamma = %.6f (coverage %.4f)  L = %d  eps = %.3g (s_T^2/sigma^2 = %.5f)"
          % (gamma, coverage(gamma, D), L, eps, ratio))
    print("model:\n  sigma_begin: %g\n  sigma_end: %g\n  num_classes: %d\nsampling:\n  n_steps_each: %d\n  step_lr: %.3g"
          % (sigma1, args.sigma_end, L, args.steps, eps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
