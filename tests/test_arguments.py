"""Run-time arguments: conversions that must work, and clear errors before any kernel runs."""

import numpy as np
import pytest

from helpers import generated


@pytest.fixture(scope="module")
def toe():
    return generated("toeplitz")


def test_integer_float32_and_noncontiguous_inputs(toe):
    x64 = toe.Toeplitz(col=np.array([1.0, 2.0, 3.0]), row=np.array([0.0, 4.0, 5.0]))
    xi = toe.Toeplitz(col=[1, 2, 3], row=[0, 4, 5])
    x32 = toe.Toeplitz(col=np.array([1, 2, 3], np.float32), row=np.array([0, 4, 5], np.float32))
    strided = np.array([1.0, -1, 2.0, -1, 3.0, -1])[::2]
    xs = toe.Toeplitz(col=strided, row=[0, 4, 5])
    for x in (xi, x32, xs):
        assert x.col.dtype == (np.float32 if x is x32 else np.float64)     # float32 stays float32
        np.testing.assert_array_equal(toe.destructure(x), toe.destructure(x64))
    ybar = np.arange(9, dtype=np.int32).reshape(3, 3).T       # integer and non-contiguous
    np.testing.assert_array_equal(toe.destructure_pullback(x64, ybar).col,
                                  toe.destructure_pullback(x64, np.ascontiguousarray(ybar, float)).col)


def test_wrong_dense_shape_names_argument(toe):
    x = toe.Toeplitz(col=[1, 2, 3], row=[0, 4, 5])
    with pytest.raises(ValueError, match=r"project: argument 'ybar' must have shape \(3, 3\), got \(3, 4\)"):
        toe.project(x, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="'ydot'"):
        toe.restructure_pushforward(x, np.zeros(9))


def test_inconsistent_fields(toe):
    with pytest.raises(ValueError, match=r"field 'row' must have shape \(n,\) = \(3,\)"):
        toe.Toeplitz(col=[1, 2, 3], row=[1, 2])
    with pytest.raises(ValueError, match="field 'col' must be a 1-dimensional array"):
        toe.Toeplitz(col=1.0, row=[1.0])
    with pytest.raises(TypeError, match="col"):
        toe.Toeplitz(row=[1.0])
    with pytest.raises(TypeError, match=r"unknown argument 'rows' \(did you mean 'row'\?\); fields: col, row; sizes: n"):
        toe.Toeplitz(col=[1.0], row=[1.0], rows=[1.0])
    assert toe.Toeplitz(col=np.array([1j]), row=[1.0]).dtype == np.complex128    # complex: accepted
    with pytest.raises(TypeError, match="real or complex numbers"):
        toe.Toeplitz(col=["a"], row=[1.0])
    with pytest.raises(ValueError, match="disagrees"):
        toe.Toeplitz(col=[1.0, 2.0], row=[1.0, 2.0], n=3)


def test_tangent_of_other_size_or_type(toe):
    x = toe.Toeplitz(col=[1, 2, 3], row=[0, 4, 5])
    with pytest.raises(ValueError, match=r"argument 'dx' must have the sizes of x \(n=3\), got \(n=2\)"):
        toe.destructure_pushforward(x, toe.Toeplitz(col=[1, 2], row=[1, 2]))
    with pytest.raises(TypeError, match="argument 'xbar' must be of type Toeplitz"):
        toe.restructure_pullback(x, np.zeros(3))
    with pytest.raises(TypeError, match="argument 'x' must be of type Toeplitz"):
        toe.destructure(np.zeros((3, 3)))


def test_sizes_inferred_from_affine_shapes_and_given_when_needed():
    hank = generated("hankel")
    assert hank.Hankel(h=np.arange(7.0)).n == 4
    with pytest.raises(ValueError, match="no non-negative integer size 'n'"):
        hank.Hankel(h=np.arange(6.0))
    fill = generated("fill")
    with pytest.raises(TypeError, match="size 'm' cannot be inferred"):
        fill.Fill(value=1.0, n=2)
    with pytest.raises(ValueError, match="non-negative"):
        fill.Fill(value=1.0, m=-1, n=2)
    band = generated("banded")
    b = band.Banded(data=np.ones((4, 5)), m=6, kl=1, ku=2)
    assert (b.m, b.n, b.kl, b.ku, b.shape) == (6, 5, 1, 2, (6, 5))
    with pytest.raises(ValueError, match=r"field 'data' must have shape \(kl \+ ku \+ 1, n\)"):
        band.Banded(data=np.ones((4, 5)), m=6, kl=1, ku=1)
    tri = generated("tridiagonal")
    with pytest.raises(ValueError, match="negative dimension"):
        tri.Tridiagonal(dl=np.ones(0), d=np.ones(0), du=np.ones(0))


def test_nan_propagates_only_where_it_is_read():
    diag = generated("diagonal")
    x = diag.Diagonal(diag=[1.0, 2.0, 3.0])
    ybar = np.zeros((3, 3))
    ybar[0, 2] = np.nan                        # off the diagonal: never read
    ybar[1, 1] = np.inf
    g = diag.destructure_pullback(x, ybar).diag
    assert g[0] == 0 and g[1] == np.inf and g[2] == 0
    sym = generated("symmetric")
    y = np.zeros((3, 3))
    y[2, 0] = np.nan
    p = sym.project(sym.Symmetric(data=np.eye(3)), y)
    assert np.isnan(p[2, 0]) and np.isnan(p[0, 2]) and np.isfinite(np.delete(p.ravel(), [2, 6])).all()


def test_scalar_field_is_a_float():
    fill = generated("fill")
    x = fill.Fill(value=2, m=2, n=3)
    assert isinstance(x.value, float) and x.shape == (2, 3)
    assert "Fill(value=2.0" in repr(x)


def test_structural_tangents_form_a_vector_space():
    from helpers import generated

    mod = generated("scaled_matrix")
    a = mod.ScaledMatrix(scale=1.0, data=np.ones((2, 2)))
    b = mod.ScaledMatrix(scale=2.0, data=np.arange(4.0).reshape(2, 2))
    s = a + 2 * b - (-a) * 0.5
    assert s.scale == pytest.approx(1.0 + 4.0 + 0.5)
    np.testing.assert_allclose(s.data, 1.5 + 2 * np.arange(4.0).reshape(2, 2))
    with pytest.raises(ValueError, match="must have the sizes"):
        a + mod.ScaledMatrix(scale=1.0, data=np.ones((2, 3)))
    with pytest.raises(TypeError):
        a + 1.0
