"""All architecture plugins of the PR #549 stack at once: torch.compile(fullgraph=True) on CPU
(inductor) gives the eager logits."""

import pytest
import torch
from golf_plugins import (
    bigram_hash,
    leaky_relu2,
    ln_scale,
    ortho_init,
    partial_rope,
    smear_gate,
    value_embeddings,
)
from torch import nn

import golfcore as golf
from golfcore.model import build_model, check_config
from golfcore.plugins import Host, PluginInfo
from tests.helpers import tiny_config


class Repeat(golf.Plugin):
    name = "repeat"

    @golf.hookimpl
    def golf_layer_schedule(self, config):
        return [0, 1, 2, 1, 2, 3]


PLUGINS = {
    leaky_relu2.LeakyRelu2: leaky_relu2.Config(),
    bigram_hash.BigramHashPlugin: bigram_hash.Config(buckets=64, dim=16),
    smear_gate.SmearGatePlugin: smear_gate.Config(),
    value_embeddings.ValueEmbeddings: value_embeddings.Config(layers=[1, 3], dim=16),  # virtual 1, 3, 5
    partial_rope.PartialRope: partial_rope.Config(dims=4, ntk_train_len=8),  # T=16 > 8: the rescaled path
    ln_scale.LnScale: ln_scale.Config(),
    ortho_init.OrthoInit: ortho_init.Config(),
    Repeat: Repeat.Config(),
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
    with torch.no_grad():  # every zero-initialised piece contributes
        for layer in model.layers:
            nn.init.normal_(layer.o, std=0.05)
            nn.init.normal_(layer.down, std=0.05)
        model.embedding_additions[0].table.normal_()
        model.embedding_transforms[0].gate.normal_()
    tokens = torch.randint(2, 64, (2, 16))
    tokens[:, 0] = 1
    tokens[0, 7] = 1  # a document boundary in the middle
    with torch.no_grad():
        eager = model.logits(tokens)
        compiled = torch.compile(model.logits, fullgraph=True)(tokens)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=0)
