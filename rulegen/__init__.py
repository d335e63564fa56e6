"""rulegen: derive differentiation rules for structured matrix types.

Pipeline (one stage a module)::

    YAML text --spec.py--> Spec --derive.py (loops.py)--> Derivation
        --targets/<target>--> module source --> generated/[<target>/]<name>.py

One derivation (the entry's regions as loop nests, its additive terms and
their separable factors, the J⁺ strategy, shift structure, coverage), several
targets, each in ``targets/``: ``numba/`` (loops; its tricks in its folder),
``jax_emit.py`` and ``torch_emit.py`` over the vectorised lowering of
``arrays.py``; ``common.py`` is what they share. ``cli.py`` drives it.
Generated modules import only their runtime (``runtime.py``,
``jax_runtime.py``, ``torch_runtime.py``; numba's tiles from
``targets/numba/tiles.py``) besides numpy and their framework.
"""

__version__ = "0.2.0"
