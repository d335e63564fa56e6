"""Every generated map of every built-in spec against the independent oracle:
the hand-written dense matrix, its Jacobian column by column (central
differences, exact for entries affine in θ; complex step for the others),
numpy's pinv. The pseudo-inverse maps must agree to 1e-8 relative."""

import zlib

import numpy as np
import pytest

from helpers import assert_norm_close, check_derived_ops, expected_class, generated, jacobian, jacobian_complex, struct_vec, unflatten
from poison import PoisonedNumpy
from references import REFERENCES, instance

CASES = [(key, sizes) for key, ref in REFERENCES.items() for sizes in ref.sizes]
IDS = [f"{key}-" + "-".join(f"{k}{v}" for k, v in sizes.items()) for key, sizes in CASES]


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    key, sizes = request.param
    ref = REFERENCES[key]
    # a seed fixed by the case (hash() of a str changes from process to process)
    rng = np.random.default_rng(zlib.crc32(f"{key} {sorted(sizes.items())}".encode()))
    fields, extra, dense = instance(ref, rng, sizes)
    mod = generated(ref.module)
    cls = getattr(mod, ref.cls)
    x = cls(**fields, **extra)
    J = (jacobian_complex if ref.analytic else jacobian)(dense, fields, ref.order)
    return dict(ref=ref, mod=mod, cls=cls, x=x, fields=fields, extra=extra, dense=dense, J=J, rng=rng)


def assert_close(got, want, what=""):
    assert_norm_close(got, want, what, atol=1e-12)


def _random_struct(case):
    ref, rng = case["ref"], case["rng"]
    p = case["J"].shape[1]
    vec = rng.standard_normal(p)
    f = unflatten(vec, case["fields"], ref.order)
    return case["cls"](**f, **case["extra"]), vec


def test_destructure(case):
    Y = case["mod"].destructure(case["x"])
    np.testing.assert_allclose(Y, case["dense"](case["fields"]), rtol=0, atol=1e-14)


def test_destructure_pushforward(case):
    dx, vec = _random_struct(case)
    got = case["mod"].destructure_pushforward(case["x"], dx)
    np.testing.assert_allclose(got.ravel(), case["J"] @ vec, atol=1e-12, rtol=1e-12)


def test_destructure_pullback(case):
    x = case["x"]
    ybar = case["rng"].standard_normal(x.shape)
    got = case["mod"].destructure_pullback(x, ybar)
    np.testing.assert_allclose(struct_vec(got, case["ref"].order), case["J"].T @ ybar.ravel(),
                               atol=1e-12, rtol=1e-12)


def test_restructure_pushforward(case):
    x = case["x"]
    ydot = case["rng"].standard_normal(x.shape)
    got = case["mod"].restructure_pushforward(x, ydot)
    want = np.linalg.pinv(case["J"]) @ ydot.ravel() if case["J"].size else np.zeros(case["J"].shape[1])
    assert_close(struct_vec(got, case["ref"].order), want, "restructure_pushforward")


def test_restructure_pullback(case):
    xbar, vec = _random_struct(case)
    got = case["mod"].restructure_pullback(case["x"], xbar)
    want = np.linalg.pinv(case["J"]).T @ vec if case["J"].size else np.zeros(case["J"].shape[0])
    assert_close(got, want, "restructure_pullback")


def test_project(case):
    x = case["x"]
    ybar = case["rng"].standard_normal(x.shape)
    got = case["mod"].project(x, ybar)
    J = case["J"]
    want = J @ np.linalg.pinv(J) @ ybar.ravel() if J.size else np.zeros(J.shape[0])
    assert_close(got, want, "project")


def test_parametrisation(case):
    assert case["mod"].parametrisation(case["x"]) == expected_class(case["J"])


def test_fields_and_sizes_are_attributes(case):
    x, ref = case["x"], case["ref"]
    for name in ref.order:
        np.testing.assert_array_equal(getattr(x, name), case["fields"][name])
    assert x.shape == case["dense"](case["fields"]).shape


def test_derived_operations(case):
    """matvec, rmatvec, bilinear_pullback, diagonal against the hand-written dense matrix."""
    Y = np.asarray(case["dense"](case["fields"]), dtype=float)
    check_derived_ops(case["mod"], case["x"], Y, case["J"], case["ref"].order, case["rng"])


def test_outputs_allocated_empty_are_written_everywhere(case, monkeypatch):
    """An output a kernel allocates with ``np.empty`` has every entry written."""
    monkeypatch.setattr(case["mod"], "np", PoisonedNumpy())
    x, mod = case["x"], case["mod"]
    np.testing.assert_allclose(mod.destructure(x), case["dense"](case["fields"]), rtol=0, atol=1e-14)
    dx, vec = _random_struct(case)
    np.testing.assert_allclose(mod.destructure_pushforward(x, dx).ravel(), case["J"] @ vec, atol=1e-12, rtol=1e-12)
