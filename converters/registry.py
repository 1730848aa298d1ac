"""Frontends (native framework -> ONNX) and targets (ONNX -> deployable artifact), by name.

The tables hold `"module:attr"` strings, not objects: looking a name up imports only that one
module, so loading the registry never imports torch, tensorflow or mxnet, and a frontend whose
module is missing (or whose runtime is not installed) fails with a clear error when it is asked
for, not before. The tables also carry what `trainer convert --list` and the README's conversion
matrix show, so the matrix is generated without importing any framework.

What a frontend or target is, with its optional hooks and their defaults, is declared in
`converters.base` (Frontend, Target).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from trainer.errors import ConversionError, UnknownNameError


@dataclass(frozen=True)
class Entry:
    ref: str                    # "package.module:attr"
    summary: str                # one line for --list
    runtime: str = "torch"      # the runtime whose interpreter does the work
    # target only: source frontend -> how it is produced; "*" = any frontend via its ONNX
    routes: dict[str, str] = field(default_factory=dict)


FRONTENDS: dict[str, Entry] = {
    "torch": Entry("converters.frontends.torch:TorchFrontend",
                   "torch.onnx dynamo exporter, TorchScript exporter as fallback", "torch"),
    "keras": Entry("converters.frontends.keras:KerasFrontend",
                   "Keras 3 / tf.function -> tf2onnx", "tensorflow"),
    "mxnet": Entry("converters.frontends.mxnet:MXNetFrontend",
                   "mx.onnx.export_model (MXNet runtime)", "mxnet"),
    "mxnet-mmdnn": Entry("converters.frontends.mxnet_mmdnn:MXNetMMdnnFrontend",
                         "MXNet symbol/params -> MMdnn IR -> ONNX (MXNet runtime)", "mxnet"),
    "caffe": Entry("converters.frontends.caffe:CaffeFrontend",
                   "prototxt + caffemodel -> MMdnn IR -> ONNX (no pycaffe)", "mxnet"),
    "onnx": Entry("converters.frontends.onnx:OnnxFrontend",
                  "an ONNX file as given (ONNX Runtime is the reference)", "torch"),
}

TARGETS: dict[str, Entry] = {
    "onnx": Entry("converters.targets.onnx:OnnxTarget", "fp32 ONNX, checked with onnx.checker",
                  routes={"*": "exported ONNX (fp32)"}),
    "onnx-int8": Entry("converters.targets.onnx_int8:OnnxInt8Target",
                       "ONNX Runtime static QDQ int8, calibrated on real samples",
                       routes={"*": "quant_pre_process + quantize_static (QDQ)"}),
    "tflite": Entry("converters.targets.tflite:TFLiteTarget", "TFLite flatbuffer", "tensorflow",
                    routes={"keras": "TFLiteConverter",
                            "*": "onnx2tf, when installed (no LSTM)"}),
    "tflite-int8": Entry("converters.targets.tflite:TFLiteInt8Target",
                         "TFLite flatbuffer, int8 (calibrated on real samples)", "tensorflow",
                         routes={"keras": "TFLiteConverter, full-integer int8"}),
    "pytorch": Entry("converters.targets.pytorch:PyTorchTarget", "PyTorch module (TorchScript)",
                     routes={"caffe": "MMdnn IR -> PyTorch code + weights",
                             "mxnet-mmdnn": "MMdnn IR -> PyTorch code + weights",
                             "*": "onnx2torch (no LSTM/GRU; opset <= 17)"}),
}

_loaded: dict[tuple[str, str], Any] = {}


def _load(kind: str, table: dict[str, Entry], name: str) -> Any:
    if name not in table:
        raise UnknownNameError(kind, name, list(table))
    key = (kind, name)
    if key in _loaded:
        return _loaded[key]
    module_name, _, attr = table[name].ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise ConversionError(f"{kind} {name!r} is registered but its module {module_name} "
                                  f"is not in this installation") from err
        raise ConversionError(f"{kind} {name!r} needs the Python package {err.name!r}, which is "
                              f"not installed here (pip install -e '.[convert]')") from err
    obj = getattr(module, attr, None)
    if obj is None:
        raise ConversionError(f"{kind} {name!r}: {module_name} has no {attr}")
    instance = obj() if isinstance(obj, type) else obj
    _loaded[key] = instance
    return instance


def frontend(name: str):
    """The frontend registered as `name` (UnknownNameError lists the valid names)."""
    return _load("frontend", FRONTENDS, name)


def target(name: str):
    """The target registered as `name` (UnknownNameError lists the valid names)."""
    return _load("target", TARGETS, name)


def check_names(source: str, targets: list[str]) -> None:
    """Fail on an unknown frontend or target before any work is done."""
    if source not in FRONTENDS:
        raise UnknownNameError("frontend (--from)", source, list(FRONTENDS))
    for t in targets:
        if t not in TARGETS:
            raise UnknownNameError("target (--to)", t, list(TARGETS))


def register_frontend(name: str, ref: str, summary: str, runtime: str = "torch") -> None:
    """Add a frontend (e.g. from a plugin): `ref` is "module:attr"."""
    FRONTENDS[name] = Entry(ref, summary, runtime)
    _loaded.pop(("frontend", name), None)


def register_target(name: str, ref: str, summary: str, routes: dict[str, str],
                    runtime: str = "torch") -> None:
    TARGETS[name] = Entry(ref, summary, runtime, routes)
    _loaded.pop(("target", name), None)


def route(source: str, target_name: str) -> str | None:
    """How `target_name` is produced from `source`, or None when it is not."""
    routes = TARGETS[target_name].routes
    return routes.get(source, routes.get("*"))


def matrix() -> list[dict[str, str]]:
    """One row per frontend: {"from": name, "via": summary, <target>: route or ""}."""
    rows = []
    for src, entry in FRONTENDS.items():
        row = {"from": src, "runtime": entry.runtime, "via": entry.summary}
        row.update({t: route(src, t) or "" for t in TARGETS})
        rows.append(row)
    return rows


def matrix_markdown() -> str:
    """The conversion matrix as a Markdown table (README and `trainer convert --list`)."""
    cols = ["from", "runtime", "via", *TARGETS]
    lines = ["| " + " | ".join(f"`--to {c}`" if c in TARGETS else c for c in cols) + " |",
             "|" + "---|" * len(cols)]
    for row in matrix():
        lines.append("| " + " | ".join(_cell(c, row[c]) for c in cols) + " |")
    return "\n".join(lines)


def _cell(col: str, value: str) -> str:
    if col == "from":
        return f"`{value}`"
    if col in TARGETS:
        return value or "-"
    return value


def describe(kind: str) -> list[tuple[str, Entry]]:
    return list((FRONTENDS if kind == "frontend" else TARGETS).items())

