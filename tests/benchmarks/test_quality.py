import argparse
import copy
import json

import pytest
import yaml

from benchmarks.quality import (
    PART_MARKER,
    PLAN,
    Parts,
    absolute_workdir,
    adapt_counts,
    beyond_labels,
    beyond_settings,
    claim_run_folder,
    load_plan,
)


def test_a_run_folder_of_other_settings_is_moved_aside_and_one_of_the_same_settings_resumed(tmp_path):
    claim_run_folder(tmp_path, "model", "configs/debug/stage2.yaml", ["train.max_steps=4"])
    checkpoint = tmp_path / "model" / "checkpoints" / "latest"
    checkpoint.mkdir(parents=True)

    claim_run_folder(tmp_path, "model", "configs/debug/stage2.yaml", ["train.max_steps=4"])  # the same part again
    assert checkpoint.exists()

    claim_run_folder(tmp_path, "model", "configs/debug/stage2.yaml", ["train.max_steps=8"])  # its plan changed
    assert not checkpoint.exists()
    assert json.loads((tmp_path / "model" / PART_MARKER).read_text())["overrides"] == ["train.max_steps=8"]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("model.before-")]
    assert len(aside) == 1 and (aside[0] / "checkpoints" / "latest").exists()  # kept, not deleted


def test_a_folder_without_a_marker_is_resumed_as_it_is(tmp_path):
    old = tmp_path / "model" / "checkpoints" / "latest"
    old.mkdir(parents=True)
    claim_run_folder(tmp_path, "model", "configs/debug/stage2.yaml", ["train.max_steps=4"])
    assert old.exists() and (tmp_path / "model" / PART_MARKER).exists()


def test_a_part_naming_a_model_is_done_again_when_the_model_was_retrained_in_the_same_folder(tmp_path):
    model = tmp_path / "runs" / "row" / "best"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights of the first training")
    calls = []

    def score(methods, output):
        calls.append(list(methods))
        return len(calls)

    parts = Parts(tmp_path)
    assert parts.run("score row", score, [f"row={model}"], "out") == 1
    assert parts.run("score row", score, [f"row={model}"], "out") == 1  # done: taken from before
    (model / "model.safetensors").write_bytes(b"weights of a training with other settings")
    assert parts.run("score row", score, [f"row={model}"], "out") == 2
    assert Parts(tmp_path).run("score row", score, [f"row={model}"], "out") == 2  # and kept in parts.json
    assert parts.run("score linear", score, ["linear"], "out") == 3  # parts without models keyed as before


def test_the_workdir_is_spelled_one_way_in_the_parts_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative, absolute = argparse.Namespace(workdir="runs/quality"), argparse.Namespace(workdir=str(tmp_path / "runs" / "quality"))
    assert absolute_workdir(relative) == absolute_workdir(absolute) == tmp_path / "runs" / "quality"
    assert relative.workdir == absolute.workdir == str(tmp_path / "runs" / "quality")  # what the parts read
    calls = []

    def store(workdir):  # a part's arguments name paths under the workdir
        calls.append(workdir)
        return f"{workdir}/lr.zarr"

    parts = Parts(tmp_path)
    parts.run("store", store, relative.workdir)
    parts.run("store", store, absolute.workdir)
    assert len(calls) == 1  # the second spelling found the part done


def test_a_beyond_row_adds_its_own_settings_to_its_generator_s():
    plan = {"generators": {"throughplane2d": {"set": ["model.name=throughplane2d"]}}}
    row = {"generator": "throughplane2d", "supervision": "inplane", "steps": 8, "set": ["train.lr=1e-3"]}
    assert beyond_settings(plan, row) == {"steps": 8, "set": ["model.name=throughplane2d", "train.lr=1e-3"]}
    assert beyond_settings(plan, {**row, "set": []})["set"] == ["model.name=throughplane2d"]
    with pytest.raises(ValueError, match="list of KEY=VALUE"):
        beyond_settings(plan, {**row, "set": "train.lr=1e-3"})  # a string would be split into characters


