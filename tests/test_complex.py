"""Complex numbers in every target, against the real-pair oracle
(tests/complex_oracle.py: a dense matrix written by hand in numpy, the real
Jacobian of (Re, Im) column by column, numpy's pinv), in each target's own
cotangent convention: ChainRules' and PyTorch's (numba, torch), JAX's
conjugate (jax). Also ChainRulesCore's ProjectTo rules: a real instance given
a complex cotangent projects its real part; a complex instance given a real
cotangent treats it as complex; Hermitian project is (Ȳ + Ȳᴴ)/2."""

import os
import zlib

import numpy as np
import pytest
import scipy.linalg

from complex_oracle import Oracle, conj_fields
from helpers import GENERATED, assert_norm_close, build, load_module
from references import REFERENCES, _banded_dense, instance

# -- targets -------------------------------------------------------------------


class _Target:
    name = ""
    convention = "chainrules"
    _modules: dict

    def module(self, stem):
        if stem not in self._modules:
            sub = "" if self.name == "numba" else self.name
            self._modules[stem] = load_module(os.path.join(GENERATED, sub, stem + ".py"))
        return self._modules[stem]

    def native(self, a):
        return a

    def numpy(self, a):
        return np.asarray(a)

    def context(self):
        import contextlib
        return contextlib.nullcontext()


class _Jax(_Target):
    name, convention = "jax", "jax"

    def __init__(self):
        self._modules = {}

    def native(self, a):
        import jax.numpy as jnp
        return jnp.asarray(a)

    def context(self):
        import jax
        return jax.enable_x64(True)


class _Torch(_Target):
    name = "torch"

    def __init__(self):
        self._modules = {}

    def native(self, a):
        import torch
        return torch.as_tensor(np.asarray(a))

    def numpy(self, a):
        import torch
        return a.detach().cpu().resolve_conj().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


class _Numba(_Target):
    name = "numba"

    def __init__(self):
        self._modules = {}


def _targets():
    out = [_Numba()]
    for mod, cls in (("jax", _Jax), ("torch", _Torch)):
        try:
            __import__(mod)
        except ImportError:
            continue
        out.append(cls())
    return out


TARGETS = _targets()
TARGET_IDS = [t.name for t in TARGETS]


# -- cases ---------------------------------------------------------------------

def _complex_safe(key, sizes, dense):
    """The oracle's dense functions that fix a real dtype, in complex."""
    if key == "banded":
        def banded(f, s=sizes):
            A = np.zeros((s["m"], s["n"]), dtype=complex)
            real = _banded_dense({"data": f["data"].real}, s["m"], s["n"], s["kl"], s["ku"])
            imag = _banded_dense({"data": f["data"].imag}, s["m"], s["n"], s["kl"], s["ku"])
            A += real + 1j * imag
            return A
        return banded
    if key == "dense":
        return lambda f: np.array(f["data"])
    if key == "fill":
        return lambda f, s=sizes: np.full((s["m"], s["n"]), f["value"])
    return dense


def _largest(sizes):
    return max(sizes, key=lambda s: sum(s.values()))


def _complexify(rng, fields):
    out = {}
    for k, v in fields.items():
        v = np.asarray(v, dtype=float)
        out[k] = v + 1j * rng.standard_normal(v.shape)
    return out


def _case(key, salt, complex_fields=True):
    """(module stem, class name, order, fields, extra, dense, step)."""
    rng = np.random.default_rng(zlib.crc32(f"{salt} {key}".encode()))
    ref = REFERENCES[key]
    sizes = _largest(ref.sizes)
    fields, extra, dense = instance(ref, rng, sizes)
    dense = _complex_safe(key, sizes, dense)
    cls, order = ref.cls, ref.order
    step = 1e-5 if ref.analytic else 1.0      # central differences: exact to degree 2
    if complex_fields:
        fields = _complexify(rng, fields)
    else:
        fields = {k: np.asarray(v, dtype=float) for k, v in fields.items()}
    return key, cls, order, fields, extra, dense, step


