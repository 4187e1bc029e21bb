"""Training-time switches: a setting with a few states, changed only between training steps.

A plugin returns switches from golf_switches (golfcore/hookspecs.py): delayed recurrence turns
its loop on at 35% of training, progressive context grows the trainer's `BatchShape.seq_len`.
The trainer moves a switch with `at` fractions to its next state at the first step whose
training fraction reaches each; its compile warm-up runs a step in every combination of
states a run can reach (`reachable`), so torch.compile (which guards on what `apply` sets)
has every graph before the timed run; checkpoints hold each switch's state; `golf bench`
times each combination.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass
class BatchShape:
    """The shape of the trainer's micro-batches, [rows, seq_len] with rows = tokens / seq_len:
    a switch may change seq_len between steps; `[train] batch_tokens` never changes."""

    seq_len: int


class TrainingSwitch:
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


class ModuleSwitch(TrainingSwitch):
    """Modules with a Python bool `compile_switch` the forward branches on (late QAT's
    FakeQuantize, a `golf.Switch` a layer slot names), set together; the state is read from
    them, so their plugin may also flip them directly."""

    def __init__(self, name: str, modules: list[nn.Module], at: Sequence[float] = ()):
        self.modules = list(modules)
        super().__init__(name, (False, True), self._flip, at)

    @property
    def state(self) -> bool:
        return self.modules[0].compile_switch

    def _flip(self, on: bool) -> None:
        for m in self.modules:
            m.compile_switch = on


def module_switches(model: nn.Module, declared: list[TrainingSwitch]) -> list[ModuleSwitch]:
    """The model's `compile_switch` modules that no declared ModuleSwitch drives: each of
    `model.switches` (the layer slots' golf.Switch) under its name, the others grouped by class."""
    taken = {id(m) for s in declared if isinstance(s, ModuleSwitch) for m in s.modules}
    named = dict(model.switches.items()) if isinstance(getattr(model, "switches", None), nn.ModuleDict) else {}
    out = [ModuleSwitch(name, [m]) for name, m in named.items() if id(m) not in taken]
    taken |= {id(m) for m in named.values()}
    by_class: dict[str, dict[int, nn.Module]] = {}
    for m in model.modules():
        if isinstance(getattr(m, "compile_switch", None), bool) and id(m) not in taken:
            by_class.setdefault(type(m).__name__, {})[id(m)] = m
    return out + [ModuleSwitch(name, list(found.values())) for name, found in by_class.items()]


def reachable(switches: list[TrainingSwitch]) -> list[tuple]:
    """Every combination of states (one per switch, in order) a run can be in, the first states
    first: scheduled switches move together along the training fraction, so only the
    combinations met at some fraction; the others (set by their plugin) in each of their states."""
    scheduled = [i for i, s in enumerate(switches) if s.at]
    fractions = sorted({0.0, *(f for i in scheduled for f in switches[i].at)})
    chain = list(dict.fromkeys(tuple(switches[i].scheduled(f) for i in scheduled) for f in fractions))
    free = [i for i, s in enumerate(switches) if not s.at]
    out = []
    for along, others in itertools.product(chain, itertools.product(*(switches[i].states for i in free))):
        states = dict(zip(scheduled, along)) | dict(zip(free, others))
        out.append(tuple(states[i] for i in range(len(switches))))
    return out
