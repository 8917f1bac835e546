"""MLflow for the drivers and rank 0: runs, params, metrics, preview images, models, the registry.

Registered models: slicesr-vae (stage I), slicesr-sr (stage II on synthetic HR, the proposed method),
slicesr-sr-supervised (the "DeepResolve only" upper bound, trained on real HR; never a champion of
slicesr-sr). A training run's model becomes a version with alias `candidate`; the pipeline moves
`champion` to it when it beats the current champion (higher mean PSNR on the missing slices of the
pipeline's validation volumes, `evaluation.hr`: held-out HR volumes never used for training), on the
same evaluation (EVAL_TAG): a champion scored on other volumes or another K is scored again first.
Versions are tagged with the weights' SHA-256, so registering the same model twice returns the
existing version instead of a duplicate.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from slicesr.config import Config, config_to_dict, dump_config
from slicesr.modeldir import model_fingerprint

log = logging.getLogger(__name__)
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
LIBRARY = Path(__file__).resolve().parents[1] / "slicesr"
RUN_KEY_TAG = "slicesr.run_key"
FINGERPRINT_TAG = "slicesr.weights_sha256"
SCORE_TAG = "slicesr.val_psnr"
EVAL_TAG = "slicesr.eval_key"  # which held-out volumes and K the score is on
CANDIDATE, CHAMPION = "candidate", "champion"


def registered_name(config: Config) -> str:
    if config.tracking.registered_model:
        return config.tracking.registered_model
    if config.stage == "vae":
        return "slicesr-vae"
    return "slicesr-sr-supervised" if config.sr.supervision == "real" else "slicesr-sr"


def absolute_tracking_uri(uri: str, base: Path | None = None) -> str:
    """sqlite:///relative.db -> sqlite:////abs/relative.db (workers and `ray job submit` run elsewhere)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(((base or Path.cwd()) / uri[len(prefix):]).resolve())
    return uri


