"""rulegen: derive differentiation rules for structured matrix types.

Pipeline (one stage a module)::

    YAML text --spec.py--> Spec --derive.py (loops.py)--> Derivation
        --emit.py + templates/--> module source --> generated/<name>.py

``cli.py`` drives it; ``runtime.py`` (and, for types that read a matrix
field across its rows, ``tiles.py``) is all that generated code imports
besides numpy and numba.
"""

__version__ = "0.2.0"
