"""`trainer registry serve | stop | push | pull | ls | copy`: models and images as OCI artifacts."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from trainer import api
from trainer.cli._flags import RegistryOpt
from trainer.cli._output import OutputOpt, Printer
from trainer.registry.serve import DEFAULT_PORT

group = typer.Typer(no_args_is_help=True, help="OCI registry: the local one, and models/images as artifacts.")


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="registry")


@group.command("serve")
def serve(port: int = typer.Option(DEFAULT_PORT, "--port", help="Port on 127.0.0.1 (0: any free port; the "
                                   "default is not MLflow's 5000)."),
          user: str = typer.Option("trainer", "--user", help="The htpasswd user."),
          output: str = OutputOpt):
    """Start a local OCI registry (Debian's docker-registry) on 127.0.0.1 with htpasswd auth, in
    the background; its login goes to $TRAINER_HOME/registry/config.json (0600), never to the screen."""
    p = Printer(output)
    state, started = api.registry_serve(port=port, user=user)
    p.emit({**state, "started": started},
           lambda s: p.line(f"{'started' if started else 'already running'}: registry {s['address']} (user "
                            f"{s['user']}; login in $TRAINER_HOME/registry/config.json; stop: trainer registry stop)"))


@group.command("stop")
def stop(output: str = OutputOpt):
    """Stop the local registry (its data stays)."""
    p = Printer(output)
    stopped = api.registry_stop()
    p.emit({"stopped": stopped}, lambda s: p.line("stopped" if stopped else "not running"))


@group.command("push")
def push(path: Path = typer.Argument(..., help="A model folder/file (pushed as a ModelPack artifact) or an "
                                     "OCI image layout folder (pushed as an image)."),
         ref: str = typer.Argument(..., help="[host/]project/name:tag, e.g. dev/digits-cnn:v3"),
         registry: Optional[str] = RegistryOpt, output: str = OutputOpt):
    """Push a model or an image."""
    p = Printer(output)
    result = api.registry_push(path, ref, registry)
    p.emit(result, lambda r: p.line(f"pushed {r['kind']} {r['ref']} {r['digest']}"))


@group.command("pull")
def pull(ref: str = typer.Argument(..., help="[host/]project/name:tag or @sha256:..."),
         dest: Optional[Path] = typer.Argument(None, help="A new or empty folder to write the artifact's files "
                                               "into; default ./<name>-<tag>."),
         registry: Optional[str] = RegistryOpt, output: str = OutputOpt):
    """Pull a model artifact's files (each layer to its org.cncf.model.filepath), digests checked,
    into a new or empty folder (or one an earlier pull wrote): it never replaces other files."""
    from trainer.registry.artifacts import default_pull_folder

    p = Printer(output)
    result = api.registry_pull(ref, dest if dest is not None else default_pull_folder(ref), registry)
    p.emit(result, lambda r: p.line(f"pulled {r['ref']} {r['digest']}: {len(r['files'])} file(s) into {r['dest']}"))


@group.command("ls")
def ls(repo: Optional[str] = typer.Argument(None, help="A repository (project/name); default: list repositories."),
       registry: Optional[str] = RegistryOpt, output: str = OutputOpt):
    """Repositories, or one repository's tags with digests."""
    p = Printer(output)
    result = api.registry_ls(repo, registry)

    def render(r):
        if "repositories" in r:
            p.line(f"registry {r['registry']}")
            return p.table(["repository"], [[x] for x in r["repositories"]])
        p.line(f"{r['registry']}/{r['repository']}")
        p.table(["tag", "digest"], [[t["tag"], t["digest"]] for t in r["tags"]])
    p.emit(result, render)


@group.command("copy")
def copy(src: str = typer.Argument(..., help="project/name:tag (or @sha256:...)"),
         dst: str = typer.Argument(..., help="[host/]project/name:tag"),
         registry: Optional[str] = RegistryOpt, output: str = OutputOpt):
    """Copy keeping the digest (cross-repository mount + manifest PUT): how the runtime images
    move dev/ -> staging/ -> prod/. A DST on another host gets the blobs streamed across, each
    registry with its own credentials."""
    p = Printer(output)
    result = api.registry_copy(src, dst, registry)
    p.emit(result, lambda r: p.line(f"copied {r['source']} -> {r['target']} {r['digest']}"))
