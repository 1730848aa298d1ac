"""`trainer k8s render`: a job spec as the KubeRay RayJob an environment would run."""
from __future__ import annotations

import sys
from typing import List, Optional

import typer

from trainer import api
from trainer.cli._output import OutputOpt, Printer

group = typer.Typer(no_args_is_help=True, help="Kubernetes (KubeRay): render a spec as a RayJob.")

OverlayOpt = typer.Option("dev", "--overlay", help="Environment: k8s/overlays/<name> (dev, staging, prod) "
                          "or a kustomize folder with a RayCluster and the trainer-platform settings.")
CodeUriOpt = typer.Option(None, "--code-uri", help="The project as a .zip the cluster can fetch "
                          "(s3://, gs://, https://); default: codeUri of the overlay.")
NamespaceOpt = typer.Option(None, "--namespace", "-n", help="Namespace; default: the overlay's.")


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="k8s")


@group.command("render")
def render(spec: str = typer.Argument(..., help="Job spec YAML."),
           overlay: str = OverlayOpt, code_uri: Optional[str] = CodeUriOpt,
           namespace: Optional[str] = NamespaceOpt,
           name: Optional[str] = typer.Option(None, "--name", help="RayJob name; default <job name>-<time>-<token>."),
           set_: List[str] = typer.Option([], "--set", help="Override a spec value: workers=4"),
           output: str = OutputOpt):
    """Print the RayJob for SPEC on an environment (YAML; --output json for JSON). Creates nothing."""
    import yaml

    p = Printer(output)
    body = api.render_k8s(spec, overlay, set=set_, job_id=name, code_uri=code_uri, namespace=namespace)
    p.emit(body, lambda b: sys.stdout.write(yaml.safe_dump(b, sort_keys=False)))
