"""A small Keras 3 CNN on scikit-learn's bundled 8x8 digits, trained data-parallel with
MultiWorkerMirroredStrategy (`ctx.strategy`) through `ctx`.

The same function runs on Ray workers (`trainer submit tensorflow.yaml`) and in-process
(`trainer run tensorflow.yaml --local`). Data and split are the ones train_torch.py uses, in
NHWC layout (Keras' default).
"""

import numpy as np

from digits_data import CLASS_NAMES, PREPROCESSING, load_digits  # the shared data + split (same folder)


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
    (x_train, y_train), (x_test, y_test) = load_digits(ctx.data_path, layout="NHWC")
    # Global batches: the strategy splits each one across the workers.
    global_batch = cfg.get("batch_size", 32) * ctx.world_size
    dataset = ctx.prepare_data_loader(
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
        .batch(global_batch))

    strategy = ctx.strategy
    with strategy.scope():  # variables created here are mirrored on every worker
        model = ctx.prepare_model(digits_cnn(cfg.get("width", 16)))
        optimizer = keras.optimizers.SGD(learning_rate=cfg.get("lr", 0.05), momentum=0.9)
        optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    # A custom step rather than model.fit: Keras 3's fit() fails under MultiWorkerMirroredStrategy
    # (keras-team/keras#20585). The optimizer all-reduces the gradients across workers.
    @tf.function
    def train_step(x, y):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                loss = tf.nn.compute_average_loss(loss_fn(y, model(x, training=True)))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss
        return strategy.reduce("SUM", strategy.run(replica_step, args=(x, y)), axis=None)

    start = 0
    state = ctx.restore()
    if state is not None:  # resuming after a worker failure
        model.set_weights(state["weights"])
        for variable, value in zip(optimizer.variables, state["optimizer"]):
            variable.assign(value)
        start = state["epoch"] + 1

    batches = strategy.experimental_distribute_dataset(dataset)
    epochs = cfg.get("epochs", 10)
    for epoch in range(start, epochs):
        total, steps = 0.0, 0
        for x, y in batches:
            total += float(train_step(x, y))
            steps += 1
        ctx.report(
            {"epoch": epoch, "loss": total / steps, "accuracy": evaluate(model, x_test, y_test)},
            checkpoint={"weights": model.get_weights(), "optimizer": list(optimizer.variables), "epoch": epoch})

    ctx.report({"step": epochs, "test_accuracy": evaluate(model, x_test, y_test)})
    ctx.save_model(model, x_test[:256], labels=y_test[:256],
                   preprocessing=PREPROCESSING, class_names=CLASS_NAMES)
