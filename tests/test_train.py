import functools
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import golfcore as golf
from golf_plugins.progressive_context import ProgressiveContext
from golfcore.config import TrainSection, build_section
from golfcore.data import DistributedTokenLoader, write_shard
from golfcore.assemble import build_model
from golfcore.errors import ConfigError
from golfcore.train import Trainer, lr_scale_at, micro_batches_per_rank, setup_dist, training_fraction
from tests.helpers import CPU, host_with, synthetic_loader, tiny_config


def make_trainer(config, loader=None, records=None, dist=CPU, plugins=()):
    host = host_with(config, *plugins)
    model = build_model(config, host, None)
    sink = records if records is not None else []
    return model, Trainer(config, model, host, None, loader or synthetic_loader(config), dist, None, sink.append)


def test_warmdown_by_iterations():
    config = tiny_config()
    config.train.iterations, config.train.warmdown_iters = 10, 4
    scales = [lr_scale_at(config, s, 0.0) for s in range(10)]
    assert scales == [1, 1, 1, 1, 1, 1, 1.0, 0.75, 0.5, 0.25]


def test_warmdown_by_wallclock():
    config = tiny_config()
    config.train.max_wallclock_seconds, config.train.warmdown_iters = 10.0, 100
    # 50 ms/step: warmdown spans 5 s, so at 6 s elapsed 4 s remain -> 0.8
    assert lr_scale_at(config, 120, 6000.0) == pytest.approx(0.8)
    assert lr_scale_at(config, 20, 1000.0) == 1.0
    assert lr_scale_at(config, 200, 10_000.0) == 0.0


