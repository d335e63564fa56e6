"""The numba target: Derivation -> module source (``<out>/<module>.py``).

This module decides *what* code to write (kernel statements as loops over
the derivation's nests, with this target's tricks: index checks hoisted out
of inner loops, unsigned indices, local accumulators, 4 × 4 transposing
tiles through ``tiles.py``) as plain data; ``templates/numba_module.py.j2``
lays it out. What the targets share is in ``rulegen/targets/common.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from ... import __version__
from ...derive import Derivation, Region, accumulates, monotone_fields
from ... import transpose
from ...loops import split_wraps
from ...pattern import bounds as pattern_bounds, steps as pattern_steps
from ...expr import I, J, Conj, IntDiv, IntRead, derivative, has_complex, is_int, ordering_of_values, outside_sums
from ...printer import code, recording_imports, value_code
from ..common import environment, shape_code, shape_text, doc_text, file_label, size_plan
from ...structure import structure_literal
from .lower import Lowerer, has_tangent


@dataclass(frozen=True)
class Kernel:
    name: str
    params: tuple
    lines: tuple          # (indent, text)


def _open_nest(low: Lowerer, steps, depth: int = 1) -> int:
    for step in steps:
        if step[0] == "for":
            _, v, lo, hi = step
            lo_c, hi_c = low.condition(depth, lo), low.condition(depth, hi)
            low.add(depth, f"for {v.name} in range({lo_c}, {hi_c}):")
            depth += 1
        elif step[0] == "let":
            low.add(depth, f"{step[1].name} = {low.condition(depth, step[2])}")
        else:
            low.add(depth, f"if {low.condition(depth, step[1])}:")
            depth += 1
    return depth


_NONLINEAR = (sp.Mod, IntDiv, sp.Min, sp.Max, sp.Abs, sp.Piecewise, sp.Sum)


def _hoistable(steps, value, exclude=()):
    """(position of the innermost loop, reads whose indices are affine in its
    variable) when there are such reads, else None."""
    fors = [k for k, st in enumerate(steps) if st[0] == "for"]
    if not fors:
        return None
    k = fors[-1]
    v = steps[k][1]
    lets = [(st[1], st[2]) for st in steps[k + 1:] if st[0] == "let"]
    # integer-field reads at the innermost loop's index (rows[k], cols[k]): checked with the others
    found = set(value.atoms(IntRead)).union(*[e.atoms(IntRead) for st in steps[k + 1:] for e in st[1:]
                                              if isinstance(e, sp.Basic)])
    ints = sorted((r for r in found if r not in exclude and all(_affine(e, v) for e in r.args)
                   and any(e.has(v) for e in r.args)), key=sp.default_sort_key)
    reads = []
    for acc in outside_sums(value, sp.Indexed):
        idx = []
        for e in acc.indices:
            for w, ew in reversed(lets):
                e = e.xreplace({w: ew})
            if any(f.has(v) for f in e.atoms(*_NONLINEAR)) or e.has(sp.Sum) or not sp.diff(e, v).is_Integer:
                break
            idx.append(e)
        else:
            reads.append((acc, tuple(idx)))
    reads = sorted(reads, key=lambda t: sp.default_sort_key(t[0]))
    return (k, reads, ints) if reads or ints else None


def _affine(e, v) -> bool:
    """``e`` is ``a·v + rest`` with ``a`` an integer and rest free of v (monotone in v)."""
    return not any(f.has(v) for f in e.atoms(*_NONLINEAR, IntRead)) and not e.has(sp.Sum) \
        and sp.diff(e, v).is_Integer


def _transposed(spec, r):
    """``(field, coef, p, q)`` when ``r`` is ``for i: for j: entry = coef * F[j + p, i + q]``
    with F a matrix field (its rows walked by j): the entry reads across F's
    rows while the loops write along the output's rows."""
    if len(r.steps) != 2 or any(st[0] != "for" for st in r.steps) or (r.steps[0][1], r.steps[1][1]) != (I, J):
        return None
    if any(b.has(sp.Indexed, sp.Sum) for st in r.steps for b in st[2:]):
        return None
    coef, acc = r.value.as_coeff_Mul()
    if not isinstance(acc, sp.Indexed) or not coef.is_Rational or coef == 0:
        return None
    field = spec.field(acc.base.label.name)
    if field.ndim != 2:
        return None
    p, q = sp.expand(acc.indices[0] - J), sp.expand(acc.indices[1] - I)
    if p.has(I, J, sp.Indexed, sp.Sum) or q.has(I, J, sp.Indexed, sp.Sum) or not (is_int(p) and is_int(q)):
        return None
    return field.name, coef, p, q


