"""Everything golf compiles, compiles whole and once: no graph break, no recompilation in the timed run.

A graph break or a recompile on a GPU turns a 120 ms step into seconds and makes the run's
numbers meaningless, so it is checked here, on the CPU. `fullgraph=True` makes any graph break
an error; after the warm-up that a run does before its clock starts, torch._dynamo's
`error_on_recompile` makes any further compilation an error, and the graph counter must not
move. Checked for every built-in plugin alone (with the plugins it requires), in training
(compile switches flipped mid-run, as late QAT does) and in evaluation (the two static window
shapes, TTT's padded step), on the eager backend: Dynamo's tracing and guards are what break
or recompile, and they are the same for every backend. So are the shipped recipes' plugin
sets. Inductor itself (minutes of C++ compilation per graph on the CPU) compiles the quick
recipes' models in tests/test_cuda.py, which tools/gpu-check.sh --dry runs in CI.
"""

from __future__ import annotations

import functools
from unittest import mock
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

from golfcore.assemble import build_model, check_config
from golfcore.eval import _DocumentScorer, _Scorer, build_byte_luts
import golfcore as golf
from golfcore.plugins import Host, PluginInfo, discover
from golfcore.recipe import load_recipe
from golfcore.run import Scorer, Session
from golfcore.train import Trainer

from .helpers import CPU, FINEWEB_TOKENIZER, synthetic_loader

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
TINY = ["model.num_layers=2", "model.model_dim=64", "model.num_heads=4", "model.num_kv_heads=2",
        "train.seq_len=32", "train.batch_tokens=256", "train.micro_batches=1", "train.iterations=4",
        "train.log_every=2", "train.warmup_steps=2", "train.val_every=0", "train.warmdown_iters=4",
        "train.max_wallclock_seconds=0", "train.compile=\"on\"", "eval.seq_len=32", "eval.stride=8",
        "eval.batch_seqs=4", "eval.chunk_tokens=96", "eval.adapter_prefixes=false"]
VAL_TOKENS = 200
FITS_TWO_LAYERS = {  # defaults that name layers or lengths a 2-layer, 32-token model lacks
    "recurrence": ["plugins.recurrence.repeat=[0, 1]", "plugins.recurrence.start_frac=0.5"],
    "value_embeddings": ["plugins.value_embeddings.layers=[0, 1]"],
    "parallel_residuals": ["model.num_layers=4", "plugins.parallel_residuals.start=3"],  # its split layer must be a decoder's
    "progressive_context": ["plugins.progressive_context.seq_lens=[16, 32]", "plugins.progressive_context.at=[0.5]"],
    "lora_ttt": ["plugins.lora_ttt.chunk=8", "plugins.lora_ttt.slots=4"],  # pieces inside the 32-token windows
}


def built_in_plugins(training: bool = False) -> list[str]:
    """Built-in plugin names; `training`: only those that act before the artifact is written."""
    return sorted(name for name, info in discover().items()
                  if info.source == "builtin" and not (training and info.cls.acts_only_at_eval()))


def quick_config(recipe: str, plugins: list[str] | None = None):
    """A recipe at a tiny size; with `plugins`, the quickstart recipe with just those enabled."""
    available = discover()
    if plugins is None:  # the recipe's own layer selections need its 4 layers
        return available, load_recipe(RECIPES / recipe, available, sets=TINY + ["model.num_layers=4"])
    needed = list(plugins)
    for name in plugins:
        needed += [r for r in available[name].cls.requires if r not in needed]
    sets = TINY + [s for name in needed for s in FITS_TWO_LAYERS.get(name, [])]
    return available, load_recipe(RECIPES / recipe, available, sets=sets, with_=needed)


