"""Structure facts of a type, read off its derivation at build time: the band
of the entries that may be non-zero, whether the matrix is symmetric for every
value of the fields, triangular, or constant along its diagonals.

The facts are *sound over-approximations*: a recorded band contains every
entry that any region of the derivation writes (the regions' ``if`` guards
are ignored, so a band can only be too wide, never too narrow); ``symmetric``
is True only when ``getindex(i, j) == getindex(j, i)`` is proved case by case.
Nothing here fixes a size: a bandwidth may be an expression of the sizes
(the Banded spec's ``kl`` and ``ku``), recorded as Python code that
:mod:`rulegen.rules` evaluates from an instance's sizes.

Each generated module records the facts as ``_STRUCTURE``
(:func:`structure_literal`)::

    _STRUCTURE = {"band": (kl, ku), "symmetric": bool,
                  "triangular": "lower" | "upper" | None, "shift_invariant": bool}

``kl`` bounds ``i - j`` and ``ku`` bounds ``j - i`` over the entries that may be
non-zero; each is an int, a string of Python code in the size names, or None
(no bound found below the full matrix); ``band`` is None when neither side is
bounded. ``triangular`` is ``"upper"`` when ``kl <= 0`` for every size (a
diagonal type counts as upper) and ``"lower"`` when ``ku <= 0``.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import sympy as sp

from .expr import I, J, IntRead
from .loops import build_nest

MAX_CANDIDATES = 64        # bounds kept per region while maximising over its loops
MAX_PAIRS = 1024           # case pairs compared when proving symmetry


@dataclass(frozen=True)
class Structure:
    kl: sp.Expr | None             # bound on i - j over the possibly non-zero entries (None: none found)
    ku: sp.Expr | None             # bound on j - i
    symmetric: bool
    triangular: str | None
    shift_invariant: bool
    square: bool


# ---------------------------------------------------------------------------
# Band: the largest i - j (and j - i) over each region's loop nest.

def _split(bound, kind):
    """The terms of a Max (kind "lo") or Min (kind "hi") bound: the loop
    variable is at least (at most) each of them."""
    cls = sp.Max if kind == "lo" else sp.Min
    return list(bound.args) if isinstance(bound, cls) else [bound]


def _sup(expr, steps):
    """Upper bounds (a list, each valid) of ``expr`` (linear in i, j) over the
    nest ``steps``, free of i and j; None if the nest defeats the analysis."""
    cands = [sp.expand(expr)]
    for step in reversed(steps):
        if step[0] == "if":
            continue                        # a guard only removes entries: the bound stays valid
        if step[0] == "let":
            _, var, value = step
            cands = [sp.expand(c.xreplace({var: value})) for c in cands]
            continue
        _, var, lo, hi = step
        out = []
        for c in cands:
            a = c.coeff(var, 1)
            rest = sp.expand(c - a * var)
            if rest.has(var) or not a.is_Integer:
                return None                 # not linear in the loop variable
            if a == 0:
                out.append(c)
            elif a > 0:                     # var <= each term of hi, minus one
                out.extend(sp.expand(a * (t - 1) + rest) for t in _split(hi, "hi"))
            else:                           # var >= each term of lo
                out.extend(sp.expand(a * t + rest) for t in _split(lo, "lo"))
        cands = list(dict.fromkeys(out))[:MAX_CANDIDATES]
    if any(c.has(I, J) for c in cands):
        return None
    return cands


def _tightest(cands):
    """min of valid bounds, as one expression (numbers folded)."""
    numbers = [c for c in cands if c.is_Number]
    symbolic = [c for c in cands if not c.is_Number]
    if numbers:
        symbolic.append(min(numbers))
    return sp.Min(*symbolic) if len(symbolic) > 1 else symbolic[0]


def _positive(e, spec):
    """``e`` simplified for sizes >= 1 (a bound only matters for a non-empty matrix)."""
    pos = {s: sp.Dummy(s.name, integer=True, positive=True) for s in spec.sizes}
    back = {v: k for k, v in pos.items()}
    return sp.simplify(e.xreplace(pos)).xreplace(back)


def _band_side(d, expr):
    bounds = []
    for r in d.regions:
        if r.value == 0:
            continue
        cands = _sup(expr, r.steps)
        if not cands:
            return None
        bounds.append(_tightest(cands))
    if not bounds:
        return sp.S.Zero                    # a zero matrix: band (0, 0)
    return _positive(sp.Max(*bounds) if len(bounds) > 1 else bounds[0], d.spec)


def _is_full(bound, extent) -> bool:
    """Whether ``bound`` is the whole matrix (``extent - 1``) for every size."""
    try:
        return sp.simplify(bound - (extent - 1)) == 0 or sp.simplify(bound - (extent - 1)).is_nonnegative is True
    except Exception:
        return False


# ---------------------------------------------------------------------------
# Symmetry: the entry against itself with i and j swapped, case by case.

def _canonical(e):
    return e.replace(lambda x: isinstance(x, sp.core.relational.Relational) and x.lhs.is_number is not True,
                     lambda x: x.func(sp.expand(x.lhs - x.rhs), 0))


def _swap(e):
    t = sp.Dummy("t", integer=True)
    return e.xreplace({I: t}).xreplace({J: I}).xreplace({t: J})


def _same(a, b) -> bool:
    """Whether ``a == b`` is proved (False when unsure: the facts stay sound)."""
    if a == b:
        return True
    try:
        diff = sp.expand(a - b)
        if diff == 0:
            return True
        return sp.count_ops(diff) <= 40 and sp.simplify(diff) == 0
    except Exception:
        return False


def _empty(steps) -> bool:
    """Whether a loop of the nest provably runs no iteration (``i + 1 <= j < i``)."""
    for step in steps:
        if step[0] == "for":
            _, _, lo, hi = step
            for t, u in itertools.product(_split(lo, "lo"), _split(hi, "hi")):
                try:
                    if sp.simplify(u - t).is_nonpositive:
                        return True
                except Exception:
                    pass
    return False


def _symmetric(spec) -> bool:
    rows, cols = spec.size
    if not _same(rows, cols):
        return False
    entry = spec.entry
    if _canonical(_swap(entry)) == _canonical(entry):
        return True
    # the derivation's own case split (read, not changed: derive.py's helpers)
    try:
        from .derive import _cases, _conjunctions, _lift_outside_sums
        cases = _cases(_lift_outside_sums(entry))
    except Exception:
        return False
    swapped = [(_swap(c), _swap(v)) for c, v in cases]
    pairs = 0
    for (c1, v1), (c2, v2) in itertools.product(cases, swapped):
        if v1 == 0 and v2 == 0:
            continue
        for a1, a2 in itertools.product(_conjunctions(c1), _conjunctions(c2)):
            pairs += 1
            if pairs > MAX_PAIRS:
                return False
            built = build_nest(list(a1) + list(a2), rows, cols)
            if built is None:
                continue                    # the two cases never meet
            steps, pins = built
            pins = dict(pins)
            if _empty(steps):
                continue
            for step in steps:              # a loop of one value (i <= j <= i) pins its variable
                if step[0] == "for":
                    _, var, lo, hi = step
                    one = [t for t in _split(lo, "lo") if any(_same(u - t, 1) for u in _split(hi, "hi"))]
                    if one:
                        pins = {w: e.xreplace({var: one[0]}) for w, e in pins.items()}
                        pins[var] = one[0]
            if not _same(v1.xreplace(pins) if pins else v1, v2.xreplace(pins) if pins else v2):
                return False
    return True


# ---------------------------------------------------------------------------

def analyse(d) -> Structure:
    """The structure facts of derivation ``d`` (see the module docstring)."""
    spec = d.spec
    rows, cols = spec.size
    square = _same(rows, cols)
    try:
        kl = _band_side(d, I - J)
        ku = _band_side(d, J - I)
    except Exception:                       # sympy gave up somewhere: no band
        kl = ku = None
    # a bound that depends on data (an integer field, a swapped sum's variable) is no fixed band
    allowed = set(spec.sizes)
    kl = None if kl is not None and (kl.has(IntRead) or kl.free_symbols - allowed) else kl
    ku = None if ku is not None and (ku.has(IntRead) or ku.free_symbols - allowed) else ku
    if kl is not None and _is_full(kl, rows):
        kl = None
    if ku is not None and _is_full(ku, cols):
        ku = None
    try:
        symmetric = _symmetric(spec)
    except Exception:
        symmetric = False
    triangular = None
    if square:
        if kl is not None and (kl <= 0) is sp.true:
            triangular = "upper"
        elif ku is not None and (ku <= 0) is sp.true:
            triangular = "lower"
    return Structure(kl, ku, symmetric, triangular, bool(d.toeplitz), square)


def _side_literal(e):
    if e is None:
        return None
    if e.is_Integer:
        return int(e)
    from .printer import code
    return code(e)


def structure_dict(d) -> dict:
    """The facts as plain Python values (what ``_STRUCTURE`` holds); the
    facts of a dense, unstructured type if the analysis fails."""
    try:
        s = analyse(d)
    except Exception:
        return {"band": None, "symmetric": False, "triangular": None, "shift_invariant": bool(d.toeplitz)}
    band = None if s.kl is None and s.ku is None else (_side_literal(s.kl), _side_literal(s.ku))
    return {"band": band, "symmetric": s.symmetric, "triangular": s.triangular,
            "shift_invariant": s.shift_invariant}


@functools.lru_cache(maxsize=64)
def _cached_literal(d) -> str:
    return repr(structure_dict(d))


def structure_literal(d) -> str:
    """``_STRUCTURE``'s value as Python source (one line; cached: every target
    of a build renders the same derivation)."""
    try:
        return _cached_literal(d)
    except TypeError:                       # a derivation that does not hash
        return repr(structure_dict(d))


__all__ = ["Structure", "analyse", "structure_dict", "structure_literal"]
