"""What generated JAX modules import (``generated/jax/<module>.py``).

Argument conversion and checks (shapes are static under ``jit``, so every
check runs at trace time and costs nothing per call), the small array helpers
the emitted code uses, and the pseudo-inverse of J for the types whose J
depends on x: closed forms for a rearranged outer product (``outer_gram_pinv``)
and for Y = F Gᵀ (``factor_pinv``), the bordered Schur complement and a
matrix-free LSQR in ``lax.while_loop``. Everything here is plain
``jnp``/``lax``: it runs under ``jit`` and ``vmap`` and on any device; the
only host callback is LSQR's ConvergenceWarning (``jax.debug.callback``).
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np
from jax import lax

from .runtime import FACTOR_COND as _FACTOR_COND, block_counts as _block_counts, pinv2 as _pinv2
from .runtime import outer_zero_tol as _outer_zero_tol
from .runtime import (ConvergenceWarning, bad_arguments, check_dims, check_instance,  # noqa: F401 (re-exported)
                      check_shape, given_size, parametrisation_class, solve_size)
from .runtime import IntField, check_read, check_int_range, check_int_steps, check_monotone  # noqa: F401 (re-exported: integer fields)
from .runtime import expand_range, points, static_values  # noqa: F401 (re-exported: data patterns)


def _default_float():
    return jnp.result_type(float)


def as_field(owner: str, name: str, value, ndim: int):
    """A field as a JAX array of ``ndim`` dimensions, in its own floating or
    complex dtype (integers and bools become the default float: float32, or
    float64 under ``jax_enable_x64``)."""
    if value is None:
        raise TypeError(f"{owner}: missing field '{name}'")
    try:
        arr = jnp.asarray(value)
    except Exception as exc:
        raise TypeError(f"{owner}: field '{name}' is not an array of numbers ({exc})") from None
    if not (jnp.issubdtype(arr.dtype, jnp.number) or arr.dtype == jnp.bool_):
        raise TypeError(f"{owner}: field '{name}' must hold real or complex numbers, got dtype {arr.dtype}")
    if not jnp.issubdtype(arr.dtype, jnp.inexact):
        arr = arr.astype(_default_float())
    if arr.ndim != ndim:
        kind = "a scalar" if ndim == 0 else f"a {ndim}-dimensional array"
        raise ValueError(f"{owner}: field '{name}' must be {kind}, got shape {arr.shape}")
    return arr


def complex_dtype(dtype):
    """The complex dtype of the same precision (complex64 for float32)."""
    return jnp.result_type(dtype, jnp.complex64)


def real_dtype(dtype):
    """The real dtype of the same precision (float32 for complex64)."""
    return jnp.finfo(dtype).dtype


def dtype_of(arrays, complex_output: bool = False):
    """The dtype of the dense matrix: the fields' common dtype, complex when
    the entry has an imaginary constant (``complex_output``)."""
    dtype = jnp.result_type(*arrays) if arrays else _default_float()
    return complex_dtype(dtype) if complex_output else dtype


def is_complex(dtype) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.complexfloating))


def conj(a):
    """The complex conjugate; a real array is returned as it is (no op traced)."""
    return jnp.conj(a) if is_complex(a.dtype) else a


def _numbers(func: str, name: str, value):
    try:
        arr = jnp.asarray(value)
    except Exception as exc:
        raise TypeError(f"{func}: argument '{name}' is not an array of numbers ({exc})") from None
    if not (jnp.issubdtype(arr.dtype, jnp.number) or arr.dtype == jnp.bool_):
        raise TypeError(f"{func}: argument '{name}' must hold numbers, got dtype {arr.dtype}")
    return arr


def cast(arr, dtype):
    """``arr`` in ``dtype``; a complex array cast to a real dtype keeps its real
    part (ChainRulesCore's ProjectTo: a real primal's cotangent is real)."""
    if is_complex(arr.dtype) and not is_complex(dtype):
        arr = jnp.real(arr)
    return arr.astype(dtype)


def as_dense(func: str, name: str, value, shape: tuple, dtype):
    """A dense argument of exactly ``shape``, in the dense matrix's dtype (a
    complex one given to a real instance: its real part)."""
    arr = _numbers(func, name, value)
    if arr.shape != tuple(shape):
        raise ValueError(f"{func}: argument '{name}' must have shape {tuple(shape)}, got {arr.shape}")
    return cast(arr, dtype)


def as_operand(func: str, name: str, value, rows: int, what: str, dtype):
    """A vector ``(rows,)`` or matrix ``(rows, k)`` as a 2-d array, and whether
    it was a vector; in the matrix's dtype, made complex for a complex operand."""
    arr = _numbers(func, name, value)
    if arr.ndim not in (1, 2) or arr.shape[0] != rows:
        raise ValueError(f"{func}: argument '{name}' must have shape ({rows},) or ({rows}, k) "
                         f"({what}), got {arr.shape}")
    vector = arr.ndim == 1
    if is_complex(arr.dtype):
        dtype = complex_dtype(dtype)
    return (arr.reshape(rows, 1) if vector else arr).astype(dtype), vector


