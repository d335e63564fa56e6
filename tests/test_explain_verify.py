"""rulegen explain and rulegen verify on odd input (issue #12): each spec
beside what must come out of it."""

import os
import re

from helpers import ROOT, run_cli

from rulegen.explain import explain
from rulegen.spec import load
from rulegen.verify import verify_module

COO = """
name: Coo
sizes: [m, n, nnz]
fields:
  rows: [nnz]
  cols: [nnz]
  vals: [nnz]
size: [m, n]
getindex: "sum(vals[k] for k in range(nnz) if rows[k] == i and cols[k] == j)"
"""

# rows[k] is an integer or a real number at every draw, never i + 0.5: the
# matrix is zero at every draw, so the maps can only be checked at zero
COO_NEVER = COO.replace("Coo", "CooNever").replace("rows[k] == i", "rows[k] == i + 0.5")

# the entry reads a outside a condition, but the condition never holds
CONSTANT_AT_DRAWS = """
name: ConstantAtDraws
sizes: [n]
fields: {a: [n]}
size: [n, n]
getindex: "1 + (a[i] if a[j] == 0.25 else 0)"
"""

NOWHERE_FINITE = """
name: NowhereFinite
sizes: [n]
fields: {a: [n]}
size: [n, n]
getindex: "log(a[i] - 100) + a[j]"
"""

CAUCHY = """
name: Cauchy
sizes: [m, n]
fields: {x: [m], y: [n]}
size: [m, n]
getindex: "1 / (x[i] - y[j])"
"""

VANDERMONDE = """
name: Vandermonde
sizes: [n, m]
fields: {x: [n]}
size: [n, m]
getindex: "x[i] ** j"
"""

SIZE_P = """
name: SizeP
sizes: [p, q]
fields: {a: [p + q], s: []}
size: [p + q, p + q]
getindex: "s * a[i] / (1 + a[j] ** 2) if i <= j else 0"
"""

EXP_DIAGONAL = """
name: ExpDiagonal
sizes: [n]
fields: {logd: [n]}
size: [n, n]
getindex: "exp(logd[i]) if i == j else 0"
"""

HUGE_CONSTANT = """
name: HugeConstant
sizes: []
fields: {a: [3000]}
size: [1000, 1000]
getindex: "a[i] if i == j else 0"
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text.lstrip())
    return str(path)


def _regions(out: str) -> list:
    """The lines between the regions header and "Cost:"."""
    lines = out.splitlines()
    start = next(k for k, line in enumerate(lines) if "region" in line.lower() and line.endswith(":"))
    end = lines.index("Cost:")
    return lines[start + 1:end]


# -- explain -----------------------------------------------------------------

def test_explain_coo_differentiates_the_summand_and_keeps_the_condition(tmp_path):
    spec = _write(tmp_path, "coo.yaml", COO)
    proc = run_cli("explain", spec)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    assert "Where(" not in out and "Derivative(" not in out and "_diff_wrt" not in out
    assert not re.search(r"∂/∂\S+\(", out), "an unevaluated derivative"
    # the summand's derivative with respect to the read, the condition kept
    block = [line for line in _regions(out) if line.strip()]
    k = next(n for n, line in enumerate(block) if "∂/∂vals[k] =" in line)
    piece = "\n".join(block[k - 2:k + 3])
    assert "1" in piece and "rows[k]" in piece and "cols[k]" in piece and "otherwise" in piece, piece
    assert "∂/∂rows[k] = 0" in out and "read only in a condition" in out
    # integer draws meet the indices: the instance is not an all-zero matrix
    assert "3 of them used" in out or re.search(r"[1-9]\d* of them used", out), out
    assert "parametrisation:" in out
    proc = run_cli("explain", spec, "--latex")
    assert proc.returncode == 0 and "\\begin{cases}" in proc.stdout, proc.stderr


def test_explain_with_a_size_named_p(tmp_path):
    out = explain(_write(tmp_path, "p.yaml", SIZE_P))
    assert "size: (p + q) × (p + q)" in out
    assert "fields: a [p + q], s (scalar)" in out
    assert not re.search(r"\bp = \d", out), "the field-element count must not be written p"
    assert re.search(r"\d+ field elements, \d+ of them used, \d+ entries, rank J = \d+", out), out
    assert "O(p)" not in out and "#θ" in out
    # one non-zero region; the rest is a structural zero, and said so
    assert "1 non-zero region; entries outside it are zero:" in out
    assert "partition" not in out
    # every line of a multi-line formula is indented under its region
    regions = _regions(out)
    assert len([line for line in regions if "─" in line]) >= 2         # fractions: multi-line
    assert all(line.startswith("  ") for line in regions if line.strip()), "\n".join(regions)
    k = next(n for n, line in enumerate(regions) if "Y[i, j] =" in line)
    assert regions[k - 1].strip().startswith("s⋅a[i]") and regions[k - 1].startswith(" " * 17)


EXP_SCALED = """name: ExpScaled
sizes: [m, n]
fields:
  t: []
  data: [m, n]
