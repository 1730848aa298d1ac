"""`trainer keys init | trust | untrust | ls`: the signing key pair and the keys each environment trusts."""
from __future__ import annotations

from pathlib import Path

import typer

from trainer import api
from trainer.cli._output import OutputOpt, Printer

group = typer.Typer(no_args_is_help=True, help="Signing keys: this machine's pair and the public keys each "
                                               "environment (dev, staging, production) trusts.")
EnvOpt = typer.Option(..., "--env", help="dev | staging | production")


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="keys")


@group.command("init")
def init(force: bool = typer.Option(False, "--force", help="Replace an existing pair (what it signed stops "
                                    "verifying against the new key)."),
         output: str = OutputOpt):
    """Make a signing key pair under $TRAINER_HOME/keys (private key 0600, never printed) and trust
    its public key in every environment. CI signs with $TRAINER_SIGNING_KEY (a PEM file) or
    $TRAINER_SIGNING_KEY_PEM instead."""
    p = Printer(output)
    made = api.keys_init(force=force)
    p.emit(made, lambda m: p.line(f"key {m['key_id'][:16]}: public key {m['public']} (trusted in "
                                  f"{', '.join(m['trusted_in'])}); the private key stays in {m['private']}"))


@group.command("trust")
def trust(public_key: Path = typer.Argument(..., help="A PEM public key (EC P-256), e.g. the CI's or an approver's."),
          env: str = EnvOpt, output: str = OutputOpt):
    """Trust a public key in an environment."""
    p = Printer(output)
    added = api.keys_trust(public_key, env)
    p.emit(added, lambda a: p.line(f"{a['env']} trusts key {a['key_id']}"))


@group.command("untrust")
def untrust(key_id: str = typer.Argument(..., help="The key id (at least its first 8 characters)."),
            env: str = EnvOpt, output: str = OutputOpt):
    """Stop trusting a key in an environment."""
    p = Printer(output)
    removed = api.keys_untrust(key_id, env)
    p.emit(removed, lambda r: p.line(f"{env} no longer trusts {', '.join(k[:16] for k in r)}" if r
                                     else f"{env} trusts no key {key_id}"))


@group.command("ls")
def ls(output: str = OutputOpt):
    """The trusted keys of every environment."""
    p = Printer(output)
    rows = api.keys_list()
    p.emit(rows, lambda rs: p.table(["env", "key id", "file"], [[r["env"], r["key_id"], r["file"]] for r in rs],
                                    title="trusted keys") if rs else p.line("no trusted keys (trainer keys init)"))
