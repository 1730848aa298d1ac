"""A small Keras 3 CNN on scikit-learn's bundled 8x8 digits, trained with
MultiWorkerMirroredStrategy through `ctx`.

The same function runs on Ray workers (`trainer submit tensorflow.yaml`) and in-process
(`trainer run tensorflow.yaml --local`). Data and split are the ones train_torch.py uses, in
NHWC layout (Keras' default).
"""
import gzip

import numpy as np


def load_digits(path):
    """The digits CSV that ships inside scikit-learn: 64 pixel columns (0..16) + the label."""
    with gzip.open(path, "rt") as fh:
        raw = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    x = (raw[:, :64] / 16.0).reshape(-1, 8, 8, 1).astype(np.float32)
    y = raw[:, 64].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))  # fixed split: same test set everywhere
    test = order[: len(x) // 5]
    train = order[len(x) // 5:]
    return (x[train], y[train]), (x[test], y[test])


def digits_cnn(width=16):
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input(shape=(8, 8, 1)),
        layers.Conv2D(width, 3, padding="same", activation="relu"),
        layers.Conv2D(2 * width, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dense(10),
    ], name="digits_cnn")


def evaluate(model, x, y):
    pred = np.asarray(model(x, training=False)).argmax(axis=1)
    return float((pred == y).mean())


def train(ctx):
    import keras
    import tensorflow as tf

    cfg = ctx.config
    seed = cfg.get("seed", 0)
    keras.utils.set_random_seed(seed)  # same initial weights and shuffle order on every worker
    (x_train, y_train), (x_test, y_test) = load_digits(ctx.data_path)
    # fit() takes global batches and splits each across the workers.
    global_batch = cfg.get("batch_size", 32) * ctx.world_size
    dataset = ctx.prepare_data_loader(
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
        .batch(global_batch))

    with ctx.strategy.scope():
        model = ctx.prepare_model(digits_cnn(cfg.get("width", 16)))
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=cfg.get("lr", 0.05), momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.optimizer.build(model.trainable_variables)

    start = 0
    state = ctx.restore()
    if state is not None:  # resuming after a worker failure
        model.set_weights(state["weights"])
        for variable, value in zip(model.optimizer.variables, state["optimizer"]):
            variable.assign(value)
        start = state["epoch"] + 1

    epochs = cfg.get("epochs", 10)
    for epoch in range(start, epochs):
        history = model.fit(dataset, epochs=epoch + 1, initial_epoch=epoch, shuffle=False, verbose=0)
        ctx.report(
            {"epoch": epoch, "loss": history.history["loss"][-1], "accuracy": evaluate(model, x_test, y_test)},
            checkpoint={"weights": model.get_weights(), "optimizer": list(model.optimizer.variables),
                        "epoch": epoch})

    ctx.report({"step": epochs, "test_accuracy": evaluate(model, x_test, y_test)})
    ctx.save_model(model, x_test[:256], labels=y_test[:256])
