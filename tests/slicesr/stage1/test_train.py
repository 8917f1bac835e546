import json

import pytest
import torch

from slicesr.cli import main
from slicesr.stage1.losses import LossWeights
from slicesr.stage1.train import Stage1Trainer, backward_losses, compute_losses, critic_backward, load_vae


def _grads(module):
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


def test_gradient_routing_encoder_gets_no_adversarial_gradient(debug_config):
    trainer = Stage1Trainer(debug_config())
    trainer.model.eval()  # freeze spectral norm's power iteration so both passes see the same weights
    batch = trainer.sampler.sample(4, torch.Generator().manual_seed(0))
    results = {}
    for beta in (0.0, 1.0):
        losses = compute_losses(trainer.engine, batch, torch.Generator().manual_seed(1), with_critic=True)
        w = LossWeights(alpha=100.0, beta=beta, gamma=0.05, eta=0.02)
        backward_losses(trainer.engine, losses, w)
        results[beta] = {name: _grads(getattr(trainer.model, name)) for name in ("encoder", "decoder", "critic")}
    for g0, g1 in zip(results[0.0]["encoder"], results[1.0]["encoder"]):
        torch.testing.assert_close(g0, g1)  # L_adv does not reach E
    assert any(not torch.allclose(a, b) for a, b in zip(results[0.0]["decoder"], results[1.0]["decoder"]))
    assert all(g is None for g in results[1.0]["critic"])  # the generator losses never reach H
    # the critic step reaches only H
    losses = compute_losses(trainer.engine, batch, torch.Generator().manual_seed(1), with_critic=True)
    for name in ("encoder", "decoder"):
        trainer.engine.zero_grad(name)
    critic_backward(trainer.engine, losses, LossWeights(100.0, 1.0, 0.05, 0.02))
    assert all(p.grad is None for p in trainer.model.encoder.parameters())
    assert all(p.grad is None for p in trainer.model.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.critic.parameters())


def test_prior_and_compactness_reach_only_the_encoder(debug_config):
    trainer = Stage1Trainer(debug_config())
    batch = trainer.sampler.sample(4, torch.Generator().manual_seed(0))
    losses = compute_losses(trainer.engine, batch, torch.Generator().manual_seed(1), with_critic=False)
    backward_losses(trainer.engine, losses, LossWeights(alpha=0.0, beta=0.0, gamma=1.0, eta=1.0))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.encoder.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in trainer.model.decoder.parameters())


def test_tiny_model_overfits_a_few_slices(debug_config):
    trainer = Stage1Trainer(debug_config("train.lr=2e-3", "train.batch_size=8", "schedule.phase_steps=[1000,0]",
                                         "train.max_steps=2000"))
    batch = trainer.sampler.sample(8, torch.Generator().manual_seed(0))
    trainer.sampler.sample = lambda batch_size, generator: batch  # the same slices every step
    first = trainer.train_step()["center"]
    for _ in range(60):
        last = trainer.train_step()["center"]
    assert last < 0.5 * first


def test_exact_resume(debug_config, tmp_path):
    phases = "schedule.phase_steps=[1,1]"  # all three phases, and a cap (3) that does not shrink them
    straight = Stage1Trainer(debug_config("run.name=straight", "train.max_steps=6", phases))
    straight.fit()
    interrupted = Stage1Trainer(debug_config("run.name=resumed", "train.max_steps=3", phases))
    interrupted.fit()
    resumed = Stage1Trainer(debug_config("run.name=resumed", "train.max_steps=6", phases))
    resumed.fit()
    assert resumed.step == 6
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    for name in ("encoder", "decoder", "critic"):
        sa = straight.engine.optimizers[name].state_dict()["state"]
        sb = resumed.engine.optimizers[name].state_dict()["state"]
        for index in sa:
            torch.testing.assert_close(sa[index]["exp_avg"], sb[index]["exp_avg"], rtol=0, atol=0)


def test_run_outputs_split_best_and_model_dir(debug_config, tmp_path):
    trainer = Stage1Trainer(debug_config())
    result = trainer.fit()
    run = tmp_path / "runs" / "debug-stage1"
    split = json.loads((run / "split.json").read_text())
    assert split["val"] and not set(split["val"]) & set(split["train"])
    assert sorted(split["val"] + split["train"]) == ["scan000", "scan001", "scan002", "scan003", "scan004"]
    assert (run / "config.yaml").is_file()
    model, config, metadata = load_vae(run / "best")
    assert metadata["stage"] == "vae" and metadata["k"] == 4 and metadata["format_version"] == 1
    assert metadata["val_scans"] == split["val"]
    assert metadata["best_val_center"] == pytest.approx(result["best_val_center"])
    assert config.model.latent_dim == 8
    x = torch.rand(2, 1, 16, 16)
    assert model.decoder(model.encoder(x)[0]).shape == x.shape
    # same split again with the same seed
    assert Stage1Trainer(debug_config("run.name=other")).val_ids == split["val"]


