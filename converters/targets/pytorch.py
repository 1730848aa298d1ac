"""`--to pytorch`: a PyTorch module that needs nothing but torch to load.

Two routes:
- MMdnn IR (frontends that set `ExportResult.extras["mmdnn_ir"]`, i.e. caffe and mxnet-mmdnn):
  `converters.frontends.mmdnn_ir.to_pytorch(ir_dir, out_dir)` writes `model.py` (class
  `KitModel(weight_file)`) + `weights.npy`; the artifact is that `model.py`.
- Anything else: the exported ONNX through onnx2torch, traced to TorchScript (`model.pt`).

onnx2torch's package imports torchvision for its NMS / RoIAlign converters; the torchvision
wheel on PyPI is built against CUDA torch and does not import with the CPU torch wheel, so
onnx2torch is installed with `--no-deps` and, when torchvision cannot be imported, loaded with
a placeholder module: graphs with NonMaxSuppression / RoiAlign then fail to convert with a
clear error, everything else converts.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Callable

import numpy as np

from converters.base import Built, ExportResult, Target
from trainer.errors import ConversionError, UnsupportedOpsError, first_line

# The hook for the MMdnn IR route ("module:function"); kept as a string so this module never
# imports the MXNet-side code unless a caffe/mxnet-mmdnn export asks for it.
MMDNN_IR_TO_PYTORCH = "converters.frontends.mmdnn_ir:to_pytorch"
ONNX2TORCH_OPSET = 17


def _drop_reshape_allowzero(proto) -> int:
    """The dynamo exporter writes Reshape(allowzero=1); with no 0 in the target shape (true
    for every non-empty tensor) it is the same as allowzero=0, which onnx2torch supports."""
    import onnx

    consts = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    consts.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    count = 0
    for node in proto.graph.node:
        if node.op_type != "Reshape":
            continue
        for attr in list(node.attribute):
            if attr.name == "allowzero" and attr.i == 1:
                shape = consts.get(node.input[1])
                if shape is not None and (shape == 0).any():
                    continue  # a real zero: keep allowzero (onnx2torch will then refuse clearly)
                node.attribute.remove(attr)
                count += 1
    return count


def _unconvertible_ops(onnx2torch, proto) -> list[str]:
    """Every op type in the graph onnx2torch has no converter for (all at once)."""
    from onnx2torch.node_converters import get_converter

    versions = {o.domain or "": o.version for o in proto.opset_import}
    missing = set()
    for node in proto.graph.node:
        try:
            get_converter(operation_type=node.op_type, version=versions.get(node.domain or "", 1),
                          domain=node.domain or "")
        except NotImplementedError:
            missing.add(f"{node.op_type}(opset {versions.get(node.domain or '', 1)})")
    return sorted(missing)


def _import_onnx2torch():
    if importlib.util.find_spec("onnx2torch") is None:
        raise ConversionError("pytorch target needs onnx2torch: run "
                              "pip install --no-deps onnx2torch==1.5.15")
    try:
        import torchvision  # noqa: F401
    except Exception:
        # Only NMS / RoIAlign converters use torchvision; give them a module that fails clearly.
        sys.modules.pop("torchvision", None)
        placeholder = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")

        def unavailable(*_a, **_k):
            raise ConversionError("pytorch target: this graph needs torchvision ops "
                                  "(NMS/RoIAlign), and torchvision is not usable here")

        ops.roi_align = ops.nms = ops.box_convert = unavailable
        placeholder.ops = ops
        sys.modules["torchvision"], sys.modules["torchvision.ops"] = placeholder, ops
        try:
            import onnx2torch
        finally:
            sys.modules.pop("torchvision", None)
            sys.modules.pop("torchvision.ops", None)
        return onnx2torch
    import onnx2torch

    return onnx2torch


class PyTorchTarget(Target):
    name = "pytorch"
    precision = "fp32"

    def build(self, export: ExportResult, out_dir: Path, calib: np.ndarray | None) -> Built:
        out_dir.mkdir(parents=True, exist_ok=True)
        if "mmdnn_ir" in export.extras:
            module_name, _, func = MMDNN_IR_TO_PYTORCH.partition(":")
            to_pytorch = getattr(importlib.import_module(module_name), func)
            return Built(Path(to_pytorch(Path(export.extras["mmdnn_ir"]), out_dir)),
                         ["MMdnn IR -> PyTorch code + weights"])
        return self._from_onnx(export, out_dir, calib)

    def _from_onnx(self, export: ExportResult, out_dir: Path, calib: np.ndarray | None) -> Built:
        import onnx
        import torch

        onnx2torch = _import_onnx2torch()
        notes: list[str] = []
        proto = onnx.load(str(export.onnx_path))
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset is not None and opset > ONNX2TORCH_OPSET:
            # onnx2torch 1.5 knows op versions up to opset 17; the dynamo exporter writes 18+.
            from onnx import version_converter

            try:
                proto = version_converter.convert_version(proto, ONNX2TORCH_OPSET)
                notes.append(f"ONNX opset {opset} converted to {ONNX2TORCH_OPSET} for onnx2torch")
            except Exception as err:
                notes.append(f"opset {opset} -> {ONNX2TORCH_OPSET} conversion failed ({first_line(err)})")
        dropped = _drop_reshape_allowzero(proto)
        if dropped:
            notes.append(f"Reshape allowzero=1 dropped on {dropped} node(s) (onnx2torch lacks it; "
                              f"it only differs for zero-sized dims)")
        missing = _unconvertible_ops(onnx2torch, proto)
        if missing:
            raise UnsupportedOpsError("pytorch (onnx2torch)", missing)
        try:
            module = onnx2torch.convert(proto).eval()
        except Exception as err:
            raise ConversionError(f"pytorch: onnx2torch cannot convert this model: {first_line(err)}") from err
        dst = out_dir / "model.pt"
        shape = [d if d is not None else 2 for d in export.inputs[0].shape]
        example = torch.from_numpy(np.ascontiguousarray(calib[:2], np.float32)) if calib is not None \
            else torch.randn(*shape)
        try:
            with torch.inference_mode(), _no_warnings():
                torch.jit.trace(module, example, check_trace=False).save(str(dst))
            notes.append("onnx2torch, traced to TorchScript")
        except Exception as err:
            notes.append(f"TorchScript trace failed ({first_line(err)}); saved the pickled "
                              f"onnx2torch module (needs onnx2torch to load)")
            dst = out_dir / "model.pth"
            torch.save(module, dst)
        return Built(dst, notes)

    def predict(self, artifact: Path, inputs: np.ndarray) -> np.ndarray:
        return self.runner(artifact)(inputs)

    def runner(self, artifact: Path) -> Callable[[np.ndarray], np.ndarray]:
        import torch

        artifact = Path(artifact)
        if artifact.suffix == ".py":
            module = _load_kit_model(artifact)
        elif artifact.suffix == ".pth":
            _import_onnx2torch()
            module = torch.load(str(artifact), weights_only=False).eval()
        else:
            module = torch.jit.load(str(artifact)).eval()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                out = module(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
            while isinstance(out, (tuple, list)):
                out = out[0]
            return out.numpy()

        return run


def _load_kit_model(code: Path):
    """An MMdnn-generated `model.py` + `weights.npy` (see converters.frontends.mmdnn_ir)."""
    spec = importlib.util.spec_from_file_location(f"_mmdnn_kit_{abs(hash(code))}", code)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.KitModel(str(code.parent / "weights.npy")).eval()


class _no_warnings:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


