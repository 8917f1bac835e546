import csv
import json

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

from slicesr.cli import main
from slicesr.evaluate import (
    evaluate,
    neighbour_error_spearman,
    neighbour_mean,
    parse_methods,
    read_metrics,
    score,
    uncertainty_calibration,
    uncertainty_spearman,
)
from tests.conftest import write_nifti


def _ssim_by_hand(a, b):
    """SSIM as Wang et al. with skimage's defaults (7x7 uniform window, sample covariance, data range 1)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    n = 49
    mean_a, mean_b = uniform_filter(a, 7), uniform_filter(b, 7)
    var_a = (uniform_filter(a * a, 7) - mean_a**2) * n / (n - 1)
    var_b = (uniform_filter(b * b, 7) - mean_b**2) * n / (n - 1)
    cov = (uniform_filter(a * b, 7) - mean_a * mean_b) * n / (n - 1)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)) / ((mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2))
    return s[3:-3, 3:-3].mean()


def _phantom(shape=(24, 22, 19), seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    volume = 100 * np.exp(-(x**2 + y**2 + z**2) * 2) + 40 * np.sin(3 * z + 2 * x) + rng.normal(0, 2, shape)
    return volume.astype(np.float32)


def test_linear_scores_match_an_independent_computation(tmp_path):
    hr = _phantom()  # slice axis 2 (19 slices): kept 0, 4, 8, 12, 16; slices 17, 18 are not scored
    affine = np.diag([0.9, 0.9, 1.0, 1.0])
    path = write_nifti(tmp_path / "hr.nii.gz", hr, affine)
    result = evaluate([path], 4, "linear", str(tmp_path / "eval"), slice_axis="2", figures=False, progress=False)
    row = result.rows[0]
    low, high = hr.min(), hr.max()
    truth = (hr - low) / (high - low)
    missing = [i for i in range(17) if i % 4]
    predicted = {}
    for i in range(17):
        a, t = divmod(i, 4)
        predicted[i] = truth[:, :, 4 * a] if t == 0 else (1 - t / 4) * truth[:, :, 4 * a] + t / 4 * truth[:, :, 4 * a + 4]
    for subset, suffix in ((missing, "missing"), (list(range(17)), "all")):
        mse = np.mean([np.mean((predicted[i] - truth[:, :, i]) ** 2) for i in subset])
        assert row[f"psnr_{suffix}"] == pytest.approx(10 * np.log10(1 / mse), abs=1e-3)
        ssim = np.mean([_ssim_by_hand(truth[:, :, i], predicted[i]) for i in subset])
        assert row[f"ssim_{suffix}"] == pytest.approx(ssim, abs=1e-4)
    assert row["psnr_all"] > row["psnr_missing"]  # the acquired slices are exact


def test_outputs_csv_summary_figures_and_failures(tmp_path, capsys):
    good = write_nifti(tmp_path / "a.nii.gz", _phantom(seed=1), np.diag([1.0, 1.0, 1.0, 1.0]))
    write_nifti(tmp_path / "b.nii.gz", _phantom(seed=2), np.diag([1.0, 1.0, 1.0, 1.0]))
    (tmp_path / "bad.nii.gz").write_bytes(b"not a scan")
    out = tmp_path / "eval"
    code = main(["evaluate", good, str(tmp_path / "b.nii.gz"), str(tmp_path / "bad.nii.gz"), "--k", "4",
                 "--methods", "linear,cubic,spline=cubic", "--output", str(out)])
    assert code == 1
    assert "bad.nii.gz" in capsys.readouterr().err
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["volume", "method", "ratio", "profile", "thickness_mm", "psnr_missing", "ssim_missing",
                             "psnr_all", "ssim_all"]
    assert (float(rows[0]["ratio"]), rows[0]["profile"], rows[0]["thickness_mm"]) == (4.0, "point", "")
    assert {(r["volume"], r["method"]) for r in rows} == {(v, m) for v in "ab" for m in ("linear", "cubic", "spline")}
    summary = (out / "summary.md").read_text()
    assert "| linear |" in summary and "±" in summary and "bad.nii.gz" in summary
    for name in ("a_slices.png", "a_through_plane.png", "b_slices.png"):
        assert (out / name).stat().st_size > 1000


def test_score_rejects_constant_and_short_predictions():
    hr = np.ones((9, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="constant"):
        score(hr, hr, 4)
    with pytest.raises(ValueError, match="does not cover"):
        score(_phantom((9, 8, 8)), np.zeros((5, 8, 8)), 4)
    assert parse_methods("linear, A=runs/x") == [(None, "linear"), ("A", "runs/x")]


def test_duplicate_labels_and_bad_k(tmp_path, capsys):
    path = write_nifti(tmp_path / "a.nii.gz", _phantom(), np.eye(4))
    assert main(["evaluate", path, "--k", "4", "--methods", "linear,linear", "--output", str(tmp_path / "o")]) == 2
    assert "two methods are labelled" in capsys.readouterr().err
    assert main(["evaluate", path, "--k", "1", "--methods", "linear", "--output", str(tmp_path / "o")]) == 2


def test_uncertainty_spearman_ranks_the_errors():
    rng = np.random.default_rng(0)
    hr = rng.random((9, 8, 8)) + 0.5
    prediction = hr + rng.normal(scale=0.1, size=hr.shape)
    error = np.abs(prediction - hr)
    assert uncertainty_spearman(hr, prediction, error, 4) == pytest.approx(1.0)
    assert uncertainty_spearman(hr, prediction, -error, 4) == pytest.approx(-1.0)
    assert abs(uncertainty_spearman(hr, prediction, rng.random(hr.shape), 4)) < 0.2
    assert np.isnan(uncertainty_spearman(hr, prediction, np.zeros(hr.shape), 4))  # a constant map ranks nothing


def test_the_neighbours_oracle_ranks_what_errors_share_with_their_surroundings():
    rng = np.random.default_rng(0)
    hr = rng.random((13, 32, 32)) + 0.5
    rows, cols = np.mgrid[:32, :32]
    smooth = (0.05 + 0.1 * np.sin(rows / 5.0) ** 2 * np.cos(cols / 7.0) ** 2)[None]  # an error field that varies slowly
    assert neighbour_error_spearman(hr, hr + smooth, 4) > 0.9
    # independent errors: the neighbours know nothing of a voxel's own, though a map of the errors ranks them
    white = rng.normal(scale=0.1, size=hr.shape)
    assert abs(neighbour_error_spearman(hr, hr + white, 4)) < 0.1
    assert uncertainty_spearman(hr, hr + white, np.abs(white), 4) == pytest.approx(1.0)
    # a voxel's own value never reaches its oracle value, on the border (where the field of view ends) as inside
    values = rng.random((2, 9, 8))
    for voxel in [(0, 0, 0), (1, 4, 3), (1, 8, 7)]:
        changed = values.copy()
        changed[voxel] += 100.0
        np.testing.assert_allclose(neighbour_mean(changed, 1.0)[voxel], neighbour_mean(values, 1.0)[voxel])
        beside = (voxel[0], voxel[1], voxel[2] + 1 if voxel[2] < 7 else voxel[2] - 1)
        assert neighbour_mean(changed, 1.0)[beside] > 1.0  # its neighbours see it
    np.testing.assert_allclose(neighbour_mean(np.full((1, 5, 5), 3.0), 1.5), 3.0)  # a mean: no border loss
    assert np.isnan(neighbour_error_spearman(hr, hr.copy(), 4))  # no error: nothing to rank
    with pytest.raises(ValueError, match="positive"):
        neighbour_error_spearman(hr, hr, 4, sigma_voxels=0)


def test_tta_and_uncertainty_rows(tmp_path):
    from tests.slicesr.test_inference_tta import model_dir

    hr_path = write_nifti(tmp_path / "hr.nii.gz", np.random.default_rng(1).random((10, 9, 13)).astype(np.float32) + 0.2,
                          np.diag([1.0, 1.0, 1.0, 1.0]))
    model = model_dir(tmp_path / "sr", "throughplane2d")
    result = evaluate([hr_path], 3, ["linear", f"mine={model}"], str(tmp_path / "out"), slice_axis=2, figures=True,
                      progress=False, uncertainty=True)
    assert result.methods == ["linear", "mine (TTA)"] and not result.failures
    rows = read_metrics(tmp_path / "out" / "metrics.csv")
    assert rows[0]["uncertainty_spearman"] == ""  # linear has no map
    assert -1.0 <= rows[1]["uncertainty_spearman"] <= 1.0
    assert rows[0]["neighbour_error_spearman"] == "" and -1.0 <= rows[1]["neighbour_error_spearman"] <= 1.0
    curve = json.loads((tmp_path / "out" / "calibration.json").read_text())["hr"]["mine (TTA)"]
    assert len(curve["uncertainty"]) == len(curve["abs_error"]) == 10
    assert curve["uncertainty"] == sorted(curve["uncertainty"])  # deciles in rising uncertainty
    assert (tmp_path / "out" / "uncertainty_calibration.png").stat().st_size > 0


def test_rotated_tta_rows(tmp_path):
    from tests.slicesr.test_inference_tta import model_dir

    hr_path = write_nifti(tmp_path / "hr.nii.gz", np.random.default_rng(1).random((10, 9, 13)).astype(np.float32) + 0.2,
                          np.diag([1.0, 1.0, 1.0, 1.0]))
    model = model_dir(tmp_path / "sr", "throughplane2d")
    result = evaluate([hr_path], 3, ["linear", f"mine={model}"], str(tmp_path / "out"), slice_axis=2, figures=False,
                      progress=False, tta_angles=(45,))
    assert result.methods == ["linear", "mine (TTA, rotations 45)"] and not result.failures
    flips = evaluate([hr_path], 3, [f"mine={model}"], str(tmp_path / "flips"), slice_axis=2, figures=False,
                     progress=False, tta=True)
    assert result.rows[1]["psnr_missing"] != flips.rows[0]["psnr_missing"]
    adapted = evaluate([hr_path], 3, [f"mine={model}"], str(tmp_path / "adapted"), slice_axis=2, figures=False,
                       progress=False, tta_angles=(45,), adapt_steps=1, adapt_patch=(4, 6, 12))
    assert adapted.methods == ["mine (TTA, rotations 45) (adapted, 1 steps, patch 4x6x12)"]
    with pytest.raises(ValueError, match="needs --adapt-steps"):
        evaluate([hr_path], 3, [f"mine={model}"], str(tmp_path / "bad"), slice_axis=2, progress=False,
                 adapt_patch=(4, 6, 12))
    with pytest.raises(ValueError, match="multiple of 360"):
        evaluate([hr_path], 3, [f"mine={model}"], str(tmp_path / "bad"), slice_axis=2, progress=False,
                 tta_angles=(0,))
    # the slice axis's flips alone (tta implied): their own row, another mean; the uncertainty row as well
    fewer = evaluate([hr_path], 3, ["linear", f"mine={model}"], str(tmp_path / "fewer"), slice_axis=2, figures=False,
                     progress=False, tta_angles=(45,), tta_flips="slice")
    assert fewer.methods == ["linear", "mine (TTA, slice flips, rotations 45)"] and not fewer.failures
    assert fewer.rows[1]["psnr_missing"] != result.rows[1]["psnr_missing"]
    mapped = evaluate([hr_path], 3, [f"mine={model}"], str(tmp_path / "mapped"), slice_axis=2, figures=False,
                      progress=False, uncertainty=True, tta_flips="slice")
    assert mapped.methods == ["mine (TTA, slice flips)"] and "uncertainty_spearman" in mapped.rows[0]
    with pytest.raises(ValueError, match="TTA flips"):
        evaluate([hr_path], 3, [f"mine={model}"], str(tmp_path / "bad"), slice_axis=2, progress=False,
                 tta_flips="most")


def test_adapted_rows(tmp_path, capsys):
    """--adapt-steps: each trained generator fine-tuned on each simulated LR scan before it is scored (its own
    row label); linear is scored as it is; the model directory is unchanged; a negative count is refused."""
    import hashlib

    from tests.slicesr.test_inference_tta import model_dir

    hr_path = write_nifti(tmp_path / "hr.nii.gz", np.random.default_rng(1).random((10, 9, 13)).astype(np.float32) + 0.2,
                          np.diag([1.0, 1.0, 1.0, 1.0]))
    model = model_dir(tmp_path / "sr", "throughplane2d")
    weights = tmp_path / "sr" / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    plain = evaluate([hr_path], 3, ["linear", f"mine={model}"], str(tmp_path / "plain"), slice_axis=2, figures=False,
                     progress=False)
    assert main(["evaluate", hr_path, "--k", "3", "--slice-axis", "2", "--methods", f"linear,mine={model}",
                 "--output", str(tmp_path / "adapted"), "--no-figures", "--adapt-steps", "3"]) == 0
    rows = read_metrics(tmp_path / "adapted" / "metrics.csv")
    assert [r["method"] for r in rows] == ["linear", "mine (adapted, 3 steps)"]
    assert rows[0]["psnr_missing"] == pytest.approx(plain.rows[0]["psnr_missing"])
    assert rows[1]["psnr_missing"] != pytest.approx(plain.rows[1]["psnr_missing"], abs=1e-9)  # a fine-tuned copy scored
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest
    capsys.readouterr()
    assert main(["evaluate", hr_path, "--k", "3", "--methods", "linear", "--output", str(tmp_path / "bad"),
                 "--adapt-steps", "-2"]) == 2
    assert "--adapt-steps" in capsys.readouterr().err


def test_bfloat16_rows(tmp_path):
    """--precision bfloat16: the through-plane 2D generator runs in bfloat16 (its row labelled, close to but
    not equal to float32), a 3D generator and linear are scored as they are."""
    from tests.slicesr.test_inference_tta import model_dir

    hr_path = write_nifti(tmp_path / "hr.nii.gz", np.random.default_rng(1).random((10, 9, 13)).astype(np.float32) + 0.2,
                          np.diag([1.0, 1.0, 1.0, 1.0]))
    planes = model_dir(tmp_path / "sr2d", "throughplane2d")
    volume = model_dir(tmp_path / "sr3d", "deepresolve")
    methods = ["linear", f"planes={planes}", f"volume={volume}"]
    plain = evaluate([hr_path], 3, methods, str(tmp_path / "plain"), slice_axis=2, figures=False, progress=False)
    assert main(["evaluate", hr_path, "--k", "3", "--slice-axis", "2", "--methods", ",".join(methods),
                 "--output", str(tmp_path / "bf16"), "--no-figures", "--precision", "bfloat16"]) == 0
    rows = {r["method"]: r["psnr_missing"] for r in read_metrics(tmp_path / "bf16" / "metrics.csv")}
    reference = {r["method"]: r["psnr_missing"] for r in plain.rows}
    assert list(rows) == ["linear", "planes (bfloat16)", "volume"]
    assert rows["linear"] == pytest.approx(reference["linear"]) and rows["volume"] == pytest.approx(reference["volume"])
    assert rows["planes (bfloat16)"] != reference["planes"]
    assert rows["planes (bfloat16)"] == pytest.approx(reference["planes"], abs=0.5)


def test_calibration_deciles_follow_the_error():
    rng = np.random.default_rng(2)
    hr = rng.random((9, 8, 8)) + 0.5
    spread = rng.random(hr.shape)
    prediction = hr + spread * rng.choice([-1.0, 1.0], size=hr.shape)  # error = uncertainty exactly
    curve = uncertainty_calibration(hr, prediction, spread, 4)
    np.testing.assert_allclose(curve["abs_error"], curve["uncertainty"])


def test_lr_spacing_and_slice_profiles(tmp_path, capsys, caplog):
    """A non-integer LR spacing (2.5 HR slices) and a thick-slice profile: the HR grid is reconstructed and
    scored on the slices that are not within half a slice of an acquired centre."""
    from slicesr.evaluate import missing_slices, scored_slices

    assert scored_slices(24, 2.5) == 23 and scored_slices(24, 4) == 21  # up to the last acquired centre
    np.testing.assert_array_equal(np.flatnonzero(~missing_slices(11, 2.5)), [0, 5, 10])  # centres 0, 2.5 (x), 5, ...
    path = write_nifti(tmp_path / "hr.nii.gz", _phantom(), np.diag([1.0, 1.0, 2.0, 1.0]))  # 2 mm slices, axis 2
    out = tmp_path / "eval"
    assert main(["evaluate", path, "--lr-spacing", "5", "--slice-axis", "2", "--methods", "linear,cubic",
                 "--output", str(out), "--no-figures"]) == 0
    rows = read_metrics(out / "metrics.csv")
    assert [r["ratio"] for r in rows] == [2.5, 2.5] and all(np.isfinite(r["psnr_missing"]) for r in rows)
    assert (out / "summary.md").read_text().startswith("# Evaluation (LR spacing 5 mm)")
    assert main(["evaluate", path, "--k", "4", "--slice-profile", "box", "--slice-thickness", "6", "--slice-axis", "2",
                 "--methods", "linear", "--output", str(tmp_path / "box"), "--no-figures"]) == 0
    box = read_metrics(tmp_path / "box" / "metrics.csv")[0]
    assert box["profile"] == "box" and box["thickness_mm"] == 6.0
    assert box["psnr_all"] < 60  # the acquired slices are averages now, not copies of the HR slices
    assert main(["evaluate", path, "--k", "4", "--lr-spacing", "5", "--methods", "linear", "--output", str(out)]) == 2
    assert main(["evaluate", path, "--k", "4", "--slice-profile", "gaussian", "--methods", "linear",
                 "--output", str(out)]) == 2
    assert "slice thickness" in capsys.readouterr().err
    assert main(["evaluate", path, "--k", "4", "--slice-thickness", "6", "--slice-axis", "2", "--methods", "linear",
                 "--output", str(tmp_path / "point"), "--no-figures"]) == 0  # scored with the point profile ...
    assert read_metrics(tmp_path / "point" / "metrics.csv")[0]["profile"] == "point"
    assert (tmp_path / "point" / "summary.md").read_text().startswith("# Evaluation (K = 4)")
    assert "is not used with the point profile" in caplog.text  # ... and said so
