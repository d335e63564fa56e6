"""Gather-form transposes of a gather type's maps.

A gather type's pullback ``θ̄ = Jᵀ vec(Ȳ)`` is, read from the entry, a
scatter: zero θ̄, then ``θ̄[idx_r(i, j)] += c_r · Ȳ[i, j]`` over each region
r. When each region's index map ``(i, j) -> idx_r(i, j)`` can be inverted
(an affine map with integer coefficients whose 2 × 2 system, together with
the region's pins such as ``i == j``, has determinant ±1), the same sum is a
gather over the field's elements: each element ``e`` collects
``adj_r(Ȳ[inv_r(e)])`` from the regions whose pre-image ``inv_r(e)`` lies in
the region, written once, with no zeroing and no read-modify-write (what
JAX's fused ``triu(Y) + triu(Y.T, 1)`` is for Symmetric). ``project = J J⁺``
composes the two: in region r, ``Y[i, j] = v_r(g(e) / w(e))`` with
``e = idx_r(i, j)``; the regions that meet at ``e`` are fixed per piece, so
the Gram weight ``w(e)`` is a constant there and folds into the
coefficients (``(Ȳ[i, j] + Ȳ[j, i]) / 2`` off the diagonal for Symmetric).

Both are built as piecewise entries, over the field's indices (the pullback)
or over ``(i, j)`` (project), whose reads are of Ȳ (a pseudo-field named
``_ybar``): ``derive``'s nest builder gives them loop bounds, and the numba
target moves their transposed reads in 4 × 4 tiles. A type with an index
map that does not invert (Toeplitz: a line of pre-images), a scalar field
or a field of rank above 2 keeps the scatter route: :func:`plan` is None.

Complex fields: a region's value is ``α t + β conj(t)`` in its read ``t``
(Wirtinger), its adjoint ``conj(α) ȳ + β conj(ȳ)``. ``project`` folds 1/w
only where each element's real 2 × 2 Gram block is ``w`` times a
projection that keeps the real axis (conj, real: yes; imag alone: no) —
then the scalar ``1/w`` is the block's pseudo-inverse on the range of Jᵀ,
for real and complex fields alike; otherwise ``project`` keeps its route.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import sympy as sp

from .derive import Derivation, _nests
from .expr import I, J, IntDiv, IntRead, conj_inward, field_base, wirtinger
from .spec import Field

YBAR = "_ybar"

MAX_TERMS = 6       # regions reading one field: its pieces are the 2**terms subsets


@dataclass(frozen=True)
class Term:
    """Region ``r``'s share of one field: ``inverse`` maps the field's index
    symbols (I, J for a matrix field, I for a vector) to the pre-image
    ``(i, j)``; ``where`` holds there iff that pre-image is in the region."""

    field: str
    read: sp.Indexed
    alpha: sp.Expr          # ∂v/∂t
    beta: sp.Expr           # ∂v/∂conj(t)
    inverse: dict
    where: sp.Basic
    condition: sp.Basic     # the region, in i and j


@dataclass(frozen=True)
class Plan:
    """Nests of the gather-form kernels: ``pullback`` as (field, nests over
    its elements), ``project`` as nests over (i, j) or None (see the module)."""

    spec: object            # the spec with Ȳ as a pseudo-field
    pullback: tuple
    project: tuple | None
    covers: bool            # project's nests write every entry


def _linear(e):
    """``(a, b, rest)`` with e = a·i + b·j + rest, a and b integers, rest free
    of i and j and of field reads; else None."""
    if e.has(sp.Indexed, IntRead, sp.Sum) or any(
            f.has(I, J) for f in e.atoms(sp.Mod, IntDiv, sp.Min, sp.Max, sp.Abs, sp.Piecewise, sp.floor)):
        return None
    a, b = sp.diff(e, I), sp.diff(e, J)
    if not (a.is_Integer and b.is_Integer):
        return None
    rest = sp.expand(e - a * I - b * J)
    return None if rest.has(I, J) else (int(a), int(b), rest)


def _inverse(read, condition, rows, cols):
    """``(inverse, where)`` (see Term) for a region reading ``read`` where
    ``condition`` holds, or None when the map from (i, j) does not invert."""
    names = (I, J)
    rows_eq = []                    # (a, b, rhs): a·i + b·j = rhs, rhs in the field's index symbols
    for d, e in enumerate(read.indices):
        lin = _linear(e)
        if lin is None:
            return None
        rows_eq.append((lin[0], lin[1], names[d] - lin[2]))
    atoms = list(condition.args) if isinstance(condition, sp.And) else [condition]
    for a in atoms:
        if isinstance(a, sp.Eq):
            lin = _linear(a.lhs - a.rhs)
            if lin is not None and (lin[0] or lin[1]):
                rows_eq.append((lin[0], lin[1], -lin[2]))
    for (a1, b1, r1), (a2, b2, r2) in itertools.combinations(rows_eq, 2):
        det = a1 * b2 - b1 * a2
        if det in (1, -1):
            inv = {I: sp.expand((b2 * r1 - b1 * r2) * det), J: sp.expand((a1 * r2 - a2 * r1) * det)}
            break
    else:
        return None
    where = sp.And(condition.xreplace(inv),
                   *[sp.Eq(e.xreplace(inv), names[d]) for d, e in enumerate(read.indices)],
                   sp.Ge(inv[I], 0), sp.Lt(inv[I], rows), sp.Ge(inv[J], 0), sp.Lt(inv[J], cols))
    return inv, where


def _terms(d: Derivation):
    """The regions' Terms by field (every field), or None when one does not invert."""
    rows, cols = d.spec.size
    out = {f.name: [] for f in d.spec.fields if not f.integer}
    for r in d.regions:
        if not r.reads:         # a constant: J has no column for it
            continue
        if len(r.reads) != 1 or r.condition.has(sp.Indexed, IntRead):
            return None
        acc = r.reads[0]
        name = acc.base.label.name
        if len(out[name]) == MAX_TERMS:
            return None
        got = _inverse(acc, r.condition, rows, cols)
        if got is None or not _in_range(d.spec.field(name).shape, acc, r.condition, rows, cols):
            return None
        t = sp.Dummy("t")
        alpha, beta = wirtinger(r.value.xreplace({acc: t}), t)
        if alpha.has(t, sp.Indexed) or beta.has(t, sp.Indexed):
            return None
        out[name].append(Term(name, acc, alpha, beta, got[0], got[1], r.condition))
    return out


