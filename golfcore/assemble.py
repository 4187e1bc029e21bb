"""Assembly: the one step that asks the enabled plugins for their modules and builds the GPT.

`golfcore.model` defines the network from already-resolved modules and never sees the plugin
manager; this module is where the build hooks are called, once per model (or once per layer),
never inside a forward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import RunConfig
from .contract import LayerInfo, Quantizer
from .errors import GolfError
from .layers import LayerSelection
from .model import GPT, Block, ReluSquared, Rotary
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


def build_model(config: RunConfig, host: Host, quantizer: Quantizer) -> GPT:
    """Ask the enabled plugins for their modules and assemble the GPT (seeded by run.seed)."""
    cfg = config.model
    torch.manual_seed(config.run.seed)
    v2p = layer_schedule(config, host)
    weight_transform = host.first("golf_weight_transform", config=config, quantizer=quantizer) or nn.Identity()
    blocks = []
    for i, p in enumerate(v2p):
        layer = LayerInfo(virtual=i, physical=p, num_virtual=len(v2p), num_physical=cfg.num_layers)
        scale = 1.0
        for factor in host.collect("golf_sublayer_input_scale", config=config, layer=layer):
            scale *= float(factor)
        blocks.append(
            Block(
                cfg,
                layer,
                rotary=host.first("golf_rotary", config=config, layer=layer) or Rotary(cfg.head_dim, cfg.rope_base),
                activation=host.first("golf_mlp_activation", config=config, layer=layer) or ReluSquared(),
                value_transforms=host.collect("golf_value_transform", config=config, layer=layer),
                output_transforms=host.collect("golf_attention_output_transform", config=config, layer=layer),
                input_scale=scale,
                weight_transform=weight_transform,
            )
        )
    model = GPT(
        cfg,
        v2p,
        blocks,
        embedding_additions=host.collect("golf_embedding_addition", config=config),
        embedding_transforms=host.collect("golf_embedding_transform", config=config),
    )
    try:
        param_specs(model)
    except ValueError as e:
        raise GolfError(f"model build: {e}") from None
    host.call("golf_model_built", model=model, config=config)
    return model
