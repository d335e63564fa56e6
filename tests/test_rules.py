"""rulegen.rules against finite differences of dense functions written here,
evaluated through the hand-written dense matrices of tests/references.py
(never through the code under test)."""

import numpy as np
import pytest

from helpers import flatten, generated, struct_vec, unflatten
from references import REFERENCES, instance
from rulegen import rules


def _fd_grad(loss, fields, order, h=1e-6):
    """∂loss/∂θ by central differences."""
    theta = flatten(fields, order)
    g = np.zeros_like(theta)
    for k in range(theta.size):
        e = np.zeros_like(theta)
        e[k] = h
        g[k] = (loss(unflatten(theta + e, fields, order)) - loss(unflatten(theta - e, fields, order))) / (2 * h)
    return g


def _setup(key, sizes, seed=0):
    ref = REFERENCES[key]
    rng = np.random.default_rng(seed)
    fields, extra, dense = instance(ref, rng, sizes)
    mod = generated(ref.module)
    return mod, getattr(mod, ref.cls)(**fields, **extra), fields, dense, ref.order, rng


CASES = [("symmetric", {"n": 4}), ("sym_tridiagonal", {"n": 5}), ("toeplitz", {"n": 3}),
         ("diagonal_plus_low_rank", {"n": 4, "r": 1}), ("scaled_matrix", {"m": 3, "n": 3}),
         ("low_rank", {"m": 4, "n": 3, "r": 2})]
SQUARE = [c for c in CASES if c[0] not in ("low_rank", "diagonal_plus_low_rank")]


@pytest.mark.parametrize("key,sizes", CASES)
def test_lift_reverse_structural_and_natural(key, sizes):
    mod, x, fields, dense, order, rng = _setup(key, sizes)
    W = rng.standard_normal(x.shape)

    def f_dense(Y):
        return np.sum(np.sin(Y) * W), lambda obar: obar * np.cos(Y) * W

    value, pullback = rules.lift(f_dense, mod)(x)
    assert value == pytest.approx(f_dense(dense(fields))[0])
    want = _fd_grad(lambda f: f_dense(dense(f))[0], fields, order)
    np.testing.assert_allclose(struct_vec(pullback(1.0), order), want, atol=1e-7)
    # natural: J (JᵀJ)⁺ θ̄, the element of the tangent space whose pairing with
    # every tangent J θ̇ equals θ̄ · θ̇ (checked against pinv of the oracle J)
    from helpers import jacobian_complex
    J = jacobian_complex(dense, fields, order)
    natural = pullback(1.0, natural=True)
    np.testing.assert_allclose(natural.ravel(), np.linalg.pinv(J).T @ want, atol=1e-6)


def test_lift_natural_symmetric_is_the_symmetrised_gradient():
    mod, x, fields, dense, order, rng = _setup("symmetric", {"n": 4})
    G = rng.standard_normal((4, 4))
    _, pullback = rules.lift(lambda Y: (np.sum(Y * G), lambda o: o * G), mod)(x)
    np.testing.assert_allclose(pullback(1.0, natural=True), (G + G.T) / 2, atol=1e-12)


def test_lift_structured_output_enters_through_restructure_pullback():
    """y = Symmetric(triu(Y @ Y)) for a Symmetric x; loss = ⟨w, y.data⟩ with a
    structural cotangent w."""
    mod = generated("symmetric")
    rng = np.random.default_rng(3)
    data = rng.standard_normal((4, 4))
    x = mod.Symmetric(data=data)
    w = rng.standard_normal((4, 4))

    def make(Z):
        return mod.Symmetric(data=np.triu(Z))

    y, pullback = rules.lift(lambda Y: (Y @ Y, lambda Z: Z @ Y.T + Y.T @ Z), mod, output=(mod, make))(x)
    assert isinstance(y, mod.Symmetric)

    def loss(f):
        S = np.triu(f["data"]) + np.triu(f["data"], 1).T
        return np.sum(w * np.triu(S @ S))

    want = _fd_grad(loss, {"data": data}, ("data",))
    got = pullback(mod.Symmetric(data=w))
    # the structured output's cotangent is exact on its tangent space: the upper triangle
    np.testing.assert_allclose(np.triu(got.data).ravel(), np.triu(want.reshape(4, 4)).ravel(), atol=1e-6)