def _strips(low: Lowerer, r: Region, base: int) -> tuple:
    """The head of a nest in strips of four rows (``_tiled``, ``_tiled_reads``):
    ``for i0 in range(lo, ti, 4)`` with ``[jl, jt)`` the columns that all
    four rows share, rounded down to whole tiles; the symbols
    ``(i0, j0, jl, jt, ti)`` (j0 for the caller's tile loop)."""
    (_, _, lo_i, hi_i), (_, _, lo_j, hi_j) = r.steps
    sym = {k: sp.Symbol(low.fresh(k), integer=True) for k in ("i0", "j0", "jl", "jh", "jt", "ti")}
    i0, j0, jl, jh, jt, ti = sym.values()
    lo_c, hi_c = low.condition(base, lo_i), low.condition(base, hi_i)
    low.add(base, f"{ti.name} = {lo_c} + max({hi_c} - ({lo_c}), 0) // 4 * 4")
    low.add(base, f"for {i0.name} in range({lo_c}, {ti.name}, 4):")
    d = base + 1
    los = [low.condition(d, lo_j.xreplace({I: i0 + a})) for a in range(4)]
    his = [low.condition(d, hi_j.xreplace({I: i0 + a})) for a in range(4)]
    low.add(d, f"{jl.name} = max({', '.join(los)})")
    low.add(d, f"{jh.name} = min({', '.join(his)})")
    low.add(d, f"{jt.name} = {jl.name} + max({jh.name} - {jl.name}, 0) // 4 * 4")
    return i0, j0, jl, jt, ti


def _strip_ends(low: Lowerer, r: Region, body, strip: tuple, base: int) -> None:
    """The ragged ends of each strip of ``_strips`` and the rows after the
    last strip, element by element through ``_region``."""
    i0, jl, jt, ti = strip
    (_, _, lo_i, hi_i), (_, _, lo_j, hi_j) = r.steps
    for j_lo, j_hi in ((lo_j, sp.Min(hi_j, jl)), (sp.Max(lo_j, jt), hi_j)):
        _region(low, _Nest((("for", I, i0, i0 + 4), ("for", J, j_lo, j_hi)), r.value), body, base=base + 1)
    _region(low, _Nest((("for", I, ti, hi_i), ("for", J, lo_j, hi_j)), r.value), body, base=base)


def _tiled(low: Lowerer, r: Region, body, tile: str, base: int = 1) -> bool:
    """Emit ``r`` (see ``_transposed``) in strips of four rows: where all four
    rows share a column range, 4 × 4 tiles move through ``rulegen.tiles``
    (vector loads, shuffles, vector stores); the ragged ends of each strip
    and the last rows go through ``_region``. ``tile`` is "value" (destructure),
    "tangent" (pushforward) or "adjoint" (pullback). False when ``r`` has not
    that shape (nothing emitted)."""
    shape = _transposed(low.spec, r)
    if shape is None:
        return False
    name, coef, p, q = shape
    i0, j0, jl, jt, ti = _strips(low, r, base)
    d = base + 1
    rows, cols = code(jl + p), code(jt + p)
    first = code(i0 + q)
    low.add(d, f"if {jt.name} > {jl.name} and not (0 <= {rows} and {cols} <= {name}.shape[0] "
               f"and 0 <= {first} and {first} + 4 <= {name}.shape[1]):")
    low.add(d + 1, f"{jt.name} = {jl.name}")
    low.add(d, f"for {j0.name} in range({jl.name}, {jt.name}, 4):")
    c = value_code(sp.Float(coef)) if coef != 1 else "1.0"
    src, dst = f"{code(j0 + p)}, {code(i0 + q)}", f"{i0.name}, {j0.name}"
    if tile == "value":
        low.add(d + 1, f"_tiles.tcopy4({name}, {src}, _out, {dst}, {c})")
    elif tile == "tangent":
        low.add(d + 1, f"_tiles.tcopy4(_d_{name}, {src}, _out, {dst}, {c})")
    else:
        low.add(d + 1, f"_tiles.tadd4(_ybar, {dst}, _g_{name}, {src}, {c})")
    _strip_ends(low, r, body, (i0, jl, jt, ti), base)
    return True


def _region(low: Lowerer, r: Region, body, base: int = 1, outputs=None) -> None:
    """The loop nest of ``r`` around ``body(depth)`` (callers leave out the
    nests whose body would write nothing, deciding from the expression).

    Reads whose indices are affine in the innermost loop variable are checked
    once, at both ends of that loop (an affine index is monotone): if every
    one is in range the loop runs without per-element checks; otherwise the
    checked loop runs (Python's negative-index wrap and IndexError preserved).
    In the unchecked loop, scatters into an element that the loop does not
    move (a scalar field, ``col[i]`` in a ``j`` loop) and outputs that it does
    not move (``outputs``: key -> the loop variables its target uses, see
    ``Lowerer.accumulate``) go through a local accumulator, added once after the loop.

    An innermost loop whose reads wrap with ``%`` or ``//`` is first split at
    the wrap points (loops.split_wraps), so that its indices are affine there.
    """
    for steps, subs in split_wraps(r.steps, r.value):
        value = r.value
        for s in subs:
            value = value.xreplace(s)
        low.wrap_subs = subs
        low.static_ints = _static_ints(low.spec, steps, value)
        try:
            _hoisted(low, _Nest(steps, value), body, base, outputs)
        finally:
            low.static_ints, low.wrap_subs = {}, []


