"""Every extension point of golf, grouped by phase, in the order a run meets them.

Rules that hold for all hooks:

- Hooks run at build time or between steps, never inside the forward pass. A build hook
  returns an `nn.Module` that the model calls directly, so the compiled graph contains no
  pluggy call and `torch.compile(fullgraph=True)` sees plain tensor code.
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
    from .contract import Compressor, EvalAdapter, LayerInfo, Quantizer
    from .optim import Orthogonalization
    from .switch import BatchShape, Switch

PROJECT = "golf"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ----------------------------------------------------------------------------- config


@hookspec
def golf_check_config(config: RunConfig, schedule: list[int]) -> None:
    """Called once after the recipe is resolved, before anything is built, with the layer
    schedule (`schedule[i]` = physical layer of virtual layer i).

    Validate what involves more than this plugin's own table (its own fields are checked by
    its Config), e.g. layer indices against the schedule. Raise
    `golfcore.ConfigError("[plugins.NAME] key: why")`. Must not modify `config`.
    """


@hookspec(firstresult=True)
def golf_layer_schedule(config: RunConfig) -> list[int] | None:
    """Called once at build time: the physical layer index of each virtual layer.

    The default is `list(range(config.model.num_layers))`. A plugin returning e.g.
    `[0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10]` runs 13 blocks over 11 physical weight sets:
    matrices are shared, while every virtual layer owns its scalars. First result wins.
    """


# ----------------------------------------------------------------------------- build: embedding


@hookspec
def golf_embedding_addition(config: RunConfig) -> nn.Module | None:
    """Called once at build time. Return a module `(tokens[B,T]) -> [B,T,d]` whose output is
    added to the token embedding before the embedding RMSNorm (e.g. hashed bigrams)."""


@hookspec
def golf_embedding_transform(config: RunConfig) -> nn.Module | None:
    """Called once at build time. Return a module `(x[B,T,d], tokens[B,T]) -> [B,T,d]` applied
    after the embedding RMSNorm; its output chain becomes x0 (e.g. SmearGate). Ordered by
    the module's `order`."""


# ----------------------------------------------------------------------------- build: attention


@hookspec
def golf_value_transform(config: RunConfig, layer: LayerInfo) -> nn.Module | None:
    """Called at build time once per virtual layer. Return a module
    `(v[B,T,G,D], ctx: ForwardContext) -> v[B,T,G,D]` applied to the values before attention.

    `ctx` is made fresh by each forward pass and shared by all its layers: `ctx.tokens` holds
    the input ids [B,T], `ctx.v0` layer 0's values once a transform stored them, and
    `ctx.cache[plugin_name]` anything else a plugin computes once per forward. Ordered by `order`.
    """


@hookspec(firstresult=True)
def golf_rotary(config: RunConfig, layer: LayerInfo) -> nn.Module | None:
    """Called at build time once per virtual layer. Return a module `(x[B,T,heads,D]) -> same`
    that applies positions to normalized q and k; default: RoPE on all D dims. First wins."""


@hookspec
def golf_attention_output_transform(config: RunConfig, layer: LayerInfo) -> nn.Module | None:
    """Called at build time once per virtual layer. Return a module
    `(y[B,T,H,D], v[B,T,G,D], x[B,T,d], ctx: ForwardContext) -> y[B,T,H,D]` applied to the per-head attention
    output before the output projection. `v` is the value actually attended, `x` the
    normalized attention input. Ordered by `order` (declare it: e.g. XSA 0, gate 10)."""


# ----------------------------------------------------------------------------- build: MLP and block


@hookspec(firstresult=True)
def golf_mlp_activation(config: RunConfig, layer: LayerInfo) -> nn.Module | None:
    """Called at build time once per virtual layer. Return the MLP activation module
    `(u[B,T,F]) -> [B,T,F]`; default relu(u)². First result wins."""


@hookspec
def golf_sublayer_input_scale(config: RunConfig, layer: LayerInfo) -> float | None:
    """Called at build time once per virtual layer. Factors multiplying the normalized inputs
    of the attention and MLP sublayers (a constant, folded in at build time); all answers
    multiply. E.g. 1/sqrt(layer.virtual + 1)."""


