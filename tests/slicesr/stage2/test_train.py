import json

import numpy as np
import pytest
import torch

from slicesr.cli import main
from slicesr.stage2.train import Stage2Trainer, load_generator


def test_patches_are_degraded_hr_on_the_hr_grid(sr_config):
    trainer = Stage2Trainer(sr_config())
    inputs, target = trainer.sampler.sample(3, torch.Generator().manual_seed(0))
    assert inputs.shape == target.shape == (3, 1, 9, 12, 12)
    # T keeps slices 0, 4, 8 bit-exactly; the input is linear between them
    torch.testing.assert_close(inputs[:, :, ::4], target[:, :, ::4], rtol=0, atol=0)
    torch.testing.assert_close(inputs[:, :, 2], 0.5 * (target[:, :, 0] + target[:, :, 4]))


def test_synthetic_patches_start_on_acquired_slices(sr_config):
    trainer = Stage2Trainer(sr_config())
    starts = []
    original = trainer.sampler.array

    class Spy:
        def __init__(self, array):
            self.array = array

        def __getitem__(self, index):
            starts.append(index[0].start)
            return self.array[index]

    trainer.sampler.array = lambda scan_id: Spy(original(scan_id))
    trainer.sampler.sample(16, torch.Generator().manual_seed(1))
    assert starts and all(s % 4 == 0 for s in starts) and len(set(starts)) > 1


def test_generator_learns_and_resumes_exactly(sr_config):
    straight = Stage2Trainer(sr_config("run.name=straight"))
    straight.fit()
    first = Stage2Trainer(sr_config("run.name=resumed", "train.max_steps=3"))
    first.fit()
    resumed = Stage2Trainer(sr_config("run.name=resumed"))
    resumed.fit()
    assert resumed.step == 6
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(value, resumed.model.state_dict()[key], rtol=0, atol=0, msg=key)


def test_tiny_generator_fits_fixed_patches(sr_config):
    trainer = Stage2Trainer(sr_config("train.lr=3e-3", "model.num_filters=8"))
    batch = trainer.sampler.sample(2, torch.Generator().manual_seed(0))
    trainer.sampler.sample = lambda batch_size, generator: batch
    first = trainer.train_step()
    assert first["l1"] == pytest.approx(first["l1_linear"], rel=1e-5)  # an untrained DeepResolve is linear
    for _ in range(80):
        last = trainer.train_step()
    assert last["l1"] < 0.8 * first["l1"]


def test_patches_are_redrawn_until_foreground(sr_config, real_hr_store):
    def fractions(*overrides):
        trainer = Stage2Trainer(sr_config("sr.patch_size=[5,6,6]", "sr.supervision=real", *overrides,
                                          store=real_hr_store))
        _, target = trainer.sampler.sample(64, torch.Generator().manual_seed(0))
        return (target > 0.05).float().mean(dim=(1, 2, 3, 4))

    loose, strict = fractions(), fractions("sr.min_foreground=0.6")
    assert float(loose.min()) < 0.6 <= float(strict.min())


def test_model_dir_metadata_and_labels(sr_config, real_hr_store, tmp_path):
    trainer = Stage2Trainer(sr_config("model.name=dcsrn"))
    trainer.fit()
    model, config, metadata = load_generator(trainer.best_dir)
    assert metadata["stage"] == "sr" and metadata["k"] == 4 and metadata["supervision"] == "synthetic"
    assert metadata["method"] == "Proposed with DCSRN"
    x = torch.rand(1, 1, 9, 10, 11)
    assert model(x).shape == x.shape
    supervised = Stage2Trainer(sr_config("sr.supervision=real", "run.name=upper", store=real_hr_store))
    supervised.fit()
    assert load_generator(supervised.best_dir)[2]["method"] == "DeepResolve only"
    split = json.loads((tmp_path / "runs" / "upper" / "split.json").read_text())
    assert split["val"] and not set(split["val"]) & set(split["train"])


