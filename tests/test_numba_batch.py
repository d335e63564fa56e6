"""Batches and float32 in the numba target.

Every built-in spec with a batch (2, 3) whose fields broadcast (the first
field carries the whole batch, the others (3,) or (1, 3)), each map against
the independent oracle looped over the instances (the hand-written dense
matrix, its Jacobian column by column, numpy's pinv: tests/references.py);
float32 fields within 1e-5 (relative, norm-wise) of the float64 oracle;
numpy's promotion of mixed inputs; operands with batches of their own;
errors naming the arguments whose batch shapes do not broadcast; results
independent of the number of threads; LSQR over a batch."""

import itertools
import warnings
import zlib

import numba
import numpy as np
import pytest

from helpers import assert_norm_close, expected_class, generated, jacobian, jacobian_complex, struct_vec
from references import REFERENCES, instance

BATCH = (2, 3)


def _sizes(ref):
    """The largest of the reference's size configurations (a few entries)."""
    return max(ref.sizes, key=lambda s: (int(np.prod(list(s.values()))), sorted(s.items())))


def _batched_fields(ref, rng, sizes, dtype=np.float64):
    """(fields of each instance of BATCH, batched constructor keywords, size keywords):
    field 0 with the whole batch, the others broadcasting from (3,) or (1, 3)."""
    per = {}
    extra = None
    for b in itertools.product(*map(range, BATCH)):
        made, extra, dense = instance(ref, rng, sizes)
        per[b] = made
    batched = {}
    for k, name in enumerate(ref.order):
        full = np.array([[np.asarray(per[(i, j)][name], float) for j in range(BATCH[1])] for i in range(BATCH[0])])
        if k == 0:
            arr = full
        else:
            arr = full[0] if k % 2 else full[:1]            # (3, ...) or (1, 3, ...)
            for i, j in per:
                per[(i, j)][name] = full[0, j]
        batched[name] = arr.astype(dtype)
    if dtype != np.float64:      # the oracle sees the rounded values
        for b in per:
            per[b] = {name: np.asarray(per[b][name], dtype).astype(float) for name in ref.order}
    for b in per:
        per[b] = {name: (float(v) if np.ndim(v) == 0 else np.asarray(v, float)) for name, v in per[b].items()}
    return per, batched, extra, dense


def _oracle(ref, dense, fields):
    J = (jacobian_complex if ref.analytic else jacobian)(dense, fields, ref.order)
    P = np.linalg.pinv(J) if J.size else np.zeros(J.shape[::-1])
    return np.asarray(dense(fields), float), J, P


def _struct(ref, cls, extra, vecs, like, batch, dtype):
    """A batched structural instance whose instance b has the flat vector vecs[b]."""
    arrays = {}
    for name in ref.order:
        shape = np.shape(like[name])
        arrays[name] = np.zeros(batch + shape)
    offset = 0
    for name in ref.order:
        size = int(np.prod(np.shape(like[name])))
        for b, vec in vecs.items():
            arrays[name][b] = vec[offset:offset + size].reshape(np.shape(like[name]))
        offset += size
    return cls(**{k: v.astype(dtype) for k, v in arrays.items()}, **extra)


