#!/usr/bin/python3
"""ncsn_rng.py: numpy port of kernels/rng_math.h (Philox-4x32-10 counter RNG).

A draw is a pure function of (seed, purpose, example, step, index), so the PyTorch reference
can recreate exactly the numbers the engine draws (parameter initialisation above all).
Every function is vectorised: `example`, `step` and `index` may be numpy arrays and broadcast
against each other; `seed` and `purpose` are scalars.

  u32      bit-identical to ncsn_rng_u32
  uniform  bit-identical to ncsn_rng_uniform (24 random bits, exact in float32)
  normal   Box-Muller in float64, rounded to float32, as ncsn_rng_normal; numpy's log/sin/cos
           and the C library's agree to well under one float32 ulp, so the float32 values match
           except (rarely) in the last bit.

Self-test: /usr/bin/python3 tools/ncsn_rng.py --selftest  (checks .plan/rng_vectors.txt and
Random123's published Philox4x32-10 known-answer vectors).
"""
import argparse
import os
import sys

import numpy as np

# Purposes, as the enum in kernels/rng_math.h.
RNG_INIT = 1
RNG_LABELS = 2
RNG_NOISE = 3
RNG_DEQUANT = 4
RNG_FLIP = 5
RNG_SHUFFLE = 6
RNG_SAMPLER_INIT = 7
RNG_LANGEVIN = 8
RNG_SLICE = 9
RNG_INPAINT = 10
RNG_TOY = 11

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox-4x32 with 10 rounds on arrays of counters (uint32-valued); keys are scalars.
    Returns four uint32 arrays (the output words)."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & _MASK32 for c in (c0, c1, c2, c3))
    c0, c1, c2, c3 = np.broadcast_arrays(c0, c1, c2, c3)
    k0, k1 = int(k0) & 0xFFFFFFFF, int(k1) & 0xFFFFFFFF
    for _ in range(10):
        # 32x32 -> 64-bit products never overflow uint64.
        p0 = _M0 * c0
        p1 = _M1 * c2
        hi0, lo0 = p0 >> _SHIFT32, p0 & _MASK32
        hi1, lo1 = p1 >> _SHIFT32, p1 & _MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint64(k0), lo1, hi0 ^ c3 ^ np.uint64(k1), lo0
        k0 = (k0 + _W0) & 0xFFFFFFFF
        k1 = (k1 + _W1) & 0xFFFFFFFF
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))


def _block(seed, purpose, example, step, block):
    """Counter {block, step, example, purpose}, key = the 64-bit seed (low word first)."""
    seed = int(seed)
    return philox4x32_10(np.asarray(block, dtype=np.uint64) & _MASK32, step, example, purpose,
                         seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF)


def _lane_select(words, lane):
    w = np.stack(np.broadcast_arrays(*words), axis=0)
    lane = np.broadcast_to(lane, w.shape[1:])
    return np.take_along_axis(w, lane[None].astype(np.int64), axis=0)[0]


def u32(seed, purpose, example, step, index):
    """Raw 32-bit draw number `index` of the stream (uint32 array)."""
    index = np.asarray(index, dtype=np.uint64)
    words = _block(seed, purpose, example, step, index >> np.uint64(2))
    return _lane_select(words, (index & np.uint64(3)).astype(np.int64))


