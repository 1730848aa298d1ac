"""The local GPUs, read through NVML (nvidia-ml-py), as the accelerator label a node gets.

"NVIDIA H100 80GB HBM3" -> "H100", "NVIDIA A100-SXM4-40GB" -> "A100", "Tesla T4" -> "T4".
No NVIDIA driver (every CI machine here) means no GPUs, not an error.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# The node label every scheduling decision keys on (Ray's, KubeRay's worker groups', ours).
ACCELERATOR_LABEL = "ray.io/accelerator-type"

# Ray's own accelerator names for the models it knows (ray.util.accelerators).
_MODELS = ["GH200", "B200", "H200", "H100", "H20", "A100", "A10G", "A10", "L40S", "L4", "V100", "T4", "P100", "K80"]


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_gib: float

    @property
    def label(self) -> str:
        return accelerator_label(self.name)


def accelerator_label(device_name: str) -> str:
    """The `ray.io/accelerator-type` value for an NVML device name."""
    upper = device_name.upper()
    for model in _MODELS:
        if re.search(rf"(^|[^A-Z0-9]){model}([^A-Z0-9]|$)", upper):
            return model
    words = re.sub(r"^(NVIDIA|TESLA|GEFORCE|QUADRO)\s+", "", upper).split()
    return re.sub(r"[^A-Za-z0-9_.-]", "", words[0]) if words else "unknown"


def local_gpus() -> list[Gpu]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name
            gpus.append(Gpu(i, name, pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30))
        return gpus
    finally:
        pynvml.nvmlShutdown()
