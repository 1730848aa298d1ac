"""What runs where: the MLflow UI and Ray dashboard to open, and the versions installed."""
from __future__ import annotations

from typing import Callable

from trainer.api._common import check_reachable, port_taken, resolve_address
from trainer.credentials import redact
from trainer.errors import TrackingError, first_line

def versions() -> dict[str, str]:
    """Versions of trainer, Ray, MLflow and the frameworks present (this interpreter, and the
    installed framework runtimes), read from package metadata: nothing heavy is imported."""
    from importlib import metadata

    from trainer.runtimes import list_runtimes

    out: dict[str, str] = {}
    for dist in ("trainer", "ray", "mlflow", "torch", "onnx", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    for runtime in list_runtimes():
        if not runtime.installed:
            continue
        for dist in ("tensorflow-cpu", "tensorflow", "keras", "mxnet", "tf2onnx", "mmdnn"):
            if dist in runtime.versions:
                out.setdefault(dist.replace("-cpu", ""), f"{runtime.versions[dist]} ({runtime.name} runtime)")
    return out


def ui(progress: Callable[[str], None] | None = None) -> dict:
    """The MLflow UI for the configured tracking store (a server's own URL; for the embedded store
    the local server of trainer.tracking.server, started if none runs) and the Ray dashboard of
    the local cluster (or $TRAINER_ADDRESS)."""
    from trainer.errors import UsageError
    from trainer.home import default_tracking_uri, resolve_tracking_uri

    uri = resolve_tracking_uri()
    started = False
    if uri.startswith(("http://", "https://")):
        try:
            check_reachable(uri)
        except Exception as e:  # noqa: BLE001
            raise TrackingError(f"the MLflow server {redact(uri)} does not answer: {first_line(e)}") from None
        url = redact(uri)
    elif uri == default_tracking_uri():
        from trainer.tracking.server import serve

        state, started = serve(None if port_taken(5000) else 5000, progress=progress)
        url = state.url
    else:
        raise UsageError(f"trainer ui serves the embedded store ({default_tracking_uri()}) or shows a server's URL; "
                         f"for {redact(uri)} run: mlflow ui --backend-store-uri {redact(uri)}")
    address = resolve_address(None)
    token = None
    if address is None:
        from trainer.cluster.local import LocalCluster

        state = LocalCluster().state()
        address = state.dashboard_url if state is not None else None
        token = state.token_file if state is not None else None
    return {"mlflow_url": url, "mlflow_started": started, "tracking_uri": redact(uri),
            "ray_dashboard": redact(address) if address else None, "ray_token_file": token}