def _check_spec(key, dtype, rtol):
    ref = REFERENCES[key]
    mod = generated(ref.module)
    cls = getattr(mod, ref.cls)
    rng = np.random.default_rng(zlib.crc32(f"batch {key}".encode()))
    sizes = _sizes(ref)
    per, batched, extra, dense = _batched_fields(ref, rng, sizes, dtype)
    x = cls(**batched, **extra)
    assert x.batch_shape == BATCH and x.dtype == dtype
    oracle = {b: _oracle(ref, dense, f) for b, f in per.items()}
    Y0, J0, _ = oracle[(0, 0)]
    m, n = Y0.shape
    p = J0.shape[1]
    like = per[(0, 0)]
    k = 2

    def close(got, want, what):
        assert got.dtype == dtype, f"{key} {what}: dtype {got.dtype}"
        assert_norm_close(got.astype(float), want, f"{key} {what}", rtol=rtol, atol=rtol)

    # operands with batches of their own
    t_vecs = {(i, 0): rng.standard_normal(p) for i in range(BATCH[0])}          # batch (2, 1)
    t = _struct(ref, cls, extra, t_vecs, like, (BATCH[0], 1), dtype)
    ybar = rng.standard_normal((BATCH[1], m, n)).astype(dtype)                  # batch (3,)
    v = rng.standard_normal((BATCH[0], 1, n, k)).astype(dtype)                  # batch (2, 1)
    u = rng.standard_normal(m).astype(dtype)                                    # a vector, no batch
    U = rng.standard_normal((BATCH[1], m, k)).astype(dtype)
    dbar = rng.standard_normal((1, BATCH[1], min(m, n))).astype(dtype)
    Yb = mod.destructure(x)
    push = mod.destructure_pushforward(x, t)
    pull = mod.destructure_pullback(x, ybar)
    rpush = mod.restructure_pushforward(x, ybar)
    rpull = mod.restructure_pullback(x, t)
    proj = mod.project(x, ybar)
    kinds = mod.parametrisation(x)
    mv, rmv = mod.matvec(x, v), mod.rmatvec(x, u)
    bil = mod.bilinear_pullback(x, U, v)
    dia, diap = mod.diagonal(x), mod.diagonal_pullback(x, dbar)
    assert Yb.shape == BATCH + (m, n) and push.shape == BATCH + (m, n) and proj.shape == BATCH + (m, n)
    assert mv.shape == BATCH + (m, k) and rmv.shape == BATCH + (n,) and dia.shape == BATCH + (min(m, n),)
    for res in (pull, rpush, rpull, bil, diap):
        if hasattr(res, "batch_shape"):
            assert res.batch_shape == BATCH and res.dtype == dtype
    for (i, j), (Y, J, P) in oracle.items():
        b = (i, j)
        yb = ybar[j].astype(float).ravel()
        tv = t_vecs[(i, 0)].astype(dtype).astype(float)
        close(Yb[b], Y, "destructure")
        close(push[b].ravel(), J @ tv, "destructure_pushforward")
        close(_at(pull, b, ref.order), J.T @ yb, "destructure_pullback")
        close(_at(rpush, b, ref.order), P @ yb, "restructure_pushforward")
        close(rpull[b].ravel(), P.T @ tv, "restructure_pullback")
        close(proj[b].ravel(), J @ (P @ yb), "project")
        assert kinds[i][j] == expected_class(J), f"{key} parametrisation at {b}"
        vv = v[i, 0].astype(float)
        close(mv[b], Y @ vv, "matvec")
        close(rmv[b], Y.T @ u.astype(float), "rmatvec")
        close(_at(bil, b, ref.order), J.T @ (U[j].astype(float) @ vv.T).ravel(), "bilinear_pullback")
        close(dia[b], np.diagonal(Y), "diagonal")
        D = np.zeros((m, n))
        D[np.arange(min(m, n)), np.arange(min(m, n))] = dbar[0, j]
        close(_at(diap, b, ref.order), J.T @ D.ravel(), "diagonal_pullback")


def _at(obj, b, order):
    """Instance b of a batched structural result, as a flat float64 vector."""
    vec = np.concatenate([np.ravel(np.broadcast_to(getattr(obj, name), obj.batch_shape + np.shape(getattr(obj, name))[len(obj.batch_shape):])[b])
                          for name in order]) if order else np.zeros(0)
    return vec.astype(obj.dtype)


@pytest.mark.parametrize("key", sorted(REFERENCES))
def test_every_map_batched_against_the_oracle(key):
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a converged LSQR gives no warning
        _check_spec(key, np.float64, 1e-8)


@pytest.mark.parametrize("key", sorted(REFERENCES))
def test_float32_batched_within_1e5_of_the_float64_oracle(key):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_spec(key, np.float32, 1e-5)


def test_float32_in_float32_out_unbatched():
    sym = generated("symmetric")
    rng = np.random.default_rng(1)
    data = rng.standard_normal((6, 6)).astype(np.float32)
    x = sym.Symmetric(data=data)
    assert x.dtype == np.float32 and x.batch_shape == ()
    Ybar = rng.standard_normal((6, 6)).astype(np.float32)
    got = sym.project(x, Ybar)
    assert got.dtype == np.float32
    want = (Ybar.astype(float) + Ybar.astype(float).T) / 2
    assert_norm_close(got.astype(float), want, rtol=1e-6)
    assert sym.destructure_pullback(x, Ybar).data.dtype == np.float32
    assert sym.matvec(x, Ybar[0]).dtype == np.float32


