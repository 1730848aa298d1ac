"""The half of the MXNet / MMdnn frontends that runs inside the MXNet runtime.

    <mxnet runtime python> -m converters.frontends._mxnet_worker <command> [--options]

Everything crosses the runtime boundary as files (.npy, .json, .onnx, IR folders). A failure
prints one line `trainer-worker-error: <message>` on stderr and exits 3; the caller turns it
into a ConversionError. This module imports only numpy at the top: it must not pull the
main process's frameworks, and mxnet/mmdnn/onnx are imported per command.

Commands:
  mx-export      symbol.json + .params -> ONNX with mx.onnx.export_model (dynamic batch)
  mx-predict     run the MXNet model natively (parity reference)
  mmdnn-ir       mxnet symbol/params or caffe prototxt/caffemodel -> MMdnn IR (+ fixes)
  ir-onnx        MMdnn IR -> ONNX (+ fixes: NCHW input, dynamic batch, opset upgrade)
  ir-pytorch     MMdnn IR -> PyTorch code + weights
  caffe-predict  run a Caffe net with a numpy implementation of its layers (no pycaffe)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ERROR_PREFIX = "trainer-worker-error: "
ONNX_OPSET = 13          # what MMdnn's opset-6 graphs are upgraded to (ORT rejects opset 6)


class WorkerError(Exception):
    """A failure the user can act on; printed as one line."""


def _first_line(exc: BaseException) -> str:
    """The line of a (possibly multi-line, C++-traceback-laden) message that says what failed."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("Traceback", "File ", "[bt]", "Stack trace"))]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if len(lines) > 1 and "Error" in lines[-1] else lines[0]
    return line.removeprefix("MXNetError: ")[:300]


# -- MXNet: loading -----------------------------------------------------------------------------

def _load_mx(symbol: Path, params: Path):
    import mxnet as mx
    try:
        sym = mx.sym.load(str(symbol))
    except Exception as exc:  # MXNetError or json errors
        raise WorkerError(f"cannot read MXNet symbol {symbol}: {_first_line(exc)}") from exc
    try:
        raw = mx.nd.load(str(params))
    except Exception as exc:
        raise WorkerError(f"cannot read MXNet params {params} (corrupt or not an MXNet .params file): "
                          f"{_first_line(exc)}") from exc
    if not isinstance(raw, dict):
        raise WorkerError(f"MXNet params {params} hold an unnamed list of arrays; save them with "
                          f"HybridBlock.export() or mx.model.save_checkpoint()")
    arg, aux = {}, {}
    for key, value in raw.items():
        kind, _, name = key.partition(":")
        if name and kind == "aux":
            aux[name] = value
        elif name and kind == "arg":
            arg[name] = value
        else:
            (aux if key in sym.list_auxiliary_states() else arg)[key] = value
    missing = [n for n in sym.list_arguments() + sym.list_auxiliary_states()
               if n not in arg and n not in aux and n not in _data_names(sym, arg, aux)]
    if missing:
        raise WorkerError(f"MXNet params {params} lack {len(missing)} parameter(s) of the symbol, "
                          f"e.g. {missing[:3]}: wrong params file for {symbol.name}?")
    return sym, arg, aux


def _data_names(sym, arg, aux) -> list[str]:
    known = set(arg) | set(aux)
    return [n for n in sym.list_arguments() if n not in known
            and not n.endswith(("_weight", "_bias", "_gamma", "_beta", "_label"))]


def cmd_mx_export(a) -> dict:
    import mxnet as mx
    import onnx
    sym, arg, aux = _load_mx(Path(a.symbol), Path(a.params))
    sample = np.load(a.sample)
    data = _data_names(sym, arg, aux)
    if len(data) != 1:
        raise WorkerError(f"the MXNet symbol has {len(data)} data inputs {data}; one is supported")
    shape = list(sample.shape)
    try:
        mx.onnx.export_model(sym, {**arg, **aux}, in_shapes=[shape], in_types=[np.float32],
                             onnx_file_path=a.out, dynamic=True,
                             dynamic_input_shapes=[[None] + shape[1:]])
    except Exception as exc:
        unsupported = _mx_unsupported(sym)
        if unsupported:
            raise WorkerError(f"mx.onnx cannot export ops: {', '.join(unsupported)}") from exc
        raise WorkerError(f"mx.onnx.export_model failed: {_first_line(exc)}") from exc
    model = onnx.load(a.out)
    _drop_weight_inputs(model)
    onnx.checker.check_model(model)
    onnx.save(model, a.out)
    return {"input": model.graph.input[0].name, "outputs": [o.name for o in model.graph.output],
            "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "exporter": f"mx.onnx (mxnet {mx.__version__}, onnx {onnx.__version__})",
            "native_input": data[0]}


