"""Issue 27, the edge engineer: every digits example (torch, TensorFlow, MXNet) records what a
device must do with raw inputs and what the outputs mean (`ctx.save_model(preprocessing=,
class_names=)`), so every framework's edge bundle manifest shows them (was torch only: the others'
bundles said `preprocessing: null`, `labels: null`)."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAINER = str(Path(sys.executable).parent / "trainer")
FRAMEWORKS = ("torch", "tensorflow", "mxnet")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_digits_example_saves_its_preprocessing_and_class_names(framework):
    tree = ast.parse((REPO / f"examples/digits/train_{framework}.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "save_model"]
    assert len(calls) == 1
    given = {k.arg: ast.unparse(k.value) for k in calls[0].keywords}
    assert given.get("preprocessing") == "PREPROCESSING" and given.get("class_names") == "CLASS_NAMES", given


@pytest.mark.integration
@pytest.mark.parametrize("framework", ("tensorflow", "mxnet"))
def test_the_run_records_them_for_the_bundle(framework, trainer_home):
    """What the edge bundle's manifest is written from (converters.sources.run_model_info), read
    back from a real `run --local` of the example under its own runtime."""
    from converters.sources import run_model_info
    from trainer.tracking.runs import tracking_uri

    proc = subprocess.run([TRAINER, "run", f"examples/digits/{framework}.yaml", "--local", "--output", "json",
                           "--set", "config.epochs=1", "--set", "workers=1", "--set", "convert=null",
                           "--set", "register=null", "--set", "tracking.experiment=model-info"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_id = json.loads(proc.stdout)["run_id"]
    assert run_model_info(run_id, tracking_uri()) == {"preprocessing": {"scale": 1 / 16},
                                                      "class_names": [str(d) for d in range(10)]}