@pytest.fixture
def dynamo_only(monkeypatch):
    """Every torch.compile in golf (trainer, eval, TTT) traced by Dynamo, run eagerly."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.config.error_on_recompile = False
    torch._dynamo.reset()


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def train_without_recompiling(available, config) -> None:
    """Train with the run's compile warm-up, then forbid compiling for the rest of the run;
    every compile switch is on for the last steps, as late QAT and a delayed recurrence are in
    warmdown."""
    host = Host(config, available)
    check_config(config, host)
    quantizer = host.first("golf_quantizer", config=config)
    model = build_model(config, host, quantizer)
    trainer = Trainer(config, model, host, quantizer, synthetic_loader(config), CPU, None, lambda record: None)
    assert trainer.execution["compiled"]
    warm_up = trainer.warm_up
    compiled_in_warm_up = {}

    def then_forbid():
        warm_up()
        compiled_in_warm_up["graphs"] = graphs()
        torch._dynamo.config.error_on_recompile = True

    trainer.warm_up = then_forbid
    inner_step = trainer.train_step

    switches = [m for m in model.modules() if isinstance(getattr(m, "compile_switch", None), bool)]

    def switching_step(step, lr_scale):
        if "graphs" in compiled_in_warm_up:  # the timed run, not the warm-up's own visits
            for m in switches:  # all on together: the state warmdown reaches
                m.compile_switch = step >= config.train.iterations // 2
        return inner_step(step, lr_scale)

    trainer.train_step = switching_step
    trainer.run()
    assert graphs() == compiled_in_warm_up["graphs"] > 0


def score_without_recompiling(available, config) -> None:
    """Score the way a run does (static shapes; adapters started, then every window shape run
    once, before the clock: two in stream mode, up to four in document mode); from the end of
    that warm-up on, nothing may compile."""
    session = Session(config, available, dist=CPU, build_data=False)
    scorer = Scorer(session)
    scorer._luts = build_byte_luts(spm.SentencePieceProcessor(model_file=str(FINEWEB_TOKENIZER)), config.model.vocab_size)
    val = torch.randint(0, config.model.vocab_size, (VAL_TOKENS,), generator=torch.Generator().manual_seed(0))
    compiled = {}

    def then_forbid(warm_up):
        def wrapped(scorer, *widths):
            warm_up(scorer, *widths)
            compiled["warm-up"] = graphs()
            torch._dynamo.config.error_on_recompile = True
        return wrapped

    model = session.build_model()
    adapters = session.host.collect("golf_eval_adapter", config=config)
    with mock.patch.object(_Scorer, "warm_up", then_forbid(_Scorer.warm_up)), \
            mock.patch.object(_DocumentScorer, "warm_up", then_forbid(_DocumentScorer.warm_up)):
        scorer.score(model, val, adapters)
    assert graphs() == compiled["warm-up"] > 0


@pytest.mark.parametrize("plugin", built_in_plugins(training=True))
def test_each_plugin_trains_compiled_without_breaks_or_recompiles(plugin, dynamo_only):
    train_without_recompiling(*quick_config("quickstart.toml", [plugin]))


@pytest.mark.parametrize("plugin", built_in_plugins())
def test_each_plugin_scores_compiled_without_breaks_or_recompiles(plugin, dynamo_only):
    score_without_recompiling(*quick_config("quickstart.toml", [plugin]))


@pytest.mark.parametrize("recipe", ["pr549-quick.toml", "v4-quick.toml"])
def test_recipe_plugin_sets_compile_without_breaks_or_recompiles(recipe, dynamo_only):
    available, config = quick_config(recipe)
    train_without_recompiling(available, config)
    torch._dynamo.config.error_on_recompile = False
    score_without_recompiling(available, config)


class BreaksTheGraph(nn.Module):
    def forward(self, u):
        torch._dynamo.graph_break()
        return F.relu(u).square()


class RecompilesEveryCall(nn.Module):
    """Planted: a Python counter the forward branches on; Dynamo guards on it."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, u):
        self.calls += 1
        return F.relu(u).square() * (1.0 if self.calls % 2 else 1.0 + 1e-6)


def planted(activation: type[nn.Module]):
    class Planted(golf.Plugin):
        name = "planted_activation"

        @golf.hookimpl
        def golf_edit_model(self, description):
            for layer in description.layers:
                layer.activation = golf.Part(activation)

    available = discover() | {Planted.name: PluginInfo(Planted.name, Planted, "test", "0")}
    return available, load_recipe(RECIPES / "quickstart.toml", available, sets=TINY, with_=[Planted.name])


@pytest.mark.parametrize("check", [train_without_recompiling, score_without_recompiling])
def test_a_graph_break_fails(check, dynamo_only):
    with pytest.raises(torch._dynamo.exc.Unsupported):
        check(*planted(BreaksTheGraph))


@pytest.mark.parametrize("check", [train_without_recompiling, score_without_recompiling])
def test_a_recompile_after_warm_up_fails(check, dynamo_only):
    with pytest.raises(torch._dynamo.exc.RecompileError):
        check(*planted(RecompilesEveryCall))
