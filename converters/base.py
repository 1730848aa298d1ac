"""The two seams of conversion: a Frontend (native framework -> ONNX) and a Target
(ONNX -> deployable artifact). Both are registered by name in `converters.registry`.

A new frontend or target subclasses one of these and overrides what it can do; the optional
hooks have working defaults here, so `converters.api` calls them directly (no probing).
Frontends whose framework lives in another runtime (tensorflow, mxnet) do their work in that
runtime's interpreter through `converters.workers`; the seam is the same either way.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Literal

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]
Precision = Literal["fp32", "int8"]


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


@dataclass
class Built:
    """What `Target.build` produced: the artifact and what it did to get there (fallbacks,
    fixes, calibration) for the report. Returned, never kept on the (cached) target."""

    artifact: Path
    notes: list[str] = field(default_factory=list)
    extras: dict[str, Path] = field(default_factory=dict)   # work files, e.g. {"float_model": the quantized one's twin}


class LayerOutputs(dict):
    """`Frontend.layer_outputs`' answer: native outputs by the exporter's name for them, with
    `layer_names`: the native layer each name is, where the two differ (a Keras layer under
    TensorFlow's uniquified scope, the MXNet node MMdnn renamed, Caffe layers MMdnn fused)."""

    layer_names: dict[str, str]

    def __init__(self, outputs: dict[str, np.ndarray], layer_names: dict[str, str] | None = None):
        super().__init__(outputs)
        self.layer_names = dict(layer_names or {})


class Frontend(ABC):
    name: ClassVar[str]                 # "torch", "keras", "mxnet", "caffe", "onnx"
    runtime: ClassVar[str] = "torch"    # runtime whose interpreter does the work

    @abstractmethod
    def export(self, model: Path, out_dir: Path, sample: np.ndarray) -> ExportResult:
        """Write `out_dir/model.onnx` (dynamic batch) from the native model at `model`."""

    @abstractmethod
    def predict(self, model: Path, inputs: np.ndarray) -> np.ndarray:
        """The native model's outputs on `inputs` (in the native layout): parity's reference."""

    def runner(self, model: Path) -> Predict | None:
        """Load once and return a fast in-process predict function, or None. Parity times
        latency with it; without one latency is n/a (timing a subprocess measures its start)."""
        return None

    def input_shape(self, model: Path) -> tuple[int | None, ...] | None:
        """The shape the native model takes (None = unknown dim), to reject calibration data of
        the wrong shape before any work; None when the model does not say."""
        return None

    def example_input(self, model: Path) -> np.ndarray | None:
        """A sample to export with when no calibration data is given (an MLflow input example)."""
        return None

    def layer_outputs(self, model: Path, inputs: np.ndarray, names: list[str]) -> dict[str, np.ndarray] | None:
        """The native outputs of the named layers (the names the exporter recorded on the ONNX
        nodes) on `inputs`: the fp32 diagnosis' reference per layer. None: this frontend cannot
        map ONNX nodes back to its layers (the diagnosis then stops at the outputs). A
        `LayerOutputs` may also say which native layer each name is."""
        return None

    def layer_scope(self, node) -> str | None:
        """The name `layer_outputs` knows an exported ONNX node by (None: no native layer of its
        own). Default: the torch exporter's module scope, else tf2onnx's name scope."""
        from converters.diagnose import scope_of
        return scope_of(node)

    def admit(self, model: Path, trust_pickle: bool = False) -> list[str]:
        """Called first: refuse a model whose format runs code from the file when it loads (a
        pickle), unless `trust_pickle`; returns notes for the report (what the trust was used
        for). Formats that are data only (ONNX, MXNet symbol + params, Keras in safe mode) need
        nothing here."""
        return []


class Target(ABC):
    name: ClassVar[str]                 # "onnx", "onnx-int8", "tflite", "pytorch"
    runtime: ClassVar[str] = "torch"
    precision: ClassVar[Precision] = "fp32"   # fp32: judged by atol/rtol; int8: agreement + accuracy

    @abstractmethod
    def build(self, export: ExportResult, out_dir: Path, calib: np.ndarray | None) -> Built:
        """Write the deployable artifact under `out_dir`."""

    @abstractmethod
    def predict(self, artifact: Path, inputs: np.ndarray) -> np.ndarray:
        """Run the artifact on `inputs` (same layout the frontend's native model takes)."""

    def runner(self, artifact: Path) -> Predict | None:
        """A fast in-process predict function for latency, or None (see Frontend.runner)."""
        return None

    def diagnose(self, export: ExportResult, built: Built, x: np.ndarray) -> dict | None:
        """Where the artifact's outputs part from its float model's, layer by layer, on `x` (a
        JSON-able dict with a one-line `summary`; see converters.diagnose), or None when this
        target has no per-layer view."""
        return None

    def repair(self, export: ExportResult, built: Built, diagnosis: dict, calib: np.ndarray,
               out_dir: Path, judge: Callable[[Path], dict], max_float_fraction: float) -> tuple[Built | None, dict] | None:
        """Rebuild the artifact with the nodes the diagnosis blames kept in float, fewest first,
        until `judge(artifact)["passed"]` or the float share of the weights would pass
        `max_float_fraction`: (the last artifact tried - None when even the first step was over
        the budget - and what was done), or None when there is nothing to repair."""
        return None
