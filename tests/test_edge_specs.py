"""Types found by a new user to break earlier versions, and their siblings,
against the independent oracle (dense matrices written by hand in numpy,
complex-step Jacobians, numpy.linalg.pinv), at the points that broke them:
a power with an index exponent at a node 0, coincident Cauchy nodes, a
value that vanishes once an index is pinned, a COO-style sum with repeated
coordinates. Kernels follow IEEE arithmetic (inf/nan, no Python exception)."""

import numpy as np
import pytest

from helpers import assert_norm_close, expected_class, jacobian_complex, load_module, struct_vec, unflatten
from poison import poisoned_empty

SPECS = {
    "vandermonde": """
name: Vandermonde
sizes: [n, m]
fields: {x: [n]}
size: [n, m]
getindex: "x[i] ** j"
""",
    "vandermonde_shifted": """
name: VandermondeShifted
sizes: [n]
fields: {x: [n], y: [n]}
size: [n, n]
getindex: "x[i] ** (j + 1) * y[j] + x[j] ** i"
""",
    "cauchy": """
name: Cauchy
sizes: [m, n]
fields: {x: [m], y: [n]}
size: [m, n]
getindex: "1 / (x[i] - y[j])"
""",
    "pinned_zero": """
name: PinnedZero
sizes: [n]
fields: {d: [n]}
size: [n, n]
getindex: "(i - j) * d[i] if i == j else d[j]"
""",
    "pinned_zero_band": """
name: PinnedZeroBand
sizes: [n]
fields: {d: [n], e: [n]}
size: [n, n]
getindex: "(j - i - 1) * e[i] if j == i + 1 else (d[i] if i == j else 2 * e[j])"
""",
    "coo": """
name: Coo
sizes: [m, n, nnz]
fields: {rows: [nnz], cols: [nnz], vals: [nnz]}
size: [m, n]
getindex: "sum(vals[k] for k in range(nnz) if rows[k] == i and cols[k] == j)"
""",
    "ieee": """
name: Ieee
sizes: [n]
fields: {x: [n]}
size: [n, 4]
getindex: "sqrt(x[i]) if j == 0 else (log(x[i]) if j == 1 else (x[i] ** -2 if j == 2 else 1 / x[i]))"
""",
}


@pytest.fixture(scope="module")
def mods(build_specs_once):
    out = build_specs_once({f"{name}.yaml": text for name, text in SPECS.items()})
    return {name: load_module(str(out / f"{name}.py")) for name in SPECS}


def check_against_oracle(mod, cls, fields, extra, dense, order, J=None, seed=0):
    """Every map against J (complex step unless given) and numpy's pinv, 1e-8 relative."""
    rng = np.random.default_rng(seed)
    x = cls(**fields, **extra)
    if J is None:
        J = jacobian_complex(dense, fields, order)
    P = np.linalg.pinv(J, rcond=1e-12)
    Y = np.asarray(dense(fields), dtype=float)
    with poisoned_empty(mod):
        assert_norm_close(mod.destructure(x), Y, "destructure", rtol=1e-12, atol=0)
    t = rng.standard_normal(J.shape[1])
    tx = cls(**unflatten(t, fields, order), **extra)
    W = rng.standard_normal(Y.shape)
    with poisoned_empty(mod):
        assert_norm_close(mod.destructure_pushforward(x, tx), J @ t, "destructure_pushforward")
    assert_norm_close(struct_vec(mod.destructure_pullback(x, W), order), J.T @ W.ravel(), "destructure_pullback")
    assert_norm_close(struct_vec(mod.restructure_pushforward(x, W), order), P @ W.ravel(), "restructure_pushforward")
    assert_norm_close(mod.restructure_pullback(x, tx), P.T @ t, "restructure_pullback")
    assert_norm_close(mod.project(x, W), J @ P @ W.ravel(), "project")
    assert mod.parametrisation(x) == expected_class(J)
    v = rng.standard_normal(Y.shape[1])
    u = rng.standard_normal(Y.shape[0])
    assert_norm_close(mod.matvec(x, v), Y @ v, "matvec")
    assert_norm_close(mod.rmatvec(x, u), Y.T @ u, "rmatvec")
    assert_norm_close(struct_vec(mod.bilinear_pullback(x, u, v), order), J.T @ np.outer(u, v).ravel(),
                      "bilinear_pullback")
    assert_norm_close(mod.diagonal(x), np.diagonal(Y), "diagonal")


@pytest.mark.parametrize("nodes", [[0.0, 1.5, -0.7, 2.0], [0.0], [-1.0, 0.0, 0.5]])
@pytest.mark.parametrize("m", [1, 2, 5])
def test_vandermonde_with_a_node_at_zero(mods, nodes, m):
    mod = mods["vandermonde"]
    x = np.array(nodes)

    def dense(f):
        return np.asarray(f["x"])[:, None] ** np.arange(m)[None, :]     # 0 ** 0 = 1

    check_against_oracle(mod, mod.Vandermonde, {"x": x}, {"m": m}, dense, ["x"])


def test_vandermonde_derivative_at_zero_is_the_power_rule(mods):
    """∂(x ** j)/∂x at x = 0 is 1 for j = 1 and 0 otherwise (no division by x)."""
    mod = mods["vandermonde"]
    x = mod.Vandermonde(x=[0.0, 0.0], m=4)
    Ydot = mod.destructure_pushforward(x, mod.Vandermonde(x=[1.0, 2.0], m=4))
    np.testing.assert_array_equal(Ydot, [[0, 1, 0, 0], [0, 2, 0, 0]])


