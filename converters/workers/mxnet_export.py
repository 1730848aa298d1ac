"""MXNet -> ONNX with `mx.onnx.export_model`, and the native MXNet model as parity reference,
inside the MXNet runtime: `mx-export`, `mx-predict`. Also the checkpoint loader the MMdnn
commands share. Imports only numpy at the top; mxnet/onnx are imported per command.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from converters.workers.server import WorkerError, command, native_error_line, report_versions

report_versions("mxnet", "onnx")

# -- MXNet: loading -----------------------------------------------------------------------------

def load_mx(symbol: Path, params: Path):
    import mxnet as mx
    try:
        sym = mx.sym.load(str(symbol))
    except Exception as exc:  # MXNetError or json errors
        raise WorkerError(f"cannot read MXNet symbol {symbol}: {native_error_line(exc)}") from exc
    try:
        raw = mx.nd.load(str(params))
    except Exception as exc:
        raise WorkerError(f"cannot read MXNet params {params} (corrupt or not an MXNet .params file): "
                          f"{native_error_line(exc)}") from exc
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


@command("mx-export", native_errors=True)
def cmd_mx_export(symbol: str, params: str, sample: str, out: str) -> dict:
    import mxnet as mx
    import onnx
    sym, arg, aux = load_mx(Path(symbol), Path(params))
    sample = np.load(sample)
    data = _data_names(sym, arg, aux)
    if len(data) != 1:
        raise WorkerError(f"the MXNet symbol has {len(data)} data inputs {data}; one is supported")
    shape = list(sample.shape)
    try:
        mx.onnx.export_model(sym, {**arg, **aux}, in_shapes=[shape], in_types=[np.float32],
                             onnx_file_path=out, dynamic=True,
                             dynamic_input_shapes=[[None] + shape[1:]])
    except Exception as exc:
        unsupported = _mx_unsupported(sym)
        if unsupported:
            raise WorkerError("mx.onnx cannot export ops", ops=unsupported) from exc
        raise WorkerError(f"mx.onnx.export_model failed: {native_error_line(exc)}") from exc
    model = onnx.load(out)
    drop_weight_inputs(model)
    onnx.checker.check_model(model)
    onnx.save(model, out)
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


def drop_weight_inputs(model) -> None:
    """mx.onnx and MMdnn list every weight as a graph input too: ORT then cannot fold them."""
    weights = {init.name for init in model.graph.initializer}
    for graph_input in [i for i in model.graph.input if i.name in weights]:
        model.graph.input.remove(graph_input)


@command("mx-predict", native_errors=True)
def cmd_mx_predict(symbol: str, params: str, inputs: str, out: str) -> dict:
    import mxnet as mx
    sym, arg, aux = load_mx(Path(symbol), Path(params))
    data = _data_names(sym, arg, aux)
    x = np.load(inputs).astype(np.float32)
    # simple_bind allocates every argument (a Module checkpoint's softmax_label included, as
    # zeros: inference ignores it); then the trained values are copied in.
    exe = sym.simple_bind(mx.cpu(), grad_req="null", **{data[0]: x.shape})
    exe.copy_params_from(arg, aux, allow_extra_params=True)
    exe.arg_dict[data[0]][:] = x
    y = exe.forward(is_train=False)[0].asnumpy()
    np.save(out, y)
    return {"shape": list(y.shape)}

