"""Derivation -> JAX module source (``<out>/jax/<module>.py``).

The value of every additive term of the entry is written as whole-array
``jnp`` code over the grids of ``targets/arrays.py``; the pushforward and
pullback of destructure, and the derivatives of matvec, are JAX's own
linearisation and transpose of that code (``jax.jvp`` / ``jax.vjp``), so
every map is plain ``jnp``/``lax``: it runs under ``jit``, ``vmap``, ``grad``
and ``jvp``, to any order, on any device. The J⁺ strategy is the derivation's
(gather: diag(JᵀJ); bordered: Schur complement; general: LSQR), or a closed
form where the entry is a rearranged outer product (derive._outer_product) or
Y = F Gᵀ (derive._factor_product; LSQR where the factors are not of full rank).
"""

from __future__ import annotations

import sympy as sp

from .. import __version__
from ..derive import Derivation
from .common import environment as _environment, shape_code as _shape_code, shape_text as _shape_text, doc_text, file_label, size_plan
from ..structure import structure_literal
from ..printer import code as py_code
from ..expr import has_complex, ordering_of_values
from .arrays import Unsupported, Writer, factor_grid, factor_names, kron_nests, kron_of, terms
from .numba.emit import _int_checks


class _Function:
    """One generated function: its name, parameters and body lines."""

    def __init__(self, name: str, params: str, w: Writer):
        self.name, self.params, self.lines = name, params, tuple(w.lines)


def _prologue(w: Writer, spec, extra: str = "") -> None:
    sizes = [s.name for s in spec.sizes]
    fields = [f.name for f in spec.fields if not f.integer]
    ints = [f.name for f in spec.fields if f.integer]
    if ints:        # the integer fields: numpy arrays, static (see rulegen.jax_runtime.IntField)
        w.add(f"{', '.join(sizes + ints)}, = _rt.static_values(_sv)")
    elif sizes:
        w.add(f"{', '.join(sizes)}, = _sv")
    if fields:
        w.add(f"{', '.join(fields)}, = _arrays")
    w.add("_dtype = _rt.dtype_of(_arrays, _COMPLEX_OUTPUT)")
    w.add(f"_R, _C = {py_code(spec.size[0])}, {py_code(spec.size[1])}")


def _factor(w: Writer, expr, var, bounds, limit):
    """``expr`` (alpha or beta of a separable term) on the axes ``var`` and ``k``."""
    val, shape, L0 = factor_grid(w, expr, var, bounds, limit)
    return w.let("f", f"_rt.cells({val}, None, {shape}, _dtype)"), L0


def _dense(d: Derivation, scalars) -> _Function:
    w = Writer("jnp", scalars)
    _prologue(w, d.spec)
    w.add("_out = jnp.zeros((_R, _C), _dtype)")
    for steps, value, sep in terms(d):
        kron = kron_of(d, steps, value)
        factors = _kron_factors(w, kron) if kron is not None else None
        if factors is not None:
            # Y[a·p + c, b·q + d] = F[a, b] G[c, d]: a broadcast product of the small factors,
            # whose linearisation and transpose (the pushforward and pullback) are products
            # and sums over them, not gathers and scatters over the m × n grid
            F, G = factors
            w.add(f"_out = _out + ({F}[:, None, :, None] * {G}[None, :, None, :]).reshape(_out.shape)")
            continue
        if sep is not None:
            from ..expr import I, J
            A, I0 = _factor(w, sep.alpha, I, sep.i_bounds, sep.limit)
            B, J0 = _factor(w, sep.beta, J, sep.j_bounds, sep.limit)
            block = f"{A} @ {B}.T" if sep.limit else f"{A}[:, None] * {B}[None, :]"
            w.add(f"_out = _out + _rt.pad_to({block}, ({I0}, {J0}), (_R, _C))")
            continue
        g = w.grid(steps)
        cells = w.let("c", f"_rt.cells({w.value(value, g.ctx)}, {g.ctx.mask}, {g.shape}, _dtype)")
        if g.box:
            w.add(f"_out = _out + _rt.pad_to({cells}, ({g.box[0]}, {g.box[2]}), (_R, _C))")
        elif g.run:
            r0, c0, count = g.run
            w.add(f"_out = _rt.diagonal_add(_out, {cells}, ({r0}) * _C + {c0}, {count})")
        else:
            w.add(f"_out = _rt.scatter(_out, ({g.rows}, {g.cols}), {cells}, {g.shape})")
    w.add("return _out")
    return _Function("_dense", "_sv, _arrays", w)


