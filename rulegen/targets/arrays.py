"""Vectorised lowering for the array targets (JAX; the same text serves any
numpy-like module): a loop nest of the derivation becomes a *grid* of index
arrays, and the entry a whole-array expression over it.

A nest (``derive``'s steps: ``for``, ``let``, ``if``) becomes one of

* a **box**: the two loops over ``i`` and ``j`` become the axes of a
  rectangle ``[I0, I1) × [J0, J1)`` (the loop bounds, their extreme values
  when the inner bounds move with ``i``), with a mask where they move; its
  values are placed in the output by padding (no scatter);
* a **band**: the inner loop's bounds are ``i + a`` and ``i + b`` clipped to
  the matrix; its axes are ``i`` and an offset ``t < b - a``, ``j = i + a + t``:
  ``O(rows · width)``, not ``O(N)``;
* **points**: one loop (an index pinned, ``i == j``) or none: a vector of
  ``i`` and the pinned ``j`` computed from it, placed by a scatter of
  ``O(length)``;
* **data points**: a nest whose pattern is data (integer fields in its
  bounds, pins or tests, or loops over a swapped sum's variables: COO's
  ``for k: i = rows[k], j = cols[k]``, CSR's ragged
  ``for i: for k in range(indptr[i], indptr[i + 1])``, block offsets). The
  integer fields are static (concrete numpy arrays when the code runs or is
  traced), so its points are enumerated exactly with numpy, loop by loop
  (``Writer._points``): O(stored) index arrays, no mask over a bounding box,
  no data-dependent shape under ``jit`` (a pattern is part of the static
  type). Its writes are scatters that add up, as ``derive.accumulates``
  requires; reads whose subscripts go through an integer field use index
  arrays computed the same way, checked against the field's extent.

A sum ``Σ_k E`` adds a trailing axis for ``k`` over the extreme values of
its bounds, masked where ``k`` is outside them, reduced after. Reads become
slices where their index is a loop axis plus a constant, gathers otherwise.
Sizes are static Python integers when the generated code runs (they are part
of the instance's type), so extents are computed at trace time with numpy.

Masked positions compute values that are thrown away; a read that feeds a
non-polynomial value there is detached (``where(mask, r, stop_gradient(r))``)
so that a singularity outside the region cannot turn a derivative into NaN.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sympy as sp

from ..derive import _cases, accumulates
from ..expr import I, J, Conj, Im, IntDiv, IntRead, Modulus, Re, Where, is_int, outside_sums, unwhere
from ..printer import code as py_code


class Unsupported(Exception):
    """A construct this lowering does not handle (reported at build time)."""


# ---------------------------------------------------------------------------
# Printing: sympy -> array expression text, module given (``jnp``, ``np``)

_FUNCS = {sp.exp: "exp", sp.log: "log", sp.Abs: "abs", Modulus: "abs", Conj: "conj", Re: "real"}
_REL = {sp.Eq: "==", sp.Ne: "!=", sp.Lt: "<", sp.Le: "<=", sp.Gt: ">", sp.Ge: ">="}


def emit(e, names: dict, xp: str, real: bool = True) -> str:
    """Array code for ``e``; symbols through ``names`` (else their name: sizes).
    With ``real``, integer-valued powers are taken in floating point."""
    def p(x):
        return emit(x, names, xp, real)

    if isinstance(e, bool) or e is sp.true or e is sp.false:
        return "True" if (e is True or e is sp.true) else "False"
    if isinstance(e, int):
        return str(e)
    if isinstance(e, sp.Symbol) or isinstance(e, sp.Dummy):
        return names.get(e, e.name)
    if isinstance(e, IntRead):
        # an integer field: a numpy array (static), read by numpy index arrays
        if not e.args:
            return f"{e.field}[()]"
        return f"{e.field}[" + ", ".join(f"_rt.check_read('{e.field}', {d}, {p(a)}, {e.field}.shape[{d}])"
                                         for d, a in enumerate(e.args)) + "]"
    if e.is_Integer:
        return str(int(e))
    if e.is_Rational:
        return f"({e.p} / {e.q})"
    if e.is_Float:
        return repr(float(e))
    if isinstance(e, sp.Add):
        return "(" + " + ".join(p(a) for a in e.args) + ")"
    if isinstance(e, sp.Mul):
        return "(" + " * ".join(p(a) for a in e.args) + ")"
    if isinstance(e, sp.Pow):
        b, x = e.args
        if x == sp.Rational(1, 2):
            return f"{xp}.sqrt({p(b)})"
        if x == sp.Rational(-1, 2):
            return f"(1.0 / {xp}.sqrt({p(b)}))"
        base = p(b)
        if real and is_int(b):
            base = f"(1.0 * {base})"     # 2 ** j in floating point: no integer overflow
        if x.is_Integer and x < 0:
            return f"(1.0 / {base} ** {-int(x)})"
        return f"({base} ** {p(x)})"
    if isinstance(e, IntDiv):
        return f"({p(e.args[0])} // {p(e.args[1])})"
    if isinstance(e, sp.Mod):
        return f"({p(e.args[0])} % {p(e.args[1])})"
    if isinstance(e, (sp.Min, sp.Max)):
        fn = "minimum" if isinstance(e, sp.Min) else "maximum"
        args = sorted(e.args, key=sp.default_sort_key)
        out = p(args[0])
        for a in args[1:]:
            out = f"{xp}.{fn}({out}, {p(a)})"
        return out
    if e is sp.I:
        return "1j"
    if e.func in _FUNCS:
        return f"{xp}.{_FUNCS[e.func]}({p(e.args[0])})"
    if isinstance(e, Im):       # the runtime's: torch.imag refuses a real tensor
        return f"_rt.imag({p(e.args[0])})"
    if isinstance(e, sp.sign):
        return f"{xp}.sign({p(e.args[0])})"
    if type(e) in _REL:
        return f"({p(e.lhs)} {_REL[type(e)]} {p(e.rhs)})"
    if isinstance(e, sp.And):
        return _fold(f"{xp}.logical_and", [p(a) for a in e.args])
    if isinstance(e, sp.Or):
        return _fold(f"{xp}.logical_or", [p(a) for a in e.args])
    if isinstance(e, sp.Not):
        return f"{xp}.logical_not({p(e.args[0])})"
    if isinstance(e, sp.Piecewise):
        out = p(e.args[-1].expr) if e.args[-1].cond is sp.true else "0.0"
        pairs = e.args[:-1] if e.args[-1].cond is sp.true else e.args
        for value, cond in reversed(pairs):
            out = f"{xp}.where({p(cond)}, {p(value)}, {out})"
        return out
    if isinstance(e, Where):
        return p(sp.Piecewise((e.args[1], e.args[0]), (e.args[2], True)))
    raise Unsupported(f"cannot print {type(e).__name__} for an array target")


def _fold(fn, parts):
    out = parts[0]
    for q in parts[1:]:
        out = f"{fn}({out}, {q})"
    return out


# ---------------------------------------------------------------------------
# Grids


@dataclass
class Ctx:
    """Where an expression is evaluated: the variables' code (array and its
    numpy twin for trace-time extents), the number of grid axes, the mask."""

    names: dict
    np_names: dict
    ndim: int
    mask: str | None = None
    axes: dict = field(default_factory=dict)     # Symbol -> (axis, lo code, hi code) for slice reads

    def expanded(self) -> "Ctx":
        """The same variables seen from inside one more (trailing) axis."""
        ext = {k: f"{v}[..., None]" for k, v in self.names.items()}
        np_ext = {k: f"{v}[..., None]" for k, v in self.np_names.items()}
        mask = f"{self.mask}[..., None]" if self.mask else None
        return Ctx(ext, np_ext, self.ndim + 1, mask, {})


@dataclass
class Grid:
    """A nest as arrays: ``rows``/``cols`` index the output; ``box`` is
    ``(I0, I1, J0, J1)`` when rows and cols are the axes of a rectangle."""

    ctx: Ctx
    rows: str
    cols: str
    box: tuple | None
    shape: str            # code of the grid's shape (a tuple of Python ints)
    run: tuple | None = None   # (first row, first column, length) when the points run along one diagonal


class Writer:
    """Statements of one generated function, as ``(indent, text)`` lines.

    The defaults print numpy-style code (JAX). A target whose arrays differ
    subclasses and overrides the printing hooks below (``arange``,
    ``asarray``, ``scalar``, ``element``, ``gather``, ``broadcast``); with
    ``batched`` the fields carry leading batch axes, so slices index
    ``F[..., a:b]`` and count dimensions from the end."""

    batched = False         # fields have leading batch axes (a read is F[..., index])
    field_shapes = None     # {field: declared shape} where the fields' arrays are not at hand

    def __init__(self, xp: str, scalars=(), lines: list | None = None):
        self.xp = xp
        self.scalars = frozenset(scalars)     # fields of shape (): read as themselves
        self.lines = [] if lines is None else lines
        self.count = 0
        self.pending = {}       # numpy twins, written only when a trace-time extent needs them

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"_{prefix}{self.count}"

    def add(self, text: str, depth: int = 1) -> None:
        self.lines.append((depth, text))

    def let(self, prefix: str, text: str) -> str:
        self.need(text)
        name = self.fresh(prefix)
        self.add(f"{name} = {text}")
        return name

    def twin(self, prefix: str, text: str) -> str:
        """A numpy variable, defined when first used (see ``need``)."""
        name = self.fresh(prefix)
        self.pending[name] = text
        return name

    def need(self, text: str) -> None:
        """Write the pending numpy twins that ``text`` uses, in order."""
        for name in [n for n in self.pending if re.search(rf"\b{n}\b", text)]:
            if name in self.pending:
                definition = self.pending.pop(name)
                self.need(definition)
                self.add(f"{name} = {definition}")

    # -- printing hooks (see the class docstring) -----------------------------

    def arange(self, lo: str, hi: str) -> str:
        """The integers ``lo, …, hi - 1`` as an index array."""
        return f"{self.xp}.arange({lo}, {hi})"

    def asarray(self, text: str) -> str:
        """An index expression (``let``) as an array."""
        return f"{self.xp}.asarray({text})"

    def index_array(self, name: str) -> str:
        """A numpy index array of a data pattern (see ``_points``) on the device."""
        return self.asarray(name)

    def scalar(self, name: str, ctx: Ctx) -> str:
        """A field of shape () read over the grid."""
        return name

    def element(self, name: str, index: str, ctx: Ctx) -> str:
        """``name[index]`` where no index moves with the grid."""
        return f"_rt.element({name}, ({index},))"

    def gather(self, name: str, index: str, ctx: Ctx) -> str:
        """``name[index]`` with index arrays that broadcast to the grid; at
        masked positions they may point outside the field."""
        return f"{name}[{index}]"

    def broadcast(self, val: str, shape: str) -> str:
        """``val`` broadcast to the grid's ``shape`` (a term of a sum)."""
        return f"{self.xp}.broadcast_to({val}, {shape})"

    # -- grids --------------------------------------------------------------

    def _axis(self, var, lo: str, hi: str, ndim: int, axis: int, ctx: Ctx) -> None:
        shape = ", ".join("-1" if a == axis else "1" for a in range(ndim))
        reshape = "" if ndim == 1 else f".reshape(({shape}))"
        ctx.names[var] = self.let(var.name, f"{self.arange(lo, hi)}{reshape}")
        ctx.np_names[var] = self.twin("n" + var.name, f"_np.arange({lo}, {hi}){reshape}")
        ctx.axes[var] = (axis, lo, hi)

    def _and_mask(self, ctx: Ctx, cond) -> None:
        if cond is sp.true:
            return
        text = self.expr(cond, ctx, real=False)
        if not (cond.free_symbols & set(ctx.names)) and not cond.has(sp.Sum, sp.Indexed):
            text = self.asarray(text)          # a condition on the sizes alone is a Python bool
        ctx.mask = self.let("m", text if ctx.mask is None else f"{self.xp}.logical_and({ctx.mask}, {text})")

    def static(self, e, ctx: Ctx, how: str) -> str:
        """A trace-time Python int: ``e`` itself when it involves sizes only,
        else its min or max (``how``) over the grid, computed with numpy."""
        if not (e.free_symbols & set(ctx.names)) and not e.has(sp.Sum):
            return _int_code(e)
        if e.has(sp.Indexed) or e.free_symbols & (set(ctx.names) - set(ctx.np_names)):
            raise Unsupported("a bound that depends on a field or on an index pinned through a sum")
        if e.has(sp.Sum):
            # an integer sum in a bound: evaluated with numpy too, over the whole grid
            sub = Writer("_np", self.scalars, self.lines)
            sub.count, sub.pending = self.count, self.pending
            text = sub.expr(e, Ctx(dict(ctx.np_names), dict(ctx.np_names), ctx.ndim), real=False)
            self.count = sub.count
        else:
            text = emit(e, ctx.np_names, "_np", real=False)
        return self.let("x", f"_rt.extreme(_np.{how}, {text})")

    def grid(self, steps) -> Grid:
        """The grid of a loop nest (see the module docstring)."""
        if data_nest(steps):
            return self._points(steps)
        loops = [st for st in steps if st[0] == "for"]
        ctx = Ctx({}, {}, 0)
        guards, dims = [], []
        if len(loops) == 2:
            (_, vi, lo_i, hi_i), (_, vj, lo_j, hi_j) = loops
            assert (vi, vj) == (I, J)
            ctx.ndim = 2
            I0, I1 = self._range(lo_i, hi_i, "I", "_R", guards, I)
            band = None if lo_j.has(sp.Sum) or hi_j.has(sp.Sum) else _band(lo_j, hi_j)
            if lo_j.has(sp.Sum) or hi_j.has(sp.Sum):
                # bounds through a sum: the whole width, the bounds as a mask
                self._axis(I, I0, I1, 2, 0, ctx)
                J0, J1 = self.let("J0", "0"), self.let("J1", "_C")
                self._axis(J, J0, J1, 2, 1, ctx)
                guards += [sp.Ge(J, lo_j), sp.Lt(J, hi_j)]
                box = (I0, I1, J0, J1)
                dims = [(I0, I1), (J0, J1)]
            elif not (lo_j.has(I) or hi_j.has(I)):
                J0 = self.let("J0", _int_code(lo_j))
                J1 = self.let("J1", f"max({J0}, {py_code(hi_j)})")
                self._axis(I, I0, I1, 2, 0, ctx)
                self._axis(J, J0, J1, 2, 1, ctx)
                box = (I0, I1, J0, J1)
                dims = [(I0, I1), (J0, J1)]
            elif band is not None:
                start, width = band
                self._axis(I, I0, I1, 2, 0, ctx)
                t = sp.Symbol("t", integer=True)
                W = self.let("W", f"max(0, {py_code(width)})")
                self._axis(t, "0", W, 2, 1, ctx)
                dims = [(I0, I1), ("0", W)]
                ctx.axes.pop(t)
                jj = I + start + t
                ctx.names[J] = self.let("j", emit(jj, ctx.names, self.xp, real=False))
                ctx.np_names[J] = self.twin("nj", emit(jj, ctx.np_names, "_np", real=False))
                guards += [sp.Ge(J, lo_j), sp.Lt(J, hi_j)]
                box = None
            else:
                self._axis(I, I0, I1, 2, 0, ctx)
                # the inner loop's extreme bounds over the rows
                lo = self.static(lo_j, ctx, "min")
                hi = self.static(hi_j, ctx, "max")
                J0 = self.let("J0", lo)
                J1 = self.let("J1", f"max({J0}, {hi})")
                self._axis(J, J0, J1, 2, 1, ctx)
                guards += [g for g, b in ((sp.Ge(J, lo_j), lo_j), (sp.Lt(J, hi_j), hi_j)) if b.has(I)]
                box = (I0, I1, J0, J1)
                dims = [(I0, I1), (J0, J1)]
        elif len(loops) == 1:
            (_, v, lo, hi) = loops[0]
            ctx.ndim = 1
            L0, L1 = self._range(lo, hi, "L", "_R" if v == I else "_C", guards, v)
            self._axis(v, L0, L1, 1, 0, ctx)
            box = None
            dims = [(L0, L1)]
        elif not loops:
            box = None
        else:
            raise Unsupported("loop nests deeper than i, j")
        for st in steps:
            if st[0] == "let":
                _, var, e = st
                ctx.names[var] = self.let(var.name, self.asarray(self.expr(e, ctx, real=False)))
                if not e.has(sp.Sum, sp.Indexed):
                    ctx.np_names[var] = self.twin("n" + var.name, f"_np.asarray({emit(e, ctx.np_names, '_np', real=False)})")
            elif st[0] == "if":
                guards.append(st[1])
        for g in guards:
            self._and_mask(ctx, g)
        shape = "(" + "".join(f"{hi} - {lo}, " for lo, hi in dims) + ")"
        return Grid(ctx, ctx.names[I], ctx.names[J], box, shape, self._run(steps, loops, dims, ctx))

    def _points(self, steps) -> Grid:
        """The grid of a nest whose pattern is data (see ``data_nest``): its
        points, computed with numpy from the integer fields (static: concrete
        at trace time) one step at a time, exactly: a loop repeats the points
        so far once per value of its variable (``_rt.expand_range``: a ragged
        loop such as ``range(indptr[i], indptr[i + 1])`` costs its length), a
        let computes a variable over them, a test on integers alone drops the
        points where it fails. Only tests that read the fields' values stay
        a mask. Then every variable is an index array of the points (one
        axis, O(stored)), and the writes are scatters that add up."""
        ctx = Ctx({}, {}, 1)
        base = self.fresh("pts")
        self.add(f"{base} = _np.zeros(1, _np.int64)")
        np_vars, guards = {}, []
        count = f"len({base})"

        def numpy(e):
            if e.has(sp.Indexed, sp.Sum):
                raise Unsupported("a loop bound or a pin that reads a field's values in a data pattern")
            return emit(e, np_vars, "_np", real=False)

        def select(index):
            nonlocal base, count
            for v in list(np_vars):
                np_vars[v] = self.let("n" + v.name, f"{np_vars[v]}[{index}]")
            base = self.let("pts", f"{base}[{index}]")
            count = f"len({base})"

        for st in steps:
            if st[0] == "for":
                _, v, lo, hi = st
                rep, name = self.fresh("rep"), self.fresh("n" + v.name)
                self.add(f"{rep}, {name} = _rt.expand_range({numpy(lo)}, {numpy(hi)}, {count})")
                select(rep)
                np_vars[v] = name
            elif st[0] == "let":
                _, v, e = st
                np_vars[v] = self.let("n" + v.name, f"_rt.points({numpy(e)}, {count})")
            else:
                atoms = list(st[1].args) if isinstance(st[1], sp.And) else [st[1]]
                now = [a for a in atoms if not a.has(sp.Indexed, sp.Sum)]
                guards += [a for a in atoms if a.has(sp.Indexed, sp.Sum)]
                if now:
                    keep = self.let("keep", f"_np.broadcast_to({numpy(sp.And(*now))}, ({count},))")
                    select(keep)
        for v, name in np_vars.items():
            ctx.names[v] = self.let(v.name, self.index_array(name))
        ctx.np_names = dict(np_vars)
        for g in guards:
            self._and_mask(ctx, g)
        if I not in ctx.names or J not in ctx.names:
            raise Unsupported("a data pattern that does not pin both indices")
        return Grid(ctx, ctx.names[I], ctx.names[J], None, f"({count},)")

    def int_indexed(self, acc, ctx: Ctx):
        """``acc`` with each index that reads an integer field replaced by a
        variable of the grid: its numpy value (checked against the field's
        extent where no mask hides positions) as an index array."""
        if not any(ix.has(IntRead) for ix in acc.indices):
            return acc
        name = acc.base.label.name
        rank = len(acc.indices)
        new = []
        for axis, ix in enumerate(acc.indices):
            if not ix.has(IntRead):
                new.append(ix)
                continue
            text = self._numpy_int(ix, ctx)
            if ctx.mask is None and name not in self.scalars:
                extent = (f"{name}.shape[{axis - rank}]" if self.field_shapes is None
                          else _int_code(self.field_shapes[name][axis]))
                text = f"_rt.check_read('{name}', {axis}, {text}, {extent})"
            new.append(self._int_var(text, ctx))
        return acc.base[tuple(new)]

    def _numpy_int(self, e, ctx: Ctx) -> str:
        if e.has(sp.Indexed, sp.Sum) or (e.free_symbols & (set(ctx.names) | {I, J})) - set(ctx.np_names):
            raise Unsupported("an integer-field read whose index moves with a field's values")
        return emit(e, ctx.np_names, "_np", real=False)

    def _int_var(self, text: str, ctx: Ctx):
        d = sp.Dummy("q", integer=True)
        ctx.np_names[d] = self.let("nq", text)
        ctx.names[d] = self.let("q", self.index_array(ctx.np_names[d]))
        return d

    def int_reads(self, f, ctx: Ctx):
        """``f`` with its reads of integer fields (in subscripts or anywhere
        else) computed with numpy over the grid and read as index arrays."""
        if not f.has(IntRead):
            return f
        accs = [acc for acc in outside_sums(f, sp.Indexed) if any(ix.has(IntRead) for ix in acc.indices)]
        if accs:
            f = f.xreplace({acc: self.int_indexed(acc, ctx) for acc in accs})
        rest = outside_sums(f, IntRead)
        if rest:
            f = f.xreplace({r: self._int_var(self._numpy_int(r, ctx), ctx) for r in rest})
        return f

    def _range(self, lo, hi, prefix: str, full: str, guards: list, var):
        """Trace-time bounds of an outermost loop; through a sum, the whole
        dimension ``full`` with the bounds as guards."""
        if lo.has(sp.Sum) or hi.has(sp.Sum):
            guards += [sp.Ge(var, lo), sp.Lt(var, hi)]
            return self.let(prefix + "0", "0"), self.let(prefix + "1", full)
        a = self.let(prefix + "0", _int_code(lo))
        return a, self.let(prefix + "1", f"max({a}, {py_code(hi)})")

    def _run(self, steps, loops, dims, ctx):
        """A single loop whose pinned index is the loop variable plus a
        constant, unmasked: its points lie on one diagonal, ``C + 1`` apart in
        the row-major flat matrix (placed by a strided pad, read by a strided
        slice: no scatter, no gather)."""
        if len(loops) != 1 or ctx.mask is not None:
            return None
        lets = [st for st in steps if st[0] == "let"]
        (_, v, _, _), = loops
        if len(lets) != 1:
            return None
        _, w, e = lets[0]
        off = sp.expand(e - v)
        if off.has(v) or off.free_symbols & {I, J} or not is_int(off):
            return None
        L0, L1 = dims[0]
        r0, c0 = (L0, _offset(L0, off)) if v == I else (_offset(L0, off), L0)
        return r0, c0, f"{L1} - {L0}"

    # -- values -------------------------------------------------------------

    def value(self, e, ctx: Ctx) -> str:
        """Code for the (real) value of ``e`` over ``ctx``'s grid."""
        return self.expr(e, ctx, real=True, guard=True)

    def expr(self, e, ctx: Ctx, real: bool = True, guard: bool = False) -> str:
        """Code for ``e`` over ``ctx``'s grid: its sums lowered, its reads
        gathered (anywhere: values, conditions, indices, pinned indices). With
        ``guard``, reads that feed a non-polynomial value are detached where the
        mask fails (see the module docstring)."""
        sums = [(sp.Dummy("s", integer=is_int(s.function)), s) for s in outside_sums(e, sp.Sum)]
        f = e.xreplace({s: d for d, s in sums}) if sums else e
        f = self.int_reads(f, ctx)
        reads = [(sp.Dummy("v", real=True), acc) for acc in outside_sums(f, sp.Indexed)]
        f = f.xreplace({acc: d for d, acc in reads}) if reads else f
        guard = guard and ctx.mask is not None and not _polynomial(f, [d for d, _ in reads + sums])
        names = dict(ctx.names)
        for d, s in sums:
            names[d] = self._sum(s, ctx)
        for d, acc in reads:
            text = self.read(acc, ctx, names)
            if guard:
                text = f"_rt.guarded({ctx.mask}, {text})"
            names[d] = self.let("r", text)
        return emit(f, names, self.xp, real)

    def read(self, acc, ctx: Ctx, names: dict | None = None) -> str:
        """``F[index]`` over the grid: a slice where each index is one axis
        plus a constant (in range: checked at trace time), else a gather."""
        name = acc.base.label.name
        if name in self.scalars:
            return self.scalar(name, ctx)
        names = ctx.names if names is None else names     # with the sums of the enclosing expression
        index = ", ".join(emit(ix, names, self.xp, real=False) for ix in acc.indices)
        if not any(ix.free_symbols & set(names) for ix in acc.indices):
            # one element, whatever the grid: an empty field is read only by an empty grid
            return self.element(name, index, ctx)
        gather = self.gather(name, index, ctx)
        sl = _slice_read(name, acc.indices, ctx, self.batched)
        return gather if sl is None else f"({sl[0]} if {sl[1]} else {gather})"

    def _sum(self, s: sp.Sum, ctx: Ctx) -> str:
        *inner, (k, lo, hi) = s.limits
        summand = sp.Sum(s.function, *inner) if inner else unwhere(s.function)
        K0 = self.let("K0", self.static(lo, ctx, "min"))
        K1 = self.let("K1", f"max({K0}, {self.static(hi, ctx, 'max')} + 1)")
        inner_ctx = ctx.expanded()
        self._axis(k, K0, K1, inner_ctx.ndim, inner_ctx.ndim - 1, inner_ctx)
        inner_ctx.axes.clear()
        self._and_mask(inner_ctx, sp.And(sp.Ge(k, lo), sp.Le(k, hi)))
        zero = "0" if is_int(s.function) else "0.0"
        terms = []
        for cond, v in _cases(summand):
            if v == 0:
                continue
            case = Ctx(dict(inner_ctx.names), dict(inner_ctx.np_names), inner_ctx.ndim, inner_ctx.mask)
            self._and_mask(case, cond)
            val = self.value(v, case)
            terms.append(f"{self.xp}.where({case.mask}, {val}, {zero})" if case.mask else
                         self.broadcast(val, _shape_of(case)))
        if not terms:
            return zero
        return self.let("s", f"({' + '.join(terms)}).sum(axis=-1)")


