"""Specs whose J depends on x and that are not in specs/: products of field
elements, scalar couplings, reductions (nested, conditioned, with bounds that
depend on the indices), exp/log/sqrt, conditions on field values, min/max/abs
of fields. All are built in one CLI call and every map of the contract is
checked against dense functions written here: J by complex step where the
function is analytic, by central differences where it is piecewise linear,
and numpy's pinv."""

import numpy as np
import pytest

from helpers import assert_norm_close, check_derived_ops, expected_class, jacobian, jacobian_complex, load_module, struct_vec, unflatten


def _loops(shape, entry, dtype=float):
    A = np.zeros(shape, dtype=dtype)
    for i in range(shape[0]):
        for j in range(shape[1]):
            A[i, j] = entry(i, j)
    return A


def _cdtype(f):
    return complex if any(np.iscomplexobj(v) for v in f.values()) else float


# name: (spec text, maker(rng) -> (fields, extra), dense(fields), order, analytic)
CASES = {
    "Outer": ("""
sizes: [m, n]
fields: {u: [m], v: [n]}
size: [m, n]
getindex: "u[i] * v[j]"
""", lambda rng: ({"u": rng.standard_normal(4), "v": rng.standard_normal(3)}, {}),
        lambda f: np.outer(f["u"], f["v"]), ("u", "v"), True),
    "ExpScaledSymmetric": ("""
sizes: [n]
fields: {t: [], data: [n, n]}
size: [n, n]
getindex: "exp(t) * (data[i, j] if i <= j else data[j, i])"
""", lambda rng: ({"t": 0.3, "data": rng.standard_normal((4, 4))}, {}),
        lambda f: np.exp(f["t"]) * (np.triu(f["data"]) + np.triu(f["data"], 1).T), ("t", "data"), True),
    "TwoScalars": ("""
sizes: [m, n]
fields: {a: [], b: [], data: [m, n]}
size: [m, n]
getindex: "a * b * data[i, j]"
""", lambda rng: ({"a": 1.3, "b": -0.7, "data": rng.standard_normal((3, 2))}, {}),
        lambda f: f["a"] * f["b"] * f["data"], ("a", "b", "data"), True),
    "AffineScalar": ("""
sizes: [m, n]
fields: {s: [], data: [m, n], t: []}
size: [m, n]
getindex: "s * data[i, j] + t"
""", lambda rng: ({"s": 0.8, "data": rng.standard_normal((3, 3)), "t": 0.25}, {}),
        lambda f: f["s"] * f["data"] + f["t"], ("s", "data", "t"), True),
    "DiagFunctions": ("""
sizes: [n]
fields: {d: [n]}
size: [n, n]
getindex: "sqrt(d[i] ** 2 + 1) if i == j else (log(1 + d[j] ** 2) if j == i + 1 else 0)"
""", lambda rng: ({"d": rng.standard_normal(5)}, {}),
        lambda f: (np.diag(np.sqrt(f["d"] ** 2 + 1)) + np.diag(np.log(1 + f["d"][1:] ** 2), 1)), ("d",), True),
    "TripleProduct": ("""
sizes: [m, p, q, n]
fields: {A: [m, p], B: [p, q], C: [q, n]}
size: [m, n]
getindex: "sum(sum(A[i, k] * B[k, l] * C[l, j] for l in range(q)) for k in range(p))"
""", lambda rng: ({"A": rng.standard_normal((3, 2)), "B": rng.standard_normal((2, 2)),
                   "C": rng.standard_normal((2, 3))}, {}),
        lambda f: f["A"] @ f["B"] @ f["C"], ("A", "B", "C"), True),
    "SkipColumn": ("""
sizes: [n, r]
fields: {U: [n, r]}
size: [n, n]
getindex: "sum(U[i, k] * U[j, k] for k in range(r) if k != 1)"
""", lambda rng: ({"U": rng.standard_normal((4, 3))}, {}),
        lambda f: f["U"][:, [0, 2]] @ f["U"][:, [0, 2]].T, ("U",), True),
    "Convolution": ("""
sizes: [n]
fields: {a: [n], b: [n]}
size: [n, 1]
getindex: "sum(a[k] * b[i - k] for k in range(i + 1))"
""", lambda rng: ({"a": rng.standard_normal(4), "b": rng.standard_normal(4)}, {}),
        lambda f: np.convolve(f["a"], f["b"])[:4].reshape(4, 1), ("a", "b"), True),
    "WrapSum": ("""
sizes: [n]
fields: {c: [n]}
size: [n, n]
getindex: "sum(c[k - 1] * c[i] for k in range(j + 1))"
""", lambda rng: ({"c": rng.standard_normal(3)}, {}),
        lambda f: _loops((3, 3), lambda i, j: sum(f["c"][k - 1] * f["c"][i] for k in range(j + 1)),
                         _cdtype(f)), ("c",), True),
    "ScaledLowRank": ("""
sizes: [m, n, r]
fields: {s: [], U: [m, r], V: [n, r]}
size: [m, n]
getindex: "s * sum(U[i, k] * V[j, k] for k in range(r))"
""", lambda rng: ({"s": 1.4, "U": rng.standard_normal((3, 2)), "V": rng.standard_normal((4, 2))}, {}),
        lambda f: f["s"] * f["U"] @ f["V"].T, ("s", "U", "V"), True),
    "ExpOfSum": ("""
sizes: [m, n, r]
fields: {U: [m, r], V: [n, r]}
size: [m, n]
getindex: "exp(sum(U[i, k] * V[j, k] for k in range(r)) / 4)"
""", lambda rng: ({"U": rng.standard_normal((3, 2)), "V": rng.standard_normal((2, 2))}, {}),
        lambda f: np.exp(f["U"] @ f["V"].T / 4), ("U", "V"), True),
    "DivisionAndPower": ("""
sizes: [m, n]
fields: {data: [m, n], s: [], c: [m]}
size: [m, n]
getindex: "data[i, j] / s + c[i] ** 3"
""", lambda rng: ({"data": rng.standard_normal((3, 2)), "s": 1.7, "c": rng.standard_normal(3)}, {}),
        lambda f: f["data"] / f["s"] + (f["c"] ** 3)[:, None], ("data", "s", "c"), True),
    "UpperLowRank": ("""
sizes: [n, r]
fields: {U: [n, r], V: [n, r]}
size: [n, n]
getindex: "sum(U[i, k] * V[j, k] for k in range(r)) if i <= j else 0"
""", lambda rng: ({"U": rng.standard_normal((4, 2)), "V": rng.standard_normal((4, 2))}, {}),
        lambda f: np.triu(f["U"] @ f["V"].T), ("U", "V"), True),
    "ScalarProduct": ("""
fields: {a: [], b: []}
size: [1, 1]
getindex: "a * b"
""", lambda rng: ({"a": 2.0, "b": -3.0}, {}),
        lambda f: np.array([[f["a"] * f["b"]]]), ("a", "b"), True),
    "SmallCoupled": ("""
sizes: [n]
fields: {M: [2, 2], d: [n]}
size: [n, n]
getindex: "d[i] * M[0, 0] + M[1, 1] if i == j else M[0, 1] * M[1, 0]"
""", lambda rng: ({"M": rng.standard_normal((2, 2)), "d": rng.standard_normal(3)}, {}),
        lambda f: (np.diag(f["d"] * f["M"][0, 0] + f["M"][1, 1])
                   + (1 - np.eye(3)) * f["M"][0, 1] * f["M"][1, 0]), ("M", "d"), True),
    "IntegerArithmetic": ("""
sizes: [n]
fields: {d: [n], s: []}
size: [n, n]
getindex: "d[i] * (i + 1) ** -2 + 2 ** (40 * j) * s + (j + 1) ** 0.5 * d[j] ** 2 + sum(d[k] / (k + 1) for k in range(i))"
""", lambda rng: ({"d": rng.standard_normal(4), "s": 0.5}, {}),
        lambda f: _loops((4, 4), lambda i, j: (f["d"][i] * (i + 1) ** -2.0 + 2.0 ** (40 * j) * f["s"]
                                               + (j + 1) ** 0.5 * f["d"][j] ** 2
                                               + sum(f["d"][k] / (k + 1) for k in range(i))), _cdtype(f)),
        ("d", "s"), True),
    "CountedIndex": ("""
sizes: [n]
fields: {d: [n]}
size: [n, n]
getindex: "d[sum(1 for k in range(i) if k % 3 == 0)] * d[j] + sum(d[l] for l in range(sum(1 for k in range(j) if k % 2 == 1)))"
""", lambda rng: ({"d": rng.standard_normal(5)}, {}),
        lambda f: _loops((5, 5), lambda i, j: (f["d"][sum(1 for k in range(i) if k % 3 == 0)] * f["d"][j]
                                               + sum(f["d"][m] for m in range(sum(1 for k in range(j) if k % 2 == 1)))),
                         _cdtype(f)), ("d",), True),
    "SumBounds": ("""
sizes: [n]
fields: {d: [n]}
size: [n, n]
getindex: "d[j] if j >= sum(1 for k in range(i) if k % 2 == 0) else (d[i] if i == sum(1 for k in range(j)) else 0)"
""", lambda rng: ({"d": rng.standard_normal(5)}, {}),
        lambda f: _loops((5, 5), lambda i, j: (f["d"][j] if j >= sum(1 for k in range(i) if k % 2 == 0)
                                               else (f["d"][i] if i == j else 0)), _cdtype(f)), ("d",), True),
    # piecewise linear in the fields: central differences are exact away from the kinks
    "SignedDiagonal": ("""
sizes: [n]
fields: {d: [n]}
size: [n, n]
getindex: "(d[i] if d[i] > 0 else -2 * d[i]) if i == j else 0"
""", lambda rng: ({"d": np.array([1.5, -0.5, 2.0, -1.0])}, {}),
        lambda f: np.diag(np.where(f["d"] > 0, f["d"], -2 * f["d"])), ("d",), False),
    "MaxAbs": ("""
sizes: [m, n]
fields: {a: [m], b: [n]}
size: [m, n]
getindex: "max(a[i], b[j]) + abs(a[i] - 2 * b[j])"
""", lambda rng: ({"a": np.array([0.3, -1.2, 2.1]), "b": np.array([0.7, -0.4])}, {}),
        lambda f: np.maximum.outer(f["a"], f["b"]) + np.abs(np.subtract.outer(f["a"], 2 * f["b"])),
        ("a", "b"), False),
    "SumCondition": ("""
sizes: [n, r]
fields: {U: [n, r]}
size: [n, n]
getindex: "U[i, 0] * U[j, 1] if sum(U[i, k] for k in range(r)) > 0 else U[j, 0]"
""", lambda rng: ({"U": np.array([[1.0, 0.5, -0.2], [-1.0, 0.2, 0.1], [0.4, -1.1, 2.0]])}, {}),
        lambda f: _loops((3, 3), lambda i, j: f["U"][i, 0] * f["U"][j, 1] if f["U"][i].sum() > 0 else f["U"][j, 0]),
        ("U",), False),
}


