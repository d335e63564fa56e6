"""sympy -> Python source that numba compiles (strict: unknown constructs fail
at build time, not at numba compile time)."""

from __future__ import annotations

import contextlib

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from .expr import IntRead


class TooLarge(ValueError):
    """A constant that the generated arithmetic cannot represent."""


def _digits(value) -> str:
    try:
        text = sp.sstr(value)
    except ValueError:          # Python refuses to print integers of over 4300 digits
        return "with thousands of digits"
    return text if len(text) <= 40 else f"with {len(text)} characters"


class NumbaPrinter(PythonCodePrinter):
    """Python code for numba's nopython mode; ``math`` functions, builtin
    ``min``/``max``/``abs``, Python's ``//`` and ``%``."""

    printmethod = "_numbacode"
    _default_settings = dict(PythonCodePrinter._default_settings, strict=True,
                             fully_qualified_modules=True, float_pow=False)

    def _print_Pow(self, expr, rational=False):
        if not self._settings["float_pow"]:
            return super()._print_Pow(expr, rational)
        b, e = expr.base, expr.exp
        # In a value, an integer base is raised as a float: Python's big
        # integers would not overflow, numba's int64 would (2 ** j * s).
        if b.is_integer and not b.is_Number:
            base = f"float({self._print(b)})"
        elif b.is_Integer:
            base = repr(float(b))
        else:
            base = None
        # A float raised to an integer power raises ZeroDivisionError at 0 for
        # a negative exponent, even with numba's numpy error model; a float
        # exponent follows IEEE (inf), as numpy, JAX and PyTorch do.
        if e.is_Integer and e < 0:
            if base is not None:
                positive = base if e == -1 else f"{base} ** {-int(e)}"
            else:
                positive = self._print(b) if b.is_Atom else f"({self._print(b)})"
                if e != -1:
                    positive = f"{positive} ** {-int(e)}"
            return f"(1.0 / {positive})"
        if e.is_integer and not e.is_Number:
            return f"{base or self.parenthesize(b, sp.printing.precedence.PRECEDENCE['Pow'])} ** float({self._print(e)})"
        if base is not None:
            return f"{base} ** ({self._print(e)})"
        return super()._print_Pow(expr, rational)

    # exp, log and sqrt through numpy: numba types np.exp & co. for real and
    # complex numbers alike (math.exp takes reals only), with the same IEEE
    # results for reals (nan for sqrt and log of negatives, -inf for log 0)
    _NUMPY = {"math.exp": "np.exp", "math.log": "np.log", "math.sqrt": "np.sqrt"}

    def _module_format(self, fqn, register=True):
        if fqn in self._NUMPY:
            return self._NUMPY[fqn]
        return super()._module_format(fqn, register)

    def _print_Function(self, expr):
        # sympy's printer dispatches an undefined function (IntRead) as
        # AppliedUndef / Function, never by its own classes
        if isinstance(expr, IntRead):
            return self._print_IntRead(expr)
        return super()._print_Function(expr)

    def _print_IntRead(self, expr):
        # a read of an integer field: wrapped like a Python index, and checked
        # (the kernels run with numba's bounds checks off)
        name = type(expr).__name__
        if not expr.args:           # a scalar integer field: a 0-d array
            return f"{name}[()]"
        parts = ", ".join(f"_w_{name}({self._print(a)}, {name}.shape[{d}])" for d, a in enumerate(expr.args))
        return f"{name}[{parts}]"

    def _print_IntDiv(self, expr):
        a, b = expr.args
        return f"(({self._print(a)}) // ({self._print(b)}))"

    def _print_Mod(self, expr):
        a, b = expr.args
        return f"(({self._print(a)}) % ({self._print(b)}))"

    def _print_Rational(self, expr):
        if expr.q == 1:
            return self._print_Integer(expr)
        if abs(expr.p) < 2**53 and expr.q < 2**53:
            return f"({expr.p}.0 / {expr.q}.0)"
        return self._float(expr)

    def _print_Integer(self, expr):
        if abs(expr.p) < 2**63:
            return str(expr.p)
        if self._settings["float_pow"]:      # a real value: the nearest float
            return self._float(expr)
        raise TooLarge(f"the integer constant {_digits(expr.p)} does not fit 64-bit integer arithmetic")

    def _print_Float(self, expr):
        return self._float(expr)

    @staticmethod
    def _float(expr):
        try:
            value = float(expr)
        except OverflowError:
            value = float("inf")
        if value != value or value in (float("inf"), float("-inf")):
            raise TooLarge(f"the constant {_digits(expr)} is beyond the range of float64")
        return repr(value)

    def _print_Min(self, expr):
        return self._nest("min", expr.args)

    def _print_Max(self, expr):
        return self._nest("max", expr.args)

    def _nest(self, fn, args):
        args = sorted(args, key=sp.default_sort_key)
        out = self._print(args[0])
        for a in args[1:]:
            out = f"{fn}({out}, {self._print(a)})"
        return out

    # complex numbers (numba types .real, .imag and .conjugate() on every number)
    def _print_ImaginaryUnit(self, expr):
        return "1j"

    def _print_Conj(self, expr):
        return f"({self._print(expr.args[0])}).conjugate()"

    def _print_Re(self, expr):
        return f"({self._print(expr.args[0])}).real"

    def _print_Im(self, expr):
        return f"({self._print(expr.args[0])}).imag"

    def _print_Modulus(self, expr):
        return f"abs({self._print(expr.args[0])})"

    def _print_BooleanTrue(self, expr):
        return "True"

    def _print_BooleanFalse(self, expr):
        return "False"

    def _print_Sum(self, expr):
        raise NotImplementedError("Sum is lowered to a loop by the emitter")


_PRINTER = NumbaPrinter()
_VALUE_PRINTER = NumbaPrinter(dict(float_pow=True))


def code(expr) -> str:
    """Source text of ``expr`` (integer arithmetic stays integer: indices, bounds)."""
    return _PRINTER.doprint(sp.Integer(expr) if isinstance(expr, int) else expr)


def value_code(expr) -> str:
    """Source text of a real value: powers of integers are taken in floating point."""
    return _VALUE_PRINTER.doprint(sp.Integer(expr) if isinstance(expr, int) else expr)


@contextlib.contextmanager
def recording_imports():
    """Collect the modules the printed code uses (``math``) while rendering one
    module: the template imports only those."""
    for printer in (_PRINTER, _VALUE_PRINTER):
        printer.module_imports.clear()
    used: set = set()
    try:
        yield used
    finally:
        for printer in (_PRINTER, _VALUE_PRINTER):
            used.update(printer.module_imports)
            printer.module_imports.clear()