def data_nest(steps) -> bool:
    """Whether a nest's pattern is data: it loops over more than i, j (a
    swapped sum) or its bounds, pins or tests read an integer field."""
    return accumulates(steps) or any(isinstance(a, sp.Basic) and a.has(IntRead) for st in steps for a in st[1:])


def _shape_of(ctx: Ctx) -> str:
    return f"_np.broadcast_shapes({', '.join(f'_np.shape({v})' for v in ctx.np_names.values())})"


def _int_code(e) -> str:
    """A trace-time integer (sizes are Python ints there)."""
    text = py_code(e)
    return text if text.lstrip("-").isidentifier() or text.lstrip("-").isdigit() else f"({text})"


def _offset(base: str, off) -> str:
    if off == 0:
        return base
    if off.is_Integer and off < 0:
        return f"{base} - {-int(off)}"
    return f"{base} + {_int_code(off)}"


def _polynomial(f, syms) -> bool:
    try:
        return f.is_polynomial(*syms) if syms else True
    except Exception:
        return False


def _band(lo, hi):
    """``(a, b - a)`` when ``lo = max(..., i + a)`` and ``hi = min(..., i + b)``
    (one argument each moves with i, with coefficient 1), else None."""
    def moving(e, kind):
        args = e.args if isinstance(e, kind) else (e,)
        mv = [a for a in args if a.has(I)]
        if len(mv) != 1:
            return None
        off = sp.expand(mv[0] - I)
        return None if off.has(I) or off.has(J) else off
    a, b = moving(lo, sp.Max), moving(hi, sp.Min)
    if a is None or b is None:
        return None
    width = sp.expand(b - a)
    return (a, width) if not width.free_symbols & {I, J} else None