def like(arrays, dtypes):
    """Structural arrays cast to the primal's dtypes (tangents, cotangents;
    a complex one for a real field: its real part)."""
    return tuple(cast(jnp.asarray(a), d) for a, d in zip(arrays, dtypes))


def pinv2(blocks, g):
    """The Gram blocks' pseudo-inverse per element (``rulegen.runtime.pinv2``), in g's dtype."""
    return _pinv2(blocks, g, jnp).astype(g.dtype)


def block_counts(blocks):
    return _block_counts(blocks, jnp)


# -- helpers of the emitted code -------------------------------------------

imag = jnp.imag


def extreme(fn, arr) -> int:
    """min or max of a trace-time numpy array of indices (0 when empty)."""
    arr = np.asarray(arr)
    return int(fn(arr)) if arr.size else 0


def element(field, index):
    """``field[index]`` for an index the grid does not move; 0 when the field
    is empty (then the grid that reads it is empty too)."""
    return field[index] if field.size else jnp.zeros((), field.dtype)


def guarded(mask, r):
    """``r`` where ``mask`` holds, a detached copy elsewhere: what a masked
    position computes cannot send NaN into a derivative."""
    return jnp.where(mask, r, lax.stop_gradient(r))


def cells(val, mask, shape, dtype):
    """The values of a grid: ``val`` where ``mask`` holds, 0 elsewhere."""
    val = jnp.asarray(val, dtype) if not hasattr(val, "dtype") else val.astype(dtype)
    if mask is not None:
        val = jnp.where(mask, val, jnp.zeros((), dtype))
    return jnp.broadcast_to(val, shape)


def pad_to(block, corner, shape):
    """``block`` placed at ``corner`` of a zero array of ``shape``."""
    widths = [(c, s - c - b) for c, s, b in zip(corner, shape, block.shape)]
    if all(w == (0, 0) for w in widths):
        return block
    return jnp.pad(block, widths)


def scatter(out, index, values, shape):
    """``out`` with ``values`` added at ``index`` (index arrays that broadcast to ``shape``)."""
    return out.at[tuple(jnp.broadcast_to(ix, shape) for ix in index)].add(values)


def diagonal_add(out, values, first: int, count: int):
    """``out`` with ``values`` added at the flat positions ``first + k·(C + 1)``
    (one diagonal), through a strided slice of the flat matrix: fast both ways
    on XLA (a scatter with index arrays is slow forward, an interior pad slow
    on CPU), and the pullback reads only those positions."""
    rows, cols = out.shape
    if count <= 0:
        return out
    flat = out.reshape(rows * cols).at[first:first + (count - 1) * (cols + 1) + 1:cols + 1].add(values)
    return flat.reshape(out.shape)


def div0(a, w):
    """``a / w`` with ``1/0 := 0`` (the pseudo-inverse of a diagonal)."""
    nz = w != 0
    return jnp.where(nz, a / jnp.where(nz, w, 1), 0)


