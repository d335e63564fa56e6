"""Integer fields and data-dependent sparse patterns (issue #16) in the JAX
and PyTorch targets: SparseCOO, SparseCSR, Permutation, BlockDiagonal, a
permuted diagonal and a diagonal shifted by a scalar integer field, with duplicates, empty rows, nnz = 0 and one element, every
map against an independent dense oracle written here in numpy (J column by
column over the real fields, numpy.linalg.pinv), the derived operations
against the dense matrix, the parametrisation class, jit / vmap / grad
(JAX) and batches / autograd / torch.func (PyTorch), and hostile integer
fields. Each framework skips when it is not installed."""

import hashlib
import os
import zlib

import numpy as np
import pytest

from helpers import load_module, run_cli

SPECS = {
    "sparse_coo.yaml": """\
name: SparseCOO
sizes: [m, n, nnz]
fields:
  vals: [nnz]
  rows: {shape: [nnz], dtype: int}
  cols: {shape: [nnz], dtype: int}
size: [m, n]
getindex: sum(vals[k] for k in range(nnz) if rows[k] == i and cols[k] == j)
""",
    "sparse_csr.yaml": """\
name: SparseCSR
sizes: [m, n, nnz]
fields:
  vals: [nnz]
  indptr: {shape: [m + 1], dtype: int}
  cols: {shape: [nnz], dtype: int}
size: [m, n]
getindex: sum(vals[k] for k in range(indptr[i], indptr[i + 1]) if cols[k] == j)
""",
    "permutation.yaml": """\
name: Permutation
sizes: [n]
fields:
  d: [n]
  perm: {shape: [n], dtype: int}
size: [n, n]
getindex: d[i] if j == perm[i] else 0
""",
    "block_diagonal.yaml": """\
name: BlockDiagonal
sizes: [n, nb, bs]
fields:
  blocks: [nb, bs, bs]
  offsets: {shape: [nb + 1], dtype: int}
size: [n, n]
getindex: >
  sum(blocks[b, i - offsets[b], j - offsets[b]] for b in range(nb)
      if offsets[b] <= i < offsets[b + 1] and offsets[b] <= j < offsets[b + 1])
""",
    "shift_diag.yaml": """\
name: ShiftDiag
sizes: [n]
fields:
  d: [n]
  s: {shape: [], dtype: int}
size: [n, n]
getindex: d[i] if j == i + s else 0
""",
    "sparse_csc.yaml": """\
name: SparseCSC
sizes: [m, n, nnz]
fields:
  vals: [nnz]
  indptr: {shape: [n + 1], dtype: int}
  rows: {shape: [nnz], dtype: int}
size: [m, n]
getindex: sum(3 * vals[k] for k in range(indptr[j], indptr[j + 1]) if rows[k] == i)
""",
    "shifted_pairs.yaml": """\
name: ShiftedPairs
sizes: [n]
fields:
  d: [n]
  s: {shape: [], dtype: int}
  pairs: {shape: [n, 2], dtype: int}
size: [n, n]
getindex: "d[(i + s) % n] * (pairs[i, 0] + 1) if j == pairs[i, 1] else 0"
""",
    "perm_diag.yaml": """\
name: PermDiag
sizes: [n]
fields:
  d: [n]
  perm: {shape: [n], dtype: int}
size: [n, n]
getindex: d[perm[i]] if i == j else 0
""",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory, request):
    """The specs built for JAX and PyTorch, once (kept in pytest's cache per
    compiler version and spec texts, like conftest's builds)."""
    from conftest import _build_into, _rulegen_digest     # noqa: F401 (the same cache layout)
    cache = getattr(request.config, "cache", None)
    digest = hashlib.sha256(repr(sorted(SPECS.items())).encode()).hexdigest()[:16]
    folder = (cache.mkdir("rulegen-built") / _rulegen_digest() / f"sparse-targets-{digest}") if cache else \
        tmp_path_factory.mktemp("sparse") / "b"
    out = folder / "out"
    if not out.is_dir():
        scratch = tmp_path_factory.mktemp("sparse-src")
        for name, text in SPECS.items():
            (scratch / name).write_text(text)
        proc = run_cli("build", *[str(scratch / n) for n in SPECS], "--target", "jax", "--target", "torch",
                       "--out", str(scratch / "out"))
        assert proc.returncode == 0, proc.stderr
        folder.mkdir(parents=True, exist_ok=True)
        try:
            (scratch / "out").rename(out)
        except OSError:
            pass
    return out