def check_tracking(uri: str, timeout_s: float = 10.0) -> None:
    """Fail early, with the URI in the message, when the tracking store cannot be reached."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
                if response.status != 200:
                    raise ValueError(f"tracking.uri {uri}: /health answered {response.status}")
        except (urllib.error.URLError, OSError) as exc:
            raise ValueError(f"tracking.uri {uri}: MLflow server not reachable ({exc})") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise ValueError(f"tracking.uri {uri}: folder {folder} does not exist")
    elif uri.startswith("file:") or "://" not in uri:
        folder = Path(uri.removeprefix("file://").removeprefix("file:"))
        if not folder.parent.is_dir():
            raise ValueError(f"tracking.uri {uri}: folder {folder.parent} does not exist")


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def png_bytes(image: np.ndarray) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    plt.imsave(buffer, np.clip(np.asarray(image, dtype=np.float32), 0, 1), cmap="gray", vmin=0, vmax=1, format="png")
    return buffer.getvalue()


class Tracker:
    """One MLflow tracking + registry location (the driver's and rank 0's view of it)."""

    def __init__(self, uri: str, experiment: str):
        import mlflow
        from mlflow import MlflowClient

        self.uri = uri
        self.mlflow = mlflow
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)

    # ------------------------------------------------------------------ runs
    def find_run(self, run_key: str) -> str | None:
        """The id of the MLflow run logged under `run_key` (a training run's folder), if any."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else None

    def start_run(self, run_key: str, run_name: str, continuing: bool = True) -> str:
        """The run logged under `run_key` when the training continues from its checkpoints (a resumed
        training continues its MLflow run), else a new one."""
        existing = self.find_run(run_key)
        if existing and continuing:
            self.client.update_run(existing, status="RUNNING")
            return existing
        if existing and self.client.get_run(existing).info.status == "RUNNING":
            self.client.set_terminated(existing, status="KILLED")  # an earlier attempt that left no checkpoint
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={RUN_KEY_TAG: run_key})
        return run.info.run_id

    def end_run(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")

    def log_config(self, run_id: str, config: Config) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        flat = flatten(config_to_dict(config))
        params = [Param(k, v) for k, v in flat.items() if k not in existing]
        for start in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[start:start + 100])
        for key, value in flat.items():  # MLflow params are immutable: a resumed run's changes become tags
            if key in existing and existing[key] != value:
                self.client.set_tag(run_id, f"resumed_with.{key}", value)
        self.client.log_text(run_id, dump_config(config), "config.yaml")

    def log_metrics(self, run_id: str, step: int, metrics: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if np.isfinite(v)]
        if items:
            self.client.log_batch(run_id, metrics=items)

    def log_image(self, run_id: str, name: str, image: np.ndarray) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.png"
            path.write_bytes(png_bytes(image))
            self.client.log_artifact(run_id, str(path), "previews")

    def log_artifacts(self, run_id: str, folder: str | os.PathLike, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    # ------------------------------------------------------------------ models
    def find_version(self, name: str, fingerprint: str):
        for version in self.client.search_model_versions(f"name = '{name}'"):
            if version.tags.get(FINGERPRINT_TAG) == fingerprint:
                return version
        return None

    def register(self, run_id: str, model_dir: str | os.PathLike, name: str) -> str:
        """Log the model directory as an MLflow model of the run, register it under `name`, alias
        `candidate`; returns the version (the existing one when these weights are registered already)."""
        fingerprint = model_fingerprint(model_dir)
        existing = self.find_version(name, fingerprint)
        if existing is not None:
            version = existing.version
        else:
            version = self._log_model(run_id, Path(model_dir), name, fingerprint)
        self.client.set_registered_model_alias(name, CANDIDATE, version)
        return str(version)

    def _log_model(self, run_id: str, model_dir: Path, name: str, fingerprint: str) -> str:
        import json

        self.mlflow.set_tracking_uri(self.uri)
        self.mlflow.set_registry_uri(self.uri)
        metadata = json.loads((model_dir / "metadata.json").read_text())
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        example = np.random.default_rng(0).random((3, 24, 24), dtype=np.float32)
        any_size = Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))])  # volumes of any size
        with self.mlflow.start_run(run_id=run_id):
            info = self.mlflow.pyfunc.log_model(
                name="model", python_model=str(MODEL_CODE), artifacts={"model_dir": str(model_dir)},
                input_example=example, signature=ModelSignature(inputs=any_size, outputs=any_size),
                code_paths=[str(LIBRARY)],  # the library's sources travel with the model (not on PyPI)
                pip_requirements=["torch>=2.2,<2.14", "numpy", "safetensors", "nibabel", "pyyaml", "tqdm",
                                  "zarr>=3,<4", "numcodecs", "fsspec"],
                metadata={"slicesr_stage": metadata.get("stage"), "k": metadata.get("k")},
            )
        # the fingerprint tag is created with the version: a kill in between cannot leave an untagged duplicate
        version = self.mlflow.register_model(info.model_uri, name, tags={FINGERPRINT_TAG: fingerprint})
        return str(version.version)

    def alias_version(self, name: str, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except Exception:  # noqa: BLE001 - no such alias (or model) yet
            return None

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(name, version).tags)

    def promote(self, name: str, version: str, score: float, eval_key: str,
                champion_score: float | None = None) -> bool:
        """Record the version's score on the evaluation `eval_key`; move `champion` to it when it beats the
        current champion's score on the same evaluation: the champion's recorded one, or `champion_score`
        when the champion was scored on another evaluation and has just been scored again on this one."""
        self.client.set_model_version_tag(name, version, SCORE_TAG, repr(float(score)))
        self.client.set_model_version_tag(name, version, EVAL_TAG, eval_key)
        current = self.alias_version(name, CHAMPION)
        if current == str(version):
            return True
        if current is not None:
            if champion_score is not None:
                self.client.set_model_version_tag(name, current, SCORE_TAG, repr(float(champion_score)))
                self.client.set_model_version_tag(name, current, EVAL_TAG, eval_key)
                best = float(champion_score)
            elif (tags := self.version_tags(name, current)).get(EVAL_TAG) == eval_key:
                best = float(tags.get(SCORE_TAG, "-inf"))
            else:
                log.warning("%s: the champion (version %s) was scored on another evaluation and could not be scored "
                            "on this one; it stays the champion", name, current)
                return False
            if not score > best:
                return False
        self.client.set_registered_model_alias(name, CHAMPION, version)
        return True