# -- J⁺ for types whose J depends on x --------------------------------------

def tolerance(dtype) -> float:
    """The solvers' relative tolerance: 1e-12 in float64, scaled to the precision."""
    return max(1e-12, 10 * float(jnp.finfo(dtype).eps))


def _flatten(arrays):
    flat, unravel = jax.flatten_util.ravel_pytree(tuple(arrays))
    return flat, unravel


class Bordered:
    """J⁺ for a bordered type, exactly (see ``rulegen.runtime.Bordered``):
    J_Gᵀ J_G = diag(w) on the elements G, a few coupled elements C, and the
    c × c Schur complement S = C - Bᵀ diag(1/w) B. Thresholds are masks, so
    the whole construction is traceable (jit, vmap)."""

    RTOL = 1e-10

    def __init__(self, owner, push, pull, arrays, coupled, weights, shape, n_entries=None):
        self.owner, self.push, self.pull = owner, push, pull
        self.n_entries = shape[0] * shape[1] if n_entries is None else n_entries
        flat, self.unravel = _flatten(arrays)
        self.p = flat.size
        self.dtype = flat.dtype
        sizes = [a.size for a in arrays]
        starts = np.cumsum([0] + sizes)
        self.c_idx = np.concatenate([np.arange(starts[k], starts[k + 1]) for k, c in enumerate(coupled) if c]
                                    or [np.zeros(0, dtype=np.int64)])
        w, _ = _flatten(weights)
        w = w.at[self.c_idx].set(0) if self.c_idx.size else w
        self.winv = div0(jnp.ones_like(w), w)
        self.n_g = jnp.count_nonzero(w)
        c = self.c_idx.size
        rows_b, cols_c = [], []
        for e in self.c_idx:
            g = self.normal(jnp.zeros(self.p, self.dtype).at[e].set(1))
            cols_c.append(g[self.c_idx])
            rows_b.append(g.at[self.c_idx].set(0))
        if c:
            C = jnp.stack(cols_c, axis=1)
            C = (C + C.T) / 2
            B = jnp.stack(rows_b)
            S = C - (B * self.winv) @ B.T
            lam, Q = jnp.linalg.eigh((S + S.T) / 2)
            # eigenvalues below rtol · max|C| count as zero; rtol scaled to the precision
            rtol = max(self.RTOL, 1000 * float(jnp.finfo(self.dtype).eps))
            keep = lam > rtol * jnp.max(jnp.abs(C))
            self.B, self.Q, self.keep = B, Q, keep
            self.lam_inv = jnp.where(keep, 1 / jnp.where(keep, lam, 1), 0)
            # null(M) = {[-W⁻¹B t; t] : t ∈ null(S)}: its vectors as rows of U
            U = -(Q.T @ B) * self.winv
            U = U.at[:, self.c_idx].set(Q.T)
            self.U = jnp.where(keep[:, None], 0, U)
            G = self.U @ self.U.T
            gl, gq = jnp.linalg.eigh(G)
            good = gl > 1e-12 * jnp.maximum(jnp.max(jnp.abs(gl)), 1e-300)
            self.G_inv = (gq * jnp.where(good, 1 / jnp.where(good, gl, 1), 0)) @ gq.T
            self.rank = self.n_g + jnp.count_nonzero(keep)
            self.used = (w > 0).at[self.c_idx].set(jnp.diag(C) > 0)
        else:
            self.rank = self.n_g
            self.used = w > 0

    def normal(self, v):
        """JᵀJ v on the flat vector."""
        return _flatten(self.pull(self.push(self.unravel(v))))[0]

    def _off_null(self, v):
        if not self.c_idx.size:
            return v
        return v - self.U.T @ (self.G_inv @ (self.U @ v))

    def solve(self, v):
        """M⁺ v for M = JᵀJ."""
        v = self._off_null(v)
        if self.c_idx.size:
            h = v[self.c_idx] - self.B @ (self.winv * v)
            zc = self.Q @ (self.lam_inv * (self.Q.T @ h))
            z = (v - self.B.T @ zc) * self.winv
            z = z.at[self.c_idx].set(zc)
        else:
            z = v * self.winv
        return self._off_null(z)

    def pinv(self, ydot):
        return self.unravel(self.solve(_flatten(self.pull(ydot))[0]))

    def pinv_adjoint(self, arrays):
        return self.push(self.unravel(self.solve(_flatten(arrays)[0])))

    def classify(self) -> str:
        finite = bool(jnp.all(jnp.isfinite(self.B))) if self.c_idx.size else True
        if not (finite and bool(jnp.all(jnp.isfinite(self.winv)))):
            raise ValueError(f"parametrisation: x ({self.owner}) has NaN or infinite field values, "
                             "so rank J is undefined")
        return parametrisation_class(int(self.rank), int(jnp.count_nonzero(self.used)), self.n_entries)


