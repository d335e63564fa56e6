"""The expression language: Python syntax, parsed with ``ast``, checked against
a whitelist and translated node by node into sympy.

Nothing here evaluates user text: no ``eval``, no ``sympify`` of a string.
Every node type that is not explicitly handled is refused with a diagnostic
that points at it.

Grammar (see docs/spec-language.md)::

    numbers, size symbols, i, j, bound variables of sum(...)
    field[idx, ...]            one integer index per field dimension
    + - * / ** // %            // and % with Python's floor semantics
    -E  +E  not C  C and C  C or C
    a < b <= c  ==  !=         comparisons, chained too
    A if C else B
    sum(E for k in range(a, b) [if C]),  range(b)
    min, max, abs, exp, log, sqrt
    conj, real, imag, and imaginary literals (2j)

Complex numbers: a field holds real or complex numbers, decided at run time
by the arrays given. Field reads are sympy symbols assumed real (the
derivation's region and index reasoning needs that); what a complex value
needs is kept out of sympy's reach: ``conj``/``real``/``imag`` and the
modulus ``abs`` of a value are opaque functions (:class:`Conj`, :class:`Re`,
:class:`Im`, :class:`Modulus`) that sympy cannot fold with a real-only
identity (``abs(x) ** 2`` stays ``|x|²``, not ``x²``). Their derivative with
respect to a real variable is the real-instance one (``d conj(u) = conj(du)``).
"""

from __future__ import annotations

import ast
import builtins
import keyword
import math
from dataclasses import dataclass

import sympy as sp
from sympy.core.function import AppliedUndef
from sympy.core.logic import fuzzy_and

from .errors import Collector, Pos, did_you_mean

MAX_EXPR_CHARS = 4000
MAX_NODES = 2000
MAX_DEPTH = 60
MAX_INT_DIGITS = 60
MAX_POW_BITS = 4096
MAX_SYMBOLIC_EXPONENT = 64

FUNCTIONS = ("min", "max", "abs", "exp", "log", "sqrt", "conj", "real", "imag", "sum", "range")

#: The two index variables of getindex.
#: (No sign assumption: after substituting ``j = i - 1`` the atom ``j >= 0``
#: must survive as ``i >= 1``.)
I = sp.Symbol("i", integer=True)
J = sp.Symbol("j", integer=True)


