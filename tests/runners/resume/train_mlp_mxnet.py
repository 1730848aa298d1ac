"""The tabular MLP of train_mlp_torch.py in Gluon, its gradients all-reduced through the MXNet
runner's exchange actor, written only against ctx: reports {"loss", "accuracy", "lr"} with no
step or epoch key, a checkpoint every epoch. The data order of an epoch depends on the epoch
only, so a resumed epoch replays the batches it had."""
import os
import tempfile

import numpy as np

from faults import Faults
from tabular import load, lr_at


def _trainer_states(trainer) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        trainer.save_states(os.path.join(tmp, "states"))
        with open(os.path.join(tmp, "states"), "rb") as fh:
            return fh.read()


def _load_trainer_states(trainer, blob: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "states"), "wb") as fh:
            fh.write(blob)
        trainer.load_states(os.path.join(tmp, "states"))


def train_no_step(ctx):
    import mxnet as mx
    from mxnet import autograd, gluon

    cfg = ctx.config
    faults = Faults(ctx)
    seed = cfg.get("seed", 0)
    mx.random.seed(seed)
    (x_train, y_train), (x_test, y_test) = load(ctx.data_path)
    batch = cfg.get("batch_size", 32)
    global_batch = batch * ctx.world_size

    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(32, activation="relu"), gluon.nn.Dense(2))
    net.initialize(mx.init.Xavier(), ctx=ctx.device)
    net = ctx.prepare_model(net)
    net(mx.nd.zeros((1, x_train.shape[1]), ctx=ctx.device))
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": cfg["lr"], "momentum": 0.9},
                            kvstore=ctx.kvstore, update_on_kvstore=False)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    start = 0
    state = ctx.restore()
    if state is not None:
        ctx.load_params(net, state["params"])
        _load_trainer_states(trainer, state["trainer"])
        start = state["epoch"] + 1

    x_eval = mx.nd.array(x_test, ctx=ctx.device)
    for epoch in range(start, cfg["epochs"]):
        lr = lr_at(epoch, cfg["lr"])
        trainer.set_learning_rate(lr)
        order = np.random.default_rng(seed + epoch).permutation(len(x_train))
        # Whole global batches only, this rank's slice of each: every worker runs the same steps.
        usable = len(order) - len(order) % global_batch
        total, steps = 0.0, 0
        for b, first in enumerate(range(0, usable, global_batch)):
            faults.point("step", epoch, b)
            rows = order[first + ctx.rank * batch: first + (ctx.rank + 1) * batch]
            xb = mx.nd.array(x_train[rows], ctx=ctx.device)
            yb = mx.nd.array(y_train[rows].astype(np.float32), ctx=ctx.device)
            with autograd.record():
                loss = loss_fn(net(xb), yb)
            loss.backward()
            trainer.step(global_batch)  # gradients are summed over the workers
            total += float(loss.mean().asscalar())
            steps += 1
        pred = net(x_eval).argmax(axis=1).asnumpy().astype(np.int64)
        faults.at(epoch)
        ctx.report({"loss": total / steps, "accuracy": float((pred == y_test).mean()), "lr": lr},
                   checkpoint={"params": ctx.params_of(net), "trainer": _trainer_states(trainer),
                               "epoch": epoch, "fault": faults.payload()})
        faults.point("after")
