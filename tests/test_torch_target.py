"""The PyTorch target (generated/torch/<module>.py) against the independent
oracle (hand-written dense matrices, their Jacobians column by column,
numpy's pinv) and the numba target, in float64 and float32, single and
batched (leading dimensions that broadcast), and under autograd in both
modes, torch.func (vmap, grad, jvp), second order and torch.compile.
Skips without PyTorch."""

import os
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import (GENERATED, assert_norm_close, check_derived_ops, expected_class,  # noqa: E402
                     generated, jacobian, jacobian_complex, load_module, run_cli, struct_vec, unflatten)
from references import REFERENCES, instance  # noqa: E402

_MODULES: dict = {}


def tmod(name):
    if name not in _MODULES:
        _MODULES[name] = load_module(os.path.join(GENERATED, "torch", name + ".py"))
    return _MODULES[name]


CASES = [(key, sizes) for key, ref in REFERENCES.items() for sizes in ref.sizes]
IDS = [f"{key}-" + "-".join(f"{k}{v}" for k, v in sizes.items()) for key, sizes in CASES]


def _case(key, sizes, salt="torch"):
    """A reference case; its fields as float64 numpy arrays (a Python float
    would become torch's default dtype, float32)."""
    ref = REFERENCES[key]
    rng = np.random.default_rng(zlib.crc32(f"{salt} {key} {sorted(sizes.items())}".encode()))
    fields, extra, dense = instance(ref, rng, sizes)
    return ref, rng, {k: np.asarray(v, dtype=float) for k, v in fields.items()}, extra, dense


def _largest(key):
    return max(REFERENCES[key].sizes, key=lambda s: sum(s.values()))


def _np(a):
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _svec(obj, order):
    return np.concatenate([np.ravel(_np(getattr(obj, n))) for n in order]) if order else np.zeros(0)


def _all_maps(mod, x, t, W, v, u, d):
    """Every map of a module at one point (a tensor or array, an instance, or
    the class)."""
    return {
        "destructure": mod.destructure(x),
        "destructure_pushforward": mod.destructure_pushforward(x, t),
        "destructure_pullback": mod.destructure_pullback(x, W),
        "restructure_pushforward": mod.restructure_pushforward(x, W),
        "restructure_pullback": mod.restructure_pullback(x, t),
        "project": mod.project(x, W),
        "matvec": mod.matvec(x, v),
        "rmatvec": mod.rmatvec(x, u),
        "bilinear_pullback": mod.bilinear_pullback(x, u, v),
        "diagonal": mod.diagonal(x),
        "diagonal_pullback": mod.diagonal_pullback(x, d),
        "parametrisation": mod.parametrisation(x),
    }


def _pick(out, order, b=None):
    """A map's output as numpy (an instance: its fields, flat), of batch element b."""
    if isinstance(out, (str, list)):
        return out if b is None else out[b]
    if isinstance(out, (np.ndarray, torch.Tensor)):
        return _np(out if b is None else out[b])
    return np.concatenate([np.ravel(_np(getattr(out, k) if b is None else getattr(out, k)[b])) for k in order])


def _compare(got, want, order, what, rtol, atol, b=None):
    for name, w in want.items():
        g = _pick(got[name], order, b)
        w = _pick(w, order)
        if name == "parametrisation":
            assert g == w, f"{what}: {name}"
        else:
            assert_norm_close(g, w, f"{what}: {name}", rtol=rtol, atol=atol)


def _operands(rng, x, fields, order):
    m, n = x.shape
    t = unflatten(rng.standard_normal(sum(np.size(fields[k]) for k in order)), fields, order)
    return t, rng.standard_normal((m, n)), rng.standard_normal((n, 2)), rng.standard_normal((m, 2)), \
        rng.standard_normal(min(m, n))


# -- float64: the oracle and the numba target ----------------------------------

