"""PyTorch adapter: ``destructure`` and ``matvec`` of any generated type as
differentiable torch operations whose backward is the generated pullback.

    import torch
    from generated import sym_tridiagonal as st
    from rulegen import torch_ops
    dv = torch.randn(5, dtype=torch.float64, requires_grad=True)
    ev = torch.randn(4, dtype=torch.float64, requires_grad=True)
    Y = torch_ops.destructure(st, dv=dv, ev=ev)          # dense, differentiable
    y = torch_ops.matvec(st, v, dv=dv, ev=ev)             # x @ v, never dense

Fields are keyword arguments (tensors or numbers); sizes that the fields do
not determine are keywords too (``Fill``: ``m=..., n=...``). The generated
maps run in float64 on the CPU (the tensors are moved there and back); the
result has the dtype and device of the first floating tensor argument.
Backward: ``destructure_pullback`` for ``destructure``; ``bilinear_pullback``
for the fields and ``rmatvec`` for ``v`` in ``matvec``. Install with the
``torch`` extra (``pip install -e '.[torch]'``).
"""

from __future__ import annotations

import numpy as np
import torch

from .runtime import adapter_arguments

__all__ = ["destructure", "matvec"]


def _split(mod, kwargs):
    cls, names, sizes = adapter_arguments(mod, kwargs)
    tensors = [kwargs[n] if torch.is_tensor(kwargs[n]) else torch.as_tensor(kwargs[n], dtype=torch.float64)
               for n in names]
    return cls, names, sizes, tensors


def _numpy(t):
    return t.detach().to("cpu", torch.float64).numpy()


def _like(arr, ref):
    return torch.as_tensor(np.asarray(arr, dtype=np.float64)).to(dtype=ref.dtype, device=ref.device)


def _reference(tensors, default):
    return next((t for t in tensors if torch.is_tensor(t) and t.is_floating_point()), default)


class _Destructure(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mod, cls, names, sizes, *tensors):
        x = cls(**{n: _numpy(t) for n, t in zip(names, tensors)}, **sizes)
        ctx.mod, ctx.x, ctx.names = mod, x, names
        ctx.refs = [(t.shape, t.dtype, t.device) for t in tensors]
        return _like(mod.destructure(x), _reference(tensors, torch.zeros((), dtype=torch.float64)))

    @staticmethod
    def backward(ctx, grad):
        g = ctx.mod.destructure_pullback(ctx.x, _numpy(grad))
        out = [torch.as_tensor(np.asarray(getattr(g, n), dtype=np.float64)).reshape(shape).to(device=device, dtype=dtype)
               for n, (shape, dtype, device) in zip(ctx.names, ctx.refs)]
        return (None, None, None, None, *out)


class _Matvec(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mod, cls, names, sizes, v, *tensors):
        x = cls(**{n: _numpy(t) for n, t in zip(names, tensors)}, **sizes)
        vn = _numpy(v)
        ctx.mod, ctx.x, ctx.names, ctx.v = mod, x, names, vn
        ctx.refs = [(t.shape, t.dtype, t.device) for t in tensors]
        ctx.vref = (v.shape, v.dtype, v.device)
        return _like(mod.matvec(x, vn), _reference((v, *tensors), v))

    @staticmethod
    def backward(ctx, grad):
        ybar = _numpy(grad)
        g = ctx.mod.bilinear_pullback(ctx.x, ybar, ctx.v)
        fields = [torch.as_tensor(np.asarray(getattr(g, n), dtype=np.float64)).reshape(shape).to(device=device, dtype=dtype)
                  for n, (shape, dtype, device) in zip(ctx.names, ctx.refs)]
        shape, dtype, device = ctx.vref
        vbar = torch.as_tensor(ctx.mod.rmatvec(ctx.x, ybar)).reshape(shape).to(device=device, dtype=dtype)
        return (None, None, None, None, vbar, *fields)


def destructure(mod, **kwargs):
    """The dense matrix of the type of ``mod``, differentiable in each field tensor."""
    cls, names, sizes, tensors = _split(mod, kwargs)
    return _Destructure.apply(mod, cls, names, sizes, *tensors)


def matvec(mod, v, **kwargs):
    """``x @ v`` (v of shape (n,) or (n, k)), differentiable in v and each field."""
    cls, names, sizes, tensors = _split(mod, kwargs)
    v = v if torch.is_tensor(v) else torch.as_tensor(v, dtype=torch.float64)
    return _Matvec.apply(mod, cls, names, sizes, v, *tensors)
