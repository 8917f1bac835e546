import pytest
import torch

from slicesr.models.vae_gan import VaeGan, VaeGanSize


@pytest.mark.parametrize(
    "size",
    [
        VaeGanSize(image_size=16, channels=4, max_channels=8, num_blocks=2, latent_dim=8, disc_channels=4),
        VaeGanSize(image_size=32, channels=8, max_channels=16, num_blocks=3, latent_dim=24, disc_channels=8),
        VaeGanSize(image_size=64, channels=4, max_channels=32, num_blocks=4, latent_dim=5, disc_channels=4,
                   spectral_norm=False),
    ],
)
def test_shapes_for_several_sizes(size):
    model = VaeGan(size)
    x = torch.rand(3, 1, size.image_size, size.image_size)
    mu, logvar = model.encoder(x)
    assert mu.shape == logvar.shape == (3, size.latent_dim)
    assert model.decoder(mu).shape == x.shape
    assert model.critic(x).shape == (3,)


def test_paper_size_builds():
    size = VaeGanSize(image_size=256, channels=32, max_channels=512, num_blocks=6, latent_dim=512, disc_channels=64)
    model = VaeGan(size)
    mu, _ = model.encoder(torch.rand(1, 1, 256, 256))
    assert mu.shape == (1, 512)
    assert len(model.encoder.blocks) == 6


def test_building_blocks_follow_the_paper():
    model = VaeGan(VaeGanSize(image_size=16, channels=4, max_channels=8, num_blocks=2, latent_dim=8, disc_channels=4))
    block = model.encoder.blocks[0]
    unit = block[0]
    assert isinstance(unit[0], torch.nn.LeakyReLU) and unit[0].negative_slope == 0.2
    assert isinstance(unit[1], torch.nn.InstanceNorm2d)
    assert hasattr(unit[2], "parametrizations")  # spectral normalisation
    assert isinstance(block[-1], torch.nn.AvgPool2d)
    assert isinstance(model.decoder.blocks[0][0], torch.nn.Upsample) and model.decoder.blocks[0][0].mode == "nearest"
    assert isinstance(model.critic.net[-1].parametrizations.weight.original, torch.Tensor)


def test_bad_size_is_refused():
    with pytest.raises(ValueError, match="divisible"):
        VaeGan(VaeGanSize(image_size=20, num_blocks=3))


def test_sampling_noise_comes_from_the_generators_device(monkeypatch):
    """CUDA refuses a CPU generator for a CUDA tensor: the noise is drawn where the generator lives and
    then moved, so a GPU run (the loops seed CPU generators) samples what a CPU run samples."""
    real_randn = torch.randn

    def strict_randn(*args, generator=None, device=None, **kwargs):
        if generator is not None and torch.device(device or "cpu") != generator.device:
            raise RuntimeError(f"Expected a '{torch.device(device).type}' device type for generator")
        return real_randn(*args, generator=generator, device=device, **kwargs)

    monkeypatch.setattr(torch, "randn", strict_randn)
    mu, logvar = torch.zeros(2, 5, device="meta"), torch.zeros(2, 5, device="meta")  # stands for a GPU tensor
    assert VaeGan.sample(mu, logvar, torch.Generator().manual_seed(0)).device.type == "meta"
    cpu = VaeGan.sample(torch.zeros(2, 5), torch.zeros(2, 5), torch.Generator().manual_seed(0))
    torch.testing.assert_close(cpu, real_randn(2, 5, generator=torch.Generator().manual_seed(0)))