def _against_the_oracle(mod, cls, x, fields, extra, dense, J, order, rng, rtol=1e-10):
    """The six maps and the class against J and numpy's pinv, norm-wise (the
    oracle's pinv is itself only that accurate where J is ill-conditioned)."""
    P = np.linalg.pinv(J) if J.size else np.zeros(J.shape[::-1])
    Y = np.asarray(dense(fields), dtype=float)

    def close(got, want, what):
        assert_norm_close(got, want, what, rtol=rtol, atol=1e-12)

    close(_np(mod.destructure(x)), Y, "destructure")
    tvec = rng.standard_normal(J.shape[1])
    t = cls(**unflatten(tvec, fields, order), **extra)
    W = rng.standard_normal(Y.shape)
    close(_np(mod.destructure_pushforward(x, t)).ravel(), J @ tvec, "destructure_pushforward")
    close(struct_vec(mod.destructure_pullback(x, W), order), J.T @ W.ravel(), "destructure_pullback")
    close(struct_vec(mod.restructure_pushforward(x, W), order), P @ W.ravel(), "restructure_pushforward")
    close(_np(mod.restructure_pullback(x, t)).ravel(), P.T @ tvec, "restructure_pullback")
    close(_np(mod.project(x, W)).ravel(), J @ (P @ W.ravel()), "project")
    assert mod.parametrisation(x) == expected_class(J)


@pytest.mark.parametrize("key,sizes", CASES, ids=IDS)
def test_every_map_against_the_oracle_and_numba_float64(key, sizes):
    ref, rng, fields, extra, dense = _case(key, sizes)
    mod = tmod(ref.module)
    cls = getattr(mod, ref.cls)
    x = cls(**fields, **extra)
    J = (jacobian_complex if ref.analytic else jacobian)(dense, fields, ref.order)
    _against_the_oracle(mod, cls, x, fields, extra, dense, J, ref.order, rng)
    check_derived_ops(mod, x, np.asarray(dense(fields), dtype=float), J, ref.order, rng)
    assert mod.destructure(x).dtype == torch.float64
    # the numba target, map by map, at the same point
    nb = generated(ref.module)
    t, W, v, u, d = _operands(rng, x, fields, ref.order)
    ours = _all_maps(mod, x, cls(**t, **extra), W, v, u, d)
    theirs = _all_maps(nb, getattr(nb, ref.cls)(**fields, **extra), getattr(nb, ref.cls)(**t, **extra), W, v, u, d)
    _compare(ours, theirs, ref.order, "numba", rtol=1e-10, atol=1e-12)


# -- float32 in, float32 out ------------------------------------------------------

@pytest.mark.parametrize("key", sorted(REFERENCES))
def test_float32_in_float32_out_within_1e5(key):
    """float32 fields give float32 results within 1e-5 (norm-wise relative) of
    the float64 oracle at the same point; float64 operands are not upcasts.
    1e-5 presumes a well-conditioned J (float32's eps times cond J): the draw
    is checked for that (some draws of CholeskyFactor have cond J ~ 3e4)."""
    ref, rng, fields, extra, dense = _case(key, _largest(key), "f32")
    mod = tmod(ref.module)
    cls = getattr(mod, ref.cls)
    f32 = {k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in fields.items()}
    f64 = {k: _np(v).astype(np.float64) for k, v in f32.items()}
    x = cls(**f32, **extra)
    J = (jacobian_complex if ref.analytic else jacobian)(dense, f64, ref.order)
    sv = np.linalg.svd(J, compute_uv=False)
    assert sv[0] <= 1e3 * sv[sv > 1e-8 * sv[0]][-1], "an ill-conditioned draw: choose another"
    P = np.linalg.pinv(J)
    Y = np.asarray(dense(f64), dtype=float)
    W = rng.standard_normal(Y.shape).astype(np.float32)
    tvec = rng.standard_normal(J.shape[1]).astype(np.float32)
    tx = cls(**{k: torch.as_tensor(np.asarray(a)) for k, a in unflatten(tvec, f64, ref.order).items()}, **extra)
    tx = tx.to(torch.float32)
    Wd = W.astype(float).ravel()
    v = rng.standard_normal(Y.shape[1])            # float64: follows x, no upcast

    def close(got, want, what):
        if isinstance(got, cls):
            assert all(a.dtype == torch.float32 for a in got._arrays), what
            got = _svec(got, ref.order)
        else:
            assert got.dtype == torch.float32, what
        assert_norm_close(_np(got), want, what, rtol=1e-5, atol=1e-6)

    close(mod.destructure(x), Y, "destructure")
    close(mod.destructure_pushforward(x, tx), J @ tvec, "destructure_pushforward")
    close(mod.destructure_pullback(x, W), J.T @ Wd, "destructure_pullback")
    close(mod.restructure_pushforward(x, W), P @ Wd, "restructure_pushforward")
    close(mod.restructure_pullback(x, tx), P.T @ tvec, "restructure_pullback")
    close(mod.project(x, W), J @ P @ Wd, "project")
    close(mod.matvec(x, v), Y @ v, "matvec")
    close(mod.rmatvec(x, W[:, 0].astype(float)), Y.T @ W[:, 0], "rmatvec")
    close(mod.diagonal(x), np.diagonal(Y), "diagonal")


