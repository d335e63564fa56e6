"""Gather specs that are not in specs/: built on the fly, checked against
dense matrices written by hand here (Python indexing semantics included)."""

import numpy as np
import pytest

from helpers import build, check_all_maps


def _loops(shape, entry):
    A = np.zeros(shape)
    for i in range(shape[0]):
        for j in range(shape[1]):
            A[i, j] = entry(i, j)
    return A


CASES = {
    "anti_diagonal": (
        """
name: AntiDiagonal
sizes: [n]
fields: {a: [n]}
size: [n, n]
getindex: "a[i] if i + j == n - 1 else 0"
""",
        lambda rng, n: ({"a": rng.standard_normal(n)}, {}),
        lambda f, n: np.fliplr(np.diag(f["a"])) if n else np.zeros((0, 0)),
        ("a",)),
    "weighted_bidiagonal": (
        """
name: WeightedBidiagonal
sizes: [n]
fields: {d: [n]}
size: [n, n]
getindex: "2 * d[i] if i == j else (-d[j] if i == j + 1 else 0)"
""",
        lambda rng, n: ({"d": rng.standard_normal(n)}, {}),
        lambda f, n: 2 * np.diag(f["d"]) - np.diag(f["d"][:-1], -1),
        ("d",)),
    "symmetric_band": (
        """
name: SymBand
sizes: [n]
fields:
  b: [n, 3]
size: [n, n]
getindex: "b[min(i, j), abs(i - j)] if abs(i - j) <= 2 else 0"
""",
        lambda rng, n: ({"b": rng.standard_normal((n, 3))}, {}),
        lambda f, n: _loops((n, n), lambda i, j: f["b"][min(i, j), abs(i - j)] if abs(i - j) <= 2 else 0),
        ("b",)),
    "checkerboard": (
        """
name: Checker
sizes: [m]
fields: {c: [m]}
size: [2*m, 2*m]
getindex: "c[i // 2] if i % 2 == j % 2 else 0"
""",
        lambda rng, n: ({"c": rng.standard_normal(n)}, {}),
        lambda f, n: _loops((2 * n, 2 * n), lambda i, j: f["c"][i // 2] if i % 2 == j % 2 else 0),
        ("c",)),
    "cross": (
        """
name: Cross
sizes: [n]
fields: {d: [n]}
size: [n, n]
getindex: "d[i] if i == j or i + j == n - 1 else 0"
""",
        lambda rng, n: ({"d": rng.standard_normal(n)}, {}),
        lambda f, n: _loops((n, n), lambda i, j: f["d"][i] if (i == j or i + j == n - 1) else 0),
        ("d",)),
    "ramp": (
        """
name: Ramp
sizes: [m, n]
fields: {v: []}
size: [m, n]
getindex: "v * (i + 1) / n - 0.5"
""",
        lambda rng, n: ({"v": float(rng.standard_normal())}, {"m": n + 1, "n": n}),
        lambda f, n: _loops((n + 1, n), lambda i, j: f["v"] * (i + 1) / n - 0.5),
        ("v",)),
    "rect_band": (
        """
name: RectBand
sizes: [m, n, k]
fields: {x: [k]}
size: [m, n]
getindex: "x[j - i] if j >= i and j - i < k else 0"
""",
        lambda rng, n: ({"x": rng.standard_normal(3)}, {"m": n, "n": n + 2}),
        lambda f, n: _loops((n, n + 2), lambda i, j: f["x"][j - i] if (j >= i and j - i < 3) else 0),
        ("x",)),
    "arrow": (
        """
name: Arrow
sizes: [n]
fields: {r: [n], c: [n]}
size: [n, n]
getindex: "r[j] if i == 0 else (c[i] if j == 0 else 0)"
""",
        lambda rng, n: ({"r": rng.standard_normal(n), "c": rng.standard_normal(n)}, {}),
        lambda f, n: _loops((n, n), lambda i, j: f["r"][j] if i == 0 else (f["c"][i] if j == 0 else 0)),
        ("r", "c")),
    "python_wrap": (
        """
name: Wrap
sizes: [n]
fields: {c: [n]}
size: [n, n]
getindex: "c[i - j]"
""",
        lambda rng, n: ({"c": rng.standard_normal(n)}, {}),
        lambda f, n: _loops((n, n), lambda i, j: f["c"][i - j]),   # Python's negative indexing
        ("c",)),
    "sum_coefficient": (
        """
name: SumCoef
sizes: [n]
fields: {d: [n]}
size: [n, n]
getindex: "sum(k for k in range(i + 1)) * d[i] if i == j else 0"
""",
        lambda rng, n: ({"d": rng.standard_normal(n)}, {}),
        lambda f, n: np.diag(f["d"] * np.array([sum(range(i + 1)) for i in range(n)], dtype=float)),
        ("d",)),
    "three_dim_exp": (
        """
name: ThreeDim
sizes: [p, q]
fields: {T: [p, q, 2]}
size: [p, q]
getindex: "exp(i) * T[i, j, (i + j) % 2] if not (i > j) else -T[i, j, 0] / 3"
""",
        lambda rng, n: ({"T": rng.standard_normal((n, n + 1, 2))}, {}),
        lambda f, n: _loops((n, n + 1), lambda i, j: np.exp(i) * f["T"][i, j, (i + j) % 2] if i <= j
                            else -f["T"][i, j, 0] / 3),
        ("T",)),
    "identity_no_fields": (
        """
name: Eye
sizes: [n]
fields: {}
size: [n, n]
getindex: "1 if i == j else 0"
""",
        lambda rng, n: ({}, {"n": n}),
        lambda f, n: np.eye(n),
        ()),
    "scalar_and_size_condition": (
        """
name: SizeCond
sizes: [n]
fields: {d: [n], s: []}
size: [n, n]
getindex: "d[i] if n > 2 and i == j else (s if i != j else 0)"
""",
        lambda rng, n: ({"d": rng.standard_normal(n), "s": float(rng.standard_normal())}, {}),
        lambda f, n: _loops((n, n), lambda i, j: f["d"][i] if (n > 2 and i == j) else (f["s"] if i != j else 0)),
        ("d", "s")),
}


@pytest.mark.parametrize("key", sorted(CASES))
@pytest.mark.parametrize("n", [1, 2, 5])
def test_unseen_gather_spec(build_once, key, n):
    text, make, dense, order = CASES[key]
    mod = build_once(text)
    cls = getattr(mod, text.split("name:")[1].split()[0])
    rng = np.random.default_rng(n)
    fields, extra = make(rng, n)
    check_all_maps(mod, cls, fields, extra, lambda f: dense(f, n), order)


def test_out_of_range_index_raises(build_once):
    mod = build_once("""
name: Shifted
sizes: [n]
fields: {d: [n]}
size: [n, n]
getindex: "d[i + 1] if i == j else 0"
""")
    x = mod.Shifted(d=[1.0, 2.0, 3.0])
    with pytest.raises(IndexError, match="reads d out of range"):
        mod.destructure(x)


def test_condition_with_exponential_dnf_builds_quickly_and_is_correct(tmp_path):
    """2**24 DNF terms: kept as one run-time test instead of being expanded."""
    cond = " and ".join(f"(i == {k} or j == {k})" for k in range(24))
    mod = build(tmp_path, f"""
name: AndOr
sizes: [n]
fields: {{d: [n]}}
size: [n, n]
getindex: "d[i] if {cond} else 0"
""")
    d = np.arange(1.0, 31.0)
    want = _loops((30, 30), lambda i, j: d[i] if all(i == k or j == k for k in range(24)) else 0)
    np.testing.assert_array_equal(mod.destructure(mod.AndOr(d=d)), want)
