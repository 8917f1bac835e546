"""cluster.pipeline refuses configs that would only fail after the trainings: exit 2 before any step."""

import pytest
import yaml

from cluster.pipeline import main
from tests.conftest import write_synth


@pytest.fixture
def pipeline_yaml(tmp_path):
    write_synth(tmp_path / "lr", 1, seed=1)
    write_synth(tmp_path / "hr", 1, seed=2)

    def make(**changes):
        tree = {"workdir": str(tmp_path / "work"), "preprocess": {"inputs": [str(tmp_path / "lr")], "workers": 0},
                "stage1": {"config": "configs/debug/stage1.yaml"}, "stage2": {"config": "configs/debug/stage2.yaml"},
                "evaluation": {"hr": [str(tmp_path / "hr")]}}
        for key, value in changes.items():
            section, _, leaf = key.partition("__")
            if leaf:
                tree[section][leaf] = value
            else:
                tree[section] = value
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump(tree))
        return str(path)

    return make


@pytest.mark.parametrize("changes,message", [
    ({"evaluation__hr": []}, "evaluation.hr names no held-out HR volumes"),
    ({"evaluation__baselines": ["linear", "lanczos"]}, "evaluation.baselines: unknown lanczos"),
    ({"evaluation__slice_axis": "z"}, "evaluation.slice_axis must be auto, 0, 1 or 2"),
    ({"set": ["run.storage_path=/elsewhere"]}, "set: run.storage_path is set by the pipeline"),
    ({"stage2__set": ["data.store=/x.zarr"]}, "stage2.set: data.store is set by the pipeline"),
    ({"set": ["run.name=same"]}, "stage1 and stage2 both train run.name same"),
    ({"set": ["tracking.registered_model=mine"]}, "stage1 and stage2 both register as mine"),
    ({"evaluation__hr": ["/nonexistent/hr.nii.gz"]}, "evaluation.hr: no such file /nonexistent/hr.nii.gz"),
    ({"stage2__config": "configs/debug/stage1.yaml"}, "the pipeline's stage2 needs stage: sr"),
    ({"stage2__set": ["sr.supervision=real"]}, "the pipeline trains stage II without HR"),
    ({"evaluation__lr_spacing": -2}, "evaluation.lr_spacing must be a positive number"),
    ({"evaluation__lr_spacing": 5.5}, "trained over a range of spacing ratios"),
    ({"evaluation__slice_profile": "box"}, "evaluation.slice_profile box needs evaluation.slice_thickness"),
])
def test_bad_pipeline_configs_stop_before_any_step(pipeline_yaml, tmp_path, capsys, changes, message):
    assert main(["--config", pipeline_yaml(**changes)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("supervision, store", [("synthetic", "synthetic_hr.zarr"), ("both", "synthetic_hr.zarr"),
                                                ("inplane", "lr.zarr")])
def test_stage2_trains_on_the_store_of_its_pair_source(pipeline_yaml, tmp_path, supervision, store):
    from cluster.pipeline import Pipeline, load_pipeline_config

    pipeline = Pipeline(load_pipeline_config(pipeline_yaml(stage2__set=[f"sr.supervision={supervision}"])))
    assert pipeline.stage2.data.store == str((tmp_path / "work" / store).resolve())


def test_an_lr_spacing_and_profile_name_their_own_evaluation():
    from cluster.pipeline import evaluation_key

    files = ["configs/pipeline.yaml"]
    plain = evaluation_key(files, 4, "2")
    assert plain == evaluation_key(files, 4, "2", ())  # earlier evaluations keep their key
    assert plain != evaluation_key(files, 4, "2", (5.5, "point", None))
    assert evaluation_key(files, 4, "2", (None, "box", 3.0)) != evaluation_key(files, 4, "2", (None, "box", 4.0))
