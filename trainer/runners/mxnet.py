"""MXNet (1.9, Gluon) in the mxnet runtime: Ray Train V2's generic DataParallelTrainer plus a
backend that all-reduces Gluon's gradients through a Ray actor.

Ray Train has no MXNet trainer, so the job uses `DataParallelTrainer` with `MXNetConfig`. With
`workers: N > 1` its backend, before the training function runs, starts one *gradient exchange*
actor for this worker group (async, 0 CPU, owned by Ray Train's controller) and hands its handle
to every worker. `ctx.kvstore` is then a Gluon KVStore (`RayAllreduceKVStore`, a
`mx.kvstore.KVStoreBase`): a Gluon Trainer made with `kvstore=ctx.kvstore, update_on_kvstore=False`

- broadcasts rank 0's initial parameters to every worker (`broadcast`, once per parameter), and
- sums each step's gradients over all workers (`pushpull`, once per parameter per step: every
  worker sends its gradient, the actor adds the N of them and returns the sum to all);

each worker applies the optimizer itself (its state is local and checkpointable) - synchronous
data parallelism, like DDP. Pass the *global* batch size to `trainer.step(len(xb) *
ctx.world_size)` so the summed gradient is a mean.

Why not MXNet's own `dist_sync` parameter server (scheduler + server processes, what Kubeflow's
MXJob ran): it trains 2 workers to the same accuracy here, but after a worker failure the
restarted group's fresh server aborted with `kvstore_dist_server.h:611: Check failed:
!stored.is_none(): init 1 first` while the workers blocked in ps-lite forever, even with a new
scheduler, server and port per attempt (reproduced on this runner; see benchmarks/README.md,
"MXNet multi-worker"). The exchange actor has no native state a restart could corrupt: a
restarted group gets a new actor, a dead peer makes Ray Train stop the group (the survivors
die with it, the actor with its owner), and a wait that outlives `ALLREDUCE_TIMEOUT_S` raises
in the worker instead of blocking - no hang on any path. Cancel stops the controller, which
takes its workers and the actor with it. The price is one actor round trip per parameter per
step, measured in benchmarks/README.md.

Ranks, `ray.train.report` checkpoints, FailureConfig and label-selector placement are Ray
Train's, exactly as for the torch runner. With one worker (and in `trainer run --local`) there
is no actor and `ctx.kvstore` is "device": Gluon then updates in place (the fast path).

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

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from trainer.context import Context
from trainer.runners._checkpoint import read_state, to_numpy_tree, write_state

MODEL_PREFIX = "model"


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
        """What to pass as a Gluon Trainer's `kvstore=`: the `RayAllreduceKVStore` across the
        job's workers (its exchange started by the backend), or "device" with one worker."""
        if not self.in_ray_train or self.world_size == 1:
            return "device"
        if self._kvstore is None:
            if _exchange is None:
                raise RuntimeError("the MXNet gradient exchange is not set up; was the job started by "
                                   "trainer's MXNet runner?")
            self._kvstore = _kvstore_cls()(_exchange, self.rank, self.world_size)
            print(f"mxnet kvstore {self._kvstore.type}: worker {self.rank} of {self.world_size}", flush=True)
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

ALLREDUCE_TIMEOUT_S = float(os.environ.get("TRAINER_MXNET_ALLREDUCE_TIMEOUT_S", "600"))
_exchange = None        # in each worker process: this worker group's exchange actor


class GradientExchange:
    """The Ray actor (async) of one worker group: round `(key, seq)` completes when all N
    workers sent their array; each gets the sum ("sum") or rank 0's array ("broadcast")."""

    def __init__(self, world_size: int):
        self._n = world_size
        self._rounds: dict = {}     # (key, seq) -> the round's parts, result and readers left

    async def reduce(self, key, seq: int, rank: int, array, op: str):
        import numpy as np

        r = self._rounds.get((key, seq))
        if r is None:
            r = self._rounds[(key, seq)] = {"parts": {}, "done": asyncio.Event(), "out": None, "left": self._n}
        r["parts"][rank] = array
        if len(r["parts"]) == self._n:
            if op == "broadcast":
                r["out"] = r["parts"][0]
            else:
                parts = [r["parts"][i] for i in range(self._n)]   # a fixed order: same sum everywhere
                out = np.array(parts[0], copy=True)
                for p in parts[1:]:
                    out += p
                r["out"] = out
            r["parts"] = None
            r["done"].set()
        else:
            await r["done"].wait()
        out = r["out"]
        r["left"] -= 1
        if r["left"] == 0:
            del self._rounds[(key, seq)]
        return out


