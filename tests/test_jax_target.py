"""The JAX target (generated/jax/<module>.py) against the independent oracle
(hand-written dense matrices, their Jacobians column by column, numpy's pinv),
in float64 and float32, and under jit, vmap, grad, jvp and hessian. Skips
without JAX."""

import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from helpers import (GENERATED, ROOT, assert_norm_close, check_all_maps, expected_class, jacobian,  # noqa: E402
                     jacobian_complex, load_module, run_cli, struct_vec, unflatten)
from references import REFERENCES, instance  # noqa: E402

_MODULES: dict = {}


def jaxmod(name):
    if name not in _MODULES:
        _MODULES[name] = load_module(os.path.join(GENERATED, "jax", name + ".py"))
    return _MODULES[name]


def _extremes(sizes):
    """The smallest and the largest configuration (every map compiles per shape)."""
    by_total = sorted(sizes, key=lambda s: sum(s.values()))
    return [by_total[0]] + ([by_total[-1]] if len(by_total) > 1 else [])


CASES = [(key, sizes) for key, ref in REFERENCES.items() for sizes in _extremes(ref.sizes)]
IDS = [f"{key}-" + "-".join(f"{k}{v}" for k, v in sizes.items()) for key, sizes in CASES]


def _case(key, sizes):
    ref = REFERENCES[key]
    rng = np.random.default_rng(zlib.crc32(f"jax {key} {sorted(sizes.items())}".encode()))
    fields, extra, dense = instance(ref, rng, sizes)
    return ref, rng, fields, extra, dense


@pytest.mark.parametrize("key,sizes", CASES, ids=IDS)
def test_every_map_against_the_oracle_float64(key, sizes):
    ref, rng, fields, extra, dense = _case(key, sizes)
    mod = jaxmod(ref.module)
    with jax.enable_x64(True):
        check_all_maps(mod, getattr(mod, ref.cls), fields, extra, dense, ref.order, seed=1, analytic=ref.analytic)


def _largest(key):
    return max(REFERENCES[key].sizes, key=lambda s: sum(s.values()))


@pytest.mark.parametrize("key", sorted(REFERENCES))
def test_float32_in_float32_out_within_1e5(key):
    """float32 fields give float32 results, within 1e-5 (norm-wise relative)
    of the float64 oracle."""
    sizes = _largest(key)
    ref, rng, fields, extra, dense = _case(key, sizes)
    mod = jaxmod(ref.module)
    cls = getattr(mod, ref.cls)
    f32 = {k: np.asarray(v, np.float32) for k, v in fields.items()}
    f64 = {k: np.asarray(v, np.float64) for k, v in f32.items()}     # the oracle at the same point
    x = cls(**f32, **extra)
    J = (jacobian_complex if ref.analytic else jacobian)(dense, f64, ref.order)
    P = np.linalg.pinv(J)
    Y = np.asarray(dense(f64), dtype=float)
    W = rng.standard_normal(Y.shape).astype(np.float32)
    t = rng.standard_normal(J.shape[1]).astype(np.float32)
    tx = cls(**unflatten(t, f32, ref.order), **extra)

    def close(got, want, what):
        got = np.asarray(got) if not isinstance(got, cls) else got
        assert getattr(got, "dtype", np.float32) == np.float32 or isinstance(got, np.ndarray), what
        assert_norm_close(got, want, what, rtol=1e-5, atol=1e-6)

    out = mod.destructure(x)
    assert out.dtype == jnp.float32
    close(out, Y, "destructure")
    close(mod.destructure_pushforward(x, tx), J @ t, "destructure_pushforward")
    g = mod.destructure_pullback(x, W)
    assert all(a.dtype == jnp.float32 for a in g._arrays)
    close(struct_vec(g, ref.order), J.T @ W.ravel(), "destructure_pullback")
    Wd = W.astype(float).ravel()
    close(struct_vec(mod.restructure_pushforward(x, W), ref.order), P @ Wd, "restructure_pushforward")
    close(mod.restructure_pullback(x, tx), P.T @ t, "restructure_pullback")
    close(mod.project(x, W), J @ P @ Wd, "project")
    v = rng.standard_normal(Y.shape[1]).astype(np.float32)
    mv = mod.matvec(x, v)
    assert mv.dtype == jnp.float32
    close(mv, Y @ v, "matvec")


