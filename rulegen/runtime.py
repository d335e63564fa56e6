"""The small run-time library that generated modules import.

It holds what every generated module needs and what does not depend on the
spec: argument conversion and checking with clear messages, size inference,
and the pseudo-inverse scaling of gather types. It imports only numpy, so a
generated module loads fast.
"""

from __future__ import annotations

import numbers
import sys

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


def as_dense(func: str, name: str, value, shape: tuple) -> np.ndarray:
    """A dense matrix argument: float64, C-contiguous, exactly ``shape``."""
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise TypeError(f"{func}: argument '{name}' is not an array of numbers ({exc})") from None
    if not _dtype_ok(arr):
        raise TypeError(f"{func}: argument '{name}' must hold real numbers, got dtype {arr.dtype}")
    if arr.shape != tuple(shape):
        raise ValueError(f"{func}: argument '{name}' must have shape {tuple(shape)}, got {arr.shape}")
    return np.asarray(arr, dtype=np.float64, order="C")


def check_instance(func: str, name: str, value, cls, like=None):
    """``value`` must be a ``cls``; with ``like``, of the same sizes."""
    if not isinstance(value, cls):
        raise TypeError(f"{func}: argument '{name}' must be a {cls.__name__}, got {type(value).__name__}")
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
