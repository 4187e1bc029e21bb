"""Which layers a technique applies to: one config shape for every per-layer plugin.

A selection is `"all"`, `"last:N"`, or a list of indices, and `index` says whether they count
virtual layers (execution order) or physical layers (weight sets). Depth recurrence makes the
two differ; the reference implementation mixed them up (docs/techniques.md, D5, D6), so every
per-layer setting in golf says which one it means.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .config import Section, option
from .errors import ConfigError

if TYPE_CHECKING:
    from .contract import LayerInfo

_LAST = re.compile(r"last:(\d+)")


@dataclass
class LayerSelection(Section):
    """Base for plugin configs with a per-layer choice; subclasses may redeclare the defaults.

    The core checks the selection against the model's layer schedule before anything is built
    (golfcore.assemble.check_config), so a plugin needs no golf_check_config for it."""

    layers: str | list[int] = option("all", '"all", "last:N" (the last N layers) or a list of layer indices (as `index` says)')
    index: Literal["virtual", "physical"] = option(
        "virtual", "whether `layers` counts virtual layers (execution order) or physical ones (weight sets)"
    )

    def check(self) -> None:
        spec = self.layers
        if isinstance(spec, str):
            match = _LAST.fullmatch(spec)
            if spec != "all" and (match is None or int(match.group(1)) < 1):
                raise self.invalid("layers", f'{spec!r} is not "all", "last:N" (N >= 1) or a list of layer indices')
        elif not spec:
            raise self.invalid("layers", 'must list at least one layer (or say "all")')
        elif any(i < 0 for i in spec):
            raise self.invalid("layers", f"{spec}: indices must be >= 0")
        elif len(set(spec)) != len(spec):
            raise self.invalid("layers", f"{spec} lists a layer twice")

    def check_range(self, plugin: str, schedule: list[int], num_physical: int) -> None:
        """ConfigError naming `[plugins.<plugin>] layers` if the selection names layers the model lacks."""
        count = len(schedule) if self.index == "virtual" else num_physical
        spec = self.layers
        if isinstance(spec, str):
            match = _LAST.fullmatch(spec)
            if match and int(match.group(1)) > count:
                raise ConfigError(f"[plugins.{plugin}] layers: {spec!r} asks for more than the model's {count} {self.index} layers")
            return
        bad = [i for i in spec if i >= count]
        if bad:
            raise ConfigError(f"[plugins.{plugin}] layers: {bad} not among the model's {count} {self.index} layers (0..{count - 1})")

    def selects(self, layer: LayerInfo) -> bool:
        i, count = (layer.virtual, layer.num_virtual) if self.index == "virtual" else (layer.physical, layer.num_physical)
        if self.layers == "all":
            return True
        if isinstance(self.layers, str):
            return i >= count - int(_LAST.fullmatch(self.layers).group(1))
        return i in self.layers
