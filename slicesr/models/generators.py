"""Stage II 3D super-resolution generators (paper section 2.3); pure modules, no I/O.

All take the LR volume already resampled to the HR grid along the slice axis (linear) as
(B, 1, slices, rows, cols) and return a tensor of the same shape. Convolutions pad by replicating the
border: a window cut from a larger volume then sees a continuation of the anatomy instead of a black
frame, so overlapping windows blend without seams and a constant volume stays constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class GeneratorSize:
    name: str = "deepresolve"  # deepresolve | dcsrn | throughplane2d
    num_layers: int = 20
    num_filters: int = 64
    dense_units: int = 4
    growth_rate: int = 24
    subpixel_k: int = 0  # throughplane2d: > 0 runs on the acquired lines (every K-th) and outputs K - 1 lines each


def conv3(in_channels: int, out_channels: int) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, 3, padding=1, padding_mode="replicate")


def conv2(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, padding_mode="replicate")


def residual_stack(conv, num_layers: int, num_filters: int, out_channels: int = 1) -> nn.Sequential:
    """`num_layers` convs (`conv(in, out)`) with ReLU between them, He-initialised, the last one zero."""
    layers: list[nn.Module] = [conv(1, num_filters), nn.ReLU(inplace=True)]
    for _ in range(num_layers - 2):
        layers += [conv(num_filters, num_filters), nn.ReLU(inplace=True)]
    layers.append(conv(num_filters, out_channels))
    # He initialisation keeps the signal's scale through the ReLU stack (PyTorch's default init
    # shrinks it about 6-fold per layer, which starves a deep plain stack of gradient).
    for layer in layers[:-1]:
        if isinstance(layer, nn.modules.conv._ConvNd):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    # A zero last layer makes the untrained network exactly its interpolated input: training
    # starts at the linear baseline instead of adding noise to it.
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


class DeepResolve(nn.Module):
    """Chaudhari et al. 2018: `num_layers` 3x3x3 convs with ReLU between them and a global residual."""

    def __init__(self, num_layers: int = 20, num_filters: int = 64):
        super().__init__()
        self.body = residual_stack(conv3, num_layers, num_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)  # the network learns the residual to the interpolated input


class ThroughPlane2D(nn.Module):
    """A residual 2D CNN (`num_layers` 3x3 convs, ReLU) on the planes that contain the slice axis.

    Every (slices, rows) plane and every (slices, cols) plane of the input goes through the same network;
    the two orientations' residuals are averaged. Missing slices are a 1D gap along the slice axis, so a
    2D network that sees that axis and one in-plane axis does the 3D network's work at a fraction of its
    cost, and each 3D patch gives it rows + cols training planes.

    With `subpixel_k` = K the network runs on the acquired lines only (0, K, 2K, ... of the slice axis: the
    LR grid) and its last conv gives K - 1 channels, the residuals of the K - 1 lines after each acquired
    one (a sub-pixel convolution along the slice axis); the acquired lines get no residual. A plane's
    length must then be K * m + 1 lines.
    """

    def __init__(self, num_layers: int = 8, num_filters: int = 48, subpixel_k: int = 0):
        super().__init__()
        if subpixel_k == 1 or subpixel_k < 0:
            raise ValueError(f"subpixel_k must be 0 (off) or a ratio >= 2, got {subpixel_k}")
        self.subpixel_k = int(subpixel_k)
        out_channels = self.subpixel_k - 1 if self.subpixel_k else 1
        # channels-last weights: oneDNN's fast layout for 2D convolutions on a CPU (benchmarks/NOTES.md,
        # "Third quality run"); the values and the state dict are the same
        self.body = residual_stack(conv2, num_layers, num_filters, out_channels).to(memory_format=torch.channels_last)

    orientations = (0, 1)  # (slices, rows) planes, (slices, cols) planes
    axis_across_planes = {0: 2, 1: 1}  # of (slices, rows, cols): the axis that each orientation's planes stack along

    def plane_residual(self, planes: torch.Tensor) -> torch.Tensor:
        """The network's residual on (N, 1, slices, width) planes (inference runs whole planes through it)."""
        k = self.subpixel_k
        if not k:
            return self.body(planes)
        n, _, length, width = planes.shape
        if (length - 1) % k:
            raise ValueError(f"this through-plane 2D generator reads the acquired lines 0, {k}, {2 * k}, ...: a "
                             f"plane must be {k} * m + 1 lines long, got {length}")
        lines = planes[:, :, ::k]
        after = self.body(lines)  # (N, K - 1, m, width): the lines after each acquired one
        residual = torch.cat([torch.zeros_like(lines), after], dim=1)  # (N, K, m, width)
        residual = residual.permute(0, 2, 1, 3).reshape(n, 1, lines.shape[2] * k, width)
        return residual[:, :, :length]

    def forward(self, x: torch.Tensor, orientation: int | None = None) -> torch.Tensor:
        """(B, 1, slices, rows, cols) volumes, or (N, 1, slices, width) planes: the network on each plane
        directly (training on in-plane pairs; through `forward`, so that DDP and DeepSpeed see the call).
        `orientation` 0 or 1: that orientation's result alone (test-time augmentation), not the mean."""
        if x.dim() == 4:
            return x + self.plane_residual(x)
        b, _, d, r, c = x.shape
        residuals = []
        if orientation in (None, 0):  # planes (slices, rows) at each column, as a 2D batch
            along_rows = self.plane_residual(x.permute(0, 4, 1, 2, 3).reshape(b * c, 1, d, r))
            residuals.append(along_rows.reshape(b, c, 1, d, r).permute(0, 2, 3, 4, 1))
        if orientation in (None, 1):  # planes (slices, cols) at each row
            along_cols = self.plane_residual(x.permute(0, 3, 1, 2, 4).reshape(b * r, 1, d, c))
            residuals.append(along_cols.reshape(b, r, 1, d, c).permute(0, 2, 3, 1, 4))
        if not residuals:
            raise ValueError(f"orientation must be 0, 1 or None, got {orientation!r}")
        return x + sum(residuals) / len(residuals)


