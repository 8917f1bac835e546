"""What every training loop here shares: an Engine per set of networks, reporters, and a resumable loop.

The loop (sample, step, validate, checkpoint) knows nothing of Ray, DDP or DeepSpeed: a distributed
adapter (`cluster/`) supplies another Engine (through `engine_factory`), another Reporter, another
Checkpointer and this worker's shard (rank, world size). With the defaults it runs in-process.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from slicesr.config import Config, TrainConfig, dump_config
from slicesr.modeldir import (
    read_model_dir,
    recover_dir,
    replace_dir_atomically,
    write_model_dir,
    write_model_files,
)

log = logging.getLogger(__name__)
TRAINING_STATE = "training_state.pt"


@dataclass
class ShardPlan:
    all_ids: list[str]
    train_ids: list[str]  # the seeded split (what a run's identity records)
    val_ids: list[str]
    shards: list[list[str]]  # per rank: every world_size-th usable training scan from the rank on
    usable_val_ids: list[str]  # validation scans with enough slices to sample from


def plan_shards(store: Any, config: Config, world_size: int, min_slices: int) -> ShardPlan:
    """The split and the workers' disjoint shards, from the stores' markers alone (one batched read):
    the driver checks it before any worker starts, each worker takes its own shard from it."""
    from slicesr.sampling import split_scans

    ids = store.completed_ids()
    if not ids:
        raise ValueError(f"data.store {store.url} holds no stored scans (convert some with preprocessing.to_zarr)")
    train_ids, val_ids = split_scans(ids, config.train.val_fraction, config.train.seed)
    records = store.records(train_ids + val_ids)
    long_enough = [scan_id for scan_id in ids if scan_id in records and records[scan_id].shape[0] >= min_slices]
    usable = [scan_id for scan_id in train_ids if scan_id in long_enough]
    if len(usable) < world_size:
        short = f" with at least {min_slices} slices (of {len(train_ids)})" if len(usable) < len(train_ids) else ""
        raise ValueError(f"data.store {store.url} has {len(usable)} training scans{short} for {world_size} worker{'s' if world_size > 1 else ''} "
                         "(cluster.num_workers): each worker needs its own scans")
    return ShardPlan(ids, train_ids, val_ids, [usable[rank::world_size] for rank in range(world_size)],
                     [scan_id for scan_id in val_ids if scan_id in long_enough])


def learning_rate(train: TrainConfig, step: int) -> float:
    """The learning rate of the step that follows `step` steps done (train.lr_warmup_steps, train.lr_decay_steps)."""
    rate = train.lr
    if step < train.lr_warmup_steps:
        rate *= (step + 1) / train.lr_warmup_steps
    decay_start = train.max_steps - train.lr_decay_steps
    if train.lr_decay_steps and step >= decay_start:
        rate *= max(0.0, (train.max_steps - step) / train.lr_decay_steps)
    return rate


SCHEDULE_KEYS = ("max_steps", "lr_warmup_steps", "lr_decay_steps")


def first_changed_rate(saved: TrainConfig, current: TrainConfig, steps_done: int) -> int | None:
    """The first of the `steps_done` steps that `saved`'s schedule took at another rate than `current`'s
    would (None: the same rates, so a run may resume under `current`, e.g. a decay branched off a constant
    run). Rates differ only inside a warm-up or a decay, so only those steps are compared."""
    warmup = range(min(steps_done, max(saved.lr_warmup_steps, current.lr_warmup_steps)))
    starts = [c.max_steps - c.lr_decay_steps for c in (saved, current) if c.lr_decay_steps]
    decay = range(max(len(warmup), min(starts + [steps_done])), steps_done)
    for step in [*warmup, *decay]:
        if not math.isclose(learning_rate(saved, step), learning_rate(current, step), rel_tol=1e-12):
            return step
    return None


def resolve_device(name: str) -> torch.device:
    """`auto` (a CUDA device when torch sees one, else the CPU), `cpu` or `cuda`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False); "
                         "use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