def _slice_read(name: str, indices, ctx: Ctx, batched: bool = False):
    """``(slice code, in-range condition code)`` for a read whose every index is
    a distinct box axis plus a size-only offset, else None. With ``batched``
    the field has leading batch axes: ``F[..., a:b]``, dimensions from the end."""
    if not ctx.axes or len(indices) > 2:
        return None
    parts, used = [], []
    for d, ix in enumerate(indices):
        var = next((v for v in ctx.axes if ix.has(v)), None)
        if var is None or var in used:
            return None
        off = sp.expand(ix - var)
        if off.free_symbols & (set(ctx.names) | {I, J}):
            return None
        used.append(var)
        axis, lo, hi = ctx.axes[var]
        parts.append((axis, _offset(lo, off), _offset(hi, off), d))
    rank = len(parts)
    lead = "..., " if batched else ""
    ok = " and ".join(f"0 <= {a} and {b} <= {name}.shape[{d - rank if batched else d}]" for _, a, b, d in parts)
    sl = f"{name}[{lead}{', '.join(f'{a}:{b}' for _, a, b, _ in parts)}]"
    axes = [ax for ax, *_ in parts]
    if len(parts) == 2 and axes == [1, 0]:
        sl = f"{sl}.mT" if batched else f"{sl}.T"
    if ctx.ndim == 2 and len(parts) == 1:
        sl = f"{sl}[{lead}:, None]" if axes[0] == 0 else f"{sl}[{lead}None, :]"
    elif ctx.ndim != len(parts) and not (ctx.ndim == 2 and len(parts) == 1):
        return None
    return sl, ok