# ---------------------------------------------------------------------------
# The oracle: dense matrices written by hand, J column by column.

def dense_coo(vals, rows, cols, m, n):
    Y = np.zeros((m, n))
    for v, r, c in zip(vals, rows, cols):
        Y[r, c] += v
    return Y


def dense_csr(vals, indptr, cols, m, n):
    Y = np.zeros((m, n))
    for i in range(m):
        for k in range(indptr[i], indptr[i + 1]):
            Y[i, cols[k]] += vals[k]
    return Y


def dense_perm(d, perm):
    n = len(d)
    Y = np.zeros((n, n))
    for i in range(n):
        Y[i, perm[i]] = d[i]
    return Y


def dense_blocks(blocks, offsets, n):
    Y = np.zeros((n, n))
    for b in range(len(offsets) - 1):
        s, e = offsets[b], offsets[b + 1]
        Y[s:e, s:e] += blocks[b, :e - s, :e - s]
    return Y


def dense_pdiag(d, perm):
    return np.diag(np.asarray(d)[perm])


def _cases():
    rng = np.random.default_rng(16)
    out = []
    # COO: a duplicate, an empty row (row 2 never stored), then nnz = 0 and one element
    m, n = 5, 4
    rows = np.array([0, 0, 1, 3, 4, 4, 1, 3, 0])
    cols = np.array([1, 1, 0, 3, 2, 0, 3, 3, 2])
    out.append(("coo-dup-empty-row", "sparse_coo", "SparseCOO", dict(vals=rng.standard_normal(9)),
                dict(rows=rows, cols=cols), dict(m=m, n=n),
                lambda vals, r=rows, c=cols: dense_coo(vals, r, c, m, n)))
    out.append(("coo-empty", "sparse_coo", "SparseCOO", dict(vals=np.zeros(0)),
                dict(rows=np.zeros(0, int), cols=np.zeros(0, int)), dict(m=3, n=2),
                lambda vals: dense_coo(vals, [], [], 3, 2)))
    out.append(("coo-one", "sparse_coo", "SparseCOO", dict(vals=np.array([2.5])),
                dict(rows=np.array([2]), cols=np.array([1])), dict(m=3, n=3),
                lambda vals: dense_coo(vals, [2], [1], 3, 3)))
    # a COO that fills a 2 × 2 matrix once per entry (exact)
    out.append(("coo-full", "sparse_coo", "SparseCOO", dict(vals=rng.standard_normal(4)),
                dict(rows=np.array([1, 0, 1, 0]), cols=np.array([0, 0, 1, 1])), dict(m=2, n=2),
                lambda vals: dense_coo(vals, [1, 0, 1, 0], [0, 0, 1, 1], 2, 2)))
    # CSR: an empty row, a duplicate column in a row
    indptr = np.array([0, 3, 3, 5, 8, 9])
    ccols = np.array([2, 2, 0, 1, 3, 0, 1, 3, 2])
    out.append(("csr-dup-empty-row", "sparse_csr", "SparseCSR", dict(vals=rng.standard_normal(9)),
                dict(indptr=indptr, cols=ccols), dict(n=4),
                lambda vals: dense_csr(vals, indptr, ccols, 5, 4)))
    out.append(("csr-empty", "sparse_csr", "SparseCSR", dict(vals=np.zeros(0)),
                dict(indptr=np.zeros(4, int), cols=np.zeros(0, int)), dict(n=2),
                lambda vals: dense_csr(vals, [0, 0, 0, 0], [], 3, 2)))
    out.append(("csr-one", "sparse_csr", "SparseCSR", dict(vals=np.array([-1.5])),
                dict(indptr=np.array([0, 0, 1]), cols=np.array([0])), dict(n=3),
                lambda vals: dense_csr(vals, [0, 0, 1], [0], 2, 3)))
    # Permutation: a permutation, and a repeated column
    perm = rng.permutation(6)
    out.append(("perm", "permutation", "Permutation", dict(d=rng.standard_normal(6)), dict(perm=perm), {},
                lambda d: dense_perm(d, perm)))
    rep = np.array([1, 1, 0, 3])
    out.append(("perm-repeated", "permutation", "Permutation", dict(d=rng.standard_normal(4)),
                dict(perm=rep), {}, lambda d: dense_perm(d, rep)))
    out.append(("perm-one", "permutation", "Permutation", dict(d=np.array([3.0])),
                dict(perm=np.array([0])), {}, lambda d: dense_perm(d, [0])))
    # BlockDiagonal: an empty block, blocks smaller than bs (padding unused)
    offs = np.array([0, 2, 2, 5, 6])
    out.append(("blocks", "block_diagonal", "BlockDiagonal", dict(blocks=rng.standard_normal((4, 3, 3))),
                dict(offsets=offs), dict(n=6), lambda blocks: dense_blocks(blocks, offs, 6)))
    out.append(("blocks-one", "block_diagonal", "BlockDiagonal", dict(blocks=rng.standard_normal((1, 2, 2))),
                dict(offsets=np.array([0, 2])), dict(n=2),
                lambda blocks: dense_blocks(blocks, [0, 2], 2)))
    # a permuted diagonal with repeats (d[5], d[4] unused... d read twice)
    pm = np.array([0, 0, 2, 1, 5, 5])
    out.append(("pdiag", "perm_diag", "PermDiag", dict(d=rng.standard_normal(6)), dict(perm=pm), {},
                lambda d: dense_pdiag(d, pm)))
    # a scalar integer field in the loop bounds: d[2:] on the second subdiagonal (d[0], d[1] unused)
    out.append(("shift", "shift_diag", "ShiftDiag", dict(d=rng.standard_normal(5)), dict(s=-2), {},
                lambda d: np.diag(d[2:], -2)))
    # column-compressed with a coefficient 3 (u = 9 per element): ragged over j, an empty column
    cptr, crows = np.array([0, 2, 2, 5, 6, 6]), np.array([1, 1, 0, 3, 0, 2])
    ccol = np.repeat(np.arange(5), np.diff(cptr))
    out.append(("csc", "sparse_csc", "SparseCSC", dict(vals=rng.standard_normal(6)),
                dict(indptr=cptr, rows=crows), dict(m=4),
                lambda vals: dense_coo(3 * vals, crows, ccol, 4, 5)))
    # a two-axis integer field (one column compared with j, one in arithmetic) and a scalar one
    pairs = np.array([[0, 1], [2, 2], [1, 0], [0, 3]])

    def shifted(d):
        Y = np.zeros((4, 4))
        Y[np.arange(4), pairs[:, 1]] = d[(np.arange(4) + 1) % 4] * (pairs[:, 0] + 1)
        return Y
    out.append(("pairs", "shifted_pairs", "ShiftedPairs", dict(d=rng.standard_normal(4)),
                dict(s=1, pairs=pairs), {}, shifted))
    return out


