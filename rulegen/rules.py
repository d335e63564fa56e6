"""Generic rules: one rule written for dense matrices serves every structured
type (RECIPE.md, "Generic rules from dense rules").

A generated module ``mod`` (``from generated import symmetric as mod``) gives
the six maps and the derived operations; this module turns dense rules into
structured ones with them, and offers ready rules that avoid the dense matrix
wherever the derived operations allow.

Reverse mode. A dense rule is a function ``dense_rule(Y) -> (out, pullback)``
with ``pullback(out_bar) -> Y_bar`` (a dense ``m × n`` cotangent). Its lift
``lift(dense_rule, mod)`` is ``rule(x) -> (out, pullback)`` where

* ``pullback(out_bar)`` is the **structural** cotangent
  ``destructure_pullback(x, Y_bar)``: an instance of the type, one array per
  field, what an AD system walking into the fields wants;
* ``pullback(out_bar, natural=True)`` is the **natural** cotangent
  ``restructure_pullback(x, θ̄)`` (= ``project(x, Y_bar)``): a dense matrix in
  the type's tangent space (for Symmetric, ``(Ȳ + Ȳᵀ)/2``).

For a structured result ``y = make(out_dense)`` (``output=(out_mod, make)``)
the output cotangent enters through ``restructure_pullback(y, ȳ)`` first when
it is structural (an instance of the output type); a dense one is taken as
natural already.

Forward mode. ``lift_forward(dense_frule, mod)`` for ``dense_frule(Y, Ẏ) ->
(out, out_dot)``: a structural tangent ``dx`` enters as
``destructure_pushforward(x, dx)`` (a dense ``dx`` is taken as natural); a
structured result leaves through ``restructure_pushforward(y, ·)``.

The ready rules (``sum``, ``trace``, ``inner``, ``matvec``, ``matmul``,
``quad``, and the dense ``O(n³)`` fallbacks ``logdet``, ``solve``, ``inv``)
return ``(value, pullback)``; their pullbacks take ``natural=True`` too and
return one cotangent per differentiable argument (a tuple when there are
several, the structured argument first).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["lift", "lift_forward", "sum", "trace", "inner", "matvec", "matmul", "quad",
           "logdet", "slogdet", "solve", "inv", "structure", "route"]


def _type(mod):
    return getattr(mod, mod.__all__[0])


def _check(mod, x, func):
    cls = _type(mod)
    if not isinstance(x, cls):
        raise TypeError(f"rules.{func}: x must be of type {cls.__name__} from module {mod.__name__}, "
                        f"got {type(x).__name__}")


def _finish(mod, x, xbar, natural):
    """A structural cotangent, or with ``natural`` the natural one."""
    return mod.restructure_pullback(x, xbar) if natural else xbar


def lift(dense_rule, mod, *, output=None):
    """Lift ``dense_rule(Y) -> (out, pullback)`` to a structured argument of
    module ``mod`` (see the module docstring). ``output=(out_mod, make)`` makes
    the result structured: ``y = make(out)``, an instance of ``out_mod``'s type."""

    def rule(x):
        _check(mod, x, "lift")
        out, back = dense_rule(mod.destructure(x))
        y = None
        if output is not None:
            out_mod, make = output
            y = make(out)
            _check(out_mod, y, "lift(output=...)")

        def pullback(out_bar, natural=False):
            if y is not None and isinstance(out_bar, _type(output[0])):
                out_bar = output[0].restructure_pullback(y, out_bar)
            ybar = np.asarray(back(out_bar), dtype=float)
            if ybar.shape != tuple(x.shape):
                raise ValueError(f"rules.lift: the dense pullback returned shape {ybar.shape}, "
                                 f"expected {tuple(x.shape)}")
            return _finish(mod, x, mod.destructure_pullback(x, ybar), natural)

        return (y if y is not None else out), pullback

    return rule