def _in_range(shape, read, condition, rows, cols) -> bool:
    """Whether ``read`` stays inside the field's declared shape wherever
    ``condition`` holds (no nest left where an index is negative or past the
    end): a read that wraps (Python's negative index, ``F[j, i - 5]``) or
    raises reads elements that the inverse map does not see."""
    for e, size in zip(read.indices, shape):
        for outside in (sp.Lt(e, 0), sp.Ge(e, size)):
            if list(_nonempty(_nests(sp.And(condition, outside), sp.S.One, rows, cols))):
                return False
    return True


def _adjoint(term: Term, at: dict):
    """``conj(α) Ȳ[p] + β conj(Ȳ[p])`` at the pre-image ``p = at``."""
    y = field_base(YBAR)[at[I], at[J]]
    alpha, beta = (c.xreplace(at) for c in (term.alpha, term.beta))
    return conj_inward(alpha) * y + beta * conj_inward(y)


def _pieces(others, base, domain):
    """``(condition, active terms)`` for each subset of ``others`` (Terms with
    conditions on the current index symbols), within ``base``. Atoms that
    the loops' own range (``domain``: the field's shape or the matrix's)
    implies are dropped first: negated, they would only add empty nests."""
    held = {a for v, hi in domain for a in (sp.Ge(v, 0), sp.Lt(v, hi), sp.Gt(hi, v), sp.Le(0, v))}
    conds = []
    for _, cond in others:
        atoms = cond.args if isinstance(cond, sp.And) else (cond,)
        conds.append(sp.And(*[a for a in atoms if a not in held]))
    for k in range(len(others) + 1):
        for chosen in itertools.combinations(range(len(others)), k):
            cond = sp.And(base, *[conds[m] if m in chosen else sp.Not(conds[m]) for m in range(len(others))])
            if cond is not sp.false:
                yield cond, [others[m][0] for m in chosen]


