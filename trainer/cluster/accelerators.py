"""One GPU identity across every label scheme that schedules on it.

The same GPU has a different name in each place a scheduler looks:

| scheme | label | "NVIDIA H100 80GB HBM3" (an H100 SXM5) is |
|---|---|---|
| NVML | `nvmlDeviceGetName` | `NVIDIA H100 80GB HBM3` |
| Ray | `ray.io/accelerator-type` | `H100` |
| NVIDIA GPU Feature Discovery | `nvidia.com/gpu.product` | `NVIDIA-H100-80GB-HBM3` |
| GKE | `cloud.google.com/gke-accelerator` | `nvidia-h100-80gb` |
| Karpenter (EKS) | `karpenter.k8s.aws/instance-gpu-name` | `h100` |

`MODELS` is the one table: a row per GPU SKU with the NVML names drivers report for it. The local
labeller (`trainer.cluster.gpus`), `trainer node labels`, the KubeRay worker groups' node selectors
(`k8s/base/raycluster.yaml`, kept equal to this table by tests/k8s) and `trainer k8s render` all
read it.

- The Ray type is what Ray 2.60 itself derives from the NVML name
  (`ray/_private/accelerators/nvidia_gpu.py`, `ray_type_from_nvml` below is the same rule; a test
  compares the two on every row): datacenter cards keep their model (`V100`, `A100`, `H100`), the
  RTX line keeps its brand words (`RTX-PRO-6000`, `RTX-A6000`), consumer cards fall back to a
  hyphenated product name (`GeForce-RTX-4090`). A100 40 GB and 80 GB are both `A100` in Ray.
- The GFD product is GFD's own rule: the NVML name with spaces replaced by `-`, plus `-MIG-<profile>`
  for a MIG slice (`internal/lm/resource.go` of NVIDIA/k8s-device-plugin). Old drivers reported
  some names without the `NVIDIA ` prefix (`A100-SXM4-40GB`); those spellings are rows' later
  `nvml` entries, so a selector lists every product value the model can carry.
- MIG slices are their own scheduling class: Ray type `<parent>-MIG-<profile>` (e.g.
  `A100-MIG-1g.5gb`; Ray has no name for a slice, so this is trainer's convention), GFD
  `<parent product>-MIG-<profile>`, GKE the parent's accelerator plus
  `cloud.google.com/gke-gpu-partition-size`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# The node label every scheduling decision keys on (Ray's, KubeRay's worker groups', ours).
RAY_LABEL = "ray.io/accelerator-type"
GFD_PRODUCT_LABEL = "nvidia.com/gpu.product"
GKE_LABEL = "cloud.google.com/gke-accelerator"
GKE_PARTITION_LABEL = "cloud.google.com/gke-gpu-partition-size"
KARPENTER_LABEL = "karpenter.k8s.aws/instance-gpu-name"
SCHEMES = ("ray", "gfd", "gke", "karpenter")
CPU = "cpu"

# Ray 2.60's rule (NVIDIA_GPU_NAME_PATTERN): the run of leading all-caps tokens up to and
# including the first token with a digit, after the first word ("NVIDIA", "Tesla", "Quadro").
_RAY_PATTERN = re.compile(r"\w+\s+((?:[A-Z]+\s+)*[A-Z0-9]*\d[A-Z0-9]*)")
_MIG_NAME = re.compile(r"^(?P<parent>.+?)\s+MIG\s+(?P<profile>\d+g\.\d+gb)$")
_MIG_TYPE = re.compile(r"^(?P<parent>.+)-MIG-(?P<profile>\d+g\.\d+gb)$")

# MIG profiles per memory size (NVIDIA's MIG user guide, "supported profiles").
_MIG_40GB = ("1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb")
_MIG_80GB = ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")
_MIG_94GB = ("1g.12gb", "1g.24gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb")
_MIG_141GB = ("1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb")
_MIG_96GB = ("1g.12gb", "1g.24gb", "2g.24gb", "3g.48gb", "4g.48gb", "7g.96gb")
_MIG_180GB = ("1g.23gb", "1g.45gb", "2g.45gb", "3g.90gb", "4g.90gb", "7g.180gb")


@dataclass(frozen=True)
class GpuModel:
    """One GPU SKU in every scheme. `nvml[0]` is the name current drivers report."""

    ray: str
    nvml: tuple[str, ...]
    memory_gib: int
    compute: tuple[int, int]          # CUDA compute capability (GFD's gpu.family comes from it)
    gke: str | None = None            # GKE offers it as this accelerator
    karpenter: str | None = None      # EC2 instance types carry it under this name
    mig_profiles: tuple[str, ...] = ()

    @property
    def gfd_products(self) -> tuple[str, ...]:
        return tuple(gfd_product(name) for name in self.nvml)

    @property
    def family(self) -> str:
        return gfd_family(*self.compute)


MODELS: tuple[GpuModel, ...] = (
    GpuModel("V100", ("Tesla V100-SXM2-16GB",), 16, (7, 0), "nvidia-tesla-v100", "v100"),
    GpuModel("V100", ("Tesla V100-SXM2-32GB",), 32, (7, 0), None, "v100"),
    GpuModel("V100", ("Tesla V100-PCIE-16GB",), 16, (7, 0)),
    GpuModel("V100", ("Tesla V100-PCIE-32GB",), 32, (7, 0)),
    GpuModel("T4", ("Tesla T4",), 16, (7, 5), "nvidia-tesla-t4", "t4"),
    GpuModel("A10G", ("NVIDIA A10G",), 24, (8, 6), None, "a10g"),
    GpuModel("A10", ("NVIDIA A10",), 24, (8, 6)),
    GpuModel("L4", ("NVIDIA L4",), 24, (8, 9), "nvidia-l4", "l4"),
    GpuModel("L40S", ("NVIDIA L40S",), 48, (8, 9), None, "l40s"),
    GpuModel("L40", ("NVIDIA L40",), 48, (8, 9)),
    GpuModel("A100", ("NVIDIA A100-SXM4-40GB", "A100-SXM4-40GB"), 40, (8, 0), "nvidia-tesla-a100", "a100",
             _MIG_40GB),
    GpuModel("A100", ("NVIDIA A100-SXM4-80GB", "A100-SXM-80GB"), 80, (8, 0), "nvidia-a100-80gb", "a100",
             _MIG_80GB),
    GpuModel("A100", ("NVIDIA A100-PCIE-40GB", "A100-PCIE-40GB"), 40, (8, 0), mig_profiles=_MIG_40GB),
    GpuModel("A100", ("NVIDIA A100 80GB PCIe",), 80, (8, 0), mig_profiles=_MIG_80GB),
    GpuModel("H100", ("NVIDIA H100 80GB HBM3",), 80, (9, 0), "nvidia-h100-80gb", "h100", _MIG_80GB),
    GpuModel("H100", ("NVIDIA H100 PCIe",), 80, (9, 0), mig_profiles=_MIG_80GB),
    GpuModel("H100", ("NVIDIA H100 NVL",), 94, (9, 0), mig_profiles=_MIG_94GB),
    GpuModel("H200", ("NVIDIA H200",), 141, (9, 0), "nvidia-h200-141gb", "h200", _MIG_141GB),
    GpuModel("H200", ("NVIDIA H200 NVL",), 141, (9, 0), mig_profiles=_MIG_141GB),
    GpuModel("GH200", ("NVIDIA GH200 480GB",), 96, (9, 0), mig_profiles=_MIG_96GB),
    GpuModel("GH200", ("NVIDIA GH200 144G HBM3e",), 144, (9, 0)),
    GpuModel("B200", ("NVIDIA B200",), 180, (10, 0), "nvidia-b200", "b200", _MIG_180GB),
    GpuModel("RTX-PRO-6000", ("NVIDIA RTX PRO 6000 Blackwell Server Edition",), 96, (12, 0), "nvidia-rtx-pro-6000"),
    GpuModel("RTX-6000", ("NVIDIA RTX 6000 Ada Generation",), 48, (8, 9)),
    GpuModel("RTX-A6000", ("NVIDIA RTX A6000",), 48, (8, 6)),
    GpuModel("RTX-8000", ("Quadro RTX 8000",), 48, (7, 5)),
    GpuModel("GeForce-RTX-5090", ("NVIDIA GeForce RTX 5090",), 32, (12, 0)),
    GpuModel("GeForce-RTX-4090", ("NVIDIA GeForce RTX 4090",), 24, (8, 9)),
    GpuModel("GeForce-RTX-3090", ("NVIDIA GeForce RTX 3090",), 24, (8, 6)),
)

_BY_NVML = {name: model for model in MODELS for name in model.nvml}


@dataclass(frozen=True)
class Identity:
    """What one GPU (or MIG slice) is called in every scheme. `model` is None for a GPU the table
    does not know: Ray's and GFD's rules still name it; GKE and Karpenter then have no value."""

    nvml: str
    ray: str
    gfd: str
    model: GpuModel | None = None
    mig_profile: str | None = None

    def labels(self, scheme: str) -> dict[str, str]:
        """The node labels this GPU gives a node in `scheme` (empty where the scheme has no name)."""
        if scheme == "ray":
            return {RAY_LABEL: self.ray}
        if scheme == "gfd":
            return {GFD_PRODUCT_LABEL: self.gfd}
        if scheme == "gke":
            if self.model is None or self.model.gke is None:
                return {}
            out = {GKE_LABEL: self.model.gke}
            if self.mig_profile:
                out[GKE_PARTITION_LABEL] = self.mig_profile
            return out
        if scheme == "karpenter":
            if self.model is None or self.model.karpenter is None or self.mig_profile:
                return {}
            return {KARPENTER_LABEL: self.model.karpenter}
        raise ValueError(f"unknown label scheme {scheme!r}; valid: {', '.join(SCHEMES)}")


def ray_type_from_nvml(name: str) -> str:
    """Ray 2.60's accelerator type for an NVML device name (its rule, without importing ray)."""
    match = _RAY_PATTERN.match(name)
    result = match.group(1).replace(" ", "-") if match else None
    if result and len(result) > 1:
        return result
    cleaned = re.sub(r"^NVIDIA\s+", "", name).strip()
    return cleaned.replace(" ", "-") or "unknown"