def lift_forward(dense_frule, mod, *, output=None):
    """Lift ``dense_frule(Y, Ydot) -> (out, out_dot)`` to a structured argument:
    ``rule(x, dx) -> (out, out_dot)``; ``dx`` structural (an instance) or a
    natural dense tangent. With ``output=(out_mod, make)`` the result is
    ``make(out)`` and its tangent the structural ``restructure_pushforward``."""

    def rule(x, dx):
        _check(mod, x, "lift_forward")
        ydot = mod.destructure_pushforward(x, dx) if isinstance(dx, _type(mod)) else \
            np.asarray(dx, dtype=float)
        if ydot.shape != tuple(x.shape):
            raise ValueError(f"rules.lift_forward: dx must be of type {_type(mod).__name__} or have shape "
                             f"{tuple(x.shape)}, got {ydot.shape}")
        out, out_dot = dense_frule(mod.destructure(x), ydot)
        if output is None:
            return out, out_dot
        out_mod, make = output
        y = make(out)
        _check(out_mod, y, "lift_forward(output=...)")
        return y, out_mod.restructure_pushforward(y, out_dot)

    return rule


# ---------------------------------------------------------------------------
# Ready rules. Cost: O(stored pattern) unless marked dense.

def sum(mod, x):  # noqa: A001 - the rule for sum(Y)
    """Σ Y[i, j]: value from matvec, cotangent bilinear_pullback(x, ō·1, 1)."""
    _check(mod, x, "sum")
    m, n = x.shape
    value = float(np.sum(mod.matvec(x, np.ones(n))))

    def pullback(obar, natural=False):
        return _finish(mod, x, mod.bilinear_pullback(x, np.full(m, float(obar)), np.ones(n)), natural)

    return value, pullback


def trace(mod, x):
    """Σ Y[i, i]: from the diagonal entries only."""
    _check(mod, x, "trace")
    d = mod.diagonal(x)

    def pullback(obar, natural=False):
        return _finish(mod, x, mod.diagonal_pullback(x, np.full(d.shape, float(obar))), natural)

    return float(np.sum(d)), pullback


def inner(mod, x, A):
    """⟨Y, A⟩ = Σ Y[i, j] A[i, j] for a dense A; cotangents (x̄, Ā)."""
    _check(mod, x, "inner")
    A = np.asarray(A, dtype=float)
    Y = mod.destructure(x)
    if A.shape != Y.shape:
        raise ValueError(f"rules.inner: A must have shape {Y.shape}, got {A.shape}")

    def pullback(obar, natural=False):
        return _finish(mod, x, mod.destructure_pullback(x, float(obar) * A), natural), float(obar) * Y

    return float(np.vdot(Y, A)), pullback


def matvec(mod, x, v):
    """x @ v for v (n,) or (n, k); cotangents (bilinear_pullback(x, ȳ, v), xᵀ ȳ)."""
    _check(mod, x, "matvec")
    v = np.asarray(v, dtype=float)
    y = mod.matvec(x, v)

    def pullback(ybar, natural=False):
        ybar = np.asarray(ybar, dtype=float)
        if ybar.shape != y.shape:
            raise ValueError(f"rules.matvec: ybar must have shape {y.shape}, got {ybar.shape}")
        return _finish(mod, x, mod.bilinear_pullback(x, ybar, v), natural), mod.rmatvec(x, ybar)

    return y, pullback


matmul = matvec


def quad(mod, x, v):
    """vᵀ Y v; cotangents (bilinear_pullback(x, ō v, v), ō (Y + Yᵀ) v)."""
    _check(mod, x, "quad")
    v = np.asarray(v, dtype=float)
    yv = mod.matvec(x, v)

    def pullback(obar, natural=False):
        obar = float(obar)
        xbar = mod.bilinear_pullback(x, obar * v, v)
        return _finish(mod, x, xbar, natural), obar * (yv + mod.rmatvec(x, v))

    return float(v @ yv), pullback