def test_training_learns_and_is_reproducible(tmp_path):
    # a deterministic successor rule: t_{j+1} = (5 t_j + 3) mod 64, learnable as a bigram
    tokens = [0]
    for _ in range(5000):
        tokens.append((5 * tokens[-1] + 3) % 64)
    write_shard(tmp_path / "p_train_000000.bin", np.array(tokens, dtype=np.uint16))
    files = [tmp_path / "p_train_000000.bin"]
    config = tiny_config()
    config.train.iterations = 40
    config.train.log_every = 1
    records = []
    model, trainer = make_trainer(config, DistributedTokenLoader(files, 0, 1, torch.device("cpu")), records)
    trainer.run()
    losses = [r["train_loss"] for r in records if r["event"] == "train"]
    assert losses[0] > 4.0 and losses[-1] < 1.0  # from uniform (log 64 = 4.16) to mostly right
    model2, trainer2 = make_trainer(config, DistributedTokenLoader(files, 0, 1, torch.device("cpu")))
    trainer2.run()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_warmup_steps_are_rolled_back():
    config = tiny_config()
    config.train.iterations = 2
    plain, trainer = make_trainer(config)
    trainer.run()
    config.train.warmup_steps = 3
    warmed, trainer = make_trainer(config)
    trainer.run()
    for (name, a), b in zip(plain.named_parameters(), warmed.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_global_batch_is_independent_of_accumulation():
    config = tiny_config()
    config.train.iterations, config.train.micro_batches = 1, 1
    one, trainer = make_trainer(config)
    trainer.run()
    config.train.micro_batches = 2
    two, trainer = make_trainer(config)
    trainer.run()
    for (name, a), b in zip(one.named_parameters(), two.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_wallclock_cap_stops_training():
    config = tiny_config()
    config.train.iterations, config.train.max_wallclock_seconds = 10_000, 0.5
    _, trainer = make_trainer(config)
    outcome = trainer.run()
    assert outcome.stopped_by == "wallclock" and outcome.steps < 10_000


def _shard(tmp_path, n=20_000):
    rng = np.random.default_rng(0)
    path = tmp_path / "t_train_000000.bin"
    write_shard(path, rng.integers(0, 64, n).astype(np.uint16))
    return [path]


def _train_rank(rank, world_size, port, files, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist = setup_dist("cpu")
    config = tiny_config()
    config.train.micro_batches = 2
    loader = DistributedTokenLoader(files, dist.rank, dist.world_size, dist.device)
    model, trainer = make_trainer(config, loader=loader, dist=dist)
    trainer.run()
    if rank == 0:
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, out)
    torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(tmp_path):
    files = _shard(tmp_path)
    config = tiny_config()
    config.train.micro_batches = 2
    loader = DistributedTokenLoader(files, 0, 1, torch.device("cpu"))
    single, trainer = make_trainer(config, loader=loader)
    trainer.run()
    out = tmp_path / "ddp.pt"
    mp.spawn(_train_rank, args=(2, _free_port(), files, out), nprocs=2, join=True)
    ddp = torch.load(out)
    for name, value in single.state_dict().items():
        assert torch.allclose(value, ddp[name], atol=1e-5), name


@pytest.mark.parametrize(
    "micro_batches, batch_tokens, world_size, accum",
    [
        (8, 4096, 2, 4),  # divisible: the recipe's split, no note
        (1, 4096, 2, 1),  # quickstart on 2 processes: one micro-batch each, half the tokens
        (3, 3072, 2, 2),  # 2 per rank: 768-token micro-batches, no larger than the recipe's 1024
        (3, 96, 2, 3),  # 2 per rank would split a sequence (24 tokens each); 3 give one sequence each
        (8, 4096, 3, None),  # 4096 is not a multiple of 3 x 16: no split keeps the batch
    ],
)
def test_micro_batches_per_rank_keeps_the_global_batch(micro_batches, batch_tokens, world_size, accum):
    config = tiny_config()  # seq_len 16
    config.train.micro_batches, config.train.batch_tokens = micro_batches, batch_tokens
    if accum is None:
        with pytest.raises(ConfigError, match="batch_tokens 4096 cannot be split over 3 processes"):
            micro_batches_per_rank(config, world_size)
        return
    got, note = micro_batches_per_rank(config, world_size)
    assert got == accum
    assert batch_tokens % (world_size * got * config.train.seq_len) == 0  # whole sequences, same global batch
    assert world_size * got >= micro_batches  # micro-batches no larger than the recipe's
    assert (note is None) == (micro_batches % world_size == 0)
    if note:
        assert f"each process accumulates {accum} micro-batch" in note and f"batch_tokens {batch_tokens} unchanged" in note


# ----------------------------------------------------------------------------- warmdown fraction, lr floor


def test_warmdown_fraction_and_floor_by_iterations():
    config = tiny_config()
    t = config.train
    t.iterations, t.warmdown_iters, t.warmdown_frac, t.min_lr_scale = 10, 0, 0.5, 0.3
    # fraction s/10; scale min((1 - s/10) / 0.5, 1), floored at 0.3
    expected = [1, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.3]
    assert [lr_scale_at(config, s, 0.0) for s in range(10)] == pytest.approx(expected)


def test_warmdown_fraction_by_wallclock_and_floor_on_warmdown_iters():
    config = tiny_config()
    t = config.train
    t.max_wallclock_seconds, t.warmdown_iters, t.warmdown_frac, t.min_lr_scale = 10.0, 0, 0.85, 0.1
    assert training_fraction(config, 7, 5000.0) == 0.5  # time, not steps, under a cap
    assert lr_scale_at(config, 7, 1000.0) == 1.0  # fraction 0.1 < 0.15
    assert lr_scale_at(config, 7, 5000.0) == pytest.approx(0.5 / 0.85)
    assert lr_scale_at(config, 7, 9500.0) == 0.1  # 0.05 / 0.85 < the floor
    assert lr_scale_at(config, 7, 12000.0) == 0.1
    config = tiny_config()
    config.train.iterations, config.train.warmdown_iters, config.train.min_lr_scale = 10, 4, 0.6
    assert [lr_scale_at(config, s, 0.0) for s in range(10)] == [1, 1, 1, 1, 1, 1, 1.0, 0.75, 0.6, 0.6]


@pytest.mark.parametrize("table, message", [
    ({"warmdown_frac": 0.85}, "warmdown_frac: set warmdown_iters = 0"),
    ({"warmdown_frac": 1.5, "warmdown_iters": 0}, "warmdown_frac = 1.5: must be >= 0 and <= 1"),
    ({"min_lr_scale": 1.0}, "min_lr_scale = 1.0: must be >= 0 and < 1"),
])
def test_warmdown_options_are_checked(table, message):
    with pytest.raises(ConfigError, match=rf"\[train\] {message}"):
        build_section(TrainSection, table, "[train]")


# ----------------------------------------------------------------------------- training-time switches


class Flag(nn.Module):
    """A model attribute the test switch sets; compiled forwards would guard on it."""


class ThreeWay(golf.Plugin):
    """A three-state switch on the model, moving at 25% and 50% of training; records each step's state."""

    name = "three_way"
    seen: list = []

    @golf.hookimpl
    def golf_switches(self, model, config, shape):
        model.flag = Flag()
        model.flag.mode = None
        return golf.TrainingSwitch("mode", ("a", "b", "c"), functools.partial(setattr, model.flag, "mode"), at=(0.25, 0.5))

    @golf.hookimpl
    def golf_step_end(self, model, step, lr_scale):
        self.seen.append((step, model.flag.mode))


def test_switch_fires_at_its_training_fractions_and_warm_up_visits_every_state():
    ThreeWay.seen = []
    config = tiny_config()
    config.train.iterations, config.train.warmup_steps = 8, 1
    records = []
    model, trainer = make_trainer(config, records=records, plugins=(ThreeWay,))
    assert model.flag.mode == "a"  # the first state is applied when the trainer is built
    visited = []
    original = trainer.train_step
    trainer.train_step = lambda step, scale: (visited.append(model.flag.mode), original(step, scale))[1]
    trainer.run()
    assert visited[:3] == ["a", "b", "c"]  # warm-up: one step in the start state, then one in each other
    # fractions 0, 1/8, ..., 7/8 before steps 1..8: "b" from fraction 0.25 (step 3), "c" from 0.5 (step 5)
    assert ThreeWay.seen == [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c"), (6, "c"), (7, "c"), (8, "c")]
    changes = [r for r in records if r.get("event") == "switch" and r["name"] == "mode"]
    assert [(r["step"], r["value"]) for r in changes] == [(2, "b"), (4, "c")]  # logged before steps 3 and 5
    assert [(s.name, s.state) for s in trainer.switches] == [("mode", "c")]


class CountGraphs(golf.Plugin):
    name = "count_graphs"
    seen: list = []

    @golf.hookimpl
    def golf_step_end(self, model, step, lr_scale):
        self.seen.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])


@pytest.mark.slow
def test_compiled_warm_up_compiles_every_state_and_the_timed_steps_none(monkeypatch):
    """A three-state switch on the model's forward (a Python attribute dynamo guards on) and the
    sequence length growing 4 -> 8 -> 16: the warm-up compiles each combination, training compiles nothing."""
    CountGraphs.seen = []
    config = tiny_config(num_layers=2)
    config.train.compile, config.train.warmup_steps, config.train.iterations = "on", 1, 6
    stages = ProgressiveContext.Config(seq_lens=[4, 8, 16], at=[0.3, 0.6])
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))  # dynamo's graphs, no C++ builds
    host = host_with(config, (ProgressiveContext, stages), ThreeWay, CountGraphs)
    model = build_model(config, host, None)
    original_forward = model.forward
    model.forward = lambda x, y: original_forward(x, y) * {"a": 1.0, "b": 2.0, "c": 3.0}[model.flag.mode]
    shapes = []
    loader = synthetic_loader(config)
    next_batch = loader.next_batch
    loader.next_batch = lambda *a: (lambda xy: (shapes.append(tuple(xy[0].shape)), xy)[1])(next_batch(*a))
    trainer = Trainer(config, model, host, None, loader, CPU, None, lambda r: None)
    trainer.run()
    assert len(set(CountGraphs.seen)) == 1 and CountGraphs.seen[0] >= 3  # nothing compiled after warm-up
    # per step (2 micro-batches of 64 tokens): 4 until fraction 0.3 (steps 1-2), 8 until 0.6 (step 3-4), then 16
    assert shapes[-12:] == [(16, 4)] * 4 + [(8, 8)] * 4 + [(4, 16)] * 4
    # warm-up: the start state, then the 4 other combinations the fractions reach: (b, 4), (b, 8), (c, 8), (c, 16)
    assert len(shapes) == 2 * (1 + 4) + 12