def test_mixed_precision_promotes_as_numpy_does():
    toe = generated("toeplitz")
    sm = generated("scaled_matrix")
    c32, r32 = np.arange(1.0, 4.0, dtype=np.float32), np.arange(4.0, 7.0, dtype=np.float32)
    x32 = toe.Toeplitz(col=c32, row=r32)
    assert x32.dtype == np.float32
    assert toe.Toeplitz(col=c32, row=r32.astype(float)).dtype == np.float64     # float32 with float64
    assert toe.Toeplitz(col=[1, 2, 3], row=[0, 4, 5]).dtype == np.float64       # integers
    assert toe.Toeplitz(col=np.array([True, False]), row=[0.5, 1.5]).dtype == np.float64
    # a Python number is weak (NEP 50): it does not widen float32 fields
    assert sm.ScaledMatrix(scale=2.0, data=np.ones((2, 2), np.float32)).dtype == np.float32
    assert sm.ScaledMatrix(scale=np.float64(2.0), data=np.ones((2, 2), np.float32)).dtype == np.float64
    Y64, Y32 = np.ones((3, 3)), np.ones((3, 3), np.float32)
    assert toe.destructure_pullback(x32, Y32).dtype == np.float32
    assert toe.destructure_pullback(x32, Y64).dtype == np.float64
    assert toe.project(x32, Y64).dtype == np.float64
    assert toe.matvec(x32, np.ones(3)).dtype == np.float64
    assert toe.matvec(x32, np.ones(3, np.float32)).dtype == np.float32
    assert toe.matvec(x32, np.ones(3, np.int64)).dtype == np.float64
    x64 = toe.Toeplitz(col=c32.astype(float), row=r32.astype(float))
    assert toe.restructure_pullback(x32, x64).dtype == np.float64
    assert toe.destructure_pushforward(x64, x32).dtype == np.float64
    assert toe.destructure_pushforward(x32, x32).dtype == np.float32
    assert (x32 + x64).dtype == np.float64
    np.testing.assert_allclose(toe.destructure_pullback(x32, Y64).col, toe.destructure_pullback(x64, Y64).col)
    from rulegen.runtime import result_dtype
    assert result_dtype(np.float32, 2.0) == np.float32 and result_dtype(np.float16) == np.float32
    assert result_dtype(np.int32) == np.float64 and result_dtype(np.float32, np.int8) == np.float32
    # one complex field makes them all complex, of the same precision
    assert toe.Toeplitz(col=np.ones(2, complex), row=np.ones(2)).dtype == np.complex128
    assert toe.Toeplitz(col=np.ones(2, np.complex64), row=np.ones(2, np.float32)).dtype == np.complex64
    assert result_dtype(np.complex64, np.float64) == np.complex128
    with pytest.raises(TypeError, match="real or complex numbers"):
        toe.Toeplitz(col=np.array(["a", "b"]), row=np.ones(2))


def test_scalar_fields_in_a_batch():
    fill = generated("fill")
    x = fill.Fill(value=np.array([1.0, 2.0, 3.0]), m=2, n=2)
    assert x.batch_shape == (3,) and x.value.shape == (3,)
    np.testing.assert_array_equal(fill.destructure(x), np.arange(1.0, 4.0)[:, None, None] * np.ones((3, 2, 2)))
    g = fill.destructure_pullback(x, np.ones((2, 2)))
    np.testing.assert_array_equal(g.value, [4.0, 4.0, 4.0])
    assert isinstance(fill.Fill(value=2.0, m=1, n=1).value, float)
    assert fill.Fill(value=np.float32(2.0), m=1, n=1).value.dtype == np.float32


