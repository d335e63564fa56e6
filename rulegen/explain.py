"""``rulegen explain``: what was derived from a spec, for a person.

The fields and sizes; how J⁺ is applied and why; each region of getindex
with its loop nest, its entry and the derivative of the entry with respect
to each field element it reads (for a sum, of its summand, conditions kept
as conditions); what each map costs; and, at a small random instance, the
parametrisation class with its numbers (field elements, those used, entries,
rank J), the unused storage and the identities that hold.
``--latex`` prints the formulas as LaTeX; ``--plot FILE.png`` draws J's
sparsity and the entry → field map of the small instance.

Nothing here may end in a traceback on a spec that builds: what sympy cannot
differentiate, or a small instance that cannot be evaluated, is said in the
text instead.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np
import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.pretty.pretty import PrettyPrinter
from sympy.printing.pretty.stringpict import prettyForm, stringPict
from sympy.printing.pycode import PythonCodePrinter

from .derive import derive
from .targets.common import size_plan
from .targets.numba.emit import render
from .derive import accumulates, monotone_fields
from .expr import IntRead, Where, outside_sums, uses_complex_functions, wirtinger
from .pattern import bounds as pattern_bounds
from .spec import load

IDENTITIES = {
    "exact": "J⁺ = J⁻¹: every map inverts every other.",
    "under": ("J⁺J = I on the used elements: restructure_pushforward ∘ destructure_pushforward = id and "
              "destructure_pullback ∘ restructure_pullback = id there (unused storage maps to 0)."),
    "over": ("J J⁺ = I: destructure_pushforward ∘ restructure_pushforward = id; the other order only "
             "projects, and destructure_pullback ∘ restructure_pullback is the identity only on "
             "cotangents that destructure_pullback produces."),
    "deficient": ("only the Penrose identities: J J⁺ J = J, J⁺ J J⁺ = J⁺, J J⁺ and J⁺ J symmetric "
                  "(some change of the fields leaves Y as it is: a scale or rotation moving between "
                  "fields, two elements stored at one position, ...)."),
}

KINDS = {
    "gather": ("gather: each entry is zero, a constant, or a constant times one field element, so "
               "JᵀJ = diag(w), w[k] = Σ c² over the entries reading element k, and J⁺ = diag(1/w) Jᵀ."),
    "bordered": ("bordered: each entry reads at most one element of the large fields (coefficients may "
                 "depend on x) plus the coupled fields {coupled}; JᵀJ = [[diag(w), B], [Bᵀ, C]] is inverted "
                 "exactly through the small Schur complement S = C - Bᵀ diag(1/w) B."),
    "bordered-alone": ("bordered, with no coupled field: each entry reads at most one field element, with a "
                       "coefficient that depends on x, so JᵀJ = diag(w(x)) and J⁺ = diag(1/w) Jᵀ, the "
                       "weights computed at each x."),
    "scatter": ("scatter: each stored element adds a constant times itself to one entry, and an entry may "
                "sum several of them (the same position stored twice), so the rows of J are orthogonal: "
                "J Jᵀ = diag(u), u[i, j] = Σ c² over the elements stored at (i, j), and J⁺ = Jᵀ diag(1/u) "
                "(1/0 := 0): a change of an entry is split among its elements in proportion to c; "
                "u depends on the integer fields only."),
    "general": ("general: no entry-wise or element-wise Gram structure was found (entries read several "
                "elements, or elements reach several entries); J⁺ is applied by LSQR from zero "
                "(the minimum-norm least-squares solution), calling only the pushforward and pullback kernels."),
}

#: Largest J (entries × field elements) tabulated at the small instance.
MAX_J = 2 * 10**6
#: The distributions tried for the small instance, in order: the first at
#: which J is finite and not zero is shown (uniform values never meet an
#: index, as in ``rows[k] == i``; index-like integers do).
INSTANCE_DRAWS = ("uniform", "indices", "integers", "normal")


# -- printing ----------------------------------------------------------------

class _TextPrinter(PythonCodePrinter):
    """One line of Python-like text: ``min(i, n)``, ``j != 0``, ``i // 2``."""

    def __init__(self):
        super().__init__({"fully_qualified_modules": False, "strict": False})

    def _print_IntDiv(self, e):
        return f"({self._print(e.args[0])}) // ({self._print(e.args[1])})"

    def _print_Where(self, e):
        c, a, b = e.args
        return f"({self._print(a)} if {self._print(c)} else {self._print(b)})"

    def _print_AppliedUndef(self, e):     # sympy dispatches an applied function from AppliedUndef on
        if isinstance(e, IntRead):
            return f"{e.field}[{', '.join(self._print(a) for a in e.args)}]"
        return self._print_Function(e)

    def _print_Sum(self, e):
        out = self._print(e.function)
        for var, lo, hi in e.limits:
            out = f"sum({out} for {self._print(var)} in range({self._print(lo)}, {self._print(hi + 1)}))"
        return out


