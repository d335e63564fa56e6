"""What generated PyTorch modules import (``generated/torch/<module>.py``).

Argument conversion and checks, the small tensor helpers the emitted code
uses, and the pseudo-inverse of J for the types whose J depends on x (closed
forms for a rearranged outer product and for Y = F Gᵀ, the bordered Schur
complement and a matrix-free LSQR). Everything is plain
torch: it runs on the fields' device in their precision, is differentiable
by autograd (reverse and forward mode, to any order) and runs under
``torch.func.vmap``; there is no host round trip in any map.

Batches are leading dimensions, as in GPyTorch's ``linear_operator``: a field
of declared rank r may carry batch dimensions before its last r; the batch
shapes of the fields (and of the operands of a map) broadcast together, and a
map returns the broadcast batch shape.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as _F

from .runtime import _broadcast, batch_shape  # noqa: F401 (batch_shape re-exported: generated modules call it)
from .runtime import FACTOR_COND as _FACTOR_COND, block_counts as _block_counts, pinv2 as _pinv2
from .runtime import outer_zero_tol as _outer_zero_tol
from .runtime import (ConvergenceWarning, bad_arguments, check_dims,  # noqa: F401 (re-exported)
                      given_size, parametrisation_class, solve_size)
from .runtime import IntField as _IntField
from .runtime import check_int_range, check_int_steps, check_monotone, check_read  # noqa: F401 (re-exported: integer fields)
from .runtime import expand_range, points, static_values  # noqa: F401 (re-exported: data patterns)
from .runtime import check_shape as check_int_shape  # noqa: F401 (an integer field: no batch dimensions)


# -- arguments ----------------------------------------------------------------

def _tensor(owner: str, what: str, value):
    """``value`` as a tensor (tensors as they are); non-numeric values
    refused with ``what`` named."""
    if isinstance(value, torch.Tensor):
        t = value
    else:
        try:
            t = torch.as_tensor(value.detach().numpy() if hasattr(value, "detach") else value)
        except Exception as exc:
            raise TypeError(f"{owner}: {what} is not an array of numbers ({exc})") from None
    if not (t.is_complex() or t.is_floating_point() or t.dtype in _INTEGRAL):
        raise TypeError(f"{owner}: {what} must hold real or complex numbers, got dtype {t.dtype}")
    return t


_INTEGRAL = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def as_field(owner: str, name: str, value, rank: int):
    """A field as a tensor whose last ``rank`` dimensions are its declared
    shape (any before them are batch dimensions). Integers and bools become
    floating point; dtype and device are settled by ``settle``."""
    if value is None:
        raise TypeError(f"{owner}: missing field '{name}'")
    t = _tensor(owner, f"field '{name}'", value)
    if t.ndim < rank:
        kind = f"a {rank}-dimensional array" if rank else "a scalar"
        raise ValueError(f"{owner}: field '{name}' must be {kind} (after any batch dimensions), "
                         f"got shape {tuple(t.shape)}")
    return t


def trailing(arr, rank: int) -> tuple:
    """The declared (non-batch) part of a field's shape."""
    return tuple(arr.shape[arr.ndim - rank:])


def check_shape(owner: str, name: str, arr, rank: int, expected: tuple, formula: str, sizes: str) -> None:
    if any(d < 0 for d in expected):
        raise ValueError(f"{owner}: sizes {sizes} give field '{name}' the shape {formula} = {expected}, "
                         "which has a negative dimension")
    got = trailing(arr, rank)
    if got != tuple(expected):
        raise ValueError(f"{owner}: field '{name}' must have shape {formula} = {tuple(expected)} "
                         f"(with {sizes}), got {got}")


def settle(owner: str, names: tuple, values: tuple, arrays: tuple, ranks: tuple) -> tuple:
    """One device and one dtype for all fields, and their batch shapes checked.

    The device and dtype are those of the fields given as tensors (float32
    with float64 promotes to float64, as torch's arithmetic does; tensors on
    two devices are refused); fields given as numbers, lists or numpy arrays
    follow them (alone, they keep a numpy array's float dtype, else torch's
    default dtype, on the CPU). Integer and bool fields become that dtype.
    One complex field makes them all complex (of the same precision)."""
    given = [(n, a) for n, v, a in zip(names, values, arrays) if isinstance(v, torch.Tensor)]
    ref = given or list(zip(names, arrays))
    device = ref[0][1].device if ref else torch.device("cpu")
    for n, a in given:
        if a.device != device:
            raise ValueError(f"{owner}: fields '{given[0][0]}' and '{n}' are on different devices "
                             f"({device} and {a.device})")
    floats = [a.dtype for _, a in ref if a.is_floating_point() or a.is_complex()]
    dtype = floats[0] if floats else torch.get_default_dtype()
    for d in floats[1:]:
        dtype = torch.promote_types(dtype, d)
    if any(a.is_complex() for a in arrays) and not dtype.is_complex:
        dtype = complex_dtype(dtype)        # a complex number, a list or numpy array among them
    arrays = tuple(a if (a.dtype == dtype and a.device == device) else a.to(device=device, dtype=dtype)
                   for a in arrays)
    batch_shape(owner, [(f"field '{n}'", a.shape[:a.ndim - r]) for n, a, r in zip(names, arrays, ranks)])
    return arrays


def batch_of(arrays, ranks) -> tuple:
    """The fields' broadcast batch shape (leaves that are not tensors, as
    pytree utilities pass them, count as unbatched)."""
    out = ()
    for a, r in zip(arrays, ranks):
        if isinstance(a, torch.Tensor):
            out = _broadcast(out, tuple(a.shape[:a.ndim - r]))
    return out


def dtype_of(arrays):
    return arrays[0].dtype if arrays else torch.get_default_dtype()


_COMPLEX = {torch.float16: torch.complex32, torch.float32: torch.complex64, torch.float64: torch.complex128}
_REAL = {c: r for r, c in _COMPLEX.items()}


def complex_dtype(dtype):
    """The complex dtype of the same precision."""
    return dtype if dtype.is_complex else _COMPLEX.get(dtype, torch.complex128)


def real_dtype(dtype):
    """The real dtype of the same precision."""
    return _REAL.get(dtype, dtype)


def out_dtype(dtype, complex_output: bool):
    """The dense matrix's dtype: the fields', complex when the entry has an
    imaginary constant."""
    return complex_dtype(dtype) if complex_output else dtype


def conj(t):
    """The conjugate (a real tensor as it is)."""
    return torch.conj(t) if t.is_complex() else t


def device_of(arrays):
    return arrays[0].device if arrays else torch.device("cpu")


def check_instance(func: str, name: str, value, cls, like=None):
    """``value`` must be a ``cls``; with ``like``, of the same sizes and device."""
    if not isinstance(value, cls):
        raise TypeError(f"{func}: argument '{name}' must be of type {cls.__name__}, got {type(value).__name__}")
    if like is not None and value._size_values != like._size_values:
        n = len(cls._sizes)
        if value._size_values[:n] == like._size_values[:n]:
            field = next(f for f, a, b in zip(getattr(cls, "_ints", ()), like._size_values[n:], value._size_values[n:])
                         if a != b)
            raise ValueError(f"{func}: argument '{name}' must have the integer field '{field}' of x "
                             "(the same pattern)")
        sizes = ", ".join(f"{s}={v}" for s, v in zip(cls._sizes, like._size_values))
        got = ", ".join(f"{s}={v}" for s, v in zip(cls._sizes, value._size_values))
        raise ValueError(f"{func}: argument '{name}' must have the sizes of x ({sizes}), got ({got})")
    if like is not None and value._arrays and like._arrays and value._arrays[0].device != like._arrays[0].device:
        raise ValueError(f"{func}: argument '{name}' is on {value._arrays[0].device}, x on "
                         f"{like._arrays[0].device}")
    return value


