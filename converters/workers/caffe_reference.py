"""Caffe without pycaffe, inside the MXNet runtime: read a prototxt + caffemodel with MMdnn's
`caffe_pb2` and run the net layer by layer with numpy (`caffe-predict`), the parity reference
for caffe models, independent of MMdnn's conversion.

The layer math (`conv2d`, `pool2d`, `inner_product`, ...) is pure numpy in float64 and imports
without MMdnn: only reading protobufs (`load_caffe`, `caffe_forward`) needs `caffe_pb2`.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from converters.workers.server import WorkerError, command, native_error_line

# -- reading Caffe files with MMdnn's caffe_pb2 ---------------------------------------------------

def _caffe_pb2():
    from mmdnn.conversion.caffe import caffe_pb2
    return caffe_pb2


def load_caffe(prototxt: Path, caffemodel: Path):
    """(NetParameter of the prototxt, {layer name: [blobs as float32 arrays]} of the caffemodel)."""
    from google.protobuf import text_format
    pb2 = _caffe_pb2()
    net = pb2.NetParameter()
    try:
        text_format.Merge(Path(prototxt).read_text(), net)
    except Exception as exc:
        raise WorkerError(f"cannot parse Caffe prototxt {prototxt}: {native_error_line(exc)}") from exc
    if net.layers and not net.layer:
        raise WorkerError(f"{prototxt} uses the V1 `layers` format; upgrade it with caffe's upgrade_net_proto_text")
    blob = pb2.NetParameter()
    try:
        blob.ParseFromString(Path(caffemodel).read_bytes())
    except Exception as exc:
        raise WorkerError(f"cannot read Caffe weights {caffemodel} (corrupt or not a .caffemodel): "
                          f"{native_error_line(exc)}") from exc
    weights = {}
    for layer in list(blob.layer) + list(blob.layers):
        arrays = []
        for b in layer.blobs:
            shape = list(b.shape.dim) or [d for d in (b.num, b.channels, b.height, b.width)]
            data = np.asarray(b.data, dtype=np.float32)
            if data.size != int(np.prod(shape)):
                raise WorkerError(f"Caffe weights {caffemodel}: blob of layer {layer.name!r} has {data.size} "
                                  f"values for shape {shape} (truncated or corrupt file)")
            arrays.append(data.reshape(shape))
        weights[layer.name] = arrays
    needs = [layer.name for layer in net.layer if layer.type in _PARAM_LAYERS and layer.name not in weights]
    if needs:
        raise WorkerError(f"Caffe weights {caffemodel} hold no blobs for layer(s) {needs}: "
                          f"wrong or corrupt .caffemodel")
    return net, weights


_PARAM_LAYERS = {"Convolution", "InnerProduct", "BatchNorm", "Scale", "Deconvolution", "PReLU", "Bias"}


# -- the layer math: numpy only, NCHW, float64 --------------------------------------------------

def conv2d(x, w, b, stride, pad, dilation, group):
    """Caffe Convolution: `w` is (C_out, C_in/group, kh, kw); stride/pad/dilation are (h, w) pairs."""
    n, c, h, wd = x.shape
    co, ci, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    ekh, ekw = (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1
    oh = (h + 2 * pad[0] - ekh) // stride[0] + 1
    ow = (wd + 2 * pad[1] - ekw) // stride[1] + 1
    out = np.zeros((n, co, oh, ow), dtype=np.float64)
    cg, og = c // group, co // group
    for g in range(group):
        xs = xp[:, g * cg:(g + 1) * cg]
        ws = w[g * og:(g + 1) * og].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dilation[0]: i * dilation[0] + stride[0] * (oh - 1) + 1: stride[0],
                           j * dilation[1]: j * dilation[1] + stride[1] * (ow - 1) + 1: stride[1]]
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def pool2d(x, kernel, stride, pad, is_max: bool, global_pooling: bool = False):
    """Caffe Pooling (MAX or AVE); kernel/stride/pad are (h, w) pairs, ignored when global."""
    n, c, h, w = x.shape
    if global_pooling:
        kh, kw, sh, sw, ph, pw = h, w, 1, 1, 0, 0
    else:
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    # Caffe rounds the output size up, then drops a window that starts inside the padding.
    oh = int(np.ceil((h + 2 * ph - kh) / sh)) + 1
    ow = int(np.ceil((w + 2 * pw - kw) / sw)) + 1
    if ph and (oh - 1) * sh >= h + ph:
        oh -= 1
    if pw and (ow - 1) * sw >= w + pw:
        ow -= 1
    out = np.zeros((n, c, oh, ow), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
            size = (he - hs) * (we - ws)
            hs2, ws2, he2, we2 = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, :, hs2:he2, ws2:we2]
            out[:, :, i, j] = win.max(axis=(2, 3)) if is_max else win.sum(axis=(2, 3)) / size
    return out


def inner_product(x, w, b=None, transpose: bool = False):
    """Caffe InnerProduct: `w` is (C_out, C_in), or (C_in, C_out) when `transpose`."""
    x = x.reshape(x.shape[0], -1)
    y = x @ (w.T if not transpose else w)
    if b is not None:
        y = y + b.reshape(1, -1)
    return y


def batch_norm(x, mean_sum, var_sum, factor, eps):
    """Caffe BatchNorm (TEST phase): the blobs hold running sums and their scale `factor`."""
    factor = 0.0 if factor == 0 else 1.0 / factor
    mean, var = mean_sum * factor, var_sum * factor
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)


def scale(x, gamma, beta=None):
    """Caffe Scale on axis 1 (what follows a BatchNorm)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = x * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