def test_store_and_supervision_must_agree(sr_config, real_hr_store):
    with pytest.raises(ValueError, match="sr.supervision=real"):
        Stage2Trainer(sr_config(store=real_hr_store))
    with pytest.raises(ValueError, match="synthetic HR volumes but sr.supervision is real"):
        Stage2Trainer(sr_config("sr.supervision=real"))
    with pytest.raises(ValueError, match="K=4, but sr.k is 2"):
        Stage2Trainer(sr_config("sr.k=2", "sr.patch_size=[9,12,12]"))
    with pytest.raises(ValueError, match="patch_size"):
        sr_config("sr.patch_size=[10,12,12]")
    with pytest.raises(ValueError, match="stage sr trains a generator"):
        sr_config("model.name=vae_gan")


def test_cli_train_sr(sr_config, synthetic_store, tmp_path, capsys):
    args = ["train-sr", "--config", "configs/debug/stage2.yaml", "--set", f"data.store={synthetic_store}",
            "--set", f"run.storage_path={tmp_path / 'cli'}", "--set", "train.max_steps=2"]
    assert main(args) == 0
    assert "Proposed with DeepResolve" in capsys.readouterr().out
    assert (tmp_path / "cli" / "debug-stage2" / "best" / "model.safetensors").is_file()
    assert main(["train-sr", "--config", "configs/debug/stage1.yaml"]) == 2
    assert "stage: sr" in capsys.readouterr().err


def test_workers_train_on_disjoint_shards_of_the_training_scans(sr_config, synthetic_store):
    shards = [Stage2Trainer(sr_config("sr.patch_size=[5,6,6]"), shard=(rank, 2)) for rank in range(2)]
    first, second = (set(t.shard_ids) for t in shards)
    assert first and second and not first & second
    assert first | second == set(shards[0].train_ids)
    assert not (first | second) & set(shards[0].val_ids)
    for trainer in shards:  # each samples only its own scans
        assert set(trainer.sampler.scan_ids) <= set(trainer.shard_ids)
    # rank 0 of a sharded run draws its batches with the in-process run's generator
    assert torch.equal(shards[0].data_rng.get_state(), Stage2Trainer(sr_config()).data_rng.get_state())
    assert not torch.equal(shards[0].data_rng.get_state(), shards[1].data_rng.get_state())


@pytest.mark.parametrize("subpixel", [False, True])
def test_throughplane2d_trains_resumes_and_super_resolves_a_scan(sr_config, tmp_path, subpixel):
    from slicesr.inference import infer_volume, load_method
    from slicesr.nifti import Volume

    overrides = ("model.name=throughplane2d", "model.num_layers=3", "model.num_filters=4",
                 f"model.subpixel={str(subpixel).lower()}")
    straight = Stage2Trainer(sr_config(*overrides, "run.name=tp_straight"))
    straight.fit()
    Stage2Trainer(sr_config(*overrides, "run.name=tp_resumed", "train.max_steps=3")).fit()
    resumed = Stage2Trainer(sr_config(*overrides, "run.name=tp_resumed"))
    resumed.fit()
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(value, resumed.model.state_dict()[key], rtol=0, atol=0, msg=key)
    method = load_method(str(straight.best_dir))
    assert method.label == "Proposed with through-plane 2D" + " (sub-pixel)" * subpixel and method.trained_k == 4
    assert method.model.subpixel_k == (4 if subpixel else 0)  # the model directory rebuilds the same network
    data = np.random.default_rng(0).random((20, 18, 5)).astype(np.float32)
    image = infer_volume(Volume(data, np.diag([1.0, 1.0, 4.0, 1.0]), "x", "float32"), method, 4, 2)
    assert image.shape == (20, 18, 17)
    np.testing.assert_array_equal(np.asarray(image.dataobj)[..., ::4], data)  # acquired slices kept