def test_cli_train_vae_and_errors(debug_config, lr_store, tmp_path, capsys):
    args = ["train-vae", "--config", "configs/debug/stage1.yaml", "--set", f"data.store={lr_store}",
            "--set", f"run.storage_path={tmp_path / 'cli'}", "--set", "train.max_steps=2"]
    assert main(args) == 0
    assert (tmp_path / "cli" / "debug-stage1" / "best" / "model.safetensors").is_file()
    assert main(["train-vae", "--config", "configs/debug/stage1.yaml", "--set", "data.store=/nonexistent"]) == 2
    assert "not a slicesr slice store" in capsys.readouterr().err
    assert main(["synthesize", "--model", str(tmp_path), "--input", lr_store, "--output", str(tmp_path / "o")]) == 2
    assert "not a slicesr model directory" in capsys.readouterr().err


def test_resume_refuses_changed_settings_and_recovers_an_interrupted_swap(debug_config, tmp_path):
    Stage1Trainer(debug_config("train.max_steps=3")).fit()
    with pytest.raises(ValueError, match="train.lr"):
        Stage1Trainer(debug_config("train.max_steps=6", "train.lr=1e-3")).fit()
    latest = tmp_path / "runs" / "debug-stage1" / "checkpoints" / "latest"
    latest.rename(latest.with_name(".latest.old-123"))  # killed between the two renames
    resumed = Stage1Trainer(debug_config("train.max_steps=4"))
    resumed.fit()
    assert resumed.step == 4 and latest.is_dir()


def test_engine_factory_owns_the_model(debug_config):
    from slicesr.stage1.train import Engine

    built = []

    def factory(model, lr):
        built.append(Engine(model, lr))
        return built[-1]

    trainer = Stage1Trainer(debug_config("train.max_steps=1"), engine_factory=factory)
    trainer.fit(resume=False)
    assert trainer.model is built[0].model


def test_max_steps_below_the_phases_shrinks_them_in_proportion():
    from slicesr.stage1.train import effective_phase_steps

    assert effective_phase_steps((500, 2500), 6000) == (500, 2500)  # a long run keeps its schedule
    assert effective_phase_steps((500, 2500), 300) == (33, 167)  # 2/3 of 300, in the ratio 1:5
    first, second = effective_phase_steps((100, 800), 90)
    assert first + second == 60 and 6 <= first <= 7  # phase 3 keeps the last third
    assert effective_phase_steps((0, 0), 5) == (0, 0)


def test_trainer_uses_the_shrunk_schedule(debug_config):
    trainer = Stage1Trainer(debug_config("schedule.phase_steps=[30,60]", "train.max_steps=9"))
    assert trainer.phase_steps == (2, 4)
    phases = [trainer.train_step()["phase"] for _ in range(9)]
    assert phases == [0, 0, 1, 1, 1, 1, 2, 2, 2]


def test_the_loop_asks_the_stage_which_steps_may_become_best(debug_config):
    """TrainingLoop.may_become_best: steps it refuses never write best/, even with the lowest validation."""
    offered = []

    class LateBest(Stage1Trainer):
        def may_become_best(self) -> bool:
            offered.append(self.step)
            return self.step >= 6

        def validate(self) -> float:
            return 1.0 / (1 + self.step) if self.step < 6 else 5.0  # the early steps score best

    trainer = LateBest(debug_config("train.max_steps=9", "train.val_every=3"))
    trainer.fit()
    assert offered == [3, 6]  # asked only when the score beats the best so far (step 9 ties step 6)
    assert trainer.best_val == 5.0
    assert load_vae(trainer.best_dir)[2]["step"] == 6


def test_best_comes_only_from_the_all_losses_phase(debug_config):
    """Phases [2, 2]: steps 1-4 train without L_comp; validation at 3 may not become best/, at 6 it does."""
    class EarlyLooksBest(Stage1Trainer):
        def validate(self) -> float:
            return 0.1 if self.step == 3 else 0.5

    trainer = EarlyLooksBest(debug_config("train.max_steps=6", "train.val_every=3"))
    assert trainer.phase_steps == (2, 2)
    trainer.fit()
    assert load_vae(trainer.best_dir)[2]["step"] == 6 and trainer.best_val == 0.5
