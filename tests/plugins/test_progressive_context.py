"""progressive_context: rows of 4, then 8, then 16 tokens at the configured training fractions,
the same tokens in the same order as a fixed-length run, and the recipe checks."""

import numpy as np
import pytest
import torch
from golf_plugins.progressive_context import Config, ProgressiveContext

from golfcore.assemble import build_model, check_config
from golfcore.data import DistributedTokenLoader, write_shard
from golfcore.errors import ConfigError
from golfcore.plugins import discover
from golfcore.recipe import resolve
from golfcore.train import Trainer
from tests.helpers import CPU, host_with, tiny_config


class Recording(DistributedTokenLoader):
    def next_batch(self, global_tokens, seq_len, micro_batches_per_rank):
        x, y = super().next_batch(global_tokens, seq_len, micro_batches_per_rank)
        self.batches.append(x)
        return x, y


def batches(tmp_path, *plugins):
    path = tmp_path / "t_train_000000.bin"
    write_shard(path, np.random.default_rng(0).integers(0, 64, 5000).astype(np.uint16))
    config = tiny_config()  # seq_len 16, 128 tokens per step in 2 micro-batches
    config.train.iterations = 8
    host = host_with(config, *plugins)
    check_config(config, host)
    loader = Recording([path], 0, 1, torch.device("cpu"))
    loader.batches = []
    Trainer(config, build_model(config, host, None), host, None, loader, CPU, None, lambda r: None).run()
    return loader.batches, loader.state()


def test_rows_grow_at_the_fractions_over_the_same_token_stream(tmp_path):
    grown, position = batches(tmp_path, (ProgressiveContext, Config(seq_lens=[4, 8, 16], at=[0.25, 0.5])))
    fixed, fixed_position = batches(tmp_path)
    # fractions 0, 1/8, ... before steps 1..8: length 4 for steps 1-2, 8 for steps 3-4, 16 from step 5 (2 micro-batches each)
    assert [tuple(x.shape) for x in grown] == [(16, 4)] * 4 + [(8, 8)] * 4 + [(4, 16)] * 8
    assert all(torch.equal(a.flatten(), b.flatten()) for a, b in zip(grown, fixed))
    assert position == fixed_position  # a checkpoint's loader position does not depend on the stage


@pytest.mark.parametrize("table, train, message", [
    ({"seq_lens": [8, 32], "at": [0.5]}, {}, "last stage 32 must be \\[train\\] seq_len 16"),
    ({"seq_lens": [48, 16], "at": [0.5]}, {}, "not a multiple of micro_batches 2 x 48"),
    ({"seq_lens": [8, 16], "at": [0.5, 0.7]}, {}, "at: .* needs 1 ascending fractions"),
    ({"seq_lens": [8, 8, 16], "at": [0.2, 0.5]}, {}, "seq_lens: .* two distinct"),
])
def test_bad_config_names_plugin_and_key(table, train, message):
    with pytest.raises(ConfigError, match=rf"\[plugins\.progressive_context\].*{message}"):
        config = resolve({"train": {"seq_len": 16, "batch_tokens": 128, "micro_batches": 2, **train},
                          "plugins": {"progressive_context": table}}, discover(), "<test>")
        check_config(config, host_with(config, (ProgressiveContext, config.plugins["progressive_context"])))