# ---------------------------------------------------------------------------
# solve, logdet, inv: structured routes chosen from the module's _STRUCTURE
# (band, symmetry, triangle, Toeplitz; derived from the spec by
# rulegen/structure.py), the dense O(n³) route as the fallback.
#
# * band (kl + ku + 1 ≤ n / BAND_RATIO): the band is read with kl + ku + 1
#   probing products (matvec with the columns j ≡ c mod w, w = kl + ku + 1:
#   each row meets one band column per residue), factorised with LAPACK's
#   banded Cholesky (symmetric, tried first) or banded LU with partial
#   pivoting; solves and their transposes reuse the factor; logdet's cotangent
#   Y⁻ᵀ is needed on the band only: the band of Y⁻¹ by the Takahashi /
#   Erisman–Tinney recurrences on an unpivoted LDU factor (O(n·w²); checked
#   against the pivoted factor's determinant, else the band of Y⁻¹ column block
#   by column block from the pivoted factor, O(n²·w) time, O(n·w) memory), and
#   handed to bilinear_pullback in the same residue form, so nothing n × n is
#   formed;
# * triangular (kl = 0 or ku = 0, a wide band): substitution, O(n²); logdet
#   from the diagonal, its cotangent diag(1/d) (Y⁻ᵀ is of the other triangle),
#   O(n);
# * Toeplitz (shift invariant): solve by Levinson (scipy's solve_toeplitz,
#   O(n²)), first column and row from one matvec and one rmatvec; the residual
#   is checked (Levinson needs non-singular leading minors), else dense.

BAND_RATIO = 3          # the band route when (kl + ku + 1) · BAND_RATIO ≤ n
_ROUTES = ("auto", "dense")


def _eval_side(value, sizes, n):
    if value is None:
        return n - 1
    if isinstance(value, str):
        # generated code of the sizes only (min, max, + - * //): rulegen/structure.py
        value = eval(value, {"__builtins__": {}, "min": min, "max": max}, sizes)  # noqa: S307
    return int(min(max(int(value), 0), max(n - 1, 0)))


def structure(mod, x):
    """The structure facts of ``x`` at its sizes: ``dict(n, kl, ku, symmetric,
    triangular, toeplitz)`` with the bandwidths evaluated (clipped to the
    matrix; ``n - 1`` for an unbounded side), or None when the module records
    none or ``x`` is not square."""
    facts = getattr(mod, "_STRUCTURE", None)
    m, n = x.shape
    if facts is None or m != n:
        return None
    sizes = {name: int(getattr(x, name)) for name in getattr(type(x), "_sizes", ())}
    band = facts.get("band") or (None, None)
    kl, ku = (_eval_side(band[0], sizes, n), _eval_side(band[1], sizes, n))
    if facts.get("symmetric"):
        kl = ku = max(kl, ku)
    triangular = "upper" if kl == 0 else ("lower" if ku == 0 else None)
    return dict(n=n, kl=kl, ku=ku, symmetric=bool(facts.get("symmetric")), triangular=triangular,
                toeplitz=bool(facts.get("shift_invariant")))


def route(mod, x, op="solve"):
    """The route ``op`` ("solve", "logdet" or "inv") takes for ``x``:
    "band", "triangular", "toeplitz" or "dense"."""
    s = structure(mod, x)
    if s is None or s["n"] == 0:
        return "dense"
    n, w = s["n"], s["kl"] + s["ku"] + 1
    if w * BAND_RATIO <= n:
        return "band"
    if op == "inv":
        return "dense"
    if s["triangular"] is not None:
        return "triangular"
    if s["toeplitz"] and op == "solve":
        return "toeplitz"
    return "dense"


def _check_route(method, func):
    if method not in _ROUTES:
        raise ValueError(f"rules.{func}: method must be one of {_ROUTES}, got {method!r}")


# --- the band ---------------------------------------------------------------

def _residues(n, w):
    """V (n, w) with V[j, c] = 1 where j ≡ c (mod w)."""
    V = np.zeros((n, w))
    V[np.arange(n), np.arange(n) % w] = 1.0
    return V


