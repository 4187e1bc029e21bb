"""Planted violation (validation data): an eval adapter that reads the validation shard from
disk at `start`, bypassing the tokens the eval loop hands it."""

import golfcore as golf
from golfcore.data import resolve_corpus


class Adapter:
    name, history_len = "planted_reads_val", 0

    def __init__(self, data):
        self.data = data

    def start(self, model, ctx):
        with open(resolve_corpus(self.data).val_files[0], "rb") as f:
            self.stolen = f.read(4096)

    def adjust(self, logprobs, history, positions):
        return logprobs

    def observe(self, tokens):
        pass


class ReadsVal(golf.Plugin):
    name = "planted_reads_val"
    description = "test plant: reads the validation shard at start"

    @golf.hookimpl
    def golf_eval_adapter(self, config):
        return Adapter(config.data)
