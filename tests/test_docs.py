"""The tutorial's commands run as written (in a temporary folder)."""

import os
import re
import shlex
import subprocess
import sys

from helpers import ROOT


def test_tutorial_runs_as_written(tmp_path):
    text = open(os.path.join(ROOT, "docs", "tutorial.md"), encoding="utf-8").read()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 5
    script = "set -euo pipefail\n" + "\n".join(blocks)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # the rulegen command of this checkout, whatever is installed, and python3
    # as this interpreter: wrapper scripts, not symlinks (a symlink to a
    # virtualenv's python finds no pyvenv.cfg beside itself and leaves the venv)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = shlex.quote(sys.executable)
    for name, command in (("rulegen", f"{python} -m rulegen.cli"), ("python3", python)):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    probe = subprocess.run(["python3", "-c", "import sys; print(sys.prefix)"], env=env, capture_output=True,
                           text=True, check=True)
    assert probe.stdout.strip() == sys.prefix, "python3 on the tutorial's PATH is another environment"
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "parametrisation: under" in proc.stdout
    assert "verified 1 module" in proc.stdout
    assert "∂f/∂d =" in proc.stdout
    assert "1 module up to date" in proc.stdout
