"""What every training loop here shares: an Engine per set of networks, reporters, and a resumable loop.

The loop (sample, step, validate, checkpoint) knows nothing of Ray, DDP or DeepSpeed: a distributed
adapter supplies another Engine (through `engine_factory`) and another Reporter.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from slicesr.config import Config, dump_config
from slicesr.modeldir import read_model_dir, recover_dir, write_model_dir

log = logging.getLogger(__name__)
TRAINING_STATE = "training_state.pt"


class Engine:
    """Owns backward, step, zero_grad and optimizer state of each named network (one Adam each)."""

    def __init__(self, model: nn.Module, networks: dict[str, nn.Module], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999)):
        self.model = model
        self.networks = networks
        self.optimizers = {name: torch.optim.Adam(net.parameters(), lr=lr, betas=betas)
                           for name, net in networks.items()}

    def parameters(self, name: str) -> list[torch.Tensor]:
        return [p for p in self.networks[name].parameters() if p.requires_grad]

    def zero_grad(self, name: str) -> None:
        self.optimizers[name].zero_grad(set_to_none=True)

    def backward(self, name: str, loss: torch.Tensor, retain_graph: bool = False) -> None:
        loss.backward(inputs=self.parameters(name), retain_graph=retain_graph)

    def step(self, name: str) -> None:
        self.optimizers[name].step()

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


class Reporter(Protocol):
    def report(self, step: int, metrics: dict[str, float]) -> None: ...


class LogReporter:
    def report(self, step: int, metrics: dict[str, float]) -> None:
        log.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))


class TrainingLoop:
    """Resumable loop with a validation metric (lower is better), `best` and `checkpoints/latest`.

    Subclasses set `engine`, `model`, `generators` (named torch.Generators whose states are saved),
    `train_ids`/`val_ids`, `val_metric`, and implement `train_step`, `validate`, `identity`, `metadata`.
    """

    val_metric = "val_loss"

    def __init__(self, config: Config, reporter: Reporter | None):
        self.config = config
        self.reporter = reporter or LogReporter()
        self.step = 0
        self.best_val = float("inf")
        self.run_dir = Path(config.run.storage_path) / config.run.name
        self.generators: dict[str, torch.Generator] = {}
        self.train_ids: list[str] = []
        self.val_ids: list[str] = []

    def open_store_and_split(self) -> list[str]:
        """Open `data.store`, refuse an empty one, and make the seeded train/validation split."""
        from slicesr.stage1.data import split_scans
        from slicesr.store import SliceStore

        data = self.config.data
        self.store = SliceStore.open(data.store, data.storage_options)
        ids = self.store.completed_ids()
        if not ids:
            raise ValueError(f"data.store {data.store} holds no stored scans")
        self.train_ids, self.val_ids = split_scans(ids, self.config.train.val_fraction, self.config.train.seed)
        return ids

    # ------------------------------------------------------------------ to implement
    def train_step(self) -> dict[str, float]:
        raise NotImplementedError

    def validate(self) -> float:
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What must not change when a run is resumed (everything but lengths and logging)."""
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpoints
    @property
    def latest_dir(self) -> Path:
        return self.run_dir / "checkpoints" / "latest"

    @property
    def best_dir(self) -> Path:
        return self.run_dir / "best"

    def save_checkpoint(self) -> None:
        training_state = {
            "identity": json.dumps(self.identity(), sort_keys=True),
            "step": self.step, "best_val": self.best_val, "optimizers": self.engine.state_dict(),
            "generators": {name: g.get_state() for name, g in self.generators.items()},
            "torch_rng": torch.get_rng_state(),
        }
        write_model_dir(self.latest_dir, self.model.state_dict(), self.config, self.metadata(),
                        {TRAINING_STATE: training_state})

    def try_resume(self) -> bool:
        recover_dir(self.latest_dir)  # a kill between the two renames of a checkpoint swap
        if not (self.latest_dir / TRAINING_STATE).is_file():
            return False
        state = torch.load(self.latest_dir / TRAINING_STATE, weights_only=True)
        saved = json.loads(state["identity"])
        current = json.loads(json.dumps(self.identity(), sort_keys=True))
        changed = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
        if changed:
            raise ValueError(
                f"{self.latest_dir} was trained with other settings ({', '.join(changed)}); "
                "resume with the same config, pick another run.name, or pass --no-resume"
            )
        weights, _, _ = read_model_dir(self.latest_dir)
        self.model.load_state_dict(weights)
        self.engine.load_state_dict(state["optimizers"])
        for name, generator in self.generators.items():
            generator.set_state(state["generators"][name])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.best_val = int(state["step"]), float(state["best_val"])
        log.info("resumed %s at step %d", self.run_dir, self.step)
        return True

    def save_best(self) -> None:
        write_model_dir(self.best_dir, self.model.state_dict(), self.config, self.metadata())

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = True) -> dict[str, Any]:
        cfg = self.config.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.try_resume()  # refuses incompatible settings before anything is overwritten
        (self.run_dir / "config.yaml").write_text(dump_config(self.config))
        (self.run_dir / "split.json").write_text(json.dumps({"train": self.train_ids, "val": self.val_ids}, indent=1))
        self.model.train()
        while self.step < cfg.max_steps:
            metrics = self.train_step()
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                self.reporter.report(self.step, metrics)
            if self.step % cfg.val_every == 0 or self.step == cfg.max_steps:
                val = self.validate()
                self.reporter.report(self.step, {self.val_metric: val})
                if val < self.best_val:
                    self.best_val = val
                    self.save_best()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                self.save_checkpoint()
        if not self.best_dir.exists():  # no validation split: the last weights are the result
            self.save_best()
        return {"step": self.step, f"best_{self.val_metric}": self.best_val, "run_dir": str(self.run_dir)}