def cast(t, dtype):
    """``t`` in ``dtype``; a complex tensor cast to a real dtype keeps its real
    part (ChainRulesCore's ProjectTo: a real primal's cotangent is real)."""
    if t.dtype == dtype:
        return t
    if t.is_complex() and not dtype.is_complex:
        t = torch.real(t)
    return t.to(dtype)


def _argument(func: str, name: str, value, dtype, device, promote: bool = False):
    if isinstance(value, torch.Tensor):
        if value.device != device:
            raise ValueError(f"{func}: argument '{name}' is on {value.device}, x on {device}")
        t = value
    else:
        t = _tensor(func, f"argument '{name}'", value).to(device=device)
    if promote and t.is_complex():
        dtype = complex_dtype(dtype)
    return cast(t, dtype)


def as_dense(func: str, name: str, value, shape: tuple, dtype, device):
    """A dense argument whose last dimensions are ``shape`` (any before them
    are batch dimensions), in the instance's dtype, on its device."""
    arr = _argument(func, name, value, dtype, device)
    if tuple(arr.shape[arr.ndim - len(shape):]) != tuple(shape) or arr.ndim < len(shape):
        raise ValueError(f"{func}: argument '{name}' must have shape {tuple(shape)} "
                         f"(after any batch dimensions), got {tuple(arr.shape)}")
    return arr


def as_operand(func: str, name: str, value, rows: int, what: str, dtype, device):
    """A vector ``(rows,)`` or a (batch of) matrices ``(..., rows, k)`` as a
    tensor with at least 2 dimensions, and whether it was a vector (complex
    when the operand is)."""
    arr = _argument(func, name, value, dtype, device, promote=True)
    if arr.ndim == 0 or arr.shape[-1 if arr.ndim == 1 else -2] != rows:
        raise ValueError(f"{func}: argument '{name}' must have shape ({rows},) or (..., {rows}, k) "
                         f"({what}), got {tuple(arr.shape)}")
    vector = arr.ndim == 1
    return (arr[:, None] if vector else arr), vector


def like_operand(arrays, operand):
    """The fields made complex for a complex operand of a real matrix (the
    products need one dtype; autograd takes the real part back to them)."""
    if operand.is_complex() and arrays and not arrays[0].is_complex():
        return tuple(a.to(complex_dtype(a.dtype)) for a in arrays)
    return arrays


def like(arrays, dtype):
    """Structural arrays (of a tangent or cotangent) in the primal's dtype
    (a complex one for a real primal: its real part)."""
    return tuple(cast(a, dtype) for a in arrays)


def expand(arrays, ranks, batch) -> tuple:
    """Fields broadcast to the batch shape ``batch`` (views, no copy)."""
    return tuple(a.expand(tuple(batch) + trailing(a, r)) for a, r in zip(arrays, ranks))


def nested(batch, values):
    """A per-instance result: the value itself for no batch, else nested
    lists shaped like ``batch`` (as ``Tensor.tolist``)."""
    if not batch:
        return values[0]
    out = list(values)
    for d in reversed(batch[1:]):
        out = [out[k:k + d] for k in range(0, len(out), d)]
    return out


def repeat(batch, value):
    """``nested`` of the same value for every instance."""
    return nested(batch, [value] * math.prod(batch))


def register(cls):
    """Register a generated class as a pytree node (the fields its leaves,
    the sizes static): torch.func.vmap / grad / jvp take and return instances."""
    from torch.utils import _pytree

    _pytree.register_pytree_node(
        cls, lambda x: (list(x._arrays), x._size_values),
        lambda arrays, sizes: cls._from_arrays(sizes, tuple(arrays)),
        serialized_type_name=f"rulegen.{cls.__module__}.{cls.__name__}")
    return cls


# -- numpy-style functions over torch that also take Python numbers ------------

def _is_t(a) -> bool:
    return isinstance(a, torch.Tensor)


def _like_t(a, ref):
    return a if _is_t(a) else torch.as_tensor(a, device=ref.device)


class xp:
    """What the array printer (``rulegen/targets/arrays.py``) calls as
    ``xp.<name>``: torch's functions, accepting Python numbers where the
    printed code passes sizes (``minimum(n, i + 1)``) or constants."""

    @staticmethod
    def where(c, a, b):
        return torch.where(c if _is_t(c) else torch.as_tensor(c), a, b)

    @staticmethod
    def minimum(a, b):
        if _is_t(a) and _is_t(b):
            return torch.minimum(a, b)
        if _is_t(a):
            return torch.clamp(a, max=b)
        if _is_t(b):
            return torch.clamp(b, max=a)
        return min(a, b)

    @staticmethod
    def maximum(a, b):
        if _is_t(a) and _is_t(b):
            return torch.maximum(a, b)
        if _is_t(a):
            return torch.clamp(a, min=b)
        if _is_t(b):
            return torch.clamp(b, min=a)
        return max(a, b)

    @staticmethod
    def logical_and(a, b):
        if _is_t(a) or _is_t(b):
            return torch.logical_and(_like_t(a, b), _like_t(b, a))
        return bool(a and b)

    @staticmethod
    def logical_or(a, b):
        if _is_t(a) or _is_t(b):
            return torch.logical_or(_like_t(a, b), _like_t(b, a))
        return bool(a or b)

    @staticmethod
    def logical_not(a):
        return torch.logical_not(a) if _is_t(a) else not a

    @staticmethod
    def exp(a):
        return torch.exp(a) if _is_t(a) else math.exp(a)

    @staticmethod
    def log(a):
        return torch.log(a) if _is_t(a) else (math.log(a) if a > 0 else (-math.inf if a == 0 else math.nan))

    @staticmethod
    def sqrt(a):
        return torch.sqrt(a) if _is_t(a) else (math.sqrt(a) if a >= 0 else math.nan)

    @staticmethod
    def abs(a):
        return torch.abs(a) if _is_t(a) else abs(a)

    @staticmethod
    def sign(a):
        return torch.sign(a) if _is_t(a) else float((a > 0) - (a < 0))

    @staticmethod
    def conj(a):
        if _is_t(a):
            return torch.conj(a) if a.is_complex() else a
        return a.conjugate()

    @staticmethod
    def real(a):
        if _is_t(a):
            return torch.real(a) if a.is_complex() else a
        return a.real


def imag(a):
    """The imaginary part; 0 for a real tensor (torch.imag refuses one)."""
    if _is_t(a):
        return torch.imag(a) if a.is_complex() else torch.zeros_like(a)
    return a.imag


# -- helpers of the emitted code ---------------------------------------------------

def extreme(fn, arr) -> int:
    """min or max of a trace-time numpy array of indices (0 when empty)."""
    arr = np.asarray(arr)
    return int(fn(arr)) if arr.size else 0


def _clamp(ix, d: int):
    """An index into a dimension of size d, made safe: negative ones wrap as
    in Python (torch does that), the rest are clamped into [-d, d). Only
    masked positions (whose values are thrown away) are ever moved."""
    if _is_t(ix):
        return ix.clamp(-d, d - 1)
    return min(max(int(ix), -d), d - 1)


