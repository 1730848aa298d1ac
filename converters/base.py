"""The two seams of conversion: a Frontend (native framework -> ONNX) and a Target
(ONNX -> deployable artifact). Both are registered by name in `converters.registry`.

Frontends whose framework lives in another runtime (tensorflow, mxnet) do their work in that
runtime's interpreter (`trainer.runtimes.python_for(name)`) as a subprocess, with files in
between; the Protocol is the same either way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass
class ModelInput:
    """What a converted model takes: one float tensor, batch dimension first and dynamic."""

    name: str
    shape: tuple[int | None, ...]      # None = dynamic (the batch)
    layout: str = "NCHW"               # NCHW | NHWC | NC | NTC ...
    dtype: str = "float32"


@dataclass
class ExportResult:
    onnx_path: Path
    inputs: list[ModelInput]
    exporter: str                        # e.g. "torch.onnx(dynamo)", "tf2onnx 1.17", "mmdnn 0.3.1"
    notes: list[str] = field(default_factory=list)   # fallbacks taken, fixes applied, with reasons
    extras: dict[str, Path] = field(default_factory=dict)  # side products, e.g. {"mmdnn_ir": dir}


class Frontend(Protocol):
    name: str           # "torch", "keras", "mxnet", "caffe", "onnx"
    runtime: str        # runtime whose interpreter runs it: "torch" (this one), "tensorflow", "mxnet"

    def export(self, model: Path, out_dir: Path, sample: np.ndarray) -> ExportResult:
        """Write `out_dir/model.onnx` (dynamic batch) from the native model at `model`."""

    def predict(self, model: Path, inputs: np.ndarray) -> np.ndarray:
        """The native model's outputs on `inputs` (in the native layout): parity's reference."""


class Target(Protocol):
    name: str           # "onnx", "onnx-int8", "tflite", "pytorch"

    def build(self, export: ExportResult, out_dir: Path, calib: np.ndarray | None) -> Path:
        """Write the deployable artifact under `out_dir`; return its path."""

    def predict(self, artifact: Path, inputs: np.ndarray) -> np.ndarray:
        """Run the artifact on `inputs` (same layout the frontend's native model takes)."""