# -- batches: leading dimensions ----------------------------------------------------

def _stacked(ref, fields, extra, cls, count, rng):
    """``count`` instances near ``fields``, and the same stacked as a batch."""
    singles = [{k: np.asarray(v, dtype=float) + 0.1 * b * rng.standard_normal(np.shape(v))
                for k, v in fields.items()} for b in range(count)]
    batch = {k: torch.as_tensor(np.stack([s[k] for s in singles])) for k in fields}
    return [cls(**s, **extra) for s in singles], cls(**batch, **extra), singles


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("key", sorted(REFERENCES))
def test_a_batch_of_three_equals_three_single_calls_and_batches_broadcast(key, dtype):
    ref, rng, fields, extra, _ = _case(key, _largest(key), "batch")
    mod = tmod(ref.module)
    cls = getattr(mod, ref.cls)
    dt = getattr(torch, dtype)
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == "float64" else dict(rtol=1e-5, atol=1e-6)
    exact = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=1e-6, atol=1e-6)
    singles, xb, raw = _stacked(ref, fields, extra, cls, 3, rng)
    singles, xb = [s.to(dt) for s in singles], xb.to(dt)
    m, n = xb.shape
    assert xb.batch_shape == (3,)
    ts = [cls(**unflatten(rng.standard_normal(sum(np.size(fields[k]) for k in ref.order)), fields, ref.order),
              **extra).to(dt) for _ in range(3)]
    tb = cls(**{k: torch.stack([getattr(t, k) for t in ts]) for k in ref.order}, **extra)
    W, v, u, d = (torch.as_tensor(rng.standard_normal(s), dtype=dt) for s in ((3, m, n), (3, n, 2), (3, m, 2),
                                                                            (3, min(m, n))))
    batched = _all_maps(mod, xb, tb, W, v, u, d)
    for b in range(3):
        single = _all_maps(mod, singles[b], ts[b], W[b], v[b], u[b], d[b])
        _compare(batched, single, ref.order, f"batch element {b}", b=b, **tol)
    # a broadcast: fields of batch (2, 1), the cotangent of batch (3,) -> (2, 3, m, n)
    x2 = cls(**{k: torch.as_tensor(np.stack([r[k] for r in raw[:2]]))[:, None] for k in ref.order}, **extra).to(dt)
    P = mod.project(x2, W)
    assert P.shape == (2, 3, m, n) and P.dtype == dt
    G = mod.destructure_pullback(x2, W)
    for a, f in zip(G._arrays, ref.order):
        assert a.shape == (2, 3) + np.shape(fields[f])
    mv = mod.matvec(x2, v)
    assert mv.shape == (2, 3, m, 2)
    for i in range(2):
        for j in range(3):
            assert_norm_close(_np(P[i, j]), _np(mod.project(singles[i], W[j])), "project", **tol)
            assert_norm_close(_np(mv[i, j]), _np(mod.matvec(singles[i], v[j])), "matvec", **exact)
            want = mod.destructure_pullback(singles[i], W[j])
            for a, w in zip(G._arrays, want._arrays):
                assert_norm_close(_np(a[i, j]), _np(w), "destructure_pullback", **exact)


def test_batch_shapes_that_do_not_broadcast_name_both():
    mod = tmod("toeplitz")
    with pytest.raises(ValueError, match=r"batch shapes of field 'col' \(4,\) and field 'row' \(3,\)"):
        mod.Toeplitz(col=torch.zeros(4, 5), row=torch.zeros(3, 5))
    x = mod.Toeplitz(col=torch.zeros(4, 1, 5), row=torch.zeros(3, 5))
    assert x.batch_shape == (4, 3) and mod.destructure(x).shape == (4, 3, 5, 5)
    with pytest.raises(ValueError, match=r"project: the batch shapes of x \(4, 3\) and argument 'ybar' \(2,\)"):
        mod.project(x, torch.zeros(2, 5, 5))
    with pytest.raises(ValueError, match=r"matvec: the batch shapes of x \(4, 3\) and argument 'v' \(2,\)"):
        mod.matvec(x, torch.zeros(2, 5, 1))
    with pytest.raises(ValueError, match=r"argument 'ybar' must have shape \(5, 5\)"):
        mod.destructure_pullback(x, torch.zeros(5, 4))
    with pytest.raises(TypeError, match="unknown argument 'rows' .did you mean 'row'..; fields: col, row"):
        mod.Toeplitz(col=[1.0], rows=[1.0])
    with pytest.raises(TypeError, match="argument 'x' must be of type Toeplitz"):
        mod.destructure(torch.zeros(3, 3))


