"""The model directory: weights (safetensors), the resolved config (YAML) and metadata (JSON).

Loading rebuilds modules from this package's own classes and loads plain tensors; nothing is unpickled.
The MLflow registry stores this directory as it is.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from slicesr.config import Config, config_from_dict, dump_config

MODEL_FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
METADATA = "metadata.json"


def replace_dir_atomically(build, target: str | os.PathLike) -> None:
    """Fill a temporary sibling folder with `build(path)`, then swap it in: never a half-written folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        build(temporary)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(temporary, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def recover_dir(target: str | os.PathLike) -> None:
    """Finish a swap interrupted between its two renames: bring the previous folder back."""
    target = Path(target)
    if target.exists():
        return
    previous = sorted(target.parent.glob(f".{target.name}.old-*")) if target.parent.exists() else []
    if previous:
        os.replace(previous[-1], target)


def model_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 of the weights: identifies a model whatever path it is reached by."""
    import hashlib

    digest = hashlib.sha256()
    with open(Path(path) / WEIGHTS, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_model_files(folder: str | os.PathLike, state: dict[str, torch.Tensor], config: Config,
                      metadata: dict[str, Any], extra_files: dict[str, Any] | None = None) -> None:
    """Write a model directory's files into an existing folder (see write_model_dir for the atomic form)."""
    folder = Path(folder)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(dump_config(config))
    (folder / METADATA).write_text(json.dumps({**metadata, "format_version": MODEL_FORMAT_VERSION}, indent=1))
    for name, value in (extra_files or {}).items():
        torch.save(value, folder / name)


def write_model_dir(path: str | os.PathLike, state: dict[str, torch.Tensor], config: Config,
                    metadata: dict[str, Any], extra_files: dict[str, Any] | None = None) -> None:
    replace_dir_atomically(lambda folder: write_model_files(folder, state, config, metadata, extra_files), path)


def read_model_dir(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], Config, dict[str, Any]]:
    folder = Path(path)
    for name in (WEIGHTS, CONFIG, METADATA):
        if not (folder / name).is_file():
            raise ValueError(f"{folder} is not a slicesr model directory (missing {name})")
    metadata = json.loads((folder / METADATA).read_text())
    if int(metadata.get("format_version", 0)) > MODEL_FORMAT_VERSION:
        raise ValueError(f"{folder}: model format_version {metadata.get('format_version')} is newer than this slicesr")
    config = config_from_dict(yaml.safe_load((folder / CONFIG).read_text()), str(folder / CONFIG))
    return load_file(str(folder / WEIGHTS)), config, metadata


def load_model_dir(path: str | os.PathLike, stage: str, build) -> tuple[torch.nn.Module, Config, dict[str, Any]]:
    """Rebuild a trained module from a model directory of `stage` ("vae", "sr"): `build(config)` makes
    the empty module from this package's classes, the saved weights are loaded into it (eval mode)."""
    weights, config, metadata = read_model_dir(path)
    if metadata.get("stage") != stage:
        names = {"vae": "stage I (vae)", "sr": "stage II (sr)"}
        raise ValueError(f"{path} holds a stage {metadata.get('stage')!r} model, not a {names.get(stage, stage)} model")
    model = build(config)
    model.load_state_dict(weights)
    model.eval()
    return model, config, metadata
