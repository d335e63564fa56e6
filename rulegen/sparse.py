"""scipy.sparse interop for the sparse built-ins (SparseCOO, SparseCSR).

    from rulegen.sparse import from_scipy, to_scipy
    x = from_scipy(A)                   # csr_array/csr_matrix -> SparseCSR, anything else -> SparseCOO
    x = from_scipy(A, format="coo", target="torch")
    B = to_scipy(x)                     # SparseCOO -> coo_array, SparseCSR -> csr_array

The pattern is copied as it is stored: duplicates stay duplicates (their
entries add up, as in scipy), explicit zeros stay stored (they are part of
the tangent space: ``project`` keeps them). ``to_scipy`` takes one instance
(no batch dimensions) of any target and returns arrays on the host.
"""

from __future__ import annotations

import importlib

import numpy as np

_MODULES = {"coo": "sparse_coo", "csr": "sparse_csr"}
_CLASSES = {"SparseCOO": "coo", "SparseCSR": "csr"}
_TARGETS = ("numba", "jax", "torch")


def _module(fmt: str, target: str):
    if target not in _TARGETS:
        raise ValueError(f"from_scipy: target must be one of {', '.join(_TARGETS)}, got {target!r}")
    prefix = "rulegen.builtins" if target == "numba" else f"rulegen.builtins.{target}"
    return importlib.import_module(f"{prefix}.{_MODULES[fmt]}")


def from_scipy(matrix, format: str | None = None, target: str = "numba"):
    """A SparseCOO or SparseCSR instance holding the stored entries of the
    scipy sparse ``matrix`` (format: "coo" or "csr"; by default CSR for a
    CSR matrix, COO for any other sparse format)."""
    import scipy.sparse as sps

    if not sps.issparse(matrix):
        raise TypeError(f"from_scipy: argument 'matrix' must be a scipy.sparse matrix or array, "
                        f"got {type(matrix).__name__}")
    if format is None:
        format = "csr" if matrix.format == "csr" else "coo"
    if format not in _MODULES:
        raise ValueError(f"from_scipy: format must be 'coo' or 'csr', got {format!r}")
    if matrix.dtype.kind not in "fc":
        matrix = matrix.astype(np.float64)
    m, n = matrix.shape
    mod = _module(format, target)
    if format == "csr":
        A = matrix.tocsr(copy=False)
        fields = dict(vals=A.data, indptr=A.indptr.astype(np.int64), cols=A.indices.astype(np.int64))
        cls = mod.SparseCSR
    else:
        A = matrix.tocoo(copy=False)
        fields = dict(vals=A.data, rows=A.row.astype(np.int64), cols=A.col.astype(np.int64))
        cls = mod.SparseCOO
    if target == "jax":
        import jax.numpy as jnp
        fields = {k: jnp.asarray(v) for k, v in fields.items()}
    elif target == "torch":
        import torch
        fields = {k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in fields.items()}
    return cls(**fields, m=m, n=n)


def _host(a) -> np.ndarray:
    if hasattr(a, "detach"):            # torch
        a = a.detach().cpu()
    return np.asarray(a)


def to_scipy(x):
    """``x`` (a SparseCOO or SparseCSR instance of any target, without batch
    dimensions) as a scipy.sparse ``coo_array`` or ``csr_array``."""
    import scipy.sparse as sps

    fmt = _CLASSES.get(type(x).__name__)
    if fmt is None:
        raise TypeError(f"to_scipy: argument 'x' must be a SparseCOO or SparseCSR instance, "
                        f"got {type(x).__name__}")
    if tuple(getattr(x, "batch_shape", ())):
        raise ValueError(f"to_scipy: argument 'x' must have no batch dimensions, got batch shape "
                         f"{tuple(x.batch_shape)}")
    shape = tuple(int(d) for d in x.shape)
    vals = _host(x.vals)
    if fmt == "csr":
        return sps.csr_array((vals, _host(x.cols), _host(x.indptr)), shape=shape)
    return sps.coo_array((vals, (_host(x.rows), _host(x.cols))), shape=shape)