def _static_ints(spec, steps, value) -> dict:
    """Integer-field reads that the loop bounds keep inside the field's declared
    shape (``indptr[i + 1]`` for i in range(m), indptr of shape m + 1: the
    constructor checked the shape), as unchecked loads: read -> symbol."""
    bounds = {st[1]: (st[2], st[3]) for st in steps if st[0] == "for"}
    found = set(value.atoms(IntRead)).union(*[e.atoms(IntRead) for st in steps for e in st[1:]
                                              if isinstance(e, sp.Basic)])
    sizes = set(spec.sizes)
    out = {}
    for r in sorted(found, key=sp.default_sort_key):
        shape = spec.field(type(r).__name__).shape
        ok = bool(r.args)
        for d, e in enumerate(r.args):
            lo_e = hi_e = e
            if e.has(IntRead) or e.free_symbols - sizes - set(bounds) or not _affine_all(e, bounds):
                ok = False
                break
            for v in bounds:
                if not e.has(v):
                    continue
                lo_v, hi_v = bounds[v]
                if lo_v.free_symbols - sizes or hi_v.free_symbols - sizes or lo_v.has(IntRead) or hi_v.has(IntRead):
                    ok = False
                    break
                a = sp.diff(e, v)
                lo_e = lo_e.xreplace({v: lo_v if a > 0 else hi_v - 1})
                hi_e = hi_e.xreplace({v: hi_v - 1 if a > 0 else lo_v})
            if not ok or not (sp.expand(lo_e).is_nonnegative and sp.expand(shape[d] - 1 - hi_e).is_nonnegative):
                ok = False
                break
        if ok:
            out[r] = sp.Symbol(f"{type(r).__name__}[{', '.join(code(e) for e in r.args)}]", integer=True)
    return out


def _validated_span(spec, lo, hi):
    """``(first, last)``: sympy bounds in the sizes of a loop from ``lo`` to
    ``hi`` whose bounds read integer fields, from the value ranges that the
    constructor checks (rulegen.pattern: CSR's indptr lies in [0, nnz], so
    ``range(indptr[i], indptr[i + 1])`` stays in [0, nnz - 1]); or None."""
    ranges = {}
    for b in pattern_bounds(spec):
        if not b.select:
            old = ranges.get(b.field)
            ranges[b.field] = (b.lo, b.hi) if old is None else (sp.Max(old[0], b.lo), sp.Min(old[1], b.hi))
    sizes = set(spec.sizes)

    def bound(e, upper):
        if not e.free_symbols - sizes and not e.has(IntRead):
            return e
        if isinstance(e, sp.Max if not upper else sp.Min):
            for a in e.args:
                got = bound(a, upper)
                if got is not None:
                    return got
            return None
        split = _int_plus(e, sizes)
        if split is None or split[0] not in ranges:
            return None
        field, c = split
        return ranges[field][1] - 1 + c if upper else ranges[field][0] + c

    if not (lo.has(IntRead) or hi.has(IntRead)):
        return None         # loops over sizes keep their checks (hoisted to the ends of the loop)
    first, end = bound(lo, False), bound(hi, True)
    return None if first is None or end is None else (first, end - 1)


def _int_plus(e, sizes):
    """``(F, c)`` when ``e`` is ``F[...] + c``, c made of sizes and numbers."""
    reads = list(e.atoms(IntRead))
    if len(reads) != 1:
        return None
    c = sp.expand(e - reads[0])
    return None if c.has(IntRead) or c.free_symbols - sizes else (type(reads[0]).__name__, c)


def _inside(spec, name, idx, v, span) -> bool:
    """Whether every index of ``name[idx]`` stays inside the field's declared
    shape for v in ``span`` (each index v + c, or free of v and the loops)."""
    sizes = set(spec.sizes)
    shape = spec.field(name).shape
    for d, e in enumerate(idx):
        c = sp.expand(e - v)
        if c.has(v) or c.has(IntRead) or c.free_symbols - sizes:
            return False
        first, last = span
        if not (sp.expand(first + c).is_nonnegative and sp.expand(shape[d] - 1 - last - c).is_nonnegative):
            return False
    return True


def _affine_all(e, bounds) -> bool:
    return all(_affine(e, v) for v in bounds if e.has(v)) and not any(
        sp.diff(e, v).has(w) for v in bounds for w in bounds if e.has(v))