def gfd_product(name: str, mig_profile: str | None = None) -> str:
    """GPU Feature Discovery's `nvidia.com/gpu.product` value for an NVML device name."""
    parts = [name.replace(" ", "-")] + (["MIG", mig_profile] if mig_profile else [])
    return "-".join(parts)


def gfd_family(major: int, minor: int) -> str:
    """GFD's `nvidia.com/gpu.family` from the compute capability (GFD's getArchFamily; Ada (8.9)
    is `ampere` there; Blackwell (10.x, 12.x) is `blackwell` in current releases)."""
    return {7: "volta" if minor < 5 else "turing", 8: "ampere", 9: "hopper", 10: "blackwell",
            12: "blackwell"}.get(major, "undefined")


def identify(nvml_name: str) -> Identity:
    """The identity of a GPU from its NVML name; a MIG device's name ("NVIDIA A100-SXM4-40GB MIG
    1g.5gb") gives the slice's identity."""
    name = nvml_name.strip()
    mig = _MIG_NAME.match(name)
    if mig:
        parent = identify(mig.group("parent"))
        profile = mig.group("profile")
        return Identity(name, f"{parent.ray}-MIG-{profile}", gfd_product(parent.nvml, profile), parent.model, profile)
    model = _BY_NVML.get(name)
    return Identity(name, model.ray if model else ray_type_from_nvml(name), gfd_product(name), model)


