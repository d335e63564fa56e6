"""Loop nests that visit only a region of the (i, j) rectangle.

A region is a conjunction of atoms (relations in ``i``, ``j`` and the sizes).
RECIPE.md, "Deriving loops that touch only the pattern":

* an equality that pins one index (``i == j``, ``j == i + 1``, ``i == 0``) is
  substituted away, so the region becomes a loop over the other index;
* inequalities linear in a loop variable give that loop's bounds (clipped to
  the matrix, since ``0 <= i < m`` and ``0 <= j < n`` are atoms too);
* every other atom (``%``, ``//``, ``!=``, nonlinear) is tested at run time at
  the outermost level where all its variables are known: always correct,
  at worst ``O(N)``.

A nest is a tuple of steps, outermost first:
``("for", var, lo, hi)``, ``("let", var, expr)``, ``("if", cond)``.
"""

from __future__ import annotations

import itertools

import sympy as sp

from .expr import I, J, IntDiv, IntRead, is_int

LOOP_VARS = (I, J)
UNBOUNDED = "unbounded"


def _clear_denominator(e):
    """``(num, ok)`` with ``sign(num) == sign(e)`` and num free of fractions, if possible."""
    num, den = sp.fraction(sp.together(e))
    if not den.is_Number or den == 0:
        return None
    return sp.expand(-num if den < 0 else num)


def as_nonneg(atom):
    """An integer-valued ``g`` with ``atom <=> g >= 0``, or None."""
    if not isinstance(atom, (sp.GreaterThan, sp.StrictGreaterThan, sp.LessThan, sp.StrictLessThan)):
        return None
    e = atom.lhs - atom.rhs if isinstance(atom, (sp.GreaterThan, sp.StrictGreaterThan)) else atom.rhs - atom.lhs
    g = _clear_denominator(e)
    if g is None or not is_int(g):
        return None
    if isinstance(atom, (sp.StrictGreaterThan, sp.StrictLessThan)):
        g = g - 1
    return g


def _linear_in(g, v):
    """``(a, rest)`` with ``g == a*v + rest``, ``a`` a non-zero integer, rest free of v; or None."""
    a = g.coeff(v, 1)
    rest = sp.expand(g - a * v)
    if not a.is_Integer or a == 0 or rest.has(v) or not is_int(rest):
        return None
    return a, rest


def solve_pin(atom, v):
    """For ``Eq`` linear in ``v``: ``(expr, guard)`` with ``v == expr`` when guard holds."""
    if not isinstance(atom, sp.Equality):
        return None
    g = _clear_denominator(atom.lhs - atom.rhs)
    if g is None:
        return None
    lin = _linear_in(g, v)
    if lin is None:
        return None
    a, rest = lin
    if abs(a) == 1:
        return -rest * a, sp.true
    return IntDiv(-rest, a), sp.Eq(sp.Mod(rest, a), 0)


def _atoms_of(cond):
    if cond is sp.true:
        return []
    if isinstance(cond, sp.And):
        return list(cond.args)
    return [cond]


def build_nest(atoms, rows, cols, over=()):
    """Steps of the loop nest visiting ``{(i, j) : all atoms hold}``; None if empty.

    ``over``: further loop variables (the bound variables of a sum swapped
    out of the entry, see derive._swapped), whose ranges are among the atoms:
    the nest visits every ``(i, j, *over)`` where the atoms hold. The loops
    are ordered so that as few atoms as possible are left as run-time tests
    (``for i: for k in range(indptr[i], indptr[i + 1])``, not the reverse).
    """
    if over:
        best = None
        for data_pins, order in itertools.product((True, False), itertools.permutations((I, J) + tuple(over))):
            built = _build(atoms, rows, cols, order, data_pins)
            if built is None:
                return None
            if built is UNBOUNDED:      # a loop whose bounds need a variable of an inner loop
                continue
            steps = built[0]
            cost = (sum(1 for s in steps if s[0] == "for"),
                    sum(len(s[1].args) if isinstance(s[1], sp.And) else 1
                        for s in steps if s[0] == "if" and _inside_loop(steps, s)))
            if best is None or cost < best[0]:
                best = (cost, built)
        return None if best is None else best[1]
    return _build(atoms, rows, cols, LOOP_VARS)