class Engine:
    """Owns forward, backward, step, zero_grad and optimizer state of each named network (one Adam each).

    `networks` are the plain modules (their state is the model's); `forward` may go through a wrapper
    (DDP, DeepSpeed) that synchronises gradients; `frozen` evaluates a network with its parameters
    detached, so a loss can pass through it without giving it gradients.
    """

    device = torch.device("cpu")
    # What the saved optimizer state looks like: a checkpoint resumes only under the same layout
    optimizer_layout = "torch"

    def __init__(self, model: nn.Module, networks: dict[str, nn.Module], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), device: torch.device | None = None):
        if device is not None:
            model.to(device)
            self.device = device
        self.model = model
        self.networks = networks
        self.optimizers = {name: torch.optim.Adam(net.parameters(), lr=lr, betas=betas)
                           for name, net in networks.items()}

    def forward(self, name: str, *inputs: torch.Tensor) -> Any:
        return self.networks[name](*inputs)

    def frozen(self, name: str, *inputs: torch.Tensor) -> Any:
        net = self.networks[name]
        detached = {key: value.detach() for key, value in net.named_parameters()}
        return torch.func.functional_call(net, detached, inputs)

    def parameters(self, name: str) -> list[torch.Tensor]:
        return [p for p in self.networks[name].parameters() if p.requires_grad]

    def zero_grad(self, name: str) -> None:
        self.optimizers[name].zero_grad(set_to_none=True)

    def backward(self, name: str, loss: torch.Tensor, retain_graph: bool = False) -> None:
        loss.backward(inputs=self.parameters(name), retain_graph=retain_graph)

    def step(self, name: str) -> None:
        self.optimizers[name].step()

    def set_lr(self, lr: float) -> None:
        """The learning rate of every network's next steps."""
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])

    def save_shards(self, directory: Path, rank: int) -> None:
        """Per-rank state that `state_dict` cannot hold (sharded optimizers); nothing here."""

    def load_shards(self, directory: Path, rank: int) -> None:
        """Inverse of `save_shards`."""

    def close(self) -> None:
        """Release what the engine holds (process-group state of wrappers)."""


class Reporter(Protocol):
    def report(self, step: int, metrics: dict[str, float]) -> None: ...


class ImageReporter(Reporter, Protocol):
    """A reporter that also takes preview images: it calls `render()` (name -> 2D array) when it wants them."""

    def images(self, step: int, render: Callable[[], dict[str, np.ndarray]], final: bool) -> None: ...


class LogReporter:
    def report(self, step: int, metrics: dict[str, float]) -> None:
        log.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))


class Checkpointer:
    """Where checkpoints and the best model go: by default folders under the run directory.

    `save` is called on every rank (each writes its part); `restore` returns whether a checkpoint
    was loaded. A distributed adapter replaces this (e.g. with Ray Train's checkpoints).
    """

    def save(self, loop: TrainingLoop) -> None:
        replace_dir_atomically(loop.write_checkpoint, loop.latest_dir)

    def restore(self, loop: TrainingLoop) -> bool:
        recover_dir(loop.latest_dir)  # a kill between the two renames of a checkpoint swap
        if not (loop.latest_dir / TRAINING_STATE).is_file():
            return False
        loop.read_checkpoint(loop.latest_dir)
        return True

    def save_best(self, loop: TrainingLoop) -> None:
        write_model_dir(loop.best_dir, loop.model.state_dict(), loop.config, loop.metadata())

    def start(self, loop: TrainingLoop) -> None:
        """Write the run's resolved config and split next to its checkpoints."""
        loop.run_dir.mkdir(parents=True, exist_ok=True)
        (loop.run_dir / "config.yaml").write_text(dump_config(loop.config))
        (loop.run_dir / "split.json").write_text(json.dumps({"train": loop.train_ids, "val": loop.val_ids}, indent=1))

    def finish(self, loop: TrainingLoop) -> None:
        if not loop.best_dir.exists():  # no validation split: the last weights are the result
            self.save_best(loop)


