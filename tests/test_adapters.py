"""The PyTorch adapter (rulegen.torch_ops, on the PyTorch target's modules):
its gradients equal the generated pullbacks (and torch.autograd.gradcheck's
finite differences). Skipped where torch is not installed; CI installs it.
(The JAX adapter gave way to the JAX target, generated/jax/:
tests/test_jax_target.py; the PyTorch target itself: tests/test_torch_target.py.)"""

import numpy as np
import pytest

from helpers import generated

CASES = [
    ("sym_tridiagonal", {"dv": (5,), "ev": (4,)}, {}),
    ("scaled_matrix", {"scale": (), "data": (3, 4)}, {}),
    ("low_rank", {"U": (4, 2), "V": (3, 2)}, {}),
    ("fill", {"value": ()}, {"m": 3, "n": 2}),
]


def _fields(shapes, seed):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s) for k, s in shapes.items()}


@pytest.mark.parametrize("module,shapes,sizes", CASES)
def test_torch_destructure_and_matvec(module, shapes, sizes):
    torch = pytest.importorskip("torch")
    from rulegen import torch_ops

    mod = generated(module)
    cls = getattr(mod, mod.__all__[0])
    fields = _fields(shapes, 0)
    x = cls(**fields, **sizes)
    tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in fields.items()}
    Y = torch_ops.destructure(mod, **tensors, **sizes)
    np.testing.assert_allclose(Y.detach().numpy(), mod.destructure(x), atol=1e-14)
    G = np.random.default_rng(1).standard_normal(x.shape)
    grads = torch.autograd.grad((Y * torch.tensor(G)).sum(), list(tensors.values()))
    want = mod.destructure_pullback(x, G)
    for (name, _), g in zip(tensors.items(), grads):
        np.testing.assert_allclose(g.numpy(), np.asarray(getattr(want, name)), atol=1e-12)
    v = torch.tensor(np.random.default_rng(2).standard_normal((x.shape[1], 2)), requires_grad=True)
    y = torch_ops.matvec(mod, v, **tensors, **sizes)
    np.testing.assert_allclose(y.detach().numpy(), mod.matvec(x, v.detach().numpy()), atol=1e-13)
    ybar = np.random.default_rng(3).standard_normal(y.shape)
    grads = torch.autograd.grad((y * torch.tensor(ybar)).sum(), [v, *tensors.values()])
    np.testing.assert_allclose(grads[0].numpy(), mod.rmatvec(x, ybar), atol=1e-12)
    want = mod.bilinear_pullback(x, ybar, v.detach().numpy())
    for (name, _), g in zip(tensors.items(), grads[1:]):
        np.testing.assert_allclose(g.numpy(), np.asarray(getattr(want, name)), atol=1e-12)
    # and against finite differences, through torch's own checker
    names = list(tensors)
    assert torch.autograd.gradcheck(
        lambda *ts: torch_ops.destructure(mod, **dict(zip(names, ts)), **sizes), tuple(tensors.values()))
    assert torch.autograd.gradcheck(
        lambda vv, *ts: torch_ops.matvec(mod, vv, **dict(zip(names, ts)), **sizes), (v, *tensors.values()))


def test_torch_float32_and_unknown_argument():
    torch = pytest.importorskip("torch")
    from rulegen import torch_ops

    mod = generated("diagonal")
    d = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float32, requires_grad=True)
    Y = torch_ops.destructure(mod, diag=d)
    assert Y.dtype == torch.float32
    Y.sum().backward()
    assert d.grad.dtype == torch.float32 and torch.allclose(d.grad, torch.ones(3))
    with pytest.raises(TypeError, match="unknown argument"):
        torch_ops.destructure(mod, dia=d)


def test_torch_ops_uses_the_torch_target_module_beside_any_target(tmp_path):
    torch = pytest.importorskip("torch")
    from rulegen import torch_ops

    from helpers import GENERATED, load_module, run_cli

    mod = generated("toeplitz")
    tmod = torch_ops.torch_module(mod)
    assert tmod._TARGET == "torch" and torch_ops.torch_module(tmod) is tmod
    assert tmod.__file__ == load_module(f"{GENERATED}/torch/toeplitz.py").__file__
    # batches as leading dimensions, no numpy round trip: the graph is torch's own
    col = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    Y = torch_ops.destructure(mod, col=col, row=torch.zeros(4, dtype=torch.float64))
    assert Y.shape == (3, 4, 4) and Y.grad_fn is not None and "Backward" in type(Y.grad_fn).__name__
    y = torch_ops.matvec(tmod, torch.ones(4, dtype=torch.float64), col=col, row=torch.zeros(4, dtype=torch.float64))
    assert y.shape == (3, 4)
    # a module built without --target torch: the error says how to build one
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: Diag2\nsizes: [n]\nfields: {d: [n]}\nsize: [n, n]\ngetindex: \"d[i] if i == j else 0\"\n")
    assert run_cli("build", str(spec), "--out", str(tmp_path / "out")).returncode == 0
    numba_only = load_module(str(tmp_path / "out" / "diag2.py"))
    with pytest.raises(FileNotFoundError, match="--target torch"):
        torch_ops.destructure(numba_only, d=torch.ones(2))
