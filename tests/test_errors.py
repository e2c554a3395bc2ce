"""Bad input gives a clear ValueError / TypeError that names the shapes (or dtypes) involved, never a silent
broadcast."""

from __future__ import annotations

import re

import numpy as np
import pytest

import minisr
import minisr.functional as F
from minisr import Tensor, nn


def T(*shape, dtype=np.float32, grad=False):
    return Tensor(np.ones(shape, dtype=dtype), requires_grad=grad)


def raises(exc, *fragments):
    """pytest.raises whose message must contain every fragment (shapes are written as Python tuples)."""
    return pytest.raises(exc, match=".*".join(re.escape(str(f)) for f in fragments))


# ------------------------------------------------------------------------------------------- tensors and data
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.bool_, np.float16, np.complex64])
def test_non_float_arrays_are_refused(dtype):
    with raises(TypeError, np.dtype(dtype).name):
        Tensor(np.zeros((2, 2), dtype=dtype))


def test_non_array_data_is_refused():
    with raises(TypeError, "str"):
        Tensor("image.png")
    with raises(TypeError, "bool"):
        Tensor(True)
    with raises(TypeError, "dict"):
        Tensor({"a": 1})


def test_accepted_data_keeps_its_float_type():
    assert Tensor(np.zeros(3, np.float64)).dtype == np.float64
    assert Tensor(np.float64(2.0)).dtype == np.float64
    assert Tensor(np.float32(2.0)).dtype == np.float32
    assert Tensor([1, 2, 3]).dtype == np.float32
    assert Tensor(np.arange(3), dtype=np.float64).dtype == np.float64  # an explicit conversion is allowed


def test_backward_on_non_scalar_without_grad():
    x = T(2, 3, grad=True)
    y = x * 2.0
    with raises(ValueError, "scalar", (2, 3)):
        y.backward()
    with raises(ValueError, (3, 2), (2, 3)):
        y.backward(np.ones((3, 2), np.float32))
    y.backward(np.ones((2, 3), np.float32))  # an explicit gradient of the right shape is fine
    np.testing.assert_array_equal(x.grad, np.full((2, 3), 2.0))


def test_backward_without_requires_grad():
    with pytest.raises(RuntimeError, match="requires_grad"):
        (T(2) * 2.0).sum().backward()


# ------------------------------------------------------------------------------------------------ elementwise
@pytest.mark.parametrize("op", ["add", "sub", "mul"])
@pytest.mark.parametrize("sa,sb", [((2, 3), (3,)), ((2, 3), (1, 3)), ((4, 1, 5, 5), (4, 3, 5, 5)),
                                   ((2,), ())])
def test_elementwise_shapes_never_broadcast(op, sa, sb):
    with raises(ValueError, sa, sb):
        getattr(F, op)(T(*sa), T(*sb))
    with raises(ValueError, sb, sa):
        getattr(F, op)(T(*sb), T(*sa))


def test_operators_refuse_arrays_and_mixed_dtypes():
    with raises(TypeError, "ndarray"):
        T(2, 3) + np.ones((2, 3), np.float32)
    with raises(TypeError, "ndarray"):
        np.ones((2, 3), np.float32) * T(2, 3)
    with raises(TypeError, "float32", "float64"):
        T(2, 3) + T(2, 3, dtype=np.float64)
    with raises(TypeError, "tensor"):
        T(2) / T(2)


def test_reshape_names_the_shapes():
    with raises(ValueError, (2, 3), (4, 2)):
        T(2, 3).reshape(4, 2)


# ----------------------------------------------------------------------------------------------------- conv2d
def test_conv2d_wrong_ndim():
    with raises(ValueError, "4-D", (3, 8, 8)):
        F.conv2d(T(3, 8, 8), T(4, 3, 3, 3))
    with raises(ValueError, "4-D", (4, 27)):
        F.conv2d(T(1, 3, 8, 8), T(4, 27))


def test_conv2d_channel_mismatch():
    with raises(ValueError, (2, 3, 8, 8), "3 channels", (4, 1, 3, 3)):
        F.conv2d(T(2, 3, 8, 8), T(4, 1, 3, 3))


