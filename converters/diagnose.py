"""Where a conversion broke: per-layer diagnosis of an int8 (QDQ) model against its float model.

int8 (`int8_diagnosis`): ONNX Runtime's `qdq_loss_debug` makes every float tensor of the float
model and of the QDQ model an output (`modify_model_output_intermediate_tensors`), runs both on
the same samples (`collect_activations`) and matches each quantized tensor with its float twin
(`create_activation_matching`). Each tensor gets a figure in dB of signal-to-quantization-noise
(SQNR = 20 log10(|float| / |float - int8|); 40 dB is a relative error of 1 %, 0 dB of 100 %):
the lower of the whole tensor's SQNR and its median channel's (axis 1), because the classic int8
failure - one channel with a range far above the others - leaves the whole-tensor figure high
while every other channel is rounded to nothing.

Error is inherited downstream, so tensors are ranked by the SQNR they LOSE: a tensor's figure
against the worst figure of the quantized tensors it is computed from (capped at the 8-bit ideal,
48 dB, so an input quantized better than that gains nothing). The first node (in graph order)
whose loss reaches JUMP_DB is "where the error jumps", named with its op type, the torch module
the exporter recorded for it (`pkg.torch.onnx.name_scopes`, else its weight's name) and the
tensor it came from. `repair_candidates` turns the ranking into the node sets that keep each
tensor out of int8.
"""
from __future__ import annotations

import ast
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

JUMP_DB = 10.0           # an SQNR loss of 10 dB at one node: its relative error grew ~3x there
IDEAL_DB = 48.0          # 8 bits: ~6 dB per bit; inputs are not credited above it
CAP_DB = 120.0           # identical tensors: report 120 dB rather than infinity
MAX_SAMPLES = 256        # enough to rank layers; the diagnosis costs two runs over these
BATCH = 32
TOP = 10                 # layers listed in the report
# Ops that ORT's QDQ quantizer passes through with their input's scale: a tensor with a bad range
# stays bad through them, so keeping it out of int8 means keeping them (and their consumers) too.
SCALE_SHARING = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Relu", "Clip",
                 "Identity", "Gather", "Slice", "Split", "Resize", "GlobalMaxPool", "Expand", "Tile",
                 "DepthToSpace", "SpaceToDepth", "Pad"}


@dataclass
class _Graph:
    producer: dict[str, object]             # tensor -> node
    consumers: dict[str, list]              # tensor -> nodes
    order: dict[str, int]                   # node name -> position
    initializers: dict[str, int]            # name -> element count
    inputs: set[str]


def _graph(model) -> _Graph:
    producer, consumers, order = {}, {}, {}
    for i, node in enumerate(model.graph.node):
        order[node.name] = i
        for t in node.output:
            producer[t] = node
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    inits = {i.name: int(np.prod(i.dims)) if len(i.dims) else 1 for i in model.graph.initializer}
    return _Graph(producer, consumers, order, inits, {i.name for i in model.graph.input})


