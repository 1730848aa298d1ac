"""MXNet -> ONNX with `mx.onnx.export_model`, and the native MXNet model as parity reference,
inside the MXNet runtime: `mx-export`, `mx-predict`. Also the checkpoint loader the MMdnn
commands share. Imports only numpy at the top; mxnet/onnx are imported per command.
"""
from __future__ import annotations

import json
import os
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
    name_nodes(model)
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


def name_nodes(model) -> None:
    """mx.onnx leaves the node of many ops (Conv, MaxPool, ...) unnamed: name each after its first
    output, the MXNet symbol's name for the op's last node, so reports and diagnoses can say it."""
    taken = {node.name for node in model.graph.node}
    for node in model.graph.node:
        if not node.name and node.output and node.output[0] not in taken:
            node.name = node.output[0]
            taken.add(node.name)


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


@command("mx-layer-outputs", native_errors=True)
def cmd_mx_layer_outputs(symbol: str, params: str, inputs: str, layers: list, out: str) -> dict:
    """The outputs of the symbol's internal nodes the exported ONNX names (in `layers`) on
    `inputs`, written to `out` (.npz, `l<i>` for the i-th name answered in `layers`, with
    `names`: the MXNet node each is). mx.onnx names a node's last ONNX tensor after the MXNet
    node (`conv0_fwd`); MMdnn after the node without Gluon's `_fwd` (`conv0`): either is looked
    up among `sym.get_internals()` as `<name>_output` or `<name>_fwd_output`. Names that are no
    MXNet node's output (tensors the exporters add between nodes) are left out."""
    import mxnet as mx
    sym, arg, aux = load_mx(Path(symbol), Path(params))
    data = _data_names(sym, arg, aux)
    x = np.load(inputs).astype(np.float32)
    internals = sym.get_internals()
    outputs = set(internals.list_outputs())
    found: dict[str, str] = {}
    for name in layers:
        hit = next((c for c in (f"{name}_output", f"{name}_fwd_output") if c in outputs), None)
        if hit is not None:
            found[name] = hit
    if not found:
        np.savez(out)
        return {"layers": []}
    probe = mx.sym.Group([internals[hit] for hit in found.values()])
    # MKLDNN's subgraph pass rewrites the graph and then fails to bind a group of internal
    # outputs ("Check failed: in_arg_ctx_map.count"): bind this one probe without it.
    previous = os.environ.get("MXNET_SUBGRAPH_BACKEND")
    os.environ["MXNET_SUBGRAPH_BACKEND"] = "NONE"
    try:
        exe = probe.simple_bind(mx.cpu(), grad_req="null", **{data[0]: x.shape})
    finally:
        if previous is None:
            os.environ.pop("MXNET_SUBGRAPH_BACKEND")
        else:
            os.environ["MXNET_SUBGRAPH_BACKEND"] = previous
    exe.copy_params_from(arg, aux, allow_extra_params=True)
    exe.arg_dict[data[0]][:] = x
    ys = exe.forward(is_train=False)
    np.savez(out, **{f"l{i}": y.asnumpy().astype(np.float32) for i, y in enumerate(ys)})
    return {"layers": list(found), "names": {name: hit[: -len("_output")] for name, hit in found.items()}}
