import hashlib
import os
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import ROOT, load_module, run_cli  # noqa: E402  (the path above first)

# The fast tier, `python3 -m pytest -q -m "not slow"`, leaves out these tests
# (listed here, not in the files, so that files under other hands need no
# edit): node ids, or a prefix of one ending in "::" or "[". Plain
# `python3 -m pytest -q` runs everything.
SLOW = (
    "test_fuzz.py::",                   # hypothesis fuzzing of the compiler
    "test_random_specs.py::",           # randomly composed specs (compiled afresh after a compiler change)
    "test_unseen_nonlinear.py::",       # 20-odd nonlinear specs (the same)
    "test_docs.py::",                   # the tutorial, as a shell script with fresh builds
    "test_derived_cost.py::",           # n = 40000 under a 6 GiB cap, in a subprocess
    "test_cli.py::test_build_is_deterministic_across_hash_seeds",      # two builds of every spec
    "test_tools.py::test_verify_passes_a_fresh_build_and_names_a_corrupted_map",
    "test_tools.py::test_explain_names_class_fields_and_plots",       # matplotlib
    # the JAX target: every map compiles with XLA per shape (~4 min for the file)
    "test_jax_target.py::test_every_map_against_the_oracle_float64[",
    "test_jax_target.py::test_float32_in_float32_out_within_1e5[",
    "test_jax_target.py::test_hessian_through_destructure_and_matvec_equals_the_dense_one[",
    "test_jax_target.py::test_a_batch_sharded_over_four_emulated_devices",
    "test_jax_target.py::test_unseen_specs_against_the_oracle[",
    "test_jax_target.py::test_unseen_nonlinear_specs_on_the_jax_target[",
    "test_jax_target.py::test_edge_specs_on_the_jax_target",
    "test_explain_verify.py::",         # verify of fresh builds
    # complex fields on every built-in, every target (the fast tier keeps one type of each J⁺ kind)
    "test_complex.py::test_complex_fields_every_builtin_against_the_real_pair_oracle[",
    "test_complex.py::test_unseen_complex_specs_against_the_real_pair_oracle[",
    "test_complex.py::test_unseen_nonlinear_specs_with_complex_fields[",
    "test_complex.py::test_complex64_every_builtin[",
)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: fuzzing, random specs, fresh builds of many specs, the tutorial, big sizes under a "
        "memory cap (listed in tests/conftest.py); `-m \"not slow\"` runs the fast tier")


def _is_slow(item) -> bool:
    node = f"{item.path.name}::{item.name}"
    return any(node == s or (s[-1] in ":[" and node.startswith(s)) for s in SLOW)


def pytest_collection_modifyitems(config, items):
    from hypothesis import is_hypothesis_test, seed

    forced = config.getoption("--hypothesis-seed", default=None)
    for item in items:
        if _is_slow(item):
            item.add_marker(pytest.mark.slow)
        # Hypothesis draws a fresh seed per run unless told otherwise: fix one
        # per test (from its name) so that a failure recurs on the next run.
        # `--hypothesis-seed=N` still chooses another.
        obj = getattr(getattr(item, "obj", None), "__func__", getattr(item, "obj", None))
        if forced is None and obj is not None and is_hypothesis_test(obj) \
                and getattr(obj, "_hypothesis_internal_use_seed", None) is None:
            seed(zlib.crc32(f"{item.path.name}::{item.originalname}".encode()))(obj)


def _rulegen_digest() -> str:
    """sha256 of what a build depends on besides the spec: every source file of
    the compiler (rulegen/, templates/), Python's, sympy's and jinja2's
    versions. Any change to them, even one that leaves the output alone, gives
    fresh builds: only their numba kernels are then compiled again."""
    import jinja2
    import sympy

    h = hashlib.sha256(f"{sys.version}\0{sympy.__version__}\0{jinja2.__version__}\0".encode())
    for folder in ("rulegen", "templates"):
        for base, dirs, files in os.walk(os.path.join(ROOT, folder)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith((".pyc", ".nbi", ".nbc")):
                    continue
                path = os.path.join(base, name)
                h.update(f"{os.path.relpath(path, ROOT)}\0".encode())
                with open(path, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()[:16]


def _build_into(folder: Path, specs: dict) -> Path:
    """Build the specs (file name -> YAML text) with the CLI into ``folder/out``
    unless they are there already; return ``folder/out``. A build goes to a
    scratch folder first and is renamed into place, so a concurrent session
    sees either nothing or a whole build."""
    out = folder / "out"
    if not out.is_dir():
        scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
        try:
            for filename, text in specs.items():
                (scratch / filename).write_text(text)
            proc = run_cli("build", *[str(scratch / f) for f in specs], "--out", str(scratch / "out"))
            assert proc.returncode == 0, proc.stderr
            try:
                scratch.rename(folder)
            except OSError:             # built meanwhile by another session
                pass
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return out


@pytest.fixture(scope="session")
def build_specs_once(request, tmp_path_factory):
    """``build_specs_once({file name: YAML text, ...})``: the folder that
    ``rulegen build`` of those specs writes, built once per set of spec texts
    and shared by every test that asks.

    Builds are kept across sessions in pytest's cache folder
    (``.pytest_cache/d/rulegen-built/<digest of rulegen/ and templates/>/<digest
    of the specs>/out``), so their numba kernels are compiled once (numba
    caches them beside the modules), not once per run; a change to the
    compiler or to a spec gives a fresh folder, and the folders of all but the
    three latest compiler versions are removed. With ``--cache-clear`` they
    are built afresh, with ``-p no:cacheprovider`` in a temporary folder for
    this session only."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        root = cache.mkdir("rulegen-built") / _rulegen_digest()
        root.mkdir(exist_ok=True)
        os.utime(root)
        others = sorted((p for p in root.parent.iterdir() if p.is_dir() and p != root),
                        key=lambda p: p.stat().st_mtime, reverse=True)
        for old in others[2:]:
            shutil.rmtree(old, ignore_errors=True)
    else:
        root = tmp_path_factory.mktemp("built")
    built = {}

    def build_specs_once(specs: dict) -> Path:
        key = hashlib.sha256(repr(sorted(specs.items())).encode()).hexdigest()[:16]
        if key not in built:
            built[key] = _build_into(root / key, specs)
        return built[key]

    return build_specs_once


@pytest.fixture(scope="session")
def build_once(build_specs_once):
    """``build_once(yaml_text)``: the module ``helpers.build`` makes of a spec,
    built once per spec text and file name (see ``build_specs_once``) and
    imported once; every test that asks gets the same module, and must leave it
    as it found it (``monkeypatch`` restores what it sets)."""
    loaded = {}

    def build_once(yaml_text: str, filename: str = "spec.yaml"):
        key = (filename, yaml_text)
        if key not in loaded:
            out = build_specs_once({filename: yaml_text})
            (module_file,) = [p for p in out.iterdir() if p.suffix == ".py" and p.name != "__init__.py"]
            loaded[key] = load_module(str(module_file))
        return loaded[key]

    return build_once
