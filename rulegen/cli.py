"""``rulegen build`` and ``rulegen check``: the only place that prints and exits."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass

import click

from . import __version__
from .derive import derive
from .errors import Diagnostic, Pos, SpecError
from .printer import TooLarge
from .spec import load


@dataclass(frozen=True)
class Built:
    spec_path: str
    module: str          # file name inside the output folder
    source: str


def compile_spec(path: str) -> Built:
    """One spec file -> generated module source (raises SpecError)."""
    from .emit import render

    spec = load(path)
    derivation = derive(spec)
    try:
        source = render(derivation, path)
    except TooLarge as exc:
        raise SpecError([Diagnostic(spec.entry_pos or Pos(path, 1, 1), f"getindex: {exc}")]) from None
    return Built(path, spec.module + ".py", source)


def compile_all(paths, progress: bool = False) -> tuple[list[Built], list[tuple[str, SpecError]]]:
    built, failed = [], []
    seen: dict[str, str] = {}
    items = paths
    bar = None
    if progress and len(paths) > 1:
        bar = click.progressbar(paths, label="building", file=sys.stderr,
                                item_show_func=lambda p: os.path.basename(p) if p else "")
        items = bar.__enter__()
    try:
        for path in items:
            _compile_one(path, built, failed, seen)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    return built, failed


def _compile_one(path, built, failed, seen) -> None:
    try:
        b = compile_spec(path)
    except SpecError as exc:
        failed.append((path, exc))
        return
    if b.module in seen:
        failed.append((path, SpecError([Diagnostic(
            Pos(path, 1, 1), f"module {b.module} is also built from {seen[b.module]}")])))
        return
    seen[b.module] = path
    built.append(b)


def _report(failed, color: bool) -> None:
    n_errors = 0
    for _, exc in failed:
        for d in exc.diagnostics:
            click.echo(d.format(color=color), err=True)
            n_errors += 1
    click.echo(f"Found {n_errors} error{'s' if n_errors != 1 else ''} in {len(failed)} "
               f"spec{'s' if len(failed) != 1 else ''}", err=True)


def _write_atomic(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".rulegen-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rulegen")
def main():
    """Derive differentiation rules for structured matrix types from YAML specs."""


@main.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out", default="generated", show_default=True, type=click.Path(file_okay=False),
              help="Folder the generated modules are written to.")
def build(specs, out):
    """Build one module per SPEC into --out (all or nothing)."""
    color = sys.stderr.isatty()
    start = time.perf_counter()
    built, failed = compile_all(specs, progress=color)
    if failed:
        _report(failed, color)
        click.echo("nothing written", err=True)
        sys.exit(1)
    try:
        os.makedirs(out, exist_ok=True)
        for b in built:
            _write_atomic(os.path.join(out, b.module), b.source)
    except OSError as exc:
        click.echo(f"{out}: error: cannot write: {exc.strerror or exc}", err=True)
        sys.exit(1)
    elapsed = time.perf_counter() - start
    click.echo(f"built {len(built)} module{'s' if len(built) != 1 else ''} in {elapsed:.1f} s")


@main.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out", default="generated", show_default=True, type=click.Path(file_okay=False),
              help="Folder holding the generated modules.")
def check(specs, out):
    """Exit 0 when every module in --out is exactly what build would write now."""
    color = sys.stderr.isatty()
    built, failed = compile_all(specs)
    if failed:
        _report(failed, color)
        sys.exit(1)
    problems = []
    for b in built:
        target = os.path.join(out, b.module)
        try:
            with open(target, encoding="utf-8", newline="") as fh:
                current = fh.read()
        except FileNotFoundError:
            problems.append(f"{target}: missing (build it from {b.spec_path})")
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{target}: unreadable ({exc})")
            continue
        if current != b.source:
            problems.append(f"{target}: {_why_stale(current, b.source, b.spec_path)}")
    for p in problems:
        click.echo(p, err=True)
    if problems:
        click.echo(f"{len(problems)} of {len(built)} modules stale; run: rulegen build "
                   f"{' '.join(specs)} --out {out}", err=True)
        sys.exit(1)
    click.echo(f"{len(built)} module{'s' if len(built) != 1 else ''} up to date")


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--latex", is_flag=True, help="Print the formulas as LaTeX.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG: the sparsity of J and the entry -> field map of a small instance.")
def explain(spec, latex, plot):
    """Explain what was derived from SPEC: regions, derivatives, costs, class."""
    from .explain import explain as run

    try:
        text = run(spec, latex=latex, plot=plot)
    except SpecError as exc:
        _report([(spec, exc)], sys.stderr.isatty())
        sys.exit(1)
    except TooLarge as exc:
        click.echo(f"{spec}: error: getindex: {exc}", err=True)
        sys.exit(1)
    except ImportError as exc:
        click.echo(f"error: --plot needs matplotlib ({exc}); pip install -e '.[bench]'", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"{plot}: error: cannot write: {exc.strerror or exc}", err=True)
        sys.exit(1)
    click.echo(text)


@main.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out", default="generated", show_default=True, type=click.Path(file_okay=False),
              help="Folder holding the generated modules.")
@click.option("--trials", default=3, show_default=True, type=click.IntRange(1, 100),
              help="Random sizes and points per module.")
def verify(specs, out, trials):
    """Check the modules built from SPECS numerically, independently of the derivation.

    Dot-product tests, finite differences of destructure, the Penrose
    identities, project idempotent, the derived operations against
    destructure. Exit 1 naming each map that fails.
    """
    from .spec import load
    from .verify import DEFAULT_TOLERANCE, TOLERANCE, verify_module

    color = sys.stderr.isatty()
    specs_ok, failed = [], []
    for path in specs:
        try:
            specs_ok.append((path, load(path)))
        except SpecError as exc:
            failed.append((path, exc))
    if failed:
        _report(failed, color)
        sys.exit(1)
    bad = 0
    for path, spec in specs_ok:
        target = os.path.join(out, spec.module + ".py")
        if not os.path.exists(target):
            click.echo(f"{target}: missing (build it from {path})", err=True)
            bad += 1
            continue
        report = verify_module(spec, target, trials=trials)
        for problem in report.problems:
            click.echo(f"{target}: error: {problem}", err=True)
        failures = report.failures()
        status = "FAIL" if failures or report.problems else "ok"
        click.echo(f"{spec.name} ({target}): {status}")
        for name, err in report.errors.items():
            mark = "  <- fails" if name in failures else ""
            click.echo(f"  {name:26s} worst relative error {err:.1e} "
                       f"(tolerance {TOLERANCE.get(name, DEFAULT_TOLERANCE):.0e}){mark}")
        if failures or report.problems:
            bad += 1
            for name in failures:
                click.echo(f"{target}: error: {name} fails its check "
                           f"(relative error {report.errors[name]:.1e})", err=True)
    if bad:
        click.echo(f"{bad} of {len(specs_ok)} module{'s' if len(specs_ok) != 1 else ''} failed", err=True)
        sys.exit(1)
    click.echo(f"verified {len(specs_ok)} module{'s' if len(specs_ok) != 1 else ''}")


def _header(text: str, key: str) -> str | None:
    for line in text.splitlines()[:8]:
        if line.startswith(f"# {key}: "):
            return line.split(": ", 1)[1]
    return None


def _why_stale(current: str, fresh: str, spec_path: str) -> str:
    if _header(current, "spec-sha256") != _header(fresh, "spec-sha256"):
        return f"stale: {spec_path} changed since it was built"
    if _header(current, "rulegen-version") != _header(fresh, "rulegen-version"):
        return f"stale: built by rulegen {_header(current, 'rulegen-version')}, this is {__version__}"
    return "differs from what rulegen builds now (edited by hand, or built by a different generator)"


if __name__ == "__main__":  # pragma: no cover
    main()