class DenseUnit(nn.Module):
    def __init__(self, in_channels: int, growth_rate: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm3d(in_channels), nn.ELU(inplace=True),
                                  conv3(in_channels, growth_rate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class DCSRN(nn.Module):
    """Chen et al. 2018: a conv with 2k filters, one densely connected block of BN-ELU-conv units
    (growth k), and an output conv over everything the block concatenated."""

    def __init__(self, dense_units: int = 4, growth_rate: int = 24):
        super().__init__()
        channels = 2 * growth_rate
        self.stem = conv3(1, channels)
        units = []
        for _ in range(dense_units):
            units.append(DenseUnit(channels, growth_rate))
            channels += growth_rate
        self.block = nn.Sequential(*units)
        self.head = conv3(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


def build_generator(size: GeneratorSize) -> nn.Module:
    if size.name == "deepresolve":
        return DeepResolve(size.num_layers, size.num_filters)
    if size.name == "dcsrn":
        return DCSRN(size.dense_units, size.growth_rate)
    if size.name == "throughplane2d":
        return ThroughPlane2D(size.num_layers, size.num_filters, size.subpixel_k)
    raise ValueError(f"unknown generator {size.name!r} (deepresolve, dcsrn or throughplane2d)")


def receptive_radius(model: nn.Module) -> int:
    """How far (voxels, along any axis) an output voxel sees: one voxel per 3x3(x3) convolution on the
    longest path, which in these generators passes through every convolution once."""
    return sum((m.kernel_size[0] - 1) // 2 for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd))


def display_name(name: str) -> str:
    return {"deepresolve": "DeepResolve", "dcsrn": "DCSRN", "throughplane2d": "through-plane 2D"}.get(name, name)