def _inside_loop(steps, step) -> bool:
    return any(s[0] == "for" for s in steps[:steps.index(step)])


def _build(atoms, rows, cols, order, data_pins=True):
    """build_nest for one order of the loops; ``data_pins``: whether an index
    may be pinned to an expression that reads an integer field (i = rows[k])."""
    atoms = list(atoms) + [sp.Ge(I, 0), sp.Lt(I, rows), sp.Ge(J, 0), sp.Lt(J, cols)]
    guards_extra = []
    pins: dict = {}

    def substitute(subs):
        nonlocal atoms
        new = []
        for a in atoms:
            a = a.xreplace(subs) if subs else a
            if a is sp.false:
                return False
            new.extend(_atoms_of(a))
        atoms = [a for a in new if a is not sp.true]
        return True

    if not substitute({}):
        return None
    # Pin j first (so the loop stays row-major), then i, then the others.
    for v in sorted(order, key=lambda w: (w is not J, w is not I)):
        for a in sorted(atoms, key=lambda a: a.has(IntRead)):     # j = i before j = cols[k]
            sol = solve_pin(a, v)
            if sol is None or (not data_pins and sol[0].has(IntRead)):
                continue
            expr, guard = sol
            atoms.remove(a)
            pins[v] = expr
            guards_extra.extend(_atoms_of(guard))
            if not substitute({v: expr}):
                return None
            pins = {w: e.xreplace({v: expr}) for w, e in pins.items()}
            break
    atoms.extend(a for a in guards_extra if a is not sp.true)
    if any(a is sp.false for a in atoms):
        return None

    loop_vars = [v for v in order if v not in pins]
    # a pinned i that depends on j forces the j loop outermost (already the case: only j remains)
    level_of = {v: k + 1 for k, v in enumerate(loop_vars)}

    def level(expr):
        return max([level_of[v] for v in loop_vars if expr.has(v)], default=0)

    # i and j are non-negative; a sum's variable has its range among the atoms
    bounds = {v: ([sp.S.Zero] if v in LOOP_VARS else [], []) for v in loop_vars}
    guards = {k: [] for k in range(len(loop_vars) + 1)}
    for a in atoms:
        lvl = level(a)
        if lvl > 0:
            v = loop_vars[lvl - 1]
            g = as_nonneg(a)
            lin = _linear_in(g, v) if g is not None else None
            if lin is not None:
                a_, rest = lin
                if a_ > 0:
                    bounds[v][0].append(-rest if a_ == 1 else -IntDiv(rest, a_))
                else:
                    bounds[v][1].append(rest + 1 if a_ == -1 else IntDiv(rest, -a_) + 1)
                continue
        guards[lvl].append(a)

    # Loop variables are non-negative once their loop runs: use that to simplify.
    if any(not lo or not hi for lo, hi in bounds.values()):
        return UNBOUNDED
    nonneg = {v: sp.Dummy(v.name, integer=True, nonnegative=True) for v in loop_vars if v in LOOP_VARS}
    back = {d: v for v, d in nonneg.items()}

    def simplified(e):
        return e.xreplace(nonneg).xreplace(back)

    for k, v in enumerate(loop_vars, start=1):
        lo, hi = sp.Max(*bounds[v][0]), sp.Min(*bounds[v][1])
        kept = []
        for a in guards[k]:
            # v != e is implied when e lies outside [lo, hi)
            if isinstance(a, sp.Unequality):
                sol = solve_pin(sp.Eq(a.lhs, a.rhs), v)
                if sol is not None and sol[1] is sp.true:
                    e = sol[0]
                    if simplified(lo - e).is_positive or simplified(e - hi).is_nonnegative:
                        continue
            kept.append(a)
        guards[k] = kept
        bounds[v] = (simplified(lo), simplified(hi))

    steps = []

    named = {}      # a pin that reads an integer field, by the variable it sets

    def emit_level(k):
        for v in [w for w in order if w in pins and level(pins[w]) == k]:
            steps.append(("let", v, pins[v]))
            if pins[v].has(IntRead):
                named[pins[v]] = v
        if guards[k]:       # tests read i, not rows[k] again
            steps.append(("if", sp.And(*guards[k]).xreplace(named)))

    emit_level(0)
    for k, v in enumerate(loop_vars, start=1):
        lo, hi = bounds[v]
        steps.append(("for", v, lo, hi))
        emit_level(k)
    if any(s[0] == "if" and s[1] is sp.false for s in steps):
        return None
    return tuple(steps), pins


