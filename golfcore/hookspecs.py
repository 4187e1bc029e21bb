"""Every extension point of golf, grouped by phase, in the order a run meets them.

Rules that hold for all hooks:

- Hooks run at build time or between steps, never inside the forward pass. The model is
  described before it is built: plugins edit that description (golf_edit_model) with modules
  the model then calls directly, so the compiled graph contains no pluggy call and
  `torch.compile(fullgraph=True)` sees plain tensor code.
- Each hook's phase is declared on its spec (`@phase(...)`): config, build, optim, step,
  export or eval. A plugin whose hooks are all config/eval hooks acts only at eval.
- Only plugins the recipe enables are registered, so "called" below means "called on the
  enabled plugins that implement it".
- The core calls every hook through pluggy (`pm.hook.<name>(...)`), so pluggy's features
  work for third parties: hook wrappers (`@golf.hookimpl(wrapper=True)`) see and may change
  every call's result, `tryfirst` / `trylast` order implementations, and `golf run
  --trace-hooks` prints which plugin answered which hook.
- Collecting hooks return one value per plugin; the core drops `None`s and sorts modules
  by their `order` attribute (default 0), ties in recipe order.
- Single-answer hooks (`firstresult`, marked "First result wins" below) take the first non-None
  answer. Two enabled plugins implementing one at the same precedence is a recipe error; a
  plugin that means to override another marks its implementation `tryfirst=True` (or the
  fallback `trylast=True`), and then answering None defers to the other.
- A plugin that raises inside a hook stops the run with one line naming the plugin, the
  hook and the exception (`golf --debug` shows the traceback).
- State a plugin keeps across steps (outside module buffers) is returned by its
  `state_dict()` and restored by `load_state_dict()` (see `golfcore.Plugin`), so checkpoints
  carry it and a resumed run continues bit-identically.
- Every parameter a plugin creates must be declared with `golf.declare(param, group,
  export)`: the plugin, not a name pattern, decides its optimizer group and export precision.

Shapes: B batch, T sequence, d model width, H query heads, G KV heads, D head dim, V vocab.
Each hook below has a runnable example in docs/hooks.md and a test in tests/test_hookspecs.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .config import RunConfig
    from .contract import Compressor, EvalAdapter, Quantizer
    from .description import ModelDescription
    from .optim import Orthogonalization
    from .switch import BatchShape, TrainingSwitch

PROJECT = "golf"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
PHASES = ("config", "build", "optim", "step", "export", "eval")


def phase(name: str) -> Callable[[Callable], Callable]:
    """Marks a hook spec with the phase of a run it belongs to (one of PHASES): what `golf run`
    must redo when a plugin implementing it changes (docs/architecture.md)."""
    if name not in PHASES:
        raise ValueError(f"unknown hook phase {name!r}; expected one of {PHASES}")

    def mark(spec: Callable) -> Callable:
        spec.golf_phase = name
        return spec

    return mark


def phase_of(hook_name: str) -> str | None:
    """The declared phase of hook `hook_name`; None for a name that is not a golf hook."""
    return getattr(globals().get(hook_name), "golf_phase", None)


def hooks_in(phase_name: str) -> tuple[str, ...]:
    """Every hook of one phase, in declaration order."""
    return tuple(name for name, value in globals().items() if name.startswith("golf_") and getattr(value, "golf_phase", None) == phase_name)


# ----------------------------------------------------------------------------- config


@phase("config")
@hookspec
def golf_check_config(config: RunConfig, schedule: list[int]) -> None:
    """Called once after the recipe is resolved, before anything is built, with the layer
    schedule (`schedule[i]` = physical layer of virtual layer i).

    Validate what involves more than this plugin's own table (its own fields are checked by
    its Config), e.g. layer indices against the schedule. Raise
    `golfcore.ConfigError("[plugins.NAME] key: why")`. Must not modify `config`.
    """


# ----------------------------------------------------------------------------- build


@phase("build")
@hookspec(firstresult=True)
def golf_layer_schedule(config: RunConfig) -> list[int] | None:
    """Called before each description is made: the physical layer index of each virtual layer
    (separate from golf_edit_model because every per-layer edit addresses this frame).

    The default is `list(range(config.model.num_layers))`. A plugin returning e.g.
    `[0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10]` runs 13 blocks over 11 physical weight sets:
    matrices are shared, while every virtual layer owns its scalars. First result wins.
    """


@phase("build")
@hookspec
def golf_edit_model(description: ModelDescription, config: RunConfig, quantizer: Quantizer | None) -> None:
    """Called at every model build (training, the artifact round trip, each eval stage and audit
    probe), once per enabled plugin in recipe order, on a fresh description of the baseline over
    the layer schedule. Edit `description` in place: put `golfcore.Part`s into its slots
    (embedding additions and transforms, per virtual layer its norms, rotary, value transforms,
    attention kernel, output transforms, activation, input scale and block class, per physical
    layer its projections, the skips, the head, the weight transform, the BOS id). Must not
    keep anything across calls: every build describes the same model again. `quantizer` is the
    run's export quantizer (None only in tests that build without a session).
    The description's docstrings (golfcore.description) give each slot's call signature."""


@phase("build")
@hookspec
def golf_model_built(model: nn.Module, config: RunConfig) -> None:
    """Called after each build, once the whole model exists and is initialised (before the
    optimizers, before an artifact is loaded into it). May re-initialise parameters (e.g.
    orthogonally, drawing random numbers after every default init); must not add parameters."""


# ----------------------------------------------------------------------------- optim


@phase("optim")
@hookspec(firstresult=True)
def golf_optimizers(model: nn.Module, config: RunConfig) -> list[torch.optim.Optimizer] | None:
    """Called once before training. Return the optimizers to use instead of the core's
    Muon + Adam groups. Every param group must carry "base_lr". First result wins."""


@phase("optim")
@hookspec
def golf_orthogonalization(config: RunConfig, orthogonalization: Orthogonalization) -> None:
    """Called once before the core builds Muon, in recipe order, with the run's
    `golf.Orthogonalization` (default: no normalisation, the quintic Newton–Schulz
    coefficients). Edit it in place: `coefficients` (per-iteration (a, b, c) triples; the
    last repeats) and `normalize` ("rows", "columns": applied to the update before the
    iteration). Muon shards any of them over ranks. Two plugins setting one field: the
    later in the recipe wins. Not called when a plugin answers golf_optimizers."""


# ----------------------------------------------------------------------------- step


@phase("step")
@hookspec
def golf_loss_penalty(model: nn.Module, config: RunConfig, quantizer: Quantizer) -> Callable[[float], torch.Tensor] | None:
    """Called once before training. Return `penalty(lr_scale) -> scalar tensor` that the trainer
    adds to the loss of every micro-step (divided like the loss by the accumulation count).
    It runs eagerly, outside the compiled forward."""


@phase("step")
@hookspec
def golf_switches(model: nn.Module, config: RunConfig, shape: BatchShape) -> TrainingSwitch | list[TrainingSwitch] | None:
    """Called once per trainer, after the optimizers are built. Return the training-time
    switch (`golf.TrainingSwitch`) this plugin drives, or a list of them: a setting with a few
    states, changed only between steps, on `model` (e.g. recurrence on at 35% of training:
    `golf.ModuleSwitch("loop", [model.switches["loop"]], at=(0.35,))`) or on the trainer's
    `shape` (e.g. `shape.seq_len` 1024 -> 2048 -> 3072; batch_tokens stays fixed). A switch
    with `at` fractions moves to its next state at the first step whose training fraction
    reaches each; one without is set by its plugin (`switch.set(state)`, e.g. in
    golf_step_end). The trainer applies every switch's first state before warm-up; the compile
    warm-up runs one step in each combination of states a run can reach (torch.compile guards
    on the Python values `apply` sets, so nothing recompiles in the timed run); checkpoints
    hold each switch's state; `golf bench` times each combination. Modules with a Python bool
    `compile_switch` that no returned ModuleSwitch drives become switches too (each of
    `model.switches` by its name, the others one per class, e.g. late QAT's FakeQuantize),
    flipped by their plugin. Switches act on the training model only: the models built later
    (round trip, eval) are built fresh, so a plugin that wants its final state there builds
    them in it. Switch names are unique. Collected in recipe order."""


@phase("step")
@hookspec
def golf_step_end(model: nn.Module, step: int, lr_scale: float) -> None:
    """Called after every optimizer step (not during compile warm-up steps), with the step
    just completed (1-based) and its lr scale. May update plugin state (EMA, SWA, switches)."""


@phase("step")
@hookspec
def golf_train_end(model: nn.Module) -> None:
    """Called once after the last step, before export. May load the weights to export into
    `model` (e.g. the EMA), in recipe order."""


# ----------------------------------------------------------------------------- export


@phase("export")
@hookspec(firstresult=True)
def golf_quantizer(config: RunConfig) -> Quantizer | None:
    """Called once. Return the quantizer used for export (default: per-row int8). The same
    object serves QAT and penalties, so training sees the exporter's real grid."""


@phase("export")
@hookspec(firstresult=True)
def golf_compressor(config: RunConfig) -> Compressor | None:
    """Called once. Return the artifact compressor (default: zstd). First result wins."""


# ----------------------------------------------------------------------------- eval


@phase("eval")
@hookspec
def golf_before_eval(model: nn.Module, config: RunConfig) -> None:
    """Called on the model loaded from the artifact, before the final evaluation.
    May transform it in place (e.g. untie shared layers before test-time training)."""


@phase("eval")
@hookspec
def golf_eval_adapter(config: RunConfig) -> EvalAdapter | None:
    """Called once per evaluation with adapters. Return a score-first eval adapter
    (start / adjust / observe; see `golf.EvalAdapter`). A fresh adapter per call: the core
    calls `start(model, ctx: golf.EvalContext)` on the artifact model after golf_before_eval.
    Ordered by its `order` attribute. One adapter may declare `documents` (a golf.DocumentMode):
    the loop then scores document by document and also calls its `start_round` and
    `observe_round` (docs/architecture.md, "The eval adapter contract")."""
