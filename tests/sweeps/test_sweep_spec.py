"""The `sweep:` section of a job spec: the shape the issue gives is accepted; unknown keys, bad
ranges and budgets that cannot work are refused with one line naming the field, by the CLI too
(exit 2, nothing started)."""
import copy
import textwrap

import pytest
from typer.testing import CliRunner

from trainer.cli import app
from trainer.errors import SpecError
from trainer.spec import load_spec

BASE = {"name": "digits-sweep", "framework": "torch", "entrypoint": "train.py:train",
        "config": {"epochs": 6, "lr": 0.05}}
SWEEP = {"metric": "val_acc", "mode": "max", "trials": 8, "concurrency": 2, "seed": 0,
         "scheduler": {"asha": {"grace_period": 2, "reduction_factor": 2}},
         "space": {"lr": {"loguniform": [1.0e-4, 1.0e-1]}, "width": {"choice": [16, 32, 64]},
                   "batch_size": {"int": [16, 64]}}}


def spec_with(change=None):
    raw = copy.deepcopy({**BASE, "sweep": SWEEP})
    if change:
        change(raw["sweep"])
    return raw


def test_the_issue_shape_is_accepted():
    spec, _ = load_spec(spec_with())
    sweep = spec.sweep
    assert (sweep.metric, sweep.mode, sweep.trials, sweep.concurrency, sweep.seed) == ("val_acc", "max", 8, 2, 0)
    assert sweep.asha.grace_period == 2 and sweep.asha.reduction_factor == 2
    assert {k: d.describe() for k, d in sweep.space.items()} == SWEEP["space"]


def test_scheduler_none_and_the_defaults():
    spec, _ = load_spec(spec_with(lambda s: s.update(scheduler="none")))
    assert spec.sweep.scheduler is None and spec.sweep.asha is None
    spec, _ = load_spec(spec_with(lambda s: [s.pop(k) for k in ("scheduler", "seed", "concurrency")]))
    assert spec.sweep.asha is None and spec.sweep.seed is None and spec.sweep.concurrency == 1


def test_a_job_without_sweep_has_none():
    spec, _ = load_spec(dict(BASE))
    assert spec.sweep is None


REFUSED = [
    # (change to the sweep section, the one line must contain)
    (lambda s: s.update(trails=3), "sweep.trails: unknown key; did you mean 'trials'?"),
    (lambda s: s["space"].update(lr={"unifrom": [0.1, 0.2]}), "sweep.space.lr.unifrom: unknown key; did you mean 'uniform'?"),
    (lambda s: s["scheduler"]["asha"].update(grace_perod=1), "sweep.scheduler.asha.grace_perod: unknown key; did you mean 'grace_period'?"),
    (lambda s: s["space"].update(lr={"uniform": [0.2, 0.1]}), "sweep.space.lr: uniform: low must be < high, got [0.2, 0.1]"),
    (lambda s: s["space"].update(lr={"uniform": [0.1]}), "sweep.space.lr: uniform: must be two numbers [low, high], got 1"),
    (lambda s: s["space"].update(lr={"loguniform": [0, 0.1]}), "sweep.space.lr: loguniform: low must be > 0"),
    (lambda s: s["space"].update(batch_size={"int": [64, 16]}), "sweep.space.batch_size: int: low must be <= high"),
    (lambda s: s["space"].update(batch_size={"int": [1.5, 16]}), "sweep.space.batch_size.int.0: must be an integer"),
    (lambda s: s["space"].update(width={"choice": []}), "sweep.space.width.choice: must not be empty"),
    (lambda s: s["space"].update(lr={"uniform": [0.1, 0.2], "choice": [1]}),
     "sweep.space.lr: give exactly one of choice, uniform, loguniform, int, got choice and uniform"),
    (lambda s: s["space"].update(lr={}), "sweep.space.lr: give exactly one of"),
    (lambda s: s.update(space={}), "sweep.space: must not be empty"),
    (lambda s: s["space"].update({"a.b": {"choice": [1]}}), 'sweep.space: "a.b" is not a config key'),
    (lambda s: s.update(mode="maximize"), "sweep.mode: must be one of 'max' or 'min'"),
    (lambda s: s.update(trials=0), "sweep.trials: must be >= 1, got 0"),
    (lambda s: s.update(concurrency=9), "sweep.concurrency: 9 trials at a time is more than sweep.trials (8)"),
    (lambda s: s.update(scheduler="asha"), 'sweep.scheduler: must be none or {asha: {grace_period, reduction_factor}}'),
    (lambda s: s["scheduler"]["asha"].update(reduction_factor=1), "sweep.scheduler.asha.reduction_factor: must be >= 2"),
    (lambda s: s["scheduler"]["asha"].update(grace_period=6),
     "sweep.scheduler.asha.grace_period: 6 reports is not less than the 6 checkpoint(s) a trial reports"),
    (lambda s: s.pop("metric"), "sweep.metric: required field is missing"),
]


@pytest.mark.parametrize("change,expected", REFUSED, ids=[e.split(":")[0] + "-" + str(i) for i, (_, e) in enumerate(REFUSED)])
def test_bad_sweeps_are_refused_naming_the_field(change, expected):
    with pytest.raises(SpecError) as err:
        load_spec(spec_with(change))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)
    assert err.value.path.startswith("sweep")


def test_the_grace_period_counts_checkpoints_not_epochs():
    """ASHA sees one result per persisted checkpoint: every 3rd of 6 epochs is 2 reports."""
    raw = spec_with(lambda s: s["scheduler"]["asha"].update(grace_period=2))
    raw["checkpoint"] = {"every_epochs": 3}
    with pytest.raises(SpecError, match="not less than the 2 checkpoint"):
        load_spec(raw)
    raw["sweep"]["scheduler"]["asha"]["grace_period"] = 1
    load_spec(raw)


def test_cli_refuses_a_bad_sweep_with_one_line_and_exit_2(tmp_path, isolated_home):
    (tmp_path / "pyproject.toml").write_text("[project]\nname='p'\n")
    (tmp_path / "train.py").write_text("def train(ctx):\n    pass\n")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(textwrap.dedent("""\
        name: s
        framework: torch
        entrypoint: train.py:train
        config: {epochs: 4}
        sweep:
          metric: accuracy
          mode: max
          trials: 2
          concurrency: 4
          space: {lr: {loguniform: [1.0e-4, 1.0e-1]}}
        """))
    result = CliRunner().invoke(app, ["submit", str(spec)])
    assert result.exit_code == 2
    assert "sweep.concurrency: 4 trials at a time is more than sweep.trials (2)" in result.output
    assert not isolated_home.exists() or not (isolated_home / "cluster").exists()
