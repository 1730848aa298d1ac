"""`trainer promote | promote history | retrain`: gated promotion and retraining on data change.

Exit codes: promote 0 promoted or already there (`changed: false` in its JSON), 10 a check failed (gate, order, approval; nothing changed), 11
a registry error, 13 the artifact does not verify (signature, file digests, provenance; nothing changed); retrain 0 retrained, 10 unchanged (nothing submitted), other non-zero failed.
"""
from __future__ import annotations

from typing import List, Optional

import typer
from typer.core import TyperGroup

from trainer import api
from trainer.cli._flags import AddressOpt, RegistryOpt, SetOpt, TrackingOpt
from trainer.cli._output import OutputOpt, Printer
from trainer.cli.jobs import _raise_unless_succeeded

# The command `trainer promote MODEL --to ...` runs; `history` is a subcommand beside it.
PROMOTE = "model"


class _PromoteGroup(TyperGroup):
    """`trainer promote MODEL --to ENV` and `trainer promote history MODEL` under one word: a
    first argument that names a subcommand (and no --to, which only promoting takes) is that
    subcommand; anything else is promoting MODEL, so a model named `history` is promoted with
    `trainer promote history --to staging`."""

    def resolve_command(self, ctx, args):
        if args and args[0] in self.commands and args[0] != PROMOTE and not any(
                a == "--to" or a.startswith("--to=") for a in args):
            return super().resolve_command(ctx, args)
        return PROMOTE, self.commands[PROMOTE], args


group = typer.Typer(cls=_PromoteGroup, no_args_is_help=True,
                    context_settings={"ignore_unknown_options": True},
                    subcommand_metavar="MODEL --to staging|production | history MODEL",
                    help="Promote MODEL --to staging|production: check the gates, then copy the artifact (same "
                         "digest) and move the MLflow alias, as one transaction (on any failure nothing is left "
                         "changed). `trainer promote history MODEL`: every promotion of MODEL.")


def register(app: typer.Typer) -> None:
    group.command(PROMOTE, hidden=True, no_args_is_help=True)(promote)
    group.command("history")(history)
    app.add_typer(group, name="promote")
    app.command("retrain")(retrain)


def promote(model: str = typer.Argument(..., help="Registered model name."),
            to: Optional[str] = typer.Option(None, "--to", help="staging | production"),
            version: Optional[str] = typer.Option(None, "--version", help="Model version; default the one in "
                                                  "the previous environment (dev for staging, staging for production)."),
            approve: bool = typer.Option(False, "--approve", help="The explicit approval production needs."),
            dry_run: bool = typer.Option(False, "--dry-run", help="Check only (gates, order; not the approval) "
                                         "and say whether promoting would change anything (JSON: changed)."),
            registry: Optional[str] = RegistryOpt, tracking_uri: Optional[str] = TrackingOpt,
            output: str = OutputOpt):
    """Promote MODEL --to staging|production: check the gates, then copy the artifact (same
    digest) and move the MLflow alias, as one transaction (on any failure nothing is left
    changed)."""
    from trainer.errors import UsageError

    p = Printer(output)
    if to is None:
        raise UsageError("usage: trainer promote MODEL --to staging|production [--version N] [--approve]")
    if version is not None and not (version.isascii() and version.isdigit()):
        raise UsageError(f"--version must be a version number, got {version!r}")
    record = api.promote(model, to, version, approve=approve, tracking_uri=tracking_uri, registry=registry,
                         progress=p.note, dry_run=dry_run)
    def render(r):
        if r.get("dry_run"):
            return p.line(f"{r['reason']}: nothing changed (--dry-run)")
        if not r["changed"]:
            return p.line(f"{r['reason']}: nothing changed" + (f" ({r['target']} {r['digest']})" if r["digest"] else ""))
        p.line(f"promoted {r['model']} version {r['version']} to {r['to']}"
               + (f": {r['target']} {r['digest']}" if r["digest"] else " (MLflow only)"))
    p.emit(record, render)


def history(model: str = typer.Argument(..., help="Registered model name."),
            tracking_uri: Optional[str] = TrackingOpt, output: str = OutputOpt) -> None:
    """Every promotion of MODEL, oldest first: who, when, from/to, digest, gates."""
    p = Printer(output)
    records = api.promotion_history(model, tracking_uri)

    def render(rows):
        if not rows:
            return p.line(f"{model}: no promotions yet")
        p.table(["when (UTC)", "version", "from -> to", "by", "digest", "gates", "registry", "signed"],
                [[r["at"][:19].replace("T", " "), r["version"], f"{r['from']} -> {r['to']}", r["by"],
                  (r["digest"] or "-")[:19], ", ".join(f"{g['gate']}={g['value']:.4g}" if g["value"] is not None
                                                      else f"{g['gate']}=?" for g in r["gates"]) or "-",
                  {True: "attached", False: "MISSING", None: "-"}.get(r["in_registry"], str(r["in_registry"])),
                  r.get("signatures") or "-"]
                 for r in rows], title=f"promotions of {model}")
    p.emit(records, render)


def retrain(spec: str = typer.Argument(..., help="Job spec YAML."),
            if_data_changed: bool = typer.Option(False, "--if-data-changed", help="Submit only when the data's "
                                                 "content digest differs from production's (exit 10 otherwise)."),
            set_: List[str] = SetOpt, address: Optional[str] = AddressOpt, output: str = OutputOpt):
    """For CI: retrain when the data changed. Exit 0 retrained, 10 unchanged, other codes failed."""
    from trainer.promotion.retrain import EXIT_UNCHANGED

    p = Printer(output)
    result = api.retrain(spec, if_data_changed=if_data_changed, address=address, set=set_, progress=p.note)
    d = result.decision
    state = result.job.status() if result.job else None
    summary = result.job.summary(state) if result.job else {}
    data = {"decision": "retrained" if result.job else "unchanged", "data_sha256": d.current,
            "recorded_sha256": d.recorded, "compared_with": d.against,
            "job_id": result.job.id if result.job else None, "run_id": result.job.run_id if result.job else None,
            "status": state.value if state else None,
            # the model version the job registered (its summary's block), for the next stage
            "registered": summary.get("registered"),
            "conversion": (summary.get("conversion") or {}).get("status")}
    def render(x):
        p.line(f"{x['decision']}: {d.describe()}" + (f"; job {x['job_id']} {x['status']}" if x["job_id"] else ""))
        r = x["registered"]
        if r:
            p.line(f"registered: {r['model']} version {r['version']}"
                   + (f" {r['reference']} {r['digest']}" if r.get("reference") else " (MLflow only)"), whole=True)
    p.emit(data, render)
    if result.job is not None:
        _raise_unless_succeeded(result.job, state, conversion=summary.get("conversion"))
    else:
        raise typer.Exit(EXIT_UNCHANGED)
