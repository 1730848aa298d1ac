"""Model files are untrusted input: `trainer convert` loads only formats that carry no code unless
`--trust-pickle` is given. Each attack below writes a marker file when plain torch loads it (the
control, run first, shows the attack is real); `trainer convert` must refuse it with one line
naming --trust-pickle, exit 7, run nothing (no marker) and leave nothing behind."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _evil_models import ATTACKS, base_pt2
from _torch_models import DigitsCNN, save_exported

from converters.api import convert
from trainer.errors import ConversionError


def _one_line_error(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_model_that_runs_code_on_load_is_refused(cli, tmp_path, attack):
    models, marker = tmp_path / "models", tmp_path / "marker"
    models.mkdir()
    path, plain_torch_load = ATTACKS[attack](models, marker)
    if plain_torch_load is not None:       # the control: torch alone runs the file's code
        try:
            plain_torch_load()
        except Exception:  # noqa: BLE001 - the code already ran; what the model does next does not matter
            pass
        assert marker.exists(), f"{attack}: the attack did not work on plain torch; the test proves nothing"
        marker.unlink()
    np.save(tmp_path / "x.npy", np.zeros((8, 4), np.float32))
    before = sorted(p.name for p in tmp_path.iterdir())

    line = _one_line_error(cli(path, "--from", "torch", "--to", "onnx", "--calib", tmp_path / "x.npy",
                               "--out", tmp_path / "out"), ConversionError.exit_code)

    assert "--trust-pickle" in line and path.name in line
    assert not marker.exists(), f"{attack}: trainer convert ran the model's code"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_refusals_say_what_the_file_is(cli, tmp_path):
    torch.manual_seed(0)
    torch.save(DigitsCNN(), tmp_path / "module.pt")
    torch.save(DigitsCNN().state_dict(), tmp_path / "weights.pt")
    np.save(tmp_path / "x.npy", np.zeros((8, 1, 8, 8), np.float32))
    args = ("--from", "torch", "--to", "onnx", "--calib", tmp_path / "x.npy", "--out", tmp_path / "out")

    line = _one_line_error(cli(tmp_path / "module.pt", *args), 7)
    assert "module.pt is a pickled torch model (torch.save(model))" in line
    assert "save it with torch.export.save (.pt2), or pass --trust-pickle" in line
    line = _one_line_error(cli(tmp_path / "weights.pt", *args), 7)
    assert "weights.pt holds only weights (a state_dict or tensors) and the architecture is not known" in line
    assert "--trust-pickle" not in line          # trusting would not help: there is no model to load


def test_trust_pickle_converts_and_is_recorded(cli, tmp_path):
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    torch.save(model, tmp_path / "module.pt")
    x = np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)

    result = cli(tmp_path / "module.pt", "--from", "torch", "--to", "onnx", "--calib", tmp_path / "x.npy",
                 "--out", tmp_path / "out", "--trust-pickle", "--output", "json")

    assert result.exit_code == 0, (result.output, result.exception)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["trust_pickle"] is True and saved["status"] == "PASSED"
    assert any(n.startswith("--trust-pickle: unpickled a torch.save'd model") for n in saved["notes"])
    assert "--trust-pickle: unpickled" in (tmp_path / "out" / "report.md").read_text()
    with torch.no_grad():
        assert saved["rows"][0]["max_abs_diff"] < 1e-4


def test_code_free_models_need_no_trust_and_say_so_when_given_it(tmp_path):
    """A genuine ExportedProgram with input guards (a Dim with a minimum) passes the checks; an
    unneeded --trust-pickle is still recorded."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    program = torch.export.export(model, (torch.zeros(4, 4),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=2, max=1024)},))
    torch.export.save(program, str(tmp_path / "guarded.pt2"))
    x = np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32)

    plain = convert(tmp_path / "guarded.pt2", "torch", "onnx", calib=x, out_dir=tmp_path / "a")
    trusted = convert(base_pt2(tmp_path), "torch", "onnx", calib=x, out_dir=tmp_path / "b", trust_pickle=True)

    assert plain.passed and not plain.trust_pickle and not any("trust" in n for n in plain.notes)
    assert trusted.passed and trusted.trust_pickle
    assert any("did not need it" in n for n in trusted.notes)


def test_a_state_dict_in_an_mlflow_like_folder_escape_is_refused(tmp_path):
    """MLmodel names the data folder: one outside the model folder is refused."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors:\n  pytorch:\n    model_data: ../elsewhere\n")
    save_exported(DigitsCNN(), tmp_path / "elsewhere.pt2", torch.zeros(2, 1, 8, 8))
    with pytest.raises(ConversionError, match="outside the model folder"):
        convert(folder, "torch", "onnx", calib=np.zeros((4, 1, 8, 8), np.float32), out_dir=tmp_path / "out")