def _mx_unsupported(sym) -> list[str]:
    """Every op of the symbol that mx.onnx has no converter for (all at once)."""
    try:
        from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
        known = set().union(*MXNetGraph.registry_.values())    # {opset: {op: converter}}
    except Exception:
        return []
    ops = {node["op"] for node in json.loads(sym.tojson())["nodes"] if node["op"] != "null"}
    return sorted(ops - known)


def _drop_weight_inputs(model) -> None:
    """mx.onnx and MMdnn list every weight as a graph input too: ORT then cannot fold them."""
    weights = {init.name for init in model.graph.initializer}
    for graph_input in [i for i in model.graph.input if i.name in weights]:
        model.graph.input.remove(graph_input)


def cmd_mx_predict(a) -> dict:
    import mxnet as mx
    sym, arg, aux = _load_mx(Path(a.symbol), Path(a.params))
    data = _data_names(sym, arg, aux)
    x = np.load(a.inputs).astype(np.float32)
    # simple_bind allocates every argument (a Module checkpoint's softmax_label included, as
    # zeros: inference ignores it); then the trained values are copied in.
    exe = sym.simple_bind(mx.cpu(), grad_req="null", **{data[0]: x.shape})
    exe.copy_params_from(arg, aux, allow_extra_params=True)
    exe.arg_dict[data[0]][:] = x
    out = exe.forward(is_train=False)[0].asnumpy()
    np.save(a.out, out)
    return {"shape": list(out.shape)}


# -- MMdnn: source -> IR ------------------------------------------------------------------------

def _gluon_to_module_names(sym_json: dict, arg: dict, aux: dict):
    """Gluon names (`conv0_fwd`, `..._running_mean`) -> what MMdnn's MXNet parser looks up.

    MMdnn reads a layer's weights as `<node name>_weight` and BatchNorm statistics as
    `<node name>_moving_mean/var`; Gluon names the node `<prefix>_fwd` and the statistics
    `running_*`.
    """
    renamed = 0

    def fix(name: str) -> str:
        if name.endswith("_running_mean"):
            return name[: -len("_running_mean")] + "_moving_mean"
        if name.endswith("_running_var"):
            return name[: -len("_running_var")] + "_moving_var"
        return name

    for node in sym_json["nodes"]:
        new = node["name"]
        if node["op"] != "null" and new.endswith("_fwd"):
            new = new[: -len("_fwd")]
        new = fix(new)
        if new != node["name"]:
            node["name"] = new
            renamed += 1
    arg = {fix(k): v for k, v in arg.items()}
    aux = {fix(k): v for k, v in aux.items()}
    return sym_json, arg, aux, renamed


