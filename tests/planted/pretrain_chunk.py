"""Planted violation (C1/C3): phased LoRA TTT that, inside `adjust`, trains its adapters on the
rows it is about to score (their inputs hold targets of the same batch) and then re-scores them
with the adapted model: a chunk trained on before it is scored."""

import torch
import torch.nn.functional as F
from golf_plugins.lora_ttt import Config, LoraTttAdapter

import golfcore as golf


class Adapter(LoraTttAdapter):
    name = "planted_pretrain_chunk"

    def start(self, model, ctx):
        super().start(model, ctx)
        self.history_len = ctx.seq_len

    def adjust(self, logprobs, history, positions):
        with torch.inference_mode(False), torch.enable_grad():
            rows = history.clone().clamp_min(0)  # [N,K]: each position's inputs, up to itself
            self.model.train()
            self.adam.zero_grad(set_to_none=True)
            logits = self.model.logits(rows[:, :-1])
            F.cross_entropy(logits.flatten(0, 1).float(), rows[:, 1:].flatten()).backward(inputs=self.lora_params)
            self.adam.step()
            self.model.eval()
            with torch.no_grad():
                return self.model.logprobs(rows, 1)[:, 0]


class PretrainChunk(golf.Plugin):
    name = "planted_pretrain_chunk"
    description = "test plant: LoRA TTT that trains on a chunk before scoring it"
    Config = Config

    @golf.hookimpl
    def golf_eval_adapter(self, config):
        return Adapter(self.config)