# -- autograd: both modes, torch.func, second order ---------------------------------

def _f64(fields):
    return {k: torch.as_tensor(np.asarray(v, dtype=float)) for k, v in fields.items()}


@pytest.mark.parametrize("key", sorted(REFERENCES))
def test_gradcheck_destructure_and_matvec(key):
    ref, rng, fields, extra, _ = _case(key, min(REFERENCES[key].sizes, key=lambda s: (0 in s.values(),
                                                                                    -sum(s.values()))))
    mod = tmod(ref.module)
    cls = getattr(mod, ref.cls)
    names = list(ref.order)
    args = tuple(torch.as_tensor(np.asarray(fields[k], dtype=float)).requires_grad_() for k in names)
    x = cls(**fields, **extra)
    v = torch.as_tensor(rng.standard_normal((x.shape[1], 2)), dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: mod.destructure(cls(**dict(zip(names, a)), **extra)), args)
    assert torch.autograd.gradcheck(lambda vv, *a: mod.matvec(cls(**dict(zip(names, a)), **extra), vv),
                                    (v, *args))
    assert torch.autograd.gradcheck(lambda vv, *a: mod.rmatvec(cls(**dict(zip(names, a)), **extra), vv),
                                    (torch.randn(x.shape[0], dtype=torch.float64, requires_grad=True), *args))


TRANSFORM_KEYS = ["diagonal", "symmetric", "toeplitz", "hankel", "tridiagonal", "banded", "fill",
                  "scaled_matrix", "positive_diagonal", "low_rank", "kronecker_product", "cholesky_factor"]


@pytest.mark.parametrize("key", TRANSFORM_KEYS)
def test_backward_jvp_vmap_and_func_grad(key):
    ref, rng, fields, extra, _ = _case(key, _largest(key), "func")
    mod = tmod(ref.module)
    cls = getattr(mod, ref.cls)
    x = cls(**fields, **extra)
    W = torch.as_tensor(rng.standard_normal(x.shape))
    t = cls(**{k: torch.as_tensor(rng.standard_normal(np.shape(v))) for k, v in fields.items()}, **extra)
    want = mod.destructure_pullback(x, W)
    # reverse mode: backward and torch.autograd.grad give the structural pullback
    leaves = {k: torch.as_tensor(np.asarray(v, dtype=float)).requires_grad_() for k, v in fields.items()}
    (mod.destructure(cls(**leaves, **extra)) * W).sum().backward()
    grads = torch.autograd.grad((mod.destructure(cls(**leaves, **extra)) * W).sum(), list(leaves.values()))
    for k, g in zip(ref.order, grads):
        np.testing.assert_allclose(_np(leaves[k].grad), _np(getattr(want, k)), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(_np(g), _np(getattr(want, k)), rtol=1e-12, atol=1e-12)
    # torch.func.grad of a loss of the instance returns an instance: the pullback
    g = torch.func.grad(lambda x: (mod.destructure(x) * W).sum())(x)
    assert isinstance(g, cls)
    for a, b in zip(g._arrays, want._arrays):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-12, atol=1e-12)
    # forward mode: torch.func.jvp of destructure is the pushforward
    _, dY = torch.func.jvp(mod.destructure, (x,), (t,))
    np.testing.assert_allclose(_np(dY), _np(mod.destructure_pushforward(x, t)), rtol=1e-12, atol=1e-12)
    # torch.func.vmap over instances equals the leading-dimension batch
    _, xb, _ = _stacked(ref, fields, extra, cls, 3, rng)
    Wb = torch.as_tensor(rng.standard_normal((3,) + x.shape))
    for name, fn, args in [("destructure", mod.destructure, (xb,)), ("project", mod.project, (xb, Wb)),
                           ("restructure_pullback", mod.restructure_pullback, (xb, xb)),
                           ("matvec", mod.matvec, (xb, torch.as_tensor(rng.standard_normal((3, x.shape[1], 1)))))]:
        got = torch.func.vmap(fn)(*args)
        np.testing.assert_allclose(_np(got), _np(fn(*args)), rtol=1e-9, atol=1e-11, err_msg=name)
    vecs = torch.as_tensor(rng.standard_normal((3, x.shape[1])))      # under vmap each is a vector (n,)
    np.testing.assert_allclose(_np(torch.func.vmap(mod.matvec)(xb, vecs)), _np(mod.matvec(xb, vecs[..., None])[..., 0]),
                               rtol=1e-12, atol=1e-12)
    pulled = torch.func.vmap(mod.destructure_pullback)(xb, Wb)
    for a, b in zip(pulled._arrays, mod.destructure_pullback(xb, Wb)._arrays):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-12, atol=1e-12)