def affine_in(d: int, const: int, terms, wrap: bool) -> bool:
    """Whether ``const + Σ a·v`` over ``v`` in ``range(lo, hi)`` (``terms``:
    ``(a, lo, hi)``) stays in [-d, d) (``wrap``) or [0, d): then a gather or
    scatter at it needs no clamping (a trace-time test on Python ints)."""
    lo = hi = const
    for a, first, end in terms:
        if end <= first:
            return True                     # an empty grid reads nothing
        lo += min(a * first, a * (end - 1))
        hi += max(a * first, a * (end - 1))
    return (-d if wrap else 0) <= lo and hi < d


def take(field, index):
    """``field[..., *index]``: index arrays broadcasting to the grid, which at
    masked positions may point outside the field (JAX clamps there silently,
    torch raises: they are clamped first). An empty field gives zeros."""
    rank = len(index)
    dims = field.shape[field.ndim - rank:]
    if any(d == 0 for d in dims):
        shape = torch.broadcast_shapes(*(ix.shape for ix in index if _is_t(ix)))
        return field.new_zeros(tuple(field.shape[:field.ndim - rank]) + tuple(shape))
    return field[(Ellipsis,) + tuple(_clamp(ix, d) for ix, d in zip(index, dims))]


def element(field, index, ndim: int):
    """``field[..., *index]`` for an index the grid does not move, with
    ``ndim`` trailing unit axes (the grid's); 0 when the field is empty (then
    the grid that reads it is empty too)."""
    rank = len(index)
    dims = field.shape[field.ndim - rank:]
    lead = tuple(field.shape[:field.ndim - rank])
    if any(d == 0 for d in dims):
        out = field.new_zeros(lead)
    else:
        out = field[(Ellipsis,) + tuple(_clamp(ix, d) for ix, d in zip(index, dims))]
    return out.reshape(lead + (1,) * ndim) if ndim else out


def guarded(mask, r):
    """``r`` where ``mask`` holds, a detached copy elsewhere: what a masked
    position computes cannot send NaN into a derivative."""
    return torch.where(mask, r, r.detach())


def _grid(val, shape):
    """``val`` broadcast so that its last dimensions are the grid ``shape``
    (any before them, batch dimensions, kept)."""
    lead = tuple(val.shape[:max(0, val.ndim - len(shape))])
    return val.expand(lead + tuple(shape))


def grid_broadcast(val, shape, device):
    if not _is_t(val):
        return torch.full(tuple(shape), val, device=device)
    return _grid(val, shape)


def cells(val, mask, shape, dtype, device):
    """The values of a grid: ``val`` where ``mask`` holds, 0 elsewhere."""
    if not _is_t(val):
        val = torch.as_tensor(val, dtype=dtype, device=device)
    elif val.dtype != dtype:
        val = val.to(dtype)
    if mask is not None:
        val = torch.where(mask, val, 0.0)
    return _grid(val, shape)


def pad_to(block, corner, shape):
    """``block`` placed at ``corner`` of zeros of ``shape`` (the last
    ``len(shape)`` dimensions; batch dimensions kept)."""
    k = len(shape)
    widths = []
    for c, s, b in reversed(list(zip(corner, shape, block.shape[block.ndim - k:]))):
        widths += [c, s - c - b]
    if not any(widths):
        return block
    return _F.pad(block, widths)


def _safe_index(ix, shape, d: int):
    """Index grid ``ix`` (broadcast to ``shape``) into a dimension of size d:
    ``ix % d`` keeps every valid index (a negative one wraps as in Python)
    and sends the out-of-range ones of masked positions, which carry 0,
    somewhere harmless, in one pass."""
    return torch.broadcast_to(ix, tuple(shape)) % d


def scatter(out, index, values, shape, in_range: bool = False):
    """``out`` with ``values`` (a grid of ``shape``) added at ``index`` (index
    arrays into the last ``len(index)`` dimensions of ``out``). Masked
    positions hold 0 and may point anywhere (see ``_safe_index``), unless
    ``in_range`` says that every index lies in [0, d) already."""
    k = len(index)
    lead = tuple(out.shape[:out.ndim - k])
    dims = out.shape[out.ndim - k:]
    if any(d == 0 for d in dims) or 0 in tuple(shape):
        return out
    lin = None
    for ix, d in zip(index, dims):
        ix = _on(ix, out)
        part = torch.broadcast_to(ix, tuple(shape)) if in_range else _safe_index(ix, shape, d)
        lin = part if lin is None else lin * d + part
    vals = values.expand(lead + tuple(shape)).reshape(lead + (-1,))
    lin = lin.reshape(-1).expand(vals.shape)
    return out.reshape(lead + (-1,)).scatter_add(-1, lin, vals).reshape(out.shape)


def _on(ix, ref):
    return ix if _is_t(ix) else torch.as_tensor(ix, device=ref.device)


def take_rows(rhs, index, shape):
    """``rhs[..., index, :]`` for an index grid of ``shape`` (clamped as in ``take``)."""
    d = rhs.shape[-2]
    if d == 0:
        return rhs.new_zeros(tuple(rhs.shape[:-2]) + tuple(shape) + (rhs.shape[-1],))
    return rhs[..., _safe_index(_on(index, rhs), shape, d), :]


def scatter_rows(out, index, values, shape):
    """``out[..., index, :] += values`` for an index grid of ``shape`` (``values``: grid × k)."""
    d = out.shape[-2]
    if d == 0 or 0 in tuple(shape):
        return out
    lead = tuple(out.shape[:-2])
    k = out.shape[-1]
    ix = _safe_index(_on(index, out), shape, d).reshape(-1)
    vals = values.expand(lead + tuple(shape) + (k,)).reshape(lead + (-1, k))
    return out.index_add(-2, ix, vals)


def grid_sum(val, ndim: int):
    """Σ over the last ``ndim`` (grid) dimensions."""
    return val.sum(dim=tuple(range(-ndim, 0))) if ndim else val


def batched(out, batch, k: int):
    """The result of a map: ``out`` (its last ``k`` dimensions the matrix's)
    with the full batch shape, in memory of its own (never a view of a field)."""
    full = tuple(batch) + tuple(out.shape[out.ndim - k:])
    if tuple(out.shape) != full or out._base is not None:
        out = out.expand(full).clone(memory_format=torch.contiguous_format)
    return out


def diagonal_block(cells, si, sj, shape):
    """Zeros of ``shape`` (the last two dimensions) with ``cells`` (``(*b, L)``)
    at (si + t, sj + t): one diag_embed, padded (or cropped) into place.
    Positions outside the matrix hold 0 (masked) and are cropped."""
    L = cells.shape[-1]
    if L == 0:
        return cells.new_zeros(tuple(cells.shape[:-1]) + tuple(shape))
    corner = min(si, sj)
    return pad_to(torch.diag_embed(cells, offset=sj - si), (corner, corner), shape)


def _run_ok(start, length, size):
    return 0 <= start and start + length <= size


def diagonal_inner(W, cells, si, sj):
    """Σ_t cells[t] · W[si + t, sj + t] (a slice of W's diagonal)."""
    L = cells.shape[-1]
    off = sj - si
    diag = torch.diagonal(W, offset=off, dim1=-2, dim2=-1)
    start = min(si, sj)
    if _run_ok(start, L, diag.shape[-1]):
        return (cells * diag[..., start:start + L]).sum(dim=-1)
    t = torch.arange(L, device=cells.device)
    return (cells * take(W, (si + t, sj + t))).sum(dim=-1)


