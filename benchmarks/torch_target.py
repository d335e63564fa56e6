"""The PyTorch target against hand-written torch, on the same tensors, in one run.

For Diagonal, Symmetric, Toeplitz, Hankel and Tridiagonal, once at n = 2000
and once as a batch of 64 at n = 256, every map of the generated module
(generated/torch/<module>.py) is timed next to a hand-written torch function
computing the same thing (checked equal first), and the ratio
generated / hand-written is printed (the target is ≤ 1.5×).

    python3 benchmarks/torch_target.py [--device cpu|cuda] [--dtype float64|float32]
                                      [--types Diagonal,Toeplitz] [--min-time 0.5] [--threads 1]

The hand-written side is what one would write for the type (diag_embed,
triu, an index grid i - j or i + j, scatter_add for the sums along
diagonals); it recomputes its index grids on every call, as the generated
code does. Timings use torch.utils.benchmark (median of blocked runs,
CUDA synchronised), alternating the two sides in five rounds and keeping
each side's least median, so that other processes on the machine bias
neither.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.utils.benchmark as tb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from helpers import load_module  # noqa: E402

MAPS = ("destructure", "destructure_pushforward", "destructure_pullback", "restructure_pushforward",
        "restructure_pullback", "project", "matvec", "rmatvec", "diagonal")


def _grid(n, device):
    i = torch.arange(n, device=device)
    return i[:, None], i[None, :]


def _sum_by(index, values, size):
    """Σ values over equal index (the last two dimensions), into ``size`` slots."""
    lead = values.shape[:-2]
    out = values.new_zeros(lead + (size,))
    return out.scatter_add(-1, index.expand(values.shape).reshape(lead + (-1,)), values.reshape(lead + (-1,)))


# -- hand-written: fields (a tuple) -> value -------------------------------------

def diagonal_hand(n, device, dtype):
    ones = torch.ones(n, device=device, dtype=dtype)
    dense = lambda f: torch.diag_embed(f[0])                                  # noqa: E731
    pull = lambda Y: (torch.diagonal(Y, dim1=-2, dim2=-1).contiguous(),)       # noqa: E731
    return dict(
        destructure=dense, destructure_pushforward=dense, destructure_pullback=pull,
        restructure_pushforward=pull, restructure_pullback=dense,
        project=lambda Y: torch.diag_embed(torch.diagonal(Y, dim1=-2, dim2=-1)),
        matvec=lambda f, v: f[0][..., None] * v, rmatvec=lambda f, v: f[0][..., None] * v,
        diagonal=lambda f: f[0] * ones)


def symmetric_hand(n, device, dtype):
    def dense(f):
        A = f[0]
        return torch.triu(A) + torch.triu(A, 1).mT

    def pull(Y):
        return (torch.triu(Y) + torch.tril(Y, -1).mT,)

    def rpull(f):
        B = torch.triu(f[0], 1) / 2
        return B + B.mT + torch.diag_embed(torch.diagonal(f[0], dim1=-2, dim2=-1))

    return dict(
        destructure=dense, destructure_pushforward=dense, destructure_pullback=pull,
        restructure_pushforward=lambda Y: (torch.triu((Y + Y.mT) / 2),), restructure_pullback=rpull,
        project=lambda Y: (Y + Y.mT) / 2,
        matvec=lambda f, v: dense(f) @ v, rmatvec=lambda f, v: dense(f).mT @ v,
        diagonal=lambda f: torch.diagonal(f[0], dim1=-2, dim2=-1).contiguous())


def toeplitz_hand(n, device, dtype):
    i, j = _grid(n, device)
    w = (n - torch.arange(n, device=device)).to(dtype)
    w_row = torch.cat([w.new_zeros(1), 1 / w[1:]])

    def dense(f):
        col, row = f
        k = i - j
        return torch.where(k >= 0, col[..., k.clamp(min=0)], row[..., (-k).clamp(min=0)])

    def pull(Y):
        k = i - j
        col = _sum_by(k.clamp(min=0), torch.where(k >= 0, Y, 0.0), n)
        row = _sum_by((-k).clamp(min=0), torch.where(k < 0, Y, 0.0), n)
        return col, row

    def rpush(Y):
        col, row = pull(Y)
        return col / w, row * w_row

    return dict(
        destructure=dense, destructure_pushforward=dense, destructure_pullback=pull,
        restructure_pushforward=rpush, restructure_pullback=lambda f: dense((f[0] / w, f[1] * w_row)),
        project=lambda Y: dense(rpush(Y)),
        matvec=lambda f, v: dense(f) @ v, rmatvec=lambda f, v: dense(f).mT @ v,
        diagonal=lambda f: f[0][..., :1].expand(f[0].shape[:-1] + (n,)).contiguous())


def hankel_hand(n, device, dtype):
    i, j = _grid(n, device)
    w = torch.cat([torch.arange(1, n + 1, device=device), torch.arange(n - 1, 0, -1, device=device)]).to(dtype)

    def dense(f):
        return f[0][..., i + j]

    def pull(Y):
        return (_sum_by(i + j, Y, 2 * n - 1),)

    return dict(
        destructure=dense, destructure_pushforward=dense, destructure_pullback=pull,
        restructure_pushforward=lambda Y: (pull(Y)[0] / w,), restructure_pullback=lambda f: dense((f[0] / w,)),
        project=lambda Y: dense((pull(Y)[0] / w,)),
        matvec=lambda f, v: dense(f) @ v, rmatvec=lambda f, v: dense(f).mT @ v,
        diagonal=lambda f: f[0][..., 0:2 * n - 1:2].contiguous())


def tridiagonal_hand(n, device, dtype):
    def dense(f):
        dl, d, du = f
        return torch.diag_embed(d) + torch.diag_embed(du, 1) + torch.diag_embed(dl, -1)

    def pull(Y):
        return tuple(torch.diagonal(Y, k, dim1=-2, dim2=-1).contiguous() for k in (-1, 0, 1))

    def matvec(f, v):
        dl, d, du = f
        out = d[..., None] * v
        out = out + torch.nn.functional.pad(du[..., None] * v[..., 1:, :], (0, 0, 0, 1))
        return out + torch.nn.functional.pad(dl[..., None] * v[..., :-1, :], (0, 0, 1, 0))

    return dict(
        destructure=dense, destructure_pushforward=dense, destructure_pullback=pull,
        restructure_pushforward=pull, restructure_pullback=dense, project=lambda Y: dense(pull(Y)),
        matvec=matvec, rmatvec=lambda f, v: matvec((f[2], f[1], f[0]), v),
        diagonal=lambda f: f[1].clone())


TYPES = {
    "Diagonal": ("diagonal", lambda n: {"diag": (n,)}, diagonal_hand),
    "Symmetric": ("symmetric", lambda n: {"data": (n, n)}, symmetric_hand),
    "Toeplitz": ("toeplitz", lambda n: {"col": (n,), "row": (n,)}, toeplitz_hand),
    "Hankel": ("hankel", lambda n: {"h": (2 * n - 1,)}, hankel_hand),
    "Tridiagonal": ("tridiagonal", lambda n: {"dl": (n - 1,), "d": (n,), "du": (n - 1,)}, tridiagonal_hand),
}


def _calls(mod, cls, shapes, batch, n, device, dtype, hand, gen):
    def rand(shape):
        return torch.randn(batch + shape, generator=gen, dtype=dtype, device=device)
    fields = {k: rand(s) for k, s in shapes.items()}
    tangent = {k: rand(s) for k, s in shapes.items()}
    x, t = cls(**fields), cls(**tangent)
    f, tf = tuple(fields.values()), tuple(tangent.values())
    Y, v = rand((n, n)), rand((n, 1))
    ours = dict(
        destructure=lambda: mod.destructure(x), destructure_pushforward=lambda: mod.destructure_pushforward(x, t),
        destructure_pullback=lambda: mod.destructure_pullback(x, Y)._arrays,
        restructure_pushforward=lambda: mod.restructure_pushforward(x, Y)._arrays,
        restructure_pullback=lambda: mod.restructure_pullback(x, t), project=lambda: mod.project(x, Y),
        matvec=lambda: mod.matvec(x, v), rmatvec=lambda: mod.rmatvec(x, v), diagonal=lambda: mod.diagonal(x))
    theirs = dict(
        destructure=lambda: hand["destructure"](f), destructure_pushforward=lambda: hand["destructure"](tf),
        destructure_pullback=lambda: hand["destructure_pullback"](Y),
        restructure_pushforward=lambda: hand["restructure_pushforward"](Y),
        restructure_pullback=lambda: hand["restructure_pullback"](tf), project=lambda: hand["project"](Y),
        matvec=lambda: hand["matvec"](f, v), rmatvec=lambda: hand["rmatvec"](f, v),
        diagonal=lambda: hand["diagonal"](f))
    return ours, theirs


def _close(a, b, dtype):
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    for p, q in zip(a, b):
        assert p.shape == q.shape, (p.shape, q.shape)
        scale = float(q.abs().max()) or 1.0
        assert float((p - q).abs().max()) <= tol * scale, float((p - q).abs().max())


def _time_pair(ours, theirs, min_time, rounds=5):
    """Medians of blocked runs, alternating the two functions for ``rounds``
    rounds; the least median of each (other processes only ever add time)."""
    a, b = [], []
    for _ in range(rounds):
        a.append(tb.Timer("fn()", globals={"fn": ours}).blocked_autorange(min_run_time=min_time / rounds).median)
        b.append(tb.Timer("fn()", globals={"fn": theirs}).blocked_autorange(min_run_time=min_time / rounds).median)
    return min(a), min(b)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per side and map")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--out", default=os.path.join(ROOT, "generated"), help="folder holding torch/<module>.py")
    args = ap.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {device}, {args.dtype}, {torch.get_num_threads()} threads; "
          f"ratio = generated / hand-written (target <= 1.5)")
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    worst = []
    for label, batch, n in (("n = 2000", (), 2000), ("batch of 64, n = 256", (64,), 256)):
        print(f"\n{label}")
        print(f"{'type':12s}" + "".join(f"{m[:14]:>15s}" for m in MAPS))
        for name in args.types.split(","):
            module, shapes, hand_of = TYPES[name]
            mod = load_module(os.path.join(args.out, "torch", module + ".py"))
            ours, theirs = _calls(mod, getattr(mod, name), shapes(n), batch, n, device, dtype,
                                  hand_of(n, device, dtype), gen)
            row = []
            for m in MAPS:
                _close(ours[m](), theirs[m](), dtype)
                a, b = _time_pair(ours[m], theirs[m], args.min_time)
                row.append((a / b, a, b))
                worst.append((a / b, name, label, m, a, b))
            print(f"{name:12s}" + "".join(f"{r:>15.2f}" for r, _, _ in row))
            print(f"{'  ms':12s}" + "".join(f"{a * 1e3:>8.3f}/{b * 1e3:<6.3f}" for _, a, b in row))
    worst.sort(reverse=True)
    print("\nabove 1.5x: " + (", ".join(f"{n} {m} ({l}) {r:.2f}" for r, n, l, m, _, _ in worst if r > 1.5) or "none"))


if __name__ == "__main__":
    main()