# -- splitting a loop at the wrap points of % and // --------------------------

WRAP_MIN = 8        # shortest period (per unit of the loop variable) worth a split
WRAP_SPLITS = 2     # at most this many splits of one loop (each doubles its code)


def split_wraps(steps, value, splits: int = WRAP_SPLITS) -> list:
    """``[(steps, subs), ...]``: nests that together visit what ``steps`` visits,
    with ``e % m`` and ``e // m`` in the innermost loop made affine.

    Where the innermost loop variable ``v`` enters ``e % m`` or ``e // m`` as
    ``e = a·v + b`` (``a`` a non-zero integer; ``m`` and ``b`` fixed in the loop),
    ``floor(e / m)`` is a constant ``t`` on each segment of the loop where ``e``
    lies in ``[t·m, (t + 1)·m)``. The loop becomes a loop over ``t`` (in the
    order in which ``v`` meets the segments) around a loop over that segment
    (``wrap_segment``), in which ``e // m`` is ``t`` and ``e % m`` is
    ``e - t·m``: affine in ``v``, so the lowering checks the reads once per
    segment and runs the segment unchecked and vectorised. This is
    Python's floor semantics for any sign of ``e`` and any number of periods
    in the loop's range (circulant's ``(i - j) % n``: t is -1 or 0; Kronecker's
    ``j // nb``, ``j % nb``: one segment per block).

    Only for ``m >= WRAP_MIN·|a|`` (shorter segments cost more than they save):
    a constant ``m`` is decided here; otherwise the split nest runs under
    ``if m >= WRAP_MIN·|a|`` and the original nest, unchanged, under the
    opposite test, which keeps every other case (a zero or negative ``m``, a
    short period) on the checked path as before.

    ``subs`` is the list of replacements (atom -> affine form, applied in turn)
    that hold inside the nest: the lowering applies them to whatever it
    prints there (the entry, its tangent and adjoint), and they are applied to
    the nest's own steps already. Up to ``splits`` groups ``(e, m)`` are split,
    one inside the other.
    """
    fors = [k for k, st in enumerate(steps) if st[0] == "for"]
    found = _wrap_group(steps, fors[-1], value) if fors and splits > 0 else None
    if found is None:
        return [(steps, [])]
    atoms, a, b, m = found
    k = fors[-1]
    _, v, lo, hi = steps[k]
    w = sp.Symbol(f"_wrap{sum(1 for st in steps if st[0] == 'for' and st[1].name.startswith('_wrap'))}",
                  integer=True)
    # the segments in the loop's own order (t = -w where e falls as v rises): the
    # rows are then read front to back, which the hardware prefetcher follows
    # (back to front segments cost circulant's pullback half as much again)
    t = w if a > 0 else -w
    first, last = (a * lo + b, a * (hi - 1) + b) if a > 0 else (a * (hi - 1) + b, a * lo + b)
    t_first, t_last = IntDiv(first, m), IntDiv(last, m)
    w_lo, w_hi = (t_first, t_last + 1) if a > 0 else (-t_last, -t_first + 1)
    start, stop = wrap_segment(a, b, m, t)
    subs = {atom: (t if isinstance(atom, IntDiv) else atom.args[0] - t * m) for atom in atoms}
    inner = tuple(tuple(x.xreplace(subs) if p and isinstance(x, sp.Basic) else x for p, x in enumerate(st))
                  for st in steps[k + 1:])
    split = steps[:k] + (("for", w, w_lo, w_hi),
                         ("for", v, sp.Max(lo, start), sp.Min(hi, stop))) + inner
    guard = sp.Ge(m, WRAP_MIN * abs(a))
    rest = []
    if guard is not sp.true:
        # the test where m is known: after the last step that binds one of its symbols
        bound = [p for p, st in enumerate(steps[:k]) if st[0] in ("for", "let") and m.has(st[1])]
        at = bound[-1] + 1 if bound else 0
        split = split[:at] + (("if", guard),) + split[at:]
        rest = [(steps[:at] + (("if", sp.Not(guard)),) + steps[at:], [])]
    return [(s, [subs] + more) for s, more in split_wraps(split, value.xreplace(subs), splits - 1)] + rest