def _hoisted(low: Lowerer, r, body, base: int, outputs) -> None:
    plan = _hoistable(r.steps, r.value, exclude=low.static_ints)
    if plan is None:
        body(_open_nest(low, r.steps, base))
        return
    k, reads, ints = plan
    if low.static_ints:     # the reads as the lowerer sees them (static integer reads are loads)
        reads = [(acc.xreplace(low.static_ints), tuple(e.xreplace(low.static_ints) for e in idx))
                 for acc, idx in reads]
    _, v, lo, hi = r.steps[k]
    depth = _open_nest(low, r.steps[:k], base)
    lo_t, hi_t = sp.Symbol(low.fresh("lo"), integer=True), sp.Symbol(low.fresh("hi"), integer=True)
    low.add(depth, f"{lo_t.name} = {low.condition(depth, lo)}")
    low.add(depth, f"{hi_t.name} = {low.condition(depth, hi)}")
    checks = []
    span = _validated_span(low.spec, lo, hi)
    for name, idx in [(acc.base.label.name, idx) for acc, idx in reads] + [(type(ir).__name__, ir.args)
                                                                          for ir in ints]:
        if span is not None and _inside(low.spec, name, idx, v, span):
            continue        # the constructor's checks keep it in range
        for d, e in enumerate(idx):
            for end in (e.xreplace({v: lo_t}), e.xreplace({v: hi_t - 1})):
                checks.append(f"0 <= {code(end)} < {name}.shape[{d}]")
    checks = list(dict.fromkeys(checks))
    fd = depth + 1 if checks else depth       # no checks left: the unchecked loop alone
    if checks:
        low.add(depth, f"if {hi_t.name} <= {lo_t.name} or ({' and '.join(checks)}):")
    inner = (("for", v, lo_t, hi_t),) + tuple(r.steps[k + 1:])
    let_vars = {st[1] for st in r.steps[k + 1:] if st[0] == "let"}
    # accumulators for what the unchecked loop does not move
    fixed = {acc: idx for acc, idx in reads if not any(e.has(v) for e in idx)}
    sinks = {acc: low.fresh("sum") for acc in fixed}
    for key, uses in (outputs or {}).items():
        if v not in uses and not (uses & let_vars):
            sinks[key] = low.fresh("sum")
    for name in sinks.values():
        low.add(fd, f"{name} = 0.0")
    low.trusted = frozenset(acc for acc, _ in reads)
    low.fast = True
    low.int_subs = {ir: sp.Symbol(f"{type(ir).__name__}[{low.subscript(code(e) for e in ir.args)}]", integer=True)
                    for ir in ints}
    low.sinks, low.sink_used = sinks, {}
    body(_open_nest(low, inner, fd))
    used = low.sink_used
    low.trusted, low.sinks, low.sink_used, low.fast, low.int_subs = frozenset(), {}, {}, False, {}
    for key, prefix in used.items():
        if key in fixed:
            name = key.base.label.name
            index = ", ".join(code(e) for e in fixed[key]) if low.spec.field(name).ndim else "0"
            low.add(fd, f"{prefix}{name}[{index}] += {sinks[key]}")
        else:
            low.add(fd, f"{prefix} += {sinks[key]}")
    if checks:
        low.add(depth, "else:")
        body(_open_nest(low, inner, depth + 1))


@dataclass(frozen=True)
class _Nest:
    """A loop nest and the entry it visits (what _region needs of a Region)."""

    steps: tuple
    value: sp.Expr


def _values(spec, lines: list, nests, target: tuple, tile: bool = False) -> None:
    """``array[index] = entry`` over each nest (destructure, diagonal, first
    column, first row); ``target`` is ``(array, *index)``; with ``tile``,
    transposing nests move in 4 × 4 tiles (``_tiled``)."""
    for r in nests:
        low = Lowerer(spec, lines)

        op = "+=" if accumulates(r.steps) else "="

        def body(depth, low=low, r=r, op=op):
            low.add(depth, f"{low.ref(*target)} {op} {low.value(depth, r.value)}")
        if not (tile and _tiled(low, r, body, "value")):
            _region(low, r, body)


def _adjoints(spec, lines: list, nests, seed, square: bool = False, tile: bool = False) -> None:
    """Scatter ∂entry/∂θ · seed over each nest; ``seed(low, depth)`` emits the
    statements that set ``_y`` (a nest whose entry reads no field emits nothing)."""
    for r in nests:
        if not has_tangent(r.value):        # constant: no derivative to scatter
            continue
        low = Lowerer(spec, lines)

        def body(depth, low=low, r=r):
            if square:      # the Gram weights: (∂entry/∂θ)²
                low.adjoint(depth, r.value, None, "_w_", square=True)
                return
            seed(low, depth)
            low.adjoint(depth, r.value, "_y", "_g_")
        if not (tile and _tiled(low, r, body, "adjoint")):
            _region(low, r, body)


def _seed(array: str, *index: str):
    """``_y = array[index]``."""
    return lambda low, depth: low.add(depth, f"_y = {low.ref(array, *index)}")


def _kernel(name: str, lines: list, params: tuple) -> Kernel:
    return Kernel(name, params, tuple(lines or [(1, "pass")]))


def _kernels(d: Derivation) -> tuple:
    """``(kernels of d, writes)``: ``writes`` tells whether the destructure and
    pushforward kernels write every entry of their output (then it need not be zeroed)."""
    spec = d.spec
    sizes = kernel_sizes(spec)
    fields = tuple(f.name for f in real_fields(spec))
    grads = tuple("_g_" + f for f in fields)
    dest, push, pull, wts = ([] for _ in range(4))
    _values(spec, dest, d.regions, ("_out", "i", "j"), tile=True)
    # regions with a zero tangent (constants): the pushforward writes nothing there
    silent = [r for r in d.regions if not has_tangent(r.value)]
    for r in d.regions:
        if r in silent:
            continue
        low = Lowerer(spec, push)

        def tangent(depth, low=low, r=r, op="+=" if accumulates(r.steps) else "="):
            _, dot = low.tangent(depth, r.value)
            low.add(depth, f"{low.ref('_out', 'i', 'j')} {op} {dot}")
        if not _tiled(low, r, tangent, "tangent"):
            _region(low, r, tangent)
    _adjoints(spec, pull, d.regions, _seed("_ybar", "i", "j"), tile=True)
    _adjoints(spec, wts, d.regions, None, square=True)
    writes = {"destructure": d.covers, "pushforward": d.covers and not silent}
    extra = ()
    if d.kind == "scatter":     # u = diag(J Jᵀ): Σ c² over the visits of each entry
        ents = []
        _values(spec, ents, [_Nest(r.steps, _square(derivative(r.value, r.reads[0]))) for r in d.regions],
                ("_out", "i", "j"))
        extra = (_kernel("_entry_weights_kernel", ents, sizes + ("_out",)),)
    plan = transpose.plan(d)
    if plan is not None:
        extra += _transposing_kernels(plan, sizes, grads)
        writes["project"] = plan.covers
    return tuple(_op_kernels(d, sizes, fields, grads)) + extra + (
        _kernel("_destructure_kernel", dest, sizes + fields + ("_out",)),
        _kernel("_pushforward_kernel", push, sizes + fields + tuple("_d_" + f for f in fields) + ("_out",)),
        _kernel("_pullback_kernel", pull, sizes + fields + ("_ybar",) + grads),
        _kernel("_weights_kernel", wts, sizes + fields + tuple("_w_" + f for f in fields)),
    ), writes


