"""YAML text -> :class:`Spec`.

The YAML is *composed* (parsed into nodes with positions) with PyYAML's safe
loader and never constructed into Python objects, so tags cannot create
objects; duplicate keys are refused. Every expression is translated by
:mod:`rulegen.expr`, which never evaluates user text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import sympy as sp
import yaml

from . import expr as ex
from .errors import Collector, Pos, SpecError, did_you_mean

MAX_SPEC_BYTES = 256 * 1024
KEYS = ("name", "doc", "sizes", "fields", "size", "getindex")
_STR_TAG = "tag:yaml.org,2002:str"
_SCALAR_TAGS = {_STR_TAG, "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}


@dataclass(frozen=True)
class Field:
    name: str
    shape: tuple          # sympy integer expressions of the sizes
    pos: Pos
    integer: bool = False   # an integer field (``dtype: int``): structure, never differentiated

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class Spec:
    """A parsed, validated spec: everything downstream needs, nothing more."""

    path: str              # the file name as given
    name: str              # CamelCase class name
    module: str            # snake_case module name
    doc: str
    sizes: tuple           # sympy Symbols, in declaration order
    fields: tuple          # Field, in declaration order
    size: tuple            # (rows, cols) sympy expressions
    entry: sp.Expr         # getindex as a sympy expression in I, J
    entry_text: str
    sha256: str
    entry_pos: Pos | None = None   # where the getindex text starts (for diagnostics)

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)


def snake_case(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return s.lower()


class _Reader:
    def __init__(self, path: str, text: str):
        self.path = path
        self.lines = text.splitlines()
        self.errors = Collector()

    def pos(self, mark) -> Pos:
        line = mark.line
        src = self.lines[line] if 0 <= line < len(self.lines) else ""
        return Pos(self.path, line + 1, mark.column + 1, src)

    def value_pos(self, node) -> Pos:
        """Where the text of a scalar starts (inside quotes, or on the first line of a block)."""
        p = self.pos(node.start_mark)
        if node.style in ('"', "'"):
            return p.shifted(1)
        if node.style in ("|", ">"):
            line = node.start_mark.line + 1
            src = self.lines[line] if line < len(self.lines) else ""
            return Pos(self.path, line + 1, len(src) - len(src.lstrip()) + 1, src)
        return p

    def err(self, node, message, hint=None):
        width = 1
        if node is not None and node.start_mark.line == node.end_mark.line:
            width = max(1, node.end_mark.column - node.start_mark.column)
        self.errors.error(self.pos(node.start_mark) if node is not None else Pos(self.path, 1, 1),
                          message, width, hint)

    def scalar(self, node, what):
        if not isinstance(node, yaml.ScalarNode) or node.tag not in _SCALAR_TAGS:
            kind = {yaml.MappingNode: "a mapping", yaml.SequenceNode: "a list"}.get(type(node), f"tag {node.tag}")
            self.err(node, f"{what} must be a single value, not {kind}")
            return None
        return node.value

    def string(self, node, what):
        if not isinstance(node, yaml.ScalarNode) or node.tag != _STR_TAG:
            self.err(node, f"{what} must be a string")
            return None
        return node.value

    def mapping(self, node, what):
        if not isinstance(node, yaml.MappingNode):
            self.err(node, f"{what} must be a mapping")
            return None
        out = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, f"a key of {what}")
            if key is None:
                continue
            if key in out:
                self.err(key_node, f"duplicate key '{key}' in {what}")
                continue
            out[key] = (key_node, value_node)
        return out

    def sequence(self, node, what):
        if not isinstance(node, yaml.SequenceNode):
            self.err(node, f"{what} must be a list, like [n, n]")
            return None
        return list(node.value)

    def expression(self, node, scope, what):
        text = self.scalar(node, what)
        if text is None:
            return None
        if node.tag != _STR_TAG:
            text = node.value
        return ex.parse(text, self.value_pos(node), scope, self.errors, what, self.locator(node, text))

    def locator(self, node, text: str):
        """Offset in the scalar's text -> its place in the file. YAML removed
        quotes, indentation and (folded, plain and quoted scalars) line breaks:
        each character of the text is matched, in order, with the next equal
        character of the source, any run of whitespace with any other."""
        start = self.value_pos(node)
        places = []                      # (line index, column index) per text character
        line, col = start.line - 1, start.col - 1
        end_line = min(node.end_mark.line, len(self.lines) - 1)

        def source_char():
            return self.lines[line][col] if line < len(self.lines) and col < len(self.lines[line]) else "\n"

        for ch in text:
            while line <= end_line:
                here = source_char()
                if here == ch or (ch.isspace() and here.isspace()):
                    break
                col += 1
                if line >= len(self.lines) or col > len(self.lines[line]):
                    line, col = line + 1, 0
            if line > end_line:
                break
            places.append((line, col))
            if ch != "\n":
                col += 1

        def locate(offset: int) -> Pos:
            if not places:
                return start
            ln, cl = places[min(offset, len(places) - 1)]
            if offset >= len(places):
                cl += offset - len(places) + 1
            return Pos(self.path, ln + 1, cl + 1, self.lines[ln] if ln < len(self.lines) else "")
        return locate


def read_text(path: str) -> tuple[bytes, str]:
    """Read a spec file's bytes and text, refusing binary or non-UTF-8 files."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError([_file_error(path, f"cannot read spec: {exc.strerror or exc}")]) from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError([_file_error(path, f"spec is larger than {MAX_SPEC_BYTES} bytes")])
    if b"\x00" in data:
        raise SpecError([_file_error(path, "spec is a binary file (contains NUL bytes)")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        from .errors import Diagnostic
        raise SpecError([Diagnostic(Pos(path, line, col), "spec is not valid UTF-8")]) from None
    return data, text


def _file_error(path, message):
    from .errors import Diagnostic
    return Diagnostic(Pos(path, 1, 1), message)


def load(path: str) -> Spec:
    data, text = read_text(path)
    return parse_spec(text, path, hashlib.sha256(data).hexdigest())


def parse_spec(text: str, path: str = "<spec>", sha256: str | None = None) -> Spec:
    """Parse and validate one spec; raise :class:`SpecError` with every problem found."""
    if sha256 is None:
        sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    r = _Reader(path, text)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        p = r.pos(mark) if mark is not None else Pos(path, 1, 1)
        r.errors.error(p, f"invalid YAML: {exc.problem or exc.context}")
        r.errors.raise_if_any()
    except (yaml.YAMLError, RecursionError) as exc:
        r.errors.error(Pos(path, 1, 1), f"invalid YAML: {type(exc).__name__}")
        r.errors.raise_if_any()
    if root is None:
        r.errors.error(Pos(path, 1, 1), "spec is empty")
        r.errors.raise_if_any()
    top = r.mapping(root, "the spec")
    r.errors.raise_if_any()

    for key, (key_node, _) in top.items():
        if key not in KEYS:
            r.err(key_node, f"unknown key '{key}'", did_you_mean(key, KEYS))
    for key in ("name", "fields", "size", "getindex"):
        if key not in top:
            r.errors.error(Pos(path, 1, 1, r.lines[0] if r.lines else ""), f"missing required key '{key}'")
    r.errors.raise_if_any()

    # name
    name_node = top["name"][1]
    name = r.string(name_node, "name")
    if name is not None and not re.fullmatch(r"[A-Z][A-Za-z0-9]*", name):
        r.err(name_node, f"name '{name}' must be a CamelCase identifier (like SymTridiagonal)")
    elif name is not None and ex.check_identifier(name):
        r.err(name_node, f"bad name: {ex.check_identifier(name)}")

    doc = ""
    if "doc" in top:
        doc = r.string(top["doc"][1], "doc") or ""

    # sizes
    sizes: dict[str, sp.Symbol] = {}
    if "sizes" in top:
        for node in r.sequence(top["sizes"][1], "sizes") or []:
            s = r.string(node, "a size name")
            if s is None:
                continue
            why = ex.check_identifier(s)
            if why:
                r.err(node, f"bad size name: {why}")
            elif s in sizes:
                r.err(node, f"size '{s}' declared twice")
            else:
                sizes[s] = ex.size_symbol(s)
    shape_scope = ex.Scope(sizes=sizes, fields={}, indices=False)

    # fields
    fields: list[Field] = []
    fmap = r.mapping(top["fields"][1], "fields") or {}
    for fname, (key_node, value_node) in fmap.items():
        why = ex.check_identifier(fname)
        if why:
            r.err(key_node, f"bad field name: {why}")
            continue
        if fname in sizes:
            r.err(key_node, f"field '{fname}' has the same name as a size")
            continue
        if fname == name:
            r.err(key_node, f"field '{fname}' has the same name as the type")
            continue
        integer = False
        if isinstance(value_node, yaml.MappingNode):
            # the long form: {shape: [...], dtype: int | real}
            spec_map = r.mapping(value_node, f"field '{fname}'")
            if spec_map is None:
                continue
            for key, (knode, _) in spec_map.items():
                if key not in ("shape", "dtype"):
                    r.err(knode, f"unknown key '{key}' in field '{fname}' (it takes shape and dtype)",
                          did_you_mean(key, ("shape", "dtype")))
            if "shape" not in spec_map:
                r.err(value_node, f"field '{fname}' needs a shape: {{shape: [...], dtype: int}}")
                continue
            if "dtype" in spec_map:
                dnode = spec_map["dtype"][1]
                dtype = r.string(dnode, f"the dtype of field '{fname}'")
                if dtype not in ("int", "real", None):
                    r.err(dnode, f"the dtype of field '{fname}' must be int or real, got '{dtype}'",
                          did_you_mean(dtype, ("int", "real")))
                integer = dtype == "int"
            value_node = spec_map["shape"][1]
        dims = r.sequence(value_node, f"the shape of field '{fname}'")
        if dims is None:
            continue
        shape = []
        for d in dims:
            e = r.expression(d, shape_scope, f"a dimension of field '{fname}'")
            if e is not None and not ex.is_int(e):
                r.err(d, f"a dimension of field '{fname}' must be an integer expression of the sizes")
                e = None
            elif e is not None and e.is_negative:
                r.err(d, f"a dimension of field '{fname}' is negative ({e}) for every value of the sizes")
                e = None
            shape.append(e)
        if all(e is not None for e in shape):
            fields.append(Field(fname, tuple(shape), r.pos(key_node.start_mark), integer))

    # size
    size_nodes = r.sequence(top["size"][1], "size")
    size: list = []
    if size_nodes is not None:
        if len(size_nodes) != 2:
            r.err(top["size"][1], f"size must have two entries (rows, columns), got {len(size_nodes)}")
        else:
            for d in size_nodes:
                e = r.expression(d, shape_scope, "a dimension of size")
                if e is not None and not ex.is_int(e):
                    r.err(d, "a dimension of size must be an integer expression of the sizes")
                    e = None
                elif e is not None and e.is_negative:
                    r.err(d, f"a dimension of size is negative ({e}) for every value of the sizes")
                    e = None
                size.append(e)

    # getindex
    entry = None
    gnode = top["getindex"][1]
    entry_text = r.scalar(gnode, "getindex")
    if entry_text is not None and not r.errors.diagnostics:
        scope = ex.Scope(sizes=sizes, fields={f.name: f.ndim for f in fields}, indices=True,
                         int_fields=frozenset(f.name for f in fields if f.integer))
        entry = r.expression(gnode, scope, "getindex")

    r.errors.raise_if_any()
    return Spec(
        path=path, name=name, module=snake_case(name), doc=doc.strip(),
        sizes=tuple(sizes.values()), fields=tuple(fields), size=tuple(size),
        entry=entry, entry_text=entry_text.strip(), sha256=sha256, entry_pos=r.value_pos(gnode),
    )