def test_batch_shapes_that_do_not_broadcast_are_named():
    toe = generated("toeplitz")
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match=r"Toeplitz: the batch shapes of field 'col' \(2,\) and field 'row' \(3,\) "
                                         r"do not broadcast"):
        toe.Toeplitz(col=rng.standard_normal((2, 4)), row=rng.standard_normal((3, 4)))
    x = toe.Toeplitz(col=rng.standard_normal((2, 3, 4)), row=rng.standard_normal((3, 4)))
    assert x.batch_shape == (2, 3) and x.shape == (4, 4)
    with pytest.raises(ValueError, match=r"destructure_pullback: the batch shapes of x \(2, 3\) and argument "
                                         r"'ybar' \(5,\) do not broadcast"):
        toe.destructure_pullback(x, np.zeros((5, 4, 4)))
    with pytest.raises(ValueError, match=r"project: argument 'ybar' must have shape \(4, 4\), got \(2, 4, 3\)"):
        toe.project(x, np.zeros((2, 4, 3)))
    t = toe.Toeplitz(col=np.zeros((4, 4)), row=np.zeros(4))
    with pytest.raises(ValueError, match=r"destructure_pushforward: the batch shapes of x \(2, 3\) and argument "
                                         r"'dx' \(4,\) do not broadcast"):
        toe.destructure_pushforward(x, t)
    with pytest.raises(ValueError, match=r"argument 'v' \(7,\)"):
        toe.matvec(x, np.zeros((7, 4, 1)))
    with pytest.raises(ValueError, match=r"the batch shapes of argument 'U' \(2,\) and argument 'V' \(3,\)"):
        toe.bilinear_pullback(toe.Toeplitz(col=np.zeros(4), row=np.zeros(4)), np.zeros((2, 4, 1)),
                              np.zeros((3, 4, 1)))
    with pytest.raises(ValueError, match=r"diagonal_pullback: the batch shapes of x \(2, 3\) and argument 'dbar'"):
        toe.diagonal_pullback(x, np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"__add__: the batch shapes of self \(2, 3\) and other \(4,\)"):
        x + t


def test_a_batch_equals_its_instances_one_by_one():
    """Instance b of a batched call is the unbatched call on instance b, to
    rounding: the same kernel, compiled inline in its batched loop, may fuse
    a different product into an FMA (fastmath "contract")."""
    for name, cls, fields in (("symmetric", "Symmetric", {"data": (5, 5)}),
                              ("scaled_matrix", "ScaledMatrix", {"scale": (), "data": (3, 4)})):
        mod = generated(name)
        rng = np.random.default_rng(3)
        arrays = {k: rng.standard_normal((4,) + s) for k, s in fields.items()}
        x = getattr(mod, cls)(**arrays)
        Y = rng.standard_normal((4,) + x.shape)
        proj, pull = mod.project(x, Y), mod.destructure_pullback(x, Y)
        for b in range(4):
            xb = getattr(mod, cls)(**{k: a[b] for k, a in arrays.items()})
            np.testing.assert_allclose(proj[b], mod.project(xb, Y[b]), rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(pull.data[b], mod.destructure_pullback(xb, Y[b]).data, rtol=1e-13, atol=1e-15)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="numba has a single thread")
def test_results_do_not_depend_on_the_number_of_threads():
    """A batch large enough to run on threads gives bit-identical results on one thread."""
    toe = generated("toeplitz")
    rng = np.random.default_rng(4)
    x = toe.Toeplitz(col=rng.standard_normal((64, 96)), row=rng.standard_normal((64, 96)))
    Y = rng.standard_normal((64, 96, 96))
    v = rng.standard_normal((64, 96, 3))

    def maps():
        return (toe.destructure_pullback(x, Y).col, toe.project(x, Y), toe.matvec(x, v),
                toe.bilinear_pullback(x, v, v).row, toe.destructure(x))
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = maps()
        numba.set_num_threads(2)
        two = maps()
    finally:
        numba.set_num_threads(saved)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    want = toe.destructure_pullback(toe.Toeplitz(col=x.col[5], row=x.row[5]), Y[5]).col
    np.testing.assert_array_equal(one[0][5], want)


