"""Stage I networks of the paper (section 3.1): encoder E, decoder D, PatchGAN-style critic H.

LeakyReLU(0.2), instance normalisation, Xavier initialisation and spectral normalisation on every
convolution (as in the paper); average pooling down, nearest-neighbour up. Sizes come from the config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclass(frozen=True)
class VaeGanSize:
    image_size: int = 64
    channels: int = 16  # width after the first convolution
    max_channels: int = 256
    num_blocks: int = 3  # down-sampling blocks (paper: 6)
    latent_dim: int = 64  # Z (paper: 512)
    disc_channels: int = 32
    spectral_norm: bool = True

    def block_channels(self) -> list[int]:
        """Channels entering each block, then the deepest width."""
        return [min(self.channels * 2**i, self.max_channels) for i in range(self.num_blocks + 1)]

    @property
    def bottom_size(self) -> int:
        return self.image_size // 2**self.num_blocks


def _conv(in_ch: int, out_ch: int, kernel: int, use_sn: bool, stride: int = 1) -> nn.Module:
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2)
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    return spectral_norm(conv) if use_sn else conv


def _linear(in_f: int, out_f: int) -> nn.Module:
    # The paper puts spectral normalisation on the convolutions; the fully connected layers that map
    # to and from the latent code keep their scale free.
    linear = nn.Linear(in_f, out_f)
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class _Unit(nn.Sequential):
    """activation - normalisation - convolution, as in the paper."""

    def __init__(self, in_ch: int, out_ch: int, use_sn: bool):
        super().__init__(nn.LeakyReLU(0.2), nn.InstanceNorm2d(in_ch, affine=True), _conv(in_ch, out_ch, 3, use_sn))


class _Block(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, use_sn: bool, resample: nn.Module, resample_first: bool = False):
        units = [_Unit(in_ch, out_ch, use_sn), _Unit(out_ch, out_ch, use_sn), _Unit(out_ch, out_ch, use_sn)]
        super().__init__(*([resample] + units if resample_first else units + [resample]))


class Encoder(nn.Module):
    """x (B, 1, S, S) -> (mu, logvar), each (B, Z)."""

    def __init__(self, size: VaeGanSize):
        super().__init__()
        widths = size.block_channels()
        self.stem = _conv(1, widths[0], 3, size.spectral_norm)
        self.blocks = nn.Sequential(*[
            _Block(widths[i], widths[i + 1], size.spectral_norm, nn.AvgPool2d(2)) for i in range(size.num_blocks)
        ])
        self.head = _linear(widths[-1] * size.bottom_size**2, 2 * size.latent_dim)
        self.latent_dim = size.latent_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.blocks(self.stem(x))
        out = self.head(torch.flatten(features, 1))
        return out[:, : self.latent_dim], out[:, self.latent_dim :]


class Decoder(nn.Module):
    """z (B, Z) -> x_hat (B, 1, S, S)."""

    def __init__(self, size: VaeGanSize):
        super().__init__()
        widths = size.block_channels()[::-1]
        self.bottom_shape = (widths[0], size.bottom_size, size.bottom_size)
        self.head = _linear(size.latent_dim, widths[0] * size.bottom_size**2)
        self.blocks = nn.Sequential(*[
            _Block(widths[i], widths[i + 1], size.spectral_norm, nn.Upsample(scale_factor=2, mode="nearest"),
                   resample_first=True)
            for i in range(size.num_blocks)
        ])
        self.out = nn.Sequential(nn.LeakyReLU(0.2), _conv(widths[-1], 1, 3, size.spectral_norm))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        features = self.head(z).view(z.shape[0], *self.bottom_shape)
        return self.out(self.blocks(features))


class Critic(nn.Module):
    """PatchGAN-style: three conv-norm-activation blocks, a plain conv, global average pooling -> (B,)."""

    def __init__(self, size: VaeGanSize):
        super().__init__()
        c = size.disc_channels
        layers: list[nn.Module] = []
        in_ch = 1
        for i in range(3):
            out_ch = c * 2**i
            layers += [_conv(in_ch, out_ch, 4, size.spectral_norm, stride=2),
                       nn.InstanceNorm2d(out_ch, affine=True), nn.LeakyReLU(0.2)]
            in_ch = out_ch
        layers.append(_conv(in_ch, 1, 3, size.spectral_norm))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=(1, 2, 3))


class VaeGan(nn.Module):
    """The three networks together (state dict keys: encoder.*, decoder.*, critic.*)."""

    def __init__(self, size: VaeGanSize):
        super().__init__()
        if size.image_size % 2**size.num_blocks or size.bottom_size < 2:
            raise ValueError(
                f"model.image_size {size.image_size} must be divisible by 2**num_blocks ({2**size.num_blocks}) "
                "and leave at least 2x2 at the bottom"
            )
        self.size = size
        self.encoder = Encoder(size)
        self.decoder = Decoder(size)
        self.critic = Critic(size)

    @staticmethod
    def sample(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # Drawn where the generator lives (the CPU for the loops' seeded generators: CUDA refuses a CPU
        # generator), then moved: the same noise on every device, so a GPU run resumes exactly too.
        device = generator.device if generator is not None else mu.device
        noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=device).to(mu.device)
        return mu + torch.exp(0.5 * logvar) * noise
