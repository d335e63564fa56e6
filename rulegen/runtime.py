"""The small run-time library that generated modules import.

It holds what every generated module needs and what does not depend on the
spec: argument conversion and checking with clear messages, size inference,
and the pseudo-inverse scaling of gather types. It imports numpy, and scipy only when a
matrix-free solve runs, so a generated module loads fast.
"""

from __future__ import annotations

import numbers
import sys
import warnings

import numpy as np


class _Namespace:
    """Stands in ``sys.modules`` for a generated module imported without
    being registered there (``exec_module`` on a bare spec)."""


def register_module(name: str, namespace: dict, canonical: str) -> str:
    """Register a generated module's globals under its canonical name; return it."""
    module = sys.modules.get(name)
    if module is None or getattr(module, "__dict__", None) is not namespace:
        module = _Namespace()
        module.__dict__ = namespace
    sys.modules[canonical] = module
    return canonical


def _dtype_ok(arr: np.ndarray) -> bool:
    return arr.dtype == np.bool_ or (np.issubdtype(arr.dtype, np.number)
                                     and not np.issubdtype(arr.dtype, np.complexfloating))


def as_array(owner: str, name: str, value, ndim: int, what: str = "field") -> np.ndarray:
    """``value`` as a C-contiguous float64 array of ``ndim`` dimensions."""
    if value is None:
        raise TypeError(f"{owner}: missing {what} '{name}'")
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{owner}: {what} '{name}' is not an array of numbers ({exc})") from None
    if not _dtype_ok(arr):
        raise TypeError(f"{owner}: {what} '{name}' must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        kind = "a scalar" if ndim == 0 else f"a {ndim}-dimensional array"
        raise ValueError(f"{owner}: {what} '{name}' must be {kind}, got shape {arr.shape}")
    return np.asarray(arr, dtype=np.float64, order="C")


def _as_size(owner: str, name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: size '{name}' must be a non-negative integer, got {value!r}")
    value = int(value)
    if value < 0:
        raise ValueError(f"{owner}: size '{name}' must be non-negative, got {value}")
    return value


def given_size(owner: str, name: str, value) -> int:
    """A size that the fields' shapes cannot determine: it must be passed."""
    if value is None:
        raise TypeError(f"{owner}: size '{name}' cannot be inferred from the fields; pass {name}=...")
    return _as_size(owner, name, value)


def solve_size(owner: str, name: str, given, residual: int, coef: int, where: str) -> int:
    """Solve ``coef * size == residual`` (from one field dimension); check ``given``."""
    if residual % coef != 0 or residual // coef < 0:
        raise ValueError(f"{owner}: {where} gives no non-negative integer size '{name}'")
    value = residual // coef
    if given is not None and _as_size(owner, name, given) != value:
        raise ValueError(f"{owner}: size {name}={given} disagrees with {where}, which gives {name}={value}")
    return value


def check_shape(owner: str, name: str, arr: np.ndarray, expected: tuple, formula: str, sizes: str) -> None:
    if any(d < 0 for d in expected):
        raise ValueError(f"{owner}: sizes {sizes} give field '{name}' the shape {formula} = {expected}, "
                         "which has a negative dimension")
    if arr.shape != expected:
        raise ValueError(f"{owner}: field '{name}' must have shape {formula} = {expected} "
                         f"(with {sizes}), got {arr.shape}")


def check_dims(owner: str, shape: tuple, sizes: str) -> tuple:
    if any(d < 0 for d in shape):
        raise ValueError(f"{owner}: sizes {sizes} give the negative matrix shape {shape}")
    return shape


def _real_array(func: str, name: str, value) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise TypeError(f"{func}: argument '{name}' is not an array of numbers ({exc})") from None
    if not _dtype_ok(arr):
        raise TypeError(f"{func}: argument '{name}' must hold real numbers, got dtype {arr.dtype}")
    return arr


def as_dense(func: str, name: str, value, shape: tuple) -> np.ndarray:
    """A dense matrix argument: float64, C-contiguous, exactly ``shape``."""
    arr = _real_array(func, name, value)
    if arr.shape != tuple(shape):
        raise ValueError(f"{func}: argument '{name}' must have shape {tuple(shape)}, got {arr.shape}")
    return np.asarray(arr, dtype=np.float64, order="C")


def as_operand(func: str, name: str, value, rows: int, what: str):
    """A vector ``(rows,)`` or a matrix ``(rows, k)`` as a 2-d float64 array,
    and whether it was a vector."""
    arr = _real_array(func, name, value)
    if arr.ndim not in (1, 2) or arr.shape[0] != rows:
        raise ValueError(f"{func}: argument '{name}' must have shape ({rows},) or ({rows}, k) "
                         f"({what}), got {arr.shape}")
    vector = arr.ndim == 1
    arr = arr.reshape(rows, 1) if vector else arr
    return np.ascontiguousarray(arr, dtype=np.float64), vector


def adapter_arguments(mod, kwargs):
    """For the framework adapters: (class, field names given, size keywords),
    refusing unknown keywords with the names that are known."""
    cls = getattr(mod, mod.__all__[0])
    unknown = set(kwargs) - set(cls._fields) - set(cls._sizes)
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown argument(s) {', '.join(sorted(unknown))}; "
                        f"fields are {', '.join(cls._fields) or '(none)'}, sizes {', '.join(cls._sizes) or '(none)'}")
    names = tuple(n for n in cls._fields if n in kwargs)
    sizes = {k: v for k, v in kwargs.items() if k in cls._sizes}
    return cls, names, sizes


def bad_arguments(owner: str, args: tuple, unknown: dict, fields: tuple, sizes: tuple):
    """Refuse positional or unknown keyword arguments, naming what is accepted."""
    import difflib

    accepted = (f"fields: {', '.join(fields) or '(none)'}; sizes: {', '.join(sizes) or '(none)'}")
    if args:
        raise TypeError(f"{owner}: takes keyword arguments only ({accepted}), got {len(args)} positional")
    name = sorted(unknown)[0]
    close = difflib.get_close_matches(name, fields + sizes, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise TypeError(f"{owner}: unknown argument '{name}'{hint}; {accepted}")


def check_instance(func: str, name: str, value, cls, like=None):
    """``value`` must be a ``cls``; with ``like``, of the same sizes."""
    if not isinstance(value, cls):
        raise TypeError(f"{func}: argument '{name}' must be of type {cls.__name__}, got {type(value).__name__}")
    if like is not None and value._size_values != like._size_values:
        sizes = ", ".join(f"{s}={v}" for s, v in zip(cls._sizes, like._size_values))
        got = ", ".join(f"{s}={v}" for s, v in zip(cls._sizes, value._size_values))
        raise ValueError(f"{func}: argument '{name}' must have the sizes of x ({sizes}), got ({got})")
    return value


def inverse_weights(weights: tuple) -> tuple:
    """``1/w`` with ``1/0 := 0`` (the pseudo-inverse of a diagonal), read-only."""
    out = []
    for w in weights:
        inv = np.zeros_like(w)
        np.divide(1.0, w, out=inv, where=w != 0)
        inv.setflags(write=False)
        out.append(inv)
    return tuple(out)


def gather_class(weights: tuple, rows: int, cols: int) -> str:
    """Parametrisation class of a gather type: rank J = number of used elements."""
    used = sum(int(np.count_nonzero(w)) for w in weights)
    return "exact" if used == rows * cols else "under"


# ---------------------------------------------------------------------------
# The pseudo-inverse of a J that depends on x (bordered and general types).
# J is never built: only the generated pushforward (J·v) and pullback (Jᵀ·y)
# kernels are called, and the extra memory is O(N + p).

class ConvergenceWarning(RuntimeWarning):
    """A matrix-free pseudo-inverse solve stopped before reaching its tolerance."""


def parametrisation_class(r: int, p_a: int, n_entries: int) -> str:
    """RECIPE.md's classes from r = rank J, p_a (non-zero columns) and N."""
    if r == p_a == n_entries:
        return "exact"
    if r == p_a < n_entries:
        return "under"
    if r == n_entries < p_a:
        return "over"
    return "deficient"


def flat_zeros(arrays) -> tuple:
    """One zero buffer for all the kernel arrays of a type, and its views shaped
    like ``arrays``: a kernel that fills the views fills the flat vector, with
    no copy (a fresh 32 MB array costs ~15 ms of page faults here)."""
    sizes = [a.size for a in arrays]
    buf = np.zeros(sum(sizes))
    views, k = [], 0
    for a, size in zip(arrays, sizes):
        views.append(buf[k:k + size].reshape(a.shape))
        k += size
    return buf, tuple(views)


class _Linearisation:
    """J at one primal x, as two callables: ``push(arrays) -> dense`` (J·θ̇)
    and ``pull(dense, out_arrays)`` (adds Jᵀ·Ȳ into zeroed arrays); ``weights``
    is the flat vector of Σ c² per element."""

    def __init__(self, owner, arrays, shape, push, pull, weights):
        self.arrays = arrays
        self.owner = owner
        self.shapes = [a.shape for a in arrays]
        self.bounds = np.cumsum([0] + [a.size for a in arrays])
        self.p = int(self.bounds[-1])
        self.shape = tuple(shape)
        self.n_entries = self.shape[0] * self.shape[1]
        self.push = push
        self.pull = pull
        self.used = weights > 0     # columns of J that are not zero (Σ c² > 0)

    def flat(self, arrays) -> np.ndarray:
        if len(arrays) == 1:
            return np.ravel(arrays[0])
        return np.concatenate([np.ravel(a) for a in arrays]) if len(arrays) else np.zeros(0)

    def split(self, vec) -> tuple:
        return tuple(np.ascontiguousarray(vec[a:b]).reshape(s)
                     for a, b, s in zip(self.bounds[:-1], self.bounds[1:], self.shapes))

    def jvp(self, vec) -> np.ndarray:
        return self.push(self.split(vec)).ravel()

    def vjp(self, yvec) -> np.ndarray:
        buf, views = flat_zeros(self.arrays)
        self.pull(np.ascontiguousarray(yvec).reshape(self.shape), views)
        return buf

    # the three products with J⁺, on kernel arrays and dense matrices
    def pinv(self, ydot) -> tuple:
        return self.split(self.pinv_vec(np.ravel(ydot)))

    def pinv_adjoint(self, arrays) -> np.ndarray:
        return self.pinv_adjoint_vec(self.flat(arrays)).reshape(self.shape)

    def check_finite(self, finite: bool):
        if not finite:
            raise ValueError(f"parametrisation: x ({self.owner}) has NaN or infinite field values, "
                             "so rank J is undefined")


class Bordered(_Linearisation):
    """J⁺ for a bordered type, exactly.

    The elements split into G (each entry reads at most one of them, so
    J_Gᵀ J_G = diag(w), from the weights kernel) and a few coupled elements C.
    With M = JᵀJ = [[W, B], [Bᵀ, C]] on the used elements, the Schur complement
    S = C - Bᵀ W⁻¹ B (c × c) gives everything:

    * null(M) = {[-W⁻¹B t; t] : t ∈ null(S)} (a few vectors, orthonormalised);
    * for v in range(M), M z = v is solved by z_C = S⁺ (v_C - BᵀW⁻¹ v_G),
      z_G = W⁻¹ (v_G - B z_C); projecting z and v off null(M) gives M⁺ v;
    * J⁺ y = M⁺ Jᵀ y, (J⁺)ᵀ θ̄ = J M⁺ θ̄, rank J = |used G| + rank S.

    Setup costs one pushforward and one pullback per coupled element.
    Eigenvalues of S below 1e-10 · max|C| count as zero.
    """

    RTOL = 1e-10

    def __init__(self, owner, arrays, shape, push, pull, weights, coupled):
        super().__init__(owner, arrays, shape, push, pull, weights)
        # Everything is kept in full p-coordinates (no gathers over p):
        # winv = 1/w on used G elements, 0 elsewhere; B has zero rows outside them.
        w_all = weights
        self.winv = np.zeros(self.p)
        np.divide(1.0, w_all, out=self.winv, where=w_all > 0)
        self.c_idx = np.concatenate([np.arange(a, b) for (a, b), c in
                                     zip(zip(self.bounds[:-1], self.bounds[1:]), coupled) if c] or
                                    [np.zeros(0, dtype=np.int64)])
        self.winv[self.c_idx] = 0.0
        n_g = int(np.count_nonzero(self.winv))
        c = self.c_idx.size
        B = np.zeros((c, self.p))          # row t: J_Gᵀ J e_t (zero on coupled elements)
        C = np.zeros((c, c))
        for t, e in enumerate(self.c_idx):
            unit = np.zeros(self.p)
            unit[e] = 1.0
            g = self.vjp(self.jvp(unit))
            C[:, t] = g[self.c_idx]
            g[self.c_idx] = 0.0
            B[t] = g
        C = (C + C.T) / 2
        self.B = B
        S = C - (B * self.winv) @ B.T
        # a NaN or inf that reaches J (not one in unused storage): J⁺ is NaN
        self.finite = bool(np.all(np.isfinite(S)) and np.all(np.isfinite(w_all)))
        if not self.finite:
            S = np.zeros_like(S)
        lam, Q = np.linalg.eigh((S + S.T) / 2)
        tol = self.RTOL * (np.abs(C).max() if c else 0.0)
        keep = lam > tol
        self.lam, self.Qr = lam[keep], Q[:, keep]
        Q0 = Q[:, ~keep]
        self.null = []
        if Q0.shape[1]:
            # null(M) = {[-W⁻¹B t; t]}: orthonormalise its few columns (Gram–Schmidt)
            for t in range(Q0.shape[1]):
                u = -(Q0[:, t] @ B) * self.winv
                u[self.c_idx] = Q0[:, t]
                for q in self.null:
                    u -= q * (q @ u)
                self.null.append(u / np.linalg.norm(u))
        self.rank = n_g + int(np.count_nonzero(keep))
        self.used[self.c_idx] = np.diag(C) > 0      # ‖J e‖² for each coupled element

    def _off_null(self, v):
        """v minus its part in null(JᵀJ), in place (v is a work vector)."""
        for q in self.null:
            c = q @ v
            if c:
                np.multiply(q, c, out=self._scratch)
                v -= self._scratch
        return v

    def solve(self, v) -> np.ndarray:
        """M⁺ v for M = JᵀJ, v a p-vector (not modified)."""
        if not self.finite:
            return np.full(self.p, np.nan)
        self._scratch = np.empty(self.p) if self.null or self.c_idx.size else None
        v = self._off_null(v.copy()) if self.null else v
        if self.c_idx.size:
            np.multiply(self.winv, v, out=self._scratch)
            h = v[self.c_idx] - self.B @ self._scratch
            zc = self.Qr @ ((self.Qr.T @ h) / self.lam)
        else:
            zc = np.zeros(0)
        z = v * self.winv
        for t in range(zc.size):                 # z -= (Bᵀ zc) ∘ winv, one row at a time
            if zc[t]:
                np.multiply(self.B[t], zc[t] , out=self._scratch)
                self._scratch *= self.winv
                z -= self._scratch
        z[self.c_idx] = zc
        return self._off_null(z)

    def pinv_vec(self, yvec):
        return self.solve(self.vjp(yvec))

    def pinv_adjoint_vec(self, vec):
        return self.jvp(self.solve(vec))

    def classify(self) -> str:
        self.check_finite(self.finite)
        return parametrisation_class(self.rank, int(np.count_nonzero(self.used)), self.n_entries)


class _NotFinite(Exception):
    pass


class Iterative(_Linearisation):
    """J⁺ by LSQR (scipy), matrix-free: every iteration is one pushforward
    and one pullback. Started from zero, LSQR's iterates stay in the row
    space of its operator, so it converges to the minimum-norm least-squares
    solution: J⁺ y for the operator J, (J⁺)ᵀ θ̄ = (Jᵀ)⁺ θ̄ for Jᵀ.

    Tolerance atol = btol = 1e-12, condition limit 1e14, at most
    2·min(N, p) + 100 iterations; stopping at the cap or the condition limit
    with a relative normal-equation residual ‖Aᵀr‖/(‖A‖‖r‖) above 1e-10
    raises a ConvergenceWarning naming the type and the residual.
    """

    TOL = 1e-12
    WARN_RESIDUAL = 1e-10
    CONLIM = 1e14
    PROBE_RTOL = 1e-6

    def _lsqr(self, what, shape, matvec, rmatvec, b):
        from scipy.sparse.linalg import LinearOperator, lsqr

        if not b.size or not np.any(b) or not min(shape):
            return np.zeros(shape[1])
        if not np.all(np.isfinite(b)):        # J⁺ mixes every entry: NaN in, NaN out
            return np.full(shape[1], np.nan)
        def finite(f):
            def apply(v):
                out = f(v)
                if not np.all(np.isfinite(out)):    # J is not finite at x (inf or nan in an entry's derivative)
                    raise _NotFinite
                return out
            return apply

        op = LinearOperator(shape, matvec=finite(matvec), rmatvec=finite(rmatvec), dtype=np.float64)
        cap = self.iteration_cap(shape)
        try:
            out = lsqr(op, b, atol=self.TOL, btol=self.TOL, conlim=self.CONLIM, iter_lim=cap)
        except _NotFinite:
            return np.full(shape[1], np.nan)
        z, istop, itn, r1norm, _, anorm, _, arnorm = out[:8]
        rel = arnorm / (anorm * r1norm) if anorm * r1norm else 0.0
        if istop in (3, 6, 7) and not rel <= self.WARN_RESIDUAL:
            why = "the iteration cap" if istop == 7 else "the condition-number limit"
            warnings.warn(f"{self.owner}: {what}: LSQR stopped at {why} after {itn} iterations; "
                          f"relative normal-equation residual {rel:.2e}, the result is approximate",
                          ConvergenceWarning, stacklevel=4)
        return z

    def iteration_cap(self, shape) -> int:
        return 2 * min(shape) + 100

    def pinv_vec(self, yvec):
        return self._lsqr("J⁺", (self.n_entries, self.p), self.jvp, self.vjp, np.asarray(yvec, float))

    def pinv_adjoint_vec(self, vec):
        return self._lsqr("(J⁺)ᵀ", (self.p, self.n_entries), self.vjp, self.jvp, np.asarray(vec, float))

    def classify(self) -> str:
        rng = np.random.default_rng(0)
        z = rng.standard_normal(self.p) * self.used
        jz = self.jvp(z)
        self.check_finite(np.all(np.isfinite(jz)))
        zn = np.linalg.norm(z)
        full_col = zn == 0 or np.linalg.norm(z - self.pinv_vec(jz)) <= self.PROBE_RTOL * zn
        y = rng.standard_normal(self.n_entries)
        yn = np.linalg.norm(y)
        full_row = yn == 0 or np.linalg.norm(y - self.jvp(self.pinv_vec(y))) <= self.PROBE_RTOL * yn
        # r = p_a and r = N: exact; r = p_a only: under; r = N only: over
        return {(True, True): "exact", (True, False): "under",
                (False, True): "over", (False, False): "deficient"}[bool(full_col), bool(full_row)]
