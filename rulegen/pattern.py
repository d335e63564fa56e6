"""What the uses of an integer field imply about its values.

An integer field (``rows: {shape: [nnz], dtype: int}``) is data that shapes
the pattern: every target checks its values at construction, before any
kernel runs, so that nothing is silently dropped or read out of range. The
checks come from how ``getindex`` uses the field:

* compared with ``i`` or ``j`` for equality (``rows[k] == i``): the value plus
  its offset is a row (column) index, in ``[0, m)`` (``[0, n)``);
* compared with ``i`` or ``j`` by an inequality (``offsets[b] <= i``): a bound
  of an index range, in ``[0, m]``;
* a subscript of a field (``d[perm[i]]``, ``cols[indptr[i]]``): in that
  field's range along its axis (no negative wrap: a negative value is refused);
* a bound of a sum's range whose variable subscripts a field
  (``range(indptr[i], indptr[i + 1])`` over ``vals[k]``): in ``[0, len]``;
* both ends of one range, ``F[e]`` to ``F[e + 1]`` (CSR's ``indptr``, block
  offsets): non-decreasing.

A use that fits none of these (arithmetic, comparison with something else)
implies nothing; the kernels' own index checks still guard every read.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from .expr import I, J, IntRead


@dataclass(frozen=True)
class Bound:
    field: str
    lo: sp.Expr          # the smallest value allowed
    hi: sp.Expr          # one past the largest
    why: str             # how getindex uses it, for the error message
    select: tuple = ()   # per axis: None (every position) or the one index used (pairs[i, 1]: (None, 1))


def _split(e):
    """``(read, coef, rest)`` with ``e == coef·read + rest``, read the one
    integer-field read of ``e`` (linear), rest free of it; or None."""
    reads = list(e.atoms(IntRead))
    if len(reads) != 1:
        return None
    r = reads[0]
    s = sp.Dummy("r")
    f = sp.expand(e.xreplace({r: s}))
    a = f.coeff(s, 1)
    rest = sp.expand(f - a * s)
    if a not in (1, -1) or rest.has(s) or rest.has(IntRead):
        return None
    return r, a, rest


def _select(spec, read) -> tuple:
    """The positions of an integer field that ``read`` reaches: an index made
    of sizes and numbers only fixes its axis; any other index, all of it."""
    out = tuple(a if not (a.free_symbols - set(spec.sizes)) else None for a in read.args)
    return () if all(a is None for a in out) else out


def _extent(spec, field: str, axis: int):
    return spec.field(field).shape[axis]


def _subscript_bounds(spec, name, indices, out):
    """Each index of ``name[...]`` that is ``F[e] + c`` bounds F to the axis."""
    for axis, e in enumerate(indices):
        sp_ = _split(sp.expand(e))
        if sp_ is None:
            continue
        r, a, c = sp_
        if a != 1 or c.free_symbols - set(spec.sizes):
            continue
        out.append(Bound(type(r).__name__, -c, _extent(spec, name, axis) - c,
                         f"it subscripts {name} along axis {axis}", _select(spec, r)))


def _relation_bounds(spec, atom, out):
    """``F[e] + c == i`` (or ``j``), or an inequality between them."""
    if not isinstance(atom, sp.core.relational.Relational):
        return
    g = sp.expand(atom.lhs - atom.rhs)
    for v, extent, what in ((I, spec.size[0], "i, a row index"), (J, spec.size[1], "j, a column index")):
        a = g.coeff(v, 1)
        if a not in (1, -1):
            continue
        rest = sp.expand(-(g - a * v) / a)        # v == rest
        sp_ = _split(rest)
        if sp_ is None or sp_[1] != 1:
            continue
        r, _, c = sp_
        if c.free_symbols - set(spec.sizes):
            continue
        inclusive = not isinstance(atom, sp.Equality)
        out.append(Bound(type(r).__name__, -c, extent - c + (1 if inclusive else 0),
                         f"it is compared with {what}" + (" (a range bound)" if inclusive else ""),
                         _select(spec, r)))


def _sum_bounds(spec, total, out):
    """A sum's range bound ``F[e] + c`` whose variable subscripts a field."""
    for k, lo, hi in total.limits:
        for bound, shift in ((lo, 0), (hi, 1)):
            sp_ = _split(sp.expand(bound + shift))
            if sp_ is None or sp_[1] != 1:
                continue
            r, _, c = sp_
            for acc in total.function.atoms(sp.Indexed):
                for axis, e in enumerate(acc.indices):
                    off = sp.expand(e - k)
                    if off.has(k) or off.free_symbols - set(spec.sizes):
                        continue
                    name = acc.base.label.name
                    out.append(Bound(type(r).__name__, -c - off, _extent(spec, name, axis) - c - off + 1,
                                     f"it bounds the range of {k}, which subscripts {name}", _select(spec, r)))