def test_a_checkpoint_saved_before_model_subpixel_existed_resumes(sr_config):
    from slicesr.training import TRAINING_STATE

    overrides = ("model.name=throughplane2d", "model.num_layers=3", "model.num_filters=4", "run.name=older")
    Stage2Trainer(sr_config(*overrides, "train.max_steps=3")).fit()
    state_path = Stage2Trainer(sr_config(*overrides)).latest_dir / TRAINING_STATE
    state = torch.load(state_path, weights_only=True)
    identity = json.loads(state["identity"])
    assert identity["model"].pop("subpixel", "absent") == "absent"  # the plain network's identity has no such key
    state["identity"] = json.dumps(identity, sort_keys=True)  # as a checkpoint of an older slicesr saved it
    torch.save(state, state_path)
    resumed = Stage2Trainer(sr_config(*overrides))
    assert resumed.fit()["step"] == resumed.config.train.max_steps
    # a sub-pixel network is another model: it does not resume the plain one's checkpoint
    with pytest.raises(ValueError, match="other settings \\(model\\)"):
        Stage2Trainer(sr_config(*overrides, "model.subpixel=true")).fit()


def test_loss_on_missing_slices_only(sr_config):
    trainer = Stage2Trainer(sr_config("sr.loss_slices=missing"))
    inputs, target = trainer.sampler.sample(2, torch.Generator().manual_seed(0))
    output = target.clone()
    output[:, :, ::4] += 1.0  # wrong only at the acquired slices: the masked loss does not see it
    assert float(trainer.loss(output, target)) == 0.0
    output[:, :, 1] += 1.0
    assert float(trainer.loss(output, target)) == pytest.approx(1.0 / 6)  # 1 of the 6 missing slices of 9
    assert float(Stage2Trainer(sr_config()).loss(output, target)) == pytest.approx(4.0 / 9)  # the paper's: all 9
    assert trainer.identity()["sr"]["loss_slices"] == "missing"
    with pytest.raises(ValueError, match="loss_slices"):
        sr_config("sr.loss_slices=acquired")


def test_best_stays_the_untrained_model_when_training_validates_worse(sr_config, caplog):
    """Validation runs before the first step: a run that only learns something wrong (here: targets
    shifted by 0.5) keeps the untrained generator (= its interpolated input) as best/, with a warning,
    instead of its least bad trained step."""
    trainer = Stage2Trainer(sr_config("run.name=wrong", "train.lr=1e-2", "train.max_steps=6", "train.val_every=2"))
    sample = trainer.sampler.sample
    trainer.sampler.sample = lambda batch_size, generator: (lambda pair: (pair[0], pair[1] + 0.5))(
        sample(batch_size, generator))
    with caplog.at_level("WARNING"):
        trainer.fit()
    metadata = json.loads((trainer.best_dir / "metadata.json").read_text())
    assert metadata["step"] == 0
    assert "best/ is the untrained model" in caplog.text
    model = load_generator(trainer.best_dir)[0]
    inputs, _ = trainer.sampler.sample(2, torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), inputs, rtol=0, atol=0)


def test_best_is_a_trained_step_when_it_validates_better(sr_config):
    trainer = Stage2Trainer(sr_config("run.name=learns", "train.lr=3e-3", "train.max_steps=40", "train.val_every=20",
                                      "model.num_filters=8"))
    trainer.fit()
    assert json.loads((trainer.best_dir / "metadata.json").read_text())["step"] in (20, 40)