def _kvstore_cls():
    """`RayAllreduceKVStore`, built lazily (importing this module never imports mxnet)."""
    import mxnet as mx
    import numpy as np

    class RayAllreduceKVStore(mx.kvstore.KVStoreBase):
        """A Gluon KVStore whose broadcast and pushpull go through the group's exchange actor."""

        def __init__(self, exchange, rank: int, num_workers: int):
            self._exchange = exchange
            self._rank = rank
            self._num_workers = num_workers
            self._seq: dict = {}

        def _round(self, key, array, op: str):
            import ray

            seq = self._seq.get(key, 0)
            self._seq[key] = seq + 1
            ref = self._exchange.reduce.remote(key, seq, self._rank, array, op)
            try:
                return ray.get(ref, timeout=ALLREDUCE_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                raise RuntimeError(f"mxnet allreduce of key {key} (round {seq}) waited {ALLREDUCE_TIMEOUT_S:g}s "
                                   f"for the other workers; giving up so Ray Train can restart the group") from None

        @staticmethod
        def _outs(value, out):
            if out is None:
                out = value
            return out if isinstance(out, (list, tuple)) else [out]

        def broadcast(self, key, value, out, priority=0):
            src = value[0] if isinstance(value, (list, tuple)) else value
            result = self._round(key, src.asnumpy(), "broadcast")
            for o in self._outs(value, out):
                o[:] = mx.nd.array(result, ctx=o.context, dtype=o.dtype)

        def pushpull(self, key, value, out=None, priority=0):
            values = value if isinstance(value, (list, tuple)) else [value]
            local = values[0].asnumpy()
            for v in values[1:]:    # several devices in this worker: their sum first
                local = local + v.asnumpy()
            result = self._round(key, np.ascontiguousarray(local), "sum")
            for o in self._outs(value, out):
                o[:] = mx.nd.array(result, ctx=o.context, dtype=o.dtype)

        @staticmethod
        def is_capable(capability):
            if capability.lower() == mx.kvstore.KVStoreBase.OPTIMIZER:
                return False    # the optimizer runs in each worker (update_on_kvstore=False)
            raise ValueError(f"Unknown capability: {capability}")

        @property
        def type(self):
            return "dist_sync_ray_allreduce"   # 'dist' in it: Gluon treats it as distributed

        @property
        def rank(self):
            return self._rank

        @property
        def num_workers(self):
            return self._num_workers

        def set_optimizer(self, optimizer):
            raise NotImplementedError("the optimizer runs in the workers: use update_on_kvstore=False")

        def save_optimizer_states(self, fname, dump_optimizer=False):
            raise NotImplementedError("use trainer.save_states (update_on_kvstore=False)")

        def load_optimizer_states(self, fname):
            raise NotImplementedError("use trainer.load_states (update_on_kvstore=False)")

    return RayAllreduceKVStore


def _set_exchange(exchange) -> None:
    global _exchange
    _exchange = exchange


def _backend_cls():
    from ray.train.backend import Backend

    class _MXNetBackend(Backend):
        def on_start(self, worker_group, backend_config) -> None:
            n = len(worker_group)
            if n == 1:
                return
            import ray

            # A fresh actor per worker group: a restarted group never sees an earlier round.
            self._exchange = ray.remote(num_cpus=0)(GradientExchange).remote(n)
            worker_group.execute(_set_exchange, self._exchange)

        def on_shutdown(self, worker_group, backend_config) -> None:
            exchange = getattr(self, "_exchange", None)
            if exchange is not None:
                import ray

                ray.kill(exchange)
                self._exchange = None

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
        return []

    def make_context(self, spec, session, *, run_id, tracking_uri, data_path) -> MXNetContext:
        return MXNetContext(spec, session, run_id=run_id, tracking_uri=tracking_uri, data_path=data_path)

    def ray_trainer(self, train_loop, loop_config, scaling_config, run_config):
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

        return DataParallelTrainer(train_loop, train_loop_config=loop_config, backend_config=mxnet_config(),
                                   scaling_config=scaling_config, run_config=run_config)


RUNNER = MXNetRunner()
