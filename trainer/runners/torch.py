"""PyTorch: Ray Train's TorchTrainer (DDP; gloo on CPU, nccl on GPU)."""
from __future__ import annotations

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
        import torch

        torch.save(state, folder / "state.pt")

    def _read_checkpoint(self, folder: Path) -> dict:
        import torch

        return torch.load(folder / "state.pt", map_location="cpu", weights_only=False)

    def _log_model(self, model, example_input) -> None:
        """An MLflow pytorch-flavor model (full module), with explicit requirements: MLflow's
        requirement inference costs 15-20 s a call."""
        if not self.run_id:
            return
        import mlflow
        import mlflow.pytorch
        import torch

        from trainer.tracking.runs import client

        module = getattr(model, "module", model)  # unwrap DDP
        module = module.to("cpu").eval()
        example = example_input.detach().cpu() if hasattr(example_input, "detach") else torch.as_tensor(example_input)
        with torch.no_grad():
            output = module(example[:8])
        from mlflow.models import infer_signature

        signature = infer_signature(example[:8].numpy(), output.numpy())
        # The user's module is loaded from a file, not an installed package: pickle its classes
        # by value so the model loads anywhere (converters, serving) without that file.
        import sys

        import cloudpickle

        user_module = sys.modules.get(type(module).__module__)
        if user_module is not None and user_module.__name__.startswith("trainer_user_"):
            cloudpickle.register_pickle_by_value(user_module)
        mlflow.set_tracking_uri(self._tracking_uri)
        with mlflow.start_run(run_id=self.run_id):
            mlflow.pytorch.log_model(module, name="model", signature=signature, serialization_format="pickle",
                                     pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        # start_run's exit marked the run FINISHED; the job's driver owns the final status.
        client(self._tracking_uri).update_run(self.run_id, status="RUNNING")


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
