"""Correctness of the optimised kernel paths at sizes where they engage:
4 × 4 transposing tiles (whole strips, ragged ends, the last rows), loops
whose index checks were hoisted (and the checked fallback), contracted
separable terms. References are dense matrices written by hand in numpy."""

import numpy as np
import pytest

from helpers import generated


@pytest.mark.parametrize("n", [1, 3, 4, 5, 8, 11, 64, 65, 150])
def test_symmetric_tiles(n):
    mod = generated("symmetric")
    rng = np.random.default_rng(n)
    data = rng.standard_normal((n, n))
    x = mod.Symmetric(data=data)
    S = np.triu(data) + np.triu(data, 1).T
    Y = rng.standard_normal((n, n))
    np.testing.assert_array_equal(mod.destructure(x), S)
    np.testing.assert_allclose(mod.destructure_pullback(x, Y).data, np.triu(Y) + np.tril(Y, -1).T, atol=1e-12)
    np.testing.assert_allclose(mod.project(x, Y), (Y + Y.T) / 2, atol=1e-12)
    dx = mod.Symmetric(data=Y)
    np.testing.assert_array_equal(mod.destructure_pushforward(x, dx), np.triu(Y) + np.triu(Y, 1).T)
    v = rng.standard_normal((n, 2))
    np.testing.assert_allclose(mod.matvec(x, v), S @ v, atol=1e-10)


TRANSPOSED = """
name: Transposed
sizes: [m, n]
fields: {F: [n + 1, m + 2]}
size: [m, n]
getindex: "-2.5 * F[j + 1, i + 2]"
"""


@pytest.mark.parametrize("m,n", [(1, 1), (4, 4), (5, 7), (9, 13), (64, 3), (3, 64), (37, 41)])
def test_transposed_tiles_with_offsets_and_a_coefficient(build_once, m, n):
    mod = build_once(TRANSPOSED)
    rng = np.random.default_rng(m * 100 + n)
    F = rng.standard_normal((n + 1, m + 2))
    x = mod.Transposed(F=F)
    want = -2.5 * F[1:n + 1, 2:m + 2].T
    np.testing.assert_array_equal(mod.destructure(x), want)
    dF = rng.standard_normal(F.shape)
    np.testing.assert_array_equal(mod.destructure_pushforward(x, mod.Transposed(F=dF)), -2.5 * dF[1:n + 1, 2:m + 2].T)
    Y = rng.standard_normal((m, n))
    g = np.zeros_like(F)
    g[1:n + 1, 2:m + 2] = -2.5 * Y.T
    np.testing.assert_allclose(mod.destructure_pullback(x, Y).F, g, rtol=1e-15, atol=0)
    read_only = F.copy()
    read_only.setflags(write=False)
    np.testing.assert_array_equal(mod.destructure(mod.Transposed(F=read_only)), want)


def test_transposed_reads_that_wrap_or_run_past_the_end(build_once):
    """F[j, i - 5] wraps to F's last columns for i < 5 (Python semantics): the
    strips whose tiles would wrap take the per-row loops, the others move in
    tiles. F[j + 1, i] runs past the end."""
    mod = build_once("""
name: Wrap
sizes: [n]
fields: {F: [n, n]}
size: [n, n]
getindex: "F[j, i - 5]"
""")
    F = np.arange(144.0).reshape(12, 12)
    want = np.array([[F[j, (i - 5) % 12] for j in range(12)] for i in range(12)])
    x = mod.Wrap(F=F)
    np.testing.assert_array_equal(mod.destructure(x), want)
    Y = np.arange(144.0).reshape(12, 12) ** 0.5
    g = np.zeros((12, 12))
    for i in range(12):
        for j in range(12):
            g[j, (i - 5) % 12] += Y[i, j]
    np.testing.assert_allclose(mod.destructure_pullback(x, Y).F, g, rtol=1e-15)
    bad = build_once("""
name: Past
sizes: [n]
fields: {F: [n, n]}
size: [n, n]
getindex: "F[j + 1, i]"
""")
    with pytest.raises(IndexError, match="reads F out of range"):
        bad.destructure(bad.Past(F=F))


def test_toeplitz_hoisted_checks_at_size():
    mod = generated("toeplitz")
    import scipy.linalg

    rng = np.random.default_rng(1)
    col, row = rng.standard_normal(130), rng.standard_normal(130)
    T = scipy.linalg.toeplitz(col, np.r_[col[:1], row[1:]])
    x = mod.Toeplitz(col=col, row=row)
    np.testing.assert_array_equal(mod.destructure(x), T)
    Y = rng.standard_normal((130, 130))
    got = mod.destructure_pullback(x, Y)
    np.testing.assert_allclose(got.col, [np.trace(Y, -k) for k in range(130)], atol=1e-10)
    np.testing.assert_allclose(got.row[1:], [np.trace(Y, k) for k in range(1, 130)], atol=1e-10)


