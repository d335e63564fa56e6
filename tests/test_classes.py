"""The identities RECIPE.md says hold for each parametrisation class, and the
ones it says do not (the seed's finding), on the built-in specs whose J
depends on x. The class of each configuration comes from the oracle (rank of
the complex-step J), not from the code under test."""

import numpy as np
import pytest

from helpers import expected_class, generated, jacobian, jacobian_complex, struct_vec, unflatten
from references import REFERENCES, instance


def _setup(key, sizes, seed=0):
    ref = REFERENCES[key]
    rng = np.random.default_rng(seed)
    fields, extra, dense = instance(ref, rng, sizes)
    mod = generated(ref.module)
    cls = getattr(mod, ref.cls)
    J = (jacobian_complex if ref.analytic else jacobian)(dense, fields, ref.order)
    x = cls(**fields, **extra)

    def struct(vec):
        return cls(**unflatten(vec, fields, ref.order), **extra)

    def vec(obj):
        return struct_vec(obj, ref.order)

    return mod, x, J, struct, vec, rng


def _by_class(name):
    out = []
    for key, ref in REFERENCES.items():
        for sizes in ref.sizes:
            _, _, J, _, _, _ = _setup(key, sizes)
            if expected_class(J) == name and J.size:
                out.append((key, sizes))
    return out


def _ids(cases):
    return [f"{k}-" + "-".join(f"{a}{b}" for a, b in s.items()) for k, s in cases]


UNDER = _by_class("under") + _by_class("exact")
OVER = _by_class("over")
DEFICIENT = _by_class("deficient")


def test_every_class_is_represented():
    assert UNDER and OVER and DEFICIENT
    assert {k for k, _ in OVER} >= {"scaled_matrix"}
    assert {k for k, _ in DEFICIENT} >= {"low_rank", "kronecker_product", "diagonal_plus_low_rank"}


@pytest.mark.parametrize("key,sizes", UNDER, ids=_ids(UNDER))
def test_under_left_inverse_on_any_tangent(key, sizes):
    """J⁺J = I on the used elements: R∘D recovers any tangent there, and
    D*∘R* any cotangent there (unused elements come back zero)."""
    mod, x, J, struct, vec, rng = _setup(key, sizes)
    used = np.any(J != 0, axis=0)
    t = rng.standard_normal(J.shape[1]) * used
    back = vec(mod.restructure_pushforward(x, mod.destructure_pushforward(x, struct(t))))
    np.testing.assert_allclose(back, t, atol=1e-8 * max(1, np.linalg.norm(t)))
    again = vec(mod.destructure_pullback(x, mod.restructure_pullback(x, struct(t))))
    np.testing.assert_allclose(again, t, atol=1e-8 * max(1, np.linalg.norm(t)))


@pytest.mark.parametrize("key,sizes", OVER, ids=_ids(OVER))
def test_over_right_inverse_and_only_a_projection_the_other_way(key, sizes):
    mod, x, J, struct, vec, rng = _setup(key, sizes)
    Y = rng.standard_normal(x.shape)
    # J J⁺ = I: D∘R is the identity on every dense tangent
    np.testing.assert_allclose(mod.destructure_pushforward(x, mod.restructure_pushforward(x, Y)), Y, atol=1e-10)
    # R∘D is not the identity: it is the projection J⁺J, idempotent, and moves a generic tangent
    t = rng.standard_normal(J.shape[1])
    rd = vec(mod.restructure_pushforward(x, mod.destructure_pushforward(x, struct(t))))
    np.testing.assert_allclose(rd, np.linalg.pinv(J) @ J @ t, atol=1e-10)
    assert np.linalg.norm(rd - t) > 1e-3 * np.linalg.norm(t)
    rdrd = vec(mod.restructure_pushforward(x, mod.destructure_pushforward(x, struct(rd))))
    np.testing.assert_allclose(rdrd, rd, atol=1e-10)
    # D*∘R* is the identity only on cotangents D* can produce; R*∘D*∘R* = R* always
    tbar = rng.standard_normal(J.shape[1])
    dr = vec(mod.destructure_pullback(x, mod.restructure_pullback(x, struct(tbar))))
    assert np.linalg.norm(dr - tbar) > 1e-3 * np.linalg.norm(tbar)
    produced = mod.destructure_pullback(x, rng.standard_normal(x.shape))
    np.testing.assert_allclose(vec(mod.destructure_pullback(x, mod.restructure_pullback(x, produced))),
                               vec(produced), atol=1e-10)
    rstar = mod.restructure_pullback(x, struct(tbar))
    np.testing.assert_allclose(mod.restructure_pullback(x, mod.destructure_pullback(x, rstar)), rstar, atol=1e-10)


