"""`python -m cluster.train --config CONFIG [--set key=value ...] [--resume]`: a Ray Train run of the
stage the config names (`stage: vae` or `stage: sr`), DDP or DeepSpeed, tracked and registered in MLflow.

The same command runs from a shell (a local Ray instance, or the cluster in RAY_ADDRESS /
cluster.address) and under `ray job submit --working-dir . -- python -m cluster.train ...`. Under
job submit the driver runs in a copy of the working folder: relative paths in the config resolve
there, so give data.store, run.storage_path and tracking.uri as absolute paths or URIs.

Before any worker starts it checks the config, the slice store (reachable, not empty, enough scans
for the workers), the DeepSpeed config, the MLflow tracking store and the Ray address.
Exit 0 trained (and registered), 1 the workers failed more often than cluster.max_failures allows,
2 usage or environment error (nothing started).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slicesr.cli_common import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, UsageError
from slicesr.config import Config, dump_config, load_config
from slicesr.errors import StoreError
from slicesr.modeldir import replace_dir_atomically

log = logging.getLogger(__name__)
JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in the driver of a submitted job


class TrainingFailed(RuntimeError):
    """The workers failed (more often than cluster.max_failures allows): exit 1."""


@dataclass
class TrainResult:
    run_dir: str
    best_dir: str | None
    metrics: dict[str, Any]
    run_id: str | None
    registered_model: str | None
    version: str | None


def _is_uri(path: str) -> bool:
    return "://" in path


def absolute(path: str) -> str:
    return path if _is_uri(path) else str(Path(path).resolve())


def resolve_paths(config: Config) -> Config:
    """Absolute local paths and sqlite URIs: the workers and the registry run in other folders.

    In a job submitted with `ray job submit --working-dir`, the driver runs in a temporary copy of the
    folder that Ray deletes later: relative outputs there would be lost, so they are refused."""
    from cluster.tracking import absolute_tracking_uri

    if os.environ.get(JOB_ENV):
        relative = [key for key, value in (("data.store", config.data.store), ("run.storage_path", config.run.storage_path))
                    if not _is_uri(value) and not Path(value).is_absolute()]
        if config.tracking.uri.startswith("sqlite:///") and not config.tracking.uri.startswith("sqlite:////"):
            relative.append("tracking.uri")
        if relative:
            raise UsageError(f"{', '.join(relative)}: relative paths inside a Ray job resolve in the job's temporary "
                             "copy of the working folder, which Ray deletes; give absolute paths or URIs")

    config.data.store = absolute(config.data.store)
    config.run.storage_path = absolute(config.run.storage_path)
    config.tracking.uri = absolute_tracking_uri(config.tracking.uri)
    return config


def preflight(config: Config) -> dict[str, Any] | None:
    """Everything that can be checked before a worker starts; returns the DeepSpeed config (or None)."""
    from cluster.engines import resolved_deepspeed_config
    from cluster.tracking import check_tracking
    from cluster.worker import trainer_for
    from slicesr.store import SliceStore
    from slicesr.training import plan_shards

    config.validate()
    ds_config = resolved_deepspeed_config(config.cluster) if config.cluster.strategy == "deepspeed" else None
    store = SliceStore.open(config.data.store, config.data.storage_options)
    if config.stage == "sr" and (ids := store.completed_ids()):
        from slicesr.stage2.train import check_store_matches

        check_store_matches(store, ids, config.sr.supervision, config.sr.k)  # the wrong store says so first
    # the workers' own plan: every worker gets scans it can sample from
    plan_shards(store, config, config.cluster.num_workers, trainer_for(config.stage).min_slices(config))
    check_tracking(config.tracking.uri)
    check_ray_address(config.cluster.address)
    return ds_config


def check_ray_address(address: str | None, timeout_s: float = 5.0) -> None:
    """A TCP probe of the Ray address (ray.init retries an unreachable one for minutes)."""
    import socket

    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"cluster.address {address}: expected HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ValueError(f"cluster.address {address}: no Ray cluster answers there ({exc})") from None


def connect_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                             os.environ.get("PYTHONPATH")]))}}
    try:
        ray.init(address=address, runtime_env=env, logging_level=logging.WARNING, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ValueError(f"cluster.address {address or os.environ.get('RAY_ADDRESS') or '(local)'}: cannot connect "
                         f"to Ray ({exc})") from None


def worker_error(error: BaseException | None) -> str:
    """The most telling line of a Ray Train failure: the workers' last `XxxError: message`."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error or ""))
    found = re.findall(r"^\s*(?:\w+\.)*\w*(?:Error|Exception): .+$", text, re.M)
    if found:
        return found[-1].strip()
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def check_resumable(run_dir: str, config: Config, ds_config: dict[str, Any] | None = None) -> None:
    """Refuse, before any worker starts, to resume a local run with another number of workers or another
    optimizer layout (strategy, ZeRO stage, bf16)."""
    import json

    import torch

    from cluster.engines import optimizer_layout

    snapshot = Path(run_dir) / "checkpoint_manager_snapshot.json"
    if _is_uri(run_dir) or not snapshot.is_file():
        return
    try:
        latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]["checkpoint_dir_name"]
        state = torch.load(Path(run_dir) / latest / "training_state.pt", weights_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return  # nothing readable to compare with: the workers decide
    if int(state.get("world_size", 1)) != config.cluster.num_workers:
        raise UsageError(f"{run_dir} was trained by {state.get('world_size')} workers; resume it with "
                         f"cluster.num_workers={state.get('world_size')} (or choose another run.name)")
    saved, wanted = state.get("optimizer_layout", "torch"), optimizer_layout(config.cluster.strategy, ds_config)
    if saved != wanted:
        raise UsageError(f"{run_dir} holds {saved} optimizer state and this config asks for {wanted}: resume it with "
                         "the same cluster.strategy, ZeRO stage (cluster.deepspeed_config) and cluster.bf16 (or choose "
                         "another run.name)")


def has_checkpoints(run_dir: str) -> bool:
    if _is_uri(run_dir):
        import fsspec

        fs, path = fsspec.core.url_to_fs(run_dir)
        return bool(fs.exists(path) and fs.glob(path.rstrip("/") + "/checkpoint_*"))
    return any(Path(run_dir).glob("checkpoint_*"))


def train(config: Config, resume: bool = False, register: bool | None = None) -> TrainResult:
    """Run one training on Ray Train; the model of the best validation step ends in `<run>/best`
    (local storage) and, with tracking.register, in the MLflow registry with alias `candidate`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cluster.tracking import Tracker, registered_name
    from cluster.worker import BEST, train_worker

    config = resolve_paths(config)
    ds_config = preflight(config)
    run_dir = f"{config.run.storage_path.rstrip('/')}/{config.run.name}"
    continuing = has_checkpoints(run_dir)
    if continuing and not resume:
        raise UsageError(f"{run_dir} already holds checkpoints of a run: pass --resume to continue it, or choose "
                         "another run.name")
    check_resumable(run_dir, config, ds_config)
    connect_ray(config.cluster.address)
    tracker = Tracker(config.tracking.uri, config.tracking.experiment)
    run_id = tracker.start_run(run_key=run_dir, run_name=config.run.name, continuing=continuing)
    tracker.log_config(run_id, config)

    cluster = config.cluster
    resources = {"CPU": cluster.cpus_per_worker, **({"GPU": cluster.gpus_per_worker} if cluster.use_gpu else {})}
    payload = {"config": dump_config(config), "run_id": run_id, "tracking_uri": config.tracking.uri,
               "deepspeed": ds_config, "threads": max(1, int(cluster.cpus_per_worker))}
    trainer = TorchTrainer(
        train_worker, train_loop_config=payload,
        scaling_config=ScalingConfig(num_workers=cluster.num_workers, use_gpu=cluster.use_gpu,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if cluster.use_gpu else "gloo"),
        run_config=RunConfig(name=config.run.name, storage_path=config.run.storage_path,
                             failure_config=FailureConfig(max_failures=cluster.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cluster.checkpoints_to_keep)),
    )
    ok, error = False, None
    try:
        result = trainer.fit()
        ok, error = result.error is None and result.checkpoint is not None, result.error
    except Exception as exc:  # noqa: BLE001 - Ray Train V2 raises TrainingFailedError after max_failures
        error = exc
    finally:
        tracker.end_run(run_id, ok)
    if not ok:
        raise TrainingFailed(f"training {run_dir} failed: {worker_error(error)} (worker logs: Ray dashboard or "
                             f"/tmp/ray/session_latest/logs)")

    metrics = dict(result.metrics or {})
    with tempfile.TemporaryDirectory() as tmp, result.checkpoint.as_directory() as folder:
        best = Path(folder) / BEST
        local_best = None if _is_uri(run_dir) else Path(run_dir) / BEST
        if local_best is not None:
            replace_dir_atomically(lambda target: shutil.copytree(best, target, dirs_exist_ok=True), local_best)
            (Path(run_dir) / "config.yaml").write_text(dump_config(config))
        model_dir = local_best or Path(shutil.copytree(best, Path(tmp) / BEST))
        version = name = None
        if config.tracking.register if register is None else register:
            name = registered_name(config)
            version = tracker.register(run_id, model_dir, name)
            log.info("registered %s version %s (alias candidate)", name, version)
    return TrainResult(run_dir=run_dir, best_dir=str(local_best) if local_best else None, metrics=metrics,
                       run_id=run_id, registered_model=name, version=version)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cluster.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config (configs/...)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--resume", action="store_true", help="continue the run's latest checkpoint")
    parser.add_argument("--no-register", action="store_true", help="do not register the model in MLflow")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, args.set)
        result = train(config, resume=args.resume, register=False if args.no_register else None)
    except (UsageError, ValueError, StoreError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SOME_FAILED
    best = result.best_dir or f"{result.run_dir} (checkpoint best/)"
    print(f"trained {config.stage} to step {result.metrics.get('step')}: best model {best}"
          + (f"; registered {result.registered_model} version {result.version} (alias candidate)" if result.version else ""))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