NATURAL_KEYS = ["toeplitz", "scaled_matrix", "positive_diagonal", "low_rank"]


@pytest.mark.parametrize("key", NATURAL_KEYS)
def test_natural_maps_differentiable_in_fields_and_operands(key):
    """gradcheck (reverse mode against finite differences) of every natural map
    in the fields and the natural operand, and forward mode (torch.func.jvp)
    against the same finite differences."""
    ref, rng, fields, extra, _ = _case(key, min(REFERENCES[key].sizes, key=lambda s: (0 in s.values(),
                                                                                    sum(s.values()) < 5,
                                                                                    sum(s.values()))), "nat")
    mod = tmod(ref.module)
    cls = getattr(mod, ref.cls)
    names = list(ref.order)
    x0 = cls(**fields, **extra)
    Wt = torch.as_tensor(rng.standard_normal(x0.shape), dtype=torch.float64).requires_grad_()
    tt = {k: torch.as_tensor(rng.standard_normal(np.shape(v)), dtype=torch.float64) for k, v in fields.items()}
    args = tuple(torch.as_tensor(np.asarray(fields[k], dtype=float)).requires_grad_() for k in names)

    def inst(a):
        return cls(**dict(zip(names, a)), **extra)

    def flat(obj):
        return torch.cat([a.reshape(-1) for a in obj._arrays])

    maps = {
        "destructure_pushforward": lambda W, *a: mod.destructure_pushforward(inst(a), cls(**tt, **extra)),
        "destructure_pullback": lambda W, *a: flat(mod.destructure_pullback(inst(a), W)),
        "restructure_pushforward": lambda W, *a: flat(mod.restructure_pushforward(inst(a), W)),
        "restructure_pullback": lambda W, *a: mod.restructure_pullback(inst(a), cls(**tt, **extra)),
        "project": lambda W, *a: mod.project(inst(a), W),
    }
    for name, fn in maps.items():
        assert torch.autograd.gradcheck(fn, (Wt, *args), atol=1e-6, rtol=1e-5), name
        tang = tuple(torch.as_tensor(rng.standard_normal(a.shape)) for a in (Wt, *args))
        prim = tuple(a.detach() for a in (Wt, *args))
        _, d = torch.func.jvp(fn, prim, tang)
        eps = 1e-6
        fd = (fn(*[p + eps * q for p, q in zip(prim, tang)]) - fn(*[p - eps * q for p, q in zip(prim, tang)])) / (2 * eps)
        assert_norm_close(_np(d), _np(fd), f"jvp {name}", rtol=1e-6, atol=1e-8)


def _hand_dense():
    """Dense matrices written by hand in torch (an independent route for the Hessian)."""
    def toeplitz(f):
        n = f["col"].shape[0]
        i, j = np.indices((n, n))
        return torch.where(torch.as_tensor(i >= j), f["col"][np.abs(i - j)], f["row"][np.abs(j - i)])

    return {
        "symmetric": (("data",), lambda f: torch.triu(f["data"]) + torch.triu(f["data"], 1).T,
                      lambda rng: {"data": rng.standard_normal((4, 4))}),
        "toeplitz": (("col", "row"), toeplitz,
                     lambda rng: {"col": rng.standard_normal(4), "row": rng.standard_normal(4)}),
        "low_rank": (("U", "V"), lambda f: f["U"] @ f["V"].T,
                     lambda rng: {"U": rng.standard_normal((4, 2)), "V": rng.standard_normal((3, 2))}),
        "scaled_matrix": (("scale", "data"), lambda f: f["scale"] * f["data"],
                          lambda rng: {"scale": np.array(1.3), "data": rng.standard_normal((3, 4))}),
        "positive_diagonal": (("logd",), lambda f: torch.diag(torch.exp(f["logd"])),
                              lambda rng: {"logd": rng.standard_normal(4)}),
    }


