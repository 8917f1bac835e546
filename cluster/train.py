"""`python -m cluster.train --config CONFIG [--set key=value ...] [--resume]`: a Ray Train run of the
stage the config names (`stage: vae` or `stage: sr`), DDP or DeepSpeed, tracked and registered in MLflow.

The same command runs from a shell (the cluster in cluster.address or RAY_ADDRESS, `auto` for the one
running on this machine; with neither set, an own local Ray instance) and under
`ray job submit --working-dir . -- python -m cluster.train ...`. Under
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

from slicesr.cli_common import EXIT_OK, CommandFailed, UsageError, run_command
from slicesr.config import Config, dump_config, load_config
from slicesr.modeldir import replace_dir_atomically

log = logging.getLogger(__name__)
JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in the driver of a submitted job


class TrainingFailed(CommandFailed):
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
        relative = [key for key, value in (("data.store", config.data.store), ("data.lr_store", config.data.lr_store),
                                           ("run.storage_path", config.run.storage_path))
                    if value and not _is_uri(value) and not Path(value).is_absolute()]
        if config.tracking.uri.startswith("sqlite:///") and not config.tracking.uri.startswith("sqlite:////"):
            relative.append("tracking.uri")
        if relative:
            raise UsageError(f"{', '.join(relative)}: relative paths inside a Ray job resolve in the job's temporary "
                             "copy of the working folder, which Ray deletes; give absolute paths or URIs")

    config.data.store = absolute(config.data.store)
    if config.data.lr_store:  # sr.supervision both: the in-plane pairs' LR store, opened by every worker
        config.data.lr_store = absolute(config.data.lr_store)
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


def ray_address(address: str | None) -> str:
    """The Ray address a run uses: cluster.address, else RAY_ADDRESS, else `local` (an own Ray instance).

    Never Ray's own default (`ray.init()` with no address), which joins the cluster the last `ray start`
    on this machine recorded in /tmp/ray/ray_current_cluster, and retries it for minutes when that one
    died without `ray stop`. `auto` joins a running cluster on purpose."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def _probe(address: str, hostport: str, timeout_s: float, what: str = "no Ray cluster answers there",
           hint: str = "") -> None:
    import socket

    host, _, port = hostport.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"cluster.address {address}: expected HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ValueError(f"cluster.address {address}: {what} ({exc}){hint}") from None


def _auto_address() -> tuple[str | None, str]:
    """What `ray.init(address="auto")` joins, and where that comes from: the address the last `ray start`
    on this machine recorded (Ray's ray_current_cluster file), else a Ray GCS process running here."""
    try:  # Ray's own helpers; they are private, hence the fallback to the same file
        from ray._common.utils import get_ray_address_file
        from ray._private.services import find_gcs_addresses
    except ImportError:
        get_ray_address_file, find_gcs_addresses = None, tuple
    recorded = get_ray_address_file(None) if get_ray_address_file else os.path.join(
        os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp", "ray", "ray_current_cluster")
    try:
        found = Path(recorded).read_text().strip()
    except OSError:
        found = ""
    if found:
        return found, f"recorded in {recorded}"
    running = sorted(find_gcs_addresses())
    return (running[0] if running else None), "a Ray process on this machine"


def check_ray_address(address: str | None, timeout_s: float = 5.0) -> None:
    """A TCP probe of the Ray address (ray.init retries an unreachable one for minutes); for `auto`, of the
    cluster Ray would join: none running, or a dead one still recorded, is an error in seconds."""
    address = ray_address(address)
    if address == "auto" and os.environ.get("RAY_ADDRESS", "auto") != "auto":
        address = os.environ["RAY_ADDRESS"]  # ray.init's own order: RAY_ADDRESS before the recorded cluster
    if address == "local":
        return
    if address != "auto":
        _probe(address, address, timeout_s)
        return
    own = "or leave cluster.address and RAY_ADDRESS unset to start an own local Ray"
    found, source = _auto_address()
    if found is None:
        raise ValueError(f"cluster.address auto: no Ray cluster runs on this machine (start one with `ray start "
                         f"--head`, give a cluster's HOST:PORT, {own})")
    _probe(address, found, timeout_s, f"the Ray cluster {found} {source} does not answer",
           f": it ended without `ray stop`, or is unreachable; start it again, give another address, {own}")


def connect_ray(address: str | None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), or start an own local Ray instance when neither is
    set; an address where nothing answers is refused in seconds."""
    import ray

    if ray.is_initialized():
        return
    check_ray_address(address)
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                             os.environ.get("PYTHONPATH")]))}}
    target = ray_address(address)
    try:
        ray.init(address=target, runtime_env=env, logging_level=logging.WARNING, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ValueError(f"cluster.address {address or os.environ.get('RAY_ADDRESS') or '(local)'}: cannot connect "
                         f"to Ray ({exc})") from None
    log.info("Ray: %s", {"local": "started an own local instance", "auto": "joined the cluster running on this "
                         "machine (auto)"}.get(target, f"joined the cluster at {target}"))


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


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    result = train(config, resume=args.resume, register=False if args.no_register else None)
    best = result.best_dir or f"{result.run_dir} (checkpoint best/)"
    print(f"trained {config.stage} to step {result.metrics.get('step')}: best model {best}"
          + (f"; registered {result.registered_model} version {result.version} (alias candidate)" if result.version else ""))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _run, usage_errors=(FileNotFoundError,), other_errors=False)


if __name__ == "__main__":
    sys.exit(main())
