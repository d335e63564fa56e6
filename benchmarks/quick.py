"""Quick timing of generated maps against the memory floor and hand numpy,
in one process (ratios in one run are what count). Run: python benchmarks/quick.py
(add --dense-pinv to also time the dense-J + numpy.linalg.pinv route for LowRank)."""

import time

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from generated import bidiagonal, diagonal, hankel, low_rank, scaled_matrix, symmetric, toeplitz  # noqa: E402


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

    # J depends on x. Floor: one pushforward + one pullback (what one LSQR
    # iteration costs); ScaledMatrix (bordered, Schur) against a dense copy.
    sm = scaled_matrix.ScaledMatrix(scale=1.5, data=Y)
    row("ScaledMatrix restructure_pullback n=2000",
        best(lambda: scaled_matrix.restructure_pullback(sm, sm)), best(lambda: Y.copy()))
    m, r = 200, 4
    x = low_rank.LowRank(U=rng.standard_normal((m, r)), V=rng.standard_normal((m, r)))
    xb = low_rank.LowRank(U=rng.standard_normal((m, r)), V=rng.standard_normal((m, r)))
    Ym = rng.standard_normal((m, m))
    one_pass = best(lambda: low_rank.destructure_pullback(x, low_rank.destructure_pushforward(x, xb)))
    row("LowRank restructure_pullback n=200 r=4", best(lambda: low_rank.restructure_pullback(x, xb)), one_pass)
    row("LowRank restructure_pushforward n=200 r=4", best(lambda: low_rank.restructure_pushforward(x, Ym)),
        one_pass)
    # derived operations: O(pattern · k), against hand numpy on the same data
    N = 100_000
    dv = rng.standard_normal(N)
    V3 = rng.standard_normal((N, 3))
    dd = diagonal.Diagonal(diag=dv)
    row("Diagonal matvec n=1e5 k=3", best(lambda: diagonal.matvec(dd, V3)), best(lambda: V3.copy()),
        best(lambda: dv[:, None] * V3))
    bd = bidiagonal.Bidiagonal(dv=dv, ev=dv[1:])
    row("Bidiagonal bilinear_pullback n=1e5 k=3", best(lambda: bidiagonal.bilinear_pullback(bd, V3, V3)),
        best(lambda: V3.copy()),
        best(lambda: (np.sum(V3 * V3, axis=1), np.sum(V3[:-1] * V3[1:], axis=1))))
    Ub, Vb = rng.standard_normal((40000, 4)), rng.standard_normal((40000, 4))
    lr = low_rank.LowRank(U=Ub, V=Vb)
    W3 = rng.standard_normal((40000, 3))
    row("LowRank matvec n=40000 r=4 k=3", best(lambda: low_rank.matvec(lr, W3)), best(lambda: W3.copy()),
        best(lambda: Ub @ (Vb.T @ W3)))
    if "--dense-pinv" in sys.argv:
        def dense_route():
            cols = []
            for field in ("U", "V"):
                for k in range(m * r):
                    e = {"U": np.zeros((m, r)), "V": np.zeros((m, r))}
                    e[field].flat[k] = 1.0
                    cols.append(low_rank.destructure_pushforward(x, low_rank.LowRank(**e)).ravel())
            J = np.stack(cols, axis=1)
            return np.linalg.pinv(J).T @ np.concatenate([xb.U.ravel(), xb.V.ravel()])
        t0 = time.perf_counter()
        dense_route()
        print(f"{'  dense J + numpy.linalg.pinv, same map':38s} {(time.perf_counter() - t0) * 1e3:8.0f} ms")


if __name__ == "__main__":
    main()