def _square(c):
    return c ** 2


def _transposing_kernels(plan, sizes: tuple, grads: tuple) -> tuple:
    """The gather-form kernels of a gather type (rulegen.transpose):
    ``_gather_pullback_kernel`` writes every element of every cotangent
    array once (no zeroing), ``_project_kernel`` (when the weights fold)
    writes J J⁺ vec(Ȳ) in one pass; transposed reads of Ȳ move in 4 × 4 tiles."""
    pull = []
    for name, nests in plan.pullback:
        target = ("_g_" + name, "i", "j") if plan.spec.field(name).ndim == 2 else ("_g_" + name, "i")
        _reads(plan.spec, pull, nests, target)
    out = (_kernel("_gather_pullback_kernel", pull, sizes + (transpose.YBAR,) + grads),)
    if plan.project is not None:
        proj = []
        _reads(plan.spec, proj, plan.project, ("_out", "i", "j"))
        out += (_kernel("_project_kernel", proj, sizes + (transpose.YBAR, "_out")),)
    return out


def _reads(spec, lines: list, nests, target: tuple) -> None:
    """``array[index] = value`` over each ``(steps, value)``, the value a sum
    of reads of Ȳ; a nest over (i, j) that reads Ȳ across its rows moves in
    4 × 4 tiles (``_tiled_reads``)."""
    for steps, value in nests:
        low = Lowerer(spec, lines)

        def body(depth, low=low, value=value):
            # the nests stay inside the output's shape (the field's, or the matrix's): unsigned indices
            low.add(depth, f"{target[0]}[{', '.join(f'_u({v})' for v in target[1:])}] = {low.value(depth, value)}")
        r = _Nest(steps, value)
        if not (len(target) == 3 and _tiled_reads(low, r, body, target[0])):
            _region(low, r, body)


def _read_shapes(r):
    """``[(transposed, coef, p, q)]`` when ``r`` is ``for i: for j: Σ coef · Ȳ[...]``
    with each read ``Ȳ[i + p, j + q]`` (straight) or ``Ȳ[j + p, i + q]``
    (transposed), real constant coefficients and at least one transposed read; else None."""
    if len(r.steps) != 2 or any(st[0] != "for" for st in r.steps) or (r.steps[0][1], r.steps[1][1]) != (I, J):
        return None
    if any(b.has(sp.Indexed, sp.Sum, IntRead) for st in r.steps for b in st[2:]):
        return None
    shapes = []
    for term in sp.Add.make_args(sp.expand(r.value)):
        coef, acc = term.as_coeff_Mul()
        if not isinstance(acc, sp.Indexed) or acc.base.label.name != transpose.YBAR or not coef.is_Rational:
            return None
        a, b = acc.indices
        for transposed, (u, v) in ((False, (I, J)), (True, (J, I))):
            p, q = sp.expand(a - u), sp.expand(b - v)
            if not (p.has(I, J, sp.Indexed, IntRead) or q.has(I, J, sp.Indexed, IntRead)) and is_int(p) and is_int(q):
                shapes.append((transposed, coef, p, q))
                break
        else:
            return None
    shapes.sort(key=lambda s: not s[0])         # a transposed read first: its tile move writes the tile
    return shapes if shapes and shapes[0][0] else None


