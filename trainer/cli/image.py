"""`trainer image base | build | ls | check | push`: runtime images built from images/<runtime>/Dockerfile."""
from __future__ import annotations

from typing import Optional

import typer

from trainer import api
from trainer.cli._flags import RegistryOpt, TrackingOpt
from trainer.cli._output import OutputOpt, Printer

group = typer.Typer(no_args_is_help=True, help="Runtime images (buildah/podman), built from the same lock as "
                    "the venvs.")
NameArg = typer.Argument(..., help="torch | tensorflow | mxnet")
VariantOpt = typer.Option("cpu", "--variant", help="cpu | gpu (the lock's build variants)")


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="image")


def _progress(p: Printer):
    return None if p.json else (lambda line: p.line(f"  {line}"))


@group.command("base")
def base(rebuild: bool = typer.Option(False, "--rebuild", help="make it again even when it is cached"),
         output: str = OutputOpt) -> None:
    """Make the local Debian base image (mmdebstrap from this host's Debian mirror), once per machine."""
    p = Printer(output)
    report = api.image_base(rebuild=rebuild, progress=_progress(p))
    p.emit(report, lambda r: p.line(f"{r['image']}: " + (f"built in {r['seconds']:.0f}s" if r["built"]
                                                            else "cached (container storage)")))


@group.command("build")
def build(name: str = NameArg, variant: str = VariantOpt,
          base_image: Optional[str] = typer.Option(None, "--base", help="The base image (CUDA_IMAGE); default: "
                                                   "the local Debian base for cpu, the Dockerfile's CUDA base "
                                                   "for gpu."),
          python_source: Optional[str] = typer.Option(None, "--python", help="`uv` (python-build-standalone) or "
                                                      "the base's interpreter path; default /usr/bin/python3 on the "
                                                      "local base, else uv."),
          output: str = OutputOpt) -> None:
    """Build a runtime's image from images/<runtime>/Dockerfile and its lock (layers cached)."""
    p = Printer(output)
    r = api.image_build(name, variant, base_image, python_source, progress=_progress(p))
    p.emit(r, lambda r: p.line(f"built {r['image']} ({r['image_id'][:12]}) in {r['seconds']:.0f}s; "
                               f"lock {r['lock_digest'][:12]}, commit {r['git_commit'][:12]}"))


@group.command("ls")
def ls(name: Optional[str] = typer.Argument(None, help="only this runtime's images"),
       output: str = OutputOpt) -> None:
    """The runtime images here: tag, variant, size, lock digest, image digest."""
    p = Printer(output)
    rows = api.image_ls(name)
    p.emit(rows, lambda rows: p.table(
        ["image", "variant", "size", "lock", "digest"],
        [[(r["tags"] or ["<none>"])[0].removeprefix("localhost/"), r["variant"], f"{r['size'] / 2**20:.0f} MiB",
          r["lock_digest"][:12], r["digest"].removeprefix("sha256:")[:12]] for r in rows]))


@group.command("prune")
def prune(dry_run: bool = typer.Option(False, "--dry-run", help="list what would go, remove nothing"),
          output: str = OutputOpt) -> None:
    """Remove the runtime images and build stages that rebuilds left behind (untagged, or built
    from a lock that is no longer current); each runtime's current image stays."""
    p = Printer(output)
    rows = api.image_prune(dry_run)

    def show(rows):
        if not rows:
            p.line("nothing to prune: every runtime image here is its runtime's current one")
            return
        p.table(["image", "what", "size", "why", "removed"],
                [[r["id"].removeprefix("sha256:")[:12], r["what"], f"{r['size'] / 2**20:.0f} MiB", r["why"],
                  "no (dry run)" if dry_run else ("yes" if r["removed"] else f"no: {r['error']}")] for r in rows])
        if not dry_run:
            p.line(f"removed {sum(r['removed'] for r in rows)} of {len(rows)} image(s) "
                   f"(layers a kept image shares stay)")

    p.emit(rows, show)
    if any(r["error"] for r in rows):
        raise typer.Exit(12)


@group.command("check")
def check(name: str = NameArg, variant: str = VariantOpt, output: str = OutputOpt) -> None:
    """Every pin of the lock against what is installed inside the image (podman run python)."""
    p = Printer(output)
    r = api.image_check(name, variant)
    p.emit(r, lambda r: p.line(f"{r['image']}: all {r['pins']} pins of the lock match" if not r["mismatches"]
                               else f"{r['image']}: {len(r['mismatches'])} of {r['pins']} pins differ: "
                                    + ", ".join(r["mismatches"])))
    if r["mismatches"]:
        raise typer.Exit(12)


@group.command("push")
def push(name: str = NameArg, variant: str = VariantOpt, registry: Optional[str] = RegistryOpt,
         tracking_uri: Optional[str] = TrackingOpt, output: str = OutputOpt) -> None:
    """Push the runtime's image to the registry as dev/runtime-<name>:<lock digest 12>, registered
    in MLflow as model runtime-<name> (alias dev): promote it with `trainer promote runtime-<name>`."""
    p = Printer(output)
    r = api.image_push(name, variant, registry, tracking_uri)
    p.emit(r, lambda r: p.line(f"pushed {r['ref']} = {r['version_ref']} ({r['model']} version {r['version']}, "
                               f"alias dev)\n  pinned: {r['pinned']}"))
