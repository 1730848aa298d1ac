"""The one GPU identity table on the NVML names real drivers report: each scheme's value, Ray's own
rule compared on every row, MIG slices, unknown GPUs, and the labels a host gets."""
import pytest

from trainer.cluster.accelerators import (MODELS, gfd_product, identify, models_for, ray_type_from_nvml,
                                          selector_values)
from trainer.cluster.gpus import Gpu, accelerator_label, local_gpus, node_labels, probe

# NVML name -> (Ray type, GFD nvidia.com/gpu.product, GKE gke-accelerator, Karpenter instance-gpu-name)
REAL = {
    "Tesla V100-SXM2-16GB": ("V100", "Tesla-V100-SXM2-16GB", "nvidia-tesla-v100", "v100"),
    "Tesla V100-PCIE-32GB": ("V100", "Tesla-V100-PCIE-32GB", None, None),
    "Tesla T4": ("T4", "Tesla-T4", "nvidia-tesla-t4", "t4"),
    "NVIDIA A10G": ("A10G", "NVIDIA-A10G", None, "a10g"),
    "NVIDIA L4": ("L4", "NVIDIA-L4", "nvidia-l4", "l4"),
    "NVIDIA L40S": ("L40S", "NVIDIA-L40S", None, "l40s"),
    "NVIDIA A100-SXM4-40GB": ("A100", "NVIDIA-A100-SXM4-40GB", "nvidia-tesla-a100", "a100"),
    "A100-SXM4-40GB": ("A100", "A100-SXM4-40GB", "nvidia-tesla-a100", "a100"),          # older drivers
    "NVIDIA A100-SXM4-80GB": ("A100", "NVIDIA-A100-SXM4-80GB", "nvidia-a100-80gb", "a100"),
    "NVIDIA A100-PCIE-40GB": ("A100", "NVIDIA-A100-PCIE-40GB", None, None),
    "NVIDIA A100 80GB PCIe": ("A100", "NVIDIA-A100-80GB-PCIe", None, None),
    "NVIDIA H100 PCIe": ("H100", "NVIDIA-H100-PCIe", None, None),
    "NVIDIA H100 80GB HBM3": ("H100", "NVIDIA-H100-80GB-HBM3", "nvidia-h100-80gb", "h100"),
    "NVIDIA H100 NVL": ("H100", "NVIDIA-H100-NVL", None, None),
    "NVIDIA H200": ("H200", "NVIDIA-H200", "nvidia-h200-141gb", "h200"),
    "NVIDIA B200": ("B200", "NVIDIA-B200", "nvidia-b200", "b200"),
    "NVIDIA GH200 480GB": ("GH200", "NVIDIA-GH200-480GB", None, None),
    "NVIDIA RTX 6000 Ada Generation": ("RTX-6000", "NVIDIA-RTX-6000-Ada-Generation", None, None),
    "NVIDIA RTX A6000": ("RTX-A6000", "NVIDIA-RTX-A6000", None, None),
    "NVIDIA RTX PRO 6000 Blackwell Server Edition": ("RTX-PRO-6000", "NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition",
                                                     "nvidia-rtx-pro-6000", None),
    "NVIDIA GeForce RTX 4090": ("GeForce-RTX-4090", "NVIDIA-GeForce-RTX-4090", None, None),
    "NVIDIA GeForce RTX 5090": ("GeForce-RTX-5090", "NVIDIA-GeForce-RTX-5090", None, None),
    "Quadro RTX 8000": ("RTX-8000", "Quadro-RTX-8000", None, None),
}


@pytest.mark.parametrize("nvml", sorted(REAL))
def test_real_nvml_names_in_every_scheme(nvml):
    ray, gfd, gke, karpenter = REAL[nvml]
    ident = identify(nvml)
    assert ident.model is not None, "in the table"
    assert (ident.ray, ident.gfd) == (ray, gfd)
    assert ident.labels("gke").get("cloud.google.com/gke-accelerator") == gke
    assert ident.labels("karpenter").get("karpenter.k8s.aws/instance-gpu-name") == karpenter
    assert accelerator_label(nvml) == ray