def module_of(node, graph: _Graph | None = None) -> str | None:
    """The native layer a node came from: the torch exporter's module scope, else the prefix of
    its weight's name (`head.1.weight` -> `head.1`, tf2onnx's `dense/MatMul` -> `dense`)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)   # a list of strings; literal_eval runs no code
            except (ValueError, SyntaxError):
                break
            if isinstance(scopes, list) and len(scopes) >= 2 and isinstance(scopes[-2], str) and scopes[-2]:
                return scopes[-2]
    if graph is not None:
        for name in node.input:
            if name in graph.initializers and graph.initializers[name] > 1:
                for suffix in (".weight", "/kernel", "/weights", "_weight"):
                    if name.endswith(suffix):
                        return name[: -len(suffix)]
    if "/" in node.name:
        return node.name.rsplit("/", 1)[0]
    return None


def sqnr(f: np.ndarray, q: np.ndarray) -> float:
    """20 log10(|f| / |f - q|) in dB (capped at CAP_DB for equal tensors)."""
    signal = float(np.linalg.norm(f))
    noise = float(np.linalg.norm(f - q))
    if noise == 0.0:
        return CAP_DB
    if signal == 0.0:
        return -CAP_DB
    return max(min(20 * math.log10(signal / noise), CAP_DB), -CAP_DB)


def tensor_figure(f: np.ndarray, q: np.ndarray) -> tuple[float, float | None]:
    """(the tensor's figure: min of whole and median-channel SQNR, its median-channel SQNR)."""
    whole = sqnr(f, q)
    if f.ndim < 2 or f.shape[1] < 2:
        return whole, None
    ff = np.moveaxis(f, 1, 0).reshape(f.shape[1], -1)
    qq = np.moveaxis(q, 1, 0).reshape(f.shape[1], -1)
    per = [sqnr(a, b) for a, b in zip(ff, qq) if np.any(a)]
    if not per:
        return whole, None
    median = float(np.median(per))
    return min(whole, median), median


def _shape_of(model, name: str) -> list[int | None] | None:
    for vi in (*model.graph.value_info, *model.graph.output, *model.graph.input):
        if vi.name == name and vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    return None


def _restore(batches: list[np.ndarray], sizes: list[int], shape: list[int | None] | None) -> np.ndarray:
    """The augmented models flatten every saved tensor: give it back its (batch, C, ...) shape."""
    out = []
    for arr, n in zip(batches, sizes):
        per = arr.size // max(n, 1)
        if shape and len(shape) >= 2 and all(d for d in shape[1:]) and int(np.prod(shape[1:])) == per:
            out.append(arr.reshape(n, *shape[1:]))
        else:
            out.append(arr.reshape(n, -1) if n and arr.size % n == 0 else arr.reshape(1, -1))
    return np.concatenate(out)


class _Reader:
    def __init__(self, name: str, x: np.ndarray):
        self.sizes = [len(x[i:i + BATCH]) for i in range(0, len(x), BATCH)]
        self._it = iter([{name: np.ascontiguousarray(x[i:i + BATCH], np.float32)} for i in range(0, len(x), BATCH)])

    def get_next(self):
        return next(self._it, None)

    def __iter__(self):
        return self._it


def int8_diagnosis(float_model: Path, int8_model: Path, x: np.ndarray, input_name: str,
                   names_from: Path | None = None) -> dict:
    """Each quantized tensor's error against the float model on `x`, ranked by the SQNR lost at
    the node that computes it; the first node where it jumps. `float_model` is the model that was
    quantized (its tensor names are the QDQ model's); `names_from` the exported model, whose node
    metadata names the native modules (the pre-processed one usually keeps it too)."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as qdbg

    x = x[:MAX_SAMPLES]
    with tempfile.TemporaryDirectory(prefix="trainer-diagnose-") as tmp:
        faug, qaug = Path(tmp) / "float.aug.onnx", Path(tmp) / "int8.aug.onnx"
        qdbg.modify_model_output_intermediate_tensors(str(float_model), str(faug))
        qdbg.modify_model_output_intermediate_tensors(str(int8_model), str(qaug))
        reader = _Reader(input_name, x)
        sizes = reader.sizes
        float_acts = qdbg.collect_activations(str(faug), reader)
        qdq_acts = qdbg.collect_activations(str(qaug), _Reader(input_name, x))
    matched = qdbg.create_activation_matching(qdq_acts, float_acts)
    fmodel = onnx.load(str(float_model))
    g = _graph(fmodel)
    scopes = _graph(onnx.load(str(names_from))) if names_from else None

    figures: dict[str, dict] = {}
    for name, m in matched.items():
        if "float" not in m:
            continue
        shape = _shape_of(fmodel, name)
        f = _restore(m["float"], sizes, shape)
        q = _restore(m["post_qdq"], sizes, shape)
        if f.shape != q.shape:
            continue
        fig, median = tensor_figure(f.astype(np.float64), q.astype(np.float64))
        figures[name] = dict(sqnr_db=fig, whole_sqnr_db=sqnr(f, q), median_channel_sqnr_db=median)

    layers = []
    for name, fig in figures.items():
        span, sources = _span(name, g, figures)
        inherited = min([IDEAL_DB] + [figures[s]["sqnr_db"] for s in sources if s in figures])
        main = _main_node(span, g)
        entry = dict(tensor=name, sqnr_db=round(fig["sqnr_db"], 2),
                     relative_error=round(10 ** (-fig["sqnr_db"] / 20), 4),
                     whole_sqnr_db=round(fig["whole_sqnr_db"], 2),
                     median_channel_sqnr_db=None if fig["median_channel_sqnr_db"] is None
                     else round(fig["median_channel_sqnr_db"], 2),
                     loss_db=round(inherited - fig["sqnr_db"], 2), inherited_db=round(inherited, 2),
                     node=main.name if main is not None else None,
                     op_type=main.op_type if main is not None else "(graph input)",
                     module=_module(main, g, scopes),
                     nodes=[n.name for n in span],
                     came_from=sorted(sources) or None,
                     came_from_nodes=[_describe(g.producer.get(t)) for t in sorted(sources)] or None,
                     order=g.order.get(main.name, -1) if main is not None else -1)
        layers.append(entry)
    ranked = sorted(layers, key=lambda e: (-e["loss_db"], e["order"]))
    jumps = sorted([e for e in layers if e["loss_db"] >= JUMP_DB], key=lambda e: e["order"])
    first = jumps[0] if jumps else (ranked[0] if ranked else None)
    return dict(kind="int8", samples=int(len(x)),
                metric=("SQNR in dB (20 log10 |float|/|float-int8|), the lower of the whole tensor's "
                        "and its median channel's; loss = the worst input's figure (capped at 48 dB) "
                        "minus the tensor's"),
                jump_db=JUMP_DB, first_jump=first, sharp=bool(jumps), ranked=ranked,
                summary=_summary(first, bool(jumps)))


def _span(tensor: str, g: _Graph, quantized: dict) -> tuple[list, set[str]]:
    """The nodes computing `tensor` from the nearest quantized tensors (or graph inputs), in graph
    order, and those source tensors."""
    span, sources, todo, seen = [], set(), [tensor], set()
    while todo:
        t = todo.pop()
        node = g.producer.get(t)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        span.append(node)
        for i in node.input:
            if not i or i in g.initializers:
                continue
            if i in quantized or i in g.inputs:
                sources.add(i)
            else:
                todo.append(i)
    return sorted(span, key=lambda n: g.order[n.name]), sources


def _main_node(span: list, g: _Graph):
    """The node of a span that names it: the first one with a weight, else the first."""
    for n in span:
        if any(i in g.initializers and g.initializers[i] > 1 for i in n.input):
            return n
    return span[0] if span else None


def _module(node, g: _Graph, scopes: _Graph | None) -> str | None:
    if node is None:
        return None
    if scopes is not None:
        for t in node.output:
            twin = scopes.producer.get(t)
            if twin is not None and twin.op_type == node.op_type:
                found = module_of(twin, scopes)
                if found:
                    return found
    return module_of(node, g)


def _describe(node) -> str:
    return "graph input" if node is None else f"{node.name}, {node.op_type}"


def _summary(first: dict | None, sharp: bool) -> str:
    if first is None:
        return "no quantized tensor matched the float model"
    where = f"{first['node'] or first['tensor']} ({first['op_type']}" + (
        f", module {first['module']})" if first["module"] else ")")
    src = "" if not first["came_from"] else " from " + ", ".join(
        f"{t} ({n})" for t, n in zip(first["came_from"], first["came_from_nodes"]))
    lead = "int8 error jumps at" if sharp else f"no node loses {JUMP_DB:g} dB; largest loss at"
    return (f"{lead} {where}{src}: {first['sqnr_db']:.1f} dB SQNR (relative error {first['relative_error']:.2g}), "
            f"{first['loss_db']:.1f} dB lost there")


def float_weight_fraction(model_path: Path, nodes: set[str]) -> float:
    """The share of the model's weight elements that belong to `nodes` (kept in float)."""
    import onnx

    g = _graph(onnx.load(str(model_path)))
    total = sum(n for n in g.initializers.values() if n > 1) or 1
    used: set[str] = set()
    for node in onnx.load(str(model_path)).graph.node:
        if node.name in nodes:
            used.update(i for i in node.input if i in g.initializers and g.initializers[i] > 1)
    return sum(g.initializers[i] for i in used) / total


def repair_candidates(float_model: Path, diagnosis: dict) -> list[dict]:
    """For each tensor the diagnosis ranks (most SQNR lost first, only tensors that lost any), the
    nodes that must stay float to keep it out of int8: the nodes computing it, the scale-sharing
    ops it flows through, and the first real consumers (whose quantized input it would be)."""
    import onnx

    g = _graph(onnx.load(str(float_model)))
    out = []
    for e in diagnosis["ranked"]:
        if e["loss_db"] <= 0 or not e["nodes"]:
            continue
        nodes = set(e["nodes"])
        todo = [e["tensor"]]
        seen: set[str] = set()
        while todo:
            t = todo.pop()
            for c in g.consumers.get(t, []):
                if c.name in seen:
                    continue
                seen.add(c.name)
                nodes.add(c.name)
                if c.op_type in SCALE_SHARING:
                    todo.extend(c.output)
        out.append(dict(tensor=e["tensor"], node=e["node"], module=e["module"], loss_db=e["loss_db"],
                        nodes=sorted(nodes, key=lambda n: g.order.get(n, 0))))
    return out


# -- fp32: the exported graph against the native model, layer by layer -------------------------

def scope_of(node) -> str | None:
    """The native layer a node was exported from, or None: the torch module (the dynamo
    exporter's `name_scopes`: the module path, then the op), else tf2onnx's name scope (its
    node names are the TensorFlow op names: `sequential_1/conv2d_1/BiasAdd` -> `sequential_1/conv2d_1`,
    the Keras layer's name last)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)   # data: a list of strings
            except (ValueError, SyntaxError):
                return None
            if isinstance(scopes, list) and len(scopes) >= 2 and isinstance(scopes[-2], str) and scopes[-2]:
                return scopes[-2]
            return None
    name = node.name or ""
    if "/" in name and not name.startswith("/"):      # the torchscript exporter's names start with '/'
        return name.rsplit("/", 1)[0]
    return None


def _as_native(b: np.ndarray, shape: tuple) -> np.ndarray:
    """An ONNX activation in the native layer's layout: tf2onnx computes NHWC convolutions in
    NCHW, so a 4-d activation whose NHWC transpose has the native shape is compared transposed."""
    if b.shape != shape and b.ndim == 4 and b.transpose(0, 2, 3, 1).shape == shape:
        return b.transpose(0, 2, 3, 1)
    return b


def fp32_diagnosis(onnx_path: Path, x: np.ndarray, input_name: str, reference, atol: float, rtol: float,
                   scope=scope_of) -> dict | None:
    """The first layer of the exported model whose output leaves |a-b| <= atol + rtol |a| against
    the native layer's output (`reference(names, x) -> {name: array}`, the frontend's
    `layer_outputs`), in graph order. A layer is what `scope(node)` names (the frontend's
    `layer_scope`: by default a module the exporter recorded on the nodes); its ONNX output is
    the last node of that layer. None when no node names a layer or the frontend gives no
    reference."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as qdbg

    x = x[:MAX_SAMPLES]
    model = onnx.load(str(onnx_path))
    g = _graph(model)
    shaped = onnx.shape_inference.infer_shapes(model)    # each activation's shape (they come flattened)
    last: dict[str, tuple[int, object]] = {}              # scope -> (position, its last node)
    for i, node in enumerate(model.graph.node):           # positions: exporters may leave names empty
        name = scope(node)
        if name:
            last[name] = (i, node)
    if not last:
        return None
    ref = reference(list(last), x)
    if not ref:
        return None
    layer_names = getattr(ref, "layer_names", None) or {}     # a frontend whose scopes are not its layers' names
    with tempfile.TemporaryDirectory(prefix="trainer-diagnose-") as tmp:
        aug = Path(tmp) / "fp32.aug.onnx"
        qdbg.modify_model_output_intermediate_tensors(str(onnx_path), str(aug))
        reader = _Reader(input_name, x)
        acts = qdbg.collect_activations(str(aug), reader)
    layers = []
    for name, (_, node) in sorted(last.items(), key=lambda kv: kv[1][0]):
        out = node.output[0]
        if name not in ref or out not in acts:
            continue
        a = np.asarray(ref[name], np.float64)
        b = _restore(acts[out], reader.sizes, _shape_of(shaped, out)).astype(np.float64)
        if a.size != b.size:
            continue
        b = _as_native(b, a.shape).reshape(-1)
        a = a.reshape(-1)
        diff = np.abs(a - b)
        allowance = atol + rtol * np.abs(a)
        bad = ~(diff <= allowance)
        inputs = [i for i in node.input if i and i not in g.initializers]
        layers.append(dict(module=name, layer=layer_names.get(name), node=node.name or out, op_type=node.op_type, tensor=out,
                           max_abs_diff=float(diff.max()) if diff.size else 0.0,
                           out_of_tolerance=float(bad.mean()) if bad.size else 0.0,
                           passed=not bool(bad.any()),
                           came_from=[f"{i} ({_describe(g.producer.get(i))})" for i in inputs] or None))
    if not layers:
        return None
    first = next((e for e in layers if not e["passed"]), None)
    if first is None:
        summary = (f"every one of {len(layers)} layers within |a-b| <= {atol:g} + {rtol:g}|a| of the native "
                   f"model's (largest max abs diff {max(e['max_abs_diff'] for e in layers):.2g})")
    else:
        src = f" from {', '.join(first['came_from'])}" if first["came_from"] else ""
        layer = f", layer {first['layer']}" if first.get("layer") not in (None, first["module"]) else ""
        summary = (f"fp32 output first leaves the tolerance at {first['node']} ({first['op_type']}, module "
                   f"{first['module']}{layer}){src}: max abs diff {first['max_abs_diff']:.3g}, "
                   f"{first['out_of_tolerance']:.1%} of its elements out of tolerance")
    return dict(kind="fp32", samples=int(len(x)), tolerance=dict(atol=atol, rtol=rtol),
                metric="per layer: max |native - onnx| and the share of elements outside atol + rtol |native|",
                first_divergence=first, layers=layers, summary=summary)


