"""MXNet (1.9, Gluon) in the mxnet runtime: Ray Train V2's generic DataParallelTrainer plus a
parameter-server backend.

**Capability: one worker.** `unsupported(spec)` refuses `workers > 1` before submission (exit 3,
MULTI_WORKER_REASON). The parameter-server mode below is implemented and trains 2 workers to the
same accuracy as one (measured: 0.994 on digits, both ranks' evaluations identical every epoch),
but it does not survive a worker failure: Ray Train restarts the group with a fresh scheduler and
server, and that server aborts with `kvstore_dist_server.h:611: Check failed: !stored.is_none():
init 1 first` while the workers block in the kvstore forever - a hang, not a resume. Until that is
solved, multi-worker MXNet is refused rather than offered without fault tolerance.

Ray Train has no MXNet trainer, so the job uses `DataParallelTrainer` with `MXNetConfig`, whose
backend does what Kubeflow's MXJob did for MXNet's distributed mode (kvstore `dist_sync`):

- with `workers: N > 1`, before the training function runs, the backend starts one *scheduler*
  and one *server* process (`DMLC_ROLE=scheduler|server`, each blocking in
  `mx.kv.create("dist_sync")`) on rank 0's node, children of the rank-0 worker that die with it
  (PR_SET_PDEATHSIG), and sets `DMLC_ROLE=worker`, `DMLC_PS_ROOT_URI/PORT` (rank 0's address, a
  free port), `DMLC_NUM_SERVER=1`, `DMLC_NUM_WORKER=N` in every Ray Train worker;
- `ctx.kvstore` then creates the `dist_sync` KVStore (once per worker): a Gluon Trainer made with
  `kvstore=ctx.kvstore, update_on_kvstore=False` pushes each step's gradients to the server, which
  sums them over all workers, and pulls the sum back; each worker applies the optimizer itself
  (so its state is local and checkpointable) - synchronous data parallelism, like DDP. Pass the
  *global* batch size to `trainer.step(len(xb) * ctx.world_size)` so the summed gradient is a mean.
  The initial parameters come from the kvstore's rank 0 (all workers pull them at the first step);
- on shutdown (end of training, or a worker failure: Ray Train V2 then restarts the whole group
  from the last checkpoint, FailureConfig as for torch) the scheduler and server are stopped; a
  restarted group gets fresh ones on a new port.

Ranks, `ray.train.report` checkpoints, FailureConfig and label-selector placement are Ray Train's,
exactly as for the torch runner. With one worker (and in `trainer run --local`) no kvstore
processes exist and `ctx.kvstore` is "device" (Gluon then updates in place).

    def train(ctx):
        net = ctx.prepare_model(build_net())            # initialized on ctx.device, hybridized
        loader = ctx.prepare_data_loader(gluon.data.DataLoader(dataset, batch_size=32, shuffle=True))
        trainer = gluon.Trainer(net.collect_params(), "sgd", {...}, kvstore=ctx.kvstore,
                                update_on_kvstore=False)
        ...
        ctx.report({"epoch": e, ...}, checkpoint={"params": ctx.params_of(net), ...})
        ctx.save_model(net, x_test[:256], labels=y_test[:256])

The saved model is the MXNet native format the mxnet converter frontend reads: `model/` holds
`model-symbol.json` + `model-0000.params` (from `HybridBlock.export`), so
`trainer convert runs:/<id>/model --from mxnet --to onnx` works on it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from trainer.context import Context
from trainer.runners._checkpoint import read_state, to_numpy_tree, write_state

MULTI_WORKER_REASON = (
    "multi-worker training is not supported: MXNet's dist_sync parameter server trains 2 workers "
    "here, but after a worker failure the restarted group's server aborts ('kvstore_dist_server.h:611: "
    "Check failed: init 1 first') and the job hangs instead of resuming; use workers: 1")
MODEL_PREFIX = "model"
PS_ROLES = ("scheduler", "server")
_PS_PROGRAM = "import mxnet as mx; mx.kv.create('dist_sync')"   # blocks until the job's workers leave
_ps_processes: list[subprocess.Popen] = []                      # in the rank-0 worker process


class MXNetContext(Context):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._kvstore = None

    @property
    def device(self):
        """`mx.gpu(0)` when the job asks for GPUs and one is visible (Ray sets CUDA_VISIBLE_DEVICES
        to the worker's own GPU), else `mx.cpu()`."""
        import mxnet as mx

        if self.spec.resources.gpus_per_worker > 0 and mx.context.num_gpus() > 0:
            return mx.gpu(0)
        return mx.cpu()

    @property
    def kvstore(self):
        """What to pass as a Gluon Trainer's `kvstore=`: the `dist_sync` KVStore across the job's
        workers (started by the backend), or "device" with one worker."""
        if not self.in_ray_train or self.world_size == 1:
            return "device"
        if self._kvstore is None:
            if os.environ.get("DMLC_ROLE") != "worker":
                raise RuntimeError("the MXNet parameter-server environment is not set (DMLC_ROLE); "
                                   "was the job started by trainer's MXNet runner?")
            import mxnet as mx

            self._kvstore = mx.kv.create("dist_sync")
            print(f"mxnet kvstore {self._kvstore.type}: worker {self._kvstore.rank} of "
                  f"{self._kvstore.num_workers} (ray rank {self.rank}), scheduler "
                  f"{os.environ['DMLC_PS_ROOT_URI']}:{os.environ['DMLC_PS_ROOT_PORT']}", flush=True)
        return self._kvstore

    def prepare_model(self, model):
        """Initializes the parameters that are not yet (Xavier) on `ctx.device` and hybridizes the
        net (a static graph: faster, and what `save_model` exports). Returns the same net."""
        import mxnet as mx

        params = model.collect_params()
        for p in params.values():
            if p._data is None and p._deferred_init == ():
                p.initialize(mx.init.Xavier(), ctx=self.device)
        model.hybridize()
        return model

    def prepare_data_loader(self, loader):
        """With several workers, a Gluon DataLoader over this rank's shard of the dataset (same
        batch size, shuffle and last-batch policy); unchanged with one worker."""
        if not self.in_ray_train or self.world_size == 1:
            return loader
        from mxnet import gluon

        sampler = loader._batch_sampler
        shuffle = isinstance(sampler._sampler, gluon.data.RandomSampler)
        return gluon.data.DataLoader(loader._dataset.shard(self.world_size, self.rank),
                                     batch_size=sampler._batch_size, shuffle=shuffle,
                                     last_batch=sampler._last_batch, num_workers=loader._num_workers)

    @staticmethod
    def params_of(net) -> dict:
        """The net's parameters as {name: numpy array} (a checkpointable dict)."""
        return {name: p.data().asnumpy() for name, p in net.collect_params().items()}

    def load_params(self, net, params: dict) -> None:
        """Inverse of `params_of`, onto `ctx.device`."""
        import mxnet as mx

        for name, p in net.collect_params().items():
            p.set_data(mx.nd.array(params[name], ctx=self.device))

    def _write_checkpoint(self, state: dict, folder: Path) -> None:
        write_state(state, folder)

    def _read_checkpoint(self, folder: Path) -> dict:
        return read_state(folder)

    def _log_model(self, model, example_input) -> None:
        """`model/model-symbol.json` + `model/model-0000.params` (HybridBlock.export), the
        layout the mxnet converter frontend reads. No MLmodel: MLflow has no MXNet flavor."""
        if not self.run_id:
            return
        import tempfile

        import mxnet as mx
        import numpy as np

        from trainer.tracking.runs import client

        example = mx.nd.array(np.asarray(to_numpy_tree(example_input), dtype="float32")[:8], ctx=self.device)
        model.hybridize()
        model(example)      # the export needs a traced graph
        with tempfile.TemporaryDirectory() as tmp:
            model.export(str(Path(tmp) / MODEL_PREFIX), epoch=0)
            client(self._tracking_uri).log_artifacts(self.run_id, tmp, "model")


# ---------------------------------------------------------------------------- the Ray backend

def _rank0_address() -> tuple[str, int]:
    from ray.train._internal.utils import get_address_and_port

    return get_address_and_port()


def _pdeathsig() -> None:
    """In the child: die with the worker that started it (a SIGKILLed worker leaves no orphans)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _start_ps(uri: str, port: int, num_workers: int) -> None:
    """Runs in the rank-0 worker: start the scheduler and the server."""
    _stop_ps()
    env = {**os.environ, "DMLC_PS_ROOT_URI": uri, "DMLC_PS_ROOT_PORT": str(port),
           "DMLC_NUM_SERVER": "1", "DMLC_NUM_WORKER": str(num_workers)}
    for role in PS_ROLES:
        _ps_processes.append(subprocess.Popen([sys.executable, "-c", _PS_PROGRAM],
                                              env={**env, "DMLC_ROLE": role}, preexec_fn=_pdeathsig))


def _stop_ps() -> None:
    while _ps_processes:
        proc = _ps_processes.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _set_worker_env(uri: str, port: int, num_workers: int) -> None:
    os.environ.update({"DMLC_ROLE": "worker", "DMLC_PS_ROOT_URI": uri, "DMLC_PS_ROOT_PORT": str(port),
                       "DMLC_NUM_SERVER": "1", "DMLC_NUM_WORKER": str(num_workers)})


def _backend_cls():
    from ray.train.backend import Backend

    class _MXNetBackend(Backend):
        def on_start(self, worker_group, backend_config) -> None:
            n = len(worker_group)
            if n == 1:
                return
            uri, port = worker_group.execute_single(0, _rank0_address)
            worker_group.execute_single(0, _start_ps, uri, port, n)
            worker_group.execute(_set_worker_env, uri, port, n)

        def on_shutdown(self, worker_group, backend_config) -> None:
            if len(worker_group) > 1:
                try:
                    worker_group.execute_single(0, _stop_ps)
                except Exception:  # rank 0 is gone: its children died with it (PDEATHSIG)
                    pass

    return _MXNetBackend


def mxnet_config():
    """The BackendConfig of an MXNet job (built lazily: importing this module never imports ray)."""
    from ray.train.backend import BackendConfig

    @dataclass
    class MXNetConfig(BackendConfig):
        @property
        def backend_cls(self):
            return _backend_cls()

        @property
        def framework(self):
            return "mxnet"

    return MXNetConfig()


class MXNetRunner:
    framework = "mxnet"
    runtime = "mxnet"
    frontend = "mxnet"      # the converter frontend that reads what save_model wrote

    def unsupported(self, spec) -> list[str]:
        if spec.workers > 1:
            return [MULTI_WORKER_REASON]
        return []

    def make_context(self, spec, session, *, run_id, tracking_uri, data_path) -> MXNetContext:
        return MXNetContext(spec, session, run_id=run_id, tracking_uri=tracking_uri, data_path=data_path)

    def ray_trainer(self, train_loop, loop_config, scaling_config, run_config):
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

        return DataParallelTrainer(train_loop, train_loop_config=loop_config, backend_config=mxnet_config(),
                                   scaling_config=scaling_config, run_config=run_config)


RUNNER = MXNetRunner()