def diagonal_product(out, cells, rhs, dst, src):
    """``out[..., dst + t, :] += cells[t] · rhs[..., src + t, :]`` (a shifted
    diagonal times rhs; ``rhs`` None: ``out[..., dst + t] += cells[t]``), by
    slices and padding where the run lies inside both, else by a scatter."""
    L = cells.shape[-1]
    if L == 0:
        return out
    if rhs is None:
        if _run_ok(dst, L, out.shape[-1]):
            return out + pad_to(cells, (dst,), out.shape[-1:])
        t = torch.arange(L, device=cells.device)
        return scatter(out, (dst + t,), cells, (L,))
    if _run_ok(dst, L, out.shape[-2]) and _run_ok(src, L, rhs.shape[-2]):
        return out + pad_to(cells[..., None] * rhs[..., src:src + L, :], (dst, 0), out.shape[-2:])
    t = torch.arange(L, device=cells.device)
    return scatter_rows(out, dst + t, cells[..., None] * take_rows(rhs, src + t, (L,)), (L,))


# -- the transposed code of a gather type (θ̄ = Jᵀ W, written out) ---------------
# A field's cotangent starts as None ("nothing yet") and gathers its terms.

def finish(g, shape, batch, dtype, device):
    """A field cotangent with the full batch shape (zeros where nothing came)."""
    if g is None:
        return torch.zeros(tuple(batch) + tuple(shape), dtype=dtype, device=device)
    return batched(g, batch, len(shape))


def _start(g, shape, batch, like):
    return like.new_zeros(tuple(batch) + tuple(shape)) if g is None else g


def put_sum(g, val):
    """A scalar field's cotangent plus ``val``."""
    return val if g is None else g + val


def put_block(g, block, corner, shape, batch):
    """``g`` plus ``block`` placed at ``corner`` (the field's last dimensions,
    ``shape``): padding where it lies inside, a scatter-add elsewhere."""
    k = len(shape)
    dims = block.shape[block.ndim - k:]
    if all(_run_ok(c, b, s) for c, b, s in zip(corner, dims, shape)):
        placed = pad_to(block, corner, shape)
        return placed if g is None else g + placed
    grids = torch.meshgrid(*(torch.arange(c, c + b, device=block.device) for c, b in zip(corner, dims)),
                           indexing="ij")
    return put(g, grids, block, tuple(dims), shape, batch)


def put(g, index, vals, grid_shape, shape, batch, in_range: bool = False):
    """``g[..., *index] += vals`` (index arrays broadcasting to ``grid_shape``;
    masked positions hold 0 and have their indices wrapped, unless
    ``in_range``)."""
    return scatter(_start(g, shape, batch, vals), index, vals, grid_shape, in_range)


def put_element(g, index, val, shape, batch):
    """``g[..., *index] += val`` for one element."""
    return scatter(_start(g, shape, batch, val), index, val, ())


def diagonal_take(W, si, sj, length):
    """``W[..., si + t, sj + t]`` for t < length (a slice of a diagonal)."""
    diag = torch.diagonal(W, offset=sj - si, dim1=-2, dim2=-1)
    start = min(si, sj)
    if _run_ok(start, length, diag.shape[-1]):
        return diag[..., start:start + length]
    t = torch.arange(length, device=W.device)
    return take(W, (si + t, sj + t))


def pinv2(blocks, g):
    """The Gram blocks' pseudo-inverse per element (``rulegen.runtime.pinv2``)."""
    return _pinv2(blocks, g, torch)


def block_counts(blocks):
    return _block_counts(blocks, torch)


def div0(a, w):
    """``a / w`` with ``1/0 := 0`` (the pseudo-inverse of a diagonal)."""
    nz = w != 0
    return torch.where(nz, a / torch.where(nz, w, torch.ones_like(w)), torch.zeros_like(a))


# -- derivatives of the generated value code -----------------------------------

def pushforward(f, primals, tangents):
    """J θ̇: forward-mode derivative of ``f`` (a function of the field tuple).
    Broadcast (stride-0) primals and tangents are materialised first: a
    forward-mode dual cannot alias memory."""
    return torch.func.jvp(lambda *a: f(a), tuple(p.contiguous() for p in primals),
                          tuple(t.contiguous() for t in tangents))[1]


def pullback(f, primals, cotangent):
    """Jᵀ Ȳ: reverse-mode derivative of ``f`` at ``primals``."""
    _, vjp = torch.func.vjp(lambda *a: f(a), *primals)
    return vjp(cotangent)


_CACHE: dict = {}
_CACHE_SIZE = 64


def cached(key, compute):
    """A constant of the type (the gather weights: they depend on the sizes,
    dtype and device only), computed once and kept, detached."""
    value = _CACHE.get(key)
    if value is None:
        value = tuple(a.detach() for a in compute())
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = value
    return value


def concrete(t):
    """``bool(t)``, or None where the value cannot be read (under
    ``torch.func.vmap``, whose batched values have no single truth value)."""
    try:
        return bool(t)
    except RuntimeError:
        return None


# -- J⁺ for types whose J depends on x ----------------------------------------------

def tolerance(dtype) -> float:
    """The solvers' relative tolerance: 1e-12 in float64, scaled to the precision."""
    return max(1e-12, 10 * float(torch.finfo(dtype).eps))