# -- Y = F Gᵀ: J⁺ in closed form (rulegen.runtime.factor_pinv, the same algebra) ---------
# CholeskyQR2 of F and G and an r × r Sylvester equation in the Gram matrices'
# eigenbases, in the fields' precision. Whether an instance is served (finite,
# both factors of full column rank within factor_cond) is a traced value:
# factor_pinv picks the closed form or the LSQR fallback with lax.cond, so that
# outside vmap only one of them runs (under vmap, cond becomes a select and
# both run). A while loop sits in the fallback branch, so reverse mode through
# these maps is not available (as with LSQR alone); forward mode is.

def factor_cond(dtype) -> float:
    """The largest condition number of F or G that the closed form serves:
    rulegen.runtime.FACTOR_COND in float64, and the same budget eps·cond² in a
    lower precision (CholeskyQR and the Gram eigenvalues lose eps·cond²)."""
    return _FACTOR_COND * float(np.sqrt(np.finfo(np.float64).eps / float(jnp.finfo(dtype).eps)))


def factor_served(F, G, *operands) -> bool:
    """Whether the closed form can serve these shapes and dtypes at all (decided
    at trace time): real numbers and 0 < r <= min(m, n); else the solver."""
    r = F.shape[-1]
    return (0 < r <= min(F.shape[-2], G.shape[-2])
            and not any(is_complex(a.dtype) for a in (F, G, *operands)))


def _t(a):
    return jnp.swapaxes(a, -1, -2)


def _cholesky_qr(A):
    """(Q, R), A = Q R by CholeskyQR2 (as rulegen.runtime._cholesky_qr)."""
    R1 = _t(jnp.linalg.cholesky(_t(A) @ A))
    Q1 = _t(jax.scipy.linalg.solve_triangular(R1, _t(A), trans="T", lower=False))
    R2 = _t(jnp.linalg.cholesky(_t(Q1) @ Q1))
    return _t(jax.scipy.linalg.solve_triangular(R2, _t(Q1), trans="T", lower=False)), R2 @ R1


@jax.custom_jvp
def sylvester(A, B, C):
    """X with A X + X B = C for symmetric positive definite r × r A and B, in
    their eigenbases. Its derivative is itself: dX = X(A, B, dC - dA X - X dB)
    (custom_jvp), not that of eigh, which is infinite where eigenvalues repeat
    (a factor with orthonormal columns); reverse mode transposes the solve,
    which is linear in C."""
    la, Ea = jnp.linalg.eigh(A)
    lb, Eb = jnp.linalg.eigh(B)
    return Ea @ ((_t(Ea) @ C @ Eb) / (la[..., :, None] + lb[..., None, :])) @ _t(Eb)


@sylvester.defjvp
def _sylvester_jvp(primals, tangents):
    A, B, C = primals
    dA, dB, dC = tangents
    X = sylvester(A, B, C)
    return X, sylvester(A, B, dC - dA @ X - X @ dB)


