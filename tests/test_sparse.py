"""Integer fields and data-dependent patterns (issue #16), numba target.

Every reference value comes from an independent route: dense matrices built
by hand in numpy from the stored entries (``np.add.at`` for duplicates), their
Jacobian over the real fields column by column (tests/helpers.py), and
numpy.linalg.pinv. Patterns with duplicates, empty rows, nnz = 0 and a single
element; hostile integer fields; scipy interop; agreement with PyTorch's
``to_dense(masked_grad=True)`` and ``jax.experimental.sparse`` (skipped when
not installed); the 10⁶ × 10⁶ COO matrix under a 6 GiB cap."""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers import ROOT, check_all_maps, expected_class, generated, jacobian, struct_vec

C = generated("sparse_coo")
R = generated("sparse_csr")
P = generated("permutation")
B = generated("block_diagonal")


def coo_dense(vals, rows, cols, m, n):
    Y = np.zeros((m, n), np.result_type(vals, float))
    np.add.at(Y, (rows, cols), vals)
    return Y


def csr_rows(indptr):
    return np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))


# (rows, cols, m, n): duplicates, an empty row, nnz = 0, a single element, a full pattern
PATTERNS = {
    "duplicates": (np.array([0, 2, 2, 4, 0, 3, 2]), np.array([1, 0, 0, 3, 1, 2, 3]), 5, 4),
    "empty_row": (np.array([0, 0, 3, 4]), np.array([0, 2, 1, 1]), 5, 3),
    "nnz0": (np.zeros(0, int), np.zeros(0, int), 3, 4),
    "single": (np.array([1]), np.array([2]), 2, 3),
    "full": (np.repeat(np.arange(2), 3), np.tile(np.arange(3), 2), 2, 3),
}


@pytest.mark.parametrize("case", sorted(PATTERNS))
def test_coo_every_map_against_the_oracle(case):
    rows, cols, m, n = PATTERNS[case]
    vals = np.random.default_rng(1).standard_normal(len(rows))
    check_all_maps(C, C.SparseCOO, dict(vals=vals), dict(rows=rows, cols=cols, m=m, n=n),
                   lambda f: coo_dense(f["vals"], rows, cols, m, n), ["vals"])


@pytest.mark.parametrize("case", sorted(PATTERNS))
def test_csr_every_map_against_the_oracle(case):
    rows, cols, m, n = PATTERNS[case]
    order = np.lexsort((cols, rows))          # CSR stores rows in order; keep duplicates
    rows, cols = rows[order], cols[order]
    indptr = np.searchsorted(rows, np.arange(m + 1))
    vals = np.random.default_rng(2).standard_normal(len(rows))
    check_all_maps(R, R.SparseCSR, dict(vals=vals), dict(indptr=indptr, cols=cols, n=n),
                   lambda f: coo_dense(f["vals"], rows, cols, m, n), ["vals"])


def test_duplicates_share_a_change_in_proportion_and_project_is_the_mask():
    rows, cols, m, n = PATTERNS["duplicates"]
    x = C.SparseCOO(vals=np.arange(7.0), rows=rows, cols=cols, m=m, n=n)
    ydot = np.random.default_rng(3).standard_normal((m, n))
    t = C.restructure_pushforward(x, ydot)
    # (0, 1) is stored at k = 0 and 4: each gets half of the change there
    assert t.vals[0] == t.vals[4] == pytest.approx(ydot[0, 1] / 2)
    mask = np.zeros((m, n), bool)
    mask[rows, cols] = True
    np.testing.assert_allclose(C.project(x, ydot), np.where(mask, ydot, 0.0), atol=1e-15)
    assert C._KIND == "scatter" and C.parametrisation(x) == "deficient"


