"""Shared test helpers: loading generated modules, and the independent route
to every reference value (dense functions written by hand in numpy, their
Jacobian column by column, numpy.linalg.pinv)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATED = os.path.join(ROOT, "generated")
SPECS = os.path.join(ROOT, "specs")


def load_module(path: str):
    """Import a generated module from its file."""
    # numba's on-disk cache records the module's name: keep it stable per path,
    # and registered in sys.modules, so a cached kernel can be loaded again.
    path = os.path.abspath(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    name = f"rulegen_test_{hashlib.sha1(path.encode()).hexdigest()[:10]}_{stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_CACHE: dict = {}


def generated(module_name: str):
    """The committed generated module ``generated/<module_name>.py`` (loaded once)."""
    if module_name not in _CACHE:
        _CACHE[module_name] = load_module(os.path.join(GENERATED, module_name + ".py"))
    return _CACHE[module_name]


def build(tmp_path, yaml_text: str, filename: str = "spec.yaml"):
    """Write a spec, build it with the CLI into tmp_path, import the module."""
    spec_path = tmp_path / filename
    spec_path.write_text(yaml_text)
    out = tmp_path / "out"
    proc = run_cli("build", str(spec_path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    (module_file,) = [p for p in out.iterdir() if p.suffix == ".py" and p.name != "__init__.py"]
    return load_module(str(module_file))


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rulegen.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT)


# ---------------------------------------------------------------------------
# The independent reference: flatten fields, differentiate a hand-written
# dense function column by column, take numpy's pseudo-inverse.

def flatten(fields: dict, order) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(fields[name], dtype=float)) for name in order]) \
        if order else np.zeros(0)


def unflatten(vec: np.ndarray, like: dict, order) -> dict:
    out, k = {}, 0
    for name in order:
        shape = np.shape(like[name])
        size = int(np.prod(shape))
        part = vec[k:k + size]
        out[name] = part[0] if shape == () else part.reshape(shape)
        k += size
    return out


def jacobian(dense, fields: dict, order, step: float = 1.0) -> np.ndarray:
    """J = ∂vec(Y)/∂θ by central differences; exact for entries affine in θ."""
    theta = flatten(fields, order)
    y0 = np.asarray(dense(fields))
    cols = []
    for k in range(theta.size):
        e = np.zeros_like(theta)
        e[k] = step
        plus = np.asarray(dense(unflatten(theta + e, fields, order)))
        minus = np.asarray(dense(unflatten(theta - e, fields, order)))
        cols.append(((plus - minus) / (2 * step)).ravel())
    if not cols:
        return np.zeros((y0.size, 0))
    return np.stack(cols, axis=1)


def jacobian_complex(dense, fields: dict, order, h: float = 1e-30) -> np.ndarray:
    """J = ∂vec(Y)/∂θ by complex-step differentiation: Im(D(θ + i·h·e_k))/h,
    exact to rounding for an analytic ``dense`` (no cancellation)."""
    theta = flatten(fields, order)
    y0 = np.asarray(dense(fields))
    cols = []
    for k in range(theta.size):
        step = np.zeros(theta.size, dtype=complex)
        step[k] = 1j * h
        cols.append((np.asarray(dense(unflatten(theta + step, fields, order))).imag / h).ravel())
    if not cols:
        return np.zeros((y0.size, 0))
    return np.stack(cols, axis=1)


def expected_class(J: np.ndarray) -> str:
    N, _ = J.shape
    used = int(np.count_nonzero(np.any(J != 0, axis=0)))
    r = np.linalg.matrix_rank(J) if J.size else 0
    if r == used == N:
        return "exact"
    if r == used < N:
        return "under"
    if r == N < used:
        return "over"
    return "deficient"


def struct_vec(obj, order) -> np.ndarray:
    return flatten({name: getattr(obj, name) for name in order}, order)


def check_all_maps(mod, cls, fields: dict, extra: dict, dense, order, seed=0, atol=1e-10, analytic=False):
    """Every map of the contract against the oracle (J from ``dense``: central
    differences, exact for entries affine in θ, or with ``analytic`` the
    complex step; numpy's pinv)."""
    rng = np.random.default_rng(seed)
    x = cls(**fields, **extra)
    J = (jacobian_complex if analytic else jacobian)(dense, fields, order)
    P = np.linalg.pinv(J) if J.size else np.zeros(J.shape[::-1])
    Y = np.asarray(dense(fields))
    np.testing.assert_allclose(mod.destructure(x), Y, atol=1e-13, err_msg="destructure")
    p = J.shape[1]
    tvec = rng.standard_normal(p)
    t = cls(**unflatten(tvec, fields, order), **extra)
    ybar = rng.standard_normal(Y.shape)
    np.testing.assert_allclose(mod.destructure_pushforward(x, t).ravel(), J @ tvec, atol=atol,
                               err_msg="destructure_pushforward")
    np.testing.assert_allclose(struct_vec(mod.destructure_pullback(x, ybar), order), J.T @ ybar.ravel(),
                               atol=atol, err_msg="destructure_pullback")
    np.testing.assert_allclose(struct_vec(mod.restructure_pushforward(x, ybar), order), P @ ybar.ravel(),
                               atol=atol, err_msg="restructure_pushforward")
    np.testing.assert_allclose(mod.restructure_pullback(x, t).ravel(), P.T @ tvec, atol=atol,
                               err_msg="restructure_pullback")
    np.testing.assert_allclose(mod.project(x, ybar).ravel(), J @ (P @ ybar.ravel()), atol=atol,
                               err_msg="project")
    assert mod.parametrisation(x) == expected_class(J)
    check_derived_ops(mod, x, Y, J, order, rng)


def assert_norm_close(got, want, what="", rtol=1e-8, atol=1e-10):
    """‖got - want‖ <= rtol ‖want‖ + atol: the pseudo-inverse maps are checked
    norm-wise, to the relative accuracy the issue asks for."""
    err = np.linalg.norm(np.ravel(got) - np.ravel(want))
    bound = rtol * np.linalg.norm(want) + atol
    assert err <= bound, f"{what}: error {err:.2e}, |want| {np.linalg.norm(want):.2e}"


def check_derived_ops(mod, x, Y, J, order, rng, rtol=1e-10):
    """matvec, rmatvec, bilinear_pullback, diagonal and diagonal_pullback against
    the dense matrix Y and the oracle J (never the code's own destructure)."""
    m, n = Y.shape

    def close(got, want, what):
        assert_norm_close(got, want, what, rtol=rtol, atol=rtol)

    for k in (None, 1, 3):
        v = rng.standard_normal(n if k is None else (n, k))
        u = rng.standard_normal(m if k is None else (m, k))
        got = mod.matvec(x, v)
        assert got.shape == ((m,) if k is None else (m, k))
        close(got, Y @ v, "matvec")
        got = mod.rmatvec(x, u)
        assert got.shape == ((n,) if k is None else (n, k))
        close(got, Y.T @ u, "rmatvec")
        U = u if u.ndim == 2 else u[:, None]
        V = v if v.ndim == 2 else v[:, None]
        close(struct_vec(mod.bilinear_pullback(x, u, v), order), J.T @ (U @ V.T).ravel(), "bilinear_pullback")
    close(mod.diagonal(x), np.diagonal(Y), "diagonal")
    d = rng.standard_normal(min(m, n))
    D = np.zeros((m, n))
    D[np.arange(len(d)), np.arange(len(d))] = d
    close(struct_vec(mod.diagonal_pullback(x, d), order), J.T @ D.ravel(), "diagonal_pullback")