def wrap_segment(a, b, m, t):
    """``(start, stop)``: the ``v`` with ``t·m <= a·v + b < (t + 1)·m`` (``m > 0``)
    form ``range(start, stop)``."""
    if a > 0:       # v >= ceil((t·m - b) / a), v < ceil(((t + 1)·m - b) / a)
        return IntDiv(t * m - b + a - 1, a), IntDiv(t * m + m - b + a - 1, a)
    c = -a          # b - c·v in [t·m, (t + 1)·m): v in ((b - (t + 1)·m) / c, (b - t·m) / c]
    return IntDiv(b - t * m - m, c) + 1, IntDiv(b - t * m, c) + 1


def _wrap_group(steps, k, value):
    """``(atoms, a, b, m)``: the ``%`` and ``//`` atoms after the loop at ``k``
    (in the entry outside sums, and in the steps inside the loop) that share
    one ``e = a·v + b`` and one ``m``, ``v`` the loop's variable; the first such
    group in a stable order, or None."""
    v = steps[k][1]
    lets = [(st[1], st[2]) for st in steps[k + 1:] if st[0] == "let"]
    inner = {v} | {w for w, _ in lets}
    found = set(_outside_sums_wraps(value))
    for st in steps[k + 1:]:
        for x in st[1:]:
            if isinstance(x, sp.Basic):
                found |= set(_outside_sums_wraps(x))
    groups = {}
    for atom in sorted(found, key=sp.default_sort_key):
        e, m = atom.args
        for w, ew in reversed(lets):
            e = e.xreplace({w: ew})
        e = sp.expand(e)
        if not (is_int(e) and is_int(m)) or m.free_symbols & inner or any(
                x.has(sp.Indexed, IntRead, sp.Sum) for x in (e, m)):
            continue
        lin = _linear_in(e, v)      # the lets are substituted: b is free of the loop's variables
        if lin is None:
            continue
        a, b = lin
        if sp.Ge(m, WRAP_MIN * abs(a)) is sp.false:     # a short period, or m <= 0
            continue
        groups.setdefault((a, b, m), []).append(atom)
    if not groups:
        return None
    (a, b, m), atoms = next(iter(groups.items()))
    return tuple(atoms), a, b, m


def _outside_sums_wraps(e):
    """The ``%`` and ``//`` atoms of ``e`` outside sums (their variables are the nest's)."""
    found, stack = [], [e]
    while stack:
        node = stack.pop()
        if isinstance(node, (sp.Mod, IntDiv)):
            found.append(node)
        if isinstance(node, sp.Basic) and not isinstance(node, sp.Sum):
            stack.extend(node.args)
    return found
