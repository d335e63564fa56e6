"""The benchmark: generated maps against hand-written numpy, JAX and PyTorch
(where installed), the dense-Jacobian route where it fits, and the memory
floor, all in one process (ratios within one run are what count).

    python3 benchmarks/run.py            # writes benchmarks/results.md and benchmarks/scaling.png
    python3 benchmarks/run.py --quick    # fewer repeats and sizes

Each time is the best of R repeats after a warm-up call that pays for JIT
compilation. The floor is one read or copy of the data the map must touch.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import scipy.linalg
import scipy.sparse.linalg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from generated import (diagonal, fill, kronecker_product, low_rank, scaled_matrix,  # noqa: E402
                       symmetric, toeplitz, tridiagonal, hankel)

try:
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
except ImportError:      # pragma: no cover - optional peer
    jax = None
try:
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
except ImportError:      # pragma: no cover - optional peer
    torch = None

REPEATS = 7


def best(f, repeat=None):
    """Best time of at least ``repeat`` calls after a warm-up; fast maps repeat
    until 0.2 s is spent (at most 300 calls), so sub-millisecond times settle."""
    f()
    times = []
    spent = 0.0
    while len(times) < (repeat or REPEATS) or (spent < 0.2 and len(times) < 300):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
        spent += times[-1]
    return min(times)


def jax_vjp(to_dense, fields, ybar):
    if jax is None:
        return None
    args = [jnp.asarray(a) for a in fields]
    yb = jnp.asarray(ybar)
    f = jax.jit(lambda *a: jax.vjp(to_dense, *a)[1](yb))
    return lambda: jax.block_until_ready(f(*args))


def torch_vjp(to_dense, fields, ybar):
    if torch is None:
        return None
    yb = torch.as_tensor(ybar)

    def run():
        ts = [torch.tensor(a, requires_grad=True) for a in fields]
        return torch.autograd.grad(to_dense(*ts), ts, yb)
    return run


def rows_at(n, rng):
    """(type, map, generated callable, {baseline name: callable}) at size n."""
    Y = rng.standard_normal((n, n))
    v = rng.standard_normal(n)
    out = []

    d = rng.standard_normal(n)
    x = diagonal.Diagonal(diag=d)
    out.append(("Diagonal", "destructure_pullback", lambda: diagonal.destructure_pullback(x, Y), {
        "floor": lambda: np.diagonal(Y).copy(), "numpy": lambda: np.diag(Y).copy(),
        "jax": jax_vjp(lambda a: jnp.diag(a), [d], Y), "torch": torch_vjp(torch.diag if torch else None, [d], Y)}))
    out.append(("Diagonal", "matvec", lambda: diagonal.matvec(x, v), {
        "floor": lambda: v.copy(), "numpy": lambda: d * v}))

    s = symmetric.Symmetric(data=Y)

    def sym_jax(a):
        return jnp.triu(a) + jnp.triu(a, 1).T

    def sym_torch(a):
        return torch.triu(a) + torch.triu(a, 1).T

    out.append(("Symmetric", "destructure", lambda: symmetric.destructure(s), {
        "floor": lambda: Y.copy(), "numpy": lambda: np.triu(Y) + np.triu(Y, 1).T}))
    out.append(("Symmetric", "destructure_pullback", lambda: symmetric.destructure_pullback(s, Y), {
        "floor": lambda: Y.copy(), "numpy": lambda: np.triu(Y) + np.tril(Y, -1).T,
        "jax": jax_vjp(sym_jax, [Y], Y), "torch": torch_vjp(sym_torch if torch else None, [Y], Y)}))
    out.append(("Symmetric", "project", lambda: symmetric.project(s, Y), {
        "floor": lambda: Y.copy(), "numpy": lambda: (Y + Y.T) / 2}))

    col, row = rng.standard_normal(n), rng.standard_normal(n)
    t = toeplitz.Toeplitz(col=col, row=row)
    T = scipy.linalg.toeplitz(col, np.r_[col[:1], row[1:]])
    out.append(("Toeplitz", "destructure", lambda: toeplitz.destructure(t), {
        "floor": lambda: Y.copy(), "numpy": lambda: scipy.linalg.toeplitz(col, np.r_[col[:1], row[1:]])}))
    out.append(("Toeplitz", "destructure_pullback", lambda: toeplitz.destructure_pullback(t, Y), {
        "floor": lambda: Y.sum(),
        "numpy": lambda: (np.array([np.trace(Y, -k) for k in range(n)]),)}))
    out.append(("Toeplitz", "matvec", lambda: toeplitz.matvec(t, v), {
        "floor": lambda: v.copy(), "numpy": lambda: T @ v,
        "scipy FFT": lambda: scipy.linalg.matmul_toeplitz((col, np.r_[col[:1], row[1:]]), v)}))

    h = hankel.Hankel(h=rng.standard_normal(2 * n - 1))
    idx = (np.arange(n)[:, None] + np.arange(n)).ravel()
    out.append(("Hankel", "destructure_pullback", lambda: hankel.destructure_pullback(h, Y), {
        "floor": lambda: Y.sum(), "numpy": lambda: np.bincount(idx, Y.ravel())}))
    H = scipy.linalg.hankel(h.h[:n], h.h[n - 1:])
    out.append(("Hankel", "matvec", lambda: hankel.matvec(h, v), {
        "floor": lambda: v.copy(), "numpy": lambda: H @ v,
        "scipy FFT": lambda: scipy.linalg.matmul_toeplitz((h.h[n - 1:], h.h[n - 1::-1]), v[::-1])}))

    dl, dm, du = rng.standard_normal(n - 1), rng.standard_normal(n), rng.standard_normal(n - 1)
    tr = tridiagonal.Tridiagonal(dl=dl, d=dm, du=du)
    out.append(("Tridiagonal", "destructure_pullback", lambda: tridiagonal.destructure_pullback(tr, Y), {
        "floor": lambda: np.diagonal(Y).copy(),
        "numpy": lambda: (np.diagonal(Y, -1).copy(), np.diagonal(Y).copy(), np.diagonal(Y, 1).copy())}))
    out.append(("Tridiagonal", "matvec", lambda: tridiagonal.matvec(tr, v), {
        "floor": lambda: v.copy(), "numpy": lambda: dm * v + np.r_[du * v[1:], 0] + np.r_[0, dl * v[:-1]]}))

    f = fill.Fill(value=1.5, m=n, n=n)
    out.append(("Fill", "destructure_pullback", lambda: fill.destructure_pullback(f, Y), {
        "floor": lambda: Y.sum(), "numpy": lambda: Y.sum()}))
    out.append(("Fill", "bilinear_pullback", lambda: fill.bilinear_pullback(f, v, v), {
        "floor": lambda: v.copy(), "numpy": lambda: v.sum() * v.sum()}))

    sm = scaled_matrix.ScaledMatrix(scale=1.5, data=Y)
    out.append(("ScaledMatrix", "destructure_pullback", lambda: scaled_matrix.destructure_pullback(sm, Y), {
        "floor": lambda: Y.copy(), "numpy": lambda: (np.vdot(Y, Y), 1.5 * Y)}))
    out.append(("ScaledMatrix", "restructure_pullback", lambda: scaled_matrix.restructure_pullback(sm, sm), {
        "floor": lambda: Y.copy(), "scipy LSQR (numpy ops)": scaled_lsqr(Y, 1.5)}))

    m2 = int(np.sqrt(n))
    A, B = rng.standard_normal((m2, m2)), rng.standard_normal((m2, m2))
    kp = kronecker_product.KroneckerProduct(A=A, B=B)
    vk = rng.standard_normal(m2 * m2)
    out.append(("KroneckerProduct", "destructure", lambda: kronecker_product.destructure(kp), {
        "floor": lambda: np.empty((m2 * m2, m2 * m2)).fill(0), "numpy": lambda: np.kron(A, B)}))
    out.append(("KroneckerProduct", "matvec", lambda: kronecker_product.matvec(kp, vk), {
        "floor": lambda: vk.copy(), "numpy": lambda: (A @ vk.reshape(m2, m2) @ B.T).ravel()}))
    return out


def scaled_lsqr(data, scale):
    """(J⁺)ᵀ θ̄ for ScaledMatrix(scale, data) at θ̄ = (scale, data) by a hand-written
    matrix-free scipy LSQR on Jᵀ (J = [vec(data) | scale·I], numpy products)."""
    flat = data.ravel()
    n_entries = flat.size

    def jv(z):
        return z[0] * flat + scale * z[1:]

    def jtv(y):
        return np.concatenate([[flat @ y], scale * y])

    def run():
        op = scipy.sparse.linalg.LinearOperator((n_entries + 1, n_entries), matvec=jtv, rmatvec=jv)
        rhs = np.concatenate([[scale], flat])
        return scipy.sparse.linalg.lsqr(op, rhs, atol=1e-12, btol=1e-12)[0]
    return run


def lowrank_rows(rng, dense_pinv: bool):
    """LowRank pseudo-inverse maps at n = 200, r = 4 against a hand-written
    matrix-free scipy LSQR (numpy matvecs) and, optionally, dense J + pinv."""
    n, r = 200, 4
    U, V = rng.standard_normal((n, r)), rng.standard_normal((n, r))
    x = low_rank.LowRank(U=U, V=V)
    Ud, Vd = rng.standard_normal((n, r)), rng.standard_normal((n, r))
    xb = low_rank.LowRank(U=Ud, V=Vd)

    def jv(z):
        a, b = z[:n * r].reshape(n, r), z[n * r:].reshape(n, r)
        return (a @ V.T + U @ b.T).ravel()

    def jtv(y):
        Yb = y.reshape(n, n)
        return np.concatenate([(Yb @ V).ravel(), (Yb.T @ U).ravel()])

    def hand_lsqr():
        op = scipy.sparse.linalg.LinearOperator((2 * n * r, n * n), matvec=jtv, rmatvec=jv)
        return scipy.sparse.linalg.lsqr(op, np.concatenate([Ud.ravel(), Vd.ravel()]), atol=1e-12, btol=1e-12)[0]

    base = {"scipy LSQR (numpy ops)": hand_lsqr}
    if dense_pinv:
        def dense():
            J = np.stack([jv(e) for e in np.eye(2 * n * r)], axis=1)
            return np.linalg.pinv(J).T @ np.concatenate([Ud.ravel(), Vd.ravel()])
        base["dense J + pinv"] = dense
    return [("LowRank n=200 r=4", "restructure_pullback", lambda: low_rank.restructure_pullback(x, xb), base)]


def table(rows_measured):
    peers = ["floor", "numpy", "jax", "torch", "scipy FFT", "scipy LSQR (numpy ops)", "dense J + pinv"]
    used = [p for p in peers if any(p in b for _, _, _, b in rows_measured)]
    head = "| type | map | rulegen | " + " | ".join(used) + " |"
    lines = [head, "|" + "---|" * (3 + len(used))]
    for typ, name, t, base in rows_measured:
        cells = []
        for p in used:
            if p in base and base[p] is not None:
                cells.append(f"{base[p] * 1e3:.3g} ms ({t / base[p]:.2f}×)")
            else:
                cells.append("—")
        lines.append(f"| {typ} | {name} | {t * 1e3:.3g} ms | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure(rows, repeat=None):
    out = []
    for typ, name, f, base in rows:
        t = best(f, repeat)
        times = {k: (best(g, repeat) if g is not None else None) for k, g in base.items()}
        out.append((typ, name, t, times))
        print(f"  {typ:18s} {name:22s} {t * 1e3:9.3f} ms  " +
              "  ".join(f"{k} {v * 1e3:.3f}" for k, v in times.items() if v is not None), flush=True)
    return out


def tooling():
    """Build time, warm import time and cold JIT time of one module."""
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        subprocess.run([py, "-m", "rulegen.cli", "build", *sorted(
            os.path.join(ROOT, "specs", f) for f in os.listdir(os.path.join(ROOT, "specs"))),
            "--out", tmp], check=True, capture_output=True, cwd=ROOT)
        build = time.perf_counter() - t
        code = ("import time, sys; sys.path.insert(0, {root!r}); t = time.perf_counter(); "
                "from generated import toeplitz as T; import numpy as np; imported = time.perf_counter() - t; "
                "x = T.Toeplitz(col=np.ones(3), row=np.ones(3)); [f(x, np.ones((3, 3))) for f in "
                "(T.destructure_pullback, T.restructure_pushforward, T.project)]; T.destructure(x); "
                "print(imported, time.perf_counter() - t)")
        subprocess.run([py, "-c", code.format(root=ROOT)], check=True, capture_output=True)   # warm the cache
        runs = [subprocess.run([py, "-c", code.format(root=ROOT)], check=True, capture_output=True,
                               text=True).stdout.split() for _ in range(3)]
        imported, warm = (min(float(r[k]) for r in runs) for k in (0, 1))
        shutil.copytree(os.path.join(ROOT, "generated"), os.path.join(tmp, "generated"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        cold = float(subprocess.run([py, "-c", code.format(root=tmp)], check=True, capture_output=True,
                                    text=True, env=dict(os.environ, NUMBA_CACHE_DIR=tmp)).stdout.split()[1])
    return build, imported, warm, cold


MAPS = ("destructure", "destructure_pushforward", "destructure_pullback", "restructure_pushforward",
        "restructure_pullback", "project", "matvec", "bilinear_pullback")


def all_maps(rng, repeat):
    """Every one of the six maps plus matvec and bilinear_pullback for the
    types the issue names; each row with the floor Y.copy() at its size."""
    n = 2000
    m2 = int(np.sqrt(n))
    r = 4
    types = [
        ("Diagonal", diagonal, diagonal.Diagonal(diag=rng.standard_normal(n)), n),
        ("Symmetric", symmetric, symmetric.Symmetric(data=rng.standard_normal((n, n))), n),
        ("Toeplitz", toeplitz, toeplitz.Toeplitz(col=rng.standard_normal(n), row=rng.standard_normal(n)), n),
        ("Tridiagonal", tridiagonal, tridiagonal.Tridiagonal(dl=rng.standard_normal(n - 1), d=rng.standard_normal(n),
                                                             du=rng.standard_normal(n - 1)), n),
        ("Fill", fill, fill.Fill(value=1.5, m=n, n=n), n),
        ("ScaledMatrix", scaled_matrix, scaled_matrix.ScaledMatrix(scale=1.5, data=rng.standard_normal((n, n))), n),
        ("LowRank (r = 4)", low_rank, low_rank.LowRank(U=rng.standard_normal((200, r)), V=rng.standard_normal((200, r))),
         200),
        ("KroneckerProduct", kronecker_product, kronecker_product.KroneckerProduct(
            A=rng.standard_normal((m2, m2)), B=rng.standard_normal((m2, m2))), m2 * m2),
    ]
    out = []
    for name, mod, x, size in types:
        Y = rng.standard_normal((size, size))
        v = rng.standard_normal(size)
        args = {"destructure": (x,), "destructure_pushforward": (x, x), "destructure_pullback": (x, Y),
                "restructure_pushforward": (x, Y), "restructure_pullback": (x, x), "project": (x, Y),
                "matvec": (x, v), "bilinear_pullback": (x, v, v)}
        times = [best(lambda f=getattr(mod, m), a=args[m]: f(*a), repeat) for m in MAPS]
        floor = best(lambda: Y.copy(), repeat)
        out.append((f"{name}, n = {size}", times, floor))
        print(f"  {name:18s} " + "  ".join(f"{m} {t * 1e3:.3g}" for m, t in zip(MAPS, times)) +
              f"  floor {floor * 1e3:.3g} ms", flush=True)
    return out


def all_maps_table(rows):
    lines = ["| type | " + " | ".join(MAPS) + " | floor `Y.copy()` |", "|---|" + "---|" * (len(MAPS) + 1)]
    for name, times, floor in rows:
        lines.append(f"| {name} | " + " | ".join(f"{t * 1e3:.3g} ms ({t / floor:.2g}×)" for t in times) +
                     f" | {floor * 1e3:.3g} ms |")
    return "\n".join(lines)


def scaling(sizes, repeat):
    """Time against n for maps whose pattern is O(n²) and O(n)."""
    rng = np.random.default_rng(1)
    series = {"Symmetric project": [], "Toeplitz destructure_pullback": [], "Tridiagonal destructure_pullback": [],
              "Diagonal matvec": [], "floor: Y.copy()": [], "floor: numpy reads Tridiagonal's 3 diagonals": []}
    for n in sizes:
        Y = rng.standard_normal((n, n))
        s = symmetric.Symmetric(data=Y)
        t = toeplitz.Toeplitz(col=rng.standard_normal(n), row=rng.standard_normal(n))
        tr = tridiagonal.Tridiagonal(dl=rng.standard_normal(n - 1), d=rng.standard_normal(n),
                                     du=rng.standard_normal(n - 1))
        d = diagonal.Diagonal(diag=rng.standard_normal(n))
        v = rng.standard_normal(n)
        series["Symmetric project"].append(best(lambda: symmetric.project(s, Y), repeat))
        series["Toeplitz destructure_pullback"].append(best(lambda: toeplitz.destructure_pullback(t, Y), repeat))
        series["Tridiagonal destructure_pullback"].append(best(lambda: tridiagonal.destructure_pullback(tr, Y), repeat))
        series["Diagonal matvec"].append(best(lambda: diagonal.matvec(d, v), repeat))
        series["floor: Y.copy()"].append(best(lambda: Y.copy(), repeat))
        series["floor: numpy reads Tridiagonal's 3 diagonals"].append(
            best(lambda: [np.diagonal(Y, k).copy() for k in (-1, 0, 1)], repeat))
    return series


def plot(sizes, series, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[bench]')")
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, ts in series.items():
        ax.loglog(sizes, np.array(ts) * 1e3, marker="o", label=name, linestyle="--" if "floor" in name else "-")
    ax.set_xlabel("n (matrix n × n)")
    ax.set_ylabel("time [ms], best of repeats")
    ax.set_title("rulegen maps: time against n")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def target_sections(quick: bool) -> list:
    """The JAX and PyTorch targets against hand-written jnp / torch on the same
    data (benchmarks/jax_target.py, benchmarks/torch_target.py), and the numba
    target's batches and float32 (benchmarks/batch.py), each in its own
    process (JAX in its default float32, no x64 switch from this one)."""
    out = []
    for title, script, extra, module in (
            ("JAX target vs hand-written jnp (under jit)", "jax_target.py", ["--quick"] if quick else [], jax),
            ("PyTorch target vs hand-written torch", "torch_target.py", ["--min-time", "0.05"] if quick else [], torch),
            ("numba target: batches and float32 (vs numpy, JAX, PyTorch)", "batch.py",
             ["--quick"] if quick else [], np)):
        if module is None:
            continue
        print(f"{title}:")
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *extra],
                              capture_output=True, text=True, timeout=1800)
        text = proc.stdout.strip() if proc.returncode == 0 else f"failed: {proc.stderr.strip()[-2000:]}"
        print(text)
        out += ["", f"## {title}", "", text if text.lstrip().startswith(("|", "JAX")) else f"```text\n{text}\n```", ""]
    return out


def main():
    global REPEATS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks"), help="folder for results.md and scaling.png")
    args = parser.parse_args()
    if args.quick:
        REPEATS = 3
    rng = np.random.default_rng(0)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"
    peers = ", ".join(p for p, m in (("JAX " + jax.__version__ if jax else "", jax),
                                     ("PyTorch " + torch.__version__ if torch else "", torch)) if m) or "none"
    print(f"machine: {machine}; peers: {peers}")
    n = 2000
    print(f"maps at n = {n}:")
    measured = measure(rows_at(n, rng))
    print("LowRank pseudo-inverse:")
    measured += measure(lowrank_rows(rng, dense_pinv=not args.quick), repeat=3)
    sizes = [250, 500, 1000, 2000] if args.quick else [250, 500, 1000, 2000, 4000]
    print("all maps:")
    every = all_maps(rng, 3)
    print("scaling:")
    series = scaling(sizes, 3)
    build, imported, warm, cold = tooling()
    lines = [
        "# Benchmark results",
        "",
        f"`python3 benchmarks/run.py{' --quick' if args.quick else ''}` on {machine}; peers: {peers}.",
        "Best of repeats after a warm-up call; ratio = rulegen time / baseline time (below 1: rulegen is faster).",
        "",
        f"## Maps at n = {n} (Kronecker: {int(np.sqrt(n))}² × {int(np.sqrt(n))}²)",
        "",
        table(measured),
        "",
        "## All six maps, matvec and bilinear_pullback (ratio to the floor `Y.copy()` at the same size)",
        "",
        all_maps_table(every),
        "",
        "## Scaling (ms)",
        "",
        "| n | " + " | ".join(series) + " |",
        "|---|" + "---|" * len(series),
    ]
    for k, size in enumerate(sizes):
        lines.append(f"| {size} | " + " | ".join(f"{ts[k] * 1e3:.3g}" for ts in series.values()) + " |")
    lines += [
        "",
        "## Tooling",
        "",
        f"- `rulegen build specs/*.yaml`: {build:.2f} s (including the interpreter start)",
        f"- import of a generated module, warm numba cache: {imported:.2f} s (best of 3 fresh interpreters)",
        f"- the same and first calls of four maps (loading their cached kernels): {warm:.2f} s",
        f"- the same with a cold cache (JIT of the kernels used): {cold:.2f} s",
        "",
    ]
    lines += target_sections(args.quick)
    from rules import section as rules_section   # benchmarks/rules.py: rules that stay structured
    lines += rules_section(args.quick)
    from kron import section as kron_section     # benchmarks/kron.py: Kronecker terms by the vec trick
    lines += kron_section(args.quick)
    from sparse import section as sparse_section  # benchmarks/sparse.py: sparse patterns against scipy
    lines += sparse_section(args.quick)
    from issue17 import section as issue17_section  # benchmarks/issue17.py: each of #17's rows with its target
    lines += issue17_section(args.quick)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.md"), "w") as fh:
        fh.write("\n".join(lines))
    if plot(sizes, series, os.path.join(args.out, "scaling.png")):
        lines.append("![time against n](scaling.png)")
        with open(os.path.join(args.out, "results.md"), "w") as fh:
            fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