def _text(e) -> str:
    try:
        out = _TextPrinter().doprint(e)
    except Exception:       # noqa: BLE001 - a construct the printer does not know: sympy's own text
        out = sp.sstr(e)
    while out.startswith("(") and out.endswith(")") and _balanced(out[1:-1]):
        out = out[1:-1]
    return out


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def _label(e) -> str:
    """A read as text: its str, or with integer-field reads as ``offsets[b]``
    (sympy's str would write a call, ``offsets(b)``)."""
    return _text(e) if isinstance(e, sp.Basic) and e.has(IntRead) else str(e)


def _display(e):
    """``e``, free of sums, with the internal Where as Piecewise (sympy can
    differentiate that). Never inside a Sum: building a Sum folds a Piecewise
    out of it, across its bound variable."""
    if isinstance(e, sp.Basic) and e.has(Where):
        return e.replace(lambda x: isinstance(x, Where), _where_as_piecewise)
    return e


def _where_as_piecewise(e):
    return sp.Piecewise((e.args[1], e.args[0]), (e.args[2], True))


class _Pretty(PrettyPrinter):
    """sympy's pretty printer; the internal Where (a condition inside a sum) as a Piecewise."""

    def __init__(self):
        super().__init__({"use_unicode": True, "wrap_line": False})

    def _print_Where(self, e):
        return self._print(_where_as_piecewise(e))

    def _print_AppliedUndef(self, e):
        if isinstance(e, IntRead):
            return prettyForm(f"{e.field}[{', '.join(_text(a) for a in e.args)}]")
        return self._print_Function(e)

    def _print_Indexed(self, e):
        """As sympy prints it (its str), or, with an integer-field read in a
        subscript, ``blocks[b, i - offsets[b]]``."""
        return prettyForm(_label(e)) if e.has(IntRead) else self.emptyPrinter(e)


class _Latex(LatexPrinter):
    def _print_Where(self, e):
        return self._print(_where_as_piecewise(e))

    def _print_AppliedUndef(self, e):
        if isinstance(e, IntRead):
            return "{" + self._print(sp.Symbol(e.field)) + "}_{" + ",".join(self._print(a) for a in e.args) + "}"
        return self._print_Function(e)


def _eq(label: str, e, latex: bool, sep: str = " = ") -> list:
    """``label = e`` as lines; a multi-line pretty print keeps its shape, the
    label on its baseline."""
    if latex:
        try:
            return [f"{label}{sep}{_Latex().doprint(e)}"]
        except Exception:   # noqa: BLE001
            return [f"{label}{sep}{sp.sstr(e)}"]
    try:
        form = _Pretty()._print(e)
        joined = prettyForm(*stringPict.next(prettyForm(label + sep), form))
        lines = joined.render(wrap_line=False).split("\n")
    except Exception:       # noqa: BLE001
        lines = [f"{label}{sep}{sp.sstr(e)}"]
    return [line.rstrip() for line in lines]


def _size_text(d) -> str:
    text = sp.sstr(d)
    return text if d.is_Atom else f"({text})"


def _nest_text(steps) -> list:
    lines, indent = [], ""
    for st in steps:
        if st[0] == "for":
            lines.append(f"{indent}for {st[1]} in range({_text(st[2])}, {_text(st[3])})")
            indent += "  "
        elif st[0] == "let":
            lines.append(f"{indent}{st[1]} = {_text(st[2])}")
        else:
            lines.append(f"{indent}if {_text(st[1])}")
            indent += "  "
    return lines or ["(a single entry)"]


