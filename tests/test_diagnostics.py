"""Bad specs beside their expected diagnostics (tests/bad_specs/*.yaml, first
line ``# expect: LINE:COL: text|more text``), in the mypy style."""

import os
import re

import pytest

from helpers import ROOT, run_cli
from rulegen.cli import compile_all

BAD = os.path.join(os.path.dirname(__file__), "bad_specs")
FILES = sorted(f for f in os.listdir(BAD) if f.endswith(".yaml"))


def _expectation(path):
    with open(path, encoding="utf-8") as fh:
        first = fh.readline()
    m = re.match(r"# expect: (\d+):(\d+): (.*)", first)
    assert m, f"{path} lacks an '# expect:' line"
    return int(m.group(1)), int(m.group(2)), m.group(3).strip().split("|")


@pytest.mark.parametrize("name", FILES)
def test_bad_spec_diagnostic(name):
    path = os.path.join(BAD, name)
    line, col, texts = _expectation(path)
    built, failed = compile_all([path])
    assert not built and len(failed) == 1
    diags = failed[0][1].diagnostics
    d = diags[0]
    rendered = d.format()
    assert (d.pos.line, d.pos.col) == (line, col), rendered
    for text in texts:
        assert text in rendered, rendered
    assert rendered.startswith(f"{path}:{line}:{col}: error: ")


def test_cli_reports_every_bad_spec_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    paths = [os.path.join(BAD, f) for f in FILES] + [os.path.join(ROOT, "specs", "diagonal.yaml")]
    proc = run_cli("build", *paths, "--out", str(out))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"in {len(FILES)} specs" in proc.stderr
    assert not out.exists()
    assert not os.path.exists("/tmp/pwned")


def test_caret_points_at_the_name():
    path = os.path.join(BAD, "unknown_name.yaml")
    _, failed = compile_all([path])
    lines = failed[0][1].diagnostics[0].format().splitlines()
    source, caret = lines[1], lines[2]
    start = caret.index("^")
    assert source[start:start + 2] == "rw"
    assert caret.strip() == "^~"