def test_ray_types_are_rays_own_for_current_driver_names():
    """Ray 2.60's NvidiaGPUAcceleratorManager names every row's current NVML name the same way;
    only the old-driver spellings without `NVIDIA ` differ (Ray: `A100-SXM4-40GB`; the table keeps
    `A100` so one model has one label)."""
    from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager

    differs = []
    for model in MODELS:
        for i, name in enumerate(model.nvml):
            rays = NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(name)
            assert ray_type_from_nvml(name) == rays, name
            if rays != model.ray:
                differs.append(name)
                assert i > 0, f"{name}: the current spelling must agree with Ray"
    assert differs == ["A100-SXM4-40GB", "A100-SXM-80GB", "A100-PCIE-40GB"]


@pytest.mark.parametrize("nvml,ray,gfd,partition", [
    ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", "A100-MIG-1g.5gb", "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "1g.5gb"),
    ("A100-SXM4-40GB MIG 3g.20gb", "A100-MIG-3g.20gb", "A100-SXM4-40GB-MIG-3g.20gb", "3g.20gb"),
    ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "H100-MIG-1g.10gb", "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb", "1g.10gb"),
    ("NVIDIA H200 MIG 7g.141gb", "H200-MIG-7g.141gb", "NVIDIA-H200-MIG-7g.141gb", "7g.141gb"),
])
def test_mig_slices(nvml, ray, gfd, partition):
    ident = identify(nvml)
    assert (ident.ray, ident.gfd, ident.mig_profile) == (ray, gfd, partition)
    assert ident.labels("gke").get("cloud.google.com/gke-gpu-partition-size") == partition
    assert ident.labels("karpenter") == {}
    assert gfd in selector_values(ray, "gfd")


def test_the_gfd_rule_matches_gpu_feature_discovery():
    assert gfd_product("NVIDIA H100 80GB HBM3") == "NVIDIA-H100-80GB-HBM3"
    assert gfd_product("A100-SXM4-40GB", "1g.5gb") == "A100-SXM4-40GB-MIG-1g.5gb"


def test_an_unknown_gpu_still_gets_rays_and_gfds_names():
    ident = identify("NVIDIA X9000 Ultra")
    assert ident.model is None and ident.ray == "X9000" and ident.gfd == "NVIDIA-X9000-Ultra"
    assert ident.labels("gke") == {} and ident.labels("karpenter") == {}


def test_selectors_list_every_product_a_type_can_carry():
    assert selector_values("A100", "gfd") == ["A100-PCIE-40GB", "A100-SXM-80GB", "A100-SXM4-40GB",
                                              "NVIDIA-A100-80GB-PCIe", "NVIDIA-A100-PCIE-40GB",
                                              "NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-SXM4-80GB"]
    assert selector_values("A100", "gke") == ["nvidia-a100-80gb", "nvidia-tesla-a100"]
    assert selector_values("H100", "karpenter") == ["h100"]
    assert len(models_for("A100-MIG-1g.5gb")) == 2        # 40 GB SXM and PCIe offer 1g.5gb


def test_rows_are_consistent():
    names = [n for m in MODELS for n in m.nvml]
    assert len(names) == len(set(names)), "an NVML name belongs to one row"
    for model in MODELS:
        assert model.memory_gib > 0 and model.family != "undefined"
        for profile in model.mig_profiles:
            assert profile.endswith("gb") and int(profile.split(".")[1][:-2]) <= model.memory_gib


def test_host_labels_per_scheme():
    h100 = [Gpu(i, "NVIDIA H100 80GB HBM3", 79.6, (9, 0)) for i in range(8)]
    assert node_labels(h100, "ray") == {"ray.io/accelerator-type": "H100"}
    assert node_labels(h100, "gfd") == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": "8",
                                        "nvidia.com/gpu.memory": "81510", "nvidia.com/gpu.family": "hopper"}
    assert node_labels(h100, "gke") == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb",
                                        "cloud.google.com/gke-accelerator-count": "8"}
    assert node_labels([], "ray") == {"ray.io/accelerator-type": "cpu"} and node_labels([], "gfd") == {}


def test_no_nvidia_driver_means_no_gpus_and_says_why():
    assert local_gpus() == []   # CI machines have no driver: an empty list, not an error
    assert "NVML" in probe().reason or "nvidia-ml-py" in probe().reason