# -- derivatives ---------------------------------------------------------------

def _value_reads(e) -> set:
    """The reads of ``e`` outside every condition (a read only in a condition
    moves the entry by jumps: its derivative is zero where it exists)."""
    found, stack = set(), [(e, False)]
    while stack:
        node, cond = stack.pop()
        if isinstance(node, sp.Indexed):
            if not cond:
                found.add(node)
            continue
        if not isinstance(node, sp.Basic):
            continue
        cond = cond or isinstance(node, sp.logic.boolalg.Boolean)
        stack.extend((a, cond) for a in node.args)
    return found


def _settle_deltas(e, condition):
    """KroneckerDelta(a, b) is 0 where the region's condition rules out a == b
    (``i > j``): sympy cannot know that by itself."""
    if condition is sp.true or not isinstance(e, sp.Basic) or not e.has(sp.KroneckerDelta):
        return e

    def settle(kd):
        a, b = kd.args
        for x, y in ((a, b), (b, a)):
            if isinstance(x, sp.Symbol):
                try:
                    if condition.xreplace({x: y}) is sp.false:
                        return sp.S.Zero
                except Exception:   # noqa: BLE001 - undecided: keep the delta
                    pass
        return kd

    return e.replace(lambda z: isinstance(z, sp.KroneckerDelta), settle)


def _diff(e, wrt, condition):
    """∂e/∂wrt with conditions kept as conditions, or None where sympy leaves
    it unevaluated or fails."""
    try:
        out = sp.diff(_display(e), wrt)
    except Exception:       # noqa: BLE001
        return None
    if out.has(sp.Derivative, sp.Subs):
        return None
    try:                    # j·x^j/x as j·x^(j - 1): defined at x = 0 too
        out = out.replace(lambda z: isinstance(z, sp.Mul) and any(
            isinstance(a, sp.Pow) and not a.exp.is_Number for a in z.args), sp.powsimp)
    except Exception:       # noqa: BLE001 - keep sympy's form
        pass
    return _settle_deltas(out, condition)


class _Sums:
    """Names Σ₁, Σ₂, … for the sums of one region (they cannot collide with
    a size or a field: those are ASCII identifiers)."""

    SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")

    def __init__(self):
        self.count = 0

    def fresh(self) -> sp.Symbol:
        self.count += 1
        return sp.Symbol("Σ" + str(self.count).translate(self.SUB), real=True)


def _derivatives(value, latex: bool, scalars=(), condition=sp.true, names=None) -> list:
    """∂entry/∂read for the reads outside sums; each sum named, with ∂entry/∂sum
    and the derivative of its summand with respect to each read in it."""
    names = names or _Sums()
    out = []
    tops = outside_sums(value, sp.Sum)
    alone = tops == [value]         # the entry is one sum, shown already: no name needed
    sums = {s: sp.Symbol("Σ", real=True) if alone else names.fresh() for s in tops}
    f = value.xreplace(sums) if sums else value
    reads = outside_sums(_display(f), sp.Indexed)
    reads += sorted((a for a in f.free_symbols if a.name in scalars and a.is_real and not a.is_integer),
                    key=sp.default_sort_key)
    in_values = _value_reads(f) | {a for a in reads if isinstance(a, sp.Symbol)}
    for s, sym in sums.items():
        if not alone:
            out += _eq(str(sym), s, latex)
    for acc in reads:
        out += _derivative_lines(f, acc, latex, condition, acc not in in_values)
    for s, sym in sums.items():
        over = ", ".join(str(lim[0]) for lim in s.limits)
        inner = _derivatives(s.function, latex, scalars, condition, names)
        if alone:
            out.append(f"in the summand (over {over}):" if inner else "(the summand reads no field)")
            out += ["  " + line for line in inner]
            continue
        out += _derivative_lines(f, sym, latex, condition, False)
        out.append(f"  in the summand of {sym} (over {over}):" if inner
                   else f"  (the summand of {sym} reads no field)")
        out += ["    " + line for line in inner]
    return out


