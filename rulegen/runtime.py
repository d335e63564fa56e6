"""The small run-time library that generated numba modules import.

It holds what every generated module needs and what does not depend on the
spec: argument conversion and checking with clear messages, size inference,
the dtype of a call (``result_dtype``), batch shapes and the batched kernel
calls (``call``), the pseudo-inverse scaling of gather types, and the Schur
and LSQR pseudo-inverses of the others. It imports numpy, and scipy only for
the FFT products, so a generated module loads fast.
"""

from __future__ import annotations

import functools
import math
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
    return arr.dtype.kind in "fiubc"       # real or complex floating, integers, bools


# -- precision ------------------------------------------------------------------
# One place decides the dtype of kernels and results.

def result_dtype(*items) -> np.dtype:
    """The dtype a map computes in, from the fields' and operands' arrays,
    dtypes, or Python numbers: numpy's promotion (``np.result_type``; Python
    numbers are weak, so ``2.0`` with float32 stays float32), then float32 for
    float32 (and float16) and float64 for everything else (float64, integers,
    bools, long double); complex64 and complex128 alike for complex numbers."""
    dt = np.result_type(*items) if items else np.dtype(np.float64)
    if dt.kind == "c":
        return _COMPLEX64 if dt.itemsize <= 8 else _COMPLEX128
    return _FLOAT32 if dt.kind == "f" and dt.itemsize <= 4 else _FLOAT64


_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = FLOAT64 = np.dtype(np.float64)
_COMPLEX64 = np.dtype(np.complex64)
_COMPLEX128 = COMPLEX128 = np.dtype(np.complex128)


def is_complex(dtype) -> bool:
    return np.dtype(dtype).kind == "c"


def complex_dtype(dtype) -> np.dtype:
    """The complex dtype of the same precision (complex64 for float32)."""
    return np.dtype(dtype) if is_complex(dtype) else (_COMPLEX64 if np.dtype(dtype) == _FLOAT32 else _COMPLEX128)


def real_dtype(dtype) -> np.dtype:
    """The real dtype of the same precision (float32 for complex64)."""
    return np.dtype(dtype) if not is_complex(dtype) else (_FLOAT32 if np.dtype(dtype) == _COMPLEX64 else _FLOAT64)


def out_dtype(dtype, complex_output: bool) -> np.dtype:
    """The dense matrix's dtype for fields of ``dtype``: complex when the
    entry has an imaginary constant (``complex_output``)."""
    return complex_dtype(dtype) if complex_output else np.dtype(dtype)


def project_to(arrays: tuple, dtype) -> tuple:
    """Structural arrays for an instance of ``dtype``: a real instance keeps
    the real part of a complex result (ChainRulesCore's ProjectTo: the
    cotangent of a real number is real)."""
    if is_complex(dtype) or all(a.dtype.kind != "c" for a in arrays):
        return arrays
    return tuple([a.real.copy() if a.dtype.kind == "c" else a for a in arrays])


def _weak(given, arr):
    """A field for ``result_dtype``: a Python number as itself (weak), else its array."""
    return given if isinstance(given, (bool, int, float)) else arr


def cast(arrays: tuple, dtype) -> tuple:
    """``arrays`` in ``dtype`` (the same arrays when they have it already; a
    complex array cast to a real dtype keeps its real part)."""
    if all(a.dtype == dtype for a in arrays):
        return arrays
    return tuple([a if a.dtype == dtype else (a.real if a.dtype.kind == "c" and not is_complex(dtype) else a)
                  .astype(dtype) for a in arrays])


# -- batches ----------------------------------------------------------------------
# As in the PyTorch target: a field of declared rank r may carry batch dimensions
# before its last r; the batch shapes of the fields (and of a map's operands)
# broadcast together, and a map returns the broadcast batch shape.

def _broadcast(a: tuple, b: tuple):
    """numpy's broadcast of two shapes, or None."""
    if a == b or not b:
        return a
    if not a:
        return b
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    out = []
    for x, y in zip(a, b):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(out)


def broadcast(a: tuple, b: tuple) -> tuple:
    """The broadcast of two batch shapes already checked to broadcast."""
    return a if a == b or not b else _broadcast(a, b)


def batch_shape(func: str, shapes) -> tuple:
    """The broadcast of ``shapes`` (pairs ``(what, shape)``); a ValueError
    naming the two that do not broadcast."""
    out = ()
    for k, (what, shape) in enumerate(shapes):
        shape = tuple(shape)
        new = _broadcast(out, shape)
        if new is None:
            for other, s in shapes[:k]:
                if _broadcast(tuple(s), shape) is None:
                    raise ValueError(f"{func}: the batch shapes of {other} {tuple(s)} and {what} "
                                     f"{shape} do not broadcast")
            raise ValueError(f"{func}: the batch shape of {what} {shape} does not broadcast with {out}")
        out = new
    return out


def batch_of(arrays, ranks) -> tuple:
    """The broadcast batch shape of kernel arrays (a scalar field's rank is 1)."""
    out = ()
    for a, r in zip(arrays, ranks):
        if a.ndim > r:
            out = broadcast(out, a.shape[:a.ndim - r])
    return out


def nested(batch, values):
    """A per-instance result: the value itself for no batch, else nested
    lists shaped like ``batch`` (as ``ndarray.tolist``)."""
    if not batch:
        return values[0]
    out = list(values)
    for d in reversed(batch[1:]):
        out = [out[k:k + d] for k in range(0, len(out), d)]
    return out


def scalar(arr: np.ndarray):
    """A scalar field's attribute from its kernel array ``(*batch, 1)``: a float
    (float64) or a numpy scalar (float32) without a batch, an array of the
    batch shape with one."""
    if arr.ndim > 1:
        return arr[..., 0]
    return float(arr[0]) if arr.dtype == _FLOAT64 else arr[0]


# -- fields -------------------------------------------------------------------------

def as_field(owner: str, name: str, value, rank: int) -> np.ndarray:
    """A field as an array whose last ``rank`` dimensions are its declared
    shape (any before them are batch dimensions); its dtype is settled by ``settle``."""
    if value is None:
        raise TypeError(f"{owner}: missing field '{name}'")
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{owner}: field '{name}' is not an array of numbers ({exc})") from None
    if not _dtype_ok(arr):
        raise TypeError(f"{owner}: field '{name}' must hold real or complex numbers, got dtype {arr.dtype}")
    if arr.ndim < rank:
        kind = f"a {rank}-dimensional array"
        raise ValueError(f"{owner}: field '{name}' must be {kind} (after any batch dimensions), got shape {arr.shape}")
    return arr


def check_field_shape(owner: str, name: str, arr: np.ndarray, rank: int, expected: tuple, formula: str,
                      sizes: str) -> None:
    """The declared (last ``rank``) dimensions of a field against its shape formula."""
    if any(d < 0 for d in expected):
        raise ValueError(f"{owner}: sizes {sizes} give field '{name}' the shape {formula} = {expected}, "
                         "which has a negative dimension")
    got = arr.shape[arr.ndim - rank:]
    if got != expected:
        raise ValueError(f"{owner}: field '{name}' must have shape {formula} = {expected} "
                         f"(with {sizes}), got {got if arr.ndim == rank else arr.shape}")


def settle(owner: str, names: tuple, given: tuple, arrays: tuple, ranks: tuple) -> tuple:
    """The fields as kernel arrays: one dtype for all (``result_dtype`` over
    them), C-contiguous, a scalar as ``(*batch, 1)``; their batch shapes
    checked to broadcast (each keeps its own: broadcasting costs no copy)."""
    batches = [a.shape[:a.ndim - r] for a, r in zip(arrays, ranks)]
    if any(batches):
        batch_shape(owner, [(f"field '{n}'", b) for n, b in zip(names, batches)])
    dtype = result_dtype(*(_weak(g, a) for g, a in zip(given, arrays)))
    return tuple(np.ascontiguousarray(a, dtype).reshape(a.shape + (1,)) if r == 0 else
                 np.ascontiguousarray(a, dtype) for a, r in zip(arrays, ranks))


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