def test_fft_path_in_a_batch():
    """Toeplitz and Hankel products from n = FFT_MIN on go through the FFT over the batch."""
    import scipy.linalg

    rng = np.random.default_rng(5)
    toe, hank = generated("toeplitz"), generated("hankel")
    n = toe.FFT_MIN
    col, row = rng.standard_normal((2, n)), rng.standard_normal((3, 1, n))
    x = toe.Toeplitz(col=col, row=row)
    h = rng.standard_normal((2, 2 * n - 1))
    xh = hank.Hankel(h=h)
    v = rng.standard_normal((n, 2))
    U = rng.standard_normal((2, n, 2))
    for b in itertools.product(range(3), range(2)):
        T = scipy.linalg.toeplitz(col[b[1]], np.r_[col[b[1]][:1], row[b[0], 0, 1:]])
        assert_norm_close(toe.matvec(x, v)[b], T @ v, rtol=1e-10)
        assert_norm_close(toe.rmatvec(x, v)[b], T.T @ v, rtol=1e-10)
        g = toe.bilinear_pullback(x, U, v)
        G = U[b[1]] @ v.T
        assert_norm_close(g.col[b], [np.trace(G, -d) for d in range(n)], rtol=1e-10)
    for b in range(2):
        H = scipy.linalg.hankel(h[b][:n], h[b][n - 1:])
        assert_norm_close(hank.matvec(xh, v)[b], H @ v, rtol=1e-10)
        assert_norm_close(hank.rmatvec(xh, U)[b], H.T @ U[b], rtol=1e-10)
    x32 = toe.Toeplitz(col=col.astype(np.float32), row=row.astype(np.float32))
    assert toe.matvec(x32, v.astype(np.float32)).dtype == np.float32


def test_lsqr_over_a_batch():
    """LowRank (general kind): J⁺ for a batch of four by one vectorised LSQR,
    each instance stopping on its own; the same answers as one by one, and
    one ConvergenceWarning for the batch when instances stop at the cap."""
    import rulegen.runtime as rt

    mod = generated("low_rank")
    rng = np.random.default_rng(6)
    Us, Vs = rng.standard_normal((4, 6, 2)), rng.standard_normal((4, 5, 2))
    Us[2] = 0.0                               # J = 0 on U's part: a different rank, a different stop
    x = mod.LowRank(U=Us, V=Vs)
    Y = rng.standard_normal((4, 6, 5))
    Y[1] = 0.0                                # a zero cotangent: zero, without iterating
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = mod.restructure_pushforward(x, Y)
        back = mod.restructure_pullback(x, got)
        kinds = mod.parametrisation(x)
    order = ("U", "V")
    for b in range(4):
        fields = {"U": Us[b], "V": Vs[b]}
        J = jacobian_complex(lambda f: f["U"] @ f["V"].T, fields, order)
        P = np.linalg.pinv(J)
        assert_norm_close(np.r_[got.U[b].ravel(), got.V[b].ravel()], P @ Y[b].ravel(), rtol=1e-8)
        assert_norm_close(back[b].ravel(), P.T @ np.r_[got.U[b].ravel(), got.V[b].ravel()], rtol=1e-8)
        assert kinds[b] == expected_class(J)
        one = mod.restructure_pushforward(mod.LowRank(U=Us[b], V=Vs[b]), Y[b])
        np.testing.assert_allclose(got.U[b], one.U, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got.V[b], one.V, rtol=1e-12, atol=1e-14)
    assert not got.U[1].any() and not got.V[1].any()
    Y[3, 0, 0] = np.nan                        # NaN in one instance: NaN there only
    got = mod.restructure_pushforward(x, Y)
    assert np.isnan(got.U[3]).all() and np.isfinite(got.U[:3]).all()
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(rt.Iterative, "iteration_cap", lambda self, shape: 2)
        with pytest.warns(rt.ConvergenceWarning, match=r"LowRank: J⁺: LSQR stopped at the iteration cap after 2 "
                                                       r"iterations; relative normal-equation residual \(3 of 4 "
                                                       r"instances; the largest\)"):
            mod.restructure_pushforward(x, np.where(np.isnan(Y), 1.0, Y + 1.0))
    finally:
        mp.undo()


def test_bordered_parametrisation_per_instance():
    sm = generated("scaled_matrix")
    x = sm.ScaledMatrix(scale=np.array([2.0, 0.0]), data=np.arange(6.0).reshape(2, 3) + 1)
    assert sm.parametrisation(x) == ["over", "under"]