def cmd_mmdnn_ir(a) -> dict:
    out = Path(a.ir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "ir"
    notes = []
    sample_shape = list(np.load(a.sample).shape) if a.sample else None
    if a.src == "mxnet":
        import mxnet as mx
        sym, arg, aux = _load_mx(Path(a.symbol), Path(a.params))
        sym_json, arg, aux, renamed = _gluon_to_module_names(json.loads(sym.tojson()), arg, aux)
        if renamed:
            notes.append(f"renamed {renamed} Gluon node/param names (_fwd, running_mean/var) for MMdnn")
        staged = out / "src"
        staged.mkdir(exist_ok=True)
        (staged / "model-symbol.json").write_text(json.dumps(sym_json))
        mx.nd.save(str(staged / "model-0000.params"),
                   {**{f"arg:{k}": v for k, v in arg.items()}, **{f"aux:{k}": v for k, v in aux.items()}})
        from mmdnn.conversion.mxnet.mxnet_parser import MXNetParser
        try:
            parser = MXNetParser((str(staged / "model-symbol.json"), str(staged / "model"), "0",
                                  [int(d) for d in sample_shape[1:]]))
            _quiet(parser.run, str(prefix))
        except Exception as exc:
            raise WorkerError(f"MMdnn cannot parse the MXNet model: {_first_line(exc)}") from exc
    elif a.src == "caffe":
        net, weights = _load_caffe(Path(a.prototxt), Path(a.caffemodel))
        unsupported = sorted({layer.type for layer in net.layer} - MMDNN_CAFFE_LAYERS)
        if unsupported:
            raise WorkerError(f"MMdnn (caffe) unsupported layers: {', '.join(unsupported)}")
        from mmdnn.conversion.caffe.transformer import CaffeTransformer
        from mmdnn.conversion.caffe.writer import JsonFormatter
        try:
            transformer = _quiet(CaffeTransformer, str(a.prototxt), str(a.caffemodel), "tensorflow", None,
                                 phase="test")
            graph = _quiet(transformer.transform_graph)
            data = _quiet(transformer.transform_data)
        except Exception as exc:
            raise WorkerError(f"MMdnn cannot read the Caffe model: {_first_line(exc)}") from exc
        JsonFormatter(graph).dump(str(prefix) + ".json")
        Path(str(prefix) + ".pb").write_bytes(graph.as_graph_def().SerializeToString())
        with open(str(prefix) + ".npy", "wb") as f:
            np.save(f, data)
    else:
        raise WorkerError(f"unknown MMdnn source {a.src!r}")
    notes += _fix_ir(prefix)
    return {"ir": str(out), "notes": notes}


# Caffe layer types MMdnn 0.3.1's caffe frontend maps (mmdnn/conversion/caffe/mapper.py).
MMDNN_CAFFE_LAYERS = {
    "Input", "Data", "Convolution", "Deconvolution", "Pooling", "InnerProduct", "ReLU", "PReLU",
    "ELU", "Sigmoid", "TanH", "Softmax", "BatchNorm", "Scale", "Eltwise", "Concat", "Flatten",
    "Dropout", "LRN", "Split", "Reshape", "Crop", "Slice", "Power", "Bias", "Permute", "Silence",
}


def _fix_ir(prefix: Path) -> list[str]:
    """Repairs of MMdnn IR that its emitters otherwise get wrong (see FINDINGS)."""
    from mmdnn.conversion.common.IR import graph_pb2
    notes = []
    graph = graph_pb2.GraphDef()
    pb, npy, js = (Path(str(prefix) + ext) for ext in (".pb", ".npy", ".json"))
    graph.ParseFromString(pb.read_bytes())
    weights = np.load(npy, allow_pickle=True).item()
    retagged = []
    for node in graph.node:
        # A conv on a 1-channel input has group == in_channels == 1 and is tagged
        # DepthwiseConv; the MXNet parser then stores its kernel as (kh, kw, C_out, 1) and the
        # emitters treat it as depthwise. It is an ordinary conv: (kh, kw, 1, C_out).
        if node.op == "DepthwiseConv":
            kernel = list(node.attr["kernel_shape"].list.i)
            if len(kernel) >= 2 and kernel[-2] == 1 and node.attr["group"].i in (0, 1):
                node.op = "Conv"
                retagged.append(node.name)
                w = weights.get(node.name, {}).get("weights")
                if w is not None and w.ndim == 4 and w.shape[2] != 1 and w.shape[3] == 1:
                    weights[node.name]["weights"] = w.transpose(0, 1, 3, 2)
    reshaped = 0
    for layer in weights.values():
        # Caffe's conv bias and fused BatchNorm/Scale vectors come out as (1,1,1,C); the
        # PyTorch emitter copies them into (C,) tensors.
        for key in ("bias", "scale", "mean", "var"):
            value = layer.get(key) if isinstance(layer, dict) else None
            if value is not None and np.ndim(value) > 1:
                layer[key] = np.asarray(value).reshape(-1)
                reshaped += 1
    if retagged:
        pb.write_bytes(graph.SerializeToString())
        if js.is_file():    # keep the readable copy in step with the graph
            doc = json.loads(js.read_text())
            for node in doc.get("node", []):
                if node.get("name") in retagged:
                    node["op"] = "Conv"
            js.write_text(json.dumps(doc, indent=1))
        notes.append(f"{len(retagged)} one-channel conv(s) mis-tagged DepthwiseConv re-tagged Conv")
    if retagged or reshaped:
        with open(npy, "wb") as f:
            np.save(f, weights)
    if reshaped:
        notes.append(f"{reshaped} bias/BatchNorm vector(s) of shape (1,1,1,C) flattened to (C,)")
    return notes


def _ir_files(ir_dir: Path) -> tuple[str, str]:
    prefix = Path(ir_dir) / "ir"
    pb, npy = Path(str(prefix) + ".pb"), Path(str(prefix) + ".npy")
    if not pb.is_file() or not npy.is_file():
        raise WorkerError(f"{ir_dir} is not an MMdnn IR folder (no ir.pb / ir.npy)")
    return str(pb), str(npy)


def _quiet(fn, *args, **kw):
    """MMdnn prints progress on stdout; keep it off ours (the result JSON goes there)."""
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kw)


