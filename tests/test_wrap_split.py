"""Loops split at the wrap points of ``%`` and ``//`` (issue #17,
rulegen.loops.split_wraps): an entry such as ``c[(i - j) % n]`` or
``A[i // mb, j // nb] * B[i % mb, j % nb]`` gets an inner loop per segment
where ``floor(e / m)`` is constant, with affine indices (checked once per
segment, then unchecked and vectorised); short periods, and divisors that may
be zero or negative at run time, keep the checked loop.

Every map is checked against an independent oracle: the dense matrix built
here with Python loops (Python's ``%`` and ``//`` and negative indices), its
Jacobian column by column, numpy's pinv; at sizes where the split runs and
where it does not (n = 1, periods shorter than loops.WRAP_MIN, sizes that are
not multiples of the divisor). A split that is off by one must fail that check.
"""

import numpy as np
import pytest
import sympy as sp

from helpers import check_all_maps, load_module

from rulegen import loops
from rulegen.cli import compile_spec


def _loops(shape, entry):
    Y = np.zeros(shape)
    for i in range(shape[0]):
        for j in range(shape[1]):
            Y[i, j] = entry(i, j)
    return Y


def _vector(name, size):
    return lambda rng, s: {name: rng.standard_normal(size(s))}


# name -> (spec, fields(rng, sizes), extra constructor arguments(sizes), dense(fields, sizes), order, sizes to try)
CASES = {
    "circulant": ("""
name: Circ
sizes: [n]
fields: {c: [n]}
size: [n, n]
getindex: "c[(i - j) % n]"
""", _vector("c", lambda s: s["n"]), lambda s: {},
        lambda f, s: _loops((s["n"],) * 2, lambda i, j: f["c"][(i - j) % s["n"]]), ("c",),
        [dict(n=1), dict(n=7), dict(n=8), dict(n=13), dict(n=24)]),
    "circulant_other_way": ("""
name: CircT
sizes: [n]
fields: {c: [n]}
size: [n, n]
getindex: "c[(j - i) % n]"
""", _vector("c", lambda s: s["n"]), lambda s: {},
        lambda f, s: _loops((s["n"],) * 2, lambda i, j: f["c"][(j - i) % s["n"]]), ("c",),
        [dict(n=1), dict(n=9), dict(n=20)]),
    "negative_argument": ("""
name: Shifted
sizes: [n]
fields: {c: [n]}
size: [n, n]
getindex: "c[(i - j - 3) % n]"
""", _vector("c", lambda s: s["n"]), lambda s: {},
        lambda f, s: _loops((s["n"],) * 2, lambda i, j: f["c"][(i - j - 3) % s["n"]]), ("c",),
        [dict(n=1), dict(n=2), dict(n=11), dict(n=17)]),
    # 2·i + j spans up to three periods of n in each row
    "coefficient_outer": ("""
name: Skew
sizes: [n]
fields: {c: [n]}
size: [n, n]
getindex: "c[(2 * i + j) % n]"
""", _vector("c", lambda s: s["n"]), lambda s: {},
        lambda f, s: _loops((s["n"],) * 2, lambda i, j: f["c"][(2 * i + j) % s["n"]]), ("c",),
        [dict(n=3), dict(n=8), dict(n=19)]),
    # a = 2 and a = -3 in the inner loop: segments of about n / |a| columns
    "coefficient_inner": ("""
name: Stride
sizes: [n]
fields: {c: [n], d: [n]}
size: [n, n]
getindex: "c[(i + 2 * j) % n] + 2 * d[(5 - 3 * j + i) % n]"
""", lambda rng, s: {"c": rng.standard_normal(s["n"]), "d": rng.standard_normal(s["n"])}, lambda s: {},
        lambda f, s: _loops((s["n"],) * 2, lambda i, j: f["c"][(i + 2 * j) % s["n"]]
                            + 2 * f["d"][(5 - 3 * j + i) % s["n"]]), ("c", "d"),
        [dict(n=1), dict(n=15), dict(n=16), dict(n=25), dict(n=31)]),
    "hankel_wrap": ("""
name: CircH
sizes: [n]
fields: {c: [n]}
size: [n, n]
getindex: "c[(i + j) % n]"
""", _vector("c", lambda s: s["n"]), lambda s: {},
        lambda f, s: _loops((s["n"],) * 2, lambda i, j: f["c"][(i + j) % s["n"]]), ("c",),
        [dict(n=1), dict(n=10)]),
    # // and % with an offset, by a size expression, n not a multiple of it
    "offset_blocks": ("""
name: Blocks
sizes: [m, n, p]
fields:
  A: [m, (n + 1) // (p + 1) + 1]
  B: [m, p + 1]
size: [m, n]
getindex: "2 * A[i, (j + 2) // (p + 1)] + B[i, (j + 2) % (p + 1)]"
""", lambda rng, s: {"A": rng.standard_normal((s["m"], (s["n"] + 1) // (s["p"] + 1) + 1)),
                     "B": rng.standard_normal((s["m"], s["p"] + 1))},
        lambda s: {"n": s["n"]},
        lambda f, s: _loops((s["m"], s["n"]), lambda i, j: 2 * f["A"][i, (j + 2) // (s["p"] + 1)]
                            + f["B"][i, (j + 2) % (s["p"] + 1)]), ("A", "B"),
        [dict(m=1, n=1, p=0), dict(m=2, n=5, p=2), dict(m=3, n=21, p=7), dict(m=2, n=30, p=8)]),
    "kronecker": ("""
name: Kron
sizes: [ma, na, mb, nb]
fields:
  A: [ma, na]
  B: [mb, nb]
size: [ma * mb, na * nb]
getindex: "A[i // mb, j // nb] * B[i % mb, j % nb]"
""", lambda rng, s: {"A": rng.standard_normal((s["ma"], s["na"])), "B": rng.standard_normal((s["mb"], s["nb"]))},
        lambda s: {},
        lambda f, s: _loops((s["ma"] * s["mb"], s["na"] * s["nb"]),
                            lambda i, j: f["A"][i // s["mb"], j // s["nb"]] * f["B"][i % s["mb"], j % s["nb"]]),
        ("A", "B"),
        [dict(ma=1, na=1, mb=1, nb=1), dict(ma=2, na=2, mb=3, nb=2), dict(ma=2, na=3, mb=3, nb=8),
         dict(ma=3, na=2, mb=9, nb=10)]),
    # a modulus that is negative for n < 10 (results in (m, 0]: negative indices wrap) and
    # short for n < 18: the checked loop; split from n = 18 on
    "signed_modulus": ("""
name: Signed
sizes: [n]
fields: {c: [n]}
size: [n, n]
getindex: "c[(i - j) % (n - 10)]"
""", _vector("c", lambda s: s["n"]), lambda s: {},
        lambda f, s: _loops((s["n"],) * 2, lambda i, j: f["c"][(i - j) % (s["n"] - 10)]), ("c",),
        [dict(n=6), dict(n=9), dict(n=14), dict(n=19)]),
    # two wrap groups in one loop (one in the entry, one in the region's test): nested splits
    "two_groups": ("""
name: TwoWraps
sizes: [n]
fields: {c: [n]}
size: [n, n]
getindex: "c[(i - j) % n] if (i + j) % (n + 1) < 5 else 0.0"
""", _vector("c", lambda s: s["n"]), lambda s: {},
        lambda f, s: _loops((s["n"],) * 2, lambda i, j: f["c"][(i - j) % s["n"]]
                            if (i + j) % (s["n"] + 1) < 5 else 0.0), ("c",),
        [dict(n=1), dict(n=6), dict(n=12)]),
}


def _check(mod, case, sizes, seed):
    spec, fields_of, extra_of, dense_of, order, _ = CASES[case]
    rng = np.random.default_rng(seed)
    fields = fields_of(rng, sizes)
    cls = getattr(mod, spec.split("name: ")[1].split()[0])
    check_all_maps(mod, cls, fields, extra_of(sizes), lambda f: dense_of(f, sizes), order, seed=seed, atol=1e-8)


@pytest.mark.parametrize("case,k", [(c, k) for c, v in CASES.items() for k in range(len(v[5]))])
def test_every_map_against_the_dense_oracle(build_once, case, k):
    sizes = CASES[case][5][k]
    _check(build_once(CASES[case][0]), case, sizes, seed=k)


@pytest.mark.parametrize("case", ["circulant", "circulant_other_way", "negative_argument", "coefficient_outer",
                                  "coefficient_inner", "hankel_wrap", "offset_blocks", "kronecker",
                                  "signed_modulus", "two_groups"])
def test_the_split_is_emitted(build_once, case):
    """The kernels loop over the segments (``_wrap0``) under a test of the
    period, with the original loop for the other case."""
    source = open(build_once(CASES[case][0]).__file__).read()
    assert "for _wrap0 in range(" in source
    if case == "two_groups":
        assert "for _wrap1 in range(" in source


def test_short_constant_periods_keep_the_checked_loop(build_once):
    mod = build_once("""
name: Short
sizes: [n]
fields: {c: [3]}
size: [n, n]
getindex: "c[(i - j) % 3]"
""")
    assert "_wrap" not in open(mod.__file__).read()
    c = np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(mod.destructure(mod.Short(c=c, n=5)),
                                  _loops((5, 5), lambda i, j: c[(i - j) % 3]))


def test_a_read_past_the_end_still_raises(build_once):
    """(i - j) % (n + 1) reaches n, one past c: the split segment's check
    fails and the checked loop raises, as without the split."""
    mod = build_once("""
name: Past
sizes: [n]
fields: {c: [n]}
size: [n, n]
getindex: "c[(i - j) % (n + 1)]"
""")
    assert "for _wrap0 in range(" in open(mod.__file__).read()
    x = mod.Past(c=np.arange(12.0))
    with pytest.raises(IndexError, match="reads c out of range"):
        mod.destructure(x)
    with pytest.raises(IndexError, match="reads c out of range"):
        mod.destructure_pullback(x, np.ones((12, 12)))


def _build_in_process(tmp_path, text):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(text)
    (built,) = compile_spec(str(spec_path))
    out = tmp_path / built.module
    out.write_text(built.source)
    return load_module(str(out))


@pytest.mark.parametrize("case,sizes", [("circulant", dict(n=13)), ("kronecker", dict(ma=2, na=3, mb=3, nb=8))])
def test_a_split_off_by_one_fails_the_oracle(tmp_path, monkeypatch, case, sizes):
    """The oracle sees a wrong split point: segments shifted by one column
    read one past the period (or one before it) at their ends."""
    right = loops.wrap_segment

    def shifted(a, b, m, t):
        start, stop = right(a, b, m, t)
        return start + 1, stop + 1

    monkeypatch.setattr(loops, "wrap_segment", shifted)
    mod = _build_in_process(tmp_path, CASES[case][0])
    assert "for _wrap0 in range(" in open(mod.__file__).read()
    with pytest.raises((AssertionError, IndexError)):
        _check(mod, case, sizes, seed=0)


def test_wrap_segments_partition_the_loop_by_floor_division():
    """wrap_segment against brute force: for each t, exactly the v with
    (a·v + b) // m == t (Python's floor, negative values included)."""
    t_ = sp.Symbol("t", integer=True)
    for a in (-3, -2, -1, 1, 2, 3):
        for b in (-7, -1, 0, 4, 11):
            for m in (1, 2, 5, 8):
                start, stop = loops.wrap_segment(a, b, m, t_)
                for t in range(-8, 9):
                    want = [v for v in range(-30, 31) if (a * v + b) // m == t]
                    lo, hi = int(start.subs(t_, t)), int(stop.subs(t_, t))
                    assert [v for v in range(-30, 31) if lo <= v < hi] == want, (a, b, m, t)