class Flat:
    """Fields of one batch shape as flat vectors ``(*batch, p)`` and back."""

    def __init__(self, arrays, ranks, batch):
        self.batch = tuple(batch)
        self.shapes = [trailing(a, r) for a, r in zip(arrays, ranks)]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.bounds = np.cumsum([0] + self.sizes)
        self.p = int(self.bounds[-1])

    def flatten(self, arrays):
        if not arrays:
            return torch.zeros(self.batch + (0,))
        parts = [a.expand(self.batch + s).reshape(self.batch + (n,)) for a, s, n in
                 zip(arrays, self.shapes, self.sizes)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def unflatten(self, vec):
        return tuple(vec[..., a:b].reshape(self.batch + s)
                     for a, b, s in zip(self.bounds[:-1], self.bounds[1:], self.shapes))


def _mv(M, v):
    """``M @ v`` over the batch: M ``(*B, r, c)``, v ``(*B, c)``."""
    return (M @ v[..., None])[..., 0]


class Bordered:
    """J⁺ for a bordered type, exactly (see ``rulegen.runtime.Bordered``), on
    flat vectors ``(*batch, p)`` and ``(*batch, N)``: J_Gᵀ J_G = diag(w) on
    the elements G, a few coupled elements C, and the c × c Schur complement
    S = C - Bᵀ diag(1/w) B, per instance of the batch. Thresholds are masks
    (no value is read), so it runs under vmap. An eigenvalue of S counts as
    zero below max(1e-10, 1000 eps) · max|C|: S is a difference of sums of
    squares, and in float32 the rounding of an S that is exactly 0 (an
    over-parametrised type: ScaledMatrix) is far above 1e-10."""

    RTOL = 1e-10

    def __init__(self, owner, jvp, vjp, c_idx, weights, n_entries):
        self.owner, self.jvp, self.vjp = owner, jvp, vjp
        self.n_entries = n_entries
        w = weights
        self.batch, self.p = tuple(w.shape[:-1]), w.shape[-1]
        self.c_idx = torch.as_tensor(c_idx, dtype=torch.long, device=w.device)
        if self.c_idx.numel():
            w = w.index_fill(-1, self.c_idx, 0)
        self.winv = div0(torch.ones_like(w), w)
        self.n_g = torch.count_nonzero(w, dim=-1)
        if self.c_idx.numel():
            cols_c, rows_b = [], []
            for e in c_idx:
                unit = torch.zeros_like(w)
                unit[..., int(e)] = 1
                g = self.vjp(self.jvp(unit))
                cols_c.append(g[..., self.c_idx])
                rows_b.append(g.index_fill(-1, self.c_idx, 0))
            C = torch.stack(cols_c, dim=-1)
            C = (C + C.mT) / 2
            B = torch.stack(rows_b, dim=-2)                   # (*batch, c, p)
            S = C - (B * self.winv[..., None, :]) @ B.mT
            lam, Q = torch.linalg.eigh((S + S.mT) / 2)
            scale = C.abs().amax(dim=(-2, -1))
            eps = torch.finfo(w.dtype).eps
            keep = lam > max(self.RTOL, 1e3 * eps) * scale[..., None]
            self.B, self.Q, self.keep = B, Q, keep
            self.lam_inv = torch.where(keep, 1 / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam))
            # null(M) = {[-W⁻¹B t; t] : t ∈ null(S)}: its vectors as rows of U
            U = -(Q.mT @ B) * self.winv[..., None, :]
            U = U.index_copy(-1, self.c_idx, Q.mT.contiguous())
            self.U = torch.where(keep[..., :, None], torch.zeros_like(U), U)
            G = self.U @ self.U.mT
            gl, gq = torch.linalg.eigh(G)
            top = gl.abs().amax(dim=-1, keepdim=True).clamp(min=1e-300)
            good = gl > max(1e-12, 10 * eps) * top
            ginv = torch.where(good, 1 / torch.where(good, gl, torch.ones_like(gl)), torch.zeros_like(gl))
            self.G_inv = (gq * ginv[..., None, :]) @ gq.mT
            self.rank = self.n_g + torch.count_nonzero(keep, dim=-1)
            self.used = (w > 0).index_copy(-1, self.c_idx, torch.diagonal(C, dim1=-2, dim2=-1) > 0)
        else:
            self.rank = self.n_g
            self.used = w > 0

    def _off_null(self, v):
        if not self.c_idx.numel():
            return v
        return v - _mv(self.U.mT, _mv(self.G_inv, _mv(self.U, v)))

    def solve(self, v):
        """M⁺ v for M = JᵀJ, per instance."""
        v = self._off_null(v)
        if self.c_idx.numel():
            h = v[..., self.c_idx] - _mv(self.B, self.winv * v)
            zc = _mv(self.Q, self.lam_inv * _mv(self.Q.mT, h))
            z = (v - _mv(self.B.mT, zc)) * self.winv
            z = z.index_copy(-1, self.c_idx, zc)
        else:
            z = v * self.winv
        return self._off_null(z)

    def pinv_vec(self, yvec):
        """J⁺ y = M⁺ Jᵀ y."""
        return self.solve(self.vjp(yvec))

    def pinv_adjoint_vec(self, vec):
        """(J⁺)ᵀ θ̄ = J M⁺ θ̄."""
        return self.jvp(self.solve(vec))

    def classify(self):
        finite = bool(torch.all(torch.isfinite(self.winv)))
        if self.c_idx.numel():
            finite = finite and bool(torch.all(torch.isfinite(self.B)))
        if not finite:
            raise ValueError(f"parametrisation: x ({self.owner}) has NaN or infinite field values, "
                             "so rank J is undefined")
        rank = self.rank.reshape(-1).tolist()
        used = torch.count_nonzero(self.used, dim=-1).reshape(-1).tolist()
        return nested(self.batch, [parametrisation_class(r, u, self.n_entries) for r, u in zip(rank, used)])


def _safe_sqrt(x):
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


def lsqr(matvec, rmatvec, b, n: int, tol: float, cap: int, owner: str = "", what: str = "", x_dtype=None):
    """Minimum-norm least-squares solution of A x = b by LSQR (Paige & Saunders
    1982) started from zero, for every instance of a batch at once (b:
    ``(*batch, m)``): every iteration is one ``matvec`` and one ``rmatvec``.
    An instance stops when ‖r‖ ≤ tol(‖b‖ + ‖A‖‖x‖) or ‖Aᵀr‖ ≤ tol ‖A‖‖r‖
    and is frozen from then on; the loop ends when all have stopped, or at
    ``cap`` iterations, where it warns (ConvergenceWarning) when the
    relative normal-equation residual of one is above ``100 · tol``. Under
    ``torch.func.vmap`` the stopping test cannot be read: all ``cap``
    iterations run (stopped instances frozen) and no warning is given.

    Complex vectors are pairs of reals: ``rmatvec`` is the adjoint in the
    real inner product Re⟨a, b⟩, norms run over both parts and every scalar
    of the recurrence is real; ``x_dtype`` is the solution's dtype (real
    unknowns may meet a complex right-hand side)."""
    dtype = b.dtype if x_dtype is None else x_dtype
    tiny = torch.finfo(real_dtype(b.dtype)).tiny

    def norm(v):
        return torch.linalg.vector_norm(v, dim=-1)

    def sdiv(a, c):
        ok = c > tiny
        return torch.where(ok, a / torch.where(ok, c, torch.ones_like(c)), torch.zeros_like(a))

    def vdiv(v, c):
        return sdiv(v, c[..., None])

    beta = norm(b)
    u = vdiv(b, beta)
    v = rmatvec(u)
    alfa = norm(v)
    v = vdiv(v, alfa)
    bnorm = beta
    s = dict(x=torch.zeros(v.shape[:-1] + (n,), dtype=dtype, device=b.device), u=u, v=v, w=v, alfa=alfa,
             phibar=beta, rhobar=alfa, anorm=torch.zeros_like(beta), rel=torch.zeros_like(beta))
    done = (beta <= tiny) | (alfa <= tiny) | ~torch.isfinite(beta) | ~torch.isfinite(alfa)
    itn = torch.zeros(done.shape, dtype=torch.long, device=b.device)
    for _ in range(cap):
        if concrete(torch.all(done)):
            break
        u = matvec(s["v"]) - s["alfa"][..., None] * s["u"]
        beta = norm(u)
        u = vdiv(u, beta)
        anorm = _safe_sqrt(s["anorm"] ** 2 + s["alfa"] ** 2 + beta ** 2)
        v = rmatvec(u) - beta[..., None] * s["v"]
        alfa = norm(v)
        v = vdiv(v, alfa)
        rho = _safe_sqrt(s["rhobar"] ** 2 + beta ** 2)
        cs, sn = sdiv(s["rhobar"], rho), sdiv(beta, rho)
        theta, rhobar = sn * alfa, -cs * alfa
        phi, phibar = cs * s["phibar"], sn * s["phibar"]
        x = s["x"] + sdiv(phi, rho)[..., None] * s["w"]
        w = v - sdiv(theta, rho)[..., None] * s["w"]
        rnorm = phibar
        arnorm = alfa * torch.abs(sn * phi)
        rel = sdiv(arnorm, anorm * rnorm)
        stop = (rnorm <= tol * (bnorm + anorm * norm(x))) | (rel <= tol) | (alfa <= tiny) | (beta <= tiny) \
            | ~torch.isfinite(anorm)
        new = dict(x=x, u=u, v=v, w=w, alfa=alfa, phibar=phibar, rhobar=rhobar, anorm=anorm, rel=rel)
        s = {k: torch.where(done[..., None] if s[k].ndim > done.ndim else done, s[k], new[k]) for k in s}
        itn = itn + (~done).long()
        done = done | stop
    bad = (~done) & (s["rel"] > 100 * tol)
    if concrete(torch.any(bad)):
        worst = float(torch.where(bad, s["rel"], torch.zeros_like(s["rel"])).max())
        warnings.warn(f"{owner}: {what}: LSQR stopped at the iteration cap after {int(itn.max())} iterations; "
                      f"relative normal-equation residual {worst:.2e}, the result is approximate",
                      ConvergenceWarning, stacklevel=2)
    return s["x"]