size: [m, n]
getindex: "exp(t) * data[i, j]"
"""


def test_explain_kinds_and_coverage_are_worded_truthfully(tmp_path):
    out = explain(_write(tmp_path, "e.yaml", EXP_DIAGONAL), instance=False)
    assert "no coupled field" in out and "coupled fields ;" not in out and "fields ;" not in out
    assert "1 non-zero region; entries outside it are zero:" in out
    out = explain(_write(tmp_path, "x.yaml", EXP_SCALED), instance=False)
    assert "coupled fields t;" in out
    assert "2 passes (one per coupled field element, plus one)" in out
    out = explain(os.path.join(ROOT, "specs", "scaled_matrix.yaml"), instance=False)
    assert "coupled fields scale;" in out       # bordered, and an outer product: the closed form serves
    assert "every entry is scale[α]·data[β], each pair of elements once" in out
    assert "one pass (a pullback, or a pushforward; project both) plus two passes over the fields" in out
    assert "passes (one per coupled field element" not in out
    out = explain(os.path.join(ROOT, "specs", "dense.yaml"), instance=False)
    assert "Regions (1; together they cover the matrix):" in out and "1. everywhere" in out


def test_explain_says_why_there_is_no_instance(tmp_path):
    proc = run_cli("explain", _write(tmp_path, "h.yaml", HUGE_CONSTANT))
    assert proc.returncode == 0, proc.stderr
    assert "No small random instance to show" in proc.stdout and "too large" in proc.stdout


def test_tutorial_describes_what_explain_prints():
    text = open(os.path.join(ROOT, "docs", "tutorial.md"), encoding="utf-8").read()
    spec = re.search(r"cat > arrowhead.yaml <<'EOF'\n(.*?)EOF", text, flags=re.S).group(1)
    out = explain(_write_tmp(spec), instance=False)
    assert "3 non-zero regions; entries outside them are zero:" in out
    assert "three non-zero regions" in text and "four regions" not in text


def _write_tmp(text):
    import tempfile

    folder = tempfile.mkdtemp(prefix="rulegen-test-")
    path = os.path.join(folder, "arrowhead.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


# -- verify --------------------------------------------------------------------

def _build(tmp_path, *specs):
    out = tmp_path / "out"
    proc = run_cli("build", *specs, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return str(out)


def test_verify_coo_compares_non_zero_values(tmp_path):
    spec = _write(tmp_path, "coo.yaml", COO)
    out = _build(tmp_path, spec)
    proc = run_cli("verify", spec, "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = verify_module(load(spec), os.path.join(out, "coo.py"))
    # integer draws put entries in the matrix: the comparisons saw values
    assert {"destructure_pushforward", "destructure_pullback", "matvec"} <= report.tested
    assert report.errors["destructure_pushforward"] > 0.0 and not report.problems


def test_verify_fails_when_only_zero_could_be_tested(tmp_path):
    specs = [_write(tmp_path, "never.yaml", COO_NEVER), _write(tmp_path, "const.yaml", CONSTANT_AT_DRAWS),
             _write(tmp_path, "nan.yaml", NOWHERE_FINITE)]
    out = _build(tmp_path, *specs)
    proc = run_cli("verify", *specs, "--out", out)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    err = proc.stderr
    assert "coo_never.py: error: destructure was zero at every one of the" in err
    assert "constant_at_draws.py: error: destructure_pushforward was zero wherever it was compared" in err
    assert "nowhere_finite.py: error: every one of the" in err and "non-finite values" in err
    assert "3 of 3 modules failed" in err
    for name in ("CooNever", "ConstantAtDraws", "NowhereFinite"):
        assert f"{name} (" in proc.stdout and "): FAIL" in proc.stdout


def test_verify_skips_non_finite_draws_and_reports_a_raising_map(tmp_path):
    specs = [_write(tmp_path, "cauchy.yaml", CAUCHY)]
    out = _build(tmp_path, *specs)
    report = verify_module(load(specs[0]), os.path.join(out, "cauchy.py"))
    assert not report.failures() and not report.problems, (report.errors, report.problems)
    assert any("draws skipped" in note for note in report.notes)      # integer draws: x[i] == y[j]
    # a map that raises fails, named, without a traceback
    path = os.path.join(out, "cauchy.py")
    text = open(path, encoding="utf-8").read()
    head = re.search(r"\ndef project\(x, ybar\):\n(    \"\"\"(?:.|\n)*?\"\"\"\n)?", text)
    assert head, "project not found"
    text = text[:head.end()] + "    raise ZeroDivisionError('float division by zero')\n" + text[head.end():]
    open(path, "w", encoding="utf-8").write(text)
    proc = run_cli("verify", specs[0], "--out", out)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "error: project raised ZeroDivisionError: float division by zero (fields" in proc.stderr
    assert "project fails its check" in proc.stderr
    assert "destructure_pushforward fails" not in proc.stderr


def test_verify_vandermonde_passes_with_zeros_drawn(tmp_path):
    """x[i] ** j at x = 0 (the zeros and integer draws): the derivative j·x^(j-1)."""
    spec = _write(tmp_path, "vandermonde.yaml", VANDERMONDE)
    out = _build(tmp_path, spec)
    proc = run_cli("verify", spec, "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verified 1 module" in proc.stdout


# -- integer fields (issue #16) ---------------------------------------------------

INT_COO = """
name: IntCoo
sizes: [m, n, nnz]
fields:
  vals: [nnz]
  rows: {shape: [nnz], dtype: int}
  cols: {shape: [nnz], dtype: int}
