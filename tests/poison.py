"""``np.empty`` that returns NaN-filled memory, for one generated module: an
output that a kernel allocates with ``np.empty`` must have every entry written."""

import contextlib

import numpy as np


class PoisonedNumpy:
    """numpy, except that ``empty`` fills with NaN."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(shape, *args, **kwargs):
        return np.full(shape, np.nan)


@contextlib.contextmanager
def poisoned_empty(module):
    if not hasattr(module, "np"):           # not a numba module (the JAX target allocates no np.empty)
        yield
        return
    saved = module.np
    module.np = PoisonedNumpy()
    try:
        yield
    finally:
        module.np = saved