class LastLayerLater(golf.Plugin):
    """The last layer runs only once half of training is done: a layer slot's golf.Switch, driven
    by a golf.ModuleSwitch with a fraction (the shape delayed recurrence takes)."""

    name = "last_layer_later"
    seen: list = []

    @golf.hookimpl
    def golf_edit_model(self, description, config, quantizer):
        description.layers[-1].switch = "late_layer"

    @golf.hookimpl
    def golf_switches(self, model, config, shape):
        return golf.ModuleSwitch("late_layer", [model.switches["late_layer"]], at=(0.5,))

    @golf.hookimpl
    def golf_step_end(self, model, step, lr_scale):
        self.seen.append(model.switches["late_layer"].compile_switch)


def test_a_layer_slot_switch_turns_on_at_its_fraction():
    LastLayerLater.seen = []
    config = tiny_config()
    config.train.iterations, config.train.warmup_steps = 4, 1
    model, trainer = make_trainer(config, plugins=(LastLayerLater,))
    assert [(s.name, s.at) for s in trainer.switches] == [("late_layer", (0.5,))]  # the declared one, not a second
    tokens = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        for p in model.parameters():  # o and down start at zero: give the layer an effect
            p.add_(torch.randn_like(p) * 0.05)
        off = model.logits(tokens)
        model.switches["late_layer"].compile_switch = True
        assert not torch.equal(off, model.logits(tokens))  # the layer now runs
        model.switches["late_layer"].compile_switch = False
    trainer.run()
    assert LastLayerLater.seen == [False, False, True, True]


