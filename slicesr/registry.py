"""`models:/NAME@ALIAS` (or `models:/NAME/VERSION`) -> a local model directory, through MLflow.

MLflow is imported only when such a URI is used: the library runs without it.
"""

from __future__ import annotations

import os
from pathlib import Path

from slicesr.modeldir import METADATA

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def is_model_uri(spec: str) -> bool:
    return spec.startswith("models:/")


def tracking_uri_from_env(default: str = DEFAULT_TRACKING_URI) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", default)


def resolve_model_uri(uri: str, tracking_uri: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download the registered model's files and return its slicesr model directory (weights, config,
    metadata); ValueError naming the URI when it does not resolve."""
    try:
        import mlflow
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise ValueError(f"{uri}: MLflow model URIs need mlflow (pip install 'slicesr[tracking]')") from None
    mlflow.set_tracking_uri(tracking_uri or tracking_uri_from_env())
    mlflow.set_registry_uri(tracking_uri or tracking_uri_from_env())
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(cache_dir) if cache_dir else None))
    except MlflowException as exc:
        raise ValueError(f"{uri}: not found in the MLflow registry at {mlflow.get_tracking_uri()} ({exc.message})") from None
    found = sorted(path.parent for path in local.rglob(METADATA))
    if not found:
        raise ValueError(f"{uri}: the registered model holds no slicesr model directory")
    return found[0]
