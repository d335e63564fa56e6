"""Spec -> :class:`Derivation`: the entry map as disjoint regions, each with
its loop nest, its value and its linear terms.

The entry ``Y[i, j] = e(θ)`` is split into branches with piecewise-free
values (``A if C else B``, ``min``/``max``/``abs`` of indices are lifted into
conditions). In each region the value is ``const + Σ_a c_a · θ[idx_a]``:

* the pushforward is ``Ẏ[i, j] = Σ_a c_a · θ̇[idx_a]``;
* the pullback is its transpose, the same loop with the gather turned into a
  scatter ``θ̄[idx_a] += c_a · Ȳ[i, j]``;
* for *gather* types (at most one term per entry, ``c_a`` free of fields)
  ``JᵀJ = diag(w)`` with ``w[k] = Σ c²`` over the entries that read ``k``,
  and ``J⁺ = diag(1/w) Jᵀ`` with ``1/0 := 0``.

Nothing here fixes a size: every bound is a sympy expression of the sizes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import sympy as sp

from .errors import Collector, Pos
from .loops import build_nest
from .spec import Spec

MAX_REGIONS = 256


@dataclass(frozen=True)
class Load:
    """One field element read by an entry: ``symbol`` stands for ``field[index]``."""

    symbol: sp.Symbol
    field: str
    index: tuple


@dataclass(frozen=True)
class Term:
    coef: sp.Expr          # ∂value/∂load (free of loads for gather types)
    load: Load


@dataclass(frozen=True)
class Region:
    steps: tuple           # loop nest (see loops.py)
    value: sp.Expr         # the entry, loads replaced by their symbols
    loads: tuple           # Load
    const: sp.Expr         # the part of value that reads no field
    terms: tuple           # Term: the linear part (exact for gather types)
    condition: sp.Basic    # the region as a condition (for explain)


@dataclass(frozen=True)
class Derivation:
    spec: Spec
    regions: tuple
    kind: str              # "gather" (diagonal JᵀJ) or "general"

    @property
    def rows(self):
        return self.spec.size[0]

    @property
    def cols(self):
        return self.spec.size[1]


class _TooManyRegions(Exception):
    pass


def _has_access(e) -> bool:
    return any(True for _ in e.atoms(sp.Indexed))


def _lift_functions(e):
    """Rewrite min/max/abs of field-free arguments as Piecewise (index arithmetic)."""
    return e.replace(
        lambda x: isinstance(x, (sp.Min, sp.Max, sp.Abs)) and not _has_access(x),
        lambda x: x.rewrite(sp.Piecewise),
    )


def _lift_cond(c):
    """A piecewise-free boolean equivalent to ``c``."""
    if not c.has(sp.Piecewise):
        return c
    return sp.Or(*[sp.And(ci, vi) for ci, vi in _cases(c)])


def _cases(e):
    """Mutually exclusive ``(condition, piecewise-free value)`` pairs covering all (i, j)."""
    if not e.has(sp.Piecewise):
        return [(sp.true, e)]
    if isinstance(e, sp.Piecewise):
        out, prior = [], []
        for value, cond in e.args:
            c = _lift_cond(cond)
            here = sp.And(c, *[sp.Not(p) for p in prior])
            prior.append(c)
            if here is sp.false:
                continue
            for c2, v2 in _cases(value):
                both = sp.And(here, c2)
                if both is not sp.false:
                    out.append((both, v2))
        return out
    if isinstance(e, (sp.Sum,)):
        return [(sp.true, e)]
    per_arg = [_cases(a) for a in e.args]
    out = []
    for combo in itertools.product(*per_arg):
        cond = sp.And(*[c for c, _ in combo])
        if cond is sp.false:
            continue
        out.append((cond, e.func(*[v for _, v in combo])))
        if len(out) > MAX_REGIONS:
            raise _TooManyRegions()
    return out


def _dnf_size(cond):
    """(terms of the DNF of cond, terms of the DNF of not cond), without building either."""
    if isinstance(cond, sp.Not):
        pos, neg = _dnf_size(cond.args[0])
        return neg, pos
    if isinstance(cond, (sp.And, sp.Or)):
        parts = [_dnf_size(a) for a in cond.args]
        prod_pos = prod_neg = 1
        for p, n in parts:
            prod_pos = min(prod_pos * p, 10**9)
            prod_neg = min(prod_neg * n, 10**9)
        if isinstance(cond, sp.And):
            return prod_pos, sum(n for _, n in parts)
        return sum(p for p, _ in parts), prod_neg
    return 1, 1


def _conjunctions(cond):
    """Disjoint conjunctions (lists of atoms) whose union is ``cond``.

    A condition whose DNF would have more than MAX_REGIONS terms is kept whole
    as one run-time test over the full rectangle: correct, merely O(N).
    """
    if cond is sp.true:
        return [[]]
    if _dnf_size(cond)[0] > MAX_REGIONS:
        return [[cond]]
    dnf = sp.to_dnf(cond, simplify=False)
    disjuncts = list(dnf.args) if isinstance(dnf, sp.Or) else [dnf]
    out = []
    for k, d in enumerate(disjuncts):
        atoms = list(d.args) if isinstance(d, sp.And) else [d]
        if k:
            atoms.append(sp.Not(sp.Or(*disjuncts[:k])))
        out.append(atoms)
    return out


def _split_terms(value):
    """Replace accesses by symbols; return (value, loads, const, terms, linear)."""
    accesses = sorted(value.atoms(sp.Indexed), key=sp.default_sort_key)
    loads, subs = [], {}
    for k, acc in enumerate(accesses):
        sym = sp.Symbol(f"_v{k}", real=True)
        index = tuple(acc.indices)
        loads.append(Load(sym, acc.base.label.name, index))
        subs[acc] = sym
    v = value.xreplace(subs)
    syms = [ld.symbol for ld in loads]
    terms, linear = [], True
    for ld in loads:
        c = sp.diff(v, ld.symbol)
        if c != 0:
            terms.append(Term(c, ld))
            if c.has(*syms):
                linear = False
    const = v.xreplace({s: 0 for s in syms}) if linear else sp.S.Zero
    if linear and sp.expand(v - const - sum(t.coef * t.load.symbol for t in terms)) != 0:
        linear = False
    return v, tuple(loads), const, tuple(terms), linear


def derive(spec: Spec) -> Derivation:
    """Derive the regions of ``spec`` (raises SpecError for what cannot be derived yet)."""
    errors = Collector()
    pos = Pos(spec.path, 1, 1)
    rows, cols = spec.size
    entry = _lift_functions(spec.entry)
    try:
        cases = _cases(entry)
    except _TooManyRegions:
        cases = []
    if not cases or len(cases) > MAX_REGIONS:
        errors.error(pos, f"getindex splits into more than {MAX_REGIONS} regions")
        errors.raise_if_any()
    regions, gather = [], True
    for cond, value in cases:
        if value == 0:
            continue
        if value.has(sp.Sum):
            value = value.replace(lambda x: isinstance(x, sp.Sum) and not _has_access(x),
                                  lambda x: x.doit())
        for atoms in _conjunctions(cond):
            built = build_nest(atoms, rows, cols)
            if built is None:
                continue
            steps, pins = built
            v = value.xreplace(pins) if pins else value
            if v == 0:
                continue
            v_sym, loads, const, terms, linear = _split_terms(v)
            if any(_has_access(s[1] if s[0] == "if" else sp.S.Zero) for s in steps):
                gather = False
            if not linear or len(terms) > 1 or v_sym.has(sp.Sum):
                gather = False
            regions.append(Region(steps, v_sym, loads, const, terms, sp.And(*atoms)))
            if len(regions) > MAX_REGIONS:
                errors.error(pos, f"getindex splits into more than {MAX_REGIONS} regions")
                errors.raise_if_any()
    kind = "gather" if gather else "general"
    return Derivation(spec, tuple(regions), kind)
