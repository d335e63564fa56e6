"""``rulegen explain``: what was derived from a spec, for a person.

The fields and sizes; how J⁺ is applied and why; each region of getindex
with its loop nest, its entry and the derivative of the entry with respect
to each field element it reads; what each map costs; and, at a small random
instance, the parametrisation class with its numbers (p elements, p_a used,
N entries, rank J), the unused storage and the identities that hold.
``--latex`` prints the formulas as LaTeX; ``--plot FILE.png`` draws J's
sparsity and the entry → field map of the small instance.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import sympy as sp

from .derive import derive
from .emit import render, size_plan
from .lower import _top_sums
from .spec import load

IDENTITIES = {
    "exact": "J⁺ = J⁻¹: every map inverts every other.",
    "under": ("J⁺J = I on the used elements: restructure_pushforward ∘ destructure_pushforward = id and "
              "destructure_pullback ∘ restructure_pullback = id there (unused storage maps to 0)."),
    "over": ("J J⁺ = I: destructure_pushforward ∘ restructure_pushforward = id; the other order only "
             "projects, and destructure_pullback ∘ restructure_pullback is the identity only on "
             "cotangents that destructure_pullback produces."),
    "deficient": ("only the Penrose identities: J J⁺ J = J, J⁺ J J⁺ = J⁺, J J⁺ and J⁺ J symmetric "
                  "(a scale or rotation can move between fields)."),
}

KINDS = {
    "gather": ("gather: each entry is zero, a constant, or a constant times one field element, so "
               "JᵀJ = diag(w), w[k] = Σ c² over the entries reading element k, and J⁺ = diag(1/w) Jᵀ."),
    "bordered": ("bordered: each entry reads at most one element of the large fields (coefficients may "
                 "depend on x) plus the coupled fields {coupled}; JᵀJ = [[diag(w), B], [Bᵀ, C]] is inverted "
                 "exactly through the small Schur complement S = C - Bᵀ diag(1/w) B."),
    "general": ("general: J depends on x and couples many elements; J⁺ is applied by LSQR from zero "
                "(the minimum-norm least-squares solution), calling only the pushforward and pullback kernels."),
}


def _fmt(e, latex: bool) -> str:
    return sp.latex(e) if latex else sp.pretty(e, use_unicode=True, wrap_line=False)


def _nest_text(steps) -> list:
    lines, indent = [], ""
    for st in steps:
        if st[0] == "for":
            lines.append(f"{indent}for {st[1]} in range({st[2]}, {st[3]})")
            indent += "  "
        elif st[0] == "let":
            lines.append(f"{indent}{st[1]} = {st[2]}")
        else:
            lines.append(f"{indent}if {st[1]}")
            indent += "  "
    return lines or ["(a single entry)"]


def _derivatives(value, latex: bool, scalars=()) -> list:
    """∂entry/∂read for the reads outside sums, and the summand's for each sum."""
    out = []
    sums = {s: sp.Symbol(f"S{k}") for k, s in enumerate(_top_sums(value))}
    f = value.xreplace(sums) if sums else value
    reads = sorted(f.atoms(sp.Indexed), key=sp.default_sort_key)
    reads += sorted((a for a in f.free_symbols if a.name in scalars), key=sp.default_sort_key)
    for acc in reads:
        out.append(f"∂/∂{acc} = {_fmt(sp.diff(f, acc), latex)}")
    for s, sym in sums.items():
        k = s.limits[-1][0]
        out.append(f"{sym} = sum over {k} of {_fmt(s.function, latex)}; ∂/∂{sym} = {_fmt(sp.diff(f, sym), latex)}")
        for acc in sorted(s.function.atoms(sp.Indexed), key=sp.default_sort_key):
            out.append(f"  ∂(summand)/∂{acc} = {_fmt(sp.diff(s.function, acc), latex)}")
    return out


def _costs(d) -> list:
    n_regions = len(d.regions)
    per = "one pass over the {} region(s) above".format(n_regions)
    pinv = {
        "gather": "one pass plus O(p) (the weights are cached per size)",
        "bordered": f"{1 + len(d.coupled)} passes (one per coupled field element, plus one) plus O(p)",
        "general": "two passes (a pushforward and a pullback) per LSQR iteration",
    }[d.kind]
    sep = sum(1 for r in d.op_regions if r.separable is not None)
    lines = [
        f"destructure, destructure_pushforward, destructure_pullback: {per}",
        f"restructure_pushforward, restructure_pullback, project: {pinv}",
        "matvec, rmatvec, bilinear_pullback: one pass per column of the operand"
        + (f"; {sep} term(s) Σ_k alpha(i,k)·beta(j,k) contracted in O((m + n)·k)" if sep else ""),
        "diagonal, diagonal_pullback: the entries with i == j only",
    ]
    if d.toeplitz:
        lines.append("the entry depends on i - j only: matvec-like maps use the FFT from n = 384 on")
    if d.hankel:
        lines.append("the entry depends on i + j only: matvec-like maps use the FFT from n = 384 on")
    return lines