def _derivative_lines(f, wrt, latex, condition, only_in_conditions) -> list:
    if uses_complex_functions(f) and isinstance(wrt, sp.Indexed):
        return _wirtinger_lines(f, wrt, latex, condition)
    d = _diff(f, wrt, condition)
    if d is None:
        return [f"∂/∂{_label(wrt)}: not shown (sympy cannot differentiate this expression symbolically)"]
    lines = _eq(f"∂/∂{_label(wrt)}", d, latex)
    if only_in_conditions and d == 0:
        lines[-1] += "   (read only in a condition: the entry jumps, its derivative is 0 where it exists)"
    return lines


def _wirtinger_lines(f, wrt, latex, condition) -> list:
    """An entry with conj, real, imag or a modulus: the Wirtinger pair
    (d entry = A d{wrt} + B conj(d{wrt}) for a complex field; A + B for a real one)."""
    try:
        a, b = wirtinger(_display(f), wrt)
        a, b = _settle_deltas(a, condition), _settle_deltas(b, condition)
    except Exception:       # noqa: BLE001
        return [f"∂/∂{_label(wrt)}: not shown (sympy cannot differentiate this expression symbolically)"]
    lines = _eq(f"∂/∂{_label(wrt)}", a, latex) + _eq(f"∂/∂conj({_label(wrt)})", b, latex)
    lines[-1] += "   (Wirtinger: d entry = A·dx + B·conj(dx); for a real field A + B)"
    return lines


# -- the rest of the report ------------------------------------------------------

def _integer_lines(spec, d) -> list:
    """The integer fields, and what the constructor checks of their values
    (rulegen.pattern.bounds; derive.monotone_fields)."""
    ints = [f for f in spec.fields if f.integer]
    if not ints:
        return []
    out = ["  integer fields (structure, not parameters: never differentiated, no column of J): "
           + ", ".join(f"{f.name} {list(f.shape)}" if f.shape else f.name for f in ints),
           "  checked when an instance is built (from their uses in getindex):"]
    found = pattern_bounds(spec)
    monotone = set(monotone_fields(d.regions))
    for f in ints:
        checks = [f"every value in [{_text(b.lo)}, {_text(b.hi)}) ({b.why})" for b in found if b.field == f.name]
        if f.name in monotone:
            checks.append(f"non-decreasing (it bounds index ranges from {f.name}[e] to {f.name}[e + 1], "
                          "which are then disjoint)")
        if not checks:
            checks = ["nothing implied by its uses (the kernels' index checks guard each read)"]
        out += [f"    {f.name}: {c}" for c in checks]
    return out


def _coupled_elements(spec, coupled) -> int:
    total = 0
    for name in coupled:
        try:
            total += int(sp.prod(spec.field(name).shape))
        except (TypeError, ValueError, StopIteration):
            total += 1
    return total


def _costs(d) -> list:
    n_regions = len(d.regions)
    per = f"one pass over the {n_regions} region{'s' if n_regions != 1 else ''} above"
    c = _coupled_elements(d.spec, d.coupled)
    ints = any(f.integer for f in d.spec.fields)
    pinv = {
        "gather": ("two passes (one for the weights w, which depend on the integer fields: computed at each "
                   "call) plus O(#θ)" if ints else "one pass plus O(#θ) (the weights are cached per size)"),
        "scatter": ("two passes (one for the weights u, which depend on the integer fields: computed at each "
                    "call) plus O(m·n)"),
        "bordered": (f"{1 + c} passes (one per coupled field element, plus one) plus O(#θ)" if c
                     else "one pass plus O(#θ)"),
        "general": "two passes (a pushforward and a pullback) per LSQR iteration",
    }[d.kind]
    if d.product:
        pinv = "one pass (a pullback, or a pushforward; project both) plus two passes over the fields"
    sep = sum(1 for r in d.op_regions if r.separable is not None)
    lines = [
        f"destructure, destructure_pushforward, destructure_pullback: {per}",
        f"restructure_pushforward, restructure_pullback, project: {pinv}",
        "matvec, rmatvec, bilinear_pullback: one pass per column of the operand"
        + (f"; {sep} term{'s' if sep != 1 else ''} Σ alpha(i, ·)·beta(j, ·) contracted in "
           "O((rows + columns) × operand columns)" if sep else ""),
        ("diagonal, diagonal_pullback: one pass over the stored elements, keeping those with i == j"
         if any(accumulates(r.steps) for r in d.regions) else
         "diagonal, diagonal_pullback: the entries with i == j only"),
        "(#θ: the number of field elements)",
    ]
    if d.toeplitz:
        lines.append("the entry depends on i - j only: matvec-like maps use the FFT from 384 rows on")
    if d.hankel:
        lines.append("the entry depends on i + j only: matvec-like maps use the FFT from 384 rows on")
    return lines


