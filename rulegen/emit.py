"""Derivation -> module source, through the jinja2 templates.

This module decides *what* code to write (kernel statements, size inference,
argument lists) as plain data; ``templates/module.py.j2`` lays it out.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass

import jinja2
import sympy as sp

from . import __version__
from .derive import Derivation, Region
from .printer import code


@dataclass(frozen=True)
class Kernel:
    name: str
    params: tuple
    lines: tuple          # (indent, text)


@dataclass(frozen=True)
class SizeStep:
    size: str
    kind: str             # "solve" or "given"
    field: str = ""
    axis: int = 0
    coef: int = 1
    offset: str = "0"     # code for the part of the dimension that is not coef*size


def size_plan(spec) -> tuple:
    """How the class finds each size: solved from one field dimension
    ``coef*size + offset`` (offset in sizes known before), or given."""
    known: set = set()
    plan: list = []
    progress = True
    while progress:
        progress = False
        for simple in (True, False):
            for f in spec.fields:
                for axis, e in enumerate(f.shape):
                    unknown = [s for s in spec.sizes if e.has(s) and s.name not in known]
                    if len(unknown) != 1:
                        continue
                    s = unknown[0]
                    if simple and e != s:
                        continue
                    ex = sp.expand(e)
                    a = ex.coeff(s, 1)
                    rest = sp.expand(ex - a * s)
                    if not a.is_Integer or a == 0 or rest.has(s):
                        continue
                    plan.append(SizeStep(s.name, "solve", f.name, axis, int(a), code(rest)))
                    known.add(s.name)
                    progress = True
            if progress:
                break
    for s in spec.sizes:
        if s.name not in known:
            plan.append(SizeStep(s.name, "given"))
    return tuple(plan)


def doc_text(text: str) -> str:
    """User text made safe inside a triple-quoted docstring: no escapes, no
    closing quotes, no control characters."""
    text = "".join(ch if ch == "\n" or (ch.isprintable()) else " " for ch in text)
    return text.replace("\\", "\\\\").replace('"', '\\"')


def file_label(path: str) -> str:
    """The spec's file name as it may appear in a comment: a plain base name."""
    base = path.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "_" for ch in base)


def _mul(coef, operand: str) -> str:
    if coef == 1:
        return operand
    if coef == -1:
        return f"-{operand}"
    return f"({code(coef)}) * {operand}"


def _shape_code(shape) -> str:
    items = [code(d) for d in shape]
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def _shape_text(shape) -> str:
    items = [str(d) for d in shape]
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


class _Body:
    """Builds the statements of one kernel."""

    def __init__(self, spec):
        self.spec = spec
        self.lines: list = []

    def add(self, indent, text):
        self.lines.append((indent, text))

    def open_nest(self, steps) -> int:
        depth = 1
        for step in steps:
            if step[0] == "for":
                _, v, lo, hi = step
                self.add(depth, f"for {v.name} in range({code(lo)}, {code(hi)}):")
                depth += 1
            elif step[0] == "let":
                self.add(depth, f"{step[1].name} = {code(step[2])}")
            else:
                self.add(depth, f"if {code(step[1])}:")
                depth += 1
        return depth

    def index(self, depth, load, array) -> str:
        """Statements computing the (checked, Python-wrapped) index of ``load``."""
        field = self.spec.field(load.field)
        if field.ndim == 0:
            return "0"
        names = []
        for d, e in enumerate(load.index):
            name = f"_a{load.symbol.name[2:]}_{d}"
            names.append(name)
            length = f"{array}.shape[{d}]"
            self.add(depth, f"{name} = {code(e)}")
            self.add(depth, f"if {name} < 0:")
            self.add(depth + 1, f"{name} += {length}")
            self.add(depth, f"if {name} < 0 or {name} >= {length}:")
            self.add(depth + 1, f'raise IndexError("{self.spec.name}: getindex reads '
                                f'{load.field} out of range")')
        return ", ".join(names)