def check_dims(owner: str, shape: tuple, sizes: str, values=None) -> tuple:
    """``shape`` if neither dimension is negative; ``sizes`` names the sizes
    (``str.format`` with ``values``, formatted only for the error)."""
    if shape[0] < 0 or shape[1] < 0:
        raise ValueError(f"{owner}: sizes {sizes.format(**values) if values else sizes} give the negative "
                         f"matrix shape {shape}")
    return shape


def _real_array(func: str, name: str, value) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise TypeError(f"{func}: argument '{name}' is not an array of numbers ({exc})") from None
    if not _dtype_ok(arr):
        raise TypeError(f"{func}: argument '{name}' must hold real or complex numbers, got dtype {arr.dtype}")
    return arr


def as_dense(func: str, name: str, value, shape: tuple, x, complex_output: bool = False) -> np.ndarray:
    """A dense argument of the instance ``x``: its last dimensions exactly
    ``shape`` (any before them are batch dimensions, which must broadcast with
    x's), C-contiguous, in ``result_dtype`` of x's dense matrices and the
    argument; a complex argument of a real matrix (real x, no imaginary
    constant in the entry: ``complex_output``) keeps its real part
    (ChainRulesCore's ProjectTo)."""
    target = out_dtype(x.dtype, complex_output)
    if type(value) is np.ndarray and value.shape == shape and value.dtype == target and value.flags.c_contiguous:
        return value            # already what the kernels take: no further checks or copies
    arr = _real_array(func, name, value)
    if arr.dtype.kind == "c" and not is_complex(target):
        arr = arr.real
    k = len(shape)
    if arr.shape[arr.ndim - k:] != shape or arr.ndim < k:
        raise ValueError(f"{func}: argument '{name}' must have shape {tuple(shape)}, got {arr.shape}"
                         + (" (any dimensions before those are batch dimensions)" if arr.ndim > k else ""))
    if arr.ndim > k:
        batch_shape(func, [("x", x.batch_shape), (f"argument '{name}'", arr.shape[:arr.ndim - k])])
    return np.ascontiguousarray(arr, target if arr.dtype == target else result_dtype(target, arr))


def as_operand(func: str, name: str, value, rows: int, what: str, x, complex_output: bool = False):
    """A vector ``(rows,)`` or a (batch of) matrices ``(..., rows, k)`` as an
    array of at least 2 dimensions (a vector as ``(rows, 1)``), C-contiguous,
    in ``result_dtype`` of x's dense matrices and the operand; and whether it
    was a vector. ``what`` names ``rows`` in the error (its value is appended)."""
    target = out_dtype(x.dtype, complex_output)
    if type(value) is np.ndarray and value.shape == (rows,) and value.dtype == target and value.flags.c_contiguous:
        return value.reshape(rows, 1), True
    arr = _real_array(func, name, value)
    if arr.ndim == 0 or arr.shape[-1 if arr.ndim == 1 else -2] != rows:
        raise ValueError(f"{func}: argument '{name}' must have shape ({rows},) or ({rows}, k) or "
                         f"(..., {rows}, k) ({what} = {rows}), got {arr.shape}")
    vector = arr.ndim == 1
    if arr.ndim > 2:
        batch_shape(func, [("x", x.batch_shape), (f"argument '{name}'", arr.shape[:-2])])
    arr = arr.reshape(rows, 1) if vector else arr
    return np.ascontiguousarray(arr, target if arr.dtype == target else result_dtype(target, arr)), vector


def check_like(func: str, name: str, value, cls, x) -> np.dtype:
    """A structural tangent or cotangent ``value`` of x: a ``cls`` of x's
    sizes whose batch shape broadcasts with x's; the dtype of the call."""
    check_instance(func, name, value, cls, like=x)
    if value.batch_shape != x.batch_shape:
        batch_shape(func, [("x", x.batch_shape), (f"argument '{name}'", value.batch_shape)])
    if is_complex(value.dtype) and not is_complex(x.dtype):      # ProjectTo: a real x's are real
        return result_dtype(x.dtype, real_dtype(value.dtype))
    return result_dtype(x.dtype, value.dtype)


def zeros(batch: tuple, shapes, dtype) -> tuple:
    """Zeroed kernel arrays ``(*batch, *shape)``."""
    return tuple(np.zeros(batch + s, dtype) for s in shapes)


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
    """``value`` must be a ``cls``; with ``like``, of the same sizes (and the
    same integer fields: a structural tangent carries its primal's pattern)."""
    if not isinstance(value, cls):
        raise TypeError(f"{func}: argument '{name}' must be of type {cls.__name__}, got {type(value).__name__}")
    if like is not None:
        n = len(cls._sizes)
        mine, theirs = like._size_values, value._size_values
        if mine[:n] != theirs[:n]:
            sizes = ", ".join(f"{s}={v}" for s, v in zip(cls._sizes, mine))
            got = ", ".join(f"{s}={v}" for s, v in zip(cls._sizes, theirs))
            raise ValueError(f"{func}: argument '{name}' must have the sizes of x ({sizes}), got ({got})")
        for field, a, b in zip(getattr(cls, "_ints", ()), mine[n:], theirs[n:]):
            if a is not b and not np.array_equal(a, b):
                raise ValueError(f"{func}: argument '{name}' must have the integer field '{field}' of x "
                                 "(the same pattern)")
    return value


# -- integer fields ----------------------------------------------------------------------
# The pattern of a sparse or permuted type: int64 arrays of exactly their declared
# shape (no batch dimensions: a batch shares its pattern), never differentiated.

class IntField:
    """A validated integer field as hashable data (the JAX and PyTorch targets
    keep it with the sizes, as static data): compares and hashes by its values
    (the hash computed once), and reads as the numpy array."""

    __slots__ = ("array", "_hash")

    def __init__(self, array: np.ndarray):
        self.array = array
        self._hash = hash((array.shape, array.tobytes()))

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        if self is other:
            return True
        if not isinstance(other, IntField):
            return NotImplemented
        return self._hash == other._hash and np.array_equal(self.array, other.array)

    def __array__(self, dtype=None, copy=None):
        return self.array if dtype is None else self.array.astype(dtype)

    def __repr__(self):
        return repr(self.array)


def as_int_field(owner: str, name: str, value, rank: int) -> np.ndarray:
    """An integer field as a read-only C-contiguous int64 array of rank ``rank``."""
    if value is None:
        raise TypeError(f"{owner}: missing integer field '{name}'")
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise TypeError(f"{owner}: integer field '{name}' is not an array of integers ({exc})") from None
    if arr.size == 0 and not isinstance(value, np.ndarray):
        arr = arr.astype(np.int64)         # [] is float64 to numpy
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{owner}: integer field '{name}' must hold integers, got dtype {arr.dtype}")
    if arr.ndim != rank:
        raise ValueError(f"{owner}: integer field '{name}' must be a {rank}-dimensional array "
                         f"(integer fields take no batch dimensions), got shape {arr.shape}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{owner}: integer field '{name}' holds values beyond int64")
    out = np.array(arr, dtype=np.int64, order="C", copy=True)      # (ascontiguousarray makes a 0-d array 1-d)
    out.setflags(write=False)
    return out


