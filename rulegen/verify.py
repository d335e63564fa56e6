"""``rulegen verify``: numerical checks of generated modules, independent of
the derivation that produced them.

At random sizes and random points, using nothing but the module's public
functions and finite differences of its ``destructure``:

* ``destructure_pushforward`` against central differences of ``destructure``
  (entries where ``destructure`` is not smooth at the point, a condition at
  its boundary or a kink, are left out of that comparison; where fields are
  read in conditions, a second direction moves only the other fields);
* ``destructure_pullback`` by the dot-product test ⟨Jθ̇, Ȳ⟩ = ⟨θ̇, JᵀȲ⟩;
* ``restructure_pushforward`` by the Penrose identities J J⁺ J = J and
  J⁺ J J⁺ = J⁺ (through the maps) and J⁺J symmetric;
* ``restructure_pullback`` as the adjoint of ``restructure_pushforward``;
* ``project`` = J J⁺, idempotent;
* ``matvec``, ``rmatvec``, ``bilinear_pullback``, ``diagonal`` and
  ``diagonal_pullback`` against ``destructure`` and ``destructure_pullback``.

Each trial draws its sizes, then the fields from every distribution in
:data:`DRAWS` (positive values only would never test a sign, an exact zero,
or a condition comparing a field with an index). A draw at which
``destructure``, the pushforward or the pullback is not finite (``1/0``,
``log`` of a negative) is skipped. Each map gets its worst relative error;
one over the tolerance fails the module, naming the map. A map that raises
fails. So does a run that tested nothing: every draw non-finite, the matrix
zero at every draw, or the pushforward zero wherever it was compared.

Integer fields (``rows: {shape: [nnz], dtype: int}``) are structure, not
parameters: J is over the real fields only, and each draw first draws the
integer fields (:func:`draw_pattern`) within what the constructor checks
(``rulegen.pattern.bounds``: values in the ranges that their uses imply;
``rulegen.derive.monotone_fields``: sorted), with repeated values and
repeated positions (a COO element stored twice) where the shapes allow, and
keeps a pattern at which ``destructure`` runs (a pattern may still be refused
by the kernels' own index checks: block sizes larger than their storage) and,
if one is found, is not all zero. A constructor that refuses such values fails
the module.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

TOLERANCE = {"destructure_pushforward": 1e-5}     # finite differences
DEFAULT_TOLERANCE = 1e-7

#: The distributions each trial draws the fields from, in order.
DRAWS = {
    "uniform": "uniform in [0.5, 1.5]",
    "normal": "signed standard normal",
    "zeros": "signed normal, about 40% exact zeros",
    "integers": "integers in [-2, {dmax}]",
    "indices": "integers in [0, {dmin}]",
    "mixed": "each field from one of the above",
}
_BASIC = ("uniform", "normal", "zeros", "integers", "indices")
#: Extra trials (at sizes from 2 on) when the planned ones tested nothing.
EXTRA_TRIALS = 4
#: Maps checked through J⁺: at a draw where one fails its tolerance and J is
#: this ill-conditioned on its range (an iterative solve loses accuracy
#: there), the draw's results for them are set aside instead.
PINV_MAPS = ("restructure_pushforward", "restructure_pullback", "project")
ILL_CONDITIONED = 1e3

FD_STEP = 1e-6
#: An entry counts as smooth at the point when its second difference
#: |f(θ+hθ̇) - 2f(θ) + f(θ-hθ̇)| is below this times (1 + |f| + |fd|): h²·f''
#: is far below it; a kink (h·Δslope) or a jump is far above it.
SMOOTH = 1e-11


def _as_nat(a) -> np.ndarray:
    """A natural-space array as numbers: complex where the module's dense
    matrices are (an imaginary constant in getindex), float otherwise."""
    a = np.asarray(a)
    return a.astype(complex) if a.dtype.kind == "c" else a.astype(float)


def _re_dot(a, b) -> float:
    """Re⟨a, b⟩: the real inner product of the natural space (ChainRules' pairing)."""
    return float(np.real(np.vdot(np.asarray(a), np.asarray(b))))


@dataclass
class Report:
    module: str
    errors: dict = field(default_factory=dict)       # map -> worst relative error
    problems: list = field(default_factory=list)     # messages that are not errors of a map
    notes: list = field(default_factory=list)        # what was skipped, for a person
    tested: set = field(default_factory=set)         # maps compared where a value was not zero
    raised: set = field(default_factory=set)         # maps that raised

    def record(self, name: str, got, want, scale=None) -> None:
        """Relative error of ``got`` against ``want``; ``scale`` (for a dot
        product: the size of its terms) replaces the norms as denominator."""
        got, want = np.ravel(_as_nat(got)), np.ravel(_as_nat(want))
        if got.shape != want.shape:
            self.errors[name] = float("inf")
            self.problems.append(f"{name}: {got.size} numbers where {want.size} were expected")
            return
        if scale is None:
            scale = max(np.linalg.norm(want), np.linalg.norm(got))
        scale = max(float(scale), 1e-300)
        err = float(np.linalg.norm(got - want) / scale) if got.size else 0.0
        if not np.isfinite(err):
            err = float("inf")
        self.errors[name] = max(self.errors.get(name, 0.0), err)
        if np.any(got != 0) or np.any(want != 0):
            self.tested.add(name)

    def fail_raised(self, name: str, exc: BaseException, where: str) -> None:
        self.errors[name] = float("inf")
        if name not in self.raised:
            self.raised.add(name)
            text = str(exc).strip().splitlines()
            self.problems.append(f"{name} raised {type(exc).__name__}"
                                 + (f": {text[0]}" if text else "") + f" (fields {where})")

    def merge(self, other: "Report") -> None:
        for name, err in other.errors.items():
            self.errors[name] = max(self.errors.get(name, 0.0), err)
        self.tested |= other.tested
        for name in other.raised - self.raised:
            self.raised.add(name)
        self.problems += [p for p in other.problems if p not in self.problems]

    def failures(self) -> list:
        return [name for name, err in self.errors.items()
                if not err <= TOLERANCE.get(name, DEFAULT_TOLERANCE)]


def load_module(path: str):
    """Import a generated module from its file under a stable private name."""
    path = os.path.abspath(path)
    name = "_rulegen_verify_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _instance_sizes(spec, rng, low: int = 1):
    """Random small sizes for which every field shape and the matrix are valid
    (``low`` to 5 first; up to 12 when a shape needs more, like ``[n - 6]``)."""
    for high in (6, 13):
        for _ in range(200):
            values = {s: int(rng.integers(low, high)) for s in spec.sizes}
            try:
                shapes = {f.name: tuple(int(d.xreplace(values)) for d in f.shape) for f in spec.fields}
                dims = [int(d.xreplace(values)) for d in spec.size]
            except (TypeError, ValueError, ZeroDivisionError):
                continue
            if all(d >= 0 for shp in shapes.values() for d in shp) and all(d >= 1 for d in dims):
                return {s.name: v for s, v in values.items()}, shapes
    raise ValueError("no small sizes give valid field shapes and a non-empty matrix")


def _bounds(spec, sizes, shapes) -> dict:
    """``dmax``: the largest size or dimension; ``dmin``: the largest index
    valid for both rows and columns."""
    values = {s: sizes[s.name] for s in spec.sizes}
    dims = [int(d.xreplace(values)) for d in spec.size]
    return {"dmax": max([1, *sizes.values(), *dims, *(d for shp in shapes.values() for d in shp)]),
            "dmin": max(0, min(dims) - 1)}


# -- integer fields ------------------------------------------------------------

@dataclass(frozen=True)
class IntField:
    """What the constructor checks of one integer field: ``bounds``, the
    ``rulegen.pattern.Bound`` of each use (all must hold), and ``monotone``."""

    name: str
    bounds: tuple
    monotone: bool


def int_plan(spec, regions=None) -> tuple:
    """One :class:`IntField` per integer field of ``spec`` (``regions``: the
    derivation's, for the monotone fields; derived here when not given)."""
    ints = [f for f in spec.fields if getattr(f, "integer", False)]
    if not ints:
        return ()
    from .derive import derive, monotone_fields
    from .pattern import bounds as pattern_bounds

    found = pattern_bounds(spec)
    try:
        monotone = set(monotone_fields(regions if regions is not None else derive(spec).regions))
    except Exception:       # noqa: BLE001 - a spec that does not derive: nothing is sorted
        monotone = set()
    return tuple(IntField(f.name, tuple(b for b in found if b.field == f.name), f.name in monotone)
                 for f in ints)


def real_names(spec) -> list:
    """The fields that are parameters (J's columns), in spec order."""
    return [f.name for f in spec.fields if not getattr(f, "integer", False)]


def int_range(item: IntField, sizes: dict, bounds: dict) -> tuple:
    """``[lo, hi)`` for the values of an integer field at ``sizes``: the
    intersection of its bounds, or index-like ``[0, dmin]`` when it has none."""
    if not item.bounds:
        return 0, bounds["dmin"] + 1
    def at(e):
        e = sp.sympify(e)
        return int(e.xreplace({s: sizes[s.name] for s in e.free_symbols if s.name in sizes}))

    return max(at(b.lo) for b in item.bounds), min(at(b.hi) for b in item.bounds)


def draw_ints(plan, rng, sizes, shapes, bounds) -> dict | None:
    """Random values for the integer fields, within what the constructor
    checks (None: no value fits at these sizes). Non-monotone fields draw
    with repeats (a permutation now and then when one fits); monotone ones
    are sorted along their last axis, half the time from the lowest to the
    highest allowed value (a CSR indptr from 0 to nnz); half the time two
    positions along the leading axis repeat across every non-monotone field
    of that length (one COO position stored twice)."""
    out = {}
    for item in plan:
        shape = shapes[item.name]
        count = int(np.prod(shape))
        lo, hi = int_range(item, sizes, bounds)
        if not count:
            out[item.name] = np.zeros(shape, dtype=np.int64)
            continue
        if hi <= lo:
            return None
        if item.monotone:
            v = np.sort(rng.integers(lo, hi, shape), axis=-1)
            if rng.random() < 0.5:
                v[..., 0], v[..., -1] = lo, hi - 1
        elif len(shape) == 1 and count == hi - lo and rng.random() < 0.3:
            v = rng.permutation(count) + lo
        else:
            v = rng.integers(lo, hi, shape)
        out[item.name] = np.asarray(v, dtype=np.int64).reshape(shape)
    groups: dict = {}
    for item in plan:
        shape = shapes[item.name]
        if not item.monotone and len(shape) and shape[0] >= 2:
            groups.setdefault(shape[0], []).append(item.name)
    for length, group in groups.items():
        if rng.random() < 0.5:
            a, b = rng.choice(length, 2, replace=False)
            for name in group:
                out[name][b] = out[name][a]
    return out


def ints_text(ints: dict) -> str:
    return ", ".join(f"{k}={np.array2string(np.asarray(v), separator=',', threshold=20)}"
                     for k, v in ints.items())


#: Patterns tried at one draw for one the kernels accept and that is not all zero.
PATTERN_TRIES = 30


class _NoPattern(Exception):
    """No integer-field values fit at these sizes, or the kernels refused each."""


class _Refused(Exception):
    """The constructor refused integer fields drawn within its own checks."""


def draw_pattern(plan, mod, cls, names, shapes, sizes, bounds, rng) -> dict:
    """Integer fields for one draw (see :func:`draw_ints`) at which
    ``destructure`` runs, preferring one where the matrix is not zero; {} for
    a spec without integer fields. Raises _NoPattern or _Refused."""
    if not plan:
        return {}
    ok, why = None, "no values fit the ranges their uses imply at these sizes"
    for _ in range(PATTERN_TRIES):
        ints = draw_ints(plan, rng, sizes, shapes, bounds)
        if ints is None:
            break
        theta = rng.uniform(0.5, 1.5, sum(int(np.prod(shapes[n])) for n in names))
        try:
            x = _struct(cls, names, shapes, theta, sizes, ints)
        except Exception as exc:    # noqa: BLE001
            raise _Refused(f"{type(exc).__name__}: {exc} ({ints_text(ints)})") from None
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                dense = _as_nat(mod.destructure(x))
        except Exception as exc:    # noqa: BLE001 - an index check of a kernel: another pattern
            why = f"the kernels refused each pattern drawn, the last: {type(exc).__name__}: {exc}"
            continue
        if np.any(dense != 0):
            return ints
        ok = ok or ints
    if ok is not None:
        return ok
    raise _NoPattern(why)


def _draw_one(kind: str, rng, count: int, bounds: dict) -> np.ndarray:
    if kind == "uniform":
        return rng.uniform(0.5, 1.5, count)
    if kind == "normal":
        return rng.standard_normal(count)
    if kind == "zeros":
        v = rng.standard_normal(count)
        v[rng.random(count) < 0.4] = 0.0
        return v
    if kind == "integers":
        return rng.integers(-2, bounds["dmax"] + 1, count).astype(float)
    if kind == "indices":
        return rng.integers(0, bounds["dmin"] + 1, count).astype(float)
    raise ValueError(kind)


def draw(kind: str, rng, names, shapes, bounds: dict) -> np.ndarray:
    """Field values from the distribution ``kind`` of :data:`DRAWS`, flattened
    in field order (``"mixed"``: each field from a distribution of its own)."""
    parts = []
    for name in names:
        count = int(np.prod(shapes[name]))
        parts.append(_draw_one(kind if kind != "mixed" else _BASIC[int(rng.integers(len(_BASIC)))],
                               rng, count, bounds))
    return np.concatenate(parts) if parts else np.zeros(0)


def describe(kind: str, bounds: dict) -> str:
    return DRAWS[kind].format(**bounds)


def field_roles(spec) -> tuple:
    """``(in_values, in_conditions)``: the names of the fields the entry reads
    outside any condition, and inside one (a field may be in both)."""
    values, conditions = set(), set()
    stack = [(spec.entry, False)]
    while stack:
        node, cond = stack.pop()
        if isinstance(node, sp.Indexed):
            (conditions if cond else values).add(node.base.label.name)
            continue
        if not isinstance(node, sp.Basic):
            continue
        cond = cond or isinstance(node, sp.logic.boolalg.Boolean)
        stack.extend((a, cond) for a in node.args)
    return values, conditions


def _vec(obj, names):
    return np.concatenate([np.ravel(np.asarray(getattr(obj, n), dtype=float)) for n in names]) \
        if names else np.zeros(0)


def _struct(cls, names, shapes, vec, sizes, ints=None):
    """An instance with the real fields ``names`` from ``vec`` and the integer fields ``ints``."""
    out, k = dict(ints or {}), 0
    for n in names:
        size = int(np.prod(shapes[n]))
        part = vec[k:k + size]
        out[n] = float(part[0]) if shapes[n] == () else part.reshape(shapes[n])
        k += size
    return cls(**out, **sizes)


class _Raised(Exception):
    def __init__(self, name, exc):
        super().__init__(name)
        self.name, self.exc = name, exc


def _call(name, fn, *args):
    """``fn(*args)``; an exception becomes a failure of the map ``name``."""
    try:
        return fn(*args)
    except Exception as exc:        # noqa: BLE001 - whatever a map raises is its failure
        raise _Raised(name, exc) from None


def _finite(*arrays) -> bool:
    return all(np.all(np.isfinite(_as_nat(a))) for a in arrays)


@dataclass
class _Point:
    """One draw: the primal and the random tangents, and the core maps there."""

    mod: object
    cls: type
    names: list
    shapes: dict
    sizes: dict
    theta: np.ndarray
    x: object
    t: np.ndarray
    Y: np.ndarray
    dense: np.ndarray
    push: np.ndarray
    pull: np.ndarray
    rng: object
    ints: dict = field(default_factory=dict)

    def struct(self, vec):
        return _call(spec_name(self.cls), _struct, self.cls, self.names, self.shapes, vec, self.sizes, self.ints)

    def J(self, vec):
        return _as_nat(_call("destructure_pushforward", self.mod.destructure_pushforward, self.x,
                             self.struct(vec)))

    def Jp(self, mat):
        return _vec(_call("restructure_pushforward", self.mod.restructure_pushforward, self.x, mat), self.names)


def verify_module(spec, path: str, trials: int = 3, seed: int = 0, module=None) -> Report:
    """Check the module at ``path`` built from ``spec`` (``module``: the module
    already imported from there, to reuse its compiled kernels)."""
    report = Report(os.path.basename(path))
    try:
        mod = module if module is not None else load_module(path)
        cls = getattr(mod, spec.name)
    except Exception as exc:    # a module that does not import is a failure, not a crash
        report.problems.append(f"cannot import {path}: {type(exc).__name__}: {exc}")
        return report
    names = real_names(spec)
    roles = field_roles(spec)
    rng = np.random.default_rng(seed)
    counts = {"finite": 0, "nonfinite": 0, "raised": 0, "dense_nonzero": 0, "ill": 0}
    plan = int_plan(spec)
    no_pattern = []

    def untested() -> bool:
        return (counts["finite"] + counts["dense_nonzero"] == 0
                or (counts["dense_nonzero"] == 0 and spec.entry != 0)
                or (roles[0] and "destructure_pushforward" not in report.tested))

    trial = 0
    while trial < trials or (trial < trials + EXTRA_TRIALS and untested() and not report.raised):
        try:
            # the extra trials skip size 1, where an entry may read nothing (a strict triangle)
            sizes, shapes = _instance_sizes(spec, rng, low=1 if trial < trials else 2)
        except ValueError as exc:
            report.problems.append(f"cannot verify: {exc}")
            return report
        trial += 1
        bounds = _bounds(spec, sizes, shapes)
        for kind in DRAWS:
            try:
                ints = draw_pattern(plan, mod, cls, names, shapes, sizes, bounds, rng)
            except _Refused as exc:
                report.problems.append(f"the constructor refused integer fields drawn within the ranges "
                                       f"that getindex implies for them: {exc}")
                _conclude(spec, report, counts, roles[0])
                return report
            except _NoPattern as exc:
                no_pattern.append(f"{exc} (at {', '.join(f'{k}={v}' for k, v in sizes.items())})")
                break
            where = describe(kind, bounds) + ", " + (", ".join(f"{k}={v}" for k, v in sizes.items()) or "no sizes")
            if ints:
                where += ", integer fields " + ints_text(ints)
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                state = _check_draw(mod, cls, names, shapes, sizes, kind, bounds, roles, rng, report, where, ints)
            counts[state[0]] += 1
            counts["ill"] += state[1]
    if no_pattern:
        draws = sum(v for k, v in counts.items() if k != "ill")
        if not draws:
            report.problems.append(f"cannot verify: no integer-field values found that the module accepts: "
                                   f"{no_pattern[0]}")
            return report
        report.notes.append(f"{len(no_pattern)} trial{'s' if len(no_pattern) != 1 else ''} skipped: "
                            f"{no_pattern[0]}")
    _conclude(spec, report, counts, roles[0])
    return report


MAPS = ("destructure", "destructure_pushforward", "destructure_pullback", "restructure_pushforward",
        "restructure_pullback", "project", "matvec", "rmatvec", "bilinear_pullback", "diagonal",
        "diagonal_pullback")


def _map_order(name):
    return (MAPS.index(name), name) if name in MAPS else (len(MAPS), name)


def _conclude(spec, report, counts, in_values) -> None:
    """Notes on what was skipped, and a problem when nothing was tested."""
    report.errors = {name: report.errors[name] for name in sorted(report.errors, key=_map_order)}
    draws = sum(v for k, v in counts.items() if k != "ill")
    tested = counts["finite"] + counts["dense_nonzero"]
    if counts["nonfinite"]:
        report.notes.append(f"{counts['nonfinite']} of {draws} draws skipped: destructure or its "
                            "derivative was not finite there")
    if counts["ill"]:
        report.notes.append(f"{counts['ill']} of {draws} draws set aside for {', '.join(PINV_MAPS)}: "
                            f"J was ill-conditioned there (condition number over {ILL_CONDITIONED:.0e})")
    if counts["raised"] == draws:
        return                                      # each map that raised is already a problem
    kinds = ", ".join(DRAWS)
    if tested == 0:
        raised = f" ({counts['raised']} raised)" if counts["raised"] else ""
        report.problems.append(
            f"every one of the {draws} draws{raised} (fields {kinds}) gave non-finite values (inf or NaN) "
            "in destructure or its derivative: nothing was compared")
    elif counts["dense_nonzero"] == 0 and spec.entry != 0:
        report.problems.append(
            f"destructure was zero at every one of the {tested} finite draws (fields {kinds}): "
            "the maps were only ever checked on a zero matrix, so nothing was tested")
    elif in_values and "destructure_pushforward" not in report.tested \
            and not report.raised & {"destructure", "destructure_pushforward"}:
        report.problems.append(
            f"destructure_pushforward was zero wherever it was compared with finite differences, at "
            f"every one of the {tested} finite draws, although the entry reads "
            f"{', '.join(sorted(in_values))}: its derivative was never tested")


def _check_draw(mod, cls, names, shapes, sizes, kind, bounds, roles, rng, report, where, ints=None):
    """Run every check at one draw. Returns ``(state, ill)``: state is what the
    draw was (``"raised"``, ``"nonfinite"``: skipped, ``"finite"`` or
    ``"dense_nonzero"``), ill whether the J⁺ checks were set aside."""
    p = sum(int(np.prod(shapes[nm])) for nm in names)
    theta = draw(kind, rng, names, shapes, bounds)
    t = rng.standard_normal(p)
    try:
        x = _call(spec_name(cls), _struct, cls, names, shapes, theta, sizes, ints)
        m, n = x.shape
        Y = rng.standard_normal((m, n))
        if getattr(mod, "_COMPLEX_OUTPUT", False):      # an imaginary constant: complex dense matrices
            Y = Y + 1j * rng.standard_normal((m, n))
        dense = _as_nat(_call("destructure", mod.destructure, x))
        tx = _call(spec_name(cls), _struct, cls, names, shapes, t, sizes, ints)
        push = _as_nat(_call("destructure_pushforward", mod.destructure_pushforward, x, tx))
        pull = _vec(_call("destructure_pullback", mod.destructure_pullback, x, Y), names)
    except _Raised as r:
        report.fail_raised(r.name, r.exc, where)
        return "raised", False
    except Exception as exc:        # noqa: BLE001 - e.g. a map returning the wrong type
        report.fail_raised("destructure", exc, where)
        return "raised", False
    if not _finite(dense, push, pull):
        return "nonfinite", False
    pt = _Point(mod, cls, names, shapes, sizes, theta, x, t, Y, dense, push, pull, rng, ints or {})
    in_conditions = roles[1]
    checks = []
    # The full direction may cross a condition's boundary (rows[k] == i at an
    # integer draw), where the difference quotient means nothing even when the
    # jump is zero; continuous draws are on a boundary with probability zero.
    if not in_conditions or kind in ("uniform", "normal"):
        checks.append(("destructure_pushforward", report, lambda rep: _check_fd(pt, t, rep)))
    if in_conditions and p:
        # move only the fields read outside conditions: the region stays put
        mask = np.concatenate([np.full(int(np.prod(shapes[nm])), nm not in in_conditions) for nm in names])
        if mask.any():
            checks.append(("destructure_pushforward", report,
                           lambda rep: _check_fd(pt, np.where(mask, t, 0.0), rep)))
    pinv = Report(report.module)
    checks += [("destructure_pullback", report, lambda rep: _check_dot(pt, rep)),
               ("restructure_pushforward", pinv, lambda rep: _check_pinv(pt, rep)),
               ("project", pinv, lambda rep: _check_project(pt, rep)),
               ("matvec", report, lambda rep: _check_derived(pt, rep))]
    for name, rep, check in checks:
        try:
            check(rep)
        except _Raised as r:
            rep.fail_raised(r.name, r.exc, where)
        except Exception as exc:    # noqa: BLE001 - a wrong shape or type from the map under test
            rep.fail_raised(name, exc, where)
    ill = bool(pinv.failures()) and not pinv.raised and _ill_conditioned(pt)
    if not ill:
        report.merge(pinv)
    return ("dense_nonzero" if np.any(dense != 0) else "finite"), ill


def _ill_conditioned(pt) -> bool:
    """Whether J at the point has a condition number over ILL_CONDITIONED on
    its range (singular values below N·p·eps relative count as zero)."""
    p, N = pt.t.size, pt.dense.size
    if not p or p * N > 10**6:
        return False
    try:
        J = np.stack([pt.J(np.eye(p)[k]).ravel() for k in range(p)], axis=1)
        s = np.linalg.svd(J, compute_uv=False)
    except Exception:       # noqa: BLE001 - not decidable here: the failure stands
        return False
    if not s.size or not np.all(np.isfinite(s)) or s[0] == 0:
        return False
    s = s[s > s[0] * max(N, p) * np.finfo(float).eps * 10]
    return bool(s[0] / s[-1] > ILL_CONDITIONED)


def spec_name(cls) -> str:
    return f"{cls.__name__}(...)"


def _check_fd(pt, direction, report):
    """The pushforward along ``direction`` against central differences of
    destructure, at the entries where destructure is smooth at the point."""
    D = pt.mod.destructure
    got = pt.J(direction)
    fp = _as_nat(_call("destructure", D, pt.struct(pt.theta + FD_STEP * direction)))
    fm = _as_nat(_call("destructure", D, pt.struct(pt.theta - FD_STEP * direction)))
    fd = (fp - fm) / (2 * FD_STEP)
    smooth = np.isfinite(fp) & np.isfinite(fm) & \
        (np.abs(fp - 2 * pt.dense + fm) <= SMOOTH * (1 + np.abs(pt.dense) + np.abs(fd)))
    report.record("destructure_pushforward", got[smooth], fd[smooth])


def _check_dot(pt, report):
    """⟨Jθ̇, Ȳ⟩ = ⟨θ̇, JᵀȲ⟩, relative to the size of the terms."""
    nrm = np.linalg.norm
    report.record("destructure_pullback", np.dot(pt.t, pt.pull), _re_dot(pt.push, pt.Y),
                  scale=nrm(pt.t) * nrm(pt.pull) + nrm(pt.push) * nrm(pt.Y))


def _check_pinv(pt, report):
    nrm = np.linalg.norm
    report.record("restructure_pushforward", pt.J(pt.Jp(pt.push)), pt.push)              # J J⁺ J = J
    jp = pt.Jp(pt.Y)
    report.record("restructure_pushforward", pt.Jp(pt.J(jp)), jp)                         # J⁺ J J⁺ = J⁺
    s = pt.rng.standard_normal(pt.t.size)
    a, b = pt.Jp(pt.J(pt.t)), pt.Jp(pt.J(s))
    report.record("restructure_pushforward", np.dot(a, s), np.dot(pt.t, b),                # J⁺J symmetric
                  scale=nrm(a) * nrm(s) + nrm(pt.t) * nrm(b))
    # restructure_pullback: the adjoint of restructure_pushforward
    rp = _as_nat(_call("restructure_pullback", pt.mod.restructure_pullback, pt.x, pt.struct(pt.t)))
    report.record("restructure_pullback", _re_dot(rp, pt.Y), np.dot(pt.t, jp),
                  scale=nrm(rp) * nrm(pt.Y) + nrm(pt.t) * nrm(jp))


def _check_project(pt, report):
    P = _as_nat(_call("project", pt.mod.project, pt.x, pt.Y))
    report.record("project", P, pt.J(pt.Jp(pt.Y)))                                       # J J⁺
    report.record("project", _call("project", pt.mod.project, pt.x, P), P)               # idempotent


def _check_derived(pt, report):
    """matvec and friends against destructure and destructure_pullback."""
    mod, x, names, dense = pt.mod, pt.x, pt.names, pt.dense
    m, n = dense.shape
    v, u = pt.rng.standard_normal((n, 2)), pt.rng.standard_normal((m, 2))
    report.record("matvec", _call("matvec", mod.matvec, x, v), dense @ v)
    report.record("rmatvec", _call("rmatvec", mod.rmatvec, x, u), dense.T @ u)
    report.record("bilinear_pullback", _vec(_call("bilinear_pullback", mod.bilinear_pullback, x, u, v), names),
                  _vec(_call("destructure_pullback", mod.destructure_pullback, x, u @ v.T), names))
    report.record("diagonal", _call("diagonal", mod.diagonal, x), np.diagonal(dense))
    d = pt.rng.standard_normal(min(m, n))
    Dm = np.zeros((m, n))
    Dm[np.arange(d.size), np.arange(d.size)] = d
    report.record("diagonal_pullback", _vec(_call("diagonal_pullback", mod.diagonal_pullback, x, d), names),
                  _vec(_call("destructure_pullback", mod.destructure_pullback, x, Dm), names))