class Operator:
    """J(θ) of a generated type (``f``: its destructure on a tuple of fields)
    as a matrix-free operator on flat vectors, per instance of a batch, and
    J⁺ through a solver that reads only ``f``'s pushforward and pullback:
    LSQR (general types) or the bordered Schur complement (``coupled``).

    ``pinv`` and ``pinv_adjoint`` go through ``_Pinv``, whose derivatives are
    the pseudo-inverse's own (Golub & Pereyra 1973), not those of the
    solver's iterations (which differ where the Krylov space is small)."""

    PROBE_RTOL = 1e-6

    def __init__(self, owner, f, inner, arrays, ranks, shape, batch, coupled=None, out_dtype=None):
        self.owner, self.f, self.inner, self.coupled = owner, f, inner, coupled
        self.batch = tuple(batch)
        self.theta = tuple(a.contiguous() for a in expand(arrays, ranks, batch))
        self.flat = Flat(arrays, ranks, batch)
        self.p = self.flat.p
        self.shape = tuple(shape)
        self.n_entries = self.shape[0] * self.shape[1]
        self.dtype, self.device = dtype_of(arrays), device_of(arrays)
        self.out_dtype = self.dtype if out_dtype is None else out_dtype
        self.tol = tolerance(real_dtype(self.dtype))
        self.cap = 2 * min(self.p, self.n_entries) + 100

    # J(θ) v, J(θ)ᵀ u on flat vectors, at fields θ (differentiable in both)
    def push(self, theta, vec):
        tangents = self.flat.unflatten(vec)
        return pushforward(self.f, theta, tangents).reshape(self.batch + (self.n_entries,))

    def pull(self, theta, yvec):
        W = conj(yvec.reshape(self.batch + self.shape))      # ∇ Re⟨W, D(θ)⟩ = ∇ Re Σ conj(W)·D(θ)
        ones = torch.ones(self.batch, dtype=W.dtype, device=W.device)
        return self.flat.flatten(pullback(lambda a: self.inner(a, W), theta, ones))

    def apply(self, theta, vec, transpose: bool):
        """A v for A = J(θ), or J(θ)ᵀ with ``transpose``."""
        return self.pull(theta, vec) if transpose else self.push(theta, vec)

    def _linear(self, theta):
        """(jvp, vjp) at fixed fields."""
        return (lambda vec: self.push(theta, vec)), (lambda yvec: self.pull(theta, yvec))

    def _bordered(self, theta):
        jvp, vjp = self._linear(theta)
        bounds = self.flat.bounds
        c_idx = np.concatenate([np.arange(bounds[k], bounds[k + 1]) for k, c in enumerate(self.coupled) if c]
                               or [np.zeros(0, dtype=np.int64)])
        ones = torch.ones(self.batch + (self.p,), dtype=self.dtype, device=self.device)
        if c_idx.size:
            ones = ones.index_fill(-1, torch.as_tensor(c_idx, device=self.device), 0)
        return Bordered(self.owner, jvp, vjp, c_idx, vjp(jvp(ones)), self.n_entries)

    def solve(self, theta, b, transpose: bool):
        """A⁺ b (values only: the forward of ``_Pinv``)."""
        if not self.p or not self.n_entries:
            return b.new_zeros(self.batch + ((self.n_entries if transpose else self.p),))
        if self.coupled is not None:
            solver = self._bordered(theta)
            return solver.pinv_adjoint_vec(b) if transpose else solver.pinv_vec(b)
        jvp, vjp = self._linear(theta)
        if transpose:
            return lsqr(vjp, jvp, b, self.n_entries, self.tol, self.cap, self.owner, "(J⁺)ᵀ",
                        x_dtype=self.out_dtype)
        return lsqr(jvp, vjp, b, self.p, self.tol, self.cap, self.owner, "J⁺", x_dtype=self.dtype)

    def pinv(self, ydot):
        """J⁺ vec(Ẏ), as field arrays."""
        b = cast(ydot, self.out_dtype).expand(self.batch + self.shape).reshape(self.batch + (self.n_entries,))
        return self.flat.unflatten(_Pinv.apply(self, False, b, *self.theta))

    def pinv_adjoint(self, arrays):
        """(J⁺)ᵀ θ̄, as a dense matrix."""
        b = self.flat.flatten(arrays)
        return _Pinv.apply(self, True, b, *self.theta).reshape(self.batch + self.shape)

    def classify(self):
        theta = tuple(a.detach() for a in self.theta)
        if self.coupled is not None:
            return self._bordered(theta).classify()
        return self._probe(theta)

    def _probe(self, theta):
        """Two random probes: r = p_a iff (I - J⁺J) z = 0 for a random z on
        the used elements, r = N iff (I - J J⁺) y = 0, per instance."""
        jvp, vjp = self._linear(theta)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(0)
        y = torch.randn(self.batch + (self.n_entries,), generator=gen, dtype=self.out_dtype, device=self.device)
        z = torch.randn(self.batch + (self.p,), generator=gen, dtype=self.dtype, device=self.device)
        if not self.p or not self.n_entries:
            return repeat(self.batch, parametrisation_class(0, 0, self.n_entries))
        z = z * (vjp(y) != 0)            # a column of J is not zero: almost surely seen by a random y
        jz = jvp(z)
        if not bool(torch.all(torch.isfinite(jz))):
            raise ValueError(f"parametrisation: x ({self.owner}) has NaN or infinite field values, "
                             "so rank J is undefined")
        rtol = max(self.PROBE_RTOL, 1e3 * self.tol)
        norm = torch.linalg.vector_norm

        def pinv(vec):
            return lsqr(jvp, vjp, vec, self.p, self.tol, self.cap, self.owner, "J⁺", x_dtype=self.dtype)
        zn, yn = norm(z, dim=-1), norm(y, dim=-1)
        full_col = (zn == 0) | (norm(z - pinv(jz), dim=-1) <= rtol * zn)
        full_row = (yn == 0) | (norm(y - jvp(pinv(y)), dim=-1) <= rtol * yn)
        names = {(True, True): "exact", (True, False): "under", (False, True): "over", (False, False): "deficient"}
        return nested(self.batch, [names[bool(c), bool(r)] for c, r in
                                   zip(full_col.reshape(-1).tolist(), full_row.reshape(-1).tolist())])


def _zeros_for(t, like):
    return torch.zeros_like(like) if t is None else t


