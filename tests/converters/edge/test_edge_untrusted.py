"""Bundles are untrusted input. Whoever writes a bundle also writes its manifest's checksums, so
each tampered bundle here has checksums that match: `trainer edge verify/run` must refuse bad
names and paths on their own, and `trainer edge run` must never execute the bundle's run.py."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters.edge.bundle import load_bundle, write_bundle
from trainer.errors import ConversionError


def trainer_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def reseal(bundle: Path, edit=None) -> Path:
    """What a bundle's author can always do: edit the manifest and recompute every checksum."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    if edit is not None:
        edit(manifest)
    for name, entry in manifest["files"].items():
        path = bundle / name
        if path.is_file():
            data = path.read_bytes()
            entry.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def _rename_model(new_file: str, new_name: str = "fp32"):
    def edit(manifest):
        manifest["models"] = {new_name: {"file": new_file, "kind": "onnx"}}
        manifest["files"][new_file] = manifest["files"].pop("fp32.onnx")
    return edit


def dotdot_file(bundle: Path, outside: Path):
    shutil.copyfile(bundle / "fp32.onnx", outside / "x.onnx")
    return _rename_model("../x.onnx")


def absolute_file(bundle: Path, outside: Path):
    shutil.copyfile(bundle / "fp32.onnx", outside / "x.onnx")
    return _rename_model(str(outside / "x.onnx"))


def nested_file(bundle: Path, outside: Path):
    (bundle / "sub").mkdir()
    shutil.copyfile(bundle / "fp32.onnx", bundle / "sub" / "fp32.onnx")
    return _rename_model("sub/fp32.onnx")


def dotdot_model_name(bundle: Path, outside: Path):
    """A model name becomes an output file name (<name>.npy): '..' would write outside --out."""
    def edit(manifest):
        manifest["models"] = {"..": {"file": "fp32.onnx", "kind": "onnx"}}
    return edit


def slash_model_name(bundle: Path, outside: Path):
    def edit(manifest):
        manifest["models"] = {"../../up": {"file": "fp32.onnx", "kind": "onnx"}}
    return edit


def symlinked_model(bundle: Path, outside: Path):
    shutil.copyfile(bundle / "fp32.onnx", outside / "real.onnx")
    (bundle / "fp32.onnx").unlink()
    os.symlink(outside / "real.onnx", bundle / "fp32.onnx")   # the checksum of the target matches
    return None


def unknown_kind(bundle: Path, outside: Path):
    (bundle / "libevil.so").write_bytes(b"\x7fELF")
    def edit(manifest):
        manifest["files"]["libevil.so"] = {}
    return edit


def runner_kind(bundle: Path, outside: Path):
    def edit(manifest):
        manifest["models"]["fp32"]["kind"] = "python"
    return edit


def external_data(bundle: Path, outside: Path):
    """The model's weights are read from a file outside the bundle (any path the runtime can open)."""
    import onnx

    model = onnx.load(str(bundle / "fp32.onnx"))
    onnx.save_model(model, str(outside / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    model = onnx.load(str(outside / "ext.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:     # onnx's writer refuses '..'; a hand-made file need not
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside/ext.onnx.data"
    (bundle / "fp32.onnx").write_bytes(model.SerializeToString())
    return None


ATTACKS = {
    "dotdot-file": (dotdot_file, "file name '../x.onnx' is not a plain file name"),
    "absolute-file": (absolute_file, "is not a plain file name"),
    "nested-file": (nested_file, "file name 'sub/fp32.onnx' is not a plain file name"),
    "dotdot-model-name": (dotdot_model_name, "model name '..' is not a plain name"),
    "slash-model-name": (slash_model_name, "model name '../../up' is not a plain name"),
    "symlink": (symlinked_model, "fp32.onnx is a symlink, not a regular file"),
    "unknown-kind": (unknown_kind, "'libevil.so' is not a kind of file a bundle holds"),
    "runner-kind": (runner_kind, "has kind 'python'"),
    "external-data": (external_data, "reads tensor 'W' from an external file ('../outside/ext.onnx.data')"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_tampered_bundles_are_refused_by_verify_and_run(tmp_path, tiny_model, tiny_input, attack):
    make, message = ATTACKS[attack]
    outside = tmp_path / "outside"
    outside.mkdir()
    bundle = write_bundle(tmp_path / "b", {"fp32": tiny_model}, [tiny_input])
    reseal(bundle, make(bundle, outside))

    with pytest.raises(ConversionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_bundle(bundle)
    proc = trainer_cli("edge", "verify", bundle)
    assert proc.returncode == ConversionError.exit_code, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    np.save(tmp_path / "x.npy", np.zeros((2, 4), np.float32))
    proc = trainer_cli("edge", "run", bundle, "--inputs", tmp_path / "x.npy", "--out", tmp_path / "out")
    assert proc.returncode == ConversionError.exit_code and message in proc.stderr
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "outside", "src", "x.npy"]


def test_the_runner_itself_refuses_unsafe_names_on_a_board(tmp_path, tiny_model, tiny_input):
    """run.py, run by hand on a board, applies the same checks (exit 3, corrupt/unsafe bundle)."""
    bundle = write_bundle(tmp_path / "b", {"fp32": tiny_model}, [tiny_input])
    reseal(bundle, dotdot_model_name(bundle, tmp_path))
    np.save(tmp_path / "x.npy", np.zeros((2, 4), np.float32))
    proc = subprocess.run([sys.executable, str(bundle / "run.py"), "--input", str(tmp_path / "x.npy"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and "unsafe bundle: model name '..'" in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / ".npy").exists()


MARKER_RUNNER = '''import pathlib, sys
pathlib.Path({marker!r}).write_text("the bundle's run.py ran")
sys.exit(0)
'''


@pytest.mark.edge
def test_edge_run_never_executes_the_bundles_run_py(tmp_path, edge_root, tiny_model, tiny_input, ort_outputs):
    bundle = write_bundle(tmp_path / "b", {"fp32": tiny_model}, [tiny_input])
    marker = tmp_path / "marker"
    (bundle / "run.py").write_text(MARKER_RUNNER.format(marker=str(marker)))
    reseal(bundle)                                 # its checksum matches: verify cannot tell intent
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)

    # The control: the bundle's run.py, started the way a board would, does write the marker.
    subprocess.run([sys.executable, str(bundle / "run.py"), "--input", str(tmp_path / "x.npy")], timeout=60)
    assert marker.exists()
    marker.unlink()

    verified = trainer_cli("edge", "verify", bundle)
    assert verified.returncode == 0 and "run.py: differs from this trainer's runner (trainer never runs it)" \
        in verified.stdout
    proc = trainer_cli("edge", "run", bundle, "--inputs", tmp_path / "x.npy", "--cpu", "cortex-a53",
                       "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), "trainer edge run executed the bundle's run.py"
    np.testing.assert_allclose(np.load(tmp_path / "out" / "fp32.npy"), ort_outputs(tiny_model, x),
                               rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fp32.npy"]
