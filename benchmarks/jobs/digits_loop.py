"""The digits CNN loop every runner benchmark times, in three forms that do the same work:

- `plain(cfg)`: one process, no Ray, no trainer (the floor);
- `train(ctx)`: the `ctx` path (`trainer run --local` / `trainer submit`);
- `raw_ray_train.py`: a TorchTrainer script written against Ray Train directly.

Same model, data, split, batch size, optimizer and epochs as examples/digits/train_torch.py, and a
checkpoint every epoch. Each epoch prints one `BENCH {json}` line: when the epoch ended, how long
its optimizer steps took and how long the checkpoint call (`ctx.report` / `ray.train.report`)
blocked the training loop - the stall a checkpoint adds to a step."""
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "digits"))
from digits_data import load_digits  # noqa: E402
from train_torch import DigitsCNN, evaluate  # noqa: E402

BENCH = "BENCH "
OUT = None  # a file every rank appends its records to (the benchmark's), else stdout


def say(**record):
    line = json.dumps(record)
    if OUT:
        with open(OUT, "a") as fh:   # one short write per record: lines of two ranks never mix
            fh.write(line + "\n")
    else:
        print(BENCH + line, flush=True)


def _loop(cfg, loader, model, device, x_eval, y_eval, checkpoint, rank=0, start=0):
    """The epochs; `checkpoint(epoch, metrics, state)` is the one call that differs."""
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.get("lr", 0.05), momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    plain_model = getattr(model, "module", model)
    t_loop = time.perf_counter()
    for epoch in range(start, cfg.get("epochs", 12)):
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        total, count, steps = 0.0, 0, 0
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(xb)
            count += len(xb)
            steps += 1
        t1 = time.perf_counter()
        metrics = {"epoch": epoch, "loss": total / count, "accuracy": evaluate(model, x_eval, y_eval)}
        t2 = time.perf_counter()
        checkpoint(epoch, metrics, {"model": plain_model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "epoch": epoch})
        t3 = time.perf_counter()
        say(rank=rank, epoch=epoch, end=time.time(), steps=steps, train_s=t1 - t0, eval_s=t2 - t1,
            checkpoint_s=t3 - t2, accuracy=metrics["accuracy"])
    say(rank=rank, loop_s=time.perf_counter() - t_loop, accuracy=evaluate(model, x_eval, y_eval))
    return model


def _data(path, batch_size):
    (x_train, y_train), (x_test, y_test) = load_digits(path)
    loader = DataLoader(TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
                        batch_size=batch_size, shuffle=True)
    return loader, torch.from_numpy(x_test), torch.from_numpy(y_test)


def train(ctx):
    """The `ctx` path: what a user of trainer writes."""
    global OUT
    cfg = ctx.config
    OUT = cfg.get("bench_file")
    say(rank=ctx.rank, first_line=time.time())
    torch.manual_seed(cfg.get("seed", 0))
    loader, x_eval, y_eval = _data(ctx.data_path, cfg.get("batch_size", 32))
    loader = ctx.prepare_data_loader(loader)
    model = ctx.prepare_model(DigitsCNN(cfg.get("width", 16)))

    def checkpoint(epoch, metrics, state):
        ctx.report(metrics, checkpoint=state)

    model = _loop(cfg, loader, model, ctx.device, x_eval.to(ctx.device), y_eval.to(ctx.device), checkpoint,
                  rank=ctx.rank)
    plain_model = getattr(model, "module", model)
    t0 = time.perf_counter()
    ctx.report({"step": cfg.get("epochs", 12), "test_accuracy": evaluate(model, x_eval, y_eval)})
    if cfg.get("save_model", True):
        ctx.save_model(plain_model, x_eval[:256], labels=y_eval[:256])
    say(rank=ctx.rank, save_model_s=time.perf_counter() - t0)


def noop(ctx):
    """A job that does nothing: what submission costs on its own."""
    ctx.report({"step": 0, "done": 1.0})


def plain(cfg, data_path, checkpoint_dir=None):
    """One process, no Ray, no trainer; checkpoints with torch.save when `checkpoint_dir` is set."""
    torch.manual_seed(cfg.get("seed", 0))
    loader, x_eval, y_eval = _data(data_path, cfg.get("batch_size", 32))
    model = DigitsCNN(cfg.get("width", 16))

    def checkpoint(epoch, metrics, state):
        if checkpoint_dir is not None:
            torch.save(state, Path(checkpoint_dir) / f"epoch_{epoch}.pt")

    _loop(cfg, loader, model, torch.device("cpu"), x_eval, y_eval, checkpoint)
