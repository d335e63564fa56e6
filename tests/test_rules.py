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


# ---------------------------------------------------------------------------
# Structure facts (rulegen/structure.py, recorded as each module's _STRUCTURE)
# and the structured routes of solve, logdet and inv that read them.

import glob  # noqa: E402
import os  # noqa: E402

from helpers import GENERATED, jacobian  # noqa: E402
from references import _banded_dense  # noqa: E402

EXPECTED_STRUCTURE = {
    "banded": {"band": ("min(kl, m - 1)", "min(ku, n - 1)"), "symmetric": False, "triangular": None,
               "shift_invariant": False},
    "bidiagonal": {"band": (0, 1), "symmetric": False, "triangular": "upper", "shift_invariant": False},
    "diagonal": {"band": (0, 0), "symmetric": True, "triangular": "upper", "shift_invariant": False},
    "lower_triangular": {"band": (None, 0), "symmetric": False, "triangular": "lower", "shift_invariant": False},
    "sym_tridiagonal": {"band": (1, 1), "symmetric": True, "triangular": None, "shift_invariant": False},
    "symmetric": {"band": None, "symmetric": True, "triangular": None, "shift_invariant": False},
    "toeplitz": {"band": None, "symmetric": False, "triangular": None, "shift_invariant": True},
    "circulant": {"band": None, "symmetric": False, "triangular": None, "shift_invariant": True},
    "hankel": {"band": None, "symmetric": True, "triangular": None, "shift_invariant": False},
    "tridiagonal": {"band": (1, 1), "symmetric": False, "triangular": None, "shift_invariant": False},
    "unit_upper_triangular": {"band": (0, None), "symmetric": False, "triangular": "upper",
                              "shift_invariant": False},
    "upper_triangular": {"band": (0, None), "symmetric": False, "triangular": "upper", "shift_invariant": False},
    "dense": {"band": None, "symmetric": False, "triangular": None, "shift_invariant": False},
    "cholesky_factor": {"band": None, "symmetric": True, "triangular": None, "shift_invariant": False},
    "low_rank": {"band": None, "symmetric": False, "triangular": None, "shift_invariant": False},
}


@pytest.mark.parametrize("key", sorted(EXPECTED_STRUCTURE))
def test_structure_recorded(key):
    assert generated(key)._STRUCTURE == EXPECTED_STRUCTURE[key]


def _modules():
    return sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(GENERATED, "*.py"))
                  if not p.endswith("__init__.py"))


@pytest.mark.parametrize("key", [k for k in _modules() if k in REFERENCES])
def test_structure_facts_hold(key):
    """Every built-in's facts against random dense instances of the oracle:
    no non-zero outside the evaluated band, symmetric when claimed (and a
    claim withheld only where an instance is asymmetric), triangular when
    claimed, constant diagonals when shift invariant."""
    ref = REFERENCES[key]
    mod = generated(key)
    for sizes in ref.sizes:
        rng = np.random.default_rng(5)
        fields, extra, dense = instance(ref, rng, sizes)
        x = getattr(mod, ref.cls)(**fields, **extra)
        Y = dense(fields)
        s = rules.structure(mod, x)
        if s is None:
            assert Y.shape[0] != Y.shape[1]
            continue
        n = s["n"]
        i, j = np.indices(Y.shape)
        assert not np.any(Y[(i - j > s["kl"]) | (j - i > s["ku"])]), (key, sizes)
        if mod._STRUCTURE["symmetric"]:
            np.testing.assert_allclose(Y, Y.T, rtol=1e-14, atol=1e-14)     # the oracle's own rounding
        if s["triangular"] == "upper":
            assert not np.any(np.tril(Y, -1))
        if mod._STRUCTURE["shift_invariant"] and n > 1:
            np.testing.assert_array_equal(Y[1:, 1:], Y[:-1, :-1])
    if key in ("tridiagonal", "toeplitz", "banded", "dense", "upper_triangular"):
        assert not mod._STRUCTURE["symmetric"]


