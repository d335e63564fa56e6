import os
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(config, items):
    from hypothesis import is_hypothesis_test, seed

    forced = config.getoption("--hypothesis-seed", default=None)
    for item in items:
        # Hypothesis draws a fresh seed per run unless told otherwise: fix one
        # per test (from its name) so that a failure recurs on the next run.
        # `--hypothesis-seed=N` still chooses another.
        obj = getattr(getattr(item, "obj", None), "__func__", getattr(item, "obj", None))
        if forced is None and obj is not None and is_hypothesis_test(obj) \
                and getattr(obj, "_hypothesis_internal_use_seed", None) is None:
            seed(zlib.crc32(f"{item.path.name}::{item.originalname}".encode()))(obj)
