"""Builders of small native MXNet / Caffe models, run as scripts in the MXNet runtime.

The main test process never imports mxnet: each builder is this file executed by the MXNet
runtime's interpreter (`python _mxnet_models.py <kind> <out>`), writing files the tests read.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from trainer.errors import RuntimeNotInstalledError
from trainer.home import repo_root


def mxnet_python() -> Path:
    """The MXNet runtime's interpreter; a skip (locally) or a failure (CI=1) when missing."""
    from trainer.runtimes import python_for
    try:
        return python_for("mxnet")
    except RuntimeNotInstalledError as err:
        if os.environ.get("CI"):
            raise
        import pytest
        pytest.skip(str(err))


def build(kind: str, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([str(mxnet_python()), __file__, kind, str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo_root())}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


# ------------------------------------------------------------------ runs in the MXNet runtime --

def _gluon(kind: str, out: Path) -> None:
    import mxnet as mx
    import numpy as np
    from mxnet.gluon import nn

    mx.random.seed(0)
    np.random.seed(0)

    class Residual(nn.HybridBlock):
        def __init__(self, channels, **kw):
            super().__init__(**kw)
            with self.name_scope():
                self.conv1 = nn.Conv2D(channels, 3, padding=1, use_bias=False)
                self.bn1 = nn.BatchNorm()
                self.conv2 = nn.Conv2D(channels, 3, padding=1, use_bias=False)
                self.bn2 = nn.BatchNorm()

        def hybrid_forward(self, F, x):
            y = F.relu(self.bn1(self.conv1(x)))
            return F.relu(x + self.bn2(self.conv2(y)))

    net = nn.HybridSequential()
    with net.name_scope():
        if kind == "gluon_cnn_bn":          # digits-sized: 1 channel, 8x8
            net.add(nn.Conv2D(8, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
                    nn.MaxPool2D(2), nn.Conv2D(16, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
                    nn.Flatten(), nn.Dense(32, activation="relu"), nn.Dense(10))
            shape = (1, 1, 8, 8)
        elif kind == "gluon_resnet":
            net.add(nn.Conv2D(8, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
                    Residual(8), Residual(8), nn.GlobalAvgPool2D(), nn.Flatten(), nn.Dense(10))
            shape = (1, 3, 16, 16)
        else:
            raise SystemExit(f"unknown model kind {kind}")
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros(shape))
    # Non-trivial BatchNorm statistics, so a dropped or misnamed one shows in the parity numbers.
    for name, p in net.collect_params().items():
        if name.endswith(("running_mean", "beta")):
            p.set_data(mx.nd.array(np.random.normal(0, 0.3, p.shape)))
        elif name.endswith(("running_var", "gamma")):
            p.set_data(mx.nd.array(np.random.uniform(0.5, 1.5, p.shape)))
    net.hybridize()
    net(mx.nd.zeros(shape))
    net.export(str(out / "model"), epoch=0)
    np.save(out / "shape.npy", np.array(shape))


def _caffe(out: Path) -> None:
    """A hand-built Caffe net: conv+BN+Scale+ReLU, max pool, 1-channel-input conv, fc."""
    import numpy as np
    from mmdnn.conversion.caffe import caffe_pb2

    rng = np.random.default_rng(0)
    prototxt = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { use_global_stats: true eps: 1e-5 } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc" inner_product_param { num_output: 10 } }
"""
    blobs = {
        "conv1": [rng.normal(0, 0.5, (4, 1, 3, 3)), rng.normal(0, 0.1, (4,))],
        "bn1": [rng.normal(0, 0.2, (4,)) * 2.0, rng.uniform(0.5, 1.5, (4,)) * 2.0, np.array([2.0])],
        "scale1": [rng.uniform(0.5, 1.5, (4,)), rng.normal(0, 0.1, (4,))],
        "conv2": [rng.normal(0, 0.3, (6, 4, 3, 3)), rng.normal(0, 0.1, (6,))],
        "fc": [rng.normal(0, 0.2, (10, 6 * 4 * 4)), rng.normal(0, 0.1, (10,))],
    }
    net = caffe_pb2.NetParameter()
    net.name = "tiny"
    for name, arrays in blobs.items():
        layer = net.layer.add()
        layer.name = name
        for arr in arrays:
            blob = layer.blobs.add()
            blob.shape.dim.extend(arr.shape)
            blob.data.extend(arr.astype(np.float32).ravel().tolist())
    (out / "deploy.prototxt").write_text(prototxt)
    (out / "tiny.caffemodel").write_bytes(net.SerializeToString())
    np.savez(out / "blobs.npz", **{f"{k}_{i}": a.astype(np.float32) for k, v in blobs.items() for i, a in enumerate(v)})


if __name__ == "__main__":
    kind, target = sys.argv[1], Path(sys.argv[2])
    _caffe(target) if kind == "caffe_tiny" else _gluon(kind, target)
