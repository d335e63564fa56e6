"""The command line: build, check, reproducibility, atomic all-or-nothing output."""

import os
import shutil

from helpers import GENERATED, ROOT, SPECS, run_cli

SPEC_FILES = sorted(os.path.join(SPECS, f) for f in os.listdir(SPECS) if f.endswith(".yaml"))


TARGETS = ["numba"] + [t for t in ("jax", "torch") if os.path.isdir(os.path.join(GENERATED, t))]


def _read_all(folder):
    """Every generated .py below ``folder`` (the target folders too), by relative path."""
    out = {}
    for top, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(top, f)
                out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


def test_build_reproduces_committed_generated_byte_for_byte(tmp_path):
    """The README's main command rebuilds every target of generated/ exactly."""
    out = tmp_path / "gen"
    flags = [a for t in TARGETS for a in ("--target", t)]
    proc = run_cli("build", *SPEC_FILES, *flags, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"built {len(SPEC_FILES) * len(TARGETS)} modules in" in proc.stdout
    assert _read_all(out) == _read_all(GENERATED)


def test_build_is_deterministic_across_hash_seeds(tmp_path):
    outs = []
    for seed in ("0", "12345"):
        out = tmp_path / seed
        env = dict(os.environ, PYTHONHASHSEED=seed)
        import subprocess
        import sys
        proc = subprocess.run([sys.executable, "-m", "rulegen.cli", "build", *SPEC_FILES, "--out", str(out)],
                              capture_output=True, text=True, env=env, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        outs.append(_read_all(out))
    assert outs[0] == outs[1]


def test_check_passes_on_committed_and_catches_edits(tmp_path):
    assert run_cli("check", *SPEC_FILES, "--out", GENERATED).returncode == 0
    gen = tmp_path / "gen"
    shutil.copytree(GENERATED, gen, ignore=shutil.ignore_patterns("__pycache__"))
    # hand edit
    p = gen / "diagonal.py"
    p.write_text(p.read_text().replace("np.zeros", "np.ones", 1))
    # missing module
    (gen / "fill.py").unlink()
    # edited spec
    specs = tmp_path / "specs"
    shutil.copytree(SPECS, specs)
    t = specs / "toeplitz.yaml"
    t.write_text(t.read_text() + "\n# a comment changes the sha256\n")
    files = sorted(str(specs / f) for f in os.listdir(specs))
    proc = run_cli("check", *files, "--out", str(gen))
    assert proc.returncode == 1
    assert "diagonal.py: differs" in proc.stderr
    assert "fill.py: missing" in proc.stderr
    assert "toeplitz.py: stale" in proc.stderr and "changed since it was built" in proc.stderr
    # the edited spec makes its module stale in every target folder present (jax/, torch/)
    others = [t for t in ("jax", "torch") if (gen / t).is_dir()]
    n_modules = len(SPEC_FILES) * (1 + len(others))
    assert f"{3 + len(others)} of {n_modules} modules stale" in proc.stderr
    for t in others:
        assert f"{t}/toeplitz.py: stale" in proc.stderr


def test_usage_errors_and_version():
    assert run_cli("build").returncode == 2
    proc = run_cli("--version")
    assert proc.returncode == 0 and "rulegen" in proc.stdout
    for sub in ("build", "check"):
        assert run_cli(sub, "--help").returncode == 0


def test_missing_spec_file(tmp_path):
    proc = run_cli("build", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1 and "cannot read spec" in proc.stderr and "Traceback" not in proc.stderr


def test_binary_and_non_utf8_specs_are_refused(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(b"name: X\x00\x01")
    (tmp_path / "latin.yaml").write_bytes("name: Caf\u00e9\n".encode("latin-1"))
    for f, msg in (("bin.yaml", "binary"), ("latin.yaml", "not valid UTF-8")):
        proc = run_cli("build", str(tmp_path / f), "--out", str(tmp_path / "o"))
        assert proc.returncode == 1 and msg in proc.stderr
    assert not (tmp_path / "o").exists()