@pytest.mark.parametrize("key", sorted(_hand_dense()))
def test_hessian_through_destructure_and_matvec_equals_the_dense_one(key):
    order, dense, make = _hand_dense()[key]
    ref = REFERENCES[key]
    mod = tmod(ref.module)
    cls = getattr(mod, ref.cls)
    rng = np.random.default_rng(7)
    fields = _f64(make(rng))
    shapes = [fields[k].shape for k in order]
    sizes = [int(np.prod(s)) for s in shapes]
    flat0 = torch.cat([fields[k].reshape(-1) for k in order])
    x0 = cls(**fields)
    v = torch.as_tensor(rng.standard_normal(x0.shape[1]))
    W = torch.as_tensor(rng.standard_normal(x0.shape))

    def unravel(flat):
        parts = torch.split(flat, sizes)
        return {k: p.reshape(s) for k, p, s in zip(order, parts, shapes)}

    def loss_dense(flat):
        Y = dense(unravel(flat))
        return (torch.sin(Y) * W).sum() + ((Y @ v) ** 2).sum()

    def loss_ours(flat):
        x = cls(**unravel(flat))
        return (torch.sin(mod.destructure(x)) * W).sum() + (mod.matvec(x, v) ** 2).sum()

    H_want = torch.autograd.functional.hessian(loss_dense, flat0)
    H_got = torch.autograd.functional.hessian(loss_ours, flat0)
    assert H_want.abs().max() > 1e-3
    np.testing.assert_allclose(_np(H_got), _np(H_want), rtol=1e-10, atol=1e-10)
    # forward-over-reverse gives the same (torch.func.hessian = jacfwd(jacrev))
    np.testing.assert_allclose(_np(torch.func.hessian(loss_ours)(flat0)), _np(H_want), rtol=1e-10, atol=1e-10)


def test_second_order_through_the_pseudo_inverse_is_not_zero():
    """Double backward through restructure_pushforward of a general type (J⁺ by
    LSQR, derivatives from the pseudo-inverse's): gradgradcheck, and the
    Hessian of a loss against finite differences of its gradient."""
    mod = tmod("low_rank")
    rng = np.random.default_rng(3)
    U = torch.as_tensor(rng.standard_normal((2, 1))).requires_grad_()
    V = torch.as_tensor(rng.standard_normal((3, 1))).requires_grad_()
    W = torch.as_tensor(rng.standard_normal((2, 3))).requires_grad_()

    def f(W, U, V):
        return mod.restructure_pushforward(mod.LowRank(U=U, V=V), W).V

    assert torch.autograd.gradgradcheck(f, (W, U, V), atol=1e-5, rtol=1e-4)

    def loss(flat):
        x = mod.LowRank(U=flat[:2].reshape(2, 1), V=flat[2:].reshape(3, 1))
        return (mod.project(x, W.detach()) ** 2).sum() + (flat ** 3).sum()

    flat0 = torch.cat([U.detach().reshape(-1), V.detach().reshape(-1)])
    H = torch.autograd.functional.hessian(loss, flat0)
    eps = 1e-6

    def grad(z):
        return torch.autograd.functional.jacobian(loss, z)
    fd = torch.stack([(grad(flat0 + eps * e) - grad(flat0 - eps * e)) / (2 * eps)
                      for e in torch.eye(5, dtype=flat0.dtype)])
    assert H.abs().max() > 1e-2
    assert_norm_close(_np(H), _np(fd), "Hessian", rtol=1e-5, atol=1e-7)


