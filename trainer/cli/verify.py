"""`trainer verify REF|MODEL@VERSION`: the signature against the trusted keys, every file against
the signed digests, the provenance against this digest. Exit 0 verified, 13 a check failed (one
line per failure, naming the file or claim), 11 the registry could not be read."""
from __future__ import annotations

from typing import Optional

import typer

from trainer import api
from trainer.cli._flags import RegistryOpt, TrackingOpt
from trainer.cli._output import OutputOpt, Printer


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)


def verify(target: str = typer.Argument(..., help="MODEL@VERSION, MODEL@ALIAS, or a registry reference "
                                        "([host/]project/name:tag)."),
           env: Optional[str] = typer.Option(None, "--env", help="Whose trusted keys: dev | staging | production "
                                             "(default: the reference's project; dev for MODEL@VERSION, which "
                                             "also picks that environment's copy)."),
           registry: Optional[str] = RegistryOpt, tracking_uri: Optional[str] = TrackingOpt,
           output: str = OutputOpt):
    """Verify a model artifact offline: signed by a trusted key, every file as signed, provenance for this digest."""
    from trainer.errors import VerifyError

    p = Printer(output)
    verdict = api.verify(target, env=env, registry=registry, tracking_uri=tracking_uri)

    def render(v):
        if v["ok"]:
            ev = v["evidence"] or {}
            return p.line(f"verified {v['reference']} {v['digest'][:19]}: {v['files']} file(s) signed by "
                          f"{v['signed_by'][:16]} (trusted in {v['env']}); provenance names this digest"
                          + (f"; parity {ev['parity']}" if ev.get("parity") else ""))
        for failure in v["failures"]:
            p.line(f"FAILED {failure}")
    p.emit(verdict, render)
    if not verdict["ok"]:
        raise VerifyError(f"{verdict['reference']} does not verify: {len(verdict['failures'])} check(s) failed")
