"""`trainer k8s render`: a job spec as the KubeRay RayJob an environment would run."""
from __future__ import annotations

import sys
from typing import List, Optional

import typer

from trainer import api
from trainer.cli._flags import CodeUriOpt, NamespaceOpt, OverlayOpt, SetOpt
from trainer.cli._output import OutputOpt, Printer

group = typer.Typer(no_args_is_help=True, help="Kubernetes (KubeRay): render a spec as a RayJob.")



def register(app: typer.Typer) -> None:
    app.add_typer(group, name="k8s")


@group.command("render")
def render(spec: str = typer.Argument(..., help="Job spec YAML."),
           overlay: str = OverlayOpt, code_uri: Optional[str] = CodeUriOpt,
           namespace: Optional[str] = NamespaceOpt,
           name: Optional[str] = typer.Option(None, "--name", help="RayJob name; default <job name>-<time>-<token>."),
           set_: List[str] = SetOpt,
           output: str = OutputOpt):
    """Print the RayJob for SPEC on an environment (YAML; --output json for JSON). Creates nothing."""
    import yaml

    p = Printer(output)
    body = api.render_k8s(spec, overlay, set=set_, job_id=name, code_uri=code_uri, namespace=namespace)
    p.emit(body, lambda b: sys.stdout.write(yaml.safe_dump(b, sort_keys=False)))
