"""Y = F Gᵀ (issue #17, "LowRank closed-form J⁺"): when the entry is exactly
Σ_k F[i, k]·G[j, k] over the whole matrix, the numba target applies J⁺ and
(J⁺)ᵀ in closed form (rulegen.runtime.factor_pinv: CholeskyQR2 and a
Sylvester equation in the Gram matrices' eigenbases) and falls back to LSQR
when a factor is not of full column rank, r > min(m, n), or complex.

Reference values: the Jacobian built column by column from the dense
function written here, and numpy.linalg.pinv."""

import numpy as np
import pytest

from helpers import check_all_maps, generated, jacobian
from rulegen import runtime
from rulegen.derive import derive
from rulegen.spec import parse_spec

L = generated("low_rank")


def dense(f):
    return f["U"] @ f["V"].T


@pytest.mark.parametrize("m, n, r", [(5, 4, 2), (3, 6, 3), (4, 4, 1), (6, 2, 2)])
def test_lowrank_every_map_against_the_oracle(m, n, r):
    rng = np.random.default_rng(m * 100 + n * 10 + r)
    check_all_maps(L, L.LowRank, dict(U=rng.standard_normal((m, r)), V=rng.standard_normal((n, r))), {},
                   dense, ["U", "V"])


def _pinv_oracle(U, V):
    J = jacobian(dense, dict(U=U, V=V), ["U", "V"])
    return np.linalg.pinv(J)


def test_closed_form_is_taken_and_equals_pinv(monkeypatch):
    rng = np.random.default_rng(1)
    U, V = rng.standard_normal((7, 3)), rng.standard_normal((5, 3))
    x = L.LowRank(U=U, V=V)
    calls = []
    real = runtime.factor_pinv

    def spy(*args):
        out = real(*args)
        calls.append(out is not None)
        return out
    monkeypatch.setattr(runtime, "factor_pinv", spy)
    ydot = rng.standard_normal((7, 5))
    t = L.restructure_pushforward(x, ydot)
    assert calls == [True]
    P = _pinv_oracle(U, V)
    np.testing.assert_allclose(np.concatenate([t.U.ravel(), t.V.ravel()]), P @ ydot.ravel(), atol=1e-12)
    tb = L.LowRank(U=rng.standard_normal((7, 3)), V=rng.standard_normal((5, 3)))
    np.testing.assert_allclose(L.restructure_pullback(x, tb).ravel(),
                               P.T @ np.concatenate([tb.U.ravel(), tb.V.ravel()]), atol=1e-12)


@pytest.mark.parametrize("case", ["rank-deficient U", "r > n", "complex"])
def test_falls_back_to_lsqr(case):
    rng = np.random.default_rng(2)
    U, V = rng.standard_normal((5, 2)), rng.standard_normal((4, 2))
    if case == "rank-deficient U":
        U[:, 1] = 2 * U[:, 0]
    elif case == "r > n":
        U, V = rng.standard_normal((5, 3)), rng.standard_normal((2, 3))
    fast = runtime.factor_pinv(U, V, rng.standard_normal((U.shape[0], V.shape[0])), np.float64)
    assert fast is None or case == "complex"
    if case == "complex":
        Uc = U + 1j * rng.standard_normal(U.shape)
        assert runtime.factor_pinv(Uc, V, np.zeros((5, 4)), np.complex128) is None
        return
    check_all_maps(L, L.LowRank, dict(U=U, V=V), {}, dense, ["U", "V"], atol=1e-7)


def test_batches_and_float32():
    rng = np.random.default_rng(3)
    U, V = rng.standard_normal((3, 6, 2)), rng.standard_normal((3, 5, 2))
    x = L.LowRank(U=U, V=V)
    ydot = rng.standard_normal((6, 5))          # broadcast over the batch
    t = L.restructure_pushforward(x, ydot)
    for b in range(3):
        P = _pinv_oracle(U[b], V[b])
        np.testing.assert_allclose(np.concatenate([t.U[b].ravel(), t.V[b].ravel()]), P @ ydot.ravel(), atol=1e-11)
    x32 = L.LowRank(U=U[0].astype(np.float32), V=V[0].astype(np.float32))
    t32 = L.restructure_pushforward(x32, ydot.astype(np.float32))
    assert t32.U.dtype == np.float32
    P = _pinv_oracle(U[0], V[0])
    np.testing.assert_allclose(np.concatenate([t32.U.ravel(), t32.V.ravel()]), P @ ydot.ravel(), atol=1e-4)


SWAPPED = """name: RowsFromB
sizes: [m, n, r]
fields:
  B: [n, r]
  A: [m, r]
size: [m, n]
getindex: "sum(A[i, k] * B[j, k] for k in range(r))"
"""


def test_factors_declared_in_the_other_order(build_once):
    mod = build_once(SWAPPED)
    assert derive(parse_spec(SWAPPED)).factors == ("A", "B")
    rng = np.random.default_rng(4)
    check_all_maps(mod, mod.RowsFromB, dict(B=rng.standard_normal((4, 2)), A=rng.standard_normal((5, 2))), {},
                   lambda f: f["A"] @ f["B"].T, ["B", "A"])


@pytest.mark.parametrize("entry", [
    "2 * sum(U[i, k] * V[j, k] for k in range(r))",          # a constant factor
    "sum(U[i, k] * V[j, k] for k in range(r - 1))",          # not all of the columns
    "sum(U[i, k] * V[i, k] for k in range(r))",              # not a product of rows
    "sum(U[i, k] * V[j, k] for k in range(r)) if i != j else 0",
])
def test_lookalikes_do_not_take_the_closed_form(entry):
    text = f"""name: Look
sizes: [m, n, r]
fields:
  U: [m, r]
  V: [n, r]
size: [m, n]
getindex: "{entry}"
"""
    assert derive(parse_spec(text)).factors == ()


def test_a_batch_mixes_the_closed_form_and_lsqr():
    rng = np.random.default_rng(5)
    U, V = rng.standard_normal((3, 6, 2)), rng.standard_normal((3, 5, 2))
    U[1, :, 1] = U[1, :, 0]                    # instance 1 is rank-deficient: LSQR there only
    fast = runtime.factor_pinv(U, V, np.zeros((6, 5)), np.float64)
    assert fast[-1].tolist() == [True, False, True]
    x = L.LowRank(U=U, V=V)
    ydot = rng.standard_normal((3, 6, 5))
    t = L.restructure_pushforward(x, ydot)
    tb = L.LowRank(U=rng.standard_normal((3, 6, 2)), V=rng.standard_normal((3, 5, 2)))
    yb = L.restructure_pullback(x, tb)
    for b in range(3):
        P = _pinv_oracle(U[b], V[b])
        np.testing.assert_allclose(np.concatenate([t.U[b].ravel(), t.V[b].ravel()]), P @ ydot[b].ravel(), atol=1e-8)
        np.testing.assert_allclose(yb[b].ravel(), P.T @ np.concatenate([tb.U[b].ravel(), tb.V[b].ravel()]),
                                   atol=1e-8)
