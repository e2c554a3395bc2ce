"""Tools for studying backprop: the graph behind a tensor, and what flows through it on ``backward()``.

    from minisr import autograd

    loss = F.mse_loss(model(x), target)
    print(autograd.to_dot(loss, model=model))     # Graphviz DOT source of the graph
    autograd.draw(loss, "graph.svg", model=model)  # rendered with `dot` when it is installed, else graph.dot

    with autograd.trace(model=model) as t:
        loss.backward()
    t.table()                                      # per op, in backward order: shapes, gradient norms, time
    t.plot("grads.png")                            # gradient norm per conv2d layer, in forward order, log scale

Nothing in the engine is changed for good: a tensor made by an op carries ``_ctx = (parents, backward_fn, op_name)``,
and :func:`trace` replaces ``Tensor.backward`` only inside its ``with`` block, with a version that wraps every
node's ``backward_fn`` (to time it and to measure the gradient it receives) and then calls the original.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .backends import get_array_module
from .tensor import Tensor, graph_order

__all__ = ["to_dot", "draw", "trace", "Trace", "OpRecord", "graph_nodes", "norm", "parameter_names"]


# ------------------------------------------------------------------------------------------------------- helpers
def norm(a) -> float:
    """The 2-norm of all elements of an array (NumPy or CuPy), as a Python float: ``np.linalg.norm(a.ravel())``."""
    if a is None:
        return float("nan")
    xp = get_array_module(a)
    return float(xp.linalg.norm(a.ravel()))


def parameter_names(model=None, params=None) -> dict[int, str]:
    """``id(tensor) -> name`` from a module's ``named_parameters()`` (and buffers) and/or a ``{name: tensor}`` dict."""
    names: dict[int, str] = {}
    if model is not None:
        for name, p in model.named_parameters():
            names[id(p)] = name
        for name, b in getattr(model, "named_buffers", lambda: [])():
            names.setdefault(id(b), name)
    if params is not None:
        items = params.items() if isinstance(params, dict) else params
        for name, p in items:
            names[id(p)] = name
    return names


def _name_of(t: Tensor, names: dict[int, str]) -> str | None:
    return names.get(id(t)) or getattr(t, "name", None)


def _layer_of(name: str | None) -> str | None:
    """``"body.0.weight"`` -> ``"body.0"`` (the module path of a parameter)."""
    if not name:
        return None
    head, _, last = name.rpartition(".")
    return head if head and last in ("weight", "bias") else name


def graph_nodes(root: Tensor, grad_only: bool = False) -> list[Tensor]:
    """Every tensor the graph of ``root`` reaches (ops and leaves), each after all of its inputs: forward order.

    ``grad_only`` follows only inputs that require gradients, as ``backward()`` does. Iterative, so deep nets need no
    recursion.
    """
    return graph_order(root, grad_only)


def _shape(a) -> tuple:
    return tuple(int(s) for s in a.shape)


def _fmt_shape(shape) -> str:
    return str(tuple(int(s) for s in shape))


def _fmt(v: float | None) -> str:
    return "-" if v is None or v != v else f"{v:.4g}"