def _factor_setup(F, G):
    """(setup, ok) for one instance: the factorisations, and whether it is
    served (finite, both factors of full column rank within factor_cond); an
    instance that is not gets I-like factors, for shape's sake (its closed-form
    result is never selected)."""
    m, r = F.shape
    limit = factor_cond(F.dtype)
    ok = jnp.array(True)
    served = []
    for A in (F, G):
        fine = jnp.all(jnp.isfinite(A))
        A = jnp.where(fine, A, 0)
        lam = jnp.linalg.eigvalsh(lax.stop_gradient(_t(A) @ A))     # σ² of A, ascending
        fine &= lam[0] * limit ** 2 > lam[-1]
        served.append(jnp.where(fine, A, jnp.eye(A.shape[0], r, dtype=A.dtype)))
        ok &= fine
    F, G = served
    Qf, Rf = _cholesky_qr(F)
    Qg, Rg = _cholesky_qr(G)
    return (F, G, Qf, Rf, Qg, Rg), ok


def _solve_upper(R, B):
    return jax.scipy.linalg.solve_triangular(R, B, lower=False)


def _factor_closed(setup, Y):
    F, G, Qf, Rf, Qg, Rg = setup
    YQg = Y @ Qg
    A = YQg - Qf @ (_t(Qf) @ YQg)
    dF = _t(_solve_upper(Rg, _t(A)))
    dG = _t(_solve_upper(Rf, _t(_t(Y) @ Qf)))
    X = sylvester(_t(Rf) @ Rf, _t(Rg) @ Rg, _solve_upper(Rf, _t(Qf) @ YQg @ Rg))
    return dF + F @ X, dG - G @ _t(X)


def _factor_closed_adjoint(setup, Fbar, Gbar):
    F, G, Qf, Rf, Qg, Rg = setup
    first = (Fbar - Qf @ (_t(Qf) @ Fbar)) @ _solve_upper(Rg, _t(Qg))
    FGi = _t(_solve_upper(Rf, _t(Qf)))           # F (FᵀF)⁻¹
    S = sylvester(_t(Rf) @ Rf, _t(Rg) @ Rg, _t(F) @ Fbar - _t(Gbar) @ G)
    return first + FGi @ _t(Gbar) + FGi @ S @ _t(G)


def factor_pinv(F, G, ydot, fallback):
    """J⁺ vec(Ẏ) for Y = F Gᵀ as (dF, dG): the closed form, or ``fallback(ydot)``
    (LSQR, returning (dF, dG) too) where the instance is not served (lax.cond)."""
    setup, ok = _factor_setup(F, G)
    return lax.cond(ok, lambda y: tuple(a.astype(F.dtype) for a in _factor_closed(setup, y)),
                    lambda y: tuple(a.astype(F.dtype) for a in fallback(y)), ydot)


def factor_pinv_adjoint(F, G, Fbar, Gbar, fallback):
    """(J⁺)ᵀ (F̄, Ḡ) for Y = F Gᵀ, dense: the closed form, or ``fallback(F̄, Ḡ)``
    where the instance is not served (lax.cond)."""
    setup, ok = _factor_setup(F, G)
    return lax.cond(ok, lambda a, b: _factor_closed_adjoint(setup, a, b).astype(F.dtype),
                    lambda a, b: fallback(a, b).astype(F.dtype), Fbar, Gbar)


# -- a rearranged outer product a ⊗ b (derive._outer_product) --------------------
# (JᵀJ)⁺ in closed form, O(p): see rulegen.runtime above _vectors for the
# algebra. J⁺ = (JᵀJ)⁺ J* costs one pullback, (J⁺)* one pushforward; there is
# no solver and no fallback (exact for every x, a vanishing factor included).
# jnp.where with guarded denominators: no Python branch on values, and no NaN
# in a derivative from the branch not taken.