class _NoInstance(Exception):
    """Why the small instance could not be shown."""


def _instance(spec, module_source, seed=0, module=None, regions=None):
    """A small random instance: (module, x, sizes, J by pushforwards of unit
    vectors, element labels, the distribution drawn from); raises _NoInstance.
    ``module_source`` is called for the module's text unless ``module`` (the
    module already imported) is given. Integer fields are drawn within what
    the constructor checks (verify.draw_pattern); J is over the real fields."""
    from .verify import (_bounds, _instance_sizes, _NoPattern, _Refused, _struct, describe, draw, draw_pattern,
                         int_plan, ints_text, load_module, real_names)

    rng = np.random.default_rng(seed)
    try:
        sizes, shapes = _instance_sizes(spec, rng)
    except ValueError as exc:
        raise _NoInstance(str(exc)) from None
    names = real_names(spec)
    p = sum(int(np.prod(shapes[name])) for name in names)
    values = {s: sizes[s.name] for s in spec.sizes}
    N = int(np.prod([int(dim.xreplace(values)) for dim in spec.size]))
    if p * N > MAX_J:
        raise _NoInstance(f"J would be {N} × {p} at the smallest sizes found: too large to tabulate")
    try:
        if module is None:
            tmp = tempfile.mkdtemp(prefix="rulegen-explain-")
            path = os.path.join(tmp, spec.module + ".py")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(module_source())
            module = load_module(path)
        mod = module
        cls = getattr(mod, spec.name)
    except Exception as exc:    # noqa: BLE001
        raise _NoInstance(f"the generated module does not import: {type(exc).__name__}: {exc}") from None
    labels = []
    for name in names:
        shape = shapes[name]
        labels += [name] if shape == () else [f"{name}[{', '.join(map(str, ix))}]" for ix in np.ndindex(*shape)]
    bounds = _bounds(spec, sizes, shapes)
    plan = int_plan(spec, regions)
    ints, best = {}, -1
    for _ in range(8 if plan else 1):   # the pattern that stores the most entries, of a few
        try:
            candidate = draw_pattern(plan, mod, cls, names, shapes, sizes, bounds, rng)
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                stored = int(np.count_nonzero(mod.destructure(
                    _struct(cls, names, shapes, np.ones(p), sizes, candidate))))
        except (_NoPattern, _Refused) as exc:
            if best < 0:
                raise _NoInstance(f"no integer fields found for it ({exc})") from None
            break
        except Exception:   # noqa: BLE001 - draw_pattern ran destructure at this pattern already
            stored = 0
        if stored > best:
            ints, best = candidate, stored
    pattern = f"; integer fields {ints_text(ints)}" if ints else ""
    why, found = "", None
    for kind in INSTANCE_DRAWS:
        theta = draw(kind, rng, names, shapes, bounds)
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                x = _struct(cls, names, shapes, theta, sizes, ints)
                dense = np.asarray(mod.destructure(x), dtype=float)
                cols = []
                for k in range(p):
                    e = np.zeros(p)
                    e[k] = 1.0
                    cols.append(np.ravel(mod.destructure_pushforward(x, _struct(cls, names, shapes, e, sizes,
                                                                                ints))))
        except Exception as exc:    # noqa: BLE001 - a kernel that raises at this draw: try the next
            why = why or f"{type(exc).__name__}: {exc} (fields {describe(kind, bounds)}{pattern})"
            continue
        J = np.stack(cols, axis=1) if cols else np.zeros((dense.size, 0))
        if not (np.all(np.isfinite(J)) and np.all(np.isfinite(dense))):
            why = why or f"non-finite values (fields {describe(kind, bounds)}{pattern})"
            continue
        if found is None:
            found = (x, J, kind)
        if np.any(J != 0) or (p == 0 and np.any(dense != 0)):
            found = (x, J, kind)
            break
    if found is None:
        raise _NoInstance(f"every draw failed; the first: {why}")
    x, J, kind = found
    return mod, x, sizes, J, labels, describe(kind, bounds) + pattern


