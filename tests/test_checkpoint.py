"""Checkpoints, resume, divergence and stop signals: in-process trainers on tiny models, then
the `golf` command killed with SIGTERM and resumed (one process and two gloo processes)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import golfcore as golf
from golfcore.assemble import build_model
from golfcore.checkpoint import Checkpoints, flatten, unflatten
from golfcore.data import DistributedTokenLoader, write_shard
from golfcore.errors import CheckpointError, DivergedError, TrainingInterrupted
from golfcore.train import Trainer
from golf_plugins.ema import Ema
from golf_plugins.late_qat import FakeQuantize, LateQat
from golf_plugins.progressive_context import ProgressiveContext
from golf_plugins.swa import Swa
from tests.helpers import CPU, host_with, tiny_config
from tests.test_cli import REPO, tiny_recipe


@pytest.fixture
def shard(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "t_train_000000.bin"
    write_shard(path, rng.integers(0, 64, 3000).astype(np.uint16))
    return [path]


class SignalAt(golf.Plugin):
    """Sends this process SIGTERM at the end of step `at` (0 = never)."""

    name = "signal_at"
    at = 0

    @golf.hookimpl
    def golf_step_end(self, model, step, lr_scale):
        if step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


class NanAt(golf.Plugin):
    """A loss penalty that turns NaN at step `at`."""

    name = "nan_at"
    at = 0

    def __init__(self, config=None):
        super().__init__(config)
        self.done = 0

    @golf.hookimpl
    def golf_loss_penalty(self, model, config, quantizer):
        weight = next(model.parameters())  # through a weight, so the gradients turn NaN too
        return lambda lr_scale: weight.sum() * (float("nan") if self.done + 1 == self.at else 0.0)

    @golf.hookimpl
    def golf_step_end(self, model, step, lr_scale):
        self.done = step


def stateful_config():
    """12 steps whose warmdown switches on SWA snapshots and late QAT, beside an EMA."""
    config = tiny_config()
    t = config.train
    t.iterations, t.warmdown_iters, t.log_every, t.checkpoint_every = 12, 8, 4, 4
    return config


def make(config, files, *classes, checkpoints=None, records=None):
    host = host_with(config, *classes)
    config.plugins["swa"].every, config.plugins["swa"].start_scale = 1, 0.9  # lr scale < 0.9 from step 6 on
    config.plugins["late_qat"].threshold = 0.9
    model = build_model(config, host, None)
    loader = DistributedTokenLoader(files, 0, 1, torch.device("cpu"))
    sink = records if records is not None else []
    return model, host, Trainer(config, model, host, None, loader, CPU, None, sink.append, checkpoints=checkpoints)


def test_flatten_round_trips_optimizer_states():
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], betas=(0.9, 0.95))
    p.grad = torch.randn(3, 2)
    opt.step()
    tensors = {}
    structure = json.loads(json.dumps(flatten(opt.state_dict(), tensors)))
    back = unflatten(structure, tensors)
    assert back["param_groups"][0]["betas"] == (0.9, 0.95) and list(back["state"]) == [0]
    assert torch.equal(back["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(TypeError, match="holds a object"):
        flatten({"x": object()}, {})


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, shard):
    classes = (Ema, Swa, LateQat, SignalAt)
    reference, _, trainer = make(stateful_config(), shard, *classes)
    trainer.run()

    config = stateful_config()
    store = Checkpoints(tmp_path / "run", config, "code")
    store.run_dir.mkdir()
    SignalAt.at = 6  # not a multiple of checkpoint_every: the signal writes its own checkpoint
    try:
        _, _, trainer = make(config, shard, *classes, checkpoints=store)
        with pytest.raises(TrainingInterrupted, match="SIGTERM after step 6: checkpoint saved"):
            trainer.run()
    finally:
        SignalAt.at = 0
    state = store.load(torch.device("cpu"))
    assert state["step"] == 6 and state["plugins"]["swa"]["count"] > 0
    assert state["plugins"]["late_qat"] == {"on": True}  # QAT was on, and a resumed run starts with it on

    resumed, host, trainer = make(stateful_config(), shard, *classes, checkpoints=store)
    outcome = trainer.run(store.load(torch.device("cpu")))
    assert outcome.resumed_from == 6 and outcome.steps == 12
    assert host.plugins["swa"].snapshot_steps == list(range(6, 13))
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("stop_at", [4, 8])
def test_resumed_across_a_sequence_length_switch_equals_uninterrupted(tmp_path, shard, stop_at):
    """seq_len 8 until half of training, then 16: stopped before the switch (step 4) or after it
    (step 8), the resumed run is bit-identical; the checkpoint holds the switch's state."""
    stages = (ProgressiveContext, ProgressiveContext.Config(seq_lens=[8, 16], at=[0.5]))

    def trainer(checkpoints=None):
        config = stateful_config()
        return make(config, shard, Ema, Swa, LateQat, stages, SignalAt, checkpoints=checkpoints)

    reference, _, t = trainer()
    t.run()
    store = Checkpoints(tmp_path / "run", stateful_config(), "code")
    store.run_dir.mkdir()
    SignalAt.at = stop_at
    try:
        with pytest.raises(TrainingInterrupted):
            trainer(store)[2].run()
    finally:
        SignalAt.at = 0
    state = store.load(torch.device("cpu"))
    assert state["switches"]["seq_len"] == (8 if stop_at < 6 else 16)  # the switch fires before step 7 (fraction 0.5)
    resumed, _, t = trainer(store)
    assert t.shape.seq_len == 8
    t.run(state)
    assert t.shape.seq_len == 16
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_plugin_state_round_trips(tmp_path, shard):
    config = stateful_config()
    config.train.iterations = 8
    model, host, trainer = make(config, shard, Ema, Swa, LateQat)
    trainer.run()
    store = Checkpoints(tmp_path, config, "code")
    store.save(trainer.state_dict(8, 0.0))
    _, host2, trainer2 = make(stateful_config(), shard, Ema, Swa, LateQat)
    trainer2.load_state_dict(store.load(torch.device("cpu")))
    ema, ema2 = host.plugins["ema"], host2.plugins["ema"]
    assert all(torch.equal(a, b) for a, b in zip(ema.average.tensors, ema2.average.tensors))
    swa, swa2 = host.plugins["swa"], host2.plugins["swa"]
    assert swa2.count == swa.count > 0 and swa2.snapshot_steps == swa.snapshot_steps
    assert all(torch.equal(a, b) for a, b in zip(swa.total.tensors, swa2.total.tensors))
    assert all(m.compile_switch for m in trainer2.model.modules() if isinstance(m, FakeQuantize))


