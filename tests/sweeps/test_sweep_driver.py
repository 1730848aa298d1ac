"""The sweep driver's pieces that need no cluster: Tune's search space from the spec (seeded),
each trial's spec, where ASHA's rungs end, the progress line at 80 columns, the best trial,
the trials plot."""
import copy

import pytest

from trainer.cli.jobs import sweep_progress_line
from trainer.runners.sweep import choose_best, last_rung, search_space, trial_spec
from trainer.spec import load_spec
from trainer.tracking.sweeps import plot_trials, trial_number

RAW = {"name": "d", "framework": "torch", "entrypoint": "train.py:train", "config": {"epochs": 4, "lr": 0.1, "seed": 0},
       "convert": {"targets": ["onnx"]}, "register": {"model": "d"},
       "sweep": {"metric": "accuracy", "mode": "max", "trials": 8, "concurrency": 2, "seed": 7,
                 "scheduler": {"asha": {"grace_period": 1, "reduction_factor": 2}},
                 "space": {"lr": {"loguniform": [1.0e-4, 1.0e-1]}, "width": {"choice": [2, 4, 8]},
                           "batch_size": {"int": [16, 17]}, "dropout": {"uniform": [0.0, 0.5]}}}}


def spec(**sweep):
    raw = copy.deepcopy(RAW)
    raw["sweep"].update(sweep)
    return load_spec(raw)[0]


def sample(s, n=40):
    """n configs as Tune's BasicVariantGenerator draws them with the sweep's seed."""
    from ray.tune.search.sample import _BackwardsCompatibleNumpyRng
    from ray.tune.search.variant_generator import generate_variants

    rng = _BackwardsCompatibleNumpyRng(s.sweep.seed)
    return [next(generate_variants({"config": search_space(s)}, random_state=rng))[1]["config"] for _ in range(n)]


def test_the_space_samples_within_its_ranges_and_the_seed_repeats_it():
    pytest.importorskip("ray.tune")
    configs = sample(spec())
    assert configs == sample(spec())
    assert configs != sample(spec(seed=8))
    for c in configs:
        assert 1e-4 <= c["lr"] <= 1e-1 and c["width"] in (2, 4, 8) and 0.0 <= c["dropout"] <= 0.5
    assert {c["batch_size"] for c in configs} == {16, 17}     # int: both ends included


def test_a_trial_spec_is_the_job_with_the_sampled_values_and_no_sweep():
    import numpy as np

    one = trial_spec(spec(), {"lr": np.float64(0.01), "width": np.int64(4)})
    assert one.config == {"epochs": 4, "lr": 0.01, "seed": 0, "width": 4}
    assert type(one.config["width"]) is int
    assert one.sweep is None and one.convert is None and one.register is None


def test_asha_rungs_end_before_a_trials_last_checkpoint():
    assert last_rung(spec()) == 3            # 4 epochs, a checkpoint each: rungs at 1, 2
    raw = copy.deepcopy(RAW)
    raw["config"]["epochs"] = "many"
    assert last_rung(load_spec(raw)[0]) == 100


def test_the_progress_line_fits_80_columns():
    line = sweep_progress_line({"total": 10000, "running": 1000, "done": 9000, "stopped": 9999, "failed": 9999,
                                "metric": "a_very_long_metric_name_indeed", "best": 0.123456789, "best_trial": 9999})
    assert len(line) <= 80, line
    assert sweep_progress_line({"total": 8, "running": 2, "done": 1, "stopped": 0, "failed": 0, "metric": "accuracy",
                                "best": None, "best_trial": None}) == "trials 1/8: 2 running, 1 done, 0 stopped, 0 failed"
    assert sweep_progress_line({"total": 8, "running": 2, "done": 0, "stopped": 0, "failed": 0, "metric": "accuracy",
                                "best": 0.08914, "best_trial": 1}) == (
        "trials 0/8: 2 running, 0 done, 0 stopped, 0 failed; best accuracy 0.08914 (#1)")


def test_the_best_trial_is_a_completed_one():
    trials = {"a": {"trial": 0, "outcome": "stopped early", "last": 0.99, "config": {}},
              "b": {"trial": 1, "outcome": "completed", "last": 0.90, "config": {}},
              "c": {"trial": 2, "outcome": "completed", "last": 0.95, "config": {}},
              "d": {"trial": 3, "outcome": "failed", "last": 0.97, "config": {}}}
    assert choose_best(spec(), trials)["trial"] == 2
    assert choose_best(spec(mode="min"), trials)["trial"] == 1
    assert choose_best(spec(), {"a": trials["a"]}) is None


def test_the_trials_plot_is_a_png(tmp_path):
    trials = [{"trial": i, "outcome": o, "metrics": {"accuracy": v}}
              for i, (o, v) in enumerate([("completed", 0.9), ("stopped early", 0.2), ("failed", 0.1)])]
    path = plot_trials(trials, "accuracy", {"trial": 0, "value": 0.9}, tmp_path / "t.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert trial_number("a1b2c_00003") == 3
