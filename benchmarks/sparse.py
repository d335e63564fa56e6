"""Sparse built-ins (issue #16) against scipy.sparse at nnz = 10⁶, numba target.

A 10⁶ × 10⁶ matrix with 10⁶ entries at uniformly random positions (so almost
every row holds one entry: the per-row cost of CSR shows). SparseCOO is timed
with its entries in scipy's canonical order (row-major, what ``tocoo()`` of a
CSR matrix and ``from_scipy`` give) and in random order (each ``+=`` then
lands on a random row: two random accesses per entry instead of one). The
baseline is always scipy's CSR: ``A @ v`` and ``A.T @ v``. Every result is
checked against scipy's first; ratio = generated / scipy, in one run.

    python3 benchmarks/sparse.py            # prints a markdown section
    python3 benchmarks/sparse.py --quick

``benchmarks/run.py`` appends the same section to results.md (``section``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import scipy.sparse as sps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from generated import sparse_coo as C, sparse_csr as R  # noqa: E402

TARGET_RATIO = 1.5


def _best(f, repeat, min_time=0.3):
    f()
    times, spent = [], 0.0
    while len(times) < repeat or (spent < min_time and len(times) < 200):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
        spent += times[-1]
    return min(times)


def measure(n=10**6, nnz=10**6, quick=False):
    """[(label, generated s, scipy s)]; every result is checked first."""
    repeat = 5 if quick else 15
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, n, nnz), rng.integers(0, n, nnz)
    A = sps.coo_array((rng.standard_normal(nnz), (rows, cols)), shape=(n, n)).tocsr()
    AT = A.T
    S = A.tocoo()
    canonical = C.SparseCOO(vals=S.data, rows=S.row.astype(np.int64), cols=S.col.astype(np.int64), m=n, n=n)
    perm = rng.permutation(S.nnz)
    shuffled = C.SparseCOO(vals=S.data[perm], rows=S.row[perm].astype(np.int64),
                           cols=S.col[perm].astype(np.int64), m=n, n=n)
    csr = R.SparseCSR(vals=A.data, indptr=A.indptr.astype(np.int64), cols=A.indices.astype(np.int64), n=n)
    v, u = rng.standard_normal(n), rng.standard_normal(n)
    cases = [
        ("SparseCOO matvec, canonical order", lambda: C.matvec(canonical, v), lambda: A @ v),
        ("SparseCOO rmatvec, canonical order", lambda: C.rmatvec(canonical, u), lambda: AT @ u),
        ("SparseCOO matvec, random order", lambda: C.matvec(shuffled, v), lambda: A @ v),
        ("SparseCOO rmatvec, random order", lambda: C.rmatvec(shuffled, u), lambda: AT @ u),
        ("SparseCSR matvec", lambda: R.matvec(csr, v), lambda: A @ v),
        ("SparseCSR rmatvec", lambda: R.rmatvec(csr, u), lambda: AT @ u),
    ]
    out = []
    for label, ours, ref in cases:
        assert np.allclose(ours(), ref(), rtol=1e-10, atol=1e-12), label
        out.append((label, _best(ours, repeat), _best(ref, repeat)))
    return out


def section(quick=False):
    """The markdown lines of the section (a title, a table, the target)."""
    rows = measure(quick=quick)
    lines = ["## Sparse patterns: 10⁶ × 10⁶, nnz = 10⁶, numba target against scipy.sparse (CSR)", "",
             "Entries at random positions; SparseCOO in scipy's canonical (row-major) order and shuffled; "
             "every result checked equal to scipy's first; ratio = generated / scipy.", "",
             "| map | generated ms | scipy ms | ratio |", "|---|---|---|---|"]
    lines += [f"| {label} | {t * 1e3:.3g} | {r * 1e3:.3g} | {t / r:.3g} |" for label, t, r in rows]
    worst = max(t / r for label, t, r in rows[:2])
    verdict = "met" if worst <= TARGET_RATIO else "missed"
    lines += ["", f"Target (issue #16): SparseCOO matvec and rmatvec ≤ {TARGET_RATIO:g}× scipy's CSR "
                  f"(canonical order): worst {worst:.3g}×, {verdict}.", ""]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    print("\n".join(section(args.quick)))


if __name__ == "__main__":
    main()