class _Pinv(torch.autograd.Function):
    """s = A⁺ b for A = J(θ) (or J(θ)ᵀ with ``transpose``): the value from the
    operator's solver; the derivatives from the pseudo-inverse's (valid where
    rank J is locally constant; Golub & Pereyra 1973):

        ds = A⁺ (db - dA s + A⁺ᵀ dAᵀ r) + (I - A⁺A) dAᵀ z,  r = b - A s,  z = A⁺ᵀ s,

    and in reverse, for a cotangent g: b̄ = a = A⁺ᵀ g and
    θ̄ = ∇_θ [-⟨a, A s⟩ + ⟨r, A c⟩ + ⟨z, A h⟩] with c = A⁺ a, h = (I - A⁺A) g.
    Both are written with ``_Pinv`` itself and the generated code's
    derivatives, so they are differentiable again (any order, both modes)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(op, transpose, b, *theta):
        return op.solve(theta, b, transpose)

    @staticmethod
    def setup_context(ctx, inputs, output):
        op, transpose, b, *theta = inputs
        ctx.op, ctx.transpose = op, transpose
        ctx.save_for_backward(output, b, *theta)
        ctx.save_for_forward(output, b, *theta)

    @staticmethod
    def backward(ctx, g):
        s, b, *theta = ctx.saved_tensors
        op, T = ctx.op, ctx.transpose

        def solve(v, t):
            return _Pinv.apply(op, t, v, *theta)
        a = solve(g, not T)                            # A⁺ᵀ g
        grads = [None] * len(theta)
        if any(ctx.needs_input_grad[3:]):
            c = solve(a, T)
            h = g - solve(op.apply(theta, g, T), T)
            r = b - op.apply(theta, s, T)
            z = solve(s, not T)
            # ∇_θ Σ ⟨w, A(θ) v⟩; for A = Jᵀ, ⟨w, Jᵀ v⟩ = ⟨v, J w⟩
            pairs = [(-a, s), (r, c), (z, h)]
            if T:
                pairs = [(v, w) for w, v in pairs]
            _, vjp = torch.func.vjp(lambda *th: tuple(op.push(th, v) for _, v in pairs), *theta)
            grads = list(vjp(tuple(w for w, _ in pairs)))
        return (None, None, a if ctx.needs_input_grad[2] else None, *grads)

    @staticmethod
    def jvp(ctx, _op, _transpose, bdot, *thetadot):
        s, b, *theta = ctx.saved_tensors
        op, T = ctx.op, ctx.transpose

        def solve(v, t):
            return _Pinv.apply(op, t, v, *theta)
        e = _zeros_for(bdot, b)
        if any(t is not None for t in thetadot):
            tangents = tuple(_zeros_for(t, th) for t, th in zip(thetadot, theta))

            def dA(v, t):                              # D_θ[A_t(θ) v][θ̇]
                return torch.func.jvp(lambda *th: op.apply(th, v, t), tuple(theta), tangents)[1]
            r = b - op.apply(theta, s, T)
            z = solve(s, not T)
            e = e - dA(s, T) + solve(dA(r, not T), not T)
            q = dA(z, not T)
            return solve(e, T) + q - solve(op.apply(theta, q, T), T)
        return solve(e, T)


# -- Y = F Gᵀ: J⁺ in closed form (rulegen.runtime.factor_pinv, the same algebra) ---------
# CholeskyQR2 of F and G and an r × r Sylvester equation in the Gram matrices'
# eigenbases, per instance of the batch, in the fields' precision; plain torch,
# so autograd differentiates it (both modes, any order: see _Sylvester). The
# generated module solves the instances it does not serve by LSQR.

def factor_cond(dtype) -> float:
    """The largest condition number of F or G that the closed form serves:
    rulegen.runtime.FACTOR_COND in float64, and the same budget eps·cond² in a
    lower precision (CholeskyQR and the Gram eigenvalues lose eps·cond²)."""
    return _FACTOR_COND * math.sqrt(float(np.finfo(np.float64).eps) / torch.finfo(dtype).eps)


def factor_served(F, G, *operands) -> bool:
    """Whether the closed form can serve these shapes and dtypes at all: real
    numbers and 0 < r <= min(m, n); else the solver, for the whole batch."""
    r = F.shape[-1]
    return 0 < r <= min(F.shape[-2], G.shape[-2]) and not any(a.is_complex() for a in (F, G, *operands))


def _cholesky_qr(A):
    """(Q, R), A = Q R by CholeskyQR2 (as rulegen.runtime._cholesky_qr)."""
    R1 = torch.linalg.cholesky(A.mT @ A).mT
    Q1 = torch.linalg.solve_triangular(R1, A, upper=True, left=False)
    R2 = torch.linalg.cholesky(Q1.mT @ Q1).mT
    return torch.linalg.solve_triangular(R2, Q1, upper=True, left=False), R2 @ R1


class _Sylvester(torch.autograd.Function):
    """X with A X + X B = C for symmetric positive definite r × r A and B, in
    their eigenbases. Its derivatives are its own (dX = X(A, B, dC - dA X -
    X dB); the solve is self-adjoint), not those of eigh, which are infinite
    where eigenvalues repeat (a factor with orthonormal columns); written with
    _Sylvester itself, so they are differentiable again."""

    generate_vmap_rule = True

    @staticmethod
    def forward(A, B, C):
        la, Ea = torch.linalg.eigh(A)
        lb, Eb = torch.linalg.eigh(B)
        return Ea @ ((Ea.mT @ C @ Eb) / (la[..., :, None] + lb[..., None, :])) @ Eb.mT

    @staticmethod
    def setup_context(ctx, inputs, output):
        A, B, _ = inputs
        ctx.save_for_backward(A, B, output)
        ctx.save_for_forward(A, B, output)

    @staticmethod
    def backward(ctx, g):
        A, B, X = ctx.saved_tensors
        c = _Sylvester.apply(A, B, g)
        return -c @ X.mT, -X.mT @ c, c

    @staticmethod
    def jvp(ctx, dA, dB, dC):
        A, B, X = ctx.saved_tensors
        e = _zeros_for(dC, X) - _zeros_for(dA, A) @ X - X @ _zeros_for(dB, B)
        return _Sylvester.apply(A, B, e)


def sylvester(A, B, C):
    return _Sylvester.apply(*torch.broadcast_tensors(A, B, C))


def _factor_setup(F, G):
    """(setup, ok): the factorisations of every instance, and which instances
    they serve (finite, both factors of full column rank within factor_cond);
    the others get I-like factors, for shape's sake (their result is discarded)."""
    r = F.shape[-1]
    limit = factor_cond(F.dtype)
    ok = None
    served = []
    for A in (F, G):
        fine = torch.isfinite(A).all(-1).all(-1)
        A = torch.where(fine[..., None, None], A, 0.0)
        lam = torch.linalg.eigvalsh((A.mT @ A).detach())           # σ² of A, ascending
        fine = fine & (lam[..., 0] * limit ** 2 > lam[..., -1])
        spare = torch.eye(A.shape[-2], r, dtype=A.dtype, device=A.device)
        served.append(torch.where(fine[..., None, None], A, spare))
        ok = fine if ok is None else ok & fine
    F, G = served
    Qf, Rf = _cholesky_qr(F)
    Qg, Rg = _cholesky_qr(G)
    return (F, G, Qf, Rf, Qg, Rg), ok


def factor_pinv(F, G, ydot):
    """J⁺ vec(Ẏ) for Y = F Gᵀ in closed form: ``(dF, dG, ok)``, ``ok`` the
    instances of the batch that it serves (the caller solves the others)."""
    (F, G, Qf, Rf, Qg, Rg), ok = _factor_setup(F, G)
    YQg = ydot @ Qg
    A = YQg - Qf @ (Qf.mT @ YQg)
    dF = torch.linalg.solve_triangular(Rg.mT, A, upper=False, left=False)
    dG = torch.linalg.solve_triangular(Rf.mT, ydot.mT @ Qf, upper=False, left=False)
    X = sylvester(Rf.mT @ Rf, Rg.mT @ Rg, torch.linalg.solve_triangular(Rf, Qf.mT @ YQg @ Rg, upper=True))
    return dF + F @ X, dG - G @ X.mT, ok