def _band_of(mod, x, kl, ku):
    """LAPACK band storage ``ab[ku + i - j, j] = Y[i, j]`` from w = kl + ku + 1
    probes: row i meets one band column of each residue c mod w."""
    n = x.shape[0]
    w = kl + ku + 1
    P = mod.matvec(x, _residues(n, w))          # P[i, c] = Y[i, j] for the band j ≡ c
    i = np.arange(n)[:, None]
    j = i + np.arange(-kl, ku + 1)[None, :]     # the band columns of row i
    ok = (j >= 0) & (j < n)
    ab = np.zeros((w, n))
    ii, jj = np.broadcast_to(i, j.shape)[ok], j[ok]
    ab[ku + ii - jj, jj] = P[ii, jj % w]
    return ab


def _band_pullback(mod, x, gb, kl, ku, scale):
    """destructure_pullback(x, scale · G) for G given on the band only
    (``gb[ku + i - j, j] = G[i, j]``), as bilinear_pullback(x, U, V) with
    V the residues and U[i, c] = G[i, j] for the band column j ≡ c (mod w):
    U Vᵀ equals G on the band, and the pullback reads nothing else."""
    n = x.shape[0]
    w = kl + ku + 1
    i = np.arange(n)[:, None]
    j = i + np.arange(-kl, ku + 1)[None, :]
    ok = (j >= 0) & (j < n)
    U = np.zeros((n, w))
    ii, jj = np.broadcast_to(i, j.shape)[ok], j[ok]
    U[ii, jj % w] = scale * gb[ku + ii - jj, jj]
    return mod.bilinear_pullback(x, U, _residues(n, w))


@numba.njit(cache=True)
def _ldu_band(ab, kl, ku, Lm, Um, d):
    """Unpivoted banded LDU: Y = L D Ũ with L[j + k, j] = Lm[j, k - 1] (unit
    lower, bandwidth kl) and Ũ[i, i + k] = Um[i, k - 1] (unit upper, ku).
    Returns False when a pivot is zero or not finite."""
    n = ab.shape[1]
    a = ab.copy()                               # a[ku + i - j, j] = Y[i, j], updated in place
    for k in range(n):
        piv = a[ku, k]
        if piv == 0.0 or not np.isfinite(piv):
            return False
        d[k] = piv
        for i in range(k + 1, min(k + kl, n - 1) + 1):
            l = a[ku + i - k, k] / piv
            Lm[k, i - k - 1] = l
            for j in range(k + 1, min(k + ku, n - 1) + 1):
                a[ku + i - j, j] -= l * a[ku + k - j, j]
        for j in range(k + 1, min(k + ku, n - 1) + 1):
            Um[k, j - k - 1] = a[ku + k - j, j] / piv
    return True


@numba.njit(cache=True)
def _inverse_band(Lm, Um, d, kl, ku, Zs):
    """Z = Y⁻¹ = Ũ⁻¹ D⁻¹ L⁻¹ on -kl ≤ p - q ≤ ku (``Zs[p, q - p + kl] = Z[p, q]``),
    the band that Y⁻ᵀ has on Y's pattern, by Z = D⁻¹L⁻¹ + (I - Ũ) Z (rows
    p < q and the diagonal) and Z = Ũ⁻¹D⁻¹ + Z (I - L) (p > q), p from the
    last row up: each entry needs only entries of the same band. O(n·kl·ku)."""
    n = d.shape[0]
    for p in range(n - 1, -1, -1):
        for q in range(min(p + kl, n - 1), p, -1):          # above the diagonal: q - p ≤ kl
            s = 0.0
            for k in range(p + 1, min(p + ku, n - 1) + 1):
                s += Um[p, k - p - 1] * Zs[k, q - k + kl]
            Zs[p, q - p + kl] = -s
        s = 1.0 / d[p]
        for k in range(p + 1, min(p + ku, n - 1) + 1):
            s -= Um[p, k - p - 1] * Zs[k, p - k + kl]
        Zs[p, kl] = s
        for q in range(p - 1, max(p - ku, 0) - 1, -1):      # below: p - q ≤ ku
            s = 0.0
            for k in range(q + 1, min(q + kl, n - 1) + 1):
                s += Zs[p, k - p + kl] * Lm[q, k - q - 1]
            Zs[p, q - p + kl] = -s


