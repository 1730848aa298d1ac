"""The options several commands share, each defined once with one meaning and one help text.

A command takes them as defaults (`address: Optional[str] = AddressOpt`). An option used by one
command only stays with that command. `FLAG_FOR` is how the CLI names the API's arguments in
error lines: below the CLI a message speaks of the argument (`cluster_spec ...: no such file`),
and `trainer.cli._output.error_line` swaps its leading name for the flag.
"""
from __future__ import annotations

import typer

# A running Ray cluster's dashboard (the job API): submit, status, list, retrain...
AddressOpt = typer.Option(None, "--address", help="Ray dashboard address (http://HOST:8265); "
                          "default $TRAINER_ADDRESS, else the local cluster. A cluster with token auth takes "
                          "its token from RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH.")
# A head's GCS address, which a joining node connects to: another thing than the dashboard, so
# another name (`--address` still accepted, as before).
HeadOpt = typer.Option(..., "--head", "--address", help="The head's GCS address HOST:PORT (e.g. head:6379); "
                       "not the dashboard URL.")

SetOpt = typer.Option([], "--set", help="Override a spec value: config.lr=0.1 (repeatable).")

# Kubernetes (KubeRay).
OverlayOpt = typer.Option("dev", "--overlay", help="Environment: k8s/overlays/<name> (dev, staging, prod) "
                          "or a kustomize folder with a RayCluster and the trainer-platform settings.")
NamespaceOpt = typer.Option(None, "--namespace", "-n", help="Namespace; default: the overlay's.")
CodeUriOpt = typer.Option(None, "--code-uri", help="The project as a .zip the cluster can fetch "
                          "(s3://, gs://, https://); default: codeUri of the overlay.")
ContextOpt = typer.Option(None, "--context", help="kubeconfig context; default: the current one.")

RegistryOpt = typer.Option(None, "--registry", help="OCI registry host[:port]; default: the one a model version "
                           "was pushed to, else $TRAINER_REGISTRY, else the local `trainer registry serve`.")
TrackingOpt = typer.Option(None, "--tracking-uri", help="MLflow store; default $MLFLOW_TRACKING_URI, else the "
                           "embedded one.")

# The API's argument -> the flag that gives it (error lines name the flag).
FLAG_FOR = {
    "address": "--address", "head": "--head", "set": "--set", "overlay": "--overlay", "namespace": "--namespace",
    "code_uri": "--code-uri", "context": "--context", "registry": "--registry", "tracking_uri": "--tracking-uri",
    "cluster_spec": "--cluster-spec", "to": "--to", "version": "--version", "approve": "--approve",
    "node": "--node", "port": "--port",
}
