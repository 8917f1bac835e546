"""The distributed engines apply the in-process step: 2 ranks on half a batch each == 1 process on all of it.

Stage I's adversarial step (E, D, then H on the same batch) and Stage II's L1 step, under DDP and
DeepSpeed ZeRO 0/1/2, on a real 2-process gloo group (no Ray here; the Ray runs are in test_train).
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cluster.engines import engine_factory, load_deepspeed_config, resolved_deepspeed_config
from slicesr.config import load_config
from slicesr.models.generators import build_generator
from slicesr.models.vae_gan import VaeGan
from slicesr.stage1.losses import LossWeights
from slicesr.stage1.train import Engine as VaeEngine
from slicesr.stage1.train import size_from_config, training_step
from slicesr.stage2.train import generator_engine, generator_size

WORLD = int(os.environ.get("TEST_WORLD", "2"))
LR = 4e-4  # set after construction (at 1e-3) on the distributed engines
WEIGHTS = LossWeights(alpha=100.0, beta=1.0, gamma=0.05, eta=0.02)


def _config(stage, strategy, zero):
    path = "configs/debug/stage1.yaml" if stage == "vae" else "configs/debug/stage2.yaml"
    return load_config(path, [f"cluster.strategy={strategy}", f"cluster.deepspeed_config=configs/deepspeed/zero{zero}.json",
                              "train.batch_size=2"])


def _inputs(stage):
    g = torch.Generator().manual_seed(5)
    if stage == "vae":
        return torch.rand(4, 3, 16, 16, generator=g), torch.randn(4, 8, generator=g)
    return torch.rand(4, 1, 9, 12, 12, generator=g), torch.rand(4, 1, 9, 12, 12, generator=g)


def _fixed_noise(eps):
    # the reparameterisation noise of the samples this rank holds, whatever its batch slice
    return staticmethod(lambda mu, logvar, generator=None: mu + eps * torch.exp(0.5 * logvar))


def _step(stage, engine, inputs, eps_or_target):
    if stage == "vae":
        original = VaeGan.__dict__["sample"]
        VaeGan.sample = _fixed_noise(eps_or_target)
        try:
            training_step(engine, inputs, None, WEIGHTS)
        finally:
            VaeGan.sample = original
    else:
        loss = torch.nn.functional.l1_loss(engine.forward("generator", inputs), eps_or_target)
        engine.zero_grad("generator")
        engine.backward("generator", loss)
        engine.step("generator")


def _model(stage, config):
    torch.manual_seed(0)
    return VaeGan(size_from_config(config)) if stage == "vae" else build_generator(generator_size(config))


def _worker(rank, stage, strategy, zero, rendezvous, port, out):
    # The group meets through a file, not a port picked in advance: a port found free here can be taken by
    # another process (a Ray worker of an earlier test) before rank 0 binds it, and rank 1 then talks to a
    # stranger (seen once in CI as a SIGABRT in rank 1). MASTER_* only name DeepSpeed's shared-memory segments,
    # nothing binds the port.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu")
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        config = _config(stage, strategy, zero)
        ds = resolved_deepspeed_config(config.cluster) if strategy == "deepspeed" else None
        engine = engine_factory(config, torch.device("cpu"), ds)(_model(stage, config), 1e-3)
        engine.set_lr(LR)  # the schedule's rate reaches the step of every engine (ZeRO's partitions included)
        inputs, other = _inputs(stage)
        part = slice(rank * 4 // WORLD, (rank + 1) * 4 // WORLD)
        for _ in range(2):  # two steps: the second uses the optimizer state the first one left
            _step(stage, engine, inputs[part], other[part])
        if rank == 0:
            torch.save({k: v.detach().clone() for k, v in engine.model.state_dict().items()}, out)
        engine.close()
        dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["vae", "sr"])
@pytest.mark.parametrize("strategy,zero", [("ddp", 0), ("deepspeed", 0), ("deepspeed", 1), ("deepspeed", 2)])
def test_two_ranks_match_the_in_process_step(stage, strategy, zero, tmp_path):
    config = _config(stage, strategy, zero)
    model = _model(stage, config)
    engine = VaeEngine(model, LR) if stage == "vae" else generator_engine(model, LR)
    inputs, other = _inputs(stage)
    largest_gradient = {}
    for _ in range(2):
        _step(stage, engine, inputs, other)
        for name, p in model.named_parameters():
            if p.grad is not None:
                largest_gradient[name] = max(largest_gradient.get(name, 0.0), p.grad.abs().max().item())
    reference = model.state_dict()
    initial = _model(stage, config).state_dict()
    # A conv bias right before an instance norm has a zero gradient in exact arithmetic; Adam turns
    # its rounding noise into +-lr steps whose sign depends on the summation order. Those are skipped,
    # judged on both steps (rounding noise in the first step alone already moves them).
    null_gradient = {name for name, largest in largest_gradient.items() if largest < 1e-6 and name.endswith(".bias")}

    out = tmp_path / "rank0.pt"
    mp.start_processes(_worker, args=(stage, strategy, zero, tmp_path / "rendezvous", _free_port(), out), nprocs=WORLD, start_method="spawn")
    distributed = torch.load(out, weights_only=True)
    moved = 0
    for key, value in reference.items():
        if key in null_gradient:
            continue
        torch.testing.assert_close(distributed[key], value, rtol=1e-4, atol=1e-6, msg=key)
        moved += int(not torch.equal(value, initial[key]))
    assert moved > len(reference) // 3  # the step changed the weights: the comparison is not vacuous


def test_deepspeed_configs_are_checked(tmp_path):
    assert load_deepspeed_config("configs/deepspeed/zero2.json")["zero_optimization"]["stage"] == 2
    for body, message in [('{"zero_optimization": {"stage": 3}}', "stage 3"),
                          ('{"train_batch_size": 8}', "train.batch_size"),
                          ('{"optimizer": {"type": "Adam"}}', "train.lr"),
                          ('{"zero_optimization": {"stage": 1, "offload_optimizer": {}}}', "offload"),
                          ("not json", "not JSON")]:
        path = tmp_path / "ds.json"
        path.write_text(body)
        with pytest.raises(ValueError, match=message):
            load_deepspeed_config(str(path))
    with pytest.raises(ValueError, match="no file"):
        load_deepspeed_config("configs/deepspeed/missing.json")
