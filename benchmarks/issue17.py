"""Issue #17's table: every row with its target, ratios against baselines
measured in the same run (numba target, float64, 2000 × 2000 unless named).

Rows: LowRank's closed-form J⁺ against a plain matrix-free LSQR; Kronecker's
matvec against the vec trick and its restructure maps against a copy of Y;
ScaledMatrix's restructure maps; Symmetric's project and pullback (and the
pullback against JAX's fused ``triu(Y) + triu(Y.T, 1)`` under jit); two
held-out types built here (skew-symmetric ``project``, circulant
``c[(j - i) % n]`` ``restructure_pushforward``); the call floor (Diagonal's
pullback at n = 4000 against numpy's ``diagonal(Y).copy()``). Every result is
checked against its baseline's first where the two compute the same thing.
The Gaussian log-likelihood row is benchmarks/rules.py's section.

    python3 benchmarks/issue17.py            # prints a markdown section
    python3 benchmarks/issue17.py --quick

``benchmarks/run.py`` appends the same section to results.md (``section``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import scipy.sparse.linalg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from generated import diagonal, kronecker_product, low_rank, scaled_matrix, symmetric  # noqa: E402

SKEW = """name: SkewSymmetric
sizes: [n]
fields:
  data: [n, n]
size: [n, n]
getindex: "data[i, j] if i < j else (-data[j, i] if i > j else 0)"
"""

CIRCULANT = """name: CirculantRow
sizes: [n]
fields:
  c: [n]
size: [n, n]
getindex: "c[(j - i) % n]"
"""

# why a row misses its target, and what would fix it (printed only for a miss)
WHY = {
    "held-out skew-symmetric project": "the fused kernel (rulegen/transpose.py) reads each 4 × 4 tile of Ȳ twice, "
                                       "straight and from its mirror, then writes once; pairing each tile with its "
                                       "mirror (Ȳ read once) gained about 3% in a hand-written kernel, so the rest "
                                       "is not yet explained (Symmetric, the same kernel with + instead of -, sits "
                                       "at the target's edge)",
    "Diagonal destructure_pullback": "the Python side of a call (argument checks, allocation, the numba "
                                     "dispatcher's type checks) is a few µs; a cached per-shape fast path or "
                                     "one compiled entry point per map would remove most of it",
}


def _best(f, repeat, min_time=0.2):
    f()
    times, spent = [], 0.0
    while len(times) < repeat or (spent < min_time and len(times) < 3000):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
        spent += times[-1]
    return min(times)


def _build(text, tmp):
    """A held-out spec built here with the CLI's compiler into ``tmp``."""
    from helpers import load_module
    from rulegen.cli import compile_spec
    path = os.path.join(tmp, text.split("\n", 1)[0].split(": ")[1].lower() + ".yaml")
    with open(path, "w") as fh:
        fh.write(text)
    (built,) = compile_spec(path)
    out = os.path.join(tmp, built.module)
    with open(out, "w") as fh:
        fh.write(built.source)
    return load_module(out)


def _lsqr_lowrank(U, V, Yb):
    """J⁺ᵀ θ̄ of Y = U Vᵀ by scipy's LSQR on the normal equations' transpose:
    minimum-norm Ȳ with Jᵀ Ȳ = θ̄ (J and Jᵀ as numpy products)."""
    m, r = U.shape
    n = V.shape[0]

    def jt(y):                        # Jᵀ: dense -> fields
        Y = y.reshape(m, n)
        return np.concatenate([(Y @ V).ravel(), (Y.T @ U).ravel()])

    def j(t):                         # J: fields -> dense
        dU, dV = t[:m * r].reshape(m, r), t[m * r:].reshape(n, r)
        return (dU @ V.T + U @ dV.T).ravel()
    op = scipy.sparse.linalg.LinearOperator((m * r + n * r, m * n), matvec=jt, rmatvec=j)
    return scipy.sparse.linalg.lsqr(op, Yb, atol=1e-12, btol=1e-12, iter_lim=10 * (m + n) * r)[0].reshape(m, n)