class TrainingLoop:
    """Resumable loop with a validation metric (lower is better), `best` and `checkpoints/latest`.

    Subclasses set `engine`, `model`, `generators` (named torch.Generators whose states are saved),
    `train_ids`/`val_ids`, `val_metric`, and implement `train_step`, `validate`, `identity`, `metadata`.
    With a shard (rank, world_size), this worker trains on `shard_ids`, every world_size-th training
    scan from its rank on: the workers' batches come from disjoint scans.
    """

    val_metric = "val_loss"
    # Validate the untrained model before the first step, so that `best/` can stay the untrained model
    # when no trained step beats it on validation (stage II's untrained generator is its interpolated input).
    validate_untrained = False

    def __init__(self, config: Config, reporter: Reporter | None, shard: tuple[int, int] = (0, 1),
                 checkpointer: Checkpointer | None = None):
        self.config = config
        self.reporter = reporter or LogReporter()
        self.rank, self.world_size = shard
        self.checkpointer = checkpointer or Checkpointer()
        self.step = 0
        self.best_val = float("inf")
        self.best_step: int | None = None  # in this process; the model directory's metadata keeps it for good
        self.run_dir = Path(config.run.storage_path) / config.run.name
        self.generators: dict[str, torch.Generator] = {}
        self.train_ids: list[str] = []
        self.val_ids: list[str] = []
        self.shard_ids: list[str] = []
        self.val_sample_ids: list[str] = []

    def seed_for(self, offset: int) -> int:
        """A per-rank seed; rank 0 draws what an in-process run draws."""
        return self.config.train.seed + offset + 7919 * self.rank

    def open_store_and_split(self) -> list[str]:
        """Open `data.store`, make the seeded train/validation split and this rank's shard of the training
        scans with `min_slices(config)` slices or more (shorter ones give no sample); returns every scan id."""
        from slicesr.store import SliceStore

        data = self.config.data
        self.store = SliceStore.open(data.store, data.storage_options)
        plan = plan_shards(self.store, self.config, self.world_size, self.min_slices(self.config))
        self.train_ids, self.val_ids = plan.train_ids, plan.val_ids
        self.shard_ids, self.val_sample_ids = plan.shards[self.rank], plan.usable_val_ids
        return plan.all_ids

    # ------------------------------------------------------------------ to implement
    @staticmethod
    def min_slices(config: Config) -> int:
        """Slices a scan needs to give one training sample (the driver checks shards with it too)."""
        raise NotImplementedError

    def train_step(self) -> dict[str, float]:
        raise NotImplementedError

    def validate(self) -> float:
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What must not change when a run is resumed (everything but lengths and logging)."""
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        raise NotImplementedError

    def validate_and_keep_best(self) -> None:
        val = self.validate()
        self.reporter.report(self.step, {self.val_metric: val})
        if val < self.best_val and self.may_become_best():
            self.best_val, self.best_step = val, self.step
            self.save_best()

    def may_become_best(self) -> bool:
        """Whether the weights at this step may become `best/` when their validation score is the lowest
        so far. Every step by default; a stage whose early steps optimise another objective (a warm-up
        phase, a schedule) narrows it."""
        return True

    def preview_images(self) -> dict[str, np.ndarray]:
        """Named 2D images (rows of slices) showing what the model does now; none by default."""
        return {}

    def model_input(self, tensor: torch.Tensor) -> torch.Tensor:
        """A batch on the model's device and in its parameter type (bf16 when an engine converted it),
        for evaluating `self.model` directly (validation, previews)."""
        return tensor.to(device=self.engine.device, dtype=next(self.model.parameters()).dtype)

    def samples_per_step(self) -> int:
        return self.config.train.batch_size * self.world_size

    # ------------------------------------------------------------------ checkpoints
    @property
    def latest_dir(self) -> Path:
        return self.run_dir / "checkpoints" / "latest"

    @property
    def best_dir(self) -> Path:
        return self.run_dir / "best"

    def _rank_state(self) -> dict[str, Any]:
        return {"generators": {name: g.get_state() for name, g in self.generators.items()},
                "torch_rng": torch.get_rng_state()}

    def write_checkpoint(self, directory: Path) -> None:
        """This rank's part of a checkpoint, into a new or empty folder: rank 0 the model directory with
        the training state (the optimizers when they are not sharded), other ranks their generator
        states; every rank its engine's shards."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            training_state = {
                "identity": json.dumps(self.identity(), sort_keys=True), "world_size": self.world_size,
                "step": self.step, "best_val": self.best_val, "optimizers": self.engine.state_dict(),
                "optimizer_layout": self.engine.optimizer_layout,
                "lr_schedule": {key: getattr(self.config.train, key) for key in SCHEDULE_KEYS},
                **self._rank_state(),
            }
            write_model_files(directory, self.model.state_dict(), self.config, self.metadata(),
                              {TRAINING_STATE: training_state})
        else:
            torch.save(self._rank_state(), directory / f"rank{self.rank}_state.pt")
        self.engine.save_shards(directory, self.rank)

    def read_checkpoint(self, directory: Path) -> None:
        directory = Path(directory)
        # map_location: a run saved on a GPU resumes on a CPU-only machine (Adam's state follows the parameters)
        state = torch.load(directory / TRAINING_STATE, weights_only=True, map_location="cpu")
        saved = json.loads(state["identity"])
        current = json.loads(json.dumps(self.identity(), sort_keys=True))
        changed = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
        if changed:
            raise ValueError(
                f"{directory} was trained with other settings ({', '.join(changed)}); "
                "resume with the same config, pick another run.name, or pass --no-resume"
            )
        # runs saved before the schedule existed had a constant rate
        saved_schedule = replace(self.config.train, **{"lr_warmup_steps": 0, "lr_decay_steps": 0,
                                                           **state.get("lr_schedule", {})})
        changed_step = first_changed_rate(saved_schedule, self.config.train, int(state["step"]))
        if changed_step is not None:
            raise ValueError(
                f"{directory} took step {changed_step + 1} at another learning rate than this config's schedule "
                f"would (saved: max_steps {saved_schedule.max_steps}, lr_warmup_steps {saved_schedule.lr_warmup_steps}, "
                f"lr_decay_steps {saved_schedule.lr_decay_steps}); resume with the same train.lr_warmup_steps, "
                "train.lr_decay_steps and train.max_steps, pick another run.name, or pass --no-resume")
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world_size:
            raise ValueError(f"{directory} was written by {saved_world} workers, this run has {self.world_size}; "
                             "resume with the same cluster.num_workers")
        saved_layout = state.get("optimizer_layout", "torch")
        if saved_layout != self.engine.optimizer_layout:
            raise ValueError(f"{directory} holds {saved_layout} optimizer state, this run uses "
                             f"{self.engine.optimizer_layout}: resume with the same cluster.strategy, ZeRO stage and "
                             "cluster.bf16, or choose another run.name")
        weights, _, _ = read_model_dir(directory)
        self.model.load_state_dict(weights)
        self.engine.load_state_dict(state["optimizers"])
        self.engine.load_shards(directory, self.rank)
        rank_state = state if self.rank == 0 else torch.load(directory / f"rank{self.rank}_state.pt",
                                                             weights_only=True, map_location="cpu")
        for name, generator in self.generators.items():
            generator.set_state(rank_state["generators"][name])
        torch.set_rng_state(rank_state["torch_rng"])
        self.step, self.best_val = int(state["step"]), float(state["best_val"])
        log.info("resumed %s at step %d", directory, self.step)

    def try_resume(self) -> bool:
        return self.checkpointer.restore(self)

    def save_checkpoint(self) -> None:
        self.checkpointer.save(self)

    def save_best(self) -> None:
        self.checkpointer.save_best(self)

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = True) -> dict[str, Any]:
        cfg = self.config.train
        if resume:
            self.try_resume()  # refuses incompatible settings before anything is overwritten
        if self.rank == 0:
            self.checkpointer.start(self)
        images = getattr(self.reporter, "images", None)
        if self.step == 0 and self.validate_untrained:
            self.validate_and_keep_best()
        self.model.train()
        started, started_step = time.perf_counter(), self.step
        while self.step < cfg.max_steps:
            lr = learning_rate(cfg, self.step)
            self.engine.set_lr(lr)
            metrics = self.train_step()
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                elapsed = time.perf_counter() - started
                metrics["samples_per_s"] = (self.step - started_step) * self.samples_per_step() / max(elapsed, 1e-9)
                metrics["lr"] = lr
                self.reporter.report(self.step, metrics)
                started, started_step = time.perf_counter(), self.step
            if images is not None:  # the reporter decides when it wants previews; rendering only then
                images(self.step, self.preview_images, self.step == cfg.max_steps)
            if self.step % cfg.val_every == 0 or self.step == cfg.max_steps:
                self.validate_and_keep_best()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                self.save_checkpoint()
        self.checkpointer.finish(self)
        if self.validate_untrained and self.best_step == 0 and self.step > 0:
            log.warning("%s: no validation after training beat the untrained model (%s); best/ is the untrained "
                        "model", self.run_dir, self.val_metric)
        return {"step": self.step, f"best_{self.val_metric}": self.best_val, "run_dir": str(self.run_dir)}