class _BandFactor:
    """A banded factorisation of Y (band storage ``ab``): Cholesky for a
    symmetric positive definite Y, else LU with partial pivoting."""

    GROWTH = 1e4        # the unpivoted LDU is trusted for Y⁻¹'s band up to this growth

    def __init__(self, ab, kl, ku, symmetric):
        import scipy.linalg
        from scipy.linalg import lapack
        self.ab, self.kl, self.ku, self.n = ab, kl, ku, ab.shape[1]
        self.chol = None
        self.singular = False
        if symmetric:
            try:
                self.chol = scipy.linalg.cholesky_banded(ab[:ku + 1], lower=False, check_finite=False)
            except np.linalg.LinAlgError:
                self.chol = None
        if self.chol is not None:
            u = self.chol[ku]
            self.sign, self.logabsdet = 1.0, float(2.0 * np.sum(np.log(u)))
            return
        ext = np.zeros((2 * kl + ku + 1, self.n))
        ext[kl:] = ab
        self.lu, self.piv, info = lapack.dgbtrf(ext, kl, ku)
        self.singular = info > 0
        u = self.lu[kl + ku]
        swaps = int(np.count_nonzero(self.piv != np.arange(self.n)))
        with np.errstate(divide="ignore"):
            self.logabsdet = float(np.sum(np.log(np.abs(u))))
        self.sign = float(np.prod(np.sign(u))) * (-1.0) ** swaps

    def solve(self, b, trans=False):
        """Y⁻¹ b, or Y⁻ᵀ b with ``trans``."""
        import scipy.linalg
        from scipy.linalg import lapack
        b = np.asarray(b, dtype=float)
        if self.singular:
            raise np.linalg.LinAlgError("Singular matrix")
        if self.chol is not None:
            return scipy.linalg.cho_solve_banded((self.chol, False), b, check_finite=False)
        out, _ = lapack.dgbtrs(self.lu, self.kl, self.ku, b, self.piv, trans=1 if trans else 0)
        return out

    def inverse_band(self):
        """Zs (n, kl + ku + 1) with Zs[p, q - p + kl] = (Y⁻¹)[p, q] for -kl ≤ p - q ≤ ku."""
        kl, ku, n = self.kl, self.ku, self.n
        Zs = np.zeros((n, kl + ku + 1))
        if self.chol is not None:       # Y = Uᵀ U = Ũᵀ D Ũ with Ũ = diag(U)⁻¹ U: L = Ũᵀ
            u = self.chol[ku]
            Um = np.zeros((n, ku))
            for k in range(1, ku + 1):
                Um[:n - k, k - 1] = self.chol[ku - k, k:] / u[:n - k]
            _inverse_band(Um, Um, u * u, kl, ku, Zs)
            return Zs
        Lm, Um, d = np.zeros((n, kl)), np.zeros((n, ku)), np.zeros(n)
        if _ldu_band(self.ab, kl, ku, Lm, Um, d) and self._trusted(Lm, Um, d):
            _inverse_band(Lm, Um, d, kl, ku, Zs)
            if np.all(np.isfinite(Zs)):
                return Zs
        return self._inverse_band_by_columns()

    def _trusted(self, Lm, Um, d):
        """The unpivoted factor as accurate as the pivoted one: small growth,
        and the same determinant."""
        if not (np.all(np.isfinite(Lm)) and np.all(np.isfinite(Um))):
            return False
        if max(np.max(np.abs(Lm), initial=0.0), np.max(np.abs(Um), initial=0.0)) > self.GROWTH:
            return False
        logabs = float(np.sum(np.log(np.abs(d))))
        sign = float(np.prod(np.sign(d)))
        return sign == self.sign and abs(logabs - self.logabsdet) <= 1e-10 * max(1.0, abs(self.logabsdet)) * self.n

    def _inverse_band_by_columns(self, block=256):
        """The same band from Y⁻¹ e_q solved with the pivoted factor, a block
        of columns at a time: O(n²·w) time, O(n·block) memory."""
        kl, ku, n = self.kl, self.ku, self.n
        Zs = np.zeros((n, kl + ku + 1))
        for q0 in range(0, n, block):
            q1 = min(n, q0 + block)
            E = np.zeros((n, q1 - q0))
            E[np.arange(q0, q1), np.arange(q1 - q0)] = 1.0
            cols = self.solve(E)
            q = np.arange(q0, q1)
            for t in range(-kl, ku + 1):         # t = p - q, stored at Zs[p, kl - t]
                p = q + t
                ok = (p >= 0) & (p < n)
                Zs[p[ok], kl - t] = cols[p[ok], q[ok] - q0]
        return Zs

    def inverse_transposed_band(self):
        """Y⁻ᵀ on Y's band, in Y's band storage: gb[ku + i - j, j] = (Y⁻¹)[j, i]."""
        kl, ku, n = self.kl, self.ku, self.n
        Zs = self.inverse_band()
        gb = np.zeros((kl + ku + 1, n))
        for t in range(-ku, kl + 1):             # t = i - j, entry (j, i) of Z at Zs[j, i - j + kl]
            j = np.arange(max(0, -t), min(n, n - t))
            gb[ku + t, j] = Zs[j, t + kl]
        return gb