def test_a_sub_pixel_row_is_its_own_row_and_run():
    from benchmarks.quality import beyond_label, beyond_run_name

    row = {"generator": "throughplane2d", "supervision": "inplane", "steps": 8, "set": ["train.lr=1e-3"]}
    sub = {**row, "set": ["train.lr=1e-3", "model.subpixel=true"]}
    assert beyond_label(row) == "through-plane 2D, in-plane pairs"
    assert beyond_label(sub) == "through-plane 2D (sub-pixel), in-plane pairs"
    assert beyond_run_name(row) == "throughplane2d-inplane" and beyond_run_name(sub) == "throughplane2d-inplane-subpixel"
    assert beyond_run_name({**sub, "set": ["model.subpixel=false"]}) == "throughplane2d-inplane"
    from benchmarks.quality import check_beyond_rows

    plan = {"generators": {"throughplane2d": {"set": ["model.name=throughplane2d"]}}, "beyond": {"brain": [sub]}}
    check_beyond_rows(plan)
    plan["generators"]["throughplane2d"]["set"].append("model.subpixel=true")  # the row's label would not say so
    with pytest.raises(ValueError, match="in the row's own `set`"):
        check_beyond_rows({**plan, "beyond": {"brain": [row]}})


def test_a_beyond_row_is_adapted_once_per_step_count():
    row = {"generator": "throughplane2d", "supervision": "inplane", "steps": 8}
    assert adapt_counts(row) == [] and adapt_counts({**row, "adapt_steps": 100}) == [100]
    plan = {"beyond": {"brain": [{**row, "adapt_steps": [100, 300]}]}}
    labels = beyond_labels(plan)
    assert [label for label in labels if "adapted" in label] == [
        "through-plane 2D, in-plane pairs (adapted, 100 steps)", "through-plane 2D, in-plane pairs (adapted, 300 steps)"]
    # a count that only the knee's row has is a row of the table as well, after the brains' rows
    plan["beyond"]["knee"] = [{**row, "adapt_steps": [100, 600]}]
    assert beyond_labels(plan)[-2:] == ["through-plane 2D, in-plane pairs (adapted, 300 steps)",
                                        "through-plane 2D, in-plane pairs (adapted, 600 steps)"]
    for bad in ("100", [100, 0], [1.5], True, [True]):
        with pytest.raises(ValueError, match="positive step count"):
            adapt_counts({**row, "adapt_steps": bad})


def test_a_beyond_row_may_be_adapted_with_test_time_augmentation():
    from benchmarks.quality import check_beyond_rows

    row = {"generator": "throughplane2d", "supervision": "inplane", "steps": 8, "adapt_steps": [300, 600],
           "adapt_tta": True}
    # evaluate's own label of a method with --tta and --adapt-steps: the table's row names what was run
    assert [label for label in beyond_labels({"beyond": {"brain": [row]}}) if "adapted" in label] == [
        "through-plane 2D, in-plane pairs (TTA) (adapted, 300 steps)",
        "through-plane 2D, in-plane pairs (TTA) (adapted, 600 steps)"]
    plan = {"generators": {"throughplane2d": {"set": ["model.name=throughplane2d"]}}, "beyond": {"brain": [row]}}
    check_beyond_rows(plan)
    for bad, message in (({"adapt_tta": "yes"}, "true or false"), ({"adapt_steps": []}, "without `adapt_steps`")):
        with pytest.raises(ValueError, match=message):
            check_beyond_rows({**plan, "beyond": {"brain": [{**row, **bad}]}})


def test_a_beyond_row_s_augmentation_may_add_in_plane_rotations():
    from benchmarks.quality import check_beyond_rows

    row = {"generator": "throughplane2d", "supervision": "inplane", "steps": 8, "uncertainty": True,
           "adapt_steps": [300], "adapt_tta": True, "tta_angles": [45]}
    # evaluate's own labels of --tta-angles 45: with uncertainty, and adapted with TTA
    assert beyond_labels({"beyond": {"brain": [row]}})[3:] == [
        "through-plane 2D, in-plane pairs (TTA, rotations 45)",
        "through-plane 2D, in-plane pairs (TTA, rotations 45) (adapted, 300 steps)"]
    plan = {"generators": {"throughplane2d": {"set": ["model.name=throughplane2d"]}}, "beyond": {"brain": [row]}}
    check_beyond_rows(plan)
    for bad, message in (({"tta_angles": 45}, "list of angles"), ({"tta_angles": ["a"]}, "list of angles"),
                         ({"tta_angles": [360]}, "multiple of 360"),
                         ({"uncertainty": False, "adapt_tta": False}, "no row of it is augmented")):
        with pytest.raises(ValueError, match=message):
            check_beyond_rows({**plan, "beyond": {"brain": [{**row, **bad}]}})


