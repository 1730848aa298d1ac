"""The numpy Caffe interpreter (converters/workers/caffe_reference.py), the parity reference for
caffe models, checked layer by layer against torch on small random arrays. It runs in the main
venv: the layer math imports without MMdnn's caffe_pb2 (only the MXNet runtime has it)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from converters.workers import caffe_reference as caffe

torch = pytest.importorskip("torch")
F = torch.nn.functional
RNG = np.random.default_rng(11)


def _t(a: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def test_imports_without_mmdnn():
    assert "mmdnn" not in sys.modules and "mxnet" not in sys.modules


@pytest.mark.parametrize("stride,pad,dilation,group", [
    ((1, 1), (0, 0), (1, 1), 1),
    ((2, 2), (1, 1), (1, 1), 1),
    ((2, 1), (1, 2), (1, 1), 1),
    ((1, 1), (2, 2), (2, 2), 1),
    ((1, 1), (1, 1), (1, 1), 2),
    ((2, 2), (2, 1), (2, 1), 4),       # depthwise, strided, dilated, uneven padding
])
def test_conv2d(stride, pad, dilation, group):
    x = RNG.normal(size=(2, 4, 9, 8))
    w = RNG.normal(size=(8, 4 // group, 3, 3))
    b = RNG.normal(size=8)
    got = caffe.conv2d(x, w, b, stride, pad, dilation, group)
    want = F.conv2d(_t(x), _t(w), _t(b), stride=stride, padding=pad, dilation=dilation, groups=group).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-10)
    np.testing.assert_allclose(caffe.conv2d(x, w, None, stride, pad, dilation, group), want - b.reshape(1, -1, 1, 1),
                               atol=1e-10)


@pytest.mark.parametrize("size,kernel,stride,pad", [
    (6, 3, 2, 0),        # ceil: 3 windows where floor gives 2
    (7, 3, 2, 1),
    (5, 2, 2, 1),        # ceil gives 4, the last window would start in the padding: dropped
    (8, 2, 2, 0),
    (7, 3, 3, 1),
])
@pytest.mark.parametrize("is_max", [True, False])
def test_pool2d_with_caffe_ceil_mode(size, kernel, stride, pad, is_max):
    x = RNG.normal(size=(2, 3, size, size + 1))
    got = caffe.pool2d(x, (kernel, kernel), (stride, stride), (pad, pad), is_max)
    if is_max:
        want = F.max_pool2d(_t(x), kernel, stride, pad, ceil_mode=True)
    else:   # Caffe averages over the window clipped to the padded input: torch's count_include_pad
        want = F.avg_pool2d(_t(x), kernel, stride, pad, ceil_mode=True, count_include_pad=True)
    assert got.shape == tuple(want.shape)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-12)


def test_pool2d_output_size_rounds_up():
    x = RNG.normal(size=(1, 1, 6, 6))
    assert caffe.pool2d(x, (3, 3), (2, 2), (0, 0), True).shape == (1, 1, 3, 3)     # floor would be 2x2
    assert caffe.pool2d(RNG.normal(size=(1, 1, 5, 5)), (2, 2), (2, 2), (1, 1), True).shape == (1, 1, 3, 3)


def test_global_pooling():
    x = RNG.normal(size=(2, 3, 5, 4))
    np.testing.assert_allclose(caffe.pool2d(x, (0, 0), (0, 0), (0, 0), True, global_pooling=True),
                               x.max(axis=(2, 3), keepdims=True))
    np.testing.assert_allclose(caffe.pool2d(x, (0, 0), (0, 0), (0, 0), False, global_pooling=True),
                               x.mean(axis=(2, 3), keepdims=True))


def test_inner_product():
    x = RNG.normal(size=(4, 3, 2, 2))                  # flattened to (4, 12) like Caffe
    w, b = RNG.normal(size=(5, 12)), RNG.normal(size=5)
    want = F.linear(_t(x.reshape(4, -1)), _t(w), _t(b)).numpy()
    np.testing.assert_allclose(caffe.inner_product(x, w, b), want, atol=1e-12)
    np.testing.assert_allclose(caffe.inner_product(x, w.T, b, transpose=True), want, atol=1e-12)
    np.testing.assert_allclose(caffe.inner_product(x, w), want - b, atol=1e-12)


def test_batch_norm_then_scale():
    x = RNG.normal(size=(3, 4, 5, 5))
    mean, var = RNG.normal(size=4), RNG.uniform(0.5, 2.0, size=4)
    gamma, beta = RNG.normal(size=4), RNG.normal(size=4)
    factor, eps = 2.5, 1e-5            # Caffe keeps running sums and the factor that scales them
    got = caffe.scale(caffe.batch_norm(x, mean * factor, var * factor, factor, eps), gamma, beta)
    want = F.batch_norm(_t(x), _t(mean), _t(var), _t(gamma), _t(beta), training=False, eps=eps).numpy()
    np.testing.assert_allclose(got, want, atol=1e-10)
    np.testing.assert_allclose(caffe.scale(x, gamma), x * gamma.reshape(1, -1, 1, 1))
    # a zero factor (never-updated statistics) means zero mean and variance
    np.testing.assert_allclose(caffe.batch_norm(x, mean, var, 0.0, eps), x / np.sqrt(eps))
    x2 = RNG.normal(size=(6, 4))       # after an InnerProduct: (N, C)
    want2 = F.batch_norm(_t(x2), _t(mean), _t(var), training=False, eps=eps).numpy()
    np.testing.assert_allclose(caffe.batch_norm(x2, mean, var, 1.0, eps), want2, atol=1e-10)


def test_eltwise():
    a, b, c = (RNG.normal(size=(2, 3, 4, 4)) for _ in range(3))
    np.testing.assert_allclose(caffe.eltwise([a, b, c], "SUM"), a + b + c)
    np.testing.assert_allclose(caffe.eltwise([a, b, c], "SUM", [1.0, -0.5, 2.0]), a - 0.5 * b + 2 * c)
    np.testing.assert_allclose(caffe.eltwise([a, b, c], "PROD"), a * b * c)
    np.testing.assert_allclose(caffe.eltwise([a, b, c], "MAX"), np.maximum(np.maximum(a, b), c))


@pytest.mark.parametrize("axis", [1, 2])
def test_softmax(axis):
    x = RNG.normal(size=(3, 5, 4)) * 20          # large logits: needs the max subtraction
    want = torch.softmax(_t(x), dim=axis).numpy()
    np.testing.assert_allclose(caffe.softmax(x, axis), want, atol=1e-12)
    np.testing.assert_allclose(caffe.softmax(x, axis).sum(axis=axis), 1.0)


def test_relu():
    x = RNG.normal(size=(2, 3, 4, 4))
    np.testing.assert_allclose(caffe.relu(x), F.relu(_t(x)).numpy())
    np.testing.assert_allclose(caffe.relu(x, 0.1), F.leaky_relu(_t(x), 0.1).numpy())
