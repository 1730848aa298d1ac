"""`trainer runtime install | list | path`: per-framework venvs built from images/<runtime>/requirements.lock."""
from __future__ import annotations

from dataclasses import asdict

import typer

from trainer import runtimes
from trainer.cli._output import OutputOpt, Printer

group = typer.Typer(no_args_is_help=True,
                    help="Per-framework runtimes (venvs built from images/<runtime>/requirements.lock).")
NameArg = typer.Argument(..., help="torch | tensorflow | mxnet")


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="runtime")


@group.command("install")
def install(name: str = NameArg,
            force: bool = typer.Option(False, "--force", help="rebuild even when the lock is unchanged"),
            output: str = OutputOpt) -> None:
    """Build the runtime's venv from its lock file (skipped when the lock is unchanged)."""
    p = Printer(output)
    report = runtimes.install(name, force=force, echo=None if p.json else (lambda line: p.line(f"  {line}")))

    def render(report) -> None:
        what = {"created": "installed", "synced": "synced to the changed lock",
                "unchanged": "already up to date (lock unchanged)",
                "project-venv": "served by the project venv (it satisfies the lock)"}[report.action]
        p.line(f"runtime {name}: {what} at {report.path} (python {report.python}, "
               f"{report.packages} packages, {report.seconds:.0f}s)")
        for pkg, ver in report.versions.items():
            p.line(f"  {pkg}=={ver}")
    p.emit(report.to_dict(), lambda _: render(report))


@group.command("list")
def list_(output: str = OutputOpt) -> None:
    """Every runtime: installed?, path, lock digest, key versions."""
    p = Printer(output)
    rows = runtimes.list_runtimes()
    p.emit([asdict(r) for r in rows], lambda _: p.table(
        ["runtime", "installed", "path", "lock sha256", "versions"],
        [[r.name, "yes" if r.installed else ("stale" if r.note else "no"), r.path, r.lock_sha256[:12],
          " ".join(f"{k}={v}" for k, v in r.versions.items()) or r.note] for r in rows]))


@group.command("path")
def path(name: str = NameArg,
         python: bool = typer.Option(False, "--python", help="print the interpreter instead of the prefix"),
         output: str = OutputOpt) -> None:
    """Print the runtime's prefix (or interpreter); fails with the install command if absent."""
    p = Printer(output)
    found = str(runtimes.python_for(name) if python else runtimes.path(name))
    p.emit({"runtime": name, "python" if python else "path": found}, lambda _: print(found))