def test_permutation_and_block_diagonal_against_the_oracle():
    rng = np.random.default_rng(4)
    for perm in (rng.permutation(6), np.array([2, 2, 0, 5, 1, 5])):
        def dense(f, perm=perm):
            Y = np.zeros((6, 6))
            Y[np.arange(6), perm] = f["d"]
            return Y
        check_all_maps(P, P.Permutation, dict(d=rng.standard_normal(6)), dict(perm=perm), dense, ["d"])
    for offsets in (np.array([0, 2, 2, 5, 6]), np.array([0, 0, 0, 0, 0]), np.array([0, 3, 6, 6, 6])):
        def dense(f, offsets=offsets):
            Y = np.zeros((6, 6))
            for b in range(4):
                s, e = offsets[b], offsets[b + 1]
                Y[s:e, s:e] = f["blocks"][b, :e - s, :e - s]
            return Y
        check_all_maps(B, B.BlockDiagonal, dict(blocks=rng.standard_normal((4, 3, 3))),
                       dict(offsets=offsets, n=6), dense, ["blocks"])


PERMUTED_DIAGONAL = """name: PermutedDiagonal
sizes: [n]
fields:
  d: [n]
  p: {shape: [n], dtype: int}
size: [n, n]
getindex: d[p[i]] if i == j else 0
"""

# held-out patterns: a weighted COO plus a dense diagonal (two regions: LSQR), a
# COO whose entries are nonlinear, and a sliding window read through an offset table
HELD_OUT = {
    "coo_plus_diag": ("""name: CooPlusDiag
sizes: [n, nnz]
fields:
  vals: [nnz]
  d: [n]
  r: {shape: [nnz], dtype: int}
  c: {shape: [nnz], dtype: int}
size: [n, n]
getindex: "(d[i] if i == j else 0) + 2 * sum(vals[k] for k in range(nnz) if r[k] == i and c[k] == j)"
""", "general"),
    "coo_exp": ("""name: CooExp
sizes: [m, n, nnz]
fields:
  vals: [nnz]
  r: {shape: [nnz], dtype: int}
  c: {shape: [nnz], dtype: int}
size: [m, n]
getindex: "sum(exp(vals[k]) for k in range(nnz) if r[k] == i and c[k] == j)"
""", "general"),
}


CSC = """name: SparseCSC
sizes: [m, n, nnz]
fields:
  vals: [nnz]
  indptr: {shape: [n + 1], dtype: int}
  rows: {shape: [nnz], dtype: int}
size: [m, n]
getindex: sum(3 * vals[k] for k in range(indptr[j], indptr[j + 1]) if rows[k] == i)
"""

ROW_GATHER = """name: RowGather
sizes: [m, n, r]
fields:
  A: [r, n]
  sel: {shape: [m], dtype: int}
size: [m, n]
getindex: A[sel[i], j] * 2
"""

TWO_AXES = """name: ShiftedPairs
sizes: [n]
fields:
  d: [n]
  s: {shape: [], dtype: int}
  pairs: {shape: [n, 2], dtype: int}
size: [n, n]
getindex: "d[(i + s) % n] * (pairs[i, 0] + 1) if j == pairs[i, 1] else 0"
"""


