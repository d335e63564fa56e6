"""JAX adapter: ``destructure`` and ``matvec`` of any generated type as
``jax.custom_vjp`` functions that call the generated kernels through
``jax.pure_callback``; their backward is the generated pullback.

    import jax, jax.numpy as jnp
    from generated import sym_tridiagonal as st
    from rulegen import jax_ops
    Y = jax_ops.destructure(st, dv=dv, ev=ev)
    g = jax.grad(lambda dv: jnp.sum(jax_ops.matvec(st, v, dv=dv, ev=ev) ** 2))(dv)

Fields are keyword arguments (arrays or numbers), sizes the fields do not
determine are keywords too. The kernels run on the host in float64; results
come back in the dtype of the fields (float32 unless ``jax_enable_x64``).
Works under ``jit`` and ``grad`` (the callback is pure); ``vmap`` calls the
host once per batch element. Install with the ``jax`` extra.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .runtime import adapter_arguments

__all__ = ["destructure", "matvec"]


def _split(mod, kwargs):
    cls, names, size_kw = adapter_arguments(mod, kwargs)
    sizes = tuple(sorted((k, int(v)) for k, v in size_kw.items()))
    arrays = [jnp.asarray(kwargs[n], dtype=jnp.result_type(float)) for n in names]
    return cls, names, sizes, arrays


def _instance(cls, names, sizes, arrays):
    return cls(**{n: np.asarray(a, dtype=np.float64) for n, a in zip(names, arrays)}, **dict(sizes))


def _fields_of(obj, names, like):
    return tuple(np.asarray(getattr(obj, n), dtype=a.dtype).reshape(a.shape) for n, a in zip(names, like))


@functools.lru_cache(maxsize=None)
def _destructure(mod, cls, names, sizes, shapes, dtype):
    # the output shape is fixed by the sizes: take it from a zero instance
    shape = _instance(cls, names, sizes, [np.zeros(s) for s in shapes]).shape
    out_type = jax.ShapeDtypeStruct(shape, dtype)
    field_types = tuple(jax.ShapeDtypeStruct(s, dtype) for s in shapes)

    def host_value(*arrays):
        return mod.destructure(_instance(cls, names, sizes, arrays)).astype(dtype)

    def host_pullback(*args):
        *arrays, g = args
        x = _instance(cls, names, sizes, arrays)
        return _fields_of(mod.destructure_pullback(x, np.asarray(g, np.float64)), names,
                          [np.zeros(s, dtype) for s in shapes])

    @jax.custom_vjp
    def f(*arrays):
        return jax.pure_callback(host_value, out_type, *arrays)

    def fwd(*arrays):
        return f(*arrays), arrays

    def bwd(arrays, g):
        return tuple(jax.pure_callback(host_pullback, field_types, *arrays, g))

    f.defvjp(fwd, bwd)
    return f


@functools.lru_cache(maxsize=None)
def _matvec(mod, cls, names, sizes, shapes, v_shape, dtype):
    rows = _instance(cls, names, sizes, [np.zeros(s) for s in shapes]).shape[0]
    out_type = jax.ShapeDtypeStruct((rows,) + tuple(v_shape[1:]), dtype)
    grad_types = (jax.ShapeDtypeStruct(v_shape, dtype),) + tuple(jax.ShapeDtypeStruct(s, dtype) for s in shapes)

    def host_value(v, *arrays):
        x = _instance(cls, names, sizes, arrays)
        return mod.matvec(x, np.asarray(v, np.float64)).astype(dtype)

    def host_pullback(v, *args):
        *arrays, g = args
        x = _instance(cls, names, sizes, arrays)
        g = np.asarray(g, np.float64)
        vbar = mod.rmatvec(x, g).astype(dtype).reshape(v_shape)
        return (vbar,) + _fields_of(mod.bilinear_pullback(x, g, np.asarray(v, np.float64)), names,
                                    [np.zeros(s, dtype) for s in shapes])

    @jax.custom_vjp
    def f(v, *arrays):
        return jax.pure_callback(host_value, out_type, v, *arrays)

    def fwd(v, *arrays):
        return f(v, *arrays), (v, arrays)

    def bwd(res, g):
        v, arrays = res
        return tuple(jax.pure_callback(host_pullback, grad_types, v, *arrays, g))

    f.defvjp(fwd, bwd)
    return f


def destructure(mod, **kwargs):
    """The dense matrix of the type of ``mod``, differentiable in each field."""
    cls, names, sizes, arrays = _split(mod, kwargs)
    dtype = np.dtype(jnp.result_type(*arrays)) if arrays else np.dtype(jnp.result_type(float))
    f = _destructure(mod, cls, names, sizes, tuple(a.shape for a in arrays), dtype)
    return f(*arrays)


def matvec(mod, v, **kwargs):
    """``x @ v`` (v of shape (n,) or (n, k)), differentiable in v and each field."""
    cls, names, sizes, arrays = _split(mod, kwargs)
    v = jnp.asarray(v, dtype=jnp.result_type(float))
    dtype = np.dtype(jnp.result_type(v, *arrays))
    f = _matvec(mod, cls, names, sizes, tuple(a.shape for a in arrays), tuple(v.shape), dtype)
    return f(v, *arrays)
