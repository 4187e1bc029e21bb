"""Training-time switches: a setting with a few states, changed only between training steps.

A plugin returns switches from golf_switches (golfcore/hookspecs.py): delayed recurrence turns
its loop on at 35% of training, progressive context grows the trainer's `BatchShape.seq_len`.
The trainer moves a switch with `at` fractions to its next state at the first step whose
training fraction reaches each; its compile warm-up runs a step in every combination of
states, so torch.compile (which guards on what `apply` sets) has every graph before the timed
run; checkpoints hold each switch's state; `golf bench` times each combination.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass
class BatchShape:
    """The shape of the trainer's micro-batches, [rows, seq_len] with rows = tokens / seq_len:
    a switch may change seq_len between steps; `[train] batch_tokens` never changes."""

    seq_len: int


class Switch:
    """`states`: every value the setting takes (hashable, saved in checkpoints: numbers,
    strings, bools), the first being where training starts. `apply(state)` sets it (on the
    model, or on the trainer's BatchShape). `at`: the training fractions (ascending, in
    (0, 1]) where it moves to states[1], states[2], ...; empty: its plugin calls `set`."""

    def __init__(self, name: str, states: Sequence[Hashable], apply: Callable[[Any], None], at: Sequence[float] = ()):
        if len(states) < 2 or len(set(states)) != len(states):
            raise ValueError(f"switch {name!r}: needs at least two distinct states, got {list(states)}")
        if at and (len(at) != len(states) - 1 or any(not 0 < f <= 1 for f in at) or list(at) != sorted(set(at))):
            raise ValueError(f"switch {name!r}: `at` must give {len(states) - 1} ascending fractions in (0, 1], got {list(at)}")
        self.name, self.states, self.at, self._apply = name, tuple(states), tuple(at), apply
        self._state = self.states[0]

    @property
    def state(self) -> Any:
        return self._state

    def set(self, state: Any) -> None:
        if state not in self.states:
            raise ValueError(f"switch {self.name!r}: {state!r} is not one of its states {list(self.states)}")
        self._state = state
        self._apply(state)

    def scheduled(self, fraction: float) -> Any:
        """The state its `at` schedule gives at this training fraction."""
        return self.states[bisect.bisect_right(self.at, fraction)]


class ModuleSwitches(Switch):
    """Modules with a Python bool `compile_switch` the forward branches on (late QAT's
    FakeQuantize), set together; their plugin flips them, so the state is read from them."""

    def __init__(self, modules: list[nn.Module]):
        self.modules = modules
        super().__init__("compile_switch", (False, True), self._flip)

    @property
    def state(self) -> bool:
        return self.modules[0].compile_switch

    def _flip(self, on: bool) -> None:
        for m in self.modules:
            m.compile_switch = on


def module_switches(model: nn.Module) -> ModuleSwitches | None:
    """The model's `compile_switch: bool` modules as one switch, or None when it has none."""
    found = {id(m): m for m in model.modules() if isinstance(getattr(m, "compile_switch", None), bool)}
    return ModuleSwitches(list(found.values())) if found else None
