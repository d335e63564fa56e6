"""Kronecker terms (issue #17): an additive term of the entry of the form
``f(i // p, j // q) · g(i % p, j % q)`` over the whole matrix is detected from
the entry (derive.Kron) and matvec, rmatvec and bilinear_pullback take it by
the vec trick on the small factors F (P × Q) and G (p × q), in every target.

Checked against an independent dense oracle (np.kron of factors built by hand
in numpy; bilinear_pullback against central differences of that dense matrix,
in each target's cotangent convention), real and complex, batched; specs that
look alike but are not Kronecker products must not take the path."""

import contextlib
import hashlib
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT, load_module, run_cli

# name -> (spec text, sizes, field shapes, dense oracle, expected number of Kronecker terms)
SPECS = {
    "kron": (Path(ROOT, "specs", "kronecker_product.yaml").read_text(), dict(ma=3, na=2, mb=2, nb=4),
             dict(A=(3, 2), B=(2, 4)), lambda f: np.kron(f["A"], f["B"]), 1),
    "heldout": ("""name: ScaledExpKron
sizes: [ma, na, mb, nb]
fields:
  A: [ma, na]
  B: [mb, nb]
size: [ma * mb, na * nb]
getindex: "2 * A[i // mb, j // nb] * exp(B[i % mb, j % nb])"
""", dict(ma=2, na=3, mb=3, nb=2), dict(A=(2, 3), B=(3, 2)), lambda f: 2 * np.kron(f["A"], np.exp(f["B"])), 1),
    "multi": ("""name: TwoKronPlusDense
sizes: [ma, na, mb, nb]
fields:
  A: [ma, na]
  C: [ma, na]
  B: [mb, nb]
  D: [ma * mb, na * nb]
size: [ma * mb, na * nb]
getindex: "A[i // mb, j // nb] * C[i // mb, j // nb] * B[i % mb, j % nb] ** 2 + A[i // mb, j // nb] * B[i % mb, j % nb] + D[i, j]"
""", dict(ma=2, na=3, mb=2, nb=2), dict(A=(2, 3), C=(2, 3), B=(2, 2), D=(4, 6)),
        lambda f: np.kron(f["A"] * f["C"], f["B"] ** 2) + np.kron(f["A"], f["B"]) + f["D"], 2),
    "sum_blocks": ("""name: BlockPlusTile
sizes: [ma, na, mb, nb]
fields:
  A: [ma, na]
  B: [mb, nb]
size: [ma * mb, na * nb]
getindex: "A[i // mb, j // nb] + B[i % mb, j % nb]"
""", dict(ma=3, na=2, mb=2, nb=3), dict(A=(3, 2), B=(2, 3)),
        lambda f: np.kron(f["A"], np.ones((2, 3))) + np.kron(np.ones((3, 2)), f["B"]), 2),
    # not Kronecker products: the divisors of j differ, or i // p meets j % q in one factor
    "mismatch": ("""name: MismatchedBlocks
sizes: [n]
fields:
  A: [n, n]
  B: [2, 3]
size: [2 * n, 2 * n]
getindex: "A[i // 2, j // 2] * B[i % 2, j % 3]"
""", dict(n=3), dict(A=(3, 3), B=(2, 3)),
        lambda f: np.array([[f["A"][i // 2, j // 2] * f["B"][i % 2, j % 3] for j in range(6)] for i in range(6)]), 0),
    "crossed": ("""name: CrossedBlocks
sizes: [ma, na, mb, nb]
fields:
  A: [ma, nb]
  B: [mb, na]
size: [ma * mb, na * nb]
getindex: "A[i // mb, j % nb] * B[i % mb, j // nb]"
""", dict(ma=2, na=3, mb=2, nb=2), dict(A=(2, 2), B=(2, 3)),
        lambda f: np.array([[f["A"][i // 2, j % 2] * f["B"][i % 2, j // 2] for j in range(6)] for i in range(4)]), 0),
}

TARGETS = ("numba", "jax", "torch")


def _digest() -> str:
    h = hashlib.sha256()
    for folder in ("rulegen", "templates"):
        for base, dirs, files in os.walk(os.path.join(ROOT, folder)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if not name.endswith((".pyc", ".nbi", ".nbc")):
                    h.update(name.encode())
                    h.update(Path(base, name).read_bytes())
    for key in sorted(SPECS):
        h.update(SPECS[key][0].encode())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def built(request):
    """The specs built for every target, once per compiler version (kept in pytest's cache)."""
    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir("rulegen-kron")) if cache is not None else Path(tempfile.mkdtemp())
    out = root / _digest()
    for old in sorted((p for p in root.iterdir() if p.is_dir() and p != out and not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime, reverse=True)[2:]:
        shutil.rmtree(old, ignore_errors=True)         # builds of older compiler versions
    if not out.is_dir():
        scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
        try:
            for key in SPECS:
                (scratch / f"{key}.yaml").write_text(SPECS[key][0])
            res = run_cli("build", *[str(scratch / f"{k}.yaml") for k in SPECS],
                          "--target", "numba", "--target", "jax", "--target", "torch", "--out", str(scratch / "out"))
            assert res.returncode == 0, res.stderr
            try:
                (scratch / "out").rename(out)
            except OSError:
                pass
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    loaded = {}

    def module(key, target):
        if (key, target) not in loaded:
            from rulegen.spec import parse_spec
            stem = parse_spec(SPECS[key][0]).module
            sub = "" if target == "numba" else target
            loaded[key, target] = load_module(str(out / sub / f"{stem}.py"))
        return loaded[key, target]
    return module


def _skip_missing(target):
    if target != "numba":
        pytest.importorskip(target)


def _fields(key, rng, cplx, batch=()):
    shapes = SPECS[key][2]
    return {k: rng.standard_normal(batch + s) + (1j * rng.standard_normal(batch + s) if cplx else 0)
            for k, s in shapes.items()}


def _oracle_pullback(key, fields, W, conj):
    """θ̄ = Σ conj(∂Y/∂θ) ⊙ W (ChainRules), or Σ ∂Y/∂θ ⊙ W (JAX), by central
    differences of the dense oracle (every entry here is holomorphic)."""
    dense = SPECS[key][3]
    h = 1e-6
    out = {}
    for name, a in fields.items():
        g = np.zeros(a.shape, np.result_type(a, W))
        for idx in np.ndindex(a.shape):
            plus = {k: v.copy() for k, v in fields.items()}
            minus = {k: v.copy() for k, v in fields.items()}
            plus[name][idx] += h
            minus[name][idx] -= h
            dY = (dense(plus) - dense(minus)) / (2 * h)
            g[idx] = np.sum((np.conj(dY) if conj else dY) * W)
        out[name] = g if np.iscomplexobj(a) else g.real
    return out


class _Run:
    """One target's calls on numpy data (batches: leading dimensions; JAX: vmap)."""

    def __init__(self, target, mod):
        self.target, self.mod = target, mod
        self.cls = getattr(mod, next(n for n in dir(mod) if isinstance(getattr(mod, n), type)
                                     and getattr(getattr(mod, n), "__module__", None) == mod.__name__
                                     and hasattr(getattr(mod, n), "_from_arrays")))

    def context(self):
        if self.target == "jax":
            import jax
            return jax.enable_x64(True)
        return contextlib.nullcontext()

    def native(self, a):
        if self.target == "jax":
            import jax.numpy as jnp
            return jnp.asarray(a)
        if self.target == "torch":
            import torch
            return torch.as_tensor(np.asarray(a))
        return a

    def numpy(self, a):
        if self.target == "torch":
            return a.detach().cpu().resolve_conj().numpy()
        return np.asarray(a)

    def call(self, op, fields, *args, batched=False):
        f = {k: self.native(v) for k, v in fields.items()}
        args = [self.native(a) for a in args]
        if self.target == "jax" and batched:
            import jax
            xs = jax.vmap(lambda fs: self.cls(**fs))(f)
            res = jax.vmap(getattr(self.mod, op))(xs, *args)
        else:
            res = getattr(self.mod, op)(self.cls(**f), *args)
        if op == "bilinear_pullback":
            return {k: self.numpy(getattr(res, k)) for k in fields}
        return self.numpy(res)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("key", sorted(SPECS))
def test_fast_path_engages_only_for_kronecker_terms(key, target, built):
    _skip_missing(target)
    assert built(key, target)._KRON == SPECS[key][4]


def test_detection_in_the_derivation():
    from rulegen.derive import derive
    from rulegen.spec import parse_spec
    import sympy as sp
    d = derive(parse_spec(SPECS["kron"][0]))
    (k,) = [r.kron for r in d.op_regions]
    ma, na, mb, nb = sp.symbols("ma na mb nb", integer=True, nonnegative=True)
    assert [str(e) for e in (k.f, k.g, k.P, k.Q, k.p, k.q)] == ["A[i, j]", "B[i, j]", "ma", "na", "mb", "nb"]
    for key in ("mismatch", "crossed"):
        assert all(r.kron is None for r in derive(parse_spec(SPECS[key][0])).op_regions)
    # a size that is no multiple of the block: refused
    text = SPECS["kron"][0].replace("size: [ma * mb, na * nb]", "size: [ma * mb + 1, na * nb]")
    assert all(r.kron is None for r in derive(parse_spec(text)).op_regions)


@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("key", sorted(SPECS))
def test_derived_ops_against_the_dense_oracle(key, target, cplx, built):
    _skip_missing(target)
    run = _Run(target, built(key, target))
    rng = np.random.default_rng(zlib.crc32(f"{key} {target} {cplx}".encode()))
    dense = SPECS[key][3]
    with run.context():
        # one instance
        f = _fields(key, rng, cplx)
        Y = dense(f)
        m, n = Y.shape
        v = rng.standard_normal((n, 3)) + (1j * rng.standard_normal((n, 3)) if cplx else 0)
        u = rng.standard_normal((m, 3)) + (1j * rng.standard_normal((m, 3)) if cplx else 0)
        np.testing.assert_allclose(run.call("matvec", f, v), Y @ v, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(run.call("matvec", f, v[:, 0]), Y @ v[:, 0], rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(run.call("rmatvec", f, u), Y.T @ u, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(run.call("rmatvec", f, u[:, 1]), Y.T @ u[:, 1], rtol=1e-10, atol=1e-10)
        got = run.call("bilinear_pullback", f, u, v)
        want = _oracle_pullback(key, f, u @ v.T, conj=target != "jax")
        for name in f:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)
        # a batch of two instances with a batch of operands
        fb = _fields(key, rng, cplx, (2,))
        vb = rng.standard_normal((2, n, 2)) + (1j * rng.standard_normal((2, n, 2)) if cplx else 0)
        ub = rng.standard_normal((2, m, 2)) + (1j * rng.standard_normal((2, m, 2)) if cplx else 0)
        one = [{k: a[b] for k, a in fb.items()} for b in range(2)]
        np.testing.assert_allclose(run.call("matvec", fb, vb, batched=True),
                                   np.stack([dense(o) @ w for o, w in zip(one, vb)]), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(run.call("rmatvec", fb, ub, batched=True),
                                   np.stack([dense(o).T @ w for o, w in zip(one, ub)]), rtol=1e-10, atol=1e-10)
        got = run.call("bilinear_pullback", fb, ub, vb, batched=True)
        for b in range(2):
            want = _oracle_pullback(key, one[b], ub[b] @ vb[b].T, conj=target != "jax")
            for name in fb:
                np.testing.assert_allclose(got[name][b], want[name], rtol=1e-6, atol=1e-6, err_msg=f"{name}[{b}]")


@pytest.mark.parametrize("target", TARGETS)
def test_float32(target, built):
    _skip_missing(target)
    run = _Run(target, built("heldout", target))
    rng = np.random.default_rng(7)
    f = {k: a.astype(np.float32) for k, a in _fields("heldout", rng, False).items()}
    Y = SPECS["heldout"][3]({k: a.astype(np.float64) for k, a in f.items()})
    v = rng.standard_normal((Y.shape[1], 2)).astype(np.float32)
    out = run.call("matvec", f, v)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, Y @ v, rtol=1e-4, atol=1e-4)