def _kron_factors(w: Writer, kron):
    """The small factors ``(F, G)`` of a Kronecker term (derive.Kron) as arrays,
    or None (nothing written) when a factor is no box."""
    grids = [w.grid(steps) for steps in kron_nests(kron)]
    if not all(g.box for g in grids):
        return None
    return tuple(w.let("k", f"_rt.cells({w.value(v, g.ctx)}, {g.ctx.mask}, {g.shape}, _dtype)")
                 for g, v in zip(grids, (kron.f, kron.g)))


def _kron_product(w: Writer, kron, transpose: bool) -> bool:
    """``_out += (F ⊗ G) @ _rhs`` (or ``(Fᵀ ⊗ Gᵀ) @ _rhs``) by the vec trick on the
    small factors (derive.Kron); False (nothing written) when a factor is no box."""
    factors = _kron_factors(w, kron)
    if factors is None:
        return False
    F, G = factors
    Q, q = (kron.P, kron.p) if transpose else (kron.Q, kron.q)
    spec = "ab,ack,cd->bdk" if transpose else "ab,bdk,cd->ack"
    w.add(f"_out = _out + jnp.einsum('{spec}', {F}, _rhs.reshape(({py_code(Q)}, {py_code(q)}, _rhs.shape[1])), "
          f"{G}).reshape(_out.shape)")
    return True


def _product(d: Derivation, scalars, transpose: bool) -> _Function:
    """``Y @ rhs`` (``Yᵀ @ rhs`` with transpose) term by term, never forming Y."""
    w = Writer("jnp", scalars)
    _prologue(w, d.spec)
    out_rows = "_C" if transpose else "_R"
    w.add(f"_out = jnp.zeros(({out_rows}, _rhs.shape[1]), jnp.result_type(_dtype, _rhs.dtype))")
    for steps, value, sep in terms(d):
        kron = kron_of(d, steps, value)
        if kron is not None and _kron_product(w, kron, transpose):
            continue
        if sep is not None:
            from ..expr import I, J
            A, I0 = _factor(w, sep.alpha, I, sep.i_bounds, sep.limit)
            B, J0 = _factor(w, sep.beta, J, sep.j_bounds, sep.limit)
            (first, f0), (second, s0) = ((A, I0), (B, J0)) if transpose else ((B, J0), (A, I0))
            take = f"_rhs[{f0}:{f0} + {first}.shape[0]]"
            if sep.limit:
                w.add(f"_out = _out + _rt.pad_to({second} @ ({first}.T @ {take}), ({s0}, 0), _out.shape)")
            else:
                w.add(f"_out = _out + _rt.pad_to({second}[:, None] * ({first} @ {take})[None, :], ({s0}, 0), _out.shape)")
            continue
        g = w.grid(steps)
        cells = w.let("c", f"_rt.cells({w.value(value, g.ctx)}, {g.ctx.mask}, {g.shape}, _dtype)")
        if g.box:
            I0, I1, J0, J1 = g.box
            if transpose:
                w.add(f"_out = _out + _rt.pad_to({cells}.T @ _rhs[{I0}:{I1}], ({J0}, 0), _out.shape)")
            else:
                w.add(f"_out = _out + _rt.pad_to({cells} @ _rhs[{J0}:{J1}], ({I0}, 0), _out.shape)")
        elif g.run:     # contiguous rows and columns: slices, no scatter
            r0, c0, count = g.run
            src, dst = (r0, c0) if transpose else (c0, r0)
            w.add(f"_out = _out.at[{dst}:{dst} + {count}].add({cells}[:, None] * _rhs[{src}:{src} + {count}])")
        else:
            src, dst = (g.rows, g.cols) if transpose else (g.cols, g.rows)
            w.add(f"_out = _rt.scatter(_out, ({dst},), {cells}[..., None] * "
                  f"_rhs[jnp.broadcast_to({src}, {g.shape})], {g.shape})")
    w.add("return _out")
    return _Function("_rmatvec" if transpose else "_matvec", "_sv, _arrays, _rhs", w)