KEYS = sorted(REFERENCES)


def _rtol(step):
    return 1e-9 if step == 1.0 else 1e-6


def _svec(target, obj, order):
    return {name: target.numpy(getattr(obj, name)) for name in order}


def _check_maps(target, stem, cls_name, order, fields, extra, dense, step, seed=1):
    mod = target.module(stem)
    cls = getattr(mod, cls_name)
    oracle = Oracle(dense, fields, order, step)
    rng = np.random.default_rng(seed)
    rtol = _rtol(step)
    jax_conv = target.convention == "jax"

    def close(got, want, what):
        assert_norm_close(np.concatenate([np.ravel(got[k]) for k in order]) if isinstance(got, dict) else got,
                          np.concatenate([np.ravel(want[k]) for k in order]) if isinstance(want, dict) else want,
                          f"{target.name} {stem} {what}", rtol=rtol, atol=rtol)

    def cplx(shape):
        return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)

    def like_fields():
        return {k: (cplx(np.shape(v)) if np.iscomplexobj(v) else rng.standard_normal(np.shape(v)))
                for k, v in fields.items()}

    x = cls(**{k: target.native(v) for k, v in fields.items()}, **extra)
    close(target.numpy(mod.destructure(x)), oracle.Y, "destructure")
    t = like_fields()
    tx = cls(**{k: target.native(v) for k, v in t.items()}, **extra)
    close(target.numpy(mod.destructure_pushforward(x, tx)), oracle.pushforward(t), "destructure_pushforward")
    W = cplx(oracle.shape)
    cot = (lambda f, a: conj_fields(f(np.conj(a)))) if jax_conv else (lambda f, a: f(a))
    cot_dense = (lambda f, a: np.conj(f(conj_fields(a) if isinstance(a, dict) else np.conj(a)))) if jax_conv \
        else (lambda f, a: f(a))
    close(_svec(target, mod.destructure_pullback(x, target.native(W)), order), cot(oracle.pullback, W),
          "destructure_pullback")
    close(_svec(target, mod.restructure_pushforward(x, target.native(W)), order), oracle.pinv(W),
          "restructure_pushforward")
    close(target.numpy(mod.restructure_pullback(x, tx)), cot_dense(oracle.pinv_adjoint, t), "restructure_pullback")
    close(target.numpy(mod.project(x, target.native(W))), cot_dense(oracle.project, W), "project")
    assert mod.parametrisation(x) == oracle.parametrisation(), f"{target.name} {stem} parametrisation"
    # derived operations with complex operands
    Y = oracle.Y
    m, n = Y.shape
    v, u = cplx((n, 2)), cplx((m, 2))
    close(target.numpy(mod.matvec(x, target.native(v))), Y @ v, "matvec")
    close(target.numpy(mod.rmatvec(x, target.native(u))), Y.T @ u, "rmatvec")
    close(_svec(target, mod.bilinear_pullback(x, target.native(u), target.native(v)), order),
          cot(oracle.pullback, u @ v.T), "bilinear_pullback")
    close(target.numpy(mod.diagonal(x)), np.diagonal(Y), "diagonal")
    dbar = cplx(min(m, n))
    D = np.zeros((m, n), dtype=complex)
    D[np.arange(len(dbar)), np.arange(len(dbar))] = dbar
    close(_svec(target, mod.diagonal_pullback(x, target.native(dbar)), order), cot(oracle.pullback, D),
          "diagonal_pullback")


# the fast tier: one type of each J⁺ kind and the complex built-ins; the rest in the slow tier
FAST_KEYS = ["complex_symmetric", "hermitian", "low_rank", "scaled_matrix", "toeplitz"]


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize("key", FAST_KEYS)
def test_complex_fields_every_map_against_the_real_pair_oracle(target, key):
    with target.context():
        _check_maps(target, *_case(key, f"complex {target.name}"))


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize("key", [k for k in KEYS if k not in FAST_KEYS])
def test_complex_fields_every_builtin_against_the_real_pair_oracle(target, key):
    with target.context():
        _check_maps(target, *_case(key, f"complex {target.name}"))


