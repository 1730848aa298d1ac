"""`trainer spec schema | validate`: job spec tools."""
from __future__ import annotations

from typing import List

import typer

from trainer.cli._flags import SetOpt
from trainer.cli._output import OutputOpt, Printer

group = typer.Typer(no_args_is_help=True, help="Job spec tools.")


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="spec")


@group.command("schema")
def schema(output: str = OutputOpt):
    """Print the job spec's JSON Schema (for editor autocompletion); JSON in either output mode."""
    from trainer.spec import json_schema

    Printer(output)
    Printer("json").emit(json_schema())


@group.command("validate")
def validate(spec: str, set_: List[str] = SetOpt, output: str = OutputOpt):
    """Validate a spec (schema, entrypoint, data, code size) without submitting it."""
    from trainer.scheduling.preflight import check_spec
    from trainer.spec import load_spec

    p = Printer(output)
    spec_obj, workdir = load_spec(spec, set_)
    checked = check_spec(spec_obj, workdir)
    p.emit({"spec": spec, "valid": True, "framework": spec_obj.framework, "workers": spec_obj.workers,
            "workdir": str(workdir), "upload_bytes": checked.upload_bytes,
            "data_sha256": checked.fingerprint.digest if checked.fingerprint else None},
           lambda _: p.line(f"{spec}: valid ({spec_obj.framework}, {spec_obj.workers} worker(s), workdir {workdir})"))
