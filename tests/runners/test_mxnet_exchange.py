"""The MXNet runner's gradient exchange (the Ray actor behind RayAllreduceKVStore), driven
directly with asyncio: no Ray, no mxnet - the round logic every multi-worker MXNet step relies on."""
import asyncio

import numpy as np
import pytest

from trainer.runners.mxnet import GradientExchange, MXNetRunner


def _run(*calls):
    async def main():
        return await asyncio.gather(*calls)
    return asyncio.run(main())


def test_a_round_returns_the_sum_to_every_worker_once_all_sent():
    ex = GradientExchange(3)
    parts = [np.full((2, 2), r + 1, np.float32) for r in range(3)]
    outs = _run(*(ex.reduce(7, 0, r, parts[r], "sum") for r in (2, 0, 1)))
    for out in outs:
        np.testing.assert_array_equal(out, np.full((2, 2), 6, np.float32))
    assert ex._rounds == {}                  # nothing kept once every worker has its result
    assert parts[0][0, 0] == 1               # the senders' arrays are not modified


def test_broadcast_gives_rank_zeros_array_to_all():
    ex = GradientExchange(2)
    outs = _run(ex.reduce("w", 0, 1, np.zeros(3), "broadcast"), ex.reduce("w", 0, 0, np.arange(3.0), "broadcast"))
    for out in outs:
        np.testing.assert_array_equal(out, np.arange(3.0))


def test_rounds_of_the_same_key_never_mix():
    """Round (key, seq): a fast worker's next step waits for its own round, not the previous one."""
    ex = GradientExchange(2)

    async def main():
        early = asyncio.ensure_future(ex.reduce(0, 1, 0, np.ones(1), "sum"))   # rank 0 is one step ahead
        await asyncio.sleep(0)
        first = await asyncio.gather(ex.reduce(0, 0, 0, np.ones(1), "sum"), ex.reduce(0, 0, 1, np.ones(1) * 2, "sum"))
        assert not early.done()
        second = await ex.reduce(0, 1, 1, np.ones(1) * 5, "sum")
        return first, second, await early

    first, second, early = asyncio.run(main())
    assert [float(x[0]) for x in first] == [3.0, 3.0] and float(second[0]) == float(early[0]) == 6.0


def test_the_sum_does_not_depend_on_arrival_order():
    """Ranks are summed in rank order: float32 addition is not associative, so a sum in arrival
    order could differ between runs - and workers would drift apart."""
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal(1000).astype(np.float32) * 10 ** r for r in range(4)]
    sums = []
    for order in ([0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0]):
        ex = GradientExchange(4)
        sums.append(_run(*(ex.reduce(0, 0, r, parts[r], "sum") for r in order))[0])
    assert all(np.array_equal(sums[0], s) for s in sums[1:])


@pytest.mark.parametrize("workers", [1, 2, 8])
def test_the_runner_accepts_any_number_of_workers(workers):
    from trainer.spec import load_spec

    spec = load_spec({"name": "j", "framework": "mxnet", "entrypoint": "t.py:train", "workers": workers})[0]
    assert MXNetRunner().unsupported(spec) == []