def _import_generated(code: Path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"mmdnn_generated_{code.stem}", code)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- MMdnn: IR -> ONNX --------------------------------------------------------------------------

def cmd_ir_onnx(a) -> dict:
    import onnx
    from mmdnn.conversion.onnx.onnx_emitter import OnnxEmitter
    pb, npy = _ir_files(Path(a.ir))
    work = Path(a.out).parent / "mmdnn_onnx"
    work.mkdir(parents=True, exist_ok=True)
    code, weights = work / "kit_onnx.py", work / "kit_onnx.npy"
    try:
        emitter = _quiet(OnnxEmitter, pb, npy)
        _quiet(emitter.run, str(code), str(weights), "test")
        model = _quiet(_import_generated(code).KitModel, str(weights))
    except Exception as exc:
        raise WorkerError(f"MMdnn's ONNX emitter failed: {_first_line(exc)}") from exc
    unknown = sorted({n.op_type for n in model.graph.node if n.op_type in ("UNKNOWN", "")})
    if unknown:
        raise WorkerError(f"MMdnn's ONNX emitter has no mapping for some IR ops: {', '.join(unknown)}")
    _drop_weight_inputs(model)
    model, notes = _nchw_input(model)
    model = _upgrade(model)
    notes.append(f"opset 6 -> {ONNX_OPSET} (onnx.version_converter, stale value_info cleared)")
    model = _dynamic_batch(model, notes)
    onnx.checker.check_model(model)
    onnx.save(model, a.out)
    return {"input": model.graph.input[0].name, "outputs": [o.name for o in model.graph.output],
            "opset": ONNX_OPSET, "notes": notes,
            "exporter": f"mmdnn 0.3.1 (onnx {onnx.__version__})"}


def _nchw_input(model):
    """MMdnn graphs take NHWC batch-1 input and transpose it first: take NCHW like the native model."""
    import onnx
    from onnx import TensorProto, helper
    graph = model.graph
    notes = []
    inputs = list(graph.input)
    initializers = {i.name for i in graph.initializer}
    data = [i for i in inputs if i.name not in initializers]
    if len(data) != 1:
        raise WorkerError(f"MMdnn's ONNX graph has {len(data)} data inputs; one is supported")
    data = data[0]
    dims = [d.dim_value for d in data.type.tensor_type.shape.dim]
    first = next((n for n in graph.node if data.name in n.input), None)
    if (first is not None and first.op_type == "Transpose" and len(dims) == 4
            and list(next(a for a in first.attribute if a.name == "perm").ints) == [0, 3, 1, 2]):
        n, h, w, c = dims
        new_input = helper.make_tensor_value_info(first.output[0], TensorProto.FLOAT, [n or 1, c, h, w])
        graph.node.remove(first)
        graph.input.remove(data)
        graph.input.insert(0, new_input)
        notes.append("input takes NCHW like the native model (MMdnn's NHWC->NCHW Transpose removed)")
    return model, notes


def _dynamic_batch(model, notes: list[str]):
    """Batch dimension of the input -> "N" (after the opset upgrade: it needs int dims)."""
    import onnx
    graph = model.graph
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    for out in graph.output:
        out.type.tensor_type.ClearField("shape")
    del graph.value_info[:]
    if any(node.op_type == "Reshape" for node in graph.node):
        notes.append("graph has Reshape with MMdnn's batch-1 target shape: batch may be fixed at 1")
    else:
        notes.append("batch dimension made dynamic")
    return onnx.shape_inference.infer_shapes(model)