def test_held_out_column_compressed_row_gather_and_two_axis_fields(build_once):
    rng = np.random.default_rng(12)
    mod = build_once(CSC)
    indptr, rows = np.array([0, 2, 2, 5, 6, 6]), np.array([1, 1, 0, 3, 0, 2])
    cols = np.repeat(np.arange(5), np.diff(indptr))
    check_all_maps(mod, mod.SparseCSC, dict(vals=rng.standard_normal(6)), dict(indptr=indptr, rows=rows, m=4),
                   lambda f: coo_dense(3 * f["vals"], rows, cols, 4, 5), ["vals"])
    assert mod._KIND == "scatter"
    mod = build_once(ROW_GATHER)
    sel = np.array([2, 0, 2, 1, 1])
    check_all_maps(mod, mod.RowGather, dict(A=rng.standard_normal((3, 4))), dict(sel=sel),
                   lambda f: 2 * f["A"][sel], ["A"])
    mod = build_once(TWO_AXES)
    pairs = np.array([[0, 1], [2, 2], [1, 0], [0, 3]])

    def dense(f):
        Y = np.zeros((4, 4))
        Y[np.arange(4), pairs[:, 1]] = f["d"][(np.arange(4) + 1) % 4] * (pairs[:, 0] + 1)
        return Y
    check_all_maps(mod, mod.ShiftedPairs, dict(d=rng.standard_normal(4)), dict(s=1, pairs=pairs), dense, ["d"])
    # only the column that getindex compares with j is checked: the other is arithmetic
    mod.ShiftedPairs(d=np.ones(4), s=1, pairs=pairs + [7, 0])
    with pytest.raises(ValueError, match=r"'pairs'\[1, 1\] = 4 is out of range"):
        mod.ShiftedPairs(d=np.ones(4), s=1, pairs=pairs + [0, 2])


# more held-out patterns (spec text, its class, fields, integer fields and sizes, dense oracle, order)
_R, _C = np.array([0, 2, 2, 1, 0]), np.array([1, 0, 0, 2, 1])


def _scatter_rows(B, rows, m):
    Y = np.zeros((m,) + B.shape[1:])
    np.add.at(Y, rows, B)
    return Y


MORE = {
    "colperm": ("""name: ColPerm
sizes: [m, n]
fields:
  A: [m, n]
  p: {shape: [n], dtype: int}
size: [m, n]
getindex: A[i, p[j]]
""", dict(A=(3, 4)), dict(p=np.array([2, 0, 0, 1])), lambda f: f["A"][:, [2, 0, 0, 1]]),
    "masked": ("""name: MaskedDiag
sizes: [n]
fields:
  d: [n]
  mask: {shape: [n], dtype: int}
size: [n, n]
getindex: d[i] if mask[i] > 0 and i == j else 0
""", dict(d=(4,)), dict(mask=np.array([1, 0, 2, -1])), lambda f: np.diag(np.where(np.array([1, 0, 2, -1]) > 0, f["d"], 0))),
    "cooscaled": ("""name: CooScaled
sizes: [m, n, nnz]
fields:
  vals: [nnz]
  w: [m]
  s: []
  rows: {shape: [nnz], dtype: int}
  cols: {shape: [nnz], dtype: int}
size: [m, n]
getindex: s * sum(vals[k] * w[i] for k in range(nnz) if rows[k] == i and cols[k] == j)
""", dict(vals=(5,), w=(3,), s=()), dict(rows=_R, cols=_C, n=3), lambda f: f["s"] * coo_dense(f["vals"] * f["w"][_R], _R, _C, 3, 3)),
    "flagged": ("""name: Flagged
sizes: [m, n, nnz]
fields:
  vals: [nnz]
  rows: {shape: [nnz], dtype: int}
  cols: {shape: [nnz], dtype: int}
  flag: {shape: [nnz], dtype: int}
size: [m, n]
getindex: sum(vals[k] for k in range(nnz) if rows[k] == i and cols[k] == j and flag[k] == 1)
""", dict(vals=(5,)), dict(rows=_R, cols=_C, flag=np.array([1, 0, 1, 1, 5]), m=3, n=3), lambda f: coo_dense(np.where(np.array([1, 0, 1, 1, 5]) == 1, f["vals"], 0), _R, _C, 3, 3)),
    "rowsparse": ("""name: RowSparse
sizes: [m, n, nnz]
fields:
  B: [nnz, n]
  rows: {shape: [nnz], dtype: int}
size: [m, n]
getindex: sum(B[k, j] for k in range(nnz) if rows[k] == i)
""", dict(B=(5, 3)), dict(rows=_R, m=4), lambda f: _scatter_rows(f["B"], _R, 4)),
    "lens": ("""name: PrefixDiag
sizes: [n]
fields:
  d: [n]
  lens: {shape: [n], dtype: int}
size: [n, n]
getindex: sum(d[k] for k in range(lens[i])) if i == j else 0
""", dict(d=(4,)), dict(lens=np.array([0, 3, 1, 4])), lambda f: np.diag([f["d"][:n].sum() for n in (0, 3, 1, 4)])),
    "bcoo": ("""name: Bcoo
sizes: [m, n, nnz]
fields:
  data: [nnz]
  idx: {shape: [nnz, 2], dtype: int}
size: [m, n]
getindex: sum(data[k] for k in range(nnz) if idx[k, 0] == i and idx[k, 1] == j)
""", dict(data=(5,)), dict(idx=np.stack([_R, _C], 1), m=3, n=3), lambda f: coo_dense(f["data"], _R, _C, 3, 3)),
    "offset": ("""name: OffsetPerm
sizes: [n]
fields:
  d: [n]
  p: {shape: [n], dtype: int}
size: [n, n]
getindex: d[p[i] - 1] if j == p[i] - 1 else 0
""", dict(d=(4,)), dict(p=np.array([1, 3, 3, 4])), lambda f: _offset_dense(f["d"], np.array([1, 3, 3, 4]))),
    "weighted": ("""name: WeightedCoo
sizes: [m, n, nnz]
fields:
  vals: [nnz]
  rows: {shape: [nnz], dtype: int}
  cols: {shape: [nnz], dtype: int}
  mult: {shape: [nnz], dtype: int}
size: [m, n]
getindex: sum(mult[k] * vals[k] for k in range(nnz) if rows[k] == i and cols[k] == j)
""", dict(vals=(5,)), dict(rows=_R, cols=_C, mult=np.array([2, 0, -1, 3, 1]), m=3, n=3),
        lambda f: coo_dense(np.array([2, 0, -1, 3, 1]) * f["vals"], _R, _C, 3, 3)),
}


