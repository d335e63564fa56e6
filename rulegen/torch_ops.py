"""PyTorch adapter, on the PyTorch target: ``destructure`` and ``matvec`` of a
generated type as plain torch operations (differentiable by autograd in both
modes, to any order; on the fields' device, in their dtype; batches as
leading dimensions).

    import torch
    from generated import sym_tridiagonal as st
    from rulegen import torch_ops
    dv = torch.randn(5, dtype=torch.float64, requires_grad=True)
    ev = torch.randn(4, dtype=torch.float64, requires_grad=True)
    Y = torch_ops.destructure(st, dv=dv, ev=ev)          # dense, differentiable
    y = torch_ops.matvec(st, v, dv=dv, ev=ev)             # x @ v, never dense

``mod`` is a generated module of any target: the PyTorch module of the same
spec is used, ``torch/<module>.py`` beside it (``rulegen build ... --target
torch`` writes it; the built-ins have theirs in ``rulegen.builtins.torch``).
Fields are keyword arguments (tensors, numbers, arrays); sizes that the
fields do not determine are keywords too (``Fill``: ``m=..., n=...``). The
torch module itself offers every map: ``torch_module(mod)``. Install with
the ``torch`` extra (``pip install -e '.[torch]'``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys

from .runtime import adapter_arguments

__all__ = ["destructure", "matvec", "torch_module"]

_LOADED: dict = {}


def torch_module(mod):
    """The PyTorch-target module of the spec ``mod`` was generated from
    (``mod`` itself when it is one)."""
    if getattr(mod, "_TARGET", None) == "torch":
        return mod
    path = getattr(mod, "__file__", None)
    if not path:
        raise TypeError(f"torch_ops: {mod!r} is not a generated module")
    folder, name = os.path.split(os.path.abspath(path))
    target = os.path.join(folder, "torch", name)
    if not os.path.exists(target):
        raise FileNotFoundError(f"torch_ops: no PyTorch module for {mod.__name__} ({target} is missing); "
                                f"build it with: rulegen build SPEC --target torch --out {folder}")
    if target not in _LOADED:
        digest = hashlib.sha1(target.encode()).hexdigest()[:10]
        spec = importlib.util.spec_from_file_location(f"rulegen_torch_{digest}_{name[:-3]}", target)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _LOADED[target] = module
    return _LOADED[target]


def _instance(mod, kwargs):
    tmod = torch_module(mod)
    cls, names, sizes = adapter_arguments(tmod, kwargs)
    return tmod, cls(**{n: kwargs[n] for n in names}, **sizes)


def destructure(mod, **kwargs):
    """The dense matrix of the type of ``mod`` (``(*batch, m, n)``),
    differentiable in each field tensor."""
    tmod, x = _instance(mod, kwargs)
    return tmod.destructure(x)


def matvec(mod, v, **kwargs):
    """``x @ v`` (v of shape (n,) or (..., n, k)), differentiable in v and each field."""
    tmod, x = _instance(mod, kwargs)
    return tmod.matvec(x, v)
