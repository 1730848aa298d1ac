"""`trainer edge ...`: provision the emulated aarch64 machine, run and inspect bundles."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from trainer.console import handles_errors

edge_app = typer.Typer(help="Edge bundles for ARM: provision the emulated aarch64 root, run bundles on it.",
                       no_args_is_help=True)


@edge_app.command("setup")
@handles_errors
def setup_cmd(force: bool = typer.Option(False, "--force", help="Rebuild the arm64 root even if it is there."),
              tflite: bool = typer.Option(False, "--tflite", help="Also install ai-edge-litert (for .tflite models).")):
    """Build and cache the arm64 python3.11 + numpy + onnxruntime root that `edge run` uses."""
    from converters.edge.setup import setup_edge

    typer.echo(setup_edge(force=force, tflite=tflite))


@edge_app.command("run")
@handles_errors
def run_cmd(bundle: Path = typer.Argument(..., help="Bundle folder (has manifest.json and run.py)."),
            inputs: Path = typer.Option(..., "--inputs", help=".npy file with the input batch."),
            cpu: str = typer.Option("cortex-a72", "--cpu", help="Emulated CPU model, e.g. cortex-a72, cortex-a53, neoverse-n1."),
            out: Optional[Path] = typer.Option(None, "--out", help="Save <model>.npy outputs here."),
            repeat: int = typer.Option(0, "--repeat", help="Also time this many batch-1 inferences per model.")):
    """Run BUNDLE's models on emulated aarch64 and print what each produced."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from converters.edge.qemu import check_cpu, run_bundle_detailed
    from trainer.errors import UsageError

    check_cpu(cpu)
    try:
        x = np.load(inputs, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"--inputs {inputs}: cannot read it as .npy ({e})") from None
    result = run_bundle_detailed(bundle, x, cpu, repeat=repeat)
    table = Table(title=f"{bundle} on emulated {cpu} ({result.machine}, onnxruntime "
                        f"{result.versions.get('onnxruntime', '?')}, {result.wall_s:.1f} s)")
    for col in ("model", "output shape", "top-1 of first 10", "batch s", "latency p50 ms"):
        table.add_column(col)
    for name, y in result.outputs.items():
        info = result.models[name]
        top = y.argmax(axis=-1)[:10].tolist() if y.ndim >= 2 else []
        latency = f"{info['latency_ms_p50']:.2f}" if "latency_ms_p50" in info else "-"
        table.add_row(name, str(tuple(y.shape)), str(top), f"{info['batch_s']:.3f}", latency)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            np.save(out / f"{name}.npy", y)
    Console().print(table)


@edge_app.command("verify")
@handles_errors
def verify_cmd(bundle: Path = typer.Argument(..., help="Bundle folder.")):
    """Check every file of BUNDLE against its manifest checksums."""
    from converters.edge.bundle import load_bundle

    b = load_bundle(bundle)
    spec = b.inputs[0]
    typer.echo(f"{bundle}: ok, {len(b.files)} files verified; models {', '.join(b.models)}; "
               f"input {spec.name} {list(spec.shape)} {spec.layout} {spec.dtype}")


def register(app: typer.Typer) -> None:
    """Mount `trainer edge ...` on the main CLI."""
    app.add_typer(edge_app, name="edge")
