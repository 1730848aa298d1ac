"""PyTorch: Ray Train's TorchTrainer (DDP; gloo on CPU, nccl on GPU)."""
from __future__ import annotations

import re
from pathlib import Path

from trainer.context import Context


class TorchContext(Context):
    @property
    def device(self):
        import torch

        if self.spec.resources.gpus_per_worker > 0 and torch.cuda.is_available():
            if self.in_ray_train:
                import ray.train.torch

                return ray.train.torch.get_device()
            return torch.device("cuda", 0)
        return torch.device("cpu")

    def prepare_model(self, model):
        if self.in_ray_train:
            import ray.train.torch

            return ray.train.torch.prepare_model(model)
        return model.to(self.device)

    def prepare_data_loader(self, loader):
        if self.in_ray_train:
            import ray.train.torch

            return ray.train.torch.prepare_data_loader(loader)
        return loader

    def _write_checkpoint(self, state: dict, folder: Path) -> None:
        """`state.pt` (torch.save), checked to load with `torch.load(weights_only=True)`, the only
        way it is read back: a value that only a full unpickle could rebuild (an arbitrary
        object, a class instance) fails `ctx.report` now, naming it, rather than the restore."""
        import pickle

        import torch

        path = folder / CHECKPOINT_FILE
        torch.save(state, path)
        try:  # mmap: only the small pickle of the structure is read, not the tensors
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as err:
            found = _UNSUPPORTED_GLOBAL.search(str(err))
            what = f"a {found.group(1)}" if found else "an object"
            raise TypeError(f"ctx.report: the checkpoint holds {what}, which can only be restored by "
                            f"unpickling code (torch.load(weights_only=True) refuses it); keep tensors, "
                            f"numbers, strings, lists, tuples, dicts and state_dict()s in checkpoints") from None

    def _read_checkpoint(self, folder: Path) -> dict:
        import torch

        # weights_only: tensors, numbers, strings and containers; a pickled object planted in the
        # checkpoint store raises instead of running.
        return torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=True)

    def _log_model(self, model, example_input) -> None:
        """An MLflow pytorch-flavor model in the `pt2` format (torch.export: a graph of tensor
        operators and the weights, no pickled Python), so `trainer convert runs:/<id>/model` loads
        it without --trust-pickle. Explicit requirements: MLflow's requirement inference costs
        15-20 s a call. A model torch.export cannot capture (data-dependent Python control flow)
        is logged pickled instead, and the job log and the run's `trainer.model_format` tag say
        why: converting it then needs --trust-pickle."""
        if not self.run_id:
            return
        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        from trainer.errors import first_line
        from trainer.tracking.runs import client, logging_into

        module = getattr(model, "module", model)  # unwrap DDP
        module = module.to("cpu").eval()
        example = example_input.detach().cpu() if hasattr(example_input, "detach") else torch.as_tensor(example_input)
        example = example[:8]
        with torch.no_grad():
            output = module(example)
        signature = infer_signature(example.numpy(), output.numpy())
        requirements = [f"torch=={torch.__version__.split('+')[0]}"]
        tracking = client(self._tracking_uri)
        with logging_into(self._tracking_uri, self.run_id):
            try:
                # A batch of 8 (> 1) so the batch dimension is exported dynamic (Dim.AUTO).
                mlflow.pytorch.log_model(module, name="model", signature=signature, input_example=example.numpy(),
                                         serialization_format="pt2", pip_requirements=requirements)
                tracking.set_tag(self.run_id, TAG_MODEL_FORMAT, "pt2")
            except Exception as err:  # noqa: BLE001 - torch.export's failures have many types
                reason = first_line(err)
                print(f"trainer: torch.export cannot capture the model ({reason}); logged it pickled: "
                      f"`trainer convert` needs --trust-pickle for it", flush=True)
                _pickle_user_classes_by_value(module)
                mlflow.pytorch.log_model(module, name="model", signature=signature, serialization_format="pickle",
                                         pip_requirements=requirements)
                tracking.set_tag(self.run_id, TAG_MODEL_FORMAT, f"pickle (torch.export failed: {reason})"[:5000])


CHECKPOINT_FILE = "state.pt"
TAG_MODEL_FORMAT = "trainer.model_format"
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _pickle_user_classes_by_value(module) -> None:
    """The user's module is loaded from a file, not an installed package: pickle its classes by
    value so the pickled model loads anywhere (converters, serving) without that file."""
    import sys

    import cloudpickle

    user_module = sys.modules.get(type(module).__module__)
    if user_module is not None and user_module.__name__.startswith("trainer_user_"):
        cloudpickle.register_pickle_by_value(user_module)


class TorchRunner:
    framework = "torch"
    runtime = "torch"
    frontend = "torch"      # the converter frontend that reads what save_model wrote

    def unsupported(self, spec) -> list[str]:
        return []

    def make_context(self, spec, session, *, run_id, tracking_uri, data_path) -> TorchContext:
        return TorchContext(spec, session, run_id=run_id, tracking_uri=tracking_uri, data_path=data_path)

    def ray_trainer(self, train_loop, loop_config, scaling_config, run_config):
        from ray.train.torch import TorchConfig, TorchTrainer

        backend = "nccl" if scaling_config.use_gpu else "gloo"
        return TorchTrainer(train_loop, train_loop_config=loop_config, scaling_config=scaling_config,
                            run_config=run_config, torch_config=TorchConfig(backend=backend))


RUNNER = TorchRunner()
