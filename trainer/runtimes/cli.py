"""`trainer runtime install|list|path`: thin commands over `trainer.runtimes`."""
from __future__ import annotations

import json
from dataclasses import asdict

import typer

from trainer import runtimes
from trainer.console import handles_errors
from trainer.errors import UsageError


def _check_output(output: str, allowed: tuple[str, ...]) -> None:
    if output not in allowed:
        raise UsageError(f"--output must be one of {', '.join(allowed)}, got {output!r}")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Per-framework runtimes (venvs built from images/<runtime>/requirements.lock).",
                        no_args_is_help=True)

    @group.command("install")
    @handles_errors
    def install_cmd(
        name: str = typer.Argument(..., help="torch | tensorflow | mxnet"),
        force: bool = typer.Option(False, "--force", help="rebuild even when the lock is unchanged"),
        output: str = typer.Option("text", "--output", "-o", help="text | json"),
    ) -> None:
        """Build the runtime's venv from its lock file (skipped when the lock is unchanged)."""
        _check_output(output, ("text", "json"))
        quiet = output == "json"
        report = runtimes.install(name, force=force, echo=None if quiet else (lambda line: typer.echo(f"  {line}")))
        if quiet:
            typer.echo(json.dumps(report.to_dict(), indent=1))
            return
        what = {"created": "installed", "synced": "synced to the changed lock", "unchanged": "already up to date (lock unchanged)",
                "project-venv": "served by the project venv (it satisfies the lock)"}[report.action]
        typer.echo(f"runtime {name}: {what} at {report.path} (python {report.python}, "
                   f"{report.packages} packages, {report.seconds:.0f}s)")
        for pkg, ver in report.versions.items():
            typer.echo(f"  {pkg}=={ver}")

    @group.command("list")
    @handles_errors
    def list_cmd(output: str = typer.Option("table", "--output", "-o", help="table | json")) -> None:
        """Every runtime: installed?, path, lock digest, key versions."""
        _check_output(output, ("table", "json"))
        rows = runtimes.list_runtimes()
        if output == "json":
            typer.echo(json.dumps([asdict(r) for r in rows], indent=1))
            return
        from rich.console import Console
        from rich.table import Table
        table = Table("runtime", "installed", "path", "lock sha256", "versions")
        for r in rows:
            table.add_row(r.name, "yes" if r.installed else ("stale" if r.note else "no"), r.path,
                          r.lock_sha256[:12], " ".join(f"{k}={v}" for k, v in r.versions.items()) or r.note)
        Console().print(table)

    @group.command("path")
    @handles_errors
    def path_cmd(
        name: str = typer.Argument(..., help="torch | tensorflow | mxnet"),
        python: bool = typer.Option(False, "--python", help="print the interpreter instead of the prefix"),
    ) -> None:
        """Print the runtime's prefix (or interpreter); fails with the install command if absent."""
        typer.echo(str(runtimes.python_for(name) if python else runtimes.path(name)))

    app.add_typer(group, name="runtime")