def test_conv2d_kernel_bigger_than_input():
    with raises(ValueError, "9x9", "5x5", (1, 1, 5, 5)):
        F.conv2d(T(1, 1, 5, 5), T(2, 1, 9, 9))
    with raises(ValueError, "9x9", "7x7", (1, 1, 5, 5)):
        F.conv2d(T(1, 1, 5, 5), T(2, 1, 9, 9), padding=1)
    assert F.conv2d(T(1, 1, 5, 5), T(2, 1, 9, 9), padding=2).shape == (1, 2, 1, 1)  # exactly fits


def test_conv2d_bias_shape_and_dtypes():
    with raises(ValueError, (3,), (4,), (4, 3, 3, 3)):
        F.conv2d(T(1, 3, 8, 8), T(4, 3, 3, 3), T(3))
    with raises(ValueError, (4, 1), (4,)):
        F.conv2d(T(1, 3, 8, 8), T(4, 3, 3, 3), T(4, 1))
    with raises(TypeError, "float32", "float64"):
        F.conv2d(T(1, 3, 8, 8), T(4, 3, 3, 3, dtype=np.float64))
    with raises(TypeError, "float64", "float32"):
        F.conv2d(T(1, 3, 8, 8), T(4, 3, 3, 3), T(4, dtype=np.float64))


def test_conv2d_stride_and_padding():
    with raises(ValueError, "stride"):
        F.conv2d(T(1, 1, 8, 8), T(1, 1, 3, 3), stride=0)
    with raises(ValueError, "padding"):
        F.conv2d(T(1, 1, 8, 8), T(1, 1, 3, 3), padding=-1)
    with raises(ValueError, "stride"):
        F.conv2d(T(1, 1, 8, 8), T(1, 1, 3, 3), stride=(1, 2, 3))


def test_conv2d_refuses_arrays():
    with raises(TypeError, "conv2d input", "ndarray"):
        F.conv2d(np.ones((1, 1, 5, 5), np.float32), T(1, 1, 3, 3))


# ----------------------------------------------------------------------------------------- other ops, modules
def test_pixel_shuffle_channels_not_divisible():
    with raises(ValueError, "12 channels", (1, 12, 4, 4), "9"):
        F.pixel_shuffle(T(1, 12, 4, 4), 3)
    with raises(ValueError, "4-D", (12, 4, 4)):
        F.pixel_shuffle(T(12, 4, 4), 2)


@pytest.mark.parametrize("loss", [F.mse_loss, F.l1_loss])
def test_loss_shapes_and_target_types(loss):
    with raises(ValueError, (1, 1, 8, 8), (1, 1, 6, 6)):
        loss(T(1, 1, 8, 8), T(1, 1, 6, 6))
    with raises(ValueError, (1, 1, 8, 8), (8, 8)):
        loss(T(1, 1, 8, 8), np.ones((8, 8), np.float32))
    with raises(TypeError, "uint8", (1, 1, 8, 8)):
        loss(T(1, 1, 8, 8), np.ones((1, 1, 8, 8), np.uint8))
    # a float64 array target is cast to the prediction's dtype
    assert loss(T(1, 1, 8, 8), np.ones((1, 1, 8, 8))).dtype == np.float32


def test_smoothness_and_pad_inputs():
    with raises(ValueError, "4-D", (8, 8)):
        F.smoothness_loss(T(8, 8))
    with raises(ValueError, "mode"):
        F.pad(T(1, 1, 4, 4), (1, 1, 1, 1), mode="circular")
    with raises(ValueError, (4, 4)):
        F.pad(T(1, 1, 4, 4), (4, 0, 0, 0), mode="reflect")
    with raises(ValueError, "non-negative"):
        F.pad(T(1, 1, 4, 4), (1, -1, 0, 0))


def test_module_input_errors_name_shapes():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    with raises(ValueError, (1, 1, 8, 8), "3"):
        conv(T(1, 1, 8, 8))
    with raises(ValueError, "init"):
        nn.Conv2d(1, 1, 3, init="xavier")
    with raises(TypeError, "float64", "float32"):
        conv(T(1, 3, 8, 8, dtype=np.float64))


def test_backend_names():
    with raises(ValueError, "cuda"):
        minisr.set_backend("cuda")
    with raises(ValueError, "nope"):
        minisr.get_backend("nope")
