"""KroneckerProduct derived operations at A, B of 44 × 44 (Y = A ⊗ B is
1936 × 1936) against numpy's vec trick (issue #17, "separable entries"):

    matvec:            Y v   = vec(A V Bᵀ)        (V = v as 44 × 44, row-major)
    rmatvec:           Yᵀ u  = vec(Aᵀ U B)
    bilinear_pullback: Ā = Σ_k U_k B V_kᵀ, B̄ = Σ_k U_kᵀ A V_k   (U_k, V_k: column k as 44 × 44)

The generated modules detect the Kronecker term from getindex
(``A[i // mb, j // nb] * B[i % mb, j % nb]``, derive.Kron) and take it by
the vec trick on the small factors. Every route is checked equal to numpy's
first; ratio = route time / numpy's, in one run.

    python3 benchmarks/kron.py            # prints a markdown section
    python3 benchmarks/kron.py --quick

``benchmarks/run.py`` appends the same section to results.md (``section``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from generated import kronecker_product as K  # noqa: E402

TARGET_RATIO = 2.0


def _best(f, repeat, min_time=0.2):
    f()
    times, spent = [], 0.0
    while len(times) < repeat or (spent < min_time and len(times) < 2000):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
        spent += times[-1]
    return min(times)


def measure(n=44, quick=False):
    """[(label, generated s, numpy s)]; every result is checked first."""
    repeat = 5 if quick else 20
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    v, u = rng.standard_normal(n * n), rng.standard_normal(n * n)
    x = K.KroneckerProduct(A=A, B=B)
    assert K._KRON == 1
    V, U = v.reshape(n, n), u.reshape(n, n)
    cases = [
        ("matvec", lambda: K.matvec(x, v), lambda: (A @ V @ B.T).reshape(-1)),
        ("rmatvec", lambda: K.rmatvec(x, u), lambda: (A.T @ U @ B).reshape(-1)),
        ("bilinear_pullback (k = 1)", lambda: K.bilinear_pullback(x, u, v),
         lambda: (U @ B @ V.T, U.T @ A @ V)),
    ]
    rows = []
    for label, ours, ref in cases:
        got, want = ours(), ref()
        if isinstance(want, tuple):
            got = (got.A, got.B)
            for g, w in zip(got, want):
                assert np.allclose(g, w, rtol=1e-10, atol=1e-9), label
        else:
            assert np.allclose(got, want, rtol=1e-10, atol=1e-9), label
        rows.append((label, _best(ours, repeat), _best(ref, repeat)))
    return rows


def section(quick=False, n=44):
    """The markdown lines of the section (a title, a table, the target)."""
    rows = measure(n, quick)
    lines = [f"## Kronecker terms: KroneckerProduct, A and B {n} × {n} (Y {n * n} × {n * n}), numba target", "",
             "Generated map against numpy's vec trick on the factors (A V Bᵀ and friends); every result "
             "checked equal (1e-10) first; ratio = generated / numpy.", "",
             "| map | generated µs | numpy µs | ratio |", "|---|---|---|---|"]
    lines += [f"| {label} | {t * 1e6:.3g} | {r * 1e6:.3g} | {t / r:.3g} |" for label, t, r in rows]
    ratio = rows[0][1] / rows[0][2]
    verdict = "met" if ratio <= TARGET_RATIO else "missed"
    lines += ["", f"Target (issue #17): matvec ≤ {TARGET_RATIO:g}× the vec trick: {ratio:.3g}×, {verdict}.", ""]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("-n", type=int, default=44)
    args = parser.parse_args()
    print("\n".join(section(args.quick, args.n)))


if __name__ == "__main__":
    main()