size: [m, n]
getindex: sum(vals[k] for k in range(nnz) if rows[k] == i and cols[k] == j)
"""

INT_CSR = """
name: IntCsr
sizes: [m, n, nnz]
fields:
  vals: [nnz]
  indptr: {shape: [m + 1], dtype: int}
  cols: {shape: [nnz], dtype: int}
size: [m, n]
getindex: sum(vals[k] for k in range(indptr[i], indptr[i + 1]) if cols[k] == j)
"""

INT_PERMUTATION = """
name: IntPermutation
sizes: [n]
fields:
  d: [n]
  perm: {shape: [n], dtype: int}
size: [n, n]
getindex: d[i] if j == perm[i] else 0
"""

INT_BLOCK_DIAGONAL = """
name: IntBlockDiagonal
sizes: [n, nb, bs]
fields:
  blocks: [nb, bs, bs]
  offsets: {shape: [nb + 1], dtype: int}
size: [n, n]
getindex: >
  sum(blocks[b, i - offsets[b], j - offsets[b]] for b in range(nb)
      if offsets[b] <= i < offsets[b + 1] and offsets[b] <= j < offsets[b + 1])
"""

INT_PERM_DIAG = """
name: IntPermDiag
sizes: [n]
fields:
  d: [n]
  perm: {shape: [n], dtype: int}