def _tiled_reads(low: Lowerer, r, body, out: str, base: int = 1) -> bool:
    """Emit ``r`` (see ``_read_shapes``) in strips of four rows, as ``_tiled``
    does: in each 4 × 4 tile the first transposed read is moved with the
    first straight one by ``tsum4`` (or alone by ``tcopy4``), further
    transposed ones added by ``tadd4``, further straight ones element by
    element; the ragged ends go through ``_region``. False when ``r`` has not that shape."""
    shapes = _read_shapes(r)
    if shapes is None:
        return False
    y = transpose.YBAR
    i0, j0, jl, jt, ti = _strips(low, r, base)
    d = base + 1
    checks = []
    for transposed, _, p, q in shapes:
        (r0, r1), (c0, c1) = ((jl + p, jt + p), (i0 + q, i0 + q + 4)) if transposed else \
            ((i0 + p, i0 + p + 4), (jl + q, jt + q))
        checks += [f"0 <= {code(r0)}", f"{code(r1)} <= {y}.shape[0]", f"0 <= {code(c0)}", f"{code(c1)} <= {y}.shape[1]"]
    low.add(d, f"if {jt.name} > {jl.name} and not ({' and '.join(dict.fromkeys(checks))}):")
    low.add(d + 1, f"{jt.name} = {jl.name}")
    low.add(d, f"for {j0.name} in range({jl.name}, {jt.name}, 4):")
    def scale(coef):
        return value_code(sp.Float(coef)) if coef != 1 else "1.0"
    first = shapes.pop(0)
    straight = next((s for s in shapes if not s[0]), None)
    args = f"{y}, {code(j0 + first[2])}, {code(i0 + first[3])}, {out}, {i0.name}, {j0.name}, {scale(first[1])}"
    if straight is not None:        # Y[i, j] ± Y[j, i]: both tiles in one move
        shapes.remove(straight)
        _, coef, p, q = straight
        low.add(d + 1, f"_tiles.tsum4({args}, {code(i0 + p)}, {code(j0 + q)}, {scale(coef)})")
    else:
        low.add(d + 1, f"_tiles.tcopy4({args})")
    for transposed, coef, p, q in shapes:
        c = scale(coef)
        if transposed:
            low.add(d + 1, f"_tiles.tadd4({y}, {code(j0 + p)}, {code(i0 + q)}, {out}, {i0.name}, {j0.name}, {c})")
        else:
            low.add(d + 1, "for _a in range(4):")
            low.add(d + 2, "for _b in range(4):")
            low.add(d + 3, f"{out}[_u({i0.name} + _a), _u({j0.name} + _b)] += {c} * "
                           f"{y}[_u({code(i0 + p)} + _a), _u({code(j0 + q)} + _b)]")
    _strip_ends(low, r, body, (i0, jl, jt, ti), base)
    return True


def kernel_sizes(spec) -> tuple:
    """What every kernel takes first: the sizes, then the integer fields (the
    pattern: shared by a batch, passed like sizes)."""
    return tuple(s.name for s in spec.sizes) + tuple(f.name for f in spec.fields if f.integer)


def real_fields(spec) -> tuple:
    """The fields that are parameters (not integer fields)."""
    return tuple(f for f in spec.fields if not f.integer)


def _cols(low: Lowerer, depth: int, text: str, array: str) -> None:
    """``for _c in range(array.shape[1]): text`` (text uses ``_c``)."""
    low.add(depth, f"for _c in range({array}.shape[1]):")
    low.add(depth + 1, text)


def _range(low: Lowerer, depth: int, var, bounds) -> None:
    lo, hi = low.condition(depth, bounds[0]), low.condition(depth, bounds[1])
    low.add(depth, f"for {var.name} in range({lo}, {hi}):")


def _open_k(low: Lowerer, sep, depth: int) -> int:
    if sep.limit is None:
        return depth
    k, lo, hi = sep.limit
    lo, hi = low.condition(depth, lo), low.condition(depth, hi + 1)
    low.add(depth, f"for {k.name} in range({lo}, {hi}):")
    return depth + 1


def _separable_product(low: Lowerer, sep, rhs: str, out: str, transpose: bool) -> None:
    """out += Y @ rhs (or Yᵀ @ rhs) for Y[i, j] = Σ_k alpha(i, k) beta(j, k):
    t = betaᵀ rhs (or alphaᵀ rhs), then out += alpha t: O((m + n)·k) per k."""
    first, second = (sep.alpha, sep.beta) if transpose else (sep.beta, sep.alpha)
    v_in, v_out = (I, J) if transpose else (J, I)
    b_in, b_out = (sep.i_bounds, sep.j_bounds) if transpose else (sep.j_bounds, sep.i_bounds)
    t = low.fresh("acc")
    low.add(1, f"{t} = _tiles.accumulator({rhs}.shape[1], {rhs})")
    depth = _open_k(low, sep, 1)
    _cols(low, depth, f"{t}[_c] = 0.0", rhs)
    _range(low, depth, v_in, b_in)
    e = low.value(depth + 1, first)
    _cols(low, depth + 1, f"{t}[_c] += ({e}) * {rhs}[{v_in.name}, _c]", rhs)
    _range(low, depth, v_out, b_out)
    e = low.value(depth + 1, second)
    _cols(low, depth + 1, f"{out}[{v_out.name}, _c] += ({e}) * {t}[_c]", rhs)


def _separable_bilinear(low: Lowerer, sep) -> None:
    """θ̄ += ∂/∂θ Σ_ij (L Rᵀ)_ij Y_ij for a separable Y, without L Rᵀ."""
    ta, tb = low.fresh("acc"), low.fresh("acc")
    low.add(1, f"{ta} = _tiles.accumulator(_left.shape[1], _left)")
    low.add(1, f"{tb} = _tiles.accumulator(_left.shape[1], _right)")
    depth = _open_k(low, sep, 1)
    _cols(low, depth, f"{ta}[_c] = 0.0", "_left")
    _cols(low, depth, f"{tb}[_c] = 0.0", "_left")
    for var, bounds, factor, side, acc in ((I, sep.i_bounds, sep.alpha, "_left", ta),
                                           (J, sep.j_bounds, sep.beta, "_right", tb)):
        _range(low, depth, var, bounds)
        # the other factor's conj: ∂/∂θ of Re⟨U Vᵀ, Y⟩ sends conj(∂Y/∂θ)·(U Vᵀ) (a no-op for reals)
        e = low.value(depth + 1, Conj(factor))
        _cols(low, depth + 1, f"{acc}[_c] += ({e}) * {side}[{var.name}, _c]", side)
    for var, bounds, factor, side, other in ((I, sep.i_bounds, sep.alpha, "_left", tb),
                                             (J, sep.j_bounds, sep.beta, "_right", ta)):
        if not has_tangent(factor):
            continue
        _range(low, depth, var, bounds)
        low.add(depth + 1, "_s = 0.0")
        _cols(low, depth + 1, f"_s += {side}[{var.name}, _c] * {other}[_c]", side)
        low.adjoint(depth + 1, factor, "_s", "_g_")


