"""The runtimes trainer knows: one `RuntimeSpec` per framework venv, looked up by name."""
from __future__ import annotations

from dataclasses import dataclass

from trainer.errors import UnknownNameError


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    python: str                       # major.minor the venv (and the image) is built on
    key_packages: tuple[str, ...]     # shown by `trainer runtime list`
    import_check: tuple[str, ...]     # modules that must import after an install


RUNTIMES: dict[str, RuntimeSpec] = {
    "torch": RuntimeSpec("torch", "3.11", ("torch", "ray", "mlflow", "numpy", "onnx", "onnxruntime"),
                         ("torch", "ray", "mlflow", "trainer")),
    "tensorflow": RuntimeSpec("tensorflow", "3.11",
                              ("tensorflow", "tensorflow-cpu", "keras", "ray", "mlflow", "numpy", "tf2onnx"),
                              ("tensorflow", "ray", "mlflow", "trainer")),
    # mxnet 1.9.1 needs numpy < 1.24 (np.bool) and MMdnn needs Python <= 3.11.
    "mxnet": RuntimeSpec("mxnet", "3.11", ("mxnet", "numpy", "ray", "mlflow-skinny", "mlflow", "onnx",
                                           "onnxruntime", "mmdnn", "protobuf"),
                         ("mxnet", "mmdnn", "onnx", "onnxruntime", "ray", "mlflow", "trainer", "converters")),
}


def spec_for(name: str) -> RuntimeSpec:
    """The runtime called `name`; an unknown name is a UsageError listing the valid ones."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise UnknownNameError("runtime", name, sorted(RUNTIMES)) from None
