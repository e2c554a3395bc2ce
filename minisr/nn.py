"""Modules, as in ``torch.nn``: parameters registered by attribute, ``state_dict``, ``train()/eval()``,
``to(device)``."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from . import functional as F
from . import random as mrandom
from .backends import get_array_module
from .device import to_device
from .tensor import Tensor

__all__ = ["Parameter", "Module", "Conv2d", "ReLU", "LeakyReLU", "PixelShuffle", "Sequential", "Identity"]
__all__ += ["ConvTranspose2d", "PReLU", "Tanh", "Sigmoid"]
__all__ += ["conv_relu", "fusable"]


class Parameter(Tensor):
    """A tensor that a Module registers as trainable (requires_grad=True)."""

    def __init__(self, data, requires_grad: bool = True, dtype=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)


class Module:
    """Base class: assign Parameters and Modules as attributes and they are found by ``parameters()``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               f"before setting {name!r}")
        for store in (self._parameters, self._buffers, self._modules):
            store.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)
        _set_paths(self, name, value)

    def register_buffer(self, name: str, value: Tensor) -> None:
        """A tensor that is state (saved, moved with ``to``) but not trained, e.g. EDSR's RGB mean."""
        self.__setattr__(name, value)
        self._buffers[name] = value
        _set_paths(self, name, value)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} defines no forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---------------------------------------------------------------------------------------------- traversal
    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def children(self):
        return iter(self._modules.values())

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = ""):
        for mod_name, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        for mod_name, m in self.named_modules():
            for name, b in m._buffers.items():
                yield (f"{mod_name}.{name}" if mod_name else name), b

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # -------------------------------------------------------------------------------------------------- state
    def state_dict(self) -> OrderedDict:
        """Name -> NumPy array copy of every parameter and buffer (host memory, ready for ``np.savez``)."""
        out = OrderedDict()
        for name, t in list(self.named_parameters()) + list(self.named_buffers()):
            out[name] = np.array(t.numpy(), copy=True)
        return out

    def load_state_dict(self, state, strict: bool = True) -> None:
        """Copy arrays into the parameters and buffers; names and shapes must match (errors list them)."""
        own = OrderedDict(list(self.named_parameters()) + list(self.named_buffers()))
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for name, t in own.items():
            if name not in state:
                continue
            value = np.asarray(state[name]) if not hasattr(state[name], "device") else state[name]
            if t.ndim == 0 and tuple(value.shape) == (1,):  # a 0-d buffer saved as (1,) by minisr before 2026-12-01
                value = value.reshape(())
            if tuple(value.shape) != t.shape:
                raise ValueError(f"load_state_dict: {name} has shape {tuple(value.shape)} in the state, "
                                 f"{t.shape} in the model")
            data = to_device(value.astype(t.dtype, copy=True), t.device)
            # C order: the optimizer kernels update parameters through flat views (0-d stays 0-d)
            t.data = data if data.flags.c_contiguous else get_array_module(data).ascontiguousarray(data)
            t.grad = None

    # -------------------------------------------------------------------------------------------------- modes
    def train(self, mode: bool = True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def to(self, device=None, dtype=None):
        """Move every parameter and buffer to ``device`` and/or cast to ``dtype`` in place; returns self."""
        for t in list(self.parameters()) + [b for _, b in self.named_buffers()]:
            data = t.data
            if dtype is not None:
                data = data.astype(dtype)
            if device is not None:
                data = to_device(data, device)
            # (ascontiguousarray alone would turn a 0-d buffer, BatchNorm's num_batches_tracked, into shape (1,))
            t.data = data if data.flags.c_contiguous else get_array_module(data).ascontiguousarray(data)
            t.grad = None
        return self

    def double(self):
        return self.to(dtype=np.float64)

    def float(self):
        return self.to(dtype=np.float32)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + (")" if len(lines) == 1 else "\n)")


def _set_paths(owner: Module, attr: str, value) -> None:
    """Module paths as names: a Parameter (or buffer) assigned to ``owner.attr`` gets ``.name`` = its path, e.g.
    ``"body.3.weight"``, which graph views and traces show without ``model=``. A module records its own path in
    ``_path``; attaching a module renames its whole subtree under the new prefix, so the names are those of
    ``named_parameters()`` of the outermost module, whatever order the modules were built in. ``to()`` and
    ``load_state_dict`` keep the same Parameter objects, so the names stay."""
    path = f"{owner.__dict__.get('_path', '')}.{attr}".lstrip(".")
    if isinstance(value, Tensor) and (isinstance(value, Parameter) or attr in owner._buffers):
        value.name = path
    elif isinstance(value, Module):
        for sub, m in value.named_modules(path):
            object.__setattr__(m, "_path", sub)
            for name, t in list(m._parameters.items()) + list(m._buffers.items()):
                if t is not None:
                    t.name = f"{sub}.{name}"


class Conv2d(Module):
    """``Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, init="default",
    std=1e-3, dtype=np.float32)``.

    Weight (out, in, k, k) (OIHW), bias (out,). ``init``:
      * "default": PyTorch's (kaiming_uniform with a = sqrt(5)):
        weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in));
      * "gaussian": weight ~ N(0, std^2), bias 0 (SRCNN's 0.001);
      * "he": weight ~ N(0, 2 / fan_in), bias 0 (He et al., used by VDSR).
    ``padding="same"`` (stride 1) keeps the size: k // 2 on each side for odd kernels, PyTorch's asymmetric
    padding for even ones; ``"valid"`` is 0.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 init="default", std=1e-3, dtype=np.float32):
        super().__init__()
        k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if padding == "same":
            if stride != 1:
                raise ValueError(f"padding='same' needs stride 1 (as in PyTorch), got stride {stride}")
            # odd kernels: k // 2 on each side; even ones: PyTorch's asymmetric "same" (functional.conv2d)
            padding = (k[0] // 2, k[1] // 2) if k[0] % 2 and k[1] % 2 else "same"
        elif padding == "valid":
            padding = 0
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, k
        self.stride, self.padding = stride, padding
        fan_in = in_channels * k[0] * k[1]
        shape = (out_channels, in_channels) + k
        rng = mrandom.generator()
        if init == "default":
            bound = 1.0 / math.sqrt(fan_in)
            w = rng.uniform(-bound, bound, shape)
            b = rng.uniform(-bound, bound, out_channels)
        elif init == "gaussian":
            w, b = rng.normal(0.0, std, shape), np.zeros(out_channels)
        elif init == "he":
            w, b = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape), np.zeros(out_channels)
        else:
            raise ValueError(f"Conv2d init {init!r}: use 'default', 'gaussian' or 'he'")
        self.weight = Parameter(w.astype(dtype))
        self.bias = Parameter(b.astype(dtype)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class ConvTranspose2d(Module):
    """``ConvTranspose2d(in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, bias=True,
    init="default", std=1e-3, dtype=np.float32)``: :func:`minisr.functional.conv_transpose2d`.

    Weight (in, out, kh, kw), bias (out,). ``init``:
      * "default": PyTorch's: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with PyTorch's fan_in for this
        layout, weight.size(1) * kh * kw = out_channels * kh * kw;
      * "gaussian": weight ~ N(0, std^2), bias 0 (FSRCNN's deconvolution: 0.001).
    Output size: (H - 1) stride - 2 padding + k + output_padding.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, bias=True,
                 init="default", std=1e-3, dtype=np.float32):
        super().__init__()
        k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, k
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        shape = (in_channels, out_channels) + k
        fan_in = out_channels * k[0] * k[1]  # torch's _calculate_fan_in_and_fan_out reads weight.size(1)
        rng = mrandom.generator()
        if init == "default":
            bound = 1.0 / math.sqrt(fan_in)
            w = rng.uniform(-bound, bound, shape)
            b = rng.uniform(-bound, bound, out_channels)
        elif init == "gaussian":
            w, b = rng.normal(0.0, std, shape), np.zeros(out_channels)
        else:
            raise ValueError(f"ConvTranspose2d init {init!r}: use 'default' or 'gaussian'")
        self.weight = Parameter(w.astype(dtype))
        self.bias = Parameter(b.astype(dtype)) if bias else None

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, output_padding={self.output_padding}")


class PReLU(Module):
    """``PReLU(num_parameters=1, init=0.25)``: one learnt negative slope, or one per channel, starting at 0.25."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, dtype=np.float32):
        super().__init__()
        self.num_parameters = int(num_parameters)
        self.weight = Parameter(np.full(self.num_parameters, init, dtype=dtype))

    def forward(self, x):
        return F.prelu(x, self.weight)

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}"


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class ReLU(Module):
    """``ReLU(inplace=True)`` overwrites its input (see :func:`minisr.functional.relu`), as in PyTorch."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return F.relu(x, inplace=self.inplace)


def fusable(conv, relu) -> bool:
    """Whether ``relu(conv(x))`` can run as one op, F.conv2d_relu: a Conv2d and a ReLU, as such (not subclasses,
    whose forward may do more)."""
    return type(conv) is Conv2d and type(relu) is ReLU


def conv_relu(conv: Conv2d, relu: ReLU, x):
    """``relu(conv(x))``, as one op (:func:`minisr.functional.conv2d_relu`: the same values and gradients, with
    the bias add, the ReLU and their gradients in the conv's own passes) when :func:`fusable`. Sequential does
    this for a Conv2d followed by a ReLU; models whose forward calls them by hand (SRCNN, EDSR's ResBlock) call
    this instead. ReLU's ``inplace`` makes no difference then: the conv's output is never kept apart."""
    if fusable(conv, relu):
        return F.conv2d_relu(x, conv.weight, conv.bias, conv.stride, conv.padding)
    return relu(conv(x))


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class PixelShuffle(Module):
    def __init__(self, upscale_factor: int):
        super().__init__()
        self.upscale_factor = upscale_factor

    def forward(self, x):
        return F.pixel_shuffle(x, self.upscale_factor)

    def extra_repr(self):
        return f"upscale_factor={self.upscale_factor}"


class Identity(Module):
    def forward(self, x):
        return x


class Sequential(Module):
    """Modules applied in order; children are named "0", "1", ... as in PyTorch."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        modules = list(self._modules.values())
        i = 0
        while i < len(modules):
            if i + 1 < len(modules) and fusable(modules[i], modules[i + 1]):  # a Conv2d and a ReLU: one op
                x = conv_relu(modules[i], modules[i + 1], x)
                i += 2
                continue
            x = modules[i](x)
            i += 1
        return x


# ============================================================================================= classifier modules
__all__ += ["Linear", "Flatten", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm2d", "Dropout"]


class Linear(Module):
    """``Linear(in_features, out_features, bias=True, dtype=np.float32)``: y = x W^T + b, weight (out, in).

    PyTorch's initialisation (kaiming_uniform with a = sqrt(5)): weight and bias ~ U(-1/sqrt(in), 1/sqrt(in)).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features else 0.0
        rng = mrandom.generator()
        self.weight = Parameter(rng.uniform(-bound, bound, (self.out_features, self.in_features)).astype(dtype))
        self.bias = Parameter(rng.uniform(-bound, bound, self.out_features).astype(dtype)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Flatten(Module):
    """``Flatten(start_dim=1, end_dim=-1)``: axes start_dim..end_dim merged into one, (N, C, H, W) -> (N, C*H*W)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        nd = x.ndim
        s, e = self.start_dim % nd, self.end_dim % nd
        if s > e:
            raise ValueError(f"Flatten: start_dim {self.start_dim} comes after end_dim {self.end_dim} "
                             f"for input {x.shape}")
        merged = int(np.prod(x.shape[s:e + 1]))
        return F.reshape(x, x.shape[:s] + (merged,) + x.shape[e + 1:])

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """``AdaptiveAvgPool2d(1)``: the global average, (N, C, H, W) -> (N, C, 1, 1)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class BatchNorm2d(Module):
    """``BatchNorm2d(num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
    dtype=np.float32)``, as PyTorch's: weight 1 and bias 0 (parameters, when affine); buffers running_mean 0,
    running_var 1 and num_batches_tracked (a 0-d float64 count here: minisr tensors hold floats), all in
    ``state_dict`` and checkpoints. ``train()``: batch statistics, running ones updated (momentum=None: the
    cumulative average 1 / num_batches_tracked); ``eval()``: running statistics.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype=np.float32):
        super().__init__()
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        C = self.num_features
        self.weight = Parameter(np.ones(C, dtype=dtype)) if affine else None
        self.bias = Parameter(np.zeros(C, dtype=dtype)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(np.zeros(C, dtype=dtype)))
            self.register_buffer("running_var", Tensor(np.ones(C, dtype=dtype)))
            self.register_buffer("num_batches_tracked", Tensor(np.zeros((), dtype=np.float64)))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"BatchNorm2d: expected a 4-D input (N, C, H, W), got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d({self.num_features}): input {x.shape} has {x.shape[1]} channels")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data[...] += 1  # in place: the buffer stays registered
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked.data)
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if track else None, self.running_var if track else None,
                            self.weight, self.bias, use_batch_stats, factor, self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class Dropout(Module):
    """``Dropout(p=0.5)``: zeroes elements with probability p in training (scaling the rest by 1 / (1 - p)),
    the identity in eval mode; draws from minisr.random's generator (``minisr.manual_seed``)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"Dropout: p must be between 0 and 1, got {p}")
        self.p = float(p)

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"
