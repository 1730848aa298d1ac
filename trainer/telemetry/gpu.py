"""Utilisation, memory and power of the GPUs this process was given, read with NVML (nvidia-ml-py).

Which GPUs: those CUDA_VISIBLE_DEVICES names (Ray sets it to a worker's GPUs, by index or UUID),
else every GPU NVML sees. No NVML library, no GPU, or an empty CUDA_VISIBLE_DEVICES: there is no
sampler, and so no GPU series at all (a CPU worker must not look like an idle GPU).
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSample:
    index: str                    # NVML's device index on the node
    utilization_ratio: float      # 0-1, over NVML's last sample period
    memory_used_bytes: int
    power_watts: float | None     # None where the board does not report power


class Sampler:
    def __init__(self, nvml, handles: list[tuple[str, object]]):
        self._nvml = nvml
        self._handles = handles

    def sample(self) -> list[GpuSample]:
        out = []
        nv = self._nvml
        for index, h in self._handles:
            util = nv.nvmlDeviceGetUtilizationRates(h).gpu / 100.0
            mem = nv.nvmlDeviceGetMemoryInfo(h).used
            try:
                power = nv.nvmlDeviceGetPowerUsage(h) / 1000.0     # milliwatts
            except nv.NVMLError:
                power = None
            out.append(GpuSample(index, util, int(mem), power))
        return out


def visible(env: dict[str, str] | None = None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list (indices or UUIDs), [] when set empty, None when unset."""
    value = (env if env is not None else os.environ).get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip() and v.strip() != "-1"]


def open_sampler(env: dict[str, str] | None = None) -> tuple[Sampler | None, str]:
    """(a sampler, "") or (None, why there is nothing to sample)."""
    wanted = visible(env)
    if wanted == []:
        return None, "no GPU given to this process (CUDA_VISIBLE_DEVICES is empty)"
    try:
        import pynvml as nv
    except ImportError:
        return None, "nvidia-ml-py is not installed"
    try:
        nv.nvmlInit()
        count = nv.nvmlDeviceGetCount()
        handles = []
        for i in range(count):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            uuid = nv.nvmlDeviceGetUUID(h)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            if wanted is None or str(i) in wanted or uuid in wanted:
                handles.append((str(i), h))
    except nv.NVMLError as e:
        return None, f"NVML: {e}"
    if not handles:
        return None, "NVML sees no GPU" if not count else f"none of the GPUs {wanted} is on this node"
    return Sampler(nv, handles), ""
