"""Expressions -> kernel statements, in three modes: the value, its tangent
(forward mode: the JVP) and its adjoint (reverse mode: the VJP).

An entry may read fields, contain reductions ``sum(E for k in range(a, b) if C)``
(``sympy.Sum``, nested or not) and, inside a reduction, branch. Each is
lowered to plain loops:

* a field read becomes a checked, Python-wrapped index and one load;
* a reduction becomes an accumulator and a ``for`` loop; its summand is split
  into disjoint cases (``derive._cases``) so a branch's reads happen only
  where the branch holds;
* derivatives are symbolic: the expression with its reads and reductions
  replaced by symbols is differentiated by sympy, so the tangent is
  ``Σ ∂F/∂v · v̇ + Σ ∂F/∂s · ṡ`` and the adjoint scatters ``∂F/∂v · ā`` into
  each read element and passes ``∂F/∂s · ā`` into each reduction's loop.

The chain coefficient of a read inside a reduction is the product of the
coefficients on the way down; the Gram weights scatter its square.
"""

from __future__ import annotations

import sympy as sp

from ...expr import Conj, Modulus, has_complex, is_int, outside_sums, unwhere, uses_complex_functions, wirtinger
from ...printer import code, value_code


def _top_sums(e) -> list:
    """Sums that occur in ``e`` outside any other Sum."""
    return outside_sums(e, sp.Sum)


