"""`trainer edge setup | run | verify`: the emulated aarch64 root and edge bundles.

A bundle is untrusted input: `run` and `verify` check its manifest's names and paths and its
checksums, and `run` executes this trainer's own runner on the bundle's models, never the
bundle's `run.py`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from trainer.cli._args import number, regular_file
from trainer.cli._output import OutputOpt, Printer
from trainer.errors import UsageError, first_line

group = typer.Typer(help="Edge bundles for ARM: provision the emulated aarch64 root, run bundles on it.",
                    no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="edge")


@group.command("setup")
def setup(force: bool = typer.Option(False, "--force", help="Rebuild the arm64 root even if it is there."),
          tflite: bool = typer.Option(False, "--tflite", help="Also install ai-edge-litert (for .tflite models)."),
          output: str = OutputOpt):
    """Build and cache the arm64 python3.11 + numpy + onnxruntime root that `edge run` uses."""
    from converters.edge.setup import setup_edge

    p = Printer(output)
    root = setup_edge(force=force, tflite=tflite, echo=p.note)
    p.emit({"root": str(root)}, lambda _: p.line(str(root)))


@group.command("run")
def run(bundle: Path = typer.Argument(..., help="Bundle folder (has manifest.json and run.py)."),
        inputs: Path = typer.Option(..., "--inputs", help=".npy file with the input batch."),
        cpu: str = typer.Option("cortex-a72", "--cpu", help="Emulated CPU model, e.g. cortex-a72, cortex-a53, "
                                "neoverse-n1."),
        out: Optional[Path] = typer.Option(None, "--out", help="Save <model>.npy outputs here."),
        repeat: int = typer.Option(0, "--repeat", help="Also time this many batch-1 inferences per model.",
                                   callback=number("--repeat", 0, 100_000)),
        public_key: Optional[List[Path]] = typer.Option(None, "--public-key", help="A trusted PEM public key "
                                                        "(repeatable); default the keys production trusts "
                                                        "(trainer keys ls). With any, the bundle must be signed."),
        output: str = OutputOpt):
    """Run BUNDLE's models on emulated aarch64 with this trainer's runner (never the bundle's
    run.py) and print what each produced."""
    import numpy as np

    from converters.edge.qemu import check_cpu, run_bundle_detailed

    p = Printer(output)
    check_cpu(cpu)
    regular_file("--inputs", inputs)
    with open(inputs, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise UsageError(f"--inputs {inputs}: is not an .npy file (no NUMPY header)")
    try:
        x = np.load(inputs, allow_pickle=False)
    except (OSError, ValueError, EOFError, MemoryError) as e:
        raise UsageError(f"--inputs {inputs}: cannot read it as .npy ({first_line(e)})") from None
    from converters.edge.bundle import load_bundle

    keys = _trusted_key_files(public_key)
    if not keys:
        p.note("not verified: no key is trusted for production (trainer keys init) and no --public-key")
    result = run_bundle_detailed(bundle, x, cpu, repeat=repeat, public_keys=keys)
    labels = load_bundle(bundle).labels
    models = {}
    for name, y in result.outputs.items():
        info = result.models[name]
        top = y.argmax(axis=-1)[:10].tolist() if y.ndim >= 2 else []
        models[name] = {"output_shape": list(y.shape), "top1_first10": top,
                        "top1_first10_labels": [labels[i] for i in top] if labels and y.shape[-1] == len(labels) else None,
                        "batch_s": info["batch_s"], "latency_ms_p50": info.get("latency_ms_p50")}
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            np.save(out / f"{name}.npy", y)
    caveat = (f"emulated: latency under qemu -cpu {cpu} on this host, not the board's; time it on the device "
              "with: python3 run.py --input x.npy --repeat 50")

    def render(_):
        p.table(["model", "output shape", "top-1 of first 10", "batch s", "emulated p50 ms"],
                [[name, str(tuple(m["output_shape"])), " ".join(map(str, m["top1_first10_labels"] or m["top1_first10"])),
                  f"{m['batch_s']:.3f}", "-" if m["latency_ms_p50"] is None else f"{m['latency_ms_p50']:.2f}"]
                 for name, m in models.items()],
                title=f"{bundle} on emulated {cpu} ({result.machine}, onnxruntime "
                      f"{result.versions.get('onnxruntime', '?')}, {result.wall_s:.1f} s)")
        p.note(caveat)
    p.emit({"bundle": str(bundle), "cpu": cpu, "emulated": True, "latency_note": caveat, "machine": result.machine,
            "versions": result.versions, "wall_s": result.wall_s, "models": models}, render)


@group.command("verify")
def verify(bundle: Path = typer.Argument(..., help="Bundle folder."), output: str = OutputOpt):
    """Check BUNDLE's manifest (names, paths, kinds) and every file against its checksum."""
    from converters.edge.bundle import RUNNER_NAME, load_bundle

    p = Printer(output)
    b = load_bundle(bundle)
    spec = b.inputs[0]
    shipped = RUNNER_NAME in b.files
    runner = ("this trainer's runner" if b.runner_is_ours else "differs from this trainer's runner") \
        if shipped else "none shipped"
    p.emit({"bundle": str(bundle), "ok": True, "files": len(b.files), "models": list(b.models),
            "input": {"name": spec.name, "shape": list(spec.shape), "layout": spec.layout, "dtype": spec.dtype},
            "runner_is_ours": b.runner_is_ours if shipped else None},
           lambda _: p.line(f"{bundle}: ok, {len(b.files)} files verified; models {', '.join(b.models)}; "
                            f"input {spec.name} {list(spec.shape)} {spec.layout} {spec.dtype}; "
                            f"{RUNNER_NAME}: {runner} (trainer never runs it)"))


def _trusted_key_files(given: Optional[List[Path]]) -> list[Path]:
    """The PEM files the device checks the bundle's signature with: --public-key, else production's."""
    from trainer.api import keys_list

    if given:
        for path in given:
            regular_file("--public-key", path)
        return list(given)
    return [Path(k["file"]) for k in keys_list() if k["env"] == "production"]
