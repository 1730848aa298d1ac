"""The local GPUs, read through NVML (nvidia-ml-py), named by the one identity table
(`trainer.cluster.accelerators`): "NVIDIA H100 80GB HBM3" -> "H100", "NVIDIA A100-SXM4-40GB" ->
"A100", "Tesla T4" -> "T4"; a MIG-enabled GPU lists its slices ("A100-MIG-1g.5gb").

No NVIDIA driver (every CI machine here) means no GPUs, not an error; `probe()` also says why.
"""
from __future__ import annotations

from dataclasses import dataclass

from trainer.cluster.accelerators import CPU, RAY_LABEL, SCHEMES, Identity, gfd_family, identify

# The node label every scheduling decision keys on (Ray's, KubeRay's worker groups', ours).
ACCELERATOR_LABEL = RAY_LABEL


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str                       # as NVML reports it (a MIG slice: "<parent> MIG <profile>")
    memory_gib: float
    compute: tuple[int, int] | None = None

    @property
    def identity(self) -> Identity:
        return identify(self.name)

    @property
    def label(self) -> str:
        return self.identity.ray


@dataclass(frozen=True)
class Probe:
    """What NVML found: the GPUs, or why there are none (`reason`)."""

    gpus: list[Gpu]
    reason: str = ""


def accelerator_label(device_name: str) -> str:
    """The `ray.io/accelerator-type` value for an NVML device name."""
    return identify(device_name).ray


def local_gpus() -> list[Gpu]:
    return probe().gpus


def probe() -> Probe:
    """The host's GPUs through NVML. Every GPU in MIG mode contributes its slices instead."""
    try:
        import pynvml
    except ImportError:
        return Probe([], "nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return Probe([], f"no NVIDIA driver (NVML: {e})")
    try:
        gpus: list[Gpu] = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            compute = _compute(pynvml, handle)
            slices = _mig_devices(pynvml, handle)
            if slices:
                gpus.extend(Gpu(len(gpus), name, mem, compute) for name, mem in slices)
            else:
                gpus.append(Gpu(len(gpus), _name(pynvml, handle), _memory_gib(pynvml, handle), compute))
        return Probe(gpus, "" if gpus else "the NVIDIA driver reports no GPUs")
    finally:
        pynvml.nvmlShutdown()


def node_labels(gpus: list[Gpu], scheme: str) -> dict[str, str]:
    """The labels a node with these GPUs carries in `scheme` (ray, gfd, gke, karpenter).

    No GPUs: the `cpu` accelerator type (Ray) and nothing else. Mixed models on one host are
    labelled by the first GPU, as Ray does (one accelerator type per node).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown label scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    if not gpus:
        return {RAY_LABEL: CPU} if scheme == "ray" else {}
    first = gpus[0]
    labels = first.identity.labels(scheme)
    same = [g for g in gpus if g.identity == first.identity]
    if scheme == "gfd":
        labels["nvidia.com/gpu.count"] = str(len(same))
        labels["nvidia.com/gpu.memory"] = str(int(round(first.memory_gib * 1024)))
        if first.compute:
            labels["nvidia.com/gpu.family"] = gfd_family(*first.compute)
    if scheme == "gke" and labels:
        labels["cloud.google.com/gke-accelerator-count"] = str(len(same))
    return labels


def _name(pynvml, handle) -> str:
    name = pynvml.nvmlDeviceGetName(handle)
    return name.decode() if isinstance(name, bytes) else name


def _memory_gib(pynvml, handle) -> float:
    return pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30


def _compute(pynvml, handle) -> tuple[int, int] | None:
    try:
        return tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
    except pynvml.NVMLError:
        return None


def _mig_devices(pynvml, handle) -> list[tuple[str, float]]:
    """(name, memory GiB) of the MIG slices of a GPU in MIG mode, else []."""
    try:
        current, _ = pynvml.nvmlDeviceGetMigMode(handle)
    except pynvml.NVMLError:
        return []   # no MIG support on this GPU
    if current != pynvml.NVML_DEVICE_MIG_ENABLE:
        return []
    out = []
    for j in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
        except pynvml.NVMLError:
            continue  # an empty slot
        out.append((_name(pynvml, mig), _memory_gib(pynvml, mig)))
    return out