@pytest.mark.parametrize("key,sizes", DEFICIENT, ids=_ids(DEFICIENT))
def test_deficient_only_penrose_identities(key, sizes):
    mod, x, J, struct, vec, rng = _setup(key, sizes)
    t = rng.standard_normal(J.shape[1])
    Y = rng.standard_normal(x.shape)
    scale = 1e-8 * (1 + np.linalg.norm(t) + np.linalg.norm(Y))

    def push(v):
        return mod.destructure_pushforward(x, struct(v))

    def rpush(Z):
        return vec(mod.restructure_pushforward(x, Z))

    # J J⁺ J = J and J⁺ J J⁺ = J⁺
    np.testing.assert_allclose(push(rpush(push(t))), push(t), atol=scale * np.linalg.norm(push(t)))
    np.testing.assert_allclose(rpush(push(rpush(Y))), rpush(Y), atol=scale * np.linalg.norm(rpush(Y)))
    # J⁺J and J J⁺ are symmetric
    s = rng.standard_normal(J.shape[1])
    assert np.dot(rpush(push(t)), s) == pytest.approx(np.dot(t, rpush(push(s))), rel=1e-7, abs=1e-9)
    Z = rng.standard_normal(x.shape)
    assert np.sum(mod.project(x, Y) * Z) == pytest.approx(np.sum(Y * mod.project(x, Z)), rel=1e-7, abs=1e-9)
    # neither order is the identity
    assert np.linalg.norm(rpush(push(t)) - t) > 1e-3 * np.linalg.norm(t)
    assert np.linalg.norm(push(rpush(Y)) - Y) > 1e-3 * np.linalg.norm(Y)


def test_low_rank_null_direction():
    """Moving scale between the factors, (U, -V), does not change U Vᵀ: it is in
    the null space of J, and restructure_pushforward never returns it."""
    mod = generated("low_rank")
    rng = np.random.default_rng(5)
    U, V = rng.standard_normal((6, 2)), rng.standard_normal((5, 2))
    x = mod.LowRank(U=U, V=V)
    null = mod.LowRank(U=U, V=-V)
    np.testing.assert_allclose(mod.destructure_pushforward(x, null), 0, atol=1e-13)
    dx = mod.restructure_pushforward(x, rng.standard_normal((6, 5)))
    assert abs(np.sum(dx.U * U) - np.sum(dx.V * V)) < 1e-9   # orthogonal to (U, -V)


def test_scaled_matrix_class_depends_on_x():
    mod = generated("scaled_matrix")
    data = np.arange(6.0).reshape(2, 3) + 1
    assert mod.parametrisation(mod.ScaledMatrix(scale=2.0, data=data)) == "over"
    assert mod.parametrisation(mod.ScaledMatrix(scale=0.0, data=data)) == "under"
    assert mod.parametrisation(mod.ScaledMatrix(scale=0.0, data=np.zeros((2, 3)))) == "under"
    assert mod.parametrisation(mod.ScaledMatrix(scale=3.0, data=np.zeros((1, 1)))) == "exact"


