"""Planted violation (C1/C3): phased LoRA TTT that, inside `adjust`, trains each slot's adapter on
the inputs of the piece it is about to score (they hold the piece's own targets but the last)
and then re-scores the piece with the adapted model: a chunk trained on before it is scored."""

import torch
import torch.nn.functional as F
from golf_plugins.lora_ttt import Config, LoraTttAdapter

import golfcore as golf


class Adapter(LoraTttAdapter):
    name = "planted_pretrain_chunk"

    def start(self, model, ctx):
        super().start(model, ctx)
        self.history_len = ctx.seq_len

    def start_round(self, entering):
        super().start_round(entering)
        self.spans = {**getattr(self, "spans", {}), **entering}  # slot -> its document's targets

    def adjust(self, logprobs, history, positions):  # [N,V], [N,K], [N]
        pos = positions.tolist()
        slot = [next(b for b, span in self.spans.items() if p in span) for p in pos]
        last = {b: i for i, b in enumerate(slot)}  # each slot's last scored row: its history holds the piece
        width = self.cfg.chunk
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.zeros(self.cfg.slots, history.size(1), dtype=torch.long)
            for b, i in last.items():
                x[b] = history[i].clamp_min(0)
            self.model.train()
            self.adam.zero_grad()
            F.cross_entropy(self.model.logits(x[:, :-1]).flatten(0, 1).float(), x[:, 1:].flatten()).backward(inputs=self.lora_params)
            self.adam.step(torch.ones(self.cfg.slots, dtype=torch.bool))
            self.model.eval()
            with torch.no_grad():
                lp = self.model.logprobs(x, width)  # [S,W,V]: the last W inputs of each slot's window
        return torch.stack([lp[b, width - 1 - (pos[last[b]] - p)] for b, p in zip(slot, pos)])


class PretrainChunk(golf.Plugin):
    name = "planted_pretrain_chunk"
    description = "test plant: LoRA TTT that trains on a chunk before scoring it"
    Config = Config

    @golf.hookimpl
    def golf_eval_adapter(self, config):
        return Adapter(self.config)
