"""Diagnostics: ``FILE:LINE:COL: error: message``, the source line and a caret.

Stages collect diagnostics and raise one :class:`SpecError` holding all of
them; only the CLI turns that into output and an exit code.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pos:
    """A place in a spec file: 1-based line and column, and the line's text."""

    path: str
    line: int
    col: int
    source: str = ""

    def shifted(self, dcol: int, dline: int = 0, source: str | None = None) -> "Pos":
        return Pos(self.path, self.line + dline, self.col + dcol,
                   self.source if source is None else source)


@dataclass(frozen=True)
class Diagnostic:
    pos: Pos
    message: str
    width: int = 1
    hint: str | None = None

    def format(self, color: bool = False) -> str:
        red, bold, green, reset = ("\x1b[31m", "\x1b[1m", "\x1b[32m", "\x1b[0m") if color else ("",) * 4
        p = self.pos
        head = f"{bold}{p.path}:{p.line}:{p.col}:{reset} {red}{bold}error:{reset} {self.message}"
        lines = [head]
        if p.source:
            src = p.source.rstrip("\n").expandtabs(1)
            lines.append("    " + src)
            col = max(1, min(p.col, len(src) + 1))
            width = max(1, min(self.width, len(src) - col + 1))
            lines.append("    " + " " * (col - 1) + green + "^" + "~" * (width - 1) + reset)
        if self.hint:
            lines.append(f"    hint: {self.hint}")
        return "\n".join(lines)


@dataclass
class SpecError(Exception):
    """One or more diagnostics about bad input; raised once per stage."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(d.format() for d in self.diagnostics)


class Collector:
    """Accumulates diagnostics; ``raise_if_any`` raises them together."""

    def __init__(self) -> None:
        self.diagnostics: list[Diagnostic] = []

    def error(self, pos: Pos, message: str, width: int = 1, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(pos, message, width, hint))

    def raise_if_any(self) -> None:
        if self.diagnostics:
            raise SpecError(list(self.diagnostics))


def did_you_mean(name: str, candidates) -> str | None:
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def refuse_complex(owner: str, ordering: str, fields: dict, is_complex) -> None:
    """Run-time check of a generated constructor: a type whose getindex orders
    field values (``ordering``: the first such comparison, as text) takes real
    fields only; a complex one is a TypeError naming it."""
    for name, value in fields.items():
        if is_complex(value):
            raise TypeError(f"{owner}: field '{name}' is complex, but getindex orders field values "
                            f"({ordering}) and complex numbers are not ordered; give real fields")
