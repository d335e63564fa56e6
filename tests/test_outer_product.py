"""Rearranged outer products (issue #17, "ScaledMatrix and Kronecker restructure
maps"): when every entry is ``a[α(i, j)] · b[β(i, j)]`` and (i, j) -> (α, β)
is a bijection onto the pairs of elements, J θ̇ = ȧ bᵀ + a ḃᵀ up to a
rearrangement, and the numba target applies J⁺ = (JᵀJ)⁺ Jᵀ with the closed
form of rulegen.runtime.outer_gram_pinv (one pullback plus O(p)), (J⁺)ᵀ with
one pushforward. Detected from the entry (derive._outer_product), not by name.

Reference values: the Jacobian built column by column from the dense
functions written here, numpy.linalg.pinv; complex fields through the real
pairs (tests/complex_oracle.py)."""

import numpy as np
import pytest

from complex_oracle import Oracle
from helpers import check_all_maps, generated, struct_vec
from rulegen import runtime
from rulegen.derive import derive
from rulegen.spec import parse_spec

S = generated("scaled_matrix")
K = generated("kronecker_product")


def scaled_dense(f):
    return f["scale"] * f["data"]


def kron_dense(f):
    return np.kron(f["A"], f["B"])


@pytest.mark.parametrize("scale, shape", [(1.7, (3, 4)), (-0.4, (1, 5)), (0.0, (3, 2)), (2.0, (1, 1))])
def test_scaled_matrix_every_map(scale, shape):
    rng = np.random.default_rng(int(10 * abs(scale)) + shape[1])
    check_all_maps(S, S.ScaledMatrix, dict(scale=scale, data=rng.standard_normal(shape)), {}, scaled_dense,
                   ["scale", "data"])


@pytest.mark.parametrize("scale", [0.0, 1.3])
def test_scaled_matrix_zero_data(scale):
    check_all_maps(S, S.ScaledMatrix, dict(scale=scale, data=np.zeros((3, 3))), {}, scaled_dense,
                   ["scale", "data"])


@pytest.mark.parametrize("sa, sb", [((2, 3), (3, 2)), ((1, 1), (2, 2)), ((3, 1), (1, 4)), ((2, 2), (1, 1))])
def test_kronecker_every_map(sa, sb):
    rng = np.random.default_rng(sum(sa) * 10 + sum(sb))
    check_all_maps(K, K.KroneckerProduct, dict(A=rng.standard_normal(sa), B=rng.standard_normal(sb)), {},
                   kron_dense, ["A", "B"])


@pytest.mark.parametrize("zero", ["A", "B", "both"])
def test_kronecker_with_a_vanishing_factor(zero):
    rng = np.random.default_rng(7)
    f = dict(A=rng.standard_normal((2, 3)), B=rng.standard_normal((2, 2)))
    for name in (("A", "B") if zero == "both" else (zero,)):
        f[name] = np.zeros_like(f[name])
    check_all_maps(K, K.KroneckerProduct, f, {}, kron_dense, ["A", "B"])