@hookspec(firstresult=True)
def golf_weight_transform(config: RunConfig, quantizer: Quantizer) -> nn.Module | None:
    """Called once at build time. Return a module `(w[out,in]) -> w'` applied to every block
    matrix the exporter quantizes, each time it is used (e.g. straight-through fake
    quantization on `quantizer`'s grid). A switch is an instance attribute `compile_switch: bool`
    that the forward branches on: torch.compile guards on it (one graph per state) and the
    trainer's compile warm-up runs both states (`golfcore.train.compile_switches`). First
    result wins."""


@hookspec
def golf_model_built(model: nn.Module, config: RunConfig) -> None:
    """Called once after the model is built and initialised, before the optimizers exist.
    May re-initialise parameters it owns; must not add parameters."""


# ----------------------------------------------------------------------------- optim


@hookspec(firstresult=True)
def golf_optimizers(model: nn.Module, config: RunConfig) -> list[torch.optim.Optimizer] | None:
    """Called once before training. Return the optimizers to use instead of the core's
    Muon + Adam groups. Every param group must carry "base_lr". First result wins."""


@hookspec
def golf_orthogonalization(config: RunConfig, orthogonalization: Orthogonalization) -> None:
    """Called once before the core builds Muon, in recipe order, with the run's
    `golf.Orthogonalization` (default: no normalisation, the quintic Newton–Schulz
    coefficients). Edit it in place: `coefficients` (per-iteration (a, b, c) triples; the
    last repeats) and `normalize` ("rows", "columns": applied to the update before the
    iteration). Muon shards any of them over ranks. Two plugins setting one field: the
    later in the recipe wins. Not called when a plugin answers golf_optimizers."""


# ----------------------------------------------------------------------------- step


@hookspec
def golf_loss_penalty(model: nn.Module, config: RunConfig, quantizer: Quantizer) -> Callable[[float], torch.Tensor] | None:
    """Called once before training. Return `penalty(lr_scale) -> scalar tensor` that the trainer
    adds to the loss of every micro-step (divided like the loss by the accumulation count).
    It runs eagerly, outside the compiled forward."""


@hookspec
def golf_switches(model: nn.Module, config: RunConfig, shape: BatchShape) -> list[Switch] | None:
    """Called once per trainer, after the optimizers are built. Return the training-time
    switches (`golf.Switch`) this plugin drives: a setting with a few states, changed only
    between steps, on `model` (e.g. recurrence on at 35% of training) or on the trainer's
    `shape` (e.g. `shape.seq_len` 1024 -> 2048 -> 3072; batch_tokens stays fixed). A switch
    with `at` fractions moves to its next state at the first step whose training fraction
    reaches each; one without is set by its plugin (`switch.set(state)`, e.g. in
    golf_step_end). The trainer applies every switch's first state before warm-up; the compile
    warm-up runs one step in each combination of states (torch.compile guards on the Python
    values `apply` sets, so nothing recompiles in the timed run); checkpoints hold each
    switch's state; `golf bench` times each combination. Modules with a Python bool
    `compile_switch` (golf_weight_transform) form one more switch, flipped by their plugin.
    Switch names are unique. Collected in recipe order."""


@hookspec
def golf_step_end(model: nn.Module, step: int, lr_scale: float) -> None:
    """Called after every optimizer step (not during compile warm-up steps), with the step
    just completed (1-based) and its lr scale. May update plugin state (EMA, SWA, switches)."""


@hookspec
def golf_train_end(model: nn.Module) -> None:
    """Called once after the last step, before export. May load the weights to export into
    `model` (e.g. the EMA), in recipe order."""


# ----------------------------------------------------------------------------- export


@hookspec(firstresult=True)
def golf_quantizer(config: RunConfig) -> Quantizer | None:
    """Called once. Return the quantizer used for export (default: per-row int8). The same
    object serves QAT and penalties, so training sees the exporter's real grid."""


@hookspec(firstresult=True)
def golf_compressor(config: RunConfig) -> Compressor | None:
    """Called once. Return the artifact compressor (default: zstd). First result wins."""


# ----------------------------------------------------------------------------- eval


@hookspec
def golf_before_eval(model: nn.Module, config: RunConfig) -> None:
    """Called on the model loaded from the artifact, before the final evaluation.
    May transform it in place (e.g. untie shared layers before test-time training)."""


@hookspec
def golf_eval_adapter(config: RunConfig) -> EvalAdapter | None:
    """Called once per evaluation with adapters. Return a score-first eval adapter
    (start / adjust / observe; see `golf.EvalAdapter`). A fresh adapter per call: the core
    calls `start(model, ctx: golf.EvalContext)` on the artifact model after golf_before_eval.
    Ordered by its `order` attribute."""
