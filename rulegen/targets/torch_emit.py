"""Derivation -> PyTorch module source (``<out>/torch/<module>.py``).

The value of every additive term of the entry is written as whole-tensor
torch code over the grids of ``targets/arrays.py`` (the JAX target's
lowering, printed for torch through its hooks: leading batch dimensions on
every field, index tensors on the fields' device, gathers clamped unless a
trace-time range test shows them in bounds). Batching is written into the
grids (every read is ``F[..., index]``), not a ``torch.func.vmap`` over
per-instance code: one kernel launch per term whatever the batch, fields
with different batch shapes broadcast without being copied, and a user's own
``vmap`` simply sees an unbatched instance.

Generated functions: ``_dense`` (destructure), ``_matvec``/``_rmatvec``,
``_diagonal``, and for the derivative maps either (gather types) ``_tangent``
(destructure's code with its constants dropped: J θ̇) and ``_transpose``
(Jᵀ Ȳ written out, O(pattern), no autograd), or (the others) ``_inner``
(⟨Ȳ, Y⟩ read only where the type stores entries: its gradient is Jᵀ Ȳ, by
``torch.func.vjp``) with J θ̇ by ``torch.func.jvp`` of ``_dense``. Everything
is plain torch, so autograd differentiates every map (both modes, any
order). The J⁺ strategy is the derivation's (gather: diag(JᵀJ); bordered:
Schur complement; general: LSQR), or a closed form where the entry is a
rearranged outer product (derive._outer_product) or Y = F Gᵀ
(derive._factor_product; LSQR for the instances whose factors are not of full
rank), from ``rulegen.torch_runtime``.
"""

from __future__ import annotations

import re

import sympy as sp

from .. import __version__
from ..derive import Derivation
from .common import environment as _environment, shape_code as _shape_code, shape_text as _shape_text, doc_text, file_label, size_plan
from ..structure import structure_literal
from ..expr import I, J, Conj, has_complex, ordering_of_values
from ..printer import code as py_code
from .arrays import Unsupported, Writer, _int_code, emit, factor_grid, factor_names, kron_nests, kron_of, terms
from .numba.emit import _int_checks


class TorchWriter(Writer):
    """The array lowering printed for torch (see ``Writer``'s hooks): fields
    carry leading batch dimensions; index arrays are made on the fields'
    device ``_dev``; gathers go through ``_rt.take`` (clamps indices that
    masked positions push out of range: torch raises where JAX clamps)."""

    batched = True

    def __init__(self, scalars=()):
        super().__init__("_xp", scalars)

    def arange(self, lo, hi):
        return f"torch.arange({lo}, {hi}, device=_dev)"

    def asarray(self, text):
        return f"torch.as_tensor({text}, device=_dev)"

    def index_array(self, name):
        return f"_rt.index_tensor({name}, _dev)"

    def scalar(self, name, ctx):
        return f"{name}[..., {', '.join(['None'] * ctx.ndim)}]" if ctx.ndim else name

    def element(self, name, index, ctx):
        return f"_rt.element({name}, ({index},), {ctx.ndim})"

    def read(self, acc, ctx, *rest):
        self._indices = acc.indices          # for gather's range check (the hook gets text)
        return super().read(acc, ctx, *rest)

    def gather(self, name, index, ctx):
        rank = len(self._indices)
        ok = _in_range([f"{name}.shape[{d - rank}]" for d in range(rank)], self._indices, ctx)
        take = f"_rt.take({name}, ({index},))"
        return take if ok is None else f"({name}[..., {index}] if {ok} else {take})"

    def broadcast(self, val, shape):
        return f"_rt.grid_broadcast({val}, {shape}, _dev)"


