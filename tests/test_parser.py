"""Every construct of the expression language, translated to sympy, compared
with the sympy expression written here by hand."""

import pytest
import sympy as sp

from rulegen.errors import Collector, Pos
from rulegen.expr import I, J, IntDiv, Scope, Where, field_base, parse, size_symbol

n, m = size_symbol("n"), size_symbol("m")
d, A, s = field_base("d"), field_base("A"), field_base("s")
SCOPE = Scope(sizes={"n": n, "m": m}, fields={"d": 1, "A": 2, "s": 0}, indices=True)


def tr(text):
    errors = Collector()
    out = parse(text, Pos("t", 1, 1, text), SCOPE, errors, "getindex")
    assert not errors.diagnostics, errors.diagnostics[0].format()
    return out


K = sp.Symbol("k", integer=True)

CASES = [
    ("3", sp.Integer(3)),
    ("0.25", sp.Rational(1, 4)),
    ("n", n),
    ("i + j", I + J),
    ("d[i]", d[I]),
    ("A[i, j]", A[I, J]),
    ("s", s[0]),
    ("d[i] - 2 * A[j, i]", d[I] - 2 * A[J, I]),
    ("d[i] / n", d[I] / n),
    ("d[i // 2]", d[IntDiv(I, 2)]),
    ("d[(i - j) % n]", d[sp.Mod(I - J, n)]),
    ("d[i] ** 2", d[I] ** 2),
    ("-d[i]", -d[I]),
    ("+d[i]", d[I]),
    ("d[i] if i == j else 0", sp.Piecewise((d[I], sp.Eq(I, J)), (0, True))),
    ("d[i] if i != j else 0", sp.Piecewise((d[I], sp.Ne(I, J)), (0, True))),
    ("1 if i < j <= n else 0", sp.Piecewise((1, sp.And(I < J, J <= n)), (0, True))),
    ("1 if i > j or i >= n else 0", sp.Piecewise((1, sp.Or(I > J, I >= n)), (0, True))),
    ("1 if not i < j else 0", sp.Piecewise((1, I >= J), (0, True))),
    ("sum(d[k] for k in range(n))", sp.Sum(d[K], (K, 0, n - 1))),
    ("sum(A[i, k] for k in range(1, m))", sp.Sum(A[I, K], (K, 1, m - 1))),
    ("sum(d[k] for k in range(n) if k != i)",
     sp.Sum(Where(sp.Ne(K, I), d[K], 0), (K, 0, n - 1))),
    ("min(i, j)", sp.Min(I, J)),
    ("max(i, j, 2)", sp.Max(I, J, 2)),
    ("abs(i - j)", sp.Abs(I - J)),
    ("exp(d[i])", sp.exp(d[I])),
    ("log(s)", sp.log(s[0])),
    ("sqrt(d[j])", sp.sqrt(d[J])),
    ("2 ** 10", sp.Integer(1024)),
]


@pytest.mark.parametrize("text,expected", CASES, ids=[c[0] for c in CASES])
def test_construct(text, expected):
    assert sp.simplify(tr(text) - expected) == 0 if not isinstance(expected, sp.Piecewise) \
        else tr(text) == expected


