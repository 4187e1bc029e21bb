import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from golfcore.data import DistributedTokenLoader, write_shard
from golfcore.assemble import build_model
from golfcore.errors import ConfigError
from golfcore.train import Trainer, lr_scale_at, micro_batches_per_rank, setup_dist
from tests.helpers import CPU, host_with, synthetic_loader, tiny_config


def make_trainer(config, loader=None, records=None, dist=CPU):
    host = host_with(config)
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
    assert events(before) == [("warmdown", 5, None, None), ("switch", 6, "late_qat", True)]
    assert events(after) == []  # the resumed run starts in warmdown with QAT on: nothing changed
    momentum = [r["muon_momentum"] for r in before + after if r["event"] == "train"]
    assert momentum == pytest.approx([0.85 + 0.1 * min(s / 500, 1) for s in (0, 3, 7, 11)])  # the steps logged, less one