def _in_range(dims, indices, ctx, wrap: bool = True):
    """Code of a trace-time test (Python ints) that every index lies in
    [-d, d) (``wrap``: a negative one wraps, as torch's indexing does) or
    [0, d) over the whole grid, masked positions included, so that a gather
    or scatter needs no clamping: each index affine in the grid's axes, whose
    extreme values are the ends of their ranges; None when one is not.
    ``dims``: the code of each indexed dimension's size."""
    tests = []
    for d, ix in enumerate(indices):
        ix = sp.expand(ix)
        axes = [v for v in ctx.axes if ix.has(v)]
        others = ix.free_symbols - set(axes)
        if others & set(ctx.names) or any(isinstance(v, sp.Dummy) for v in others) or ix.has(sp.Sum, sp.Indexed):
            return None                      # moves with something other than an axis (a let, a sum)
        try:
            if axes and sp.Poly(ix, *axes).total_degree() > 1:
                return None
        except sp.PolynomialError:
            return None
        coeffs = ", ".join(f"({_int_code(ix.coeff(v))}, {ctx.axes[v][1]}, {ctx.axes[v][2]})" for v in axes)
        const = _int_code(ix.subs({v: 0 for v in axes}))
        tests.append(f"_rt.affine_in({dims[d]}, {const}, ({coeffs}{',' if len(axes) == 1 else ''}), {wrap})")
    return " and ".join(tests) if tests else None


class _Function:
    """One generated function: its name, parameters and body lines (temporaries
    that nothing reads dropped: eager torch runs every line)."""

    def __init__(self, name: str, params: str, w: Writer):
        self.name, self.params, self.lines = name, params, _live(w.lines)


_TEMP = re.compile(r"^(_[A-Za-z]+\d+) = ")


def _live(lines) -> tuple:
    """Dead-code elimination over the Writer's temporaries (``_<prefix><n>``,
    each assigned once): drop an assignment whose name no later line reads."""
    lines = list(lines)
    changed = True
    while changed:
        changed = False
        text = [t for _, t in lines]
        for k in range(len(lines) - 1, -1, -1):
            m = _TEMP.match(lines[k][1])
            if m and not any(re.search(rf"\b{m.group(1)}\b", t) for t in text[k + 1:]):
                del lines[k]
                del text[k]
                changed = True
    return tuple(lines)


def _sizes_line(w: Writer, spec) -> None:
    """The sizes, and the integer fields as numpy arrays (static: see
    rulegen.torch_runtime.IntField)."""
    sizes = [s.name for s in spec.sizes]
    ints = [f.name for f in spec.fields if f.integer]
    if ints:
        w.add(f"{', '.join(sizes + ints)}, = _rt.static_values(_sv)")
    elif sizes:
        w.add(f"{', '.join(sizes)}, = _sv")


def _prologue(w: Writer, spec) -> None:
    fields = [f.name for f in spec.fields if not f.integer]
    _sizes_line(w, spec)
    if fields:
        w.add(f"{', '.join(fields)}, = _arrays")
    w.add("_dtype, _dev = _rt.out_dtype(_rt.dtype_of(_arrays), _COMPLEX_OUTPUT), _rt.device_of(_arrays)")
    w.add(f"_R, _C = {py_code(spec.size[0])}, {py_code(spec.size[1])}")


def _factor(w: Writer, expr, var, bounds, limit):
    """``expr`` (alpha or beta of a separable term) on the axes ``var`` and ``k``."""
    val, shape, L0 = factor_grid(w, expr, var, bounds, limit)
    return w.let("f", f"_rt.cells({val}, None, {shape}, _dtype, _dev)"), L0


def _cells(w: Writer, g, value) -> str:
    return w.let("c", f"_rt.cells({w.value(value, g.ctx)}, {g.ctx.mask}, {g.shape}, _dtype, _dev)")


def _diagonal_run(g):
    """``(si, sj)``: the first point of a grid whose points run along one
    diagonal (``Grid.run``), placed with slices and diag_embed instead of a
    scatter; None for other grids."""
    return g.run[:2] if g.run else None


def _linear_part(e):
    """The part of a gather entry that moves with the fields (its constant dropped)."""
    const = e.xreplace({acc: sp.S.Zero for acc in e.atoms(sp.Indexed)})
    return sp.expand(e - const) if const != 0 else e