def test_shifted_vandermonde_sibling(mods):
    mod = mods["vandermonde_shifted"]
    fields = {"x": np.array([0.0, 0.8, -1.2]), "y": np.array([1.0, 0.0, 2.0])}

    def dense(f):
        x, y = np.asarray(f["x"]), np.asarray(f["y"])
        i, j = np.indices((3, 3))
        return x[i] ** (j + 1) * y[j] + x[j] ** i

    check_against_oracle(mod, mod.VandermondeShifted, fields, {}, dense, ["x", "y"])


def _cauchy(f):
    return 1.0 / (np.asarray(f["x"])[:, None] - np.asarray(f["y"])[None, :])


def test_cauchy_away_from_coincident_nodes(mods):
    mod = mods["cauchy"]
    fields = {"x": np.array([0.1, 1.3, 2.2]), "y": np.array([0.5, -1.0, 3.1, 4.0])}
    check_against_oracle(mod, mod.Cauchy, fields, {}, _cauchy, ["x", "y"])


def test_cauchy_at_coincident_nodes_follows_ieee(mods):
    """Where x[i] == y[j] the entry is inf and its derivatives are not finite;
    no map raises, and the finite entries are exact."""
    mod = mods["cauchy"]
    x = mod.Cauchy(x=[1.0, 2.0], y=[1.0, 3.0])
    with np.errstate(divide="ignore"):
        want = _cauchy({"x": [1.0, 2.0], "y": [1.0, 3.0]})
    Y = mod.destructure(x)
    np.testing.assert_array_equal(Y, want)
    assert np.isposinf(Y[0, 0])
    dY = mod.destructure_pushforward(x, mod.Cauchy(x=[1.0, 0.0], y=[0.0, 0.0]))
    assert not np.isfinite(dY[0, 0])
    np.testing.assert_allclose(dY[0, 1], -1.0 / (1.0 - 3.0) ** 2)
    g = mod.destructure_pullback(x, np.eye(2))
    assert np.isfinite(g.x[1])
    mod.restructure_pushforward(x, np.ones((2, 2)))     # non-finite, but no exception
    mod.matvec(x, np.ones(2))


@pytest.mark.parametrize("n", [1, 2, 5])
def test_value_that_vanishes_on_its_pinned_diagonal(mods, n):
    mod = mods["pinned_zero"]

    def dense(f):
        d = np.asarray(f["d"])
        Y = np.tile(d[None, :], (len(d), 1))
        np.fill_diagonal(Y, 0.0)
        return Y

    check_against_oracle(mod, mod.PinnedZero, {"d": np.arange(1.0, n + 1)}, {}, dense, ["d"])


@pytest.mark.parametrize("n", [1, 2, 6])
def test_band_value_that_vanishes_once_pinned(mods, n):
    mod = mods["pinned_zero_band"]
    rng = np.random.default_rng(n)
    fields = {"d": rng.standard_normal(n), "e": rng.standard_normal(n)}

    def dense(f):
        d, e = np.asarray(f["d"]), np.asarray(f["e"])
        Y = np.zeros((n, n), dtype=np.result_type(d, e))
        for i in range(n):
            for j in range(n):
                Y[i, j] = 0.0 if j == i + 1 else (d[i] if i == j else 2 * e[j])
        return Y

    check_against_oracle(mod, mod.PinnedZeroBand, fields, {}, dense, ["d", "e"])


@pytest.mark.parametrize("rows,cols", [
    ([0, 2, 1, 2], [1, 0, 1, 0]),        # (2, 0) stored twice
    ([0], [0]),
    ([3, 3, 3], [2, 2, 2]),              # one entry, three times
])
def test_coo_sum_with_repeated_coordinates(mods, rows, cols):
    """Y[i, j] = Σ_k vals[k] [rows[k] == i and cols[k] == j]: J is a selection
    with sums over repeats; rows and cols are piecewise constant (zero columns)."""
    mod = mods["coo"]
    m, n, nnz = 4, 3, len(rows)
    rng = np.random.default_rng(nnz)
    vals = rng.standard_normal(nnz)
    fields = {"rows": np.array(rows, float), "cols": np.array(cols, float), "vals": vals}

    def dense(f):
        Y = np.zeros((m, n), dtype=np.asarray(f["vals"]).dtype)
        for r, c, v in zip(rows, cols, f["vals"]):
            Y[r, c] += v
        return Y

    Jv = jacobian_complex(lambda f: dense({"vals": f["vals"]}), {"vals": vals}, ["vals"])
    J = np.hstack([np.zeros((m * n, 2 * nnz)), Jv])
    check_against_oracle(mod, mod.Coo, fields, {"m": m, "n": n}, dense, ["rows", "cols", "vals"], J=J)


def test_kernels_follow_ieee_arithmetic(mods):
    """sqrt and log of negatives give nan, division by zero and negative
    powers of 0 give inf, in values and derivatives alike: never a Python
    ZeroDivisionError or ValueError from inside a kernel."""
    mod = mods["ieee"]
    x = mod.Ieee(x=[0.0, -1.0, 4.0])
    with np.errstate(all="ignore"):
        xs = np.array([0.0, -1.0, 4.0])
        want = np.stack([np.sqrt(xs), np.log(xs), 1.0 / xs ** 2, 1.0 / xs], axis=1)
    np.testing.assert_array_equal(mod.destructure(x), want)
    dY = mod.destructure_pushforward(x, mod.Ieee(x=[1.0, 1.0, 1.0]))
    assert not np.isfinite(dY[0]).any() and np.isfinite(dY[2]).all()     # inf or nan at 0
    np.testing.assert_allclose(dY[2], [0.25, 0.25, -2 / 64, -1 / 16])
    g = mod.destructure_pullback(x, np.ones((3, 4)))
    assert np.isfinite(g.x[2]) and not np.isfinite(g.x[0])