def test_wrapping_and_out_of_range_reads_take_the_checked_loop(build_once):
    """c[j - 3] wraps for j < 3 (Python semantics), so the hoisted check fails
    and the checked loop runs; c[j + 1] runs past the end and raises."""
    mod = build_once("""
name: Shift
sizes: [n]
fields: {c: [n]}
size: [n, n]
getindex: "c[j - 3] if i <= j else 0"
""")
    c = np.arange(100.0)
    want = np.triu(np.tile(np.roll(c, 3), (100, 1)))
    np.testing.assert_array_equal(mod.destructure(mod.Shift(c=c)), want)
    bad = build_once("""
name: Past
sizes: [n]
fields: {c: [n]}
size: [n, n]
getindex: "c[j + 1] if i <= j else 0"
""")
    with pytest.raises(IndexError, match="reads c out of range"):
        bad.destructure(bad.Past(c=c))


def test_low_rank_contracted_operations_at_size():
    mod = generated("low_rank")
    rng = np.random.default_rng(2)
    U, V = rng.standard_normal((300, 5)), rng.standard_normal((200, 5))
    x = mod.LowRank(U=U, V=V)
    L, R = rng.standard_normal((300, 3)), rng.standard_normal((200, 3))
    np.testing.assert_allclose(mod.matvec(x, R), U @ (V.T @ R), atol=1e-10)
    np.testing.assert_allclose(mod.rmatvec(x, L), V @ (U.T @ L), atol=1e-10)
    g = mod.bilinear_pullback(x, L, R)
    W = L @ R.T
    np.testing.assert_allclose(g.U, W @ V, atol=1e-9)
    np.testing.assert_allclose(g.V, W.T @ U, atol=1e-9)


FFT_SPECS = {
    "RectToeplitz": ("""
sizes: [m, n]
fields: {c: [m], r: [n]}
size: [m, n]
getindex: "c[i - j] if i >= j else r[j - i]"
""", lambda rng, m, n: {"c": rng.standard_normal(m), "r": rng.standard_normal(n)},
        lambda f, m, n: np.array([[f["c"][i - j] if i >= j else f["r"][j - i] for j in range(n)] for i in range(m)])),
    "ExpCirculant": ("""
sizes: [n]
fields: {c: [n]}
size: [n, n]
getindex: "exp(c[(i - j) % n] / 4)"
""", lambda rng, m, n: {"c": rng.standard_normal(n)},
        lambda f, m, n: np.exp(np.array([[f["c"][(i - j) % n] for j in range(n)] for i in range(n)]) / 4)),
    "RectHankel": ("""
sizes: [m, n]
fields: {h: [m + n - 1], w: [n]}
size: [m, n]
getindex: "h[i + j]"
""", lambda rng, m, n: {"h": rng.standard_normal(m + n - 1), "w": np.zeros(n)},
        lambda f, m, n: np.array([[f["h"][i + j] for j in range(n)] for i in range(m)])),
    "SplitHankel": ("""
sizes: [m, n]
fields: {a: [m], b: [n]}
size: [m, n]
getindex: "a[i + j] if i + j < m else 2 * b[i + j - m + 1]"
""", lambda rng, m, n: {"a": rng.standard_normal(m), "b": rng.standard_normal(n)},
        lambda f, m, n: np.array([[f["a"][i + j] if i + j < m else 2 * f["b"][i + j - m + 1] for j in range(n)]
                                  for i in range(m)])),
}


def _anti_diagonal_sums(W):
    m, n = W.shape
    return np.array([np.trace(W[::-1], d - m + 1) for d in range(m + n - 1)])


@pytest.mark.parametrize("name", sorted(FFT_SPECS))
@pytest.mark.parametrize("m,n", [(400, 450), (500, 500), (20, 30)])
def test_fft_path_of_shift_invariant_specs(build_once, name, m, n):
    """Above FFT_MIN, matvec, rmatvec and bilinear_pullback of a spec whose entry
    depends on i - j (or i + j) only go through the FFT; below, through the direct kernels."""
    text, make, dense = FFT_SPECS[name]
    if name == "ExpCirculant":
        m = n
    mod = build_once(f"name: {name}\n" + text.lstrip())     # one build per spec, shared by the sizes
    assert "FFT_MIN" in dir(mod)
    rng = np.random.default_rng(m + n)
    fields = make(rng, m, n)
    x = getattr(mod, name)(**fields)
    Y = dense(fields, m, n)
    v, u = rng.standard_normal((n, 2)), rng.standard_normal((m, 2))
    np.testing.assert_allclose(mod.matvec(x, v), Y @ v, atol=1e-9)
    np.testing.assert_allclose(mod.rmatvec(x, u[:, 0]), Y.T @ u[:, 0], atol=1e-9)
    got = mod.bilinear_pullback(x, u, v)
    W = u @ v.T
    if name == "RectToeplitz":      # Σ over each diagonal of W, by hand
        want = {"c": [np.trace(W, -d) for d in range(m)], "r": [0.0] + [np.trace(W, d) for d in range(1, n)]}
    elif name == "RectHankel":
        want = {"h": _anti_diagonal_sums(W), "w": np.zeros(n)}
    elif name == "SplitHankel":
        sums = _anti_diagonal_sums(W)
        want = {"a": sums[:m], "b": np.r_[0.0, 2 * sums[m:]]}
    else:
        k = (np.arange(n)[:, None] - np.arange(n)) % n
        want = {"c": np.bincount(k.ravel(), W.ravel(), minlength=n) * np.exp(fields["c"] / 4) / 4}
    for field in fields:
        np.testing.assert_allclose(getattr(got, field), want[field], atol=1e-9)