def _function(d: Derivation, scalars, name: str, mode: str, linear: bool = False) -> _Function:
    """``_dense`` (mode "dense": the matrix, each term placed by padding, a
    diagonal or a scatter; a Kronecker term is the broadcast product of its
    small factors) or ``_inner`` (mode "inner": ⟨_W, Y⟩ per instance,
    the terms contracted with _W where they lie: O(pattern), and its
    gradient in the fields, Jᵀ _W, too); ``linear`` keeps only the part of
    each term that moves with the fields (J θ̇ for a gather type)."""
    w = TorchWriter(scalars)
    _prologue(w, d.spec)
    out = "_out"
    first = mode == "dense"
    if mode == "inner":
        w.add("_out = torch.zeros(_B, dtype=_dtype, device=_dev)")

    def add(term):
        nonlocal first
        if first:
            w.add(f"_out = {term}")
            first = False
        else:
            w.add(f"_out = _out + {term}")

    def scatter(text):
        nonlocal first
        if first:
            w.add("_out = torch.zeros(_B + (_R, _C), dtype=_dtype, device=_dev)")
            first = False
        w.add(f"_out = {text}")

    for steps, value, sep in terms(d):
        kron = kron_of(d, steps, value) if not linear else None
        factors = _kron_factors(w, kron) if kron is not None else None
        if factors is not None:
            # Y[a·p + c, b·q + d] = F[a, b] G[c, d]: a broadcast product of the small factors
            # (⟨_W, F ⊗ G⟩ a contraction with them), whose derivatives are products and
            # sums over them, not gathers and scatters over the m × n grid
            F, G = factors
            if mode == "inner":
                add(f"torch.einsum('...acbd,...ab,...cd->...', _W.unflatten(-1, ({py_code(kron.Q)}, {py_code(kron.q)}))"
                    f".unflatten(-3, ({py_code(kron.P)}, {py_code(kron.p)})), {F}, {G})")
            else:
                add(f"({F}[..., :, None, :, None] * {G}[..., None, :, None, :]).flatten(-4, -3).flatten(-2, -1)")
            continue
        if linear:
            value = _linear_part(value)
            if value == 0:
                continue
            if sep is not None and (sep.alpha * sep.beta).xreplace(
                    {acc: sp.S.Zero for acc in (sep.alpha * sep.beta).atoms(sp.Indexed)}) != 0:
                sep = None
        if sep is not None:
            A, I0 = _factor(w, sep.alpha, I, sep.i_bounds, sep.limit)
            B, J0 = _factor(w, sep.beta, J, sep.j_bounds, sep.limit)
            if mode == "inner":
                blk = f"_W[..., {I0}:{I0} + {A}.shape[-{2 if sep.limit else 1}], {J0}:{J0} + {B}.shape[-{2 if sep.limit else 1}]]"
                if sep.limit:
                    add(f"((({blk}) @ {B}) * {A}).sum(dim=(-2, -1))")
                else:
                    add(f"((({blk}) @ {B}[..., :, None])[..., 0] * {A}).sum(dim=-1)")
                continue
            block = f"{A} @ {B}.mT" if sep.limit else f"{A}[..., :, None] * {B}[..., None, :]"
            add(f"_rt.pad_to({block}, ({I0}, {J0}), (_R, _C))")
            continue
        g = w.grid(steps)
        cells = _cells(w, g, value)
        run = _diagonal_run(g)
        if mode == "inner":
            if g.box:
                I0, I1, J0, J1 = g.box
                add(f"({cells} * _W[..., {I0}:{I1}, {J0}:{J1}]).sum(dim=(-2, -1))")
            elif run:
                add(f"_rt.diagonal_inner(_W, {cells}, {run[0]}, {run[1]})")
            else:
                add(f"_rt.grid_sum({cells} * _rt.take(_W, ({g.rows}, {g.cols})), {g.ctx.ndim})")
        elif g.box:
            add(f"_rt.pad_to({cells}, ({g.box[0]}, {g.box[2]}), (_R, _C))")
        elif run:
            add(f"_rt.diagonal_block({cells}, {run[0]}, {run[1]}, (_R, _C))")
        else:
            scatter(f"_rt.scatter(_out, ({g.rows}, {g.cols}), {cells}, {g.shape})")
    if first:
        w.add("_out = torch.zeros(_B + (_R, _C), dtype=_dtype, device=_dev)")
    w.add(f"return {'_rt.batched(_out, _B, 2)' if mode == 'dense' else out}")
    return _Function(name, "_sv, _arrays, _W, _B" if mode == "inner" else "_sv, _arrays, _B", w)


def _gather_read(value):
    """``(c, F[idx])`` when the part of a gather entry that moves with the
    fields is ``c · F[idx]`` (one read, c free of fields), else None."""
    lin = _linear_part(value)
    reads = list(lin.atoms(sp.Indexed))
    if len(reads) != 1:
        return None
    acc = reads[0]
    c = sp.diff(lin, acc)
    if c.atoms(sp.Indexed) or sp.expand(lin - c * acc) != 0:
        return None
    return c, acc