CASES = _cases()
IDS = [c[0] for c in CASES]


def oracle(dense, fields):
    """(Y, J, J⁺) of a linear dense function of the real fields."""
    names = list(fields)
    sizes = [np.asarray(fields[f]).size for f in names]
    shapes = [np.shape(fields[f]) for f in names]

    def D(t):
        kw, o = {}, 0
        for f, s, sh in zip(names, sizes, shapes):
            kw[f] = t[o:o + s].reshape(sh)
            o += s
        return dense(**kw)

    theta = np.concatenate([np.ravel(fields[f]) for f in names]) if names else np.zeros(0)
    Y = D(theta)
    p = theta.size
    Jm = np.stack([D(np.eye(p)[c]).ravel() for c in range(p)], 1) if p else np.zeros((Y.size, 0))
    return Y, Jm, np.linalg.pinv(Jm) if Jm.size else Jm.T


def expected(Jm):
    N, p = Jm.shape
    r = np.linalg.matrix_rank(Jm) if Jm.size else 0
    pa = int(np.count_nonzero(np.abs(Jm).sum(0))) if Jm.size else 0
    return "exact" if r == pa == N else "under" if r == pa < N else "over" if r == N < pa else "deficient"


def check_maps(mod, x, fields, dense, fw, seed=0):
    """Every map of ``mod`` at ``x`` against the oracle; ``fw``: (to framework, to numpy)."""
    to, back = fw
    rng = np.random.default_rng(seed)
    cls = type(x)
    names = list(fields)
    Y, Jm, P = oracle(dense, fields)
    flat = lambda s: np.concatenate([back(getattr(s, f)).ravel() for f in names])   # noqa: E731

    def mk(t):
        kw, o = {}, 0
        for f in names:
            a = np.asarray(fields[f])
            kw[f] = to(t[o:o + a.size].reshape(a.shape))
            o += a.size
        return cls._from_arrays(x._size_values, tuple(kw[f] for f in names))

    tol = dict(atol=1e-10, rtol=1e-9)
    np.testing.assert_allclose(back(mod.destructure(x)), Y, **tol)
    dt = rng.standard_normal(Jm.shape[1])
    Yb = rng.standard_normal(Y.shape)
    np.testing.assert_allclose(back(mod.destructure_pushforward(x, mk(dt))).ravel(), Jm @ dt, **tol)
    np.testing.assert_allclose(flat(mod.destructure_pullback(x, to(Yb))), Jm.T @ Yb.ravel(), **tol)
    np.testing.assert_allclose(flat(mod.restructure_pushforward(x, to(Yb))), P @ Yb.ravel(), **tol)
    np.testing.assert_allclose(back(mod.restructure_pullback(x, mk(dt))).ravel(), P.T @ dt, **tol)
    np.testing.assert_allclose(back(mod.project(x, to(Yb))).ravel(), Jm @ P @ Yb.ravel(), **tol)
    v = rng.standard_normal((Y.shape[1], 2))
    u = rng.standard_normal((Y.shape[0], 2))
    np.testing.assert_allclose(back(mod.matvec(x, to(v))), Y @ v, **tol)
    np.testing.assert_allclose(back(mod.matvec(x, to(v[:, 0]))), Y @ v[:, 0], **tol)
    np.testing.assert_allclose(back(mod.rmatvec(x, to(u))), Y.T @ u, **tol)
    np.testing.assert_allclose(back(mod.rmatvec(x, to(u[:, 0]))), Y.T @ u[:, 0], **tol)
    np.testing.assert_allclose(back(mod.diagonal(x)), np.diag(Y), **tol)
    U = rng.standard_normal((Y.shape[0], 3))
    V = rng.standard_normal((Y.shape[1], 3))
    np.testing.assert_allclose(flat(mod.bilinear_pullback(x, to(U), to(V))), Jm.T @ (U @ V.T).ravel(), **tol)
    db = rng.standard_normal(min(Y.shape))
    Dm = np.zeros(Y.shape)
    Dm[np.arange(len(db)), np.arange(len(db))] = db
    np.testing.assert_allclose(flat(mod.diagonal_pullback(x, to(db))), Jm.T @ Dm.ravel(), **tol)
    assert mod.parametrisation(x) == expected(Jm)
    # a structural tangent carries the pattern; its integer fields read back unchanged
    for name in cls._ints:
        np.testing.assert_array_equal(back(getattr(mod.destructure_pullback(x, to(Yb)), name)),
                                      back(getattr(x, name)))