def _offset_dense(d, p):
    Y = np.zeros((4, 4))
    Y[np.arange(4), p - 1] = d[p - 1]
    return Y


@pytest.mark.parametrize("case", sorted(MORE))
def test_more_held_out_patterns_against_the_oracle(case, build_once):
    text, shapes, extra, dense = MORE[case]
    mod = build_once(text)
    cls = getattr(mod, re.search(r"name: (\w+)", text).group(1))
    rng = np.random.default_rng(13)
    fields = {k: rng.standard_normal(shape) for k, shape in shapes.items()}
    check_all_maps(mod, cls, fields, extra, dense, list(shapes), atol=1e-8)
    if case == "weighted":      # integer-field coefficients keep the closed form
        assert mod._KIND == "scatter"


def test_permuted_diagonal_weights_follow_the_data(build_once):
    mod = build_once(PERMUTED_DIAGONAL)
    rng = np.random.default_rng(5)
    for p in (np.array([0, 0, 2, 1, 3]), np.array([4, 3, 2, 1, 0])):
        check_all_maps(mod, mod.PermutedDiagonal, dict(d=rng.standard_normal(5)), dict(p=p),
                       lambda f, p=p: np.diag(f["d"][p]), ["d"])


def test_held_out_patterns_against_the_oracle(build_once):
    rng = np.random.default_rng(6)
    r, c = np.array([0, 1, 1, 3, 0]), np.array([2, 0, 0, 3, 2])
    mod = build_once(HELD_OUT["coo_plus_diag"][0])
    assert mod._KIND == "general"

    def dense(f):
        return np.diag(f["d"]) + 2 * coo_dense(f["vals"], r, c, 4, 4)
    check_all_maps(mod, mod.CooPlusDiag, dict(vals=rng.standard_normal(5), d=rng.standard_normal(4)),
                   dict(r=r, c=c), dense, ["vals", "d"], atol=1e-8)
    mod = build_once(HELD_OUT["coo_exp"][0])
    vals = rng.standard_normal(5)
    x = mod.CooExp(vals=vals, r=r, c=c, m=4, n=4)
    np.testing.assert_allclose(mod.destructure(x), coo_dense(np.exp(vals), r, c, 4, 4))
    J = jacobian(lambda f: coo_dense(np.exp(f["vals"]), r, c, 4, 4), dict(vals=vals), ["vals"], step=1e-6)
    ybar = rng.standard_normal((4, 4))
    np.testing.assert_allclose(mod.destructure_pullback(x, ybar).vals, J.T @ ybar.ravel(), rtol=1e-7)