size: [n, n]
getindex: d[perm[i]] if i == j else 0
"""

INT_SPECS = {"int_coo": INT_COO, "int_csr": INT_CSR, "int_permutation": INT_PERMUTATION,
             "int_block_diagonal": INT_BLOCK_DIAGONAL, "int_perm_diag": INT_PERM_DIAG}


def _field_lines(out: str) -> tuple:
    lines = out.splitlines()
    fields = next(line for line in lines if line.startswith("  fields: "))
    ints = next(line for line in lines if line.startswith("  integer fields "))
    return fields, ints


def test_explain_integer_fields_are_structure_with_their_checks(tmp_path):
    outs = {name: explain(_write(tmp_path, name + ".yaml", text), instance=False)
            for name, text in INT_SPECS.items()}
    for name, out in outs.items():
        # integer reads print as subscripts, never as calls or "Not supported" code
        assert "Not supported" not in out and not re.search(r"\b(rows|cols|indptr|perm|offsets)\(", out), out
    coo = outs["int_coo"]
    fields, ints = _field_lines(coo)
    assert fields == "  fields: vals [nnz]"
    assert "not parameters" in ints and "rows [nnz], cols [nnz]" in ints
    assert "    rows: every value in [0, m) (it is compared with i, a row index)" in coo
    assert "    cols: every value in [0, n) (it is compared with j, a column index)" in coo
    # the swapped nest: a loop over the stored elements, the indices read from them
    nest = "\n".join(_regions(coo))
    assert "for k in range(0, nnz)\n         i = rows[k]\n         j = cols[k]" in nest, nest
    assert "Y[i, j] += vals[k]" in nest and "writes accumulate" in nest and "swapped into the nest" in nest
    assert "∂/∂vals[k] = 1" in nest and "∂/∂rows" not in nest
    assert "How J⁺ is applied: scatter:" in coo and "J Jᵀ = diag(u)" in coo and "J⁺ = Jᵀ diag(1/u)" in coo
    assert "(the weights are cached per size)" not in coo
    csr = outs["int_csr"]
    assert "    indptr: every value in [0, nnz + 1) (it bounds the range of k, which subscripts vals)" in csr
    assert "    indptr: non-decreasing" in csr
    assert "for i in range(0, m)\n         for k in range(indptr[i], indptr[i + 1])\n           j = cols[k]" \
        in "\n".join(_regions(csr))
    assert "How J⁺ is applied: scatter:" in csr
    perm = outs["int_permutation"]
    assert "    perm: every value in [0, n) (it is compared with j, a column index)" in perm
    assert "j = perm[i]" in perm and "Y[i, j] = d[i]" in perm and "+=" not in perm
    assert "How J⁺ is applied: gather:" in perm
    block = outs["int_block_diagonal"]
    assert _field_lines(block)[0] == "  fields: blocks [nb, bs, bs]"
    assert "    offsets: every value in [0, n + 1)" in block and "    offsets: non-decreasing" in block
    assert "for b in range(0, nb)" in block and "Y[i, j] += blocks[b, i - offsets[b], j - offsets[b]]" in block
    assert "∂/∂blocks[b, i - offsets[b], j - offsets[b]] = 1" in block
    assert "    perm: every value in [0, n) (it subscripts d along axis 0)" in outs["int_perm_diag"]
    assert "Y[i, j] = d[perm[i]]" in outs["int_perm_diag"]


def test_explain_integer_fields_instance_and_latex(tmp_path):
    spec = _write(tmp_path, "int_coo.yaml", INT_COO)
    proc = run_cli("explain", spec)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    line = next(line for line in out.splitlines() if line.startswith("At a random instance"))
    assert "integer fields rows=[" in line and "cols=[" in line, line
    # J is over vals only, and the drawn pattern stores something
    m = re.search(r"(\d+) field elements?, (\d+) of them used", out)
    nnz = int(re.search(r"nnz=(\d+)", line).group(1))
    assert int(m.group(1)) == nnz and int(m.group(2)) >= 1, out
    assert "parametrisation:" in out
    proc = run_cli("explain", _write(tmp_path, "int_perm_diag.yaml", INT_PERM_DIAG), "--latex")
    assert proc.returncode == 0, proc.stderr
    assert "{d}_{{perm}_{i}}" in proc.stdout and "perm(i)" not in proc.stdout


def test_verify_draws_integer_fields_within_their_checks():
    import numpy as np
    from rulegen.spec import parse_spec
    from rulegen.verify import _bounds, draw_ints, int_plan

    rng = np.random.default_rng(1)
    coo = parse_spec(INT_COO.lstrip())
    plan = int_plan(coo)
    assert [(p.name, p.monotone) for p in plan] == [("rows", False), ("cols", False)]
    sizes = {"m": 3, "n": 2, "nnz": 5}
    shapes = {"vals": (5,), "rows": (5,), "cols": (5,)}
    repeated = 0
    for _ in range(40):
        ints = draw_ints(plan, rng, sizes, shapes, _bounds(coo, sizes, shapes))
        assert ints["rows"].dtype == np.int64 and ints["rows"].shape == (5,)
        assert ints["rows"].min() >= 0 and ints["rows"].max() < 3
        assert ints["cols"].min() >= 0 and ints["cols"].max() < 2
        repeated += len(set(zip(ints["rows"], ints["cols"]))) < 5
    assert repeated >= 10           # positions stored twice
    csr = parse_spec(INT_CSR.lstrip())
    plan = int_plan(csr)
    assert [(p.name, p.monotone) for p in plan] == [("indptr", True), ("cols", False)]
    sizes = {"m": 4, "n": 3, "nnz": 6}
    shapes = {"vals": (6,), "indptr": (5,), "cols": (6,)}
    full = 0
    for _ in range(40):
        ints = draw_ints(plan, rng, sizes, shapes, _bounds(csr, sizes, shapes))
        assert np.all(np.diff(ints["indptr"]) >= 0) and ints["indptr"].min() >= 0 and ints["indptr"].max() <= 6
        assert ints["cols"].min() >= 0 and ints["cols"].max() < 3
        full += ints["indptr"][0] == 0 and ints["indptr"][-1] == 6
    assert full >= 10               # a CSR indptr from 0 to nnz


def test_verify_modules_with_integer_fields(tmp_path):
    specs = [_write(tmp_path, name + ".yaml", text) for name, text in INT_SPECS.items()]
    out = _build(tmp_path, *specs)
    proc = run_cli("verify", *specs, "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verified 5 modules" in proc.stdout
    report = verify_module(load(specs[0]), os.path.join(out, "int_coo.py"))
    assert not report.problems and not report.failures(), (report.problems, report.errors)
    # a non-zero matrix: the comparisons saw values, J⁺ included
    assert {"destructure_pushforward", "destructure_pullback", "restructure_pushforward", "project",
            "matvec", "diagonal"} <= report.tested
    # a scatter module that forgets that a position may be stored twice (u = 1
    # wherever something is stored) is caught: the draws repeat positions
    path = os.path.join(out, "int_coo.py")
    text = open(path, encoding="utf-8").read()
    old = "    return _rt.inverse_weights((u,), dtype)[0]"
    assert old in text
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "int_coo.py").write_text(text.replace(old, old.replace("(u,)", "(np.minimum(u, 1.0),)")))
    report = verify_module(load(specs[0]), str(broken / "int_coo.py"))
    assert "restructure_pushforward" in report.failures(), report.errors


def test_verify_an_imaginary_constant_with_real_fields(tmp_path):
    """The dense matrices are complex although the fields are real: verify
    compares them as complex numbers (it used to drop the imaginary part
    and report restructure_pushforward and project wrong)."""
    spec = tmp_path / "idiag.yaml"
    spec.write_text("name: IDiag\nsizes: [n]\nfields:\n  d: [n]\nsize: [n, n]\n"
                    "getindex: (1 + 1j) * d[i] if i == j else 0\n")
    out = tmp_path / "out"
    assert run_cli("build", str(spec), "--out", str(out)).returncode == 0
    proc = run_cli("verify", str(spec), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "IDiag" in proc.stdout and "ok" in proc.stdout
