"""Run an edge bundle on an emulated aarch64 CPU: qemu-user + Debian's arm64 python3.11.

This project's runner (`converters/edge/runner.py`, the script bundles ship as `run.py`) runs on
the bundle's models, under `qemu-aarch64-static -cpu <model> -L <arm64 root>`, with inputs and
outputs as .npy files in a private temporary folder. The bundle's own `run.py` is never executed:
qemu-user is not a sandbox (the emulated process has the user's files and network), so only the
models - data, checked by `load_bundle` - come from the bundle.
Name a real CPU model: under qemu 7.2, `-cpu max` gave wrong ConvInteger (dynamic int8)
results where cortex-a72 / cortex-a53 / neoverse-n1 were right, so `max` is refused.
"""
from __future__ import annotations

import functools
import json
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converters.edge import runner
from converters.edge.bundle import load_bundle
from converters.edge.setup import find_qemu, python_command, read_stamp, require_qemu, require_root
from trainer.errors import ConversionError, RuntimeNotInstalledError, UnknownNameError, UsageError

# What Debian 12's qemu 7.2 offers; used only when qemu itself is not there to ask.
KNOWN_CPUS = ("a64fx", "cortex-a35", "cortex-a53", "cortex-a57", "cortex-a72", "cortex-a76",
              "neoverse-n1")
NOT_A_BOARD = {"max": "gives wrong int8 (ConvInteger) results under qemu 7.2",
               "any": "is not a CPU model"}
DEFAULT_CPU = "cortex-a72"
DEFAULT_TIMEOUT_S = 900


@dataclass
class EdgeRun:
    """What one emulated run produced: outputs per model, plus how it went."""

    cpu: str
    outputs: dict[str, np.ndarray]
    all_outputs: dict[str, list[np.ndarray]]
    models: dict[str, dict]                  # per model: load_s, batch_s, latency_ms_p50, ...
    versions: dict[str, str]                 # python / numpy / onnxruntime inside the emulator
    machine: str                             # platform.machine() inside: "aarch64"
    wall_s: float                            # the whole emulated process, start to exit
    extras: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=4)
def _cpus_of(qemu: str) -> tuple[str, ...]:
    proc = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True, timeout=30)
    names = [line.split()[0] for line in proc.stdout.splitlines()[1:] if line.strip()]
    return tuple(n for n in names if n not in NOT_A_BOARD) or KNOWN_CPUS


def valid_cpus() -> list[str]:
    """The CPU models the installed qemu emulates (minus `max`), or Debian 12's list."""
    qemu = find_qemu()
    return sorted(_cpus_of(str(qemu)) if qemu else KNOWN_CPUS)


def check_cpu(cpu: str) -> str:
    valid = valid_cpus()
    if cpu in NOT_A_BOARD:
        raise UsageError(f"aarch64 CPU {cpu!r} {NOT_A_BOARD[cpu]}; name a real one: {', '.join(valid)}")
    if cpu not in valid:
        raise UnknownNameError("aarch64 CPU model", cpu, valid)
    return cpu


def run_bundle_detailed(bundle_dir: Path, inputs: np.ndarray, cpu: str = DEFAULT_CPU,
                        models: list[str] | None = None, threads: int = 1, repeat: int = 0,
                        timeout_s: float = DEFAULT_TIMEOUT_S, public_keys: list[Path] | None = None) -> EdgeRun:
    """Run the bundle's models on `inputs` under emulated `cpu`; `repeat` > 0 also times that
    many batch-1 inferences per model (p50 in `models[name]["latency_ms_p50"]`). With
    `public_keys` (PEM files) the bundle must be signed by one of them: checked here, and again by
    the runner on the device before it loads any model file."""
    check_cpu(cpu)
    if public_keys:
        try:
            runner.load_manifest(Path(bundle_dir), True, [Path(k).read_bytes() for k in public_keys])
        except runner.BundleError as e:
            raise ConversionError(f"edge run of {bundle_dir}: {e}") from None
    bundle = load_bundle(bundle_dir)
    spec = bundle.inputs[0]
    x = np.asarray(inputs)
    if x.dtype != np.dtype(spec.dtype):
        if x.dtype.kind != np.dtype(spec.dtype).kind:
            raise UsageError(f"inputs are {x.dtype}, the bundle's input {spec.name!r} takes {spec.dtype}")
        x = x.astype(spec.dtype)
    qemu = require_qemu()
    root = require_root()
    kinds = {bundle.manifest["models"][n]["kind"] for n in (models or bundle.models) if n in bundle.models}
    if "tflite" in kinds and not (read_stamp(root) or {}).get("ai_edge_litert"):
        raise RuntimeNotInstalledError(f"{bundle.path} has .tflite models and the arm64 root has no "
                                       "ai-edge-litert; run: trainer edge setup --tflite")
    argv, env = python_command(root, cpu, qemu)
    with tempfile.TemporaryDirectory(prefix="trainer-edge-") as tmp:
        tmp = Path(tmp)
        np.save(tmp / "inputs.npy", np.ascontiguousarray(x))
        cmd = [*argv, str(Path(runner.__file__).resolve()), "--bundle", str(bundle.path.resolve()),
               "--input", str(tmp / "inputs.npy"), "--out", str(tmp / "out"),
               "--threads", str(threads), "--repeat", str(repeat)]
        for key in public_keys or []:
            cmd += ["--public-key", str(Path(key).resolve())]
        for name in models or []:
            cmd += ["--model", name]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ConversionError(f"edge run of {bundle.path} under qemu -cpu {cpu} took over "
                                  f"{timeout_s:.0f} s; try fewer inputs") from None
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if "cpuid_info warning" not in ln]
            last = lines[-1] if lines else "no output"
            if proc.returncode < 0 or proc.returncode >= 128:
                last = f"crashed with signal {abs(proc.returncode) % 128} ({last})"
            raise ConversionError(f"edge run of {bundle.path} under qemu -cpu {cpu} failed: {last}")
        result = json.loads((tmp / "out" / "result.json").read_text())
        all_outputs = {name: [np.load(tmp / "out" / Path(f).name, allow_pickle=False) for f in info["files"]]
                       for name, info in result["models"].items() if name in bundle.models}
    return EdgeRun(cpu=cpu, outputs={n: o[0] for n, o in all_outputs.items()},
                   all_outputs=all_outputs, models=result["models"], versions=result["versions"],
                   machine=result["machine"], wall_s=wall)


def run_bundle(bundle_dir: Path, inputs: np.ndarray, cpu: str) -> dict[str, np.ndarray]:
    """Each model's (first) output on `inputs`, computed on an emulated aarch64 `cpu`."""
    return run_bundle_detailed(bundle_dir, inputs, cpu).outputs