def test_batches_share_the_pattern():
    rows, cols, m, n = PATTERNS["duplicates"]
    vals = np.random.default_rng(7).standard_normal((3, len(rows)))
    x = C.SparseCOO(vals=vals, rows=rows, cols=cols, m=m, n=n)
    assert x.batch_shape == (3,)
    Y = C.destructure(x)
    for b in range(3):
        np.testing.assert_allclose(Y[b], coo_dense(vals[b], rows, cols, m, n))
    v = np.random.default_rng(8).standard_normal(n)
    np.testing.assert_allclose(C.matvec(x, v), np.einsum("bij,j->bi", Y, v), atol=1e-13)
    x32 = C.SparseCOO(vals=vals.astype(np.float32), rows=rows, cols=cols, m=m, n=n)
    assert C.destructure(x32).dtype == np.float32


def test_complex_values():
    rows, cols, m, n = PATTERNS["duplicates"]
    rng = np.random.default_rng(9)
    vals = rng.standard_normal(7) + 1j * rng.standard_normal(7)
    x = C.SparseCOO(vals=vals, rows=rows, cols=cols, m=m, n=n)
    Y = coo_dense(vals, rows, cols, m, n)
    np.testing.assert_allclose(C.destructure(x), Y)
    ybar = rng.standard_normal((m, n)) + 1j * rng.standard_normal((m, n))
    # ChainRules' convention: the cotangent of vals[k] is ybar[rows[k], cols[k]]
    np.testing.assert_allclose(C.destructure_pullback(x, ybar).vals, ybar[rows, cols])
    mask = np.zeros((m, n), bool)
    mask[rows, cols] = True
    np.testing.assert_allclose(C.project(x, ybar), np.where(mask, ybar, 0), atol=1e-15)


def test_structural_tangents_carry_the_pattern():
    rows, cols, m, n = PATTERNS["duplicates"]
    x = C.SparseCOO(vals=np.ones(7), rows=rows, cols=cols, m=m, n=n)
    t = C.destructure_pullback(x, np.ones((m, n)))
    assert t.rows is x.rows and t.cols is x.cols
    s = t + t
    assert np.array_equal(s.rows, rows)
    other = C.SparseCOO(vals=np.ones(7), rows=rows[::-1].copy(), cols=cols, m=m, n=n)
    with pytest.raises(ValueError, match="integer field 'rows' of x"):
        C.destructure_pushforward(x, other)
    assert "rows" not in C.SparseCOO._fields and C.SparseCOO._ints == ("rows", "cols")


HOSTILE = [
    (dict(rows=[0.0, 1.0]), TypeError, "integer field 'rows' must hold integers, got dtype float64"),
    (dict(rows=[0, -1]), ValueError, r"'rows'\[1\] = -1 is out of range: it is compared with i, a row index, "
                                     r"so it must lie in \[0, 3\)"),
    (dict(cols=[0, 4]), ValueError, r"'cols'\[1\] = 4 is out of range: it is compared with j"),
    (dict(rows=[0, 1, 2]), ValueError, r"field 'rows' must have shape \(nnz,\) = \(2,\)"),
    (dict(rows=[[0, 1]]), ValueError, "integer fields take no batch dimensions"),
    (dict(rows=[True, False]), TypeError, "must hold integers, got dtype bool"),
]


