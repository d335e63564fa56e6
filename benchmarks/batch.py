"""The numba target on batches and in float32, against hand-written numpy,
JAX (jit, float64) and PyTorch doing the same, all in this one process
(ratios within one run are what count):

* a batch of 64 Toeplitz n = 256 destructure_pullbacks (the structural
  cotangent: sums along the 2n - 1 diagonals of each Ȳ);
* a batch of 256 SymTridiagonal n = 2000 matvecs (one vector per instance);
* Symmetric project at n = 2000 in float32 against float64.

    python3 benchmarks/batch.py [--quick]

Prints a markdown section (benchmarks/run.py appends it to its results).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numba  # noqa: E402

from generated import sym_tridiagonal, symmetric, toeplitz  # noqa: E402

try:
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
except ImportError:      # pragma: no cover - optional peer
    jax = None
try:
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
except ImportError:      # pragma: no cover - optional peer
    torch = None

MIN_TIME = 0.3


def best(f, repeat=5):
    """Best time of at least ``repeat`` calls after a warm-up, repeating
    until MIN_TIME is spent (at most 300 calls)."""
    f()
    times, spent = [], 0.0
    while len(times) < repeat or (spent < MIN_TIME and len(times) < 300):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
        spent += times[-1]
    return min(times)


def check(got, want, what):
    got, want = np.asarray(got, float), np.asarray(want, float)
    err = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300)
    assert err < 1e-10, f"{what}: relative error {err:.1e}"


def toeplitz_rows(rng, B=64, n=256):
    col, row = rng.standard_normal((B, n)), rng.standard_normal((B, n))
    Y = rng.standard_normal((B, n, n))
    x = toeplitz.Toeplitz(col=col, row=row)

    def ours():
        g = toeplitz.destructure_pullback(x, Y)
        return np.concatenate((g.col, g.row), axis=-1)
    # numpy: every entry's diagonal d = i - j + n - 1, one bincount over the batch
    d = (np.arange(n)[:, None] - np.arange(n)[None, :] + n - 1)
    idx = (np.arange(B)[:, None, None] * (2 * n - 1) + d).ravel()

    def hand():
        s = np.bincount(idx, weights=Y.ravel(), minlength=B * (2 * n - 1)).reshape(B, 2 * n - 1)
        row_bar = s[:, n - 1::-1].copy()
        row_bar[:, 0] = 0.0
        return np.concatenate((s[:, n - 1:], row_bar), axis=-1)
    want = hand()
    check(ours(), want, "Toeplitz pullback")
    rows = [("numpy (bincount)", hand)]
    I, J = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    if jax is not None:
        ji, jj = jnp.asarray(I), jnp.asarray(J)

        def dense(c, r):
            return jnp.where(ji >= jj, c[jnp.maximum(ji - jj, 0)], r[jnp.maximum(jj - ji, 0)])
        f = jax.jit(jax.vmap(lambda c, r, W: jnp.concatenate(jax.vjp(dense, c, r)[1](W))))
        jc, jr, jY = jnp.asarray(col), jnp.asarray(row), jnp.asarray(Y)

        def run_jax():
            return jax.block_until_ready(f(jc, jr, jY))
        check(np.asarray(run_jax()), want, "JAX Toeplitz pullback")
        rows.append(("JAX jit(vmap(vjp))", run_jax))
    if torch is not None:
        ti, tj = torch.as_tensor(I), torch.as_tensor(J)
        lo, hi = (ti - tj).clamp(min=0), (tj - ti).clamp(min=0)
        mask = ti >= tj
        tY = torch.as_tensor(Y)

        def run_torch():
            c = torch.tensor(col, requires_grad=True)
            r = torch.tensor(row, requires_grad=True)
            Yd = torch.where(mask, c[:, lo], r[:, hi])
            gc, gr = torch.autograd.grad(Yd, (c, r), tY)
            return torch.cat((gc, gr), dim=-1)
        check(run_torch().numpy(), want, "PyTorch Toeplitz pullback")
        rows.append(("PyTorch autograd", run_torch))
    return f"batch of {B} Toeplitz n = {n}: destructure_pullback", ours, rows


def symtridiagonal_rows(rng, B=256, n=2000):
    dv, ev = rng.standard_normal((B, n)), rng.standard_normal((B, n - 1))
    v = rng.standard_normal((B, n, 1))
    x = sym_tridiagonal.SymTridiagonal(dv=dv, ev=ev)

    def ours():
        return sym_tridiagonal.matvec(x, v)[..., 0]
    w = v[..., 0]

    def hand():
        y = dv * w
        y[:, :-1] += ev * w[:, 1:]
        y[:, 1:] += ev * w[:, :-1]
        return y
    want = hand()
    check(ours(), want, "SymTridiagonal matvec")
    rows = [("numpy (three slices)", hand)]
    if jax is not None:
        f = jax.jit(lambda d, e, w: d * w + jnp.pad(e * w[:, 1:], ((0, 0), (0, 1))) + jnp.pad(e * w[:, :-1], ((0, 0), (1, 0))))
        jd, je, jw = jnp.asarray(dv), jnp.asarray(ev), jnp.asarray(w)

        def run_jax():
            return jax.block_until_ready(f(jd, je, jw))
        check(np.asarray(run_jax()), want, "JAX SymTridiagonal matvec")
        rows.append(("JAX jit", run_jax))
    if torch is not None:
        td, te, tw = torch.as_tensor(dv), torch.as_tensor(ev), torch.as_tensor(w)

        def run_torch():
            y = td * tw
            y[:, :-1] += te * tw[:, 1:]
            y[:, 1:] += te * tw[:, :-1]
            return y
        check(run_torch().numpy(), want, "PyTorch SymTridiagonal matvec")
        rows.append(("PyTorch", run_torch))
    return f"batch of {B} SymTridiagonal n = {n}: matvec", ours, rows


def main():
    global MIN_TIME
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing")
    args = parser.parse_args()
    if args.quick:
        MIN_TIME = 0.1
    rng = np.random.default_rng(0)
    threads = numba.get_num_threads()
    print("| workload | rulegen | baseline | baseline time | ratio |")
    print("|---|---|---|---|---|")
    for make in (toeplitz_rows, symtridiagonal_rows):
        title, ours, rows = make(rng)
        t_ours = best(ours)
        numba.set_num_threads(1)
        t_one = best(ours)
        numba.set_num_threads(threads)
        first = True
        for name, f in rows:
            t = best(f)
            print(f"| {title if first else ''} | {t_ours * 1e3:.3g} ms ({t_one * 1e3:.3g} ms on 1 thread) | "
                  f"{name} | {t * 1e3:.3g} ms | {t_ours / t:.2f}× |")
            first = False
    n = 2000
    data = rng.standard_normal((n, n))
    Y = rng.standard_normal((n, n))
    x64, x32 = symmetric.Symmetric(data=data), symmetric.Symmetric(data=data.astype(np.float32))
    Y32 = Y.astype(np.float32)
    p64, p32 = symmetric.project(x64, Y), symmetric.project(x32, Y32)
    assert p32.dtype == np.float32
    err = np.linalg.norm(p32 - p64) / np.linalg.norm(p64)
    t64 = best(lambda: symmetric.project(x64, Y))
    t32 = best(lambda: symmetric.project(x32, Y32))
    print(f"| Symmetric project n = {n}, float32 vs float64 | {t32 * 1e3:.3g} ms (float32) | float64 | "
          f"{t64 * 1e3:.3g} ms | {t32 / t64:.2f}× (relative difference {err:.1e}) |")
    print()
    print(f"numba {numba.__version__}, {numba.threading_layer()} threading layer, {threads} threads; "
          "ratio = rulegen / baseline, both in float64 but the last row.")


if __name__ == "__main__":
    main()
