"""TensorFlow / Keras 3: Ray Train's TensorflowTrainer with `MultiWorkerMirroredStrategy`.

Ray Train starts the workers and sets `TF_CONFIG` in each; the context creates the strategy
before the user's function runs (TensorFlow requires collective ops to be configured before any
other op). A training function builds its model and optimizer inside the strategy's scope:

    def train(ctx):
        dataset = ctx.prepare_data_loader(tf.data.Dataset.from_tensor_slices(...).batch(global_batch))
        with ctx.strategy.scope():                # variables made here are mirrored on every worker
            model = ctx.prepare_model(build_model())
            optimizer = keras.optimizers.SGD(...)
        ...                                        # a step run with ctx.strategy.run, in a tf.function
        ctx.report({"epoch": epoch, "loss": ...}, checkpoint={"weights": model.get_weights(), ...})
        ctx.save_model(model, x_test[:256], labels=y_test[:256])

Keras 3's `model.fit` does not work under MultiWorkerMirroredStrategy (keras-team/keras#20585:
it reduces a batch tuple and scalar logs in ways the collective strategy rejects), so training
steps are written with `strategy.run` (see examples/digits/train_tensorflow.py); the Keras
optimizer all-reduces gradients across workers itself. `ctx.strategy` is the default (no-op)
strategy in `trainer run --local`, where the same code runs unchanged.

Checkpoints are dicts of numpy arrays / lists / numbers (tensors and variables are converted);
the saved model is an MLflow tensorflow-flavor model holding `data/model.keras`.
"""
from __future__ import annotations

import os
from pathlib import Path

from trainer.context import Context
from trainer.runners._checkpoint import read_state, write_state


class TensorflowContext(Context):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Ray's TensorFlow backend sets TF_USE_LEGACY_KERAS=1, which points `tf.keras` at the
        # tf_keras package (Keras 2). This runtime is Keras 3 (tf.keras is keras); MLflow's
        # tensorflow flavor imports tf.keras, so undo it before anything touches tf.keras.
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
        self._strategy = None
        if self.in_ray_train:
            import tensorflow as tf

            # Must exist before any other TensorFlow op runs in this process.
            self._strategy = tf.distribute.MultiWorkerMirroredStrategy()

    @property
    def strategy(self):
        """`tf.distribute` strategy: MultiWorkerMirroredStrategy in Ray Train (TF_CONFIG set by
        Ray), the default strategy in-process. Build and compile models inside `strategy.scope()`."""
        if self._strategy is None:
            import tensorflow as tf

            self._strategy = tf.distribute.get_strategy()
        return self._strategy

    @property
    def device(self) -> str:
        """The TensorFlow device name this worker computes on ("/GPU:0" or "/CPU:0")."""
        import tensorflow as tf

        if self.spec.resources.gpus_per_worker > 0 and tf.config.list_physical_devices("GPU"):
            return "/GPU:0"  # Ray sets CUDA_VISIBLE_DEVICES: a worker sees its own GPU(s) only
        return "/CPU:0"

    def prepare_model(self, model):
        """Returns `model` unchanged: the strategy scope it was built in already mirrors its
        variables across workers (kept for the same `ctx` shape as the torch runner)."""
        return model

    def prepare_data_loader(self, dataset):
        """A `tf.data.Dataset` of *global* batches, sharded by element across workers.

        DATA sharding is explicit because in-memory datasets have no files to shard by, and
        AUTO would fall back to DATA with a warning anyway. Without Ray the dataset is unchanged.
        """
        if not self.in_ray_train or self.world_size == 1:
            return dataset
        import tensorflow as tf

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return dataset.with_options(options)

    def _write_checkpoint(self, state: dict, folder: Path) -> None:
        write_state(state, folder)

    def _read_checkpoint(self, folder: Path) -> dict:
        return read_state(folder)

    def _log_model(self, model, example_input) -> None:
        """An MLflow tensorflow-flavor model (`data/model.keras`, what the keras converter
        frontend reads), with explicit requirements: requirement inference costs 15-20 s."""
        if not self.run_id:
            return
        import keras
        import mlflow
        import mlflow.tensorflow
        import numpy as np
        import tensorflow as tf
        from mlflow.models import infer_signature

        from trainer.tracking.runs import logging_into

        example = np.asarray(example_input, dtype="float32")[:8]
        output = np.asarray(model(example, training=False))
        signature = infer_signature(example, output)
        with logging_into(self._tracking_uri, self.run_id):
            mlflow.tensorflow.log_model(
                model, name="model", signature=signature,
                pip_requirements=[f"{_tensorflow_distribution()}=={tf.__version__}", f"keras=={keras.__version__}"])


def _tensorflow_distribution() -> str:
    """The installed TensorFlow package's name (tensorflow-cpu locally, tensorflow on GPU images)."""
    from importlib.metadata import PackageNotFoundError, version

    for name in ("tensorflow-cpu", "tensorflow"):
        try:
            version(name)
            return name
        except PackageNotFoundError:
            continue
    return "tensorflow"


class TensorflowRunner:
    framework = "tensorflow"
    runtime = "tensorflow"
    frontend = "keras"      # the converter frontend that reads what save_model wrote

    def unsupported(self, spec) -> list[str]:
        # GPU jobs: preflight checks that the runtime's lock has a gpu variant (its image installs
        # tensorflow[and-cuda] there), for every framework alike.
        return []

    def make_context(self, spec, session, *, run_id, tracking_uri, data_path) -> TensorflowContext:
        return TensorflowContext(spec, session, run_id=run_id, tracking_uri=tracking_uri, data_path=data_path)

    def ray_trainer(self, train_loop, loop_config, scaling_config, run_config):
        from ray.train.tensorflow import TensorflowTrainer

        return TensorflowTrainer(train_loop, train_loop_config=loop_config, scaling_config=scaling_config,
                                 run_config=run_config)


RUNNER = TensorflowRunner()
