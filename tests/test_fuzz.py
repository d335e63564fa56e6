"""Hypothesis fuzzing of the compiler: random and mutated specs either build
or are refused with a SpecError carrying FILE:LINE:COL diagnostics; never any
other exception, never a hang.

Profiles: the default "ci" runs a CI-sized number of examples; for a long
local run use ``HYPOTHESIS_PROFILE=long python3 -m pytest tests/test_fuzz.py``.
"""

import glob
import os
import tempfile

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from helpers import SPECS
from rulegen.cli import compile_spec
from rulegen.errors import SpecError

settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

BUILTIN = {os.path.basename(p): open(p, encoding="utf-8").read() for p in sorted(glob.glob(os.path.join(SPECS, "*.yaml")))}


def _compile(text: str):
    """Build ``text``; return the module source, or None for a clean refusal."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "spec.yaml")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as fh:
            fh.write(text)
        try:
            built = compile_spec(path)          # one module per target, the numba one first
            return (built[0] if isinstance(built, list) else built).source
        except SpecError as exc:
            assert exc.diagnostics, "a SpecError without a diagnostic"
            for d in exc.diagnostics:
                text = d.format(color=False)
                assert text.startswith(path + ":"), text
                assert ": error: " in text.splitlines()[0], text
            return None


# -- expressions from the grammar, and from outside it -----------------------

NAMES = st.sampled_from(["i", "j", "n", "m", "r", "k", "a", "b", "s", "U", "data", "x", "zz"])
NUMBERS = st.one_of(st.integers(-5, 5).map(str), st.sampled_from(["0.5", "1e3", "2 ** 70", "10 ** 40"]))


def _expr(children):
    return st.one_of(
        st.tuples(children, st.sampled_from(["+", "-", "*", "/", "//", "%", "**"]), children)
        .map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(st.sampled_from(["a", "b", "data", "U", "s", "zz"]), st.lists(children, min_size=1, max_size=3))
        .map(lambda t: f"{t[0]}[{', '.join(t[1])}]"),
        st.tuples(st.sampled_from(["min", "max", "abs", "exp", "log", "sqrt", "len", "print"]),
                  st.lists(children, min_size=1, max_size=3)).map(lambda t: f"{t[0]}({', '.join(t[1])})"),
        st.tuples(children, st.sampled_from(["<", "<=", "==", "!=", ">="]), children, children, children)
        .map(lambda t: f"({t[3]} if {t[0]} {t[1]} {t[2]} else {t[4]})"),
        st.tuples(children, st.sampled_from(["k", "i", "q"]), children)
        .map(lambda t: f"sum({t[0]} for {t[1]} in range({t[2]}))"),
    )


EXPRESSIONS = st.recursive(st.one_of(NAMES, NUMBERS), _expr, max_leaves=12)

HOSTILE = st.sampled_from([
    "__import__('os').system('echo pwned')", "open('/etc/passwd').read()", "(lambda: 1)()",
    "a.__class__", "[x for x in range(3)]", "{1: 2}", "f'{a}'", "(x := 1)", "*a", "a[1:2]",
    "exec('1')", "eval('1')", "getattr(a, 'x')", "a if b", "i ==", "2 ** 2 ** 2 ** 2 ** 2 ** 2 ** 99",
    "9" * 5000, "(" * 500 + "1" + ")" * 500, "yield 1", "await a", "a; b", "import os", "\x00", "a\nb",
    "𝔞[i]", "i <> j", "not", "i = j", "a[i, j, k, l]", "sum(a[k] for k in range(n) for l in range(n))",
])

SPEC_HEAD = "name: Fuzzed\nsizes: [n, r]\nfields:\n  a: [n]\n  b: [n]\n  s: []\n  U: [n, r]\n  data: [n, n]\nsize: [n, n]\n"


def _quote(expr: str) -> str:
    return '"' + expr.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@given(EXPRESSIONS)
def test_random_expressions_build_or_are_refused(expr):
    _compile(SPEC_HEAD + f"getindex: {_quote(expr)}\n")


@given(HOSTILE, EXPRESSIONS)
def test_hostile_expressions_are_refused(bad, expr):
    assert _compile(SPEC_HEAD + f"getindex: {_quote(bad)}\n") is None or bad.isdigit()
    _compile(SPEC_HEAD + f"getindex: {_quote(expr + ' + ' + bad)}\n")


# -- mutated built-in specs --------------------------------------------------

MUTATIONS = st.sampled_from(["delete_line", "duplicate_line", "swap_lines", "insert", "truncate",
                             "replace_value", "indent"])
JUNK = st.one_of(st.text(max_size=12), st.sampled_from(
    ["!!python/object/apply:os.system ['echo pwned']", "*anchor", "&a [1, *a]", "{", "[", "- -", "? x",
     "!!binary AAAA", "~", "yes", "1e999", "-1", "[n, n, n]", "[]", "{a: 1}", "'unterminated", "__init__",
     "shape", "Diagonal", "n - 1", "- n"]))


@given(st.sampled_from(sorted(BUILTIN)), st.lists(st.tuples(MUTATIONS, st.integers(0, 40), JUNK),
                                                 min_size=1, max_size=3))
def test_mutated_builtin_specs_build_or_are_refused(name, mutations):
    lines = BUILTIN[name].splitlines()
    for op, at, junk in mutations:
        if not lines:
            break
        k = at % len(lines)
        if op == "delete_line":
            del lines[k]
        elif op == "duplicate_line":
            lines.insert(k, lines[k])
        elif op == "swap_lines":
            lines[k], lines[-1] = lines[-1], lines[k]
        elif op == "insert":
            lines.insert(k, junk)
        elif op == "truncate":
            lines[k] = lines[k][: at % (len(lines[k]) + 1)]
        elif op == "replace_value" and ":" in lines[k]:
            lines[k] = lines[k].split(":", 1)[0] + ": " + junk
        elif op == "indent":
            lines[k] = "  " + lines[k]
    _compile("\n".join(lines) + "\n")


def test_builtin_specs_compile():
    for name, text in BUILTIN.items():
        assert _compile(text) is not None, name


# -- random valid specs: build, import, and satisfy the identities -----------

VALID_ATOMS = st.sampled_from(["a[i]", "a[j]", "b[(i + j) % n]", "M[i, j]", "M[j, i]", "s", "U[i, 0]",
                               "U[j, r - 1]", "a[-1 - i]", "1", "0.5"])
VALID_SUMS = st.sampled_from(["sum(U[i, k] * U[j, k] for k in range(r))", "sum(a[k] for k in range(i + 1))",
                              "sum(M[i, k] * b[k] for k in range(n) if k != j)"])
VALID_CONDS = st.sampled_from(["i <= j", "i == j", "i != j", "(i + j) % 2 == 0", "j == i + 1"])


def _valid_expr(children):
    return st.one_of(
        st.tuples(children, st.sampled_from(["+", "-", "*"]), children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(st.sampled_from(["exp({} / 8)", "sqrt({} ** 2 + 1)", "({}) ** 2"]), children)
        .map(lambda t: t[0].format(t[1])),
        st.tuples(children, VALID_CONDS, children).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
        VALID_SUMS,
    )


VALID = st.recursive(VALID_ATOMS, _valid_expr, max_leaves=5)


@settings(max_examples=int(os.environ.get("RULEGEN_FUZZ_BUILDS", "4")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(VALID, st.integers(0, 2**16))
def test_random_valid_specs_satisfy_the_identities(expr, seed):
    """Dot-product test ⟨Jθ̇, Ȳ⟩ = ⟨θ̇, JᵀȲ⟩ and the Penrose identities, through the maps only."""
    import re

    import numpy as np

    from helpers import load_module

    used = [f for f in ("a", "b", "M", "s", "U") if re.search(rf"\b{f}\b", expr)]
    shapes = {"a": "[n]", "b": "[n]", "M": "[n, n]", "s": "[]", "U": "[n, r]"}
    fields = "{" + ", ".join(f"{f}: {shapes[f]}" for f in used) + "}"
    source = _compile(f"name: Valid\nsizes: [n, r]\nfields: {fields}\nsize: [n, n]\ngetindex: {_quote(expr)}\n")
    assert source is not None, expr
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"valid_{seed}.py")
        with open(path, "w") as fh:
            fh.write(source)
        mod = load_module(path)
        rng = np.random.default_rng(seed)
        n, r = 3, 2
        dims = {"a": (n,), "b": (n,), "M": (n, n), "s": (), "U": (n, r)}
        make = {f: rng.uniform(0.5, 1.5, dims[f]) if f != "s" else 0.7 for f in used}
        sizes = {k: v for k, v in (("n", n), ("r", r)) if not (k == "r" and "U" in used)
                 and not (k == "n" and set(used) - {"s"})}
        x = mod.Valid(**make, **sizes)
        t = mod.Valid(**{f: rng.standard_normal(dims[f]) if f != "s" else 0.3 for f in used}, **sizes)
        Y = rng.standard_normal((n, n))

        def vec(obj):
            return np.concatenate([np.ravel(getattr(obj, f)) for f in used]) if used else np.zeros(0)

        push, pull = mod.destructure_pushforward, mod.destructure_pullback
        rpush = mod.restructure_pushforward
        assert np.sum(push(x, t) * Y) == pytest_approx(np.dot(vec(t), vec(pull(x, Y))))
        jt = push(x, t)
        np.testing.assert_allclose(push(x, rpush(x, jt)), jt, atol=1e-7 * (1 + np.abs(jt).max(initial=0)))   # J J⁺ J = J
        pj = vec(rpush(x, Y))
        np.testing.assert_allclose(vec(rpush(x, push(x, rpush(x, Y)))), pj, atol=1e-7 * (1 + np.abs(pj).max(initial=0)))
        P = mod.project(x, Y)
        Z = rng.standard_normal((n, n))
        assert np.sum(P * Z) == pytest_approx(np.sum(Y * mod.project(x, Z)))       # J J⁺ symmetric


def pytest_approx(value):
    import pytest

    return pytest.approx(value, rel=1e-7, abs=1e-9)


# -- rulegen explain and verify on random specs: never a traceback ------------

RISKY_TERMS = st.sampled_from([
    "sum(b[k] for k in range(n) if a[k] == i and a[k] != j)",     # a field compared with an index
    "a[i] / (a[j] - b[i])",                                       # a pole at equal values
    "log(a[i]) * b[j]",                                           # NaN at negative draws
    "a[i] ** j",                                                  # 0 ** 0, the power rule at 0
    "sqrt(abs(a[j])) * s",                                        # a kink, an infinite derivative at 0
    "(a[i] if a[j] > 0 else -b[i])",                              # a condition on a field
    "exp(M[i, j] / 8)", "M[j, i] * b[(i + j) % n]", "max(a[i], b[j])", "1 / (1 + s ** 2)",
    "sum(M[i, k] * M[j, k] for k in range(n) if k != i)",
])
RISKY = st.tuples(st.lists(RISKY_TERMS, min_size=2, max_size=3), st.sampled_from(["+", "-", "*"]),
                  st.sampled_from(["", "i <= j", "i == j", "(i + j) % 2 == 0"])).map(
    lambda t: (f"({t[0][0]}) if {t[2]} else ({f' {t[1]} '.join(t[0][1:])})" if t[2]
               else f" {t[1]} ".join(f"({x})" for x in t[0])))
RISKY_SHAPES = {"a": "[n]", "b": "[n]", "M": "[n, n]", "s": "[]"}


def _risky_spec(expr: str) -> str:
    import re

    used = [f for f in RISKY_SHAPES if re.search(rf"\b{f}\b", expr)]
    fields = "{" + ", ".join(f"{f}: {RISKY_SHAPES[f]}" for f in used) + "}"
    return f"name: Risky\nsizes: [n]\nfields: {fields}\nsize: [n, n]\ngetindex: {_quote(expr)}\n"


def _explain_text(text: str, instance: bool, tmp: str, module=None) -> str:
    from rulegen.explain import explain

    path = os.path.join(tmp, "spec.yaml")
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as fh:
        fh.write(text)
    out = explain(path, instance=instance, module=module)
    assert "Derivative(" not in out and "Where(" not in out, out
    return out


@given(st.one_of(EXPRESSIONS.map(lambda e: SPEC_HEAD + f"getindex: {_quote(e)}\n"), RISKY.map(_risky_spec)))
def test_explain_of_random_specs_that_build(text):
    """The symbolic part of explain (no kernels compiled) on every spec that builds."""
    if _compile(text) is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        _explain_text(text, False, tmp)


@settings(max_examples=int(os.environ.get("RULEGEN_FUZZ_TOOLS", "2")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(RISKY)
def test_explain_and_verify_of_random_specs(expr):
    """explain with its instance, and verify, on specs with poles, NaN, zeros,
    kinks and fields compared with indices: a report, never a traceback."""
    from rulegen.spec import load
    from rulegen.verify import load_module, verify_module

    text = _risky_spec(expr)
    source = _compile(text)
    assert source is not None, expr
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "risky.py")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(source)
        module = load_module(path)          # one import: explain and verify share its compiled kernels
        out = _explain_text(text, True, tmp, module)
        assert "parametrisation:" in out or "No small random instance" in out, out
        report = verify_module(load(os.path.join(tmp, "spec.yaml")), path, trials=1, module=module)
        assert report.errors or report.problems
        assert all(isinstance(p, str) and p for p in report.problems)
