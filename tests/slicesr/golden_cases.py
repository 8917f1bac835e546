"""Seeded outputs that refactoring must keep bit for bit: sampler batches, synthesis, interpolation, windows.

`tests/slicesr/golden.npz` holds what these cases returned before the samplers, the interpolation
and the windowing were shared between the stages (written at commit 6cea76e by
`python -m tests.slicesr.golden_cases --write`). Regenerate it only for a deliberate change of
behaviour, and say so in the commit.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).with_name("golden.npz")
# Outputs decoded by a network (the untrained VAE's synthesis, and the target patches drawn from the store it
# wrote): the CPU's convolution kernels (oneDNN on AVX2, AVX-512 or AMX) differ in the last bits of float32,
# so these are held to float32 rounding (DECODED_TOLERANCE of their values, seen here up to 8e-6 on values up
# to 1.8 between an AVX2 and an AVX-512 CPU); every other output bit for bit. Any change of what is sampled or
# synthesised moves them by far more.
DECODED_BY_A_NETWORK = frozenset({"synthesis_k3", "synthesis_k4_kept", "patches_aligned_target"})
DECODED_TOLERANCE = 1e-5


def _stores(folder: Path) -> tuple[str, str]:
    """(an LR store of 3 phantoms, a synthetic HR store made from it by an untrained VAE with K = 4)."""
    from preprocessing.to_zarr import convert
    from slicesr.stage1.synthesis import synthesize_store
    from slicesr.store import SliceStore
    from tests.conftest import write_synth

    write_synth(folder / "lr", 3, shape=(26, 22, 7), seed=11)
    convert([str(folder / "lr")], str(folder / "lr.zarr"), workers=0, progress=False)
    out = SliceStore.create(str(folder / "hr.zarr"))
    synthesize_store(_vae(), SliceStore.open(str(folder / "lr.zarr")), out, 4, keep_acquired=True, progress=False)
    return str(folder / "lr.zarr"), str(folder / "hr.zarr")


def _vae():
    from slicesr.models.vae_gan import VaeGan, VaeGanSize

    torch.manual_seed(0)
    return VaeGan(VaeGanSize(image_size=16, channels=4, max_channels=8, num_blocks=2, latent_dim=8, disc_channels=4))


def _volume(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def sampler_cases(folder: Path) -> dict[str, np.ndarray]:
    from slicesr.stage1.data import TripletSampler
    from slicesr.stage2.data import PatchSampler
    from slicesr.store import SliceStore

    lr_url, hr_url = _stores(folder)
    lr, hr = SliceStore.open(lr_url), SliceStore.open(hr_url)
    out = {}
    triplets = TripletSampler(lr, lr.completed_ids(), 16)
    generator = torch.Generator().manual_seed(5)
    out["triplets_a"] = triplets.sample(4, generator).numpy()
    out["triplets_b"] = triplets.sample(3, generator).numpy()  # the generator's state carries on
    big = TripletSampler(lr, lr.completed_ids(), 32)  # larger than the slices: zero-padded
    out["triplets_padded"] = big.sample(2, torch.Generator().manual_seed(6)).numpy()
    aligned = PatchSampler(hr, hr.completed_ids(), (5, 12, 12), 4, aligned=True, min_foreground=0.3)
    inputs, target = aligned.sample(3, torch.Generator().manual_seed(7))
    out["patches_aligned_input"], out["patches_aligned_target"] = inputs.numpy(), target.numpy()
    free = PatchSampler(lr, lr.completed_ids(), (4, 30, 9), 2, aligned=False)
    inputs, target = free.sample(2, torch.Generator().manual_seed(8))
    out["patches_free_input"], out["patches_free_target"] = inputs.numpy(), target.numpy()
    return out


def synthesis_cases() -> dict[str, np.ndarray]:
    from slicesr.stage1.synthesis import synthesize_slices

    model = _vae()
    slices = _volume((4, 20, 29), 1)
    return {
        "synthesis_k3": synthesize_slices(model, slices, 3, batch_size=7, overlap=0.25),
        "synthesis_k4_kept": synthesize_slices(model, slices[:3, :12, :10], 4, batch_size=32, overlap=0.5,
                                               keep_acquired=True),
    }


def interpolation_cases() -> dict[str, np.ndarray]:
    from slicesr.interpolation import cubic_slices, linear_slices, upsample_linear

    slices = _volume((5, 6, 7), 2)
    out = {f"linear_k{k}": linear_slices(slices, k) for k in (2, 3, 4, 5, 7)}
    out["cubic_k3"] = cubic_slices(slices, 3)
    batch = torch.from_numpy(_volume((2, 1, 4, 5, 6), 3))
    out["upsample_linear_k3"] = upsample_linear(batch, 3).numpy()
    return out


def window_cases() -> dict[str, np.ndarray]:
    from slicesr.windows import sliding_window_apply

    volume = _volume((13, 21, 17), 4)

    def fn(window: np.ndarray) -> np.ndarray:
        return window * 2.0 + np.roll(window, 1, axis=1)

    return {
        "sliding_windows": sliding_window_apply(fn, volume, (5, 8, 16), 0.25),
        "sliding_windows_small": sliding_window_apply(fn, volume[:4, :6], (5, 8, 16), 0.5),
    }


CASES: dict[str, Callable[[Path], dict[str, np.ndarray]]] = {
    "samplers": sampler_cases,
    "synthesis": lambda _: synthesis_cases(),
    "interpolation": lambda _: interpolation_cases(),
    "windows": lambda _: window_cases(),
}


def run_case(name: str, folder: Path) -> dict[str, np.ndarray]:
    """One case on one torch thread: threaded convolutions round differently from one run to another."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return CASES[name](folder)
    finally:
        torch.set_num_threads(threads)


def compute_all() -> dict[str, np.ndarray]:
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in CASES:
            out.update(run_case(name, Path(folder) / name))
    return out


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.slicesr.golden_cases --write")
    np.savez_compressed(GOLDEN, **compute_all())
    print(f"wrote {GOLDEN}")
