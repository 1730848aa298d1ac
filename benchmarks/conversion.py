"""Benchmark: native torch vs ONNX Runtime fp32 vs ONNX Runtime int8 (static QDQ).

For each example model: convert with `converters.api.convert` (the same path users run), then
time p50 latency at batch 1 and 64 with 1 thread and all threads, for the native torch model
(eager, inference_mode) and the two ONNX artifacts (ORT CPU provider), all in this process on
the same inputs; report artifact sizes and parity numbers. Writes
benchmarks/results/conversion.md with the machine and versions.

    python benchmarks/conversion.py [--repeats 50] [--out benchmarks/results/conversion.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "converters"))


def _models():
    import torch
    from _torch_models import GRUClassifier, ResidualCNN, digits, randomize_bn, train_digits_cnn

    (xtr, _), (xte, yte) = digits()
    digits_model, acc = train_digits_cnn()
    n = len(xte)
    yield ("digits CNN (trained, 8x8 digits)", digits_model,
           (np.concatenate([xtr[:n], xte]), np.concatenate([np.zeros(n, np.int64), yte])), f"test accuracy {acc:.4f}")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    yield ("residual CNN (3x32x32, random weights)", randomize_bn(ResidualCNN(in_ch=3, width=32)),
           (rng.standard_normal((256, 3, 32, 32)).astype(np.float32), None), "")
    yield ("2-layer GRU (T=8, C=8, random weights)", GRUClassifier().eval(),
           (rng.standard_normal((256, 8, 8)).astype(np.float32), None), "")


def _p50(fn, x, repeats):
    fn(x)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def _torch_fn(model, threads):
    import torch

    def run(x):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return model(torch.from_numpy(x))
    return run


def _ort_fn(path, threads):
    from converters.targets.onnx import ort_runner

    return ort_runner(path, threads=threads)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "conversion.md")
    args = ap.parse_args(argv)

    import onnx
    import onnxruntime
    import torch

    from converters.api import convert

    all_threads = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    lines = ["# Conversion benchmark: native torch vs ONNX Runtime fp32 vs int8", "",
             f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
             f"- machine: {_cpu_name()}, {all_threads} logical CPUs, {platform.system()} {platform.machine()}; "
             f"1-min load average at start {load_before:.1f} (other jobs were running: treat as upper bounds)",
             f"- versions: Python {platform.python_version()}, torch {torch.__version__}, onnx {onnx.__version__}, "
             f"onnxruntime {onnxruntime.__version__}",
             f"- method: `converters.api.convert(..., targets=onnx,onnx-int8)`; p50 of {args.repeats} calls "
             f"after one warm-up; torch eager under inference_mode with torch.set_num_threads(T); ORT CPU "
             f"provider with intra_op_num_threads=T; int8 = static QDQ (uint8 activations, int8 per-channel "
             f"7-bit-range weights), calibrated on 256 real samples", "",
             "| model | runtime | size | threads | p50 b1 (ms) | p50 b64 (ms) | speed-up b1 vs torch | "
             "speed-up b64 vs torch | max abs diff | top-1 agreement |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, model, (x, y), extra) in enumerate(_models()):
            path = Path(tmp) / f"m{i}.pt2"   # torch.export: the format convert loads without --trust-pickle
            program = torch.export.export(model.eval(), (torch.from_numpy(np.ascontiguousarray(x[:4])),),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},))
            torch.export.save(program, str(path))
            calib = Path(tmp) / f"c{i}.npz"
            np.savez(calib, x=x, **({"y": y} if y is not None else {}))
            report = convert(path, "torch", ["onnx", "onnx-int8"], calib=calib, out_dir=Path(tmp) / f"out{i}",
                             log_to_mlflow=False)
            rows = {r.target: r for r in report.rows}
            arts = {t: Path(report.out_dir) / rows[t].artifact for t in rows}
            held = x[len(x) // 2:]
            b64 = np.ascontiguousarray(np.concatenate([held] * 2)[:64])
            b1 = np.ascontiguousarray(held[:1])
            for threads in (1, all_threads):
                runs = {"torch (eager)": (_torch_fn(model, threads), path.stat().st_size, None),
                        "ORT fp32": (_ort_fn(arts["onnx"], threads), rows["onnx"].size_bytes, rows["onnx"]),
                        "ORT int8": (_ort_fn(arts["onnx-int8"], threads), rows["onnx-int8"].size_bytes,
                                     rows["onnx-int8"])}
                base = None
                for rt, (fn, size, row) in runs.items():
                    t1, t64 = _p50(fn, b1, args.repeats), _p50(fn, b64, max(5, args.repeats // 5))
                    base = base or (t1, t64)
                    lines.append(f"| {name} | {rt} | {size / 1024:.1f} KiB | {threads} | {t1:.3f} | {t64:.2f} | "
                                 f"{base[0] / t1:.1f}x | {base[1] / t64:.1f}x | "
                                 f"{'-' if row is None else f'{row.max_abs_diff:.2g}'} | "
                                 f"{'-' if row is None or row.top1_agreement is None else f'{row.top1_agreement:.4f}'} |")
            torch.set_num_threads(all_threads)
            if extra:
                lines.append(f"| {name} | note | | | | | | | {extra} | |")
            print(f"done: {name}", flush=True)
    if load_before > all_threads:
        lines += ["", f"The machine was oversubscribed (load {load_before:.1f} on {all_threads} CPUs): the "
                  f"{all_threads}-thread torch eager rows are dominated by OpenMP threads waiting for "
                  f"cores; compare the 1-thread rows."]
    lines += ["", "Parity columns compare each artifact with the native model on held-out samples "
              "(max abs diff over all logits; top-1 agreement of argmax).", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
