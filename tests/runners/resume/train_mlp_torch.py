"""A tabular MLP written only against the documented ctx contract, as the fault tests run it:
a checkpoint every epoch; `train_no_step` reports {"loss", "accuracy", "lr"} with no step or
epoch key (the step is ctx's report counter), `train_with_epoch` adds "epoch". Same seed, same
data order (DistributedSampler seed + set_epoch), so both are deterministic: the value at a step
does not depend on where a run was killed."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from faults import Faults
from tabular import load, lr_at


def train_no_step(ctx):
    _train(ctx, with_epoch=False)


def train_with_epoch(ctx):
    _train(ctx, with_epoch=True)


def _train(ctx, with_epoch):
    cfg = ctx.config
    faults = Faults(ctx)
    torch.manual_seed(cfg.get("seed", 0))
    (x_train, y_train), (x_test, y_test) = load(ctx.data_path)
    loader = ctx.prepare_data_loader(DataLoader(
        TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
        batch_size=cfg.get("batch_size", 32), shuffle=True))
    model = ctx.prepare_model(nn.Sequential(nn.Linear(x_train.shape[1], 32), nn.ReLU(), nn.Linear(32, 2)))
    plain = getattr(model, "module", model)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    start = 0
    state = ctx.restore()
    if state is not None:
        plain.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1

    x_eval, y_eval = torch.from_numpy(x_test), torch.from_numpy(y_test)
    for epoch in range(start, cfg["epochs"]):
        lr = lr_at(epoch, cfg["lr"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        loader.sampler.set_epoch(epoch)
        total, count = 0.0, 0
        for batch, (xb, yb) in enumerate(loader):
            faults.point("step", epoch, batch)
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(xb)
            count += len(xb)
        with torch.no_grad():
            accuracy = (plain(x_eval).argmax(dim=1) == y_eval).float().mean().item()
        metrics = {"loss": total / count, "accuracy": accuracy, "lr": lr}
        if with_epoch:
            metrics["epoch"] = epoch
        faults.at(epoch)
        ctx.report(metrics, checkpoint={"model": plain.state_dict(), "optimizer": optimizer.state_dict(),
                                        "epoch": epoch, "fault": faults.payload()})
        faults.point("after")
        faults.point("corrupt")