def _axis_parts(indices, ctx):
    """For indices that are each a distinct grid axis plus a size-only offset:
    ``[(axis, offset code)]``, else None."""
    parts, used = [], []
    for ix in indices:
        var = next((v for v in ctx.axes if ix.has(v)), None)
        if var is None or var in used:
            return None
        off = sp.expand(ix - var)
        if off.free_symbols & (set(ctx.names) | {I, J}):
            return None
        used.append(var)
        axis, lo, _ = ctx.axes[var]
        parts.append((axis, lo if off == 0 else f"{lo} + {_int_code(off)}"))
    return parts


def _transpose(d: Derivation, scalars):
    """``_transpose(_sv, _W, _B)``: θ̄ = Jᵀ vec(_W) for a gather type, written
    out (each entry c·F[idx] sends c·W[i, j] to F[idx]): slices and padding
    where the read is a box or a diagonal run, a scatter-add elsewhere;
    O(pattern), no autograd. None when a term is not c·F[idx]."""
    spec = d.spec
    real = [f for f in spec.fields if not f.integer]
    w = TorchWriter(scalars)
    w.field_shapes = {f.name: f.shape for f in real}     # only _W is at hand
    _sizes_line(w, spec)
    w.add("_dtype, _dev = _W.dtype, _W.device")
    w.add(f"_R, _C = {py_code(spec.size[0])}, {py_code(spec.size[1])}")
    for k in range(len(real)):
        w.add(f"_g{k} = None")
    order = {f.name: k for k, f in enumerate(real)}
    shapes = {f.name: _shape_code(f.shape) for f in real}
    field_shapes = {f.name: f.shape for f in real}
    for steps, value, _ in terms(d):
        if _linear_part(value) == 0:
            continue
        read = _gather_read(value)
        if read is None:
            return None
        c, acc = read
        g = w.grid(steps)
        acc = w.int_indexed(acc, g.ctx)      # subscripts through integer fields: index arrays
        run = _diagonal_run(g)
        if g.box:
            I0, I1, J0, J1 = g.box
            cot = f"_W[..., {I0}:{I1}, {J0}:{J1}]"
        elif run:
            cot = f"_rt.diagonal_take(_W, {run[0]}, {run[1]}, {g.shape}[0])"
        else:
            cot = f"_rt.take(_W, ({g.rows}, {g.cols}))"
        if c != 1:      # the adjoint in Re⟨a, b⟩: conj(c) (a real c as it is)
            cot = f"{w.value(Conj(c) if has_complex(c) else c, g.ctx)} * {cot}"
        vals = w.let("v", f"_rt.cells({cot}, {g.ctx.mask}, {g.shape}, _dtype, _dev)")
        name = acc.base.label.name
        k = order[name]
        target = f"_g{k}"
        ndim = g.ctx.ndim
        if name in scalars:
            w.add(f"{target} = _rt.put_sum({target}, {_rt_grid_sum(vals, ndim)})")
            continue
        index = [_index_code(ix, g.ctx) for ix in acc.indices]
        if not any(ix.free_symbols & set(g.ctx.names) for ix in acc.indices):
            w.add(f"{target} = _rt.put_element({target}, ({', '.join(index)},), "
                  f"{_rt_grid_sum(vals, ndim)}, {shapes[name]}, _B)")
            continue
        parts = _axis_parts(acc.indices, g.ctx) if (g.box or run) else None
        if parts is not None and g.box:
            axes = [ax for ax, _ in parts]
            block = vals
            if len(axes) == 1:
                block = f"{vals}.sum(dim={-1 if axes[0] == 0 else -2})"
            elif axes == [1, 0]:
                block = f"{vals}.mT"
            corner = ", ".join(off for _, off in parts)
            w.add(f"{target} = _rt.put_block({target}, {block}, ({corner},), {shapes[name]}, _B)")
        elif parts is not None and run and len(parts) == 1:
            w.add(f"{target} = _rt.put_block({target}, {vals}, ({parts[0][1]},), {shapes[name]}, _B)")
        else:
            ok = _in_range([_int_code(e) for e in field_shapes[name]], acc.indices, g.ctx, wrap=False)
            w.add(f"{target} = _rt.put({target}, ({', '.join(index)},), {vals}, {g.shape}, {shapes[name]}, _B"
                  f"{'' if ok is None else ', ' + ok})")
    fields = [f"_g{k}" for k in range(len(real))]
    w.add("return (" + "".join(f"_rt.finish({g}, {shapes[f.name]}, _B, _dtype, _dev), "
                              for g, f in zip(fields, real)) + ")")
    return _Function("_transpose", "_sv, _W, _B", w)


