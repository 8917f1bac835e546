"""What runs inside each Ray Train worker: the library's loop with a distributed Engine, Ray
checkpoints and a rank-0 MLflow reporter. Nothing else: the loop is the in-process one."""

from __future__ import annotations

import logging
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from slicesr.config import config_from_dict
from slicesr.modeldir import read_model_dir, write_model_dir
from slicesr.training import Checkpointer, LogReporter, TrainingLoop

log = logging.getLogger(__name__)
BEST = "best"


class RayCheckpointer(Checkpointer):
    """Checkpoints through `ray.train.report` on every rank (each uploads its part into one checkpoint);
    the best model so far travels inside every checkpoint as `best/`, written by rank 0."""

    def __init__(self) -> None:
        self.best: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None

    def save(self, loop: TrainingLoop) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            loop.write_checkpoint(folder)
            if loop.rank == 0:
                weights, metadata = self.best or (loop.model.state_dict(), loop.metadata())
                write_model_dir(folder / BEST, weights, loop.config, metadata)
            metrics = {"step": loop.step, f"best_{loop.val_metric}": loop.best_val}
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def restore(self, loop: TrainingLoop) -> bool:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return False
        with checkpoint.as_directory() as folder:
            loop.read_checkpoint(Path(folder))
            if loop.rank == 0 and (Path(folder) / BEST).is_dir():
                weights, _, metadata = read_model_dir(Path(folder) / BEST)
                self.best = (weights, metadata)
        loop.reporter.report(loop.step, {"resumed_at_step": float(loop.step)})  # a restart shows in MLflow
        return True

    def save_best(self, loop: TrainingLoop) -> None:
        if loop.rank == 0:
            self.best = ({k: v.detach().cpu().clone() for k, v in loop.model.state_dict().items()}, loop.metadata())

    def start(self, loop: TrainingLoop) -> None:
        pass  # the driver keeps the run's files; the config travels in every checkpoint

    def finish(self, loop: TrainingLoop) -> None:
        pass  # the last step always checkpoints, with best/ in it


class RankZeroReporter:
    """Logs (every rank) and MLflow (rank 0 only): metrics every train.log_every steps, PNG previews
    every tracking.image_every steps and at the end."""

    def __init__(self, rank: int, tracking_uri: str | None, experiment: str, run_id: str | None, image_every: int):
        self.rank = rank
        self.log = LogReporter()
        self.image_every = image_every
        self.run_id = run_id
        self.tracker = None
        if rank == 0 and tracking_uri and run_id:
            from cluster.tracking import Tracker

            try:
                self.tracker = Tracker(tracking_uri, experiment)
            except Exception as exc:  # noqa: BLE001 - e.g. the server is down when Ray restarts a worker
                log.warning("MLflow unreachable at %s (training goes on without tracking): %s", tracking_uri, exc)

    def report(self, step: int, metrics: dict[str, float]) -> None:
        if self.rank == 0:
            self.log.report(step, metrics)
            if self.tracker is not None:
                self._tracked(self.tracker.log_metrics, self.run_id, step, metrics)

    def images(self, step: int, render: Callable[[], dict[str, np.ndarray]], final: bool) -> None:
        if self.tracker is None:
            return
        if final or (self.image_every and step % self.image_every == 0):
            for name, image in render().items():
                self._tracked(self.tracker.log_image, self.run_id, f"{name}_step{step:07d}", image)

    @staticmethod
    def _tracked(call: Callable[..., None], *args: Any) -> None:
        # a tracking server outage loses some metrics, not the training run
        try:
            call(*args)
        except Exception as exc:  # noqa: BLE001
            log.warning("MLflow logging failed (training goes on): %s", exc)


def trainer_for(stage: str) -> type[TrainingLoop]:
    """The library's loop that trains a stage (`stage: vae` or `stage: sr`)."""
    from slicesr.stage1.train import Stage1Trainer
    from slicesr.stage2.train import Stage2Trainer

    return Stage1Trainer if stage == "vae" else Stage2Trainer


def train_worker(payload: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker. payload: the resolved config (YAML), the MLflow run id,
    the DeepSpeed config (dict) and the torch thread count."""
    import ray.train
    import ray.train.torch

    from cluster.engines import engine_factory
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_dict(yaml.safe_load(payload["config"]), "payload config")
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(int(payload["threads"]))
    device = ray.train.torch.get_device() if config.cluster.use_gpu else torch.device("cpu")
    if config.cluster.strategy == "deepspeed":
        if not config.cluster.use_gpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed picks its accelerator
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if config.cluster.use_gpu else "gloo")  # reuses Ray's group
    reporter = RankZeroReporter(rank, payload.get("tracking_uri"), config.tracking.experiment, payload.get("run_id"),
                                config.tracking.image_every)
    trainer_class = trainer_for(config.stage)
    started = time.perf_counter()
    trainer = trainer_class(config, reporter, engine_factory(config, device, payload.get("deepspeed")),
                            shard=(rank, world_size), checkpointer=RayCheckpointer())
    try:
        trainer.fit(resume=True)
        # the largest peak resident memory of any worker, in MiB (a collective: every rank calls it)
        peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0], device=device)
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
        reporter.report(trainer.step, {"peak_worker_rss_mib": float(peak)})
    finally:
        trainer.engine.close()
    log.info("rank %d/%d done at step %d in %.1f s", rank, world_size, trainer.step, time.perf_counter() - started)