def test_torch_compile_of_destructure_and_matvec_agrees():
    """No graph break for a type whose grids need no trace-time extent
    (Diagonal); the others compile too, breaking at each rulegen.torch_runtime.extreme."""
    mod = tmod("diagonal")

    def f(d, v):
        x = mod.Diagonal(diag=d)
        return torch.sin(mod.destructure(x)).sum() + mod.matvec(x, v).sum()

    d, v = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    compiled = torch.compile(f, fullgraph=True)       # fullgraph: a graph break would raise
    np.testing.assert_allclose(_np(compiled(d, v)), _np(f(d, v)), rtol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("key", ["toeplitz", "tridiagonal", "banded", "scaled_matrix", "low_rank", "hankel"])
def test_cuda_equals_cpu_and_stays_on_the_device(key):
    ref, rng, fields, extra, _ = _case(key, _largest(key), "cuda")
    mod = tmod(ref.module)
    cls = getattr(mod, ref.cls)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        x = cls(**{k: torch.as_tensor(np.asarray(v), dtype=dtype) for k, v in fields.items()}, **extra)
        xc = x.to("cuda")
        t, W, v, u, d = _operands(rng, x, fields, ref.order)
        t = cls(**{k: torch.as_tensor(np.asarray(a), dtype=dtype) for k, a in t.items()}, **extra)
        args = [torch.as_tensor(a, dtype=dtype) for a in (W, v, u, d)]
        cpu = _all_maps(mod, x, t, *args)
        gpu = _all_maps(mod, xc, t.to("cuda"), *[a.cuda() for a in args])
        for name, out in gpu.items():
            for a in (out._arrays if hasattr(out, "_arrays") else [out] if isinstance(out, torch.Tensor) else []):
                assert a.device.type == "cuda" and a.dtype == dtype, name
        _compare(gpu, cpu, ref.order, f"cuda {dtype}", rtol=tol, atol=tol)


def test_dtype_and_device_follow_the_fields():
    mod = tmod("sym_tridiagonal")
    x = mod.SymTridiagonal(dv=torch.ones(4, dtype=torch.float32), ev=[1.0, 2.0, 3.0])
    assert x.dtype == torch.float32 and x.ev.dtype == torch.float32
    out = mod.project(x, np.ones((4, 4)))                      # a float64 operand follows x
    assert out.dtype == torch.float32 and out.device == x.device
    assert mod.matvec(x, np.ones(4)).dtype == torch.float32
    y = mod.SymTridiagonal(dv=np.ones(4), ev=np.ones(3))       # numpy float64 keeps float64
    assert y.dtype == torch.float64
    z = mod.SymTridiagonal(dv=torch.ones(4, dtype=torch.float64), ev=torch.ones(3, dtype=torch.float32))
    assert z.dtype == torch.float64                            # promoted as torch's arithmetic does


def test_generated_modules_are_plain_torch():
    """No numba, no numpy round trip of values (numpy only for trace-time extents)."""
    folder = os.path.join(GENERATED, "torch")
    names = [n for n in os.listdir(folder) if n.endswith(".py") and n != "__init__.py"]
    # the built-ins with integer fields are checked in tests/test_sparse_targets.py
    sparse = {"sparse_coo", "sparse_csr", "permutation", "block_diagonal"}
    assert sorted(names) == sorted(f"{key}.py" for key in set(REFERENCES) | sparse)
    for name in names:
        text = open(os.path.join(folder, name), encoding="utf-8").read()
        assert "import numba" not in text and ".numpy()" not in text and "_TARGET = \"torch\"" in text, name


# -- specs that are in no test of specs/: built for PyTorch here ----------------------

UNSEEN = {
    "cauchy_like": ("""
name: CauchyLike
sizes: [n]
fields: {x: [n]}
size: [n, n]
getindex: "1 / (x[i] - x[j]) if i != j else 0"
""", lambda rng: {"x": np.array([0.3, 1.1, 2.5, -0.7])},
        lambda f: _loops((4, 4), lambda i, j: 1 / (f["x"][i] - f["x"][j]) if i != j else 0 * f["x"][0]), ("x",)),
    "vandermonde": ("""
name: Vandermonde
sizes: [n, m]
fields: {x: [n]}
size: [n, m]
getindex: "x[i] ** j"
""", lambda rng: ({"x": np.array([0.0, 1.5, -0.7])}, {"m": 4}),
        lambda f: np.asarray(f["x"])[:, None] ** np.arange(4)[None, :], ("x",)),
    "band_gram": ("""
name: BandGram
sizes: [n]
fields: {L: [n, n]}
size: [n, n]
getindex: "sum(L[i, k] * L[j, k] for k in range(max(i, j) - 1, min(i, j) + 1) if k >= 0) if abs(i - j) <= 1 else 0"
""", lambda rng: {"L": rng.standard_normal((4, 4))},
        lambda f: _loops((4, 4), lambda i, j: sum(f["L"][i, k] * f["L"][j, k] for k in range(max(i, j) - 1, min(i, j) + 1)
                                                  if k >= 0) if abs(i - j) <= 1 else 0 * f["L"][0, 0]), ("L",)),
    "anti_band": ("""
name: AntiBand
sizes: [n]
fields: {a: [n], s: []}
size: [n, n]
getindex: "s * a[i] * a[j] if i + j == n - 1 else (exp(s) * a[j] if j == i + 1 else 0)"
""", lambda rng: {"a": rng.standard_normal(5), "s": 0.4},
        lambda f: _loops((5, 5), lambda i, j: f["s"] * f["a"][i] * f["a"][j] if i + j == 4 else
                         (np.exp(f["s"]) * f["a"][j] if j == i + 1 else 0 * f["s"])), ("a", "s")),
}


def _loops(shape, entry):
    return np.array([[entry(i, j) for j in range(shape[1])] for i in range(shape[0])])


@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch_unseen")
    paths = []
    for key, (text, *_r) in UNSEEN.items():
        (root / f"{key}.yaml").write_text(text)
        paths.append(str(root / f"{key}.yaml"))
    proc = run_cli("build", *paths, "--target", "torch", "--out", str(root / "out"))
    assert proc.returncode == 0, proc.stderr
    return root / "out"


@pytest.mark.parametrize("key", sorted(UNSEEN))
def test_unseen_specs_against_the_oracle_single_and_batched(unseen, key):
    text, make, dense, order = UNSEEN[key]
    name = text.split("name: ")[1].split("\n")[0]
    made = make(np.random.default_rng(3))
    fields, extra = made if isinstance(made, tuple) else (made, {})
    mod = load_module(str(unseen / "torch" / f"{key}.py"))
    cls = getattr(mod, name)
    fields = {k: np.asarray(v, dtype=float) for k, v in fields.items()}
    x = cls(**fields, **extra)
    _against_the_oracle(mod, cls, x, fields, extra, dense, jacobian_complex(dense, fields, order), order,
                        np.random.default_rng(2), rtol=1e-9)
    W = np.random.default_rng(4).standard_normal(x.shape)
    leaves = {k: torch.as_tensor(np.asarray(v, dtype=float)).requires_grad_() for k, v in fields.items()}
    grads = torch.autograd.grad((mod.destructure(cls(**leaves, **extra)) * torch.as_tensor(W)).sum(),
                                list(leaves.values()))
    J = jacobian_complex(dense, fields, order)
    np.testing.assert_allclose(np.concatenate([_np(g).ravel() for g in grads]), J.T @ W.ravel(), rtol=1e-9, atol=1e-10)
    assert mod.parametrisation(x) == expected_class(J)
    # a batch of two (the second instance scaled) against single calls
    xb = cls(**{k: torch.as_tensor(np.stack([np.asarray(v, dtype=float), 1.1 * np.asarray(v, dtype=float)]))
                for k, v in fields.items()}, **extra)
    Wb = torch.as_tensor(np.stack([W, -W]))
    vb = torch.as_tensor(np.random.default_rng(5).standard_normal((2, x.shape[1], 1)))
    Db, Pb, Mb = mod.destructure(xb), mod.project(xb, Wb), mod.matvec(xb, vb)
    for b in range(2):
        xs = cls(**{k: getattr(xb, k)[b] for k in order}, **extra)
        assert_norm_close(_np(Db[b]), _np(mod.destructure(xs)), "destructure", rtol=1e-12, atol=1e-12)
        assert_norm_close(_np(Pb[b]), _np(mod.project(xs, Wb[b])), "project", rtol=1e-9, atol=1e-11)
        assert_norm_close(_np(Mb[b]), _np(mod.matvec(xs, vb[b])), "matvec", rtol=1e-12, atol=1e-12)


def test_check_covers_the_torch_folder(tmp_path):
    spec = os.path.join(os.path.dirname(GENERATED), "specs", "diagonal.yaml")
    out = tmp_path / "out"
    assert run_cli("build", spec, "--target", "numba", "--target", "torch", "--out", str(out)).returncode == 0
    ok = run_cli("check", spec, "--out", str(out))
    assert ok.returncode == 0 and "2 modules up to date" in ok.stdout, ok.stdout + ok.stderr
    path = out / "torch" / "diagonal.py"
    path.write_text(path.read_text() + "# edited\n")
    stale = run_cli("check", spec, "--out", str(out))
    assert stale.returncode == 1 and "torch/diagonal.py" in stale.stderr and "--target torch" in stale.stderr