def _stack(items):
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *items)


TRANSFORM_KEYS = ["diagonal", "symmetric", "toeplitz", "hankel", "tridiagonal", "banded", "fill",
                  "scaled_matrix", "positive_diagonal", "low_rank", "kronecker_product", "cholesky_factor"]


@pytest.mark.parametrize("key", TRANSFORM_KEYS)
def test_jit_vmap_grad_jvp(key):
    sizes = _largest(key)
    ref = REFERENCES[key]
    mod = jaxmod(ref.module)
    cls = getattr(mod, ref.cls)
    with jax.enable_x64(True):
        insts, Ws, ts = [], [], []
        _, _, fields0, extra, _ = _case(key, sizes)
        for b in range(3):
            rng = np.random.default_rng(100 + b)
            fields = {k: np.asarray(v) + 0.1 * b for k, v in fields0.items()}
            x = cls(**fields, **extra)
            insts.append(x)
            Ws.append(jnp.asarray(rng.standard_normal(x.shape)))
            ts.append(jax.tree_util.tree_map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), x))
        xb, Wb, tb = _stack(insts), jnp.stack(Ws), _stack(ts)
        x, W, t = insts[0], Ws[0], ts[0]

        # grad of a loss through destructure is the structural pullback
        g = jax.grad(lambda x: jnp.sum(W * mod.destructure(x)))(x)
        want = mod.destructure_pullback(x, W)
        for a, b in zip(g._arrays, want._arrays):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        # jvp of destructure is the pushforward
        _, dY = jax.jvp(mod.destructure, (x,), (t,))
        np.testing.assert_allclose(dY, mod.destructure_pushforward(x, t), rtol=1e-12, atol=1e-12)
        # jit of a composition
        f = jax.jit(lambda x, W: mod.destructure_pushforward(x, mod.restructure_pushforward(x, W)))
        np.testing.assert_allclose(f(x, W), mod.project(x, W), rtol=1e-7, atol=1e-9)
        # vmap: a batch of 3 against 3 single calls, batched cotangents too
        for name, batched, single in [
            ("destructure", jax.vmap(mod.destructure)(xb), [mod.destructure(x) for x in insts]),
            ("pullback", jax.vmap(mod.destructure_pullback)(xb, Wb).__getattribute__(ref.order[0]),
             [getattr(mod.destructure_pullback(x, W), ref.order[0]) for x, W in zip(insts, Ws)]),
            ("pushforward", jax.vmap(mod.destructure_pushforward)(xb, tb),
             [mod.destructure_pushforward(x, t) for x, t in zip(insts, ts)]),
            ("project", jax.vmap(mod.project)(xb, Wb), [mod.project(x, W) for x, W in zip(insts, Ws)]),
            ("restructure_pullback", jax.vmap(mod.restructure_pullback)(xb, tb),
             [mod.restructure_pullback(x, t) for x, t in zip(insts, ts)]),
            ("matvec", jax.vmap(mod.matvec)(xb, Wb[:, 0, :]), [mod.matvec(x, W[0]) for x, W in zip(insts, Ws)]),
        ]:
            np.testing.assert_allclose(batched, np.stack(single), rtol=1e-8, atol=1e-10, err_msg=name)


