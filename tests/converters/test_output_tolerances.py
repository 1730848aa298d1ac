"""Several outputs, each judged with its own tolerance: a detection head and a class head do not
share one atol. The boxes head of the exported model is nudged by 5e-3 (its bias, in the ONNX
file): only a tolerance for `boxes` that allows it passes; `scores` stays judged at the default."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from converters.api import convert
from trainer.errors import ParityError, UsageError

NUDGE = 5e-3


@pytest.fixture()
def two_heads(tmp_path, monkeypatch):
    from onnx import numpy_helper

    from _torch_models import TwoHeads, digits, save_exported
    from converters.frontends.torch import TorchFrontend

    torch.manual_seed(0)
    path = save_exported(TwoHeads().eval(), tmp_path / "two.pt2", torch.zeros(4, 1, 8, 8))
    (xtr, _), _ = digits()
    np.save(tmp_path / "x.npy", xtr[:200])
    export = TorchFrontend.export

    def nudged(self, model, out_dir, sample):
        result = export(self, model, out_dir, sample)
        m = onnx.load(str(result.onnx_path))
        assert [o.name for o in m.graph.output] == ["boxes", "scores"]
        init = next(i for i in m.graph.initializer if i.name == "boxes.bias")
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(NUDGE), init.name))
        onnx.save(m, str(result.onnx_path))
        return result

    monkeypatch.setattr(TorchFrontend, "export", nudged)
    return path, tmp_path / "x.npy"


def test_one_tolerance_for_all_outputs_fails_on_the_nudged_one(tmp_path, two_heads):
    path, x = two_heads
    with pytest.raises(ParityError) as caught:
        convert(path, "torch", "onnx", calib=x, out_dir=tmp_path / "out", log_to_mlflow=False)
    row = caught.value.report.rows[0]
    assert not row.outputs["boxes"]["passed"] and row.outputs["scores"]["passed"]
    assert row.outputs["boxes"]["max_abs_diff"] == pytest.approx(NUDGE, rel=1e-3)
    assert "boxes: |a-b| <= 0.0001" in row.criterion


def test_each_output_is_judged_by_its_own_tolerance(tmp_path, two_heads):
    path, x = two_heads
    report = convert(path, "torch", "onnx", calib=x, out_dir=tmp_path / "out", log_to_mlflow=False,
                     output_tolerances={"boxes": {"atol": 1e-2}})
    row = report.rows[0]
    assert row.passed and row.outputs["boxes"]["passed"] and row.outputs["scores"]["passed"]
    assert "boxes: |a-b| <= 0.01 + 0.001*|a|" in row.criterion and "scores: |a-b| <= 0.0001" in row.criterion
    assert "output boxes: fp32 |a-b| <= 0.01" in (tmp_path / "out" / "report.md").read_text()
    # The loosened tolerance on the other output does not help the one that differs.
    with pytest.raises(ParityError):
        convert(path, "torch", "onnx", calib=x, out_dir=tmp_path / "o2", log_to_mlflow=False,
                output_tolerances={"scores": {"atol": 1e-2}})


def test_a_tolerance_for_an_output_the_model_lacks_is_refused(tmp_path, two_heads):
    path, x = two_heads
    with pytest.raises(UsageError, match="its outputs: boxes, scores"):
        convert(path, "torch", "onnx", calib=x, out_dir=tmp_path / "out", output_tolerances={"box": {"atol": 1e-2}})
    assert not (tmp_path / "out").exists()


def test_cli_atol_per_output(tmp_path, two_heads, cli):
    path, x = two_heads
    ok = cli(path, "--from", "torch", "--to", "onnx", "--calib", x, "--out", tmp_path / "a", "--atol", "boxes=1e-2")
    assert ok.exit_code == 0, ok.output
    bad = cli(path, "--from", "torch", "--to", "onnx", "--calib", x, "--out", tmp_path / "b", "--atol", "boxes=2")
    assert bad.exit_code != 0 and "--atol must be > 0 and <= 1" in bad.output
    failed = cli(path, "--from", "torch", "--to", "onnx", "--calib", x, "--out", tmp_path / "c")
    assert failed.exit_code != 0 and "boxes" in failed.output


def test_spec_takes_per_output_tolerances():
    from trainer.spec import Convert

    c = Convert.model_validate({"targets": ["onnx"], "parity": {"outputs": {"boxes": {"atol": 1e-3}}}})
    assert c.parity.outputs["boxes"].atol == 1e-3 and c.parity.outputs["boxes"].rtol is None
    with pytest.raises(ValueError):
        Convert.model_validate({"targets": ["onnx"], "parity": {"outputs": {"boxes": {"atol": 5}}}})