def test_the_closed_form_is_taken_and_no_solver_runs(monkeypatch):
    """No LSQR and no Schur complement: the runtime's solvers are made to fail."""
    def boom(*args, **kwargs):
        raise AssertionError("solver called")
    monkeypatch.setattr(runtime, "Iterative", boom)
    monkeypatch.setattr(runtime, "Bordered", boom)
    calls = []
    real = runtime.outer_gram_pinv
    monkeypatch.setattr(runtime, "outer_gram_pinv", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(8)
    x = K.KroneckerProduct(A=rng.standard_normal((3, 2)), B=rng.standard_normal((2, 4)))
    K.restructure_pushforward(x, rng.standard_normal((6, 8)))
    K.restructure_pullback(x, x)
    K.project(x, rng.standard_normal((6, 8)))
    assert K.parametrisation(x) == "deficient"
    s = S.ScaledMatrix(scale=2.0, data=rng.standard_normal((4, 5)))
    S.project(s, rng.standard_normal((4, 5)))
    assert S.parametrisation(s) == "over"
    assert len(calls) == 4


def test_a_wrong_closed_form_fails_the_oracle(monkeypatch):
    """The oracle comparison catches a closed form that drops the coupling
    term (the (a, b) span), i.e. the block-diagonal approximation of JᵀJ."""
    def wrong(fields, arrays, ranks, dtype):
        a, b = (f.reshape(-1) for f in fields)
        x, y = arrays
        return (x / (b @ b)).astype(dtype), (y / (a @ a)).astype(dtype)
    monkeypatch.setattr(runtime, "outer_gram_pinv", wrong)
    rng = np.random.default_rng(9)
    with pytest.raises(AssertionError):
        check_all_maps(K, K.KroneckerProduct, dict(A=rng.standard_normal((2, 2)), B=rng.standard_normal((2, 3))),
                       {}, kron_dense, ["A", "B"])


def test_minimum_norm_and_residual():
    """J⁺ Ẏ is the least-squares solution of minimum norm: J J⁺ Ẏ - Ẏ ⊥ range J,
    and J⁺ Ẏ ⊥ the null space (A, -B) (the scale between the factors)."""
    rng = np.random.default_rng(10)
    A, B = rng.standard_normal((3, 3)), rng.standard_normal((4, 2))
    x = K.KroneckerProduct(A=A, B=B)
    Y = rng.standard_normal((12, 6))
    t = K.restructure_pushforward(x, Y)
    resid = K.destructure_pushforward(x, t) - Y
    g = K.destructure_pullback(x, resid)
    assert np.abs(struct_vec(g, ["A", "B"])).max() < 1e-10
    assert abs(np.vdot(t.A, A) - np.vdot(t.B, B)) < 1e-10


def test_batches_broadcast_and_float32():
    rng = np.random.default_rng(11)
    A, B = rng.standard_normal((3, 2, 2)), rng.standard_normal((1, 3, 2))
    A[1] = 0.0                                  # one instance with a vanishing factor
    x = K.KroneckerProduct(A=A, B=B)
    Y = rng.standard_normal((6, 4))
    t = K.restructure_pushforward(x, Y)
    tb = K.KroneckerProduct(A=rng.standard_normal((2, 2)), B=rng.standard_normal((3, 3, 2)))
    yb = K.restructure_pullback(x, tb)
    pr = K.project(x, rng.standard_normal((3, 6, 4)))
    for b in range(3):
        one = K.KroneckerProduct(A=A[b], B=B[0])
        np.testing.assert_allclose(t.A[b], K.restructure_pushforward(one, Y).A, atol=1e-12)
        np.testing.assert_allclose(t.B[b], K.restructure_pushforward(one, Y).B, atol=1e-12)
        tone = K.KroneckerProduct(A=tb.A, B=tb.B[b])
        np.testing.assert_allclose(yb[b], K.restructure_pullback(one, tone), atol=1e-12)
    assert K.parametrisation(x) == ["deficient", "under", "deficient"]
    assert pr.shape == (3, 6, 4)
    x32 = S.ScaledMatrix(scale=np.float32(1.5), data=rng.standard_normal((3, 4)).astype(np.float32))
    t32 = S.restructure_pushforward(x32, Y[:3].astype(np.float32))
    assert t32.data.dtype == np.float32
    t64 = S.restructure_pushforward(S.ScaledMatrix(scale=1.5, data=x32.data.astype(np.float64)), Y[:3])
    np.testing.assert_allclose(t32.data, t64.data, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mod, fields, dense, order", [
    ("K", dict(A=np.array([[1 + 2j, -0.5j], [0.3, 2 - 1j]]), B=np.array([[0.5 - 1j, 1j, 2.0]])), kron_dense,
     ["A", "B"]),
    ("S", dict(scale=0.7 - 1.2j, data=np.array([[1.0 + 1j, -2j], [0.5, 3 + 0.5j]])), scaled_dense, ["scale", "data"]),
])
def test_complex_fields(mod, fields, dense, order):
    mod = {"K": K, "S": S}[mod]
    cls = mod.KroneckerProduct if "A" in fields else mod.ScaledMatrix
    oracle = Oracle(dense, fields, order, step=1.0)
    x = cls(**fields)
    rng = np.random.default_rng(12)
    shape = oracle.shape
    Y = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    got = mod.restructure_pushforward(x, Y)
    want = oracle.pinv(Y)
    for name in order:
        np.testing.assert_allclose(getattr(got, name), want[name], atol=1e-10)
    tb = {name: np.asarray(v) * (1 - 0.5j) + 0.25 for name, v in fields.items()}
    np.testing.assert_allclose(mod.restructure_pullback(x, cls(**tb)), oracle.pinv_adjoint(tb), atol=1e-10)
    np.testing.assert_allclose(mod.project(x, Y), oracle.project(Y), atol=1e-10)
    assert mod.parametrisation(x) == oracle.parametrisation()


OUTER = """name: Outer
sizes: [m, n]
fields:
  u: [m]
  v: [n]
size: [m, n]
getindex: "u[i] * v[j]"
"""

REVERSED_KRON = """name: KronBA
sizes: [p, q]
fields:
  B: [q, q]
  A: [p, p]
size: [p * q, p * q]
getindex: "B[i % q, j % q] * A[i // q, j // q]"
"""

