"""The worked examples run and check themselves (exit code 0)."""

import os
import subprocess
import sys

import pytest

from helpers import ROOT

EXAMPLES = sorted(f for f in os.listdir(os.path.join(ROOT, "examples")) if f.endswith(".py"))


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
