"""KubeRay GCS fault tolerance (issue #14), checked offline on every overlay's rendered objects:
the RayCluster keeps its GCS in an external Redis that the same overlay deploys (the address names
its Service and port, the password the Secret that Redis itself is started with), persistently
(append-only file on a volume), with none of the older, conflicting ways of turning it on. The
CRD schema check of gcsFaultToleranceOptions itself is test_manifests' (every RayCluster)."""
import pytest

from _k8s_checks import OVERLAYS, crd_errors


def _one(objects, kind, name):
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gcs_state_lives_in_the_overlays_redis(rendered, crds, overlay):
    objects = rendered[overlay]
    (rc,) = [o for o in objects if o["kind"] == "RayCluster"]
    assert crd_errors(rc) == []
    ft = rc["spec"]["gcsFaultToleranceOptions"]
    host, port = ft["redisAddress"].rsplit(":", 1)
    service = _one(objects, "Service", host)
    (svc_port,) = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
    redis = _one(objects, "Deployment", host)
    assert service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert svc_port["targetPort"] in {p["name"] for p in container["ports"]} | {p["containerPort"] for p in
                                                                                 container["ports"]}
    # The password the GCS sends is the one Redis requires: the same Secret and key.
    secret = ft["redisPassword"]["valueFrom"]["secretKeyRef"]
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == secret
    args = container.get("args", [])
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    # Persistent: append-only file on a claimed volume, one writer.
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == data_dir]
    (volume,) = [v for v in redis["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    _one(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert redis["spec"]["replicas"] == 1 and redis["spec"]["strategy"]["type"] == "Recreate"
    # KubeRay refuses gcsFaultToleranceOptions together with the older switches.
    assert "ray.io/ft-enabled" not in (rc["metadata"].get("annotations") or {})
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert not {e["name"] for c in head for e in c.get("env", [])} & {"RAY_REDIS_ADDRESS", "REDIS_PASSWORD"}
    assert "redis-password" not in rc["spec"]["headGroupSpec"]["rayStartParams"]