def output_diagnosis(native: np.ndarray, converted: np.ndarray, atol: float, rtol: float) -> dict:
    """Where the outputs differ when no layer can be compared: the worst element (sample, index)
    and the share of elements out of atol + rtol |a| (several outputs: the output that is worst)."""
    if isinstance(native, dict) and isinstance(converted, dict):
        found = {n: output_diagnosis(native[n], converted[n], atol, rtol) for n in native if n in converted}
        name, worst = max(found.items(), key=lambda kv: kv[1].get("out_of_tolerance", 1.0))
        return dict(worst, output=name, summary=f"output {name}: {worst['summary']}")
    a = np.asarray(native, np.float64)
    b = np.asarray(converted, np.float64)
    if a.size != b.size:
        return dict(kind="output", summary=f"output shape {b.shape} differs from native {a.shape}")
    b = b.reshape(a.shape)
    diff = np.abs(a - b)
    diff[~np.isfinite(diff)] = np.inf
    worst = np.unravel_index(int(np.argmax(diff)), a.shape) if diff.size else ()
    bad = ~(diff <= atol + rtol * np.abs(a))
    idx = [int(i) for i in worst]
    return dict(kind="output", worst_index=idx, native=float(a[worst]) if diff.size else None,
                converted=float(b[worst]) if diff.size else None, out_of_tolerance=float(bad.mean()) if bad.size else 0.0,
                summary=(f"no per-layer view for this target; output element {tuple(idx)} differs most "
                         f"({float(a[worst]):.4g} native vs {float(b[worst]):.4g}), "
                         f"{float(bad.mean()):.1%} of elements outside {atol:g} + {rtol:g}|a|") if diff.size
                else "empty output")