class Lowerer:
    """Appends the statements of one kernel to ``lines`` as ``(indent, text)``."""

    def __init__(self, spec, lines: list):
        self.spec = spec
        self.lines = lines
        self.count = 0
        self.trusted = frozenset()   # reads whose indices were checked before the loop
        self.fast = False            # inside a loop whose indices are all known in range
        self.sinks = {}              # read (or key) -> local accumulator, flushed after the loop
        self.sink_used = {}          # read -> array prefix it was scattered into
        self.int_subs = {}           # integer-field reads checked before the loop -> unchecked loads
        self.static_ints = {}        # integer-field reads that the loop bounds keep in range -> unchecked loads
        self.wrap_subs = []          # % and // made affine by a split loop (loops.split_wraps), applied in turn

    # -- small pieces -----------------------------------------------------

    def add(self, depth: int, text: str) -> None:
        self.lines.append((depth, text))

    def accumulate(self, depth: int, key: str, target: str, amount: str) -> None:
        """``target += amount``, through a local accumulator when the region set one up."""
        sink = self.sinks.get(key)
        if sink is None:
            self.add(depth, f"{target} += {amount}")
        else:
            self.sink_used[key] = target
            self.add(depth, f"{sink} += {amount}")

    def subscript(self, parts) -> str:
        """An index known to be in range. In the unchecked loop each part is
        cast to unsigned: numba then drops its negative-index wrap, which
        otherwise keeps LLVM from vectorizing the loop."""
        parts = list(parts)
        if self.fast:
            parts = [p if p.isdigit() else f"_u({p})" for p in parts]
        return ", ".join(parts)

    def ref(self, array: str, *parts: str) -> str:
        """``array[parts]`` for an index the loop nest keeps in range (outputs, cotangents)."""
        return f"{array}[{self.subscript(parts)}]"

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"_{prefix}{self.count}"

    def index(self, depth: int, acc: sp.Indexed) -> str:
        """Emit the checked, wrapped index of ``acc``; return it as code."""
        name = acc.base.label.name
        field = self.spec.field(name)
        if field.ndim == 0:
            return "0"
        if acc in self.trusted:
            return self.subscript(code(e) for e in acc.indices)
        parts = []
        for d, e in enumerate(acc.indices):
            t = self.fresh("a")
            parts.append(t)
            length = f"{name}.shape[{d}]"
            self.add(depth, f"{t} = {code(e)}")
            self.add(depth, f"if {t} < 0:")
            self.add(depth + 1, f"{t} += {length}")
            self.add(depth, f"if {t} < 0 or {t} >= {length}:")
            self.add(depth + 1, f'raise IndexError("{self.spec.name}: getindex reads {name} out of range")')
        return ", ".join(parts)

    def _symbolize(self, e):
        """``(F, sums, reads)``: e with its top-level sums and then its reads
        replaced by fresh real symbols."""
        for subs in self.wrap_subs:
            e = e.xreplace(subs)
        if self.int_subs or self.static_ints:
            e = e.xreplace({**self.static_ints, **self.int_subs})
        sums = [(sp.Symbol(self.fresh("s"), real=True), s) for s in _top_sums(e)]
        f = e.xreplace({s: sym for sym, s in sums}) if sums else e
        reads = [(sp.Symbol(self.fresh("v"), real=True), acc) for acc in outside_sums(f, sp.Indexed)]
        f = f.xreplace({acc: sym for sym, acc in reads}) if reads else f
        return f, sums, reads

    def _loop(self, depth: int, s: sp.Sum, body, emits=lambda v: True) -> None:
        """Emit ``for k in range(lo, hi + 1)`` over the summand's cases, each
        case's statements from ``body(depth, value)``. ``emits(value)`` says,
        from the expression, whether a case's body writes anything: the cases
        that do not, and a loop with no such case, are left out."""
        from ...derive import _cases  # the same case split as the entry itself

        # Sum(f, (l, ...), (k, ...)) is Σ_k Σ_l f: peel the outermost limit
        *inner, (k, lo, hi) = s.limits
        summand = sp.Sum(s.function, *inner) if inner else unwhere(s.function)
        cases = [(cond, v) for cond, v in _cases(summand) if v != 0 and emits(v)]
        if not cases:
            return
        lo_c, hi_c = self.condition(depth, lo), self.condition(depth, hi + 1)
        self.add(depth, f"for {k.name} in range({lo_c}, {hi_c}):")
        for cond, v in cases:
            d = depth + 1
            if cond is not sp.true:
                self.add(d, f"if {self.condition(d, cond)}:")
                d += 1
            body(d, v)

    # -- value ------------------------------------------------------------

    def condition(self, depth: int, e) -> str:
        """Code for a condition or an integer bound, its reads and sums emitted first."""
        return self.value(depth, e, printer=code)

    def value(self, depth: int, e, printer=value_code) -> str:
        """Emit what ``e`` needs; return the code of its value."""
        f, sums, reads = self._symbolize(e)
        for sym, s in sums:
            self._sum_value(depth, sym.name, s)
        for sym, acc in reads:
            idx = self.index(depth, acc)
            self.add(depth, f"{sym.name} = {acc.base.label.name}[{idx}]")
        return printer(f)

    def _sum_value(self, depth: int, target: str, s: sp.Sum) -> None:
        # an integer-valued sum (a count in an index or a bound) stays an integer
        self.add(depth, f"{target} = {'0' if is_int(s.function) else '0.0'}")
        self._loop(depth, s, lambda d, v: self.add(d, f"{target} += {self.value(d, v)}"))

    # -- tangent (forward mode) -------------------------------------------

    def tangent(self, depth: int, e, want_value: bool = False):
        """Emit what the tangent of ``e`` needs; return ``(value code or None, tangent code)``.

        Tangent arrays are named ``_d_<field>``; a term whose coefficient is
        zero is not emitted.
        """
        f, sums, reads = self._symbolize(e)
        dsyms = {sym: sp.Symbol(f"_t{sym.name}", real=True) for sym, _ in sums + reads}
        dot = sp.S.Zero
        coefs = {}
        for sym, _ in _differentiable(sums) + reads:
            # Wirtinger: df = A dv + B conj(dv) (B = 0 unless f uses conj, real, imag or a modulus)
            a, b = wirtinger(f, sym)
            if a != 0 or b != 0:
                coefs[sym] = a + b
                dot += a * dsyms[sym] + b * Conj(dsyms[sym])
        needed = set().union(*[c.free_symbols for c in coefs.values()]) if coefs else set()
        if want_value:
            needed |= f.free_symbols
        needed |= _index_symbols(reads, needed | set(coefs))
        for sym, s in sums:
            want_v, want_d = sym in needed, sym in coefs
            if want_v or want_d:
                self._sum_tangent(depth, sym.name, dsyms[sym].name if want_d else None, s, want_v)
        for sym, acc in reads:
            if sym not in needed and sym not in coefs:
                continue
            idx = self.index(depth, acc)
            name = acc.base.label.name
            if sym in needed:
                self.add(depth, f"{sym.name} = {name}[{idx}]")
            if sym in coefs:
                self.add(depth, f"{dsyms[sym].name} = _d_{name}[{idx}]")
        return (value_code(f) if want_value else None), value_code(dot)

    def _sum_tangent(self, depth: int, target, dtarget, s: sp.Sum, want_value: bool) -> None:
        if want_value:
            self.add(depth, f"{target} = {'0' if is_int(s.function) else '0.0'}")
        if dtarget:
            self.add(depth, f"{dtarget} = 0.0")

        def body(d, v):
            if dtarget:
                val, dot = self.tangent(d, v, want_value)
                if has_tangent(v):
                    self.add(d, f"{dtarget} += {dot}")
            else:
                val = self.value(d, v)
            if want_value:
                self.add(d, f"{target} += {val}")

        self._loop(depth, s, body, lambda v: want_value or (dtarget and has_tangent(v)))

    # -- adjoint (reverse mode) -------------------------------------------

    def adjoint(self, depth: int, e, adj: str | None, prefix: str, square: bool = False) -> None:
        """Scatter ``∂e/∂θ · adj`` into the arrays ``<prefix><field>`` (``adj``
        None: the unit seed; with ``square``: ``(∂e/∂θ · adj)²``, the Gram weights)."""
        f, sums, reads = self._symbolize(e)
        coefs = {}
        pairs = {}
        for sym, _ in _differentiable(sums) + reads:
            a, b = wirtinger(f, sym)
            if a != 0 or b != 0:
                coefs[sym] = a + b
                pairs[sym] = (a, b)
        if not coefs:
            return
        needed = set().union(*[c.free_symbols for c in coefs.values()])
        needed |= _index_symbols(reads, needed | set(coefs))
        for sym, s in sums:
            if sym in needed:
                self._sum_value(depth, sym.name, s)
        idxs = {}
        for sym, acc in reads:
            if sym not in needed and sym not in coefs:
                continue
            idx = self.index(depth, acc)
            idxs[sym] = idx
            if sym in needed:
                self.add(depth, f"{sym.name} = {acc.base.label.name}[{idx}]")
        for sym, acc in reads:
            if sym in coefs:
                sink = self.sinks.get(acc)
                if square:      # |∂e/∂θ|²: the real Jacobian's column norm (a real field)
                    c = coefs[sym]
                    if has_complex(c) or uses_complex_functions(c):
                        amount = value_code(Modulus(c) ** 2) if adj is None else f"abs({_times(c, adj)}) ** 2"
                    else:
                        amount = value_code(c ** 2) if adj is None else f"({_times(c, adj)}) ** 2"
                else:
                    amount = _adjoint_amount(*pairs[sym], adj)
                if sink is not None:        # an element fixed across the inner loop
                    self.sink_used[acc] = prefix
                    self.add(depth, f"{sink} += {amount}")
                else:
                    self.add(depth, f"{prefix}{acc.base.label.name}[{idxs[sym]}] += {amount}")
        for sym, s in sums:
            if sym not in coefs:
                continue
            bar = self.fresh("b")
            self.add(depth, f"{bar} = {_adjoint_amount(*pairs[sym], adj)}")
            self._loop(depth, s, lambda d, v: self.adjoint(d, v, bar, prefix, square), has_tangent)