def _outer_coefficients(a, b, xi, eta, real):
    """(s1, s2, t1, t2) of (JᵀJ)⁺(ẋ, ẏ) = (ẋ s1 + a s2, ẏ t1 + b t2), from
    α = ‖a‖², β = ‖b‖², ξ = aᴴẋ, η = bᴴẏ. A factor counts as zero below
    rulegen.runtime.outer_zero_tol · (α + β). ``real``: a real
    field among the two, whose tangent has no imaginary part: the coupling
    then acts on Re ξ, Re η only (the null space is the real scale (a, -b))."""
    alpha, beta = _sq(a), _sq(b)
    if real:
        xi, eta = jnp.real(xi), jnp.real(eta)
    tol = _outer_zero_tol(a.size, b.size) * (alpha + beta)
    a0, b0 = alpha <= tol, beta <= tol
    both = ~(a0 | b0)
    sa, sb = jnp.where(a0, 1, alpha), jnp.where(b0, 1, beta)
    sab = jnp.where(both, alpha + beta, 1) ** 2
    s1, t1 = jnp.where(b0, 0, 1 / sb), jnp.where(a0, 0, 1 / sa)
    # (β ξ/α + η)/(α + β)² - ξ/(αβ) of the runtime, without its cancellation when α ≪ β
    s2 = jnp.where(both, (eta - xi * (alpha + 2 * beta) / sb) / sab, 0)
    t2 = jnp.where(both, (xi - eta * (2 * alpha + beta) / sa) / sab, 0)
    return s1, s2, t1, t2


def _sq(a):
    return jnp.sum(jnp.real(a) ** 2 + jnp.imag(a) ** 2) if is_complex(a.dtype) else jnp.sum(a * a)


def outer_gram_pinv(fields, arrays):
    """(JᵀJ)⁺ applied to the structural arrays ``arrays`` for the entry a ⊗ b
    rearranged, at the fields ``fields`` (a, b in the fields' order); each
    result in its field's dtype."""
    (a, b), (x, y) = fields, arrays
    real = not (is_complex(a.dtype) and is_complex(b.dtype))
    s1, s2, t1, t2 = _outer_coefficients(a, b, jnp.vdot(a, x), jnp.vdot(b, y), real)
    return ((x * s1 + a * s2).astype(a.dtype), (y * t1 + b * t2).astype(b.dtype))


def outer_class(owner: str, fields, n_entries: int) -> str:
    """parametrisation_class for the entry a ⊗ b rearranged, in real dimensions
    (rulegen.runtime.outer_class): rank J = p_a + p_b minus the scale between
    the factors (complex when both are) when neither vanishes, else the
    elements that multiply the non-zero factor."""
    a, b = fields
    if not all(bool(jnp.all(jnp.isfinite(f))) for f in fields):
        raise ValueError(f"parametrisation: x ({owner}) has NaN or infinite field values, so rank J is undefined")
    alpha, beta = float(_sq(a)), float(_sq(b))
    tol = _outer_zero_tol(a.size, b.size) * (alpha + beta)
    za, zb = alpha <= tol, beta <= tol
    da, db = (2 if is_complex(f.dtype) else 1 for f in fields)
    used = (0 if zb else a.size * da) + (0 if za else b.size * db)
    null = 0 if (za or zb) else (2 if da == db == 2 else 1)
    return parametrisation_class(used - null, used, n_entries)


def _warn(owner, what, bad, itn, rel):
    bad, itn, rel = np.asarray(bad), np.asarray(itn), np.asarray(rel)     # batched under vmap
    if bad.any():
        worst = np.argmax(np.where(bad, rel, -1).ravel())
        warnings.warn(f"{owner}: {what}: LSQR stopped at the iteration cap after {int(itn.ravel()[worst])} "
                      f"iterations; relative normal-equation residual {float(rel.ravel()[worst]):.2e}, "
                      "the result is approximate", ConvergenceWarning, stacklevel=2)


