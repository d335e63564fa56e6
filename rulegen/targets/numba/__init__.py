"""The numba target: loops over the derivation's nests, compiled by numba."""
