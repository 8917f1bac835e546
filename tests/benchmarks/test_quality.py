import json

from benchmarks.quality import PART_MARKER, claim_run_folder


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