def _op_kernels(d: Derivation, sizes: tuple, fields: tuple, grads: tuple):
    """matvec, rmatvec and bilinear_pullback from the additive terms of the entry;
    diagonal (and, for Toeplitz-like types, the first column and row) with their
    pullbacks from the regions restricted to i == j (j == 0, i == 0)."""
    mv, rmv, bil = [], [], []
    for r in d.op_regions:
        if r.kron is not None:      # F ⊗ G: the module's _kron_* functions (see _kron_kernels)
            continue
        for lines, transpose in ((mv, False), (rmv, True)):
            low = Lowerer(d.spec, lines)
            if r.separable is not None:
                _separable_product(low, r.separable, "_rhs", "_out", transpose)
                continue
            src, dst = ("i", "j") if transpose else ("j", "i")

            def body(depth, low=low, src=src, dst=dst):
                e = low.value(depth, r.value)
                low.accumulate(depth, "row", low.ref("_out", dst, "_c"), f"({e}) * {low.ref('_rhs', src, '_c')}")
            low.add(1, "for _c in range(_rhs.shape[1]):")
            _region(low, r, body, base=2, outputs={"row": {I if dst == "i" else J}})
        if r.separable is not None:
            _separable_bilinear(Lowerer(d.spec, bil), r.separable)
        else:
            def seed(low, depth):
                low.add(depth, "_y = 0.0")
                _cols(low, depth, f"_y += {low.ref('_left', 'i', '_c')} * {low.ref('_right', 'j', '_c')}", "_left")
            _adjoints(d.spec, bil, [r], seed)
    yield _kernel("_matvec_kernel", mv, sizes + fields + ("_rhs", "_out"))
    yield _kernel("_rmatvec_kernel", rmv, sizes + fields + ("_rhs", "_out"))
    yield _kernel("_bilinear_kernel", bil, sizes + fields + ("_left", "_right") + grads)
    yield from _kron_kernels(d, sizes, fields, grads)
    parts = [("_diagonal", d.diagonal, "i", "_dbar")]
    if d.toeplitz or d.hankel:
        parts += [("_column", d.column, "i", "_bar"), ("_row", d.row, "j", "_bar")]
    for name, nests, var, bar in parts:
        nests = [_Nest(steps, value) for steps, value in nests]
        values, pulls = [], []
        _values(d.spec, values, nests, ("_out", var))
        _adjoints(d.spec, pulls, nests, _seed(bar, var))
        yield _kernel(f"{name}_kernel", values, sizes + fields + ("_out",))
        yield _kernel(f"{name}_pullback_kernel", pulls, sizes + fields + (bar,) + grads)


def kron_terms(d: Derivation) -> list:
    """The Kronecker terms F ⊗ G of the entry (derive.Kron), with their index."""
    return [r.kron for r in d.op_regions if r.kron is not None]


def _kron_kernels(d: Derivation, sizes: tuple, fields: tuple, grads: tuple):
    """For the t-th Kronecker term: ``_kron<t>_kernel`` writes its small factors
    F (P × Q) and G (p × q); ``_kron<t>_pullback_kernel`` scatters their
    cotangents F̄, Ḡ into the fields (conj(∂F/∂θ)·F̄ + conj(∂G/∂θ)·Ḡ)."""
    for t, k in enumerate(kron_terms(d)):
        nf = _Nest((("for", I, sp.S.Zero, k.P), ("for", J, sp.S.Zero, k.Q)), k.f)
        ng = _Nest((("for", I, sp.S.Zero, k.p), ("for", J, sp.S.Zero, k.q)), k.g)
        values, pulls = [], []
        _values(d.spec, values, [nf], ("_out_F", "i", "j"))
        _values(d.spec, values, [ng], ("_out_G", "i", "j"))
        _adjoints(d.spec, pulls, [nf], _seed("_bar_F", "i", "j"))
        _adjoints(d.spec, pulls, [ng], _seed("_bar_G", "i", "j"))
        yield _kernel(f"_kron{t}_kernel", values, sizes + fields + ("_out_F", "_out_G"))
        yield _kernel(f"_kron{t}_pullback_kernel", pulls, sizes + fields + ("_bar_F", "_bar_G") + grads)


_OUTPUTS = ("_out", "_g_", "_w_")


