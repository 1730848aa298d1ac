"""What a job records about itself for Prometheus: the catalogue of every trainer_* metric
(catalog), the recording calls the driver and the workers make through Ray's metrics API
(record), and the GPU sampler (gpu). trainer.monitoring scrapes, alerts and draws them.

The job's code calls the functions re-exported here: `from trainer import telemetry;
telemetry.reported(step, values)`.
"""
from trainer.telemetry.record import (bind, checkpoint_written, converted, driver_started, flush_progress, reported,
                                      restored, start_gpu_sampler, tracking_flushed, tracking_pending, worker_started)

__all__ = ["bind", "checkpoint_written", "converted", "driver_started", "flush_progress", "reported", "restored",
           "start_gpu_sampler", "tracking_flushed", "tracking_pending", "worker_started"]
