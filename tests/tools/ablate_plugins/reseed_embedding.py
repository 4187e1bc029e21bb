"""A plugin with no true effect: it redraws the token embedding from the core's own init
distribution with another seed, so its runs differ from the reference only by noise."""

from __future__ import annotations

import torch

import golfcore as golf


class ReseedEmbedding(golf.Plugin):
    name = "reseed_embedding"
    description = "redraw the token embedding init with a different seed (no effect in expectation)"

    @golf.hookimpl
    def golf_model_built(self, model, config):
        generator = torch.Generator().manual_seed(config.run.seed + 100_000)
        with torch.no_grad():
            weight = model.tok_emb.weight
            weight.copy_(torch.randn(weight.shape, generator=generator) * config.model.tied_embed_init_std)
