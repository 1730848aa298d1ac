"""A small Gluon CNN on scikit-learn's bundled 8x8 digits, trained through `ctx` in the mxnet
runtime (mxnet 1.9.1, numpy 1.23).

The same function runs on Ray workers (`trainer submit mxnet.yaml`: with `workers: 2` the gradients
are summed over the workers by `ctx.kvstore`, a Gluon KVStore backed by a Ray actor, see
trainer/runners/mxnet.py) and in-process (`trainer run mxnet.yaml --local`: one worker, no kvstore).
"""
import os
import tempfile

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from digits_data import CLASS_NAMES, PREPROCESSING, load_digits  # the shared data + split (same folder)


def digits_cnn(width=16):
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(width, 3, padding=1, activation="relu"),
            gluon.nn.Conv2D(2 * width, 3, padding=1, activation="relu"),
            gluon.nn.MaxPool2D(2),
            gluon.nn.Flatten(),
            gluon.nn.Dense(64, activation="relu"),
            gluon.nn.Dense(10))
    return net


def evaluate(net, x, y):
    pred = net(x).argmax(axis=1).asnumpy().astype(np.int64)
    return float((pred == y).mean())


def trainer_states(trainer):
    """The optimizer's state (momentum) as bytes, for a checkpoint dict."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer.save_states(os.path.join(tmp, "states"))
        with open(os.path.join(tmp, "states"), "rb") as fh:
            return fh.read()


def load_trainer_states(trainer, blob):
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "states"), "wb") as fh:
            fh.write(blob)
        trainer.load_states(os.path.join(tmp, "states"))


def train(ctx):
    cfg = ctx.config
    mx.random.seed(cfg.get("seed", 0))
    np.random.seed(cfg.get("seed", 0))
    (x_train, y_train), (x_test, y_test) = load_digits(ctx.data_path)
    batch_size = cfg.get("batch_size", 32)
    loader = ctx.prepare_data_loader(gluon.data.DataLoader(
        gluon.data.ArrayDataset(x_train, y_train.astype(np.float32)), batch_size=batch_size, shuffle=True))

    net = digits_cnn(cfg.get("width", 16))
    net.initialize(mx.init.Xavier(), ctx=ctx.device)
    net = ctx.prepare_model(net)
    net(mx.nd.zeros((1, 1, 8, 8), ctx=ctx.device))  # materialize the parameters' shapes
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": cfg.get("lr", 0.05), "momentum": 0.9},
                            kvstore=ctx.kvstore, update_on_kvstore=False)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    start = 0
    state = ctx.restore()
    if state is not None:  # resuming after a worker failure
        ctx.load_params(net, state["params"])
        load_trainer_states(trainer, state["trainer"])
        start = state["epoch"] + 1

    x_eval = mx.nd.array(x_test, ctx=ctx.device)
    for epoch in range(start, cfg.get("epochs", 10)):
        total, count = 0.0, 0
        for xb, yb in loader:
            xb, yb = xb.as_in_context(ctx.device), yb.as_in_context(ctx.device)
            with autograd.record():
                loss = loss_fn(net(xb), yb)
            loss.backward()
            trainer.step(len(xb) * ctx.world_size)  # gradients are summed over the workers
            total += float(loss.sum().asscalar())
            count += len(xb)
        ctx.report(
            {"epoch": epoch, "loss": total / count, "accuracy": evaluate(net, x_eval, y_test)},
            checkpoint={"params": ctx.params_of(net), "trainer": trainer_states(trainer), "epoch": epoch})

    ctx.report({"step": cfg.get("epochs", 10), "test_accuracy": evaluate(net, x_eval, y_test)})
    ctx.save_model(net, x_test[:256], labels=y_test[:256],
                   preprocessing=PREPROCESSING, class_names=CLASS_NAMES)
