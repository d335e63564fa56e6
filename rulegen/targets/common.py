"""What every target's emitter shares: how the class finds its sizes, text
made safe for docstrings and comments, shapes as code, the templates."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass

import jinja2
import sympy as sp

from ..printer import code


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


def shape_code(shape) -> str:
    items = [code(d) for d in shape]
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def shape_text(shape) -> str:
    items = [str(d) for d in shape]
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def environment() -> jinja2.Environment:
    root = importlib.resources.files("rulegen.templates")
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: (root / name).read_text(encoding="utf-8")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
