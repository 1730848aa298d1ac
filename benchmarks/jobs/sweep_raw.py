"""The raw Ray Tune baseline of benchmarks/sweep.py: the digits sweep (examples/digits/sweep.yaml)
written against Ray Tune + Ray Train V2 directly, no trainer: the same model, data split, loop
(one `ray.train.report` with a checkpoint per epoch), space, seed, trials, concurrency and ASHA
settings; the trial actor reserves what trainer's does. Prints one JSON line: {"wall_s", "trials"}.

    python benchmarks/jobs/sweep_raw.py EPOCHS TRIALS CONCURRENCY   (as a Ray job, cwd = the repo)
"""
import json
import os
import sys
import tempfile
import time

import torch
from ray import train, tune
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

REPO = os.getcwd()
sys.path.insert(0, os.path.join(REPO, "examples", "digits"))


def loop(config):
    from digits_data import load_digits
    from train_torch import DigitsCNN, evaluate

    import ray.train.torch

    from trainer.data import resolve_data_path

    torch.manual_seed(0)
    (x_train, y_train), (x_test, y_test) = load_digits(
        resolve_data_path("package://sklearn.datasets/data/digits.csv.gz", REPO))
    loader = ray.train.torch.prepare_data_loader(DataLoader(
        TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)), batch_size=config["batch_size"],
        shuffle=True))
    model = ray.train.torch.prepare_model(DigitsCNN(config["width"]))
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x_eval, y_eval = torch.from_numpy(x_test), torch.from_numpy(y_test)
    for epoch in range(config["epochs"]):
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"model": getattr(model, "module", model).state_dict(), "epoch": epoch},
                       os.path.join(tmp, "state.pt"))
            train.report({"epoch": epoch, "loss": loss.item(), "accuracy": evaluate(model, x_eval, y_eval)},
                         checkpoint=Checkpoint.from_directory(tmp))


def trial(config):
    trainer = TorchTrainer(loop, train_loop_config=config, torch_config=TorchConfig(backend="gloo"),
                           scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1},
                                                        label_selector={"ray.io/accelerator-type": "cpu"}),
                           run_config=RunConfig(name=f"raw-{tune.get_context().get_trial_id()}",
                                                storage_path=os.environ["BENCH_STORAGE"],
                                                callbacks=[TuneReportCallback()]))
    trainer.fit()


def main():
    epochs, trials, concurrency = (int(a) for a in sys.argv[1:4])
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")     # what trainer sets (runners/base.py)
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    started = time.time()
    tuner = tune.Tuner(
        tune.with_resources(trial, {"CPU": 0, "memory": 2**20}),
        param_space={"epochs": epochs, "lr": tune.loguniform(1e-4, 1e-1), "width": tune.choice([2, 4, 8]),
                     "batch_size": tune.randint(16, 65)},
        tune_config=tune.TuneConfig(metric="accuracy", mode="max", num_samples=trials, scheduler=ASHAScheduler(
            max_t=max(1, epochs - 1), grace_period=1, reduction_factor=2, stop_last_trials=False),
            search_alg=BasicVariantGenerator(max_concurrent=concurrency, random_state=0)),
        run_config=tune.RunConfig(name=f"raw-sweep-{int(started)}", storage_path=os.environ["BENCH_STORAGE"],
                                  verbose=0))
    results = tuner.fit()
    print("BENCH_RAW " + json.dumps({"wall_s": time.time() - started, "trials": len(results)}), flush=True)


if __name__ == "__main__":
    main()
