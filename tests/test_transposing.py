"""Gather-form transposes (rulegen.transpose): for gather types whose index
maps invert, destructure_pullback is written element by element from the
pre-images and project in one pass with 1/w folded in. Every map that goes
through them is compared to the independent oracle (tests/complex_oracle.py:
a dense matrix from Python loops, its real Jacobian column by column,
numpy's pinv), at sizes where the 4 × 4 tiles engage and at 0 and 1, with
batches, float32 and complex fields."""

from __future__ import annotations

import numpy as np
import pytest

from complex_oracle import Oracle
from helpers import load_module

from rulegen import transpose
from rulegen.cli import compile_spec
from rulegen.derive import derive
from rulegen.spec import load


def _loops(entry):
    """A dense function from a per-entry function, by Python loops."""
    def dense(f, n):
        out = np.zeros((n, n), dtype=complex if any(np.iscomplexobj(v) for v in f.values()) else float)
        for i in range(n):
            for j in range(n):
                out[i, j] = entry(f, i, j)
        return out
    return dense


def _spec(name, fields, getindex):
    lines = "".join(f"  {k}: {v}\n" for k, v in fields.items())
    return f"name: {name}\nsizes: [n]\nfields:\n{lines}size: [n, n]\ngetindex: \"{getindex}\"\n"


# name -> (spec, field shapes of n, entry by hand)
CASES = {
    "Sym": (_spec("Sym", {"data": "[n, n]"}, "data[i, j] if i <= j else data[j, i]"),
            lambda n: {"data": (n, n)},
            lambda f, i, j: f["data"][i, j] if i <= j else f["data"][j, i]),
    "Skew": (_spec("Skew", {"data": "[n, n]"}, "data[i, j] if i < j else (-data[j, i] if i > j else 0)"),
             lambda n: {"data": (n, n)},
             lambda f, i, j: f["data"][i, j] if i < j else (-f["data"][j, i] if i > j else 0)),
    "Herm": (_spec("Herm", {"data": "[n, n]"},
                   "real(data[i, i]) if i == j else (data[i, j] if i < j else conj(data[j, i]))"),
             lambda n: {"data": (n, n)},
             lambda f, i, j: (f["data"][i, i].real if i == j else
                              (f["data"][i, j] if i < j else np.conj(f["data"][j, i])))),
    "LowSym": (_spec("LowSym", {"data": "[n, n]"}, "data[i, j] if i >= j else data[j, i]"),
               lambda n: {"data": (n, n)},
               lambda f, i, j: f["data"][i, j] if i >= j else f["data"][j, i]),
    # a shifted transposed read with a coefficient: w = 1 + 4 where both meet
    "Shift": (_spec("Shift", {"data": "[n + 1, n + 1]"}, "2 * data[j, i + 1] if i > j else data[i, j]"),
              lambda n: {"data": (n + 1, n + 1)},
              lambda f, i, j: 2 * f["data"][j, i + 1] if i > j else f["data"][i, j]),
    # four regions on one field: the diagonal, the first sub-diagonal, the rest of both triangles
    "Four": (_spec("Four", {"data": "[n, n]"},
                   "0.5 * data[i, i] if i == j else (data[i, j] if i < j else "
                   "(data[j, i] if i == j + 1 else 2 * data[j, i]))"),
             lambda n: {"data": (n, n)},
             lambda f, i, j: (0.5 * f["data"][i, i] if i == j else (f["data"][i, j] if i < j else
                              (f["data"][j, i] if i == j + 1 else 2 * f["data"][j, i])))),
    # vector fields, pinned regions, and a matrix field read transposed
    "Mixed": (_spec("Mixed", {"d": "[n]", "e": "[n]", "u": "[n, n]"},
                    "3 * d[i] if i == j else (e[j] if j == i + 1 else (u[i, j] if i < j else -u[j, i]))"),
              lambda n: {"d": (n,), "e": (n,), "u": (n, n)},
              lambda f, i, j: (3 * f["d"][i] if i == j else (f["e"][j] if j == i + 1 else
                               (f["u"][i, j] if i < j else -f["u"][j, i])))),
    # destructure has no tile move here (its nest keeps a test), the gather-form kernels do
    "Guarded": (_spec("Guarded", {"a": "[n]", "M": "[n + 1, n + 1]"},
                      "2 * a[i] if j == i + 1 else (M[j, i + 1] if i > j + 1 else M[i, j + 1])"),
                lambda n: {"a": (n,), "M": (n + 1, n + 1)},
                lambda f, i, j: (2 * f["a"][i] if j == i + 1 else
                                 (f["M"][j, i + 1] if i > j + 1 else f["M"][i, j + 1]))),
}

SIZES = [0, 1, 2, 9, 13]


_BUILT: dict = {}


def _module(tmp_path_factory, name):
    """The case's module, built in-process into a temporary folder once per session."""
    cache = _BUILT
    if name not in cache:
        out = tmp_path_factory.mktemp("transposing")
        path = out / f"{name.lower()}.yaml"
        path.write_text(CASES[name][0])
        (built,) = compile_spec(str(path))
        target = out / built.module
        target.write_text(built.source)
        cache[name] = load_module(str(target))
    return cache[name]