def u32_to_uniform(u):
    """24 high bits / 2^24: exactly representable in float32."""
    return (np.asarray(u, dtype=np.uint32) >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def uniform(seed, purpose, example, step, index):
    """Uniform float32 in [0, 1)."""
    return u32_to_uniform(u32(seed, purpose, example, step, index))


def normal(seed, purpose, example, step, index):
    """Standard normal float32; lanes (0,1) and (2,3) of a block are Box-Muller pairs,
    lane 0/2 the cosine, lane 1/3 the sine."""
    index = np.asarray(index, dtype=np.uint64)
    words = _block(seed, purpose, example, step, index >> np.uint64(2))
    lane = (index & np.uint64(3)).astype(np.int64)
    a = _lane_select(words, lane & 2).astype(np.float64)
    c = _lane_select(words, (lane & 2) + 1).astype(np.float64)
    u = (a + 1.0) * (1.0 / 4294967296.0)  # (0, 1]: never log(0)
    v = c * (1.0 / 4294967296.0)
    radius = np.sqrt(-2.0 * np.log(u))
    angle = 6.283185307179586476925 * v
    lane = np.broadcast_to(lane, radius.shape)
    return np.where(lane & 1, radius * np.sin(angle), radius * np.cos(angle)).astype(np.float32)


def _parse_vectors(path):
    rows, blocks = [], {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("philox("):
                name, words = line.split("=", 1)
                blocks[name] = [int(w, 16) for w in words.split()]
            elif line:
                rows.append(dict(kv.split("=") for kv in line.split()))
    return rows, blocks


def selftest():
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", ".plan", "rng_vectors.txt")
    failures = 0

    def check(what, ok, detail):
        nonlocal failures
        if not ok:
            failures += 1
            print("FAIL %s: %s" % (what, detail))

    # Random123 kat_vectors for philox4x32_10 (the same three the C header was verified with).
    kat = {
        (0, 0, 0, 0, 0, 0): [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8],
        (0xFFFFFFFF,) * 6: [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD],
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344, 0xA4093822, 0x299F31D0):
            [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
    }
    for args, want in kat.items():
        got = [int(w) for w in philox4x32_10(*args)]
        check("philox kat %s" % (args,), got == want, "got %s want %s" % ([hex(g) for g in got], [hex(w) for w in want]))

    rows, blocks = ([], {})
    if os.path.exists(path):
        rows, blocks = _parse_vectors(path)
    else:
        check("vectors file", False, "%s not found" % path)
    for r in rows:
        seed, purpose, example, step, index = (int(r[k]) for k in ("seed", "purpose", "example", "step", "index"))
        gu = int(u32(seed, purpose, example, step, index))
        check("u32 %s" % r, gu == int(r["u32"]), "got %d" % gu)
        gf = uniform(seed, purpose, example, step, index)
        wf = np.float32(float(r["uniform"]))  # printed with %.9g: round-trips float32 exactly
        check("uniform %s" % r, gf == wf, "got %.9g" % gf)
        gn = normal(seed, purpose, example, step, index)
        wn = np.float32(float(r["normal"]))
        check("normal %s" % r, gn == wn, "got %.9g want %.9g" % (gn, wn))
    # The same rows computed in one vectorised call (broadcast over index).
    if rows:
        seed = int(rows[0]["seed"])
        idx = np.array([int(r["index"]) for r in rows if int(r["seed"]) == seed])
        vec = u32(seed, 1, 0, 3, idx)
        want = np.array([int(r["u32"]) for r in rows if int(r["seed"]) == seed], dtype=np.uint32)
        check("vectorised u32", np.array_equal(vec, want), "got %s" % vec)

    # Statistical sanity on a larger stream: mean/var of 2^20 normals and uniforms.
    n = 1 << 20
    idx = np.arange(n, dtype=np.uint64)
    z = normal(42, RNG_NOISE, 7, 0, idx).astype(np.float64)
    uu = uniform(42, RNG_NOISE, 7, 0, idx).astype(np.float64)
    # 5 standard errors: mean se = 1/sqrt(n) ~ 1e-3; var se = sqrt(2/n) ~ 1.4e-3.
    check("normal mean", abs(z.mean()) < 5e-3, "%g" % z.mean())
    check("normal var", abs(z.var() - 1) < 7e-3, "%g" % z.var())
    check("uniform mean", abs(uu.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n), "%g" % uu.mean())
    check("uniform range", uu.min() >= 0 and uu.max() < 1, "%g %g" % (uu.min(), uu.max()))
    # Different examples / steps / purposes give different streams.
    check("streams differ", not np.array_equal(u32(1, 1, 0, 0, idx[:64]), u32(1, 1, 1, 0, idx[:64])), "example")
    check("seed high word", not np.array_equal(u32(1, 1, 0, 0, idx[:64]), u32(1 + (1 << 32), 1, 0, 0, idx[:64])), "")

    print("ncsn_rng selftest: %d vectors, %d failures" % (len(rows), failures))
    return 1 if failures else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--selftest", action="store_true")
    args = ap.parse_args()
    if args.selftest:
        sys.exit(selftest())
    ap.print_help()
