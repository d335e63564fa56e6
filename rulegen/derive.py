"""Spec -> :class:`Derivation`: the entry map as disjoint regions, each with
its loop nest and its value, and the way J⁺ is computed.

The entry ``Y[i, j] = e(θ)`` is split into branches with piecewise-free
values (``A if C else B``, ``min``/``max``/``abs`` of indices are lifted into
conditions; inside a ``sum`` the summand is split the same way when it is
lowered, see lower.py). In each region the value is any expression of field
reads and sums; lower.py writes its value, tangent and adjoint as loops.

The kind of the type decides J⁺ (see :class:`Derivation`): gather types have
``JᵀJ = diag(w)``, ``w[k] = Σ c²`` over the entries that read ``k``, and
``J⁺ = diag(1/w) Jᵀ`` with ``1/0 := 0``; bordered types add a few coupled
elements and a Schur complement; the rest use a matrix-free solve.

Nothing here fixes a size: every bound is a sympy expression of the sizes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import sympy as sp

from .errors import Collector, Pos
from .expr import I, J, IntDiv, IntRead, Where, derivative, outside_sums, unwhere
from .loops import build_nest
from .spec import Spec

MAX_REGIONS = 256


MAX_COUPLED = 16          # field elements a bordered type may couple (the Schur block)


@dataclass(frozen=True)
class Region:
    steps: tuple           # loop nest (see loops.py)
    value: sp.Expr         # the entry here: piecewise-free outside sums, reads as Indexed
    condition: sp.Basic    # the region as a condition (for explain)
    reads: tuple           # Indexed read outside sums (distinct)
    summed: frozenset      # names of the fields read inside sums
    gather: bool           # value = const + c·θ[idx] with c free of fields, nest free of reads
    over: tuple = ()       # the variables of a swapped sum that the nest loops over too (see _swapped)


@dataclass(frozen=True)
class Separable:
    """``Y[i, j] = Σ_k alpha(i, k) · beta(j, k)`` over a rectangle (``limit`` is
    ``(k, lo, hi)``, or None for a single product ``alpha(i) · beta(j)``)."""

    alpha: sp.Expr
    beta: sp.Expr
    limit: tuple | None
    i_bounds: tuple
    j_bounds: tuple


@dataclass(frozen=True)
class OpRegion:
    """A region of one additive term of the entry, for the derived operations
    (matvec, rmatvec, bilinear_pullback, diagonal): these are linear in Y, so
    overlapping terms simply add up."""

    steps: tuple
    value: sp.Expr
    separable: Separable | None
    kron: "Kron | None" = None


@dataclass(frozen=True)
class Kron:
    """An additive term over the whole ``rows × cols`` rectangle whose value is
    ``f(i // p, j // q) · g(i % p, j % q)``, with ``rows = P·p`` and ``cols = Q·q``:
    the term is ``F ⊗ G`` with ``F[a, b] = f(a, b)`` (``P × Q``) and
    ``G[c, d] = g(c, d)`` (``p × q``); ``f`` and ``g`` are written in ``i, j``."""

    f: sp.Expr
    g: sp.Expr
    P: sp.Expr
    Q: sp.Expr
    p: sp.Expr
    q: sp.Expr


@dataclass(frozen=True)
class Derivation:
    """The entry map as regions, and how J⁺ is computed:

    * ``"gather"``: every entry reads at most one field element, with a
      constant coefficient: JᵀJ = diag(w), fixed by the sizes;
    * ``"bordered"``: the fields split into G, of which each entry reads at
      most one element (coefficients may depend on x), and a few coupled
      elements C (``coupled``, constant shapes, at most MAX_COUPLED elements):
      JᵀJ = [[diag(w), B], [Bᵀ, C]], solved exactly with a Schur complement;
    * ``"general"``: anything else: a matrix-free least-squares solve.
    """

    spec: Spec
    regions: tuple
    kind: str
    coupled: tuple = ()
    op_regions: tuple = ()      # OpRegion: additive terms, for matvec and friends
    diagonal: tuple = ()        # (steps, value) of the regions restricted to i == j
    toeplitz: bool = False      # the entry depends on i - j only (Toeplitz, Circulant)
    column: tuple = ()          # (steps, value) restricted to j == 0 (when toeplitz or hankel)
    row: tuple = ()             # (steps, value) restricted to i == 0 (toeplitz) or i == m - 1 (hankel)
    hankel: bool = False        # the entry depends on i + j only
    covers: bool = False        # the regions tile the whole matrix (no entry is a structural zero)
    factors: tuple = ()         # (F, G) when Y = F Gᵀ exactly (see _factor_product): J⁺ in closed form
    product: tuple = ()         # (a, b) when Y is a rearranged a ⊗ b (see _outer_product): (JᵀJ)⁺ in closed form

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


def _field_of(acc) -> str:
    return acc.base.label.name


def _summed_fields(e) -> set:
    return {_field_of(a) for s in e.atoms(sp.Sum) for a in s.atoms(sp.Indexed)}


def _is_gather(value, reads) -> bool:
    """value == const + c·read with c and const free of fields (and no sums)."""
    if value.has(sp.Sum) or len(reads) > 1:
        return False
    if not reads:
        return True
    v = sp.Symbol("_v", real=True)
    f = value.xreplace({reads[0]: v})
    c = derivative(f, v)
    return not c.has(v) and not _has_access(c) and not _has_access(f.xreplace({v: sp.S.Zero}))


def _lift_outside_sums(e):
    sums = e.atoms(sp.Sum)
    if not sums:
        return _lift_functions(e)
    subs = {s: sp.Dummy("s") for s in sums}
    back = {d: s for s, d in subs.items()}
    return _lift_functions(e.xreplace(subs)).xreplace(back)


def _constant_size(field):
    """Number of elements of a field whose shape fixes no size, else None."""
    total = 1
    for d in field.shape:
        if not d.is_Integer:
            return None
        total *= int(d)
    return total


def _coupling(spec, regions) -> tuple | None:
    """The coupled fields C of a bordered type (see Derivation), or None."""
    def fits(g: set) -> bool:
        for r in regions:
            if r.summed & g:
                return False
            if sum(1 for a in r.reads if _field_of(a) in g) > 1:
                return False
        return True

    g = {f.name for f in spec.fields if _constant_size(f) is None}
    if not fits(g):
        return None
    for f in spec.fields:                   # grow G greedily: fewer coupled elements
        if f.name not in g and fits(g | {f.name}):
            g.add(f.name)
    coupled = tuple(f.name for f in spec.fields if f.name not in g)
    if sum(_constant_size(spec.field(name)) for name in coupled) > MAX_COUPLED:
        return None
    return coupled


def derive(spec: Spec) -> Derivation:
    """Derive the regions of ``spec`` (raises SpecError for what cannot be derived)."""
    errors = Collector()
    pos = spec.entry_pos or Pos(spec.path, 1, 1)
    rows, cols = spec.size
    entry = _lift_outside_sums(spec.entry)
    try:
        cases = _cases(entry)
    except _TooManyRegions:
        cases = []
    if not cases or len(cases) > MAX_REGIONS:
        errors.error(pos, f"getindex splits into more than {MAX_REGIONS} regions")
        errors.raise_if_any()
    for total in entry.atoms(sp.Sum):       # summands are split the same way when lowered
        try:
            if len(_cases(unwhere(total.function))) > MAX_REGIONS:
                raise _TooManyRegions()
        except _TooManyRegions:
            errors.error(pos, f"a sum's summand splits into more than {MAX_REGIONS} cases")
            errors.raise_if_any()
    regions = []
    zero_nests = False      # a non-empty nest whose value is 0 once its pins are substituted
    for cond, value in cases:
        if value == 0:
            continue
        for atoms, steps, v, over in _nests(cond, _doit_constant_sums(value), rows, cols, keep_zero=True):
            if v == 0:
                zero_nests = True
                continue
            reads = tuple(outside_sums(v, sp.Indexed))
            tests = [s[1] for s in steps if s[0] == "if"]
            summed = _summed_fields(v)
            gather = _is_gather(v, reads) and not any(_has_access(t) for t in tests)
            regions.append(Region(steps, v, sp.And(*atoms), reads, frozenset(summed), gather, over))
            if len(regions) > MAX_REGIONS:
                errors.error(pos, f"getindex splits into more than {MAX_REGIONS} regions")
                errors.raise_if_any()
    ops = _op_regions(entry, rows, cols)
    diag = tuple(d for r in regions for d in _restricted(r, sp.Eq(J, I), {J: I}, rows, cols))
    toeplitz = _shift_invariant(entry, 1)
    hankel = not toeplitz and _shift_invariant(entry, -1)
    column = row = ()
    if toeplitz or hankel:
        # the first column, and the row that meets it at its end: the first (Toeplitz), the last (Hankel)
        column = tuple(d for r in regions for d in _restricted(r, sp.Eq(J, 0), {J: sp.S.Zero}, rows, cols))
        edge = sp.S.Zero if toeplitz else rows - 1
        row = tuple(d for r in regions for d in _restricted(r, sp.Eq(I, edge), {I: edge}, rows, cols))
    if any(r.over for r in regions):
        kind, coupled = _sparse_kind(regions, monotone_fields(regions)), ()
    elif all(r.gather for r in regions):
        kind, coupled = "gather", ()
    else:
        coupled = _coupling(spec, regions)
        kind = "bordered" if coupled is not None else "general"
    # The cases partition the (i, j) rectangle; with conditions on integers
    # only (a field value may be NaN, true on neither side), the regions of
    # non-zero cases then visit every entry: the dense output needs no zeroing.
    # Decided from the nests that are actually written: a case whose value
    # becomes 0 once an index is pinned ((i - j) * d[i] where i == j) writes nothing.
    covers = (all(v != 0 for _, v in cases) and not zero_nests
              and not any(c.has(sp.Indexed, sp.Sum) for c, _ in cases))
    factors = _factor_product(spec, regions, ops) if kind == "general" else ()
    product = _outer_product(spec, regions) if kind in ("general", "bordered") else ()
    return Derivation(spec, tuple(regions), kind, coupled or (), ops, diag, toeplitz, column, row, hankel, covers,
                      factors, product)


def _factor_product(spec, regions, ops) -> tuple:
    """``(F, G)`` when the entry is exactly ``Σ_{k < r} F[i, k] · G[j, k]`` over
    the whole matrix, F of shape (rows, r) and G (cols, r) two distinct real
    fields and the only ones: Y = F Gᵀ, whose J⁺ has a closed form (the
    tangent space of rank-r matrices; rulegen.runtime.factor_pinv)."""
    if len(regions) != 1 or len(ops) != 1 or ops[0].separable is None or len(spec.fields) != 2:
        return ()
    sep = ops[0].separable
    if sep.limit is None or sep.i_bounds != (0, spec.size[0]) or sep.j_bounds != (0, spec.size[1]):
        return ()
    k, lo, hi = sep.limit
    a, b = sep.alpha, sep.beta
    if not (isinstance(a, sp.Indexed) and isinstance(b, sp.Indexed) and lo == 0):
        return ()
    f, g = spec.field(_field_of(a)), spec.field(_field_of(b))
    if f.name == g.name or f.integer or g.integer or f.ndim != 2 or g.ndim != 2:
        return ()
    if a.indices != (I, k) or b.indices != (J, k):
        return ()
    r = hi + 1
    if sp.expand(f.shape[0] - spec.size[0]) != 0 or sp.expand(g.shape[0] - spec.size[1]) != 0 \
            or sp.expand(f.shape[1] - r) != 0 or sp.expand(g.shape[1] - r) != 0:
        return ()
    return (f.name, g.name)


def _outer_product(spec, regions) -> tuple:
    """``(a, b)`` when ``Y[i, j] = a[α(i, j)] · b[β(i, j)]`` over the whole
    matrix, a and b the only fields (distinct, not integer fields; their
    values may be complex: J is complex-linear), and (i, j) ->
    (α, β) a bijection onto the pairs of their elements: every product
    ``a_e · b_f`` is one entry, so Y is ``vec(a) vec(b)ᵀ`` with its entries
    rearranged (ScaledMatrix ``s · A[i, j]``; KroneckerProduct
    ``A[i // q, j // s] · B[i % q, j % s]``). JᵀJ is then that of a rank-one
    ``F Gᵀ``, whose pseudo-inverse has a closed form
    (rulegen.runtime.outer_gram_pinv), and J⁺ = (JᵀJ)⁺ Jᵀ costs a pullback.

    The bijection is proved: the element counts agree, every index is a
    non-negative integer (no negative index wraps around), and i and j can
    be recovered from the indices (``_recoverable``). A read past a field's
    end is refused by the kernels at run time, so the map is onto."""
    if len(regions) != 1 or len(spec.fields) != 2 or any(f.integer for f in spec.fields):
        return ()
    r = regions[0]
    rows, cols = spec.size
    loops = {s[1]: (s[2], s[3]) for s in r.steps if s[0] == "for"}
    if len(r.steps) != 2 or loops != {I: (0, rows), J: (0, cols)} or r.over or r.summed:
        return ()
    v = r.value
    if not isinstance(v, sp.Mul) or len(v.args) != 2 or not all(isinstance(a, sp.Indexed) for a in v.args):
        return ()
    a, b = v.args
    fa, fb = spec.field(_field_of(a)), spec.field(_field_of(b))
    if fa.name == fb.name:
        return ()
    count = sp.Mul(*fa.shape) * sp.Mul(*fb.shape)
    if sp.expand(count - rows * cols) != 0:
        return ()
    index = [e for read, f in ((a, fa), (b, fb)) if f.ndim for e in read.indices]
    if not all(_nonneg(e) for e in index) or not _recoverable(index) >= {I, J}:
        return ()
    return (fa.name, fb.name) if spec.fields[0].name == fa.name else (fb.name, fa.name)


def _nonneg(e) -> bool:
    """Whether the integer index ``e`` is provably non-negative for 0 <= i, j
    and sizes >= 0 (so that it never wraps around as a negative index)."""
    if e.is_Integer:
        return bool(e >= 0)
    if e in (I, J) or (e.is_Symbol and e.is_nonnegative):      # loop indices, sizes
        return True
    if isinstance(e, (sp.Add, sp.Mul)):
        return all(_nonneg(t) for t in e.args)
    if isinstance(e, IntDiv):
        return _nonneg(e.args[0]) and _nonneg(e.args[1])
    if isinstance(e, sp.Mod):
        return _nonneg(e.args[1]) and not e.args[1].has(I, J)     # Python's % takes the divisor's sign
    return False


def _recoverable(index) -> set:
    """The loop indices that the values of ``index`` determine: one that an
    index is affine in (an integer coefficient) once the others are known, or
    ``x`` of ``x // d`` and ``x % d`` both present (x = d·(x // d) + x % d)."""
    known: set = set()
    exprs = list(index)
    pairs = {(e.args[0], e.args[1]) for e in index if isinstance(e, IntDiv)} \
        & {(e.args[0], e.args[1]) for e in index if isinstance(e, sp.Mod)}
    exprs += [x for x, d in pairs if not d.has(I, J)]
    grew = True
    while grew:
        grew = False
        for e in exprs:
            unknown = (e.free_symbols & {I, J}) - known
            if len(unknown) != 1 or e.has(IntDiv, sp.Mod):
                continue
            (v,) = unknown
            poly = sp.Poly(sp.expand(e), I, J)
            if poly.total_degree() == 1 and poly.coeff_monomial(v).is_Integer and poly.coeff_monomial(v) != 0:
                known.add(v)
                grew = True
    return known


def _terms(e, kind):
    return list(e.args) if isinstance(e, kind) else [e]


def _range_of(step):
    """``(F, e, c)`` when a loop step runs over ``[F[e] + c, F[e + 1] + c)``
    (clipped or not: Max/Min with other bounds), F an integer field."""
    _, v, lo, hi = step
    for a in _terms(lo, sp.Max):
        for r in a.atoms(IntRead) if a.is_Add or isinstance(a, IntRead) else ():
            if len(r.args) != 1:
                continue
            c = sp.expand(a - r)
            if c.has(IntRead, v):
                continue
            nxt = type(r)(r.args[0] + 1)
            if any(sp.expand(b - nxt - c) == 0 for b in _terms(hi, sp.Min)):
                return type(r).__name__, r.args[0], c
    return None


def monotone_fields(regions) -> tuple:
    """The integer fields that bound a loop from F[e] to F[e + 1] (CSR's
    indptr, block offsets): they must not decrease (checked at construction),
    and then those ranges are disjoint for distinct e."""
    names = set()
    for r in regions:
        for st in r.steps:
            if st[0] == "for" and (rng := _range_of(st)) is not None:
                names.add(rng[0])
    return tuple(sorted(names))


def _closure(steps, known: set, monotone) -> set:
    """The loop variables that the values of ``known`` determine: a variable
    is known when a known expression is ±v + (known terms), or when a known
    variable runs over ``[F[v + c], F[v + c + 1])`` with F non-decreasing (the
    ranges for distinct v are disjoint)."""
    loops = [st for st in steps if st[0] == "for"]
    loop_vars = {st[1] for st in loops}
    lets = {st[1]: st[2] for st in steps if st[0] == "let"}
    exprs = [lets.get(v, v) for v in known]
    done = set()
    changed = True
    while changed:
        changed = False
        for e in exprs:
            unknown = [v for v in loop_vars - done if e.has(v)]
            if len(unknown) != 1:
                continue
            v = unknown[0]
            a = sp.diff(e, v)
            if a in (1, -1) and not sp.expand(e - a * v).has(v):
                done.add(v)
                changed = True
        for st in loops:
            rng = _range_of(st)
            if st[1] in done and rng is not None and rng[0] in monotone:
                e = rng[1]
                if e not in exprs:
                    exprs.append(e)
                    changed = True
    return done


def _sparse_kind(regions, monotone) -> str:
    """J⁺ for a type with swapped sums (see Derivation): "gather" when each
    entry reads at most one element (the nest's visits determine (i, j)
    one-to-one), "scatter" when each element is read by at most one entry
    (the visits are determined by the read's index, so JJᵀ is diagonal),
    both with one region whose value is const + c·θ[idx], c a real constant
    (made of numbers, sizes, indices and integer-field reads);
    otherwise "general"."""
    if len(regions) != 1 or not regions[0].gather or len(regions[0].reads) != 1:
        return "general"
    r = regions[0]
    loop_vars = {st[1] for st in r.steps if st[0] == "for"}
    coef = derivative(r.value, r.reads[0])
    if coef.has(sp.I) or coef.atoms(sp.Function) - coef.atoms(IntDiv, sp.Mod, IntRead):
        return "general"
    if _closure(r.steps, {I, J}, monotone) >= loop_vars:
        return "gather"
    if _closure(r.steps, set(r.reads[0].indices), monotone) >= loop_vars:
        return "scatter"
    return "general"


MAX_FOLDED = 4096     # a sum of constants folds only to numbers this small


def _small(e) -> bool:
    return all(abs(a) <= MAX_FOLDED for a in e.atoms(sp.Rational)) and not e.has(sp.Sum)


def _fold(total):
    """A sum that reads no field, in closed form when sympy finds a small one
    (a large constant could make the enclosing expression explode when sympy
    evaluates it: ``2 ** sum(1 for k in range(10 ** 40))``); else the loop."""
    try:
        done = sp.Sum(unwhere(total.function), *total.limits).doit()
    except Exception:       # sympy gives up on some summands: keep the loop
        return total
    return done if _small(done) else total


def _doit_constant_sums(value):
    if value.has(sp.Sum):
        value = value.replace(lambda x: isinstance(x, sp.Sum) and not _has_access(x), _fold)
    return value


def _nests(cond, value, rows, cols, keep_zero=False):
    """(atoms, steps, value) for each loop nest of the region ``cond``, the
    value with the pinned indices substituted; empty regions left out, and
    those whose value is then 0 unless ``keep_zero``. A sum whose range or
    condition reads an integer field is swapped out of the entry into nests
    of its own (see _swapped): their steps loop over its bound variables too,
    and their writes add up (``accumulates``)."""
    for atoms in _conjunctions(cond):
        rest, swapped = _swapped(value)
        for part_atoms, part, over in [(atoms, rest, ())] + [
                (atoms + extra, v, over) for extra, v, over in swapped]:
            if over and part == 0:
                continue
            built = build_nest(part_atoms, rows, cols, over)
            if built is None:
                continue
            steps, pins = built
            v = part.xreplace(pins) if pins else part
            if v != 0 or keep_zero:
                yield part_atoms, steps, v, over


def accumulates(steps) -> bool:
    """Whether a nest loops over more than the entry's indices (a swapped sum):
    then it may visit an entry more than once, and its writes add up."""
    return any(s[0] == "for" and s[1] not in (I, J) for s in steps)


def _data_pattern(total) -> bool:
    """Whether the range or the condition of a sum reads an integer field."""
    return any(lim.has(IntRead) for lim in total.limits) or any(
        c.has(IntRead) for c in total.function.atoms(Where) for c in [c.args[0]]) or (
        isinstance(total.function, sp.Piecewise)
        and any(c.has(IntRead) for _, c in total.function.args))


def _swapped(value):
    """``(rest, [(atoms, value, over), ...])`` with ``value`` = rest + the sum of
    the swapped nests' values, visiting their ``over`` variables too.

    A sum that reads an integer field in its range or condition (a sparse
    pattern: ``sum(vals[k] for k in range(nnz) if rows[k] == i and cols[k] == j)``,
    ``range(indptr[i], indptr[i + 1])``) costs O(nnz) for each entry as written.
    When the entry is linear in it (``a + b·Σ_k f``), its bound variables
    become loop variables of nests of their own: the range and each case of the
    summand become atoms, from which build_nest pins ``i = rows[k]``,
    ``j = cols[k]`` and bounds ``k`` by ``indptr[i]``: O(nnz) in all."""
    out = []
    rest = value
    for total in outside_sums(value, sp.Sum):
        if not _data_pattern(total):
            continue
        s = sp.Dummy("swap")
        f = rest.xreplace({total: s})
        b = sp.diff(f, s)
        if b.has(s) or b.has(sp.Sum, Where, sp.Piecewise) or b == 0:
            continue
        rest = f.xreplace({s: sp.S.Zero})
        over = tuple(k for k, _, _ in total.limits)
        bounds = [a for k, lo, hi in total.limits for a in (sp.Ge(k, lo), sp.Le(k, hi))]
        for cond, v in _cases(unwhere(total.function)):
            if v == 0:
                continue
            for conj in _conjunctions(cond):
                out.append((bounds + conj, b * v, over))
    return rest, out


def _restricted(region, atom, subs, rows, cols):
    """The part of ``region`` where ``atom`` holds (i == j: the diagonal; j == 0:
    the first column; i == 0: the first row), usually a single loop."""
    atoms = list(region.condition.args) if isinstance(region.condition, sp.And) else \
        ([] if region.condition is sp.true else [region.condition])
    for conj in _conjunctions(sp.And(*atoms, atom)):
        built = build_nest(conj, rows, cols, region.over)
        if built is not None:
            steps, pins = built
            v = region.value.xreplace(subs)
            v = v.xreplace(pins) if pins else v
            if v != 0:
                yield steps, v


def _canonical(e):
    return e.replace(lambda x: isinstance(x, sp.core.relational.Relational) and x.lhs.is_number is not True,
                     lambda x: x.func(sp.expand(x.lhs - x.rhs), 0))


def _shift_invariant(entry, sign: int) -> bool:
    """Whether getindex(i + t, j + sign·t) == getindex(i, j) as expressions:
    sign 1, the entry depends on i - j only (Toeplitz, fixed by its first
    column and row); sign -1, on i + j only (Hankel: first column, last row)."""
    t = sp.Dummy("t", integer=True)
    try:
        return _canonical(entry.xreplace({I: I + t, J: J + sign * t})) == _canonical(entry)
    except Exception:       # sympy could not rebuild an expression: no FFT path
        return False


def _op_regions(entry, rows, cols) -> tuple:
    """Regions of each additive term of the entry (see OpRegion)."""
    out = []
    for term in sp.Add.make_args(entry):
        try:
            cases = _cases(term)
        except _TooManyRegions:
            return ()
        for cond, value in cases:
            if value == 0:
                continue
            for _, steps, v, _ in _nests(cond, _doit_constant_sums(value), rows, cols):
                sep = _separable(steps, v)
                out.append(OpRegion(steps, v, sep, None if sep is not None else _kron(steps, v, rows, cols)))
                if len(out) > 2 * MAX_REGIONS:
                    return ()
    return tuple(out)


def _depends(e) -> set:
    return e.free_symbols & {I, J}


def _split_factors(factors):
    """(alpha, beta) if no factor depends on both i and j, else None."""
    alpha, beta = [], []
    for f in factors:
        dep = _depends(f)
        if dep == {I, J}:
            return None
        (beta if J in dep else alpha).append(f)
    return sp.Mul(*alpha), sp.Mul(*beta)


def _separable(steps, value):
    """A Separable form of ``value`` over a rectangle, or None."""
    if len(steps) != 2 or any(st[0] != "for" for st in steps):
        return None
    (_, vi, ilo, ihi), (_, vj, jlo, jhi) = steps
    if vi != I or vj != J or ilo.has(J) or ihi.has(J) or jlo.has(I) or jhi.has(I):
        return None
    factors = sp.Mul.make_args(value)
    split = _split_factors(factors)
    if split is not None:
        return Separable(split[0], split[1], None, (ilo, ihi), (jlo, jhi))
    both = [f for f in factors if _depends(f) == {I, J}]
    if len(both) != 1 or not isinstance(both[0], sp.Sum):
        return None
    total = both[0]
    *inner, (k, lo, hi) = total.limits
    if _depends(lo) or _depends(hi):
        return None
    summand = sp.Sum(total.function, *inner) if inner else total.function
    split = _split_factors([f for f in factors if f is not total] + list(sp.Mul.make_args(summand)))
    if split is None:
        return None
    return Separable(split[0], split[1], (k, lo, hi), (ilo, ihi), (jlo, jhi))


def _divisor(value, var):
    """The one ``p`` with which ``var`` appears as ``var // p`` or ``var % p``, else None."""
    ds = {a.args[1] for a in value.atoms(IntDiv, sp.Mod) if a.args[0] == var}
    if len(ds) != 1:
        return None
    p = ds.pop()
    return None if p.has(I, J, sp.Indexed, sp.Sum) else p


def _quotient(total, p):
    """``total / p`` when it is a polynomial of the sizes with integer coefficients, else None."""
    try:
        P = sp.cancel(total / p)
        poly = sp.Poly(P, *sorted(P.free_symbols, key=str)) if P.free_symbols else None
    except Exception:
        return None
    if P.free_symbols & {I, J}:
        return None
    if poly is None:
        return P if P.is_Integer else None
    return P if all(c.is_Integer for c in poly.coeffs()) else None


def _kron(steps, value, rows, cols):
    """A Kron form of ``value`` over the full rectangle (see Kron), or None."""
    if len(steps) != 2 or any(st[0] != "for" for st in steps) or value.has(sp.Sum, Where):
        return None
    (_, vi, ilo, ihi), (_, vj, jlo, jhi) = steps
    if (vi, vj) != (I, J) or ilo != 0 or jlo != 0 or sp.expand(ihi - rows) != 0 or sp.expand(jhi - cols) != 0:
        return None
    p, q = _divisor(value, I), _divisor(value, J)
    if p is None or q is None:
        return None
    P, Q = _quotient(rows, p), _quotient(cols, q)
    if P is None or Q is None:
        return None
    a, b, c, d = (sp.Dummy(n, integer=True, nonnegative=True) for n in "abcd")
    # i, j >= 0 here: Python's floor // and % are the block index and the offset in the block
    v = value.xreplace({IntDiv(I, p): a, sp.Mod(I, p): c, IntDiv(J, q): b, sp.Mod(J, q): d})
    if v.has(I, J):
        return None
    fs, gs = [], []
    for factor in sp.Mul.make_args(v):
        dep = factor.free_symbols & {a, b, c, d}
        if dep & {a, b} and dep & {c, d}:
            return None
        (gs if dep & {c, d} else fs).append(factor)
    f = sp.Mul(*fs).xreplace({a: I, b: J})
    g = sp.Mul(*gs).xreplace({c: I, d: J})
    return Kron(f, g, P, Q, p, q)