def test_structure_band_from_the_sizes():
    """Banded's bandwidths are the size symbols kl, ku, evaluated per instance."""
    mod = generated("banded")
    x = mod.Banded(data=np.ones((4, 30)), m=30, kl=2, ku=1)
    s = rules.structure(mod, x)
    assert (s["kl"], s["ku"], s["symmetric"], s["triangular"]) == (2, 1, False, None)
    x = mod.Banded(data=np.ones((3, 30)), m=30, kl=0, ku=2)
    assert rules.structure(mod, x)["triangular"] == "upper"
    assert rules.structure(mod, mod.Banded(data=np.ones((2, 5)), m=4, kl=1, ku=0)) is None   # not square


def _oracle(key, fields, extra, n):
    if key == "banded":
        return lambda f: _banded_dense(f, n, n, extra["kl"], extra["ku"])
    return REFERENCES[key].dense


def _make(key, n, rng, kind="pd"):
    """Fields of an instance at size n that engages its structured route."""
    r = rng.standard_normal
    if key == "sym_tridiagonal":
        dv = 4 + rng.random(n) if kind == "pd" else r(n)
        return {"dv": dv, "ev": r(n - 1)}, {}
    if key == "tridiagonal":
        return {"dl": r(n - 1), "d": r(n) + (3 if kind == "pd" else 0), "du": r(n - 1)}, {}
    if key == "bidiagonal":
        return {"dv": r(n) + np.sign(r(n)) * 2, "ev": r(n - 1)}, {}
    if key == "diagonal":
        return {"diag": r(n)}, {}
    if key == "banded":
        data = r((5, n))
        data[2] += 6 if kind == "pd" else 0                      # the diagonal (ku = 2)
        return {"data": data}, {"m": n, "kl": 2, "ku": 2}
    if key in ("upper_triangular", "lower_triangular"):
        return {"data": r((n, n)) + 3 * np.eye(n)}, {}
    if key == "unit_upper_triangular":
        return {"data": 0.3 * r((n, n))}, {}
    if key == "toeplitz":
        return {"col": np.r_[4.0, 0.5 * r(n - 1)], "row": 0.5 * r(n)}, {}
    raise KeyError(key)


STRUCTURED = [  # key, n, kind, route of solve, route of logdet
    ("sym_tridiagonal", 40, "pd", "band", "band"),
    ("sym_tridiagonal", 40, "indefinite", "band", "band"),
    ("tridiagonal", 40, "pd", "band", "band"),
    ("tridiagonal", 40, "general", "band", "band"),
    ("bidiagonal", 30, "", "band", "band"),
    ("diagonal", 20, "", "band", "band"),
    ("banded", 40, "pd", "band", "band"),
    ("banded", 40, "general", "band", "band"),
    ("upper_triangular", 14, "", "triangular", "triangular"),
    ("lower_triangular", 14, "", "triangular", "triangular"),
    ("unit_upper_triangular", 14, "", "triangular", "triangular"),
    ("toeplitz", 24, "", "toeplitz", "dense"),
]


def _vs_oracle(got, want, what, rtol=1e-10):
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale, err_msg=what)


