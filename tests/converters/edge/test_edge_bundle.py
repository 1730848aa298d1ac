"""The bundle format and its runner on this (x86) host: no emulator needed."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters.edge import runner
from converters.edge.bundle import load_bundle, write_bundle
from converters.edge.setup import ONNXRUNTIME_VERSION
from trainer.errors import ConversionError, UsageError

LABELS = ["cat", "dog", "bird"]


def run_py(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    """The bundle's run.py as a board would start it: a plain python with numpy + onnxruntime."""
    return subprocess.run([sys.executable, str(bundle / "run.py"), *args], capture_output=True,
                          text=True, timeout=120, cwd=bundle.parent)


def test_manifest_describes_inputs_labels_and_checksums(tmp_path, tiny_model, tiny_input):
    pre = {"scale": 0.0625, "mean": [0.5], "std": [0.25]}
    bundle = write_bundle(tmp_path / "b", {"fp32": tiny_model}, [tiny_input], LABELS, pre)

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format"] == "trainer-edge-bundle" and manifest["format_version"] == 1
    assert manifest["inputs"] == [{"name": "x", "shape": [None, 4], "layout": "NC", "dtype": "float32"}]
    assert manifest["labels"] == LABELS and manifest["preprocessing"] == pre
    assert manifest["models"] == {"fp32": {"file": "fp32.onnx", "kind": "onnx"}}
    assert manifest["checked_with"]["onnxruntime"] == ONNXRUNTIME_VERSION
    # issue 27: a README for the person at the board, checksummed like every file
    assert sorted(p.name for p in bundle.iterdir()) == ["README.md", "fp32.onnx", "manifest.json", "run.py"]
    assert set(manifest["files"]) == {"README.md", "fp32.onnx", "run.py"}
    for name, entry in manifest["files"].items():
        data = (bundle / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert (bundle / "run.py").read_bytes() == Path(runner.__file__).read_bytes()
    assert (bundle / "fp32.onnx").read_bytes() == tiny_model.read_bytes()

    loaded = load_bundle(bundle)
    assert loaded.models == {"fp32": bundle / "fp32.onnx"}
    assert loaded.inputs == [tiny_input] and loaded.labels == LABELS and loaded.preprocessing == pre
    # Not a side folder left next to it.
    assert [p.name for p in tmp_path.iterdir() if p.name != "src"] == ["b"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupt_bundle_names_the_file(tmp_path, tiny_model, tiny_input, damage):
    bundle = write_bundle(tmp_path / "b", {"fp32": tiny_model}, [tiny_input])
    model = bundle / "fp32.onnx"
    data = bytearray(model.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    elif damage == "truncate":
        model.write_bytes(bytes(data[:-10]))
    else:
        model.unlink()
    with pytest.raises(ConversionError, match=r"corrupt bundle: fp32\.onnx"):
        load_bundle(bundle)
    np.save(tmp_path / "x.npy", np.zeros((2, 4), np.float32))
    proc = run_py(bundle, "--input", str(tmp_path / "x.npy"))
    assert proc.returncode == 3 and "corrupt bundle: fp32.onnx" in proc.stderr


def test_edited_runner_or_manifest_is_caught(tmp_path, tiny_model, tiny_input):
    bundle = write_bundle(tmp_path / "b", {"fp32": tiny_model}, [tiny_input])
    with open(bundle / "run.py", "a") as f:
        f.write("\n# edited\n")
    with pytest.raises(ConversionError, match=r"run\.py"):
        load_bundle(bundle)
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(ConversionError, match="manifest.json is not valid JSON"):
        load_bundle(bundle)


def test_runner_on_host_gives_onnxruntime_outputs(tmp_path, tiny_model, tiny_input, ort_outputs):
    bundle = write_bundle(tmp_path / "b", {"a": tiny_model, "b": tiny_model}, [tiny_input], LABELS)
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = run_py(bundle, "--input", str(tmp_path / "x.npy"), "--out", str(tmp_path / "out"),
                  "--repeat", "3")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert set(result["models"]) == {"a", "b"} and result["batch"] == 5
    assert result["models"]["a"]["latency_runs"] == 3 and result["models"]["a"]["latency_ms_p50"] > 0
    expected = ort_outputs(tiny_model, x)
    for name in ("a", "b"):
        np.testing.assert_array_equal(np.load(tmp_path / "out" / f"{name}.npy"), expected)

    # It prints the top classes by label (issue 27: top-k per sample, best first).
    proc = run_py(bundle, "--input", str(tmp_path / "x.npy"), "--model", "b")
    assert proc.returncode == 0, proc.stderr
    shown = [ln.split(": ", 2)[2].split(" (")[0] for ln in proc.stdout.splitlines() if ln.startswith("b: sample ")]
    assert shown == [LABELS[i] for i in expected.argmax(1)]


def test_runner_rejects_wrong_input_and_unknown_model(tmp_path, tiny_model, tiny_input):
    bundle = write_bundle(tmp_path / "b", {"fp32": tiny_model}, [tiny_input])
    np.save(tmp_path / "bad.npy", np.zeros((2, 5), np.float32))
    proc = run_py(bundle, "--input", str(tmp_path / "bad.npy"))
    assert proc.returncode == 2 and "input 'x': shape (2, 5), model takes (N, 4)" in proc.stderr
    np.save(tmp_path / "f64.npy", np.zeros((2, 4)))
    proc = run_py(bundle, "--input", str(tmp_path / "f64.npy"))
    assert proc.returncode == 2 and "dtype float64, model takes float32" in proc.stderr
    np.save(tmp_path / "x.npy", np.zeros((2, 4), np.float32))
    proc = run_py(bundle, "--input", str(tmp_path / "x.npy"), "--model", "int8")
    assert proc.returncode == 2 and "unknown model 'int8'; the bundle has fp32" in proc.stderr


def test_runner_applies_manifest_preprocessing(tmp_path, tiny_model, tiny_input, ort_outputs):
    pre = {"scale": 1 / 16, "mean": [0.1, 0.2, 0.3, 0.4], "std": [0.5, 1.0, 2.0, 4.0]}
    bundle = write_bundle(tmp_path / "b", {"fp32": tiny_model}, [tiny_input], preprocessing=pre)
    raw = np.random.default_rng(2).integers(0, 17, (6, 4)).astype(np.float32)
    np.save(tmp_path / "raw.npy", raw)
    proc = run_py(bundle, "--input", str(tmp_path / "raw.npy"), "--out", str(tmp_path / "out"), "--preprocess")
    assert proc.returncode == 0, proc.stderr
    x = ((raw / 16 - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)).astype(np.float32)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "fp32.npy"), ort_outputs(tiny_model, x),
                               rtol=1e-6, atol=1e-7)


def test_external_data_is_inlined(tmp_path, make_tiny, tiny_input, ort_outputs):
    src = make_tiny(tmp_path / "src" / "ext.onnx", external_data=True)
    assert (tmp_path / "src" / "ext.onnx.data").is_file()
    bundle = write_bundle(tmp_path / "b", {"fp32": src}, [tiny_input])
    assert sorted(p.name for p in bundle.iterdir()) == ["README.md", "fp32.onnx", "manifest.json", "run.py"]
    x = np.ones((3, 4), np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = run_py(bundle, "--input", str(tmp_path / "x.npy"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "fp32.npy"), ort_outputs(src, x))


def test_bad_arguments_leave_nothing_behind(tmp_path, tiny_model, tiny_input):
    from converters.base import ModelInput

    wrong = ModelInput(name="pixels", shape=(None, 4), layout="NC")
    with pytest.raises(ConversionError, match=r"model inputs are \['x'\], the bundle's inputs are \['pixels'\]"):
        write_bundle(tmp_path / "b", {"fp32": tiny_model}, [wrong])
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(tiny_model.read_bytes()[:40])
    with pytest.raises(ConversionError, match="broken.onnx: not a readable ONNX model"):
        write_bundle(tmp_path / "b", {"fp32": broken}, [tiny_input])
    with pytest.raises(UsageError, match="edge bundles take .onnx, .tflite models"):
        write_bundle(tmp_path / "b", {"fp32": tmp_path / "model.pt"}, [tiny_input])
    with pytest.raises(UsageError, match="must be a plain file name"):
        write_bundle(tmp_path / "b", {"../up": tiny_model}, [tiny_input])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx", "src"]

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="exists and is not an edge bundle"):
        write_bundle(other, {"fp32": tiny_model}, [tiny_input])
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def test_rewriting_a_bundle_replaces_it(tmp_path, tiny_model, tiny_input):
    bundle = write_bundle(tmp_path / "b", {"fp32": tiny_model, "int8": tiny_model}, [tiny_input])
    write_bundle(bundle, {"only": tiny_model}, [tiny_input])
    assert sorted(p.name for p in bundle.iterdir()) == ["README.md", "manifest.json", "only.onnx", "run.py"]
    assert list(load_bundle(bundle).models) == ["only"]


def trainer_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_verify_and_its_errors(tmp_path, tiny_model, tiny_input):
    bundle = write_bundle(tmp_path / "b", {"fp32": tiny_model}, [tiny_input])
    proc = trainer_cli("edge", "verify", str(bundle))
    assert proc.returncode == 0, proc.stderr
    assert "ok, 3 files verified; models fp32; input x [None, 4] NC float32" in proc.stdout   # + README.md
    (bundle / "fp32.onnx").write_bytes(b"not a model")
    proc = trainer_cli("edge", "verify", str(bundle))
    assert proc.returncode == ConversionError.exit_code
    assert proc.stderr.strip().startswith("error:") and "corrupt bundle: fp32.onnx" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    proc = trainer_cli("edge", "run", str(bundle), "--inputs", str(tmp_path / "x.npy"), "--cpu", "cortex-a99")
    assert proc.returncode == UsageError.exit_code
    assert "unknown aarch64 CPU model 'cortex-a99'; valid:" in proc.stderr


def test_bundle_names_its_source_and_explains_itself(tmp_path, tiny_model, tiny_input):
    source = {"model": "runs:/abc123/model", "run_id": "abc123", "model_version": None,
              "model_digest": "sha256:" + "0" * 64}
    bundle = write_bundle(tmp_path / "b", {"fp32": tiny_model}, [tiny_input], LABELS, {"scale": 0.0625},
                          source=source)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["source"] == {"model": "runs:/abc123/model", "run_id": "abc123",
                                  "model_digest": "sha256:" + "0" * 64}
    readme = (bundle / "README.md").read_text()
    assert "run id `abc123`" in readme and "`fp32.onnx`" in readme and "`run.py`" in readme
    assert "python3 run.py --input x.npy --preprocess" in readme and "shape (N, 4) (NC), dtype float32" in readme
    assert "with their names" in readme and "results/" in readme and "result.json" in readme
    assert "python3 run.py --input x.npy --preprocess" in manifest["runner"]["usage"]


def test_run_py_prints_top_k_with_labels_and_writes_results(tmp_path, tiny_model, tiny_input, ort_outputs):
    bundle = write_bundle(tmp_path / "b", {"fp32": tiny_model}, [tiny_input], LABELS)
    x = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = run_py(bundle, "--input", str(tmp_path / "x.npy"), "--top-k", "2")     # no --out: results/
    assert proc.returncode == 0, proc.stderr
    expected = ort_outputs(tiny_model, x)
    best = np.argsort(-expected, axis=1, kind="stable")[:, :2]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("fp32: sample ")]
    assert len(lines) == 5 and "fp32: ... 2 more samples" in proc.stdout
    assert lines[0] == "fp32: sample 0: " + ", ".join(f"{LABELS[c]} ({expected[0, c]:.3g})" for c in best[0])
    result = json.loads((tmp_path / "results" / "result.json").read_text())     # run_py's cwd is tmp_path
    top = result["models"]["fp32"]["top_k"]
    assert [[c["label"] for c in row] for row in top] == [[LABELS[c] for c in row] for row in best]
    np.testing.assert_allclose(np.load(tmp_path / "results" / "fp32.npy"), expected, rtol=1e-5)
    assert "results: " in proc.stdout
