"""minisr.autograd: the DOT graph view and the backward trace, on a small conv net."""

import re

import numpy as np
import pytest

import minisr
from minisr import Tensor, autograd, nn
from minisr import functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.relu(self.conv1(x)))


def small_graph(dtype=np.float64):
    minisr.manual_seed(0)
    model = Net().to(dtype=dtype)
    rng = np.random.default_rng(0)
    x = Tensor(rng.random((2, 1, 6, 6)).astype(dtype))
    target = Tensor(rng.random((2, 1, 6, 6)).astype(dtype))
    out = model(x)
    loss = F.mse_loss(out, target)
    return model, x, target, out, loss


def node_labels(dot: str) -> dict[str, str]:
    return dict(re.findall(r'^\s*(n\d+) \[label="([^"]*)"', dot, flags=re.M))


def test_to_dot_nodes_edges_and_leaf_names():
    model, x, target, out, loss = small_graph()
    dot = autograd.to_dot(loss, model=model)
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    labels = node_labels(dot)
    # ops: conv2d, relu, conv2d, mse_loss; leaves: x, 4 parameters, target
    assert len(labels) == 10
    firsts = sorted(label.split("\\n")[0] for label in labels.values())
    assert sorted(f for f in firsts if f.split()[0] in ("conv2d", "relu", "mse_loss")) == [
        "conv2d conv1", "conv2d conv2", "mse_loss", "relu"]
    for name in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"):
        assert name in firsts
    assert len(re.findall(r"->", dot)) == 9  # 3 + 1 + 3 inputs of the ops, 2 of the loss
    assert sum(1 for f in firsts if f.startswith("input")) == 2
    # the same names from a params dict, and the shapes and data norms in the labels
    dot2 = autograd.to_dot(loss, params=dict(model.named_parameters()))
    assert dot2 == dot
    w_label = next(v for v in labels.values() if v.startswith("conv1.weight"))
    assert "(3, 1, 3, 3)" in w_label
    assert f"|data| = {np.linalg.norm(model.conv1.weight.data):.4g}" in w_label
    assert "|grad|" not in w_label  # no backward yet


def test_to_dot_gradient_norms_after_backward():
    model, x, target, out, loss = small_graph()
    with autograd.trace(model=model) as t:
        loss.backward()
    dot = autograd.to_dot(loss, model=model, trace=t)
    labels = node_labels(dot)
    for name, p in model.named_parameters():
        label = next(v for v in labels.values() if v.split("\\n")[0] == name)
        assert f"|grad| = {np.linalg.norm(p.grad):.4g}" in label
    out_label = next(v for v in labels.values() if v.startswith("conv2d conv2"))
    g_out = 2 * (out.data - target.data) / out.size  # dE/d(out) of the mean squared error
    assert f"|grad| = {np.linalg.norm(g_out):.4g}" in out_label


def test_trace_records_in_backward_order_with_exact_norms():
    model, x, target, out, loss = small_graph()
    original = Tensor.backward
    with autograd.trace(model=model) as t:
        assert Tensor.backward is not original
        loss.backward()
    assert Tensor.backward is original
    assert [r.op for r in t.records] == ["mse_loss", "conv2d", "relu", "conv2d"]
    assert [r.layer for r in t.records] == [None, "conv2", None, "conv1"]
    mse, conv2, relu, conv1 = t.records
    assert mse.grad_norm == 1.0 and mse.out_shape == () and mse.in_shapes == [(2, 1, 6, 6), (2, 1, 6, 6)]
    assert conv2.out_shape == (2, 1, 6, 6) and conv2.in_shapes == [(2, 3, 6, 6), (1, 3, 3, 3), (1,)]
    g_out = 2 * (out.data - target.data) / out.size
    assert conv2.grad_norm == pytest.approx(np.linalg.norm(g_out), rel=1e-12)
    # each op's parameter-gradient norm is the norm of the parameter's .grad (every parameter is used once)
    assert conv2.param == "conv2.weight" and conv1.param == "conv1.weight"
    assert conv2.param_grad_norm == pytest.approx(np.linalg.norm(model.conv2.weight.grad), rel=1e-12)
    assert conv1.param_grad_norm == pytest.approx(np.linalg.norm(model.conv1.weight.grad), rel=1e-12)
    assert conv1.input_grad_norms[0] is None  # x needs no gradient, so none was computed
    assert conv1.input_grad_norms[2] == pytest.approx(np.linalg.norm(model.conv1.bias.grad), rel=1e-12)
    # the gradient relu received is the one conv2 passed to its input
    assert relu.grad_norm == pytest.approx(conv2.input_grad_norms[0], rel=1e-12)
    assert all(r.seconds >= 0 for r in t.records)
    assert [r.index for r in t.layers("conv2d")] == [0, 2]  # forward order
    text = t.table(show=False)
    assert "mse_loss" in text and "conv1" in text and "4 ops in 1 backward call" in text


def test_trace_leaves_gradients_identical_to_plain_backward():
    model, *_, loss = small_graph()
    loss.backward()
    plain = {n: p.grad.copy() for n, p in model.named_parameters()}
    model2, *_, loss2 = small_graph()
    with autograd.trace(model=model2):
        loss2.backward()
    for n, p in model2.named_parameters():
        np.testing.assert_array_equal(p.grad, plain[n])


def test_trace_restores_backward_on_exception():
    model, *_, loss = small_graph()
    original = Tensor.backward
    with pytest.raises(ZeroDivisionError):
        with autograd.trace(model=model):
            loss.backward()
            raise ZeroDivisionError("an error inside the block")
    assert Tensor.backward is original
    # a backward that fails inside the sweep also restores, and leaves no wrapped closures behind
    model, x, target, out, loss = small_graph()
    parents, fn, op = out._ctx

    def broken(g):
        raise RuntimeError("boom")

    out._ctx = (parents, broken, op)
    with pytest.raises(RuntimeError, match="boom"):
        with autograd.trace(model=model) as t:
            loss.backward()
    assert Tensor.backward is original
    assert [r.op for r in t.records] == ["mse_loss"]
    assert out._ctx[1] is broken  # never run to completion: the original closure is back


def test_trace_several_calls_and_plot(tmp_path):
    model, *_, loss = small_graph()
    with autograd.trace(model=model) as t:
        loss.backward()
        _, _, _, _, loss2 = small_graph()
        loss2.backward()  # another graph (other parameters): a second call
    assert t.calls == 2 and len(t.records) == 8
    assert len(t.layers("conv2d", call=-1)) == 2 and len(t.layers("conv2d", call=None)) == 4
    path = t.plot(tmp_path / "grads.png")
    assert path.is_file() and path.stat().st_size > 1000


def test_draw_writes_dot_without_graphviz(tmp_path, monkeypatch):
    model, *_, loss = small_graph()
    monkeypatch.setattr(autograd.shutil, "which", lambda name: None)
    path = autograd.draw(loss, tmp_path / "g.svg", model=model)
    assert path == tmp_path / "g.dot"
    assert path.read_text() == autograd.to_dot(loss, model=model)