def check_int_range(owner: str, name: str, arr: np.ndarray, lo: int, hi: int, why: str, sizes: str,
                    select: tuple = ()) -> None:
    """Every value of integer field ``name`` in ``[lo, hi)``; with ``select``
    (per axis None, or the one index getindex uses), those positions only."""
    if not arr.size:
        return
    if select:
        if any(a is not None and not -arr.shape[d] <= a < arr.shape[d] for d, a in enumerate(select)):
            return      # getindex reads that position out of range: an IndexError when it does
        pos = tuple(slice(None) if a is None else a % arr.shape[d] for d, a in enumerate(select))
        part = arr[pos]
    else:
        pos, part = (), arr
    bad = (part < lo) | (part >= hi)
    if np.any(bad):
        flat = int(np.argmax(np.ravel(bad)))
        idx = list(np.unravel_index(flat, np.shape(part)))
        where = [idx.pop(0) if isinstance(p, slice) else p for p in pos] if pos else idx
        raise ValueError(f"{owner}: integer field '{name}'[{', '.join(str(int(i)) for i in where)}] = "
                         f"{int(np.ravel(part)[flat])} is out of range: {why}, so it must lie in [{lo}, {hi}) "
                         f"(with {sizes})")


def check_read(field: str, axis: int, index, extent: int):
    """The index of a read that the pattern computes (numpy, at trace time),
    as Python reads it: a negative index counts from the end; an IndexError
    naming the field when it lies outside [-extent, extent)."""
    index = np.asarray(index)
    if index.size and (int(index.min()) < -extent or int(index.max()) >= extent):
        bad = index[(index < -extent) | (index >= extent)][0]
        raise IndexError(f"getindex reads {field} at index {int(bad)} along axis {axis}, outside "
                         f"[-{extent}, {extent}) (the integer fields point outside the stored fields)")
    return np.where(index < 0, index + extent, index) if index.size and int(index.min()) < 0 else index


# The array targets enumerate a data pattern with numpy, exactly (O(stored)):

def static_values(size_values) -> tuple:
    """The sizes and integer fields as the generated functions read them (numpy arrays)."""
    return tuple(v.array if isinstance(v, IntField) else v for v in size_values)


def expand_range(lo, hi, count: int):
    """A ragged loop (numpy; at trace time for JAX): for each of ``count``
    points, the values of a loop variable from ``lo`` to ``hi`` (arrays over
    the points, or scalars): ``(rep, v)`` with ``rep`` the point each new
    point comes from. O(total)."""
    lo = np.broadcast_to(np.asarray(lo, np.int64), (count,))
    hi = np.broadcast_to(np.asarray(hi, np.int64), (count,))
    counts = np.maximum(hi - lo, 0)
    rep = np.repeat(np.arange(count), counts)
    starts = np.cumsum(counts) - counts
    v = lo[rep] + np.arange(int(counts.sum()), dtype=np.int64) - starts[rep]
    return rep, v


def points(values, count: int):
    """An index expression over the points as an int64 array of length ``count``."""
    return np.array(np.broadcast_to(np.asarray(values, np.int64), (count,)))


def check_int_steps(owner: str, name: str, arr: np.ndarray, most: int, why: str, sizes: str) -> None:
    """``arr[e + 1] - arr[e] <= most`` along the last axis (a block fits its storage)."""
    if arr.size > 1:
        step = np.diff(arr, axis=-1)
        bad = step > most
        if bad.any():
            k = np.unravel_index(int(np.argmax(bad.ravel())), bad.shape)
            nxt = k[:-1] + (k[-1] + 1,)
            pos = lambda t: ", ".join(str(int(i)) for i in t)  # noqa: E731
            raise ValueError(f"{owner}: integer field '{name}' steps from {name}[{pos(k)}] = {int(arr[k])} to "
                             f"{name}[{pos(nxt)}] = {int(arr[nxt])}, more than {most}: {why} (with {sizes})")


def check_monotone(owner: str, name: str, arr: np.ndarray) -> None:
    """Integer field ``name`` non-decreasing (it bounds ranges F[e] .. F[e + 1])."""
    if arr.size > 1:
        drop = np.diff(arr, axis=-1) < 0
        if drop.any():
            flat = int(np.argmax(drop.ravel()))
            k = np.unravel_index(flat, drop.shape)
            pos = ", ".join(str(int(i)) for i in k)
            nxt = ", ".join(str(int(i)) for i in k[:-1] + (k[-1] + 1,))
            raise ValueError(f"{owner}: integer field '{name}' must be non-decreasing (it bounds index ranges "
                             f"from {name}[e] to {name}[e + 1]), but {name}[{pos}] = {int(arr[k])} > "
                             f"{name}[{nxt}] = {int(arr[k[:-1] + (k[-1] + 1,)])}")


# -- one kernel call for a whole batch ------------------------------------------------
# Every kernel of a generated module has two batched wrappers (``<kernel>_s``, a
# serial loop, and ``<kernel>_p``, numba.prange): ``wrapper(nb, *sizes,
# *inputs, *outputs, *index)`` runs the kernel on instance b of the flat batch
# with ``inputs[k][index[k][b]]`` and ``outputs[j][b]``: the index arrays map the
# broadcast batch to each input's own batch, so broadcasting copies nothing.
# Each instance is computed by the same code whatever the number of threads.

PARALLEL_MIN = 1 << 17      # elements touched by a call below which threads do not pay


