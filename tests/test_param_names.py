"""Parameters (and buffers) carry their module path in ``.name``, set by nn.Module, so graphs and traces name
layers without ``model=``."""

from __future__ import annotations

import numpy as np

from minisr import Tensor, autograd, nn
from minisr import functional as F
from minisr.models import EDSR, SRCNN, VDSR


def _paths_match(model):
    items = list(model.named_parameters()) + list(model.named_buffers())
    assert items
    return [(path, t.name) for path, t in items if t.name != path]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                                  nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.ReLU()))
        self.head = nn.Conv2d(4, 4, 3, padding=1)
        self.register_buffer("mean", Tensor(np.zeros((1, 1, 1, 1), np.float32)))

    def forward(self, x):
        return self.head(self.body(x))


def test_names_are_module_paths_in_sequential_and_nested_modules():
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 1, 3))
    assert [p.name for p in seq.parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    net = Net()
    assert [p.name for p in net.parameters()] == ["body.0.weight", "body.0.bias", "body.2.0.weight", "head.weight",
                                                 "head.bias"]
    assert net.mean.name == "mean"
    for model in (SRCNN(), VDSR(depth=4, features=8), EDSR(n_resblocks=2, n_feats=8, scale=2)):
        assert _paths_match(model) == []


def test_names_follow_the_outermost_module_and_later_assignments():
    inner = nn.Sequential(nn.Conv2d(1, 2, 3))
    assert inner[0].weight.name == "0.weight"
    outer = nn.Sequential(nn.Identity(), nn.Sequential(nn.Identity(), inner))  # attached after it was built
    assert inner[0].weight.name == "1.1.0.weight"
    inner[0].weight = nn.Parameter(np.zeros((2, 1, 3, 3), np.float32))  # replaced on an attached module
    assert inner[0].weight.name == "1.1.0.weight"
    inner.extra = nn.Conv2d(2, 2, 1)  # a module added to an attached module
    assert inner.extra.bias.name == "1.1.extra.bias"
    assert _paths_match(outer) == []


def test_names_survive_to_and_load_state_dict():
    net = Net()
    state = {k: v + 1 for k, v in net.state_dict().items()}
    net.to(dtype=np.float64)
    net.load_state_dict(state)
    assert _paths_match(net) == []
    moved = net.head.weight.to("cpu")
    assert moved.name == "head.weight"


def test_trace_and_graph_name_layers_without_model():
    net = Net()
    x = Tensor(np.random.default_rng(0).random((1, 1, 6, 6), dtype=np.float32))
    loss = F.mse_loss(net(x), np.zeros((1, 4, 6, 6), np.float32))
    with autograd.trace() as t:  # no model=, no params=
        loss.backward()
    assert [r.layer for r in t.layers("conv2d")] == ["body.0", "body.2.0", "head"]
    dot = autograd.to_dot(loss)
    assert 'label="body.0.weight' in dot and 'label="head.bias' in dot