def _upgrade(model):
    import onnx
    from onnx import version_converter
    # Stale shapes (NHWC value_info, batch-less outputs like (10,)) fail the converter's inference.
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    try:
        return version_converter.convert_version(model, ONNX_OPSET)
    except Exception as exc:
        raise WorkerError(f"upgrading MMdnn's opset-6 ONNX to opset {ONNX_OPSET} failed: "
                          f"{_first_line(exc)}") from exc


# -- MMdnn: IR -> PyTorch -----------------------------------------------------------------------

def cmd_ir_pytorch(a) -> dict:
    from mmdnn.conversion.pytorch.pytorch_emitter import PytorchEmitter
    pb, npy = _ir_files(Path(a.ir))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    code, weights = out / "model.py", out / "weights.npy"
    try:
        emitter = _quiet(PytorchEmitter, (pb, npy))
        _quiet(emitter.run, str(code), str(weights), "test")
    except Exception as exc:
        raise WorkerError(f"MMdnn's PyTorch emitter failed: {_first_line(exc)}") from exc
    return {"code": str(code), "weights": str(weights), "layout": "NHWC-IR, NCHW module input"}


# -- Caffe without pycaffe: read with MMdnn's caffe_pb2, run with numpy ---------------------------

def _caffe_pb2():
    from mmdnn.conversion.caffe import caffe_pb2
    return caffe_pb2


def _load_caffe(prototxt: Path, caffemodel: Path):
    from google.protobuf import text_format
    pb2 = _caffe_pb2()
    net = pb2.NetParameter()
    try:
        text_format.Merge(Path(prototxt).read_text(), net)
    except Exception as exc:
        raise WorkerError(f"cannot parse Caffe prototxt {prototxt}: {_first_line(exc)}") from exc
    if net.layers and not net.layer:
        raise WorkerError(f"{prototxt} uses the V1 `layers` format; upgrade it with caffe's upgrade_net_proto_text")
    blob = pb2.NetParameter()
    try:
        blob.ParseFromString(Path(caffemodel).read_bytes())
    except Exception as exc:
        raise WorkerError(f"cannot read Caffe weights {caffemodel} (corrupt or not a .caffemodel): "
                          f"{_first_line(exc)}") from exc
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


def _pair(values, single, default):
    values = list(values)
    if single:
        return (single, single)
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) == 2:
        return tuple(values)
    return (default, default)


def _conv2d(x, w, b, stride, pad, dilation, group):
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


def _pool2d(x, p, pb2):
    n, c, h, w = x.shape
    if p.global_pooling:
        kh, kw, sh, sw, ph, pw = h, w, 1, 1, 0, 0
    else:
        kh, kw = (p.kernel_h, p.kernel_w) if p.kernel_h else (p.kernel_size, p.kernel_size)
        sh, sw = (p.stride_h, p.stride_w) if p.stride_h else (p.stride, p.stride)
        ph, pw = (p.pad_h, p.pad_w) if p.pad_h or p.pad_w else (p.pad, p.pad)
    # Caffe rounds the output size up, then drops a window that starts inside the padding.
    oh = int(np.ceil((h + 2 * ph - kh) / sh)) + 1
    ow = int(np.ceil((w + 2 * pw - kw) / sw)) + 1
    if ph and (oh - 1) * sh >= h + ph:
        oh -= 1
    if pw and (ow - 1) * sw >= w + pw:
        ow -= 1
    out = np.zeros((n, c, oh, ow), dtype=np.float64)
    is_max = p.pool == pb2.PoolingParameter.MAX
    if p.pool not in (pb2.PoolingParameter.MAX, pb2.PoolingParameter.AVE):
        raise WorkerError("Caffe STOCHASTIC pooling has no deterministic reference")
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
            size = (he - hs) * (we - ws)
            hs2, ws2, he2, we2 = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, :, hs2:he2, ws2:we2]
            out[:, :, i, j] = win.max(axis=(2, 3)) if is_max else win.sum(axis=(2, 3)) / size
    return out