def eltwise(bottoms, operation: str, coeffs=None):
    """Caffe Eltwise: operation "PROD", "MAX" or "SUM" (with optional per-input coefficients)."""
    if operation == "PROD":
        return np.prod(bottoms, axis=0)
    if operation == "MAX":
        return np.max(bottoms, axis=0)
    coeffs = list(coeffs or []) or [1.0] * len(bottoms)
    return sum(c * b for c, b in zip(coeffs, bottoms))


def softmax(x, axis: int = 1):
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def relu(x, negative_slope: float = 0.0):
    return np.where(x > 0, x, x * negative_slope)


# -- layers: a Caffe LayerParameter's fields -> the math ------------------------------------------

def _pair(values, single, default):
    values = list(values)
    if single:
        return (single, single)
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) == 2:
        return tuple(values)
    return (default, default)


def _l_conv(layer, bottoms, w, pb2):
    p = layer.convolution_param
    kernel = w[0]
    bias = w[1] if p.bias_term and len(w) > 1 else None
    stride = (p.stride_h, p.stride_w) if p.stride_h else _pair(p.stride, 0, 1)
    pad = (p.pad_h, p.pad_w) if p.pad_h or p.pad_w else _pair(p.pad, 0, 0)
    dilation = _pair(p.dilation, 0, 1)
    return [conv2d(bottoms[0], kernel, bias, stride, pad, dilation, p.group or 1)]


def _l_pool(layer, bottoms, w, pb2):
    p = layer.pooling_param
    if p.pool not in (pb2.PoolingParameter.MAX, pb2.PoolingParameter.AVE):
        raise WorkerError("Caffe STOCHASTIC pooling has no deterministic reference")
    kernel = (p.kernel_h, p.kernel_w) if p.kernel_h else (p.kernel_size, p.kernel_size)
    stride = (p.stride_h, p.stride_w) if p.stride_h else (p.stride, p.stride)
    pad = (p.pad_h, p.pad_w) if p.pad_h or p.pad_w else (p.pad, p.pad)
    return [pool2d(bottoms[0], kernel, stride, pad, p.pool == pb2.PoolingParameter.MAX, p.global_pooling)]


def _l_ip(layer, bottoms, w, pb2):
    p = layer.inner_product_param
    return [inner_product(bottoms[0], w[0], w[1] if p.bias_term and len(w) > 1 else None, p.transpose)]


def _l_bn(layer, bottoms, w, pb2):
    eps = layer.batch_norm_param.eps if layer.batch_norm_param.HasField("eps") else 1e-5
    factor = w[2].reshape(-1)[0] if len(w) > 2 else 1.0
    return [batch_norm(bottoms[0], w[0], w[1], factor, eps)]


def _l_scale(layer, bottoms, w, pb2):
    return [scale(bottoms[0], w[0], w[1] if layer.scale_param.bias_term and len(w) > 1 else None)]


def _l_eltwise(layer, bottoms, w, pb2):
    p = layer.eltwise_param
    names = {pb2.EltwiseParameter.PROD: "PROD", pb2.EltwiseParameter.MAX: "MAX"}
    return [eltwise(bottoms, names.get(p.operation, "SUM"), list(p.coeff))]


def _l_softmax(layer, bottoms, w, pb2):
    axis = layer.softmax_param.axis if layer.softmax_param.HasField("axis") else 1
    return [softmax(bottoms[0], axis)]


def _l_relu(layer, bottoms, w, pb2):
    return [relu(bottoms[0], layer.relu_param.negative_slope)]


_CAFFE_NUMPY = {
    "Input": None,
    "Convolution": _l_conv,
    "InnerProduct": _l_ip,
    "Pooling": _l_pool,
    "ReLU": _l_relu,
    "Sigmoid": lambda layer, b, w, pb2: [1.0 / (1.0 + np.exp(-b[0]))],
    "TanH": lambda layer, b, w, pb2: [np.tanh(b[0])],
    "Softmax": _l_softmax,
    "BatchNorm": _l_bn,
    "Scale": _l_scale,
    "Eltwise": _l_eltwise,
    "Concat": lambda layer, b, w, pb2: [np.concatenate(
        b, axis=layer.concat_param.axis if layer.concat_param.HasField("axis") else 1)],
    "Flatten": lambda layer, b, w, pb2: [b[0].reshape(b[0].shape[0], -1)],
    "Dropout": lambda layer, b, w, pb2: [b[0]],
    "Split": lambda layer, b, w, pb2: [b[0]] * len(layer.top),
}