# ------------------------------------------------------------------------------------------------------ to_dot
def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def to_dot(tensor: Tensor, params=None, model=None, trace: Trace | None = None, rankdir: str = "TB",
           title: str | None = None) -> str:
    """Graphviz DOT source of the graph that produced ``tensor``.

    One node per op (ellipse: op name, output shape, ``|data|`` the norm of its output and, when ``trace`` recorded a
    backward through it, ``|grad|`` the norm of the gradient it received) and one per leaf (box: its name, shape,
    ``|data|`` and ``|grad|`` from ``.grad`` when set). Parameters are named by module path from ``model`` or from
    ``params`` (a ``{name: tensor}`` dict such as ``dict(model.named_parameters())``, which may also name inputs),
    else by their ``.name``. Leaves that need no gradient (inputs, targets) are drawn dashed. Edges run from inputs to
    the op that uses them, so the graph reads in forward order. The graph freed by ``backward()`` is still drawn: its
    tensors and parents are kept, only the backward closures are dropped.
    """
    names = parameter_names(model, params)
    grads = trace.grad_by_node() if trace is not None else {}
    nodes = graph_nodes(tensor)
    ids = {id(n): f"n{i}" for i, n in enumerate(nodes)}
    lines = ["digraph minisr {", f"  rankdir={rankdir};",
             '  node [fontname="Helvetica", fontsize=10];', '  edge [color="#555555"];']
    if title:
        lines.append(f'  label="{_dot_escape(title)}"; labelloc=t;')
    inputs = 0
    for n in nodes:
        name = _name_of(n, names)
        parts = []
        if n._ctx is None:
            if name is None:
                name = "input" if not n.requires_grad else "leaf"
                if not n.requires_grad:
                    inputs += 1
                    name = f"input {inputs}"
            parts = [name, _fmt_shape(n.shape), f"|data| = {_fmt(norm(n.data))}"]
            if n.grad is not None:
                parts.append(f"|grad| = {_fmt(norm(n.grad))}")
            style = ('shape=box, style="rounded,filled", fillcolor="#dbe9f6"' if n.requires_grad
                     else 'shape=box, style="rounded,dashed"')
        else:
            op = n._ctx[2]
            if name is None:  # an op that uses a named parameter is labelled by its module: "conv2d body.0"
                layer = next((_layer_of(_name_of(p, names)) for p in n._ctx[0]
                              if p._ctx is None and _name_of(p, names)), None)
                name = f"{op} {layer}" if layer else op
            parts = [name, _fmt_shape(n.shape), f"|data| = {_fmt(norm(n.data))}"]
            if id(n) in grads:
                parts.append(f"|grad| = {_fmt(grads[id(n)])}")
            style = 'shape=ellipse, style=filled, fillcolor="#fde9c9"'
            if n is tensor:
                style = 'shape=ellipse, style=filled, fillcolor="#f6c4c4"'
        label = "\\n".join(_dot_escape(p) for p in parts)
        lines.append(f'  {ids[id(n)]} [label="{label}", {style}];')
    for n in nodes:
        if n._ctx is not None:
            for p in n._ctx[0]:
                lines.append(f"  {ids[id(p)]} -> {ids[id(n)]};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw(tensor: Tensor, path, params=None, model=None, trace: Trace | None = None, rankdir: str = "TB",
         title: str | None = None) -> Path:
    """Render :func:`to_dot` to ``path`` (format from its suffix: .svg, .png, .pdf) with Graphviz's ``dot``.

    When ``dot`` is not installed (``shutil.which("dot")`` finds nothing), or the path ends in ``.dot``, the DOT source
    is written next to it as ``<stem>.dot`` and a note says how to render it. Returns the path written.
    """
    path = Path(path)
    source = to_dot(tensor, params=params, model=model, trace=trace, rankdir=rankdir, title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    dot = shutil.which("dot")
    fmt = path.suffix.lstrip(".").lower()
    if fmt == "dot" or fmt == "gv" or dot is None:
        out = path if fmt in ("dot", "gv") else path.with_suffix(".dot")
        out.write_text(source)
        if fmt not in ("dot", "gv"):
            print(f"note: Graphviz 'dot' is not installed; wrote the DOT source to {out} "
                  f"(render it with: dot -T{fmt or 'svg'} {out} -o {path})", file=sys.stderr)
        return out
    res = subprocess.run([dot, f"-T{fmt}", "-o", str(path)], input=source.encode(), capture_output=True)
    if res.returncode != 0:
        raise RuntimeError(f"dot -T{fmt} failed ({res.returncode}): {res.stderr.decode(errors='replace').strip()}")
    return path


# ------------------------------------------------------------------------------------------------------- trace
@dataclass
class OpRecord:
    """One op's backward, as :func:`trace` saw it.

    ``grad_norm`` is the norm of dE/d(output), the gradient the op received; ``input_grad_norms`` the norms of the
    gradients it passed to each input (None where it computed none); ``param`` the module path of its first parameter
    input (e.g. ``"body.0.weight"``), ``layer`` that path without ``.weight``; ``index`` its position in forward order
    within the traced graph; ``call`` which ``backward()`` inside the block it belongs to.
    """

    op: str
    out_shape: tuple
    in_shapes: list
    grad_norm: float
    input_grad_norms: list
    seconds: float
    index: int
    call: int
    param: str | None = None
    layer: str | None = None
    param_grad_norm: float | None = None
    node_id: int = field(default=0, repr=False)

    @property
    def label(self) -> str:
        return f"{self.op} {self.layer}" if self.layer else f"{self.op} #{self.index}"


class Trace:
    """What :func:`trace` recorded: ``records`` (one :class:`OpRecord` per op, in backward order)."""

    def __init__(self, names: dict[int, str] | None = None):
        self.records: list[OpRecord] = []
        self.calls = 0
        self._names = names or {}
        self._saved = None

    # --- the patch ---
    def _install(self) -> None:
        original = Tensor.backward  # (a plain function: looked up on the class)
        self._saved = (original, "backward" in Tensor.__dict__)
        tr = self

        def backward(tensor, grad=None):
            return tr._traced_backward(original, tensor, grad)

        backward.__doc__ = original.__doc__
        backward.__wrapped__ = original
        Tensor.backward = backward

    def _uninstall(self) -> None:
        if self._saved is not None:
            original, own = self._saved
            if own:
                Tensor.backward = original
            else:  # it was inherited: remove the patch to uncover it again
                del Tensor.backward
            self._saved = None

    def _traced_backward(self, original, root: Tensor, grad=None):
        call = self.calls
        self.calls += 1
        ops = [n for n in graph_nodes(root, grad_only=True) if n._ctx is not None and n._ctx[1] is not None]
        wrapped = {}
        for index, node in enumerate(ops):
            parents, fn, op = node._ctx
            w = self._wrap(node, fn, index, call)
            wrapped[id(node)] = (fn, w)
            node._ctx = (parents, w, op)
        try:
            return original(root, grad)
        finally:  # nodes the sweep did not reach (or reached before an error) get their own backward back
            for node in ops:
                if node._ctx is not None and id(node) in wrapped:
                    fn, w = wrapped[id(node)]
                    if node._ctx[1] is w:
                        node._ctx = (node._ctx[0], fn, node._ctx[2])

    def _wrap(self, node: Tensor, fn, index: int, call: int):
        parents, _, op = node._ctx
        out_shape = node.shape
        in_shapes = [p.shape for p in parents]
        param_i = _param_index(op, parents, self._names)
        param = _name_of(parents[param_i], self._names) if param_i is not None else None
        node_id = id(node)
        records = self.records

        def backward_fn(g):
            t0 = time.perf_counter()
            out = fn(g)
            seconds = time.perf_counter() - t0
            in_norms = [None if a is None else norm(a) for a in out]
            records.append(OpRecord(op=op, out_shape=out_shape, in_shapes=in_shapes, grad_norm=norm(g),
                                    input_grad_norms=in_norms, seconds=seconds, index=index, call=call, param=param,
                                    layer=_layer_of(param),
                                    param_grad_norm=in_norms[param_i] if param_i is not None else None,
                                    node_id=node_id))
            return out

        return backward_fn

    # --- reading it ---
    def __len__(self):
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def _call(self, call):
        if not self.records:
            return []
        if call is None:
            return list(self.records)
        c = call if call >= 0 else self.calls + call
        return [r for r in self.records if r.call == c]

    def grad_by_node(self) -> dict[int, float]:
        """``id(op output) -> norm of the gradient it received`` (the last backward through it)."""
        return {r.node_id: r.grad_norm for r in self.records}

    def total_seconds(self, call=None) -> float:
        return sum(r.seconds for r in self._call(call))

    def layers(self, op: str | None = "conv2d", call: int | None = -1) -> list[OpRecord]:
        """The records of ``op`` (every op if None) of one backward call (the last by default; None: all), in
        forward order. ``"conv2d"`` includes ``conv2d_relu`` (a Conv2d followed by a ReLU, run as one op: its
        |dE/d out| is the gradient of its output after the ReLU)."""
        ops = _OP_FAMILIES.get(op, (op,))
        return sorted((r for r in self._call(call) if op is None or r.op in ops), key=lambda r: (r.call, r.index))

    def table(self, call: int | None = None, show: bool = True) -> str:
        """A text table, one row per op in backward order: op, layer, output and input shapes, the norm of
        dE/d(output), the norm of the gradient of its parameter, and its backward time. Printed when ``show``."""
        rows = self._call(call)
        head = ["#", "op", "layer", "output", "inputs", "|dE/d out|", "|dE/d param|", "ms"]
        body = [[str(i), r.op, r.layer or "", _fmt_shape(r.out_shape), " ".join(_fmt_shape(s) for s in r.in_shapes),
                 _fmt(r.grad_norm), _fmt(r.param_grad_norm), f"{r.seconds * 1e3:.2f}"] for i, r in enumerate(rows)]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        right = {0, 5, 6, 7}

        def line(cells):
            return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        out = [line(head), "-" * (sum(widths) + 2 * (len(widths) - 1))]
        out += [line(r) for r in body]
        calls = len({r.call for r in rows})
        out.append(f"{len(rows)} ops in {calls} backward call{'s' if calls != 1 else ''}, "
                   f"{sum(r.seconds for r in rows) * 1e3:.1f} ms in op backwards")
        text = "\n".join(out)
        if show:
            print(text)
        return text

    def __str__(self) -> str:
        return self.table(show=False)

    def plot(self, path=None, op: str | None = "conv2d", call: int | None = -1, ax=None, label: str | None = None,
             param: bool = True, title: str | None = None):
        """Draw the gradient norm per layer (records of ``op``, in forward depth order) on a log scale.

        Solid: |dE/d(output)| of each layer; dashed (``param``): |dE/d(weight)|. Writes a PNG to ``path`` (returned)
        or draws into an existing matplotlib ``ax`` (returned), with ``label`` prefixing the legend entries. ``call``
        picks the backward call (the last by default; None averages all of them per layer).
        """
        recs = self.layers(op, call)
        if call is None:  # mean per layer over the calls
            by: dict[int, list[OpRecord]] = {}
            for r in recs:
                by.setdefault(r.index, []).append(r)
            xs = sorted(by)
            g = [sum(r.grad_norm for r in by[i]) / len(by[i]) for i in xs]
            pg = [_mean_or_none([r.param_grad_norm for r in by[i]]) for i in xs]
            names = [by[i][0].layer or f"{by[i][0].op} #{i}" for i in xs]
        else:
            g = [r.grad_norm for r in recs]
            pg = [r.param_grad_norm for r in recs]
            names = [r.layer or f"{r.op} #{r.index}" for r in recs]
        if not g:
            raise ValueError(f"trace.plot: no {op or 'op'} records to draw (was backward() called inside the block?)")
        fig = None
        if ax is None:
            from matplotlib.figure import Figure

            fig = Figure(figsize=(max(6.0, 0.35 * len(g) + 3), 4.0))
            ax = fig.add_subplot(1, 1, 1)
        pre = f"{label}: " if label else ""
        x = list(range(1, len(g) + 1))
        line = ax.plot(x, g, "o-", label=f"{pre}|dE/d output|")[0]
        if param and any(v is not None for v in pg):
            ax.plot(x, [float("nan") if v is None else v for v in pg], "s--", color=line.get_color(), alpha=0.7,
                    label=f"{pre}|dE/d weight|")
        ax.set_yscale("log")
        ax.set_xlabel(f"{op or 'op'} layer (forward order)")
        ax.set_ylabel("gradient norm")
        if len(names) <= 24:
            ax.set_xticks(x)
            ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        if title:
            ax.set_title(title)
        if fig is None:
            return ax
        fig.tight_layout()
        path = Path(path if path is not None else "grads.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        return path


_OP_FAMILIES = {"conv2d": ("conv2d", "conv2d_relu")}  # Trace.layers(op): the ops that count as op


def _param_index(op: str, parents, names: dict[int, str]) -> int | None:
    """Which input of an op is "its parameter": a conv's weight; else the first nn.Parameter, else the first named
    leaf that needs a gradient, else the first such leaf."""
    def trainable_leaf(p):
        return p._ctx is None and p.requires_grad

    if op in _OP_FAMILIES["conv2d"] and len(parents) > 1 and trainable_leaf(parents[1]):
        return 1
    from .nn import Parameter

    for test in (lambda p: isinstance(p, Parameter), lambda p: _name_of(p, names) is not None, lambda p: True):
        i = next((i for i, p in enumerate(parents) if trainable_leaf(p) and test(p)), None)
        if i is not None:
            return i
    return None


def _mean_or_none(values):
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


@contextlib.contextmanager
def trace(model=None, params=None):
    """``with trace(model=model) as t: loss.backward()`` records every op's backward (see :class:`Trace`).

    Inside the block ``Tensor.backward`` is a wrapper that, before the usual sweep, wraps each op's backward function
    to time it and measure the gradients; on leaving the block (also on an exception) ``Tensor.backward`` is the
    original again. ``model`` / ``params`` name the parameters (module paths) in the records.
    """
    t = Trace(parameter_names(model, params))
    t._install()
    try:
        yield t
    finally:
        t._uninstall()
