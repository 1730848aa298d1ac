"""The Ray Train settings every job's driver sets (trainer.runners.base.tune_ray_train)."""
from trainer.runners.base import RAY_TRAIN_ENV, tune_ray_train


def test_the_poll_interval_is_set_unless_already_chosen():
    env = {}
    assert tune_ray_train(env) == RAY_TRAIN_ENV == env
    assert float(env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]) < 2.0      # Ray's default stalls checkpoints
    chosen = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1.5"}
    assert tune_ray_train(chosen) == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1.5"}


def test_ray_train_carries_the_setting_from_the_driver_to_its_controller_and_workers():
    """Setting it in the driver's environment only works because Ray Train propagates these
    variables; a Ray upgrade that stops doing so must fail here, not silently bring back the stall."""
    from ray.train.v2._internal.constants import ENV_VARS_TO_PROPAGATE, HEALTH_CHECK_INTERVAL_S_ENV_VAR

    assert set(RAY_TRAIN_ENV) <= ENV_VARS_TO_PROPAGATE
    assert HEALTH_CHECK_INTERVAL_S_ENV_VAR in RAY_TRAIN_ENV
