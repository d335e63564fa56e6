"""``rulegen verify``: numerical checks of generated modules, independent of
the derivation that produced them.

At random sizes and random points, using nothing but the module's public
functions and finite differences of its ``destructure``:

* ``destructure_pushforward`` against central differences of ``destructure``;
* ``destructure_pullback`` by the dot-product test ⟨Jθ̇, Ȳ⟩ = ⟨θ̇, JᵀȲ⟩;
* ``restructure_pushforward`` by the Penrose identities J J⁺ J = J and
  J⁺ J J⁺ = J⁺ (through the maps) and J⁺J symmetric;
* ``restructure_pullback`` as the adjoint of ``restructure_pushforward``;
* ``project`` = J J⁺, idempotent;
* ``matvec``, ``rmatvec``, ``bilinear_pullback``, ``diagonal`` and
  ``diagonal_pullback`` against ``destructure`` and ``destructure_pullback``.

Each map gets its worst relative error; one over the tolerance fails the
module, naming the map.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

TOLERANCE = {"destructure_pushforward": 1e-5}     # finite differences
DEFAULT_TOLERANCE = 1e-7


@dataclass
class Report:
    module: str
    errors: dict = field(default_factory=dict)       # map -> worst relative error
    problems: list = field(default_factory=list)     # messages that are not errors of a map

    def record(self, name: str, got, want) -> None:
        got, want = np.ravel(np.asarray(got, dtype=float)), np.ravel(np.asarray(want, dtype=float))
        scale = max(np.linalg.norm(want), np.linalg.norm(got), 1e-300)
        err = float(np.linalg.norm(got - want) / scale) if got.size or want.size else 0.0
        if not np.isfinite(err):
            err = float("inf")
        self.errors[name] = max(self.errors.get(name, 0.0), err)

    def failures(self) -> list:
        return [name for name, err in self.errors.items()
                if not err <= TOLERANCE.get(name, DEFAULT_TOLERANCE)]


def load_module(path: str):
    """Import a generated module from its file under a stable private name."""
    path = os.path.abspath(path)
    name = "_rulegen_verify_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _instance_sizes(spec, rng):
    """Random small sizes for which every field shape and the matrix are valid."""
    for _ in range(200):
        values = {s: int(rng.integers(1, 6)) for s in spec.sizes}
        shapes = {f.name: tuple(int(d.xreplace(values)) for d in f.shape) for f in spec.fields}
        dims = [int(d.xreplace(values)) for d in spec.size]
        if all(d >= 0 for shp in shapes.values() for d in shp) and all(d >= 1 for d in dims):
            return {s.name: v for s, v in values.items()}, shapes
    raise ValueError("no small sizes give valid field shapes")


def _vec(obj, names):
    return np.concatenate([np.ravel(np.asarray(getattr(obj, n), dtype=float)) for n in names]) \
        if names else np.zeros(0)


def _struct(cls, names, shapes, vec, sizes):
    out, k = {}, 0
    for n in names:
        size = int(np.prod(shapes[n]))
        part = vec[k:k + size]
        out[n] = float(part[0]) if shapes[n] == () else part.reshape(shapes[n])
        k += size
    return cls(**out, **sizes)


def verify_module(spec, path: str, trials: int = 3, seed: int = 0) -> Report:
    """Check the module at ``path`` built from ``spec``."""
    report = Report(os.path.basename(path))
    try:
        mod = load_module(path)
        cls = getattr(mod, spec.name)
    except Exception as exc:    # a module that does not import is a failure, not a crash
        report.problems.append(f"cannot import {path}: {type(exc).__name__}: {exc}")
        return report
    names = [f.name for f in spec.fields]
    rng = np.random.default_rng(seed)
    for _ in range(trials):
        sizes, shapes = _instance_sizes(spec, rng)
        p = sum(int(np.prod(s)) for s in shapes.values())
        theta = rng.uniform(0.5, 1.5, p)      # positive: log and sqrt of fields stay defined
        x = _struct(cls, names, shapes, theta, sizes)
        m, n = x.shape
        t = rng.standard_normal(p)
        tx = _struct(cls, names, shapes, t, sizes)
        Y = rng.standard_normal((m, n))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _check(mod, cls, names, shapes, sizes, x, theta, t, tx, Y, rng, report)
    return report


def _check(mod, cls, names, shapes, sizes, x, theta, t, tx, Y, rng, report):
    m, n = x.shape
    D = mod.destructure
    push = mod.destructure_pushforward(x, tx)
    # pushforward against central differences of destructure
    h = 1e-6
    fd = (D(_struct(cls, names, shapes, theta + h * t, sizes))
          - D(_struct(cls, names, shapes, theta - h * t, sizes))) / (2 * h)
    report.record("destructure_pushforward", push, fd)
    # pullback: the dot-product test
    pull = _vec(mod.destructure_pullback(x, Y), names)
    report.record("destructure_pullback", np.dot(t, pull), np.sum(push * Y))
    # restructure_pushforward: Penrose identities through the maps
    def J(vec):
        return mod.destructure_pushforward(x, _struct(cls, names, shapes, vec, sizes))

    def Jp(mat):
        return _vec(mod.restructure_pushforward(x, mat), names)

    report.record("restructure_pushforward", J(Jp(push)), push)                      # J J⁺ J = J
    jp = Jp(Y)
    report.record("restructure_pushforward", Jp(J(jp)), jp)                           # J⁺ J J⁺ = J⁺
    s = rng.standard_normal(t.size)
    report.record("restructure_pushforward", np.dot(Jp(J(t)), s), np.dot(t, Jp(J(s))))  # J⁺J symmetric
    # restructure_pullback: the adjoint of restructure_pushforward
    report.record("restructure_pullback", np.sum(mod.restructure_pullback(x, tx) * Y), np.dot(t, jp))
    # project = J J⁺, idempotent
    P = mod.project(x, Y)
    report.record("project", P, J(jp))
    report.record("project", mod.project(x, P), P)
    # derived operations against destructure and destructure_pullback
    dense = D(x)
    v, u = rng.standard_normal((n, 2)), rng.standard_normal((m, 2))
    report.record("matvec", mod.matvec(x, v), dense @ v)
    report.record("rmatvec", mod.rmatvec(x, u), dense.T @ u)
    report.record("bilinear_pullback", _vec(mod.bilinear_pullback(x, u, v), names),
                  _vec(mod.destructure_pullback(x, u @ v.T), names))
    report.record("diagonal", mod.diagonal(x), np.diagonal(dense))
    d = rng.standard_normal(min(m, n))
    Dm = np.zeros((m, n))
    Dm[np.arange(d.size), np.arange(d.size)] = d
    report.record("diagonal_pullback", _vec(mod.diagonal_pullback(x, d), names),
                  _vec(mod.destructure_pullback(x, Dm), names))

