"""Distributed Engines for the library's training loops: torch DDP and DeepSpeed (ZeRO 0/1/2).

Both run on a process group that already exists (Ray Train creates it: gloo on CPU, nccl on GPU).
Stage I has three optimizers (E, D, H), so it gets one DDP wrapper or one DeepSpeed engine per
network; the loop's losses are built so that each reaches its own network only (see
slicesr.stage1.train), which is what lets each engine run a plain backward.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slicesr.config import ClusterConfig, Config
from slicesr.training import Engine

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
SUPPORTED_ZERO_STAGES = (0, 1, 2)


def networks_of(stage: str, model: nn.Module) -> dict[str, nn.Module]:
    if stage == "vae":
        return {name: getattr(model, name) for name in ("encoder", "decoder", "critic")}
    return {"generator": model}


class DDPEngine(Engine):
    """One DistributedDataParallel wrapper (and one Adam) per network; gradients all-reduced in backward."""

    def __init__(self, model: nn.Module, networks: dict[str, nn.Module], lr: float, device: torch.device):
        from torch.nn.parallel import DistributedDataParallel

        model.to(device)
        super().__init__(model, networks, lr)
        self.device = device
        device_ids = [device.index] if device.type == "cuda" else None
        self.wrapped = {name: DistributedDataParallel(net, device_ids=device_ids) for name, net in networks.items()}

    def forward(self, name: str, *inputs: torch.Tensor) -> Any:
        return self.wrapped[name](*inputs)


class DeepSpeedEngine(Engine):
    """One DeepSpeed engine per network, each with its own copy of the DeepSpeed config.

    A torch Adam on CPU, the fused CUDA Adam on GPU. ZeRO 1/2 shard the optimizer state across ranks,
    so it is saved by every rank (`save_shards`), not in the rank-0 training state.
    """

    def __init__(self, model: nn.Module, networks: dict[str, nn.Module], lr: float, device: torch.device,
                 ds_config: dict[str, Any], batch_size: int):
        import deepspeed

        model.to(device)
        self.model, self.networks, self.device = model, networks, device
        self.optimizer_layout = optimizer_layout("deepspeed", ds_config)
        self.optimizers = {}
        self.engines = {}
        for name, net in networks.items():
            config = json.loads(json.dumps(ds_config))
            config["train_micro_batch_size_per_gpu"] = batch_size
            optimizer = torch.optim.Adam(net.parameters(), lr=lr, fused=True if device.type == "cuda" else None)
            engine, _, _, _ = deepspeed.initialize(model=net, optimizer=optimizer, config=config,
                                                   dist_init_required=False)
            self.engines[name] = engine

    def forward(self, name: str, *inputs: torch.Tensor) -> Any:
        engine = self.engines[name]
        dtype = next(engine.module.parameters()).dtype  # bf16 when enabled
        return engine(*(x.to(dtype) if x.is_floating_point() else x for x in inputs))

    def frozen(self, name: str, *inputs: torch.Tensor) -> Any:
        dtype = next(self.networks[name].parameters()).dtype
        return super().frozen(name, *(x.to(dtype) for x in inputs))

    def zero_grad(self, name: str) -> None:
        self.engines[name].zero_grad()

    def backward(self, name: str, loss: torch.Tensor, retain_graph: bool = False) -> None:
        self.engines[name].backward(loss.float(), retain_graph=retain_graph)

    def step(self, name: str) -> None:
        self.engines[name].step()

    def set_lr(self, lr: float) -> None:
        # the engine's optimizer (ZeRO's, bf16's or the torch Adam itself) exposes the groups it steps with
        for engine in self.engines.values():
            for group in engine.optimizer.param_groups:
                group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def save_shards(self, directory: Path, rank: int) -> None:
        for name, engine in self.engines.items():  # a collective: every rank calls it
            engine.save_checkpoint(str(Path(directory) / "deepspeed" / name), tag="state", save_latest=False)

    def load_shards(self, directory: Path, rank: int) -> None:
        for name, engine in self.engines.items():
            path, _ = engine.load_checkpoint(str(Path(directory) / "deepspeed" / name), tag="state",
                                             load_optimizer_states=True, load_lr_scheduler_states=False)
            if path is None:
                raise ValueError(f"{directory} holds no DeepSpeed state for {name} (written by another strategy?)")

    def close(self) -> None:
        for engine in self.engines.values():
            engine.destroy()


def optimizer_layout(strategy: str, ds_config: dict[str, Any] | None) -> str:
    """How a strategy saves optimizer state (the Engine's `optimizer_layout`): in-process and DDP share
    torch's; DeepSpeed's depends on the ZeRO stage and bf16."""
    if strategy != "deepspeed":
        return "torch"
    ds_config = ds_config or {}
    stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
    bf16 = bool(ds_config.get("bf16", {}).get("enabled", False))
    return f"deepspeed-zero{stage}" + ("-bf16" if bf16 else "")


def load_deepspeed_config(path: str) -> dict[str, Any]:
    """Read a DeepSpeed JSON config (relative paths: the working folder, then the repository) and check
    what the loops support."""
    candidates = [Path(path)] if Path(path).is_absolute() else [Path.cwd() / path, REPO_ROOT / path]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise ValueError(f"cluster.deepspeed_config: no file {path} (looked in {', '.join(map(str, candidates))})")
    try:
        config = json.loads(found.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"cluster.deepspeed_config {found}: not JSON ({exc})") from None
    stage = int(config.get("zero_optimization", {}).get("stage", 0))
    if stage not in SUPPORTED_ZERO_STAGES:
        raise ValueError(f"cluster.deepspeed_config {found}: ZeRO stage {stage} is not supported (0, 1 or 2): stage 3 "
                         "partitions the parameters themselves, and the loops evaluate whole networks with detached "
                         "parameters (stage I's frozen decoder and critic) and save whole weights from rank 0")
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu"):
        if key in config:
            raise ValueError(f"cluster.deepspeed_config {found}: remove {key}; the batch size is train.batch_size "
                             "(per worker)")
    if config.get("gradient_accumulation_steps", 1) != 1:
        raise ValueError(f"cluster.deepspeed_config {found}: gradient_accumulation_steps must be 1 (one optimizer step "
                         "per loop step, as in-process)")
    for key in ("optimizer", "scheduler", "fp16"):
        if key in config:
            raise ValueError(f"cluster.deepspeed_config {found}: remove '{key}'; the optimizer and learning rate come "
                             "from train.lr, precision from cluster.bf16")
    offload = config.get("zero_optimization", {})
    if "offload_optimizer" in offload or "offload_param" in offload:
        raise ValueError(f"cluster.deepspeed_config {found}: ZeRO offload needs DeepSpeed's own CPU Adam; "
                         "not supported with the torch optimizers used here")
    return config


def resolved_deepspeed_config(cluster: ClusterConfig) -> dict[str, Any]:
    config = load_deepspeed_config(cluster.deepspeed_config)
    # DeepSpeed 0.19 clips gradients at norm 1.0 unless told otherwise; the in-process loops do not clip
    config.setdefault("gradient_clipping", 0.0)
    config["bf16"] = {"enabled": bool(cluster.bf16)}
    return config


def engine_factory(config: Config, device: torch.device, ds_config: dict[str, Any] | None
                   ) -> Callable[[nn.Module, float], Engine]:
    """The `engine_factory` a Stage1Trainer/Stage2Trainer takes, for cluster.strategy."""

    def build(model: nn.Module, lr: float) -> Engine:
        networks = networks_of(config.stage, model)
        if config.cluster.strategy == "deepspeed":
            return DeepSpeedEngine(model, networks, lr, device, ds_config or {}, config.train.batch_size)
        return DDPEngine(model, networks, lr, device)

    return build
