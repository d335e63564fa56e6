"""Numba helpers of rulegen.runtime.outer_gram_pinv: the two passes over the
structural arrays of a rearranged outer product a ⊗ b (derive._outer_product).

Its pseudo-inverse needs, per instance, ‖a‖² and aᴴẋ (``dots``: one pass over
both arrays together, where numpy takes one pass per reduction), then
ẋ·s + a·t (``combine``: one pass, where numpy writes a temporary for each
product). The sums run in order on one thread, so that a result does not
depend on the thread count; ``combine`` is element-wise and splits its rows
over numba's threads when they are long.
"""

from __future__ import annotations

import numba
import numpy as np

PARALLEL_FROM = 1 << 16      # elements of a row from which combine uses threads


@numba.njit(cache=True)
def _dots(a, x, out):
    for k in range(a.shape[0]):
        aa = 0.0
        ax = out[k, 1] * 0
        for i in range(a.shape[1]):
            v = a[k, i]
            aa += v.real * v.real + v.imag * v.imag
            ax += v.conjugate() * x[k, i]
        out[k, 0] = aa
        out[k, 1] = ax


def dots(a, x):
    """``(Σ|a|², Σ conj(a)·x)`` along the last axis of two (B, p) arrays of one dtype."""
    out = np.zeros((a.shape[0], 2), a.dtype)
    _dots(a, x, out)
    return out[:, 0].real, out[:, 1]


@numba.njit(cache=True)
def _combine_serial(v, c1, w, c2, out):
    for k in range(v.shape[0]):
        for i in range(v.shape[1]):
            out[k, i] = v[k, i] * c1[k] + w[k, i] * c2[k]


@numba.njit(cache=True, parallel=True)
def _combine_parallel(v, c1, w, c2, out):
    for k in range(v.shape[0]):
        for i in numba.prange(v.shape[1]):
            out[k, i] = v[k, i] * c1[k] + w[k, i] * c2[k]


def combine(v, c1, w, c2):
    """``v·c1 + w·c2`` for (B, p) arrays of one dtype and per-row coefficients (B,)."""
    out = np.empty(v.shape, v.dtype)
    kernel = _combine_parallel if v.shape[1] >= PARALLEL_FROM else _combine_serial
    kernel(v, c1.astype(v.dtype), w, c2.astype(v.dtype), out)
    return out
