"""Depth recurrence: run a contiguous run of physical layers again, sharing their matrices.

docs/techniques.md §8 (PR #686; the 2026-03-31 and 2026-04-03 records; PR #733). With R the
repeated physical layers (`repeat`, contiguous and ascending) and c = max(R) + 1, the layer
schedule is

    v2p = [0 .. c−1] + R + [c .. L−1]      L = 11, R = [4, 5]  ->  [0,1,2,3,4,5,4,5,6,7,8,9,10], Lv = 13

The core builds one Block per virtual layer, so every repeat owns its scalars (attn/mlp
scales, resid_mix, q_gain, gate, VRL λ, LN scale, XSA flag, rotary), while the matrices of
`model.layers[v2p[i]]` are shared: autograd sums both passes' gradients into them. The U-Net
split counts virtual layers. No new matrices: only the repeats' per-virtual-layer scalars and
one more skip vector (at d=512: 2×2,056 + 512 = 4,624 for the core's block scalars; 12,836 in
#733's stack with gated attention and VRL); about 18% more layer FLOPs for R = [4, 5].

Untie before eval (`untie_before_eval`, default true as PR #733's TTT_UNTIE=1): in
golf_before_eval, which runs on the model loaded from the artifact before any eval adapter
(TTT) builds its optimizer, the shared layers are cloned so that every virtual layer gets its
own LayerWeights, in virtual order, and `model.v2p` becomes the identity; each block's
`layer` info is updated to match. The logits are unchanged; test-time training can then adapt
each repeat independently. The artifact keeps the tied weights: untying adds parameters only
at eval (at full scale 2 × 2,359,296 matrix entries: 27.05M -> 31.77M in #733's log).

Several loops, delayed, shared scalars (docs/techniques.md §12.7, PR #1344/#1855):
`loops = k` runs R k + 1 times, v2p = [0 .. c−1] + R·k + [c .. L−1] (PR #1855: R = [3, 4, 5],
k = 2, 17 virtual layers). `start_frac = f > 0` puts the passes after the first behind the
layer-slot switch "recurrence", a golf.ModuleSwitch that turns on at training fraction f: until
then each layer runs once and the U-Net split halves the layers that run; the model loaded from
the artifact runs with it on (golf_before_eval), as the record evaluates. `share_scalars` ties
every later pass's block parameters to its physical layer's first pass (golf_model_built), as
the record's blocks are per physical layer: then per-layer plugins must select by physical index.

Fixes no reference defect. Per-layer settings of other plugins say whether they index virtual
or physical layers (xsa, gated_attention: virtual by default; value_embeddings: physical).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

from torch import nn

import golfcore as golf


@dataclass
class Config(golf.Section):
    repeat: list[int] = golf.option([4, 5], "physical layers run loops + 1 times: contiguous, ascending, within 0..num_layers-1")
    untie_before_eval: bool = golf.option(
        True, "before eval, give every virtual layer its own copy of the shared matrices (PR #733's TTT_UNTIE=1)"
    )
    loops: int = golf.option(1, "extra passes over `repeat`: 1 runs it twice (PR #733), 2 three times (PR #1855)")
    start_frac: float = golf.option(
        0.0, "training fraction at which the extra passes switch on (0 = from the start; PR #1855: 0.35); on at eval"
    )
    share_scalars: bool = golf.option(
        False, "every pass over a physical layer uses one set of block scalars (PR #1855); false: each pass owns its own"
    )

    def check(self) -> None:
        r = self.repeat
        if not r:
            raise self.invalid("repeat", "must list at least one layer")
        if any(i < 0 for i in r):
            raise self.invalid("repeat", f"{r}: indices must be >= 0")
        if any(b != a + 1 for a, b in zip(r, r[1:])):
            raise self.invalid("repeat", f"{r} must be contiguous and ascending (e.g. [4, 5])")
        if self.loops < 1:
            raise self.invalid("loops", f"{self.loops} must be >= 1")
        if not 0.0 <= self.start_frac < 1.0:
            raise self.invalid("start_frac", f"{self.start_frac} must be in [0, 1)")


SWITCH = "recurrence"  # the name of the extra passes' training-time switch


def schedule(num_layers: int, repeat: list[int], loops: int = 1) -> list[int]:
    """v2p = [0..c−1] + R·loops + [c..L−1], c = max(R) + 1: R runs loops + 1 times."""
    c = max(repeat) + 1
    return list(range(c)) + list(repeat) * loops + list(range(c, num_layers))


def extra_passes(repeat: list[int], loops: int) -> range:
    """The virtual layers of the passes after the first: c .. c + len(R)·loops − 1."""
    c = max(repeat) + 1
    return range(c, c + len(repeat) * loops)


def share_block_parameters(model: nn.Module) -> None:
    """Every later pass over a physical layer uses the parameters of the first pass's block."""
    first: dict[int, int] = {}  # physical layer -> its first virtual layer
    for i, block in enumerate(model.blocks):
        k = first.setdefault(model.v2p[i], i)
        if k == i:
            continue
        owner = model.blocks[k]
        if [n for n, _ in owner.named_parameters()] != [n for n, _ in block.named_parameters()]:
            raise golf.GolfError(
                f"[plugins.recurrence] share_scalars: virtual layers {k} and {i} run physical layer {model.v2p[i]} with "
                "different parameters (a per-layer plugin selects one and not the other; select by physical index)"
            )
        for name, param in owner.named_parameters():
            path, _, attr = name.rpartition(".")
            setattr(block.get_submodule(path), attr, param)