def test_a_beyond_row_may_be_scored_again_with_the_slice_axis_s_flips_alone():
    from benchmarks.quality import check_beyond_rows

    row = {"generator": "throughplane2d", "supervision": "inplane", "steps": 8, "uncertainty": True,
           "tta_angles": [45], "slice_flips_tta": True}
    # evaluate's own label of --tta-angles 45 --tta-flips slice, after the row's full augmentation
    assert beyond_labels({"beyond": {"brain": [row]}})[3:] == [
        "through-plane 2D, in-plane pairs (TTA, rotations 45)",
        "through-plane 2D, in-plane pairs (TTA, slice flips, rotations 45)"]
    plan = {"generators": {"throughplane2d": {"set": ["model.name=throughplane2d"]}}, "beyond": {"brain": [row]}}
    check_beyond_rows(plan)
    check_beyond_rows({**plan, "beyond": {"brain": [{**row, "uncertainty": False}]}})  # its rotations are used
    with pytest.raises(ValueError, match="true or false"):
        check_beyond_rows({**plan, "beyond": {"brain": [{**row, "slice_flips_tta": "yes"}]}})
    with pytest.raises(ValueError, match="no row of it is augmented"):
        check_beyond_rows({**plan, "beyond": {"brain": [{**row, "uncertainty": False, "slice_flips_tta": False}]}})


def test_a_beyond_row_may_adapt_on_a_patch_of_its_own():
    from benchmarks.quality import check_beyond_rows

    row = {"generator": "throughplane2d", "supervision": "inplane", "steps": 8, "adapt_steps": [300],
           "adapt_patch": [33, 64, 64]}
    assert beyond_labels({"beyond": {"brain": [row]}})[-1] == (
        "through-plane 2D, in-plane pairs (adapted, 300 steps, patch 33x64x64)")  # evaluate's own label
    plan = {"k": 4, "generators": {"throughplane2d": {"set": ["model.name=throughplane2d"]}},
            "beyond": {"brain": [row]}}
    check_beyond_rows(plan)
    for bad, message in (({"adapt_patch": 33}, "slices, rows, cols"), ({"adapt_patch": [33, 64]}, "3 positive"),
                         ({"adapt_patch": [4, 64, 64]}, "at least K \\+ 1"),
                         ({"adapt_steps": None}, "without `adapt_steps`")):
        with pytest.raises(ValueError, match=message):
            check_beyond_rows({**plan, "beyond": {"brain": [{**row, **bad}]}})


def test_the_plan_s_beyond_rows_are_checked_when_it_is_loaded(tmp_path):
    assert load_plan(PLAN, quick=False)["beyond"]["brain"] and load_plan(PLAN, quick=True)["beyond"]["knee"]
    plan = yaml.safe_load(PLAN.read_text())
    for change, message in (({"generator": "unet"}, "generator 'unet'"), ({"supervision": "real"}, "inplane or both"),
                            ({"steps": 0}, "positive number"), ({"steps": True}, "positive number"), ({"adapt_step": 100}, "unknown keys"),
                            ({"adapt_steps": -1}, "positive step count"), ({"set": "train.lr=1e-3"}, "KEY=VALUE")):
        bad = copy.deepcopy(plan)
        bad["beyond"]["knee"][0].update(change)
        path = tmp_path / "plan.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ValueError, match=f"plan.yaml: .*{message}"):
            load_plan(path, quick=False)


def test_a_beyond_row_may_train_on_in_a_second_phase():
    from benchmarks.quality import check_beyond_rows, then_settings

    row = {"generator": "throughplane2d", "supervision": "inplane", "steps": 8, "set": ["sr.patch_size=[9,8,8]"],
           "then": {"steps": 3, "set": ["sr.patch_size=[17,8,8]"]}}
    plan = {"generators": {"throughplane2d": {"set": ["model.name=throughplane2d"]}}, "beyond": {"brain": [row]}}
    check_beyond_rows(plan)
    # the first phase's settings, then the second's own: the later patch size wins in the config
    assert then_settings(plan, row) == {"steps": 3, "set": ["model.name=throughplane2d", "sr.patch_size=[9,8,8]",
                                                            "sr.patch_size=[17,8,8]"]}
    assert then_settings(plan, {**row, "then": None}) is None
    for bad, message in (({"steps": 0}, "positive number of `steps`"), ({"steps": 2, "lr": 1}, "mapping of"),
                         ({"steps": 2, "set": "x=1"}, "KEY=VALUE"),
                         ({"steps": 2, "set": ["model.num_filters=8"]}, "keeps its architecture")):
        with pytest.raises(ValueError, match=message):
            check_beyond_rows({**plan, "beyond": {"brain": [{**row, "then": bad}]}})