def factor_grid(w: Writer, expr, var, bounds, limit):
    """``expr`` (alpha or beta of a separable term ``Σ_k α(i, k) β(j, k)``) on
    the axes ``var`` and ``k``: ``(value code, shape code, first index)``, the
    shape ``(L, K)``, or ``(L,)`` without ``k``."""
    ctx = Ctx({}, {}, 2 if limit else 1)
    lo, hi = bounds
    L0 = w.let("L0", _int_code(lo))
    L1 = w.let("L1", f"max({L0}, {py_code(hi)})")
    w._axis(var, L0, L1, ctx.ndim, 0, ctx)
    shape = f"({L1} - {L0},)"
    if limit:
        k, klo, khi = limit
        K0 = w.let("K0", _int_code(klo))
        K1 = w.let("K1", f"max({K0}, {py_code(khi)} + 1)")
        w._axis(k, K0, K1, 2, 1, ctx)
        shape = f"({L1} - {L0}, {K1} - {K0})"
    return w.value(expr, ctx), shape, L0


def terms(d):
    """Additive terms of the entry with their nests (Derivation.op_regions),
    or the regions when the entry has too many terms to list them."""
    if d.op_regions:
        return [(r.steps, r.value, r.separable) for r in d.op_regions]
    return [(r.steps, r.value, None) for r in d.regions]


def kron_nests(kron):
    """The nests of a Kronecker term's factors (derive.Kron): ``F`` over
    ``[0, P) × [0, Q)`` and ``G`` over ``[0, p) × [0, q)``, both in ``i, j``."""
    return ((("for", I, sp.S.Zero, kron.P), ("for", J, sp.S.Zero, kron.Q)),
            (("for", I, sp.S.Zero, kron.p), ("for", J, sp.S.Zero, kron.q)))


def kron_of(d, steps, value):
    """The Kron record of the op region ``(steps, value)`` of ``d``, or None."""
    for r in d.op_regions:
        if r.kron is not None and r.steps == steps and r.value == value:
            return r.kron
    return None


def factor_names(d) -> dict | None:
    """Y = F Gᵀ (derive._factor_product): the factors' names and positions
    among the real fields (the class's arrays), for the array targets'
    closed-form J⁺; None for any other type."""
    if not d.factors:
        return None
    names = [f.name for f in d.spec.fields if not f.integer]
    return dict(F=d.factors[0], G=d.factors[1], f=names.index(d.factors[0]), g=names.index(d.factors[1]))
