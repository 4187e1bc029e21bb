"""The v4 attention stack at once (xsa, value_residual, gated_attention, recurrence, with
value_embeddings): torch.compile(fullgraph=True) on CPU (inductor) gives the eager logits, for
the tied model and for the model untied before eval."""

import pytest
import torch
from golf_plugins import (
    gated_attention,
    recurrence,
    value_embeddings,
    value_residual,
    xsa,
)
from torch import nn

from golfcore.model import build_model, check_config
from golfcore.plugins import Host, PluginInfo
from tests.helpers import tiny_config

PLUGINS = {
    recurrence.Recurrence: recurrence.Config(repeat=[1, 2]),  # v2p [0, 1, 2, 1, 2, 3]
    value_embeddings.ValueEmbeddings: value_embeddings.Config(layers=[0, 3], dim=16),  # virtual 0 and 5: v0 gets VE
    value_residual.ValueResidual: value_residual.Config(),  # mix (gate mode: the same ops plus a sigmoid)
    xsa.Xsa: xsa.Config(),
    gated_attention.GatedAttention: gated_attention.Config(),
}


@pytest.mark.slow
def test_compiled_logits_match_eager():
    config = tiny_config()
    for cls, cfg in PLUGINS.items():
        config.plugins[cls.name] = cfg
    host = Host(config, {cls.name: PluginInfo(cls.name, cls, "test", "0") for cls in PLUGINS})
    check_config(config, host)
    model = build_model(config, host, None).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # every zero-initialised or pass-through piece contributes
        for layer in model.layers:
            nn.init.normal_(layer.o, std=0.05)
            nn.init.normal_(layer.down, std=0.05)
        for block in model.blocks:
            for t in [*block.value_transforms, *block.output_transforms]:
                if isinstance(t, value_embeddings.ValueEmbeddingAdd):
                    continue
                for p in t.parameters():
                    p.normal_()
    kinds = [type(t).__name__ for t in model.blocks[5].value_transforms + model.blocks[5].output_transforms]
    assert kinds == ["ValueEmbeddingAdd", "ValueMix", "ExclusiveSelfAttention", "HeadGate"]
    tokens = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        eager = model.logits(tokens)
        compiled = torch.compile(model.logits, fullgraph=True)(tokens)
        torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=0)
        host.call("golf_before_eval", model=model, config=config)  # untie: 6 layers, identity v2p
        assert model.v2p == list(range(6))
        torch._dynamo.reset()
        untied = torch.compile(model.logits, fullgraph=True)(tokens)
        torch.testing.assert_close(untied, eager, atol=1e-4, rtol=0)