# ---------------------------------------------------------------------------
# JAX

def _jax():
    return pytest.importorskip("jax")


_LOADED: dict = {}


def _module(built, target, stem):
    path = os.path.join(str(built), target, stem + ".py")
    if path not in _LOADED:
        _LOADED[path] = load_module(path)
    return _LOADED[path]


def jax_module(built, stem):
    return _module(built, "jax", stem)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jax_every_map_against_the_oracle(built, case):
    jax = _jax()
    import jax.numpy as jnp
    key, stem, cls_name, fields, ints, sizes, dense = case
    mod = jax_module(built, stem)
    # op by op (jit's compilation per pattern would dominate these tiny cases;
    # test_jax_jit_vmap_grad_jvp runs the maps compiled)
    with jax.enable_x64(True), jax.disable_jit():
        x = getattr(mod, cls_name)(**{k: jnp.asarray(v) for k, v in fields.items()}, **ints, **sizes)
        check_maps(mod, x, fields, dense, (jnp.asarray, np.asarray), seed=zlib.crc32(key.encode()))


# ---------------------------------------------------------------------------
# PyTorch

def _torch():
    return pytest.importorskip("torch")


def torch_module(built, stem):
    return _module(built, "torch", stem)


def _tnp(t):
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_torch_every_map_against_the_oracle(built, case):
    torch = _torch()
    key, stem, cls_name, fields, ints, sizes, dense = case
    mod = torch_module(built, stem)
    x = getattr(mod, cls_name)(**{k: torch.as_tensor(v, dtype=torch.float64) for k, v in fields.items()},
                               **{k: torch.as_tensor(v) for k, v in ints.items()}, **sizes)
    for name in x._ints:
        t = getattr(x, name)
        assert isinstance(t, torch.Tensor) and t.dtype == torch.int64 and not t.requires_grad
    check_maps(mod, x, fields, dense, (lambda a: torch.as_tensor(a, dtype=torch.float64), _tnp),
               seed=zlib.crc32(key.encode()))


