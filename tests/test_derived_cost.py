"""The derived operations never allocate the dense matrix: at n = 40000 a
dense float64 matrix is 12.8 GB, and the process here is capped at 6 GiB of
address space. (Correctness is checked in test_maps and the unseen-spec tests.)"""

import subprocess
import sys
import textwrap

from helpers import ROOT

SCRIPT = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    import numpy as np
    sys.path.insert(0, {root!r})
    from generated import diagonal as D, bidiagonal as B, low_rank as L, fill as F
    n = 40000
    rng = np.random.default_rng(0)
    d = rng.standard_normal(n)
    v = rng.standard_normal((n, 3))
    x = D.Diagonal(diag=d)
    assert np.allclose(D.matvec(x, v), d[:, None] * v)
    assert np.allclose(D.rmatvec(x, v), d[:, None] * v)
    assert np.allclose(D.bilinear_pullback(x, v, v).diag, np.sum(v * v, axis=1))
    assert np.allclose(D.diagonal(x), d)
    y = B.Bidiagonal(dv=d, ev=d[1:])
    w = v[:, 0]
    assert np.allclose(B.matvec(y, w), d * w + np.r_[d[1:] * w[1:], 0])
    U, V = rng.standard_normal((n, 4)), rng.standard_normal((n, 4))
    z = L.LowRank(U=U, V=V)
    assert np.allclose(L.matvec(z, v), U @ (V.T @ v))          # O((m + n) r k)
    assert np.allclose(L.bilinear_pullback(z, v, v).U, v @ (v.T @ V))
    f = F.Fill(value=2.0, m=n, n=n)
    assert np.allclose(F.rmatvec(f, v), 2.0 * np.ones((n, 1)) * v.sum(axis=0))
    try:
        np.zeros((n, n)) + 1
    except MemoryError:
        print("capped")
""")


def test_derived_operations_at_n_40000_under_a_6_gib_cap():
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(root=ROOT)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "capped" in proc.stdout      # the cap is real: the dense matrix cannot be made