def _hand_dense():
    """Dense matrices written by hand in jnp (an independent route for the Hessian)."""
    def toeplitz(f):
        n = f["col"].shape[0]
        i, j = np.indices((n, n))
        return jnp.where(i >= j, f["col"][np.abs(i - j)], f["row"][np.abs(j - i)])

    return {
        "symmetric": (("data",), lambda f: jnp.triu(f["data"]) + jnp.triu(f["data"], 1).T,
                      lambda rng: {"data": rng.standard_normal((4, 4))}),
        "toeplitz": (("col", "row"), toeplitz,
                     lambda rng: {"col": rng.standard_normal(4), "row": rng.standard_normal(4)}),
        "low_rank": (("U", "V"), lambda f: f["U"] @ f["V"].T,
                     lambda rng: {"U": rng.standard_normal((4, 2)), "V": rng.standard_normal((3, 2))}),
        "scaled_matrix": (("scale", "data"), lambda f: f["scale"] * f["data"],
                          lambda rng: {"scale": 1.3, "data": rng.standard_normal((3, 4))}),
        "positive_diagonal": (("logd",), lambda f: jnp.diag(jnp.exp(f["logd"])),
                              lambda rng: {"logd": rng.standard_normal(4)}),
    }


@pytest.mark.parametrize("key", sorted(_hand_dense()))
def test_hessian_through_destructure_and_matvec_equals_the_dense_one(key):
    order, dense, make = _hand_dense()[key]
    ref = REFERENCES[key]
    mod = jaxmod(ref.module)
    cls = getattr(mod, ref.cls)
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        fields = {k: jnp.asarray(v) for k, v in make(rng).items()}
        x0 = cls(**fields)
        v = jnp.asarray(rng.standard_normal(x0.shape[1]))
        W = jnp.asarray(rng.standard_normal(x0.shape))
        flat0, unravel = jax.flatten_util.ravel_pytree(fields)

        def loss_dense(flat):
            Y = dense(unravel(flat))
            return jnp.sum(jnp.sin(Y) * W) + jnp.sum((Y @ v) ** 2)

        def loss_ours(flat):
            x = cls(**unravel(flat))
            return jnp.sum(jnp.sin(mod.destructure(x)) * W) + jnp.sum(mod.matvec(x, v) ** 2)

        H_want = jax.hessian(loss_dense)(flat0)
        H_got = jax.hessian(loss_ours)(flat0)
        assert np.abs(H_want).max() > 1e-3
        np.testing.assert_allclose(H_got, H_want, rtol=1e-10, atol=1e-10)