def _diagonal(d: Derivation, scalars) -> _Function:
    w = Writer("jnp", scalars)
    _prologue(w, d.spec)
    w.add("_out = jnp.zeros((min(_R, _C),), _dtype)")
    for steps, value in d.diagonal:
        g = w.grid(steps)
        cells = w.let("c", f"_rt.cells({w.value(value, g.ctx)}, {g.ctx.mask}, {g.shape}, _dtype)")
        w.add(f"_out = _rt.scatter(_out, ({g.rows},), {cells}, {g.shape})")
    w.add("return _out")
    return _Function("_diagonal", "_sv, _arrays", w)


def render(d: Derivation, spec_file: str) -> str:
    """The source of the JAX module for ``d`` (raises Unsupported)."""
    spec = d.spec
    scalars = {f.name for f in spec.fields if f.ndim == 0 and not f.integer}
    functions = [_dense(d, scalars), _product(d, scalars, False), _product(d, scalars, True),
                 _diagonal(d, scalars)]
    fields = [dict(name=f.name, ndim=f.ndim, shape_code=_shape_code(f.shape), shape_text=_shape_text(f.shape))
              for f in spec.fields if not f.integer]
    ints = [dict(name=f.name, ndim=f.ndim, shape_code=_shape_code(f.shape), shape_text=_shape_text(f.shape))
            for f in spec.fields if f.integer]
    sizes_fmt = ", ".join(f"{s.name}={{{s.name}}}" for s in spec.sizes) or "no sizes"
    names = [f"{f.name}=None" for f in spec.fields] + [f"{s.name}=None" for s in spec.sizes]
    context = dict(
        init_params=", *_args, " + "".join(n + ", " for n in names) + "**_unknown",
        version=__version__,
        spec_file=file_label(spec_file),
        sha256=spec.sha256,
        name=spec.name,
        doc=doc_text(spec.doc or f"Structured matrix type {spec.name}."),
        entry_text=doc_text(" ".join(spec.entry_text.split())),
        sizes=[s.name for s in spec.sizes],
        sizes_fmt=sizes_fmt,
        fields=fields,
        ints=ints,
        checks=_int_checks(d) if ints else [],
        plan=size_plan(spec),
        rows_code=py_code(spec.size[0]),
        cols_code=py_code(spec.size[1]),
        shape_text=f"{_paren(spec.size[0])} × {_paren(spec.size[1])}",
        functions=functions,
        kron=sum(r.kron is not None for r in d.op_regions),
        kind=d.kind,
        structure=structure_literal(d),
        coupled=[f.name in d.coupled for f in spec.fields if not f.integer],
        coupled_names=", ".join(d.coupled) or "(none)",
        complex_output=has_complex(spec.entry),
        ordering=ordering_of_values(spec.entry),
        ordering_repr=repr(ordering_of_values(spec.entry)),
        factors=factor_names(d),
        product=dict(a=d.product[0], b=d.product[1]) if d.product else None,
    )
    return _environment().get_template("jax_module.py.j2").render(**context)


def _paren(e) -> str:
    text = str(e)
    return f"({text})" if isinstance(e, sp.Add) else text


__all__ = ["render", "Unsupported"]
