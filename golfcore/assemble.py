"""Assembly: the one step that lets the enabled plugins edit the model description, then builds it.

`golfcore.model` builds the network from a description and never sees the plugin manager; this
module is where the build hooks are called, once per model build, never inside a forward pass.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .config import ModelSection, RunConfig
from .contract import LayerInfo, Quantizer
from .description import ModelDescription, Part, default_description
from .errors import GolfError, PluginError
from .layers import LayerSelection
from .model import GPT
from .params import param_specs
from .plugins import Host


def layer_schedule(config: RunConfig, host: Host) -> list[int]:
    """The physical layer of each virtual layer: a plugin's golf_layer_schedule, or one pass."""
    num_layers = config.model.num_layers
    v2p = host.first("golf_layer_schedule", config=config) or list(range(num_layers))
    if not v2p or any(not isinstance(p, int) or not 0 <= p < num_layers for p in v2p):
        raise GolfError(f"layer schedule {v2p} must list physical layers in 0..{num_layers - 1}")
    return v2p


def check_config(config: RunConfig, host: Host) -> list[int]:
    """Check every per-layer plugin selection against the layer schedule, then run the plugins'
    golf_check_config with it; returns the schedule."""
    schedule = layer_schedule(config, host)
    for name, section in config.plugins.items():
        if isinstance(section, LayerSelection):
            section.check_range(name, schedule, config.model.num_layers)
    host.call("golf_check_config", config=config, schedule=schedule)
    return schedule


def describe(config: RunConfig, host: Host, quantizer: Quantizer | None) -> tuple[ModelDescription, dict[str, str]]:
    """The model description after every enabled plugin's golf_edit_model, and which plugin set
    each slot (`path -> plugin`; slots no plugin changed are absent: the core's defaults)."""
    description = default_description(config.model, layer_schedule(config, host), config.tokens.bos_id)
    setters: dict[str, str] = {}
    before = description.slots()
    for name in host.implementers("golf_edit_model"):
        host.call_one(name, "golf_edit_model", description=description, config=config, quantizer=quantizer)
        for path, value in _misplaced(description)[:1]:
            raise PluginError(f"plugin {name!r}: golf_edit_model put {type(value).__name__} {value!r:.40} into slot {path}; "
                              f"a slot holds a golfcore.Part (or a class, a number or None)")
        after = description.slots()
        setters.update({path: name for path, value in after.items() if before.get(path) != value})
        before = after
    return description, {path: name for path, name in setters.items() if path in before}


def _misplaced(description: ModelDescription) -> list[tuple[str, Any]]:
    """(path, value) of every slot value no slot holds: a plugin's mistake, named before the build."""
    found: list[tuple[str, Any]] = []

    def walk(path: str, value: Any, names: bool = False) -> None:  # names: the slot is declared to hold a str
        if dataclasses.is_dataclass(value) and not isinstance(value, (type, LayerInfo, ModelSection)):
            for f in dataclasses.fields(value):
                walk(f"{path}.{f.name}" if path else f.name, getattr(value, f.name), "str" in str(f.type))
        elif isinstance(value, list):
            for j, item in enumerate(value):
                walk(f"{path}[{j}]", item, names)
        elif not (isinstance(value, (Part, type, bool, int, float, type(None), LayerInfo, ModelSection))
                  or (names and isinstance(value, str))):
            found.append((path, value))

    walk("", description)
    return found


def build_model(config: RunConfig, host: Host, quantizer: Quantizer | None) -> GPT:
    """Describe the model, let the plugins edit the description, build it (seeded by run.seed)."""
    torch.manual_seed(config.run.seed)
    description, _ = describe(config, host, quantizer)
    model = GPT(description)
    try:
        param_specs(model)
    except ValueError as e:
        raise GolfError(f"model build: {e}") from None
    host.call("golf_model_built", model=model, config=config)
    return model
