"""Numba helpers of generated kernels: 4 × 4 transposing tile moves, and
the accumulators of separable terms (float64, or complex128 for complex numbers).

A region whose entry is ``c * F[j + p, i + q]`` reads ``F`` across its rows
while the loops walk the output along its rows: element by element that costs
a cache line per element, and LLVM does not vectorise it. These two numba
intrinsics move a 4 × 4 tile with four vector loads, eight shuffles and four
vector stores (what XLA does for a transpose):

* ``tcopy4(src, sr, sc, dst, dr, dc, c)``: ``dst[dr + a, dc + b] = c * src[sr + b, sc + a]``
* ``tadd4(src, sr, sc, dst, dr, dc, c)``: ``dst[dr + a, dc + b] += c * src[sr + b, sc + a]``
* ``tsum4(src, sr, sc, dst, dr, dc, c, pr, pc, d)``: ``dst[dr + a, dc + b] = c * src[sr + b, sc + a]
  + d * src[pr + a, pc + b]`` (the gather-form pullback and project of rulegen.transpose)

for ``a, b`` in ``0..3``. For C-contiguous matrices of one dtype, float64 or
float32 (then ``c`` is rounded to float32), the vector code; for others
(complex numbers) the same moves element by element. The caller has checked
that both tiles lie inside the arrays (no checks here).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_FLOATS = {types.float64: ir.DoubleType(), types.float32: ir.FloatType()}


def _mask(*ks):
    return ir.Constant(ir.VectorType(_I32, len(ks)), list(ks))


def _matrix(ty) -> bool:
    return isinstance(ty, types.Array) and ty.ndim == 2 and ty.layout == "C" and ty.dtype in _FLOATS


def _signature(src, sr, sc, dst, dr, dc, scale):
    if not (_matrix(src) and _matrix(dst)) or not dst.mutable or src.dtype != dst.dtype:
        raise TypingError("tile moves need C-contiguous float64 or float32 matrices of one dtype "
                          "(a writable destination)")
    if not all(isinstance(t, types.Integer) for t in (sr, sc, dr, dc)) or not isinstance(scale, (types.Float, types.Integer)):
        raise TypingError("tile moves need integer offsets and a real scale")
    return types.void(src, types.int64, types.int64, dst, types.int64, types.int64, types.float64)


def _codegen(accumulate: bool, straight: bool = False):
    def codegen(context, builder, sig, args):
        src_v, sr, sc, dst_v, dr, dc, scale = args[:7]
        src = context.make_array(sig.args[0])(context, builder, src_v)
        dst = context.make_array(sig.args[3])(context, builder, dst_v)
        element = _FLOATS[sig.args[0].dtype]
        vec4 = ir.VectorType(element, 4)
        element_size = 8 if element == ir.DoubleType() else 4
        if element != scale.type:
            scale = builder.fptrunc(scale, element)
        src_cols = cgutils.unpack_tuple(builder, src.shape, 2)[1]
        dst_cols = cgutils.unpack_tuple(builder, dst.shape, 2)[1]

        def row(arr, cols, r, c, k):
            offset = builder.add(builder.mul(builder.add(r, ir.Constant(_I64, k)), cols), c)
            return builder.bitcast(builder.gep(arr.data, [offset]), vec4.as_pointer())

        r0, r1, r2, r3 = (builder.load(row(src, src_cols, sr, sc, k), align=element_size) for k in range(4))
        t0 = builder.shuffle_vector(r0, r1, _mask(0, 4, 2, 6))
        t1 = builder.shuffle_vector(r0, r1, _mask(1, 5, 3, 7))
        t2 = builder.shuffle_vector(r2, r3, _mask(0, 4, 2, 6))
        t3 = builder.shuffle_vector(r2, r3, _mask(1, 5, 3, 7))
        columns = (builder.shuffle_vector(t0, t2, _mask(0, 1, 4, 5)),
                   builder.shuffle_vector(t1, t3, _mask(0, 1, 4, 5)),
                   builder.shuffle_vector(t0, t2, _mask(2, 3, 6, 7)),
                   builder.shuffle_vector(t1, t3, _mask(2, 3, 6, 7)))
        def splat(x):
            if element != x.type:
                x = builder.fptrunc(x, element)
            v = builder.insert_element(ir.Constant(vec4, ir.Undefined), x, ir.Constant(_I32, 0))
            return builder.shuffle_vector(v, v, _mask(0, 0, 0, 0))

        factor = splat(scale)
        if straight:        # plus · src[pr + a, pc + b]: the same source, read along its rows
            pr, pc, plus = args[7:]
            plus = splat(plus)
        for k, col in enumerate(columns):
            ptr = row(dst, dst_cols, dr, dc, k)
            value = builder.fmul(col, factor)
            if straight:
                across = builder.load(row(src, src_cols, pr, pc, k), align=element_size)
                value = builder.fadd(value, builder.fmul(across, plus))
            if accumulate:
                value = builder.fadd(builder.load(ptr, align=element_size), value)
            builder.store(value, ptr, align=element_size)
        return context.get_dummy_value()
    return codegen


@intrinsic
def _tcopy4_simd(typingctx, src, sr, sc, dst, dr, dc, scale):
    return _signature(src, sr, sc, dst, dr, dc, scale), _codegen(accumulate=False)


@intrinsic
def _tadd4_simd(typingctx, src, sr, sc, dst, dr, dc, scale):
    return _signature(src, sr, sc, dst, dr, dc, scale), _codegen(accumulate=True)


@intrinsic
def _tsum4_simd(typingctx, src, sr, sc, dst, dr, dc, scale, pr, pc, plus):
    sig = _signature(src, sr, sc, dst, dr, dc, scale)
    if not (isinstance(pr, types.Integer) and isinstance(pc, types.Integer)
            and isinstance(plus, (types.Float, types.Integer))):
        raise TypingError("tile moves need integer offsets and a real scale")
    return types.void(*sig.args, types.int64, types.int64, types.float64), _codegen(accumulate=False, straight=True)


def tcopy4(src, sr, sc, dst, dr, dc, scale):
    """dst[dr + a, dc + b] = scale * src[sr + b, sc + a] for a, b < 4."""
    for a in range(4):
        for b in range(4):
            dst[dr + a, dc + b] = scale * src[sr + b, sc + a]


def tadd4(src, sr, sc, dst, dr, dc, scale):
    """dst[dr + a, dc + b] += scale * src[sr + b, sc + a] for a, b < 4."""
    for a in range(4):
        for b in range(4):
            dst[dr + a, dc + b] += scale * src[sr + b, sc + a]


def tsum4(src, sr, sc, dst, dr, dc, scale, pr, pc, plus):
    """dst[dr + a, dc + b] = scale * src[sr + b, sc + a] + plus * src[pr + a, pc + b]
    for a, b < 4: a transposed tile and a straight one of the same matrix
    (a symmetric or skew part, ``(Y + Yᵀ) / 2``), each loaded once."""
    for a in range(4):
        for b in range(4):
            dst[dr + a, dc + b] = scale * src[sr + b, sc + a] + plus * src[pr + a, pc + b]


def _simd(src, dst) -> bool:
    return _matrix(src) and _matrix(dst) and src.dtype == dst.dtype


@overload(tcopy4)
def _tcopy4(src, sr, sc, dst, dr, dc, scale):
    """The vector moves for float64/float32 matrices; element by element for
    anything else (complex numbers)."""
    if _simd(src, dst):
        return lambda src, sr, sc, dst, dr, dc, scale: _tcopy4_simd(src, sr, sc, dst, dr, dc, scale)
    return tcopy4


@overload(tadd4)
def _tadd4(src, sr, sc, dst, dr, dc, scale):
    if _simd(src, dst):
        return lambda src, sr, sc, dst, dr, dc, scale: _tadd4_simd(src, sr, sc, dst, dr, dc, scale)
    return tadd4


@overload(tsum4)
def _tsum4(src, sr, sc, dst, dr, dc, scale, pr, pc, plus):
    if _simd(src, dst):
        return lambda src, sr, sc, dst, dr, dc, scale, pr, pc, plus: _tsum4_simd(src, sr, sc, dst, dr, dc, scale,
                                                                                  pr, pc, plus)
    return tsum4


def accumulator(n, like):
    """Zeros of length ``n`` to accumulate products with the array ``like``
    in: float64 (float32 products too: their sums stay accurate) or
    complex128 when ``like`` holds complex numbers."""
    return np.zeros(n, np.complex128 if np.iscomplexobj(like) else np.float64)


@overload(accumulator)
def _accumulator(n, like):
    if isinstance(like, types.Array) and isinstance(like.dtype, types.Complex):
        return lambda n, like: np.zeros(n, np.complex128)
    return lambda n, like: np.zeros(n, np.float64)