def _scalars_bare(e, spec):
    """Scalar fields are read as ``name[0]`` internally; show them bare."""
    scalars = {f.name for f in spec.fields if f.ndim == 0}
    return e.replace(lambda a: isinstance(a, sp.Indexed) and a.base.label.name in scalars,
                     lambda a: sp.Symbol(a.base.label.name, real=True)) if scalars else e


def _pinned(condition, steps):
    """The region's condition with the indices its nest pins substituted."""
    for st in steps:
        if st[0] == "let":
            try:
                condition = condition.xreplace({st[1]: st[2]})
            except Exception:   # noqa: BLE001
                return sp.true
    return condition


def explain(path: str, latex: bool = False, plot: str | None = None, instance: bool = True,
            module=None) -> str:
    """The report as text (``instance=False``: without the small random
    instance, which compiles the module's kernels; ``module``: the module
    built from ``path``, already imported, for the instance)."""
    spec = load(path)
    d = derive(spec)
    scalars = {f.name for f in spec.fields if f.ndim == 0}
    out = [f"{spec.name} ({path})", f"  getindex(i, j) = {' '.join(spec.entry_text.split())}",
           f"  size: {_size_text(spec.size[0])} × {_size_text(spec.size[1])}"]
    plan = size_plan(spec)
    if plan:
        out.append("  sizes: " + ", ".join(
            f"{st.size} (from {st.field}.shape[{st.axis}])" if st.kind == "solve" else f"{st.size} (keyword)"
            for st in plan))
    out.append("  fields: " + (", ".join(f"{f.name} {list(f.shape)}" if f.shape else f"{f.name} (scalar)"
                                         for f in spec.fields if not f.integer) or "(none)"))
    out += _integer_lines(spec, d)
    out.append("")
    kind = "bordered-alone" if d.kind == "bordered" and not d.coupled else d.kind
    out.append("How J⁺ is applied: " + KINDS[kind].format(coupled=", ".join(d.coupled)))
    if d.factors:
        out.append(f"  Y = {d.factors[0]} {d.factors[1]}ᵀ: J⁺ has a closed form on every target (the tangent "
                   f"space of rank-r matrices: CholeskyQR2 and an r × r Sylvester equation); LSQR only when "
                   f"{d.factors[0]} or {d.factors[1]} is rank-deficient, r > min(m, n), or complex.")
    if d.product:
        out.append(f"  every entry is {d.product[0]}[α]·{d.product[1]}[β], each pair of elements once: Y is "
                   f"vec({d.product[0]}) vec({d.product[1]})ᵀ rearranged; J⁺ = (JᵀJ)⁺ Jᵀ in "
                   f"closed form (one pullback plus O(p)), no solver.")
    out.append("")
    n = len(d.regions)
    if not n:
        out.append("Regions: none; every entry is zero.")
    elif d.covers:
        out.append(f"Regions ({n}; together they cover the matrix):")
    else:
        out.append(f"{n} non-zero region{'s' if n != 1 else ''}; entries outside {'them' if n != 1 else 'it'} "
                   "are zero:")
    for k, r in enumerate(d.regions, 1):
        value, condition = _scalars_bare(r.value, spec), _scalars_bare(r.condition, spec)
        where = [f"{k}. everywhere"] if condition is sp.true else _eq(f"{k}. where", condition, latex, sep=" ")
        out += ["  " + line for line in where]
        out += ["       " + line for line in _nest_text(r.steps)]
        if r.over:
            over = ", ".join(str(v) for v in r.over)
            out.append(f"       (a sum over {over} whose range or condition reads an integer field, swapped into "
                       f"the nest: it loops over {over} too, visiting only what is stored)")
        if accumulates(r.steps):
            out += ["       " + line for line in _eq("Y[i, j]", value, latex, sep=" += ")]
            out.append("       (writes accumulate: an entry that the nest visits more than once is the sum "
                       "of its visits)")
        else:
            out += ["       " + line for line in _eq("Y[i, j]", value, latex)]
        out += ["       " + line for line in _derivatives(value, latex, scalars, _pinned(condition, r.steps))]
    out.append("")
    out.append("Cost:")
    out += ["  " + line for line in _costs(d)]
    if not instance and not plot:
        return "\n".join(out)
    out.append("")
    try:
        mod, x, sizes, J, labels, drawn = _instance(spec, lambda: render(d, path), module=module,
                                                    regions=d.regions)
    except _NoInstance as exc:
        out.append(f"No small random instance to show: {exc}.")
        if plot:
            out.append(f"(--plot needs that instance: {plot} not written)")
        return "\n".join(out)
    out += _instance_lines(mod, x, sizes, J, labels, drawn)
    if plot:
        _plot(plot, spec, x, J, labels)
        out.append("")
        out.append(f"wrote {plot}")
    return "\n".join(out)


