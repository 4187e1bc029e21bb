"""Late QAT: straight-through fake quantization once the lr scale falls below `threshold`
(docs/techniques.md §3.9; PR #414 threshold 0.15, carried to #549/#733).

Every block matrix w is used as  w + sg(fake_quantize(w) - w)  while QAT is on, and as  w
itself while it is off, where fake_quantize is the run's own quantizer (int6 per row with
gptq_lite, the core's int8 otherwise): forward sees exactly the exported weights, backward
passes the gradient to w unchanged.

The switch costs nothing while off. It is a Python bool, `FakeQuantize.compile_switch`, that
the forward branches on: off returns w untouched (no quantizer work in the forward, eager or
compiled), on computes the grid. torch.compile guards on the bool, so a compiled model holds
one graph per state; the trainer's compile warm-up runs its last step with every such switch
flipped (the trainer finds them by their `compile_switch` attribute), so both graphs exist before the timed run and
switching QAT on mid-run recompiles nothing. The switch is flipped between steps in
golf_step_end (latched on at the first step whose lr scale is below `threshold`; the next
step trains quantized), never inside the forward. The plugin's training state is that latch;
the model's switch comes back with the checkpoint's model state, so a resumed run trains
quantized from its first step.

Defects fixed:
- D3: the reference fake-quantized only `CastedLinear`s (two tiny fp16 tensors) and never
  the bank matrices the exporter quantizes; here the core applies the transform to every
  block matrix, and the grid is the exporter's (the reference used a row-max clip with a
  1/31 floor, not its export's percentile search).
- 2026-03-21 record: a Python *class* flag was read once and constant-folded into the compiled
  graph. Here the flag is an instance attribute of a module inside the compiled model, which
  torch.compile guards on (tests/plugins/test_late_qat.py flips it under a compiled trainer
  and checks the output follows, with no recompile after warm-up).
- D3 (reset): the reference never switched QAT off, so TTT trained fake-quantized tensors.
  Each model build makes a new module (the description holds a Part, not a module) that starts
  off, so the model loaded from the artifact (eval, TTT) is never fake-quantized.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from torch import Tensor, nn

import golfcore as golf


@dataclass
class Config(golf.Section):
    threshold: float = golf.option(0.15, "switch on after the first step whose lr scale is below this")

    def check(self) -> None:
        if not 0 < self.threshold <= 1:
            raise self.invalid("threshold", f"{self.threshold} is not in (0, 1]")


class FakeQuantize(nn.Module):
    """(w[out,in]) -> w while off; (w - sg(w)) + quantizer.fake_quantize(sg(w)) while on, whose forward
    value is exactly fake_quantize(w) ((w - sg(w)) is an exact 0 carrying the identity gradient)."""

    def __init__(self, quantizer):
        super().__init__()
        self.quantizer = quantizer
        self.compile_switch = False  # True = QAT on; a Python bool torch.compile guards on (one graph per state)

    def forward(self, w: Tensor) -> Tensor:
        if not self.compile_switch:
            return w
        ws = w.detach()
        return (w - ws) + self.quantizer.fake_quantize(ws)


def set_enabled(model: nn.Module, on: bool) -> int:
    """Switch every late-QAT module of `model`; returns how many there are."""
    modules = {id(m): m for m in model.modules() if isinstance(m, FakeQuantize)}
    for m in modules.values():
        m.compile_switch = on
    return len(modules)


class LateQat(golf.Plugin):
    name = "late_qat"
    description = "straight-through fake quantization on the exporter's grid once lr scale < 0.15 (PR #414; D3 fixed)"
    Config = Config

    def __init__(self, config=None):
        super().__init__(config)
        self.on = False  # latched once the lr scale fell below the threshold
        self._switched: weakref.WeakSet = weakref.WeakSet()  # models already switched on (no per-step module walk)

    @golf.hookimpl
    def golf_edit_model(self, description, config, quantizer):
        if quantizer is None:  # only tests build models without one
            quantizer = golf.Int8Quantizer(config.export.float_max_numel)
        description.weight_transform = golf.Part(FakeQuantize, quantizer)

    @golf.hookimpl
    def golf_step_end(self, model, step, lr_scale):
        if lr_scale < self.config.threshold and model not in self._switched:
            self.on = True
            set_enabled(model, True)
            self._switched.add(model)

    def state_dict(self) -> dict:
        return {"on": self.on}

    def load_state_dict(self, state: dict) -> None:
        # the model's switches come back with the checkpoint's model state (the core checkpoint)
        self.on = bool(state["on"])