def _instance(spec, module_source, seed=0):
    """A small random instance: (module, x, J by pushforwards of unit vectors, element labels)."""
    from .verify import _instance_sizes, _struct, load_module

    rng = np.random.default_rng(seed)
    sizes, shapes = _instance_sizes(spec, rng)
    tmp = tempfile.mkdtemp(prefix="rulegen-explain-")
    path = os.path.join(tmp, spec.module + ".py")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(module_source)
    mod = load_module(path)
    cls = getattr(mod, spec.name)
    names = [f.name for f in spec.fields]
    p = sum(int(np.prod(s)) for s in shapes.values())
    theta = rng.uniform(0.5, 1.5, p)
    x = _struct(cls, names, shapes, theta, sizes)
    labels = []
    for name in names:
        shape = shapes[name]
        labels += [name] if shape == () else [f"{name}[{', '.join(map(str, ix))}]" for ix in np.ndindex(*shape)]
    cols = []
    for k in range(p):
        e = np.zeros(p)
        e[k] = 1.0
        cols.append(mod.destructure_pushforward(x, _struct(cls, names, shapes, e, sizes)).ravel())
    J = np.stack(cols, axis=1) if cols else np.zeros((x.shape[0] * x.shape[1], 0))
    return mod, x, sizes, J, labels


def _scalars_bare(e, spec):
    """Scalar fields are read as ``name[0]`` internally; show them bare."""
    scalars = {f.name for f in spec.fields if f.ndim == 0}
    return e.replace(lambda a: isinstance(a, sp.Indexed) and a.base.label.name in scalars,
                     lambda a: sp.Symbol(a.base.label.name, real=True)) if scalars else e


def explain(path: str, latex: bool = False, plot: str | None = None) -> str:
    spec = load(path)
    d = derive(spec)
    shown = [(r, _scalars_bare(r.value, spec), _scalars_bare(r.condition, spec)) for r in d.regions]
    source = render(d, path)
    out = [f"{spec.name} ({path})", f"  getindex(i, j) = {' '.join(spec.entry_text.split())}",
           f"  size: {spec.size[0]} × {spec.size[1]}"]
    plan = size_plan(spec)
    if plan:
        out.append("  sizes: " + ", ".join(
            f"{st.size} (from {st.field}.shape[{st.axis}])" if st.kind == "solve" else f"{st.size} (keyword)"
            for st in plan))
    out.append("  fields: " + (", ".join(f"{f.name} {list(f.shape)}" for f in spec.fields) or "(none)"))
    out.append("")
    out.append("How J⁺ is applied: " + KINDS[d.kind].format(coupled=", ".join(d.coupled)))
    out.append("")
    out.append(f"Regions ({len(d.regions)}; they partition the matrix):")
    for k, (r, value, condition) in enumerate(shown, 1):
        out.append(f"  {k}. where {_fmt(condition, latex)}")
        out += ["       " + line for line in _nest_text(r.steps)]
        out.append(f"       Y[i, j] = {_fmt(value, latex)}")
        out += ["       " + line for line in _derivatives(value, latex, {f.name for f in spec.fields if f.ndim == 0})]
    out.append("")
    out.append("Cost:")
    out += ["  " + line for line in _costs(d)]
    mod, x, sizes, J, labels = _instance(spec, source)
    N, p = J.shape
    used = np.any(J != 0, axis=0)
    rank = int(np.linalg.matrix_rank(J)) if J.size else 0
    cls = mod.parametrisation(x)
    out.append("")
    size_text = ", ".join(f"{k}={v}" for k, v in sizes.items()) or "no sizes"
    out.append(f"At a random instance ({size_text}, fields uniform in [0.5, 1.5]):")
    out.append(f"  p = {p} field elements, p_a = {int(used.sum())} used, N = {N} entries, rank J = {rank}")
    out.append(f"  parametrisation: {cls}")
    unused = [lab for lab, u in zip(labels, used) if not u]
    if unused:
        shown = ", ".join(unused[:12]) + (f", … ({len(unused)} in all)" if len(unused) > 12 else "")
        out.append(f"  unused storage (zero structural tangent from restructure_pushforward): {shown}")
    out.append(f"  identities that hold: {IDENTITIES[cls]}")
    out.append("  (the class is decided at x: see parametrisation's docstring in the module)")
    if plot:
        _plot(plot, spec, x, J, labels)
        out.append("")
        out.append(f"wrote {plot}")
    return "\n".join(out)


def _plot(path, spec, x, J, labels):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, n = x.shape
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1.3, 1]})
    a1.spy(J, markersize=max(2, 120 // max(J.shape + (1,))), aspect="auto")
    a1.set_title(f"sparsity of J = ∂vec(Y)/∂θ ({J.shape[0]} × {J.shape[1]})")
    a1.set_xlabel("field element")
    a1.set_ylabel("dense entry (row-major)")
    if J.shape[1] <= 40:
        a1.set_xticks(range(J.shape[1]))
        a1.set_xticklabels(labels, rotation=90, fontsize=7)
    fields = [f.name for f in spec.fields]
    owner = np.full((m, n), -1.0)
    text = [["" for _ in range(n)] for _ in range(m)]
    for row in range(m * n):
        nz = np.flatnonzero(J[row])
        i, j = divmod(row, n)
        if nz.size:
            owner[i, j] = fields.index(labels[nz[0]].split("[")[0])
            text[i][j] = labels[nz[0]] + ("…" if nz.size > 1 else "")
    cmap = plt.get_cmap("tab10")
    colors = np.ones((m, n, 3))
    for i in range(m):
        for j in range(n):
            if owner[i, j] >= 0:
                colors[i, j] = cmap(int(owner[i, j]) % 10)[:3]
    a2.imshow(colors * 0.55 + 0.45)
    for i in range(m):
        for j in range(n):
            a2.text(j, i, text[i][j] or "0", ha="center", va="center", fontsize=max(5, 11 - max(m, n) // 2))
    a2.set_title("entry (i, j) → the field element it reads")
    a2.set_xticks(range(n))
    a2.set_yticks(range(m))
    fig.suptitle(f"{spec.name} at {m} × {n}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
