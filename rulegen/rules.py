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

import numpy as np

__all__ = ["lift", "lift_forward", "sum", "trace", "inner", "matvec", "matmul", "quad",
           "logdet", "solve", "inv"]


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


def logdet(mod, x):
    """log |det Y| (dense fallback: O(n³) time, O(n²) memory); cotangent of ō Y⁻ᵀ."""
    _check(mod, x, "logdet")
    Y = mod.destructure(x)
    _, value = np.linalg.slogdet(Y)

    def pullback(obar, natural=False):
        return _finish(mod, x, mod.destructure_pullback(x, float(obar) * np.linalg.inv(Y).T), natural)

    return float(value), pullback


def solve(mod, x, b):
    """Y⁻¹ b (dense fallback: O(n³)); cotangents (bilinear_pullback(x, -b̄, z), b̄ = Y⁻ᵀ z̄)."""
    _check(mod, x, "solve")
    Y = mod.destructure(x)
    b = np.asarray(b, dtype=float)
    z = np.linalg.solve(Y, b)

    def pullback(zbar, natural=False):
        bbar = np.linalg.solve(Y.T, np.asarray(zbar, dtype=float))
        return _finish(mod, x, mod.bilinear_pullback(x, -bbar, z), natural), bbar

    return z, pullback


def inv(mod, x):
    """Y⁻¹ (dense fallback: O(n³)); cotangent of -Y⁻ᵀ W̄ Y⁻ᵀ."""
    _check(mod, x, "inv")
    W = np.linalg.inv(mod.destructure(x))

    def pullback(wbar, natural=False):
        ybar = -W.T @ np.asarray(wbar, dtype=float) @ W.T
        return _finish(mod, x, mod.destructure_pullback(x, ybar), natural)

    return W, pullback