def _rt_grid_sum(vals: str, ndim: int) -> str:
    return f"_rt.grid_sum({vals}, {ndim})" if ndim else vals


def _index_code(ix, ctx) -> str:
    return emit(ix, ctx.names, "_xp", real=False)


def _kron_factors(w: Writer, kron):
    """The small factors ``(F, G)`` of a Kronecker term (derive.Kron) as
    tensors (with the fields' batch dimensions), or None (nothing written)
    when a factor is no box."""
    grids = [w.grid(steps) for steps in kron_nests(kron)]
    if not all(g.box for g in grids):
        return None
    return tuple(_cells(w, g, v) for g, v in zip(grids, (kron.f, kron.g)))


def _kron_product(w: Writer, kron, transpose: bool) -> bool:
    """``_out += (F ⊗ G) @ _rhs`` (or ``(Fᵀ ⊗ Gᵀ) @ _rhs``) by the vec trick on the
    small factors (derive.Kron), over the batch; False (nothing written) when a
    factor is no box."""
    factors = _kron_factors(w, kron)
    if factors is None:
        return False
    F, G = factors
    Q, q = (kron.P, kron.p) if transpose else (kron.Q, kron.q)
    T = w.let("k", f"torch.promote_types({F}.dtype, _rhs.dtype)")
    tr, keep = (".mT", "") if transpose else ("", ".mT")
    # (F ⊗ G) vec(V) = vec(F V Gᵀ) for each column of _rhs (V: the column as Q × q), batched matmuls
    V = w.let("k", f"_rhs.to({T}).unflatten(-2, ({py_code(Q)}, {py_code(q)})).movedim(-1, -3)")
    w.add(f"_out = _out + ({F}{tr}.to({T})[..., None, :, :] @ {V} @ {G}{keep}.to({T})[..., None, :, :])"
          f".movedim(-3, -1).flatten(-3, -2)")
    return True


def _product(d: Derivation, scalars, transpose: bool) -> _Function:
    """``Y @ rhs`` (``Yᵀ @ rhs`` with transpose) term by term, never forming
    Y; ``rhs`` is ``(*batch, rows, k)``."""
    w = TorchWriter(scalars)
    _prologue(w, d.spec)
    out_rows = "_C" if transpose else "_R"
    w.add(f"_out = torch.zeros(_B + ({out_rows}, _rhs.shape[-1]), dtype=torch.promote_types(_dtype, _rhs.dtype), "
          "device=_dev)")
    w.add(f"_OUT = ({out_rows}, _rhs.shape[-1])")
    for steps, value, sep in terms(d):
        kron = kron_of(d, steps, value)
        if kron is not None and _kron_product(w, kron, transpose):
            continue
        if sep is not None:
            A, I0 = _factor(w, sep.alpha, I, sep.i_bounds, sep.limit)
            B, J0 = _factor(w, sep.beta, J, sep.j_bounds, sep.limit)
            (first, f0), (second, s0) = ((A, I0), (B, J0)) if transpose else ((B, J0), (A, I0))
            take = f"_rhs[..., {f0}:{f0} + {first}.shape[-{2 if sep.limit else 1}], :]"
            if sep.limit:
                w.add(f"_out = _out + _rt.pad_to({second} @ ({first}.mT @ {take}), ({s0}, 0), _OUT)")
            else:
                w.add(f"_out = _out + _rt.pad_to({second}[..., :, None] * ({first}[..., None, :] @ {take}), "
                      f"({s0}, 0), _OUT)")
            continue
        g = w.grid(steps)
        cells = _cells(w, g, value)
        run = _diagonal_run(g)
        if g.box:
            I0, I1, J0, J1 = g.box
            if transpose:
                w.add(f"_out = _out + _rt.pad_to({cells}.mT @ _rhs[..., {I0}:{I1}, :], ({J0}, 0), _OUT)")
            else:
                w.add(f"_out = _out + _rt.pad_to({cells} @ _rhs[..., {J0}:{J1}, :], ({I0}, 0), _OUT)")
        elif run:
            dst, src = (run[1], run[0]) if transpose else run
            w.add(f"_out = _rt.diagonal_product(_out, {cells}, _rhs, {dst}, {src})")
        else:
            src, dst = (g.rows, g.cols) if transpose else (g.cols, g.rows)
            w.add(f"_out = _rt.scatter_rows(_out, {dst}, {cells}[..., None] * "
                  f"_rt.take_rows(_rhs, {src}, {g.shape}), {g.shape})")
    w.add("return _out")
    return _Function("_rmatvec" if transpose else "_matvec", "_sv, _arrays, _rhs, _B", w)