def lsqr(matvec, rmatvec, b, n: int, tol: float, cap: int, owner: str = "", what: str = "", x_dtype=None):
    """Minimum-norm least-squares solution of A x = b by LSQR (Paige & Saunders
    1982) started from zero, in ``lax.while_loop``: every iteration is one
    ``matvec`` and one ``rmatvec``. Stops when ‖r‖ ≤ tol(‖b‖ + ‖A‖‖x‖) or
    ‖Aᵀr‖ ≤ tol ‖A‖‖r‖, or at ``cap`` iterations, where it warns (through
    ``jax.debug.callback``) when the relative normal-equation residual is
    above ``100 · tol``.

    Complex vectors are pairs of reals: ``rmatvec`` is the adjoint in the
    real inner product Re⟨a, b⟩, norms are Euclidean over both parts and
    every scalar of the recurrence is real. ``x_dtype``: the solution's
    dtype (real unknowns may meet a complex right-hand side)."""
    dtype = real_dtype(b.dtype)
    x_dtype = b.dtype if x_dtype is None else x_dtype
    tiny = jnp.finfo(dtype).tiny

    def safe_div(a, c):
        return jnp.where(c > tiny, a / jnp.where(c > tiny, c, 1), 0)

    beta = beta0 = jnp.linalg.norm(b)      # ‖b‖, once
    u = safe_div(b, beta)
    v = rmatvec(u)
    alfa = jnp.linalg.norm(v)
    v = safe_div(v, alfa)
    state = dict(x=jnp.zeros(n, x_dtype), u=u, v=v, w=v, alfa=alfa, phibar=beta, rhobar=alfa,
                 anorm=jnp.zeros((), dtype), itn=jnp.zeros((), jnp.int32), done=(beta <= tiny) | (alfa <= tiny),
                 rel=jnp.zeros((), dtype))

    def step(s):
        u = matvec(s["v"]) - s["alfa"] * s["u"]
        beta = jnp.linalg.norm(u)
        u = safe_div(u, beta)
        anorm = jnp.sqrt(s["anorm"] ** 2 + s["alfa"] ** 2 + beta ** 2)
        v = rmatvec(u) - beta * s["v"]
        alfa = jnp.linalg.norm(v)
        v = safe_div(v, alfa)
        rho = jnp.sqrt(s["rhobar"] ** 2 + beta ** 2)
        cs, sn = safe_div(s["rhobar"], rho), safe_div(beta, rho)
        theta, rhobar = sn * alfa, -cs * alfa
        phi, phibar = cs * s["phibar"], sn * s["phibar"]
        x = s["x"] + safe_div(phi, rho) * s["w"]
        w = v - safe_div(theta, rho) * s["w"]
        rnorm = phibar
        arnorm = alfa * jnp.abs(sn * phi)
        xnorm = jnp.linalg.norm(x)
        rel = safe_div(arnorm, anorm * rnorm)
        done = (rnorm <= tol * (beta0 + anorm * xnorm)) | (rel <= tol) | (alfa <= tiny) | (beta <= tiny)
        return dict(x=x, u=u, v=v, w=w, alfa=alfa, phibar=phibar, rhobar=rhobar, anorm=anorm,
                    itn=s["itn"] + 1, done=done, rel=rel)

    out = lax.while_loop(lambda s: (~s["done"]) & (s["itn"] < cap), step, state)
    bad = (~out["done"]) & (out["rel"] > 100 * tol)
    jax.debug.callback(functools.partial(_warn, owner, what), bad, out["itn"], out["rel"])
    return out["x"]