def _fields(name, n, rng, dtype=float):
    shapes = CASES[name][1](n)
    make = (lambda s: rng.standard_normal(s) + 1j * rng.standard_normal(s)) if dtype == complex \
        else (lambda s: rng.standard_normal(s).astype(dtype))
    return {k: make(s) for k, s in shapes.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_plan_is_found(tmp_path, name):
    """Each case takes the gather route, project included."""
    path = tmp_path / "s.yaml"
    path.write_text(CASES[name][0])
    plan = transpose.plan(derive(load(str(path))))
    assert plan is not None and plan.project is not None


@pytest.mark.parametrize("dtype", [float, complex])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_maps_against_the_oracle(tmp_path_factory, name, n, dtype):
    mod = _module(tmp_path_factory, name)
    cls = getattr(mod, name)
    rng = np.random.default_rng(n * 7 + len(name))
    fields = _fields(name, n, rng, dtype)
    dense = _loops(CASES[name][2])
    oracle = Oracle(lambda f: dense(f, n), fields, list(fields), 1.0)
    x = cls(**fields)
    ybar = rng.standard_normal((n, n)) + (1j * rng.standard_normal((n, n)) if dtype == complex else 0)
    got = mod.destructure_pullback(x, ybar)
    for k, want in oracle.pullback(ybar).items():
        np.testing.assert_allclose(getattr(got, k), want, atol=1e-12, err_msg=f"pullback {k}")
    got = mod.restructure_pushforward(x, ybar)
    for k, want in oracle.pinv(ybar).items():
        np.testing.assert_allclose(getattr(got, k), want, atol=1e-12, err_msg=f"restructure_pushforward {k}")
    np.testing.assert_allclose(mod.project(x, ybar), oracle.project(ybar), atol=1e-12, err_msg="project")
    xbar = cls(**_fields(name, n, rng, dtype))
    np.testing.assert_allclose(mod.restructure_pullback(x, xbar), oracle.pinv_adjoint(xbar._asdict()),
                               atol=1e-12, err_msg="restructure_pullback")


@pytest.mark.parametrize("name", ["Sym", "Shift", "Mixed", "Herm"])
def test_batches_and_float32(tmp_path_factory, name):
    """A batch of instances against a broadcast batch of cotangents: each
    element as the single-instance oracle; float32 stays float32."""
    mod = _module(tmp_path_factory, name)
    cls = getattr(mod, name)
    n = 11
    rng = np.random.default_rng(3)
    dense = _loops(CASES[name][2])
    insts = [_fields(name, n, rng) for _ in range(2)]
    x = cls(**{k: np.stack([f[k] for f in insts]) for k in insts[0]})
    ybar = rng.standard_normal((3, 1, n, n))
    pulled, projected = mod.destructure_pullback(x, ybar), mod.project(x, ybar)
    assert projected.shape == (3, 2, n, n)
    for b in range(3):
        for a, f in enumerate(insts):
            oracle = Oracle(lambda g: dense(g, n), f, list(f), 1.0)
            for k, want in oracle.pullback(ybar[b, 0]).items():
                np.testing.assert_allclose(getattr(pulled, k)[b, a], want, atol=1e-12)
            np.testing.assert_allclose(projected[b, a], oracle.project(ybar[b, 0]), atol=1e-12)
    f32 = {k: v.astype(np.float32) for k, v in insts[0].items()}
    y32 = ybar[0, 0].astype(np.float32)
    oracle = Oracle(lambda g: dense(g, n), insts[0], list(insts[0]), 1.0)
    got = mod.project(cls(**f32), y32)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, oracle.project(y32.astype(float)), rtol=1e-5, atol=1e-5)
    pulled = mod.destructure_pullback(cls(**f32), y32)
    for k, want in oracle.pullback(y32.astype(float)).items():
        assert getattr(pulled, k).dtype == np.float32
        np.testing.assert_allclose(getattr(pulled, k), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("getindex", [
    "col[i - j] if i >= j else row[j - i]",      # Toeplitz: a line of pre-images
    "data[j, i - 1]",                            # wraps to the last column for i = 0
])
def test_no_plan_where_the_map_does_not_invert(tmp_path, getindex):
    fields = {"col": "[n]", "row": "[n]"} if "col" in getindex else {"data": "[n, n]"}
    path = tmp_path / "s.yaml"
    path.write_text(_spec("NoPlan", fields, getindex))
    assert transpose.plan(derive(load(str(path)))) is None


def test_a_wrong_inverse_fails_the_oracle(tmp_path, monkeypatch):
    """The oracle comparison catches a wrong pre-image: swap the inverse
    map's two indices (invisible for Symmetric, whose two regions swap
    roles; not for the skew-symmetric sign), rebuild, and the pullback and
    project differ."""
    real = transpose._inverse

    def swapped(read, condition, rows, cols):
        got = real(read, condition, rows, cols)
        if got is None:
            return None
        inv, where = got
        return {transpose.I: inv[transpose.J], transpose.J: inv[transpose.I]}, where
    monkeypatch.setattr(transpose, "_inverse", swapped)
    path = tmp_path / "wrong_skew.yaml"
    path.write_text(CASES["Skew"][0].replace("name: Skew", "name: WrongSkew"))
    (built,) = compile_spec(str(path))
    (tmp_path / built.module).write_text(built.source)
    mod = load_module(str(tmp_path / built.module))
    n = 9
    rng = np.random.default_rng(0)
    fields = _fields("Skew", n, rng)
    oracle = Oracle(lambda f: _loops(CASES["Skew"][2])(f, n), fields, ["data"], 1.0)
    x = mod.WrongSkew(**fields)
    ybar = rng.standard_normal((n, n))
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(mod.destructure_pullback(x, ybar).data, oracle.pullback(ybar)["data"], atol=1e-12)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(mod.project(x, ybar), oracle.project(ybar), atol=1e-12)