def factor_pinv_adjoint(F, G, Fbar, Gbar):
    """(J⁺)ᵀ (F̄, Ḡ) for Y = F Gᵀ in closed form: ``(Ȳ, ok)`` (see factor_pinv)."""
    (F, G, Qf, Rf, Qg, Rg), ok = _factor_setup(F, G)
    first = (Fbar - Qf @ (Qf.mT @ Fbar)) @ torch.linalg.solve_triangular(Rg, Qg.mT, upper=True)
    FGi = torch.linalg.solve_triangular(Rf.mT, Qf, upper=False, left=False)      # F (FᵀF)⁻¹
    S = sylvester(Rf.mT @ Rf, Rg.mT @ Rg, F.mT @ Fbar - Gbar.mT @ G)
    return first + FGi @ Gbar.mT + FGi @ S @ G.mT, ok


def select(ok, fast, slow, rank: int):
    """Per instance, ``fast`` where ``ok`` holds, else ``slow`` (``rank``: the
    trailing dimensions that are not batch)."""
    return torch.where(ok.reshape(tuple(ok.shape) + (1,) * rank), fast, slow)


# -- a rearranged outer product a ⊗ b (derive._outer_product) --------------------
# (JᵀJ)⁺ in closed form, O(p) per instance: see rulegen.runtime above _vectors
# for the algebra. J⁺ = (JᵀJ)⁺ J* costs one pullback, (J⁺)* one pushforward;
# there is no solver and no fallback (exact for every x, a vanishing factor
# included). torch.where with guarded denominators: no branch on values (vmap),
# and no NaN in a derivative from the branch not taken.



def _vectors(arrays, ranks):
    """Each array as (*batch, p) (its field's elements flattened)."""
    return [a.reshape(tuple(a.shape[:a.ndim - k]) + (-1,)) for a, k in zip(arrays, ranks)]


def _sq(a):
    """‖a‖² along the last axis, real, in one pass (no temporary)."""
    return torch.linalg.vecdot(a, a).real


def outer_gram_pinv(fields, arrays, ranks):
    """(JᵀJ)⁺ applied to the structural arrays ``arrays`` for the entry a ⊗ b
    rearranged, at the fields ``fields`` (a, b in the fields' order), for the
    broadcast batch of both. With α = ‖a‖², β = ‖b‖², ξ = aᴴẋ, η = bᴴẏ it is
    (ẋ s1 + a s2, ẏ t1 + b t2); a factor counts as zero below
    rulegen.runtime.outer_zero_tol · (α + β)."""
    a, b, x, y = _vectors((*fields, *arrays), ranks + ranks)
    alpha, beta = _sq(a), _sq(b)
    xi, eta = torch.linalg.vecdot(a, x), torch.linalg.vecdot(b, y)
    tol = _outer_zero_tol(a.shape[-1], b.shape[-1]) * (alpha + beta)
    a0, b0 = alpha <= tol, beta <= tol
    both = ~(a0 | b0)
    sa, sb = torch.where(a0, 1.0, alpha), torch.where(b0, 1.0, beta)
    sab = torch.where(both, alpha + beta, 1.0) ** 2
    s1, t1 = torch.where(b0, 0.0, 1 / sb), torch.where(a0, 0.0, 1 / sa)
    # (β ξ/α + η)/(α + β)² - ξ/(αβ) of the runtime, without its cancellation when α ≪ β
    s2 = torch.where(both[..., None], ((eta - xi * (alpha + 2 * beta) / sb) / sab)[..., None], 0.0)
    t2 = torch.where(both[..., None], ((xi - eta * (2 * alpha + beta) / sa) / sab)[..., None], 0.0)
    out = []
    for v, c1, w, c2, f, k in ((x, s1, a, s2, fields[0], ranks[0]), (y, t1, b, t2, fields[1], ranks[1])):
        z = torch.addcmul(v * c1[..., None], w, c2)
        out.append(z.reshape(tuple(z.shape[:-1]) + trailing(f, k)))
    return tuple(out)


def outer_class(owner: str, fields, ranks, n_entries: int):
    """parametrisation_class of each instance for the entry a ⊗ b rearranged,
    in real dimensions (rulegen.runtime.outer_class): rank J = p_a + p_b minus
    the scale between the factors when neither vanishes, else the elements
    that multiply the non-zero factor; nested like the batch."""
    if not all(bool(torch.isfinite(f).all()) for f in fields):
        raise ValueError(f"parametrisation: x ({owner}) has NaN or infinite field values, so rank J is undefined")
    a, b = _vectors([f.detach() for f in fields], ranks)
    alpha, beta = _sq(a), _sq(b)
    tol = _outer_zero_tol(a.shape[-1], b.shape[-1]) * (alpha + beta)
    za, zb = torch.broadcast_tensors(alpha <= tol, beta <= tol)
    per = 2 if fields[0].is_complex() else 1
    names = []
    for first, second in zip(za.reshape(-1).tolist(), zb.reshape(-1).tolist()):
        used = per * ((0 if second else a.shape[-1]) + (0 if first else b.shape[-1]))
        names.append(parametrisation_class(used - (0 if first or second else per), used, n_entries))
    return nested(tuple(za.shape), names)


# -- integer fields (the pattern of a sparse or permuted type) ----------------
# An integer field is static data of the instance, like its sizes: validated
# at construction, kept as a read-only int64 numpy array (exactly its declared
# shape: a batch shares its pattern) in the size values, never a leaf of the
# pytree, never requiring grad; the attribute (x.rows) is an int64 tensor on
# the fields' device. The index tensors of the sparse grids are computed from
# the numpy copy (exact, O(stored)) on the host and kept on the device per
# content (index_tensor): no device-to-host synchronisation, and a pattern is
# copied to a GPU once.

class IntField(_IntField):
    """A validated integer field (rulegen.runtime.IntField: compares and hashes
    by its values); ``tensor(device)`` its int64 tensor, kept per device."""

    __slots__ = ("_tensors",)

    def __init__(self, array: np.ndarray):
        super().__init__(array)
        self._tensors = {}

    def tensor(self, device):
        t = self._tensors.get(str(device))
        if t is None:
            t = self._tensors[str(device)] = torch.from_numpy(self.array.copy()).to(device)
        return t


def as_int_field(owner: str, name: str, value, rank: int) -> np.ndarray:
    """An integer field as a read-only int64 numpy array of rank ``rank``
    (rulegen.runtime.as_int_field): an integer tensor (any device), array or
    list; floating or complex values are refused."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{owner}: integer field '{name}' must hold integers, got dtype {value.dtype}")
        value = value.detach().cpu().numpy()
    from .runtime import as_int_field as _as_int_field
    return _as_int_field(owner, name, value, rank)


def int_device(arrays):
    """The device for an instance's integer-field tensors: its fields' (cpu
    when there is none, or when a pytree transform rebuilds the instance
    around placeholders such as torch.func.vmap's in_dims)."""
    return next((a.device for a in arrays if isinstance(a, torch.Tensor)), torch.device("cpu"))


_INDEX_CACHE: dict = {}
_INDEX_CACHE_SIZE = 256


def index_tensor(arr: np.ndarray, device):
    """A numpy index array of a data pattern as an int64 tensor on ``device``:
    on the CPU the array itself (no copy); elsewhere kept per content and
    device, so that calls with the same pattern copy nothing to the device
    and never wait for it (a copy from host memory synchronises the stream)."""
    arr = np.ascontiguousarray(arr, np.int64)
    if torch.device(device).type == "cpu":
        return torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    import hashlib
    key = (str(device), arr.shape, hashlib.blake2b(arr.tobytes(), digest_size=16).digest())
    t = _INDEX_CACHE.get(key)
    if t is None:
        t = torch.from_numpy(arr.copy()).to(device)
        if len(_INDEX_CACHE) >= _INDEX_CACHE_SIZE:
            _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
        _INDEX_CACHE[key] = t
    return t