SHARD_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    sys.path.insert(0, sys.argv[1])
    from helpers import load_module
    T = load_module(sys.argv[2])
    assert len(jax.devices()) == 4, jax.devices()
    rng = np.random.default_rng(0)
    cols, rows = (rng.standard_normal((8, 16)).astype(np.float32) for _ in range(2))
    Ws = rng.standard_normal((8, 16, 16)).astype(np.float32)
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    shard = NamedSharding(mesh, P("batch"))
    xb = jax.vmap(lambda c, r: T.Toeplitz(col=c, row=r))(jax.device_put(cols, shard), jax.device_put(rows, shard))
    Wb = jax.device_put(Ws, shard)
    f = jax.jit(jax.vmap(lambda x, W: (T.project(x, W), T.destructure_pullback(x, W).col, T.matvec(x, W[:, 0]))))
    P_, g, mv = f(xb, Wb)
    assert len(P_.sharding.device_set) == 4, P_.sharding
    for b in range(8):
        x = T.Toeplitz(col=cols[b], row=rows[b])
        np.testing.assert_allclose(P_[b], T.project(x, Ws[b]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g[b], T.destructure_pullback(x, Ws[b]).col, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mv[b], T.matvec(x, Ws[b][:, 0]), rtol=1e-5, atol=1e-5)
    print("sharded over", len(P_.sharding.device_set), "devices: ok")
""")


def test_a_batch_sharded_over_four_emulated_devices(tmp_path):
    """JAX is the distributed engine: the generated code shards like any jnp code."""
    script = tmp_path / "shard.py"
    script.write_text(SHARD_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, str(script), os.path.join(ROOT, "tests"),
                           os.path.join(GENERATED, "jax", "toeplitz.py")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "sharded over 4 devices: ok" in proc.stdout


def test_errors_name_the_argument():
    mod = jaxmod("toeplitz")
    x = mod.Toeplitz(col=[1.0, 2.0, 3.0], row=[1.0, 4.0, 5.0])
    with pytest.raises(ValueError, match=r"argument 'ybar' must have shape \(3, 3\), got \(2, 3\)"):
        mod.destructure_pullback(x, np.zeros((2, 3)))
    with pytest.raises(TypeError, match="argument 'x' must be of type Toeplitz"):
        mod.destructure(np.zeros((3, 3)))
    with pytest.raises(TypeError, match="unknown argument 'rows' .did you mean 'row'..; fields: col, row"):
        mod.Toeplitz(col=[1.0], rows=[1.0])
    with pytest.raises(ValueError, match=r"field 'row' must have shape \(n,\) = \(3,\)"):
        mod.Toeplitz(col=[1.0, 2.0, 3.0], row=[1.0])
    with pytest.raises(ValueError, match=r"argument 'v' must have shape \(3,\) or \(3, k\)"):
        mod.matvec(x, np.ones(4))


def test_no_host_callback_and_no_jax_ops_default():
    """The generated JAX modules are plain jnp/lax: no callback, no numba."""
    for name in os.listdir(os.path.join(GENERATED, "jax")):
        text = open(os.path.join(GENERATED, "jax", name), encoding="utf-8").read()
        assert "pure_callback" not in text and "import numba" not in text, name
    jaxpr = str(jax.make_jaxpr(jaxmod("sym_tridiagonal").destructure)(
        jaxmod("sym_tridiagonal").SymTridiagonal(dv=jnp.ones(5), ev=jnp.ones(4))))
    assert "callback" not in jaxpr


# -- specs that are in no test of specs/: built for JAX here ----------------

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
    "band_cholesky": ("""
name: BandGram
sizes: [n]
fields: {L: [n, n]}
size: [n, n]
getindex: "sum(L[i, k] * L[j, k] for k in range(max(i, j) - 1, min(i, j) + 1) if k >= 0) if abs(i - j) <= 1 else 0"
""", lambda rng: {"L": np.eye(4) + 0.3 * rng.standard_normal((4, 4))},
        lambda f: _loops((4, 4), lambda i, j: sum(f["L"][i, k] * f["L"][j, k] for k in range(max(i, j) - 1, min(i, j) + 1) if k >= 0)
                         if abs(i - j) <= 1 else 0 * f["L"][0, 0]), ("L",)),
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
    rows = [[entry(i, j) for j in range(shape[1])] for i in range(shape[0])]
    return np.array(rows)


@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    root = tmp_path_factory.mktemp("jax_unseen")
    paths = []
    for key, (text, *_r) in UNSEEN.items():
        (root / f"{key}.yaml").write_text(text)
        paths.append(str(root / f"{key}.yaml"))
    proc = run_cli("build", *paths, "--target", "jax", "--out", str(root / "out"))
    assert proc.returncode == 0, proc.stderr
    return root / "out" / "jax"


@pytest.mark.parametrize("key", sorted(UNSEEN))
def test_unseen_specs_against_the_oracle(unseen, key):
    text, make, dense, order = UNSEEN[key]
    name = text.split("name: ")[1].split("\n")[0]
    made = make(np.random.default_rng(3))
    fields, extra = made if isinstance(made, tuple) else (made, {})
    snake = {"CauchyLike": "cauchy_like", "Vandermonde": "vandermonde", "BandGram": "band_gram",
             "AntiBand": "anti_band"}[name]
    mod = load_module(str(unseen / f"{snake}.py"))
    with jax.enable_x64(True):
        check_all_maps(mod, getattr(mod, name), fields, extra,
                       lambda f: dense({k: np.asarray(v) for k, v in f.items()}), order, seed=2, atol=1e-9,
                       analytic=True)
        # and the derivative of a loss agrees with the oracle's Jacobian (no NaN from masked positions)
        x = getattr(mod, name)(**fields, **extra)
        W = np.random.default_rng(4).standard_normal(x.shape)
        g = jax.grad(lambda x: jnp.sum(W * mod.destructure(x)))(x)
        J = jacobian_complex(dense, fields, order)
        np.testing.assert_allclose(struct_vec(g, order), J.T @ W.ravel(), rtol=1e-9, atol=1e-10)
        assert mod.parametrisation(x) == expected_class(J)


# -- the unseen specs of the numba tests, built for JAX: the same oracles ----

@pytest.fixture(scope="module")
def nonlinear_jax(tmp_path_factory):
    from test_unseen_nonlinear import CASES
    root = tmp_path_factory.mktemp("jax_nonlinear")
    paths = []
    for name, (text, *_r) in CASES.items():
        (root / f"{name}.yaml").write_text(f"name: {name}\n" + text.lstrip())
        paths.append(str(root / f"{name}.yaml"))
    proc = run_cli("build", *paths, "--target", "jax", "--out", str(root / "out"))
    assert proc.returncode == 0, proc.stderr
    out = root / "out" / "jax"
    return {p.stem: load_module(str(p)) for p in out.iterdir() if p.suffix == ".py" and p.name != "__init__.py"}


def _nonlinear_names():
    from test_unseen_nonlinear import CASES
    return sorted(CASES)


@pytest.mark.parametrize("name", _nonlinear_names())
def test_unseen_nonlinear_specs_on_the_jax_target(nonlinear_jax, name):
    """test_unseen_nonlinear's oracle test, run on the JAX modules (float64)."""
    from test_unseen_nonlinear import test_every_map_against_the_oracle
    with jax.enable_x64(True):
        test_every_map_against_the_oracle(nonlinear_jax, name)


@pytest.fixture(scope="module")
def edge_jax(tmp_path_factory):
    from test_edge_specs import SPECS
    root = tmp_path_factory.mktemp("jax_edge")
    paths = []
    for name, text in SPECS.items():
        (root / f"{name}.yaml").write_text(text)
        paths.append(str(root / f"{name}.yaml"))
    proc = run_cli("build", *paths, "--target", "jax", "--out", str(root / "out"))
    assert proc.returncode == 0, proc.stderr
    return {name: load_module(str(root / "out" / "jax" / f"{name}.py")) for name in SPECS}


def test_edge_specs_on_the_jax_target(edge_jax):
    """test_edge_specs' oracle tests (powers at 0, coincident Cauchy nodes,
    values that vanish once pinned, COO sums with repeats, IEEE arithmetic)
    on the JAX modules, float64."""
    import test_edge_specs as t
    with jax.enable_x64(True):
        for nodes in ([0.0, 1.5, -0.7, 2.0], [0.0]):
            for m in (1, 3):
                t.test_vandermonde_with_a_node_at_zero(edge_jax, nodes, m)
        t.test_vandermonde_derivative_at_zero_is_the_power_rule(edge_jax)
        t.test_shifted_vandermonde_sibling(edge_jax)
        t.test_cauchy_away_from_coincident_nodes(edge_jax)
        t.test_cauchy_at_coincident_nodes_follows_ieee(edge_jax)
        for n in (1, 5):
            t.test_value_that_vanishes_on_its_pinned_diagonal(edge_jax, n)
            t.test_band_value_that_vanishes_once_pinned(edge_jax, n)
        t.test_coo_sum_with_repeated_coordinates(edge_jax, [0, 2, 1, 2], [1, 0, 1, 0])
        t.test_kernels_follow_ieee_arithmetic(edge_jax)