def _atoms(e, kind) -> list:
    return sorted(e.atoms(kind), key=sp.default_sort_key)


def _key(b):
    return (b.field, sp.default_sort_key(b.lo), sp.default_sort_key(b.hi), str(b.select), b.why)


def bounds(spec) -> tuple:
    """The value ranges that getindex implies for the integer fields (see the
    module doc), in a fixed order (the generated code must not depend on the hash seed)."""
    out = []
    e = spec.entry
    for acc in _atoms(e, sp.Indexed):
        _subscript_bounds(spec, acc.base.label.name, acc.indices, out)
    for r in _atoms(e, IntRead):
        _subscript_bounds(spec, type(r).__name__, r.args, out)
    for atom in _atoms(e, sp.core.relational.Relational):
        _relation_bounds(spec, atom, out)
    for total in _atoms(e, sp.Sum):
        _sum_bounds(spec, total, out)
    seen, unique = set(), []
    for b in sorted(out, key=_key):
        key = (b.field, b.lo, b.hi, b.select)
        if key not in seen:
            seen.add(key)
            unique.append(b)
    return tuple(unique)


@dataclass(frozen=True)
class Step:
    field: str
    most: sp.Expr        # F[e + 1] - F[e] may be at most this
    why: str


def _upper(atom, v):
    """The exclusive upper bound that ``atom`` puts on ``v``, or None."""
    rel = sp.core.relational
    if isinstance(atom, rel.StrictLessThan) and atom.lhs == v:
        return atom.rhs
    if isinstance(atom, rel.StrictGreaterThan) and atom.rhs == v:
        return atom.lhs
    if isinstance(atom, rel.LessThan) and atom.lhs == v:
        return atom.rhs + 1
    if isinstance(atom, rel.GreaterThan) and atom.rhs == v:
        return atom.lhs + 1
    return None


def steps(spec) -> tuple:
    """Block sizes: a read ``G[..., v - F[e] + c, ...]`` where ``v < F[e + 1] + c2``
    reaches ``F[e + 1] - F[e] + c + c2 - 1``, so a block may be at most
    ``len - c - c2`` long (BlockDiagonal: offsets[b + 1] - offsets[b] <= bs)."""
    e = spec.entry
    sizes = set(spec.sizes)
    rels = _atoms(e, sp.core.relational.Relational)
    out = {}
    for acc in _atoms(e, sp.Indexed):
        name = acc.base.label.name
        for axis, comp in enumerate(acc.indices):
            split = _split(sp.expand(comp))
            if split is None or split[1] != -1:
                continue
            r, _, rest = split
            if len(r.args) != 1:
                continue
            for v in (I, J):
                c = sp.expand(rest - v)
                if c.has(v) or c.free_symbols - sizes:
                    continue
                nxt = type(r)(r.args[0] + 1)
                for atom in rels:
                    hi = _upper(atom, v)
                    c2 = None if hi is None else sp.expand(hi - nxt)
                    if c2 is None or c2.has(IntRead) or c2.free_symbols - sizes:
                        continue
                    most = sp.expand(_extent(spec, name, axis) - c - c2)
                    field = type(r).__name__
                    out.setdefault((field, most), Step(field, most, f"{v} - {field}[e] subscripts {name} along "
                                                                    f"axis {axis}, of length {_extent(spec, name, axis)}"))
    return tuple(out[k] for k in sorted(out, key=lambda k: (k[0], sp.default_sort_key(k[1]))))
