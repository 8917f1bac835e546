import numpy as np
import pytest
import torch

from slicesr.interpolation import linear_slices
from slicesr.stage2.holdout import center_crop, holdout_prediction, holdout_score
from slicesr.stage2.train import Stage2Trainer


@pytest.mark.parametrize("k", [2, 3, 4])
def test_holdout_restores_the_dropped_slices_from_every_other_one(k):
    lr = np.random.default_rng(0).random((9, 8, 9)).astype(np.float32)
    truth, prediction = holdout_prediction(linear_slices, lr, k)
    assert truth.shape == prediction.shape == lr.shape  # 9 slices: 5 kept, 4 dropped
    np.testing.assert_allclose(prediction[::2], lr[::2], atol=1e-6)  # kept slices come back
    # linear up-sampling by K, read at the dropped positions, is the midpoint of the kept neighbours
    np.testing.assert_allclose(prediction[1::2], 0.5 * (lr[0:-1:2] + lr[2::2]), atol=1e-6)
    perfect = holdout_score(lambda kept, kk: linear_slices(kept, kk), np.repeat(lr[:1], 7, axis=0), k)
    assert perfect["l1_missing"] < 1e-6  # a scan constant along the slice axis is restored exactly
    with pytest.raises(ValueError, match="at least 3"):
        holdout_prediction(linear_slices, lr[:2], k)


def test_holdout_scores_a_better_model_higher():
    slices = np.linspace(0, 1, 13, dtype=np.float32)[:, None, None] ** 2 * np.ones((13, 8, 8), np.float32)

    def exact(kept, k):  # knows the curve: the ideal restoration of a quadratic ramp
        positions = np.arange(k * (kept.shape[0] - 1) + 1) / (k * (kept.shape[0] - 1))
        return np.broadcast_to((positions**2)[:, None, None], (len(positions), 8, 8)).astype(np.float32)

    linear, ideal = holdout_score(linear_slices, slices, 4), holdout_score(exact, slices, 4)
    assert ideal["l1_missing"] < 1e-6 < linear["l1_missing"] and ideal["psnr_missing"] > linear["psnr_missing"]
    assert center_crop(np.zeros((2, 10, 7)), (4, 9)).shape == (2, 4, 7)


def test_trainer_picks_best_on_the_lr_holdout(sr_config, real_hr_store):
    trainer = Stage2Trainer(sr_config("sr.validation=lr_holdout", "sr.holdout_crop=[12,12]"))
    assert trainer.val_metric == "val_holdout_l1"
    untrained = trainer.validate()  # an untrained DeepResolve is linear interpolation
    lr = trainer.lr_scan(trainer.val_ids[0])
    assert lr.shape[0] == 5 and np.isfinite(untrained)  # the LR scan the synthetic volume came from
    expected = holdout_score(linear_slices, center_crop(lr, (12, 12)), 4)["l1_missing"]
    assert untrained == pytest.approx(expected, rel=1e-5)
    result = trainer.fit()
    assert np.isfinite(result["best_val_holdout_l1"])
    supervised = Stage2Trainer(sr_config("sr.validation=lr_holdout", "sr.supervision=real", "run.name=up",
                                         store=real_hr_store))
    hr = np.asarray(supervised.store.slices(supervised.val_ids[0])[...])
    np.testing.assert_array_equal(supervised.lr_scan(supervised.val_ids[0]), hr[::4])  # T(HR) as the LR
    assert torch.isfinite(torch.tensor(supervised.validate()))


def test_a_range_model_is_held_out_at_every_integer_ratio_of_its_range(sr_config):
    from slicesr.inference import generator_upsample

    config = sr_config("sr.validation=lr_holdout", "sr.holdout_crop=[12,12]", "sr.ratio_range=[2, 4]", "run.name=range")
    trainer = Stage2Trainer(config)
    with torch.no_grad():  # a model that is not linear interpolation: its hold-out differs from ratio to ratio
        for parameter in trainer.model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    reports = []
    trainer.reporter.report = lambda step, values: reports.append(values)
    held_out = trainer.validate()
    lr = center_crop(trainer.lr_scan(trainer.val_ids[0]), (12, 12))
    trainer.model.eval()
    per_ratio = {k: holdout_score(lambda kept, kk: generator_upsample(trainer.model, kept, kk, tuple(config.sr.window),
                                                                      config.sr.window_overlap), lr, k)
                 for k in (2, 3, 4)}
    assert held_out == pytest.approx(np.mean([r["l1_missing"] for r in per_ratio.values()]), rel=1e-5)
    assert held_out != pytest.approx(per_ratio[4]["l1_missing"], rel=1e-3)  # not ratio 4 alone
    assert reports[-1]["val_holdout_psnr_k3"] == pytest.approx(per_ratio[3]["psnr_missing"], rel=1e-5)
    assert reports[-1]["val_holdout_psnr"] == pytest.approx(np.mean([r["psnr_missing"] for r in per_ratio.values()]),
                                                            rel=1e-5)
    assert trainer.metadata()["holdout_ratios"] == [2, 3, 4] and trainer.metadata()["validation"] == "lr_holdout"
    assert trainer.identity()["sr"]["holdout_ratios"] == [2, 3, 4]  # part of what a resumed run must match