def _band_factor(mod, x, s):
    ab = _band_of(mod, x, s["kl"], s["ku"])
    return _BandFactor(ab, s["kl"], s["ku"], s["symmetric"])


# --- the rules ---------------------------------------------------------------

def _dense_logdet(mod, x):
    Y = mod.destructure(x)
    sign, value = np.linalg.slogdet(Y)

    def ybar():
        return np.linalg.inv(Y).T

    return float(sign), float(value), lambda obar: mod.destructure_pullback(x, obar * ybar())


def _slogdet(mod, x, method):
    """(sign, log|det Y|, structural pullback of ō for log|det Y|)."""
    which = "dense" if method == "dense" else route(mod, x, "logdet")
    if which == "band":
        s = structure(mod, x)
        f = _band_factor(mod, x, s)

        def back(obar):
            return _band_pullback(mod, x, f.inverse_transposed_band(), s["kl"], s["ku"], obar)

        return f.sign, f.logabsdet, back
    if which == "triangular":
        d = mod.diagonal(x)
        with np.errstate(divide="ignore"):
            value = float(np.sum(np.log(np.abs(d))))
        def back(obar):
            # Y⁻ᵀ is triangular the other way: on Y's pattern only its diagonal 1/d
            if not np.all(d):
                raise np.linalg.LinAlgError("Singular matrix")
            return mod.diagonal_pullback(x, obar / d)

        return float(np.prod(np.sign(d))), value, back
    return _dense_logdet(mod, x)


def logdet(mod, x, *, method="auto"):
    """log |det Y|; cotangent of ō Y⁻ᵀ. Structured where ``_STRUCTURE`` allows
    (see ``route``): banded Cholesky/LU with Y⁻ᵀ on the band only (O(n·w²)),
    triangular from the diagonal (O(n)); else (or with ``method="dense"``)
    the dense fallback, O(n³) time and O(n²) memory."""
    _check(mod, x, "logdet")
    _check_route(method, "logdet")
    _, value, back = _slogdet(mod, x, method)

    def pullback(obar, natural=False):
        return _finish(mod, x, back(float(obar)), natural)

    return value, pullback


def slogdet(mod, x, *, method="auto"):
    """(sign, log |det Y|) and the pullback of log |det Y| (as ``logdet``)."""
    _check(mod, x, "slogdet")
    _check_route(method, "slogdet")
    sign, value, back = _slogdet(mod, x, method)

    def pullback(obar, natural=False):
        return _finish(mod, x, back(float(obar)), natural)

    return (sign, value), pullback


