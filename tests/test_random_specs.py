"""Randomly composed specs (products, functions of fields, sums with index
dependent bounds and filters, index conditions) against Python itself: the
oracle evaluates the getindex text as Python over complex field values, loop
by loop, takes J by complex step and numpy's pinv. The text is generated here
by the test, never read from a user.

RULEGEN_RANDOM_SPECS=<count> runs more than the default handful."""

import os
import random
import re

import numpy as np
import pytest

from helpers import assert_norm_close, check_derived_ops, expected_class, jacobian_complex, load_module, struct_vec, unflatten
from poison import poisoned_empty

FIELDS = {"a": "[n]", "b": "[n]", "M": "[n, n]", "s": "[]", "U": "[n, r]"}
SHAPES = {"a": ("n",), "b": ("n",), "M": ("n", "n"), "s": (), "U": ("n", "r")}

ATOMS = ["a[i]", "a[j]", "b[(i + j) % n]", "b[-1 - j]", "M[i, j]", "M[j, i]", "M[i, 0]", "s",
         "U[i, 0]", "U[j, r - 1]", "a[i // 2]",
         # powers with an index exponent (fields are drawn with exact zeros:
         # the power rule at 0), and values that vanish once an index is pinned
         "a[i] ** j", "b[j] ** (i + 1)", "(i - j) * a[j]"]
WRAPS = ["exp({} / 4)", "sqrt({} ** 2 + 1)", "log({} ** 2 + 2)", "({}) ** 3", "1 / (2 + {} ** 2)"]
SUMS = ["sum(U[i, k] * U[j, k] for k in range(r))",
        "sum(a[k] * M[k, j] for k in range(i + 1))",
        "sum(b[k] for k in range(n) if k != i)",
        "sum(sum(M[k, l] * a[l] for l in range(k)) for k in range(j + 1))",
        "sum(U[i, k] * s for k in range(r) if k <= j)"]
CONDS = ["i <= j", "i == j", "(i + j) % 2 == 0", "i != j", "j == i + 1", "i > j or j == 0"]


def _term(rng):
    kind = rng.random()
    if kind < 0.35:
        return " * ".join(rng.choice(ATOMS) for _ in range(rng.randint(1, 3)))
    if kind < 0.55:
        return rng.choice(WRAPS).format(rng.choice(ATOMS))
    if kind < 0.8:
        return rng.choice(SUMS)
    return f"{rng.choice(ATOMS)} * {rng.choice(SUMS)}"


def _entry(rng):
    parts = []
    for _ in range(rng.randint(1, 3)):
        t = _term(rng)
        if rng.random() < 0.4:
            other = _term(rng) if rng.random() < 0.5 else "0"
            t = f"({t} if {rng.choice(CONDS)} else {other})"
        parts.append(f"{rng.choice(['', '2 * ', '-0.5 * '])}{t}")
    return " + ".join(parts)


def _spec(name, entry):
    used = [f for f in FIELDS if re.search(rf"\b{f}\b", entry)]
    fields = ", ".join(f"{f}: {FIELDS[f]}" for f in used)
    return f"name: {name}\nsizes: [n, r]\nfields: {{{fields}}}\nsize: [n, n]\ngetindex: \"{entry}\"\n", used


COUNT = int(os.environ.get("RULEGEN_RANDOM_SPECS", "12"))


@pytest.fixture(scope="module")
def built(build_specs_once):
    rng = random.Random(20261126)
    cases, texts = {}, {}
    for k in range(COUNT):
        name = f"Random{k}"
        entry = _entry(rng)
        texts[f"{name}.yaml"], used = _spec(name, entry)
        cases[name] = (entry, used)
    return cases, build_specs_once(texts)


def _python_dense(entry, n, r):
    code = compile(entry, "<random entry>", "eval")
    names = {"exp": np.exp, "log": np.log, "sqrt": np.sqrt, "sum": sum, "range": range}

    def dense(f):
        out = np.zeros((n, n), dtype=complex)
        for i in range(n):
            for j in range(n):
                # one namespace: a generator expression sees globals, not locals
                out[i, j] = eval(code, dict(names, **f, i=i, j=j, n=n, r=r))
        return out if any(np.iscomplexobj(v) for v in f.values()) else out.real

    return dense


@pytest.mark.parametrize("k", range(COUNT))
@pytest.mark.parametrize("n,r", [(3, 2), (1, 1)])
def test_random_spec_against_python(built, k, n, r):
    cases, out = built
    name = f"Random{k}"
    entry, used = cases[name]
    mod = load_module(str(out / f"random{k}.py"))
    cls = getattr(mod, name)
    rng = np.random.default_rng(k)
    fields = {f: (float(rng.uniform(0.5, 1.5)) if f == "s" else
                  rng.standard_normal(tuple({"n": n, "r": r}[d] for d in SHAPES[f]))) for f in used}
    for f in ("a", "b"):
        if f in fields and k % 2 == 0:
            fields[f][0] = 0.0          # a node at zero
    extra = {"r": r} if "U" not in used else {}
    extra.update({"n": n} if not any(f in used for f in ("a", "b", "M", "U")) else {})
    x = cls(**fields, **extra)
    dense = _python_dense(entry, n, r)
    J = jacobian_complex(dense, fields, used)
    sv = np.linalg.svd(J, compute_uv=False) if J.size else np.zeros(0)
    big = sv[0] if sv.size else 0.0
    kept = sv[sv > 1e-10 * big] if big else sv[:0]
    if kept.size and kept[-1] < 1e-6 * big:
        pytest.skip(f"J is ill-conditioned at this x (σ_min/σ_max = {kept[-1] / big:.1e}): pinv is not well defined")
    P = np.linalg.pinv(J, rcond=1e-10)
    np.testing.assert_allclose(mod.destructure(x), dense(fields), rtol=1e-12, atol=1e-12, err_msg=entry)
    with poisoned_empty(mod):       # an output allocated with np.empty must be written everywhere
        np.testing.assert_allclose(mod.destructure(x), dense(fields), rtol=1e-12, atol=1e-12, err_msg=entry)
    t = rng.standard_normal(J.shape[1])
    tx = cls(**unflatten(t, fields, used), **extra)
    Y = rng.standard_normal((n, n))

    def close(got, want, what):
        assert_norm_close(got, want, f"{what} of {entry!r}")

    close(mod.destructure_pushforward(x, tx), J @ t, "destructure_pushforward")
    with poisoned_empty(mod):
        close(mod.destructure_pushforward(x, tx), J @ t, "destructure_pushforward (poisoned np.empty)")
    close(struct_vec(mod.destructure_pullback(x, Y), used), J.T @ Y.ravel(), "destructure_pullback")
    close(struct_vec(mod.restructure_pushforward(x, Y), used), P @ Y.ravel(), "restructure_pushforward")
    close(mod.restructure_pullback(x, tx), P.T @ t, "restructure_pullback")
    close(mod.project(x, Y), J @ P @ Y.ravel(), "project")
    Jr = J.copy()
    Jr[np.abs(Jr) < 1e-14 * max(big, 1)] = 0
    assert mod.parametrisation(x) == expected_class(Jr), entry
    check_derived_ops(mod, x, np.asarray(dense(fields), dtype=float), J, used, rng, rtol=1e-9)