def measure(quick=False):
    """[(label, rulegen s, baseline label, baseline s, target ratio)]."""
    repeat = 3 if quick else 7
    rng = np.random.default_rng(0)
    rows = []

    def row(label, ours, base_label, base, target, check=None):
        if check is not None:
            got, want = check
            err = np.linalg.norm(np.ravel(got) - np.ravel(want)) / max(np.linalg.norm(np.ravel(want)), 1e-300)
            assert err < 1e-6, (label, err)
        rows.append((label, _best(ours, repeat), base_label, _best(base, repeat), target))

    # LowRank n = 200, r = 4: restructure_pullback against a plain matrix-free LSQR
    U, V = rng.standard_normal((200, 4)), rng.standard_normal((200, 4))
    x = low_rank.LowRank(U=U, V=V)
    tb = low_rank.LowRank(U=rng.standard_normal((200, 4)), V=rng.standard_normal((200, 4)))
    vec = np.concatenate([tb.U.ravel(), tb.V.ravel()])
    row("LowRank n=200 r=4 restructure_pullback", lambda: low_rank.restructure_pullback(x, tb),
        "scipy LSQR (numpy products)", lambda: _lsqr_lowrank(U, V, vec), 0.1,
        (low_rank.restructure_pullback(x, tb), _lsqr_lowrank(U, V, vec)))

    # KroneckerProduct 44² × 44²
    A, B = rng.standard_normal((44, 44)), rng.standard_normal((44, 44))
    x = kronecker_product.KroneckerProduct(A=A, B=B)
    v = rng.standard_normal(44 * 44)
    row("KroneckerProduct matvec", lambda: kronecker_product.matvec(x, v), "vec trick A V Bᵀ",
        lambda: (A @ v.reshape(44, 44) @ B.T).ravel(), 2.0,
        (kronecker_product.matvec(x, v), (A @ v.reshape(44, 44) @ B.T).ravel()))
    Y = rng.standard_normal((44 * 44, 44 * 44))
    for name, arg in (("restructure_pushforward", Y), ("restructure_pullback", x), ("project", Y)):
        f = getattr(kronecker_product, name)
        row(f"KroneckerProduct {name}", lambda f=f, arg=arg: f(x, arg), "Y.copy()", Y.copy, 10.0)

    # ScaledMatrix n = 2000
    n = 2000
    x = scaled_matrix.ScaledMatrix(scale=1.5, data=rng.standard_normal((n, n)))
    Y = rng.standard_normal((n, n))
    for name, arg in (("restructure_pushforward", Y), ("restructure_pullback", x)):
        f = getattr(scaled_matrix, name)
        row(f"ScaledMatrix {name}", lambda f=f, arg=arg: f(x, arg), "Y.copy()", Y.copy, 5.0)

    # Symmetric n = 2000
    x = symmetric.Symmetric(data=rng.standard_normal((n, n)))
    sym = (Y + Y.T) / 2
    np.fill_diagonal(sym, np.diagonal(Y))
    row("Symmetric project", lambda: symmetric.project(x, Y), "Y.copy()", Y.copy, 2.5,
        (symmetric.project(x, Y), sym))
    row("Symmetric destructure_pullback", lambda: symmetric.destructure_pullback(x, Y), "Y.copy()", Y.copy, 2.5)
    try:
        import jax
        import jax.numpy as jnp
        jax.config.update("jax_enable_x64", True)
        fused = jax.jit(lambda y: jnp.triu(y) + jnp.triu(y.T, 1))
        Yj = jnp.asarray(Y)
        want = np.asarray(fused(Yj))
        row("Symmetric destructure_pullback", lambda: symmetric.destructure_pullback(x, Y),
            "JAX jit triu(Y) + triu(Y.T, 1)", lambda: fused(Yj).block_until_ready(), 1.0,
            (symmetric.destructure_pullback(x, Y).data, want))
    except ImportError:      # pragma: no cover - optional peer
        pass

    with tempfile.TemporaryDirectory() as tmp:
        skew = _build(SKEW, tmp)
        x = skew.SkewSymmetric(data=rng.standard_normal((n, n)))
        want = (Y - Y.T) / 2
        row("held-out skew-symmetric project", lambda: skew.project(x, Y), "Y.copy()", Y.copy, 2.5,
            (skew.project(x, Y), want))
        row("held-out skew-symmetric project", lambda: skew.project(x, Y), "numpy (Y - Y.T) / 2",
            lambda: (Y - Y.T) / 2, 1.0)
        circ = _build(CIRCULANT, tmp)
        x = circ.CirculantRow(c=rng.standard_normal(n))
        idx = (np.arange(n)[None, :] - np.arange(n)[:, None]) % n
        want = np.bincount(idx.ravel(), Y.ravel(), n) / n
        row("held-out circulant c[(j - i) % n] restructure_pushforward", lambda: circ.restructure_pushforward(x, Y),
            "Y.sum() (one read of Y)", Y.sum, 2.0, (circ.restructure_pushforward(x, Y).c, want))

    # the call floor: Diagonal at n = 4000
    n = 4000
    x = diagonal.Diagonal(diag=rng.standard_normal(n))
    Y = rng.standard_normal((n, n))
    row("Diagonal destructure_pullback", lambda: diagonal.destructure_pullback(x, Y),
        "numpy diagonal(Y).copy()", lambda: np.diagonal(Y).copy(), 1.5,
        (diagonal.destructure_pullback(x, Y).diag, np.diagonal(Y)))
    return rows


def section(quick=False):
    """The markdown lines of the section (a title, a table, the misses)."""
    rows = measure(quick=quick)
    lines = ["## Issue #17: each row with its target (numba target, float64, 2 cores)", "",
             "Ratio = rulegen / baseline in one run; every result checked against the baseline's first where both "
             "compute the same thing.", "",
             "| row | rulegen ms | baseline | baseline ms | ratio | target | |",
             "|---|---|---|---|---|---|---|"]
    misses = []
    for label, t, base_label, b, target in rows:
        ok = t / b <= target
        lines.append(f"| {label} | {t * 1e3:.3g} | {base_label} | {b * 1e3:.3g} | {t / b:.3g} | ≤ {target:g} | "
                     f"{'met' if ok else 'missed'} |")
        if not ok and label not in [m for m, _ in misses]:
            misses.append((label, WHY.get(label, "not profiled yet")))
    if misses:
        lines += ["", "Misses:"] + [f"- {label}: {why}" for label, why in misses]
    lines.append("")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    print("\n".join(section(args.quick)))


if __name__ == "__main__":
    main()