@pytest.mark.parametrize("bad, exc, message", HOSTILE)
def test_hostile_integer_fields_are_refused(bad, exc, message):
    fields = dict(vals=[1.0, 2.0], rows=[0, 1], cols=[1, 2], m=3, n=4)
    fields.update(bad)
    with pytest.raises(exc, match=message):
        C.SparseCOO(**fields)


def test_hostile_csr_and_block_offsets():
    with pytest.raises(ValueError, match=r"'indptr' must be non-decreasing .* indptr\[1\] = 2 > indptr\[2\] = 1"):
        R.SparseCSR(vals=[1.0, 2.0], indptr=[0, 2, 1, 2], cols=[0, 1], n=2)
    with pytest.raises(ValueError, match=r"'indptr'\[3\] = 3 is out of range: it bounds the range of k, "
                                         r"which subscripts vals, so it must lie in \[0, 3\)"):
        R.SparseCSR(vals=[1.0, 2.0], indptr=[0, 1, 2, 3], cols=[0, 1], n=2)
    with pytest.raises(ValueError, match=r"'perm'\[0\] = 3 is out of range"):
        P.Permutation(d=[1.0, 2.0, 3.0], perm=[3, 0, 1])
    with pytest.raises(ValueError, match="'offsets' must be non-decreasing"):
        B.BlockDiagonal(blocks=np.zeros((2, 2, 2)), offsets=[0, 2, 1], n=3)
    with pytest.raises(ValueError, match=r"'offsets' steps from offsets\[0\] = 0 to offsets\[1\] = 3, more than 2"):
        B.BlockDiagonal(blocks=np.zeros((2, 2, 2)), offsets=[0, 3, 4], n=4)
    with pytest.raises(TypeError, match="missing integer field 'perm'"):
        P.Permutation(d=[1.0])


def test_scipy_round_trip():
    sps = pytest.importorskip("scipy.sparse")
    from rulegen.builtins import sparse_coo, sparse_csr     # what from_scipy returns instances of
    from rulegen.sparse import from_scipy, to_scipy

    rows, cols, m, n = PATTERNS["duplicates"]
    vals = np.random.default_rng(10).standard_normal(len(rows))
    A = sps.coo_array((vals, (rows, cols)), shape=(m, n))
    x = from_scipy(A)
    assert type(x).__name__ == "SparseCOO"
    np.testing.assert_array_equal(x.rows, rows)          # duplicates kept as stored
    np.testing.assert_allclose(sparse_coo.destructure(x), A.toarray())
    back = to_scipy(x)
    assert back.format == "coo" and back.nnz == len(rows)
    np.testing.assert_allclose(back.toarray(), A.toarray())
    Acsr = A.tocsr()
    xr = from_scipy(Acsr)
    assert type(xr).__name__ == "SparseCSR"
    np.testing.assert_allclose(sparse_csr.destructure(xr), A.toarray())
    assert (to_scipy(xr) != Acsr).nnz == 0
    with pytest.raises(TypeError, match="scipy.sparse"):
        from_scipy(np.eye(2))
    with pytest.raises(TypeError, match="SparseCOO or SparseCSR"):
        to_scipy(P.Permutation(d=[1.0], perm=[0]))


def _unique_pattern():
    rng = np.random.default_rng(11)
    m, n = 6, 5
    flat = rng.choice(m * n, 9, replace=False)
    return flat // n, flat % n, m, n, rng.standard_normal(9), rng.standard_normal((m, n))


def test_agrees_with_torch_masked_grad():
    torch = pytest.importorskip("torch")
    rows, cols, m, n, vals, ybar = _unique_pattern()
    values = torch.tensor(vals, requires_grad=True)
    S = torch.sparse_coo_tensor(torch.tensor(np.stack([rows, cols])), values, (m, n), check_invariants=True)
    S.retain_grad()
    (S.to_dense(masked_grad=True) * torch.tensor(ybar)).sum().backward()
    x = C.SparseCOO(vals=vals, rows=rows, cols=cols, m=m, n=n)
    np.testing.assert_allclose(C.destructure_pullback(x, ybar).vals, values.grad.numpy(), atol=1e-15)
    np.testing.assert_allclose(C.project(x, ybar), S.grad.to_dense().numpy(), atol=1e-15)