def _kernels(d: Derivation) -> tuple:
    spec = d.spec
    sizes = tuple(s.name for s in spec.sizes)
    fields = tuple(f.name for f in spec.fields)

    dest = _Body(spec)
    push = _Body(spec)
    pull = _Body(spec)
    wts = _Body(spec)
    for r in d.regions:
        _destructure_region(dest, r)
        if r.terms:
            _linear_region(push, pull, wts, r)
    out = []
    for name, body, params in (
        ("_destructure_kernel", dest, sizes + fields + ("_out",)),
        ("_pushforward_kernel", push, sizes + tuple("_d_" + f for f in fields) + ("_out",)),
        ("_pullback_kernel", pull, sizes + ("_ybar",) + tuple("_g_" + f for f in fields)),
        ("_weights_kernel", wts, sizes + tuple("_w_" + f for f in fields)),
    ):
        lines = body.lines or [(1, "pass")]
        out.append(Kernel(name, params, tuple(lines)))
    return tuple(out)


def _destructure_region(body: _Body, r: Region):
    depth = body.open_nest(r.steps)
    for ld in r.loads:
        idx = body.index(depth, ld, ld.field)
        body.add(depth, f"{ld.symbol.name} = {ld.field}[{idx}]")
    body.add(depth, f"_out[i, j] = {code(r.value)}")


def _linear_region(push: _Body, pull: _Body, wts: _Body, r: Region):
    # pushforward: Ẏ[i, j] = Σ c · θ̇[idx]
    depth = push.open_nest(r.steps)
    parts = []
    for t in r.terms:
        idx = push.index(depth, t.load, "_d_" + t.load.field)
        parts.append(_mul(t.coef, f"_d_{t.load.field}[{idx}]"))
    push.add(depth, f"_out[i, j] = {' + '.join(parts)}")
    # pullback: the same loop, gather turned into scatter
    depth = pull.open_nest(r.steps)
    pull.add(depth, "_y = _ybar[i, j]")
    for t in r.terms:
        idx = pull.index(depth, t.load, "_g_" + t.load.field)
        pull.add(depth, f"_g_{t.load.field}[{idx}] += {_mul(t.coef, '_y')}")
    # Gram weights: the same scatter with c²
    depth = wts.open_nest(r.steps)
    for t in r.terms:
        idx = wts.index(depth, t.load, "_w_" + t.load.field)
        wts.add(depth, f"_w_{t.load.field}[{idx}] += {code(t.coef ** 2)}")


def _environment() -> jinja2.Environment:
    root = importlib.resources.files("rulegen.templates")
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: (root / name).read_text(encoding="utf-8")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def render(d: Derivation, spec_file: str) -> str:
    """The source of the generated module for ``d``."""
    if d.kind != "gather":
        raise NotImplementedError("only gather types are emitted so far")
    spec = d.spec
    size_names = ", ".join(s.name for s in spec.sizes)
    fields = [
        dict(name=f.name, ndim=f.ndim, shape_code=_shape_code(f.shape), shape_text=_shape_text(f.shape),
             kernel_shape_code=_shape_code(f.shape) if f.ndim else "(1,)")
        for f in spec.fields
    ]
    sizes_fmt = ", ".join(f"{s.name}={{{s.name}}}" for s in spec.sizes) or "no sizes"
    names = [f.name for f in spec.fields] + [f"{s.name}=None" for s in spec.sizes]
    context = dict(
        init_params=(", *, " + ", ".join(names)) if names else "",
        version=__version__,
        spec_file=file_label(spec_file),
        canonical_name=f"_rulegen_generated_{spec.module}_{spec.sha256[:16]}",
        sha256=spec.sha256,
        name=spec.name,
        doc=doc_text(spec.doc or f"Structured matrix type {spec.name}."),
        entry_text=doc_text(" ".join(spec.entry_text.split())),
        sizes=[s.name for s in spec.sizes],
        size_names=size_names,
        sizes_fmt=sizes_fmt,
        fields=fields,
        plan=size_plan(spec),
        rows_code=code(spec.size[0]),
        cols_code=code(spec.size[1]),
        shape_text=f"{spec.size[0]} × {spec.size[1]}",
        kernels=_kernels(d),
        kind=d.kind,
    )
    return _environment().get_template("module.py.j2").render(**context)