# ---------------------------------------------------------------------------
# Transforms: JAX jit / vmap / grad / jvp, torch batches / autograd / torch.func

FIRST = {}
for _c in CASES:
    FIRST.setdefault(_c[1], _c)
TRANSFORM_CASES = list(FIRST.values())
TRANSFORM_IDS = [c[1] for c in TRANSFORM_CASES]


@pytest.mark.parametrize("case", TRANSFORM_CASES, ids=TRANSFORM_IDS)
def test_jax_jit_vmap_grad_jvp(built, case):
    jax = _jax()
    import jax.numpy as jnp
    key, stem, cls_name, fields, ints, sizes, dense = case
    mod = jax_module(built, stem)
    cls = getattr(mod, cls_name)
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        # the pattern given as JAX integer arrays (concrete): read back as numpy
        insts = [cls(**{k: jnp.asarray(np.asarray(v) + 0.1 * b) for k, v in fields.items()},
                     **{k: jnp.asarray(v) for k, v in ints.items()}, **sizes) for b in range(3)]
        x = insts[0]
        W = jnp.asarray(rng.standard_normal(x.shape))
        Ws = jnp.asarray(rng.standard_normal((3,) + x.shape))
        t = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), x)
        # the integer fields are static data: tree_map maps the real fields only and keeps the pattern
        assert len(jax.tree_util.tree_leaves(x)) == len(fields)
        for name in cls._ints:
            np.testing.assert_array_equal(getattr(t, name), ints[name])
        # grad of a loss through destructure is the structural pullback (no allow_int needed)
        g = jax.grad(lambda x: jnp.sum(W * mod.destructure(x)))(x)
        assert isinstance(g, cls)
        for a, b in zip(g._arrays, mod.destructure_pullback(x, W)._arrays):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        _, dY = jax.jvp(mod.destructure, (x,), (t,))
        np.testing.assert_allclose(dY, mod.destructure_pushforward(x, t), rtol=1e-12, atol=1e-12)
        f = jax.jit(lambda x, W: mod.destructure_pushforward(x, mod.restructure_pushforward(x, W)))
        np.testing.assert_allclose(f(x, W), mod.project(x, W), rtol=1e-9, atol=1e-12)
        # vmap over a batch of instances that share the pattern
        xb = cls._from_arrays(x._size_values, tuple(jnp.stack(a) for a in zip(*(i._arrays for i in insts))))
        np.testing.assert_allclose(jax.vmap(mod.destructure)(xb), np.stack([mod.destructure(i) for i in insts]))
        np.testing.assert_allclose(jax.vmap(mod.project)(xb, Ws),
                                   np.stack([mod.project(i, w) for i, w in zip(insts, Ws)]), atol=1e-12)
        np.testing.assert_allclose(jax.vmap(mod.matvec)(xb, Ws[:, 0, :x.shape[1]]),
                                   np.stack([mod.matvec(i, w[0, :x.shape[1]]) for i, w in zip(insts, Ws)]),
                                   atol=1e-12)
        pb = jax.vmap(mod.destructure_pullback)(xb, Ws)
        for name in fields:
            np.testing.assert_allclose(getattr(pb, name),
                                       np.stack([getattr(mod.destructure_pullback(i, w), name)
                                                 for i, w in zip(insts, Ws)]), atol=1e-12)