def test_agrees_with_jax_experimental_sparse():
    pytest.importorskip("jax")
    import jax
    import jax.numpy as jnp
    from jax.experimental import sparse

    jax.config.update("jax_enable_x64", True)
    rows, cols, m, n, vals, ybar = _unique_pattern()
    M = sparse.BCOO((jnp.asarray(vals), jnp.asarray(np.stack([rows, cols], 1))), shape=(m, n))
    g = sparse.grad(lambda M: (M.todense() * ybar).sum())(M)       # the gradient in the pattern's subspace
    x = C.SparseCOO(vals=vals, rows=rows, cols=cols, m=m, n=n)
    np.testing.assert_allclose(C.destructure_pullback(x, ybar).vals, np.asarray(g.data), atol=1e-15)
    np.testing.assert_allclose(C.project(x, ybar), np.asarray(g.todense()), atol=1e-15)


def test_a_million_by_a_million_coo_under_a_6_gib_cap():
    script = textwrap.dedent("""
        import resource
        cap = 6 << 30
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        import numpy as np
        from helpers import generated
        C = generated("sparse_coo")
        n = nnz = 10**6
        rng = np.random.default_rng(0)
        rows, cols = rng.integers(0, n, nnz), rng.integers(0, n, nnz)
        x = C.SparseCOO(vals=rng.standard_normal(nnz), rows=rows, cols=cols, m=n, n=n)
        v = rng.standard_normal(n)
        ref = np.zeros(n); np.add.at(ref, rows, x.vals * v[cols])
        assert np.allclose(C.matvec(x, v), ref)
        ref = np.zeros(n); np.add.at(ref, cols, x.vals * v[rows])
        assert np.allclose(C.rmatvec(x, v), ref)
        U, V = rng.standard_normal((n, 2)), rng.standard_normal((n, 2))
        assert np.allclose(C.bilinear_pullback(x, U, V).vals, (U[rows] * V[cols]).sum(1))
        ref = np.zeros(n); on = rows == cols; np.add.at(ref, rows[on], x.vals[on])
        assert np.allclose(C.diagonal(x), ref)
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests"), ROOT]))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_expected_class_of_patterns():
    # the oracle's class, independent of the module: duplicates make J rank-deficient
    rows, cols, m, n = PATTERNS["duplicates"]
    J = jacobian(lambda f: coo_dense(f["vals"], rows, cols, m, n), dict(vals=np.ones(7)), ["vals"])
    assert expected_class(J) == "deficient"
    x = C.SparseCOO(vals=np.ones(7), rows=rows, cols=cols, m=m, n=n)
    assert C.parametrisation(x) == "deficient"
    assert struct_vec(C.destructure_pullback(x, np.ones((m, n))), ["vals"]).shape == (7,)


@pytest.mark.parametrize("target", ["jax", "torch"])
def test_scipy_round_trip_and_peers_on_the_framework_targets(target):
    sps = pytest.importorskip("scipy.sparse")
    pytest.importorskip(target)
    import importlib

    from rulegen.sparse import from_scipy, to_scipy

    rows, cols, m, n, vals, ybar = _unique_pattern()
    A = sps.coo_array((vals, (rows, cols)), shape=(m, n))
    for fmt, matrix in (("coo", A), ("csr", A.tocsr())):
        mod = importlib.import_module(f"rulegen.builtins.{target}.sparse_{fmt}")
        x = from_scipy(matrix, target=target)
        assert type(x).__name__ == ("SparseCOO" if fmt == "coo" else "SparseCSR")
        back = to_scipy(x)
        assert back.format == fmt
        np.testing.assert_allclose(back.toarray(), A.toarray())
        np.testing.assert_allclose(np.asarray(_host(mod.destructure(x))), A.toarray())
    mod = importlib.import_module(f"rulegen.builtins.{target}.sparse_coo")
    if target == "torch":
        import torch
        x = mod.SparseCOO(vals=torch.tensor(vals), rows=torch.tensor(rows), cols=torch.tensor(cols), m=m, n=n)
        values = torch.tensor(vals, requires_grad=True)
        S = torch.sparse_coo_tensor(torch.tensor(np.stack([rows, cols])), values, (m, n), check_invariants=True)
        S.retain_grad()
        (S.to_dense(masked_grad=True) * torch.tensor(ybar)).sum().backward()
        want_vals, want_dense = values.grad.numpy(), S.grad.to_dense().numpy()
        yb = torch.tensor(ybar)
    else:
        import jax
        import jax.numpy as jnp
        from jax.experimental import sparse
        jax.config.update("jax_enable_x64", True)
        x = mod.SparseCOO(vals=jnp.asarray(vals), rows=rows, cols=cols, m=m, n=n)
        M = sparse.BCOO((jnp.asarray(vals), jnp.asarray(np.stack([rows, cols], 1))), shape=(m, n))
        g = sparse.grad(lambda M: (M.todense() * ybar).sum())(M)
        want_vals, want_dense = np.asarray(g.data), np.asarray(g.todense())
        yb = jnp.asarray(ybar)
    np.testing.assert_allclose(_host(mod.destructure_pullback(x, yb).vals), want_vals, atol=1e-15)
    np.testing.assert_allclose(_host(mod.project(x, yb)), want_dense, atol=1e-15)


def _host(a):
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


WRAP = """name: WrapInt
sizes: [n]
fields:
  h: [n]
  s: {shape: [n], dtype: int}
size: [n, n]
getindex: h[i - s[j]]
"""


def test_an_index_through_an_integer_field_follows_python_in_every_target(tmp_path):
    """h[i - s[j]] may be negative: like any index it counts from the end
    (numba, JAX and PyTorch alike); the oracle is numpy's own indexing."""
    from helpers import load_module, run_cli

    (tmp_path / "w.yaml").write_text(WRAP)
    proc = run_cli("build", str(tmp_path / "w.yaml"), "--target", "numba", "--target", "jax", "--target", "torch",
                   "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    h, s = np.array([0.0, 1.0, 2.0]), np.array([0, 1, 2])
    want = np.array([[h[i - s[j]] for j in range(3)] for i in range(3)])
    ybar = np.arange(9.0).reshape(3, 3)
    gwant = np.zeros(3)
    for i in range(3):
        for j in range(3):
            gwant[(i - s[j]) % 3] += ybar[i, j]
    targets = [("numba", "")] + [(t, t + "/") for t in ("jax", "torch") if _installed(t)]
    for target, sub in targets:
        mod = load_module(str(tmp_path / "out" / f"{sub}wrap_int.py"))
        x = mod.WrapInt(h=h, s=s)
        np.testing.assert_allclose(_host(mod.destructure(x)), want, err_msg=target)
        np.testing.assert_allclose(_host(mod.destructure_pullback(x, ybar).h), gwant, err_msg=target)


def _installed(name):
    import importlib.util
    return importlib.util.find_spec(name) is not None


READS_PAST = """name: ReadsPast
sizes: [n]
fields:
  d: [n]
  p: {shape: [n], dtype: int}
size: [n, n]
getindex: "d[i] * (p[i + 1] + 1) if i == j else 0"
"""


def test_an_integer_field_read_out_of_range_names_the_type_and_field(build_once):
    mod = build_once(READS_PAST)
    x = mod.ReadsPast(d=np.ones(3), p=np.array([0, 1, 2]))
    with pytest.raises(IndexError, match="ReadsPast: getindex reads integer field 'p' out of range"):
        mod.destructure(x)
