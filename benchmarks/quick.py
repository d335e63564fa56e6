"""Quick timing of generated gather maps against the memory floor and hand numpy,
in one process (ratios in one run are what count). Run: python benchmarks/quick.py"""

import time

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from generated import diagonal, hankel, symmetric, toeplitz  # noqa: E402


def best(f, repeat=7):
    f()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def row(label, t, floor, hand=None):
    extra = f"  hand numpy {hand * 1e3:8.2f} ms ({t / hand:5.2f}x)" if hand else ""
    print(f"{label:38s} {t * 1e3:8.2f} ms  floor {floor * 1e3:7.2f} ms ({t / floor:5.2f}x){extra}")


def main():
    rng = np.random.default_rng(0)
    n = 2000
    Y = rng.standard_normal((n, n))
    h = hankel.Hankel(h=rng.standard_normal(2 * n - 1))
    row("Hankel destructure_pullback n=2000", best(lambda: hankel.destructure_pullback(h, Y)),
        best(lambda: Y.sum()),
        best(lambda: np.bincount((np.arange(n)[:, None] + np.arange(n)).ravel(), Y.ravel())))
    s = symmetric.Symmetric(data=Y)
    row("Symmetric project n=2000", best(lambda: symmetric.project(s, Y)), best(lambda: Y.copy()),
        best(lambda: (Y + Y.T) / 2))
    t = toeplitz.Toeplitz(col=rng.standard_normal(n), row=rng.standard_normal(n))
    row("Toeplitz destructure n=2000", best(lambda: toeplitz.destructure(t)), best(lambda: Y.copy()))
    d = diagonal.Diagonal(diag=rng.standard_normal(4000))
    Y4 = rng.standard_normal((4000, 4000))
    row("Diagonal destructure_pullback n=4000", best(lambda: diagonal.destructure_pullback(d, Y4)),
        best(lambda: np.diagonal(Y4).copy()), best(lambda: np.diag(Y4).copy()))


if __name__ == "__main__":
    main()