def _diagonal(d: Derivation, scalars) -> _Function:
    w = TorchWriter(scalars)
    _prologue(w, d.spec)
    w.add("_out = torch.zeros(_B + (min(_R, _C),), dtype=_dtype, device=_dev)")
    for steps, value in d.diagonal:
        g = w.grid(steps)
        cells = _cells(w, g, value)
        run = _diagonal_run(g)
        if run:
            w.add(f"_out = _rt.diagonal_product(_out, {cells}, None, {run[0]}, {run[0]})")
        else:
            w.add(f"_out = _rt.scatter(_out, ({g.rows},), {cells}, {g.shape})")
    w.add("return _out")
    return _Function("_diagonal", "_sv, _arrays, _B", w)


def render(d: Derivation, spec_file: str) -> str:
    """The source of the PyTorch module for ``d`` (raises Unsupported)."""
    spec = d.spec
    scalars = {f.name for f in spec.fields if f.ndim == 0 and not f.integer}
    linear = d.kind in ("gather", "scatter")      # J does not depend on x
    transposed = _transpose(d, scalars) if linear else None
    functions = [_function(d, scalars, "_dense", "dense"), _product(d, scalars, False),
                 _product(d, scalars, True), _diagonal(d, scalars)]
    if linear:
        functions.append(_function(d, scalars, "_tangent", "dense", linear=True))
    functions.append(transposed if transposed is not None else _function(d, scalars, "_inner", "inner"))
    fields = [dict(name=f.name, ndim=f.ndim, shape_code=_shape_code(f.shape), shape_text=_shape_text(f.shape))
              for f in spec.fields if not f.integer]
    ints = [dict(name=f.name, ndim=f.ndim, shape_code=_shape_code(f.shape), shape_text=_shape_text(f.shape))
            for f in spec.fields if f.integer]
    ranks = {f.name: f.ndim for f in spec.fields}
    plan = [dict(size=st.size, kind=st.kind, field=st.field, axis=st.axis - ranks[st.field],
                 offset=st.offset, coef=st.coef) if st.kind == "solve" else dict(size=st.size, kind=st.kind)
            for st in size_plan(spec)]
    sizes_fmt = ", ".join(f"{s.name}={{{s.name}}}" for s in spec.sizes) or "no sizes"
    names = [f"{f.name}=None" for f in spec.fields] + [f"{s.name}=None" for s in spec.sizes]
    context = dict(
        init_params=", *_args, " + "".join(n + ", " for n in names) + "**_unknown",
        version=__version__,
        spec_file=file_label(spec_file),
        sha256=spec.sha256,
        name=spec.name,
        module=spec.module,
        doc=doc_text(spec.doc or f"Structured matrix type {spec.name}."),
        entry_text=doc_text(" ".join(spec.entry_text.split())),
        sizes=[s.name for s in spec.sizes],
        sizes_fmt=sizes_fmt,
        fields=fields,
        ints=ints,
        checks=_int_checks(d) if ints else [],
        plan=plan,
        rows_code=py_code(spec.size[0]),
        cols_code=py_code(spec.size[1]),
        shape_text=f"{_paren(spec.size[0])} × {_paren(spec.size[1])}",
        functions=functions,
        kron=sum(r.kron is not None for r in d.op_regions),
        transposed=transposed is not None,
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
    return _environment().get_template("torch_module.py.j2").render(**context)


def _paren(e) -> str:
    text = str(e)
    return f"({text})" if isinstance(e, sp.Add) else text


__all__ = ["render", "Unsupported"]