def _wrapper(k: Kernel, n_sizes: int) -> dict:
    """What the template needs for the batched wrappers of kernel ``k``: its
    parameters split into sizes, inputs (read at ``_ix_<input>[_b]``) and
    outputs (written at ``[_b]``)."""
    sizes = list(k.params[:n_sizes])
    rest = k.params[n_sizes:]
    outputs = [p for p in rest if p.startswith(_OUTPUTS)]
    inputs = [p for p in rest if not p.startswith(_OUTPUTS)]
    index = [f"_ix_{p}" for p in inputs]
    args = sizes + [f"{p}[{ix}[_b]]" for p, ix in zip(inputs, index)] + [f"{p}[_b]" for p in outputs]
    return dict(kernel=k.name, batched=k.name.removesuffix("_kernel") + "_batched", sizes=sizes,
                inputs=inputs, outputs=outputs, index=index, args=args)


def _factors(d: Derivation) -> dict | None:
    """Y = F Gᵀ (derive._factor_product): the factors' names and positions among the fields."""
    if not d.factors:
        return None
    names = [f.name for f in real_fields(d.spec)]
    return dict(F=d.factors[0], G=d.factors[1], f=names.index(d.factors[0]), g=names.index(d.factors[1]))


def _int_checks(d: Derivation) -> list:
    """What the constructor checks of the integer fields' values (rulegen.pattern)."""
    out = [dict(field=b.field, lo=code(b.lo), hi=code(b.hi), why=b.why, monotone=False, step=False,
                select="" if not b.select else
                ", (" + "".join("None, " if a is None else code(a) + ", " for a in b.select) + ")")
           for b in pattern_bounds(d.spec)]
    out += [dict(field=name, monotone=True, step=False) for name in monotone_fields(d.regions)]
    return out + [dict(field=st.field, most=code(st.most), why=st.why, monotone=False, step=True)
                  for st in pattern_steps(d.spec)]


def render(d: Derivation, spec_file: str) -> str:
    """The source of the generated module for ``d``."""
    spec = d.spec
    size_names = ", ".join(s.name for s in spec.sizes)
    with recording_imports() as modules:
        kernels, writes = _kernels(d)
    fields = [
        dict(name=f.name, ndim=f.ndim, shape_code=shape_code(f.shape), shape_text=shape_text(f.shape),
             kernel_shape_code=shape_code(f.shape) if f.ndim else "(1,)")
        for f in real_fields(spec)
    ]
    ints = [dict(name=f.name, ndim=f.ndim, shape_code=shape_code(f.shape), shape_text=shape_text(f.shape))
            for f in spec.fields if f.integer]
    sizes_fmt = ", ".join(f"{s.name}={{{s.name}}}" for s in spec.sizes) or "no sizes"
    names = [f"{f.name}=None" for f in spec.fields] + [f"{s.name}=None" for s in spec.sizes]
    context = dict(
        init_params=", *_args, " + "".join(n + ", " for n in names) + "**_unknown",
        version=__version__,
        spec_file=file_label(spec_file),
        canonical_name=f"_rulegen_generated_{spec.module}_{spec.sha256[:16]}",
        sha256=spec.sha256,
        name=spec.name,
        doc=doc_text(spec.doc or f"Structured matrix type {spec.name}."),
        entry_text=doc_text(" ".join(spec.entry_text.split())),
        sizes=[s.name for s in spec.sizes],
        size_names=size_names,
        sizes_fmt=sizes_fmt,
        fields=fields,
        ints=ints,
        checks=_int_checks(d),
        plan=size_plan(spec),
        rows_code=code(spec.size[0]),
        cols_code=code(spec.size[1]),
        shape_text=f"{spec.size[0]} × {spec.size[1]}",
        kernels=kernels,
        wrappers=[_wrapper(k, len(kernel_sizes(spec))) for k in kernels
                  if not (d.kind in ("gather", "scatter") and k.name in ("_weights_kernel", "_entry_weights_kernel"))],
        field_ndim={f.name: f.ndim for f in spec.fields},
        # the tile moves, and the separable terms' accumulators (_tiles.accumulator)
        tiles=(any(_transposed(spec, r) is not None for r in d.regions)
               or any(r.separable is not None for r in d.op_regions)
               or any("_tiles." in text for k in kernels for _, text in k.lines)),
        uses_math="math" in modules,
        kind=d.kind,
        structure=structure_literal(d),
        complex_output=has_complex(spec.entry),
        ordering=ordering_of_values(spec.entry),
        ordering_repr=repr(ordering_of_values(spec.entry)),
        fft=(d.toeplitz or d.hankel) and not all(r.separable is not None for r in d.op_regions),
        hankel=d.hankel,
        dest_alloc="np.empty" if writes["destructure"] else "np.zeros",
        # the gather-form kernels of rulegen.transpose (a gather type whose index maps invert)
        gather_pullback=any(k.name == "_gather_pullback_kernel" for k in kernels),
        fused_project=any(k.name == "_project_kernel" for k in kernels),
        project_alloc="np.empty" if writes.get("project") else "np.zeros",
        push_alloc="np.empty" if writes["pushforward"] else "np.zeros",
        coupled=[f.name in d.coupled for f in real_fields(spec)],
        coupled_names=", ".join(d.coupled) or "(none)",
        kron=[dict(P=code(k.P), Q=code(k.Q), p=code(k.p), q=code(k.q), f=str(k.f), g=str(k.g))
              for k in kron_terms(d)],
        kron_only=bool(d.op_regions) and all(r.kron is not None for r in d.op_regions),
        factors=_factors(d),
        product=dict(a=d.product[0], b=d.product[1]) if d.product else None,
    )
    return environment().get_template("numba_module.py.j2").render(**context)
