"""`trainer node labels`: this host's GPUs (NVML) as labels in every scheme that schedules on them."""
from __future__ import annotations

import json

import typer

from trainer import api
from trainer.cli._output import OutputOpt, Printer
from trainer.errors import UsageError

group = typer.Typer(no_args_is_help=True, help="This host as a cluster node: its GPUs and labels.")
FORMATS = ("ray", "k8s", "gfd", "json")


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="node")


@group.command("labels")
def labels(fmt: str = typer.Option("ray", "--format", "-f", help="ray (ray.io/accelerator-type), gfd "
                                   "(nvidia.com/gpu.*), k8s (every scheme: Ray, GFD, GKE, Karpenter), json"),
           output: str = OutputOpt):
    """This host's GPUs as node labels (`key=value` lines); without an NVIDIA driver the node is `cpu`."""
    p = Printer(output)
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    info = api.node_labels()
    if p.json or fmt == "json":
        print(json.dumps(info, indent=2))
        return
    if not info["gpus"]:
        p.note(f"no GPUs: {info['no_gpu_reason']}; this node is labelled cpu")
    schemes = {"ray": ["ray"], "gfd": ["gfd"], "k8s": ["ray", "gfd", "gke", "karpenter"]}[fmt]
    for scheme in schemes:
        for key, value in info["labels"][scheme].items():
            print(f"{key}={value}")
