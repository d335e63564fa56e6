"""The JAX target against hand-written jnp on the same data, both under
jax.jit, timed in the same process: ratios are what count (target ≤ 1.5×:
it is the same XLA underneath, so a gap means the emitted code is worse than
the obvious code).

    python3 benchmarks/jax_target.py [--n 2000] [--batch 64] [--x64] [--quick]

"Hand" is what a JAX user writes for the type: the dense matrix from jnp
primitives, the pullback as the obvious reduction (diagonals, triangles) or
jax.vjp of the hand dense matrix where there is no shorter one (Toeplitz,
Hankel: sums along diagonals), J⁺ with the Gram weights precomputed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def timed(f, *args, repeat=7):
    """Best wall time of ``repeat`` calls after a compiling warm-up (sub-ms
    calls repeat until 0.2 s is spent)."""
    import jax
    jax.block_until_ready(f(*args))
    times, spent = [], 0.0
    while len(times) < repeat or (spent < 0.2 and len(times) < 300):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
        spent += times[-1]
    return min(times)


def cases(n, batch):
    import jax
    import jax.numpy as jnp
    from generated.jax import diagonal, hankel, symmetric, sym_tridiagonal, toeplitz, tridiagonal

    rng = np.random.default_rng(0)
    dt = jnp.result_type(float)

    def r(*shape):
        return jnp.asarray(rng.standard_normal(shape), dt)

    i, j = np.indices((n, n))
    out = []

    # Diagonal
    d = r(n)
    x = diagonal.Diagonal(diag=d)
    Y, v = r(n, n), r(n)
    hand = {
        "destructure": (lambda d: jnp.diag(d), d),
        "destructure_pullback": (lambda Y: jnp.diagonal(Y), Y),
        "project": (lambda Y: jnp.diag(jnp.diagonal(Y)), Y),
        "matvec": (lambda d, v: d * v, d, v),
    }
    ours = {
        "destructure": (diagonal.destructure, x),
        "destructure_pullback": (diagonal.destructure_pullback, x, Y),
        "project": (diagonal.project, x, Y),
        "matvec": (diagonal.matvec, x, v),
    }
    out.append(("Diagonal", hand, ours))

    # Symmetric (upper triangle of data)
    data = r(n, n)
    x = symmetric.Symmetric(data=data)
    w = jnp.where(i == j, 1.0, jnp.where(i < j, 2.0, 0.0)).astype(dt)
    winv = jnp.where(w > 0, 1 / jnp.where(w > 0, w, 1), 0)

    def sym_dense(a):
        return jnp.triu(a) + jnp.triu(a, 1).T

    def sym_pull(Y):
        return jnp.triu(Y) + jnp.tril(Y, -1).T

    hand = {
        "destructure": (sym_dense, data),
        "destructure_pullback": (sym_pull, Y),
        "restructure_pushforward": (lambda Y: sym_pull(Y) * winv, Y),
        "restructure_pullback": (lambda t: sym_dense(t * winv), data),
        "project": (lambda Y: (Y + Y.T) / 2, Y),
        "matvec": (lambda a, v: sym_dense(a) @ v, data, v),
    }
    ours = {
        "destructure": (symmetric.destructure, x),
        "destructure_pullback": (symmetric.destructure_pullback, x, Y),
        "restructure_pushforward": (symmetric.restructure_pushforward, x, Y),
        "restructure_pullback": (symmetric.restructure_pullback, x, x),
        "project": (symmetric.project, x, Y),
        "matvec": (symmetric.matvec, x, v),
    }
    out.append(("Symmetric", hand, ours))

    # Toeplitz
    col, row = r(n), r(n)
    x = toeplitz.Toeplitz(col=col, row=row)

    def toe_dense(c, q):
        return jnp.where(i >= j, c[np.abs(i - j)], q[np.abs(j - i)])

    counts = jnp.asarray(n - np.arange(n), dt)

    def toe_pull(Y):
        _, vjp = jax.vjp(toe_dense, col, row)
        return vjp(Y)

    def toe_project(Y):
        c, q = toe_pull(Y)
        return toe_dense(c / counts, q.at[0].set(0) / counts)

    hand = {
        "destructure": (toe_dense, col, row),
        "destructure_pullback": (toe_pull, Y),
        "project": (toe_project, Y),
        "matvec": (lambda c, q, v: toe_dense(c, q) @ v, col, row, v),
    }
    ours = {
        "destructure": (toeplitz.destructure, x),
        "destructure_pullback": (toeplitz.destructure_pullback, x, Y),
        "project": (toeplitz.project, x, Y),
        "matvec": (toeplitz.matvec, x, v),
    }
    out.append(("Toeplitz", hand, ours))

    # Hankel
    h = r(2 * n - 1)
    x = hankel.Hankel(h=h)

    def hank_dense(h):
        return h[i + j]

    def hank_pull(Y):
        _, vjp = jax.vjp(hank_dense, h)
        return vjp(Y)

    hand = {
        "destructure": (hank_dense, h),
        "destructure_pullback": (hank_pull, Y),
        "matvec": (lambda h, v: hank_dense(h) @ v, h, v),
    }
    ours = {
        "destructure": (hankel.destructure, x),
        "destructure_pullback": (hankel.destructure_pullback, x, Y),
        "matvec": (hankel.matvec, x, v),
    }
    out.append(("Hankel", hand, ours))

    # Tridiagonal
    dl, dd, du = r(n - 1), r(n), r(n - 1)
    x = tridiagonal.Tridiagonal(dl=dl, d=dd, du=du)

    def tri_dense(dl, d, du):
        return jnp.diag(d) + jnp.diag(du, 1) + jnp.diag(dl, -1)

    def tri_mv(dl, d, du, v):
        return d * v + jnp.pad(du * v[1:], (0, 1)) + jnp.pad(dl * v[:-1], (1, 0))

    hand = {
        "destructure": (tri_dense, dl, dd, du),
        "destructure_pullback": (lambda Y: (jnp.diagonal(Y, -1), jnp.diagonal(Y), jnp.diagonal(Y, 1)), Y),
        "project": (lambda Y: tri_dense(jnp.diagonal(Y, -1), jnp.diagonal(Y), jnp.diagonal(Y, 1)), Y),
        "matvec": (tri_mv, dl, dd, du, v),
    }
    ours = {
        "destructure": (tridiagonal.destructure, x),
        "destructure_pullback": (tridiagonal.destructure_pullback, x, Y),
        "project": (tridiagonal.project, x, Y),
        "matvec": (tridiagonal.matvec, x, v),
    }
    out.append(("Tridiagonal", hand, ours))

    # grad of a loss through matvec (SymTridiagonal), and vmap over a batch
    dv, ev = r(n), r(n - 1)
    x = sym_tridiagonal.SymTridiagonal(dv=dv, ev=ev)

    def st_mv(dv, ev, v):
        return dv * v + jnp.pad(ev * v[1:], (0, 1)) + jnp.pad(ev * v[:-1], (1, 0))

    hand = {"grad through matvec": (jax.grad(lambda f, v: jnp.sum(st_mv(*f, v) ** 2)), (dv, ev), v)}
    ours = {"grad through matvec": (jax.grad(lambda x, v: jnp.sum(sym_tridiagonal.matvec(x, v) ** 2)), x, v)}
    out.append(("SymTridiagonal", hand, ours))

    m = 256
    datas = r(batch, m, m)
    Ys = r(batch, m, m)
    xs = jax.vmap(lambda a: symmetric.Symmetric(data=a))(datas)
    hand = {f"vmap {batch} × project (n={m})": (jax.vmap(lambda Y: (Y + Y.T) / 2), Ys),
            f"vmap {batch} × destructure (n={m})": (jax.vmap(sym_dense), datas)}
    ours = {f"vmap {batch} × project (n={m})": (jax.vmap(symmetric.project), xs, Ys),
            f"vmap {batch} × destructure (n={m})": (jax.vmap(symmetric.destructure), xs)}
    out.append(("Symmetric batch", hand, ours))
    return out


def run(n=2000, batch=64, repeat=7):
    """Rows (type, map, ours ms, hand ms, ratio)."""
    import jax
    rows = []
    for name, hand, ours in cases(n, batch):
        for key in ours:
            fh, *ah = hand[key]
            fo, *ao = ours[key]
            th = timed(jax.jit(fh), *ah, repeat=repeat)
            to = timed(jax.jit(fo), *ao, repeat=repeat)
            rows.append((name, key, to * 1e3, th * 1e3, to / th))
    return rows


def table(rows, n, dtype, device) -> str:
    lines = [f"JAX target vs hand-written jnp, both under jit (n = {n}, {dtype}, {device}); target ratio ≤ 1.5",
             "", "| type | map | ours (ms) | hand jnp (ms) | ratio |", "|---|---|---|---|---|"]
    for name, key, to, th, ratio in rows:
        lines.append(f"| {name} | {key} | {to:.3f} | {th:.3f} | {ratio:.2f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--x64", action="store_true", help="float64 (default: JAX's float32)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import jax
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    rows = run(args.n if not args.quick else min(args.n, 500), args.batch, 3 if args.quick else 7)
    print(table(rows, args.n if not args.quick else min(args.n, 500), jnp.result_type(float).name,
                jax.devices()[0].platform))


if __name__ == "__main__":
    main()