def caffe_forward(net, weights, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run a Caffe NetParameter (TEST phase) on `x`; returns every top blob, in float64."""
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
    return blobs


def _l_conv(layer, bottoms, w, pb2):
    p = layer.convolution_param
    kernel = w[0]
    bias = w[1] if p.bias_term and len(w) > 1 else None
    stride = (p.stride_h, p.stride_w) if p.stride_h else _pair(p.stride, 0, 1)
    pad = (p.pad_h, p.pad_w) if p.pad_h or p.pad_w else _pair(p.pad, 0, 0)
    dilation = _pair(p.dilation, 0, 1)
    return [_conv2d(bottoms[0], kernel, bias, stride, pad, dilation, p.group or 1)]


def _l_ip(layer, bottoms, w, pb2):
    p = layer.inner_product_param
    x = bottoms[0].reshape(bottoms[0].shape[0], -1)
    y = x @ (w[0].T if not p.transpose else w[0])
    if p.bias_term and len(w) > 1:
        y = y + w[1].reshape(1, -1)
    return [y]


def _l_bn(layer, bottoms, w, pb2):
    eps = layer.batch_norm_param.eps if layer.batch_norm_param.HasField("eps") else 1e-5
    factor = w[2].reshape(-1)[0] if len(w) > 2 else 1.0
    factor = 0.0 if factor == 0 else 1.0 / factor
    mean, var = w[0] * factor, w[1] * factor
    shape = (1, -1) + (1,) * (bottoms[0].ndim - 2)
    return [(bottoms[0] - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)]


def _l_scale(layer, bottoms, w, pb2):
    shape = (1, -1) + (1,) * (bottoms[0].ndim - 2)
    y = bottoms[0] * w[0].reshape(shape)
    if layer.scale_param.bias_term and len(w) > 1:
        y = y + w[1].reshape(shape)
    return [y]


def _l_eltwise(layer, bottoms, w, pb2):
    p = layer.eltwise_param
    if p.operation == pb2.EltwiseParameter.PROD:
        return [np.prod(bottoms, axis=0)]
    if p.operation == pb2.EltwiseParameter.MAX:
        return [np.max(bottoms, axis=0)]
    coeffs = list(p.coeff) or [1.0] * len(bottoms)
    return [sum(c * b for c, b in zip(coeffs, bottoms))]


def _l_softmax(layer, bottoms, w, pb2):
    axis = layer.softmax_param.axis if layer.softmax_param.HasField("axis") else 1
    z = bottoms[0] - bottoms[0].max(axis=axis, keepdims=True)
    e = np.exp(z)
    return [e / e.sum(axis=axis, keepdims=True)]


def _l_relu(layer, bottoms, w, pb2):
    slope = layer.relu_param.negative_slope
    x = bottoms[0]
    return [np.where(x > 0, x, x * slope)]


_CAFFE_NUMPY = {
    "Input": None,
    "Convolution": _l_conv,
    "InnerProduct": _l_ip,
    "Pooling": lambda layer, b, w, pb2: [_pool2d(b[0], layer.pooling_param, pb2)],
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


def cmd_caffe_predict(a) -> dict:
    net, weights = _load_caffe(Path(a.prototxt), Path(a.caffemodel))
    x = np.load(a.inputs)
    blobs = caffe_forward(net, weights, x)
    last = [layer for layer in net.layer if layer.type != "Input"][-1]
    out = blobs[last.top[0]].astype(np.float32)
    np.save(a.out, out)
    return {"shape": list(out.shape), "output": last.top[0]}


# -- entry point --------------------------------------------------------------------------------

COMMANDS = {
    "mx-export": cmd_mx_export, "mx-predict": cmd_mx_predict, "mmdnn-ir": cmd_mmdnn_ir,
    "ir-onnx": cmd_ir_onnx, "ir-pytorch": cmd_ir_pytorch, "caffe-predict": cmd_caffe_predict,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="converters.frontends._mxnet_worker")
    parser.add_argument("command", choices=sorted(COMMANDS))
    for opt in ("symbol", "params", "sample", "inputs", "out", "ir", "src", "prototxt", "caffemodel",
                "result"):
        parser.add_argument(f"--{opt}")
    a = parser.parse_args(argv)
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
    try:
        result = COMMANDS[a.command](a)
    except WorkerError as exc:
        print(ERROR_PREFIX + str(exc), file=sys.stderr)
        return 3
    except Exception as exc:  # a bug or an unforeseen input: still one line, plus the traceback
        import traceback
        traceback.print_exc()
        print(ERROR_PREFIX + f"{a.command} failed: {type(exc).__name__}: {_first_line(exc)}", file=sys.stderr)
        return 3
    if a.result:
        Path(a.result).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