@pytest.mark.parametrize("case", TRANSFORM_CASES, ids=TRANSFORM_IDS)
def test_torch_batches_autograd_and_func(built, case):
    torch = _torch()
    key, stem, cls_name, fields, ints, sizes, dense = case
    mod = torch_module(built, stem)
    cls = getattr(mod, cls_name)
    rng = np.random.default_rng(4)
    f64 = dict(dtype=torch.float64)
    batch = {k: torch.as_tensor(np.stack([np.asarray(v) + 0.1 * b for b in range(3)]), **f64)
             for k, v in fields.items()}
    xb = cls(**batch, **ints, **sizes)
    assert xb.batch_shape == (3,)
    W = torch.as_tensor(rng.standard_normal((3,) + xb.shape), **f64)
    singles = [cls(**{k: v[b] for k, v in batch.items()}, **ints, **sizes) for b in range(3)]
    Yb = mod.destructure(xb)
    for b, x in enumerate(singles):
        np.testing.assert_allclose(_tnp(Yb[b]), dense(**{k: _tnp(v[b]) for k, v in batch.items()}), atol=1e-12)
        np.testing.assert_allclose(_tnp(mod.project(xb, W)[b]), _tnp(mod.project(x, W[b])), atol=1e-12)
    # autograd: backward gives the structural pullback
    leaves = {k: v.clone().requires_grad_(True) for k, v in batch.items()}
    (mod.destructure(cls(**leaves, **ints, **sizes)) * W).sum().backward()
    pb = mod.destructure_pullback(xb, W)
    for k in fields:
        np.testing.assert_allclose(_tnp(leaves[k].grad), _tnp(getattr(pb, k)), atol=1e-12)
    # torch.func: grad returns an instance with the pattern; vmap over instances equals the batch
    x = singles[0]
    g = torch.func.grad(lambda x: (mod.destructure(x) * W[0]).sum())(x)
    assert isinstance(g, cls)
    for name in cls._ints:
        np.testing.assert_array_equal(_tnp(getattr(g, name)), ints[name])
    _, dY = torch.func.jvp(mod.destructure, (x,), (x,))
    np.testing.assert_allclose(_tnp(dY), _tnp(mod.destructure_pushforward(x, x)), atol=1e-12)
    np.testing.assert_allclose(_tnp(torch.func.vmap(mod.destructure)(xb)), _tnp(Yb), atol=1e-12)


