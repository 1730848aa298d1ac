"""Each image's CUDA base (`ARG CUDA_IMAGE` in images/<runtime>/Dockerfile) agrees with the CUDA
its framework's GPU build needs, read from the lock's gpu variant:

- torch and tensorflow bring their CUDA user-space libraries as pip wheels (torch:
  `cuda-toolkit==13.0.3`; tensorflow[and-cuda]: `nvidia-*-cu12`): the base must be of the same
  CUDA major (the driver-facing side: the base's `NVIDIA_REQUIRE_CUDA`), and all CUDA wheels of a
  variant must be of that one major;
- mxnet-cu117 links the system's CUDA and cuDNN: the base must be CUDA 11 with minor >= 7 and ship
  cuDNN 8 (a `cudnn8` tag).

Offline: the tags are read, not pulled (no registry is reachable from CI).
"""
from __future__ import annotations

import re

import dockerfile
import pytest

from trainer import runtimes
from trainer.home import repo_root

BASE_TAG = re.compile(r"^nvidia/cuda:(?P<major>\d+)\.(?P<minor>\d+)\.\d+-(?P<flavor>[\w.-]+)$")
SUFFIX = re.compile(r"-cu(?P<major>\d+)$")             # nvidia-cudnn-cu12, nvidia-nccl-cu13
MXNET_GPU = re.compile(r"^mxnet-cu(?P<major>\d\d)(?P<minor>\d)$")   # mxnet-cu117 = CUDA 11.7


def base_cuda(name: str) -> tuple[int, int, str]:
    """(major, minor, tag flavor) of the Dockerfile's default CUDA_IMAGE."""
    for c in dockerfile.parse_file(str(repo_root() / "images" / name / "Dockerfile")):
        if c.cmd == "ARG" and c.value[0].startswith("CUDA_IMAGE="):
            m = BASE_TAG.match(c.value[0].split("=", 1)[1].strip('"'))
            assert m, f"{name}: CUDA_IMAGE is not an nvidia/cuda:X.Y.Z-... tag: {c.value[0]}"
            return int(m["major"]), int(m["minor"]), m["flavor"]
    raise AssertionError(f"images/{name}/Dockerfile has no ARG CUDA_IMAGE")


def framework_cuda(pins: dict[str, str]) -> tuple[int, int | None, bool]:
    """(major, minimum minor or None, libraries from the system?) the gpu variant needs."""
    for dist in pins:
        m = MXNET_GPU.match(dist)
        if m:
            return int(m["major"]), int(m["minor"]), True
    if "cuda-toolkit" in pins:
        major, minor = pins["cuda-toolkit"].split(".")[:2]
        return int(major), int(minor), False
    majors = {int(SUFFIX.search(d)["major"]) for d in pins if d.startswith("nvidia-") and SUFFIX.search(d)}
    assert len(majors) == 1, f"CUDA wheels of several majors: {sorted(majors)}"
    return majors.pop(), None, False


@pytest.mark.parametrize("name", sorted(runtimes.RUNTIMES))
def test_cuda_base_image_agrees_with_the_frameworks_cuda(name):
    pins = runtimes.parse_lock(runtimes.lock_path(name), "gpu")
    major, minor, flavor = base_cuda(name)
    need_major, need_minor, from_system = framework_cuda(pins)
    assert major == need_major, f"{name}: base is CUDA {major}.{minor}, its GPU build needs CUDA {need_major}"
    wheel_majors = {int(SUFFIX.search(d)["major"]) for d in pins if d.startswith("nvidia-") and SUFFIX.search(d)}
    assert wheel_majors <= {need_major}, f"{name}: CUDA wheels for CUDA {sorted(wheel_majors)}"
    if from_system:
        assert minor >= need_minor, f"{name}: base CUDA {major}.{minor} < {need_major}.{need_minor}"
        assert "cudnn8" in flavor, f"{name}: the GPU build links the system's cuDNN 8; base flavor {flavor}"
        assert "devel" not in flavor   # runtime libraries are enough


def test_the_check_reads_real_requirements():
    """The three rules see what they should: CUDA 13 (torch), 12 (tensorflow), 11.7 (mxnet)."""
    got = {n: framework_cuda(runtimes.parse_lock(runtimes.lock_path(n), "gpu")) for n in runtimes.RUNTIMES}
    assert got == {"torch": (13, 0, False), "tensorflow": (12, None, False), "mxnet": (11, 7, True)}
    # ... and a mismatch is caught: torch's wheels on TensorFlow's CUDA 12 base.
    assert base_cuda("tensorflow")[0] != got["torch"][0]