@pytest.fixture(scope="module")
def modules(build_specs_once):
    out = build_specs_once({f"{name}.yaml": f"name: {name}\n" + text.lstrip() for name, (text, *_rest) in CASES.items()})
    return {p.stem: load_module(str(p)) for p in out.iterdir() if p.suffix == ".py" and p.name != "__init__.py"}


def _snake(name):
    import re
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _close(got, want, what):
    assert_norm_close(got, want, what)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_map_against_the_oracle(modules, name):
    text, make, dense, order, analytic = CASES[name]
    mod = modules[_snake(name)]
    cls = getattr(mod, name)
    rng = np.random.default_rng(len(name))
    fields, extra = make(rng)
    x = cls(**fields, **extra)
    J = jacobian_complex(dense, fields, order) if analytic else jacobian(dense, fields, order, step=1e-4)
    P = np.linalg.pinv(J)
    Y = dense(fields)
    _close(mod.destructure(x), Y, "destructure")
    t = rng.standard_normal(J.shape[1])
    tx = cls(**unflatten(t, fields, order), **extra)
    Ybar = rng.standard_normal(Y.shape)
    _close(mod.destructure_pushforward(x, tx), J @ t, "destructure_pushforward")
    _close(struct_vec(mod.destructure_pullback(x, Ybar), order), J.T @ Ybar.ravel(), "destructure_pullback")
    _close(struct_vec(mod.restructure_pushforward(x, Ybar), order), P @ Ybar.ravel(), "restructure_pushforward")
    _close(mod.restructure_pullback(x, tx), P.T @ t, "restructure_pullback")
    _close(mod.project(x, Ybar), J @ P @ Ybar.ravel(), "project")
    assert mod.parametrisation(x) == expected_class(J)
    check_derived_ops(mod, x, np.asarray(Y, dtype=float), J, order, rng, rtol=1e-9)


def test_kinds_cover_bordered_and_general(modules):
    kinds = {name: modules[_snake(name)]._KIND for name in CASES}
    assert kinds["ExpScaledSymmetric"] == "bordered"
    assert kinds["TwoScalars"] == "bordered"
    assert kinds["SmallCoupled"] == "bordered"
    assert kinds["TripleProduct"] == "general"
    assert kinds["Outer"] == "general"