# ---------------------------------------------------------------------------
# Hostile integer fields: clear errors at construction (or at the first read
# of a field that the pattern points outside of)

def _frameworks():
    out = []
    for name in ("jax", "torch"):
        try:
            __import__(name)
            out.append(name)
        except ImportError:
            pass
    return out


def _make(built, fw, stem, cls_name, fields, ints, sizes):
    mod = _module(built, fw, stem)
    if fw == "jax":
        import jax.numpy as jnp
        conv = {k: jnp.asarray(np.asarray(v, float)) for k, v in fields.items()}
    else:
        import torch
        conv = {k: torch.as_tensor(np.asarray(v, float)) for k, v in fields.items()}
    return mod, getattr(mod, cls_name)(**conv, **ints, **sizes)


COO = ("sparse_coo", "SparseCOO", dict(vals=[1.0, 2.0, 3.0]))
CSR = ("sparse_csr", "SparseCSR", dict(vals=[1.0, 2.0, 3.0]))
HOSTILE = [
    ("float-rows", COO, dict(rows=np.array([0.0, 1.0, 2.0]), cols=[0, 1, 1]), dict(m=3, n=2),
     TypeError, r"SparseCOO: integer field 'rows' must hold integers"),
    ("negative-row", COO, dict(rows=[0, -1, 2], cols=[0, 1, 1]), dict(m=3, n=2),
     ValueError, r"integer field 'rows'\[1\] = -1 is out of range.*\[0, 3\)"),
    ("column-out-of-range", COO, dict(rows=[0, 1, 2], cols=[0, 2, 1]), dict(m=3, n=2),
     ValueError, r"integer field 'cols'\[1\] = 2 is out of range.*\[0, 2\)"),
    ("wrong-length", COO, dict(rows=[0, 1, 2, 0], cols=[0, 1, 1]), dict(m=3, n=2),
     ValueError, r"'rows'"),
    ("batched-pattern", COO, dict(rows=[[0, 1, 2], [0, 1, 2]], cols=[0, 1, 1]), dict(m=3, n=2),
     ValueError, r"integer field 'rows' must be a 1-dimensional array"),
    ("decreasing-indptr", CSR, dict(indptr=[0, 2, 1, 3], cols=[0, 1, 1]), dict(n=2),
     ValueError, r"'indptr' must be non-decreasing.*indptr\[1\] = 2 > indptr\[2\] = 1"),
    ("indptr-past-nnz", CSR, dict(indptr=[0, 1, 2, 4], cols=[0, 1, 1]), dict(n=2),
     ValueError, r"integer field 'indptr'\[3\] = 4 is out of range"),
    ("perm-out-of-range", ("permutation", "Permutation", dict(d=[1.0, 2.0])), dict(perm=[0, 2]), {},
     ValueError, r"integer field 'perm'\[1\] = 2 is out of range"),
]


