"""The tabular MLP of train_mlp_torch.py in Keras 3 under MultiWorkerMirroredStrategy, written
only against ctx: reports {"loss", "accuracy", "lr"} with no step or epoch key, a checkpoint
every epoch. The data order of an epoch depends on the epoch only, so a resumed epoch replays
the batches it had."""
import numpy as np

from faults import Faults
from tabular import load, lr_at


def train_no_step(ctx):
    import keras
    import tensorflow as tf

    cfg = ctx.config
    faults = Faults(ctx)
    seed = cfg.get("seed", 0)
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = load(ctx.data_path)
    global_batch = cfg.get("batch_size", 32) * ctx.world_size

    strategy = ctx.strategy
    with strategy.scope():
        model = ctx.prepare_model(keras.Sequential([
            keras.Input(shape=(x_train.shape[1],)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(2)]))
        optimizer = keras.optimizers.SGD(learning_rate=cfg["lr"], momentum=0.9)
        optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    @tf.function
    def train_step(x, y):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                loss = tf.nn.compute_average_loss(loss_fn(y, model(x, training=True)),
                                                  global_batch_size=global_batch)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss
        return strategy.reduce("SUM", strategy.run(replica_step, args=(x, y)), axis=None)

    start = 0
    state = ctx.restore()
    if state is not None:
        model.set_weights(state["weights"])
        for variable, value in zip(optimizer.variables, state["optimizer"]):
            variable.assign(value)
        start = state["epoch"] + 1

    for epoch in range(start, cfg["epochs"]):
        lr = lr_at(epoch, cfg["lr"])
        optimizer.learning_rate.assign(lr)
        order = np.random.default_rng(seed + epoch).permutation(len(x_train))
        # Whole global batches only: every worker then runs the same number of steps.
        usable = len(order) - len(order) % global_batch
        dataset = ctx.prepare_data_loader(
            tf.data.Dataset.from_tensor_slices((x_train[order[:usable]], y_train[order[:usable]])).batch(global_batch))
        total, steps = 0.0, 0
        for batch, (x, y) in enumerate(strategy.experimental_distribute_dataset(dataset)):
            faults.point("step", epoch, batch)
            total += float(train_step(x, y))
            steps += 1
        accuracy = float((np.asarray(model(x_test, training=False)).argmax(axis=1) == y_test).mean())
        faults.at(epoch)
        ctx.report({"loss": total / steps, "accuracy": accuracy, "lr": lr},
                   checkpoint={"weights": model.get_weights(), "optimizer": list(optimizer.variables),
                               "epoch": epoch, "fault": faults.payload()})
        faults.point("after")
