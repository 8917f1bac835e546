"""HR synthesis by latent interpolation (paper section 2.2.2) and the latent-space analysis of Fig. 9."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from slicesr.geometry import scale_axis, voxel_spacing
from slicesr.interpolation import lerp, upsample_linear
from slicesr.models.vae_gan import VaeGan
from slicesr.store import SliceStore
from slicesr.windows import Blender, covering_corners, extract_windows, pad_to

log = logging.getLogger(__name__)


def _batched(model_fn, inputs: torch.Tensor, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
    """`model_fn` over batches, each moved to `device` (the model's) and its result back to the CPU."""
    return torch.cat([model_fn(inputs[i : i + batch_size].to(device)).cpu() if device is not None
                      else model_fn(inputs[i : i + batch_size]) for i in range(0, inputs.shape[0], batch_size)])


def _tile(model: VaeGan) -> tuple[int, int]:
    return (model.size.image_size, model.size.image_size)


@torch.no_grad()
def encode_slices(model: VaeGan, slices: np.ndarray, overlap: float, batch_size: int):
    """mu of every tile of every slice: (num_slices, num_tiles, Z), and the tiles' (top, left) corners
    (fixed-size tiles covering each slice, zero-padded where a slice is smaller than a tile)."""
    tile = _tile(model)
    corners = covering_corners(slices.shape[1:], tile, overlap)
    stacked = torch.from_numpy(np.stack([extract_windows(pad_to(s, tile), tile, corners) for s in slices])).float()
    n, t = stacked.shape[:2]
    mu = _batched(lambda x: model.encoder(x)[0], stacked.reshape(n * t, 1, *tile), batch_size,
                  next(model.parameters()).device)
    return mu.reshape(n, t, -1), corners


@torch.no_grad()
def synthesize_slices(model: VaeGan, slices: np.ndarray, k: int, batch_size: int = 32, overlap: float = 0.25,
                      keep_acquired: bool = False, positions: np.ndarray | None = None) -> np.ndarray:
    """(K*(n-1)+1, rows, cols): z_{n+xi} = (1-xi) mu_n + xi mu_{n+1}, xi = 0, 1/K, ..., (K-1)/K, and the last.
    With `positions` (input-slice coordinates, any reals in [0, n-1]) the codes are interpolated there
    instead, one output slice per position (K is then unused)."""
    model.eval()
    n, rows, cols = slices.shape
    mu, corners = encode_slices(model, slices, overlap, batch_size)
    if positions is None:
        codes = upsample_linear(mu, k, dim=0)  # (K*(n-1)+1, T, Z)
    else:
        lower = np.clip(np.floor(positions).astype(np.int64), 0, n - 2)
        xi = torch.from_numpy((np.asarray(positions) - lower).astype(np.float32)).view(-1, 1, 1)
        codes = lerp(mu[torch.from_numpy(lower)], mu[torch.from_numpy(lower + 1)], xi)
    tile = _tile(model)
    decoded = _batched(model.decoder, codes.reshape(-1, mu.shape[-1]), batch_size, next(model.parameters()).device)
    decoded = decoded.reshape(codes.shape[0], codes.shape[1], *tile).numpy()
    padded_shape = (max(rows, tile[0]), max(cols, tile[1]))
    out = np.empty((codes.shape[0], rows, cols), dtype=np.float32)
    for index, tiles in enumerate(decoded):
        blender = Blender(padded_shape, tile, overlap)
        for corner, values in zip(corners, tiles):
            blender.add(corner, values)
        out[index] = blender.result()[:rows, :cols]
    if keep_acquired and positions is None:
        out[::k] = slices
    return out


def synthesized_affine(affine: np.ndarray, k: int) -> np.ndarray:
    """Slice spacing divided by K; synthesised slice i*K lies exactly where acquired slice i lies."""
    return scale_axis(affine, 0, 1.0 / k)


@dataclass
class SynthesisReport:
    written: list[str]
    skipped: list[str]
    failures: list[dict] = field(default_factory=list)


def synthesize_store(model: VaeGan, source: SliceStore, output: SliceStore, k: int, *, batch_size: int = 32,
                     overlap: float = 0.25, keep_acquired: bool = False, overwrite: bool = False,
                     model_id: str = "", progress: bool = True) -> SynthesisReport:
    """A synthetic HR scan per stored LR scan, in a store of the same layout; resumable per scan."""
    report = SynthesisReport([], [])
    existing = output.records()
    records = source.records()
    for scan_id in tqdm(sorted(records), desc="synthesize", unit="scan", disable=not progress, file=sys.stderr):
        record = records[scan_id]
        done = existing.get(scan_id)
        settings = {"k": k, "keep_acquired": keep_acquired, "model": model_id, "source_marker": record.values}
        if done is not None and not overwrite and done.values.get("synthesis") == settings:
            report.skipped.append(scan_id)
            continue
        try:
            slices = np.asarray(source.slices(scan_id)[...])
            if slices.shape[0] < 2:
                raise ValueError("a single slice: nothing to interpolate")
            hr = synthesize_slices(model, slices, k, batch_size, overlap, keep_acquired)
            affine = synthesized_affine(record.affine, k)
            values = {key: record.values[key] for key in ("source", "source_affine", "source_shape", "source_dtype",
                                                           "slice_axis", "intensity", "orientation", "sidecar",
                                                           "slice_thickness_mm", "spacing_between_slices_mm")
                      if key in record.values}
            values.update({"affine": affine.tolist(), "spacing_mm": [float(s) for s in voxel_spacing(affine)],
                           "lr_store": source.url, "lr_scan_id": scan_id, "synthesis": settings})
            output.write_scan(scan_id, hr, values)
            report.written.append(scan_id)
        except Exception as exc:  # one unreadable scan must not stop the others
            log.debug("synthesis of %s failed", scan_id, exc_info=True)
            report.failures.append({"scan_id": scan_id, "source": record.values.get("source"),
                                    "error": f"{type(exc).__name__}: {exc}"})
    output.write_failures(report.failures)
    output.rebuild_manifest()
    return report


@torch.no_grad()
def latent_distance_samples(model: VaeGan, slices: np.ndarray, k: int = 4, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Fig. 9 distances on an HR volume (slices first), one value per sample, using the centre tile of each slice.

    For every span between two slices K apart (the 'acquired' ones), with mu the encoded means:
    d1 = ||z_interp(xi) - mu_true(xi)|| for xi other than 1/2 (1/4 and 3/4 when K = 4), d2 = the same at
    xi = 1/2, d3 = ||mu_j - mu_{j+1}|| for the adjacent true slices of the span (the paper's compactness of
    neighbouring ground-truth codes).
    """
    model.eval()
    size = model.size.image_size
    n, rows, cols = slices.shape
    crop = np.zeros((n, size, size), dtype=np.float32)
    top, left = max(0, (rows - size) // 2), max(0, (cols - size) // 2)
    part = slices[:, top : top + size, left : left + size]
    crop[:, : part.shape[1], : part.shape[2]] = part
    mu = _batched(lambda x: model.encoder(x)[0], torch.from_numpy(crop)[:, None], batch_size)
    d1, d2, d3 = [], [], []
    for start in range(0, n - k, k):
        a, b = mu[start], mu[start + k]
        for j in range(k):
            d3.append(float(torch.linalg.vector_norm(mu[start + j + 1] - mu[start + j])))
        for j in range(1, k):
            distance = float(torch.linalg.vector_norm(lerp(a, b, j / k) - mu[start + j]))
            (d2 if 2 * j == k else d1).append(distance)
    return {"d1": np.asarray(d1), "d2": np.asarray(d2), "d3": np.asarray(d3)}


def latent_distances(model: VaeGan, slices: np.ndarray, k: int = 4, batch_size: int = 32) -> dict[str, float]:
    """The means of `latent_distance_samples` (NaN where a distance has no sample, e.g. d2 for an odd K)."""
    samples = latent_distance_samples(model, slices, k, batch_size)
    return {key: float(values.mean()) if values.size else float("nan") for key, values in samples.items()}