REFUSED = [
    ("d[i:j]", "slices are not supported"),
    ("d.T", "attribute access"),
    ("[1, 2]", "unsupported syntax"),
    ("'a'", "unsupported constant"),
    ("True", "unsupported constant"),
    ("b'a'", "unsupported constant"),
    ("d[1j]", "integer-valued"),
    ("1j < d[i]", "not ordered"),
    ("max(d[i], 2j)", "not ordered"),
    ("conj(d[i], d[j])", "exactly one"),
    ("(-1) ** 0.5", "not a finite real"),
    ("i @ j", "'@'"),
    ("i & j", "'&'"),
    ("i is j", "'is'"),
    ("i in d", "'in'"),
    ("min(i)", "at least two"),
    ("exp(1, 2)", "exactly one"),
    ("sum(d)", "one generator"),
    ("sum(d[k] for k in d)", "range"),
    ("sum(d[i] for i in range(n))", "bad loop variable"),
    ("range(3)", "only allowed in sum"),
    ("d[0.5]", "integer-valued"),
    ("n[0]", "not a field"),
    ("d", "needs 1 index"),
    ("s[0]", "scalar and takes no index"),
    ("log(0)", "non-positive"),
    ("sqrt(-1)", "negative constant"),
    ("1 / 0", "division by zero"),
    ("i % 0", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("d[i] ** 1000", "exponent larger"),
    ("f(i)", "unknown function 'f'"),
    ("mn(i, j)", "did you mean 'min'"),
    ("x", "unknown name 'x'"),
    ("1" * 70, "more than 60 digits"),
    ("d[i] if d[j] else 0", "expected a condition"),
]


@pytest.mark.parametrize("text,message", REFUSED, ids=[r[0][:20] for r in REFUSED])
def test_refusal(text, message):
    errors = Collector()
    assert parse(text, Pos("t", 1, 1, text), SCOPE, errors, "getindex") is None
    assert len(errors.diagnostics) == 1
    assert message in errors.diagnostics[0].format()


def test_complex_constructs_stay_opaque():
    """conj, real, imag and the modulus of a value are kept out of sympy's real
    algebra (field reads are real symbols to the derivation): abs(d)² is not d²."""
    from rulegen.expr import Conj, Im, Modulus, Re
    d = sp.IndexedBase("d", real=True)[I]
    assert tr("conj(d[i])") == Conj(d)
    assert tr("real(d[i]) + imag(d[i])") == Re(d) + Im(d)
    assert tr("abs(d[i]) ** 2") == Modulus(d) ** 2
    assert tr("abs(i - j)") == sp.Abs(I - J)           # of indices: sympy's Abs, lifted into conditions
    assert tr("2j * d[i]") == 2 * sp.I * d
    assert tr("conj(conj(d[i]))") == d
    assert tr("conj(2 + 3j)") == 2 - 3 * sp.I
    assert tr("imag(d[i] + i)") == Im(d + I)


# integer fields (issue #16): reads are IntRead functions that stand wherever an integer may
INT_SCOPE = Scope(sizes={"n": n, "m": m}, fields={"d": 1, "A": 2, "p": 1, "q": 2}, indices=True,
                  int_fields=frozenset({"p", "q"}))


def tr_int(text):
    errors = Collector()
    out = parse(text, Pos("t", 1, 1, text), INT_SCOPE, errors, "getindex")
    assert not errors.diagnostics, errors.diagnostics[0].format()
    return out


def test_integer_field_reads():
    from rulegen.expr import IntRead, int_field

    p, q = int_field("p"), int_field("q")
    assert tr_int("d[p[i]]") == d[p(I)]
    assert tr_int("A[p[i], q[j, 0]]") == A[p(I), q(J, 0)]
    assert tr_int("d[i] if j == p[i] else 0") == sp.Piecewise((d[I], sp.Eq(J, p(I))), (0, True))
    total = tr_int("sum(d[k] for k in range(p[i], p[i + 1]))")
    assert total == sp.Sum(d[K], (K, p(I), p(I + 1) - 1))
    assert isinstance(p(I), IntRead) and p(I).is_integer
    assert sp.diff(tr_int("d[i] * p[i]"), sp.Symbol("x")) == 0


def test_a_real_field_as_an_index_says_why_and_how():
    errors = Collector()
    parse("d[A[i, j]]", Pos("t", 1, 1, "d[A[i, j]]"), SCOPE, errors, "getindex")
    (diag,) = errors.diagnostics
    text = diag.format()
    assert "index must be integer-valued" in text
    assert "'A' is a real field" in text and "A: {shape: [...], dtype: int}" in text
