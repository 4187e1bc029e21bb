"""Shared builders for tests: tiny configs, hosts from throwaway plugin classes, synthetic loaders."""

from __future__ import annotations

import torch

import golfcore as golf
from golfcore.assets import FINEWEB_SP1024_MODEL
from golfcore.config import RunConfig
from golfcore.plugins import Host, PluginInfo
from golfcore.train import Dist, Trainer, TrainOutcome

CPU = Dist(0, 1, 0, torch.device("cpu"))
FINEWEB_TOKENIZER = FINEWEB_SP1024_MODEL


def tiny_config(**model_overrides) -> RunConfig:
    """A model small enough to train a few steps in well under a second on CPU."""
    config = RunConfig(source="<test>")
    m = config.model
    m.vocab_size, m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads = 64, 4, 32, 4, 2
    for key, value in model_overrides.items():
        setattr(m, key, value)
    t = config.train
    t.device, t.compile, t.seq_len, t.batch_tokens, t.micro_batches = "cpu", "off", 16, 128, 2
    t.iterations, t.max_wallclock_seconds, t.warmup_steps, t.warmdown_iters, t.val_every = 3, 0, 0, 0, 0
    config.eval.batch_seqs, config.eval.chunk_tokens = 4, 64
    return config


def host_with(config: RunConfig, *plugins) -> Host:
    """Enable plugins in `config`, in this recipe order, and return the run's host. Each is a plugin
    class (default config) or a (class, config) pair."""
    pairs = [p if isinstance(p, tuple) else (p, p.Config()) for p in plugins]
    for cls, cfg in pairs:
        config.plugins[cls.name] = cfg
    return Host(config, {cls.name: PluginInfo(cls.name, cls, "test", "0") for cls, _ in pairs})


def synthetic_loader(config: RunConfig):
    from golf_tools.bench import SyntheticLoader

    return SyntheticLoader(config.model.vocab_size, torch.device("cpu"), config.run.seed, 1)


def build(*plugin_classes, config: RunConfig | None = None):
    """(config, host, model) for a tiny config with the given plugin classes enabled, checked like a run."""
    from golfcore.assemble import build_model, check_config

    config = config or tiny_config()
    host = host_with(config, *plugin_classes)
    check_config(config, host)
    return config, host, build_model(config, host, None)


def train_briefly(config: RunConfig, host: Host, model, quantizer=None, records: list | None = None) -> TrainOutcome:
    """Train `model` for config.train.iterations steps on synthetic tokens, on CPU."""
    sink = records if records is not None else []
    return Trainer(config, model, host, quantizer, synthetic_loader(config), CPU, None, sink.append).run()


class CaptureAdapter:
    """Placed after the adapter under test: records each scored row and its stream position."""

    name, history_len, order = "capture", 0, 100

    def __init__(self):
        self.rows, self.pos = [], []

    def start(self, model, ctx):
        pass

    def adjust(self, logprobs, history, positions):
        self.rows.append(logprobs.clone())
        self.pos.append(positions.clone())
        return logprobs

    def observe(self, tokens):
        pass

    def by_position(self):
        pos, rows = torch.cat(self.pos), torch.cat(self.rows)
        order = pos.argsort()
        return pos[order], rows[order]

    def nll(self, val):
        pos, rows = self.by_position()
        return -rows.gather(1, val[pos + 1][:, None]).squeeze(1)


class Snapshots(golf.Plugin):
    """Records every parameter after each optimizer step (runs beside the plugin under test)."""

    name = "snapshots"
    taken: list = []

    @golf.hookimpl
    def golf_step_end(self, model, step, lr_scale):
        self.taken.append((step, lr_scale, [p.detach().clone() for p in model.parameters()]))



def edited(plugin: golf.Plugin, config: RunConfig):
    """The baseline description of `config` (one pass over its layers) after `plugin`'s golf_edit_model."""
    import inspect

    from golfcore.description import default_description

    description = default_description(config.model, list(range(config.model.num_layers)))
    given = {"description": description, "config": config, "quantizer": None}
    wanted = inspect.signature(plugin.golf_edit_model).parameters
    plugin.golf_edit_model(**{k: v for k, v in given.items() if k in wanted})
    return description


def built(part):
    """The module a description Part builds."""
    from golfcore.description import Builder

    return Builder()(part)


def editor(name: str, edit):
    """A plugin class whose golf_edit_model calls edit(description)."""

    class Editor(golf.Plugin):
        @golf.hookimpl
        def golf_edit_model(self, description):
            edit(description)

    Editor.name = name
    return Editor