def caffe_forward(net, weights, x: np.ndarray, per_layer: dict | None = None) -> dict[str, np.ndarray]:
    """Run a Caffe NetParameter (TEST phase) on `x`; returns every top blob, in float64. Caffe
    layers often write their top in place (`conv1` -> BatchNorm -> Scale -> ReLU all on blob
    `conv1`): `per_layer`, when given, receives each layer's first top as that layer left it."""
    pb2 = _caffe_pb2()
    blobs: dict[str, np.ndarray] = {}
    inputs = list(net.input)
    for layer in net.layer:
        if layer.type == "Input":
            inputs += list(layer.top)
    if len(inputs) != 1:
        raise WorkerError(f"Caffe net has {len(inputs)} inputs {inputs}; one is supported")
    blobs[inputs[0]] = x.astype(np.float64)
    unsupported = sorted({layer.type for layer in net.layer} - set(_CAFFE_NUMPY))
    if unsupported:
        raise WorkerError(f"no numpy reference for Caffe layer types: {', '.join(unsupported)}")
    for layer in net.layer:
        if any(rule.phase == pb2.TRAIN for rule in layer.include):
            continue
        if layer.type == "Input":
            continue
        bottoms = [blobs[b] for b in layer.bottom]
        w = [a.astype(np.float64) for a in weights.get(layer.name, [])]
        tops = _CAFFE_NUMPY[layer.type](layer, bottoms, w, pb2)
        for name, value in zip(layer.top, tops):
            blobs[name] = value
        if per_layer is not None and tops:
            per_layer[layer.name] = tops[0]
    return blobs


@command("caffe-predict", native_errors=True)
def cmd_caffe_predict(prototxt: str, caffemodel: str, inputs: str, out: str) -> dict:
    net, weights = load_caffe(Path(prototxt), Path(caffemodel))
    x = np.load(inputs)
    blobs = caffe_forward(net, weights, x)
    last = [layer for layer in net.layer if layer.type != "Input"][-1]
    y = blobs[last.top[0]].astype(np.float32)
    np.save(out, y)
    return {"shape": list(y.shape), "output": last.top[0]}


def layers_for_scopes(net, scopes: list[str]) -> dict[str, list[str]]:
    """The Caffe layers whose output each ONNX node name (`scopes`, MMdnn's IR names) stands for:
    the layer of that name, or of that name less MMdnn's `_<n>` split suffix (`fc_1`: the
    InnerProduct `fc` is emitted as Flatten `fc_0` + Gemm `fc_1`), followed by the in-place layers
    right after it that have no node of their own (MMdnn folds a Scale into the BatchNorm before
    it): the node is compared with the blob the last of them leaves."""
    pb2 = _caffe_pb2()
    layers = [layer for layer in net.layer if layer.type != "Input"
              and not any(rule.phase == pb2.TRAIN for rule in layer.include)]
    index = {layer.name: i for i, layer in enumerate(layers)}

    def own(scope: str) -> str | None:
        if scope in index:
            return scope
        base = re.sub(r"_\d+$", "", scope)
        return base if base in index else None

    named = {own(s) for s in scopes} - {None}
    found: dict[str, list[str]] = {}
    for scope in scopes:
        name = own(scope)
        if name is None:
            continue
        i = index[name]
        chain = [name]
        top = list(layers[i].top[:1])
        for later in layers[i + 1:]:
            if later.name in named or list(later.bottom) != top or list(later.top) != top:
                break
            chain.append(later.name)
        found[scope] = chain
    return found


@command("caffe-layer-outputs", native_errors=True)
def cmd_caffe_layer_outputs(prototxt: str, caffemodel: str, inputs: str, layers: list, out: str) -> dict:
    """The numpy reference's output of the Caffe layers the ONNX node names `layers` stand for
    (`layers_for_scopes`) on `inputs`, written to `out` (.npz, `l<i>` for the i-th name answered
    in `layers`, with `names`: the Caffe layer(s) each is, `bn1+scale1` for a fold)."""
    net, weights = load_caffe(Path(prototxt), Path(caffemodel))
    chains = layers_for_scopes(net, list(layers))
    if not chains:
        np.savez(out)
        return {"layers": []}
    per_layer: dict[str, np.ndarray] = {}
    caffe_forward(net, weights, np.load(inputs), per_layer)
    answered = [s for s in chains if chains[s][-1] in per_layer]
    np.savez(out, **{f"l{i}": per_layer[chains[s][-1]].astype(np.float32) for i, s in enumerate(answered)})
    return {"layers": answered, "names": {s: "+".join(chains[s]) for s in answered}}
