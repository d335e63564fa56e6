"""One gradient step of a Gaussian log-likelihood with a SymTridiagonal
covariance (issue #17, "rules that stay structured"):

    value = -½ yᵀ Σ⁻¹ y - ½ log det Σ,  and its gradient in Σ's fields (dv, ev)

through ``rulegen.rules.solve`` + ``rulegen.rules.logdet`` (their structured
routes: banded Cholesky, Y⁻ᵀ on the band by selected inversion), against the
same computation dense: the rules' old dense route (``method="dense"``),
PyTorch autograd and ``jax.value_and_grad`` under ``jit`` (float64), and
scipy's banded Cholesky for the value alone (a floor). Every route's value
and gradient are checked against the structured one first; ratios in one run.

    python3 benchmarks/rules.py            # prints a markdown section
    python3 benchmarks/rules.py --quick

``benchmarks/run.py`` appends the same section to results.md (``section``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import scipy.linalg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from generated import sym_tridiagonal as M  # noqa: E402
from rulegen import rules  # noqa: E402

TARGET_MS = 5.0


def _best(f, repeat, min_time=0.2):
    f()
    times, spent = [], 0.0
    while len(times) < repeat or (spent < min_time and len(times) < 300):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
        spent += times[-1]
    return min(times)


def _problem(n, seed=0):
    rng = np.random.default_rng(seed)
    dv = 4.0 + rng.random(n)
    ev = rng.standard_normal(n - 1)
    y = rng.standard_normal(n)
    return dv, ev, y


def rulegen_step(x, y, method="auto"):
    """(value, structural gradient as (dv, ev)) through rules.solve + rules.logdet."""
    z, solve_back = rules.solve(M, x, y, method=method)
    ld, logdet_back = rules.logdet(M, x, method=method)
    value = -0.5 * float(y @ z) - 0.5 * ld
    g = solve_back(-0.5 * y)[0] + logdet_back(-0.5)
    return value, (g.dv, g.ev)


def _torch_step(torch, dv, ev, y):
    dv = torch.tensor(dv, requires_grad=True)
    ev = torch.tensor(ev, requires_grad=True)
    yt = torch.tensor(y)
    S = torch.diag(dv) + torch.diag(ev, 1) + torch.diag(ev, -1)
    value = -0.5 * yt @ torch.linalg.solve(S, yt) - 0.5 * torch.linalg.slogdet(S)[1]
    value.backward()
    return float(value.detach()), (dv.grad.numpy(), ev.grad.numpy())


def _jax_step():
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)

    def loglik(dv, ev, y):
        S = jnp.diag(dv) + jnp.diag(ev, 1) + jnp.diag(ev, -1)
        return -0.5 * y @ jnp.linalg.solve(S, y) - 0.5 * jnp.linalg.slogdet(S)[1]

    f = jax.jit(jax.value_and_grad(loglik, argnums=(0, 1)))

    def step(dv, ev, y):
        value, (gd, ge) = f(dv, ev, y)
        return float(value), (np.asarray(gd), np.asarray(ge))

    return step


def _scipy_value(dv, ev, y):
    ab = np.zeros((2, dv.size))
    ab[0, 1:], ab[1] = ev, dv
    c = scipy.linalg.cholesky_banded(ab, check_finite=False)
    z = scipy.linalg.cho_solve_banded((c, False), y, check_finite=False)
    return -0.5 * float(y @ z) - np.sum(np.log(c[1]))


def _same(a, b, what):
    (va, ga), (vb, gb) = a, b
    ok = abs(va - vb) <= 1e-10 * max(1.0, abs(vb)) and all(
        np.max(np.abs(p - q)) <= 1e-10 * max(1.0, float(np.max(np.abs(q)))) for p, q in zip(ga, gb))
    if not ok:
        raise AssertionError(f"benchmarks/rules.py: {what} disagrees with the structured route")


def measure(n=2000, quick=False):
    """[(label, seconds)] with the structured route first; checked equal first."""
    repeat = 3 if quick else 7
    dv, ev, y = _problem(n)
    x = M.SymTridiagonal(dv=dv, ev=ev)
    ref = rulegen_step(x, y)
    rows = [("rulegen rules.solve + rules.logdet (banded Cholesky, selected inversion)",
             _best(lambda: rulegen_step(x, y), repeat))]
    _same(rulegen_step(x, y, "dense"), ref, "the dense route")
    rows.append(("rulegen, the old dense route (method=\"dense\": LU, np.linalg.inv)",
                 _best(lambda: rulegen_step(x, y, "dense"), 2 if quick else 3, 0)))
    try:
        import torch
    except ImportError:     # pragma: no cover - optional peer
        torch = None
    if torch is not None:
        _same(_torch_step(torch, dv, ev, y), ref, "PyTorch")
        rows.append(("PyTorch autograd, dense (linalg.solve + slogdet)",
                     _best(lambda: _torch_step(torch, dv, ev, y), 2 if quick else 3, 0)))
    try:
        step = _jax_step()
    except ImportError:     # pragma: no cover - optional peer
        step = None
    if step is not None:
        _same(step(dv, ev, y), ref, "JAX")
        rows.append(("JAX value_and_grad under jit, dense (float64)",
                     _best(lambda: step(dv, ev, y), 2 if quick else 3, 0)))
    assert abs(_scipy_value(dv, ev, y) - ref[0]) <= 1e-10 * abs(ref[0])
    rows.append(("scipy cholesky_banded + cho_solve_banded, value only (floor)",
                 _best(lambda: _scipy_value(dv, ev, y), repeat)))
    return rows


def section(quick=False, n=2000):
    """The markdown lines of the section (a title, a table, the target)."""
    rows = measure(n, quick)
    ours = rows[0][1]
    lines = [f"## Rules that stay structured: a Gaussian log-likelihood step, SymTridiagonal Σ, n = {n}", "",
             "value = -½ yᵀΣ⁻¹y - ½ log det Σ and its gradient in (dv, ev); every route checked equal "
             "(1e-10) first; ratio = route time / the structured route's.", "",
             "| route | ms | ratio |", "|---|---|---|"]
    lines += [f"| {label} | {t * 1e3:.3g} | {t / ours:.3g} |" for label, t in rows]
    verdict = "met" if ours * 1e3 <= TARGET_MS else "missed"
    lines += ["", f"Target (issue #17): ≤ {TARGET_MS:g} ms for the structured step: {ours * 1e3:.3g} ms, {verdict}.", ""]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("-n", type=int, default=2000)
    args = parser.parse_args()
    print("\n".join(section(args.quick, args.n)))


if __name__ == "__main__":
    main()