def test_scaled_matrix_seed_example():
    """The seed's ScaledMatrix, Y = s·D, by hand: J⁺Ẏ is the tangent (a, B)
    of least norm a² + ‖B‖² with a·D + s·B = Ẏ (J is onto when s ≠ 0)."""
    mod = generated("scaled_matrix")
    rng = np.random.default_rng(6)
    s, D = 1.7, rng.standard_normal((3, 4))
    x = mod.ScaledMatrix(scale=s, data=D)
    Ydot = rng.standard_normal((3, 4))
    # minimise a² + ‖B‖² with B = (Ẏ - a D)/s: d/da = 0 gives a = ⟨D, Ẏ⟩ / (s² + ‖D‖²)
    a = np.sum(D * Ydot) / (s**2 + np.sum(D * D))
    B = (Ydot - a * D) / s
    got = mod.restructure_pushforward(x, Ydot)
    assert got.scale == pytest.approx(a, rel=1e-12)
    np.testing.assert_allclose(got.data, B, rtol=1e-12, atol=1e-14)


def test_iterative_solve_warns_when_it_stops_short(monkeypatch):
    import warnings

    import rulegen.runtime as rt

    # (LowRank's J⁺ has a closed form now: DiagonalPlusLowRank still goes through LSQR)
    mod = generated("diagonal_plus_low_rank")
    rng = np.random.default_rng(7)
    x = mod.DiagonalPlusLowRank(d=rng.standard_normal(7), U=rng.standard_normal((7, 3)),
                                V=rng.standard_normal((7, 3)))
    Y = rng.standard_normal((7, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # converged: no warning at all
        mod.restructure_pushforward(x, Y)
    monkeypatch.setattr(rt.Iterative, "iteration_cap", lambda self, shape: 2)
    with pytest.warns(rt.ConvergenceWarning,
                      match=r"DiagonalPlusLowRank: J⁺: LSQR stopped at the iteration cap after 2"):
        mod.restructure_pushforward(x, Y)


@pytest.mark.parametrize("module,cls,fields", [
    ("scaled_matrix", "ScaledMatrix", {"scale": np.nan, "data": np.ones((2, 2))}),
    ("low_rank", "LowRank", {"U": np.array([[np.inf], [1.0]]), "V": np.ones((2, 1))}),
])
def test_non_finite_primal(module, cls, fields):
    """NaN in gives NaN out of the pseudo-inverse maps; the class is refused."""
    import warnings

    mod = generated(module)
    x = getattr(mod, cls)(**fields)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(mod.restructure_pullback(x, x)).any()
    with pytest.raises(ValueError, match="NaN or infinite field values"):
        mod.parametrisation(x)


def test_non_finite_cotangent_gives_nan_without_iterating():
    mod = generated("low_rank")
    x = mod.LowRank(U=np.ones((3, 1)), V=np.ones((2, 1)))
    Y = np.ones((3, 2))
    Y[0, 0] = np.nan
    got = mod.restructure_pushforward(x, Y)
    assert np.isnan(got.U).all() and np.isnan(got.V).all()


def test_nan_in_unused_storage_stays_local(build_once):
    """A bordered type that never reads the lower triangle of data: a NaN there
    changes nothing (its column of J is zero)."""
    mod = build_once("""
name: ExpScaledUpper
sizes: [n]
fields: {t: [], data: [n, n]}
size: [n, n]
getindex: "exp(t) * data[i, j] if i <= j else 0"
""")
    assert mod._KIND == "bordered"
    rng = np.random.default_rng(8)
    data = rng.standard_normal((4, 4))
    clean = mod.ExpScaledUpper(t=0.2, data=data)
    data = data.copy()
    data[3, 0] = np.nan
    dirty = mod.ExpScaledUpper(t=0.2, data=data)
    Y = rng.standard_normal((4, 4))
    a, b = mod.restructure_pushforward(clean, Y), mod.restructure_pushforward(dirty, Y)
    np.testing.assert_allclose(b.data, a.data)
    assert b.t == pytest.approx(a.t)
    assert mod.parametrisation(dirty) == mod.parametrisation(clean) == "deficient"  # t moves into data