def _count(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@functools.lru_cache(maxsize=256)
def _index(own: tuple, batch: tuple) -> np.ndarray:
    """For each flat index of ``batch``, the flat index into ``own`` (which broadcasts to it)."""
    idx = np.broadcast_to(np.arange(_count(own), dtype=np.int64).reshape(own), batch).ravel()
    idx.setflags(write=False)
    return idx


def run(wrappers, nb: int, sizes: tuple, inputs: tuple, index: tuple, outputs: tuple) -> None:
    """Call a kernel's batched wrapper on ``nb`` instances: ``inputs`` flat
    ``(n_k, *shape)`` read at ``index[k]``, ``outputs`` ``(nb, *shape)``."""
    if not nb:
        return
    work = max([a[0].size if a.shape[0] else 0 for a in inputs + outputs] or [0]) * nb
    wrapper = wrappers[1] if nb > 1 and work >= PARALLEL_MIN else wrappers[0]
    wrapper(nb, *sizes, *inputs, *outputs, *index)


def call(wrappers, batch: tuple, sizes: tuple, inputs: tuple, ranks: tuple, outputs: tuple) -> None:
    """A kernel on the batch ``batch``: ``inputs`` with their own batch
    shapes (broadcasting to ``batch``) and kernel ranks ``ranks``, ``outputs``
    allocated ``(*batch, *shape)``."""
    nb = _count(batch)
    flat, index = [], []
    for a, r in zip(inputs, ranks):
        own = a.shape[:a.ndim - r]
        flat.append(a.reshape((_count(own),) + a.shape[a.ndim - r:]))
        index.append(_index(own, batch))
    outs = tuple(o.reshape((nb,) + o.shape[len(batch):]) for o in outputs)
    run(wrappers, nb, sizes, tuple(flat), tuple(index), outs)


def inverse_weights(weights: tuple, dtype=np.float64) -> tuple:
    """``1/w`` with ``1/0 := 0`` (the pseudo-inverse of a diagonal), in ``dtype``, read-only."""
    out = []
    for w in weights:
        inv = np.zeros_like(w)
        np.divide(1.0, w, out=inv, where=w != 0)
        inv = inv.astype(dtype, copy=False)
        inv.setflags(write=False)
        out.append(inv)
    return tuple(out)


def repeat(batch: tuple, value):
    """``nested`` of the same value for every instance of ``batch``."""
    return nested(batch, [value] * _count(batch))


def gather_class(weights: tuple, n_entries: int) -> str:
    """Parametrisation class of a gather type: rank J = number of used
    elements (``n_entries``: the real dimension of the dense matrices)."""
    used = sum(int(np.count_nonzero(w)) for w in weights)
    return "exact" if used == n_entries else "under"


def gram_blocks(first: tuple, second: tuple) -> tuple:
    """The 2 × 2 real Gram blocks (a, b, c) = [[a, b], [b, c]] of complex
    field elements from J*(J·1) = a + ib and J*(J·i) = b + ic (a gather
    type: each entry reads one element, so JᵀJ is block diagonal); read-only."""
    out = []
    for f, g in zip(first, second):
        block = (np.ascontiguousarray(f.real, np.float64), np.ascontiguousarray(f.imag, np.float64),
                 np.ascontiguousarray(g.imag, np.float64))
        for a in block:
            a.setflags(write=False)
        out.append(block)
    return tuple(out)


def pinv2(block, g, xp=np):
    """G⁺ g per element for its 2 × 2 block G = [[a, b], [b, c]] on (Re g, Im
    g): the block's inverse, G/tr² at rank one, 0 at rank zero (ranks to a
    relative 1e-10: the entries are sums of squares of the entry's constants).
    ``xp``: numpy, jax.numpy or torch (the three targets share this)."""
    a, b, c = block
    tr, det = a + c, a * c - b * b
    full = det > 1e-10 * tr * tr
    one = (tr > 0) & ~full
    inv_det = xp.where(full, 1 / xp.where(full, det, 1), 0)
    inv_tr2 = xp.where(one, 1 / xp.where(one, tr * tr, 1), 0)
    h11, h22, h12 = c * inv_det + a * inv_tr2, a * inv_det + c * inv_tr2, b * (inv_tr2 - inv_det)
    gr, gi = xp.real(g), xp.imag(g)
    return (h11 * gr + h12 * gi) + 1j * (h12 * gr + h22 * gi)


def block_counts(blocks, xp=np) -> tuple:
    """(rank, used real parameters) of the 2 × 2 Gram blocks of a complex field."""
    a, b, c = blocks
    tr, det = a + c, a * c - b * b
    rank = xp.where(det > 1e-10 * tr * tr, 2, xp.where(tr > 0, 1, 0))
    return int(rank.sum()), int(xp.count_nonzero(a > 0)) + int(xp.count_nonzero(c > 0))


def blocks_class(blocks: tuple, n_entries: int) -> str:
    """Parametrisation class of a gather type with complex fields: rank J =
    Σ rank of the 2 × 2 blocks, p_a = the real parameters with a non-zero column."""
    counts = [block_counts(b) for b in blocks]
    return parametrisation_class(sum(r for r, _ in counts), sum(u for _, u in counts), n_entries)


# ---------------------------------------------------------------------------
# The pseudo-inverse of a J that depends on x (bordered and general types).
# J is never built: only the generated pushforward (J·v) and pullback (Jᵀ·y)
# kernels are called, and the extra memory is O(N + p).

# -- Y = F Gᵀ: J⁺ in closed form --------------------------------------------------------
# J(dF, dG) = dF Gᵀ + F dGᵀ. With F = Qf Rf, G = Qg Rg (QR) of full column rank,
# every least-squares solution is dF = (I - P_F) Ẏ G (GᵀG)⁻¹ + F X, dG = Ẏᵀ F (FᵀF)⁻¹ - G Xᵀ
# (X any r × r: the null space (F X, -G Xᵀ) has dimension r²), and the one of
# minimum norm has (FᵀF) X + X (GᵀG) = (FᵀF)⁻¹ Fᵀ Ẏ G, a Sylvester equation solved
# in the eigenbases of the two Gram matrices. Its transpose (restructure_pullback):
# Ȳ = (I - P_F) F̄ (GᵀG)⁻¹ Gᵀ + F (FᵀF)⁻¹ Ḡᵀ + F (FᵀF)⁻¹ S(Fᵀ F̄ - Ḡᵀ G) Gᵀ, S the
# Sylvester solve (self-adjoint). Cost O((m + n)·r² + r³) plus two products with Ẏ.

FACTOR_COND = 1e6       # beyond this condition number of F or G: LSQR instead


def _t(a):
    return np.swapaxes(a, -1, -2)


def _factor_setup(F, G):
    """(setup, ok): the factorisations of every instance, and which instances
    they serve (finite, of full column rank within FACTOR_COND); the others
    are factorised as if F and G had orthonormal columns, for shape's sake."""
    m, r = F.shape[-2:]
    n = G.shape[-2]
    if r == 0 or r > m or r > n:
        return None, None
    ok = np.ones(F.shape[:-2], bool)
    served = []
    for A in (F, G):
        fine = np.all(np.isfinite(A), axis=(-2, -1))
        A = np.where(fine[..., None, None], A, 0.0)
        lam = np.linalg.eigvalsh(_t(A) @ A)             # σ² of A, ascending
        fine &= lam[..., 0] * FACTOR_COND ** 2 > lam[..., -1]
        # instances that the closed form does not serve get I-like columns (their result is discarded)
        spare = np.zeros(A.shape[-2:])
        spare[np.arange(r), np.arange(r)] = 1.0
        served.append(np.where(fine[..., None, None], A, spare))
        ok &= fine
    F, G = served
    Qf, Rf = _cholesky_qr(F)
    Qg, Rg = _cholesky_qr(G)
    lf, Ef = np.linalg.eigh(_t(Rf) @ Rf)
    lg, Eg = np.linalg.eigh(_t(Rg) @ Rg)
    return (F, G, Qf, Rf, Qg, Rg, lf, Ef, lg, Eg), ok


def _cholesky_qr(A):
    """(Q, R) with A = Q R, Q orthonormal columns, by CholeskyQR2 (two Cholesky
    factorisations of r × r Gram matrices: O(m·r²) in matrix products, where
    LAPACK's Householder QR of a tall thin matrix is far slower here); A of
    full column rank (condition number at most FACTOR_COND)."""
    R1 = _t(np.linalg.cholesky(_t(A) @ A))
    Q1 = _t(np.linalg.solve(_t(R1), _t(A)))
    R2 = _t(np.linalg.cholesky(_t(Q1) @ Q1))
    return _t(np.linalg.solve(_t(R2), _t(Q1))), R2 @ R1


def _sylvester(setup, C):
    """X with (FᵀF) X + X (GᵀG) = C."""
    lf, Ef, lg, Eg = setup[-4:]
    return Ef @ ((_t(Ef) @ C @ Eg) / (lf[..., :, None] + lg[..., None, :])) @ _t(Eg)


def _factor_operands(arrays):
    batch = np.broadcast_shapes(*(a.shape[:-2] for a in arrays))
    return [np.broadcast_to(a.astype(np.float64, copy=False), batch + a.shape[-2:]) for a in arrays]


def factor_pinv(F, G, ydot, dtype):
    """J⁺ vec(Ẏ) for Y = F Gᵀ: ``(dF, dG, ok)`` in ``dtype``, ``ok`` the
    instances of the batch that the closed form serves (the caller solves the
    others by LSQR); None when it serves none of them: complex numbers, or
    r > min(m, n)."""
    if is_complex(F.dtype) or is_complex(G.dtype) or is_complex(ydot.dtype):
        return None
    F, G, Y = _factor_operands((F, G, ydot))
    setup, ok = _factor_setup(F, G)
    if setup is None or not ok.any():
        return None
    F, G, Qf, Rf, Qg, Rg = setup[:6]
    YQg = Y @ Qg
    A = YQg - Qf @ (_t(Qf) @ YQg)
    dF = _t(np.linalg.solve(Rg, _t(A)))
    dG = _t(np.linalg.solve(Rf, _t(_t(Y) @ Qf)))
    X = _sylvester(setup, np.linalg.solve(Rf, _t(Qf) @ YQg @ Rg))
    return (dF + F @ X).astype(dtype, copy=False), (dG - G @ _t(X)).astype(dtype, copy=False), ok


def factor_pinv_adjoint(F, G, Fbar, Gbar, dtype):
    """(J⁺)ᵀ (F̄, Ḡ) for Y = F Gᵀ: ``(Ȳ, ok)`` with Ȳ dense in ``dtype``, or None (see factor_pinv)."""
    if any(is_complex(a.dtype) for a in (F, G, Fbar, Gbar)):
        return None
    F, G, Fbar, Gbar = _factor_operands((F, G, Fbar, Gbar))
    setup, ok = _factor_setup(F, G)
    if setup is None or not ok.any():
        return None
    F, G, Qf, Rf, Qg, Rg = setup[:6]
    first = (Fbar - Qf @ (_t(Qf) @ Fbar)) @ np.linalg.solve(Rg, _t(Qg))
    FGi = _t(np.linalg.solve(Rf, _t(Qf)))          # F (FᵀF)⁻¹
    S = _sylvester(setup, _t(F) @ Fbar - _t(Gbar) @ G)
    return (first + FGi @ _t(Gbar) + FGi @ S @ _t(G)).astype(dtype, copy=False), ok


# -- a rearranged outer product a ⊗ b (derive._outer_product) ---------------------
# Y holds each product a_e b_f once, so J θ̇ = ȧ bᵀ + a ḃᵀ after a fixed
# rearrangement of the entries, and JᵀJ (ẋ, ẏ) = (β ẋ + a (bᴴẏ), α ẏ + b (aᴴẋ))
# with α = ‖a‖², β = ‖b‖². Its null space is (a, -b) (a scale moves between the
# two); on the complement of span{(a, 0), (0, b)} it is β on the a part and α on
# the b part, and on that span [[β, ‖a‖‖b‖], [‖a‖‖b‖, α]] has eigenvalues 0 and
# α + β. Hence the pseudo-inverse below, O(p) per instance; complex fields
# alike (J is complex-linear: its real pseudo-inverse is the complex one).

def _vectors(arrays, ranks):
    """Each kernel array as (*batch, p) (its field's elements flattened)."""
    return [a.reshape(a.shape[:a.ndim - k] + (-1,)) for a, k in zip(arrays, ranks)]


def outer_zero_tol(pa: int, pb: int) -> float:
    """A factor of the outer product counts as zero when its squared norm is
    at most this times α + β: numpy's matrix_rank drops a singular value below
    eps·max(N, p)·σ_max, and J's are √α and √β with σ_max = √(α + β)."""
    return (np.finfo(np.float64).eps * max(pa * pb, pa + pb, 1)) ** 2


def _outer_norms(a, b):
    """α, β, and which of them count as zero (outer_zero_tol)."""
    alpha, beta = _dot(a, a).real, _dot(b, b).real
    tol = outer_zero_tol(a.shape[-1], b.shape[-1]) * (alpha + beta)
    return alpha, beta, alpha <= tol, beta <= tol


def _dot(a, x):
    """aᴴx along the last axis, without a temporary for real arrays."""
    return np.einsum("...i,...i->...", np.conj(a) if is_complex(a.dtype) else a, x)


def outer_gram_pinv(fields, arrays, ranks, dtype):
    """(JᵀJ)⁺ applied to the structural arrays ``arrays`` (the fields' kernel
    arrays, in the fields' order a, b) for the entry a ⊗ b rearranged, at the
    fields ``fields``; computed in double precision, returned in ``dtype``.
    Two passes over each pair (ẋ, a): aᴴẋ with ‖a‖², then ẋ·s + a·t."""
    from .targets.numba import outer
    wide = complex_dtype(_FLOAT64) if any(is_complex(t.dtype) for t in (*fields, *arrays)) else _FLOAT64
    vecs = _vectors([t.astype(wide, copy=False) for t in (*fields, *arrays)], ranks + ranks)
    batch = np.broadcast_shapes(*(v.shape[:-1] for v in vecs))
    rows = math.prod(batch)
    a, b, x, y = (np.broadcast_to(v, batch + v.shape[-1:]).reshape(rows, v.shape[-1]) for v in vecs)
    alpha, xi = outer.dots(a, x)                     # ‖a‖², aᴴẋ
    beta, eta = outer.dots(b, y)
    tol = outer_zero_tol(a.shape[-1], b.shape[-1]) * (alpha + beta)
    a0, b0 = alpha <= tol, beta <= tol
    with np.errstate(divide="ignore", invalid="ignore"):
        s1 = np.where(b0, 0, 1 / beta)
        t1 = np.where(a0, 0, 1 / alpha)
        both = ~(a0 | b0)
        # (βξ/α + η)/(α + β)² - ξ/(αβ) = (η - ξ(α + 2β)/β)/(α + β)², free of 1/α (no cancellation for α ≪ β)
        s2 = np.where(both, (eta - xi * (alpha + 2 * beta) / beta) / (alpha + beta) ** 2, 0)
        t2 = np.where(both, (xi - eta * (2 * alpha + beta) / alpha) / (alpha + beta) ** 2, 0)
    # a = 0 (b ≠ 0): J θ̇ = ȧ bᵀ only and (JᵀJ)⁺ = (ẋ/β, 0); b = 0 alike; both: J = 0
    return tuple(outer.combine(v, c1, w, c2).reshape(batch + f.shape[f.ndim - k:]).astype(dtype, copy=False)
                 for v, c1, w, c2, f, k in ((x, s1, a, s2, fields[0], ranks[0]), (y, t1, b, t2, fields[1], ranks[1])))


def outer_class(owner: str, fields, ranks, n_entries: int):
    """parametrisation_class of each instance for the entry a ⊗ b rearranged:
    rank J = p_a + p_b - 1 when a, b ≠ 0 (the scale between them), p_a when
    only b ≠ 0 (columns ȧ bᵀ), p_b when only a ≠ 0, 0 when both vanish; a
    column of J is non-zero when the other factor is."""
    if not all(np.isfinite(f).all() for f in fields):
        raise ValueError(f"parametrisation: x ({owner}) has NaN or infinite field values, so rank J is undefined")
    a, b = _vectors(fields, ranks)
    _, _, a0, b0 = _outer_norms(a, b)
    a0, b0 = np.broadcast_arrays(a0, b0)
    out = np.empty(a0.shape, object)
    for index in np.ndindex(a0.shape):
        za, zb = bool(a0[index]), bool(b0[index])
        used = (0 if zb else a.shape[-1]) + (0 if za else b.shape[-1])
        out[index] = parametrisation_class(used - (not za and not zb), used, n_entries)
    return out.tolist() if out.ndim else out.item()


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


def _rownorm(a: np.ndarray) -> np.ndarray:
    """‖row‖ of each row (numpy's pairwise sums along a row do not depend on
    the other rows: an instance gets the same norm alone or in a batch);
    over both parts of complex numbers."""
    if a.dtype.kind == "c":
        return np.sqrt(np.add.reduce(a.real * a.real + a.imag * a.imag, axis=-1))
    return np.sqrt(np.add.reduce(a * a, axis=-1))


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.add.reduce(a * b, axis=-1)


class _Linearisation:
    """J at x, per instance of a batch of ``nb`` (the broadcast of x's batch
    and the operands'), matrix-free: structural vectors are rows of ``(k, p)``
    arrays, natural ones rows of ``(k, N)``, and every product with J or Jᵀ is
    one call of the generated kernels' batched wrappers on those k instances
    (``act``: which instances of the batch; all by default). ``arrays`` are
    x's kernel arrays in float64 (the solvers run in float64 whatever the
    fields' precision), each with its own batch shape: the wrappers' index
    arrays broadcast them without a copy."""

    def __init__(self, owner, sizes, arrays, ranks, batch, shape, push, pull, weights, out_dtype=None):
        self.owner, self.sizes = owner, tuple(sizes)
        # complex numbers (pairs of reals): the kernels run in complex128 when
        # the fields or the dense matrices are complex; a real field's part of
        # a pullback is its real part (the adjoint in Re⟨a, b⟩ restricted to reals)
        self.fdtype = _COMPLEX128 if any(a.dtype.kind == "c" for a in arrays) else _FLOAT64
        self.odtype = _COMPLEX128 if (out_dtype is not None and is_complex(out_dtype)) else self.fdtype
        self.kdtype = _COMPLEX128 if is_complex(self.fdtype) or is_complex(self.odtype) else _FLOAT64
        arrays = cast(tuple(arrays), self.kdtype)
        self.batch = tuple(batch)
        self.nb = _count(self.batch)
        own = [a.shape[:a.ndim - r] for a, r in zip(arrays, ranks)]
        self.shapes = [a.shape[a.ndim - r:] for a, r in zip(arrays, ranks)]
        self.fields = tuple(a.reshape((_count(o),) + s) for a, o, s in zip(arrays, own, self.shapes))
        self.index = tuple(_index(o, self.batch) for o in own)
        self.bounds = np.cumsum([0] + [_count(s) for s in self.shapes])
        self.p = int(self.bounds[-1])
        self.shape = tuple(shape)
        self.n_entries = self.shape[0] * self.shape[1]
        self.push_k, self.pull_k = push, pull
        if is_complex(self.fdtype):
            # Σ|c|² of a complex element's two columns is not what the weights
            # kernel squares; the columns that are not zero, from a random probe
            self.weights = None
            rng = np.random.default_rng(1)
            y = rng.standard_normal((self.nb, self.n_entries))
            if is_complex(self.odtype):
                y = y + 1j * rng.standard_normal((self.nb, self.n_entries))
            self.used = self.vjp(y) != 0
        else:
            buf, views = self._struct_buffer(self.nb, _FLOAT64)
            real_fields = cast(self.fields, _FLOAT64)
            run(weights, self.nb, self.sizes, real_fields, self.index, views)
            self.weights = self._joined(buf, views)
            self.used = self.weights > 0     # columns of J that are not zero (Σ |c|² > 0)

    # structural vectors (k, p) <-> per-field kernel arrays (k, *shape)
    def _contiguous_views(self, k: int) -> bool:
        return k <= 1 or len(self.shapes) <= 1

    def _struct_buffer(self, k: int, dtype=None):
        """A zeroed (k, p) buffer and per-field arrays that a kernel fills
        (views of the buffer where they are contiguous, else their own)."""
        dtype = self.kdtype if dtype is None else dtype
        if self._contiguous_views(k):
            buf = np.zeros((k, self.p), dtype)
            return buf, tuple(buf[:, a:b].reshape((k,) + s)
                              for a, b, s in zip(self.bounds[:-1], self.bounds[1:], self.shapes))
        return None, tuple(np.zeros((k,) + s, dtype) for s in self.shapes)

    def _joined(self, buf, views):
        if buf is not None:
            return buf
        k = views[0].shape[0]
        return np.concatenate([v.reshape(k, -1) for v in views], axis=1)

    def split(self, vec) -> tuple:
        k = vec.shape[0]
        return tuple(np.ascontiguousarray(vec[:, a:b]).reshape((k,) + s)
                     for a, b, s in zip(self.bounds[:-1], self.bounds[1:], self.shapes))

    def _index_of(self, act):
        if act is None:
            return self.index
        return tuple(ix[act] for ix in self.index)

    def jvp(self, vec, act=None) -> np.ndarray:
        """J θ̇ for the rows of ``vec`` (k, p): (k, N)."""
        k = vec.shape[0]
        out = np.zeros((k,) + self.shape, self.kdtype)
        ident = np.arange(k)
        run(self.push_k, k, self.sizes, self.fields + cast(self.split(vec), self.kdtype),
            self._index_of(act) + (ident,) * len(self.shapes), (out,))
        out = out.reshape(k, self.n_entries)
        return out if is_complex(self.odtype) else out.real

    def vjp(self, yvec, act=None) -> np.ndarray:
        """Jᵀ ȳ for the rows of ``yvec`` (k, N): (k, p)."""
        k = yvec.shape[0]
        buf, views = self._struct_buffer(k)
        run(self.pull_k, k, self.sizes, self.fields + (np.ascontiguousarray(yvec, self.kdtype).reshape((k,) + self.shape),),
            self._index_of(act) + (np.arange(k),), views)
        out = self._joined(buf, views)
        return out if is_complex(self.fdtype) else out.real

    # the products with J⁺ on kernel arrays and dense matrices of any batch broadcasting to ours
    def pinv(self, ydot, dtype) -> tuple:
        """J⁺ vec(Ẏ) as kernel arrays ``(*batch, *shape)`` in ``dtype``."""
        b = np.ascontiguousarray(np.broadcast_to(ydot, self.batch + self.shape), self.odtype)
        out = self.pinv_vec(b.reshape(self.nb, self.n_entries))
        return tuple(a.reshape(self.batch + s).astype(dtype, copy=False)
                     for a, s in zip(self.split(out), self.shapes))

    def pinv_adjoint(self, arrays, dtype) -> np.ndarray:
        """(J⁺)ᵀ θ̄ as a dense ``(*batch, m, n)`` in ``dtype``."""
        parts = [np.broadcast_to(a, self.batch + s).reshape(self.nb, -1) for a, s in zip(arrays, self.shapes)]
        vec = np.concatenate(parts, axis=1) if parts else np.zeros((self.nb, 0))
        out = self.pinv_adjoint_vec(np.ascontiguousarray(vec, self.fdtype))
        return out.reshape(self.batch + self.shape).astype(dtype, copy=False)

    def check_finite(self, finite: bool):
        if not finite:
            raise ValueError(f"parametrisation: x ({self.owner}) has NaN or infinite field values, "
                             "so rank J is undefined")


def _small(M, v):
    """M @ v per instance, for small (nb, c, c) and (nb, c), one row at a time."""
    out = np.zeros_like(v)
    for a in range(M.shape[1]):
        for t in range(M.shape[2]):
            out[:, a] += M[:, a, t] * v[:, t]
    return out


class Bordered(_Linearisation):
    """J⁺ for a bordered type, exactly, per instance of the batch.

    The elements split into G (each entry reads at most one of them, so
    J_Gᵀ J_G = diag(w), from the weights kernel) and a few coupled elements C.
    With M = JᵀJ = [[W, B], [Bᵀ, C]] on the used elements, the Schur complement
    S = C - Bᵀ W⁻¹ B (c × c) gives everything:

    * null(M) = {[-W⁻¹B t; t] : t ∈ null(S)} (a few vectors, orthonormalised);
    * for v in range(M), M z = v is solved by z_C = S⁺ (v_C - BᵀW⁻¹ v_G),
      z_G = W⁻¹ (v_G - B z_C); projecting z and v off null(M) gives M⁺ v;
    * J⁺ y = M⁺ Jᵀ y, (J⁺)ᵀ θ̄ = J M⁺ θ̄, rank J = |used G| + rank S.

    Setup costs one pushforward and one pullback per coupled element (each one
    batched kernel call); S's eigenvalues come from one stacked ``eigh``.
    Eigenvalues of S below 1e-10 · max|C| count as zero.
    """

    RTOL = 1e-10

    def __init__(self, owner, sizes, arrays, ranks, batch, shape, push, pull, weights, coupled, out_dtype=None):
        super().__init__(owner, sizes, arrays, ranks, batch, shape, push, pull, weights, out_dtype)
        nb, p = self.nb, self.p
        # Everything is kept in full p-coordinates (no gathers over p):
        # winv = 1/w on used G elements, 0 elsewhere; B has zero rows outside them.
        w_all = self.weights
        self.winv = np.zeros((nb, p))
        np.divide(1.0, w_all, out=self.winv, where=w_all > 0)
        self.c_idx = np.concatenate([np.arange(a, b) for (a, b), c in
                                     zip(zip(self.bounds[:-1], self.bounds[1:]), coupled) if c] or
                                    [np.zeros(0, dtype=np.int64)])
        self.winv[:, self.c_idx] = 0.0
        n_g = np.count_nonzero(self.winv, axis=1)
        c = self.c_idx.size
        B = np.zeros((nb, c, p))          # row t: J_Gᵀ J e_t (zero on coupled elements)
        C = np.zeros((nb, c, c))
        for t, e in enumerate(self.c_idx):
            unit = np.zeros((nb, p))
            unit[:, e] = 1.0
            g = self.vjp(self.jvp(unit))
            C[:, :, t] = g[:, self.c_idx]
            g[:, self.c_idx] = 0.0
            B[:, t] = g
        C = (C + np.swapaxes(C, 1, 2)) / 2
        self.B = B
        # every product below is written per row (instance) and per coupled
        # element, so that an instance gets the same bits alone or in a batch
        S = C.copy()
        with np.errstate(invalid="ignore", over="ignore"):
            for a in range(c):
                bw = B[:, a] * self.winv
                for t in range(c):
                    S[:, a, t] -= _rowdot(bw, B[:, t])
        # a NaN or inf that reaches J (not one in unused storage): J⁺ is NaN
        self.finite = np.all(np.isfinite(S), axis=(1, 2)) & np.all(np.isfinite(w_all), axis=1)
        S[~self.finite] = 0.0
        lam, Q = np.linalg.eigh((S + np.swapaxes(S, 1, 2)) / 2)
        tol = self.RTOL * (np.abs(np.where(self.finite[:, None, None], C, 0.0)).max(axis=(1, 2)) if c
                           else np.zeros(nb))
        keep = lam > tol[:, None]
        self.Q, self.lam_inv = Q, np.zeros_like(lam)
        np.divide(1.0, lam, out=self.lam_inv, where=keep)
        self.null = []
        with np.errstate(invalid="ignore", over="ignore"):
            for t in range(c):
                gone = ~keep[:, t]
                if not gone.any():
                    continue
                # null(M) = {[-W⁻¹B t; t]}: orthonormalise its few columns (Gram–Schmidt)
                u = np.zeros((nb, p))
                for a in range(c):
                    u -= Q[:, a, t, None] * B[:, a]
                u *= self.winv
                u[:, self.c_idx] = Q[:, :, t]
                u[~gone] = 0.0
                for q in self.null:
                    u -= q * _rowdot(q, u)[:, None]
                norm = _rownorm(u)
                np.divide(u, norm[:, None], out=u, where=norm[:, None] > 0)
                self.null.append(u)
        self.rank = n_g + np.count_nonzero(keep, axis=1)
        self.used[:, self.c_idx] = np.diagonal(C, axis1=1, axis2=2) > 0     # ‖J e‖² for each coupled element

    def _off_null(self, v):
        """v minus its part in null(JᵀJ), in place (v is a work vector)."""
        for q in self.null:
            v -= q * _rowdot(q, v)[:, None]
        return v

    def solve(self, v) -> np.ndarray:
        """M⁺ v for M = JᵀJ, v (nb, p) (not modified)."""
        with np.errstate(invalid="ignore", over="ignore"):
            v = self._off_null(v.copy()) if self.null else v
            z = v * self.winv
            c = self.c_idx.size
            if c:
                h = v[:, self.c_idx] - np.stack([_rowdot(self.B[:, a], z) for a in range(c)], axis=1)
                g = self.lam_inv * _small(np.swapaxes(self.Q, 1, 2), h)
                zc = _small(self.Q, g)
                for t in range(zc.shape[1]):         # z -= (Bᵀ zc) ∘ winv, one row at a time
                    z -= self.B[:, t] * zc[:, t, None] * self.winv
                z[:, self.c_idx] = zc
            z = self._off_null(z)
        z[~self.finite] = np.nan
        return z

    def pinv_vec(self, yvec):
        return self.solve(self.vjp(yvec))

    def pinv_adjoint_vec(self, vec):
        return self.jvp(self.solve(vec))

    def classify(self):
        self.check_finite(bool(np.all(self.finite)))
        used = np.count_nonzero(self.used, axis=1)
        entries = self.n_entries * (2 if is_complex(self.odtype) else 1)      # real dimensions
        return nested(self.batch, [parametrisation_class(int(r), int(u), entries)
                                   for r, u in zip(self.rank, used)])


def _sym_ortho(a, b):
    """scipy's stable Givens rotation (c, s, r) for arrays a, b."""
    with np.errstate(divide="ignore", invalid="ignore"):
        big_b = np.abs(b) > np.abs(a)
        tau_b = a / b
        s_b = np.sign(b) / np.sqrt(1 + tau_b * tau_b)
        c_b = s_b * tau_b
        r_b = b / s_b
        tau_a = b / a
        c_a = np.sign(a) / np.sqrt(1 + tau_a * tau_a)
        s_a = c_a * tau_a
        r_a = a / c_a
    c = np.where(big_b, c_b, c_a)
    s = np.where(big_b, s_b, s_a)
    r = np.where(big_b, r_b, r_a)
    zb, za = b == 0, (a == 0) & (b != 0)
    c = np.where(zb, np.sign(a), np.where(za, 0.0, c))
    s = np.where(zb, 0.0, np.where(za, np.sign(b), s))
    r = np.where(zb, np.abs(a), np.where(za, np.abs(b), r))
    return c, s, r


class Iterative(_Linearisation):
    """J⁺ by LSQR, matrix-free, for every instance of a batch at once: every
    iteration is one pushforward and one pullback (each one batched kernel call
    over the instances still running). Started from zero, LSQR's iterates stay
    in the row space of its operator, so it converges to the minimum-norm
    least-squares solution: J⁺ y for the operator J, (J⁺)ᵀ θ̄ = (Jᵀ)⁺ θ̄ for Jᵀ.

    The iteration is scipy's ``lsqr`` (Paige & Saunders 1982) written over
    arrays: per-instance scalars, each instance stopping by scipy's tests and
    leaving the batch then; an instance gets the same answer alone or in a
    batch. Tolerance atol = btol = 1e-12, condition limit 1e14, at most
    2·min(N, p) + 100 iterations; stopping at the cap or the condition limit
    with a relative normal-equation residual ‖Aᵀr‖/(‖A‖‖r‖) above 1e-10
    raises a ConvergenceWarning naming the type and the residual (one warning
    for a batch, with the number of instances and the largest residual).
    """

    TOL = 1e-12
    WARN_RESIDUAL = 1e-10
    CONLIM = 1e14
    PROBE_RTOL = 1e-6

    def _lsqr(self, what, shape, matvec, rmatvec, b, x_dtype=_FLOAT64):
        nb = b.shape[0]
        m, n = shape
        out = np.zeros((nb, n), x_dtype)
        if not m or not n:
            return out
        finite = np.all(np.isfinite(b), axis=1)
        out[~finite] = np.nan            # J⁺ mixes every entry: NaN in, NaN out
        act = np.flatnonzero(finite & np.any(b != 0, axis=1))
        if not act.size:
            return out
        atol = btol = self.TOL
        ctol = 1 / self.CONLIM
        eps = np.finfo(np.float64).eps
        cap = self.iteration_cap(shape)
        warn = []                         # (relative residual, iterations, why) of instances that stop short
        b = b[act]
        k = act.size
        st = dict(x=np.zeros((k, n), x_dtype), u=None, v=None, w=None)
        bnorm = _rownorm(b)
        beta = bnorm.copy()
        u = b * (1 / beta)[:, None]
        v = rmatvec(u, act)
        alfa = _rownorm(v)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where((alfa > 0)[:, None], v * (1 / alfa)[:, None], v)
        sc = dict(bnorm=bnorm, alfa=alfa, rhobar=alfa.copy(), phibar=beta, anorm=np.zeros(k), ddnorm=np.zeros(k),
                  res2=np.zeros(k), xxnorm=np.zeros(k), z=np.zeros(k), cs2=np.full(k, -1.0), sn2=np.zeros(k))
        st.update(u=u, v=v, w=v.copy())
        bad = ~np.isfinite(alfa)          # J is not finite at x (inf or nan in an entry's derivative)
        stop = (alfa * beta == 0) | bad
        itn = 0

        def leave(stop, bad):
            nonlocal act, st, sc
            out[act[stop & ~bad]] = st["x"][stop & ~bad]
            out[act[bad]] = np.nan
            keep = ~stop
            act = act[keep]
            st = {key: val[keep] for key, val in st.items()}
            sc = {key: val[keep] for key, val in sc.items()}

        if stop.any():
            leave(stop, bad)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            while act.size and itn < cap:
                itn += 1
                x, u, v, w = st["x"], st["u"], st["v"], st["w"]
                alfa, anorm = sc["alfa"], sc["anorm"]
                u = matvec(v, act) - alfa[:, None] * u
                beta = _rownorm(u)
                pos = beta > 0
                u = np.where(pos[:, None], (1 / beta)[:, None] * u, u)
                anorm = np.where(pos, np.sqrt(anorm ** 2 + alfa ** 2 + beta ** 2), anorm)
                if pos.all():
                    v = rmatvec(u, act) - beta[:, None] * v
                    alfa = _rownorm(v)
                elif pos.any():
                    v, alfa = v.copy(), alfa.copy()
                    v[pos] = rmatvec(u[pos], act[pos]) - beta[pos, None] * v[pos]
                    alfa[pos] = _rownorm(v[pos])
                v = np.where((pos & (alfa > 0))[:, None], (1 / alfa)[:, None] * v, v)
                cs, sn, rho = _sym_ortho(sc["rhobar"], beta)
                theta = sn * alfa
                rhobar = -cs * alfa
                phi = cs * sc["phibar"]
                phibar = sn * sc["phibar"]
                tau = sn * phi
                t1 = phi / rho
                t2 = -theta / rho
                dk = (1 / rho)[:, None] * w
                x = x + t1[:, None] * w
                w = v + t2[:, None] * w
                ddnorm = sc["ddnorm"] + _rownorm(dk) ** 2
                delta = sc["sn2"] * rho
                gambar = -sc["cs2"] * rho
                rhs = phi - delta * sc["z"]
                zbar = rhs / gambar
                xnorm = np.sqrt(sc["xxnorm"] + zbar ** 2)
                gamma = np.sqrt(gambar ** 2 + theta ** 2)
                cs2 = gambar / gamma
                sn2 = theta / gamma
                z = rhs / gamma
                xxnorm = sc["xxnorm"] + z ** 2
                acond = anorm * np.sqrt(ddnorm)
                rnorm = np.sqrt(phibar ** 2 + sc["res2"])
                arnorm = alfa * np.abs(tau)
                bnorm = sc["bnorm"]
                test1 = rnorm / bnorm
                test2 = arnorm / (anorm * rnorm + eps)
                test3 = 1 / (acond + eps)
                t1 = test1 / (1 + anorm * xnorm / bnorm)
                rtol = btol + atol * anorm * xnorm / bnorm
                istop = np.zeros(act.size, dtype=np.int64)
                for code, hit in ((7, itn >= cap), (6, 1 + test3 <= 1), (5, 1 + test2 <= 1), (4, 1 + t1 <= 1),
                                  (3, test3 <= ctol), (2, test2 <= atol), (1, test1 <= rtol)):
                    istop = np.where(hit, code, istop)
                st = dict(x=x, u=u, v=v, w=w)
                sc.update(alfa=alfa, rhobar=rhobar, phibar=phibar, anorm=anorm, ddnorm=ddnorm, cs2=cs2, sn2=sn2,
                          z=z, xxnorm=xxnorm)
                bad = ~(np.all(np.isfinite(u), axis=1) & np.all(np.isfinite(v), axis=1))
                short = (istop == 3) | (istop == 6) | (istop == 7)
                if short.any():
                    denom = anorm * rnorm
                    rel = np.where(denom != 0, arnorm / np.where(denom != 0, denom, 1.0), 0.0)
                    for r, code in zip(rel[short & ~bad], istop[short & ~bad]):
                        if not r <= self.WARN_RESIDUAL:
                            warn.append((r, code))
                stop = (istop != 0) | bad
                if stop.any():
                    leave(stop, bad)
        if warn:
            rel, code = max(warn, key=lambda t: t[0])
            why = "the iteration cap" if code == 7 else "the condition-number limit"
            many = f" ({len(warn)} of {nb} instances; the largest)" if nb > 1 else ""
            warnings.warn(f"{self.owner}: {what}: LSQR stopped at {why} after {itn} iterations; "
                          f"relative normal-equation residual{many} {rel:.2e}, the result is approximate",
                          ConvergenceWarning, stacklevel=5)
        return out

    def iteration_cap(self, shape) -> int:
        return 2 * min(shape) + 100

    def pinv_vec(self, yvec):
        return self._lsqr("J⁺", (self.n_entries, self.p), self.jvp, self.vjp, yvec, self.fdtype)

    def pinv_adjoint_vec(self, vec):
        return self._lsqr("(J⁺)ᵀ", (self.p, self.n_entries), self.vjp, self.jvp, vec, self.odtype)

    def classify(self):
        rng = np.random.default_rng(0)
        z = rng.standard_normal((self.nb, self.p))
        if is_complex(self.fdtype):
            z = z + 1j * rng.standard_normal((self.nb, self.p))
        z = z * self.used
        jz = self.jvp(z)
        self.check_finite(bool(np.all(np.isfinite(jz))))
        zn = _rownorm(z)
        full_col = (zn == 0) | (_rownorm(z - self.pinv_vec(jz)) <= self.PROBE_RTOL * zn)
        y = rng.standard_normal((self.nb, self.n_entries))
        if is_complex(self.odtype):
            y = y + 1j * rng.standard_normal((self.nb, self.n_entries))
        yn = _rownorm(y)
        full_row = (yn == 0) | (_rownorm(y - self.jvp(self.pinv_vec(y))) <= self.PROBE_RTOL * yn)
        # r = p_a and r = N: exact; r = p_a only: under; r = N only: over
        names = {(True, True): "exact", (True, False): "under", (False, True): "over", (False, False): "deficient"}
        return nested(self.batch, [names[bool(c), bool(r)] for c, r in zip(full_col, full_row)])


# -- Toeplitz products by FFT over a batch ---------------------------------------------

def toeplitz_matmul(c, r, x):
    """T @ x for the Toeplitz T of first column c ``(..., m)`` and first row r
    ``(..., n)`` (r[..., 0] unused), x ``(..., n, k)``, batches broadcasting:
    scipy.linalg.matmul_toeplitz's circulant embedding, over leading axes."""
    from scipy.fft import fft, ifft, irfft, rfft

    m, n = c.shape[-1], r.shape[-1]
    size = m + n - 1
    col = np.concatenate((c, r[..., :0:-1]), axis=-1)
    if col.dtype.kind == "c" or x.dtype.kind == "c":
        return ifft(fft(col, axis=-1)[..., None] * fft(x, n=size, axis=-2), n=size, axis=-2)[..., :m, :]
    fc = rfft(col, axis=-1)[..., None]
    fx = rfft(x, n=size, axis=-2)
    return irfft(fc * fx, n=size, axis=-2)[..., :m, :]
