"""Fixtures for edge tests: a tiny ONNX model, a trained digits CNN (fp32 + static int8 QDQ),
and the provisioned arm64 root (missing -> the test fails, unless TRAINER_SKIP_EDGE=1)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from converters.base import ModelInput


def make_tiny_onnx(path: Path, external_data: bool = False) -> Path:
    """y = softmax(x @ W + b) on (N, 4) inputs, built by hand: no exporter in the loop."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["z"]), helper.make_node("Softmax", ["z"], ["y"], axis=1)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path), save_as_external_data=external_data,
                    all_tensors_to_one_file=True, location=path.name + ".data", size_threshold=0)
    return path


TINY_INPUT = ModelInput(name="x", shape=(None, 4), layout="NC")


@pytest.fixture
def make_tiny():
    return make_tiny_onnx


@dataclass
class DigitsModels:
    fp32: Path
    int8: Path
    input: ModelInput
    x_test: np.ndarray       # (N, 1, 8, 8) float32 in [0, 1]
    y_test: np.ndarray


@pytest.fixture(scope="session")
def digits_models(tmp_path_factory) -> DigitsModels:
    """A small CNN trained on sklearn digits for a few seconds, exported to ONNX and quantized
    with onnxruntime static QDQ int8 calibrated on 256 training images."""
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    out = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.2, random_state=0)

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # a tiny net: more threads only contend on a loaded CI box
    try:
        for _ in range(12):
            for idx in torch.randperm(len(xt)).split(64):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()

    fp32 = out / "digits_fp32.onnx"
    torch.onnx.export(model, (xt[:1],), str(fp32), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})

    class Calib(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": x_train[i:i + 32]} for i in range(0, 256, 32)])

        def get_next(self):
            return next(self.batches, None)

    int8 = out / "digits_int8.onnx"
    quantize_static(str(fp32), str(int8), Calib(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return DigitsModels(fp32=fp32, int8=int8, x_test=x_test, y_test=y_test,
                        input=ModelInput(name="input", shape=(None, 1, 8, 8), layout="NCHW"))


def _required(check):
    """CI installs qemu and provisions the root (`trainer edge setup`) before the tests, so a
    missing one is a failure; TRAINER_SKIP_EDGE=1 turns that into a skip on a laptop."""
    from trainer.errors import RuntimeNotInstalledError

    try:
        return check()
    except RuntimeNotInstalledError as e:
        if os.environ.get("TRAINER_SKIP_EDGE") == "1":
            pytest.skip(f"TRAINER_SKIP_EDGE=1: {e}")
        pytest.fail(f"{e} (set TRAINER_SKIP_EDGE=1 to skip edge tests on a developer machine)")


@pytest.fixture(scope="session")
def qemu() -> Path:
    from converters.edge.setup import require_qemu

    return _required(require_qemu)


@pytest.fixture(scope="session")
def edge_root(qemu) -> Path:
    """The provisioned arm64 root."""
    from converters.edge.setup import require_root

    return _required(require_root)


@pytest.fixture(scope="session")
def ort_outputs():
    """The x86 ONNX Runtime reference: `ort_outputs(model, x, optimize=True)` -> first output."""
    import onnxruntime as ort

    def run(model: Path, x: np.ndarray, optimize: bool = True) -> np.ndarray:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        if not optimize:    # no QDQ fusion: int8 models computed as their exact QDQ arithmetic
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]

    return run


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    return make_tiny_onnx(tmp_path / "src" / "tiny.onnx")


@pytest.fixture
def tiny_input() -> ModelInput:
    return TINY_INPUT