@pytest.mark.parametrize("key,n,kind,solve_route,logdet_route", STRUCTURED)
def test_structured_routes_against_dense_numpy(key, n, kind, solve_route, logdet_route):
    """Values and structural cotangents of the structured routes against
    numpy on the oracle's dense matrix: θ̄ = Jᵀ vec(Ȳ) with J from the
    hand-written dense function and Ȳ the analytic dense gradient
    (logdet: Y⁻ᵀ; solve: -Y⁻ᵀ z̄ zᵀ; inv: -Y⁻ᵀ W̄ Y⁻ᵀ), to 1e-10 relative;
    natural cotangents against the dense route's."""
    ref = REFERENCES[key]
    mod = generated(key)
    rng = np.random.default_rng(11)
    fields, extra = _make(key, n, rng, kind)
    x = getattr(mod, ref.cls)(**fields, **extra)
    dense = _oracle(key, fields, extra, n)
    Y = dense(fields)
    J = jacobian(dense, fields, ref.order)
    assert rules.route(mod, x, "solve") == solve_route
    assert rules.route(mod, x, "logdet") == logdet_route
    Yinv = np.linalg.inv(Y)

    sign, want = np.linalg.slogdet(Y)
    (got_sign, value), pullback = rules.slogdet(mod, x)
    assert got_sign == sign
    assert value == pytest.approx(want, rel=1e-10, abs=1e-10)
    value, pullback = rules.logdet(mod, x)
    assert value == pytest.approx(want, rel=1e-10, abs=1e-10)
    _vs_oracle(struct_vec(pullback(0.7), ref.order), J.T @ (0.7 * Yinv.T).ravel(), "logdet")
    _, dense_pullback = rules.logdet(mod, x, method="dense")
    _vs_oracle(pullback(0.7, natural=True), dense_pullback(0.7, natural=True), "logdet natural")

    for b in (rng.standard_normal(n), rng.standard_normal((n, 3))):
        zbar = rng.standard_normal(b.shape)
        z, pullback = rules.solve(mod, x, b)
        _vs_oracle(z, np.linalg.solve(Y, b), "solve")
        xbar, bbar = pullback(zbar)
        bbar_want = np.linalg.solve(Y.T, zbar)
        _vs_oracle(bbar, bbar_want, "solve b̄")
        ybar = -(bbar_want.reshape(n, -1) @ np.linalg.solve(Y, b).reshape(n, -1).T)
        _vs_oracle(struct_vec(xbar, ref.order), J.T @ ybar.ravel(), "solve x̄")
        natural, _ = pullback(zbar, natural=True)
        _vs_oracle(natural, rules.solve(mod, x, b, method="dense")[1](zbar, natural=True)[0], "solve natural")

    if rules.route(mod, x, "inv") == "band":
        Wbar = rng.standard_normal((n, n))
        W, pullback = rules.inv(mod, x)
        _vs_oracle(W, Yinv, "inv")
        _vs_oracle(struct_vec(pullback(Wbar), ref.order), J.T @ (-Yinv.T @ Wbar @ Yinv.T).ravel(), "inv x̄")


def test_indefinite_symmetric_band_falls_back_from_cholesky_to_lu():
    mod = generated("sym_tridiagonal")
    x = mod.SymTridiagonal(**_make("sym_tridiagonal", 40, np.random.default_rng(11), "indefinite")[0])
    assert rules._band_factor(mod, x, rules.structure(mod, x)).chol is None
    assert np.linalg.slogdet(mod.destructure(x))[0] < 0 or np.any(np.linalg.eigvalsh(mod.destructure(x)) < 0)
    pd = mod.SymTridiagonal(**_make("sym_tridiagonal", 40, np.random.default_rng(11), "pd")[0])
    assert rules._band_factor(mod, pd, rules.structure(mod, pd)).chol is not None


@pytest.mark.parametrize("how", ["zero pivot", "growth"])
def test_band_inverse_without_the_unpivoted_factor(how, monkeypatch):
    """Where the unpivoted LDU is refused (a zero leading pivot; or any growth,
    forced), Y⁻ᵀ's band comes from the pivoted factor column block by column block."""
    mod = generated("tridiagonal")
    rng = np.random.default_rng(2)
    d = rng.standard_normal(40) + 3
    if how == "zero pivot":
        d[0] = 0.0
    else:
        monkeypatch.setattr(rules._BandFactor, "GROWTH", -1.0)
    fields = {"dl": rng.standard_normal(39), "d": d, "du": rng.standard_normal(39)}
    x = mod.Tridiagonal(**fields)
    calls = []
    original = rules._BandFactor._inverse_band_by_columns
    monkeypatch.setattr(rules._BandFactor, "_inverse_band_by_columns",
                        lambda self, block=7: calls.append(1) or original(self, block))
    Y = REFERENCES["tridiagonal"].dense(fields)
    J = jacobian(REFERENCES["tridiagonal"].dense, fields, ("dl", "d", "du"))
    value, pullback = rules.logdet(mod, x)
    assert value == pytest.approx(np.linalg.slogdet(Y)[1], rel=1e-12)
    _vs_oracle(struct_vec(pullback(1.0), ("dl", "d", "du")), J.T @ np.linalg.inv(Y).T.ravel(), "logdet")
    assert calls