def test_warmdown_and_switch_records_are_logged_once_across_a_resume(tmp_path):
    from golfcore.checkpoint import Checkpoints
    from golfcore.errors import TrainingInterrupted
    from golf_plugins.ema import Ema
    from golf_plugins.late_qat import LateQat
    from golf_plugins.swa import Swa
    from tests.test_checkpoint import SignalAt, make, stateful_config

    shard = [tmp_path / "t_train_000000.bin"]
    write_shard(shard[0], np.random.default_rng(0).integers(0, 64, 3000).astype(np.uint16))
    classes = (Ema, Swa, LateQat, SignalAt)
    # 12 steps, warmdown_iters 8: lr scale (12 - s) / 8 is 7/8 on step s = 5, the first below 1 (and
    # below late QAT's 0.9), so warmdown starts after 5 steps and QAT is on after 6
    config, before, after = stateful_config(), [], []
    store = Checkpoints(tmp_path / "run", config, "code")
    store.run_dir.mkdir()
    SignalAt.at = 6
    try:
        with pytest.raises(TrainingInterrupted):
            make(config, shard, *classes, checkpoints=store, records=before)[2].run()
    finally:
        SignalAt.at = 0
    make(stateful_config(), shard, *classes, checkpoints=store, records=after)[2].run(store.load(torch.device("cpu")))
    events = lambda records: [(r["event"], r["step"], r.get("name"), r.get("value")) for r in records
                              if r["event"] in ("warmdown", "switch")]
    assert events(before) == [("warmdown", 5, None, None), ("switch", 6, "FakeQuantize", True)]
    assert events(after) == []  # the resumed run starts in warmdown with QAT on: nothing changed
    momentum = [r["muon_momentum"] for r in before + after if r["event"] == "train"]
    assert momentum == pytest.approx([0.85 + 0.1 * min(s / 500, 1) for s in (0, 3, 7, 11)])  # the steps logged, less one