def models_for(ray_type: str) -> list[GpuModel]:
    """Every SKU Ray calls `ray_type` (`A100` -> 40/80 GB, SXM and PCIe); a MIG type
    (`A100-MIG-1g.5gb`) -> the SKUs that offer that profile."""
    mig = _MIG_TYPE.match(ray_type)
    if mig:
        return [m for m in models_for(mig.group("parent")) if mig.group("profile") in m.mig_profiles]
    return [m for m in MODELS if m.ray == ray_type]


def selector_values(ray_type: str, scheme: str) -> list[str]:
    """The values of `scheme`'s label that a node selector for `ray_type` must accept, sorted:
    e.g. every `nvidia.com/gpu.product` an A100 node can carry. Empty when the scheme has none."""
    mig = _MIG_TYPE.match(ray_type)
    profile = mig.group("profile") if mig else None
    values: set[str] = set()
    for model in models_for(ray_type):
        if scheme == "gfd":
            values.update(gfd_product(name, profile) for name in model.nvml)
        elif scheme == "gke" and model.gke:
            values.add(model.gke)
        elif scheme == "karpenter" and model.karpenter and not profile:
            values.add(model.karpenter)
        elif scheme == "ray":
            values.add(ray_type)
    return sorted(values)


def scheme_label_key(scheme: str) -> str:
    return {"ray": RAY_LABEL, "gfd": GFD_PRODUCT_LABEL, "gke": GKE_LABEL, "karpenter": KARPENTER_LABEL}[scheme]


def known_ray_types() -> list[str]:
    return sorted({m.ray for m in MODELS})
