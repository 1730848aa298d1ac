"""`trainer convert --out`: publishing replaces the folder (rename away, delete), so only a folder
the command wrote, or an empty one, may be replaced. Any report.json used to qualify: `--out .`
in a project holding one deleted the project."""
from __future__ import annotations

import json

import numpy as np
import pytest

from converters.api import _check_replaceable, convert
from trainer.errors import UsageError


def _report(folder, out_dir=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"out_dir": str(out_dir or folder), "rows": [],
                                                    "status": "PASSED"}))


def test_absent_or_empty_folders_may_be_replaced(tmp_path):
    _check_replaceable(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    _check_replaceable(tmp_path / "empty")


def test_an_earlier_conversion_into_this_folder_may_be_replaced(tmp_path):
    _report(tmp_path / "out")
    _check_replaceable(tmp_path / "out")


@pytest.mark.parametrize("make", [
    lambda d: (d.mkdir(), (d / "report.json").write_text("{}")),                        # any report.json
    lambda d: (d.mkdir(), (d / "report.json").write_text('{"status": "PASSED", "rows": []}')),
    lambda d: _report(d, out_dir=d.parent / "elsewhere"),                               # moved here
    lambda d: (d.mkdir(), (d / "report.json").write_text("not json")),
    lambda d: (d.mkdir(), (d / "code.py").write_text("x = 1\n")),
    lambda d: d.write_text("a file"),
])
def test_anything_else_is_refused_naming_out_and_left_alone(tmp_path, make):
    target = tmp_path / "out"
    make(target)
    before = sorted(p.name for p in target.iterdir()) if target.is_dir() else target.read_text()
    with pytest.raises(UsageError, match=r"^--out .*out: exists and is"):
        _check_replaceable(target)
    assert (sorted(p.name for p in target.iterdir()) if target.is_dir() else target.read_text()) == before


def test_a_report_json_that_is_a_symlink_does_not_count(tmp_path):
    _report(tmp_path / "real")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.json").symlink_to(tmp_path / "real" / "report.json")
    with pytest.raises(UsageError, match="--out"):
        _check_replaceable(tmp_path / "out")


def _tiny_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.arange(12, dtype=np.float32).tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_converting_twice_into_one_folder_replaces_it_and_a_project_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_HOME", str(tmp_path / "home"))
    _tiny_onnx(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    out = tmp_path / "out"
    convert(tmp_path / "m.onnx", "onnx", "onnx", calib=x, out_dir=out, log_to_mlflow=False)
    (out / "stale.txt").write_text("from the first run")
    report = convert(tmp_path / "m.onnx", "onnx", "onnx", calib=x, out_dir=out, log_to_mlflow=False)
    assert report.passed and not (out / "stale.txt").exists() and (out / "report.json").is_file()

    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("def train(ctx):\n    pass\n")
    (project / "report.json").write_text(json.dumps(json.loads((out / "report.json").read_text())))  # a copy
    with pytest.raises(UsageError, match="--out"):
        convert(tmp_path / "m.onnx", "onnx", "onnx", calib=x, out_dir=project, log_to_mlflow=False)
    assert sorted(p.name for p in project.iterdir()) == ["report.json", "train.py"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out", "project"]   # no staging left