def test_checkpoint_damage_and_mismatch_are_refused_by_name(tmp_path, shard):
    config = stateful_config()
    _, _, trainer = make(config, shard, Ema, Swa, LateQat)
    store = Checkpoints(tmp_path, config, "code-a")
    store.save(trainer.state_dict(0, 0.0))
    other = stateful_config()
    other.train.iterations = 13
    _, _, _ = make(other, shard, Ema, Swa, LateQat)
    with pytest.raises(CheckpointError, match=r"different recipe: train.iterations: 12 in the checkpoint, 13 now"):
        Checkpoints(tmp_path, other, "code-a").load(torch.device("cpu"))
    with pytest.raises(CheckpointError, match="different code"):
        Checkpoints(tmp_path, config, "code-b").load(torch.device("cpu"))
    tensors = tmp_path / "checkpoint" / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=f"{tensors}.*corrupt"):
        store.load(torch.device("cpu"))
    (tmp_path / "checkpoint" / "manifest.json").write_text("{")
    with pytest.raises(CheckpointError, match="manifest.json is unreadable"):
        store.load(torch.device("cpu"))


def test_planted_nan_stops_within_one_logging_interval(shard):
    config = tiny_config()
    config.train.iterations, config.train.log_every = 20, 5
    NanAt.at = 7
    try:
        records = []
        host = host_with(config, NanAt)
        model = build_model(config, host, None)
        loader = DistributedTokenLoader(shard, 0, 1, torch.device("cpu"))
        with pytest.raises(DivergedError, match="diverged at step 7: .* not finite \\(seen at step 10\\)") as e:
            Trainer(config, model, host, None, loader, CPU, None, records.append).run()
    finally:
        NanAt.at = 0
    assert e.value.step == 7 and e.value.exit_code == 4
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 5]  # nothing logged once diverged


def test_loss_spike_stops_the_run(shard):
    config = tiny_config()
    config.train.iterations, config.train.log_every, config.train.max_loss_spike = 30, 1, 1.5
    host = host_with(config)
    model = build_model(config, host, None)
    trainer = Trainer(config, model, host, None, DistributedTokenLoader(shard, 0, 1, torch.device("cpu")), CPU, None, [].append)
    trainer.logged_losses.extend([1.0] * 10)  # a loss of ~4.2 (uniform over 64) is a 4x spike over these
    with pytest.raises(DivergedError, match=r"step 1: train loss 4\.\d+ is 4\.\dx the mean"):
        trainer.run()


def test_checkpoint_every_is_typed():
    from golfcore.config import TrainSection, build_section
    from golfcore.errors import ConfigError

    assert build_section(TrainSection, {"checkpoint_every": "300s"}, "[train]").checkpoint_interval == (0, 300.0)
    assert build_section(TrainSection, {"checkpoint_every": 50}, "[train]").checkpoint_interval == (50, 0.0)
    with pytest.raises(ConfigError, match=r"\[train\] checkpoint_every: '5m' is not a step count"):
        build_section(TrainSection, {"checkpoint_every": "5m"}, "[train]")


# ----------------------------------------------------------------------------- the command, killed and resumed