def test_toeplitz_levinson_failure_falls_back_to_dense():
    """A zero leading minor defeats Levinson: the residual check sends the solve to the dense route."""
    mod = generated("toeplitz")
    rng = np.random.default_rng(4)
    col, row = rng.standard_normal(24), rng.standard_normal(24)
    col[0] = 0.0
    x = mod.Toeplitz(col=col, row=row)
    Y = REFERENCES["toeplitz"].dense({"col": col, "row": row})
    b, zbar = rng.standard_normal(24), rng.standard_normal(24)
    z, pullback = rules.solve(mod, x, b)
    _vs_oracle(z, np.linalg.solve(Y, b), "solve")
    _vs_oracle(pullback(zbar)[1], np.linalg.solve(Y.T, zbar), "b̄")


def test_structured_singular_matrix_raises_like_dense():
    mod = generated("diagonal")
    d = np.arange(20.0)         # d[0] = 0
    x = mod.Diagonal(diag=d)
    assert rules.route(mod, x, "solve") == "band"
    with pytest.raises(np.linalg.LinAlgError):
        rules.solve(mod, x, np.ones(20))
    value, _ = rules.logdet(mod, x)
    assert value == -np.inf


@pytest.mark.parametrize("wrong", ["narrower band", "false symmetry", "false triangle"])
def test_a_wrong_structure_fact_gives_a_wrong_result(wrong, monkeypatch):
    """The structured routes trust _STRUCTURE: a wrong fact must show (so the
    tests above can fail)."""
    if wrong == "false triangle":
        key, facts = "symmetric", {"band": (0, None), "symmetric": False, "triangular": "upper",
                                   "shift_invariant": False}
        mod = generated(key)
        fields = {"data": np.random.default_rng(3).standard_normal((12, 12)) + 4 * np.eye(12)}
        x = mod.Symmetric(**fields)
    else:
        key = "tridiagonal"
        facts = {"band": (0, 1) if wrong == "narrower band" else (1, 1),
                 "symmetric": wrong == "false symmetry", "triangular": None, "shift_invariant": False}
        mod = generated(key)
        fields, _ = _make(key, 40, np.random.default_rng(3), "pd")
        fields["d"] = fields["d"] + 5       # its upper triangle mirrored is positive definite: Cholesky succeeds
        x = mod.Tridiagonal(**fields)
    Y = REFERENCES[key].dense(fields)
    b = np.ones(Y.shape[0])
    good = (rules.logdet(mod, x)[0], rules.solve(mod, x, b)[0])
    np.testing.assert_allclose(good[1], np.linalg.solve(Y, b), rtol=1e-10)
    monkeypatch.setattr(mod, "_STRUCTURE", facts)
    assert rules.route(mod, x, "solve") != "dense"
    bad = (rules.logdet(mod, x)[0], rules.solve(mod, x, b)[0])
    assert abs(bad[0] - good[0]) > 1e-3 or np.max(np.abs(bad[1] - good[1])) > 1e-3


def test_method_dense_is_the_old_route():
    mod = generated("sym_tridiagonal")
    x = mod.SymTridiagonal(**_make("sym_tridiagonal", 40, np.random.default_rng(1))[0])
    assert rules.logdet(mod, x, method="dense")[0] == pytest.approx(rules.logdet(mod, x)[0], rel=1e-12)
    with pytest.raises(ValueError, match="method"):
        rules.solve(mod, x, np.ones(40), method="banded")
