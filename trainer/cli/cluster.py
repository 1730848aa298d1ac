"""`trainer cluster up | down | status`: the embedded local Ray cluster."""
from __future__ import annotations

from typing import List, Optional

import typer

from trainer import api
from trainer.cli._args import number
from trainer.cli._flags import AddressOpt, HeadOpt
from trainer.cli._output import OutputOpt, Printer
from trainer.cluster.containers import RAY_IMAGE_LABEL as IMAGE_LABEL
from trainer.errors import ClusterError

group = typer.Typer(no_args_is_help=True, help="The embedded local Ray cluster; join this host to a remote one.")


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="cluster")


@group.command("up")
def up(node: List[str] = typer.Option([], "--node", help="Worker node ACCEL:CPUS[:GPUS]; repeatable. "
                                      "Default: one cpu node with all cores."),
       image: Optional[str] = typer.Option(None, "--image", help="Run the worker nodes as podman containers of "
                                           "this runtime image (torch: the image `trainer image build torch` "
                                           "made from the current lock; or an image reference). The head stays "
                                           "on the host."),
       output: str = OutputOpt):
    """Start the local cluster: a CPU-only head plus labelled worker nodes."""
    p = Printer(output)
    state, started = api.cluster_up(node or None, progress=p.note, image=image)
    nodes = [str(n) for n in state.node_specs]
    p.emit({"started": started, "dashboard": state.dashboard_url, "nodes": nodes, "token_file": state.token_file,
            "image": state.image or None},
           lambda _: p.line(f"{'started' if started else 'already running'}: dashboard {state.dashboard_url}, "
                            f"nodes {', '.join(nodes)}" + (f" (in {state.image})" if state.image else "")))
    p.note(f"token auth on; Ray's own tools (ray job, ray.util.state, the dashboard in a browser) take its token: "
           f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={state.token_file}")


@group.command("down")
def down(output: str = OutputOpt):
    """Stop the local cluster's processes (only those it started)."""
    p = Printer(output)
    stopped = api.cluster_down()
    p.emit({"stopped_processes": stopped}, lambda _: p.line(f"stopped {stopped} process(es)"))


@group.command("status")
def status(address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """Nodes with their labels and total / free resources."""
    p = Printer(output)
    status = api.cluster_status(address)
    if p.json:
        return p.emit(status)
    if not status["running"]:
        raise ClusterError("no local cluster is running (start one: trainer cluster up)")

    def free(f, t) -> str:
        return f"{'?' if f is None else f'{f:g}'}/{t:g}"
    p.table(["node", "role", "accelerator", "CPUs free/total", "GPUs free/total", "image"],
            [[n["node_id"][:12], "head" if n["is_head"] else "worker", n["accelerator"] or "-",
              free(n["cpus_free"], n["cpus"]), free(n["gpus_free"], n["gpus"]),
              n["labels"].get(IMAGE_LABEL, "host")] for n in status["nodes"]],
            title=status["address"])


@group.command("join")
def join(address: str = HeadOpt,
         cpus: Optional[int] = typer.Option(None, "--cpus", help="CPUs to offer; default all cores.",
                                            callback=number("--cpus", 1)),
         object_store_mb: Optional[int] = typer.Option(None, "--object-store-mb", help="Object store size.",
                                                       callback=number("--object-store-mb", 1)),
         node_ip: Optional[str] = typer.Option(None, "--node-ip", help="This host's address the head can reach "
                                               "(a host with several networks)."),
         output: str = OutputOpt):
    """Start a Ray worker node here that joins an existing head, labelled by this host's GPUs
    (ray.io/accelerator-type, GPU count); with no NVIDIA driver the node joins as `cpu`. A head
    with token auth takes the token from RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH."""
    p = Printer(output)
    joined = api.cluster_join(address, cpus=cpus, object_store_mb=object_store_mb, node_ip=node_ip)
    if joined["no_gpu_reason"]:
        p.note(f"no GPUs: {joined['no_gpu_reason']}; joining as a cpu node")
    labels = ",".join(f"{k}={v}" for k, v in joined["labels"].items())
    p.emit(joined, lambda j: p.line(f"joined {j['address']}: {j['cpus']} CPUs, {j['gpus']} GPUs, labels {labels} "
                                    f"(stop with: ray stop; log: {j['log']})"))
