"""Planted violation (C1, in the model): an embedding addition of the next input token."""

import torch
import torch.nn.functional as F
from torch import nn

import golfcore as golf


class NextTokenEmbedding(nn.Module):
    def __init__(self, vocab_size: int, model_dim: int):
        super().__init__()
        self.table = golf.declare(nn.Parameter(torch.randn(vocab_size, model_dim)), "embed", "embedding")

    def forward(self, tokens):  # [B,T] -> [B,T,d]: position t sees token t+1
        return F.embedding(F.pad(tokens[:, 1:], (0, 1)), self.table)


class NextToken(golf.Plugin):
    name = "planted_next_token"
    description = "test plant: the model reads the next token"

    @golf.hookimpl
    def golf_edit_model(self, description, config):
        description.embedding.additions.append(golf.Part(NextTokenEmbedding, config.model.vocab_size, config.model.model_dim))