def _nonempty(nests):
    """The nests less those with a loop that is empty for all sizes."""
    for atoms, steps, v, over in nests:
        nonneg = {s: sp.Dummy(s.name, integer=True, nonnegative=True)
                  for st in steps for b in st[2:] if isinstance(b, sp.Basic) for s in b.free_symbols}
        if not any(st[0] == "for" and _empty(st[2].xreplace(nonneg), st[3].xreplace(nonneg)) for st in steps):
            yield steps, v


def _empty(lo, hi) -> bool:
    """Whether ``range(lo, hi)`` is empty: some bound of the max below is
    at least some bound of the min above."""
    los = lo.args if isinstance(lo, sp.Max) else (lo,)
    his = hi.args if isinstance(hi, sp.Min) else (hi,)
    return any(sp.expand(h - l).is_nonpositive for h in his for l in los)


def _pullback(spec, name, terms):
    """Nests over the elements of field ``name``: each writes its sum of adjoints."""
    field = spec.field(name)
    rows = field.shape[0]
    cols = field.shape[1] if field.ndim == 2 else sp.S.One
    base = sp.true if field.ndim == 2 else sp.Eq(J, 0)
    domain = [(I, rows)] + ([(J, cols)] if field.ndim == 2 else [])
    nests = []
    for cond, active in _pieces([(t, t.where) for t in terms], base, domain):
        value = sp.Add(*[_adjoint(t, t.inverse) for t in active])
        nests += _nonempty(_nests(cond, value, rows, cols, keep_zero=True))
    return tuple(nests)


def _block(alpha, beta):
    """The real 2 × 2 Gram block of ``v = α t + β conj(t)``: (a, b, c) of [[a, b], [b, c]]."""
    cx = (sp.re(alpha + beta), sp.im(alpha + beta))
    cy = (-sp.im(alpha - beta), sp.re(alpha - beta))
    return (cx[0] ** 2 + cx[1] ** 2, cx[0] * cy[0] + cx[1] * cy[1], cy[0] ** 2 + cy[1] ** 2)


def _weight(active):
    """w for the element that the Terms ``active`` meet at, when its block is
    w times a projection keeping the real axis; else None."""
    if not all(t.alpha.is_number and t.beta.is_number for t in active):
        return None
    a, b, c = (sp.nsimplify(sum(x)) for x in zip(*[_block(t.alpha, t.beta) for t in active]))
    if a == 0 or b != 0 or c not in (0, a):
        return None
    return a


def _project(spec, terms, rows, cols):
    """Nests over (i, j): in each region, ``v_r(Σ adjoints / w)`` (see the
    module), or None when a weight does not fold."""
    nests = []
    for name, ts in terms.items():
        for t in ts:
            e = {[I, J][k]: idx for k, idx in enumerate(t.read.indices)}
            others = [(o, o.where.xreplace(e)) for o in ts if o is not t]
            for cond, active in _pieces(others, t.condition, [(I, rows), (J, cols)]):
                w = _weight([t] + active)
                if w is None:
                    return None
                g = (_adjoint(t, {I: I, J: J}) + sp.Add(*[_adjoint(o, {I: o.inverse[I].xreplace(e),
                                                                         J: o.inverse[J].xreplace(e)})
                                                            for o in active])) / w
                value = sp.expand(t.alpha * g + t.beta * conj_inward(g))
                nests += _nonempty(_nests(cond, value, rows, cols))
    return tuple(nests)


def plan(d: Derivation) -> Plan | None:
    """The gather-form kernels' nests for a gather type, or None (see the module)."""
    if d.kind != "gather" or any(f.ndim not in (1, 2) for f in d.spec.fields if not f.integer):
        return None
    terms = _terms(d)
    if terms is None:
        return None
    rows, cols = d.spec.size
    spec = dataclasses.replace(d.spec, fields=d.spec.fields + (Field(YBAR, (rows, cols), d.spec.entry_pos),))
    pullback = tuple((name, _pullback(spec, name, ts)) for name, ts in terms.items())
    project = _project(spec, terms, rows, cols)
    silent = len(d.regions) != sum(len(ts) for ts in terms.values())
    return Plan(spec, pullback, project, d.covers and not silent)