class Iterative:
    """J⁺ by LSQR over the generated pushforward and pullback."""

    PROBE_RTOL = 1e-6

    def __init__(self, owner, push, pull, arrays, shape, out_dtype=None):
        self.owner, self.push, self.pull = owner, push, pull
        flat, self.unravel = _flatten(arrays)
        self.leaves = [(a.shape, a.dtype) for a in arrays]
        self.p, self.dtype, self.shape = flat.size, flat.dtype, tuple(shape)
        self.out_dtype = self.dtype if out_dtype is None else out_dtype
        self.n_entries = self.shape[0] * self.shape[1]
        self.tol = tolerance(real_dtype(self.dtype))
        self.cap = 2 * min(self.p, self.n_entries) + 100

    def jvp(self, vec):
        return self.push(self.unravel(vec)).ravel()

    def vjp(self, yvec):
        return _flatten(self.pull(yvec.reshape(self.shape)))[0]

    def pinv_vec(self, yvec):
        if not self.p or not self.n_entries:
            return jnp.zeros(self.p, self.dtype)
        return lsqr(self.jvp, self.vjp, yvec.astype(self.out_dtype), self.p, self.tol, self.cap, self.owner, "J⁺",
                    x_dtype=self.dtype)

    def pinv(self, ydot):
        return self.unravel(self.pinv_vec(ydot.ravel()))

    def pinv_adjoint(self, arrays):
        if not self.p or not self.n_entries:
            return jnp.zeros(self.shape, self.out_dtype)
        flat = _flatten(arrays)[0]
        return lsqr(self.vjp, self.jvp, flat, self.n_entries, self.tol, self.cap, self.owner,
                    "(J⁺)ᵀ", x_dtype=self.out_dtype).reshape(self.shape)

    def classify(self) -> str:
        """Two random probes (on the host): r = p_a iff (I - J⁺J) z = 0 for a
        random z on the used elements, r = N iff (I - J J⁺) y = 0."""
        key = jax.random.PRNGKey(0)
        k1, k2 = jax.random.split(key)
        y = jax.random.normal(k1, (self.n_entries,), self.out_dtype)     # complex: both parts random
        used = self.vjp(y) != 0          # a column of J is not zero: almost surely seen by a random y
        # each field in its own dtype: a real field mixed with complex ones has no imaginary direction
        keys = jax.random.split(k2, max(len(self.leaves), 1))
        z = _flatten(tuple(jax.random.normal(k, shape, dtype) for k, (shape, dtype) in zip(keys, self.leaves)))[0]
        z = z.astype(self.dtype) * used
        jz = self.jvp(z)
        if not bool(jnp.all(jnp.isfinite(jz))):
            raise ValueError(f"parametrisation: x ({self.owner}) has NaN or infinite field values, "
                             "so rank J is undefined")
        rtol = max(self.PROBE_RTOL, 1e3 * self.tol)
        zn = float(jnp.linalg.norm(z))
        full_col = zn == 0 or float(jnp.linalg.norm(z - self.pinv_vec(jz))) <= rtol * zn
        yn = float(jnp.linalg.norm(y))
        full_row = yn == 0 or float(jnp.linalg.norm(y - self.jvp(self.pinv_vec(y)))) <= rtol * yn
        return {(True, True): "exact", (True, False): "under",
                (False, True): "over", (False, False): "deficient"}[bool(full_col), bool(full_row)]


# -- integer fields (the pattern of a sparse or permuted type) ----------------
# An integer field is static data of the instance, like its sizes: a read-only
# int64 numpy array (exactly its declared shape: a batch shares its pattern),
# kept in the pytree's auxiliary data, never a leaf. So jit, vmap, grad and
# jvp never trace it (no float0 cotangents, no allow_int), a structural
# tangent or cotangent carries its primal's pattern unchanged, and the index
# arrays of the sparse grids are computed with numpy at trace time (exact,
# O(stored)). A new pattern is a new static value: jit traces again for it.

def as_int_field(owner: str, name: str, value, rank: int) -> np.ndarray:
    """An integer field as a read-only int64 numpy array of rank ``rank``
    (rulegen.runtime.as_int_field). A traced value is refused: integer fields
    are static (see above), so build the instance outside ``jit``/``vmap``
    (or close over the pattern) and pass the instance through."""
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"{owner}: integer field '{name}' is a traced JAX value: integer fields are static "
                        "(the pattern is part of the instance's type, like its sizes); build the instance "
                        "outside jit/vmap/grad from concrete integers and pass the instance in")
    if isinstance(value, jax.Array):
        value = np.asarray(value)
    from .runtime import as_int_field as _as_int_field
    return _as_int_field(owner, name, value, rank)
