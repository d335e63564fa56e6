"""Hand-written dense matrices for every built-in spec (the independent oracle).

Each entry: module name, class name, field order, a maker of random fields
for a size configuration, the dense function, and size configurations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg


@dataclass(frozen=True)
class Reference:
    module: str
    cls: str
    order: tuple
    make: object          # (rng, **sizes) -> dict of fields (and size keywords under "_sizes")
    dense: object         # fields dict -> ndarray
    sizes: tuple          # tuple of dicts
    analytic: bool = False  # dense works on complex input: J by complex step


def _banded_dense(f, m, n, kl, ku):
    data = f["data"]
    A = np.zeros((m, n))
    for j in range(n):
        for i in range(max(0, j - ku), min(m, j + kl + 1)):
            A[i, j] = data[ku + i - j, j]
    return A


def _square(n_list):
    return tuple({"n": n} for n in n_list)


REFERENCES = {
    "diagonal": Reference(
        "diagonal", "Diagonal", ("diag",),
        lambda rng, n: {"diag": rng.standard_normal(n)},
        lambda f: np.diag(f["diag"]),
        _square([0, 1, 2, 5])),
    "symmetric": Reference(
        "symmetric", "Symmetric", ("data",),
        lambda rng, n: {"data": rng.standard_normal((n, n))},
        lambda f: np.triu(f["data"]) + np.triu(f["data"], 1).T,
        _square([0, 1, 2, 5])),
    "upper_triangular": Reference(
        "upper_triangular", "UpperTriangular", ("data",),
        lambda rng, n: {"data": rng.standard_normal((n, n))},
        lambda f: np.triu(f["data"]),
        _square([1, 2, 5])),
    "lower_triangular": Reference(
        "lower_triangular", "LowerTriangular", ("data",),
        lambda rng, n: {"data": rng.standard_normal((n, n))},
        lambda f: np.tril(f["data"]),
        _square([1, 2, 5])),
    "unit_upper_triangular": Reference(
        "unit_upper_triangular", "UnitUpperTriangular", ("data",),
        lambda rng, n: {"data": rng.standard_normal((n, n))},
        lambda f: np.triu(f["data"], 1) + np.eye(len(f["data"])),
        _square([1, 2, 5])),
    "bidiagonal": Reference(
        "bidiagonal", "Bidiagonal", ("dv", "ev"),
        lambda rng, n: {"dv": rng.standard_normal(n), "ev": rng.standard_normal(n - 1)},
        lambda f: np.diag(f["dv"]) + np.diag(f["ev"], 1),
        _square([1, 2, 5])),
    "tridiagonal": Reference(
        "tridiagonal", "Tridiagonal", ("dl", "d", "du"),
        lambda rng, n: {"dl": rng.standard_normal(n - 1), "d": rng.standard_normal(n),
                        "du": rng.standard_normal(n - 1)},
        lambda f: np.diag(f["d"]) + np.diag(f["du"], 1) + np.diag(f["dl"], -1),
        _square([1, 2, 5])),
    "sym_tridiagonal": Reference(
        "sym_tridiagonal", "SymTridiagonal", ("dv", "ev"),
        lambda rng, n: {"dv": rng.standard_normal(n), "ev": rng.standard_normal(n - 1)},
        lambda f: np.diag(f["dv"]) + np.diag(f["ev"], 1) + np.diag(f["ev"], -1),
        _square([1, 2, 5])),
    "fill": Reference(
        "fill", "Fill", ("value",),
        lambda rng, m, n: {"value": float(rng.standard_normal()), "_sizes": {"m": m, "n": n}},
        None,  # needs the sizes: see instance()
        ({"m": 1, "n": 1}, {"m": 3, "n": 4}, {"m": 0, "n": 2}, {"m": 5, "n": 2})),
    "toeplitz": Reference(
        "toeplitz", "Toeplitz", ("col", "row"),
        lambda rng, n: {"col": rng.standard_normal(n), "row": rng.standard_normal(n)},
        lambda f: (scipy.linalg.toeplitz(f["col"], np.r_[f["col"][:1], f["row"][1:]])
                   if len(f["col"]) else np.zeros((0, 0))),
        _square([0, 1, 2, 5])),
    "banded": Reference(
        "banded", "Banded", ("data",),
        lambda rng, m, n, kl, ku: {"data": rng.standard_normal((kl + ku + 1, n)),
                                   "_sizes": {"m": m, "kl": kl, "ku": ku}},
        None,  # needs the sizes: see dense_of
        ({"m": 5, "n": 5, "kl": 1, "ku": 2}, {"m": 6, "n": 4, "kl": 2, "ku": 0},
         {"m": 3, "n": 5, "kl": 0, "ku": 1}, {"m": 1, "n": 1, "kl": 0, "ku": 0})),
    "dense": Reference(
        "dense", "Dense", ("data",),
        lambda rng, m, n: {"data": rng.standard_normal((m, n))},
        lambda f: np.array(f["data"], dtype=float),
        ({"m": 1, "n": 1}, {"m": 3, "n": 2}, {"m": 0, "n": 3})),
    "hankel": Reference(
        "hankel", "Hankel", ("h",),
        lambda rng, n: {"h": rng.standard_normal(2 * n - 1)},
        lambda f: scipy.linalg.hankel(f["h"][: (len(f["h"]) + 1) // 2], f["h"][(len(f["h"]) - 1) // 2:]),
        _square([1, 2, 5])),
    # complex types (tests/test_complex.py gives them complex fields; real ones here)
    "hermitian": Reference(
        "hermitian", "Hermitian", ("data",),
        lambda rng, n: {"data": rng.standard_normal((n, n))},
        lambda f: (np.triu(f["data"], 1) + np.triu(f["data"], 1).conj().T
                   + np.diag(np.diagonal(f["data"]).real)),
        _square([0, 1, 2, 5])),
    "complex_symmetric": Reference(
        "complex_symmetric", "ComplexSymmetric", ("data",),
        lambda rng, n: {"data": rng.standard_normal((n, n))},
        lambda f: np.triu(f["data"]) + np.triu(f["data"], 1).T,
        _square([1, 2, 5])),
    "circulant": Reference(
        "circulant", "Circulant", ("c",),
        lambda rng, n: {"c": rng.standard_normal(n)},
        lambda f: scipy.linalg.circulant(f["c"]) if len(f["c"]) else np.zeros((0, 0)),
        _square([0, 1, 2, 5])),
    # J depends on x: the dense functions take complex input (complex-step J)
    "scaled_matrix": Reference(
        "scaled_matrix", "ScaledMatrix", ("scale", "data"),
        lambda rng, m, n: {"scale": 1.5 + rng.random(), "data": rng.standard_normal((m, n))},
        lambda f: f["scale"] * f["data"],
        ({"m": 1, "n": 1}, {"m": 3, "n": 4}, {"m": 0, "n": 2}), analytic=True),
    "low_rank": Reference(
        "low_rank", "LowRank", ("U", "V"),
        lambda rng, m, n, r: {"U": rng.standard_normal((m, r)), "V": rng.standard_normal((n, r))},
        lambda f: f["U"] @ f["V"].T,
        ({"m": 4, "n": 3, "r": 2}, {"m": 5, "n": 5, "r": 1}, {"m": 3, "n": 2, "r": 3}, {"m": 2, "n": 2, "r": 0}),
        analytic=True),
    "diagonal_plus_low_rank": Reference(
        "diagonal_plus_low_rank", "DiagonalPlusLowRank", ("d", "U", "V"),
        lambda rng, n, r: {"d": rng.standard_normal(n), "U": rng.standard_normal((n, r)),
                           "V": rng.standard_normal((n, r))},
        lambda f: np.diag(f["d"]) + f["U"] @ f["V"].T,
        ({"n": 4, "r": 1}, {"n": 5, "r": 2}, {"n": 1, "r": 1}), analytic=True),
    "woodbury_pd_mat": Reference(
        "woodbury_pd_mat", "WoodburyPDMat", ("A", "d", "s"),
        lambda rng, n, r: {"A": rng.standard_normal((n, r)), "d": 0.5 + rng.random(r), "s": 0.5 + rng.random(n)},
        lambda f: f["A"] @ np.diag(f["d"]) @ f["A"].T + np.diag(f["s"]),
        ({"n": 4, "r": 2}, {"n": 5, "r": 1}, {"n": 3, "r": 3}), analytic=True),
    "kronecker_product": Reference(
        "kronecker_product", "KroneckerProduct", ("A", "B"),
        lambda rng, ma, na, mb, nb: {"A": rng.standard_normal((ma, na)), "B": rng.standard_normal((mb, nb))},
        lambda f: np.kron(f["A"], f["B"]),
        ({"ma": 2, "na": 3, "mb": 3, "nb": 2}, {"ma": 2, "na": 2, "mb": 2, "nb": 2}, {"ma": 1, "na": 1, "mb": 3, "nb": 1}),
        analytic=True),
    "cholesky_factor": Reference(
        "cholesky_factor", "CholeskyFactor", ("L",),
        # a well-conditioned factor: the diagonal kept away from zero
        lambda rng, n: {"L": rng.standard_normal((n, n)) + np.diag(1.0 + rng.random(n))},
        lambda f: np.tril(f["L"]) @ np.tril(f["L"]).T,
        _square([1, 2, 5]), analytic=True),
    "positive_diagonal": Reference(
        "positive_diagonal", "PositiveDiagonal", ("logd",),
        lambda rng, n: {"logd": rng.standard_normal(n)},
        lambda f: np.diag(np.exp(f["logd"])),
        _square([0, 1, 2, 5]), analytic=True),
}


def instance(ref: Reference, rng, sizes: dict):
    """(constructor keywords, dense function of a fields dict) for one configuration."""
    made = ref.make(rng, **sizes)
    extra = made.pop("_sizes", {})
    if ref.module == "banded":
        def dense(f, s=sizes):
            return _banded_dense(f, s["m"], s["n"], s["kl"], s["ku"])
    elif ref.module == "fill":
        def dense(f, s=sizes):
            return np.full((s["m"], s["n"]), f["value"])
    else:
        dense = ref.dense
    return made, extra, dense
