"""Bundles run on an emulated Cortex-A72 (qemu-user + Debian arm64 python3.11 + aarch64 ORT)
and give the answers x86 ONNX Runtime gives."""
from __future__ import annotations

import json

import numpy as np
import pytest

from converters.edge.bundle import write_bundle
from converters.edge.qemu import check_cpu, run_bundle, run_bundle_detailed, valid_cpus
from converters.edge.setup import ONNXRUNTIME_VERSION
from trainer.errors import ConversionError, RuntimeNotInstalledError, UsageError

pytestmark = pytest.mark.edge


def output_scale(model) -> float:
    """The scale of the DequantizeLinear that produces the graph output: one int8 step."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model)).graph
    inits = {t.name: t for t in graph.initializer}
    last = next(n for n in graph.node if n.output[0] == graph.output[0].name)
    assert last.op_type == "DequantizeLinear"
    return float(numpy_helper.to_array(inits[last.input[1]]))


@pytest.mark.slow
def test_fp32_and_int8_bundles_agree_with_x86_under_cortex_a72(tmp_path, edge_root, digits_models,
                                                              ort_outputs):
    m = digits_models
    bundle = write_bundle(tmp_path / "digits", {"fp32": m.fp32, "int8": m.int8}, [m.input],
                          labels=[str(i) for i in range(10)], preprocessing={"scale": 1 / 16})
    x = m.x_test                                             # 360 held-out digits
    run = run_bundle_detailed(bundle, x, "cortex-a72", repeat=20)

    assert run.machine == "aarch64" and run.versions["onnxruntime"] == ONNXRUNTIME_VERSION
    ref_fp32, ref_int8 = ort_outputs(m.fp32, x), ort_outputs(m.int8, x)
    arm_fp32, arm_int8 = run.outputs["fp32"], run.outputs["int8"]
    assert arm_fp32.shape == arm_int8.shape == (len(x), 10)

    np.testing.assert_allclose(arm_fp32, ref_fp32, rtol=1e-4, atol=1e-4)
    top1_int8 = float((arm_int8.argmax(1) == ref_int8.argmax(1)).mean())
    assert top1_int8 >= 0.99
    # Close outputs. x86's U8S8 int8 kernels (AVX2 VPMADDUBSW) saturate int16 pair sums, so
    # fused x86 int8 logits drift by several quantization steps from the exact QDQ arithmetic;
    # ARM's kernels do not. Held tightly against the exact QDQ result (x86, no fusion): within
    # one step of the output quantization scale; loosely against fused x86: 10% of the span.
    exact_int8 = ort_outputs(m.int8, x, optimize=False)
    step = output_scale(m.int8)
    exact_diff = float(np.abs(arm_int8 - exact_int8).max())
    assert exact_diff <= step + 1e-6
    span = float(ref_int8.max() - ref_int8.min())
    int8_diff = float(np.abs(arm_int8 - ref_int8).max())
    assert int8_diff <= 0.1 * span
    # And int8 on ARM still tracks the fp32 model it came from.
    assert float((arm_int8.argmax(1) == ref_fp32.argmax(1)).mean()) >= 0.97

    stats = {"fp32_max_abs_diff": float(np.abs(arm_fp32 - ref_fp32).max()),
             "int8_max_abs_diff_vs_fused_x86": int8_diff, "int8_max_abs_diff_vs_exact_qdq": exact_diff,
             "int8_output_step": step, "int8_logit_span": span, "int8_top1_agreement": top1_int8,
             "fp32_accuracy_arm": float((arm_fp32.argmax(1) == m.y_test).mean()),
             "int8_accuracy_arm": float((arm_int8.argmax(1) == m.y_test).mean()),
             "latency_ms_p50": {k: v["latency_ms_p50"] for k, v in run.models.items()},
             "batch_s": {k: v["batch_s"] for k, v in run.models.items()},
             "emulated_process_s": run.wall_s, "n": len(x)}
    print("edge parity cortex-a72:", json.dumps(stats))


@pytest.mark.slow
def test_run_bundle_on_other_cpu_models(tmp_path, edge_root, digits_models, ort_outputs):
    m = digits_models
    bundle = write_bundle(tmp_path / "digits", {"int8": m.int8}, [m.input])
    x = m.x_test[:64]
    outputs = run_bundle(bundle, x, "neoverse-n1")
    assert list(outputs) == ["int8"]
    assert float((outputs["int8"].argmax(1) == ort_outputs(m.int8, x).argmax(1)).mean()) >= 0.98


def test_unknown_or_unreal_cpu_lists_the_valid_ones(tmp_path, tiny_model, tiny_input):
    assert {"cortex-a72", "cortex-a53", "neoverse-n1"} <= set(valid_cpus())
    bundle = write_bundle(tmp_path / "b", {"fp32": tiny_model}, [tiny_input])
    x = np.zeros((1, 4), np.float32)
    with pytest.raises(UsageError, match=r"unknown aarch64 CPU model 'cortex-a99'; valid: .*cortex-a72"):
        run_bundle(bundle, x, "cortex-a99")
    with pytest.raises(UsageError, match=r"'max' gives wrong int8 .* cortex-a53"):
        check_cpu("max")


def test_corrupt_bundle_is_refused_before_emulation(tmp_path, tiny_model, tiny_input):
    bundle = write_bundle(tmp_path / "b", {"fp32": tiny_model}, [tiny_input])
    with open(bundle / "fp32.onnx", "r+b") as f:
        f.seek(20)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ConversionError, match=r"corrupt bundle: fp32\.onnx sha256"):
        run_bundle(bundle, np.zeros((1, 4), np.float32), "cortex-a72")


def test_missing_root_says_run_setup(tmp_path, monkeypatch, qemu, tiny_model, tiny_input):
    bundle = write_bundle(tmp_path / "b", {"fp32": tiny_model}, [tiny_input])
    monkeypatch.setenv("TRAINER_RUNTIMES", str(tmp_path / "no-runtimes"))
    with pytest.raises(RuntimeNotInstalledError, match="run: trainer edge setup"):
        run_bundle(bundle, np.zeros((1, 4), np.float32), "cortex-a72")


@pytest.mark.slow
def test_cli_edge_run_saves_outputs(tmp_path, edge_root, digits_models, ort_outputs):
    import subprocess
    import sys

    m = digits_models
    bundle = write_bundle(tmp_path / "digits", {"fp32": m.fp32}, [m.input])
    np.save(tmp_path / "x.npy", m.x_test[:8])
    proc = subprocess.run([sys.executable, "-m", "trainer.cli", "edge", "run", str(bundle), "--inputs",
                           str(tmp_path / "x.npy"), "--cpu", "cortex-a53", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "emulated cortex-a53 (aarch64, onnxruntime" in proc.stdout
    # issue 27: emulated latency says it is emulated, and how to time it on the board
    assert "emulated p50 ms" in proc.stdout
    assert "emulated: latency under qemu -cpu cortex-a53 on this host, not the board's" in proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "out" / "fp32.npy"), ort_outputs(m.fp32, m.x_test[:8]),
                               rtol=1e-4, atol=1e-4)