def _toeplitz_solver(mod, x):
    """solve(b, trans) by Levinson, or None where the residual says it failed."""
    from scipy.linalg import solve_toeplitz
    n = x.shape[0]
    e0 = np.zeros(n)
    e0[0] = 1.0
    c, r = mod.matvec(x, e0), mod.rmatvec(x, e0)
    scale = max(np.max(np.abs(c)), np.max(np.abs(r)))

    def solve_(b, trans=False):
        try:
            with np.errstate(all="ignore"):
                z = solve_toeplitz((r, c) if trans else (c, r), b, check_finite=False)
        except np.linalg.LinAlgError:
            return None
        res = (mod.rmatvec(x, z) if trans else mod.matvec(x, z)) - b
        tol = 1e-12 * n * (scale * np.max(np.abs(z), initial=0.0) + np.max(np.abs(b), initial=0.0))
        if not np.all(np.isfinite(z)) or np.max(np.abs(res), initial=0.0) > tol:
            return None
        return z

    return solve_


def _solver(mod, x, method):
    """solve(b, trans) for Y (Y⁻¹ b, or Y⁻ᵀ b)."""
    which = "dense" if method == "dense" else route(mod, x, "solve")
    if which == "band":
        return _band_factor(mod, x, structure(mod, x)).solve
    Y = mod.destructure(x)
    if which == "triangular":
        import scipy.linalg
        lower = structure(mod, x)["triangular"] == "lower"
        return lambda b, trans=False: scipy.linalg.solve_triangular(Y, b, lower=lower, trans=1 if trans else 0,
                                                                    check_finite=False)
    dense = lambda b, trans=False: np.linalg.solve(Y.T if trans else Y, b)  # noqa: E731
    if which == "toeplitz":
        lev = _toeplitz_solver(mod, x)

        def solve_(b, trans=False):
            z = lev(b, trans)
            return dense(b, trans) if z is None else z
        return solve_
    return dense


def solve(mod, x, b, *, method="auto"):
    """Y⁻¹ b; cotangents (bilinear_pullback(x, -b̄, z), b̄ = Y⁻ᵀ z̄). Structured
    where ``_STRUCTURE`` allows (see ``route``: banded Cholesky/LU O(n·w²),
    triangular substitution O(n²), Toeplitz by Levinson O(n²)), the
    factorisation reused for Y⁻ᵀ z̄; else (or ``method="dense"``) dense O(n³)."""
    _check(mod, x, "solve")
    _check_route(method, "solve")
    b = np.asarray(b, dtype=float)
    solve_ = _solver(mod, x, method)
    z = solve_(b)

    def pullback(zbar, natural=False):
        bbar = solve_(np.asarray(zbar, dtype=float), trans=True)
        return _finish(mod, x, mod.bilinear_pullback(x, -bbar, z), natural), bbar

    return z, pullback


def inv(mod, x, *, method="auto"):
    """Y⁻¹; cotangent of -Y⁻ᵀ W̄ Y⁻ᵀ. Banded: W from the band factor
    (O(n²·w)), the cotangent as bilinear_pullback(x, -Y⁻ᵀ W̄, W) (one more
    banded solve, O(n²·w)); else (or ``method="dense"``) dense O(n³). W is
    n × n either way."""
    _check(mod, x, "inv")
    _check_route(method, "inv")
    n = x.shape[0]
    if method != "dense" and route(mod, x, "inv") == "band":
        f = _band_factor(mod, x, structure(mod, x))
        W = f.solve(np.eye(n))

        def pullback(wbar, natural=False):
            M = f.solve(np.asarray(wbar, dtype=float), trans=True)      # Y⁻ᵀ W̄
            return _finish(mod, x, mod.bilinear_pullback(x, -M, W), natural)

        return W, pullback
    W = np.linalg.inv(mod.destructure(x))

    def pullback(wbar, natural=False):
        ybar = -W.T @ np.asarray(wbar, dtype=float) @ W.T
        return _finish(mod, x, mod.destructure_pullback(x, ybar), natural)

    return W, pullback