def test_a_run_starts_from_another_models_weights(sr_config, tmp_path):
    """sr.init_from: the generator starts from a model directory's weights (recorded in the metadata); a
    generator of another size is refused before anything is written; a resumed run keeps its checkpoint."""
    source = Stage2Trainer(sr_config("run.name=source", "train.max_steps=3", "train.val_every=3", "train.seed=7"))
    source.fit()
    weights = load_generator(source.best_dir)[0].state_dict()
    fresh = Stage2Trainer(sr_config("run.name=fresh"))
    assert any(not torch.equal(fresh.model.state_dict()[k], v) for k, v in weights.items())

    # a learning rate that makes every step worse than the start: best/ must still be one of its steps
    tuned = Stage2Trainer(sr_config("run.name=tuned", f"sr.init_from={source.best_dir}", "train.max_steps=2",
                                    "train.val_every=1", "sr.ratio_range=[2, 4]", "train.lr=0.05"))
    assert tuned.model.state_dict().keys() == weights.keys()
    for key, value in tuned.model.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0, msg=key)
    tuned.fit()
    metadata = json.loads((tuned.best_dir / "metadata.json").read_text())
    assert metadata["init_from"] == str(source.best_dir)
    assert metadata["step"] > 0  # best/ is one of this run's steps, never the model it started from

    resumed = Stage2Trainer(sr_config("run.name=tuned", f"sr.init_from={source.best_dir}", "train.max_steps=3",
                                      "train.val_every=1", "sr.ratio_range=[2, 4]", "train.lr=0.05"))
    assert resumed.try_resume() and resumed.step == 2
    for key, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, tuned.model.state_dict()[key])

    with pytest.raises(ValueError, match="sr.init_from .* set model"):
        Stage2Trainer(sr_config("run.name=other", f"sr.init_from={source.best_dir}", "model.num_filters=5"))
    with pytest.raises(ValueError, match=r"sr.init_from: .*missing.* is not a slicesr model directory"):
        Stage2Trainer(sr_config("run.name=other", f"sr.init_from={tmp_path / 'missing'}"))
    assert not (tmp_path / "runs" / "other").exists()


def test_a_scheduled_run_applies_its_rates(sr_config):
    schedule = ["train.lr_warmup_steps=2", "train.lr_decay_steps=3", "train.log_every=1"]
    straight = Stage2Trainer(sr_config("run.name=straight", *schedule))
    rates = {}

    class Rates:
        def report(self, step, metrics):
            if "lr" in metrics:
                rates[step] = metrics["lr"]

    straight.reporter = Rates()
    straight.fit()
    lr = straight.config.train.lr
    assert rates == pytest.approx({1: lr / 2, 2: lr, 3: lr, 4: lr, 5: lr * 2 / 3, 6: lr / 3})
    assert straight.engine.optimizers["generator"].param_groups[0]["lr"] == pytest.approx(lr / 3)
    # a run that decayed does not resume into a longer one (its last steps were taken at a falling rate)
    with pytest.raises(ValueError, match="took step 5 at another learning rate"):
        Stage2Trainer(sr_config("run.name=straight", *schedule, "train.max_steps=10")).fit()


def test_a_decay_branches_off_a_constant_run(sr_config):
    """Steps taken at the rate the new schedule gives them resume: a decay appended to a constant run is the
    run that planned the decay from the start."""
    planned = Stage2Trainer(sr_config("run.name=planned", "train.lr_decay_steps=3"))
    planned.fit()
    Stage2Trainer(sr_config("run.name=branched", "train.max_steps=3")).fit()
    branched = Stage2Trainer(sr_config("run.name=branched", "train.lr_decay_steps=3"))
    branched.fit()
    assert branched.step == 6
    for key, value in planned.model.state_dict().items():
        torch.testing.assert_close(value, branched.model.state_dict()[key], rtol=0, atol=0, msg=key)
    with pytest.raises(ValueError, match="took step 1 at another learning rate"):  # a warm-up it never had
        Stage2Trainer(sr_config("run.name=branched", "train.max_steps=8", "train.lr_warmup_steps=2")).fit()


def test_a_scheduled_run_resumes_exactly(sr_config):
    schedule = ["train.lr_warmup_steps=2", "train.lr_decay_steps=3", "train.checkpoint_every=2"]
    straight = Stage2Trainer(sr_config("run.name=straight", *schedule))
    straight.fit()
    killed = Stage2Trainer(sr_config("run.name=resumed", *schedule))
    original_step = killed.train_step

    def train_step():
        if killed.step == 4:  # killed inside the decay, after the checkpoint of step 4
            raise KeyboardInterrupt
        return original_step()

    killed.train_step = train_step
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    resumed = Stage2Trainer(sr_config("run.name=resumed", *schedule))
    resumed.fit()
    assert resumed.step == 6
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(value, resumed.model.state_dict()[key], rtol=0, atol=0, msg=key)
