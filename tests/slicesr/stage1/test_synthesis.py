import numpy as np
import torch

from slicesr.cli import main
from slicesr.geometry import world_coordinates
from slicesr.models.vae_gan import VaeGan, VaeGanSize
from slicesr.stage1.synthesis import latent_distances, synthesize_slices, synthesize_store
from slicesr.stage1.train import Stage1Trainer
from slicesr.store import SliceStore


def _model():
    torch.manual_seed(0)
    return VaeGan(VaeGanSize(image_size=16, channels=4, max_channels=8, num_blocks=2, latent_dim=8, disc_channels=4))


def test_synthesized_slices_shape_and_interpolation_endpoints():
    model = _model()
    slices = np.random.default_rng(0).random((5, 20, 24)).astype(np.float32)
    hr = synthesize_slices(model, slices, k=4, batch_size=7)
    assert hr.shape == (4 * 4 + 1, 20, 24)
    # xi = 0 decodes mu_n itself: the same as decoding slice n alone
    alone = synthesize_slices(model, slices[2:4], k=4)
    np.testing.assert_allclose(hr[8], alone[0], atol=1e-5)
    np.testing.assert_allclose(hr[12], alone[4], atol=1e-5)
    kept = synthesize_slices(model, slices, k=4, keep_acquired=True)
    np.testing.assert_array_equal(kept[::4], slices)
    np.testing.assert_allclose(kept[1::4], hr[1::4], atol=1e-5)  # batch split differs; threaded convs round differently


def test_synthesize_store_affine_positions_and_resume(debug_config, lr_store, tmp_path, capsys):
    trainer = Stage1Trainer(debug_config("train.max_steps=2"))
    trainer.fit()
    lr = SliceStore.open(lr_store)
    assert main(["synthesize", "--model", str(trainer.best_dir), "--input", lr_store,
                 "--output", str(tmp_path / "hr"), "--k", "3"]) == 0
    hr = SliceStore.open(str(tmp_path / "hr"))
    assert hr.completed_ids() == lr.completed_ids()
    for scan_id in lr.completed_ids():
        a, b = lr.record(scan_id), hr.record(scan_id)
        n = a.shape[0]
        assert b.shape == (3 * (n - 1) + 1, *a.shape[1:])
        assert b.spacing_mm[0] == np.float64(a.spacing_mm[0]) / 3 or abs(b.spacing_mm[0] - a.spacing_mm[0] / 3) < 1e-9
        for i in range(n):  # synthesised slice i*K lies exactly where acquired slice i lies
            for j, k in ((0, 0), (5, 7)):
                np.testing.assert_allclose(world_coordinates(b.affine, np.array([[3 * i, j, k]])),
                                           world_coordinates(a.affine, np.array([[i, j, k]])), atol=1e-9)
        assert b.values["intensity"] == a.values["intensity"]
        assert b.values["source_affine"] == a.values["source_affine"]
    capsys.readouterr()
    # a second run skips every scan; --keep-acquired is a different synthesis and redoes them
    assert main(["synthesize", "--model", str(trainer.best_dir), "--input", lr_store,
                 "--output", str(tmp_path / "hr"), "--k", "3"]) == 0
    assert "already done 5" in capsys.readouterr().out
    model, _, _ = __import__("slicesr.stage1.train", fromlist=["load_vae"]).load_vae(trainer.best_dir)
    report = synthesize_store(model, lr, hr, 3, keep_acquired=True, progress=False)
    assert len(report.written) == 5
    scan = lr.completed_ids()[0]
    np.testing.assert_array_equal(hr.slices(scan)[::3], lr.slices(scan)[...])


def test_latent_distances_are_finite_and_zero_for_a_constant_volume():
    model = _model()
    volume = np.random.default_rng(1).random((9, 20, 20)).astype(np.float32)
    d = latent_distances(model, volume, k=4)
    assert set(d) == {"d1", "d2", "d3"} and all(np.isfinite(v) and v > 0 for v in d.values())
    flat = latent_distances(model, np.full((9, 16, 16), 0.3, np.float32), k=4)
    assert all(v < 1e-5 for v in flat.values())


def test_synthesize_refuses_its_input_as_output(debug_config, lr_store, capsys):
    trainer = Stage1Trainer(debug_config("train.max_steps=1"))
    trainer.fit()
    assert main(["synthesize", "--model", str(trainer.best_dir), "--input", lr_store, "--output", lr_store]) == 2
    assert "is the input store" in capsys.readouterr().err
    assert main(["latent-analysis", "--model", str(trainer.best_dir), "--hr", "x.nii.gz", "--k", "1"]) == 2


def test_latent_distance_samples_count_spans_and_neighbours():
    from slicesr.stage1.synthesis import latent_distance_samples

    samples = latent_distance_samples(_model(), np.random.default_rng(2).random((9, 16, 16)).astype(np.float32), k=4)
    # 9 slices, K = 4: two spans; per span 2 d1 (xi = 1/4, 3/4), 1 d2 (xi = 1/2) and 4 neighbour pairs
    assert [len(samples[key]) for key in ("d1", "d2", "d3")] == [4, 2, 8]
    # d3 is between adjacent true slices: a volume whose slices repeat in pairs has every other d3 zero
    pairs = np.repeat(np.random.default_rng(3).random((5, 16, 16)).astype(np.float32), 2, axis=0)[:9]
    d3 = latent_distance_samples(_model(), pairs, k=4)["d3"]
    assert np.allclose(d3[0::2], 0, atol=1e-5) and (d3[1::2] > 0).all()