TRANSPOSED_SCALE = """name: ScaledT
sizes: [m, n]
fields:
  data: [n, m]
  s: []
size: [m, n]
getindex: "data[j, i] * s"
"""

SLICES = """name: Slices
sizes: [m, n, k]
fields:
  T: [k, m, n]
  w: [k]
size: [m, n * k]
getindex: "T[j // n, i, j % n] * w[j // n]"
"""


def test_held_out_types(build_once):
    rng = np.random.default_rng(13)
    mod = build_once(OUTER)
    assert derive(parse_spec(OUTER)).product == ("u", "v")
    check_all_maps(mod, mod.Outer, dict(u=rng.standard_normal(4), v=rng.standard_normal(3)), {},
                   lambda f: np.outer(f["u"], f["v"]), ["u", "v"])
    mod = build_once(REVERSED_KRON)
    assert derive(parse_spec(REVERSED_KRON)).product == ("B", "A")
    check_all_maps(mod, mod.KronBA, dict(B=rng.standard_normal((2, 2)), A=rng.standard_normal((3, 3))), {},
                   lambda f: np.kron(f["A"], f["B"]), ["B", "A"])
    mod = build_once(TRANSPOSED_SCALE)
    assert derive(parse_spec(TRANSPOSED_SCALE)).product == ("data", "s")
    check_all_maps(mod, mod.ScaledT, dict(data=rng.standard_normal((3, 4)), s=-1.5), {},
                   lambda f: f["s"] * f["data"].T, ["data", "s"])


def test_not_a_bijection_is_not_an_outer_product():
    """T[j // n, i, j % n] · w[j // n]: w meets only its own slice (p_T · p_w > N):
    the closed form would be wrong, so the type keeps its solver."""
    assert derive(parse_spec(SLICES)).product == ()


@pytest.mark.parametrize("entry, shapes", [
    ("u[i] * v[i]", ("[m]", "[n]")),                   # j never read: not injective
    ("2 * u[i] * v[j]", ("[m]", "[n]")),               # a constant factor
    ("u[i] * v[j] if i != j else 0", ("[m]", "[n]")),  # not every entry
    ("u[i - 1] * v[j]", ("[m]", "[n]")),               # u[-1]: a negative index wraps around
    ("u[i] * v[j] + 1", ("[m]", "[n]")),
    ("u[i] * v[j]", ("[m + 1]", "[n]")),               # an element of u meets no entry
    ("u[i, j] * v[i, j]", ("[m, n]", "[m, n]")),       # every pair does not meet
    ("u[i // 2] * v[i % 2, j]", ("[m]", "[2, n]")),    # counts differ (m·2n vs m·n)
])
def test_lookalikes_keep_their_solver(entry, shapes):
    text = f"""name: Look
sizes: [m, n]
fields:
  u: {shapes[0]}
  v: {shapes[1]}
size: [m, n]
getindex: "{entry}"
"""
    assert derive(parse_spec(text)).product == ()


@pytest.mark.parametrize("scale", [1e-7, 1e-9, 1e-12])
def test_a_small_factor_is_not_zero(scale):
    """‖a‖ ≪ ‖b‖ is still a non-zero factor (numpy's matrix_rank judges the
    singular value √α, not α): ScaledMatrix stays "over" and J J⁺ = I."""
    D = np.arange(1.0, 7.0).reshape(2, 3)
    x = S.ScaledMatrix(scale=scale, data=D)
    assert S.parametrisation(x) == "over"
    Y = np.ones((2, 3))
    t = S.restructure_pushforward(x, Y)
    np.testing.assert_allclose(S.destructure_pushforward(x, t), Y, rtol=1e-9)
    J = np.column_stack([D.ravel(), scale * np.eye(6)])
    want = np.linalg.pinv(J) @ Y.ravel()
    got = np.concatenate([np.ravel(t.scale), t.data.ravel()])
    assert np.linalg.norm(got - want) <= 1e-9 * np.linalg.norm(want)


OUT_OF_RANGE = """name: DoubleI
sizes: [m, n]
fields:
  u: [m]
  v: [n]
size: [m, n]
getindex: "u[2 * i] * v[j]"
"""


def test_parametrisation_refuses_a_read_past_the_end(build_once):
    mod = build_once(OUT_OF_RANGE)
    assert derive(parse_spec(OUT_OF_RANGE)).product == ("u", "v")
    x = mod.DoubleI(u=np.ones(3), v=np.ones(4))
    for call in (lambda: mod.destructure(x), lambda: mod.parametrisation(x),
                 lambda: mod.restructure_pushforward(x, np.ones((3, 4)))):
        with pytest.raises(IndexError, match="reads u out of range"):
            call()
