"""`--edge cortex-a72`: the fp32 and int8 bundle run on emulated aarch64 and join the report."""
from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.edge, pytest.mark.slow]


def test_edge_rows_agree_with_native(cli, tmp_path, digits_cnn):
    from converters.edge.setup import SETUP_HINT, find_qemu, read_stamp

    if find_qemu() is None or read_stamp() is None:
        pytest.skip(f"no arm64 root for edge runs; {SETUP_HINT}")
    model, calib, _ = digits_cnn
    out = tmp_path / "out"
    result = cli(model, "--from", "torch", "--to", "onnx,onnx-int8", "--calib", calib,
                 "--edge", "cortex-a72", "--out", out, "--output", "json")
    assert result.exit_code == 0, (result.output, result.exception)
    rows = {r["target"]: r for r in json.loads(result.stdout)["rows"]}
    assert set(rows) == {"onnx", "onnx-int8", "onnx@cortex-a72", "onnx-int8@cortex-a72"}
    assert rows["onnx@cortex-a72"]["passed"] and rows["onnx@cortex-a72"]["max_abs_diff"] < 1e-4
    assert rows["onnx-int8@cortex-a72"]["top1_agreement"] >= 0.98
    assert (out / "edge" / "manifest.json").is_file()
    # issue 27: x86 and emulated aarch64 rows judged on the same samples
    assert len({r["n_samples"] for r in rows.values()}) == 1, {t: r["n_samples"] for t, r in rows.items()}