def untie(model: nn.Module) -> None:
    """Give every virtual layer its own deep copy of its physical layer's matrices; v2p becomes the identity."""
    v2p = list(model.v2p)
    if v2p == list(range(len(model.layers))):
        return  # nothing shared
    layers = []
    for p in v2p:
        clone = copy.deepcopy(model.layers[p])
        for original, copied in zip(model.layers[p].parameters(), clone.parameters()):
            spec = golf.spec_of(original)  # deepcopy drops the declaration: carry it over
            if spec is not None:
                golf.declare(copied, spec.group, spec.export)
        layers.append(clone)
    model.layers = nn.ModuleList(layers)
    model.v2p = list(range(len(v2p)))
    for i, block in enumerate(model.blocks):
        block.layer = dataclasses.replace(block.layer, physical=i, num_physical=len(v2p))


class Recurrence(golf.Plugin):
    name = "recurrence"
    description = "depth recurrence: repeat contiguous physical layers with shared matrices, untied before eval (PR #686/#733)"
    Config = Config

    def _check_range(self, num_layers: int) -> None:
        bad = [i for i in self.config.repeat if i >= num_layers]
        if bad:
            raise golf.ConfigError(
                f"[plugins.recurrence] repeat: {bad} not among the model's {num_layers} physical layers (0..{num_layers - 1})"
            )

    @golf.hookimpl
    def golf_check_config(self, config):
        self._check_range(config.model.num_layers)

    @golf.hookimpl
    def golf_layer_schedule(self, config):
        self._check_range(config.model.num_layers)
        return schedule(config.model.num_layers, self.config.repeat, self.config.loops)

    @golf.hookimpl
    def golf_edit_model(self, description):
        if self.config.start_frac > 0:
            for i in extra_passes(self.config.repeat, self.config.loops):
                description.layers[i].switch = SWITCH

    @golf.hookimpl
    def golf_model_built(self, model, config):
        if self.config.share_scalars:
            share_block_parameters(model)

    @golf.hookimpl
    def golf_switches(self, model, config, shape):
        if self.config.start_frac > 0:
            return golf.ModuleSwitch(SWITCH, [model.switches[SWITCH]], at=(self.config.start_frac,))

    @golf.hookimpl
    def golf_before_eval(self, model, config):
        if self.config.start_frac > 0:
            model.switches[SWITCH].compile_switch = True  # the record evaluates with its loop on
        if self.config.untie_before_eval:
            untie(model)