def _instance_lines(mod, x, sizes, J, labels, drawn) -> list:
    N, p = J.shape
    used = np.any(J != 0, axis=0)
    rank = int(np.linalg.matrix_rank(J)) if J.size else 0
    size_text = ", ".join(f"{k}={v}" for k, v in sizes.items()) or "no sizes"
    out = [f"At a random instance ({size_text}, fields {drawn}):",
           f"  {p} field element{'s' if p != 1 else ''}, {int(used.sum())} of them used, "
           f"{N} entr{'ies' if N != 1 else 'y'}, rank J = {rank}"]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cls = mod.parametrisation(x)
    except Exception as exc:    # noqa: BLE001
        out.append(f"  parametrisation raised {type(exc).__name__}: {exc}")
        cls, caught = None, []
    if cls is not None:
        out.append(f"  parametrisation: {cls}")
    for w in caught[:2]:
        out.append(f"  ({type(w.message).__name__}: {str(w.message).splitlines()[0] if str(w.message) else ''})")
    unused = [lab for lab, u in zip(labels, used) if not u]
    if unused:
        shown = ", ".join(unused[:12]) + (f", … ({len(unused)} in all)" if len(unused) > 12 else "")
        out.append(f"  unused storage (zero structural tangent from restructure_pushforward): {shown}")
    if cls in IDENTITIES:
        out.append(f"  identities that hold: {IDENTITIES[cls]}")
    out.append("  (the class is decided at x: see parametrisation's docstring in the module)")
    return out



def _plot(path, spec, x, J, labels):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, n = x.shape
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1.3, 1]})
    a1.spy(J, markersize=max(2, 120 // max(J.shape + (1,))), aspect="auto")
    a1.set_title(f"sparsity of J = ∂vec(Y)/∂θ ({J.shape[0]} × {J.shape[1]})")
    a1.set_xlabel("field element")
    a1.set_ylabel("dense entry (row-major)")
    if J.shape[1] <= 40:
        a1.set_xticks(range(J.shape[1]))
        a1.set_xticklabels(labels, rotation=90, fontsize=7)
    fields = [f.name for f in spec.fields]
    owner = np.full((m, n), -1.0)
    text = [["" for _ in range(n)] for _ in range(m)]
    for row in range(m * n):
        nz = np.flatnonzero(J[row])
        i, j = divmod(row, n)
        if nz.size:
            owner[i, j] = fields.index(labels[nz[0]].split("[")[0])
            text[i][j] = labels[nz[0]] + ("…" if nz.size > 1 else "")
    cmap = plt.get_cmap("tab10")
    colors = np.ones((m, n, 3))
    for i in range(m):
        for j in range(n):
            if owner[i, j] >= 0:
                colors[i, j] = cmap(int(owner[i, j]) % 10)[:3]
    a2.imshow(colors * 0.55 + 0.45)
    for i in range(m):
        for j in range(n):
            a2.text(j, i, text[i][j] or "0", ha="center", va="center", fontsize=max(5, 11 - max(m, n) // 2))
    a2.set_title("entry (i, j) → the field element it reads")
    a2.set_xticks(range(n))
    a2.set_yticks(range(m))
    fig.suptitle(f"{spec.name} at {m} × {n}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
