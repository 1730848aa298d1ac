"""MMdnn 0.3.1 inside the MXNet runtime: source -> IR (`mmdnn-ir`, with the IR repairs), IR ->
ONNX (`ir-onnx`: NCHW input, dynamic batch, opset upgrade) and IR -> PyTorch (`ir-pytorch`).

Sources are an MXNet checkpoint (loaded by mxnet_export, Gluon names renamed for MMdnn) or a
Caffe prototxt + caffemodel (read by caffe_reference, no pycaffe). Imports only numpy at the
top; mmdnn/mxnet/onnx are imported per command.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from converters.workers.caffe_reference import load_caffe
from converters.workers.mxnet_export import drop_weight_inputs, load_mx
from converters.workers.server import WorkerError, command, native_error_line, report_versions

ONNX_OPSET = 13          # what MMdnn's opset-6 graphs are upgraded to (ORT rejects opset 6)

report_versions("mmdnn", "protobuf", "onnx")

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


@command("mmdnn-ir", native_errors=True)
def cmd_mmdnn_ir(src: str, ir: str, symbol: str | None = None, params: str | None = None,
                 sample: str | None = None, prototxt: str | None = None, caffemodel: str | None = None) -> dict:
    out = Path(ir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "ir"
    notes = []
    sample_shape = list(np.load(sample).shape) if sample else None
    if src == "mxnet":
        import mxnet as mx
        sym, arg, aux = load_mx(Path(symbol), Path(params))
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
            raise WorkerError(f"MMdnn cannot parse the MXNet model: {native_error_line(exc)}") from exc
    elif src == "caffe":
        net, weights = load_caffe(Path(prototxt), Path(caffemodel))
        unsupported = sorted({layer.type for layer in net.layer} - MMDNN_CAFFE_LAYERS)
        if unsupported:
            raise WorkerError("MMdnn (caffe) unsupported layers", ops=unsupported)
        from mmdnn.conversion.caffe.transformer import CaffeTransformer
        from mmdnn.conversion.caffe.writer import JsonFormatter
        try:
            transformer = _quiet(CaffeTransformer, str(prototxt), str(caffemodel), "tensorflow", None,
                                 phase="test")
            graph = _quiet(transformer.transform_graph)
            data = _quiet(transformer.transform_data)
        except Exception as exc:
            raise WorkerError(f"MMdnn cannot read the Caffe model: {native_error_line(exc)}") from exc
        JsonFormatter(graph).dump(str(prefix) + ".json")
        Path(str(prefix) + ".pb").write_bytes(graph.as_graph_def().SerializeToString())
        with open(str(prefix) + ".npy", "wb") as f:
            np.save(f, data)
    else:
        raise WorkerError(f"unknown MMdnn source {src!r}")
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

@command("ir-onnx", native_errors=True)
def cmd_ir_onnx(ir: str, out: str) -> dict:
    import onnx
    from mmdnn.conversion.onnx.onnx_emitter import OnnxEmitter
    pb, npy = _ir_files(Path(ir))
    work = Path(out).parent / "mmdnn_onnx"
    work.mkdir(parents=True, exist_ok=True)
    code, weights = work / "kit_onnx.py", work / "kit_onnx.npy"
    try:
        emitter = _quiet(OnnxEmitter, pb, npy)
        _quiet(emitter.run, str(code), str(weights), "test")
        model = _quiet(_import_generated(code).KitModel, str(weights))
    except Exception as exc:
        raise WorkerError(f"MMdnn's ONNX emitter failed: {native_error_line(exc)}") from exc
    unknown = sorted({n.op_type for n in model.graph.node if n.op_type in ("UNKNOWN", "")})
    if unknown:
        raise WorkerError(f"MMdnn's ONNX emitter has no mapping for some IR ops: {', '.join(unknown)}")
    drop_weight_inputs(model)
    model, notes = _nchw_input(model)
    model = _upgrade(model)
    notes.append(f"opset 6 -> {ONNX_OPSET} (onnx.version_converter, stale value_info cleared)")
    model = _dynamic_batch(model, notes)
    onnx.checker.check_model(model)
    onnx.save(model, out)
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
                          f"{native_error_line(exc)}") from exc


# -- MMdnn: IR -> PyTorch -----------------------------------------------------------------------

@command("ir-pytorch", native_errors=True)
def cmd_ir_pytorch(ir: str, out: str) -> dict:
    from mmdnn.conversion.pytorch.pytorch_emitter import PytorchEmitter
    pb, npy = _ir_files(Path(ir))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    code, weights = out / "model.py", out / "weights.npy"
    try:
        emitter = _quiet(PytorchEmitter, (pb, npy))
        _quiet(emitter.run, str(code), str(weights), "test")
    except Exception as exc:
        raise WorkerError(f"MMdnn's PyTorch emitter failed: {native_error_line(exc)}") from exc
    return {"code": str(code), "weights": str(weights), "layout": "NHWC-IR, NCHW module input"}