PROBE = '''
import os, time
from pathlib import Path
from safetensors.torch import save_file
import golfcore as golf

class Probe(golf.Plugin):
    """Test probe: at step PROBE_PAUSE_AT tells the test (a file) and waits for its go-ahead;
    at train end saves the final weights."""
    name = "probe"

    @golf.hookimpl
    def golf_step_end(self, model, step, lr_scale):
        folder = Path(os.environ["PROBE_DIR"])
        if step == int(os.environ.get("PROBE_PAUSE_AT", "0")):
            (folder / f"paused-{os.environ.get('RANK', '0')}").touch()
            deadline = time.time() + 120
            while not (folder / "go").exists() and time.time() < deadline:
                time.sleep(0.05)

    @golf.hookimpl
    def golf_train_end(self, model):
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(state, Path(os.environ["PROBE_DIR"]) / f"weights-{os.environ.get('RANK', '0')}.safetensors")
'''


def launch(args, probe_dir, pause_at=0):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PROBE_DIR": str(probe_dir), "PROBE_PAUSE_AT": str(pause_at)}
    return subprocess.Popen([sys.executable, "-m", "golf_cli", "run", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def kill_and_resume(tmp_path, pystdlib_root, nproc):
    plugins = tmp_path / "probe_plugins"
    plugins.mkdir()
    (plugins / "probe.py").write_text(PROBE)
    recipe = tiny_recipe(tmp_path, pystdlib_root, "[plugins.probe]\n[plugins.ema]\n")
    recipe.write_text(recipe.read_text().replace("iterations = 6", "iterations = 8\ncheckpoint_every = 3\nmicro_batches = 2"))
    common = [recipe, "--plugins-dir", plugins, "--nproc", nproc]

    straight = tmp_path / "straight"
    straight.mkdir()
    proc = launch(common, straight)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    reference = json.loads(next((tmp_path / "runs").glob("tiny-*/result.json")).read_text())

    killed = tmp_path / "killed"
    killed.mkdir()
    proc = launch(common, killed, pause_at=5)
    deadline = time.time() + 300
    while len(list(killed.glob("paused-*"))) < nproc and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGTERM)  # the signal a scheduler or `kill` sends
    (killed / "go").touch()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err
    (run_dir,) = (tmp_path / "runs").glob("*.incomplete")
    # alone, a process stops at the step boundary after the signal; several agree to stop at their next
    # shared clock reading (here the step-6 log line), so none waits in a collective for the others
    stop_step = 5 if int(nproc) == 1 else 6
    assert f"training interrupted by SIGTERM after step {stop_step}" in err and f"golf run --resume {run_dir}" in err
    assert json.loads((run_dir / "checkpoint" / "manifest.json").read_text())["step"] == stop_step

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    proc = launch(["--resume", run_dir, "--plugins-dir", plugins, "--nproc", nproc], resumed)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    final = run_dir.with_name(run_dir.name.removesuffix(".incomplete"))
    result = json.loads((final / "result.json").read_text())
    assert result["status"] == "finished" and result["resumed_from_step"] == stop_step and result["steps"] == 8
    assert not (final / "checkpoint").exists()
    assert result["val_bpb"] == reference["val_bpb"] and result["pre_export_val_loss"] == reference["pre_export_val_loss"]
    a, b = load_file(straight / "weights-0.safetensors"), load_file(resumed / "weights-0.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (final / "model.golf").read_bytes() == next(p for p in (tmp_path / "runs").glob("tiny-*/model.golf") if p.parent != final).read_bytes()
    assert f"resuming from the checkpoint at step {stop_step}" in (final / "log.txt").read_text()


@pytest.mark.slow
def test_sigterm_then_resume_equals_uninterrupted(tmp_path, pystdlib_root):
    kill_and_resume(tmp_path, pystdlib_root, nproc=1)


@pytest.mark.slow
def test_sigterm_then_resume_with_two_processes(tmp_path, pystdlib_root):
    kill_and_resume(tmp_path, pystdlib_root, nproc=2)


@pytest.mark.slow
def test_diverged_run_keeps_its_directory(tmp_path, pystdlib_root):
    plugins = tmp_path / "nan_plugins"
    plugins.mkdir()
    (plugins / "nan.py").write_text('''
import torch
import golfcore as golf

class Nan(golf.Plugin):
    name = "nan"
    done = 0

    @golf.hookimpl
    def golf_loss_penalty(self, model, config, quantizer):
        weight = next(model.parameters())
        return lambda lr_scale: weight.sum() * (float("nan") if self.done + 1 == 3 else 0.0)

    @golf.hookimpl
    def golf_step_end(self, model, step, lr_scale):
        self.done = step
''')
    recipe = tiny_recipe(tmp_path, pystdlib_root, "[plugins.nan]\n")
    proc = subprocess.run([sys.executable, "-m", "golf_cli", "run", recipe, "--plugins-dir", plugins], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 4
    assert "error: training diverged at step 3: the train loss or gradient norm is not finite (seen at step 3)" in proc.stderr and "Traceback" not in proc.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "diverged" and result["diverged_at_step"] == 3 and result["val_bpb"] is None
    assert "diverged: training diverged at step 3" in (run_dir / "log.txt").read_text()
    assert (run_dir / "metrics.jsonl").read_text().count('"event": "train"') == 2  # steps 1 and 2; step 4 saw the NaN of step 3
    assert not (run_dir / "model.golf").exists()