def has_tangent(e) -> bool:
    """Whether ``e`` depends on a field element at all (a read or a real-valued
    sum with a non-zero derivative): otherwise its tangent and adjoint are 0."""
    sums = [(sp.Dummy("s", real=True), s) for s in _top_sums(e)]
    f = e.xreplace({s: sym for sym, s in sums}) if sums else e
    reads = [(sp.Dummy("v", real=True), acc) for acc in outside_sums(f, sp.Indexed)]
    f = f.xreplace({acc: sym for sym, acc in reads}) if reads else f
    # for complex fields: 1j * imag(v) has no derivative for a real v, but has one
    return any(w != 0 for sym, _ in _differentiable(sums) + reads for w in wirtinger(f, sym))


def _differentiable(sums) -> list:
    """The sums that can carry a derivative: an integer-valued one (a count)
    is piecewise constant in the fields."""
    return [(sym, s) for sym, s in sums if not is_int(s.function)]


def _index_symbols(reads, loaded) -> set:
    """Symbols (sums) that the indices of the loaded reads need."""
    out = set()
    for sym, acc in reads:
        if sym in loaded:
            for e in acc.indices:
                out |= e.free_symbols
    return out


def _adjoint_amount(a, b, adj: str | None) -> str:
    """What an entry with ``d entry = a dv + b conj(dv)`` sends to ``v`` for
    the cotangent ``adj``: conj(a)·adj + b·conj(adj), the adjoint in the real
    inner product Re⟨x, y⟩ (ChainRules' and PyTorch's cotangent; for real
    numbers (a + b)·adj: conj of a real number is a no-op that LLVM drops).
    Conj of a real constant or of sizes and indices folds away."""
    if b == 0:
        return _times(Conj(a), adj)
    first = _times(Conj(a), adj) if a != 0 else None
    second = _times(b, None if adj is None else f"({adj}).conjugate()")
    return second if first is None else f"{first} + {second}"


def _times(coef, operand: str | None) -> str:
    """``coef · operand`` as code; ``operand`` None is the unit seed."""
    if operand is None:
        return value_code(coef)
    if coef == 1:
        return operand
    if coef == -1:
        return f"-{operand}"
    return f"({value_code(coef)}) * {operand}"