C64_FAST = ["hermitian", "toeplitz", "scaled_matrix"]


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize("key", C64_FAST)
def test_complex64_in_complex64_out_within_1e5(target, key):
    """complex64 fields give complex64 results within 1e-5 (norm-wise
    relative) of the complex128 oracle at the same point."""
    _check_complex64(target, key)


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize("key", [k for k in KEYS if k not in C64_FAST])
def test_complex64_every_builtin(target, key):
    _check_complex64(target, key)


def _check_complex64(target, key):
    stem, cls_name, order, fields, extra, dense, step = _case(key, f"c64 {target.name}")
    f64 = {k: np.asarray(np.asarray(v, np.complex64), np.complex128) for k, v in fields.items()}
    oracle = Oracle(dense, f64, order, step)
    rng = np.random.default_rng(7)
    W = (rng.standard_normal(oracle.shape) + 1j * rng.standard_normal(oracle.shape)).astype(np.complex64)
    mod = target.module(stem)
    x = getattr(mod, cls_name)(**{k: target.native(np.asarray(v, np.complex64)) for k, v in fields.items()}, **extra)
    jax_conv = target.convention == "jax"
    for name, want in (("destructure", oracle.Y),
                       ("project", np.conj(oracle.project(np.conj(W))) if jax_conv else oracle.project(W))):
        got = target.numpy(mod.destructure(x) if name == "destructure" else mod.project(x, target.native(W)))
        assert got.dtype == np.complex64, (name, got.dtype)
        assert_norm_close(got, want, f"{target.name} {key} {name}", rtol=1e-5, atol=1e-5)
    got = _svec(target, mod.restructure_pushforward(x, target.native(W)), order)
    want = oracle.pinv(W.astype(np.complex128))
    assert all(got[k].dtype == np.complex64 for k in order)
    assert_norm_close(np.concatenate([got[k].ravel() for k in order]),
                      np.concatenate([np.ravel(want[k]) for k in order]), f"{target.name} {key} pinv",
                      rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_complex_batches(target):
    """A batch of complex Hermitian instances (torch: leading dimensions that
    broadcast with the cotangent's; JAX: vmap), each against the oracle."""
    rng = np.random.default_rng(21)
    n = 4
    data = rng.standard_normal((3, n, n)) + 1j * rng.standard_normal((3, n, n))
    W = rng.standard_normal((3, n, n)) + 1j * rng.standard_normal((3, n, n))
    ref = REFERENCES["hermitian"]
    with target.context():
        mod = target.module("hermitian")
        if target.name == "jax":
            import jax
            xs = jax.vmap(lambda d: mod.Hermitian(data=d))(target.native(data))
            P = np.asarray(jax.vmap(mod.project)(xs, target.native(W)))
            T = jax.vmap(mod.restructure_pushforward)(xs, target.native(W))
            T = np.asarray(T.data)
        else:       # numba and torch: leading batch dimensions
            x = mod.Hermitian(data=target.native(data))
            assert x.batch_shape == (3,)
            P = target.numpy(mod.project(x, target.native(W)))
            T = target.numpy(mod.restructure_pushforward(x, target.native(W)).data)
        for b in range(3):
            oracle = Oracle(ref.dense, {"data": data[b]}, ("data",), 1.0)
            want_p = np.conj(oracle.project(np.conj(W[b]))) if target.convention == "jax" else oracle.project(W[b])
            np.testing.assert_allclose(P[b], want_p, atol=1e-12)
            np.testing.assert_allclose(T[b], oracle.pinv(W[b])["data"], atol=1e-12)


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize("key", ["symmetric", "toeplitz", "scaled_matrix", "low_rank", "hermitian"])
def test_real_instance_given_complex_cotangents_projects_their_real_part(target, key):
    """ProjectTo(1.0)(2.0 + 3im) == 2.0: the cotangent maps of a real instance
    take the real part of a complex argument, and their results are real."""
    stem, cls_name, order, fields, extra, dense, step = _case(key, f"real {target.name}", complex_fields=False)
    with target.context():
        mod = target.module(stem)
        x = getattr(mod, cls_name)(**{k: target.native(v) for k, v in fields.items()}, **extra)
        oracle = Oracle(dense, fields, order, step)
        rng = np.random.default_rng(3)
        W = rng.standard_normal(oracle.shape) + 1j * rng.standard_normal(oracle.shape)
        for name, want in (("destructure_pullback", oracle.pullback(W.real)),
                           ("restructure_pushforward", oracle.pinv(W.real))):
            got = _svec(target, getattr(mod, name)(x, target.native(W)), order)
            for k in order:
                assert not np.iscomplexobj(got[k]), f"{name}: {k} is complex"
                assert_norm_close(got[k], want[k], name, rtol=_rtol(step), atol=_rtol(step))
        got = target.numpy(mod.project(x, target.native(W)))
        assert not np.iscomplexobj(got)
        assert_norm_close(got, oracle.project(W.real), "project", rtol=_rtol(step), atol=_rtol(step))
        assert mod.parametrisation(x) == oracle.parametrisation()


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_mixed_field_kinds_and_complex_operands(target):
    """Review findings: a complex number among real fields makes the instance
    complex (numba, torch: one dtype); JAX keeps a real field real and still
    classifies right; a complex operand of a real matrix gives the complex
    product (matvec, rmatvec) and a real cotangent (bilinear_pullback)."""
    rng = np.random.default_rng(9)
    with target.context():
        mod = target.module("dense")
        x = mod.Dense(data=target.native(rng.standard_normal((3, 3))))
        v = rng.standard_normal(3) + 1j * rng.standard_normal(3)
        A = target.numpy(mod.destructure(x))
        np.testing.assert_allclose(target.numpy(mod.matvec(x, target.native(v))), A @ v, atol=1e-12)
        np.testing.assert_allclose(target.numpy(mod.rmatvec(x, target.native(v))), A.T @ v, atol=1e-12)
        b = target.numpy(mod.bilinear_pullback(x, target.native(v), target.native(np.ones(3))).data)
        assert not np.iscomplexobj(b)
        sm = target.module("scaled_matrix")
        data = rng.standard_normal((2, 2)) + 1j * rng.standard_normal((2, 2))
        scale = 2.0 if target.name != "torch" else target.native(np.float64(2.0))
        y = sm.ScaledMatrix(scale=scale, data=target.native(data))
        np.testing.assert_allclose(target.numpy(sm.destructure(y)), 2.0 * data, atol=1e-12)
        # scale (real in JAX; complex where the fields share a dtype) and complex data: rank J = N < p_a
        assert sm.parametrisation(y) == "over"


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_complex_instance_given_real_cotangent_treats_it_as_complex(target):
    stem, cls_name, order, fields, extra, dense, step = _case("hermitian", f"cr {target.name}")
    with target.context():
        mod = target.module(stem)
        x = getattr(mod, cls_name)(**{k: target.native(v) for k, v in fields.items()})
        n = fields["data"].shape[0]
        W = np.random.default_rng(5).standard_normal((n, n))
        P = target.numpy(mod.project(x, target.native(W)))
        assert np.iscomplexobj(P)
        np.testing.assert_allclose(P, (W + W.T) / 2, atol=1e-12)


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_hermitian_project_is_the_hermitian_part_even_with_a_nonsymmetric_imaginary_part(target):
    """ChainRulesCore's ProjectTo(Hermitian) test uses a cotangent whose
    imaginary part is symmetric; this one is not."""
    rng = np.random.default_rng(11)
    n = 5
    data = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    W = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    assert not np.allclose(W.imag, W.imag.T)
    with target.context():
        mod = target.module("hermitian")
        x = mod.Hermitian(data=target.native(data))
        np.testing.assert_allclose(target.numpy(mod.project(x, target.native(W))), (W + W.conj().T) / 2,
                                   atol=1e-12)
        assert mod.parametrisation(x) == "under"         # n² real parameters used of 2n²


# -- specs of the user's own: imaginary constants, conj, real, imag, abs ----------

UNSEEN = {
    # real fields, complex matrix (an imaginary constant): a general type
    "fourier": ("""
name: Fourier
sizes: [n]
fields:
  w: [n]
size: [n, n]
getindex: "exp(1j * w[i] * j)"
""", "Fourier", ("w",), lambda f: np.exp(1j * np.outer(f["w"], np.arange(len(f["w"])))), 1e-6, False),
    "vandermonde": ("""
name: CVandermonde
sizes: [m, n]
fields:
  x: [m]
size: [m, n]
getindex: "x[i] ** j"
""", "CVandermonde", ("x",), lambda f: np.vander(f["x"], 3, increasing=True), 1e-6, True),
    "skew_hermitian": ("""
name: SkewHermitian
sizes: [n]
fields:
  a: [n, n]
size: [n, n]
getindex: "1j * imag(a[i, i]) if i == j else (a[i, j] if i < j else -conj(a[j, i]))"
""", "SkewHermitian", ("a",),
        lambda f: np.triu(f["a"], 1) - np.triu(f["a"], 1).conj().T + 1j * np.diag(np.diagonal(f["a"]).imag),
        1.0, True),
    "realcmp": ("""
name: RealCmp
sizes: [n]
fields:
  a: [n]
size: [n, n]
getindex: "a[i] if real(a[i]) > 0 and i == j else 0"
""", "RealCmp", ("a",), lambda f: np.diag(f["a"] * (f["a"].real > 0)), 1e-6, True),
    "modulus": ("""
name: ModulusDiag
sizes: [n]
fields:
  z: [n]
  c: []
size: [n, n]
getindex: "abs(z[i]) ** 2 + real(c * z[i]) if i == j else 0"
""", "ModulusDiag", ("z", "c"), lambda f: np.diag(np.abs(f["z"]) ** 2 + (f["c"] * f["z"]).real), 1e-6, True),
}


@pytest.fixture(scope="module")
def unseen_modules(tmp_path_factory):
    base = tmp_path_factory.mktemp("complex_specs")
    out = {}
    for key, (text, *_rest) in UNSEEN.items():
        folder = base / key
        folder.mkdir()
        (folder / f"{key}.yaml").write_text(text.lstrip())
        from helpers import run_cli
        targets = [a for t in TARGETS for a in ("--target", t.name)]
        res = run_cli("build", str(folder / f"{key}.yaml"), *targets, "--out", str(folder / "out"))
        assert res.returncode == 0, res.stderr
        out[key] = folder / "out"
    return out


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize("key", sorted(UNSEEN))
def test_unseen_complex_specs_against_the_real_pair_oracle(target, key, unseen_modules):
    text, cls_name, order, dense, step, complex_fields = UNSEEN[key]
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    shapes = {"fourier": {"w": (4,)}, "vandermonde": {"x": (4,)}, "skew_hermitian": {"a": (4, 4)}, "realcmp": {"a": (4,)},
              "modulus": {"z": (4,), "c": ()}}[key]
    fields = {k: rng.standard_normal(s) + (1j * rng.standard_normal(s) if complex_fields else 0)
              for k, s in shapes.items()}
    extra = {"n": 3} if key == "vandermonde" else {}
    from rulegen.spec import snake_case
    stem_path = unseen_modules[key] / ("" if target.name == "numba" else target.name) / f"{snake_case(cls_name)}.py"
    with target.context():
        target._modules[key] = load_module(str(stem_path))
        _check_maps(target, key, cls_name, order, fields, extra, dense, step)


def test_complex_scipy_oracle_sanity():
    """The oracle itself: the real Jacobian of a complex Toeplitz matrix has
    the structure of complex multiplication (J commutes with i)."""
    rng = np.random.default_rng(0)
    col, row = rng.standard_normal(3) + 1j * rng.standard_normal(3), rng.standard_normal(3) + 1j * rng.standard_normal(3)
    o = Oracle(lambda f: scipy.linalg.toeplitz(f["col"], np.r_[f["col"][:1], f["row"][1:]]),
               {"col": col, "row": row}, ("col", "row"), 1.0)
    t = {"col": rng.standard_normal(3) + 1j * rng.standard_normal(3), "row": np.zeros(3, complex)}
    ti = {k: 1j * v for k, v in t.items()}
    np.testing.assert_allclose(o.pushforward(ti), 1j * o.pushforward(t), atol=1e-12)


# -- the unseen nonlinear specs of tests/test_unseen_nonlinear.py, with complex fields --------

from test_unseen_nonlinear import CASES as NONLINEAR  # noqa: E402


@pytest.fixture(scope="module")
def nonlinear_modules(tmp_path_factory):
    from helpers import run_cli
    base = tmp_path_factory.mktemp("nonlinear_complex")
    paths = []
    for name, (text, *_rest) in NONLINEAR.items():
        path = base / f"{name}.yaml"
        path.write_text(f"name: {name}\n" + text.lstrip())
        paths.append(str(path))
    targets = [a for t in TARGETS for a in ("--target", t.name)]
    res = run_cli("build", *paths, *targets, "--out", str(base / "out"))
    assert res.returncode == 0, res.stderr
    return base / "out"


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize("name", sorted(NONLINEAR))
def test_unseen_nonlinear_specs_with_complex_fields(target, name, nonlinear_modules):
    """Every map against the real-pair oracle; a spec that orders its field
    values (x[i] > 0, min, max) refuses complex fields with a TypeError."""
    from rulegen.spec import snake_case
    text, make, dense, order, analytic = NONLINEAR[name]
    rng = np.random.default_rng(zlib.crc32(f"nonlinear {name}".encode()))
    fields, extra = make(rng)
    fields = _complexify(rng, fields)
    with target.context():
        sub = "" if target.name == "numba" else target.name
        mod = load_module(str(nonlinear_modules / sub / f"{snake_case(name)}.py"))
        target._modules[f"nl_{name}"] = mod
        if mod._ORDERING is not None:
            with pytest.raises(TypeError, match="complex numbers are not ordered"):
                getattr(mod, name)(**{k: target.native(v) for k, v in fields.items()}, **extra)
            return
        if not analytic:
            pytest.skip("the hand-written dense function is not complex-safe")
        _check_maps(target, f"nl_{name}", name, order, fields, extra, dense, 1e-5)


def test_complex_on_cuda_equals_the_cpu_and_stays_there():
    """PyTorch on a GPU: complex Hermitian and Toeplitz instances give the CPU's
    results, on the device (run where CUDA is present; skipped elsewhere)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    rng = np.random.default_rng(3)
    target = next(t for t in TARGETS if t.name == "torch")
    for stem, cls_name, fields in (
            ("hermitian", "Hermitian", {"data": rng.standard_normal((5, 5)) + 1j * rng.standard_normal((5, 5))}),
            ("toeplitz", "Toeplitz", {"col": rng.standard_normal(5) + 1j * rng.standard_normal(5),
                                      "row": rng.standard_normal(5) + 1j * rng.standard_normal(5)})):
        mod = target.module(stem)
        cls = getattr(mod, cls_name)
        W = torch.as_tensor(rng.standard_normal((5, 5)) + 1j * rng.standard_normal((5, 5)))
        cpu = cls(**{k: torch.as_tensor(v) for k, v in fields.items()})
        gpu = cpu.to("cuda")
        def arrays(r):
            return [r] if isinstance(r, torch.Tensor) else [getattr(r, k) for k in r._fields]
        for name in ("destructure", "project", "restructure_pushforward", "destructure_pullback"):
            f = getattr(mod, name)
            a = arrays(f(cpu) if name == "destructure" else f(cpu, W))
            b = arrays(f(gpu) if name == "destructure" else f(gpu, W.cuda()))
            for u, v in zip(a, b):
                assert v.device.type == "cuda", name
                np.testing.assert_allclose(v.cpu().resolve_conj().numpy(), u.resolve_conj().numpy(), atol=1e-10,
                                           err_msg=f"{stem} {name}")


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize("key", ["hermitian", "toeplitz", "scaled_matrix", "low_rank"])
def test_complex_batches_every_map(target, key):
    """A batch of two complex instances (gather, bordered, general types):
    every map at once on the batch (numba, torch: leading dimensions; JAX:
    vmap), each instance against the real-pair oracle."""
    cases = [_case(key, f"batch {target.name} {b}") for b in range(2)]
    stem, cls_name, order, _, extra, dense, step = cases[0]
    fields = [c[3] for c in cases]
    oracles = [Oracle(dense, f, order, step) for f in fields]
    rng = np.random.default_rng(17)
    shape = oracles[0].shape
    W = rng.standard_normal((2,) + shape) + 1j * rng.standard_normal((2,) + shape)
    T = [{k: rng.standard_normal(np.shape(v)) + 1j * rng.standard_normal(np.shape(v)) for k, v in f.items()}
         for f in fields]
    V = rng.standard_normal((2, shape[1], 2)) + 1j * rng.standard_normal((2, shape[1], 2))
    stack = {k: np.stack([f[k] for f in fields]) for k in order}
    tstack = {k: np.stack([t[k] for t in T]) for k in order}
    jax_conv = target.convention == "jax"
    with target.context():
        mod = target.module(stem)
        cls = getattr(mod, cls_name)
        maps = {
            "destructure": lambda x, t, W, V: mod.destructure(x),
            "destructure_pushforward": lambda x, t, W, V: mod.destructure_pushforward(x, t),
            "destructure_pullback": lambda x, t, W, V: mod.destructure_pullback(x, W),
            "restructure_pushforward": lambda x, t, W, V: mod.restructure_pushforward(x, W),
            "restructure_pullback": lambda x, t, W, V: mod.restructure_pullback(x, t),
            "project": lambda x, t, W, V: mod.project(x, W),
            "matvec": lambda x, t, W, V: mod.matvec(x, V),
        }
        if target.name == "jax":
            import jax
            make = jax.vmap(lambda a: cls(**dict(zip(order, a)), **extra))
            x = make(tuple(target.native(stack[k]) for k in order))
            t = make(tuple(target.native(tstack[k]) for k in order))
            got = {name: jax.vmap(f)(x, t, target.native(W), target.native(V)) for name, f in maps.items()}
        else:
            x = cls(**{k: target.native(stack[k]) for k in order}, **extra)
            t = cls(**{k: target.native(tstack[k]) for k in order}, **extra)
            assert x.batch_shape == (2,)
            got = {name: f(x, t, target.native(W), target.native(V)) for name, f in maps.items()}
    for b, o in enumerate(oracles):
        want = {
            "destructure": o.Y,
            "destructure_pushforward": o.pushforward(T[b]),
            "destructure_pullback": conj_fields(o.pullback(np.conj(W[b]))) if jax_conv else o.pullback(W[b]),
            "restructure_pushforward": o.pinv(W[b]),
            "restructure_pullback": (np.conj(o.pinv_adjoint(conj_fields(T[b]))) if jax_conv
                                     else o.pinv_adjoint(T[b])),
            "project": np.conj(o.project(np.conj(W[b]))) if jax_conv else o.project(W[b]),
            "matvec": o.Y @ V[b],
        }
        for name, w in want.items():
            g = got[name]
            if isinstance(w, dict):
                g = np.concatenate([np.ravel(target.numpy(getattr(g, k))[b]) for k in order])
                w = np.concatenate([np.ravel(w[k]) for k in order])
            else:
                g = target.numpy(g)[b]
            assert_norm_close(g, w, f"{target.name} {key} batch {b} {name}", rtol=_rtol(step), atol=_rtol(step))