@pytest.mark.parametrize("fw", _frameworks())
@pytest.mark.parametrize("case", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_integer_fields_are_refused(built, fw, case):
    _, (stem, cls_name, fields), ints, sizes, exc, match = case
    with pytest.raises(exc, match=match):
        _make(built, fw, stem, cls_name, fields, ints, sizes)


@pytest.mark.parametrize("fw", _frameworks())
def test_a_float_tensor_pattern_a_foreign_pattern_and_blocks_past_bs(built, fw):
    mod, x = _make(built, fw, *COO, dict(rows=[0, 1, 2], cols=[0, 1, 1]), dict(m=3, n=2))
    _, other = _make(built, fw, *COO, dict(rows=[0, 1, 1], cols=[0, 1, 1]), dict(m=3, n=2))
    # a tangent must carry x's pattern
    with pytest.raises(ValueError, match=r"integer field 'rows' of x"):
        mod.destructure_pushforward(x, other)
    # a block longer than bs: refused at construction, never clamped
    with pytest.raises(ValueError, match=r"integer field 'offsets' steps from offsets\[0\] = 0 to "
                                         r"offsets\[1\] = 3, more than 2"):
        _make(built, fw, "block_diagonal", "BlockDiagonal", dict(blocks=np.ones((2, 2, 2))),
              dict(offsets=[0, 3, 4]), dict(n=4))
    # and a read through the pattern outside a field, were it to get past the checks, raises
    bmod, b = _make(built, fw, "block_diagonal", "BlockDiagonal", dict(blocks=np.ones((2, 2, 2))),
                    dict(offsets=[0, 2, 4]), dict(n=4))
    bad = type(b)._from_arrays(b._size_values[:3] + (type(b._size_values[3])(np.array([0, 3, 4])),), b._arrays)
    with pytest.raises(IndexError, match=r"getindex reads blocks at index 2 along axis 1"):
        bmod.destructure(bad)
    if fw == "torch":
        import torch
        with pytest.raises(TypeError, match=r"integer field 'rows' must hold integers, got dtype torch.float32"):
            mod.SparseCOO(vals=torch.ones(3), rows=torch.zeros(3), cols=torch.zeros(3, dtype=torch.int64),
                          m=3, n=2)
    else:
        import jax
        import jax.numpy as jnp

        def inside(r):
            return mod.destructure(mod.SparseCOO(vals=jnp.ones(3), rows=r, cols=[0, 1, 1], m=3, n=2))
        with pytest.raises(TypeError, match=r"integer field 'rows' is a traced JAX value"):
            jax.jit(inside)(jnp.asarray([0, 1, 2]))


@pytest.mark.parametrize("fw", _frameworks())
def test_derived_operations_never_form_the_dense_matrix(built, fw):
    """A 10⁶ × 10⁶ COO and CSR with a handful of elements: matvec, rmatvec,
    diagonal and bilinear_pullback cost O(nnz·k + m + n), never m·n."""
    m = n = 10 ** 6
    rows, cols = np.array([0, 5, 5, m - 1, 7]), np.array([3, 5, 5, n - 1, 0])
    vals = np.array([1.0, 2.0, -1.0, 4.0, 0.5])
    order = np.argsort(rows, kind="stable")
    indptr = np.searchsorted(rows[order], np.arange(m + 1))
    v, u = np.zeros(n), np.zeros(m)
    v[[3, 5, n - 1, 0]] = [1.0, 2.0, 3.0, 4.0]
    u[[0, 5, m - 1, 7]] = [5.0, 6.0, 7.0, 8.0]
    Yv, Ytu, diag = np.zeros(m), np.zeros(n), {}
    for a, r, c in zip(vals, rows, cols):
        Yv[r] += a * v[c]
        Ytu[c] += a * u[r]
        if r == c:
            diag[r] = diag.get(r, 0.0) + a
    for mod, x in (
            _make(built, fw, "sparse_coo", "SparseCOO", dict(vals=vals), dict(rows=rows, cols=cols), dict(m=m, n=n)),
            _make(built, fw, "sparse_csr", "SparseCSR", dict(vals=vals[order]), dict(indptr=indptr, cols=cols[order]),
                  dict(n=n))):
        conv = (lambda a: a) if fw == "jax" else __import__("torch").as_tensor
        np.testing.assert_allclose(_tnp(mod.matvec(x, conv(v))), Yv, rtol=1e-6)
        np.testing.assert_allclose(_tnp(mod.rmatvec(x, conv(u))), Ytu, rtol=1e-6)
        d = _tnp(mod.diagonal(x))
        assert d.shape == (m,) and np.count_nonzero(d) == len(diag) and np.isclose(d[5], diag[5])
        g = _tnp(mod.bilinear_pullback(x, conv(u[:, None]), conv(v[:, None])).vals)
        want = np.array([u[r] * v[c] for r, c in zip(rows, cols)])
        np.testing.assert_allclose(g, want if mod is _module(built, fw, "sparse_coo") else want[order], rtol=1e-6)