@pytest.mark.parametrize("key,sizes", CASES)
def test_lift_forward(key, sizes):
    mod, x, fields, dense, order, rng = _setup(key, sizes)
    t = rng.standard_normal(flatten(fields, order).size)
    dx = type(x)(**unflatten(t, fields, order))
    out, out_dot = rules.lift_forward(lambda Y, Yd: (np.sum(Y ** 2), np.sum(2 * Y * Yd)), mod)(x, dx)
    h = 1e-6
    theta = flatten(fields, order)
    fd = (np.sum(dense(unflatten(theta + h * t, fields, order)) ** 2)
          - np.sum(dense(unflatten(theta - h * t, fields, order)) ** 2)) / (2 * h)
    assert out_dot == pytest.approx(fd, rel=1e-6, abs=1e-8)
    # a natural (dense) tangent goes straight in
    Yd = rng.standard_normal(x.shape)
    _, out_dot = rules.lift_forward(lambda Y, Ydot: (0.0, np.sum(Ydot)), mod)(x, Yd)
    assert out_dot == pytest.approx(np.sum(Yd))


@pytest.mark.parametrize("key,sizes", CASES)
def test_ready_rules_against_finite_differences(key, sizes):
    mod, x, fields, dense, order, rng = _setup(key, sizes)
    m, n = x.shape
    v = rng.standard_normal(n)
    vk = rng.standard_normal((n, 2))
    A = rng.standard_normal((m, n))
    checks = {
        "sum": (rules.sum(mod, x), lambda Y: np.sum(Y)),
        "trace": (rules.trace(mod, x), lambda Y: np.trace(Y)),
        "inner": (rules.inner(mod, x, A), lambda Y: np.sum(Y * A)),
    }
    if m == n:
        checks["quad"] = (rules.quad(mod, x, v), lambda Y: v @ Y @ v)
    for name, ((value, pullback), f) in checks.items():
        assert value == pytest.approx(f(dense(fields)), rel=1e-12, abs=1e-12), name
        got = pullback(1.0)
        got = got[0] if isinstance(got, tuple) else got
        np.testing.assert_allclose(struct_vec(got, order), _fd_grad(lambda fl: f(dense(fl)), fields, order),
                                   atol=1e-6, err_msg=name)
    # matvec / matmul: both cotangents
    ybar = rng.standard_normal((m, 2))
    y, pullback = rules.matmul(mod, x, vk)
    np.testing.assert_allclose(y, dense(fields) @ vk, atol=1e-12)
    xbar, vbar = pullback(ybar)
    np.testing.assert_allclose(struct_vec(xbar, order),
                               _fd_grad(lambda fl: np.sum(ybar * (dense(fl) @ vk)), fields, order), atol=1e-6)
    np.testing.assert_allclose(vbar, dense(fields).T @ ybar, atol=1e-12)


@pytest.mark.parametrize("key,sizes", SQUARE)
def test_dense_fallbacks(key, sizes):
    mod, x, fields, dense, order, rng = _setup(key, sizes, seed=1)
    n = x.shape[0]
    b = rng.standard_normal(n)
    zbar = rng.standard_normal(n)
    Wbar = rng.standard_normal((n, n))
    value, pullback = rules.logdet(mod, x)
    assert value == pytest.approx(np.linalg.slogdet(dense(fields))[1])
    np.testing.assert_allclose(struct_vec(pullback(1.0), order),
                               _fd_grad(lambda f: np.linalg.slogdet(dense(f))[1], fields, order), atol=1e-5)
    z, pullback = rules.solve(mod, x, b)
    xbar, bbar = pullback(zbar)
    np.testing.assert_allclose(struct_vec(xbar, order),
                               _fd_grad(lambda f: zbar @ np.linalg.solve(dense(f), b), fields, order), atol=1e-5)
    np.testing.assert_allclose(bbar, np.linalg.solve(dense(fields).T, zbar), atol=1e-10)
    W, pullback = rules.inv(mod, x)
    np.testing.assert_allclose(struct_vec(pullback(Wbar), order),
                               _fd_grad(lambda f: np.sum(Wbar * np.linalg.inv(dense(f))), fields, order), atol=1e-5)


def test_rules_refuse_other_types():
    sym = generated("symmetric")
    diag = generated("diagonal")
    with pytest.raises(TypeError, match="rules.sum: x must be of type Symmetric"):
        rules.sum(sym, diag.Diagonal(diag=[1.0]))