class IntDiv(sp.Function):
    """Python's ``a // b`` on integers (floor division)."""

    is_integer = True

    def fdiff(self, argindex=1):
        return sp.S.Zero        # piecewise constant

    @classmethod
    def eval(cls, a, b):
        if b == 1:
            return a
        if a.is_Integer and b.is_Integer and b != 0:
            return sp.Integer(int(a) // int(b))
        if a == 0:
            return sp.S.Zero
        return None


class Where(sp.Function):
    """``a if cond else b`` inside a sum. sympy folds a Piecewise found inside
    a Sum out of it when the Sum sits in a condition, across the Sum's bound
    variable (wrong); an opaque function is left alone. Lowering turns it
    back into a Piecewise (:func:`unwhere`) one sum at a time."""

    nargs = 3

    @classmethod
    def eval(cls, cond, a, b):
        if cond is sp.true:
            return a
        if cond is sp.false:
            return b
        return None

    def _eval_is_integer(self):
        return fuzzy_and([self.args[1].is_integer, self.args[2].is_integer])

    def _eval_is_real(self):
        return fuzzy_and([self.args[1].is_real, self.args[2].is_real])


class _Power(sp.Function):
    """``base ** exponent`` while differentiating, so that the power rule is
    written ``e · b ** (e - 1)``: sympy's own rule, ``e · b ** e / b``,
    divides by a base that may be zero where the entry is finite (``x ** j``
    at ``x = 0``)."""

    nargs = 2

    def fdiff(self, argindex=1):
        b, e = self.args
        if argindex == 1:
            rule = e * _Power(b, e - 1)
            return rule if e.is_zero is False else sp.Piecewise((sp.S.Zero, sp.Eq(e, 0)), (rule, True))
        # d/de b ** e = b ** e · log b; 0 at b = 0 (b ** e is 0 there for e > 0)
        return sp.Piecewise((sp.S.Zero, sp.Eq(b, 0)), (self * sp.log(b), True))


class _ValueFunction(sp.Function):
    """A function of one value that sympy must not simplify under its real
    assumption on field reads (they may hold complex numbers at run time)."""

    nargs = 1
    _text = ""          # the spec language's name (str, explain)
    _tex = ""           # LaTeX, with {} for the argument

    def _sympystr(self, printer):
        return f"{self._text}({printer._print(self.args[0])})"

    def _latex(self, printer):
        return self._tex.format(printer._print(self.args[0]))

    def _pretty(self, printer):
        return printer._print_Function(self, func_name=self._text)

    @classmethod
    def _on_number(cls, a):
        raise NotImplementedError

    @classmethod
    def eval(cls, a):
        if a.is_Number or (a.is_number and a.has(sp.I) and not a.has(sp.Sum)):
            return cls._on_number(a)
        if a.is_integer:            # indices and sizes (field reads are real symbols, never integers)
            return cls._on_real(a)
        return None


class Conj(_ValueFunction):
    """``conj(u)``: the complex conjugate (the identity on real numbers)."""

    _text, _tex = "conj", r"\overline{{{}}}"

    @classmethod
    def _on_number(cls, a):
        return sp.conjugate(a)

    @classmethod
    def _on_real(cls, a):
        return a

    @classmethod
    def eval(cls, a):
        if isinstance(a, Conj):
            return a.args[0]
        if isinstance(a, (Re, Im, Modulus)):
            return a
        return super().eval(a)

    def _eval_derivative(self, s):
        return Conj(self.args[0].diff(s))


class Re(_ValueFunction):
    """``real(u)``: the real part."""

    _text, _tex = "real", r"\operatorname{{Re}}\left({}\right)"

    @classmethod
    def _on_number(cls, a):
        return sp.re(a)

    @classmethod
    def _on_real(cls, a):
        return a

    @classmethod
    def eval(cls, a):
        if isinstance(a, (Re, Im, Modulus)):
            return a
        return super().eval(a)

    def _eval_derivative(self, s):
        return Re(self.args[0].diff(s))


class Im(_ValueFunction):
    """``imag(u)``: the imaginary part (0 for a real value)."""

    _text, _tex = "imag", r"\operatorname{{Im}}\left({}\right)"

    @classmethod
    def _on_number(cls, a):
        return sp.im(a)

    @classmethod
    def _on_real(cls, a):
        return sp.S.Zero

    @classmethod
    def eval(cls, a):
        if isinstance(a, (Re, Im, Modulus)):
            return sp.S.Zero
        return super().eval(a)

    def _eval_derivative(self, s):
        return Im(self.args[0].diff(s))


class Modulus(_ValueFunction):
    """``abs(u)`` of a value that reads fields: its modulus when complex.
    (``abs`` of indices and sizes stays sympy's Abs, lifted into conditions.)"""

    _text, _tex = "abs", r"\left|{}\right|"

    @classmethod
    def _on_number(cls, a):
        return sp.Abs(a)

    @classmethod
    def _on_real(cls, a):
        return sp.Abs(a)

    @classmethod
    def eval(cls, a):
        if isinstance(a, Modulus):
            return a
        return super().eval(a)

    def _eval_derivative(self, s):
        u = self.args[0]
        du = u.diff(s)
        if du == 0:
            return sp.S.Zero
        if not u.has(sp.I, Conj, Im):
            return sp.sign(u) * du          # u is real for real fields: the real rule
        # d|u| = Re(conj(u) du) / |u|, 0 where u = 0
        return sp.Piecewise((sp.S.Zero, sp.Eq(self, 0)), (Re(Conj(u) * du) / self, True))


class _Mod2(sp.Function):
    """``|u|`` written as a function of ``u`` and ``conj(u)`` (both held
    independent: Wirtinger calculus); 0 derivative where u = 0."""

    nargs = 2

    def fdiff(self, argindex=1):
        other = self.args[1] if argindex == 1 else self.args[0]
        return sp.Piecewise((sp.S.Zero, sp.Eq(self, 0)), (other / (2 * self), True))


def conj_inward(e):
    """``conj(e)`` with the conjugation pushed to the leaves: every function
    of the language has real coefficients (conj f(u) = f(conj u)), numbers
    are conjugated, indices and sizes are real; what stays is ``Conj`` of
    field reads (or of the symbols standing for them)."""
    if e.is_Number or e is sp.I or (e.is_number and not e.has(sp.Sum)):
        return sp.conjugate(e)
    if e.is_integer or isinstance(e, (Re, Im, Modulus, _Mod2)):
        return e
    if isinstance(e, Conj):
        return e.args[0]
    if isinstance(e, (sp.Symbol, sp.Indexed, sp.Dummy)):
        return Conj(e)
    if isinstance(e, sp.Piecewise):
        return sp.Piecewise(*[(conj_inward(v), c) for v, c in e.args])
    if isinstance(e, Where):
        return Where(e.args[0], conj_inward(e.args[1]), conj_inward(e.args[2]))
    if isinstance(e, sp.Sum):
        return sp.Sum(conj_inward(e.function), *e.limits)
    if isinstance(e, (sp.Add, sp.Mul, sp.Pow, sp.exp, sp.log, sp.Min, sp.Max, IntDiv, sp.Mod)):
        return e.func(*[conj_inward(a) for a in e.args])
    return Conj(e)


def wirtinger(f, v):
    """``(A, B)`` with ``df = A dv + B conj(dv)`` for a complex ``v``: the
    Wirtinger derivatives ∂f/∂v and ∂f/∂conj(v). ``f`` may use Conj, Re, Im
    and Modulus; A and B use them too (and are valid for real ``v`` as well:
    there ``df/dv = A + B`` with conj the identity). For an ``f`` that uses
    none of them, B = 0 and A = derivative(f, v)."""
    if not uses_complex_functions(f):
        return derivative(f, v), sp.S.Zero
    vb = sp.Dummy(f"{v}_conj")
    mods = {}

    def lower(e):
        if isinstance(e, Re):
            u = lower(e.args[0])
            return (u + conj_inward(u)) / 2
        if isinstance(e, Im):
            u = lower(e.args[0])
            return (u - conj_inward(u)) / (2 * sp.I)
        if isinstance(e, Modulus):
            u = lower(e.args[0])
            m = _Mod2(u, conj_inward(u))
            mods[m] = e
            return m
        if isinstance(e, Conj):
            return conj_inward(lower(e.args[0]))
        if not e.args or e.is_Atom or isinstance(e, sp.Indexed):
            return e
        return e.func(*[lower(a) for a in e.args])

    g = lower(f).xreplace({Conj(v): vb})
    A, B = derivative(g, v), derivative(g, vb)

    def back(e):
        e = e.replace(lambda x: isinstance(x, _Mod2), lambda x: Modulus(x.args[0]))
        return e.xreplace({vb: Conj(v)})
    return back(A), back(B)


def _may_be_complex(e) -> bool:
    """Whether ``e`` may be complex for complex fields: it reads a field
    outside real(), imag() and abs(), or has an imaginary constant."""
    real = e.replace(lambda x: isinstance(x, (Re, Im, Modulus)), lambda x: sp.Dummy(real=True))
    return bool(real.has(sp.Indexed) or real.has(sp.I))


def ordering_of_values(e) -> str | None:
    """The first comparison (``<``, ``<=``, ``>``, ``>=``), ``min`` or ``max``
    in ``e`` that involves a field value that may be complex (outside
    ``real``, ``imag`` and ``abs``), as text; None if there is none.
    Complex numbers are not ordered: a type whose entry orders its field
    values takes real fields only."""
    kinds = (sp.StrictLessThan, sp.LessThan, sp.StrictGreaterThan, sp.GreaterThan, sp.Min, sp.Max)
    found = sorted((a for a in e.atoms(*kinds) if any(_may_be_complex(x) for x in a.args)),
                   key=sp.default_sort_key)
    if not found:
        return None
    return str(found[0])


def has_complex(e) -> bool:
    """Whether ``e`` may be complex for real fields (an imaginary constant)."""
    return bool(e.has(sp.I))


def uses_complex_functions(e) -> bool:
    """Whether ``e`` uses conj, real, imag or the modulus of a value."""
    return bool(e.has(Conj, Re, Im, Modulus))


def derivative(f, v):
    """``∂f/∂v``, valid wherever ``f`` is: no simplification may introduce a
    division that ``f`` did not have (the power rule at 0, ``0 ** 0 = 1``)."""
    powers = {p: _Power(*p.args) for p in f.atoms(sp.Pow) if p.has(v) and not p.exp.is_Number}
    if not powers:
        return sp.diff(f, v)
    d = sp.diff(f.xreplace(powers), v)
    return d.replace(lambda x: isinstance(x, _Power), lambda x: sp.Pow(*x.args))


def to_where(e):
    """Every Piecewise of ``e`` as nested Where (for the body of a sum)."""
    def convert(pw):
        out = sp.S.Zero if pw.args[-1].cond is not sp.true else pw.args[-1].expr
        pairs = pw.args if pw.args[-1].cond is not sp.true else pw.args[:-1]
        for expr, cond in reversed(pairs):
            out = Where(cond, expr, out)
        return out
    return e.replace(lambda x: isinstance(x, sp.Piecewise), convert)


def unwhere(e):
    """The Where of ``e`` outside its sums as Piecewise (sums left as they are)."""
    if not e.has(Where):
        return e
    sums = {s: sp.Dummy("sum") for s in e.atoms(sp.Sum)}
    f = e.xreplace(sums) if sums else e
    f = f.replace(lambda x: isinstance(x, Where), lambda x: sp.Piecewise((x.args[1], x.args[0]), (x.args[2], True)))
    return f.xreplace({d: s for s, d in sums.items()}) if sums else f


def outside_sums(e, kind) -> list:
    """The subexpressions of type ``kind`` in ``e`` that are not inside a Sum
    (with ``kind`` Sum: the outermost sums), in a stable order. A read inside
    a sum depends on its bound variable; these are the ones that do not."""
    found, stack = set(), [e]
    while stack:
        node = stack.pop()
        if isinstance(node, kind):
            found.add(node)
        elif isinstance(node, sp.Basic) and not isinstance(node, sp.Sum):
            stack.extend(node.args)
    return sorted(found, key=sp.default_sort_key)


def is_int(e) -> bool:
    """Whether ``e`` is integer-valued (``a % b`` of integers counts, although
    sympy leaves it undecided because ``b`` might be zero: that raises at run
    time; so does a sum of integers, which sympy leaves undecided)."""
    if e.is_integer:
        return True
    e = e.replace(lambda x: (isinstance(x, sp.Mod) and all(is_int(a) for a in x.args))
                  or (isinstance(x, sp.Sum) and is_int(x.function)),
                  lambda x: sp.Dummy(integer=True))
    return e.is_integer is True


class IntRead(AppliedUndef):
    """A read of an integer field (``rows[k]``, ``perm[i]``): an integer that
    the data gives, structure rather than a parameter. Not an ``Indexed``, so
    nothing that collects the parameters' reads sees it, and its derivative
    with respect to any of them is 0; it may stand wherever an integer may
    (subscripts, conditions, range bounds, arithmetic)."""

    is_integer = True
    is_real = True

    @property
    def field(self) -> str:
        return type(self).__name__

    @property
    def indices(self) -> tuple:
        return self.args


def int_field(name: str):
    """The sympy function that reads integer field ``name``."""
    return sp.Function(name, bases=(IntRead,))


def int_reads(e) -> list:
    """The integer-field reads in ``e``, in a stable order."""
    return sorted(e.atoms(IntRead), key=sp.default_sort_key)


def size_symbol(name: str) -> sp.Symbol:
    return sp.Symbol(name, integer=True, nonnegative=True)


def field_base(name: str) -> sp.IndexedBase:
    return sp.IndexedBase(name, real=True)


RESERVED = (
    set(keyword.kwlist)
    | set(keyword.softkwlist)
    | set(dir(builtins))
    | set(FUNCTIONS)
    | {"i", "j", "np", "numba", "math", "shape", "self", "cls"}
    | {
        "destructure", "destructure_pushforward", "destructure_pullback",
        "restructure_pushforward", "restructure_pullback", "project",
        "parametrisation", "matvec", "rmatvec", "bilinear_pullback",
    }
)


def check_identifier(name: str) -> str | None:
    """Why ``name`` cannot be a size or field name, or None if it can."""
    if not isinstance(name, str) or not name.isidentifier() or not name.isascii():
        return f"'{name}' is not an identifier"
    if name.startswith("_"):
        return f"'{name}' starts with an underscore (reserved for generated code)"
    if name in RESERVED:
        return f"'{name}' is reserved"
    return None


@dataclass(frozen=True)
class Scope:
    """Names an expression may use."""

    sizes: dict          # name -> Symbol
    fields: dict         # name -> ndim
    indices: bool        # whether i and j are in scope (getindex only)
    int_fields: frozenset = frozenset()     # the integer fields among them


class _Refused(Exception):
    def __init__(self, node, message, hint=None):
        self.node, self.message, self.hint = node, message, hint


class _Translator:
    """One pass over an ``ast`` tree, building sympy objects.

    Each visit returns ``(value, kind)`` with kind ``"num"`` or ``"bool"``.
    """

    def __init__(self, scope: Scope, what: str):
        self.scope = scope
        self.what = what
        self.bound: dict[str, sp.Symbol] = {}
        self.depth = 0

    def visit(self, node):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Refused(node, f"expression nested deeper than {MAX_DEPTH} levels")
        try:
            method = getattr(self, "v_" + type(node).__name__, None)
            if method is None:
                raise _Refused(node, f"unsupported syntax: {_describe(node)}")
            return method(node)
        finally:
            self.depth -= 1

    def num(self, node):
        value, kind = self.visit(node)
        if kind != "num":
            raise _Refused(node, "expected a number here, got a condition")
        return value

    def cond(self, node):
        value, kind = self.visit(node)
        if kind != "bool":
            raise _Refused(node, "expected a condition (a comparison) here, got a number")
        return value

    def v_Expression(self, node):
        return self.visit(node.body)

    def v_Constant(self, node):
        v = node.value
        if isinstance(v, complex):      # an imaginary literal: 2j (Python parses 1 + 2j as a sum)
            if not math.isfinite(v.imag):
                raise _Refused(node, "constant is not finite")
            return sp.Rational(repr(v.imag)) * sp.I, "num"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Refused(node, f"unsupported constant {v!r}")
        if isinstance(v, int):
            if len(str(abs(v))) > MAX_INT_DIGITS:
                raise _Refused(node, f"integer constant has more than {MAX_INT_DIGITS} digits")
            return sp.Integer(v), "num"
        if not math.isfinite(v):
            raise _Refused(node, "constant is not finite")
        return sp.Rational(repr(v)), "num"

    def v_Name(self, node):
        name = node.id
        if name in self.bound:
            return self.bound[name], "num"
        if name in self.scope.sizes:
            return self.scope.sizes[name], "num"
        if self.scope.indices and name in ("i", "j"):
            return (I if name == "i" else J), "num"
        if name in self.scope.fields:
            if self.scope.fields[name] != 0:
                nd = self.scope.fields[name]
                raise _Refused(node, f"field '{name}' has {nd} dimension{'s' if nd > 1 else ''} "
                                     f"and needs {nd} ind{'ices' if nd > 1 else 'ex'}: {name}[...]")
            if name in self.scope.int_fields:
                return int_field(name)(), "num"
            return field_base(name)[0], "num"
        if name in FUNCTIONS:
            raise _Refused(node, f"'{name}' is a function; call it")
        known = set(self.scope.sizes) | set(self.scope.fields) | set(self.bound)
        if self.scope.indices:
            known |= {"i", "j"}
        raise _Refused(node, f"unknown name '{name}' in {self.what}", did_you_mean(name, known))

    def v_UnaryOp(self, node):
        if isinstance(node.op, ast.Not):
            return sp.Not(self.cond(node.operand)), "bool"
        operand = self.num(node.operand)
        if isinstance(node.op, ast.USub):
            return -operand, "num"
        if isinstance(node.op, ast.UAdd):
            return operand, "num"
        raise _Refused(node, f"unsupported operator {_describe(node.op)}")

    def v_BinOp(self, node):
        a, b = self.num(node.left), self.num(node.right)
        op = node.op
        if isinstance(op, ast.Add):
            return a + b, "num"
        if isinstance(op, ast.Sub):
            return a - b, "num"
        if isinstance(op, ast.Mult):
            return a * b, "num"
        if isinstance(op, ast.Div):
            if b == 0:
                raise _Refused(node, "division by zero")
            return a / b, "num"
        if isinstance(op, (ast.FloorDiv, ast.Mod)):
            if b == 0:
                raise _Refused(node, "division by zero")
            if not (is_int(a) and is_int(b)):
                raise _Refused(node, f"'{'//' if isinstance(op, ast.FloorDiv) else '%'}' needs integer operands")
            return (IntDiv(a, b) if isinstance(op, ast.FloorDiv) else sp.Mod(a, b)), "num"
        if isinstance(op, ast.Pow):
            return self._pow(node, a, b), "num"
        raise _Refused(node, f"unsupported operator {_describe(op)}")

    def _pow(self, node, a, b):
        if b.is_Number:
            if abs(b) > MAX_SYMBOLIC_EXPONENT and not (a.is_Number and abs(a) <= 1):
                if a.is_Number:
                    bits = float(abs(b)) * math.log2(max(float(abs(a)), 2.0))
                    if bits > MAX_POW_BITS:
                        raise _Refused(node, "constant too large (exponent out of bounds)")
                else:
                    raise _Refused(node, f"exponent larger than {MAX_SYMBOLIC_EXPONENT}")
            if a == 0 and b < 0:
                raise _Refused(node, "division by zero (0 to a negative power)")
        elif a.is_Number and abs(a) > 1 and not b.is_Number:
            pass  # symbolic exponent: evaluated at run time
        result = sp.Pow(a, b)
        if result.has(sp.zoo, sp.oo, -sp.oo, sp.nan) or (result.has(sp.I) and not (a.has(sp.I) or b.has(sp.I))):
            raise _Refused(node, "expression is not a finite real number")
        return result

    def v_BoolOp(self, node):
        parts = [self.cond(v) for v in node.values]
        return (sp.And(*parts) if isinstance(node.op, ast.And) else sp.Or(*parts)), "bool"

    _COMPARE = {ast.Lt: sp.Lt, ast.LtE: sp.Le, ast.Gt: sp.Gt, ast.GtE: sp.Ge,
                ast.Eq: sp.Eq, ast.NotEq: sp.Ne}

    def v_Compare(self, node):
        left = self.num(node.left)
        parts = []
        for op, right_node in zip(node.ops, node.comparators):
            rel = self._COMPARE.get(type(op))
            if rel is None:
                raise _Refused(node, f"unsupported comparison {_describe(op)}")
            right = self.num(right_node)
            if rel not in (sp.Eq, sp.Ne) and (left.has(sp.I) or right.has(sp.I)):
                raise _Refused(node, "complex numbers are not ordered (compare real(...) or abs(...))")
            parts.append(rel(left, right))
            left = right
        return sp.And(*parts), "bool"

    def v_IfExp(self, node):
        test = self.cond(node.test)
        body = self.num(node.body)
        orelse = self.num(node.orelse)
        return sp.Piecewise((body, test), (orelse, True)), "num"

    def v_Subscript(self, node):
        if not isinstance(node.value, ast.Name):
            raise _Refused(node, "only fields can be subscripted")
        name = node.value.id
        if name not in self.scope.fields:
            if name in self.scope.sizes or name in self.bound or name in ("i", "j"):
                raise _Refused(node.value, f"'{name}' is not a field and cannot be subscripted")
            raise _Refused(node.value, f"unknown field '{name}'", did_you_mean(name, self.scope.fields))
        ndim = self.scope.fields[name]
        sl = node.slice
        items = list(sl.elts) if isinstance(sl, ast.Tuple) else [sl]
        if ndim == 0:
            raise _Refused(node, f"field '{name}' is a scalar and takes no index")
        if len(items) != ndim:
            raise _Refused(node, f"field '{name}' has {ndim} dimension{'s' if ndim > 1 else ''}, "
                                 f"got {len(items)} ind{'ices' if len(items) != 1 else 'ex'}")
        idx = []
        for item in items:
            if isinstance(item, ast.Slice):
                raise _Refused(item, "slices are not supported; index one element")
            value = self.num(item)
            if not is_int(value):
                raise _Refused(item, "index must be integer-valued", self._int_hint(value))
            idx.append(value)
        if name in self.scope.int_fields:
            return int_field(name)(*idx), "num"
        return field_base(name)[tuple(idx)], "num"

    def _int_hint(self, value):
        """Why a value is not an integer, and the fix."""
        reads = sorted({a.base.label.name for a in value.atoms(sp.Indexed)})
        if reads:
            name = reads[0]
            return (f"'{name}' is a real field (a parameter); a pattern read as an index must be an integer "
                    f"field: declare it as {name}: {{shape: [...], dtype: int}}")
        if value.has(sp.Rational) or value.is_rational:
            return "use '//' for integer division"
        return None

    def v_Call(self, node):
        if not isinstance(node.func, ast.Name):
            raise _Refused(node, "only the functions min, max, abs, exp, log, sqrt, conj, real, imag and sum "
                                 "can be called")
        fname = node.func.id
        if node.keywords:
            raise _Refused(node, f"{fname}() takes no keyword arguments")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise _Refused(node, "*arguments are not supported")
        if fname == "sum":
            return self._sum(node), "num"
        if fname in ("min", "max"):
            if len(node.args) < 2:
                raise _Refused(node, f"{fname}() needs at least two arguments")
            args = [self.num(a) for a in node.args]
            if any(a.has(sp.I) for a in args):
                raise _Refused(node, f"complex numbers are not ordered: {fname}() of a complex value")
            return (sp.Min(*args) if fname == "min" else sp.Max(*args)), "num"
        if fname in ("conj", "real", "imag"):
            if len(node.args) != 1:
                raise _Refused(node, f"{fname}() takes exactly one argument")
            return {"conj": Conj, "real": Re, "imag": Im}[fname](self.num(node.args[0])), "num"
        if fname in ("abs", "exp", "log", "sqrt"):
            if len(node.args) != 1:
                raise _Refused(node, f"{fname}() takes exactly one argument")
            arg = self.num(node.args[0])
            if fname == "log" and arg.is_Number and arg <= 0:
                raise _Refused(node, "log of a non-positive constant")
            if fname == "sqrt" and arg.is_Number and arg < 0:
                raise _Refused(node, "sqrt of a negative constant")
            if fname == "abs" and arg.has(sp.Indexed, sp.I):
                return Modulus(arg), "num"          # of a value: the modulus (see Modulus)
            fn = {"abs": sp.Abs, "exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt}[fname]
            return fn(arg), "num"
        if fname == "range":
            raise _Refused(node, "range() is only allowed in sum(E for k in range(...))")
        known = [f for f in FUNCTIONS if f != "range"]
        raise _Refused(node.func, f"unknown function '{fname}'", did_you_mean(fname, known))

    def _sum(self, node):
        if len(node.args) != 1 or not isinstance(node.args[0], ast.GeneratorExp):
            raise _Refused(node, "sum() takes one generator: sum(E for k in range(a, b))")
        gen = node.args[0]
        if len(gen.generators) != 1:
            raise _Refused(gen, "sum() takes exactly one 'for' clause")
        comp = gen.generators[0]
        if comp.is_async:
            raise _Refused(gen, "async comprehensions are not supported")
        if not isinstance(comp.target, ast.Name):
            raise _Refused(comp.target, "the loop variable must be a plain name")
        var = comp.target.id
        why = check_identifier(var)
        if why is None and (var in self.scope.sizes or var in self.scope.fields or var in self.bound):
            why = f"'{var}' is already a size, field or loop variable"
        if why:
            raise _Refused(comp.target, f"bad loop variable: {why}")
        it = comp.iter
        if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range"):
            raise _Refused(it, "sum() iterates over range(b) or range(a, b) only")
        if it.keywords or not 1 <= len(it.args) <= 2:
            raise _Refused(it, "range() takes one or two arguments here (no step)")
        bounds = [self.num(a) for a in it.args]
        for a, b in zip(it.args, bounds):
            if not is_int(b):
                raise _Refused(a, "range bounds must be integer-valued", self._int_hint(b))
        lo, hi = (sp.S.Zero, bounds[0]) if len(bounds) == 1 else bounds
        k = sp.Symbol(var, integer=True)
        self.bound[var] = k
        try:
            body = self.num(gen.elt)
            for cond_node in comp.ifs:
                body = Where(self.cond(cond_node), body, sp.S.Zero)
        finally:
            del self.bound[var]
        return sp.Sum(to_where(body), (k, lo, hi - 1))


def _describe(node) -> str:
    return {
        "Lambda": "lambda", "ListComp": "list comprehension", "Attribute": "attribute access",
        "NamedExpr": "':=' assignment", "JoinedStr": "f-string", "Await": "await",
        "Yield": "yield", "BitAnd": "'&'", "BitOr": "'|'", "BitXor": "'^'",
        "LShift": "'<<'", "RShift": "'>>'", "Invert": "'~'", "MatMult": "'@'",
        "Is": "'is'", "IsNot": "'is not'", "In": "'in'", "NotIn": "'not in'",
    }.get(type(node).__name__, type(node).__name__)


def _locator(text: str, pos: Pos, locate):
    """``at(line, col)`` for a 1-based line and 0-based column of ``text``:
    through ``locate`` (a character offset of text -> Pos in the file, which
    knows how YAML folded the scalar) when given, else counted from ``pos``."""
    lines = text.split("\n")

    def at(line: int, col: int) -> Pos:
        line = max(1, min(line, len(lines)))
        if locate is not None:
            return locate(sum(len(t) + 1 for t in lines[:line - 1]) + max(col, 0))
        if line == 1:
            return pos.shifted(col)
        return Pos(pos.path, pos.line + line - 1, col + 1, lines[line - 1])
    return at


def _node_pos(at, text: str, node) -> tuple[Pos, int]:
    """Position and width of ``node``."""
    lineno = getattr(node, "lineno", 1)
    col = getattr(node, "col_offset", 0)
    end_line = getattr(node, "end_lineno", lineno)
    end_col = getattr(node, "end_col_offset", col + 1)
    lines = text.split("\n")
    width = (end_col - col) if end_line == lineno else len(lines[min(lineno, len(lines)) - 1]) - col
    return at(lineno, col), max(1, width)


def parse(text: str, pos: Pos, scope: Scope, errors: Collector, what: str, locate=None):
    """Translate ``text`` into sympy; on failure record a diagnostic and return None.

    ``locate`` maps a character offset of ``text`` to its place in the file
    (see spec.py); without it positions are counted from ``pos``."""
    if len(text) > MAX_EXPR_CHARS:
        errors.error(pos, f"{what} is longer than {MAX_EXPR_CHARS} characters")
        return None
    lead = len(text) - len(text.lstrip("\n"))
    body = text.strip("\n")
    at_text = _locator(text, pos, locate)

    def at(line, col):          # positions in the parsed body, which dropped leading newlines
        return at_text(line + lead, col)

    for k, ch in enumerate(text):
        # Python folds identifiers with NFKC ('𝔞' is 'a'): refuse rather than guess
        if not ch.isascii() or (not ch.isprintable() and ch not in "\n\t"):
            line = text.count("\n", 0, k)
            col = k - (text.rfind("\n", 0, k) + 1)
            errors.error(at_text(line + 1, col), f"character {ch!r} is not allowed in {what} (expressions are ASCII)")
            return None
    try:
        tree = ast.parse(body, mode="eval")
    except SyntaxError as exc:
        errors.error(at(exc.lineno or 1, (exc.offset or 1) - 1), f"syntax error in {what}: {exc.msg}")
        return None
    except (RecursionError, MemoryError, ValueError):
        errors.error(pos, f"{what} cannot be parsed (too deeply nested or invalid characters)")
        return None
    count = sum(1 for _ in ast.walk(tree))
    if count > MAX_NODES:
        errors.error(pos, f"{what} has more than {MAX_NODES} syntax nodes")
        return None
    translator = _Translator(scope, what)
    try:
        value, kind = translator.visit(tree)
    except _Refused as exc:
        p, width = _node_pos(at, body, exc.node)
        errors.error(p, exc.message, width, exc.hint)
        return None
    except RecursionError:
        errors.error(pos, f"{what} is too deeply nested")
        return None
    if kind != "num":
        errors.error(pos, f"{what} must be a number, not a condition")
        return None
    return value
