"""rulegen explain and rulegen verify, on specs that are not in specs/."""

import os


from helpers import ROOT, run_cli

ARROW = """
name: Arrowhead
doc: A diagonal plus a first row and column.
sizes: [n]
fields:
  d: [n]
  e: [n - 1]
size: [n, n]
getindex: "d[i] if i == j else (e[j - 1] if i == 0 else (e[i - 1] if j == 0 else 0))"
"""

SCALED_LR = """
name: ScaledOuter
sizes: [m, n]
fields: {s: [], u: [m], v: [n]}
size: [m, n]
getindex: "s * u[i] * v[j]"
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text.lstrip())
    return str(path)


def test_explain_names_class_fields_and_plots(tmp_path):
    spec = _write(tmp_path, "arrow.yaml", ARROW)
    png = tmp_path / "arrow.png"
    proc = run_cli("explain", spec, "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Arrowhead" in out and "fields: d [n], e [n - 1]" in out
    assert "parametrisation: under" in out and "gather" in out
    assert "∂/∂d[i] = 1" in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000     # a real picture
    proc = run_cli("explain", _write(tmp_path, "so.yaml", SCALED_LR), "--latex")
    assert proc.returncode == 0, proc.stderr
    assert "parametrisation: deficient" in proc.stdout and "general" in proc.stdout


def test_explain_reports_bad_specs_cleanly(tmp_path):
    spec = _write(tmp_path, "bad.yaml", ARROW.replace("e[j - 1]", "f[j - 1]"))
    proc = run_cli("explain", spec)
    assert proc.returncode == 1
    assert "bad.yaml:" in proc.stderr and "unknown field 'f'" in proc.stderr and "Traceback" not in proc.stderr


def test_verify_passes_a_fresh_build_and_names_a_corrupted_map(tmp_path):
    specs = [_write(tmp_path, "arrow.yaml", ARROW), _write(tmp_path, "so.yaml", SCALED_LR)]
    out = tmp_path / "out"
    assert run_cli("build", *specs, "--out", str(out)).returncode == 0
    proc = run_cli("verify", *specs, "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verified 2 modules" in proc.stdout
    # corrupt destructure_pullback by 1%
    path = out / "arrowhead.py"
    text = path.read_text()
    old = "return Arrowhead._from_arrays(x._size_values, _pullback(x, ybar))"
    assert old in text
    path.write_text(text.replace(old, "return Arrowhead._from_arrays(x._size_values, "
                                      "tuple(1.01 * g for g in _pullback(x, ybar)))"))
    proc = run_cli("verify", specs[0], "--out", str(out))
    assert proc.returncode == 1
    assert "destructure_pullback fails its check" in proc.stderr
    assert "destructure_pushforward fails" not in proc.stderr


def test_verify_builtin_modules():
    proc = run_cli("verify", *sorted(os.path.join(ROOT, "specs", f) for f in os.listdir(os.path.join(ROOT, "specs"))),
                   "--out", os.path.join(ROOT, "generated"), "--trials", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_subcommand_has_help():
    for cmd in ("build", "check", "explain", "verify"):
        proc = run_cli(cmd, "--help")
        assert proc.returncode == 0 and "Usage:" in proc.stdout
    proc = run_cli("--version")
    assert proc.returncode == 0 and "rulegen" in proc.stdout
