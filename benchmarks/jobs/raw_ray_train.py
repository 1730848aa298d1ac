"""The raw Ray Train baseline: the digits loop of digits_loop.py as a TorchTrainer script that
uses Ray Train directly (the way its docs write one), 2 workers, a checkpoint every epoch with
`ray.train.report(..., checkpoint=Checkpoint.from_directory(tmp))`. Submitted with `ray job
submit`; argv: data path, storage path, epochs."""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

T0 = time.time()

import ray  # noqa: E402
import ray.train  # noqa: E402
import torch  # noqa: E402
from ray.train import Checkpoint, RunConfig, ScalingConfig  # noqa: E402
from ray.train.torch import TorchTrainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the job's working dir: the repo
from benchmarks.jobs import digits_loop  # noqa: E402


def train_loop(cfg):
    import ray.train.torch

    digits_loop.OUT = cfg.get("bench_file")
    torch.manual_seed(cfg.get("seed", 0))
    digits_loop.say(rank=ray.train.get_context().get_world_rank(), first_line=time.time())
    loader, x_eval, y_eval = digits_loop._data(cfg["data"], cfg.get("batch_size", 32))
    loader = ray.train.torch.prepare_data_loader(loader)
    model = ray.train.torch.prepare_model(digits_loop.DigitsCNN(cfg.get("width", 16)))
    rank = ray.train.get_context().get_world_rank()

    def checkpoint(epoch, metrics, state):
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                torch.save(state, os.path.join(tmp, "state.pt"))
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if rank == 0 else None)

    digits_loop._loop(cfg, loader, model, torch.device("cpu"), x_eval, y_eval, checkpoint, rank=rank)


if __name__ == "__main__":
    data, storage, epochs, digits_loop.OUT = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    digits_loop.say(entrypoint=T0)
    ray.init()
    digits_loop.say(connected=time.time())
    trainer = TorchTrainer(train_loop, train_loop_config={"data": data, "epochs": epochs, "lr": 0.05,
                                                          "batch_size": 32, "width": 16, "seed": 0,
                                                          "bench_file": digits_loop.OUT},
                           scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1},
                                                        label_selector={"ray.io/accelerator-type": "cpu"}),
                           run_config=RunConfig(name=f"raw-{os.getpid()}-{int(T0)}", storage_path=storage))
    result = trainer.fit()
    digits_loop.say(fit_done=time.time())
