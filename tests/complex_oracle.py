"""The independent reference for complex numbers: a complex number is a pair of
reals, J is the real Jacobian of (Re vec Y, Im vec Y) with respect to the real
and imaginary parts of every field element (central differences of a dense
function written by hand in numpy), J⁺ is numpy's pinv of that real matrix.

Conventions (README, "Complex numbers"): ChainRules and PyTorch take the
cotangent of z = x + iy as ∂L/∂x + i ∂L/∂y, which is Jᵀ on the real pairs;
JAX takes its conjugate, so a JAX cotangent map is conj ∘ (real-pair map) ∘ conj.
"""

from __future__ import annotations

import numpy as np


def is_complex(a) -> bool:
    return np.iscomplexobj(a)


def pack_fields(fields: dict, order, kinds: dict) -> np.ndarray:
    """The real parameters: each field's real part, then its imaginary part when complex."""
    parts = []
    for name in order:
        a = np.asarray(fields[name])
        parts.append(np.ravel(a.real).astype(float))
        if kinds[name]:
            parts.append(np.ravel(a.imag).astype(float))
    return np.concatenate(parts) if parts else np.zeros(0)


def unpack_fields(vec, like: dict, order, kinds: dict) -> dict:
    out, k = {}, 0
    for name in order:
        shape = np.shape(like[name])
        size = int(np.prod(shape))
        part = vec[k:k + size].astype(complex if kinds[name] else float)
        k += size
        if kinds[name]:
            part = part + 1j * vec[k:k + size]
            k += size
        out[name] = part[0] if shape == () else part.reshape(shape)
    return out


def pack_dense(Y) -> np.ndarray:
    Y = np.asarray(Y)
    return np.concatenate([Y.real.ravel(), Y.imag.ravel()]).astype(float)


def unpack_dense(vec, shape):
    mn = int(np.prod(shape))
    return (vec[:mn] + 1j * vec[mn:]).reshape(shape)


def real_jacobian(dense, fields: dict, order, kinds: dict, step: float) -> np.ndarray:
    """∂(Re vec Y, Im vec Y)/∂(real parameters), column by column by central
    differences (exact for entries of degree ≤ 2 in the parameters)."""
    theta = pack_fields(fields, order, kinds)
    y0 = pack_dense(dense(fields))
    cols = []
    for k in range(theta.size):
        e = np.zeros_like(theta)
        e[k] = step
        plus = pack_dense(dense(unpack_fields(theta + e, fields, order, kinds)))
        minus = pack_dense(dense(unpack_fields(theta - e, fields, order, kinds)))
        cols.append((plus - minus) / (2 * step))
    return np.stack(cols, axis=1) if cols else np.zeros((y0.size, 0))


def expected_class(J: np.ndarray, n_real_entries: int, rcond: float = 1e-12) -> str:
    used = int(np.count_nonzero(np.any(np.abs(J) > 1e-9, axis=0)))
    r = np.linalg.matrix_rank(J, tol=rcond * np.abs(J).max()) if J.size else 0
    N = n_real_entries
    if r == used == N:
        return "exact"
    if r == used < N:
        return "under"
    if r == N < used:
        return "over"
    return "deficient"


class Oracle:
    """Every map of the contract at one instance, from the real Jacobian."""

    def __init__(self, dense, fields, order, step):
        self.fields, self.order = fields, order
        self.kinds = {name: is_complex(fields[name]) for name in order}
        self.Y = np.asarray(dense(fields))
        self.shape = self.Y.shape
        self.J = real_jacobian(dense, fields, order, self.kinds, step)
        # central differences carry rounding noise of about 1e-11 relative at a
        # small step: singular values below 1e-7 of the largest are that noise
        rcond = 1e-15 if step == 1.0 else 1e-7
        self.P = np.linalg.pinv(self.J, rcond=rcond) if self.J.size else np.zeros(self.J.shape[::-1])
        self.rcond = rcond
        self.complex_out = is_complex(self.Y)

    def fields_of(self, vec):
        return unpack_fields(vec, self.fields, self.order, self.kinds)

    def vec_of(self, fields):
        return pack_fields(fields, self.order, self.kinds)

    def dense_of(self, vec):
        Y = unpack_dense(vec, self.shape)
        return Y if self.complex_out else Y.real

    # the maps, in ChainRules' convention
    def pushforward(self, dfields):
        return self.dense_of(self.J @ self.vec_of(dfields))

    def pullback(self, ybar):
        return self.fields_of(self.J.T @ pack_dense(ybar))

    def pinv(self, ydot):
        return self.fields_of(self.P @ pack_dense(ydot))

    def pinv_adjoint(self, xbar):
        return self.dense_of(self.P.T @ self.vec_of(xbar))

    def project(self, ybar):
        return self.dense_of(self.J @ (self.P @ pack_dense(ybar)))

    def parametrisation(self):
        return expected_class(self.J, self.Y.size * (2 if self.complex_out else 1), max(self.rcond, 1e-12))


def conj_fields(fields: dict) -> dict:
    return {k: np.conj(v) for k, v in fields.items()}
