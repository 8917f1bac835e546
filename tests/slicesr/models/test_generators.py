import pytest
import torch

from slicesr.models.generators import DCSRN, DeepResolve, GeneratorSize, build_generator


def test_deepresolve_reference_size_and_residual():
    model = DeepResolve(num_layers=20, num_filters=64)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert len(convs) == 20 and all(c.kernel_size == (3, 3, 3) for c in convs)
    assert [c.out_channels for c in convs] == [64] * 19 + [1]
    assert sum(p.numel() for p in model.parameters()) == (27 * 64 + 64) + 18 * (27 * 64 * 64 + 64) + (27 * 64 + 1)
    x = torch.rand(1, 1, 9, 12, 10)
    torch.testing.assert_close(model(x), x)  # zero last layer: the untrained network returns its input
    torch.nn.init.normal_(convs[-1].weight)
    y = model(x)
    assert y.shape == x.shape and not torch.allclose(y, x)


def test_dcsrn_dense_block_grows_by_k():
    model = DCSRN(dense_units=4, growth_rate=24)
    assert model.stem.out_channels == 48
    assert [unit.body[2].in_channels for unit in model.block] == [48, 72, 96, 120]
    assert all(unit.body[2].out_channels == 24 for unit in model.block)
    assert isinstance(model.block[0].body[0], torch.nn.BatchNorm3d) and isinstance(model.block[0].body[1], torch.nn.ELU)
    assert model.head.in_channels == 144 and model.head.out_channels == 1
    x = torch.rand(2, 1, 5, 8, 7)
    assert model.eval()(x).shape == x.shape


def test_constant_in_constant_out_and_unknown_name():
    for size in (GeneratorSize("deepresolve", 3, 4), GeneratorSize("dcsrn", dense_units=2, growth_rate=3)):
        model = build_generator(size).eval()
        torch.nn.init.normal_(list(model.modules())[-1].weight)  # not the identity
        out = model(torch.full((1, 1, 5, 9, 9), 0.3)).detach()
        assert float(out.max() - out.min()) < 1e-5  # replicate padding: no border effect
    with pytest.raises(ValueError, match="unknown generator"):
        build_generator(GeneratorSize("unet"))


def test_throughplane2d_runs_one_2d_network_on_both_through_plane_orientations():
    model = build_generator(GeneratorSize("throughplane2d", num_layers=4, num_filters=6))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and all(c.kernel_size == (3, 3) for c in convs)
    x = torch.rand(2, 1, 9, 7, 5)
    torch.testing.assert_close(model(x), x)  # zero last layer: linear interpolation until trained
    torch.nn.init.normal_(convs[-1].weight)
    y = model(x)
    assert y.shape == x.shape and not torch.allclose(y, x)
    # the planes contain the slice axis: swapping rows and cols swaps the two orientations, same output
    torch.testing.assert_close(model(x.transpose(3, 4)), y.transpose(3, 4), rtol=1e-5, atol=1e-6)
    # each output voxel depends only on its own (slices, row) and (slices, col) planes
    x2 = x.clone()
    x2[0, 0, :, 0, 0] += 1.0
    changed = (model(x2) - y).abs()[0, 0].sum(dim=0) > 0  # (rows, cols) map of affected columns
    assert changed[0, 0] and changed[0, 1] and changed[1, 0] and not changed[1:, 1:].any()
    out = model.eval()(torch.full((1, 1, 5, 9, 9), 0.3)).detach()
    assert float(out.max() - out.min()) < 1e-5  # replicate padding: no border effect


def test_subpixel_throughplane2d_reads_only_the_acquired_lines():
    k = 4
    model = build_generator(GeneratorSize("throughplane2d", num_layers=3, num_filters=5, subpixel_k=k))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[-1].out_channels == k - 1  # one channel per line between two acquired ones
    x = torch.rand(2, 1, 4 * k + 1, 6, 5)
    torch.testing.assert_close(model(x), x)  # zero last layer: linear interpolation until trained
    torch.nn.init.normal_(convs[-1].weight)
    torch.nn.init.normal_(convs[-1].bias)
    y = model(x)
    torch.testing.assert_close(y[:, :, ::k], x[:, :, ::k], rtol=0, atol=0)  # acquired lines: no residual
    assert not torch.allclose(y, x)
    # the in-between lines of the input are ignored: the residual depends on the acquired lines only
    x2 = x.clone()
    x2[:, :, 1::k] += 1.0
    torch.testing.assert_close(model(x2) - x2, y - x)
    # a change to one acquired line reaches the lines just after it and after its neighbours
    x3 = x.clone()
    x3[0, 0, 2 * k, 0, 0] += 1.0
    moved = ((model(x3) - x3) - (y - x)).abs()[0, 0, :, 0, 0] > 0
    assert moved[2 * k + 1] and moved[k + 1] and not moved[2 * k] and not moved[0]
    # the same sizes as the plain network otherwise
    plain = build_generator(GeneratorSize("throughplane2d", num_layers=3, num_filters=5))
    assert [c.out_channels for c in [m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)]][:-1] == \
        [c.out_channels for c in convs][:-1]
    with pytest.raises(ValueError, match="4 \\* m \\+ 1 lines long, got 8"):
        model(torch.rand(3, 1, 8, 5))
    with pytest.raises(ValueError, match="subpixel_k"):
        build_generator(GeneratorSize("throughplane2d", subpixel_k=1))
